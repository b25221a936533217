"""A worker's data plane: the fastpath engine, its listeners, and the route table that
the config snapshot and the worker's certificates compile to.

The engine runs on its own thread with the GIL released (DESIGN §3); this module is
the agent's side of it. Whenever the snapshot or a certificate changes, it compiles a
new ``RouteTable`` and installs it: the engine swaps it in at its next iteration and
connections already open finish on the table they started with. Listener sockets
belong to this side and are bound with SO_REUSEPORT so that every worker of the node
accepts on the same ports; one that a new table no longer names is closed only once
the engine runs a table without it (``Engine.generation``).

Every outbound connection presents its caller's workload identity, told apart by the
owner of the calling socket, as the only local workload, or by address (meshnode.callers,
DESIGN §4); a caller that matches no workload is refused, never given another's.

Two kinds of outbound traffic: a Service port with an ``outboundPort`` gets a local
listener on 127.0.0.1, relayed over mutual TLS to the inbound port of the node of one
of its endpoints, as the port's declared protocol says (DESIGN §3): TCP opaque; HTTP
framed always (a request that does not parse gets its 4xx, never a relay); auto, the
default, told by how the first bytes begin (a request line: framed as HTTP; anything
else, or a client that says nothing for 200 ms: opaque). Every port that is not TCP is
reached through the shared HTTP outbound listener on 127.0.0.1:port-base+1 (DESIGN §8),
which routes by the
request's Host (``svc``, ``svc.ns``, ``svc.ns.svc``, any port: the Host's port picks
the service port whose ``port`` matches, else the service's first HTTP port) or by an
absolute-form URI, so ``HTTP_PROXY=http://127.0.0.1:15001`` works for any client; every
request is routed on its own (see fastpath.engine). A bare name (``svc``) that several
namespaces have resolves in the local workloads' namespace first. The inbound listener
(port-base+6) hands each connection to the local workload as its port's declared
protocol says, whatever ALPN the calling node offers.

The HTTP listener (port-base+1, passed by the worker) is bound with the first table that
has HTTP hosts and kept until stop().

A listener that cannot be bound (its port is held by another process, or by this node's
own metrics listener) is left out of the table and the rest is installed: as Envoy does
with a listener that fails to bind, everything else goes on serving, and the snapshot is
not carried out. ``install()`` says which listeners are missing and why (``unbound``),
for the worker to NACK; ``rebind()`` tries them again.

A stopping worker drains (``drain()``, Istio's terminationDrainDuration): the engine takes
its listeners out of its loop, answers what is in flight, sends keep-alive clients away
and ends when nothing is left or at the deadline; as soon as the engine says
``draining``, ``close_listeners()`` closes this side's listening sockets, so that the
kernel gives every new connection (and, with net.ipv4.tcp_migrate_req, every one still
queued here) to the sibling workers bound to the same ports. No table is installed
after that: the listeners it would name are gone.
"""

from __future__ import annotations

import logging
import socket
import threading
from typing import Any, Callable

from fastpath.engine import Engine, RouteTable

from . import callers, logs, ratelimits, routes
from .clusterdomain import CLUSTER_DOMAIN
from .identity.creds import Contexts
from .poolshare import worker_share
from .ports import Ports

log = logging.getLogger("meshnode.dataplane")

# A remote node that no Node resource places is reached at its workload's address on
# the default inbound port (DESIGN §8).
DEFAULT_INBOUND_PORT = Ports().inbound


# Each direction of a connection holds at most one buffer of this size, and only while
# it holds bytes not yet sent: two TLS records' worth, so a streaming answer moves in
# half the plaintext read()/send() calls 16 KiB would take.
BUFFER_BYTES = 32768

