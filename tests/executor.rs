//! The reference executor end to end: a real `seb serve`, a real `seb exec`, agents over real
//! mutual TLS. Threats named: replay (a second presentation), a stolen token (another agent),
//! changed parameters, an old policy epoch, the freeze, shell injection through parameters,
//! and the receipt as evidence (verified, recorded at the broker).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use common::{Broker, Hsm, Identity};
use serde_json::{json, Value};

use common::exec::{Executor, DEMO_WRITE_GRANTS as GRANTS};

struct Setup {
    hsm: Hsm,
    broker: Broker,
    exec: Executor,
    agent: Identity,
    executor: Identity,
    out: PathBuf,
}

/// An executor certificate (role, receipt purpose and all) that openssl signed under an
/// offline intermediate the root allowed to issue agents only: `NAME.pem` holds it and the
/// intermediate, `NAME.key` its PKCS#8 key.
fn rogue_executor(s: &Setup) -> Identity {
    let (ca, _) = s
        .hsm
        .offline_intermediate("agents-only", &["--roles", "agent"]);
    let dir = s.hsm.dir.path();
    let path = |f: &str| s.hsm.path(f);
    let ca_key_file = path("agents-only-ca.key");
    let run = |args: &[&str]| {
        let (ok, text) = common::openssl(args, dir);
        assert!(ok, "openssl {args:?}: {text}");
    };
    common::openssl_csr(
        dir,
        &path("rogue.key"),
        "/CN=demo-executor",
        &path("rogue.csr"),
        &[],
    );
    std::fs::write(
        path("rogue.ext"),
        format!(
            "basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature\n\
             extendedKeyUsage=clientAuth,serverAuth,{}\n{}=DER:30050A01023000\n",
            seb::cert::SEB_KP_RECEIPT,
            seb::cert::SEB_ROLE_OID
        ),
    )
    .unwrap();
    run(&[
        "x509",
        "-req",
        "-in",
        path("rogue.csr").to_str().unwrap(),
        "-CA",
        path("agents-only-ca.pem").to_str().unwrap(),
        "-CAkey",
        ca_key_file.to_str().unwrap(),
        "-CAcreateserial",
        "-days",
        "1",
        "-sha384",
        "-extfile",
        path("rogue.ext").to_str().unwrap(),
        "-out",
        path("rogue-leaf.pem").to_str().unwrap(),
    ]);
    let leaf = std::fs::read_to_string(path("rogue-leaf.pem")).unwrap();
    let cert = path("rogue.pem");
    std::fs::write(&cert, format!("{leaf}{}", ca.to_pem_string().unwrap())).unwrap();
    let role = seb::cert::Certificate::parse(leaf.as_bytes())
        .unwrap()
        .seb_role();
    assert_eq!(
        role,
        Some(seb::grants::RoleKind::Executor),
        "the test needs an executor role"
    );
    Identity {
        cert,
        key: path("rogue.key"),
    }
}

fn setup() -> Setup {
    let hsm = Hsm::initialised();
    let executor = common::exec::identity(&hsm);
    let agent = hsm.agent("agent", GRANTS);
    let broker = Broker::start(&hsm);
    let (exec, out) = Executor::demo_write(&hsm, &broker);
    Setup {
        hsm,
        broker,
        exec,
        agent,
        executor,
        out,
    }
}

/// Asks the broker for a token as `agent`; returns (status, body).
fn request(s: &Setup, agent: &Identity, params: &Value) -> (u16, Value) {
    let tls = s.hsm.tls(agent, true);
    let body = json!({"operation": "demo.write", "resource": "demo/files", "params": params});
    let rt = common::runtime();
    let r = rt.block_on(async {
        let mut c = seb::client::Client::connect(&s.broker.url, &tls)
            .await
            .unwrap();
        c.post_json("/v1/executions", &body).await.unwrap()
    });
    (r.status, r.body)
}

fn token(s: &Setup, params: &Value) -> String {
    let (status, body) = request(s, &s.agent, params);
    assert_eq!(status, 201, "{body}");
    body["token"].as_str().unwrap().to_owned()
}

/// Presents `{token, params}` to the executor as `agent`; returns (status, body).
fn run(s: &Setup, agent: &Identity, token: &str, params: &Value) -> (u16, Value) {
    let tls = s.hsm.tls(agent, true);
    let rt = common::runtime();
    let r = rt.block_on(async {
        let mut c = seb::client::Client::connect(&s.exec.url, &tls.to_executors())
            .await
            .unwrap();
        c.post_json("/v1/run", &json!({"token": token, "params": params}))
            .await
            .unwrap()
    });
    (r.status, r.body)
}

/// `seb request ... --execute`: the agent side in one command, for `demo.write` with `params`.
fn request_and_execute(s: &Setup, params: &Value) -> std::process::Output {
    seb_request(s, &s.broker.url, params, &["--execute", &s.exec.url])
}

/// `seb request` as the agent to the broker at `broker`, for `demo.write` with `params`.
fn seb_request(s: &Setup, broker: &str, params: &Value, extra: &[&str]) -> std::process::Output {
    let params = params.to_string();
    let root = s.hsm.trust("root.pem");
    let mut args = vec![
        "request",
        "--broker",
        broker,
        "--ca",
        root.to_str().unwrap(),
        "--cert",
        s.agent.cert.to_str().unwrap(),
        "--key",
        s.agent.key.to_str().unwrap(),
        "--operation",
        "demo.write",
        "--resource",
        "demo/files",
        "--params",
        &params,
    ];
    args.extend_from_slice(extra);
    common::seb(&args, s.hsm.dir.path())
}

fn code(body: &Value) -> &str {
    body["error"]["code"].as_str().unwrap_or("")
}

