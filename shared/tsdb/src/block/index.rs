//! The block index, format v2 (spec §6–7), writer and reader.
//!
//! Sections in file order: header · symbol table · series (16-byte aligned, ref = offset/16)
//! · label indices · postings lists (4-byte aligned; the all-postings list under `("", "")`
//! first) · label offset table · postings offset table · TOC. The writer reproduces what
//! Prometheus 2.42 writes byte for byte — including the empty symbol, the label indices and
//! the label offset table that 3.7 dropped — so promtool's own output and ours can be
//! compared with `cmp`. The reader follows the 3.x rules: it navigates only by the TOC and
//! the postings offset table, never parses the label indices, accepts v3 as v2, and checks
//! every CRC it relies on before serving data.

use std::io::Write;
use std::path::{Path, PathBuf};

use norn_model::{Label, Labels};

use super::io::{Decbuf, FileBytes, PosWriter, crc, put_str, put_uvarint, put_varint};
use crate::error::{Result, TsdbError};

/// Index magic.
pub const MAGIC_INDEX: u32 = 0xBAAA_D700;
/// The index version every Prometheus since 2.1 writes.
pub const INDEX_V2: u8 = 2;
/// Accepted by readers since 2.55 and read like v2; never written.
pub const INDEX_V3: u8 = 3;
/// Size of the TOC at the end of the file: 6 offsets and a CRC.
pub const TOC_SIZE: usize = 6 * 8 + 4;

/// The table of contents: absolute offsets of each section (0 = absent).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Toc {
    pub symbols: u64,
    pub series: u64,
    pub label_indices: u64,
    pub label_indices_table: u64,
    pub postings: u64,
    pub postings_table: u64,
}

/// A chunk as the index describes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChunkRef {
    pub min_t: i64,
    /// Time of the last sample (inclusive).
    pub max_t: i64,
    /// `segment_index << 32 | offset` into the block's chunk segments.
    pub r: u64,
}

/// A series to write: label pairs as symbol ids (into the sorted symbol list, sorted by
/// name) and its chunks.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct IndexSeries {
    pub labels: Vec<(u32, u32)>,
    pub chunks: Vec<ChunkRef>,
}

/// Writes a complete index. `symbols` must be sorted, unique and include `""` (the
/// all-postings key's name and value); `series` must be sorted by label set with every
/// symbol id in range. Violations are caller bugs reported as `InvalidOption`.
pub fn write_index<W: Write>(
    w: &mut PosWriter<W>,
    symbols: &[impl AsRef<[u8]>],
    series: &[IndexSeries],
) -> Result<Toc> {
    let mut it = series.iter();
    write_index_with(w, symbols, |out| {
        Ok(it.next().map(|s| out.clone_from(s)).is_some())
    })
}

