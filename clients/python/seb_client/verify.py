"""Executor-side verification of seb execution tokens, independent of the broker's code.

``verify_token`` performs every check docs/VERIFYING.md section 4 lists, in its order, and
raises ``VerifyError`` with the same stable codes as seb's Rust verifier. It is written against
the document, with ``cryptography`` for X.509 and ECDSA and this package's own RFC 8785
canonicalisation (``seb_client.jcs``), so that an executor in Python does not rest on the
broker's implementation. Act only on the parameters you passed in, after it returned, and
redeem the token at the broker before acting (single use is the broker's to enforce).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import re
import time
from typing import Any, Iterable

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from cryptography.x509.oid import ExtensionOID

from .errors import VerifyError
from .jcs import CanonicalError, params_digest, parse_strict, request_digest

ARC = "1.2.840.113556.1.8000.2554.11087.30221.20830.16501.40880.2628193.9833871"
SEB_GRANTS = x509.ObjectIdentifier(ARC + ".1")
SEB_ROLE = x509.ObjectIdentifier(ARC + ".2")
SEB_ISSUABLE_ROLES = x509.ObjectIdentifier(ARC + ".3")
PURPOSE_TOKEN = x509.ObjectIdentifier(ARC + ".4.1")
PURPOSE_AUDIT = x509.ObjectIdentifier(ARC + ".4.2")
PURPOSE_RECEIPT = x509.ObjectIdentifier(ARC + ".4.3")

MAX_TOKEN_LEN = 16 * 1024
MAX_BUNDLE_BYTES = 4 * 1024 * 1024
MAX_BUNDLE_CERTS = 64
MAX_PATH_LEN = 8
LEEWAY = 30
MAX_LIFETIME = 3600
TOKEN_TYPE = "seb-exec+jwt"
DETAIL_TYPE = "seb_execution"

_CURVES = {"ES384": (ec.SECP384R1, hashes.SHA384, 48), "ES256": (ec.SECP256R1, hashes.SHA256, 32)}
_ORDERS = {
    "secp384r1": int("ffffffffffffffffffffffffffffffffffffffffffffffffc7634d81f4372ddf"
                     "581a0db248b0a77aecec196accc52973", 16),
    "secp256r1": int("ffffffff00000000ffffffffffffffffbce6faada7179e84f3b9cac2fc632551", 16),
}
_CLAIMS = {"iss", "sub", "jti", "iat", "nbf", "exp", "cnf", "authorization_details",
           "params_digest", "att", "audit", "epoch", "approvals"}
_OPTIONAL_CLAIMS = {"att", "audit", "params_digest"}
_PROCESSED_EXTENSIONS = {
    ExtensionOID.BASIC_CONSTRAINTS, ExtensionOID.KEY_USAGE, ExtensionOID.EXTENDED_KEY_USAGE,
    ExtensionOID.SUBJECT_ALTERNATIVE_NAME, ExtensionOID.SUBJECT_KEY_IDENTIFIER,
    ExtensionOID.AUTHORITY_KEY_IDENTIFIER, SEB_GRANTS, SEB_ROLE, SEB_ISSUABLE_ROLES,
}
_ROLE_KINDS = {0: "agent", 1: "approver", 2: "executor", 3: "broker"}


def fail(code: str, message: str) -> VerifyError:
    return VerifyError(message, code=code)


# -- the trust bundle -------------------------------------------------------------------------


class TrustBundle:
    """The pinned PEM bundle (``GET /v1/trust``): self-signed roots and everything else."""

    def __init__(self, pem: bytes | str) -> None:
        if isinstance(pem, str):
            pem = pem.encode("utf-8")
        if len(pem) > MAX_BUNDLE_BYTES:
            raise fail("invalid_trust_bundle", "the bundle is larger than 4 MiB")
        try:
            certs = _load_pems(pem)
        except ValueError as e:
            raise fail("invalid_trust_bundle", f"unreadable certificate: {e}") from e
        if len(certs) > MAX_BUNDLE_CERTS:
            raise fail("invalid_trust_bundle", "more than 64 certificates")
        self.roots: list[x509.Certificate] = []
        self.others: list[x509.Certificate] = []
        for cert in certs:
            if cert.issuer == cert.subject:
                if not _signed_by(cert, cert):
                    raise fail("invalid_trust_bundle",
                               f"{cert.subject.rfc4514_string()} is self-issued but its "
                               "self-signature fails")
                self.roots.append(cert)
            else:
                self.others.append(cert)
        if not self.roots:
            raise fail("invalid_trust_bundle", "no self-signed root")

    @classmethod
    def from_file(cls, path: str) -> "TrustBundle":
        with open(path, "rb") as f:
            return cls(f.read())


def _load_pems(pem: bytes) -> list[x509.Certificate]:
    blocks = re.findall(rb"-----BEGIN CERTIFICATE-----.*?-----END CERTIFICATE-----", pem, re.S)
    return [x509.load_pem_x509_certificate(b) for b in blocks]


def thumbprint(cert: x509.Certificate) -> str:
    """base64url SHA-256 of the certificate's DER: ``kid``, ``cnf.x5t#S256``."""
    return _b64(hashlib.sha256(cert.public_bytes(Encoding.DER)).digest())


