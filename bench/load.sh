#!/usr/bin/env bash
# The whole order flow under N virtual users (crates/load, `trellis-load
# flow`) against a release `trellis up` on this machine: every user signs up
# once, then loops session -> three items with options -> PlaceOrder ->
# WatchOrder to CONFIRMED. Prints per-RPC and place -> confirmed
# percentiles, errors by code, and the server's resident memory once the
# users are connected and at its peak; writes JSON and an SVG plot.
#
#   bash bench/load.sh                                # 1000 users, one order each every 5 s, 60 s, SQLite
#   BACKEND=postgres bash bench/load.sh               # PostgreSQL + Redis (a fresh database on the local server)
#   TARGET=gateway bash bench/load.sh                 # every call through the gateway
#   OPEN_RATE=300 bash bench/load.sh                  # open loop: 300 flows/s whatever the answers
#   USERS=1000 THINK=2s DURATION=30s bash bench/load.sh
#   BACKEND=postgres SPLIT=1 bash bench/load.sh       # one `trellis serve` process per server:
#                                                     # resident memory of each
#
# Goals (exit 1 when not met): per-RPC p95 <= 50 ms, place -> confirmed p95
# <= 300 ms, 0 errors. Results: $OUT_DIR (target/load by default).
set -euo pipefail
cd "$(dirname "$0")/.."

