//! The access file of `--auth.type=tokens`: which secret may do what for which tenants.
//!
//! ```yaml
//! tokens:
//!   - name: team-a-agent          # shown in logs and metrics, never the secret
//!     hash: "sha256:<hex of SHA-256 of the secret>"
//!     tenants: [team-a]
//!     scopes: [write, read]       # write, read, rules, admin
//! ```
//!
//! Only SHA-256 digests are stored: tokens are long random secrets (`norn tools auth token`
//! makes 32 random bytes), for which a slow password hash adds nothing but CPU per request.
//! A presented secret is hashed once and looked up by its digest; the stored digest is then
//! compared in constant time, so the lookup reveals nothing beyond "some entry matches".
//!
//! The file is re-read periodically ([`TokenStore::reload`]); a file that no longer parses
//! keeps the previous set in force (logged and counted), so a typo never locks everyone out
//! or, worse, lets everyone in.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use norn_model::TenantId;
use serde::Deserialize;
use subtle::ConstantTimeEq;

use super::scope::Scope;

/// Why an access file was refused.
#[derive(Debug, thiserror::Error)]
pub enum TokensError {
    #[error("reading {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("parsing the tokens file: {0}")]
    Yaml(#[from] serde_yaml::Error),
    #[error("token {name:?}: {message}")]
    Entry { name: String, message: String },
}

pub type Result<T, E = TokensError> = std::result::Result<T, E>;

/// SHA-256 of `secret` as 32 bytes.
pub fn sha256(secret: &[u8]) -> [u8; 32] {
    let d = ring::digest::digest(&ring::digest::SHA256, secret);
    let mut out = [0u8; 32];
    out.copy_from_slice(d.as_ref());
    out
}

/// `sha256:<hex>` of `secret`: the form the access file stores.
pub fn hash_secret(secret: &str) -> String {
    let mut s = String::with_capacity(7 + 64);
    s.push_str("sha256:");
    for b in sha256(secret.as_bytes()) {
        s.push_str(&format!("{b:02x}"));
    }
    s
}

/// A new secret: `norn_` and 32 bytes from the operating system's CSPRNG, as hex.
pub fn new_secret() -> std::result::Result<String, ring::error::Unspecified> {
    use ring::rand::SecureRandom;
    let mut bytes = [0u8; 32];
    ring::rand::SystemRandom::new().fill(&mut bytes)?;
    let mut s = String::with_capacity(5 + 64);
    s.push_str("norn_");
    for b in bytes {
        s.push_str(&format!("{b:02x}"));
    }
    Ok(s)
}

fn parse_hash(text: &str) -> Option<[u8; 32]> {
    let hex = text.strip_prefix("sha256:")?;
    if hex.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, o) in out.iter_mut().enumerate() {
        *o = u8::from_str_radix(hex.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileDoc {
    #[serde(default)]
    tokens: Vec<FileEntry>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileEntry {
    name: String,
    hash: String,
    #[serde(default)]
    tenants: Vec<String>,
    scopes: Vec<Scope>,
}

/// One token: its name, the tenants it may act for and what it may do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Token {
    pub name: Arc<str>,
    pub tenants: Vec<TenantId>,
    pub scopes: HashSet<Scope>,
}

impl Token {
    pub fn has_any(&self, scopes: &[Scope]) -> bool {
        scopes.iter().any(|s| self.scopes.contains(s))
    }

    pub fn allows_tenant(&self, tenant: &str) -> bool {
        self.tenants.iter().any(|t| t.as_str() == tenant)
    }
}

/// The tokens of one version of the access file, keyed by SHA-256 digest.
#[derive(Debug, Default)]
pub struct TokenSet {
    by_digest: HashMap<[u8; 32], Token>,
}

impl TokenSet {
    /// Parses and validates an access file's text.
    pub fn parse(text: &str) -> Result<Self> {
        let doc: FileDoc = if text.trim().is_empty() {
            FileDoc { tokens: Vec::new() }
        } else {
            serde_yaml::from_str(text)?
        };
        let mut by_digest = HashMap::new();
        let mut names = HashSet::new();
        for e in doc.tokens {
            let bad = |message: String| TokensError::Entry {
                name: e.name.clone(),
                message,
            };
            if e.name.is_empty() {
                return Err(bad("the name is empty".into()));
            }
            if !names.insert(e.name.clone()) {
                return Err(bad("the name is used twice".into()));
            }
            let digest = parse_hash(&e.hash).ok_or_else(|| {
                bad("hash must be \"sha256:\" and 64 hex digits (norn tools auth hash)".into())
            })?;
            if e.scopes.is_empty() {
                return Err(bad("no scopes (write, read, rules, admin)".into()));
            }
            let scopes: HashSet<Scope> = e.scopes.iter().copied().collect();
            let tenants = e
                .tenants
                .iter()
                .map(|t| {
                    if t.contains('|') {
                        return Err(bad(format!(
                            "tenant {t:?}: tenant federation is not supported"
                        )));
                    }
                    TenantId::new(t).map_err(|err| bad(format!("tenant {t:?}: {err}")))
                })
                .collect::<Result<Vec<_>>>()?;
            if tenants.is_empty() && scopes.iter().any(|s| *s != Scope::Admin) {
                return Err(bad(
                    "write, read and rules scopes need at least one tenant".into()
                ));
            }
            let token = Token {
                name: Arc::from(e.name.as_str()),
                tenants,
                scopes,
            };
            if by_digest.insert(digest, token).is_some() {
                return Err(bad("the same hash as another token".into()));
            }
        }
        Ok(Self { by_digest })
    }

    /// The token whose secret is `secret`, if any.
    pub fn lookup(&self, secret: &[u8]) -> Option<&Token> {
        let digest = sha256(secret);
        let (stored, token) = self.by_digest.get_key_value(&digest)?;
        bool::from(stored.ct_eq(&digest)).then_some(token)
    }

    pub fn len(&self) -> usize {
        self.by_digest.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_digest.is_empty()
    }
}

/// The access file and the token set it last parsed into.
#[derive(Debug)]
pub struct TokenStore {
    path: PathBuf,
    current: RwLock<(Arc<TokenSet>, Vec<u8>)>,
}

/// What a [`TokenStore::reload`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reload {
    Unchanged,
    /// The new set is in force; it holds this many tokens.
    Loaded(usize),
}

impl TokenStore {
    /// Loads `path`; an error here (missing or bad file) should stop the process from starting.
    pub fn open(path: &Path) -> Result<Self> {
        let bytes = read(path)?;
        let set = TokenSet::parse(&String::from_utf8_lossy(&bytes))?;
        Ok(Self {
            path: path.to_path_buf(),
            current: RwLock::new((Arc::new(set), bytes)),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The token set in force.
    pub fn current(&self) -> Arc<TokenSet> {
        Arc::clone(&self.current.read().unwrap_or_else(|e| e.into_inner()).0)
    }

    /// Re-reads the file; when its contents changed and parse, they replace the set in force.
    /// On error the previous set stays.
    pub fn reload(&self) -> Result<Reload> {
        let bytes = read(&self.path)?;
        if self.current.read().unwrap_or_else(|e| e.into_inner()).1 == bytes {
            return Ok(Reload::Unchanged);
        }
        let set = TokenSet::parse(&String::from_utf8_lossy(&bytes))?;
        let n = set.len();
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = (Arc::new(set), bytes);
        Ok(Reload::Loaded(n))
    }
}

fn read(path: &Path) -> Result<Vec<u8>> {
    std::fs::read(path).map_err(|source| TokensError::Read {
        path: path.to_path_buf(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn file(entries: &[(&str, &str, &[&str], &[&str])]) -> String {
        let mut s = String::from("tokens:\n");
        for (name, secret, tenants, scopes) in entries {
            s.push_str(&format!(
                "  - name: {name}\n    hash: \"{}\"\n    tenants: [{}]\n    scopes: [{}]\n",
                hash_secret(secret),
                tenants.join(", "),
                scopes.join(", ")
            ));
        }
        s
    }

    #[test]
    fn hashes_like_sha256sum() {
        // printf abc | sha256sum
        assert_eq!(
            hash_secret("abc"),
            "sha256:ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert_eq!(parse_hash(&hash_secret("abc")), Some(sha256(b"abc")));
        assert_eq!(parse_hash("sha256:zz"), None);
        assert_eq!(parse_hash("md5:00"), None);
    }

    #[test]
    fn new_secrets_differ() {
        let (a, b) = (new_secret().unwrap(), new_secret().unwrap());
        assert_ne!(a, b);
        assert_eq!(a.len(), 69);
        assert!(a.starts_with("norn_"));
    }

    #[test]
    fn parses_and_looks_up() {
        let set = TokenSet::parse(&file(&[
            ("a", "secret-a", &["team-a"], &["write", "read"]),
            ("b", "secret-b", &["team-b", "team-c"], &["read"]),
            ("ops", "secret-ops", &[], &["admin"]),
        ]))
        .unwrap();
        assert_eq!(set.len(), 3);
        let a = set.lookup(b"secret-a").unwrap();
        assert_eq!(&*a.name, "a");
        assert!(a.has_any(&[Scope::Write]) && !a.has_any(&[Scope::Admin]));
        assert!(a.allows_tenant("team-a") && !a.allows_tenant("team-b"));
        assert_eq!(set.lookup(b"secret-b").unwrap().tenants.len(), 2);
        assert!(set.lookup(b"secret-ops").unwrap().tenants.is_empty());
        assert!(set.lookup(b"secret-x").is_none());
        assert!(set.lookup(b"").is_none());
        assert!(TokenSet::parse("").unwrap().is_empty());
    }

    #[test]
    fn refuses_bad_files() {
        let h = hash_secret("s");
        for (text, want) in [
            (
                "tokens: [{name: a, hash: \"sha256:00\", tenants: [t], scopes: [read]}]",
                "hash",
            ),
            (
                &format!("tokens: [{{name: a, hash: \"{h}\", tenants: [t], scopes: [fly]}}]"),
                "fly",
            ),
            (
                &format!("tokens: [{{name: a, hash: \"{h}\", tenants: [t], scopes: []}}]"),
                "no scopes",
            ),
            (
                &format!("tokens: [{{name: a, hash: \"{h}\", scopes: [read]}}]"),
                "tenant",
            ),
            (
                &format!(
                    "tokens: [{{name: a, hash: \"{h}\", tenants: [\"a|b\"], scopes: [read]}}]"
                ),
                "federation",
            ),
            (
                &format!(
                    "tokens: [{{name: a, hash: \"{h}\", tenants: [\"a/b\"], scopes: [read]}}]"
                ),
                "a/b",
            ),
            (
                &format!(
                    "tokens: [{{name: a, hash: \"{h}\", tenants: [t], scopes: [read], x: 1}}]"
                ),
                "unknown field",
            ),
            (
                &format!(
                    "tokens: [{{name: a, hash: \"{h}\", tenants: [t], scopes: [read]}}, {{name: a, hash: \"{}\", tenants: [t], scopes: [read]}}]",
                    hash_secret("o")
                ),
                "twice",
            ),
            (
                &format!(
                    "tokens: [{{name: a, hash: \"{h}\", tenants: [t], scopes: [read]}}, {{name: b, hash: \"{h}\", tenants: [t], scopes: [read]}}]"
                ),
                "same hash",
            ),
        ] {
            let err = TokenSet::parse(text).unwrap_err().to_string();
            assert!(err.contains(want), "{text}: {err}");
        }
    }

    #[test]
    fn reload_replaces_or_keeps() {
        let dir = std::env::temp_dir().join(format!("norn-auth-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("tokens.yaml");
        std::fs::write(&path, file(&[("a", "sa", &["t"], &["read"])])).unwrap();
        let store = TokenStore::open(&path).unwrap();
        assert!(store.current().lookup(b"sa").is_some());
        assert_eq!(store.reload().unwrap(), Reload::Unchanged);
        std::fs::write(&path, file(&[("b", "sb", &["t"], &["read"])])).unwrap();
        assert_eq!(store.reload().unwrap(), Reload::Loaded(1));
        assert!(store.current().lookup(b"sa").is_none());
        assert!(store.current().lookup(b"sb").is_some());
        std::fs::write(&path, "tokens: [oops").unwrap();
        assert!(store.reload().is_err());
        assert!(
            store.current().lookup(b"sb").is_some(),
            "a bad file keeps the old set"
        );
        std::fs::remove_file(&path).unwrap();
        assert!(store.reload().is_err());
        assert!(store.current().lookup(b"sb").is_some());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
