"""The executor-side verifier: against tokens seb's Rust verifier rejects (written by
tests/agents.rs, which checked each verdict with seb::verify first), and its own negative
vectors built from a real token."""

import base64
import json

import pytest

from conftest import env, read
from seb_client import canonicalize, errors, params_digest, verify_token
from seb_client.verify import TrustBundle, _name_key, thumbprint


def cases():
    with open(env("SEB_CASES")) as f:
        return json.load(f)


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def verdict(case, **changes) -> str:
    args = dict(token=case["token"], trust_bundle=TrustBundle(read("SEB_TRUST")),
                operation=case["operation"], resource=case["resource"], params=case["params"],
                agent_cert=open(case["agent_cert"], "rb").read())
    args.update(changes)
    try:
        verify_token(**args)
        return "ok"
    except errors.VerifyError as e:
        return e.code


def test_agrees_with_seb_on_every_case():
    seen = {}
    for case in cases():
        seen[case["name"]] = verdict(case)
    assert seen == {case["name"]: case["code"] for case in cases()}
    # The rejected kinds the issue names are all there.
    assert {"forged", "foreign_key", "expired", "other_params", "other_agent", "high_s"} <= set(seen)


def good():
    return next(c for c in cases() if c["name"] == "good")


def with_header(token: str, header: dict) -> str:
    parts = token.split(".")
    return ".".join([b64(json.dumps(header).encode()), parts[1], parts[2]])


def test_header_and_shape():
    case = good()
    header = json.loads(unb64(case["token"].split(".")[0]))
    assert verdict(case, token=case["token"] + "=") == "malformed_token"
    assert verdict(case, token="a.b") == "malformed_token"
    assert verdict(case, token="x" * 20000) == "token_too_large"
    assert verdict(case, token=with_header(case["token"], {**header, "alg": "none"})) == \
        "unsupported_algorithm"
    assert verdict(case, token=with_header(case["token"], {**header, "alg": "HS256"})) == \
        "unsupported_algorithm"
    assert verdict(case, token=with_header(case["token"], {**header, "typ": "JWT"})) == \
        "wrong_token_type"
    assert verdict(case, token=with_header(case["token"], {**header, "jku": "https://x"})) == \
        "malformed_token"
    duplicate = '{"alg":"ES384","alg":"ES384","typ":"seb-exec+jwt","kid":"%s"}' % header["kid"]
    parts = case["token"].split(".")
    assert verdict(case, token=".".join([b64(duplicate.encode()), parts[1], parts[2]])) == \
        "malformed_token"


def test_the_key_must_be_the_token_key_issued_by_the_root():
    case = good()
    header = json.loads(unb64(case["token"].split(".")[0]))
    bundle = TrustBundle(read("SEB_TRUST"))
    audit = next(c for c in bundle.others if "audit" in c.subject.rfc4514_string())
    # The audit certificate is in the bundle and root-issued, but of the audit purpose.
    assert verdict(case, token=with_header(case["token"], {**header, "kid": thumbprint(audit)})) \
        == "wrong_key_purpose"
    root = bundle.roots[0]
    assert verdict(case, token=with_header(case["token"], {**header, "kid": thumbprint(root)})) \
        == "unknown_key"
    # A bundle without a root trusts nothing.
    only_leaves = b"".join(c.public_bytes(__import__("cryptography.hazmat.primitives.serialization",
                                                     fromlist=["Encoding"]).Encoding.PEM)
                           for c in bundle.others)
    with pytest.raises(errors.VerifyError) as refused:
        TrustBundle(only_leaves)
    assert refused.value.code == "invalid_trust_bundle"
    # Another installation's root (the agent's certificate stands in): the token key is unknown.
    assert verdict(case, trust_bundle=read("SEB_ROOT")) == "unknown_key"


def test_expectations_are_exact():
    case = good()
    assert verdict(case) == "ok"
    assert verdict(case, operation="demo.writ") == "wrong_operation"
    assert verdict(case, resource="demo/files/") == "wrong_resource"
    assert verdict(case, issuer="seb-other") == "wrong_issuer"
    assert verdict(case, min_epoch=2) == "stale_epoch"
    params = json.loads(case["params"])
    # Key order and whitespace do not matter; a duplicate key or a string for a number does.
    reordered = "{" + ", ".join(f'"{k}": {json.dumps(v)}' for k, v in reversed(params.items())) + "}"
    assert verdict(case, params=reordered) == "ok"
    assert verdict(case, params=params) == "ok"
    assert verdict(case, params='{"name": "a", "name": "v.txt", "text": "verified"}') == \
        "invalid_params"
    assert verdict(case, params="[1]") == "invalid_params"
    assert verdict(case, params='{"n": 9007199254740992}') == "invalid_params"
    # Binding: not presented must be said explicitly.
    assert verdict(case, agent_cert="not_presented") == "ok"
    # Anything else is a coded refusal, not a TypeError an executor would not catch.
    assert verdict(case, agent_cert=None) == "invalid_input"
    # Time: valid now, expired later, not valid long before.
    claims = json.loads(unb64(case["token"].split(".")[1]))
    assert verdict(case, now=claims["exp"]) == "token_expired"
    # Long before: the broker sets iat = nbf, and "issued in the future" is checked first.
    assert verdict(case, now=claims["nbf"] - 31) == "invalid_lifetime"
    assert verdict(case, now=claims["nbf"] - 30) == "ok"


