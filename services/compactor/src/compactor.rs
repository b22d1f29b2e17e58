//! The compaction run: for each owned tenant, plan from a fresh bucket index, run the jobs,
//! and plan again until nothing is left (each pass goes one step: replicas, then shards,
//! then longer ranges).
//!
//! A job downloads its inputs into `<data_dir>/compact/<tenant>/<job>/`, merges them on a
//! blocking thread, uploads each output with `meta.json` last, and only then writes the
//! inputs' deletion marks. A crash at any step leaves a state the next run completes: before
//! an output's `meta.json` is up it is a partial block nobody reads (deleted after the
//! partial-block delay); once it is up and before the inputs are marked, output and inputs
//! overlap and the next pass merges them again into the same samples (each timestamp once),
//! so nothing is lost or counted twice. The local work directory is wiped before and after
//! every job.

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use norn_bucket_index::{
    BucketIndexError, DeletionMark, Index, IndexBlock, NoCompactMark, NoCompactReason, marks,
    update_index,
};
use norn_limits::Overrides;
use norn_storage::{Bucket, StorageError, layout};
use norn_tsdb::block::writer::ORG_ID_LABEL;
use norn_tsdb::compact::{BadBlockKind, CompactError, CompactOptions, SHARD_ID_LABEL, compact};
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::metrics::CompactorMetrics;
use crate::planner::{Job, PlanParams, plan};
use crate::ring::Ownership;

/// Most planning passes per tenant and run (a pass per level is enough; this bounds a
/// planner that would keep finding work).
const MAX_PASSES: usize = 12;

