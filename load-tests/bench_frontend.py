"""The `frontend` workload of load-tests/bench (issue 18): query sharding and the results cache
of the query-frontend, measured on a cluster of real processes on 127.0.0.1.

The cluster, as the issue describes it: one backend process (`--target=ingester,distributor,
store-gateway`), a `--target=query-frontend` with no downstream URL and two `--target=querier`
processes that connect out to it (`--querier.frontend-address`) and pull work over gRPC, with
the default `--querier.max-concurrent` (20) workers each. All share one filesystem bucket and
find each other by gossip. Between variants only the frontend and the queriers are restarted;
the backend keeps its data.

Sharding. `--series` (default 1,000,000) of the load generator's node_exporter-like series,
1 h at 15 s, pushed to the distributor with `norn-loadgen write` (as `bench large` does), so the
queries read the ingester's head. Then per variant - unsharded
(`--query-frontend.parallelize-shardable-queries=false`) and sharded with each of `--shards`
(default 16) - fresh queriers and frontend with the results cache OFF, so every run computes:

  * `sum by (job) (rate(node_cpu_seconds_total[5m]))` as a range query over the hour at step
    15 s (node_cpu_seconds_total is 32 of every target's 100 series: 320k series at 1M), once
    unmeasured, then `--reps` times one at a time: p50 / p90 of the wall time seen by the client;
  * the dashboard mix (`norn-loadgen query --mix dashboard --concurrency 1 --warmup 1 --repeat
    <reps> --range 1h --step 15s`): p50 / p90 per query;
  * the peak RSS (`VmHWM`) of each querier and the frontend, and the CPU-s each process (frontend,
    queriers, backend) spent per high-cardinality query, which says where the time goes;
  * whether the high-cardinality answer is identical to the unsharded one (every series, every
    timestamp, every value as the JSON string), and if not, the largest relative difference.

Results cache. `--cache-series` (default 10,000) series x `--days` (default 7) at 15 s as 2h
blocks in the bucket, written by gen_blocks and ending 14 h ago, so a query over them is answered
by the store-gateway path alone (older than `querier.query-store-after`, 12 h, and than
`query-ingesters-within`, 13 h). A frontend with `--query-frontend.cache-results=true` (inmemory
backend), the default 24 h split and sharding as the last `--shards` value (the deployed
pipeline), and two fresh queriers. A 7-day dashboard range query at step 5 m over 320 series
(`sum by (mode) (rate(node_cpu_seconds_total{instance=~"<10 hosts>"}[5m]))`), for
`CACHE_GROUPS` distinct host groups (distinct cache keys): each first cold (nothing cached for
it), then the same query `WARM_ROUNDS` times (warm), then with start and end moved 5 min later
(a dashboard refresh: the cached extents are reused, only the new 5 minutes computed).
`norn_query_frontend_results_cache_hits_total` / `..._misses_total` are read from the frontend's
`/metrics` before and after each phase.

The data is kept under --data-dir/frontend and the blocks are reused by a later run of the same
shape. The 1 h of pushed data is written fresh on each run (it must end near now).
"""

import json
import os
import shutil
import subprocess
import time
from urllib.parse import urlencode

import bench_storage as st

H = 3600
HC_QUERY = "sum by (job) (rate(node_cpu_seconds_total[5m]))"
CACHE_QUERY = 'sum by (mode) (rate(node_cpu_seconds_total{{instance=~"host-{grp}[0-9]:9100"}}[5m]))'
CACHE_GROUPS = 5  # distinct 7-day queries, each cold once
WARM_ROUNDS = 3  # warm executions of each
CACHE_STEP = 300  # 5 m: what Grafana uses for 7 days on a ~2000 px wide panel
HITS = "norn_query_frontend_results_cache_hits_total"
MISSES = "norn_query_frontend_results_cache_misses_total"
LEGS = "norn_query_frontend_sharded_query_legs_total"
QWAIT = "norn_query_frontend_queue_duration_seconds"


