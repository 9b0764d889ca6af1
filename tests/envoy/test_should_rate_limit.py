"""`envoy.service.ratelimit.v3.RateLimitService/ShouldRateLimit` against a real
tollgate process, through the official Envoy stubs (`xds-protos`).

Tollgate is a drop-in replacement for envoyproxy/ratelimit, so every expected
answer here is the reference service's answer for the same limits file and
request. Windows are aligned to real time: tests that count use `hour` or
`day` windows (the `tollgate` fixture never starts a server within seconds of
the end of an hour), and `duration_until_reset` is checked against the clock.
"""

from __future__ import annotations

import textwrap
import time

import grpc
import pytest
from envoy.extensions.common.ratelimit.v3 import ratelimit_pb2
from envoy.service.ratelimit.v3 import rls_pb2
from envoy.type.v3 import ratelimit_unit_pb2
from google.protobuf import wrappers_pb2

Response = rls_pb2.RateLimitResponse
RL = Response.RateLimit
OK = "OK"
OVER = "OVER_LIMIT"
MAX_U32 = 4294967295

# Seconds per window, by the RLS unit name (the reference's UnitToDivider).
DIVIDER = {
    "SECOND": 1,
    "MINUTE": 60,
    "HOUR": 3600,
    "DAY": 86400,
    "WEEK": 7 * 86400,
    "MONTH": 30 * 86400,
    "YEAR": 365 * 86400,
}
# envoy.type.v3.RateLimitUnit, for RateLimitDescriptor.limit overrides.
OVERRIDE_UNIT = {
    "SECOND": ratelimit_unit_pb2.SECOND,
    "MINUTE": ratelimit_unit_pb2.MINUTE,
    "HOUR": ratelimit_unit_pb2.HOUR,
    "DAY": ratelimit_unit_pb2.DAY,
}

RESPONSE_HEADERS_ON = """
envoy:
  response_headers:
    enabled: true
"""


def limits(yaml: str) -> str:
    return textwrap.dedent(yaml).lstrip()


def desc(*entries: str, hits: int | None = None, limit: tuple[int, str] | None = None):
    """A RateLimitDescriptor from `"key=value"` entries, with an optional
    per-descriptor `hits_addend` and `limit` override `(requests_per_unit, unit)`."""
    d = ratelimit_pb2.RateLimitDescriptor()
    for entry in entries:
        key, _, value = entry.partition("=")
        d.entries.add(key=key, value=value)
    if hits is not None:
        d.hits_addend.CopyFrom(wrappers_pb2.UInt64Value(value=hits))
    if limit is not None:
        d.limit.requests_per_unit = limit[0]
        d.limit.unit = OVERRIDE_UNIT[limit[1]]
    return d


def request(domain: str, *descriptors, hits_addend: int = 0):
    return rls_pb2.RateLimitRequest(
        domain=domain, descriptors=list(descriptors), hits_addend=hits_addend
    )


def summary(status) -> tuple:
    """`(code, (requests_per_unit, unit, name) or None, limit_remaining)`."""
    limit = None
    if status.HasField("current_limit"):
        cl = status.current_limit
        limit = (cl.requests_per_unit, RL.Unit.Name(cl.unit), cl.name)
    return (Response.Code.Name(status.code), limit, status.limit_remaining)


def circular_distance(a: int, b: int, divider: int) -> int:
    d = (a - b) % divider
    return min(d, divider - d)


def reset_seconds(divider: int, t: float) -> int:
    """The reference's CalculateReset: `divider - now % divider`, in 1..divider."""
    return divider - int(t) % divider


def assert_reset(seconds: int, divider: int, t0: float, t1: float) -> None:
    assert 1 <= seconds <= divider, f"reset {seconds} s outside 1..{divider}"
    # Within 2 s of the value computed from our clock around the call; the
    # distance wraps around the window, so a call right at an edge (expected
    # `divider`, answered 1, or the reverse) is handled.
    dist = min(circular_distance(seconds, reset_seconds(divider, t), divider) for t in (t0, t1))
    assert dist <= 2, (
        f"reset {seconds} s, expected about {reset_seconds(divider, t0)} s "
        f"({divider} - now % {divider})"
    )


