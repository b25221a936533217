"""What control accepts, every worker can install: route sets compiled from valid HTTPRoutes go into a
real fastpath RouteTable (meshnode.routes.install, as a worker does), and what that table refuses
is refused by validation first (a route no worker can install would be NACKed with the whole
config)."""
from __future__ import annotations

from pathlib import Path

import pytest

import fastpath.engine as engine
from meshnode import routes as worker_routes
from meshnode.config import ConfigError, Resource, Service, compile_routes, parse_text
from routekit import backend, resources_with, route

pytestmark = pytest.mark.timeout(60)

DATA = Path(__file__).parent / "data" / "gateway-api"


def install(resources: list[Resource]) -> int:
    """Install the route sets of `resources` into a RouteTable holding every Service port."""
    table = engine.RouteTable()
    indexes = {}
    for service in (r for r in resources if isinstance(r, Service)):
        for port in service.spec.ports:
            indexes[(f"{service.namespace}/{service.name}", port.port)] = table.add_service(
                f"{service.namespace}/{service.name}:{port.name}",
                f"{port.name}.{service.name}.{service.namespace}.svc",
                [f"spiffe://cluster.local/ns/{service.namespace}/sa/default"], [])
    sets = compile_routes(resources)
    assert worker_routes.install(table, sets, indexes) == len(sets)
    return len(sets)


def test_the_conformance_routes_install() -> None:
    from test_config_httproute_conformance import SERVICES
    texts = [p.read_text() for p in sorted(DATA.glob("*.yaml"))]
    # One file at a time: several name the same route (mesh-split-v1 is in two files).
    for text in texts:
        assert install(parse_text(SERVICES + "---\n" + text, "conformance.yaml")) > 0


def test_the_largest_route_validation_allows_installs() -> None:
    # 16 sets and 16 adds whose lines add exactly the room the node keeps in a head.
    names = [f"x-{i:02d}" for i in range(32)]
    width = engine.ROUTE_GROW_MAX // 32 - len(names[0]) - 4
    edits = {"set": [{"name": n, "value": "v" * width} for n in names[:16]],
             "add": [{"name": n, "value": "v" * width} for n in names[16:]]}
    rule = {"matches": [{"path": {"type": "Exact", "value": "/" + "a" * 1023},
                         "headers": [{"name": f"h{i}", "value": "v" * 4096} for i in range(16)],
                         "queryParams": [{"name": f"q{i}", "value": "v" * 1024} for i in range(16)],
                         "method": "PATCH"}] * 8,
            "filters": [{"type": "RequestHeaderModifier", "requestHeaderModifier": edits},
                        {"type": "ResponseHeaderModifier", "responseHeaderModifier": edits}],
            "backendRefs": [backend(weight=1_000_000)] * 16,
            "timeouts": {"request": "24h", "backendRequest": "24h"},
            "retry": {"codes": list(range(400, 600)), "attempts": 2**31 - 1, "backoff": "24h"}}
    assert install(resources_with(route("big", [rule] * 16))) == 1
    one_more = route("big", [{**rule, "filters": [{"type": "RequestHeaderModifier", "requestHeaderModifier": {
        **edits, "add": edits["add"][:-1] + [{"name": "x-31", "value": "v" * (width + 1)}]}}]}])
    with pytest.raises(ConfigError) as info:
        parse_text(one_more, "r.yaml")
    assert "at most 4096" in info.value.problems[0].message


# Private to the engine, read here on purpose: validation must refuse at least these.
@pytest.mark.parametrize("name,side", [(n.decode(), "request") for n in sorted(engine._UNEDITABLE_REQUEST)]
                         + [(n.decode(), "response") for n in sorted(engine._UNEDITABLE_RESPONSE)])
def test_headers_the_data_plane_will_not_edit_are_refused_when_applied(name: str, side: str) -> None:
    kind = "RequestHeaderModifier" if side == "request" else "ResponseHeaderModifier"
    member = kind[0].lower() + kind[1:]
    text = route("api", [{"filters": [{"type": kind, member: {"set": [{"name": name.title(), "value": "1"}]}}],
                          "backendRefs": [backend()]}])
    with pytest.raises(ConfigError) as info:
        parse_text(text, "r.yaml")
    assert "the node's to write" in info.value.problems[0].message
