//! Day-two operations through the real CLI and broker (issue 17): seeing what was issued,
//! checking a deployment, re-keying and renewing, and the defects found on the way.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::{assert_clean_failure, openssl, openssl_serial, Hsm};
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
    let executor_serial = openssl_serial(&executor);
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
        let serial = openssl_serial(cert);
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

/// A certificate under a revoked intermediate authorizes nothing (the broker refuses the
/// whole path), so the inventory must not call it `valid`.
#[test]
fn certificates_under_a_revoked_intermediate_are_listed_as_issuer_revoked() {
    let hsm = Hsm::initialised();
    let grants = hsm.grants_file("grants.toml", GRANTS);
    let ca_pem = hsm.issue_ca("team-ca", "CN=team CA", &["--grants", &grants]);
    let below = hsm.issue(
        "team-bot",
        "CN=team-bot",
        "agent",
        &["--grants", &grants, "--issuer", "team-ca"],
    );
    let beside = hsm.issue("root-bot", "CN=root-bot", "agent", &["--grants", &grants]);
    let (below_serial, beside_serial) = (openssl_serial(&below), openssl_serial(&beside));
    let line = |lines: &[String], serial: &str| {
        lines
            .iter()
            .find(|l| l.starts_with(serial))
            .unwrap_or_else(|| panic!("{serial} not listed: {lines:?}"))
            .clone()
    };
    assert!(line(&listed(&hsm, &[]), &below_serial).ends_with(" valid"));

    let ca_serial = openssl_serial(&ca_pem);
    hsm.seb_ok(&["cert", "revoke", "--serial", &ca_serial]);
    let all = listed(&hsm, &[]);
    assert!(
        line(&all, &ca_serial).ends_with("revoked:unspecified"),
        "{all:?}"
    );
    assert!(
        line(&all, &below_serial).ends_with("issuer-revoked"),
        "{all:?}"
    );
    assert!(line(&all, &beside_serial).ends_with(" valid"), "{all:?}");
    let revoked = listed(&hsm, &["--revoked"]);
    assert_eq!(revoked.len(), 2, "{revoked:?}");
    assert!(listed(&hsm, &["--expiring", "400d"])
        .iter()
        .all(|l| !l.starts_with(&below_serial)));
    let text = hsm.seb_ok(&["cert", "show", "--serial", &below_serial]);
    assert!(
        text.contains("status       issuer-revoked: CN=team CA above it is revoked"),
        "{text}"
    );
    // Nor is anything renewed under the revoked CA, as nothing is issued under it; the
    // refusal says where a new certificate can come from.
    assert_clean_failure(
        &hsm.seb(&["cert", "renew", "--serial", &below_serial]),
        "is revoked; nothing was renewed",
    );
    assert_clean_failure(
        &hsm.seb(&["cert", "renew", "--serial", &below_serial]),
        "seb cert issue --issuer NAME",
    );
    assert_eq!(listed(&hsm, &[]).len(), 3, "nothing new was recorded");
    // Its own CRL would be refused with it; the root's CRL, which lists it, is the one to
    // publish.
    let crl = hsm.path("team.crl");
    let out = hsm.seb(&["crl", "--issuer", "team-ca", "--out", crl.to_str().unwrap()]);
    assert_clean_failure(&out, "is revoked; no CRL was written");
    assert_clean_failure(&out, "through the root's CRL");
    assert!(!crl.exists());
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
    assert!(text.contains(&openssl_serial(&agent)), "{text}");
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
    let serial = openssl_serial(&approver);
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

    // An executor's TLS names, which its successor must carry too (root rotation, step 4).
    let executor = hsm.issue(
        "runner",
        "CN=runner",
        "executor",
        &["--tls-name", "exec.internal", "--tls-name", "10.0.0.7"],
    );
    let text = hsm.seb_ok(&["cert", "show", executor.to_str().unwrap()]);
    assert!(
        text.contains("tls names    exec.internal, 10.0.0.7"),
        "{text}"
    );
    assert!(!hsm
        .seb_ok(&["cert", "show", "--serial", &serial])
        .contains("tls names"));
}

const DEPLOY: &str = r#"
[[grant]]
operation = "deploy.rollout"
resource  = "prod/payments/*"
max_ttl   = "30s"
params_any = true
"#;

fn request_body() -> serde_json::Value {
    serde_json::json!({
        "operation": "deploy.rollout",
        "resource": "prod/payments/api",
        "params": {"replicas": 3},
        "justification": "day two",
    })
}

fn post(
    hsm: &Hsm,
    broker: &common::Broker,
    who: &common::Identity,
    path: &str,
    body: &serde_json::Value,
) -> seb::client::ApiResponse {
    let tls = hsm.tls(who, false);
    common::runtime().block_on(async {
        let mut client = seb::client::Client::connect(&broker.url, &tls)
            .await
            .unwrap();
        client.post_json(path, body).await.unwrap()
    })
}

fn get(
    hsm: &Hsm,
    broker: &common::Broker,
    who: &common::Identity,
    path: &str,
) -> seb::client::ApiResponse {
    let tls = hsm.tls(who, false);
    common::runtime().block_on(async {
        let mut client = seb::client::Client::connect(&broker.url, &tls)
            .await
            .unwrap();
        client.send("GET", path, None).await.unwrap()
    })
}

fn kid_of(token: &str) -> String {
    let header = token.split('.').next().unwrap();
    let value: serde_json::Value =
        serde_json::from_slice(&seb::base64url::decode(header).unwrap()).unwrap();
    value["kid"].as_str().unwrap().to_owned()
}

/// The serial of the certificate the broker presents to a new TLS connection.
fn served_tls_serial(hsm: &Hsm, broker: &common::Broker, who: &common::Identity) -> String {
    let addr = broker.url.trim_start_matches("https://").to_owned();
    let script = format!(
        "openssl s_client -connect {addr} -CAfile {ca} -cert {cert} -key {key} </dev/null 2>/dev/null | openssl x509 -noout -serial",
        ca = hsm.trust("root.pem").display(),
        cert = who.cert.display(),
        key = who.key.display(),
    );
    let out = std::process::Command::new("bash")
        .args(["-c", &script])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .trim_start_matches("serial=")
        .to_owned()
}

fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while !done() {
        assert!(
            std::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        std::thread::sleep(std::time::Duration::from_millis(250));
    }
}

