"""The agent's (and approver's) side of the broker's HTTP API, over mutual TLS.

``Client`` pins the broker's root: the TLS handshake must chain to it, and the broker's server
certificate must be issued by the root *directly* and carry serverAuth (an intermediate CA may
hold a certificate for the broker's name that chains to the root just as well;
docs/API.md, Transport). Answers are typed: ``Granted``, ``Pending``, ``Authority``, and one
exception class per error code (``seb_client.errors``).
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import ssl
import time
from dataclasses import dataclass, field
from typing import Any

import httpx
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID

from . import errors
from .jcs import canonicalize
from .verify import SEB_ROLE, _issuable_roles, _role


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


@dataclass(frozen=True)
class Granted:
    """A token was issued."""

    request_id: str
    token: str
    expires_at: int
    request_digest: str


@dataclass(frozen=True)
class Pending:
    """The grant needs approvals; ``Client.wait(request_id)`` waits for them."""

    request_id: str
    request_digest: str
    approvals_required: int
    approval_group: str
    expires_at: int
    approvals: list = field(default_factory=list)


@dataclass(frozen=True)
class Grant:
    """One grant as the broker's decision applies it (``GET /v1/grants``)."""

    index: int
    operation: str
    resource: str
    max_ttl: int
    token_ttl: int
    params: dict
    params_any: bool
    approval: dict | None


@dataclass(frozen=True)
class Authority:
    """What the calling agent may ask for (``GET /v1/grants``)."""

    subject: str
    thumbprint: str
    not_after: int
    chain_not_after: int
    epoch: int
    frozen: bool
    max_token_ttl: int
    bounded_by: list
    grants: list


