//! The broker end to end, over real TLS with real certificates and a real SoftHSM2 token:
//! what agents get, what they are refused, single-use redemption, and failing closed.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::{runtime, Broker, Hsm, Identity};
use seb::client::{ApiResponse, Client};
use serde_json::{json, Value};

const DEPLOY: &str = r#"
[[grant]]
operation = "deploy.rollout"
resource  = "prod/payments/*"
max_ttl   = "30s"
params.replicas = { min = 1, max = 10 }
params.image    = { prefix = "registry.internal/payments/" }

[[grant]]
operation = "db.migrate"
resource  = "prod/payments/db"
max_ttl   = "60s"
params_any = true
approval  = { required = 2, group = "sre-leads" }
"#;

fn good_request() -> Value {
    json!({
        "operation": "deploy.rollout",
        "resource": "prod/payments/api",
        "params": {"replicas": 3, "image": "registry.internal/payments/api:1.4.2"},
        "justification": "roll out the fix for INC-1234",
    })
}

struct Setup {
    hsm: Hsm,
    broker: Broker,
    agent: Identity,
}

fn setup() -> Setup {
    let hsm = Hsm::initialised();
    let agent = hsm.agent("deploy-bot", DEPLOY);
    let broker = Broker::start(&hsm);
    Setup { hsm, broker, agent }
}

fn post(s: &Setup, who: &Identity, path: &str, body: &Value) -> ApiResponse {
    let tls = s.hsm.tls(who, true);
    runtime().block_on(async {
        let mut client = Client::connect(&s.broker.url, &tls).await.unwrap();
        client.post_json(path, body).await.unwrap()
    })
}

fn error_code(r: &ApiResponse) -> &str {
    r.body["error"]["code"]
        .as_str()
        .unwrap_or_else(|| panic!("no error code in {}", r.text))
}

fn claims_of(token: &str) -> Value {
    let part = token.split('.').nth(1).unwrap();
    serde_json::from_slice(&seb::base64url::decode(part).unwrap()).unwrap()
}

#[test]
fn granted_token_verifies_with_an_independent_jwt_library() {
    let s = setup();
    let r = post(&s, &s.agent, "/v1/executions", &good_request());
    assert_eq!(r.status, 201, "{}", r.text);
    assert_eq!(r.body["status"], "granted");
    let token = r.body["token"].as_str().unwrap();

    // jsonwebtoken (ring) with nothing but the token certificate's public key.
    let token_cert =
        seb::cert::Certificate::parse(&std::fs::read(s.hsm.trust("token.pem")).unwrap()).unwrap();
    let spki = der::Encode::to_der(token_cert.tbs().subject_public_key_info()).unwrap();
    let pem = format!(
        "-----BEGIN PUBLIC KEY-----\n{}\n-----END PUBLIC KEY-----\n",
        <base64ct::Base64 as base64ct::Encoding>::encode_string(&spki)
    );
    let key = jsonwebtoken::DecodingKey::from_ec_pem(pem.as_bytes()).unwrap();
    let mut validation = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::ES384);
    validation.set_required_spec_claims(&["exp", "nbf", "iss", "sub"]);
    validation.set_issuer(&["seb-dev"]);
    let data = jsonwebtoken::decode::<Value>(token, &key, &validation).unwrap();
    assert_eq!(data.header.typ.as_deref(), Some("seb-exec+jwt"));
    let claims = data.claims;
    assert_eq!(claims["sub"], "CN=deploy-bot");
    let detail = &claims["authorization_details"][0];
    assert_eq!(detail["type"], "seb_execution");
    assert_eq!(detail["operation"], "deploy.rollout");
    assert_eq!(detail["resource"], "prod/payments/api");
    let params = good_request()["params"].clone();
    assert_eq!(
        detail["params_digest"],
        seb::base64url::encode(&seb::canonical::params_digest(&params).unwrap())
    );
    // Lifetime is the grant's 30 s, not the broker's 60 s default.
    assert_eq!(
        claims["exp"].as_u64().unwrap() - claims["iat"].as_u64().unwrap(),
        30
    );
    // Bound to the agent certificate (RFC 8705).
    let agent = seb::cert::Certificate::parse(&std::fs::read(&s.agent.cert).unwrap()).unwrap();
    assert_eq!(
        claims["cnf"]["x5t#S256"],
        seb::base64url::encode(&agent.thumbprint_sha256().unwrap())
    );
    assert_eq!(claims["epoch"], 1);
    // A 128-bit random id (ARCHITECTURE §6), not the request id.
    let jti = seb::base64url::decode(claims["jti"].as_str().unwrap()).unwrap();
    assert_eq!(jti.len(), 16, "128-bit token id");
    assert_ne!(claims["jti"], r.body["request_id"]);

    // A token whose claims were edited no longer verifies.
    let mut parts: Vec<String> = token.split('.').map(str::to_owned).collect();
    let mut edited = claims_of(token);
    edited["authorization_details"][0]["resource"] = json!("prod/payments/everything");
    parts[1] = seb::base64url::encode(&serde_json::to_vec(&edited).unwrap());
    assert!(jsonwebtoken::decode::<Value>(&parts.join("."), &key, &validation).is_err());

    // The agent can read its request back, token included.
    let id = r.body["request_id"].as_str().unwrap();
    let tls = s.hsm.tls(&s.agent, true);
    let got = runtime().block_on(async {
        let mut c = Client::connect(&s.broker.url, &tls).await.unwrap();
        c.send("GET", &format!("/v1/executions/{id}"), None)
            .await
            .unwrap()
    });
    assert_eq!(got.status, 200, "{}", got.text);
    assert_eq!(got.body["status"], "granted");
    assert_eq!(got.body["token"], r.body["token"]);
}

#[test]
fn each_grant_violation_has_its_own_code() {
    let s = setup();
    let cases = [
        (
            json!({"operation": "deploy.delete", "resource": "prod/payments/api", "params": {}}),
            "operation_not_granted",
        ),
        (
            json!({"operation": "deploy.rollout", "resource": "prod/ledger/api", "params": {"replicas": 3, "image": "registry.internal/payments/x"}}),
            "resource_not_granted",
        ),
        (
            json!({"operation": "deploy.rollout", "resource": "prod/payments/api", "params": {"replicas": 11, "image": "registry.internal/payments/x"}}),
            "param_constraint_violated",
        ),
        (
            json!({"operation": "deploy.rollout", "resource": "prod/payments/api", "params": {"replicas": "3", "image": "registry.internal/payments/x"}}),
            "param_constraint_violated",
        ),
        (
            json!({"operation": "deploy.rollout", "resource": "prod/payments/api", "params": {"replicas": 3, "image": "docker.io/evil"}}),
            "param_constraint_violated",
        ),
        (
            json!({"operation": "deploy.rollout", "resource": "prod/payments/api", "params": {"replicas": 3, "image": "registry.internal/payments/x", "privileged": true}}),
            "param_constraint_violated",
        ),
        (
            json!({"operation": "deploy.rollout", "resource": "prod/payments/../ledger", "params": {"replicas": 3, "image": "registry.internal/payments/x"}}),
            "invalid_resource",
        ),
        (
            json!({"operation": "deploy.rollout", "resource": "prod/payments%2Fapi", "params": {"replicas": 3, "image": "registry.internal/payments/x"}}),
            "invalid_resource",
        ),
    ];
    let tls = s.hsm.tls(&s.agent, true);
    runtime().block_on(async {
        // One keep-alive connection for all of them.
        let mut c = Client::connect(&s.broker.url, &tls).await.unwrap();
        for (body, code) in cases {
            let r = c.post_json("/v1/executions", &body).await.unwrap();
            assert_eq!(r.status, 403, "{body} -> {}", r.text);
            assert_eq!(error_code(&r), code, "{body}");
            assert!(r.body.get("token").is_none());
            // The denial names its record, which the agent can read back with the digest of
            // what it asked.
            let id = r.body["error"]["request_id"].as_str().unwrap().to_owned();
            let got = c
                .send("GET", &format!("/v1/executions/{id}"), None)
                .await
                .unwrap();
            assert_eq!(got.body["status"], "denied", "{}", got.text);
            let digest = seb::canonical::request_digest(
                body["operation"].as_str().unwrap(),
                body["resource"].as_str().unwrap(),
                &body["params"],
            )
            .unwrap();
            assert_eq!(
                got.body["request_digest"],
                seb::base64url::encode(&digest),
                "{}",
                got.text
            );
        }
    });

    // A grant with an approval rule answers 202 pending, with no token.
    let r = post(
        &s,
        &s.agent,
        "/v1/executions",
        &json!({"operation": "db.migrate", "resource": "prod/payments/db", "params": {"to": 42}}),
    );
    assert_eq!(r.status, 202, "{}", r.text);
    assert_eq!(r.body["status"], "pending_approval");
    assert_eq!(r.body["approvals_required"], 2);
    assert!(r.body.get("token").is_none());
}

#[test]
fn wrong_role_revoked_and_expired_certificates_are_refused() {
    let s = setup();
    // An approver asking to execute.
    let approver = s
        .hsm
        .identity("alice", "CN=alice", "approver", &["--group", "sre-leads"]);
    let r = post(&s, &approver, "/v1/executions", &good_request());
    assert_eq!(r.status, 403, "{}", r.text);
    assert_eq!(error_code(&r), "wrong_role");

    // An agent asking to redeem.
    let r = post(
        &s,
        &s.agent,
        "/v1/tokens/redeem",
        &json!({"token": "x.y.z"}),
    );
    assert_eq!(error_code(&r), "wrong_role");

    // A token redeemed before the revocation below: its replay stays a replay after it.
    let executor = s.hsm.identity("runner", "CN=runner", "executor", &[]);
    let r = post(&s, &s.agent, "/v1/executions", &good_request());
    assert_eq!(r.status, 201, "{}", r.text);
    let redeemed = json!({"token": r.body["token"]});
    let r = post(&s, &executor, "/v1/tokens/redeem", &redeemed);
    assert_eq!(r.status, 200, "{}", r.text);

    // Revocation takes effect on the next request, also on an open connection.
    let tls = s.hsm.tls(&s.agent, true);
    let serial = seb::cert::Certificate::parse(&std::fs::read(&s.agent.cert).unwrap())
        .unwrap()
        .serial_hex();
    let token = runtime().block_on(async {
        let mut c = Client::connect(&s.broker.url, &tls).await.unwrap();
        let r = c
            .post_json("/v1/executions", &good_request())
            .await
            .unwrap();
        assert_eq!(r.status, 201, "{}", r.text);
        let status_path = format!("/v1/executions/{}", r.body["request_id"].as_str().unwrap());
        let token = r.body["token"].as_str().unwrap().to_owned();
        s.hsm.seb_ok(&[
            "cert",
            "revoke",
            "--serial",
            &serial,
            "--reason",
            "key-compromise",
        ]);
        let r = c
            .post_json("/v1/executions", &good_request())
            .await
            .unwrap();
        assert_eq!(r.status, 403, "{}", r.text);
        assert_eq!(error_code(&r), "certificate_revoked");
        // The refusal closed the connection; every route on a new one: not its live token,
        // not even the trust bundle.
        assert!(c.send("GET", "/v1/trust", None).await.is_err());
        for path in [
            status_path.as_str(),
            "/v1/trust",
            "/v1/crl",
            "/healthz",
            "/metrics",
        ] {
            let mut c = Client::connect(&s.broker.url, &tls).await.unwrap();
            let r = c.send("GET", path, None).await.unwrap();
            assert_eq!(r.status, 403, "{path}: {}", r.text);
            assert_eq!(error_code(&r), "certificate_revoked", "{path}");
        }
        token
    });
    // And an executor cannot redeem the token the agent got before; the one it redeemed
    // before the revocation is still answered as a replay (what a SIEM alerts on), not as a
    // revocation.
    let r = post(&s, &executor, "/v1/tokens/redeem", &json!({"token": token}));
    assert_eq!(r.status, 403, "{}", r.text);
    assert_eq!(error_code(&r), "agent_certificate_revoked");
    let r = post(&s, &executor, "/v1/tokens/redeem", &redeemed);
    assert_eq!(r.status, 409, "{}", r.text);
    assert_eq!(error_code(&r), "token_already_redeemed");

    // A certificate that expires while its connection stays open.
    let file = s.hsm.grants_file("short.toml", DEPLOY);
    s.hsm
        .identity("short", "CN=short", "agent", &["--grants", &file]);
    // Re-issue with a 4 s lifetime (the identity helper uses 30 d); the broker refuses
    // certificates with under a second left, and notAfter is truncated to whole seconds.
    let short = s.hsm.reissue(
        "short",
        "short2.pem",
        &["--grants", &file, "--role", "agent", "--ttl", "4s"],
    );
    let tls = s.hsm.tls(&short, true);
    runtime().block_on(async {
        let mut c = Client::connect(&s.broker.url, &tls).await.unwrap();
        let r = c
            .post_json("/v1/executions", &good_request())
            .await
            .unwrap();
        assert_eq!(r.status, 201, "{}", r.text);
        // webpki compares whole seconds; wait well past notAfter.
        tokio::time::sleep(std::time::Duration::from_millis(5600)).await;
        let r = c
            .post_json("/v1/executions", &good_request())
            .await
            .unwrap();
        assert_eq!(r.status, 403, "{}", r.text);
        assert_eq!(error_code(&r), "certificate_expired");
        // A resumed TLS session skips certificate checks in the handshake, but the decision
        // still refuses.
        let mut resumed = Client::connect(&s.broker.url, &tls).await.unwrap();
        let r = resumed
            .post_json("/v1/executions", &good_request())
            .await
            .unwrap();
        assert_eq!(error_code(&r), "certificate_expired");
        // A full handshake completes (the chain's signatures are checked), and the request
        // gets the same readable refusal instead of a TLS alert.
        let full = s.hsm.tls(&short, false);
        let mut fresh = Client::connect(&s.broker.url, &full).await.unwrap();
        let r = fresh
            .post_json("/v1/executions", &good_request())
            .await
            .unwrap();
        assert_eq!(r.status, 403, "{}", r.text);
        assert_eq!(error_code(&r), "certificate_expired");
    });
}

