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
# shellcheck source=scripts/test-system.sh
. "$root/scripts/test-system.sh"

examples="${FUZZ_EXAMPLES:-40}"
logs="target/fuzz"
# A read waiting for a version that never comes (what random input asks
# for) answers soon.
start_system fuzz "$logs" READ_YOUR_WRITES_TIMEOUT_MS=100

status=0
fuzz() {
  local name=$1 url=$2
  shift 2
  echo "[fuzz] $name: schemathesis, $examples examples per operation and phase" >&2
  # --url: the documents name the default ports in `servers`.
  "$venv/bin/schemathesis" --config-file tests/fuzz/schemathesis.toml run \
    "$url/openapi.json" --url "$url" \
    --max-examples "$examples" --seed 1 --no-color \
    --report junit --report-dir "$logs/$name" "$@" || status=1
}
fuzz command-service "$command_url" --header "Authorization: Bearer $token"
fuzz query-service "$query_url"
[ "$status" -eq 0 ] || echo "[fuzz] failures; service logs in $logs/" >&2
exit "$status"
