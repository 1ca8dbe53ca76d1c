//! Decision tests: the request table, chains and escalation, and properties.

use std::collections::HashSet;
use std::time::{Duration, SystemTime};

use proptest::prelude::*;
use serde_json::{json, Value};

use super::*;
use crate::grants::{testing, Constraint, GrantSet};

mod constraint_kinds;

const GRANTS: &str = r#"
[[grant]]   # 0
operation = "deploy.rollout"
resource  = "prod/payments/*"
max_ttl   = "60s"
params.replicas = { min = 1, max = 10 }
params.image    = { prefix = "registry.internal/payments/" }
params.strategy = { one_of = ["rolling", "canary"] }
params.region   = { equals = "eu-west-1" }
approval  = { required = 2, group = "sre-leads" }

[[grant]]   # 1
operation = "k8s.read.*"
resource  = "prod/**"
max_ttl   = "30s"
params_any = true

[[grant]]   # 2
operation = "db.migrate"
resource  = "staging/db/*"
max_ttl   = "10m"
params.version = { equals = 42 }
params.dry_run = { equals = true }

[[grant]]   # 3
operation = "fw.*"
resource  = "prod/*/rules/**"
max_ttl   = "2m"
params.port  = { one_of = [443, 8443] }
params.proto = { one_of = ["tcp"] }
params_any = true

[[grant]]   # 4
operation = "scale.set"
resource  = "prod/api"
max_ttl   = "60s"
params.count = { min = -5, max = 9007199254740991 }

[[grant]]   # 5
operation = "deploy.*"
resource  = "dev/**"
max_ttl   = "5m"
params_any = true
"#;

const BROKER_MAX: Duration = Duration::from_secs(120);

fn now() -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000)
}

fn cert(serial: u8, grants: Option<Result<GrantSet, GrantError>>) -> CertFacts {
    CertFacts {
        serial: sn(serial),
        not_before: now() - Duration::from_secs(3600),
        not_after: now() + Duration::from_secs(86_400),
        role: None,
        grants,
        issuable_roles: None,
    }
}

fn agent(grants: Option<Result<GrantSet, GrantError>>) -> CertFacts {
    CertFacts {
        role: Some(Role::new(RoleKind::Agent, vec![]).unwrap()),
        ..cert(1, grants)
    }
}

fn set(toml: &str) -> Option<Result<GrantSet, GrantError>> {
    Some(Ok(GrantSet::from_toml_str(toml).unwrap()))
}

fn chain(leaf: CertFacts, ancestors: Vec<CertFacts>) -> ChainView {
    ChainView::new(leaf, ancestors)
}

/// The serial `n` (1 to 255).
fn sn(n: u8) -> crate::serial::Serial {
    crate::serial::Serial::from_magnitude(&[n]).unwrap()
}

struct Revoked(HashSet<crate::serial::Serial>);

impl RevocationView for Revoked {
    fn is_revoked(&self, serial: &crate::serial::Serial) -> bool {
        self.0.contains(serial)
    }
}

fn none_revoked() -> Revoked {
    Revoked(HashSet::new())
}

fn request(op: &str, res: &str, params: Value) -> Request {
    Request {
        operation: op.into(),
        resource: res.into(),
        params,
    }
}

fn decide_now(chain: &ChainView, req: &Request) -> Decision {
    decide(chain, &none_revoked(), req, now(), BROKER_MAX)
}

#[derive(Debug)]
enum Expect {
    Allow(usize),
    Deny(DenyCode),
    /// serde_json refuses the params text before any decision is made.
    Unparseable,
}

use DenyCode::*;
use Expect::{Allow, Deny, Unparseable};

const P0: &str = r#"{"replicas": 3, "image": "registry.internal/payments/api:1.2", "strategy": "rolling", "region": "eu-west-1"}"#;

fn p0_with(key: &str, value: &str) -> String {
    let mut v: Value = serde_json::from_str(P0).unwrap();
    let mut text = serde_json::to_string(&v).unwrap();
    if v.get(key).is_some() {
        v.as_object_mut().unwrap().remove(key);
        text = serde_json::to_string(&v).unwrap();
    }
    if value.is_empty() {
        return text;
    }
    format!("{{\"{key}\": {value}, {}", &text[1..])
}