/// The broker remembers client chains it has verified (`server::tls::client_chains`) and the
/// paths it has validated, so a returning agent's full handshake skips those checks. That must
/// change nothing for revocation: once the certificate is revoked, the connection that was
/// open, a connection made after it from the remembered chain, and a connection made after the
/// revocation are all refused, and each is closed after its refusal.
#[test]
fn a_remembered_chain_is_refused_once_revoked_on_open_and_new_connections() {
    let s = setup();
    // Resumption off: every connection is a full handshake with the client chain.
    let full = s.hsm.tls(&s.agent, false);
    let serial = seb::cert::Certificate::parse(&std::fs::read(&s.agent.cert).unwrap())
        .unwrap()
        .serial_hex();
    runtime().block_on(async {
        let mut first = Client::connect(&s.broker.url, &full).await.unwrap();
        let r = first
            .post_json("/v1/executions", &good_request())
            .await
            .unwrap();
        assert_eq!(r.status, 201, "{}", r.text);
        // The same chain again: served from the caches.
        let mut second = Client::connect(&s.broker.url, &full).await.unwrap();
        let r = second
            .post_json("/v1/executions", &good_request())
            .await
            .unwrap();
        assert_eq!(r.status, 201, "{}", r.text);
        s.hsm.seb_ok(&[
            "cert",
            "revoke",
            "--serial",
            &serial,
            "--reason",
            "key-compromise",
        ]);
        let mut third = Client::connect(&s.broker.url, &full).await.unwrap();
        for (name, c) in [
            ("first", &mut first),
            ("second", &mut second),
            ("third", &mut third),
        ] {
            let r = c
                .post_json("/v1/executions", &good_request())
                .await
                .unwrap();
            assert_eq!(r.status, 403, "{name}: {}", r.text);
            assert_eq!(error_code(&r), "certificate_revoked", "{name}");
            // The refusal closes the connection: a revoked key cannot keep holding it.
            assert!(
                c.post_json("/v1/executions", &good_request())
                    .await
                    .is_err(),
                "{name}: still open"
            );
        }
    });
}

#[test]
fn foreign_and_self_signed_agents_fail_the_handshake() {
    let s = setup();
    // An agent certified by another seb installation's root.
    let other = Hsm::initialised();
    let foreign = other.agent("foreign-bot", DEPLOY);
    let tls = seb::client::ClientTls::new(
        &std::fs::read(s.hsm.trust("root.pem")).unwrap(),
        &std::fs::read(&foreign.cert).unwrap(),
        &std::fs::read(&foreign.key).unwrap(),
        true,
    )
    .unwrap();
    runtime().block_on(async {
        let result = async {
            let mut c = Client::connect(&s.broker.url, &tls).await?;
            c.post_json("/v1/executions", &good_request()).await
        }
        .await;
        assert!(result.is_err(), "a foreign agent got an answer: {result:?}");
    });

    // A self-signed certificate made with openssl.
    let dir = s.hsm.dir.path();
    let (ok, text) = common::openssl(
        &[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-384",
            "-nodes",
            "-keyout",
            "self.key",
            "-out",
            "self.pem",
            "-subj",
            "/CN=deploy-bot",
            "-days",
            "1",
            "-addext",
            "extendedKeyUsage=clientAuth",
        ],
        dir,
    );
    assert!(ok, "{text}");
    let tls = seb::client::ClientTls::new(
        &std::fs::read(s.hsm.trust("root.pem")).unwrap(),
        &std::fs::read(dir.join("self.pem")).unwrap(),
        &std::fs::read(dir.join("self.key")).unwrap(),
        true,
    )
    .unwrap();
    runtime().block_on(async {
        let result = async {
            let mut c = Client::connect(&s.broker.url, &tls).await?;
            c.post_json("/v1/executions", &good_request()).await
        }
        .await;
        assert!(
            result.is_err(),
            "a self-signed agent got an answer: {result:?}"
        );
    });
    assert!(s.broker.log_text().contains("TLS handshake failed"));
}

#[test]
fn redemption_is_single_use_across_restarts() {
    let mut s = setup();
    let executor = s
        .hsm
        .identity("executor", "CN=k8s-executor", "executor", &[]);
    let r = post(&s, &s.agent, "/v1/executions", &good_request());
    let token = r.body["token"].as_str().unwrap().to_owned();
    let r2 = post(&s, &s.agent, "/v1/executions", &good_request());
    let token2 = r2.body["token"].as_str().unwrap().to_owned();

    let first = post(&s, &executor, "/v1/tokens/redeem", &json!({"token": token}));
    assert_eq!(first.status, 200, "{}", first.text);
    assert_eq!(first.body["status"], "redeemed");
    assert_eq!(first.body["operation"], "deploy.rollout");
    let again = post(&s, &executor, "/v1/tokens/redeem", &json!({"token": token}));
    assert_eq!(again.status, 409, "{}", again.text);
    assert_eq!(error_code(&again), "token_already_redeemed");

    assert!(s.broker.stop(), "graceful shutdown on SIGTERM");
    s.broker = Broker::start(&s.hsm);
    let after_restart = post(&s, &executor, "/v1/tokens/redeem", &json!({"token": token}));
    assert_eq!(after_restart.status, 409, "{}", after_restart.text);
    // A token issued before the restart and not yet used still redeems once.
    let other = post(
        &s,
        &executor,
        "/v1/tokens/redeem",
        &json!({"token": token2}),
    );
    assert_eq!(other.status, 200, "{}", other.text);

    // Tampered tokens are refused without touching the single-use state.
    let mut parts: Vec<&str> = token2.split('.').collect();
    let sig = parts[2].to_owned();
    let flipped = format!(
        "{}{}",
        if sig.starts_with('A') { "B" } else { "A" },
        &sig[1..]
    );
    parts[2] = &flipped;
    let bad = post(
        &s,
        &executor,
        "/v1/tokens/redeem",
        &json!({"token": parts.join(".")}),
    );
    assert_eq!(bad.status, 400, "{}", bad.text);
    assert_eq!(error_code(&bad), "invalid_token");
}

#[test]
fn an_intermediate_that_expires_under_an_open_connection_is_refused_on_every_route() {
    // The handshake checked the whole path, but a connection (or a resumed session) outlives
    // that check: every request dates every certificate of the path again, the intermediate
    // included, here one whose leaf (signed offline) is still valid.
    let s = setup();
    // Time enough to sign the leaf and finish the handshake on a loaded machine.
    let (ops, ops_key) = s.hsm.offline_intermediate("brief-ops", &["--ttl", "10s"]);
    let agent = s.hsm.offline_identity(
        "brief-agent",
        &ops,
        &ops_key,
        seb::grants::Role::new(seb::grants::RoleKind::Agent, vec![]).unwrap(),
    );
    let tls = s.hsm.tls(&agent, true);
    runtime().block_on(async {
        let mut c = Client::connect(&s.broker.url, &tls).await.unwrap();
        let r = c.send("GET", "/v1/trust", None).await.unwrap();
        assert_eq!(r.status, 200, "{}", r.text);
        // webpki compares whole seconds; wait well past the intermediate's notAfter.
        let until = ops.not_after() + std::time::Duration::from_millis(1500);
        if let Ok(wait) = until.duration_since(std::time::SystemTime::now()) {
            tokio::time::sleep(wait).await;
        }
        // The open connection first, then resumed ones: the refusal closes each.
        let mut open = Some(c);
        for path in ["/v1/trust", "/v1/grants", "/healthz"] {
            let mut c = match open.take() {
                Some(c) => c,
                None => Client::connect(&s.broker.url, &tls).await.unwrap(),
            };
            let r = c.send("GET", path, None).await.unwrap();
            assert_eq!(r.status, 403, "{path}: {}", r.text);
            assert_eq!(error_code(&r), "certificate_expired", "{path}");
            assert!(r.text.contains("depth 1"), "{path}: {}", r.text);
            assert!(
                c.send("GET", path, None).await.is_err(),
                "{path}: still open"
            );
        }
    });
}

#[test]
fn a_replay_after_the_token_expired_is_still_a_replay() {
    let s = setup();
    let quick = s.hsm.agent(
        "quick-bot",
        r#"
[[grant]]
operation = "deploy.rollout"
resource  = "prod/payments/*"
max_ttl   = "2s"
params_any = true
"#,
    );
    let executor = s
        .hsm
        .identity("executor", "CN=k8s-executor", "executor", &[]);
    let mut tokens = Vec::new();
    for _ in 0..2 {
        let r = post(&s, &quick, "/v1/executions", &good_request());
        assert_eq!(r.status, 201, "{}", r.text);
        tokens.push(r.body["token"].as_str().unwrap().to_owned());
    }
    let (redeemed, unused) = (tokens[0].as_str(), tokens[1].as_str());
    let redeem = |token: &str| {
        post(
            &s,
            &executor,
            "/v1/tokens/redeem",
            &json!({ "token": token }),
        )
    };
    let first = redeem(redeemed);
    assert_eq!(first.status, 200, "{}", first.text);
    // Past the token's two seconds and the 30 s the broker allows for clock skew.
    std::thread::sleep(std::time::Duration::from_secs(34));
    let replay = redeem(redeemed);
    assert_eq!(replay.status, 409, "{}", replay.text);
    assert_eq!(error_code(&replay), "token_already_redeemed");
    // A token that expired unused is refused as expired, and is not redeemed by the attempt.
    let late = redeem(unused);
    assert_eq!(late.status, 400, "{}", late.text);
    assert_eq!(error_code(&late), "invalid_token");
    assert!(late.text.contains("expired"), "{}", late.text);
    let again = redeem(unused);
    assert_eq!(again.status, 400, "{}", again.text);
}