/// [`write_index`] with the series given one at a time: `next` fills the reused
/// [`IndexSeries`] and returns false after the last, so the caller needs to hold only its own
/// compact form of them (the block writer's [`SeriesSpill`](super::series_spill::SeriesSpill)).
pub fn write_index_with<W: Write>(
    w: &mut PosWriter<W>,
    symbols: &[impl AsRef<[u8]>],
    mut next: impl FnMut(&mut IndexSeries) -> Result<bool>,
) -> Result<Toc> {
    let invalid = |m: String| TsdbError::InvalidOption(format!("index writer: {m}"));
    if symbols.first().map(|s| s.as_ref().is_empty()) != Some(true) {
        return Err(invalid(
            "symbol table must start with the empty string".into(),
        ));
    }
    if !symbols.windows(2).all(|p| p[0].as_ref() < p[1].as_ref()) {
        return Err(invalid("symbols are not sorted and unique".into()));
    }
    let nsym = symbols.len() as u32;
    let mut toc = Toc::default();
    let mut buf = Vec::with_capacity(1 << 12);

    let mut header = MAGIC_INDEX.to_be_bytes().to_vec();
    header.push(INDEX_V2);
    w.write(&header)?;

    // Symbol table: len · count · strings · CRC(count + strings).
    toc.symbols = w.pos;
    buf.extend_from_slice(&nsym.to_be_bytes());
    for s in symbols {
        put_str(&mut buf, s.as_ref());
    }
    write_counted(w, &buf)?;

    // Series, each 16-byte aligned; the TOC records the position before the padding.
    toc.series = w.pos;
    let mut refs = Vec::new();
    // (name, value, series index) of every label pair, for postings and label indices.
    let mut pairs: Vec<(u32, u32, u32)> = Vec::new();
    let mut s = IndexSeries::default();
    let mut i = 0usize;
    while next(&mut s)? {
        w.pad(16)?;
        let r = u32::try_from(w.pos / 16)
            .map_err(|_| invalid("index exceeds 64 GiB of series".into()))?;
        if let Some(&prev) = refs.last()
            && prev >= r
        {
            return Err(invalid("series refs do not ascend".into()));
        }
        refs.push(r);
        buf.clear();
        put_uvarint(&mut buf, s.labels.len() as u64);
        for &(n, v) in &s.labels {
            if n >= nsym || v >= nsym {
                return Err(invalid(format!("symbol id out of range in series {i}")));
            }
            put_uvarint(&mut buf, u64::from(n));
            put_uvarint(&mut buf, u64::from(v));
            pairs.push((n, v, i as u32));
        }
        put_uvarint(&mut buf, s.chunks.len() as u64);
        let mut prev: Option<ChunkRef> = None;
        for c in &s.chunks {
            match prev {
                None => {
                    put_varint(&mut buf, c.min_t);
                    put_uvarint(&mut buf, c.max_t.wrapping_sub(c.min_t) as u64);
                    put_uvarint(&mut buf, c.r);
                }
                Some(p) => {
                    put_uvarint(&mut buf, c.min_t.wrapping_sub(p.max_t) as u64);
                    put_uvarint(&mut buf, c.max_t.wrapping_sub(c.min_t) as u64);
                    put_varint(&mut buf, c.r.wrapping_sub(p.r) as i64);
                }
            }
            prev = Some(*c);
        }
        let mut len = Vec::with_capacity(5);
        put_uvarint(&mut len, buf.len() as u64);
        w.write(&len)?;
        w.write(&buf)?;
        w.write(&crc(&buf).to_be_bytes())?;
        i += 1;
    }
    pairs.sort_unstable();

    // Label indices (one per name, values as sorted symbol ids), as 2.42 still writes them.
    toc.label_indices = w.pos;
    let mut label_index_offsets: Vec<(u32, u64)> = Vec::new();
    for group in pairs.chunk_by(|a, b| a.0 == b.0) {
        w.pad(4)?;
        label_index_offsets.push((group[0].0, w.pos));
        let mut values: Vec<u32> = group.iter().map(|p| p.1).collect();
        values.dedup();
        buf.clear();
        buf.extend_from_slice(&1u32.to_be_bytes());
        buf.extend_from_slice(&(values.len() as u32).to_be_bytes());
        for v in values {
            buf.extend_from_slice(&v.to_be_bytes());
        }
        write_counted(w, &buf)?;
    }

    // Postings: all series under ("", "") first, then one list per (name, value).
    toc.postings = w.pos;
    let mut postings_offsets: Vec<(u32, u32, u64)> = Vec::new();
    let mut write_postings = |w: &mut PosWriter<W>, list: &mut dyn Iterator<Item = u32>| {
        w.pad(4)?;
        let off = w.pos;
        buf.clear();
        buf.extend_from_slice(&[0; 4]);
        let mut n = 0u32;
        for r in list {
            buf.extend_from_slice(&r.to_be_bytes());
            n += 1;
        }
        buf[..4].copy_from_slice(&n.to_be_bytes());
        write_counted(w, &buf)?;
        Ok::<u64, TsdbError>(off)
    };
    let off = write_postings(w, &mut refs.iter().copied())?;
    postings_offsets.push((0, 0, off));
    for group in pairs.chunk_by(|a, b| (a.0, a.1) == (b.0, b.1)) {
        let off = write_postings(w, &mut group.iter().map(|p| refs[p.2 as usize]))?;
        postings_offsets.push((group[0].0, group[0].1, off));
    }

    // Label offset table.
    toc.label_indices_table = w.pos;
    buf.clear();
    buf.extend_from_slice(&(label_index_offsets.len() as u32).to_be_bytes());
    for &(n, off) in &label_index_offsets {
        put_uvarint(&mut buf, 1);
        put_str(&mut buf, symbols[n as usize].as_ref());
        put_uvarint(&mut buf, off);
    }
    write_counted(w, &buf)?;

    // Postings offset table.
    toc.postings_table = w.pos;
    buf.clear();
    buf.extend_from_slice(&(postings_offsets.len() as u32).to_be_bytes());
    for &(n, v, off) in &postings_offsets {
        put_uvarint(&mut buf, 2);
        put_str(&mut buf, symbols[n as usize].as_ref());
        put_str(&mut buf, symbols[v as usize].as_ref());
        put_uvarint(&mut buf, off);
    }
    write_counted(w, &buf)?;

    buf.clear();
    for v in [
        toc.symbols,
        toc.series,
        toc.label_indices,
        toc.label_indices_table,
        toc.postings,
        toc.postings_table,
    ] {
        buf.extend_from_slice(&v.to_be_bytes());
    }
    w.write(&buf)?;
    w.write(&crc(&buf).to_be_bytes())?;
    Ok(toc)
}

