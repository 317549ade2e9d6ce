#!/usr/bin/env bash
# Validates docker-compose.yml without a Docker engine, with compose-go (the
# library Docker Compose is built on) plus this project's own rules; see
# tools/compose-check/main.go for what is checked.
#
#   scripts/check-compose.sh                 check docker-compose.yml
#   scripts/check-compose.sh -env            ... resolving ${VAR} from the shell
#                                            and ./.env, as `docker compose` would
#   scripts/check-compose.sh FILE [FILE...]  check other files (paths relative
#                                            to the repository root), merged
#                                            like `docker compose -f A -f B`
#
# Builds the checker once (scripts/go-tool.sh). Needs Go (the module wants
# Go 1.24+; an older Go 1.21+ fetches that toolchain through the module proxy).
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
bin=$("$root/scripts/go-tool.sh" compose-check)

cd "$root"
flags=()
while [ $# -gt 0 ] && [[ $1 == -* ]]; do
  flags+=("$1")
  shift
done
[ $# -gt 0 ] || set -- docker-compose.yml
exec "$bin" ${flags[@]+"${flags[@]}"} "$@"
