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

/// Evidence for `nonce` fetched from `url` (the broker, or something in front of it), with the
/// TLS server certificate of the session it came over.
fn evidence_at(s: &Setup, url: &str, nonce: &[u8]) -> (Evidence, Vec<u8>) {
    let tls = s.hsm.tls(&s.executor, false);
    let (r, certificate) = runtime().block_on(async {
        let mut client = Client::connect(url, &tls).await.unwrap();
        let r = client
            .send(
                "GET",
                &format!("/v1/attestation?nonce={}", hex::encode(nonce)),
                None,
            )
            .await
            .unwrap();
        (r, client.server_certificate().to_vec())
    });
    assert_eq!(r.status, 200, "{}", r.text);
    (serde_json::from_str(&r.text).unwrap(), certificate)
}

fn evidence(s: &Setup, nonce: &[u8]) -> (Evidence, Vec<u8>) {
    evidence_at(s, &s.broker.url, nonce)
}

/// Verifies `e` as a relying party whose TLS session had the server certificate `session`.
fn check(
    s: &Setup,
    e: &Evidence,
    nonce: &[u8],
    session: &[u8],
) -> Result<attest::VerifiedQuote, QuoteError> {
    let roots = vec![Certificate::parse(&std::fs::read(s.hsm.trust("root.pem")).unwrap()).unwrap()];
    let policy = AttestPolicy::load(&s.hsm.path("attest-policy.toml")).unwrap();
    attest::verify_evidence(
        e,
        &QuoteCheck {
            nonce,
            tls_certificate: session,
            roots: &roots,
            policy: &policy,
            now: SystemTime::now(),
        },
    )
}

/// `seb attest verify --broker URL --trust ROOT --policy FILE`, exactly as issue 5 gives it: a
/// relying party with the root and the policy, and no certificate of its own.
fn attest_verify(s: &Setup) -> std::process::Output {
    attest_verify_at(s, &s.broker.url, &[])
}

/// `seb attest verify` against `url` (the broker, or something in front of it), with `more`.
fn attest_verify_at(s: &Setup, url: &str, more: &[&str]) -> std::process::Output {
    let (root, policy) = (s.hsm.trust("root.pem"), s.hsm.path("attest-policy.toml"));
    let mut args = vec![
        "attest",
        "verify",
        "--broker",
        url,
        "--trust",
        root.to_str().unwrap(),
        "--policy",
        policy.to_str().unwrap(),
    ];
    args.extend_from_slice(more);
    s.hsm.seb(&args)
}

/// `seb attest verify` presenting the executor's certificate, as a certificate holder may.
fn attest_verify_with_certificate(s: &Setup) -> std::process::Output {
    let (cert, key) = (
        s.executor.cert.to_str().unwrap(),
        s.executor.key.to_str().unwrap(),
    );
    attest_verify_at(s, &s.broker.url, &["--cert", cert, "--key", key])
}

/// A TLS relay in front of the broker: it holds a genuine TLS server certificate from the
/// broker's root, with the broker's own subject and names (another broker of the same root, or
/// anyone who obtained such a certificate), forwards each request's path to the broker over its
/// own mutual-TLS connection and serves the broker's answer as its own.
struct Relay {
    url: String,
    /// The relay's TLS server certificate (DER).
    certificate: Vec<u8>,
}