/// The trust bundle, the CRL and attestation are for anyone (ARCHITECTURE §7): a client with
/// no certificate completes the handshake and reads them; every other route refuses it with
/// 403 `bad_certificate`. Checked with seb's client and with curl, which sends no certificate
/// unless told to.
#[test]
fn a_client_without_a_certificate_reads_only_the_routes_for_anyone() {
    let s = setup();
    let root = std::fs::read(s.hsm.trust("root.pem")).unwrap();
    let tls = seb::client::ClientTls::anonymous(&root).unwrap();
    let answers = runtime().block_on(async {
        let mut client = Client::connect(&s.broker.url, &tls).await.unwrap();
        let mut answers = Vec::new();
        for (method, path, body) in [
            ("GET", "/v1/trust", None),
            ("GET", "/v1/crl", None),
            (
                "GET",
                "/v1/attestation?nonce=00112233445566778899aabbccddeeff",
                None,
            ),
            ("POST", "/v1/executions", Some(good_request())),
            ("GET", "/healthz", None),
            ("GET", "/metrics", None),
            ("GET", "/v1/audit/checkpoint", None),
        ] {
            let r = client
                .send(
                    method,
                    path,
                    body.map(|b: Value| b.to_string().into_bytes()),
                )
                .await
                .unwrap();
            answers.push((path, r));
        }
        answers
    });
    let bundle = std::fs::read_to_string(s.hsm.trust("token.pem")).unwrap();
    for (path, r) in answers {
        match path {
            "/v1/trust" => assert!(
                r.status == 200 && r.text.contains(bundle.trim()),
                "{}",
                r.text
            ),
            "/v1/crl" => assert!(
                r.status == 200 && r.text.contains("BEGIN X509 CRL"),
                "{}",
                r.text
            ),
            p if p.starts_with("/v1/attestation") => assert_eq!(
                (r.status, r.body["error"]["code"].as_str()),
                (404, Some("attestation_not_configured")),
                "{}",
                r.text
            ),
            _ => assert_eq!(
                (r.status, r.body["error"]["code"].as_str()),
                (403, Some("bad_certificate")),
                "{path}: {}",
                r.text
            ),
        }
    }
    let port = s.broker.url.rsplit(':').next().unwrap();
    let curl = |path: &str| {
        let out = std::process::Command::new("curl")
            .args(["-s", "-w", "\n%{http_code}", "--cacert"])
            .arg(s.hsm.trust("root.pem"))
            .args(["--resolve", &format!("localhost:{port}:127.0.0.1")])
            .arg(format!("https://localhost:{port}{path}"))
            .output()
            .unwrap();
        common::assert_success(&out, "curl");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    assert!(curl("/v1/trust").ends_with("\n200"));
    let refused = curl("/healthz");
    assert!(
        refused.ends_with("\n403") && refused.contains("bad_certificate"),
        "{refused}"
    );
}

/// What curl makes of the request head: HTTP/1.0 (offered in ALPN as `http/1.0` alone) is
/// served, and a head larger than the parser's 64 KiB buffer is refused with 431, as API.md
/// says, rather than buffered.
#[test]
fn curl_over_http_1_0_is_served_and_an_oversized_header_gets_431() {
    let s = setup();
    let port = s.broker.url.rsplit(':').next().unwrap();
    let big = s.hsm.path("big-header.txt");
    std::fs::write(&big, format!("X-Big: {}\n", "a".repeat(100 * 1024))).unwrap();
    let curl = |extra: &[&str]| {
        let out = std::process::Command::new("curl")
            .args(["-s", "-o", "/dev/null", "-w", "%{http_code}", "--cacert"])
            .arg(s.hsm.trust("root.pem"))
            .args(["--resolve", &format!("localhost:{port}:127.0.0.1")])
            .args(extra)
            .arg(format!("https://localhost:{port}/v1/trust"))
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    assert_eq!(curl(&[]), "200");
    assert_eq!(curl(&["--http1.0"]), "200");
    // The client is still sending when the broker refuses: the answer must survive that
    // (the rest is read and discarded, not reset), every time.
    for _ in 0..5 {
        assert_eq!(curl(&["-H", &format!("@{}", big.display())]), "431");
    }
}

/// curl sends `Expect: 100-continue` for large bodies. The broker must answer 413 from the
/// declared length at once, not `100 Continue` followed by a dropped connection.
#[test]
fn an_oversized_body_announced_with_expect_100_continue_gets_413_not_100() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let s = setup();
    let tls = s.hsm.tls(&s.agent, true);
    let head = runtime().block_on(async {
        let (mut stream, authority) = seb::client::connect_tls(&s.broker.url, &tls).await.unwrap();
        let request = format!(
            "POST /v1/executions HTTP/1.1\r\nHost: {authority}\r\nContent-Type: application/json\r\n\
             Content-Length: {}\r\nExpect: 100-continue\r\n\r\n",
            10 * 1024 * 1024
        );
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut answer = Vec::new();
        let mut chunk = [0u8; 4096];
        // Read until the end of the first response's body (or the connection closes).
        while !String::from_utf8_lossy(&answer).contains("}}") {
            let n = tokio::time::timeout(std::time::Duration::from_secs(5), stream.read(&mut chunk))
                .await
                .expect("the broker answers without waiting for the body")
                .unwrap();
            if n == 0 {
                break;
            }
            answer.extend_from_slice(&chunk[..n]);
        }
        String::from_utf8_lossy(&answer).into_owned()
    });
    assert!(
        head.starts_with("HTTP/1.1 413"),
        "a 413 first, no 100 Continue: {head}"
    );
    assert!(head.contains("body_too_large"), "{head}");
}

/// Most HTTP clients (Python's among them) send a large body whole, without `Expect:
/// 100-continue`, and read the answer afterwards. The broker refuses it from the declared
/// length and closes the connection; it must read and discard the rest as it arrives, or the
/// kernel resets the connection and the 413 is lost before the client reads it.
#[test]
fn an_oversized_body_sent_whole_without_expect_still_gets_its_413() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let s = setup();
    let tls = s.hsm.tls(&s.agent, true);
    let answers: Vec<String> = runtime().block_on(async {
        let mut answers = Vec::new();
        for chunked in [false, true] {
            for _ in 0..3 {
                let (mut stream, authority) =
                    seb::client::connect_tls(&s.broker.url, &tls).await.unwrap();
                let length = 4 * 1024 * 1024;
                let mut wire = if chunked {
                    format!(
                        "POST /v1/executions HTTP/1.1\r\nHost: {authority}\r\n\
                         Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
                    )
                } else {
                    format!(
                        "POST /v1/executions HTTP/1.1\r\nHost: {authority}\r\n\
                         Content-Type: application/json\r\nContent-Length: {length}\r\n\r\n"
                    )
                }
                .into_bytes();
                let chunk = vec![b' '; 64 * 1024];
                for _ in 0..length / chunk.len() {
                    if chunked {
                        wire.extend_from_slice(format!("{:x}\r\n", chunk.len()).as_bytes());
                        wire.extend_from_slice(&chunk);
                        wire.extend_from_slice(b"\r\n");
                    } else {
                        wire.extend_from_slice(&chunk);
                    }
                }
                if chunked {
                    wire.extend_from_slice(b"0\r\n\r\n");
                }
                // The whole request first, as such clients send it (curl gives up at the first
                // failed write), then the answer.
                let sent = tokio::time::timeout(
                    std::time::Duration::from_secs(10),
                    stream.write_all(&wire),
                )
                .await
                .expect("the broker reads what the client still sends");
                let mut answer = Vec::new();
                let read = tokio::time::timeout(
                    std::time::Duration::from_secs(10),
                    stream.read_to_end(&mut answer),
                )
                .await
                .expect("the broker closes the connection after its answer");
                answers.push(format!(
                    "sent {sent:?}, read {read:?}: {}",
                    String::from_utf8_lossy(&answer)
                ));
            }
        }
        answers
    });
    for answer in &answers {
        assert!(
            answer.starts_with("sent Ok(()), read Ok(")
                && answer.contains("HTTP/1.1 413")
                && answer.contains("body_too_large"),
            "every attempt sends its body and gets its 413: {answers:#?}"
        );
    }
}

/// Whether `answer` holds a whole HTTP/1.1 response with a `content-length` body.
fn complete_response(answer: &[u8]) -> bool {
    let text = String::from_utf8_lossy(answer);
    let Some((head, body)) = text.split_once("\r\n\r\n") else {
        return false;
    };
    head.lines()
        .filter_map(|line| line.split_once(':'))
        .find(|(name, _)| name.eq_ignore_ascii_case("content-length"))
        .and_then(|(_, value)| value.trim().parse::<usize>().ok())
        .is_some_and(|length| body.len() >= length)
}

/// A body the broker would read still encoded (a content coding, a transfer coding other than
/// chunked) is refused, not parsed as if it were plain: 415 `unsupported_encoding`. A body not
/// declared JSON (the `text/plain` and form types a web page can make a browser send with the
/// user's client certificate, or no type at all) is refused too: 415 `unsupported_media_type`,
/// no token.
#[test]
fn encoded_or_undeclared_bodies_are_refused_with_415() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let s = setup();
    let tls = s.hsm.tls(&s.agent, true);
    let body = good_request().to_string();
    let chunked = format!("{:x}\r\n{body}\r\n0\r\n\r\n", body.len());
    let length = format!("Content-Length: {}\r\n", body.len());
    let json = "Content-Type: application/json\r\n";
    for (headers, payload, expected) in [
        (
            format!("{json}Content-Encoding: gzip\r\n{length}"),
            &body,
            "415 Unsupported Media Type|unsupported_encoding",
        ),
        (
            format!("{json}Transfer-Encoding: gzip, chunked\r\n"),
            &chunked,
            "415 Unsupported Media Type|unsupported_encoding",
        ),
        (
            format!("Content-Type: text/plain\r\n{length}"),
            &body,
            "415 Unsupported Media Type|unsupported_media_type",
        ),
        (
            format!("Content-Type: application/x-www-form-urlencoded\r\n{length}"),
            &body,
            "415 Unsupported Media Type|unsupported_media_type",
        ),
        (
            format!("Content-Type: application/jsonp\r\n{length}"),
            &body,
            "415 Unsupported Media Type|unsupported_media_type",
        ),
        (
            length.clone(),
            &body,
            "415 Unsupported Media Type|unsupported_media_type",
        ),
        (
            "Transfer-Encoding: chunked\r\n".to_owned(),
            &chunked,
            "415 Unsupported Media Type|unsupported_media_type",
        ),
        (
            format!("Content-Type: application/json; charset=latin1\r\n{length}"),
            &body,
            "415 Unsupported Media Type|unsupported_media_type",
        ),
        (
            format!("Content-Type: Application/JSON; charset=utf-8\r\n{length}"),
            &body,
            "201 Created|\"granted\"",
        ),
        (
            format!("Content-Type: application/json; charset=\"UTF-8\"\r\n{length}"),
            &body,
            "201 Created|\"granted\"",
        ),
    ] {
        let answer = runtime().block_on(async {
            let (mut stream, authority) =
                seb::client::connect_tls(&s.broker.url, &tls).await.unwrap();
            let request = format!(
                "POST /v1/executions HTTP/1.1\r\nHost: {authority}\r\n{headers}\r\n{payload}"
            );
            stream.write_all(request.as_bytes()).await.unwrap();
            let mut answer = Vec::new();
            let mut chunk = [0u8; 4096];
            while !complete_response(&answer) {
                let read = tokio::time::timeout(
                    std::time::Duration::from_secs(10),
                    stream.read(&mut chunk),
                );
                let n = read.await.expect("an answer").unwrap_or(0);
                if n == 0 {
                    break;
                }
                answer.extend_from_slice(&chunk[..n]);
            }
            String::from_utf8_lossy(&answer).into_owned()
        });
        let (status, code) = expected.split_once('|').unwrap();
        assert!(
            answer.starts_with(&format!("HTTP/1.1 {status}")),
            "{headers}: {answer}"
        );
        assert!(answer.contains(code), "{headers}: {answer}");
        assert_eq!(
            answer.contains("\"token\""),
            status.starts_with("201"),
            "{headers}: {answer}"
        );
    }
    // Plain chunked bodies are fine.
    let r = post(&s, &s.agent, "/v1/executions", &good_request());
    assert_eq!(r.status, 201, "{}", r.text);
}

