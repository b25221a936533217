"""Istio's own authorization test cases, run against meshnode: every test function of
istio/istio's tests/integration/security/authz_test.go (at the commit testdata/istio_authz
was copied from) that needs no JWT, external authorizer, gateway or Kubernetes, with its
policies (the same templates, rendered as its framework renders them), its calls (caller,
target, port, path, method, headers) and its expected allow or deny. Each call is one
case, named as Istio names its subtest, under FUNCTION/CALLER->TARGET.

The mesh is istiomesh.py's: one node's real data plane built from the snapshot control
compiles, its four echo apps local, the callers told apart by address; policies are
swapped by one apply between functions. As Istio's echotest with WithDefaultFilters(1, 1)
takes one app of each kind, one b per namespace stands for "every other app".

Left out, as they need what meshnode does not have: TestAuthz_JWT (requestPrincipals
and request.auth.* are refused by name), TestAuthz_CustomServer (CUSTOM),
TestAuthz_IngressGateway, TestAuthz_EgressGateway and TestAuthz_NotHost (their calls
come through an ingress or egress gateway; NotHost's policy is the called app's, but
only a gateway sends it a Host that names no service of the mesh).

Where meshnode knowingly differs, the case says so (`differs`, a pytest mark):
- Istio's grpc and http2 ports speak HTTP/2; meshnode carries HTTP/1.1 only (DESIGN §3:
  HTTP/2 and gRPC come after), so their calls are HTTP/1.1 requests: on grpc, the head
  of the unary call (POST /proto.EchoTestService/Echo, content-type application/grpc),
  judged as Istio judges it, by port, path and method.
- TestAuthz_DenyPlaintext's denied caller sends plaintext because a DestinationRule tells
  its sidecar to (tls DISABLE); meshnode refuses DestinationRule tls (a node always
  speaks mutual TLS), so that caller is a client without a node, sending plaintext
  straight to the node's inbound port; its plaintext TCP is refused whatever the mode
  (README, PeerAuthentication), where Istio's would reach the policy and be denied there.
- The templates' DestinationRules (tls ISTIO_MUTUAL) are not applied: meshnode refuses
  their tls, and between nodes it is always mutual TLS.

TestAuthz_Conditions' connection.sni cases run as Istio's: a node sends Istio's SNI
(outbound_.PORT_._.NAME.NAMESPACE.svc.cluster.local, meshnode.dataplane.sni_for).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace

import pytest

from istiomesh import IstioMesh, Outcome
from test_config_authz_istio import IN_SYSTEM, SYSTEM, expressions, render_with, security_only

pytestmark = pytest.mark.timeout(60)

A1, A2, B1, B2 = "a.echo1", "a.echo2", "b.echo1", "b.echo2"
ALLOWED, DENIED = A1, A2            # the apps Istio's templates call Allowed and Denied
CALLER = "caller"                   # a row's allow: the test's value for the caller
HTTP_PORTS = ("http", "http2")
GRPC_TCP = ("grpc", "tcp")
ALL_PORTS = ("grpc", "tcp", "http", "http2")
H1 = "HTTP/2 port called over HTTP/1.1: meshnode carries HTTP/1.1 only (DESIGN §3)"
GRPC_H1 = "gRPC called as its unary request's head over HTTP/1.1: meshnode carries HTTP/1.1 only (DESIGN §3)"
PLAINTEXT = ("the plaintext caller is a client without a node (meshnode refuses DestinationRule tls: "
             "nodes always speak mutual TLS)")
PLAINTEXT_TCP = PLAINTEXT + "; its plaintext TCP is refused whatever the mode (README: PeerAuthentication)"



@dataclass(frozen=True)
class Config:
    """What one test function applies: each template rendered for a target and applied in
    a namespace (the target's, the system one, or one the test names), and labels added
    to apps' Workloads (Istio's UpdateWorkloadLabel)."""

    files: tuple[tuple[str, str, str], ...]                  # (template, target, namespace)
    labels: tuple[tuple[str, tuple[tuple[str, str], ...]], ...] = ()

    def relabelled(self, app: str, **labels: str) -> Config:
        return Config(self.files, ((app, tuple(labels.items())),))


def per_target(targets: tuple[str, ...], *templates: str) -> Config:
    """Istio's config.New(t).Source(...).BuildAll(nil, to): each template for each target,
    in the target's namespace unless Istio applies it in the system one."""
    return Config(tuple((t, target, SYSTEM if t in IN_SYSTEM else target.split(".")[1])
                        for target in targets for t in templates))


