//! Which of a tenant's blocks to merge: a pure function of the bucket index, the block ranges,
//! the tenant's split settings and the clock.
//!
//! Blocks are grouped by the aligned window of a range that holds them wholly, and within a
//! window by their shard label (`__compactor_shard_id__`, empty when not split):
//!
//! 1. **First range** (the ingesters' block range, 2h). Vertical compaction: the unsharded
//!    blocks of a window (the RF copies, imports, a late block beside an already compacted one)
//!    merge into one block when there are two or more; with split-and-merge they are instead
//!    split into the tenant's `shards` outputs, in `split_groups` jobs. Blocks of one shard
//!    label in a window merge into one block of that label.
//! 2. **Higher ranges** (12h, 24h). Horizontal compaction: once a window ended at least one
//!    first range plus the first-level wait ago (no ingester will ship into it any more), the
//!    blocks of one shard label inside it merge into one block covering the window, when there
//!    are two or more and one of them is shorter than the window. A window where step 1 still
//!    has work waits for the next pass.
//!
//! Level-1 blocks uploaded less than `first_level_wait` ago are left alone, so that the other
//! replicas of the range arrive first. Blocks that fit no window (longer than the largest
//! range, or not aligned) are never compacted. The caller leaves out blocks with a deletion or
//! no-compact mark.

use std::collections::BTreeMap;

use norn_bucket_index::IndexBlock;
use norn_tsdb::compact::MAX_INPUTS;

/// One compaction to run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Job {
    /// The window the inputs lie in: `[start, start + range)`.
    pub window_start: i64,
    pub range: i64,
    /// The blocks to merge, sorted by id.
    pub inputs: Vec<IndexBlock>,
    /// How many shard blocks to write (1 = one block).
    pub shards: u32,
    /// The shard label the inputs share and the output keeps (merge of one shard's blocks).
    pub shard_label: Option<String>,
}

/// What the planner needs besides the blocks.
#[derive(Debug, Clone)]
pub struct PlanParams {
    /// Block ranges in ms, ascending, each a multiple of the previous.
    pub ranges: Vec<i64>,
    pub now_ms: i64,
    /// Level-1 blocks uploaded after `now_ms - first_level_wait_ms` are not compacted yet.
    pub first_level_wait_ms: i64,
    /// Split-and-merge shards (0 or 1: no split).
    pub shards: u32,
    /// Split jobs per window (at least 1).
    pub split_groups: u32,
}

fn window_of(b: &IndexBlock, range: i64) -> Option<i64> {
    if range <= 0 {
        return None;
    }
    // Absurd times (near i64's ends) fit no window rather than overflow.
    let start = b.min_time.div_euclid(range).checked_mul(range)?;
    (b.max_time <= start.checked_add(range)?).then_some(start)
}

/// The jobs for `blocks` (none deletion- or no-compact-marked), oldest window first.
pub fn plan(blocks: &[IndexBlock], p: &PlanParams) -> Vec<Job> {
    let Some(&first) = p.ranges.first() else {
        return Vec::new();
    };
    let settled = |b: &&IndexBlock| {
        b.compaction_level > 1
            || b.uploaded_at == 0
            || b.uploaded_at.saturating_mul(1000) <= p.now_ms.saturating_sub(p.first_level_wait_ms)
    };
    let eligible: Vec<&IndexBlock> = blocks.iter().filter(settled).collect();
    let mut jobs = Vec::new();
    // Windows of the first range that have work this pass.
    let mut busy: Vec<(i64, i64)> = Vec::new();

    // 1. First range: vertical merge, split, merge of a shard's blocks.
    let mut windows: BTreeMap<i64, BTreeMap<&str, Vec<&IndexBlock>>> = BTreeMap::new();
    for b in &eligible {
        if let Some(start) = window_of(b, first) {
            windows
                .entry(start)
                .or_default()
                .entry(b.compactor_shard_id.as_str())
                .or_default()
                .push(b);
        }
    }
    for (start, by_shard) in &windows {
        let before = jobs.len();
        for (shard, group) in by_shard {
            let mut group: Vec<IndexBlock> = group.iter().map(|b| (*b).clone()).collect();
            group.sort_by(|a, b| a.block_id.cmp(&b.block_id));
            if shard.is_empty() && p.shards > 1 {
                let n = (p.split_groups.max(1) as usize).min(group.len());
                let mut parts: Vec<Vec<IndexBlock>> = vec![Vec::new(); n];
                for (i, b) in group.into_iter().enumerate() {
                    parts[i % n].push(b);
                }
                for mut inputs in parts {
                    inputs.truncate(MAX_INPUTS);
                    jobs.push(Job {
                        window_start: *start,
                        range: first,
                        inputs,
                        shards: p.shards,
                        shard_label: None,
                    });
                }
            } else if group.len() >= 2 {
                group.truncate(MAX_INPUTS);
                jobs.push(Job {
                    window_start: *start,
                    range: first,
                    inputs: group,
                    shards: 1,
                    shard_label: (!shard.is_empty()).then(|| shard.to_string()),
                });
            }
        }
        if jobs.len() > before {
            busy.push((*start, start.saturating_add(first)));
        }
    }

    // 2. Higher ranges: horizontal merge of settled windows.
    for &range in p.ranges.iter().skip(1) {
        let mut windows: BTreeMap<i64, BTreeMap<&str, Vec<&IndexBlock>>> = BTreeMap::new();
        for b in &eligible {
            if let Some(start) = window_of(b, range) {
                windows
                    .entry(start)
                    .or_default()
                    .entry(b.compactor_shard_id.as_str())
                    .or_default()
                    .push(b);
            }
        }
        for (start, by_shard) in windows {
            let end = start.saturating_add(range);
            if end
                .saturating_add(first)
                .saturating_add(p.first_level_wait_ms)
                > p.now_ms
            {
                continue;
            }
            if busy.iter().any(|&(s, e)| s < end && start < e) {
                continue;
            }
            let before = jobs.len();
            for (shard, group) in by_shard {
                if group.len() < 2
                    || group
                        .iter()
                        .all(|b| b.max_time.saturating_sub(b.min_time) >= range)
                {
                    continue;
                }
                let mut inputs: Vec<IndexBlock> = group.iter().map(|b| (*b).clone()).collect();
                inputs.sort_by(|a, b| a.block_id.cmp(&b.block_id));
                inputs.truncate(MAX_INPUTS);
                jobs.push(Job {
                    window_start: start,
                    range,
                    inputs,
                    shards: 1,
                    shard_label: (!shard.is_empty()).then(|| shard.to_string()),
                });
            }
            if jobs.len() > before {
                busy.push((start, end));
            }
        }
    }
    jobs.sort_by_key(|j| (j.window_start, j.range));
    jobs
}

