#!/usr/bin/env bash
# Authenticated unary RPC through the full Trellis server stack (request
# context, access log, concurrency limit, EdDSA JWT verification) against a
# bare tonic server, measured in the same run with the same load and pinning:
# server on CPU 0 (one tokio worker), h2load on CPU 1.
#
# h2load counts gRPC errors as successes, so the servers count the calls
# their handler answered and the script checks that every request got there.
#
#   bash bench/auth_overhead.sh            # defaults below
#   REQUESTS=500000 ROUNDS=5 bash bench/auth_overhead.sh
#   BENCH_SERVER=/path/to/old/bench_server bash bench/auth_overhead.sh   # A/B
#   MODES="bare trellis trellis-tls" bash bench/auth_overhead.sh          # TLS on and off
set -euo pipefail
cd "$(dirname "$0")/.."

REQUESTS=${REQUESTS:-200000}
WARMUP=${WARMUP:-20000}
CLIENTS=${CLIENTS:-8}
STREAMS=${STREAMS:-16}
ROUNDS=${ROUNDS:-3}
GOAL=${GOAL:-0.80}

command -v h2load >/dev/null || { echo "h2load not found: apt-get install nghttp2-client" >&2; exit 2; }
command -v taskset >/dev/null || { echo "taskset not found: apt-get install util-linux" >&2; exit 2; }

# BENCH_SERVER runs another build of the example (an A/B comparison) instead of this tree's.
if [ -z "${BENCH_SERVER:-}" ]; then
  cargo build --release --quiet --example bench_server -p trellis-runtime
fi
server=${BENCH_SERVER:-${CARGO_TARGET_DIR:-target}/release/examples/bench_server}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
# An empty WhoAmIRequest, gRPC length-prefixed: not compressed, length 0.
printf '\x00\x00\x00\x00\x00' > "$work/request.bin"

port=$((20000 + RANDOM % 20000))

# utime + stime of a process, in clock ticks.
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
hz=$(getconf CLK_TCK)

# run MODE ROUND -> appends "mode rps p50 p99" to $work/results
run() {
  local mode=$1 round=$2
  port=$((port + 1))
  rm -f "$work/token"
  taskset -c 0 "$server" "$mode" "$port" "$work/token" > "$work/server.out" 2>&1 &
  local pid=$!
  for _ in $(seq 100); do [ -s "$work/token" ] && break; sleep 0.05; done
  local args=(-c "$CLIENTS" -m "$STREAMS" -t 1 -d "$work/request.bin"
    -H "content-type: application/grpc" -H "te: trailers")
  [ "$(cat "$work/token")" != none ] && args+=(-H "authorization: Bearer $(cat "$work/token")")
  local scheme=http
  [[ $mode == *-tls ]] && scheme=https
  local url="$scheme://127.0.0.1:$port/trellis.auth.v1.AuthService/WhoAmI"
  taskset -c 1 h2load -n "$WARMUP" "${args[@]}" "$url" > /dev/null
  local ticks_before ticks_after
  ticks_before=$(cpu_ticks "$pid")
  taskset -c 1 h2load -n "$REQUESTS" "${args[@]}" --log-file "$work/latency.log" "$url" > "$work/h2load.out"
  ticks_after=$(cpu_ticks "$pid")
  kill -INT "$pid"; wait "$pid" || true

  local handled rps succeeded
  handled=$(awk '/^handled/ {print $2}' "$work/server.out")
  rps=$(awk '/^finished in/ {print $4}' "$work/h2load.out")
  succeeded=$(awk '/^requests:/ {print $8}' "$work/h2load.out")
  if [ "$handled" != "$((WARMUP + REQUESTS))" ] || [ "$succeeded" != "$REQUESTS" ]; then
    echo "FAIL $mode round $round: handler answered $handled of $((WARMUP + REQUESTS)) calls, h2load saw $succeeded HTTP successes" >&2
    cat "$work/server.out" >&2
    exit 1
  fi
  # Third column: microseconds from request start to end of response.
  # Server CPU per request: steadier than req/s on a VM with noisy neighbours.
  local cpu_us
  cpu_us=$(awk -v t=$((ticks_after - ticks_before)) -v hz="$hz" -v n="$REQUESTS" 'BEGIN { printf "%.2f", t * 1e6 / hz / n }')
  sort -n -k3,3 "$work/latency.log" | awk -v mode="$mode" -v rps="$rps" -v cpu="$cpu_us" '
    { lat[NR] = $3 }
    END { printf "%s %s %d %d %s\n", mode, rps, lat[int(NR * 0.50)], lat[int(NR * 0.99)], cpu }' >> "$work/results"
  printf '  round %d %-10s %10.0f req/s %8s us CPU/request\n' "$round" "$mode" "$rps" "$cpu_us"
}

echo "requests=$REQUESTS per run, $CLIENTS connections x $STREAMS streams, $ROUNDS rounds, server on CPU 0, h2load on CPU 1"
MODES=${MODES:-bare bare-token trellis}
for round in $(seq "$ROUNDS"); do
  for mode in $MODES; do run "$mode" "$round"; done
done

# Median of the rounds per mode.
awk -v goal="$GOAL" '
  { n[$1]++; rps[$1, n[$1]] = $2; p50[$1, n[$1]] = $3; p99[$1, n[$1]] = $4; cpu[$1, n[$1]] = $5 }
  function median(arr, mode, count,   i, j, t, v) {
    for (i = 1; i <= count; i++) v[i] = arr[mode, i]
    for (i = 1; i <= count; i++) for (j = i + 1; j <= count; j++) if (v[j] < v[i]) { t = v[i]; v[i] = v[j]; v[j] = t }
    return v[int((count + 1) / 2)]
  }
  END {
    printf "\n%-34s %12s %10s %10s %12s\n", "server (median of rounds)", "req/s", "p50 us", "p99 us", "CPU us/req"
    for (m in n) {
      r[m] = median(rps, m, n[m])
      label = (m == "bare") ? "bare tonic" : (m == "bare-token") ? "bare tonic, token header ignored" : (m == "trellis-tls") ? "trellis stack + JWT, over TLS" : "trellis stack + EdDSA JWT"
      c[m] = median(cpu, m, n[m])
      printf "%-34s %12.0f %10d %10d %12.2f\n", label, r[m], median(p50, m, n[m]), median(p99, m, n[m]), c[m]
    }
    if (("bare" in r) && ("trellis" in r)) {
      ratio = r["trellis"] / r["bare"]
      printf "\nratio trellis/bare: %.2fx (goal >= %.2fx): %s\n", ratio, goal, (ratio >= goal) ? "met" : "NOT met"
      printf "ratio by server CPU per request (bare/trellis): %.2fx\n", c["bare"] / c["trellis"]
    }
    if (("trellis-tls" in r) && ("trellis" in r)) printf "TLS cost per call (connections up): trellis-tls/trellis %.2fx req/s, %+.2f us CPU/request\n", r["trellis-tls"] / r["trellis"], c["trellis-tls"] - c["trellis"]
    if (("bare-token" in r) && ("trellis" in r)) printf "ratio trellis/bare-token (same bytes on the wire): %.2fx\n", r["trellis"] / r["bare-token"]
    print "every reply checked: all calls reached the handler and succeeded"
  }' "$work/results"