@dataclass(frozen=True)
class Case:
    name: str
    config: Config
    caller: str
    target: str
    port: str
    allow: bool
    path: str = "/"
    method: str = "GET"
    headers: tuple[tuple[str, str], ...] = ()
    plaintext: bool = False
    differs: tuple[str, ...] = ()  # how meshnode runs it otherwise than Istio, and why


def allow_text(allow: bool) -> str:
    return "allow" if allow else "deny"


def port_differences(port: str) -> tuple[str, ...]:
    return {"grpc": (GRPC_H1,), "http2": (H1,)}.get(port, ())


def calls(function: str, config: Config, callers: tuple[str, ...], targets: tuple[str, ...],
          rows: list[tuple], allowed: Callable[[str], bool] = lambda caller: True) -> Iterator[Case]:
    """Istio's newAuthzTest().From(caller).To(target).Allow(allow).Path(path)
    .BuildAndRunForPorts(ports...) for each (ports, path, allow) row, each caller and
    target; an allow of CALLER is `allowed(caller)`."""
    for target in targets:
        for caller in callers:
            for ports, path, allow in rows:
                allow = allowed(caller) if allow == CALLER else allow
                for port in ports:
                    yield Case(f"{function}/{caller}->{target}/{path}({allow_text(allow)})/{port}", config,
                               caller, target, port, allow, path or "/", differs=port_differences(port))


def _sources_rows(allow_path: str = "/allow", deny_path: str = "/deny") -> list[tuple]:
    """The rows of TestAuthz_Principal, _ServiceAccount and _Namespace."""
    return [(GRPC_TCP, "", CALLER), (HTTP_PORTS, allow_path, CALLER),
            (HTTP_PORTS, allow_path + "?param=value", CALLER), (HTTP_PORTS, deny_path, False),
            (HTTP_PORTS, deny_path + "?param=value", False)]


def _deny_rows() -> list[tuple]:
    """The rows of TestAuthz_DenyPrincipal and _DenyNamespace."""
    rows: list[tuple] = [(GRPC_TCP, "", CALLER)]
    for path, allow in (("/deny", CALLER), ("/deny/allow", True), ("/allow", True), ("/global-deny", False),
                        ("/global-deny/allow", True)):
        rows += [(HTTP_PORTS, path, allow), (HTTP_PORTS, path + "?param=value", allow)]
    return rows


def in_echo1(caller: str) -> bool:
    return caller.endswith(".echo1")


def principal() -> Iterator[Case]:
    for function, template in (("TestAuthz_Principal", "allow-principal"),
                               ("TestAuthz_ServiceAccount", "allow-serviceaccount")):
        yield from calls(function, per_target((B1,), "mtls", template), (A1, A2), (B1,), _sources_rows(),
                         lambda caller: caller == ALLOWED)


def trust_domain() -> Iterator[Case]:
    rows = [(GRPC_TCP, "", True), (HTTP_PORTS, "/allow", True), (HTTP_PORTS, "/deny", False),
            (HTTP_PORTS, "/not-trust-domain", False), (HTTP_PORTS, "/not-deny", True)]
    yield from calls("TestAuthz_TrustDomain", per_target((B1,), "mtls", "allow-trust-domain"), (A1, A2), (B1,),
                     rows)


