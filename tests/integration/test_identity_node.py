"""Workload identity on a real node, end to end through its processes (DESIGN §4).

Issued chains, mutual TLS, renewal, a ca outage, root rotation, refused CSRs, and the
CLI's view of the CA. The node runs under supervisord with two proxy workers; the test
process holds its own credentials through in-process probe workers
(identityharness.Probe) built from the product's parts, so it can run handshakes with
the contexts a worker would use.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import socket
import stat
import subprocess
import time
from pathlib import Path
from typing import Callable, Iterator

import pytest
import zmq
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.x509.oid import ExtendedKeyUsageOID

from bus.endpoints import Endpoints
from bus.errors import RemoteError
from bus.request import Client
from fastpath.errors import TLSError
from fastpath.tls import TLSContext, spiffe_id_of_pem
from meshnode.identity import pki

from identityharness import (BACKEND, FRONTEND, STRANGER, Handshake, Probe, assert_mutual,
                             handshake, metric_samples, metric_value, openssl_verify,
                             probe_handshake, split_chain, wait_issued, write_config)
from mnharness import CLI, Node, run_cli, wait_for

pytestmark = pytest.mark.timeout(60)

WORKLOAD_TTL_S = 10.0
X509_V_ERR_CERT_HAS_EXPIRED = 10
X509_V_ERR_UNABLE_TO_GET_ISSUER_CERT_LOCALLY = 20
EXPIRY = "meshnode_cert_expiry_timestamp_seconds"
RENEWAL_FAILURES = "meshnode_cert_renewal_failures_total"


@pytest.fixture
def id_node(make_node: Callable[..., Node], resource_dir: Path) -> Node:
    """A started node whose config places frontend and backend, with 10 s certificates."""
    node = make_node()
    result = node.up("--config", str(write_config(resource_dir / "config")))
    assert result.returncode == 0, f"up failed:\n{result.stdout}\n{result.stderr}"
    return node


@pytest.fixture
def start_probe(make_node: Callable[..., Node]) -> Iterator[Callable[..., Probe]]:
    """Starts probe workers; teardown stops each (before its node goes down) and joins it."""
    probes: list[Probe] = []

    def start(node: Node, name: str, identity: str, bundle_delay_s: float = 0.0) -> Probe:
        probe = Probe(node.runtime_dir, name, identity, bundle_delay_s=bundle_delay_s).start()
        probes.append(probe)
        return probe

    yield start
    problems = []
    for probe in probes:
        try:
            probe.stop()
            probe.check()
        except AssertionError as exc:
            problems.append(str(exc))
    assert not problems, problems


def pair(node: Node, start_probe: Callable[..., Probe],
         backend_delay_s: float = 0.0) -> tuple[Probe, Probe]:
    frontend = start_probe(node, "probe-frontend", FRONTEND)
    backend = start_probe(node, "probe-backend", BACKEND, bundle_delay_s=backend_delay_s)
    wait_issued(frontend, backend)
    return frontend, backend


def not_after(probe: Probe) -> float:
    issued = probe.view().current
    assert issued is not None, f"{probe.name} holds no certificate"
    return issued.not_after


def ca_cli(node: Node, command: str, *args: str) -> subprocess.CompletedProcess[str]:
    """`meshnode ca COMMAND --runtime-dir RD ...` (Node.cli puts the dir before COMMAND)."""
    return run_cli("ca", command, "--runtime-dir", str(node.runtime_dir), *args)


def ca_file(node: Node, name: str) -> Path:
    return node.runtime_dir / "ca" / name


def refused_by_server(result: Handshake) -> TLSError:
    """The server refused the client's certificate, and the client got no reply.

    The client itself verified the server (its handshake completes first in TLS 1.3).
    """
    assert isinstance(result.server_error, TLSError), result.describe()
    assert result.client_peer == BACKEND, result.describe()
    assert result.server_peer is None, result.describe()
    assert result.reply is None and result.client_error is not None, result.describe()
    return result.server_error


def workload_cert(issuer: x509.Certificate, issuer_key: pki.PrivateKey, identity: str,
                  not_before: dt.datetime, not_after: dt.datetime) -> tuple[bytes, bytes]:
    """(chain, key) of a workload certificate shaped like the ca's, with chosen validity."""
    key = pki.new_key()
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([])).issuer_name(issuer.subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(not_before).not_valid_after(not_after)
            .add_extension(x509.SubjectAlternativeName([x509.UniformResourceIdentifier(identity)]),
                           critical=True)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH,
                                                  ExtendedKeyUsageOID.CLIENT_AUTH]),
                           critical=False)
            .sign(issuer_key, hashes.SHA256()))
    return pki.cert_pem(cert) + pki.cert_pem(issuer), pki.key_pem(key)


