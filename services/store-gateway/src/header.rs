//! Index-headers: the parts of a block's `index` a store-gateway needs to plan a query — the
//! TOC, the symbol table and the postings offset table — fetched with ranged reads, kept on
//! local disk and memory-mapped. Postings lists, series and chunks are never in the header:
//! they are read from the bucket when a query needs them.
//!
//! File format (`<sync-dir>/<tenant>/<ULID>/index-header`, Norn's own, version 1; all
//! integers big-endian):
//!
//! ```text
//! magic u32 = 0x4E48_4452 ("NHDR") · version u8 = 1 · 3 zero bytes
//! index_size u64                        size of the bucket's index file
//! toc [52]                              the index's TOC, with its own CRC
//! symbols_off u64 · symbols_len u64     where the symbol table sits in the index
//! postings_off u64 · postings_len u64   where the postings offset table sits
//! symbol table bytes                    copied from the index (len · body · CRC)
//! postings offset table bytes           copied from the index (len · body · CRC)
//! crc u32                               CRC32C of everything before it
//! ```
//!
//! The file is written to a temporary name, fsynced and renamed, so a crash leaves either no
//! header or a whole one; at open the trailing checksum is verified before anything is
//! served, and a header that fails is rebuilt from the bucket.

use std::ops::Range;
use std::path::{Path, PathBuf};

use bytes::Bytes;
use norn_storage::Bucket;
use norn_tsdb::block::index::{
    INDEX_V2, INDEX_V3, MAGIC_INDEX, PostingsTable, TOC_SIZE, Toc, counted_body, counted_size,
    decode_toc, parse_postings_table, parse_symbols, symbol_at,
};
use norn_tsdb::block::io::{Decbuf, FileBytes, crc, write_file_synced};

use crate::error::{Error, Result};

/// The index-header file name inside a block's local directory.
pub const HEADER_FILENAME: &str = "index-header";
const MAGIC: u32 = 0x4E48_4452;
const VERSION: u8 = 1;
/// Fixed part before the copied sections.
const FIXED: usize = 8 + 8 + TOC_SIZE + 4 * 8;
/// Largest symbol table or postings offset table accepted (a hostile index must not make
/// the store-gateway allocate without bound).
const MAX_SECTION: u64 = 4 << 30;

/// What a header build read from the bucket.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BuildStats {
    pub bytes_fetched: u64,
    pub requests: u64,
}