/// A client that sends its headers and then too little of its body, too slowly, is the
/// client's fault: 408 `request_timeout` when the request's time runs out, the connection
/// closed, counted in `/metrics`, and the broker goes on serving.
#[test]
fn a_body_that_does_not_arrive_in_time_gets_408() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let hsm = Hsm::initialised();
    hsm.edit_config("[server]\n", "[server]\nrequest_timeout = \"2s\"\n");
    let agent = hsm.agent("deploy-bot", DEPLOY);
    let broker = Broker::start(&hsm);
    let tls = hsm.tls(&agent, true);
    let (answer, waited) = runtime().block_on(async {
        let (mut stream, authority) = seb::client::connect_tls(&broker.url, &tls).await.unwrap();
        let head = format!(
            "POST /v1/executions HTTP/1.1\r\nHost: {authority}\r\nContent-Type: application/json\r\n\
             Content-Length: 200\r\n\r\n{{\"operation\""
        );
        let started = std::time::Instant::now();
        stream.write_all(head.as_bytes()).await.unwrap();
        let mut answer = Vec::new();
        let mut chunk = [0u8; 4096];
        loop {
            let n = tokio::time::timeout(std::time::Duration::from_secs(20), stream.read(&mut chunk))
                .await
                .expect("the broker answers a stalled body within its request timeout")
                .unwrap_or(0);
            if n == 0 {
                break;
            }
            answer.extend_from_slice(&chunk[..n]);
        }
        (String::from_utf8_lossy(&answer).into_owned(), started.elapsed())
    });
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("\"request_timeout\""), "{answer}");
    assert!(
        answer.to_ascii_lowercase().contains("connection: close"),
        "{answer}"
    );
    assert!(
        waited >= std::time::Duration::from_millis(1900),
        "{waited:?}"
    );
    runtime().block_on(async {
        let mut c = Client::connect(&broker.url, &tls).await.unwrap();
        let r = c
            .post_json("/v1/executions", &good_request())
            .await
            .unwrap();
        assert_eq!(r.status, 201, "{}", r.text);
        let metrics = c.send("GET", "/metrics", None).await.unwrap();
        assert!(
            metrics
                .text
                .contains("seb_requests_total{endpoint=\"http\",outcome=\"refused\",code=\"request_timeout\"} 1"),
            "{}",
            metrics.text
        );
    });
}

