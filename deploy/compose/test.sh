#!/usr/bin/env bash
# The compose test: runs the top-level docker-compose.yml, with deploy/compose/docker-compose.test.yml
# over it (images built here, since none can be pulled), and checks what a user would:
#   1. the stack comes up;
#   2. every Norn container answers /ready;
#   3. Prometheus' series, remote-written through the gateway as tenant `demo`, are queryable
#      through the gateway (query-frontend, queriers, ingesters);
#   4. with one ingester killed (docker kill), writes and reads go on (replication factor 3);
#   5. restarted, the ingester is ACTIVE in the ring again, and writes still go on;
#   6. the stack is brought down, volumes removed (always, also on failure or Ctrl-C).
#
# Usage: deploy/compose/test.sh       (root, a Docker engine; NORN_BIN=path/to/norn overrides the
#                                      binary, default $CARGO_TARGET_DIR/debug/norn)
# NORN_COMPOSE_TEST_TIMEOUT: seconds for steps 1-5 (default 420); image builds have their own
# bound (NORN_COMPOSE_BUILD_TIMEOUT, default 900). Last line: `compose test: passed`,
# `compose test: FAILED (...)` or `compose test: skipped (...)`; exit 0, 1, 0.
set -uo pipefail
cd "$(dirname "$0")/../.."

project=norn-compose-test
tenant=demo
# The Norn services of docker-compose.yml.
norn_services=(distributor ingester-1 ingester-2 ingester-3 querier-1 querier-2 query-frontend
    store-gateway-1 store-gateway-2 compactor ruler)
victim=ingester-2

started=$(date +%s)
log() { echo "[compose test +$(($(date +%s) - started))s] $*"; }
skip() {
    echo "compose test: skipped ($1)"
    exit 0
}

if ! docker info >/dev/null 2>&1; then skip "no Docker engine"; fi
if docker compose version >/dev/null 2>&1; then
    compose_cmd=(docker compose)
elif command -v docker-compose >/dev/null 2>&1; then
    compose_cmd=(docker-compose)
else
    skip "no docker compose nor docker-compose"
fi
if [ "$(id -u)" != 0 ]; then skip "must run as root (debootstrap builds the base image)"; fi

export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/norn-target}"
norn_bin="${NORN_BIN:-$CARGO_TARGET_DIR/debug/norn}"
if [ ! -x "$norn_bin" ]; then
    echo "no norn binary at $norn_bin (cargo build -p norn, or set NORN_BIN)" >&2
    echo "compose test: FAILED (no norn binary)"
    exit 1
fi

