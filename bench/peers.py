"""Config text for everything the sidecar-pair benchmark starts: the app, the peers, meshnode.

HAProxy's two files are ``../shared/peers/README.md`` verbatim with the placeholders
filled; nginx's follow the directives that README lists, plus only what nginx needs to
run them (paths, and ``proxy_http_version 1.1`` / ``Connection ""`` on the outbound
side too, without which its upstream ``keepalive`` pool is never used). Nothing else is
tuned: a directive the README does not name keeps its default.

Run as a script, it writes a complete set (PKI, configs, the meshnode resources) for
free ports into a dir and prints the commands that start each piece by hand::

    python bench/peers.py /tmp/peers
"""

from __future__ import annotations

import argparse
import socket
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

if __package__ in (None, ""):  # run as `python bench/peers.py`
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.pki import TestPKI, make_pki  # noqa: E402

# The destination service's name: the Host the load sends, and the name of the peers'
# server certificate, which their outbound side sends in SNI and checks.
SNI = "app.bench.svc"
NAMESPACE = "bench"
SERVICE = "app"
SERVICE_PORT = 8080
# The name a meshnode node sends in SNI for the service's port, its inbound route's
# (meshnode.dataplane.sni_for: Istio's form).
MESH_SNI = f"outbound_.{SERVICE_PORT}_._.{SERVICE}.{NAMESPACE}.svc.cluster.local"
BODY_64K_BYTES = 64 * 1024


@dataclass(frozen=True)
class PairPorts:
    outbound: int  # plain HTTP in, from the load generator
    inbound: int  # mTLS in, from the outbound side


def free_port() -> int:
    """A port nobody listens on now (the kernel's pick for port 0)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


# --- the app ------------------------------------------------------------------------

def app_nginx(workdir: Path, port: int) -> str:
    """The app every pair forwards to: 200 "ok" at /, a 64 KiB file at /64k.

    ``keepalive_requests`` is raised from nginx's 1000 so that the app never closes a
    sidecar's pooled connection: the app is common to every pair and must not be where
    one pair pays for reconnects and another does not.
    """
    return f"""\
worker_processes 1;
daemon off;
pid {workdir}/app.pid;
error_log {workdir}/app.error.log warn;
events {{ worker_connections 4096; }}
http {{
  access_log off;
  {_nginx_temp_paths(workdir, "app")}
  keepalive_timeout 60s;
  keepalive_requests 1000000;
  server {{
    listen 127.0.0.1:{port} backlog=4096;
    location = / {{ return 200 "ok"; }}
    location = /64k {{ root {workdir}/www; }}
  }}
}}
"""


def write_app_files(workdir: Path) -> None:
    www = workdir / "www"
    www.mkdir(parents=True, exist_ok=True)
    (www / "64k").write_bytes(b"x" * BODY_64K_BYTES)
    # nginx workers drop to `nobody` when started as root: they must be able to read it.
    for path in (workdir, www):
        path.chmod(0o755)
    (www / "64k").chmod(0o644)


def _nginx_temp_paths(workdir: Path, name: str) -> str:
    # Debian's nginx defaults these to /var/lib/nginx/*; keep every run inside its own dir.
    return " ".join(f"{d}_temp_path {workdir}/tmp-{name}-{d};"
                    for d in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))


# --- HAProxy, HTTP mode (the reference): peers/README.md verbatim ---------------------

def haproxy_inbound(ports: PairPorts, app_port: int, pki: TestPKI) -> str:
    return f"""\
global
  nbthread 1
  maxconn 4096
defaults
  mode http
  timeout connect 5s
  timeout client 60s
  timeout server 60s
  timeout http-keep-alive 60s
frontend in
  bind 127.0.0.1:{ports.inbound} ssl crt {pki.server_pem} ca-file {pki.ca_crt} verify required ssl-min-ver TLSv1.3
  default_backend app
backend app
  server app 127.0.0.1:{app_port}
"""


def haproxy_outbound(ports: PairPorts, pki: TestPKI) -> str:
    return f"""\
global
  nbthread 1
  maxconn 4096
defaults
  mode http
  timeout connect 5s
  timeout client 60s
  timeout server 60s
  timeout http-keep-alive 60s
frontend out
  bind 127.0.0.1:{ports.outbound}
  default_backend mesh
backend mesh
  http-reuse always
  server inbound 127.0.0.1:{ports.inbound} ssl crt {pki.client_pem} ca-file {pki.ca_crt} verify required verifyhost {pki.sni} sni str({pki.sni}) ssl-min-ver TLSv1.3
"""


# --- nginx, HTTP mode ---------------------------------------------------------------

def _nginx_head(workdir: Path, name: str) -> str:
    return f"""\
