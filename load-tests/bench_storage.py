"""The long-term storage workloads of load-tests/bench: `store-gateway` and `compactor`.

Both work on blocks written by `gen_blocks` (load-tests/examples/gen_blocks.rs): the load
generator's node_exporter-like series, written as Prometheus-format 2h blocks straight into a
filesystem bucket's tenant directory, the way RF-3 ingesters would have shipped them. The data
is kept under --data-dir (default: a temp dir) and reused by a later run with the same shape, as
generating 4 billion samples takes a while.

store-gateway (issue 16): 7 days x 100k series at 15 s as 84 2h blocks. Norn runs `--target=all`
on the filesystem bucket (compactor ranges reduced to `2h`, so the compactor has nothing to merge
and leaves the blocks as they are); every query lies wholly before `querier.query-store-after`
(12h), so it is answered by the store-gateway path alone. Prometheus 2.42 serves the same block
files (hard links) from its data dir, with compaction off. For each system: a fresh process on a
dropped page cache, each query once per parameter value (cold), then the same executions again
3 times (warm). Norn's bucket bytes per query come from `norn_storegateway_bucket_bytes_fetched_total`.
Then the start-to-ready time with 1,000 (small) blocks in the bucket, first start and restart.

compactor (issue 17): 3 replicas x 24h x 100k series (36 2h blocks, identical samples per
replica); `norn --target=compactor` runs once over a hard-linked copy of the bucket, unsplit and
with `--compactor.split-and-merge-shards` 2 and 4: wall, CPU-s, peak RSS, bucket bytes before and
after, bytes per sample of the 24h blocks. Beside it: Prometheus' own compaction of one replica's
blocks (Prometheus started on them, compaction on) and VictoriaMetrics' disk bytes per sample for
the same 576M samples pushed with `norn-loadgen write`.
"""

import json
import os
import shutil
import statistics
import subprocess
import time

H = 3600
STEP = 15
CACHE_DROPPED = "page cache dropped before the start (`echo 3 > /proc/sys/vm/drop_caches`)"


# ---------------------------------------------------------------------------------------------
# shared plumbing


def loadavg():
    return os.getloadavg()[0]


def drop_page_cache(b):
    """Drops the kernel's page cache so that a cold run reads the disk. Needs root; returns a
    note either way."""
    try:
        os.sync()
        with open("/proc/sys/vm/drop_caches", "w") as f:
            f.write("3\n")
        return CACHE_DROPPED
    except OSError as e:
        b.log(f"cannot drop the page cache: {e}")
        return f"page cache NOT dropped ({e.strerror}): cold runs may read cached block files"


def metrics(b, base):
    """Prometheus text exposition of `base/metrics` as {name{labels}: value}."""
    status, body = b.http("GET", base + "/metrics", timeout=10)
    out = {}
    if status != 200:
        return out
    for line in body.decode(errors="replace").splitlines():
        if not line or line.startswith("#"):
            continue
        key, _, value = line.rpartition(" ")
        try:
            out[key] = float(value)
        except ValueError:
            pass
    return out


def metric_sum(m, name):
    return sum(v for k, v in m.items() if k == name or k.startswith(name + "{"))


def block_dirs(tenant_dir):
    """(ulid, meta, marked_for_deletion) of each complete block in a tenant dir."""
    out = []
    if not os.path.isdir(tenant_dir):
        return out
    for name in sorted(os.listdir(tenant_dir)):
        meta_path = os.path.join(tenant_dir, name, "meta.json")
        if not os.path.isfile(meta_path):
            continue
        with open(meta_path) as f:
            meta = json.load(f)
        marked = os.path.exists(os.path.join(tenant_dir, name, "deletion-mark.json"))
        out.append((name, meta, marked))
    return out


def block_bytes(block_dir):
    """Index + chunk bytes of a block (apparent sizes), the figure bytes/sample is taken from."""
    size = os.path.getsize(os.path.join(block_dir, "index"))
    chunks = os.path.join(block_dir, "chunks")
    size += sum(os.path.getsize(os.path.join(chunks, c)) for c in os.listdir(chunks))
    return size


def tree_bytes(path):
    """Apparent bytes of every file under `path`."""
    total = 0
    for root, _, files in os.walk(path):
        for name in files:
            try:
                total += os.lstat(os.path.join(root, name)).st_size
            except OSError:
                pass
    return total


def hardlink_tree(src, dst):
    """Copies a directory tree with hard links (no data copied; neither side rewrites files)."""
    shutil.copytree(src, dst, copy_function=os.link)


def generate(b, gen_bin, tenant_dir, series, hours, end_s, replicas=1, timeout=7200, link_replicas=False):
    """Writes the blocks with gen_blocks unless `tenant_dir` already holds exactly this shape
    (recorded in `<tenant_dir>/../gen-<tenant>.json`). Returns the generation record.
    `link_replicas`: replicas after the first are hard links of its files (gen_blocks
    `--link-replicas`); a reader sees the same bytes, the disk holds one copy."""
    stamp = os.path.join(os.path.dirname(tenant_dir), f"gen-{os.path.basename(tenant_dir)}.json")
    want = dict(series=series, hours=hours, replicas=replicas)
    if os.path.exists(stamp):
        with open(stamp) as f:
            rec = json.load(f)
        if all(rec.get(k) == v for k, v in want.items()) and rec.get("end_s", 0) <= end_s + 30 * 86400:
            b.log(f"reusing the blocks in {tenant_dir} (generated {rec['date']})")
            return rec
    shutil.rmtree(tenant_dir, ignore_errors=True)
    if os.path.exists(stamp):
        os.remove(stamp)
    os.makedirs(tenant_dir)
    load0 = loadavg()
    r = b.run([gen_bin, "--out", tenant_dir, "--series", str(series), "--hours", str(hours),
               "--end", str(end_s), "--replicas", str(replicas), "--threads", "2"]
              + (["--link-replicas", "true"] if link_replicas and replicas > 1 else []),
              timeout=timeout, capture_output=True, text=True)
    if r.returncode != 0:
        raise RuntimeError(f"gen_blocks failed: {r.stderr[-1000:]}")
    rec = dict(json.loads(r.stdout.strip().splitlines()[-1]), **want, end_s=end_s, linked=bool(link_replicas),
               date=time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), load=load0)
    with open(stamp, "w") as f:
        json.dump(rec, f)
    b.log(f"generated {rec['blocks']} blocks, {rec['samples']:,} samples, {rec['bytes'] / 1e9:.2f} GB "
          f"in {rec['elapsed_seconds']:.0f} s")
    return rec


