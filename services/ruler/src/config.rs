//! The ruler's configuration: the `ruler` and `ruler_storage` YAML blocks, with Mimir's keys
//! and defaults. Per-tenant rule limits are `norn_limits::Limits`
//! (`ruler_max_rule_groups_per_tenant`, `ruler_max_rules_per_rule_group`).

use std::path::PathBuf;
use std::time::Duration;

use norn_model::duration::serde_duration;
use serde::{Deserialize, Serialize};

/// Ruler configuration (YAML block `ruler`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Evaluation interval of a group that sets none.
    #[serde(with = "serde_duration")]
    pub evaluation_interval: Duration,
    /// How often the rule storage is read for changes (and ring changes applied).
    #[serde(with = "serde_duration")]
    pub poll_interval: Duration,
    /// The ruler ring.
    pub ring: RingConfig,
    /// Least time between two notifications of one firing alert (Prometheus'
    /// `--rules.alert.resend-delay`).
    #[serde(with = "serde_duration")]
    pub resend_delay: Duration,
    /// How far back the `for` state of alerts is looked for after this ruler starts
    /// evaluating a group: an alert last seen longer ago starts its `for` afresh.
    #[serde(with = "serde_duration")]
    pub for_outage_tolerance: Duration,
    /// Least time left for a restored pending alert before it fires, so an outage cannot
    /// make every alert fire at the first evaluation after it.
    #[serde(with = "serde_duration")]
    pub for_grace_period: Duration,
    /// URL the alerts' generator URL and templates' `$externalURL` point at (the Grafana or
    /// Prometheus UI users reach the ruler's data through).
    pub external_url: String,
    /// Comma-separated Alertmanager base URLs (`http://am:9093`, or with a path prefix such as
    /// `http://mimir:8080/alertmanager`); alerts are posted to `<url>/api/v2/alerts` of each.
    /// Empty: notifications are off.
    pub alertmanager_url: String,
    /// Alerts queued per tenant for delivery; beyond it the oldest are dropped.
    pub notification_queue_capacity: usize,
    /// Timeout of one request to one Alertmanager.
    #[serde(with = "serde_duration")]
    pub notification_timeout: Duration,
    /// Where rule queries run: a query-frontend, or (address empty) this process.
    pub query_frontend: QueryFrontendConfig,
    /// TLS to `https://` Alertmanagers (Mimir's `alertmanager_client` block, its `tls_*`
    /// keys).
    pub alertmanager_client: norn_server::tls::ClientTlsSettings,
    /// TLS to the other rulers' HTTP for the rules API fan-out (Mimir's `ruler_client`);
    /// enabled: they are asked over `https://`.
    pub ruler_client: norn_server::tls::ClientTlsSettings,
}

/// `ruler.query_frontend`: rule queries sent to a query-frontend (Mimir's
/// `-ruler.query-frontend.*`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct QueryFrontendConfig {
    /// The frontend's HTTP address: `host:port` (plain HTTP) or an `http(s)://host:port[/prefix]`
    /// URL; queries go to `<it>/prometheus/api/v1/query`. Empty: rules query in-process.
    /// (Mimir's is the frontend's gRPC address.)
    pub address: String,
    /// Longest one rule query through the frontend may take.
    #[serde(with = "serde_duration")]
    pub timeout: Duration,
    /// TLS to an `https://` frontend (Mimir's key names; here for its HTTP API).
    pub grpc_client_config: norn_server::tls::ClientTlsSettings,
}

impl Default for QueryFrontendConfig {
    fn default() -> Self {
        Self {
            address: String::new(),
            timeout: Duration::from_secs(120),
            grpc_client_config: Default::default(),
        }
    }
}

impl QueryFrontendConfig {
    /// The frontend's base URL (`None`: rules query in-process); an error says why the
    /// address is refused.
    pub fn url(&self) -> Result<Option<reqwest::Url>, String> {
        let a = self.address.trim();
        if a.is_empty() {
            return Ok(None);
        }
        let full = a.contains("://");
        let text = if full {
            a.to_string()
        } else {
            format!("http://{a}")
        };
        let refuse = |why: &str| {
            Err(format!(
                "ruler.query-frontend.address: {a:?} {why} (host:port or an http(s)://host:port[/prefix] URL of the query-frontend's HTTP server)"
            ))
        };
        let Ok(url) = reqwest::Url::parse(&text) else {
            return refuse("is not an address");
        };
        if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none_or(str::is_empty) {
            return refuse("must be an http:// or https:// URL with a host");
        }
        if url.query().is_some() || url.fragment().is_some() {
            return refuse("must not have a query or fragment");
        }
        if !full && (url.port().is_none() || url.path() != "/") {
            return refuse("must be host:port");
        }
        Ok(Some(url))
    }
}

