//! Process-level tests of `norn tools import-blocks`: blocks written by `promtool tsdb
//! create-blocks-from openmetrics` are imported into a filesystem bucket and then served by
//! the real `norn` server, each sample exactly once and only to the importing tenant; damaged
//! blocks are reported and never uploaded; re-running is a no-op and `--dry-run` uploads
//! nothing.
//!
//! The promtool test and the S3 test (`moto_server`) print `SKIP` and pass when their peer is
//! missing, unless `NORN_REQUIRE_PEERS=1`; the others write their blocks with Norn's own block
//! writer (no Thanos section, as Prometheus writes them) and always run.

mod common;

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant, SystemTime};

use common::{Norn, Run, block_dirs, now_ms, peer, run_bounded};
use norn_model::{Labels, Sample};
use norn_tsdb::SeriesChunks;
use norn_tsdb::block::{
    BlockOptions, ThanosDownsample, ThanosMeta, chunks_from_samples, write_block,
};

const STEP_S: i64 = 15;
const HOUR_MS: i64 = 3_600_000;

/// `norn tools import-blocks --tenant <tenant> --common.storage.filesystem.dir=<bucket> …`.
fn import(bucket: &Path, tenant: &str, extra: &[&str], dirs: &[&Path]) -> Run {
    let mut args = vec![format!(
        "--common.storage.filesystem.dir={}",
        bucket.display()
    )];
    args.extend(extra.iter().map(|s| s.to_string()));
    import_with(tenant, &args, dirs)
}

/// `norn tools import-blocks --tenant <tenant> <args> <dirs>`, bounded to 60 s.
fn import_with(tenant: &str, args: &[String], dirs: &[&Path]) -> Run {
    let run = run_bounded(
        Command::new(env!("CARGO_BIN_EXE_norn"))
            .args(["tools", "import-blocks"])
            .arg(format!("--tenant={tenant}"))
            .args(args)
            .args(dirs),
        Duration::from_secs(60),
    );
    assert!(
        !run.stderr.contains("panicked"),
        "norn panicked\n{}",
        run.text()
    );
    run
}

/// Every file under `dir` (relative path → size, mtime, content), for "nothing changed".
fn snapshot(dir: &Path) -> BTreeMap<String, (u64, SystemTime, Vec<u8>)> {
    let mut out = BTreeMap::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(d) = pending.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = e.path();
            if p.is_dir() {
                pending.push(p);
            } else {
                let md = p.metadata().unwrap();
                let rel = p.strip_prefix(dir).unwrap().display().to_string();
                out.insert(
                    rel,
                    (md.len(), md.modified().unwrap(), std::fs::read(&p).unwrap()),
                );
            }
        }
    }
    out
}

fn read_json(path: &Path) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(path).unwrap())
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// One input series: OpenMetrics family, type, sample name, labels, samples (ms, value).
struct Input {
    family: &'static str,
    kind: &'static str,
    name: &'static str,
    labels: Vec<(&'static str, &'static str)>,
    samples: Vec<(i64, f64)>,
}

impl Input {
    fn selector(&self) -> String {
        let labels: Vec<String> = self
            .labels
            .iter()
            .map(|(k, v)| format!("{k}=\"{v}\""))
            .collect();
        format!("{}{{{}}}", self.name, labels.join(","))
    }
}

/// Counters and gauges, one sample every 15 s (whole seconds: promtool truncates fractions)
/// over `[start_s, end_s]`; values are multiples of 0.25 so text round trips are exact.
fn inputs(start_s: i64, end_s: i64) -> Vec<Input> {
    let times: Vec<i64> = (start_s..=end_s).step_by(STEP_S as usize).collect();
    let counter = |rate: f64| -> Vec<(i64, f64)> {
        times
            .iter()
            .enumerate()
            .map(|(i, t)| (t * 1000, i as f64 * rate))
            .collect()
    };
    let gauge = |base: f64| -> Vec<(i64, f64)> {
        times
            .iter()
            .enumerate()
            .map(|(i, t)| (t * 1000, base + ((i * 7) % 40) as f64 * 0.25))
            .collect()
    };
    vec![
        Input {
            family: "import_http_requests",
            kind: "counter",
            name: "import_http_requests_total",
            labels: vec![("code", "200"), ("instance", "a")],
            samples: counter(3.0),
        },
        Input {
            family: "import_http_requests",
            kind: "counter",
            name: "import_http_requests_total",
            labels: vec![("code", "500"), ("instance", "b")],
            samples: counter(0.25),
        },
        Input {
            family: "import_temperature_celsius",
            kind: "gauge",
            name: "import_temperature_celsius",
            labels: vec![("room", "hall")],
            samples: gauge(18.5),
        },
        Input {
            family: "import_temperature_celsius",
            kind: "gauge",
            name: "import_temperature_celsius",
            labels: vec![("room", "lab")],
            samples: gauge(-2.75),
        },
    ]
}

