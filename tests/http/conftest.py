"""Fixtures for the HTTP API suite: a real `tollgate serve` process with its
HTTP API on an ephemeral 127.0.0.1 port, HS256 JWT auth, and tokens signed
here with PyJWT."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import jwt
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "pyshared"))
from tollgate_process import TOLLGATE_BIN, TollgateProcess  # noqa: E402

SECRET = "python-suite-hs256-secret-32-bytes!!"
AUDIENCE = "tollgate-http-tests"
LIMITS = """\
domain: api
descriptors:
  - key: user
    rate_limit: { unit: hour, requests_per_unit: 1000 }
"""


def token(sub: str, *, admin: bool = False, **claims) -> str:
    body = {"sub": sub, "aud": AUDIENCE, "iat": int(time.time()), "exp": int(time.time()) + 3600}
    if admin:
        body["scope"] = "usage:admin"
    body.update(claims)
    return jwt.encode(body, SECRET, algorithm="HS256")


class Server:
    def __init__(self, process: TollgateProcess) -> None:
        self.process = process
        self.grpc_addr = process.wait_listening()
        self.base_url = f"http://{process.http_addr()}"


def _server_factory(tmp_path: Path):
    """A factory: `start(requests_per_minute)` starts tollgate with JWT auth
    and the HTTP API's own limit; every server is killed in teardown."""
    started: list[TollgateProcess] = []

    def start(requests_per_minute: int = 0) -> Server:
        if not TOLLGATE_BIN.is_file():
            pytest.fail(f"tollgate binary not found at {TOLLGATE_BIN}: run cargo build first", pytrace=False)
        limits = tmp_path / f"limits-{len(started)}"
        limits.mkdir()
        (limits / "api.yaml").write_text(LIMITS)
        config = tmp_path / f"config-{len(started)}.yaml"
        config.write_text(
            f"auth:\n  jwt:\n    hs256_secret: {SECRET}\n    audience: {AUDIENCE}\n"
            f"http:\n  requests_per_minute: {requests_per_minute}\n"
        )
        process = TollgateProcess(
            [str(TOLLGATE_BIN), "serve", "--limits", str(limits), "--config", str(config),
             "--grpc-addr", "127.0.0.1:0", "--http-addr", "127.0.0.1:0"]
        )
        started.append(process)
        return Server(process)

    try:
        yield start
    finally:
        for process in started:
            process.kill()


@pytest.fixture
def start_server(tmp_path: Path):
    yield from _server_factory(tmp_path)


@pytest.fixture(scope="module")
def start_module_server(tmp_path_factory: pytest.TempPathFactory):
    yield from _server_factory(tmp_path_factory.mktemp("tollgate"))
