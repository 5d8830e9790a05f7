#!/usr/bin/env bash
# Soak: starts squeeze-server (CPU) on a free loopback port and runs soak-client against it.
#   bench/run_soak.sh BUILD [DURATION_S=1800] [STREAMS=64] [MODEL=models/squeeze-demo]
# Prints the server's RSS / fds / threads over time and the unexpected status count; exits
# non-zero when a status was unexpected or the server did not drain cleanly.
set -euo pipefail
build=${1:?build dir}
duration=${2:-1800}
streams=${3:-64}
model=${4:-models/squeeze-demo}
work=$(mktemp -d)
trap 'kill -9 $server_pid 2>/dev/null || true; rm -rf "$work"' EXIT
"$build/squeeze-server" --model="$model" --device=cpu --address=127.0.0.1:0 \
  --metrics_address= --port_file="$work/port" --state_dir="$work/state" \
  --max_registrations=4 --log_level=warn >"$work/server.log" 2>&1 &
server_pid=$!
for _ in $(seq 600); do [ -s "$work/port" ] && break; sleep 0.1; done
port=$(cat "$work/port")
echo "server pid $server_pid on port $port; soak of ${duration} s with ${streams} streams"
status=0
"$build/soak-client" --server="127.0.0.1:$port" --server_pid="$server_pid" \
  --duration_s="$duration" --streams="$streams" --report_s=$(( duration / 30 > 10 ? duration / 30 : 10 )) \
  --document=tests/data/demo_document.txt || status=$?
kill -TERM "$server_pid"
if ! wait "$server_pid"; then echo "server did not exit cleanly"; status=1; fi
echo "server log (warnings and errors):"; tail -20 "$work/server.log"
exit $status