class Proc:
    """A started server: its Popen, base URL and log file; stopped by `close`."""

    def __init__(self, b, name, cmd, base, ready_path, logpath, cwd):
        self.b, self.name, self.base = b, name, base
        self.logf = open(logpath, "w")
        b.log(f"starting {name}: {' '.join(cmd)}")
        self.t0 = time.time()
        self.p = subprocess.Popen(cmd, stdout=self.logf, stderr=subprocess.STDOUT, cwd=cwd)
        b.children.append(self.p)
        self.ready_url = base + ready_path

    def wait_ready(self, timeout=600):
        if not self.b.wait_ready(self.ready_url, self.p, timeout=timeout):
            raise RuntimeError(f"{self.name} did not become ready (log: {self.logf.name})")
        return time.time() - self.t0

    def rss_mb(self):
        return self.b.proc_status_kb(self.p.pid, "VmRSS") / 1024

    def hwm_mb(self):
        return self.b.proc_status_kb(self.p.pid, "VmHWM") / 1024

    def cpu_s(self):
        return self.b.proc_cpu_seconds(self.p.pid)

    def close(self):
        self.b.stop(self.p)
        if self.p in self.b.children:
            self.b.children.remove(self.p)
        self.logf.close()


def norn_all(b, norn, work, bucket, name="norn", extra=()):
    port, grpc, gossip = b.free_port(), b.free_port(), b.free_port()
    os.makedirs(work, exist_ok=True)
    cmd = [norn, "--target=all", "--server.http-listen-address=127.0.0.1",
           f"--server.http-listen-port={port}", "--server.grpc-listen-address=127.0.0.1",
           f"--server.grpc-listen-port={grpc}", "--memberlist.bind-addr=127.0.0.1",
           f"--memberlist.bind-port={gossip}", "--auth.multitenancy-enabled=false",
           f"--blocks-storage.tsdb.dir={work}/tsdb", "--blocks-storage.backend=filesystem",
           f"--common.storage.filesystem.dir={bucket}",
           f"--blocks-storage.bucket-store.sync-dir={work}/sync",
           f"--compactor.data-dir={work}/compactor",
           # One range: the compactor finds nothing to merge (one block per 2h window) and
           # leaves the bucket as generated; its cleanup still writes the bucket index.
           "--compactor.block-ranges=2h",
           # Limits sized for a 7-day query over 960 series (the defaults allow 2M chunks).
           "--querier.max-fetched-chunks-per-query=0", *extra]
    return Proc(b, name, cmd, f"http://127.0.0.1:{port}", "/ready", os.path.join(work, f"{name}.log"), work)


def prometheus(b, data, name="prometheus", compaction=False, retention="3650d"):
    port = b.free_port()
    config = os.path.join(data, "prometheus.yml")
    with open(config, "w") as f:
        f.write("global:\n  scrape_interval: 15s\nscrape_configs: []\n")
    cmd = ["prometheus", f"--config.file={config}", f"--storage.tsdb.path={data}/tsdb",
           f"--web.listen-address=127.0.0.1:{port}", f"--storage.tsdb.retention.time={retention}",
           "--query.timeout=5m", "--query.max-samples=500000000"]
    if not compaction:
        # min = max block duration: Prometheus never compacts, it serves the blocks as they are.
        cmd += ["--storage.tsdb.min-block-duration=2h", "--storage.tsdb.max-block-duration=2h"]
    return Proc(b, name, cmd, f"http://127.0.0.1:{port}", "/-/ready", os.path.join(data, f"{name}.log"), data)