fn openmetrics(inputs: &[Input]) -> String {
    let mut out = String::new();
    let mut last_family = "";
    for s in inputs {
        if s.family != last_family {
            writeln!(out, "# HELP {} Imported test data.", s.family).unwrap();
            writeln!(out, "# TYPE {} {}", s.family, s.kind).unwrap();
            last_family = s.family;
        }
        for (t, v) in &s.samples {
            writeln!(out, "{} {v} {}", s.selector(), t / 1000).unwrap();
        }
    }
    out.push_str("# EOF\n");
    out
}

#[test]
fn promtool_blocks_are_imported_and_served_to_the_tenant_only() {
    let Some(promtool) = peer("promtool") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let bucket = dir.path().join("bucket");
    // Five hours at 15 s, ending an hour ago.
    let end_s = (now_ms() / 1000 - 3600) / STEP_S * STEP_S;
    let start_s = end_s - 5 * 3600;
    let inputs = inputs(start_s, end_s);
    let om = dir.path().join("input.om");
    std::fs::write(&om, openmetrics(&inputs)).unwrap();
    let out = dir.path().join("promtool-out");
    let run = run_bounded(
        Command::new(&promtool)
            .args(["tsdb", "create-blocks-from", "openmetrics"])
            .arg(&om)
            .arg(&out),
        Duration::from_secs(60),
    );
    assert!(run.ok(), "promtool: {}", run.text());
    let blocks = block_dirs(&out);
    assert!(blocks.len() >= 3, "promtool wrote {blocks:?}");
    let before = snapshot(&out);

    let started = Instant::now();
    let run = import(&bucket, "team-a", &[], &[&out]);
    let import_time = started.elapsed();
    assert!(run.ok(), "{}", run.text());
    for b in &blocks {
        assert!(run.line_of(b).ends_with("imported"), "{}", run.text());
    }
    assert!(
        run.stdout.contains(&format!("{} imported", blocks.len())),
        "{}",
        run.text()
    );
    assert_eq!(snapshot(&out), before, "the user's directory is untouched");

    let tenant_dir = bucket.join("team-a");
    assert_eq!(block_dirs(&tenant_dir), blocks);
    for b in &blocks {
        let orig = read_json(&out.join(b).join("meta.json"));
        let meta = read_json(&tenant_dir.join(b).join("meta.json"));
        assert_eq!(meta["thanos"]["labels"]["__org_id__"], "team-a", "{meta}");
        assert_eq!(meta["thanos"]["source"], "import", "{meta}");
        assert_eq!(meta["thanos"]["downsample"]["resolution"], 0, "{meta}");
        for k in [
            "ulid",
            "minTime",
            "maxTime",
            "stats",
            "compaction",
            "version",
        ] {
            assert_eq!(meta[k], orig[k], "{k} is kept: {meta}");
        }
        for f in ["index", "chunks/000001", "tombstones"] {
            assert_eq!(
                std::fs::read(tenant_dir.join(b).join(f)).unwrap(),
                std::fs::read(out.join(b).join(f)).unwrap(),
                "{b}/{f} uploaded as is"
            );
        }
    }

    // The server sees the imported blocks in the bucket (the harness uses <dir>/bucket).
    let n = Norn::start(
        dir.path(),
        &[
            "--blocks-storage.bucket-store.sync-interval=1s",
            "--querier.query-store-after=0s",
            "--blocks-storage.bucket-store.ignore-blocks-within=0s",
        ],
    );
    let deadline = Instant::now() + Duration::from_secs(60);
    while n.metric("norn_storegateway_blocks_loaded") < blocks.len() as f64 {
        assert!(
            Instant::now() < deadline,
            "bucket store did not load {} blocks\n{}",
            blocks.len(),
            n.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let (from, to) = (start_s * 1000, end_s * 1000);
    let mut total = 0;
    for s in &inputs {
        let got = n.raw_samples(Some("team-a"), &s.selector(), from, to);
        assert_eq!(got.len(), 1, "{}: {got:?}", s.selector());
        assert_eq!(
            got[0].1.len(),
            s.samples.len(),
            "{}: sample count",
            s.selector()
        );
        assert_eq!(got[0].1, s.samples, "{}: every sample once", s.selector());
        total += s.samples.len();
        assert!(
            n.raw_samples(Some("team-b"), &s.selector(), from, to)
                .is_empty(),
            "team-b must not see team-a's {}",
            s.selector()
        );
    }
    assert!(
        n.raw_samples(Some("team-b"), "{__name__=~\"import_.+\"}", from, to)
            .is_empty()
    );
    eprintln!(
        "imported {} blocks ({total} samples) in {import_time:?}",
        blocks.len()
    );
}

/// Writes a Prometheus-style block (no Thanos section unless `thanos`) of `series` series
/// with a sample every 15 s over `[t0, t0 + 2h)`; returns its ULID.
fn write_test_block(dir: &Path, t0: i64, series: usize, thanos: Option<ThanosMeta>) -> String {
    let all: Vec<SeriesChunks> = (0..series)
        .map(|i| {
            let samples: Vec<Sample> = (0..480)
                .map(|k| Sample::new(t0 + k * STEP_S * 1000, (k + i as i64) as f64))
                .collect();
            SeriesChunks {
                labels: Labels::from_pairs([
                    ("__name__", "imported".to_string()),
                    ("series", format!("s{i:03}")),
                ]),
                chunks: chunks_from_samples(&samples, 120).unwrap(),
            }
        })
        .collect();
    let opts = BlockOptions {
        thanos,
        ..BlockOptions::default()
    }
    .with_range(t0, t0 + 2 * HOUR_MS);
    write_block(dir, all, opts).unwrap().ulid
}

/// A fixed, 2h-aligned past time: these tests never query.
const BASE: i64 = 1_700_000_000_000 / (2 * HOUR_MS) * (2 * HOUR_MS);

#[test]
fn damaged_blocks_are_reported_and_never_uploaded() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    let bucket = dir.path().join("bucket");
    let good1 = write_test_block(&data, BASE, 5, None);
    let truncated_index = write_test_block(&data, BASE + 2 * HOUR_MS, 5, None);
    let missing_chunks = write_test_block(&data, BASE + 4 * HOUR_MS, 5, None);
    let bad_meta = write_test_block(&data, BASE + 6 * HOUR_MS, 5, None);
    let meta_v2 = write_test_block(&data, BASE + 8 * HOUR_MS, 5, None);
    let downsampled = write_test_block(
        &data,
        BASE + 10 * HOUR_MS,
        5,
        Some(ThanosMeta {
            downsample: ThanosDownsample {
                resolution: 300_000,
            },
            source: "compactor".into(),
            ..ThanosMeta::default()
        }),
    );
    let good2 = write_test_block(&data, BASE + 12 * HOUR_MS, 5, None);

    let idx = data.join(&truncated_index).join("index");
    let bytes = std::fs::read(&idx).unwrap();
    std::fs::write(&idx, &bytes[..bytes.len() / 2]).unwrap();
    std::fs::remove_file(data.join(&missing_chunks).join("chunks/000001")).unwrap();
    std::fs::write(data.join(&bad_meta).join("meta.json"), "{\"ulid\": 12").unwrap();
    let v2_path = data.join(&meta_v2).join("meta.json");
    let mut v2 = read_json(&v2_path);
    v2["version"] = 2.into();
    std::fs::write(&v2_path, serde_json::to_vec(&v2).unwrap()).unwrap();
    // What a Prometheus data directory holds besides blocks: all ignored.
    for d in ["wal", "chunks_head", "snapshots"] {
        std::fs::create_dir_all(data.join(d)).unwrap();
        std::fs::write(data.join(d).join("00000001"), b"not a block").unwrap();
    }
    std::fs::write(data.join("lock"), b"").unwrap();
    let tmp = data.join(format!("{good1}.tmp-for-deletion"));
    std::fs::create_dir_all(&tmp).unwrap();
    std::fs::copy(data.join(&good1).join("meta.json"), tmp.join("meta.json")).unwrap();

    let run = import(&bucket, "team-a", &[], &[&data]);
    assert_ne!(run.code, Some(0), "{}", run.text());
    assert_eq!(run.code, Some(1), "{}", run.text());
    for good in [&good1, &good2] {
        assert!(run.line_of(good).ends_with("imported"), "{}", run.text());
    }
    for (block, file, what) in [
        (&truncated_index, "index", ""),
        (&missing_chunks, "chunks/000001", "missing"),
        (&bad_meta, "meta.json", "invalid JSON"),
        (&meta_v2, "meta.json", "version 2"),
        (&downsampled, "meta.json", "downsampled"),
    ] {
        let line = run.line_of(block);
        assert!(line.contains("skipped"), "{block}: {line}");
        assert!(
            line.contains(&format!("{block}/{file}")),
            "{block}: the message names the file {file}: {line}"
        );
        assert!(line.contains(what), "{block}: {what}: {line}");
        assert!(
            run.stderr.contains(block.as_str()),
            "{block} is logged\n{}",
            run.text()
        );
    }
    assert!(
        run.stdout.contains("2 imported") && run.stdout.contains("5 skipped"),
        "{}",
        run.text()
    );
    assert_eq!(run.stdout.lines().count(), 1 + 7 + 1, "{}", run.text());
    let tenant_dir = bucket.join("team-a");
    let mut want = vec![good1.clone(), good2.clone()];
    want.sort();
    assert_eq!(block_dirs(&tenant_dir), want);
    for bad in [
        &truncated_index,
        &missing_chunks,
        &bad_meta,
        &meta_v2,
        &downsampled,
    ] {
        assert!(
            !tenant_dir.join(bad).exists(),
            "nothing of {bad} is in the bucket"
        );
    }
    let entries: Vec<String> = std::fs::read_dir(&tenant_dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(entries.len(), 2, "only the two good blocks: {entries:?}");

    // A DIR that does not exist: a clear error, nothing imported, even with a good DIR beside.
    let other_bucket = dir.path().join("bucket2");
    let missing = dir.path().join("no-such-dir");
    let run = import(
        &other_bucket,
        "team-a",
        &[],
        &[&data.join(&good1), &missing],
    );
    assert_eq!(run.code, Some(1), "{}", run.text());
    assert!(
        run.stderr.contains("no-such-dir") && run.stderr.contains("no such directory"),
        "{}",
        run.text()
    );
    assert!(block_dirs(&other_bucket.join("team-a")).is_empty());
    // A directory without blocks.
    let empty = dir.path().join("empty");
    std::fs::create_dir_all(&empty).unwrap();
    let run = import(&other_bucket, "team-a", &[], &[&empty]);
    assert_eq!(run.code, Some(1), "{}", run.text());
    assert!(run.stderr.contains("no blocks found"), "{}", run.text());

    // Tenants follow X-Scope-OrgID's rules.
    for (tenant, want) in [
        ("bad/tenant", "unsupported character"),
        ("..", "'.' or '..'"),
        ("", "no org id"),
        ("rules", "rule groups"),
    ] {
        let run = import(&other_bucket, tenant, &[], &[&data.join(&good1)]);
        assert_eq!(run.code, Some(1), "{tenant:?}: {}", run.text());
        assert!(
            run.stderr.contains("--tenant") && run.stderr.contains(want),
            "{tenant:?}: {}",
            run.text()
        );
    }
    assert!(block_dirs(&other_bucket.join("team-a")).is_empty());
}

#[test]
fn reimport_is_a_noop_and_dry_run_uploads_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    let bucket = dir.path().join("bucket");
    let blocks: Vec<String> = (0..3)
        .map(|i| write_test_block(&data, BASE + i * 2 * HOUR_MS, 3, None))
        .collect();

    // Dry run into a bucket that does not exist yet: validated, listed, nothing written.
    let run = import(&bucket, "team-a", &["--dry-run"], &[&data]);
    assert!(run.ok(), "{}", run.text());
    for b in &blocks {
        assert!(run.line_of(b).ends_with("would import"), "{}", run.text());
    }
    assert!(run.stdout.contains("dry run"), "{}", run.text());
    assert!(
        snapshot(&bucket).is_empty(),
        "dry run wrote {:?}",
        snapshot(&bucket).keys()
    );

    let run = import(&bucket, "team-a", &[], &[&data]);
    assert!(run.ok(), "{}", run.text());
    assert_eq!(block_dirs(&bucket.join("team-a")), blocks);
    let after_import = snapshot(&bucket);

    // Again, and as a dry run: every block is already there, nothing is rewritten.
    for extra in [&[][..], &["--dry-run"][..]] {
        let run = import(&bucket, "team-a", extra, &[&data]);
        assert!(run.ok(), "{extra:?}: {}", run.text());
        for b in &blocks {
            assert!(
                run.line_of(b).ends_with("already imported"),
                "{}",
                run.text()
            );
        }
        assert!(run.stdout.contains("3 already imported"), "{}", run.text());
        assert_eq!(
            snapshot(&bucket),
            after_import,
            "{extra:?} changed the bucket"
        );
    }
    // Another tenant is a separate namespace: the same blocks import again there.
    let run = import(&bucket, "team-b", &[], &[&data]);
    assert!(run.ok(), "{}", run.text());
    assert_eq!(block_dirs(&bucket.join("team-b")), blocks);

    // A single block directory as DIR; it overlaps an imported block: a warning, not a refusal.
    let more = dir.path().join("more");
    std::fs::create_dir_all(&more).unwrap();
    let overlapping = write_test_block(&more, BASE + HOUR_MS, 3, None);
    let run = import(&bucket, "team-a", &[], &[&more.join(&overlapping)]);
    assert!(run.ok(), "{}", run.text());
    assert!(run.line_of(&overlapping).ends_with("imported"));
    assert!(
        run.stderr.contains("overlaps")
            && run.stderr.contains(&blocks[0])
            && run.stderr.contains(&blocks[1]),
        "{}",
        run.text()
    );
    assert_eq!(block_dirs(&bucket.join("team-a")).len(), 4);
}

#[test]
fn imports_into_s3_with_the_server_flags_and_config_file() {
    let Some(moto) = norn_storage::testing::MotoServer::start() else {
        return;
    };
    let cfg = moto.storage_config("norn-import");
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    let mut blocks: Vec<String> = (0..2)
        .map(|i| write_test_block(&data, BASE + i * 2 * HOUR_MS, 3, None))
        .collect();
    blocks.sort();

    let flags: Vec<String> = [
        "--common.storage.backend=s3".to_string(),
        format!("--common.storage.s3.endpoint={}", moto.endpoint()),
        "--common.storage.s3.bucket-name=norn-import".into(),
        "--common.storage.s3.access-key-id=test".into(),
        "--common.storage.s3.secret-access-key=test".into(),
        "--common.storage.s3.region=us-east-1".into(),
        "--common.storage.s3.insecure=true".into(),
    ]
    .into();
    let run = import_with("team-a", &flags, &[&data]);
    assert!(run.ok(), "{}", run.text());
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let bucket = norn_storage::Bucket::from_config(&cfg).unwrap();
    assert_eq!(
        rt.block_on(norn_storage::layout::list_blocks(&bucket, "team-a"))
            .unwrap(),
        blocks
    );
    for b in &blocks {
        let meta = rt
            .block_on(bucket.get(&norn_storage::layout::block_meta("team-a", b)))
            .unwrap();
        let meta: serde_json::Value = serde_json::from_slice(&meta).unwrap();
        assert_eq!(meta["thanos"]["labels"]["__org_id__"], "team-a", "{meta}");
        let files = rt
            .block_on(bucket.list(&norn_storage::layout::block_prefix("team-a", b)))
            .unwrap();
        assert_eq!(
            files.len(),
            4,
            "meta.json, index, chunks/000001, tombstones: {files:?}"
        );
    }

    // The same bucket through --config.file (Mimir's YAML layout): already imported.
    let yaml = dir.path().join("norn.yaml");
    std::fs::write(
        &yaml,
        format!(
            "common:\n  storage:\n    backend: s3\n    s3:\n      endpoint: {}\n      bucket_name: norn-import\n      access_key_id: test\n      secret_access_key: test\n      region: us-east-1\n      insecure: true\n",
            moto.endpoint()
        ),
    )
    .unwrap();
    let run = import_with(
        "team-a",
        &[format!("--config.file={}", yaml.display())],
        &[&data],
    );
    assert!(run.ok(), "{}", run.text());
    for b in &blocks {
        assert!(
            run.line_of(b).ends_with("already imported"),
            "{}",
            run.text()
        );
    }
}
