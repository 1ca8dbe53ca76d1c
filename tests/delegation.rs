//! Delegation through intermediate CAs (issue 11): an intermediate issues only the roles it was
//! given (`seb cert issue-ca --roles`, `sebIssuableRoles`), the broker re-checks that on every
//! decision, and only the root vouches for the broker's own identity: `seb request` refuses a
//! TLS server certificate an intermediate issued.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::process::{Child, Command, Stdio};

use common::{assert_clean_failure, openssl, runtime, Broker, Hsm, Identity};
use seb::client::{ApiResponse, Client};
use seb::grants::{Role, RoleKind};
use serde_json::{json, Value};

const GRANTS: &str = r#"
[[grant]]
operation = "deploy.rollout"
resource  = "staging/**"
max_ttl   = "60s"
params_any = true
"#;

fn call(hsm: &Hsm, broker: &Broker, who: &Identity, method: &str, path: &str) -> ApiResponse {
    call_with(hsm, broker, who, method, path, None)
}

fn call_with(
    hsm: &Hsm,
    broker: &Broker,
    who: &Identity,
    method: &str,
    path: &str,
    body: Option<&Value>,
) -> ApiResponse {
    let tls = hsm.tls(who, true);
    runtime().block_on(async {
        let mut client = Client::connect(&broker.url, &tls).await.unwrap();
        client
            .send(method, path, body.map(|b| serde_json::to_vec(b).unwrap()))
            .await
            .unwrap()
    })
}

fn code(r: &ApiResponse) -> &str {
    r.body["error"]["code"]
        .as_str()
        .unwrap_or_else(|| panic!("no error code in {}", r.text))
}

/// `seb keygen` + `seb cert issue` with `args`; returns the output.
fn issue(hsm: &Hsm, name: &str, args: &[&str]) -> std::process::Output {
    let key = hsm.path(&format!("{name}.key"));
    let csr = hsm.path(&format!("{name}.csr"));
    let out = hsm.path(&format!("{name}.pem"));
    hsm.seb_ok(&[
        "keygen",
        "--out-key",
        key.to_str().unwrap(),
        "--out-csr",
        csr.to_str().unwrap(),
        "--subject",
        &format!("CN={name}"),
    ]);
    let mut full = vec![
        "cert",
        "issue",
        "--csr",
        csr.to_str().unwrap(),
        "--ttl",
        "7d",
        "--out",
        out.to_str().unwrap(),
    ];
    full.extend_from_slice(args);
    hsm.seb(&full)
}

/// `seb cert issue-ca` for an intermediate in the HSM.
fn issue_ca(hsm: &Hsm, label: &str, ttl: &str, args: &[&str]) -> std::process::Output {
    let out = hsm.path(&format!("{label}-chain.pem"));
    let subject = format!("CN={label}");
    let mut full = vec![
        "cert",
        "issue-ca",
        "--label",
        label,
        "--subject",
        &subject,
        "--ttl",
        ttl,
        "--out",
        out.to_str().unwrap(),
    ];
    full.extend_from_slice(args);
    hsm.seb(&full)
}