class Cluster:
    """The backend process, kept for the whole run; frontend and queriers started per variant."""

    def __init__(self, b, norn, root, bucket):
        self.b, self.norn, self.root, self.bucket = b, norn, root, bucket
        self.gossip_seed = b.free_port()
        self.frontend, self.queriers = None, []
        self.backend = self._start("backend", self.gossip_seed, [
            "--target=ingester,distributor,store-gateway",
            "--ingester.ring.instance-id=ingester-0",
        ])

    def _start(self, name, gossip, extra):
        b = self.b
        port, grpc = b.free_port(), b.free_port()
        work = os.path.join(self.root, name)
        shutil.rmtree(work, ignore_errors=True)
        os.makedirs(work)
        cmd = [self.norn, "--server.http-listen-address=127.0.0.1", f"--server.http-listen-port={port}",
               "--server.grpc-listen-address=127.0.0.1", f"--server.grpc-listen-port={grpc}",
               "--memberlist.bind-addr=127.0.0.1", f"--memberlist.bind-port={gossip}",
               "--memberlist.gossip-interval=100ms", "--memberlist.pullpush-interval=2s",
               "--auth.multitenancy-enabled=false", "--ingester.ring.replication-factor=1",
               "--ingester.ring.heartbeat-period=1s",
               f"--blocks-storage.tsdb.dir={work}/tsdb", "--blocks-storage.backend=filesystem",
               f"--common.storage.filesystem.dir={self.bucket}",
               f"--blocks-storage.bucket-store.sync-dir={work}/sync",
               # Limits lifted: the bench measures the query path, not the limiter.
               "--distributor.ingestion-rate-limit=100000000000", "--distributor.ingestion-burst-size=1000000000",
               "--ingester.max-global-series-per-user=0", "--querier.max-fetched-chunks-per-query=0",
               "--querier.max-samples=2000000000", "--querier.timeout=10m"]
        if gossip != self.gossip_seed:
            cmd.append(f"--memberlist.join=127.0.0.1:{self.gossip_seed}")
        p = st.Proc(b, name, cmd + extra, f"http://127.0.0.1:{port}", "/ready", os.path.join(work, "norn.log"), work)
        p.grpc = grpc
        return p

    def start_query_path(self, sharding, shards, cache):
        """A fresh frontend and two fresh queriers; waits until a query through them sees data."""
        self.stop_query_path()
        name = f"frontend-{shards if sharding else 'unsharded'}{'-cache' if cache else ''}"
        fe = self._start(name, self.b.free_port(), [
            "--target=query-frontend",
            f"--query-frontend.parallelize-shardable-queries={'true' if sharding else 'false'}",
            f"--query-frontend.query-sharding-total-shards={shards}",
            f"--query-frontend.cache-results={'true' if cache else 'false'}",
        ])
        self.frontend = fe
        for i in range(2):
            q = self._start(f"querier-{i}", self.b.free_port(), [
                "--target=querier", f"--querier.frontend-address=127.0.0.1:{fe.grpc}"])
            self.queriers.append(q)
        for q in self.queriers:
            q.wait_ready(120)
        fe.wait_ready(120)

    def stop_query_path(self):
        for p in self.queriers + ([self.frontend] if self.frontend else []):
            p.close()
        self.frontend, self.queriers = None, []

    def close(self):
        self.stop_query_path()
        self.backend.close()

    def api(self):
        return self.frontend.base + "/prometheus/api/v1"

    def cpu(self):
        return dict(frontend=self.frontend.cpu_s(), queriers=sum(q.cpu_s() for q in self.queriers),
                    backend=self.backend.cpu_s())


def range_query(b, api, expr, start, end, step, timeout=900):
    """(seconds, parsed result) of one range query; raises on anything but 200."""
    url = f"{api}/query_range?" + urlencode(dict(query=expr, start=start, end=end, step=step))
    t0 = time.perf_counter()
    status, body = b.http("GET", url, timeout=timeout)
    elapsed = time.perf_counter() - t0
    if status != 200:
        raise RuntimeError(f"query {expr!r} answered {status}: {body[:300]!r}")
    return elapsed, json.loads(body)["data"]["result"]


