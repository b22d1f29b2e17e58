//! The ring as the write path sees it: which ingesters own a set of tokens.
//!
//! The distributor depends on [`WriteRing`], not on [`Ring`], so its replication logic is
//! tested with in-memory fakes; [`Ring`] is the implementation a cluster uses.

use crate::ring::{Operation, Ring};
use norn_model::now_ms;

/// The replicas that own one token for writes.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ReplicaSet {
    /// Instance addresses (`host:port`), distinct.
    pub addrs: Vec<String>,
    /// How many of them may fail while the write still succeeds.
    pub max_errors: usize,
}

/// A ring as seen by a writer.
pub trait WriteRing: Send + Sync {
    /// The instances series with these tokens are written to: the distinct replica sets and,
    /// per token, the index of its set. An error means no quorum is possible right now (too
    /// many unhealthy instances, empty ring).
    fn replicas_for(&self, tokens: &[u32]) -> Result<(Vec<ReplicaSet>, Vec<u32>), String>;
}

impl WriteRing for Ring {
    fn replicas_for(&self, tokens: &[u32]) -> Result<(Vec<ReplicaSet>, Vec<u32>), String> {
        let (sets, of_token) = self
            .get_many(tokens.iter().copied(), Operation::Write, now_ms())
            .map_err(|e| e.to_string())?;
        let sets = sets
            .into_iter()
            .map(|s| ReplicaSet {
                addrs: s.instances.into_iter().map(|i| i.addr).collect(),
                max_errors: s.max_errors,
            })
            .collect();
        Ok((sets, of_token))
    }
}
