"""/metrics parses with the official Prometheus (OpenMetrics) parser, and its
counters match what the test did over the HTTP API."""

from __future__ import annotations

import requests
from prometheus_client.openmetrics.parser import text_string_to_metric_families


def samples(base_url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    response = requests.get(f"{base_url}/metrics", timeout=10)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("application/openmetrics-text")
    out = {}
    for family in text_string_to_metric_families(response.text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def test_metrics_parse_and_count_what_was_done(start_server):
    server = start_server()
    body = {"domain": "api", "descriptors": [{"entries": [{"key": "user", "value": "p"}]}]}
    for _ in range(4):
        r = requests.post(f"{server.base_url}/v1/check", json=body, timeout=10)
        assert r.status_code == 200 and r.json()["data"]["overall_code"] == "OK"
    r = requests.post(f"{server.base_url}/v1/check", json={**body, "hits": 3}, timeout=10)
    assert r.status_code == 200
    unknown = requests.post(f"{server.base_url}/v1/check", json={**body, "domain": "nope"}, timeout=10)
    assert unknown.status_code == 200

    m = samples(server.base_url)
    rule = (("domain", "api"), ("rule", "api.user"))
    assert m[("tollgate_rate_limit_total_hits_total", rule)] == 7
    assert m[("tollgate_rate_limit_within_limit_total", rule)] == 7
    assert m[("tollgate_rate_limit_over_limit_total", rule)] == 0
    assert m[("tollgate_decisions_total", (("code", "OK"), ("domain", "api")))] == 5
    assert m[("tollgate_decisions_total", (("code", "OK"), ("domain", "")))] == 1
    route = (("route", "/v1/check"), ("status", "200"))
    assert m[("tollgate_http_request_duration_seconds_count", route)] == 6
    assert m[("tollgate_build_info", (("version", "0.1.0"),))] == 1
