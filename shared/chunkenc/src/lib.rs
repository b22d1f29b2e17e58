//! Prometheus' XOR ("Gorilla") chunk encoding, byte for byte.
//!
//! A crate of its own, with no dependency on the TSDB, because every reader of chunks needs
//! it: the head and blocks (`norn-tsdb`, which re-exports it as `norn_tsdb::chunkenc`), and
//! the clients that receive chunks over gRPC as they are stored (`norn-ingester-client`,
//! later the store-gateway's).
//!
//! A chunk is a 2-byte big-endian sample count followed by a bit stream: the first timestamp
//! as a varint and the first value as 64 raw bits, the second timestamp as a uvarint delta,
//! then delta-of-delta timestamps and XOR-compressed values (spec `tsdb-format.md` §4).
//! [`XorChunk::bytes`] is exactly the `data` a block's chunk file stores after the encoding
//! byte `1`, so blocks can copy head chunks verbatim.
//!
//! The writer reproduces Prometheus 2.42's `bstream` including one quirk: a byte written at
//! a byte-aligned position leaves an empty trailing byte behind (fixed upstream in 2.55), so a
//! chunk whose stream ends on such a write carries one extra zero byte. Matching it keeps our
//! chunks identical to what promtool 2.42 writes; every reader ignores the byte because it
//! stops after `num_samples` samples.
//!
//! [`ChunkCutter`] decides when the head starts a new chunk, with the same arithmetic as
//! Prometheus' head (§5), so our blocks hold the same chunks Prometheus would write.

/// Samples per chunk the cutter aims for (Prometheus' default `samplesPerChunk`).
pub const SAMPLES_PER_CHUNK: u16 = 120;

/// Size of the sample-count header.
const HEADER: usize = 2;

/// The encoding byte blocks and head-chunk files use for XOR chunks.
pub const ENCODING_XOR: u8 = 1;

/// A chunk's data was malformed (only reported by [`XorIterator::error`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("XOR chunk is truncated or malformed")]
pub struct ChunkCorrupt;

/// Where an [`XorChunk`] keeps its bytes: a growing `Vec`, or an [`InlineBuf`] inside the
/// chunk itself for the head's open chunks.
pub trait ChunkBuf {
    fn as_slice(&self) -> &[u8];
    fn as_mut_slice(&mut self) -> &mut [u8];
    fn push(&mut self, byte: u8);
    /// Removes `start..end`, moving the bytes after it down.
    fn remove_range(&mut self, start: usize, end: usize);
}

impl ChunkBuf for Vec<u8> {
    fn as_slice(&self) -> &[u8] {
        self
    }
    fn as_mut_slice(&mut self) -> &mut [u8] {
        self
    }
    fn push(&mut self, byte: u8) {
        Vec::push(self, byte);
    }
    fn remove_range(&mut self, start: usize, end: usize) {
        self.drain(start..end);
    }
}

/// `N` bytes stored inline, with no heap allocation. It does not grow: its owner checks
/// [`XorChunk::fits`] before appending and moves the settled bytes elsewhere first.
#[derive(Debug, Clone)]
pub struct InlineBuf<const N: usize> {
    data: [u8; N],
    len: u8,
}

impl<const N: usize> Default for InlineBuf<N> {
    fn default() -> Self {
        // After `drop_settled` the header and one byte remain, and any sample must fit.
        const { assert!(N > HEADER + MAX_SAMPLE_BYTES && N <= u8::MAX as usize) };
        Self {
            data: [0; N],
            len: 0,
        }
    }
}

impl<const N: usize> ChunkBuf for InlineBuf<N> {
    fn as_slice(&self) -> &[u8] {
        &self.data[..self.len as usize]
    }
    fn as_mut_slice(&mut self) -> &mut [u8] {
        &mut self.data[..self.len as usize]
    }
    fn push(&mut self, byte: u8) {
        // An overflow would be a bug in the owner's `fits` check; the index check turns it
        // into a panic rather than a silent loss.
        self.data[self.len as usize] = byte;
        self.len += 1;
    }
    fn remove_range(&mut self, start: usize, end: usize) {
        self.data.copy_within(end..self.len as usize, start);
        self.len -= (end - start) as u8;
    }
}

