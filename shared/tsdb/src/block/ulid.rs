//! ULIDs, the names of blocks: 48-bit big-endian Unix-millisecond timestamp + 80 random
//! bits, written as 26 characters of Crockford base32 (spec §2).
//!
//! Written by hand rather than pulled in as a crate: it is 100 lines, and the only
//! requirement is that Prometheus' `ulid.ParseStrict` accepts what we produce. Entropy comes
//! from `/dev/urandom`; when that is unavailable (odd sandboxes) a hash of the time, process
//! id and a counter keeps ids unique within the process, which is all a block name needs.

use std::fmt;
use std::io::Read;
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

const ALPHABET: &[u8; 32] = b"0123456789ABCDEFGHJKMNPQRSTVWXYZ";

/// A 128-bit ULID.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Ulid(pub u128);

/// A string is not a valid ULID.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid ULID {0:?}: want 26 Crockford base32 characters, the first at most '7'")]
pub struct UlidError(pub String);

impl Ulid {
    /// A new ULID stamped with the current wall-clock time.
    pub fn new() -> Self {
        let ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0);
        Self::from_parts(ms, random_80())
    }

    /// Builds a ULID from a millisecond timestamp (low 48 bits used) and 80 random bits.
    pub fn from_parts(ms: u64, random: u128) -> Self {
        let ms = u128::from(ms & ((1 << 48) - 1));
        Self((ms << 80) | (random & ((1u128 << 80) - 1)))
    }

    /// The timestamp part, in Unix milliseconds.
    pub fn timestamp_ms(self) -> u64 {
        (self.0 >> 80) as u64
    }
}

impl Default for Ulid {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Display for Ulid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // 26 chars × 5 bits = 130 bits: the first char carries only the top 3 bits.
        let mut out = [0u8; 26];
        for (i, c) in out.iter_mut().enumerate() {
            let shift = 125 - 5 * i as u32;
            *c = ALPHABET[((self.0 >> shift) & 0x1f) as usize];
        }
        // ALPHABET is ASCII, so this cannot fail.
        f.write_str(std::str::from_utf8(&out).map_err(|_| fmt::Error)?)
    }
}

impl FromStr for Ulid {
    type Err = UlidError;

    /// Strict parsing like Go's `ulid.ParseStrict`: exactly 26 characters of the canonical
    /// alphabet (either case) and no overflow in the first one.
    fn from_str(s: &str) -> Result<Self, UlidError> {
        let bytes = s.as_bytes();
        if bytes.len() != 26 {
            return Err(UlidError(s.to_string()));
        }
        let mut v: u128 = 0;
        for (i, &b) in bytes.iter().enumerate() {
            let d = ALPHABET
                .iter()
                .position(|&a| a == b.to_ascii_uppercase())
                .ok_or_else(|| UlidError(s.to_string()))? as u128;
            if i == 0 && d > 7 {
                return Err(UlidError(s.to_string()));
            }
            v = (v << 5) | d;
        }
        Ok(Self(v))
    }
}

fn random_80() -> u128 {
    let mut buf = [0u8; 16];
    let ok = std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut buf[6..]))
        .is_ok();
    if ok {
        return u128::from_be_bytes(buf);
    }
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let seed = nanos ^ (u128::from(std::process::id()) << 64);
    let c = COUNTER.fetch_add(1, Ordering::Relaxed);
    let hi = xxhash_rust::xxh3::xxh3_64_with_seed(&seed.to_be_bytes(), c);
    let lo = xxhash_rust::xxh3::xxh3_64_with_seed(&seed.to_le_bytes(), !c);
    (u128::from(hi) << 64) | u128::from(lo)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_matches_a_promtool_ulid() {
        // Written by promtool 2.42 on this machine.
        let s = "01M827DMG4XHMT31HS5KJK0VWH";
        let u: Ulid = s.parse().unwrap();
        assert_eq!(u.to_string(), s);
        let lower: Ulid = s.to_ascii_lowercase().parse().unwrap();
        assert_eq!(lower, u);
    }

    #[test]
    fn new_ulids_are_valid_unique_and_time_stamped() {
        let a = Ulid::new();
        let b = Ulid::new();
        assert_ne!(a, b);
        let s = a.to_string();
        assert_eq!(s.len(), 26);
        assert!(s.as_bytes()[0] <= b'7');
        assert_eq!(s.parse::<Ulid>().unwrap(), a);
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_millis() as u64;
        assert!(now - a.timestamp_ms() < 60_000);
    }

    #[test]
    fn rejects_bad_strings() {
        for s in [
            "",
            "01M827DMG4XHMT31HS5KJK0VW",
            "81M827DMG4XHMT31HS5KJK0VWH",
            "01M827DMG4XHMT31HS5KJK0VWU",
        ] {
            assert!(s.parse::<Ulid>().is_err(), "{s}");
        }
        assert_eq!(Ulid(u128::MAX).to_string(), "7ZZZZZZZZZZZZZZZZZZZZZZZZZ");
    }
}
