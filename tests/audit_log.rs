//! The tamper-evident audit log end to end: a real broker (`seb serve` on its own SoftHSM2
//! token, SQLite store in a temp dir), real checkpoints signed by `seb-audit` in the device,
//! and `seb audit verify` / `export` as an auditor runs them. Each tampering is its own test.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::path::{Path, PathBuf};
use std::process::Output;
use std::sync::Arc;

use common::{runtime, Broker, Hsm, Identity};
use seb::audit::checkpoint::{self, Checkpoint};
use seb::audit::merkle;
use seb::backend::{KeyAlgorithm, KeyBackend, P384Signer};
use seb::client::{ApiResponse, Client};
use serde_json::{json, Value};

const DEPLOY: &str = r#"
[[grant]]
operation = "deploy.rollout"
resource  = "prod/payments/*"
max_ttl   = "30s"
params.replicas = { min = 1, max = 10 }
params.image    = { prefix = "registry.internal/payments/" }
"#;

const SECRET_IMAGE: &str = "registry.internal/payments/api:secret-build-7f3a";

fn good_request() -> Value {
    json!({
        "operation": "deploy.rollout",
        "resource": "prod/payments/api",
        "params": {"replicas": 3, "image": SECRET_IMAGE},
    })
}

struct Setup {
    hsm: Hsm,
    broker: Broker,
    agent: Identity,
}

fn setup() -> Setup {
    let hsm = Hsm::initialised();
    let agent = hsm.agent("deploy-bot", DEPLOY);
    let broker = Broker::start(&hsm);
    Setup { hsm, broker, agent }
}

fn call(s: &Setup, method: &str, path: &str, body: Option<&Value>) -> ApiResponse {
    let tls = s.hsm.tls(&s.agent, false);
    runtime().block_on(async {
        let mut c = Client::connect(&s.broker.url, &tls).await.unwrap();
        match body {
            Some(b) => c.post_json(path, b).await.unwrap(),
            None => c.send(method, path, None).await.unwrap(),
        }
    })
}

/// Grants and denials; returns the tokens.
fn traffic(s: &Setup, grants: usize) -> Vec<String> {
    let mut tokens = Vec::new();
    for _ in 0..grants {
        let r = call(s, "POST", "/v1/executions", Some(&good_request()));
        assert_eq!(r.status, 201, "{}", r.text);
        tokens.push(r.body["token"].as_str().unwrap().to_owned());
    }
    let denied = json!({"operation": "db.drop", "resource": "prod/payments/db", "params": {}});
    let r = call(s, "POST", "/v1/executions", Some(&denied));
    assert_eq!(r.status, 403, "{}", r.text);
    tokens
}

fn audit(s: &Setup, args: &[&str]) -> Output {
    let root = s.hsm.trust("root.pem");
    let mut full = vec!["audit".to_owned()];
    full.extend(args.iter().map(|a| a.to_string()));
    full.extend(["--trust".to_owned(), root.display().to_string()]);
    let needs_broker = !args.contains(&"--file");
    if needs_broker {
        full.extend([
            "--broker".to_owned(),
            s.broker.url.clone(),
            "--cert".to_owned(),
            s.agent.cert.display().to_string(),
            "--key".to_owned(),
            s.agent.key.display().to_string(),
        ]);
    }
    common::seb(
        &full.iter().map(String::as_str).collect::<Vec<_>>(),
        s.hsm.dir.path(),
    )
}

fn ok(out: &Output) -> String {
    common::assert_success(out, "seb audit");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn rejected(out: &Output, needle: &str) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "accepted: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert!(stderr.contains("REJECTED"), "{stderr}");
    assert!(stderr.contains(needle), "expected {needle:?} in: {stderr}");
}

fn export(s: &Setup, name: &str) -> PathBuf {
    let out = s.hsm.path(name);
    ok(&audit(s, &["export", "--out", out.to_str().unwrap()]));
    out
}

