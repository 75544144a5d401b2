# syntax=docker/dockerfile:1
# Saldo's container image: the one `saldo` binary and the browser harness's
# page, on a small runtime that runs as a non-root user.
#
#   docker build -t saldo:0.1.0 .
#   docker run --rm saldo:0.1.0 --help
#
# No container engine runs on Saldo's build machines, so this file is
# checked by tests/run.sh (every path it copies exists) but never built
# there; see docs/operations.md, "Deploying".

# The toolchain pinned in rust-toolchain.toml (the rust image's own rustup
# installs that channel and its wasm32 target on first use).
FROM rust:1.95.0-bookworm AS build
WORKDIR /src
COPY . .
# The release binary only, with the committed lockfile. librdkafka is built
# from source and linked statically (gcc, make, zlib's, OpenSSL's and
# libcurl's headers are in this image; libcurl's are named here so that
# they stay).
RUN apt-get update \
    && apt-get install -y --no-install-recommends libcurl4-openssl-dev pkg-config \
    && rm -rf /var/lib/apt/lists/*
RUN cargo build --release --locked -p saldo --bin saldo
# The harness page that `saldo dev` serves at /harness/: the simulator built
# for wasm32 and bound by the wasm-bindgen CLI of the version Cargo.toml pins.
RUN bash harness/build.sh

FROM debian:bookworm-slim AS runtime
# The binary links glibc, libgcc, zlib, OpenSSL (librdkafka's TLS and
# SASL, rdkafka's `ssl` feature) and libcurl (OAUTHBEARER's OIDC, rdkafka's
# `curl` feature) dynamically (`ldd`); zlib is in the slim image already and
# named here so that it stays. CA certificates for TLS towards managed
# PostgreSQL and Kafka. Nothing else.
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates zlib1g libssl3 libcurl4 \
    && rm -rf /var/lib/apt/lists/*
COPY --from=build /src/target/release/saldo /usr/local/bin/saldo
# `saldo dev` looks for the page at BIN/../share/saldo/harness.
COPY --from=build /src/harness/web /usr/local/share/saldo/harness
# A numeric user, so that Kubernetes' runAsNonRoot can verify it.
USER 10001:10001
ENTRYPOINT ["saldo"]
CMD ["--help"]
