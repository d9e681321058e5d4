# syntax=docker/dockerfile:1
# Multi-stage build: dependencies are compiled in their own layer, so a source change
# rebuilds only the crate itself.

FROM rust:1.95-bookworm AS builder
WORKDIR /src
COPY Cargo.toml Cargo.lock rust-toolchain.toml ./
# Cargo checks that every target in the manifest has a file: stand-ins for all of them.
RUN mkdir -p src benches tests/api \
 && echo 'fn main() {}' > src/main.rs && touch src/lib.rs \
 && for bench in webhook gitops tool pull; do echo 'fn main() {}' > "benches/$bench.rs"; done \
 && touch tests/api/main.rs \
 && cargo build --release --locked --bin port-runner \
 && rm -rf src benches tests
# The PostgreSQL migrations are compiled into the binary (include_str!).
COPY migrations ./migrations
COPY src ./src
COPY benches ./benches
COPY tests ./tests
RUN touch src/main.rs src/lib.rs && cargo build --release --locked --bin port-runner

FROM debian:bookworm-slim AS runtime
# The Pulumi CLI is optional (GitOps-only images do without it):
#   docker build --build-arg INSTALL_PULUMI=true .
ARG INSTALL_PULUMI=false
ARG PULUMI_VERSION=3.259.0
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates curl tini \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --home-dir /data --shell /usr/sbin/nologin runner \
 && mkdir -p /data && chown runner /data
RUN if [ "$INSTALL_PULUMI" = "true" ]; then \
      set -eu; cd /tmp; \
      tarball="pulumi-v${PULUMI_VERSION}-linux-x64.tar.gz"; \
      curl -fsSLO "https://get.pulumi.com/releases/sdk/${tarball}"; \
      curl -fsSL "https://get.pulumi.com/releases/sdk/pulumi-${PULUMI_VERSION}-checksums.txt" | grep " ${tarball}\$" | sha256sum -c -; \
      tar -xzf "${tarball}" -C /opt && ln -s /opt/pulumi/pulumi /usr/local/bin/pulumi && rm "${tarball}"; \
    fi
COPY --from=builder /src/target/release/port-runner /usr/local/bin/port-runner
COPY actions /opt/port-runner/actions
COPY blueprints /opt/port-runner/blueprints
USER runner
WORKDIR /data
ENV LISTEN_ADDR=0.0.0.0:8080 \
    PORT_RUNNER_DATA_DIR=/data \
    PORT_RUNNER_BLUEPRINTS_DIR=/opt/port-runner/blueprints \
    PORT_RUNNER_ACTIONS_DIR=/opt/port-runner/actions \
    LOG_FORMAT=json
VOLUME ["/data"]
EXPOSE 8080
STOPSIGNAL SIGTERM
HEALTHCHECK --interval=30s --timeout=3s --start-period=5s --retries=3 \
  CMD ["curl", "-fsS", "http://127.0.0.1:8080/healthz"]
# tini is PID 1: it forwards signals to port-runner and reaps what a tool's own children leave
# (Pulumi's providers and language hosts re-parented when their CLI ends): no zombies pile up.
ENTRYPOINT ["/usr/bin/tini", "--", "/usr/local/bin/port-runner"]
CMD ["serve"]
