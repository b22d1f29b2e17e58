//! Operator pages: `/ring` (members, states, heartbeats, ownership; a forget button for stuck
//! instances, as in Mimir) and `/memberlist` (gossip members and KV keys). Each serves HTML to
//! browsers and JSON to `Accept: application/json`.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Arc;

use axum::extract::{Form, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde::{Deserialize, Serialize};

use crate::lifecycler::{INGESTER_RING_KEY, forget_instance};
use crate::memberlist::{MemberInfo, Memberlist};
use crate::ring::Ring;
use norn_model::now_ms;

#[derive(Clone)]
struct PageState {
    ring: Ring,
    memberlist: Arc<Memberlist>,
    key: &'static str,
    /// Where the page is served (its form posts back there).
    path: &'static str,
}

/// `/ring` and `/memberlist` for the ingester ring.
pub fn routes(ring: Ring, memberlist: Arc<Memberlist>) -> Router {
    routes_for_key(ring, memberlist, INGESTER_RING_KEY)
}

/// `/ring` and `/memberlist` for the ring stored under `key`.
pub fn routes_for_key(ring: Ring, memberlist: Arc<Memberlist>, key: &'static str) -> Router {
    let state = PageState {
        ring,
        memberlist,
        key,
        path: "/ring",
    };
    Router::new()
        .route("/ring", get(ring_page).post(ring_forget))
        .route("/memberlist", get(memberlist_page))
        .with_state(state)
}

/// Only the ring page of the ring stored under `key`, served at `path` (the store-gateway
/// ring's page is `/store-gateway/ring`, as in Mimir).
pub fn ring_page_at(
    ring: Ring,
    memberlist: Arc<Memberlist>,
    key: &'static str,
    path: &'static str,
) -> Router {
    Router::new()
        .route(path, get(ring_page).post(ring_forget))
        .with_state(PageState {
            ring,
            memberlist,
            key,
            path,
        })
}

fn wants_json(headers: &HeaderMap) -> bool {
    headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("application/json"))
}

fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '&' => out.push_str("&amp;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// Unix milliseconds as RFC 3339 UTC (what Mimir's ring JSON shows), without a date library.
fn rfc3339(ms: i64) -> String {
    let secs = ms.div_euclid(1000);
    let millis = ms.rem_euclid(1000);
    let days = secs.div_euclid(86_400);
    let sod = secs.rem_euclid(86_400);
    // Civil-from-days (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{millis:03}Z",
        sod / 3600,
        sod % 3600 / 60,
        sod % 60
    )
}

#[derive(Serialize)]
struct Shard {
    id: String,
    state: &'static str,
    address: String,
    zone: String,
    /// Last heartbeat, RFC 3339.
    timestamp: String,
    registered_timestamp: String,
    /// Heartbeat within the ring's heartbeat timeout (and in a state reads may use).
    healthy: bool,
    heartbeat_age_seconds: f64,
    tokens: Vec<u32>,
    /// Percent of the token space owned.
    ownership: f64,
}

#[derive(Serialize)]
struct RingStatus {
    shards: Vec<Shard>,
    now: String,
}

async fn ring_page(State(s): State<PageState>, headers: HeaderMap) -> Response {
    let ownership = s.ring.ownership();
    let now = now_ms();
    let instances = s.ring.instances();
    if wants_json(&headers) {
        let shards = instances
            .into_iter()
            .map(|i| Shard {
                healthy: s.ring.is_healthy(&i, crate::ring::Operation::Read, now),
                ownership: ownership.get(&i.id).copied().unwrap_or(0.0) * 100.0,
                state: i.state.as_str(),
                address: i.addr,
                zone: i.zone,
                timestamp: rfc3339(i.heartbeat_ms),
                registered_timestamp: rfc3339(i.registered_ms),
                heartbeat_age_seconds: (now - i.heartbeat_ms) as f64 / 1000.0,
                tokens: i.tokens,
                id: i.id,
            })
            .collect();
        return Json(RingStatus {
            shards,
            now: rfc3339(now),
        })
        .into_response();
    }
    let mut html = String::from(
        "<!DOCTYPE html><html><head><title>Ring status</title></head><body><h1>Ring status</h1>",
    );
    let _ = write!(
        html,
        "<p>Key: {}. Current time: {}.</p><form method=\"post\" action=\"{}\"><table border=\"1\">\
         <tr><th>Instance ID</th><th>State</th><th>Address</th><th>Zone</th>\
         <th>Last heartbeat</th><th>Tokens</th><th>Ownership</th><th>Actions</th></tr>",
        escape(s.key),
        rfc3339(now),
        s.path
    );
    for i in &instances {
        let healthy = if s.ring.is_healthy(i, crate::ring::Operation::Read, now) {
            ""
        } else {
            " (unhealthy)"
        };
        let _ = write!(
            html,
            "<tr><td>{id}</td><td>{state}{healthy}</td><td>{addr}</td><td>{zone}</td>\
             <td>{age:.1}s ago</td><td>{tokens}</td><td>{own:.1}%</td>\
             <td><button name=\"forget\" value=\"{id}\" type=\"submit\">Forget</button></td></tr>",
            id = escape(&i.id),
            state = i.state.as_str(),
            addr = escape(&i.addr),
            zone = escape(&i.zone),
            age = (now - i.heartbeat_ms) as f64 / 1000.0,
            tokens = i.tokens.len(),
            own = ownership.get(&i.id).copied().unwrap_or(0.0) * 100.0,
        );
    }
    html.push_str("</table></form></body></html>");
    Html(html).into_response()
}

