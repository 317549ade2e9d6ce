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
# Builds the checker once (scripts/go-tool.sh). Needs Go (the module wants
# Go 1.25+; an older Go 1.21+ fetches that toolchain through the module proxy).
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
bin=$("$root/scripts/go-tool.sh" kube-check)

cd "$root"
[ $# -gt 0 ] || set -- deploy/kubernetes
exec "$bin" -dockerfile Dockerfile "$@"