def test_claims_are_checked_only_after_the_signature():
    case = good()
    parts = case["token"].split(".")
    claims = json.loads(unb64(parts[1]))
    claims["extra"] = 1
    tampered = ".".join([parts[0], b64(json.dumps(claims).encode()), parts[2]])
    assert verdict(case, token=tampered) == "bad_signature"
    truncated = ".".join([parts[0], parts[1], parts[2][:-4]])
    assert verdict(case, token=truncated) == "bad_signature"


def test_a_lone_surrogate_cannot_be_canonicalised_in_a_key_or_a_value():
    from seb_client.jcs import CanonicalError
    for value in ({"\ud800": 1}, {"a": "\udfff"}, ["\ud83d"]):
        with pytest.raises(CanonicalError):
            canonicalize(value)


def test_numbers_a_double_does_not_hold_as_written_are_refused_as_the_broker_does():
    from seb_client.jcs import CanonicalError, parse_strict
    for text in ["1e-400", "1.00000000000000000000000001", "0.30000000000000001"]:
        with pytest.raises(CanonicalError, match="not held exactly"):
            parse_strict('{"x": [1, "1e-400", %s]}' % text)
    for text in ["0.1", "0.10", "25e-1", "-0.0", "5e-324", "0.30000000000000004"]:
        parse_strict('{"x": %s, "s": "1e-400"}' % text)


def test_jcs_known_answers():
    # RFC 8785 section 3.2.2 number serialisation and member ordering by UTF-16 code units.
    assert canonicalize([1.0, 1e21, 1e-7, 0.000001, -0.0, 333333333.33333329, 1e23]) == \
        "[1,1e+21,1e-7,0.000001,0,333333333.3333333,1e+23]"
    assert canonicalize({"\u20ac": 1, "\U0001f600": 2, "\ufb01": 3, "a": [None, True]}) == \
        '{"a":[null,true],"\u20ac":1,"\U0001f600":2,"\ufb01":3}'
    assert canonicalize("\u2028\x1f\"\\") == '"\u2028\\u001f\\"\\\\"'
    # One meaning, one digest: 1.0 and 1 are the same number.
    assert params_digest({"a": 1.0, "b": "x"}) == params_digest({"b": "x", "a": 1})
    assert params_digest({"a": "1"}) != params_digest({"a": 1})


def test_the_agents_grant_says_which_approvals_a_token_needs():
    from cryptography import x509 as cx509

    from seb_client.verify import grant_rule
    agent = cx509.load_pem_x509_certificate(read("SEB_AGENT_CERT"))
    # Decoded from the agent's own sebGrants and matched as the broker matches.
    assert grant_rule(agent, "deploy.rollout", "prod/payments/api", {"replicas": 3}) == \
        (2, "sre-leads")
    assert grant_rule(agent, "demo.write", "demo/files", {"name": "a", "text": "b"}) is None
    # The first grant that allows wins: release- files need the two approvals.
    assert grant_rule(agent, "demo.write", "demo/files", {"name": "release-1", "text": "b"}) == \
        (2, "sre-leads")
    # A request no grant allows has no rule: replicas out of range, "3" not 3, another path.
    assert grant_rule(agent, "deploy.rollout", "prod/payments/api", {"replicas": 11}) is None
    assert grant_rule(agent, "deploy.rollout", "prod/payments/api", {"replicas": "3"}) is None
    assert grant_rule(agent, "deploy.rollout", "prod/billing/api", {"replicas": 3}) is None
    assert grant_rule(agent, "deploy.rollout", "prod/payments/api",
                      {"replicas": 3, "extra": 1}) is None


def test_claim_shapes_are_read_as_seb_reads_them():
    # A token signed by the broker never has these shapes, so they are checked on the claims
    # alone: optional claims are absent (or null) or of exactly their type.
    from seb_client.verify import _check_claim_types

    issued = json.loads(unb64(good()["token"].split(".")[1]))
    base = dict(issued, att={"pcr_digest": "AAAA", "time": 1764892800},
                audit={"index": 7, "leaf_hash": "AAAA"})
    base["params_digest"] = base["authorization_details"][0]["params_digest"]
    _check_claim_types(base)
    _check_claim_types({k: v for k, v in base.items() if k not in ("att", "audit")})
    for change in [{"att": "x"}, {"audit": "x"}, {"att": {"foo": 1}},
                   {"att": {"pcr_digest": "AAAA", "time": -1}},
                   {"att": {"pcr_digest": "AAAA", "time": True}},
                   {"audit": {"index": "7", "leaf_hash": "AAAA"}},
                   {"audit": {"index": 7, "leaf_hash": "AAAA", "x": 1}},
                   {"params_digest": "other"}, {"params_digest": None}]:
        with pytest.raises(errors.VerifyError) as refused:
            _check_claim_types(dict(base, **change))
        assert refused.value.code == "invalid_claims", change