#[test]
fn rotating_the_token_and_tls_keys_keeps_a_running_broker_and_live_tokens_working() {
    let hsm = Hsm::initialised();
    let agent = hsm.agent("deploy-bot", DEPLOY);
    let executor = hsm.identity("k8s", "CN=k8s", "executor", &[]);
    let broker = common::Broker::start(&hsm);
    let before = post(&hsm, &broker, &agent, "/v1/executions", &request_body());
    assert_eq!(before.status, 201, "{}", before.text);
    let old_token = before.body["token"].as_str().unwrap().to_owned();
    let old_bundle = get(&hsm, &broker, &agent, "/v1/trust").text;
    let old_tls_serial = served_tls_serial(&hsm, &broker, &agent);
    assert_eq!(old_tls_serial, openssl_serial(&hsm.trust("tls.pem")));

    // An open connection from before the TLS rotation.
    let tls = hsm.tls(&agent, false);
    let rt = common::runtime();
    let mut open = rt
        .block_on(seb::client::Client::connect(&broker.url, &tls))
        .unwrap();

    // The certificates the broker uses now cannot be revoked: rotate first.
    let token_serial = openssl_serial(&hsm.trust("token.pem"));
    for (serial, refusal) in [
        (token_serial.clone(), "seb rotate token"),
        (old_tls_serial.clone(), "seb rotate tls"),
        (
            openssl_serial(&hsm.trust("root.pem")),
            "cannot be revoked on its own CRL",
        ),
    ] {
        assert_clean_failure(
            &hsm.seb(&["cert", "revoke", "--serial", &serial, "--unknown"]),
            refusal,
        );
    }

    let out = hsm.seb_ok(&["rotate", "token"]);
    assert!(out.contains("\"seb-token.2\""), "{out}");
    let out = hsm.seb_ok(&["rotate", "tls"]);
    assert!(out.contains("\"seb-tls.2\""), "{out}");
    // Each rotation is an audit entry naming the new certificate and the generation replaced.
    let rotated = hsm.audit_entries("key_rotated");
    let details: Vec<&str> = rotated
        .iter()
        .filter_map(|e| e["detail"].as_str())
        .collect();
    assert_eq!(details.len(), 2, "{rotated:?}");
    assert!(
        details[0].starts_with("token key generation 2"),
        "{details:?}"
    );
    assert!(
        details[1].starts_with("tls key generation 2"),
        "{details:?}"
    );
    assert_eq!(
        rotated[1]["cert"]["serial"]
            .as_str()
            .unwrap()
            .to_uppercase(),
        openssl_serial(&hsm.trust("tls.pem")).to_uppercase(),
        "{rotated:?}"
    );
    for file in [
        "token.pem",
        "tls.pem",
        "retired/token.1.pem",
        "retired/tls.1.pem",
    ] {
        let (ok, text) = openssl(
            &[
                "verify",
                "-CAfile",
                hsm.trust("root.pem").to_str().unwrap(),
                hsm.trust(file).to_str().unwrap(),
            ],
            hsm.dir.path(),
        );
        assert!(ok, "{file}: {text}");
    }
    let keys = hsm.seb_ok(&["keys"]);
    assert!(
        keys.contains("seb-token.2") && keys.contains("seb-tls.2"),
        "{keys}"
    );
    assert!(!keys.contains("missing"), "{keys}");

    // The running broker switches by itself: new tokens under the new key ...
    let mut new_token = String::new();
    wait_until("tokens signed by the new key", || {
        let r = post(&hsm, &broker, &agent, "/v1/executions", &request_body());
        assert_eq!(r.status, 201, "{}", r.text);
        new_token = r.body["token"].as_str().unwrap().to_owned();
        kid_of(&new_token) != kid_of(&old_token)
    });
    // ... new connections see the new TLS certificate; the old connection still works.
    let new_tls_serial = openssl_serial(&hsm.trust("tls.pem"));
    assert_ne!(new_tls_serial, old_tls_serial);
    wait_until("the new TLS certificate", || {
        served_tls_serial(&hsm, &broker, &agent) == new_tls_serial
    });
    let still = rt.block_on(open.send("GET", "/v1/trust", None)).unwrap();
    assert_eq!(still.status, 200);

    // Both token certificates are in the bundle, and offline verification of both works.
    let bundle = get(&hsm, &broker, &agent, "/v1/trust").text;
    let count = |pem: &str| pem.matches("BEGIN CERTIFICATE").count();
    assert_eq!(count(&bundle), count(&old_bundle) + 1, "{bundle}");
    std::fs::write(hsm.path("bundle.pem"), &bundle).unwrap();
    for (name, token) in [("old", &old_token), ("new", &new_token)] {
        let path = hsm.path(&format!("{name}.jwt"));
        std::fs::write(&path, token).unwrap();
        let out = common::seb(
            &[
                "token",
                "verify",
                "--trust",
                "bundle.pem",
                "--token",
                path.to_str().unwrap(),
                "--operation",
                "deploy.rollout",
                "--resource",
                "prod/payments/api",
                "--params",
                r#"{"replicas":3}"#,
                "--cert",
                agent.cert.to_str().unwrap(),
            ],
            hsm.dir.path(),
        );
        common::assert_success(&out, &format!("verify the {name} token"));
    }
    // The broker redeems both, and names the request each was issued for.
    for token in [&old_token, &new_token] {
        let r = post(
            &hsm,
            &broker,
            &executor,
            "/v1/tokens/redeem",
            &serde_json::json!({"token": token}),
        );
        assert_eq!(r.status, 200, "{}", r.text);
        assert!(
            r.body["request_id"]
                .as_str()
                .is_some_and(|id| !id.is_empty()),
            "{}",
            r.text
        );
    }
    // The rotations are in the inventory.
    assert_eq!(listed(&hsm, &["--role", "token"]).len(), 1);
    assert_eq!(listed(&hsm, &["--role", "tls"]).len(), 1);
    assert_clean_failure(&hsm.seb(&["rotate", "root"]), "ceremony");
    // Retired, the old token certificate may be revoked.
    hsm.seb_ok(&["cert", "revoke", "--serial", &token_serial, "--unknown"]);
}

#[test]
fn renew_reissues_for_the_same_key_and_grants() {
    let hsm = Hsm::initialised();
    let grants = hsm.grants_file("grants.toml", GRANTS);
    let agent = hsm.issue("agent", "CN=deploy-bot", "agent", &["--grants", &grants]);
    let serial = openssl_serial(&agent);
    let renewed = hsm.path("agent-renewed.pem");
    let out = hsm.seb_ok(&[
        "cert",
        "renew",
        "--serial",
        &serial,
        "--ttl",
        "7d",
        "--out",
        renewed.to_str().unwrap(),
    ]);
    assert!(out.contains("renewed agent certificate"), "{out}");
    let (ok, text) = openssl(
        &[
            "verify",
            "-CAfile",
            hsm.trust("root.pem").to_str().unwrap(),
            renewed.to_str().unwrap(),
        ],
        hsm.dir.path(),
    );
    assert!(ok, "{text}");
    let old = seb::cert::Certificate::parse(&std::fs::read(&agent).unwrap()).unwrap();
    let new = seb::cert::Certificate::parse(&std::fs::read(&renewed).unwrap()).unwrap();
    assert_ne!(old.serial_hex(), new.serial_hex());
    assert_eq!(
        old.tbs().subject_public_key_info(),
        new.tbs().subject_public_key_info()
    );
    assert_eq!(old.tbs().subject(), new.tbs().subject());
    for oid in [seb::cert::SEB_GRANTS_OID, seb::cert::SEB_ROLE_OID] {
        assert_eq!(old.extension(oid), new.extension(oid));
    }
    let days = new
        .not_after()
        .duration_since(std::time::SystemTime::now())
        .unwrap()
        .as_secs()
        / 86_400;
    assert_eq!(days, 6, "--ttl 7d");
    assert_eq!(listed(&hsm, &["--role", "agent"]).len(), 2);
    // An executor that serves HTTPS keeps its names and serverAuth; without --out the
    // certificate is the standard output (the report goes to standard error).
    let executor = hsm.issue(
        "exec",
        "CN=exec",
        "executor",
        &["--tls-name", "exec.internal", "--tls-name", "127.0.0.1"],
    );
    let exec_serial = openssl_serial(&executor);
    let done = hsm.seb(&["cert", "renew", "--serial", &exec_serial]);
    assert!(
        done.status.success(),
        "{}",
        String::from_utf8_lossy(&done.stderr)
    );
    assert!(
        String::from_utf8_lossy(&done.stderr).contains("renewed executor certificate"),
        "{}",
        String::from_utf8_lossy(&done.stderr)
    );
    let renewed_exec = hsm.path("exec-renewed.pem");
    std::fs::write(&renewed_exec, &done.stdout).unwrap();
    let (ok, text) = openssl(
        &[
            "x509",
            "-in",
            renewed_exec.to_str().unwrap(),
            "-noout",
            "-text",
        ],
        hsm.dir.path(),
    );
    assert!(ok, "{text}");
    assert!(text.contains("DNS:exec.internal"), "{text}");
    assert!(text.contains("IP Address:127.0.0.1"), "{text}");
    assert!(text.contains("TLS Web Server Authentication"), "{text}");
    assert_ne!(openssl_serial(&renewed_exec), exec_serial);
    // Never over an existing file without --force; never a revoked certificate.
    assert_clean_failure(
        &hsm.seb(&[
            "cert",
            "renew",
            "--serial",
            &serial,
            "--out",
            renewed.to_str().unwrap(),
        ]),
        "--force",
    );
    hsm.seb_ok(&["cert", "revoke", "--serial", &serial]);
    assert_clean_failure(
        &hsm.seb(&[
            "cert",
            "renew",
            "--serial",
            &serial,
            "--out",
            hsm.path("x.pem").to_str().unwrap(),
        ]),
        "was revoked",
    );
}

#[test]
fn cert_issue_refuses_to_overwrite_without_force() {
    let hsm = Hsm::initialised();
    let cert = hsm.issue("k8s", "CN=k8s", "executor", &[]);
    let before = std::fs::read(&cert).unwrap();
    let csr = hsm.path("k8s.csr");
    let args = [
        "cert",
        "issue",
        "--csr",
        csr.to_str().unwrap(),
        "--role",
        "executor",
        "--ttl",
        "1d",
        "--out",
        cert.to_str().unwrap(),
    ];
    assert_clean_failure(&hsm.seb(&args), "refusing to overwrite");
    assert_eq!(std::fs::read(&cert).unwrap(), before);
    let mut forced = args.to_vec();
    forced.push("--force");
    hsm.seb_ok(&forced);
    assert_ne!(std::fs::read(&cert).unwrap(), before);
}

