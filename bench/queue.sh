#!/usr/bin/env bash
# The execution queue through its RPCs, on SQLite and PostgreSQL: a release
# `trellis serve auth session execution` and the load client of
# services/execution/examples/queue_bench.rs, which reads every outcome and
# time back from the Execution server's own rows.
#   max       executions/s create -> lease -> complete, 4 producers, 4 workers
#   half      p50/p99 create -> lease at half that rate (workers poll 5 ms)
#   raw       the same shape in plain SQL on the same database (PostgreSQL:
#             FOR UPDATE SKIP LOCKED), in the same run: the ratio
#   fairness  10 executions behind another organization's 10 000
# Goals: PostgreSQL >= 0.5x the raw loop, SQLite >= 1 000/s, p99 create ->
# lease <= 20 ms at half load.
#
#   bash bench/queue.sh                    # EXECUTIONS=5000 SECONDS_AT_HALF=10
#   BACKENDS=sqlite bash bench/queue.sh
#   DATABASE_URL=postgres://postgres@127.0.0.1:5432/test (the default)
set -euo pipefail
cd "$(dirname "$0")/.."

EXECUTIONS=${EXECUTIONS:-5000}
SECONDS_AT_HALF=${SECONDS_AT_HALF:-10}
BACKENDS=${BACKENDS:-"sqlite postgres"}
DATABASE_URL=${DATABASE_URL:-postgres://postgres@127.0.0.1:5432/test}

cargo build --release --quiet --bin trellis
cargo build --release --quiet --example queue_bench -p trellis-execution
target=${CARGO_TARGET_DIR:-target}
bin=$target/release/trellis
client=$target/release/examples/queue_bench
work=${KEEP_DIR:-$(mktemp -d)}
server=
schema=
stop() {
  [ -n "$server" ] && kill "$server" 2>/dev/null && wait "$server" 2>/dev/null
  server=
  [ -n "$schema" ] && psql -q "$DATABASE_URL" -c "DROP SCHEMA $schema CASCADE" >/dev/null 2>&1
  schema=
  true
}
trap 'stop; [ -n "${KEEP_DIR:-}" ] || rm -rf "$work"' EXIT

for backend in $BACKENDS; do
  dir="$work/$backend"
  mkdir -p "$dir"
  flags=()
  if [ "$backend" = postgres ]; then
    schema="bench_queue_$RANDOM$RANDOM"
    psql -q "$DATABASE_URL" -c "CREATE SCHEMA $schema" >/dev/null
    url="$DATABASE_URL?options=-c%20search_path%3D$schema"
    flags=(--database-url "$url")
    auth_db=$url
    execution_db=$url
  else
    auth_db="sqlite://$dir/auth.db"
    execution_db="sqlite://$dir/execution.db"
  fi
  "$bin" migrate --data-dir "$dir" "${flags[@]}" > "$dir/migrate.log" 2>&1
  account=$("$bin" service-accounts create bench-worker --scope worker --data-dir "$dir" "${flags[@]}")
  client_id=$(echo "$account" | sed -E 's/.*"client_id": *"([^"]+)".*/\1/')
  client_secret=$(echo "$account" | sed -E 's/.*"client_secret": *"([^"]+)".*/\1/')
  port=$((20000 + RANDOM % 20000))
  "$bin" serve auth session execution --data-dir "$dir" "${flags[@]}" \
    --auth-addr "127.0.0.1:$port" --session-addr 127.0.0.1:0 \
    --execution-addr "127.0.0.1:$((port + 1))" --log "${LOG:-warn}" > "$dir/server.log" 2>&1 &
  server=$!
  for _ in $(seq 100); do grep -q "execution  listening" "$dir/server.log" && break; sleep 0.1; done
  echo "== $backend"
  "$client" "http://127.0.0.1:$port" "http://127.0.0.1:$((port + 1))" "$auth_db" "$execution_db" \
    "$client_id" "$client_secret" "$EXECUTIONS" "$SECONDS_AT_HALF"
  stop
done
