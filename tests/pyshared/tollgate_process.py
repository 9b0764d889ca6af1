"""A real `tollgate serve` child process for the Python suites (tests/envoy,
tests/http): started in its own process group, its stderr drained and kept
for failure messages, its addresses read from its log, killed on teardown.

The binary is `$TOLLGATE_BIN`, by default `<repo>/target/debug/tollgate`
(`cargo build` makes it).
"""

from __future__ import annotations

import os
import queue
import re
import signal
import subprocess
import threading
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
TOLLGATE_BIN = Path(os.environ.get("TOLLGATE_BIN", REPO / "target" / "debug" / "tollgate"))

STARTUP_TIMEOUT_S = 20.0
ANSI_ESCAPE = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
LISTENING = re.compile(r"grpc_addr=\"?(\d+\.\d+\.\d+\.\d+):(\d+)")
HTTP_LISTENING = re.compile(r"http_addr=\"?(\d+\.\d+\.\d+\.\d+):(\d+)")
# The Envoy suite's counting tests use `hour`/`day` windows. Hour and day windows (and week,
# month, year: all multiples of a day from the epoch) end on a full hour, so a
# server is never started this close to the end of an hour: the counters of a
# test cannot be reset by a window edge while it runs.
WINDOW_EDGE_MARGIN_S = 5.0


class TollgateProcess:
    """One `tollgate serve` child process and the stderr it wrote."""

    def __init__(self, args: list[str]) -> None:
        self.args = args
        self.lines: list[str] = []
        self._lock = threading.Lock()
        self._events: queue.Queue[str | None] = queue.Queue()
        env = {k: v for k, v in os.environ.items() if not k.startswith("TOLLGATE_")}
        env["RUST_LOG"] = "info"
        env["NO_COLOR"] = "1"
        self.proc = subprocess.Popen(
            args,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            env=env,
            # Its own process group, so kill() also stops anything it started
            # (e.g. when TOLLGATE_BIN is a wrapper script).
            start_new_session=True,
            text=True,
            errors="replace",
        )
        # Drains stderr for the whole life of the process, so the server never
        # blocks on a full pipe, and keeps every line for failure messages.
        self._reader = threading.Thread(target=self._drain, name="tollgate-stderr", daemon=True)
        self._reader.start()

    def _drain(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            line = ANSI_ESCAPE.sub("", line.rstrip("\n"))
            with self._lock:
                self.lines.append(line)
            self._events.put(line)
        self._events.put(None)  # EOF: the process closed stderr (it exited)

    def stderr(self) -> str:
        with self._lock:
            return "\n".join(self.lines)

    def wait_listening(self, timeout: float = STARTUP_TIMEOUT_S) -> str:
        """Returns `IP:PORT` from the first stderr line with `grpc_addr=`."""
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                pytest.fail(
                    f"tollgate did not log a `grpc_addr=` line within {timeout:.0f} s\n"
                    f"command: {' '.join(self.args)}\nstderr:\n{self.stderr()}",
                    pytrace=False,
                )
            try:
                line = self._events.get(timeout=min(left, 0.5))
            except queue.Empty:
                continue
            if line is None:
                code = self.proc.wait(timeout=5)
                pytest.fail(
                    f"tollgate exited (status {code}) before listening\n"
                    f"command: {' '.join(self.args)}\nstderr:\n{self.stderr()}",
                    pytrace=False,
                )
            m = LISTENING.search(line)
            if m:
                ip, port = m.group(1), int(m.group(2))
                assert ip == "127.0.0.1", f"tollgate listens on {ip}, expected 127.0.0.1: {line}"
                assert 0 < port < 65536, line
                return f"{ip}:{port}"

    def http_addr(self) -> str:
        """`IP:PORT` of the HTTP API, logged before the gRPC line (so call
        this after `wait_listening`)."""
        with self._lock:
            for line in self.lines:
                m = HTTP_LISTENING.search(line)
                if m:
                    return f"{m.group(1)}:{m.group(2)}"
        pytest.fail(f"tollgate logged no `http_addr=` line\nstderr:\n{self.stderr()}", pytrace=False)

    def kill(self) -> None:
        # While the process is not reaped its pid (= its group id) is ours.
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        try:
            self.proc.wait(timeout=10)
        finally:
            self._reader.join(timeout=5)


def wait_clear_of_hour_edge() -> None:
    """Waits out the last seconds of an hour, so hour (and longer) windows
    cannot reset while a counting test runs."""
    left = 3600.0 - time.time() % 3600.0
    if left < WINDOW_EDGE_MARGIN_S:
        time.sleep(left + 0.2)