impl Relay {
    fn start(s: &Setup) -> Self {
        use p384::elliptic_curve::Generate;
        use p384::pkcs8::EncodePrivateKey;
        use rustls::pki_types::{CertificateDer, PrivateKeyDer};
        use tokio::io::{AsyncReadExt, AsyncWriteExt};

        // Its certificate, issued by the root key in the token.
        std::env::set_var("SOFTHSM2_CONF", s.hsm.softhsm_conf());
        let backend = s.hsm.backend(1);
        let signer = seb::backend::P384Signer::new(&backend, "seb-root").unwrap();
        let root = Certificate::parse(&std::fs::read(s.hsm.trust("root.pem")).unwrap()).unwrap();
        let broker_tls =
            Certificate::parse(&std::fs::read(s.hsm.trust("tls.pem")).unwrap()).unwrap();
        let key = p384::ecdsa::SigningKey::try_generate().unwrap();
        let cert = seb::ca::issue_service(
            &signer,
            &root,
            spki::SubjectPublicKeyInfoOwned::from_key(key.verifying_key()).unwrap(),
            broker_tls.tbs().subject(),
            seb::ca::CertKind::TlsServer {
                names: vec!["localhost".into(), "127.0.0.1".into()],
            },
            Duration::from_secs(3600),
            SystemTime::now(),
        )
        .unwrap();
        let certificate = cert.to_der_bytes().unwrap();
        let mut config = rustls::ServerConfig::builder_with_provider(seb::tls::provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(
                vec![CertificateDer::from(certificate.clone())],
                PrivateKeyDer::Pkcs8(key.to_pkcs8_der().unwrap().as_bytes().to_vec().into()),
            )
            .unwrap();
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        let acceptor = tokio_rustls::TlsAcceptor::from(std::sync::Arc::new(config));

        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let url = format!("https://{}", listener.local_addr().unwrap());
        let upstream = s.broker.url.clone();
        let upstream_tls = s.hsm.tls(&s.executor, false);
        std::thread::spawn(move || {
            runtime().block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener).unwrap();
                // Bounded: a few connections, then the relay stops by itself.
                for _ in 0..8 {
                    let Ok((tcp, _)) = listener.accept().await else {
                        return;
                    };
                    let Ok(mut tls) = acceptor.accept(tcp).await else {
                        continue;
                    };
                    let mut head = Vec::new();
                    let mut chunk = [0u8; 4096];
                    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                        match tls.read(&mut chunk).await {
                            Ok(0) | Err(_) => break,
                            Ok(n) => head.extend_from_slice(&chunk[..n]),
                        }
                    }
                    let head = String::from_utf8_lossy(&head).into_owned();
                    let path = head.split_whitespace().nth(1).unwrap_or("/").to_owned();
                    let mut client = Client::connect(&upstream, &upstream_tls).await.unwrap();
                    let r = client.send("GET", &path, None).await.unwrap();
                    let answer = format!(
                        "HTTP/1.1 {} relayed\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{}",
                        r.status,
                        r.text.len(),
                        r.text
                    );
                    let _ = tls.write_all(answer.as_bytes()).await;
                    let _ = tls.shutdown().await;
                }
            });
        });
        Self { url, certificate }
    }
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
    let mut s = setup(false);
    // As on a host with a hardware TPM: a TPM reset under the running broker stops issuance
    // until it restarts (the default, `resume`, is what tests/reliability.rs shows).
    assert!(s.broker.stop());
    s.hsm.edit_config(
        "[attestation]\n",
        "[attestation]\non_tpm_reset = \"stop\"\n",
    );
    s.broker = Broker::start(&s.hsm);
    // A relying party checks the broker, with no certificate of its own or with one.
    for out in [attest_verify(&s), attest_verify_with_certificate(&s)] {
        common::assert_success(&out, "seb attest verify");
        assert!(String::from_utf8_lossy(&out.stdout).contains("attestation OK"));
    }
    // The trust bundle carries the attestation key's certificate (ARCHITECTURE §7).
    let bundle = call(&s, &s.agent, "GET", "/v1/trust", None);
    let ak = std::fs::read_to_string(s.hsm.trust("ak.pem")).unwrap();
    assert!(bundle.text.contains(ak.trim()), "{}", bundle.text);
    // ...which openssl takes as issued by the root.
    let (ok, text) = common::openssl(
        &[
            "verify",
            "-CAfile",
            s.hsm.trust("root.pem").to_str().unwrap(),
            s.hsm.trust("ak.pem").to_str().unwrap(),
        ],
        s.hsm.dir.path(),
    );
    assert!(ok && text.contains(": OK"), "{text}");
    // Its expiry is watched like the service certificates'.
    let metrics = call(&s, &s.agent, "GET", "/metrics", None);
    assert!(
        metrics
            .text
            .contains("seb_certificate_not_after_seconds{certificate=\"ak\"}"),
        "{}",
        metrics.text
    );
    let check = s.hsm.seb(&["check"]);
    let text = String::from_utf8_lossy(&check.stdout);
    assert!(text.contains("the ak certificate is valid until"), "{text}");
    assert!(!text.contains("the attestation key ("), "{text}");
    // The root issued the AK certificate: recorded and audited like every other issuance, so
    // `seb cert revoke --serial` knows it.
    let ak = seb::cert::Certificate::parse(&std::fs::read(s.hsm.trust("ak.pem")).unwrap()).unwrap();
    assert!(
        s.hsm
            .audit_entries("certificate_issued")
            .iter()
            .any(|e| e["cert"]["serial"] == ak.serial_hex().as_str()),
        "no certificate_issued entry for the AK"
    );
    let listed = s.hsm.seb_ok(&["cert", "list"]);
    assert!(listed.contains(&ak.serial_hex()), "{listed}");
    // Without the AK's blob `seb serve` does not start: `seb check` says so (it said nothing).
    let blob = s.hsm.path("state/attest/ak.tpmkey");
    std::fs::rename(&blob, s.hsm.path("ak.moved")).unwrap();
    let missing = s.hsm.seb(&["check"]);
    std::fs::rename(s.hsm.path("ak.moved"), &blob).unwrap();
    assert!(!missing.status.success());
    let report = String::from_utf8_lossy(&missing.stdout);
    assert!(
        report.contains("the attestation key (") && report.contains("seb attest enroll"),
        "{report}"
    );
    // The PIN comes from a file: a host in another boot state could use the root key and
    // forge evidence (outside review), which `seb check` says.
    assert!(
        text.lines().any(
            |l| l.starts_with("warning  the PIN is not sealed to the boot state")
                && l.contains("seb seal-pin")
        ),
        "{text}"
    );

    // Tokens carry the self-attestation.
    let r = request(&s);
    assert_eq!(r.status, 201, "{}", r.text);
    let claims = claims_of(r.body["token"].as_str().unwrap());
    assert!(
        claims["att"]["pcr_digest"].as_str().unwrap().len() > 40,
        "{claims}"
    );
    assert!(claims["att"]["time"].as_u64().unwrap() > 0);

    // A failure that passes (the event log unreadable for a while): issuance stops, resumes
    // by itself, and both changes are in the log.
    let log = s.hsm.path("eventlog.json");
    let aside = s.hsm.path("eventlog.aside");
    std::fs::rename(&log, &aside).unwrap();
    eventually("issuance stops without the event log", || {
        let r = request(&s);
        r.status == 503 && r.body["error"]["code"] == "attestation_failed"
    });
    std::fs::rename(&aside, &log).unwrap();
    eventually("issuance resumes with the event log back", || {
        request(&s).status == 201
    });
    let events = |kind: &str| {
        use seb::store::Store;
        seb::store::sqlite::SqliteStore::open(&s.hsm.path("state"))
            .unwrap()
            .events(kind)
            .unwrap()
    };
    eventually("the recovery is recorded", || {
        !events("attestation_restored").is_empty()
    });

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
    // `seb check` on the host says so too (it said "0 problem(s)" while every request failed).
    let out = s.hsm.seb(&["check"]);
    assert!(!out.status.success());
    let report = String::from_utf8_lossy(&out.stdout);
    assert!(
        report.contains("the boot state does not match the attestation policy")
            && report.contains(&pcr_name),
        "{report}"
    );
    // The failure is recorded durably in the broker's store, with its reason.
    eventually("the failure is recorded", || {
        events("attestation_failed")
            .iter()
            .any(|(_, detail)| detail.contains(&pcr_name))
    });

    // The PCR cannot be reset; the TPM can be (TPM2_Startup(CLEAR)), and the log replayed
    // brings the PCRs back to their expected values. Under a running broker that is the
    // attack, not a repair (on real hardware a TPM reset is a reboot, which restarts the
    // broker): the broker sees the reset counter move and stays closed.
    s.hsm.reboot_tpm();
    eventually("the reset is seen", || {
        let health = call(&s, &s.executor, "GET", "/healthz", None);
        health.body["checks"]["attestation"]["reason"]
            .as_str()
            .is_some_and(|r| r.contains("reset or restarted"))
    });
    let r = request(&s);
    assert_eq!(r.status, 503, "{}", r.text);
    assert_eq!(r.body["error"]["code"], "attestation_failed");
    // The repair: the host rebooted into the measured boot, and the broker starts again.
    assert!(s.broker.stop());
    s.broker = Broker::start(&s.hsm);
    let r = request(&s);
    assert_eq!(r.status, 201, "{}", r.text);
    common::assert_success(&attest_verify(&s), "seb attest verify after repair");

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
    // A PCR that does not exist is named as such, before the TPM is asked.
    let out = hsm.seb(&["attest", "record", "--out", "p.toml", "--pcrs", "0,24"]);
    common::assert_clean_failure(&out, "PCR 24 does not exist");
    // What is recorded is said as written: PCR 0 and its events only.
    let log: serde_json::Value = serde_json::from_slice(
        &std::fs::read(common::repo().join("firmware-config/swtpm-eventlog.json")).unwrap(),
    )
    .unwrap();
    let events = log["events"].as_array().unwrap();
    let of_pcr0 = events.iter().filter(|e| e["pcr"] == 0).count();
    assert!(0 < of_pcr0 && of_pcr0 < events.len());
    let said = hsm.seb_ok(&["attest", "record", "--out", "p0.toml", "--pcrs", "0"]);
    assert!(
        said.contains(&format!("recorded 1 PCRs (sha256) and {of_pcr0} events")),
        "{said}"
    );
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
fn evidence_relayed_over_another_tls_certificate_is_refused() {
    // Evidence is bound to the TLS session that served it: the quote's qualifying data is
    // SHA-256(nonce ‖ SHA-256(the broker's TLS certificate)). A relay with a certificate of the
    // same root and the broker's own name passes the handshake, fetches fresh evidence for the
    // verifier's nonce from the real broker and serves it as its own: refused.
    let s = setup(false);
    common::assert_success(&attest_verify(&s), "seb attest verify at the broker");
    let relay = Relay::start(&s);
    let out = attest_verify_at(&s, &relay.url, &[]);
    common::assert_clean_failure(&out, "tls_binding_mismatch");

    // The same in the library: evidence fetched through the relay, checked against the
    // certificate of the session it came over (the relay's), is refused with a stable code;
    // fetched from the broker, it verifies.
    let nonce = b"relying-party-nonce-3";
    let (relayed, session) = evidence_at(&s, &relay.url, nonce);
    assert_eq!(session, relay.certificate);
    let err = check(&s, &relayed, nonce, &session).unwrap_err();
    assert_eq!(err.code(), "tls_binding_mismatch", "{err}");
    let (direct, session) = evidence(&s, nonce);
    check(&s, &direct, nonce, &session).unwrap();
    // Replayed to a verifier as if it had come from the relay's certificate: refused.
    let err = check(&s, &direct, nonce, &relay.certificate).unwrap_err();
    assert_eq!(err.code(), "tls_binding_mismatch", "{err}");
}