/// Most bytes one append can add to a chunk: a first sample's 10-byte varint and 64 bits,
/// or a later one's 68 bits of timestamp and 77 of value, plus Go's empty trailing byte.
pub const MAX_SAMPLE_BYTES: usize = 20;

/// An XOR chunk being appended to. Holds the encoder state next to the bytes so appending
/// never re-reads the stream.
#[derive(Debug, Clone)]
pub struct XorChunk<B = Vec<u8>> {
    buf: B,
    /// Bits still free in the last byte of `buf` (Go's `bstream.count`).
    free: u8,
    num: u16,
    t: i64,
    t_delta: u64,
    v: u64,
    /// Leading zeros of the current XOR window; 0xff = no window yet (Go's sentinel).
    leading: u8,
    trailing: u8,
}

impl Default for XorChunk {
    fn default() -> Self {
        Self::new()
    }
}

impl XorChunk {
    /// An empty chunk.
    pub fn new() -> Self {
        Self::with_capacity(32)
    }

    /// An empty chunk whose buffer starts with room for `cap` bytes.
    pub fn with_capacity(cap: usize) -> Self {
        Self::with_buf(Vec::with_capacity(cap.max(HEADER)))
    }

    /// Gives up the encoder state and keeps just the bytes, with no spare capacity.
    pub fn into_bytes(self) -> Box<[u8]> {
        self.buf.into_boxed_slice()
    }
}

impl<const N: usize> XorChunk<InlineBuf<N>> {
    /// An empty chunk whose bytes live inside it.
    pub fn inline() -> Self {
        Self::with_buf(InlineBuf::default())
    }

    /// Whether appending `(t, v)` fits the buffer (else the owner must
    /// [drop the settled bytes](Self::drop_settled) first).
    pub fn fits(&self, t: i64, v: f64) -> bool {
        self.buf.len as usize + self.append_bytes_bound(t, v) <= N
    }
}

impl<B: ChunkBuf> XorChunk<B> {
    fn with_buf(mut buf: B) -> Self {
        buf.push(0);
        buf.push(0);
        Self {
            buf,
            free: 0,
            num: 0,
            t: 0,
            t_delta: 0,
            v: 0,
            leading: 0xff,
            trailing: 0,
        }
    }

    /// Number of samples in the chunk.
    pub fn num_samples(&self) -> u16 {
        self.num
    }

    /// Timestamp of the last sample (meaningless when empty).
    pub fn last_t(&self) -> i64 {
        self.t
    }

    /// Value of the last sample (meaningless when empty).
    pub fn last_v(&self) -> f64 {
        f64::from_bits(self.v)
    }

    /// The chunk data: header plus bit stream, as stored in a block chunk file (after
    /// [`drop_settled`](Self::drop_settled): header plus the bytes held here).
    pub fn bytes(&self) -> &[u8] {
        self.buf.as_slice()
    }

    /// Length of the header plus the stream bytes held here.
    pub fn len(&self) -> usize {
        self.buf.as_slice().len()
    }

    /// Whether no sample was appended.
    pub fn is_empty(&self) -> bool {
        self.num == 0
    }

    /// The stream bytes no later append can change: all after the header but the last byte
    /// (appends only add bits to the last byte and push new ones).
    pub fn settled(&self) -> &[u8] {
        let b = self.buf.as_slice();
        let end = b.len().saturating_sub(1).max(HEADER);
        &b[HEADER..end]
    }

    /// Forgets the [settled](Self::settled) bytes, which the caller stored elsewhere:
    /// [`bytes`](Self::bytes) then holds the header and the unsettled last byte, and appends
    /// go on as before.
    pub fn drop_settled(&mut self) {
        let end = self.buf.as_slice().len().saturating_sub(1).max(HEADER);
        self.buf.remove_range(HEADER, end);
    }