# Host ports for what the compose file publishes on 127.0.0.1: free ones, so the test never
# collides with anything else on the machine.
read -r NORN_GATEWAY_PORT NORN_MINIO_CONSOLE_PORT NORN_PROMETHEUS_PORT NORN_ALERTMANAGER_PORT \
    NORN_GRAFANA_PORT < <(python3 -c '
import socket
socks = [socket.socket() for _ in range(5)]
for s in socks:
    s.bind(("127.0.0.1", 0))
print(*[s.getsockname()[1] for s in socks])')
export NORN_GATEWAY_PORT NORN_MINIO_CONSOLE_PORT NORN_PROMETHEUS_PORT NORN_ALERTMANAGER_PORT \
    NORN_GRAFANA_PORT
gateway="http://127.0.0.1:$NORN_GATEWAY_PORT"

compose() {
    timeout 180 "${compose_cmd[@]}" -p "$project" -f docker-compose.yml \
        -f deploy/compose/docker-compose.test.yml "$@"
}

failed_services=()
fail() {
    echo "FAILED: $*" >&2
    local s
    [ ${#failed_services[@]} -gt 0 ] || failed_services=("${norn_services[@]}")
    for s in "${failed_services[@]}"; do
        echo "---- docker compose logs --tail=40 $s" >&2
        compose logs --no-color --tail=40 "$s" >&2 2>&1 || true
    done
    result="FAILED ($*)"
    exit 1
}
# The EXIT trap: the stack down, then the verdict as the last line. Once, in this shell only.
result="FAILED (interrupted)"
cleaned=0
cleanup() {
    [ "$BASHPID" = "$$" ] && [ "$cleaned" = 0 ] || return 0
    cleaned=1
    log "bringing the stack down (volumes removed)"
    compose down --volumes --remove-orphans --timeout 10 >/dev/null 2>&1 || true
    echo "compose test: $result"
}

deadline=$(($(date +%s) + ${NORN_COMPOSE_TEST_TIMEOUT:-420}))
left() { echo $((deadline - $(date +%s))); }

# An instant query through the gateway as the tenant; prints the first result's value or
# nothing (no result, or an error answer).
query() {
    curl -sf --max-time 10 -H "X-Scope-OrgID: $tenant" \
        --data-urlencode "query=$1" "$gateway/prometheus/api/v1/query" 2>/dev/null |
        python3 -c '
import json, sys
try:
    r = json.load(sys.stdin)["data"]["result"]
    print(r[0]["value"][1] if r else "")
except Exception:
    print("")'
}

# Waits, within the deadline, until `$1` (a command) succeeds; $2 names what is awaited.
wait_for() {
    local what=$2
    while ! eval "$1"; do
        if [ "$(left)" -le 0 ]; then fail "timed out waiting for $what"; fi
        sleep 2
    done
    log "ok: $what"
}

# A ring page through the gateway (default /ring, the ingesters as the distributor sees them):
# `<id> <state> <healthy> <heartbeat age>` per member.
ring() {
    curl -sf --max-time 5 -H 'Accept: application/json' "$gateway${1:-/ring}" 2>/dev/null |
        python3 -c '
import json, sys
for s in json.load(sys.stdin)["shards"]:
    print(s["id"], s["state"], s["healthy"], s["heartbeat_age_seconds"])'
}

log "building images (norn from $norn_bin)"
timeout "${NORN_COMPOSE_BUILD_TIMEOUT:-900}" deploy/compose/test-images.sh "$norn_bin" ||
    { echo "compose test: FAILED (building the images)"; exit 1; }

trap cleanup EXIT
trap 'exit 130' INT TERM
# A stack a previous run left (killed before its trap) is removed first.
compose down --volumes --remove-orphans --timeout 5 >/dev/null 2>&1 || true

# 1. Up.
deadline=$(($(date +%s) + ${NORN_COMPOSE_TEST_TIMEOUT:-420}))
log "docker compose up (gateway on $gateway)"
compose up -d --no-build >/tmp/norn-compose-up.$$ 2>&1 || {
    cat /tmp/norn-compose-up.$$ >&2
    rm -f /tmp/norn-compose-up.$$
    failed_services=(minio createbucket)
    fail "docker compose up"
}
rm -f /tmp/norn-compose-up.$$

# 2. /ready on every Norn container, probed inside it (the image's own health probe).
for s in "${norn_services[@]}"; do
    failed_services=("$s")
    wait_for "compose exec -T $s norn tools ready --timeout=2s >/dev/null 2>&1" "$s /ready"
done

# 3. Prometheus scrapes the 11 Norn processes and remote-writes `up` through the gateway; the
#    query goes gateway -> query-frontend -> a querier -> the ingesters.
failed_services=(prometheus gateway distributor query-frontend querier-1 querier-2)
wait_for '[ "$(query "count(up{job=\"norn\"} == 1)")" = 11 ]' \
    "up == 1 for all 11 Norn processes, queried through the gateway as tenant $tenant"

# 4. One ingester down: RF 3 keeps a write quorum (2) and every series readable.
failed_services=("$victim" distributor prometheus querier-1 querier-2)
killed_at=$(date +%s)
docker kill "$(compose ps -q "$victim")" >/dev/null || fail "docker kill $victim"
[ "$(docker inspect -f '{{.State.Running}}' "$(compose ps -q "$victim")")" = false ] ||
    fail "$victim still running after docker kill"
log "killed $victim"
# Reads right away, before the ring marks it unhealthy (heartbeat timeout, 1 m): the queriers
# must not wait for the dead ingester (each query within 10 s, query()'s bound).
for i in 1 2 3; do
    t0=$(date +%s%N)
    [ "$(query "count(up{job=\"norn\"})")" -ge 10 ] 2>/dev/null ||
        fail "read $i right after killing $victim failed or took over 10 s"
    log "ok: read $i with $victim just killed took $((($(date +%s%N) - t0) / 1000000)) ms"
    sleep 1
done
# A sample scraped after the kill that can be read back went through the distributor (2 of 3
# ingesters acknowledged it) and was read through the queriers with one ingester gone.
wait_for '[ "$(query "max(timestamp(up{job=\"prometheus\"})) > $((killed_at + 5))")" != "" ]' \
    "samples written after the kill are queryable with $victim down"
[ "$(query "count(up{job=\"norn\"})")" -ge 10 ] 2>/dev/null ||
    fail "reads with $victim down miss series"
log "ok: reads see every Norn target's series with $victim down"

# 5. Restart: same volume (WAL, tokens), same instance id; ACTIVE and healthy again.
restarted_at=$(date +%s)
compose start "$victim" >/dev/null || fail "docker compose start $victim"
wait_for "compose exec -T $victim norn tools ready --timeout=2s >/dev/null 2>&1" "$victim /ready after restart"
wait_for '[ "$(ring | awk -v id='"$victim"' '"'"'$1 == id && $2 == "ACTIVE" && $3 == "True" && $4 < 10'"'"')" != "" ]' \
    "$victim ACTIVE and heartbeating in the ingester ring"
ring | sed 's/^/    ring: /'
[ "$(ring | awk '$2 == "ACTIVE" && $3 == "True"' | wc -l)" = 3 ] ||
    fail "not all 3 ingesters ACTIVE and healthy after the restart"
wait_for '[ "$(query "max(timestamp(up{job=\"prometheus\"})) > $((restarted_at + 5))")" != "" ]' \
    "writes go on after $victim rejoined"

# The other rings, as an operator would look at them through the gateway.
failed_services=(store-gateway-1 store-gateway-2 compactor ruler)
for r in store-gateway:2 compactor:1 ruler:1; do
    path=/${r%%:*}/ring want=${r##*:}
    wait_for '[ "$(ring "$path" | awk '"'"'$2 == "ACTIVE" && $3 == "True"'"'"' | wc -l)" = '"$want"' ]' \
        "$want ACTIVE and healthy in $path"
done

# 6. Down (the EXIT trap, which prints the verdict).
log "all checks passed in $(($(date +%s) - started)) s"
result=passed
exit 0