/// Writes `len u32 · bytes · CRC(bytes)`, the framing of most index sections.
fn write_counted<W: Write>(w: &mut PosWriter<W>, b: &[u8]) -> Result<()> {
    let len = u32::try_from(b.len()).map_err(|_| {
        TsdbError::InvalidOption(format!(
            "index section of {} bytes exceeds 4 GiB ({})",
            b.len(),
            w.path().display()
        ))
    })?;
    w.write(&len.to_be_bytes())?;
    w.write(b)?;
    w.write(&crc(b).to_be_bytes())
}

/// A series read from the index.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SeriesEntry {
    pub labels: Labels,
    pub chunks: Vec<ChunkRef>,
}

/// The values of one label name with the offsets of their postings lists.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NameValues {
    pub name: String,
    /// Sorted by value.
    pub values: Vec<(String, u64)>,
}

/// The postings offset table, parsed: where each `(name, value)`'s postings list starts.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PostingsTable {
    /// Offset of the all-postings list (key `("", "")`).
    pub all_postings: u64,
    /// Label names, sorted, each with its values.
    pub names: Vec<NameValues>,
}

impl PostingsTable {
    /// Values of `name`, sorted, each with the offset of its postings list.
    pub fn values(&self, name: &str) -> &[(String, u64)] {
        self.names
            .binary_search_by(|n| n.name.as_str().cmp(name))
            .map_or(&[], |i| self.names[i].values.as_slice())
    }
}

// The parsers below work on bytes alone (no file, no path) so the store-gateway can run them
// on sections fetched with ranged reads; errors are messages the caller wraps with the file.

/// Decodes the 52-byte TOC at the end of an index, verifying its CRC; `data_end` (the TOC's
/// own offset) bounds every section offset.
pub fn decode_toc(tb: &[u8], data_end: u64) -> std::result::Result<Toc, String> {
    if tb.len() != TOC_SIZE {
        return Err(format!("TOC is {} bytes, not {TOC_SIZE}", tb.len()));
    }
    let want = u32::from_be_bytes([tb[48], tb[49], tb[50], tb[51]]);
    if crc(&tb[..48]) != want {
        return Err("TOC checksum mismatch (file truncated or damaged)".into());
    }
    let mut d = Decbuf::new(tb);
    let mut o = [0u64; 6];
    for v in &mut o {
        *v = d.be64().unwrap_or(u64::MAX);
    }
    let toc = Toc {
        symbols: o[0],
        series: o[1],
        label_indices: o[2],
        label_indices_table: o[3],
        postings: o[4],
        postings_table: o[5],
    };
    if o.iter().any(|&v| v > data_end) {
        return Err(format!("TOC offset beyond the end of the data: {toc:?}"));
    }
    if toc.symbols == 0 || toc.postings_table == 0 {
        return Err("TOC lacks the symbol table or postings offset table".into());
    }
    Ok(toc)
}