/// A compactor operation failed (retried at the next run).
#[derive(Debug, thiserror::Error)]
pub enum CompactorError {
    #[error("bucket: {0}")]
    Storage(#[from] StorageError),
    #[error("bucket index: {0}")]
    Index(#[from] BucketIndexError),
    #[error("local disk, {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("compaction: {0}")]
    Compact(String),
    #[error("stopping")]
    Stopped,
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> CompactorError + '_ {
    move |source| CompactorError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Unix seconds and milliseconds of `t`.
pub(crate) fn unix(t: SystemTime) -> (i64, i64) {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or(Duration::ZERO);
    (d.as_secs() as i64, d.as_millis() as i64)
}

/// What one tenant's compaction did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TenantCompaction {
    /// Jobs completed.
    pub jobs: usize,
    /// Input blocks merged (and marked for deletion).
    pub blocks_compacted: usize,
    /// Blocks written.
    pub blocks_written: usize,
    /// Blocks marked no-compact.
    pub marked_no_compact: Vec<String>,
}

enum JobOutcome {
    Done { inputs: usize, outputs: usize },
    BadBlock(String),
}

/// The compactor's state: configuration, bucket, limits, ring, metrics.
pub struct Compactor {
    pub(crate) cfg: Config,
    pub(crate) bucket: Bucket,
    pub(crate) overrides: Arc<Overrides>,
    pub(crate) ownership: Ownership,
    pub(crate) metrics: CompactorMetrics,
    pub(crate) stop: CancellationToken,
}

impl Compactor {
    /// The owned tenants that have anything in the bucket.
    pub async fn owned_tenants(&self) -> Result<Vec<String>, CompactorError> {
        let (_, now_ms) = unix(SystemTime::now());
        let mut tenants = layout::list_tenants(&self.bucket).await?;
        tenants.retain(|t| self.ownership.owns(t, now_ms));
        self.metrics.tenants_owned.set(tenants.len() as i64);
        Ok(tenants)
    }

    /// One compaction run over every owned tenant. A failing tenant is logged and the others
    /// go on; the run counts as failed.
    pub async fn run_compaction(
        &self,
    ) -> Result<BTreeMap<String, TenantCompaction>, CompactorError> {
        self.metrics.runs_started.inc();
        let tenants = match self.owned_tenants().await {
            Ok(t) => t,
            Err(e) => {
                self.metrics.runs_failed.inc();
                return Err(e);
            }
        };
        let mut out = BTreeMap::new();
        let mut failed = None;
        for tenant in tenants {
            if self.stop.is_cancelled() {
                self.metrics.runs_failed.inc();
                return Err(CompactorError::Stopped);
            }
            match self.compact_tenant(&tenant).await {
                Ok(r) => {
                    out.insert(tenant, r);
                }
                Err(e) => {
                    tracing::warn!(tenant, error = %e, "compaction of tenant failed; retried next run");
                    failed = Some(e);
                }
            }
        }
        match failed {
            Some(e) => {
                self.metrics.runs_failed.inc();
                Err(e)
            }
            None => {
                self.metrics.runs_completed.inc();
                self.metrics
                    .last_successful_run
                    .set(unix(SystemTime::now()).0);
                Ok(out)
            }
        }
    }

    /// Plans and runs `tenant`'s jobs until nothing is left to do.
    pub async fn compact_tenant(&self, tenant: &str) -> Result<TenantCompaction, CompactorError> {
        let limits = self.overrides.for_tenant(tenant);
        let mut report = TenantCompaction::default();
        let mut previous: Option<Index> = None;
        for _ in 0..MAX_PASSES {
            let (now_s, now_ms) = unix(SystemTime::now());
            if !self.ownership.owns(tenant, now_ms) {
                tracing::info!(tenant, "tenant no longer owned; compaction stops");
                break;
            }
            let outcome = update_index(&self.bucket, tenant, previous.as_ref(), now_s).await?;
            let marked: HashSet<&str> = outcome
                .index
                .block_deletion_marks
                .iter()
                .map(|m| m.block_id.as_str())
                .collect();
            let blocks: Vec<IndexBlock> = outcome
                .index
                .blocks
                .iter()
                .filter(|b| {
                    !marked.contains(b.block_id.as_str())
                        && !outcome.no_compact.contains(&b.block_id)
                })
                .cloned()
                .collect();
            let params = PlanParams {
                ranges: self.cfg.ranges_ms(),
                now_ms,
                first_level_wait_ms: i64::try_from(
                    self.cfg.first_level_compaction_wait_period.as_millis(),
                )
                .unwrap_or(i64::MAX),
                shards: u32::try_from(limits.compactor_split_and_merge_shards)
                    .unwrap_or(u32::MAX)
                    .min(norn_tsdb::compact::MAX_SHARDS),
                split_groups: u32::try_from(limits.compactor_split_groups).unwrap_or(u32::MAX),
            };
            let jobs = plan(&blocks, &params);
            if jobs.is_empty() {
                break;
            }
            tracing::info!(tenant, jobs = jobs.len(), "compaction planned");
            // A failing job (bucket or disk error) does not stop the tenant's other jobs;
            // the tenant counts as failed and is retried at the next run.
            let mut failed = None;
            for job in &jobs {
                if self.stop.is_cancelled() {
                    return Err(CompactorError::Stopped);
                }
                let started = Instant::now();
                match self.run_job(tenant, job).await {
                    Ok(JobOutcome::Done { inputs, outputs }) => {
                        self.metrics.compactions.inc();
                        self.metrics.blocks_compacted.inc_by(inputs as u64);
                        self.metrics
                            .compaction_duration
                            .observe(started.elapsed().as_secs_f64());
                        report.jobs += 1;
                        report.blocks_compacted += inputs;
                        report.blocks_written += outputs;
                    }
                    Ok(JobOutcome::BadBlock(id)) => report.marked_no_compact.push(id),
                    Err(CompactorError::Stopped) => return Err(CompactorError::Stopped),
                    Err(e) => {
                        self.metrics.compaction_failures.inc();
                        tracing::warn!(
                            tenant,
                            window_start = job.window_start,
                            range_ms = job.range,
                            inputs = job.inputs.len(),
                            error = %e,
                            "compaction job failed; retried next run"
                        );
                        failed = Some(e);
                    }
                }
            }
            if let Some(e) = failed {
                return Err(e);
            }
            previous = Some(outcome.index);
        }
        Ok(report)
    }

    fn job_dir(&self, tenant: &str, job: &Job) -> PathBuf {
        let first = job.inputs.first().map_or("none", |b| b.block_id.as_str());
        self.cfg
            .data_dir
            .join("compact")
            .join(tenant)
            .join(format!("{}-{}-{first}", job.window_start, job.range))
    }

    async fn run_job(&self, tenant: &str, job: &Job) -> Result<JobOutcome, CompactorError> {
        let work = self.job_dir(tenant, job);
        remove_dir_if_exists(&work).await?;
        let result = self.run_job_in(tenant, job, &work).await;
        // The work directory holds only copies: always wiped, success or not.
        if let Err(e) = remove_dir_if_exists(&work).await {
            tracing::warn!(dir = %work.display(), error = %e, "could not remove a compaction work directory");
        }
        result
    }

    async fn run_job_in(
        &self,
        tenant: &str,
        job: &Job,
        work: &Path,
    ) -> Result<JobOutcome, CompactorError> {
        let inputs_dir = work.join("in");
        let out_dir = work.join("out");
        tokio::fs::create_dir_all(&inputs_dir)
            .await
            .map_err(io_err(&inputs_dir))?;
        tokio::fs::create_dir_all(&out_dir)
            .await
            .map_err(io_err(&out_dir))?;
        let mut dirs = Vec::with_capacity(job.inputs.len());
        for b in &job.inputs {
            let dir = inputs_dir.join(&b.block_id);
            self.bucket
                .download_dir(&layout::block_prefix(tenant, &b.block_id), &dir)
                .await?;
            dirs.push(dir);
        }

        let mut labels = BTreeMap::new();
        labels.insert(ORG_ID_LABEL.to_string(), tenant.to_string());
        if let Some(shard) = &job.shard_label {
            labels.insert(SHARD_ID_LABEL.to_string(), shard.clone());
        }
        let cancel = Arc::new(AtomicBool::new(false));
        let opts = CompactOptions {
            labels,
            shards: job.shards,
            cancel: Some(Arc::clone(&cancel)),
            ..CompactOptions::default()
        };
        let out = out_dir.clone();
        let mut merge = tokio::task::spawn_blocking(move || compact(&dirs, &out, &opts));
        // On shutdown the merge thread is told to stop, so the process does not wait for it.
        let merged = tokio::select! {
            r = &mut merge => r,
            _ = self.stop.cancelled() => {
                cancel.store(true, Ordering::Relaxed);
                merge.await
            }
        }
        .map_err(|e| CompactorError::Compact(format!("merge thread failed: {e}")))?;
        let output = match merged {
            Ok(o) => o,
            Err(CompactError::BadBlock {
                block,
                kind,
                reason,
            }) if job.inputs.iter().any(|b| b.block_id == block) => {
                self.mark_no_compact(tenant, &block, kind, &reason).await?;
                return Ok(JobOutcome::BadBlock(block));
            }
            Err(CompactError::Cancelled) => return Err(CompactorError::Stopped),
            Err(e) => return Err(CompactorError::Compact(e.to_string())),
        };

        for meta in &output.blocks {
            let prefix = layout::block_prefix(tenant, &meta.ulid);
            self.bucket
                .upload_dir(&out_dir.join(&meta.ulid), &prefix, Some(layout::META_FILE))
                .await?;
        }
        // Only now that every output is complete in the bucket may the inputs go.
        let (now_s, _) = unix(SystemTime::now());
        for b in &job.inputs {
            marks::write(&self.bucket, tenant, &DeletionMark::new(&b.block_id, now_s)).await?;
            self.metrics
                .blocks_marked_for_deletion
                .with_label_values(&["compaction"])
                .inc();
        }
        tracing::info!(
            tenant,
            range_ms = job.range,
            window_start = job.window_start,
            inputs = job.inputs.len(),
            outputs = ?output.blocks.iter().map(|m| m.ulid.as_str()).collect::<Vec<_>>(),
            samples = output.blocks.iter().map(|m| m.stats.num_samples).sum::<u64>(),
            duplicates_dropped = output.stats.duplicates_dropped,
            conflicts = output.stats.conflicts,
            "compaction job done"
        );
        Ok(JobOutcome::Done {
            inputs: job.inputs.len(),
            outputs: output.blocks.len(),
        })
    }

    async fn mark_no_compact(
        &self,
        tenant: &str,
        block: &str,
        kind: BadBlockKind,
        reason: &str,
    ) -> Result<(), CompactorError> {
        let r = match kind {
            BadBlockKind::OutOfOrderChunks => NoCompactReason::BlockIndexOutOfOrderChunk,
            BadBlockKind::Corrupt => NoCompactReason::Critical,
        };
        let label = match kind {
            BadBlockKind::OutOfOrderChunks => "block-index-out-of-order-chunk",
            BadBlockKind::Corrupt => "critical",
        };
        let (now_s, _) = unix(SystemTime::now());
        let mark = NoCompactMark::new(block, now_s, r, reason.to_string());
        marks::write(&self.bucket, tenant, &mark).await?;
        self.metrics
            .no_compact_marks
            .with_label_values(&[label])
            .inc();
        tracing::warn!(
            tenant,
            block,
            reason = label,
            details = reason,
            "block marked no-compact; the tenant's other blocks go on compacting"
        );
        Ok(())
    }
}

async fn remove_dir_if_exists(dir: &Path) -> Result<(), CompactorError> {
    match tokio::fs::remove_dir_all(dir).await {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(io_err(dir)(e)),
    }
}