/// Fetches the header sections of the index at `index_key` and writes the header to `path`.
pub async fn build(bucket: &Bucket, index_key: &str, path: &Path) -> Result<BuildStats> {
    let mut stats = BuildStats::default();
    let corrupt = |m: String| Error::Corrupt {
        what: index_key.to_string(),
        msg: m,
    };
    let mut get = Getter {
        bucket,
        key: index_key,
        stats: &mut stats,
    };
    let size = bucket
        .size(index_key)
        .await
        .map_err(|e| Error::bucket(index_key, e))?;
    if size < (5 + TOC_SIZE) as u64 {
        return Err(corrupt(format!(
            "index is {size} bytes, shorter than header + TOC (truncated?)"
        )));
    }
    let toc_start = size - TOC_SIZE as u64;
    let toc_bytes = get.get(toc_start..size).await?;
    let toc = decode_toc(&toc_bytes, toc_start).map_err(corrupt)?;
    if toc.symbols < 5 || toc.postings_table < 5 {
        return Err(corrupt(format!(
            "TOC offsets inside the index header: {toc:?}"
        )));
    }
    // The index header (magic, version) and the symbol table's length in one read.
    let head = get.get(0..toc.symbols + 4).await?;
    if head[..4] != MAGIC_INDEX.to_be_bytes() {
        return Err(corrupt("bad index magic".into()));
    }
    if !matches!(head[4], INDEX_V2 | INDEX_V3) {
        return Err(corrupt(format!("unsupported index version {}", head[4])));
    }
    let sym_len = counted_size(&head[head.len() - 4..]).unwrap_or(0) as u64;
    let symbols = section(&mut get, toc.symbols, sym_len, toc_start, "symbol table").await?;
    let pt_len_bytes = get.get(toc.postings_table..toc.postings_table + 4).await?;
    let pt_len = counted_size(&pt_len_bytes).unwrap_or(0) as u64;
    let postings = section(
        &mut get,
        toc.postings_table,
        pt_len,
        toc_start,
        "postings offset table",
    )
    .await?;
    // Check before writing: a header is only ever written from sections that parse.
    counted_body(&symbols, "symbol table").map_err(corrupt)?;
    counted_body(&postings, "postings offset table").map_err(corrupt)?;

    let mut out = Vec::with_capacity(FIXED + symbols.len() + postings.len() + 4);
    out.extend_from_slice(&MAGIC.to_be_bytes());
    out.extend_from_slice(&[VERSION, 0, 0, 0]);
    out.extend_from_slice(&size.to_be_bytes());
    out.extend_from_slice(&toc_bytes);
    for v in [
        toc.symbols,
        symbols.len() as u64,
        toc.postings_table,
        postings.len() as u64,
    ] {
        out.extend_from_slice(&v.to_be_bytes());
    }
    out.extend_from_slice(&symbols);
    out.extend_from_slice(&postings);
    let sum = crc(&out);
    out.extend_from_slice(&sum.to_be_bytes());
    // Parse what we are about to write, so a header on disk always opens.
    IndexHeader::parse(path, FileBytes::Owned(out.clone()))?;

    let dir = path
        .parent()
        .ok_or_else(|| Error::Io(format!("{} has no parent directory", path.display())))?;
    tokio::fs::create_dir_all(dir)
        .await
        .map_err(|e| Error::Io(format!("creating {}: {e}", dir.display())))?;
    let tmp = path.with_extension("tmp");
    let (tmp2, path2) = (tmp.clone(), path.to_path_buf());
    tokio::task::spawn_blocking(move || -> Result<()> {
        write_file_synced(&tmp2, &out).map_err(|e| Error::Io(e.to_string()))?;
        std::fs::rename(&tmp2, &path2)
            .map_err(|e| Error::Io(format!("renaming {}: {e}", tmp2.display())))?;
        norn_tsdb::block::io::sync_dir(path2.parent().unwrap_or(Path::new(".")))
            .map_err(|e| Error::Io(e.to_string()))
    })
    .await
    .map_err(|e| Error::Io(format!("header writer task: {e}")))??;
    Ok(stats)
}

/// Ranged reads of the index, counted.
struct Getter<'a> {
    bucket: &'a Bucket,
    key: &'a str,
    stats: &'a mut BuildStats,
}

impl Getter<'_> {
    async fn get(&mut self, r: Range<u64>) -> Result<Bytes> {
        let b = self
            .bucket
            .get_range(self.key, r.clone())
            .await
            .map_err(|e| Error::bucket(self.key, e))?;
        self.stats.bytes_fetched += b.len() as u64;
        self.stats.requests += 1;
        if b.len() as u64 != r.end - r.start {
            return Err(Error::Corrupt {
                what: self.key.to_string(),
                msg: format!("short read of {r:?}: {} bytes", b.len()),
            });
        }
        Ok(b)
    }
}

/// Reads the counted section at `off` of `len` bytes (length, body and CRC).
async fn section(
    get: &mut Getter<'_>,
    off: u64,
    len: u64,
    data_end: u64,
    what: &str,
) -> Result<Bytes> {
    if !(8..=MAX_SECTION).contains(&len) || off.saturating_add(len) > data_end {
        return Err(Error::Corrupt {
            what: what.to_string(),
            msg: format!("section of {len} bytes at {off} does not fit the index"),
        });
    }
    get.get(off..off + len).await
}

/// An open (memory-mapped, verified) index-header.
#[derive(Debug)]
pub struct IndexHeader {
    path: PathBuf,
    bytes: FileBytes,
    index_size: u64,
    toc: Toc,
    /// Each symbol's offset in `bytes`.
    symbols: Vec<u32>,
    table: PostingsTable,
    /// Every postings list's offset in the index, sorted, then the end of the last list:
    /// a list's bytes end where the next one starts.
    postings_bounds: Vec<u64>,
    /// Where the series section ends in the index.
    series_end: u64,
}

