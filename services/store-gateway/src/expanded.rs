//! Expanded postings: the series refs a set of matchers selects in one block, cached in the
//! index cache under a hash of the matchers (Mimir's expanded postings cache). A repeated
//! query then skips resolving its matchers against the postings table, fetching and decoding
//! each matcher's postings lists and intersecting them: one lookup per block instead.
//!
//! The value is the refs (ascending, `u32` little endian) followed by their CRC32C: a value
//! damaged in the cache fails its check and is a miss, as every cached value of the
//! store-gateway is.

use bytes::{BufMut, Bytes, BytesMut};
use norn_model::Matcher;
use xxhash_rust::xxh3::xxh3_128;

use crate::fetch::BlockFetcher;

impl BlockFetcher {
    /// The cache key of `matchers` in this block. The matchers' order does not matter;
    /// each is length-prefixed, so no two sets share a text.
    pub fn expanded_key(&self, matchers: &[Matcher]) -> String {
        let mut parts: Vec<String> = matchers
            .iter()
            .map(|m| {
                format!(
                    "{}:{}{}{}:{}",
                    m.name.len(),
                    m.name,
                    m.kind.as_str(),
                    m.value.len(),
                    m.value
                )
            })
            .collect();
        parts.sort_unstable();
        let text = parts.join("\n");
        format!(
            "X:{}:{}:{:032x}",
            self.tenant,
            self.id,
            xxh3_128(text.as_bytes())
        )
    }

    /// The refs cached under `key`, if any and intact.
    pub async fn expanded_postings(&self, key: &str) -> Option<Vec<u32>> {
        let key = key.to_string();
        let mut hits = self.cached("index", std::slice::from_ref(&key)).await;
        hits.remove(&key).and_then(|b| decode(&b))
    }

    /// Caches `refs` under `key`; a list of more than a wide read's series only into spare
    /// room, like the series entries it leads to.
    pub async fn store_expanded_postings(&self, key: String, refs: &[u32]) {
        let wide = crate::fetch::is_wide_read(refs.len());
        Self::store(&self.caches.index, vec![(key, encode(refs))], wide).await;
    }
}

fn encode(refs: &[u32]) -> Bytes {
    let mut b = BytesMut::with_capacity(refs.len() * 4 + 4);
    for &r in refs {
        b.put_u32_le(r);
    }
    let crc = crc32c::crc32c(&b);
    b.put_u32_le(crc);
    b.freeze()
}

fn decode(b: &[u8]) -> Option<Vec<u32>> {
    if b.len() < 4 || !b.len().is_multiple_of(4) {
        return None;
    }
    let (body, crc) = b.split_at(b.len() - 4);
    if crc32c::crc32c(body).to_le_bytes() != crc {
        return None;
    }
    let refs: Vec<u32> = body
        .chunks_exact(4)
        .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    refs.windows(2).all(|w| w[0] < w[1]).then_some(refs)
}

#[cfg(test)]
mod tests {
    use super::*;
    use norn_model::MatchType;

    #[test]
    fn round_trip_and_damage() {
        for refs in [vec![], vec![7], vec![1, 5, 9, u32::MAX]] {
            assert_eq!(decode(&encode(&refs)), Some(refs));
        }
        let good = encode(&[1, 2, 3]);
        for i in 0..good.len() {
            let mut bad = good.to_vec();
            bad[i] ^= 0x10;
            assert_eq!(decode(&bad), None, "byte {i} flipped");
        }
        assert_eq!(decode(&good[..good.len() - 1]), None);
        assert_eq!(decode(&[]), None);
        // Intact but not ascending: not something this module wrote.
        let mut body = BytesMut::new();
        body.put_u32_le(5);
        body.put_u32_le(5);
        let crc = crc32c::crc32c(&body);
        body.put_u32_le(crc);
        assert_eq!(decode(&body), None);
    }

    #[test]
    fn keys_ignore_order_and_do_not_run_together() {
        let f = crate::testutil::fetcher("t", "B");
        let m = |n: &str, k, v: &str| Matcher::new(k, n, v).unwrap();
        let a = m("job", MatchType::Equal, "api");
        let b = m("code", MatchType::Regex, "5..");
        assert_eq!(
            f.expanded_key(&[a.clone(), b.clone()]),
            f.expanded_key(&[b.clone(), a.clone()])
        );
        assert_ne!(
            f.expanded_key(std::slice::from_ref(&a)),
            f.expanded_key(&[b])
        );
        // "a" = "b=c" and "a=b" = "c" must not share a key.
        assert_ne!(
            f.expanded_key(&[m("a", MatchType::Equal, "b=c")]),
            f.expanded_key(&[m("a=b", MatchType::Equal, "c")])
        );
        assert!(f.expanded_key(&[a]).starts_with("X:t:B:"));
    }
}
