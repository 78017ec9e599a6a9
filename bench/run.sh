#!/usr/bin/env bash
# Benchmarks the sidecar against the peers of ../shared/bench in one run
# (direct, nginx, the minimal aiohttp proxy, the old FastAPI + httpx design, the
# feature-less python-ceiling and bench/callback_ceiling.py).
# Ratios inside one run are what to report; absolute numbers vary across runs.
#
#   bench/run.sh                       # 1 run, 10 s per measurement
#   RUNS=2 DURATION=8 bench/run.sh     # knobs of run_peers.sh pass through
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
shared=${SHARED_BENCH:-$here/../shared/bench}
[ -x "$shared/run_peers.sh" ] || { echo "bench: $shared/run_peers.sh not found" >&2; exit 1; }
[ -x /tmp/benchvenv/bin/python ] || "$shared/setup.sh"
export RUNS=${RUNS:-1}
# The sidecar with every resilience default on and health checks of the upstream
# (bench/sidecar.jsonnet); request ids, header hygiene and metrics are always on.
sidecar="env PYTHONDONTWRITEBYTECODE=1 $here/.venv/bin/sidecar run --config $here/bench/sidecar.jsonnet --ext-str upstream=\$UPSTREAM --listen 127.0.0.1:\$PORT --admin-grpc 127.0.0.1:0 --admin-http 127.0.0.1:0 --no-watch --log-level warning"
# The latency floor of a Python proxy on this loop: no task, no future on the path
# (bench/callback_ceiling.py; in the bench's venv, which has uvloop and httptools).
callback="/tmp/benchvenv/bin/python $here/bench/callback_ceiling.py --port \$PORT --upstream \$UPSTREAM"
exec "$shared/run_peers.sh" -p "${PEERS:-direct nginx aiohttp-uvloop-auto fastapi-httpx python-ceiling}" \
  --peer "sidecar=$sidecar" --peer "callback-ceiling=$callback" "$@"
