#!/usr/bin/env bash
# Authenticated unary RPC through the full Trellis server stack (request
# context, access log, concurrency limit, EdDSA JWT verification) against a
# bare tonic server, measured in the same run with the same load and pinning:
# server on CPU 0 (one tokio worker), the client on CPU 1.
#
# Two clients drive it: h2load, and tonic (`trellis-load unary`, the same
# client stack the services use). They differ where it matters here: h2load
# HPACK-indexes every header, so after the first call the bearer token
# costs one byte a call; tonic (h2) never indexes `authorization` (h2 keeps
# it out of the dynamic table on purpose), so every call carries the whole
# token, Huffman-coded, and the server decodes it again.
#
# h2load counts gRPC errors as successes, so the servers count the calls
# their handler answered and the script checks that every request got there.
#
#   bash bench/auth_overhead.sh            # defaults below
#   REQUESTS=500000 ROUNDS=5 bash bench/auth_overhead.sh
#   BENCH_SERVER=/path/to/old/bench_server bash bench/auth_overhead.sh   # A/B
#   MODES="bare trellis trellis-tls" bash bench/auth_overhead.sh          # TLS on and off (h2load only)
#   DRIVERS=tonic bash bench/auth_overhead.sh                              # one client only
set -euo pipefail
cd "$(dirname "$0")/.."

REQUESTS=${REQUESTS:-200000}
WARMUP=${WARMUP:-20000}
CLIENTS=${CLIENTS:-8}
STREAMS=${STREAMS:-16}
ROUNDS=${ROUNDS:-3}
GOAL=${GOAL:-0.80}

DRIVERS=${DRIVERS:-h2load tonic}
if [[ " $DRIVERS " == *" h2load "* ]] && ! command -v h2load >/dev/null; then
  echo "h2load not found (apt-get install nghttp2-client): SKIPPING the h2load driver, tonic only" >&2
  DRIVERS=tonic
fi
command -v taskset >/dev/null || { echo "taskset not found: apt-get install util-linux" >&2; exit 2; }

# BENCH_SERVER runs another build of the example (an A/B comparison) instead of this tree's.
if [ -z "${BENCH_SERVER:-}" ]; then
  cargo build --release --quiet --example bench_server -p trellis-runtime
fi
cargo build --release --quiet --bin trellis-load
load=${CARGO_TARGET_DIR:-target}/release/trellis-load
server=${BENCH_SERVER:-${CARGO_TARGET_DIR:-target}/release/examples/bench_server}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
# An empty WhoAmIRequest, gRPC length-prefixed: not compressed, length 0.
printf '\x00\x00\x00\x00\x00' > "$work/request.bin"

port=$((20000 + RANDOM % 20000))

# utime + stime of a process, in clock ticks.
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
hz=$(getconf CLK_TCK)

# run DRIVER MODE ROUND -> appends "driver/mode rps p50 p99 cpu" to $work/results
run() {
  local driver=$1 mode=$2 round=$3
  port=$((port + 1))
  rm -f "$work/token"
  taskset -c 0 "$server" "$mode" "$port" "$work/token" > "$work/server.out" 2>&1 &
  local pid=$!
  for _ in $(seq 100); do [ -s "$work/token" ] && break; sleep 0.05; done
  local scheme=http
  [[ $mode == *-tls ]] && scheme=https
  local ticks_before ticks_after rps succeeded p50 p99
  if [ "$driver" = h2load ]; then
    local args=(-c "$CLIENTS" -m "$STREAMS" -t 1 -d "$work/request.bin"
      -H "content-type: application/grpc" -H "te: trailers")
    [ "$(cat "$work/token")" != none ] && args+=(-H "authorization: Bearer $(cat "$work/token")")
    local url="$scheme://127.0.0.1:$port/trellis.auth.v1.AuthService/WhoAmI"
    taskset -c 1 h2load -n "$WARMUP" "${args[@]}" "$url" > /dev/null
    ticks_before=$(cpu_ticks "$pid")
    taskset -c 1 h2load -n "$REQUESTS" "${args[@]}" --log-file "$work/latency.log" "$url" > "$work/h2load.out"
    ticks_after=$(cpu_ticks "$pid")
    rps=$(awk '/^finished in/ {print $4}' "$work/h2load.out")
    succeeded=$(awk '/^requests:/ {print $8}' "$work/h2load.out")
    # Third column: microseconds from request start to end of response.
    read -r p50 p99 < <(sort -n -k3,3 "$work/latency.log" | awk '{ lat[NR] = $3 } END { print lat[int(NR * 0.50)], lat[int(NR * 0.99)] }')
  else
    [ "$scheme" = http ] || { echo "the tonic driver speaks plaintext only: drop $mode from MODES" >&2; exit 2; }
    local token=()
    [ "$(cat "$work/token")" != none ] && token=(--token-file "$work/token")
    # Its warmup is a first round on the same connections; the server's
    # CPU counts both rounds, so the per-request figure divides by both.
    ticks_before=$(cpu_ticks "$pid")
    taskset -c 1 "$load" --threads 1 unary --url "http://127.0.0.1:$port" "${token[@]}" \
      --connections "$CLIENTS" --streams "$STREAMS" --requests "$REQUESTS" --warmup "$WARMUP" > "$work/tonic.out" || true
    ticks_after=$(cpu_ticks "$pid")
    rps=$(sed -n 's/.* rps \([0-9]*\).*/\1/p' "$work/tonic.out")
    succeeded=$(sed -n 's/.* ok \([0-9]*\) errors {}.*/\1/p' "$work/tonic.out")
    p50=$(sed -n 's/.* p50_us \([0-9]*\).*/\1/p' "$work/tonic.out")
    p99=$(sed -n 's/.* p99_us \([0-9]*\).*/\1/p' "$work/tonic.out")
  fi
  kill -INT "$pid"; wait "$pid" || true

  local handled
  handled=$(awk '/^handled/ {print $2}' "$work/server.out")
  if [ "$handled" != "$((WARMUP + REQUESTS))" ] || [ "$succeeded" != "$REQUESTS" ]; then
    echo "FAIL $driver $mode round $round: handler answered $handled of $((WARMUP + REQUESTS)) calls, the client saw $succeeded successes" >&2
    cat "$work/server.out" "$work/tonic.out" 2>/dev/null >&2
    exit 1
  fi
  # Server CPU per request: steadier than req/s on a VM with noisy neighbours.
  local calls=$REQUESTS cpu_us
  [ "$driver" = tonic ] && calls=$((WARMUP + REQUESTS))
  cpu_us=$(awk -v t=$((ticks_after - ticks_before)) -v hz="$hz" -v n="$calls" 'BEGIN { printf "%.2f", t * 1e6 / hz / n }')
  echo "$driver/$mode $rps $p50 $p99 $cpu_us" >> "$work/results"
  printf '  round %d %-6s %-10s %10.0f req/s %8s us CPU/request\n' "$round" "$driver" "$mode" "$rps" "$cpu_us"
}

