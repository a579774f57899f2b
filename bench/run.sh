#!/usr/bin/env bash
# Builds the server and the harness in release, then measures on SQLite and on a throwaway Postgres
# cluster (initdb/pg_ctl on a free port in a temp dir, as the postgres user when run as root), and
# writes the tables to bench/results-<engine>.md.
#
#   bash bench/run.sh                 # everything: 1000 organizations, 1M-event ledger, 10K subscribers
#   SECONDS_EACH=3 ORGS=200 LEDGER=100000 SUBSCRIBERS=2000 bash bench/run.sh   # quicker
set -euo pipefail
cd "$(dirname "$0")/.."

SECONDS_EACH=${SECONDS_EACH:-5}
ORGS=${ORGS:-1000}
LEDGER=${LEDGER:-1000000}
SUBSCRIBERS=${SUBSCRIBERS:-10000}
ENGINES=${ENGINES:-"sqlite postgres"}

cargo build --release -p tollgate -p tollgate-bench
ulimit -n "$(ulimit -Hn)" || true

work=$(mktemp -d /tmp/tollgate-bench.XXXXXX)
chmod 755 "$work"
cleanup() {
  if [ -n "${PGDATA_DIR:-}" ]; then $AS_PG "$PGBIN/pg_ctl" -D "$PGDATA_DIR" -m immediate stop >/dev/null 2>&1 || true; fi
  rm -rf "$work"
}
trap cleanup EXIT

run() {
  local engine=$1 url=$2
  echo "== $engine" >&2
  target/release/tollgate-bench --server target/release/tollgate --database-url "$url" --engine "$engine" \
    --seconds "$SECONDS_EACH" --orgs "$ORGS" --big-ledger "$LEDGER" --subscribers "$SUBSCRIBERS" \
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