#[test]
fn malformed_input_gets_a_4xx_with_a_code() {
    let s = setup();
    let tls = s.hsm.tls(&s.agent, true);
    let deep = format!("{{\"operation\":\"deploy.rollout\",\"resource\":\"prod/payments/api\",\"params\":{{\"a\":{}1{}}}}}", "[".repeat(100), "]".repeat(100));
    let huge = format!(
        "{{\"operation\":\"deploy.rollout\",\"resource\":\"prod/payments/api\",\"params\":{{\"a\":\"{}\"}}}}",
        "x".repeat(200 * 1024)
    );
    let cases: Vec<(&str, &str, Vec<u8>, u16, &str)> = vec![
        ("POST", "/v1/executions", b"{not json".to_vec(), 400, "malformed_json"),
        ("POST", "/v1/executions", b"".to_vec(), 400, "malformed_json"),
        ("POST", "/v1/executions", br#"{"operation":1,"resource":"a","params":{}}"#.to_vec(), 400, "invalid_request"),
        ("POST", "/v1/executions", br#"{"operation":"a.b","resource":"a","params":[]}"#.to_vec(), 400, "invalid_request"),
        ("POST", "/v1/executions", br#"{"operation":"a.b","resource":"a","params":{},"admin":true}"#.to_vec(), 400, "invalid_request"),
        // An array is not the request object, even with its fields in order.
        ("POST", "/v1/executions", br#"["deploy.rollout","prod/payments/api",{"replicas":3,"image":"registry.internal/payments/x"}]"#.to_vec(), 400, "invalid_request"),
        // A number JSON does not carry exactly: 400 like every other `invalid_request`.
        ("POST", "/v1/executions", br#"{"operation":"deploy.rollout","resource":"prod/payments/api","params":{"replicas":9007199254740993,"image":"registry.internal/payments/x"}}"#.to_vec(), 400, "invalid_request"),
        // Beyond 64 bits an integer would reach the parser as a rounded double, one digest for
        // several numbers: refused all the same.
        ("POST", "/v1/executions", br#"{"operation":"k8s.read.pods","resource":"prod/x","params":{"n":18446744073709551617}}"#.to_vec(), 400, "invalid_request"),
        ("POST", "/v1/executions", br#"{"operation":"k8s.read.pods","resource":"prod/x","params":{"n":-99999999999999999999999}}"#.to_vec(), 400, "invalid_request"),
        // A double that does not hold the number as written (1e-400 reads as 0, the long one
        // as 1): one digest for two numbers to an executor reading exact decimals.
        ("POST", "/v1/executions", br#"{"operation":"k8s.read.pods","resource":"prod/x","params":{"n":1e-400}}"#.to_vec(), 400, "invalid_request"),
        ("POST", "/v1/executions", br#"{"operation":"k8s.read.pods","resource":"prod/x","params":{"n":1.00000000000000000000000001}}"#.to_vec(), 400, "invalid_request"),
        // As a double too: 1e16 is whole, and its canonical form is the integer above.
        ("POST", "/v1/executions", br#"{"operation":"k8s.read.pods","resource":"prod/x","params":{"n":1e16}}"#.to_vec(), 400, "invalid_request"),
        ("GET", "/v1/audit/entries?start=1&end=0", Vec::new(), 400, "invalid_request"),
        // A query the route does not take, as every route answers it.
        ("GET", "/v1/audit/entries?start=abc", Vec::new(), 400, "invalid_query"),
        ("GET", "/v1/audit/entries?start=0&foo=1", Vec::new(), 400, "invalid_query"),
        ("GET", "/v1/audit/proof/inclusion?index=x", Vec::new(), 400, "invalid_query"),
        ("POST", "/v1/executions", br#"{"operation":"deploy.rollout","resource":"prod/payments/api","params":{"replicas":1,"replicas":99}}"#.to_vec(), 400, "malformed_json"),
        ("POST", "/v1/executions", deep.into_bytes(), 400, "malformed_json"),
        ("POST", "/v1/executions", huge.into_bytes(), 413, "body_too_large"),
        ("POST", "/v1/executions", vec![0xff, 0xfe, 0x00], 400, "malformed_json"),
        ("DELETE", "/v1/executions", Vec::new(), 405, "method_not_allowed"),
        ("GET", "/v1/executions?status=pending", Vec::new(), 403, "wrong_role"),
        ("GET", "/v1/nope", Vec::new(), 404, "not_found"),
        ("GET", "/v1/executions/doesnotexist", Vec::new(), 404, "not_found"),
        // Not even text once decoded: no request has that id, and the answer is JSON.
        ("GET", "/v1/executions/%FF", Vec::new(), 404, "not_found"),
        ("GET", "/v1/executions/%C3%28", Vec::new(), 404, "not_found"),
    ];
    runtime().block_on(async {
        for (method, path, body, status, code) in cases {
            // A fresh connection each time: some errors close the connection.
            let mut c = Client::connect(&s.broker.url, &tls).await.unwrap();
            let body = if method == "GET" { None } else { Some(body) };
            // The broker answers 413 as soon as the limit is passed, and reads what the
            // client still writes until it closes: the client sees the answer.
            let r = match c.send(method, path, body).await {
                Ok(r) => r,
                Err(e) => panic!("{method} {path}: {e:?}"),
            };
            assert_eq!(r.status, status, "{method} {path}: {}", r.text);
            assert_eq!(error_code(&r), code, "{method} {path}");
            assert!(
                !r.text.contains("panicked") && !r.text.contains("CKR_"),
                "{}",
                r.text
            );
        }
    });
    // The broker is still healthy afterwards, and counted what the HTTP layer refused before
    // the broker saw it.
    let (r, metrics) = runtime().block_on(async {
        let mut c = Client::connect(&s.broker.url, &tls).await.unwrap();
        let health = c.send("GET", "/healthz", None).await.unwrap();
        (health, c.send("GET", "/metrics", None).await.unwrap())
    });
    assert_eq!(r.status, 200, "{}", r.text);
    assert!(!s.broker.log_text().contains("panicked"));
    for (outcome, n) in [
        ("malformed_json", 5),
        ("body_too_large", 1),
        ("method_not_allowed", 1),
        ("not_found", 1),
    ] {
        let line = format!(
            "seb_requests_total{{endpoint=\"http\",outcome=\"refused\",code=\"{outcome}\"}} {n}\n"
        );
        assert!(metrics.text.contains(&line), "{line}in {}", metrics.text);
    }
}

/// The distinct statuses of all recorded executions, read from the broker's store (another
/// process may read the SQLite store while the broker writes). An outcome that is not waited
/// for is committed within moments, so this polls until no request is still `issuing`.
fn execution_statuses(hsm: &Hsm) -> Vec<String> {
    let path = hsm.path("state/seb.db");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let conn = rusqlite::Connection::open_with_flags(
            &path,
            rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
        )
        .unwrap();
        let mut statement = conn
            .prepare("SELECT DISTINCT status FROM executions ORDER BY status")
            .unwrap();
        let statuses: Vec<String> = statement
            .query_map([], |r| r.get(0))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        if !statuses.iter().any(|s| s == "issuing") || std::time::Instant::now() > deadline {
            return statuses;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

#[test]
fn lost_hsm_means_503_and_no_token_then_recovery() {
    let s = setup();
    let tls = s.hsm.tls(&s.agent, true);
    let tokens = s.hsm.path("tokens");
    let token_dir = std::fs::read_dir(&tokens)
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    let aside = s.hsm.path("token-aside");
    runtime().block_on(async {
        let mut c = Client::connect(&s.broker.url, &tls).await.unwrap();
        let r = c
            .post_json("/v1/executions", &good_request())
            .await
            .unwrap();
        assert_eq!(r.status, 201, "{}", r.text);

        // The token disappears from under the broker (the HSM is gone).
        std::fs::rename(&token_dir, &aside).unwrap();
        let r = c
            .post_json("/v1/executions", &good_request())
            .await
            .unwrap();
        assert_eq!(r.status, 503, "{}", r.text);
        assert_eq!(error_code(&r), "hsm_unavailable");
        assert!(r.body.get("token").is_none());
        // The grant was recorded while the device was asked to sign; the record now says
        // that no token left (not "issuing", not "granted").
        assert_eq!(
            execution_statuses(&s.hsm),
            vec!["failed".to_owned(), "granted".to_owned()]
        );
        assert!(
            !r.text.contains("CKR"),
            "no PKCS#11 internals leak: {}",
            r.text
        );
        let h = c.send("GET", "/healthz", None).await.unwrap();
        assert_eq!(h.status, 503, "{}", h.text);
        assert_eq!(h.body["checks"]["hsm"]["ok"], false);
        // Unready is also an error answer in the API's shape, naming the failing check.
        assert_eq!(error_code(&h), "not_ready");
        assert!(
            h.body["error"]["message"]
                .as_str()
                .unwrap()
                .starts_with("hsm: "),
            "{}",
            h.text
        );

        // It comes back: the broker recovers without a restart.
        std::fs::rename(&aside, &token_dir).unwrap();
        let r = c
            .post_json("/v1/executions", &good_request())
            .await
            .unwrap();
        assert_eq!(r.status, 201, "{}", r.text);
    });
    let log = s.broker.log_text();
    assert!(
        log.contains("hsm_unavailable") || log.contains("HSM"),
        "{log}"
    );
}

/// `/healthz` pings the HSM and makes a durable write: a caller hammering it must not make the
/// broker do that at will. Readiness answers are reused for a second, and the route counts
/// against the per-certificate rate limit like every other.
#[test]
fn health_checks_are_cached_and_rate_limited() {
    let s = setup();
    let tls = s.hsm.tls(&s.agent, true);
    runtime().block_on(async {
        let mut c = Client::connect(&s.broker.url, &tls).await.unwrap();
        let started = std::time::Instant::now();
        for _ in 0..20 {
            let h = c.send("GET", "/healthz", None).await.unwrap();
            assert_eq!(h.status, 200, "{}", h.text);
        }
        let elapsed = started.elapsed();
        let metrics = c.send("GET", "/metrics", None).await.unwrap();
        let checks: u64 = metrics
            .text
            .lines()
            .find_map(|l| {
                l.strip_prefix("seb_requests_total{endpoint=\"healthz\",outcome=\"success\",code=\"checked\"} ")
            })
            .unwrap_or_else(|| panic!("no health check counter: {}", metrics.text))
            .parse()
            .unwrap();
        // One fresh check per started second at most (the cache lives 1 s).
        let allowed = elapsed.as_secs() + 1;
        assert!(
            (1..=allowed).contains(&checks),
            "20 calls in {elapsed:?} ran {checks} checks"
        );
        // Past the certificate's burst (100), /healthz answers 429 like any route.
        let mut limited = false;
        for _ in 0..150 {
            let h = c.send("GET", "/healthz", None).await.unwrap();
            if h.status == 429 {
                assert_eq!(error_code(&h), "rate_limited");
                limited = true;
                break;
            }
        }
        assert!(limited, "/healthz was never rate limited");
    });
}

#[test]
fn public_endpoints_serve_trust_crl_health_and_metrics() {
    let s = setup();
    let tls = s.hsm.tls(&s.agent, true);
    runtime().block_on(async {
        let mut c = Client::connect(&s.broker.url, &tls).await.unwrap();
        let _ = c
            .post_json("/v1/executions", &good_request())
            .await
            .unwrap();
        let trust = c.send("GET", "/v1/trust", None).await.unwrap();
        assert_eq!(trust.status, 200);
        assert_eq!(
            trust.text.matches("BEGIN CERTIFICATE").count(),
            4,
            "{}",
            trust.text
        );
        let crl = c.send("GET", "/v1/crl", None).await.unwrap();
        assert_eq!(crl.status, 200);
        // The public endpoint does not make the HSM sign a new CRL on every call.
        let again = c.send("GET", "/v1/crl", None).await.unwrap();
        assert_eq!(again.text, crl.text);
        let crl_path = s.hsm.path("served.crl");
        std::fs::write(&crl_path, &crl.text).unwrap();
        let (ok, text) = common::openssl(
            &[
                "crl",
                "-in",
                crl_path.to_str().unwrap(),
                "-CAfile",
                s.hsm.trust("root.pem").to_str().unwrap(),
                "-noout",
            ],
            s.hsm.dir.path(),
        );
        assert!(ok && text.contains("verify OK"), "{text}");
        // After a revocation the served CRL is a new one that lists it.
        let other = s.hsm.agent("other-bot", DEPLOY);
        let serial = seb::cert::Certificate::parse(&std::fs::read(&other.cert).unwrap())
            .unwrap()
            .serial_hex();
        s.hsm.seb_ok(&["cert", "revoke", "--serial", &serial]);
        let fresh = c.send("GET", "/v1/crl", None).await.unwrap();
        assert_ne!(fresh.text, crl.text);
        std::fs::write(&crl_path, &fresh.text).unwrap();
        let (_, listing) = common::openssl(
            &["crl", "-in", crl_path.to_str().unwrap(), "-noout", "-text"],
            s.hsm.dir.path(),
        );
        assert!(listing.contains(&serial.to_uppercase()), "{listing}");
        // The body is PEM, labelled as such; a client that asks for RFC 2585's type gets DER.
        let der_path = s.hsm.path("served-der.crl");
        let fetch_to = |route: &str, accept: &[&str], body: &std::path::Path| {
            let out = std::process::Command::new("curl")
                .args(["-sS", "--fail", "-D", "-", "-o"])
                .arg(body)
                .args(accept)
                .arg("--cacert")
                .arg(s.hsm.trust("root.pem"))
                .arg("--cert")
                .arg(&s.agent.cert)
                .arg("--key")
                .arg(&s.agent.key)
                .arg(format!("{}{route}", s.broker.url))
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
            String::from_utf8_lossy(&out.stdout).to_lowercase()
        };
        let fetch = |accept: &[&str]| fetch_to("/v1/crl", accept, &der_path);
        // The trust bundle is a bundle, not RFC 8555's chain (which starts at the end entity).
        let head = fetch_to("/v1/trust", &[], &s.hsm.path("served-trust.pem"));
        assert!(
            head.contains("content-type: application/x-pem-file"),
            "{head}"
        );
        let head = fetch(&[]);
        assert!(
            head.contains("content-type: application/x-pem-file"),
            "{head}"
        );
        let head = fetch(&["-H", "Accept: application/pkix-crl"]);
        assert!(
            head.contains("content-type: application/pkix-crl"),
            "{head}"
        );
        let (ok, text) = common::openssl(
            &[
                "crl",
                "-inform",
                "DER",
                "-in",
                der_path.to_str().unwrap(),
                "-CAfile",
                s.hsm.trust("root.pem").to_str().unwrap(),
                "-noout",
                "-text",
            ],
            s.hsm.dir.path(),
        );
        assert!(ok && text.contains("verify OK"), "{text}");
        assert!(text.contains(&serial.to_uppercase()), "{text}");
        let health = c.send("GET", "/healthz", None).await.unwrap();
        assert_eq!(health.status, 200, "{}", health.text);
        assert_eq!(health.body["status"], "ready");
        let metrics = c.send("GET", "/metrics", None).await.unwrap();
        assert!(
            metrics
                .text
                .contains("seb_requests_total{endpoint=\"executions\",outcome=\"success\",code=\"granted\"} 1"),
            "{}",
            metrics.text
        );
        assert!(
            metrics.text.contains("seb_hsm_sign_seconds_count 1"),
            "{}",
            metrics.text
        );
        assert!(
            !metrics.text.contains("deploy-bot"),
            "no subjects in metrics"
        );
    });
}

#[test]
fn full_store_means_503_and_no_token_then_recovery() {
    let hsm = Hsm::initialised();
    let agent = hsm.agent("deploy-bot", DEPLOY);
    // Move the state directory onto a 2 MiB filesystem.
    let fs = hsm.state_on_small_fs("2m");
    let broker = Broker::start(&hsm);
    let s = Setup { hsm, broker, agent };
    let tls = s.hsm.tls(&s.agent, true);
    runtime().block_on(async {
        let mut c = Client::connect(&s.broker.url, &tls).await.unwrap();
        let r = c
            .post_json("/v1/executions", &good_request())
            .await
            .unwrap();
        assert_eq!(r.status, 201, "{}", r.text);

        // Fill the filesystem.
        let filler = fs.0.join("filler");
        let _ = std::process::Command::new("dd")
            .args(["if=/dev/zero", "bs=64k"])
            .arg(format!("of={}", filler.display()))
            .output();
        let mut refused = 0;
        // Until the store refuses: the log file SQLite already has (after a checkpoint it is
        // written again from its start) may take a number of records before a write needs a
        // block the filesystem no longer has.
        for sent in 0..400 {
            if refused >= 3 || (refused > 0 && sent >= 20) {
                break;
            }
            let r = c
                .post_json("/v1/executions", &good_request())
                .await
                .unwrap();
            if r.status == 503 {
                // The record and its audit entry are one write: no log entry, no token.
                assert_eq!(error_code(&r), "audit_unavailable", "{}", r.text);
                assert!(r.body.get("token").is_none());
                assert!(
                    !r.text.contains("SQLITE") && !r.text.contains("disk"),
                    "{}",
                    r.text
                );
                refused += 1;
            } else {
                // Pages SQLite had already allocated may still take a few records.
                assert_eq!(r.status, 201, "{}", r.text);
            }
        }
        assert!(refused > 0, "a full store must refuse issuance");
        // Readiness answers are reused for a second (`HEALTH_TTL`), and a write that still
        // found an allocated page clears the failure: keep asking for tokens (each refused
        // one sets it again) until a fresh answer says why.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        let h = loop {
            let r = c
                .post_json("/v1/executions", &good_request())
                .await
                .unwrap();
            assert!([201, 503].contains(&r.status), "{}", r.text);
            let h = c.send("GET", "/healthz", None).await.unwrap();
            if h.status == 503 {
                break h;
            }
            assert!(std::time::Instant::now() < deadline, "{}", h.text);
            tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        };
        // The store's own probe is a one-row update that can still fit in the write-ahead
        // log's existing space on a full disk (it failed in most runs, not all); the audit
        // log's appends cannot, and that is what stops issuance.
        assert_eq!(h.body["checks"]["audit"]["ok"], false, "{}", h.text);
        assert!(
            h.body["checks"]["audit"]["reason"]
                .as_str()
                .is_some_and(|r| r.contains("audit log cannot be written")),
            "{}",
            h.text
        );

        // Space comes back: so does issuance.
        std::fs::remove_file(&filler).unwrap();
        let r = c
            .post_json("/v1/executions", &good_request())
            .await
            .unwrap();
        assert_eq!(r.status, 201, "{}", r.text);
    });
    drop(s);
}

fn rfc3339(t: std::time::SystemTime) -> String {
    der::DateTime::from_system_time(t).unwrap().to_string()
}

#[test]
fn not_yet_valid_certificates_are_refused_and_never_backdated() {
    let s = setup();
    let file = s.hsm.grants_file("later.toml", DEPLOY);
    s.hsm
        .identity("later", "CN=later", "agent", &["--grants", &file]);
    let start = rfc3339(std::time::SystemTime::now() + std::time::Duration::from_secs(3600));
    let scheduled = s.hsm.reissue(
        "later",
        "later-scheduled.pem",
        &[
            "--grants",
            &file,
            "--role",
            "agent",
            "--ttl",
            "1d",
            "--not-before",
            &start,
        ],
    );
    // Refused with a readable answer on a full handshake, not a TLS alert.
    let tls = s.hsm.tls(&scheduled, false);
    let r = runtime().block_on(async {
        let mut c = Client::connect(&s.broker.url, &tls).await.unwrap();
        c.post_json("/v1/executions", &good_request())
            .await
            .unwrap()
    });
    assert_eq!(r.status, 403, "{}", r.text);
    assert_eq!(error_code(&r), "certificate_not_yet_valid");

    let past = rfc3339(std::time::SystemTime::now() - std::time::Duration::from_secs(3600));
    let csr = s.hsm.path("later.csr");
    let never = s.hsm.path("never.pem");
    let out = s.hsm.seb(&[
        "cert",
        "issue",
        "--csr",
        csr.to_str().unwrap(),
        "--grants",
        &file,
        "--role",
        "agent",
        "--ttl",
        "1d",
        "--not-before",
        &past,
        "--out",
        never.to_str().unwrap(),
    ]);
    common::assert_clean_failure(&out, "in the past");
}

#[test]
fn an_agent_under_an_intermediate_presents_its_chain() {
    let s = setup();
    let team = s.hsm.grants_file("team.toml", DEPLOY);
    let ca_out = s.hsm.path("payments-ca.pem");
    s.hsm.seb_ok(&[
        "cert",
        "issue-ca",
        "--label",
        "payments-ca",
        "--subject",
        "CN=payments CA",
        "--grants",
        &team,
        "--ttl",
        "60d", // outlives the 30 d leaf below
        "--out",
        ca_out.to_str().unwrap(),
    ]);
    let narrow = s.hsm.grants_file(
        "narrow.toml",
        "[[grant]]\noperation = \"deploy.rollout\"\nresource = \"prod/payments/api\"\nmax_ttl = \"20s\"\nparams.replicas = { min = 1, max = 5 }\nparams.image = { prefix = \"registry.internal/payments/\" }\n",
    );
    let agent = s.hsm.identity(
        "team-bot",
        "CN=team-bot",
        "agent",
        &["--grants", &narrow, "--issuer", "payments-ca"],
    );
    let chain = std::fs::read_to_string(&agent.cert).unwrap();
    assert_eq!(
        chain.matches("BEGIN CERTIFICATE").count(),
        2,
        "leaf + intermediate"
    );
    // The trust bundle the broker serves includes the intermediate (after a restart).
    let mut s = s;
    assert!(s.broker.stop());
    s.broker = Broker::start(&s.hsm);
    let tls = s.hsm.tls(&s.agent, true);
    let bundle = runtime().block_on(async {
        let mut c = Client::connect(&s.broker.url, &tls).await.unwrap();
        c.send("GET", "/v1/trust", None).await.unwrap().text
    });
    assert_eq!(bundle.matches("BEGIN CERTIFICATE").count(), 5, "{bundle}");
    let r = post(&s, &agent, "/v1/executions", &good_request());
    assert_eq!(r.status, 201, "{}", r.text);
    let claims = claims_of(r.body["token"].as_str().unwrap());
    assert_eq!(
        claims["exp"].as_u64().unwrap() - claims["iat"].as_u64().unwrap(),
        20
    );
    // Narrower than the intermediate: 5 replicas at most.
    let mut wide = good_request();
    wide["params"]["replicas"] = json!(8);
    let r = post(&s, &agent, "/v1/executions", &wide);
    assert_eq!(error_code(&r), "param_constraint_violated");
}

/// A DER hex dump as openssl's `DER:` extension syntax wants it.
fn openssl_der(bytes: &[u8]) -> String {
    bytes
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

#[test]
fn an_agent_with_a_p256_key_from_seb_keygen_gets_a_token() {
    let s = setup();
    let dir = s.hsm.dir.path();
    let path = |name: &str| s.hsm.path(name).to_str().unwrap().to_owned();
    let out = s.hsm.seb_ok(&[
        "keygen",
        "--curve",
        "p256",
        "--out-key",
        &path("light.key"),
        "--out-csr",
        &path("light.csr"),
        "--subject",
        "CN=light-bot",
    ]);
    assert!(out.contains("ec-p256 key written"), "{out}");
    // openssl reads the key as P-256 and the CSR's self-signature as ECDSA with SHA-256.
    let (ok, key) = common::openssl(&["pkey", "-in", "light.key", "-noout", "-text"], dir);
    assert!(ok && key.contains("prime256v1"), "{key}");
    let (ok, csr) = common::openssl(
        &["req", "-in", "light.csr", "-verify", "-noout", "-text"],
        dir,
    );
    assert!(ok, "{csr}");
    assert!(csr.contains("ecdsa-with-SHA256"), "{csr}");
    let grants = s.hsm.grants_file("light-grants.toml", DEPLOY);
    s.hsm.seb_ok(&[
        "cert",
        "issue",
        "--csr",
        &path("light.csr"),
        "--role",
        "agent",
        "--grants",
        &grants,
        "--ttl",
        "1d",
        "--out",
        &path("light.pem"),
    ]);
    let (ok, text) = common::openssl(
        &[
            "verify",
            "-CAfile",
            s.hsm.trust("root.pem").to_str().unwrap(),
            "-purpose",
            "sslclient",
            "light.pem",
        ],
        dir,
    );
    assert!(ok, "{text}");

    // The agent's TLS handshake (CertificateVerify with its P-256 key) and the token.
    let light = Identity {
        cert: s.hsm.path("light.pem"),
        key: s.hsm.path("light.key"),
    };
    let r = post(&s, &light, "/v1/executions", &good_request());
    assert_eq!(r.status, 201, "{}", r.text);
    assert_eq!(r.body["status"], "granted");
    let token = r.body["token"].as_str().unwrap();
    let subject = claims_of(token)["sub"].as_str().unwrap().to_owned();
    assert!(subject.contains("light-bot"), "{subject}");

    // An unknown curve is refused by name.
    let out = common::seb(
        &[
            "keygen",
            "--curve",
            "p521",
            "--out-key",
            "x.key",
            "--out-csr",
            "x.csr",
            "--subject",
            "CN=x",
        ],
        dir,
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("p256 or p384"));
    assert!(!dir.join("x.key").exists());
}

#[test]
fn a_certificate_revoked_by_the_serial_openssl_prints_is_refused() {
    let s = setup();
    let dir = s.hsm.dir.path();
    let path = |name: &str| s.hsm.path(name).to_str().unwrap().to_owned();
    // An offline intermediate: its key is made in software, away from the broker's HSM.
    s.hsm.seb_ok(&[
        "keygen",
        "--out-key",
        &path("offline.key"),
        "--out-csr",
        &path("offline.csr"),
        "--subject",
        "CN=offline-ops",
    ]);
    let grants = s.hsm.grants_file("offline-grants.toml", DEPLOY);
    s.hsm.seb_ok(&[
        "cert",
        "issue-ca",
        "--label",
        "offline-ops",
        "--csr",
        &path("offline.csr"),
        "--grants",
        &grants,
        "--ttl",
        "60d",
        "--out",
        &path("offline-chain.pem"),
    ]);
    // The offline CA (openssl) certifies an agent with a serial whose top bit is set: DER
    // keeps a 00 sign byte in front of it, openssl prints none.
    s.hsm.seb_ok(&[
        "keygen",
        "--out-key",
        &path("top.key"),
        "--out-csr",
        &path("top.csr"),
        "--subject",
        "CN=top-bit-bot",
    ]);
    let role = seb::grants::Role::new(seb::grants::RoleKind::Agent, vec![])
        .unwrap()
        .to_der()
        .unwrap();
    let agent_grants = seb::grants::GrantSet::from_toml_str(DEPLOY)
        .unwrap()
        .to_der()
        .unwrap();
    std::fs::write(
        s.hsm.path("top.ext"),
        format!(
            "basicConstraints = critical, CA:FALSE\n\
             keyUsage = critical, digitalSignature\n\
             extendedKeyUsage = clientAuth\n\
             subjectKeyIdentifier = hash\n\
             authorityKeyIdentifier = keyid\n\
             {} = DER:{}\n\
             {} = DER:{}\n",
            seb::cert::SEB_ROLE_OID,
            openssl_der(&role),
            seb::cert::SEB_GRANTS_OID,
            openssl_der(&agent_grants),
        ),
    )
    .unwrap();
    // The offline CA signs a CSR with the agent extensions above, as NAME-leaf.pem; the chain
    // (leaf, intermediate) goes to NAME.pem.
    let intermediate = std::fs::read_to_string(s.hsm.path("offline-chain.pem")).unwrap();
    let (offline_chain, offline_key, ext) = (
        path("offline-chain.pem"),
        path("offline.key"),
        path("top.ext"),
    );
    let offline_sign = |csr: &str, name: &str, extra: &[&str]| {
        let (leaf, csr) = (path(&format!("{name}-leaf.pem")), path(csr));
        let mut args = vec![
            "x509",
            "-req",
            "-in",
            &csr,
            "-CA",
            &offline_chain,
            "-CAkey",
            &offline_key,
            "-days",
            "2",
            "-sha384",
            "-extfile",
            &ext,
            "-out",
            &leaf,
        ];
        args.extend_from_slice(extra);
        let (ok, text) = common::openssl(&args, dir);
        assert!(ok, "{text}");
        let leaf = std::fs::read_to_string(&leaf).unwrap();
        std::fs::write(
            s.hsm.path(&format!("{name}.pem")),
            format!("{leaf}{intermediate}"),
        )
        .unwrap();
        Identity {
            cert: s.hsm.path(&format!("{name}.pem")),
            key: s.hsm.path("top.key"),
        }
    };
    let agent = offline_sign(
        "top.csr",
        "top",
        &["-set_serial", "0x80a1b2c3d4e5f60718293a4b5c6d7e8f"],
    );
    let r = post(&s, &agent, "/v1/executions", &good_request());
    assert_eq!(r.status, 201, "{}", r.text);

    // The same CA signs a name with a right-to-left override, which `seb cert issue` would
    // refuse: the broker refuses it too, since approvers, the log and webhooks show it.
    let (ok, text) = common::openssl(
        &[
            "req",
            "-new",
            "-key",
            &path("top.key"),
            "-utf8",
            "-subj",
            "/CN=deploy-bot\u{202e}tob-yolped",
            "-out",
            &path("rlo.csr"),
        ],
        dir,
    );
    assert!(ok, "{text}");
    let hidden = offline_sign("rlo.csr", "rlo", &[]);
    let r = post(&s, &hidden, "/v1/executions", &good_request());
    assert_eq!(
        (r.status, error_code(&r)),
        (403, "bad_certificate"),
        "{}",
        r.text
    );
    assert!(r.text.contains("U+202E"), "{}", r.text);
    // And audited, with the name escaped (outside review: it was only logged).
    let refused = s.hsm.audit_entries_eventually("access_refused", 1);
    let entry = refused
        .iter()
        .find(|e| e["code"] == "bad_certificate")
        .unwrap_or_else(|| panic!("no bad_certificate entry in {refused:?}"));
    let subject = entry["cert"]["subject"].as_str().unwrap();
    assert!(
        subject.contains("\\u{202e}") && !subject.contains('\u{202e}'),
        "{subject}"
    );
    assert!(
        entry["detail"].as_str().unwrap().starts_with("POST: "),
        "{entry}"
    );

    // Revoked by the serial exactly as `openssl x509 -serial` prints it.
    let (ok, printed) = common::openssl(
        &["x509", "-in", &path("top-leaf.pem"), "-noout", "-serial"],
        dir,
    );
    assert!(ok, "{printed}");
    let printed = printed.trim().trim_start_matches("serial=").to_owned();
    assert_eq!(printed, "80A1B2C3D4E5F60718293A4B5C6D7E8F");
    // The broker did not issue it: the operator names the offline intermediate that did.
    let out = s.hsm.seb_ok(&[
        "cert",
        "revoke",
        "--serial",
        &printed,
        "--issuer",
        "offline-ops",
    ]);
    // The CLI answers in the canonical form: openssl's, no sign byte.
    assert!(out.contains(&format!("revoked {printed}")), "{out}");
    let r = post(&s, &agent, "/v1/executions", &good_request());
    assert_eq!(r.status, 403, "{}", r.text);
    assert_eq!(error_code(&r), "certificate_revoked");
    // The same serial as `openssl x509 -text` prints it, with a sign byte, in upper case:
    // one serial, already revoked.
    for form in [
        "80:a1:b2:c3:d4:e5:f6:07:18:29:3a:4b:5c:6d:7e:8f",
        "00:80:A1:B2:C3:D4:E5:F6:07:18:29:3A:4B:5C:6D:7E:8F",
        "0080a1b2c3d4e5f60718293a4b5c6d7e8f",
    ] {
        let out = s.hsm.seb_ok(&["cert", "revoke", "--serial", form]);
        assert!(out.contains("already revoked"), "{form}: {out}");
    }
}

#[test]
fn seb_request_and_token_verify_work_against_the_running_broker() {
    let s = setup();
    let dir = s.hsm.dir.path();
    let request = |op: &str, resource: &str, params: &str| {
        common::seb(
            &[
                "request",
                "--broker",
                &s.broker.url,
                "--ca",
                s.hsm.trust("root.pem").to_str().unwrap(),
                "--cert",
                s.agent.cert.to_str().unwrap(),
                "--key",
                s.agent.key.to_str().unwrap(),
                "--operation",
                op,
                "--resource",
                resource,
                "--params",
                params,
            ],
            dir,
        )
    };
    let params = r#"{"replicas":3,"image":"registry.internal/payments/api:1"}"#;
    let granted = request("deploy.rollout", "prod/payments/api", params);
    assert_eq!(
        granted.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&granted.stderr)
    );
    let body: Value = serde_json::from_slice(&granted.stdout).unwrap();
    let pending = request("db.migrate", "prod/payments/db", "{}");
    assert_eq!(pending.status.code(), Some(2));
    let denied = request("db.drop", "prod/payments/db", "{}");
    assert_eq!(denied.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&denied.stdout).contains("operation_not_granted"));

    // The executor's offline check of the HSM-signed token, with the bundle /v1/trust serves.
    let tls = s.hsm.tls(&s.agent, true);
    let bundle = runtime().block_on(async {
        let mut c = Client::connect(&s.broker.url, &tls).await.unwrap();
        c.send("GET", "/v1/trust", None).await.unwrap().text
    });
    std::fs::write(dir.join("bundle.pem"), bundle).unwrap();
    std::fs::write(dir.join("token.jwt"), body["token"].as_str().unwrap()).unwrap();
    let other = s.hsm.agent("other-bot", DEPLOY);
    let verify = |extra: &[&str]| {
        let mut args = vec![
            "token",
            "verify",
            "--trust",
            "bundle.pem",
            "--token",
            "token.jwt",
        ];
        args.extend_from_slice(extra);
        common::seb(&args, dir)
    };
    let agent_cert = s.agent.cert.to_str().unwrap();
    let full = [
        "--operation",
        "deploy.rollout",
        "--resource",
        "prod/payments/api",
        "--params",
        params,
        "--cert",
        agent_cert,
    ];
    let ok = verify(&full);
    assert_eq!(
        ok.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    for (index, value, code) in [
        (1, "deploy.rollback", "wrong_operation"),
        (3, "prod/payments/web", "wrong_resource"),
        (
            5,
            r#"{"replicas":9,"image":"registry.internal/payments/api:1"}"#,
            "wrong_params",
        ),
        (7, other.cert.to_str().unwrap(), "wrong_certificate"),
    ] {
        let mut extra = full.to_vec();
        extra[index] = value;
        let out = verify(&extra);
        assert_eq!(out.status.code(), Some(1), "{extra:?}");
        assert!(
            String::from_utf8_lossy(&out.stderr).contains(code),
            "{extra:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

#[test]
fn floods_from_one_certificate_are_rate_limited() {
    let hsm = Hsm::initialised();
    let agent = hsm.agent("deploy-bot", DEPLOY);
    let other = hsm.agent("other-bot", DEPLOY);
    let config = std::fs::read_to_string(hsm.config()).unwrap();
    let listen = format!("listen = \"127.0.0.1:{}\"", hsm.port);
    assert!(config.contains(&listen));
    std::fs::write(
        hsm.config(),
        config.replace(
            &listen,
            &format!("{listen}\nrate_limit_per_second = 1\nrate_limit_burst = 3"),
        ),
    )
    .unwrap();
    let broker = Broker::start(&hsm);
    let s = Setup { hsm, broker, agent };
    let tls = s.hsm.tls(&s.agent, true);
    runtime().block_on(async {
        let mut c = Client::connect(&s.broker.url, &tls).await.unwrap();
        let mut codes = Vec::new();
        for _ in 0..6 {
            let r = c
                .post_json("/v1/executions", &good_request())
                .await
                .unwrap();
            codes.push(r.status);
            if r.status == 429 {
                assert_eq!(error_code(&r), "rate_limited");
            }
        }
        assert_eq!(&codes[..3], &[201, 201, 201], "{codes:?}");
        // One token a second refills the bucket; even on a slow machine the next three
        // requests cannot all find one.
        assert!(codes[3..].contains(&429), "{codes:?}");
        assert!(codes.iter().all(|c| *c == 201 || *c == 429), "{codes:?}");
    });
    // The same certificate spelt with the other ECDSA signature (r, n − s) is another DER
    // and thumbprint, but the same client: it shares the bucket rather than get a fresh one.
    let twin = s.hsm.path("deploy-bot-twin.pem");
    std::fs::write(
        &twin,
        common::other_spelling(&std::fs::read(&s.agent.cert).unwrap()),
    )
    .unwrap();
    assert_ne!(
        std::fs::read(&twin).unwrap(),
        std::fs::read(&s.agent.cert).unwrap()
    );
    let twin = Identity {
        cert: twin,
        key: s.agent.key.clone(),
    };
    let codes: Vec<u16> = (0..3)
        .map(|_| post(&s, &twin, "/v1/executions", &good_request()).status)
        .collect();
    assert!(
        codes.contains(&429),
        "a re-encoded certificate got a fresh bucket: {codes:?}"
    );
    // Another certificate is not affected.
    let r = post(&s, &other, "/v1/executions", &good_request());
    assert_eq!(r.status, 201, "{}", r.text);
}

#[test]
fn stalled_handshakes_do_not_starve_token_signing() {
    let s = setup();
    let tls = s.hsm.tls(&s.agent, true);
    runtime().block_on(async {
        let mut c = Client::connect(&s.broker.url, &tls).await.unwrap();
        let r = c
            .post_json("/v1/executions", &good_request())
            .await
            .unwrap();
        assert_eq!(r.status, 201, "{}", r.text);
        // More silent connections than the runtime has blocking threads (512).
        let addr = s.broker.url.trim_start_matches("https://").to_owned();
        let mut stalled = Vec::new();
        for _ in 0..600 {
            stalled.push(tokio::net::TcpStream::connect(&addr).await.unwrap());
        }
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        let started = std::time::Instant::now();
        let r = c
            .post_json("/v1/executions", &good_request())
            .await
            .unwrap();
        assert_eq!(r.status, 201, "{}", r.text);
        assert!(
            started.elapsed() < std::time::Duration::from_secs(5),
            "issuance waited {:?} behind stalled handshakes",
            started.elapsed()
        );
        drop(stalled);
    });
}

/// The bytes of a real TLS ClientHello (what a client sends first), to send and then stall.
fn client_hello(s: &Setup) -> Vec<u8> {
    let mut roots = rustls::RootCertStore::empty();
    for der in seb::client::pem_blocks(
        &std::fs::read(s.hsm.trust("root.pem")).unwrap(),
        "CERTIFICATE",
    )
    .unwrap()
    {
        roots.add(der.into()).unwrap();
    }
    let config = rustls::ClientConfig::builder_with_provider(seb::tls::provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let mut connection =
        rustls::ClientConnection::new(std::sync::Arc::new(config), "localhost".try_into().unwrap())
            .unwrap();
    let mut hello = Vec::new();
    connection.write_tls(&mut hello).unwrap();
    assert!(hello.len() > 100, "no ClientHello written");
    hello
}

#[test]
fn clients_that_stall_after_their_client_hello_do_not_block_new_handshakes() {
    // More stalled clients than there are handshake slots (32): each sent a whole ClientHello,
    // got the server's answer (the HSM's signature) and then sends nothing. A new agent that
    // makes a full handshake (no resumption) still gets its token long before their 10 s
    // handshake deadline frees anything.
    let s = setup();
    let hello = client_hello(&s);
    let addr = s.broker.url.trim_start_matches("https://").to_owned();
    runtime().block_on(async {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut stalled = Vec::new();
        for _ in 0..48 {
            let mut socket = tokio::net::TcpStream::connect(&addr).await.unwrap();
            socket.write_all(&hello).await.unwrap();
            stalled.push(socket);
        }
        // Every stalled client has had its answer: the server is waiting on them.
        for socket in &mut stalled {
            let mut first = [0u8; 1];
            let n =
                tokio::time::timeout(std::time::Duration::from_secs(5), socket.read(&mut first))
                    .await
                    .expect("no ServerHello within 5 s")
                    .unwrap();
            assert_eq!((n, first[0]), (1, 0x16), "not a TLS handshake record");
        }
        let started = std::time::Instant::now();
        let tls = s.hsm.tls(&s.agent, false);
        let mut c = Client::connect(&s.broker.url, &tls).await.unwrap();
        let r = c
            .post_json("/v1/executions", &good_request())
            .await
            .unwrap();
        assert_eq!(r.status, 201, "{}", r.text);
        assert!(
            started.elapsed() < std::time::Duration::from_secs(5),
            "a new handshake waited {:?} behind stalled ones",
            started.elapsed()
        );
        drop(stalled);
    });
}

#[test]
fn a_handshake_that_needs_a_hello_retry_completes() {
    // A client whose first key share is for a group the broker does not offer (X448) gets a
    // HelloRetryRequest; its second ClientHello carries the signature's handshake, which the
    // broker finishes on a blocking thread. openssl is that client.
    let s = setup();
    let addr = s.broker.url.trim_start_matches("https://").to_owned();
    let mut child = std::process::Command::new("openssl")
        .args([
            "s_client",
            "-connect",
            &addr,
            "-groups",
            "X448:P-384",
            "-msg",
            "-CAfile",
            s.hsm.trust("root.pem").to_str().unwrap(),
            "-cert",
            s.agent.cert.to_str().unwrap(),
            "-key",
            s.agent.key.to_str().unwrap(),
            "-ign_eof",
        ])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    {
        use std::io::Write;
        let mut stdin = child.stdin.take().unwrap();
        stdin
            .write_all(b"GET /healthz HTTP/1.1\r\nHost: broker\r\nConnection: close\r\n\r\n")
            .unwrap();
    }
    let out = child.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    // Two ClientHellos: the retry happened.
    assert_eq!(text.matches(", ClientHello").count(), 2, "{text}");
    assert!(text.contains("HTTP/1.1 200"), "{text}");
}

/// A broker limited to `max_connections`, with an agent's connection open and every other
/// slot taken by what `occupy` opens; after a second, three new agents each get a token, the
/// agent connected before keeps being served, and three connections were displaced.
fn at_the_connection_limit<T>(
    max_connections: usize,
    occupy: impl AsyncFnOnce(&Setup, usize) -> Vec<T>,
) {
    let mut s = setup();
    assert!(s.broker.stop());
    s.hsm.edit_config(
        "[server]\n",
        &format!("[server]\nmax_connections = {max_connections}\n"),
    );
    s.broker = Broker::start(&s.hsm);
    runtime().block_on(async {
        let tls = s.hsm.tls(&s.agent, false);
        let mut before = Client::connect(&s.broker.url, &tls).await.unwrap();
        let held = occupy(&s, max_connections - 1).await;
        tokio::time::sleep(std::time::Duration::from_millis(1200)).await;
        let mut after = Vec::new();
        for _ in 0..3 {
            let mut c = Client::connect(&s.broker.url, &tls).await.unwrap();
            let r = c
                .post_json("/v1/executions", &good_request())
                .await
                .unwrap();
            assert_eq!(r.status, 201, "{}", r.text);
            after.push(c);
        }
        let r = before
            .post_json("/v1/executions", &good_request())
            .await
            .unwrap();
        assert_eq!(r.status, 201, "{}", r.text);
        let metrics = before.send("GET", "/metrics", None).await.unwrap();
        assert!(
            metrics.text.contains(
                r#"seb_requests_total{endpoint="tls",outcome="refused",code="displaced"} 3"#
            ),
            "{}",
            metrics.text
        );
        drop(held);
    });
}

#[test]
fn at_the_connection_limit_silent_connections_give_way_to_new_clients() {
    // Every other slot taken by sockets that connected and sent nothing (no certificate
    // needed for that): a new agent still connects once they have had a second to start
    // their handshake, and an agent connected before keeps being served.
    at_the_connection_limit(16, async |s: &Setup, n| {
        let addr = s.broker.url.trim_start_matches("https://").to_owned();
        let mut silent = Vec::new();
        for _ in 0..n {
            silent.push(tokio::net::TcpStream::connect(&addr).await.unwrap());
        }
        silent
    });
}

#[test]
fn at_the_connection_limit_connections_without_a_certificate_give_way_to_new_clients() {
    // Every other slot taken by clients without a certificate that finished their handshake
    // and read the trust bundle (which anyone may): they are displaced like unfinished
    // handshakes, so certificate holders still connect.
    at_the_connection_limit(8, async |s: &Setup, n| {
        let root = std::fs::read(s.hsm.trust("root.pem")).unwrap();
        let anonymous = seb::client::ClientTls::anonymous(&root).unwrap();
        let mut holding = Vec::new();
        for _ in 0..n {
            let mut c = Client::connect(&s.broker.url, &anonymous).await.unwrap();
            let r = c.send("GET", "/v1/trust", None).await.unwrap();
            assert_eq!(r.status, 200, "{}", r.text);
            holding.push(c);
        }
        holding
    });
}

#[test]
fn a_broker_stopped_as_soon_as_it_listens_stops_cleanly() {
    // A supervisor may send SIGTERM the moment the broker says it listens: the handler must be
    // in place by then (the default action would end the process with a failure status).
    let mut s = setup();
    for _ in 0..3 {
        assert!(s.broker.stop(), "{}", s.broker.log_text());
        s.broker = Broker::start(&s.hsm);
    }
}

#[test]
fn a_second_broker_on_the_same_sqlite_state_waits_for_the_first_to_exit() {
    // One broker per SQLite state directory (replicas share PostgreSQL): a second `seb serve`,
    // as a restart that overlaps the old process would start, waits for the first to exit and
    // only then serves.
    let mut s = setup();
    let port = common::free_port();
    std::thread::scope(|scope| {
        let second = scope.spawn(|| Broker::start_replica(&s.hsm, port, "second.log"));
        let log = s.hsm.path("second.log");
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        while !std::fs::read_to_string(&log)
            .unwrap_or_default()
            .contains("another seb serve holds this state directory")
        {
            assert!(
                std::time::Instant::now() < deadline,
                "the second broker did not wait: {}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        assert!(
            std::net::TcpStream::connect(("127.0.0.1", port)).is_err(),
            "the second broker listens while the first runs"
        );
        // The first still serves; once it has stopped, the second takes over.
        let r = post(&s, &s.agent, "/v1/executions", &good_request());
        assert_eq!(r.status, 201, "{}", r.text);
        assert!(s.broker.stop(), "{}", s.broker.log_text());
        let second = second.join().unwrap();
        s.broker = second;
        let r = post(&s, &s.agent, "/v1/executions", &good_request());
        assert_eq!(r.status, 201, "{}", r.text);
    });
}

#[test]
fn a_token_signed_with_the_token_key_but_not_as_issued_or_by_a_revoked_key_is_not_redeemed() {
    // Someone who can make the device sign with the token key (a stolen HSM session, a key
    // that was not this broker's alone) takes a real token id and changes its parameters:
    // redemption must refuse it, and must not burn the real token.
    let mut s = setup();
    let executor = s.hsm.identity("runner", "CN=runner", "executor", &[]);
    let r = post(&s, &s.agent, "/v1/executions", &good_request());
    assert_eq!(r.status, 201, "{}", r.text);
    let real = r.body["token"].as_str().unwrap().to_owned();
    assert!(s.broker.stop());

    let other = seb::canonical::params_digest(&json!({"replicas": 99, "image": "evil/x:1"}))
        .map(|d| seb::base64url::encode(&d))
        .unwrap();
    let config = seb::config::Config::load(&s.hsm.config()).unwrap();
    std::env::set_var("SOFTHSM2_CONF", s.hsm.softhsm_conf());
    let backend = s.hsm.backend(1);
    let signer = seb::backend::P384Signer::new(&backend, &config.keys.token).unwrap();
    let header = real.split('.').next().unwrap();
    // The real token with the digest of other parameters in `fields` of its claims (`detail.`:
    // of its authorization detail).
    let forge = |fields: &[&str]| {
        let mut claims = claims_of(&real);
        for field in fields {
            match field.strip_prefix("detail.") {
                Some(name) => claims["authorization_details"][0][name] = json!(other),
                None => claims[*field] = json!(other),
            }
        }
        let input = format!(
            "{header}.{}",
            seb::base64url::encode(claims.to_string().as_bytes())
        );
        let signature = signer.sign_message(input.as_bytes()).unwrap().normalize_s();
        format!("{input}.{}", seb::base64url::encode(&signature.to_bytes()))
    };
    let forged = [
        // Only the parameters the executor acts on.
        forge(&["params_digest", "detail.params_digest"]),
        // And the request digest with them.
        forge(&[
            "params_digest",
            "detail.params_digest",
            "detail.request_digest",
        ]),
    ];
    drop(signer);
    drop(backend);
    s.broker = Broker::start(&s.hsm);

    for forged in &forged {
        let r = post(
            &s,
            &executor,
            "/v1/tokens/redeem",
            &json!({"token": forged}),
        );
        assert_eq!(error_code(&r), "invalid_token", "{}", r.text);
        assert!(r.text.contains("not what this broker issued"), "{}", r.text);
    }
    let r = post(&s, &executor, "/v1/tokens/redeem", &json!({"token": real}));
    assert_eq!(r.status, 200, "the real token was not burned: {}", r.text);

    // The token key rotated and its old certificate revoked as compromised: tokens it signed
    // are not redeemed any more, new ones are.
    let old = post(&s, &s.agent, "/v1/executions", &good_request());
    assert_eq!(old.status, 201, "{}", old.text);
    s.hsm.seb_ok(&["rotate", "token"]);
    let retired = s.hsm.trust("retired");
    let retired_cert = std::fs::read_dir(&retired)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| {
            p.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with("token")
        })
        .expect("the retired token certificate");
    let serial = common::openssl_serial(&retired_cert);
    // `--unknown`: the certificates `init` made are not in the issuance record.
    s.hsm.revoke_unrecorded(&serial, "key-compromise");
    std::thread::sleep(std::time::Duration::from_secs(6));
    let r = post(
        &s,
        &executor,
        "/v1/tokens/redeem",
        &json!({"token": old.body["token"]}),
    );
    assert_eq!(error_code(&r), "invalid_token", "{}", r.text);
    assert!(r.text.contains("revoked"), "{}", r.text);
    let new = post(&s, &s.agent, "/v1/executions", &good_request());
    assert_eq!(new.status, 201, "{}", new.text);
    let r = post(
        &s,
        &executor,
        "/v1/tokens/redeem",
        &json!({"token": new.body["token"]}),
    );
    assert_eq!(r.status, 200, "{}", r.text);
}

/// One certificate cannot hold every connection slot (outside review: a revoked agent kept
/// 1,024 connections open with a request every 20 s and locked every other agent out). A
/// certificate's connections beyond `max_connections_per_certificate` close its oldest, other
/// certificates are untouched, and a refusal for the caller's own certificate (revoked here)
/// closes the connection it came on.
#[test]
fn one_certificate_holds_at_most_its_share_of_connections_and_a_revoked_one_is_closed() {
    let hsm = Hsm::initialised();
    hsm.edit_config(
        "[server]\n",
        "[server]\nmax_connections_per_certificate = 3\n",
    );
    let agent = hsm.agent("deploy-bot", DEPLOY);
    let other = hsm.agent("other-bot", DEPLOY);
    let broker = Broker::start(&hsm);
    let (tls, other_tls) = (hsm.tls(&agent, true), hsm.tls(&other, true));
    runtime().block_on(async {
        async fn grants(c: &mut Client) -> u16 {
            c.send("GET", "/v1/grants", None).await.unwrap().status
        }
        let mut bystander = Client::connect(&broker.url, &other_tls).await.unwrap();
        assert_eq!(grants(&mut bystander).await, 200);
        let mut open = Vec::new();
        for _ in 0..4 {
            let mut c = Client::connect(&broker.url, &tls).await.unwrap();
            assert_eq!(grants(&mut c).await, 200);
            open.push(c);
        }
        // The fourth closed the first (gracefully: at once, as it was idle); the other three
        // and the other agent's still answer.
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        assert!(open[0].send("GET", "/v1/grants", None).await.is_err());
        for c in &mut open[1..] {
            assert_eq!(grants(c).await, 200);
        }
        assert_eq!(grants(&mut bystander).await, 200);

        // Revoked: the refusal closes its connection.
        let serial = seb::cert::Certificate::parse(&std::fs::read(&agent.cert).unwrap())
            .unwrap()
            .serial_hex();
        hsm.seb_ok(&["cert", "revoke", "--serial", &serial]);
        let refused = open[1].send("GET", "/v1/grants", None).await.unwrap();
        assert_eq!(refused.status, 403, "{}", refused.text);
        assert_eq!(refused.body["error"]["code"], "certificate_revoked");
        assert!(open[1].send("GET", "/v1/grants", None).await.is_err());
        assert_eq!(grants(&mut bystander).await, 200);
    });
}

/// Outside review: on a state directory it could not write, SQLite opened the store
/// read-only without a word; the broker started, refused every write, and stayed that way
/// after the file system was writable again. It now refuses to start and says why.
#[test]
fn a_store_that_can_only_be_read_stops_the_start_with_a_reason() {
    let hsm = Hsm::initialised();
    // The database file alone made read-only (a bind mount over itself); the directory, and
    // so the broker's lock file beside it, stays writable.
    let db = hsm.path("state/seb.db");
    let mount = |args: &[&str]| {
        let ok = std::process::Command::new("mount")
            .args(args)
            .arg(&db)
            .arg(&db)
            .status()
            .unwrap()
            .success();
        assert!(ok, "mount {args:?}");
    };
    mount(&["--bind"]);
    let _unmount = common::SmallFs(db.clone());
    mount(&["-o", "remount,ro,bind"]);
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_seb"))
        .args(["--config", hsm.config().to_str().unwrap(), "serve"])
        .current_dir(hsm.dir.path())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let started = std::time::Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if started.elapsed() > std::time::Duration::from_secs(30) {
            let _ = child.kill();
            panic!("seb serve started on a read-only store");
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
    assert_eq!(status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("read-only"), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}
