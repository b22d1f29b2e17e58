//! `/api/v1/rules` and `/api/v1/alerts` for the whole cluster.
//!
//! In a cluster each ruler evaluates only its share of the groups (the ruler ring), so its own
//! evaluation state (health, last evaluation, alerts) covers that share. As Mimir's rulers do,
//! the ruler a request reaches asks every ruler of the ring and merges: itself locally, the
//! others over HTTP (`GET http://<ring addr>/prometheus/api/v1/{rules,alerts}?<same query>`;
//! a ruler's ring address is its HTTP address), all at once, each bounded by [`TIMEOUT`] and
//! its body by [`MAX_BODY_BYTES`]. The forwarded request carries the caller's tenant
//! (`X-Scope-OrgID`, and `Authorization` when the caller sent one) and [`LOCAL_HEADER`], which
//! makes the ruler receiving it answer from its own state and never fan out again.
//!
//! Asked: every ACTIVE ruler whose heartbeat is within the ring's timeout — the rulers that
//! own groups. A LEAVING one has handed its groups back; a silent one's groups are already
//! taken by the others at their next poll. This ruler is always answered locally.
//!
//! Failure: when any asked ruler does not answer (error, non-2xx, timeout, oversized or
//! unreadable body) the request fails with 503 `unavailable` naming it: a partial list would
//! look like rules had vanished. A ruler killed without leaving is asked (and fails the
//! request) until its heartbeat is older than `ruler.ring.heartbeat-timeout`.
//!
//! Merge: each ruler applies the filters (they are forwarded), so the merge concatenates.
//! Every ruler lists every stored group of the tenant (with its own state, `unknown` and never
//! evaluated for groups it does not run), so a group is reported by several; the one with the
//! latest `lastEvaluation` — the ruler evaluating it, or during a hand-over the one that
//! evaluated last — is kept, and groups are sorted by file then name, as one ruler sorts them.
//! Alerts come only from the groups a ruler runs: their union.

use std::collections::BTreeMap;
use std::time::Duration;

use axum::http::HeaderMap;
use norn_model::{ErrorKind, TenantId};
use norn_ring::{InstanceDesc, Operation, Ring};
use prometheus::{IntCounterVec, Opts, Registry};
use serde_json::Value as Json;

use crate::ring::Ownership;

/// Marks a request as asked by another ruler: answer from local state only.
pub const LOCAL_HEADER: &str = "x-norn-ruler-local";
/// How long one ruler may take to answer.
pub const TIMEOUT: Duration = Duration::from_secs(10);
/// Largest answer read from one ruler.
pub const MAX_BODY_BYTES: usize = 64 << 20;

/// Which of the two endpoints.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Endpoint {
    Rules,
    Alerts,
}

impl Endpoint {
    fn path(self) -> &'static str {
        match self {
            Endpoint::Rules => "/prometheus/api/v1/rules",
            Endpoint::Alerts => "/prometheus/api/v1/alerts",
        }
    }

    fn as_str(self) -> &'static str {
        match self {
            Endpoint::Rules => "rules",
            Endpoint::Alerts => "alerts",
        }
    }

    /// The list under `data` in the answer.
    fn key(self) -> &'static str {
        match self {
            Endpoint::Rules => "groups",
            Endpoint::Alerts => "alerts",
        }
    }
}

/// Why the cluster-wide answer failed.
#[derive(Debug, thiserror::Error)]
#[error("ruler {id} ({addr}) did not answer: {reason}")]
pub struct FanoutError {
    pub id: String,
    pub addr: String,
    pub reason: String,
}

impl FanoutError {
    pub fn kind(&self) -> ErrorKind {
        ErrorKind::Unavailable
    }
}

/// The HTTP client and metrics of the fan-out.
pub struct Fanout {
    client: reqwest::Client,
    /// `https` once [`Fanout::with_tls`] set a TLS config (`--ruler.client.tls-*`).
    scheme: &'static str,
    timeout: Duration,
    max_body: usize,
    failures: IntCounterVec,
}

