#!/usr/bin/env bash
# What an attacker at one address can do to a release `trellis serve auth session`
# on the embedded defaults (services/auth/examples/abuse.rs checks every
# answer's status):
#   1. 40 Logins with a 3 MiB email: all INVALID_ARGUMENT, and resident
#      memory before and after (goal: within 10 MiB of where it started).
#   2. 10 000 failed logins with distinct emails: the answers and memory
#      (the counters' own peak is reported by the throttle's unit test).
#   3. 200 sign-ups at once from one address at the default limits, while a
#      real user logs in from another: the login's latency.
#   4. The same flood with the per-address limit lifted, as a flood from
#      many addresses would be: logins go ahead of the queued hashes.
#
#   bash bench/abuse.sh        # HUGE_CALLS=40 HUGE_MIB=3 DISTINCT=10000 FLOOD=200
set -euo pipefail
cd "$(dirname "$0")/.."

HUGE_CALLS=${HUGE_CALLS:-40}
HUGE_MIB=${HUGE_MIB:-3}
DISTINCT=${DISTINCT:-10000}
FLOOD=${FLOOD:-200}

cargo build --release --quiet --bin trellis
cargo build --release --quiet --example abuse -p trellis-auth
target=${CARGO_TARGET_DIR:-target}
bin=$target/release/trellis
client=$target/release/examples/abuse
work=$(mktemp -d)
server=
stop() { [ -n "$server" ] && kill "$server" 2>/dev/null && wait "$server" 2>/dev/null; server=; true; }
trap 'stop; rm -rf "$work"' EXIT

start() { # $1 = label; the rest are extra flags
  stop
  port=$((20000 + RANDOM % 20000))
  "$bin" serve auth session --auth-addr "127.0.0.1:$port" --session-addr 127.0.0.1:0 --data-dir "$work/$1" "${@:2}" > "$work/$1.log" 2>&1 &
  server=$!
  for _ in $(seq 100); do grep -q "listening on" "$work/$1.log" && break; sleep 0.1; done
  url="http://127.0.0.1:$port"
}
rss_mib() { awk '/^VmRSS/ { printf "%.1f", $2 / 1024 }' "/proc/$server/status"; }

start memory
sleep 0.5
before=$(rss_mib)
"$client" huge-email "$url" "$HUGE_CALLS" "$HUGE_MIB"
after_huge=$(rss_mib)
echo "resident memory: $before MiB at start, $after_huge MiB after the huge emails (goal: within 10 MiB)"
"$client" distinct-emails "$url" "$DISTINCT"
echo "resident memory after $DISTINCT failed logins with distinct emails: $(rss_mib) MiB"
awk -v a="$after_huge" -v b="$before" 'BEGIN { exit !(a - b <= 10) }' ||
  { echo "FAIL: memory grew by more than 10 MiB" >&2; exit 1; }

start flood-default
"$client" flood "$url" "$FLOOD"
start flood-unlimited --sign-up-rate 1000000/1h
"$client" flood "$url" "$FLOOD"