#[test]
fn a_token_is_executed_once_by_its_agent_with_its_params_and_the_receipt_is_evidence() {
    let s = setup();
    let params = json!({"name": "hello.txt", "text": "hello from the agent"});

    // The agent side in one command: request, then run at the executor; prints the answer.
    let out = request_and_execute(&s, &params);
    common::assert_success(&out, "seb request --execute");
    assert_eq!(
        std::fs::read_to_string(s.out.join("hello.txt")).unwrap(),
        "hello from the agent"
    );
    let answer: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(answer["status"], "executed", "{answer}");
    assert_eq!(answer["succeeded"], true, "{answer}");
    assert_eq!(answer["outcome_recorded"], true, "{answer}");
    let receipt = &answer["receipt"];
    assert_eq!(receipt["body"]["exit_code"], 0);
    assert_eq!(receipt["body"]["operation"], "demo.write");

    // The receipt verifies under the executor certificate, offline.
    let receipt_file = s.hsm.path("receipt.json");
    let verify = |answer: &Value, cert: &std::path::Path| {
        std::fs::write(&receipt_file, serde_json::to_vec(answer).unwrap()).unwrap();
        common::seb(
            &[
                "receipt",
                "verify",
                "--receipt",
                receipt_file.to_str().unwrap(),
                "--cert",
                cert.to_str().unwrap(),
                "--trust",
                s.hsm.trust("root.pem").to_str().unwrap(),
            ],
            s.hsm.dir.path(),
        )
    };
    let out = verify(&answer, &s.executor.cert);
    common::assert_success(&out, "seb receipt verify");
    assert!(
        String::from_utf8_lossy(&out.stderr)
            .contains("stdout: the answer's text is what the receipt's digest covers"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The answer's output or verdict changed next to an intact receipt: refused, since the
    // signature would vouch for something else than what the reader sees.
    let mut shown = answer.clone();
    shown["stdout"] = json!("all rows deleted");
    common::assert_clean_failure(&verify(&shown, &s.executor.cert), "output_mismatch");
    let mut shown = answer.clone();
    shown["succeeded"] = json!(false);
    common::assert_clean_failure(&verify(&shown, &s.executor.cert), "output_mismatch");
    // The receipt alone verifies as before.
    common::assert_success(
        &verify(&answer["receipt"], &s.executor.cert),
        "seb receipt verify of the receipt alone",
    );
    // A changed receipt does not.
    let mut forged = answer.clone();
    forged["receipt"]["body"]["exit_code"] = json!(1);
    common::assert_clean_failure(&verify(&forged, &s.executor.cert), "bad_receipt_signature");
    // Nor under a certificate that is not an executor's: a stable code says so.
    common::assert_clean_failure(&verify(&answer, &s.agent.cert), "not_an_executor");
    // Nor under an executor certificate minted by an intermediate that may issue agents only
    // (outside review: the broker refuses its holder, the receipt check did not).
    let rogue = rogue_executor(&s);
    let mut body: seb::receipt::ReceiptBody =
        serde_json::from_value(receipt["body"].clone()).unwrap();
    // Within the rogue certificate's validity, which began after the real run.
    let now_ms = seb::time::unix_millis(std::time::SystemTime::now());
    (body.started_at_ms, body.finished_at_ms) = (now_ms, now_ms);
    body.executor = seb::base64url::encode(
        &seb::cert::Certificate::parse_pem_chain(&std::fs::read(&rogue.cert).unwrap()).unwrap()[0]
            .thumbprint_sha256()
            .unwrap(),
    );
    let key =
        seb::approval::ApproverKey::from_pkcs8_pem(&std::fs::read_to_string(&rogue.key).unwrap())
            .unwrap();
    let forged = seb::receipt::sign(body, &key).unwrap();
    common::assert_clean_failure(
        &verify(&serde_json::to_value(&forged).unwrap(), &rogue.cert),
        "role_not_delegated",
    );

    // Recorded at the broker: the receipt, as the executor signed it, once.
    let jti = receipt["body"]["jti"].as_str().unwrap();
    let config = seb::config::Config::load(&s.hsm.config()).unwrap();
    let store = seb::store::sqlite::SqliteStore::open(&config.state_dir).unwrap();
    let recorded = seb::store::Store::outcome(&store, jti).unwrap().unwrap();
    let recorded: Value = serde_json::from_str(&recorded).unwrap();
    assert_eq!(&recorded, receipt);
    // ... and in the audit log, as an outcome_reported entry holding the receipt.
    use seb::store::Store as _;
    let logged = store.events("outcome_reported").unwrap();
    assert_eq!(logged.len(), 1);
    assert_eq!(
        &serde_json::from_str::<Value>(&logged[0].1).unwrap(),
        receipt
    );
    // The redemption and the outcome entries name the executor's certificate in full.
    let size = store.audit_size().unwrap();
    let exec_serial = common::openssl_serial(&s.executor.cert).to_uppercase();
    for (_, text) in store.audit_entries(0, size).unwrap() {
        let entry: Value = serde_json::from_str(&text).unwrap();
        if entry["kind"] == "token_redeemed" || entry["kind"] == "outcome_reported" {
            assert_eq!(entry["cert"]["subject"], "CN=demo-executor", "{entry}");
            assert_eq!(
                entry["cert"]["serial"].as_str().map(str::to_uppercase),
                Some(exec_serial.clone()),
                "{entry}"
            );
        }
    }

    // A second presentation of a token is refused by the broker, and nothing runs again.
    let params2 = json!({"name": "second.txt", "text": "once"});
    let t = token(&s, &params2);
    let (status, body) = run(&s, &s.agent, &t, &params2);
    assert_eq!(status, 200, "{body}");
    std::fs::remove_file(s.out.join("second.txt")).unwrap();
    let (status, body) = run(&s, &s.agent, &t, &params2);
    assert_eq!(
        (status, code(&body)),
        (409, "token_already_redeemed"),
        "{body}"
    );
    assert!(!s.out.join("second.txt").exists());

    // Another agent presenting a stolen token is refused before redemption.
    let thief = s.hsm.agent("thief", GRANTS);
    let params3 = json!({"name": "third.txt", "text": "mine"});
    let t = token(&s, &params3);
    let (status, body) = run(&s, &thief, &t, &params3);
    assert_eq!((status, code(&body)), (403, "wrong_certificate"), "{body}");
    // Changed parameters are refused too.
    let changed = json!({"name": "third.txt", "text": "something else"});
    let (status, body) = run(&s, &s.agent, &t, &changed);
    assert_eq!((status, code(&body)), (403, "wrong_params"), "{body}");
    assert!(!s.out.join("third.txt").exists());
    // The token was never spent: its own agent with its own params still runs it.
    let (status, body) = run(&s, &s.agent, &t, &params3);
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        std::fs::read_to_string(s.out.join("third.txt")).unwrap(),
        "mine"
    );
}

/// An action that runs and fails is not a success for the agent's script: `seb request
/// --execute` prints the answer (the receipt is still evidence, and recorded) and exits 1.
#[test]
fn an_action_that_runs_and_fails_makes_request_execute_exit_non_zero() {
    let s = setup();
    // `seb demo-write` refuses a name that is not a plain file name: the action exits 1.
    let params = json!({"name": "../escape.txt", "text": "nope"});
    let out = request_and_execute(&s, &params);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("the action ran and failed: exit status 1"),
        "{stderr}"
    );
    let answer: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(answer["status"], "executed", "{answer}");
    assert_eq!(answer["succeeded"], false, "{answer}");
    assert_eq!(answer["receipt"]["body"]["exit_code"], 1, "{answer}");
    assert_eq!(answer["outcome_recorded"], true, "{answer}");
    assert!(!s.hsm.path("escape.txt").exists());
}

