#!/usr/bin/env bash
# One benchmark run: the no-op baseline, tollgate on the memory store, on one
# Redis (with and without coalescing) and on three Redis shards, each under
# the same load from tollgate-bench, then one table with ratios to the
# baseline measured in the same run; then usage metering (TrackUsage and
# TrackUsageBatch) into memory, Redis and a durable PostgreSQL. Everything
# listens on 127.0.0.1 and is stopped on exit.
#
#   scripts/bench.sh                # defaults below
#   DURATION=10s WORKERS=1 scripts/bench.sh
#
# WORKERS is the server's --worker-threads (1 = current-thread runtime); the
# load tool gets the same. On a 2-core machine the two share the cores.
set -euo pipefail
cd "$(dirname "$0")/.."

DURATION=${DURATION:-5s}
WARMUP=${WARMUP:-1s}
WORKERS=${WORKERS:-1}
CONNECTIONS=${CONNECTIONS:-2}
IN_FLIGHT=${IN_FLIGHT:-32}

scripts/ensure-redis.sh
scripts/ensure-postgres.sh
cargo build --release --locked --bin tollgate --bin tollgate-bench --example memory_footprint >/dev/null 2>&1 ||
    cargo build --release --locked --bin tollgate --bin tollgate-bench --example memory_footprint
bin=target/release
work=$(mktemp -d)
# Servers are started inside command substitutions (subshells), so their pids
# are collected in a file rather than an array.
cleanup() {
    if [ -f "$work/pids" ]; then
        while read -r p; do kill "$p" 2>/dev/null || true; done <"$work/pids"
    fi
    # PostgreSQL last, with a fast shutdown (SIGINT), once its clients are gone.
    if [ -f "$work/pg.pid" ]; then
        pg=$(cat "$work/pg.pid")
        kill -INT "$pg" 2>/dev/null || true
        for _ in $(seq 100); do kill -0 "$pg" 2>/dev/null || break; sleep 0.05; done
    fi
    rm -rf "$work"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

start_redis() {
    local port dir
    port=$(free_port)
    dir="$work/redis-$port"
    mkdir -p "$dir"
    # Its output must not hold the command substitution's pipe open.
    redis-server --port "$port" --bind 127.0.0.1 --save "" --appendonly no --dir "$dir" --logfile "$dir/log" \
        </dev/null >/dev/null 2>&1 &
    echo $! >>"$work/pids"
    for _ in $(seq 100); do
        redis-cli -p "$port" ping >/dev/null 2>&1 && { echo "$port"; return; }
        sleep 0.05
    done
    echo "redis on $port did not start" >&2
    exit 1
}

mkdir -p "$work/limits"
cat >"$work/limits/bench.yaml" <<'YAML'
domain: bench
descriptors:
  - key: user
    rate_limit: { unit: hour, requests_per_unit: 1000000000 }
YAML

r1=$(start_redis)
r3a=$(start_redis); r3b=$(start_redis); r3c=$(start_redis)
printf 'store:\n  redis:\n    timeout_ms: 200\n    shards:\n      - { name: one, url: "redis://127.0.0.1:%s/0" }\n' "$r1" >"$work/redis1.yaml"
printf 'store:\n  redis:\n    timeout_ms: 200\n    coalesce: false\n    shards:\n      - { name: one, url: "redis://127.0.0.1:%s/0" }\n' "$r1" >"$work/redis1-each.yaml"
printf 'store:\n  redis:\n    timeout_ms: 200\n    shards:\n' >"$work/redis3.yaml"
for p in "$r3a" "$r3b" "$r3c"; do
    printf '      - { name: s%s, url: "redis://127.0.0.1:%s/0" }\n' "$p" "$p" >>"$work/redis3.yaml"
done

# Starts a server with the given extra flags; prints its gRPC URL.
start_tollgate() {
    local log="$work/tollgate-$RANDOM.log"
    RUST_LOG=warn,tollgate=info "$bin/tollgate" serve --limits "$work/limits" --grpc-addr 127.0.0.1:0 --http-addr off \
        --worker-threads "$WORKERS" "$@" </dev/null >/dev/null 2>"$log" &
    echo $! >>"$work/pids"
    for _ in $(seq 200); do
        addr=$(grep -o 'grpc_addr=[0-9.:]*' "$log" | head -1 | cut -d= -f2 || true)
        [ -n "$addr" ] && { echo "http://$addr $!"; return; }
        sleep 0.05
    done
    echo "tollgate did not start: $(cat "$log")" >&2
    exit 1
}

load() { # label url api keys [extra flags]
    local label=$1 url=$2 api=$3 keys=$4
    shift 4
    "$bin/tollgate-bench" --target "$url" --api "$api" --keys "$keys" --duration "$DURATION" --warmup "$WARMUP" \
        --connections "$CONNECTIONS" --in-flight "$IN_FLIGHT" --threads "$WORKERS" --label "$label" --json "$@"
}

evalsha_calls() { redis-cli -p "$1" info commandstats | grep -o 'cmdstat_evalsha:calls=[0-9]*' | cut -d= -f2 || echo 0; }

results="$work/results.jsonl"
ROUNDS=${ROUNDS:-3}

# All servers up at once (idle unless loaded), then round-robin rounds, so
# drift on a shared machine hits every target alike; the table takes each
# target's median round.
read -r url_noop _ < <(start_tollgate --noop)
read -r url_memory _ < <(start_tollgate)
read -r url_redis1 _ < <(start_tollgate --config "$work/redis1.yaml")
read -r url_redis1each _ < <(start_tollgate --config "$work/redis1-each.yaml")
read -r url_redis3 _ < <(start_tollgate --config "$work/redis3.yaml")
declare -A urls=([noop]=$url_noop [memory]=$url_memory [redis-1]=$url_redis1 [redis-1-each]=$url_redis1each [redis-3]=$url_redis3)

for round in $(seq "$ROUNDS"); do
    for api in check envoy; do
        for keys in hot uniform:10000; do
            for name in noop memory redis-1 redis-1-each redis-3; do
                for p in $r1 $r3a $r3b $r3c; do redis-cli -p "$p" config resetstat >/dev/null; done
                line=$(load "$name" "${urls[$name]}" "$api" "$keys") || true
                calls=0
                case $name in
                    redis-1 | redis-1-each) calls=$(evalsha_calls "$r1") ;;
                    redis-3) calls=$(( $(evalsha_calls "$r3a") + $(evalsha_calls "$r3b") + $(evalsha_calls "$r3c") )) ;;
                esac
                echo "${line%\}},\"redis_calls\":${calls:-0},\"round\":$round}" >>"$results"
            done
        done
    done
