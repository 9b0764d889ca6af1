#!/usr/bin/env bash
# Creates (or updates) the Python environment for tests/envoy, tests/http and
# tests/python_client in .venv at the repository root. Idempotent and quiet: it
# prints nothing unless something fails. The requirements are installed only
# when a requirements file (or the Python version) changed since the last
# successful install.
#
#   scripts/python-env.sh && .venv/bin/python -m pytest -q tests/envoy
set -euo pipefail
cd "$(dirname "$0")/.."

venv=.venv
requirements=(tests/envoy/requirements.txt tests/http/requirements.txt tests/python_client/requirements.txt)
stamp=$venv/.tollgate-requirements.sha256
log=$(mktemp)
trap 'rm -f "$log"' EXIT

fail() {
    echo "python-env.sh: $*" >&2
    if [ -s "$log" ]; then cat "$log" >&2; fi
    exit 1
}

command -v python3 >/dev/null 2>&1 || fail "python3 not found; install Python 3.9 or newer"

# A usable venv has a working interpreter and pip.
venv_ok() {
    [ -x "$venv/bin/python" ] && "$venv/bin/python" -m pip --version >/dev/null 2>&1
}

make_venv() {
    rm -rf "$venv"
    python3 -m venv "$venv" >"$log" 2>&1 && venv_ok
}

if ! venv_ok; then
    if ! make_venv; then
        # Debian and Ubuntu ship venv/ensurepip separately, in python3-venv.
        if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
            {
                apt-get update -qq &&
                    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv
            } >>"$log" 2>&1 || fail "could not install python3-venv with apt-get"
            make_venv || fail "python3 -m venv failed even after installing python3-venv"
        else
            fail "python3 -m venv failed; install the python3-venv package (as root: apt-get install -y python3-venv)"
        fi
    fi
fi

want="$( { cat "${requirements[@]}"; "$venv/bin/python" -c 'import sys; print(sys.version)'; } | sha256sum | cut -d' ' -f1)"
if [ "$(cat "$stamp" 2>/dev/null || true)" != "$want" ]; then
    rm -f "$stamp"
    PIP_DISABLE_PIP_VERSION_CHECK=1 "$venv/bin/python" -m pip install -q "${requirements[@]/#/-r}" >"$log" 2>&1 ||
        fail "pip install ${requirements[*]/#/-r } failed:"
    echo "$want" >"$stamp"
fi
