"""The `ruler` workload of load-tests/bench (issue 19): 10,000 rules across 100 tenants on one
ruler, beside Prometheus 2.42 evaluating the same 10,000 rules.

Norn runs `--target=all` (its ruler evaluating in-process) with 100 tenants, each receiving the
load generator's 100 node_exporter-like series live at 15 s (`norn-loadgen write --mode live`),
and each with 10 groups of 10 rules (8 recording, 2 alerting; one recording rule reads another's
output) at the default 1m interval. Prometheus gets the same 100 series once and the same 1,000
groups in a rule file, so every one of its rule evaluations reads exactly the data one of
Norn's does. VictoriaMetrics' rule engine (vmalert) is not part of Debian's victoria-metrics
package, so it is not measured.

For each system: start it, write live for the whole run, wait `WARMUP_S` for data, measure the
process's CPU over `IDLE_S` with no rules (ingest only), load the rules (Norn: the config API,
one POST per group; Prometheus: the rule file and POST /-/reload), let `SETTLE_S` pass so every
group has started, then measure over `MEASURE_S`:
  * CPU per rule evaluation: (CPU-s over the window - the idle CPU rate x the window) / rule
    evaluations in the window (norn_ruler_rule_evaluations_total,
    prometheus_rule_evaluations_total);
  * missed iterations over the whole run with rules (norn_ruler_group_iterations_missed_total,
    prometheus_rule_group_iterations_missed_total); the target is 0;
  * failed evaluations;
  * memory: RSS with rules - RSS before the rules were loaded (the rule manager, its state and
    the recorded series), and peak RSS.
"""

import json
import os
import subprocess
import time

import bench_storage as bs

TENANTS = 100
GROUPS = 10
SERIES = 100
WARMUP_S = 90
IDLE_S = 60
SETTLE_S = 70
MEASURE_S = 180


def group_yaml(k):
    """Group `g<k>`: 10 rules over the node_exporter-like series; names carry the group index so
    groups never write the same series."""
    return f"""name: g{k}
rules:
  - record: instance:node_cpu:rate5m_g{k}
    expr: sum by (instance) (rate(node_cpu_seconds_total{{mode!="idle"}}[5m]))
  - record: instance_mode:node_cpu:rate5m_g{k}
    expr: sum by (instance, mode) (rate(node_cpu_seconds_total[5m]))
  - record: instance:node_network_receive_bytes:rate5m_g{k}
    expr: sum by (instance) (rate(node_network_receive_bytes_total[5m]))
  - record: instance:node_network_transmit_bytes:rate5m_g{k}
    expr: sum by (instance) (rate(node_network_transmit_bytes_total[5m]))
  - record: instance:node_filesystem_avail:ratio_g{k}
    expr: node_filesystem_avail_bytes / node_filesystem_size_bytes
  - record: job:node_cpu:avg_g{k}
    expr: avg by (job) (instance:node_cpu:rate5m_g{k})
  - record: job:node_cpu_series:count_g{k}
    expr: count by (job) (node_cpu_seconds_total)
  - record: instance:node_filesystem_avail:max10m_g{k}
    expr: max by (instance) (max_over_time(node_filesystem_avail_bytes[10m]))
  - alert: HostCpuBusy_g{k}
    expr: instance:node_cpu:rate5m_g{k} > 0
    for: 5m
    labels:
      severity: warning
    annotations:
      summary: '{{{{ $labels.instance }}}} CPU busy: {{{{ $value | humanize }}}}'
  - alert: FilesystemNotFull_g{k}
    expr: instance:node_filesystem_avail:ratio_g{k} < 2
    labels:
      severity: info
    annotations:
      summary: '{{{{ $labels.instance }}}} {{{{ $labels.mountpoint }}}} at {{{{ $value | humanizePercentage }}}}'
"""


def indent(text, n):
    return "".join(" " * n + line + "\n" for line in text.splitlines())


def loadgen_live(b, loadgen, url, tenants, duration_s, log_path):
    cmd = [loadgen, "write", "--url", url, "--series", str(SERIES), "--interval", "15s",
           "--mode", "live", "--duration", f"{duration_s}s", "--progress", "0s", "--json"]
    if tenants:
        cmd += ["--tenant", ",".join(tenants)]
    logf = open(log_path, "w")
    p = subprocess.Popen(cmd, stdout=logf, stderr=subprocess.STDOUT)
    b.children.append(p)
    return p, logf


