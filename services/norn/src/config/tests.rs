//! Loading: YAML, flags, environment, precedence and validation.

use super::*;

fn args(list: &[&str]) -> Args {
    Args::parse_from(std::iter::once("norn").chain(list.iter().copied()))
}

#[test]
fn yaml_in_mimir_layout() {
    let c = Config::from_yaml(
        "multitenancy_enabled: false\nserver:\n  http_listen_port: 9009\nblocks_storage:\n  tsdb:\n    dir: /x\n    block_ranges_period: 1h\nlimits:\n  ingestion_rate: 5\n",
    )
    .unwrap();
    assert_eq!(c.multitenancy_enabled, Some(false));
    assert_eq!(c.auth_type(), AuthType::None);
    assert_eq!(c.server.http_listen_port, 9009);
    assert_eq!(c.blocks_storage.tsdb.dir, PathBuf::from("/x"));
    assert_eq!(
        c.blocks_storage.tsdb.block_ranges_period,
        Duration::from_secs(3600)
    );
    assert_eq!(c.limits.ingestion_rate, 5.0);
}

#[test]
fn unknown_keys_name_the_key() {
    let err = Config::from_yaml("server:\n  http_listen_prot: 1\n")
        .unwrap_err()
        .to_string();
    assert!(err.contains("http_listen_prot"), "{err}");
    let err = Config::from_yaml("bogus_block: {}\n")
        .unwrap_err()
        .to_string();
    assert!(err.contains("bogus_block"), "{err}");
}

#[test]
fn flags_override_yaml() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("c.yaml");
    std::fs::write(&f, "server:\n  http_listen_port: 1\n").unwrap();
    let a = args(&[
        "--config.file",
        f.to_str().unwrap(),
        "--server.http-listen-port=2",
        "--auth.multitenancy-enabled=false",
        "--blocks-storage.tsdb.block-ranges-period=30m",
    ]);
    let c = Config::load(&a).unwrap();
    assert_eq!(c.server.http_listen_port, 2);
    assert_eq!(c.multitenancy_enabled, Some(false));
    assert_eq!(c.auth.kind, Some(AuthType::None));
    assert_eq!(
        c.blocks_storage.tsdb.block_ranges_period,
        Duration::from_secs(1800)
    );
}

#[test]
fn querier_bounds_from_yaml_and_flags() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("c.yaml");
    std::fs::write(
        &f,
        "querier:\n  max_concurrent: 3\n  max_outstanding_requests: 7\n  max_query_expression_depth: 50\n",
    )
    .unwrap();
    let c = Config::load(&args(&[
        "--config.file",
        f.to_str().unwrap(),
        "--querier.max-query-expression-size-bytes=1000",
        "--querier.max-concurrent=5",
    ]))
    .unwrap();
    assert_eq!(c.querier.max_concurrent, 5);
    assert_eq!(c.querier.max_outstanding_requests, 7);
    assert_eq!(c.querier.max_query_expression_depth, 50);
    assert_eq!(c.querier.max_query_expression_size_bytes, 1000);
    let d = Config::load(&args(&[])).unwrap().querier;
    assert_eq!(d.max_concurrent, 20);
    assert_eq!(d.max_query_expression_depth, 200);
    assert_eq!(d.max_query_expression_size_bytes, 256 << 10);
}

#[test]
fn store_gateway_bucket_store_from_yaml_and_flags() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("c.yaml");
    std::fs::write(
        &f,
        "blocks_storage:\n  bucket_store:\n    max_concurrent: 7\n    ignore_deletion_mark_delay: 2h\n    index_header:\n      lazy_loading_enabled: false\n      lazy_loading_idle_timeout: 5m\n",
    )
    .unwrap();
    let c = Config::load(&args(&[
        "--config.file",
        f.to_str().unwrap(),
        "--blocks-storage.bucket-store.block-sync-concurrency=9",
        "--blocks-storage.bucket-store.ignore-blocks-within=3h",
        "--blocks-storage.bucket-store.index-header.lazy-loading-idle-timeout=10m",
    ]))
    .unwrap();
    let b = &c.blocks_storage.bucket_store;
    assert_eq!(b.max_concurrent, 7);
    assert_eq!(b.block_sync_concurrency, 9);
    assert_eq!(b.ignore_blocks_within, Duration::from_secs(3 * 3600));
    assert_eq!(b.ignore_deletion_mark_delay, Duration::from_secs(2 * 3600));
    assert!(!b.index_header.lazy_loading_enabled);
    assert_eq!(
        b.index_header.lazy_loading_idle_timeout,
        Duration::from_secs(600)
    );
    let d = Config::load(&args(&[]))
        .unwrap()
        .blocks_storage
        .bucket_store;
    assert_eq!(d.max_concurrent, 200);
    assert!(d.index_header.lazy_loading_enabled);
    assert_eq!(d.ignore_blocks_within, Duration::from_secs(10 * 3600));
}

#[test]
fn secrets_are_masked() {
    let a = args(&["--common.storage.s3.secret-access-key=hunter2"]);
    let c = Config::load(&a).unwrap();
    let y = c.masked_yaml();
    assert!(!y.contains("hunter2"));
    assert!(y.contains(MASK));
    // And the masked YAML is itself a valid config.
    Config::from_yaml(&y).unwrap();
}

