//! Process-wide admission: at most `max_concurrent` queries read blocks at once, and the
//! bytes they fetch from the bucket (held until each query's answer is sent) stay within a
//! byte budget. A query that cannot get a slot or its bytes within the queue timeout is
//! refused with UNAVAILABLE (another replica, or a retry, may serve it); a query that alone
//! needs more than the whole budget is refused as a limit. Memory therefore stays bounded
//! however many queries arrive: they wait or are refused, never pile up.

use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::error::{Error, Result};

/// Budget granularity: permits are KiB, so a `u32` count covers 4 TiB.
const UNIT: u64 = 1024;

/// The admission gate of one store-gateway.
#[derive(Debug, Clone)]
pub struct Limiter {
    queries: Arc<Semaphore>,
    bytes: Arc<Semaphore>,
    budget_units: u32,
    queue_timeout: Duration,
}

impl Limiter {
    /// `max_concurrent` queries (at least 1) and `max_bytes` in flight (at least 1 MiB).
    pub fn new(max_concurrent: usize, max_bytes: u64, queue_timeout: Duration) -> Self {
        let budget_units = u32::try_from((max_bytes / UNIT).max(1024)).unwrap_or(u32::MAX);
        Self {
            queries: Arc::new(Semaphore::new(max_concurrent.max(1))),
            bytes: Arc::new(Semaphore::new(budget_units as usize)),
            budget_units,
            queue_timeout,
        }
    }

    /// Waits (up to the queue timeout) for a query slot.
    pub async fn admit(&self) -> Result<Ticket> {
        let slot = tokio::time::timeout(
            self.queue_timeout,
            Arc::clone(&self.queries).acquire_owned(),
        )
        .await
        .map_err(|_| {
            Error::Overloaded(format!(
                "no query slot free within {:?} (max-concurrent reached)",
                self.queue_timeout
            ))
        })?
        .map_err(|_| Error::Overloaded("store-gateway is stopping".into()))?;
        Ok(Ticket {
            limiter: self.clone(),
            _slot: slot,
            held: Mutex::new(None),
            held_units: Mutex::new(0),
        })
    }

    /// KiB of the byte budget free now (tests, metrics).
    pub fn free_units(&self) -> usize {
        self.bytes.available_permits()
    }
}

/// One admitted query: its slot and the bytes it holds, all released on drop.
#[derive(Debug)]
pub struct Ticket {
    limiter: Limiter,
    _slot: OwnedSemaphorePermit,
    held: Mutex<Option<OwnedSemaphorePermit>>,
    held_units: Mutex<u64>,
}

impl Ticket {
    /// Reserves `n` bytes of the budget for the rest of the query.
    pub async fn reserve(&self, n: u64) -> Result<()> {
        let units = n.div_ceil(UNIT).max(1);
        let total = *self.held_units.lock() + units;
        if total > u64::from(self.limiter.budget_units) {
            return Err(Error::TooLarge(format!(
                "the query needs more than the store-gateway's {} KiB fetch budget \
                 (max-inflight-fetch-bytes); narrow the selectors or the time range",
                self.limiter.budget_units
            )));
        }
        let units32 = u32::try_from(units).unwrap_or(u32::MAX);
        let permit = tokio::time::timeout(
            self.limiter.queue_timeout,
            Arc::clone(&self.limiter.bytes).acquire_many_owned(units32),
        )
        .await
        .map_err(|_| {
            Error::Overloaded(format!(
                "{n} bytes of fetch budget not free within {:?}",
                self.limiter.queue_timeout
            ))
        })?
        .map_err(|_| Error::Overloaded("store-gateway is stopping".into()))?;
        *self.held_units.lock() += units;
        let mut held = self.held.lock();
        match held.as_mut() {
            Some(p) => p.merge(permit),
            None => *held = Some(permit),
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn slots_and_bytes_are_bounded_and_released() {
        let l = Limiter::new(1, 2 << 20, Duration::from_millis(50));
        let t = l.admit().await.unwrap();
        // The only slot is taken: the next query times out.
        assert!(matches!(l.admit().await, Err(Error::Overloaded(_))));
        t.reserve(1 << 20).await.unwrap();
        assert_eq!(l.free_units(), 1024);
        // More than the whole budget for one query: a limit.
        assert!(matches!(t.reserve(2 << 20).await, Err(Error::TooLarge(_))));
        drop(t);
        assert_eq!(l.free_units(), 2048);
        let t1 = l.admit().await.unwrap();
        t1.reserve(2 << 20).await.unwrap();
        drop(t1);
        assert_eq!(l.free_units(), 2048);
    }

    #[tokio::test]
    async fn budget_shared_between_queries_waits_then_refuses() {
        let l = Limiter::new(4, 1 << 20, Duration::from_millis(50));
        let a = l.admit().await.unwrap();
        let b = l.admit().await.unwrap();
        a.reserve(1 << 20).await.unwrap();
        assert!(matches!(b.reserve(1024).await, Err(Error::Overloaded(_))));
        drop(a);
        b.reserve(1024).await.unwrap();
    }
}