class Envoy:
    """A ShouldRateLimit client that remembers when its last call was made."""

    def __init__(self, stub) -> None:
        self.stub = stub
        self.t0 = self.t1 = 0.0

    def send(self, req):
        self.t0 = time.time()
        try:
            return self.stub.ShouldRateLimit(req, timeout=10)
        finally:
            self.t1 = time.time()

    def check(self, domain: str, *descriptors, hits_addend: int = 0):
        return self.send(request(domain, *descriptors, hits_addend=hits_addend))

    def error(self, req) -> grpc.RpcError:
        with pytest.raises(grpc.RpcError) as e:
            self.send(req)
        return e.value

    def expect(self, resp, overall: str, *statuses: tuple) -> None:
        """Checks the overall code and every status, in request order. A status
        with a limit must carry duration_until_reset; one without must not."""
        got = (Response.Code.Name(resp.overall_code), [summary(s) for s in resp.statuses])
        want = (overall, list(statuses))
        assert got == want, (
            "(overall_code, [(code, current_limit, limit_remaining), ...]) differs\n"
            f"  got:  {got}\n  want: {want}"
        )
        for status in resp.statuses:
            if status.HasField("current_limit"):
                assert status.HasField("duration_until_reset"), summary(status)
                d = status.duration_until_reset
                assert d.nanos == 0, f"duration_until_reset is not whole seconds: {d}"
                divider = DIVIDER[RL.Unit.Name(status.current_limit.unit)]
                assert_reset(d.seconds, divider, self.t0, self.t1)
            else:
                assert not status.HasField("duration_until_reset"), (
                    f"duration_until_reset set without a limit: {status}"
                )

    def headers(self, resp) -> list[tuple[str, str]]:
        return [(h.key, h.value) for h in resp.response_headers_to_add]


@pytest.fixture
def envoy(tollgate):
    """`envoy(limits_yaml, config_yaml=None)` starts tollgate and returns an Envoy client."""

    def start(limits_yaml: str, config: str | None = None) -> Envoy:
        return Envoy(tollgate(limits(limits_yaml), config))

    return start


# 1. Statuses, counting, duration_until_reset -------------------------------


def test_limit_counts_down_then_goes_over(envoy):
    c = envoy(
        """
        domain: d
        descriptors:
          - key: user
            rate_limit: { unit: hour, requests_per_unit: 3, name: per_user }
        """
    )
    limit = (3, "HOUR", "per_user")
    for remaining in (2, 1, 0):
        c.expect(c.check("d", desc("user=alice")), OK, (OK, limit, remaining))
    c.expect(c.check("d", desc("user=alice")), OVER, (OVER, limit, 0))
    c.expect(c.check("d", desc("user=alice")), OVER, (OVER, limit, 0))


def test_statuses_follow_request_order_and_any_over_makes_overall_over(envoy):
    c = envoy(
        """
        domain: d
        descriptors:
          - key: user
            rate_limit: { unit: hour, requests_per_unit: 3, name: per_user }
          - key: path
            rate_limit: { unit: day, requests_per_unit: 5, name: per_path }
          - key: blocked
            rate_limit: { unit: hour, requests_per_unit: 0, name: blocked }
        """
    )
    user = (3, "HOUR", "per_user")
    path = (5, "DAY", "per_path")
    resp = c.check("d", desc("user=a"), desc("path=/x"))
    c.expect(resp, OK, (OK, user, 2), (OK, path, 4))
    resp = c.check("d", desc("path=/x"), desc("user=a"))
    c.expect(resp, OK, (OK, path, 3), (OK, user, 1))
    resp = c.check("d", desc("user=b"), desc("blocked=1"), desc("path=/y"))
    c.expect(resp, OVER, (OK, user, 2), (OVER, (0, "HOUR", "blocked"), 0), (OK, path, 4))