/// Total size of the `len u32 · bytes · CRC` section starting at `b[0]`, once its length
/// field is there (`None`: fewer than 4 bytes).
pub fn counted_size(b: &[u8]) -> Option<usize> {
    let len = u32::from_be_bytes(b.get(..4)?.try_into().ok()?);
    Some(8 + len as usize)
}

/// The body of the `len u32 · bytes · CRC` section at the start of `b`, CRC verified.
pub fn counted_body<'a>(b: &'a [u8], what: &str) -> std::result::Result<&'a [u8], String> {
    let mut d = Decbuf::new(b);
    let len = d
        .be32()
        .ok_or_else(|| format!("{what}: truncated length"))?;
    let body = d
        .bytes(len as usize)
        .ok_or_else(|| format!("{what}: length {len} runs past the end of the data"))?;
    let want = d
        .be32()
        .ok_or_else(|| format!("{what}: truncated checksum"))?;
    if crc(body) != want {
        return Err(format!("{what}: checksum mismatch"));
    }
    Ok(body)
}

/// Parses a symbol table body (after its length field); `base` is the offset of the body's
/// first byte in whatever holds it, and the result is each symbol's offset there.
pub fn parse_symbols(body: &[u8], base: usize) -> std::result::Result<Vec<u32>, String> {
    let mut d = Decbuf::new(body);
    let bad = || "symbol table: malformed entries".to_string();
    let n = d.be32().ok_or_else(bad)?;
    let mut out = Vec::with_capacity((n as usize).min(body.len()));
    let mut prev: Option<&[u8]> = None;
    for _ in 0..n {
        let at = base + d.pos;
        let s = d.str_bytes().ok_or_else(bad)?;
        std::str::from_utf8(s).map_err(|_| format!("symbol at {at} is not UTF-8"))?;
        if prev.is_some_and(|p| p >= s) {
            return Err("symbol table is not sorted".into());
        }
        prev = Some(s);
        out.push(u32::try_from(at).map_err(|_| bad())?);
    }
    if d.remaining() != 0 {
        return Err("symbol table: trailing bytes after the last symbol".into());
    }
    Ok(out)
}

/// Parses a postings offset table body (after its length field).
pub fn parse_postings_table(body: &[u8]) -> std::result::Result<PostingsTable, String> {
    let bad = |m: &str| format!("postings offset table: {m}");
    let mut d = Decbuf::new(body);
    let n = d.be32().ok_or_else(|| bad("truncated"))?;
    let mut all = None;
    let mut names: Vec<NameValues> = Vec::new();
    let mut sorted = true;
    let mut last: Option<(&[u8], &[u8])> = None;
    for _ in 0..n {
        if d.uvarint() != Some(2) {
            return Err(bad("entry does not hold 2 strings"));
        }
        let name = d.str_bytes().ok_or_else(|| bad("truncated entry"))?;
        let value = d.str_bytes().ok_or_else(|| bad("truncated entry"))?;
        let off = d.uvarint().ok_or_else(|| bad("truncated entry"))?;
        if last.is_some_and(|l| l >= (name, value)) {
            sorted = false;
        }
        last = Some((name, value));
        let (Ok(name), Ok(value)) = (std::str::from_utf8(name), std::str::from_utf8(value)) else {
            return Err(bad("label name or value is not UTF-8"));
        };
        if name.is_empty() {
            if value.is_empty() {
                all = Some(off);
            }
            continue;
        }
        match names.last_mut() {
            Some(nv) if nv.name == name => nv.values.push((value.to_string(), off)),
            _ => names.push(NameValues {
                name: name.to_string(),
                values: vec![(value.to_string(), off)],
            }),
        }
    }
    if d.remaining() != 0 {
        return Err(bad("trailing bytes after the last entry"));
    }
    if !sorted {
        return Err(bad("entries are not sorted by (name, value)"));
    }
    Ok(PostingsTable {
        all_postings: all.ok_or_else(|| bad("no all-postings entry"))?,
        names,
    })
}