# --- 1. the chain a node issues ----------------------------------------------------------


def test_issued_chain_verifies_and_has_the_workload_shape(
        id_node: Node, start_probe: Callable[..., Probe], tmp_path: Path) -> None:
    probe = start_probe(id_node, "probe-frontend", FRONTEND)
    wait_issued(probe)
    issued = probe.view().current
    assert issued is not None
    leaf_pem, issuer_pem = split_chain(issued.chain_pem)
    # The chain the ca hands out is the leaf and this node's issuer, as kept on disk.
    assert issuer_pem == ca_file(id_node, "issuer.pem").read_bytes()
    (tmp_path / "leaf.pem").write_bytes(leaf_pem)

    out = openssl_verify(ca_file(id_node, "root.pem"), tmp_path / "leaf.pem",
                         ca_file(id_node, "issuer.pem"))
    assert out.returncode == 0, out.stdout + out.stderr
    assert out.stdout.strip().endswith(": OK"), out.stdout

    leaf = x509.load_pem_x509_certificate(leaf_pem)
    assert pki.uri_sans(leaf) == [FRONTEND]
    assert spiffe_id_of_pem(leaf_pem) == FRONTEND
    # An empty subject makes the SAN the name, and RFC 5280 §4.2.1.6 then wants it critical.
    assert leaf.subject == x509.Name([])
    assert leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).critical
    usage = leaf.extensions.get_extension_for_class(x509.KeyUsage).value
    assert usage.digital_signature
    assert not (usage.key_cert_sign or usage.crl_sign or usage.key_encipherment
                or usage.content_commitment or usage.data_encipherment or usage.key_agreement)
    eku = leaf.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert set(eku) == {ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH}
    assert leaf.extensions.get_extension_for_class(x509.BasicConstraints).value.ca is False

    issuer = x509.load_pem_x509_certificate(issuer_pem)
    root = x509.load_pem_x509_certificate(ca_file(id_node, "root.pem").read_bytes())
    issuer_bc = issuer.extensions.get_extension_for_class(x509.BasicConstraints).value
    root_bc = root.extensions.get_extension_for_class(x509.BasicConstraints).value
    assert (issuer_bc.ca, issuer_bc.path_length) == (True, 0)
    assert (root_bc.ca, root_bc.path_length) == (True, 1)

    # 10 s of life, plus not_before set back by min(60 s, ttl/10) for clock skew: 11 s.
    life = (leaf.not_valid_after_utc - leaf.not_valid_before_utc).total_seconds()
    assert WORKLOAD_TTL_S <= life <= WORKLOAD_TTL_S + 1, life
    assert leaf.not_valid_after_utc.timestamp() <= issued.at + WORKLOAD_TTL_S + 1
    assert leaf.not_valid_after_utc.timestamp() > time.time()


# --- 2. mutual TLS, and who is refused -----------------------------------------------------