def test_duration_until_reset_is_seconds_to_aligned_window_end(envoy):
    c = envoy(
        """
        domain: d
        descriptors:
          - key: s
            rate_limit: { unit: second, requests_per_unit: 1000 }
          - key: m
            rate_limit: { unit: minute, requests_per_unit: 1000 }
          - key: h
            rate_limit: { unit: hour, requests_per_unit: 1000 }
          - key: d
            rate_limit: { unit: day, requests_per_unit: 1000 }
        """
    )
    resp = c.check("d", desc("s=1"), desc("m=1"), desc("h=1"), desc("d=1"))
    c.expect(
        resp,
        OK,
        (OK, (1000, "SECOND", ""), 999),
        (OK, (1000, "MINUTE", ""), 999),
        (OK, (1000, "HOUR", ""), 999),
        (OK, (1000, "DAY", ""), 999),
    )
    assert resp.statuses[0].duration_until_reset.seconds == 1


def test_week_month_year_windows_are_epoch_aligned(envoy):
    # The reference's WEEK/MONTH/YEAR are fixed 7/30/365-day buckets from the
    # Unix epoch, not calendar weeks or months.
    c = envoy(
        """
        domain: d
        descriptors:
          - key: w
            rate_limit: { unit: week, requests_per_unit: 1000 }
          - key: mo
            rate_limit: { unit: month, requests_per_unit: 1000 }
          - key: y
            rate_limit: { unit: year, requests_per_unit: 1000 }
        """
    )
    resp = c.check("d", desc("w=1"), desc("mo=1"), desc("y=1"))
    c.expect(
        resp,
        OK,
        (OK, (1000, "WEEK", ""), 999),
        (OK, (1000, "MONTH", ""), 999),
        (OK, (1000, "YEAR", ""), 999),
    )


# 2. hits_addend -------------------------------------------------------------

COUNTER_10 = """
domain: d
descriptors:
  - key: user
    rate_limit: { unit: hour, requests_per_unit: 10 }
"""
LIMIT_10 = (10, "HOUR", "")


def test_request_hits_addend_counts_that_many_and_zero_counts_one(envoy):
    c = envoy(COUNTER_10)
    c.expect(c.check("d", desc("user=a"), hits_addend=3), OK, (OK, LIMIT_10, 7))
    c.expect(c.check("d", desc("user=a"), hits_addend=0), OK, (OK, LIMIT_10, 6))
    c.expect(c.check("d", desc("user=a"), hits_addend=6), OK, (OK, LIMIT_10, 0))
    c.expect(c.check("d", desc("user=a"), hits_addend=0), OVER, (OVER, LIMIT_10, 0))


def test_descriptor_hits_addend_overrides_request_hits_addend(envoy):
    c = envoy(COUNTER_10)
    resp = c.check("d", desc("user=a", hits=2), desc("user=b"), hits_addend=4)
    c.expect(resp, OK, (OK, LIMIT_10, 8), (OK, LIMIT_10, 6))
    resp = c.check("d", desc("user=b", hits=1), desc("user=a"), hits_addend=5)
    c.expect(resp, OK, (OK, LIMIT_10, 5), (OK, LIMIT_10, 3))


def test_descriptor_hits_addend_zero_checks_without_counting(envoy):
    c = envoy(
        """
        domain: d
        descriptors:
          - key: user
            rate_limit: { unit: hour, requests_per_unit: 3 }
        """
    )
    limit = (3, "HOUR", "")
    # Zero on the descriptor wins over the request's hits_addend.
    c.expect(c.check("d", desc("user=a", hits=0), hits_addend=5), OK, (OK, limit, 3))
    c.expect(c.check("d", desc("user=a", hits=0)), OK, (OK, limit, 3))
    c.expect(c.check("d", desc("user=a", hits=3)), OK, (OK, limit, 0))
    # At the limit exactly, a check is not over (over means count > limit).
    c.expect(c.check("d", desc("user=a", hits=0)), OK, (OK, limit, 0))
    c.expect(c.check("d", desc("user=a", hits=0)), OK, (OK, limit, 0))
    c.expect(c.check("d", desc("user=a")), OVER, (OVER, limit, 0))