# The Mesh's spec.connections defaults (meshnode.config.model.MeshSpec, which a worker
# does not import: it never parses config); every snapshot carries its own values.
DEFAULT_CONNECT_TIMEOUT_S = 5.0
DEFAULT_IDLE_TIMEOUT_S = 300.0
DEFAULT_DRAIN_S = 5.0
# A service port whose snapshot names no balancer (an older control): the engine's and
# config's default, peak-EWMA P2C (meshnode.config.destinationrule.DEFAULT_BALANCER).
DEFAULT_BALANCER = "p2c-ewma"
# The Mesh's spec.mtls.mode default (meshnode.config.model.MeshSpec), for a snapshot
# that names none.
DEFAULT_MTLS_MODE = "STRICT"
# The Mesh's spec.pathNormalization default (Istio's DEFAULT), for a snapshot that
# names none.
DEFAULT_PATH_NORMALIZATION = "BASE"
# Snapshot keys of the Mesh's limits before authentication: RouteTable.set_limits()'s
# arguments by the same names.
_LIMITS = ("max_handshakes", "max_connections_per_source", "max_handshakes_per_source",
           "inbound_share")
# ... and of its overload defence: RouteTable.set_overload()'s.
_OVERLOAD = ("max_requests_in_flight", "max_requests_per_source", "slow_grace_s",
             "slow_min_rate")




def sni_for(port: int, fqdn: str) -> str:
    """The SNI naming one port of one service between nodes, in Istio's form
    ``outbound_.PORT_.SUBSET_.FQDN``, so that AuthorizationPolicies' connection.sni
    values written for Istio (``*.NAME.NAMESPACE.svc.cluster.local``) match it; the
    inbound side picks the local app by it. The subset is always empty ("_"): subsets
    route nothing here (config/destinationrulehash.py: an HTTPRoute names Services),
    so a connection always reaches the service port, never a subset of it."""
    return f"outbound_.{port}_._.{fqdn}.{CLUSTER_DOMAIN}"


def legacy_sni_for(port_name: str, fqdn: str) -> str:
    """The SNI nodes before Istio's form sent (PORT-NAME.NAME.NAMESPACE.svc): each
    inbound route answers to it too, for callers not yet upgraded."""
    return f"{port_name}.{fqdn}"


def _protocol(port: dict[str, Any]) -> str:
    """A port's declared protocol as the engine names it: "http", "tcp" or "auto" (the
    default: told by the first bytes)."""
    return str(port.get("protocol") or "auto").lower()


def _version(endpoint: dict[str, Any]) -> str:
    """A workload's ``version`` label ("": none), as Istio's destination_version reads
    the destination pod's."""
    return str((endpoint.get("labels") or {}).get("version") or "")