fn table() -> Vec<(&'static str, String, String, Expect)> {
    let deep = format!("{}1{}", "[".repeat(40), "]".repeat(40));
    let deep_ok = format!("{}1{}", "[".repeat(30), "]".repeat(30));
    let mut rows: Vec<(&'static str, &str, String, Expect)> = vec![
        // --- allowed ---
        ("deploy.rollout", "prod/payments/api", P0.into(), Allow(0)),
        (
            "deploy.rollout",
            "prod/payments/api",
            p0_with("replicas", "1"),
            Allow(0),
        ),
        (
            "deploy.rollout",
            "prod/payments/api",
            p0_with("replicas", "10"),
            Allow(0),
        ),
        (
            "deploy.rollout",
            "prod/payments/api",
            p0_with("strategy", "\"canary\""),
            Allow(0),
        ),
        (
            "deploy.rollout",
            "prod/payments/api",
            p0_with("image", "\"registry.internal/payments/\""),
            Allow(0),
        ),
        ("k8s.read.pods", "prod", "{}".into(), Allow(1)),
        ("k8s.read.pods", "prod/a/b/c", "{}".into(), Allow(1)),
        (
            "k8s.read.pods.logs",
            "prod/x",
            r#"{"anything": {"nested": [1, 2.5, null]}}"#.into(),
            Allow(1),
        ),
        (
            "k8s.read.pods",
            "prod/x",
            format!("{{\"d\": {deep_ok}}}"),
            Allow(1),
        ),
        (
            "db.migrate",
            "staging/db/main",
            r#"{"version": 42, "dry_run": true}"#.into(),
            Allow(2),
        ),
        (
            "fw.open",
            "prod/eu/rules/r1",
            r#"{"port": 443, "proto": "tcp"}"#.into(),
            Allow(3),
        ),
        (
            "fw.open",
            "prod/eu/rules",
            r#"{"port": 8443, "proto": "tcp", "comment": "x"}"#.into(),
            Allow(3),
        ),
        (
            "fw.a.b",
            "prod/eu/rules/x/y",
            r#"{"port": 443, "proto": "tcp"}"#.into(),
            Allow(3),
        ),
        ("scale.set", "prod/api", r#"{"count": -5}"#.into(), Allow(4)),
        (
            "scale.set",
            "prod/api",
            r#"{"count": 9007199254740991}"#.into(),
            Allow(4),
        ),
        ("deploy.x", "dev/x", "{}".into(), Allow(5)),
        ("deploy.x.y", "dev", "{}".into(), Allow(5)),
        ("deploy.rollout", "dev/payments/api", "{}".into(), Allow(5)),
        (
            "k8s.read.pods",
            "prod/x",
            r#"{"n": 18446744073709551616}"#.into(),
            Allow(1),
        ),
        // --- operation: wildcards and syntax ---
        ("deploy", "dev/x", "{}".into(), Deny(OperationNotGranted)),
        ("deployx.y", "dev/x", "{}".into(), Deny(OperationNotGranted)),
        ("k8s.read", "prod", "{}".into(), Deny(OperationNotGranted)),
        (
            "k8s.readx.pods",
            "prod",
            "{}".into(),
            Deny(OperationNotGranted),
        ),
        (
            "fw",
            "prod/eu/rules",
            r#"{"port": 443, "proto": "tcp"}"#.into(),
            Deny(OperationNotGranted),
        ),
        (
            "fwx.open",
            "prod/eu/rules",
            r#"{"port": 443, "proto": "tcp"}"#.into(),
            Deny(OperationNotGranted),
        ),
        (
            "deploy.rollbackx",
            "prod/payments/api",
            P0.into(),
            Deny(ResourceNotGranted),
        ),
        ("deploy.", "dev/x", "{}".into(), Deny(InvalidOperation)),
        (".deploy", "dev/x", "{}".into(), Deny(InvalidOperation)),
        ("deploy..x", "dev/x", "{}".into(), Deny(InvalidOperation)),
        ("Deploy.x", "dev/x", "{}".into(), Deny(InvalidOperation)),
        ("deploy.*", "dev/x", "{}".into(), Deny(InvalidOperation)),
        ("*", "dev/x", "{}".into(), Deny(InvalidOperation)),
        ("", "dev/x", "{}".into(), Deny(InvalidOperation)),
        ("deploy.х", "dev/x", "{}".into(), Deny(InvalidOperation)), // Cyrillic х
        // --- resource: traversal, encoding, look-alikes ---
        (
            "deploy.rollout",
            "prod/../prod/payments/api",
            P0.into(),
            Deny(InvalidResource),
        ),
        (
            "deploy.rollout",
            "prod/payments/./api",
            P0.into(),
            Deny(InvalidResource),
        ),
        (
            "deploy.rollout",
            "prod/payments/..",
            P0.into(),
            Deny(InvalidResource),
        ),
        (
            "deploy.rollout",
            "prod/payments%2Fapi",
            P0.into(),
            Deny(InvalidResource),
        ),
        (
            "deploy.rollout",
            "prod%2fpayments/api",
            P0.into(),
            Deny(InvalidResource),
        ),
        (
            "deploy.rollout",
            "prod//payments/api",
            P0.into(),
            Deny(InvalidResource),
        ),
        (
            "deploy.rollout",
            "prod/payments/api/",
            P0.into(),
            Deny(InvalidResource),
        ),
        (
            "deploy.rollout",
            "/prod/payments/api",
            P0.into(),
            Deny(InvalidResource),
        ),
        (
            "deploy.rollout",
            "prod\\payments\\api",
            P0.into(),
            Deny(InvalidResource),
        ),
        (
            "deploy.rollout",
            "\u{440}rod/payments/api",
            P0.into(),
            Deny(InvalidResource),
        ),
        (
            "deploy.rollout",
            "prod\u{ff0f}payments\u{ff0f}api",
            P0.into(),
            Deny(InvalidResource),
        ),
        (
            "deploy.rollout",
            "prod/payments/api\u{0}",
            P0.into(),
            Deny(InvalidResource),
        ),
        (
            "deploy.rollout",
            "prod/payments/api\n",
            P0.into(),
            Deny(InvalidResource),
        ),
        (
            "deploy.rollout",
            "prod/payments/a pi",
            P0.into(),
            Deny(InvalidResource),
        ),
        (
            "deploy.rollout",
            "prod/payments/*",
            P0.into(),
            Deny(InvalidResource),
        ),
        (
            "deploy.rollout",
            "prod/payments/api\u{200b}",
            P0.into(),
            Deny(InvalidResource),
        ),
        ("deploy.rollout", "", P0.into(), Deny(InvalidResource)),
        (
            "deploy.rollout",
            "prod/payments/api/extra",
            P0.into(),
            Deny(ResourceNotGranted),
        ),
        (
            "deploy.rollout",
            "prod/payments",
            P0.into(),
            Deny(ResourceNotGranted),
        ),
        (
            "deploy.rollout",
            "prod/Payments/api",
            P0.into(),
            Deny(ResourceNotGranted),
        ),
        (
            "k8s.read.pods",
            "production/x",
            "{}".into(),
            Deny(ResourceNotGranted),
        ),
        (
            "deploy.x",
            "staging/x",
            "{}".into(),
            Deny(ResourceNotGranted),
        ),
        (
            "fw.open",
            "prod/rules",
            r#"{"port": 443, "proto": "tcp"}"#.into(),
            Deny(ResourceNotGranted),
        ),
        // --- parameters: types, ranges, huge numbers ---
        (
            "deploy.rollout",
            "prod/payments/api",
            p0_with("replicas", "\"5\""),
            Deny(ParamConstraintViolated),
        ),
        (
            "deploy.rollout",
            "prod/payments/api",
            p0_with("replicas", "5.0"),
            Deny(ParamConstraintViolated),
        ),
        (
            "deploy.rollout",
            "prod/payments/api",
            p0_with("replicas", "5.5"),
            Deny(ParamConstraintViolated),
        ),
        (
            "deploy.rollout",
            "prod/payments/api",
            p0_with("replicas", "5e0"),
            Deny(ParamConstraintViolated),
        ),
        (
            "deploy.rollout",
            "prod/payments/api",
            p0_with("replicas", "11"),
            Deny(ParamConstraintViolated),
        ),
        (
            "deploy.rollout",
            "prod/payments/api",
            p0_with("replicas", "0"),
            Deny(ParamConstraintViolated),
        ),
        (
            "deploy.rollout",
            "prod/payments/api",
            p0_with("replicas", "-1"),
            Deny(ParamConstraintViolated),
        ),
        (
            "deploy.rollout",
            "prod/payments/api",
            p0_with("replicas", "1e2"),
            Deny(ParamConstraintViolated),
        ),
        (
            "deploy.rollout",
            "prod/payments/api",
            p0_with("replicas", "18446744073709551616"),
            Deny(ParamConstraintViolated),
        ),
        (
            "deploy.rollout",
            "prod/payments/api",
            p0_with("replicas", "9223372036854775808"),
            Deny(InvalidRequest),
        ),
        (
            "deploy.rollout",
            "prod/payments/api",
            p0_with("replicas", "-9223372036854775809"),
            Deny(ParamConstraintViolated),
        ),
        (
            "deploy.rollout",
            "prod/payments/api",
            p0_with("replicas", "1e400"),
            Unparseable,
        ),
        (
            "deploy.rollout",
            "prod/payments/api",
            p0_with("replicas", "true"),
            Deny(ParamConstraintViolated),
        ),
        (
            "deploy.rollout",
            "prod/payments/api",
            p0_with("replicas", "null"),
            Deny(ParamConstraintViolated),
        ),
        (
            "deploy.rollout",
            "prod/payments/api",
            p0_with("replicas", "[3]"),
            Deny(ParamConstraintViolated),
        ),
        (
            "deploy.rollout",
            "prod/payments/api",
            p0_with("replicas", "{\"v\": 3}"),
            Deny(ParamConstraintViolated),
        ),
        (
            "deploy.rollout",
            "prod/payments/api",
            p0_with("region", ""),
            Deny(ParamConstraintViolated),
        ),
        (
            "deploy.rollout",
            "prod/payments/api",
            p0_with("force", "true"),
            Deny(ParamConstraintViolated),
        ),
        (
            "deploy.rollout",
            "prod/payments/api",
            p0_with("strategy", "\"Rolling\""),
            Deny(ParamConstraintViolated),
        ),
        (
            "deploy.rollout",
            "prod/payments/api",
            p0_with("strategy", "[\"rolling\"]"),
            Deny(ParamConstraintViolated),
        ),
        (
            "deploy.rollout",
            "prod/payments/api",
            p0_with("region", "\"eu-west-1 \""),
            Deny(ParamConstraintViolated),
        ),
        (
            "deploy.rollout",
            "prod/payments/api",
            p0_with("image", "\"registry.internal/payment/x\""),
            Deny(ParamConstraintViolated),
        ),
        (
            "deploy.rollout",
            "prod/payments/api",
            p0_with("image", "\"registry.internal/paymentsX\""),
            Deny(ParamConstraintViolated),
        ),
        (
            "deploy.rollout",
            "prod/payments/api",
            p0_with("image", "\"registry.internal\u{2215}payments/x\""),
            Deny(ParamConstraintViolated),
        ),
        (
            "deploy.rollout",
            "prod/payments/api",
            p0_with("replicas", "3, \"replicas\": 50"),
            Deny(ParamConstraintViolated),
        ),
        (
            "db.migrate",
            "staging/db/main",
            r#"{"version": "42", "dry_run": true}"#.into(),
            Deny(ParamConstraintViolated),
        ),
        (
            "db.migrate",
            "staging/db/main",
            r#"{"version": 42.0, "dry_run": true}"#.into(),
            Deny(ParamConstraintViolated),
        ),
        (
            "db.migrate",
            "staging/db/main",
            r#"{"version": 42, "dry_run": "true"}"#.into(),
            Deny(ParamConstraintViolated),
        ),
        (
            "db.migrate",
            "staging/db/main",
            r#"{"version": 42, "dry_run": 1}"#.into(),
            Deny(ParamConstraintViolated),
        ),
        (
            "db.migrate",
            "staging/db/main",
            r#"{"version": 42}"#.into(),
            Deny(ParamConstraintViolated),
        ),
        (
            "fw.open",
            "prod/eu/rules/r1",
            r#"{"port": "443", "proto": "tcp"}"#.into(),
            Deny(ParamConstraintViolated),
        ),
        (
            "fw.open",
            "prod/eu/rules/r1",
            r#"{"port": 80, "proto": "tcp"}"#.into(),
            Deny(ParamConstraintViolated),
        ),
        (
            "fw.open",
            "prod/eu/rules/r1",
            r#"{"port": 443}"#.into(),
            Deny(ParamConstraintViolated),
        ),
        (
            "scale.set",
            "prod/api",
            r#"{"count": -6}"#.into(),
            Deny(ParamConstraintViolated),
        ),
        (
            "scale.set",
            "prod/api",
            r#"{"count": 9007199254740992}"#.into(),
            Deny(InvalidRequest),
        ),
        (
            "scale.set",
            "prod/api",
            r#"{"count": 9007199254740993.0}"#.into(),
            Deny(ParamConstraintViolated),
        ),
        // --- the params document itself ---
        ("k8s.read.pods", "prod/x", "[]".into(), Deny(InvalidRequest)),
        (
            "k8s.read.pods",
            "prod/x",
            "\"x\"".into(),
            Deny(InvalidRequest),
        ),
        (
            "k8s.read.pods",
            "prod/x",
            "null".into(),
            Deny(InvalidRequest),
        ),
        ("k8s.read.pods", "prod/x", "42".into(), Deny(InvalidRequest)),
        (
            "k8s.read.pods",
            "prod/x",
            format!("{{\"d\": {deep}}}"),
            Deny(InvalidRequest),
        ),
        (
            "k8s.read.pods",
            "prod/x",
            r#"{"n": 1e400}"#.into(),
            Unparseable,
        ),
    ];
    rows.drain(..)
        .map(|(op, res, params, expect)| (op, res.to_owned(), params, expect))
        .collect()
}

#[test]
fn decision_table() {
    let chain = chain(agent(set(GRANTS)), vec![]);
    let rows = table();
    assert!(rows.len() >= 60, "{} rows", rows.len());
    for (op, res, params_text, expect) in rows {
        let params = match serde_json::from_str::<Value>(&params_text) {
            Ok(p) => p,
            Err(_) => {
                assert!(
                    matches!(expect, Unparseable),
                    "{op} {res:?} {params_text}: unparseable"
                );
                continue;
            }
        };
        let req = request(op, &res, params);
        let got = decide_now(&chain, &req);
        match (&expect, &got) {
            (Allow(want), Decision::Allow { grant_index, .. }) if want == grant_index => {}
            (Deny(want), Decision::Deny { code, reason }) if want == code => {
                assert!(!reason.is_empty());
            }
            _ => panic!("{op} {res:?} {params_text}: expected {expect:?}, got {got:?}"),
        }
    }
}

#[test]
fn allow_carries_ttl_approval_and_digest() {
    let chain = chain(agent(set(GRANTS)), vec![]);
    let params: Value = serde_json::from_str(P0).unwrap();
    let req = request("deploy.rollout", "prod/payments/api", params.clone());
    let Decision::Allow {
        grant_index,
        token_ttl,
        approval,
        request_digest,
        grant,
    } = decide_now(&chain, &req)
    else {
        panic!("denied")
    };
    assert_eq!(grant_index, 0);
    assert_eq!(grant.operation, "deploy.rollout");
    assert_eq!(token_ttl, Duration::from_secs(60));
    assert_eq!(approval.unwrap().required, 2);
    assert_eq!(
        request_digest,
        crate::canonical::request_digest("deploy.rollout", "prod/payments/api", &params).unwrap()
    );
    // Broker maximum below the grant's.
    let req = request(
        "db.migrate",
        "staging/db/x",
        json!({"version": 42, "dry_run": true}),
    );
    match decide_now(&chain, &req) {
        Decision::Allow {
            token_ttl,
            approval,
            ..
        } => {
            assert_eq!(token_ttl, BROKER_MAX);
            assert_eq!(approval, None);
        }
        other => panic!("{other:?}"),
    }
    // Certificate expiring sooner than both.
    let mut leaf = agent(set(GRANTS));
    leaf.not_after = now() + Duration::from_secs(7);
    let req = request("deploy.x", "dev/x", json!({}));
    match decide_now(&ChainView::new(leaf, vec![]), &req) {
        Decision::Allow { token_ttl, .. } => assert_eq!(token_ttl, Duration::from_secs(7)),
        other => panic!("{other:?}"),
    }
}

#[test]
fn most_specific_reason_wins() {
    // Grant 0 matches operation and resource but not params; grant 5 matches the operation
    // only. The answer names the parameter.
    let chain = chain(agent(set(GRANTS)), vec![]);
    let req = request(
        "deploy.rollout",
        "prod/payments/api",
        json!({"replicas": 3}),
    );
    match decide_now(&chain, &req) {
        Decision::Deny { code, reason } => {
            assert_eq!(code, ParamConstraintViolated);
            assert!(reason.contains("grant #0"), "{reason}");
        }
        other => panic!("{other:?}"),
    }
}

fn code(d: &Decision) -> Option<DenyCode> {
    d.deny_code()
}

#[test]
fn certificate_validity_and_revocation() {
    let req = request("deploy.x", "dev/x", json!({}));
    let ok = || chain(agent(set(GRANTS)), vec![cert(2, None)]);
    assert_eq!(code(&decide_now(&ok(), &req)), None);

    let mut c = ok();
    c.leaf.not_after = now() - Duration::from_secs(1);
    assert_eq!(code(&decide_now(&c, &req)), Some(CertificateExpired));
    let mut c = ok();
    c.leaf.not_after = now();
    assert_eq!(
        code(&decide_now(&c, &req)),
        Some(CertificateExpired),
        "no zero-length tokens"
    );
    let mut c = ok();
    c.ancestors[0].not_after = now() - Duration::from_secs(1);
    assert_eq!(code(&decide_now(&c, &req)), Some(CertificateExpired));
    let mut c = ok();
    c.leaf.not_before = now() + Duration::from_secs(1);
    assert_eq!(code(&decide_now(&c, &req)), Some(CertificateNotYetValid));
    let mut c = ok();
    c.ancestors[0].not_before = now() + Duration::from_secs(1);
    assert_eq!(code(&decide_now(&c, &req)), Some(CertificateNotYetValid));

    let revoked_leaf = Revoked(HashSet::from([sn(1)]));
    let revoked_issuer = Revoked(HashSet::from([sn(2)]));
    let d = decide(&ok(), &revoked_leaf, &req, now(), BROKER_MAX);
    assert_eq!(code(&d), Some(CertificateRevoked));
    let d = decide(&ok(), &revoked_issuer, &req, now(), BROKER_MAX);
    assert_eq!(code(&d), Some(CertificateRevoked));
    // Revocation is reported before expiry.
    let mut c = ok();
    c.leaf.not_after = now() - Duration::from_secs(1);
    let d = decide(&c, &revoked_leaf, &req, now(), BROKER_MAX);
    assert_eq!(code(&d), Some(CertificateRevoked));
}

#[test]
fn every_ancestor_is_dated_not_only_the_nearest() {
    // leaf → cert 2 → cert 3: the top intermediate's dates count as much as the leaf's.
    let req = request("deploy.x", "dev/x", json!({}));
    let ok = || chain(agent(set(GRANTS)), vec![cert(2, None), cert(3, None)]);
    assert_eq!(code(&decide_now(&ok(), &req)), None);
    for depth in [0, 1] {
        let mut c = ok();
        c.ancestors[depth].not_after = now() - Duration::from_secs(1);
        let d = decide_now(&c, &req);
        assert_eq!(code(&d), Some(CertificateExpired), "ancestor {depth}");
        let mut c = ok();
        c.ancestors[depth].not_before = now() + Duration::from_secs(1);
        let d = decide_now(&c, &req);
        assert_eq!(code(&d), Some(CertificateNotYetValid), "ancestor {depth}");
        let Decision::Deny { reason, .. } = d else {
            unreachable!()
        };
        assert!(
            reason.contains(&format!("depth {}", depth + 1)),
            "ancestor {depth}: {reason}"
        );
    }
}

#[test]
fn roles_and_missing_or_broken_grants() {
    let req = request("deploy.x", "dev/x", json!({}));
    let mut c = chain(agent(set(GRANTS)), vec![]);
    c.leaf.role = None;
    assert_eq!(code(&decide_now(&c, &req)), Some(WrongRole));
    for kind in [RoleKind::Approver, RoleKind::Executor, RoleKind::Broker] {
        let groups = if kind == RoleKind::Approver {
            vec!["g".into()]
        } else {
            vec![]
        };
        c.leaf.role = Some(Role::new(kind, groups).unwrap());
        assert_eq!(code(&decide_now(&c, &req)), Some(WrongRole));
    }
    let c = chain(agent(None), vec![]);
    assert_eq!(code(&decide_now(&c, &req)), Some(NoGrants));
    // Grants only on the issuer are not the agent's grants.
    let c = chain(agent(None), vec![cert(2, set(GRANTS))]);
    assert_eq!(code(&decide_now(&c, &req)), Some(NoGrants));

    let broken = || Some(GrantSet::from_der(&[0x30, 0x03, 0x02, 0x01]));
    let c = chain(agent(broken()), vec![]);
    assert_eq!(code(&decide_now(&c, &req)), Some(InvalidGrantsExtension));
    let c = chain(agent(set(GRANTS)), vec![cert(2, broken())]);
    assert_eq!(code(&decide_now(&c, &req)), Some(InvalidGrantsExtension));
    let c = chain(agent(set(GRANTS)), vec![cert(2, None), cert(3, broken())]);
    assert_eq!(code(&decide_now(&c, &req)), Some(InvalidGrantsExtension));
}

fn issuing(roles: &[RoleKind]) -> Option<Result<IssuableRoles, GrantError>> {
    Some(IssuableRoles::new(roles.iter().copied()))
}

fn intermediate(serial: u8, roles: Option<Result<IssuableRoles, GrantError>>) -> CertFacts {
    CertFacts {
        issuable_roles: roles,
        ..cert(serial, None)
    }
}

fn leaf_with(kind: RoleKind) -> CertFacts {
    let groups = if kind == RoleKind::Approver {
        vec!["sre".into()]
    } else {
        vec![]
    };
    CertFacts {
        role: Some(Role::new(kind, groups).unwrap()),
        ..cert(1, None)
    }
}

/// `delegated_role` for a leaf of `kind` under intermediates with these `sebIssuableRoles`
/// (nearest first): the role, or the deny code.
fn delegated(
    kind: RoleKind,
    ancestors: Vec<Option<Result<IssuableRoles, GrantError>>>,
) -> Result<RoleKind, DenyCode> {
    let ancestors = ancestors
        .into_iter()
        .enumerate()
        .map(|(i, roles)| intermediate(i as u8 + 2, roles))
        .collect();
    let c = chain(leaf_with(kind), ancestors);
    delegated_role(&c).map(|r| r.kind).map_err(|(code, _)| code)
}

#[test]
fn a_role_counts_only_if_every_intermediate_above_may_issue_it() {
    use RoleKind::{Agent, Approver, Executor};
    // Directly under the root (no intermediates): every role.
    for kind in [Agent, Approver, Executor] {
        assert_eq!(delegated(kind, vec![]), Ok(kind));
    }
    // Without sebIssuableRoles an intermediate issues agents only.
    assert_eq!(delegated(Agent, vec![None]), Ok(Agent));
    assert_eq!(delegated(Executor, vec![None]), Err(RoleNotDelegated));
    assert_eq!(delegated(Approver, vec![None]), Err(RoleNotDelegated));
    // Named roles.
    assert_eq!(
        delegated(Executor, vec![issuing(&[Agent, Executor])]),
        Ok(Executor)
    );
    assert_eq!(
        delegated(Approver, vec![issuing(&[Agent, Executor])]),
        Err(RoleNotDelegated)
    );
    // Every intermediate, not only the nearest.
    assert_eq!(
        delegated(Executor, vec![issuing(&[Executor]), None]),
        Err(RoleNotDelegated)
    );
    assert_eq!(
        delegated(
            Executor,
            vec![issuing(&[Executor]), issuing(&[Agent, Executor])]
        ),
        Ok(Executor)
    );
    // Attenuation: an intermediate claiming more than the one above it breaks the chain, even
    // for a role both may issue.
    assert_eq!(
        delegated(Agent, vec![issuing(&[Agent, Executor]), None]),
        Err(RoleNotDelegated)
    );
    assert_eq!(
        delegated(
            Agent,
            vec![
                issuing(&[Agent]),
                issuing(&[Agent, Approver]),
                issuing(&[Agent])
            ]
        ),
        Err(RoleNotDelegated)
    );
    // A malformed sebIssuableRoles delegates nothing.
    let broken = Some(IssuableRoles::from_der(&[0x30, 0x03, 0x0a, 0x01, 0x03]));
    assert!(matches!(broken, Some(Err(_))));
    assert_eq!(delegated(Agent, vec![broken]), Err(RoleNotDelegated));
    // No role at all is the old wrong_role.
    let c = chain(cert(1, None), vec![]);
    assert_eq!(delegated_role(&c).map_err(|(code, _)| code), Err(WrongRole));
}

#[test]
fn the_decision_denies_an_agent_whose_intermediate_may_not_issue_agents() {
    let req = request("deploy.x", "dev/x", json!({}));
    let ok = chain(agent(set(GRANTS)), vec![intermediate(2, None)]);
    assert_eq!(code(&decide_now(&ok, &req)), None);
    let executors_only = chain(
        agent(set(GRANTS)),
        vec![intermediate(2, issuing(&[RoleKind::Executor]))],
    );
    let decision = decide_now(&executors_only, &req);
    assert_eq!(code(&decision), Some(RoleNotDelegated));
    let Decision::Deny { reason, .. } = decision else {
        unreachable!()
    };
    assert!(
        reason.contains("depth 1") && reason.contains("executor"),
        "{reason}"
    );
    // A non-agent is wrong_role before delegation is looked at.
    let executor = chain(leaf_with(RoleKind::Executor), vec![intermediate(2, None)]);
    assert_eq!(code(&decide_now(&executor, &req)), Some(WrongRole));
}

const LEAF: &str = r#"
[[grant]]
operation = "deploy.rollout"
resource  = "prod/payments/api"
max_ttl   = "60s"
params.replicas = { min = 2, max = 5 }
params.image    = { prefix = "registry.internal/payments/api:" }
approval  = { required = 2, group = "sre-leads" }
"#;

const INTERMEDIATE: &str = r#"
[[grant]]
operation = "deploy.*"
resource  = "prod/payments/*"
max_ttl   = "5m"
params.replicas = { min = 1, max = 10 }
params.image    = { prefix = "registry.internal/payments/" }
approval  = { required = 1, group = "sre-leads" }
"#;

const TOP: &str = r#"
[[grant]]
operation = "deploy.*"
resource  = "prod/**"
max_ttl   = "10m"
params_any = true
params.image = { prefix = "registry.internal/" }
"#;

fn leaf_req() -> Request {
    request(
        "deploy.rollout",
        "prod/payments/api",
        json!({"replicas": 3, "image": "registry.internal/payments/api:7"}),
    )
}

fn escalates(leaf: &str, ancestors: &[Option<&str>]) -> Option<DenyCode> {
    let ancestors = ancestors
        .iter()
        .enumerate()
        .map(|(i, g)| {
            cert(
                2 + i as u8,
                g.map(|t| Ok(GrantSet::from_toml_str(t).unwrap())),
            )
        })
        .collect();
    code(&decide_now(
        &chain(agent(set(leaf)), ancestors),
        &leaf_req(),
    ))
}

#[test]
fn attenuated_chains_allow() {
    assert_eq!(escalates(LEAF, &[]), None);
    assert_eq!(escalates(LEAF, &[Some(INTERMEDIATE)]), None);
    assert_eq!(escalates(LEAF, &[Some(INTERMEDIATE), Some(TOP)]), None);
    assert_eq!(escalates(LEAF, &[None, Some(TOP)]), None);
    assert_eq!(
        escalates(LEAF, &[Some(INTERMEDIATE), None, Some(TOP)]),
        None
    );
}

#[test]
fn leaf_claiming_more_than_its_intermediate_is_escalation() {
    let wider = [
        LEAF.replace("\"60s\"", "\"6m\""),                    // lifetime
        LEAF.replace("\"deploy.rollout\"", "\"*\""),          // operation (wider pattern)
        LEAF.replace("\"deploy.rollout\"", "\"db.migrate\""), // operation (elsewhere)
        LEAF.replace("\"prod/payments/api\"", "\"prod/**\""), // resource
        LEAF.replace("\"prod/payments/api\"", "\"prod/payments/*/x\""), // resource (deeper)
        LEAF.replace("max = 5", "max = 11"),                  // range
        LEAF.replace(
            "\"registry.internal/payments/api:\"",
            "\"registry.internal/\"",
        ), // prefix
        LEAF.replace("params.replicas = { min = 2, max = 5 }\n", ""), // dropped constraint
        format!("{LEAF}params.force = {{ equals = true }}\n"), // unnamed param
        format!("{LEAF}params_any = true\n"),                 // params_any
        LEAF.replace("approval  = { required = 2, group = \"sre-leads\" }\n", ""), // no approval
        LEAF.replace("\"sre-leads\"", "\"dev-leads\""),       // other group
    ];
    for (i, leaf) in wider.iter().enumerate() {
        GrantSet::from_toml_str(leaf).unwrap();
        assert_eq!(
            escalates(leaf, &[Some(INTERMEDIATE)]),
            Some(GrantChainEscalation),
            "case {i}: {leaf}"
        );
    }
    // Weakened approval relative to the intermediate's rule.
    let strict = INTERMEDIATE.replace("required = 1", "required = 3");
    assert_eq!(
        escalates(LEAF, &[Some(&strict)]),
        Some(GrantChainEscalation)
    );
    // A second, unrelated leaf grant is enough to break the chain.
    let extra = format!(
        "{LEAF}\n[[grant]]\noperation = \"k8s.read.pods\"\nresource = \"prod/x\"\nmax_ttl = \"1s\"\n"
    );
    assert_eq!(
        escalates(&extra, &[Some(INTERMEDIATE)]),
        Some(GrantChainEscalation)
    );
}

#[test]
fn intermediate_claiming_more_than_its_parent_is_escalation() {
    // The leaf is within both, but the intermediate exceeds the top (staging is not prod).
    let wide_intermediate = INTERMEDIATE.replace("\"prod/payments/*\"", "\"*/payments/*\"");
    assert_eq!(escalates(LEAF, &[Some(&wide_intermediate)]), None);
    assert_eq!(
        escalates(LEAF, &[Some(&wide_intermediate), Some(TOP)]),
        Some(GrantChainEscalation)
    );
    let long_intermediate = INTERMEDIATE.replace("\"5m\"", "\"1h\"");
    assert_eq!(
        escalates(LEAF, &[Some(&long_intermediate), Some(TOP)]),
        Some(GrantChainEscalation)
    );
}

#[test]
fn grantless_intermediate_does_not_break_the_bound() {
    // Leaf → (no grants) → TOP: the leaf is still bounded by TOP.
    let outside_top = LEAF.replace("\"registry.internal/payments/api:\"", "\"evil.example/\"");
    assert_eq!(
        escalates(&outside_top, &[None, Some(TOP)]),
        Some(GrantChainEscalation)
    );
    assert_eq!(
        escalates(&outside_top, &[Some(INTERMEDIATE), None, Some(TOP)]),
        Some(GrantChainEscalation)
    );
    // Leaf within INTERMEDIATE, INTERMEDIATE within TOP, but with a grantless hop between.
    assert_eq!(
        escalates(LEAF, &[None, Some(INTERMEDIATE), None, Some(TOP)]),
        None
    );
    let long_leaf = LEAF.replace("\"60s\"", "\"20m\"");
    assert_eq!(
        escalates(&long_leaf, &[None, None, Some(TOP)]),
        Some(GrantChainEscalation)
    );
}

#[test]
fn deny_codes_are_stable_and_unique() {
    let codes: HashSet<&str> = DenyCode::ALL.iter().map(DenyCode::as_str).collect();
    assert_eq!(codes.len(), DenyCode::ALL.len());
    for c in DenyCode::ALL {
        assert!(c
            .as_str()
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b == b'_'));
        assert_eq!(c.to_string(), c.as_str());
    }
}