# -- the entry point --------------------------------------------------------------------------


def verify_token(token: str, trust_bundle: TrustBundle | bytes | str, operation: str,
                 resource: str, params: str | bytes | dict, agent_cert: Any, *,
                 now: float | None = None, issuer: str | None = None, min_epoch: int = 0,
                 approvers: Iterable[x509.Certificate] | bytes | str | None = None,
                 leeway: int = LEEWAY, max_lifetime: int = MAX_LIFETIME) -> dict:
    """Verifies ``token`` for exactly this action and returns its claims.

    ``params`` is best the raw JSON text you will act on (parsed strictly: duplicate keys,
    deep nesting and unsafe numbers are refused); a dict is canonicalised as it is.
    ``agent_cert`` is the certificate the agent presented to you (an ``x509.Certificate``,
    PEM or DER bytes), or the string ``"not_presented"``, chosen explicitly, when the token
    reached you without one. ``approvers`` holds the approvers' certificates (and CAs above
    them) for tokens issued after approvals.
    """
    if not isinstance(trust_bundle, TrustBundle):
        trust_bundle = TrustBundle(trust_bundle)
    at = int(time.time() if now is None else now)
    binding = _binding(agent_cert)
    try:
        params_value = parse_strict(params) if isinstance(params, (str, bytes)) else params
        if not isinstance(params_value, dict):
            raise CanonicalError("params must be a JSON object")
        digest = _b64(params_digest(params_value))
    except CanonicalError as e:
        raise fail("invalid_params", str(e)) from e

    header, claims, signer = _decode_verified(token, trust_bundle, at, leeway, max_lifetime,
                                              min_epoch)
    detail = claims["authorization_details"][0]

    # 6. Expectations, each compared exactly.
    if issuer is not None and claims["iss"] != issuer:
        raise fail("wrong_issuer", f"iss {claims['iss']!r}, expected {issuer!r}")
    if detail["operation"] != operation:
        raise fail("wrong_operation", f"token for {detail['operation']!r}, not {operation!r}")
    if detail["resource"] != resource:
        raise fail("wrong_resource", f"token for {detail['resource']!r}, not {resource!r}")
    if detail["params_digest"] != digest:
        raise fail("wrong_params", "the parameters' digest differs from params_digest")
    # What approvers signed is the request digest: it must be this action's, or approvals
    # given for another request of the same agent could be carried into this token.
    if detail["request_digest"] != _b64(request_digest(operation, resource, params_value)):
        raise fail("invalid_authorization_details",
                   "request_digest is not the digest of this operation, resource and parameters")
    if binding is not None and claims["cnf"]["x5t#S256"] != thumbprint(binding):
        raise fail("wrong_certificate", "the token is bound to another agent certificate")

    # 7. Approvals.
    _check_approvals(claims, detail, trust_bundle, _approver_certs(approvers), binding,
                     params_value)
    return claims


def _binding(agent_cert: Any) -> x509.Certificate | None:
    if agent_cert == "not_presented":
        return None
    if isinstance(agent_cert, x509.Certificate):
        return agent_cert
    if isinstance(agent_cert, str):
        agent_cert = agent_cert.encode("utf-8")
    if isinstance(agent_cert, (bytes, bytearray)):
        data = bytes(agent_cert)
        try:
            if b"-----BEGIN" in data:
                return _load_pems(data)[0]
            return x509.load_der_x509_certificate(data)
        except (ValueError, IndexError) as e:
            raise fail("invalid_input", f"unreadable agent certificate: {e}") from e
    # A coded refusal like every other, so that an executor catching VerifyError refuses the
    # request instead of failing with an unexpected exception.
    raise fail("invalid_input",
               "agent_cert must be a certificate, PEM/DER bytes or 'not_presented' "
               f"(got {type(agent_cert).__name__})")


# -- steps 1 to 5 -----------------------------------------------------------------------------


