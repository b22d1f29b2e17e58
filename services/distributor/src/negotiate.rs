//! Which remote-write version a push speaks, decoding it, and the `…-Written` response headers.
//!
//! The remote-write 2.0 specification makes the `Content-Type` header the only thing that
//! picks the message: `application/x-protobuf` (or an empty Content-Type) and
//! `…;proto=prometheus.WriteRequest` are 1.0, `…;proto=io.prometheus.write.v2.Request` is 2.0.
//! Anything else gets 415 with a body naming what is accepted, and so does a
//! `Content-Encoding` other than snappy (a missing one is taken as snappy, as 1.0 senders
//! have always meant it). Guessing instead is how a 2.0 body used to be read as an empty 1.0
//! request and acknowledged with 200: the decoders now also refuse a body that has bytes but
//! not one field of the message it was read as.
//!
//! Both versions decode into the same [`WriteBatch`], so everything after decoding
//! (validation, HA dedup, limits, replication) is one code path. What 2.0 can carry but Norn
//! does not store yet (native histograms, exemplars) is counted by the decoder and refused by
//! the distributor as a partial write: the float samples are stored and the reply is 400
//! saying what was not. The three `X-Prometheus-Remote-Write-*-Written` headers report what
//! was stored, on every reply to a push, whatever its version or status.

use axum::http::{HeaderMap, HeaderValue};
use norn_model::{ErrorKind, WriteBatch};
use norn_proto::DecodeError;
use norn_server::HttpError;

/// The message a push carries, chosen by its Content-Type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// `prometheus.WriteRequest` (remote write 1.0).
    V1,
    /// `io.prometheus.write.v2.Request` (remote write 2.0).
    V2,
}

/// The protobuf message name of remote write 1.0.
pub const V1_MESSAGE: &str = "prometheus.WriteRequest";

/// What the 415 body lists as accepted.
const ACCEPTED: &str = "accepted: Content-Type application/x-protobuf with proto=prometheus.WriteRequest (remote write 1.0, also the default when proto= is absent) or proto=io.prometheus.write.v2.Request (remote write 2.0), and Content-Encoding snappy";

impl Protocol {
    /// The protobuf message name, as `proto=` spells it.
    pub fn message(self) -> &'static str {
        match self {
            Protocol::V1 => V1_MESSAGE,
            Protocol::V2 => norn_proto::V2_MESSAGE,
        }
    }
}

fn unsupported(what: String) -> HttpError {
    HttpError::new(
        ErrorKind::UnsupportedMediaType,
        format!("{what}; {ACCEPTED}"),
    )
}

/// Picks the protocol from `Content-Type` and checks `Content-Encoding` (415 when either is
/// not one Norn accepts).
pub fn negotiate(headers: &HeaderMap) -> Result<Protocol, HttpError> {
    if let Some(enc) = headers.get("content-encoding") {
        let enc = enc.to_str().unwrap_or("<not ASCII>").trim();
        if !enc.is_empty() && !enc.eq_ignore_ascii_case("snappy") {
            return Err(unsupported(format!("unsupported Content-Encoding {enc:?}")));
        }
    }
    let Some(ct) = headers.get("content-type") else {
        return Ok(Protocol::V1);
    };
    let ct = ct
        .to_str()
        .map_err(|_| unsupported("Content-Type is not ASCII".into()))?;
    protocol_of_content_type(ct)
}

/// The protocol a Content-Type value names (an empty value is `application/x-protobuf`).
pub fn protocol_of_content_type(ct: &str) -> Result<Protocol, HttpError> {
    let mut parts = ct.split(';');
    let media = parts.next().unwrap_or("").trim();
    if !media.is_empty() && !media.eq_ignore_ascii_case("application/x-protobuf") {
        return Err(unsupported(format!("unsupported Content-Type {ct:?}")));
    }
    let mut proto = None;
    for p in parts {
        let Some((k, v)) = p.split_once('=') else {
            continue;
        };
        if k.trim().eq_ignore_ascii_case("proto") {
            proto = Some(v.trim().trim_matches('"'));
        }
    }
    match proto {
        None => Ok(Protocol::V1),
        Some(V1_MESSAGE) => Ok(Protocol::V1),
        Some(m) if m == norn_proto::V2_MESSAGE => Ok(Protocol::V2),
        Some(m) => Err(unsupported(format!(
            "unsupported remote write message proto={m:?} in Content-Type {ct:?}"
        ))),
    }
}

