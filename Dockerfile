# syntax=docker/dockerfile:1
# One Dockerfile for both services; pick one with the target:
#   docker build --target command-service -t books-command-service .
#   docker build --target query-service   -t books-query-service .
# (docker-compose.yml does this for you.)

# The workspace's rust-version is 1.89 (uuid 1.29 needs it). Bookworm, to
# match the runtime's glibc.
ARG RUST_VERSION=1.90

# ---- build: both release binaries in one cargo invocation -------------------
FROM rust:${RUST_VERSION}-slim-bookworm AS builder
WORKDIR /src
COPY . .
# Cache mounts keep the crates.io downloads and compiled dependencies between
# builds, so a code change recompiles only the workspace crates. The target
# dir lives in a cache mount, hence the copy out to /out in the same step.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/usr/local/cargo/git \
    --mount=type=cache,target=/src/target,sharing=locked \
    cargo fetch --locked \
 && cargo build --release --locked -p command-service -p query-service \
 && mkdir -p /out \
 && cp target/release/command-service target/release/query-service /out/

# ---- shared runtime base: CA roots and an unprivileged user, nothing else ---
FROM debian:bookworm-slim AS runtime
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --system --gid 10001 books \
 && useradd --system --uid 10001 --gid books --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin books
# Listen on every interface: inside a container, 127.0.0.1 is unreachable
# from the published port.
ENV HOST=0.0.0.0 \
    RUST_LOG=info
WORKDIR /app
USER 10001:10001

# ---- query-service (:5001) --------------------------------------------------
FROM runtime AS query-service
COPY --from=builder /out/query-service /usr/local/bin/query-service
ENV PORT=5001
EXPOSE 5001
ENTRYPOINT ["/usr/local/bin/query-service"]

# ---- command-service (:5000); last, so a plain `docker build .` builds it ---
FROM runtime AS command-service
COPY --from=builder /out/command-service /usr/local/bin/command-service
ENV PORT=5000
EXPOSE 5000
ENTRYPOINT ["/usr/local/bin/command-service"]