#[test]
fn injection_attempts_in_params_reach_the_command_as_inert_single_arguments() {
    let s = setup();
    let canary = s.hsm.path("pwned");
    let texts = [
        format!("; rm -rf {} ; touch {}", s.out.display(), canary.display()),
        format!("$(touch {})", canary.display()),
        format!("`touch {}`", canary.display()),
        format!("line one\nline two; touch {}", canary.display()),
        "--output=/etc/passwd".to_owned(),
        "-rf".to_owned(),
    ];
    for (i, text) in texts.iter().enumerate() {
        let name = format!("inj{i}.txt");
        let params = json!({"name": name, "text": text});
        let t = token(&s, &params);
        let (status, body) = run(&s, &s.agent, &t, &params);
        assert_eq!(status, 200, "{text:?}: {body}");
        assert_eq!(body["receipt"]["body"]["exit_code"], 0, "{body}");
        assert_eq!(&std::fs::read_to_string(s.out.join(&name)).unwrap(), text);
    }
    assert!(!canary.exists(), "a shell ran");

    // Names that would leave the directory, or read as options, are refused: by the action
    // program (after redemption: a non-zero exit in the receipt) or by the executor's template
    // check (before redemption).
    for name in ["../escape.txt", "a/b", "..", "/etc/passwd"] {
        let params = json!({"name": name, "text": "x"});
        let t = token(&s, &params);
        let (status, body) = run(&s, &s.agent, &t, &params);
        assert_eq!(status, 200, "{name}: {body}");
        assert_ne!(body["receipt"]["body"]["exit_code"], 0, "{name}: {body}");
    }
    assert!(!s.hsm.path("escape.txt").exists());
    for bad in [
        json!({"name": "x.txt", "text": "a\u{0}b"}),
        json!({"name": "x.txt", "text": ["a"]}),
        json!({"name": "x.txt", "text": "t", "extra": "unused"}),
    ] {
        let (status, body) = request(&s, &s.agent, &bad);
        if status != 201 {
            continue; // refused by the broker already
        }
        let t = body["token"].as_str().unwrap();
        let (status, body) = run(&s, &s.agent, t, &bad);
        assert!(
            status == 400 && ["params_refused", "invalid_request"].contains(&code(&body)),
            "{bad}: {status} {body}"
        );
    }
    assert!(!s.out.join("x.txt").exists());
}

#[test]
fn epoch_bump_and_freeze_take_effect_on_the_running_broker_and_executor() {
    let s = setup();
    let params = json!({"name": "e.txt", "text": "before the bump"});
    let old = token(&s, &params);
    s.hsm.seb_ok(&["epoch", "bump"]);
    std::thread::sleep(std::time::Duration::from_millis(1200));
    assert_eq!(s.hsm.seb_ok(&["epoch", "show"]).trim(), "2");
    // The executor has not learned the new epoch yet; the broker refuses at redemption.
    let (status, body) = run(&s, &s.agent, &old, &params);
    assert_eq!((status, code(&body)), (403, "stale_epoch"), "{body}");
    assert!(!s.out.join("e.txt").exists());
    // A fresh token carries the new epoch and runs; from then on the executor refuses older
    // epochs offline.
    let fresh = json!({"name": "e2.txt", "text": "after"});
    let t = token(&s, &fresh);
    assert_eq!(run(&s, &s.agent, &t, &fresh).0, 200);
    let (status, body) = run(&s, &s.agent, &old, &params);
    assert_eq!((status, code(&body)), (403, "stale_epoch"), "{body}");

    // Freeze: no new token within a second, without a restart; unfreeze restores issuance.
    s.hsm.seb_ok(&["freeze", "--reason", "incident 42"]);
    std::thread::sleep(std::time::Duration::from_millis(1200));
    let (status, body) = request(&s, &s.agent, &fresh);
    assert_eq!((status, code(&body)), (503, "issuance_frozen"), "{body}");
    s.hsm.seb_ok(&["unfreeze"]);
    std::thread::sleep(std::time::Duration::from_millis(1200));
    let (status, body) = request(&s, &s.agent, &fresh);
    assert_eq!(status, 201, "{body}");

    // Each switch is recorded.
    let config = seb::config::Config::load(&s.hsm.config()).unwrap();
    let store = seb::store::sqlite::SqliteStore::open(&config.state_dir).unwrap();
    use seb::store::Store;
    assert_eq!(store.events("epoch_changed").unwrap().len(), 1);
    assert_eq!(store.events("frozen").unwrap()[0].1, "incident 42");
    assert_eq!(store.events("unfrozen").unwrap().len(), 1);
}

#[test]
fn the_executor_refuses_to_start_on_a_shell_action_and_agents_without_a_certificate() {
    let s = setup();
    let config = s.hsm.path("shell.toml");
    std::fs::write(
        &config,
        format!(
            r#"
listen = "127.0.0.1:0"
broker_url = "{}"
root = "state/trust/root.pem"
cert = "executor.pem"
key = "executor.key"

[[action]]
operation = "demo.write"
resource = "demo/files"
argv = ["/bin/sh", "-c", "echo {{text}} > /tmp/x"]
"#,
            s.broker.url
        ),
    )
    .unwrap();
    let out = common::seb(
        &["exec", "--config", config.to_str().unwrap()],
        s.hsm.dir.path(),
    );
    common::assert_clean_failure(&out, "never run a shell");

    // An executor certificate is not an agent: the executor says so (403 wrong_role, with the
    // role it saw) and closes the connection; nothing runs.
    let params = json!({"name": "x.txt", "text": "y"});
    let t = token(&s, &params);
    let (status, body) = run(&s, &s.executor, &t, &params);
    assert_eq!((status, code(&body)), (403, "wrong_role"), "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("executor"),
        "{body}"
    );
    assert!(!s.out.join("x.txt").exists());
}

#[test]
fn an_executor_whose_certificate_expired_says_so_at_start() {
    // Issue 17: the executor side says what is wrong and what to do, as `seb request` does,
    // instead of only that it cannot fetch the trust bundle.
    let s = setup();
    s.hsm.issue_for(
        "2s",
        "late",
        "CN=late executor",
        "executor",
        &["--tls-name", "127.0.0.1"],
    );
    std::thread::sleep(std::time::Duration::from_secs(3));
    let out = exec_as(&s, "late");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("your certificate (CN=late executor) expired at")
            && stderr.contains("seb cert renew --serial"),
        "the executor does not say its certificate expired: {stderr}"
    );
}

