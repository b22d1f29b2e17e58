//! Tenant ids (`X-Scope-OrgID`), validated with Mimir's rules.

use std::fmt;
use std::sync::Arc;

/// Header that carries the tenant id.
pub const ORG_ID_HEADER: &str = "X-Scope-OrgID";

/// The tenant every request belongs to when multitenancy is disabled.
pub const ANONYMOUS: &str = "anonymous";

const MAX_TENANT_ID_LEN: usize = 150;

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