/// Decodes a postings list body (after its length field, CRC already verified): series refs,
/// strictly ascending.
pub fn decode_postings(body: &[u8]) -> std::result::Result<Vec<u32>, String> {
    let mut d = Decbuf::new(body);
    let n = d.be32().unwrap_or(0) as usize;
    if body.len() != 4 + 4 * n {
        return Err(format!("{n} entries do not fill {} bytes", body.len()));
    }
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let r = d.be32().unwrap_or(0);
        if out.last().is_some_and(|&p| p >= r) {
            return Err("postings list is not sorted".into());
        }
        out.push(r);
    }
    Ok(out)
}

/// Total size of the series entry (`len uvarint · body · CRC`) starting at `b[0]`, once its
/// length field is there.
pub fn series_entry_size(b: &[u8]) -> Option<usize> {
    let mut d = Decbuf::new(b);
    let len = usize::try_from(d.uvarint()?).ok()?;
    d.pos.checked_add(len)?.checked_add(4)
}

/// Decodes the series entry at the start of `b`, verifying its CRC and resolving label
/// symbols with `symbol`.
pub fn decode_series_entry<'s>(
    b: &[u8],
    symbol: impl Fn(u64) -> std::result::Result<&'s str, String>,
) -> std::result::Result<SeriesEntry, String> {
    let mut d = Decbuf::new(b);
    let len = d.uvarint().ok_or("truncated length")?;
    let body = usize::try_from(len)
        .ok()
        .and_then(|l| d.bytes(l))
        .ok_or("length runs past the end of the data")?;
    let want = d.be32().ok_or("truncated checksum")?;
    if crc(body) != want {
        return Err("checksum mismatch".into());
    }
    let mut d = Decbuf::new(body);
    let malformed = || "malformed entry".to_string();
    let nl = d.uvarint().ok_or_else(malformed)?;
    let mut labels = Vec::with_capacity((nl as usize).min(64));
    for _ in 0..nl {
        let n = d.uvarint().ok_or_else(malformed)?;
        let v = d.uvarint().ok_or_else(malformed)?;
        let name = symbol(n)?;
        if labels
            .last()
            .is_some_and(|l: &Label| l.name.as_str() >= name)
        {
            return Err("labels are not sorted by name".into());
        }
        labels.push(Label::new(name, symbol(v)?));
    }
    let nc = d.uvarint().ok_or_else(malformed)?;
    let mut chunks: Vec<ChunkRef> = Vec::with_capacity((nc as usize).min(1024));
    for i in 0..nc {
        let c = if i == 0 {
            let min_t = d.varint().ok_or_else(malformed)?;
            let dt = d.uvarint().ok_or_else(malformed)?;
            let r = d.uvarint().ok_or_else(malformed)?;
            ChunkRef {
                min_t,
                max_t: min_t.wrapping_add(dt as i64),
                r,
            }
        } else {
            let prev = chunks[chunks.len() - 1];
            let gap = d.uvarint().ok_or_else(malformed)?;
            let dt = d.uvarint().ok_or_else(malformed)?;
            let dr = d.varint().ok_or_else(malformed)?;
            let min_t = prev.max_t.wrapping_add(gap as i64);
            if min_t < prev.max_t {
                return Err("chunk gap overflows the time range".into());
            }
            ChunkRef {
                min_t,
                max_t: min_t.wrapping_add(dt as i64),
                r: prev.r.wrapping_add(dr as u64),
            }
        };
        if c.max_t < c.min_t {
            return Err("chunk ends before it starts".into());
        }
        chunks.push(c);
    }
    if d.remaining() != 0 {
        return Err("trailing bytes after the chunks".into());
    }
    Ok(SeriesEntry {
        labels: Labels::from_sorted(labels),
        chunks,
    })
}

