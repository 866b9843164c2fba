#!/usr/bin/env bash
# Hostile HTTP/2 and gRPC clients (crates/load/src/hostile.rs, `trellis-load
# hostile`) against a release `trellis up` on the embedded defaults: each
# attack in turn against a server port (Auth) and against the gateway,
# while a legitimate tonic client calls WhoAmI at a steady rate on the same
# port. Prints, per attack and target, the legitimate client's p99 beside
# its baseline, its errors, the process's peak resident memory during the
# attack, what the server did to the attacker (GOAWAY, RST_STREAM, closed
# connections), and whether the process is still up.
#
#   bash bench/hostile.sh
#   ATTACKS="rapid-reset continuation" SECONDS_EACH=10 bash bench/hostile.sh
#
# The machine has two cores: the server gets CPU 0, the legitimate client
# and the attacker CPU 1, the attacker at the lowest priority, so what is
# measured is what the attack costs the server, not the attacker's own CPU
# taken from the server or the client (it still runs flat out: the client
# needs little).
#
# Goals (exit 1 when not met): the process never dies, the legitimate
# client gets no error and its p99 stays within 2x of its baseline.
set -euo pipefail
cd "$(dirname "$0")/.."

ATTACKS=${ATTACKS:-rapid-reset continuation stream-flood header-flood slowloris oversized compression-bomb}
TARGETS=${TARGETS:-auth gateway}
SECONDS_EACH=${SECONDS_EACH:-10}
RATE=${RATE:-200}
CONNECTIONS=${CONNECTIONS:-8}
GOAL=${GOAL:-2.0}
target=${CARGO_TARGET_DIR:-target}
OUT_DIR=${OUT_DIR:-$target/load}
mkdir -p "$OUT_DIR"

command -v taskset >/dev/null || { echo "taskset not found: apt-get install util-linux" >&2; exit 2; }
cargo build --release --quiet --bin trellis --bin trellis-load
load=$target/release/trellis-load
work=$(mktemp -d)
server=
trap '[ -n "$server" ] && kill "$server" 2>/dev/null; wait 2>/dev/null; rm -rf "$work"' EXIT

# Below the ephemeral range (32768+), so no outgoing connection holds one.
port=$((20000 + RANDOM % 12000))
# One machine plays both the attacker and the legitimate client, from the
# same address: the gateway's per-client limits are lifted so they do not
# throttle the legitimate client for the attacker's sake (in production the
# two have different addresses). Every other limit is the default.
taskset -c 0 "$target/release/trellis" up --data-dir "$work" \
  --auth-addr "127.0.0.1:$port" --session-addr "127.0.0.1:$((port + 1))" \
  --cart-addr "127.0.0.1:$((port + 2))" --order-addr "127.0.0.1:$((port + 3))" \
  --execution-addr "127.0.0.1:$((port + 4))" --gateway-addr "127.0.0.1:$((port + 5))" \
  --admin-addr "127.0.0.1:$((port + 6))" \
  --gateway-client-rate 0 --gateway-client-concurrency 1000000 \
  --log "${LOG:-warn}" > "$work/server.log" 2>&1 &
server=$!
for _ in $(seq 300); do grep -q "gateway    listening" "$work/server.log" && break; sleep 0.1; done
grep -q "gateway    listening" "$work/server.log" || { cat "$work/server.log"; exit 1; }
"$load" token --auth-url "http://127.0.0.1:$port" > "$work/token"

address_of() { case $1 in auth) echo "127.0.0.1:$port" ;; gateway) echo "127.0.0.1:$((port + 5))" ;; esac; }
rss_kib() { awk '/^VmRSS/ {print $2}' "/proc/$server/status" 2>/dev/null || echo 0; }
requests=$((RATE * (SECONDS_EACH - 2)))