#[test]
fn keys_fails_on_a_state_dir_never_initialised_and_a_closed_pipe_is_quiet() {
    let hsm = Hsm::provision();
    assert_clean_failure(&hsm.seb(&["keys"]), "run `seb init`");
    // Commands that change or read the store refuse too, instead of making an empty store
    // there and reporting a freeze, a revocation or an epoch bump the broker never sees.
    for args in [
        &["freeze", "--reason", "incident"][..],
        &["unfreeze"],
        &["epoch", "bump"],
        &["cert", "revoke", "--serial", "0A", "--unknown"],
        &["cert", "list"],
        &["migrate"],
    ] {
        assert_clean_failure(&hsm.seb(args), "has `seb init` run");
    }
    let state = hsm.path("state");
    assert!(!state.join("seb.db").exists(), "a store was created");
    hsm.seb_ok(&["init"]);
    // `seb keys | head -1`: the reader goes away before seb writes (it opens the HSM
    // first), so every line meets a closed pipe. `println!` would panic with exit 101.
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_seb"))
        .args(["--config", hsm.config().to_str().unwrap(), "keys"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take());
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    // `seb … 2>&1 | head -1` after the first line: stderr closed too. The error still ends
    // the command with its own status (1), not a panic (101). The pipe's reader is closed
    // before seb starts, so every write meets it.
    for args in [&["keys"][..], &["cert", "list"]] {
        let (reader, writer) = std::io::pipe().unwrap();
        drop(reader);
        let status = std::process::Command::new(env!("CARGO_BIN_EXE_seb"))
            .args(["--config", "/nonexistent/seb.toml"])
            .args(args)
            .stdout(std::process::Stdio::null())
            .stderr(writer)
            .status()
            .unwrap();
        assert_eq!(status.code(), Some(1), "{args:?}");
    }
}

#[test]
fn check_does_not_suggest_renewing_a_certificate_under_a_revoked_ca() {
    // `cert renew` refuses it (its issuer is revoked), and it authorizes nothing: a renewal
    // hint would send the operator into a refusal.
    let hsm = Hsm::initialised();
    let grants = hsm.grants_file("grants.toml", GRANTS);
    let ca = hsm.issue_ca("team4", "CN=team4", &[]);
    hsm.issue_for(
        "10d",
        "u4",
        "CN=u4",
        "agent",
        &["--grants", &grants, "--issuer", "team4"],
    );
    let warned = |text: &str| {
        text.lines()
            .any(|l| l.contains("\"CN=u4\"") && l.contains("renew"))
    };
    let text = hsm.seb_ok(&["check"]);
    assert!(warned(&text), "{text}");
    hsm.revoke_for(&openssl_serial(&ca), "ca-compromise");
    let text = hsm.seb_ok(&["check"]);
    assert!(!warned(&text), "{text}");
    assert!(text.contains("0 problem(s)"), "{text}");
}

#[test]
fn check_passes_only_a_deployment_in_order_and_says_what_to_do() {
    use std::os::unix::fs::PermissionsExt;
    let hsm = Hsm::provision();
    let out = hsm.seb(&["check"]);
    assert_clean_failure(&out, "problem(s) found");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("problem  ") && text.contains("run `seb init`"),
        "{text}"
    );

    hsm.seb_ok(&["init"]);
    let text = hsm.seb_ok(&["check"]);
    assert!(text.contains("0 problem(s)"), "{text}");
    assert!(
        text.contains("token key \"seb-token\" is sensitive and never extractable"),
        "{text}"
    );
    assert!(
        text.contains("the tls certificate is valid until"),
        "{text}"
    );

    // A certificate that expires within 30 days is a warning naming its serial and the
    // renewal command (issue 17), whatever its lifetime; once renewed for longer, the old one
    // is not worth a line.
    let grants = hsm.grants_file("grants.toml", GRANTS);
    let short = hsm.issue_for(
        "10d",
        "ten-days",
        "CN=ten-days",
        "agent",
        &["--grants", &grants],
    );
    let serial = openssl_serial(&short);
    let text = hsm.seb_ok(&["check"]);
    assert!(text.contains("0 problem(s)"), "{text}");
    assert!(
        text.lines().any(
            |l| l.starts_with("warning  the agent certificate \"CN=ten-days\"")
                && l.contains("(within 30 days)")
                && l.contains(&format!("seb cert renew --serial {serial}"))
        ),
        "{text}"
    );
    hsm.seb_ok(&["cert", "renew", "--serial", &serial, "--ttl", "90d"]);
    let text = hsm.seb_ok(&["check"]);
    assert!(!text.contains("CN=ten-days"), "{text}");
    assert!(
        text.contains("no issued certificate expires within 30 days (1 in use:"),
        "{text}"
    );

    std::fs::set_permissions(hsm.path("user.pin"), std::fs::Permissions::from_mode(0o644)).unwrap();
    let text = hsm.seb_ok(&["check"]);
    assert!(
        text.contains("warning  PIN file") && text.contains("chmod 0600"),
        "{text}"
    );
    // The configuration names the module the broker loads; the state directory holds the
    // store and keys.toml.
    assert!(!text.contains("warning  configuration file"), "{text}");
    assert!(!text.contains("warning  state directory"), "{text}");
    std::fs::set_permissions(hsm.config(), std::fs::Permissions::from_mode(0o666)).unwrap();
    std::fs::set_permissions(hsm.path("state"), std::fs::Permissions::from_mode(0o755)).unwrap();
    let text = hsm.seb_ok(&["check"]);
    assert!(
        text.lines()
            .any(|l| l.starts_with("warning  configuration file")
                && l.contains("mode 666")
                && l.contains("chmod go-w")),
        "{text}"
    );
    assert!(
        text.lines()
            .any(|l| l.starts_with("warning  state directory")
                && l.contains("mode 755")
                && l.contains("chmod 0700")),
        "{text}"
    );

    std::fs::write(hsm.path("state/keys.toml"), "tokn = 1\n").unwrap();
    let out = hsm.seb(&["check"]);
    assert_clean_failure(&out, "problem(s) found");
    assert!(String::from_utf8_lossy(&out.stdout).contains("keys.toml"));
}

/// A state directory on a filesystem about to fill is a problem `seb check` names before the
/// broker starts refusing tokens for want of space; a roomy one is a line that says so.
#[test]
fn check_names_a_state_directory_about_to_run_out_of_space() {
    let hsm = Hsm::initialised();
    let text = hsm.seb_ok(&["check"]);
    assert!(
        text.lines()
            .any(|l| l.starts_with("ok       ") && l.contains(" free of ")),
        "{text}"
    );
    let _fs = hsm.state_on_small_fs("16m");
    let out = hsm.seb(&["check"]);
    assert_clean_failure(&out, "problem(s) found");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.lines().any(|l| l.starts_with("problem  ")
            && l.contains(" MiB free of 16.0 MiB on the filesystem of ")
            && l.contains("small-state")
            && l.contains("free space or move the state directory")),
        "{text}"
    );
}

/// A state directory restored without its keys.toml after a rotation (or taken from another
/// installation) names keys whose public halves differ from its certificates: `check` and
/// `keys` fail on it, and `serve` refuses with the same explanation, instead of passing the
/// checks and failing at start-up.
#[test]
fn check_keys_and_serve_refuse_a_state_whose_certificates_the_device_keys_do_not_match() {
    let hsm = Hsm::initialised();
    hsm.seb_ok(&["rotate", "token"]);
    let text = hsm.seb_ok(&["check"]);
    assert!(text.contains("0 problem(s)"), "{text}");
    hsm.seb_ok(&["keys"]);

    // keys.toml lost: the configured label is the first generation again, whose key is not
    // the one trust/token.pem now certifies.
    std::fs::remove_file(hsm.path("state/keys.toml")).unwrap();
    let out = hsm.seb(&["check"]);
    assert_clean_failure(&out, "problem(s) found");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.lines().any(|l| l
            .starts_with("problem  the key \"seb-token\" in the device does not match")
            && l.contains("token.pem")
            && l.contains("keys.toml")),
        "{text}"
    );
    let out = hsm.seb(&["keys"]);
    assert_clean_failure(&out, "does not match");
    let out = hsm.seb(&["serve"]);
    assert_clean_failure(
        &out,
        "restore the state directory together with its keys.toml",
    );
}

