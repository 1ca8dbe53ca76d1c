"""Typed errors: one exception class per stable error code the broker, the executor or the
verifier answers with, under a few bases a caller can catch broadly."""

from __future__ import annotations


class SebError(Exception):
    """An error answer with its stable snake_case ``code`` and HTTP ``status`` (0 offline)."""

    code = "error"

    def __init__(self, message: str = "", *, code: str | None = None, status: int = 0,
                 request_id: str | None = None) -> None:
        super().__init__(f"{code or self.code}: {message}" if message else (code or self.code))
        if code is not None:
            self.code = code
        self.message = message
        self.status = status
        self.request_id = request_id


class Denied(SebError):
    """The broker refused the request (403): the agent asked for more than it holds, or its
    certificate is not acceptable."""


class Unavailable(SebError):
    """The broker failed closed (503): no token was issued. Retrying later may succeed."""


class InvalidRequest(SebError):
    """The request was malformed (400/404/409/413/...)."""


class RateLimited(SebError):
    """Too many requests from this certificate (429): nothing was decided; retry after a
    pause."""

    code = "rate_limited"


class ActionFailed(SebError):
    """The executor ran the action and it failed. The token is spent: do not retry it."""

    code = "action_failed"


class RequestNotGranted(SebError):
    """A request that was waited for ended without a token (rejected, expired, failed)."""


class WaitTimeout(SebError):
    """``Client.wait`` gave up before the request was decided."""

    code = "wait_timeout"


class ServerCertificateRefused(SebError):
    """The broker's TLS certificate is not one the pinned root issued directly with
    serverAuth."""

    code = "untrusted_server_certificate"


class VerifyError(SebError):
    """An executor-side verification failure, with the verifier's code (docs/VERIFYING.md)."""


_DENY_CODES = [
    "operation_not_granted", "resource_not_granted", "param_constraint_violated",
    "certificate_expired", "certificate_not_yet_valid", "certificate_revoked",
    "bad_certificate", "wrong_role", "role_not_delegated", "invalid_grants_extension",
    "no_grants", "grant_chain_escalation", "invalid_operation", "invalid_resource",
    "agent_certificate_revoked", "wrong_approval_group", "self_approval",
    "approver_out_of_scope", "approver_certificate_expiring",
]
_UNAVAILABLE_CODES = [
    "hsm_unavailable", "audit_unavailable", "store_unavailable", "issuance_frozen",
    "attestation_failed", "timeout", "broker_unavailable", "broker_unreachable",
    "executor_unreachable",
]
_NOT_GRANTED_CODES = ["request_rejected", "request_expired", "request_denied", "issuance_failed"]


def _class_name(code: str) -> str:
    return "".join(part.capitalize() for part in code.split("_"))


def _make(code: str, base: type) -> type:
    return type(_class_name(code), (base,), {"code": code, "__doc__": f"``{code}``"})


BY_CODE: dict[str, type] = {}
for _code in _DENY_CODES:
    BY_CODE[_code] = _make(_code, Denied)
for _code in _UNAVAILABLE_CODES:
    BY_CODE[_code] = _make(_code, Unavailable)
for _code in _NOT_GRANTED_CODES:
    BY_CODE[_code] = _make(_code, RequestNotGranted)

BY_CODE["rate_limited"] = RateLimited
BY_CODE["action_failed"] = ActionFailed

globals().update({cls.__name__: cls for cls in BY_CODE.values()})


def from_answer(status: int, code: str, message: str, request_id: str | None = None) -> SebError:
    """The exception for an error answer: the class of its code, else one by status."""
    cls = BY_CODE.get(code)
    if cls is None:
        cls = (Denied if status == 403 else RateLimited if status == 429
               else Unavailable if status >= 500 else InvalidRequest)
    return cls(message, code=code, status=status, request_id=request_id)
