#!/usr/bin/env bash
# Benchmarks the system (crates/bench): each route's throughput and latency
# at several concurrency levels beside its floor, the propagation lag, and
# the services' memory; prints a table and writes target/bench/report.json
# and target/bench/throughput.svg. Asserts nothing.
#
#   scripts/bench.sh [OPTIONS]          against a started system (scripts/dev.sh,
#                                       or COMMAND_URL / QUERY_URL), reading its
#                                       databases for the floors (MONGO_URL,
#                                       REDIS_URL, WRITE_DB_NAME, READ_DB_NAME)
#   scripts/bench.sh --start [OPTIONS]  start a system of its own first (servers
#                                       from scripts/servers.sh, the services on
#                                       free ports with databases of their own),
#                                       stop it afterwards
#   scripts/bench.sh --start --cluster [OPTIONS]
#                                       ... with Redis a 3-master cluster
#                                       (scripts/servers.sh cluster-up); set
#                                       EVENTS_PARTITIONS to split the stream
#
# OPTIONS go to the harness: --smoke (every path once, briefly),
# --duration-secs N (per run, default 5), --concurrency 1,16,64,
# --soak-secs N (mixed load for N s, memory sampled), --lag-rates 20,100,500
# (writes/s of the steady propagation-lag runs). PROFILE=dev builds
# unoptimised binaries (default release).
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"

profile="${PROFILE:-release}"
target_dir="release"
[ "$profile" = "release" ] || target_dir="debug"
start=false
cluster=false
if [ "${1:-}" = "--start" ]; then
  start=true
  shift
  if [ "${1:-}" = "--cluster" ]; then
    cluster=true
    shift
  fi
fi

cargo build --locked --quiet --profile "$profile" -p bench
if ! $start; then
  exec "target/$target_dir/bench" "$@"
fi

cargo build --locked --quiet --profile "$profile" -p command-service -p query-service
started=$(scripts/servers.sh up)
run_id="bench_$$"
export MONGO_URL="mongodb://127.0.0.1:${FERRETDB_PORT:-27017}"
export REDIS_URL="redis://127.0.0.1:${REDIS_PORT:-6379}"
redis_nodes=("$REDIS_URL")
if $cluster; then
  started="$started $(scripts/servers.sh cluster-up)"
  REDIS_URL=$(scripts/servers.sh cluster-url)
  base=${REDIS_CLUSTER_PORT:-7000}
  redis_nodes=()
  for port in $(seq "$base" $((base + 5))); do redis_nodes+=("redis://127.0.0.1:$port"); done
fi
export EVENTS_PARTITIONS="${EVENTS_PARTITIONS:-1}"
export WRITE_DB_NAME="${run_id}_write" READ_DB_NAME="${run_id}_read"
export EVENTS_STREAM="$run_id:events" CACHE_KEY_PREFIX="$run_id:cache:"
export CONSUMER_GROUP="$run_id" CONSUMER_NAME="$run_id" API_TOKENS="$run_id-token"
export BENCH_TOKEN="$API_TOKENS" RUST_LOG="${RUST_LOG:-warn}" HOST=127.0.0.1
# The database commands per request come from the services' own counts.
export MONGO_COMMAND_METRICS=true
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
command_port=$(free_port)
query_port=$(free_port)
export COMMAND_URL="http://127.0.0.1:$command_port" QUERY_URL="http://127.0.0.1:$query_port"
mkdir -p target/bench

pids=()
cleanup() {
  kill -TERM "${pids[@]}" 2>/dev/null || true
  wait "${pids[@]}" 2>/dev/null || true
  # Only once the services have stopped: FerretDB crashes when a database
  # is dropped while a query reads it.
  "target/$target_dir/bench" --drop-databases || true
  # Each node deletes its own keys (a cluster's replicas refuse, harmlessly).
  for node in "${redis_nodes[@]}"; do
    redis-cli -u "$node" --no-auth-warning EVAL \
      $'#!lua flags=allow-cross-slot-keys\nlocal n = 0 for _, k in ipairs(redis.call(\'KEYS\', ARGV[1])) do n = n + redis.call(\'DEL\', k) end return n' \
      0 "$run_id:*" >/dev/null 2>&1 || true
  done
  # shellcheck disable=SC2086 # a list of names
  [ -z "${started// /}" ] || scripts/servers.sh down $started
}
trap cleanup EXIT
PORT="$command_port" QUERY_BASE_URL="$QUERY_URL" "target/$target_dir/command-service" >target/bench/command-service.log 2>&1 &
pids+=($!)
export COMMAND_PID=$!
PORT="$query_port" "target/$target_dir/query-service" >target/bench/query-service.log 2>&1 &
pids+=($!)
export QUERY_PID=$!
for url in "$COMMAND_URL" "$QUERY_URL"; do
  for _ in $(seq 1 100); do
    curl -fsS "$url/readyz" >/dev/null 2>&1 && break
    sleep 0.1
  done
done
for url in "$COMMAND_URL" "$QUERY_URL"; do
  curl -fsS "$url/readyz" >/dev/null || { echo "[bench] $url is not ready; logs in target/bench/" >&2; exit 1; }
done
"target/$target_dir/bench" "$@"