class Client:
    """A client of the broker at ``broker`` (``https://host:port``) with the pinned root
    certificate ``ca`` (PEM path) and the caller's certificate chain and key (PEM paths)."""

    def __init__(self, broker: str, ca: str, cert: str, key: str, *, timeout: float = 30.0,
                 execute_timeout: float = 600.0) -> None:
        self.broker = broker.rstrip("/")
        self._key_path = key
        self._cert_path = cert
        roots = _pinned_roots(ca)
        # To the broker: only a server certificate one of the pinned roots issued directly
        # (both during a root rotation, docs/OPERATIONS.md), with serverAuth, checked in the
        # handshake, before any request is written.
        self._http = httpx.Client(verify=_pinned_context(ca, cert, key, roots), timeout=timeout)
        # To executors: a server certificate that chains to the root and is an executor's (its
        # role, and every intermediate above it delegated executors), checked in the handshake
        # before the token is sent: a team CA's TLS certificate for the executor's address
        # chains to the root as well.
        executor_context = _executor_context(ca, cert, key)
        # An executor answers once the action has run: up to its longest action timeout (at
        # most an hour) plus its checks. ``execute_timeout`` must cover that.
        self._executors = httpx.Client(
            verify=executor_context,
            timeout=httpx.Timeout(timeout, read=execute_timeout, write=timeout))

    def close(self) -> None:
        self._http.close()
        self._executors.close()

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- agents -------------------------------------------------------------------------

    def grants(self) -> Authority:
        """The calling agent's own grants, certificate expiry, policy epoch and freeze."""
        body = self._call("GET", "/v1/grants")
        return Authority(
            subject=body["subject"], thumbprint=body["x5t#S256"], not_after=body["not_after"],
            chain_not_after=body["chain_not_after"], epoch=body["epoch"], frozen=body["frozen"],
            max_token_ttl=body["max_token_ttl"], bounded_by=list(body["bounded_by"]),
            grants=[Grant(**g) for g in body["grants"]],
        )

    def request(self, operation: str, resource: str, params: dict | None = None,
                justification: str | None = None) -> Granted | Pending:
        """Asks for a token. Returns ``Granted`` or ``Pending``; a refusal raises the
        exception of its code (``errors.OperationNotGranted``, ...)."""
        params = _json_params(params if params is not None else {})
        body: dict[str, Any] = {"operation": operation, "resource": resource, "params": params}
        if justification is not None:
            body["justification"] = justification
        return _execution(self._call("POST", "/v1/executions", body))

    def status(self, request_id: str) -> dict:
        """``GET /v1/executions/{id}`` as it is. A ``request_id`` that is not one (the
        broker's are 16 to 64 characters of ``A-Za-z0-9_-``) is refused before any request
        is made, so that it never steers the path to another route (``../trust``)."""
        if not isinstance(request_id, str) or not _REQUEST_ID.fullmatch(request_id):
            raise errors.InvalidRequest(f"{request_id!r} is not a request id",
                                        code="invalid_request_id")
        return self._call("GET", f"/v1/executions/{request_id}")

    def wait(self, request_id: str, *, timeout: float = 300.0, interval: float = 0.5) -> Granted:
        """Polls a pending request until its token is issued. Raises
        ``errors.RequestNotGranted`` (rejected, expired, denied, failed) or
        ``errors.WaitTimeout``."""
        deadline = time.monotonic() + timeout
        while True:
            body = self.status(request_id)
            state = body.get("status")
            if state == "granted" and body.get("token"):
                return _execution(body)
            if state not in ("pending_approval", "issuing"):
                code = {"rejected": "request_rejected", "expired": "request_expired",
                        "denied": "request_denied",
                        "failed": "issuance_failed"}.get(state, "request_" + str(state))
                raise errors.from_answer(0, code, f"request {request_id} is {state}",
                                         request_id)
            if time.monotonic() >= deadline:
                raise errors.WaitTimeout(f"request {request_id} still {state}",
                                         request_id=request_id)
            time.sleep(interval)

    def execute(self, executor_url: str, token: str, params: dict) -> dict:
        """Presents the token and the exact parameters to an executor (``POST /v1/run``, on
        this client's certificate, which the token is bound to). Returns the executor's answer
        (``status``, ``succeeded``, the signed ``receipt``, ...) when the action succeeded; a
        refusal raises the exception of its code, and an action that ran and failed raises
        ``errors.ActionFailed`` with the answer (and its receipt) attached."""
        url = executor_url.rstrip("/") + "/v1/run"
        params = _json_params(params)
        try:
            response = self._executors.post(url, json={"token": token, "params": params})
        except (httpx.ConnectError, httpx.ConnectTimeout) as e:
            refused = _cause(e, _RefusedServer)
            if refused is not None:
                raise errors.ServerCertificateRefused(str(refused)) from e
            if _cause(e, ssl.SSLError) is not None and not _closed_handshake(e):
                # The executor's certificate does not chain to the root: a configuration
                # error, raised as the TLS stack reports it.
                raise
            raise errors.from_answer(0, "executor_unreachable",
                                     f"cannot reach the executor: {e!r}; the token was not "
                                     "presented") from e
        except httpx.TransportError as e:
            raise errors.from_answer(0, "executor_unreachable",
                                     f"no answer from the executor: {e!r}; it may have acted, "
                                     "and the token is spent if it did: present the same token "
                                     "again to retry (it acts at most once); a new request "
                                     "would get a new token, which could act twice") from e
        answer = _answer(response)
        if not _succeeded(answer):
            body = answer.get("receipt", {}).get("body", {}) if isinstance(
                answer.get("receipt"), dict) else {}
            raise errors.ActionFailed(
                f"the action ran and failed (exit code {body.get('exit_code')!r}, timed out "
                f"{body.get('timed_out')!r}); the token is spent", answer=answer,
                status=response.status_code, request_id=body.get("request_id"))
        return answer

    # -- approvers ----------------------------------------------------------------------

    def pending(self) -> list[dict]:
        """Requests open for this approver's decision, with their exact parameters."""
        return self._call("GET", "/v1/executions?status=pending")["requests"]

    def approve(self, request_id: str, *, reason: str | None = None,
                decision: str = "approve") -> dict:
        """Signs and sends a decision (``approve`` or ``reject``). The request digest is
        recomputed from the request the broker shows, so the approver signs what it saw."""
        if decision not in ("approve", "reject"):
            raise ValueError("decision is approve or reject")
        shown = next((r for r in self.pending() if r["request_id"] == request_id), None)
        if shown is None:
            self._not_open(request_id, decision)
        digest = b64url(hashlib.sha384(canonicalize(
            {"operation": shown["operation"], "resource": shown["resource"],
             "params": shown["params"]}).encode("utf-8")).digest())
        if digest != shown["request_digest"]:
            raise errors.InvalidRequest("the broker's request digest does not match the request "
                                        "it shows", code="digest_mismatch")
        message = "\n".join(["seb-approval-v1", decision, digest,
                             shown["requester"]["x5t#S256"]]).encode("utf-8")
        body: dict[str, Any] = {"decision": decision, "signature": b64url(self._sign(message))}
        if reason is not None:
            body["reason"] = reason
        return self._call("POST", f"/v1/executions/{request_id}/approvals", body)

    def _not_open(self, request_id: str, decision: str) -> None:
        """Raises why a request is not among this approver's pending ones, in the broker's
        words, with nothing signed (as ``seb approve`` does): ``duplicate_approval`` when its
        status lists a decision of this approver, else the broker's answer to an unsigned
        decision (``not_found``, ``request_closed``, ``request_expired``,
        ``wrong_approval_group``, ``self_approval``), all checked before the signature."""
        status = self.status(request_id)
        if status.get("status") == "pending_approval":
            with open(self._cert_path, "rb") as f:
                own = x509.load_pem_x509_certificate(f.read())
            thumbprint = b64url(hashlib.sha256(
                own.public_bytes(serialization.Encoding.DER)).digest())
            mine = next((a for a in status.get("approvals") or []
                         if a.get("x5t#S256") == thumbprint), None)
            if mine is not None:
                raise errors.from_answer(
                    409, "duplicate_approval",
                    f"you decided request {request_id} already ({mine.get('decision')} at "
                    f"{mine.get('at')}); an approver counts once; nothing was signed")
        try:
            self._call("POST", f"/v1/executions/{request_id}/approvals",
                       {"decision": decision, "signature": ""})
        except errors.SebError as e:
            if e.code != "bad_approval_signature":
                raise
        raise errors.InvalidRequest(
            f"request {request_id} is open but not in this approver's pending list (the oldest "
            "500 are listed); nothing was signed", code="request_not_listed")

    def _sign(self, message: bytes) -> bytes:
        with open(self._key_path, "rb") as f:
            key = serialization.load_pem_private_key(f.read(), password=None)
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise ValueError("approver keys are EC P-256 or P-384")
        algorithm = hashes.SHA384() if key.curve.key_size == 384 else hashes.SHA256()
        return key.sign(message, ec.ECDSA(algorithm))

    # -- transport ----------------------------------------------------------------------

    def _call(self, method: str, path: str, body: Any = None) -> Any:
        try:
            response = self._http.request(method, self.broker + path,
                                          json=body if body is not None else None)
        except httpx.ConnectError as e:
            refused = _cause(e, _RefusedServer)
            if refused is not None:
                raise errors.ServerCertificateRefused(str(refused)) from e
            if _closed_handshake(e):
                raise errors.from_answer(0, "broker_unreachable",
                                         f"cannot reach the broker at {self.broker}: {e}; "
                                         f"{_CLOSED_HANDSHAKE}") from e
            if _cause(e, ssl.SSLError) is not None:
                # The broker's certificate does not chain to the pinned root, or the broker
                # refused this client's certificate with an alert: a configuration error,
                # raised as the TLS stack reports it.
                raise
            raise errors.from_answer(0, "broker_unreachable",
                                     f"cannot reach the broker at {self.broker}: {e}") from e
        except httpx.TransportError as e:
            raise errors.from_answer(0, "broker_unreachable",
                                     f"no answer from the broker at {self.broker}: {e!r}") from e
        return _answer(response)


