"""Fixtures for the Envoy rate-limit API suite: a real `tollgate serve` process
on an ephemeral 127.0.0.1 port, called through the official Envoy stubs from
the `xds-protos` package (never tollgate's own proto copy).

The process helper is shared with tests/http (tests/pyshared).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import grpc
import pytest
from envoy.service.ratelimit.v3 import rls_pb2_grpc

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "pyshared"))
from tollgate_process import TOLLGATE_BIN, TollgateProcess, wait_clear_of_hour_edge  # noqa: E402


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item, call):
    # Lets the fixture teardown know whether the test failed.
    report = yield
    setattr(item, f"_tollgate_report_{report.when}", report)
    return report


@pytest.fixture
def tollgate(tmp_path: Path, request: pytest.FixtureRequest):
    """A factory: `tollgate(limits, config=None)` starts a server and returns a
    `rls_pb2_grpc.RateLimitServiceStub` connected to it.

    `limits` is the YAML of one limits file (`limits.yaml`) or a dict
    `{file name: YAML}`; `config` is the YAML of the service config file.
    Every server started is killed in teardown, also when the test fails; if it
    failed, the servers' stderr is printed.
    """
    started: list[tuple[TollgateProcess, grpc.Channel | None]] = []

    def start(limits: str | dict[str, str], config: str | None = None):
        if not TOLLGATE_BIN.is_file():
            pytest.fail(
                f"tollgate binary not found at {TOLLGATE_BIN}: run cargo build first "
                "(or set TOLLGATE_BIN)",
                pytrace=False,
            )
        n = len(started)
        limits_dir = tmp_path / f"limits-{n}"
        limits_dir.mkdir()
        files = {"limits.yaml": limits} if isinstance(limits, str) else limits
        for name, text in files.items():
            (limits_dir / name).write_text(text)
        args = [str(TOLLGATE_BIN), "serve", "--limits", str(limits_dir)]
        if config is not None:
            config_file = tmp_path / f"tollgate-{n}.yaml"
            config_file.write_text(config)
            args += ["--config", str(config_file)]
        args += ["--grpc-addr", "127.0.0.1:0", "--http-addr", "127.0.0.1:0"]

        wait_clear_of_hour_edge()
        server = TollgateProcess(args)
        started.append((server, None))  # registered at once: teardown kills it
        addr = server.wait_listening()
        channel = grpc.insecure_channel(addr)
        started[-1] = (server, channel)
        try:
            grpc.channel_ready_future(channel).result(timeout=10)
        except grpc.FutureTimeoutError:
            pytest.fail(
                f"cannot connect to tollgate at {addr}\nstderr:\n{server.stderr()}",
                pytrace=False,
            )
        return rls_pb2_grpc.RateLimitServiceStub(channel)

    try:
        yield start
    finally:
        failed = any(
            getattr(getattr(request.node, f"_tollgate_report_{when}", None), "failed", False)
            for when in ("setup", "call")
        )
        for server, channel in started:
            if channel is not None:
                channel.close()
            server.kill()
            if failed:
                print(f"--- tollgate stderr ({' '.join(server.args)}) ---\n{server.stderr()}")