#[test]
fn quotes_follow_the_tls_certificate_after_a_rotation() {
    // `seb rotate tls` switches the certificate a running broker serves; its quotes must be
    // bound to the new one, or every relying party would see relayed evidence.
    let s = setup(false);
    common::assert_success(&attest_verify(&s), "seb attest verify before the rotation");
    // The certificate a new connection sees (a handshake only: attestation is rate-limited).
    let served = || {
        let tls = s.hsm.tls(&s.agent, false);
        runtime().block_on(async {
            Client::connect(&s.broker.url, &tls)
                .await
                .unwrap()
                .server_certificate()
                .to_vec()
        })
    };
    let old = served();
    s.hsm.seb_ok(&["rotate", "tls"]);
    let new = Certificate::parse(&std::fs::read(s.hsm.trust("tls.pem")).unwrap())
        .unwrap()
        .to_der_bytes()
        .unwrap();
    assert_ne!(old, new);
    eventually("the broker serves the new TLS certificate", || {
        served() == new
    });
    // Switched together with the TLS certificate; a second try covers the instant between.
    let mut out = attest_verify(&s);
    for _ in 0..3 {
        if out.status.success() {
            break;
        }
        std::thread::sleep(Duration::from_secs(1));
        out = attest_verify(&s);
    }
    common::assert_success(&out, "seb attest verify after the rotation");
    let nonce = b"after-the-rotation";
    let (e, session) = evidence(&s, nonce);
    assert_eq!(session, new);
    check(&s, &e, nonce, &new).unwrap();
    assert_eq!(
        check(&s, &e, nonce, &old).unwrap_err().code(),
        "tls_binding_mismatch"
    );
    // The self-check follows too: issuance goes on.
    let r = request(&s);
    assert_eq!(r.status, 201, "{}", r.text);
}

