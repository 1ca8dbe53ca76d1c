"""The agent and approver sides of seb_client against a real broker and executor."""

import contextlib
import http.server
import json
import os
import ssl
import threading
import uuid

import pytest

from conftest import approver, env, read
from seb_client import Client, Granted, Pending, errors, verify_token
from seb_client.verify import TrustBundle


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}.txt"


@contextlib.contextmanager
def impostor_server():
    """An HTTPS server with the impostor's certificate (a team CA's, agents only, for the
    broker's address, claiming the executor role). Yields (URL, the paths it was asked for)."""
    seen = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            seen.append(self.path)
            self.send_response(200)
            self.end_headers()

        do_POST = do_GET

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(env("SEB_IMPOSTOR_CERT"), env("SEB_IMPOSTOR_KEY"))
    server.socket = context.wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"https://127.0.0.1:{server.server_address[1]}", seen
    finally:
        server.shutdown()


def test_grants_show_the_agents_authority(agent):
    authority = agent.grants()
    assert authority.subject == "CN=agent"
    assert authority.frozen is False
    assert authority.epoch == 1
    assert [(g.operation, g.resource) for g in authority.grants] == [
        ("demo.write", "demo/files"), ("demo.write", "demo/files"),
        ("deploy.rollout", "prod/payments/*"), ("demo.brief", "demo/files")]
    release = authority.grants[0]
    assert release.params == {"name": {"prefix": "release-"}} and release.params_any
    deploy = authority.grants[2]
    assert deploy.approval == {"required": 2, "group": "sre-leads"}
    assert deploy.params == {"replicas": {"min": 1, "max": 10}}
    assert authority.grants[3].token_ttl == 1


def test_request_verify_execute_once(agent):
    name = unique("py")
    params = {"name": name, "text": "hello from python"}
    granted = agent.request("demo.write", "demo/files", params, justification="pytest")
    assert isinstance(granted, Granted)
    # The executor-side verifier accepts it for exactly this action and agent.
    claims = verify_token(granted.token, TrustBundle(read("SEB_TRUST")), "demo.write",
                          "demo/files", json.dumps(params), read("SEB_AGENT_CERT"),
                          issuer="seb-dev")
    assert claims["jti"] and claims["authorization_details"][0]["operation"] == "demo.write"

    result = agent.execute(env("SEB_EXECUTOR_URL"), granted.token, params)
    assert result["status"] == "executed"
    assert result["receipt"]["body"]["exit_code"] == 0
    with open(os.path.join(env("SEB_OUT_DIR"), name)) as f:
        assert f.read() == "hello from python"
    # Single use: the second presentation is refused, with its code.
    with pytest.raises(errors.TokenAlreadyRedeemed) as refused:
        agent.execute(env("SEB_EXECUTOR_URL"), granted.token, params)
    assert refused.value.code == "token_already_redeemed" and refused.value.status == 409
    assert isinstance(refused.value, errors.TokenRefused)


def test_an_action_that_ran_and_failed_raises_action_failed_with_its_receipt(agent):
    # `seb demo-write` refuses a name that is not a plain file name: the action exits 1.
    params = {"name": "../escape.txt", "text": "x"}
    granted = agent.request("demo.write", "demo/files", params)
    with pytest.raises(errors.ActionFailed) as failed:
        agent.execute(env("SEB_EXECUTOR_URL"), granted.token, params)
    assert failed.value.code == "action_failed"
    assert failed.value.answer["status"] == "executed"
    assert failed.value.answer["succeeded"] is False
    assert failed.value.receipt["body"]["exit_code"] == 1
    assert failed.value.receipt["body"]["request_id"] == granted.request_id
    assert failed.value.request_id == granted.request_id


def test_another_agent_cannot_use_the_token(agent, other_agent):
    params = {"name": unique("stolen"), "text": "x"}
    granted = agent.request("demo.write", "demo/files", params)
    with pytest.raises(errors.WrongCertificate) as refused:
        other_agent.execute(env("SEB_EXECUTOR_URL"), granted.token, params)
    assert refused.value.code == "wrong_certificate"
    assert not os.path.exists(os.path.join(env("SEB_OUT_DIR"), params["name"]))