/// Whether any grant of `set` allows the (well-formed) request.
fn set_allows(set: &GrantSet, op: &str, res: &str, params: &Value) -> bool {
    let Value::Object(map) = params else {
        return false;
    };
    set.grants
        .iter()
        .any(|g| check_grant(g, op, res, map).is_ok())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2048))]

    #[test]
    fn covered_child_allows_nothing_the_parent_refuses(
        parent in testing::grant(),
        child in testing::grant(),
        reqs in prop::collection::vec(testing::request(), 16),
    ) {
        if covers(&parent, &child) {
            for (op, res, params) in &reqs {
                let Value::Object(map) = params else { continue };
                if check_grant(&child, op, res, map).is_ok() {
                    prop_assert!(
                        check_grant(&parent, op, res, map).is_ok(),
                        "child {child:?} allows {op} {res} {params} but parent {parent:?} does not"
                    );
                }
            }
            prop_assert!(child.max_ttl <= parent.max_ttl);
        }
    }

    #[test]
    fn covered_set_through_decide(
        parent in testing::grant_set(),
        child in testing::grant_set(),
        reqs in prop::collection::vec(testing::request(), 8),
    ) {
        let through_chain = chain(agent(Some(Ok(child.clone()))), vec![cert(2, Some(Ok(parent.clone())))]);
        let alone = chain(agent(Some(Ok(parent.clone()))), vec![]);
        let covered = grant_set_covered(&parent, &child).is_ok();
        for (op, res, params) in reqs {
            let req = request(&op, &res, params.clone());
            let d = decide_now(&through_chain, &req);
            if !covered {
                prop_assert_eq!(code(&d), Some(GrantChainEscalation));
                continue;
            }
            if let Decision::Allow { token_ttl, .. } = d {
                prop_assert!(set_allows(&child, &op, &res, &params));
                match decide_now(&alone, &req) {
                    Decision::Allow { token_ttl: parent_ttl, .. } => {
                        prop_assert!(token_ttl <= parent_ttl.max(token_ttl));
                    }
                    other => prop_assert!(false, "parent refuses what covered child allows: {other:?}"),
                }
            }
        }
    }

    #[test]
    fn every_grant_covers_itself(g in testing::grant()) {
        prop_assert!(covers(&g, &g));
    }

    #[test]
    fn narrowing_stays_covered(g in testing::grant(), shrink in 0u64..30) {
        // Shorter lifetime, stricter approval, params_any dropped, ranges shrunk.
        let mut child = g.clone();
        child.max_ttl = g.max_ttl - Duration::from_secs(shrink);
        child.params_any = false;
        if let Some(rule) = &mut child.approval {
            rule.required += 1;
        }
        for c in child.params.values_mut() {
            if let Constraint::Range { min, max } = c {
                *min = (*min + 1).min(*max);
            }
            if let Constraint::OneOf(values) = c {
                values.truncate(1);
            }
        }
        prop_assert!(covers(&g, &child), "{g:?} should cover {child:?}");
    }

    #[test]
    fn decide_never_panics_on_odd_requests(
        op in "\\PC{0,12}",
        res in "[a-z./%\\\\*\u{440}\u{ff0f} ]{0,16}",
        params in testing::param_value(),
    ) {
        let c = chain(agent(set(GRANTS)), vec![]);
        let _ = decide_now(&c, &request(&op, &res, params));
    }
}