def deny_principal() -> Iterator[Case]:
    yield from calls("TestAuthz_DenyPrincipal", per_target((B1,), "mtls", "deny-global", "deny-principal"),
                     (A1, A2), (B1,), _deny_rows(), lambda caller: caller != DENIED)


def namespace() -> Iterator[Case]:
    yield from calls("TestAuthz_Namespace", per_target((B1, B2), "mtls", "allow-namespace"), (A1, A2), (B1, B2),
                     _sources_rows(), in_echo1)
    yield from calls("TestAuthz_DenyNamespace", per_target((B1, B2), "mtls", "deny-global", "deny-namespace"),
                     (A1, A2), (B1, B2), _deny_rows(), in_echo1)
    yield from calls("TestAuthz_NotNamespace", per_target((B1,), "mtls", "not-namespace"), (A1, A2), (B1,),
                     [(ALL_PORTS, "", CALLER)], in_echo1)


def not_method_and_port() -> Iterator[Case]:
    config = per_target((B1, B2), "not-method")
    for target in (B1, B2):
        for method, allow in (("GET", True), ("PUT", False)):
            for port in HTTP_PORTS:
                yield Case(f"TestAuthz_NotMethod/{A1}->{target}/{method}({allow_text(allow)})/{port}", config,
                           A1, target, port, allow, method=method, differs=port_differences(port))
    yield from calls("TestAuthz_NotPort", per_target((B1, B2), "not-port"), (A1,), (B1, B2),
                     [(("http",), "", True), (("http2",), "", False)])


def deny_plaintext() -> Iterator[Case]:
    """The denied caller (echo2) speaks plaintext, the allowed one (echo1) mutual TLS."""
    config = per_target((B1,), "plaintext")
    for case in calls("TestAuthz_DenyPlaintext", config, (A1, A2), (B1,), [(ALL_PORTS, "", CALLER)], in_echo1):
        if case.caller == DENIED:
            why = PLAINTEXT_TCP if case.port == "tcp" else PLAINTEXT
            case = replace(case, plaintext=True, differs=case.differs + (why,))
        yield case


def workload_selector() -> Iterator[Case]:
    """Policies by workload selector, namespace and the system namespace; the bad
    selector (foo=bla) takes effect once b's Workload gets that label."""
    config = Config(per_target((B1,), "workload", "workload-bad").files
                    + (("workload-ns", B1, "echo1"), ("workload-ns", B1, "echo2"),
                       ("workload-system-ns", B1, SYSTEM)))
    rows = [("/policy-echo1-b-bad", False, config), ("/policy-echo1-b-bad", True, config.relabelled(B1, foo="bla")),
            ("/policy-echo1-all", True, config), ("/policy-echo2-all", False, config),
            ("/policy-echo1-b", True, config), ("/policy-system-b", True, config),
            ("/policy-echo1-a", False, config), ("/policy-system-a", False, config)]
    for path, allow, applied in rows:
        label = " (labelled foo=bla)" if applied.labels else ""
        for port in HTTP_PORTS:
            yield Case(f"TestAuthz_WorkloadSelector/single workload/{A1}->{B1}/{path}({allow_text(allow)}){label}"
                       f"/{port}", applied, A1, B1, port, allow, path, differs=port_differences(port))