def _json_params(params: Any) -> Any:
    """``params`` if JSON can carry them, else ``errors.InvalidRequest`` (``invalid_params``)
    before anything is sent: NaN and the infinities (which ``json.loads`` accepts, so a model's
    tool call can hold them) and values JSON has no form for."""
    try:
        json.dumps(params, allow_nan=False)
    except (ValueError, TypeError) as e:
        raise errors.from_answer(0, "invalid_params", f"the parameters are not JSON: {e}") from e
    return params


_CLOSED_HANDSHAKE = (
    "the server closed the TLS handshake without saying why: the broker's HSM may be "
    "unavailable (it cannot sign its side of a new handshake then; connections already open "
    "get 503 hsm_unavailable), the broker may be overloaded, or a load balancer may have no "
    "broker behind it. Check the broker's log and its /healthz, and retry")


def _closed_handshake(error: BaseException) -> bool:
    """Whether the server closed the TLS handshake without an alert (an EOF or a reset), as a
    broker does whose HSM cannot sign: the server is unavailable, not misconfigured."""
    if _cause(error, ssl.SSLCertVerificationError) is not None:
        return False
    return any(_cause(error, kind) is not None
               for kind in (ssl.SSLEOFError, ssl.SSLZeroReturnError, ConnectionResetError))


