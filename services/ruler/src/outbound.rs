//! What the alert evaluation hands to the notifier: the seam between [`crate::group`], which
//! decides when an alert is sent (Prometheus' `needsSending`, resend delay and resolved
//! retention), and the notifier, which queues, batches and posts to Alertmanager.

use norn_model::{Labels, TenantId};

/// One alert as Alertmanager's API v2 takes it (`postableAlert`).
#[derive(Debug, Clone, PartialEq)]
pub struct OutgoingAlert {
    /// The alert's labels: the series' labels, the rule's templated labels and `alertname`.
    pub labels: Labels,
    /// The rule's templated annotations.
    pub annotations: Labels,
    /// Unix ms the alert started firing.
    pub starts_at_ms: i64,
    /// Unix ms the alert ends: when it resolved, or (still firing) the time after which
    /// Alertmanager may consider it resolved if it hears nothing more. 0: unset.
    pub ends_at_ms: i64,
    /// Link back to the rule's expression (Prometheus' graph URL).
    pub generator_url: String,
}

/// Takes a tenant's alerts for delivery. Never blocks evaluation: an implementation queues and
/// drops (counting what it dropped) when full.
pub trait AlertSink: Send + Sync {
    fn send(&self, tenant: &TenantId, alerts: Vec<OutgoingAlert>);
}
