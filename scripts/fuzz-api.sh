#!/usr/bin/env bash
# Fuzzes both HTTP APIs with schemathesis (PyPI, installed once into
# .local/venv) against the OpenAPI document each service serves: the
# services run as built binaries, against MONGO_URL and REDIS_URL, with
# databases, stream and cache keys of their own, removed afterwards.
# tests/fuzz/schemathesis.toml says what is checked.
#
#   scripts/fuzz-api.sh          run (FUZZ_EXAMPLES cases per operation
#                                and phase, default 40)
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
# shellcheck source=scripts/python-tool.sh
. "$root/scripts/python-tool.sh"
python_tool schemathesis 4.32.5
python_tool pymongo 4.10.1

: "${MONGO_URL:=mongodb://127.0.0.1:27017}"
: "${REDIS_URL:=redis://127.0.0.1:6379}"
export MONGO_URL REDIS_URL
examples="${FUZZ_EXAMPLES:-40}"
run_id="fuzz_$(date +%s)_$$"
logs="target/fuzz"
mkdir -p "$logs"
token="fuzz-token-$run_id"

cargo build --locked --quiet -p command-service -p query-service

free_port() { "$venv/bin/python" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  "$venv/bin/python" - "$run_id" <<'PY' || true
import os, sys
import pymongo
run = sys.argv[1]
client = pymongo.MongoClient(os.environ["MONGO_URL"], serverSelectionTimeoutMS=3000)
for name in (f"{run}_write", f"{run}_read"):
    client.drop_database(name)
PY
  redis-cli -u "$REDIS_URL" --no-auth-warning EVAL \
    "local n = 0 for _, k in ipairs(redis.call('KEYS', ARGV[1])) do n = n + redis.call('DEL', k) end return n" \
    0 "$run_id:*" >/dev/null 2>&1 || true
}
trap cleanup EXIT

command_port=$(free_port)
query_port=$(free_port)
common=(HOST=127.0.0.1 RUST_LOG=warn EVENTS_STREAM="$run_id:events"
  WRITE_DB_NAME="${run_id}_write" DEPENDENCY_TIMEOUT_MS=2000)
env "${common[@]}" PORT="$command_port" API_TOKENS="$token" \
  QUERY_BASE_URL="http://127.0.0.1:$query_port" \
  target/debug/command-service >"$logs/command-service.log" 2>&1 &
pids+=($!)
env "${common[@]}" PORT="$query_port" READ_DB_NAME="${run_id}_read" \
  CONSUMER_GROUP="$run_id" CONSUMER_NAME="$run_id" CACHE_KEY_PREFIX="$run_id:cache:" \
  READ_YOUR_WRITES_TIMEOUT_MS=100 \
  target/debug/query-service >"$logs/query-service.log" 2>&1 &
pids+=($!)

for port in "$command_port" "$query_port"; do
  for _ in $(seq 1 100); do
    (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break
    sleep 0.1
  done
done

status=0
fuzz() {
  local name=$1 port=$2
  shift 2
  echo "[fuzz] $name: schemathesis, $examples examples per operation and phase" >&2
  # --url: the documents name the default ports in `servers`.
  "$venv/bin/schemathesis" --config-file tests/fuzz/schemathesis.toml run \
    "http://127.0.0.1:$port/openapi.json" --url "http://127.0.0.1:$port" \
    --max-examples "$examples" --seed 1 --no-color \
    --report junit --report-dir "$logs/$name" "$@" || status=1
}
fuzz command-service "$command_port" --header "Authorization: Bearer $token"
fuzz query-service "$query_port"
[ "$status" -eq 0 ] || echo "[fuzz] failures; service logs in $logs/" >&2
exit "$status"
