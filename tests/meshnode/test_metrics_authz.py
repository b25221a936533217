"""Tests for meshnode.metrics' authorization figures: a worker's Engine.authz_stats() in
its health beat becomes meshnode_authz_decisions_total{action,policy,result}, and the
open TCP connections a pushed policy closed meshnode_authz_revoked_connections_total."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, generate_latest

from meshnode.health import HealthBook
from meshnode.metrics import NodeCollector


def test_authz_figures_are_exported_by_action_policy_and_result() -> None:
    book = HealthBook(["proxy-1"])
    book.record("proxy-1", {"state": "ok", "authz": [
        {"policy": "demo/no-admin", "action": "DENY", "allowed": 0, "denied": 4, "audited": 0},
        {"policy": "demo/audit", "action": "AUDIT", "allowed": 0, "denied": 0, "audited": 7},
        {"policy": "", "action": "ALLOW", "allowed": 0, "denied": 2, "audited": 0},
        "not a figure"]})
    registry = CollectorRegistry()
    registry.register(NodeCollector(book, "node-a"))
    text = generate_latest(registry).decode()
    assert ('meshnode_authz_decisions_total{action="DENY",node="node-a",policy="demo/no-admin",'
            'process="proxy-1",result="denied"} 4.0') in text
    assert ('meshnode_authz_decisions_total{action="AUDIT",node="node-a",policy="demo/audit",'
            'process="proxy-1",result="audited"} 7.0') in text
    assert 'policy="",process="proxy-1",result="denied"} 2.0' in text
    assert 'result="allowed"' not in text            # nothing counted: no sample


def test_tcp_connections_a_pushed_policy_closed_are_exported() -> None:
    book = HealthBook(["proxy-1"])
    book.record("proxy-1", {"state": "ok", "dataplane": {"authz_revoked_tcp": 3}})
    registry = CollectorRegistry()
    registry.register(NodeCollector(book, "node-a"))
    text = generate_latest(registry).decode()
    assert ('meshnode_authz_revoked_connections_total{node="node-a",process="proxy-1"} 3.0'
            in text)
