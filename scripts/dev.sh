#!/usr/bin/env bash
# Starts the whole system on this machine without Docker: FerretDB on
# PostgreSQL, and Redis (installed and started if needed, see
# scripts/servers.sh), then command-service on :5000 and
# query-service on :5001, with their logs interleaved and prefixed. Ctrl-C
# stops both services gracefully, then the servers this script started.
#
# Variables from `.env` (see `.env.example`) apply to both services;
# PROFILE=release builds optimised binaries.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"

profile="${PROFILE:-dev}"

# Commands need a bearer token. Unless one is configured (environment or
# .env), accept the development token of the README's examples.
if [ -z "${API_TOKENS:-}" ] && ! grep -qs '^API_TOKENS=' .env; then
  export API_TOKENS=books-dev-token
  echo "[dev] commands accept the development token: Authorization: Bearer books-dev-token" >&2
fi
target_dir="debug"
[ "$profile" = "release" ] && target_dir="release"

started=$(scripts/servers.sh up)
pids=()
cleanup() {
  if [ "${#pids[@]}" -gt 0 ]; then
    echo "[dev] stopping services" >&2
    kill -TERM "${pids[@]}" 2>/dev/null || true
    wait "${pids[@]}" 2>/dev/null || true
  fi
  # shellcheck disable=SC2086 # a list of names
  [ -z "$started" ] || scripts/servers.sh down $started
}
# A signal ends the script; leaving it, for any reason, stops what it started.
trap 'exit 130' INT TERM
trap cleanup EXIT

echo "[dev] building services ($profile profile)" >&2
cargo build --locked --profile "$profile" -p command-service -p query-service

run() {
  local name=$1 port=$2
  # The log prefixer ignores Ctrl-C so the services' shutdown lines still show.
  PORT="${port}" "target/$target_dir/$name" > >(trap '' INT; exec sed -u "s/^/[$name] /") 2>&1 &
  pids+=("$!")
}
run command-service "${COMMAND_PORT:-5000}"
run query-service "${QUERY_PORT:-5001}"

echo "[dev] command-service on http://localhost:${COMMAND_PORT:-5000}, query-service on http://localhost:${QUERY_PORT:-5001}; Ctrl-C stops everything" >&2
# Whichever service exits first (Ctrl-C, or a failure) stops the other.
wait -n "${pids[@]}" || true