#[test]
fn forged_replayed_and_foreign_evidence_is_rejected() {
    let s = setup(false);
    let nonce = b"relying-party-nonce-1";
    let (good, tls) = evidence(&s, nonce);
    assert_eq!(
        std::fs::read(s.hsm.trust("tls.pem")).unwrap(),
        Certificate::parse(&tls)
            .unwrap()
            .to_pem_string()
            .unwrap()
            .into_bytes(),
        "the session's certificate is the broker's"
    );
    assert_eq!(check(&s, &good, nonce, &tls).unwrap().broker_id, "seb-dev");

    // Replayed quote: fresh nonce, old evidence.
    assert_eq!(
        check(&s, &good, b"relying-party-nonce-2", &tls).unwrap_err(),
        QuoteError::NonceMismatch
    );
    // Tampered quote body.
    let mut e = good.clone();
    let mut q = seb::base64url::decode(&e.quote).unwrap();
    let n = q.len();
    q[n - 1] ^= 0x01;
    e.quote = seb::base64url::encode(&q);
    assert_eq!(
        check(&s, &e, nonce, &tls).unwrap_err(),
        QuoteError::BadSignature
    );
    // Event log that does not replay.
    let mut e = good.clone();
    e.event_log.events.retain(|ev| ev.pcr != 4);
    assert!(matches!(
        check(&s, &e, nonce, &tls).unwrap_err(),
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
    let (foreign, foreign_tls) = evidence(&other, nonce);
    // Its AK is not certified by our root.
    assert!(matches!(
        check(&s, &foreign, nonce, &foreign_tls).unwrap_err(),
        QuoteError::AkNotCertified { .. }
    ));
    // Its TPM's quote presented under our AK certificate, over our session: signed by another
    // key.
    let mut e = foreign.clone();
    e.ak_chain = good.ak_chain.clone();
    assert_eq!(
        check(&s, &e, nonce, &tls).unwrap_err(),
        QuoteError::BadSignature
    );
    // ... or over its own session: its TLS certificate is not from our root.
    assert_eq!(
        check(&s, &e, nonce, &foreign_tls).unwrap_err().code(),
        "tls_not_certified"
    );
}

#[test]
fn broker_with_keys_in_the_tpm_issues_attested_tokens() {
    let s = setup(true);
    // The AK must be a restricted signing key: one of the backend's own (unrestricted) key
    // blobs put in its place would sign any digest, so any TPMS_ATTEST its holder wrote.
    // Enrolling it is refused and nothing is certified.
    let ak = s.hsm.path("state/attest/ak.tpmkey");
    let aside = s.hsm.path("ak.aside");
    std::fs::rename(&ak, &aside).unwrap();
    let token_blob = std::fs::read_dir(s.hsm.path("state/tpm-keys"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.to_string_lossy().contains("token"))
        .expect("the token key's blob");
    std::fs::copy(&token_blob, &ak).unwrap();
    let before = std::fs::read(s.hsm.trust("ak.pem")).unwrap();
    common::assert_clean_failure(
        &s.hsm.seb(&["attest", "enroll"]),
        "not an attestation key: it is not restricted",
    );
    assert_eq!(std::fs::read(s.hsm.trust("ak.pem")).unwrap(), before);
    std::fs::rename(&aside, &ak).unwrap();
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
        "--operation",
        "deploy.rollout",
        "--resource",
        "prod/payments/api",
        "--params",
        "{}",
        "--cert",
        s.agent.cert.to_str().unwrap(),
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

#[test]
fn a_tpm_that_hangs_stops_issuance_with_an_audit_entry_and_its_return_resumes_it() {
    // A self-check blocked on a TPM that does not answer never returned, so the failure was
    // never recorded: issuance stopped (max_age) with no attestation_failed entry.
    let mut s = setup(false);
    assert!(s.broker.stop());
    s.hsm.edit_config("interval = \"5s\"", "interval = \"1s\"");
    let policy_path = s.hsm.path("attest-policy.toml");
    let policy = std::fs::read_to_string(&policy_path).unwrap();
    let line = policy
        .lines()
        .find(|l| l.starts_with("max_age"))
        .unwrap_or_else(|| panic!("no max_age in {policy}"))
        .to_owned();
    std::fs::write(&policy_path, policy.replace(&line, "max_age = \"3s\"")).unwrap();
    s.broker = Broker::start(&s.hsm);
    assert_eq!(request(&s).status, 201);

    let pid = std::fs::read_to_string(s.hsm.path("swtpm.pid")).unwrap();
    let signal = |sig: &str| {
        let ok = std::process::Command::new("kill")
            .args([sig, pid.trim()])
            .status()
            .unwrap()
            .success();
        assert!(ok, "kill {sig}");
    };
    signal("-STOP");
    let mut refused = None;
    eventually("issuance refused while the TPM hangs", || {
        let r = request(&s);
        let stop = r.status == 503;
        refused = Some(r);
        stop
    });
    let r = refused.unwrap();
    let failed = s.hsm.audit_entries_eventually("attestation_failed", 1);
    signal("-CONT");
    assert_eq!(r.body["error"]["code"], "attestation_failed", "{}", r.text);
    assert!(
        r.text.contains("has not finished in time"),
        "says the TPM does not answer, not that measurements differ: {}",
        r.text
    );
    assert_eq!(failed.len(), 1, "{failed:?}");
    assert!(
        failed[0]["detail"]
            .as_str()
            .unwrap_or_default()
            .contains("overdue"),
        "{failed:?}"
    );
    eventually("issuance resumes once the TPM answers", || {
        request(&s).status == 201
    });
    let recovered = s.hsm.audit_entries_eventually("attestation_recovered", 1);
    assert_eq!(recovered.len(), 1, "{recovered:?}");
}

/// Outside review: revoking the attestation key's certificate changed nothing: the broker
/// went on attesting and issuing attested tokens. Its self-check now reads the revocation from
/// the store and fails closed until a new AK is enrolled.
#[test]
fn a_revoked_attestation_key_stops_attested_issuance() {
    let s = setup(false);
    let r = request(&s);
    assert_eq!(r.status, 201, "{}", r.text);
    let ak = s.hsm.trust("ak.pem");
    let serial = seb::cert::Certificate::parse(&std::fs::read(&ak).unwrap())
        .unwrap()
        .serial_hex();
    s.hsm.revoke_unrecorded(&serial, "key-compromise");
    eventually("issuance stops", || {
        let r = request(&s);
        r.status == 503 && r.body["error"]["code"] == "attestation_failed"
    });
    let health = call(&s, &s.executor, "GET", "/healthz", None);
    assert_eq!(health.status, 503, "{}", health.text);
    let reason = health.body["checks"]["attestation"]["reason"]
        .as_str()
        .unwrap_or_default();
    assert!(
        reason.contains("is revoked") && reason.contains("seb attest enroll"),
        "{}",
        health.text
    );
}