/// Resolves symbol `id` given each symbol's offset in `b` (from [`parse_symbols`]).
pub fn symbol_at<'b>(
    b: &'b [u8],
    offsets: &[u32],
    id: u64,
) -> std::result::Result<&'b str, String> {
    let off = usize::try_from(id)
        .ok()
        .and_then(|i| offsets.get(i))
        .ok_or_else(|| format!("symbol ref {id} out of range"))?;
    let mut d = Decbuf::new(b);
    d.pos = *off as usize;
    let s = d
        .str_bytes()
        .ok_or_else(|| format!("symbol {id} truncated"))?;
    std::str::from_utf8(s).map_err(|_| format!("symbol {id} is not UTF-8"))
}

/// A validated, memory-mapped index.
#[derive(Debug)]
pub struct IndexReader {
    path: PathBuf,
    b: FileBytes,
    toc: Toc,
    /// Offset of each symbol's length prefix; a v2 symbol ref is its position here.
    symbols: Vec<u32>,
    table: PostingsTable,
}

impl IndexReader {
    /// Maps and validates the index at `path`.
    pub fn open(path: &Path) -> Result<Self> {
        Self::from_bytes(path, FileBytes::open(path)?)
    }

    /// Validates index bytes; `path` names the file in errors. Checks the magic, version,
    /// TOC, symbol table and postings offset table (with their CRCs); series entries and
    /// postings lists are checked when read.
    pub fn from_bytes(path: &Path, b: FileBytes) -> Result<Self> {
        let corrupt = |msg: String| TsdbError::Corrupt {
            path: path.to_path_buf(),
            msg,
        };
        if b.len() < 5 + TOC_SIZE {
            return Err(corrupt(format!(
                "index is {} bytes, shorter than header + TOC (truncated?)",
                b.len()
            )));
        }
        if b[..4] != MAGIC_INDEX.to_be_bytes() {
            return Err(corrupt("bad index magic".into()));
        }
        match b[4] {
            INDEX_V2 | INDEX_V3 => {}
            1 => {
                return Err(corrupt(
                    "index format v1 (Prometheus 2.0) is not supported".into(),
                ));
            }
            v => return Err(corrupt(format!("unknown index version {v}"))),
        }
        let toc_start = b.len() - TOC_SIZE;
        let toc = decode_toc(&b[toc_start..], toc_start as u64).map_err(corrupt)?;
        let mut r = Self {
            path: path.to_path_buf(),
            b,
            toc,
            symbols: Vec::new(),
            table: PostingsTable::default(),
        };
        let off = toc.symbols;
        let body = r.counted(off, "symbol table")?;
        r.symbols = parse_symbols(body, off as usize + 4).map_err(|m| r.corrupt(m))?;
        let body = r.counted(toc.postings_table, "postings offset table")?;
        r.table = parse_postings_table(body).map_err(|m| r.corrupt(m))?;
        Ok(r)
    }

    fn corrupt(&self, msg: String) -> TsdbError {
        TsdbError::Corrupt {
            path: self.path.clone(),
            msg,
        }
    }

    /// Reads `len u32 · bytes · CRC` at `off`, verifying the CRC; returns the bytes.
    fn counted(&self, off: u64, what: &str) -> Result<&[u8]> {
        let data = &self.b[..self.b.len() - TOC_SIZE];
        let at = usize::try_from(off).unwrap_or(usize::MAX).min(data.len());
        counted_body(&data[at..], &format!("{what} at {off}")).map_err(|m| self.corrupt(m))
    }

