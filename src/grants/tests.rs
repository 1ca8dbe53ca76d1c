//! Grant schema round trips (TOML → DER → TOML), validation and the refusals a security team
//! relies on.

use proptest::prelude::*;

use super::*;

const EXAMPLE: &str = r#"
[[grant]]
operation = "deploy.rollout"          # exact, or prefix wildcard "deploy.*"
resource  = "prod/payments/*"         # '*' one path segment, '**' any number
max_ttl   = "60s"
params.replicas = { min = 1, max = 10 }
params.image    = { prefix = "registry.internal/payments/" }
params.strategy = { one_of = ["rolling", "canary"] }
params.region   = { equals = "eu-west-1" }
approval  = { required = 2, group = "sre-leads" }   # optional

[[grant]]
operation = "k8s.read.*"
resource  = "prod/**"
max_ttl   = "30s"
params_any = true                      # this grant does not constrain parameters
"#;

fn example() -> GrantSet {
    GrantSet::from_toml_str(EXAMPLE).unwrap()
}

#[test]
fn architecture_example_parses() {
    let set = example();
    assert_eq!(set.grants.len(), 2);
    let g = &set.grants[0];
    assert_eq!(g.operation, "deploy.rollout");
    assert_eq!(g.max_ttl, Duration::from_secs(60));
    assert_eq!(g.params["replicas"], Constraint::Range { min: 1, max: 10 });
    assert_eq!(
        g.params["strategy"],
        Constraint::OneOf(vec![
            Scalar::String("rolling".into()),
            Scalar::String("canary".into())
        ])
    );
    assert_eq!(
        g.approval,
        Some(ApprovalRule {
            required: 2,
            group: "sre-leads".into()
        })
    );
    assert!(set.grants[1].params_any);
    assert_eq!(GrantSet::from_toml_str(&set.to_toml_string()).unwrap(), set);
    let text = set.to_toml_string();
    assert!(
        text.contains("params.replicas = { min = 1, max = 10 }\n"),
        "{text}"
    );
    assert!(
        text.contains("approval = { required = 2, group = \"sre-leads\" }\n"),
        "{text}"
    );
    assert_eq!(GrantSet::from_der(&set.to_der().unwrap()).unwrap(), set);
}

fn toml_err(body: &str) -> String {
    let text = format!("[[grant]]\n{body}\n");
    match GrantSet::from_toml_str(&text) {
        Ok(set) => panic!("accepted {body:?}: {set:?}"),
        Err(e) => e.to_string(),
    }
}

const BASE: &str = "operation = \"deploy.x\"\nresource = \"prod/*\"\nmax_ttl = \"60s\"";

