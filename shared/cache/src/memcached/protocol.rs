//! The subset of memcached's text protocol the cache speaks: `get <k>...` and `set`.
//!
//! Every reply is read with bounds: a line may not exceed [`MAX_LINE`], a value may not exceed
//! the configured item size, and only keys that were asked for are accepted. A server (or
//! anything answering on its port) that breaks these rules gets a protocol error and its
//! connection is dropped, so a bad reply can cost neither unbounded memory nor a wrong value.

use std::collections::{HashMap, HashSet};

use bytes::Bytes;
use tokio::io::{AsyncBufRead, AsyncBufReadExt, AsyncReadExt};
use xxhash_rust::xxh3::xxh3_128;

use crate::config::MEMCACHED_MAX_KEY_LEN;

/// Longest reply line accepted (a `VALUE` header with a 250-byte key is well below).
pub const MAX_LINE: usize = 1024;
/// memcached reads an expiry above 30 days as an absolute Unix time.
pub const MAX_RELATIVE_EXPIRY_S: u64 = 30 * 24 * 3600;
/// Prefix of keys replaced by their hash.
const HASHED_PREFIX: &str = "norn:h:";

/// What went wrong talking to a server.
#[derive(Debug, thiserror::Error)]
pub enum ProtocolError {
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
    #[error("protocol: {0}")]
    Protocol(String),
    #[error("server error: {0}")]
    Server(String),
}

fn protocol(msg: impl Into<String>) -> ProtocolError {
    ProtocolError::Protocol(msg.into())
}

/// The key sent to memcached for `key`: the key itself when memcached accepts it (1 to 250
/// bytes, no spaces or control characters), else a 128-bit hash of it under a reserved prefix
/// (which a literal key may not use, so the two never collide).
pub fn wire_key(key: &str) -> String {
    let ok = !key.is_empty()
        && key.len() <= MEMCACHED_MAX_KEY_LEN
        && !key.starts_with(HASHED_PREFIX)
        && key.bytes().all(|b| b > b' ' && b != 0x7f);
    if ok {
        key.to_owned()
    } else {
        format!("{HASHED_PREFIX}{:032x}", xxh3_128(key.as_bytes()))
    }
}

/// `get k1 k2 ...\r\n`.
pub fn encode_get(keys: &[&str]) -> Vec<u8> {
    let mut out = Vec::with_capacity(4 + keys.iter().map(|k| k.len() + 1).sum::<usize>() + 2);
    out.extend_from_slice(b"get");
    for k in keys {
        out.push(b' ');
        out.extend_from_slice(k.as_bytes());
    }
    out.extend_from_slice(b"\r\n");
    out
}

/// memcached's `exptime` for a TTL: 0 is "never"; sub-second TTLs round up to one second; a
/// TTL over 30 days becomes an absolute Unix time (memcached's rule).
pub fn expiry(ttl: std::time::Duration, now_unix_s: u64) -> u64 {
    if ttl.is_zero() {
        return 0;
    }
    let secs = ttl
        .as_secs()
        .saturating_add(u64::from(ttl.subsec_nanos() > 0));
    if secs > MAX_RELATIVE_EXPIRY_S {
        now_unix_s.saturating_add(secs).min(u64::from(u32::MAX))
    } else {
        secs
    }
}