def _decode_verified(token: str, trust: TrustBundle, now: int, leeway: int, max_lifetime: int,
                     min_epoch: int) -> tuple[dict, dict, x509.Certificate]:
    # 1. Size and shape.
    if not isinstance(token, str):
        raise fail("malformed_token", "the token is not text")
    if len(token) > MAX_TOKEN_LEN:
        raise fail("token_too_large", f"{len(token)} bytes, more than {MAX_TOKEN_LEN}")
    parts = token.split(".")
    if len(parts) != 3:
        raise fail("malformed_token", f"{len(parts)} parts, expected 3")
    header_bytes, claims_bytes, signature = (_strict_b64(p) for p in parts)

    # 2. Header: exactly alg, typ, kid.
    header = _json_object(header_bytes, "malformed_token", "header")
    if set(header) != {"alg", "typ", "kid"} or not all(isinstance(v, str) for v in header.values()):
        raise fail("malformed_token", "the header is not exactly {alg, typ, kid} as strings")
    if header["alg"] not in _CURVES:
        raise fail("unsupported_algorithm", f"alg {header['alg']!r}")
    if header["typ"] != TOKEN_TYPE:
        raise fail("wrong_token_type", f"typ {header['typ']!r}")

    # 3. The signing certificate.
    signer = _token_certificate(header["kid"], trust, now)

    # 4. Signature: alg fits the curve, raw r||s of the curve's size, verifies, low-S.
    key = signer.public_key()
    curve, hash_cls, size = _CURVES[header["alg"]]
    if not isinstance(key, ec.EllipticCurvePublicKey) or not isinstance(key.curve, curve):
        raise fail("algorithm_key_mismatch", f"{header['alg']} on a key of another curve")
    if len(signature) != 2 * size:
        raise fail("bad_signature", f"{len(signature)} signature bytes, expected {2 * size}")
    r = int.from_bytes(signature[:size], "big")
    s = int.from_bytes(signature[size:], "big")
    signing_input = (parts[0] + "." + parts[1]).encode("ascii")
    try:
        key.verify(encode_dss_signature(r, s), signing_input, ec.ECDSA(hash_cls()))
    except (InvalidSignature, ValueError) as e:
        raise fail("bad_signature", "the signature does not verify") from e
    if s > _ORDERS[key.curve.name] // 2:
        raise fail("non_canonical_signature", "high-S signature (r, n - s)")

    # 5. Claims, now known to come from the token key.
    claims = _json_object(claims_bytes, "invalid_claims", "claims")
    _check_claim_types(claims)
    if claims["exp"] <= claims["nbf"]:
        raise fail("invalid_lifetime", "exp is not after nbf")
    if claims["iat"] > claims["exp"]:
        raise fail("invalid_lifetime", "iat is after exp")
    if claims["exp"] - claims["nbf"] > max_lifetime:
        raise fail("invalid_lifetime", f"lifetime above {max_lifetime} s")
    if claims["iat"] > now + leeway:
        raise fail("invalid_lifetime", "issued in the future")
    if claims["nbf"] > now + leeway:
        raise fail("token_not_yet_valid", f"nbf {claims['nbf']}, now {now}")
    if now >= claims["exp"]:
        raise fail("token_expired", f"exp {claims['exp']}, now {now}")
    if claims["epoch"] < min_epoch:
        raise fail("stale_epoch", f"epoch {claims['epoch']} below {min_epoch}")
    details = claims["authorization_details"]
    if len(details) != 1 or details[0].get("type") != DETAIL_TYPE:
        raise fail("invalid_authorization_details",
                   "not exactly one entry of type seb_execution")
    return header, claims, signer


def _strict_b64(text: str) -> bytes:
    if not text or not re.fullmatch(r"[A-Za-z0-9_-]+", text) or len(text) % 4 == 1:
        raise fail("malformed_token", "a part is not strict base64url")
    try:
        data = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError) as e:
        raise fail("malformed_token", "a part is not base64url") from e
    if _b64(data) != text:
        raise fail("malformed_token", "a part is not the canonical base64url encoding")
    return data


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _json_object(data: bytes, code: str, what: str) -> dict:
    try:
        value = parse_strict(data)
    except CanonicalError as e:
        raise fail(code, f"{what}: {e}") from e
    if not isinstance(value, dict):
        raise fail(code, f"{what} is not a JSON object")
    return value


