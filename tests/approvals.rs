//! Multi-party approval end to end, over real TLS with real certificates and a real SoftHSM2
//! token: 2-of-3 approvals signed by the approvers' own keys, each refusal with its code,
//! offline verification of the approvals in the token, expiry, restarts, the webhook.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::io::{Read, Write};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::{runtime, Broker, Hsm, Identity};
use seb::approval::{self, ApproverKey, Decision};
use seb::cert::Certificate;
use seb::client::{ApiResponse, Client};
use serde_json::{json, Value};

const GRANTS: &str = r#"
[[grant]]
operation = "db.migrate"
resource  = "prod/payments/db"
max_ttl   = "60s"
params.version = { min = 1, max = 1000 }
approval  = { required = 2, group = "sre-leads" }
"#;

fn migrate(version: i64) -> Value {
    json!({
        "operation": "db.migrate",
        "resource": "prod/payments/db",
        "params": {"version": version},
        "justification": "schema change for INC-77",
    })
}

struct Setup {
    hsm: Hsm,
    broker: Broker,
    agent: Identity,
    alice: Identity,
    bob: Identity,
    carol: Identity,
}

/// A broker with an agent whose grant needs 2 approvers of `sre-leads`, and three approvers of
/// that group. `extra_config` is appended to seb.toml before the broker starts.
fn setup(extra_config: &str) -> Setup {
    let hsm = Hsm::initialised();
    if !extra_config.is_empty() {
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(hsm.config())
            .unwrap();
        writeln!(f, "\n{extra_config}").unwrap();
    }
    let agent = hsm.agent("deploy-bot", GRANTS);
    let approver = |name: &str| {
        hsm.identity(
            name,
            &format!("CN={name}"),
            "approver",
            &["--group", "sre-leads"],
        )
    };
    let (alice, bob, carol) = (approver("alice"), approver("bob"), approver("carol"));
    let broker = Broker::start(&hsm);
    Setup {
        hsm,
        broker,
        agent,
        alice,
        bob,
        carol,
    }
}

fn call(s: &Setup, who: &Identity, method: &str, path: &str, body: Option<&Value>) -> ApiResponse {
    let tls = s.hsm.tls(who, true);
    runtime().block_on(async {
        let mut client = Client::connect(&s.broker.url, &tls).await.unwrap();
        match body {
            Some(b) => client.post_json(path, b).await.unwrap(),
            None => client.send(method, path, None).await.unwrap(),
        }
    })
}

fn code(r: &ApiResponse) -> &str {
    r.body["error"]["code"]
        .as_str()
        .unwrap_or_else(|| panic!("no error code in {} {}", r.status, r.text))
}

/// The thumbprint of `who`'s certificate (the leaf of its chain file).
fn thumbprint(who: &Identity) -> String {
    let chain = Certificate::parse_pem_chain(&std::fs::read(&who.cert).unwrap()).unwrap();
    seb::base64url::encode(&chain[0].thumbprint_sha256().unwrap())
}

/// `who` signs `decision` over `digest` for `agent`'s request with its own key.
fn signature(who: &Identity, decision: Decision, digest: &str, agent: &str) -> String {
    let key = ApproverKey::from_pkcs8_pem(&std::fs::read_to_string(&who.key).unwrap()).unwrap();
    seb::base64url::encode(&key.sign(&approval::message(decision, digest, agent)))
}

/// Posts `who`'s decision on request `id` (whose digest is `digest`).
fn decide(s: &Setup, who: &Identity, id: &str, decision: Decision, digest: &str) -> ApiResponse {
    let sig = signature(who, decision, digest, &thumbprint(&s.agent));
    call(
        s,
        who,
        "POST",
        &format!("/v1/executions/{id}/approvals"),
        Some(&json!({"decision": decision.as_str(), "signature": sig, "reason": "looked at it"})),
    )
}

/// Asks for a migration as the agent; returns (request id, request digest).
fn ask(s: &Setup, version: i64) -> (String, String) {
    let r = call(
        s,
        &s.agent,
        "POST",
        "/v1/executions",
        Some(&migrate(version)),
    );
    assert_eq!(r.status, 202, "{}", r.text);
    assert_eq!(r.body["status"], "pending_approval");
    (
        r.body["request_id"].as_str().unwrap().to_owned(),
        r.body["request_digest"].as_str().unwrap().to_owned(),
    )
}

fn approver_args(s: &Setup, who: &Identity) -> Vec<String> {
    vec![
        "--broker".into(),
        s.broker.url.clone(),
        "--ca".into(),
        s.hsm.trust("root.pem").display().to_string(),
        "--cert".into(),
        who.cert.display().to_string(),
        "--key".into(),
        who.key.display().to_string(),
    ]
}

