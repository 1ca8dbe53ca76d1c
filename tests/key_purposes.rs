//! The broker's key certificates carry exactly one key purpose each (issue 11), and `seb serve`
//! will not sign tokens under a token certificate that lacks its purpose: executors would
//! refuse every one of them.
//!
//! One test function on purpose: it points this process's SoftHSM2 at its own token
//! directory through the environment, which must not race with another test in the process.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::time::{Duration, SystemTime};

use common::Hsm;
use seb::backend::pkcs11::{Pkcs11Backend, Pkcs11Settings, TokenSelector};
use seb::backend::{KeyBackend, P384Signer};
use seb::ca::{self, CertKind};
use seb::cert::{Certificate, Purpose};
use seb::config::{BackendConfig, Config};

#[test]
fn seb_serve_refuses_a_token_certificate_without_the_token_purpose() {
    let hsm = Hsm::initialised();
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

    // The root certifies the token key again, for the audit purpose: same key, same issuer,
    // the wrong purpose. (The old signing profile, with no purpose, is refused the same way.)
    let root = Certificate::parse(&std::fs::read(hsm.trust("root.pem")).unwrap()).unwrap();
    let token = Certificate::parse(&std::fs::read(hsm.trust("token.pem")).unwrap()).unwrap();
    let signer = P384Signer::new(&backend, &config.keys.root).unwrap();
    let public = {
        use der::Decode;
        let der = backend
            .public_key(&config.keys.token)
            .unwrap()
            .to_spki_der()
            .unwrap();
        spki::SubjectPublicKeyInfoOwned::from_der(&der).unwrap()
    };
    assert_eq!(&public, token.tbs().subject_public_key_info());
    let audit_purpose = ca::issue_service(
        &signer,
        &root,
        public,
        token.tbs().subject(),
        CertKind::Signing(Purpose::Audit),
        Duration::from_secs(86_400),
        SystemTime::now(),
    )
    .unwrap();
    drop(signer);
    drop(backend);
    let original = std::fs::read(hsm.trust("token.pem")).unwrap();
    std::fs::write(
        hsm.trust("token.pem"),
        audit_purpose.to_pem_string().unwrap(),
    )
    .unwrap();

    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_seb"))
        .args(["--config", hsm.config().to_str().unwrap(), "serve"])
        .current_dir(hsm.dir.path())
        .env_remove("SEB_CONFIG")
        .env("RUST_LOG", "warn")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while child.try_wait().unwrap().is_none() {
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("seb serve started with a token certificate that lacks the token purpose");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("is not the root's token signing certificate")
            && stderr.contains("wrong_key_purpose"),
        "{stderr}"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");

    // Control: with the certificate `seb init` wrote, it serves.
    std::fs::write(hsm.trust("token.pem"), original).unwrap();
    let broker = common::Broker::start(&hsm);
    assert!(broker.url.starts_with("https://"));
}
