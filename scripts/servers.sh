#!/usr/bin/env bash
# Installs and starts the servers the books services need on a machine without
# Docker: FerretDB v1.24.2 (MongoDB wire protocol, SQLite backend) and Redis 7.
#
#   scripts/servers.sh up            install what is missing, start what is not
#                                    running; prints the names it started
#   scripts/servers.sh down [NAME..] stop the servers this script started
#                                    (all, or only those named: ferretdb, redis)
#   scripts/servers.sh status        say what answers where
#   scripts/servers.sh ferretdb-bin  build FerretDB if needed (also when a
#                                    server already answers) and print its path
#
# Idempotent: a second `up` reuses the built FerretDB binary and the running
# servers. Everything lives under .local/ in the repository (gitignored).
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
state="${BOOKS_STATE_DIR:-$root/.local}"
ferretdb_version="v1.24.2"
# The build carries one fix (see build_ferretdb), hence its own name.
ferretdb_bin="$state/bin/ferretdb-$ferretdb_version-idlookup"
mongo_port="${FERRETDB_PORT:-27017}"
redis_port="${REDIS_PORT:-6379}"

log() { printf '[servers] %s\n' "$*" >&2; }

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

wait_for_port() {
  local port=$1 name=$2 logfile=$3
  for _ in $(seq 1 150); do
    port_open "$port" && return 0
    sleep 0.1
  done
  log "$name did not open port $port; last lines of $logfile:"
  tail -n 30 "$logfile" >&2 || true
  return 1
}

install_redis() {
  command -v redis-server >/dev/null && return 0
  command -v apt-get >/dev/null || { log "redis-server missing and no apt-get: install Redis 7"; return 1; }
  log "installing redis-server from Debian packages"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends redis-server >/dev/null
  # The package may start Debian's own Redis (no AOF, not ours to stop) on
  # the default port; stop and disable it so the one started below is ours.
  if command -v systemctl >/dev/null && systemctl is-system-running >/dev/null 2>&1; then
    systemctl disable --now redis-server >/dev/null 2>&1 || true
  else
    service redis-server stop >/dev/null 2>&1 || true
  fi
  for _ in $(seq 1 50); do port_open "$redis_port" || break; sleep 0.1; done
}

