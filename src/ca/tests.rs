use std::time::Duration;

use x509_cert::ext::pkix::BasicConstraints;

use super::*;
use crate::testkit::{grant, now, payments_ops, spki, Ca};

fn path_len(cert: &Certificate) -> Option<u8> {
    cert.standard_extension::<BasicConstraints>()
        .unwrap()
        .unwrap()
        .path_len_constraint
}

#[test]
fn an_intermediate_claiming_more_than_its_parent_is_refused() {
    let root = Ca::root("root");
    let parent = root
        .intermediate("parent", Some(&grant("deploy.*", "prod/**", "60s")), None)
        .unwrap();
    for wider in [
        grant("*", "prod/**", "60s"),
        grant("deploy.*", "**", "60s"),
        grant("deploy.*", "prod/**", "61s"),
        grant("db.migrate", "prod/a", "1s"),
    ] {
        let err = parent
            .intermediate("child", Some(&wider), None)
            .err()
            .unwrap();
        assert!(
            matches!(&err, CaError::Escalation { ancestor, .. } if ancestor == "CN=parent"),
            "{wider}: {err}"
        );
    }
    let narrower = parent
        .intermediate("child", Some(&grant("deploy.x", "prod/a/*", "30s")), None)
        .unwrap();
    assert!(narrower.cert.extension(SEB_GRANTS_OID).is_some());
    // Under a root (no grants), anything goes.
    root.intermediate("wide", Some(&grant("*", "**", "1d")), None)
        .unwrap();
}

#[test]
fn a_leaf_claiming_more_than_its_intermediate_is_refused() {
    let root = Ca::root("root");
    let ops = payments_ops(&root);
    let err = ops
        .agent("agent", &grant("deploy.*", "prod/**", "60s"))
        .unwrap_err();
    assert!(matches!(err, CaError::Escalation { .. }), "{err}");
    assert!(err.to_string().contains("CN=ops"), "{err}");
    ops.agent(
        "agent",
        &grant("deploy.rollout", "prod/payments/api", "60s"),
    )
    .unwrap();
}

#[test]
fn path_len_is_inherited_and_bounded() {
    let root = Ca::root("root");
    let a = root.intermediate("a", None, Some(2)).unwrap();
    assert_eq!(path_len(&a.cert), Some(2));
    let b = a.intermediate("b", None, None).unwrap();
    assert_eq!(path_len(&b.cert), Some(1), "tightest bound left by a");
    let err = a.intermediate("b", None, Some(2)).err().unwrap();
    assert!(err.to_string().contains("at most 1"), "{err}");
    let c = b.intermediate("c", None, None).unwrap();
    assert_eq!(path_len(&c.cert), Some(0));
    assert!(c.intermediate("d", None, None).is_err());
    c.agent("agent", &grant("x", "y", "1s")).unwrap();
    let free = root.intermediate("free", None, None).unwrap();
    assert_eq!(path_len(&free.cert), None);
}

#[test]
fn the_signer_must_hold_the_issuers_key() {
    let root = Ca::root("root");
    let ops = root.intermediate("ops", None, None).unwrap();
    let mut wrong = ops.clone();
    wrong.key = root.key.clone();
    let err = wrong.agent("agent", &grant("x", "y", "1s")).unwrap_err();
    assert!(matches!(err, CaError::Issuer { .. }), "{err}");
    assert!(err.to_string().contains("signing key"), "{err}");
}