/// Decompresses and decodes a push body of `protocol` (CPU-bound: callers keep big bodies off
/// the async reactor).
pub fn decode(protocol: Protocol, body: &[u8], limit: usize) -> Result<WriteBatch, HttpError> {
    let decoded = norn_proto::decompress_snappy(body, limit).and_then(|raw| match protocol {
        Protocol::V1 => norn_proto::decode_write_request(raw.into()),
        Protocol::V2 => norn_proto::decode_write_request_v2(raw.into()),
    });
    decoded.map_err(|e| match e {
        DecodeError::TooLarge { .. } => HttpError::new(ErrorKind::PayloadTooLarge, e.to_string()),
        other => HttpError::bad_data(other.to_string()),
    })
}

/// What a push stored, for the `X-Prometheus-Remote-Write-*-Written` response headers.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Written {
    pub samples: u64,
    pub histograms: u64,
    pub exemplars: u64,
}

pub const SAMPLES_WRITTEN: &str = "x-prometheus-remote-write-samples-written";
pub const HISTOGRAMS_WRITTEN: &str = "x-prometheus-remote-write-histograms-written";
pub const EXEMPLARS_WRITTEN: &str = "x-prometheus-remote-write-exemplars-written";

impl Written {
    /// Sets the three headers (2.0 senders MUST get them on every reply; 1.0 senders ignore
    /// them).
    pub fn set_headers(self, headers: &mut HeaderMap) {
        for (name, n) in [
            (SAMPLES_WRITTEN, self.samples),
            (HISTOGRAMS_WRITTEN, self.histograms),
            (EXEMPLARS_WRITTEN, self.exemplars),
        ] {
            headers.insert(name, HeaderValue::from(n));
        }
    }
}

/// The 400 message for what a batch carried that Norn does not store, if anything.
pub fn not_stored_message(batch: &WriteBatch) -> Option<String> {
    let (h, e) = (batch.skipped_histograms, batch.skipped_exemplars);
    if h == 0 && e == 0 {
        return None;
    }
    Some(format!(
        "partial write: {h} native histogram samples and {e} exemplars in this request were not written (Norn does not store native histograms or exemplars yet); the float samples were processed as usual"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hm(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, HeaderValue::from_static(v));
        }
        h
    }

    #[test]
    fn content_type_picks_the_version() {
        for (ct, want) in [
            ("application/x-protobuf", Protocol::V1),
            ("", Protocol::V1),
            (
                "application/x-protobuf;proto=prometheus.WriteRequest",
                Protocol::V1,
            ),
            (
                "application/x-protobuf;proto=io.prometheus.write.v2.Request",
                Protocol::V2,
            ),
            (
                "Application/X-Protobuf; proto=\"io.prometheus.write.v2.Request\"",
                Protocol::V2,
            ),
        ] {
            assert_eq!(protocol_of_content_type(ct).unwrap(), want, "{ct}");
        }
        assert_eq!(negotiate(&HeaderMap::new()).unwrap(), Protocol::V1);
    }

    #[test]
    fn unknown_messages_types_and_encodings_are_415() {
        for h in [
            hm(&[(
                "content-type",
                "application/x-protobuf;proto=io.prometheus.write.v3.Request",
            )]),
            hm(&[("content-type", "application/json")]),
            hm(&[("content-encoding", "gzip")]),
            hm(&[
                ("content-encoding", "zstd"),
                ("content-type", "application/x-protobuf"),
            ]),
        ] {
            let e = negotiate(&h).unwrap_err();
            assert_eq!(e.kind.http_status(), 415, "{h:?}");
            assert!(
                e.message.contains("io.prometheus.write.v2.Request"),
                "{}",
                e.message
            );
            assert!(
                e.message.contains("prometheus.WriteRequest"),
                "{}",
                e.message
            );
        }
        assert!(negotiate(&hm(&[("content-encoding", "SNAPPY")])).is_ok());
    }

    #[test]
    fn written_headers_are_decimal() {
        let mut h = HeaderMap::new();
        Written {
            samples: 12,
            histograms: 0,
            exemplars: 3,
        }
        .set_headers(&mut h);
        assert_eq!(h[SAMPLES_WRITTEN], "12");
        assert_eq!(h[HISTOGRAMS_WRITTEN], "0");
        assert_eq!(h[EXEMPLARS_WRITTEN], "3");
    }
}
