//! `norn tools …`: offline commands that work on Norn's bucket without a running server.
//!
//! `norn tools import-blocks --tenant T DIR...` brings a Prometheus user's history into Norn.
//! Each DIR is one block directory or a TSDB directory holding several (Prometheus' `data/`,
//! a snapshot, or what `promtool tsdb create-blocks-from openmetrics` writes); `wal/`,
//! `chunks_head/`, `*.tmp*` and entries not named by a ULID are ignored. Every block is opened
//! and verified byte for byte ([`Block::open`] + [`Block::verify`]) before anything is sent:
//! a damaged block, one with a `meta.json` version other than 1, or a downsampled one is
//! reported (block, file, what is wrong) and skipped, and the process exits non-zero at the
//! end. A good block is uploaded to `<tenant>/<ULID>/` with a rewritten `meta.json`, last:
//!
//! - the Thanos section's labels get `__org_id__: <tenant>` (other external labels are kept;
//!   a different `__org_id__` is replaced, with a warning);
//! - `source` becomes `import` when the block has none; a block that already names its
//!   producer (a Thanos sidecar's, a compactor's) keeps it, so lineage is not lost;
//! - the downsample resolution is 0 (raw), and the file list (`thanos.files`) is filled in
//!   when missing, so the bucket store can check sizes at open;
//! - everything else, unknown keys included, is kept as it is.
//!
//! The user's directory is never modified: the block's files are hard-linked (copied when the
//! temp directory is on another filesystem) into a temp directory beside the new `meta.json`.
//! A block whose ULID is already complete in the bucket is "already imported", so re-running
//! an import is a no-op; an import interrupted mid-block leaves a ULID directory without
//! `meta.json` that readers ignore and the next run completes. Overlapping time ranges are
//! not refused (merging is the compactor's job), only warned about.

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, anyhow, bail};
use clap::{Parser, Subcommand};
use norn_model::TenantId;
use norn_storage::Bucket;
use norn_storage::layout::{self, META_FILE, block_prefix, is_block_id};
use norn_tsdb::block::meta::{META_VERSION, THANOS_VERSION};
use norn_tsdb::block::writer::ORG_ID_LABEL;
use norn_tsdb::block::{
    Block, BlockMeta, CHUNKS_DIRNAME, INDEX_FILENAME, TOMBSTONES_FILENAME, ThanosFile, ThanosMeta,
};

use crate::config::{Args, Config};

/// The `source` an imported block gets when it does not name one.
pub const IMPORT_SOURCE: &str = "import";

/// `norn tools`: offline commands.
#[derive(Debug, Parser)]
#[command(
    name = "norn tools",
    bin_name = "norn tools",
    version,
    about = "Offline Norn tools that work on the blocks bucket without a running server."
)]
pub struct ToolsArgs {
    #[command(subcommand)]
    pub tool: Tool,
}

#[derive(Debug, Subcommand)]
pub enum Tool {
    /// Verify Prometheus TSDB blocks and upload them into a tenant's part of the bucket.
    #[command(
        name = "import-blocks",
        long_about = "Verify Prometheus TSDB blocks and upload them into a tenant's part of the \
                      blocks bucket, where queries find them.\n\n\
                      Each DIR is a block directory (<ULID>/ with meta.json) or a TSDB directory \
                      holding blocks (Prometheus' data dir, a snapshot, `promtool tsdb \
                      create-blocks-from` output). Corrupt blocks are reported and skipped; the \
                      exit code is 1 if any block was not imported. Blocks already in the \
                      bucket are skipped, so re-running is safe."
    )]
    ImportBlocks(ImportBlocksArgs),
}