fn lines(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn write_lines(path: &Path, lines: &[Value]) {
    let text: String = lines.iter().map(|l| format!("{l}\n")).collect();
    std::fs::write(path, text).unwrap();
}

/// Gives entry lines consecutive indexes and correct leaf hashes again, as a careful forger
/// would: only the signed root can tell.
fn renumber(lines: &mut [Value]) {
    for (index, l) in lines
        .iter_mut()
        .filter(|l| l["type"] == "entry")
        .enumerate()
    {
        let canonical = seb::canonical::canonicalize(&l["entry"]).unwrap();
        l["index"] = json!(index);
        l["leaf_hash"] = json!(seb::base64url::encode(&merkle::leaf_hash(
            canonical.as_bytes()
        )));
    }
}

fn entry_positions(lines: &[Value]) -> Vec<usize> {
    (0..lines.len())
        .filter(|&i| lines[i]["type"] == "entry")
        .collect()
}

/// The claims of `token` and the log's page holding the entry its `audit` claim names.
fn named_entry(s: &Setup, token: &str) -> (Value, ApiResponse) {
    let part = token.split('.').nth(1).unwrap();
    let claims: Value = serde_json::from_slice(&seb::base64url::decode(part).unwrap()).unwrap();
    let index = claims["audit"]["index"].as_u64().unwrap();
    let page = call(
        s,
        "GET",
        &format!("/v1/audit/entries?start={index}&end={}", index + 1),
        None,
    );
    (claims, page)
}

/// Each delivered token's entry is in the log (no token without its entry), and the log
/// verifies.
fn every_token_is_in_the_log_which_verifies(s: &Setup, tokens: &[String]) {
    for token in tokens {
        let (claims, page) = named_entry(s, token);
        assert_eq!(
            page.body["entries"][0]["entry"]["jti"], claims["jti"],
            "{}",
            page.text
        );
    }
    let stdout = ok(&audit(s, &["verify"]));
    assert!(stdout.contains("audit log OK"), "{stdout}");
}

/// How many certificates the broker publishes at `/v1/trust`.
fn published_certificates(s: &Setup) -> usize {
    call(s, "GET", "/v1/trust", None)
        .text
        .matches("BEGIN CERTIFICATE")
        .count()
}

#[test]
fn tokens_name_their_entries_and_the_log_verifies() {
    let s = setup();
    let tokens = traffic(&s, 3);
    let note = call(&s, "GET", "/v1/audit/checkpoint", None).text;
    let (body, _) = checkpoint::parse_note(&note).unwrap();
    let cp = Checkpoint::parse_body(&body).unwrap();
    for token in &tokens {
        // The entry the token names is the grant of this token...
        let (claims, page) = named_entry(&s, token);
        let index = claims["audit"]["index"].as_u64().unwrap();
        let leaf = seb::base64url::decode(claims["audit"]["leaf_hash"].as_str().unwrap()).unwrap();
        let served = &page.body["entries"][0];
        assert_eq!(
            served["entry"]["kind"], "execution_granted",
            "{}",
            page.text
        );
        assert_eq!(served["entry"]["jti"], claims["jti"]);
        assert_eq!(
            served["entry"]["cert"]["thumbprint"],
            claims["cnf"]["x5t#S256"]
        );
        assert!(served["entry"]["cert"]["serial"]
            .as_str()
            .is_some_and(|s| !s.is_empty()));
        let canonical = seb::canonical::canonicalize(&served["entry"]).unwrap();
        assert_eq!(merkle::leaf_hash(canonical.as_bytes()).to_vec(), leaf);
        // ... and never the raw parameters.
        assert!(!page.text.contains(SECRET_IMAGE), "{}", page.text);
        // ... and is in the signed tree.
        let proof = call(
            &s,
            "GET",
            &format!("/v1/audit/proof/inclusion?index={index}&size={}", cp.size),
            None,
        );
        let hashes: Vec<merkle::Hash> = proof.body["proof"]
            .as_array()
            .unwrap()
            .iter()
            .map(|h| {
                seb::base64url::decode(h.as_str().unwrap())
                    .unwrap()
                    .try_into()
                    .unwrap()
            })
            .collect();
        merkle::verify_inclusion(index, cp.size, &leaf, &hashes, &cp.root).unwrap();
        let mut wrong = hashes.clone();
        wrong[0][0] ^= 1;
        assert!(merkle::verify_inclusion(index, cp.size, &leaf, &wrong, &cp.root).is_err());
    }
    // The denial is logged with its code.
    let all = call(&s, "GET", "/v1/audit/entries?start=0", None);
    let entries = all.body["entries"].as_array().unwrap();
    // The agent's certificate was issued before the broker started.
    assert_eq!(entries[0]["entry"]["kind"], "certificate_issued");
    assert!(
        entries
            .iter()
            .any(|e| e["entry"]["kind"] == "broker_started"),
        "{}",
        all.text
    );
    assert!(
        entries
            .iter()
            .any(|e| e["entry"]["kind"] == "execution_denied"
                && e["entry"]["code"] == "operation_not_granted"),
        "{}",
        all.text
    );
    // Bad ranges are 400s.
    assert_eq!(
        call(&s, "GET", "/v1/audit/proof/inclusion?index=5&size=2", None).status,
        400
    );
    assert_eq!(
        call(
            &s,
            "GET",
            "/v1/audit/proof/consistency?from=1&to=100000",
            None
        )
        .status,
        400
    );

    let first = s.hsm.path("first.checkpoint");
    let stdout = ok(&audit(&s, &["verify", "--save", first.to_str().unwrap()]));
    assert!(stdout.contains("audit log OK"), "{stdout}");
    traffic(&s, 2);
    // Consistency with the kept checkpoint, by recomputation and by the served proof.
    ok(&audit(
        &s,
        &["verify", "--checkpoint", first.to_str().unwrap()],
    ));
    let file = export(&s, "export.jsonl");
    let stdout = ok(&audit(
        &s,
        &[
            "verify",
            "--file",
            file.to_str().unwrap(),
            "--checkpoint",
            first.to_str().unwrap(),
        ],
    ));
    assert!(stdout.contains("audit log OK"), "{stdout}");
    // `--out -`: the JSON lines alone on stdout (for a pipe), the verdict on stderr; what
    // arrives there verifies as a file.
    let piped = audit(&s, &["export", "--out", "-"]);
    common::assert_success(&piped, "seb audit export --out -");
    assert!(!s.hsm.path("-").exists());
    let stderr = String::from_utf8_lossy(&piped.stderr);
    assert!(stderr.contains("audit log OK"), "{stderr}");
    let file = s.hsm.path("piped.jsonl");
    std::fs::write(&file, &piped.stdout).unwrap();
    assert_eq!(lines(&file)[0]["type"], "trust", "{stderr}");
    ok(&audit(&s, &["verify", "--file", file.to_str().unwrap()]));
}

#[test]
fn an_edited_entry_is_detected() {
    let s = setup();
    traffic(&s, 3);
    let file = export(&s, "export.jsonl");
    let mut l = lines(&file);
    let denied = l
        .iter()
        .position(|l| l["entry"]["kind"] == "execution_denied")
        .unwrap();
    l[denied]["entry"]["kind"] = json!("execution_granted");
    l[denied]["entry"]["decision"] = json!("granted");
    write_lines(&file, &l);
    // The stated leaf hash no longer matches...
    rejected(
        &audit(&s, &["verify", "--file", file.to_str().unwrap()]),
        "leaf hash",
    );
    // ... and with the hashes forged as well, the signed root does not.
    renumber(&mut l);
    write_lines(&file, &l);
    rejected(
        &audit(&s, &["verify", "--file", file.to_str().unwrap()]),
        "the log was edited",
    );
}

/// An entry edited in the broker's database (not in an export) is named by its index: the
/// broker serves the leaf hash the tree was built from, which the edited text no longer hashes
/// to. A row that is no longer JSON at all is served as its text and named the same way, and
/// the rest of the log can still be read.
#[test]
fn an_entry_edited_in_the_database_is_named_by_its_index() {
    let s = setup();
    traffic(&s, 2);
    let db = rusqlite::Connection::open(s.hsm.path("state/seb.db")).unwrap();
    let text: String = db
        .query_row("SELECT entry FROM audit_entries WHERE idx = 2", [], |r| {
            r.get(0)
        })
        .unwrap();
    let edited = text.replacen("CN=deploy-bot", "CN=deploy-bat", 1);
    assert_ne!(edited, text, "entry 2 names the agent: {text}");
    db.execute(
        "UPDATE audit_entries SET entry = ?1 WHERE idx = 2",
        [&edited],
    )
    .unwrap();
    rejected(
        &audit(&s, &["verify"]),
        "entry 2: its leaf hash does not match",
    );
    db.execute(
        "UPDATE audit_entries SET entry = 'garbage' WHERE idx = 2",
        [],
    )
    .unwrap();
    let page = call(&s, "GET", "/v1/audit/entries?start=0&end=4", None);
    assert_eq!(page.status, 200, "{}", page.text);
    assert_eq!(page.body["entries"][2]["entry"], "garbage", "{}", page.text);
    rejected(&audit(&s, &["verify"]), "entry 2");
}

#[test]
fn a_duplicate_key_slipped_into_an_exported_entry_is_refused() {
    // serde_json keeps the last of two keys, so the hashed entry would be the original while a
    // SIEM reading the line may show the first: a file that verifies must mean one thing.
    let s = setup();
    traffic(&s, 3);
    let file = export(&s, "export.jsonl");
    let text = std::fs::read_to_string(&file).unwrap();
    let mut forged = false;
    let lines: Vec<String> = text
        .lines()
        .map(|line| {
            if !forged && line.contains(r#""kind":"execution_granted""#) {
                forged = true;
                line.replacen(
                    r#""entry":{"#,
                    r#""entry":{"operation":"prod.wipe-everything","#,
                    1,
                )
            } else {
                line.to_owned()
            }
        })
        .collect();
    assert!(forged, "no granted entry in {text}");
    std::fs::write(&file, lines.join("\n") + "\n").unwrap();
    let out = audit(&s, &["verify", "--file", file.to_str().unwrap()]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "accepted: {stderr}");
    assert!(stderr.contains("duplicate key"), "{stderr}");
}

#[test]
fn a_deleted_entry_is_detected() {
    let s = setup();
    traffic(&s, 3);
    let file = export(&s, "export.jsonl");
    let mut l = lines(&file);
    let at = entry_positions(&l)[2];
    l.remove(at);
    write_lines(&file, &l);
    rejected(
        &audit(&s, &["verify", "--file", file.to_str().unwrap()]),
        "missing, inserted or reordered",
    );
    renumber(&mut l);
    write_lines(&file, &l);
    rejected(
        &audit(&s, &["verify", "--file", file.to_str().unwrap()]),
        "entries were deleted",
    );
}

#[test]
fn reordered_entries_are_detected() {
    let s = setup();
    traffic(&s, 3);
    let file = export(&s, "export.jsonl");
    let mut l = lines(&file);
    let p = entry_positions(&l);
    l.swap(p[1], p[2]);
    renumber(&mut l);
    write_lines(&file, &l);
    rejected(
        &audit(&s, &["verify", "--file", file.to_str().unwrap()]),
        "the log was edited",
    );
}

#[test]
fn an_inserted_entry_is_detected() {
    let s = setup();
    traffic(&s, 3);
    let file = export(&s, "export.jsonl");
    let mut l = lines(&file);
    let p = entry_positions(&l);
    let mut forged = l[p[1]].clone();
    forged["entry"]["jti"] = json!("AAAAAAAAAAAAAAAAAAAAAAAAAAAAAA");
    l.insert(p[1] + 1, forged);
    // Drop one entry at the end so the count still matches the checkpoint.
    let last = *entry_positions(&l).last().unwrap();
    l.remove(last);
    renumber(&mut l);
    write_lines(&file, &l);
    rejected(
        &audit(&s, &["verify", "--file", file.to_str().unwrap()]),
        "the log was edited",
    );
}

#[test]
fn an_entry_appended_after_the_newest_checkpoint_is_detected() {
    let s = setup();
    traffic(&s, 3);
    let file = export(&s, "export.jsonl");
    let mut l = lines(&file);
    let p = entry_positions(&l);
    let mut forged = l[p[0]].clone();
    forged["entry"]["kind"] = json!("certificate_revoked");
    forged["entry"]["detail"] = json!("keyCompromise");
    l.insert(*p.last().unwrap() + 1, forged);
    renumber(&mut l);
    write_lines(&file, &l);
    rejected(
        &audit(&s, &["verify", "--file", file.to_str().unwrap()]),
        "covered by no signed checkpoint",
    );
}

#[test]
fn a_truncated_and_reappended_log_is_a_split_view() {
    let mut s = setup();
    traffic(&s, 4);
    let kept = s.hsm.path("kept.checkpoint");
    ok(&audit(&s, &["verify", "--save", kept.to_str().unwrap()]));
    let (body, _) = checkpoint::parse_note(&std::fs::read_to_string(&kept).unwrap()).unwrap();
    let old_size = Checkpoint::parse_body(&body).unwrap().size;
    assert!(s.broker.stop());
    // Someone with the database cuts the history back to 3 entries (tree nodes included)...
    let db = rusqlite::Connection::open(s.hsm.path("state/seb.db")).unwrap();
    truncate_log(&db, 3);
    drop(db);
    // ... and the broker writes a different history of the same length and more.
    s.broker = Broker::start(&s.hsm);
    loop {
        traffic(&s, 1);
        let note = call(&s, "GET", "/v1/audit/checkpoint", None).text;
        let (body, _) = checkpoint::parse_note(&note).unwrap();
        if Checkpoint::parse_body(&body).unwrap().size >= old_size {
            break;
        }
    }
    // On its own, the new log is consistent...
    ok(&audit(&s, &["verify"]));
    // ... but not an extension of what the auditor kept.
    rejected(
        &audit(&s, &["verify", "--checkpoint", kept.to_str().unwrap()]),
        "not an extension",
    );
}

#[test]
fn a_running_broker_signs_no_checkpoint_and_issues_no_token_over_a_truncated_log() {
    let s = setup();
    traffic(&s, 4);
    // The broker signs a checkpoint over the whole log, and a monitor follows it...
    let note = call(&s, "GET", "/v1/audit/checkpoint", None);
    assert_eq!(note.status, 200, "{}", note.text);
    let (body, _) = checkpoint::parse_note(&note.text).unwrap();
    let signed = Checkpoint::parse_body(&body).unwrap().size;
    let kept = s.hsm.path("followed.checkpoint");
    let monitor = follow(&s, &kept);
    first_verification(&kept);
    // ... then someone with the database cuts it back, tree nodes included, while it runs.
    let keep = 3i64;
    let db = rusqlite::Connection::open(s.hsm.path("state/seb.db")).unwrap();
    let rows = |sql: &str| -> Vec<(i64, i64, Vec<u8>)> {
        let mut statement = db.prepare(sql).unwrap();
        let found = statement
            .query_map([keep], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        found
    };
    let entries = rows("SELECT idx, 0, CAST(entry AS BLOB) FROM audit_entries WHERE idx >= ?1");
    let nodes =
        rows("SELECT level, idx, hash FROM audit_nodes WHERE (idx + 1) * (1 << level) > ?1");
    let cut = |db: &rusqlite::Connection| truncate_log(db, keep);
    cut(&db);
    // The broker signs no checkpoint of the shorter log, grants nothing, and says why.
    let health = fresh_health(&s, |_| {}, |h| h.status == 503);
    let reason = health.body["checks"]["audit_checkpoints"]["reason"]
        .as_str()
        .unwrap_or_default();
    assert!(
        reason.contains(&format!("signed at {signed} entries")),
        "{}",
        health.text
    );
    let refused = call(&s, "GET", "/v1/audit/checkpoint", None);
    assert_eq!(refused.status, 503, "{}", refused.text);
    assert_eq!(
        refused.body["error"]["code"], "audit_log_diverged",
        "{}",
        refused.text
    );
    let r = call(&s, "POST", "/v1/executions", Some(&good_request()));
    assert_eq!(r.status, 503, "{}", r.text);
    assert_eq!(r.body["error"]["code"], "audit_log_diverged", "{}", r.text);
    assert!(r.body.get("token").is_none());
    // The monitor raises the alarm while the broker still runs.
    let out = monitor.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.contains("REJECTED") && stderr.contains("rewritten"),
        "{stderr}"
    );
    // The history put back exactly (the refusal's entry on the cut log taken out again):
    // the broker resumes by itself.
    cut(&db);
    for (idx, _, entry) in &entries {
        db.execute(
            "INSERT INTO audit_entries (idx, entry) VALUES (?1, ?2)",
            rusqlite::params![idx, String::from_utf8(entry.clone()).unwrap()],
        )
        .unwrap();
    }
    for (level, idx, hash) in &nodes {
        db.execute(
            "INSERT INTO audit_nodes (level, idx, hash) VALUES (?1, ?2, ?3)",
            rusqlite::params![level, idx, hash],
        )
        .unwrap();
    }
    drop(db);
    let health = fresh_health(&s, |_| {}, |h| h.status == 200);
    assert_eq!(health.body["status"], "ready", "{}", health.text);
    let r = call(&s, "POST", "/v1/executions", Some(&good_request()));
    assert_eq!(r.status, 201, "{}", r.text);
    ok(&audit(
        &s,
        &["verify", "--checkpoint", kept.to_str().unwrap()],
    ));
}

#[test]
fn an_old_checkpoint_replayed_is_detected() {
    let s = setup();
    traffic(&s, 2);
    let old = export(&s, "old.jsonl");
    traffic(&s, 2);
    let newer = s.hsm.path("newer.checkpoint");
    ok(&audit(&s, &["verify", "--save", newer.to_str().unwrap()]));
    // A log (or a broker) that shows the auditor the old state after the newer one.
    rejected(
        &audit(
            &s,
            &[
                "verify",
                "--file",
                old.to_str().unwrap(),
                "--checkpoint",
                newer.to_str().unwrap(),
            ],
        ),
        "replayed",
    );
}

/// Replaces the export's checkpoint with one over the same tree signed by `label` in the
/// device (optionally publishing `extra_pem` with it), and returns the verifier's output.
fn resign(mut s: Setup, label: &str, rogue_cert: bool) -> (Setup, Output) {
    traffic(&s, 2);
    let file = export(&s, "export.jsonl");
    assert!(s.broker.stop());
    std::env::set_var("SOFTHSM2_CONF", s.hsm.softhsm_conf());
    let backend: Arc<dyn KeyBackend> = Arc::new(s.hsm.backend(1));
    if !backend.contains(label).unwrap() {
        backend.generate(label, KeyAlgorithm::EcP384).unwrap();
    }
    let mut l = lines(&file);
    let at = l.iter().position(|l| l["type"] == "checkpoint").unwrap();
    let (body, _) = checkpoint::parse_note(l[at]["note"].as_str().unwrap()).unwrap();
    let cp = Checkpoint::parse_body(&body).unwrap();
    let spki = backend.public_key(label).unwrap().to_spki_der().unwrap();
    let signer = P384Signer::new(backend.as_ref(), label).unwrap();
    let note = cp
        .sign(&spki, |b| {
            signer
                .sign_message(b)
                .map(|s| s.to_der().as_bytes().to_vec())
        })
        .unwrap();
    l[at]["note"] = json!(note);
    if rogue_cert {
        // A self-signed certificate for the rogue key, published alongside: never trusted.
        let subject = seb::ca::parse_subject("CN=seb-broker audit signer,O=seb").unwrap();
        let cert = seb::ca::self_signed_root(
            &signer,
            &subject,
            std::time::Duration::from_secs(3600),
            std::time::SystemTime::now(),
        )
        .unwrap();
        let trust = l.iter().position(|l| l["type"] == "trust").unwrap();
        let pem = format!(
            "{}{}",
            l[trust]["pem"].as_str().unwrap(),
            cert.to_pem_string().unwrap()
        );
        l[trust]["pem"] = json!(pem);
    }
    write_lines(&file, &l);
    let out = audit(&s, &["verify", "--file", file.to_str().unwrap()]);
    s.broker = Broker {
        child: None,
        url: String::new(),
        log: PathBuf::new(),
    };
    (s, out)
}

#[test]
fn a_checkpoint_signed_by_another_key_is_refused() {
    let (_s, out) = resign(setup(), "rogue-audit", true);
    rejected(&out, "not signed by a valid audit certificate");
}

#[test]
fn a_checkpoint_signed_by_the_token_key_is_refused() {
    let (_s, out) = resign(setup(), "seb-token", false);
    rejected(&out, "not the broker's audit certificate");
}

#[test]
fn after_sigkill_every_delivered_token_has_its_entry() {
    let mut s = setup();
    let url = s.broker.url.clone();
    let tls = s.hsm.tls(&s.agent, false);
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let tokens = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let workers: Vec<_> = (0..4)
        .map(|_| {
            let (url, tls, stop, tokens) = (url.clone(), tls.clone(), stop.clone(), tokens.clone());
            std::thread::spawn(move || {
                runtime().block_on(async {
                    let Ok(mut c) = Client::connect(&url, &tls).await else {
                        return;
                    };
                    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                        match c.post_json("/v1/executions", &good_request()).await {
                            Ok(r) if r.status == 201 => tokens
                                .lock()
                                .unwrap()
                                .push(r.body["token"].as_str().unwrap().to_owned()),
                            Ok(_) => {}
                            Err(_) => return,
                        }
                    }
                })
            })
        })
        .collect();
    std::thread::sleep(std::time::Duration::from_millis(1500));
    let child = s.broker.child.take().unwrap();
    let status = std::process::Command::new("kill")
        .args(["-KILL", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for w in workers {
        w.join().unwrap();
    }
    let mut child = child;
    let _ = child.wait();
    let tokens = tokens.lock().unwrap().clone();
    assert!(
        tokens.len() > 5,
        "only {} tokens before the kill",
        tokens.len()
    );

    s.broker = Broker::start(&s.hsm);
    for token in &tokens {
        let (claims, page) = named_entry(&s, token);
        let index = claims["audit"]["index"].as_u64().unwrap();
        let served = &page.body["entries"][0];
        assert_eq!(
            served["entry"]["jti"], claims["jti"],
            "token at {index}: {}",
            page.text
        );
        assert_eq!(served["leaf_hash"], claims["audit"]["leaf_hash"]);
    }
    let stdout = ok(&audit(&s, &["verify"]));
    assert!(stdout.contains("audit log OK"), "{stdout}");
}

/// Cuts the log in the database back to its first `keep` entries, tree nodes included: what
/// someone with the database file can do.
fn truncate_log(db: &rusqlite::Connection, keep: i64) {
    db.execute("DELETE FROM audit_entries WHERE idx >= ?1", [keep])
        .unwrap();
    db.execute(
        "DELETE FROM audit_nodes WHERE (idx + 1) * (1 << level) > ?1",
        [keep],
    )
    .unwrap();
}

/// Waits (up to 30 s, running `between` meanwhile) for a `--follow` monitor to exit; returns
/// its status and standard error.
fn monitor_exit(
    mut monitor: std::process::Child,
    mut between: impl FnMut(),
) -> (std::process::ExitStatus, String) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while monitor.try_wait().unwrap().is_none() {
        if std::time::Instant::now() > deadline {
            let _ = monitor.kill();
            let out = monitor.wait_with_output().unwrap();
            panic!(
                "the monitor did not stop: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        between();
        std::thread::sleep(std::time::Duration::from_millis(300));
    }
    let out = monitor.wait_with_output().unwrap();
    (
        out.status,
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `seb audit verify --follow` every second against the test's broker, keeping what it
/// verified in `state`; its output is piped.
fn follow(s: &Setup, state: &Path) -> std::process::Child {
    std::process::Command::new(env!("CARGO_BIN_EXE_seb"))
        .args(["audit", "verify", "--follow", "--interval", "1s", "--trust"])
        .arg(s.hsm.trust("root.pem"))
        .args(["--broker", &s.broker.url, "--cert"])
        .arg(&s.agent.cert)
        .arg("--key")
        .arg(&s.agent.key)
        .arg("--save")
        .arg(state)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap()
}

/// Waits (up to 30 s) for a monitor's first full verification to be saved in `state`;
/// returns that deadline.
fn first_verification(state: &Path) -> std::time::Instant {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while !state.exists() {
        assert!(
            std::time::Instant::now() < deadline,
            "no first verification"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    deadline
}

/// Asks `/healthz`, after `before` each time, until `fresh` holds of the answer (readiness
/// answers are reused for up to a second, `HEALTH_TTL`), at most 10 s; returns that answer.
fn fresh_health(
    s: &Setup,
    mut before: impl FnMut(&Setup),
    fresh: impl Fn(&ApiResponse) -> bool,
) -> ApiResponse {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        before(s);
        let h = call(s, "GET", "/healthz", None);
        if fresh(&h) {
            return h;
        }
        assert!(std::time::Instant::now() < deadline, "{}", h.text);
        std::thread::sleep(std::time::Duration::from_millis(300));
    }
}

#[test]
fn an_unwritable_log_stops_issuance_with_audit_unavailable_then_recovers() {
    let hsm = Hsm::initialised();
    let agent = hsm.agent("deploy-bot", DEPLOY);
    let fs = hsm.state_on_small_fs("2m");
    let broker = Broker::start(&hsm);
    let s = Setup { hsm, broker, agent };
    let mut delivered = traffic(&s, 2);
    let filler = fs.0.join("filler");
    let _ = std::process::Command::new("dd")
        .args(["if=/dev/zero", "bs=64k"])
        .arg(format!("of={}", filler.display()))
        .output();
    let mut refused = 0;
    for _ in 0..20 {
        let r = call(&s, "POST", "/v1/executions", Some(&good_request()));
        match r.status {
            503 => {
                assert_eq!(r.body["error"]["code"], "audit_unavailable", "{}", r.text);
                assert!(r.body.get("token").is_none());
                refused += 1;
            }
            // Pages SQLite had already allocated may still take a few.
            201 => delivered.push(r.body["token"].as_str().unwrap().to_owned()),
            other => panic!("unexpected {other}: {}", r.text),
        }
    }
    assert!(refused > 0, "an unwritable log must stop issuance");
    // Readiness answers are reused for a second (`HEALTH_TTL`), and a write that still found an
    // allocated page clears the failure: keep asking for tokens (each refused one sets it
    // again) until a fresh answer says why.
    let h = fresh_health(
        &s,
        |_| {
            let r = call(&s, "POST", "/v1/executions", Some(&good_request()));
            match r.status {
                503 => assert_eq!(r.body["error"]["code"], "audit_unavailable", "{}", r.text),
                201 => delivered.push(r.body["token"].as_str().unwrap().to_owned()),
                other => panic!("unexpected {other}: {}", r.text),
            }
        },
        |h| h.status == 503,
    );
    assert!(
        h.body["checks"]["audit"]["reason"]
            .as_str()
            .is_some_and(|r| r.contains("audit log cannot be written")),
        "{}",
        h.text
    );
    // A denial while the log is unwritable stays a denial.
    let denied = json!({"operation": "db.drop", "resource": "prod/payments/db", "params": {}});
    assert_eq!(
        call(&s, "POST", "/v1/executions", Some(&denied)).status,
        403
    );

    // Space comes back: issuance resumes by itself, and the log has no gap.
    std::fs::remove_file(&filler).unwrap();
    let r = call(&s, "POST", "/v1/executions", Some(&good_request()));
    assert_eq!(r.status, 201, "{}", r.text);
    delivered.push(r.body["token"].as_str().unwrap().to_owned());
    fresh_health(&s, |_| {}, |h| h.body["checks"]["audit"]["ok"] == true);
    every_token_is_in_the_log_which_verifies(&s, &delivered);
}

#[test]
fn entries_written_by_the_cli_beside_a_running_broker_cost_no_agent_a_token() {
    let s = setup();
    traffic(&s, 1);
    // `seb cert revoke` and `seb epoch bump` on the host append to the log while the broker
    // has already reserved its next index: the agent's next request still gets its token.
    for (i, args) in [
        vec!["cert", "revoke", "--serial", "0A0B0C11", "--unknown"],
        vec!["epoch", "bump"],
        vec!["cert", "revoke", "--serial", "0A0B0C12", "--unknown"],
    ]
    .iter()
    .enumerate()
    {
        s.hsm.seb_ok(args);
        let r = call(&s, "POST", "/v1/executions", Some(&good_request()));
        assert_eq!(r.status, 201, "request {i} after {args:?}: {}", r.text);
    }
    let stdout = ok(&audit(&s, &["verify"]));
    assert!(stdout.contains("audit log OK"), "{stdout}");
}

/// Sets the running broker's file-size limit (`prlimit`, as root).
fn limit_file_size(s: &Setup, soft: &str) {
    let pid = s.broker.child.as_ref().unwrap().id();
    let status = std::process::Command::new("prlimit")
        .arg(format!("--pid={pid}"))
        .arg(format!("--fsize={soft}:unlimited"))
        .status()
        .expect("prlimit (util-linux)");
    assert!(status.success());
}

#[test]
fn a_file_size_limit_stops_issuance_without_ending_the_broker_then_recovers() {
    let mut s = setup();
    let mut delivered = traffic(&s, 3);
    // Every file the broker writes is already past 4 KiB, its log (stderr, a file here)
    // included: each write now fails with EFBIG (and raises SIGXFSZ, whose default action
    // would end the process).
    limit_file_size(&s, "4096");
    let mut refused = 0;
    for _ in 0..10 {
        let r = call(&s, "POST", "/v1/executions", Some(&good_request()));
        assert_eq!(r.status, 503, "{}", r.text);
        assert!(
            ["audit_unavailable", "store_unavailable"]
                .contains(&r.body["error"]["code"].as_str().unwrap_or_default()),
            "{}",
            r.text
        );
        assert!(r.body.get("token").is_none());
        refused += 1;
    }
    assert_eq!(refused, 10);
    assert!(
        s.broker
            .child
            .as_mut()
            .unwrap()
            .try_wait()
            .unwrap()
            .is_none(),
        "the broker ended at the file-size limit"
    );
    // The limit lifted: issuance resumes without a restart, and the log has no gap.
    limit_file_size(&s, "unlimited");
    let r = call(&s, "POST", "/v1/executions", Some(&good_request()));
    assert_eq!(r.status, 201, "{}", r.text);
    delivered.push(r.body["token"].as_str().unwrap().to_owned());
    every_token_is_in_the_log_which_verifies(&s, &delivered);
}

#[test]
fn follow_raises_the_alarm_when_newer_checkpoints_come_without_a_consistency_proof() {
    let mut s = setup();
    traffic(&s, 2);
    let state = s.hsm.path("followed.checkpoint");
    let monitor = follow(&s, &state);
    let deadline = first_verification(&state);
    let verified = || {
        let (body, _) = checkpoint::parse_note(&std::fs::read_to_string(&state).unwrap()).unwrap();
        Checkpoint::parse_body(&body).unwrap().size
    };
    // The monitor catches up with the broker at a size that is not a power of two (one whose
    // consistency proofs need a node of the old tree).
    loop {
        let note = call(&s, "GET", "/v1/audit/checkpoint", None).text;
        let (body, _) = checkpoint::parse_note(&note).unwrap();
        let served = Checkpoint::parse_body(&body).unwrap().size;
        if served.is_power_of_two() {
            traffic(&s, 1);
            continue;
        }
        if verified() == served {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the monitor never caught up"
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    // The broker dies (no last checkpoint): the size the monitor verified stays put.
    let mut child = s.broker.child.take().unwrap();
    child.kill().unwrap();
    child.wait().unwrap();
    let kept = verified();
    assert!(!kept.is_power_of_two());
    // The log grows past the next power of two (entries the CLI writes), so that the smallest
    // complete subtree of the verified tree is inside a larger one: no root or append needs
    // it any more, only a consistency proof from the verified size does. Someone with the
    // database deletes it; the restarted broker signs newer checkpoints it cannot prove.
    let mut size = kept;
    while size < kept.next_power_of_two() || size == kept {
        s.hsm.seb_ok(&["epoch", "bump"]);
        let db = rusqlite::Connection::open(s.hsm.path("state/seb.db")).unwrap();
        size = db
            .query_row("SELECT COUNT(*) FROM audit_entries", [], |r| {
                r.get::<_, i64>(0)
            })
            .unwrap() as u64;
    }
    let level = kept.trailing_zeros();
    let db = rusqlite::Connection::open(s.hsm.path("state/seb.db")).unwrap();
    let removed = db
        .execute(
            "DELETE FROM audit_nodes WHERE level = ?1 AND idx = ?2",
            [i64::from(level), ((kept >> level) - 1) as i64],
        )
        .unwrap();
    assert_eq!(removed, 1);
    drop(db);
    s.broker = Broker::start(&s.hsm);
    let (status, stderr) = monitor_exit(monitor, || {});
    assert!(!status.success(), "{stderr}");
    assert!(
        stderr.contains("REJECTED") && stderr.contains("gave no proof"),
        "{stderr}"
    );
    assert_eq!(
        verified(),
        kept,
        "the monitor moved past what it could not prove"
    );
}

#[test]
fn follow_exits_non_zero_when_the_log_stops_extending_what_it_verified() {
    let mut s = setup();
    traffic(&s, 3);
    let state = s.hsm.path("followed.checkpoint");
    let mut monitor = follow(&s, &state);
    // It follows an honest log as it grows...
    traffic(&s, 2);
    std::thread::sleep(std::time::Duration::from_secs(3));
    assert!(
        monitor.try_wait().unwrap().is_none(),
        "the monitor stopped on an honest log"
    );
    // ... and across `seb rotate audit` (the new key's certificate is fetched when a
    // checkpoint under it first appears) ...
    let published = || published_certificates(&s);
    let before = published();
    s.hsm.seb_ok(&["rotate", "audit"]);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while published() == before {
        assert!(
            std::time::Instant::now() < deadline,
            "the rotation was never published"
        );
        std::thread::sleep(std::time::Duration::from_millis(300));
    }
    traffic(&s, 2);
    std::thread::sleep(std::time::Duration::from_secs(3));
    assert!(
        monitor.try_wait().unwrap().is_none(),
        "the monitor stopped at an audit key rotation"
    );
    // ... until the broker restarts with a rewritten history.
    rewrite_history(&mut s);
    let (status, stderr) = monitor_exit(monitor, || {
        traffic(&s, 1);
        std::thread::sleep(std::time::Duration::from_millis(200));
    });
    assert!(!status.success());
    assert!(
        stderr.contains("audit log REJECTED") && stderr.contains("not an extension"),
        "{stderr}"
    );
}

/// Stops the broker, cuts its log back to two entries (what an attacker with the database
/// would do), starts it again on the same port and grows the log past where it was.
fn rewrite_history(s: &mut Setup) {
    assert!(s.broker.stop());
    let db = rusqlite::Connection::open(s.hsm.path("state/seb.db")).unwrap();
    db.execute("DELETE FROM audit_entries WHERE idx >= 2", [])
        .unwrap();
    db.execute(
        "DELETE FROM audit_nodes WHERE (idx + 1) * (1 << level) > 2",
        [],
    )
    .unwrap();
    drop(db);
    let port = s.broker.url.rsplit(':').next().unwrap().to_owned();
    let config = std::fs::read_to_string(s.hsm.config()).unwrap();
    assert!(
        config.contains(&port),
        "the broker listens where the config says"
    );
    s.broker = Broker::start(&s.hsm);
    traffic(s, 12);
}

#[test]
fn a_monitor_run_again_with_its_saved_checkpoint_refuses_a_log_rewritten_in_between() {
    // cron or systemd runs the same command each time: `--save FILE` is both the record the
    // log must extend and where the next one goes. A file not there yet starts the record.
    let mut s = setup();
    traffic(&s, 3);
    let saved = s.hsm.path("monitor.checkpoint");
    let save = ["verify", "--save", saved.to_str().unwrap()];
    // Made empty beforehand (`touch`, `mktemp`, a unit's setup): a new record too.
    std::fs::write(&saved, "").unwrap();
    let out = ok(&audit(&s, &save));
    assert!(!out.contains("it extends the checkpoint"), "{out}");
    let first = std::fs::read(&saved).unwrap();
    // A file that holds something else is a mistake to report, not a log to reject.
    let other = s.hsm.path("not-a-checkpoint");
    std::fs::write(&other, "hello\n").unwrap();
    let out = audit(&s, &["verify", "--save", other.to_str().unwrap()]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.contains("holds no checkpoint") && !stderr.contains("REJECTED"),
        "{stderr}"
    );
    assert_eq!(std::fs::read(&other).unwrap(), b"hello\n");
    // An honest log that grew: accepted, and the record moves on.
    traffic(&s, 2);
    let out = ok(&audit(&s, &save));
    let extends = format!("it extends the checkpoint in {}", saved.display());
    assert!(out.contains(&extends), "{out}");
    let second = std::fs::read(&saved).unwrap();
    assert_ne!(first, second, "the record did not move on");
    // The history rewritten while no monitor ran: refused, naming the file, and the evidence
    // is left as it was.
    rewrite_history(&mut s);
    let out = audit(&s, &save);
    rejected(&out, "split view");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains(saved.to_str().unwrap()),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        std::fs::read(&saved).unwrap(),
        second,
        "the evidence was overwritten"
    );
    // So does a --follow monitor started with it.
    let (status, stderr) = monitor_exit(follow(&s, &saved), || {});
    assert!(!status.success());
    assert!(stderr.contains("audit log REJECTED"), "{stderr}");
    assert_eq!(
        std::fs::read(&saved).unwrap(),
        second,
        "the evidence was overwritten"
    );
}

#[test]
fn checkpoints_follow_an_audit_key_rotation_and_old_ones_verify_with_the_retired_certificate() {
    let s = setup();
    traffic(&s, 2);
    let kept = s.hsm.path("kept.checkpoint");
    ok(&audit(&s, &["verify", "--save", kept.to_str().unwrap()]));
    let before_rotation = export(&s, "before-rotation.jsonl");
    let published = || published_certificates(&s);
    let before = published();
    s.hsm.seb_ok(&["rotate", "audit"]);
    // Until the broker picks the rotation up, and after, the log verifies with what it
    // publishes: the newest checkpoint may still be under the retired key, whose certificate
    // stays in /v1/trust.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while published() == before {
        let out = audit(&s, &["verify"]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            std::time::Instant::now() < deadline,
            "the retired audit certificate was never published"
        );
        std::thread::sleep(std::time::Duration::from_millis(500));
    }
    assert_eq!(published(), before + 1);
    let out = audit(&s, &["verify"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // New entries are signed by the new generation (checked against the new audit.pem), and
    // the checkpoint kept from before the rotation still verifies from the bundle alone.
    traffic(&s, 1);
    let note = call(&s, "GET", "/v1/audit/checkpoint", None).text;
    let audit_pem = std::fs::read(s.hsm.trust("audit.pem")).unwrap();
    let new_key = seb::cert::Certificate::parse(&audit_pem).unwrap();
    let store = seb::verify::TrustStore::from_certificates(vec![
        seb::cert::Certificate::parse(&std::fs::read(s.hsm.trust("root.pem")).unwrap()).unwrap(),
        new_key,
    ])
    .unwrap();
    seb::audit::verify::open_checkpoint(&store, &note).unwrap();
    let out = audit(&s, &["verify", "--checkpoint", kept.to_str().unwrap()]);
    assert!(ok(&out).contains("audit log OK"));
    // Naming the retired certificate by hand still works (an export made before this change).
    let retired = s.hsm.trust("retired/audit.1.pem");
    let out = audit(
        &s,
        &[
            "verify",
            "--checkpoint",
            kept.to_str().unwrap(),
            "--audit-cert",
            retired.to_str().unwrap(),
        ],
    );
    assert!(ok(&out).contains("audit log OK"));
    // An export from before the rotation against a checkpoint kept after it: named for what
    // it is (a log older than the kept checkpoint), not only as an unknown signer.
    let after = s.hsm.path("after.checkpoint");
    ok(&audit(&s, &["verify", "--save", after.to_str().unwrap()]));
    let out = audit(
        &s,
        &[
            "verify",
            "--file",
            before_rotation.to_str().unwrap(),
            "--checkpoint",
            after.to_str().unwrap(),
        ],
    );
    rejected(
        &out,
        "an old checkpoint is being replayed, or the log was truncated",
    );
}

/// The entries of the running broker's log of `kind`, once `count` of them are there
/// (refusals before a handler are logged without holding the answer back).
fn entries_of(s: &Setup, kind: &str, count: usize) -> Vec<Value> {
    s.hsm.audit_entries_eventually(kind, count)
}

#[test]
fn attempts_refused_before_any_decision_are_in_the_log() {
    // A revoked agent still asking, an agent trying to redeem, requests while frozen: what a
    // SIEM alerts on, so each is an entry naming the certificate and the code.
    let s = setup();
    let serial = common::openssl_serial(&s.agent.cert);
    let r = call(
        &s,
        "POST",
        "/v1/tokens/redeem",
        Some(&json!({"token": "x.y.z"})),
    );
    assert_eq!(r.status, 403, "{}", r.text);
    s.hsm.seb_ok(&["freeze", "--reason", "drill"]);
    std::thread::sleep(std::time::Duration::from_millis(1500));
    let r = call(&s, "POST", "/v1/executions", Some(&good_request()));
    assert_eq!(
        (r.status, r.body["error"]["code"].as_str()),
        (503, Some("issuance_frozen")),
        "{}",
        r.text
    );
    s.hsm.seb_ok(&["unfreeze"]);
    s.hsm.revoke_compromised(&serial);
    std::thread::sleep(std::time::Duration::from_millis(1500));
    let r = call(&s, "POST", "/v1/executions", Some(&good_request()));
    assert_eq!(
        (r.status, r.body["error"]["code"].as_str()),
        (403, Some("certificate_revoked")),
        "{}",
        r.text
    );

    let denied = entries_of(&s, "execution_denied", 2);
    let codes: Vec<&str> = denied.iter().filter_map(|e| e["code"].as_str()).collect();
    assert_eq!(
        codes,
        ["issuance_frozen", "certificate_revoked"],
        "{denied:?}"
    );
    // The request refused while frozen says what was asked for (by digest, as decisions do).
    let asked = good_request();
    assert_eq!(denied[0]["operation"], asked["operation"], "{}", denied[0]);
    assert_eq!(denied[0]["resource"], asked["resource"], "{}", denied[0]);
    let digest = seb::canonical::params_digest(&asked["params"]).unwrap();
    assert_eq!(
        denied[0]["params_digest"],
        seb::base64url::encode(&digest),
        "{}",
        denied[0]
    );
    for entry in &denied {
        assert_eq!(entry["cert"]["subject"], "CN=deploy-bot", "{entry}");
        assert_eq!(
            entry["cert"]["serial"].as_str().unwrap().to_uppercase(),
            serial.to_uppercase(),
            "{entry}"
        );
    }
    let redeemed = entries_of(&s, "token_redeemed", 1);
    assert_eq!(redeemed.len(), 1, "{redeemed:?}");
    assert_eq!(redeemed[0]["code"], "wrong_role", "{redeemed:?}");

    // The revoked key only looking (its grants, the bundle, health) is logged too, with the
    // route: a key that should be out of use is still in someone's hands.
    for path in ["/v1/grants", "/v1/trust", "/healthz"] {
        let r = call(&s, "GET", path, None);
        assert_eq!(
            (r.status, r.body["error"]["code"].as_str()),
            (403, Some("certificate_revoked")),
            "{path}: {}",
            r.text
        );
    }
    let looked = entries_of(&s, "access_refused", 3);
    let routes: Vec<&str> = looked.iter().filter_map(|e| e["detail"].as_str()).collect();
    assert_eq!(
        routes,
        ["GET /v1/grants", "GET /v1/trust", "GET /healthz"],
        "{looked:?}"
    );
    for entry in &looked {
        assert_eq!(entry["code"], "certificate_revoked", "{entry}");
        assert_eq!(entry["cert"]["subject"], "CN=deploy-bot", "{entry}");
    }
    // Another role on a read it may not use is a misdirected client, not logged.
    let approver = s
        .hsm
        .identity("alice", "CN=alice", "approver", &["--group", "sre-leads"]);
    let tls = s.hsm.tls(&approver, false);
    let r = runtime().block_on(async {
        let mut c = Client::connect(&s.broker.url, &tls).await.unwrap();
        c.send("GET", "/v1/grants", None).await.unwrap()
    });
    assert_eq!(r.status, 403, "{}", r.text);
    // Entries are written in the order they are queued: once the next revoked read's entry is
    // there, one for the approver's read would be too.
    let r = call(&s, "GET", "/v1/grants", None);
    assert_eq!(r.status, 403, "{}", r.text);
    let looked = entries_of(&s, "access_refused", 4);
    assert_eq!(looked.len(), 4, "{looked:?}");
    assert!(
        looked.iter().all(|e| e["code"] == "certificate_revoked"),
        "{looked:?}"
    );
}

#[test]
fn every_redemption_attempt_is_an_entry_and_a_replay_stays_409_after_an_epoch_bump() {
    // A forged token, a token of an older epoch and a replay of a redeemed one after the
    // epoch was raised: the executor gets each one's own code, and each is in the log.
    let s = setup();
    let executor = s
        .hsm
        .identity("executor", "CN=k8s-executor", "executor", &[]);
    let tls = s.hsm.tls(&executor, false);
    let redeem = |token: &str| {
        runtime().block_on(async {
            let mut c = Client::connect(&s.broker.url, &tls).await.unwrap();
            c.post_json("/v1/tokens/redeem", &json!({ "token": token }))
                .await
                .unwrap()
        })
    };
    let code = |r: &ApiResponse| {
        (
            r.status,
            r.body["error"]["code"].as_str().map(str::to_owned),
        )
    };
    let tokens = traffic(&s, 3);
    let (used, unused) = (tokens[0].as_str(), tokens[1].as_str());
    assert_eq!(redeem(used).status, 200);
    let mut parts: Vec<String> = unused.split('.').map(str::to_owned).collect();
    let flipped = if parts[2].starts_with('A') { "B" } else { "A" };
    parts[2].replace_range(..1, flipped);
    let forged = redeem(&parts.join("."));
    assert_eq!(
        code(&forged),
        (400, Some("invalid_token".into())),
        "{}",
        forged.text
    );

    s.hsm.seb_ok(&["epoch", "bump"]);
    std::thread::sleep(std::time::Duration::from_millis(1500));
    let replay = redeem(used);
    assert_eq!(
        code(&replay),
        (409, Some("token_already_redeemed".into())),
        "{}",
        replay.text
    );
    let stale = redeem(unused);
    assert_eq!(
        code(&stale),
        (403, Some("stale_epoch".into())),
        "{}",
        stale.text
    );
    // The entry of a token refused because its agent was revoked names that, not the
    // executor's certificate, and the agent's serial.
    let fresh = call(&s, "POST", "/v1/executions", Some(&good_request()));
    assert_eq!(fresh.status, 201, "{}", fresh.text);
    let serial = common::openssl_serial(&s.agent.cert);
    s.hsm.revoke_compromised(&serial);
    let revoked = redeem(fresh.body["token"].as_str().unwrap());
    assert_eq!(
        code(&revoked),
        (403, Some("agent_certificate_revoked".into())),
        "{}",
        revoked.text
    );

    let entries = entries_of(&s, "token_redeemed", 5);
    let codes: Vec<Option<&str>> = entries.iter().map(|e| e["code"].as_str()).collect();
    assert_eq!(
        codes,
        [
            None,
            Some("invalid_token"),
            Some("token_already_redeemed"),
            Some("stale_epoch"),
            Some("agent_certificate_revoked")
        ],
        "{entries:?}"
    );
    let detail = entries[4]["detail"]
        .as_str()
        .unwrap_or_default()
        .to_uppercase();
    assert!(detail.contains(&serial.to_uppercase()), "{}", entries[4]);
    for entry in &entries {
        assert_eq!(entry["cert"]["subject"], "CN=k8s-executor", "{entry}");
    }
    // A redemption the store knows names the token's request and its canonical digest
    // (issue 12: an entry names the request digest), the first and its replay alike.
    let payload = used.split('.').nth(1).unwrap();
    let claims: Value = serde_json::from_slice(&seb::base64url::decode(payload).unwrap()).unwrap();
    assert_eq!(entries[0]["jti"], claims["jti"], "{}", entries[0]);
    assert_eq!(
        entries[0]["request_digest"], claims["authorization_details"][0]["request_digest"],
        "{}",
        entries[0]
    );
    assert!(entries[0]["request_id"].is_string(), "{}", entries[0]);
    assert_eq!(
        entries[2]["request_id"], entries[0]["request_id"],
        "{}",
        entries[2]
    );
    assert_eq!(entries[2]["request_digest"], entries[0]["request_digest"]);
}

#[test]
fn every_certificate_the_ca_issues_is_an_audit_entry() {
    // Outside review: issuing a certificate (the act that gives an agent its authority) left
    // no entry; only the store's `issued` table, which anyone with the database can edit.
    let hsm = Hsm::initialised();
    let agent = hsm.agent("deploy-bot", common::TPM_TEST_GRANTS);
    let leaf =
        &seb::cert::Certificate::parse_pem_chain(&std::fs::read(&agent.cert).unwrap()).unwrap()[0];
    let issued = hsm.audit_entries("certificate_issued");
    let entry = issued
        .iter()
        .find(|e| e["cert"]["serial"] == leaf.serial_hex().as_str())
        .unwrap_or_else(|| panic!("no entry for {}: {issued:#?}", leaf.serial_hex()));
    assert_eq!(
        entry["cert"]["thumbprint"],
        seb::base64url::encode(&leaf.thumbprint_sha256().unwrap()).as_str()
    );
    assert_eq!(entry["cert"]["subject"], "CN=deploy-bot");
    let detail = entry["detail"].as_str().unwrap();
    assert!(
        detail.starts_with("role agent, issued by the key "),
        "{detail}"
    );
    // A renewal is an issuance too.
    hsm.seb_ok(&[
        "cert",
        "renew",
        "--serial",
        &leaf.serial_hex(),
        "--out",
        hsm.path("renewed.pem").to_str().unwrap(),
    ]);
    assert_eq!(
        hsm.audit_entries("certificate_issued").len(),
        issued.len() + 1
    );
}
