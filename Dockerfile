# Norn's image: one image for every target (`--target=ingester`, `distributor`, …, or `all`).
#
#   docker build -t norn .
#   docker run -p 127.0.0.1:8080:8080 -v norn-data:/data norn --target=all
#
# The build needs only this repository: the protobuf code is generated without a system protoc.
# docker-compose.yml builds it for the full stack; deploy/compose/test.sh tests the same image
# layout (user, /data, entrypoint, health probe) from a locally built base.

FROM rust:1.95-bookworm AS build
WORKDIR /src
# The toolchain of the image, not rust-toolchain.toml's extra components (rustfmt, clippy),
# which a release build does not use.
ENV RUSTUP_TOOLCHAIN=1.95.0 CARGO_TERM_COLOR=never
COPY . .
# Registry and target caches survive between builds (BuildKit).
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p norn \
    && cp target/release/norn /usr/local/bin/norn

FROM debian:bookworm-slim
# CA certificates for an S3 bucket over HTTPS; nothing else: the health probe is norn itself.
RUN apt-get update \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --home-dir /data --shell /usr/sbin/nologin norn \
    && mkdir -p /data \
    && chown norn:norn /data
COPY --from=build /usr/local/bin/norn /usr/local/bin/norn
USER norn
WORKDIR /data
# WAL, blocks, tokens, caches: relative default paths (./tsdb, ./data/bucket, …) land here.
VOLUME ["/data"]
# HTTP (API, /metrics, /ready), gRPC (ingester, store-gateway, query-frontend), gossip.
EXPOSE 8080 9095 7946 7946/udp
HEALTHCHECK --interval=10s --timeout=5s --start-period=60s --retries=3 \
    CMD ["norn", "tools", "ready", "--url=http://127.0.0.1:8080/ready"]
ENTRYPOINT ["norn"]
CMD ["--target=all"]