/// Broker certificates that expire within 30 days show as warnings in `/healthz` (the broker
/// stays ready) and as gauges in `/metrics`.
#[test]
fn expiring_broker_certificates_warn_in_healthz_and_metrics() {
    let hsm = Hsm::provision();
    let config = std::fs::read_to_string(hsm.config()).unwrap();
    // Service certificates made for 10 days: inside the 30-day warning window from the start.
    std::fs::write(
        hsm.config(),
        format!("{config}\n[ca]\nservice_validity = \"10d\"\n"),
    )
    .unwrap();
    hsm.seb_ok(&["init"]);
    let agent = hsm.agent("deploy-bot", GRANTS);
    let broker = common::Broker::start(&hsm);
    let health = get(&hsm, &broker, &agent, "/healthz");
    assert_eq!(
        health.status, 200,
        "a warning is not a failure: {}",
        health.text
    );
    assert_eq!(health.body["status"], "ready");
    let warnings = health.body["warnings"].as_array().unwrap();
    // This broker has no TPM: said on every probe, without making it unready.
    assert!(
        warnings.iter().any(|w| w["check"] == "attestation"),
        "{}",
        health.text
    );
    for what in ["token", "tls"] {
        let w = warnings
            .iter()
            .find(|w| w["certificate"] == what)
            .unwrap_or_else(|| panic!("no warning for the {what} certificate: {}", health.text));
        assert_eq!(w["check"], "certificate_expiry");
        assert!(
            w["message"].as_str().unwrap().contains("seb rotate"),
            "{}",
            health.text
        );
    }
    assert!(
        !warnings.iter().any(|w| w["certificate"] == "root"),
        "the root is valid for years: {}",
        health.text
    );
    let metrics = get(&hsm, &broker, &agent, "/metrics");
    assert!(
        metrics
            .text
            .contains("seb_certificate_expiring{certificate=\"token\"} 1"),
        "{}",
        metrics.text
    );
    assert!(
        metrics
            .text
            .contains("seb_certificate_expiring{certificate=\"root\"} 0"),
        "{}",
        metrics.text
    );
}

/// SoftHSM2 says only "Some horrible, unrecoverable error" when it cannot read its
/// configuration; seb names the file and says what to do.
#[test]
fn an_unreadable_softhsm_configuration_is_named_in_the_error() {
    let hsm = Hsm::initialised();
    let config = std::fs::read_to_string(hsm.config()).unwrap();
    let conf = hsm.path("softhsm2.conf");
    let broken = config.replace(
        &format!("SOFTHSM2_CONF = \"{}\"", conf.display()),
        "SOFTHSM2_CONF = \"/nonexistent/softhsm2.conf\"",
    );
    assert_ne!(
        broken, config,
        "the provisioned config names its SoftHSM2 configuration"
    );
    std::fs::write(hsm.config(), broken).unwrap();
    let out = hsm.seb(&["keys"]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("/nonexistent/softhsm2.conf"), "{stderr}");
    assert!(stderr.contains("softhsm group"), "{stderr}");
    assert_clean_failure(&out, "softhsm group");
}

/// The same "horrible error" when SoftHSM2 cannot read its token directory (missing, or not
/// the user's: Debian's is root:softhsm 2770): seb names the directory and says what to do.
#[test]
fn an_unreadable_softhsm_token_directory_is_named_in_the_error() {
    let hsm = Hsm::initialised();
    let conf = hsm.path("softhsm2.conf");
    let text = std::fs::read_to_string(&conf).unwrap();
    let moved = text
        .lines()
        .map(|l| {
            if l.trim_start().starts_with("directories.tokendir") {
                "directories.tokendir = /nonexistent/tokens".to_owned()
            } else {
                l.to_owned()
            }
        })
        .collect::<Vec<_>>()
        .join("\n");
    assert_ne!(
        moved, text,
        "the provisioned configuration names its token directory"
    );
    std::fs::write(&conf, moved).unwrap();
    let out = hsm.seb(&["keys"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("/nonexistent/tokens"), "{stderr}");
    assert_clean_failure(&out, "softhsm group");
}

/// Logs carry no ANSI colour codes when stderr is not a terminal (journald, files).
#[test]
fn logs_are_plain_text_off_a_terminal() {
    let hsm = Hsm::initialised();
    // Asking tpm2-tss for debug logs makes seb log a warning (it caps them).
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_seb"))
        .args(["--config", hsm.config().to_str().unwrap(), "keys"])
        .env("TSS2_LOG", "all+debug")
        .env("RUST_LOG", "warn")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("TSS2_LOG capped"),
        "a warning was logged: {stderr}"
    );
    assert!(!stderr.contains('\u{1b}'), "no escape codes: {stderr:?}");
}

/// `seb attest record` writes a policy without EK pinning only with a warning.
#[test]
fn recording_a_policy_without_ek_pinning_warns() {
    let hsm = Hsm::provision_tpm(false);
    let out = hsm.seb(&[
        "attest",
        "record",
        "--out",
        hsm.path("unpinned.toml").to_str().unwrap(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("no EK pinning"), "{stderr}");
    let pinned = hsm.seb(&[
        "attest",
        "record",
        "--out",
        hsm.path("pinned.toml").to_str().unwrap(),
        "--ek-ca",
        "tpm/ek-ca/issuercert.pem",
    ]);
    assert!(
        pinned.status.success(),
        "{}",
        String::from_utf8_lossy(&pinned.stderr)
    );
    assert!(!String::from_utf8_lossy(&pinned.stderr).contains("no EK pinning"));
}

/// `seb request --params` refuses what the broker refuses (duplicate keys), instead of quietly
/// sending one of the two values.
#[test]
fn seb_request_refuses_duplicate_parameter_keys() {
    let dir = tempfile::tempdir().unwrap();
    let out = common::seb(
        &[
            "request",
            "--broker",
            "https://127.0.0.1:9",
            "--ca",
            "root.pem",
            "--cert",
            "agent.pem",
            "--key",
            "agent.key",
            "--operation",
            "deploy.rollout",
            "--resource",
            "prod/payments/api",
            "--params",
            r#"{"replicas":1000,"replicas":3}"#,
        ],
        dir.path(),
    );
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("--params") && stderr.contains("duplicate"),
        "{stderr}"
    );
    assert_clean_failure(&out, "--params");
}

fn seb_request(
    hsm: &Hsm,
    broker: &common::Broker,
    ca: &std::path::Path,
    who: &common::Identity,
) -> std::process::Output {
    hsm.seb(&[
        "request",
        "--broker",
        &broker.url,
        "--ca",
        ca.to_str().unwrap(),
        "--cert",
        who.cert.to_str().unwrap(),
        "--key",
        who.key.to_str().unwrap(),
        "--operation",
        "deploy.rollout",
        "--resource",
        "prod/payments/api",
        "--params",
        r#"{"replicas":3}"#,
    ])
}

/// A failed handshake says whose certificate is wrong and what to do, not only a TLS alert.
#[test]
fn seb_request_says_what_is_wrong_with_a_certificate_and_what_to_do() {
    let hsm = Hsm::initialised();
    let broker = common::Broker::start(&hsm);
    let grants = hsm.grants_file("g.toml", GRANTS);
    let root = hsm.trust("root.pem");

    // An expired certificate.
    hsm.identity("short", "CN=short-lived", "agent", &["--grants", &grants]);
    let short = hsm.reissue(
        "short",
        "short2.pem",
        &["--grants", &grants, "--role", "agent", "--ttl", "2s"],
    );
    std::thread::sleep(std::time::Duration::from_millis(3500));
    let out = seb_request(&hsm, &broker, &root, &short);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("your certificate (") && stderr.contains("expired at"),
        "{stderr}"
    );
    assert!(stderr.contains("seb cert renew"), "{stderr}");

    // The wrong --ca: another installation's root.
    let other = Hsm::initialised();
    let agent = hsm.agent("deploy-bot", GRANTS);
    let out = seb_request(&hsm, &broker, &other.trust("root.pem"), &agent);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("the pinned root (--ca, or --trust) is this broker's root"),
        "{stderr}"
    );
    // The broker's certificate was refused here, before ours was sent: ours is not blamed.
    assert!(!stderr.contains("your certificate"), "{stderr}");
    // A revoked certificate: the broker's code, and that a new key and certificate are needed.
    let revoked = hsm.agent("revoked-bot", GRANTS);
    hsm.revoke_compromised(&openssl_serial(&revoked.cert));
    let out = seb_request(&hsm, &broker, &root, &revoked);
    assert!(!out.status.success());
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("certificate_revoked"), "{stdout}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("is revoked, for good") && stderr.contains("seb keygen"),
        "{stderr}"
    );

    // A certificate of the other installation, with --ca holding both roots (as during a root
    // rotation): the broker does not trust its root, which is not a revocation.
    let stranger = other.agent("stranger-bot", GRANTS);
    let both = hsm.path("both-roots.pem");
    let mut pem = std::fs::read(&root).unwrap();
    pem.extend(std::fs::read(other.trust("root.pem")).unwrap());
    std::fs::write(&both, pem).unwrap();
    let out = seb_request(&hsm, &broker, &both, &stranger);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("does not trust the root your certificate chains to"),
        "{stderr}"
    );
    assert!(!stderr.contains("may be revoked"), "{stderr}");

    // Only the leaf of a certificate issued by an intermediate.
    hsm.seb_ok(&[
        "cert",
        "issue-ca",
        "--label",
        "ops",
        "--subject",
        "CN=ops,O=seb",
        "--grants",
        &grants,
        "--ttl",
        "90d",
        "--out",
        hsm.path("ops.pem").to_str().unwrap(),
    ]);
    let under = hsm.identity(
        "under",
        "CN=under-ops",
        "agent",
        &["--grants", &grants, "--issuer", "ops"],
    );
    let chain = std::fs::read_to_string(&under.cert).unwrap();
    let end = "-----END CERTIFICATE-----";
    let leaf_only = &chain[..chain.find(end).unwrap() + end.len()];
    std::fs::write(&under.cert, format!("{leaf_only}\n")).unwrap();
    let out = seb_request(&hsm, &broker, &root, &under);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("send the chain, not only the leaf"),
        "{stderr}"
    );

    // An intermediate given as --ca: the file is what is wrong, not the agent's certificate.
    let ops = std::fs::read_to_string(hsm.path("ops.pem")).unwrap();
    let ops_only = hsm.path("ops-only.pem");
    std::fs::write(&ops_only, &ops[..ops.find(end).unwrap() + end.len()]).unwrap();
    let out = seb_request(&hsm, &broker, &ops_only, &agent);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("the --ca file holds CN=ops,O=seb, which is not a root")
            && stderr.contains("trust/root.pem"),
        "{stderr}"
    );
    assert!(!stderr.contains("send the chain"), "{stderr}");

    // A self-signed certificate is not sent looking for a chain that does not exist.
    let own = common::Identity {
        cert: hsm.path("self.pem"),
        key: hsm.path("self.key"),
    };
    let (ok, text) = openssl(
        &[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-subj",
            "/CN=self",
            "-days",
            "1",
            "-keyout",
            own.key.to_str().unwrap(),
            "-out",
            own.cert.to_str().unwrap(),
        ],
        hsm.dir.path(),
    );
    assert!(ok, "{text}");
    let out = seb_request(&hsm, &broker, &root, &own);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("is self-signed"), "{stderr}");
    assert!(!stderr.contains("send the chain"), "{stderr}");

    // A SEC1 key gets the command that converts it.
    let sec1 = hsm.path("sec1.key");
    let (ok, text) = openssl(
        &[
            "ec",
            "-in",
            agent.key.to_str().unwrap(),
            "-out",
            sec1.to_str().unwrap(),
        ],
        hsm.dir.path(),
    );
    assert!(ok, "{text}");
    assert!(std::fs::read_to_string(&sec1)
        .unwrap()
        .contains("BEGIN EC PRIVATE KEY"));
    let with_sec1 = common::Identity {
        cert: agent.cert.clone(),
        key: sec1,
    };
    let out = seb_request(&hsm, &broker, &root, &with_sec1);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("openssl pkcs8 -topk8"), "{stderr}");
    // So does an approver's signing key, named by its file.
    let out = hsm.seb(&[
        "approve",
        "--broker",
        &broker.url,
        "--ca",
        root.to_str().unwrap(),
        "--cert",
        with_sec1.cert.to_str().unwrap(),
        "--key",
        with_sec1.key.to_str().unwrap(),
        "AAAAAAAAAAAAAAAAAAAAAA",
    ]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("openssl pkcs8 -topk8") && stderr.contains("sec1.key"),
        "{stderr}"
    );
}

