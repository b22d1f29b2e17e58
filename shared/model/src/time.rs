//! Wall-clock time as Prometheus timestamps (milliseconds since the Unix epoch).
//!
//! One definition so every crate, and every test, reads the clock the same way: a clock set
//! before 1970 reads as 0 rather than panicking, since a timestamp is data here, not a reason
//! to stop a process.

use std::time::{SystemTime, UNIX_EPOCH};

/// Now, in milliseconds since the Unix epoch (0 if the clock is before it).
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

#[cfg(test)]
mod tests {
    #[test]
    fn now_is_after_2020() {
        assert!(super::now_ms() > 1_577_836_800_000);
    }
}
