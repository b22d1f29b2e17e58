//! Prometheus-style durations (`1h30m`, `5m`, `100ms`, `2d`, `1w`, `1y`) for flags, YAML and
//! API parameters, with serde helpers that read and write that form.

use std::time::Duration;

/// A duration string could not be parsed.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("not a valid duration string: {0:?}")]
pub struct DurationError(pub String);

/// Parses a Prometheus duration: one or more `<integer><unit>` parts, units `ms s m h d w y`,
/// largest first; `0` alone is allowed.
pub fn parse_duration(s: &str) -> Result<Duration, DurationError> {
    let err = || DurationError(s.to_string());
    if s == "0" {
        return Ok(Duration::ZERO);
    }
    if s.is_empty() {
        return Err(err());
    }
    let mut total: u128 = 0;
    let mut rest = s.as_bytes();
    let mut last_unit = u128::MAX;
    while !rest.is_empty() {
        let digits = rest.iter().take_while(|c| c.is_ascii_digit()).count();
        if digits == 0 {
            return Err(err());
        }
        let n: u128 = std::str::from_utf8(&rest[..digits])
            .ok()
            .and_then(|d| d.parse().ok())
            .ok_or_else(err)?;
        rest = &rest[digits..];
        let (unit_ms, len) = match rest {
            [b'm', b's', ..] => (1, 2),
            [b's', ..] => (1000, 1),
            [b'm', ..] => (60_000, 1),
            [b'h', ..] => (3_600_000, 1),
            [b'd', ..] => (86_400_000, 1),
            [b'w', ..] => (7 * 86_400_000, 1),
            [b'y', ..] => (365 * 86_400_000, 1),
            _ => return Err(err()),
        };
        if unit_ms >= last_unit {
            return Err(err());
        }
        last_unit = unit_ms;
        rest = &rest[len..];
        total = total
            .checked_add(n.checked_mul(unit_ms).ok_or_else(err)?)
            .ok_or_else(err)?;
    }
    let ms = u64::try_from(total).map_err(|_| err())?;
    Ok(Duration::from_millis(ms))
}

/// Formats a duration the way Prometheus prints one (`1h30m`, `0s`).
pub fn format_duration(d: Duration) -> String {
    let mut ms = d.as_millis();
    if ms == 0 {
        return "0s".to_string();
    }
    let mut out = String::new();
    for (unit, name) in [
        (365 * 86_400_000u128, "y"),
        (7 * 86_400_000, "w"),
        (86_400_000, "d"),
        (3_600_000, "h"),
        (60_000, "m"),
        (1000, "s"),
        (1, "ms"),
    ] {
        if ms >= unit {
            out.push_str(&format!("{}{}", ms / unit, name));
            ms %= unit;
        }
    }
    out
}

/// `#[serde(with = "norn_model::duration::serde_duration")]` for `Duration` fields written as
/// Prometheus duration strings.
pub mod serde_duration {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&super::format_duration(*d))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Str(String),
            Secs(u64),
        }
        match Raw::deserialize(d)? {
            Raw::Str(s) => super::parse_duration(&s).map_err(serde::de::Error::custom),
            Raw::Secs(n) => Ok(Duration::from_secs(n)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_compound_durations() {
        assert_eq!(parse_duration("1h30m").unwrap(), Duration::from_secs(5400));
        assert_eq!(parse_duration("100ms").unwrap(), Duration::from_millis(100));
        assert_eq!(parse_duration("2d").unwrap(), Duration::from_secs(172_800));
        assert_eq!(parse_duration("0").unwrap(), Duration::ZERO);
        for bad in ["", "5", "m", "1m1h", "1.5h", "-1m", "1x"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn format_round_trips() {
        for s in ["1h30m", "5m", "10s", "2h", "100ms", "1w2d"] {
            assert_eq!(format_duration(parse_duration(s).unwrap()), s);
        }
    }
}