# A plain `go install .../cmd/ferretdb@v1.24.2` builds a binary that panics at
# start: the module lacks build/version/version.txt. Build from a copy of the
# module with that file written.
build_ferretdb() {
  [ -x "$ferretdb_bin" ] && return 0
  command -v go >/dev/null || { log "go is needed to build FerretDB"; return 1; }
  log "building FerretDB $ferretdb_version (once; later runs reuse $ferretdb_bin)"
  local src
  src=$(GOFLAGS=-mod=mod go mod download -json "github.com/FerretDB/FerretDB@$ferretdb_version" |
    sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$/\1/p')
  [ -d "$src" ] || { log "could not download the FerretDB module"; return 1; }
  local work="$state/build/ferretdb"
  rm -rf "$work"
  mkdir -p "$work" "$state/bin"
  cp -r "$src/." "$work/"
  chmod -R u+w "$work"
  echo "$ferretdb_version" >"$work/build/version/version.txt"
  # v1.24.2's SQLite backend looks documents up by `_id` (finds, updates,
  # deletes) with the expression `_ferretdb_sjson->'$._id'`, while its
  # unique `_id` index is on `_ferretdb_sjson->"_id"`: the same value, but
  # SQLite matches index expressions by their text, so every lookup by `_id`
  # scans and parses the whole table. Written the way the index is, the
  # lookup uses the index; nothing else changes.
  local metadata="$work/internal/backends/sqlite/metadata/metadata.go"
  grep -q "IDColumn = DefaultColumn + \"->'\$._id'\"" "$metadata" ||
    { log "FerretDB's _id lookup is not the expected one; not patching blind"; return 1; }
  sed -i "s|IDColumn = DefaultColumn + \"->'\$._id'\"|IDColumn = DefaultColumn + \"->\\\\\"_id\\\\\"\"|" "$metadata"
  # Go fetches the toolchain the module names (go1.24.x) if the local one
  # cannot build it; both come through the Go module proxy.
  (cd "$work" && GOTOOLCHAIN="${GOTOOLCHAIN:-auto}" CGO_ENABLED=0 \
    go build -trimpath -o "$ferretdb_bin.tmp" ./cmd/ferretdb)
  mv "$ferretdb_bin.tmp" "$ferretdb_bin"
  rm -rf "$work"
}

start_ferretdb() {
  if port_open "$mongo_port"; then
    log "MongoDB-compatible server already answers on 127.0.0.1:$mongo_port"
    return 0
  fi
  started+=(ferretdb)
  build_ferretdb
  mkdir -p "$state/ferretdb/data" "$state/log" "$state/run"
  log "starting FerretDB on 127.0.0.1:$mongo_port (data in $state/ferretdb/data)"
  nohup "$ferretdb_bin" \
    --handler=sqlite \
    --sqlite-url="file:$state/ferretdb/data/" \
    --state-dir="$state/ferretdb" \
    --listen-addr="127.0.0.1:$mongo_port" \
    --debug-addr="${FERRETDB_DEBUG_ADDR:--}" \
    --telemetry=disable \
    --log-level=warn \
    >"$state/log/ferretdb.log" 2>&1 &
  echo $! >"$state/run/ferretdb.pid"
  wait_for_port "$mongo_port" FerretDB "$state/log/ferretdb.log"
}

start_redis() {
  if port_open "$redis_port"; then
    log "Redis already answers on 127.0.0.1:$redis_port"
    return 0
  fi
  started+=(redis)
  install_redis
  mkdir -p "$state/redis" "$state/log" "$state/run"
  port_open "$redis_port" && { log "Redis already answers on 127.0.0.1:$redis_port"; return 0; }
  log "starting Redis on 127.0.0.1:$redis_port (AOF in $state/redis)"
  # appendfsync always: the relay clears an event from MongoDB once XADD
  # answers, so an answered XADD must already be on disk.
  redis-server --bind 127.0.0.1 --port "$redis_port" --dir "$state/redis" \
    --appendonly yes --appendfsync always --save "" \
    --daemonize yes --pidfile "$state/run/redis.pid" \
    --logfile "$state/log/redis.log"
  wait_for_port "$redis_port" Redis "$state/log/redis.log"
  ours_alive redis || { log "Redis did not stay up; see $state/log/redis.log"; return 1; }
}

# Whether the pidfile of NAME names a live process of ours (a stale pidfile's
# number may have been reused by another program).
ours_alive() {
  local pidfile="$state/run/$1.pid" pid
  [ -f "$pidfile" ] || return 1
  pid=$(cat "$pidfile")
  [ -r "/proc/$pid/cmdline" ] && tr '\0' ' ' <"/proc/$pid/cmdline" | grep -q "${2:-$1}"
}

stop_one() {
  local name=$1 pidfile="$state/run/$1.pid"
  [ -f "$pidfile" ] || return 0
  local pid
  pid=$(cat "$pidfile")
  if ours_alive "$name" "${2:-$name}"; then
    log "stopping $name (pid $pid)"
    kill "$pid"
    for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  fi
  rm -f "$pidfile"
}

started=()
case "${1:-up}" in
  up)
    start_redis
    start_ferretdb
    echo "${started[*]:-}"
    ;;
  down)
    shift
    for name in "${@:-ferretdb redis}"; do
      for n in $name; do
        case "$n" in
          redis) stop_one redis redis-server ;;
          *) stop_one "$n" ;;
        esac
      done
    done
    ;;
  ferretdb-bin)
    build_ferretdb >&2
    echo "$ferretdb_bin"
    ;;
  status)
    port_open "$mongo_port" && echo "mongodb: up on 127.0.0.1:$mongo_port" || echo "mongodb: down"
    port_open "$redis_port" && echo "redis: up on 127.0.0.1:$redis_port" || echo "redis: down"
    ;;
  *)
    echo "usage: $0 up|down|status|ferretdb-bin" >&2
    exit 2
    ;;
esac
