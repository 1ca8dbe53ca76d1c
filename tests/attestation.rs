//! The broker attesting its own boot state with a real (simulated) TPM, end to end: each test
//! provisions its own swtpm through `softhsm-setup/provision.sh --tpm`, measures the synthetic
//! boot, records the reference policy, enrolls the AK (credential activation against the EK
//! certified by a test EK CA) and runs the broker.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::time::{Duration, Instant, SystemTime};

use common::{runtime, Broker, Hsm, Identity};
use seb::attest::{self, AttestPolicy, Evidence, QuoteCheck, QuoteError};
use seb::cert::Certificate;
use seb::client::{ApiResponse, Client};
use serde_json::{json, Value};

struct Setup {
    hsm: Hsm,
    broker: Broker,
    agent: Identity,
    executor: Identity,
}

fn setup(tpm_backend: bool) -> Setup {
    let hsm = Hsm::provision_tpm(tpm_backend);
    hsm.seb_ok(&["init"]);
    let agent = hsm.agent("deploy-bot", common::TPM_TEST_GRANTS);
    let executor = hsm.identity("runner", "CN=runner", "executor", &[]);
    let broker = Broker::start(&hsm);
    Setup {
        hsm,
        broker,
        agent,
        executor,
    }
}

fn call(s: &Setup, who: &Identity, method: &str, path: &str, body: Option<Value>) -> ApiResponse {
    let tls = s.hsm.tls(who, true);
    runtime().block_on(async {
        let mut client = Client::connect(&s.broker.url, &tls).await.unwrap();
        client
            .send(method, path, body.map(|b| serde_json::to_vec(&b).unwrap()))
            .await
            .unwrap()
    })
}

fn request(s: &Setup) -> ApiResponse {
    call(
        s,
        &s.agent,
        "POST",
        "/v1/executions",
        Some(json!({"operation": "deploy.rollout", "resource": "prod/payments/api", "params": {}})),
    )
}

fn evidence(s: &Setup, nonce: &[u8]) -> Evidence {
    let r = call(
        s,
        &s.executor,
        "GET",
        &format!("/v1/attestation?nonce={}", hex::encode(nonce)),
        None,
    );
    assert_eq!(r.status, 200, "{}", r.text);
    serde_json::from_str(&r.text).unwrap()
}

fn check(s: &Setup, e: &Evidence, nonce: &[u8]) -> Result<attest::VerifiedQuote, QuoteError> {
    let roots = vec![Certificate::parse(&std::fs::read(s.hsm.trust("root.pem")).unwrap()).unwrap()];
    let policy = AttestPolicy::load(&s.hsm.path("attest-policy.toml")).unwrap();
    attest::verify_evidence(
        e,
        &QuoteCheck {
            nonce,
            roots: &roots,
            policy: &policy,
            now: SystemTime::now(),
        },
    )
}

fn attest_verify(s: &Setup) -> std::process::Output {
    s.hsm.seb(&[
        "attest",
        "verify",
        "--broker",
        &s.broker.url,
        "--trust",
        s.hsm.trust("root.pem").to_str().unwrap(),
        "--policy",
        s.hsm.path("attest-policy.toml").to_str().unwrap(),
        "--cert",
        s.executor.cert.to_str().unwrap(),
        "--key",
        s.executor.key.to_str().unwrap(),
    ])
}

