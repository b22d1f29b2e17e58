#!/usr/bin/env python3
"""Writes Norn's Grafana dashboards (deploy/mixin/dashboards/*.json) from the panel lists below.

The JSON files are what Grafana imports and what the tests check (every expression parses and
names only metrics Norn exports: services/norn/tests/mixin.rs); edit the lists here and run
`python3 deploy/mixin/generate.py` rather than editing the JSON by hand.

Every dashboard takes its data source from the `datasource` variable (a Prometheus data source:
the Prometheus that scrapes Norn, or Norn itself with the tenant holding Norn's metrics set on
the data source) and filters by the `instance` variable.
"""

import json
import os

# NORN_MIXIN_OUT: another directory (the tests compare its output with the committed JSON).
OUT = os.environ.get("NORN_MIXIN_OUT") or os.path.join(
    os.path.dirname(os.path.abspath(__file__)), "dashboards"
)
SEL = 'instance=~"$instance"'
RI = "$__rate_interval"


def templating(extra=()):
    v = [
        {
            "name": "datasource",
            "label": "Data source",
            "type": "datasource",
            "query": "prometheus",
            "current": {},
            "hide": 0,
        },
        {
            "name": "instance",
            "label": "Instance",
            "type": "query",
            "datasource": {"type": "prometheus", "uid": "${datasource}"},
            "query": {"query": "label_values(norn_request_duration_seconds_count, instance)", "refId": "instance"},
            "definition": "label_values(norn_request_duration_seconds_count, instance)",
            "includeAll": True,
            "allValue": ".*",
            "multi": True,
            "refresh": 2,
            "current": {},
            "hide": 0,
        },
    ]
    v.extend(extra)
    return {"list": v}


def tenant_var(metric):
    q = f"label_values({metric}, tenant)"
    return {
        "name": "tenant",
        "label": "Tenant",
        "type": "query",
        "datasource": {"type": "prometheus", "uid": "${datasource}"},
        "query": {"query": q, "refId": "tenant"},
        "definition": q,
        "includeAll": True,
        "allValue": ".*",
        "multi": True,
        "refresh": 2,
        "current": {},
        "hide": 0,
    }


def panel(title, exprs, unit="short", desc="", kind="timeseries"):
    """exprs: list of (expr, legend)."""
    return {
        "title": title,
        "type": kind,
        "description": desc,
        "datasource": {"type": "prometheus", "uid": "${datasource}"},
        "fieldConfig": {"defaults": {"unit": unit}, "overrides": []},
        "options": {"legend": {"displayMode": "list", "placement": "bottom"}},
        "targets": [
            {
                "datasource": {"type": "prometheus", "uid": "${datasource}"},
                "expr": e,
                "legendFormat": l,
                "refId": chr(ord("A") + i),
            }
            for i, (e, l) in enumerate(exprs)
        ],
    }


