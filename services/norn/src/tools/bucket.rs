//! `norn tools bucket ls|inspect|mark|unmark --tenant=T`: see a tenant's blocks in the bucket
//! and mark or unmark them by hand.
//!
//! - `ls`: every block directory of the tenant (one listing, then each `meta.json` and mark):
//!   time range, duration, compaction level, series, samples, size (the sum of its objects),
//!   marks; partial blocks (no `meta.json`: an upload in progress, or one a crash left) with
//!   the age of their newest object; blocks whose `meta.json` is corrupt as such.
//! - `inspect <block>`: `meta.json`'s fields, every file and its size, the marks.
//! - `mark --type=deletion|no-compact <block>`: writes the mark in both places the compactor
//!   and the bucket index read (`norn_bucket_index::marks`). A block already marked keeps its
//!   mark (and so its deletion time: re-running never restarts the deletion delay).
//! - `unmark --type=… <block>`: removes the mark from both places. The bucket index drops it at
//!   the compactor's next cleanup; until then readers may still skip the block.
//!
//! Every failure (invalid tenant, a block id that is not a ULID, an unknown block, a bucket
//! that cannot be reached or does not exist) is one `error: …` line and exit code 1.

mod render;
mod scan;

use std::process::ExitCode;
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{Context, anyhow, bail};
use clap::{Subcommand, ValueEnum};
use norn_bucket_index::marks;
use norn_bucket_index::{DeletionMark, NoCompactMark, NoCompactReason};
use norn_model::TenantId;
use norn_storage::{Bucket, layout};

use crate::config::{Args, BucketFlags, Config, ConfigFileFlag, LogFlags, ServerFlags};
use scan::{BlockInfo, scan};

/// `norn tools bucket`.
#[derive(Debug, clap::Args)]
pub struct BucketArgs {
    #[command(subcommand)]
    pub command: BucketCommand,
}

#[derive(Debug, Subcommand)]
pub enum BucketCommand {
    /// List the tenant's blocks: range, level, series, samples, size, marks; partial blocks too.
    Ls(LsArgs),
    /// Show one block: meta.json's fields, its files and sizes, its marks.
    Inspect(BlockArgs),
    /// Mark a block for deletion (after the compactor's deletion delay) or as never to compact.
    Mark(MarkArgs),
    /// Remove a block's deletion or no-compact mark.
    Unmark(UnmarkArgs),
}

/// What every bucket command takes: the tenant and the server's bucket flags.
#[derive(Debug, Clone, clap::Args)]
pub struct CommonArgs {
    /// Tenant (X-Scope-OrgID) whose blocks to work on.
    #[arg(long)]
    pub tenant: String,
    #[command(flatten)]
    pub log: LogFlags,
    #[command(flatten)]
    pub file: ConfigFileFlag,
    #[command(flatten)]
    pub bucket: BucketFlags,
}

/// Output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Format {
    Table,
    Json,
}

#[derive(Debug, clap::Args)]
pub struct LsArgs {
    #[command(flatten)]
    pub common: CommonArgs,
    /// Output format: table (for people) or json (for scripts).
    #[arg(long, value_enum, default_value_t = Format::Table)]
    pub format: Format,
}

#[derive(Debug, clap::Args)]
pub struct BlockArgs {
    #[command(flatten)]
    pub common: CommonArgs,
    /// Output format: table (for people) or json (for scripts).
    #[arg(long, value_enum, default_value_t = Format::Table)]
    pub format: Format,
    /// The block's ULID.
    #[arg(value_name = "BLOCK")]
    pub block: String,
}

/// The kinds of marks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum MarkType {
    /// `deletion-mark.json`: the compactor deletes the block after its deletion delay.
    Deletion,
    /// `no-compact-mark.json`: the compactor leaves the block alone.
    NoCompact,
}

#[derive(Debug, clap::Args)]
pub struct MarkArgs {
    #[command(flatten)]
    pub common: CommonArgs,
    /// Which mark to write.
    #[arg(long = "type", value_enum)]
    pub mark_type: MarkType,
    /// Why, for the operator who finds the mark (no-compact marks only).
    #[arg(long)]
    pub details: Option<String>,
    /// The block's ULID.
    #[arg(value_name = "BLOCK")]
    pub block: String,
}

#[derive(Debug, clap::Args)]
pub struct UnmarkArgs {
    #[command(flatten)]
    pub common: CommonArgs,
    /// Which mark to remove.
    #[arg(long = "type", value_enum)]
    pub mark_type: MarkType,
    /// The block's ULID.
    #[arg(value_name = "BLOCK")]
    pub block: String,
}