/// Starts `seb request --wait` for a migration as the agent, in the background.
fn request_and_wait(s: &Setup, version: i64, timeout: &str) -> Child {
    let params = format!("{{\"version\":{version}}}");
    Command::new(env!("CARGO_BIN_EXE_seb"))
        .args(["request"])
        .args(approver_args(s, &s.agent))
        .args([
            "--operation",
            "db.migrate",
            "--resource",
            "prod/payments/db",
            "--params",
            &params,
            "--justification",
            "schema change for INC-77",
            "--wait",
            "--timeout",
            timeout,
        ])
        .current_dir(s.hsm.dir.path())
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// The open requests `who` may decide, via `seb pending --json`.
fn pending(s: &Setup, who: &Identity) -> Vec<Value> {
    let conn = approver_args(s, who);
    let mut args = vec!["pending"];
    args.extend(conn.iter().map(String::as_str));
    args.push("--json");
    let out = common::seb(&args, s.hsm.dir.path());
    common::assert_success(&out, "seb pending");
    serde_json::from_slice::<Value>(&out.stdout)
        .unwrap()
        .as_array()
        .unwrap()
        .clone()
}

fn wait_for_pending(s: &Setup, who: &Identity) -> Value {
    for _ in 0..100 {
        if let Some(r) = pending(s, who).into_iter().next() {
            return r;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("no pending request appeared");
}

fn claims_of(token: &str) -> Value {
    let part = token.split('.').nth(1).unwrap();
    serde_json::from_slice(&seb::base64url::decode(part).unwrap()).unwrap()
}

/// The audit log's entries of `kind`, read from the stopped broker's store.
fn audit_entries(hsm: &Hsm, kind: &str) -> Vec<Value> {
    hsm.audit_entries(kind)
}

fn events(hsm: &Hsm, kind: &str) -> Vec<Value> {
    use seb::store::Store;
    let store = seb::store::sqlite::SqliteStore::open(&hsm.path("state")).unwrap();
    // The store's notes of this kind (JSON details); audit entries of the same kind, which
    // `events` also lists, are checked with `audit_entries`.
    store
        .events(kind)
        .unwrap()
        .into_iter()
        .filter_map(|(_, d)| serde_json::from_str(&d).ok())
        .collect()
}

#[test]
fn two_of_three_approvals_end_to_end_survive_a_restart_and_verify_offline() {
    let mut s = setup("");
    let dir = s.hsm.dir.path().to_owned();
    let waiter = request_and_wait(&s, 42, "2m");

    // Approvers see exactly what they sign.
    let shown = wait_for_pending(&s, &s.alice);
    let id = shown["request_id"].as_str().unwrap().to_owned();
    assert_eq!(shown["operation"], "db.migrate");
    assert_eq!(shown["resource"], "prod/payments/db");
    assert_eq!(shown["params"], json!({"version": 42}));
    assert_eq!(shown["justification"], "schema change for INC-77");
    assert_eq!(shown["requester"]["subject"], "CN=deploy-bot");
    assert_eq!(shown["approvals_required"], 2);
    assert_eq!(shown["approval_group"], "sre-leads");
    let digest = shown["request_digest"].as_str().unwrap().to_owned();

    // Alice approves with the CLI (signing locally).
    let conn = approver_args(&s, &s.alice);
    let mut args = vec!["approve"];
    args.extend(conn.iter().map(String::as_str));
    args.extend(["--reason", "reviewed the migration", id.as_str()]);
    let out = common::seb(&args, &dir);
    common::assert_success(&out, "seb approve");
    let answer: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(answer["status"], "pending_approval");

    // The same approver twice counts once.
    let again = decide(&s, &s.alice, &id, Decision::Approve, &digest);
    assert_eq!(again.status, 409, "{}", again.text);
    assert_eq!(code(&again), "duplicate_approval");
    let status = call(&s, &s.agent, "GET", &format!("/v1/executions/{id}"), None);
    assert_eq!(status.body["status"], "pending_approval", "{}", status.text);
    assert_eq!(status.body["approvals"].as_array().unwrap().len(), 1);
    assert!(status.body.get("token").is_none());
    // `seb approve` run again says so, and posts nothing: no refused decision of Alice's
    // reaches the audit log from it.
    let out = common::seb(&args, &dir);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("duplicate_approval"), "{stderr}");

    // The pending request survives a broker restart.
    assert!(s.broker.stop());
    let alices: Vec<Value> = audit_entries(&s.hsm, "approval_given")
        .into_iter()
        .filter(|e| e["cert"]["subject"] == "CN=alice")
        .collect();
    let codes: Vec<&Value> = alices.iter().map(|e| &e["code"]).collect();
    assert_eq!(
        codes,
        [&Value::Null, &json!("duplicate_approval")],
        "{alices:#?}"
    );
    s.broker = Broker::start(&s.hsm);
    let shown = wait_for_pending(&s, &s.bob);
    assert_eq!(shown["request_id"], id.as_str());
    assert_eq!(shown["approvals"].as_array().unwrap().len(), 1);

    // Bob completes the quorum; the token is signed in the device.
    let done = decide(&s, &s.bob, &id, Decision::Approve, &digest);
    assert_eq!(done.status, 200, "{}", done.text);
    assert_eq!(done.body["status"], "granted");
    assert!(
        done.body.get("token").is_none(),
        "approvers never get the token"
    );

    // The waiting agent gets the token (exit 0, the token alone on stdout).
    let out = waiter.wait_with_output().unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let token = String::from_utf8(out.stdout).unwrap().trim().to_owned();
    let claims = claims_of(&token);
    assert_eq!(claims["authorization_details"][0]["approvals"], 2);
    assert_eq!(
        claims["authorization_details"][0]["approval_group"],
        "sre-leads"
    );
    assert_eq!(
        claims["authorization_details"][0]["request_digest"],
        digest.as_str()
    );
    let approvals = claims["approvals"].as_array().unwrap();
    assert_eq!(approvals.len(), 2);
    assert_eq!(approvals[0]["x5t#S256"], thumbprint(&s.alice).as_str());
    assert_eq!(approvals[1]["x5t#S256"], thumbprint(&s.bob).as_str());

    // Only the requesting agent can fetch it.
    let mine = call(&s, &s.agent, "GET", &format!("/v1/executions/{id}"), None);
    assert_eq!(mine.body["token"], token.as_str());
    let theirs = call(&s, &s.carol, "GET", &format!("/v1/executions/{id}"), None);
    assert_eq!(theirs.body["status"], "granted");
    assert!(theirs.body.get("token").is_none());

    // A late approval finds the request closed.
    let late = decide(&s, &s.carol, &id, Decision::Approve, &digest);
    assert_eq!(late.status, 409, "{}", late.text);
    assert_eq!(code(&late), "request_closed");

    // Offline: the executor checks the quorum with the approvers' certificates.
    let bundle = call(&s, &s.agent, "GET", "/v1/trust", None).text;
    std::fs::write(dir.join("bundle.pem"), bundle).unwrap();
    let approvers: String = [&s.alice, &s.bob, &s.carol]
        .iter()
        .map(|who| std::fs::read_to_string(&who.cert).unwrap())
        .collect();
    std::fs::write(dir.join("approvers.pem"), approvers).unwrap();
    std::fs::write(dir.join("token.jwt"), &token).unwrap();
    let verify = |token_file: &str, approvers: Option<&str>| {
        let mut args = vec![
            "token",
            "verify",
            "--trust",
            "bundle.pem",
            "--token",
            token_file,
            "--operation",
            "db.migrate",
            "--resource",
            "prod/payments/db",
            "--cert",
            s.agent.cert.to_str().unwrap(),
            "--params",
            r#"{"version":42}"#,
        ];
        if let Some(a) = approvers {
            args.extend(["--approvers", a]);
        }
        common::seb(&args, &dir)
    };
    common::assert_success(&verify("token.jwt", Some("approvers.pem")), "token verify");
    // Without the approvers' certificates the quorum cannot be checked: refused.
    common::assert_clean_failure(&verify("token.jwt", None), "unknown_approver");
    // An approval removed or altered: the token no longer verifies.
    let parts: Vec<&str> = token.split('.').collect();
    let mut tampered = claims.clone();
    tampered["approvals"].as_array_mut().unwrap().pop();
    let removed = format!(
        "{}.{}.{}",
        parts[0],
        seb::base64url::encode(tampered.to_string().as_bytes()),
        parts[2]
    );
    std::fs::write(dir.join("removed.jwt"), removed).unwrap();
    common::assert_clean_failure(
        &verify("removed.jwt", Some("approvers.pem")),
        "bad_signature",
    );
    let mut altered = claims.clone();
    altered["approvals"][0]["sig"] = json!(signature(
        &s.alice,
        Decision::Approve,
        &digest,
        &thumbprint(&s.carol)
    ));
    let altered = format!(
        "{}.{}.{}",
        parts[0],
        seb::base64url::encode(altered.to_string().as_bytes()),
        parts[2]
    );
    std::fs::write(dir.join("altered.jwt"), altered).unwrap();
    common::assert_clean_failure(
        &verify("altered.jwt", Some("approvers.pem")),
        "bad_signature",
    );

    // Each decision is on record, in the audit log only (no second copy in the store's
    // events): the two approvals that counted, with the approver's reason, and the ones
    // refused (the same approver again, the late one) with their codes.
    assert!(s.broker.stop());
    assert!(events(&s.hsm, "approval").is_empty());
    let given = audit_entries(&s.hsm, "approval_given");
    let counted: Vec<_> = given.iter().filter(|e| e.get("code").is_none()).collect();
    assert_eq!(counted.len(), 2, "{given:?}");
    assert_eq!(counted[0]["detail"], "reviewed the migration", "{given:?}");
    // Each names the canonical request digest it signed (issue 12: an entry names it).
    assert!(
        counted
            .iter()
            .all(|e| e["request_digest"] == digest.as_str()),
        "{given:?}"
    );
    assert_eq!(counted[1]["cert"]["subject"], "CN=bob", "{given:?}");
    assert!(counted
        .iter()
        .all(|e| e["decision"] == "approve" && e["request_id"].is_string()));
    // Each names its approver's certificate in full: thumbprint, serial and subject.
    let alice = Certificate::parse(&std::fs::read(&s.alice.cert).unwrap()).unwrap();
    assert_eq!(counted[0]["cert"]["subject"], "CN=alice", "{given:?}");
    assert_eq!(
        counted[0]["cert"]["serial"].as_str().map(str::to_uppercase),
        Some(alice.serial_hex().to_uppercase()),
        "{given:?}"
    );
    assert!(
        given.iter().any(|e| e["code"] == "duplicate_approval"),
        "{given:?}"
    );
    // The grant after the quorum names the agent's certificate as a direct grant does:
    // thumbprint, serial and subject.
    let granted = audit_entries(&s.hsm, "execution_granted");
    let agent = Certificate::parse(&std::fs::read(&s.agent.cert).unwrap()).unwrap();
    assert!(
        granted.iter().any(|e| e["decision"] == "granted"
            && e["approvals_required"] == 2
            && e["cert"]["serial"] == agent.serial_hex()
            && e["cert"]["subject"] == "CN=deploy-bot"),
        "{granted:#?}"
    );
}

/// An intermediate delegated to issue approvers (`issue-ca --roles agent,approver`) can give
/// them any group. Its approvers decide for agents below it only: a request of the root's own
/// agent is refused to them (and not listed for them), one of the team's agents is theirs.
#[test]
fn an_approval_stops_counting_once_its_approver_is_revoked() {
    // Alice approves, then her certificate is revoked (a stolen key): Bob's approval does not
    // complete the quorum with hers; Alice's with a new certificate does, and the token names
    // Bob and Alice's new certificate only.
    let s = setup("");
    let (id, digest) = ask(&s, 9);
    let r = decide(&s, &s.alice, &id, Decision::Approve, &digest);
    assert_eq!(r.status, 200, "{}", r.text);
    let serial = Certificate::parse(&std::fs::read(&s.alice.cert).unwrap())
        .unwrap()
        .serial_hex();
    s.hsm.revoke_compromised(&serial);
    let r = decide(&s, &s.bob, &id, Decision::Approve, &digest);
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.body["status"], "pending_approval", "{}", r.text);
    let r = call(&s, &s.agent, "GET", &format!("/v1/executions/{id}"), None);
    assert_eq!(r.body["status"], "pending_approval", "{}", r.text);
    assert!(r.body.get("token").is_none(), "{}", r.text);
    // Nobody is told that the quorum is met: the status and the pending list show the
    // approvals that count (Bob's), not Alice's.
    let who = |approvals: &Value| -> Vec<String> {
        approvals
            .as_array()
            .unwrap_or_else(|| panic!("no approvals in {approvals}"))
            .iter()
            .map(|a| a["approver"].as_str().unwrap_or_default().to_owned())
            .collect()
    };
    assert_eq!(who(&r.body["approvals"]), vec!["CN=bob"], "{}", r.text);
    let r = call(&s, &s.carol, "GET", "/v1/executions?status=pending", None);
    let listed = r.body["requests"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["request_id"] == id.as_str())
        .unwrap_or_else(|| panic!("{id} not listed: {}", r.text));
    assert_eq!(who(&listed["approvals"]), vec!["CN=bob"], "{}", r.text);
    // Bob, whose approval counts, is not offered the request again (his would be refused as
    // a duplicate); Alice with a new certificate, whose approval no longer counts, is.
    let listed_for = |who: &Identity| {
        let r = call(&s, who, "GET", "/v1/executions?status=pending", None);
        r.body["requests"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p["request_id"] == id.as_str())
    };
    assert!(!listed_for(&s.bob));

    // Alice, with a new certificate (a new key), may decide again: her revoked approval does
    // not count, so the new one is no duplicate, and it completes the quorum with Bob's.
    let alice_again = s.hsm.identity(
        "alice-new",
        "CN=alice",
        "approver",
        &["--group", "sre-leads"],
    );
    assert!(listed_for(&alice_again));
    let r = decide(&s, &alice_again, &id, Decision::Approve, &digest);
    assert_eq!(r.status, 200, "{}", r.text);
    let r = call(&s, &s.agent, "GET", &format!("/v1/executions/{id}"), None);
    assert_eq!(r.body["status"], "granted", "{}", r.text);
    let claims = claims_of(r.body["token"].as_str().unwrap());
    assert_eq!(claims["authorization_details"][0]["approvals"], 2);
    let named: Vec<String> = claims["approvals"]
        .as_array()
        .unwrap_or_else(|| panic!("no approvals in {claims}"))
        .iter()
        .map(|a| a["x5t#S256"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(
        named,
        vec![thumbprint(&s.bob), thumbprint(&alice_again)],
        "{claims}"
    );
    // Once granted, the status shows the approvals the token carries, not the revoked one.
    let shown: Vec<String> = r.body["approvals"]
        .as_array()
        .unwrap_or_else(|| panic!("no approvals in {}", r.text))
        .iter()
        .map(|a| a["x5t#S256"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(shown, named, "{}", r.text);
    // Closed now: a late approver is told so.
    let r = decide(&s, &s.carol, &id, Decision::Approve, &digest);
    assert_eq!((r.status, code(&r)), (409, "request_closed"), "{}", r.text);
}

#[test]
fn requests_and_quorums_right_after_the_cli_wrote_to_the_log_are_recorded() {
    // `seb cert revoke` appends to the log from its own process; the broker's next audited
    // write finds its reserved index taken and must make it again, not answer 503.
    let s = setup("");
    let revoke_a_spare = |name: &str| {
        let spare = s
            .hsm
            .identity(name, &format!("CN={name}"), "approver", &["--group", "dba"]);
        let serial = Certificate::parse(&std::fs::read(&spare.cert).unwrap())
            .unwrap()
            .serial_hex();
        s.hsm.revoke_compromised(&serial);
    };
    for round in 0..2 {
        revoke_a_spare(&format!("spare-a{round}"));
        let (id, digest) = ask(&s, 30 + round);
        let r = decide(&s, &s.alice, &id, Decision::Approve, &digest);
        assert_eq!(r.status, 200, "{}", r.text);
        revoke_a_spare(&format!("spare-b{round}"));
        let r = decide(&s, &s.bob, &id, Decision::Approve, &digest);
        assert_eq!(r.status, 200, "{}", r.text);
        let r = call(&s, &s.agent, "GET", &format!("/v1/executions/{id}"), None);
        assert_eq!(r.body["status"], "granted", "{}", r.text);
    }
}

#[test]
fn a_justification_cannot_rewrite_what_approvers_see() {
    // An agent that could put terminal escapes or bidirectional overrides in its
    // justification could overwrite the parameters line an approver reads before signing.
    let s = setup("");
    for hostile in [
        "INC-1\u{1b}[1A\r\u{1b}[2K  params         {\"version\":1}",
        "looks fine \u{202e}1=noisrev",
        "C1 \u{9b}2K",
        "bell \u{7}",
        "a fake line\u{2028}  params         {\"version\":1}",
        "hidden \u{e0041}\u{e0042} tags",
    ] {
        let mut body = migrate(5);
        body["justification"] = json!(hostile);
        let r = call(&s, &s.agent, "POST", "/v1/executions", Some(&body));
        assert_eq!(
            (r.status, code(&r)),
            (400, "invalid_request"),
            "{hostile:?}: {}",
            r.text
        );
    }
    // Each attempt leaves a trace (refused before any decision, so no request id), and so
    // does params that is not an object.
    let mut body = migrate(5);
    body["params"] = json!([5]);
    let r = call(&s, &s.agent, "POST", "/v1/executions", Some(&body));
    assert_eq!((r.status, code(&r)), (400, "invalid_request"), "{}", r.text);
    let refused = s.hsm.audit_entries_eventually("execution_denied", 7);
    assert_eq!(refused.len(), 7, "{refused:?}");
    for entry in &refused {
        assert_eq!(entry["code"], "invalid_request", "{entry}");
        assert_eq!(entry["operation"], "db.migrate", "{entry}");
        assert!(entry.get("request_id").is_none(), "{entry}");
        assert!(entry.get("detail").is_none(), "{entry}");
    }
    // What was asked for, by digest, as a decision's entry says it.
    let digest = seb::canonical::params_digest(&json!([5])).unwrap();
    assert_eq!(refused[6]["params_digest"], seb::base64url::encode(&digest));
    // Line feeds and tabs are allowed, and `seb pending` shows them as escapes.
    let mut body = migrate(5);
    body["justification"] = json!("two\nlines\tand a tab");
    let r = call(&s, &s.agent, "POST", "/v1/executions", Some(&body));
    assert_eq!(r.status, 202, "{}", r.text);
    let mut args = vec!["pending".to_owned()];
    args.extend(approver_args(&s, &s.alice));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = common::seb(&args, s.hsm.dir.path());
    common::assert_success(&out, "seb pending");
    let shown = String::from_utf8_lossy(&out.stdout);
    assert!(
        shown.contains(r"justification  two\u{a}lines\u{9}and a tab"),
        "{shown}"
    );
    // The audit log keeps it as sent.
    let logged = audit_entries(&s.hsm, "execution_pending");
    assert_eq!(
        logged.last().unwrap()["detail"],
        "two\nlines\tand a tab",
        "{logged:?}"
    );
    // An approver's reason is shown to the other approvers and kept in the log: the same
    // rules, and a refused reason does not count as an approval.
    let id = r.body["request_id"].as_str().unwrap();
    let digest = r.body["request_digest"].as_str().unwrap();
    let sig = signature(&s.alice, Decision::Approve, digest, &thumbprint(&s.agent));
    let hostile = "all good\u{1b}]0;x\u{7}\r\u{202e}ko";
    let r = call(
        &s,
        &s.alice,
        "POST",
        &format!("/v1/executions/{id}/approvals"),
        Some(&json!({"decision": "approve", "signature": sig, "reason": hostile})),
    );
    assert_eq!((r.status, code(&r)), (400, "invalid_request"), "{}", r.text);
    let r = call(&s, &s.agent, "GET", &format!("/v1/executions/{id}"), None);
    assert_eq!(r.status, 200, "{}", r.text);
    assert!(
        r.body["approvals"].as_array().is_none_or(|a| a.is_empty()),
        "{}",
        r.text
    );
    // `seb approve` puts the id into a URL: anything but an id is refused before any call.
    for bad in [
        "../../v1/tokens/redeem",
        "a?status=pending&x=yyyyyyyyyyyyyyyy",
    ] {
        let mut args = vec!["approve".to_owned(), bad.to_owned()];
        args.extend(approver_args(&s, &s.alice));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = common::seb(&args, s.hsm.dir.path());
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{bad}: {stderr}");
        assert!(stderr.contains("is not a request id"), "{bad}: {stderr}");
    }
}

#[test]
fn approvers_from_an_intermediate_decide_only_for_agents_below_it() {
    // One agent files a whole page of the list below: more than one agent may have open.
    let s = setup("[approvals]\nmax_open_per_agent = 600");
    let team_grants = s.hsm.grants_file("team.toml", GRANTS);
    // Allowed, with a warning: whoever holds the team's key can issue an agent and all of the
    // approvers its grants' approval rule asks for.
    let team_pem = s.hsm.path("team.pem");
    let out = s.hsm.seb(&[
        "cert",
        "issue-ca",
        "--label",
        "team",
        "--subject",
        "CN=team CA",
        "--ttl",
        "60d",
        "--grants",
        &team_grants,
        "--roles",
        "agent,approver",
        "--out",
        team_pem.to_str().unwrap(),
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains("warning") && stderr.contains("every one of those approvers"),
        "{stderr}"
    );
    // So is one below a CA whose grants carry the rule, with no grants of its own.
    let org_pem = s.hsm.path("org.pem");
    let sub_pem = s.hsm.path("sub.pem");
    s.hsm.seb_ok(&[
        "cert",
        "issue-ca",
        "--label",
        "org",
        "--subject",
        "CN=org CA",
        "--ttl",
        "60d",
        "--grants",
        &team_grants,
        "--path-len",
        "1",
        "--roles",
        "agent,approver",
        "--out",
        org_pem.to_str().unwrap(),
    ]);
    let out = s.hsm.seb(&[
        "cert",
        "issue-ca",
        "--label",
        "sub",
        "--subject",
        "CN=sub CA",
        "--ttl",
        "30d",
        "--issuer",
        "org",
        "--roles",
        "agent,approver",
        "--out",
        sub_pem.to_str().unwrap(),
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("every one of those approvers"), "{stderr}");
    let member = |name: &str| {
        s.hsm.identity(
            name,
            &format!("CN={name}"),
            "approver",
            &["--group", "sre-leads", "--issuer", "team"],
        )
    };
    let (tina, tom) = (member("tina"), member("tom"));

    // The root's agent: the team's approvers may neither decide nor see the request.
    let (id, digest) = ask(&s, 21);
    for who in [&tina, &tom] {
        let r = decide(&s, who, &id, Decision::Approve, &digest);
        assert_eq!(
            (r.status, code(&r)),
            (403, "approver_out_of_scope"),
            "{}",
            r.text
        );
        assert!(r.text.contains("CN=team CA"), "{}", r.text);
        let listed = call(&s, who, "GET", "/v1/executions?status=pending", None);
        assert_eq!(listed.status, 200, "{}", listed.text);
        assert!(
            listed.body["requests"]
                .as_array()
                .unwrap()
                .iter()
                .all(|r| r["request_id"] != id.as_str()),
            "{}",
            listed.text
        );
    }
    let status = call(&s, &s.agent, "GET", &format!("/v1/executions/{id}"), None);
    assert_eq!(status.body["approvals"], json!([]), "{}", status.text);
    // The root's approvers decide it.
    decide(&s, &s.alice, &id, Decision::Approve, &digest);
    let r = decide(&s, &s.bob, &id, Decision::Approve, &digest);
    assert_eq!(r.body["status"], "granted", "{}", r.text);

    // The root's agent fills a whole page of the pending list with requests the team's
    // approvers may not decide, all older than the team's next one.
    let tls = s.hsm.tls(&s.agent, true);
    runtime().block_on(async {
        let mut client = Client::connect(&s.broker.url, &tls).await.unwrap();
        let mut filed = 0;
        while filed < seb::broker::MAX_LISTED {
            let r = client
                .post_json("/v1/executions", &migrate(100 + filed as i64))
                .await
                .unwrap();
            if r.status == 429 && r.body["error"]["code"] == "rate_limited" {
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                continue;
            }
            assert_eq!(r.status, 202, "{}", r.text);
            filed += 1;
        }
    });

    // An agent under the team: the team's approvers see and decide its requests.
    let team_agent = s.hsm.identity(
        "team-bot",
        "CN=team-bot",
        "agent",
        &["--grants", &team_grants, "--issuer", "team"],
    );
    let r = call(
        &s,
        &team_agent,
        "POST",
        "/v1/executions",
        Some(&migrate(22)),
    );
    assert_eq!(r.status, 202, "{}", r.text);
    let id = r.body["request_id"].as_str().unwrap().to_owned();
    let digest = r.body["request_digest"].as_str().unwrap().to_owned();
    let listed = call(&s, &tina, "GET", "/v1/executions?status=pending", None);
    let ids: Vec<&str> = listed.body["requests"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|r| r["request_id"].as_str())
        .collect();
    assert_eq!(
        ids,
        vec![id.as_str()],
        "the team's request is listed, and only it"
    );
    // Every open request was looked through for the team's approver: the list is complete.
    assert_eq!(listed.body["truncated"], false, "{}", listed.text);
    // A root approver of the group has 501 open requests to decide and sees the 500 oldest:
    // the list says it is cut short, and `seb pending` says so too.
    let full = call(&s, &s.alice, "GET", "/v1/executions?status=pending", None);
    assert_eq!(
        full.body["requests"].as_array().unwrap().len(),
        seb::broker::MAX_LISTED
    );
    assert_eq!(full.body["truncated"], true);
    let conn = approver_args(&s, &s.alice);
    let mut args = vec!["pending"];
    args.extend(conn.iter().map(String::as_str));
    let out = common::seb(&args, s.hsm.dir.path());
    common::assert_success(&out, "seb pending");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("more wait"), "{stderr}");
    let mut last = None;
    for who in [&tina, &tom] {
        let sig = signature(who, Decision::Approve, &digest, &thumbprint(&team_agent));
        last = Some(call(
            &s,
            who,
            "POST",
            &format!("/v1/executions/{id}/approvals"),
            Some(&json!({"decision": "approve", "signature": sig})),
        ));
    }
    let r = last.unwrap();
    assert_eq!(r.body["status"], "granted", "{}", r.text);
}

#[test]
fn every_illegitimate_approval_is_refused_with_its_code() {
    let mut s = setup("");
    let (id, digest) = ask(&s, 7);

    // An approver of another group.
    let dave = s
        .hsm
        .identity("dave", "CN=dave", "approver", &["--group", "dba"]);
    let r = decide(&s, &dave, &id, Decision::Approve, &digest);
    assert_eq!(
        (r.status, code(&r)),
        (403, "wrong_approval_group"),
        "{}",
        r.text
    );

    // An agent certificate posing as an approver: the access table admits approvers only.
    let other = s.hsm.agent("other-bot", GRANTS);
    let r = decide(&s, &other, &id, Decision::Approve, &digest);
    assert_eq!((r.status, code(&r)), (403, "wrong_role"), "{}", r.text);
    // Agents do not see the pending list either, and approvers list pending requests only.
    let r = call(&s, &s.agent, "GET", "/v1/executions?status=pending", None);
    assert_eq!((r.status, code(&r)), (403, "wrong_role"), "{}", r.text);
    let r = call(&s, &s.alice, "GET", "/v1/executions?status=granted", None);
    assert_eq!((r.status, code(&r)), (400, "invalid_query"), "{}", r.text);

    // A revoked approver.
    let erin = s
        .hsm
        .identity("erin", "CN=erin", "approver", &["--group", "sre-leads"]);
    let serial = Certificate::parse(&std::fs::read(&erin.cert).unwrap())
        .unwrap()
        .serial_hex();
    s.hsm.revoke_compromised(&serial);
    let r = decide(&s, &erin, &id, Decision::Approve, &digest);
    assert_eq!(
        (r.status, code(&r)),
        (403, "certificate_revoked"),
        "{}",
        r.text
    );

    // An approver whose certificate ends before the request's approval deadline (an hour): its
    // approval could be counted into a token issued after it expired, which every offline
    // verifier would refuse. It is turned away with what to do.
    s.hsm
        .identity("frank", "CN=frank", "approver", &["--group", "sre-leads"]);
    let frank = s.hsm.reissue(
        "frank",
        "frank-10min.pem",
        &[
            "--role",
            "approver",
            "--group",
            "sre-leads",
            "--ttl",
            "600s",
        ],
    );
    let r = decide(&s, &frank, &id, Decision::Approve, &digest);
    assert_eq!(
        (r.status, code(&r)),
        (403, "approver_certificate_expiring"),
        "{}",
        r.text
    );
    assert!(r.text.contains("seb cert renew"), "{}", r.text);

    // A signature over other parameters.
    let other_digest = seb::base64url::encode(
        &seb::canonical::request_digest("db.migrate", "prod/payments/db", &json!({"version": 8}))
            .unwrap(),
    );
    let sig = signature(
        &s.alice,
        Decision::Approve,
        &other_digest,
        &thumbprint(&s.agent),
    );
    let r = call(
        &s,
        &s.alice,
        "POST",
        &format!("/v1/executions/{id}/approvals"),
        Some(&json!({"decision": "approve", "signature": sig})),
    );
    assert_eq!(
        (r.status, code(&r)),
        (400, "bad_approval_signature"),
        "{}",
        r.text
    );
    // A rejection's signature does not count as an approval.
    let sig = signature(&s.alice, Decision::Reject, &digest, &thumbprint(&s.agent));
    let r = call(
        &s,
        &s.alice,
        "POST",
        &format!("/v1/executions/{id}/approvals"),
        Some(&json!({"decision": "approve", "signature": sig})),
    );
    assert_eq!(code(&r), "bad_approval_signature", "{}", r.text);

    // The requester approving itself: an approver certificate for the agent's own key and
    // subject.
    let itself = s.hsm.reissue(
        "deploy-bot",
        "deploy-bot-approver.pem",
        &["--role", "approver", "--group", "sre-leads", "--ttl", "30d"],
    );
    let r = decide(&s, &itself, &id, Decision::Approve, &digest);
    assert_eq!((r.status, code(&r)), (403, "self_approval"), "{}", r.text);
    // A new key under the requester's name spelt in other case is the requester all the same
    // (names match case-insensitively, RFC 4518).
    let shouty = s.hsm.identity(
        "deploy-bot-again",
        "CN=Deploy-Bot",
        "approver",
        &["--group", "sre-leads"],
    );
    let r = decide(&s, &shouty, &id, Decision::Approve, &digest);
    assert_eq!((r.status, code(&r)), (403, "self_approval"), "{}", r.text);

    // None of these counted.
    let status = call(&s, &s.agent, "GET", &format!("/v1/executions/{id}"), None);
    assert_eq!(status.body["approvals"], json!([]), "{}", status.text);

    // One approval, then one rejection closes the request; a later approval is refused.
    let r = decide(&s, &s.alice, &id, Decision::Approve, &digest);
    assert_eq!(r.body["status"], "pending_approval", "{}", r.text);
    // Alice again with a second key and her name in capitals counts once.
    let alice_again = s.hsm.identity(
        "alice-again",
        "CN=ALICE",
        "approver",
        &["--group", "sre-leads"],
    );
    let r = decide(&s, &alice_again, &id, Decision::Approve, &digest);
    assert_eq!(
        (r.status, code(&r)),
        (409, "duplicate_approval"),
        "{}",
        r.text
    );
    let r = decide(&s, &s.bob, &id, Decision::Reject, &digest);
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.body["status"], "rejected");
    let r = decide(&s, &s.carol, &id, Decision::Approve, &digest);
    assert_eq!((r.status, code(&r)), (409, "request_closed"), "{}", r.text);
    let status = call(&s, &s.agent, "GET", &format!("/v1/executions/{id}"), None);
    assert_eq!(status.body["status"], "rejected");
    assert!(status.body.get("token").is_none());

    // `seb request --wait` exits 1 on a rejection.
    let waiter = request_and_wait(&s, 9, "1m");
    let shown = wait_for_pending(&s, &s.carol);
    let conn = approver_args(&s, &s.carol);
    let mut args = vec!["approve"];
    args.extend(conn.iter().map(String::as_str));
    args.extend([
        "--reject",
        "--reason",
        "not during the freeze",
        shown["request_id"].as_str().unwrap(),
    ]);
    common::assert_success(
        &common::seb(&args, s.hsm.dir.path()),
        "seb approve --reject",
    );
    let out = waiter.wait_with_output().unwrap();
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("rejected"));

    // `seb approve` gives the broker's code for a request it may not decide, and signs nothing.
    let refused = |who: &Identity, id: &str, code: &str| {
        let conn = approver_args(&s, who);
        let mut args = vec!["approve"];
        args.extend(conn.iter().map(String::as_str));
        args.push(id);
        let out = common::seb(&args, s.hsm.dir.path());
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{stderr}");
        assert!(stderr.contains(code), "wanted {code}: {stderr}");
    };
    refused(&s.carol, &id, "request_closed");
    refused(&s.carol, "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA", "not_found");
    let (open, _) = ask(&s, 8);
    refused(&dave, &open, "wrong_approval_group");
    let status = call(&s, &s.agent, "GET", &format!("/v1/executions/{open}"), None);
    assert_eq!(status.body["approvals"], json!([]), "{}", status.text);

    // Every refused attempt is in the audit log with who tried, on which request, and why:
    // a self-approval or a forged signature is what a SIEM alerts on.
    assert!(s.broker.stop());
    let given = audit_entries(&s.hsm, "approval_given");
    let refusals = |code: &str, subject: &str| {
        given
            .iter()
            .filter(|e| e["code"] == code && e["cert"]["subject"] == subject)
            .count()
    };
    assert_eq!(refusals("wrong_approval_group", "CN=dave"), 2, "{given:#?}");
    assert_eq!(
        refusals("bad_approval_signature", "CN=alice"),
        2,
        "{given:#?}"
    );
    assert_eq!(refusals("self_approval", "CN=deploy-bot"), 1, "{given:#?}");
    assert_eq!(refusals("request_closed", "CN=carol"), 2, "{given:#?}");
    assert_eq!(refusals("not_found", "CN=carol"), 1, "{given:#?}");
    // Refused before the handler read the decision: a revoked approver, another role.
    assert_eq!(refusals("certificate_revoked", "CN=erin"), 1, "{given:#?}");
    assert_eq!(refusals("wrong_role", "CN=other-bot"), 1, "{given:#?}");
    let revoked = given
        .iter()
        .find(|e| e["code"] == "certificate_revoked")
        .unwrap();
    assert_eq!(revoked["request_id"], id.as_str(), "{revoked}");
    assert!(revoked.get("decision").is_none(), "{revoked}");
    let forged = given
        .iter()
        .find(|e| e["code"] == "bad_approval_signature")
        .unwrap();
    assert_eq!(forged["request_id"], id.as_str());
    assert_eq!(forged["decision"], "approve");
    let alice = Certificate::parse(&std::fs::read(&s.alice.cert).unwrap()).unwrap();
    assert_eq!(forged["cert"]["serial"], alice.serial_hex());
}

/// A one-shot HTTP server on the loopback: answers the first `failures` requests 500, then
/// 200, and hands over the body of the first request it answered 200.
fn webhook_server(failures: usize) -> (u16, std::sync::mpsc::Receiver<(Value, usize)>) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut seen = 0;
        for stream in listener.incoming() {
            let mut stream = stream.unwrap();
            stream
                .set_read_timeout(Some(Duration::from_secs(5)))
                .unwrap();
            let mut request = Vec::new();
            let mut buf = [0u8; 4096];
            let body = loop {
                let n = stream.read(&mut buf).unwrap_or(0);
                if n == 0 {
                    break None;
                }
                request.extend_from_slice(&buf[..n]);
                let text = String::from_utf8_lossy(&request).into_owned();
                if let Some(end) = text.find("\r\n\r\n") {
                    let len = text[..end]
                        .lines()
                        .find_map(|l| {
                            l.to_ascii_lowercase()
                                .strip_prefix("content-length:")
                                .map(|v| v.trim().parse::<usize>().unwrap())
                        })
                        .unwrap_or(0);
                    if request.len() >= end + 4 + len {
                        break Some(request[end + 4..end + 4 + len].to_vec());
                    }
                }
            };
            seen += 1;
            let status = if seen <= failures {
                "500 Oops"
            } else {
                "200 OK"
            };
            let _ = stream.write_all(
                format!("HTTP/1.1 {status}\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
                    .as_bytes(),
            );
            if seen > failures {
                if let Some(body) = body {
                    let _ = tx.send((serde_json::from_slice(&body).unwrap(), seen));
                }
            }
        }
    });
    (port, rx)
}

#[test]
fn pending_requests_notify_the_webhook_and_expire() {
    let (port, hook) = webhook_server(1);
    let s = setup(&format!(
        "[approvals]\nttl = \"3s\"\nwebhook_url = \"http://127.0.0.1:{port}/hooks/seb\""
    ));
    let started = std::time::Instant::now();
    let (id, digest) = ask(&s, 11);
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "the webhook must not delay the answer"
    );

    // Retried after the first failure; the summary and a link-free text, no secret.
    let (note, attempt) = hook.recv_timeout(Duration::from_secs(20)).unwrap();
    assert_eq!(attempt, 2);
    assert_eq!(note["event"], "approval_requested");
    assert_eq!(note["request_id"], id.as_str());
    assert_eq!(note["operation"], "db.migrate");
    assert_eq!(note["params"], json!({"version": 11}));
    assert_eq!(note["requester"]["subject"], "CN=deploy-bot");
    assert_eq!(note["approval_group"], "sre-leads");
    let text = note["text"].as_str().unwrap();
    assert!(text.contains(&id) && text.contains("db.migrate"), "{text}");
    assert!(!text.contains("http") && !text.contains("://"), "{text}");
    for secret in ["token", "signature", "sig", "key", "pin"] {
        assert!(note.get(secret).is_none(), "{note}");
    }

    // Past the deadline: expired, and an approval is refused.
    std::thread::sleep(Duration::from_millis(3500));
    let status = call(&s, &s.agent, "GET", &format!("/v1/executions/{id}"), None);
    assert_eq!(status.body["status"], "expired", "{}", status.text);
    let r = decide(&s, &s.alice, &id, Decision::Approve, &digest);
    assert_eq!((r.status, code(&r)), (409, "request_expired"), "{}", r.text);
    assert!(pending(&s, &s.alice).is_empty());

    // `seb request --wait` exits 1 when nobody decides in time.
    let out = request_and_wait(&s, 12, "1m").wait_with_output().unwrap();
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("expired"));

    let mut s = s;
    assert!(s.broker.stop());
    let expired = events(&s.hsm, "approval_expired");
    assert!(
        expired.iter().any(|e| e["request_id"] == id.as_str()),
        "{expired:?}"
    );
    let logged = audit_entries(&s.hsm, "approval_expired");
    assert!(
        logged.iter().any(|e| e["request_id"] == id.as_str()),
        "{logged:?}"
    );
}