    /// An iterator over the samples.
    pub fn iter(&self) -> XorIterator<'_> {
        XorIterator::new(self.buf.as_slice())
    }

    /// At most how many bytes appending `(t, v)` adds: the bits the encoding takes beyond
    /// those free in the last byte, plus Go's empty trailing byte. Never above
    /// [`MAX_SAMPLE_BYTES`].
    pub fn append_bytes_bound(&self, t: i64, v: f64) -> usize {
        let bits = match self.num {
            0 => return MAX_SAMPLE_BYTES,
            1 => {
                let mut tmp = [0u8; 10];
                8 * put_uvarint(&mut tmp, t.wrapping_sub(self.t) as u64) as u32
            }
            _ => {
                let t_delta = t.wrapping_sub(self.t) as u64;
                let dod = t_delta.wrapping_sub(self.t_delta) as i64;
                if dod == 0 {
                    1
                } else if bit_range(dod, 14) {
                    16
                } else if bit_range(dod, 17) {
                    20
                } else if bit_range(dod, 20) {
                    24
                } else {
                    68
                }
            }
        } + self.xor_bits(v.to_bits());
        (bits.saturating_sub(u32::from(self.free)) as usize).div_ceil(8) + 1
    }

    /// Bits `write_xor` takes for `vbits`.
    fn xor_bits(&self, vbits: u64) -> u32 {
        let delta = vbits ^ self.v;
        if delta == 0 {
            return 1;
        }
        let lz = (delta.leading_zeros() as u8).min(31);
        let tz = delta.trailing_zeros() as u8;
        if self.leading != 0xff && lz >= self.leading && tz >= self.trailing {
            2 + 64 - u32::from(self.leading) - u32::from(self.trailing)
        } else {
            2 + 5 + 6 + 64 - u32::from(lz) - u32::from(tz)
        }
    }

    /// Appends a sample. Timestamps must ascend (the head checks); a chunk holds at most
    /// 65535 samples, beyond which this returns `false` and appends nothing.
    pub fn append(&mut self, t: i64, v: f64) -> bool {
        if self.num == u16::MAX {
            return false;
        }
        let vbits = v.to_bits();
        match self.num {
            0 => {
                let mut tmp = [0u8; 10];
                let n = put_varint(&mut tmp, t);
                for &b in &tmp[..n] {
                    self.write_byte(b);
                }
                self.write_bits(vbits, 64);
            }
            1 => {
                let t_delta = t.wrapping_sub(self.t) as u64;
                let mut tmp = [0u8; 10];
                let n = put_uvarint(&mut tmp, t_delta);
                for &b in &tmp[..n] {
                    self.write_byte(b);
                }
                self.t_delta = t_delta;
                self.write_xor(vbits);
            }
            _ => {
                let t_delta = t.wrapping_sub(self.t) as u64;
                let dod = t_delta.wrapping_sub(self.t_delta) as i64;
                if dod == 0 {
                    self.write_bit(false);
                } else if bit_range(dod, 14) {
                    self.write_bits(0b10, 2);
                    self.write_bits(dod as u64, 14);
                } else if bit_range(dod, 17) {
                    self.write_bits(0b110, 3);
                    self.write_bits(dod as u64, 17);
                } else if bit_range(dod, 20) {
                    self.write_bits(0b1110, 4);
                    self.write_bits(dod as u64, 20);
                } else {
                    self.write_bits(0b1111, 4);
                    self.write_bits(dod as u64, 64);
                }
                self.t_delta = t_delta;
                self.write_xor(vbits);
            }
        }
        self.t = t;
        self.v = vbits;
        self.num += 1;
        self.buf.as_mut_slice()[..HEADER].copy_from_slice(&self.num.to_be_bytes());
        true
    }

    fn write_xor(&mut self, vbits: u64) {
        let delta = vbits ^ self.v;
        if delta == 0 {
            self.write_bit(false);
            return;
        }
        self.write_bit(true);
        let mut lz = delta.leading_zeros() as u8;
        let tz = delta.trailing_zeros() as u8;
        // The 5-bit field holds at most 31; a smaller L only widens the window.
        if lz >= 32 {
            lz = 31;
        }
        if self.leading != 0xff && lz >= self.leading && tz >= self.trailing {
            self.write_bit(false);
            let sig = 64 - u32::from(self.leading) - u32::from(self.trailing);
            self.write_bits(delta >> self.trailing, sig);
            return;
        }
        self.leading = lz;
        self.trailing = tz;
        self.write_bit(true);
        self.write_bits(u64::from(lz), 5);
        let sig = 64 - u32::from(lz) - u32::from(tz);
        // sig == 64 does not fit 6 bits; it is written as 0 and read back as 64.
        self.write_bits(u64::from(sig), 6);
        self.write_bits(delta >> tz, sig);
    }

    fn write_bit(&mut self, bit: bool) {
        if self.free == 0 {
            self.buf.push(0);
            self.free = 8;
        }
        if bit && let Some(last) = self.buf.as_mut_slice().last_mut() {
            *last |= 1 << (self.free - 1);
        }
        self.free -= 1;
    }

    /// Go 2.42's `writeByte`, including the empty trailing byte it leaves at aligned positions.
    fn write_byte(&mut self, byte: u8) {
        if self.free == 0 {
            self.buf.push(0);
            self.free = 8;
        }
        if let Some(last) = self.buf.as_mut_slice().last_mut() {
            *last |= byte >> (8 - self.free);
        }
        // `byte << 8` is 0 in Go; checked_shl keeps that meaning in Rust.
        self.buf
            .push(byte.checked_shl(u32::from(self.free)).unwrap_or(0));
    }

    fn write_bits(&mut self, u: u64, mut nbits: u32) {
        if nbits == 0 {
            return;
        }
        let mut u = u << (64 - nbits);
        while nbits >= 8 {
            self.write_byte((u >> 56) as u8);
            u <<= 8;
            nbits -= 8;
        }
        while nbits > 0 {
            self.write_bit((u >> 63) == 1);
            u <<= 1;
            nbits -= 1;
        }
    }
}