    /// The file this reads.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The TOC.
    pub fn toc(&self) -> Toc {
        self.toc
    }

    /// The parsed postings offset table.
    pub fn table(&self) -> &PostingsTable {
        &self.table
    }

    /// Size of the index file.
    pub fn size_bytes(&self) -> u64 {
        self.b.len() as u64
    }

    /// Number of symbols.
    pub fn num_symbols(&self) -> usize {
        self.symbols.len()
    }

    /// Resolves a v2 symbol ref.
    pub fn symbol(&self, id: u64) -> Result<&str> {
        symbol_at(&self.b, &self.symbols, id).map_err(|m| self.corrupt(m))
    }

    /// Label names present in the index, sorted.
    pub fn label_names(&self) -> impl Iterator<Item = &str> {
        self.table.names.iter().map(|n| n.name.as_str())
    }

    /// Values of `name`, sorted, each with the offset of its postings list.
    pub fn values(&self, name: &str) -> &[(String, u64)] {
        self.table.values(name)
    }

    /// Series refs of the postings list at `off`, verified and strictly ascending.
    pub fn postings_at(&self, off: u64) -> Result<Vec<u32>> {
        let body = self.counted(off, "postings list")?;
        decode_postings(body).map_err(|m| self.corrupt(format!("postings list at {off}: {m}")))
    }

    /// Refs of the series having `name=value` (empty if there are none).
    pub fn postings(&self, name: &str, value: &str) -> Result<Vec<u32>> {
        let vals = self.values(name);
        match vals.binary_search_by(|(v, _)| v.as_str().cmp(value)) {
            Ok(i) => self.postings_at(vals[i].1),
            Err(_) => Ok(Vec::new()),
        }
    }

    /// Number of series, from the header of the all-postings list (not CRC-checked: a cheap
    /// plausibility check at open; [`Self::all_postings`] verifies the list).
    pub fn num_series(&self) -> Result<u32> {
        let mut d = Decbuf::new(&self.b[..self.b.len() - TOC_SIZE]);
        d.pos = usize::try_from(self.table.all_postings).unwrap_or(usize::MAX);
        d.pos = d.pos.min(self.b.len());
        match (d.be32(), d.be32()) {
            (Some(_), Some(n)) => Ok(n),
            _ => Err(self.corrupt(format!(
                "all-postings list at {}: truncated",
                self.table.all_postings
            ))),
        }
    }

    /// Every series ref.
    pub fn all_postings(&self) -> Result<Vec<u32>> {
        self.postings_at(self.table.all_postings)
    }