def paths() -> Iterator[Case]:
    precedence = [("/allow/admin", False), ("/allow/admin?param=value", False), ("/allow", True),
                  ("/allow?param=value", True)]
    templating = [("/allow/admin/", True), ("/allow/admin", False), ("/allow/user/", False),
                  ("/allow/admin?param=value", False), ("/allow", False), ("/allow/admin/temp", True),
                  ("/allow/admin/temp.txt", True), ("/allow/admin/foo/temp.txt", True),
                  ("/foo/buzz/bar/bat.txt", True), ("/foo/buzz/bar/bat.temp.txt", True),
                  ("/foo/buzz/bar/bat/fuzz.txt", True), ("/foo/bar/bat.txt", False), ("/foo//bar/bat.txt", False),
                  ("/foo/buzz/bar/bat", True), ("/store//cart", True), ("/store/cart", False),
                  ("/store/foo/cart", True), ("/store/foo/bar/cart", True)]
    for function, template, rows in (("TestAuthz_PathPrecedence", "path-precedence", precedence),
                                     ("TestAuthz_PathTemplating", "path-templating", templating)):
        yield from calls(function, per_target((B1,), template), (A1,), (B1,),
                         [(HTTP_PORTS, path, allow) for path, allow in rows])
    normalization = [("/public", True), ("/public/../public", True), ("/private", False),
                     ("/public/../private", False), ("/public/./../private", False), ("/public/.././private", False),
                     ("/public/%2E%2E/private", False), ("/public/%2e%2e/private", False),
                     ("/public/%2E/%2E%2E/private", False), ("/public/%2e/%2e%2e/private", False),
                     ("/public/%2E%2E/%2E/private", False), ("/public/%2e%2e/%2e/private", False)]
    yield from calls("TestAuthz_PathNormalization", per_target((B1,), "path-normalization"), (A1,), (B1,),
                     [(("http",), path, allow) for path, allow in normalization])


def conditions() -> Iterator[Case]:
    config = per_target((B1,), "mtls", "conditions")
    rows: list[tuple[str, str | None, bool | str]] = [
        ("/request-headers", "foo", True), ("/request-headers", "bar", False), ("/request-headers", None, False),
        ("/request-headers-notValues", "foo", True), ("/request-headers-notValues", "bar", False)]
    for what in ("source-ip", "source-namespace", "source-principal"):
        rows += [(f"/{what}", None, CALLER), (f"/{what}-notValues", None, CALLER)]
    rows += [("/source-trust-domain", None, True), ("/source-trust-domain-notValues", None, True)]
    for what in ("destination-ip", "destination-port", "connection-sni"):
        rows += [(f"/{what}-good", None, True), (f"/{what}-bad", None, False), (f"/{what}-notValues", None, False)]
    rows.append(("/other", None, False))
    for caller in (A1, A2):
        for path, xfoo, allow in rows:
            allow = caller == ALLOWED if allow == CALLER else allow
            query = f"?x-foo={xfoo}" if xfoo is not None else ""
            yield Case(f"TestAuthz_Conditions/{caller}->{B1}/{path}{query}({allow_text(bool(allow))})/http",
                       config, caller, B1, "http", bool(allow), path,
                       headers=(("x-foo", xfoo),) if xfoo is not None else ())


CASES = [*principal(), *trust_domain(), *deny_principal(), *namespace(), *not_method_and_port(),
         *deny_plaintext(), *workload_selector(), *paths(), *conditions()]


def _param(case: Case) -> object:
    marks = [pytest.mark.differs(reason) for reason in case.differs]
    return pytest.param(case, id=case.name, marks=marks)


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[IstioMesh]:
    m = IstioMesh(tmp_path_factory.mktemp("istio-authz"))
    yield m
    m.close()


def files(m: IstioMesh, config: Config) -> list[str]:
    """Each template of `config` rendered for its target (Allowed: a.echo1, Denied:
    a.echo2) and namespace, its security.istio.io documents only."""
    out = []
    for template, target, namespace in config.files:
        table = expressions(m.apps[target], m.apps[ALLOWED], m.apps[DENIED], namespace)
        out.append(security_only(render_with(template, table), namespace))
    return out


@pytest.mark.parametrize("case", [_param(c) for c in CASES])
def test_istio_authz_case(mesh: IstioMesh, case: Case) -> None:
    mesh.apply(case.config, files(mesh, case.config), {app: dict(labels) for app, labels in case.config.labels})
    got: Outcome = mesh.call(mesh.apps[case.caller], mesh.apps[case.target], case.port, case.path, case.method,
                             dict(case.headers), case.plaintext)
    assert (got.allowed if case.allow else got.denied), f"expected {allow_text(case.allow)}, got {got.detail}"
