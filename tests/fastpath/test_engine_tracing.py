"""Tests for fastpath.engine's trace context (tracing.pxi), as Envoy's sidecars carry it
with tracing on: an x-request-id made when a request has none and kept when it has one;
a span per side in the trace the request's traceparent (W3C Trace Context) or B3 fields
name, or in a new one sampled per RouteTable.set_tracing(); what the app receives; a
traceparent that does not parse treated as absent (a new trace, only hex written); each
side's access record with its span's ids, and a record for a sampled span the access
log left out, flagged span_only.

The mesh is test_engine_routes.py's (the caller's node and the app's node, real engines
and sockets), shared by the module; each app reports the fields it received.
"""

from __future__ import annotations

import json
import re
from typing import Any, Iterator

import pytest

from test_engine_accesslog import records
from test_engine_routes import FRONTEND_ID, Mesh, mesh_pki, request, running_mesh  # noqa: F401

pytestmark = pytest.mark.timeout(60)

UUID4 = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}")
TRACEPARENT = re.compile(r"00-([0-9a-f]{32})-([0-9a-f]{16})-(0[01])")
TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT = "00f067aa0ba902b7"


@pytest.fixture(scope="module")
def mesh(mesh_pki: Any) -> Iterator[Mesh]:  # noqa: F811
    with running_mesh(mesh_pki) as m:
        yield m


def install(m: Mesh, sampling: float | None = None, spans: bool = False,
            access: tuple[float, int] | None = None) -> None:
    """The caller's node routing "backend" to its v1 app, new traces sampled at
    `sampling` percent on both sides (None: the table's default), sampled spans given
    records when `spans`, access records kept as `access` (percent, least status) says."""
    t = m.inbound_table()
    out, _ = m.outbound()
    for table in (t, out):
        if sampling is not None:
            table.set_tracing(sampling, spans)
        if access is not None:
            table.set_access_log(True, *access)
    m.in_node.install(t)
    m.out_node.install(out)


@pytest.fixture(autouse=True)
def tables(mesh: Mesh) -> None:
    install(mesh)


def received(m: Mesh, headers: dict[str, str] | None = None) -> dict[str, list[str]]:
    """Through both nodes: the fields the app received, each name's values."""
    status, _, seen = request(m.http(), "/", headers=headers)
    assert status == 200
    out: dict[str, list[str]] = {}
    for name, value in seen["headers"]:
        out.setdefault(name, []).append(value)
    return out


def counters(m: Mesh) -> tuple[dict[str, int], dict[str, int]]:
    keys = ("trace_started", "trace_joined", "trace_malformed", "request_ids_made")
    return tuple({k: node.engine.stats()[k] for k in keys}  # type: ignore[return-value]
                 for node in (m.out_node, m.in_node))


def grown(before: tuple[dict[str, int], ...], m: Mesh) -> tuple[dict[str, int], ...]:
    """What each side counted since `before` (caller's node, app's node)."""
    return tuple({k: now[k] - was[k] for k in now} for was, now in zip(before, counters(m)))


def parent_of(fields: dict[str, list[str]]) -> tuple[str, str, str]:
    [value] = fields["traceparent"]
    m = TRACEPARENT.fullmatch(value)
    assert m is not None, value
    return m.group(1), m.group(2), m.group(3)


# --- x-request-id -------------------------------------------------------------------------------


def test_the_callers_node_makes_an_x_request_id_when_there_is_none(mesh: Mesh) -> None:
    before = counters(mesh)
    first, second = received(mesh), received(mesh)
    assert UUID4.fullmatch(first["x-request-id"][0]), first["x-request-id"]
    assert first["x-request-id"] != second["x-request-id"]
    out, inb = grown(before, mesh)
    # The app's node trusts the id the caller's node made (neither is an edge: Istio).
    assert out["request_ids_made"] == 2 and inb["request_ids_made"] == 0


