//! The compactor's configuration: the `compactor:` YAML block, with Mimir's keys and defaults.
//! Per-tenant settings (retention, split-and-merge shards, partial-block delay) are limits
//! (`norn_limits::Limits`), not here.

use std::path::PathBuf;
use std::time::Duration;

use norn_model::duration::{format_duration, parse_duration, serde_duration};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Most block ranges accepted.
const MAX_RANGES: usize = 16;

/// Compactor configuration (YAML block `compactor`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Ranges blocks are compacted to, ascending, each a multiple of the previous; the first
    /// is the ingesters' block range.
    #[serde(with = "serde_durations")]
    pub block_ranges: Vec<Duration>,
    /// Local directory for the blocks a job downloads and writes.
    pub data_dir: PathBuf,
    /// How often tenants are compacted.
    #[serde(with = "serde_duration")]
    pub compaction_interval: Duration,
    /// How often marked blocks are deleted, retention applied and bucket indexes written.
    #[serde(with = "serde_duration")]
    pub cleanup_interval: Duration,
    /// How long a block marked for deletion stays readable before it is deleted.
    #[serde(with = "serde_duration")]
    pub deletion_delay: Duration,
    /// Level-1 blocks uploaded more recently than this are not compacted yet, so the other
    /// replicas' copies of the range have time to arrive.
    #[serde(with = "serde_duration")]
    pub first_level_compaction_wait_period: Duration,
    /// The compactor ring.
    pub sharding_ring: RingConfig,
}

/// The compactor ring (YAML block `compactor.sharding_ring`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RingConfig {
    /// How often a compactor refreshes its heartbeat in the ring.
    #[serde(with = "serde_duration")]
    pub heartbeat_period: Duration,
    /// A compactor whose heartbeat is older than this is left out of the ring.
    #[serde(with = "serde_duration")]
    pub heartbeat_timeout: Duration,
    /// This compactor's id in the ring (default: the host name).
    pub instance_id: String,
}

impl Default for RingConfig {
    fn default() -> Self {
        Self {
            heartbeat_period: Duration::from_secs(15),
            heartbeat_timeout: Duration::from_secs(60),
            instance_id: String::new(),
        }
    }
}

impl Default for Config {
    fn default() -> Self {
        Self {
            block_ranges: vec![
                Duration::from_secs(2 * 3600),
                Duration::from_secs(12 * 3600),
                Duration::from_secs(24 * 3600),
            ],
            data_dir: PathBuf::from("./data-compactor"),
            compaction_interval: Duration::from_secs(3600),
            cleanup_interval: Duration::from_secs(15 * 60),
            deletion_delay: Duration::from_secs(12 * 3600),
            first_level_compaction_wait_period: Duration::from_secs(25 * 60),
            sharding_ring: RingConfig::default(),
        }
    }
}

impl Config {
    /// Refuses settings the compactor cannot honour.
    pub fn validate(&self) -> Result<(), String> {
        if self.block_ranges.is_empty() {
            return Err("compactor.block-ranges needs at least one range".into());
        }
        if self.block_ranges.len() > MAX_RANGES {
            return Err(format!(
                "compactor.block-ranges has {} ranges; at most {MAX_RANGES}",
                self.block_ranges.len()
            ));
        }
        let ms: Vec<u128> = self.block_ranges.iter().map(Duration::as_millis).collect();
        if ms[0] == 0 {
            return Err("compactor.block-ranges: ranges must be positive".into());
        }
        for w in ms.windows(2) {
            if w[1] <= w[0] || w[1] % w[0] != 0 {
                return Err(format!(
                    "compactor.block-ranges: each range must be a larger multiple of the previous ({} after {})",
                    format_duration(Duration::from_millis(w[1] as u64)),
                    format_duration(Duration::from_millis(w[0] as u64)),
                ));
            }
        }
        if ms.iter().any(|&m| m > i64::MAX as u128 / 4) {
            return Err("compactor.block-ranges: range too long".into());
        }
        let r = &self.sharding_ring;
        if r.heartbeat_period.is_zero() || r.heartbeat_timeout <= r.heartbeat_period {
            return Err(format!(
                "compactor.sharding_ring.heartbeat_timeout ({:?}) must be longer than heartbeat_period ({:?})",
                r.heartbeat_timeout, r.heartbeat_period
            ));
        }
        Ok(())
    }

    /// The block ranges in milliseconds.
    pub fn ranges_ms(&self) -> Vec<i64> {
        self.block_ranges
            .iter()
            .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
            .collect()
    }
}

/// Parses `2h0m0s,12h0m0s,24h0m0s` (the flag's form).
pub fn parse_block_ranges(text: &str) -> Result<Vec<Duration>, String> {
    text.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| parse_duration(s).map_err(|e| e.to_string()))
        .collect()
}

/// A list of durations as YAML strings (`[2h0m0s, 12h0m0s]`), as Mimir writes them.
mod serde_durations {
    use super::*;

    pub fn serialize<S: Serializer>(v: &[Duration], s: S) -> Result<S::Ok, S::Error> {
        let texts: Vec<String> = v.iter().map(|d| format_duration(*d)).collect();
        texts.serialize(s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Duration>, D::Error> {
        let texts = Vec::<String>::deserialize(d)?;
        texts
            .iter()
            .map(|t| parse_duration(t).map_err(serde::de::Error::custom))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_mimirs_and_valid() {
        let c = Config::default();
        c.validate().unwrap();
        assert_eq!(c.ranges_ms(), [7_200_000, 43_200_000, 86_400_000]);
        assert_eq!(
            parse_block_ranges("2h0m0s,12h0m0s,24h0m0s").unwrap(),
            c.block_ranges
        );
    }

    #[test]
    fn bad_ranges_are_refused() {
        for bad in ["", "2h,1h", "2h,3h", "0s", "2h,2h"] {
            let c = Config {
                block_ranges: parse_block_ranges(bad).unwrap(),
                ..Config::default()
            };
            assert!(c.validate().is_err(), "{bad:?}");
        }
        assert!(parse_block_ranges("2h,banana").is_err());
    }
}