def measure(b, name, proc, load_rules, eval_metric, missed_metric, failed_metric):
    """The common measuring sequence; `proc` is a started, ready bs.Proc."""
    b.log(f"{name}: {WARMUP_S}s of data before measuring")
    time.sleep(WARMUP_S)
    c0, t0 = proc.cpu_s(), time.time()
    time.sleep(IDLE_S)
    idle_rate = (proc.cpu_s() - c0) / (time.time() - t0)
    rss_before = proc.rss_mb()
    b.log(f"{name}: idle CPU {idle_rate:.3f} cores, RSS {rss_before:.0f} MiB; loading rules")
    t_load = time.time()
    load_rules()
    b.log(f"{name}: rules loaded in {time.time() - t_load:.1f}s; settling {SETTLE_S}s")
    time.sleep(SETTLE_S)
    m0 = bs.metrics(b, proc.base)
    c0, t0 = proc.cpu_s(), time.time()
    time.sleep(MEASURE_S)
    cpu, wall = proc.cpu_s() - c0, time.time() - t0
    m1 = bs.metrics(b, proc.base)
    evals = bs.metric_sum(m1, eval_metric) - bs.metric_sum(m0, eval_metric)
    rule_cpu = cpu - idle_rate * wall
    return {
        "evaluations": evals,
        "evals_per_s": evals / wall,
        "cpu_us_per_eval": rule_cpu / evals * 1e6 if evals else None,
        "rule_cores": rule_cpu / wall,
        "idle_cores": idle_rate,
        "missed": bs.metric_sum(m1, missed_metric),
        "failed": bs.metric_sum(m1, failed_metric),
        "rss_delta_mb": proc.rss_mb() - rss_before,
        "peak_rss_mb": proc.hwm_mb(),
    }


def run_norn(b, norn, loadgen, root):
    work = os.path.join(root, "norn")
    os.makedirs(work, exist_ok=True)
    port, grpc, gossip = b.free_port(), b.free_port(), b.free_port()
    proc = bs.Proc(b, "norn", [
        norn, "--target=all", "--server.http-listen-address=127.0.0.1",
        f"--server.http-listen-port={port}", "--server.grpc-listen-address=127.0.0.1",
        f"--server.grpc-listen-port={grpc}", "--memberlist.bind-addr=127.0.0.1",
        f"--memberlist.bind-port={gossip}", f"--blocks-storage.tsdb.dir={work}/tsdb",
        "--blocks-storage.backend=filesystem", f"--common.storage.filesystem.dir={work}/bucket",
        f"--blocks-storage.bucket-store.sync-dir={work}/sync", f"--compactor.data-dir={work}/compactor",
        "--ruler.poll-interval=10s", "--ruler.max-rule-groups-per-tenant=0",
        "--ruler.max-rules-per-rule-group=0"],
        f"http://127.0.0.1:{port}", "/ready", os.path.join(work, "norn.log"), work)
    tenants = [f"tenant-{i:03}" for i in range(TENANTS)]
    gen = None
    try:
        proc.wait_ready()
        total = WARMUP_S + IDLE_S + SETTLE_S + MEASURE_S + 120
        gen, genlog = loadgen_live(b, loadgen, proc.base + "/api/v1/push", tenants, total,
                                   os.path.join(work, "loadgen.log"))

        def load_rules():
            for t in tenants:
                for k in range(GROUPS):
                    status, body = b.http_body("POST", proc.base + "/prometheus/config/v1/rules/bench",
                                               group_yaml(k).encode(),
                                               {"X-Scope-OrgID": t, "Content-Type": "application/yaml"})
                    if status != 202:
                        raise RuntimeError(f"rule upload for {t} g{k}: {status} {body[:300]!r}")

        res = measure(b, "norn", proc, load_rules, "norn_ruler_rule_evaluations_total",
                      "norn_ruler_group_iterations_missed_total",
                      "norn_ruler_rule_evaluation_failures_total")
        m = bs.metrics(b, proc.base)
        res["groups"] = bs.metric_sum(m, "norn_ruler_rule_groups")
        return res
    finally:
        if gen:
            b.stop(gen)
        proc.close()