#[test]
fn random_pairs_are_covered_often_enough_to_test() {
    use proptest::strategy::ValueTree;
    use proptest::test_runner::TestRunner;
    let mut runner = TestRunner::deterministic();
    let strategy = (testing::grant(), testing::grant());
    let mut covered = 0;
    for _ in 0..4000 {
        let (p, c) = strategy.new_tree(&mut runner).unwrap().current();
        covered += usize::from(covers(&p, &c) && p != c);
    }
    assert!(
        covered >= 20,
        "only {covered} of 4000 random pairs were covered"
    );
}

/// The demo (`deploy/demo.sh`) shows a write executed at once, one waiting for two approvers
/// and one denied, all from `deploy/demo-grants.toml`.
#[test]
fn the_demo_grants_decide_as_the_demo_shows() {
    let chain = chain(
        agent(set(include_str!("../../deploy/demo-grants.toml"))),
        vec![],
    );
    let write = |name: &str| {
        let req = request(
            "demo.write",
            "demo/files",
            json!({"name": name, "text": "x"}),
        );
        match decide_now(&chain, &req) {
            Decision::Allow { approval, .. } => approval.map(|a| (a.required, a.group)),
            other => panic!("{name}: {other:?}"),
        }
    };
    assert_eq!(write("hello.txt"), None);
    assert_eq!(
        write("release-notes.txt"),
        Some((2, "demo-approvers".to_string()))
    );
    let req = request("demo.delete", "demo/files", json!({"name": "hello.txt"}));
    assert_eq!(
        code(&decide_now(&chain, &req)),
        Some(DenyCode::OperationNotGranted)
    );
}