def test_no_partial_admission_and_counting_continues_while_over(envoy):
    c = envoy(COUNTER_10)
    c.expect(c.check("d", desc("user=a"), hits_addend=8), OK, (OK, LIMIT_10, 2))
    # 5 more than the 2 left: refused whole, and still counted (8 + 5 = 13).
    c.expect(c.check("d", desc("user=a"), hits_addend=5), OVER, (OVER, LIMIT_10, 0))
    # Count 14 > 10: still over, although 8 + 1 alone would have fitted.
    c.expect(c.check("d", desc("user=a"), hits_addend=1), OVER, (OVER, LIMIT_10, 0))
    # A check-only call sees the count above the limit too.
    c.expect(c.check("d", desc("user=a", hits=0)), OVER, (OVER, LIMIT_10, 0))


def test_other_descriptors_are_counted_when_one_is_over(envoy):
    # The reference increments every descriptor's counter and decides each on
    # its own: an over-limit descriptor does not give back the others' hits.
    c = envoy(
        """
        domain: d
        descriptors:
          - key: user
            rate_limit: { unit: hour, requests_per_unit: 10 }
          - key: blocked
            rate_limit: { unit: hour, requests_per_unit: 0 }
        """
    )
    resp = c.check("d", desc("user=a"), desc("blocked=x"))
    c.expect(resp, OVER, (OK, LIMIT_10, 9), (OVER, (0, "HOUR", ""), 0))
    c.expect(c.check("d", desc("user=a")), OK, (OK, LIMIT_10, 8))


# 3. shadow_mode -------------------------------------------------------------


def test_shadow_mode_answers_ok_when_over(envoy):
    c = envoy(
        """
        domain: d
        descriptors:
          - key: user
            shadow_mode: true
            rate_limit: { unit: hour, requests_per_unit: 2, name: shadowed }
        """
    )
    limit = (2, "HOUR", "shadowed")
    c.expect(c.check("d", desc("user=a")), OK, (OK, limit, 1))
    c.expect(c.check("d", desc("user=a")), OK, (OK, limit, 0))
    c.expect(c.check("d", desc("user=a")), OK, (OK, limit, 0))
    c.expect(c.check("d", desc("user=a"), hits_addend=50), OK, (OK, limit, 0))


# 4. unlimited ---------------------------------------------------------------

UNLIMITED = """
domain: d
descriptors:
  - key: caller
    value: internal-*
    rate_limit: { unlimited: true }
  - key: user
    rate_limit: { unit: hour, requests_per_unit: 10 }
"""


def test_unlimited_is_ok_without_a_limit(envoy):
    c = envoy(UNLIMITED)
    for _ in range(3):
        resp = c.check("d", desc("caller=internal-1"), desc("user=a"), hits_addend=4)
        assert summary(resp.statuses[0]) == (OK, None, MAX_U32)
        assert not resp.statuses[0].HasField("duration_until_reset")
    # The limited descriptor beside it was counted (3 x 4 = 12 > 10).
    c.expect(resp, OVER, (OK, None, MAX_U32), (OVER, LIMIT_10, 0))


def test_unlimited_is_never_counted(envoy):
    # With room for a single counter, unlimited requests must leave it free.
    c = envoy(UNLIMITED, "store:\n  failure_mode: fail_closed\n  memory:\n    max_keys: 1\n")
    for i in range(3):
        c.expect(c.check("d", desc(f"caller=internal-{i}")), OK, (OK, None, MAX_U32))
    c.expect(c.check("d", desc("user=a")), OK, (OK, LIMIT_10, 9))
    # The store really is full now: a second counter fails.
    err = c.error(request("d", desc("user=b")))
    assert err.code() == grpc.StatusCode.UNAVAILABLE, err


# 5. replaces ----------------------------------------------------------------

REPLACES = """
domain: d
descriptors:
  - key: a
    rate_limit: { unit: hour, requests_per_unit: 2, name: a }
  - key: b
    rate_limit:
      unit: hour
      requests_per_unit: 5
      name: b
      replaces:
        - name: a
  - key: c
    rate_limit:
      unlimited: true
      replaces:
        - name: a
"""
LIMIT_A = (2, "HOUR", "a")


