# One image per service:
#   docker build --build-arg BIN=crm --build-arg PORT=8081 -t tenantsync/crm:0.1.0 .
# BIN is wrapper, crm, hrms or projects; PORT is the port its *_LISTEN binds (for EXPOSE and the
# health check). docker-compose.yml and deploy/k8s build and run exactly these.
#
# Layers: the dependencies are compiled from cargo-chef's recipe (Cargo.toml and Cargo.lock
# only) before the sources are copied, so a change to the code rebuilds the workspace's crates,
# not the ~400 dependencies. The runtime image runs as an unprivileged user (uid 10001) and
# checks its own liveness.
ARG RUST_VERSION=1.95

FROM rust:${RUST_VERSION}-bookworm AS chef
RUN cargo install cargo-chef --locked --version 0.1.78
WORKDIR /src

FROM chef AS planner
COPY . .
RUN cargo chef prepare --recipe-path recipe.json

FROM chef AS build
ARG BIN=wrapper
COPY --from=planner /src/recipe.json recipe.json
RUN cargo chef cook --release --locked --recipe-path recipe.json --package "${BIN}"
COPY . .
# What ships is the binary without its DWARF (symbols stay, so a backtrace names functions):
# 134 MB -> 29 MB for the wrapper. The line tables go to service.debug beside it in this
# stage (a build artifact; the binary's .gnu_debuglink names it for symbolising backtraces).
RUN cargo build --release --locked --package "${BIN}" --bin "${BIN}" \
 && objcopy --only-keep-debug "target/release/${BIN}" /usr/local/bin/service.debug \
 && objcopy --strip-debug --add-gnu-debuglink=/usr/local/bin/service.debug \
      "target/release/${BIN}" /usr/local/bin/service \
 && chmod 0755 /usr/local/bin/service

FROM debian:bookworm-slim
ARG BIN=wrapper
ARG PORT=8080
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates curl \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --system --gid 10001 tsync \
 && useradd --system --uid 10001 --gid 10001 --no-create-home --shell /usr/sbin/nologin tsync
COPY --from=build /usr/local/bin/service /usr/local/bin/service
LABEL org.opencontainers.image.title="tenantsync-${BIN}" \
      org.opencontainers.image.source="https://github.com/tenantsync/tenantsync"
ENV HEALTH_PORT=${PORT}
USER 10001:10001
EXPOSE ${PORT}
HEALTHCHECK --interval=10s --timeout=3s --start-period=30s --retries=3 \
  CMD curl -fsS "http://127.0.0.1:${HEALTH_PORT}/health/live" >/dev/null || exit 1
ENTRYPOINT ["/usr/local/bin/service"]
