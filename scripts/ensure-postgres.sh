#!/usr/bin/env bash
# Makes sure PostgreSQL's programs (initdb, postgres, psql) are installed for
# the PostgreSQL integration tests (tests/common/postgres.rs), which look for
# them where Debian keeps them, off PATH, in /usr/lib/postgresql/*/bin (else on
# PATH). Idempotent and quiet: it prints nothing unless something fails.
#
# The tests initdb and start their own private clusters on ephemeral loopback
# ports and never use a system service, so when this script installs Debian's
# packages it keeps their cluster service from starting (policy-rc.d), and it
# never touches a server that is already running (on 5432 or anywhere else).
#
#   scripts/ensure-postgres.sh && cargo test
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
    echo "ensure-postgres.sh: $*" >&2
    if [ -s "$log" ]; then cat "$log" >&2; fi
    exit 1
}

# The same test as the Rust helper's: all three programs in one directory.
have_postgres() {
    local dir
    for dir in /usr/lib/postgresql/*/bin; do
        if [ -x "$dir/initdb" ] && [ -x "$dir/postgres" ] && [ -x "$dir/psql" ]; then
            return 0
        fi
    done
    for dir in $(command -v initdb 2>/dev/null | xargs -r dirname); do
        if [ -x "$dir/postgres" ] && [ -x "$dir/psql" ]; then
            return 0
        fi
    done
    return 1
}

if have_postgres; then
    exit 0
fi

if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then
    fail "initdb, postgres and psql are needed by the PostgreSQL tests but are not in" \
        "/usr/lib/postgresql/*/bin or on PATH; install them" \
        "(Debian/Ubuntu, as root: apt-get install -y postgresql)"
fi

# Debian's maintainer scripts start the cluster service through invoke-rc.d,
# which asks policy-rc.d first: exit code 101 means "do not start". Only add
# one for the install if there is none, and remove it afterwards (trap above).
if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\nexit 101\n' >"$policy"
    chmod 755 "$policy"
    made_policy=1
fi

{
    apt-get update -qq &&
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql
} >"$log" 2>&1 || fail "could not install postgresql with apt-get:"

have_postgres || fail "initdb, postgres or psql still not in /usr/lib/postgresql/*/bin" \
    "or on PATH after installing postgresql"