/// Small errors that now say what to do: a subject without `CN=`, a listen address in use.
#[test]
fn small_errors_say_what_to_do() {
    let hsm = Hsm::initialised();
    let out = hsm.seb(&[
        "keygen",
        "--subject",
        "deploy-bot",
        "--out-key",
        hsm.path("k.key").to_str().unwrap(),
        "--out-csr",
        hsm.path("k.csr").to_str().unwrap(),
    ]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("CN=deploy-bot,O=example"), "{stderr}");

    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let config = std::fs::read_to_string(hsm.config()).unwrap();
    let listen_line = config
        .lines()
        .find(|l| l.starts_with("listen"))
        .unwrap()
        .to_owned();
    std::fs::write(
        hsm.config(),
        config.replace(&listen_line, &format!("listen = \"{addr}\"")),
    )
    .unwrap();
    let out = hsm.seb(&["serve"]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&format!("cannot listen on {addr}")),
        "{stderr}"
    );
}

fn leaf_only(chain_pem: &std::path::Path, out: &std::path::Path) {
    let chain = std::fs::read_to_string(chain_pem).unwrap();
    let end = "-----END CERTIFICATE-----";
    std::fs::write(
        out,
        format!("{}\n", &chain[..chain.find(end).unwrap() + end.len()]),
    )
    .unwrap();
}

