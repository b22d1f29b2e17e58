//! File descriptors as a budget: a new tenant is only opened while the process has
//! descriptors to spare for it.
//!
//! Every tenant holds a few descriptors for as long as its head is open (its WAL segment, the
//! head-chunk and spill files). Without a budget, a flood of new tenant ids exhausts the
//! process' descriptors, and then it is the tenants already here that fail: their block cuts,
//! WAL segments and bucket syncs get EMFILE. So a new tenant is refused (retryably) while the
//! descriptors open, plus what a tenant costs, would cross the soft `RLIMIT_NOFILE` less a
//! reserve kept for connections, block files and the existing tenants' next segments.
//!
//! Counting `/proc/self/fd` costs a directory read per call, so the count is sampled at most
//! every [`SAMPLE_EVERY`] and tenants opened since the sample are added at their estimated
//! cost. Where `/proc` is missing the budget is not enforced.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use parking_lot::Mutex;

/// Descriptors a tenant's head may hold: WAL segment, head-chunk file, spill files, and
/// slack for a cut in progress.
pub const FDS_PER_TENANT: u64 = 8;

const SAMPLE_EVERY: Duration = Duration::from_secs(1);

/// The budget; shared by all tenant creations.
#[derive(Debug)]
pub struct FdBudget {
    /// Soft `RLIMIT_NOFILE` (0 = unknown, budget off).
    limit: u64,
    sample: Mutex<Option<(Instant, u64)>>,
    /// Tenants opened since the last sample.
    opened_since: AtomicU64,
}

impl FdBudget {
    /// Reads the process' descriptor limit.
    pub fn for_process() -> Self {
        Self::with_limit(soft_limit())
    }

    pub fn with_limit(limit: u64) -> Self {
        Self {
            limit,
            sample: Mutex::new(None),
            opened_since: AtomicU64::new(0),
        }
    }

    /// The soft descriptor limit the budget works against (0 = unknown).
    pub fn limit(&self) -> u64 {
        self.limit
    }

    /// Descriptors kept free for everything that is not a new tenant: a tenth of the limit,
    /// at least 64.
    pub fn reserve(&self) -> u64 {
        (self.limit / 10).max(64)
    }

    /// Whether one more tenant fits; `Err` says why not.
    pub fn admit_tenant(&self) -> Result<(), String> {
        if self.limit == 0 {
            return Ok(());
        }
        let open = {
            let mut sample = self.sample.lock();
            let fresh = sample.is_some_and(|(at, _)| at.elapsed() < SAMPLE_EVERY);
            if !fresh {
                match count_open_fds() {
                    Some(n) => {
                        *sample = Some((Instant::now(), n));
                        self.opened_since.store(0, Ordering::Release);
                    }
                    None => return Ok(()),
                }
            }
            let (_, n) = sample.expect("sampled above");
            n + self.opened_since.load(Ordering::Acquire) * FDS_PER_TENANT
        };
        let budget = self.limit.saturating_sub(self.reserve());
        if open + FDS_PER_TENANT > budget {
            return Err(format!(
                "the ingester is short of file descriptors ({open} open, limit {}, {} kept in reserve); raise the open-files limit or spread tenants over more ingesters",
                self.limit,
                self.reserve()
            ));
        }
        self.opened_since.fetch_add(1, Ordering::AcqRel);
        Ok(())
    }
}

fn soft_limit() -> u64 {
    let mut rl = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct we pass and nothing else.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut rl) } != 0
        || rl.rlim_cur == libc::RLIM_INFINITY
    {
        return 0;
    }
    rl.rlim_cur
}

fn count_open_fds() -> Option<u64> {
    std::fs::read_dir("/proc/self/fd")
        .ok()
        .map(|rd| rd.count() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_tenants_once_the_budget_is_spent() {
        let open = count_open_fds().expect("/proc/self/fd");
        // Room for exactly three tenants above what is open now.
        let limit = open + 64 + 3 * FDS_PER_TENANT + FDS_PER_TENANT / 2;
        let b = FdBudget::with_limit(limit);
        assert_eq!(b.reserve(), 64);
        // Other tests in this process open and close files meanwhile: allow one either way.
        let mut admitted = 0;
        let err = loop {
            match b.admit_tenant() {
                Ok(()) => admitted += 1,
                Err(e) => break e,
            }
            assert!(admitted <= 4, "the budget never ran out");
        };
        assert!((2..=4).contains(&admitted), "admitted {admitted}");
        assert!(err.contains("short of file descriptors"), "{err}");
    }

    #[test]
    fn an_unknown_limit_admits_everything() {
        let b = FdBudget::with_limit(0);
        for _ in 0..1000 {
            b.admit_tenant().unwrap();
        }
    }
}
