//! Process-level test of the configuration's precedence with environment variables: built-in
//! defaults < YAML file < `NORN_…` environment < flags, read back from the real binary's
//! `/config`. The variables are set on the child process only: setting them in the test
//! process would leak into every other test's `norn`.

mod common;

use std::process::{Command, Stdio};
use std::time::Duration;

use common::{Norn, free_port, run_bounded};

#[test]
fn environment_sits_between_yaml_and_flags() {
    let dir = tempfile::tempdir().unwrap();
    let yaml = dir.path().join("norn.yaml");
    std::fs::write(
        &yaml,
        "querier:\n  max_concurrent: 3\n  lookback_delta: 1m\nlimits:\n  ingestion_rate: 5\n",
    )
    .unwrap();
    let port = free_port();
    let log = std::fs::File::create(dir.path().join("norn.log")).unwrap();
    let child = Command::new(env!("CARGO_BIN_EXE_norn"))
        .arg("--server.http-listen-address=127.0.0.1")
        .arg(format!("--server.http-listen-port={port}"))
        .arg(format!("--config.file={}", yaml.display()))
        // The flag beats the environment.
        .arg("--distributor.ingestion-rate-limit=11")
        .env("NORN_DISTRIBUTOR_INGESTION_RATE_LIMIT", "9")
        // The environment beats the YAML file.
        .env("NORN_QUERIER_MAX_CONCURRENT", "7")
        // The environment alone sets a flag, the config file's and a `.`/`-` name included.
        .env("NORN_QUERIER_MAX_SAMPLES", "1234")
        .env(
            "NORN_BLOCKS_STORAGE_TSDB_DIR",
            dir.path().join("tsdb").display().to_string(),
        )
        .env(
            "NORN_COMMON_STORAGE_FILESYSTEM_DIR",
            dir.path().join("bucket").display().to_string(),
        )
        .env(
            "NORN_BLOCKS_STORAGE_BUCKET_STORE_SYNC_DIR",
            dir.path().join("tsdb-sync").display().to_string(),
        )
        .env("NORN_AUTH_MULTITENANCY_ENABLED", "false")
        .env("NORN_MEMBERLIST_JOIN", "a.example:7946,b.example")
        .env("NORN_COMMON_STORAGE_S3_SECRET_ACCESS_KEY", "topsecret")
        .stdout(Stdio::null())
        .stderr(Stdio::from(log))
        .spawn()
        .expect("start norn");
    let mut n = Norn::adopt(child, port, dir.path());
    n.wait_ready();

    let (status, text) = n.get_text("/config");
    assert_eq!(status, 200);
    assert!(!text.contains("topsecret"), "the secret is masked\n{text}");
    let cfg: serde_yaml::Value = serde_yaml::from_str(&text).unwrap();
    let get = |path: &str| path.split('.').fold(&cfg, |v, k| &v[k]).clone();
    let num = |path: &str| {
        get(path)
            .as_f64()
            .unwrap_or_else(|| panic!("{path}\n{text}"))
    };
    assert_eq!(num("limits.ingestion_rate"), 11.0, "flag over env\n{text}");
    assert_eq!(num("querier.max_concurrent"), 7.0, "env over YAML\n{text}");
    assert_eq!(
        num("querier.max_samples"),
        1234.0,
        "env over default\n{text}"
    );
    assert_eq!(
        get("querier.lookback_delta").as_str(),
        Some("1m"),
        "YAML where no env or flag\n{text}"
    );
    assert_eq!(get("multitenancy_enabled").as_bool(), Some(false), "{text}");
    assert_eq!(
        get("blocks_storage.tsdb.dir").as_str(),
        Some(dir.path().join("tsdb").to_str().unwrap()),
        "{text}"
    );
    let join: Vec<String> = get("memberlist.join_members")
        .as_sequence()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_owned())
        .collect();
    assert_eq!(
        join,
        ["a.example:7946", "b.example"],
        "comma-separated\n{text}"
    );
    n.stop();
}

/// A bad value from the environment fails at start and names both the flag and the variable.
#[test]
fn bad_environment_value_names_its_variable() {
    let dir = tempfile::tempdir().unwrap();
    let run = run_bounded(
        Command::new(env!("CARGO_BIN_EXE_norn"))
            .arg("--server.http-listen-address=127.0.0.1")
            .arg("--server.http-listen-port=0")
            .env("NORN_QUERIER_TIMEOUT", "soon")
            .current_dir(dir.path()),
        Duration::from_secs(30),
    );
    assert!(!run.ok(), "{}", run.text());
    assert!(
        run.stderr.contains("--querier.timeout") && run.stderr.contains("NORN_QUERIER_TIMEOUT"),
        "{}",
        run.text()
    );
}
