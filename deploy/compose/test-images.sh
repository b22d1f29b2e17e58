#!/usr/bin/env bash
# Builds, from nothing but Debian's and PyPI's packages, the images the compose test runs
# (deploy/compose/test.sh): no image can be pulled where the test runs.
#
#   norn-compose-test/base:bookworm   debootstrap minbase + prometheus, prometheus-alertmanager,
#                                     nginx-light, python3, and moto's S3 server under /opt/moto;
#                                     every role but Norn runs from it. Kept between runs (it is
#                                     the slow part) unless NORN_COMPOSE_REBUILD_BASE=1.
#   norn-compose-test/norn:latest     the base plus the already-built norn binary ($1).
#
# Usage: deploy/compose/test-images.sh /path/to/norn     (must run as root: debootstrap, chroot)
set -euo pipefail

norn_bin=${1:?usage: test-images.sh /path/to/norn}
base=norn-compose-test/base:bookworm
norn_image=norn-compose-test/norn:latest
mirror=${NORN_DEBIAN_MIRROR:-http://deb.debian.org/debian}

log() { echo "[test-images] $*"; }

# The root file system and the build context are removed however the script ends (an error,
# the caller's timeout): /proc is unmounted first, and a tree still mounted is never removed.
root=""
ctx=""
cleanup() {
    if [ -n "$root" ]; then
        umount "$root/proc" 2>/dev/null || umount -l "$root/proc" 2>/dev/null || true
        if mountpoint -q "$root/proc" 2>/dev/null; then
            echo "[test-images] $root/proc is still mounted: left in place" >&2
        else
            rm -rf "$root" "$root.log"
        fi
        root=""
    fi
    if [ -n "$ctx" ]; then rm -rf "$ctx"; fi
}
trap cleanup EXIT
trap 'exit 143' TERM INT

build_base() {
    command -v debootstrap >/dev/null 2>&1 || {
        log "installing debootstrap"
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends debootstrap >/dev/null
    }
    root=$(mktemp -d /var/tmp/norn-compose-rootfs.XXXXXX)
    log "debootstrap bookworm (minbase) into $root"
    debootstrap --variant=minbase bookworm "$root" "$mirror" >"$root.log" 2>&1 || {
        tail -20 "$root.log"
        return 1
    }
    # No package's maintainer script may start its daemon here (it would run on this machine).
    printf '#!/bin/sh\nexit 101\n' >"$root/usr/sbin/policy-rc.d"
    chmod +x "$root/usr/sbin/policy-rc.d"
    mount -t proc proc "$root/proc"
    log "apt-get install prometheus prometheus-alertmanager nginx-light python3"
    chroot "$root" /bin/sh -c 'apt-get update -qq &&
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
            prometheus prometheus-alertmanager nginx-light python3 >/dev/null &&
        apt-get clean' || return 1
    umount "$root/proc"
    rm -rf "$root"/var/lib/apt/lists/* "$root"/usr/share/doc/* "$root"/usr/share/man/* \
        "$root"/usr/share/locale/* "$root/usr/sbin/policy-rc.d" \
        "$root"/usr/share/javascript "$root"/usr/share/nodejs
    # (Those two are Prometheus' web UI libraries, 220 MB the test never loads.)
    # moto's S3 server in MinIO's place: moto with its S3 extra plus the two packages its
    # server needs (moto[server] would pull every AWS service's dependencies). Wheels for
    # CPython 3.11 on x86_64, bookworm's python3.
    log "pip install moto[s3] flask flask-cors into /opt/moto"
    python3 -m pip install --quiet --target "$root/opt/moto" --only-binary=:all: \
        --python-version 3.11 --implementation cp --platform manylinux2014_x86_64 \
        --platform manylinux_2_17_x86_64 --platform manylinux_2_28_x86_64 --platform any \
        'moto[s3]' flask flask-cors
    log "docker import $base"
    local previous
    previous=$(docker image inspect -f '{{.Id}}' "$base" 2>/dev/null || true)
    tar -C "$root" -c . | docker import \
        --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
        --change 'ENV PYTHONPATH=/opt/moto' \
        - "$base" >/dev/null
    cleanup
    # A base rebuilt on request replaces the old one (Norn's image is rebuilt on it below).
    if [ -n "$previous" ]; then docker rmi "$previous" >/dev/null 2>&1 || true; fi
}

if [ "${NORN_COMPOSE_REBUILD_BASE:-0}" = 1 ] || ! docker image inspect "$base" >/dev/null 2>&1; then
    start=$(date +%s)
    build_base
    log "base image built in $(($(date +%s) - start)) s"
else
    log "base image $base already present (NORN_COMPOSE_REBUILD_BASE=1 rebuilds it)"
fi

# Norn's image: the base plus the binary, with the Dockerfile's user, volume and entrypoint.
ctx=$(mktemp -d /var/tmp/norn-compose-ctx.XXXXXX)
cp "$norn_bin" "$ctx/norn"
cat >"$ctx/Dockerfile" <<EOF
FROM $base
COPY norn /usr/local/bin/norn
RUN useradd --system --uid 10001 --home-dir /data --shell /usr/sbin/nologin norn \\
    && mkdir -p /data && chown norn:norn /data
USER norn
WORKDIR /data
VOLUME ["/data"]
ENTRYPOINT ["norn"]
EOF
log "docker build $norn_image"
previous=$(docker image inspect -f '{{.Id}}' "$norn_image" 2>/dev/null || true)
DOCKER_BUILDKIT=0 docker build --quiet --tag "$norn_image" "$ctx" >/dev/null
# The previous build (an older binary) would stay behind untagged, 0.5 GB a run.
if [ -n "$previous" ] && [ "$previous" != "$(docker image inspect -f '{{.Id}}' "$norn_image")" ]; then
    docker rmi "$previous" >/dev/null 2>&1 || true
fi
log "images ready"