def test_denials_raise_the_exception_of_their_code(agent):
    with pytest.raises(errors.OperationNotGranted) as denied:
        agent.request("db.drop", "prod/payments/db", {})
    assert denied.value.status == 403 and isinstance(denied.value, errors.Denied)
    with pytest.raises(errors.ParamConstraintViolated):
        agent.request("deploy.rollout", "prod/payments/api", {"replicas": 11})
    with pytest.raises(errors.ResourceNotGranted):
        agent.request("deploy.rollout", "staging/payments/api", {"replicas": 1})


def test_approvals_pending_approve_wait_and_verify(agent):
    params = {"replicas": 3}
    pending = agent.request("deploy.rollout", "prod/payments/api", params,
                            justification="roll out the fix")
    assert isinstance(pending, Pending)
    assert (pending.approvals_required, pending.approval_group) == (2, "sre-leads")
    with pytest.raises(errors.WaitTimeout):
        agent.wait(pending.request_id, timeout=0.3, interval=0.1)
    for name in ("ALICE", "BOB"):
        with approver(name) as a:
            listed = [r for r in a.pending() if r["request_id"] == pending.request_id]
            assert listed and listed[0]["params"] == params
            a.approve(pending.request_id, reason="reviewed")
            if name == "ALICE":
                # A second decision of hers is told so, in the broker's code, unsigned.
                with pytest.raises(errors.SebError) as again:
                    a.approve(pending.request_id)
                assert again.value.code == "duplicate_approval"
    granted = agent.wait(pending.request_id, timeout=30)
    # Decided: the broker's own code says so.
    with approver("ALICE") as a:
        with pytest.raises(errors.SebError) as closed:
            a.approve(pending.request_id)
        assert closed.value.code == "request_closed"
        with pytest.raises(errors.SebError) as unknown:
            a.approve("A" * 22)
        assert unknown.value.code == "not_found"
    assert isinstance(granted, Granted)

    trust = TrustBundle(read("SEB_TRUST"))
    approvers = read("SEB_ALICE_CERT") + read("SEB_BOB_CERT")
    claims = verify_token(granted.token, trust, "deploy.rollout", "prod/payments/api",
                          json.dumps(params), read("SEB_AGENT_CERT"), approvers=approvers)
    assert claims["authorization_details"][0]["approvals"] == 2
    assert len(claims["approvals"]) == 2
    # Without the approvers' certificates the quorum cannot be checked: refused.
    with pytest.raises(errors.VerifyError) as refused:
        verify_token(granted.token, trust, "deploy.rollout", "prod/payments/api",
                     json.dumps(params), read("SEB_AGENT_CERT"))
    assert refused.value.code == "unknown_approver"
    # Only one approver's certificate: the other entry is unknown.
    with pytest.raises(errors.VerifyError) as refused:
        verify_token(granted.token, trust, "deploy.rollout", "prod/payments/api",
                     json.dumps(params), read("SEB_AGENT_CERT"), approvers=read("SEB_ALICE_CERT"))
    assert refused.value.code == "unknown_approver"


def test_a_rejection_ends_the_wait(agent):
    pending = agent.request("deploy.rollout", "prod/payments/api", {"replicas": 2})
    with approver("ALICE") as a:
        a.approve(pending.request_id, decision="reject", reason="not now")
    with pytest.raises(errors.RequestNotGranted) as ended:
        agent.wait(pending.request_id, timeout=10, interval=0.1)
    assert ended.value.code == "request_rejected"