/// What `chain` decides for `params` on the demo's write: the approval rule, or the code.
fn demo_write(chain: &ChainView, params: Value) -> Result<Option<(u32, String)>, DenyCode> {
    match decide_now(chain, &request("demo.write", "demo/files", params)) {
        Decision::Allow { approval, .. } => Ok(approval.map(|a| (a.required, a.group))),
        Decision::Deny { code, .. } => Err(code),
    }
}

/// A laxer grant later in the list does not stand in for a stricter one whose scope the
/// request is in (outside review: a lookalike `NAME` beside `name`, or a parameter the strict
/// grant does not permit, made the demo's release files skip their two approvals).
#[test]
fn a_laxer_grant_does_not_stand_in_for_a_stricter_one_the_request_is_within() {
    let demo = chain(
        agent(set(include_str!("../../deploy/demo-grants.toml"))),
        vec![],
    );
    let two = Ok(Some((2, "demo-approvers".to_string())));
    // A lookalike of a constrained name beside it: the strict grant refuses, and still
    // governs the request.
    for shadow in ["NAME", "na\u{200b}me", "Name"] {
        let params = json!({"name": "release-notes.txt", shadow: "x", "text": "t"});
        assert_eq!(
            demo_write(&demo, params),
            Err(ParamConstraintViolated),
            "{shadow}"
        );
        // The lookalike in place of the real name: refused too, not left to the lax grant.
        let params = json!({shadow: "release-notes.txt", "text": "t"});
        assert_eq!(
            demo_write(&demo, params),
            Err(ParamConstraintViolated),
            "{shadow} alone"
        );
    }
    assert_eq!(
        demo_write(&demo, json!({"name": "release-notes.txt", "text": "t"})),
        two
    );
    assert_eq!(
        demo_write(&demo, json!({"name": "notes.txt", "text": "t"})),
        Ok(None)
    );
    // The constrained value in another type, which an executor that converts types acts on
    // as the value itself (outside review: `["release-1"]` and `"50"` were granted at once by
    // the lax grant): the strict grant still governs.
    for (name, why) in [
        (json!(["release-1"]), "a one-element array"),
        (json!([["release-1"]]), "nested"),
    ] {
        assert_eq!(
            demo_write(&demo, json!({"name": name, "text": "t"})),
            two,
            "{why}"
        );
    }
    // Any value of another type than the constraint's counts, whatever it holds: a program
    // that converts types may read it as a value within the constraint.
    assert_eq!(
        demo_write(&demo, json!({"name": ["notes.txt"], "text": "t"})),
        two
    );
    assert_eq!(
        demo_write(&demo, json!({"name": "notes.txt", "text": "t"})),
        Ok(None)
    );
    let scale = r#"
        [[grant]]
        operation = "demo.write"
        resource = "demo/files"
        max_ttl = "60s"
        params.replicas = { min = 10, max = 100 }
        params.strategy = { one_of = ["rolling", "5"] }
        params.canary = { equals = true }
        params_any = true
        approval = { required = 2, group = "demo-approvers" }

        [[grant]]
        operation = "demo.write"
        resource = "demo/files"
        max_ttl = "60s"
        params_any = true
    "#;
    let c = chain(agent(set(scale)), vec![]);
    let exact = json!({"replicas": 50, "strategy": "rolling", "canary": true});
    assert_eq!(demo_write(&c, exact.clone()), two);
    for (member, value) in [
        ("replicas", json!("50")),
        ("replicas", json!(" +50 ")),
        ("replicas", json!("0x32")),
        ("replicas", json!("\u{ff15}\u{ff10}")),
        ("replicas", json!("\u{1f}50")),
        ("replicas", json!(50.0)),
        ("replicas", json!([50])),
        ("replicas", json!("500")),
        ("replicas", json!(null)),
        ("strategy", json!(5)),
        ("strategy", json!(["rolling"])),
        ("canary", json!("true")),
        ("canary", json!("t")),
        ("canary", json!(1)),
        ("canary", json!(["true"])),
    ] {
        let mut params = exact.clone();
        params[member] = value.clone();
        assert_eq!(demo_write(&c, params), two, "{member}: {value}");
    }
    // A value of the constraint's own type that it refuses is outside the strict grant, and
    // falls to the lax grant, as the first-match order says.
    for (member, value) in [
        ("replicas", json!(500)),
        ("strategy", json!("blue-green")),
        ("canary", json!(false)),
    ] {
        let mut params = exact.clone();
        params[member] = value.clone();
        assert_eq!(demo_write(&c, params), Ok(None), "{member}: {value}");
    }
    // A later grant that itself takes the other type is a deliberate exception.
    let text_exception = format!(
        "{}{}",
        &scale[..scale.rfind("[[grant]]").unwrap()],
        r#"[[grant]]
        operation = "demo.write"
        resource = "demo/files"
        max_ttl = "60s"
        params.replicas = { equals = "50" }
        params_any = true
        "#
    );
    let c = chain(agent(set(&text_exception)), vec![]);
    let mut text = exact.clone();
    text["replicas"] = json!("50");
    assert_eq!(demo_write(&c, text.clone()), Ok(None));
    // A parameter the strict grant takes under params_any need not be named by the exception.
    text["note"] = json!("x");
    assert_eq!(demo_write(&c, text), Ok(None));
    assert_eq!(demo_write(&c, exact.clone()), two);

    // The strict grant without params_any: an extra parameter moves the request to the lax
    // grant, which allows it, but the strict grant's two approvals still hold.
    let strict_first = r#"
        [[grant]]
        operation = "demo.write"
        resource = "demo/files"
        max_ttl = "60s"
        params.name = { prefix = "release-" }
        approval = { required = 2, group = "demo-approvers" }

        [[grant]]
        operation = "demo.write"
        resource = "demo/files"
        max_ttl = "60s"
        params_any = true
    "#;
    let c = chain(agent(set(strict_first)), vec![]);
    assert_eq!(
        demo_write(&c, json!({"name": "release-notes.txt", "text": "t"})),
        two
    );
    assert_eq!(demo_write(&c, json!({"name": "release-notes.txt"})), two);
    assert_eq!(
        demo_write(&c, json!({"name": "notes.txt", "text": "t"})),
        Ok(None)
    );
    let then_as_strict = format!(
        "{strict_first}\n[[grant]]\noperation = \"demo.write\"\nresource = \"demo/files\"\nmax_ttl = \"60s\"\nparams_any = true\napproval = {{ required = 3, group = \"demo-approvers\" }}\n"
    );
    let c = chain(agent(set(&then_as_strict)), vec![]);
    // The lax grant (#1) still comes first and decides, with the strict grant's rule.
    assert_eq!(
        demo_write(&c, json!({"name": "release-notes.txt", "text": "t"})),
        two
    );
    let strict_then_stricter = strict_first.replace(
        "params_any = true",
        "params_any = true\n        approval = { required = 3, group = \"demo-approvers\" }",
    );
    let c = chain(agent(set(&strict_then_stricter)), vec![]);
    assert_eq!(
        demo_write(&c, json!({"name": "release-notes.txt", "text": "t"})),
        Ok(Some((3, "demo-approvers".to_string())))
    );

    // A later grant that names the parameter the strict one does not permit is a deliberate
    // exception: a dry run of a production change needs no approvals.
    let dry_run = r#"
        [[grant]]
        operation = "demo.write"
        resource = "demo/files"
        max_ttl = "60s"
        params.env = { equals = "prod" }
        approval = { required = 2, group = "demo-approvers" }

        [[grant]]
        operation = "demo.write"
        resource = "demo/files"
        max_ttl = "60s"
        params.env = { equals = "prod" }
        params.dry_run = { equals = true }
    "#;
    let c = chain(agent(set(dry_run)), vec![]);
    assert_eq!(
        demo_write(&c, json!({"env": "prod", "dry_run": true})),
        Ok(None)
    );
    assert_eq!(demo_write(&c, json!({"env": "prod"})), two);
    // Two groups' rules on one request cannot both be met: refused.
    let other_group = strict_first.replace(
        "params_any = true",
        "params_any = true\n        approval = { required = 1, group = \"other-team\" }",
    );
    let c = chain(agent(set(&other_group)), vec![]);
    assert_eq!(
        demo_write(&c, json!({"name": "release-notes.txt", "text": "t"})),
        Err(ParamConstraintViolated)
    );
    assert_eq!(
        demo_write(&c, json!({"name": "notes.txt"})),
        Ok(Some((1, "other-team".to_string())))
    );

    // First match is otherwise unchanged: a grant that constrains nothing does not govern
    // the requests a later, narrower grant allows.
    let open_first = r#"
        [[grant]]
        operation = "demo.write"
        resource = "demo/files"
        max_ttl = "60s"
        approval = { required = 2, group = "demo-approvers" }

        [[grant]]
        operation = "demo.write"
        resource = "demo/files"
        max_ttl = "60s"
        params.replicas = { min = 0, max = 3 }
    "#;
    let c = chain(agent(set(open_first)), vec![]);
    assert_eq!(demo_write(&c, json!({"replicas": 2})), Ok(None));
    assert_eq!(demo_write(&c, json!({})), two);
}

