//! One tenant's storage in the ingester: its head (with WAL), local blocks, metadata and
//! shipper state.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::AtomicI64;

use norn_model::TenantId;
use norn_tsdb::BlocksQueryable;
use norn_tsdb::block::Block;
use norn_tsdb::head::Head;
use parking_lot::{Mutex, RwLock};

use crate::metadata::MetadataStore;
use crate::shipper::Shipped;

pub(crate) struct TenantDb {
    pub(crate) tenant: TenantId,
    pub(crate) dir: PathBuf,
    pub(crate) head: Arc<Head>,
    pub(crate) metadata: MetadataStore,
    /// Local blocks, oldest first.
    pub(crate) blocks: RwLock<Vec<Arc<Block>>>,
    pub(crate) shipped: Mutex<Shipped>,
    /// Serialises cuts (the compaction loop and flush requests).
    pub(crate) cut_lock: Mutex<()>,
    /// Serialises uploads, so two shippers never upload the same block at once.
    pub(crate) ship_lock: tokio::sync::Mutex<()>,
    /// Wall-clock time of the last push, for the idle timeout.
    pub(crate) last_push_ms: AtomicI64,
}

impl TenantDb {
    pub(crate) fn blocks_queryable(&self) -> BlocksQueryable {
        BlocksQueryable::new(self.blocks.read().clone())
    }

    pub(crate) fn add_block(&self, block: Block) {
        let mut blocks = self.blocks.write();
        blocks.push(Arc::new(block));
        blocks.sort_by_key(|b| (b.meta().min_time, b.meta().ulid.clone()));
    }
}
