#!/usr/bin/env bash
# The gateway's cost, in one run against a release `trellis up` (rate
# limits off): CheckSession direct to Auth over gRPC and through the gateway over
# gRPC-web on HTTP/1.1, every answer checked by the client
# (services/gateway/examples/gateway_bench.rs); then WatchExecutions direct
# and through the gateway on the same events: how much later each event
# arrives through the gateway.
# Goals: gateway >= 0.60x direct; stream p99 extra delay <= 50 ms.
#
#   bash bench/gateway.sh          # SECONDS_EACH=10 CONCURRENCY=32 EVENTS=180 (at most 200: the free plan)
set -euo pipefail
cd "$(dirname "$0")/.."

SECONDS_EACH=${SECONDS_EACH:-10}
CONCURRENCY=${CONCURRENCY:-32}
EVENTS=${EVENTS:-180}

cargo build --release --quiet --bin trellis
cargo build --release --quiet --example gateway_bench -p trellis-gateway
target=${CARGO_TARGET_DIR:-target}
work=$(mktemp -d)
server=
trap '[ -n "$server" ] && kill "$server" 2>/dev/null; wait 2>/dev/null; [ -n "${KEEP_LOG:-}" ] && cp "$work/server.log" "$KEEP_LOG"; rm -rf "$work"' EXIT

port=$((20000 + RANDOM % 20000))
"$target/release/trellis" up --data-dir "$work" \
  --auth-addr "127.0.0.1:$port" --session-addr 127.0.0.1:0 --cart-addr 127.0.0.1:0 \
  --order-addr 127.0.0.1:0 --execution-addr "127.0.0.1:$((port + 1))" \
  --gateway-addr "127.0.0.1:$((port + 2))" \
  --gateway-client-rate 0 --gateway-org-rate 0 --log "${LOG:-warn}" > "$work/server.log" 2>&1 &
server=$!
for _ in $(seq 100); do grep -q "gateway    listening" "$work/server.log" && break; sleep 0.1; done
grep -q "gateway    listening" "$work/server.log" || { cat "$work/server.log"; exit 1; }
"$target/release/examples/gateway_bench" "http://127.0.0.1:$port" "http://127.0.0.1:$((port + 1))" \
  "http://127.0.0.1:$((port + 2))" "$SECONDS_EACH" "$CONCURRENCY" "$EVENTS"
