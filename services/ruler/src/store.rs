//! Where rule groups live: the bucket (read-write, Mimir/Cortex's layout) or a local directory
//! (read-only, `--ruler-storage.backend=local`).
//!
//! In the bucket each group is one object, `rules/<tenant>/<ns>/<group>`, where `<ns>` and
//! `<group>` are the namespace and group names in URL-safe base64 with padding (Go's
//! `base64.URLEncoding`, as Cortex and Mimir write them), so any name — slashes, dots,
//! spaces — is one path segment that cannot escape the tenant's prefix. The object holds the
//! group as rule-file YAML (one group, no `groups:` wrapper). A key that does not decode, or
//! an object that does not parse, is logged and skipped: one damaged object never hides the
//! tenant's other groups.
//!
//! The local directory is Mimir's: `<dir>/<tenant>/<namespace>` files, each a Prometheus rule
//! file (`groups:`).

use std::path::PathBuf;

use async_trait::async_trait;
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE;
use bytes::Bytes;
use norn_storage::Bucket;
use norn_storage::layout::RULES_DIR;

use crate::rulefmt::{RuleFile, RuleGroup};

/// Why a rule store operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("rule storage: {0}")]
    Bucket(#[from] norn_storage::StorageError),
    #[error("rule storage: reading {path}: {message}")]
    Local { path: String, message: String },
    #[error(
        "rule storage is read-only (ruler-storage.backend=local): change the rule files instead"
    )]
    ReadOnly,
}

impl StoreError {
    pub fn kind(&self) -> norn_model::ErrorKind {
        match self {
            StoreError::Bucket(e) => e.kind(),
            StoreError::Local { .. } => norn_model::ErrorKind::Internal,
            StoreError::ReadOnly => norn_model::ErrorKind::BadData,
        }
    }
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// One stored group and the namespace it belongs to.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredGroup {
    pub namespace: String,
    pub group: RuleGroup,
}

/// Rule groups per tenant. Listings are sorted by namespace, then group name.
#[async_trait]
pub trait RuleStore: Send + Sync {
    /// Tenants with at least one group.
    async fn tenants(&self) -> Result<Vec<String>>;
    /// Every group of `tenant`.
    async fn groups(&self, tenant: &str) -> Result<Vec<StoredGroup>>;
    /// Stores (creates or replaces) one group.
    async fn put(&self, tenant: &str, namespace: &str, group: &RuleGroup) -> Result<()>;
    /// Deletes one group; `false` when there was none.
    async fn delete_group(&self, tenant: &str, namespace: &str, group: &str) -> Result<bool>;
    /// Deletes every group of a namespace; how many there were.
    async fn delete_namespace(&self, tenant: &str, namespace: &str) -> Result<usize>;
}

/// A name as one key segment (URL-safe base64, padded).
pub fn encode_name(name: &str) -> String {
    URL_SAFE.encode(name.as_bytes())
}

/// The name a key segment encodes, if it is one.
pub fn decode_name(segment: &str) -> Option<String> {
    let bytes = URL_SAFE.decode(segment.as_bytes()).ok()?;
    String::from_utf8(bytes).ok()
}

/// `rules/<tenant>/`.
pub fn tenant_prefix(tenant: &str) -> String {
    format!("{RULES_DIR}/{tenant}/")
}

/// `rules/<tenant>/<b64 ns>/<b64 group>`.
pub fn group_key(tenant: &str, namespace: &str, group: &str) -> String {
    format!(
        "{RULES_DIR}/{tenant}/{}/{}",
        encode_name(namespace),
        encode_name(group)
    )
}

/// The namespace and group a key names, if it is a group key of `tenant`.
pub fn parse_group_key(tenant: &str, key: &str) -> Option<(String, String)> {
    let rest = key.strip_prefix(&tenant_prefix(tenant))?;
    let (ns, group) = rest.split_once('/')?;
    if group.contains('/') {
        return None;
    }
    Some((decode_name(ns)?, decode_name(group)?))
}

/// Groups in the bucket.
pub struct BucketRuleStore {
    bucket: Bucket,
}

impl BucketRuleStore {
    pub fn new(bucket: Bucket) -> Self {
        Self { bucket }
    }
}

