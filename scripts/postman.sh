#!/usr/bin/env bash
# Runs the Postman collection (requests/books.postman_collection.json) with
# newman against both services, then checks that each service's OpenAPI
# document imports well into Postman: converted as Postman's import does
# (openapi-to-postmanv2, parameters from the examples), the collection points
# at the documented server and every request can be sent as it is. newman and
# openapi-to-postmanv2 come from npm, installed once into .local/node. The
# services run as built binaries, against MONGO_URL and REDIS_URL, with
# databases, stream and cache keys of their own, removed afterwards.
#
#   scripts/postman.sh
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
# shellcheck source=scripts/python-tool.sh
. "$root/scripts/python-tool.sh"
# shellcheck source=scripts/test-system.sh
. "$root/scripts/test-system.sh"

node_dir="${BOOKS_STATE_DIR:-$root/.local}/node"
node_tools=(newman@6.2.2 openapi-to-postmanv2@6.3.3)
installed() { node -p "require('$node_dir/node_modules/$1/package.json').version" 2>/dev/null; }
for tool in "${node_tools[@]}"; do
  if [ "$(installed "${tool%@*}")" != "${tool#*@}" ]; then
    if ! command -v npm >/dev/null; then
      echo "[postman] installing nodejs and npm from apt" >&2
      sudo_if_needed=""
      [ "$(id -u)" -eq 0 ] || sudo_if_needed="sudo"
      $sudo_if_needed apt-get install -y -qq nodejs npm >/dev/null
    fi
    echo "[postman] installing ${node_tools[*]} into $node_dir" >&2
    npm install --prefix "$node_dir" --save-exact --no-audit --no-fund --loglevel=error "${node_tools[@]}" >/dev/null
    break
  fi
done
bin="$node_dir/node_modules/.bin"

out="target/postman"
rm -rf "$out"
start_system postman "$out"

status=0
echo "[postman] newman: requests/books.postman_collection.json" >&2
"$bin/newman" run requests/books.postman_collection.json \
  --env-var "commandUrl=$command_url" --env-var "queryUrl=$query_url" --env-var "token=$token" \
  --reporters cli,junit --reporter-junit-export "$out/newman.xml" --color off || status=1

# The documents as Postman imports them ("Parameter generation: Example"):
# the requests must be sendable as converted, so newman sends each once.
for service in command-service query-service; do
  url=$command_url variable=commandUrl
  [ "$service" = query-service ] && url=$query_url variable=queryUrl
  echo "[postman] import check: $service's /openapi.json" >&2
  curl -fsS "$url/openapi.json" -o "$out/$service.openapi.json"
  "$bin/openapi2postmanv2" -s "$out/$service.openapi.json" -o "$out/$service.imported.json" \
    -O parametersResolution=Example >/dev/null
  node - "$out/$service.openapi.json" "$out/$service.imported.json" requests/books.postman_collection.json "$variable" <<'JS' || status=1
const fs = require("fs");
const [documentFile, importedFile, shippedFile, variable] = process.argv.slice(2);
const [document, imported, shipped] = [documentFile, importedFile, shippedFile].map((f) => JSON.parse(fs.readFileSync(f)));
const problems = [];
const requests = (items) => items.flatMap((item) => (item.item ? requests(item.item) : [item]));

// The base URL is the documented server, not "/".
const baseUrl = (imported.variable || []).find((v) => v.key === "baseUrl");
const server = document.servers && document.servers[0] && document.servers[0].url;
if (!/^https?:\/\/[^/]/.test(server || "")) problems.push(`the document names no absolute server: ${server}`);
if (!baseUrl || baseUrl.value !== server) problems.push(`baseUrl is ${JSON.stringify(baseUrl && baseUrl.value)}, not ${server}`);

// No placeholder (<string>, <long>, ...) where an example belongs, and every
// header value sendable.
const placeholder = /<[A-Za-z][\w-]*>/;
for (const { name, request } of requests(imported.item)) {
  const values = [
    ...(request.url.query || []).map((q) => [`query ${q.key}`, q.value]),
    ...(request.url.variable || []).map((v) => [`path :${v.key}`, v.value]),
    ...(request.header || []).map((h) => [`header ${h.key}`, h.value]),
    ["body", request.body && request.body.raw],
  ];
  for (const [what, value] of values) {
    if (value != null && placeholder.test(String(value))) problems.push(`${name}: ${what} holds a placeholder: ${value}`);
  }
  for (const header of request.header || []) {
    if (!/^[\x20-\x7E]*$/.test(String(header.value))) problems.push(`${name}: header ${header.key} is not printable ASCII: ${JSON.stringify(header.value)}`);
  }
}

// The shipped collection calls every operation of the document.
const escape = (text) => text.replace(/[.*+?^${}()|[\]\\]/g, "\\$&");
const sent = requests(shipped.item).map(({ request }) => [request.method, request.url.raw.split("?")[0]]);
for (const [template, operations] of Object.entries(document.paths)) {
  const pattern = new RegExp(`^${escape(`{{${variable}}}`)}${template.split(/\{[^}]+\}/).map(escape).join("[^/]+")}$`);
  for (const method of Object.keys(operations).filter((m) => /^(get|put|post|patch|delete)$/.test(m))) {
    if (!sent.some(([m, url]) => m === method.toUpperCase() && pattern.test(url))) problems.push(`requests/books.postman_collection.json never calls ${method.toUpperCase()} ${template}`);
  }
}

problems.forEach((problem) => console.error(`[postman]   ${problem}`));
const count = requests(imported.item).length;
console.error(`[postman]   ${count} imported requests, ${problems.length} problems`);
process.exit(problems.length ? 1 : 0);
JS
  "$bin/newman" run "$out/$service.imported.json" --env-var "baseUrl=$url" --env-var "bearerToken=$token" \
    --reporters cli --reporter-cli-no-summary --reporter-cli-no-success-assertions --color off >"$out/$service.imported.log" 2>&1 || {
    echo "[postman]   newman could not send every imported request: $out/$service.imported.log" >&2
    status=1
  }
done
[ "$status" -eq 0 ] || echo "[postman] failures; service logs in $out/" >&2
exit "$status"
