//! The agents' side (issue 18), each test against a real broker on its own SoftHSM2 token
//! (and, where an executor is involved, a real `seb exec`), over real mutual TLS:
//!
//! * `GET /v1/grants`: the agent's own authority as the decision applies it;
//! * the Python package `clients/python` (pytest, run here with the deployment in its
//!   environment): client, LangChain tools and the independent executor-side verifier;
//! * the Go executor `examples/go-executor` (standard library only), built and run;
//! * Node's `jose` verifying a token.
//!
//! Every verifier is shown the same tokens, which seb's own verifier is first shown to reject
//! (`Deployment::rejected_cases`). Python, Go, Node and jose come from deploy/install-deps.sh;
//! a missing one fails the test, never skips it.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::time::Duration;

use common::{runtime, Broker, Hsm, Identity};
use seb::cert::Certificate;
use seb::client::{ApiResponse, Client};
use seb::grants::{GrantSet, Role, RoleKind};
use serde_json::{json, Value};

/// Grants with every kind of constraint, an approval rule and a wildcard grant.
const AGENT_GRANTS: &str = r#"
[[grant]]
operation = "deploy.rollout"
resource  = "prod/payments/*"
max_ttl   = "45s"
params.replicas = { min = 1, max = 10 }
params.image    = { prefix = "registry.internal/payments/" }
params.strategy = { one_of = ["rolling", "canary"] }
params.region   = { equals = "eu-west-1" }
approval  = { required = 2, group = "sre-leads" }

[[grant]]
operation = "k8s.read.*"
resource  = "prod/**"
max_ttl   = "30m"
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
    let tls = hsm.tls(who, false);
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
        .unwrap_or_else(|| panic!("no error code in {} {}", r.status, r.text))
}

fn leaf(path: &std::path::Path) -> Certificate {
    Certificate::parse_pem_chain(&std::fs::read(path).unwrap())
        .unwrap()
        .remove(0)
}

fn unix(t: std::time::SystemTime) -> u64 {
    t.duration_since(std::time::UNIX_EPOCH).unwrap().as_secs()
}