/// `norn tools import-blocks`.
#[derive(Debug, clap::Args)]
pub struct ImportBlocksArgs {
    /// Tenant (X-Scope-OrgID) the blocks are imported for.
    #[arg(long)]
    pub tenant: String,
    /// Open and verify every block and print what would be uploaded; upload nothing.
    #[arg(long = "dry-run")]
    pub dry_run: bool,
    /// Log level (stderr): debug, info, warn, error. Default: server.log_level (info).
    #[arg(long = "log.level")]
    pub log_level: Option<String>,
    #[command(flatten)]
    pub storage: StorageFlags,
    /// Block directories, or TSDB directories holding blocks.
    #[arg(required = true, value_name = "DIR")]
    pub dirs: Vec<PathBuf>,
}

/// The server's flags that choose the blocks bucket (same names, same config file).
#[derive(Debug, Clone, Default, clap::Args)]
#[command(next_help_heading = "Bucket (the server's flags and config file)")]
pub struct StorageFlags {
    /// YAML configuration file in Mimir's layout (only the storage settings matter here).
    #[arg(long = "config.file")]
    pub config_file: Option<PathBuf>,
    /// Object storage backend: filesystem or s3.
    #[arg(long = "common.storage.backend")]
    pub storage_backend: Option<String>,
    /// Bucket directory for the filesystem backend.
    #[arg(long = "common.storage.filesystem.dir")]
    pub storage_filesystem_dir: Option<PathBuf>,
    /// S3 endpoint (host:port).
    #[arg(long = "common.storage.s3.endpoint")]
    pub s3_endpoint: Option<String>,
    /// S3 bucket name.
    #[arg(long = "common.storage.s3.bucket-name")]
    pub s3_bucket_name: Option<String>,
    /// S3 access key id.
    #[arg(long = "common.storage.s3.access-key-id")]
    pub s3_access_key_id: Option<String>,
    /// S3 secret access key.
    #[arg(long = "common.storage.s3.secret-access-key")]
    pub s3_secret_access_key: Option<String>,
    /// S3 region.
    #[arg(long = "common.storage.s3.region")]
    pub s3_region: Option<String>,
    /// Use plain HTTP to talk to S3.
    #[arg(long = "common.storage.s3.insecure", num_args = 0..=1, default_missing_value = "true")]
    pub s3_insecure: Option<bool>,
    /// Blocks backend, overriding common.storage.backend.
    #[arg(long = "blocks-storage.backend")]
    pub blocks_storage_backend: Option<String>,
}

impl StorageFlags {
    /// The server's [`Args`] with only these flags set, so [`Config::load`] applies the same
    /// precedence (defaults < YAML < flags) and validation as the server.
    fn server_args(&self) -> anyhow::Result<Args> {
        let mut a = Args::try_parse_from(["norn"]).context("building the server's defaults")?;
        a.config_file = self.config_file.clone();
        a.storage_backend = self.storage_backend.clone();
        a.storage_filesystem_dir = self.storage_filesystem_dir.clone();
        a.s3_endpoint = self.s3_endpoint.clone();
        a.s3_bucket_name = self.s3_bucket_name.clone();
        a.s3_access_key_id = self.s3_access_key_id.clone();
        a.s3_secret_access_key = self.s3_secret_access_key.clone();
        a.s3_region = self.s3_region.clone();
        a.s3_insecure = self.s3_insecure;
        a.blocks_storage_backend = self.blocks_storage_backend.clone();
        Ok(a)
    }
}

/// Entry point for `norn tools …`; `argv` starts with `tools`. Errors are printed as one
/// `error: …` line (the cause chain, no backtrace) and exit with 1; usage errors with 2.
pub fn main(argv: impl IntoIterator<Item = OsString>) -> ExitCode {
    let args = ToolsArgs::parse_from(argv);
    let result = match args.tool {
        Tool::ImportBlocks(a) => import_blocks(a),
    };
    result.unwrap_or_else(|e| {
        eprintln!("error: {e:#}");
        ExitCode::from(1)
    })
}

/// What happened to one block.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Outcome {
    Imported {
        bytes: u64,
    },
    WouldImport,
    AlreadyImported,
    /// Not imported because of the block itself (corrupt, unsupported, duplicate).
    Skipped(String),
    /// The bucket failed; the run stops here.
    Failed(String),
}

