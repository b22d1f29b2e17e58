//! The frontend client against a small HTTP server on 127.0.0.1 that answers as a
//! query-frontend would (canned Prometheus JSON per query).

use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::extract::{Form, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use norn_model::MatchType;
use parking_lot::Mutex;

use super::*;

/// What the server saw: (tenant header, form fields) per request.
type Seen = Arc<Mutex<Vec<(String, std::collections::HashMap<String, String>)>>>;

async fn answer(
    State(seen): State<Seen>,
    headers: HeaderMap,
    Form(f): Form<std::collections::HashMap<String, String>>,
) -> Response {
    let tenant = headers
        .get("x-scope-orgid")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    let q = f.get("query").cloned().unwrap_or_default();
    seen.lock().push((tenant, f));
    let json = |status: StatusCode, body: &str| {
        (
            status,
            [("content-type", "application/json")],
            body.to_string(),
        )
            .into_response()
    };
    match q.as_str() {
        "vec" => json(
            StatusCode::OK,
            r#"{"status":"success","data":{"resultType":"vector","result":[
                {"metric":{"job":"a","__name__":"up"},"value":[1700000000.123,"0.1"]},
                {"metric":{"job":"b"},"value":[1700000000.123,"NaN"]},
                {"metric":{"job":"c"},"value":[1700000000.123,"+Inf"]},
                {"metric":{"job":"d"},"value":[1700000000.123,"-Inf"]},
                {"metric":{},"value":[1700000000,"1e-300"]}]}}"#,
        ),
        "scalar" => json(
            StatusCode::OK,
            r#"{"status":"success","data":{"resultType":"scalar","result":[1700000000.5,"1.5"]}}"#,
        ),
        "string" => json(
            StatusCode::OK,
            r#"{"status":"success","data":{"resultType":"string","result":[1700000000.5,"hi"]}}"#,
        ),
        "bad" => json(
            StatusCode::UNPROCESSABLE_ENTITY,
            r#"{"status":"error","errorType":"execution","error":"query processing would load too many samples into memory"}"#,
        ),
        "garbage" => json(StatusCode::OK, "not json"),
        "proxy" => (StatusCode::BAD_GATEWAY, "upstream gone").into_response(),
        "huge" => {
            // Chunked (no length announced): the client must stop reading past the bound.
            let chunk = bytes::Bytes::from(vec![b' '; 1 << 20]);
            let n = MAX_RESPONSE_BYTES / (1 << 20) + 2;
            let s =
                futures::stream::iter((0..n).map(move |_| Ok::<_, std::io::Error>(chunk.clone())));
            (StatusCode::OK, Body::from_stream(s)).into_response()
        }
        "hang" => {
            std::future::pending::<()>().await;
            unreachable!()
        }
        _ if q.starts_with('{') => json(
            StatusCode::OK,
            r#"{"status":"success","data":{"resultType":"matrix","result":[
                {"metric":{"__name__":"ALERTS_FOR_STATE","alertname":"A","x":"1"},
                 "values":[[1699999990,"1699999000"],[1700000000,"1699999500"]]}]}}"#,
        ),
        _ => json(StatusCode::BAD_REQUEST, "{}"),
    }
}

/// A server on an ephemeral port, and a client of it with `prefix` as the base path.
async fn serve(prefix: &str, timeout: Duration) -> (FrontendQuerier, Seen) {
    let seen: Seen = Arc::default();
    let app = Router::new()
        .route(&format!("{prefix}/prometheus/api/v1/query"), post(answer))
        .with_state(Arc::clone(&seen));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    let base = reqwest::Url::parse(&format!("http://{addr}{prefix}")).unwrap();
    (FrontendQuerier::new(base, timeout, None).unwrap(), seen)
}

fn tenant() -> TenantId {
    TenantId::new("team-a").unwrap()
}