def test_probes_complete_mutual_tls_and_refuse_foreign_expired_and_missing_certs(
        id_node: Node, start_probe: Callable[..., Probe]) -> None:
    frontend, backend = pair(id_node, start_probe)
    assert_mutual(probe_handshake(frontend, backend), FRONTEND, BACKEND)
    assert_mutual(probe_handshake(backend, frontend), BACKEND, FRONTEND)

    server = backend.contexts()
    assert server is not None
    node_root = ca_file(id_node, "root.pem").read_bytes()

    # A well-formed certificate for the right identity, but under another mesh's root.
    other_root, other_root_key = pki.make_root("another mesh")
    other_issuer, other_issuer_key = pki.make_issuer(other_root, other_root_key, "elsewhere",
                                                     3600)
    key = pki.new_key()
    csr = x509.load_pem_x509_csr(pki.make_csr(key, FRONTEND))
    leaf = pki.sign_workload(csr, FRONTEND, other_issuer, other_issuer_key, 600)
    foreign = TLSContext.for_mesh(False, pki.cert_pem(leaf) + pki.cert_pem(other_issuer),
                                  pki.key_pem(key), node_root)
    error = refused_by_server(handshake(foreign, server.server))
    assert error.verify_result == X509_V_ERR_UNABLE_TO_GET_ISSUER_CERT_LOCALLY, error
    assert "unable to get local issuer certificate" in str(error), error

    # Signed by this node's own issuer (its key is on disk, 0600, readable by root here),
    # valid in every way but time: expired an hour ago.
    issuer = pki.load_cert(ca_file(id_node, "issuer.pem").read_bytes(), "issuer.pem")
    issuer_key = pki.load_key(ca_file(id_node, "issuer.key").read_bytes(), "issuer.key")
    now = dt.datetime.now(dt.timezone.utc)
    chain, key_pem = workload_cert(issuer, issuer_key, FRONTEND, now - dt.timedelta(hours=2),
                                   now - dt.timedelta(hours=1))
    expired = TLSContext.for_mesh(False, chain, key_pem, node_root)
    error = refused_by_server(handshake(expired, server.server))
    assert error.verify_result == X509_V_ERR_CERT_HAS_EXPIRED, error
    assert "certificate has expired" in str(error), error
    # The same certificate in its validity period is accepted: time alone refused it.
    chain, key_pem = workload_cert(issuer, issuer_key, FRONTEND, now - dt.timedelta(minutes=1),
                                   now + dt.timedelta(minutes=5))
    assert_mutual(handshake(TLSContext.for_mesh(False, chain, key_pem, node_root),
                            server.server), FRONTEND, BACKEND)

    # No client certificate at all (the server's own one is verified as usual).
    anonymous = TLSContext(False)
    anonymous.load_trust(node_root)
    anonymous.require_peer_cert()
    error = refused_by_server(handshake(anonymous, server.server))
    assert "peer did not return a certificate" in str(error), error

    # Every refusal left the server as it was.
    assert_mutual(probe_handshake(frontend, backend), FRONTEND, BACKEND)


# --- 3. renewal, and a ca outage ------------------------------------------------------------


def test_certificates_renew_before_expiry_in_probes_and_workers(
        id_node: Node, start_probe: Callable[..., Probe]) -> None:
    frontend, backend = pair(id_node, start_probe)
    checked = 1  # history entries whose renewal has been judged and connected with
    worker_expiry: list[float] = []
    deadline = time.monotonic() + 35.0
    while checked < 3 or len(worker_expiry) < 3:
        assert time.monotonic() < deadline, (f"renewals seen: probe {checked - 1}, "
                                             f"proxy-0 expiries {worker_expiry}")
        history = frontend.view().history
        for prev, cur in zip(history[checked - 1:], history[checked:]):
            # Renewed while the old certificate was still valid, around rotateAt (0.5
            # with jitter) of its life: not early, and well before the expiry warning.
            assert cur.at < prev.not_after, (prev, cur)
            share = (cur.at - prev.at) / (prev.not_after - prev.at)
            assert 0.3 < share < 0.85, (share, prev, cur)
            assert cur.not_after > prev.not_after
            assert_mutual(probe_handshake(frontend, backend), FRONTEND, BACKEND)
            checked += 1
        value = metric_value(id_node.metrics_url, EXPIRY, process="proxy-0", identity=FRONTEND)
        if value is not None and (not worker_expiry or value != worker_expiry[-1]):
            worker_expiry.append(value)
        time.sleep(0.1)
    assert worker_expiry == sorted(worker_expiry), worker_expiry
    assert frontend.view().renewal_failures == 0
    assert backend.view().renewal_failures == 0