#[test]
fn bad_values_are_errors() {
    assert!(Config::load(&args(&["--target=bogus"])).is_err());
    assert!(Config::load(&args(&["--common.storage.backend=gcs"])).is_err());
    assert!(Config::load(&args(&["--querier.timeout=soon"])).is_err());
    assert!(Config::load(&args(&["--querier.max-query-expression-depth=0"])).is_err());
    assert!(Config::load(&args(&["--querier.max-query-expression-depth=1001"])).is_err());
    assert!(Config::load(&args(&["--querier.max-concurrent=0"])).is_err());
    assert!(Config::load(&args(&["--server.http-server-idle-timeout=x"])).is_err());
    assert!(Config::load(&args(&["--query-frontend.max-body-size=0"])).is_err());
}

#[test]
fn edge_flags_and_yaml() {
    let c = Config::load(&args(&[
        "--server.http-server-read-header-timeout=5s",
        "--server.http-conn-limit=7",
        "--query-frontend.max-body-size=1024",
        "--ingester.max-global-metadata-per-user=3",
        "--ingester.metadata-retain-period=1m",
        "--validation.past-grace-period=1h",
    ]))
    .unwrap();
    let o = c.server.http_options();
    assert_eq!(o.read_header_timeout, Duration::from_secs(5));
    assert_eq!(o.conn_limit, 7);
    assert_eq!(o.write_timeout, Duration::from_secs(150));
    assert_eq!(c.frontend.max_body_size, 1024);
    assert_eq!(c.limits.max_global_metadata_per_user, 3);
    assert_eq!(c.ingester.metadata_retain_period, Duration::from_secs(60));
    assert_eq!(c.limits.past_grace_period, Duration::from_secs(3600));
    let c = Config::from_yaml(
        "server:\n  http_server_idle_timeout: 10s\n  http_listen_conn_limit: 2\nfrontend:\n  max_body_size: 5\nlimits:\n  max_global_metadata_per_metric: 4\n",
    )
    .unwrap();
    assert_eq!(c.server.http_server_idle_timeout, Duration::from_secs(10));
    assert_eq!(c.server.http_listen_conn_limit, 2);
    assert_eq!(c.frontend.max_body_size, 5);
    assert_eq!(c.limits.max_global_metadata_per_metric, 4);
}

#[test]
fn a_bad_flag_value_names_the_flag_and_its_variable() {
    let err = format!(
        "{:#}",
        Config::load(&args(&["--blocks-storage.tsdb.wal-fsync=sometimes"])).unwrap_err()
    );
    assert!(
        err.contains("--blocks-storage.tsdb.wal-fsync")
            && err.contains("NORN_BLOCKS_STORAGE_TSDB_WAL_FSYNC"),
        "{err}"
    );
    let err = format!(
        "{:#}",
        Config::load(&args(&["--memberlist.gossip-interval=often"])).unwrap_err()
    );
    assert!(
        err.contains("--memberlist.gossip-interval")
            && err.contains("NORN_MEMBERLIST_GOSSIP_INTERVAL"),
        "{err}"
    );
}

#[test]
fn frontend_block_yaml_flags_and_limits() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("c.yaml");
    std::fs::write(
        &f,
        "frontend:\n  split_queries_by_interval: 1h\n  cache_results: true\n  max_retries: 2\n  downstream_url: http://q:8080\nlimits:\n  max_query_parallelism: 4\n  max_cache_freshness: 1m\n",
    )
    .unwrap();
    let file = f.to_str().unwrap();
    let c = Config::load(&args(&["--config.file", file])).unwrap();
    assert_eq!(
        c.frontend.split_queries_by_interval,
        Duration::from_secs(3600)
    );
    assert!(c.frontend.cache_results);
    assert!(!c.frontend.align_queries_with_step);
    assert_eq!(c.frontend.max_retries, 2);
    assert_eq!(c.frontend.downstream_url, "http://q:8080");
    assert_eq!(c.limits.max_query_parallelism, 4);
    assert_eq!(c.limits.max_cache_freshness, Duration::from_secs(60));
    let c = Config::load(&args(&[
        "--config.file",
        file,
        "--query-frontend.split-queries-by-interval=0",
        "--query-frontend.align-queries-with-step",
        "--query-frontend.cache-results=false",
        "--query-frontend.log-queries-longer-than=5s",
        "--store.max-query-length=7d",
        "--querier.max-query-lookback=30d",
        "--query-frontend.max-total-query-length=32d",
        "--querier.max-query-parallelism=2",
    ]))
    .unwrap();
    assert!(c.frontend.split_queries_by_interval.is_zero());
    assert!(c.frontend.align_queries_with_step);
    assert!(!c.frontend.cache_results);
    assert_eq!(c.frontend.log_queries_longer_than, Duration::from_secs(5));
    assert_eq!(c.limits.max_query_length, Duration::from_secs(7 * 86_400));
    assert_eq!(
        c.limits.max_query_lookback,
        Duration::from_secs(30 * 86_400)
    );
    assert_eq!(
        c.limits.max_total_query_length,
        Duration::from_secs(32 * 86_400)
    );
    assert_eq!(c.limits.max_query_parallelism, 2);
    // Defaults are Mimir's.
    let d = Config::default();
    assert_eq!(
        d.frontend.split_queries_by_interval,
        Duration::from_secs(86_400)
    );
    assert!(!d.frontend.cache_results && !d.frontend.align_queries_with_step);
    assert_eq!(d.frontend.max_retries, 5);
    assert_eq!(d.limits.max_query_parallelism, 14);
    assert_eq!(d.limits.max_cache_freshness, Duration::from_secs(600));
    // A downstream that is not an http:// URL is refused at load.
    let err = Config::load(&args(&["--query-frontend.downstream-url=querier:8080"]))
        .unwrap_err()
        .to_string();
    assert!(err.contains("frontend.downstream_url"), "{err}");
}
