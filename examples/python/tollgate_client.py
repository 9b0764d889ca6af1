"""A tollgate client in Python (grpcio): check a rate limit, then record the
usage, both with retries, as the Rust client (`tollgate::client`) does.

The stubs are generated from the repository's proto/ with grpcio-tools at run
time into a temporary directory (never committed); `load_stubs()` does it:

    python -m grpc_tools.protoc -I proto -I <grpc_tools>/_proto \\
        --python_out=OUT --grpc_python_out=OUT proto/tollgate/v1/tollgate.proto

Run against a tollgate (`cargo run -- serve --limits examples/limits`):

    python examples/python/tollgate_client.py --target 127.0.0.1:8081 --user alice

Retries: an error with a retryable code (RESOURCE_EXHAUSTED, UNAVAILABLE) is
tried again after an exponential backoff (min_retry_delay *
retry_backoff_factor^n, plus up to `jitter` of it); INVALID_ARGUMENT and
other errors never are. An OVER_LIMIT answer is retried after at least the
server's retry_after, unless that is longer than max_retry_delay: then the
answer is returned at once. A usage event gets its usage_id (a UUID v4) once,
before the first attempt, so every retry sends the same id and the server
counts the event once.
"""

from __future__ import annotations

import argparse
import importlib
import random
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Callable, Iterable, Sequence

import grpc

REPO = Path(__file__).resolve().parents[2]
RETRY_CODES = (grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.UNAVAILABLE)
PERMANENT_CODES = (
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.NOT_FOUND,
    grpc.StatusCode.ALREADY_EXISTS,
    grpc.StatusCode.PERMISSION_DENIED,
    grpc.StatusCode.UNAUTHENTICATED,
    grpc.StatusCode.FAILED_PRECONDITION,
    grpc.StatusCode.OUT_OF_RANGE,
    grpc.StatusCode.UNIMPLEMENTED,
)


def load_stubs(proto_root: Path = REPO / "proto", out_dir: Path | None = None):
    """Generates the tollgate.v1 stubs into `out_dir` (a new temporary
    directory by default), puts it on sys.path and returns the modules
    `(tollgate_pb2, tollgate_pb2_grpc)`."""
    from grpc_tools import protoc

    out = Path(out_dir or tempfile.mkdtemp(prefix="tollgate-stubs-"))
    well_known = Path(protoc.__file__).parent / "_proto"
    proto = proto_root / "tollgate" / "v1" / "tollgate.proto"
    status = protoc.main(
        [
            "grpc_tools.protoc",
            f"-I{proto_root}",
            f"-I{well_known}",
            f"--python_out={out}",
            f"--grpc_python_out={out}",
            str(proto),
        ]
    )
    if status != 0:
        raise RuntimeError(f"protoc failed ({status}) on {proto}")
    if str(out) not in sys.path:
        sys.path.insert(0, str(out))
    importlib.invalidate_caches()
    pb2 = importlib.import_module("tollgate.v1.tollgate_pb2")
    pb2_grpc = importlib.import_module("tollgate.v1.tollgate_pb2_grpc")
    return pb2, pb2_grpc


def _seconds(d) -> float:
    return d.seconds + d.nanos / 1e9