/// Appends `set <key> 0 <exptime> <len>\r\n<data>\r\n` to `out`.
pub fn encode_set(out: &mut Vec<u8>, key: &str, exptime: u64, value: &[u8]) {
    out.extend_from_slice(format!("set {key} 0 {exptime} {}\r\n", value.len()).as_bytes());
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

/// Reads one `\r\n`-terminated line (without the terminator), at most [`MAX_LINE`] bytes.
async fn read_line<R: AsyncBufRead + Unpin>(
    r: &mut R,
    line: &mut Vec<u8>,
) -> Result<(), ProtocolError> {
    line.clear();
    loop {
        let buf = r.fill_buf().await?;
        if buf.is_empty() {
            return Err(ProtocolError::Io(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "connection closed mid-reply",
            )));
        }
        let (take, done) = match buf.iter().position(|&b| b == b'\n') {
            Some(i) => (i + 1, true),
            None => (buf.len(), false),
        };
        line.extend_from_slice(&buf[..take]);
        r.consume(take);
        if line.len() > MAX_LINE + 2 {
            return Err(protocol(format!("reply line longer than {MAX_LINE} bytes")));
        }
        if done {
            if !line.ends_with(b"\r\n") {
                return Err(protocol("reply line not terminated by \\r\\n"));
            }
            line.truncate(line.len() - 2);
            return Ok(());
        }
    }
}

/// A line that is an error reply, as an error.
fn error_reply(line: &[u8]) -> Option<ProtocolError> {
    let text = String::from_utf8_lossy(line);
    if let Some(msg) = text.strip_prefix("SERVER_ERROR") {
        Some(ProtocolError::Server(msg.trim().to_owned()))
    } else if let Some(msg) = text.strip_prefix("CLIENT_ERROR") {
        Some(protocol(format!(
            "server refused the command: {}",
            msg.trim()
        )))
    } else if text == "ERROR" {
        Some(protocol("server does not know the command"))
    } else {
        None
    }
}

/// Reads the reply to a `get`: the values of the asked keys that the server holds, by the index
/// `wanted` gives each wire key. Values above `max_item_size` and keys not asked for are
/// protocol errors.
pub async fn read_get_reply<R: AsyncBufRead + Unpin>(
    r: &mut R,
    wanted: &HashMap<&str, usize>,
    max_item_size: usize,
) -> Result<Vec<(usize, Bytes)>, ProtocolError> {
    let mut out = Vec::new();
    let mut answered = HashSet::new();
    let mut line = Vec::with_capacity(128);
    loop {
        read_line(r, &mut line).await?;
        if line == b"END" {
            return Ok(out);
        }
        if let Some(e) = error_reply(&line) {
            return Err(e);
        }
        let text = std::str::from_utf8(&line).map_err(|_| protocol("reply line is not UTF-8"))?;
        let mut parts = text.split(' ');
        let (Some("VALUE"), Some(key), Some(_flags), Some(len)) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(protocol(format!("unexpected reply line {text:?}")));
        };
        let len: usize = len
            .parse()
            .map_err(|_| protocol(format!("bad value length in {text:?}")))?;
        if len > max_item_size {
            return Err(protocol(format!(
                "value of {len} bytes announced, above the {max_item_size}-byte item bound"
            )));
        }
        let &index = wanted
            .get(key)
            .ok_or_else(|| protocol(format!("value for a key not asked for: {key:?}")))?;
        // Each key at most once: a reply can never hold more than was asked for.
        if !answered.insert(index) {
            return Err(protocol(format!("value for key {key:?} sent twice")));
        }
        let mut data = vec![0u8; len + 2];
        r.read_exact(&mut data).await?;
        if !data.ends_with(b"\r\n") {
            return Err(protocol("value not terminated by \\r\\n"));
        }
        data.truncate(len);
        out.push((index, Bytes::from(data)));
    }
}