#[test]
fn toml_rejects_bad_rules() {
    let cases = [
        ("unknown top key", format!("{BASE}\nttl = \"5s\"")),
        (
            "unknown constraint key",
            format!("{BASE}\nparams.a = {{ equal = 1 }}"),
        ),
        (
            "unknown approval key",
            format!("{BASE}\napproval = {{ required = 1, group = \"g\", of = 2 }}"),
        ),
        ("bad ttl", BASE.replace("60s", "60")),
        ("zero ttl", BASE.replace("60s", "0s")),
        ("fractional ttl", BASE.replace("60s", "1.5m")),
        (
            "required 0",
            format!("{BASE}\napproval = {{ required = 0, group = \"g\" }}"),
        ),
        (
            "required negative",
            format!("{BASE}\napproval = {{ required = -1, group = \"g\" }}"),
        ),
        (
            "required huge",
            format!("{BASE}\napproval = {{ required = 65, group = \"g\" }}"),
        ),
        (
            "empty group",
            format!("{BASE}\napproval = {{ required = 1, group = \"\" }}"),
        ),
        (
            "min > max",
            format!("{BASE}\nparams.a = {{ min = 5, max = 1 }}"),
        ),
        ("min only", format!("{BASE}\nparams.a = {{ min = 5 }}")),
        (
            "two kinds",
            format!("{BASE}\nparams.a = {{ equals = 1, prefix = \"x\" }}"),
        ),
        ("no kind", format!("{BASE}\nparams.a = {{}}")),
        (
            "empty one_of",
            format!("{BASE}\nparams.a = {{ one_of = [] }}"),
        ),
        (
            "dup one_of",
            format!("{BASE}\nparams.a = {{ one_of = [1, 1] }}"),
        ),
        (
            "float equals",
            format!("{BASE}\nparams.a = {{ equals = 1.5 }}"),
        ),
        (
            "float range",
            format!("{BASE}\nparams.a = {{ min = 1.0, max = 2 }}"),
        ),
        (
            "table equals",
            format!("{BASE}\nparams.a = {{ equals = {{ x = 1 }} }}"),
        ),
        (
            "unsafe integer",
            format!("{BASE}\nparams.a = {{ min = 0, max = 9007199254740992 }}"),
        ),
        (
            "bad param name",
            format!("{BASE}\nparams.\"a b\" = {{ equals = 1 }}"),
        ),
        ("uppercase op", BASE.replace("deploy.x", "Deploy.x")),
        ("op wildcard mid", BASE.replace("deploy.x", "deploy.*.x")),
        ("op bare prefix", BASE.replace("deploy.x", "deploy*")),
        ("resource traversal", BASE.replace("prod/*", "prod/../*")),
        ("resource leading slash", BASE.replace("prod/*", "/prod/*")),
        ("resource partial glob", BASE.replace("prod/*", "prod/pay*")),
        ("resource percent", BASE.replace("prod/*", "prod%2F*")),
        (
            "missing resource",
            "operation = \"a\"\nmax_ttl = \"1s\"".to_owned(),
        ),
    ];
    for (what, body) in cases {
        let e = toml_err(&body);
        assert!(!e.is_empty(), "{what}");
    }
    assert!(matches!(
        GrantSet::from_toml_str(""),
        Err(GrantError::InvalidGrantSet { .. })
    ));
    assert!(matches!(
        GrantSet::from_toml_str("[[grants]]"),
        Err(GrantError::ParseToml { .. })
    ));
}

#[test]
fn errors_name_grant_and_field() {
    let text = format!(
        "[[grant]]\n{BASE}\n\n[[grant]]\n{}\nparams.a = {{ min = 3, max = 1 }}\n",
        BASE
    );
    let e = GrantSet::from_toml_str(&text).unwrap_err().to_string();
    assert_eq!(e, "grant #1: params.a: range is empty: min 3 > max 1");
}

#[test]
fn to_der_validates() {
    let mut set = example();
    set.grants[0].operation = "bad op".into();
    assert!(matches!(
        set.to_der(),
        Err(GrantError::InvalidGrant { index: 0, .. })
    ));
    let mut set = example();
    set.grants[1].max_ttl = Duration::from_millis(1500);
    assert!(set.to_der().is_err());
}

