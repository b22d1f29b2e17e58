//! The ingester's gRPC messages, decoded (prost, as tonic's codec does) and converted the way
//! each side handles them: a `PushRequest` is decoded and its embedded remote-write body
//! decoded and validated as `IngesterGrpc::push` does; a `QueryRequest`'s matchers are
//! converted (regexes compiled) as `query_stream` does; a `QueryStreamResponse` is converted
//! into chunk series (`norn_ingester_client::chunk_series`) and decoded to samples as the
//! querier's ingester client does. The whole input is tried as each message.
#![no_main]

use libfuzzer_sys::fuzz_target;
use norn_model::validation::check_batch;
use norn_model::{TimeWindow, ValidationLimits};
use norn_proto::convert::matchers_from_proto;
use norn_proto::ingester::v1 as pb;
use prost::Message;

fuzz_target!(|data: &[u8]| {
    if let Ok(req) = pb::PushRequest::decode(data)
        && let Ok(mut batch) = norn_proto::decode_write_request(req.write_request)
    {
        let limits = ValidationLimits::default();
        let window = TimeWindow::new(1_700_000_000_000, &limits);
        let checked = check_batch(&mut batch, &limits, window);
        let _ = batch.subset(&checked.keep, true);
    }
    if let Ok(req) = pb::QueryRequest::decode(data) {
        let _ = matchers_from_proto(req.matchers);
    }
    if let Ok(resp) = pb::QueryStreamResponse::decode(data) {
        let series = norn_ingester_client::chunk_series(resp.series);
        for s in &series {
            for c in &s.chunks {
                let _ = c.samples_in(i64::MIN, i64::MAX);
            }
        }
        let _ = norn_model::query::merge_chunk_series(vec![series.clone(), series.clone()]);
        let _ = norn_model::query::decode_chunk_series(series, i64::MIN, i64::MAX);
    }
});