def test_a_ca_outage_is_ridden_out_until_expiry_and_recovered_from(
        id_node: Node, start_probe: Callable[..., Probe]) -> None:
    frontend, backend = pair(id_node, start_probe)
    stopped = id_node.supervisorctl("stop", "ca")
    assert stopped.returncode == 0, stopped.stdout + stopped.stderr
    stopped_at = time.time()

    # Serving goes on with the certificates held; the earliest expiry is recomputed each
    # round, since an answer the ca sent just before it stopped may still arrive.
    def earliest_expiry() -> float:
        return min(not_after(p) for p in (frontend, backend))

    served = 0
    while time.time() < earliest_expiry() - 0.5:
        assert_mutual(probe_handshake(frontend, backend), FRONTEND, BACKEND)
        served += 1
        time.sleep(0.2)
    assert served > 0
    assert earliest_expiry() < stopped_at + WORKLOAD_TTL_S + 2

    wait_for(lambda: frontend.view().renewal_failures > 0 and backend.view().renewal_failures > 0,
             10.0, "the probes to count failed renewals")
    wait_for(lambda: (metric_value(id_node.metrics_url, RENEWAL_FAILURES,
                                   process="proxy-0") or 0) > 0,
             15.0, "proxy-0's renewal failures on /metrics")
    log = id_node.runtime_dir / "logs" / "proxy-0.log"

    def expiring_logged() -> list[dict[str, object]]:
        events = [json.loads(line) for line in log.read_text().splitlines() if line.strip()]
        return [e for e in events if e.get("event") == "cert.expiring"]
    warned = wait_for(expiring_logged, 15.0, "a cert.expiring event in proxy-0.log")
    assert warned[0]["level"] == "warning" and warned[0]["renewal_failures"] >= 1, warned[0]

    # Past the expiry nothing is served on the old certificates: they were all there was.
    expiry = earliest_expiry()
    wait_for(lambda: time.time() > expiry + 1.0, 15.0, "the certificates' expiry")
    late = probe_handshake(frontend, backend)
    assert not late.ok, late.describe()
    assert any(getattr(e, "verify_result", None) == X509_V_ERR_CERT_HAS_EXPIRED
               for e in (late.client_error, late.server_error)), late.describe()

    started = id_node.supervisorctl("start", "ca")
    assert started.returncode == 0, started.stdout + started.stderr

    def probes_recovered() -> Handshake | None:
        if min(not_after(p) for p in (frontend, backend)) <= time.time() + 2:
            return None
        result = probe_handshake(frontend, backend)
        return result if result.ok else None
    assert_mutual(wait_for(probes_recovered, 20.0, "the probes to renew after the ca's return"),
                  FRONTEND, BACKEND)

    def workers_recovered() -> bool:
        values = {(labels.get("process"), labels.get("identity")): value
                  for labels, value in metric_samples(id_node.metrics_url, EXPIRY)}
        wanted = [(w, i) for w in id_node.worker_names for i in (FRONTEND, BACKEND)]
        return all(values.get(k, 0) > time.time() + 2 for k in wanted)
    wait_for(workers_recovered, 20.0, "every worker's certificates renewed after the outage",
             interval_s=0.2)


# --- 4. root rotation under load -------------------------------------------------------------


