//! The ruler's flags. Its YAML structs are the ruler's own ([`norn_ruler::Config`] as `ruler`,
//! [`norn_ruler::StorageConfig`] as `ruler_storage`); the per-tenant rule limits are limits
//! (`limits.ruler_*`), whose default-setting flags Mimir names `ruler.*`, so they are here.

use std::path::PathBuf;

use super::flags::{Deferred, set, set_duration};

/// The `ruler.*` and `ruler-storage.*` flags.
#[derive(Debug, Clone, Default, clap::Args)]
#[command(next_help_heading = "Ruler")]
pub struct RulerFlags {
    /// Evaluation interval of a rule group that sets none.
    #[arg(
        long = "ruler.evaluation-interval",
        env = "NORN_RULER_EVALUATION_INTERVAL"
    )]
    pub ruler_evaluation_interval: Option<Deferred>,
    /// How often the rule storage is read for changes.
    #[arg(long = "ruler.poll-interval", env = "NORN_RULER_POLL_INTERVAL")]
    pub ruler_poll_interval: Option<Deferred>,
    /// How often a ruler refreshes its heartbeat in the ruler ring.
    #[arg(
        long = "ruler.ring.heartbeat-period",
        env = "NORN_RULER_RING_HEARTBEAT_PERIOD"
    )]
    pub ruler_ring_heartbeat_period: Option<Deferred>,
    /// A ruler whose heartbeat is older than this is left out of the ruler ring.
    #[arg(
        long = "ruler.ring.heartbeat-timeout",
        env = "NORN_RULER_RING_HEARTBEAT_TIMEOUT"
    )]
    pub ruler_ring_heartbeat_timeout: Option<Deferred>,
    /// This ruler's id in the ruler ring (default: the host name).
    #[arg(long = "ruler.ring.instance-id", env = "NORN_RULER_RING_INSTANCE_ID")]
    pub ruler_ring_instance_id: Option<String>,
    /// Least time between two notifications of one firing alert.
    #[arg(long = "ruler.resend-delay", env = "NORN_RULER_RESEND_DELAY")]
    pub ruler_resend_delay: Option<Deferred>,
    /// How far back the `for` state of alerts is restored from ALERTS_FOR_STATE.
    #[arg(
        long = "ruler.for-outage-tolerance",
        env = "NORN_RULER_FOR_OUTAGE_TOLERANCE"
    )]
    pub ruler_for_outage_tolerance: Option<Deferred>,
    /// Least time a restored pending alert still waits before it fires.
    #[arg(long = "ruler.for-grace-period", env = "NORN_RULER_FOR_GRACE_PERIOD")]
    pub ruler_for_grace_period: Option<Deferred>,
    /// URL of alerts' generator URL and of templates' $externalURL.
    #[arg(long = "ruler.external.url", env = "NORN_RULER_EXTERNAL_URL")]
    pub ruler_external_url: Option<String>,
    /// Comma-separated Alertmanager URLs alerts are sent to (API v2; a path prefix allowed); empty = no notifications.
    #[arg(long = "ruler.alertmanager-url", env = "NORN_RULER_ALERTMANAGER_URL")]
    pub ruler_alertmanager_url: Option<String>,
    /// Alerts queued per tenant for Alertmanager; beyond it the oldest are dropped.
    #[arg(
        long = "ruler.notification-queue-capacity",
        env = "NORN_RULER_NOTIFICATION_QUEUE_CAPACITY"
    )]
    pub ruler_notification_queue_capacity: Option<usize>,
    /// Timeout of one post of alerts to one Alertmanager.
    #[arg(
        long = "ruler.notification-timeout",
        env = "NORN_RULER_NOTIFICATION_TIMEOUT"
    )]
    pub ruler_notification_timeout: Option<Deferred>,
    /// The query-frontend's HTTP address rule queries go to (host:port or an http(s):// URL); empty = rules query in this process.
    #[arg(
        long = "ruler.query-frontend.address",
        env = "NORN_RULER_QUERY_FRONTEND_ADDRESS"
    )]
    pub ruler_query_frontend_address: Option<String>,
    /// Longest one rule query through the query-frontend may take.
    #[arg(
        long = "ruler.query-frontend.timeout",
        env = "NORN_RULER_QUERY_FRONTEND_TIMEOUT"
    )]
    pub ruler_query_frontend_timeout: Option<Deferred>,
    /// Default most rule groups per tenant (0 = unlimited).
    #[arg(
        long = "ruler.max-rule-groups-per-tenant",
        env = "NORN_RULER_MAX_RULE_GROUPS_PER_TENANT"
    )]
    pub ruler_max_rule_groups_per_tenant: Option<usize>,
    /// Default most rules per rule group (0 = unlimited).
    #[arg(
        long = "ruler.max-rules-per-rule-group",
        env = "NORN_RULER_MAX_RULES_PER_RULE_GROUP"
    )]
    pub ruler_max_rules_per_rule_group: Option<usize>,
    /// Rule storage: empty, filesystem or s3 (the bucket of common.storage, under rules/), or local (a read-only directory).
    #[arg(long = "ruler-storage.backend", env = "NORN_RULER_STORAGE_BACKEND")]
    pub ruler_storage_backend: Option<String>,
    /// Directory of <tenant>/<namespace> rule files (ruler-storage.backend=local).
    #[arg(
        long = "ruler-storage.local.directory",
        env = "NORN_RULER_STORAGE_LOCAL_DIRECTORY"
    )]
    pub ruler_storage_local_directory: Option<PathBuf>,
}

