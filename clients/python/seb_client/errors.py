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
    """The request cannot be served as sent (400/404/405/408/409/413/415): malformed, too
    large, unknown, or in conflict with the request's state."""


class RateLimited(SebError):
    """Too many requests from this certificate (429): nothing was decided; retry after a
    pause."""

    code = "rate_limited"


class ActionFailed(SebError):
    """The executor ran the action and it failed, or could not start it, or its result is
    unknown. The token is spent: do not retry it. ``answer`` is the executor's answer when it
    gave one (``succeeded`` false, with the signed ``receipt``, ``stdout`` and ``stderr``; or,
    for a run that failed after the redemption, the error with the signed ``receipt`` whose
    ``exit_code`` is -2 and ``outcome_recorded``), else None."""

    code = "action_failed"

    def __init__(self, message: str = "", *, answer: dict | None = None, **kwargs) -> None:
        super().__init__(message, **kwargs)
        self.answer = answer
        self.receipt = answer.get("receipt") if isinstance(answer, dict) else None


class TokenRefused(Denied):
    """The executor refused the token before acting (403, or 409 for a token already
    redeemed): it did not verify here (signature, chain, lifetime, epoch, action, parameters,
    agent, approvals) or the broker refused its redemption. Nothing ran."""


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
# What an executor answers when a token does not verify or cannot be redeemed: the offline
# verifier's codes (docs/VERIFYING.md), the executor's own and the broker's redemption codes.
_TOKEN_CODES = [
    "token_already_redeemed", "invalid_token", "stale_epoch", "wrong_params",
    "wrong_certificate", "wrong_operation", "wrong_resource", "wrong_issuer",
    "wrong_token_type", "wrong_key_purpose", "bad_signature", "non_canonical_signature",
    "malformed_token", "token_too_large", "token_expired", "token_not_yet_valid",
    "invalid_claims", "invalid_lifetime", "invalid_approvals",
    "invalid_authorization_details", "invalid_trust_bundle", "unknown_key",
    "unsupported_algorithm", "algorithm_key_mismatch", "not_a_token_certificate",
    "not_issued_by_root", "untrusted_token_certificate", "approval_quorum_not_met",
    "duplicate_approver", "unknown_approver", "untrusted_approver", "not_an_approver",
    "attestation_stale", "no_action", "not_redeemed_by_caller",
]
# Requests that cannot be served as sent (4xx other than 403 and 429).
_REQUEST_CODES = [
    "malformed_json", "invalid_params", "invalid_query", "invalid_nonce", "invalid_receipt",
    "body_too_large", "unsupported_encoding", "request_timeout", "not_found",
    "method_not_allowed", "params_refused", "bad_approval_signature", "duplicate_approval",
    "request_closed", "outcome_already_recorded", "unknown_crl_issuer", "crl_issuer_invalid",
    "attestation_not_configured",
]
_MORE_UNAVAILABLE_CODES = [
    "audit_log_diverged", "attestation_busy", "not_ready", "internal_error",
]


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
for _code in _TOKEN_CODES:
    BY_CODE.setdefault(_code, _make(_code, TokenRefused))
for _code in _REQUEST_CODES:
    BY_CODE.setdefault(_code, _make(_code, InvalidRequest))
for _code in _MORE_UNAVAILABLE_CODES:
    BY_CODE.setdefault(_code, _make(_code, Unavailable))

BY_CODE["rate_limited"] = RateLimited
BY_CODE["action_failed"] = ActionFailed
BY_CODE["invalid_request"] = InvalidRequest

# Each code's class by name (``errors.TokenAlreadyRedeemed``); never in place of a base class
# of the same name.
globals().update({cls.__name__: cls for cls in BY_CODE.values()
                  if cls.__name__ not in globals()})


def from_answer(status: int, code: str, message: str, request_id: str | None = None) -> SebError:
    """The exception for an error answer: the class of its code, else one by status."""
    cls = BY_CODE.get(code)
    if cls is None:
        cls = (Denied if status == 403 else RateLimited if status == 429
               else Unavailable if status >= 500 else InvalidRequest)
    return cls(message, code=code, status=status, request_id=request_id)