def _cause(error: BaseException, kind: type) -> BaseException | None:
    """The first exception of ``kind`` in ``error``'s chain of causes (itself included): a TLS
    failure (``ssl.SSLError``) or the handshake's own refusal under an HTTP error."""
    cause: BaseException | None = error
    while cause is not None and not isinstance(cause, kind):
        cause = cause.__cause__ or cause.__context__
    return cause


class _RefusedServer(ssl.SSLError):
    """Raised inside the handshake; an OSError, so the HTTP stack closes the connection."""


def _pinned_context(ca: str, cert: str, key: str,
                    roots: list[x509.Certificate]) -> ssl.SSLContext:
    """A TLS context that, after the usual chain and name checks, accepts only a server
    certificate issued directly by one of ``roots`` and carrying serverAuth (docs/API.md, Transport):
    an intermediate CA may hold a certificate for the broker's name that chains to the root
    just as well."""
    context = _roots_context(ca)
    context.load_cert_chain(cert, key)

    class PinnedSocket(ssl.SSLSocket):
        def do_handshake(self, *args: Any, **kwargs: Any) -> None:
            super().do_handshake(*args, **kwargs)
            der = self.getpeercert(True)
            reasons = [_server_certificate_problem(der, root) for root in roots]
            if None not in reasons:
                raise _RefusedServer(reasons[0])

    context.sslsocket_class = PinnedSocket
    return context


def _pinned_roots(ca: str) -> list[x509.Certificate]:
    """The self-signed certificates of the ``ca`` file: the only ones pinned. An intermediate
    in it (the bundle ``/v1/trust`` serves holds them) anchors nothing, as in seb's own
    clients."""
    with open(ca, "rb") as f:
        certs = x509.load_pem_x509_certificates(f.read())
    roots = []
    for c in certs:
        if c.subject != c.issuer:
            continue
        try:
            c.verify_directly_issued_by(c)
        except (ValueError, TypeError, InvalidSignature) as e:
            raise ValueError(f"{ca}: self-issued {c.subject.rfc4514_string()} is not validly "
                             f"self-signed: {e}") from e
        roots.append(c)
    if not roots:
        raise ValueError(f"{ca} holds no self-signed root certificate: give the broker's root "
                         "(trust/root.pem) or the bundle GET /v1/trust serves")
    return roots


def _roots_context(ca: str) -> ssl.SSLContext:
    """A TLS client context that trusts the self-signed certificates of ``ca`` only, and never
    a partial chain (Python 3.13 allows one by default: an intermediate in the file would be
    an anchor then)."""
    pem = "".join(r.public_bytes(serialization.Encoding.PEM).decode("ascii")
                  for r in _pinned_roots(ca))
    context = ssl.create_default_context(cadata=pem)
    context.verify_flags &= ~ssl.VERIFY_X509_PARTIAL_CHAIN
    return context


def _executor_context(ca: str, cert: str, key: str) -> ssl.SSLContext:
    context = _roots_context(ca)
    context.load_cert_chain(cert, key)

    class ExecutorSocket(ssl.SSLSocket):
        def do_handshake(self, *args: Any, **kwargs: Any) -> None:
            super().do_handshake(*args, **kwargs)
            reason = _executor_certificate_problem(_verified_chain(self))
            if reason is not None:
                raise _RefusedServer(reason)

    context.sslsocket_class = ExecutorSocket
    return context


def _verified_chain(sock: ssl.SSLSocket) -> list[bytes]:
    """The chain TLS verified, leaf first, root last (DER). Python 3.13 names it
    ``get_verified_chain``; 3.10 to 3.12 have it on the socket object underneath. Without
    either, only the leaf."""
    for owner in (sock, getattr(sock, "_sslobj", None)):
        get = getattr(owner, "get_verified_chain", None)
        if get is not None:
            chain = get()
            return [c if isinstance(c, bytes) else c.public_bytes(ssl._ssl.ENCODING_DER)
                    for c in chain]
    leaf = sock.getpeercert(True)
    return [leaf] if leaf else []