#[test]
fn only_a_valid_ca_issues() {
    let root = Ca::root("root");
    let (key, agent) = root.agent_with_key("agent", &grant("x", "y", "1s"));
    let as_ca = Ca {
        key,
        chain: vec![agent.clone(), root.cert.clone()],
        cert: agent,
    };
    let err = as_ca.agent("sub", &grant("x", "y", "1s")).unwrap_err();
    assert!(err.to_string().contains("not a CA"), "{err}");

    // An intermediate outliving its issuer is refused.
    let short = root.intermediate("short", None, None).unwrap();
    let err = issue_intermediate(
        &short.key,
        &short.chain,
        IntermediateRequest {
            public_key: spki(&crate::testkit::key()),
            subject: parse_subject("CN=long").unwrap(),
            grants: None,
            roles: crate::grants::IssuableRoles::default(),
            path_len: None,
            ttl: Duration::from_secs(2 * 365 * 86_400),
        },
        now(),
    )
    .unwrap_err();
    assert!(matches!(err, CaError::Validity(_)), "{err}");
    // The refusal names the issuer, its end and the longest --ttl that fits, and says what to
    // do when that is too short (a day-two review: "use a shorter --ttl" sent operators to
    // shorten renewals under an intermediate about to expire).
    let text = err.to_string();
    assert!(
        text.contains("CN=short") && text.contains("valid until"),
        "{text}"
    );
    assert!(text.contains("the longest --ttl that fits is"), "{text}");
    assert!(text.contains("seb cert issue-ca"), "{text}");

    // An expired issuer issues nothing.
    let later = now() + Duration::from_secs(400 * 86_400);
    let err = issue_intermediate(
        &short.key,
        &short.chain,
        IntermediateRequest {
            public_key: spki(&crate::testkit::key()),
            subject: parse_subject("CN=late").unwrap(),
            grants: None,
            roles: crate::grants::IssuableRoles::default(),
            path_len: None,
            ttl: Duration::from_secs(60),
        },
        later,
    )
    .unwrap_err();
    assert!(err.to_string().contains("not valid now"), "{err}");
}

/// A certificate of `kind` (agents with one grant, approvers in group `sre`) issued by `ca`.
fn leaf_of(ca: &Ca, kind: RoleKind) -> Result<Certificate, CaError> {
    let groups = if kind == RoleKind::Approver {
        vec!["sre".into()]
    } else {
        vec![]
    };
    issue_leaf_under(
        &ca.key,
        &ca.chain,
        LeafRequest {
            public_key: spki(&crate::testkit::key()),
            subject: parse_subject(&format!("CN={kind}")).unwrap(),
            role: Role::new(kind, groups).unwrap(),
            grants: (kind == RoleKind::Agent)
                .then(|| crate::testkit::grants(&grant("deploy.*", "prod/**", "60s"))),
            ttl: Duration::from_secs(86_400),
        },
        Duration::from_secs(365 * 86_400),
        now(),
    )
}

#[test]
fn an_intermediate_issues_only_its_roles_and_passes_on_no_more() {
    use crate::grants::IssuableRoles;
    let root = Ca::root("root");
    for kind in [RoleKind::Agent, RoleKind::Executor, RoleKind::Approver] {
        assert!(leaf_of(&root, kind).is_ok(), "the root issues {kind}");
    }
    // Without --roles: agents only.
    let agents = root.intermediate("agents", None, None).unwrap();
    assert!(leaf_of(&agents, RoleKind::Agent).is_ok());
    assert_eq!(
        agents
            .cert
            .extension(SEB_ISSUABLE_ROLES_OID)
            .map(|e| e.extn_value.as_bytes().to_vec()),
        Some(IssuableRoles::AGENTS_ONLY.to_der().unwrap()),
        "written explicitly"
    );
    for kind in [RoleKind::Executor, RoleKind::Approver] {
        let err = leaf_of(&agents, kind).unwrap_err();
        assert!(matches!(err, CaError::RoleNotDelegated { .. }), "{err}");
        assert!(err.to_string().contains("CN=agents"), "{err}");
    }
    // Delegated every role: all three, and a sub-intermediate with any of them.
    let ops = root
        .intermediate_for("ops", None, None, IssuableRoles::ALL)
        .unwrap();
    assert!(leaf_of(&ops, RoleKind::Executor).is_ok());
    let exec = ops
        .intermediate_for("exec", None, None, "executor".parse().unwrap())
        .unwrap();
    assert!(leaf_of(&exec, RoleKind::Executor).is_ok());
    // ... but a sub-intermediate never gets more than every CA above it.
    let err = exec
        .intermediate_for("wider", None, None, IssuableRoles::ALL)
        .err()
        .unwrap();
    assert!(matches!(err, CaError::RoleNotDelegated { .. }), "{err}");
    let err = agents
        .intermediate_for("wider", None, None, "agent,executor".parse().unwrap())
        .err()
        .unwrap();
    assert!(matches!(err, CaError::RoleNotDelegated { .. }), "{err}");
    // An agent under the executors-only CA is refused as well.
    assert!(matches!(
        leaf_of(&exec, RoleKind::Agent),
        Err(CaError::RoleNotDelegated { .. })
    ));
    // An intermediate that has the root's very name is still bound by its roles.
    let twin = root.intermediate("root", None, None).unwrap();
    assert_eq!(twin.cert.subject_string(), root.cert.subject_string());
    assert!(matches!(
        leaf_of(&twin, RoleKind::Executor),
        Err(CaError::RoleNotDelegated { .. })
    ));
}

