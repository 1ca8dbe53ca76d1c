//! Day-two operations through the real CLI and broker (issue 17): seeing what was issued,
//! checking a deployment, re-keying and renewing, and the defects found on the way.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::{assert_clean_failure, openssl, Hsm};
use seb::grants::GrantSet;

const GRANTS: &str = r#"
[[grant]]
operation = "deploy.rollout"
resource  = "prod/payments/*"
max_ttl   = "60s"
params.replicas = { min = 1, max = 10 }
params.image    = { prefix = "registry.internal/payments/" }
params.strategy = { one_of = ["rolling", "canary"] }
approval  = { required = 2, group = "sre-leads" }

[[grant]]
operation = "k8s.read.*"
resource  = "prod/**"
max_ttl   = "30s"
params_any = true
"#;

/// The serial `openssl x509 -noout -serial` prints for a certificate file.
fn openssl_serial(hsm: &Hsm, cert: &std::path::Path) -> String {
    let (ok, out) = openssl(
        &["x509", "-in", cert.to_str().unwrap(), "-noout", "-serial"],
        hsm.dir.path(),
    );
    assert!(ok, "{out}");
    out.trim().trim_start_matches("serial=").to_owned()
}

/// The lines of `seb cert list ARGS` after the header.
fn listed(hsm: &Hsm, args: &[&str]) -> Vec<String> {
    let mut full = vec!["cert", "list"];
    full.extend_from_slice(args);
    let out = hsm.seb_ok(&full);
    let mut lines = out.lines();
    assert!(lines.next().unwrap().starts_with("SERIAL"), "{out}");
    lines.map(str::to_owned).collect()
}

#[test]
fn cert_list_shows_what_was_issued_with_openssl_serials_and_filters() {
    let hsm = Hsm::initialised();
    let grants = hsm.grants_file("grants.toml", GRANTS);
    let agent = hsm.issue("agent", "CN=deploy-bot", "agent", &["--grants", &grants]);
    let approver = hsm.issue("alice", "CN=alice", "approver", &["--group", "sre-leads"]);
    let executor = hsm.issue("k8s", "CN=k8s", "executor", &[]);
    let executor_serial = openssl_serial(&hsm, &executor);
    hsm.seb_ok(&[
        "cert",
        "revoke",
        "--serial",
        &executor_serial,
        "--reason",
        "key-compromise",
    ]);

    let all = listed(&hsm, &[]);
    assert_eq!(all.len(), 3, "{all:?}");
    for (cert, subject, role) in [
        (&agent, "CN=deploy-bot", "agent"),
        (&approver, "CN=alice", "approver"),
        (&executor, "CN=k8s", "executor"),
    ] {
        let serial = openssl_serial(&hsm, cert);
        let line = all
            .iter()
            .find(|l| l.starts_with(&serial))
            .unwrap_or_else(|| panic!("serial {serial} not listed: {all:?}"));
        assert!(line.contains(subject) && line.contains(role), "{line}");
        assert!(line.contains("seb-root"), "issuer: {line}");
    }
    assert!(all
        .iter()
        .any(|l| l.starts_with(&executor_serial) && l.ends_with("revoked:key-compromise")));

    let agents = listed(&hsm, &["--role", "agent"]);
    assert_eq!(agents.len(), 1);
    assert!(agents[0].contains("CN=deploy-bot") && agents[0].ends_with("valid"));
    let revoked = listed(&hsm, &["--revoked"]);
    assert_eq!(revoked.len(), 1);
    assert!(revoked[0].starts_with(&executor_serial));
    // Issued for 30 days: none expires within 10, the two live ones within 31.
    assert!(listed(&hsm, &["--expiring", "10d"]).is_empty());
    assert_eq!(listed(&hsm, &["--expiring", "31d"]).len(), 2);
    assert_clean_failure(
        &hsm.seb(&["cert", "list", "--expiring", "soon"]),
        "--expiring",
    );
}

#[test]
fn cert_show_decodes_role_chain_status_and_grants_back_to_toml() {
    let hsm = Hsm::initialised();
    let grants = hsm.grants_file("grants.toml", GRANTS);
    let agent = hsm.issue("agent", "CN=deploy-bot", "agent", &["--grants", &grants]);

    // A file, without any configuration: runs anywhere.
    let out = common::seb(&["cert", "show", agent.to_str().unwrap()], hsm.dir.path());
    common::assert_success(&out, "cert show FILE");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("role         agent"), "{text}");
    assert!(text.contains(&openssl_serial(&hsm, &agent)), "{text}");
    assert!(text.contains("revocation not checked"), "{text}");
    let toml = text
        .split_once("grants (TOML, as `seb cert issue --grants` reads it):\n")
        .unwrap()
        .1;
    assert_eq!(
        GrantSet::from_toml_str(toml).unwrap(),
        GrantSet::from_toml_str(GRANTS).unwrap(),
        "{toml}"
    );

    // By serial from the store, after revocation, with the chain checked against the root.
    let approver = hsm.issue(
        "alice",
        "CN=alice",
        "approver",
        &["--group", "sre-leads", "--group", "dba"],
    );
    let serial = openssl_serial(&hsm, &approver);
    hsm.seb_ok(&["cert", "revoke", "--serial", &serial]);
    let text = hsm.seb_ok(&["cert", "show", "--serial", &serial.to_lowercase()]);
    assert!(text.contains("role         approver"), "{text}");
    assert!(text.contains("groups       dba, sre-leads"), "{text}");
    assert!(text.contains("chains to this broker's root"), "{text}");
    assert!(text.contains("revoked (unspecified)"), "{text}");
    assert!(text.contains("grants       none"), "{text}");

    assert_clean_failure(
        &hsm.seb(&["cert", "show", "--serial", "0badc0de"]),
        "no record of issuing serial 0BADC0DE",
    );
}
