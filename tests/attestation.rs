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

    // Tampering: something unlogged is measured into PCR 23.
    let out = s
        .hsm
        .tpm_tool(&["tpm2_pcrextend", &format!("23:sha256={}", "ab".repeat(32))]);
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
    assert!(reason.contains("PCR 23"), "{reason}");
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
            .any(|(_, detail)| detail.contains("PCR 23"))
    });

    // Repair: PCR 23 is resettable; measure the logged event again.
    common::assert_success(&s.hsm.tpm_tool(&["tpm2_pcrreset", "23"]), "tpm2_pcrreset");
    common::assert_success(
        &s.hsm.tpm_tool(&[
            "tpm2_pcrextend",
            &format!("23:sha256={}", common::pcr23_event()),
        ]),
        "tpm2_pcrextend",
    );
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