#[async_trait]
impl RuleStore for BucketRuleStore {
    async fn tenants(&self) -> Result<Vec<String>> {
        Ok(self.bucket.list_dirs(RULES_DIR).await?)
    }

    async fn groups(&self, tenant: &str) -> Result<Vec<StoredGroup>> {
        let mut out = Vec::new();
        for obj in self.bucket.list(&tenant_prefix(tenant)).await? {
            let Some((namespace, name)) = parse_group_key(tenant, &obj.key) else {
                tracing::warn!(tenant, key = %obj.key, "skipping an object that is not a rule group key");
                continue;
            };
            let data = match self.bucket.get(&obj.key).await {
                Ok(d) => d,
                // Deleted between the listing and the read.
                Err(e) if e.is_not_found() => continue,
                Err(e) => return Err(e.into()),
            };
            match std::str::from_utf8(&data)
                .map_err(|e| e.to_string())
                .and_then(RuleGroup::from_yaml)
            {
                Ok(group) if group.name == name => out.push(StoredGroup { namespace, group }),
                Ok(group) => {
                    tracing::warn!(tenant, key = %obj.key, stored = %group.name, "skipping a rule group whose name does not match its key")
                }
                Err(e) => {
                    tracing::warn!(tenant, key = %obj.key, error = %e, "skipping a rule group that does not parse")
                }
            }
        }
        sort(&mut out);
        Ok(out)
    }

    async fn put(&self, tenant: &str, namespace: &str, group: &RuleGroup) -> Result<()> {
        let key = group_key(tenant, namespace, &group.name);
        Ok(self.bucket.put(&key, Bytes::from(group.to_yaml())).await?)
    }

    async fn delete_group(&self, tenant: &str, namespace: &str, group: &str) -> Result<bool> {
        let key = group_key(tenant, namespace, group);
        if !self.bucket.exists(&key).await? {
            return Ok(false);
        }
        self.bucket.delete(&key).await?;
        Ok(true)
    }

    async fn delete_namespace(&self, tenant: &str, namespace: &str) -> Result<usize> {
        let prefix = format!("{}{}/", tenant_prefix(tenant), encode_name(namespace));
        let objects = self.bucket.list(&prefix).await?;
        for o in &objects {
            self.bucket.delete(&o.key).await?;
        }
        Ok(objects.len())
    }
}

fn sort(groups: &mut [StoredGroup]) {
    groups.sort_by(|a, b| {
        (a.namespace.as_str(), a.group.name.as_str())
            .cmp(&(b.namespace.as_str(), b.group.name.as_str()))
    });
}

/// Rule files in a local directory, read-only: `<dir>/<tenant>/<namespace>`.
pub struct LocalRuleStore {
    dir: PathBuf,
}

impl LocalRuleStore {
    pub fn new(dir: PathBuf) -> Self {
        Self { dir }
    }

    fn read_dir_names(&self, path: &std::path::Path, dirs: bool) -> Result<Vec<String>> {
        let entries = match std::fs::read_dir(path) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => {
                return Err(StoreError::Local {
                    path: path.display().to_string(),
                    message: e.to_string(),
                });
            }
        };
        let mut names: Vec<String> = entries
            .flatten()
            .filter(|e| e.file_type().is_ok_and(|t| t.is_dir() == dirs))
            .filter_map(|e| e.file_name().into_string().ok())
            .filter(|n| !n.starts_with('.'))
            .collect();
        names.sort();
        Ok(names)
    }
}

#[async_trait]
impl RuleStore for LocalRuleStore {
    async fn tenants(&self) -> Result<Vec<String>> {
        self.read_dir_names(&self.dir, true)
    }

    async fn groups(&self, tenant: &str) -> Result<Vec<StoredGroup>> {
        let tdir = self.dir.join(tenant);
        let mut out = Vec::new();
        for ns in self.read_dir_names(&tdir, false)? {
            let path = tdir.join(&ns);
            let text = std::fs::read_to_string(&path).map_err(|e| StoreError::Local {
                path: path.display().to_string(),
                message: e.to_string(),
            })?;
            match serde_yaml::from_str::<RuleFile>(&text) {
                Ok(f) => out.extend(f.groups.into_iter().map(|group| StoredGroup {
                    namespace: ns.clone(),
                    group,
                })),
                Err(e) => {
                    tracing::warn!(tenant, file = %path.display(), error = %e, "skipping a rule file that does not parse")
                }
            }
        }
        sort(&mut out);
        Ok(out)
    }