#[test]
fn subjects_stay_within_rfc_5280_bounds() {
    // Other tools refuse or warn about these (Python's cryptography under -W error fails).
    for (subject, why) in [
        ("CN=deploy-bot,C=USA", "two-letter"),
        ("CN=deploy-bot,C=D", "two-letter"),
        (&*format!("CN={}", "a".repeat(65)), "1 to 64"),
        // Names that read as others in a terminal or a web page.
        ("CN=ali\u{200b}ce,O=test", "U+200B"),
        ("CN=deploy-bot\u{202e}\u{2066} approved,O=test", "U+202E"),
        ("CN=bot\u{1b}[2K", "U+001B"),
        ("CN=two\nlines", "U+000A"),
        ("CN=alice,CN=mallory", "more than one common name"),
        // Characters their string type cannot hold, which Go and Python refuse to parse.
        ("CN=bot,serialNumber=dev_01", "PrintableString"),
        ("CN=bot,C=u$", "PrintableString"),
        ("CN=bot,DC=ex\u{e4}mple", "IA5String"),
        ("CN=bot,emailAddress=\u{fc}@example.com", "IA5String"),
        (
            &*format!("CN=bot,{}", "OU=x,".repeat(16).trim_end_matches(',')),
            "more than 16",
        ),
    ] {
        let err = parse_new_subject(subject).unwrap_err().to_string();
        assert!(err.contains(why), "{subject}: {err}");
        // Names given out before these bounds were checked still parse (renewal, rotation).
        assert!(parse_subject(subject).is_ok(), "{subject}");
    }
    assert!(parse_new_subject(&format!("CN={},C=DE", "é".repeat(64))).is_ok());
    assert!(parse_new_subject(
        "CN=bot,serialNumber=dev-01 (A:B),DC=example,emailAddress=a@b.example,O=Ä_$"
    )
    .is_ok());
}

/// A name of one common name, a string of DER type `tag` holding `value` (short).
fn common_name(tag: u8, value: &[u8]) -> x509_cert::name::Name {
    use der::Decode;
    let mut atv = vec![0x06, 0x03, 0x55, 0x04, 0x03, tag, value.len() as u8];
    atv.extend_from_slice(value);
    let mut seq = vec![0x30, atv.len() as u8];
    seq.extend(atv);
    let mut set = vec![0x31, seq.len() as u8];
    set.extend(seq);
    let mut der = vec![0x30, set.len() as u8];
    der.extend(set);
    x509_cert::name::Name::from_der(&der).unwrap()
}

#[test]
fn a_bmpstring_subject_is_read_as_utf_16() {
    // Older tools write BMPString; read as UTF-8 its zero bytes looked like U+0000.
    let name = |bmp: &[u8]| common_name(0x1e, bmp);
    let alice = name(&[0, b'a', 0, b'l', 0, b'i', 0, b'c', 0, b'e']);
    assert_eq!(attribute_problem(&alice), None);
    let hidden = name(&[0, b'a', 0x20, 0x2e, 0, b'b']);
    let problem = attribute_problem(&hidden).unwrap_or_default();
    assert!(problem.contains("U+202E"), "{problem}");
}

#[test]
fn a_character_hidden_in_either_reading_of_a_teletexstring_counts() {
    // seb reads TeletexString as Latin-1, Go and Python's cryptography as UTF-8: the UTF-8
    // bytes of U+FEFF are harmless Latin-1 letters, and a hidden U+FEFF to the others.
    let name = |value: &[u8]| common_name(0x14, value);
    assert_eq!(hidden_character(&name(b"opsbot")), None);
    assert_eq!(
        hidden_character(&name("ops\u{feff}bot".as_bytes())),
        Some('\u{feff}')
    );
    assert_eq!(
        hidden_character(&name("ops\u{200b}bot".as_bytes())),
        Some('\u{200b}')
    );
    // Latin-1 only: 0x9B is a C1 control there, and not UTF-8 at all.
    assert_eq!(hidden_character(&name(b"ops\x9bbot")), Some('\u{9b}'));
}

