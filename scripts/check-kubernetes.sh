#!/usr/bin/env bash
# Validates the Kubernetes manifests of deploy/kubernetes without a cluster:
# every document is decoded strictly with the official Kubernetes API types
# (unknown or misspelt fields are errors), then the project's own rules are
# checked (probes, the stop sequence, resources, security context, selectors,
# shared settings, referenced ConfigMaps and Secrets); see
# tools/kube-check/main.go for what is checked.
#
#   scripts/check-kubernetes.sh          check deploy/kubernetes
#   scripts/check-kubernetes.sh DIR      check another directory (relative to
#                                        the repository root)
#
# Idempotent: builds the checker once into .local/bin/kube-check and rebuilds
# it only when its sources are newer. Needs Go (the module wants Go 1.25+; an
# older Go 1.21+ fetches that toolchain through the module proxy).
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
src="$root/tools/kube-check"
bin="${BOOKS_STATE_DIR:-$root/.local}/bin/kube-check"

log() { printf '[check-kubernetes] %s\n' "$*" >&2; }

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
[ $# -gt 0 ] || set -- deploy/kubernetes
exec "$bin" -dockerfile Dockerfile "$@"