def test_approver_names_compare_as_the_broker_compares_them():
    # The known answers seb's own verifier is tested with (src/cert/name.rs).
    import pathlib
    path = pathlib.Path(__file__).resolve().parents[3] / "tests" / "data" / "same_names.json"
    names = json.loads(path.read_text(encoding="utf-8"))
    assert len(names) > 20
    for case in names:
        for a, b in ((case["a"], case["b"]), (case["b"], case["a"])):
            same = a == b or _name_key(a) == _name_key(b)
            assert same == case["same"], (case["why"], a, b)
    for odd in ["", "=", ",,", "CN", "CN=\\", "CN=#", "CN=#1e01", "CN=#0c7f61", "+=+"]:
        _name_key(odd)


def test_the_request_digest_must_be_the_digest_of_this_action(monkeypatch):
    """What approvers signed is the token's request_digest: the verifier recomputes it from
    the action it is about to run. A broker-signed token with another one cannot be made here,
    so the recomputation is made to disagree instead."""
    import seb_client.verify as verify
    case = good()
    assert verdict(case) == "ok"
    monkeypatch.setattr(verify, "request_digest", lambda *_: b"\0" * 48)
    assert verdict(case) == "invalid_authorization_details"


def test_the_rule_of_a_stricter_grant_the_action_is_within_holds_as_at_the_broker():
    # seb's authz::deciding_grant: a laxer grant later in the list does not lower the
    # approvals of a stricter one whose constraints the action meets (outside review).
    from seb_client.verify import _deciding_rule

    def grant(params, approval=None, params_any=False):
        return {"operation": "demo.write", "resource": "demo/files", "params": params,
                "params_any": params_any, "approval": approval}
    strict = grant({"name": ("prefix", "release-")}, (2, "leads"))
    lax = grant({}, None, params_any=True)
    rule = lambda grants, params: _deciding_rule(grants, "demo.write", "demo/files", params)
    assert rule([strict, lax], {"name": "release-1"}) == (2, "leads")
    # One more parameter moves the action to the lax grant; the two approvals still hold.
    assert rule([strict, lax], {"name": "release-1", "text": "t"}) == (2, "leads")
    assert rule([strict, lax], {"name": "notes.txt", "text": "t"}) is None
    # A lookalike of a constrained name: no grant allows it.
    assert rule([strict, lax], {"NAME": "release-1"}) is None
    assert rule([strict, lax], {"name": "release-1", "Name": "x"}) is None
    # A later grant that names the parameter the strict one refused is an exception.
    dry = grant({"name": ("prefix", "release-"), "dry_run": ("equals", True)})
    assert rule([strict, dry], {"name": "release-1", "dry_run": True}) is None
    # Two groups cannot both be met.
    other = grant({}, (1, "others"), params_any=True)
    assert rule([strict, other], {"name": "release-1", "text": "t"}) is None
    # A prefix does not admit a value that climbs out of it.
    assert rule([strict], {"name": "release-/../x"}) is None
    # The constrained value in another type, which a converting executor may act on as the
    # value itself: the strict grant still governs (as seb's constraints_met_or_evaded).
    assert rule([strict, lax], {"name": ["release-1"]}) == (2, "leads")
    assert rule([strict, lax], {"name": ["notes.txt"]}) == (2, "leads")
    scale = grant({"replicas": ("range", (10, 100)), "canary": ("equals", True)},
                  (2, "leads"), params_any=True)
    for replicas in ["50", " +50 ", "0x32", "\uff15\uff10", "500", 50.0, [50], None]:
        assert rule([scale, lax], {"replicas": replicas, "canary": True}) == (2, "leads")
    for canary in ["TRUE", "t", 1, ["true"]]:
        assert rule([scale, lax], {"replicas": 50, "canary": canary}) == (2, "leads")
    # A value of the constraint's own type that it refuses falls to the lax grant.
    assert rule([scale, lax], {"replicas": 500, "canary": True}) is None
    assert rule([scale, lax], {"replicas": 50, "canary": False}) is None
    # A later grant that takes the other type itself is an exception.
    text = grant({"replicas": ("equals", "50")}, None, params_any=True)
    assert rule([scale, text], {"replicas": "50", "canary": True}) is None
    assert rule([scale, text], {"replicas": "50", "canary": True, "note": "x"}) is None
