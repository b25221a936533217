"""A real Prometheus server for the integration tests: Debian's `prometheus` binary on a
loopback port, its storage in a temporary dir, scraping with deploy/prometheus's config.

The server loads deploy/prometheus/prometheus.yml itself, with only what a test must
change: a one-second scrape interval and its own file_sd target file, so the scrape
config shipped to users (its relabelling, honor_labels) is what the test exercises.
"""

from __future__ import annotations

import json
import shutil
import signal
import socket
import subprocess
import tempfile
import urllib.parse
from pathlib import Path
from typing import Any

import yaml

import systemtools
from mnharness import http_get, wait_for

DEPLOY = Path(__file__).parents[2] / "deploy"
SCRAPE_CONFIG = DEPLOY / "prometheus" / "prometheus.yml"
DASHBOARD = DEPLOY / "grafana" / "meshnode-service-dashboard.json"
SCRAPE_INTERVAL = "1s"
START_TIMEOUT_S = 15.0
STOP_TIMEOUT_S = 10.0


def tool(name: str) -> str:
    """A Prometheus binary's path (Debian's `prometheus` has both the server and promtool)."""
    return systemtools.tool(name, "prometheus")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def scrape_config(targets_file: Path) -> dict[str, Any]:
    """deploy's scrape config with a 1 s interval and `targets_file` as its file_sd."""
    config = yaml.safe_load(SCRAPE_CONFIG.read_text())
    config["global"]["scrape_interval"] = SCRAPE_INTERVAL
    config["global"]["evaluation_interval"] = SCRAPE_INTERVAL
    (job,) = config["scrape_configs"]
    job["file_sd_configs"] = [{"files": [str(targets_file)]}]
    return config


class Prometheus:
    """A running server that scrapes `target` ("host:port") as node `node`."""

    def __init__(self, target: str, node: str) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="mn-prom-", dir="/tmp"))
        targets = self.dir / "nodes.json"
        targets.write_text(json.dumps([{"targets": [target], "labels": {"node": node}}]))
        config = self.dir / "prometheus.yml"
        config.write_text(yaml.safe_dump(scrape_config(targets)))
        self.url = f"http://127.0.0.1:{_free_port()}"
        self.log = open(self.dir / "prometheus.log", "wb")
        self.proc = subprocess.Popen(
            [tool("prometheus"), f"--config.file={config}",
             f"--storage.tsdb.path={self.dir / 'data'}",
             f"--web.listen-address={self.url.removeprefix('http://')}", "--log.level=warn"],
            stdin=subprocess.DEVNULL, stdout=self.log, stderr=subprocess.STDOUT)

    def wait_scraping(self) -> None:
        """Until the server is ready and its one target is up."""
        def up() -> bool:
            assert self.proc.poll() is None, f"prometheus exited: {self.log_text()}"
            if http_get(f"{self.url}/-/ready")[0] != 200:
                return False
            return [s["value"][1] for s in self.query('up{job="meshnode"}')] == ["1"]
        wait_for(up, START_TIMEOUT_S, "prometheus to scrape the node")

    def api(self, path: str, **params: Any) -> Any:
        """GET /api/v1/PATH; the `data` of a success, AssertionError with Prometheus's
        error otherwise."""
        status, body = http_get(f"{self.url}/api/v1/{path}?{urllib.parse.urlencode(params, doseq=True)}",
                                timeout_s=10.0)
        doc = json.loads(body) if body else {}
        assert status == 200 and doc.get("status") == "success", (path, params, status, doc)
        return doc["data"]

    def query(self, expr: str, at: float | None = None) -> list[dict[str, Any]]:
        """An instant query's result (vector or matrix) at `at` (default now)."""
        params = {"query": expr} if at is None else {"query": expr, "time": f"{at:.3f}"}
        return self.api("query", **params)["result"]

    def log_text(self) -> str:
        self.log.flush()
        return (self.dir / "prometheus.log").read_text(errors="replace")[-3000:]

    def stop(self) -> None:
        """SIGTERM (a clean TSDB close), SIGKILL past the deadline; the dir removed."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()
        shutil.rmtree(self.dir, ignore_errors=True)
