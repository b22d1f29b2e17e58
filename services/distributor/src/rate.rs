//! Per-tenant ingestion rate limiting: a token bucket per tenant, refilled at
//! `ingestion_rate` samples/s up to `ingestion_burst_size`.
//!
//! Limits are local to this distributor (Mimir's "local" strategy); with several distributors
//! an operator divides the tenant's rate among them.

use std::collections::HashMap;
use std::time::Instant;

use parking_lot::Mutex;

#[derive(Debug)]
struct Bucket {
    tokens: f64,
    last: Instant,
}

/// Token buckets keyed by tenant.
#[derive(Debug, Default)]
pub struct RateLimiter {
    buckets: Mutex<HashMap<String, Bucket>>,
}

impl RateLimiter {
    /// Takes `n` tokens for `tenant` if available; `false` means the request is over the limit
    /// and nothing was taken.
    pub fn allow(&self, tenant: &str, n: usize, rate: f64, burst: usize, now: Instant) -> bool {
        if rate <= 0.0 || rate.is_infinite() {
            return true;
        }
        let burst = burst as f64;
        let mut buckets = self.buckets.lock();
        let b = buckets.entry(tenant.to_string()).or_insert(Bucket {
            tokens: burst,
            last: now,
        });
        let elapsed = now.saturating_duration_since(b.last).as_secs_f64();
        b.tokens = (b.tokens + elapsed * rate).min(burst);
        b.last = now;
        let n = n as f64;
        if n <= b.tokens {
            b.tokens -= n;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn burst_then_refill() {
        let l = RateLimiter::default();
        let t0 = Instant::now();
        assert!(l.allow("a", 100, 10.0, 100, t0));
        assert!(!l.allow("a", 1, 10.0, 100, t0));
        assert!(l.allow("b", 100, 10.0, 100, t0), "tenants are independent");
        assert!(l.allow("a", 10, 10.0, 100, t0 + Duration::from_secs(1)));
        assert!(!l.allow("a", 1, 10.0, 100, t0 + Duration::from_secs(1)));
        assert!(
            !l.allow("a", 101, 10.0, 100, t0 + Duration::from_secs(100)),
            "over burst never fits"
        );
    }
}
