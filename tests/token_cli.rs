//! `seb token verify` as an executor runs it: no configuration, no HSM, just the broker's trust
//! bundle and a token, here one signed by `seb-token` inside SoftHSM2.
//!
//! One test function on purpose: it points this process's SoftHSM2 at its own token
//! directory through the environment, which must not race with another test in the process.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::path::Path;
use std::process::Output;
use std::time::{SystemTime, UNIX_EPOCH};

use common::Hsm;
use seb::backend::pkcs11::{Pkcs11Backend, Pkcs11Settings, TokenSelector};
use seb::backend::KeyBackend;
use seb::base64url::encode as b64;
use seb::cert::Certificate;
use seb::config::{BackendConfig, Config};
use seb::token::{mint, AuthorizationDetail, Claims, Confirmation, Header, DETAIL_TYPE};
use sha2::{Digest, Sha384};

const GRANTS: &str = "[[grant]]\noperation = \"deploy.rollout\"\nresource = \"prod/payments/*\"\nmax_ttl = \"60s\"\nparams_any = true\n";

fn verify(dir: &Path, args: &[&str]) -> Output {
    let mut full = vec!["token", "verify"];
    full.extend_from_slice(args);
    common::seb(&full, dir)
}

fn assert_code(out: &Output, code: &str) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "stderr:\n{stderr}");
    assert!(
        stderr.starts_with(&format!("error: {code}: ")),
        "expected {code}:\n{stderr}"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(out.stdout.is_empty(), "nothing on stdout on failure");
}