/// Runs `seb exec` with the setup's executor.toml, but as the identity `name` (NAME.pem,
/// NAME.key) on a free port; returns when it exits.
fn exec_as(s: &Setup, name: &str) -> std::process::Output {
    let config = std::fs::read_to_string(s.hsm.path("executor.toml"))
        .unwrap()
        .lines()
        .map(|line| match line.split_once(" = ") {
            Some(("listen", _)) => "listen = \"127.0.0.1:0\"".to_owned(),
            Some(("cert", _)) => format!("cert = \"{name}.pem\""),
            Some(("key", _)) => format!("key = \"{name}.key\""),
            _ => line.to_owned(),
        })
        .collect::<Vec<_>>()
        .join("\n");
    let file = s.hsm.path(&format!("{name}.toml"));
    std::fs::write(&file, config).unwrap();
    // An executor that starts runs until stopped: give it 30 s to refuse, so that a missing
    // check fails the test instead of hanging it.
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_seb"))
        .args(["exec", "--config", file.to_str().unwrap()])
        .current_dir(s.hsm.dir.path())
        .env_remove("SEB_CONFIG")
        .env("RUST_LOG", "warn")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run seb exec");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while child.try_wait().unwrap().is_none() && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let _ = child.kill();
    child.wait_with_output().unwrap()
}

#[test]
fn an_executor_certificate_without_tls_names_is_refused_at_start() {
    // Without --tls-name the certificate has no serverAuth and no names: agents could not
    // connect, and would find out only at their first execution.
    let s = setup();
    s.hsm
        .issue("nameless", "CN=nameless executor", "executor", &[]);
    let out = exec_as(&s, "nameless");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("\"CN=nameless executor\" has no serverAuth usage")
            && stderr.contains("--tls-name HOST"),
        "{stderr}"
    );
}

#[test]
fn an_executor_is_never_taken_for_the_broker_and_a_site_ca_may_certify_executors() {
    // An executor's certificate is root-issued with serverAuth for its address, like the
    // broker's: whoever holds an executor's key could otherwise answer redemptions as the
    // broker. Its sebRole tells them apart.
    let s = setup();
    let tls = s.hsm.tls(&s.agent, false);
    let rt = common::runtime();
    let as_broker = rt.block_on(seb::client::Client::connect(&s.exec.url, &tls));
    let Err(e) = as_broker else {
        panic!("an executor's certificate was accepted as the broker's")
    };
    let text = format!("{e:?}");
    assert!(text.contains("carries sebRole"), "{text}");
    let hint = tls
        .explain(&e, std::time::SystemTime::now())
        .unwrap_or_default();
    assert!(hint.contains("not the broker's own"), "{hint}");
    // And the broker is not an executor.
    let as_executor = rt.block_on(seb::client::Client::connect(
        &s.broker.url,
        &tls.to_executors(),
    ));
    let Err(e) = as_executor else {
        panic!("the broker's certificate was accepted as an executor's")
    };
    assert!(format!("{e:?}").contains("not an executor's"), "{e:?}");
    // `seb request` pointed at the executor as its broker refuses to talk to it.
    let out = seb_request(&s, &s.exec.url, &json!({"name": "x.txt", "text": "x"}), &[]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("carries sebRole"), "{stderr}");

    // An executor certified by a site CA (delegated the executor role) is reachable from
    // `seb request --execute`.
    drop(s.exec);
    for old in ["executor.key", "executor.csr", "executor.pem"] {
        std::fs::remove_file(s.hsm.path(old)).unwrap();
    }
    s.hsm
        .issue_ca("site", "CN=site CA", &["--roles", "executor"]);
    s.hsm.issue(
        "executor",
        "CN=site executor",
        "executor",
        &["--issuer", "site", "--tls-name", "127.0.0.1"],
    );
    let (exec, out) = Executor::demo_write(&s.hsm, &s.broker);
    let s = Setup { exec, out, ..s };
    let done = request_and_execute(&s, &json!({"name": "site.txt", "text": "from the site"}));
    common::assert_success(&done, "seb request --execute through a site CA's executor");
    assert_eq!(
        std::fs::read_to_string(s.out.join("site.txt")).unwrap(),
        "from the site"
    );
}

#[test]
fn a_renewed_approver_is_honoured_once_added_to_the_approvers_file_without_a_restart() {
    // Renewal keeps the key but makes a new certificate (a new thumbprint). An executor that
    // read its approvers file once would refuse every approved token of a renewed approver
    // until restarted; it reads the file again when a token names an approver it lacks.
    let hsm = Hsm::initialised();
    common::exec::identity(&hsm);
    let agent = hsm.agent(
        "agent",
        r#"
[[grant]]
operation = "demo.write"
resource = "demo/files"
max_ttl = "60s"
params_any = true
approval = { required = 1, group = "sre-leads" }
"#,
    );
    let alice = hsm.identity("alice", "CN=alice", "approver", &["--group", "sre-leads"]);
    let broker = Broker::start(&hsm);
    std::fs::copy(&alice.cert, hsm.path("approvers.pem")).unwrap();
    let out = hsm.path("demo-output");
    let config = common::exec::config(
        &hsm,
        &broker,
        &out,
        r#"approvers = "approvers.pem""#,
        &["demo/files"],
    );
    let exec = Executor::start(&hsm, &config);

    let serial = seb::cert::Certificate::parse_pem_chain(&std::fs::read(&alice.cert).unwrap())
        .unwrap()[0]
        .serial_hex();
    let renewed = hsm.path("alice-renewed.pem");
    hsm.seb_ok(&[
        "cert",
        "renew",
        "--serial",
        &serial,
        "--out",
        renewed.to_str().unwrap(),
    ]);

    let params = json!({"name": "approved.txt", "text": "approved by a renewed approver"});
    let tls = hsm.tls(&agent, true);
    let rt = common::runtime();
    let body = json!({"operation": "demo.write", "resource": "demo/files", "params": params});
    let asked = rt.block_on(async {
        let mut c = seb::client::Client::connect(&broker.url, &tls)
            .await
            .unwrap();
        c.post_json("/v1/executions", &body).await.unwrap()
    });
    assert_eq!(asked.status, 202, "{}", asked.text);
    let id = asked.body["request_id"].as_str().unwrap().to_owned();
    let approved = common::seb(
        &[
            "approve",
            "--broker",
            &broker.url,
            "--ca",
            hsm.trust("root.pem").to_str().unwrap(),
            "--cert",
            renewed.to_str().unwrap(),
            "--key",
            alice.key.to_str().unwrap(),
            &id,
        ],
        hsm.dir.path(),
    );
    common::assert_success(&approved, "seb approve with the renewed certificate");
    let token = rt.block_on(async {
        let mut c = seb::client::Client::connect(&broker.url, &tls)
            .await
            .unwrap();
        let r = c
            .send("GET", &format!("/v1/executions/{id}"), None)
            .await
            .unwrap();
        assert_eq!(r.body["status"], "granted", "{}", r.text);
        r.body["token"].as_str().unwrap().to_owned()
    });
    let present = || {
        rt.block_on(async {
            let mut c = seb::client::Client::connect(&exec.url, &tls.to_executors())
                .await
                .unwrap();
            c.post_json("/v1/run", &json!({"token": token, "params": params}))
                .await
                .unwrap()
        })
    };
    // Not in the file yet: refused offline, so the token is not spent.
    let r = present();
    assert_eq!(
        (r.status, code(&r.body)),
        (403, "unknown_approver"),
        "{}",
        r.text
    );
    // The operator adds the renewed certificate; the same token now runs, once.
    let mut bundle = std::fs::read(&alice.cert).unwrap();
    bundle.extend(std::fs::read(&renewed).unwrap());
    std::fs::write(hsm.path("approvers.pem"), bundle).unwrap();
    let r = present();
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(
        std::fs::read_to_string(out.join("approved.txt")).unwrap(),
        "approved by a renewed approver"
    );
}

