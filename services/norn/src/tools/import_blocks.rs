//! `norn tools import-blocks --tenant T DIR...`
//!
//! Each DIR is one block directory or a TSDB directory holding several (Prometheus' `data/`,
//! a snapshot, or what `promtool tsdb create-blocks-from openmetrics` writes); `wal/`,
//! `chunks_head/`, `*.tmp*` and entries not named by a ULID are ignored. Every block is opened
//! and verified byte for byte ([`norn_tsdb::block::Block::open`] + [`norn_tsdb::block::Block::verify`]) before anything is sent:
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

mod discover;
mod importer;
mod meta;
mod report;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, anyhow};
use norn_model::TenantId;
use norn_storage::Bucket;

use crate::config::{Args, BucketFlags, Config, ConfigFileFlag, LogFlags, ServerFlags};
use discover::discover;
use importer::Importer;
use report::{Outcome, format_line, human_bytes};

/// `norn tools import-blocks`.
#[derive(Debug, clap::Args)]
pub struct ImportBlocksArgs {
    /// Tenant (X-Scope-OrgID) the blocks are imported for.
    #[arg(long)]
    pub tenant: String,
    /// Open and verify every block and print what would be uploaded; upload nothing.
    #[arg(long = "dry-run")]
    pub dry_run: bool,
    #[command(flatten)]
    pub log: LogFlags,
    #[command(flatten)]
    pub file: ConfigFileFlag,
    #[command(flatten)]
    pub bucket: BucketFlags,
    /// Block directories, or TSDB directories holding blocks.
    #[arg(required = true, value_name = "DIR")]
    pub dirs: Vec<PathBuf>,
}

impl ImportBlocksArgs {
    /// The server's configuration from these flags, the config file and the environment, with
    /// the server's precedence and validation: the tool finds the bucket the server uses.
    pub fn config(&self) -> anyhow::Result<Config> {
        Config::load(&Args {
            file: self.file.clone(),
            server: ServerFlags {
                log: self.log.clone(),
                ..ServerFlags::default()
            },
            bucket: self.bucket.clone(),
            ..Args::default()
        })
    }
}

/// Runs the import; the exit code is 1 when any block was not imported.
pub fn run(a: ImportBlocksArgs) -> anyhow::Result<ExitCode> {
    let cfg = a.config()?;
    crate::init_logging(&cfg.server.log_level)?;
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
    let mut imp = Importer::new(tenant.as_str(), a.dry_run);
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

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use clap::{CommandFactory, Parser};

    use super::*;
    use crate::tools::{Tool, ToolsArgs};

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
        let Tool::ImportBlocks(a) = a.tool else {
            panic!("not import-blocks")
        };
        assert_eq!(a.tenant, "team-a");
        assert!(a.dry_run);
        assert_eq!(a.dirs, [PathBuf::from("/data"), PathBuf::from("/more")]);
        let cfg = a.config().unwrap();
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