#[cfg(test)]
mod tests {
    use super::*;

    const H: i64 = 3_600_000;
    const NOW: i64 = 1_000 * H;

    fn b(id: u32, min: i64, max: i64, level: u32, shard: &str) -> IndexBlock {
        IndexBlock {
            block_id: format!("01HQ3Z5V6W7X8Y9ZABCDEF{id:04}"),
            min_time: min,
            max_time: max,
            segments_format: String::new(),
            segments_num: 0,
            uploaded_at: 1,
            compactor_shard_id: shard.into(),
            source: String::new(),
            compaction_level: level,
        }
    }

    fn params(shards: u32, groups: u32) -> PlanParams {
        PlanParams {
            ranges: vec![2 * H, 12 * H, 24 * H],
            now_ms: NOW,
            first_level_wait_ms: H / 2,
            shards,
            split_groups: groups,
        }
    }

    #[test]
    fn replicas_of_a_range_merge_and_neighbours_wait() {
        let blocks = vec![
            b(1, 0, 2 * H, 1, ""),
            b(2, 0, 2 * H, 1, ""),
            b(3, 0, 2 * H, 1, ""),
            b(4, 2 * H, 4 * H, 1, ""),
        ];
        let jobs = plan(&blocks, &params(0, 1));
        assert_eq!(jobs.len(), 1, "{jobs:?}");
        assert_eq!(jobs[0].inputs.len(), 3);
        assert_eq!(jobs[0].shards, 1);
    }

    #[test]
    fn settled_windows_go_up_a_level() {
        let blocks: Vec<IndexBlock> = (0..6)
            .map(|i| b(i, i64::from(i) * 2 * H, i64::from(i + 1) * 2 * H, 2, ""))
            .collect();
        let jobs = plan(&blocks, &params(0, 1));
        assert_eq!(jobs.len(), 1);
        assert_eq!((jobs[0].window_start, jobs[0].range), (0, 12 * H));
        assert_eq!(jobs[0].inputs.len(), 6);
        // A window that just ended waits.
        let mut p = params(0, 1);
        p.now_ms = 12 * H + H;
        assert!(plan(&blocks, &p).is_empty());
    }

    #[test]
    fn young_level_one_blocks_wait() {
        let mut young = b(2, 0, 2 * H, 1, "");
        young.uploaded_at = NOW / 1000;
        let blocks = vec![b(1, 0, 2 * H, 1, ""), young];
        assert!(plan(&blocks, &params(0, 1)).is_empty());
    }

    #[test]
    fn split_and_merge() {
        let blocks = vec![
            b(1, 0, 2 * H, 1, ""),
            b(2, 0, 2 * H, 1, ""),
            b(3, 0, 2 * H, 1, ""),
            b(4, 2 * H, 4 * H, 2, "1_of_2"),
            b(5, 2 * H, 4 * H, 2, "1_of_2"),
            b(6, 2 * H, 4 * H, 2, "2_of_2"),
        ];
        let jobs = plan(&blocks, &params(2, 2));
        assert_eq!(jobs.len(), 3, "{jobs:?}");
        assert_eq!(jobs[0].shards, 2);
        assert_eq!(jobs[1].shards, 2);
        assert_eq!(jobs[0].inputs.len() + jobs[1].inputs.len(), 3);
        assert_eq!(jobs[2].shard_label.as_deref(), Some("1_of_2"));
        assert_eq!(jobs[2].inputs.len(), 2);
    }

    #[test]
    fn absurd_times_plan_nothing_and_do_not_overflow() {
        let blocks = vec![
            b(1, i64::MIN, i64::MIN + 5, 1, ""),
            b(2, i64::MIN, i64::MIN + 5, 1, ""),
            b(3, i64::MAX - 5, i64::MAX, 1, ""),
            b(4, i64::MAX - 5, i64::MAX, 1, ""),
            b(5, i64::MIN, i64::MAX, 1, ""),
        ];
        let mut p = params(0, 1);
        p.now_ms = i64::MAX;
        p.first_level_wait_ms = i64::MAX;
        let jobs = plan(&blocks, &p);
        assert!(jobs.iter().all(|j| j.inputs.len() >= 2));
    }

    #[test]
    fn long_and_unaligned_blocks_are_left_alone() {
        let blocks = vec![
            b(1, 0, 48 * H, 4, ""),
            b(2, 0, 48 * H, 4, ""),
            b(3, H, 3 * H, 1, ""),
        ];
        assert!(plan(&blocks, &params(0, 1)).is_empty());
    }
}