/// Revocation that standard tools can check under an intermediate: the intermediate signs its
/// own CRL, `openssl verify -crl_check` refuses the revoked leaf and accepts the other; an
/// unknown serial needs --issuer or --unknown; nothing is issued under a revoked intermediate.
#[test]
fn intermediates_sign_their_own_crls_that_openssl_checks() {
    let hsm = Hsm::initialised();
    let grants = hsm.grants_file("g.toml", GRANTS);
    let ops_pem = hsm.path("ops.pem");
    hsm.seb_ok(&[
        "cert",
        "issue-ca",
        "--label",
        "ops",
        "--subject",
        "CN=ops,O=seb",
        "--grants",
        &grants,
        "--ttl",
        "90d",
        "--out",
        ops_pem.to_str().unwrap(),
    ]);
    let bad = hsm.identity(
        "bad",
        "CN=bad-bot",
        "agent",
        &["--grants", &grants, "--issuer", "ops"],
    );
    let good = hsm.identity(
        "good",
        "CN=good-bot",
        "agent",
        &["--grants", &grants, "--issuer", "ops"],
    );
    let serial = openssl_serial(&bad.cert);
    hsm.seb_ok(&["cert", "revoke", "--serial", &serial]);
    let crl = hsm.path("ops.crl");
    let out = hsm.seb_ok(&["crl", "--issuer", "ops", "--out", crl.to_str().unwrap()]);
    assert!(out.contains("CN=ops"), "{out}");
    let root = hsm.trust("root.pem");
    // `openssl verify` of `cert`'s leaf under the root, with ops as an untrusted intermediate,
    // `checks` (`-crl_check`, or stricter) and the CRLs in `crls`.
    let openssl_verify = |cert: &std::path::Path, checks: &[&str], crls: &std::path::Path| {
        let leaf = hsm.path("leaf.pem");
        leaf_only(cert, &leaf);
        let mut args = vec!["verify"];
        args.extend_from_slice(checks);
        args.extend([
            "-CAfile",
            root.to_str().unwrap(),
            "-untrusted",
            ops_pem.to_str().unwrap(),
            "-CRLfile",
            crls.to_str().unwrap(),
            leaf.to_str().unwrap(),
        ]);
        openssl(&args, hsm.dir.path())
    };
    let verify = |cert: &std::path::Path| openssl_verify(cert, &["-crl_check"], &crl);
    let (ok, text) = verify(&bad.cert);
    assert!(!ok && text.contains("certificate revoked"), "{text}");
    let (ok, text) = verify(&good.cert);
    assert!(ok && text.contains(": OK"), "{text}");
    // The root's CRL does not list what the intermediate issued.
    let root_crl = hsm.path("root.crl");
    hsm.seb_ok(&["crl", "--out", root_crl.to_str().unwrap()]);
    let (_, listing) = openssl(
        &["crl", "-in", root_crl.to_str().unwrap(), "-noout", "-text"],
        hsm.dir.path(),
    );
    assert!(!listing.contains(&serial), "{listing}");
    // The whole path under openssl's strict checks, with both CRLs (root's and ops's).
    let strict = |cert: &std::path::Path| {
        let crls = hsm.path("both.crl");
        let both = [&root_crl, &crl].map(|f| std::fs::read_to_string(f).unwrap());
        std::fs::write(&crls, both.concat()).unwrap();
        let checks = ["-x509_strict", "-crl_check_all", "-purpose", "sslclient"];
        openssl_verify(cert, &checks, &crls)
    };
    let (ok, text) = strict(&good.cert);
    assert!(ok && text.contains(": OK"), "{text}");
    let (ok, text) = strict(&bad.cert);
    assert!(!ok && text.contains("error 23 at 0 depth"), "{text}");

    // The broker serves the intermediate's CRL too.
    let broker = common::Broker::start(&hsm);
    let served = get(&hsm, &broker, &good, "/v1/crl?issuer=ops");
    assert_eq!(served.status, 200, "{}", served.text);
    std::fs::write(&crl, &served.text).unwrap();
    let (ok, text) = verify(&bad.cert);
    assert!(!ok && text.contains("certificate revoked"), "{text}");
    let none = get(&hsm, &broker, &good, "/v1/crl?issuer=nosuch");
    assert_eq!(none.status, 404, "{}", none.text);
    assert_eq!(
        none.body["error"]["code"], "unknown_crl_issuer",
        "{}",
        none.text
    );
    let odd = get(&hsm, &broker, &good, "/v1/crl?foo=bar");
    assert_eq!(odd.status, 400, "{}", odd.text);
    assert_eq!(odd.body["error"]["code"], "invalid_query", "{}", odd.text);
    drop(broker);

    // A serial nobody issued (a typo) is refused unless the operator says whose it is.
    let out = hsm.seb(&["cert", "revoke", "--serial", "0BADC0FFEE"]);
    assert!(!out.status.success());
    assert_clean_failure(&out, "--unknown");
    hsm.seb_ok(&[
        "cert",
        "revoke",
        "--serial",
        "0BADC0FFEE",
        "--issuer",
        "ops",
    ]);
    hsm.seb_ok(&["crl", "--issuer", "ops", "--out", crl.to_str().unwrap()]);
    let (_, listing) = openssl(
        &["crl", "-in", crl.to_str().unwrap(), "-noout", "-text"],
        hsm.dir.path(),
    );
    assert!(listing.contains("0BADC0FFEE"), "{listing}");
    hsm.seb_ok(&["cert", "revoke", "--serial", "0C0FFEE0", "--unknown"]);
    // Both are in the list of revoked certificates, though the broker issued neither, and
    // `cert show` says the serial is revoked.
    let listed = hsm.seb_ok(&["cert", "list", "--revoked"]);
    for serial in ["0BADC0FFEE", "0C0FFEE0"] {
        assert!(
            listed.lines().any(|l| l.starts_with(serial)
                && l.contains("(no issuance record)")
                && l.ends_with("revoked:unspecified")),
            "{serial}: {listed}"
        );
    }
    let out = hsm.seb(&["cert", "show", "--serial", "0C0FFEE0"]);
    assert_clean_failure(&out, "the serial is revoked (unspecified at ");

    // Nothing is issued under a revoked intermediate, and openssl refuses the path at the
    // intermediate once the root's CRL lists it.
    let ops_serial = openssl_serial(&ops_pem);
    hsm.seb_ok(&["cert", "revoke", "--serial", &ops_serial]);
    hsm.seb_ok(&["crl", "--out", root_crl.to_str().unwrap()]);
    let (ok, text) = strict(&good.cert);
    assert!(!ok && text.contains("error 23 at 1 depth"), "{text}");
    let out = hsm.seb(&[
        "cert",
        "issue",
        "--csr",
        hsm.path("good.csr").to_str().unwrap(),
        "--role",
        "agent",
        "--grants",
        &grants,
        "--ttl",
        "1d",
        "--issuer",
        "ops",
        "--out",
        hsm.path("again.pem").to_str().unwrap(),
    ]);
    assert!(!out.status.success());
    assert_clean_failure(&out, "is revoked");
    // Nor does it get a fresh CRL, from the command or the broker: one that still lists only
    // `bad` would pass `good` for a relying party that checks the leaf's CRL alone.
    let out = hsm.seb(&["crl", "--issuer", "ops", "--out", crl.to_str().unwrap()]);
    assert_clean_failure(&out, "no CRL was written");
    let watcher = hsm.identity("watcher", "CN=watcher", "agent", &["--grants", &grants]);
    let broker = common::Broker::start(&hsm);
    let gone = get(&hsm, &broker, &watcher, "/v1/crl?issuer=ops");
    assert_eq!(gone.status, 410, "{}", gone.text);
    assert_eq!(
        gone.body["error"]["code"], "crl_issuer_invalid",
        "{}",
        gone.text
    );
    assert!(
        gone.text.contains("CN=ops,O=seb") && gone.text.contains("is revoked"),
        "{}",
        gone.text
    );
    assert_eq!(get(&hsm, &broker, &watcher, "/v1/crl").status, 200);
}

#[test]
fn common_mistakes_name_what_is_wrong() {
    let hsm = Hsm::initialised();
    let agent = hsm.agent("deploy-bot", GRANTS);
    // A role that does not exist lists nothing silently: refused with the roles there are.
    assert_clean_failure(
        &hsm.seb(&["cert", "list", "--role", "agents"]),
        "unknown --role \"agents\": one of agent, approver",
    );
    let root = hsm.trust("root.pem");
    let request = |broker: &str, cert: &std::path::Path| {
        hsm.seb(&[
            "request",
            "--broker",
            broker,
            "--ca",
            root.to_str().unwrap(),
            "--cert",
            cert.to_str().unwrap(),
            "--key",
            agent.key.to_str().unwrap(),
            "--operation",
            "k8s.read.pods",
            "--resource",
            "prod/x",
            "--params",
            "{}",
        ])
    };
    // Nobody listening: the address tried is named.
    let port = common::free_port();
    assert_clean_failure(
        &request(&format!("https://127.0.0.1:{port}"), &agent.cert),
        &format!("cannot connect to 127.0.0.1:{port}"),
    );
    // A --cert that is not a certificate says which file is wrong, not just "no PEM block".
    assert_clean_failure(
        &request("https://127.0.0.1:1", &agent.key),
        "the client certificate: no CERTIFICATE PEM block",
    );
}

/// A TLS name the certificate cannot carry stops `seb rotate tls` before a key is generated
/// (a half-done rotation would leave a key behind that blocks the next attempt), and `seb
/// check` says so first.
#[test]
fn rotate_tls_checks_the_names_before_generating_a_key() {
    let hsm = Hsm::initialised();
    let config = std::fs::read_to_string(hsm.config()).unwrap();
    std::fs::write(
        hsm.config(),
        format!("{config}\n[ca]\ntls_names = [\"localhost\", \"seb_broker\"]\n"),
    )
    .unwrap();
    let check = hsm.seb(&["check"]);
    assert!(
        String::from_utf8_lossy(&check.stdout).contains("problem  [ca] tls_names"),
        "{}",
        String::from_utf8_lossy(&check.stdout)
    );
    common::assert_clean_failure(&hsm.seb(&["rotate", "tls"]), "seb_broker");
    assert!(
        !hsm.pkcs11_private_keys().contains("seb-tls.2"),
        "{}",
        hsm.pkcs11_private_keys()
    );
    std::fs::write(hsm.config(), config).unwrap();
    hsm.seb_ok(&["rotate", "tls"]);
    assert!(hsm.pkcs11_private_keys().contains("seb-tls.2"));
}

