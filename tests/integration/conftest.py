"""Fixtures of the integration tests: nodes that are always stopped, and checked gone.

Teardown always runs `meshnode down`, then checks that no process mentioning the
runtime dir survived; a survivor is killed and the test errors, because a leak here is
a product bug.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest

from mnharness import ORDERS, WORKERS, Node, free_port_base, kill_leftovers


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    report = yield
    setattr(item, f"rep_{report.when}", report)
    return report


@pytest.fixture
def make_node(request: pytest.FixtureRequest) -> Iterator[Callable[..., Node]]:
    """A factory of nodes that are not started yet: runtime dir and free port block.

    Teardown stops each one with `meshnode down` and asserts that nothing of it is left.
    """
    nodes: list[Node] = []

    def make(workers: int = WORKERS) -> Node:
        rd = Path(tempfile.mkdtemp(prefix="mn-", dir="/tmp"))
        node = Node(rd, free_port_base(), workers)
        nodes.append(node)
        return node

    yield make

    failed = any(getattr(getattr(request.node, f"rep_{when}", None), "failed", False)
                 for when in ("setup", "call"))
    problems = []
    for node in nodes:
        if failed:  # shown with the failure report: what each process said last
            print(f"\n=== logs of node in {node.runtime_dir}\n{node.log_tails()}")
        try:
            result = node.down()
            if result.returncode != 0:
                problems.append(f"`meshnode down` in {node.runtime_dir} exited "
                                f"{result.returncode}: {result.stderr}")
        except subprocess.TimeoutExpired:
            problems.append(f"`meshnode down` in {node.runtime_dir} timed out")
        leftovers = kill_leftovers(node.runtime_dir)
        if leftovers:
            problems.append(f"processes of {node.runtime_dir} survived `meshnode down` "
                            f"(killed now): {leftovers}")
        shutil.rmtree(node.runtime_dir, ignore_errors=True)
    assert not problems, "\n".join(problems)


@pytest.fixture
def node(make_node: Callable[..., Node]) -> Node:
    """A started, ready node with two workers."""
    n = make_node()
    result = n.up()
    assert result.returncode == 0, f"up failed ({result.returncode}):\n{result.stdout}\n{result.stderr}"
    assert "ready" in result.stdout
    return n


@pytest.fixture
def resource_dir() -> Iterator[Path]:
    """A scratch dir for the YAML files a test writes."""
    path = Path(tempfile.mkdtemp(prefix="mn-res-", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def write_resources(resource_dir: Path) -> Callable[..., Path]:
    """Write a Service + Workload pair (namespace demo) to a file and return its path."""
    def write(name: str = "orders", port: int | str = 9090, text: str | None = None,
              filename: str | None = None) -> Path:
        path = resource_dir / (filename or f"{name}.yaml")
        path.write_text(text if text is not None else ORDERS.format(name=name, port=port))
        return path
    return write
