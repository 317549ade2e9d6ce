# shellcheck shell=bash
# Sourced by the scripts that test a running system (fuzz-api.sh,
# postman.sh), after scripts/python-tool.sh:
#
#   start_system PREFIX LOG_DIR [VAR=VALUE...]
#
# builds both services and starts them on free ports against MONGO_URL and
# REDIS_URL, with databases, a stream and cache keys of their own (removed
# when the script exits), the extra variables given to query-service, and
# waits until both are ready. Sets command_url, query_url and token.

python_tool pymongo 4.10.1 # to drop the run's databases

start_system() {
  local prefix=$1 logs=$2
  shift 2
  : "${MONGO_URL:=mongodb://127.0.0.1:27017}"
  : "${REDIS_URL:=redis://127.0.0.1:6379}"
  export MONGO_URL REDIS_URL
  run_id="${prefix}_$(date +%s)_$$"
  token="$prefix-token-$run_id"
  mkdir -p "$logs"
  cargo build --locked --quiet -p command-service -p query-service

  system_pids=()
  trap stop_system EXIT
  local command_port query_port
  command_port=$(free_port)
  query_port=$(free_port)
  command_url="http://127.0.0.1:$command_port"
  query_url="http://127.0.0.1:$query_port"
  local common=(HOST=127.0.0.1 RUST_LOG=warn EVENTS_STREAM="$run_id:events"
    WRITE_DB_NAME="${run_id}_write" DEPENDENCY_TIMEOUT_MS=2000)
  env "${common[@]}" PORT="$command_port" API_TOKENS="$token" QUERY_BASE_URL="$query_url" \
    target/debug/command-service >"$logs/command-service.log" 2>&1 &
  system_pids+=($!)
  env "${common[@]}" PORT="$query_port" READ_DB_NAME="${run_id}_read" \
    CONSUMER_GROUP="$run_id" CONSUMER_NAME="$run_id" CACHE_KEY_PREFIX="$run_id:cache:" "$@" \
    target/debug/query-service >"$logs/query-service.log" 2>&1 &
  system_pids+=($!)

  local url
  for url in "$command_url" "$query_url"; do
    for _ in $(seq 1 100); do
      curl -fs -o /dev/null "$url/readyz" && break
      sleep 0.1
    done
  done
}

# venv: set by scripts/python-tool.sh, sourced first.
# shellcheck disable=SC2154
free_port() {
  "$venv/bin/python" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

stop_system() {
  for pid in "${system_pids[@]}"; do kill "$pid" 2>/dev/null || true; done
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