class TollgateClient:
    """check_rate_limit / track_usage / get_usage_summary with retries.

    `sleep` is what waits between attempts (time.sleep by default); tests
    pass a recorder. After each check, `rate_limit_total`,
    `rate_limit_remaining` and `rate_limit_reset` hold the latest answer's
    binding limit (None when no limit applied).
    """

    def __init__(
        self,
        channel: grpc.Channel,
        stubs,
        *,
        api_key: str | None = None,
        auto_retry: bool = True,
        max_retries: int = 3,
        min_retry_delay: float = 0.1,
        retry_backoff_factor: float = 2.0,
        max_retry_delay: float = 30.0,
        retry_codes: Iterable[grpc.StatusCode] = RETRY_CODES,
        jitter: float = 0.1,
        timeout: float = 5.0,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.pb2, pb2_grpc = stubs
        self.stub = pb2_grpc.RateLimiterStub(channel)
        bad = [c for c in retry_codes if c in PERMANENT_CODES]
        if bad:
            raise ValueError(f"retry_codes: {bad[0].name} is permanent, a retry cannot succeed")
        if retry_backoff_factor < 1 or not 0 <= jitter <= 1:
            raise ValueError("retry_backoff_factor must be >= 1 and jitter between 0 and 1")
        self.metadata = [("authorization", f"Bearer {api_key}")] if api_key else []
        self.auto_retry = auto_retry
        self.max_retries = max_retries
        self.min_retry_delay = min_retry_delay
        self.retry_backoff_factor = retry_backoff_factor
        self.max_retry_delay = max_retry_delay
        self.retry_codes = tuple(retry_codes)
        self.jitter = jitter
        self.timeout = timeout
        self.sleep = sleep
        self.rate_limit_total: int | None = None
        self.rate_limit_remaining: int | None = None
        self.rate_limit_reset: float | None = None

    # -- public calls ------------------------------------------------------

    def check_rate_limit(self, domain: str, descriptors: Sequence[Sequence[tuple[str, str]]], hits: int = 1):
        """Asks whether the request is within its limits; returns the answer
        (OVER_LIMIT is an answer, not an exception)."""
        request = self.pb2.CheckRateLimitRequest(
            domain=domain,
            hits=hits,
            descriptors=[
                self.pb2.Descriptor(entries=[self.pb2.Entry(key=k, value=v) for k, v in d])
                for d in descriptors
            ],
        )
        return self._call(self.stub.CheckRateLimit, request, self._over_limit_wait)

    def track_usage(self, user_id: str, category: str, *, usage_id: str | None = None, **fields):
        """Records one usage event, exactly once: the id is made here (when
        not given) and sent unchanged on every retry."""
        request = self.pb2.TrackUsageRequest(
            usage_id=usage_id or str(uuid.uuid4()), user_id=user_id, category=category, **fields
        )
        return self._call(self.stub.TrackUsage, request)

    def get_usage_summary(self, user_id: str, days: int = 1):
        return self._call(self.stub.GetUsageSummary, self.pb2.GetUsageSummaryRequest(user_id=user_id, days=days))

    # -- retries -----------------------------------------------------------

    def _backoff(self, retry: int) -> float:
        return min(self.min_retry_delay * self.retry_backoff_factor**retry, self.max_retry_delay)

    def _delay(self, retry: int, retry_after: float = 0.0) -> float | None:
        if retry_after > self.max_retry_delay:
            return None  # do not park the caller for an hour: answer now
        base = max(self._backoff(retry), retry_after)
        return base + base * self.jitter * random.random()

    def _over_limit_wait(self, response) -> float | None:
        limited = [s for s in response.statuses if s.HasField("limit")]
        if limited:
            over = self.pb2.Code.CODE_OVER_LIMIT
            binding = min(limited, key=lambda s: (s.code != over, s.remaining))
            self.rate_limit_total = binding.limit.requests_per_unit
            self.rate_limit_remaining = binding.remaining
            self.rate_limit_reset = _seconds(binding.reset_after)
        else:
            self.rate_limit_total = self.rate_limit_remaining = self.rate_limit_reset = None
        if response.overall_code != self.pb2.Code.CODE_OVER_LIMIT:
            return None
        return max((_seconds(s.retry_after) for s in response.statuses if s.HasField("retry_after")), default=0.0)

    def _call(self, method, request, over_limit_wait=None):
        retry = 0
        while True:
            try:
                response = method(request, timeout=self.timeout, metadata=self.metadata)
            except grpc.RpcError as e:
                code = e.code()
                wait = None
                if self.auto_retry and code in self.retry_codes and code not in PERMANENT_CODES:
                    wait = self._delay(retry)
                if wait is None or retry >= self.max_retries:
                    raise
            else:
                after = over_limit_wait(response) if over_limit_wait else None
                wait = self._delay(retry, after) if (after is not None and self.auto_retry) else None
                if wait is None or retry >= self.max_retries:
                    return response
            retry += 1
            self.sleep(wait)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--target", default="127.0.0.1:8081", help="tollgate's gRPC address")
    parser.add_argument("--domain", default="example")
    parser.add_argument("--user", default="alice")
    parser.add_argument("--api-key", default=None)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="tollgate-stubs-") as out:
        return run(args, load_stubs(out_dir=Path(out)))


def run(args: argparse.Namespace, stubs) -> int:
    with grpc.insecure_channel(args.target) as channel:
        client = TollgateClient(channel, stubs, api_key=args.api_key)
        answer = client.check_rate_limit(args.domain, [[("user", args.user)]])
        allowed = answer.overall_code == stubs[0].Code.CODE_OK
        print(f"check: {'allowed' if allowed else 'over limit'}; "
              f"remaining={client.rate_limit_remaining} of {client.rate_limit_total}")
        if not allowed:
            return 1
        tracked = client.track_usage(
            args.user, "ai", operation="generate", success=True, status_code=200,
            metrics={"tokens": 42.0},
        )
        print(f"tracked: usage_id={tracked.usage_id} duplicate={tracked.duplicate}")
        summary = client.get_usage_summary(args.user)
        print(f"today: {summary.requests.total} request(s), tokens={summary.metrics['tokens']:g}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
