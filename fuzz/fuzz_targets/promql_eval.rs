//! PromQL text, as the query API runs it: Norn's engine parses it (promql-parser behind the
//! query-text guard) and evaluates it as an instant and as a range query over a tiny fixed
//! in-memory store, with small sample and time limits so no input can run for long.
#![no_main]

use std::sync::OnceLock;
use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use norn_model::Labels;
use norn_promql::memstore::MemStore;
use norn_promql::{Engine, EngineOptions};

const T0: i64 = 1_700_000_000_000;
const STEP: i64 = 15_000;
const POINTS: i64 = 40;

struct Fixture {
    rt: tokio::runtime::Runtime,
    engine: Engine,
    store: MemStore,
}

fn fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| {
        let store = MemStore::new();
        let series: [&[(&str, &str)]; 5] = [
            &[("__name__", "up"), ("job", "api"), ("instance", "a")],
            &[("__name__", "up"), ("job", "api"), ("instance", "b")],
            &[
                ("__name__", "http_requests_total"),
                ("job", "api"),
                ("code", "200"),
            ],
            &[
                ("__name__", "http_requests_total"),
                ("job", "api"),
                ("code", "500"),
            ],
            &[("__name__", "temperature"), ("le", "0.5"), ("room", "x")],
        ];
        for (i, pairs) in series.iter().enumerate() {
            let labels = Labels::from_pairs(pairs.iter().copied());
            for k in 0..POINTS {
                let v = match i {
                    0 | 1 => (k % 2) as f64,
                    2 | 3 => (k * (i as i64)) as f64,
                    _ => (k as f64).sin() * 10.0,
                };
                store.add_sample(&labels, T0 + k * STEP, v);
            }
        }
        let engine = Engine::new(EngineOptions {
            max_samples: 200_000,
            timeout: Duration::from_secs(2),
            idle_query_threads: 1,
            ..EngineOptions::default()
        });
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("tokio runtime");
        Fixture { rt, engine, store }
    })
}

fuzz_target!(|data: &[u8]| {
    let Ok(query) = std::str::from_utf8(data) else {
        return;
    };
    let f = fixture();
    f.rt.block_on(async {
        let end = T0 + (POINTS - 1) * STEP;
        let _ = f.engine.instant_query(&f.store, query, end).await;
        let _ = f
            .engine
            .range_query(&f.store, query, T0, end, 4 * STEP)
            .await;
    });
});