/// An issuer's approval rule holds below it (outside review: a team CA with the demo's grants
/// issued an agent only the lax grant, and that agent's release files needed no approvals).
#[test]
fn an_issuers_approval_rule_holds_for_the_agents_below_it() {
    let demo = include_str!("../../deploy/demo-grants.toml");
    let lax_only = r#"
        [[grant]]
        operation = "demo.write"
        resource = "demo/files"
        max_ttl = "60s"
        params_any = true
    "#;
    let c = chain(agent(set(lax_only)), vec![cert(2, set(demo))]);
    assert_eq!(
        demo_write(&c, json!({"name": "release-notes.txt", "text": "t"})),
        Ok(Some((2, "demo-approvers".to_string())))
    );
    assert_eq!(demo_write(&c, json!({"name": "notes.txt"})), Ok(None));
    // The same group with more approvers below: the leaf's count holds.
    let more = demo.replace("required = 2", "required = 3");
    let c = chain(agent(set(&more)), vec![cert(2, set(demo))]);
    assert_eq!(
        demo_write(&c, json!({"name": "release-notes.txt"})),
        Ok(Some((3, "demo-approvers".to_string())))
    );
    // Another group's rule below an issuer's (attenuation holds: the issuer's lax grant
    // covers any rule) cannot be met by one token's approvals.
    let other_group = r#"
        [[grant]]
        operation = "demo.write"
        resource = "demo/files"
        max_ttl = "60s"
        params_any = true
        approval = { required = 1, group = "other-team" }
    "#;
    let c = chain(agent(set(other_group)), vec![cert(2, set(demo))]);
    let d = decide_now(
        &c,
        &request("demo.write", "demo/files", json!({"name": "release-x"})),
    );
    assert_eq!(code(&d), Some(GrantChainEscalation), "{d:?}");
    assert!(format!("{d:?}").contains("cannot meet both"), "{d:?}");
    assert_eq!(
        demo_write(&c, json!({"name": "notes.txt"})),
        Ok(Some((1, "other-team".to_string())))
    );
}