#[tokio::test]
async fn vectors_scalars_and_strings_are_decoded_exactly() {
    let (q, seen) = serve("", Duration::from_secs(30)).await;
    let Value::Vector(v) = q
        .instant(&tenant(), "vec", 1_700_000_000_123)
        .await
        .unwrap()
    else {
        panic!("not a vector")
    };
    assert_eq!(v.len(), 5);
    assert_eq!(
        v[0].labels,
        Labels::from_pairs([("__name__", "up"), ("job", "a")])
    );
    assert_eq!(v[0].t, 1_700_000_000_123);
    assert_eq!(v[0].v.to_bits(), 0.1f64.to_bits());
    assert!(v[1].v.is_nan());
    assert_eq!(v[2].v, f64::INFINITY);
    assert_eq!(v[3].v, f64::NEG_INFINITY);
    assert_eq!(v[4].labels, Labels::empty());
    assert_eq!(v[4].t, 1_700_000_000_000);
    assert_eq!(v[4].v.to_bits(), 1e-300f64.to_bits());

    assert_eq!(
        q.instant(&tenant(), "scalar", 0).await.unwrap(),
        Value::Scalar {
            t: 1_700_000_000_500,
            v: 1.5
        }
    );
    assert_eq!(
        q.instant(&tenant(), "string", 0).await.unwrap(),
        Value::String {
            t: 1_700_000_000_500,
            v: "hi".into()
        }
    );

    // The request: the tenant's header, the time in seconds with ms, the timeout.
    let seen = seen.lock();
    let (t, form) = &seen[0];
    assert_eq!(t, "team-a");
    assert_eq!(form["query"], "vec");
    assert_eq!(form["time"], "1700000000.123");
    assert_eq!(form["timeout"], "30000ms");
}

#[tokio::test]
async fn the_restore_read_is_a_range_query_answered_with_a_matrix() {
    let (q, seen) = serve("/prefix", Duration::from_secs(5)).await;
    let matchers = [
        Matcher::equal("__name__", "ALERTS_FOR_STATE"),
        Matcher::equal("alertname", "A"),
        Matcher::equal("sev", "a \"b\"\\"),
    ];
    let m = q
        .select(
            &tenant(),
            1_700_000_000_000 - 3_600_000,
            1_700_000_000_000,
            &matchers,
        )
        .await
        .unwrap();
    assert_eq!(m.len(), 1);
    assert_eq!(
        m[0].labels,
        Labels::from_pairs([
            ("__name__", "ALERTS_FOR_STATE"),
            ("alertname", "A"),
            ("x", "1")
        ])
    );
    assert_eq!(
        m[0].samples,
        vec![
            Sample::new(1_699_999_990_000, 1_699_999_000.0),
            Sample::new(1_700_000_000_000, 1_699_999_500.0)
        ]
    );
    let seen = seen.lock();
    assert_eq!(
        seen[0].1["query"],
        r#"{__name__="ALERTS_FOR_STATE",alertname="A",sev="a \"b\"\\"}[3600000ms]"#
    );
    assert_eq!(seen[0].1["time"], "1700000000.000");
}

#[tokio::test]
async fn errors_become_the_rules_error_text() {
    let (q, _) = serve("", Duration::from_secs(5)).await;
    let e = q.instant(&tenant(), "bad", 0).await.unwrap_err();
    assert_eq!(
        e,
        "execution: query processing would load too many samples into memory"
    );
    let e = q.instant(&tenant(), "garbage", 0).await.unwrap_err();
    assert!(e.contains("unexpected answer"), "{e}");
    let e = q.instant(&tenant(), "proxy", 0).await.unwrap_err();
    assert!(e.contains("502") && e.contains("upstream gone"), "{e}");
    // The restore read must get a matrix.
    let e = q
        .select(&tenant(), 0, 1_000, &[Matcher::equal("a", "b")])
        .await
        .unwrap();
    assert_eq!(e.len(), 1);
    let e = q.instant(&tenant(), "scalar", 0).await.unwrap();
    assert!(matches!(e, Value::Scalar { .. }));
}

#[tokio::test]
async fn oversized_answers_are_refused_while_reading() {
    let (q, _) = serve("", Duration::from_secs(60)).await;
    let e = q.instant(&tenant(), "huge", 0).await.unwrap_err();
    assert!(e.contains("larger than"), "{e}");
}

