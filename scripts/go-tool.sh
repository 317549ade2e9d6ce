#!/usr/bin/env bash
# Builds one of the project's Go tools (tools/NAME, a Go module of its own)
# into .local/bin/NAME, once, and again only when its sources are newer;
# prints the binary's path. Go fetches the toolchain a module wants through
# the module proxy when the local one is older (GOTOOLCHAIN=auto).
#
#   scripts/go-tool.sh NAME
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
name=${1:?usage: scripts/go-tool.sh NAME}
src="$root/tools/$name"
bin="${BOOKS_STATE_DIR:-$root/.local}/bin/$name"
[ -f "$src/go.mod" ] || { echo "[go-tool] no Go module in $src" >&2; exit 2; }

needs_build() {
  [ -x "$bin" ] || return 0
  [ -n "$(find "$src" -type f \( -name '*.go' -o -name go.mod -o -name go.sum \) -newer "$bin" -print -quit)" ]
}

if needs_build; then
  command -v go >/dev/null || { echo "[go-tool] Go 1.21 or newer is needed to build $name" >&2; exit 1; }
  echo "[go-tool] building $bin (once; later runs reuse it)" >&2
  mkdir -p "$(dirname "$bin")"
  tmp="$bin.tmp.$$"
  trap 'rm -f "$tmp"' EXIT
  (cd "$src" && GOTOOLCHAIN="${GOTOOLCHAIN:-auto}" go build -trimpath -o "$tmp" .) >&2
  mv -f "$tmp" "$bin"
fi
echo "$bin"