/// Whether `x` fits the `nbits` bucket of the timestamp encoding (asymmetric on purpose:
/// `2^(n-1)` fits, `-2^(n-1)` does not, mirroring Go's `bitRange`).
fn bit_range(x: i64, nbits: u32) -> bool {
    -((1i64 << (nbits - 1)) - 1) <= x && x <= 1i64 << (nbits - 1)
}

/// Go `binary.PutUvarint`.
pub fn put_uvarint(buf: &mut [u8; 10], mut x: u64) -> usize {
    let mut i = 0;
    while x >= 0x80 {
        buf[i] = (x as u8) | 0x80;
        x >>= 7;
        i += 1;
    }
    buf[i] = x as u8;
    i + 1
}

/// Go `binary.PutVarint` (zigzag, then uvarint).
pub fn put_varint(buf: &mut [u8; 10], x: i64) -> usize {
    put_uvarint(buf, ((x << 1) ^ (x >> 63)) as u64)
}

/// MSB-first bit reader over a chunk's bytes.
#[derive(Debug, Clone)]
struct BitReader<'a> {
    data: &'a [u8],
    pos: usize,
}

impl BitReader<'_> {
    fn read_bit(&mut self) -> Option<bool> {
        let byte = *self.data.get(self.pos >> 3)?;
        let bit = (byte >> (7 - (self.pos & 7))) & 1 == 1;
        self.pos += 1;
        Some(bit)
    }

    /// Reads `n` ≤ 64 bits through a 128-bit big-endian window, so a value costs a load and
    /// two shifts rather than a loop over bytes.
    fn read_bits(&mut self, n: u32) -> Option<u64> {
        if n == 0 {
            return Some(0);
        }
        if self.pos + n as usize > self.data.len() * 8 {
            return None;
        }
        let byte = self.pos >> 3;
        let bit = (self.pos & 7) as u32;
        let window = match self.data.get(byte..byte + 16) {
            Some(w) => u128::from_be_bytes(w.try_into().expect("16 bytes")),
            None => {
                let mut buf = [0u8; 16];
                let rest = &self.data[byte..];
                buf[..rest.len()].copy_from_slice(rest);
                u128::from_be_bytes(buf)
            }
        };
        self.pos += n as usize;
        Some(((window << bit) >> (128 - n)) as u64)
    }

    fn read_uvarint(&mut self) -> Option<u64> {
        let mut x = 0u64;
        let mut s = 0u32;
        for i in 0..10 {
            let b = self.read_bits(8)? as u8;
            if b < 0x80 {
                if i == 9 && b > 1 {
                    return None;
                }
                return Some(x | (u64::from(b) << s));
            }
            x |= u64::from(b & 0x7f) << s;
            s += 7;
        }
        None
    }

    fn read_varint(&mut self) -> Option<i64> {
        let ux = self.read_uvarint()?;
        Some(((ux >> 1) as i64) ^ -((ux & 1) as i64))
    }
}

