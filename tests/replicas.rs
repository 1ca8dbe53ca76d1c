//! Two broker replicas sharing one PostgreSQL database (a throwaway cluster per test, from
//! `provision.sh --postgres`) and one HSM token: every guarantee of one broker holds across
//! them. Single use, one audit log, one approval quorum, revocations and kill switches seen by
//! the other replica within a second, the database going away and coming back, and a replica
//! killed under load.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{free_port, runtime, Broker, Hsm, Identity};
use seb::approval::{self, ApproverKey, Decision};
use seb::cert::Certificate;
use seb::client::{ApiResponse, Client};
use serde_json::{json, Value};

const GRANTS: &str = r#"
[[grant]]
operation = "deploy.rollout"
resource  = "prod/payments/*"
max_ttl   = "60s"
params.replicas = { min = 1, max = 10 }

[[grant]]
operation = "db.migrate"
resource  = "prod/payments/db"
max_ttl   = "60s"
params_any = true
approval  = { required = 2, group = "sre-leads" }
"#;

struct Replicas {
    hsm: Hsm,
    a: Broker,
    b: Broker,
    agent: Identity,
    executor: Identity,
}

fn replicas() -> Replicas {
    replicas_limited(100_000, 100_000)
}

/// Two replicas whose per-client limit is `rate`/s with bursts of `burst` in all.
fn replicas_limited(rate: u32, burst: u32) -> Replicas {
    let hsm = Hsm::initialised_postgres();
    let config = std::fs::read_to_string(hsm.config()).unwrap();
    let config = config.replacen(
        "[server]\n",
        &format!("[server]\nrate_limit_per_second = {rate}\nrate_limit_burst = {burst}\n"),
        1,
    );
    std::fs::write(hsm.config(), config).unwrap();
    let agent = hsm.agent("deploy-bot", GRANTS);
    let executor = hsm.identity("executor", "CN=k8s-executor", "executor", &[]);
    let a = Broker::start_replica(&hsm, free_port(), "replica-a.log");
    let b = Broker::start_replica(&hsm, free_port(), "replica-b.log");
    assert_ne!(a.url, b.url);
    Replicas {
        hsm,
        a,
        b,
        agent,
        executor,
    }
}

fn rollout(replicas: u32) -> Value {
    json!({
        "operation": "deploy.rollout",
        "resource": "prod/payments/api",
        "params": {"replicas": replicas},
    })
}

fn call(
    hsm: &Hsm,
    url: &str,
    who: &Identity,
    method: &str,
    path: &str,
    body: Option<&Value>,
) -> ApiResponse {
    let tls = hsm.tls(who, true);
    runtime().block_on(async {
        let mut client = Client::connect(url, &tls).await.unwrap();
        match body {
            Some(b) => client.post_json(path, b).await.unwrap(),
            None => client.send(method, path, None).await.unwrap(),
        }
    })
}

/// The agent posts `body` to `url`'s `/v1/executions`.
fn execute(s: &Replicas, url: &str, body: &Value) -> ApiResponse {
    call(&s.hsm, url, &s.agent, "POST", "/v1/executions", Some(body))
}

/// The agent asks `url` for a rollout to `replicas`.
fn ask(s: &Replicas, url: &str, replicas: u32) -> ApiResponse {
    execute(s, url, &rollout(replicas))
}

fn grant(s: &Replicas, url: &str) -> String {
    let r = ask(s, url, 3);
    assert_eq!(r.status, 201, "{}", r.text);
    r.body["token"].as_str().unwrap().to_owned()
}

fn code(r: &ApiResponse) -> &str {
    r.body["error"]["code"]
        .as_str()
        .unwrap_or_else(|| panic!("no error code in {} {}", r.status, r.text))
}

fn claims_of(token: &str) -> Value {
    let part = token.split('.').nth(1).unwrap();
    serde_json::from_slice(&seb::base64url::decode(part).unwrap()).unwrap()
}