#[test]
fn issuable_roles() {
    use RoleKind::{Agent, Approver, Broker, Executor};
    assert_eq!(IssuableRoles::default(), IssuableRoles::AGENTS_ONLY);
    assert_eq!(IssuableRoles::default().kinds(), [Agent]);
    let all: IssuableRoles = "executor, agent,approver,agent".parse().unwrap();
    assert_eq!(all, IssuableRoles::ALL);
    assert_eq!(all.to_string(), "agent,approver,executor");
    for set in [
        IssuableRoles::AGENTS_ONLY,
        IssuableRoles::ALL,
        IssuableRoles::new([Executor]).unwrap(),
        IssuableRoles::new([Approver, Executor]).unwrap(),
    ] {
        assert_eq!(
            IssuableRoles::from_der(&set.to_der().unwrap()).unwrap(),
            set
        );
        assert!(set.is_subset_of(IssuableRoles::ALL));
        assert!(!set.contains(Broker));
    }
    assert!(!IssuableRoles::ALL.is_subset_of(IssuableRoles::AGENTS_ONLY));
    assert!(IssuableRoles::AGENTS_ONLY.is_subset_of(IssuableRoles::ALL));
    // Known answer: SEQUENCE { ENUMERATED 0, ENUMERATED 2 }.
    let agent_executor = IssuableRoles::new([Executor, Agent]).unwrap();
    assert_eq!(
        agent_executor.to_der().unwrap(),
        [0x30, 0x06, 0x0a, 0x01, 0x00, 0x0a, 0x01, 0x02]
    );
    // Broker is never issuable, an empty set is not a set of roles, names must be known.
    for bad in [
        "broker",
        "agent,broker",
        "",
        "agent,,executor",
        "admin",
        "Agent",
    ] {
        assert!(bad.parse::<IssuableRoles>().is_err(), "{bad:?}");
    }
    // The empty list is a CA that delegates no role (a cross-certificate), not "agents only"
    // as a missing extension is.
    let none = IssuableRoles::from_der(&[0x30, 0x00]).unwrap();
    assert_eq!(none, IssuableRoles::NONE);
    assert_eq!(none.to_der().unwrap(), [0x30, 0x00]);
    assert!([Agent, Approver, Executor, Broker]
        .into_iter()
        .all(|k| !none.contains(k)));
    assert!(IssuableRoles::new([]).is_err());
    // Decoding: only the one sorted, duplicate-free encoding, without broker.
    for der in [
        &[0x30, 0x06, 0x0a, 0x01, 0x02, 0x0a, 0x01, 0x00][..], // unsorted
        &[0x30, 0x06, 0x0a, 0x01, 0x00, 0x0a, 0x01, 0x00],     // duplicate
        &[0x30, 0x03, 0x0a, 0x01, 0x03],                       // broker
        &[0x30, 0x03, 0x0a, 0x01, 0x07],                       // unknown role
        &[0x30, 0x03, 0x0a, 0x01, 0x00, 0x00],                 // trailing byte
        &[0x30, 0x81, 0x03, 0x0a, 0x01, 0x00],                 // long-form length
    ] {
        assert!(IssuableRoles::from_der(der).is_err(), "{der:02x?}");
    }
}

#[test]
fn roles() {
    for kind in [
        RoleKind::Agent,
        RoleKind::Approver,
        RoleKind::Executor,
        RoleKind::Broker,
    ] {
        assert_eq!(kind.to_string().parse::<RoleKind>().unwrap(), kind);
    }
    assert!("admin".parse::<RoleKind>().is_err());
    let agent = Role::new(RoleKind::Agent, vec![]).unwrap();
    assert_eq!(Role::from_der(&agent.to_der().unwrap()).unwrap(), agent);
    let approver = Role::new(
        RoleKind::Approver,
        vec!["sre-leads".into(), "dba".into(), "dba".into()],
    )
    .unwrap();
    assert_eq!(approver.groups, vec!["dba", "sre-leads"]);
    assert_eq!(
        Role::from_der(&approver.to_der().unwrap()).unwrap(),
        approver
    );
    assert!(Role::new(RoleKind::Approver, vec![]).is_err());
    assert!(Role::new(RoleKind::Agent, vec!["g".into()]).is_err());
    assert!(Role::new(RoleKind::Approver, vec!["Bad Group".into()]).is_err());
    let unsorted = Role {
        kind: RoleKind::Approver,
        groups: vec!["b".into(), "a".into()],
    };
    assert!(unsorted.to_der().is_err());
    // Hand-encode the unsorted form: decoding must refuse it too.
    let mut groups_der = vec![
        0x30, 0x0b, 0x0a, 0x01, 0x01, 0x30, 0x06, 0x0c, 0x01, b'b', 0x0c, 0x01, b'a',
    ];
    assert!(matches!(
        Role::from_der(&groups_der),
        Err(GrantError::InvalidRole { .. })
    ));
    groups_der.swap(9, 12);
    assert_eq!(Role::from_der(&groups_der).unwrap().groups, vec!["a", "b"]);
    // Unknown enumeration value.
    assert!(Role::from_der(&[0x30, 0x05, 0x0a, 0x01, 0x07, 0x30, 0x00]).is_err());
}