def test_replaced_limit_is_dropped_and_not_counted(envoy):
    c = envoy(REPLACES)
    for remaining in (4, 3, 2):
        resp = c.check("d", desc("a=1"), desc("b=1"))
        c.expect(resp, OK, (OK, None, 0), (OK, (5, "HOUR", "b"), remaining))
    # Without b in the request, a applies, and it had not been counted above.
    c.expect(c.check("d", desc("a=1")), OK, (OK, LIMIT_A, 1))
    c.expect(c.check("d", desc("a=1")), OK, (OK, LIMIT_A, 0))
    c.expect(c.check("d", desc("a=1")), OVER, (OVER, LIMIT_A, 0))


def test_unlimited_rule_can_replace(envoy):
    c = envoy(REPLACES)
    for _ in range(3):
        resp = c.check("d", desc("a=1"), desc("c=1"))
        c.expect(resp, OK, (OK, None, 0), (OK, None, MAX_U32))
    c.expect(c.check("d", desc("a=1")), OK, (OK, LIMIT_A, 1))


# 6. matching ----------------------------------------------------------------


def test_exact_value_beats_first_wildcard_beats_key_only(envoy):
    c = envoy(
        """
        domain: d
        descriptors:
          - key: path
            rate_limit: { unit: hour, requests_per_unit: 40, name: key_only }
          - key: path
            value: /api/*
            rate_limit: { unit: hour, requests_per_unit: 10, name: api_wildcard }
          - key: path
            value: /api/v1/*
            rate_limit: { unit: hour, requests_per_unit: 20, name: v1_wildcard }
          - key: path
            value: /api/v1/exact
            rate_limit: { unit: hour, requests_per_unit: 30, name: exact }
        """
    )
    resp = c.check(
        "d",
        desc("path=/api/v1/exact"),
        desc("path=/api/v1/users"),  # first wildcard in file order, not the longest
        desc("path=/api/v1/exactly"),
        desc("path=/api/"),
        desc("path=/api"),
        desc("path=/other"),
        desc("method=GET"),
    )
    c.expect(
        resp,
        OK,
        (OK, (30, "HOUR", "exact"), 29),
        (OK, (10, "HOUR", "api_wildcard"), 9),
        (OK, (10, "HOUR", "api_wildcard"), 9),
        (OK, (10, "HOUR", "api_wildcard"), 9),
        (OK, (40, "HOUR", "key_only"), 39),
        (OK, (40, "HOUR", "key_only"), 39),
        (OK, None, 0),
    )


def test_wildcard_and_key_only_rules_count_each_value_separately(envoy):
    c = envoy(
        """
        domain: d
        descriptors:
          - key: path
            value: /api/*
            rate_limit: { unit: hour, requests_per_unit: 2 }
          - key: user
            rate_limit: { unit: day, requests_per_unit: 2 }
        """
    )
    path, user = (2, "HOUR", ""), (2, "DAY", "")
    c.expect(c.check("d", desc("path=/api/a"), desc("user=x")), OK, (OK, path, 1), (OK, user, 1))
    c.expect(c.check("d", desc("path=/api/a"), desc("user=x")), OK, (OK, path, 0), (OK, user, 0))
    c.expect(c.check("d", desc("path=/api/b"), desc("user=y")), OK, (OK, path, 1), (OK, user, 1))
    c.expect(
        c.check("d", desc("path=/api/a"), desc("user=x")), OVER, (OVER, path, 0), (OVER, user, 0)
    )


