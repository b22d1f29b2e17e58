//! One block at a time: open and verify it, rewrite its meta.json, stage it, upload it.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use anyhow::Context;
use norn_storage::Bucket;
use norn_storage::layout::{self, META_FILE, block_prefix, is_block_id};
use norn_tsdb::block::writer::ORG_ID_LABEL;
use norn_tsdb::block::{Block, BlockMeta, CHUNKS_DIRNAME};

use super::meta::{BlockFile, block_files, check_meta_version, import_meta};
use super::report::{BlockLine, Outcome};

/// The import's state across blocks: what the bucket holds, where blocks are staged.
pub struct Importer {
    tenant: String,
    dry_run: bool,
    /// ULIDs already complete (with meta.json) in the bucket for the tenant.
    complete: BTreeSet<String>,
    /// Time ranges of the tenant's blocks in the bucket, for the overlap warning.
    ranges: BTreeMap<String, (i64, i64)>,
    /// Where blocks are staged with their new meta.json (created on first use).
    staging: Option<tempfile::TempDir>,
}

impl Importer {
    pub fn new(tenant: &str, dry_run: bool) -> Importer {
        Importer {
            tenant: tenant.to_owned(),
            dry_run,
            complete: BTreeSet::new(),
            ranges: BTreeMap::new(),
            staging: None,
        }
    }

    /// Reads which of the tenant's blocks the bucket already holds, and their time ranges.
    pub async fn load_bucket_state(&mut self, bucket: &Bucket) -> anyhow::Result<()> {
        let blocks = layout::list_blocks(bucket, &self.tenant)
            .await
            .with_context(|| format!("listing tenant {}'s blocks in the bucket", self.tenant))?;
        for ulid in blocks {
            let key = layout::block_meta(&self.tenant, &ulid);
            match bucket.get(&key).await {
                Ok(bytes) => match BlockMeta::from_json(&bytes, Path::new(&key)) {
                    Ok(m) => {
                        self.ranges.insert(ulid.clone(), (m.min_time, m.max_time));
                    }
                    Err(e) => {
                        tracing::debug!(block = %ulid, error = %e, "unreadable meta.json in the bucket; no overlap check against it")
                    }
                },
                Err(e) => {
                    tracing::debug!(block = %ulid, error = %e, "cannot read meta.json from the bucket; no overlap check against it")
                }
            }
            self.complete.insert(ulid);
        }
        tracing::debug!(
            tenant = %self.tenant,
            blocks = self.complete.len(),
            "blocks already in the bucket"
        );
        Ok(())
    }

