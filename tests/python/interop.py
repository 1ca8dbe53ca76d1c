"""seb's artifacts checked by Python's own stacks: `cryptography` for certificates, the CRL,
the audit checkpoint and the receipt, PyJWT for the token. Nothing here imports seb code.

Run by tests/python_interop.rs with the files it wrote into the current directory:

  root.pem      the broker's root certificate (the only trust anchor)
  trust.pem     GET /v1/trust (root, token, audit, TLS certificates)
  agent.pem     the agent certificate the token is bound to
  token.jwt     a token issued to that agent for demo.write on demo/files
  params.json   the parameters it was issued for
  crl.pem       the root's CRL, after revoking the serial in revoked.txt
  served-crl.der  GET /v1/crl with Accept: application/pkix-crl (DER), after the same
  checkpoint.txt, entries.json  GET /v1/audit/checkpoint and /v1/audit/entries
  receipt.json, executor.pem    an executor's receipt and its certificate

Prints one line per check and "python interop: ok"; any failure raises.
"""

import base64
import hashlib
import json

import jwt
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

ARC = "1.2.840.113556.1.8000.2554.11087.30221.20830.16501.40880.2628193.9833871"
OID_GRANTS = x509.ObjectIdentifier(ARC + ".1")
OID_ROLE = x509.ObjectIdentifier(ARC + ".2")
KP = {n: x509.ObjectIdentifier(f"{ARC}.4.{i}") for i, n in ((1, "token"), (2, "audit"), (3, "receipt"))}


def read(name):
    with open(name, "rb") as f:
        return f.read()


def b64url(data):
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def unb64url(text):
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def jcs(value):
    # RFC 8785 for what seb puts in receipts and log entries: strings, integers, booleans,
    # objects and arrays. Python sorts keys by code point, which equals UTF-16 order below
    # U+10000; seb's keys are ASCII.
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def issued_by(cert, issuer):
    """The signature on `cert` verifies under `issuer`'s key, and the names chain."""
    assert cert.issuer == issuer.subject, (cert.subject, issuer.subject)
    issuer.public_key().verify(
        cert.signature, cert.tbs_certificate_bytes, ec.ECDSA(cert.signature_hash_algorithm)
    )


def eku(cert):
    try:
        return set(cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value)
    except x509.ExtensionNotFound:
        return set()


root = x509.load_pem_x509_certificate(read("root.pem"))
root.public_key().verify(root.signature, root.tbs_certificate_bytes, ec.ECDSA(root.signature_hash_algorithm))
assert root.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
print("root certificate parsed, self-signed, a CA")

bundle = x509.load_pem_x509_certificates(read("trust.pem"))
# By purpose, every certificate of each: after `seb rotate token|audit` the bundle also holds
# the retired ones (their tokens and checkpoints still verify), so a verifier picks the token
# certificate by the token's kid and the audit certificate by the signature's key id, never
# by position (API.md).
by_purpose = {}
for cert in bundle:
    if cert == root:
        continue
    issued_by(cert, root)
    for name, oid in KP.items():
        if oid in eku(cert):
            # A broker key certificate carries its one purpose and nothing else.
            assert eku(cert) == {oid}, (cert.subject, eku(cert))
            by_purpose.setdefault(name, []).append(cert)
assert set(by_purpose) == {"token", "audit"}, by_purpose
print(f"trust bundle: {len(bundle)} certificates, each issued by the root; token and audit key purposes exclusive")

agent = x509.load_pem_x509_certificate(read("agent.pem"))
issued_by(agent, root)
exts = {e.oid: e for e in agent.extensions}
assert OID_GRANTS in exts and OID_ROLE in exts, list(exts)
assert x509.oid.ExtendedKeyUsageOID.CLIENT_AUTH in eku(agent)
print("agent certificate parsed with its sebGrants and sebRole extensions, issued by the root")

# The library's own RFC 5280 path validation, as a Python executor checking an agent's mTLS
# certificate runs it: its client policy wants a subjectAltName on every end-entity
# certificate, and seb's agents carry their subject as one.
from cryptography.x509.verification import PolicyBuilder, Store

client_verifier = PolicyBuilder().store(Store([root])).build_client_verifier()
verified = client_verifier.verify(agent, [])
assert verified.subjects == [x509.DirectoryName(agent.subject)], verified.subjects
print("agent certificate passes cryptography's client path validation to the root")

