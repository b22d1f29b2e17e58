//! The compactor: one copy of every sample, long blocks, retention and the bucket index.
//!
//! For each tenant it owns (all of them in one process, its share of the compactor ring in a
//! cluster) it runs two loops:
//!
//! * **compaction** ([`compactor`], every `compaction_interval`): plans from the bucket index
//!   ([`planner`]) which blocks merge — the RF copies of a range into one block (vertical), or
//!   the blocks of a settled longer range into one (horizontal), split into shard blocks for
//!   large tenants — and runs each job: download, merge (`norn_tsdb::compact`), upload with
//!   `meta.json` last, then deletion marks on the inputs. A block that fails to read or verify
//!   gets a no-compact mark and the rest of the tenant goes on: the compactor never halts.
//! * **cleanup** ([`cleanup`], every `cleanup_interval`): retention marks, deletion of marked
//!   blocks after `deletion_delay`, of stale partial blocks, and the tenant's
//!   `bucket-index.json.gz`.

pub mod cleanup;
pub mod compactor;
pub mod config;
pub mod metrics;
pub mod planner;
pub mod ring;
pub mod service;

pub use cleanup::TenantCleanup;
pub use compactor::{Compactor, CompactorError, TenantCompaction};
pub use config::{Config, RingConfig, parse_block_ranges};
pub use ring::{COMPACTOR_RING_KEY, RingMembership};
pub use service::{BuildError, CompactorService, Deps, FIRST_RUN_DELAY, build};