#[test]
fn an_intermediate_issues_only_the_roles_it_was_given() {
    let hsm = Hsm::initialised();
    let grants = hsm.grants_file("staging.toml", GRANTS);

    // Delegated for staging, nothing said about roles: agents only.
    common::assert_success(
        &issue_ca(&hsm, "staging", "300d", &["--grants", &grants]),
        "issue-ca staging",
    );
    let out = issue(&hsm, "exec", &["--role", "executor", "--issuer", "staging"]);
    assert_clean_failure(&out, "role not delegated");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("CN=staging")
            && stderr.contains("may issue agent certificates, not executor"),
        "{stderr}"
    );
    let out = issue(
        &hsm,
        "approver",
        &[
            "--role", "approver", "--group", "sre", "--issuer", "staging",
        ],
    );
    assert_clean_failure(&out, "role not delegated");
    let out = issue(
        &hsm,
        "agent",
        &[
            "--role", "agent", "--grants", &grants, "--issuer", "staging",
        ],
    );
    common::assert_success(&out, "an agent under staging");

    // A sub-intermediate may not be given more than its issuer has.
    let out = issue_ca(
        &hsm,
        "staging-exec",
        "200d",
        &["--issuer", "staging", "--roles", "agent,executor"],
    );
    assert_clean_failure(&out, "role not delegated");
    assert!(
        !hsm.pkcs11_private_keys().contains("staging-exec"),
        "a refused issue-ca leaves no key behind"
    );

    // Delegated executors: they may be issued, and passed on, but nothing more.
    common::assert_success(
        &issue_ca(&hsm, "ops", "300d", &["--roles", "agent,executor"]),
        "issue-ca ops",
    );
    let out = issue(&hsm, "exec2", &["--role", "executor", "--issuer", "ops"]);
    common::assert_success(&out, "an executor under ops");
    let out = issue(
        &hsm,
        "approver2",
        &["--role", "approver", "--group", "sre", "--issuer", "ops"],
    );
    assert_clean_failure(&out, "role not delegated");
    common::assert_success(
        &issue_ca(
            &hsm,
            "ops-exec",
            "200d",
            &["--issuer", "ops", "--roles", "executor"],
        ),
        "issue-ca ops-exec",
    );
    let out = issue(
        &hsm,
        "exec3",
        &["--role", "executor", "--issuer", "ops-exec"],
    );
    common::assert_success(&out, "an executor under ops-exec");
    let out = issue(
        &hsm,
        "agent3",
        &[
            "--role", "agent", "--grants", &grants, "--issuer", "ops-exec",
        ],
    );
    assert_clean_failure(&out, "role not delegated");

    // The extension is there for every tool to see, and openssl still accepts the chain.
    let chain = hsm.path("exec3.pem");
    let (ok, text) = openssl(
        &[
            "verify",
            "-purpose",
            "sslclient",
            "-CAfile",
            hsm.trust("root.pem").to_str().unwrap(),
            "-untrusted",
            chain.to_str().unwrap(),
            chain.to_str().unwrap(),
        ],
        hsm.dir.path(),
    );
    assert!(ok && text.contains(": OK"), "{text}");
    let (ok, text) = openssl(
        &[
            "x509",
            "-in",
            hsm.path("ops-chain.pem").to_str().unwrap(),
            "-noout",
            "-text",
        ],
        hsm.dir.path(),
    );
    assert!(ok, "{text}");
    assert!(
        text.contains(
            "1.2.840.113556.1.8000.2554.11087.30221.20830.16501.40880.2628193.9833871.3:"
        ),
        "sebIssuableRoles must show:\n{text}"
    );

    // Bad lists are refused before anything is made.
    for bad in ["broker", "agent,nobody", "", "agent,,executor"] {
        let out = issue_ca(&hsm, "bad", "100d", &["--roles", bad]);
        assert_clean_failure(&out, "--roles");
    }
    assert!(!hsm.pkcs11_private_keys().contains("bad"));
}