def test_an_x_request_id_the_caller_sent_is_kept(mesh: Mesh) -> None:
    before = counters(mesh)
    assert received(mesh, {"X-Request-Id": "my-own-id"})["x-request-id"] == ["my-own-id"]
    assert all(side["request_ids_made"] == 0 for side in grown(before, mesh))


# --- traceparent --------------------------------------------------------------------------------


def test_a_request_with_no_context_begins_a_trace_both_sides_span(mesh: Mesh) -> None:
    before = counters(mesh)
    trace, parent, flags = parent_of(received(mesh))
    assert trace != "0" * 32 and parent != "0" * 16
    out, inb = grown(before, mesh)
    assert (out["trace_started"], out["trace_joined"]) == (1, 0)
    assert (inb["trace_started"], inb["trace_joined"]) == (0, 1)   # the caller's node's trace


def test_the_callers_trace_goes_on_under_a_span_of_each_side(mesh: Mesh) -> None:
    sent = f"00-{TRACE}-{PARENT}-01"
    fields = received(mesh, {"traceparent": sent, "tracestate": "congo=t61rcWkgMzE,rojo=1"})
    trace, parent, flags = parent_of(fields)
    assert (trace, flags) == (TRACE, "01")
    assert parent != PARENT                         # the app's node's span, not the caller's
    assert fields["tracestate"] == ["congo=t61rcWkgMzE,rojo=1"]     # unchanged


def test_a_span_per_request_on_one_connection(mesh: Mesh) -> None:
    conn = mesh.http()
    seen = [request(conn, "/", headers={"traceparent": f"00-{TRACE}-{PARENT}-01"})[2]
            for _ in range(3)]
    parents = {dict(s["headers"])["traceparent"] for s in seen}
    assert len(parents) == 3 and all(p.startswith(f"00-{TRACE}-") for p in parents)


def test_new_traces_are_sampled_per_the_table_a_callers_decision_is_kept(mesh: Mesh) -> None:
    install(mesh, sampling=100.0)
    assert parent_of(received(mesh))[2] == "01"
    assert parent_of(received(mesh, {"traceparent": f"00-{TRACE}-{PARENT}-00"}))[2] == "00"
    install(mesh, sampling=0.0)
    assert {parent_of(received(mesh))[2] for _ in range(5)} == {"00"}
    assert parent_of(received(mesh, {"traceparent": f"00-{TRACE}-{PARENT}-01"}))[2] == "01"


def test_a_higher_version_is_read_for_its_first_four_parts(mesh: Mesh) -> None:
    """W3C Trace Context §4.3: a later version's trace is joined; what is sent on is
    version 00, the one this side writes."""
    trace, _, flags = parent_of(received(mesh, {"traceparent": f"cc-{TRACE}-{PARENT}-01-what"}))
    assert (trace, flags) == (TRACE, "01")


MALFORMED = [
    f"00-{TRACE}-{PARENT}-01-extra",            # version 00 is exactly 55 bytes
    f"00-{TRACE}-{PARENT}-1",                   # short
    f"ff-{TRACE}-{PARENT}-01",                  # version ff is invalid
    f"00-{'0' * 32}-{PARENT}-01",               # all-zero trace id
    f"00-{TRACE}-{'0' * 16}-01",                # all-zero parent id
    f"00-{TRACE.upper()}-{PARENT}-01",          # upper-case hex
    f"00-{TRACE[:-3]}x:y-{PARENT}-01",          # not hex: nothing of it is written on
    f"00_{TRACE}_{PARENT}_01",                  # not its separators
]


@pytest.mark.parametrize("sent", MALFORMED)
def test_a_malformed_traceparent_is_treated_as_absent(mesh: Mesh, sent: str) -> None:
    before = counters(mesh)
    fields = received(mesh, {"traceparent": sent})
    trace, _, _ = parent_of(fields)                 # one, well formed, only hex
    assert trace != TRACE
    out, inb = grown(before, mesh)
    assert (out["trace_malformed"], out["trace_started"]) == (1, 1)
    assert (inb["trace_malformed"], inb["trace_joined"]) == (0, 1)