#[test]
fn known_encoding() {
    // One minimal grant, encoded by hand from the ASN.1 module in docs/GRANTS.md.
    let set = GrantSet {
        grants: vec![Grant {
            operation: "a".into(),
            resource: "b".into(),
            max_ttl: Duration::from_secs(60),
            params: BTreeMap::from([("n".to_owned(), Constraint::Range { min: 1, max: 2 })]),
            params_any: false,
            approval: Some(ApprovalRule {
                required: 2,
                group: "g".into(),
            }),
        }],
    };
    let want = concat!(
        "3025",             // SEQUENCE OF Grant
        "3023",             // Grant
        "0c0161",           //   operation "a"
        "0c0162",           //   resource "b"
        "02013c",           //   maxTtlSeconds 60
        "300d",             //   params
        "300b0c016e",       //     ParamConstraint, name "n"
        "a206020101020102", //   [2] IMPLICIT IntegerRange { 1, 2 }
        "010100",           //   paramsAny FALSE
        "a0060201020c0167", // [0] IMPLICIT ApprovalRule { 2, "g" }
    );
    let got = set.to_der().unwrap();
    assert_eq!(GrantSet::from_der(&got).unwrap(), set);
    assert_eq!(hex::encode(&got), want);
}

fn sample_der() -> Vec<u8> {
    example().to_der().unwrap()
}

#[test]
fn malformed_der_is_an_error() {
    let good = sample_der();
    assert!(GrantSet::from_der(&good).is_ok());
    // Every truncation.
    for len in 0..good.len() {
        assert!(
            GrantSet::from_der(&good[..len]).is_err(),
            "truncated to {len}"
        );
    }
    // Trailing bytes.
    let mut trailing = good.clone();
    trailing.push(0);
    assert!(matches!(
        GrantSet::from_der(&trailing),
        Err(GrantError::DecodeDer { .. })
    ));
    // Wrong outer tag (SET instead of SEQUENCE).
    let mut wrong = good.clone();
    wrong[0] = 0x31;
    assert!(GrantSet::from_der(&wrong).is_err());
    // Every single-byte flip either fails or decodes to a valid set (never panics).
    for i in 0..good.len() {
        for bit in 0..8 {
            let mut flipped = good.clone();
            flipped[i] ^= 1 << bit;
            if let Ok(set) = GrantSet::from_der(&flipped) {
                assert!(set.validate().is_ok());
            }
        }
    }
    // An empty SEQUENCE OF is not a grant set.
    assert!(matches!(
        GrantSet::from_der(&[0x30, 0x00]),
        Err(GrantError::InvalidGrantSet { .. })
    ));
    // BER long-form length where DER requires short form.
    assert!(GrantSet::from_der(&[0x30, 0x81, 0x00]).is_err());
    // Too large.
    let big = vec![0u8; MAX_DER_LEN + 1];
    assert!(matches!(
        GrantSet::from_der(&big),
        Err(GrantError::DerTooLarge { .. })
    ));
}

#[test]
fn deep_nesting_is_an_error() {
    // 10,000 nested SEQUENCE headers with indefinite-looking lengths, and with real ones.
    let mut indefinite = Vec::new();
    for _ in 0..10_000 {
        indefinite.extend_from_slice(&[0x30, 0x80]);
    }
    assert!(GrantSet::from_der(&indefinite).is_err());
    assert!(Role::from_der(&indefinite).is_err());
    let mut nested: Vec<u8> = vec![0x05, 0x00];
    for _ in 0..10_000 {
        let len = nested.len();
        let mut header = vec![0x30];
        if len < 0x80 {
            header.push(len as u8);
        } else if len < 0x100 {
            header.extend_from_slice(&[0x81, len as u8]);
        } else if len < 0x10000 {
            header.extend_from_slice(&[0x82, (len >> 8) as u8, len as u8]);
        } else {
            header.extend_from_slice(&[0x83, (len >> 16) as u8, (len >> 8) as u8, len as u8]);
        }
        header.extend_from_slice(&nested);
        nested = header;
    }
    assert!(GrantSet::from_der(&nested).is_err());
    assert!(Role::from_der(&nested).is_err());
}