def _executor_certificate_problem(chain: list[bytes]) -> str | None:
    if not chain:
        return "the executor presented no certificate"
    certs = [x509.load_der_x509_certificate(der) for der in chain]
    kind, _ = _role(certs[0])
    if kind != "executor":
        what = "no seb" if kind is None else ("an " if kind[0] in "aeiou" else "a ") + kind
        return (f"the server's certificate {certs[0].subject.rfc4514_string()} is {what} "
                "certificate, not an executor's")
    # Between the leaf and the root: each intermediate must be delegated executors.
    for ca in certs[1:-1]:
        if "executor" not in _issuable_roles(ca):
            return (f"the executor's certificate was issued under {ca.subject.rfc4514_string()}, "
                    "which may not issue executors")
    return None


def _server_certificate_problem(der: bytes | None, root: x509.Certificate) -> str | None:
    if der is None:
        return "the broker presented no certificate"
    cert = x509.load_der_x509_certificate(der)
    try:
        root.public_key().verify(cert.signature, cert.tbs_certificate_bytes,
                                 ec.ECDSA(cert.signature_hash_algorithm))
    except Exception:
        return "the broker's certificate was not issued directly by the pinned root"
    if cert.issuer != root.subject:
        return "the broker's certificate was not issued directly by the pinned root"
    try:
        eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    except x509.ExtensionNotFound:
        return "the broker's certificate lacks serverAuth"
    if ExtendedKeyUsageOID.SERVER_AUTH not in eku:
        return "the broker's certificate lacks serverAuth"
    try:
        cert.extensions.get_extension_for_oid(SEB_ROLE)
    except x509.ExtensionNotFound:
        return None
    # An executor's certificate may be root-issued with serverAuth too; it carries sebRole.
    return "the server's certificate carries a seb role (an agent's, approver's or executor's), " \
        "not the broker's"



_REQUEST_ID = re.compile(r"[A-Za-z0-9_-]{16,64}")


def _answer(response: httpx.Response) -> Any:
    try:
        body = response.json()
    except ValueError:
        body = None
    if response.status_code >= 400:
        error = body.get("error", {}) if isinstance(body, dict) else {}
        failure = errors.from_answer(response.status_code, error.get("code", "http_error"),
                                     error.get("message", response.text[:200]),
                                     error.get("request_id"))
        # An executor whose action failed after the token was redeemed answers 500
        # action_failed with the signed receipt of the failed run (exit_code -2) beside it.
        if isinstance(failure, errors.ActionFailed) and isinstance(body, dict) \
                and isinstance(body.get("receipt"), dict):
            failure.answer = body
            failure.receipt = body["receipt"]
        raise failure
    if not isinstance(body, dict):
        # Every route this client calls answers a JSON object; anything else is not seb's.
        raise errors.from_answer(response.status_code, "invalid_answer",
                                 f"the answer is not a JSON object (HTTP {response.status_code})")
    return body


def _succeeded(answer: dict) -> bool:
    """Whether an executor's answer says the action succeeded; an executor that does not say
    (the Go example) is read from its signed receipt: exit code 0 and not timed out."""
    succeeded = answer.get("succeeded")
    if isinstance(succeeded, bool):
        return succeeded
    receipt = answer.get("receipt")
    body = receipt.get("body", {}) if isinstance(receipt, dict) else {}
    return body.get("exit_code") == 0 and body.get("timed_out") is not True


def _execution(body: dict) -> Granted | Pending:
    if body.get("status") == "granted":
        return Granted(request_id=body["request_id"], token=body["token"],
                       expires_at=body["expires_at"], request_digest=body["request_digest"])
    if body.get("status") == "pending_approval":
        return Pending(request_id=body["request_id"], request_digest=body["request_digest"],
                       approvals_required=body["approvals_required"],
                       approval_group=body["approval_group"], expires_at=body["expires_at"],
                       approvals=body.get("approvals") or [])
    raise errors.from_answer(0, "request_" + str(body.get("status")),
                             f"unexpected status {body.get('status')!r}", body.get("request_id"))