/// Sends `head` on a new connection to the executor and reads the answer until the
/// connection closes (or the first answer's body has arrived); returns it and how long it took.
fn raw_exchange(s: &Setup, head: &str) -> (String, std::time::Duration) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let tls = s.hsm.tls(&s.agent, true).to_executors();
    common::runtime().block_on(async {
        let (mut stream, authority) = seb::client::connect_tls(&s.exec.url, &tls).await.unwrap();
        let started = std::time::Instant::now();
        let head = head.replace("{authority}", &authority);
        stream.write_all(head.as_bytes()).await.unwrap();
        let mut answer = Vec::new();
        let mut chunk = [0u8; 4096];
        while !String::from_utf8_lossy(&answer).contains("}}") {
            let read =
                tokio::time::timeout(std::time::Duration::from_secs(30), stream.read(&mut chunk));
            let n = read.await.expect("the executor answers").unwrap_or(0);
            if n == 0 {
                break;
            }
            answer.extend_from_slice(&chunk[..n]);
        }
        (
            String::from_utf8_lossy(&answer).into_owned(),
            started.elapsed(),
        )
    })
}

#[test]
fn a_stalled_or_oversized_body_does_not_hold_an_executor_connection() {
    // Before, a body announced and never sent held its connection with no answer for good,
    // and 256 of them locked every agent out of the executor.
    let s = setup();
    let (answer, waited) = raw_exchange(
        &s,
        "POST /v1/run HTTP/1.1\r\nHost: {authority}\r\nContent-Type: application/json\r\n\
         Content-Length: 1000\r\n\r\n{",
    );
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("\"request_timeout\""), "{answer}");
    assert!(waited < std::time::Duration::from_secs(25), "{waited:?}");
    let (answer, waited) = raw_exchange(
        &s,
        "POST /v1/run HTTP/1.1\r\nHost: {authority}\r\nContent-Type: application/json\r\n\
         Content-Length: 100000000\r\nExpect: 100-continue\r\n\r\n",
    );
    assert!(
        answer.starts_with("HTTP/1.1 413"),
        "a 413 at once, no 100: {answer}"
    );
    assert!(answer.contains("\"body_too_large\""), "{answer}");
    assert!(waited < std::time::Duration::from_secs(5), "{waited:?}");
    // Another method on its one route: 405 with the JSON shape of every other refusal.
    let (answer, _) = raw_exchange(&s, "GET /v1/run HTTP/1.1\r\nHost: {authority}\r\n\r\n");
    assert!(answer.starts_with("HTTP/1.1 405"), "{answer}");
    assert!(
        answer.to_ascii_lowercase().contains("allow: post"),
        "{answer}"
    );
    assert!(answer.contains("\"method_not_allowed\""), "{answer}");
    // A body not declared JSON (what a web page can make a browser send): 415.
    let (answer, _) = raw_exchange(
        &s,
        "POST /v1/run HTTP/1.1\r\nHost: {authority}\r\nContent-Type: text/plain\r\n\
         Content-Length: 2\r\n\r\n{}",
    );
    assert!(answer.starts_with("HTTP/1.1 415"), "{answer}");
    assert!(answer.contains("\"unsupported_media_type\""), "{answer}");
    // Another path: the broker's code for it.
    let (answer, _) = raw_exchange(&s, "GET /v1/grants HTTP/1.1\r\nHost: {authority}\r\n\r\n");
    assert!(answer.starts_with("HTTP/1.1 404"), "{answer}");
    assert!(answer.contains("\"not_found\""), "{answer}");
    // Bodies: JSON another parser could read differently is malformed_json, as at the broker;
    // the members by position are not the object the API documents, and no message names
    // the executor's own types.
    for (body, expected) in [
        (
            r#"{"token":"a.b.c","params":{},"params":{}}"#,
            "malformed_json",
        ),
        ("{", "malformed_json"),
        (r#"["a.b.c",{}]"#, "invalid_request"),
        ("null", "invalid_request"),
        (r#"{"token":"a.b.c"}"#, "invalid_request"),
    ] {
        let (answer, _) = raw_exchange(
            &s,
            &format!(
                "POST /v1/run HTTP/1.1\r\nHost: {{authority}}\r\nContent-Type: application/json\r\n\
                 Content-Length: {}\r\n\r\n{body}",
                body.len()
            ),
        );
        assert!(answer.starts_with("HTTP/1.1 400"), "{body}: {answer}");
        assert!(
            answer.contains(&format!("\"{expected}\"")),
            "{body}: {answer}"
        );
        assert!(!answer.contains("struct"), "{body}: {answer}");
    }
    // And the executor goes on serving.
    let params = json!({"name": "after-stall", "text": "ok"});
    let token = token(&s, &params);
    let (status, body) = run(&s, &s.agent, &token, &params);
    assert_eq!(status, 200, "{body}");
}

#[test]
fn the_broker_records_only_outcomes_that_describe_the_token() {
    // A receipt signed by the executor that redeemed the token, but for another operation, a
    // made-up digest or impossible times, used to be recorded (and logged) as evidence.
    use seb::receipt::{ReceiptBody, RECEIPT_TYPE};
    let s = setup();
    let params = json!({"name": "report.txt", "text": "ok"});
    let (status, body) = request(&s, &s.agent, &params);
    assert_eq!(status, 201, "{body}");
    let (token, request_id) = (
        body["token"].as_str().unwrap().to_owned(),
        body["request_id"].as_str().unwrap().to_owned(),
    );
    let tls = s.hsm.tls(&s.executor, true);
    let post = |path: &str, body: &Value| {
        common::runtime().block_on(async {
            let mut c = seb::client::Client::connect(&s.broker.url, &tls)
                .await
                .unwrap();
            c.post_json(path, body).await.unwrap()
        })
    };
    let redeemed = post("/v1/tokens/redeem", &json!({ "token": token }));
    assert_eq!(redeemed.status, 200, "{}", redeemed.text);
    let key = seb::approval::ApproverKey::from_pkcs8_pem(
        &std::fs::read_to_string(&s.executor.key).unwrap(),
    )
    .unwrap();
    let cert = seb::cert::Certificate::parse(&std::fs::read(&s.executor.cert).unwrap()).unwrap();
    let now = seb::time::unix_millis(std::time::SystemTime::now());
    let honest = ReceiptBody {
        typ: RECEIPT_TYPE.into(),
        jti: redeemed.body["jti"].as_str().unwrap().to_owned(),
        request_id: request_id.clone(),
        operation: "demo.write".into(),
        resource: "demo/files".into(),
        params_digest: redeemed.body["params_digest"].as_str().unwrap().to_owned(),
        exit_code: 0,
        timed_out: false,
        stdout_sha256: seb::receipt::output_digest(b""),
        stderr_sha256: seb::receipt::output_digest(b""),
        started_at_ms: now - 5,
        finished_at_ms: now,
        executor: seb::base64url::encode(&cert.thumbprint_sha256().unwrap()),
    };
    let report = |body: ReceiptBody| {
        let receipt = seb::receipt::sign(body, &key).unwrap();
        post(
            &format!("/v1/executions/{request_id}/outcome"),
            &json!({ "receipt": receipt }),
        )
    };
    let mut forged = Vec::new();
    let mut b = honest.clone();
    b.operation = "prod.dropdb".into();
    forged.push(b);
    let mut b = honest.clone();
    b.params_digest = seb::base64url::encode(&[0u8; 48]);
    forged.push(b);
    let mut b = honest.clone();
    b.stdout_sha256 = "x".into();
    forged.push(b);
    let mut b = honest.clone();
    (b.started_at_ms, b.finished_at_ms) = (4_102_444_800_000, 4_102_444_800_001);
    forged.push(b);
    let mut b = honest.clone();
    b.finished_at_ms = 1;
    forged.push(b);
    for body in forged {
        let r = report(body.clone());
        assert_eq!(r.status, 400, "{body:?}: {}", r.text);
        assert_eq!(r.body["error"]["code"], "invalid_receipt", "{}", r.text);
    }
    let r = report(honest);
    assert_eq!(r.status, 201, "{}", r.text);
    // Each refused report is in the log with its code, the recorded one without.
    let codes: Vec<Option<String>> = s
        .hsm
        .audit_entries_eventually("outcome_reported", 6)
        .iter()
        .map(|e| e["code"].as_str().map(str::to_owned))
        .collect();
    assert_eq!(
        codes
            .iter()
            .filter(|c| c.as_deref() == Some("invalid_receipt"))
            .count(),
        5,
        "{codes:?}"
    );
    assert_eq!(codes.iter().filter(|c| c.is_none()).count(), 1, "{codes:?}");

    // A receipt by position is not the object the API documents; no message names types.
    for shape in [json!([]), json!({"body": [], "signature": "AA"}), json!(1)] {
        let r = post(
            &format!("/v1/executions/{request_id}/outcome"),
            &json!({ "receipt": shape }),
        );
        assert_eq!(r.status, 400, "{shape}: {}", r.text);
        assert!(!r.text.contains("struct"), "{shape}: {}", r.text);
    }
    // Another role reporting is refused before the handler, and its entry names the request
    // from the path.
    let tls = s.hsm.tls(&s.agent, false);
    let r = common::runtime().block_on(async {
        let mut c = seb::client::Client::connect(&s.broker.url, &tls)
            .await
            .unwrap();
        c.post_json(
            &format!("/v1/executions/{request_id}/outcome"),
            &json!({"receipt": {}}),
        )
        .await
        .unwrap()
    });
    assert_eq!(r.body["error"]["code"], "wrong_role", "{}", r.text);
    let entries = s.hsm.audit_entries_eventually("outcome_reported", 7);
    let refused = entries
        .iter()
        .find(|e| e["code"] == "wrong_role")
        .expect("an entry for the agent's report");
    assert_eq!(refused["request_id"], request_id.as_str(), "{refused}");
}

/// An agent whose grant allows `demo.slow` (`/bin/sleep 2` at the executor), a `seb exec` with
/// that action that reaches the broker at `broker_url` (the broker's own URL, or a proxy's), and
/// a token for it: (executor, the agent's TLS, token, its jti, the parameters).
fn slow_run(
    hsm: &Hsm,
    broker: &Broker,
    broker_url: &str,
) -> (Executor, seb::client::ClientTls, String, Value, Value) {
    const SLOW: &str = r#"
[[grant]]
operation = "demo.slow"
resource = "demo/slow"
max_ttl = "60s"
params.seconds = { one_of = ["2"] }
"#;
    common::exec::identity(hsm);
    let agent = hsm.agent("agent", SLOW);
    let config = common::exec::with_actions(
        hsm,
        broker,
        "slow-executor.toml",
        "",
        r#"
[[action]]
operation = "demo.slow"
resource = "demo/slow"
argv = ["/bin/sleep", "{seconds}"]
timeout = "10s"
"#,
    );
    let text = std::fs::read_to_string(&config).unwrap();
    std::fs::write(&config, text.replace(&broker.url, broker_url)).unwrap();
    let exec = Executor::start(hsm, &config);
    let tls = hsm.tls(&agent, true);
    let params = json!({"seconds": "2"});
    let token = granted_token(
        broker,
        &tls,
        &json!({"operation": "demo.slow", "resource": "demo/slow", "params": params}),
    );
    let claims: Value =
        serde_json::from_slice(&seb::base64url::decode(token.split('.').nth(1).unwrap()).unwrap())
            .unwrap();
    (exec, tls, token, claims["jti"].clone(), params)
}

/// The token the broker grants `body` at once (201) for the agent behind `tls`.
fn granted_token(broker: &Broker, tls: &seb::client::ClientTls, body: &Value) -> String {
    let granted = common::runtime().block_on(async {
        let mut c = seb::client::Client::connect(&broker.url, tls)
            .await
            .unwrap();
        c.post_json("/v1/executions", body).await.unwrap()
    });
    assert_eq!(granted.status, 201, "{}", granted.text);
    granted.body["token"].as_str().unwrap().to_owned()
}

/// Once a token is redeemed, the run goes on to its receipt and outcome report even when the
/// agent closes its connection half-way (outside review: the handler was dropped with the
/// connection, so the action ran but the broker's log showed only the redemption).
#[test]
fn a_run_goes_on_to_its_outcome_when_the_agent_hangs_up() {
    use tokio::io::AsyncWriteExt;
    let hsm = Hsm::initialised();
    let broker = Broker::start(&hsm);
    let (exec, tls, token, jti, params) = slow_run(&hsm, &broker, &broker.url);
    common::runtime().block_on(async {
        let (mut stream, authority) = seb::client::connect_tls(&exec.url, &tls.to_executors())
            .await
            .unwrap();
        let body = json!({"token": token, "params": params}).to_string();
        let head = format!(
            "POST /v1/run HTTP/1.1\r\nHost: {authority}\r\nContent-Type: application/json\r\n\
             Content-Length: {}\r\n\r\n{body}",
            body.len()
        );
        stream.write_all(head.as_bytes()).await.unwrap();
        // Redeemed by now, the action still sleeping: hang up.
        tokio::time::sleep(std::time::Duration::from_millis(800)).await;
        drop(stream);
    });
    let redeemed = hsm.audit_entries_eventually("token_redeemed", 1);
    assert!(redeemed.iter().any(|e| e["jti"] == jti), "{redeemed:?}");
    let reported = hsm.audit_entries_eventually("outcome_reported", 1);
    let outcome = reported
        .iter()
        .find(|e| e["jti"] == jti)
        .unwrap_or_else(|| panic!("no outcome for {jti}: {reported:?}"));
    assert_eq!(outcome["code"], Value::Null, "{outcome}");
    drop(exec);
}

/// A TCP forwarder to `target` on a free loopback port; while `down` is set it accepts and
/// closes every connection at once (a broker that cannot be reached).
fn flaky_proxy(target: std::net::SocketAddr, down: Arc<AtomicBool>) -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for client in listener.incoming().flatten() {
            if down.load(Ordering::SeqCst) {
                continue; // dropped: closed at once
            }
            let Ok(upstream) = std::net::TcpStream::connect(target) else {
                continue;
            };
            let (mut c_read, mut u_write) =
                (client.try_clone().unwrap(), upstream.try_clone().unwrap());
            let (mut u_read, mut c_write) = (upstream, client);
            std::thread::spawn(move || {
                let _ = std::io::copy(&mut c_read, &mut u_write);
                let _ = u_write.shutdown(std::net::Shutdown::Write);
            });
            std::thread::spawn(move || {
                let _ = std::io::copy(&mut u_read, &mut c_write);
                let _ = c_write.shutdown(std::net::Shutdown::Write);
            });
        }
    });
    port
}

