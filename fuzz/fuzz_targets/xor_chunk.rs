//! Arbitrary bytes as an XOR chunk: iterated directly (`XorIterator`), through the query
//! path's `EncodedChunk` (decode into a range, the sample count a query budget charges), and
//! as a block chunk-segment record (`decode_chunk`: length, encoding, data, CRC). Samples that
//! decode are appended to a new chunk and read back: what Norn re-encodes (merging chunks of
//! two sources, compaction) must read back the same.
#![no_main]

use libfuzzer_sys::fuzz_target;
use norn_chunkenc::{XorChunk, XorIterator};
use norn_model::EncodedChunk;

fuzz_target!(|data: &[u8]| {
    let mut it = XorIterator::new(data);
    let samples: Vec<(i64, f64)> = it.by_ref().collect();
    let _ = it.error();

    let (min_t, max_t) = match (samples.first(), samples.last()) {
        (Some(a), Some(b)) => (a.0, b.0),
        _ => (0, 0),
    };
    let chunk = EncodedChunk::xor(min_t, max_t, data.to_vec());
    let _ = chunk.samples_in(i64::MIN, i64::MAX);
    let _ = chunk.samples_in(min_t, min_t.saturating_add(1000));
    let mut out = Vec::new();
    let _ = chunk.decode_into(min_t, max_t, &mut out);

    let _ = norn_tsdb::block::chunks::decode_chunk(data);

    // Re-encode what decoded, in time order as a head appends it, and read it back.
    let mut sorted = samples.clone();
    sorted.sort_by_key(|s| s.0);
    sorted.dedup_by_key(|s| s.0);
    let mut c = XorChunk::new();
    let mut appended = Vec::new();
    for &(t, v) in sorted.iter().take(u16::MAX as usize) {
        if c.append(t, v) {
            appended.push((t, v));
        }
    }
    let mut it = c.iter();
    let back: Vec<(i64, f64)> = it.by_ref().collect();
    assert!(it.error().is_none(), "a chunk Norn wrote does not decode");
    assert_eq!(back.len(), appended.len(), "re-encoded chunk lost samples");
    for (a, b) in back.iter().zip(&appended) {
        assert_eq!(a.0, b.0);
        assert_eq!(a.1.to_bits(), b.1.to_bits());
    }
});