/// Reads the reply to one `set`: `Ok(true)` stored, `Ok(false)` not stored (memcached's
/// `NOT_STORED`, e.g. under memory pressure with eviction disabled).
pub async fn read_set_reply<R: AsyncBufRead + Unpin>(r: &mut R) -> Result<bool, ProtocolError> {
    let mut line = Vec::with_capacity(32);
    read_line(r, &mut line).await?;
    match line.as_slice() {
        b"STORED" => Ok(true),
        b"NOT_STORED" => Ok(false),
        other => Err(error_reply(other).unwrap_or_else(|| {
            protocol(format!(
                "unexpected reply to set: {:?}",
                String::from_utf8_lossy(other)
            ))
        })),
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn keys_memcached_refuses_are_hashed() {
        assert_eq!(wire_key("tenant:postings:abc"), "tenant:postings:abc");
        let long = "x".repeat(251);
        for bad in [
            long.as_str(),
            "has space",
            "ctl\u{1}",
            "",
            "norn:h:literal",
            "tab\t",
        ] {
            let w = wire_key(bad);
            assert!(
                w.starts_with(HASHED_PREFIX) && w.len() == HASHED_PREFIX.len() + 32,
                "{w}"
            );
            assert_eq!(w, wire_key(bad), "stable");
        }
        assert_ne!(wire_key(&"x".repeat(300)), wire_key(&"x".repeat(301)));
        assert_eq!(wire_key(&"y".repeat(250)), "y".repeat(250));
    }

    #[test]
    fn expiry_follows_memcached_rules() {
        assert_eq!(expiry(Duration::ZERO, 1000), 0);
        assert_eq!(expiry(Duration::from_millis(10), 1000), 1);
        assert_eq!(expiry(Duration::from_secs(60), 1000), 60);
        assert_eq!(
            expiry(Duration::from_secs(31 * 24 * 3600), 1000),
            1000 + 31 * 24 * 3600
        );
        assert_eq!(expiry(Duration::MAX, 1000), u64::from(u32::MAX));
    }

    #[test]
    fn commands_encode() {
        assert_eq!(encode_get(&["a", "b"]), b"get a b\r\n");
        let mut out = Vec::new();
        encode_set(&mut out, "k", 5, b"xy");
        assert_eq!(out, b"set k 0 5 2\r\nxy\r\n");
    }

    async fn get(reply: &[u8], max: usize) -> Result<Vec<(usize, Bytes)>, ProtocolError> {
        let wanted: HashMap<&str, usize> = [("a", 0), ("b", 1)].into_iter().collect();
        let mut r = reply;
        read_get_reply(&mut r, &wanted, max).await
    }

    #[tokio::test]
    async fn get_replies_parse_within_bounds() {
        let got = get(b"VALUE a 0 3\r\nx\r\n\r\nVALUE b 0 0 77\r\n\r\nEND\r\n", 10)
            .await
            .unwrap();
        assert_eq!(got, [(0, Bytes::from_static(b"x\r\n")), (1, Bytes::new())]);
        for (reply, want) in [
            (&b"VALUE a 0 11\r\n"[..], "above"),
            (b"VALUE zz 0 1\r\nx\r\nEND\r\n", "not asked"),
            (b"VALUE a 0 1\r\nx\r\nVALUE a 0 1\r\nx\r\nEND\r\n", "twice"),
            (b"VALUE a 0 1\r\nxyEND\r\n", "terminated"),
            (b"VALUE a 0 -1\r\n", "length"),
            (b"SERVER_ERROR out of memory\r\n", "out of memory"),
            (b"ERROR\r\n", "command"),
            (b"HELLO\r\n", "unexpected"),
            (b"VALUE a 0 1\r\nx", "i/o"),
            (b"END", "closed mid-reply"),
        ] {
            let err = get(reply, 10).await.unwrap_err().to_string();
            assert!(
                err.contains(want),
                "{:?}: {err}",
                String::from_utf8_lossy(reply)
            );
        }
        let long = vec![b'V'; 5000];
        let err = get(&long, 10).await.unwrap_err().to_string();
        assert!(err.contains("longer"), "{err}");
    }

    #[tokio::test]
    async fn set_replies_parse() {
        assert!(read_set_reply(&mut &b"STORED\r\n"[..]).await.unwrap());
        assert!(!read_set_reply(&mut &b"NOT_STORED\r\n"[..]).await.unwrap());
        let err = read_set_reply(&mut &b"SERVER_ERROR object too large for cache\r\n"[..])
            .await
            .unwrap_err();
        assert!(matches!(err, ProtocolError::Server(_)), "{err}");
    }
}