def _sizes(by_code: dict[int, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Engine size histograms by status as a beat carries them: string keys (msgpack),
    sparse counts."""
    return {str(code): {"counts": {str(i): n for i, n in enumerate(h["counts"]) if n},
                        "sum": h["sum"]} for code, h in by_code.items()}


def _numeric(host: str) -> str:
    """The engine resolves no names: a hostname becomes an address here, at config time."""
    try:
        socket.inet_pton(socket.AF_INET6 if ":" in host else socket.AF_INET, host)
        return host
    except OSError:
        return socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)[0][4][0]


def _listener(address: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)  # shared by the node's workers
    sock.bind((address, port))
    sock.listen(1024)
    sock.setblocking(False)
    return sock


class DataPlane:
    def __init__(self, node: str, inbound_address: str, inbound_port: int,
                 contexts: Callable[[str], Contexts | None], http_port: int = 0,
                 max_connections: int = 4096, worker: int = 0, workers: int = 1) -> None:
        self.node, self.inbound_port = node, inbound_port
        # This worker among the node's: connectionPool limits are split among them.
        self.worker, self.workers = worker, max(workers, 1)
        self._contexts = contexts
        # Slots: a worker sizes them from its descriptor limit (meshnode.fdlimit).
        self.engine = Engine(max_connections=max_connections, buffer_bytes=BUFFER_BYTES)
        self._thread = threading.Thread(target=self.engine.run, name="engine", daemon=True)
        self._inbound = _listener(inbound_address, inbound_port)
        self._outbound: dict[int, socket.socket] = {}  # outbound port -> listener
        self._retired: list[tuple[int, socket.socket]] = []  # (generation, listener)
        self.http_port = http_port  # 0: no HTTP outbound listener
        self._http: socket.socket | None = None  # bound at the first table with HTTP hosts
        self.listener_failures = 0
        # Listeners the installed table names but that could not be bound: port -> why.
        self.unbound: dict[int, str] = {}
        self.generation = 0
        # The inbound side's session ticket keys (meshnode.ticketkeys), the same in
        # every worker of the node; None: each table's own.
        self.ticket_keys: bytes | None = None
        # Engine service names ("ns/name:port") -> FQDN, for the request figures' labels;
        # kept after a service goes, as its figures are.
        self.service_fqdn: dict[str, str] = {}
        self.drain_s = DEFAULT_DRAIN_S  # the installed snapshot's drainDuration
        self.callers = callers.plan([], _numeric)  # how local callers are told apart
        self.draining = False  # drain() was called: no table is installed from then on
        self.listeners_closed = False

    def start(self) -> None:
        self._thread.start()
        logs.event(log, "listener.bound", name="inbound", port=self.inbound_port)

    def stop(self) -> None:
        """Cut whatever is open, end the engine, close the listeners."""
        self.engine.stop()
        self._thread.join(timeout=10)
        self._close_listeners()

    def drain(self, deadline_s: float) -> None:
        """Begin a graceful drain: the engine accepts nothing more, answers what is in
        flight and ends by itself when nothing is left, or in `deadline_s` seconds."""
        self.draining = True
        self.engine.drain(deadline_s)

    def close_listeners(self) -> bool:
        """Once the engine has taken the listeners out of its loop, close them (new
        connections then go to the sibling workers); True when they are closed."""
        if not self.listeners_closed and self.engine.draining:
            self._close_listeners()
        return self.listeners_closed

    @property
    def finished(self) -> bool:
        """The engine's loop has returned (a drain ended, or stop())."""
        return self._thread.ident is not None and not self._thread.is_alive()

    def join(self, timeout_s: float) -> bool:
        """Wait up to `timeout_s` for the engine's loop to return; True when it has."""
        self._thread.join(timeout_s)
        return not self._thread.is_alive()

    def _close_listeners(self) -> None:
        for sock in [self._inbound, *self._outbound.values(), *(s for _, s in self._retired)]:
            sock.close()
        if self._http is not None:
            self._http.close()
        self.listeners_closed = True

    def update(self, snapshot: dict[str, Any]) -> None:
        """Compile and install the table for this snapshot and the current certificates."""
        if self.draining:
            raise RuntimeError("the data plane is draining: no new table")
        table = RouteTable()
        table.set_inbound(self._inbound.fileno(), self.ticket_keys)
        mesh = snapshot.get("mesh") or {}
        drain_s = float(mesh.get("drain_duration_s", DEFAULT_DRAIN_S))
        if not 0 < drain_s <= 3600:  # Engine.drain's bounds; config allows 100ms..30s
            raise ValueError(f"drain_duration_s must be > 0 and at most an hour, not {drain_s!r}")
        # drain_s: how long an opaque TCP pair whose destination left goes on.
        table.set_timeouts(float(mesh.get("connect_timeout_s", DEFAULT_CONNECT_TIMEOUT_S)),
                           float(mesh.get("idle_timeout_s", DEFAULT_IDLE_TIMEOUT_S)),
                           drain_s=drain_s)
        if all(key in mesh for key in _LIMITS):
            # Limits before authentication (Mesh spec.connections); else the engine's.
            table.set_limits(**{key: mesh[key] for key in _LIMITS})
        if all(key in mesh for key in _OVERLOAD):
            # Overload defence (Mesh spec.overload); else the engine's.
            table.set_overload(**{key: mesh[key] for key in _OVERLOAD})
        # Every HTTP request's path, inbound and outbound (Mesh spec.pathNormalization).
        table.set_path_normalization(str(mesh.get("path_normalization")
                                         or DEFAULT_PATH_NORMALIZATION))
        # Access records, both ways (Mesh spec.telemetry; read by meshnode.accesslog).
        table.set_access_log(bool(mesh.get("access_log", False)),
                             float(mesh.get("access_log_sampling_percent", 100.0)),
                             int(mesh.get("access_log_min_status", 0)))
        # New traces sampled on both sides (Mesh spec.tracing.sampling), else the
        # engine's; with a collector, every sampled span has a record for telemetry.
        if "tracing" in mesh:
            table.set_tracing(float(mesh["tracing"]["sampling"]),
                              bool(mesh["tracing"].get("collector_kind")))
        # The outbound side presents the calling workload's identity (meshnode.callers):
        # the listeners' own only with a single local workload; otherwise each caller's,
        # told apart by user or address, and a caller that is no workload is refused.
        self._plan_callers(snapshot["local"])
        default_id = self.callers.listener_identity
        default = self._contexts(default_id) if default_id is not None else None
        client = default.client if default is not None else None
        # Listeners are bound once some local workload has its credentials.
        serving = any(self._contexts(w["identity"]) is not None for w in snapshot["local"])
        self._callers(table)
        wanted: set[int] = set()
        http_hosts = 0
        # A bare name ("svc") means the caller's namespace first (as Kubernetes DNS
        # search lists do): services of local namespaces are added first, and the
        # first service added for a (host, port) wins.
        local_ns = {w.get("namespace") for w in snapshot["local"]}
        services = sorted(snapshot["services"], key=lambda s: s["namespace"] not in local_ns)
        nodes = snapshot.get("nodes") or {}
        # PeerAuthentication's mode where a port names none for its workload (a config
        # without any): the Mesh's.
        mesh_mtls = str(mesh.get("mtls_mode") or DEFAULT_MTLS_MODE)
        indexes: dict[tuple[str, int], int] = {}  # ("ns/name", port) -> engine service
        # What a RateLimitPolicy may limit here (meshnode.ratelimits), by "ns/name": the
        # inbound routes of the service's ports, and its engine services.
        inbound_snis: dict[str, list[str]] = {}
        service_ports: dict[str, list[int]] = {}
        for svc in services:
            if not svc["identities"]:
                continue  # no endpoints: nothing to route to
            ports: list[int] = []   # the engine services of its ports: one retry budget
            for port in svc["ports"]:
                sni = sni_for(int(port["port"]), svc["fqdn"])
                endpoints = self._endpoints(svc, port, nodes)
                name = f"{svc['namespace']}/{svc['name']}:{port['name']}"
                self.service_fqdn[name] = svc["fqdn"]
                index = table.add_service(name, sni, svc["identities"], endpoints,
                                          balancer=port.get("balancer", DEFAULT_BALANCER))
                ports.append(index)
                if port.get("hash"):
                    table.set_hash(index, **port["hash"])   # consistentHash's key
                if port.get("outlier"):
                    table.set_outlier(index, **port["outlier"])  # outlierDetection
                if port.get("connection_pool"):    # connectionPool: this worker's share
                    table.set_connection_pool(index, **worker_share(
                        port["connection_pool"], self.worker, self.workers))
                indexes.setdefault((f"{svc['namespace']}/{svc['name']}", int(port["port"])), index)
                protocol = _protocol(port)
                if port.get("outbound_port") and serving:
                    sock = self._outbound_listener(port["outbound_port"], name)
                    if sock is not None:
                        table.add_outbound_tcp(sock.fileno(), index, client,
                                               protocol=protocol)
                        wanted.add(port["outbound_port"])
                if protocol != "tcp":   # what reaches the HTTP listener is HTTP
                    for host in svc.get("hosts", ()):
                        table.add_host(host, index, int(port["port"]))
                        http_hosts += 1
                if self._inbound_route(table, svc, port, sni, mesh_mtls):
                    inbound_snis.setdefault(f"{svc['namespace']}/{svc['name']}", []).append(sni)
            service_ports[f"{svc['namespace']}/{svc['name']}"] = ports
            if ports and svc.get("retry_budget"):
                # XBackendTrafficPolicy: one budget for every port of the Service.
                table.set_retry_budget(ports, **svc["retry_budget"])
        added_rules: dict[str, list[routes.RuleAdded]] = {}
        routes.install(table, snapshot.get("http_routes") or (), indexes, added_rules)
        ratelimits.install(table, snapshot.get("rate_limits") or (), inbound_snis, service_ports,
                           added_rules)
        # Once bound, the HTTP listener stays in every table, with or without hosts: a
        # client of a service that was deleted gets its 404, not a connection nobody takes.
        if (http_hosts or self._http is not None) and serving:
            sock = self._http_listener()
            if sock is not None:
                table.set_outbound_http(sock.fileno(), client, default_id)
        self.generation = self.engine.install(table)
        self.drain_s = drain_s
        for port in set(self._outbound) - wanted:
            self._retired.append((self.generation, self._outbound.pop(port)))
        self.reap()

    def _plan_callers(self, local: list[dict[str, Any]]) -> None:
        plan = callers.plan(local, _numeric)
        if plan != self.callers:
            logs.event(log, "callers.plan", logging.WARNING if plan.problems else logging.INFO,
                       by=plan.by, problems=list(plan.problems))
        self.callers = plan

    def _callers(self, table: RouteTable) -> None:
        """The local callers the table tells apart; one whose workload has no
        credentials yet is refused until it has them."""
        for caller in self.callers.callers:
            contexts = self._contexts(caller.identity)
            if contexts is None:
                continue
            if caller.uid is not None:
                table.add_user(caller.uid, contexts.client, caller.identity,
                               address=caller.address)
            else:
                table.add_source(caller.address, contexts.client, caller.identity)

    def _endpoint(self, ep: dict[str, Any], nodes: dict[str, dict[str, Any]]) -> tuple[str, int]:
        """Where an endpoint's node takes mutual TLS: this node's own inbound listener, the
        one its Node resource names, or else the workload's address on the default port."""
        if ep["node"] == self.node:
            return ("127.0.0.1", self.inbound_port)
        node = nodes.get(ep["node"])
        if node is not None:
            return (_numeric(node["address"]), int(node["inbound_port"]))
        return (_numeric(ep["address"]), DEFAULT_INBOUND_PORT)

    def _endpoints(self, svc: dict[str, Any], port: dict[str, Any],
                   nodes: dict[str, dict[str, Any]]) -> list[tuple[str, int, str]]:
        """The service port's endpoints, each with the version of the workload that
        serves there (request figures' destination_version): the first of the port's
        workloads at that node, as that node's inbound side picks it (_inbound_route)."""
        addresses = [self._endpoint(ep, nodes) for ep in svc["endpoints"]]
        versions: dict[tuple[str, int], str] = {}
        for ep, address in zip(svc["endpoints"], addresses):
            if port["name"] in ep["ports"]:
                versions.setdefault(address, _version(ep))
        return [(*address, versions.get(address, "")) for address in addresses]

    def _inbound_route(self, table: RouteTable, svc: dict[str, Any], port: dict[str, Any],
                       sni: str, mesh_mtls: str) -> bool:
        """The port's inbound route to its first local endpoint with a certificate, named
        by `sni` and, as its alias, by the name older nodes send (legacy_sni_for), in the
        mTLS mode PeerAuthentication leaves that workload's port (the snapshot's
        port["inbound"], else the Mesh's): PERMISSIVE and DISABLE take plaintext HTTP
        too, named by the service's Host names and this port (fastpath plaintext.pxi).
        False: this node serves the port on no workload."""
        for ep in svc["endpoints"]:
            if ep["node"] != self.node or port["name"] not in ep["ports"]:
                continue
            contexts = self._contexts(ep["identity"])
            if contexts is not None:
                table.add_inbound_route(sni, contexts.server, _numeric(ep["address"]),
                                        int(ep["ports"][port["name"]]),
                                        service=f"{svc['namespace']}/{svc['name']}:{port['name']}",
                                        identity=ep["identity"], protocol=_protocol(port),
                                        version=_version(ep),
                                        alias=legacy_sni_for(port["name"], svc["fqdn"]))
                inbound = (port.get("inbound") or {}).get(ep.get("workload")) or {}
                table.set_inbound_mtls(sni, inbound.get("mtls", mesh_mtls),
                                       hosts=svc.get("hosts", ()), port=int(port["port"]))
                # The AuthorizationPolicies that reach this workload's port, as control
                # compiled them (config/inbound.py); a program the engine refuses
                # refuses the snapshot.
                if inbound.get("authz") is not None:
                    table.set_inbound_authz(sni, inbound["authz"])
                return True
        return False

    def install(self, snapshot: dict[str, Any]) -> dict[int, str]:
        """update(), and the listeners its table names but could not bind (port -> why;
        empty: the snapshot is carried out whole). When update() raises, the table in
        force and what it lacks stay as they were."""
        before, self.unbound = self.unbound, {}
        try:
            self.update(snapshot)
        except BaseException:
            self.unbound = before
            raise
        return dict(self.unbound)

    def rebind(self) -> bool:
        """Try again to bind the listeners the table lacks; True when one is bound now (it
        is kept for the next update(), which puts it in the table). Quiet: what still
        fails was logged when the table was made."""
        bound = False
        for port in sorted(self.unbound):
            if port == self.http_port and self._http is not None or port in self._outbound:
                continue  # bound already, not installed yet
            try:
                sock = _listener("127.0.0.1", port)
            except OSError:
                continue
            if port == self.http_port:
                self._http = sock
            else:
                self._outbound[port] = sock
            bound = True
        return bound

    def _bind_failed(self, port: int, what: str, exc: OSError) -> None:
        self.listener_failures += 1
        self.unbound[port] = f"{what}: cannot listen on 127.0.0.1:{port}: {exc}"
        logs.event(log, "listener.failed", logging.ERROR, port=port, listener=what,
                   error=str(exc))

    def _outbound_listener(self, port: int, service: str) -> socket.socket | None:
        sock = self._outbound.get(port)
        if sock is None:
            try:
                sock = _listener("127.0.0.1", port)
            except OSError as exc:
                self._bind_failed(port, f"outboundPort {port} of Service port {service}", exc)
                return None
            self._outbound[port] = sock
            logs.event(log, "listener.bound", name="outbound-tcp", port=port)
        return sock

    def _http_listener(self) -> socket.socket | None:
        if self._http is None:
            if not 1 <= self.http_port <= 65535:
                return None  # none configured
            try:
                self._http = _listener("127.0.0.1", self.http_port)
            except OSError as exc:
                self._bind_failed(self.http_port, "the HTTP outbound listener", exc)
                return None
            logs.event(log, "listener.bound", name="outbound-http", port=self.http_port)
        return self._http

    def reap(self) -> None:
        """Close listeners the engine no longer uses (it runs a table without them)."""
        keep = []
        for generation, sock in self._retired:
            if self.engine.generation >= generation:
                sock.close()
            else:
                keep.append((generation, sock))
        self._retired = keep

    def health(self) -> dict[str, Any]:
        return {"dataplane": {**self.engine.stats(), "listener_failures": self.listener_failures},
                "requests": self.request_figures(), "callers": self.callers.status(),
                # Outlier detection per endpoint, node-wide (the workers share it): the
                # admin /stats shows it.
                "outliers": self.engine.outliers(),
                # Requests in flight (this worker's share, the node's) and the caps.
                "overload": self.engine.overload(),
                # Upstream connections and waiting requests per service, this worker's
                # (connectionPool limits are per worker: poolshare.worker_share).
                "upstreams": self.engine.upstreams(),
                # RateLimitPolicy decisions by limit, this worker's (the buckets are the
                # node's: meshnode.sharedstate).
                "rate_limits": self.engine.rate_limits(),
                # Authorization decisions per (policy, action) (meshnode_authz_decisions).
                "authz": self.engine.authz_stats(),
                # What this worker listens on (`meshnode proxy-config listeners`).
                "listeners": self.listeners()}

    def listeners(self) -> list[dict[str, Any]]:
        """The sockets this worker listens on now, and those its table names that it
        could not bind (with why): the sockets are the truth, not the snapshot."""
        if self.listeners_closed:
            return []
        bound = [("inbound", "mTLS", self._inbound)]
        if self._http is not None:
            bound.append(("outbound", "HTTP", self._http))
        bound += [("outbound", "TCP", sock) for _, sock in sorted(self._outbound.items())]
        out: list[dict[str, Any]] = []
        for direction, protocol, sock in bound:
            address, port = sock.getsockname()[:2]
            out.append({"direction": direction, "protocol": protocol, "address": address,
                        "port": port, "bound": True})
        out += [{"direction": "outbound", "protocol": "-", "address": "-", "port": port,
                 "bound": False, "problem": why} for port, why in sorted(self.unbound.items())]
        return out

    def request_figures(self) -> list[dict[str, Any]]:
        """The engine's per-(direction, service, identities) HTTP figures in Istio's
        terms: reporter "source" (this node sent) or "destination" (this node's app
        answered), source/destination principal and service; latency buckets by
        status, sparse."""
        out = []
        for rec in self.engine.request_stats():
            outbound = rec["direction"] == "outbound"
            service = self.service_fqdn.get(rec["service"], rec["service"]) or "unknown"
            out.append({
                "reporter": "source" if outbound else "destination",
                "source_principal": (rec["local"] if outbound else rec["peer"]) or "unknown",
                "destination_principal": (rec["peer"] if outbound else rec["local"]) or "unknown",
                "destination_service": service,
                # The HTTPRoute that sent it ("namespace/name"; the serving side cannot
                # tell) and the version label of the workload that answered (Istio's).
                "route": rec["route"] or "unknown",
                "destination_version": rec["version"] or "unknown",
                # Istio's: the destination tells mutual TLS from plaintext (PERMISSIVE,
                # DISABLE); the source does not say.
                "connection_security_policy": ("unknown" if outbound else
                                               "none" if rec["plaintext"] else "mutual_tls"),
                # String keys: the bus's msgpack maps take no others.
                "codes": {str(code): n for code, n in rec["codes"].items()},
                # Envoy's response flags: "OM", the 503s overload answered at once.
                "response_flags": {"OM": rec["shed"]} if rec["shed"] else {},
                # Per status ("0": codes past the engine's few timed apart), sparse.
                "latency": {str(code): {str(i): n for i, n in enumerate(counts) if n}
                            for code, counts in rec["latency_us"].items()},
                # The same answers' sizes (Istio's request_bytes, response_bytes): per
                # status, sparse counts per fastpath size bucket and the bytes' sum.
                "request_bytes": _sizes(rec["request_bytes"]),
                "response_bytes": _sizes(rec["response_bytes"]),
                # Opaque TCP pairs under this key (Istio's istio_tcp_*), when any.
                "tcp": rec["tcp"] if any(rec["tcp"].values()) else {},
            })
        return out