impl RulerFlags {
    pub fn apply(
        &self,
        c: &mut norn_ruler::Config,
        storage: &mut norn_ruler::StorageConfig,
        limits: &mut norn_limits::Limits,
    ) -> anyhow::Result<()> {
        set_duration(&mut c.evaluation_interval, &self.ruler_evaluation_interval)?;
        set_duration(&mut c.poll_interval, &self.ruler_poll_interval)?;
        set_duration(
            &mut c.ring.heartbeat_period,
            &self.ruler_ring_heartbeat_period,
        )?;
        set_duration(
            &mut c.ring.heartbeat_timeout,
            &self.ruler_ring_heartbeat_timeout,
        )?;
        set(&mut c.ring.instance_id, &self.ruler_ring_instance_id);
        set_duration(&mut c.resend_delay, &self.ruler_resend_delay)?;
        set_duration(
            &mut c.for_outage_tolerance,
            &self.ruler_for_outage_tolerance,
        )?;
        set_duration(&mut c.for_grace_period, &self.ruler_for_grace_period)?;
        set(&mut c.external_url, &self.ruler_external_url);
        set(&mut c.alertmanager_url, &self.ruler_alertmanager_url);
        set(
            &mut c.notification_queue_capacity,
            &self.ruler_notification_queue_capacity,
        );
        set_duration(
            &mut c.notification_timeout,
            &self.ruler_notification_timeout,
        )?;
        set(
            &mut c.query_frontend.address,
            &self.ruler_query_frontend_address,
        );
        set_duration(
            &mut c.query_frontend.timeout,
            &self.ruler_query_frontend_timeout,
        )?;
        set(
            &mut limits.ruler_max_rule_groups_per_tenant,
            &self.ruler_max_rule_groups_per_tenant,
        );
        set(
            &mut limits.ruler_max_rules_per_rule_group,
            &self.ruler_max_rules_per_rule_group,
        );
        set(&mut storage.backend, &self.ruler_storage_backend);
        set(
            &mut storage.local.directory,
            &self.ruler_storage_local_directory,
        );
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use clap::Parser;

    use crate::config::{Args, Config};

    #[test]
    fn ruler_blocks_from_yaml_and_flags() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("c.yaml");
        std::fs::write(
            &f,
            "ruler:\n  evaluation_interval: 30s\n  poll_interval: 10s\n  external_url: http://grafana/x\n  for_grace_period: 5m\n  ring:\n    instance_id: r1\nruler_storage:\n  backend: local\n  local:\n    directory: /rules\nlimits:\n  ruler_max_rule_groups_per_tenant: 5\n",
        )
        .unwrap();
        let a = Args::parse_from([
            "norn",
            "--config.file",
            f.to_str().unwrap(),
            "--ruler.poll-interval=5s",
            "--ruler.max-rules-per-rule-group=7",
            "--ruler.resend-delay=30s",
        ]);
        let c = Config::load(&a).unwrap();
        assert_eq!(c.ruler.evaluation_interval, Duration::from_secs(30));
        assert_eq!(c.ruler.poll_interval, Duration::from_secs(5), "flag wins");
        assert_eq!(c.ruler.ring.instance_id, "r1");
        assert_eq!(c.ruler.external_url, "http://grafana/x");
        assert_eq!(c.ruler.for_grace_period, Duration::from_secs(300));
        assert_eq!(c.ruler.resend_delay, Duration::from_secs(30));
        assert_eq!(c.ruler.for_outage_tolerance, Duration::from_secs(3600));
        assert!(c.ruler_storage.is_local());
        assert_eq!(c.ruler_storage.local.directory.to_str(), Some("/rules"));
        assert_eq!(c.limits.ruler_max_rule_groups_per_tenant, 5);
        assert_eq!(c.limits.ruler_max_rules_per_rule_group, 7);

        let bad = Args::parse_from(["norn", "--ruler-storage.backend=local"]);
        let e = format!("{:#}", Config::load(&bad).unwrap_err());
        assert!(e.contains("ruler-storage.local.directory"), "{e}");
        let bad = Args::parse_from(["norn", "--ruler.evaluation-interval=0s"]);
        assert!(Config::load(&bad).is_err());
    }

