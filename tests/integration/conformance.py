"""What the Gateway API conformance suite expects of an answer, and how it judges it:
a port of conformance/utils/http (ExpectedResponse, CompareRoundTrip, AwaitConvergence)
and conformance/utils/weight (TestWeightedDistributionBatch) for the HTTPRoute tests.

An ``Expect`` is one test case as the Go suite writes it: the request (host, path,
method, fields, the fields the echo backend is asked to answer with) and what must come
back: a status, the backend pod (by name prefix, as ``Backend: "echo-v1"``), the
namespace, what the backend received (fields present, fields absent, the path after any
rewrite), the response's own fields, and for a redirect its Location. A case judged on
an echo answer also requires the path the backend got to be the one sent unless the
case says otherwise: the core suite's CompareRoundTrip does so, and no filter of those
cases rewrites it.

``check`` does what the suite's MakeRequestAndExpectEventuallyConsistentResponse does
with its default timeouts (three answers in a row as expected, within a deadline): for
the first case, which shows the routes are in force; every later case must then hold
three times in a row at once, on fresh connections that either worker may take. Every
case is judged and every mismatch reported, as the Go subtests would be.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable
from urllib.parse import urlsplit

from meshkit import Caller, ConformanceMesh, Exchange, exchange, open_connection

# conformance/utils/config: DefaultTimeoutConfig.RequiredConsecutiveSuccesses
CONSECUTIVE = 3
# MaxTimeToConsistency is 30 s upstream; a node has its config in force when `apply`
# returns (every worker ACKed it), so this only covers the engine's swap.
CONVERGE_S = 15.0
POLL_S = 0.2
# conformance/utils/weight: totalRequests, tolerancePercentage, MaxTestRetries.
WEIGHT_REQUESTS = 500
WEIGHT_TOLERANCE = 0.05
WEIGHT_ATTEMPTS = 10
WEIGHT_CONNECTIONS = 10  # TestWeightedDistribution's concurrentRequests, one after another
# What the header modifier tests' requests (or the backend's answers) carry before a
# "set" or an "add" of X-Header-Set / X-Header-Add.
SET_BEFORE = {"Some-Other-Header": "val", "X-Header-Set": "some-other-value"}
ADD_BEFORE = {"Some-Other-Header": "val", "X-Header-Add": "some-other-value"}


@dataclass(frozen=True)
class Redirect:
    """roundtripper.RedirectRequest: the parts of Location a case names ("" = the default:
    the request's own scheme, host and path; the scheme's well-known port or none)."""

    scheme: str = ""
    host: str = ""
    port: str = ""
    path: str = ""


@dataclass
class Expect:
    """http.ExpectedResponse, for a request sent through the mesh."""

    path: str = "/"
    host: str = "echo"
    method: str = "GET"
    headers: dict[str, str] = field(default_factory=dict)
    backend_sets: dict[str, str] = field(default_factory=dict)  # BackendSetResponseHeaders
    status: tuple[int, ...] = (200,)
    backend: str = ""  # the serving pod's name starts with it ("": any, or none)
    namespace: str = ""
    got_headers: dict[str, str] = field(default_factory=dict)  # ExpectedRequest.Headers
    got_absent: tuple[str, ...] = ()  # ExpectedRequest.AbsentHeaders
    got_path: str | None = None  # ExpectedRequest.Path (None: the path sent)
    response_headers: dict[str, str] = field(default_factory=dict)
    response_absent: tuple[str, ...] = ()
    redirect: Redirect | None = None

    def __str__(self) -> str:
        extra = f" {self.headers}" if self.headers else ""
        want = f"pod {self.backend}*" if self.backend else f"status {self.status}"
        return f"{self.method} {self.host}{self.path}{extra} -> {want}"

    def request_fields(self) -> dict[str, str]:
        fields = dict(self.headers)
        if self.backend_sets:
            fields["X-Echo-Set-Header"] = ",".join(f"{k}:{v}" for k, v in self.backend_sets.items())
        return fields


def mismatch(case: Expect, got: Exchange) -> str | None:
    """Why ``got`` is not what ``case`` expects (None: it is), as CompareRoundTrip says."""
    if got.status not in case.status:
        return f"status {got.status}, want one of {case.status}"
    for name, value in case.response_headers.items():
        if got.header(name) != value:
            return f"response field {name}: {got.header(name)!r}, want {value!r}"
    for name in case.response_absent:
        if got.header(name) is not None:
            return f"response field {name} should be absent, is {got.header(name)!r}"
    if case.redirect is not None:
        return _redirect_mismatch(case, got)
    echo = got.echo
    if echo is None:
        if case.backend or case.got_headers or case.got_absent or case.got_path:
            return "no echo backend answered"
        return None
    if not echo["pod"].startswith(case.backend):
        return f"served by pod {echo['pod']}, want {case.backend}*"
    if case.namespace and echo["namespace"] != case.namespace:
        return f"served from namespace {echo['namespace']}, want {case.namespace}"
    want_path = case.path if case.got_path is None else case.got_path
    if echo["path"] != want_path:
        return f"the backend got path {echo['path']!r}, want {want_path!r}"
    received = {name.lower(): ",".join(values) for name, values in echo["headers"].items()}
    for name, value in case.got_headers.items():
        if received.get(name.lower()) != value:
            return f"the backend got {name}: {received.get(name.lower())!r}, want {value!r}"
    for name in case.got_absent:
        if name.lower() in received:
            return f"the backend got {name}: {received[name.lower()]!r}, want it absent"
    return None


def _redirect_mismatch(case: Expect, got: Exchange) -> str | None:
    """http.go's redirect checks, with setRedirectRequestDefaults; the host defaults to
    the request's (HTTPRequestRedirectFilter.Hostname: "When empty, the hostname in the
    Host header of the request is used")."""
    assert case.redirect is not None
    location = got.header("location")
    if not location:
        return "a redirect without Location"
    url = urlsplit(location)
    want = case.redirect
    scheme, host, path = (want.scheme or "http", want.host or case.host.split(":")[0],
                          want.path or urlsplit(case.path).path)
    port = str(url.port or "")
    if (url.hostname or "") != host:
        return f"Location {location!r}: host {url.hostname!r}, want {host!r}"
    if want.port:
        if port != want.port:
            return f"Location {location!r}: port {port!r}, want {want.port!r}"
    elif port not in ("", {"http": "80", "https": "443"}.get(url.scheme, "")):
        return f"Location {location!r}: port {port!r}, want none or the scheme's own"
    if url.scheme != scheme:
        return f"Location {location!r}: scheme {url.scheme!r}, want {scheme!r}"
    if url.path != path:
        return f"Location {location!r}: path {url.path!r}, want {path!r}"
    return None


