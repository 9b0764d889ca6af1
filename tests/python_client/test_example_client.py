"""The Python client example (examples/python/tollgate_client.py) against the
real tollgate binary: check + track, retries that honour retry_after, an event
counted once over retries, INVALID_ARGUMENT never retried."""

from __future__ import annotations

import os
import subprocess
import sys

from pathlib import Path

import grpc
import pytest

REPO = Path(__file__).resolve().parents[2]

LIMITS = """
domain: py
descriptors:
  - key: user
    rate_limit: { unit: hour, requests_per_unit: 2 }
"""


class LostAnswers(grpc.UnaryUnaryClientInterceptor):
    """Lets the next `n` calls reach the server, then reports UNAVAILABLE:
    the work is done, the answer lost, as when a connection drops."""

    def __init__(self) -> None:
        self.n = 0
        self.calls = 0

    def intercept_unary_unary(self, continuation, details, request):
        self.calls += 1
        outcome = continuation(details, request)
        outcome.result()  # the server has answered
        if self.n > 0:
            self.n -= 1
            raise Unavailable()
        return outcome


class Unavailable(grpc.RpcError):
    def code(self):
        return grpc.StatusCode.UNAVAILABLE

    def details(self):
        return "answer lost"


def test_check_then_track_with_retries_counts_the_event_once(tollgate, stubs, example):
    pb2, _ = stubs
    _, channel = tollgate(LIMITS)
    lost = LostAnswers()
    waits: list[float] = []
    client = example.TollgateClient(
        grpc.intercept_channel(channel, lost), stubs, jitter=0.0, sleep=waits.append
    )

    answer = client.check_rate_limit("py", [[("user", "ann")]])
    assert answer.overall_code == pb2.Code.CODE_OK
    assert (client.rate_limit_total, client.rate_limit_remaining) == (2, 1)
    assert 0 < client.rate_limit_reset <= 3600

    lost.n = 2
    calls = lost.calls
    tracked = client.track_usage("ann", "ai", success=True, metrics={"tokens": 7.0})
    assert lost.calls - calls == 3
    assert waits == [0.1, 0.2], "exponential backoff"
    assert tracked.duplicate, "the retries sent the id the server already had"

    summary = client.get_usage_summary("ann")
    assert summary.requests.total == 1
    assert summary.metrics["tokens"] == 7.0


def test_over_limit_waits_at_least_retry_after_and_stops_after_max_retries(tollgate, stubs, example):
    pb2, _ = stubs
    _, channel = tollgate(LIMITS)
    waits: list[float] = []
    client = example.TollgateClient(
        channel, stubs, max_retries=2, max_retry_delay=7200.0, jitter=0.1, sleep=waits.append
    )
    for _ in range(2):
        assert client.check_rate_limit("py", [[("user", "bo")]]).overall_code == pb2.Code.CODE_OK
    answer = client.check_rate_limit("py", [[("user", "bo")]])
    assert answer.overall_code == pb2.Code.CODE_OVER_LIMIT
    retry_after = answer.statuses[0].retry_after.seconds + answer.statuses[0].retry_after.nanos / 1e9
    assert len(waits) == 2
    # The clock moved on a little between the answers: allow a second.
    assert all(retry_after - 1 <= w <= (retry_after + 1) * 1.1 for w in waits), (waits, retry_after)
    assert client.rate_limit_remaining == 0

    # Longer than max_retry_delay: the answer comes back at once.
    quick = example.TollgateClient(channel, stubs, max_retry_delay=30.0, sleep=waits.append)
    assert quick.check_rate_limit("py", [[("user", "bo")]]).overall_code == pb2.Code.CODE_OVER_LIMIT
    assert len(waits) == 2


def test_invalid_argument_is_never_retried(tollgate, stubs, example):
    _, channel = tollgate(LIMITS)
    lost = LostAnswers()
    waits: list[float] = []
    client = example.TollgateClient(grpc.intercept_channel(channel, lost), stubs, sleep=waits.append)
    with pytest.raises(grpc.RpcError) as e:
        client.check_rate_limit("", [[("user", "cy")]])
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "domain" in e.value.details()
    assert (lost.calls, waits) == (1, [])
    with pytest.raises(ValueError, match="INVALID_ARGUMENT"):
        example.TollgateClient(channel, stubs, retry_codes=[grpc.StatusCode.INVALID_ARGUMENT])


def test_the_example_runs_as_a_script(tollgate):
    addr, _ = tollgate(LIMITS.replace("domain: py", "domain: example"))
    run = subprocess.run(
        [sys.executable, str(REPO / "examples" / "python" / "tollgate_client.py"), "--target", addr, "--user", "dee"],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"},
    )
    assert run.returncode == 0, run.stderr
    assert "check: allowed; remaining=1 of 2" in run.stdout
    assert "duplicate=False" in run.stdout
    assert "today: 1 request(s), tokens=42" in run.stdout
