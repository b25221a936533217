"""Workload spec.user: the OS account a workload runs as (DESIGN §4, meshnode.callers)."""
from __future__ import annotations

import textwrap

import pytest

from meshnode.config import ConfigError, compile_snapshot, from_dict, parse_text, to_dict

pytestmark = pytest.mark.timeout(60)

WORKLOAD = "apiVersion: meshnode.io/v1alpha1\n" + textwrap.dedent("""\
    kind: Workload
    metadata: {name: web-1, namespace: demo}
    spec:
      address: 127.0.0.2
      serviceAccount: web
    """)


def user_of(value: str) -> object:
    (workload,) = parse_text(WORKLOAD + f"  user: {value}\n", "w.yaml")
    return workload.spec.user  # type: ignore[attr-defined]


@pytest.mark.parametrize("value, user", [("www-data", "www-data"), ("1000", 1000),
                                         ("'1000'", 1000), ("0", 0), ("_svc.app$", "_svc.app$"),
                                         ("4294967294", 4294967294)])
def test_a_user_is_a_name_or_a_uid(value: str, user: object) -> None:
    assert user_of(value) == user


@pytest.mark.parametrize("value", ["-1", "4294967295", "true", "'bad name'", "'-x'",
                                   "'a/b'", "[1]", "'" + "a" * 33 + "'"])
def test_a_bad_user_is_refused_by_field(value: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_text(WORKLOAD + f"  user: {value}\n", "w.yaml")
    assert [(p.resource, p.field) for p in info.value.problems] == [("Workload demo/web-1",
                                                                      "spec.user")]


def test_a_user_goes_round_the_store_and_into_the_snapshot() -> None:
    (workload,) = parse_text(WORKLOAD + "  user: nobody\n", "w.yaml")
    assert from_dict(to_dict(workload), "w.yaml") == workload
    (local,) = compile_snapshot([workload], "n1", 1)["local"]
    assert local["user"] == "nobody"
    (plain,) = parse_text(WORKLOAD, "w.yaml")
    assert "user" not in to_dict(plain)["spec"]
    assert compile_snapshot([plain], "n1", 1)["local"][0]["user"] is None