/// Clock edges (docs/RELIABILITY.md): the other side of each bound `certificate_validity_and_
/// revocation` refuses. A certificate valid from this very second is accepted, and so is one
/// with a second left (the token is cut to it); a second earlier or later is refused.
#[test]
fn client_certificate_windows_hold_to_the_second_on_both_sides() {
    let req = request("deploy.x", "dev/x", json!({}));
    let ok = || chain(agent(set(GRANTS)), vec![cert(2, None)]);
    for depth in [0, 1] {
        let edit = |f: &dyn Fn(&mut CertFacts)| {
            let mut c = ok();
            f(if depth == 0 {
                &mut c.leaf
            } else {
                &mut c.ancestors[0]
            });
            code(&decide_now(&c, &req))
        };
        assert_eq!(edit(&|c| c.not_before = now()), None, "depth {depth}");
        assert_eq!(
            edit(&|c| c.not_before = now() + Duration::from_secs(1)),
            Some(CertificateNotYetValid),
            "depth {depth}"
        );
        assert_eq!(
            edit(&|c| c.not_after = now() + Duration::from_secs(1)),
            None,
            "depth {depth}"
        );
        assert_eq!(
            edit(&|c| c.not_after = now()),
            Some(CertificateExpired),
            "depth {depth}"
        );
    }
}