def test_nested_descriptors_match_the_whole_path_without_backtracking(envoy):
    c = envoy(
        """
        domain: d
        descriptors:
          - key: plan
            value: paid
            descriptors:
              - key: user
                rate_limit: { unit: hour, requests_per_unit: 5, name: paid_user }
          - key: plan
            rate_limit: { unit: day, requests_per_unit: 100, name: any_plan }
            descriptors:
              - key: user
                rate_limit: { unit: hour, requests_per_unit: 2, name: any_plan_user }
          - key: org
            value: acme
            descriptors:
              - key: path
                value: /v1/*
                rate_limit: { unit: hour, requests_per_unit: 7, name: acme_v1 }
        """
    )
    resp = c.check(
        "d",
        desc("plan=paid", "user=u"),
        desc("plan=free", "user=u"),
        desc("plan=free"),
        desc("plan=paid"),  # the exact node has no limit; no fallback to key-only
        desc("plan=paid", "team=t"),  # miss below the exact node; no backtracking
        desc("user=u"),  # `user` exists only nested
        desc("org=acme", "path=/v1/users"),  # wildcard below a nested level
        desc("org=acme", "path=/v2/users"),
    )
    c.expect(
        resp,
        OK,
        (OK, (5, "HOUR", "paid_user"), 4),
        (OK, (2, "HOUR", "any_plan_user"), 1),
        (OK, (100, "DAY", "any_plan"), 99),
        (OK, None, 0),
        (OK, None, 0),
        (OK, None, 0),
        (OK, (7, "HOUR", "acme_v1"), 6),
        (OK, None, 0),
    )


def test_request_longer_than_config_path_gets_no_limit(envoy):
    c = envoy(
        """
        domain: d
        descriptors:
          - key: a
            value: "1"
            rate_limit: { unit: hour, requests_per_unit: 5 }
        """
    )
    for _ in range(2):
        c.expect(c.check("d", desc("a=1", "b=2")), OK, (OK, None, 0))
    # The longer requests did not touch the counter of [a=1].
    c.expect(c.check("d", desc("a=1")), OK, (OK, (5, "HOUR", ""), 4))


# 7. no limit ----------------------------------------------------------------


def test_unknown_domain_is_ok_without_a_limit(envoy):
    c = envoy(COUNTER_10)
    for _ in range(2):
        resp = c.check("elsewhere", desc("user=a"), desc("x=y"), hits_addend=20)
        c.expect(resp, OK, (OK, None, 0), (OK, None, 0))


def test_unmatched_descriptor_is_ok_without_a_limit(envoy):
    c = envoy(COUNTER_10)
    resp = c.check("d", desc("user=a"), desc("other=b"), desc("user=a", "extra=c"))
    c.expect(resp, OK, (OK, LIMIT_10, 9), (OK, None, 0), (OK, None, 0))


# 8. invalid requests --------------------------------------------------------


@pytest.mark.parametrize(
    ("req", "field"),
    [
        (request("", desc("user=a")), "domain"),
        (request("d"), "descriptors"),
    ],
    ids=["empty-domain", "no-descriptors"],
)
def test_empty_domain_or_descriptor_list_is_invalid_argument(envoy, req, field):
    c = envoy(COUNTER_10)
    err = c.error(req)
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT, (err.code(), err.details())
    assert field in err.details(), err.details()


# 9. limit override ----------------------------------------------------------

OVERRIDES = """
domain: d
descriptors:
  - key: user
    rate_limit: { unit: day, requests_per_unit: 100, name: per_user }
  - key: vip
    rate_limit: { unlimited: true }
"""


def test_limit_override_replaces_the_config_limit(envoy):
    c = envoy(OVERRIDES)
    override = (2, "HOUR", "")  # an override has no name
    c.expect(c.check("d", desc("user=a", limit=(2, "HOUR"))), OK, (OK, override, 1))
    c.expect(c.check("d", desc("user=a", limit=(2, "HOUR"))), OK, (OK, override, 0))
    c.expect(c.check("d", desc("user=a", limit=(2, "HOUR"))), OVER, (OVER, override, 0))
    c.expect(c.check("d", desc("user=b")), OK, (OK, (100, "DAY", "per_user"), 99))


def test_limit_override_applies_when_no_rule_matches(envoy):
    c = envoy(OVERRIDES)
    resp = c.check("d", desc("nomatch=x", limit=(3, "DAY")), desc("nomatch=x"))
    c.expect(resp, OK, (OK, (3, "DAY", ""), 2), (OK, None, 0))
    # The override also wins over an unlimited rule.
    c.expect(c.check("d", desc("vip=x", limit=(1, "HOUR"))), OK, (OK, (1, "HOUR", ""), 0))
    c.expect(c.check("d", desc("vip=x", limit=(1, "HOUR"))), OVER, (OVER, (1, "HOUR", ""), 0))


