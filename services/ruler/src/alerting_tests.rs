//! The alert state machine driven directly: states, `for`, `keep_firing_for`, resolved
//! retention, `limit`, duplicates, what is sent when, and the `for`-state restore arithmetic.

use super::*;
use crate::rulefmt::Rule;

const M: i64 = 60_000;

fn rule(yaml: &str) -> AlertRule {
    let r: Rule = serde_yaml::from_str(yaml).unwrap();
    AlertRule::new(&r, true)
}

fn cand(job: &str, v: f64) -> Candidate {
    Candidate {
        labels: Labels::from_pairs([("alertname", "A"), ("job", job)]),
        annotations: Labels::empty(),
        value: v,
    }
}

fn states(r: &AlertRule) -> Vec<(String, AlertState)> {
    r.all_alerts()
        .map(|a| (a.labels.get("job").unwrap_or("").to_string(), a.state))
        .collect()
}

#[test]
fn pending_then_firing_at_exactly_for_then_resolved_and_forgotten() {
    let mut r = rule("{alert: A, expr: up, for: 2m}");
    r.apply(0, vec![cand("a", 1.0)], 0).unwrap();
    assert_eq!(states(&r), [("a".into(), AlertState::Pending)]);
    assert!(
        r.series()
            .iter()
            .any(|(l, _)| l.get("alertstate") == Some("pending"))
    );
    r.apply(M, vec![cand("a", 2.0)], 0).unwrap();
    assert_eq!(r.state(), AlertState::Pending);
    r.apply(2 * M, vec![cand("a", 3.0)], 0).unwrap();
    assert_eq!(r.state(), AlertState::Firing, "ts - ActiveAt == for fires");
    let a = r.active_alerts().remove(0);
    assert_eq!(
        (a.active_at_ms, a.fired_at_ms, a.value),
        (0, Some(2 * M), 3.0)
    );
    // Gone: resolved, kept (not active, still held) for the retention.
    r.apply(3 * M, vec![], 0).unwrap();
    assert_eq!(states(&r), [("a".into(), AlertState::Inactive)]);
    assert!(r.active_alerts().is_empty());
    assert!(r.series().is_empty(), "no ALERTS for a resolved alert");
    r.apply(3 * M + RESOLVED_RETENTION_MS, vec![], 0).unwrap();
    assert_eq!(r.all_alerts().count(), 1, "exactly the retention: kept");
    r.apply(4 * M + RESOLVED_RETENTION_MS, vec![], 0).unwrap();
    assert_eq!(r.all_alerts().count(), 0, "past the retention: forgotten");
}

#[test]
fn pending_alert_that_goes_is_forgotten_and_one_that_returns_starts_over() {
    let mut r = rule("{alert: A, expr: up, for: 5m}");
    r.apply(0, vec![cand("a", 1.0)], 0).unwrap();
    r.apply(M, vec![], 0).unwrap();
    assert_eq!(r.all_alerts().count(), 0);
    let mut r = rule("{alert: A, expr: up}");
    r.apply(0, vec![cand("a", 1.0)], 0).unwrap();
    assert_eq!(r.state(), AlertState::Firing, "for: 0 fires at once");
    r.apply(M, vec![], 0).unwrap();
    r.apply(2 * M, vec![cand("a", 1.0)], 0).unwrap();
    let a = r.active_alerts().remove(0);
    assert_eq!(
        a.active_at_ms,
        2 * M,
        "a resolved alert comes back as a new one"
    );
    assert_eq!(a.resolved_at_ms, None);
}

#[test]
fn keep_firing_for_holds_a_firing_alert() {
    let mut r = rule("{alert: A, expr: up, keep_firing_for: 2m}");
    r.apply(0, vec![cand("a", 1.0)], 0).unwrap();
    r.apply(M, vec![], 0).unwrap();
    assert_eq!(r.state(), AlertState::Firing);
    assert_eq!(r.active_alerts()[0].keep_firing_since_ms, Some(M));
    r.apply(2 * M, vec![], 0).unwrap();
    assert_eq!(r.state(), AlertState::Firing, "1m after: still held");
    r.apply(3 * M, vec![], 0).unwrap();
    assert_eq!(r.state(), AlertState::Inactive, "2m after: resolved");
    assert_eq!(r.all_alerts().next().unwrap().resolved_at_ms, Some(3 * M));
    // Coming back resets the hold.
    let mut r = rule("{alert: A, expr: up, keep_firing_for: 2m}");
    r.apply(0, vec![cand("a", 1.0)], 0).unwrap();
    r.apply(M, vec![], 0).unwrap();
    r.apply(2 * M, vec![cand("a", 1.0)], 0).unwrap();
    assert_eq!(r.active_alerts()[0].keep_firing_since_ms, None);
}

#[test]
fn limit_and_duplicates_fail_the_rule() {
    let mut r = rule("{alert: A, expr: up}");
    r.apply(0, vec![cand("a", 1.0)], 1).unwrap();
    let e = r
        .apply(M, vec![cand("a", 1.0), cand("b", 1.0)], 1)
        .unwrap_err();
    assert_eq!(e, "exceeded limit of 1 with 2 alerts");
    assert_eq!(r.all_alerts().count(), 0, "every alert dropped");
    r.apply(2 * M, vec![cand("a", 1.0)], 1).unwrap();
    let e = r
        .apply(3 * M, vec![cand("a", 1.0), cand("a", 2.0)], 0)
        .unwrap_err();
    assert!(
        e.contains("same labelset after applying alert labels"),
        "{e}"
    );
    assert_eq!(r.active_alerts()[0].value, 1.0, "state left as it was");
}

