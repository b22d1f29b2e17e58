//! A block of arbitrary bytes, read the way the store-gateway and compactor read one.
//!
//! Input layout: `[u32 LE meta.json length][u32 LE index length][meta.json][index][rest]`,
//! where the rest is chunk segment `chunks/000001` (lengths are clamped to the input). Each
//! part goes through its reader on its own (meta.json parser, `IndexReader::from_bytes` and
//! every series entry, `ChunkReader` and every chunk the index points at), then the three are
//! written to a block directory and `Block::open` + `verify` + `select` run over it.
#![no_main]

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use norn_model::{MatchType, Matcher};
use norn_tsdb::block::chunks::ChunkReader;
use norn_tsdb::block::index::IndexReader;
use norn_tsdb::block::io::FileBytes;
use norn_tsdb::block::{Block, BlockMeta};

fn dir() -> &'static PathBuf {
    static DIR: OnceLock<(tempfile::TempDir, PathBuf)> = OnceLock::new();
    &DIR.get_or_init(|| {
        let t = tempfile::tempdir().expect("tempdir");
        let p = t.path().join("01BKGV7JBM69T2G1BGBGM6KB12");
        std::fs::create_dir_all(p.join("chunks")).expect("block dir");
        (t, p)
    })
    .1
}

fn split(data: &[u8]) -> (&[u8], &[u8], &[u8]) {
    let len = |b: &[u8]| -> usize {
        b.get(..4)
            .map_or(0, |b| u32::from_le_bytes(b.try_into().unwrap()) as usize)
    };
    let meta_len = len(data);
    let index_len = len(data.get(4..).unwrap_or_default());
    let rest = data.get(8..).unwrap_or_default();
    let (meta, rest) = rest.split_at(meta_len.min(rest.len()));
    let (index, chunks) = rest.split_at(index_len.min(rest.len()));
    (meta, index, chunks)
}

fn read_parts(meta: &[u8], index: &[u8], chunks: &[u8]) {
    let _ = BlockMeta::from_json(meta, Path::new("meta.json"));
    let seg = ChunkReader::from_segments(vec![(PathBuf::from("chunks/000001"), chunks.to_vec())]);
    let Ok(ix) = IndexReader::from_bytes(Path::new("index"), FileBytes::Owned(index.to_vec()))
    else {
        return;
    };
    let _ = ix.num_series();
    for name in ix.label_names().map(str::to_owned).collect::<Vec<_>>() {
        for (_, off) in ix.values(&name).to_vec() {
            let _ = ix.postings_at(off);
        }
    }
    let Ok(refs) = ix.all_postings() else {
        return;
    };
    for r in refs.into_iter().take(1000) {
        let Ok(s) = ix.series(r) else {
            continue;
        };
        if let Ok(seg) = &seg {
            for c in s.chunks.iter().take(1000) {
                if let Ok(raw) = seg.chunk(c.r) {
                    for _ in norn_chunkenc::XorIterator::new(raw.data).take(10_000) {}
                }
            }
        }
    }
    if let Ok(seg) = &seg {
        let _ = seg.verify_all();
    }
}

fuzz_target!(|data: &[u8]| {
    let (meta, index, chunks) = split(data);
    read_parts(meta, index, chunks);

    let d = dir();
    std::fs::write(d.join("meta.json"), meta).expect("write meta");
    std::fs::write(d.join("index"), index).expect("write index");
    std::fs::write(d.join("chunks").join("000001"), chunks).expect("write chunks");
    if let Ok(block) = Block::open(d) {
        let _ = block.verify();
        let all = [Matcher::new(MatchType::Regex, "__name__", ".+").expect("regex")];
        let _ = block.select(i64::MIN, i64::MAX, &all);
        let _ = block.label_names(&[]);
    }
});
