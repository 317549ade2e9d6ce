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
# Idempotent: builds the checker once into .local/bin/compose-check and
# rebuilds it only when its sources are newer. Needs Go (the module wants Go
# 1.24+; an older Go 1.21+ fetches that toolchain through the module proxy).
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
src="$root/tools/compose-check"
bin="${BOOKS_STATE_DIR:-$root/.local}/bin/compose-check"

log() { printf '[check-compose] %s\n' "$*" >&2; }

needs_build() {
  [ -x "$bin" ] || return 0
  [ -n "$(find "$src" -type f \( -name '*.go' -o -name go.mod -o -name go.sum \) -newer "$bin" -print -quit)" ]
}

if needs_build; then
  command -v go >/dev/null || { log "Go 1.21 or newer is needed to build the checker"; exit 1; }
  log "building $bin (once; later runs reuse it)"
  mkdir -p "$(dirname "$bin")"
  tmp="$bin.tmp.$$"
  trap 'rm -f "$tmp"' EXIT
  (cd "$src" && GOTOOLCHAIN="${GOTOOLCHAIN:-auto}" go build -trimpath -o "$tmp" .)
  mv -f "$tmp" "$bin"
fi

cd "$root"
flags=()
while [ $# -gt 0 ] && [[ $1 == -* ]]; do
  flags+=("$1")
  shift
done
[ $# -gt 0 ] || set -- docker-compose.yml
exec "$bin" ${flags[@]+"${flags[@]}"} "$@"
