//! `auth`: who may call the HTTP API, and as which tenant.
//!
//! `auth.type` is `none` (one tenant, `anonymous`), `trust` (the tenant is whatever
//! `X-Scope-OrgID` or the basic-auth username says: the caller is trusted, as in Mimir) or
//! `tokens` (secrets from `auth.tokens_file`, see `norn_server::auth`). Mimir's
//! `multitenancy_enabled` keeps working: `false` is `none`, `true` is `trust`. When neither is
//! set the type is `trust`, so nothing changes for existing users; settings that contradict
//! each other are refused rather than one silently winning.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::bail;
use norn_model::duration::serde_duration;
use serde::{Deserialize, Serialize};

use super::flags::{Deferred, set_duration};

/// `auth.type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum AuthType {
    None,
    Trust,
    Tokens,
}

impl AuthType {
    fn as_str(self) -> &'static str {
        match self {
            AuthType::None => "none",
            AuthType::Trust => "trust",
            AuthType::Tokens => "tokens",
        }
    }
}

/// `auth` in YAML.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuthConfig {
    /// `None` until resolved against `multitenancy_enabled` ([`resolve`]).
    #[serde(rename = "type")]
    pub kind: Option<AuthType>,
    pub tokens_file: Option<PathBuf>,
    #[serde(with = "serde_duration")]
    pub tokens_reload_period: Duration,
}

impl Default for AuthConfig {
    fn default() -> Self {
        Self {
            kind: None,
            tokens_file: None,
            tokens_reload_period: Duration::from_secs(5),
        }
    }
}

/// Settles `auth.type` and `multitenancy_enabled` into one answer (both fields are then set,
/// so `/config` shows the effective values), refusing contradictions.
pub fn resolve(multitenancy: &mut Option<bool>, auth: &mut AuthConfig) -> anyhow::Result<()> {
    let kind = match (auth.kind, *multitenancy) {
        (None, Some(false)) => AuthType::None,
        (None, _) => AuthType::Trust,
        (Some(AuthType::None), Some(true)) => bail!(
            "auth.type=none contradicts multitenancy_enabled=true (--auth.multitenancy-enabled): set only one of them"
        ),
        (Some(k @ (AuthType::Trust | AuthType::Tokens)), Some(false)) => bail!(
            "auth.type={} contradicts multitenancy_enabled=false (--auth.multitenancy-enabled), which means auth.type=none: set only one of them",
            k.as_str()
        ),
        (Some(k), _) => k,
    };
    match (kind, &auth.tokens_file) {
        (AuthType::Tokens, None) => {
            bail!("auth.type=tokens needs auth.tokens_file (--auth.tokens-file)")
        }
        (AuthType::None | AuthType::Trust, Some(_)) => bail!(
            "auth.tokens_file (--auth.tokens-file) is only read with auth.type=tokens, but auth.type is {}",
            kind.as_str()
        ),
        _ => {}
    }
    auth.kind = Some(kind);
    *multitenancy = Some(kind != AuthType::None);
    Ok(())
}

/// The `auth.*` flags besides `--auth.multitenancy-enabled`.
#[derive(Debug, Clone, Default, clap::Args)]
#[command(next_help_heading = "Authentication")]
pub struct AuthFlags {
    /// none (one tenant), trust (tenant from X-Scope-OrgID or the basic-auth username; default), or tokens (secrets from --auth.tokens-file).
    #[arg(long = "auth.type", env = "NORN_AUTH_TYPE", value_enum)]
    pub kind: Option<AuthType>,
    /// YAML file of tokens (name, sha256 hash, tenants, scopes) for --auth.type=tokens; re-read while running.
    #[arg(long = "auth.tokens-file", env = "NORN_AUTH_TOKENS_FILE")]
    pub tokens_file: Option<PathBuf>,
    /// How often the tokens file is re-read (default 5s).
    #[arg(
        long = "auth.tokens-reload-period",
        env = "NORN_AUTH_TOKENS_RELOAD_PERIOD"
    )]
    pub tokens_reload_period: Option<Deferred>,
}

impl AuthFlags {
    pub fn apply(&self, c: &mut AuthConfig) -> anyhow::Result<()> {
        if self.kind.is_some() {
            c.kind = self.kind;
        }
        if self.tokens_file.is_some() {
            c.tokens_file = self.tokens_file.clone();
        }
        set_duration(&mut c.tokens_reload_period, &self.tokens_reload_period)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(mt: Option<bool>, kind: Option<AuthType>, file: bool) -> anyhow::Result<AuthType> {
        let mut mt = mt;
        let mut a = AuthConfig {
            kind,
            tokens_file: file.then(|| PathBuf::from("t.yaml")),
            ..Default::default()
        };
        resolve(&mut mt, &mut a)?;
        assert_eq!(mt, Some(a.kind != Some(AuthType::None)));
        Ok(a.kind.unwrap())
    }

    #[test]
    fn resolves_type_and_refuses_contradictions() {
        use AuthType::{Tokens, Trust};
        assert_eq!(r(None, None, false).unwrap(), Trust, "the default");
        assert_eq!(r(Some(true), None, false).unwrap(), Trust);
        assert_eq!(r(Some(false), None, false).unwrap(), AuthType::None);
        assert_eq!(r(None, Some(Tokens), true).unwrap(), Tokens);
        assert_eq!(r(Some(true), Some(Tokens), true).unwrap(), Tokens);
        assert_eq!(
            r(Some(false), Some(AuthType::None), false).unwrap(),
            AuthType::None
        );
        for (mt, kind, file, want) in [
            (Some(false), Some(Tokens), true, "contradicts"),
            (Some(false), Some(Trust), false, "contradicts"),
            (Some(true), Some(AuthType::None), false, "contradicts"),
            (None, Some(Tokens), false, "needs auth.tokens_file"),
            (None, Some(Trust), true, "only read with auth.type=tokens"),
            (None, None, true, "only read"),
        ] {
            let err = r(mt, kind, file).unwrap_err().to_string();
            assert!(err.contains(want), "{mt:?} {kind:?} {file}: {err}");
        }
    }
}
