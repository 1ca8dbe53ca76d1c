//! seb's artifacts in Python's own stacks (`tests/python/interop.py`): the root, the trust
//! bundle and an agent certificate in `cryptography` (signatures, extensions, exclusive key
//! purposes), the token in PyJWT (ES384 under the certificate its `kid` names, bound to the
//! agent, the parameters' digest), the root's CRL, the audit checkpoint (the C2SP note's ECDSA
//! signature under the audit certificate) with the RFC 6962 root rebuilt from the entries, and
//! an executor's receipt. Then docs/VERIFYING.md §3's PyJWT and shell-and-OpenSSL recipes, run
//! as written, on the same token and on a forged one.
//!
//! Python with `cryptography` and PyJWT comes from `deploy/install-deps.sh` (the virtual
//! environment named by `common::python()`). A missing interpreter or package fails the test;
//! it is never skipped.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::process::Command;

use common::exec::{Executor, DEMO_WRITE_GRANTS};
use common::{Broker, Hsm};
use serde_json::{json, Value};

#[test]
fn python_cryptography_and_pyjwt_accept_certificates_tokens_crls_checkpoints_and_receipts() {
    let hsm = Hsm::initialised();
    let dir = hsm.dir.path();
    let agent = hsm.agent("agent", DEMO_WRITE_GRANTS);
    let executor = common::exec::identity(&hsm);
    assert_eq!(
        executor.cert,
        dir.join("executor.pem"),
        "interop.py reads executor.pem"
    );
    let revoked = hsm.identity("gone", "CN=gone", "executor", &[]);
    // Rotated once: the trust bundle holds retired token and audit certificates beside the
    // current ones, and verifiers must pick by kid and key id, not by position.
    hsm.seb_ok(&["rotate", "token"]);
    hsm.seb_ok(&["rotate", "audit"]);
    let broker = Broker::start(&hsm);
    let (exec, _) = Executor::demo_write(&hsm, &broker);
    let write = |name: &str, text: &str| std::fs::write(dir.join(name), text).unwrap();

    // A token, as the agent.
    let params = json!({"name": "py.txt", "text": "checked in Python"});
    let tls = hsm.tls(&agent, true);
    let rt = common::runtime();
    let (granted, trust) = rt.block_on(async {
        let mut c = seb::client::Client::connect(&broker.url, &tls)
            .await
            .unwrap();
        let body = json!({"operation": "demo.write", "resource": "demo/files", "params": params});
        let granted = c.post_json("/v1/executions", &body).await.unwrap();
        let trust = c.send("GET", "/v1/trust", None).await.unwrap();
        (granted, trust)
    });
    assert_eq!(granted.status, 201, "{}", granted.body);
    write("token.jwt", granted.body["token"].as_str().unwrap());
    write("params.json", &params.to_string());
    write("trust.pem", &trust.text);
    std::fs::copy(hsm.trust("root.pem"), dir.join("root.pem")).unwrap();
    assert_eq!(
        agent.cert,
        dir.join("agent.pem"),
        "interop.py reads agent.pem"
    );

    // A receipt, through the executor (another token for the same parameters).
    let out = common::seb(
        &[
            "request",
            "--broker",
            &broker.url,
            "--ca",
            hsm.trust("root.pem").to_str().unwrap(),
            "--cert",
            agent.cert.to_str().unwrap(),
            "--key",
            agent.key.to_str().unwrap(),
            "--operation",
            "demo.write",
            "--resource",
            "demo/files",
            "--params",
            &params.to_string(),
            "--execute",
            &exec.url,
        ],
        dir,
    );
    common::assert_success(&out, "seb request --execute");
    write("receipt.json", &String::from_utf8_lossy(&out.stdout));

    // The CRL after a revocation.
    let serial = common::openssl_serial(&revoked.cert);
    hsm.seb_ok(&["cert", "revoke", "--serial", &serial]);
    write("revoked.txt", &serial);
    hsm.seb_ok(&["crl", "--out", dir.join("crl.pem").to_str().unwrap()]);
    // The same list as the broker serves it in DER to a client that asks for RFC 2585's type.
    let out = Command::new("curl")
        .args(["-sS", "--fail", "-H", "Accept: application/pkix-crl", "-o"])
        .arg(dir.join("served-crl.der"))
        .arg("--cacert")
        .arg(hsm.trust("root.pem"))
        .arg("--cert")
        .arg(&agent.cert)
        .arg("--key")
        .arg(&agent.key)
        .arg(format!("{}/v1/crl", broker.url))
        .output()
        .expect("run curl");
    common::assert_success(&out, "curl /v1/crl (DER)");

    // The log: a checkpoint that covers the grants above (signed within a second or so), then
    // every entry up to now.
    let (note, entries) = rt.block_on(async {
        let mut c = seb::client::Client::connect(&broker.url, &tls)
            .await
            .unwrap();
        for _ in 0..100 {
            let note = c
                .send("GET", "/v1/audit/checkpoint", None)
                .await
                .unwrap()
                .text;
            let size: u64 = note.lines().nth(1).unwrap_or("0").parse().unwrap_or(0);
            if size >= 4 {
                let entries = c
                    .send(
                        "GET",
                        &format!("/v1/audit/entries?start=0&end={size}"),
                        None,
                    )
                    .await
                    .unwrap();
                return (note, entries.text);
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
        panic!("no checkpoint covers the grants");
    });
    write("checkpoint.txt", &note);
    write("entries.json", &entries);
    let entries: Value = serde_json::from_str(&entries).unwrap();
    assert!(entries["entries"].as_array().unwrap().len() >= 4);

    let out = Command::new(common::python())
        .arg(common::repo().join("tests/python/interop.py"))
        .current_dir(dir)
        .output()
        .expect("run python");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "the Python checks failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for step in [
        "trust bundle:",
        "token verified with PyJWT",
        "CRL signed by the root lists serial",
        "served DER CRL signed by the root lists serial",
        "checkpoint of seb-dev/audit verified",
        "RFC 6962 root matches the checkpoint",
        "receipt verified under the executor certificate",
        "python interop: ok",
    ] {
        assert!(stdout.contains(step), "missing {step:?} in:\n{stdout}");
    }
    verifying_md_recipes_check_the_token(dir, &hsm.trust("token.pem"));
    drop(exec);
}

/// The first fenced block of `lang` after `marker` in docs/VERIFYING.md.
fn verifying_md_block(marker: &str, lang: &str) -> String {
    let doc = std::fs::read_to_string(common::repo().join("docs/VERIFYING.md")).unwrap();
    let after = &doc[doc
        .find(marker)
        .unwrap_or_else(|| panic!("{marker:?} not in VERIFYING.md"))..];
    let fence = format!("```{lang}\n");
    let start = after.find(&fence).unwrap() + fence.len();
    let len = after[start..].find("```").unwrap();
    after[start..start + len].to_owned()
}

/// VERIFYING.md §3's PyJWT and shell-and-OpenSSL recipes, run as written, accept the token in
/// `dir` (token.jwt, with trust.pem and root.pem beside it) and refuse it with one signature
/// byte changed.
fn verifying_md_recipes_check_the_token(dir: &std::path::Path, token_pem: &std::path::Path) {
    std::fs::copy(dir.join("trust.pem"), dir.join("bundle.pem")).unwrap();
    std::fs::copy(token_pem, dir.join("token.pem")).unwrap();
    let token = std::fs::read_to_string(dir.join("token.jwt")).unwrap();
    let token = token.trim();
    let sig_at = token.rfind('.').unwrap() + 10;
    let flipped = if &token[sig_at..=sig_at] == "A" {
        "B"
    } else {
        "A"
    };
    let forged = format!("{}{flipped}{}", &token[..sig_at], &token[sig_at + 1..]);
    let python = format!(
        "import sys\ntoken = sys.argv[1]\n{}\nprint('recipe accepted', claims['jti'])\n",
        verifying_md_block("Python (PyJWT + cryptography), steps 1 to 3", "python")
    );
    std::fs::write(dir.join("recipe.py"), python).unwrap();
    let shell = verifying_md_block("With nothing but a shell and OpenSSL", "sh");
    let run = |token: &str| {
        let py = Command::new(common::python())
            .arg("recipe.py")
            .arg(token)
            .current_dir(dir)
            .output()
            .expect("run python");
        let sh = Command::new("bash")
            .args(["-c", &shell])
            .env("TOKEN", token)
            .current_dir(dir)
            .output()
            .expect("run bash");
        (py, String::from_utf8_lossy(&sh.stdout).into_owned())
    };
    let (py, sh) = run(token);
    assert!(
        py.status.success() && String::from_utf8_lossy(&py.stdout).contains("recipe accepted"),
        "the PyJWT recipe refused a good token:\n{}",
        String::from_utf8_lossy(&py.stderr)
    );
    assert!(sh.contains("Verified OK"), "the OpenSSL recipe:\n{sh}");
    let kid: Value = sh
        .lines()
        .next()
        .and_then(|header| serde_json::from_str(header).ok())
        .unwrap_or_else(|| panic!("no JWS header on the first line:\n{sh}"));
    let thumbprint = sh.lines().nth(1).unwrap_or_default();
    assert_eq!(kid["kid"], thumbprint, "{sh}");
    let (py, sh) = run(&forged);
    assert!(
        !py.status.success(),
        "the PyJWT recipe accepted a forged token"
    );
    assert!(
        sh.contains("Verification failure") && !sh.contains("Verified OK"),
        "the OpenSSL recipe:\n{sh}"
    );
}