def _is_uint(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= 0


def _object_of(value: Any, members: dict) -> bool:
    """An optional claim: absent (or null), or an object of exactly these members, each a
    string or an unsigned integer, as seb's own verifier reads it."""
    if value is None:
        return True
    return (isinstance(value, dict) and set(value) == set(members)
            and all(_is_uint(value[k]) if t is int else isinstance(value[k], t)
                    for k, t in members.items()))


def _check_claim_types(c: dict) -> None:
    keys = set(c)
    if not (_CLAIMS - _OPTIONAL_CLAIMS) <= keys <= _CLAIMS:
        raise fail("invalid_claims", f"claims {sorted(keys ^ _CLAIMS)} missing or unknown")
    ok = (all(isinstance(c[k], str) for k in ("iss", "sub", "jti"))
          and all(_is_uint(c[k]) for k in ("iat", "nbf", "exp", "epoch"))
          and isinstance(c["cnf"], dict) and set(c["cnf"]) == {"x5t#S256"}
          and isinstance(c["cnf"]["x5t#S256"], str)
          and isinstance(c["authorization_details"], list)
          and isinstance(c["approvals"], list)
          and _object_of(c.get("att"), {"pcr_digest": str, "time": int})
          and _object_of(c.get("audit"), {"index": int, "leaf_hash": str}))
    if ok:
        for d in c["authorization_details"]:
            required = {"type", "operation", "resource", "params_digest", "request_digest",
                        "approvals"}
            ok = ok and isinstance(d, dict) and required <= set(d) <= required | {"approval_group"}
            ok = ok and all(isinstance(d[k], str) for k in required - {"approvals"})
            ok = ok and _is_uint(d["approvals"])
            ok = ok and isinstance(d.get("approval_group", ""), str)
        for a in c["approvals"]:
            ok = ok and isinstance(a, dict) and set(a) == {"x5t#S256", "sig"}
            ok = ok and all(isinstance(v, str) for v in a.values())
        ok = ok and isinstance(c.get("params_digest", ""), str)
    if not ok:
        raise fail("invalid_claims", "a claim is missing, unknown or of the wrong type")
    # The top-level copy of the digest must name the same parameters as the detail's.
    details = c["authorization_details"]
    if "params_digest" in c and len(details) == 1 and c["params_digest"] != details[0]["params_digest"]:
        raise fail("invalid_claims", "params_digest differs from authorization_details[0]")


# -- certificates -----------------------------------------------------------------------------


def _token_certificate(kid: str, trust: TrustBundle, now: int) -> x509.Certificate:
    signer = next((c for c in trust.others if thumbprint(c) == kid), None)
    if signer is None:
        raise fail("unknown_key", f"no non-root certificate in the bundle has kid {kid!r}")
    path = _path_to_root(signer, trust.others, trust.roots, "untrusted_token_certificate")
    for cert in path:
        _check_validity(cert, now, "certificate")
    if len(path) != 2:
        raise fail("not_issued_by_root", "an intermediate CA issued the token certificate")
    if _is_ca(signer) or not _has_digital_signature(signer) or _ext(signer, SEB_ROLE) \
            or _ext(signer, SEB_GRANTS):
        raise fail("not_a_token_certificate",
                   f"{signer.subject.rfc4514_string()} is not a token signing certificate")
    eku = _ext(signer, ExtensionOID.EXTENDED_KEY_USAGE)
    if eku is None or list(eku.value) != [PURPOSE_TOKEN]:
        raise fail("wrong_key_purpose",
                   "the extended key usage is not exactly the token key purpose")
    return signer


def _path_to_root(leaf: x509.Certificate, pool: list[x509.Certificate],
                  roots: list[x509.Certificate], code: str) -> list[x509.Certificate]:
    """The path leaf .. root (root last), each link's signature and CA rules checked."""
    path = [leaf]
    _check_critical(leaf, code)
    while len(path) <= MAX_PATH_LEN:
        child = path[-1]
        below = len(path) - 1  # intermediates between this issuer and the leaf
        root = next((r for r in roots if r.subject == child.issuer and _signed_by(child, r)), None)
        if root is not None:
            _check_issuer(root, below, code)
            return path + [root]
        issuer = next((c for c in pool if c.subject == child.issuer and c not in path
                       and _signed_by(child, c)), None)
        if issuer is None:
            raise fail(code, f"unknown_ca: no issuer for {child.subject.rfc4514_string()}")
        _check_critical(issuer, code)
        _check_issuer(issuer, below, code)
        path.append(issuer)
    raise fail(code, "path_too_long")


def _check_issuer(issuer: x509.Certificate, below: int, code: str) -> None:
    bc = _ext(issuer, ExtensionOID.BASIC_CONSTRAINTS)
    if bc is None or not bc.value.ca:
        raise fail(code, f"not_a_ca: {issuer.subject.rfc4514_string()}")
    if bc.value.path_length is not None and below > bc.value.path_length:
        raise fail(code, f"path_length_exceeded: {issuer.subject.rfc4514_string()}")
    ku = _ext(issuer, ExtensionOID.KEY_USAGE)
    if ku is None or not ku.value.key_cert_sign:
        raise fail(code, f"not_a_ca: {issuer.subject.rfc4514_string()} lacks keyCertSign")


def _check_critical(cert: x509.Certificate, code: str) -> None:
    for ext in cert.extensions:
        if ext.critical and ext.oid not in _PROCESSED_EXTENSIONS:
            raise fail(code, f"unknown_critical_extension {ext.oid.dotted_string}")


def _check_validity(cert: x509.Certificate, at: int, what: str) -> None:
    if at < int(cert.not_valid_before_utc.timestamp()):
        raise fail(f"{what}_not_yet_valid", f"{cert.subject.rfc4514_string()} not valid yet")
    if at > int(cert.not_valid_after_utc.timestamp()):
        raise fail(f"{what}_expired", f"{cert.subject.rfc4514_string()} has expired")


def _signed_by(cert: x509.Certificate, issuer: x509.Certificate) -> bool:
    key = issuer.public_key()
    if not isinstance(key, ec.EllipticCurvePublicKey) or cert.signature_hash_algorithm is None:
        return False
    try:
        key.verify(cert.signature, cert.tbs_certificate_bytes,
                   ec.ECDSA(cert.signature_hash_algorithm))
        return True
    except InvalidSignature:
        return False


def _ext(cert: x509.Certificate, oid: x509.ObjectIdentifier) -> x509.Extension | None:
    try:
        return cert.extensions.get_extension_for_oid(oid)
    except x509.ExtensionNotFound:
        return None


def _is_ca(cert: x509.Certificate) -> bool:
    bc = _ext(cert, ExtensionOID.BASIC_CONSTRAINTS)
    return bc is not None and bc.value.ca


def _has_digital_signature(cert: x509.Certificate) -> bool:
    ku = _ext(cert, ExtensionOID.KEY_USAGE)
    return ku is not None and ku.value.digital_signature


def _spki(cert: x509.Certificate) -> bytes:
    return cert.public_key().public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)