#[test]
fn executors_and_approvers_from_an_intermediate_without_their_role_count_for_nothing() {
    let hsm = Hsm::initialised();
    let agent = hsm.agent("deploy-bot", GRANTS);
    let executor = hsm.identity("executor", "CN=executor", "executor", &[]);
    // An offline intermediate delegated for agents only (the default) signs an executor and an
    // approver anyway, where its key lives: seb's CA never sees them.
    let (staging, staging_key) = hsm.offline_intermediate("staging-ops", &[]);
    let rogue_executor = hsm.offline_identity(
        "rogue-executor",
        &staging,
        &staging_key,
        Role::new(RoleKind::Executor, vec![]).unwrap(),
    );
    let rogue_approver = hsm.offline_identity(
        "rogue-approver",
        &staging,
        &staging_key,
        Role::new(RoleKind::Approver, vec!["sre-leads".into()]).unwrap(),
    );
    let broker = Broker::start(&hsm);

    let request = json!({"operation": "deploy.rollout", "resource": "staging/api", "params": {}});
    let granted = call_with(
        &hsm,
        &broker,
        &agent,
        "POST",
        "/v1/executions",
        Some(&request),
    );
    assert_eq!(granted.status, 201, "{}", granted.text);
    let token = granted.body["token"].as_str().unwrap().to_owned();
    let id = granted.body["request_id"].as_str().unwrap().to_owned();
    let redeem = json!({ "token": token });

    // The rogue executor cannot burn the token.
    let r = call_with(
        &hsm,
        &broker,
        &rogue_executor,
        "POST",
        "/v1/tokens/redeem",
        Some(&redeem),
    );
    assert_eq!(r.status, 403, "{}", r.text);
    assert_eq!(code(&r), "role_not_delegated", "{}", r.text);
    assert!(
        r.text
            .contains("may issue agent certificates, not executor"),
        "{}",
        r.text
    );
    // The rogue approver's role does not count either, on any route that needs one.
    let r = call(
        &hsm,
        &broker,
        &rogue_approver,
        "GET",
        &format!("/v1/executions/{id}"),
    );
    assert_eq!(r.status, 403, "{}", r.text);
    assert_eq!(code(&r), "role_not_delegated", "{}", r.text);

    // The broker's own executor redeems it: the refused attempt burned nothing.
    let r = call_with(
        &hsm,
        &broker,
        &executor,
        "POST",
        "/v1/tokens/redeem",
        Some(&redeem),
    );
    assert_eq!(r.status, 200, "{}", r.text);

    // Control: an intermediate delegated executors vouches for its executor.
    let (exec_ops, exec_key) = hsm.offline_intermediate("exec-ops", &["--roles", "executor"]);
    let delegated = hsm.offline_identity(
        "delegated-executor",
        &exec_ops,
        &exec_key,
        Role::new(RoleKind::Executor, vec![]).unwrap(),
    );
    let granted = call_with(
        &hsm,
        &broker,
        &agent,
        "POST",
        "/v1/executions",
        Some(&request),
    );
    assert_eq!(granted.status, 201, "{}", granted.text);
    let redeem = json!({ "token": granted.body["token"] });
    let r = call_with(
        &hsm,
        &broker,
        &delegated,
        "POST",
        "/v1/tokens/redeem",
        Some(&redeem),
    );
    assert_eq!(r.status, 200, "{}", r.text);
}