/// A [`slow_run`] whose executor reaches the broker through a [`flaky_proxy`], presented by
/// the agent in a thread of its own: the switch that cuts the broker off, the agent's answer,
/// the token id and the executor.
fn slow_run_behind_a_switch(
    hsm: &Hsm,
    broker: &Broker,
) -> (
    Arc<AtomicBool>,
    std::thread::JoinHandle<seb::client::ApiResponse>,
    Value,
    Executor,
) {
    let target: std::net::SocketAddr = broker.url.trim_start_matches("https://").parse().unwrap();
    let down = Arc::new(AtomicBool::new(false));
    let proxy = flaky_proxy(target, down.clone());
    let (exec, tls, token, jti, params) =
        slow_run(hsm, broker, &format!("https://127.0.0.1:{proxy}"));
    let answer = std::thread::spawn({
        let (url, tls) = (exec.url.clone(), tls.to_executors());
        move || {
            common::runtime().block_on(async {
                let mut c = seb::client::Client::connect(&url, &tls).await.unwrap();
                c.post_json("/v1/run", &json!({"token": token, "params": params}))
                    .await
                    .unwrap()
            })
        }
    });
    (down, answer, jti, exec)
}

/// The broker out of reach when the action ends: the executor reports the outcome again until
/// the broker takes it, and the agent hears `outcome_recorded: true`.
#[test]
fn an_outcome_the_broker_missed_is_reported_again() {
    let hsm = Hsm::initialised();
    let broker = Broker::start(&hsm);
    let (down, answer, jti, exec) = slow_run_behind_a_switch(&hsm, &broker);
    // Once the token is redeemed (through the proxy), the broker is out of reach until the
    // action (2 s) has ended and the first report has failed.
    let redeemed = hsm.audit_entries_eventually("token_redeemed", 1);
    down.store(true, Ordering::SeqCst);
    let since = std::time::Instant::now();
    assert!(redeemed.iter().any(|e| e["jti"] == jti), "{redeemed:?}");
    std::thread::sleep(std::time::Duration::from_millis(2600).saturating_sub(since.elapsed()));
    down.store(false, Ordering::SeqCst);
    let answer = answer.join().unwrap();
    assert_eq!(answer.status, 200, "{}", answer.text);
    assert_eq!(answer.body["outcome_recorded"], true, "{}", answer.text);
    let reported = hsm.audit_entries_eventually("outcome_reported", 1);
    assert!(reported.iter().any(|e| e["jti"] == jti), "{reported:?}");
    drop(exec);
}