/// Whether the request came from another ruler (answer locally).
pub fn is_local_only(headers: &HeaderMap) -> bool {
    headers
        .get(LOCAL_HEADER)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("true"))
}

/// The other rulers to ask: ACTIVE and heartbeating, this one left out. `None` without a ring.
pub fn peers(ownership: &Ownership, now_ms: i64) -> Option<Vec<InstanceDesc>> {
    match ownership {
        Ownership::All => None,
        Ownership::Ring { ring, id, .. } => Some(peers_in(ring, id, now_ms)),
    }
}

/// The members of `ring` other than `me` that are ACTIVE with a heartbeat within the ring's
/// timeout.
fn peers_in(ring: &Ring, me: &str, now_ms: i64) -> Vec<InstanceDesc> {
    ring.instances()
        .into_iter()
        .filter(|i| i.id != me && ring.is_healthy(i, Operation::Write, now_ms))
        .collect()
}

impl Fanout {
    pub fn new(registry: &Registry) -> prometheus::Result<Self> {
        let failures = IntCounterVec::new(
            Opts::new(
                "norn_ruler_api_fanout_failures_total",
                "Requests to another ruler for /api/v1/rules or /api/v1/alerts that failed (the caller got a 503).",
            ),
            &["endpoint"],
        )?;
        registry.register(Box::new(failures.clone()))?;
        let client = reqwest::Client::builder()
            .user_agent(concat!("norn-ruler/", env!("CARGO_PKG_VERSION")))
            .no_proxy()
            .build()
            .unwrap_or_default();
        Ok(Self {
            client,
            scheme: "http",
            timeout: TIMEOUT,
            max_body: MAX_BODY_BYTES,
            failures,
        })
    }

    /// Asks the other rulers over HTTPS with `tls` (CA, client certificate) when given: their
    /// HTTP listeners serve TLS (`--ruler.client.tls-*`).
    pub fn with_tls(mut self, tls: Option<rustls::ClientConfig>) -> Result<Self, String> {
        if let Some(tls) = tls {
            self.client = reqwest::Client::builder()
                .user_agent(concat!("norn-ruler/", env!("CARGO_PKG_VERSION")))
                .no_proxy()
                .use_preconfigured_tls(tls)
                .build()
                .map_err(|e| format!("building the ruler client: {e}"))?;
            self.scheme = "https";
        }
        Ok(self)
    }

    /// Other bounds than [`TIMEOUT`] and [`MAX_BODY_BYTES`] (tests).
    pub fn with_limits(mut self, timeout: Duration, max_body: usize) -> Self {
        self.timeout = timeout;
        self.max_body = max_body;
        self
    }

    /// Failed requests to other rulers so far, for `endpoint`.
    pub fn failures(&self, endpoint: Endpoint) -> u64 {
        self.failures.with_label_values(&[endpoint.as_str()]).get()
    }

    /// Asks every peer at once; the lists under `data.<groups|alerts>` of their answers, or the
    /// first failure.
    pub async fn ask_all(
        &self,
        endpoint: Endpoint,
        peers: &[InstanceDesc],
        query: Option<&str>,
        tenant: &TenantId,
        headers: &HeaderMap,
    ) -> Result<Vec<Vec<Json>>, FanoutError> {
        let auth = headers.get(axum::http::header::AUTHORIZATION).cloned();
        let asks = peers.iter().map(|p| {
            let auth = auth.clone();
            async move {
                self.ask(endpoint, &p.addr, query, tenant, auth)
                    .await
                    .map_err(|reason| FanoutError {
                        id: p.id.clone(),
                        addr: p.addr.clone(),
                        reason,
                    })
            }
        });
        let mut out = Vec::with_capacity(peers.len());
        for r in futures::future::join_all(asks).await {
            match r {
                Ok(list) => out.push(list),
                Err(e) => {
                    self.failures.with_label_values(&[endpoint.as_str()]).inc();
                    tracing::warn!(ruler = %e.id, addr = %e.addr, error = %e.reason, endpoint = endpoint.as_str(), "asking another ruler failed");
                    return Err(e);
                }
            }
        }
        Ok(out)
    }