#[test]
fn alerts_series_carry_state_and_active_at_seconds() {
    let mut r = rule("{alert: A, expr: up, for: 1m}");
    r.apply(90_500, vec![cand("a", 7.0)], 0).unwrap();
    let s = r.series();
    assert_eq!(
        s,
        [
            (
                Labels::from_pairs([
                    ("__name__", "ALERTS"),
                    ("alertname", "A"),
                    ("alertstate", "pending"),
                    ("job", "a")
                ]),
                1.0
            ),
            (
                Labels::from_pairs([
                    ("__name__", "ALERTS_FOR_STATE"),
                    ("alertname", "A"),
                    ("job", "a")
                ]),
                90.0
            ),
        ]
    );
    let mut unrestored = AlertRule::new(
        &serde_yaml::from_str("{alert: A, expr: up}").unwrap(),
        false,
    );
    unrestored.apply(0, vec![cand("a", 1.0)], 0).unwrap();
    assert!(unrestored.series().is_empty());
}

#[test]
fn sending_follows_needs_sending() {
    let mut r = rule("{alert: A, expr: up, for: 1m}");
    let delay = M;
    let interval = 30_000;
    r.apply(0, vec![cand("a", 1.0)], 0).unwrap();
    assert!(
        r.to_send(0, delay, interval, "").is_empty(),
        "pending: never sent"
    );
    r.apply(M, vec![cand("a", 1.0)], 0).unwrap();
    let sent = r.to_send(M, delay, interval, "http://x/");
    assert_eq!(sent.len(), 1);
    assert_eq!(sent[0].starts_at_ms, M, "StartsAt is FiredAt");
    assert_eq!(
        sent[0].ends_at_ms,
        M + 4 * M,
        "valid 4 × max(resend delay, interval)"
    );
    assert_eq!(sent[0].generator_url, "http://x/graph?g0.expr=up&g0.tab=1");
    // Not again until the resend delay has passed (strictly).
    r.apply(M + 30_000, vec![cand("a", 1.0)], 0).unwrap();
    assert!(r.to_send(M + 30_000, delay, interval, "").is_empty());
    r.apply(2 * M, vec![cand("a", 1.0)], 0).unwrap();
    assert!(
        r.to_send(2 * M, delay, interval, "").is_empty(),
        "LastSentAt + delay == ts"
    );
    r.apply(2 * M + 30_000, vec![cand("a", 1.0)], 0).unwrap();
    assert_eq!(r.to_send(2 * M + 30_000, delay, interval, "").len(), 1);
    // Resolved: sent at once with EndsAt = ResolvedAt, then again after each resend delay.
    r.apply(3 * M, vec![], 0).unwrap();
    let sent = r.to_send(3 * M, delay, interval, "");
    assert_eq!(sent.len(), 1);
    assert_eq!(sent[0].ends_at_ms, 3 * M);
    assert!(r.to_send(3 * M + 30_000, delay, interval, "").is_empty());
    assert_eq!(r.to_send(4 * M + 1, delay, interval, "").len(), 1);
}

#[test]
fn generator_url_escapes_as_go() {
    assert_eq!(
        generator_url("", r#"sum(rate(x{a="b c"}[5m])) > 0.5"#),
        "/graph?g0.expr=sum%28rate%28x%7Ba%3D%22b+c%22%7D%5B5m%5D%29%29+%3E+0.5&g0.tab=1"
    );
}

fn restored_after(
    hold: &str,
    active_at_s: f64,
    down_at_ms: i64,
    now: i64,
    grace: i64,
) -> (i64, bool) {
    let mut r = AlertRule::new(
        &serde_yaml::from_str(&format!("{{alert: A, expr: up, for: {hold}}}")).unwrap(),
        false,
    );
    r.apply(now - M, vec![cand("a", 1.0)], 0).unwrap();
    r.apply(now, vec![cand("a", 1.0)], 0).unwrap();
    let last = HashMap::from([(cand("a", 1.0).labels, (down_at_ms, active_at_s))]);
    r.restore(now, grace, &last);
    assert!(r.restored);
    (r.active_alerts()[0].active_at_ms, r.series().is_empty())
}

#[test]
fn for_state_restore_arithmetic() {
    let h = 60 * M;
    let grace = 10 * M;
    let now = 1000 * M;
    // Pending 20m of a 60m `for` when the old ruler went down 5m ago: 40m remain, more than
    // the grace period, so the 5m of outage are added to ActiveAt.
    let active = (now - 25 * M) / 1000;
    let (at, empty) = restored_after("1h", active as f64, now - 5 * M, now, grace);
    assert_eq!(at, now - 20 * M);
    assert!(!empty, "ALERTS written once restored");
    // Pending 55m: 5m remain, less than the grace period: fires at now + grace.
    let active = (now - 60 * M) / 1000;
    let (at, _) = restored_after("1h", active as f64, now - 5 * M, now, grace);
    assert_eq!(at, now + grace - h);
    // Was firing: ActiveAt restored as it was.
    let active = (now - 90 * M) / 1000;
    let (at, _) = restored_after("1h", active as f64, now - 5 * M, now, grace);
    assert_eq!(at, now - 90 * M);
    // A stale marker means the alert was not active.
    let (at, _) = restored_after(
        "1h",
        f64::from_bits(norn_model::STALE_NAN_BITS),
        now - 5 * M,
        now,
        grace,
    );
    assert_eq!(at, now - M);
    // `for` shorter than the grace period: nothing restored, the rule is just restored.
    let (at, empty) = restored_after("5m", ((now - 4 * M) / 1000) as f64, now - M, now, grace);
    assert_eq!(at, now - M);
    assert!(!empty);
}