#[test]
fn seb_token_verify_checks_an_hsm_signed_token_without_configuration() {
    let hsm = Hsm::initialised();
    let grants = hsm.path("grants.toml");
    std::fs::write(&grants, GRANTS).unwrap();
    let grants = grants.to_str().unwrap();
    let agent = hsm.issue("agent", "CN=deploy-bot", "agent", &["--grants", grants]);
    let other = hsm.issue("other", "CN=other-bot", "agent", &["--grants", grants]);
    let agent_cert = Certificate::parse(&std::fs::read(&agent).unwrap()).unwrap();

    // The broker's token key, reached in-process through the PKCS#11 backend.
    let config = Config::load(&hsm.config()).unwrap();
    let BackendConfig::Pkcs11(p11) = &config.backend else {
        panic!("provision.sh configures pkcs11");
    };
    for (key, value) in &p11.module_env {
        std::env::set_var(key, value);
    }
    let backend = Pkcs11Backend::open(Pkcs11Settings {
        module: p11.module.clone(),
        token: TokenSelector {
            label: p11.token_label.clone(),
            serial: None,
        },
        pin: p11.read_pin().unwrap(),
        sessions: 1,
    })
    .unwrap();

    let token_cert = Certificate::parse(&std::fs::read(hsm.trust("token.pem")).unwrap()).unwrap();
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let params = serde_json::json!({"replicas": 3, "strategy": "canary"});
    let header = Header {
        alg: "ES384".into(),
        typ: seb::token::TOKEN_TYPE.into(),
        kid: b64(&token_cert.thumbprint_sha256().unwrap()),
    };
    let claims = Claims {
        iss: config.broker_id.clone(),
        sub: agent_cert.subject_string(),
        jti: b64(&[42; 16]),
        iat: now,
        nbf: now,
        exp: now + 60,
        cnf: Confirmation {
            x5t_s256: b64(&agent_cert.thumbprint_sha256().unwrap()),
        },
        params_digest: Some(b64(&seb::canonical::params_digest(&params).unwrap())),
        authorization_details: vec![AuthorizationDetail {
            kind: DETAIL_TYPE.into(),
            operation: "deploy.rollout".into(),
            resource: "prod/payments/api".into(),
            params_digest: b64(&seb::canonical::params_digest(&params).unwrap()),
            request_digest: b64(&seb::canonical::request_digest(
                "deploy.rollout",
                "prod/payments/api",
                &params,
            )
            .unwrap()),
            approvals: 0,
            approval_group: None,
        }],
        att: None,
        audit: None,
        epoch: 3,
        approvals: vec![],
    };
    let token = mint(&header, &claims, |input: &[u8]| {
        backend
            .sign_digest(&config.keys.token, &Sha384::digest(input))
            .map(|sig| sig.to_raw())
    })
    .unwrap();

    let dir = hsm.dir.path();
    let token_file = hsm.path("token.jwt");
    std::fs::write(&token_file, format!("{token}\n")).unwrap();
    let mut bundle = String::new();
    for name in ["root.pem", "token.pem", "audit.pem", "tls.pem"] {
        bundle.push_str(&std::fs::read_to_string(hsm.trust(name)).unwrap());
    }
    let trust = hsm.path("trust.pem");
    std::fs::write(&trust, &bundle).unwrap();
    let (trust, token_file) = (trust.to_str().unwrap(), token_file.to_str().unwrap());
    let params_text = params.to_string();
    let full = [
        "--trust",
        trust,
        "--token",
        token_file,
        "--operation",
        "deploy.rollout",
        "--resource",
        "prod/payments/api",
        "--params",
        &params_text,
        "--cert",
        agent.to_str().unwrap(),
        "--min-epoch",
        "3",
        "--issuer",
        &config.broker_id,
    ];

    // Good: the claims on stdout, exit 0, with no --config anywhere.
    let out = verify(dir, &full);
    common::assert_success(&out, "token verify");
    let printed: Claims = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(printed, claims);
    // The agent's certificate as `seb cert issue --out` writes it, with its chain after the
    // leaf, binds the same way.
    let chain = hsm.path("agent-chain.pem");
    std::fs::write(
        &chain,
        format!(
            "{}{}",
            std::fs::read_to_string(&agent).unwrap(),
            std::fs::read_to_string(hsm.trust("root.pem")).unwrap()
        ),
    )
    .unwrap();
    let mut with_chain = full.to_vec();
    with_chain[11] = chain.to_str().unwrap();
    common::assert_success(&verify(dir, &with_chain), "--cert with a chain PEM");
    // Parameters in another key order are the same request.
    let mut reordered = full.to_vec();
    reordered[9] = r#"{"strategy":"canary","replicas":3}"#;
    common::assert_success(&verify(dir, &reordered), "reordered params");

    // Each expectation, broken.
    let with = |index: usize, value: &str| {
        let mut args = full.to_vec();
        args[index] = value;
        verify(dir, &args)
    };
    assert_code(&with(5, "deploy.rollback"), "wrong_operation");
    assert_code(&with(7, "prod/payments/db"), "wrong_resource");
    assert_code(
        &with(9, r#"{"replicas":4,"strategy":"canary"}"#),
        "wrong_params",
    );
    assert_code(&with(9, "{not json"), "invalid_params");
    // Duplicate keys: the broker refuses them, and so must the executor's check. Lenient JSON
    // keeps the last value and verifies, while a first-key-wins executor acts on 1000.
    assert_code(
        &with(9, r#"{"replicas":1000,"replicas":3,"strategy":"canary"}"#),
        "invalid_params",
    );
    let deep = format!("{{\"a\":{}{}}}", "[".repeat(40), "]".repeat(40));
    assert_code(&with(9, &deep), "invalid_params");
    assert_code(&with(11, other.to_str().unwrap()), "wrong_certificate");
    assert_code(&with(13, "4"), "stale_epoch");
    assert_code(&with(15, "another-broker"), "wrong_issuer");

    // Checking nothing is not a pass. Operation, resource and params come together or not at
    // all, and the binding options only with them: a usage error (exit 2) otherwise, with
    // nothing on stdout.
    let usage = |out: &Output, needle: &str| {
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "stderr:\n{stderr}");
        assert!(out.stdout.is_empty(), "nothing on stdout on a usage error");
        assert!(stderr.contains(needle), "expected {needle}:\n{stderr}");
    };
    usage(&verify(dir, &full[..6]), "--resource");
    usage(&verify(dir, &full[..8]), "--params");
    let mut cert_alone = full[..4].to_vec();
    cert_alone.extend_from_slice(&full[10..12]);
    usage(&verify(dir, &cert_alone), "--operation");
    // The action without --cert (issue 4's `seb token verify --trust ROOT --token FILE
    // --operation OP --resource RES --params JSON`): everything but the binding is checked,
    // and stderr says the binding was not; --skip-binding says so on purpose, silently.
    let unbound = verify(dir, &full[..10]);
    common::assert_success(&unbound, "the action without --cert");
    assert_eq!(
        serde_json::from_slice::<Claims>(&unbound.stdout).unwrap(),
        claims
    );
    assert!(
        String::from_utf8_lossy(&unbound.stderr).contains("agent_binding not checked"),
        "{}",
        String::from_utf8_lossy(&unbound.stderr)
    );
    assert_code(
        &verify(dir, &[&full[..8], &["--params", "{}"]].concat()),
        "wrong_params",
    );
    let mut skipped = full[..10].to_vec();
    skipped.push("--skip-binding");
    let out = verify(dir, &skipped);
    common::assert_success(&out, "explicitly unbound");
    assert!(
        out.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut both = full.to_vec();
    both.push("--skip-binding");
    usage(&verify(dir, &both), "--skip-binding");

    // Without the action, only the token's own validity: exit 3, as with --signature-only.
    let bare = verify(dir, &full[..4]);
    assert_eq!(
        bare.status.code(),
        Some(3),
        "{}",
        String::from_utf8_lossy(&bare.stderr)
    );
    let printed: serde_json::Value = serde_json::from_slice(&bare.stdout).unwrap();
    assert_eq!(printed["checked"], "signature_only");

    // The root alone, where the broker keeps it: the token certificate beside it is read as
    // the path (never as a root); the trust directory itself works the same. A root copied
    // away from its directory finds no token certificate.
    for pinned in [hsm.trust("root.pem"), hsm.path("state/trust")] {
        let mut args = full.to_vec();
        args[1] = pinned.to_str().unwrap();
        let out = verify(dir, &args);
        common::assert_success(&out, "--trust root.pem in its trust directory");
        assert_eq!(
            serde_json::from_slice::<Claims>(&out.stdout).unwrap(),
            claims
        );
    }
    let lone = hsm.path("lone-root.pem");
    std::fs::copy(hsm.trust("root.pem"), &lone).unwrap();
    let mut args = full.to_vec();
    args[1] = lone.to_str().unwrap();
    assert_code(&verify(dir, &args), "unknown_key");
    // A token certificate beside the root that another root issued is no path to it.
    let foreign = Hsm::initialised();
    let planted = hsm.path("planted");
    std::fs::create_dir_all(&planted).unwrap();
    std::fs::copy(hsm.trust("root.pem"), planted.join("root.pem")).unwrap();
    std::fs::copy(foreign.trust("token.pem"), planted.join("token.pem")).unwrap();
    args[1] = planted.to_str().unwrap();
    let out = verify(dir, &args);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("error: unknown_key: "),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Named from inside the trust directory.
    let mut args = full.to_vec();
    args[1] = "root.pem";
    let out = verify(&hsm.path("state/trust"), &args);
    common::assert_success(&out, "--trust root.pem from inside the trust directory");

    // Only the signature, on request: exit 3 (not 0, so `verify && act` never acts), and
    // stdout says what was not checked.
    let signature_only = verify(
        dir,
        &["--trust", trust, "--token", token_file, "--signature-only"],
    );
    assert_eq!(
        signature_only.status.code(),
        Some(3),
        "{}",
        String::from_utf8_lossy(&signature_only.stderr)
    );
    let printed: serde_json::Value = serde_json::from_slice(&signature_only.stdout).unwrap();
    assert_eq!(printed["checked"], "signature_only");
    assert_eq!(
        printed["not_checked"],
        serde_json::json!(["operation", "resource", "params", "agent_binding"])
    );
    assert_eq!(printed["claims"], serde_json::to_value(&claims).unwrap());
    assert!(String::from_utf8_lossy(&signature_only.stderr).contains("signature_only"));
    let mut mixed = full.to_vec();
    mixed.push("--signature-only");
    usage(&verify(dir, &mixed), "--signature-only");

    // Time.
    let later = (now + 61).to_string();
    let mut args = full.to_vec();
    args.extend_from_slice(&["--now", &later]);
    assert_code(&verify(dir, &args), "token_expired");
    let earlier = (now - 3600).to_string();
    let mut args = full.to_vec();
    args.extend_from_slice(&["--now", &earlier]);
    assert_code(&verify(dir, &args), "certificate_not_yet_valid");

    // Signature-only still refuses a token that does not verify.
    let expired_only = verify(
        dir,
        &[
            "--trust",
            trust,
            "--token",
            token_file,
            "--signature-only",
            "--now",
            &later,
        ],
    );
    assert_code(&expired_only, "token_expired");

    // The token itself.
    let tampered = hsm.path("tampered.jwt");
    let forged_claims = Claims {
        exp: now + 3000,
        ..claims.clone()
    };
    let forged = format!(
        "{}.{}.{}",
        token.split('.').next().unwrap(),
        b64(&serde_json::to_vec(&forged_claims).unwrap()),
        token.rsplit('.').next().unwrap()
    );
    std::fs::write(&tampered, forged).unwrap();
    assert_code(&with(3, tampered.to_str().unwrap()), "bad_signature");
    let garbage = hsm.path("garbage.jwt");
    std::fs::write(&garbage, "not.a.token").unwrap();
    assert_code(&with(3, garbage.to_str().unwrap()), "malformed_token");
    let huge = hsm.path("huge.jwt");
    std::fs::write(&huge, "a".repeat(20_000)).unwrap();
    assert_code(&with(3, huge.to_str().unwrap()), "token_too_large");
    assert_code(&with(3, "/nonexistent/token"), "invalid_input");

    // Key purposes are exclusive: the audit key (certified by the root for audit checkpoints
    // only) signs a token, naming its own certificate as kid. The signature is good; the
    // purpose is not.
    let audit_cert = Certificate::parse(&std::fs::read(hsm.trust("audit.pem")).unwrap()).unwrap();
    let audit_header = Header {
        kid: b64(&audit_cert.thumbprint_sha256().unwrap()),
        ..header.clone()
    };
    let by_audit_key = mint(&audit_header, &claims, |input: &[u8]| {
        backend
            .sign_digest(&config.keys.audit, &Sha384::digest(input))
            .map(|sig| sig.to_raw())
    })
    .unwrap();
    let audit_signed = hsm.path("audit-signed.jwt");
    std::fs::write(&audit_signed, &by_audit_key).unwrap();
    assert_code(
        &with(3, audit_signed.to_str().unwrap()),
        "wrong_key_purpose",
    );
    let store = seb::verify::TrustStore::from_pem(bundle.as_bytes()).unwrap();
    let expect = seb::verify::Expectations::new(
        SystemTime::now(),
        seb::verify::Action::new(
            "deploy.rollout",
            "prod/payments/api",
            seb::verify::Params::parse(params_text.as_bytes()).unwrap(),
        ),
        seb::verify::Binding::Agent(Box::new(agent_cert.clone())),
    )
    .min_epoch(3);
    let refused = seb::verify::verify_token(&by_audit_key, &store, &expect).unwrap_err();
    assert_eq!(refused.code(), "wrong_key_purpose", "{refused}");
    assert!(seb::verify::verify_token(&token, &store, &expect).is_ok());

    // Trust: the token certificate alone has no root; a bundle without the token certificate
    // (and nothing beside it) does not know the kid.
    let no_root = hsm.path("no-root.pem");
    std::fs::copy(hsm.trust("token.pem"), &no_root).unwrap();
    assert_code(&with(1, no_root.to_str().unwrap()), "invalid_trust_bundle");
    let root_only = hsm.path("lone-root.pem");
    let out = with(1, root_only.to_str().unwrap());
    assert_code(&out, "unknown_key");
    // ... and says what to trust instead.
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("GET /v1/trust"),
        "{out:?}"
    );

    // stdin.
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_seb"))
        .args(["token", "verify"])
        .args(full.iter().map(|a| if *a == token_file { "-" } else { a }))
        .env_remove("SEB_CONFIG")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    {
        use std::io::Write;
        child
            .stdin
            .take()
            .unwrap()
            .write_all(token.as_bytes())
            .unwrap();
    }
    let out = child.wait_with_output().unwrap();
    common::assert_success(&out, "token from stdin");
}

#[test]
fn a_trust_bundle_or_certificate_that_is_a_device_is_refused_by_size() {
    // `--trust /dev/zero` used to be read whole: gigabytes of memory in seconds.
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("token.jwt");
    std::fs::write(&token, "eyJhbGciOiJFUzM4NCJ9.e30.c2ln").unwrap();
    let token = token.to_str().unwrap();
    for args in [
        ["--trust", "/dev/zero", "--token", token, "--signature-only"],
        ["--trust", "/dev/null", "--token", token, "--signature-only"],
    ] {
        let out = verify(dir.path(), &args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {stderr}");
        assert!(!stderr.contains("panicked"), "{stderr}");
        if args[1] == "/dev/zero" {
            assert!(stderr.contains("larger than 16 MiB"), "{stderr}");
        }
    }
}