    async fn ask(
        &self,
        endpoint: Endpoint,
        addr: &str,
        query: Option<&str>,
        tenant: &TenantId,
        auth: Option<axum::http::HeaderValue>,
    ) -> Result<Vec<Json>, String> {
        let mut url = format!("{}://{addr}{}", self.scheme, endpoint.path());
        if let Some(q) = query.filter(|q| !q.is_empty()) {
            url.push('?');
            url.push_str(q);
        }
        let mut req = self
            .client
            .get(&url)
            .timeout(self.timeout)
            .header(norn_model::ORG_ID_HEADER, tenant.as_str())
            .header(LOCAL_HEADER, "true");
        if let Some(a) = auth {
            req = req.header(reqwest::header::AUTHORIZATION, a.as_bytes());
        }
        let mut resp = req.send().await.map_err(|e| self.describe(&e))?;
        let status = resp.status();
        let mut body = Vec::new();
        while let Some(chunk) = resp.chunk().await.map_err(|e| self.describe(&e))? {
            if body.len() + chunk.len() > self.max_body {
                return Err(format!("answer larger than {} bytes", self.max_body));
            }
            body.extend_from_slice(&chunk);
        }
        if !status.is_success() {
            let text = String::from_utf8_lossy(&body[..body.len().min(512)]).into_owned();
            return Err(format!("status {status}: {text}"));
        }
        list_of(&body, endpoint)
    }
}

impl Fanout {
    /// A request error with its causes (reqwest's own message names only the URL).
    fn describe(&self, e: &reqwest::Error) -> String {
        if e.is_timeout() {
            return format!("no answer within {:?}", self.timeout);
        }
        let mut out = e.to_string();
        let mut source = std::error::Error::source(e);
        while let Some(s) = source {
            out.push_str(": ");
            out.push_str(&s.to_string());
            source = s.source();
        }
        out
    }
}

/// The list under `data.<key>` of a successful answer.
fn list_of(body: &[u8], endpoint: Endpoint) -> Result<Vec<Json>, String> {
    let mut v: Json = serde_json::from_slice(body).map_err(|e| format!("invalid JSON: {e}"))?;
    if v["status"] != "success" {
        return Err(format!("status {}", v["status"]));
    }
    match v["data"].get_mut(endpoint.key()).map(Json::take) {
        Some(Json::Array(a)) => Ok(a),
        _ => Err(format!("no data.{} list in the answer", endpoint.key())),
    }
}

/// A group's `lastEvaluation` in Unix milliseconds; never evaluated (Go's zero time) or
/// unreadable sorts first.
fn last_evaluation_ms(group: &Json) -> i64 {
    group["lastEvaluation"]
        .as_str()
        .and_then(|s| chrono::DateTime::parse_from_rfc3339(s).ok())
        .map_or(i64::MIN, |d| d.timestamp_millis())
}

/// Rule groups of every ruler: one per (file, name) — the latest evaluated, the first listed
/// on a tie — sorted by file then name.
pub fn merge_groups(lists: impl IntoIterator<Item = Vec<Json>>) -> Vec<Json> {
    let mut by: BTreeMap<(String, String), Json> = BTreeMap::new();
    for g in lists.into_iter().flatten() {
        let key = (
            g["file"].as_str().unwrap_or_default().to_string(),
            g["name"].as_str().unwrap_or_default().to_string(),
        );
        match by.get(&key) {
            Some(kept) if last_evaluation_ms(kept) >= last_evaluation_ms(&g) => {}
            _ => {
                by.insert(key, g);
            }
        }
    }
    by.into_values().collect()
}

