#!/usr/bin/env bash
# Builds the server and the harness in release, then measures on SQLite and on a throwaway Postgres
# cluster (initdb/pg_ctl on a free port in a temp dir, as the postgres user when run as root), and
# writes the tables to bench/results-<engine>.md.
#
#   bash bench/run.sh     # everything: 1000 organizations, a 1M-event ledger, 50K tenant subscribers
#                         # over 1000 organizations under 1000 recordings/s, the platform page again
#                         # at 100K organizations, 10K platform subscribers with the machine floor
#   QUICK=1 bash bench/run.sh                     # quicker (about 2 minutes an engine): 200
#                         # organizations, 100K ledger, 5K subscribers over 200 organizations at
#                         # 200/s, the page at 10K organizations, no platform fan-out
#   ENGINES=sqlite QUICK=1 bash bench/run.sh      # one engine
#   ONLY="SQL floor" ENGINES=postgres bash bench/run.sh   # only the measurements whose name has it
#
# Every setting below can be overridden from the environment.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ -n "${QUICK:-}" ]; then
  SECONDS_EACH=${SECONDS_EACH:-3}
  ORGS=${ORGS:-200}
  LEDGER=${LEDGER:-100000}
  SUBSCRIBERS=${SUBSCRIBERS:-5000}
  FANOUT_ORGS=${FANOUT_ORGS:-200}
  FANOUT_RATE=${FANOUT_RATE:-200}
  FANOUT_SECONDS=${FANOUT_SECONDS:-10}
  PAGE_SCALE=${PAGE_SCALE:-10000}
  PLATFORM_SUBSCRIBERS=${PLATFORM_SUBSCRIBERS:-0}
fi
SECONDS_EACH=${SECONDS_EACH:-5}
ORGS=${ORGS:-1000}
LEDGER=${LEDGER:-1000000}
SUBSCRIBERS=${SUBSCRIBERS:-50000}
FANOUT_ORGS=${FANOUT_ORGS:-1000}
FANOUT_RATE=${FANOUT_RATE:-1000}
FANOUT_SECONDS=${FANOUT_SECONDS:-20}
PAGE_SCALE=${PAGE_SCALE:-100000}
PLATFORM_SUBSCRIBERS=${PLATFORM_SUBSCRIBERS:-10000}
ENGINES=${ENGINES:-"sqlite postgres"}
ONLY_ARGS=()
if [ -n "${ONLY:-}" ]; then ONLY_ARGS=(--only "$ONLY"); fi

cargo build --release -p tollgate -p tollgate-bench
# The harness raises its own limit (and the server's, which it spawns) to 1<<20 as root.
ulimit -n "$(ulimit -Hn)" || true

work=$(mktemp -d /tmp/tollgate-bench.XXXXXX)
chmod 755 "$work"
# The binaries this checkout just built, copied aside: a target directory shared with other
# checkouts (CARGO_TARGET_DIR) may be rebuilt from another one during the run.
release="${CARGO_TARGET_DIR:-target}/release"
cp "$release/tollgate" "$release/tollgate-bench" "$work/"
echo "server and harness from $(git rev-parse --short HEAD)$(git diff --quiet HEAD -- . || echo ' (with uncommitted changes)')" >&2
cleanup() {
  if [ -n "${PGDATA_DIR:-}" ]; then $AS_PG "$PGBIN/pg_ctl" -D "$PGDATA_DIR" -m immediate stop >/dev/null 2>&1 || true; fi
  rm -rf "$work"
}
trap cleanup EXIT

run() {
  local engine=$1 url=$2
  echo "== $engine" >&2
  "$work/tollgate-bench" --server "$work/tollgate" --database-url "$url" --engine "$engine" \
    --seconds "$SECONDS_EACH" --orgs "$ORGS" --big-ledger "$LEDGER" \
    --subscribers "$SUBSCRIBERS" --fanout-orgs "$FANOUT_ORGS" --fanout-rate "$FANOUT_RATE" \
    --fanout-seconds "$FANOUT_SECONDS" --platform-subscribers "$PLATFORM_SUBSCRIBERS" \
    --page-scale "$PAGE_SCALE" ${ONLY_ARGS[@]+"${ONLY_ARGS[@]}"} \
    | tee "bench/results-$engine.md"
}

for engine in $ENGINES; do
  case $engine in
    sqlite)
      run sqlite "sqlite://$work/bench.db?mode=rwc"
      ;;
    postgres)
      PGBIN=$(dirname "$(ls -d /usr/lib/postgresql/*/bin/initdb | sort -V | tail -1)")
      AS_PG=""
      if [ "$(id -u)" = 0 ]; then AS_PG="runuser -u postgres --"; fi
      PGDATA_DIR="$work/pg"
      mkdir -p "$PGDATA_DIR" && [ -z "$AS_PG" ] || chown postgres "$work" "$PGDATA_DIR"
      $AS_PG "$PGBIN/initdb" -D "$PGDATA_DIR" -U postgres --auth=trust -E UTF8 --no-sync >/dev/null
      port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
      $AS_PG "$PGBIN/pg_ctl" -D "$PGDATA_DIR" -l "$work/pg.log" -w \
        -o "-p $port -c listen_addresses=127.0.0.1 -c unix_socket_directories=$work -c max_connections=200 -c shared_buffers=512MB -c synchronous_commit=on" start >/dev/null
      "$PGBIN/psql" -h 127.0.0.1 -p "$port" -U postgres -q \
        -c "CREATE ROLE tollgate LOGIN NOSUPERUSER NOBYPASSRLS" -c "CREATE DATABASE tollgate OWNER tollgate"
      run postgres "postgres://tollgate@127.0.0.1:$port/tollgate"
      ;;
  esac
done
