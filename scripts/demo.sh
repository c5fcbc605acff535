#!/usr/bin/env bash
# make demo: a live migration end to end through the playbooks, on this machine, in about a minute and a half.
#
# Creates two throw-away PostgreSQL clusters (source and destination) with the test harness, fills the source with
# pgbench data (database bank) and tables of the tricky kinds (database shop), builds and installs the collection into
# a temporary directory, starts a pgbench write load on the source, and runs `ansible-playbook
# pgdts.migration.full` against them, printing the status table while it waits. The cutover fences the source
# writers (the write load ends there), catches up, sets the sequences and compares every row by checksum. Everything
# is removed at the end, also when something fails, so the demo can run again at once.
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$PWD
PY=$REPO/.venv/bin/python
BIN=$(dirname "$PY")
PGBIN=$("$PY" -c 'from tests.harness.cluster import pg_bindir; print(pg_bindir())')
STATUS_EVERY=${PGDTS_DEMO_STATUS_EVERY:-8}       # seconds between two status tables
LOAD_SECONDS=${PGDTS_DEMO_LOAD_SECONDS:-90}      # upper bound of the write load (the fence usually ends it first)
SCALE=${PGDTS_DEMO_SCALE:-5}                      # pgbench scale: 100,000 accounts each

WORK=$(mktemp -d /tmp/pgdts-demo-XXXXXX)
chmod 755 "$WORK"
CLUSTERS=$WORK/clusters
PLAYBOOK_PID=
STATUS_PID=
LOAD_PID=

cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  set +e
  for pid in $PLAYBOOK_PID $STATUS_PID $LOAD_PID; do
    kill "$pid" 2>/dev/null && wait "$pid" 2>/dev/null
  done
  # workers of the demo task (their pid files live in the demo's worker directory)
  for pidfile in "$WORK"/workers/*/worker.pid; do
    [ -f "$pidfile" ] || continue
    pid=$(cat "$pidfile" 2>/dev/null)
    if [ -n "$pid" ] && grep -qs "$WORK" "/proc/$pid/cmdline"; then
      kill "$pid" 2>/dev/null
    fi
  done
  for cluster in src dst; do
    [ -d "$CLUSTERS/$cluster" ] && "$PY" -m tests.harness.cluster stop --dir "$CLUSTERS/$cluster" >/dev/null 2>&1
  done
  rm -rf "$WORK"
  if [ "$rc" -eq 0 ]; then
    echo "==> cleaned up: clusters stopped and removed, $WORK deleted"
  else
    echo "==> demo failed (exit $rc); cleaned up: clusters stopped and removed, $WORK deleted" >&2
  fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

say() { printf '==> %s\n' "$*"; }
indent() { sed 's/^./    &/'; }

say "pgdts demo: a live migration through the playbooks"

# -- 1. two throw-away clusters -------------------------------------------------------------------------------------
mkdir -p "$CLUSTERS"
chmod 755 "$CLUSTERS"
chown postgres "$CLUSTERS" 2>/dev/null || true
start_cluster() {
  "$PY" -m tests.harness.cluster start --name "$1" --base-dir "$CLUSTERS" |
    "$PY" -c 'import json, sys; print(json.load(sys.stdin)["port"])'
}
SRC_PORT=$(start_cluster src)
DST_PORT=$(start_cluster dst)
PASSWORD=$("$PY" -c 'from tests.harness.cluster import DEFAULT_PASSWORD; print(DEFAULT_PASSWORD)')
say "source 127.0.0.1:$SRC_PORT and destination 127.0.0.1:$DST_PORT (PostgreSQL $("$PGBIN/postgres" -V | awk '{print $3}'), throw-away clusters under $CLUSTERS)"

# -- 2. sample data --------------------------------------------------------------------------------------------------
export PGHOST=127.0.0.1 PGUSER=postgres PGPASSWORD=$PASSWORD    # for psql and pgbench only; ansible gets its own
"$PGBIN/psql" -p "$SRC_PORT" -d postgres -qc 'CREATE DATABASE bank'
"$PGBIN/pgbench" -p "$SRC_PORT" -i -s "$SCALE" -q bank >"$WORK/pgbench-init.log" 2>&1
"$PY" - "$CLUSTERS" "$SRC_PORT" <<'PY'
import sys
from tests.harness.cluster import PgCluster
from tests.harness.data import create_tricky_database
create_tricky_database(PgCluster(sys.argv[1], 'src', port=int(sys.argv[2])), 'shop')
PY
ROWS=$("$PGBIN/psql" -p "$SRC_PORT" -d bank -Atc 'SELECT count(*) FROM pgbench_accounts')
say "sample data: database bank (pgbench scale $SCALE, $ROWS accounts) and database shop (tables of the tricky kinds)"

# -- 3. the collection -----------------------------------------------------------------------------------------------
"$BIN/ansible-galaxy" collection build "$REPO" --output-path "$WORK/build" --force >/dev/null
"$BIN/ansible-galaxy" collection install "$WORK"/build/pgdts-migration-*.tar.gz -p "$WORK/collections" --force \
  >/dev/null 2>&1
say "collection pgdts.migration built and installed into $WORK/collections"

# -- 4. the inventory: one task, its worker on this machine ----------------------------------------------------------
cat >"$WORK/inventory.yml" <<YAML
all:
  children:
    migrations:
      hosts:
        demo_move:
          pgdts_source: {host: 127.0.0.1, port: $SRC_PORT, user: postgres, password: "{{ demo_password }}"}
          pgdts_destination: {host: 127.0.0.1, port: $DST_PORT, user: postgres, password: "{{ demo_password }}"}
          pgdts_databases: [bank, shop]
          pgdts_jobs: 2
          # pgbench_history has no primary key: REPLICA IDENTITY FULL (free for an insert-only table)
          pgdts_replica_identity: full
          pgdts_worker_dir: $WORK/workers
          pgdts_wait_sleep: 2
          pgdts_sync_hold: 10
          pgdts_prepare_restart_method: pg_ctl
          pgdts_prepare_pg_ctl_log: $CLUSTERS/src/server.log
YAML
# the password as a vault-style variable in a 0600 vars file, never on a command line
install -m 600 /dev/null "$WORK/secrets.yml"
printf 'demo_password: "%s"\n' "$PASSWORD" >"$WORK/secrets.yml"
unset PGPASSWORD

export ANSIBLE_COLLECTIONS_PATH=$WORK/collections ANSIBLE_NOCOLOR=1 ANSIBLE_LOCALHOST_WARNING=False \
  ANSIBLE_RETRY_FILES_ENABLED=False ANSIBLE_DEPRECATION_WARNINGS=False ANSIBLE_DISPLAY_SKIPPED_HOSTS=False
playbook() {
  "$BIN/ansible-playbook" -i "$WORK/inventory.yml" -e "@$WORK/secrets.yml" "$@"
}

# -- 5. a write load on the source -----------------------------------------------------------------------------------
PGPASSWORD=$PASSWORD "$PGBIN/pgbench" -p "$SRC_PORT" -n -c 4 -j 2 -T "$LOAD_SECONDS" -R 150 bank \
  >"$WORK/pgbench.log" 2>&1 &
LOAD_PID=$!
say "write load: pgbench, 4 clients, 150 transactions/s, on database bank (until the cutover fences it)"

# -- 6. the full playbook, with the status table while it runs -------------------------------------------------------
say "ansible-playbook -i inventory.yml pgdts.migration.full"
started=$(date +%s)
PYTHONUNBUFFERED=1 playbook pgdts.migration.full -e pgdts_report_file="$WORK/summary.txt" >"$WORK/full.log" 2>&1 &
PLAYBOOK_PID=$!
shown=0
# the table the playbook itself printed in stage 5/7, before the cutover
progress_table() {
  awk '/^TASK \[Print the progress of every task\]/ {f = 1; next} f && /^TASK \[/ {exit} f' "$WORK/full.log" |
    sed -nE 's/^ +"(.*)",?$/\1/p' | sed 's/^/            /'
}
show_stages() {
  local lines
  lines=$(grep -E '^TASK \[\([0-9]+/[0-9]+\)' "$WORK/full.log" 2>/dev/null | sed -E 's/^TASK \[(.*)\] \**$/\1/') || true
  if [ -n "$lines" ]; then
    echo "$lines" | tail -n +$((shown + 1)) | while IFS= read -r line; do
      case $line in
        '(6/7)'*) progress_table ;;
      esac
      printf '    %4ss  %s\n' "$(($(date +%s) - started))" "$line"
    done
    shown=$(echo "$lines" | wc -l)
  fi
}
last_status=0
STATUS_PID=
while kill -0 "$PLAYBOOK_PID" 2>/dev/null; do
  sleep 1
  show_stages
  now=$(date +%s)
  # a status run that ended: print its table
  if [ -n "$STATUS_PID" ] && ! kill -0 "$STATUS_PID" 2>/dev/null; then
    if wait "$STATUS_PID" && ! grep -q '(5/7)' "$WORK/full.log"; then    # not when the cutover overtook it
      printf '    %4ss  status (ansible-playbook pgdts.migration.status):\n' "$((now - started))"
      head -n 2 "$WORK/status.txt" | sed 's/^/            /'
    fi
    STATUS_PID=
    last_status=$now
  fi
  # the next one, while the task copies or syncs (the playbook prints its own table before the cutover)
  if [ -z "$STATUS_PID" ] && [ $((now - last_status)) -ge "$STATUS_EVERY" ] \
     && grep -q 'Start or resume the migration task' "$WORK/full.log" && ! grep -q '(5/7)' "$WORK/full.log"; then
    playbook pgdts.migration.status -e pgdts_report_file="$WORK/status.txt" >"$WORK/status.log" 2>&1 &
    STATUS_PID=$!
  fi
done
if [ -n "$STATUS_PID" ]; then
  wait "$STATUS_PID" || true
  STATUS_PID=
fi
set +e
wait "$PLAYBOOK_PID"
rc=$?
set -e
PLAYBOOK_PID=
show_stages
say "full playbook done in $(($(date +%s) - started)) s (exit code $rc); the summary it printed:"
if [ -f "$WORK/summary.txt" ]; then
  indent <"$WORK/summary.txt"
fi
if [ "$rc" -ne 0 ]; then
  echo "---- last lines of the playbook output ----" >&2
  tail -n 60 "$WORK/full.log" >&2
  exit "$rc"
fi

# -- 7. what happened to the write load, checked independently -------------------------------------------------------
wait "$LOAD_PID" 2>/dev/null || true
LOAD_PID=
export PGPASSWORD=$PASSWORD
fingerprint() {
  "$PGBIN/psql" -p "$1" -d bank -Atc "SELECT (SELECT count(*) FROM pgbench_history) || ' pgbench transactions, balance sum '
    || (SELECT sum(abalance) FROM pgbench_accounts)"
}
src_fp=$(fingerprint "$SRC_PORT")
dst_fp=$(fingerprint "$DST_PORT")
say "independent check of bank: source $src_fp; destination $dst_fp"
[ "$src_fp" = "$dst_fp" ] || { echo "source and destination differ" >&2; exit 1; }
ro=$("$PGBIN/psql" -p "$SRC_PORT" -d bank -Atc 'SHOW default_transaction_read_only')
say "the source stays fenced (default_transaction_read_only = $ro): the applications move to the destination"
unset PGPASSWORD