#[test]
fn tls_names_are_ip_addresses_or_dns_names_a_client_can_match() {
    let good = [
        "127.0.0.1",
        "::1",
        "broker.example.com",
        "seb-1.internal",
        "localhost",
        "*.example.com",
    ];
    for name in good {
        assert!(check_tls_names(&[name.to_string()]).is_ok(), "{name}");
    }
    let bad = [
        "",
        " ",
        "exa mple.com",
        "a_b.example",
        "host.",
        "1.2.3.4.5",
        "10.0.0.256",
        "fe80::1%eth0",
        "-a.example",
        "a..example",
        "*.com",
        "a.*.example",
        "bröker.example",
    ];
    for name in bad {
        let err = check_tls_names(&[name.to_string()]).unwrap_err();
        assert!(matches!(err, CaError::TlsName { .. }), "{name:?}: {err}");
    }
}

#[test]
fn a_leaf_that_serves_no_names_carries_its_subject_as_its_alternative_name() {
    use x509_cert::ext::pkix::name::GeneralName;
    use x509_cert::ext::pkix::SubjectAltName;
    let root = Ca::root("root");
    let agent = root
        .agent("bot", &grant("deploy.*", "prod/*", "60s"))
        .unwrap();
    let san = agent
        .standard_extension::<SubjectAltName>()
        .unwrap()
        .unwrap();
    assert_eq!(
        san.0,
        vec![GeneralName::DirectoryName(agent.tbs().subject().clone())]
    );
}

#[test]
fn the_ca_issues_no_chain_the_decision_would_refuse_as_too_costly_to_check() {
    let many = |n: usize| -> String {
        (0..n)
            .map(|i| grant(&format!("op{i}.run"), &format!("prod/svc{i}/**"), "60s"))
            .collect()
    };
    let root = Ca::root("root");
    let team = root.intermediate("team", Some(&many(200)), None).unwrap();
    // The same 200 grants as the issuer: the i-th is found at the issuer's i-th, 20,100
    // comparisons in all, over the decision's bound. Refused before anything is signed.
    let err = team.agent("agent", &many(200)).unwrap_err();
    assert!(err.to_string().contains("grant comparisons"), "{err}");
    // 150 of them: 11,325 comparisons, issued, and the decision's own check agrees.
    team.agent("agent", &many(150)).unwrap();
    let (issuer, leaf) = (
        crate::testkit::grants(&many(200)),
        crate::testkit::grants(&many(150)),
    );
    assert!(crate::authz::check_chain_attenuation(&[(0, &leaf), (1, &issuer)]).is_ok());
    let too_many = crate::testkit::grants(&many(200));
    let (code, why) =
        crate::authz::check_chain_attenuation(&[(0, &too_many), (1, &issuer)]).unwrap_err();
    assert_eq!(code, crate::authz::DenyCode::GrantChainEscalation);
    assert!(why.contains("grant comparisons"), "{why}");
}

#[test]
fn an_escalation_names_the_issuer_or_an_ancestor_above_it() {
    let narrow = crate::testkit::grants(&grant("deploy.rollout", "prod/api", "60s"));
    let wide = crate::testkit::grants(&grant("deploy.*", "prod/**", "60s"));
    let (_, why) = crate::authz::check_chain_attenuation(&[(0, &wide), (1, &narrow)]).unwrap_err();
    assert!(
        why.contains("exceeds the grants of its issuer at depth 1"),
        "{why}"
    );
    // A CA without grants between them (depth 1): the one exceeded is the leaf's ancestor.
    let (_, why) = crate::authz::check_chain_attenuation(&[(0, &wide), (2, &narrow)]).unwrap_err();
    assert!(
        why.contains("exceeds the grants of its ancestor at depth 2"),
        "{why}"
    );
}
