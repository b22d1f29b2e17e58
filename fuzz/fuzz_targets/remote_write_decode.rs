//! Remote-write push bodies, as the distributor decodes them: snappy then protobuf, for
//! remote write 1.0 and 2.0 (`norn_distributor::negotiate::decode`), then the distributor's
//! validation. The input is also decoded as an already-decompressed message (raw protobuf),
//! so the protobuf decoders see mutated messages and not only bytes that fail snappy.
#![no_main]

use libfuzzer_sys::fuzz_target;
use norn_distributor::negotiate::{Protocol, decode};
use norn_model::validation::check_batch;
use norn_model::{TimeWindow, ValidationLimits, WriteBatch};

/// The distributor's default body limit is far above what the fuzzer produces; a small one
/// also exercises the "decompressed body too large" refusal.
const LIMIT: usize = 1 << 20;

fn validate(mut batch: WriteBatch) {
    let limits = ValidationLimits::default();
    // A fixed "now" keeps runs reproducible.
    let window = TimeWindow::new(1_700_000_000_000, &limits);
    let checked = check_batch(&mut batch, &limits, window);
    let _ = batch.subset(&checked.keep, true);
}

fuzz_target!(|data: &[u8]| {
    for protocol in [Protocol::V1, Protocol::V2] {
        if let Ok(batch) = decode(protocol, data, LIMIT) {
            validate(batch);
        }
    }
    let raw = bytes::Bytes::copy_from_slice(data);
    if let Ok(batch) = norn_proto::decode_write_request(raw.clone()) {
        validate(batch);
    }
    if let Ok(batch) = norn_proto::decode_write_request_v2(raw) {
        validate(batch);
    }
});