def dashboard(uid, title, rows, extra_vars=()):
    panels = []
    y = 0
    pid = 1
    for row_title, row_panels in rows:
        panels.append({"type": "row", "title": row_title, "id": pid, "collapsed": False,
                       "gridPos": {"h": 1, "w": 24, "x": 0, "y": y}, "panels": []})
        pid += 1
        y += 1
        w = 24 // max(1, min(len(row_panels), 3))
        for i, p in enumerate(row_panels):
            p = dict(p)
            p["id"] = pid
            pid += 1
            p["gridPos"] = {"h": 8, "w": w, "x": (i % 3) * w, "y": y + (i // 3) * 8}
            panels.append(p)
        y += 8 * ((len(row_panels) + 2) // 3)
    d = {
        "uid": uid,
        "title": title,
        "tags": ["norn"],
        "timezone": "utc",
        "schemaVersion": 39,
        "version": 1,
        "editable": True,
        "refresh": "30s",
        "time": {"from": "now-6h", "to": "now"},
        "templating": templating(extra_vars),
        "annotations": {"list": []},
        "links": [{"title": "Norn dashboards", "type": "dashboards", "tags": ["norn"], "asDropdown": True}],
        "panels": panels,
    }
    with open(os.path.join(OUT, uid + ".json"), "w") as f:
        json.dump(d, f, indent=2, sort_keys=False)
        f.write("\n")


def rate(m, extra="", by=""):
    sel = SEL + ("," + extra if extra else "")
    b = f" by ({by})" if by else ""
    return f"sum{b} (rate({m}{{{sel}}}[{RI}]))"


def quantile(q, m, extra="", by="le"):
    sel = SEL + ("," + extra if extra else "")
    return f"histogram_quantile({q}, sum by ({by}) (rate({m}_bucket{{{sel}}}[{RI}])))"


def main():
    os.makedirs(OUT, exist_ok=True)
    push = 'route="api_v1_push"'
    dashboard("norn-writes", "Norn / Writes", [
        ("Requests", [
            panel("Push requests by status", [(rate("norn_request_duration_seconds_count", push, "status_code"), "{{status_code}}")], "reqps"),
            panel("Push latency", [
                (quantile(0.5, "norn_request_duration_seconds", push), "p50"),
                (quantile(0.99, "norn_request_duration_seconds", push), "p99")], "s"),
            panel("Samples received by tenant", [(rate("norn_distributor_received_samples_total", by="tenant"), "{{tenant}}")], "short"),
        ]),
        ("Refused", [
            panel("Discarded samples by reason", [(rate("norn_discarded_samples_total", by="reason"), "{{reason}}")], "short",
                  "Samples refused by validation and limits; see docs/operations.md, \"Metrics to watch\"."),
            panel("Discarded metadata by reason", [(rate("norn_discarded_metadata_total", by="reason"), "{{reason}}")]),
            panel("Oversized bodies (413)", [(rate("norn_request_duration_seconds_count", 'status_code="413"', "route"), "{{route}}")], "reqps"),
        ]),
        ("Distributor to ingesters", [
            panel("Ingester push latency (p99)", [(quantile(0.99, "norn_distributor_ingester_push_duration_seconds", by="le, ingester"), "{{ingester}}")], "s"),
            panel("Failed sub-pushes by kind", [(rate("norn_distributor_ingester_append_failures_total", by="ingester, kind"), "{{ingester}} {{kind}}")]),
            panel("HA deduplicated samples", [(rate("norn_distributor_deduped_samples_total", by="tenant, cluster"), "{{tenant}} {{cluster}}")]),
        ]),
    ])
    dashboard("norn-reads", "Norn / Reads", [
        ("Query API (query-frontend)", [
            panel("Queries by op and status", [(rate("norn_query_frontend_queries_total", by="op, status"), "{{op}} {{status}}")], "reqps"),
            panel("Query latency (p99) by op", [(quantile(0.99, "norn_query_frontend_request_duration_seconds", by="le, op"), "{{op}}")], "s"),
            panel("Results cache hit ratio", [(
                f"{rate('norn_query_frontend_results_cache_hits_total')} / ({rate('norn_query_frontend_results_cache_hits_total')} + {rate('norn_query_frontend_results_cache_misses_total')})",
                "hit ratio")], "percentunit"),
        ]),
        ("Querier", [
            panel("Running and queued queries", [
                (f"sum(norn_querier_running_queries{{{SEL}}})", "running"),
                (f"sum(norn_querier_queued_queries{{{SEL}}})", "queued")]),
            panel("Rejected queries by reason", [(rate("norn_querier_rejected_queries_total", by="reason"), "{{reason}}")], "reqps"),
            panel("Stopped queries by reason", [(rate("norn_querier_stopped_queries_total", by="reason"), "{{reason}}")], "reqps"),
        ]),
        ("Querier to ingesters and store-gateways", [
            panel("Ingester client latency (p99)", [(quantile(0.99, "norn_ingester_client_request_duration_seconds", by="le, operation"), "{{operation}}")], "s"),
            panel("Store-gateway client latency (p99)", [(quantile(0.99, "norn_storegateway_client_request_duration_seconds", by="le, operation"), "{{operation}}")], "s"),
            panel("Split legs and retries", [
                (rate("norn_query_frontend_split_queries_total"), "legs"),
                (rate("norn_query_frontend_retries_total"), "retries")]),
        ]),
    ])
    dashboard("norn-ingester", "Norn / Ingester memory and series", [
        ("Series", [
            panel("In-memory series by tenant", [(f"sum by (tenant) (norn_ingester_memory_series{{{SEL}}})", "{{tenant}}")]),
            panel("In-memory series by instance", [(f"sum by (instance) (norn_ingester_memory_series{{{SEL}}})", "{{instance}}")]),
            panel("Tenants in memory", [(f"sum by (instance) (norn_ingester_memory_users{{{SEL}}})", "{{instance}}")]),
        ]),
        ("Memory and churn", [
            panel("Resident memory", [(f"process_resident_memory_bytes{{{SEL}}}", "{{instance}}")], "bytes",
                  "About 0.3-0.45 KB per in-memory series (docs/benchmarks.md); see the Ingester OOM runbook."),
            panel("Series created", [(rate("norn_ingester_head_series_created_total", by="instance"), "{{instance}}")]),
            panel("Samples appended", [(rate("norn_ingester_head_samples_appended_total", by="instance"), "{{instance}}")]),
        ]),
        ("Descriptors and tenants", [
            panel("Open files / budget", [
                (f"process_open_fds{{{SEL}}}", "open {{instance}}"),
                (f"norn_ingester_file_descriptors_limit{{{SEL}}}", "limit {{instance}}")]),
            panel("Tenants refused", [(rate("norn_ingester_tenants_refused_total", by="reason"), "{{reason}}")]),
            panel("Idle tenants closed", [(rate("norn_ingester_idle_tenants_closed_total", by="instance"), "{{instance}}")]),
        ]),
    ])
    dashboard("norn-wal", "Norn / WAL", [
        ("WAL", [
            panel("fsync latency", [
                (quantile(0.5, "norn_ingester_wal_fsync_duration_seconds", by="le, instance"), "p50 {{instance}}"),
                (quantile(0.99, "norn_ingester_wal_fsync_duration_seconds", by="le, instance"), "p99 {{instance}}")], "s",
                  "p99 above ~50 ms: the disk is the push latency."),
            panel("Bytes written", [(rate("norn_ingester_wal_bytes_written_total", by="instance"), "{{instance}}")], "Bps"),
            panel("Records written", [(rate("norn_ingester_wal_records_written_total", by="instance"), "{{instance}}")]),
        ]),
        ("Failures", [
            panel("Broken WALs", [(f"max by (instance) (norn_ingester_wal_broken{{{SEL}}})", "{{instance}}")]),
            panel("Write failures and recoveries", [
                (rate("norn_ingester_wal_write_failures_total", by="instance"), "failures {{instance}}"),
                (rate("norn_ingester_wal_recoveries_total", by="instance"), "recoveries {{instance}}")]),
            panel("Corruptions repaired at start", [(f"max by (instance) (norn_ingester_wal_corruptions_total{{{SEL}}})", "{{instance}}")]),
        ]),
        ("Replay", [
            panel("Last replay duration", [(f"max by (instance) (norn_ingester_wal_replay_duration_seconds{{{SEL}}})", "{{instance}}")], "s",
                  "How long the last start's WAL replay took; see \"Not ready after a restart\"."),
        ]),
    ])
    dashboard("norn-blocks", "Norn / Blocks and shipping", [
        ("Cutting", [
            panel("Blocks cut", [(f"sum by (instance) (increase(norn_ingester_blocks_cut_total{{{SEL}}}[1h]))", "{{instance}}")]),
            panel("Cut failures", [(rate("norn_ingester_block_cut_failures_total", by="instance"), "{{instance}}")]),
            panel("Cut duration (p99)", [(quantile(0.99, "norn_ingester_block_cut_duration_seconds", by="le, instance"), "{{instance}}")], "s"),
        ]),
        ("Shipping", [
            panel("Time since last upload", [(f"time() - max by (instance) (norn_ingester_shipper_last_successful_upload_timestamp_seconds{{{SEL}}} > 0)", "{{instance}}")], "s"),
            panel("Uploads and failures", [
                (rate("norn_ingester_shipper_uploads_total", by="instance"), "uploads {{instance}}"),
                (rate("norn_ingester_shipper_upload_failures_total", by="instance"), "failures {{instance}}")]),
            panel("Local blocks by tenant", [(f"sum by (tenant) (norn_ingester_local_blocks{{{SEL}}})", "{{tenant}}")]),
        ]),
        ("Bucket", [
            panel("Bucket operations", [(rate("norn_bucket_operations_total", by="operation"), "{{operation}}")], "ops"),
            panel("Bucket operation failures", [(rate("norn_bucket_operation_failures_total", by="operation"), "{{operation}}")], "ops"),
            panel("Bucket operation latency (p99)", [(quantile(0.99, "norn_bucket_operation_duration_seconds", by="le, operation"), "{{operation}}")], "s"),
        ]),
    ])
    dashboard("norn-ring", "Norn / Ring health", [
        ("Rings", [
            panel("Members by ring and state", [(f"max by (name, state) (norn_ring_members{{{SEL}}})", "{{name}} {{state}}")],
                  desc="As each process sees its rings (ingester, store-gateway, compactor, ruler)."),
            panel("Oldest heartbeat age", [(f"max by (name) (norn_ring_oldest_member_heartbeat_age_seconds{{{SEL}}})", "{{name}}")], "s",
                  "Above the heartbeat timeout (1m): a member stopped heartbeating."),
        ]),
        ("Gossip", [
            panel("Gossip members alive", [(f"norn_memberlist_members{{{SEL}}}", "{{instance}}")]),
            panel("Gossip messages", [
                (rate("norn_memberlist_messages_sent_total", by="instance"), "sent {{instance}}"),
                (rate("norn_memberlist_messages_received_total", by="instance"), "received {{instance}}")]),
            panel("Shared state keys", [(f"norn_memberlist_kv_entries{{{SEL}}}", "{{instance}}")]),
        ]),
    ])
    dashboard("norn-store-gateway", "Norn / Store-gateway", [
        ("Blocks", [
            panel("Blocks loaded", [(f"sum by (instance) (norn_storegateway_blocks_loaded{{{SEL}}})", "{{instance}}")]),
            panel("Index-headers open", [(f"sum by (instance) (norn_storegateway_index_headers_open{{{SEL}}})", "{{instance}}")]),
            panel("Syncs and failures", [
                (rate("norn_storegateway_syncs_total"), "syncs"),
                (rate("norn_storegateway_sync_failures_total"), "failures")]),
        ]),
        ("Reads", [
            panel("Bucket bytes fetched by kind", [(rate("norn_storegateway_bucket_bytes_fetched_total", by="kind"), "{{kind}}")], "Bps"),
            panel("Bucket GETs", [(rate("norn_storegateway_bucket_get_requests_total", by="instance"), "{{instance}}")], "reqps"),
            panel("Cache hit ratio", [(f"{rate('norn_storegateway_cache_hits_total')} / {rate('norn_storegateway_cache_requests_total')}", "hit ratio")], "percentunit"),
        ]),
        ("Errors", [
            panel("Requests refused", [(rate("norn_storegateway_requests_refused_total", by="instance"), "{{instance}}")], "reqps"),
            panel("Block errors", [(rate("norn_storegateway_block_errors_total", by="tenant"), "{{tenant}}")]),
            panel("Index-header builds and failures", [
                (rate("norn_storegateway_index_header_builds_total"), "builds"),
                (rate("norn_storegateway_index_header_build_failures_total"), "failures")]),
        ]),
    ])
    dashboard("norn-compactor", "Norn / Compactor", [
        ("Runs", [
            panel("Time since last successful run", [(f"time() - max by (instance) (norn_compactor_last_successful_run_timestamp_seconds{{{SEL}}} > 0)", "{{instance}}")], "s"),
            panel("Runs started, completed, failed", [
                (f"sum(increase(norn_compactor_runs_started_total{{{SEL}}}[1h]))", "started"),
                (f"sum(increase(norn_compactor_runs_completed_total{{{SEL}}}[1h]))", "completed"),
                (f"sum(increase(norn_compactor_runs_failed_total{{{SEL}}}[1h]))", "failed")]),
            panel("Tenants owned", [(f"norn_compactor_tenants_owned{{{SEL}}}", "{{instance}}")]),
        ]),
        ("Compactions", [
            panel("Group compactions and failures", [
                (rate("norn_compactor_group_compactions_total"), "compactions"),
                (rate("norn_compactor_group_compactions_failures_total"), "failures")]),
            panel("Blocks compacted", [(rate("norn_compactor_blocks_compacted_total"), "blocks")]),
            panel("Compaction duration (p99)", [(quantile(0.99, "norn_compactor_compaction_duration_seconds"), "p99")], "s"),
        ]),
        ("Cleanup", [
            panel("Blocks marked for deletion by reason", [(f"sum by (reason) (increase(norn_compactor_blocks_marked_for_deletion_total{{{SEL}}}[1h]))", "{{reason}}")]),
            panel("Blocks marked no-compact", [(f"sum by (reason) (increase(norn_compactor_blocks_marked_for_no_compaction_total{{{SEL}}}[1h]))", "{{reason}}")]),
            panel("Blocks deleted, partial blocks deleted", [
                (f"sum(increase(norn_compactor_blocks_cleaned_total{{{SEL}}}[1h]))", "deleted"),
                (f"sum(increase(norn_compactor_partial_blocks_deleted_total{{{SEL}}}[1h]))", "partial deleted")]),
            panel("Bucket index updates and failures", [
                (rate("norn_compactor_bucket_index_updates_total"), "updates"),
                (rate("norn_compactor_bucket_index_update_failures_total"), "failures")]),
        ]),
    ])
    dashboard("norn-query-frontend-queue", "Norn / Query-frontend queue", [
        ("Queue", [
            panel("Queue length by tenant", [(f"sum by (tenant) (norn_query_frontend_queue_length{{{SEL}}})", "{{tenant}}")]),
            panel("Connected querier workers", [(f"sum by (instance) (norn_query_frontend_connected_workers{{{SEL}}})", "{{instance}}")],
                  desc="0: no querier connected; the frontend is not ready."),
            panel("Queue wait (p99)", [(quantile(0.99, "norn_query_frontend_queue_duration_seconds"), "p99")], "s"),
        ]),
        ("Discards and requeues", [
            panel("Discarded requests by reason", [(rate("norn_query_frontend_discarded_requests_total", by="reason"), "{{reason}}")], "reqps"),
            panel("Requeued requests", [(rate("norn_query_frontend_requeued_requests_total"), "requeued")], "reqps"),
            panel("Sharded queries and legs", [
                (rate("norn_query_frontend_sharded_queries_total"), "queries"),
                (rate("norn_query_frontend_sharded_query_legs_total"), "legs")]),
        ]),
    ])
    dashboard("norn-ruler", "Norn / Ruler", [
        ("Evaluations", [
            panel("Rule evaluations and failures", [
                (rate("norn_ruler_rule_evaluations_total", by="tenant"), "{{tenant}}"),
                (rate("norn_ruler_rule_evaluation_failures_total", by="tenant"), "failures {{tenant}}")]),
            panel("Missed iterations", [(f"sum by (tenant) (increase(norn_ruler_group_iterations_missed_total{{{SEL}}}[10m]))", "{{tenant}}")]),
            panel("Group evaluation duration (p99)", [(quantile(0.99, "norn_ruler_group_evaluation_duration_seconds", by="le, tenant"), "{{tenant}}")], "s"),
        ]),
        ("Groups and output", [
            panel("Rule groups", [(f"sum by (tenant) (norn_ruler_rule_groups{{{SEL}}})", "{{tenant}}")]),
            panel("Time since the oldest group's evaluation", [(f"time() - min by (tenant) (norn_ruler_last_evaluation_timestamp_seconds{{{SEL}}})", "{{tenant}}")], "s"),
            panel("Samples written and rejected", [
                (rate("norn_ruler_samples_written_total", by="tenant"), "written {{tenant}}"),
                (rate("norn_ruler_samples_rejected_total", by="tenant"), "rejected {{tenant}}")]),
            panel("Queries and failures", [
                (rate("norn_ruler_queries_total", by="tenant"), "{{tenant}}"),
                (rate("norn_ruler_queries_failed_total", by="tenant"), "failed {{tenant}}")]),
        ]),
        ("Alerts and notifications", [
            panel("Alerts by state", [(f"sum by (state) (norn_ruler_alerts{{{SEL}}})", "{{state}}")]),
            panel("Notifications sent and failed", [
                (rate("norn_ruler_notifications_sent_total", by="alertmanager"), "sent {{alertmanager}}"),
                (rate("norn_ruler_notifications_errors_total", by="alertmanager"), "errors {{alertmanager}}"),
                (rate("norn_ruler_notifications_dropped_total", by="tenant"), "dropped {{tenant}}")]),
            panel("Notification latency (p99)", [(quantile(0.99, "norn_ruler_notification_latency_seconds", by="le, alertmanager"), "{{alertmanager}}")], "s"),
            panel("Notification queue", [
                (f"sum by (tenant) (norn_ruler_notifications_queue_length{{{SEL}}})", "length {{tenant}}"),
                (f"sum by (tenant) (norn_ruler_notifications_queue_capacity{{{SEL}}})", "capacity {{tenant}}")]),
        ]),
    ])
    t = 'tenant=~"$tenant"'
    dashboard("norn-tenants", "Norn / Per-tenant limits", [
        ("Series and samples", [
            panel("In-memory series (all ingesters, all replicas)", [(f"sum by (tenant) (norn_ingester_memory_series{{{SEL},{t}}})", "{{tenant}}")],
                  desc="Each series is counted once per replica (RF); compare to max_global_series_per_user x RF."),
            panel("Samples received", [(rate("norn_distributor_received_samples_total", t, "tenant"), "{{tenant}}")],
                  desc="Compare to the tenant's ingestion_rate."),
            panel("Discarded samples by reason", [(rate("norn_discarded_samples_total", t, "tenant, reason"), "{{tenant}} {{reason}}")]),
        ]),
        ("Queries and rules", [
            panel("Queued queries", [(f"sum by (tenant) (norn_query_frontend_queue_length{{{SEL},{t}}})", "{{tenant}}")]),
            panel("Discarded metadata by reason", [(rate("norn_discarded_metadata_total", t, "tenant, reason"), "{{tenant}} {{reason}}")]),
            panel("Rule groups", [(f"sum by (tenant) (norn_ruler_rule_groups{{{SEL},{t}}})", "{{tenant}}")],
                  desc="Compare to ruler_max_rule_groups_per_tenant."),
        ]),
    ], extra_vars=[tenant_var("norn_ingester_memory_series")])


if __name__ == "__main__":
    main()
