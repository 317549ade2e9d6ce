#!/usr/bin/env bash
# Validates each service's OpenAPI document (printed by `<service> openapi`,
# generated from the code) against the OpenAPI 3.1 specification with
# openapi-spec-validator from PyPI, installed once into .local/venv.
# The documents are left in target/openapi/ for inspection.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"

validator_version="0.9.0"
venv=".local/venv"
if ! "$venv/bin/openapi-spec-validator" --version 2>/dev/null | grep -q "$validator_version"; then
  echo "[openapi] installing openapi-spec-validator $validator_version into $venv" >&2
  if ! python3 -m venv "$venv" 2>/dev/null; then
    # Debian ships venv support as its own package.
    echo "[openapi] installing python3-venv from apt" >&2
    sudo_if_needed=""
    [ "$(id -u)" -eq 0 ] || sudo_if_needed="sudo"
    $sudo_if_needed apt-get install -y -qq python3-venv >/dev/null
    rm -rf "$venv"
    python3 -m venv "$venv"
  fi
  "$venv/bin/pip" install --quiet --disable-pip-version-check "openapi-spec-validator==$validator_version"
fi

cargo build --locked --quiet -p command-service -p query-service
mkdir -p target/openapi
for service in command-service query-service; do
  "target/debug/$service" openapi > "target/openapi/$service.json"
done
"$venv/bin/openapi-spec-validator" --schema 3.1 target/openapi/*.json