def _judge(mesh: ConformanceMesh, caller: Caller, case: Expect) -> str | None:
    try:
        got = mesh.send(caller, case.host, case.path, case.method, case.request_fields())
    except OSError as exc:
        return f"request failed: {exc!r}"
    why = mismatch(case, got)
    return f"{why}; got {got.describe()}" if why else None


def converge(mesh: ConformanceMesh, caller: Caller, case: Expect,
             timeout_s: float = CONVERGE_S) -> str | None:
    """AwaitConvergence: CONSECUTIVE answers in a row as expected within ``timeout_s``;
    the last mismatch when that never happens."""
    deadline = time.monotonic() + timeout_s
    streak, why = 0, None
    while streak < CONSECUTIVE:
        why = _judge(mesh, caller, case)
        if why is None:
            streak += 1
            continue
        streak = 0
        if time.monotonic() >= deadline:
            return why
        time.sleep(POLL_S)  # the suite's DefaultPollInterval between failed tries
    return None


def check(mesh: ConformanceMesh, caller: Caller, cases: list[Expect]) -> None:
    """Every case as the Go test runs it; one assertion naming each case that failed."""
    failures = []
    for i, case in enumerate(cases):
        if i == 0:
            why = converge(mesh, caller, case)
        else:
            why = next(filter(None, (_judge(mesh, caller, case) for _ in range(CONSECUTIVE))),
                       None)
        if why is not None:
            failures.append(f"case {i} ({case}): {why}")
    assert not failures, f"{len(failures)} of {len(cases)} cases failed:\n" + "\n".join(failures)


def backend_name(pod: str) -> str:
    """weight.extractBackendName: a pod's name without its two hash parts."""
    parts = pod.split("-")
    return "-".join(parts[:-2]) if len(parts) >= 3 else pod


def sample(mesh: ConformanceMesh, caller: Caller, case: Expect, count: int,
           label: Callable[[Exchange], str]) -> dict[str, int]:
    """``count`` requests of ``case`` over WEIGHT_CONNECTIONS keep-alive connections (the
    node routes each request on its own), counted by ``label`` of each answer."""
    seen: dict[str, int] = {}
    per_connection = -(-count // WEIGHT_CONNECTIONS)
    sent = 0
    while sent < count:
        conn = open_connection(mesh.port, caller)
        try:
            for _ in range(min(per_connection, count - sent)):
                name = label(exchange(conn, case.method, case.host, case.path,
                                      case.request_fields()))
                seen[name] = seen.get(name, 0) + 1
                sent += 1
        finally:
            conn.close()
    return seen


def served_by(got: Exchange) -> str:
    """The backend that answered (weight.extractBackendName), or the status when none did."""
    echo = got.echo
    return backend_name(echo["pod"]) if echo is not None else f"status {got.status}"


def distribution_error(seen: dict[str, int], want: dict[str, float], total: int) -> str | None:
    """TestWeightedDistributionBatch's verdict on one batch; None when it passes."""
    errors = [f"answered by an unexpected backend: {label}" for label in seen if label not in want]
    active = sum(1 for share in want.values() if share > 0)
    if len(seen) != active:
        errors.append(f"expected {active} backends to receive traffic, got {sorted(seen)}")
    for label, share in want.items():
        got = seen.get(label, 0) / total
        if abs(got - share) > WEIGHT_TOLERANCE:
            errors.append(f"{label}: {got:.3f} of requests, want {share} ±{WEIGHT_TOLERANCE}")
    return "; ".join(errors) or None


def check_weights(mesh: ConformanceMesh, caller: Caller, case: Expect,
                  want: dict[str, float], label: Callable[[Exchange], str] = served_by) -> None:
    """The weight package's test: WEIGHT_REQUESTS requests within WEIGHT_TOLERANCE of each
    share, up to WEIGHT_ATTEMPTS batches (statistical variance, as upstream allows)."""
    errors = []
    for _ in range(WEIGHT_ATTEMPTS):
        seen = sample(mesh, caller, case, WEIGHT_REQUESTS, label)
        error = distribution_error(seen, want, WEIGHT_REQUESTS)
        if error is None:
            return
        errors.append(f"{seen}: {error}")
        if any(label not in want for label in seen):
            break  # a backend that must get nothing got something: no retry will mend it
    raise AssertionError("weighted distribution failed:\n" + "\n".join(errors))
