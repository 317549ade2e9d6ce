#!/usr/bin/env bash
# Validates each service's OpenAPI document (printed by `<service> openapi`,
# generated from the code) against the OpenAPI 3.1 specification with
# openapi-spec-validator from PyPI, installed once into .local/venv.
# The documents are left in target/openapi/ for inspection.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"

# shellcheck source=scripts/python-tool.sh
. "$root/scripts/python-tool.sh"
python_tool openapi-spec-validator 0.9.0

cargo build --locked --quiet -p command-service -p query-service
mkdir -p target/openapi
for service in command-service query-service; do
  "target/debug/$service" openapi > "target/openapi/$service.json"
done
"$venv/bin/openapi-spec-validator" --schema 3.1 target/openapi/*.json
