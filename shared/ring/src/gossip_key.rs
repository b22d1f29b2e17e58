//! The gossip encryption key (`--memberlist.encryption-key-path`): every UDP datagram and
//! TCP frame of memberlist is sealed with AES-256-GCM, so a node without the key can neither
//! read the cluster's state nor join it, and a forged or altered packet is dropped (and
//! counted) rather than merged into the ring.
//!
//! Mimir has no such setting (its memberlist can be wrapped in TLS instead); hashicorp
//! memberlist's `SecretKey` is the model: the key file holds 32 random bytes in base64
//! (`openssl rand -base64 32`).
//!
//! Sealed packet: `[version 1][12-byte random nonce][ciphertext][16-byte tag]`. Random nonces
//! are safe for far more packets than a cluster sends in a key's lifetime (2^32 per key is
//! the usual bound, about 136 years at one packet per millisecond).

use std::path::Path;

use base64::Engine as _;
use ring::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use ring::rand::{SecureRandom, SystemRandom};

const VERSION: u8 = 1;
const AAD: &[u8] = b"norn-memberlist-v1";
/// Bytes a sealed packet has beyond its plain text.
pub const OVERHEAD: usize = 1 + NONCE_LEN + 16;

/// The key file is unusable.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("reading the memberlist encryption key {path}: {source}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "the memberlist encryption key {path} must hold 32 bytes in base64 (e.g. `openssl rand -base64 32`): {msg}"
    )]
    Invalid { path: String, msg: String },
}

/// The gossip key, ready to seal and open packets.
pub struct GossipKey {
    key: LessSafeKey,
    rng: SystemRandom,
}

impl std::fmt::Debug for GossipKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("GossipKey(********)")
    }
}

impl GossipKey {
    /// Reads a key file: 32 bytes in base64 (surrounding white space ignored).
    pub fn from_file(path: &Path) -> Result<GossipKey, KeyError> {
        let shown = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| KeyError::Read {
            path: shown.clone(),
            source,
        })?;
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(text.trim())
            .map_err(|e| KeyError::Invalid {
                path: shown.clone(),
                msg: e.to_string(),
            })?;
        Self::from_bytes(&bytes).map_err(|msg| KeyError::Invalid { path: shown, msg })
    }

    /// A key from its 32 bytes.
    pub fn from_bytes(bytes: &[u8]) -> Result<GossipKey, String> {
        if bytes.len() != 32 {
            return Err(format!("got {} bytes", bytes.len()));
        }
        let key = UnboundKey::new(&AES_256_GCM, bytes).map_err(|_| "rejected by AES-256-GCM")?;
        Ok(GossipKey {
            key: LessSafeKey::new(key),
            rng: SystemRandom::new(),
        })
    }

    /// Seals `plain`; `None` only if the system RNG fails.
    pub fn seal(&self, plain: &[u8]) -> Option<Vec<u8>> {
        let mut nonce = [0u8; NONCE_LEN];
        self.rng.fill(&mut nonce).ok()?;
        let mut out = Vec::with_capacity(plain.len() + OVERHEAD);
        out.push(VERSION);
        out.extend_from_slice(&nonce);
        let mut body = plain.to_vec();
        self.key
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(AAD),
                &mut body,
            )
            .ok()?;
        out.extend_from_slice(&body);
        Some(out)
    }

    /// Opens a sealed packet; `None` if it is not one sealed with this key (wrong key,
    /// altered, truncated, plain text).
    pub fn open(&self, sealed: &[u8]) -> Option<Vec<u8>> {
        if sealed.len() < OVERHEAD || sealed[0] != VERSION {
            return None;
        }
        let nonce = Nonce::try_assume_unique_for_key(&sealed[1..1 + NONCE_LEN]).ok()?;
        let mut body = sealed[1 + NONCE_LEN..].to_vec();
        let plain = self
            .key
            .open_in_place(nonce, Aad::from(AAD), &mut body)
            .ok()?;
        Some(plain.to_vec())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seals_opens_and_refuses_other_keys_and_tampering() {
        let a = GossipKey::from_bytes(&[7u8; 32]).unwrap();
        let b = GossipKey::from_bytes(&[8u8; 32]).unwrap();
        let sealed = a.seal(b"hello gossip").unwrap();
        assert_eq!(sealed.len(), b"hello gossip".len() + OVERHEAD);
        assert_eq!(a.open(&sealed).unwrap(), b"hello gossip");
        assert_eq!(b.open(&sealed), None);
        let mut tampered = sealed.clone();
        *tampered.last_mut().unwrap() ^= 1;
        assert_eq!(a.open(&tampered), None);
        assert_eq!(a.open(b"plain text packet that is long enough"), None);
        assert_eq!(a.open(&[]), None);
        assert!(GossipKey::from_bytes(&[1u8; 16]).is_err());
    }

    #[test]
    fn key_file_must_be_32_base64_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let good = dir.path().join("good");
        std::fs::write(
            &good,
            format!(
                "{}\n",
                base64::engine::general_purpose::STANDARD.encode([3u8; 32])
            ),
        )
        .unwrap();
        assert!(GossipKey::from_file(&good).is_ok());
        let short = dir.path().join("short");
        std::fs::write(&short, "c2hvcnQ=").unwrap();
        let e = GossipKey::from_file(&short).unwrap_err().to_string();
        assert!(e.contains("32 bytes"), "{e}");
        let bad = dir.path().join("bad");
        std::fs::write(&bad, "not base64 !!").unwrap();
        assert!(GossipKey::from_file(&bad).is_err());
        assert!(GossipKey::from_file(&dir.path().join("missing")).is_err());
    }
}