/// Iterates the samples of XOR chunk data (header included). Stops early, with
/// [`XorIterator::error`] set, on malformed data instead of panicking.
#[derive(Debug, Clone)]
pub struct XorIterator<'a> {
    r: BitReader<'a>,
    total: u16,
    read: u16,
    t: i64,
    t_delta: u64,
    v: u64,
    leading: u8,
    trailing: u8,
    err: bool,
}

impl<'a> XorIterator<'a> {
    /// Iterates `data` (the chunk bytes including the 2-byte count).
    pub fn new(data: &'a [u8]) -> Self {
        let (total, err) = match data {
            [a, b, ..] => (u16::from_be_bytes([*a, *b]), false),
            _ => (0, !data.is_empty()),
        };
        Self {
            r: BitReader {
                data,
                pos: HEADER * 8,
            },
            total,
            read: 0,
            t: 0,
            t_delta: 0,
            v: 0,
            leading: 0,
            trailing: 0,
            err,
        }
    }

    /// The sample count the header claims.
    pub fn num_samples(&self) -> u16 {
        self.total
    }

    /// Whether iteration stopped because the data was malformed.
    pub fn error(&self) -> Option<ChunkCorrupt> {
        self.err.then_some(ChunkCorrupt)
    }

    fn next_sample(&mut self) -> Option<(i64, f64)> {
        match self.read {
            0 => {
                self.t = self.r.read_varint()?;
                self.v = self.r.read_bits(64)?;
            }
            1 => {
                self.t_delta = self.r.read_uvarint()?;
                self.t = self.t.wrapping_add(self.t_delta as i64);
                self.read_value()?;
            }
            _ => {
                let mut d = 0u8;
                for _ in 0..4 {
                    d <<= 1;
                    if !self.r.read_bit()? {
                        break;
                    }
                    d |= 1;
                }
                let dod: i64 = match d {
                    0b0 => 0,
                    0b10 => self.read_dod(14)?,
                    0b110 => self.read_dod(17)?,
                    0b1110 => self.read_dod(20)?,
                    _ => self.r.read_bits(64)? as i64,
                };
                self.t_delta = (self.t_delta as i64).wrapping_add(dod) as u64;
                self.t = self.t.wrapping_add(self.t_delta as i64);
                self.read_value()?;
            }
        }
        Some((self.t, f64::from_bits(self.v)))
    }

    fn read_dod(&mut self, sz: u32) -> Option<i64> {
        let mut bits = self.r.read_bits(sz)?;
        if bits > (1 << (sz - 1)) {
            bits = bits.wrapping_sub(1 << sz);
        }
        Some(bits as i64)
    }

    fn read_value(&mut self) -> Option<()> {
        if !self.r.read_bit()? {
            return Some(());
        }
        let mbits = if !self.r.read_bit()? {
            64 - u32::from(self.leading) - u32::from(self.trailing)
        } else {
            let lz = self.r.read_bits(5)? as u8;
            let mut mbits = self.r.read_bits(6)? as u32;
            if mbits == 0 {
                mbits = 64;
            }
            if u32::from(lz) + mbits > 64 {
                return None;
            }
            self.leading = lz;
            self.trailing = (64 - u32::from(lz) - mbits) as u8;
            mbits
        };
        let bits = self.r.read_bits(mbits)?;
        self.v ^= bits << self.trailing;
        Some(())
    }
}

impl Iterator for XorIterator<'_> {
    type Item = (i64, f64);

    fn next(&mut self) -> Option<(i64, f64)> {
        if self.err || self.read >= self.total {
            return None;
        }
        match self.next_sample() {
            Some(s) => {
                self.read += 1;
                Some(s)
            }
            None => {
                self.err = true;
                None
            }
        }
    }
}

/// Prometheus' head-chunk cutting rule for one series (spec §5): a chunk ends at the end of
/// the chunk range, earlier when a quarter-full chunk predicts it would get too few samples
/// in the remaining range, and at the latest at 2 × 120 samples.
#[derive(Debug, Clone, Copy)]
pub struct ChunkCutter {
    /// Time at which the next chunk must start.
    pub next_at: i64,
}