# -- step 7: approvals ------------------------------------------------------------------------


def _approver_certs(approvers: Any) -> list[x509.Certificate]:
    if approvers is None:
        return []
    if isinstance(approvers, str):
        approvers = approvers.encode("utf-8")
    if isinstance(approvers, (bytes, bytearray)):
        try:
            return _load_pems(bytes(approvers))
        except ValueError as e:
            raise fail("invalid_input", f"unreadable approver certificate: {e}") from e
    return list(approvers)


def _check_approvals(claims: dict, detail: dict, trust: TrustBundle,
                     approvers: list[x509.Certificate], agent: x509.Certificate | None,
                     params: dict) -> None:
    required = detail["approvals"]
    entries = claims["approvals"]
    group = detail.get("approval_group")
    rule = grant_rule(agent, detail["operation"], detail["resource"], params) \
        if agent is not None else None
    if rule is not None:
        if required < rule[0]:
            raise fail("approval_quorum_not_met",
                       f"the token requires {required} approvals, the agent's grant {rule[0]}")
        if group != rule[1]:
            raise fail("invalid_approvals",
                       "the token names another approver group than the agent's grant")
    if required == 0:
        if entries or group is not None:
            raise fail("invalid_approvals", "approvals in a token that needed none")
        return
    if group is None:
        raise fail("invalid_approvals", "a required count without approval_group")
    message = "\n".join(["seb-approval-v1", "approve", detail["request_digest"],
                         claims["cnf"]["x5t#S256"]]).encode("utf-8")
    iat = claims["iat"]
    pool = [c for c in approvers if _is_ca(c)] + trust.others
    seen_certs: set[str] = set()
    seen_subjects: set[str] = set()
    seen_keys: set[bytes] = set()
    valid = 0
    for entry in entries:
        cert = next((c for c in approvers if thumbprint(c) == entry["x5t#S256"]), None)
        if cert is None:
            raise fail("unknown_approver", f"no approver certificate {entry['x5t#S256']}")
        path = _path_to_root(cert, pool, trust.roots, "untrusted_approver")
        for c in path:
            try:
                _check_validity(c, iat, "certificate")
            except VerifyError as e:
                raise fail("untrusted_approver", e.message) from e
        kind, groups = _role(cert)
        if kind != "approver":
            raise fail("not_an_approver", f"{cert.subject.rfc4514_string()} is not an approver")
        for ca in path[1:-1]:
            if "approver" not in _issuable_roles(ca):
                raise fail("role_not_delegated",
                           f"{ca.subject.rfc4514_string()} may not issue approvers")
        if group not in groups:
            raise fail("wrong_approval_group", f"{cert.subject.rfc4514_string()} not in {group}")
        subject = cert.subject.rfc4514_string()
        key = _spki(cert)
        same_as_agent = isinstance(claims.get("sub"), str) and \
            _name_key(subject) == _name_key(claims["sub"])
        if entry["x5t#S256"] == claims["cnf"]["x5t#S256"] or same_as_agent \
                or (agent is not None and key == _spki(agent)):
            raise fail("self_approval", f"{subject} is the agent")
        if entry["x5t#S256"] in seen_certs or str(_name_key(subject)) in seen_subjects \
                or key in seen_keys:
            raise fail("duplicate_approver", f"{subject} appears twice")
        seen_certs.add(entry["x5t#S256"])
        seen_subjects.add(str(_name_key(subject)))
        seen_keys.add(key)
        public = cert.public_key()
        algorithm = hashes.SHA384() if public.curve.key_size == 384 else hashes.SHA256()
        try:
            public.verify(_strict_b64(entry["sig"]), message, ec.ECDSA(algorithm))
        except (InvalidSignature, ValueError, VerifyError) as e:
            raise fail("bad_approval_signature", f"{subject}'s signature does not verify") from e
        valid += 1
    if valid < required:
        raise fail("approval_quorum_not_met", f"{valid} valid approvals, {required} required")