/// The ruler ring (YAML block `ruler.ring`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RingConfig {
    /// How often a ruler refreshes its heartbeat in the ring.
    #[serde(with = "serde_duration")]
    pub heartbeat_period: Duration,
    /// A ruler whose heartbeat is older than this is left out of the ring.
    #[serde(with = "serde_duration")]
    pub heartbeat_timeout: Duration,
    /// This ruler's id in the ring (default: the host name).
    pub instance_id: String,
}

impl Default for RingConfig {
    fn default() -> Self {
        Self {
            heartbeat_period: Duration::from_secs(15),
            heartbeat_timeout: Duration::from_secs(60),
            instance_id: String::new(),
        }
    }
}

impl Default for Config {
    fn default() -> Self {
        Self {
            evaluation_interval: Duration::from_secs(60),
            poll_interval: Duration::from_secs(60),
            ring: RingConfig::default(),
            resend_delay: Duration::from_secs(60),
            for_outage_tolerance: Duration::from_secs(3600),
            for_grace_period: Duration::from_secs(600),
            external_url: String::new(),
            alertmanager_url: String::new(),
            notification_queue_capacity: 10_000,
            notification_timeout: Duration::from_secs(10),
            query_frontend: QueryFrontendConfig::default(),
            alertmanager_client: Default::default(),
            ruler_client: Default::default(),
        }
    }
}

/// Where rule groups are stored (YAML block `ruler_storage`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StorageConfig {
    /// Empty: the blocks' bucket (`common.storage`), under `rules/`; `local`: a read-only
    /// directory of rule files.
    pub backend: String,
    pub local: LocalStorageConfig,
}

/// `ruler_storage.local`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LocalStorageConfig {
    /// `<directory>/<tenant>/<namespace>` rule files.
    pub directory: PathBuf,
}

/// Shortest interval honoured (a zero setting must not spin a core).
pub const MIN_INTERVAL: Duration = Duration::from_millis(100);

impl Config {
    /// Refuses settings the ruler cannot honour.
    pub fn validate(&self) -> Result<(), String> {
        if self.evaluation_interval < MIN_INTERVAL || self.poll_interval < MIN_INTERVAL {
            return Err(format!(
                "ruler.evaluation-interval and ruler.poll-interval must be at least {MIN_INTERVAL:?}"
            ));
        }
        let r = &self.ring;
        if r.heartbeat_period.is_zero() || r.heartbeat_timeout <= r.heartbeat_period {
            return Err(format!(
                "ruler.ring.heartbeat_timeout ({:?}) must be longer than heartbeat_period ({:?})",
                r.heartbeat_timeout, r.heartbeat_period
            ));
        }
        self.alertmanager_urls()?;
        if self.notification_queue_capacity == 0 {
            return Err("ruler.notification-queue-capacity must be greater than 0".to_string());
        }
        if self.notification_timeout.is_zero() {
            return Err("ruler.notification-timeout must be greater than 0".to_string());
        }
        self.query_frontend.url()?;
        if self.query_frontend.timeout.is_zero() {
            return Err("ruler.query-frontend.timeout must be greater than 0".to_string());
        }
        Ok(())
    }

    /// The Alertmanagers of `alertmanager_url`, parsed (empty entries ignored, so a trailing
    /// comma is harmless); an error names the URL that is not an http(s) URL.
    pub fn alertmanager_urls(&self) -> Result<Vec<reqwest::Url>, String> {
        self.alertmanager_url
            .split(',')
            .map(str::trim)
            .filter(|u| !u.is_empty())
            .map(|u| {
                let url = reqwest::Url::parse(u)
                    .map_err(|e| format!("ruler.alertmanager-url: {u:?} is not a URL: {e}"))?;
                if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
                    return Err(format!(
                        "ruler.alertmanager-url: {u:?} must be an http:// or https:// URL with a host"
                    ));
                }
                Ok(url)
            })
            .collect()
    }
}