#[derive(Deserialize)]
struct ForgetForm {
    forget: String,
}

async fn ring_forget(State(s): State<PageState>, Form(form): Form<ForgetForm>) -> Response {
    if form.forget.is_empty() {
        return (StatusCode::BAD_REQUEST, "forget: empty instance id").into_response();
    }
    tracing::info!(key = s.key, instance = %form.forget, "ring: forget requested on the ring page");
    forget_instance(&s.memberlist, s.key, &form.forget);
    // Post/redirect/get, so a browser reload does not forget again.
    Redirect::to(s.path).into_response()
}

#[derive(Serialize)]
struct KeyInfo {
    key: String,
    entries: usize,
    tombstones: usize,
}

#[derive(Serialize)]
struct MemberlistStatus {
    node: String,
    members: Vec<MemberInfo>,
    keys: Vec<KeyInfo>,
}

async fn memberlist_page(State(s): State<PageState>, headers: HeaderMap) -> Response {
    let members = s.memberlist.members();
    let state = s.memberlist.state();
    let keys: Vec<KeyInfo> = state
        .keys
        .iter()
        .map(|(k, m)| {
            let tombstones = m.values().filter(|e| e.tombstone).count();
            KeyInfo {
                key: k.clone(),
                entries: m.len() - tombstones,
                tombstones,
            }
        })
        .collect();
    if wants_json(&headers) {
        return Json(MemberlistStatus {
            node: s.memberlist.node_name().to_string(),
            members,
            keys,
        })
        .into_response();
    }
    let mut html = String::from(
        "<!DOCTYPE html><html><head><title>Memberlist status</title></head><body><h1>Memberlist status</h1>",
    );
    let _ = write!(
        html,
        "<p>Node: {} at {}</p><h2>Members</h2><table border=\"1\"><tr><th>Name</th><th>Address</th><th>State</th></tr>",
        escape(s.memberlist.node_name()),
        s.memberlist.advertise_addr()
    );
    for m in &members {
        let _ = write!(
            html,
            "<tr><td>{}</td><td>{}</td><td>{}</td></tr>",
            escape(&m.name),
            escape(&m.addr),
            escape(&m.state)
        );
    }
    html.push_str(
        "</table><h2>KV store</h2><table border=\"1\"><tr><th>Key</th><th>Entries</th><th>Tombstones</th></tr>",
    );
    let by_key: BTreeMap<&str, &KeyInfo> = keys.iter().map(|k| (k.key.as_str(), k)).collect();
    for (k, info) in by_key {
        let _ = write!(
            html,
            "<tr><td>{}</td><td>{}</td><td>{}</td></tr>",
            escape(k),
            info.entries,
            info.tombstones
        );
    }
    html.push_str("</table></body></html>");
    Html(html).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_rfc3339() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(rfc3339(951_782_400_123), "2000-02-29T00:00:00.123Z");
        assert_eq!(rfc3339(1_735_689_599_999), "2024-12-31T23:59:59.999Z");
    }

    #[test]
    fn escapes_html() {
        assert_eq!(
            escape("<a href=\"x\">&'"),
            "&lt;a href=&quot;x&quot;&gt;&amp;&#39;"
        );
    }
}
