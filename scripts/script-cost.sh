#!/usr/bin/env bash
# What the Redis counters script costs Redis, in instructions per counter:
# redis-server runs under valgrind's callgrind, which counts instructions
# rather than time, so the figure repeats on a busy machine and compares
# two versions of the script exactly.
#
#   scripts/script-cost.sh                 # 30 counters per call, 10,000 keys
#   scripts/script-cost.sh 1 10000         # one counter per call
#   scripts/script-cost.sh 30 1            # a hot key
#
# The keys are warmed first (not counted), so the figure is for counters
# that exist, in their current window. Needs valgrind and redis-server.
set -euo pipefail
cd "$(dirname "$0")/.."
per=${1:-30}
keys=${2:-10000}
calls=${CALLS:-200}
command -v valgrind >/dev/null || { echo "valgrind is needed (apt-get install valgrind)" >&2; exit 1; }
scripts/ensure-redis.sh
work=$(mktemp -d)
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
valgrind --tool=callgrind --instr-atstart=no --callgrind-out-file="$work/callgrind.out" \
    redis-server --port "$port" --bind 127.0.0.1 --save "" --appendonly no --dir "$work" \
    </dev/null >"$work/redis.log" 2>"$work/valgrind.log" &
pid=$!
trap 'kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; rm -rf "$work"' EXIT
for _ in $(seq 200); do
    redis-cli -p "$port" ping >/dev/null 2>&1 && break
    sleep 0.1
done
# Warm every key, then count only the measured calls.
python3 scripts/script_cost.py "$port" $((keys / per + 100)) "$per" "$keys" 7
callgrind_control -i on "$pid" >/dev/null 2>&1
python3 scripts/script_cost.py "$port" "$calls" "$per" "$keys" 1
callgrind_control -i off "$pid" >/dev/null 2>&1
redis-cli -p "$port" shutdown nosave >/dev/null 2>&1 || true
wait "$pid" 2>/dev/null || true
callgrind_annotate --inclusive=yes "$work/callgrind.out" 2>/dev/null | awk -v n=$((calls * per)) -v per="$per" -v keys="$keys" '
    /PROGRAM TOTALS/ { gsub(",", "", $1); total = $1 }
    /evalGenericCommand/ && !script { gsub(",", "", $1); script = $1 }
    END { printf "%d counters per call, %d keys: %d instructions per counter in redis-server (%d in the script call)\n", per, keys, total / n, script / n }'
