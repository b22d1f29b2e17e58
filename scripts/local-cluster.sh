#!/usr/bin/env bash
# Starts a local Norn cluster on 127.0.0.1: 1 distributor, 3 ingesters (replication factor 3)
# 1 querier and 1 query-frontend in front of it, as separate processes joined only by gossip, sharing a filesystem bucket.
# Ctrl-C (or SIGTERM) stops them all, ingesters last.
#
#   ./scripts/local-cluster.sh              # data under ./local-cluster
#   NORN_CLUSTER_DIR=/tmp/c ./scripts/local-cluster.sh
#   ./scripts/local-cluster.sh --distributor.ingestion-rate-limit=1000000   # extra flags for every process
#
# Ports: distributor http 8080, querier http 8081, query-frontend http 8082, ingesters http
# 8090-8092 / gRPC 9095-9097, gossip 7946-7951.
#   remote_write url:  http://127.0.0.1:8080/api/v1/push
#   query:             http://127.0.0.1:8082/prometheus/api/v1/query?query=up  (the frontend;
#                      the querier itself answers on 8081)
#   ring:              http://127.0.0.1:8080/ring
set -euo pipefail
cd "$(dirname "$0")/.."

export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/norn-target}"
dir="${NORN_CLUSTER_DIR:-./local-cluster}"
mkdir -p "$dir"
cargo build --release -p norn --quiet
bin="$CARGO_TARGET_DIR/release/norn"

seeds="127.0.0.1:7946,127.0.0.1:7947,127.0.0.1:7948"
common=(
    --server.http-listen-address=127.0.0.1
    --server.grpc-listen-address=127.0.0.1
    --memberlist.bind-addr=127.0.0.1
    --memberlist.join="$seeds"
    --common.storage.filesystem.dir="$dir/bucket"
    --auth.multitenancy-enabled=false
    "$@"
)
pids=()

start() { # name, args...
    local name=$1
    shift
    mkdir -p "$dir/$name"
    "$bin" "${common[@]}" "$@" >"$dir/$name/stdout.log" 2>"$dir/$name/norn.log" &
    pids+=($!)
    echo "started $name (pid $!, log $dir/$name/norn.log)"
}

for i in 0 1 2; do
    start "ingester-$i" --target=ingester \
        --server.http-listen-port=$((8090 + i)) --server.grpc-listen-port=$((9095 + i)) \
        --memberlist.bind-port=$((7946 + i)) \
        --ingester.ring.instance-id="ingester-$i" \
        --ingester.ring.tokens-file-path="$dir/ingester-$i/tokens.json" \
        --blocks-storage.tsdb.dir="$dir/ingester-$i/tsdb"
done
start distributor --target=distributor \
    --server.http-listen-port=8080 --server.grpc-listen-port=9098 --memberlist.bind-port=7949
start querier --target=querier \
    --server.http-listen-port=8081 --server.grpc-listen-port=9099 --memberlist.bind-port=7950 \
    --blocks-storage.bucket-store.sync-dir="$dir/querier/tsdb-sync"
start query-frontend --target=query-frontend \
    --server.http-listen-port=8082 --server.grpc-listen-port=9100 --memberlist.bind-port=7951 \
    --query-frontend.downstream-url=http://127.0.0.1:8081 --query-frontend.cache-results=true

stop() {
    echo "stopping"
    # Frontend, distributor and querier first, then the ingesters (they leave the ring, sync WALs).
    for ((k = ${#pids[@]} - 1; k >= 0; k--)); do kill -TERM "${pids[$k]}" 2>/dev/null || true; done
    wait
}
trap stop INT TERM
echo "remote_write: http://127.0.0.1:8080/api/v1/push   query: http://127.0.0.1:8082/prometheus   ring: http://127.0.0.1:8080/ring"
wait
