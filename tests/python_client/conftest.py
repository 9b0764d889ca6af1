"""Fixtures for the Python client example (examples/python): a real
`tollgate serve` process on an ephemeral 127.0.0.1 port and the tollgate.v1
stubs generated from proto/ into a temporary directory.

The process handling is shared with the other Python suites (tests/pyshared).
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import grpc
import pytest

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "tests" / "pyshared"))
from tollgate_process import TOLLGATE_BIN, TollgateProcess, wait_clear_of_hour_edge  # noqa: E402


def _load(name: str, path: Path):
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None, path
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


_example = _load("tollgate_client_example", REPO / "examples" / "python" / "tollgate_client.py")


@pytest.fixture(scope="session")
def example():
    """The example module, examples/python/tollgate_client.py."""
    return _example


@pytest.fixture(scope="session")
def stubs(tmp_path_factory):
    """(tollgate_pb2, tollgate_pb2_grpc), generated once per session."""
    return _example.load_stubs(REPO / "proto", tmp_path_factory.mktemp("stubs"))


@pytest.fixture
def tollgate(tmp_path: Path):
    """A factory: `tollgate(limits_yaml)` starts a server and returns
    `(address, channel)`. Every server started is killed in teardown, also
    when the test fails."""
    started = []

    def start(limits: str):
        if not TOLLGATE_BIN.is_file():
            pytest.fail(f"tollgate binary not found at {TOLLGATE_BIN}: run cargo build first", pytrace=False)
        limits_dir = tmp_path / f"limits-{len(started)}"
        limits_dir.mkdir()
        (limits_dir / "limits.yaml").write_text(limits)
        wait_clear_of_hour_edge()
        server = TollgateProcess(
            [str(TOLLGATE_BIN), "serve", "--limits", str(limits_dir),
             "--grpc-addr", "127.0.0.1:0", "--http-addr", "127.0.0.1:0"]
        )
        started.append([server, None])
        addr = server.wait_listening()
        channel = grpc.insecure_channel(addr)
        started[-1][1] = channel
        grpc.channel_ready_future(channel).result(timeout=10)
        return addr, channel

    try:
        yield start
    finally:
        for server, channel in started:
            if channel is not None:
                channel.close()
            server.kill()
