//! Templates as Prometheus expands them.

use super::*;

fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn expand_with(text: &str, value: f64, query: &mut QueryFn<'_>) -> String {
    let l = labels(&[("job", "api"), ("instance", "host-1.example.com:9100")]);
    let ext = labels(&[("cluster", "eu1")]);
    let t = Template::parse("HighLoad", text).unwrap_or_else(|e| panic!("{text}: {e}"));
    t.expand(
        &AlertData {
            labels: &l,
            external_labels: &ext,
            external_url: "http://norn.example/prometheus",
            value,
        },
        query,
    )
}

fn expand(text: &str, value: f64) -> String {
    expand_with(text, value, &mut |_| Err("no queries here".to_string()))
}

#[test]
fn variables_fields_and_values() {
    assert_eq!(expand("{{ $labels.job }} is down", 1.0), "api is down");
    assert_eq!(
        expand("{{ .Labels.job }}/{{ $externalLabels.cluster }}", 1.0),
        "api/eu1"
    );
    assert_eq!(expand("v={{ $value }}", 0.5), "v=0.5");
    assert_eq!(expand("v={{ .Value }}", 1234567.0), "v=1.234567e+06");
    assert_eq!(expand("{{ $labels.missing }}", 1.0), "<no value>");
    assert_eq!(expand("{{$x := 3}}{{$x}}{{$x = \"y\"}}{{$x}}", 1.0), "3y");
    assert_eq!(expand("plain text", 1.0), "plain text");
    assert_eq!(expand("a  {{- \" b \" -}}  c", 1.0), "a b c");
    assert_eq!(expand("a{{/* comment */}}b", 1.0), "ab");
    assert_eq!(
        expand("{{ $externalURL }}", 1.0),
        "http://norn.example/prometheus"
    );
}

#[test]
fn control_structures() {
    let t = "{{ if gt $value 80.0 }}high{{ else if gt $value 50.0 }}mid{{ else }}low{{ end }}";
    assert_eq!(expand(t, 90.0), "high");
    assert_eq!(expand(t, 60.0), "mid");
    assert_eq!(expand(t, 10.0), "low");
    assert_eq!(
        expand("{{ range $k, $v := $labels }}{{$k}}={{$v}};{{ end }}", 1.0),
        "instance=host-1.example.com:9100;job=api;"
    );
    assert_eq!(
        expand("{{ with $labels.job }}job {{ . }}{{ end }}", 1.0),
        "job api"
    );
    assert_eq!(
        expand("{{ with $labels.nope }}x{{ else }}none{{ end }}", 1.0),
        "none"
    );
    assert_eq!(
        expand(
            "{{ if and (eq $labels.job \"api\") (not false) }}yes{{ end }}",
            1.0
        ),
        "yes"
    );
    assert_eq!(
        expand("{{ range $labels }}{{ . }},{{ end }}", 1.0),
        "host-1.example.com:9100,api,"
    );
}

#[test]
fn pipelines_and_functions() {
    assert_eq!(expand("{{ $value | humanize }}", 1234567.0), "1.235M");
    assert_eq!(expand("{{ humanize1024 1048576 }}", 0.0), "1Mi");
    assert_eq!(
        expand("{{ $value | humanizeDuration }}", 3661.0),
        "1h 1m 1s"
    );
    assert_eq!(expand("{{ humanizePercentage $value }}", 0.1234), "12.34%");
    assert_eq!(
        expand("{{ humanizeTimestamp $value }}", 1_700_000_000.0),
        "2023-11-14 22:13:20 +0000 UTC"
    );
    assert_eq!(expand("{{ printf \"%.2f\" $value }}", 1.23456), "1.23");
    assert_eq!(
        expand(
            "{{ $labels.job | toUpper }} {{ toLower \"AbC\" }} {{ title \"hello world\" }}",
            1.0
        ),
        "API abc Hello World"
    );
    assert_eq!(
        expand(
            "{{ reReplaceAll \"(.*):.*\" \"$1\" $labels.instance }}",
            1.0
        ),
        "host-1.example.com"
    );
    assert_eq!(
        expand("{{ if match \"^host-\" $labels.instance }}m{{ end }}", 1.0),
        "m"
    );
    assert_eq!(
        expand(
            "{{ $labels.instance | stripPort }} {{ stripDomain $labels.instance }}",
            1.0
        ),
        "host-1.example.com host-1:9100"
    );
    assert_eq!(
        expand("{{ \"up == 0\" | tableLink }}", 1.0),
        "/graph?g0.expr=up+%3D%3D+0&g0.tab=1"
    );
    assert_eq!(expand("{{ pathPrefix }}", 1.0), "/prometheus");
    assert_eq!(expand("{{ len $labels }}", 1.0), "2");
    assert_eq!(expand("{{ index $labels \"job\" }}", 1.0), "api");
    assert_eq!(expand("{{ parseDuration \"1m30s\" }}", 1.0), "90");
}