done

# Latency at half the baseline's peak: the same fixed rate on noop and memory.
half=$(python3 -c '
import json, statistics, sys
r = [json.loads(l) for l in open(sys.argv[1])]
print(int(statistics.median(x["rps"] for x in r if x["label"] == "noop" and x["api"] == "check" and x["keys"] == "Hot") / 2))' "$results")
for round in $(seq "$ROUNDS"); do
    for name in noop memory; do
        line=$(load "$name@half" "${urls[$name]}" check hot --rate "$half")
        echo "${line%\}},\"redis_calls\":0,\"round\":$round}" >>"$results"
    done
done

# Usage metering: events per second into memory, Redis and PostgreSQL with
# durable commits (fsync and synchronous_commit on, the defaults), one
# private cluster started here like the tests do.
start_postgres() {
    local pgbin port
    pgbin=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1)
    [ -n "$pgbin" ] || pgbin=$(dirname "$(command -v initdb)")
    mkdir -p "$work/pg"
    local as=()
    if [ "$(id -u)" = 0 ]; then
        # PostgreSQL refuses to run as root; setpriv execs, so $! is postgres.
        chmod 755 "$work"
        chown postgres "$work/pg"
        as=(setpriv --reuid=postgres --regid=postgres --init-groups)
    fi
    "${as[@]}" "$pgbin/initdb" -D "$work/pg" -U tollgate --auth=trust >"$work/initdb.log" 2>&1
    port=$(free_port)
    "${as[@]}" "$pgbin/postgres" -D "$work/pg" -p "$port" -k "$work/pg" -c listen_addresses=127.0.0.1 \
        </dev/null >"$work/pg.log" 2>&1 &
    echo $! >"$work/pg.pid"
    for _ in $(seq 200); do
        "$pgbin/psql" -h 127.0.0.1 -p "$port" -U tollgate -d postgres -qAtc 'select 1' >/dev/null 2>&1 && {
            echo "$port"
            return
        }
        sleep 0.05
    done
    echo "postgres did not start: $(cat "$work/pg.log")" >&2
    exit 1
}
pgport=$(start_postgres)
printf 'usage:\n  store: redis\nstore:\n  redis:\n    shards:\n      - { name: one, url: "redis://127.0.0.1:%s/0" }\n' "$r1" >"$work/usage-redis.yaml"
read -r url_usage_redis _ < <(start_tollgate --config "$work/usage-redis.yaml")
read -r url_usage_pg _ < <(start_tollgate --postgres-url "postgres://tollgate@127.0.0.1:$pgport/postgres")
declare -A usage_urls=([memory]=$url_memory [redis]=$url_usage_redis [postgres]=$url_usage_pg)
for round in $(seq "$ROUNDS"); do
    for api in track-batch track; do
        for name in memory redis postgres; do
            # A run with errors still reports (they show in the table).
            line=$(load "usage:$name" "${usage_urls[$name]}" "$api" uniform:1000 --batch 100) || true
            echo "${line%\}},\"redis_calls\":0,\"round\":$round}" >>"$results"
        done
    done
