"""The admin port's dashboard in a real headless Chromium, and `meshnode stat`, on a real
node carrying a small demo mesh: frontend calls backend (some slowly) and ledger (a
quarter of its answers 500); ledger's HTTPRoute matches a path that holds markup.

Why: issue 13 asks for a live one-page view of the services, the edges between them
and their golden metrics, checked in a real browser; its names come from users' YAML,
so what looks like markup must show as text and never run. `stat` must say the same
figures as the page, from the same model.
"""

from __future__ import annotations

import copy
import json
import re
import subprocess
import tempfile
from html.parser import HTMLParser
from pathlib import Path
from typing import Iterator

import pytest
import yaml

from dataplanekit import settle
from meshkit import PORT_PLACEHOLDER, Caller, ConformanceMesh, running_mesh
from systemtools import tool

pytestmark = pytest.mark.timeout(90)

NS = "demo"
FRONTEND = Caller(NS, "frontend-v1", "127.0.0.2")
# Istio's and Chromium's flags for a headless run on a machine with no way out (deploy/
# install.sh --test installs Debian's chromium).
CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                  "--no-first-run", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--hide-scrollbars")
# Would set the page's title if it ever ran.
MARKUP = "/x<script>document.title='pwned'</script>.*"
BACKEND_CALLS, SLOW_CALLS = 18, 2
LEDGER_OK, LEDGER_FAILED = 12, 4
SCREENSHOT = Path(tempfile.gettempdir()) / "meshnode-dashboard.png"


def _service(name: str) -> dict:
    return {"apiVersion": "meshnode.io/v1alpha1", "kind": "Service",
            "metadata": {"name": name, "namespace": NS},
            "spec": {"selector": {"app": name},
                     "ports": [{"name": "http", "port": 8080, "protocol": "HTTP"}]}}


def _workload(name: str, address: str) -> dict:
    return {"apiVersion": "meshnode.io/v1alpha1", "kind": "Workload",
            "metadata": {"name": f"{name}-v1", "namespace": NS},
            "spec": {"address": address, "ports": {"http": PORT_PLACEHOLDER},
                     "labels": {"app": name, "version": "v1"}, "serviceAccount": name}}


BASE = [*(_service(n) for n in ("frontend", "backend", "ledger")),
        _workload("frontend", FRONTEND.address), _workload("backend", "127.0.0.1"),
        _workload("ledger", "127.0.0.3"),
        {"apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute",
         "metadata": {"name": "ledger-paths", "namespace": NS},
         "spec": {"parentRefs": [{"group": "", "kind": "Service", "name": "ledger", "port": 8080}],
                  "rules": [{"matches": [{"path": {"type": "RegularExpression", "value": MARKUP}}],
                             "backendRefs": [{"name": "ledger", "port": 8080}]},
                            {"backendRefs": [{"name": "ledger", "port": 8080}]}]}}]


def _browse(url: str, *what: str) -> subprocess.CompletedProcess[str]:
    """Chromium on `url` once its script has run (virtual time: the polls are fetches of
    the node, which virtual time waits for), in a profile of its own."""
    with tempfile.TemporaryDirectory(prefix="mn-chromium-") as profile:
        result = subprocess.run([tool("chromium", "chromium"), *CHROMIUM_FLAGS, f"--user-data-dir={profile}",
                                 "--virtual-time-budget=3000", "--window-size=1280,1500",
                                 *what, url], capture_output=True, text=True, timeout=30,
                                stdin=subprocess.DEVNULL)
    assert result.returncode == 0, result.stderr[-2000:]
    return result


class Rows(HTMLParser):
    """The page's table rows by their data-* key, each row's cells' text; every text
    node; and the <script> elements."""

    def __init__(self) -> None:
        super().__init__()
        self.rows: dict[str, list[str]] = {}
        self.texts: list[str] = []
        self.scripts = 0
        self.title = ""
        self._row: list[str] | None = None
        self._in: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self._in.append(tag)
        if tag == "script":
            self.scripts += 1
        key = next((f"{k}:{v}" for k, v in attrs if k in ("data-service", "data-edge",
                                                             "data-workload")), None)
        if tag == "tr" and key:
            self._row = self.rows.setdefault(key, [])
        elif tag == "td" and self._row is not None and self._in.count("td") == 1:
            self._row.append("")

    def handle_endtag(self, tag: str) -> None:
        if tag == "tr":
            self._row = None
        if tag in self._in:
            del self._in[len(self._in) - 1 - self._in[::-1].index(tag):]

    def handle_data(self, data: str) -> None:
        self.texts.append(data)
        if self._in and self._in[-1] == "title":
            self.title += data
        if self._row is not None and "td" in self._in and "details" not in self._in:
            self._row[-1] += data