/// The broker out of reach for longer than the agent's answer waits: the agent hears
/// `outcome_recorded: false`, and the executor goes on reporting until the broker takes it
/// (outside review: the receipt was lost for good, a redemption without an outcome).
#[test]
fn an_outcome_the_broker_missed_for_long_is_reported_once_it_is_back() {
    let hsm = Hsm::initialised();
    let broker = Broker::start(&hsm);
    let (down, answer, jti, exec) = slow_run_behind_a_switch(&hsm, &broker);
    let redeemed = hsm.audit_entries_eventually("token_redeemed", 1);
    down.store(true, Ordering::SeqCst);
    assert!(redeemed.iter().any(|e| e["jti"] == jti), "{redeemed:?}");
    let answer = answer.join().unwrap();
    assert_eq!(answer.status, 200, "{}", answer.text);
    assert_eq!(answer.body["outcome_recorded"], false, "{}", answer.text);
    assert!(hsm.audit_entries("outcome_reported").is_empty());
    down.store(false, Ordering::SeqCst);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let reported = loop {
        let found = hsm.audit_entries("outcome_reported");
        if found.iter().any(|e| e["jti"] == jti) || std::time::Instant::now() > deadline {
            break found;
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
    };
    assert!(reported.iter().any(|e| e["jti"] == jti), "{reported:?}");
    drop(exec);
}

/// Outside review: an HTTP action whose upstream read the request and closed the connection
/// without answering (it may have acted) left the token redeemed with no receipt and no
/// outcome in the log. Now the failed run is signed and reported like any outcome: `exit_code`
/// -2 (outcome unknown), and the agent's answer carries the receipt beside `action_failed`.
#[test]
fn an_action_that_fails_after_redemption_leaves_a_receipt_and_an_outcome() {
    use std::io::Read;
    const CALL: &str = r#"
[[grant]]
operation = "demo.call"
resource = "demo/upstream"
max_ttl = "60s"
params.item = { prefix = "t-" }
"#;
    let hsm = Hsm::initialised();
    let broker = Broker::start(&hsm);
    common::exec::identity(&hsm);
    let agent = hsm.agent("agent", CALL);
    // The upstream reads the request, then hangs up without a word.
    let upstream = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = upstream.local_addr().unwrap().port();
    let (seen_tx, seen) = std::sync::mpsc::channel::<String>();
    std::thread::spawn(move || {
        for conn in upstream.incoming().flatten() {
            let mut conn = conn;
            conn.set_read_timeout(Some(std::time::Duration::from_millis(500)))
                .unwrap();
            let mut got = Vec::new();
            let mut buf = [0u8; 4096];
            while let Ok(n) = conn.read(&mut buf) {
                if n == 0 {
                    break;
                }
                got.extend_from_slice(&buf[..n]);
            }
            let _ = seen_tx.send(String::from_utf8_lossy(&got).into_owned());
        }
    });
    let config = common::exec::with_actions(
        &hsm,
        &broker,
        "http-executor.toml",
        &format!("http_allow = [\"http://127.0.0.1:{port}/\"]"),
        &format!(
            r#"
[[action]]
operation = "demo.call"
resource = "demo/upstream"
http = {{ method = "POST", url = "http://127.0.0.1:{port}/do/{{item}}" }}
timeout = "10s"
"#
        ),
    );
    let exec = Executor::start(&hsm, &config);
    let tls = hsm.tls(&agent, true);
    let params = json!({"item": "t-1000"});
    let token = granted_token(
        &broker,
        &tls,
        &json!({"operation": "demo.call", "resource": "demo/upstream", "params": params}),
    );
    let answer = common::runtime().block_on(async {
        let mut c = seb::client::Client::connect(&exec.url, &tls.to_executors())
            .await
            .unwrap();
        c.post_json("/v1/run", &json!({"token": token, "params": params}))
            .await
            .unwrap()
    });
    let request = seen
        .recv_timeout(std::time::Duration::from_secs(10))
        .unwrap();
    assert!(request.starts_with("POST /do/t-1000 "), "{request}");
    assert_eq!(answer.status, 500, "{}", answer.text);
    assert_eq!(
        answer.body["error"]["code"], "action_failed",
        "{}",
        answer.text
    );
    assert!(
        !answer.text.contains(&port.to_string()),
        "the upstream's address reached the agent: {}",
        answer.text
    );
    let receipt = &answer.body["receipt"];
    assert_eq!(receipt["body"]["exit_code"], -2, "{}", answer.text);
    assert_eq!(answer.body["outcome_recorded"], true, "{}", answer.text);
    // The receipt verifies offline, and the log has the outcome beside the redemption.
    let file = hsm.path("failed-receipt.json");
    std::fs::write(&file, serde_json::to_vec(receipt).unwrap()).unwrap();
    let out = common::seb(
        &[
            "receipt",
            "verify",
            "--receipt",
            file.to_str().unwrap(),
            "--cert",
            hsm.path("executor.pem").to_str().unwrap(),
            "--trust",
            hsm.trust("root.pem").to_str().unwrap(),
        ],
        hsm.dir.path(),
    );
    common::assert_success(&out, "seb receipt verify of the failed run's receipt");
    let jti = receipt["body"]["jti"].clone();
    let reported = hsm.audit_entries_eventually("outcome_reported", 1);
    assert!(reported.iter().any(|e| e["jti"] == jti), "{reported:?}");
    // `seb request --execute` prints the answer with its receipt and says the outcome is
    // unknown, not that the executor refused.
    let root = hsm.trust("root.pem");
    let out = common::seb(
        &[
            "request",
            "--broker",
            &broker.url,
            "--ca",
            root.to_str().unwrap(),
            "--cert",
            agent.cert.to_str().unwrap(),
            "--key",
            agent.key.to_str().unwrap(),
            "--operation",
            "demo.call",
            "--resource",
            "demo/upstream",
            "--params",
            &json!({"item": "t-2000"}).to_string(),
            "--execute",
            &exec.url,
        ],
        hsm.dir.path(),
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("its outcome is unknown"), "{stderr}");
    let printed: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(printed["receipt"]["body"]["exit_code"], -2, "{printed}");
    drop(exec);
}

/// An executor started before its broker (both started together, the broker still opening its
/// device) waits for the broker's port instead of exiting, then serves.
#[test]
fn an_executor_started_before_its_broker_waits_for_it() {
    let hsm = Hsm::initialised();
    common::exec::identity(&hsm);
    let mut broker = Broker::start(&hsm);
    let out = hsm.path("demo-output");
    let config = common::exec::config(&hsm, &broker, &out, "", &["demo/files"]);
    assert!(broker.stop(), "the broker stops cleanly");
    let started = std::thread::spawn({
        let dir = hsm.dir.path().to_owned();
        move || {
            let hsm_dir = dir;
            let log = hsm_dir.join("executor.log");
            let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_seb"))
                .args(["exec", "--config", config.to_str().unwrap()])
                .current_dir(&hsm_dir)
                .env_remove("SEB_CONFIG")
                .env("RUST_LOG", "warn")
                .stdout(std::process::Stdio::piped())
                .stderr(std::fs::File::create(&log).unwrap())
                .spawn()
                .unwrap();
            let mut first = String::new();
            let stdout = child.stdout.take().unwrap();
            std::io::BufRead::read_line(&mut std::io::BufReader::new(stdout), &mut first).unwrap();
            let _ = child.kill();
            let _ = child.wait();
            (first, std::fs::read_to_string(&log).unwrap_or_default())
        }
    });
    std::thread::sleep(std::time::Duration::from_secs(2));
    let _broker = Broker::start(&hsm);
    let (first, log) = started.join().unwrap();
    assert!(
        first.contains("https://127.0.0.1:"),
        "the executor serves once the broker is up: {first:?}\n{log}"
    );
    assert!(
        log.contains("does not accept connections yet"),
        "it said why it waited: {log}"
    );
}