def test_two_traceparents_are_one_too_many(mesh: Mesh) -> None:
    sock_fields = _raw(mesh, [f"traceparent: 00-{TRACE}-{PARENT}-01",
                              f"traceparent: 00-{TRACE}-{PARENT}-01"])
    trace, _, _ = parent_of(sock_fields)
    assert trace != TRACE


def _raw(m: Mesh, lines: list[str]) -> dict[str, list[str]]:
    """A request with field lines as given (http.client would fold none, but checks)."""
    conn = m.http()
    conn.putrequest("GET", "/", skip_host=True)
    conn.putheader("Host", "backend")
    for line in lines:
        name, value = line.split(": ", 1)
        conn.putheader(name, value)
    conn.endheaders()
    seen = json.loads(conn.getresponse().read())
    out: dict[str, list[str]] = {}
    for name, value in seen["headers"]:
        out.setdefault(name, []).append(value)
    return out


# --- B3 -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("trace", [TRACE, TRACE[16:]])
def test_b3_fields_are_joined_and_rewritten_alike(mesh: Mesh, trace: str) -> None:
    fields = received(mesh, {"X-B3-TraceId": trace, "X-B3-SpanId": PARENT, "X-B3-Sampled": "1"})
    assert fields["x-b3-traceid"] == [trace]
    [span] = fields["x-b3-spanid"]
    [up] = fields["x-b3-parentspanid"]
    assert re.fullmatch("[0-9a-f]{16}", span) and re.fullmatch("[0-9a-f]{16}", up)
    assert PARENT not in (span, up)                 # two spans after the caller's
    assert fields["x-b3-sampled"] == ["1"]
    # The traceparent sent along names the same trace and span.
    got_trace, parent, flags = parent_of(fields)
    assert (got_trace, parent, flags) == (trace.rjust(32, "0"), span, "01")


def test_b3_without_a_decision_is_sampled_here(mesh: Mesh) -> None:
    install(mesh, sampling=0.0)
    fields = received(mesh, {"x-b3-traceid": TRACE, "x-b3-spanid": PARENT,
                             "x-b3-parentspanid": "1" * 16})
    assert fields["x-b3-sampled"] == ["0"] and fields["x-b3-traceid"] == [TRACE]
    assert parent_of(fields)[0] == TRACE


@pytest.mark.parametrize("value, sent_on", [("true", "1"), ("false", "0"), ("d", "1"),
                                             ("yes", "0")])
def test_b3_sampled_values_older_tracers_wrote_are_read(mesh: Mesh, value: str,
                                                        sent_on: str) -> None:
    """x-b3-sampled "true" (tracers older than the B3 spec), "d" (the single header's
    debug) accept, as Envoy's and OpenTelemetry's readers take them; anything else
    denies: the caller's trace is joined either way and its decision goes on as 1 or 0
    (a value the trace was not read for left the B3 fields of one trace beside a
    traceparent of another)."""
    install(mesh, sampling=0.0 if sent_on == "1" else 100.0)
    fields = received(mesh, {"x-b3-traceid": TRACE, "x-b3-spanid": PARENT,
                             "x-b3-sampled": value})
    assert fields["x-b3-sampled"] == [sent_on] and fields["x-b3-traceid"] == [TRACE]
    trace, parent, flags = parent_of(fields)
    assert (trace, parent, flags) == (TRACE, fields["x-b3-spanid"][0], "0" + sent_on)


