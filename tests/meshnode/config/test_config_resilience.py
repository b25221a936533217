"""DestinationRule trafficPolicy.outlierDetection (connectionPool: test_config_destinationrule_pool.py):
Istio's YAML applied unchanged, Istio's defaults, what each port's snapshot entry gives
the engine (RouteTable.set_outlier), bad values and fields not implemented refused by
name, and the store's round trip."""
from __future__ import annotations

from functools import partial
from pathlib import Path

import pytest

from meshnode.config.destinationruleoutlier import NOT_IMPLEMENTED

from test_config_destinationrule import (ISTIO_CIRCUIT_BREAKER, port_policy, problems, rule,
                                         stored_and_read_back)

pytestmark = pytest.mark.timeout(60)

outliers = partial(port_policy, "outlier")


def test_no_rule_no_outlier_detection() -> None:
    assert outliers() == {80: None, 9080: None}


def test_istios_example_applies_with_the_defaults_for_the_rest() -> None:
    want = {"consecutive_5xx": 7, "consecutive_gateway": 0, "interval_s": 300.0,
            "base_ejection_s": 900.0, "max_ejection_percent": 10, "min_health_percent": 0}
    assert outliers(ISTIO_CIRCUIT_BREAKER) == {80: want, 9080: want}


def test_an_empty_outlier_detection_takes_every_default() -> None:
    got = outliers(rule("host: ratings\ntrafficPolicy: {outlierDetection: {}}"))[80]
    assert got == {"consecutive_5xx": 5, "consecutive_gateway": 0, "interval_s": 10.0,
                   "base_ejection_s": 30.0, "max_ejection_percent": 10, "min_health_percent": 0}


def test_every_field_is_taken_and_milliseconds_are_durations() -> None:
    got = outliers(rule("""\
        host: ratings
        trafficPolicy:
          loadBalancer: {simple: ROUND_ROBIN}
          outlierDetection:
            consecutive5xxErrors: 0
            consecutiveGatewayErrors: 3
            interval: 50ms
            baseEjectionTime: 1.5s
            maxEjectionPercent: 100
            minHealthPercent: 25
        """))[9080]
    assert got == {"consecutive_5xx": 0, "consecutive_gateway": 3, "interval_s": 0.05,
                   "base_ejection_s": 1.5, "max_ejection_percent": 100, "min_health_percent": 25}


@pytest.mark.parametrize("field", NOT_IMPLEMENTED)
def test_outlier_fields_not_implemented_are_refused_by_name(field: str) -> None:
    value = "true" if field == "splitExternalLocalOriginErrors" else "3"
    found = problems(rule(f"host: ratings\ntrafficPolicy: {{outlierDetection: {{{field}: {value}}}}}"))
    [line] = [p for p in found if f"{field} is not implemented yet" in p]
    assert f"spec.trafficPolicy.outlierDetection.{field}: " in line


@pytest.mark.parametrize("body, where, says", [
    ("consecutive5xxErrors: -1", "consecutive5xxErrors", "between 0 and 4294967295"),
    ("consecutive5xxErrors: '5'", "consecutive5xxErrors", "must be an integer"),
    ("consecutiveGatewayErrors: 1.5", "consecutiveGatewayErrors", "must be an integer"),
    ("interval: 0s", "interval", "must be between 1ms and"),
    ("interval: 10", "interval", "duration"),
    ("baseEjectionTime: 500us", "baseEjectionTime", "must be between 1ms and"),
    ("maxEjectionPercent: 101", "maxEjectionPercent", "between 0 and 100"),
    ("minHealthPercent: -5", "minHealthPercent", "between 0 and 100"),
    ("consecutive5xxError: 5", "consecutive5xxError", "unknown field"),
])
def test_bad_values_are_refused_naming_the_field(body: str, where: str, says: str) -> None:
    found = problems(rule(f"host: ratings\ntrafficPolicy: {{outlierDetection: {{{body}}}}}"))
    assert any(f"spec.trafficPolicy.outlierDetection.{where}: " in p and says in p
               for p in found), found


def test_port_level_outlier_detection_stays_refused_by_name() -> None:
    found = problems(rule("host: ratings\ntrafficPolicy: {portLevelSettings: "
                          "[{port: {number: 80}, outlierDetection: {}}]}"))
    assert any("portLevelSettings[0].outlierDetection: outlierDetection is not implemented yet"
               in p for p in found), found


def test_the_store_gives_the_rule_back_as_written(tmp_path: Path) -> None:
    kept, read = stored_and_read_back(tmp_path / "state", ISTIO_CIRCUIT_BREAKER)
    assert read.spec.outlier == kept.spec.outlier


def test_a_max_ejection_percent_of_zero_leaves_envoys_ten() -> None:
    """Istio hands maxEjectionPercent to Envoy only when above 0: a rule that writes 0
    gets Envoy's default of 10 %, not 'no ejections beyond the first'."""
    got = outliers(rule("host: ratings\ntrafficPolicy: {outlierDetection: {maxEjectionPercent: 0}}"))
    assert got[80]["max_ejection_percent"] == 10
