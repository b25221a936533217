"""Tests for Mesh spec.tracing (meshnode.config.tracing): Istio's defaults, each field
read, an unknown field or value refused by name, a round trip, and the snapshot's part."""

from __future__ import annotations

import pytest

from meshnode.config import load
from meshnode.config.errors import ConfigError
from meshnode.config.snapshot import compile_snapshot
from meshnode.config.tracing import TracingSpec

MESH = """
apiVersion: meshnode.io/v1alpha1
kind: Mesh
metadata: {name: mesh}
spec:
  tracing:
"""


def mesh(tracing: str) -> object:
    [m] = load.parse_text(MESH + "".join(f"    {line}\n" for line in tracing.splitlines()),
                          "mesh.yaml")
    return m


def test_defaults_are_istios_and_export_nothing() -> None:
    t = mesh("sampling: 1").spec.tracing
    assert t == TracingSpec()
    assert (t.sampling_percent, t.collector_kind, t.service_name) == (
        1.0, None, "APP_LABEL_AND_NAMESPACE")


def test_every_field_is_read_and_written_back() -> None:
    m = mesh("sampling: 12.5\ncollector: {otlpHttp: 'http://127.0.0.1:4318/v1/traces'}\n"
             "serviceName: CANONICAL_NAME_ONLY\nbatchSize: 10\nflushInterval: 200ms\n"
             "maxQueuedSpans: 100")
    assert m.spec.tracing == TracingSpec(12.5, "otlpHttp", "http://127.0.0.1:4318/v1/traces",
                                         "CANONICAL_NAME_ONLY", 10, 0.2, 100)
    assert load.from_dict(load.to_dict(m), "again.yaml").spec.tracing == m.spec.tracing
    snap = compile_snapshot([m], "node-a", 1)
    assert snap["mesh"]["tracing"]["sampling"] == 12.5
    assert snap["mesh"]["tracing"]["collector_kind"] == "otlpHttp"


@pytest.mark.parametrize("tracing, names", [
    ("sampling: 101", "spec.tracing.sampling"),
    ("sampling: yes", "spec.tracing.sampling"),
    ("colector: {zipkin: 'http://a'}", "spec.tracing.colector"),
    ("collector: {jaeger: 'http://a'}", "spec.tracing.collector.jaeger"),
    ("collector: {zipkin: 'ftp://a'}", "spec.tracing.collector.zipkin"),
    ("collector: {zipkin: 'http://a', otlpHttp: 'http://b'}", "spec.tracing.collector"),
    ("serviceName: nope", "spec.tracing.serviceName"),
    ("batchSize: 0", "spec.tracing.batchSize"),
    ("maxQueuedSpans: -1", "spec.tracing.maxQueuedSpans"),
    ("flushInterval: forever", "spec.tracing.flushInterval"),
])
def test_a_bad_field_is_refused_by_name(tracing: str, names: str) -> None:
    with pytest.raises(ConfigError, match=names.replace(".", r"\.")):
        mesh(tracing)