def _name_key(name: str) -> list:
    """A subject (RFC 4514) as the broker compares approvers (seb::cert::same_name): every
    attribute as (type, value), sorted, so that order and grouping do not count; types by
    name or OID alike; `#hex` values decoded from their DER string type; escapes undone;
    values lower-cased with spaces at either end dropped and runs of them collapsed.
    Known answers shared with the broker: tests/data/same_names.json."""
    key = []
    kind, raw, in_value, hex_form, first = "", bytearray(), False, False, True
    i, n = 0, len(name)
    while True:
        c = name[i] if i < n else None
        if c is None or c in ",+":
            text = raw.decode("utf-8", "replace")
            value = text
            if hex_form:
                value = _der_string(text[1:])
                if value is None:
                    value = text.lower()
            if kind.strip() or value:
                key.append((_attribute_type(kind), " ".join(value.lower().split())))
            if c is None:
                break
            kind, raw, in_value, hex_form, first = "", bytearray(), False, False, True
            i += 1
            continue
        if not in_value:
            if c == "=":
                in_value = True
            else:
                kind += c
            i += 1
            continue
        if first and c == "#":
            hex_form = True
        first = False
        if c == "\\":
            pair = name[i + 1:i + 3]
            if len(pair) == 2 and all(h in "0123456789abcdefABCDEF" for h in pair):
                raw.append(int(pair, 16))
                i += 3
            elif i + 1 < n:
                raw.extend(name[i + 1].encode())
                i += 2
            else:
                i += 1
            continue
        raw.extend(c.encode("utf-8", "surrogatepass"))
        i += 1
    return sorted(key)


_ATTRIBUTE_TYPES = {  # the same table as seb::cert::name::ATTRIBUTE_TYPES
    "2.5.4.3": ("cn", "commonname"),
    "2.5.4.4": ("sn", "surname"),
    "2.5.4.5": ("serialnumber",),
    "2.5.4.6": ("c", "countryname"),
    "2.5.4.7": ("l", "localityname"),
    "2.5.4.8": ("st", "s", "stateorprovincename"),
    "2.5.4.9": ("street", "streetaddress"),
    "2.5.4.10": ("o", "organizationname"),
    "2.5.4.11": ("ou", "organizationalunitname"),
    "2.5.4.12": ("title",),
    "2.5.4.13": ("description",),
    "2.5.4.15": ("businesscategory",),
    "2.5.4.16": ("postaladdress",),
    "2.5.4.17": ("postalcode",),
    "2.5.4.18": ("postofficebox",),
    "2.5.4.20": ("telephonenumber",),
    "2.5.4.41": ("name",),
    "2.5.4.42": ("givenname", "gn"),
    "2.5.4.43": ("initials",),
    "2.5.4.44": ("generationqualifier",),
    "2.5.4.45": ("x500uniqueidentifier",),
    "2.5.4.46": ("dnqualifier",),
    "2.5.4.51": ("houseidentifier",),
    "2.5.4.54": ("dmdname",),
    "2.5.4.65": ("pseudonym",),
    "2.5.4.72": ("role", "id-at-role"),
    "0.9.2342.19200300.100.1.1": ("uid", "userid"),
    "0.9.2342.19200300.100.1.25": ("dc", "domaincomponent"),
    "1.2.840.113549.1.9.1": ("emailaddress", "email", "pkcs-9-at-emailaddress"),
}
_TYPE_BY_NAME = {name: oid for oid, names in _ATTRIBUTE_TYPES.items() for name in names}


def _attribute_type(kind: str) -> str:
    kind = kind.strip().lower()
    kind = kind[4:] if kind.startswith("oid.") else kind
    return _TYPE_BY_NAME.get(kind, kind)