@pytest.fixture(scope="module")
def mesh() -> Iterator[ConformanceMesh]:
    """The node, with the traffic of the tests sent once, and every worker's beat since."""
    with running_mesh(copy.deepcopy(BASE), "mn-dash-") as mesh:
        for _ in range(BACKEND_CALLS):
            assert mesh.send(FRONTEND, "backend", "/").status == 200
        for _ in range(SLOW_CALLS):
            assert mesh.send(FRONTEND, "backend", "/?delay=100ms").status == 200
        for i in range(LEDGER_OK + LEDGER_FAILED):
            failing = f"?uuid=fail&succeedAfter={LEDGER_FAILED}&responseCode=500"
            want = 500 if i < LEDGER_FAILED else 200
            assert mesh.send(FRONTEND, "ledger", f"/entries{failing}").status == want
        settle(mesh.node)
        yield mesh


def test_the_dashboard_shows_services_edges_and_their_figures_in_a_browser(
        mesh: ConformanceMesh) -> None:
    url = f"{mesh.node.admin_url}/dashboard"
    page = Rows()
    page.feed(_browse(url, "--dump-dom").stdout)
    rows = page.rows
    # NAME, MESHED, SUCCESS, RPS, P50, P95, P99, TCP: the figures the traffic made.
    ledger = rows["data-service:demo/ledger"]
    assert ledger[1:3] == ["1/1", f"{100 * LEDGER_OK / (LEDGER_OK + LEDGER_FAILED):.2f}%"], ledger
    backend = rows["data-service:demo/backend"]
    assert backend[2] == "100.00%", backend
    assert 90 <= float(backend[6].removesuffix(" ms")) <= 130, backend   # p99: the slow calls
    assert rows["data-service:demo/frontend"][2] == "-"                  # no one calls it
    edge = rows["data-edge:demo/frontend-v1 -> demo/ledger"]
    assert edge[:3] == ["demo/frontend-v1", "demo/ledger", "75.00%"] and edge[-1] == "source"
    assert rows["data-edge:demo/frontend-v1 -> demo/backend"][2] == "100.00%"
    assert "data-workload:demo/ledger-v1" in rows
    text = "".join(page.texts)
    # ledger's route, its endpoint and labels; the rollouts section says why it is empty.
    assert "demo/ledger-paths #0 :8080" in text and "app=ledger" in text
    assert re.search(r"no Rollout resources", text)
    # The markup in the route's path is shown as text and never ran.
    assert f"RegularExpression {MARKUP}" in text
    assert page.scripts == 1 and page.title == "meshnode dashboard"


def test_a_screenshot_of_the_dashboard_is_saved(mesh: ConformanceMesh) -> None:
    SCREENSHOT.unlink(missing_ok=True)
    _browse(f"{mesh.node.admin_url}/dashboard", f"--screenshot={SCREENSHOT}")
    assert SCREENSHOT.stat().st_size > 10_000


def test_stat_says_the_pages_figures(mesh: ConformanceMesh) -> None:
    result = mesh.node.cli("stat", "svc", "-n", NS, "-o", "json")
    assert result.returncode == 0, result.stderr
    reply = json.loads(result.stdout)
    ledger = next(r for r in reply["rows"] if r["name"] == "ledger")
    assert (ledger["requests"], ledger["success_rate"]) == (LEDGER_OK + LEDGER_FAILED, 0.75)
    assert ledger["rps"] == pytest.approx(16 / reply["window_s"], rel=1e-3)  # window_s is rounded
    table = mesh.node.cli("stat", "deploy", "ledger-v1", "-n", NS)
    assert table.returncode == 0, table.stderr
    head, row = table.stdout.splitlines()[:2]
    assert head.split() == ["NAME", "MESHED", "SUCCESS", "RPS", "LATENCY_P50", "LATENCY_P95",
                            "LATENCY_P99", "TCP_CONN"]
    assert row.split()[:3] == ["ledger-v1", "1/1", "75.00%"]
    assert mesh.node.cli("stat", "pods").returncode == 64
