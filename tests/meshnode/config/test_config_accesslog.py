"""The Mesh's access log settings (spec.telemetry): sampling, the one filter expression
meshnode implements and the file's rotation, kept, written back, carried into the
snapshot and taken by the engine's table; anything else refused by name."""
from __future__ import annotations

from typing import Any

import pytest
import yaml

from fastpath.engine import RouteTable
from meshnode.config import ConfigError, compile_snapshot, parse_text, to_dict

from authzkit import doc

pytestmark = pytest.mark.timeout(60)


def mesh(telemetry: dict[str, Any]) -> str:
    return doc("Mesh", {"telemetry": telemetry}, name="default", api="meshnode.io/v1alpha1")


def test_settings_are_kept_written_back_and_compiled_for_the_engine() -> None:
    [m] = parse_text(mesh({"accessLog": True, "accessLogSampling": 12.5,
                           "accessLogFilter": {"expression": "response.code >= 500"},
                           "accessLogRotation": {"maxBytes": 4096, "backupCount": 0}}), "m.yaml")
    assert (m.spec.access_log, m.spec.access_log_sampling_percent, m.spec.access_log_min_status,
            m.spec.access_log_max_bytes, m.spec.access_log_backups) == (True, 12.5, 500, 4096, 0)
    assert parse_text(yaml.safe_dump(to_dict(m)), "again.yaml") == [m]
    snapshot = compile_snapshot([m], "n", 1)["mesh"]
    assert (snapshot["access_log_sampling_percent"], snapshot["access_log_min_status"],
            snapshot["access_log_max_bytes"], snapshot["access_log_backups"]) == (12.5, 500, 4096, 0)
    RouteTable().set_access_log(snapshot["access_log"], snapshot["access_log_sampling_percent"],
                                snapshot["access_log_min_status"])     # taken


def test_the_default_logs_nothing_and_once_on_every_request_to_a_rotated_file() -> None:
    """Off by default, as Istio's default profile; turned on, every request."""
    snapshot = compile_snapshot([], "n", 1)["mesh"]
    assert (snapshot["access_log"], snapshot["access_log_sampling_percent"],
            snapshot["access_log_min_status"], snapshot["access_log_max_bytes"],
            snapshot["access_log_backups"]) == (False, 100.0, 0, 100 * 1024 * 1024, 5)


@pytest.mark.parametrize("telemetry, field, says", [
    ({"accessLogSampling": 101}, "spec.telemetry.accessLogSampling", "must be a percentage"),
    ({"accessLogSampling": True}, "spec.telemetry.accessLogSampling", "must be a percentage"),
    ({"accessLogFilter": {"expression": "response.code >= 400 || response.flags != 0"}},
     "spec.telemetry.accessLogFilter.expression", "is not implemented: meshnode takes only"),
    ({"accessLogFilter": {"expression": "response.code >= 700"}},
     "spec.telemetry.accessLogFilter.expression", "is not implemented"),
    ({"accessLogFilter": {}}, "spec.telemetry.accessLogFilter.expression", "required"),
    ({"accessLogFilter": {"expression": "response.code >= 400", "match": "x"}},
     "spec.telemetry.accessLogFilter.match", "unknown field"),
    ({"accessLogRotation": {"maxBytes": 10}}, "spec.telemetry.accessLogRotation.maxBytes",
     "must be between 1024"),
    ({"accessLogRotation": {"maxFiles": 3}}, "spec.telemetry.accessLogRotation.maxFiles",
     "unknown field"),
    ({"accessLogFile": "/dev/stdout"}, "spec.telemetry.accessLogFile", "unknown field"),
])
def test_other_values_are_refused_by_name(telemetry: dict[str, Any], field: str, says: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_text(mesh(telemetry), "m.yaml")
    assert any(p.field == field and says in p.message for p in info.value.problems), \
        info.value.problems
