#!/usr/bin/env bash
# The fault scenarios of tests/faults.rs at full size: a cluster of real
# `trellis serve` processes (two replicas of every server, fulfillment-only
# Order processes as workers) on a private PostgreSQL and Redis started on
# ports of their own, under the load generator's virtual users.
#
#   bash bench/faults.sh                  # all three scenarios, full sizes
#   SCENARIO=sigkill bash bench/faults.sh # one of: sigkill outage sigterm
#
# Full sizes (override any): 1000 orders while 20 workers and 5 Order or
# Execution servers are SIGKILLed at random; Redis stopped 10 s, then
# PostgreSQL stopped 10 s and started again; SIGTERM of each process in turn.
# `cargo test` runs the same scenarios small (seconds).
set -euo pipefail
cd "$(dirname "$0")/.."

export TRELLIS_FAULT_ORDERS=${TRELLIS_FAULT_ORDERS:-1000}
export TRELLIS_FAULT_USERS=${TRELLIS_FAULT_USERS:-50}
export TRELLIS_FAULT_WORKER_KILLS=${TRELLIS_FAULT_WORKER_KILLS:-20}
export TRELLIS_FAULT_SERVER_KILLS=${TRELLIS_FAULT_SERVER_KILLS:-5}
export TRELLIS_FAULT_OUTAGE_SECONDS=${TRELLIS_FAULT_OUTAGE_SECONDS:-10}
export TRELLIS_REQUIRE_BACKENDS=1

case ${SCENARIO:-all} in
  sigkill) filter=sigkill_of_workers ;;
  outage) filter=redis_stopped_and_postgres_restarted ;;
  sigterm) filter=sigterm_of_each_server ;;
  all) filter= ;;
  *) echo "SCENARIO is one of: sigkill outage sigterm all" >&2; exit 2 ;;
esac
# One scenario at a time: each starts its own cluster of ten processes.
cargo test --test faults -- --test-threads=1 --nocapture $filter
