//! Process-level tests of `norn tools bucket ls|inspect|mark|unmark`: the real binary on a
//! filesystem bucket holding blocks written by Norn's block writer, a partial block, and marks
//! written and removed through the tool; every error is one line and a non-zero exit.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::{Run, run_bounded};
use norn_model::{Labels, Sample};
use norn_tsdb::SeriesChunks;
use norn_tsdb::block::{BlockOptions, chunks_from_samples, write_block};

const HOUR_MS: i64 = 3_600_000;
const BASE: i64 = 1_700_000_000_000 / (2 * HOUR_MS) * (2 * HOUR_MS);
const TENANT: &str = "team-a";
const PARTIAL: &str = "01HQ3Z5V6W7X8Y9ZABCDEFGHJN";
const ABSENT: &str = "01HQ3Z5V6W7X8Y9ZABCDEFGHJP";

/// `norn tools bucket <args> --common.storage.filesystem.dir=<bucket>`, bounded to 60 s.
fn tool(bucket: &Path, args: &[&str]) -> Run {
    let run = run_bounded(
        Command::new(env!("CARGO_BIN_EXE_norn"))
            .args(["tools", "bucket"])
            .args(args)
            .arg(format!(
                "--common.storage.filesystem.dir={}",
                bucket.display()
            )),
        Duration::from_secs(60),
    );
    assert!(
        !run.stderr.contains("panicked"),
        "norn panicked\n{}",
        run.text()
    );
    run
}

fn ok(bucket: &Path, args: &[&str]) -> Run {
    let run = tool(bucket, args);
    assert!(run.ok(), "{args:?}\n{}", run.text());
    run
}

/// Fails with exit code 1 and an `error:` line containing `want`.
fn fails(bucket: &Path, args: &[&str], want: &str) {
    let run = tool(bucket, args);
    assert_eq!(run.code, Some(1), "{args:?}\n{}", run.text());
    let line = run
        .stderr
        .lines()
        .find(|l| l.starts_with("error: "))
        .unwrap_or_else(|| panic!("no error line\n{}", run.text()));
    assert!(line.contains(want), "{args:?}: {line}");
}

fn json(run: &Run) -> serde_json::Value {
    serde_json::from_str(&run.stdout).unwrap_or_else(|e| panic!("{e}\n{}", run.text()))
}

/// A block of `series` series with a sample every 15 s over 2h from `t0`, at `level`.
fn write_test_block(dir: &Path, t0: i64, series: usize, level: u32) -> String {
    let all: Vec<SeriesChunks> = (0..series)
        .map(|i| {
            let samples: Vec<Sample> = (0..480)
                .map(|k| Sample::new(t0 + k * 15_000, (k + i as i64) as f64))
                .collect();
            SeriesChunks {
                labels: Labels::from_pairs([
                    ("__name__", "up".to_string()),
                    ("series", format!("s{i:03}")),
                ]),
                chunks: chunks_from_samples(&samples, 120).unwrap(),
            }
        })
        .collect();
    let opts = BlockOptions {
        compaction_level: level,
        ..BlockOptions::default()
    }
    .with_range(t0, t0 + 2 * HOUR_MS);
    write_block(dir, all, opts).unwrap().ulid
}

/// Sum of the sizes of the files under `dir`.
fn dir_size(dir: &Path) -> u64 {
    let mut total = 0;
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        total += if p.is_dir() {
            dir_size(&p)
        } else {
            p.metadata().unwrap().len()
        };
    }
    total
}

fn find<'a>(blocks: &'a serde_json::Value, id: &str) -> &'a serde_json::Value {
    blocks
        .as_array()
        .unwrap()
        .iter()
        .find(|b| b["id"] == id)
        .unwrap_or_else(|| panic!("{id} not listed: {blocks:#}"))
}