def run_prometheus(b, loadgen, root):
    data = os.path.join(root, "prometheus")
    os.makedirs(data, exist_ok=True)
    rules = os.path.join(data, "rules.yml")
    with open(rules, "w") as f:
        f.write("groups: []\n")
    port = b.free_port()
    config = os.path.join(data, "prometheus.yml")
    with open(config, "w") as f:
        f.write(f"global:\n  evaluation_interval: 1m\nrule_files:\n  - {rules}\nscrape_configs: []\n")
    proc = bs.Proc(b, "prometheus", ["prometheus", f"--config.file={config}",
                                     f"--storage.tsdb.path={data}/tsdb",
                                     f"--web.listen-address=127.0.0.1:{port}",
                                     "--web.enable-remote-write-receiver", "--web.enable-lifecycle"],
                   f"http://127.0.0.1:{port}", "/-/ready", os.path.join(data, "prometheus.log"), data)
    gen = None
    try:
        proc.wait_ready()
        total = WARMUP_S + IDLE_S + SETTLE_S + MEASURE_S + 120
        gen, genlog = loadgen_live(b, loadgen, proc.base + "/api/v1/write", [], total,
                                   os.path.join(data, "loadgen.log"))

        def load_rules():
            # The same 1,000 groups: group g<k> of "tenant" t, named t-g<k> (a Prometheus file
            # holds each group name once).
            with open(rules, "w") as f:
                f.write("groups:\n")
                for t in range(TENANTS):
                    for k in range(GROUPS):
                        g = group_yaml(k).replace(f"name: g{k}\n", f"name: t{t:03}-g{k}\n", 1)
                        f.write(indent("- " + g.replace("\n", "\n  ").rstrip(), 2))
            status, body = b.http("POST", proc.base + "/-/reload", timeout=120)
            if status != 200:
                raise RuntimeError(f"prometheus reload: {status} {body[:300]!r}")

        res = measure(b, "prometheus", proc, load_rules, "prometheus_rule_evaluations_total",
                      "prometheus_rule_group_iterations_missed_total",
                      "prometheus_rule_evaluation_failures_total")
        m = bs.metrics(b, proc.base)
        res["groups"] = len({k for k in m if k.startswith("prometheus_rule_group_rules{")})
        return res
    finally:
        if gen:
            b.stop(gen)
        proc.close()


def fmt(v, f):
    return "—" if v is None else format(v, f)


def section(args, res):
    rows = [
        ("rule groups running", "groups", ",.0f"),
        ("rule evaluations in the window", "evaluations", ",.0f"),
        ("rule evaluations/s", "evals_per_s", ",.1f"),
        ("CPU per rule evaluation (µs)", "cpu_us_per_eval", ",.0f"),
        ("cores for rules", "rule_cores", ".3f"),
        ("cores idle (ingest only)", "idle_cores", ".3f"),
        ("missed iterations", "missed", ",.0f"),
        ("failed evaluations", "failed", ",.0f"),
        ("RSS with rules − before (MiB)", "rss_delta_mb", ",.0f"),
        ("peak RSS (MiB)", "peak_rss_mb", ",.0f"),
    ]
    systems = [s for s in ("norn", "prometheus") if s in res]
    head = "| figure | " + " | ".join(systems) + (" | Norn / Prometheus |" if len(systems) == 2 else " |")
    lines = [head, "|" + "---|" * (len(systems) + 1 + (len(systems) == 2))]
    for label, key, f in rows:
        cells = [fmt(res[s].get(key), f) for s in systems]
        ratio = ""
        if len(systems) == 2:
            a, p = res["norn"].get(key), res["prometheus"].get(key)
            ratio = " | " + (f"{a / p:.2f}" if a is not None and p else "—")
        lines.append(f"| {label} | " + " | ".join(cells) + ratio + " |")
    table = "\n".join(lines)
    return f"""<!-- bench:ruler -->
## Workload `ruler` (issue 19)

* Date: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}
* Command: `{args.command}`
* Machine: {args.machine}
* Versions: Norn {args.versions['norn']}; {args.versions['prometheus']}; {args.versions['rustc']}
* Workload: {TENANTS} tenants x {GROUPS} groups x 10 rules (8 recording, one of them reading
  another's output; 2 alerting with `for` and templated annotations) = {TENANTS * GROUPS * 10:,}
  rules at the default 1m interval, over {SERIES} node_exporter-like series per tenant written
  live at 15 s by `norn-loadgen write --mode live`. Prometheus evaluates the same {TENANTS * GROUPS}
  groups (one rule file) over one copy of the series, so each of its rule evaluations reads the
  data one of Norn's does. Norn runs `--target=all`; its ruler queries in-process.
* Method: {WARMUP_S}s of data, then the process's CPU over {IDLE_S}s without rules (ingest only),
  then the rules are loaded (Norn: one config-API POST per group; Prometheus: rule file +
  `/-/reload`), {SETTLE_S}s to let every group start, then {MEASURE_S}s measured. CPU per rule
  evaluation = (CPU-s in the window − idle rate × window) / rule evaluations in the window.
  Missed iterations are counted from the load of the rules to the end. VictoriaMetrics is not
  measured: its rule engine, vmalert, is not in Debian's victoria-metrics package.

{table}
<!-- /bench:ruler -->
"""


def ruler(b, args, norn, loadgen):
    root = os.path.join(args.data_dir, "ruler")
    bs.shutil.rmtree(root, ignore_errors=True)
    os.makedirs(root, exist_ok=True)
    res = {}
    if "norn" in args.wanted:
        res["norn"] = run_norn(b, norn, loadgen, root)
        b.log("norn: " + json.dumps(res["norn"]))
    if "prometheus" in args.wanted:
        res["prometheus"] = run_prometheus(b, loadgen, root)
        b.log("prometheus: " + json.dumps(res["prometheus"]))
    return section(args, res)
