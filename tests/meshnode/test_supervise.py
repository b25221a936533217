"""supervisord.conf as `meshnode up` writes it: the stop waits that let workers drain."""
from __future__ import annotations

import configparser
from pathlib import Path

import pytest

from meshnode import proxy
from meshnode.config.model import MAX_DRAIN_DURATION_S
from meshnode.supervise import NodeOptions, render_conf

pytestmark = pytest.mark.timeout(30)


def test_a_worker_is_given_longer_than_its_longest_drain_to_stop(tmp_path: Path) -> None:
    opts = NodeOptions(runtime_dir=tmp_path, node="n", port_base=15000, workers=2)
    conf = configparser.RawConfigParser()
    conf.read_string(render_conf(opts))
    proxy_wait = int(conf["program:proxy"]["stopwaitsecs"])
    # The worker's own bound: the drain, then DRAIN_MARGIN_S for its engine, twice
    # (join, then stop and join again), before it exits.
    assert proxy_wait >= MAX_DRAIN_DURATION_S + 2 * proxy.DRAIN_MARGIN_S + 5
    assert conf["program:proxy"]["stopsignal"] == "TERM"
    for name in ("bus", "control", "ca", "telemetry"):
        assert int(conf[f"program:{name}"]["stopwaitsecs"]) == 10
    # supervisord's own shutdown stops the highest priority number first: workers
    # drain while the bus, control and telemetry still run.
    priorities = {name: int(conf[f"program:{name}"]["priority"])
                  for name in ("bus", "control", "ca", "telemetry", "proxy")}
    assert priorities["proxy"] > max(v for k, v in priorities.items() if k != "proxy")
