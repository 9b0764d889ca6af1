#!/usr/bin/env python3
"""Drives the counters script (src/store/redis/counters.lua) on one Redis,
as tollgate calls it: EVALSHA with N counters per call, the arguments packed
as tollgate packs them (8 little-endian doubles per counter), fixed windows
of one hour on keys drawn from a uniform set.

    script_cost.py PORT CALLS COUNTERS_PER_CALL KEYS SEED

Plain sockets and RESP, so it needs nothing beyond Python itself.
"""
import random
import socket
import struct
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parent.parent / "src/store/redis/counters.lua"
HOUR_US = 3_600_000_000


def encode(*args):
    out = [b"*%d\r\n" % len(args)]
    for a in args:
        if not isinstance(a, bytes):
            a = str(a).encode()
        out.append(b"$%d\r\n%s\r\n" % (len(a), a))
    return b"".join(out)


def read(f):
    line = f.readline()
    kind, rest = line[:1], line[1:-2]
    if kind == b"-":
        raise RuntimeError(rest.decode())
    if kind in b"+:":
        return rest
    if kind == b"$":
        n = int(rest)
        return None if n < 0 else f.read(n + 2)[:-2]
    if kind == b"*":
        return [read(f) for _ in range(int(rest))]
    raise RuntimeError(f"unexpected reply {line!r}")


def main():
    port, calls, per, keys, seed = (int(a) for a in sys.argv[1:6])
    conn = socket.create_connection(("127.0.0.1", port))
    f = conn.makefile("rb")
    conn.sendall(encode("SCRIPT", "LOAD", SCRIPT.read_bytes()))
    sha = read(f)
    rng = random.Random(seed)
    # algorithm, limit, window, burst, hits, charge always, dry run, refund of
    counter = struct.pack("<8d", 0, 1_000_000_000, HOUR_US, 0, 1, 1, 0, 0)
    for _ in range(calls):
        names = [f"tg2:bench:user_{rng.randrange(keys)}" for _ in range(per)]
        conn.sendall(encode("EVALSHA", sha, per, *names, counter * per))
        reply = read(f)
        if len(reply) != 40 * per:
            raise RuntimeError(f"{len(reply)} bytes for {per} counters")


if __name__ == "__main__":
    main()