# The token, with PyJWT: ES384 under the token certificate that its kid names.
token = read("token.jwt").decode().strip()
header = jwt.get_unverified_header(token)
named = [c for c in by_purpose["token"] if b64url(c.fingerprint(hashes.SHA256())) == header.get("kid")]
assert len(named) == 1, (header, by_purpose["token"])
token_cert = named[0]
assert header["alg"] == "ES384" and header["typ"] == "seb-exec+jwt", header
claims = jwt.decode(token, key=token_cert.public_key(), algorithms=["ES384"], options={"verify_aud": False})
assert claims["cnf"]["x5t#S256"] == b64url(agent.fingerprint(hashes.SHA256()))
detail = claims["authorization_details"][0]
assert (detail["operation"], detail["resource"]) == ("demo.write", "demo/files"), detail
params = json.loads(read("params.json"))
assert detail["params_digest"] == b64url(hashlib.sha384(jcs(params)).digest()), detail
# ARCHITECTURE §6: the digest is also a claim of its own, and jti is a 128-bit random id.
assert claims["params_digest"] == detail["params_digest"], claims
assert len(unb64url(claims["jti"])) == 16, claims["jti"]
# Changing one character of the claims must break the signature.
head, body, sig = token.split(".")
forged = json.loads(unb64url(body))
forged["authorization_details"][0]["resource"] = "demo/other"
try:
    jwt.decode(f"{head}.{b64url(jcs(forged))}.{sig}", key=token_cert.public_key(), algorithms=["ES384"],
               options={"verify_aud": False})
    raise AssertionError("a forged token verified")
except jwt.InvalidSignatureError:
    pass
print("token verified with PyJWT (ES384, kid = the token certificate), bound to the agent, params digest matches; a forged one refused")

crl = x509.load_pem_x509_crl(read("crl.pem"))
assert crl.issuer == root.subject
assert crl.is_signature_valid(root.public_key())
revoked = int(read("revoked.txt").decode().strip(), 16)
assert crl.get_revoked_certificate_by_serial_number(revoked) is not None
print(f"CRL signed by the root lists serial {revoked:X}")
served = x509.load_der_x509_crl(read("served-crl.der"))
assert served.issuer == root.subject
assert served.is_signature_valid(root.public_key())
assert served.get_revoked_certificate_by_serial_number(revoked) is not None
print(f"served DER CRL signed by the root lists serial {revoked:X}")

# The checkpoint: a C2SP signed note, ECDSA P-384 over the body, key id over the audit SPKI.
note = read("checkpoint.txt").decode()
body_text, signatures = note.split("\n\n", 1)
origin, size, root_hash = body_text.split("\n")

def key_id(cert):
    spki = cert.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return hashlib.sha256(origin.encode() + b"\n\xff" + spki).digest()[:4]


verified = False
for line in signatures.strip().split("\n"):
    name, blob = line[len("\u2014 "):].split(" ")
    raw = base64.b64decode(blob)
    for audit_cert in by_purpose["audit"]:
        if name == origin and raw[:4] == key_id(audit_cert):
            audit_cert.public_key().verify(raw[4:], (body_text + "\n").encode(), ec.ECDSA(hashes.SHA384()))
            verified = True
assert verified, note
print(f"checkpoint of {origin} verified under the audit certificate (size {size})")


def mth(leaves):
    # RFC 6962 §2.1: the largest power of two smaller than n splits the tree.
    if len(leaves) == 1:
        return leaves[0]
    k = 1
    while k * 2 < len(leaves):
        k *= 2
    return hashlib.sha256(b"\x01" + mth(leaves[:k]) + mth(leaves[k:])).digest()


entries = json.loads(read("entries.json"))["entries"]
leaves = []
for i, item in enumerate(entries):
    assert item["index"] == i
    leaf = hashlib.sha256(b"\x00" + jcs(item["entry"])).digest()
    assert b64url(leaf) == item["leaf_hash"], item
    leaves.append(leaf)
leaves = leaves[: int(size)]
assert len(leaves) == int(size), (len(leaves), size)
assert base64.b64encode(mth(leaves)).decode() == root_hash
audit = claims["audit"]
assert entries[audit["index"]]["leaf_hash"] == audit["leaf_hash"]
assert entries[audit["index"]]["entry"]["kind"] == "execution_granted"
print(f"audit log rebuilt from {len(leaves)} entries: RFC 6962 root matches the checkpoint; the token's entry is in it")

receipt = json.loads(read("receipt.json"))
if "receipt" in receipt:
    receipt = receipt["receipt"]
executor = x509.load_pem_x509_certificate(read("executor.pem"))
issued_by(executor, root)
assert KP["receipt"] in eku(executor), eku(executor)
assert receipt["body"]["executor"] == b64url(executor.fingerprint(hashes.SHA256()))
executor.public_key().verify(unb64url(receipt["signature"]), jcs(receipt["body"]), ec.ECDSA(hashes.SHA384()))
receipt["body"]["exit_code"] = 1
try:
    executor.public_key().verify(unb64url(receipt["signature"]), jcs(receipt["body"]), ec.ECDSA(hashes.SHA384()))
    raise AssertionError("an altered receipt verified")
except InvalidSignature:
    pass
print("receipt verified under the executor certificate (receipt key purpose); an altered one refused")

print("python interop: ok")