    /// Reads the series at `r` (offset `r * 16`), verifying its CRC and decoding its labels.
    pub fn series(&self, r: u32) -> Result<SeriesEntry> {
        let off = u64::from(r) * 16;
        let bad = |m: &str| self.corrupt(format!("series ref {r} (offset {off}): {m}"));
        let data = &self.b[..self.b.len() - TOC_SIZE];
        if off < self.toc.series || off >= data.len() as u64 {
            return Err(bad("outside the series section"));
        }
        decode_series_entry(&data[off as usize..], |id| {
            symbol_at(&self.b, &self.symbols, id)
        })
        .map_err(|m| bad(&m))
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// The 269-byte index promtool 2.42 writes for `foo{a="b"}` with one chunk at ref 8
    /// covering [1000, 3000] (spec §6).
    pub(crate) const SPEC_INDEX: &str = concat!(
        "baaad70002000000160000000500085f5f6e616d655f5f0161016203666f6f9e48b03c00000000000000000000000000",
        "0b020104020301d00fd00f0839dfaf3d0000000c00000001000000010000000420d59ba60000000c0000000100000001",
        "00000003f41fff4d000000080000000100000003a7692ed2000000080000000100000003a7692ed20000000800000001",
        "00000003a7692ed2000000130000000201085f5f6e616d655f5f40010161541304983a0000001e000000030200006802",
        "085f5f6e616d655f5f03666f6f7802016101628801cd153bb40000000000000005000000000000002300000000000000",
        "400000000000000098000000000000006800000000000000b31a4d5603",
    );

    pub(crate) fn hex(s: &str) -> Vec<u8> {
        let s: String = s.chars().filter(|c| !c.is_whitespace()).collect();
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    fn spec_input() -> (Vec<&'static str>, Vec<IndexSeries>) {
        let symbols = vec!["", "__name__", "a", "b", "foo"];
        let series = vec![IndexSeries {
            labels: vec![(1, 4), (2, 3)],
            chunks: vec![ChunkRef {
                min_t: 1000,
                max_t: 3000,
                r: 8,
            }],
        }];
        (symbols, series)
    }

    #[test]
    fn spec_index_byte_for_byte() {
        let (symbols, series) = spec_input();
        let mut w = PosWriter::memory();
        let toc = write_index(&mut w, &symbols, &series).unwrap();
        let got = w.into_bytes();
        let want = hex(SPEC_INDEX);
        assert_eq!(want.len(), 269);
        assert_eq!(got, want);
        assert_eq!(
            toc,
            Toc {
                symbols: 0x05,
                series: 0x23,
                label_indices: 0x40,
                label_indices_table: 0x98,
                postings: 0x68,
                postings_table: 0xB3
            }
        );
    }

    #[test]
    fn reads_the_spec_index() {
        let r =
            IndexReader::from_bytes(Path::new("index"), FileBytes::Owned(hex(SPEC_INDEX))).unwrap();
        assert_eq!(r.num_symbols(), 5);
        assert_eq!(r.label_names().collect::<Vec<_>>(), ["__name__", "a"]);
        assert_eq!(r.all_postings().unwrap(), [3]);
        assert_eq!(r.postings("a", "b").unwrap(), [3]);
        assert!(r.postings("a", "c").unwrap().is_empty());
        let s = r.series(3).unwrap();
        assert_eq!(
            s.labels,
            Labels::from_pairs([("__name__", "foo"), ("a", "b")])
        );
        assert_eq!(s.chunks, spec_input().1[0].chunks);
        assert!(r.series(2).is_err());
        assert!(r.series(1000).is_err());
    }

    /// Every single-byte change either fails validation or leaves what the reader serves
    /// unchanged (padding, label indices and the label offset table are not read).
    #[test]
    fn every_flipped_byte_is_caught_or_harmless() {
        let good = hex(SPEC_INDEX);
        let read = |b: Vec<u8>| -> Result<(Vec<u32>, SeriesEntry, Vec<u32>)> {
            let r = IndexReader::from_bytes(Path::new("index"), FileBytes::Owned(b))?;
            let all = r.all_postings()?;
            let s = r.series(all.first().copied().unwrap_or(0))?;
            let p = r.postings("__name__", "foo")?;
            Ok((all, s, p))
        };
        let want = read(good.clone()).unwrap();
        for i in 0..good.len() {
            for x in [0x01, 0x80, 0xff] {
                let mut b = good.clone();
                b[i] ^= x;
                if let Ok(got) = read(b) {
                    assert_eq!(got, want, "flip {x:#x} at {i:#x} changed the data");
                }
            }
        }
        for n in 0..good.len() {
            assert!(read(good[..n].to_vec()).is_err(), "truncated to {n}");
        }
    }

    #[test]
    fn rejects_v1_and_unknown_versions() {
        let mut b = hex(SPEC_INDEX);
        b[4] = 1;
        let e = IndexReader::from_bytes(Path::new("x/index"), FileBytes::Owned(b.clone()))
            .unwrap_err()
            .to_string();
        assert!(e.contains("x/index") && e.contains("v1"), "{e}");
        b[4] = 3;
        assert!(IndexReader::from_bytes(Path::new("index"), FileBytes::Owned(b.clone())).is_ok());
        b[4] = 9;
        assert!(IndexReader::from_bytes(Path::new("index"), FileBytes::Owned(b)).is_err());
    }
}
