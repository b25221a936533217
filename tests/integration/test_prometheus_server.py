"""A real Prometheus server scraping a real node under known traffic, with deploy/'s
scrape config, and every query of deploy/'s Grafana dashboard run against it.

Why: issue 13 asks that a Prometheus and Grafana user can use a node's figures as they
are. Only a real server shows that: it parses the page, applies the scrape config's
relabelling, and computes `rate()` and `histogram_quantile()` from what it stored. The
traffic is known (so many answers of each code, so many slow ones), so the figures the
server computes are known too.

How the figures are made exact: the server scrapes every second; the test finds the
last scrape before the traffic (every series at its baseline) and the first after it
(every series at its final count), and evaluates at the latter with a window reaching
one millisecond past the former. rate()'s extrapolation then stretches the increase by
at most that millisecond, so rate × window is the request count.
"""

from __future__ import annotations

import json
import re
import subprocess
from dataclasses import dataclass
from typing import Any, Iterator

import pytest

from dataplanekit import backend_node, metric_total, send, settle
from mnharness import Node, wait_for
from promkit import DASHBOARD, SCRAPE_CONFIG, Prometheus, tool

pytestmark = pytest.mark.timeout(60)

NODE = "prom-node"
SERVICE = "backend.demo.svc.cluster.local"
REQUESTS = "istio_requests_total"
DURATION = "istio_request_duration_milliseconds"
# The traffic: path -> (requests, the answer's code). The slow ones take SLOW_MS at the
# app, inside Istio's (250, 500] ms bucket; everything else well under 250 ms.
SLOW_MS, SLOW_BUCKET = 300, (250.0, 500.0)
FAST, SLOW, ERRORS_500, ERRORS_404 = 90, 10, 6, 4


@dataclass
class Scraped:
    node: Node
    prometheus: Prometheus

    @property
    def port(self) -> int:
        return self.node.port_base + 1


@pytest.fixture(scope="module")
def scraped() -> Iterator[Scraped]:
    """One node (one worker) fronting an app, scraped by one Prometheus server."""
    tool("prometheus")
    with backend_node("--node", NODE) as node:
        prometheus = Prometheus(f"127.0.0.1:{node.port_base + 90}", NODE)
        try:
            prometheus.wait_scraping()
            yield Scraped(node, prometheus)
        finally:
            prometheus.stop()


def _series(code: str) -> dict[str, str]:
    return {"destination_service": SERVICE, "reporter": "destination", "response_code": code}


def _selector(labels: dict[str, str]) -> str:
    return "{" + ",".join(f'{k}="{v}"' for k, v in labels.items()) + "}"


def _stored(scraped: Scraped, labels: dict[str, str]) -> float | None:
    """The value Prometheus holds now for the one series of REQUESTS with `labels`."""
    found = scraped.prometheus.query(f"{REQUESTS}{_selector(labels)}")
    return float(found[0]["value"][1]) if len(found) == 1 else None


def _scraped_up_to_node(scraped: Scraped, codes: list[str]) -> dict[str, float]:
    """Each code's count as the node has it now, once Prometheus holds the same."""
    settle(scraped.node)
    counts = {c: metric_total(scraped.node, REQUESTS, **_series(c)) for c in codes}
    wait_for(lambda: all(_stored(scraped, _series(c)) == n for c, n in counts.items()),
             10.0, f"prometheus to scrape the node's counts {counts}")
    return counts


def _timestamps(scraped: Scraped, labels: dict[str, str], value: float) -> list[float]:
    """When the last minute's scrapes of the series with `labels` read `value`."""
    (series,) = scraped.prometheus.query(f"{REQUESTS}{_selector(labels)}[1m]")
    return [float(t) for t, v in series["values"] if float(v) == value]


@pytest.fixture(scope="module")
def window(scraped: Scraped) -> tuple[float, float]:
    """Drive the known traffic; (the last scrape before it, the first after it)."""
    codes = {"200": FAST + SLOW, "500": ERRORS_500, "404": ERRORS_404}
    # Every series exists before the traffic, so rate() reads a counter's increase and
    # never a series that appears mid-window.
    assert send(scraped.port, "/status/500", 1) + send(scraped.port, "/status/404", 1) == [500, 404]
    before = _scraped_up_to_node(scraped, list(codes))
    assert send(scraped.port, "/fast", FAST) == [200] * FAST
    assert send(scraped.port, f"/slow/{SLOW_MS}/10", SLOW, parallel=SLOW) == [200] * SLOW
    assert send(scraped.port, "/status/500", ERRORS_500) == [500] * ERRORS_500
    assert send(scraped.port, "/status/404", ERRORS_404) == [404] * ERRORS_404
    after = _scraped_up_to_node(scraped, list(codes))
    assert {c: after[c] - before[c] for c in codes} == codes
    start = min(max(_timestamps(scraped, _series(c), before[c])) for c in codes)
    end = max(min(_timestamps(scraped, _series(c), after[c])) for c in codes)
    return start, end


def _range(window: tuple[float, float]) -> str:
    """A range reaching one millisecond before the window's first scrape."""
    start, end = window
    return f"{round((end - start) * 1000) + 1}ms"


def _value(result: list[dict[str, Any]]) -> float:
    assert len(result) == 1, result
    return float(result[0]["value"][1])


