#!/usr/bin/env bash
# Makes sure `redis-server` and `redis-cli` are on PATH for the Redis
# integration tests (tests/common/redis.rs). Idempotent and quiet: it prints
# nothing unless something fails.
#
# The tests start their own servers on ephemeral loopback ports and never use
# a system service, so when this script installs Debian's packages it keeps
# their service from starting (policy-rc.d), and it never touches a server that
# is already running (on 6379 or anywhere else).
#
#   scripts/ensure-redis.sh && cargo test
set -euo pipefail

log=$(mktemp)
policy=/usr/sbin/policy-rc.d
made_policy=
cleanup() {
    rm -f "$log"
    if [ -n "$made_policy" ]; then rm -f "$policy"; fi
}
trap cleanup EXIT

fail() {
    echo "ensure-redis.sh: $*" >&2
    if [ -s "$log" ]; then cat "$log" >&2; fi
    exit 1
}

have_redis() {
    command -v redis-server >/dev/null 2>&1 && command -v redis-cli >/dev/null 2>&1
}

if have_redis; then
    exit 0
fi

if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then
    fail "redis-server and redis-cli are needed by the Redis tests but are not on PATH;" \
        "install them (Debian/Ubuntu, as root: apt-get install -y redis-server redis-tools)"
fi

# Debian's maintainer scripts start the service through invoke-rc.d, which asks
# policy-rc.d first: exit code 101 means "do not start". Only add one for the
# install if there is none, and remove it afterwards (trap above).
if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\nexit 101\n' >"$policy"
    chmod 755 "$policy"
    made_policy=1
fi

{
    apt-get update -qq &&
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server redis-tools
} >"$log" 2>&1 || fail "could not install redis-server and redis-tools with apt-get:"

have_redis || fail "redis-server or redis-cli still not on PATH after installing redis-server and redis-tools"
