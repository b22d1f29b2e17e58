//! Conversions between the ingester service's messages and `norn_model` types, so the server
//! and the client speak the model and the generated types stay at the edge.

use norn_model::{
    ChunkSeries, Label, Labels, MatchType, Matcher, MatcherError, MetricMetadata, MetricType,
};

use crate::ingester::v1 as pb;

/// Metadata key that carries the tenant id on every ingester RPC (gRPC metadata keys are
/// lower case; this is the `X-Scope-OrgID` header's name).
pub const TENANT_METADATA_KEY: &str = "x-scope-orgid";

/// A message field could not be turned into a model value.
#[derive(Debug, thiserror::Error)]
pub enum ConvertError {
    #[error("unknown label matcher type {0}")]
    UnknownMatchType(i32),
    #[error(transparent)]
    Matcher(#[from] MatcherError),
}

pub fn matchers_to_proto(matchers: &[Matcher]) -> Vec<pb::LabelMatcher> {
    matchers
        .iter()
        .map(|m| pb::LabelMatcher {
            r#type: match m.kind {
                MatchType::Equal => pb::MatchType::Eq,
                MatchType::NotEqual => pb::MatchType::Neq,
                MatchType::Regex => pb::MatchType::Re,
                MatchType::NotRegex => pb::MatchType::Nre,
            } as i32,
            name: m.name.clone(),
            value: m.value.clone(),
        })
        .collect()
}

/// Builds model matchers (compiling regular expressions).
pub fn matchers_from_proto(matchers: Vec<pb::LabelMatcher>) -> Result<Vec<Matcher>, ConvertError> {
    matchers
        .into_iter()
        .map(|m| {
            let kind = match pb::MatchType::try_from(m.r#type) {
                Ok(pb::MatchType::Eq) => MatchType::Equal,
                Ok(pb::MatchType::Neq) => MatchType::NotEqual,
                Ok(pb::MatchType::Re) => MatchType::Regex,
                Ok(pb::MatchType::Nre) => MatchType::NotRegex,
                Err(_) => return Err(ConvertError::UnknownMatchType(m.r#type)),
            };
            Ok(Matcher::new(kind, m.name, m.value)?)
        })
        .collect()
}

pub fn labels_to_proto(labels: &Labels) -> Vec<pb::Label> {
    labels
        .iter()
        .map(|l| pb::Label {
            name: l.name.clone(),
            value: l.value.clone(),
        })
        .collect()
}

/// A label set into its message form, moving the strings: the streaming read paths build one
/// message per series and own their labels, so copying each name and value again only fed the
/// allocator.
pub fn labels_into_proto(labels: Labels) -> Vec<pb::Label> {
    labels
        .into_vec()
        .into_iter()
        .map(|l| pb::Label {
            name: l.name,
            value: l.value,
        })
        .collect()
}

/// One series of a chunk stream (`QueryStream`, the store-gateway's `Series`) as its message,
/// moving labels and chunk bytes rather than copying them.
pub fn chunk_series_into_proto(s: ChunkSeries) -> pb::StreamSeries {
    pb::StreamSeries {
        labels: labels_into_proto(s.labels),
        chunks: s
            .chunks
            .into_iter()
            .map(|c| pb::Chunk {
                min_time_ms: c.min_t,
                max_time_ms: c.max_t,
                encoding: i32::from(c.encoding),
                data: c.data,
            })
            .collect(),
    }
}

/// Labels from a message; sorted here rather than trusted to arrive sorted.
pub fn labels_from_proto(labels: Vec<pb::Label>) -> Labels {
    Labels::new(
        labels
            .into_iter()
            .map(|l| Label::new(l.name, l.value))
            .collect(),
    )
}

pub fn metadata_to_proto(m: &MetricMetadata) -> pb::MetricMetadata {
    pb::MetricMetadata {
        r#type: metric_type_to_proto(m.metric_type),
        metric_family_name: m.metric_family_name.clone(),
        help: m.help.clone(),
        unit: m.unit.clone(),
    }
}

pub fn metadata_from_proto(m: pb::MetricMetadata) -> MetricMetadata {
    MetricMetadata {
        metric_family_name: m.metric_family_name,
        metric_type: MetricType::from_proto(m.r#type),
        help: m.help,
        unit: m.unit,
    }
}

/// The `prometheus.MetricMetadata.MetricType` number (the inverse of `MetricType::from_proto`).
pub fn metric_type_to_proto(t: MetricType) -> i32 {
    match t {
        MetricType::Unknown => 0,
        MetricType::Counter => 1,
        MetricType::Gauge => 2,
        MetricType::Histogram => 3,
        MetricType::GaugeHistogram => 4,
        MetricType::Summary => 5,
        MetricType::Info => 6,
        MetricType::StateSet => 7,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matchers_round_trip() {
        let ms = vec![
            Matcher::new(MatchType::Equal, "a", "1").unwrap(),
            Matcher::new(MatchType::NotEqual, "b", "2").unwrap(),
            Matcher::new(MatchType::Regex, "c", "x|y").unwrap(),
            Matcher::new(MatchType::NotRegex, "d", ".+").unwrap(),
        ];
        assert_eq!(matchers_from_proto(matchers_to_proto(&ms)).unwrap(), ms);
    }

    #[test]
    fn bad_matchers_are_errors() {
        let bad_type = pb::LabelMatcher {
            r#type: 9,
            name: "a".into(),
            value: "b".into(),
        };
        assert!(matches!(
            matchers_from_proto(vec![bad_type]),
            Err(ConvertError::UnknownMatchType(9))
        ));
        let bad_re = pb::LabelMatcher {
            r#type: pb::MatchType::Re as i32,
            name: "a".into(),
            value: "(".into(),
        };
        assert!(matches!(
            matchers_from_proto(vec![bad_re]),
            Err(ConvertError::Matcher(_))
        ));
    }

    #[test]
    fn metric_types_round_trip() {
        for n in 0..8 {
            assert_eq!(metric_type_to_proto(MetricType::from_proto(n)), n);
        }
    }

    #[test]
    fn labels_come_back_sorted() {
        let l = labels_from_proto(vec![
            pb::Label {
                name: "z".into(),
                value: "1".into(),
            },
            pb::Label {
                name: "a".into(),
                value: "2".into(),
            },
        ]);
        assert_eq!(l, Labels::from_pairs([("a", "2"), ("z", "1")]));
        assert_eq!(labels_from_proto(labels_to_proto(&l)), l);
        assert_eq!(labels_into_proto(l.clone()), labels_to_proto(&l));
    }
}