#[test]
fn ls_inspect_mark_unmark() {
    let tmp = tempfile::tempdir().unwrap();
    let bucket = tmp.path().join("bucket");
    let tenant_dir = bucket.join(TENANT);
    std::fs::create_dir_all(&tenant_dir).unwrap();
    let a = write_test_block(&tenant_dir, BASE, 3, 1);
    let b = write_test_block(&tenant_dir, BASE + 2 * HOUR_MS, 5, 2);
    // An upload cut short: chunks without meta.json.
    std::fs::create_dir_all(tenant_dir.join(PARTIAL).join("chunks")).unwrap();
    std::fs::write(
        tenant_dir.join(PARTIAL).join("chunks/000001"),
        vec![7u8; 1000],
    )
    .unwrap();
    // Another tenant's block is never listed.
    std::fs::create_dir_all(bucket.join("team-b")).unwrap();
    let other = write_test_block(&bucket.join("team-b"), BASE, 1, 1);

    // ls, JSON.
    let out = json(&ok(&bucket, &["ls", "--tenant", TENANT, "--format=json"]));
    assert_eq!(out["tenant"], TENANT);
    let blocks = &out["blocks"];
    assert_eq!(blocks.as_array().unwrap().len(), 3, "{blocks:#}");
    assert!(!out.to_string().contains(&other));
    let ja = find(blocks, &a);
    assert_eq!(ja["state"], "complete");
    assert_eq!(ja["series"], 3);
    assert_eq!(ja["samples"], 3 * 480);
    assert_eq!(ja["compaction_level"], 1);
    assert_eq!(ja["duration"], "2h");
    assert_eq!(ja["min_time_ms"], BASE);
    assert_eq!(ja["size_bytes"], dir_size(&tenant_dir.join(&a)));
    assert!(ja["deletion_mark"].is_null() && ja["no_compact_mark"].is_null());
    assert_eq!(find(blocks, &b)["compaction_level"], 2);
    let jp = find(blocks, PARTIAL);
    assert_eq!(jp["state"], "partial");
    assert_eq!(jp["size_bytes"], 1000);
    assert!(jp["age_seconds"].as_u64().unwrap() < 600);

    // ls, table.
    let table = ok(&bucket, &["ls", "--tenant", TENANT]);
    assert!(table.stdout.starts_with("BLOCK ULID"), "{}", table.text());
    let line_a = table.line_of(&a);
    assert!(
        line_a.contains("2h") && line_a.contains(" 1440 "),
        "{line_a}"
    );
    assert!(
        table
            .line_of(PARTIAL)
            .contains("partial (no meta.json), last written")
    );
    assert!(
        table
            .stdout
            .contains("3 block(s) for tenant team-a (1 partial)"),
        "{}",
        table.text()
    );

    // mark deletion, twice: the second keeps the first mark.
    let marked = ok(
        &bucket,
        &["mark", "--tenant", TENANT, "--type=deletion", &a],
    );
    assert!(marked.stdout.contains("marked block"), "{}", marked.text());
    let local = tenant_dir.join(&a).join("deletion-mark.json");
    let global = tenant_dir
        .join("markers")
        .join(format!("{a}-deletion-mark.json"));
    let first = std::fs::read(&local).unwrap();
    assert_eq!(std::fs::read(&global).unwrap(), first);
    let mark: serde_json::Value = serde_json::from_slice(&first).unwrap();
    assert_eq!(mark["id"], a.as_str());
    assert_eq!(mark["version"], 1);
    std::thread::sleep(Duration::from_millis(1100));
    let again = ok(
        &bucket,
        &["mark", "--tenant", TENANT, "--type=deletion", &a],
    );
    assert!(again.stdout.contains("already marked"), "{}", again.text());
    assert_eq!(
        std::fs::read(&local).unwrap(),
        first,
        "the deletion time is kept"
    );

    // mark no-compact with details.
    ok(
        &bucket,
        &[
            "mark",
            "--tenant",
            TENANT,
            "--type=no-compact",
            "--details=index looks odd",
            &b,
        ],
    );
    let nc: serde_json::Value = serde_json::from_slice(
        &std::fs::read(
            tenant_dir
                .join("markers")
                .join(format!("{b}-no-compact-mark.json")),
        )
        .unwrap(),
    )
    .unwrap();
    assert_eq!(nc["reason"], "manual");
    assert_eq!(nc["details"], "index looks odd");

    let out = json(&ok(&bucket, &["ls", "--tenant", TENANT, "--format=json"]));
    let ja = find(&out["blocks"], &a);
    assert!(ja["deletion_mark"]["time"].as_str().unwrap().ends_with('Z'));
    let jb = find(&out["blocks"], &b);
    assert_eq!(jb["no_compact_mark"]["reason"], "manual");
    assert_eq!(jb["no_compact_mark"]["details"], "index looks odd");
    let table = ok(&bucket, &["ls", "--tenant", TENANT]);
    assert!(table.line_of(&a).contains("deletion@"), "{}", table.text());
    assert!(
        table.line_of(&b).contains("no-compact(manual)"),
        "{}",
        table.text()
    );

    // inspect, text and JSON.
    let text = ok(&bucket, &["inspect", "--tenant", TENANT, &b]).stdout;
    for want in [
        "series             5",
        "samples            2400",
        "compaction level   2",
        "reason manual",
        "details \"index looks odd\"",
        "meta.json",
        "chunks/000001",
        "index",
    ] {
        assert!(text.contains(want), "{want:?} not in\n{text}");
    }
    let ins = json(&ok(
        &bucket,
        &["inspect", "--tenant", TENANT, "--format=json", &a],
    ));
    assert_eq!(ins["meta"]["ulid"], a.as_str());
    assert_eq!(ins["meta"]["stats"]["numSeries"], 3);
    let files: Vec<&str> = ins["files"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["path"].as_str().unwrap())
        .collect();
    for want in ["chunks/000001", "deletion-mark.json", "index", "meta.json"] {
        assert!(files.contains(&want), "{files:?}");
    }
    let partial = ok(&bucket, &["inspect", "--tenant", TENANT, PARTIAL]).stdout;
    assert!(partial.contains("missing: a partial block"), "{partial}");

    // unmark both; unmarking again is a no-op.
    let un = ok(
        &bucket,
        &["unmark", "--tenant", TENANT, "--type=deletion", &a],
    );
    assert!(
        un.stdout.contains("removed the deletion mark"),
        "{}",
        un.text()
    );
    assert!(!local.exists() && !global.exists());
    ok(
        &bucket,
        &["unmark", "--tenant", TENANT, "--type=no-compact", &b],
    );
    let none = ok(
        &bucket,
        &["unmark", "--tenant", TENANT, "--type=no-compact", &b],
    );
    assert!(none.stdout.contains("nothing to do"), "{}", none.text());
    let out = json(&ok(&bucket, &["ls", "--tenant", TENANT, "--format=json"]));
    for b in out["blocks"].as_array().unwrap() {
        assert!(
            b["deletion_mark"].is_null() && b["no_compact_mark"].is_null(),
            "{b}"
        );
    }

    // Errors: one line, exit code 1.
    fails(
        &bucket,
        &["inspect", "--tenant", TENANT, ABSENT],
        "not found for tenant team-a",
    );
    fails(
        &bucket,
        &["mark", "--tenant", TENANT, "--type=deletion", ABSENT],
        "not found",
    );
    fails(
        &bucket,
        &["unmark", "--tenant", TENANT, "--type=deletion", ABSENT],
        "not found",
    );
    fails(
        &bucket,
        &["inspect", "--tenant", TENANT, "nope"],
        "not a block id",
    );
    fails(
        &bucket,
        &["ls", "--tenant", "__reserved"],
        "invalid --tenant",
    );
    fails(&bucket, &["ls", "--tenant", "a/b"], "invalid --tenant");
    fails(
        &bucket,
        &[
            "mark",
            "--tenant",
            TENANT,
            "--type=deletion",
            "--details=x",
            &a,
        ],
        "no-compact marks only",
    );
    fails(
        &bucket,
        &["mark", "--tenant", TENANT, "--type=deletion", PARTIAL],
        "partial",
    );
    fails(
        &tmp.path().join("missing"),
        &["ls", "--tenant", TENANT],
        "does not exist",
    );
    // A usage error is clap's (exit code 2).
    let usage = tool(&bucket, &["mark", "--tenant", TENANT, &a]);
    assert_eq!(usage.code, Some(2), "{}", usage.text());

    // A tenant without blocks: an empty list, not an error.
    let empty = ok(&bucket, &["ls", "--tenant", "nobody"]);
    assert!(
        empty.stdout.contains("0 block(s) for tenant nobody"),
        "{}",
        empty.text()
    );
}

/// A bucket that cannot be reached (an S3 endpoint where nothing listens) is an error, not an
/// empty list.
#[test]
fn unreachable_bucket_is_an_error() {
    let port = common::free_port();
    let run = run_bounded(
        Command::new(env!("CARGO_BIN_EXE_norn")).args([
            "tools",
            "bucket",
            "ls",
            "--tenant=t",
            "--common.storage.backend=s3",
            &format!("--common.storage.s3.endpoint=127.0.0.1:{port}"),
            "--common.storage.s3.bucket-name=b",
            "--common.storage.s3.access-key-id=k",
            "--common.storage.s3.secret-access-key=s",
            "--common.storage.s3.insecure=true",
        ]),
        Duration::from_secs(120),
    );
    assert_eq!(run.code, Some(1), "{}", run.text());
    assert!(run.stderr.contains("error: listing t/"), "{}", run.text());
}