    async fn put(&self, _: &str, _: &str, _: &RuleGroup) -> Result<()> {
        Err(StoreError::ReadOnly)
    }

    async fn delete_group(&self, _: &str, _: &str, _: &str) -> Result<bool> {
        Err(StoreError::ReadOnly)
    }

    async fn delete_namespace(&self, _: &str, _: &str) -> Result<usize> {
        Err(StoreError::ReadOnly)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn group(name: &str) -> RuleGroup {
        RuleGroup::from_yaml(&format!("name: {name:?}\nrules: [{{record: r, expr: up}}]")).unwrap()
    }

    #[test]
    fn keys_are_mimirs() {
        // Go's base64.URLEncoding of "ns/with slash" and "g1".
        assert_eq!(encode_name("ns/with slash"), "bnMvd2l0aCBzbGFzaA==");
        assert_eq!(encode_name("g1"), "ZzE=");
        assert_eq!(encode_name("??>"), "Pz8-");
        assert_eq!(
            group_key("t1", "ns/with slash", "g1"),
            "rules/t1/bnMvd2l0aCBzbGFzaA==/ZzE="
        );
        assert_eq!(
            parse_group_key("t1", "rules/t1/bnMvd2l0aCBzbGFzaA==/ZzE="),
            Some(("ns/with slash".into(), "g1".into()))
        );
        assert_eq!(parse_group_key("t2", "rules/t1/ZzE=/ZzE="), None);
        assert_eq!(parse_group_key("t1", "rules/t1/not base64!/ZzE="), None);
        assert_eq!(decode_name(&encode_name("../..")).as_deref(), Some("../.."));
    }

    #[tokio::test]
    async fn bucket_store_round_trips_per_tenant() {
        let s = BucketRuleStore::new(Bucket::in_memory());
        s.put("a", "ns/1", &group("g.1")).await.unwrap();
        s.put("a", "ns/1", &group("g2")).await.unwrap();
        s.put("a", "other", &group("g1")).await.unwrap();
        s.put("b", "ns/1", &group("g1")).await.unwrap();
        assert_eq!(s.tenants().await.unwrap(), ["a", "b"]);
        let got: Vec<(String, String)> = s
            .groups("a")
            .await
            .unwrap()
            .into_iter()
            .map(|g| (g.namespace, g.group.name))
            .collect();
        assert_eq!(
            got,
            [
                ("ns/1".into(), "g.1".into()),
                ("ns/1".into(), "g2".into()),
                ("other".into(), "g1".into())
            ]
        );
        assert!(s.delete_group("a", "ns/1", "g2").await.unwrap());
        assert!(!s.delete_group("a", "ns/1", "g2").await.unwrap());
        assert_eq!(s.delete_namespace("a", "ns/1").await.unwrap(), 1);
        assert_eq!(s.groups("a").await.unwrap().len(), 1);
        assert_eq!(s.groups("b").await.unwrap().len(), 1, "b untouched");
    }

    #[tokio::test]
    async fn local_store_reads_rule_files_and_refuses_writes() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("t1")).unwrap();
        std::fs::write(
            dir.path().join("t1/ns1.yaml"),
            "groups:\n- name: g1\n  rules:\n  - record: r\n    expr: up\n",
        )
        .unwrap();
        let s = LocalRuleStore::new(dir.path().to_path_buf());
        assert_eq!(s.tenants().await.unwrap(), ["t1"]);
        let g = s.groups("t1").await.unwrap();
        assert_eq!(g.len(), 1);
        assert_eq!(g[0].namespace, "ns1.yaml");
        assert!(s.groups("nobody").await.unwrap().is_empty());
        assert!(matches!(
            s.put("t1", "x", &group("g")).await,
            Err(StoreError::ReadOnly)
        ));
    }
}