def test_rate_of_requests_is_the_traffic_sent(scraped: Scraped,
                                              window: tuple[float, float]) -> None:
    start, end = window
    for code, sent in (("200", FAST + SLOW), ("500", ERRORS_500), ("404", ERRORS_404)):
        rate = _value(scraped.prometheus.query(
            f"sum(rate({REQUESTS}{_selector(_series(code))}[{_range(window)}]))", at=end))
        assert rate * (end - start) == pytest.approx(sent, rel=1e-3), code
    # Both sides of the hop count each request: the caller's node (source) and the
    # app's (destination), here the same node.
    total = _value(scraped.prometheus.query(
        f'sum(rate({REQUESTS}{{destination_service="{SERVICE}"}}[{_range(window)}]))', at=end))
    assert total * (end - start) == pytest.approx(2 * (FAST + SLOW + ERRORS_500 + ERRORS_404),
                                                  rel=1e-3)


def test_p99_duration_is_in_the_slow_requests_bucket(scraped: Scraped,
                                                     window: tuple[float, float]) -> None:
    """10 of 110 requests take 300 ms: the 99th percentile lies in (250, 500], where
    histogram_quantile interpolates it at 250 + 250 × (0.99 × 110 − 100) / 10."""
    def quantile(q: float) -> float:
        return _value(scraped.prometheus.query(
            f"histogram_quantile({q}, sum(rate({DURATION}_bucket"
            f'{{destination_service="{SERVICE}"}}[{_range(window)}])) by (le))', at=window[1]))
    total = FAST + SLOW + ERRORS_500 + ERRORS_404
    low, high = SLOW_BUCKET
    expected = low + (high - low) * (0.99 * total - (total - SLOW)) / SLOW
    p99 = quantile(0.99)
    # One request's share of the bucket: room for one fast request slowed past 250 ms.
    assert low < p99 <= high and p99 == pytest.approx(expected, abs=(high - low) / SLOW)
    assert quantile(0.5) < low


def test_the_scrape_config_labels_series_by_node_and_passes_promtool(
        scraped: Scraped) -> None:
    result = subprocess.run([tool("promtool"), "check", "config", str(SCRAPE_CONFIG)],
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stdout + result.stderr
    up = scraped.prometheus.query('up{job="meshnode"}')
    assert [(s["metric"]["node"], s["metric"]["instance"]) for s in up] == [(NODE, NODE)]
    # Istio's series carry no node label of their own: they take the target's.
    assert {s["metric"]["node"] for s in scraped.prometheus.query(REQUESTS)} == {NODE}


# --- deploy/'s Grafana dashboard ---------------------------------------------------------------

# What Grafana puts in place of each template variable in these tests.
VARIABLES = {"$__rate_interval": "1m", "$reporter": "destination", "$namespace": "demo",
             "$service": SERVICE}


def dashboard() -> dict[str, Any]:
    return json.loads(DASHBOARD.read_text())


def panel_queries(doc: dict[str, Any]) -> Iterator[tuple[str, str]]:
    """(panel title, PromQL expression) of every query of every panel, rows' included."""
    for panel in doc["panels"]:
        for inner in [panel, *panel.get("panels", [])]:
            for target in inner.get("targets", []):
                yield inner["title"], target["expr"]


def substitute(expr: str) -> str:
    # Longest names first: $service must not be read inside a longer name.
    for name in sorted(VARIABLES, key=len, reverse=True):
        expr = expr.replace(name, VARIABLES[name])
    assert "$" not in expr, f"a template variable the test does not know: {expr}"
    return expr


def test_the_dashboard_is_grafana_json_with_panels_and_targets() -> None:
    doc = dashboard()
    assert doc["uid"] and doc["title"] and isinstance(doc["schemaVersion"], int)
    variables = {v["name"]: v for v in doc["templating"]["list"]}
    assert {"datasource", "namespace", "service", "reporter"} <= set(variables)
    ids = [p["id"] for p in doc["panels"]]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    for panel in doc["panels"]:
        assert {"x", "y", "w", "h"} <= set(panel["gridPos"]) and panel["gridPos"]["w"] <= 24
        assert panel["type"] == "row" or panel["targets"], panel["title"]
        for target in panel.get("targets", []):
            assert target["refId"] and target["expr"], panel["title"]
            assert target["datasource"]["uid"] == "${datasource}", panel["title"]
    titles = " ".join(p["title"] for p in doc["panels"]).lower()
    for shown in ("volume", "success rate", "duration", "request size", "response size", "tcp"):
        assert shown in titles


def test_every_dashboard_query_runs_and_the_request_panels_show_the_traffic(
        scraped: Scraped, window: tuple[float, float]) -> None:
    doc = dashboard()
    exported = set(scraped.prometheus.api("label/__name__/values"))
    at = window[1] + 1
    for title, expr in panel_queries(doc):
        result = scraped.prometheus.query(substitute(expr), at=at)  # asserts no error
        metrics = set(re.findall(r"\b(istio_\w+?)(?:_bucket)?\{", expr))
        if metrics and all(m in exported or f"{m}_bucket" in exported for m in metrics):
            assert result, f"panel {title!r} shows nothing: {expr}"
    # The variables' label_values() queries, as Grafana runs them (the labels API).
    expected = {"namespace": ("destination_service_namespace", "demo"),
                "service": ("destination_service", SERVICE)}
    for name, (label, value) in expected.items():
        query = next(v for v in doc["templating"]["list"] if v["name"] == name)["definition"]
        match = re.fullmatch(r"label_values\((?:(.+), )?(\w+)\)", query)
        assert match and match[2] == label, query
        params = {"match[]": substitute(match[1])} if match[1] else {}
        assert value in scraped.prometheus.api(f"label/{label}/values", **params), name
