#!/usr/bin/env bash
# Runs the whole test suite (unit, service and end-to-end tests) against real
# FerretDB (on PostgreSQL) and Redis, starting them first if they are not
# running and stopping afterwards the ones it started (scripts/servers.sh;
# tests/database proves that the MongoDB-compatible server on MONGO_URL makes
# a conditional single-document write atomic). The end-to-end suite then runs
# once more on a Redis Cluster (3 masters, 3 replicas) with the stream split
# into 4 partitions. Then it validates both OpenAPI
# documents, fuzzes both APIs against them (schemathesis) and runs the
# Postman collection with newman (with a check that the documents import
# well into Postman). Extra arguments go to `cargo test` (and skip the
# validation, the fuzzing and the Postman run).
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"

started=$(scripts/servers.sh up)
# Only what this run started (`down` with no names stops everything).
# shellcheck disable=SC2086 # a list of names
trap '[ -z "${started// /}" ] || scripts/servers.sh down $started' EXIT

# The fault-injection suite runs FerretDB servers of its own: make sure the
# binary exists even when the shared server was already running.
FERRETDB_BIN="${FERRETDB_BIN:-$(scripts/servers.sh ferretdb-bin)}"
export FERRETDB_BIN
export MONGO_URL="mongodb://127.0.0.1:${FERRETDB_PORT:-27017}"
export REDIS_URL="redis://127.0.0.1:${REDIS_PORT:-6379}"
cargo test --workspace --locked "$@"
if [ "$#" -eq 0 ]; then
  started="$started $(scripts/servers.sh cluster-up)"
  REDIS_URL="$(scripts/servers.sh cluster-url)" EVENTS_PARTITIONS=4 \
    cargo test --locked -p books --test e2e
  scripts/check-openapi.sh
  scripts/fuzz-api.sh
  scripts/postman.sh
fi
