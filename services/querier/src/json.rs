//! Prometheus' JSON shapes of query results, written by hand for speed and exactness (the
//! shared pieces are `norn_server::prom_json`'s, re-exported).
//!
//! Timestamps are seconds with up to three decimals (`1435781451.781`), values are strings in
//! Go's shortest round-trip `'f'` format (`"1"`, `"0.1"`, `"NaN"`, `"+Inf"`), and `warnings`
//! and `infos` appear only when non-empty — exactly what Grafana's Prometheus data source and
//! Prometheus' own clients parse.

use norn_promql::{QueryResult, Value};
pub use norn_server::prom_json::{
    format_value, string_array, success, write_annotations, write_labels, write_str,
    write_timestamp, write_value,
};

fn write_point(out: &mut String, t: i64, v: f64) {
    out.push('[');
    write_timestamp(out, t);
    out.push(',');
    // Straight into the output: a number, `NaN` or `±Inf` never needs escaping, and a point
    // is the bulk of a range-query response.
    out.push('"');
    write_value(out, v);
    out.push_str("\"]");
}

/// The whole success envelope of `query` / `query_range`.
pub fn query_response(r: &QueryResult) -> String {
    let mut out = String::with_capacity(256);
    out.push_str("{\"status\":\"success\",\"data\":{\"resultType\":");
    match &r.value {
        Value::Scalar { t, v } => {
            out.push_str("\"scalar\",\"result\":");
            write_point(&mut out, *t, *v);
        }
        Value::String { t, v } => {
            out.push_str("\"string\",\"result\":[");
            write_timestamp(&mut out, *t);
            out.push(',');
            write_str(&mut out, v);
            out.push(']');
        }
        Value::Vector(samples) => {
            out.push_str("\"vector\",\"result\":[");
            for (i, s) in samples.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str("{\"metric\":");
                write_labels(&mut out, &s.labels);
                out.push_str(",\"value\":");
                write_point(&mut out, s.t, s.v);
                out.push('}');
            }
            out.push(']');
        }
        Value::Matrix(series) => {
            out.push_str("\"matrix\",\"result\":[");
            for (i, s) in series.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str("{\"metric\":");
                write_labels(&mut out, &s.labels);
                out.push_str(",\"values\":[");
                for (j, p) in s.samples.iter().enumerate() {
                    if j > 0 {
                        out.push(',');
                    }
                    write_point(&mut out, p.t, p.v);
                }
                out.push_str("]}");
            }
            out.push(']');
        }
    }
    out.push('}');
    write_annotations(&mut out, &r.warnings, &r.infos);
    out.push('}');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn points_render_values_as_format_value_does() {
        for v in [
            0.0,
            -0.0,
            1.5,
            -2.25e-300,
            1e21,
            123456789.125,
            f64::NAN,
            f64::INFINITY,
            f64::NEG_INFINITY,
        ] {
            let mut out = String::new();
            write_point(&mut out, 1_500, v);
            let mut ts = String::new();
            write_timestamp(&mut ts, 1_500);
            assert_eq!(out, format!("[{ts},\"{}\"]", format_value(v)));
        }
    }
    use norn_model::{Labels, Sample, Series};
    use norn_promql::VectorSample;

    #[test]
    fn timestamps_like_prometheus() {
        let f = |t| {
            let mut s = String::new();
            write_timestamp(&mut s, t);
            s
        };
        assert_eq!(f(1_435_781_451_781), "1435781451.781");
        assert_eq!(f(1000), "1");
        assert_eq!(f(1005), "1.005");
        assert_eq!(f(1100), "1.100");
        assert_eq!(f(-1500), "-1.500");
    }

    #[test]
    fn values_like_go_format_float() {
        assert_eq!(format_value(1.0), "1");
        assert_eq!(format_value(0.1), "0.1");
        assert_eq!(format_value(1e21), "1000000000000000000000");
        assert_eq!(format_value(1e-7), "0.0000001");
        assert_eq!(format_value(f64::NAN), "NaN");
        assert_eq!(format_value(f64::INFINITY), "+Inf");
        assert_eq!(format_value(f64::NEG_INFINITY), "-Inf");
        assert_eq!(format_value(-0.0), "-0");
    }

    #[test]
    fn golden_vector_matrix_scalar() {
        let labels = Labels::from_pairs([("__name__", "up"), ("job", "a\"b")]);
        let v = QueryResult {
            value: Value::Vector(vec![VectorSample {
                labels: labels.clone(),
                t: 1500,
                v: 1.0,
            }]),
            warnings: vec![],
            infos: vec![],
            stats: Default::default(),
        };
        assert_eq!(
            query_response(&v),
            r#"{"status":"success","data":{"resultType":"vector","result":[{"metric":{"__name__":"up","job":"a\"b"},"value":[1.500,"1"]}]}}"#
        );
        let m = QueryResult {
            value: Value::Matrix(vec![Series {
                labels,
                samples: vec![Sample::new(0, 2.5), Sample::new(15000, f64::NAN)],
            }]),
            warnings: vec!["w".into()],
            infos: vec![],
            stats: Default::default(),
        };
        assert_eq!(
            query_response(&m),
            r#"{"status":"success","data":{"resultType":"matrix","result":[{"metric":{"__name__":"up","job":"a\"b"},"values":[[0,"2.5"],[15,"NaN"]]}]},"warnings":["w"]}"#
        );
        let s = QueryResult {
            value: Value::Scalar { t: 1000, v: 3.0 },
            warnings: vec![],
            infos: vec![],
            stats: Default::default(),
        };
        assert_eq!(
            query_response(&s),
            r#"{"status":"success","data":{"resultType":"scalar","result":[1,"3"]}}"#
        );
    }
}