    /// Imports (or in a dry run, checks) the block in `dir`.
    pub fn import_one(
        &mut self,
        dir: &Path,
        seen: &mut BTreeMap<String, PathBuf>,
        bucket: Option<&Bucket>,
        rt: &tokio::runtime::Runtime,
    ) -> (BlockLine, Outcome) {
        // The directory's name until meta.json gives the ULID (the messages have the path).
        let id = match dir.file_name().and_then(|n| n.to_str()) {
            Some(name) if is_block_id(name) => name.to_owned(),
            _ => dir.display().to_string(),
        };
        let mut line = BlockLine {
            id,
            range: None,
            series: 0,
            samples: 0,
            size: 0,
        };
        let skip = |line: BlockLine, why: String| {
            tracing::error!(tenant = %self.tenant, block = %line.id, dir = %dir.display(), error = %why, "block skipped");
            (line, Outcome::Skipped(why))
        };
        if let Err(why) = check_meta_version(dir) {
            return skip(line, why);
        }
        let block = match Block::open(dir) {
            Ok(b) => b,
            Err(e) => return skip(line, e.to_string()),
        };
        let meta = block.meta().clone();
        line = BlockLine {
            id: meta.ulid.clone(),
            range: Some((meta.min_time, meta.max_time)),
            series: meta.stats.num_series,
            samples: meta.stats.num_samples,
            size: block.size_bytes(),
        };
        if let Some(name) = dir.file_name().and_then(|n| n.to_str())
            && is_block_id(name)
            && name != meta.ulid
        {
            return skip(
                line,
                format!(
                    "{}: directory {name} holds a meta.json for block {}; which one is it?",
                    dir.join(META_FILE).display(),
                    meta.ulid
                ),
            );
        }
        if let Some(first) = seen.get(&meta.ulid) {
            return skip(
                line,
                format!(
                    "{}: block {} is also in {}",
                    dir.display(),
                    meta.ulid,
                    first.display()
                ),
            );
        }
        seen.insert(meta.ulid.clone(), dir.to_path_buf());
        if self.complete.contains(&meta.ulid) {
            tracing::info!(tenant = %self.tenant, block = %meta.ulid, "already in the bucket");
            return (line, Outcome::AlreadyImported);
        }
        if let Some(res) = meta.thanos.as_ref().map(|t| t.downsample.resolution)
            && res != 0
        {
            return skip(
                line,
                format!(
                    "{}: a downsampled block (resolution {res} ms); Norn imports raw blocks only",
                    dir.join(META_FILE).display()
                ),
            );
        }
        if let Err(e) = block.verify() {
            return skip(line, e.to_string());
        }
        drop(block);
        for (other, (min, max)) in &self.ranges {
            if meta.min_time < *max && *min < meta.max_time {
                tracing::warn!(
                    tenant = %self.tenant,
                    block = %meta.ulid,
                    overlaps = %other,
                    "block overlaps a block already in the bucket; queries merge both (each timestamp once); merging blocks is the compactor's job"
                );
            }
        }
        let files = match block_files(dir) {
            Ok(f) => f,
            Err(why) => return skip(line, why),
        };
        let (new_meta, replaced) = import_meta(&meta, &self.tenant, &files);
        if let Some(old) = replaced {
            tracing::warn!(tenant = %self.tenant, block = %meta.ulid, previous = %old, "replacing the block's {ORG_ID_LABEL} label");
        }
        let meta_json = match new_meta.to_json() {
            Ok(j) => j,
            Err(e) => return skip(line, e.to_string()),
        };
        if self.dry_run {
            tracing::debug!(block = %meta.ulid, meta = %String::from_utf8_lossy(&meta_json), "would upload");
            self.ranges
                .insert(meta.ulid.clone(), (meta.min_time, meta.max_time));
            return (line, Outcome::WouldImport);
        }
        let Some(bucket) = bucket else {
            return (line, Outcome::Failed("no bucket".into()));
        };
        let staged = match self.stage(dir, &meta.ulid, &files, &meta_json) {
            Ok(p) => p,
            Err(e) => {
                let why = format!("{e:#}");
                tracing::error!(block = %meta.ulid, error = %why, "cannot stage the block for upload");
                return (line, Outcome::Failed(why));
            }
        };
        let prefix = block_prefix(&self.tenant, &meta.ulid);
        let result = rt.block_on(bucket.upload_dir(&staged, &prefix, Some(META_FILE)));
        if let Err(e) = std::fs::remove_dir_all(&staged) {
            tracing::debug!(dir = %staged.display(), error = %e, "cannot remove the staging copy");
        }
        match result {
            Ok(stats) => {
                tracing::info!(tenant = %self.tenant, block = %meta.ulid, files = stats.files, bytes = stats.bytes, "block imported");
                self.complete.insert(meta.ulid.clone());
                self.ranges
                    .insert(meta.ulid.clone(), (meta.min_time, meta.max_time));
                (line, Outcome::Imported { bytes: stats.bytes })
            }
            Err(e) => {
                let why = format!("uploading to {prefix}: {e}");
                tracing::error!(tenant = %self.tenant, block = %meta.ulid, error = %e, "upload failed");
                (line, Outcome::Failed(why))
            }
        }
    }

    /// `<staging>/<ULID>/`: the block's files linked (or copied) from `dir`, and `meta_json`.
    fn stage(
        &mut self,
        dir: &Path,
        ulid: &str,
        files: &[BlockFile],
        meta_json: &[u8],
    ) -> anyhow::Result<PathBuf> {
        let root = match &self.staging {
            Some(t) => t.path().to_path_buf(),
            None => {
                let t = tempfile::Builder::new()
                    .prefix("norn-import-")
                    .tempdir()
                    .context("creating a temp directory (set TMPDIR to change where)")?;
                let p = t.path().to_path_buf();
                self.staging = Some(t);
                p
            }
        };
        let out = root.join(ulid);
        std::fs::create_dir_all(out.join(CHUNKS_DIRNAME))
            .with_context(|| format!("creating {}", out.display()))?;
        for f in files {
            let src = dir.join(&f.rel_path);
            let dst = out.join(&f.rel_path);
            if std::fs::hard_link(&src, &dst).is_err() {
                std::fs::copy(&src, &dst)
                    .with_context(|| format!("copying {} to {}", src.display(), dst.display()))?;
            }
        }
        std::fs::write(out.join(META_FILE), meta_json)
            .with_context(|| format!("writing {}", out.join(META_FILE).display()))?;
        Ok(out)
    }
}