/// Root rotation (docs/OPERATIONS.md, "Rotate the root"): the current root certifies a new
/// root's key under the new root's name. openssl, Go's standard library and Python's
/// `cryptography`, trusting only the old root, then accept a certificate the new root issued
/// when the cross-certificate is offered as an intermediate; seb's own path validation does
/// too. A certificate that is not a self-signed P-384 CA, or a
/// new root that reuses the old one's name, is refused before anything is signed.
#[test]
fn the_old_root_cross_signs_a_new_root_that_standard_tools_then_accept() {
    let old = Hsm::initialised();
    let new = Hsm::provision();
    let config = std::fs::read_to_string(new.config()).unwrap();
    std::fs::write(
        new.config(),
        format!("{config}\n[ca]\nroot_subject = \"CN=seb root CA 2,O=seb\"\n"),
    )
    .unwrap();
    new.seb_ok(&["init"]);
    let agent = new.agent("after-rotation", GRANTS);

    let cross = old.path("cross.pem");
    let new_root = new.trust("root.pem");
    let said = old.seb_ok(&[
        "cert",
        "cross-sign",
        "--root",
        new_root.to_str().unwrap(),
        "--ttl",
        "365d",
        "--out",
        cross.to_str().unwrap(),
    ]);
    assert!(
        said.contains("CN=seb root CA 2,O=seb certified by CN=seb root CA,O=seb"),
        "{said}"
    );

    let old_root = old.trust("root.pem");
    let verify = |untrusted: Option<&std::path::Path>| {
        let mut args = vec![
            "verify",
            "-x509_strict",
            "-purpose",
            "sslclient",
            "-CAfile",
            old_root.to_str().unwrap(),
        ];
        if let Some(u) = untrusted {
            args.extend(["-untrusted", u.to_str().unwrap()]);
        }
        args.push(agent.cert.to_str().unwrap());
        openssl(&args, old.dir.path())
    };
    let (ok, text) = verify(Some(&cross));
    assert!(ok, "through the cross-certificate: {text}");
    let (ok, text) = verify(None);
    assert!(
        !ok,
        "without it the old root knows nothing of the new one: {text}"
    );
    let (ok, text) = openssl(
        &["x509", "-in", cross.to_str().unwrap(), "-noout", "-text"],
        old.dir.path(),
    );
    assert!(
        ok && text.contains("CA:TRUE") && text.contains("Certificate Sign"),
        "{text}"
    );

    // Go's standard library and Python's `cryptography`, each trusting only the old root,
    // with the cross-certificate as the one intermediate.
    let go_program = old.path("cross.go");
    std::fs::write(
        &go_program,
        r#"package main

import (
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"os"
)

func load(path string) *x509.Certificate {
	raw, err := os.ReadFile(path)
	if err != nil {
		panic(err)
	}
	block, _ := pem.Decode(raw)
	cert, err := x509.ParseCertificate(block.Bytes)
	if err != nil {
		panic(err)
	}
	return cert
}

func main() {
	roots, middle := x509.NewCertPool(), x509.NewCertPool()
	roots.AddCert(load(os.Args[1]))
	middle.AddCert(load(os.Args[2]))
	chains, err := load(os.Args[3]).Verify(x509.VerifyOptions{Roots: roots, Intermediates: middle,
		KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}})
	if err != nil {
		fmt.Println("refused:", err)
		os.Exit(1)
	}
	fmt.Println("chain of", len(chains[0]))
}
"#,
    )
    .unwrap();
    let go = std::process::Command::new("go")
        .arg("run")
        .arg(&go_program)
        .args([&old_root, &cross, &agent.cert])
        .env("GO111MODULE", "off")
        .env("GOPROXY", "off")
        .env("GOFLAGS", "")
        .current_dir(old.dir.path())
        .output()
        .expect("`go` is installed (deploy/install-deps.sh)");
    let said = String::from_utf8_lossy(&go.stdout);
    assert!(
        go.status.success() && said.contains("chain of 3"),
        "Go: {said}{}",
        String::from_utf8_lossy(&go.stderr)
    );
    let python = std::process::Command::new(common::python())
        .arg("-c")
        .arg(
            "import sys\n\
             from cryptography import x509\n\
             from cryptography.x509.verification import PolicyBuilder, Store\n\
             load = lambda p: x509.load_pem_x509_certificate(open(p, 'rb').read())\n\
             verifier = PolicyBuilder().store(Store([load(sys.argv[1])])).build_client_verifier()\n\
             chain = verifier.verify(load(sys.argv[3]), [load(sys.argv[2])]).chain\n\
             print('chain of', len(chain))\n",
        )
        .args([&old_root, &cross, &agent.cert])
        .output()
        .expect("run python");
    let said = String::from_utf8_lossy(&python.stdout);
    assert!(
        python.status.success() && said.contains("chain of 3"),
        "Python: {said}{}",
        String::from_utf8_lossy(&python.stderr)
    );

    // seb's own path validation, trusting only the old root.
    let read = |p: &std::path::Path| {
        seb::cert::Certificate::parse_pem_chain(&std::fs::read(p).unwrap()).unwrap()
    };
    let leaf = read(&agent.cert).remove(0);
    seb::chain::validate(
        &leaf,
        &read(&cross),
        &read(&old_root),
        std::time::SystemTime::now(),
    )
    .expect("the new root's certificate chains to the old root through the cross-certificate");

    // Recorded where operators look.
    let listed = old.seb_ok(&["cert", "list", "--role", "cross-certificate"]);
    assert!(listed.contains("CN=seb root CA 2,O=seb"), "{listed}");

    // The old root's broker does not serve the new root's holders through it: it knows
    // nothing of the new installation's revocations. The cross-certificate delegates no role.
    let through = common::Identity {
        cert: old.path("through-cross.pem"),
        key: agent.key.clone(),
    };
    std::fs::write(
        &through.cert,
        format!(
            "{}{}",
            std::fs::read_to_string(&agent.cert).unwrap(),
            std::fs::read_to_string(&cross).unwrap()
        ),
    )
    .unwrap();
    let broker = common::Broker::start(&old);
    let refused = post(&old, &broker, &through, "/v1/executions", &request_body());
    assert_eq!(refused.status, 403, "{}", refused.text);
    assert_eq!(
        refused.body["error"]["code"], "role_not_delegated",
        "{}",
        refused.text
    );
    drop(broker);

    // Refused: a root with the old one's name, and something that is not a root at all.
    let same_name = Hsm::initialised();
    for (root, why) in [
        (same_name.trust("root.pem"), "has the current root's name"),
        (agent.cert.clone(), "is not self-signed"),
    ] {
        let out = old.seb(&[
            "cert",
            "cross-sign",
            "--root",
            root.to_str().unwrap(),
            "--ttl",
            "365d",
            "--out",
            old.path("refused.pem").to_str().unwrap(),
        ]);
        assert_clean_failure(&out, why);
        assert!(!old.path("refused.pem").exists());
    }
}

