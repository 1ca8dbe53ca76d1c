//! The agents' side (issue 18): `GET /v1/grants`, the agent's own authority as the decision
//! applies it, over real TLS against a real broker on its own SoftHSM2 token.

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
    let part = token.split('.').nth(1).unwrap();
    serde_json::from_slice(&seb::base64url::decode(part).unwrap()).unwrap()
}