/// `seb cert issue` of the CSR in `csr` as an approver of `sre-leads` for 30 days, to `pem`.
fn certify_approver(s: &Setup, csr: &std::path::Path, pem: &std::path::Path) {
    s.hsm.seb_ok(&[
        "cert",
        "issue",
        "--csr",
        csr.to_str().unwrap(),
        "--role",
        "approver",
        "--group",
        "sre-leads",
        "--ttl",
        "30d",
        "--out",
        pem.to_str().unwrap(),
    ]);
}

/// An approver whose key and CSR openssl made, with `subject` in openssl's `/A=x/B=y` form
/// (attributes in that order) and its strings as BMPString where `bmp`.
fn openssl_approver(s: &Setup, name: &str, subject: &str, bmp: bool) -> Identity {
    let path = |file: &str| s.hsm.path(&format!("{name}.{file}"));
    let mask = if bmp { "MASK:0x800" } else { "utf8only" };
    std::fs::write(
        path("cnf"),
        format!("[req]\ndistinguished_name=dn\nstring_mask={mask}\nprompt=no\n[dn]\n"),
    )
    .unwrap();
    let config = path("cnf");
    common::openssl_csr(
        s.hsm.dir.path(),
        &path("key"),
        subject,
        &path("csr"),
        &["-config", config.to_str().unwrap()],
    );
    certify_approver(s, &path("csr"), &path("pem"));
    Identity {
        cert: path("pem"),
        key: path("key"),
    }
}