def _der_string(hex_text: str):
    """The text of a DER string value given as hex, or None."""
    try:
        data = bytes.fromhex(hex_text)
        tag, first, rest = data[0], data[1], data[2:]
    except (ValueError, IndexError):
        return None
    if first < 0x80:
        length, rest = first, rest
    elif first == 0x81 and rest:
        length, rest = rest[0], rest[1:]
    elif first == 0x82 and len(rest) >= 2:
        length, rest = int.from_bytes(rest[:2], "big"), rest[2:]
    else:
        return None
    if len(rest) < length:
        return None
    content = rest[:length]
    try:
        if tag in (0x0C, 0x12, 0x13, 0x16, 0x1A):
            return content.decode("utf-8")
        if tag == 0x14:
            return content.decode("latin-1")
        if tag == 0x1E and len(content) % 2 == 0:
            return content.decode("utf-16-be")
        if tag == 0x1C and len(content) % 4 == 0:
            return content.decode("utf-32-be")
    except UnicodeDecodeError:
        return None
    return None


# A small strict DER reader for seb's role extensions (docs/GRANTS.md section 2).


def _tlv(data: bytes, pos: int) -> tuple[int, bytes, int]:
    if pos + 2 > len(data):
        raise ValueError("truncated")
    tag, length = data[pos], data[pos + 1]
    pos += 2
    if length & 0x80:
        n = length & 0x7F
        if n == 0 or n > 3 or pos + n > len(data):
            raise ValueError("bad length")
        length = int.from_bytes(data[pos:pos + n], "big")
        if length < 0x80 or data[pos] == 0:
            raise ValueError("non-minimal length")
        pos += n
    if pos + length > len(data):
        raise ValueError("truncated")
    return tag, data[pos:pos + length], pos + length


def _items(data: bytes) -> list[tuple[int, bytes]]:
    out, pos = [], 0
    while pos < len(data):
        tag, value, pos = _tlv(data, pos)
        out.append((tag, value))
    return out


def _role(cert: x509.Certificate) -> tuple[str | None, list[str]]:
    ext = _ext(cert, SEB_ROLE)
    if ext is None:
        return None, []
    try:
        tag, body, end = _tlv(ext.value.value, 0)
        items = _items(body)
        if tag != 0x30 or end != len(ext.value.value) or len(items) != 2 \
                or items[0][0] != 0x0A or items[1][0] != 0x30 or len(items[0][1]) != 1:
            return None, []
        groups = [v.decode("utf-8") for t, v in _items(items[1][1]) if t == 0x0C]
        return _ROLE_KINDS.get(items[0][1][0]), groups
    except (ValueError, UnicodeDecodeError):
        return None, []


def _issuable_roles(cert: x509.Certificate) -> set[str]:
    ext = _ext(cert, SEB_ISSUABLE_ROLES)
    if ext is None:
        return {"agent"}
    try:
        tag, body, end = _tlv(ext.value.value, 0)
        if tag != 0x30 or end != len(ext.value.value):
            return set()
        return {_ROLE_KINDS.get(v[0], "") for t, v in _items(body) if t == 0x0A and len(v) == 1}
    except ValueError:
        return set()


# The agent's grants (sebGrants, docs/GRANTS.md section 2) and matching (section 4), for the
# approval rule of the grant that allows a token's action.


def grant_rule(agent: x509.Certificate, operation: str, resource: str,
               params: dict) -> tuple[int, str] | None:
    """(required, group) of the agent's first grant that allows the action, if that grant has
    an approval rule; ``None`` otherwise, or when the certificate's grants do not decode."""
    ext = _ext(agent, SEB_GRANTS)
    if ext is None:
        return None
    try:
        grants = _decode_grants(ext.value.value)
    except (ValueError, UnicodeDecodeError, IndexError):
        return None
    return _deciding_rule(grants, operation, resource, params)


def _deciding_rule(grants: list[dict], operation: str, resource: str,
                   params: dict) -> tuple[int, str] | None:
    """The approval rule the broker's decision gives the action (seb's
    ``authz::deciding_grant``): the first grant that allows it, with the rule of an earlier
    grant whose constraints the action meets but which refused it (unless the allowing grant
    names every parameter that one refused); ``None`` when no grant allows it, a parameter is a
    lookalike of a constrained name, or two rules of different groups meet."""
    for grant in grants:
        if _in_scope(grant, operation, resource) and any(
                c != name and _folded(c) == _folded(name)
                for name in params for c in grant["params"]):
            return None
    governing = []
    for grant in grants:
        if _allows(grant, operation, resource, params):
            rule = grant["approval"]
            for earlier in governing:
                refused = [k for k in params
                           if (k not in earlier["params"] and not earlier["params_any"])
                           or (k in earlier["params"]
                               and not _satisfies(*earlier["params"][k], params[k]))]
                if all(k in grant["params"] for k in refused):
                    continue
                theirs = earlier["approval"]
                if rule is None:
                    rule = theirs
                elif rule[1] != theirs[1]:
                    return None
                else:
                    rule = (max(rule[0], theirs[0]), rule[1])
            return rule
        if grant["approval"] is not None and grant["params"] \
                and _in_scope(grant, operation, resource) \
                and all(name in params
                        and (_satisfies(kind, want, params[name])
                             or not _same_kind(kind, want, params[name]))
                        for name, (kind, want) in grant["params"].items()):
            governing.append(grant)
    return None


