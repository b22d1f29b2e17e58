//! Persistent blocks as a PromQL [`Queryable`]: the ingester's local blocks and the blocks a
//! bucket store has loaded. Only blocks whose `[minTime, maxTime)` overlaps the query are
//! read; series from several blocks are joined with [`norn_model::merge_series`] (or, for
//! chunk-level reads, [`norn_model::query::merge_chunk_series`]).

use std::sync::Arc;

use async_trait::async_trait;
use norn_model::query::merge_chunk_series;
use norn_model::{
    ChunkSeries, Matcher, Queryable, SampleBudget, Series, StorageError, merge_series,
    merge_strings,
};

use crate::block::Block;
use crate::error::TsdbError;

/// A fixed set of blocks of one tenant (the caller takes a snapshot of its block list).
#[derive(Clone, Default)]
pub struct BlocksQueryable {
    blocks: Vec<Arc<Block>>,
}

impl BlocksQueryable {
    pub fn new(blocks: Vec<Arc<Block>>) -> Self {
        Self { blocks }
    }

    /// Blocks with data in the inclusive range `[mint, maxt]`.
    fn overlapping(&self, mint: i64, maxt: i64) -> impl Iterator<Item = &Arc<Block>> {
        self.blocks.iter().filter(move |b| {
            let m = b.meta();
            m.min_time <= maxt && m.max_time > mint
        })
    }
}

fn storage_error(b: &Block, e: TsdbError) -> StorageError {
    // A block that opened and verified but fails now is damaged on disk: an internal error
    // naming it, never a partial answer.
    StorageError::Internal(format!("reading block {}: {e}", b.dir().display()))
}

#[async_trait]
impl Queryable for BlocksQueryable {
    async fn select(
        &self,
        start_ms: i64,
        end_ms: i64,
        matchers: &[Matcher],
    ) -> Result<Vec<Series>, StorageError> {
        norn_model::ShardSelector::split(matchers)?;
        let mut lists = Vec::new();
        for b in self.overlapping(start_ms, end_ms) {
            lists.push(
                b.select(start_ms, end_ms, matchers)
                    .map_err(|e| storage_error(b, e))?,
            );
        }
        Ok(merge_series(lists))
    }

    async fn select_within(
        &self,
        start_ms: i64,
        end_ms: i64,
        matchers: &[Matcher],
        budget: &SampleBudget,
    ) -> Result<Vec<Series>, StorageError> {
        norn_model::ShardSelector::split(matchers)?;
        let mut lists = Vec::new();
        for b in self.overlapping(start_ms, end_ms) {
            lists.push(
                b.select_within(start_ms, end_ms, matchers, budget)
                    .map_err(|e| storage_error(b, e))?,
            );
            budget.check()?;
        }
        Ok(merge_series(lists))
    }

    async fn select_chunks(
        &self,
        start_ms: i64,
        end_ms: i64,
        matchers: &[Matcher],
    ) -> Result<Vec<ChunkSeries>, StorageError> {
        norn_model::ShardSelector::split(matchers)?;
        self.select_chunks_within(start_ms, end_ms, matchers, &SampleBudget::unlimited())
            .await
    }

    async fn select_chunks_within(
        &self,
        start_ms: i64,
        end_ms: i64,
        matchers: &[Matcher],
        budget: &SampleBudget,
    ) -> Result<Vec<ChunkSeries>, StorageError> {
        norn_model::ShardSelector::split(matchers)?;
        let mut lists = Vec::new();
        for b in self.overlapping(start_ms, end_ms) {
            lists.push(
                b.select_chunks_within(start_ms, end_ms, matchers, budget)
                    .map_err(|e| storage_error(b, e))?,
            );
            budget.check()?;
        }
        merge_chunk_series(lists)
    }

    async fn label_names(
        &self,
        start_ms: i64,
        end_ms: i64,
        matchers: &[Matcher],
    ) -> Result<Vec<String>, StorageError> {
        norn_model::ShardSelector::split(matchers)?;
        let mut lists = Vec::new();
        for b in self.overlapping(start_ms, end_ms) {
            lists.push(b.label_names(matchers).map_err(|e| storage_error(b, e))?);
        }
        Ok(merge_strings(lists))
    }

    async fn label_values(
        &self,
        name: &str,
        start_ms: i64,
        end_ms: i64,
        matchers: &[Matcher],
    ) -> Result<Vec<String>, StorageError> {
        norn_model::ShardSelector::split(matchers)?;
        let mut lists = Vec::new();
        for b in self.overlapping(start_ms, end_ms) {
            lists.push(
                b.label_values(name, matchers)
                    .map_err(|e| storage_error(b, e))?,
            );
        }
        Ok(merge_strings(lists))
    }
}