USERS=${USERS:-1000}
THINK=${THINK:-5s}
DURATION=${DURATION:-60s}
BACKEND=${BACKEND:-embedded}
TARGET=${TARGET:-direct}
OPEN_RATE=${OPEN_RATE:-}
POSTGRES=${POSTGRES:-postgres://postgres@127.0.0.1:5432}
REDIS=${REDIS:-redis://127.0.0.1:6379/}
target=${CARGO_TARGET_DIR:-target}
OUT_DIR=${OUT_DIR:-$target/load}
mkdir -p "$OUT_DIR"

cargo build --release --quiet --bin trellis --bin trellis-load
work=$(mktemp -d)
server=
pids=()
db=
cleanup() {
  [ ${#pids[@]} -gt 0 ] && kill "${pids[@]}" 2>/dev/null
  wait 2>/dev/null
  if [ -n "$db" ]; then
    psql -q "$POSTGRES/postgres" -c "drop database if exists $db" 2>/dev/null
    redis-cli -u "$REDIS" --scan --pattern "trellis-load-$$:*" 2>/dev/null | xargs -r redis-cli -u "$REDIS" del > /dev/null 2>&1
  fi
  rm -rf "$work"
  return 0
}
trap cleanup EXIT

# Below the ephemeral range (32768+), so no outgoing connection holds one.
port=$((20000 + RANDOM % 12000))
storage=()
if [ "$BACKEND" = postgres ]; then
  db=trellis_load_$$
  psql -q "$POSTGRES/postgres" -c "drop database if exists $db" -c "create database $db"
  storage=(--database-url "$POSTGRES/$db" --redis-url "$REDIS" --redis-key-prefix "trellis-load-$$:")
fi
servers=(auth session cart order execution)
pids=()
if [ "${SPLIT:-0}" = 1 ]; then
  [ "$BACKEND" = postgres ] || { echo "SPLIT=1 needs BACKEND=postgres: the processes share one database" >&2; exit 2; }
  bin=$target/release/trellis
  setup_failed() { echo "SPLIT setup failed:" >&2; cat "$work/setup.log" >&2; exit 1; }
  "$bin" migrate "${storage[@]}" > "$work/setup.log" 2>&1 || setup_failed
  "$bin" keys rotate --signing-keys-dir "$work/keys" >> "$work/setup.log" 2>&1 || setup_failed
  account() { "$bin" service-accounts create --scope "$1" "$2" --database-url "$POSTGRES/$db" 2>> "$work/setup.log"; }
  field() { python3 -c "import json,sys; print(json.load(sys.stdin)['$1'])"; }
  service=$(account service trellis-servers) || setup_failed
  worker=$(account worker fulfillment) || setup_failed
  urls=(--auth-url "http://127.0.0.1:$port" --session-url "http://127.0.0.1:$((port + 1))"
    --cart-url "http://127.0.0.1:$((port + 2))" --order-url "http://127.0.0.1:$((port + 3))"
    --execution-url "http://127.0.0.1:$((port + 4))")
  for i in "${!servers[@]}"; do
    name=${servers[$i]}
    extra=()
    [ "$name" = order ] && extra=(--fulfillment-client-id "$(field client_id <<< "$worker")"
      --fulfillment-client-secret "$(field client_secret <<< "$worker")")
    TRELLIS_SIGN_UP_RATE=1000000/1h "$bin" serve "$name" "${storage[@]}" "${urls[@]}" "${extra[@]}" \
      --skip-migrations --data-dir "$work/$name" --signing-keys-dir "$work/keys" \
      "--$name-addr" "127.0.0.1:$((port + i))" \
      --service-client-id "$(field client_id <<< "$service")" \
      --service-client-secret "$(field client_secret <<< "$service")" \
      --log "${LOG:-warn}" > "$work/$name.log" 2>&1 &
    pids+=($!)
  done
  server=${pids[0]}
  for i in "${!servers[@]}"; do
    for _ in $(seq 300); do grep -qs "listening" "$work/${servers[$i]}.log" && break; sleep 0.1; done
    grep -q "listening" "$work/${servers[$i]}.log" || { cat "$work/${servers[$i]}.log" "$work/setup.log"; exit 1; }
  done
else
# The generator signs every user up from one address: lift the per-address
# sign-up limit, and the gateway's per-client limits (one client here).
TRELLIS_SIGN_UP_RATE=1000000/1h "$target/release/trellis" up --data-dir "$work" "${storage[@]}" \
  --auth-addr "127.0.0.1:$port" --session-addr "127.0.0.1:$((port + 1))" \
  --cart-addr "127.0.0.1:$((port + 2))" --order-addr "127.0.0.1:$((port + 3))" \
  --execution-addr "127.0.0.1:$((port + 4))" --gateway-addr "127.0.0.1:$((port + 5))" \
  --admin-addr "127.0.0.1:$((port + 6))" \
  --gateway-client-rate 0 --gateway-org-rate 0 --gateway-client-concurrency 1000000 \
  --gateway-concurrency 1000000 --log "${LOG:-warn}" > "$work/server.log" 2>&1 &
server=$!
pids=("$server")
for _ in $(seq 300); do grep -q "gateway    listening" "$work/server.log" && break; sleep 0.1; done
grep -q "gateway    listening" "$work/server.log" || { cat "$work/server.log"; exit 1; }
fi

targets=(--auth-url "http://127.0.0.1:$port" --session-url "http://127.0.0.1:$((port + 1))"
  --cart-url "http://127.0.0.1:$((port + 2))" --order-url "http://127.0.0.1:$((port + 3))")
[ "$TARGET" = gateway ] && targets=(--gateway "http://127.0.0.1:$((port + 5))")
arrival=(--think "$THINK" --paced)
[ -n "$OPEN_RATE" ] && arrival=(--open-rate "$OPEN_RATE")
name="load-$BACKEND-$TARGET-$USERS-think$THINK${OPEN_RATE:+-open$OPEN_RATE}${SPLIT:+-split}"

hwm_kib() { awk '/^VmHWM/ {print $2}' "/proc/$server/status"; }
idle=$(awk '/^VmRSS/ {print $2}' "/proc/$server/status")

status=0
"$target/release/trellis-load" flow --users "$USERS" "${arrival[@]}" --duration "$DURATION" \
  "${targets[@]}" --out "$OUT_DIR/$name.json" --plot "$OUT_DIR/$name.svg" \
  --goal-rpc-p95-ms 50 --goal-confirm-p95-ms 300 ${LOAD_ARGS:-} || status=$?
peak=$(hwm_kib)
echo
if [ "${SPLIT:-0}" = 1 ]; then
  echo "resident memory per server process (peak during the run):"
  for i in "${!pids[@]}"; do
    printf '  %-10s %4d MiB\n' "${servers[$i]}" "$(( $(awk '/^VmHWM/ {print $2}' "/proc/${pids[$i]}/status") / 1024 ))"
  done
else
  echo "server (one trellis up process, every server in it) resident memory:"
  echo "  before users: $((idle / 1024)) MiB; peak during the run: $((peak / 1024)) MiB"
fi
echo "results: $OUT_DIR/$name.json, plot: $OUT_DIR/$name.svg"
grep -hE "ERROR|panicked" "$work"/*.log | head -5 || true
exit "$status"