def canonical(result):
    """{sorted label pairs: [(t, value string)]}: two answers are identical iff these are equal."""
    return {tuple(sorted(s["metric"].items())): [tuple(v) for v in s["values"]] for s in result}


def compare(a, b_):
    """'identical', or how the answers differ (series sets, or the largest relative difference)."""
    if a == b_:
        return "identical"
    if set(a) != set(b_):
        return f"DIFFERENT series ({len(a)} vs {len(b_)})"
    worst = 0.0
    for k, va in a.items():
        vb = b_[k]
        if [t for t, _ in va] != [t for t, _ in vb]:
            return "DIFFERENT timestamps"
        for (_, x), (_, y) in zip(va, vb):
            x, y = float(x), float(y)
            if x != y:
                worst = max(worst, abs(x - y) / max(abs(x), abs(y)))
    return f"equal within {worst:.1e} (relative; float summation order)"


def wait_for_data(b, cluster, expr, start, end, step, timeout=120):
    deadline = time.time() + timeout
    last = None
    while time.time() < deadline:
        try:
            _, res = range_query(b, cluster.api(), expr, start, end, step, timeout=300)
            if res:
                return
        except RuntimeError as e:
            last = e
        time.sleep(1)
    raise RuntimeError(f"no data through the frontend after {timeout} s: {last}")


def sharding_variant(b, args, cluster, loadgen, sharding, shards, end):
    cluster.start_query_path(sharding, shards, cache=False)
    start = end - H
    wait_for_data(b, cluster, HC_QUERY, start, end, 15)
    m0 = st.metrics(b, cluster.frontend.base)
    range_query(b, cluster.api(), HC_QUERY, start, end, 15)  # unmeasured
    lat, answer = [], None
    load0 = st.loadavg()
    cpu0 = cluster.cpu()
    for _ in range(args.reps):
        elapsed, res = range_query(b, cluster.api(), HC_QUERY, start, end, 15)
        lat.append(elapsed)
        answer = answer or canonical(res)
    cpu1 = cluster.cpu()
    m1 = st.metrics(b, cluster.frontend.base)
    legs = st.metric_sum(m1, LEGS) - st.metric_sum(m0, LEGS)
    # Mean time a request waited in the frontend's queue for a querier worker.
    waits = st.metric_sum(m1, QWAIT + "_count") - st.metric_sum(m0, QWAIT + "_count")
    wait_s = st.metric_sum(m1, QWAIT + "_sum") - st.metric_sum(m0, QWAIT + "_sum")
    q = b.run([loadgen, "query", "--url", cluster.api(), "--mix", "dashboard", "--time", str(end),
               "--range", "1h", "--step", "15s", "--series", str(args.series), "--concurrency", "1",
               "--warmup", "1", "--repeat", str(args.reps), "--duration", "3600s", "--timeout", "600s",
               "--json"], timeout=4000, capture_output=True, text=True)
    if q.returncode != 0:
        raise RuntimeError(f"dashboard mix failed: {q.stderr[-500:]}")
    mix = json.loads(q.stdout.strip().splitlines()[-1])["queries"]
    mix_errors = sum(sum((x.get("errors") or {}).values()) for x in mix)
    out = dict(sharding=sharding, shards=shards if sharding else 0, hc=lat, answer=answer, mix=mix,
               hc_legs=legs / (args.reps + 1), queue_wait=wait_s / max(1, waits),
               requests=waits / (args.reps + 1),
               cpu_per_query={k: (cpu1[k] - cpu0[k]) / args.reps for k in cpu0},
               mix_errors=mix_errors, querier_hwm=[q_.hwm_mb() for q_ in cluster.queriers], frontend_hwm=cluster.frontend.hwm_mb(),
               load=(load0, st.loadavg()))
    cluster.stop_query_path()
    b.log(f"sharding variant {out['shards']}: p50 {st.pct(lat, 0.5):.3f} s, cpu {out['cpu_per_query']}")
    return out