def test_limit_override_gives_no_limit_in_an_unknown_domain(envoy):
    c = envoy(OVERRIDES)
    for _ in range(2):
        resp = c.check("elsewhere", desc("user=a", limit=(1, "HOUR")))
        c.expect(resp, OK, (OK, None, 0))


# 10. response headers -------------------------------------------------------

HEADERS_LIMITS = """
domain: d
descriptors:
  - key: a
    rate_limit: { unit: hour, requests_per_unit: 10 }
  - key: b
    rate_limit: { unit: day, requests_per_unit: 5 }
  - key: small
    rate_limit: { unit: hour, requests_per_unit: 3 }
  - key: large
    rate_limit: { unit: hour, requests_per_unit: 7 }
  - key: roomy
    rate_limit: { unit: hour, requests_per_unit: 1000 }
  - key: vip
    rate_limit: { unlimited: true }
"""
DEFAULT_NAMES = ("RateLimit-Limit", "RateLimit-Remaining", "RateLimit-Reset")


def assert_headers(c: Envoy, resp, names, limit: str, remaining: str, reset_from) -> None:
    """Three headers in order; Reset is the seconds to reset of `reset_from`."""
    headers = c.headers(resp)
    assert [k for k, _ in headers] == list(names), headers
    assert headers[0][1] == limit and headers[1][1] == remaining, headers
    reset = headers[2][1]
    assert reset.isdigit(), headers
    divider = DIVIDER[RL.Unit.Name(reset_from.current_limit.unit)]
    assert circular_distance(int(reset), reset_from.duration_until_reset.seconds, divider) <= 1, (
        headers,
        summary(reset_from),
        reset_from.duration_until_reset,
    )


def test_response_headers_are_off_by_default(envoy):
    c = envoy(HEADERS_LIMITS)
    resp = c.check("d", desc("a=1"), desc("small=1", hits=4))
    c.expect(resp, OVER, (OK, (10, "HOUR", ""), 9), (OVER, (3, "HOUR", ""), 0))
    assert c.headers(resp) == []


def test_response_headers_report_the_smallest_remaining(envoy):
    c = envoy(HEADERS_LIMITS, RESPONSE_HEADERS_ON)
    resp = c.check("d", desc("a=1"), desc("b=1"), desc("nomatch=1"), desc("vip=1"))
    c.expect(
        resp,
        OK,
        (OK, (10, "HOUR", ""), 9),
        (OK, (5, "DAY", ""), 4),
        (OK, None, 0),
        (OK, None, MAX_U32),
    )
    assert_headers(c, resp, DEFAULT_NAMES, "5", "4", resp.statuses[1])


def test_response_headers_tie_goes_to_the_first(envoy):
    c = envoy(HEADERS_LIMITS, RESPONSE_HEADERS_ON)
    resp = c.check("d", desc("a=1", hits=6), desc("b=1", hits=1))
    c.expect(resp, OK, (OK, (10, "HOUR", ""), 4), (OK, (5, "DAY", ""), 4))
    assert_headers(c, resp, DEFAULT_NAMES, "10", "4", resp.statuses[0])
    resp = c.check("d", desc("b=2", hits=1), desc("a=2", hits=6))
    c.expect(resp, OK, (OK, (5, "DAY", ""), 4), (OK, (10, "HOUR", ""), 4))
    assert_headers(c, resp, DEFAULT_NAMES, "5", "4", resp.statuses[0])


def test_response_headers_last_over_limit_descriptor_wins(envoy):
    c = envoy(HEADERS_LIMITS, RESPONSE_HEADERS_ON)
    small, large, roomy = (3, "HOUR", ""), (7, "HOUR", ""), (1000, "HOUR", "")
    # roomy has remaining 0 first, but over-limit descriptors override it.
    resp = c.check("d", desc("roomy=1", hits=1000), desc("small=1", hits=4), desc("large=1", hits=8))
    c.expect(resp, OVER, (OK, roomy, 0), (OVER, small, 0), (OVER, large, 0))
    assert_headers(c, resp, DEFAULT_NAMES, "7", "0", resp.statuses[2])
    # An OK descriptor with remaining 0 after the over-limit ones does not win.
    resp = c.check("d", desc("large=2", hits=8), desc("small=2", hits=4), desc("roomy=2", hits=1000))
    c.expect(resp, OVER, (OVER, large, 0), (OVER, small, 0), (OK, roomy, 0))
    assert_headers(c, resp, DEFAULT_NAMES, "3", "0", resp.statuses[1])