impl IndexHeader {
    /// Maps and verifies the header at `path`.
    pub fn open(path: &Path) -> Result<Self> {
        let bytes = FileBytes::open(path).map_err(|e| Error::Io(e.to_string()))?;
        Self::parse(path, bytes)
    }

    fn parse(path: &Path, bytes: FileBytes) -> Result<Self> {
        let corrupt = |m: String| Error::Corrupt {
            what: path.display().to_string(),
            msg: m,
        };
        if bytes.len() < FIXED + 4 {
            return Err(corrupt(format!("{} bytes: truncated", bytes.len())));
        }
        let (body, sum) = bytes.split_at(bytes.len() - 4);
        if crc(body).to_be_bytes() != sum {
            return Err(corrupt("checksum mismatch".into()));
        }
        let mut d = Decbuf::new(body);
        if d.be32() != Some(MAGIC) || d.u8() != Some(VERSION) {
            return Err(corrupt("not a version 1 index-header".into()));
        }
        d.pos = 8;
        let index_size = d.be64().unwrap_or(0);
        let toc_bytes = d.bytes(TOC_SIZE).unwrap_or(&[]);
        let toc =
            decode_toc(toc_bytes, index_size.saturating_sub(TOC_SIZE as u64)).map_err(corrupt)?;
        let mut f = [0u64; 4];
        for v in &mut f {
            *v = d.be64().unwrap_or(0);
        }
        let [sym_off, sym_len, pt_off, pt_len] = f;
        let base = d.pos;
        let (Ok(sym_len), Ok(pt_len)) = (usize::try_from(sym_len), usize::try_from(pt_len)) else {
            return Err(corrupt("section lengths overflow".into()));
        };
        if sym_off != toc.symbols
            || pt_off != toc.postings_table
            || base
                .checked_add(sym_len)
                .and_then(|x| x.checked_add(pt_len))
                != Some(body.len())
        {
            return Err(corrupt("section layout disagrees with the TOC".into()));
        }
        let sym = &body[base..base + sym_len];
        let sym_body = counted_body(sym, "symbol table").map_err(corrupt)?;
        let symbols = parse_symbols(sym_body, base + 4).map_err(corrupt)?;
        let pt = &body[base + sym_len..];
        let pt_body = counted_body(pt, "postings offset table").map_err(corrupt)?;
        let table = parse_postings_table(pt_body).map_err(corrupt)?;

        let data_end = index_size.saturating_sub(TOC_SIZE as u64);
        let mut bounds: Vec<u64> = table
            .names
            .iter()
            .flat_map(|n| n.values.iter().map(|(_, o)| *o))
            .chain([table.all_postings])
            .collect();
        bounds.sort_unstable();
        bounds.dedup();
        let last = bounds.last().copied().unwrap_or(0);
        let after = |x: u64| {
            [
                toc.label_indices,
                toc.postings,
                toc.label_indices_table,
                toc.postings_table,
            ]
            .into_iter()
            .filter(|&o| o > x)
            .min()
            .unwrap_or(data_end)
        };
        bounds.push(after(last));
        if bounds.iter().any(|&b| b > data_end) {
            return Err(corrupt("postings offsets beyond the index".into()));
        }
        let series_end = after(toc.series);
        Ok(Self {
            path: path.to_path_buf(),
            bytes,
            index_size,
            toc,
            symbols,
            table,
            postings_bounds: bounds,
            series_end,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Size of the bucket's index file.
    pub fn index_size(&self) -> u64 {
        self.index_size
    }

    pub fn toc(&self) -> Toc {
        self.toc
    }

    /// The postings offset table.
    pub fn table(&self) -> &PostingsTable {
        &self.table
    }

    /// Resolves a symbol ref of the index.
    pub fn symbol(&self, id: u64) -> std::result::Result<&str, String> {
        symbol_at(&self.bytes, &self.symbols, id)
    }

    /// Byte range in the index of the postings list starting at `off`.
    pub fn postings_range(&self, off: u64) -> Option<Range<u64>> {
        let i = self.postings_bounds.binary_search(&off).ok()?;
        let end = *self.postings_bounds.get(i + 1)?;
        Some(off..end)
    }

    /// Byte range in the index holding the series at `r` and maybe more: from its offset up
    /// to `max_len` bytes, within the series section.
    pub fn series_range(&self, r: u32, max_len: u64) -> Option<Range<u64>> {
        let off = u64::from(r) * 16;
        if off < self.toc.series || off >= self.series_end {
            return None;
        }
        Some(off..(off + max_len).min(self.series_end))
    }

    /// Bytes the header takes on disk (and in the page cache when hot).
    pub fn size_bytes(&self) -> u64 {
        self.bytes.len() as u64
    }
}

#[cfg(test)]
mod tests {
    use norn_tsdb::block::index::IndexReader;

    use super::*;
    use crate::testutil::{tenant_block, write_test_block};

    #[tokio::test]
    async fn build_reopen_and_checksum() {
        let bucket = Bucket::in_memory();
        let dir = tempfile::tempdir().unwrap();
        let id = write_test_block(&bucket, "t1", 0, 50).await;
        let key = format!("{}/index", tenant_block("t1", &id));
        let path = dir.path().join("h").join(HEADER_FILENAME);
        let stats = build(&bucket, &key, &path).await.unwrap();
        let index_bytes = bucket.get(&key).await.unwrap();
        assert!(stats.bytes_fetched < index_bytes.len() as u64, "{stats:?}");

        // The header answers what the whole-file reader answers.
        let full =
            IndexReader::from_bytes(Path::new("index"), FileBytes::Owned(index_bytes.to_vec()))
                .unwrap();
        let h = IndexHeader::open(&path).unwrap();
        assert_eq!(h.table(), full.table());
        assert_eq!(h.toc(), full.toc());
        assert_eq!(h.index_size(), full.size_bytes());
        for i in 0..full.num_symbols() as u64 {
            assert_eq!(h.symbol(i).unwrap(), full.symbol(i).unwrap());
        }
        assert!(h.symbol(full.num_symbols() as u64).is_err());
        // Every postings range covers exactly its list (plus alignment padding).
        let (_, off) = h.table().values("job")[0].clone();
        let r = h.postings_range(off).unwrap();
        let bytes = &index_bytes[r.start as usize..r.end as usize];
        assert_eq!(
            norn_tsdb::block::index::decode_postings(counted_body(bytes, "p").unwrap()).unwrap(),
            full.postings_at(off).unwrap()
        );

        // Reopening validates the checksum: any flipped byte is refused.
        let good = std::fs::read(&path).unwrap();
        for i in [0, 9, FIXED + 3, good.len() / 2, good.len() - 1] {
            let mut b = good.clone();
            b[i] ^= 0x40;
            std::fs::write(&path, &b).unwrap();
            assert!(IndexHeader::open(&path).is_err(), "flip at {i} accepted");
        }
        std::fs::write(&path, &good[..good.len() - 1]).unwrap();
        assert!(IndexHeader::open(&path).is_err());
        std::fs::write(&path, &good).unwrap();
        assert!(IndexHeader::open(&path).is_ok());
    }

    #[tokio::test]
    async fn corrupt_index_is_refused() {
        let bucket = Bucket::in_memory();
        let dir = tempfile::tempdir().unwrap();
        let id = write_test_block(&bucket, "t1", 0, 5).await;
        let key = format!("{}/index", tenant_block("t1", &id));
        let mut b = bucket.get(&key).await.unwrap().to_vec();
        let n = b.len();
        b[n - 10] ^= 0xff; // inside the TOC
        bucket.put(&key, b.into()).await.unwrap();
        let path = dir.path().join(HEADER_FILENAME);
        let e = build(&bucket, &key, &path).await.unwrap_err();
        assert!(e.to_string().contains("TOC"), "{e}");
        assert!(!path.exists());
    }
}