done

footprint=$("$bin/../release/examples/memory_footprint" 1000000)

python3 - "$results" "$WORKERS" "$footprint" "$ROUNDS" <<'PY'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
def median_row(group):
    group = sorted(group, key=lambda r: r["rps"])
    return group[len(group) // 2]
by = {}
for r in rows:
    by.setdefault((r["label"], r["api"], r["keys"]), []).append(r)
med = {k: median_row(v) for k, v in by.items()}
first = rows[0]
print(f"server and load tool: --worker-threads {sys.argv[2]} each, same machine; "
      f"{first['connections']} connections x {first['in_flight']} in flight; median of {sys.argv[4]} rounds")
print(f"{'target':12} {'api':6} {'keys':16} {'req/s':>9} {'x noop':>7} {'p50 us':>7} {'p99 us':>7} {'redis cmd/decision':>19} {'errors':>6}")
for (label, api, keys), r in med.items():
    if "@half" in label or label.startswith("usage:"):
        continue
    b = med.get(("noop", api, keys))
    ratio = r["rps"] / b["rps"] if b else float("nan")
    per = f"{r['redis_calls'] / r['all_requests']:.3f}" if r["redis_calls"] else "-"
    print(f"{label:12} {api:6} {keys:16} {r['rps']:9.0f} {ratio:7.2f} {r['p50_us']:7d} {r['p99_us']:7d} {per:>19} {r['errors']:6d}")
n, m = med.get(("noop@half", "check", "Hot")), med.get(("memory@half", "check", "Hot"))
if n and m:
    p99 = lambda label: statistics.median(r["p99_us"] for r in by[(label, "check", "Hot")])
    print(f"at half the baseline's peak ({n['rate']} req/s): median p99 noop {p99('noop@half'):.0f} us, "
          f"memory {p99('memory@half'):.0f} us ({p99('memory@half') / max(p99('noop@half'), 1):.2f}x)")
usage = [(k, r) for k, r in med.items() if k[0].startswith("usage:")]
if usage:
    print(f"usage metering ({first['connections']} connections x {first['in_flight']} in flight; batches of 100 events):")
    print(f"{'store':10} {'api':12} {'events/s':>9} {'p50 us':>7} {'p99 us':>7} {'errors':>6}")
    for (label, api, _), r in usage:
        print(f"{label[6:]:10} {api:12} {r['events_per_second']:9.0f} {r['p50_us']:7d} {r['p99_us']:7d} {r['errors']:6d}")
print(sys.argv[3])
PY