/// Runs `seb --config <hsm> ARGS`, killing it after `secs` seconds (a test failure).
fn seb_within(hsm: &Hsm, secs: u64, args: &[&str]) -> std::process::Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_seb"))
        .arg("--config")
        .arg(hsm.config())
        .args(args)
        .current_dir(hsm.dir.path())
        .env_remove("SEB_CONFIG")
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run seb");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(secs);
    while child.try_wait().unwrap().is_none() {
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            let out = child.wait_with_output().unwrap();
            panic!(
                "seb {args:?} did not finish within {secs} s:\n{}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    child.wait_with_output().unwrap()
}

/// `openssl s_server` on a free loopback port; killed on drop.
struct TlsServer {
    child: Child,
    port: u16,
}

impl TlsServer {
    fn start(dir: &std::path::Path, cert: &str, key: &str, chain: &str) -> Self {
        let port = common::free_port();
        let child = Command::new("openssl")
            .args(["s_server", "-accept", &format!("127.0.0.1:{port}")])
            .args(["-cert", cert, "-key", key, "-cert_chain", chain, "-www"])
            .current_dir(dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("openssl is installed");
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                std::time::Instant::now() < deadline,
                "openssl s_server did not start"
            );
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        Self { child, port }
    }
}

impl Drop for TlsServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn seb_request_refuses_a_tls_server_certificate_that_the_root_did_not_issue_directly() {
    let hsm = Hsm::initialised();
    let agent = hsm.agent("deploy-bot", GRANTS);
    let dir = hsm.dir.path();
    let ossl = |args: &[&str]| {
        let (ok, text) = openssl(args, dir);
        assert!(ok, "openssl {args:?}: {text}");
        text
    };
    // An offline intermediate, certified by the root for agents only; its key is in a file.
    ossl(&[
        "ecparam",
        "-name",
        "secp384r1",
        "-genkey",
        "-noout",
        "-out",
        "ops.key",
    ]);
    ossl(&[
        "req",
        "-new",
        "-key",
        "ops.key",
        "-subj",
        "/CN=staging-ops",
        "-out",
        "ops.csr",
    ]);
    hsm.seb_ok(&[
        "cert",
        "issue-ca",
        "--label",
        "staging-ops",
        "--csr",
        "ops.csr",
        "--ttl",
        "30d",
        "--out",
        "ops.pem",
    ]);
    // Its holder makes a TLS server certificate for the broker's name and serves it.
    std::fs::write(
        hsm.path("server.ext"),
        "basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature\n\
         extendedKeyUsage=serverAuth\nsubjectAltName=IP:127.0.0.1,DNS:localhost\n\
         subjectKeyIdentifier=hash\nauthorityKeyIdentifier=keyid\n",
    )
    .unwrap();
    ossl(&[
        "ecparam",
        "-name",
        "secp384r1",
        "-genkey",
        "-noout",
        "-out",
        "server.key",
    ]);
    ossl(&[
        "req",
        "-new",
        "-key",
        "server.key",
        "-subj",
        "/CN=seb-dev broker",
        "-out",
        "server.csr",
    ]);
    ossl(&[
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ops.pem",
        "-CAkey",
        "ops.key",
        "-CAcreateserial",
        "-days",
        "1",
        "-sha384",
        "-extfile",
        "server.ext",
        "-out",
        "server.pem",
    ]);
    // To a generic TLS client that pins the root it is a perfectly good server certificate.
    let text = ossl(&[
        "verify",
        "-purpose",
        "sslserver",
        "-CAfile",
        hsm.trust("root.pem").to_str().unwrap(),
        "-untrusted",
        "ops.pem",
        "server.pem",
    ]);
    assert!(text.contains(": OK"), "{text}");

    let server = TlsServer::start(dir, "server.pem", "server.key", "ops.pem");
    // With a deadline: a client that accepts the server would send its request to an HTTP
    // server that never ends its answer.
    let impostor = format!("https://127.0.0.1:{}", server.port);
    let request_at = |broker: &str, ca: &std::path::Path| {
        seb_within(
            &hsm,
            30,
            &[
                "request",
                "--broker",
                broker,
                "--ca",
                ca.to_str().unwrap(),
                "--cert",
                agent.cert.to_str().unwrap(),
                "--key",
                agent.key.to_str().unwrap(),
                "--operation",
                "deploy.rollout",
                "--resource",
                "staging/api",
            ],
        )
    };
    let out = request_at(&impostor, &hsm.trust("root.pem"));
    assert_clean_failure(&out, "not issued directly by the root");
    assert!(out.stdout.is_empty(), "nothing was sent to it");
    // The same with the intermediate in the --ca file beside the root (as the bundle
    // `/v1/trust` serves holds intermediates): it is not a root, so it certifies no broker.
    let both = hsm.path("root-and-ops.pem");
    std::fs::write(
        &both,
        [hsm.trust("root.pem"), hsm.path("ops.pem")]
            .map(|f| std::fs::read_to_string(f).unwrap())
            .concat(),
    )
    .unwrap();
    let out = request_at(&impostor, &both);
    assert_clean_failure(&out, "not issued directly by the root");
    assert!(out.stdout.is_empty(), "nothing was sent to it");
    // The intermediate alone pins nothing.
    let out = request_at(&impostor, &hsm.path("ops.pem"));
    assert_clean_failure(&out, "holds no self-signed root certificate");

    // Control: the same client against the real broker, whose certificate the root issued,
    // pinned through the file with the intermediate in it.
    let broker = Broker::start(&hsm);
    let out = request_at(&broker.url, &both);
    common::assert_success(&out, "seb request against the broker");
}

#[test]
fn a_chain_seb_cannot_read_gets_a_403_with_a_code_not_a_reset() {
    // Chains that pass the TLS handshake (the WebPKI checks) but that seb refuses to read: a
    // leaf with an extension twice, and more certificates than seb looks at. The caller gets
    // `403` with a code and why, not a connection reset with nothing to go on.
    use p384::elliptic_curve::Generate;
    use p384::pkcs8::EncodePrivateKey;
    let hsm = Hsm::initialised();
    let (team, team_key) = hsm.offline_intermediate("team", &[]);
    let role = seb::ca::role_extension(&Role::new(RoleKind::Agent, vec![]).unwrap()).unwrap();
    let key = p384::ecdsa::SigningKey::try_generate().unwrap();
    let twice =
        common::offline_leaf_der(&team, &team_key, "CN=twice", vec![role.clone(), role], &key);
    let pem =
        |der: &[u8]| der::pem::encode_string("CERTIFICATE", der::pem::LineEnding::LF, der).unwrap();
    let key_path = hsm.path("twice.key");
    std::fs::write(
        &key_path,
        key.to_pkcs8_pem(p384::pkcs8::LineEnding::LF)
            .unwrap()
            .as_bytes(),
    )
    .unwrap();
    let team_pem = team.to_pem_string().unwrap();
    let chain = hsm.path("twice.pem");
    std::fs::write(&chain, format!("{}{team_pem}", pem(&twice))).unwrap();
    // A good leaf of the same intermediate, sent with the intermediate nine times over.
    let good = hsm.offline_identity(
        "good",
        &team,
        &team_key,
        Role::new(RoleKind::Agent, vec![]).unwrap(),
    );
    let leaf = std::fs::read_to_string(&good.cert).unwrap();
    let long = hsm.path("long.pem");
    std::fs::write(&long, format!("{leaf}{}", team_pem.repeat(8))).unwrap();
    let broker = Broker::start(&hsm);

    for (cert, key, code, why) in [
        (&chain, &key_path, "bad_certificate", "more than once"),
        (
            &long,
            &good.key,
            "bad_certificate",
            "chain_too_large: 10 certificates offered",
        ),
    ] {
        let out = Command::new("curl")
            .args(["-sS", "--cacert"])
            .arg(hsm.trust("root.pem"))
            .arg("--cert")
            .arg(cert)
            .arg("--key")
            .arg(key)
            .arg("-D")
            .arg(hsm.path("headers.txt"))
            .args(["-w", "\n%{http_code}"])
            .arg(format!("{}/v1/grants", broker.url))
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        let (body, status) = text.rsplit_once('\n').unwrap();
        // The headers every answer carries.
        let headers = std::fs::read_to_string(hsm.path("headers.txt")).unwrap();
        for header in ["x-request-id: ", "cache-control: no-store"] {
            assert!(headers.contains(header), "{header}: {headers}");
        }
        assert_eq!(
            status,
            "403",
            "{code}: {text} {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let body: Value = serde_json::from_str(body).unwrap();
        assert_eq!(body["error"]["code"], code, "{body}");
        assert!(
            body["error"]["message"].as_str().unwrap().contains(why),
            "{body}"
        );
    }
}

/// A broker that stops answering (frozen: its port still accepts connections, nothing more)
/// makes `seb request` fail with what happened, not hang: the connection and its handshake
/// have 30 s.
#[test]
fn seb_request_gives_up_on_a_broker_that_stops_answering() {
    let hsm = Hsm::initialised();
    let agent = hsm.agent("deploy-bot", GRANTS);
    let broker = Broker::start(&hsm);
    let pid = broker.child.as_ref().unwrap().id().to_string();
    let signal = |sig: &str| {
        let ok = Command::new("kill")
            .args([sig, &pid])
            .status()
            .unwrap()
            .success();
        assert!(ok, "kill {sig}");
    };
    signal("-STOP");
    let out = seb_within(
        &hsm,
        50,
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
            "deploy.rollout",
            "--resource",
            "staging/api",
        ],
    );
    signal("-CONT");
    assert_clean_failure(&out, "gave no answer within 30 s");
    assert!(out.stdout.is_empty());
}