def _foreign_root(tmp_path) -> str:
    """A self-signed CA certificate of no installation of seb's, as a PEM file."""
    import datetime

    from cryptography import x509 as cx509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID
    key = ec.generate_private_key(ec.SECP384R1())
    name = cx509.Name([cx509.NameAttribute(NameOID.COMMON_NAME, "another root")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (cx509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(cx509.random_serial_number())
            .not_valid_before(now).not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(cx509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA384()))
    path = tmp_path / "another-root.pem"
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return str(path)


def test_the_broker_certificate_must_be_the_roots_own(agent, tmp_path):
    # Pinning another root: the TLS handshake itself fails.
    import ssl

    import httpx
    from seb_client import Client
    with pytest.raises((ssl.SSLError, httpx.ConnectError)):
        with Client(env("SEB_BROKER_URL"), _foreign_root(tmp_path), env("SEB_AGENT_CERT"),
                    env("SEB_AGENT_KEY")) as c:
            c.grants()
    # A file without a root (the audit certificate, or an intermediate) pins nothing.
    with pytest.raises(ValueError) as refused:
        Client(env("SEB_BROKER_URL"), env("SEB_AUDIT_CERT"), env("SEB_AGENT_CERT"),
               env("SEB_AGENT_KEY"))
    assert "holds no self-signed root" in str(refused.value)


def test_an_executor_outside_the_pinned_root_is_a_tls_failure_not_unreachable(agent, tmp_path):
    # The executor's certificate does not chain to the root this client pins: a configuration
    # error raised as the TLS stack reports it, never the retryable executor_unreachable.
    import ssl

    import httpx
    granted = agent.request("demo.write", "demo/files", {"name": "never.txt", "text": "x"})
    with Client(env("SEB_BROKER_URL"), _foreign_root(tmp_path), env("SEB_AGENT_CERT"),
                env("SEB_AGENT_KEY")) as c:
        with pytest.raises((ssl.SSLError, httpx.ConnectError)) as raised:
            c.execute(env("SEB_EXECUTOR_URL"), granted.token,
                      {"name": "never.txt", "text": "x"})
    assert not isinstance(raised.value, errors.SebError)
    assert not os.path.exists(os.path.join(env("SEB_OUT_DIR"), "never.txt"))


def test_a_server_certificate_an_intermediate_issued_is_refused_before_any_request(agent):
    """An intermediate CA (certified by the root, for agents only) made a TLS certificate for
    the broker's address: it chains to the root, so TLS alone accepts it. The client refuses it
    in the handshake, and the impostor never sees a request."""
    with impostor_server() as (url, seen):
        with Client(url, env("SEB_ROOT"), env("SEB_AGENT_CERT"), env("SEB_AGENT_KEY")) as c:
            with pytest.raises(errors.ServerCertificateRefused) as refused:
                c.request("demo.write", "demo/files", {"name": "secret.txt", "text": "x"})
            assert "not issued directly by the pinned root" in str(refused.value)
        assert seen == []


def test_an_executor_is_not_taken_for_the_broker(agent):
    """An executor's certificate is root-issued with serverAuth for its address too; whoever
    holds its key must not be able to answer as the broker. It carries sebRole; the broker's
    certificate never does."""
    from seb_client import Client
    with Client(env("SEB_EXECUTOR_URL"), env("SEB_ROOT"), env("SEB_AGENT_CERT"),
                env("SEB_AGENT_KEY")) as c:
        with pytest.raises(errors.ServerCertificateRefused) as refused:
            c.request("demo.write", "demo/files", {"name": "x.txt", "text": "x"})
        assert "carries a seb role" in str(refused.value)


def test_only_an_executors_certificate_gets_the_token(agent):
    """The broker's certificate, and a TLS certificate a team CA (agents only) made, chain to
    the root: TLS alone would take either for an executor and hand it the token. The client
    refuses both in the handshake, and the token is still good for the real executor."""
    params = {"name": "only-executor.txt", "text": "x"}
    granted = agent.request("demo.write", "demo/files", params)
    with pytest.raises(errors.ServerCertificateRefused) as refused:
        agent.execute(env("SEB_BROKER_URL"), granted.token, params)
    assert "not an executor's" in str(refused.value)
    # The impostor carries sebRole executor, but the team CA above it may issue agents only.
    with impostor_server() as (url, seen):
        with pytest.raises(errors.ServerCertificateRefused) as refused:
            agent.execute(url, granted.token, params)
        assert "may not issue executors" in str(refused.value)
        assert seen == []
    done = agent.execute(env("SEB_EXECUTOR_URL"), granted.token, params)
    assert done["succeeded"] is True


def test_an_unreachable_broker_raises_a_typed_error():
    with Client("https://127.0.0.1:1", env("SEB_ROOT"), env("SEB_AGENT_CERT"),
                env("SEB_AGENT_KEY")) as nowhere:
        with pytest.raises(errors.Unavailable) as raised:
            nowhere.grants()
    assert raised.value.code == "broker_unreachable"


def test_a_handshake_the_server_closes_is_unavailable_not_a_crash():
    """A broker whose HSM is pulled cannot sign its side of a new handshake and closes it
    without an alert: the caller (and a LangChain tool) gets the retryable broker_unreachable
    with the hint, not a raw TLS exception."""
    import socket
    import threading
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    port = listener.getsockname()[1]

    def close_each_handshake():
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            conn.recv(4096)  # the ClientHello, then nothing
            conn.close()
    threading.Thread(target=close_each_handshake, daemon=True).start()
    try:
        with Client(f"https://127.0.0.1:{port}", env("SEB_ROOT"), env("SEB_AGENT_CERT"),
                    env("SEB_AGENT_KEY")) as c:
            with pytest.raises(errors.Unavailable) as raised:
                c.grants()
        assert raised.value.code == "broker_unreachable"
        assert "HSM may be unavailable" in str(raised.value)
    finally:
        listener.close()


def test_a_request_id_that_is_not_one_never_reaches_the_broker(agent):
    # A path such as "../trust" would otherwise fetch another route and read as a status.
    for bad in ["../trust", "../grants", "a/b" * 8, "x" * 15, "", "é" * 20]:
        with pytest.raises(errors.InvalidRequest) as refused:
            agent.status(bad)
        assert refused.value.code == "invalid_request_id"
        with pytest.raises(errors.InvalidRequest):
            agent.wait(bad, timeout=0.1)


def test_codes_a_caller_handles_differently_get_their_own_classes():
    limited = errors.from_answer(429, "rate_limited", "slow down")
    assert isinstance(limited, errors.RateLimited) and not isinstance(limited,
                                                                      errors.InvalidRequest)
    assert isinstance(errors.from_answer(429, "something_new", "x"), errors.RateLimited)
    # Every code the executor answers with has its class (docs/VERIFYING.md, docs/API.md).
    for code, cls in [("stale_epoch", errors.StaleEpoch), ("wrong_params", errors.WrongParams),
                      ("params_refused", errors.ParamsRefused),
                      ("invalid_token", errors.InvalidToken),
                      ("bad_signature", errors.BadSignature),
                      ("malformed_json", errors.MalformedJson),
                      ("audit_log_diverged", errors.AuditLogDiverged)]:
        assert type(errors.from_answer(400, code, "x")) is cls, code
    # A code's class sits under its base: `except errors.InvalidRequest` still catches them.
    for code in ["params_refused", "malformed_json", "invalid_params", "not_found",
                 "invalid_request"]:
        assert isinstance(errors.from_answer(400, code, "x"), errors.InvalidRequest), code
    assert errors.InvalidRequest.__name__ == "InvalidRequest"
    assert errors.BY_CODE["invalid_request"] is errors.InvalidRequest
    failed = errors.from_answer(500, "action_failed", "exit 1")
    assert isinstance(failed, errors.ActionFailed) and not isinstance(failed,
                                                                     errors.Unavailable)
    assert isinstance(errors.from_answer(503, "hsm_unavailable", "x"), errors.Unavailable)


def test_a_run_that_failed_after_redemption_raises_action_failed_with_its_receipt():
    # The executor's 500 action_failed after the token was redeemed carries the signed
    # receipt of the failed run (exit_code -2): the exception keeps it (outside review).
    import httpx
    from seb_client.client import _answer
    body = {"error": {"code": "action_failed", "message": "the token was redeemed ..."},
            "receipt": {"body": {"exit_code": -2}, "signature": "sig"},
            "outcome_recorded": True}
    with pytest.raises(errors.ActionFailed) as failed:
        _answer(httpx.Response(500, json=body))
    assert failed.value.receipt == body["receipt"]
    assert failed.value.answer["outcome_recorded"] is True
    with pytest.raises(errors.ActionFailed) as plain:
        _answer(httpx.Response(500, json={"error": {"code": "action_failed", "message": "m"}}))
    assert plain.value.receipt is None