def cache_phase(b, cluster, data_end, days):
    """Cold, warm and moved-end executions of the 7-day query, with cache hits/misses per phase."""
    fe = cluster.frontend
    res = {p: dict(lat=[], hits=0.0, misses=0.0) for p in ("cold", "warm", "moved")}
    end = data_end - 600
    start = end - days * 24 * H
    same = True
    # 100 series per target, groups of 10 targets: at most one group per 1,000 series.
    groups = max(1, min(CACHE_GROUPS, cluster.cache_series // 1000))
    res["groups"] = groups
    for g in range(groups):
        expr = CACHE_QUERY.format(grp=f"000{g}")
        answers = []
        for phase, n, shift in (("cold", 1, 0), ("warm", WARM_ROUNDS, 0), ("moved", 1, 300)):
            for _ in range(n):
                m0 = st.metrics(b, fe.base)
                elapsed, r = range_query(b, cluster.api(), expr, start + shift, end + shift, CACHE_STEP)
                m1 = st.metrics(b, fe.base)
                res[phase]["lat"].append(elapsed)
                res[phase]["hits"] += st.metric_sum(m1, HITS) - st.metric_sum(m0, HITS)
                res[phase]["misses"] += st.metric_sum(m1, MISSES) - st.metric_sum(m0, MISSES)
                if shift == 0:
                    answers.append(canonical(r))
                if not r:
                    raise RuntimeError(f"the 7-day query {expr!r} found no data")
        same = same and all(a == answers[0] for a in answers)
    res["warm_identical"] = same
    return res


def frontend(b, args, norn, loadgen, gen_bin):
    root = os.path.join(args.data_dir, "frontend")
    bucket = os.path.join(root, "bucket")
    tenant_dir = os.path.join(bucket, "anonymous")
    series = args.series = args.series or 1_000_000
    cache_series, days = args.cache_series or 10_000, args.days or 7
    shards = [s for s in args.shards if s > 1] or [16]
    # The blocks end 14 h ago, aligned to 2 h: older than query-store-after and
    # query-ingesters-within, so the 7-day query is the store-gateway path's alone.
    end_s = (int(time.time()) - 14 * H) // (2 * H) * (2 * H)
    gen = st.generate(b, gen_bin, tenant_dir, cache_series, days * 24, end_s)
    data_end = gen["end_s"]
    blocks = st.block_dirs(tenant_dir)
    res = dict(gen=gen, series=series, cache_series=cache_series, days=days, variants=[])
    cluster = Cluster(b, norn, os.path.join(root, "run"), bucket)
    try:
        cluster.backend.wait_ready(300)
        st.wait_loaded(b, cluster.backend, len(blocks), timeout=1800)
        end = int(time.time()) // 15 * 15
        load0 = st.loadavg()
        r = b.run([loadgen, "write", "--url", cluster.backend.base + "/api/v1/push", "--series", str(series),
                   "--interval", "15s", "--backfill", "1h", "--end-time", str(end), "--duration", "7200s",
                   "--json", *b.WRITE_ARGS], timeout=7500, capture_output=True, text=True)
        if r.returncode != 0:
            raise RuntimeError(f"write load failed: {r.stderr[-800:]}")
        res["write"] = dict(json.loads(r.stdout.strip().splitlines()[-1]), load=(load0, st.loadavg()),
                            backend_rss=cluster.backend.rss_mb())
        b.log(f"wrote {res['write']['samples_sent']:,} samples")
        for sharding, n in [(False, 0)] + [(True, s) for s in shards]:
            res["variants"].append(sharding_variant(b, args, cluster, loadgen, sharding, n or 16, end))
        cluster.cache_series = cache_series
        cluster.start_query_path(True, shards[-1], cache=True)
        load0 = st.loadavg()
        res["cache"] = cache_phase(b, cluster, data_end, days)
        res["cache"].update(load=(load0, st.loadavg()), shards=shards[-1],
                            querier_hwm=[q.hwm_mb() for q in cluster.queriers])
    finally:
        cluster.close()
    return section(args, res)


# ---------------------------------------------------------------------------------------------
# the page


def ms(x):
    return "n/a" if x is None else f"{x * 1e3:,.0f}" if x >= 0.1 else f"{x * 1e3:.1f}"


def section(args, res):
    vs = res["variants"]
    base = vs[0]
    sharded = vs[1:]
    head = ["query", "kind", "unsharded p50 / p90 (ms)"]
    for v in sharded:
        head += [f"{v['shards']} shards p50 / p90 (ms)", f"{v['shards']} shards: p50 unsharded / sharded"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]

    def row(name, kind, lats):
        cells = [name, kind, f"{ms(st.pct(lats[0], .5))} / {ms(st.pct(lats[0], .9))}"]
        for lat in lats[1:]:
            cells += [f"{ms(st.pct(lat, .5))} / {ms(st.pct(lat, .9))}",
                      f"**{st.pct(lats[0], .5) / st.pct(lat, .5):.2f}x**"]
        lines.append("| " + " | ".join(cells) + " |")

    row(f"`{HC_QUERY}`", "range 1h / 15s", [v["hc"] for v in vs])
    for q in base["mix"]:
        others = [next((x for x in v["mix"] if x["name"] == q["name"] and x["kind"] == q["kind"]), None) for v in vs]
        if any(o is None or o["p50"] is None for o in others):
            continue
        cells = [f"`{q['name']}`", q["kind"] + (" 1h / 15s" if q["kind"] == "range" else ""),
                 f"{ms(others[0]['p50'])} / {ms(others[0]['p90'])}"]
        for o in others[1:]:
            cells += [f"{ms(o['p50'])} / {ms(o['p90'])}", f"{others[0]['p50'] / o['p50']:.2f}x"]
        lines.append("| " + " | ".join(cells) + " |")

    failed = [f"{'unsharded' if not v['sharding'] else str(v['shards']) + ' shards'}: `{x['name']}` {x['kind']} "
              f"{json.dumps(x.get('errors'))}" for v in vs for x in v["mix"] if x.get("errors")]
    proc = ["| variant | queued requests per query | mean queue wait (ms) | CPU-s per query: frontend / queriers / backend | "
            "peak RSS queriers (MiB) | peak RSS frontend (MiB) | answer vs unsharded | mix errors | load avg start / end |",
            "|---|---|---|---|---|---|---|---|---|"]
    for v in vs:
        c = v["cpu_per_query"]
        name = "unsharded" if not v["sharding"] else f"{v['shards']} shards"
        same = "-" if v is base else st_compare(base["answer"], v["answer"])
        proc.append(f"| {name} | {v['requests']:.0f} | {v['queue_wait'] * 1e3:.1f} | {c['frontend']:.2f} / {c['queriers']:.2f} / {c['backend']:.2f} | "
                    f"{' + '.join(f'{x:,.0f}' for x in v['querier_hwm'])} | {v['frontend_hwm']:,.0f} | {same} | {v['mix_errors']} | "
                    f"{v['load'][0]:.2f} / {v['load'][1]:.2f} |")

    c = res["cache"]
    ctab = ["| phase | executions | p50 (ms) | p90 (ms) | cache hits | cache misses |", "|---|---|---|---|---|---|"]
    for phase, label in (("cold", "cold (nothing cached)"), ("warm", "warm (same query again)"),
                         ("moved", "moved end (+5 min)")):
        p = c[phase]
        ctab.append(f"| {label} | {len(p['lat'])} | {ms(st.pct(p['lat'], .5))} | {ms(st.pct(p['lat'], .9))} | "
                    f"{p['hits']:.0f} | {p['misses']:.0f} |")
    cold, warm = st.pct(c["cold"]["lat"], .5), st.pct(c["warm"]["lat"], .5)

    targets = []
    for v in sharded:
        f = st.pct(base["hc"], .5) / st.pct(v["hc"], .5)
        targets.append(f"sharding at {v['shards']} shards on 2 cores at least halves the p50 of the "
                       f"high-cardinality aggregation: **{'met' if f >= 2 else 'not met'}** "
                       f"({f:.2f}x: {ms(st.pct(base['hc'], .5))} ms unsharded, {ms(st.pct(v['hc'], .5))} ms sharded)")
    targets.append(f"a warm cache answers the repeated 7-day query >= 10x faster than cold: "
                   f"**{'met' if cold / warm >= 10 else 'not met'}** ({cold / warm:,.0f}x: {ms(cold)} ms cold, "
                   f"{ms(warm)} ms warm)")
    w, gen = res["write"], res["gen"]
    return f"""<!-- bench:frontend -->
## Workload `frontend`: query sharding and the results cache (issue 18)

* Date: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}
* Command: `{args.command}`
* Machine: {args.machine}
* Versions: Norn {args.versions['norn']}; {args.versions['rustc']}
* Cluster: one `--target=ingester,distributor,store-gateway` process, a `--target=query-frontend`
  with no downstream URL and two `--target=querier` processes pulling from it over gRPC
  (`--querier.frontend-address`, 20 workers each), all on 127.0.0.1 with one filesystem bucket;
  limits on samples/chunks per query lifted; `--querier.max-query-parallelism` at its default (14
  legs of one query in flight).
* Sharding data: {res['series']:,} series x 1 h at 15 s ({w['samples_sent']:,} samples, {sum((w['errors'] or {}).values()) if isinstance(w['errors'], dict) else w['errors']} write
  errors) pushed with `norn-loadgen write` in {w.get('elapsed_seconds', 0):.0f} s (load {w['load'][0]:.2f} /
  {w['load'][1]:.2f}); the queries read the ingester's head. Backend RSS after the write:
  {w['backend_rss']:,.0f} MiB.
* Per variant a fresh frontend and queriers, results cache off: the high-cardinality query once
  unmeasured then {args.reps} times; the dashboard mix with `--warmup 1 --repeat {args.reps}
  --concurrency 1 --range 1h --step 15s`. Latency is the client's wall time.

{chr(10).join(lines)}

{chr(10).join(proc)}

* CPU-s per query are utime + stime of each process over the {args.reps} measured runs of the
  high-cardinality query, divided by {args.reps}; queued requests and the mean wait are from
  `{QWAIT}` (count and sum) over the high-cardinality runs.
* Dashboard-mix queries that failed (a query without an answer in some variant is left out of
  the table): {'; '.join(failed) if failed else 'none'}.

Results cache: {res['cache_series']:,} series x {res['days']} days at 15 s as {gen['blocks']} 2h blocks
({gen['samples']:,} samples, written by gen_blocks in {gen['elapsed_seconds']:.0f} s) ending 14 h
before the run, served by the store-gateway path. Query: `{CACHE_QUERY.format(grp='000<g>')}` (320
series) over {res['days']} days at step {CACHE_STEP // 60}m, for {c['groups']} host groups g; frontend with
`--query-frontend.cache-results=true` (inmemory), split by 24 h, {c['shards']} shards. Cold: the
first execution of each group's query; warm: the same query {WARM_ROUNDS} times more; moved end:
start and end +5 min (a dashboard refresh). Hits/misses: deltas of `{HITS}` and `{MISSES}`.
Load {c['load'][0]:.2f} / {c['load'][1]:.2f}; warm answers identical to the cold ones:
{'yes' if c['warm_identical'] else 'NO'}.

{chr(10).join(ctab)}

Targets (issue 18):

{chr(10).join('* ' + t for t in targets)}
<!-- /bench:frontend -->
"""


def st_compare(a, b_):
    if a is None or b_ is None:
        return "n/a"
    return compare(a, b_)