impl Outcome {
    fn describe(&self) -> String {
        match self {
            Outcome::Imported { .. } => "imported".into(),
            Outcome::WouldImport => "would import".into(),
            Outcome::AlreadyImported => "already imported".into(),
            Outcome::Skipped(why) => format!("skipped: {why}"),
            Outcome::Failed(why) => format!("failed: {why}"),
        }
    }
}

/// What the per-block line shows.
#[derive(Debug, Clone)]
struct BlockLine {
    /// The ULID (from meta.json, else the directory's name), or the directory's path.
    id: String,
    range: Option<(i64, i64)>,
    series: u64,
    samples: u64,
    size: u64,
}

fn import_blocks(a: ImportBlocksArgs) -> anyhow::Result<ExitCode> {
    let cfg = Config::load(&a.storage.server_args()?)?;
    crate::init_logging(a.log_level.as_deref().unwrap_or(&cfg.server.log_level))?;
    let tenant =
        TenantId::new(&a.tenant).map_err(|e| anyhow!("invalid --tenant {:?}: {e}", a.tenant))?;
    let dirs = discover(&a.dirs)?;

    let storage = cfg.blocks_bucket();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    // A dry run against a filesystem bucket that does not exist yet must not create it.
    let missing_fs_bucket = storage.backend == "filesystem" && !storage.filesystem.dir.exists();
    let bucket = if a.dry_run && missing_fs_bucket {
        None
    } else {
        Some(Bucket::from_config(&storage).context("opening the blocks bucket")?)
    };
    let mut imp = Importer {
        tenant: tenant.as_str().to_owned(),
        dry_run: a.dry_run,
        complete: BTreeSet::new(),
        ranges: BTreeMap::new(),
        staging: None,
    };
    if let Some(b) = &bucket {
        tracing::info!(bucket = b.describe(), tenant = %tenant, blocks = dirs.len(), dry_run = a.dry_run, "importing blocks");
        rt.block_on(imp.load_bucket_state(b))?;
    } else {
        tracing::info!(bucket = %storage.filesystem.dir.display(), tenant = %tenant, "dry run: the bucket directory does not exist yet");
    }

    println!(
        "{:<26}  {:<24}  {:<24}  {:>8}  {:>10}  {:>9}  RESULT",
        "BLOCK ULID", "MIN TIME", "MAX TIME", "SERIES", "SAMPLES", "SIZE"
    );
    let mut tally: BTreeMap<&'static str, usize> = BTreeMap::new();
    let mut uploaded_bytes = 0u64;
    let mut failed = false;
    let mut seen: BTreeMap<String, PathBuf> = BTreeMap::new();
    let total = dirs.len();
    for (i, dir) in dirs.iter().enumerate() {
        let (line, outcome) = imp.import_one(dir, &mut seen, bucket.as_ref(), &rt);
        println!("{}", format_line(&line, &outcome));
        let key = match &outcome {
            Outcome::Imported { bytes } => {
                uploaded_bytes += bytes;
                "imported"
            }
            Outcome::WouldImport => "would import",
            Outcome::AlreadyImported => "already imported",
            Outcome::Skipped(_) => "skipped",
            Outcome::Failed(_) => "failed",
        };
        *tally.entry(key).or_default() += 1;
        if matches!(outcome, Outcome::Failed(_)) {
            let rest = total - i - 1;
            if rest > 0 {
                *tally.entry("not attempted").or_default() += rest;
            }
            failed = true;
            break;
        }
    }
    let count = |k: &str| tally.get(k).copied().unwrap_or(0);
    let first = if a.dry_run {
        format!("{} would be imported", count("would import"))
    } else {
        format!(
            "{} imported ({})",
            count("imported"),
            human_bytes(uploaded_bytes)
        )
    };
    let mut parts = vec![
        first,
        format!("{} already imported", count("already imported")),
        format!("{} skipped", count("skipped")),
    ];
    for k in ["failed", "not attempted"] {
        if count(k) > 0 {
            parts.push(format!("{} {k}", count(k)));
        }
    }
    let summary = format!(
        "{total} block(s) for tenant {tenant}: {}{}",
        parts.join(", "),
        if a.dry_run {
            " (dry run: nothing uploaded)"
        } else {
            ""
        }
    );
    println!("{summary}");
    let not_imported = count("skipped") + count("failed") + count("not attempted");
    if not_imported > 0 {
        tracing::error!(
            tenant = %tenant,
            skipped = count("skipped"),
            failed = count("failed"),
            not_attempted = count("not attempted"),
            "not every block was imported"
        );
        if failed {
            eprintln!(
                "error: the bucket failed; fix it and run the same command again (blocks already imported are skipped)"
            );
        } else {
            eprintln!(
                "error: {not_imported} block(s) were not imported; see the lines marked \"skipped\" above"
            );
        }
        return Ok(ExitCode::from(1));
    }
    Ok(ExitCode::SUCCESS)
}

