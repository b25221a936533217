"""meshnode.demo.report: reading the peer identities and the mesh's counts the demo prints."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from meshnode.demo import report
from meshnode.demo.report import NOT_REPORTED

FE = "spiffe://cluster.local/ns/demo/sa/frontend"
BE = "spiffe://cluster.local/ns/demo/sa/backend"


@pytest.mark.parametrize("value, server, client", [
    (f"By={BE};URI={FE}", BE, FE),
    # Envoy's full form: quoted Subject with ; and , inside, Hash, several elements
    # (the last one was appended by the proxy nearest to the app).
    (f'By=spiffe://x/ns/a/sa/gw;Hash=ab12;Subject="CN=a,O=b;c";URI=spiffe://x/ns/a/sa/c,'
     f'By={BE};Hash=cd34;Subject="";URI={FE}', BE, FE),
    (f'By="{BE}";URI="{FE}"', BE, FE),
    (f"by={BE}; uri={FE}", BE, FE),  # keys are case-insensitive, blanks tolerated
    (f"URI={FE}", None, FE),
    ("", None, None),
    (None, None, None),
])
def test_peers_from_xfcc(value: str | None, server: str | None, client: str | None) -> None:
    assert report.peers_from_xfcc(value) == (server, client)


def test_xfcc_of_finds_the_header_case_insensitively_and_joins_repeats() -> None:
    headers = [["Host", "backend.demo.svc:8080"], ["X-Forwarded-Client-Cert", f"By={BE};URI=a"],
               ["x-forwarded-client-cert", f"By={BE};URI={FE}"]]
    assert report.xfcc_of(headers) == f"By={BE};URI=a,By={BE};URI={FE}"
    assert report.peers_from_xfcc(report.xfcc_of(headers)) == (BE, FE)
    assert report.xfcc_of([["Host", "x"]]) is None


LABELLED = f"""\
# HELP meshnode_requests_total HTTP requests
# TYPE meshnode_requests_total counter
meshnode_requests_total{{node="n",process="proxy-0",reporter="source",source_principal="{FE}",destination_service="backend.demo.svc.cluster.local",destination_principal="{BE}",response_code="200"}} 30.0
meshnode_requests_total{{node="n",process="proxy-1",reporter="source",source_principal="{FE}",destination_service="backend.demo.svc.cluster.local",destination_principal="{BE}",response_code="200"}} 18.0
meshnode_requests_total{{node="n",process="proxy-1",reporter="source",source_principal="{FE}",destination_service="backend.demo.svc.cluster.local",destination_principal="{BE}",response_code="503"}} 2.0
meshnode_requests_total{{node="n",process="proxy-0",reporter="destination",source_principal="{FE}",destination_service="backend.demo.svc.cluster.local",destination_principal="{BE}",response_code="200"}} 50.0
meshnode_requests_total{{node="n",process="proxy-0",reporter="source",source_principal="{FE}",destination_service="orders.shop.svc.cluster.local",destination_principal="spiffe://cluster.local/ns/shop/sa/orders",response_code="200"}} 7.0
"""

BY_CLASS = """\
# HELP meshnode_requests_total HTTP requests answered by the data plane, by response class
# TYPE meshnode_requests_total counter
meshnode_requests_total{direction="outbound",node="n",process="proxy-0",response_class="2xx"} 20.0
meshnode_requests_total{direction="outbound",node="n",process="proxy-1",response_class="2xx"} 31.0
"""


def test_mesh_counts_reads_the_source_reporters_labels() -> None:
    counts = report.mesh_counts(LABELLED, "backend", "demo")
    assert counts.present
    assert counts.codes == Counter({"200": 48, "503": 2})  # destination side and orders left out
    assert counts.destination_principals == Counter({BE: 50})
    assert counts.source_principals == Counter({FE: 50})
    assert counts.total() == 50


def test_mesh_counts_on_a_node_with_response_classes_only() -> None:
    counts = report.mesh_counts(BY_CLASS, "backend", "demo")
    assert counts.present and not counts.codes
    assert counts.classes == Counter({"2xx": 51})
    assert report.most_common(counts.destination_principals) == NOT_REPORTED


def test_mesh_counts_minus_a_baseline() -> None:
    before = report.mesh_counts(BY_CLASS.replace(" 31.0", " 30.0"), "backend", "demo")
    after = report.mesh_counts(BY_CLASS, "backend", "demo")
    assert after.minus(before).classes == Counter({"2xx": 1})


def test_mesh_counts_without_the_metric() -> None:
    counts = report.mesh_counts("# nothing here\n", "backend", "demo")
    assert not counts.present and counts.total() == 0


@pytest.mark.parametrize("label, matches", [
    ("backend.demo.svc.cluster.local", True), ("backend.demo.svc", True),
    ("backend.demo.svc:8080", True), ("demo/backend", True), ("demo/backend:http", True),
    ("backend", True), ("backend.other.svc", False), ("backend2.demo.svc", False),
    ("demo/backend2", False), ("frontend.demo.svc", False),
])
def test_destination_service_spellings(label: str, matches: bool) -> None:
    text = (f'meshnode_requests_total{{reporter="source",destination_service="{label}",'
            f'response_code="200"}} 1.0\n')
    assert report.mesh_counts(text, "backend", "demo").present is matches


def test_percentile_is_nearest_rank() -> None:
    values = list(range(1, 101))
    assert report.percentile(values, 50) == 50
    assert report.percentile(values, 99) == 99
    assert report.percentile([7], 99) == 7
    assert report.percentile([], 50) is None


def test_tally_and_most_common() -> None:
    assert report.tally(Counter({"200": 49, "503": 1})) == "200 x49, 503 x1"
    assert report.tally(Counter()) == "none"
    assert report.most_common(Counter({FE: 3})) == FE
    assert report.most_common(Counter({FE: 3, BE: 1})) == f"{FE} (and 1 other: {BE})"


def test_packaged_resources_are_valid_and_take_the_apps_ports() -> None:
    from meshnode.config import parse_text, validate_set
    from meshnode.demo.run import render_resources

    resources = parse_text(render_resources(41001, 41002), "resources.yaml")
    validate_set(resources)
    workloads = {r.name: r for r in resources if r.kind == "Workload"}
    assert workloads["frontend-v1"].spec.ports == {"http": 41001}
    assert workloads["backend-v1"].spec.ports == {"http": 41002}
    # Each side has its own service account, so the two identities differ.
    assert workloads["frontend-v1"].spec.service_account != workloads["backend-v1"].spec.service_account


def test_two_node_resources_place_each_app_on_its_node() -> None:
    from meshnode.config import compile_snapshot, parse_text, validate_set
    from meshnode.demo.run import plan_nodes, render_resources

    nodes = plan_nodes(Path("/tmp/x"), (21000, 21200))
    assert [(n.name, n.runtime_dir, n.ports.inbound, n.roles) for n in nodes] == [
        ("demo-a", Path("/tmp/x/demo-a"), 21006, ("frontend",)),
        ("demo-b", Path("/tmp/x/demo-b"), 21206, ("backend",))]
    resources = parse_text(render_resources(41001, 41002, nodes), "resources.yaml")
    validate_set(resources)
    snap = compile_snapshot(resources, "demo-a", 1)
    assert [w["workload"] for w in snap["local"]] == ["demo/frontend-v1"]
    [backend] = [s for s in snap["services"] if s["name"] == "backend"]
    assert [e["node"] for e in backend["endpoints"]] == ["demo-b"]
    assert snap["nodes"]["demo-b"] == {"address": "127.0.0.1", "inbound_port": 21206}
    # One node fronts both apps and names no Node.
    [one] = plan_nodes(Path("/tmp/x"), (21000,))
    assert (one.name, one.runtime_dir, one.roles) == (None, Path("/tmp/x"), ("frontend", "backend"))
    single = parse_text(render_resources(41001, 41002, [one]), "resources.yaml")
    assert not [r for r in single if r.kind == "Node"]
    assert all(r.spec.node is None for r in single if r.kind == "Workload")


@pytest.mark.parametrize("bases", [(21000, 21050), (21000, 21100, 21200), ()])
def test_plan_refuses_overlapping_blocks_and_more_than_two_nodes(bases: tuple[int, ...]) -> None:
    from meshnode.demo.errors import DemoError
    from meshnode.demo.run import plan_nodes

    with pytest.raises(DemoError):
        plan_nodes(Path("/tmp/x"), bases)