#[test]
fn attenuation_verdicts_are_remembered_by_the_grants_along_the_path_only() {
    let wide = "[[grant]]\noperation = \"deploy.*\"\nresource = \"prod/**\"\nmax_ttl = \"60s\"\nparams_any = true\n";
    let narrow = "[[grant]]\noperation = \"deploy.x\"\nresource = \"prod/a\"\nmax_ttl = \"60s\"\nparams_any = true\n";
    let key = |leaf: CertFacts, ancestors: Vec<CertFacts>| chain(leaf, ancestors).grants_key;
    // Another leaf (serial, validity) with the same grants under the same CA: the same key,
    // so a respelt or re-issued certificate does not make the check run again.
    let mut other = agent(set(narrow));
    other.serial = sn(9);
    other.not_after = now() + Duration::from_secs(60);
    let first = key(agent(set(narrow)), vec![cert(2, set(wide))]);
    assert!(first.is_some());
    assert_eq!(first, key(other, vec![cert(3, set(wide))]));
    // A root-issued agent's one set has nothing to compare: nothing is remembered.
    assert_eq!(key(agent(set(narrow)), vec![]), None);
    // Other grants, or the same grants at other places in the path: another key.
    assert_ne!(first, key(agent(set(wide)), vec![cert(2, set(wide))]));
    assert_ne!(
        first,
        key(agent(set(narrow)), vec![cert(2, None), cert(3, set(wide))])
    );
    assert_ne!(first, key(agent(set(wide)), vec![cert(2, set(narrow))]));
    // The verdict under a key is the check's own, allowed or denied.
    let escalating = chain(agent(set(wide)), vec![cert(2, set(narrow))]);
    for _ in 0..2 {
        assert!(matches!(
            decide_now(&escalating, &request("deploy.x", "prod/a", json!({}))),
            Decision::Deny {
                code: DenyCode::GrantChainEscalation,
                ..
            }
        ));
    }
}