impl CommonArgs {
    /// The server's configuration from these flags, the config file and the environment.
    fn config(&self) -> anyhow::Result<Config> {
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

    /// Logging, the tenant, the bucket and a runtime to talk to it.
    fn open(&self) -> anyhow::Result<(TenantId, Bucket, tokio::runtime::Runtime)> {
        let cfg = self.config()?;
        crate::init_logging(&cfg.server.log_level)?;
        let tenant = TenantId::new(&self.tenant)
            .map_err(|e| anyhow!("invalid --tenant {:?}: {e}", self.tenant))?;
        let storage = cfg.blocks_bucket();
        // A missing directory would list as an empty bucket: say what is wrong instead.
        if storage.backend == "filesystem" && !storage.filesystem.dir.is_dir() {
            bail!(
                "bucket directory {} does not exist (--common.storage.filesystem.dir)",
                storage.filesystem.dir.display()
            );
        }
        let bucket = Bucket::from_config(&storage).context("opening the blocks bucket")?;
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("starting the async runtime")?;
        Ok((tenant, bucket, rt))
    }
}

fn check_block_id(id: &str) -> anyhow::Result<()> {
    if !layout::is_block_id(id) {
        bail!("{id:?} is not a block id (a 26-character ULID such as 01HQ3Z5V6W7X8Y9ZABCDEFGHJK)");
    }
    Ok(())
}

fn now_s() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// One block, or an error naming it and the tenant when the bucket has nothing of it.
async fn find_block(bucket: &Bucket, tenant: &str, id: &str) -> anyhow::Result<BlockInfo> {
    scan(bucket, tenant, Some(id))
        .await?
        .into_iter()
        .find(|b| b.exists())
        .ok_or_else(|| anyhow!("block {id} not found for tenant {tenant}"))
}

/// Runs `norn tools bucket …`.
pub fn run(a: BucketArgs) -> anyhow::Result<ExitCode> {
    match a.command {
        BucketCommand::Ls(a) => ls(a),
        BucketCommand::Inspect(a) => inspect(a),
        BucketCommand::Mark(a) => mark(a),
        BucketCommand::Unmark(a) => unmark(a),
    }
}

fn ls(a: LsArgs) -> anyhow::Result<ExitCode> {
    let (tenant, bucket, rt) = a.common.open()?;
    let blocks = rt.block_on(scan(&bucket, tenant.as_str(), None))?;
    // Blocks whose files are all gone but whose global marks linger are the compactor's
    // leftovers, not blocks: left out of the list.
    let blocks: Vec<BlockInfo> = blocks.into_iter().filter(BlockInfo::exists).collect();
    let now = SystemTime::now();
    match a.format {
        Format::Json => {
            let out = serde_json::json!({
                "tenant": tenant.as_str(),
                "blocks": blocks.iter().map(|b| render::block_json(b, now)).collect::<Vec<_>>(),
            });
            println!("{}", serde_json::to_string_pretty(&out)?);
        }
        Format::Table => {
            print!("{}", render::table(&blocks, now));
            let partial = blocks.iter().filter(|b| b.meta.is_none()).count();
            let size: u64 = blocks.iter().map(BlockInfo::size).sum();
            println!(
                "{} block(s) for tenant {tenant} ({} partial), {}",
                blocks.len(),
                partial,
                render::human_bytes(size)
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn inspect(a: BlockArgs) -> anyhow::Result<ExitCode> {
    check_block_id(&a.block)?;
    let (tenant, bucket, rt) = a.common.open()?;
    let block = rt.block_on(find_block(&bucket, tenant.as_str(), &a.block))?;
    let now = SystemTime::now();
    match a.format {
        Format::Json => {
            let meta = match &block.meta {
                Some(Ok(m)) => serde_json::to_value(m)?,
                _ => serde_json::Value::Null,
            };
            let files: Vec<_> = block
                .files
                .iter()
                .map(|f| serde_json::json!({"path": f.path, "size_bytes": f.size}))
                .collect();
            let out = serde_json::json!({
                "tenant": tenant.as_str(),
                "block": render::block_json(&block, now),
                "meta": meta,
                "files": files,
            });
            println!("{}", serde_json::to_string_pretty(&out)?);
        }
        Format::Table => print!("{}", render::inspect_text(&block, now)),
    }
    Ok(ExitCode::SUCCESS)
}

fn mark(a: MarkArgs) -> anyhow::Result<ExitCode> {
    check_block_id(&a.block)?;
    if a.mark_type == MarkType::Deletion && a.details.is_some() {
        bail!("--details applies to no-compact marks only (a deletion mark has no details)");
    }
    let (tenant, bucket, rt) = a.common.open()?;
    let t = tenant.as_str();
    let id = a.block.as_str();
    rt.block_on(async {
        let block = find_block(&bucket, t, id).await?;
        if block.meta.is_none() {
            bail!(
                "block {id} of tenant {t} is partial (no meta.json): the compactor cleans partial blocks up on its own"
            );
        }
        match a.mark_type {
            MarkType::Deletion => {
                if let Some(m) = marks::read::<DeletionMark>(&bucket, t, id).await? {
                    println!(
                        "block {id} of tenant {t} is already marked for deletion since {} (unchanged)",
                        render::rfc3339_s(m.deletion_time)
                    );
                    return Ok(());
                }
                marks::write(&bucket, t, &DeletionMark::new(id, now_s())).await?;
                println!(
                    "marked block {id} of tenant {t} for deletion: the compactor deletes it after its deletion delay"
                );
            }
            MarkType::NoCompact => {
                if let Some(m) = marks::read::<NoCompactMark>(&bucket, t, id).await? {
                    println!(
                        "block {id} of tenant {t} is already marked no-compact since {} (unchanged)",
                        render::rfc3339_s(m.no_compact_time)
                    );
                    return Ok(());
                }
                let mark = NoCompactMark::new(
                    id,
                    now_s(),
                    NoCompactReason::Manual,
                    a.details.clone().unwrap_or_default(),
                );
                marks::write(&bucket, t, &mark).await?;
                println!("marked block {id} of tenant {t} no-compact (reason manual)");
            }
        }
        Ok(())
    })?;
    Ok(ExitCode::SUCCESS)
}

fn unmark(a: UnmarkArgs) -> anyhow::Result<ExitCode> {
    check_block_id(&a.block)?;
    let (tenant, bucket, rt) = a.common.open()?;
    let t = tenant.as_str();
    let id = a.block.as_str();
    rt.block_on(async {
        // A block already deleted may have only its global marks left: those can be removed.
        let found = scan(&bucket, t, Some(id)).await?;
        let Some(block) = found.into_iter().next() else {
            bail!("block {id} not found for tenant {t}");
        };
        let (present, what) = match a.mark_type {
            MarkType::Deletion => (block.deletion.is_some(), "deletion"),
            MarkType::NoCompact => (block.no_compact.is_some(), "no-compact"),
        };
        if !present {
            println!("block {id} of tenant {t} has no {what} mark: nothing to do");
            return Ok(());
        }
        match a.mark_type {
            MarkType::Deletion => marks::remove::<DeletionMark>(&bucket, t, id).await?,
            MarkType::NoCompact => marks::remove::<NoCompactMark>(&bucket, t, id).await?,
        }
        println!(
            "removed the {what} mark of block {id} of tenant {t} (the bucket index drops it at the compactor's next cleanup)"
        );
        Ok(())
    })?;
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use clap::{CommandFactory, Parser};

    use super::*;
    use crate::tools::{Tool, ToolsArgs};

    /// Each bucket command takes every server flag that chooses the blocks bucket.
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
        let bucket = tools.find_subcommand("bucket").expect("bucket subcommand");
        for name in ["ls", "inspect", "mark", "unmark"] {
            let sub = bucket.find_subcommand(name).expect(name);
            let mine: BTreeSet<String> = sub
                .get_arguments()
                .filter_map(|a| a.get_long().map(str::to_owned))
                .collect();
            let missing: Vec<_> = server.difference(&mine).collect();
            assert!(missing.is_empty(), "bucket {name} lacks {missing:?}");
            assert!(mine.contains("tenant"), "{name}");
        }
        ToolsArgs::command().debug_assert();
    }

    #[test]
    fn parses_the_documented_shape() {
        let parse = |argv: &[&str]| {
            ToolsArgs::try_parse_from(["tools", "bucket"].iter().chain(argv.iter()))
        };
        let Tool::Bucket(a) = parse(&[
            "mark",
            "--tenant=t",
            "--type=no-compact",
            "--details=broken index",
            "01HQ3Z5V6W7X8Y9ZABCDEFGHJK",
        ])
        .unwrap()
        .tool
        else {
            panic!("not a bucket command")
        };
        let BucketCommand::Mark(m) = a.command else {
            panic!("not mark")
        };
        assert_eq!(m.mark_type, MarkType::NoCompact);
        assert_eq!(m.details.as_deref(), Some("broken index"));
        let Tool::Bucket(a) = parse(&["ls", "--tenant=t", "--format=json"]).unwrap().tool else {
            panic!("not a bucket command")
        };
        assert!(matches!(
            a.command,
            BucketCommand::Ls(LsArgs {
                format: Format::Json,
                ..
            })
        ));
        assert!(parse(&["ls"]).is_err(), "--tenant is required");
        assert!(
            parse(&["mark", "--tenant=t", "01HQ3Z5V6W7X8Y9ZABCDEFGHJK"]).is_err(),
            "--type is required"
        );
        assert!(
            parse(&[
                "mark",
                "--tenant=t",
                "--type=other",
                "01HQ3Z5V6W7X8Y9ZABCDEFGHJK"
            ])
            .is_err()
        );
        assert!(parse(&["ls", "--tenant=t", "--format=xml"]).is_err());
        assert!(check_block_id("not-a-ulid").is_err());
        check_block_id("01HQ3Z5V6W7X8Y9ZABCDEFGHJK").unwrap();
    }
}