worker_processes 1;
daemon off;
pid {workdir}/{name}.pid;
error_log {workdir}/{name}.error.log warn;
events {{ worker_connections 4096; }}
"""


def nginx_inbound(workdir: Path, ports: PairPorts, app_port: int, pki: TestPKI) -> str:
    return _nginx_head(workdir, "nginx-inbound") + f"""\
http {{
  access_log off;
  {_nginx_temp_paths(workdir, "nginx-inbound")}
  upstream app {{
    server 127.0.0.1:{app_port};
    keepalive 256;
  }}
  server {{
    listen 127.0.0.1:{ports.inbound} ssl;
    ssl_certificate {pki.server_crt};
    ssl_certificate_key {pki.server_key};
    ssl_client_certificate {pki.ca_crt};
    ssl_verify_client on;
    ssl_protocols TLSv1.3;
    ssl_session_cache shared:SSL:10m;
    location / {{
      proxy_pass http://app;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
    }}
  }}
}}
"""


def nginx_outbound(workdir: Path, ports: PairPorts, pki: TestPKI) -> str:
    return _nginx_head(workdir, "nginx-outbound") + f"""\
http {{
  access_log off;
  {_nginx_temp_paths(workdir, "nginx-outbound")}
  upstream inbound {{
    server 127.0.0.1:{ports.inbound};
    keepalive 256;
  }}
  server {{
    listen 127.0.0.1:{ports.outbound};
    location / {{
      proxy_pass https://inbound;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_ssl_certificate {pki.client_crt};
      proxy_ssl_certificate_key {pki.client_key};
      proxy_ssl_trusted_certificate {pki.ca_crt};
      proxy_ssl_verify on;
      proxy_ssl_name {pki.sni};
      proxy_ssl_server_name on;
      proxy_ssl_session_reuse on;
      proxy_ssl_protocols TLSv1.3;
    }}
  }}
}}
"""


# --- meshnode -----------------------------------------------------------------------

def _service(name: str) -> str:
    """A Service `name` selecting the app's workload, port SERVICE_PORT declared HTTP."""
    return f"""\
apiVersion: meshnode.io/v1alpha1
kind: Service
metadata:
  name: {name}
  namespace: {NAMESPACE}
spec:
  selector:
    app: {SERVICE}
  ports:
    - name: http
      port: {SERVICE_PORT}
      protocol: HTTP
"""


def meshnode_resources(app_port: int) -> str:
    """Service app.bench (port 8080, HTTP) and its one Workload: the app nginx.

    No Mesh resource: the defaults apply (trust domain cluster.local, STRICT mTLS).
    """
    return f"""\
# The meshnode side of the sidecar-pair benchmark: one service, one workload (the app nginx).
# Load goes to the node's outbound port (port-base+1) with `Host: {SNI}`.
{_service(SERVICE)}\
---
apiVersion: meshnode.io/v1alpha1
kind: Workload
metadata:
  name: {SERVICE}-v1
  namespace: {NAMESPACE}
spec:
  address: 127.0.0.1
  ports:
    http: {app_port}
  labels:
    app: {SERVICE}
    version: v1
  serviceAccount: {SERVICE}
"""


def meshnode_access_log_on() -> str:
    """The meshnode-log pair's extra resource: a Mesh that logs every request."""
    return """\
---
apiVersion: meshnode.io/v1alpha1
kind: Mesh
metadata:
  name: default
spec:
  telemetry:
    accessLog: true
"""


ROUTE_RULES = 10


def meshnode_routes() -> str:
    """The meshnode-routes pair's extra resources: Services app-v1 and app-v2 (both
    selecting the app's one workload, as a canary's version Services do) and an
    HTTPRoute on app with ROUTE_RULES rules. The first ones match on a path and a header
    the load never sends, so each request is judged against all of them; the last one
    (every path) splits 90/10 between the version Services: the route's worst case."""
    services = "".join(f"---\n{_service(f'{SERVICE}-{v}')}" for v in ("v1", "v2"))
    rules = "".join(f"""\
    - matches:
        - path:
            type: PathPrefix
            value: /api/v{i}
          headers:
            - name: x-tenant
              value: tenant-{i}
      backendRefs:
        - name: {SERVICE}-v2
          port: {SERVICE_PORT}
""" for i in range(ROUTE_RULES - 1))
    return services + f"""\
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata:
  name: {SERVICE}-split
  namespace: {NAMESPACE}
spec:
  parentRefs:
    - group: ""
      kind: Service
      name: {SERVICE}
      port: {SERVICE_PORT}
  rules:
{rules}\
    - backendRefs:
        - name: {SERVICE}-v1
          port: {SERVICE_PORT}
          weight: 90
        - name: {SERVICE}-v2
          port: {SERVICE_PORT}
          weight: 10
"""


AUTHZ_RULES = 20