#[test]
fn one_person_counts_once_whatever_tool_encoded_the_name() {
    // seb keygen and openssl write a name's attributes in opposite orders, and a BMPString
    // CN has no text form in RFC 4514 (it is written as hex): neither makes another person.
    let s = setup("");
    let dora = s.hsm.identity(
        "dora",
        "CN=dora,O=example",
        "approver",
        &["--group", "sre-leads"],
    );
    let dora_again = openssl_approver(&s, "dora-again", "/CN=dora/O=example", false);
    let shown = |who: &Identity| {
        seb::cert::Certificate::parse(&std::fs::read(&who.cert).unwrap())
            .unwrap()
            .subject_string()
    };
    assert_ne!(
        shown(&dora),
        shown(&dora_again),
        "the test needs two spellings"
    );
    let itself = openssl_approver(&s, "bmp-bot", "/CN=deploy-bot", true);
    assert!(
        shown(&itself).starts_with("2.5.4.3=#1e"),
        "{}",
        shown(&itself)
    );

    let (id, digest) = ask(&s, 31);
    let r = decide(&s, &itself, &id, Decision::Approve, &digest);
    assert_eq!((r.status, code(&r)), (403, "self_approval"), "{}", r.text);
    let r = decide(&s, &dora, &id, Decision::Approve, &digest);
    assert_eq!(r.body["status"], "pending_approval", "{}", r.text);
    let r = decide(&s, &dora_again, &id, Decision::Approve, &digest);
    assert_eq!(
        (r.status, code(&r)),
        (409, "duplicate_approval"),
        "{}",
        r.text
    );
    // A second person completes the quorum.
    let r = decide(&s, &s.alice, &id, Decision::Approve, &digest);
    assert_eq!(r.body["status"], "granted", "{}", r.text);
}