/// The block directories named by `dirs`, in order: a DIR that is a block (it has
/// `meta.json`, or its name is a ULID) is itself; otherwise its ULID-named subdirectories.
/// A DIR that does not exist, or holds no block, is an error before anything is uploaded.
fn discover(dirs: &[PathBuf]) -> anyhow::Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    let mut seen = BTreeSet::new();
    for d in dirs {
        let md = match std::fs::metadata(d) {
            Ok(md) => md,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                bail!("{}: no such directory", d.display())
            }
            Err(e) => return Err(e).with_context(|| format!("{}: cannot read", d.display())),
        };
        if !md.is_dir() {
            bail!(
                "{}: not a directory (expected a block directory or a TSDB directory)",
                d.display()
            );
        }
        let name = d.file_name().map(|n| n.to_string_lossy().into_owned());
        let found = if d.join(META_FILE).exists() || name.as_deref().is_some_and(is_block_id) {
            vec![d.clone()]
        } else {
            let mut entries: Vec<(String, PathBuf)> = std::fs::read_dir(d)
                .with_context(|| format!("{}: cannot list", d.display()))?
                .collect::<Result<Vec<_>, _>>()
                .with_context(|| format!("{}: cannot list", d.display()))?
                .into_iter()
                .map(|e| (e.file_name().to_string_lossy().into_owned(), e.path()))
                .collect();
            entries.sort();
            let mut blocks = Vec::new();
            for (name, path) in entries {
                if let Some(why) = ignored_entry(&name, path.is_dir()) {
                    tracing::debug!(path = %path.display(), why, "ignoring");
                } else {
                    blocks.push(path);
                }
            }
            if blocks.is_empty() {
                bail!(
                    "{}: no blocks found (expected a block directory with meta.json, or a TSDB directory holding <ULID>/ block directories)",
                    d.display()
                );
            }
            blocks
        };
        for b in found {
            // The same directory named twice (`DIR DIR/<ULID>`) is imported once.
            let canonical = std::fs::canonicalize(&b).unwrap_or_else(|_| b.clone());
            if seen.insert(canonical) {
                out.push(b);
            }
        }
    }
    Ok(out)
}

/// Why an entry of a TSDB directory is not a block to import, if it is not.
fn ignored_entry(name: &str, is_dir: bool) -> Option<&'static str> {
    if name == "wal" || name == "chunks_head" {
        Some("the head's data, not a block (take a snapshot to include it)")
    } else if name.contains(".tmp") {
        Some("a block being written or deleted")
    } else if !is_dir {
        Some("not a directory")
    } else if !is_block_id(name) {
        Some("not named by a block ULID")
    } else {
        None
    }
}