#[test]
fn root_is_warned_off_a_state_directory_that_belongs_to_the_brokers_user() {
    // With SoftHSM2, a key object belongs to the OS user that created it (a file only it can
    // read): an intermediate made by root is invisible to a broker running as its own user.
    let hsm = Hsm::initialised();
    let state = hsm.path("state");
    std::os::unix::fs::chown(&state, Some(65534), Some(65534)).expect("the tests run as root");
    let out = hsm.seb(&["keys"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains("warning: running as root, but the state directory")
            && stderr.contains("sudo -u nobody seb"),
        "{stderr}"
    );
    std::os::unix::fs::chown(&state, Some(0), Some(0)).unwrap();
    let out = hsm.seb(&["keys"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(!stderr.contains("running as root"), "{stderr}");
}

#[test]
fn the_configured_kill_switches_hold_at_every_start_and_the_epoch_floor_is_kept() {
    // After a restore the broker is started frozen (`[policy] frozen = true`): that must hold
    // even on a store where `seb unfreeze` was run once. `[policy] epoch` is a floor the store
    // keeps: removing the line later must not lower the epoch executors have learnt.
    let hsm = Hsm::initialised();
    let agent = hsm.agent("deploy-bot", DEPLOY);
    hsm.seb_ok(&["freeze", "--reason", "drill"]);
    hsm.seb_ok(&["unfreeze"]);
    let config = std::fs::read_to_string(hsm.config()).unwrap();
    std::fs::write(
        hsm.config(),
        format!("{config}\n[policy]\nfrozen = true\nepoch = 5\n"),
    )
    .unwrap();
    let mut broker = common::Broker::start(&hsm);
    let r = post(&hsm, &broker, &agent, "/v1/executions", &request_body());
    assert_eq!(
        (r.status, r.body["error"]["code"].as_str()),
        (503, Some("issuance_frozen")),
        "{}",
        r.text
    );
    let frozen = hsm.audit_entries("frozen");
    assert!(
        frozen.last().is_some_and(|e| e["detail"]
            .as_str()
            .unwrap_or("")
            .contains("[policy] frozen")),
        "{frozen:?}"
    );
    hsm.seb_ok(&["unfreeze"]);
    std::thread::sleep(std::time::Duration::from_millis(1500));
    let r = post(&hsm, &broker, &agent, "/v1/executions", &request_body());
    assert_eq!(r.status, 201, "{}", r.text);
    let claims = common::load::claims(r.body["token"].as_str().unwrap());
    assert_eq!(claims["epoch"], 5, "{claims}");
    assert!(broker.stop());

    // The lines removed: the epoch stays 5, and nothing is frozen.
    std::fs::write(hsm.config(), &config).unwrap();
    assert_eq!(hsm.seb_ok(&["epoch", "show"]).trim(), "5");
    let broker = common::Broker::start(&hsm);
    let r = post(&hsm, &broker, &agent, "/v1/executions", &request_body());
    assert_eq!(r.status, 201, "{}", r.text);
    let claims = common::load::claims(r.body["token"].as_str().unwrap());
    assert_eq!(claims["epoch"], 5, "{claims}");
    // The stored epoch above the configured one is the state at start, not a change: no
    // warning an operator alerting on it would be woken by at every restart.
    let log = broker.log_text();
    assert!(!log.contains("policy epoch raised"), "{log}");
    assert!(log.contains("policy state"), "{log}");
}

#[test]
fn a_store_written_by_a_newer_seb_is_refused_not_misread() {
    // A binary rolled back after `seb migrate`, or a newer store restored: the rows may mean
    // what this seb does not know. PostgreSQL refused it already; SQLite took it silently.
    let hsm = Hsm::initialised();
    let db = rusqlite::Connection::open(hsm.path("state/seb.db")).unwrap();
    db.pragma_update(None, "user_version", 99).unwrap();
    drop(db);
    for command in [&["migrate"][..], &["cert", "list"]] {
        let out = hsm.seb(command);
        assert_clean_failure(&out, "newer than this seb's");
    }
    let out = hsm.seb(&["check"]);
    assert!(!out.status.success());
    let report = String::from_utf8_lossy(&out.stdout);
    assert!(report.contains("newer than this seb's"), "{report}");
}

#[test]
fn seb_check_warns_a_year_before_the_root_expires() {
    // Its successor is a ceremony (OPERATIONS §11): 30 days' notice is too little, and
    // certificates under it cannot outlive it.
    let hsm = Hsm::provision();
    let config = std::fs::read_to_string(hsm.config()).unwrap();
    std::fs::write(
        hsm.config(),
        format!("{config}\n[ca]\nroot_validity = \"200d\"\n"),
    )
    .unwrap();
    hsm.seb_ok(&["init"]);
    let out = hsm.seb(&["check"]);
    let report = String::from_utf8_lossy(&out.stdout);
    assert!(
        report.contains("the root certificate expires at") && report.contains("within a year"),
        "{report}"
    );
}

/// Outside review: `seb check` chose the newest certificate of each holder before leaving out
/// revoked ones, so a renewal revoked as superseded hid the re-keyed certificate in use beside
/// it, expiring unseen.
#[test]
fn check_warns_about_the_certificate_in_use_not_a_revoked_renewal_beside_it() {
    let hsm = Hsm::initialised();
    let grants = hsm.grants_file("grants.toml", GRANTS);
    let first = hsm.issue_for(
        "40d",
        "holder",
        "CN=holder",
        "agent",
        &["--grants", &grants],
    );
    let renewed = hsm.path("holder-renewed.pem");
    hsm.seb_ok(&[
        "cert",
        "renew",
        "--serial",
        &openssl_serial(&first),
        "--ttl",
        "60d",
        "--out",
        renewed.to_str().unwrap(),
    ]);
    // Re-keyed with a fresh CSR, for 10 days; the renewal is then revoked as superseded.
    let rekeyed = hsm.issue_for(
        "10d",
        "holder-new",
        "CN=holder",
        "agent",
        &["--grants", &grants],
    );
    hsm.revoke_for(&openssl_serial(&first), "superseded");
    hsm.revoke_for(&openssl_serial(&renewed), "superseded");
    let text = hsm.seb_ok(&["check"]);
    let serial = openssl_serial(&rekeyed);
    assert!(
        text.lines().any(
            |l| l.starts_with("warning  the agent certificate \"CN=holder\"")
                && l.contains(&format!("seb cert renew --serial {serial}"))
        ),
        "{text}"
    );
}

/// A database damaged on disk (as a backup restored beside the old write-ahead log comes out)
/// is a problem `seb check` names, with what to do, instead of "0 problem(s)".
#[test]
fn check_finds_a_damaged_database() {
    let hsm = Hsm::initialised();
    let text = hsm.seb_ok(&["check"]);
    assert!(
        text.contains("the database passes SQLite's quick_check"),
        "{text}"
    );
    let db = hsm.path("state/seb.db");
    let len = std::fs::metadata(&db).unwrap().len();
    assert!(len >= 4 * 4096, "a database of {len} bytes");
    {
        use std::os::unix::fs::FileExt;
        let file = std::fs::OpenOptions::new().write(true).open(&db).unwrap();
        // Page 3's b-tree header and cell pointers.
        file.write_all_at(&[0xA5; 64], 2 * 4096).unwrap();
    }
    let out = hsm.seb(&["check"]);
    assert_clean_failure(&out, "problem(s) found");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.lines()
            .any(|l| l.starts_with("problem  the database is damaged") && l.contains("seb.db-wal")),
        "{text}"
    );
}

/// A renewal to standard output that cannot be written (a full disk behind a redirect) names
/// the serial it issued and recorded, so that certificate can be revoked.
#[test]
fn a_renewal_that_cannot_reach_standard_output_names_its_serial() {
    let hsm = Hsm::initialised();
    let agent = hsm.agent("deploy-bot", GRANTS);
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_seb"))
        .args(["--config", hsm.config().to_str().unwrap()])
        .args(["cert", "renew", "--serial", &openssl_serial(&agent.cert)])
        .stdout(
            std::fs::File::options()
                .write(true)
                .open("/dev/full")
                .unwrap(),
        )
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    let listed = hsm.seb_ok(&["cert", "list"]);
    let renewed = listed
        .lines()
        .filter(|l| l.contains("CN=deploy-bot"))
        .filter_map(|l| l.split_whitespace().next())
        .find(|serial| *serial != openssl_serial(&agent.cert))
        .unwrap_or_else(|| panic!("no renewal listed: {listed}"));
    assert!(
        stderr.contains(&format!("seb cert revoke --serial {renewed}")),
        "{stderr}\n{listed}"
    );
}

/// The demo's action writes plain file names only: no separators, and no control or
/// formatting characters a terminal listing the directory would obey (outside review).
#[test]
fn demo_write_refuses_names_that_are_not_plain() {
    let dir = tempfile::tempdir().unwrap();
    let target = dir.path().display().to_string();
    for name in [
        "a/b",
        "..",
        "\u{1b}]0;pwned\u{7}.txt",
        "nl\nx",
        "rlo\u{202e}txt.exe",
    ] {
        let out = common::seb(&["demo-write", "--dir", &target, name, "x"], dir.path());
        assert_clean_failure(&out, "a plain file name only");
    }
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    let out = common::seb(
        &["demo-write", "--dir", &target, "notes.txt", "x"],
        dir.path(),
    );
    common::assert_success(&out, "demo-write notes.txt");
}

/// A token never outlives the certificate verifiers check it under, and once the token
/// certificate has expired nothing is signed: `503 token_certificate_invalid`, and `/healthz`
/// is not ready (outside review: the broker went on issuing tokens every verifier refused).
#[test]
fn an_expired_token_certificate_stops_issuance() {
    let hsm = Hsm::provision();
    let config = std::fs::read_to_string(hsm.config()).unwrap();
    std::fs::write(
        hsm.config(),
        format!("{config}\n[ca]\nservice_validity = \"8s\"\n"),
    )
    .unwrap();
    hsm.seb_ok(&["init"]);
    let token_cert =
        seb::cert::Certificate::parse(&std::fs::read(hsm.trust("token.pem")).unwrap()).unwrap();
    let agent = hsm.agent("deploy-bot", DEPLOY);
    let broker = common::Broker::start(&hsm);
    let tls = hsm.tls(&agent, false);
    common::runtime().block_on(async {
        // One connection for the whole test: the broker's TLS certificate expires too, and a
        // new handshake would be refused by the client.
        let mut client = seb::client::Client::connect(&broker.url, &tls)
            .await
            .unwrap();
        let r = client
            .post_json("/v1/executions", &request_body())
            .await
            .unwrap();
        assert_eq!(r.status, 201, "{}", r.text);
        let claims = common::load::claims(r.body["token"].as_str().unwrap());
        let until = seb::time::unix(token_cert.not_after());
        assert!(claims["exp"].as_u64().unwrap() <= until, "{claims}");
        let wait = token_cert
            .not_after()
            .duration_since(std::time::SystemTime::now())
            .unwrap_or_default();
        tokio::time::sleep(wait + std::time::Duration::from_secs(2)).await;
        let r = client
            .post_json("/v1/executions", &request_body())
            .await
            .unwrap();
        assert_eq!(
            (r.status, r.body["error"]["code"].as_str()),
            (503, Some("token_certificate_invalid")),
            "{}",
            r.text
        );
        assert!(r.body.get("token").is_none());
        let health = client.send("GET", "/healthz", None).await.unwrap();
        assert_eq!(health.status, 503, "{}", health.text);
        assert_eq!(
            health.body["checks"]["certificates"]["ok"], false,
            "{}",
            health.text
        );
    });
}
