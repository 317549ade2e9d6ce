#!/usr/bin/env bash
# Installs and starts the servers the books services need on a machine without
# Docker: FerretDB v1.24.2 (MongoDB wire protocol) on a PostgreSQL cluster of
# our own, and Redis 7; for tests and benchmarks, also a Redis Cluster of 3
# masters and 3 replicas.
#
#   scripts/servers.sh up            install what is missing, start what is not
#                                    running; prints the names it started
#   scripts/servers.sh down [NAME..] stop the servers this script started (all,
#                                    or only those named: ferretdb, postgresql,
#                                    redis, redis-cluster)
#   scripts/servers.sh status        say what answers where
#   scripts/servers.sh ferretdb-bin  build FerretDB if needed (also when a
#                                    server already answers) and print its path
#   scripts/servers.sh cluster-up    install Redis if missing, start the six
#                                    Redis Cluster nodes that are not running,
#                                    create the cluster if it is not, and wait
#                                    until it serves every slot with a replica
#                                    per master; prints `redis-cluster` if it
#                                    started a node
#   scripts/servers.sh cluster-url   print the URL the services take for it
#                                    (redis+cluster://, three seed nodes)
#   scripts/servers.sh cluster-node-start PORT
#                                    start that one node again, as cluster-up
#                                    does (after a test killed it), if it is
#                                    not running; it rejoins on its own
#
# Idempotent: a second `up` reuses the built FerretDB binary, the PostgreSQL
# cluster and the running servers; a second `cluster-up` reuses the running
# nodes, and after a restart the nodes come back from their nodes-PORT.conf
# and rejoin, without a new create. Everything lives under .local/ in the
# repository (gitignored), except PostgreSQL's data when the `postgres` user
# cannot reach .local/ (see pg_home).
#
# Ports: FERRETDB_PORT (27017), REDIS_PORT (6379), POSTGRES_PORT (5433; when
# taken by another program, the next free one, recorded in .local/run/),
# REDIS_CLUSTER_PORT (7000; the nodes listen on it and the five after it).
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
state="${BOOKS_STATE_DIR:-$root/.local}"
ferretdb_version="v1.24.2"
# Built with our patches, scripts/ferretdb-*.patch (see build_ferretdb),
# hence its own name.
ferretdb_patches=("$root"/scripts/ferretdb-*.patch)
ferretdb_bin="$state/bin/ferretdb-$ferretdb_version-atomic"
mongo_port="${FERRETDB_PORT:-27017}"
redis_port="${REDIS_PORT:-6379}"
pg_port="${POSTGRES_PORT:-5433}"
pg_database=ferretdb
cluster_base="${REDIS_CLUSTER_PORT:-7000}"
mapfile -t cluster_ports < <(seq "$cluster_base" $((cluster_base + 5)))

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
# module with that file written and our patches applied, in name order (each
# says why at its top): ferretdb-atomic-writes.patch makes a conditional
# write to one document atomic, as on MongoDB; ferretdb-id-index.patch lets
# PostgreSQL serve a lookup by `_id` from its index; and
# ferretdb-unavailable-backend.patch answers a PostgreSQL outage with a
# transient error, as MongoDB answers an unreachable node. The binary is rebuilt when a patch changes (their hash
# is kept beside it).
build_ferretdb() {
  local patch_sum
  patch_sum=$(cat "${ferretdb_patches[@]}" | sha256sum | cut -d' ' -f1)
  if [ -x "$ferretdb_bin" ] && [ "$(cat "$ferretdb_bin.patch-sha256" 2>/dev/null)" = "$patch_sum" ]; then
    return 0
  fi
  command -v go >/dev/null || { log "go is needed to build FerretDB"; return 1; }
  log "building FerretDB $ferretdb_version with our patches (once; later runs reuse $ferretdb_bin)"
  local src
  src=$(GOFLAGS=-mod=mod go mod download -json "github.com/FerretDB/FerretDB@$ferretdb_version" |
    sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$/\1/p')
  [ -d "$src" ] || { log "could not download the FerretDB module"; return 1; }
  mkdir -p "$state/build" "$state/bin"
  local work
  work=$(mktemp -d "$state/build/ferretdb.XXXXXX")
  cp -r "$src/." "$work/"
  chmod -R u+w "$work"
  echo "$ferretdb_version" >"$work/build/version/version.txt"
  local patch_file
  for patch_file in "${ferretdb_patches[@]}"; do
    if ! (cd "$work" && patch -p1 --forward --batch --silent <"$patch_file") >&2; then
      log "ERROR: $patch_file no longer applies to FerretDB $ferretdb_version; not building an unpatched server"
      rm -rf "$work"
      return 1
    fi
  done
  # Go fetches the toolchain the module names (go1.24.x) if the local one
  # cannot build it; both come through the Go module proxy.
  (cd "$work" && GOTOOLCHAIN="${GOTOOLCHAIN:-auto}" CGO_ENABLED=0 \
    go build -trimpath -o "$ferretdb_bin.tmp.$$" ./cmd/ferretdb)
  mv "$ferretdb_bin.tmp.$$" "$ferretdb_bin"
  echo "$patch_sum" >"$ferretdb_bin.patch-sha256"
  rm -rf "$work"
}

# PostgreSQL refuses to run as root: as root, its programs run as the
# `postgres` user the Debian package creates; otherwise as the current user.
as_pg() {
  if [ "$(id -u)" -eq 0 ]; then
    id postgres >/dev/null 2>&1 || { log "no postgres user to run PostgreSQL as (root may not)"; return 1; }
    runuser -u postgres -- "$@"
  else
    "$@"
  fi
}

# The folder of our cluster: .local/postgresql when the user PostgreSQL runs
# as can reach it, else one under /var/tmp named after a hash of .local's path
# (so each checkout keeps its own). Holds data/ (the cluster), socket/ and
# postgresql.log.
pg_home() {
  mkdir -p "$state"
  if as_pg test -x "$state" 2>/dev/null; then
    echo "$state/postgresql"
  else
    echo "/var/tmp/books-postgresql-$(printf '%s' "$state" | sha256sum | cut -c1-12)"
  fi
}

# The bin folder of the newest PostgreSQL installed (or of the version that
# initialised our cluster, if it is still installed).
pg_bindir() {
  local want="" dir
  [ -f "$(pg_home)/data/PG_VERSION" ] && want=$(cat "$(pg_home)/data/PG_VERSION")
  if [ -n "$want" ] && [ -x "/usr/lib/postgresql/$want/bin/postgres" ]; then
    echo "/usr/lib/postgresql/$want/bin"
    return 0
  fi
  dir=$(printf '%s\n' /usr/lib/postgresql/*/bin | sort -V | tail -n 1)
  [ -x "$dir/postgres" ] || return 1
  echo "$dir"
}

install_postgresql() {
  pg_bindir >/dev/null && return 0
  command -v apt-get >/dev/null || { log "PostgreSQL missing and no apt-get: install PostgreSQL 15+"; return 1; }
  log "installing postgresql from Debian packages"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends postgresql >/dev/null
  # The package may start Debian's own cluster (not ours to stop later);
  # stop and disable it: ours runs below, from a folder of ours.
  if command -v systemctl >/dev/null && systemctl is-system-running >/dev/null 2>&1; then
    systemctl disable --now postgresql >/dev/null 2>&1 || true
  else
    service postgresql stop >/dev/null 2>&1 || true
  fi
  pg_bindir >/dev/null || { log "PostgreSQL installed, but no /usr/lib/postgresql/*/bin/postgres"; return 1; }
}

# Whether our cluster runs (a postmaster.pid naming a live postmaster of it).
pg_running() {
  local home bindir
  home=$(pg_home)
  [ -f "$home/data/postmaster.pid" ] || return 1
  bindir=$(pg_bindir) || return 1
  as_pg "$bindir/pg_ctl" -D "$home/data" status >/dev/null 2>&1
}

# The port our running cluster listens on (4th line of postmaster.pid).
pg_running_port() {
  sed -n 4p "$(pg_home)/data/postmaster.pid"
}

start_postgresql() {
  install_postgresql
  local home bindir
  home=$(pg_home)
  mkdir -p "$state/run"
  if pg_running; then
    pg_port=$(pg_running_port)
    echo "$pg_port" >"$state/run/postgresql.port"
    log "PostgreSQL (ours) already runs on 127.0.0.1:$pg_port (data in $home/data)"
    return 0
  fi
  bindir=$(pg_bindir)
  mkdir -p "$home"
  chmod 700 "$home"
  [ "$(id -u)" -ne 0 ] || chown postgres:postgres "$home"
  if [ ! -f "$home/data/PG_VERSION" ]; then
    log "creating a PostgreSQL cluster in $home/data"
    # In a side folder first, so that an interrupted initdb is redone.
    as_pg rm -rf "$home/data.init"
    as_pg "$bindir/initdb" -D "$home/data.init" -U postgres -A trust -E UTF8 --locale=C >"$state/run/initdb.log" 2>&1 ||
      { log "initdb failed:"; cat "$state/run/initdb.log" >&2; return 1; }
    as_pg mv "$home/data.init" "$home/data"
  fi
  as_pg mkdir -p "$home/socket"
  # POSTGRES_PORT if free, else the next free port.
  local port=$pg_port
  while port_open "$port"; do
    port=$((port + 1))
    [ "$port" -lt $((pg_port + 100)) ] || { log "no free port for PostgreSQL from $pg_port"; return 1; }
  done
  [ "$port" = "$pg_port" ] || log "port $pg_port is taken; PostgreSQL gets $port"
  pg_port=$port
  started+=(postgresql)
  log "starting PostgreSQL on 127.0.0.1:$pg_port (data in $home/data)"
  # fsync and synchronous_commit on (the defaults, said out loud): an
  # acknowledged write is on disk, as with MongoDB's journal.
  as_pg "$bindir/pg_ctl" -D "$home/data" -l "$home/postgresql.log" -w -t 60 -s \
    -o "-p $pg_port -c listen_addresses=127.0.0.1 -c unix_socket_directories=$home/socket -c fsync=on -c synchronous_commit=on" \
    start >&2 || { log "PostgreSQL did not start; last lines of $home/postgresql.log:"; tail -n 30 "$home/postgresql.log" >&2; return 1; }
  echo "$pg_port" >"$state/run/postgresql.port"
}

# The database FerretDB keeps its collections in.
pg_create_database() {
  local home bindir
  home=$(pg_home)
  bindir=$(pg_bindir)
  if [ "$(as_pg "$bindir/psql" -h "$home/socket" -p "$pg_port" -U postgres -d postgres -tAXc \
    "SELECT 1 FROM pg_database WHERE datname = '$pg_database'")" != 1 ]; then
    as_pg "$bindir/createdb" -h "$home/socket" -p "$pg_port" -U postgres "$pg_database"
  fi
}

stop_postgresql() {
  pg_running || return 0
  local home
  home=$(pg_home)
  log "stopping PostgreSQL (data in $home/data)"
  as_pg "$(pg_bindir)/pg_ctl" -D "$home/data" -m fast -w -s stop >&2 || true
  rm -f "$state/run/postgresql.port"
}

start_ferretdb() {
  if port_open "$mongo_port"; then
    log "MongoDB-compatible server already answers on 127.0.0.1:$mongo_port"
    return 0
  fi
  build_ferretdb
  start_postgresql
  pg_create_database
  started+=(ferretdb)
  mkdir -p "$state/ferretdb" "$state/log" "$state/run"
  log "starting FerretDB on 127.0.0.1:$mongo_port (PostgreSQL database $pg_database on 127.0.0.1:$pg_port)"
  nohup "$ferretdb_bin" \
    --handler=postgresql \
    --postgresql-url="postgres://postgres@127.0.0.1:$pg_port/$pg_database" \
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

# --- Redis Cluster (tests and benchmarks) ---------------------------------
# Six nodes on 127.0.0.1, ports cluster_ports; node PORT keeps its AOF and
# nodes-PORT.conf (its identity, slots and peers) in .local/redis-cluster/PORT,
# its pidfile is .local/run/redis-cluster-PORT.pid, its log
# .local/log/redis-cluster-PORT.log.

# What a node's process looks like (Redis sets its title so).
cluster_node_pattern() { printf 'redis-server 127.0.0.1:%s \\[cluster\\]' "$1"; }

cluster_node_alive() { ours_alive "redis-cluster-$1" "$(cluster_node_pattern "$1")"; }

# redis-cli on one node, bounded in time (a node stopped with SIGSTOP must
# not hang us), without Redis's \r line ends.
cluster_cli() {
  local port=$1
  shift
  timeout 5 redis-cli -h 127.0.0.1 -p "$port" "$@" 2>/dev/null | tr -d '\r'
}

# Starts the node on PORT unless ours already runs there; sets
# cluster_node_started=1 when it starts one. A node with a nodes-PORT.conf
# comes back with the identity, slots and peers recorded in it.
#
# Node timeout 2000 ms: a master silent that long is suspected, the others
# agree it failed within a gossip round or two, and its replica is elected
# after 0.5-1 s more, so a killed master is replaced in 3-4 s (3.3-4.1 s
# measured with kill -9 on a 2-core machine); a shorter timeout risks
# failovers when a busy machine (2 cores, compiling) stalls a node. Replica validity factor 0: a replica may always take over,
# however long it last heard from its master; tests kill a master and
# expect its replica to take over even right after a burst of writes.
# Diskless sync delay 0: a master sends a new or returning replica its data
# at once, instead of waiting 5 s (the default) for more replicas to share
# the transfer; each master here has one, and the wait made a create, or a
# killed node's rejoin, take 5 s longer. AOF fsynced at every write, as the
# single Redis (see start_redis).
start_cluster_node() {
  local port=$1 name="redis-cluster-$1"
  cluster_node_alive "$port" && return 0
  if port_open "$port"; then
    log "another program answers on 127.0.0.1:$port; cannot start Redis Cluster node $port there"
    return 1
  fi
  install_redis
  mkdir -p "$state/redis-cluster/$port" "$state/log" "$state/run"
  log "starting Redis Cluster node on 127.0.0.1:$port (AOF and nodes-$port.conf in $state/redis-cluster/$port)"
  cluster_node_started=1
  redis-server --port "$port" --bind 127.0.0.1 \
    --cluster-enabled yes --cluster-config-file "nodes-$port.conf" \
    --cluster-node-timeout 2000 --cluster-replica-validity-factor 0 \
    --repl-diskless-sync-delay 0 \
    --dir "$state/redis-cluster/$port" \
    --appendonly yes --appendfsync always --save "" \
    --daemonize yes --pidfile "$state/run/$name.pid" \
    --logfile "$state/log/$name.log"
  wait_for_port "$port" "Redis Cluster node $port" "$state/log/$name.log"
  # The pidfile is written just after the port opens.
  for _ in $(seq 1 50); do
    cluster_node_alive "$port" && return 0
    sleep 0.1
  done
  log "Redis Cluster node $port did not stay up; see $state/log/$name.log"
  return 1
}

# Whether PID runs (an exited daemon stays a zombie until init reaps it,
# which here takes a second or more).
pid_running() {
  kill -0 "$1" 2>/dev/null && ! grep -q '^[0-9]* (.*) Z' "/proc/$1/stat" 2>/dev/null
}

# Stops the nodes of ours on PORT.. (SIGTERM to all, then waits for all: one
# by one, a stopped master's replica could be promoted meanwhile).
stop_cluster_nodes() {
  local port pids=() ports=()
  for port in "$@"; do
    if cluster_node_alive "$port"; then
      pids+=("$(cat "$state/run/redis-cluster-$port.pid")")
      ports+=("$port")
    fi
  done
  if [ "${#pids[@]}" -gt 0 ]; then
    log "stopping Redis Cluster nodes ${ports[*]} (pids ${pids[*]})"
    kill "${pids[@]}" 2>/dev/null || true
    local pid deadline=$((SECONDS + 15))
    for pid in "${pids[@]}"; do
      while pid_running "$pid" && [ "$SECONDS" -lt "$deadline" ]; do sleep 0.1; done
      if pid_running "$pid"; then
        log "Redis Cluster node pid $pid did not stop on SIGTERM; killing it"
        kill -9 "$pid" 2>/dev/null || true
      fi
    done
  fi
  for port in "$@"; do rm -f "$state/run/redis-cluster-$port.pid"; done
}

# What the running nodes hold: "formed" when each knows exactly the six of
# us (by node id) and all 16384 slots are assigned, "blank" when none knows
# another node, holds a slot or holds a key (never created, or wiped), and
# "stale" otherwise (say one node lost its nodes-PORT.conf, or a create was
# interrupted).
cluster_layout() {
  local port info ids="" known blank=0 formed=0
  for port in "${cluster_ports[@]}"; do
    ids+="$(cluster_cli "$port" cluster myid)"$'\n'
  done
  ids=$(printf '%s' "$ids" | sort)
  for port in "${cluster_ports[@]}"; do
    info=$(cluster_cli "$port" cluster info) || { echo stale; return 0; }
    if grep -qx 'cluster_known_nodes:1' <<<"$info" && grep -qx 'cluster_slots_assigned:0' <<<"$info" &&
      [ "$(cluster_cli "$port" dbsize)" = 0 ]; then
      blank=$((blank + 1))
    elif grep -qx 'cluster_known_nodes:6' <<<"$info" && grep -qx 'cluster_slots_assigned:16384' <<<"$info"; then
      known=$(cluster_cli "$port" cluster nodes | cut -d' ' -f1 | sort)
      [ "$known" = "$ids" ] && formed=$((formed + 1))
    fi
  done
  if [ "$blank" -eq 6 ]; then
    echo blank
  elif [ "$formed" -eq 6 ]; then
    echo formed
  else
    echo stale
  fi
}

# Whether the cluster is usable: every node says cluster_state:ok, all 16384
# slots ok, six known nodes, three masters serving slots, and sees no node
# failing; each master has its one replica online, each replica its link
# to its master up.
cluster_ready() {
  local port info repl masters=0
  for port in "${cluster_ports[@]}"; do
    info=$(cluster_cli "$port" cluster info) || return 1
    grep -qx 'cluster_state:ok' <<<"$info" || return 1
    grep -qx 'cluster_slots_ok:16384' <<<"$info" || return 1
    grep -qx 'cluster_known_nodes:6' <<<"$info" || return 1
    grep -qx 'cluster_size:3' <<<"$info" || return 1
    cluster_cli "$port" cluster nodes | awk '$3 ~ /fail|handshake|noaddr/ { bad = 1 } END { exit bad }' || return 1
    repl=$(cluster_cli "$port" info replication) || return 1
    if grep -qx 'role:master' <<<"$repl"; then
      grep -qx 'connected_slaves:1' <<<"$repl" || return 1
      grep -q '^slave0:.*state=online' <<<"$repl" || return 1
      masters=$((masters + 1))
    else
      grep -qx 'master_link_status:up' <<<"$repl" || return 1
    fi
  done
  [ "$masters" -eq 3 ]
}

# Polls cluster_ready for up to SECONDS.
cluster_wait_ready() {
  local deadline=$((SECONDS + $1))
  until cluster_ready; do
    [ "$SECONDS" -lt "$deadline" ] || return 1
    sleep 0.2
  done
}

cluster_create() {
  local nodes=() port t0 log_file="$state/log/redis-cluster-create.log"
  for port in "${cluster_ports[@]}"; do nodes+=("127.0.0.1:$port"); done
  log "creating the Redis Cluster (3 masters, 3 replicas) on ${nodes[*]}"
  t0=$(date +%s%N)
  if ! redis-cli --cluster create "${nodes[@]}" --cluster-replicas 1 --cluster-yes >"$log_file" 2>&1; then
    log "redis-cli --cluster create failed; last lines of $log_file:"
    tail -n 30 "$log_file" >&2
    return 1
  fi
  if ! cluster_wait_ready 30; then
    log "the Redis Cluster was created but did not become usable within 30 s; see $log_file and $state/log/redis-cluster-*.log"
    return 1
  fi
  log "Redis Cluster created and usable in $((($(date +%s%N) - t0) / 1000000)) ms"
}

cluster_wipe() {
  stop_cluster_nodes "${cluster_ports[@]}"
  rm -rf "$state/redis-cluster"
  local port
  for port in "${cluster_ports[@]}"; do start_cluster_node "$port"; done
}

cluster_up() {
  local port layout
  install_redis
  cluster_node_started=0
  for port in "${cluster_ports[@]}"; do start_cluster_node "$port"; done
  layout=$(cluster_layout)
  case "$layout" in
    blank) cluster_create ;;
    stale)
      log "the Redis Cluster nodes' state in $state/redis-cluster is inconsistent (a node lost its nodes.conf, or a create was interrupted); wiping it and creating the cluster afresh"
      cluster_wipe
      cluster_create
      ;;
    formed)
      if cluster_wait_ready 30; then
        [ "$cluster_node_started" -eq 0 ] || log "Redis Cluster usable again (nodes rejoined from their nodes.conf)"
      else
        log "the Redis Cluster nodes know each other but the cluster did not become usable within 30 s; wiping $state/redis-cluster and creating it afresh"
        cluster_wipe
        cluster_create
      fi
      ;;
  esac
  [ "$cluster_node_started" -eq 0 ] || started+=(redis-cluster)
}