def test_response_headers_absent_when_no_descriptor_has_a_limit(envoy):
    c = envoy(HEADERS_LIMITS, RESPONSE_HEADERS_ON)
    resp = c.check("d", desc("nomatch=1"), desc("vip=1"))
    c.expect(resp, OK, (OK, None, 0), (OK, None, MAX_U32))
    assert c.headers(resp) == []
    resp = c.check("elsewhere", desc("a=1"))
    c.expect(resp, OK, (OK, None, 0))
    assert c.headers(resp) == []


def test_response_headers_use_custom_names(envoy):
    names = ("X-RL-Limit", "X-RL-Remaining", "X-RL-Reset")
    config = textwrap.dedent(
        f"""
        envoy:
          response_headers:
            enabled: true
            limit_header: {names[0]}
            remaining_header: {names[1]}
            reset_header: {names[2]}
        """
    )
    c = envoy(HEADERS_LIMITS, config)
    resp = c.check("d", desc("a=1"), hits_addend=3)
    c.expect(resp, OK, (OK, (10, "HOUR", ""), 7))
    assert_headers(c, resp, names, "10", "7", resp.statuses[0])


# 11. store failure ----------------------------------------------------------


def test_store_failure_is_unavailable_when_failing_closed(envoy):
    c = envoy(COUNTER_10, "store:\n  failure_mode: fail_closed\n  memory:\n    max_keys: 1\n")
    c.expect(c.check("d", desc("user=a")), OK, (OK, LIMIT_10, 9))
    err = c.error(request("d", desc("user=b")))
    assert err.code() == grpc.StatusCode.UNAVAILABLE, (err.code(), err.details())
    # The counter already held is still counted.
    c.expect(c.check("d", desc("user=a")), OK, (OK, LIMIT_10, 8))


def test_store_failure_is_ok_when_failing_open(envoy):
    c = envoy(COUNTER_10, "store:\n  failure_mode: fail_open\n  memory:\n    max_keys: 1\n")
    c.expect(c.check("d", desc("user=a")), OK, (OK, LIMIT_10, 9))
    for _ in range(2):
        resp = c.check("d", desc("user=b"))
        assert Response.Code.Name(resp.overall_code) == OK, resp
        assert [Response.Code.Name(s.code) for s in resp.statuses] == [OK], resp


# 12. fields tollgate does not model ----------------------------------------


def test_descriptor_with_every_field_set_is_answered(envoy):
    c = envoy(COUNTER_10)
    resp = c.check(
        "d", desc("user=a", hits=2, limit=(6, "HOUR")), desc("user=b"), hits_addend=3
    )
    c.expect(resp, OK, (OK, (6, "HOUR", ""), 4), (OK, LIMIT_10, 7))


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _len_field(number: int, payload: bytes) -> bytes:
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def _varint_field(number: int, value: int) -> bytes:
    return _varint(number << 3) + _varint(value)


def test_unknown_fields_are_ignored(envoy):
    # A newer Envoy may send fields this API version does not have.
    c = envoy(COUNTER_10)
    descriptor = (
        desc("user=a").SerializeToString()
        + _varint_field(90, 7)
        + _len_field(91, b"from the future")
    )
    raw = (
        request("d", desc("user=b"), hits_addend=2).SerializeToString()
        + _len_field(2, descriptor)
        + _varint_field(100, 1)
        + _len_field(101, b"\x0a\x03abc")
    )
    req = rls_pb2.RateLimitRequest.FromString(raw)
    # The stub sends the unknown fields on: they are kept in the message.
    sent = req.SerializeToString()
    assert b"from the future" in sent and b"\x0a\x03abc" in sent
    c.expect(c.send(req), OK, (OK, LIMIT_10, 8), (OK, LIMIT_10, 8))