#[tokio::test]
async fn no_answer_within_the_timeout_and_no_server_are_errors() {
    let (q, _) = serve("", Duration::from_millis(200)).await;
    let e = q.instant(&tenant(), "hang", 0).await.unwrap_err();
    assert!(e.contains("query-frontend"), "{e}");

    // A port nothing listens on.
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    drop(l);
    let q = FrontendQuerier::new(
        reqwest::Url::parse(&format!("http://{addr}")).unwrap(),
        Duration::from_secs(5),
        None,
    )
    .unwrap();
    let e = q.instant(&tenant(), "vec", 0).await.unwrap_err();
    assert!(e.contains("query-frontend"), "{e}");
}

#[test]
fn values_times_and_selectors_are_written_as_prometheus_reads_them() {
    assert_eq!(format_time(1_700_000_000_123), "1700000000.123");
    assert_eq!(format_time(5), "0.005");
    assert_eq!(format_time(-1500), "-1.500");
    assert_eq!(parse_value("1.5").unwrap(), 1.5);
    assert!(parse_value("NaN").unwrap().is_nan());
    assert_eq!(parse_value("+Inf").unwrap(), f64::INFINITY);
    assert_eq!(parse_value("-Inf").unwrap(), f64::NEG_INFINITY);
    assert!(parse_value("x").is_err());
    let m = [
        Matcher::equal("__name__", "m"),
        Matcher::new(MatchType::NotEqual, "a.b", "v\n").unwrap(),
    ];
    assert_eq!(
        range_selector(&m, 60_000),
        r#"{__name__="m","a.b"!="v\n"}[60000ms]"#
    );
}

/// An `https://` query-frontend that requires client certificates: rule queries with the CA
/// and a client certificate (`ruler.query_frontend.grpc_client_config.tls_*`) are answered;
/// without the certificate they fail with an error naming the frontend.
#[tokio::test]
async fn an_https_frontend_with_mtls() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    if !crate::test_pki::make_pki(d, &["qf", "ruler"]) {
        eprintln!("SKIP: no openssl CLI");
        return;
    }
    let path = |f: &str| d.join(f).display().to_string();
    let server = norn_server::tls::ServerTlsSettings {
        cert_file: path("qf.crt"),
        key_file: path("qf.key"),
        client_ca_file: path("ca.crt"),
        client_auth_type: String::new(),
    }
    .load(
        "qf",
        &[b"http/1.1"],
        &norn_server::tls::TlsMetrics::unregistered(),
    )
    .unwrap();
    let seen: Seen = Arc::default();
    let app = Router::new()
        .route("/prometheus/api/v1/query", post(answer))
        .with_state(Arc::clone(&seen));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = reqwest::Url::parse(&format!("https://{}", listener.local_addr().unwrap())).unwrap();
    tokio::spawn(norn_server::serve::serve_with_tls(
        listener,
        app,
        tokio_util::sync::CancellationToken::new(),
        norn_server::ServerOptions::default(),
        norn_server::Metrics::new(),
        Some(server),
    ));
    let settings = norn_server::tls::ClientTlsSettings {
        tls_enabled: true,
        tls_ca_path: path("ca.crt"),
        tls_cert_path: path("ruler.crt"),
        tls_key_path: path("ruler.key"),
        ..Default::default()
    };
    let tls = settings.rustls_config(&[b"http/1.1"]).unwrap();
    let q = FrontendQuerier::new(base.clone(), Duration::from_secs(10), tls).unwrap();
    let Value::Vector(v) = q
        .instant(&tenant(), "vec", 1_700_000_000_000)
        .await
        .unwrap()
    else {
        panic!("not a vector")
    };
    assert_eq!(v.len(), 5);
    assert_eq!(seen.lock().len(), 1);

    let no_cert = norn_server::tls::ClientTlsSettings {
        tls_cert_path: String::new(),
        tls_key_path: String::new(),
        ..settings
    };
    let q = FrontendQuerier::new(
        base,
        Duration::from_secs(10),
        no_cert.rustls_config(&[b"http/1.1"]).unwrap(),
    )
    .unwrap();
    let e = q
        .instant(&tenant(), "vec", 1_700_000_000_000)
        .await
        .unwrap_err();
    assert!(e.contains("query-frontend"), "{e}");
    assert_eq!(seen.lock().len(), 1);
}