def pct(values, q):
    """Nearest-rank percentile (as norn-loadgen reports)."""
    if not values:
        return None
    s = sorted(values)
    return s[max(0, min(len(s) - 1, int(-(-q * len(s) // 1)) - 1))]


# ---------------------------------------------------------------------------------------------
# store-gateway

# (name, range in s, step in s, PromQL with {inst} = one instance or {grp} = a regex of 30).
SG_QUERIES = [
    ("one_series_1h", H, 15, 'node_memory_MemAvailable_bytes{{instance="{inst}"}}'),
    ("one_series_7d", 7 * 24 * H, 300, 'node_load1{{instance="{inst}"}}'),
    ("rate_3_series_24h", 24 * H, 60, 'rate(node_network_receive_bytes_total{{instance="{inst}"}}[5m])'),
    ("histogram_p90_24h", 24 * H, 300,
     'histogram_quantile(0.9, sum by (le) (rate(http_request_duration_seconds_bucket{{instance="{inst}"}}[5m])))'),
    ("sum_by_960_series_7d", 7 * 24 * H, H, 'sum by (mode) (rate(node_cpu_seconds_total{{instance=~"{grp}"}}[1h]))'),
]
COLD_PARAMS = 10  # distinct parameter values per query: each one's first execution is cold
WARM_ROUNDS = 3  # then every execution again this many times


def sg_param(i, targets):
    inst = f"host-{(i * 97 + 13) % targets:05}:9100"
    # 30 consecutive targets x 32 node_cpu_seconds_total series = 960 series.
    grp = f"host-00{i % 10}[0-2][0-9]:9100" if targets >= 1000 else "host-000[0-2][0-9]:9100"
    return dict(inst=inst, grp=grp)


def run_query(b, api, expr, start, end, step):
    from urllib.parse import urlencode
    url = f"{api}/query_range?" + urlencode(dict(query=expr, start=start, end=end, step=step))
    t0 = time.perf_counter()
    status, body = b.http("GET", url, timeout=600)
    elapsed = time.perf_counter() - t0
    if status != 200:
        raise RuntimeError(f"query {expr!r} answered {status}: {body[:300]!r}")
    data = json.loads(body)["data"]["result"]
    return elapsed, len(data), sum(len(s["values"]) for s in data)


def sg_queries(b, proc, api, end_s, targets, is_norn):
    """Cold then warm executions of SG_QUERIES. Returns per query: cold/warm latencies, series
    and points per answer, and (Norn) bucket bytes fetched per execution."""
    out = {}
    fetched = lambda: metric_sum(metrics(b, proc.base), "norn_storegateway_bucket_bytes_fetched_total") if is_norn else 0
    qend = end_s - 60
    phases = [("cold", 1), ("warm", WARM_ROUNDS)]
    for phase, rounds in phases:
        for name, rng, step, tmpl in SG_QUERIES:
            r = out.setdefault(name, dict(cold=[], warm=[], cold_bytes=[], warm_bytes=[], series=set(), points=set()))
            for _ in range(rounds):
                for i in range(COLD_PARAMS):
                    expr = tmpl.format(**sg_param(i, targets))
                    f0 = fetched()
                    elapsed, series, points = run_query(b, api, expr, qend - rng, qend, step)
                    r[phase].append(elapsed)
                    r[phase + "_bytes"].append(fetched() - f0)
                    r["series"].add(series)
                    r["points"].add(points)
        if phase == "cold":
            out["_rss_after_cold"] = proc.rss_mb()
    out["_rss_after_warm"] = proc.rss_mb()
    out["_hwm"] = proc.hwm_mb()
    return out


def store_gateway(b, args, norn, gen_bin):
    root = os.path.join(args.data_dir, "store-gateway")
    bucket = os.path.join(root, "bucket")
    tenant_dir = os.path.join(bucket, "anonymous")
    series, days = args.series or 100_000, args.days or 7
    # The data ends 14h ago (aligned to 2h): older than query-store-after (12h) and
    # ignore-blocks-within (10h), so all of it is the store-gateway's, none the head's.
    end_s = (int(time.time()) - 14 * H) // (2 * H) * (2 * H)
    gen = generate(b, gen_bin, tenant_dir, series, days * 24, end_s)
    end_s = gen["end_s"]
    blocks = block_dirs(tenant_dir)
    bucket_bytes = tree_bytes(tenant_dir)
    notes, res = [], {}
    cache_flags = []
    if args.chunks_cache_bytes:
        cache_flags = [f"--blocks-storage.bucket-store.chunks-cache.inmemory.max-size-bytes={args.chunks_cache_bytes}"]
        notes.append(f"Norn's chunks cache bound: {args.chunks_cache_bytes / 2**30:.2f} GiB "
                     f"(`--chunks-cache-bytes {args.chunks_cache_bytes}`), not the default 1 GiB")
    notes.append(f"data: {gen['blocks']} blocks, {gen['samples']:,} samples, {bucket_bytes / 1e9:.2f} GB in the "
                 f"bucket ({bucket_bytes / gen['samples']:.3f} bytes/sample), written by gen_blocks in "
                 f"{gen['elapsed_seconds']:.0f} s on {gen['date']} (load {gen['load']:.2f})")

    if "norn" in args.wanted and norn:
        work = os.path.join(root, "norn")
        shutil.rmtree(work, ignore_errors=True)
        # First start: every index-header is built from the bucket.
        p = norn_all(b, norn, work, bucket, extra=cache_flags)
        try:
            ready = p.wait_ready()
            t_loaded = wait_loaded(b, p, len(blocks), timeout=1800)
            sync_bytes = b.du_bytes(os.path.join(work, "sync"))
            res["norn_first_start"] = dict(ready=ready, loaded=t_loaded, rss=p.rss_mb())
        finally:
            p.close()
        cache_note = drop_page_cache(b)
        load0 = loadavg()
        p = norn_all(b, norn, work, bucket, extra=cache_flags)
        try:
            ready = p.wait_ready()
            wait_loaded(b, p, len(blocks), timeout=600)
            idle = p.rss_mb()
            q = sg_queries(b, p, p.base + "/prometheus/api/v1", end_s, series // 100, True)
            m = metrics(b, p.base)
            res["norn"] = dict(q=q, ready=ready, rss_idle=idle, sync_bytes=sync_bytes, load=(load0, loadavg()),
                               cache_bytes={k: v for k, v in m.items() if k.startswith("norn_cache_stored_bytes")},
                               cache_note=cache_note)
        finally:
            p.close()
    if "prometheus" in args.wanted and shutil.which("prometheus"):
        data = os.path.join(root, "prometheus")
        shutil.rmtree(data, ignore_errors=True)
        os.makedirs(os.path.join(data, "tsdb"))
        for ulid, _, _ in blocks:
            hardlink_tree(os.path.join(tenant_dir, ulid), os.path.join(data, "tsdb", ulid))
        cache_note = drop_page_cache(b)
        load0 = loadavg()
        p = prometheus(b, data)
        try:
            ready = p.wait_ready()
            idle = p.rss_mb()
            q = sg_queries(b, p, p.base + "/api/v1", end_s, series // 100, False)
            res["prometheus"] = dict(q=q, ready=ready, rss_idle=idle, load=(load0, loadavg()), cache_note=cache_note,
                                     disk=b.du_bytes(os.path.join(data, "tsdb")))
        finally:
            p.close()
            shutil.rmtree(data, ignore_errors=True)
    if "norn" in args.wanted and norn and not args.skip_ready:
        res["ready_1000"] = ready_1000(b, args, norn, gen_bin, end_s)
    return sg_section(args, gen, blocks, bucket_bytes, res, notes)


def wait_loaded(b, proc, n, timeout):
    """Seconds from the process start until the store-gateway serves `n` blocks."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        m = metrics(b, proc.base)
        if metric_sum(m, "norn_storegateway_blocks_loaded") >= n:
            return time.time() - proc.t0
        if proc.p.poll() is not None:
            raise RuntimeError(f"{proc.name} exited (log: {proc.logf.name})")
        time.sleep(0.2)
    raise RuntimeError(f"{proc.name}: fewer than {n} blocks loaded after {timeout} s")


def ready_1000(b, args, norn, gen_bin, end_s):
    """Start-to-ready with 1,000 small blocks in the bucket: first start (no index-headers on
    disk) and a restart (all on disk)."""
    root = os.path.join(args.data_dir, "store-gateway-1000")
    bucket = os.path.join(root, "bucket")
    tenant_dir = os.path.join(bucket, "anonymous")
    gen = generate(b, gen_bin, tenant_dir, 1000, 2000, end_s)
    work = os.path.join(root, "norn")
    shutil.rmtree(work, ignore_errors=True)
    out = dict(gen=gen, bucket_bytes=tree_bytes(tenant_dir))
    for phase in ("first", "restart"):
        out[phase + "_cache"] = drop_page_cache(b)
        out[phase + "_load"] = loadavg()
        p = norn_all(b, norn, work, bucket)
        try:
            out[phase + "_ready"] = p.wait_ready()
            out[phase + "_loaded"] = wait_loaded(b, p, gen["blocks"], timeout=1800)
            out[phase + "_rss"] = p.rss_mb()
            out["sync_bytes"] = b.du_bytes(os.path.join(work, "sync"))
        finally:
            p.close()
    return out


def ms(v):
    return "n/a" if v is None else f"{v * 1e3:,.1f}"


def sg_section(args, gen, blocks, bucket_bytes, res, notes):
    systems = [s for s in ("norn", "prometheus") if s in res]
    head = ["query", "series / points"]
    for s in systems:
        head += [f"{s} cold p50", f"{s} cold p99", f"{s} warm p50", f"{s} warm p99"]
    if len(systems) == 2:
        head.append("warm p50 Norn/Prometheus")
    head += ["Norn bucket bytes/query cold", "warm"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    met_p50 = []
    for name, rng, step, tmpl in SG_QUERIES:
        first = res[systems[0]]["q"][name]
        row = [f"`{name}`", f"{'/'.join(map(str, sorted(first['series'])))} / "
                            f"{'/'.join(f'{p:,}' for p in sorted(first['points']))}"]
        for s in systems:
            q = res[s]["q"][name]
            row += [ms(pct(q["cold"], 0.5)), ms(pct(q["cold"], 0.99)), ms(pct(q["warm"], 0.5)), ms(pct(q["warm"], 0.99))]
        if len(systems) == 2:
            n, p = pct(res["norn"]["q"][name]["warm"], 0.5), pct(res["prometheus"]["q"][name]["warm"], 0.5)
            row.append(f"{n / p:.2f}")
            met_p50.append((name, n <= p))
        if "norn" in res:
            q = res["norn"]["q"][name]
            row += [f"{statistics.mean(q['cold_bytes']) / 1e3:,.0f} kB", f"{statistics.mean(q['warm_bytes']) / 1e3:,.0f} kB"]
        else:
            row += ["n/a", "n/a"]
        lines.append("| " + " | ".join(row) + " |")
    agree = all(len({tuple(sorted(res[s]["q"][name]["series"])) for s in systems}) == 1 and
                len({tuple(sorted(res[s]["q"][name]["points"])) for s in systems}) == 1
                for name, *_ in SG_QUERIES)
    listing = "\n".join(f"| `{n}` | {rng // H} h, step {step} s | `{t.replace('{{', '{').replace('}}', '}').replace('|', chr(92) + '|')}` |"
                        for n, rng, step, t in SG_QUERIES)
    n_blocks = len(blocks)
    body = [f"""<!-- bench:store-gateway -->
## Workload `store-gateway`: the bucket's blocks through the store-gateway vs Prometheus (issue 16)

* Date: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}
* Command: `{args.command}`
* Machine: {args.machine}
* Versions: Norn {args.versions['norn']}; {args.versions['prometheus']}; {args.versions['rustc']}
* Data: {gen['series']:,} series (norn-loadgen's node_exporter-like set, seed 1) x {gen['hours'] // 24} days at 15 s
  as {n_blocks} 2h blocks ({gen['samples']:,} samples, {bucket_bytes / 1e9:.2f} GB) written by
  `cargo run --release -p norn-loadtests --example gen_blocks -- --series {gen['series']} --hours {gen['hours']}
  --end {gen['end_s']}` into a filesystem bucket (`<bucket>/anonymous/<ULID>/`), ending 14 h or more before
  the run. Norn: `norn --target=all --blocks-storage.backend=filesystem` on that bucket (`--compactor.block-ranges=2h`:
  nothing to compact; default caches: 1 GiB in-memory index cache, 1 GiB in-memory chunks cache);
  every query ends before `querier.query-store-after` (12h), so all of it is read through the
  store-gateway (ranged reads of the bucket's files). Prometheus 2.42 with the same block files
  (hard links) in its data dir, compaction off.
* Queries: range queries ending 60 s before the end of the data, over the range and at the step
  below; HTTP wall time measured by the bench (Python `urllib`, including reading the body).
  **Cold**: a fresh process started on a dropped page cache (Norn: with its index-headers already
  on local disk, i.e. a restart), each query run for {COLD_PARAMS} different instances (or instance
  groups), each once. **Warm**: the same {COLD_PARAMS} executions again, {WARM_ROUNDS} times
  ({COLD_PARAMS * WARM_ROUNDS} samples). p50/p99 nearest rank, in ms (with {COLD_PARAMS} cold samples p99 is
  the maximum). Bytes fetched: delta of `norn_storegateway_bucket_bytes_fetched_total` per execution.
* Load: 1-minute load average {', '.join(f"{s} {res[s]['load'][0]:.2f} at the start / {res[s]['load'][1]:.2f} at the end" for s in systems)}
  (the machine is shared with other builds: latencies are skewed upwards by it, more so the cold ones).

{chr(10).join(lines)}

| query | range | PromQL (`$inst`: one of 10 instances; `$grp`: 30 instances) |
|---|---|---|
{listing.replace('{inst}', '$inst').replace('{grp}', '$grp')}

* Both systems returned the same number of series and points for every query: {'yes' if agree else 'NO (see the table)'}.
"""]
    t = []
    if "norn" in res:
        n = res["norn"]
        f = res.get("norn_first_start", {})
        per_block = n["sync_bytes"] / n_blocks
        t.append(f"* Norn store-gateway local disk (index-headers in the sync dir, `du`): {n['sync_bytes'] / 1e6:.1f} MB "
                 f"for {n_blocks} blocks = {per_block / 1e3:.1f} kB per block, {n['sync_bytes'] / bucket_bytes * 100:.3f} % "
                 f"of the bucket ({bucket_bytes / n_blocks / 1e6:.0f} MB per block). Prometheus needs the whole "
                 f"blocks on local disk ({bucket_bytes / 1e9:.2f} GB).")
        t.append(f"* Norn RSS (whole `--target=all` process): {n['rss_idle']:.0f} MiB idle after the restart, "
                 f"{n['q']['_rss_after_cold']:.0f} MiB after the cold queries, {n['q']['_rss_after_warm']:.0f} MiB after "
                 f"the warm ones, peak {n['q']['_hwm']:.0f} MiB; cache contents at the end: "
                 + ", ".join(f"{k.split('{', 1)[-1].rstrip('}')} {v / 1e6:.0f} MB" for k, v in n["cache_bytes"].items())
                 + f". First start (building all {n_blocks} index-headers from the bucket): ready after "
                 f"{f.get('ready', 0):.1f} s, all blocks served after {f.get('loaded', 0):.1f} s, RSS {f.get('rss', 0):.0f} MiB.")
        t.append(f"* Norn: {n['cache_note']}.")
    if "prometheus" in res:
        p = res["prometheus"]
        t.append(f"* Prometheus RSS: {p['rss_idle']:.0f} MiB idle after start (ready after {p['ready']:.1f} s), "
                 f"{p['q']['_rss_after_cold']:.0f} MiB after the cold queries, {p['q']['_rss_after_warm']:.0f} MiB "
                 f"after the warm ones, peak {p['q']['_hwm']:.0f} MiB (block files are memory-mapped: page cache "
                 f"pages it touched count in its RSS). {p['cache_note']}.")
    r = res.get("ready_1000")
    if r:
        g = r["gen"]
        t.append(f"* Start to ready with {g['blocks']:,} blocks in the bucket ({g['series']:,} series x 2h each, "
                 f"{r['bucket_bytes'] / 1e6:.0f} MB; `gen_blocks --series 1000 --hours 2000`): first start "
                 f"(no index-header on disk) ready after {r['first_ready']:.2f} s, every block served after "
                 f"{r['first_loaded']:.2f} s (load {r['first_load']:.2f}); restart (headers on disk) ready after "
                 f"{r['restart_ready']:.2f} s, every block served after {r['restart_loaded']:.2f} s (load "
                 f"{r['restart_load']:.2f}), RSS {r['restart_rss']:.0f} MiB; index-headers {r['sync_bytes'] / 1e6:.1f} MB "
                 f"({r['sync_bytes'] / g['blocks'] / 1e3:.1f} kB per block). {r['restart_cache']}.")
    # Targets of issue 16.
    tg = []
    if met_p50:
        bad = [n for n, ok in met_p50 if not ok]
        tg.append(f"warm-cache p50 ≤ Prometheus' on local disk: **{'met' if not bad else 'not met'}**"
                  + (f" ({', '.join('`' + x + '`' for x in bad)} slower)" if bad else " on every query"))
    if "norn" in res:
        share = res["norn"]["sync_bytes"] / bucket_bytes * 100
        tg.append(f"local disk ≤ 5 % of the bucket: **{'met' if share <= 5 else 'not met'}** ({share:.3f} %)")
    if r:
        tg.append(f"ready ≤ 10 s after a restart with 1,000 blocks: **{'met' if r['restart_ready'] <= 10 else 'not met'}** "
                  f"({r['restart_ready']:.2f} s; all blocks served {r['restart_loaded']:.2f} s)")
    if "norn" in res:
        n = res["norn"]
        caches = sum(n["cache_bytes"].values()) / 2**20
        tg.append(f"RSS bounded by the cache sizes plus a fixed amount, not by the bucket: peak "
                  f"{n['q']['_hwm']:.0f} MiB for a {bucket_bytes / 2**30:.1f} GiB bucket, with {caches:.0f} MiB in the caches "
                  f"(bounds: index 1 GiB, chunks {(args.chunks_cache_bytes or 2**30) / 2**30:.2f} GiB)" + (f"; {r['restart_rss']:.0f} MiB idle with {r['gen']['blocks']:,} blocks vs "
                                            f"{n['rss_idle']:.0f} MiB with {n_blocks}" if r else ""))
    body.append("\n".join(t))
    body.append("\nTargets (issue 16):\n\n" + "\n".join("* " + x for x in tg))
    body.append("\n" + "\n".join("* " + x for x in notes))
    return "\n".join(body) + "\n<!-- /bench:store-gateway -->\n"


# ---------------------------------------------------------------------------------------------
# compactor


def compactor(b, args, norn, gen_bin, loadgen):
    root = os.path.join(args.data_dir, "compactor")
    source = os.path.join(root, "source", "anonymous")
    series = args.series or 100_000
    # One whole UTC day ending at least 2 days ago: every window is long closed.
    end_s = (int(time.time()) - 2 * 24 * H) // (24 * H) * (24 * H)
    gen = generate(b, gen_bin, source, series, 24, end_s, replicas=3, link_replicas=args.link_replicas)
    end_s = gen["end_s"]
    unique = gen["samples"] // 3
    before = tree_bytes(source)
    res = dict(runs=[], gen=gen, before=before, unique=unique)
    if "norn" in args.wanted and norn:
        for shards in args.shards:
            res["runs"].append(compactor_run(b, norn, root, source, shards, unique, args.deletion_delay))
    if "prometheus" in args.wanted and shutil.which("prometheus"):
        res["prometheus"] = prometheus_compaction(b, root, source)
    if "victoriametrics" in args.wanted and shutil.which("victoria-metrics"):
        res["victoriametrics"] = victoriametrics_day(b, root, loadgen, series, end_s, unique)
    return compactor_section(args, res)


def compactor_run(b, norn, root, source, shards, unique, deletion_delay=None):
    """One `norn --target=compactor` pass over a hard-linked copy of the source bucket.
    `deletion_delay`: the compactor's `--compactor.deletion-delay`, with cleanup every minute
    (default: Norn's 12h, so every intermediate block stays, marked, until the end)."""
    run_dir = os.path.join(root, f"run-shards-{shards}")
    shutil.rmtree(run_dir, ignore_errors=True)
    bucket = os.path.join(run_dir, "bucket")
    hardlink_tree(os.path.dirname(source), bucket)
    for f in os.listdir(bucket):  # the generation stamp is no part of the bucket
        if f.endswith(".json"):
            os.remove(os.path.join(bucket, f))
    port, grpc, gossip = b.free_port(), b.free_port(), b.free_port()
    cmd = [norn, "--target=compactor", "--server.http-listen-address=127.0.0.1",
           f"--server.http-listen-port={port}", "--server.grpc-listen-address=127.0.0.1",
           f"--server.grpc-listen-port={grpc}", "--memberlist.bind-addr=127.0.0.1",
           f"--memberlist.bind-port={gossip}", "--compactor.ring.instance-id=bench-compactor",
           "--blocks-storage.backend=filesystem", f"--common.storage.filesystem.dir={bucket}",
           f"--compactor.data-dir={run_dir}/work", "--compactor.first-level-compaction-wait-period=0s",
           f"--compactor.split-and-merge-shards={shards}",
           # Runs every 20 s: a first run that did not own the tenant yet is followed at once.
           "--compactor.compaction-interval=20s"]
    if deletion_delay is not None:
        cmd += [f"--compactor.deletion-delay={deletion_delay}", "--compactor.cleanup-interval=1m"]
    drop_page_cache(b)
    load0 = loadavg()
    p = Proc(b, f"compactor-shards-{shards}", cmd, f"http://127.0.0.1:{port}", "/ready",
             os.path.join(root, f"compactor-shards-{shards}.log"), root)
    try:
        p.wait_ready()
        # The first run may come before the instance owns the tenant in the ring (then it
        # compacts nothing): time the run that compacted, until every window is one 24h block
        # per shard, not merely the first run.
        t_start = cpu0 = None
        started_seen = 0
        # VmHWM counts the memory-mapped input blocks' pages the merge touched (file-backed,
        # reclaimable); the peak of RssAnon, sampled, is the memory the compactor itself holds.
        anon_peak_kb = 0
        free0 = min_free = shutil.disk_usage(root).free
        tenant = os.path.join(bucket, "anonymous")
        want = max(1, shards)
        deadline = time.time() + 4 * H
        while time.time() < deadline:
            m = metrics(b, p.base)
            anon_peak_kb = max(anon_peak_kb, b.proc_status_kb(p.p.pid, "RssAnon"))
            min_free = min(min_free, shutil.disk_usage(root).free)
            started = metric_sum(m, "norn_compactor_runs_started_total")
            compacted = metric_sum(m, "norn_compactor_blocks_compacted_total")
            if started > started_seen and compacted == 0:
                t_start, cpu0, started_seen = time.time(), p.cpu_s(), started
            if metric_sum(m, "norn_compactor_runs_failed_total") >= 1:
                raise RuntimeError(f"compaction run failed (log: {p.logf.name})")
            if compacted > 0 and metric_sum(m, "norn_compactor_runs_completed_total") >= 1:
                live = [m_ for _, m_, marked in block_dirs(tenant) if not marked]
                if len(live) == want and all(x["maxTime"] - x["minTime"] == 24 * H * 1000 for x in live):
                    break
            if p.p.poll() is not None:
                raise RuntimeError(f"compactor exited (log: {p.logf.name})")
            time.sleep(0.25)
        else:
            raise RuntimeError("compaction did not finish within 4 h")
        wall, cpu, hwm = time.time() - t_start, p.cpu_s() - cpu0, p.hwm_mb()
        load1 = loadavg()
    finally:
        p.close()
    live = [(u, m) for u, m, marked in block_dirs(tenant) if not marked]
    day = [(u, m) for u, m in live if m["maxTime"] - m["minTime"] == 24 * H * 1000]
    live_bytes = sum(tree_bytes(os.path.join(tenant, u)) for u, _ in live)
    day_bytes = sum(block_bytes(os.path.join(tenant, u)) for u, _ in day)
    day_samples = sum(m["stats"]["numSamples"] for _, m in day)
    twelve = [(u, m) for u, m, _ in block_dirs(tenant) if m["maxTime"] - m["minTime"] == 12 * H * 1000]
    out = dict(shards=shards, wall=wall, cpu=cpu, hwm=hwm, anon_peak=anon_peak_kb / 1024, load=(load0, load1),
               live=len(live), day=len(day), after=live_bytes, day_bytes=day_bytes, day_samples=day_samples,
               deletion_delay=deletion_delay, disk_peak=free0 - min_free,
               # None where the 12h blocks were deleted during the run (a short deletion delay).
               twelve_bps=(sum(block_bytes(os.path.join(tenant, u)) for u, _ in twelve)
                           / sum(m["stats"]["numSamples"] for _, m in twelve)) if twelve else None,
               levels=sorted({m["compaction"]["level"] for _, m in day}),
               overlaps=len(live) != len(day))
    b.log(f"compactor shards={shards}: {json.dumps(out)}")
    if day_samples != unique:
        b.log(f"WARNING: the 24h blocks hold {day_samples:,} samples, want {unique:,}")
    shutil.rmtree(run_dir, ignore_errors=True)
    return out


def prometheus_compaction(b, root, source):
    """Prometheus started on one replica's 12 blocks, compaction on: it merges them as it would
    its own (2h -> 6h -> 18h; it leaves the newest block alone). Returns its level>1 blocks'
    bytes per sample and the time it took."""
    data = os.path.join(root, "prometheus")
    shutil.rmtree(data, ignore_errors=True)
    tsdb = os.path.join(data, "tsdb")
    os.makedirs(tsdb)
    seen = set()
    for ulid, meta, _ in block_dirs(source):
        if meta["minTime"] not in seen:
            seen.add(meta["minTime"])
            hardlink_tree(os.path.join(source, ulid), os.path.join(tsdb, ulid))
    load0 = loadavg()
    p = prometheus(b, data, compaction=True)
    try:
        p.wait_ready()
        # Prometheus compacts a minute after start, then every minute until nothing is left to
        # plan: wait until its block list has not changed for 150 s.
        last, stable_since, cpu0, t0 = None, time.time(), p.cpu_s(), time.time()
        t_last_change = t0
        while time.time() - stable_since < 150 and time.time() - t0 < 3 * H:
            now = tuple(sorted(u for u, _, _ in block_dirs(tsdb)))
            if now != last:
                last, stable_since = now, time.time()
                t_last_change = time.time()
            time.sleep(2)
        cpu, hwm = p.cpu_s() - cpu0, p.hwm_mb()
    finally:
        p.close()
    blocks = block_dirs(tsdb)
    merged = [(u, m) for u, m, _ in blocks if m["compaction"]["level"] > 1]
    out = dict(blocks=[(m["maxTime"] - m["minTime"]) // (H * 1000) for _, m, _ in sorted(blocks, key=lambda x: x[1]["minTime"])],
               merged_bytes=sum(block_bytes(os.path.join(tsdb, u)) for u, _ in merged),
               merged_samples=sum(m["stats"]["numSamples"] for _, m in merged),
               all_bytes=sum(block_bytes(os.path.join(tsdb, u)) for u, _, _ in blocks),
               all_samples=sum(m["stats"]["numSamples"] for _, m, _ in blocks),
               cpu=cpu, hwm=hwm, span=t_last_change - t0, load=(load0, loadavg()))
    b.log(f"prometheus compaction: {json.dumps(out)}")
    shutil.rmtree(data, ignore_errors=True)
    return out


def victoriametrics_day(b, root, loadgen, series, end_s, unique):
    """The same day pushed to VictoriaMetrics with norn-loadgen (identical samples: same
    generator, seed and timestamps), flushed and merged; its data dir's allocated bytes per sample."""
    data = os.path.join(root, "victoriametrics")
    shutil.rmtree(data, ignore_errors=True)
    os.makedirs(data)
    port = b.free_port()
    cmd = ["victoria-metrics", f"-storageDataPath={data}/vm", f"-httpListenAddr=127.0.0.1:{port}",
           "-retentionPeriod=10y", "-search.disableCache"]
    load0 = loadavg()
    p = Proc(b, "victoriametrics", cmd, f"http://127.0.0.1:{port}", "/health", os.path.join(data, "vm.log"), data)
    try:
        p.wait_ready()
        # gen_blocks' interval 0 is at end - 24h; norn-loadgen's last interval is at --end-time.
        r = b.run([loadgen, "write", "--url", p.base + "/api/v1/write", "--series", str(series),
                   "--interval", "15s", "--backfill", "24h", "--end-time", str(end_s - STEP),
                   "--duration", "3h", "--json", *b.WRITE_ARGS], timeout=3 * H + 300,
                  capture_output=True, text=True)
        if r.returncode != 0:
            raise RuntimeError(f"write load failed: {r.stderr[-500:]}")
        summary = json.loads(r.stdout.strip().splitlines()[-1])
        b.http("GET", p.base + "/internal/force_flush", timeout=600)
        b.http("GET", p.base + "/internal/force_merge", timeout=600)
        # force_merge returns at once and merges in the background: wait for the size to settle.
        last, stable = -1, 0
        while stable < 6:
            time.sleep(10)
            size = b.du_bytes(os.path.join(data, "vm"))
            stable = stable + 1 if size == last else 0
            last = size
        out = dict(samples=summary["samples_sent"], errors=summary["errors"], disk=last,
                   bps=last / max(1, summary["samples_sent"]), load=(load0, loadavg()),
                   write_s=summary.get("elapsed_seconds"))
    finally:
        p.close()
    if out["samples"] != unique:
        b.log(f"WARNING: VictoriaMetrics got {out['samples']:,} samples, want {unique:,}")
    shutil.rmtree(data, ignore_errors=True)
    b.log(f"victoriametrics: {json.dumps(out)}")
    return out


def compactor_section(args, res):
    gen = res["gen"]
    mib = lambda x: f"{x / 2**20:,.0f}"
    lines = ["| run | wall (s) | CPU-s | peak RSS (MiB) | peak RssAnon (MiB) | bucket before (MB) | "
             "after (MB, live blocks) | disk used at most (GB) | 24h blocks (level) | bytes/sample of the 24h blocks | "
             "of the 12h blocks | load avg start / end |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in res["runs"]:
        name = "unsplit" if r["shards"] == 0 else f"split-and-merge, {r['shards']} shards"
        twelve = "deleted" if r.get("twelve_bps") is None else f"{r['twelve_bps']:.3f}"
        lines.append(f"| {name} | {r['wall']:.0f} | {r['cpu']:.0f} | {r['hwm']:,.0f} | {r.get('anon_peak', 0):,.0f} | "
                     f"{res['before'] / 1e6:,.0f} | {r['after'] / 1e6:,.0f} | {r.get('disk_peak', 0) / 1e9:,.1f} | "
                     f"{r['day']} ({'/'.join(map(str, r['levels']))}) | "
                     f"{r['day_bytes'] / max(1, r['day_samples']):.3f} | {twelve} | "
                     f"{r['load'][0]:.2f} / {r['load'][1]:.2f} |")
    notes = []
    pr, vm = res.get("prometheus"), res.get("victoriametrics")
    if pr:
        pbps = pr["merged_bytes"] / max(1, pr["merged_samples"])
        notes.append(f"Prometheus 2.42 started on one replica's 12 blocks with compaction on (as it compacts "
                     f"its own blocks): blocks afterwards {'h + '.join(map(str, pr['blocks']))}h (it never compacts "
                     f"the newest block, and its ranges are 2h/6h/18h); its compacted (level > 1) blocks: "
                     f"**{pbps:.3f} bytes/sample** ({pr['merged_samples']:,} samples); all its blocks "
                     f"{pr['all_bytes'] / max(1, pr['all_samples']):.3f}"
                     + (f"; {pr['cpu']:.0f} CPU-s, peak RSS {pr['hwm']:,.0f} MiB (load {pr['load'][0]:.2f} / "
                        f"{pr['load'][1]:.2f})" if pr.get("cpu") is not None else ""))
    if vm:
        notes.append(f"VictoriaMetrics {args.versions['victoriametrics']}: the same {vm['samples']:,} samples "
                     f"(`norn-loadgen write --backfill 24h --end-time <end - 15 s>`, same generator and seed), "
                     f"after `/internal/force_flush` and `/internal/force_merge`: {vm['disk'] / 1e6:,.0f} MB allocated, "
                     f"**{vm['bps']:.3f} bytes/sample** (load {vm['load'][0]:.2f} / {vm['load'][1]:.2f})")
    tg = []
    unsplit = next((r for r in res["runs"] if r["shards"] == 0), None)
    if unsplit and pr:
        nb = unsplit["day_bytes"] / max(1, unsplit["day_samples"])
        tg.append(f"bytes per sample ≤ Prometheus' own compacted blocks: **{'met' if nb <= pbps else 'not met'}** "
                  f"({nb:.3f} vs {pbps:.3f})")
    split = [r for r in res["runs"] if r["shards"]]
    if unsplit and split:
        tg.append("peak RSS independent of the tenant's size, given split-and-merge: peak RSS "
                  + ", ".join(f"{r['hwm']:,.0f} MiB with {r['shards']} shards" for r in split)
                  + f" vs {unsplit['hwm']:,.0f} MiB unsplit; see the verdict below the table")
    if gen["series"] >= 1_000_000 and res["runs"]:
        best = min(res["runs"], key=lambda r: r["wall"])
        name = "unsplit" if best["shards"] == 0 else f"{best['shards']} shards"
        tg.append(f"a 1M-series tenant's day within an hour on this 2-core machine: measured at {gen['series']:,} "
                  f"series, {best['wall'] / 60:.0f} min ({name}): **{'met' if best['wall'] <= 3600 else 'not met'}**")
    elif unsplit:
        per_m = unsplit["wall"] / (gen["series"] / 1e6)
        tg.append(f"a 1M-series tenant's day within an hour on this 2-core machine: extrapolated linearly from "
                  f"{gen['series']:,} series, {per_m / 60:.0f} min: **{'met' if per_m <= 3600 else 'not met'}** (not run at 1M)")
    linked = (" (replicas 2 and 3 of each range are hard links of replica 1's byte-identical `index` and "
              "`chunks/` under their own ULID and `meta.json`, so the disk holds one copy; the compactor "
              "reads them as three blocks, and their pages are shared in the page cache)") if gen.get("linked") else ""
    delays = {r.get("deletion_delay") for r in res["runs"]} - {None}
    delay_note = (f" (`--compactor.deletion-delay={'/'.join(sorted(delays))}` and "
                  "`--compactor.cleanup-interval=1m`: compacted blocks were deleted during the run)" if delays else
                  " (the sources stay, marked, for the 12h deletion delay)")
    return f"""<!-- bench:compactor -->
## Workload `compactor`: one day of an RF-3 tenant compacted (issue 17)

* Date: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}
* Command: `{args.command}`
* Machine: {args.machine}
* Versions: Norn {args.versions['norn']}; {args.versions['prometheus']}; {args.versions['rustc']}
* Data: 3 replicas x 24h x {gen['series']:,} series at 15 s, identical samples per replica (what RF-3
  ingesters ship): 36 2h blocks, {gen['samples']:,} samples ({res['unique']:,} unique),
  {res['before'] / 1e9:.2f} GB, written by `gen_blocks --series {gen['series']} --hours 24 --replicas 3
  --end {gen['end_s']}{' --link-replicas true' if gen.get('linked') else ''}` in {gen['elapsed_seconds']:.0f} s{linked}.
* Run: `norn --target=compactor --blocks-storage.backend=filesystem
  --compactor.first-level-compaction-wait-period=0s [--compactor.split-and-merge-shards=N]` on a
  hard-linked copy of the bucket, default ranges 2h,12h,24h, page cache dropped first. Wall: from
  `norn_compactor_runs_started_total` reaching 1 to `norn_compactor_runs_completed_total` reaching 1
  (one run compacts until nothing is left: replicas -> 2h, 2h -> 12h, 12h -> 24h); CPU-s: utime +
  stime of the process over that span; peak RSS: its `VmHWM`, which includes the pages of the
  memory-mapped input blocks the merge touched (file-backed, reclaimable); peak RssAnon: the highest
  of its `RssAnon` sampled every 0.25 s, the memory the compactor holds itself. Disk used at most:
  the drop of the file system's free bytes at its lowest (outputs, downloaded inputs). After: the
  blocks without a deletion mark{delay_note}. Bytes/sample: index + chunks of the
  24h block(s) over their samples (and the same for the intermediate 12h blocks, marked by then).
  The machine is shared with other builds (load averages in the table).

{chr(10).join(lines)}

{chr(10).join('* ' + n for n in notes)}

Targets (issue 17):

{chr(10).join('* ' + t for t in tg)}
<!-- /bench:compactor -->
"""