cluster_url() {
  echo "redis+cluster://127.0.0.1:${cluster_ports[0]},127.0.0.1:${cluster_ports[1]},127.0.0.1:${cluster_ports[2]}"
}

cluster_status() {
  local port alive=0 answering="" masters
  for port in "${cluster_ports[@]}"; do
    cluster_node_alive "$port" || continue
    alive=$((alive + 1))
    [ -n "$answering" ] || answering=$port
  done
  if [ "$alive" -eq 0 ]; then
    echo "redis-cluster: down"
    return 0
  fi
  masters=$(cluster_cli "$answering" cluster nodes |
    awk '$3 ~ /master/ && $3 !~ /fail/ && NF > 8 { sub(/@.*/, "", $2); sub(/.*:/, "", $2); print $2 }' | sort | tr '\n' ' ')
  echo "redis-cluster: $alive/6 nodes up on 127.0.0.1:${cluster_ports[0]}-${cluster_ports[5]}" \
    "($(cluster_cli "$answering" cluster info | grep '^cluster_state:' || echo 'cluster_state:?')," \
    "masters on ${masters% }; $(cluster_url))"
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
    names=" ${*:-ferretdb postgresql redis redis-cluster} "
    # FerretDB before the PostgreSQL it uses, whatever the order given.
    for n in ferretdb postgresql redis redis-cluster; do
      case "$names" in *" $n "*) ;; *) continue ;; esac
      case "$n" in
        redis) stop_one redis redis-server ;;
        redis-cluster) stop_cluster_nodes "${cluster_ports[@]}" ;;
        postgresql) stop_postgresql ;;
        *) stop_one "$n" ;;
      esac
    done
    ;;
  ferretdb-bin)
    build_ferretdb >&2
    echo "$ferretdb_bin"
    ;;
  status)
    port_open "$mongo_port" && echo "mongodb: up on 127.0.0.1:$mongo_port" || echo "mongodb: down"
    if pg_running; then
      echo "postgresql: up on 127.0.0.1:$(pg_running_port) (ours, data in $(pg_home)/data)"
    else
      echo "postgresql: down"
    fi
    port_open "$redis_port" && echo "redis: up on 127.0.0.1:$redis_port" || echo "redis: down"
    cluster_status
    ;;
  cluster-up)
    cluster_up
    echo "${started[*]:-}"
    ;;
  cluster-url)
    cluster_url
    ;;
  cluster-node-start)
    case " ${cluster_ports[*]} " in
      *" ${2:-} "*) start_cluster_node "$2" ;;
      *)
        echo "usage: $0 cluster-node-start PORT (one of ${cluster_ports[*]})" >&2
        exit 2
        ;;
    esac
    ;;
  *)
    echo "usage: $0 up|down [NAME..]|status|ferretdb-bin|cluster-up|cluster-url|cluster-node-start PORT" >&2
    exit 2
    ;;
esac