/// `who`'s key under another certificate: openssl writes the key with its point compressed,
/// makes a CSR of it under `subject`, and seb certifies it as an approver of `sre-leads`. The
/// identity presents that certificate with `who`'s own key file.
fn same_key_compressed(s: &Setup, who: &Identity, name: &str, subject: &str) -> Identity {
    let path = |file: &str| s.hsm.path(&format!("{name}.{file}"));
    let dir = s.hsm.dir.path();
    let (ok, text) = common::openssl(
        &[
            "ec",
            "-in",
            who.key.to_str().unwrap(),
            "-conv_form",
            "compressed",
            "-out",
            path("key").to_str().unwrap(),
        ],
        dir,
    );
    assert!(ok, "openssl ec: {text}");
    let (ok, text) = common::openssl(
        &[
            "req",
            "-new",
            "-key",
            path("key").to_str().unwrap(),
            "-subj",
            subject,
            "-out",
            path("csr").to_str().unwrap(),
        ],
        dir,
    );
    assert!(ok, "openssl req: {text}");
    let (ok, text) = common::openssl(
        &[
            "req",
            "-in",
            path("csr").to_str().unwrap(),
            "-noout",
            "-text",
        ],
        dir,
    );
    assert!(ok, "{text}");
    let after_pub = text.split("pub:").nth(1).unwrap_or_default().trim_start();
    assert!(
        after_pub.starts_with("02") || after_pub.starts_with("03"),
        "the CSR's point is not compressed: {text}"
    );
    certify_approver(s, &path("csr"), &path("pem"));
    Identity {
        cert: path("pem"),
        key: who.key.clone(),
    }
}