    #[test]
    fn notifier_settings_from_yaml_and_flags() {
        let c = Config::load(&Args::parse_from(["norn"])).unwrap();
        assert_eq!(c.ruler.alertmanager_url, "");
        assert_eq!(c.ruler.notification_queue_capacity, 10_000);
        assert_eq!(c.ruler.notification_timeout, Duration::from_secs(10));

        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("c.yaml");
        std::fs::write(
            &f,
            "ruler:\n  alertmanager_url: http://am1:9093,http://am2:9093\n  notification_queue_capacity: 100\n  notification_timeout: 3s\n",
        )
        .unwrap();
        let a = Args::parse_from([
            "norn",
            "--config.file",
            f.to_str().unwrap(),
            "--ruler.alertmanager-url=http://mimir:8080/alertmanager",
            "--ruler.notification-timeout=5s",
        ]);
        let c = Config::load(&a).unwrap();
        assert_eq!(c.ruler.alertmanager_url, "http://mimir:8080/alertmanager");
        assert_eq!(c.ruler.notification_queue_capacity, 100);
        assert_eq!(c.ruler.notification_timeout, Duration::from_secs(5));

        let bad = Args::parse_from(["norn", "--ruler.alertmanager-url=am:9093"]);
        let e = format!("{:#}", Config::load(&bad).unwrap_err());
        assert!(e.contains("alertmanager-url"), "{e}");
        let bad = Args::parse_from(["norn", "--ruler.notification-queue-capacity=0"]);
        assert!(Config::load(&bad).is_err());
    }

    #[test]
    fn query_frontend_settings_from_yaml_and_flags() {
        let c = Config::load(&Args::parse_from(["norn"])).unwrap();
        assert_eq!(c.ruler.query_frontend.address, "");
        assert_eq!(c.ruler.query_frontend.timeout, Duration::from_secs(120));

        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("c.yaml");
        std::fs::write(
            &f,
            "ruler:\n  query_frontend:\n    address: qf:8080\n    timeout: 30s\n",
        )
        .unwrap();
        let c = Config::load(&Args::parse_from([
            "norn",
            "--config.file",
            f.to_str().unwrap(),
        ]))
        .unwrap();
        assert_eq!(c.ruler.query_frontend.address, "qf:8080");
        assert_eq!(c.ruler.query_frontend.timeout, Duration::from_secs(30));
        let a = Args::parse_from([
            "norn",
            "--config.file",
            f.to_str().unwrap(),
            "--ruler.query-frontend.address=https://mimir.example/prefix",
            "--ruler.query-frontend.timeout=1m",
        ]);
        let c = Config::load(&a).unwrap();
        assert_eq!(
            c.ruler.query_frontend.address,
            "https://mimir.example/prefix"
        );
        assert_eq!(c.ruler.query_frontend.timeout, Duration::from_secs(60));

        let bad = Args::parse_from(["norn", "--ruler.query-frontend.address=qf"]);
        let e = format!("{:#}", Config::load(&bad).unwrap_err());
        assert!(e.contains("ruler.query-frontend.address"), "{e}");
    }
}