def test_root_rotation_fails_no_handshake(
        id_node: Node, start_probe: Callable[..., Probe], tmp_path: Path) -> None:
    # The backend probe applies each bundle a second late, like a busy worker: a walk
    # that moved on without waiting for it would leave it distrusted or distrusting.
    frontend, backend = pair(id_node, start_probe, backend_delay_s=1.0)
    old_root = ca_file(id_node, "root.pem").read_bytes()
    env = {k: v for k, v in os.environ.items() if k != "MESHNODE_RUNTIME_DIR"}
    cli = subprocess.Popen([*CLI, "ca", "rotate-root", "--runtime-dir", str(id_node.runtime_dir),
                            "--timeout", "40"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                           stdin=subprocess.DEVNULL, text=True, env=env)
    failures: list[str] = []
    done = 0
    try:
        deadline = time.monotonic() + 45.0
        while cli.poll() is None and time.monotonic() < deadline:
            # Both directions, so each probe serves and connects through every step.
            client, server = (frontend, backend) if done % 2 == 0 else (backend, frontend)
            result = probe_handshake(client, server)
            if not result.ok:
                failures.append(f"#{done} {client.name}->{server.name}: {result.describe()}")
            done += 1
    finally:
        if cli.poll() is None:
            cli.kill()
        out, err = cli.communicate(timeout=10)
    assert cli.returncode == 0, out + err
    assert "root rotation complete" in out, out
    assert not failures, failures[:5]
    assert done >= 20, f"only {done} handshakes during the rotation"

    new_root = ca_file(id_node, "root.pem").read_bytes()
    assert new_root != old_root
    assert json.loads(ca_file(id_node, "bundle.json").read_text())["roots"] == [new_root.decode()]
    # Every probe runs the one-root bundle, so a handshake that completes now proves both
    # certificates chain to the new root: nothing else is trusted on either side.
    for probe in (frontend, backend):
        wait_for(lambda: probe.view().bundle_pem == new_root, 10.0,
                 f"{probe.name} to run the bundle with the new root only")
    assert_mutual(probe_handshake(frontend, backend), FRONTEND, BACKEND)
    assert_mutual(probe_handshake(backend, frontend), BACKEND, FRONTEND)
    (tmp_path / "old-root.pem").write_bytes(old_root)
    for probe in (frontend, backend):
        issued = probe.view().current
        assert issued is not None
        leaf, issuer = split_chain(issued.chain_pem)
        (tmp_path / "leaf.pem").write_bytes(leaf)
        (tmp_path / "issuer.pem").write_bytes(issuer)
        ok = openssl_verify(ca_file(id_node, "root.pem"), tmp_path / "leaf.pem",
                            tmp_path / "issuer.pem")
        assert ok.returncode == 0, ok.stdout + ok.stderr
        old = openssl_verify(tmp_path / "old-root.pem", tmp_path / "leaf.pem",
                             tmp_path / "issuer.pem")
        assert old.returncode != 0, old.stdout
    inspect = ca_cli(id_node, "inspect", "--json")
    assert inspect.returncode == 0, inspect.stderr
    report = json.loads(inspect.stdout)
    assert len(report["bundle"]) == 1 and report["rotation"]["pending"] is False, report


# --- 5. a CSR for an identity that is not here ----------------------------------------------


def test_csr_for_an_identity_not_placed_here_is_refused_and_counted(id_node: Node) -> None:
    ctx = zmq.Context()
    try:
        client = Client(ctx, Endpoints.for_runtime_dir(id_node.runtime_dir),
                        node=socket.gethostname(), src="test-identity")

        def sign(identity: str) -> dict[str, object] | RemoteError:
            body = {"identity": identity, "worker": "test-identity",
                    "csr": pki.make_csr(pki.new_key(), identity).decode()}
            try:
                return client.call("ca", "sign", body)
            except RemoteError as exc:
                return exc

        def answered(identity: str) -> dict[str, object] | RemoteError | None:
            reply = sign(identity)
            # The ca may not have its config for a moment after up: that is not a refusal.
            return None if isinstance(reply, RemoteError) and reply.kind == "not-ready" else reply

        refused = wait_for(lambda: answered(STRANGER), 10.0, "the ca to answer")
        assert isinstance(refused, RemoteError), refused
        assert refused.kind == "refused", (refused.kind, str(refused))
        assert refused.details == {"reason": "not-placed"}
        message = str(refused)
        assert STRANGER in message and "is not placed on node" in message, message
        assert "service account stranger in namespace demo" in message, message

        # The same request for an identity placed here is signed: only placement differs.
        signed = sign(FRONTEND)
        assert isinstance(signed, dict) and "chain" in signed, signed
        client.close()
    finally:
        ctx.destroy(linger=0)

    def counted() -> float | None:
        return metric_value(id_node.metrics_url, "meshnode_ca_csr_refused_total",
                            reason="not-placed")
    assert wait_for(counted, 10.0, "meshnode_ca_csr_refused_total{reason=\"not-placed\"}") == 1.0
    events = [json.loads(line) for line in
              (id_node.runtime_dir / "logs" / "ca.log").read_text().splitlines() if line.strip()]
    refusals = [e for e in events if e.get("event") == "ca.csr.refused"]
    assert [(e["identity"], e["reason"]) for e in refusals] == [(STRANGER, "not-placed")]


# --- 6. the CLI's view of the CA, and a root brought by the user ----------------------------


def test_inspect_shows_the_chain_sans_days_left_and_a_node_made_root(node: Node) -> None:
    def both_issued() -> str | None:
        result = ca_cli(node, "inspect")
        assert result.returncode == 0, result.stderr
        return result.stdout if FRONTEND in result.stdout and BACKEND in result.stdout else None
    text = wait_for(both_issued, 15.0, "inspect to list both workload identities")
    lines = text.splitlines()
    assert lines[1].startswith("root ") and "CA pathlen=1" in lines[1], text
    assert "made by this node" in lines[2], text
    assert lines[3].startswith("issuer ") and "CA pathlen=0" in lines[3], text
    assert "issued by CN=meshnode root" in lines[4], text
    assert "bundle   1 root(s)" in text, text
    assert f"SAN {FRONTEND}" in text and f"SAN {BACKEND}" in text, text
    assert "days left" in text
    # The example mesh gives workloads 24 h: a day left, printed to two decimals.
    workloads = [line for line in lines if "SAN spiffe://" in line]
    assert all("1.00 days left" in line or "0.99 days left" in line for line in workloads), text

    report = json.loads(ca_cli(node, "inspect", "--json").stdout)
    assert report["root"]["self_made"] is True
    assert report["issuer"]["issuer"] == report["root"]["subject"]


def test_up_with_a_user_root_issues_under_it(make_node: Callable[..., Node],
                                            resource_dir: Path) -> None:
    root_dir = resource_dir / "mesh-root"
    node = make_node()
    made = run_cli("ca", "init", "--trust-domain", "cluster.local", "--out", str(root_dir))
    assert made.returncode == 0, made.stderr
    assert stat.S_IMODE((root_dir / "root.key").stat().st_mode) == 0o600

    result = node.up("--ca-root", str(root_dir))
    assert result.returncode == 0, f"up failed:\n{result.stdout}\n{result.stderr}"
    out = openssl_verify(root_dir / "root.pem", ca_file(node, "issuer.pem"))
    assert out.returncode == 0, out.stdout + out.stderr
    # The copy the ca keeps is the user's root, and its key is the owner's alone.
    assert ca_file(node, "root.pem").read_bytes() == (root_dir / "root.pem").read_bytes()
    assert stat.S_IMODE(ca_file(node, "root.key").stat().st_mode) == 0o600
    assert stat.S_IMODE(ca_file(node, "issuer.key").stat().st_mode) == 0o600
    assert not ca_file(node, "root.self-made").exists()

    def issued() -> str | None:
        inspected = ca_cli(node, "inspect")
        assert inspected.returncode == 0, inspected.stderr
        return inspected.stdout if FRONTEND in inspected.stdout else None
    text = wait_for(issued, 15.0, "inspect to list a workload")
    assert "brought by the user" in text and "made by this node" not in text, text
    assert "SAN spiffe://cluster.local" in text.splitlines()[1], text  # the root's own SAN