/// Alerts of every ruler.
pub fn merge_alerts(lists: impl IntoIterator<Item = Vec<Json>>) -> Vec<Json> {
    lists.into_iter().flatten().collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn g(file: &str, name: &str, last: &str, health: &str) -> Json {
        json!({"file": file, "name": name, "lastEvaluation": last, "rules": [{"health": health}]})
    }

    const ZERO: &str = "0001-01-01T00:00:00Z";

    #[test]
    fn a_group_on_two_rulers_is_kept_once_the_later_evaluated() {
        let a = vec![
            g("ns", "g1", "2026-12-05T22:00:01Z", "ok"),
            g("ns", "g2", ZERO, "unknown"),
        ];
        let b = vec![
            g("ns", "g1", "2026-12-05T22:00:00.500Z", "ok"),
            g("ns", "g2", "2026-12-05T21:59:59Z", "ok"),
        ];
        let m = merge_groups([a.clone(), b.clone()]);
        assert_eq!(m, vec![a[0].clone(), b[1].clone()]);
        // Whichever ruler answered first.
        assert_eq!(merge_groups([b.clone(), a.clone()]), m);
    }

    #[test]
    fn never_evaluated_everywhere_keeps_the_first() {
        let a = vec![g("ns", "g", ZERO, "unknown")];
        let b = vec![json!({"file": "ns", "name": "g", "lastEvaluation": ZERO, "x": 1})];
        assert_eq!(merge_groups([a.clone(), b]), a);
    }

    #[test]
    fn groups_sort_by_file_then_name() {
        let a = vec![g("b", "a", ZERO, "ok"), g("a", "z", ZERO, "ok")];
        let b = vec![g("a", "b", ZERO, "ok"), g("b", "0", ZERO, "ok")];
        let names: Vec<(String, String)> = merge_groups([a, b])
            .iter()
            .map(|g| {
                (
                    g["file"].as_str().unwrap().to_string(),
                    g["name"].as_str().unwrap().to_string(),
                )
            })
            .collect();
        let want = [("a", "b"), ("a", "z"), ("b", "0"), ("b", "a")]
            .map(|(f, n)| (f.to_string(), n.to_string()));
        assert_eq!(names, want);
    }

    #[test]
    fn alerts_are_the_union() {
        let a = vec![json!({"labels": {"alertname": "A"}})];
        let b = vec![
            json!({"labels": {"alertname": "B"}}),
            json!({"labels": {"alertname": "C"}}),
        ];
        assert_eq!(merge_alerts([a.clone(), b.clone()]).len(), 3);
        assert_eq!(merge_alerts([a, vec![]]).len(), 1);
    }

    #[test]
    fn answers_are_read_and_failures_named() {
        let ok = br#"{"status":"success","data":{"groups":[{"name":"g"}]}}"#;
        assert_eq!(list_of(ok, Endpoint::Rules).unwrap().len(), 1);
        assert!(list_of(ok, Endpoint::Alerts).is_err());
        assert!(list_of(b"not json", Endpoint::Rules).is_err());
        let failed = br#"{"status":"error","errorType":"internal","error":"x"}"#;
        assert!(list_of(failed, Endpoint::Rules).is_err());
        let e = FanoutError {
            id: "ruler-1".into(),
            addr: "10.0.0.2:8080".into(),
            reason: "connection refused".into(),
        };
        assert!(e.to_string().contains("ruler-1"), "{e}");
        assert_eq!(e.kind(), ErrorKind::Unavailable);
    }

    #[test]
    fn only_other_active_heartbeating_rulers_are_asked() {
        use norn_ring::{InstanceState, RingConfig};
        let now = 1_000_000;
        let ring = Ring::new(RingConfig {
            replication_factor: 1,
            heartbeat_timeout: Duration::from_secs(5),
            zone_awareness_enabled: false,
        });
        let member = |id: &str, state: InstanceState, heartbeat_ms: i64, token: u32| InstanceDesc {
            id: id.into(),
            addr: format!("{id}:8080"),
            zone: String::new(),
            state,
            heartbeat_ms,
            registered_ms: 0,
            tokens: vec![token],
        };
        ring.set_instances(vec![
            member("me", InstanceState::Active, now, 1),
            member("peer", InstanceState::Active, now - 4_000, 2),
            member("silent", InstanceState::Active, now - 6_000, 3),
            member("leaving", InstanceState::Leaving, now, 4),
            member("joining", InstanceState::Joining, now, 5),
            member("left", InstanceState::Left, now, 6),
        ]);
        let ids: Vec<String> = peers_in(&ring, "me", now)
            .into_iter()
            .map(|i| i.id)
            .collect();
        assert_eq!(ids, ["peer"]);
    }

    #[test]
    fn the_local_marker_is_read() {
        let mut h = HeaderMap::new();
        assert!(!is_local_only(&h));
        h.insert(LOCAL_HEADER, "true".parse().unwrap());
        assert!(is_local_only(&h));
        h.insert(LOCAL_HEADER, "no".parse().unwrap());
        assert!(!is_local_only(&h));
    }

    /// With `--ruler.client.tls-*`, other rulers are asked over HTTPS with the client
    /// certificate; without the TLS settings the same ruler cannot be asked.
    #[tokio::test]
    async fn peers_are_asked_over_https_with_the_client_tls_settings() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        if !crate::test_pki::make_pki(d, &["peer", "me"]) {
            eprintln!("SKIP: no openssl CLI");
            return;
        }
        let path = |f: &str| d.join(f).display().to_string();
        let server = norn_server::tls::ServerTlsSettings {
            cert_file: path("peer.crt"),
            key_file: path("peer.key"),
            client_ca_file: path("ca.crt"),
            client_auth_type: String::new(),
        }
        .load(
            "peer",
            &[b"http/1.1"],
            &norn_server::tls::TlsMetrics::unregistered(),
        )
        .unwrap();
        let app = axum::Router::new().route(
            "/prometheus/api/v1/rules",
            axum::routing::get(|| async {
                axum::Json(
                    json!({"status": "success", "data": {"groups": [{"file": "ns", "name": "g"}]}}),
                )
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        tokio::spawn(norn_server::serve::serve_with_tls(
            listener,
            app,
            tokio_util::sync::CancellationToken::new(),
            norn_server::ServerOptions::default(),
            norn_server::Metrics::new(),
            Some(server),
        ));
        let peer = InstanceDesc {
            id: "peer".into(),
            addr,
            zone: String::new(),
            state: norn_ring::InstanceState::Active,
            heartbeat_ms: 0,
            registered_ms: 0,
            tokens: vec![1],
        };
        let tenant = TenantId::new("team-a").unwrap();
        let settings = norn_server::tls::ClientTlsSettings {
            tls_enabled: true,
            tls_ca_path: path("ca.crt"),
            tls_cert_path: path("me.crt"),
            tls_key_path: path("me.key"),
            ..Default::default()
        };
        let f = Fanout::new(&Registry::new())
            .unwrap()
            .with_tls(settings.rustls_config(&[b"http/1.1"]).unwrap())
            .unwrap();
        let got = f
            .ask_all(
                Endpoint::Rules,
                std::slice::from_ref(&peer),
                None,
                &tenant,
                &HeaderMap::new(),
            )
            .await
            .unwrap();
        assert_eq!(got[0][0]["name"], "g");

        let plain = Fanout::new(&Registry::new())
            .unwrap()
            .with_tls(None)
            .unwrap();
        let e = plain
            .ask_all(Endpoint::Rules, &[peer], None, &tenant, &HeaderMap::new())
            .await
            .unwrap_err();
        assert_eq!(e.id, "peer");
        assert_eq!(plain.failures(Endpoint::Rules), 1);
    }
}