/// Polls `GET /v1/grants` until `pred` holds (the broker re-reads its policy every 250 ms).
fn grants_until(
    hsm: &Hsm,
    broker: &Broker,
    who: &Identity,
    pred: impl Fn(&Value) -> bool,
) -> Value {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let r = call(hsm, broker, who, "GET", "/v1/grants");
        assert_eq!(r.status, 200, "{}", r.text);
        if pred(&r.body) {
            return r.body;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "never reached: {}",
            r.text
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// An agent certificate signed by an offline intermediate (software key, bypassing seb's CA
/// and so its attenuation check), written as `NAME.pem` (leaf + intermediate) and `NAME.key`.
fn offline_agent(
    hsm: &Hsm,
    name: &str,
    issuer: &Certificate,
    issuer_key: &p384::ecdsa::SigningKey,
    grants: &str,
) -> Identity {
    use p384::elliptic_curve::Generate;
    use p384::pkcs8::EncodePrivateKey;
    let key = p384::ecdsa::SigningKey::try_generate().unwrap();
    let leaf = common::offline_leaf(
        issuer,
        issuer_key,
        &format!("CN={name}"),
        Role::new(RoleKind::Agent, vec![]).unwrap(),
        Some(GrantSet::from_toml_str(grants).unwrap()),
        &key,
    );
    let cert = hsm.path(&format!("{name}.pem"));
    std::fs::write(
        &cert,
        format!(
            "{}{}",
            leaf.to_pem_string().unwrap(),
            issuer.to_pem_string().unwrap()
        ),
    )
    .unwrap();
    let key_path = hsm.path(&format!("{name}.key"));
    let pem = key.to_pkcs8_pem(p384::pkcs8::LineEnding::LF).unwrap();
    std::fs::write(&key_path, pem.as_bytes()).unwrap();
    Identity {
        cert,
        key: key_path,
    }
}

#[test]
fn get_grants_shows_the_agent_exactly_what_the_decision_applies() {
    let hsm = Hsm::initialised();
    let agent = hsm.agent("deploy-bot", AGENT_GRANTS);
    let executor = hsm.identity("executor", "CN=executor", "executor", &[]);
    let approver = hsm.identity("alice", "CN=alice", "approver", &["--group", "sre-leads"]);
    // An offline intermediate bounded to deploys and reads of payments; one agent below it
    // stays within, one was signed for more than the intermediate holds.
    let ops = hsm.grants_file(
        "ops.toml",
        "[[grant]]\noperation = \"k8s.read.*\"\nresource = \"prod/payments/**\"\nmax_ttl = \"10m\"\nparams_any = true\n",
    );
    let (ops_cert, ops_key) = hsm.offline_intermediate("ops", &["--grants", &ops]);
    let within = offline_agent(
        &hsm,
        "within",
        &ops_cert,
        &ops_key,
        "[[grant]]\noperation = \"k8s.read.pods\"\nresource = \"prod/payments/*\"\nmax_ttl = \"5m\"\nparams_any = true\n",
    );
    let escalated = offline_agent(
        &hsm,
        "escalated",
        &ops_cert,
        &ops_key,
        "[[grant]]\noperation = \"k8s.read.*\"\nresource = \"prod/**\"\nmax_ttl = \"5m\"\nparams_any = true\n",
    );
    let broker = Broker::start(&hsm);

    let r = call(&hsm, &broker, &agent, "GET", "/v1/grants");
    assert_eq!(r.status, 200, "{}", r.text);
    let mine = &r.body;
    let cert = leaf(&agent.cert);
    assert_eq!(mine["subject"], "CN=deploy-bot");
    assert_eq!(
        mine["x5t#S256"],
        seb::base64url::encode(&cert.thumbprint_sha256().unwrap())
    );
    assert_eq!(mine["not_after"], unix(cert.not_after()));
    // Root and leaf: the leaf (30 days) expires first.
    assert_eq!(mine["chain_not_after"], unix(cert.not_after()));
    assert_eq!(mine["epoch"], 1);
    assert_eq!(mine["frozen"], false);
    assert_eq!(mine["bounded_by"], json!([]));
    let cap = mine["max_token_ttl"].as_u64().unwrap();
    assert!(cap > 0, "{mine}");
    assert_eq!(
        mine["grants"],
        json!([
            {
                "index": 0, "operation": "deploy.rollout", "resource": "prod/payments/*",
                "max_ttl": 45, "token_ttl": 45.min(cap),
                "params": {
                    "image": {"prefix": "registry.internal/payments/"},
                    "region": {"equals": "eu-west-1"},
                    "replicas": {"min": 1, "max": 10},
                    "strategy": {"one_of": ["rolling", "canary"]}
                },
                "params_any": false,
                "approval": {"required": 2, "group": "sre-leads"}
            },
            {
                "index": 1, "operation": "k8s.read.*", "resource": "prod/**",
                "max_ttl": 1800, "token_ttl": 1800.min(cap),
                "params": {}, "params_any": true, "approval": null
            }
        ]),
        "{mine}"
    );

    // What it was shown is what a request gets: a read is granted with a token of exactly
    // `token_ttl`; the deploy waits for the two approvals the grant names.
    let r = call_with(
        &hsm,
        &broker,
        &agent,
        "POST",
        "/v1/executions",
        Some(&json!({"operation": "k8s.read.pods", "resource": "prod/payments/api", "params": {}})),
    );
    assert_eq!(r.status, 201, "{}", r.text);
    let claims = token_claims(r.body["token"].as_str().unwrap());
    assert_eq!(
        claims["exp"].as_u64().unwrap() - claims["iat"].as_u64().unwrap(),
        mine["grants"][1]["token_ttl"].as_u64().unwrap()
    );
    let r = call_with(
        &hsm,
        &broker,
        &agent,
        "POST",
        "/v1/executions",
        Some(
            &json!({"operation": "deploy.rollout", "resource": "prod/payments/api",
            "params": {"replicas": 3, "image": "registry.internal/payments/api:1",
                       "strategy": "canary", "region": "eu-west-1"}}),
        ),
    );
    assert_eq!(r.status, 202, "{}", r.text);
    assert_eq!(
        (&r.body["approvals_required"], &r.body["approval_group"]),
        (&json!(2), &json!("sre-leads"))
    );

    // Below an intermediate with grants: it is named, and its grants bound the agent's.
    let r = call(&hsm, &broker, &within, "GET", "/v1/grants");
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.body["bounded_by"], json!(["CN=ops"]), "{}", r.text);
    assert_eq!(r.body["grants"].as_array().unwrap().len(), 1);
    assert_eq!(r.body["grants"][0]["operation"], "k8s.read.pods");
    assert_eq!(
        r.body["chain_not_after"],
        unix(leaf(&within.cert).not_after()).min(unix(ops_cert.not_after()))
    );
    // A chain that escalates past its intermediate authorizes nothing: the route says so with
    // the code a request gets, and shows no grant.
    let r = call(&hsm, &broker, &escalated, "GET", "/v1/grants");
    assert_eq!(
        (r.status, code(&r)),
        (403, "grant_chain_escalation"),
        "{}",
        r.text
    );
    assert!(r.body.get("grants").is_none());
    let r = call_with(
        &hsm,
        &broker,
        &escalated,
        "POST",
        "/v1/executions",
        Some(&json!({"operation": "k8s.read.pods", "resource": "prod/payments/api", "params": {}})),
    );
    assert_eq!(
        (r.status, code(&r)),
        (403, "grant_chain_escalation"),
        "{}",
        r.text
    );

    // Agents only.
    for who in [&executor, &approver] {
        let r = call(&hsm, &broker, who, "GET", "/v1/grants");
        assert_eq!((r.status, code(&r)), (403, "wrong_role"), "{}", r.text);
    }

    // The kill switches show without a restart.
    hsm.seb_ok(&["epoch", "bump"]);
    hsm.seb_ok(&["freeze", "--reason", "incident 7"]);
    let now = grants_until(&hsm, &broker, &agent, |v| {
        v["epoch"] == 2 && v["frozen"] == true
    });
    assert_eq!(now["grants"], mine["grants"]);
    hsm.seb_ok(&["unfreeze"]);
    grants_until(&hsm, &broker, &agent, |v| v["frozen"] == false);

    // Revoked: nothing more to show.
    hsm.seb_ok(&[
        "cert",
        "revoke",
        "--serial",
        &cert.serial_hex(),
        "--reason",
        "key-compromise",
    ]);
    let r = call(&hsm, &broker, &agent, "GET", "/v1/grants");
    assert_eq!(
        (r.status, code(&r)),
        (403, "certificate_revoked"),
        "{}",
        r.text
    );
}

fn token_claims(token: &str) -> Value {
    token_part(token, 1)
}

fn token_header(token: &str) -> Value {
    token_part(token, 0)
}

fn token_part(token: &str, n: usize) -> Value {
    let part = token.split('.').nth(n).unwrap();
    serde_json::from_slice(&seb::base64url::decode(part).unwrap()).unwrap()
}

// -- A whole deployment for the clients in other languages ------------------------------------

/// Grants of the agent the Python, Go and Node tests drive: a write the executors run (of
/// `release-` files only after two approvals; the first grant that allows wins), a deploy that
/// needs two approvers, and a one-second grant for expired tokens.
const CLIENT_GRANTS: &str = r#"
[[grant]]
operation = "demo.write"
resource  = "demo/files"
max_ttl   = "60s"
params.name = { prefix = "release-" }
params_any = true
approval  = { required = 2, group = "sre-leads" }

[[grant]]
operation = "demo.write"
resource  = "demo/files"
max_ttl   = "60s"
params_any = true

[[grant]]
operation = "deploy.rollout"
resource  = "prod/payments/*"
max_ttl   = "60s"
params.replicas = { min = 1, max = 10 }
approval  = { required = 2, group = "sre-leads" }

[[grant]]
operation = "demo.brief"
resource  = "demo/files"
max_ttl   = "1s"
params_any = true
"#;

/// A broker and a reference executor (`seb exec`) on their own SoftHSM2 token, with an agent,
/// a second agent, two approvers and the trust bundle fetched from `GET /v1/trust`.
struct Deployment {
    hsm: Hsm,
    broker: Broker,
    exec: common::Executor,
    agent: Identity,
    other: Identity,
    alice: Identity,
    bob: Identity,
    executor: Identity,
    trust: std::path::PathBuf,
    out: std::path::PathBuf,
}

fn deployment() -> Deployment {
    let hsm = Hsm::initialised();
    let executor = common::exec::identity(&hsm);
    let agent = hsm.agent("agent", CLIENT_GRANTS);
    let other = hsm.agent("other", CLIENT_GRANTS);
    let alice = hsm.identity("alice", "CN=alice", "approver", &["--group", "sre-leads"]);
    let bob = hsm.identity("bob", "CN=bob", "approver", &["--group", "sre-leads"]);
    let broker = Broker::start(&hsm);
    let (exec, out) = common::Executor::demo_write(&hsm, &broker);
    let r = call(&hsm, &broker, &agent, "GET", "/v1/trust");
    assert_eq!(r.status, 200, "{}", r.text);
    let trust = hsm.path("trust-bundle.pem");
    std::fs::write(&trust, &r.text).unwrap();
    Deployment {
        hsm,
        broker,
        exec,
        agent,
        other,
        alice,
        bob,
        executor,
        trust,
        out,
    }
}

impl Deployment {
    /// A token for `params` under the `demo.write` grant (or another operation).
    fn token(&self, operation: &str, params: &Value) -> String {
        let r = call_with(
            &self.hsm,
            &self.broker,
            &self.agent,
            "POST",
            "/v1/executions",
            Some(&json!({"operation": operation, "resource": "demo/files", "params": params})),
        );
        assert_eq!(r.status, 201, "{}", r.text);
        r.body["token"].as_str().unwrap().to_owned()
    }

    /// A token for `params` under the `demo.write` grant that needs two approvals: requested,
    /// approved by alice and bob with `seb approve`, and fetched once granted.
    fn approved_token(&self, params: &Value) -> String {
        let r = call_with(
            &self.hsm,
            &self.broker,
            &self.agent,
            "POST",
            "/v1/executions",
            Some(&json!({"operation": "demo.write", "resource": "demo/files", "params": params})),
        );
        assert_eq!(r.status, 202, "{}", r.text);
        let id = r.body["request_id"].as_str().unwrap().to_owned();
        let root = self.hsm.trust("root.pem");
        for who in [&self.alice, &self.bob] {
            self.hsm.seb_ok(&[
                "approve",
                "--broker",
                &self.broker.url,
                "--ca",
                root.to_str().unwrap(),
                "--cert",
                who.cert.to_str().unwrap(),
                "--key",
                who.key.to_str().unwrap(),
                &id,
            ]);
        }
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            let r = call(
                &self.hsm,
                &self.broker,
                &self.agent,
                "GET",
                &format!("/v1/executions/{id}"),
            );
            if let Some(token) = r.body["token"].as_str() {
                return token.to_owned();
            }
            assert!(
                std::time::Instant::now() < deadline,
                "never granted: {}",
                r.text
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// What seb's own verifier says of `token` for this action and agent certificate.
    fn rust_verdict(
        &self,
        token: &str,
        operation: &str,
        params: &Value,
        agent: &Identity,
    ) -> String {
        use seb::verify::{verify_token, Action, Binding, Expectations, Params, TrustStore};
        let trust = TrustStore::from_pem(&std::fs::read(&self.trust).unwrap()).unwrap();
        let action = Action::new(
            operation,
            "demo/files",
            Params::parse(params.to_string().as_bytes()).unwrap(),
        );
        let expect = Expectations::new(
            std::time::SystemTime::now(),
            action,
            Binding::agent(leaf(&agent.cert)),
        );
        match verify_token(token, &trust, &expect) {
            Ok(_) => "ok".into(),
            Err(e) => e.code().into(),
        }
    }

    /// Tokens seb's verifier rejects, each with its code, checked here: a forged claim under
    /// the broker's signature, a token signed by a key outside the HSM, an expired token, a
    /// token presented with other parameters or by another agent, and the high-S respelling of
    /// a good token. Plus the good token itself, which must pass.
    fn rejected_cases(&self) -> Vec<Case> {
        let params = json!({"name": "v.txt", "text": "verified"});
        let good = self.token("demo.write", &params);
        let parts: Vec<&str> = good.split('.').collect();

        let mut claims = token_claims(&good);
        claims["authorization_details"][0]["resource"] = json!("demo/other");
        let forged = format!(
            "{}.{}.{}",
            parts[0],
            seb::base64url::encode(claims.to_string().as_bytes()),
            parts[2]
        );

        let foreign = {
            use p384::ecdsa::signature::Signer;
            use p384::elliptic_curve::Generate;
            let key = p384::ecdsa::SigningKey::try_generate().unwrap();
            let input = format!("{}.{}", parts[0], parts[1]);
            let sig: p384::ecdsa::Signature = key.sign(input.as_bytes());
            format!("{input}.{}", seb::base64url::encode(&sig.to_bytes()))
        };

        let high_s = {
            let raw = seb::base64url::decode(parts[2]).unwrap();
            let (r, s) = raw.split_at(48);
            let mut flipped = r.to_vec();
            flipped.extend(sub_be(&P384_ORDER, s));
            format!(
                "{}.{}.{}",
                parts[0],
                parts[1],
                seb::base64url::encode(&flipped)
            )
        };

        let brief_params = json!({"name": "brief.txt", "text": "too late"});
        let brief = self.token("demo.brief", &brief_params);
        let exp = token_claims(&brief)["exp"].as_u64().unwrap();
        while unix(std::time::SystemTime::now()) < exp {
            std::thread::sleep(Duration::from_millis(200));
        }

        let other_params = json!({"name": "v.txt", "text": "other"});
        let case = |name: &'static str,
                    token: &str,
                    operation: &'static str,
                    params: &Value,
                    other: bool,
                    code: &'static str| Case {
            name,
            token: token.to_owned(),
            operation,
            params: params.clone(),
            other,
            code,
        };
        let cases = vec![
            case(
                "forged",
                &forged,
                "demo.write",
                &params,
                false,
                "bad_signature",
            ),
            case(
                "foreign_key",
                &foreign,
                "demo.write",
                &params,
                false,
                "bad_signature",
            ),
            case(
                "high_s",
                &high_s,
                "demo.write",
                &params,
                false,
                "non_canonical_signature",
            ),
            case(
                "expired",
                &brief,
                "demo.brief",
                &brief_params,
                false,
                "token_expired",
            ),
            case(
                "other_params",
                &good,
                "demo.write",
                &other_params,
                false,
                "wrong_params",
            ),
            case(
                "other_agent",
                &good,
                "demo.write",
                &params,
                true,
                "wrong_certificate",
            ),
            case("good", &good, "demo.write", &params, false, "ok"),
        ];
        for c in &cases {
            assert_eq!(
                self.rust_verdict(&c.token, c.operation, &c.params, self.presenter(c)),
                c.code,
                "seb's verifier on the {} case",
                c.name
            );
        }
        cases
    }

    fn presenter(&self, case: &Case) -> &Identity {
        if case.other {
            &self.other
        } else {
            &self.agent
        }
    }

    /// The cases as JSON, for the verifiers in other languages.
    fn write_cases(&self, cases: &[Case]) -> std::path::PathBuf {
        let out: Vec<Value> = cases
            .iter()
            .map(|c| {
                json!({
                    "name": c.name, "token": c.token, "operation": c.operation,
                    "resource": "demo/files", "params": c.params.to_string(),
                    "agent_cert": self.presenter(c).cert, "code": c.code,
                })
            })
            .collect();
        let path = self.hsm.path("verifier-cases.json");
        std::fs::write(&path, serde_json::to_vec_pretty(&out).unwrap()).unwrap();
        path
    }

    /// The environment the tests in other languages read.
    fn env(&self, cases: &std::path::Path) -> Vec<(String, String)> {
        let p = |path: &std::path::Path| path.display().to_string();
        vec![
            ("SEB_BROKER_URL".into(), self.broker.url.clone()),
            ("SEB_EXECUTOR_URL".into(), self.exec.url.clone()),
            ("SEB_ROOT".into(), p(&self.hsm.trust("root.pem"))),
            ("SEB_TRUST".into(), p(&self.trust)),
            ("SEB_AGENT_CERT".into(), p(&self.agent.cert)),
            ("SEB_AGENT_KEY".into(), p(&self.agent.key)),
            ("SEB_OTHER_CERT".into(), p(&self.other.cert)),
            ("SEB_OTHER_KEY".into(), p(&self.other.key)),
            ("SEB_ALICE_CERT".into(), p(&self.alice.cert)),
            ("SEB_ALICE_KEY".into(), p(&self.alice.key)),
            ("SEB_BOB_CERT".into(), p(&self.bob.cert)),
            ("SEB_BOB_KEY".into(), p(&self.bob.key)),
            ("SEB_AUDIT_CERT".into(), p(&self.hsm.trust("audit.pem"))),
            ("SEB_OUT_DIR".into(), p(&self.out)),
            ("SEB_CASES".into(), p(cases)),
        ]
    }
}

/// A token, the action it is presented for, who presents it, and seb's verdict.
struct Case {
    name: &'static str,
    token: String,
    operation: &'static str,
    params: Value,
    /// Presented by the second agent instead of the one it was issued to.
    other: bool,
    code: &'static str,
}

/// The order n of P-384, big-endian.
const P384_ORDER: [u8; 48] = [
    0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
    0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xc7, 0x63, 0x4d, 0x81, 0xf4, 0x37, 0x2d, 0xdf,
    0x58, 0x1a, 0x0d, 0xb2, 0x48, 0xb0, 0xa7, 0x7a, 0xec, 0xec, 0x19, 0x6a, 0xcc, 0xc5, 0x29, 0x73,
];

/// a − b for big-endian numbers of the same length, a ≥ b.
fn sub_be(a: &[u8], b: &[u8]) -> Vec<u8> {
    let mut out = vec![0u8; a.len()];
    let mut borrow = 0i16;
    for i in (0..a.len()).rev() {
        let mut d = a[i] as i16 - b[i] as i16 - borrow;
        borrow = i16::from(d < 0);
        if d < 0 {
            d += 256;
        }
        out[i] = d as u8;
    }
    out
}

/// A TLS server certificate for 127.0.0.1 that chains to the root through an offline
/// intermediate (certified by the root for agents only, its key in a file): what a client that
/// only checks the chain would take for the broker. Returns (chain PEM, key PEM) paths.
fn impostor_server_certificate(hsm: &Hsm) -> (std::path::PathBuf, std::path::PathBuf) {
    let dir = hsm.dir.path();
    let ossl = |args: &[&str]| {
        let (ok, text) = common::openssl(args, dir);
        assert!(ok, "openssl {args:?}: {text}");
    };
    let key = |name: &str| {
        ossl(&[
            "ecparam",
            "-name",
            "secp384r1",
            "-genkey",
            "-noout",
            "-out",
            name,
        ]);
    };
    key("impostor-ca.key");
    ossl(&[
        "req",
        "-new",
        "-key",
        "impostor-ca.key",
        "-subj",
        "/CN=impostor-ops",
        "-out",
        "impostor-ca.csr",
    ]);
    hsm.seb_ok(&[
        "cert",
        "issue-ca",
        "--label",
        "impostor-ops",
        "--csr",
        "impostor-ca.csr",
        "--ttl",
        "30d",
        "--out",
        "impostor-ca.pem",
    ]);
    std::fs::write(
        hsm.path("impostor.ext"),
        // serverAuth for the broker's address, and sebRole executor: what a team CA (agents
        // only) would mint to pass for the broker or for an executor.
        "basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature\n\
         extendedKeyUsage=serverAuth\nsubjectAltName=IP:127.0.0.1,DNS:localhost\n\
         1.2.840.113556.1.8000.2554.11087.30221.20830.16501.40880.2628193.9833871.2=DER:30:05:0A:01:02:30:00\n",
    )
    .unwrap();
    key("impostor.key");
    ossl(&[
        "req",
        "-new",
        "-key",
        "impostor.key",
        "-subj",
        "/CN=seb-dev broker",
        "-out",
        "impostor.csr",
    ]);
    ossl(&[
        "x509",
        "-req",
        "-in",
        "impostor.csr",
        "-CA",
        "impostor-ca.pem",
        "-CAkey",
        "impostor-ca.key",
        "-CAcreateserial",
        "-days",
        "1",
        "-sha384",
        "-extfile",
        "impostor.ext",
        "-out",
        "impostor.pem",
    ]);
    let chain = hsm.path("impostor-chain.pem");
    let mut pem = std::fs::read(hsm.path("impostor.pem")).unwrap();
    pem.extend(std::fs::read(hsm.path("impostor-ca.pem")).unwrap());
    std::fs::write(&chain, pem).unwrap();
    (chain, hsm.path("impostor.key"))
}

/// The Python interpreter of the virtual environment `deploy/install-deps.sh` makes
/// (`SEB_PYTHON` overrides it). Missing, the test fails: it is never skipped.
fn python() -> String {
    let python = std::env::var("SEB_PYTHON")
        .unwrap_or_else(|_| "/var/lib/seb-ci/agents-venv/bin/python".into());
    assert!(
        std::path::Path::new(&python).exists(),
        "{python} not found: run deploy/install-deps.sh (it makes the Python virtual environment)"
    );
    python
}

#[test]
fn python_client_verifier_and_langchain_tool_against_a_real_broker_and_executor() {
    let d = deployment();
    let cases = d.rejected_cases();
    let cases = d.write_cases(&cases);
    let (impostor_cert, impostor_key) = impostor_server_certificate(&d.hsm);
    let out = std::process::Command::new(python())
        .args([
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            "clients/python/tests",
        ])
        .current_dir(common::repo())
        .envs(d.env(&cases))
        .env("SEB_IMPOSTOR_CERT", impostor_cert)
        .env("SEB_IMPOSTOR_KEY", impostor_key)
        .env("PYTHONPATH", common::repo().join("clients/python"))
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .output()
        .expect("run pytest");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "pytest failed:\n{text}");
    // Every test ran and passed: none skipped, none deselected.
    assert!(
        !text.contains("skipped") && !text.contains("deselected") && text.contains(" passed"),
        "{text}"
    );
}

/// A `go` toolchain (Debian's golang-go, installed by deploy/install-deps.sh): missing, the
/// test fails; it is never skipped.
fn go(args: &[&str], dir: &std::path::Path) -> std::process::Output {
    let out = std::process::Command::new("go")
        .args(args)
        .current_dir(dir)
        // Standard library only: no module downloads.
        .env("GOPROXY", "off")
        .env("GOFLAGS", "")
        .output();
    let out = out.unwrap_or_else(|e| {
        panic!(
            "`go` is not installed: install Debian's golang-go (deploy/install-deps.sh does): {e}"
        )
    });
    assert!(
        out.status.success(),
        "go {args:?} failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// The Go executor example (examples/go-executor), built and running; killed on drop.
struct GoExecutor {
    child: std::process::Child,
    url: String,
}

impl Drop for GoExecutor {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts the Go executor built at `binary`, trusting the approvers in the PEM file `approvers`.
fn start_go_executor(
    d: &Deployment,
    binary: &std::path::Path,
    dir: &std::path::Path,
    approvers: &std::path::Path,
) -> GoExecutor {
    let log = d.hsm.path(&format!(
        "go-executor-{}.log",
        approvers.file_stem().unwrap().to_str().unwrap()
    ));
    let (child, url) = common::spawn_serving(
        std::process::Command::new(binary)
            .args(["-listen", &format!("127.0.0.1:{}", common::free_port())])
            .args(["-approvers", approvers.to_str().unwrap()])
            .args(["-broker", &d.broker.url, "-broker-id", "seb-dev"])
            .args(["-trust", d.trust.to_str().unwrap()])
            .args(["-cert", d.executor.cert.to_str().unwrap()])
            .args(["-key", d.executor.key.to_str().unwrap()])
            .args(["-dir", dir.to_str().unwrap()]),
        std::fs::File::create(&log).unwrap(),
        &log,
        "Go executor",
    );
    GoExecutor { child, url }
}

#[test]
fn the_go_executor_verifies_offline_redeems_acts_and_signs_a_receipt() {
    let d = deployment();
    let dir = d.hsm.path("go-output");
    std::fs::create_dir_all(&dir).unwrap();
    let binary = d.hsm.path("go-executor");
    go(
        &["build", "-o", binary.to_str().unwrap(), "."],
        &common::repo().join("examples/go-executor"),
    );
    // Its own unit tests: the claims' shapes it refuses, which a token signed by the broker
    // never has (so they cannot be shown with one).
    go(
        &["test", "-count=1", "."],
        &common::repo().join("examples/go-executor"),
    );
    let both = d.hsm.path("approvers.pem");
    let mut pem = std::fs::read(&d.alice.cert).unwrap();
    pem.extend(std::fs::read(&d.bob.cert).unwrap());
    std::fs::write(&both, pem).unwrap();
    let exec = start_go_executor(&d, &binary, &dir, &both);
    let present_at = |url: &str, who: &Identity, token: &str, params: &Value| {
        let tls = d.hsm.tls(who, false);
        runtime().block_on(async {
            let mut client = Client::connect(url, &tls.to_executors()).await.unwrap();
            client
                .post_json("/v1/run", &json!({"token": token, "params": params}))
                .await
                .unwrap()
        })
    };
    let present =
        |who: &Identity, token: &str, params: &Value| present_at(&exec.url, who, token, params);

    // Every token seb's verifier rejects, the Go executor refuses with the same code, before
    // redeeming it; the good one (last) runs.
    let cases = d.rejected_cases();
    for case in &cases {
        let r = present(d.presenter(case), &case.token, &case.params);
        if case.code == "ok" {
            assert_eq!(r.status, 200, "{}: {}", case.name, r.text);
        } else {
            assert_eq!(
                (r.status, code(&r)),
                (403, case.code),
                "{}: {}",
                case.name,
                r.text
            );
        }
    }
    let good = cases.iter().find(|c| c.name == "good").unwrap();
    let r = present(&d.agent, &good.token, &good.params);
    assert_eq!(
        (r.status, code(&r)),
        (409, "token_already_redeemed"),
        "single use: {}",
        r.text
    );
    assert_eq!(
        std::fs::read_to_string(dir.join("v.txt")).unwrap(),
        "verified"
    );
    assert!(!dir.join("brief.txt").exists());

    // A fresh run: the receipt verifies under the executor's certificate with seb's own code
    // (Go's JCS and signature agree with Rust's), and the broker recorded it.
    let params = json!({"text": "from go", "name": "go.txt"});
    let token = d.token("demo.write", &params);
    let r = present(&d.agent, &token, &params);
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.body["outcome_recorded"], true, "{}", r.text);
    let receipt: seb::receipt::Receipt = serde_json::from_value(r.body["receipt"].clone()).unwrap();
    seb::receipt::verify(&receipt, &leaf(&d.executor.cert)).unwrap();
    assert_eq!(receipt.body.exit_code, 0);
    assert_eq!(r.body["succeeded"], true, "{}", r.text);
    assert_eq!(receipt.body.jti, token_claims(&token)["jti"]);
    assert_eq!(
        std::fs::read_to_string(dir.join("go.txt")).unwrap(),
        "from go"
    );
    // An action that fails says so, as seb exec's answer does (agents' tools read it).
    std::fs::create_dir_all(dir.join("a-directory")).unwrap();
    let params = json!({"text": "x", "name": "a-directory"});
    let token = d.token("demo.write", &params);
    let r = present(&d.agent, &token, &params);
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.body["succeeded"], false, "{}", r.text);
    assert_eq!(r.body["receipt"]["body"]["exit_code"], 1, "{}", r.text);

    // Malformed input is a 4xx with a code: a duplicate key, a name that leaves the directory,
    // a caller that is not an agent.
    let tls = d.hsm.tls(&d.agent, false);
    let raw = runtime().block_on(async {
        let mut client = Client::connect(&exec.url, &tls.to_executors())
            .await
            .unwrap();
        client
            .send(
                "POST",
                "/v1/run",
                Some(br#"{"token":"a.b.c","params":{"n":1,"n":2}}"#.to_vec()),
            )
            .await
            .unwrap()
    });
    assert_eq!(
        (raw.status, code(&raw)),
        (400, "malformed_json"),
        "{}",
        raw.text
    );
    let sneaky = json!({"name": "../escape.txt", "text": "x"});
    let token = d.token("demo.write", &sneaky);
    let r = present(&d.agent, &token, &sneaky);
    assert_eq!((r.status, code(&r)), (400, "params_refused"), "{}", r.text);
    assert!(!dir.join("../escape.txt").exists());
    let r = present(&d.alice, &token, &sneaky);
    assert_eq!((r.status, code(&r)), (403, "wrong_role"), "{}", r.text);

    // After two approvals: the quorum is checked offline against the approvers' certificates.
    // An executor that knows only alice cannot check bob's entry and refuses before redeeming;
    // the one that knows both runs it.
    let release = json!({"name": "release-1.txt", "text": "approved"});
    let token = d.approved_token(&release);
    let alice_only = start_go_executor(&d, &binary, &dir, &d.alice.cert);
    let r = present_at(&alice_only.url, &d.agent, &token, &release);
    assert_eq!(
        (r.status, code(&r)),
        (403, "unknown_approver"),
        "{}",
        r.text
    );
    let r = present(&d.agent, &token, &release);
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(
        std::fs::read_to_string(dir.join("release-1.txt")).unwrap(),
        "approved"
    );

    // The broker re-keys (`seb rotate token`): a token under the new kid is not in the bundle
    // the executor was started with. It fetches /v1/trust again (under the pinned root) and
    // runs it, without a restart.
    let old_kid =
        token_header(&d.token("demo.write", &json!({"name": "a.txt", "text": "a"})))["kid"].clone();
    d.hsm.seb_ok(&["rotate", "token"]);
    let params = json!({"name": "rekeyed.txt", "text": "new key"});
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
    let token = loop {
        let token = d.token("demo.write", &params);
        if token_header(&token)["kid"] != old_kid {
            break token;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the broker never switched keys"
        );
        std::thread::sleep(std::time::Duration::from_millis(500));
    };
    // At most one fetch per 5 s: the foreign-key case above may have used the last one.
    std::thread::sleep(std::time::Duration::from_secs(5));
    let r = present(&d.agent, &token, &params);
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(
        std::fs::read_to_string(dir.join("rekeyed.txt")).unwrap(),
        "new key"
    );
}

/// Node with the `jose` package that deploy/install-deps.sh installs under
/// /var/lib/seb-ci/node (`SEB_NODE_MODULES` overrides it).
fn node_modules() -> String {
    let dir = std::env::var("SEB_NODE_MODULES")
        .unwrap_or_else(|_| "/var/lib/seb-ci/node/node_modules".into());
    assert!(
        std::path::Path::new(&dir).join("jose").exists(),
        "jose not found under {dir}: run deploy/install-deps.sh"
    );
    dir
}

#[test]
fn node_jose_verifies_a_token_as_seb_does() {
    let modules = node_modules();
    let d = deployment();
    let cases = d.rejected_cases();
    let good = cases.iter().find(|c| c.name == "good").unwrap();
    let verify = |token: &str| {
        let out = std::process::Command::new("node")
            .arg(common::repo().join("tests/node/jose-verify.cjs"))
            .args([d.trust.to_str().unwrap(), "seb-dev"])
            .env("NODE_PATH", &modules)
            .env("SEB_TOKEN", token)
            .output()
            .expect("node is installed (deploy/install-deps.sh)");
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    // The good token verifies, and jose reads the very claims seb signed.
    let (status, stdout, stderr) = verify(&good.token);
    assert_eq!(status, Some(0), "{stdout}{stderr}");
    let claims: Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(claims, token_claims(&good.token));
    // A forged claim, a foreign key and an expired token fail in jose too.
    for (name, expected) in [
        ("forged", "ERR_JWS_SIGNATURE_VERIFICATION_FAILED"),
        ("foreign_key", "ERR_JWS_SIGNATURE_VERIFICATION_FAILED"),
        ("expired", "ERR_JWT_EXPIRED"),
    ] {
        let case = cases.iter().find(|c| c.name == name).unwrap();
        let (status, stdout, stderr) = verify(&case.token);
        assert_eq!(status, Some(1), "{name}: {stdout}{stderr}");
        assert!(stderr.contains(expected), "{name}: {stderr}");
    }
}