/// One key is one person however a certificate spells its point (outside review: a
/// compressed point made a second approver of the same key, and let an agent's own key
/// approve its request). seb certifies the point uncompressed, and the broker names keys by
/// their uncompressed form.
#[test]
fn one_key_counts_once_however_its_point_is_spelled() {
    let s = setup("");
    let alice_again = same_key_compressed(&s, &s.alice, "alice-again", "/CN=alice-again");
    let (ok, text) = common::openssl(
        &[
            "x509",
            "-in",
            alice_again.cert.to_str().unwrap(),
            "-noout",
            "-text",
        ],
        s.hsm.dir.path(),
    );
    assert!(ok, "{text}");
    assert!(
        text.split("pub:")
            .nth(1)
            .unwrap_or_default()
            .trim_start()
            .starts_with("04"),
        "seb certified the point as the CSR spelled it: {text}"
    );
    let bot_as_approver = same_key_compressed(&s, &s.agent, "bot-approver", "/CN=release-reviewer");

    let (id, digest) = ask(&s, 41);
    let r = decide(&s, &bot_as_approver, &id, Decision::Approve, &digest);
    assert_eq!((r.status, code(&r)), (403, "self_approval"), "{}", r.text);
    let r = decide(&s, &s.alice, &id, Decision::Approve, &digest);
    assert_eq!(r.body["status"], "pending_approval", "{}", r.text);
    let r = decide(&s, &alice_again, &id, Decision::Approve, &digest);
    assert_eq!(
        (r.status, code(&r)),
        (409, "duplicate_approval"),
        "{}",
        r.text
    );
    let r = decide(&s, &s.bob, &id, Decision::Approve, &digest);
    assert_eq!(r.body["status"], "granted", "{}", r.text);
}