#[test]
fn query_first_value_label() {
    let mut calls = Vec::new();
    let out = expand_with(
        "{{ with query \"sum by (job) (up)\" }}{{ . | first | value | humanize }} {{ (first .).Labels.job }} {{ label \"job\" (first .) }}{{ end }}|{{ range query \"x\" }}{{ .Value }};{{ end }}",
        1.0,
        &mut |q| {
            calls.push(q.to_string());
            Ok(vec![
                (labels(&[("job", "api")]), 2500.0),
                (labels(&[("job", "db")]), 3.0),
            ])
        },
    );
    assert_eq!(out, "2.5k api api|2500;3;");
    assert_eq!(calls, ["sum by (job) (up)", "x"]);
    // An empty result: `first` fails, as in Prometheus.
    let out = expand_with("{{ query \"nothing\" | first | value }}", 1.0, &mut |_| {
        Ok(Vec::new())
    });
    assert!(
        out.starts_with("<error expanding template: error executing template __alert_HighLoad:"),
        "{out}"
    );
    assert!(
        out.contains("first() called on vector with no elements"),
        "{out}"
    );
}

#[test]
fn execution_errors_become_prometheus_text() {
    let out = expand("{{ humanize \"not a number\" }}", 1.0);
    assert!(out.starts_with("<error expanding template: "), "{out}");
    assert!(out.ends_with('>'), "{out}");
    let out = expand("{{ $labels.job.deeper.still }}", 1.0);
    assert!(out.contains("can't evaluate field deeper"), "{out}");
    // Output is bounded.
    let big = "{{ range $i, $x := query \"q\" }}0123456789012345678901234567890123456789{{ end }}";
    let out = expand_with(big, 1.0, &mut |_| Ok(vec![(BTreeMap::new(), 1.0); 5000]));
    assert!(out.contains("exceeds"), "{}", &out[..out.len().min(200)]);
}

#[test]
fn parse_errors_are_refused() {
    for (text, want) in [
        ("{{ $labels.job ", "unclosed action"),
        ("{{ nosuchfunc 1 }}", "function \"nosuchfunc\" not defined"),
        ("{{ $undefined }}", "undefined variable \"$undefined\""),
        ("{{ if true }}x", "unexpected EOF"),
        ("{{ end }}", "unexpected {{end}}"),
        ("{{ \"unterminated }}", "unterminated quoted string"),
        ("{{ template \"x\" }}", "not supported"),
        ("{{ (1 }}", "paren"),
    ] {
        let e = Template::parse("A", text).unwrap_err();
        assert!(
            e.starts_with("error parsing template __alert_A: template: __alert_A:1:"),
            "{e}"
        );
        assert!(e.contains(want), "{text}: {e}");
    }
    // Nesting is bounded.
    let deep = "{{ if true }}".repeat(200) + &"{{ end }}".repeat(200);
    assert!(
        Template::parse("A", &deep)
            .unwrap_err()
            .contains("nested too deeply")
    );
}