/// `seb audit verify` against the replica at `url`: entries, proofs and the checkpoint
/// signature, with only the root certificate.
fn audit_verify(s: &Replicas, url: &str) -> String {
    let root = s.hsm.trust("root.pem");
    let out = common::seb(
        &[
            "audit",
            "verify",
            "--trust",
            root.to_str().unwrap(),
            "--broker",
            url,
            "--cert",
            s.agent.cert.to_str().unwrap(),
            "--key",
            s.agent.key.to_str().unwrap(),
        ],
        s.hsm.dir.path(),
    );
    common::assert_success(&out, "seb audit verify");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The size of the log in the replica's newest signed checkpoint (C2SP tlog-checkpoint text:
/// origin, size, root).
fn checkpoint_size(s: &Replicas, url: &str) -> u64 {
    let c = call(&s.hsm, url, &s.agent, "GET", "/v1/audit/checkpoint", None);
    assert_eq!(c.status, 200, "{}", c.text);
    c.text
        .lines()
        .nth(1)
        .and_then(|l| l.parse().ok())
        .unwrap_or_else(|| panic!("{}", c.text))
}

/// The served entry at the index a token names, with its leaf hash.
fn entry_at(s: &Replicas, url: &str, index: u64) -> Value {
    let page = call(
        &s.hsm,
        url,
        &s.agent,
        "GET",
        &format!("/v1/audit/entries?start={index}&end={}", index + 1),
        None,
    );
    assert_eq!(page.status, 200, "{}", page.text);
    page.body["entries"][0].clone()
}

#[test]
fn a_token_raced_through_both_replicas_is_redeemed_exactly_once() {
    let s = replicas();
    let tls = s.hsm.tls(&s.executor, true);
    for round in 0..8 {
        // Issued through one replica or the other; redeemed through both at the same moment.
        let token = grant(&s, if round % 2 == 0 { &s.a.url } else { &s.b.url });
        let body = json!({"token": token});
        let (ra, rb) = runtime().block_on(async {
            let mut ca = Client::connect(&s.a.url, &tls).await.unwrap();
            let mut cb = Client::connect(&s.b.url, &tls).await.unwrap();
            tokio::join!(
                ca.post_json("/v1/tokens/redeem", &body),
                cb.post_json("/v1/tokens/redeem", &body)
            )
        });
        let (ra, rb) = (ra.unwrap(), rb.unwrap());
        let mut statuses = [ra.status, rb.status];
        statuses.sort_unstable();
        assert_eq!(
            statuses,
            [200, 409],
            "round {round}: {} / {}",
            ra.text,
            rb.text
        );
        let refused = if ra.status == 409 { &ra } else { &rb };
        assert_eq!(code(refused), "token_already_redeemed");
    }
}

#[test]
fn a_nul_in_a_request_is_denied_and_logged_without_failing_anyone_elses_write() {
    // PostgreSQL's TEXT refuses U+0000: a denied request carrying one used to fail the whole
    // batch of writes it was committed with (other agents' grants and approvals), and a NUL in
    // a request id made a lookup a store failure.
    let s = replicas();
    for (operation, resource) in [
        ("deploy.roll\u{0}out", "prod/payments/api"),
        ("deploy.rollout", "prod/payments/a\u{0}pi"),
    ] {
        let before = checkpoint_size(&s, &s.a.url);
        let body = json!({"operation": operation, "resource": resource, "params": {"replicas": 3}});
        let r = execute(&s, &s.a.url, &body);
        assert_eq!(r.status, 403, "{}", r.text);
        // The denial is an entry of the one log, with the exact text asked for.
        let deadline = Instant::now() + Duration::from_secs(10);
        let entry = loop {
            let size = checkpoint_size(&s, &s.a.url);
            if size > before {
                break entry_at(&s, &s.a.url, size - 1);
            }
            assert!(Instant::now() < deadline, "the denial was not logged");
            std::thread::sleep(Duration::from_millis(200));
        };
        assert_eq!(entry["entry"]["kind"], "execution_denied", "{entry}");
        assert_eq!(entry["entry"]["operation"], operation);
        assert_eq!(entry["entry"]["resource"], resource);
        // Writes committed after it go through, on either replica.
        grant(&s, &s.a.url);
        grant(&s, &s.b.url);
    }
    for path in [
        "/v1/executions/%00abcdefghijklmnopqrst",
        "/v1/executions/a%00",
    ] {
        let r = call(&s.hsm, &s.b.url, &s.agent, "GET", path, None);
        assert_eq!(r.status, 404, "{path}: {}", r.text);
    }
    let h = call(&s.hsm, &s.a.url, &s.agent, "GET", "/healthz", None);
    assert_eq!(h.status, 200, "{}", h.text);
    let out = audit_verify(&s, &s.b.url);
    assert!(out.contains("audit log OK"), "{out}");
}

#[test]
fn a_log_written_through_both_replicas_is_one_tree() {
    let s = replicas();
    let mut tokens = Vec::new();
    for i in 0..12 {
        tokens.push(grant(&s, if i % 2 == 0 { &s.a.url } else { &s.b.url }));
    }
    // Every token names its entry; both replicas serve that same entry at that index.
    let mut indexes = HashSet::new();
    for token in &tokens {
        let claims = claims_of(token);
        let index = claims["audit"]["index"].as_u64().unwrap();
        assert!(indexes.insert(index), "two tokens name entry {index}");
        let from_a = entry_at(&s, &s.a.url, index);
        let from_b = entry_at(&s, &s.b.url, index);
        assert_eq!(from_a, from_b);
        assert_eq!(from_a["leaf_hash"], claims["audit"]["leaf_hash"]);
    }
    // One checkpoint covers the entries of both, and the log verifies through either replica.
    for url in [&s.a.url, &s.b.url] {
        let size = checkpoint_size(&s, url);
        assert!(
            size > *indexes.iter().max().unwrap(),
            "checkpoint of {size} entries"
        );
        let out = audit_verify(&s, url);
        assert!(out.contains("audit log OK"), "{out}");
    }
}

#[test]
fn approvals_through_each_replica_complete_one_quorum_once() {
    let s = replicas();
    let approver = |name: &str| {
        s.hsm.identity(
            name,
            &format!("CN={name}"),
            "approver",
            &["--group", "sre-leads"],
        )
    };
    let (alice, bob, carol) = (approver("alice"), approver("bob"), approver("carol"));
    let agent_thumbprint = {
        let cert = Certificate::parse(&std::fs::read(&s.agent.cert).unwrap()).unwrap();
        seb::base64url::encode(&cert.thumbprint_sha256().unwrap())
    };
    let r = execute(
        &s,
        &s.a.url,
        &json!({"operation": "db.migrate", "resource": "prod/payments/db", "params": {"version": 42}}),
    );
    assert_eq!(r.status, 202, "{}", r.text);
    let id = r.body["request_id"].as_str().unwrap().to_owned();
    let digest = r.body["request_digest"].as_str().unwrap().to_owned();
    let decision = |who: &Identity| {
        let key = ApproverKey::from_pkcs8_pem(&std::fs::read_to_string(&who.key).unwrap()).unwrap();
        let sig = key.sign(&approval::message(
            Decision::Approve,
            &digest,
            &agent_thumbprint,
        ));
        json!({"decision": "approve", "signature": seb::base64url::encode(&sig)})
    };
    let path = format!("/v1/executions/{id}/approvals");
    // Alice through A, Bob through B, at the same moment.
    let (ta, tb) = (s.hsm.tls(&alice, true), s.hsm.tls(&bob, true));
    let (da, db) = (decision(&alice), decision(&bob));
    let (ra, rb) = runtime().block_on(async {
        let mut ca = Client::connect(&s.a.url, &ta).await.unwrap();
        let mut cb = Client::connect(&s.b.url, &tb).await.unwrap();
        tokio::join!(ca.post_json(&path, &da), cb.post_json(&path, &db))
    });
    let (ra, rb) = (ra.unwrap(), rb.unwrap());
    assert!(
        ra.status < 300 && rb.status < 300,
        "{} / {}",
        ra.text,
        rb.text
    );
    // Seen through either replica: granted, with one token.
    let mut tokens = HashSet::new();
    for url in [&s.a.url, &s.b.url] {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let st = call(
                &s.hsm,
                url,
                &s.agent,
                "GET",
                &format!("/v1/executions/{id}"),
                None,
            );
            if st.body["status"] == "granted" {
                tokens.insert(st.body["token"].as_str().unwrap().to_owned());
                break;
            }
            assert!(Instant::now() < deadline, "not granted: {}", st.text);
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    assert_eq!(tokens.len(), 1, "one token for the request");
    // A third approval, through either replica, finds the request closed.
    let rc = call(
        &s.hsm,
        &s.b.url,
        &carol,
        "POST",
        &path,
        Some(&decision(&carol)),
    );
    assert_eq!(rc.status, 409, "{}", rc.text);
    assert_eq!(code(&rc), "request_closed");
    // The log holds exactly one grant for the request.
    let size = checkpoint_size(&s, &s.a.url);
    let page = call(
        &s.hsm,
        &s.a.url,
        &s.agent,
        "GET",
        &format!("/v1/audit/entries?start=0&end={size}"),
        None,
    );
    let grants = page.body["entries"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| {
            let entry = &e["entry"];
            entry["kind"] == "execution_granted" && entry["request_id"] == id.as_str()
        })
        .count();
    assert_eq!(grants, 1, "{}", page.text);
}

#[test]
fn a_revocation_freeze_or_epoch_bump_takes_effect_on_the_other_replica_within_a_second() {
    let s = replicas();
    grant(&s, &s.b.url);
    // A freeze made with the CLI (the shared database) stops both replicas.
    s.hsm.seb_ok(&["freeze", "--reason", "incident drill"]);
    let frozen_at = Instant::now();
    for url in [&s.a.url, &s.b.url] {
        loop {
            let r = ask(&s, url, 2);
            if r.status != 201 {
                assert_eq!(code(&r), "issuance_frozen", "{}", r.text);
                break;
            }
            assert!(
                frozen_at.elapsed() < Duration::from_secs(1),
                "still issuing after 1 s"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    s.hsm.seb_ok(&["unfreeze", "--reason", "drill over"]);
    std::thread::sleep(Duration::from_millis(600));
    let before_bump = grant(&s, &s.a.url);

    // An epoch bump made with the CLI: a second later, a token issued through A before it
    // is refused at redemption through B (stale_epoch).
    s.hsm.seb_ok(&["epoch", "bump"]);
    std::thread::sleep(Duration::from_secs(1));
    let r = call(
        &s.hsm,
        &s.b.url,
        &s.executor,
        "POST",
        "/v1/tokens/redeem",
        Some(&json!({"token": before_bump})),
    );
    assert_eq!(r.status, 403, "{}", r.text);
    assert_eq!(code(&r), "stale_epoch", "{}", r.text);
    let fresh = grant(&s, &s.a.url);
    assert!(
        claims_of(&fresh)["epoch"].as_u64() > claims_of(&before_bump)["epoch"].as_u64(),
        "A issues tokens of the new epoch"
    );

    // The agent's certificate revoked with the CLI: both replicas refuse it at once.
    let cert = Certificate::parse(&std::fs::read(&s.agent.cert).unwrap()).unwrap();
    let serial = seb::serial::Serial::of(&cert).unwrap().to_string();
    s.hsm.revoke_compromised(&serial);
    let revoked_at = Instant::now();
    for url in [&s.b.url, &s.a.url] {
        let r = ask(&s, url, 2);
        assert_ne!(r.status, 201, "a revoked agent got a token: {}", r.text);
        assert_eq!(code(&r), "certificate_revoked", "{}", r.text);
    }
    assert!(revoked_at.elapsed() < Duration::from_secs(1));
}

#[test]
fn the_database_going_away_fails_closed_and_both_replicas_recover_without_a_restart() {
    let s = replicas();
    grant(&s, &s.a.url);
    s.hsm.pg_stop();
    for url in [&s.a.url, &s.b.url] {
        let r = ask(&s, url, 2);
        assert_eq!(r.status, 503, "{}", r.text);
        assert_eq!(code(&r), "store_unavailable", "{}", r.text);
        assert!(!r.text.contains("password"), "{}", r.text);
    }
    // Readiness says so: with the database down even the caller's revocations cannot be read,
    // so `/healthz` is refused like every route (503 store_unavailable); back up, it reports
    // the store and the log ready (answers are reused for up to a second).
    let health = |url: &str, ok: bool| {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let h = call(&s.hsm, url, &s.agent, "GET", "/healthz", None);
            let ready = h.status == 200
                && h.body["checks"]["store"]["ok"] == true
                && h.body["checks"]["audit"]["ok"] == true;
            if ready == ok {
                if !ok {
                    assert_eq!(h.status, 503, "{}", h.text);
                }
                break;
            }
            assert!(Instant::now() < deadline, "{}", h.text);
            std::thread::sleep(Duration::from_millis(300));
        }
    };
    health(&s.a.url, false);
    s.hsm.pg_start();
    for url in [&s.a.url, &s.b.url] {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let r = ask(&s, url, 2);
            if r.status == 201 {
                break;
            }
            assert!(Instant::now() < deadline, "no recovery: {}", r.text);
            std::thread::sleep(Duration::from_millis(100));
        }
        health(url, true);
    }
    let out = audit_verify(&s, &s.b.url);
    assert!(out.contains("audit log OK"), "{out}");
}

#[test]
fn a_replica_killed_under_load_leaves_the_other_serving_and_loses_no_token() {
    let mut s = replicas();
    let stop = Arc::new(AtomicBool::new(false));
    let acknowledged = Arc::new(Mutex::new(Vec::<String>::new()));
    let mut workers = Vec::new();
    for w in 0..4 {
        let url = if w % 2 == 0 {
            s.a.url.clone()
        } else {
            s.b.url.clone()
        };
        let tls = s.hsm.tls(&s.agent, true);
        let (stop, acknowledged) = (stop.clone(), acknowledged.clone());
        workers.push(std::thread::spawn(move || {
            let rt = runtime();
            let mut served = 0u32;
            while !stop.load(Ordering::SeqCst) {
                let got = rt.block_on(async {
                    let mut c = Client::connect(&url, &tls).await.ok()?;
                    let mut tokens = Vec::new();
                    for _ in 0..20 {
                        let Ok(r) = c.post_json("/v1/executions", &rollout(4)).await else {
                            break;
                        };
                        if r.status == 201 {
                            tokens.push(r.body["token"].as_str()?.to_owned());
                        }
                    }
                    Some(tokens)
                });
                if let Some(tokens) = got {
                    served += u32::try_from(tokens.len()).unwrap();
                    acknowledged.lock().unwrap().extend(tokens);
                } else {
                    std::thread::sleep(Duration::from_millis(20));
                }
            }
            served
        }));
    }
    std::thread::sleep(Duration::from_millis(1500));
    let mut a = s.a.child.take().unwrap();
    a.kill().unwrap();
    a.wait().unwrap();
    let before = acknowledged.lock().unwrap().len();
    std::thread::sleep(Duration::from_millis(1500));
    stop.store(true, Ordering::SeqCst);
    for w in workers {
        w.join().unwrap();
    }
    let tokens = acknowledged.lock().unwrap().clone();
    assert!(
        tokens.len() > before,
        "the surviving replica stopped serving"
    );
    assert!(before > 0, "nothing was issued before the kill");

    // Every acknowledged token's entry is in the log, as the token names it.
    for token in &tokens {
        let claims = claims_of(token);
        let index = claims["audit"]["index"].as_u64().unwrap();
        let served = entry_at(&s, &s.b.url, index);
        assert_eq!(
            served["leaf_hash"], claims["audit"]["leaf_hash"],
            "entry {index}"
        );
    }
    let out = audit_verify(&s, &s.b.url);
    assert!(out.contains("audit log OK"), "{out}");

    // Each redeems once, through the survivor or a restarted replica, and never twice.
    s.a = Broker::start_replica(&s.hsm, free_port(), "replica-a2.log");
    let tls = s.hsm.tls(&s.executor, true);
    runtime().block_on(async {
        let mut cb = Client::connect(&s.b.url, &tls).await.unwrap();
        let mut ca = Client::connect(&s.a.url, &tls).await.unwrap();
        for token in &tokens {
            let body = json!({"token": token});
            let first = cb.post_json("/v1/tokens/redeem", &body).await.unwrap();
            assert_eq!(first.status, 200, "{}", first.text);
            let second = ca.post_json("/v1/tokens/redeem", &body).await.unwrap();
            assert_eq!(second.status, 409, "{}", second.text);
        }
    });
    eprintln!(
        "{} tokens acknowledged, {before} before the kill",
        tokens.len()
    );
}

#[test]
fn an_agent_spreading_over_replicas_gets_no_more_than_from_one_broker() {
    // 10 requests at once in all, refilled at 1/s: each of the two live replicas allows half.
    let s = replicas_limited(1, 10);
    // Both replicas have announced themselves and counted each other (heartbeat: 1 s).
    std::thread::sleep(Duration::from_millis(2500));
    let (ta, tb) = (s.hsm.tls(&s.agent, true), s.hsm.tls(&s.agent, true));
    let allowed = runtime().block_on(async {
        let mut ca = Client::connect(&s.a.url, &ta).await.unwrap();
        let mut cb = Client::connect(&s.b.url, &tb).await.unwrap();
        let mut allowed = 0;
        for _ in 0..15 {
            for c in [&mut ca, &mut cb] {
                let r = c.send("GET", "/v1/grants", None).await.unwrap();
                if r.status != 429 {
                    assert_eq!(r.status, 200, "{}", r.text);
                    allowed += 1;
                }
            }
        }
        allowed
    });
    // 5 + 5, and at most a refill or two while the 30 requests run; one broker alone would
    // allow 10, two undivided ones 20.
    assert!((10..=13).contains(&allowed), "{allowed} of 30 allowed");
}

/// Makes a CA and a certificate for 127.0.0.1 signed by it in `dir` with openssl; returns the
/// CA's PEM path.
fn tls_material(dir: &std::path::Path, name: &str) -> std::path::PathBuf {
    let sh = |script: &str| {
        let out = std::process::Command::new("bash")
            .args(["-ec", script])
            .current_dir(dir)
            .output()
            .unwrap();
        common::assert_success(&out, script);
    };
    sh(&format!(
        "openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 \
           -subj /CN={name}-ca -keyout {name}-ca.key -out {name}-ca.pem 2>/dev/null
         openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
           -subj /CN=127.0.0.1 -keyout {name}-server.key -out {name}-server.csr 2>/dev/null
         printf 'subjectAltName=IP:127.0.0.1,DNS:localhost\\n' > {name}-san.ext
         openssl x509 -req -in {name}-server.csr -CA {name}-ca.pem -CAkey {name}-ca.key \
           -CAcreateserial -days 2 -extfile {name}-san.ext -out {name}-server.pem 2>/dev/null"
    ));
    dir.join(format!("{name}-ca.pem"))
}

#[test]
fn tls_to_the_database_is_used_and_verified_when_the_url_asks_for_it() {
    let hsm = Hsm::initialised_postgres();
    let dir = hsm.dir.path();
    let ca = tls_material(dir, "db");
    let other_ca = tls_material(dir, "other");
    // The server gets the certificate, and refuses every connection without TLS.
    let data = dir.join("postgres/data");
    for (from, to) in [
        ("db-server.pem", "server.crt"),
        ("db-server.key", "server.key"),
    ] {
        std::fs::copy(dir.join(from), data.join(to)).unwrap();
    }
    let out = std::process::Command::new("bash")
        .args(["-ec", "chown postgres server.crt server.key && chmod 600 server.key \
             && printf \"ssl = on\\nssl_cert_file = 'server.crt'\\nssl_key_file = 'server.key'\\n\" >> seb.conf \
             && sed -i 's/^host /hostssl /' pg_hba.conf"])
        .current_dir(&data)
        .output()
        .unwrap();
    common::assert_success(&out, "configure ssl");
    hsm.pg_stop();
    hsm.pg_start();
    let plain = std::fs::read_to_string(hsm.config()).unwrap();
    // Without TLS the server refuses seb (hostssl only): the store reports it.
    let out = hsm.seb(&["migrate"]);
    common::assert_clean_failure(&out, "no encryption");
    // sslmode=require and the database's CA: the store connects over TLS.
    let url_line = plain.lines().find(|l| l.starts_with("url = ")).unwrap();
    let with_tls = |ca_file: &str| {
        plain.replace(
            url_line,
            &format!(
                "{}?sslmode=require\"\nca_file = \"{ca_file}\"",
                url_line.trim_end_matches('"')
            ),
        )
    };
    std::fs::write(hsm.config(), with_tls(ca.to_str().unwrap())).unwrap();
    let said = hsm.seb_ok(&["migrate"]);
    assert!(said.contains("up to date"), "{said}");
    // libpq's spelling of the same mode works too (the host name is always checked).
    std::fs::write(
        hsm.config(),
        with_tls(ca.to_str().unwrap()).replace("sslmode=require", "sslmode=verify-full"),
    )
    .unwrap();
    hsm.seb_ok(&["migrate"]);
    // And libpq's way of naming the CA, in the URL itself.
    std::fs::write(
        hsm.config(),
        plain.replace(
            url_line,
            &format!(
                "{}?sslmode=verify-full&sslrootcert={}\"",
                url_line.trim_end_matches('"'),
                ca.display()
            ),
        ),
    )
    .unwrap();
    let said = hsm.seb_ok(&["migrate"]);
    assert!(said.contains("up to date"), "{said}");
    // A CA seb cannot pin down (libpq's `system`, a relative path) is refused, not guessed.
    for root in ["system", "db-ca.pem"] {
        std::fs::write(
            hsm.config(),
            plain.replace(
                url_line,
                &format!(
                    "{}?sslmode=verify-full&sslrootcert={root}\"",
                    url_line.trim_end_matches('"')
                ),
            ),
        )
        .unwrap();
        let out = hsm.seb(&["migrate"]);
        common::assert_clean_failure(&out, "absolute path");
    }
    std::fs::write(hsm.config(), with_tls(ca.to_str().unwrap())).unwrap();
    let broker = Broker::start(&hsm);
    let agent = hsm.agent("deploy-bot", GRANTS);
    let r = call(
        &hsm,
        &broker.url,
        &agent,
        "POST",
        "/v1/executions",
        Some(&rollout(3)),
    );
    assert_eq!(r.status, 201, "{}", r.text);
    drop(broker);
    // A server certificate from another CA is refused: seb does not talk to an impostor.
    std::fs::write(hsm.config(), with_tls(other_ca.to_str().unwrap())).unwrap();
    let out = hsm.seb(&["migrate"]);
    common::assert_clean_failure(&out, "certificate");
    // sslmode=require without a CA to check against is a configuration error.
    std::fs::write(
        hsm.config(),
        plain.replace(
            url_line,
            &format!("{}?sslmode=require\"", url_line.trim_end_matches('"')),
        ),
    )
    .unwrap();
    let out = hsm.seb(&["migrate"]);
    common::assert_clean_failure(&out, "ca_file");
}

#[test]
fn migrate_creates_the_schema_once_and_check_reports_the_database() {
    let hsm = Hsm::initialised_postgres();
    let text = hsm.seb_ok(&["check"]);
    assert!(
        text.contains("PostgreSQL store reachable, schema version 2"),
        "{text}"
    );
    assert!(text.contains("database password file"), "{text}");
    let said = hsm.seb_ok(&["migrate"]);
    assert!(said.contains("up to date (version 2)"), "{said}");
    // An empty database: check says what to do, migrate creates the schema, once.
    let password = std::fs::read_to_string(hsm.path("pg.password")).unwrap();
    let port = std::fs::read_to_string(hsm.path("pg.port")).unwrap();
    let psql = |sql: &str| {
        let out = std::process::Command::new("psql")
            .args([
                "-h",
                "127.0.0.1",
                "-p",
                port.trim(),
                "-U",
                "seb",
                "-d",
                "seb",
                "-qc",
            ])
            .arg(sql)
            .env("PGPASSWORD", password.trim())
            .output()
            .unwrap();
        common::assert_success(&out, "psql");
    };
    // A version-1 schema (before approvals kept their approvers' serials): serve refuses it,
    // migrate brings it to 2 in one step.
    psql("ALTER TABLE approvals DROP COLUMN approver_serials; UPDATE seb_schema SET version = 1");
    let out = hsm.seb(&["check"]);
    assert!(!out.status.success());
    let said = hsm.seb_ok(&["migrate"]);
    assert!(said.contains("migrated from version 1 to 2"), "{said}");
    psql("SELECT approver_serials FROM approvals");
    psql("DROP SCHEMA public CASCADE; CREATE SCHEMA public");
    let out = hsm.seb(&["check"]);
    assert!(!out.status.success());
    let report = String::from_utf8_lossy(&out.stdout);
    assert!(
        report.contains("no seb schema: run `seb migrate`"),
        "{report}"
    );
    // Opening the store (to read what was issued) says the same, not a missing-table error,
    // and creates nothing: migrate below still finds version 0.
    assert!(
        report.contains("the database schema is version 0, this seb needs 2: run `seb migrate`"),
        "{report}"
    );
    let said = hsm.seb_ok(&["migrate"]);
    assert!(said.contains("migrated from version 0 to 2"), "{said}");
    let said = hsm.seb_ok(&["migrate"]);
    assert!(said.contains("up to date"), "{said}");
    // A database a newer seb migrated: every command says to upgrade seb, none says to migrate.
    psql("UPDATE seb_schema SET version = 3");
    for args in [
        &["migrate"][..],
        &["cert", "list"],
        &["freeze", "--reason", "x"],
    ] {
        let out = hsm.seb(args);
        assert!(!out.status.success(), "{args:?}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.contains("newer than this seb knows (2): upgrade seb")
                && !stderr.contains("run `seb migrate`")
                && !stderr.contains("corrupt"),
            "{args:?}: {stderr}"
        );
    }
    psql("UPDATE seb_schema SET version = 2");
    // The database down: check fails and says so, without the password.
    hsm.pg_stop();
    let out = hsm.seb(&["check"]);
    assert!(!out.status.success());
    let report = String::from_utf8_lossy(&out.stdout);
    assert!(
        report.contains("the PostgreSQL store cannot be reached"),
        "{report}"
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(!stderr.contains(password.trim()) && !stdout.contains(password.trim()));
}
