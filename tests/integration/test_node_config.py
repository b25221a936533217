"""Resources through a running node: apply, ACK by every worker, get, delete, and refusals."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

import pytest

from mnharness import Node, http_get, parse_version

pytestmark = pytest.mark.timeout(60)


def test_apply_is_installed_by_every_worker(node: Node,
                                            write_resources: Callable[..., Path]) -> None:
    start = node.versions()
    assert len(set(start.values())) == 1, start  # control and workers agree after up
    path = write_resources("orders", port=9090)

    result = node.cli("apply", "-f", str(path))
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("applied: ")
    assert "Service demo/orders" in result.stdout and "Workload demo/orders-v1" in result.stdout
    version = parse_version(result.stdout)
    assert version == start["control"] + 1

    status = node.wait_version(version)
    for name in node.worker_names:
        assert status[name]["state"] == "RUNNING" and status[name]["healthy"] is True

    got = node.cli("get", "service", "orders", "-n", "demo", "-o", "json")
    assert got.returncode == 0, got.stderr
    service = json.loads(got.stdout)
    assert service["kind"] == "Service"
    assert service["metadata"] == {"name": "orders", "namespace": "demo"}
    assert [p["port"] for p in service["spec"]["ports"]] == [9090]
    workload = json.loads(node.cli("get", "workload", "orders-v1", "-n", "demo", "-o", "json").stdout)
    assert workload["spec"]["labels"]["app"] == "orders"

    # The snapshot telemetry serves is the one the workers installed.
    code, body = http_get(f"{node.admin_url}/config_dump")
    assert code == 200
    dump = json.loads(body)
    assert dump["version"] == version
    assert "orders" in [s["name"] for s in dump["services"]]

    # The same file again changes nothing, and no version is spent on it.
    again = node.cli("apply", "-f", str(path))
    assert again.returncode == 0, again.stderr
    assert again.stdout.startswith("unchanged: ")
    assert parse_version(again.stdout) == version

    deleted = node.cli("delete", "service", "orders", "-n", "demo")
    assert deleted.returncode == 0, deleted.stderr
    assert parse_version(deleted.stdout) == version + 1
    node.wait_version(version + 1)
    gone = node.cli("get", "service", "orders", "-n", "demo")
    assert gone.returncode == 1
    assert "not found" in gone.stderr
    listed = node.cli("get", "services", "-n", "demo")
    assert "orders" not in listed.stdout and "frontend" in listed.stdout


BAD_FILES = {
    # id: (edit of the good file, what stderr must name besides the file)
    "unknown-field": (lambda text: text.replace("  selector:", "  colour: blue\n  selector:", 1),
                      ["Service demo/orders", "spec.colour", "unknown field"]),
    "bad-port": (lambda text: text.replace("port: 9090", "port: 99999", 1),
                 ["Service demo/orders", "spec.ports[0].port", "99999"]),
    # A syntax error has no resource yet: the document and the line stand in for it.
    "yaml-syntax": (lambda text: text.replace("  name: orders\n", "  name: [orders\n", 1),
                    ["document #1", "invalid YAML at line"]),
}


@pytest.mark.parametrize("case", sorted(BAD_FILES))
def test_bad_apply_is_refused_and_changes_nothing(node: Node, write_resources: Callable[..., Path],
                                                  case: str) -> None:
    edit, expected = BAD_FILES[case]
    good = write_resources("orders")
    bad = write_resources(text=edit(good.read_text()), filename=f"{case}.yaml")
    before = node.versions()

    result = node.cli("apply", "-f", str(bad))
    assert result.returncode == 78, (result.stdout, result.stderr)
    assert str(bad) in result.stderr
    for needle in expected:
        assert needle in result.stderr, (needle, result.stderr)

    assert node.versions() == before
    assert node.cli("get", "service", "orders", "-n", "demo").returncode == 1
    # The refusal spent no version: the next good apply is exactly one step on.
    assert node.apply(good) == before["control"] + 1