def meshnode_authz() -> str:
    """The meshnode-authz pair's extra resources: AUTHZ_RULES AuthorizationPolicy rules on
    the app's workload, half DENY, half ALLOW (Istio's YAML). The DENY rules and all but the
    last ALLOW rule name paths, methods, headers and callers the load never has, so each
    request is judged against every rule; the last ALLOW rule lets the load's caller (the
    node's one workload, calling itself) GET any path: the policy's worst case."""
    half = AUTHZ_RULES // 2
    deny = "".join(f"""    - to:
        - operation:
            methods: ["DELETE", "PUT"]
            paths: ["/admin/{i}/*", "*/secret-{i}"]
      when:
        - key: request.headers[x-block]
          values: ["block-{i}"]
""" for i in range(half))
    allow = "".join(f"""    - from:
        - source:
            principals: ["cluster.local/ns/tenant-{i}/sa/client"]
      to:
        - operation:
            paths: ["/tenant-{i}/*"]
""" for i in range(half - 1))
    head = f"""---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata:
  namespace: {NAMESPACE}
"""
    return (head + f"""  name: {SERVICE}-deny
spec:
  selector: {{matchLabels: {{app: {SERVICE}}}}}
  action: DENY
  rules:
{deny}""" + head + f"""  name: {SERVICE}-allow
spec:
  selector: {{matchLabels: {{app: {SERVICE}}}}}
  action: ALLOW
  rules:
{allow}    - from:
        - source:
            principals: ["cluster.local/ns/{NAMESPACE}/sa/{SERVICE}"]
      to:
        - operation:
            methods: ["GET"]
            paths: ["/*"]
""")


MESHNODE_BLOCK = 100  # a node's ports are port-base+0 .. port-base+90 (meshnode/ports.py)


def meshnode_port_base(avoid: Iterable[int] = ()) -> int:
    """A port base whose block (admin +0, outbound +1, inbound +6, +10, metrics +90) is free.

    ``avoid``: port bases of nodes that are (or may be) running; the block chosen does not
    overlap theirs, even at ports they have not bound yet.
    """
    taken = list(avoid)
    for _ in range(200):
        base = free_port()
        if any(abs(base - other) < MESHNODE_BLOCK for other in taken):
            continue
        if 1024 <= base <= 65435 and all(port_free(base + off) for off in (0, 1, 6, 10, 90)):
            return base
    raise RuntimeError("found no free block of ports for a meshnode node")


# --- by hand ------------------------------------------------------------------------

def render(out: Path) -> str:
    """Write PKI, app, HAProxy, nginx and meshnode files for free ports; return how to start them."""
    out = out.resolve()
    write_app_files(out)
    pki = make_pki(out / "pki", SNI)
    app_port = free_port()
    hap = PairPorts(free_port(), free_port())
    ngx = PairPorts(free_port(), free_port())
    base = meshnode_port_base()
    files = {"app.conf": app_nginx(out, app_port),
             "haproxy-inbound.cfg": haproxy_inbound(hap, app_port, pki),
             "haproxy-outbound.cfg": haproxy_outbound(hap, pki),
             "nginx-inbound.conf": nginx_inbound(out, ngx, app_port, pki),
             "nginx-outbound.conf": nginx_outbound(out, ngx, pki)}
    for name, text in files.items():
        (out / name).write_text(text)
    (out / "meshnode-config").mkdir(exist_ok=True)
    (out / "meshnode-config" / "bench.yaml").write_text(meshnode_resources(app_port))
    return f"""\
files in {out}; ports were free when written. Each command runs in the foreground.
app:      taskset -c 0 nginx -p {out} -e {out}/app.error.log -c {out}/app.conf
haproxy:  taskset -c 0 haproxy -db -f {out}/haproxy-inbound.cfg
          taskset -c 0 haproxy -db -f {out}/haproxy-outbound.cfg
          load: taskset -c 1 wrk -t2 -c64 -d8s --latency http://127.0.0.1:{hap.outbound}/
nginx:    taskset -c 0 nginx -p {out} -e {out}/nginx-inbound.error.log -c {out}/nginx-inbound.conf
          taskset -c 0 nginx -p {out} -e {out}/nginx-outbound.error.log -c {out}/nginx-outbound.conf
          load: taskset -c 1 wrk -t2 -c64 -d8s --latency http://127.0.0.1:{ngx.outbound}/
meshnode: taskset -c 0 meshnode up --runtime-dir {out}/node --port-base {base} --workers 1 --config {out}/meshnode-config
          load: taskset -c 1 wrk -t2 -c64 -d8s --latency -H 'Host: {SNI}' http://127.0.0.1:{base + 1}/
          stop: meshnode down --runtime-dir {out}/node
direct:   load: taskset -c 1 wrk -t2 -c64 -d8s --latency http://127.0.0.1:{app_port}/
"""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench/peers.py", description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path, help="dir to write into (created if missing)")
    args = parser.parse_args(argv)
    print(render(args.out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