# legit TARGET -> "p99_us errors" of a paced WhoAmI run of ~SECONDS_EACH-2 s.
legit() {
  local out
  out=$(taskset -c 1 "$load" --threads 1 unary --url "http://$(address_of "$1")" --token-file "$work/token" \
    --connections 2 --streams 8 --rate "$RATE" --requests "$requests" --warmup 100 2>&1) || true
  local p99 errors
  p99=$(sed -n 's/.* p99_us \([0-9]*\).*/\1/p' <<< "$out")
  errors=$(sed -n 's/.* errors \({[^}]*}\).*/\1/p' <<< "$out")
  [ -n "$p99" ] || { p99=-1; errors="client failed: $out"; }
  echo "$p99 ${errors:-{\}}"
}

declare -A baseline
for t in $TARGETS; do
  read -r p99 errors < <(legit "$t")
  baseline[$t]=$p99
  echo "baseline $t: legitimate WhoAmI at $RATE/s, p99 $p99 us, errors $errors"
done
idle=$(rss_kib)
echo "resident memory before the attacks: $((idle / 1024)) MiB"
echo

status=0
rm -f "$OUT_DIR/hostile.jsonl.tmp"
printf '%-16s %-8s %10s %10s %6s %10s %9s %8s %8s %8s %s\n' attack target "p99 us" "base us" ratio "peak MiB" closed goaway rst alive "legit errors"
for attack in $ATTACKS; do
  for t in $TARGETS; do
    taskset -c 1 nice -n 19 "$load" --threads 1 hostile --attack "$attack" --address "$(address_of "$t")" \
      --duration "${SECONDS_EACH}s" --connections "$CONNECTIONS" > "$work/attack.json" 2> "$work/attack.err" &
    attacker=$!
    peak=0
    (
      while kill -0 "$attacker" 2>/dev/null; do rss_kib; sleep 0.2; done
    ) > "$work/rss.log" &
    sampler=$!
    sleep 1
    read -r p99 errors < <(legit "$t")
    wait "$attacker" || true
    wait "$sampler" || true
    peak=$(sort -n "$work/rss.log" | tail -1)
    alive=yes
    kill -0 "$server" 2>/dev/null || alive=NO
    report=$(cat "$work/attack.json")
    field() { sed -n "s/.*\"$1\":\([0-9]*\).*/\1/p" <<< "$report"; }
    ratio=$(awk -v a="$p99" -v b="${baseline[$t]}" 'BEGIN { if (b > 0 && a >= 0) printf "%.2f", a / b; else print "n/a" }')
    printf '%-16s %-8s %10s %10s %6s %10s %9s %8s %8s %8s %s\n' "$attack" "$t" "$p99" "${baseline[$t]}" "$ratio" \
      "$(( ${peak:-0} / 1024 ))" "$(field closed_by_server)" "$(field goaway_frames)" "$(field rst_stream_frames)" "$alive" "$errors"
    echo "{\"attack\":\"$attack\",\"target\":\"$t\",\"legit_p99_us\":$p99,\"baseline_p99_us\":${baseline[$t]},\"peak_rss_kib\":${peak:-0},\"alive\":\"$alive\",\"attacker\":${report:-null}}" >> "$OUT_DIR/hostile.jsonl.tmp"
    if [ "$alive" != yes ]; then
      echo "the server process died during $attack against $t:" >&2
      tail -20 "$work/server.log" >&2
      exit 1
    fi
    if [ "$errors" != "{}" ] || awk -v r="$ratio" -v g="$GOAL" 'BEGIN { exit !(r == "n/a" || r > g) }'; then
      status=1
    fi
  done
done
mv "$OUT_DIR/hostile.jsonl.tmp" "$OUT_DIR/hostile.jsonl"
echo
echo "peak resident memory of the process over every attack: $(( $(awk '/^VmHWM/ {print $2}' "/proc/$server/status") / 1024 )) MiB"
grep -E "ERROR|panicked" "$work/server.log" | head -5 || true
[ "$status" = 0 ] && echo "goals met: no crash, no legitimate error, p99 within ${GOAL}x of baseline" \
  || echo "goal NOT met (see the rows above)"
exit "$status"