impl StorageConfig {
    pub fn validate(&self) -> Result<(), String> {
        match self.backend.as_str() {
            "" | "filesystem" | "s3" => Ok(()),
            "local" if self.local.directory.as_os_str().is_empty() => {
                Err("ruler-storage.backend=local needs --ruler-storage.local.directory".to_string())
            }
            "local" => Ok(()),
            other => Err(format!(
                "ruler_storage.backend must be empty (the blocks bucket), filesystem, s3 (both: the bucket of common.storage) or local, got {other:?}"
            )),
        }
    }

    pub fn is_local(&self) -> bool {
        self.backend == "local"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_mimirs_and_valid() {
        let c = Config::default();
        c.validate().unwrap();
        assert_eq!(c.evaluation_interval, Duration::from_secs(60));
        assert_eq!(c.poll_interval, Duration::from_secs(60));
        assert_eq!(c.resend_delay, Duration::from_secs(60));
        assert_eq!(c.for_outage_tolerance, Duration::from_secs(3600));
        assert_eq!(c.for_grace_period, Duration::from_secs(600));
        assert!(c.external_url.is_empty());
        assert_eq!(c.alertmanager_url, "");
        assert_eq!(c.alertmanager_urls().unwrap(), vec![]);
        assert_eq!(c.notification_queue_capacity, 10_000);
        assert_eq!(c.notification_timeout, Duration::from_secs(10));
        assert_eq!(c.query_frontend.address, "");
        assert_eq!(c.query_frontend.url().unwrap(), None);
        assert_eq!(c.query_frontend.timeout, Duration::from_secs(120));
        StorageConfig::default().validate().unwrap();
    }

    #[test]
    fn alertmanager_urls_are_a_comma_separated_list() {
        let c = Config {
            alertmanager_url: " http://am1:9093 ,https://mimir:8080/alertmanager,".into(),
            ..Config::default()
        };
        c.validate().unwrap();
        let urls: Vec<String> = c
            .alertmanager_urls()
            .unwrap()
            .iter()
            .map(|u| u.to_string())
            .collect();
        assert_eq!(
            urls,
            ["http://am1:9093/", "https://mimir:8080/alertmanager"]
        );
    }

    #[test]
    fn query_frontend_address_is_host_port_or_a_url() {
        let url = |a: &str| {
            QueryFrontendConfig {
                address: a.into(),
                ..Default::default()
            }
            .url()
            .map(|u| u.map(|u| u.to_string()))
        };
        assert_eq!(url("qf:8080").unwrap().unwrap(), "http://qf:8080/");
        assert_eq!(
            url(" 127.0.0.1:9 ").unwrap().unwrap(),
            "http://127.0.0.1:9/"
        );
        assert_eq!(
            url("https://mimir.example/prefix").unwrap().unwrap(),
            "https://mimir.example/prefix"
        );
        for bad in [
            "qf",
            "qf:8080/x",
            "ftp://qf:1",
            "http://",
            "qf:notaport",
            "http://q:1/?a=b",
        ] {
            let e = url(bad).unwrap_err();
            assert!(e.contains("ruler.query-frontend.address"), "{bad}: {e}");
        }
        let c = Config {
            query_frontend: QueryFrontendConfig {
                address: "qf".into(),
                ..Default::default()
            },
            ..Config::default()
        };
        assert!(c.validate().is_err());
        let c = Config {
            query_frontend: QueryFrontendConfig {
                timeout: Duration::ZERO,
                ..Default::default()
            },
            ..Config::default()
        };
        assert!(c.validate().unwrap_err().contains("query-frontend.timeout"));
    }

    #[test]
    fn bad_settings_are_refused() {
        let c = Config {
            evaluation_interval: Duration::ZERO,
            ..Config::default()
        };
        assert!(c.validate().is_err());
        for bad in ["am:9093", "ftp://am", "http://", "not a url"] {
            let c = Config {
                alertmanager_url: format!("http://ok:9093,{bad}"),
                ..Config::default()
            };
            let e = c.validate().unwrap_err();
            assert!(e.contains("alertmanager-url"), "{bad}: {e}");
        }
        let c = Config {
            notification_queue_capacity: 0,
            ..Config::default()
        };
        assert!(c.validate().unwrap_err().contains("queue-capacity"));
        let s = StorageConfig {
            backend: "local".into(),
            ..Default::default()
        };
        assert!(s.validate().unwrap_err().contains("directory"));
        let s = StorageConfig {
            backend: "gcs".into(),
            ..Default::default()
        };
        assert!(s.validate().is_err());
    }
}
