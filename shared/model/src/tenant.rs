//! Tenant ids (`X-Scope-OrgID`), validated with Mimir's rules.

use std::fmt;
use std::sync::Arc;

/// Header that carries the tenant id.
pub const ORG_ID_HEADER: &str = "X-Scope-OrgID";

/// The tenant every request belongs to when multitenancy is disabled.
pub const ANONYMOUS: &str = "anonymous";

const MAX_TENANT_ID_LEN: usize = 150;

/// Separates the tenants of a federated read (`X-Scope-OrgID: a|b`, Mimir's tenant
/// federation). It is no tenant id character, so a federated id never names a real tenant.
pub const TENANT_SEPARATOR: char = '|';

/// Names no tenant may take, because the bucket (or Mimir) uses them at the top level
/// beside the tenants' directories: `rules/` holds every tenant's rule groups (a tenant named
/// `rules` would ship its blocks into it, and `list_tenants` skips it); `lock` is the lock file
/// beside the tenants' directories in the ingester's TSDB directory (a tenant of that name
/// could never open its head); `__mimir_cluster` is Mimir's own reserved id. `norn_storage::layout` checks that each of its
/// top-level names is here.
pub const RESERVED_TENANT_IDS: &[&str] = &["rules", "lock", "__mimir_cluster"];

/// Prefix reserved for top-level names Norn or Mimir may add later (`__mimir_cluster` is one);
/// a tenant id starting with it is refused.
pub const RESERVED_TENANT_PREFIX: &str = "__";

/// Why a tenant id was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TenantError {
    #[error("no org id")]
    Missing,
    #[error("tenant ID is too long: max {MAX_TENANT_ID_LEN} characters")]
    TooLong,
    #[error("tenant ID '{0}' contains unsupported character '{1}'")]
    BadCharacter(String, char),
    #[error("tenant ID is '.' or '..'")]
    Dots,
    #[error(
        "tenant ID '{0}' is reserved: the bucket uses such names beside the tenants (rule groups under 'rules/', and names starting with '__')"
    )]
    Reserved(String),
}

impl TenantError {
    /// No tenant at all is "who are you?" (401); a malformed one is bad data (400).
    pub fn kind(&self) -> crate::ErrorKind {
        match self {
            TenantError::Missing => crate::ErrorKind::Unauthorized,
            _ => crate::ErrorKind::BadData,
        }
    }
}

/// A validated tenant id. Cheap to clone.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TenantId(Arc<str>);

impl TenantId {
    /// Validates a tenant id: 1–150 characters from `[a-zA-Z0-9!-_.*'()]`, not `.` or `..`
    /// (Mimir's rules, so ids are safe as path segments), and not one of the
    /// [`RESERVED_TENANT_IDS`] or starting with [`RESERVED_TENANT_PREFIX`].
    pub fn new(id: &str) -> Result<Self, TenantError> {
        if id.is_empty() {
            return Err(TenantError::Missing);
        }
        if id.len() > MAX_TENANT_ID_LEN {
            return Err(TenantError::TooLong);
        }
        if let Some(c) = id.chars().find(|c| !is_allowed(*c)) {
            return Err(TenantError::BadCharacter(id.to_string(), c));
        }
        if id == "." || id == ".." {
            return Err(TenantError::Dots);
        }
        if RESERVED_TENANT_IDS.contains(&id) || id.starts_with(RESERVED_TENANT_PREFIX) {
            return Err(TenantError::Reserved(id.to_string()));
        }
        Ok(Self(Arc::from(id)))
    }

    /// The anonymous tenant used when multitenancy is off.
    pub fn anonymous() -> Self {
        Self(Arc::from(ANONYMOUS))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The id of a read over several tenants (tenant federation): their ids sorted, each
    /// once, joined by [`TENANT_SEPARATOR`]. One tenant is that tenant's own id; none is
    /// `None`. A federated id only ever names a read: it is the identity of the read's queue,
    /// cache entries and limits, and storage is always asked per member
    /// ([`members`](Self::members)).
    pub fn federated(ids: impl IntoIterator<Item = TenantId>) -> Option<Self> {
        let mut ids: Vec<TenantId> = ids.into_iter().collect();
        ids.sort();
        ids.dedup();
        match ids.len() {
            0 => None,
            1 => ids.pop(),
            _ => {
                let joined: Vec<&str> = ids.iter().map(TenantId::as_str).collect();
                Some(Self(Arc::from(
                    joined.join(&TENANT_SEPARATOR.to_string()).as_str(),
                )))
            }
        }
    }

    /// Whether this id names several tenants (see [`federated`](Self::federated)).
    pub fn is_federated(&self) -> bool {
        self.0.contains(TENANT_SEPARATOR)
    }

    /// The tenants this id names: itself, or each member of a federated read.
    pub fn members(&self) -> Vec<TenantId> {
        if !self.is_federated() {
            return vec![self.clone()];
        }
        self.0
            .split(TENANT_SEPARATOR)
            .map(|id| Self(Arc::from(id)))
            .collect()
    }
}

fn is_allowed(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '!' | '-' | '_' | '.' | '*' | '\'' | '(' | ')')
}

impl fmt::Display for TenantId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn federated_ids_are_sorted_unique_and_split_back() {
        let t = |s: &str| TenantId::new(s).unwrap();
        let f = TenantId::federated([t("b"), t("a"), t("b")]).unwrap();
        assert_eq!(f.as_str(), "a|b");
        assert!(f.is_federated());
        assert_eq!(f.members(), [t("a"), t("b")]);
        let one = TenantId::federated([t("a"), t("a")]).unwrap();
        assert_eq!(one, t("a"));
        assert!(!one.is_federated());
        assert_eq!(one.members(), [t("a")]);
        assert!(TenantId::federated([]).is_none());
        // No real tenant can take a federated id.
        assert!(TenantId::new("a|b").is_err());
    }

    #[test]
    fn accepts_mimir_charset() {
        assert!(TenantId::new("team-a_1.prod(x)'*!").is_ok());
    }

    #[test]
    fn rejects_bad_ids() {
        assert_eq!(TenantId::new(""), Err(TenantError::Missing));
        assert_eq!(TenantId::new(".."), Err(TenantError::Dots));
        assert!(matches!(
            TenantId::new("a/b"),
            Err(TenantError::BadCharacter(_, '/'))
        ));
        assert_eq!(TenantId::new(&"x".repeat(151)), Err(TenantError::TooLong));
        for reserved in RESERVED_TENANT_IDS.iter().chain(&["__anything", "__"]) {
            assert_eq!(
                TenantId::new(reserved),
                Err(TenantError::Reserved(reserved.to_string())),
                "{reserved}"
            );
        }
        assert!(TenantId::new("rules2").is_ok());
        assert!(TenantId::new("_rules").is_ok());
    }
}