#[test]
fn non_canonical_der_is_refused() {
    // Two params in the wrong order decode to a valid set but are not its DER.
    let set = GrantSet::from_toml_str(&format!(
        "[[grant]]\n{BASE}\nparams.a = {{ equals = 1 }}\nparams.b = {{ equals = 2 }}\n"
    ))
    .unwrap();
    let der = set.to_der().unwrap();
    let a = der
        .windows(3)
        .position(|w| w == [0x0c, 0x01, b'a'])
        .unwrap()
        - 2;
    let b = der
        .windows(3)
        .position(|w| w == [0x0c, 0x01, b'b'])
        .unwrap()
        - 2;
    let item = b - a;
    let mut swapped = der.clone();
    swapped[a..a + item].copy_from_slice(&der[b..b + item]);
    swapped[b..b + item].copy_from_slice(&der[a..a + item]);
    assert!(matches!(
        GrantSet::from_der(&swapped),
        Err(GrantError::NonCanonicalDer { .. })
    ));
}

proptest! {
    #[test]
    fn der_round_trip(set in testing::grant_set()) {
        let der = set.to_der().unwrap();
        prop_assert_eq!(GrantSet::from_der(&der).unwrap(), set);
    }

    #[test]
    fn toml_round_trip(set in testing::grant_set()) {
        let text = set.to_toml_string();
        prop_assert_eq!(GrantSet::from_toml_str(&text).unwrap(), set);
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..256)) {
        let _ = GrantSet::from_der(&bytes);
        let _ = Role::from_der(&bytes);
        if let Ok(roles) = IssuableRoles::from_der(&bytes) {
            prop_assert_eq!(roles.to_der().unwrap(), bytes);
        }
    }

    #[test]
    fn mutated_der_never_panics(
        set in testing::grant_set(),
        edits in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..4),
    ) {
        let mut der = set.to_der().unwrap();
        for (i, b) in edits {
            let i = i.index(der.len());
            der[i] = b;
        }
        if let Ok(back) = GrantSet::from_der(&der) {
            prop_assert!(back.validate().is_ok());
            prop_assert_eq!(back.to_der().unwrap(), der);
        }
    }
}

/// One grant may not constrain two names a lenient reader confuses: from a grant file, in a
/// certificate's extension (encoded without the check), or through `to_der`. A parent with
/// `replicas` and a child adding `REPLICAS` could otherwise carry a value the parent refuses.
#[test]
fn names_that_fold_together_are_refused_in_one_grant() {
    for (a, b) in [
        ("replicas", "REPLICAS"),
        ("max_replicas", "maxReplicas"),
        ("dry-run", "dry_run"),
    ] {
        let err = toml_err(&format!(
            "{BASE}\nparams_any = true\nparams.{a} = {{ min = 1, max = 2 }}\nparams.{b} = {{ min = 99, max = 99 }}"
        ));
        assert!(err.contains("differs only in case"), "{a}/{b}: {err}");
        let mut set = example();
        set.grants[0].params = [a, b]
            .into_iter()
            .map(|n| (n.to_owned(), Constraint::Range { min: 1, max: 2 }))
            .collect();
        assert!(set.to_der().is_err(), "{a}/{b}");
        let der = asn1::encode_grants(&set).unwrap();
        assert!(
            matches!(
                GrantSet::from_der(&der),
                Err(GrantError::InvalidGrant { index: 0, .. })
            ),
            "{a}/{b}"
        );
    }
    // Distinct names are fine, in other grants too.
    let ok = format!(
        "[[grant]]\n{BASE}\nparams.replicas = {{ min = 1, max = 2 }}\nparams.region = {{ equals = \"eu\" }}\n\
         [[grant]]\n{BASE}\nparams.REPLICAS = {{ min = 1, max = 2 }}\n"
    );
    GrantSet::from_toml_str(&ok).unwrap();
}