def _folded(name: str) -> str:
    # seb's grants::syntax::folded_name: case folded, only letters and digits kept.
    return "".join(c for c in name.upper().lower() if c.isalnum())


def _integer(data: bytes) -> int:
    return int.from_bytes(data, "big", signed=True)


def _scalar(tag: int, value: bytes) -> Any:
    if tag == 0x0C:
        return value.decode("utf-8")
    if tag == 0x02:
        return _integer(value)
    if tag == 0x01 and len(value) == 1:
        return value == b"\xff"
    raise ValueError("not a scalar")


def _decode_grants(der: bytes) -> list[dict]:
    tag, body, end = _tlv(der, 0)
    if tag != 0x30 or end != len(der):
        raise ValueError("not a SEQUENCE OF Grant")
    grants = []
    for gtag, gbody in _items(body):
        fields = _items(gbody)
        if gtag != 0x30 or len(fields) not in (5, 6):
            raise ValueError("bad Grant")
        constraints = {}
        for _, pc in _items(fields[3][1]):
            (ntag, name), (ctag, cval) = _items(pc)
            if ctag == 0xA0:
                constraints[name.decode()] = ("equals", _scalar(*_items(cval)[0]))
            elif ctag == 0xA1:
                constraints[name.decode()] = ("one_of", [_scalar(t, v) for t, v in _items(cval)])
            elif ctag == 0xA2:
                (_, lo), (_, hi) = _items(cval)
                constraints[name.decode()] = ("range", (_integer(lo), _integer(hi)))
            elif ctag == 0x83:
                constraints[name.decode()] = ("prefix", cval.decode("utf-8"))
            else:
                raise ValueError("bad Constraint")
        approval = None
        if len(fields) == 6:
            (_, required), (_, group) = _items(fields[5][1])
            approval = (_integer(required), group.decode("utf-8"))
        grants.append({"operation": fields[0][1].decode("utf-8"),
                       "resource": fields[1][1].decode("utf-8"),
                       "params": constraints, "params_any": fields[4][1] == b"\xff",
                       "approval": approval})
    return grants


def _in_scope(grant: dict, operation: str, resource: str) -> bool:
    pattern = grant["operation"]
    if pattern != "*":
        if pattern.endswith(".*"):
            prefix = pattern[:-2]
            if not (operation.startswith(prefix + ".") and len(operation) > len(prefix) + 1):
                return False
        elif pattern != operation:
            return False
    return _glob(grant["resource"].split("/"), resource.split("/"))


def _satisfies(kind: str, want: Any, value: Any) -> bool:
    if not isinstance(value, (str, int)) or isinstance(value, float):
        return False
    if kind == "equals":
        return _same(value, want)
    if kind == "one_of":
        return any(_same(value, w) for w in want)
    if kind == "range":
        return type(value) is int and want[0] <= value <= want[1]
    if kind == "prefix":
        # A value with a ".." path segment climbs out of its prefix (seb refuses it too).
        return type(value) is str and value.startswith(want) and \
            ".." not in value.replace("\\", "/").split("/")
    return False


def _same_kind(kind: str, want: Any, value: Any) -> bool:
    # seb's authz::matching::same_kind: whether the value is of a JSON type the constraint
    # takes (bool is not int here).
    if kind == "range":
        return type(value) is int
    if kind == "prefix":
        return type(value) is str
    options = want if kind == "one_of" else [want]
    return any(type(value) is type(w) for w in options)


def _allows(grant: dict, operation: str, resource: str, params: dict) -> bool:
    if not _in_scope(grant, operation, resource):
        return False
    for name, (kind, want) in grant["params"].items():
        if name not in params or not _satisfies(kind, want, params[name]):
            return False
    return grant["params_any"] or set(params) <= set(grant["params"])


def _same(a: Any, b: Any) -> bool:
    # Types are exact: True is not 1, "3" is not 3.
    return type(a) is type(b) and a == b


def _glob(pattern: list[str], segments: list[str]) -> bool:
    reach = [True] + [False] * len(segments)
    for p in pattern:
        nxt = [False] * (len(segments) + 1)
        for j in range(len(segments) + 1):
            if p == "**":
                nxt[j] = reach[j] or (j > 0 and nxt[j - 1])
            elif p == "*":
                nxt[j] = j > 0 and reach[j - 1]
            else:
                nxt[j] = j > 0 and reach[j - 1] and segments[j - 1] == p
        reach = nxt
    return reach[-1]