@pytest.mark.parametrize("b3_trace", [TRACE[::-1], TRACE[::-1][16:]], ids=["128-bit", "64-bit"])
def test_b3_fields_beside_a_traceparent_of_another_trace_name_the_traceparents(
        mesh: Mesh, b3_trace: str) -> None:
    """The traceparent's trace is the one joined: the B3 fields passed on with it name
    the same span in the same trace, not this side's span in the caller's other one."""
    fields = received(mesh, {"traceparent": f"00-{TRACE}-{PARENT}-01", "x-b3-traceid": b3_trace,
                             "x-b3-spanid": "1" * 16, "x-b3-sampled": "0"})
    trace, parent, flags = parent_of(fields)
    assert (trace, flags) == (TRACE, "01")
    assert fields["x-b3-traceid"] == [TRACE] and fields["x-b3-spanid"] == [parent]
    assert fields["x-b3-sampled"] == ["1"] and len(fields["x-b3-parentspanid"]) == 1


def test_malformed_b3_is_left_as_it_came_and_a_trace_begins(mesh: Mesh) -> None:
    fields = received(mesh, {"x-b3-traceid": "not-hex", "x-b3-spanid": PARENT})
    assert fields["x-b3-traceid"] == ["not-hex"] and fields["x-b3-spanid"] == [PARENT]
    assert "x-b3-parentspanid" not in fields
    assert parent_of(fields)[0] != TRACE


# --- access records -----------------------------------------------------------------------------


def both_records(m: Mesh) -> tuple[dict[str, Any], dict[str, Any]]:
    """The one record each side keeps for one request (caller's node, app's node)."""
    [out] = records(m.out_node, 1)
    [inb] = records(m.in_node, 1)
    return out, inb


def test_each_sides_record_carries_its_span_and_the_x_request_id_forwarded(mesh: Mesh) -> None:
    install(mesh, sampling=100.0, spans=True, access=(100.0, 0))
    fields = received(mesh)
    out, inb = both_records(mesh)
    trace, app_parent, _ = parent_of(fields)
    # The id the caller's node made is the one both records and the app have.
    assert out["request_id"] == inb["request_id"] == fields["x-request-id"][0]
    assert out["trace_id"] == inb["trace_id"] == trace
    assert out["parent_span_id"] is None                # the caller's node began it
    assert inb["parent_span_id"] == out["span_id"] and inb["span_id"] == app_parent
    assert out["trace_sampled"] and inb["trace_sampled"]
    assert inb["start_unix_nano"] >= out["start_unix_nano"] and inb["duration_ns"] > 0
    assert "span_only" not in out and "span_only" not in inb
    received(mesh, {"traceparent": f"00-{TRACE}-{PARENT}-00"})
    out, inb = both_records(mesh)
    assert (out["trace_id"], out["parent_span_id"], out["trace_sampled"]) == (TRACE, PARENT, False)
    assert "start_unix_nano" not in out and inb["parent_span_id"] == out["span_id"]


@pytest.mark.parametrize("access", [None, (100.0, 500)], ids=["log-off", "log-errors-only"])
def test_a_sampled_span_the_access_log_leaves_out_gets_a_record_flagged_span_only(
        mesh: Mesh, access: tuple[float, int] | None) -> None:
    install(mesh, sampling=0.0, spans=True, access=access)
    received(mesh)                                  # not sampled: no record
    received(mesh, {"traceparent": f"00-{TRACE}-{PARENT}-01"})
    out, inb = both_records(mesh)
    assert out["span_only"] and inb["span_only"]
    assert out["trace_id"] == inb["trace_id"] == TRACE and inb["parent_span_id"] == out["span_id"]
    assert (out["path"], out["response_code"], inb["downstream_peer_uri_san"]) == (
        "/", 200, FRONTEND_ID)
    assert UUID4.fullmatch(out["request_id"]) and inb["request_id"] == out["request_id"]
    install(mesh, sampling=100.0, access=access)    # spans not exported: none
    received(mesh)
    assert [n.engine.access_records() for n in (mesh.out_node, mesh.in_node)] == [[], []]