struct Importer {
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
    async fn load_bucket_state(&mut self, bucket: &Bucket) -> anyhow::Result<()> {
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

    fn import_one(
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

/// Refuses a `meta.json` whose version is not 1 with a clearer reason than "corrupt".
/// Everything else about meta.json is left to [`Block::open`].
fn check_meta_version(dir: &Path) -> Result<(), String> {
    let path = dir.join(META_FILE);
    let bytes = std::fs::read(&path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => {
            format!("{}: missing (not a complete block)", path.display())
        }
        _ => format!("{}: cannot read: {e}", path.display()),
    })?;
    if let Ok(v) = serde_json::from_slice::<serde_json::Value>(&bytes)
        && let Some(version) = v.get("version").and_then(|v| v.as_u64())
        && version != u64::from(META_VERSION)
    {
        return Err(format!(
            "{}: meta.json version {version} is not supported (Norn imports version {META_VERSION}, Prometheus' block format)",
            path.display()
        ));
    }
    Ok(())
}

/// A file of a block other than meta.json, relative to the block directory.
#[derive(Debug, Clone, PartialEq, Eq)]
struct BlockFile {
    rel_path: String,
    size: u64,
}

/// The files uploaded besides meta.json: `index`, the chunk segments (`chunks/NNNNNN`) and
/// `tombstones` when present. Anything else in the directory (marks, editor leftovers) is
/// not part of the block and stays behind.
fn block_files(dir: &Path) -> Result<Vec<BlockFile>, String> {
    let size = |rel: &str| -> Result<u64, String> {
        let p = dir.join(rel);
        std::fs::metadata(&p)
            .map(|m| m.len())
            .map_err(|e| format!("{}: {e}", p.display()))
    };
    let mut out = vec![BlockFile {
        rel_path: INDEX_FILENAME.into(),
        size: size(INDEX_FILENAME)?,
    }];
    let chunks = dir.join(CHUNKS_DIRNAME);
    let mut segments: Vec<String> = std::fs::read_dir(&chunks)
        .map_err(|e| format!("{}: {e}", chunks.display()))?
        .filter_map(|e| e.ok())
        .filter_map(|e| e.file_name().to_str().map(str::to_owned))
        .filter(|n| n.len() == 6 && n.bytes().all(|b| b.is_ascii_digit()))
        .collect();
    segments.sort();
    for s in segments {
        let rel = format!("{CHUNKS_DIRNAME}/{s}");
        out.push(BlockFile {
            size: size(&rel)?,
            rel_path: rel,
        });
    }
    if dir.join(TOMBSTONES_FILENAME).is_file() {
        out.push(BlockFile {
            rel_path: TOMBSTONES_FILENAME.into(),
            size: size(TOMBSTONES_FILENAME)?,
        });
    }
    Ok(out)
}

/// The meta.json an imported block gets (see the module docs), and the `__org_id__` it had
/// before when that was another tenant.
fn import_meta(meta: &BlockMeta, tenant: &str, files: &[BlockFile]) -> (BlockMeta, Option<String>) {
    let mut m = meta.clone();
    let t = m.thanos.get_or_insert_with(ThanosMeta::default);
    if t.version == 0 {
        t.version = THANOS_VERSION;
    }
    let replaced = t
        .labels
        .insert(ORG_ID_LABEL.to_string(), tenant.to_string())
        .filter(|old| old != tenant);
    if t.source.is_empty() {
        t.source = IMPORT_SOURCE.to_string();
    }
    t.downsample.resolution = 0;
    if t.files.is_empty() {
        // As Norn's writer lists them: chunk segments and index with sizes, meta.json without.
        let mut listed: Vec<ThanosFile> = files
            .iter()
            .filter(|f| f.rel_path != TOMBSTONES_FILENAME)
            .map(|f| ThanosFile {
                rel_path: f.rel_path.clone(),
                size_bytes: f.size,
            })
            .chain([ThanosFile {
                rel_path: META_FILE.to_string(),
                size_bytes: 0,
            }])
            .collect();
        listed.sort_by(|a, b| a.rel_path.cmp(&b.rel_path));
        t.files = listed;
        if t.segment_files.is_empty() {
            t.segment_files = files
                .iter()
                .filter_map(|f| f.rel_path.strip_prefix(&format!("{CHUNKS_DIRNAME}/")))
                .map(str::to_owned)
                .collect();
        }
    }
    (m, replaced)
}

fn format_line(l: &BlockLine, o: &Outcome) -> String {
    let (min, max) = match l.range {
        Some((a, b)) => (rfc3339(a), rfc3339(b)),
        None => ("-".into(), "-".into()),
    };
    let num = |n: u64, known: bool| if known { n.to_string() } else { "-".into() };
    let known = l.range.is_some();
    format!(
        "{:<26}  {:<24}  {:<24}  {:>8}  {:>10}  {:>9}  {}",
        l.id,
        min,
        max,
        num(l.series, known),
        num(l.samples, known),
        if known {
            human_bytes(l.size)
        } else {
            "-".into()
        },
        o.describe()
    )
}

/// Milliseconds since the epoch as RFC3339 in UTC (milliseconds shown only when not zero).
fn rfc3339(ms: i64) -> String {
    match chrono::DateTime::from_timestamp_millis(ms) {
        Some(t) if ms % 1000 == 0 => t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        Some(t) => t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        None => ms.to_string(),
    }
}

fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n}B")
    } else {
        format!("{v:.1}{}", UNITS[u])
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::*;

    fn meta(thanos: Option<ThanosMeta>) -> BlockMeta {
        let mut extra = BTreeMap::new();
        extra.insert("future_key".to_string(), serde_json::json!({"x": 1}));
        BlockMeta {
            ulid: "01M827DMG4XHMT31HS5KJK0VWH".into(),
            min_time: 0,
            max_time: 7_200_000,
            stats: Default::default(),
            compaction: Default::default(),
            version: 1,
            thanos,
            extra,
        }
    }

    fn files() -> Vec<BlockFile> {
        vec![
            BlockFile {
                rel_path: "index".into(),
                size: 500,
            },
            BlockFile {
                rel_path: "chunks/000001".into(),
                size: 900,
            },
            BlockFile {
                rel_path: "tombstones".into(),
                size: 9,
            },
        ]
    }

    #[test]
    fn prometheus_block_gets_a_thanos_section() {
        let (m, replaced) = import_meta(&meta(None), "team-a", &files());
        assert_eq!(replaced, None);
        let t = m.thanos.as_ref().unwrap();
        assert_eq!(t.version, THANOS_VERSION);
        assert_eq!(
            t.labels.get(ORG_ID_LABEL).map(String::as_str),
            Some("team-a")
        );
        assert_eq!(t.labels.len(), 1);
        assert_eq!(t.source, IMPORT_SOURCE);
        assert_eq!(t.downsample.resolution, 0);
        let listed: Vec<(&str, u64)> = t
            .files
            .iter()
            .map(|f| (f.rel_path.as_str(), f.size_bytes))
            .collect();
        assert_eq!(
            listed,
            [("chunks/000001", 900), ("index", 500), ("meta.json", 0)]
        );
        assert_eq!(t.segment_files, ["000001"]);
        assert!(m.extra.contains_key("future_key"), "unknown keys are kept");
        // It is still a valid meta.json.
        BlockMeta::from_json(&m.to_json().unwrap(), Path::new("meta.json")).unwrap();
    }

    #[test]
    fn thanos_block_keeps_labels_source_and_file_list() {
        let mut labels = BTreeMap::new();
        labels.insert("cluster".to_string(), "eu-1".to_string());
        labels.insert(ORG_ID_LABEL.to_string(), "someone-else".to_string());
        let mut extra = BTreeMap::new();
        extra.insert("index_stats".to_string(), serde_json::json!({}));
        let thanos = ThanosMeta {
            version: 1,
            labels,
            source: "sidecar".into(),
            files: vec![ThanosFile {
                rel_path: "index".into(),
                size_bytes: 1,
            }],
            extra,
            ..ThanosMeta::default()
        };
        let (m, replaced) = import_meta(&meta(Some(thanos)), "team-a", &files());
        assert_eq!(replaced.as_deref(), Some("someone-else"));
        let t = m.thanos.unwrap();
        assert_eq!(t.labels["cluster"], "eu-1");
        assert_eq!(t.labels[ORG_ID_LABEL], "team-a");
        assert_eq!(t.source, "sidecar", "an existing producer is kept");
        assert_eq!(t.files.len(), 1, "an existing file list is kept");
        assert!(t.segment_files.is_empty());
        assert!(t.extra.contains_key("index_stats"));
        // Same tenant again: nothing reported as replaced.
        let (again, replaced) = import_meta(&meta(Some(t.clone())), "team-a", &files());
        assert_eq!(replaced, None);
        assert_eq!(again.thanos.unwrap(), t);
    }

    #[test]
    fn tsdb_dir_entries() {
        assert!(ignored_entry("01M827DMG4XHMT31HS5KJK0VWH", true).is_none());
        assert!(ignored_entry("wal", true).is_some());
        assert!(ignored_entry("chunks_head", true).is_some());
        assert!(ignored_entry("01M827DMG4XHMT31HS5KJK0VWH.tmp-for-creation", true).is_some());
        assert!(ignored_entry("01M827DMG4XHMT31HS5KJK0VWH.tmp-for-deletion", true).is_some());
        assert!(ignored_entry("01M827DMG4XHMT31HS5KJK0VWH", false).is_some());
        assert!(ignored_entry("lock", false).is_some());
        assert!(ignored_entry("snapshots", true).is_some());
    }

    #[test]
    fn formatting() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(7_200_001), "1970-01-01T02:00:00.001Z");
        assert_eq!(human_bytes(999), "999B");
        assert_eq!(human_bytes(1536), "1.5KiB");
        assert_eq!(human_bytes(3 * 1024 * 1024), "3.0MiB");
    }

    /// The tool takes every server flag that chooses the blocks bucket, under the same name.
    #[test]
    fn storage_flags_match_the_server() {
        let server: BTreeSet<String> = Args::command()
            .get_arguments()
            .filter_map(|a| a.get_long().map(str::to_owned))
            .filter(|l| {
                l.starts_with("common.storage.")
                    || l == "blocks-storage.backend"
                    || l == "config.file"
            })
            .collect();
        let tools = ToolsArgs::command();
        let import = tools
            .find_subcommand("import-blocks")
            .expect("import-blocks subcommand");
        let mine: BTreeSet<String> = import
            .get_arguments()
            .filter_map(|a| a.get_long().map(str::to_owned))
            .collect();
        let missing: Vec<_> = server.difference(&mine).collect();
        assert!(missing.is_empty(), "import-blocks lacks {missing:?}");
        ToolsArgs::command().debug_assert();
    }

    #[test]
    fn parses_the_documented_shape() {
        let a = ToolsArgs::try_parse_from([
            "tools",
            "import-blocks",
            "--tenant=team-a",
            "--common.storage.filesystem.dir=/b",
            "--dry-run",
            "/data",
            "/more",
        ])
        .unwrap();
        let Tool::ImportBlocks(a) = a.tool;
        assert_eq!(a.tenant, "team-a");
        assert!(a.dry_run);
        assert_eq!(a.dirs, [PathBuf::from("/data"), PathBuf::from("/more")]);
        let cfg = Config::load(&a.storage.server_args().unwrap()).unwrap();
        assert_eq!(cfg.blocks_bucket().filesystem.dir, PathBuf::from("/b"));
        assert!(
            ToolsArgs::try_parse_from(["tools", "import-blocks", "/data"]).is_err(),
            "--tenant is required"
        );
        assert!(
            ToolsArgs::try_parse_from(["tools", "import-blocks", "--tenant=t"]).is_err(),
            "a DIR is required"
        );
    }
}