echo "requests=$REQUESTS per run, $CLIENTS connections x $STREAMS streams, $ROUNDS rounds, server on CPU 0, client on CPU 1; drivers: $DRIVERS"
MODES=${MODES:-bare bare-token trellis}
for round in $(seq "$ROUNDS"); do
  for driver in $DRIVERS; do
    for mode in $MODES; do run "$driver" "$mode" "$round"; done
  done
done

# Median of the rounds per driver and mode.
awk -v goal="$GOAL" '
  { n[$1]++; rps[$1, n[$1]] = $2; p50[$1, n[$1]] = $3; p99[$1, n[$1]] = $4; cpu[$1, n[$1]] = $5 }
  function median(arr, key, count,   i, j, t, v) {
    for (i = 1; i <= count; i++) v[i] = arr[key, i]
    for (i = 1; i <= count; i++) for (j = i + 1; j <= count; j++) if (v[j] < v[i]) { t = v[i]; v[i] = v[j]; v[j] = t }
    return v[int((count + 1) / 2)]
  }
  function label(mode) {
    return (mode == "bare") ? "bare tonic" : (mode == "bare-token") ? "bare tonic, token header ignored" : (mode == "trellis-tls") ? "trellis stack + JWT, over TLS" : "trellis stack + EdDSA JWT"
  }
  END {
    printf "\n%-7s %-34s %12s %10s %10s %12s\n", "client", "server (median of rounds)", "req/s", "p50 us", "p99 us", "CPU us/req"
    for (k in n) {
      split(k, part, "/")
      r[k] = median(rps, k, n[k]); c[k] = median(cpu, k, n[k])
      printf "%-7s %-34s %12.0f %10d %10d %12.2f\n", part[1], label(part[2]), r[k], median(p50, k, n[k]), median(p99, k, n[k]), c[k]
    }
    split("h2load tonic", drivers, " ")
    for (d = 1; d <= 2; d++) {
      driver = drivers[d]; b = driver "/bare"; t = driver "/trellis"
      if ((b in r) && (t in r)) {
        ratio = r[t] / r[b]
        printf "\n%s: ratio trellis/bare %.2fx (goal >= %.2fx): %s; by server CPU per request (bare/trellis) %.2fx\n", driver, ratio, goal, (ratio >= goal) ? "met" : "NOT met", c[b] / c[t]
        if ((driver "/bare-token") in r) printf "%s: ratio trellis/bare-token (same bytes on the wire): %.2fx\n", driver, r[t] / r[driver "/bare-token"]
      }
      if (((driver "/trellis-tls") in r) && (t in r)) printf "%s: TLS cost per call (connections up): trellis-tls/trellis %.2fx req/s, %+.2f us CPU/request\n", driver, r[driver "/trellis-tls"] / r[t], c[driver "/trellis-tls"] - c[t]
    }
    print "every reply checked: all calls reached the handler and succeeded"
  }' "$work/results"
