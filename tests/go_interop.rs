//! seb's certificates and tokens in an X.509 stack seb does not control: Go's standard library
//! (`tests/go/interop.go`) loads agent, approver and executor certificates, talks to a live
//! broker over mutual TLS with each, verifies the token with `crypto/ecdsa`, and parses the
//! broker's CRL (PEM and DER) with `crypto/x509`, checking its signature and the revoked serial.
//!
//! Go is a test dependency (Debian `golang-go`, installed by `deploy/install-deps.sh`). A
//! missing `go` fails the test; it is never skipped.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::process::Command;

use common::{Broker, Hsm};

const GRANTS: &str = r#"
[[grant]]
operation = "deploy.rollout"
resource  = "prod/payments/*"
max_ttl   = "30s"
params.replicas = { min = 1, max = 10 }
"#;

#[test]
fn a_go_program_with_only_the_standard_library_loads_seb_certificates_and_completes_mtls() {
    let go = Command::new("go").arg("version").output();
    assert!(
        go.as_ref().is_ok_and(|o| o.status.success()),
        "`go` is not installed: install Debian's golang-go (deploy/install-deps.sh does): {go:?}"
    );

    let hsm = Hsm::initialised();
    let agent = hsm.agent("go-agent", GRANTS);
    let approver = hsm.identity(
        "go-approver",
        "CN=go-approver",
        "approver",
        &["--group", "sre-leads"],
    );
    let executor = hsm.identity("go-executor", "CN=go-executor", "executor", &[]);
    let revoked = hsm.agent("go-revoked", GRANTS);
    let serial = common::openssl_serial(&revoked.cert);
    hsm.seb_ok(&["cert", "revoke", "--serial", &serial]);
    let broker = Broker::start(&hsm);

    let path = |p: &std::path::Path| p.to_str().unwrap().to_owned();
    let out = Command::new("go")
        .arg("run")
        .arg(common::repo().join("tests/go/interop.go"))
        .args(["-broker", &broker.url])
        .args(["-root", &path(&hsm.trust("root.pem"))])
        .args([
            "-agent",
            &path(&agent.cert),
            "-agent-key",
            &path(&agent.key),
        ])
        .args(["-approver", &path(&approver.cert)])
        .args(["-approver-key", &path(&approver.key)])
        .args(["-executor", &path(&executor.cert)])
        .args(["-executor-key", &path(&executor.key)])
        .args(["-revoked-serial", &serial])
        // Standard library only: no module, no network.
        .env("GO111MODULE", "off")
        .env("GOPROXY", "off")
        .env("GOFLAGS", "")
        .current_dir(hsm.dir.path())
        .output()
        .expect("run go");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "the Go program failed:\nstdout:\n{stdout}\nstderr:\n{stderr}\nbroker log:\n{}",
        broker.log_text()
    );
    for step in [
        "agent certificate \"CN=go-agent\" loaded and parsed (sebRole agent",
        "approver certificate \"CN=go-approver\" loaded and parsed (sebRole approver, groups [sre-leads])",
        "executor certificate \"CN=go-executor\" loaded and parsed (sebRole executor",
        "POST /v1/executions as the agent: 201 granted",
        "ES384 token verified with crypto/ecdsa",
        "GET /v1/executions/{id} as the approver: 200",
        "POST /v1/tokens/redeem as the executor: 200 redeemed",
        "CRL parsed by crypto/x509 as PEM and DER, signed by the root, lists the revoked serial",
        "interop: ok",
    ] {
        assert!(stdout.contains(step), "missing {step:?} in:\n{stdout}");
    }
}