impl ChunkCutter {
    /// Whether a sample at `t` must go into a new chunk, given the current chunk's first and
    /// last time and sample count (`num == 0`: no current chunk). Updates the prediction.
    pub fn must_cut(&mut self, t: i64, min_t: i64, max_t: i64, num: u16) -> bool {
        if num == 0 {
            return true;
        }
        if num == SAMPLES_PER_CHUNK / 4 {
            self.next_at = compute_chunk_end_time(min_t, max_t, self.next_at);
        }
        t >= self.next_at || num >= SAMPLES_PER_CHUNK * 2
    }

    /// Records that a new chunk starts at `t`.
    pub fn cut(&mut self, t: i64, chunk_range: i64) {
        self.next_at = range_for_timestamp(t, chunk_range);
    }
}

/// End of the chunk range holding `t` (Go `rangeForTimestamp`, truncating division).
pub fn range_for_timestamp(t: i64, width: i64) -> i64 {
    (t / width) * width + width
}

/// Go `computeChunkEndTime`.
fn compute_chunk_end_time(start: i64, cur: i64, max: i64) -> i64 {
    let denom = (cur - start + 1).saturating_mul(4);
    if denom <= 0 {
        return max;
    }
    let n = (max - start) / denom;
    if n <= 1 {
        return max;
    }
    start + (max - start) / n
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn hex(b: &[u8]) -> String {
        b.iter().map(|x| format!("{x:02x}")).collect()
    }

    fn encode(samples: &[(i64, f64)]) -> XorChunk {
        let mut c = XorChunk::new();
        for &(t, v) in samples {
            assert!(c.append(t, v));
        }
        c
    }

    #[test]
    fn worked_example_matches_promtool() {
        let c = encode(&[(1000, 1.0), (2000, 1.0), (3000, 2.0)]);
        assert_eq!(hex(c.bytes()), "0003d00f3ff0000000000000e8073097ffc0");
        let got: Vec<_> = c.iter().collect();
        assert_eq!(got, [(1000, 1.0), (2000, 1.0), (3000, 2.0)]);
    }

    #[test]
    fn golden_vector_2_matches_promtool() {
        let samples = [
            (1000, 1.0),
            (101000, 1.0),
            (201000, 2.0),
            (309192, 1.0000000000000002),
            (409192, 1.0),
            (574728, -1.0000000000000002),
            (674729, 3.5),
            (1299018, 3.5),
            (1399020, 1e300),
            (6399020, -0.0),
            (6399021, 0.0),
            (6399022, 123.456),
            (6408022, 7.0),
            (6417022, 7.0),
        ];
        let c = encode(&samples);
        assert_eq!(
            hex(c.bytes()),
            "000ed00f3ff0000000000000a08d063097ffe80030ffffc0000000000007780020000000000000003a00018008000000000000001d0001bfff0000000000007a00001d000031f1df21e44003ace7800000000025624f5fc6fc8791000eb39fffffffffff67698340000000000000002405edd2f1a9fbe77c23278010b74bc6a7ef9dc0"
        );
        let got: Vec<_> = c.iter().map(|(t, v)| (t, v.to_bits())).collect();
        let want: Vec<_> = samples.iter().map(|&(t, v)| (t, v.to_bits())).collect();
        assert_eq!(got, want);
    }

    #[test]
    fn one_sample_chunk_has_go_242_trailing_byte() {
        // t0 varint (2 bytes) + 8 value bytes, written byte-aligned: 2.42 leaves an empty byte.
        let c = encode(&[(1000, 1.0)]);
        assert_eq!(hex(c.bytes()), "0001d00f3ff000000000000000");
        assert_eq!(c.iter().collect::<Vec<_>>(), [(1000, 1.0)]);
    }

    #[test]
    fn reader_accepts_reuse_window_with_zero_state() {
        // A stream whose first non-zero XOR uses `10` + 64 bits (what Prometheus writes after
        // reopening a chunk with constant values) must decode.
        let mut c = XorChunk::new();
        c.append(0, 1.0);
        c.append(10, 1.0);
        // Hand-write the third sample: dod 0, value control `10`, 64 bits of the XOR.
        c.leading = 0;
        c.trailing = 0;
        c.append(20, 2.0);
        let got: Vec<_> = c.iter().collect();
        assert_eq!(got, [(0, 1.0), (10, 1.0), (20, 2.0)]);
    }

    #[test]
    fn malformed_data_stops_without_panicking() {
        let c = encode(&[(1, 1.0), (2, 2.0), (3, 3.0)]);
        for cut in 0..c.bytes().len() {
            let mut it = XorIterator::new(&c.bytes()[..cut]);
            let n = it.by_ref().count();
            assert!(n < 3 || cut == c.bytes().len());
        }
        let mut bad = c.bytes().to_vec();
        bad[0] = 0xff;
        let mut it = XorIterator::new(&bad);
        let _ = it.by_ref().count();
        assert!(it.error().is_some());
    }

    #[test]
    fn cutter_gives_120_per_chunk_at_15s() {
        let range = 2 * 3600 * 1000;
        let mut cut = ChunkCutter { next_at: 0 };
        let (mut min_t, mut max_t, mut num) = (0i64, 0i64, 0u16);
        let mut sizes = Vec::new();
        for i in 0..400i64 {
            let t = i * 15_000;
            if cut.must_cut(t, min_t, max_t, num) {
                if num > 0 {
                    sizes.push(num);
                }
                cut.cut(t, range);
                min_t = t;
                num = 0;
            }
            max_t = t;
            num += 1;
        }
        sizes.push(num);
        assert_eq!(sizes, [120, 120, 120, 40]);
    }

    fn value() -> impl Strategy<Value = f64> {
        prop_oneof![
            any::<f64>(),
            Just(f64::NAN),
            Just(f64::INFINITY),
            Just(f64::NEG_INFINITY),
            // Prometheus' stale marker.
            Just(f64::from_bits(0x7ff0_0000_0000_0002)),
            Just(0.0),
            Just(-0.0),
            (0u64..1000).prop_map(|x| x as f64),
            any::<u64>().prop_map(f64::from_bits),
        ]
    }

    proptest! {
        #[test]
        fn round_trip_is_bit_exact(
            start in any::<i64>().prop_map(|t| t >> 2),
            deltas in proptest::collection::vec(prop_oneof![0i64..2, 1i64..100_000, 0i64..(1i64 << 40)], 0..300),
            values in proptest::collection::vec(value(), 300),
        ) {
            let mut c = XorChunk::new();
            let mut want = Vec::new();
            let mut t = start;
            for (i, d) in std::iter::once(0).chain(deltas).enumerate() {
                t = t.saturating_add(d);
                let v = values[i % values.len()];
                prop_assert!(c.append(t, v));
                want.push((t, v.to_bits()));
            }
            let got: Vec<_> = c.iter().map(|(t, v)| (t, v.to_bits())).collect();
            prop_assert_eq!(got, want);
        }
        #[test]
        fn inline_chunk_with_settled_bytes_moved_out_equals_the_plain_chunk(
            start in any::<i64>().prop_map(|t| t >> 2),
            deltas in proptest::collection::vec(prop_oneof![0i64..2, 1i64..100_000, 0i64..(1i64 << 40), any::<i64>()], 0..300),
            values in proptest::collection::vec(value(), 300),
        ) {
            let mut plain = XorChunk::new();
            let mut inline = XorChunk::<InlineBuf<24>>::inline();
            let mut moved = Vec::new();
            let mut t = start;
            for (i, d) in std::iter::once(0).chain(deltas).enumerate() {
                t = t.saturating_add(d);
                let v = values[i % values.len()];
                let bound = plain.append_bytes_bound(t, v);
                prop_assert!(bound <= MAX_SAMPLE_BYTES);
                if !inline.fits(t, v) {
                    moved.extend_from_slice(inline.settled());
                    inline.drop_settled();
                    prop_assert!(inline.fits(t, v));
                }
                let before = plain.len();
                prop_assert!(plain.append(t, v));
                prop_assert!(plain.len() - before <= bound, "{} > {}", plain.len() - before, bound);
                prop_assert!(inline.append(t, v));
                let held = inline.bytes();
                let mut joined = held[..2].to_vec();
                joined.extend_from_slice(&moved);
                joined.extend_from_slice(&held[2..]);
                prop_assert_eq!(hex(&joined), hex(plain.bytes()));
            }
        }
    }
}
