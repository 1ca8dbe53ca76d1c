//! Intermediate CAs as a security team uses them, over the real binary and SoftHSM2: keys made
//! in the HSM, attenuation enforced by the CA at issuance, chains checked by `openssl verify`,
//! and an offline intermediate ("signed elsewhere") whose escalation only the decision engine
//! can catch.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use common::{assert_clean_failure, openssl, Hsm};
use p384::pkcs8::DecodePrivateKey;
use seb::authz::{decide, DenyCode, Request, RevocationView};
use seb::cert::Certificate;
use seb::grants::{GrantSet, Role, RoleKind};

struct NoneRevoked;
impl RevocationView for NoneRevoked {
    fn is_revoked(&self, _: &seb::serial::Serial) -> bool {
        false
    }
}

fn grant(operation: &str, resource: &str) -> String {
    format!(
        "[[grant]]\noperation = {operation:?}\nresource = {resource:?}\nmax_ttl = \"60s\"\nparams_any = true\n"
    )
}

fn write(hsm: &Hsm, name: &str, text: &str) -> String {
    let path = hsm.path(name);
    std::fs::write(&path, text).unwrap();
    path.display().to_string()
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// `seb cert issue-ca` with the given extra arguments. Each call asks for one day less than
/// the one before, so an intermediate never outlives the (earlier) one above it, which the CA
/// refuses.
fn issue_ca(hsm: &Hsm, label: &str, extra: &[&str]) -> std::process::Output {
    use std::sync::atomic::{AtomicU32, Ordering};
    static DAYS: AtomicU32 = AtomicU32::new(400);
    let ttl = format!("{}d", DAYS.fetch_sub(1, Ordering::Relaxed));
    let out = hsm.path(&format!("{label}-chain.pem"));
    let mut args = vec![
        "cert",
        "issue-ca",
        "--label",
        label,
        "--ttl",
        &ttl,
        "--out",
        s(&out),
    ];
    args.extend_from_slice(extra);
    hsm.seb(&args)
}

/// `seb keygen` + `seb cert issue --role agent`; returns (output, out path).
fn issue_agent(
    hsm: &Hsm,
    name: &str,
    grants: &str,
    issuer: Option<&str>,
) -> (std::process::Output, PathBuf) {
    let key = hsm.path(&format!("{name}.key"));
    let csr = hsm.path(&format!("{name}.csr"));
    let cert = hsm.path(&format!("{name}.pem"));
    hsm.seb_ok(&[
        "keygen",
        "--out-key",
        s(&key),
        "--out-csr",
        s(&csr),
        "--subject",
        &format!("CN={name}"),
    ]);
    let grants = write(hsm, &format!("{name}.toml"), grants);
    let mut args = vec![
        "cert",
        "issue",
        "--csr",
        s(&csr),
        "--role",
        "agent",
        "--grants",
        &grants,
        "--ttl",
        "30d",
        "--out",
        s(&cert),
    ];
    if let Some(issuer) = issuer {
        args.extend_from_slice(&["--issuer", issuer]);
    }
    (hsm.seb(&args), cert)
}

fn read_chain(path: &Path) -> Vec<Certificate> {
    Certificate::parse_pem_chain(&std::fs::read(path).unwrap()).unwrap()
}

fn root(hsm: &Hsm) -> Certificate {
    Certificate::parse(&std::fs::read(hsm.trust("root.pem")).unwrap()).unwrap()
}

/// Validates `leaf_chain` (leaf first) against the HSM's root with `extra` intermediates and
/// decides `operation` on `resource`.
fn decision(
    hsm: &Hsm,
    leaf_chain: &[Certificate],
    extra: &[Certificate],
    operation: &str,
    resource: &str,
) -> Option<DenyCode> {
    let roots = [root(hsm)];
    let mut intermediates = leaf_chain[1..].to_vec();
    intermediates.extend_from_slice(extra);
    let now = SystemTime::now();
    let chain = seb::chain::validate(&leaf_chain[0], &intermediates, &roots, now)
        .unwrap_or_else(|e| panic!("{}: {e}", e.code()));
    decide(
        &chain.chain_view(),
        &NoneRevoked,
        &Request {
            operation: operation.into(),
            resource: resource.into(),
            params: serde_json::json!({}),
        },
        now,
        Duration::from_secs(60),
    )
    .deny_code()
}

#[test]
fn an_intermediate_in_the_hsm_issues_chains_openssl_accepts() {
    let hsm = Hsm::initialised();
    let ops_grants = write(&hsm, "ops.toml", &grant("deploy.*", "prod/payments/*"));
    let out = issue_ca(
        &hsm,
        "payments-ops",
        &[
            "--subject",
            "CN=payments-ops,O=example",
            "--grants",
            &ops_grants,
            "--path-len",
            "1",
        ],
    );
    common::assert_success(&out, "issue-ca");
    assert!(String::from_utf8_lossy(&out.stdout).contains("key generated in the HSM"));

    // The key is in the device, sensitive and never extractable.
    let keys = hsm.pkcs11_private_keys();
    let block = keys
        .split("Private Key Object")
        .find(|b| b.contains("label:      payments-ops"))
        .unwrap_or_else(|| panic!("no payments-ops key:\n{keys}"));
    assert!(
        block.contains("sensitive, always sensitive, never extractable, local"),
        "{block}"
    );

    let stored = hsm.trust("intermediates/payments-ops.pem");
    let (ok, text) = openssl(
        &["x509", "-in", s(&stored), "-noout", "-text"],
        hsm.dir.path(),
    );
    assert!(ok, "{text}");
    assert!(text.contains("CA:TRUE, pathlen:1"), "{text}");
    assert!(text.contains("Certificate Sign, CRL Sign"), "{text}");
    assert!(
        text.contains(
            "1.2.840.113556.1.8000.2554.11087.30221.20830.16501.40880.2628193.9833871.1:"
        ),
        "{text}"
    );

    let (out, leaf) = issue_agent(
        &hsm,
        "deployer",
        &grant("deploy.rollout", "prod/payments/api"),
        Some("payments-ops"),
    );
    common::assert_success(&out, "cert issue --issuer");
    let chain = read_chain(&leaf);
    assert_eq!(chain.len(), 2, "leaf then the intermediate, no root");
    assert_eq!(chain[1].subject_string(), "CN=payments-ops,O=example");

    let (ok, text) = openssl(
        &[
            "verify",
            "-purpose",
            "sslclient",
            "-CAfile",
            s(&hsm.trust("root.pem")),
            "-untrusted",
            s(&leaf),
            s(&leaf),
        ],
        hsm.dir.path(),
    );
    assert!(ok && text.contains(": OK"), "{text}");
    // Without the intermediate, openssl cannot build the path.
    let only_leaf = hsm.path("only-leaf.pem");
    std::fs::write(&only_leaf, chain[0].to_pem_string().unwrap()).unwrap();
    let (ok, text) = openssl(
        &[
            "verify",
            "-CAfile",
            s(&hsm.trust("root.pem")),
            s(&only_leaf),
        ],
        hsm.dir.path(),
    );
    assert!(!ok, "{text}");

    assert_eq!(
        decision(&hsm, &chain, &[], "deploy.rollout", "prod/payments/api"),
        None
    );
    assert_eq!(
        decision(&hsm, &chain, &[], "deploy.rollout", "prod/billing/api"),
        Some(DenyCode::ResourceNotGranted)
    );
}

#[test]
fn a_leaf_claiming_more_than_its_intermediate_is_refused_by_the_ca() {
    let hsm = Hsm::initialised();
    let ops_grants = write(&hsm, "ops.toml", &grant("deploy.*", "prod/payments/*"));
    common::assert_success(
        &issue_ca(
            &hsm,
            "payments-ops",
            &["--subject", "CN=payments-ops", "--grants", &ops_grants],
        ),
        "issue-ca",
    );
    for (name, wider) in [
        ("wide-resource", grant("deploy.rollout", "prod/**")),
        ("wide-operation", grant("*", "prod/payments/api")),
        ("other-operation", grant("db.migrate", "prod/payments/api")),
    ] {
        let (out, cert) = issue_agent(&hsm, name, &wider, Some("payments-ops"));
        assert_clean_failure(&out, "grant escalation");
        assert_clean_failure(&out, "CN=payments-ops");
        assert!(!cert.exists(), "{name}: nothing written");
    }
    // The root imposes no bound.
    let (out, _) = issue_agent(&hsm, "root-agent", &grant("*", "**"), None);
    common::assert_success(&out, "issue under the root");
}

#[test]
fn an_intermediate_claiming_more_than_its_parent_is_refused_and_leaves_no_key() {
    let hsm = Hsm::initialised();
    let ops_grants = write(&hsm, "ops.toml", &grant("deploy.*", "prod/payments/*"));
    common::assert_success(
        &issue_ca(
            &hsm,
            "payments-ops",
            &["--subject", "CN=payments-ops", "--grants", &ops_grants],
        ),
        "issue-ca",
    );
    let wider = write(&hsm, "wider.toml", &grant("deploy.*", "prod/**"));
    let out = issue_ca(
        &hsm,
        "team",
        &[
            "--issuer",
            "payments-ops",
            "--subject",
            "CN=team",
            "--grants",
            &wider,
        ],
    );
    assert_clean_failure(&out, "grant escalation");
    assert!(!hsm.trust("intermediates/team.pem").exists());
    assert!(
        !hsm.pkcs11_private_keys().contains("label:      team"),
        "a refused intermediate must not leave a key in the HSM"
    );
    // The same name with narrower grants then works.
    let narrower = write(
        &hsm,
        "narrower.toml",
        &grant("deploy.rollout", "prod/payments/*"),
    );
    let out = issue_ca(
        &hsm,
        "team",
        &[
            "--issuer",
            "payments-ops",
            "--subject",
            "CN=team",
            "--grants",
            &narrower,
        ],
    );
    common::assert_success(&out, "narrower intermediate");
    let chain = read_chain(&hsm.path("team-chain.pem"));
    assert_eq!(
        chain.iter().map(|c| c.subject_string()).collect::<Vec<_>>(),
        ["CN=team", "CN=payments-ops"]
    );
    // A leaf under team is bounded by both.
    let (out, leaf) = issue_agent(
        &hsm,
        "agent",
        &grant("deploy.rollout", "prod/payments/api"),
        Some("team"),
    );
    common::assert_success(&out, "leaf under team");
    let leaf_chain = read_chain(&leaf);
    assert_eq!(leaf_chain.len(), 3);
    let (ok, text) = openssl(
        &[
            "verify",
            "-CAfile",
            s(&hsm.trust("root.pem")),
            "-untrusted",
            s(&leaf),
            s(&leaf),
        ],
        hsm.dir.path(),
    );
    assert!(ok && text.contains(": OK"), "{text}");
    assert_eq!(
        decision(
            &hsm,
            &leaf_chain,
            &[],
            "deploy.rollout",
            "prod/payments/api"
        ),
        None
    );
}

#[test]
fn an_offline_intermediate_that_escalates_is_caught_by_the_decision_engine() {
    let hsm = Hsm::initialised();
    // The offline CA's key pair is made in software, away from the broker's HSM.
    let key_path = hsm.path("offline.key");
    let csr_path = hsm.path("offline.csr");
    hsm.seb_ok(&[
        "keygen",
        "--out-key",
        s(&key_path),
        "--out-csr",
        s(&csr_path),
        "--subject",
        "CN=offline-ops,O=example",
    ]);
    let ops_grants = write(&hsm, "ops.toml", &grant("deploy.*", "prod/payments/*"));
    let out = issue_ca(
        &hsm,
        "offline-ops",
        &["--csr", s(&csr_path), "--grants", &ops_grants],
    );
    common::assert_success(&out, "issue-ca --csr");
    assert!(String::from_utf8_lossy(&out.stdout).contains("offline"));
    assert!(
        !hsm.pkcs11_private_keys().contains("offline-ops"),
        "no key for an offline intermediate in the broker's HSM"
    );
    let offline = read_chain(&hsm.path("offline-ops-chain.pem"));
    assert_eq!(offline.len(), 1);
    assert_eq!(offline[0].subject_string(), "CN=offline-ops,O=example");

    // The broker cannot sign for it.
    let (out, _) = issue_agent(
        &hsm,
        "via-broker",
        &grant("deploy.rollout", "prod/payments/api"),
        Some("offline-ops"),
    );
    assert_clean_failure(&out, "offline intermediate");

    // Signed elsewhere: the offline CA makes two leaves with its software key.
    let offline_key =
        p384::ecdsa::SigningKey::from_pkcs8_pem(&std::fs::read_to_string(&key_path).unwrap())
            .unwrap();
    let within = offline_leaf(
        &offline[0],
        &offline_key,
        &grant("deploy.rollout", "prod/payments/api"),
    );
    let escalated = offline_leaf(&offline[0], &offline_key, &grant("deploy.*", "prod/**"));

    // Both are perfectly good X.509: openssl accepts them (it knows nothing of grants).
    for (name, leaf) in [("within", &within), ("escalated", &escalated)] {
        let path = hsm.path(&format!("{name}.pem"));
        std::fs::write(
            &path,
            format!(
                "{}{}",
                leaf.to_pem_string().unwrap(),
                offline[0].to_pem_string().unwrap()
            ),
        )
        .unwrap();
        let (ok, text) = openssl(
            &[
                "verify",
                "-CAfile",
                s(&hsm.trust("root.pem")),
                "-untrusted",
                s(&path),
                s(&path),
            ],
            hsm.dir.path(),
        );
        assert!(ok && text.contains(": OK"), "{name}: {text}");
    }

    let with_intermediate = |leaf: &Certificate| vec![leaf.clone(), offline[0].clone()];
    assert_eq!(
        decision(
            &hsm,
            &with_intermediate(&within),
            &[],
            "deploy.rollout",
            "prod/payments/api"
        ),
        None
    );
    // Even for a request inside the intermediate's grants, the escalated chain authorizes
    // nothing.
    for (operation, resource) in [
        ("deploy.rollout", "prod/payments/api"),
        ("deploy.rollout", "prod/billing/api"),
    ] {
        assert_eq!(
            decision(
                &hsm,
                &with_intermediate(&escalated),
                &[],
                operation,
                resource
            ),
            Some(DenyCode::GrantChainEscalation),
            "{operation} {resource}"
        );
    }
}

/// An agent certificate made by the offline CA with its software key, bypassing seb's CA (and
/// so its attenuation check).
fn offline_leaf(issuer: &Certificate, key: &p384::ecdsa::SigningKey, grants: &str) -> Certificate {
    use p384::elliptic_curve::Generate;
    common::offline_leaf(
        issuer,
        key,
        "CN=offline-agent",
        Role::new(RoleKind::Agent, vec![]).unwrap(),
        Some(GrantSet::from_toml_str(grants).unwrap()),
        &p384::ecdsa::SigningKey::try_generate().unwrap(),
    )
}

#[test]
fn a_grantless_intermediate_between_two_with_grants_still_bounds_the_leaf_by_the_top() {
    let hsm = Hsm::initialised();
    let top = write(&hsm, "top.toml", &grant("deploy.*", "prod/**"));
    common::assert_success(
        &issue_ca(&hsm, "top", &["--subject", "CN=top", "--grants", &top]),
        "top",
    );
    common::assert_success(
        &issue_ca(
            &hsm,
            "middle",
            &["--subject", "CN=middle", "--issuer", "top"],
        ),
        "middle without grants",
    );
    // Below the grantless middle, the top's grants still bound an intermediate ...
    let db = write(&hsm, "db.toml", &grant("db.*", "prod/**"));
    let out = issue_ca(
        &hsm,
        "bottom",
        &[
            "--subject",
            "CN=bottom",
            "--issuer",
            "middle",
            "--grants",
            &db,
        ],
    );
    assert_clean_failure(&out, "CN=top");
    let bottom = write(&hsm, "bottom.toml", &grant("deploy.rollout", "prod/**"));
    common::assert_success(
        &issue_ca(
            &hsm,
            "bottom",
            &[
                "--subject",
                "CN=bottom",
                "--issuer",
                "middle",
                "--grants",
                &bottom,
            ],
        ),
        "bottom",
    );
    // ... and a leaf issued directly by the middle.
    let (out, _) = issue_agent(
        &hsm,
        "db-agent",
        &grant("db.migrate", "prod/a"),
        Some("middle"),
    );
    assert_clean_failure(&out, "CN=top");
    let (out, leaf) = issue_agent(
        &hsm,
        "deploy-agent",
        &grant("deploy.rollout", "prod/a"),
        Some("bottom"),
    );
    common::assert_success(&out, "leaf under bottom");
    let chain = read_chain(&leaf);
    assert_eq!(
        chain.iter().map(|c| c.subject_string()).collect::<Vec<_>>(),
        ["CN=deploy-agent", "CN=bottom", "CN=middle", "CN=top"]
    );
    assert_eq!(
        decision(&hsm, &chain, &[], "deploy.rollout", "prod/a"),
        None
    );
    assert_eq!(
        decision(&hsm, &chain, &[], "deploy.rollout", "staging/a"),
        Some(DenyCode::ResourceNotGranted)
    );
}

#[test]
fn issue_ca_refuses_bad_names_and_never_reuses_a_label() {
    let hsm = Hsm::initialised();
    for (label, needle) in [
        ("seb-token", "broker's own key labels"),
        ("seb-root", "broker's own key labels"),
        ("../escape", "invalid intermediate name"),
        ("Upper", "invalid intermediate name"),
    ] {
        assert_clean_failure(&issue_ca(&hsm, label, &["--subject", "CN=x"]), needle);
    }
    common::assert_success(&issue_ca(&hsm, "ops", &["--subject", "CN=ops"]), "ops");
    assert_clean_failure(
        &issue_ca(&hsm, "ops", &["--subject", "CN=ops2"]),
        "already exists",
    );
    // A missing subject, an unknown parent.
    assert_clean_failure(&issue_ca(&hsm, "nosubject", &[]), "--subject");
    assert_clean_failure(
        &issue_ca(&hsm, "orphan", &["--subject", "CN=o", "--issuer", "nope"]),
        "no intermediate named",
    );
    // A pathLen 0 intermediate cannot have intermediates below it.
    common::assert_success(
        &issue_ca(
            &hsm,
            "leafonly",
            &["--subject", "CN=leafonly", "--path-len", "0"],
        ),
        "leafonly",
    );
    assert_clean_failure(
        &issue_ca(
            &hsm,
            "under",
            &["--subject", "CN=under", "--issuer", "leafonly"],
        ),
        "pathLenConstraint",
    );
}