/// One agent cannot bury its group's requests in the approvers' list (outside review: 520
/// requests of one agent pushed another agent's out of the 500 listed). Beyond
/// `[approvals] max_open_per_agent` open requests, a new one is refused with 429
/// `too_many_pending` and logged; a decision frees a place; another agent is not affected;
/// the list says whether it is complete.
#[test]
fn one_agent_may_have_only_so_many_requests_open_for_approval() {
    let s = setup("[approvals]\nmax_open_per_agent = 2");
    let (first, first_digest) = ask(&s, 1);
    ask(&s, 2);
    let refused = call(&s, &s.agent, "POST", "/v1/executions", Some(&migrate(3)));
    assert_eq!(refused.status, 429, "{}", refused.text);
    assert_eq!(code(&refused), "too_many_pending");
    assert!(refused.body["request_id"].is_null(), "{}", refused.text);
    let logged = s.hsm.audit_entries_eventually("execution_denied", 1);
    assert!(
        logged
            .iter()
            .any(|e| e["code"] == "too_many_pending" && e["operation"] == "db.migrate"),
        "{logged:?}"
    );
    // Another agent of the same group still gets its request in front of the approvers.
    let other = s.hsm.agent("other-bot", GRANTS);
    let r = call(&s, &other, "POST", "/v1/executions", Some(&migrate(9)));
    assert_eq!(r.status, 202, "{}", r.text);
    let listed = call(&s, &s.alice, "GET", "/v1/executions?status=pending", None);
    assert_eq!(listed.body["requests"].as_array().unwrap().len(), 3);
    assert_eq!(listed.body["truncated"], false, "{}", listed.text);
    // A decision (a rejection closes the request) frees a place.
    let r = decide(&s, &s.alice, &first, Decision::Reject, &first_digest);
    assert_eq!(r.status, 200, "{}", r.text);
    ask(&s, 4);
}