/// Polls `f` until it returns true (the self-check runs every 5 s).
fn eventually(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        if f() {
            return;
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    panic!("timed out waiting for: {what}");
}

fn claims_of(token: &str) -> Value {
    let part = token.split('.').nth(1).unwrap();
    serde_json::from_slice(&seb::base64url::decode(part).unwrap()).unwrap()
}

#[test]
fn good_quote_verifies_tampering_stops_issuance_and_repair_resumes_it() {
    let s = setup(false);
    // A relying party checks the broker.
    let out = attest_verify(&s);
    common::assert_success(&out, "seb attest verify");
    assert!(String::from_utf8_lossy(&out.stdout).contains("attestation OK"));

    // Tokens carry the self-attestation.
    let r = request(&s);
    assert_eq!(r.status, 201, "{}", r.text);
    let claims = claims_of(r.body["token"].as_str().unwrap());
    assert!(
        claims["att"]["pcr_digest"].as_str().unwrap().len() > 40,
        "{claims}"
    );
    assert!(claims["att"]["time"].as_u64().unwrap() > 0);

    // Tampering: something unlogged is measured into the broker image PCR.
    let (image_pcr, _) = common::broker_image_event();
    let pcr_name = format!("PCR {image_pcr}");
    let out = s.hsm.tpm_tool(&[
        "tpm2_pcrextend",
        &format!("{image_pcr}:sha256={}", "ab".repeat(32)),
    ]);
    common::assert_success(&out, "tpm2_pcrextend");
    eventually("issuance stops", || {
        let r = request(&s);
        r.status == 503 && r.body["error"]["code"] == "attestation_failed"
    });
    let health = call(&s, &s.executor, "GET", "/healthz", None);
    assert_eq!(health.status, 503);
    let reason = health.body["checks"]["attestation"]["reason"]
        .as_str()
        .unwrap();
    assert!(reason.contains(&pcr_name), "{reason}");
    let out = attest_verify(&s);
    common::assert_clean_failure(&out, "event_log_mismatch");
    // The failure is recorded durably in the broker's store, with its reason.
    let events = |kind: &str| {
        use seb::store::Store;
        seb::store::sqlite::SqliteStore::open(&s.hsm.path("state"))
            .unwrap()
            .events(kind)
            .unwrap()
    };
    eventually("the failure is recorded", || {
        events("attestation_failed")
            .iter()
            .any(|(_, detail)| detail.contains(&pcr_name))
    });

    // Repair: the PCR cannot be reset, so the host reboots (TPM2_Startup(CLEAR)) into the
    // measured boot again. The broker keeps running and sees the TPM come back.
    s.hsm.reboot_tpm();
    eventually("issuance resumes", || {
        let r = request(&s);
        if r.status != 201 {
            eprintln!("{}", r.text);
        }
        r.status == 201
    });
    common::assert_success(&attest_verify(&s), "seb attest verify after repair");
    eventually("the recovery is recorded", || {
        !events("attestation_restored").is_empty()
    });

    // TPM unreachable: fail closed.
    common::assert_success(
        &std::process::Command::new("bash")
            .arg(s.hsm.path("stop.sh"))
            .output()
            .unwrap(),
        "stop.sh",
    );
    eventually("issuance stops without the TPM", || {
        let r = request(&s);
        r.status == 503 && r.body["error"]["code"] == "attestation_failed"
    });
    let r = call(
        &s,
        &s.executor,
        "GET",
        "/v1/attestation?nonce=00112233445566778899",
        None,
    );
    assert_eq!(r.status, 503, "{}", r.text);
    assert_eq!(r.body["error"]["code"], "attestation_failed");
    assert!(
        !r.text.contains("TSS") && !r.text.contains("0x"),
        "{}",
        r.text
    );
}

/// `seb serve` must refuse to start: runs it with a deadline and returns its output.
fn serve_refused(hsm: &Hsm) -> std::process::Output {
    use std::process::{Command, Stdio};
    let mut child = Command::new(env!("CARGO_BIN_EXE_seb"))
        .args(["--config", hsm.config().to_str().unwrap(), "serve"])
        .current_dir(hsm.dir.path())
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            let out = child.wait_with_output().unwrap();
            panic!(
                "seb serve started with a policy it must refuse:\n{}",
                String::from_utf8_lossy(&out.stdout)
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    child.wait_with_output().unwrap()
}

#[test]
fn record_serve_and_verify_refuse_a_policy_with_a_resettable_pcr() {
    // PCRs 16 and 23 are reset from locality 0 by any program that reaches the TPM: a replaced
    // broker binary resets them and extends what the policy expects. No command takes them.
    let hsm = Hsm::provision_tpm(false);
    hsm.seb_ok(&["init"]);
    for pcr in ["16", "23"] {
        let needle = format!("PCR {pcr} ");
        // Recording.
        let out = hsm.seb(&[
            "attest",
            "record",
            "--out",
            "resettable-policy.toml",
            "--pcrs",
            &format!("0,1,2,3,4,5,6,7,{pcr}"),
        ]);
        common::assert_clean_failure(&out, "resettable_pcr");
        common::assert_clean_failure(&out, &needle);
        assert!(!hsm.path("resettable-policy.toml").exists());

        // A policy written by hand (or by an older seb).
        let zero = "00".repeat(32);
        std::fs::write(
            hsm.path("resettable-policy.toml"),
            format!(
                "version = 1\npcr_bank = \"sha256\"\npcrs = [0, {pcr}]\n[expected_pcrs]\n0 = \"{zero}\"\n{pcr} = \"{zero}\"\n"
            ),
        )
        .unwrap();
        // Verifying: refused before any broker is asked.
        let out = hsm.seb(&[
            "attest",
            "verify",
            "--broker",
            "https://127.0.0.1:1",
            "--trust",
            hsm.trust("root.pem").to_str().unwrap(),
            "--policy",
            hsm.path("resettable-policy.toml").to_str().unwrap(),
            "--cert",
            "unused.pem",
            "--key",
            "unused.key",
        ]);
        common::assert_clean_failure(&out, "resettable_pcr");
        common::assert_clean_failure(&out, &needle);

        // Serving: the broker does not start on it.
        let config = std::fs::read_to_string(hsm.config()).unwrap();
        let pointed = config.replace(
            "policy = \"attest-policy.toml\"",
            "policy = \"resettable-policy.toml\"",
        );
        assert_ne!(config, pointed);
        std::fs::write(hsm.config(), &pointed).unwrap();
        let out = serve_refused(&hsm);
        common::assert_clean_failure(&out, "resettable_pcr");
        common::assert_clean_failure(&out, &needle);
        assert!(!String::from_utf8_lossy(&out.stdout).contains("listening"));
        std::fs::write(hsm.config(), &config).unwrap();
        std::fs::remove_file(hsm.path("resettable-policy.toml")).unwrap();
    }
    // The recorded policy quotes no resettable PCR.
    let policy = AttestPolicy::load(&hsm.path("attest-policy.toml")).unwrap();
    assert!(policy.pcrs.iter().all(|p| *p < 16), "{:?}", policy.pcrs);
}

#[test]
fn a_replaced_broker_cannot_reset_the_broker_image_pcr() {
    // The attack the resettable PCR allowed: a replaced broker binary is measured (the
    // measurement differs), then resets the PCR and extends the expected digest, and passes
    // `seb attest verify`. The broker image PCR cannot be reset.
    let s = setup(false);
    common::assert_success(&attest_verify(&s), "seb attest verify");
    let (image_pcr, image_digest) = common::broker_image_event();
    let pcr = image_pcr.to_string();
    let out = s.hsm.tpm_tool(&[
        "tpm2_pcrextend",
        &format!("{pcr}:sha256={}", "ee".repeat(32)),
    ]);
    common::assert_success(&out, "tpm2_pcrextend");
    let out = s.hsm.tpm_tool(&["tpm2_pcrreset", &pcr]);
    assert!(
        !out.status.success(),
        "the TPM reset PCR {pcr} from locality 0"
    );
    let out = s
        .hsm
        .tpm_tool(&["tpm2_pcrextend", &format!("{pcr}:sha256={image_digest}")]);
    common::assert_success(&out, "tpm2_pcrextend");
    common::assert_clean_failure(&attest_verify(&s), "event_log_mismatch");
    assert!(
        image_pcr < 16,
        "the broker image is measured into PCR {image_pcr}"
    );
}

#[test]
fn forged_replayed_and_foreign_evidence_is_rejected() {
    let s = setup(false);
    let nonce = b"relying-party-nonce-1";
    let good = evidence(&s, nonce);
    check(&s, &good, nonce).unwrap();

    // Replayed quote: fresh nonce, old evidence.
    assert_eq!(
        check(&s, &good, b"relying-party-nonce-2").unwrap_err(),
        QuoteError::NonceMismatch
    );
    // Tampered quote body.
    let mut e = good.clone();
    let mut q = seb::base64url::decode(&e.quote).unwrap();
    let n = q.len();
    q[n - 1] ^= 0x01;
    e.quote = seb::base64url::encode(&q);
    assert_eq!(check(&s, &e, nonce).unwrap_err(), QuoteError::BadSignature);
    // Event log that does not replay.
    let mut e = good.clone();
    e.event_log.events.retain(|ev| ev.pcr != 4);
    assert!(matches!(
        check(&s, &e, nonce).unwrap_err(),
        QuoteError::EventLogMismatch { pcr: 4, .. }
    ));
    // Bad nonces are refused before the TPM is asked.
    for bad in ["00", "zz", &"00".repeat(65)] {
        let r = call(
            &s,
            &s.executor,
            "GET",
            &format!("/v1/attestation?nonce={bad}"),
            None,
        );
        assert_eq!(r.status, 400, "{}", r.text);
        assert_eq!(r.body["error"]["code"], "invalid_nonce");
    }

    // Another broker with its own TPM and root.
    let other = setup(false);
    let foreign = evidence(&other, nonce);
    // Its AK is not certified by our root.
    assert!(matches!(
        check(&s, &foreign, nonce).unwrap_err(),
        QuoteError::AkNotCertified { .. }
    ));
    // Its TPM's quote presented under our AK certificate: signed by another key.
    let mut e = foreign.clone();
    e.ak_chain = good.ak_chain.clone();
    assert_eq!(check(&s, &e, nonce).unwrap_err(), QuoteError::BadSignature);
}

#[test]
fn broker_with_keys_in_the_tpm_issues_attested_tokens() {
    let s = setup(true);
    let keys = s.hsm.seb_ok(&["keys"]);
    assert!(keys.contains("tpm swtpm:"), "{keys}");
    assert_eq!(keys.matches(" extractable=false").count(), 4, "{keys}");
    let r = request(&s);
    assert_eq!(r.status, 201, "{}", r.text);
    let token = r.body["token"].as_str().unwrap();
    assert!(claims_of(token)["att"].is_object());
    // The token verifies offline with only the root.
    let token_file = s.hsm.path("token.jwt");
    std::fs::write(&token_file, token).unwrap();
    let trust = s.hsm.path("trust-bundle.pem");
    let bundle: String = ["root.pem", "token.pem"]
        .iter()
        .map(|n| std::fs::read_to_string(s.hsm.trust(n)).unwrap())
        .collect();
    std::fs::write(&trust, bundle).unwrap();
    let out = s.hsm.seb(&[
        "token",
        "verify",
        "--trust",
        trust.to_str().unwrap(),
        "--token",
        token_file.to_str().unwrap(),
    ]);
    common::assert_success(&out, "seb token verify");
}

/// Each quote holds the TPM. One certificate asking for quotes as fast as it can is limited on
/// its own (2/s, burst 5) and cannot use up the turns of other callers.
#[test]
fn one_busy_caller_cannot_take_every_attestation_turn() {
    let s = setup(false);
    let other = s.hsm.identity("auditor", "CN=auditor", "executor", &[]);
    let path = format!("/v1/attestation?nonce={}", hex::encode([9u8; 16]));
    let (served, limited) = runtime().block_on(async {
        let tls = s.hsm.tls(&s.agent, true);
        let mut c = Client::connect(&s.broker.url, &tls).await.unwrap();
        let (mut served, mut limited) = (0, 0);
        for _ in 0..60 {
            let r = c.send("GET", &path, None).await.unwrap();
            match r.status {
                200 => served += 1,
                429 => limited += 1,
                other => panic!("unexpected {other}: {}", r.text),
            }
        }
        (served, limited)
    });
    assert!(
        limited > 0,
        "the busy caller was never limited ({served} served)"
    );
    assert!(
        served < 20,
        "one certificate got {served} quotes in a burst"
    );
    let r = call(&s, &other, "GET", &path, None);
    assert_eq!(
        r.status, 200,
        "another caller still gets its quote: {}",
        r.text
    );
}
