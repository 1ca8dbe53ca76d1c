//! Every route of the router against callers whose certificates are good, revoked, not yet
//! valid, expired, foreign or of another role: driven without a socket (`Router::oneshot`)
//! over a real SoftHSM2 token, so that the check runs on every route, not only where TLS or
//! the decision happened to look.
//!
//! One test in this binary: it points the process's SoftHSM2 at its token through the
//! environment.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use axum::body::Body;
use axum::http::Request;
use common::{Hsm, Identity};
use seb::broker::Access;
use seb::broker::{Broker, Peer};
use seb::server::{router, Anonymous, App, ROUTES};
use serde_json::{json, Value};
use tower::ServiceExt;

const GRANTS: &str = "[[grant]]\noperation = \"deploy.rollout\"\nresource = \"prod/payments/*\"\nmax_ttl = \"60s\"\nparams_any = true\n";

fn request() -> Value {
    json!({"operation": "deploy.rollout", "resource": "prod/payments/api", "params": {"replicas": 3}})
}

struct Harness {
    broker: Arc<Broker>,
    app: axum::Router,
    runtime: tokio::runtime::Runtime,
}

impl Harness {
    fn peer(&self, who: &Identity) -> Arc<Peer> {
        let der =
            seb::client::pem_blocks(&std::fs::read(&who.cert).unwrap(), "CERTIFICATE").unwrap();
        self.broker.peer(&der, SystemTime::now()).unwrap()
    }

    /// (status, error code or "", body) of `method path` with `body`, as `peer` (the
    /// connection's identity: a certificate's [`Peer`], or [`Anonymous`] without one).
    fn call<P: Clone + Send + Sync + 'static>(
        &self,
        peer: &P,
        method: &str,
        path: &str,
        body: &Value,
    ) -> (u16, String, Value) {
        let body = if body.is_null() {
            String::new()
        } else {
            body.to_string()
        };
        let mut request = Request::builder()
            .method(method)
            .uri(path)
            .header("content-type", "application/json")
            .body(Body::from(body))
            .unwrap();
        request.extensions_mut().insert(peer.clone());
        let response = self
            .runtime
            .block_on(self.app.clone().oneshot(request))
            .unwrap();
        let status = response.status().as_u16();
        let bytes = self
            .runtime
            .block_on(axum::body::to_bytes(response.into_body(), 1 << 20))
            .unwrap();
        let value: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        let code = value["error"]["code"].as_str().unwrap_or("").to_owned();
        (status, code, value)
    }
}

/// Every route, with a body or query it would accept from a caller it admits.
fn every_route(request_id: &str, token: &str) -> Vec<(&'static str, String, Value)> {
    ROUTES
        .iter()
        .map(|route| {
            let (method, path) = (route.0, route.1);
            let uri = match path {
                "/v1/executions/{id}" => format!("/v1/executions/{request_id}"),
                "/v1/attestation" => {
                    "/v1/attestation?nonce=00112233445566778899aabbccddeeff".into()
                }
                other => other.to_owned(),
            };
            let body = match (method, path) {
                ("POST", "/v1/executions") => request(),
                ("POST", "/v1/tokens/redeem") => json!({"token": token}),
                _ => Value::Null,
            };
            (method, uri, body)
        })
        .collect()
}

#[test]
fn every_route_checks_the_whole_chain_and_the_role_of_the_caller() {
    let hsm = Hsm::initialised();
    let grants = hsm.grants_file("grants.toml", GRANTS);
    let agent = hsm.agent("agent", GRANTS);
    let doomed = hsm.agent("doomed", GRANTS);
    let executor = hsm.identity("executor", "CN=executor", "executor", &[]);
    let approver = hsm.identity("alice", "CN=alice", "approver", &["--group", "sre-leads"]);
    hsm.identity("later", "CN=later", "executor", &[]);
    let start = SystemTime::now() + Duration::from_secs(3600);
    let start = rfc3339(start);
    let later = hsm.reissue(
        "later",
        "later-scheduled.pem",
        &["--role", "executor", "--ttl", "1d", "--not-before", &start],
    );
    hsm.agent("brief", GRANTS);
    let brief = hsm.reissue(
        "brief",
        "brief-2s.pem",
        &["--grants", &grants, "--role", "agent", "--ttl", "2s"],
    );
    let other_installation = Hsm::initialised();
    let foreign = other_installation.agent("foreign", GRANTS);

    let broker = common::in_process_broker(&hsm);
    let h = Harness {
        app: router(App::new(broker.clone())),
        broker,
        runtime: tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .unwrap(),
    };
    let (agent_p, doomed_p, executor_p, approver_p) = (
        h.peer(&agent),
        h.peer(&doomed),
        h.peer(&executor),
        h.peer(&approver),
    );
    let (later_p, brief_p, foreign_p) = (h.peer(&later), h.peer(&brief), h.peer(&foreign));

    // The doomed agent gets a token, and can fetch it, until it is revoked.
    let (status, _, granted) = h.call(&doomed_p, "POST", "/v1/executions", &request());
    assert_eq!(status, 201, "{granted}");
    let request_id = granted["request_id"].as_str().unwrap().to_owned();
    let token = granted["token"].as_str().unwrap().to_owned();
    let fetch = format!("/v1/executions/{request_id}");
    let (status, _, fetched) = h.call(&doomed_p, "GET", &fetch, &Value::Null);
    assert_eq!(
        (status, fetched["token"].as_str()),
        (200, Some(token.as_str()))
    );
    let serial = seb::cert::Certificate::parse(&std::fs::read(&doomed.cert).unwrap())
        .unwrap()
        .serial_hex();
    hsm.seb_ok(&[
        "cert",
        "revoke",
        "--serial",
        &serial,
        "--reason",
        "key-compromise",
    ]);

    // Revoked, not yet valid, expired, foreign: refused on every route, with the reason.
    std::thread::sleep(Duration::from_millis(2500));
    for (who, peer, code) in [
        ("revoked agent", &doomed_p, "certificate_revoked"),
        (
            "not-yet-valid executor",
            &later_p,
            "certificate_not_yet_valid",
        ),
        ("expired agent", &brief_p, "certificate_expired"),
        (
            "agent of another installation",
            &foreign_p,
            "bad_certificate",
        ),
    ] {
        for (method, uri, body) in every_route(&request_id, &token) {
            let (status, got, answer) = h.call(peer, method, &uri, &body);
            assert_eq!(
                (status, got.as_str()),
                (403, code),
                "{who}: {method} {uri}: {answer}"
            );
        }
    }

    // A token whose agent was revoked is not redeemed, even by a good executor.
    let (status, code, answer) = h.call(
        &executor_p,
        "POST",
        "/v1/tokens/redeem",
        &json!({"token": token}),
    );
    assert_eq!(
        (status, code.as_str()),
        (403, "agent_certificate_revoked"),
        "{answer}"
    );

    // Roles, per the table next to ROUTES.
    let (status, _, mine) = h.call(&agent_p, "POST", "/v1/executions", &request());
    assert_eq!(status, 201, "{mine}");
    let id = mine["request_id"].as_str().unwrap().to_owned();
    let own = format!("/v1/executions/{id}");
    let wrong_role = |peer: &Arc<Peer>, method: &str, uri: &str, body: &Value| {
        let (status, code, answer) = h.call(peer, method, uri, body);
        assert_eq!(
            (status, code.as_str()),
            (403, "wrong_role"),
            "{method} {uri}: {answer}"
        );
    };
    wrong_role(&approver_p, "POST", "/v1/executions", &request());
    wrong_role(&executor_p, "POST", "/v1/executions", &request());
    wrong_role(&executor_p, "GET", &own, &Value::Null);
    wrong_role(&executor_p, "GET", "/v1/grants", &Value::Null);
    wrong_role(&approver_p, "GET", "/v1/grants", &Value::Null);
    let (status, _, authority) = h.call(&agent_p, "GET", "/v1/grants", &Value::Null);
    assert_eq!(
        (status, &authority["grants"][0]["operation"]),
        (200, &json!("deploy.rollout")),
        "{authority}"
    );
    wrong_role(
        &agent_p,
        "POST",
        "/v1/tokens/redeem",
        &json!({"token": "a.b.c"}),
    );
    wrong_role(
        &approver_p,
        "POST",
        "/v1/tokens/redeem",
        &json!({"token": "a.b.c"}),
    );
    let (status, _, seen) = h.call(&approver_p, "GET", &own, &Value::Null);
    assert_eq!(status, 200, "{seen}");
    assert!(seen.get("token").is_none(), "approvers see the status only");
    // Without a certificate: the routes for anyone answer (attestation as it would to a
    // certificate holder), every other route is refused, and says why.
    let anonymous = Anonymous("127.0.0.1".parse().unwrap());
    for ((method, uri, body), (_, _, access)) in every_route(&id, "a.b.c").into_iter().zip(ROUTES) {
        let (status, code, answer) = h.call(&anonymous, method, &uri, &body);
        match access {
            Access::Anyone if uri.starts_with("/v1/attestation") => assert_eq!(
                (status, code.as_str()),
                (404, "attestation_not_configured"),
                "{uri}: {answer}"
            ),
            Access::Anyone => assert_eq!(status, 200, "{uri}: {code}"),
            _ => {
                assert_eq!(
                    (status, code.as_str()),
                    (403, "bad_certificate"),
                    "{method} {uri}: {answer}"
                );
                assert!(
                    answer["error"]["message"]
                        .as_str()
                        .is_some_and(|m| m.contains("no client certificate")),
                    "{answer}"
                );
            }
        }
    }
    // Quotes for callers without a certificate come out of a budget of their own (5/s, burst
    // 10), so many addresses cannot spend the one certificate holders share (20/s, burst 40).
    let quote = "/v1/attestation?nonce=00112233445566778899aabbccddeeff";
    let mut limited = 0;
    for i in 0..14 {
        let elsewhere = Anonymous(format!("192.0.2.{i}").parse().unwrap());
        let (status, code, answer) = h.call(&elsewhere, "GET", quote, &Value::Null);
        match status {
            429 => limited += 1,
            _ => assert_eq!(
                (status, code.as_str()),
                (404, "attestation_not_configured"),
                "{answer}"
            ),
        }
    }
    assert!(limited >= 3, "{limited} of 14 quotes refused");
    let (status, code, _) = h.call(&agent_p, "GET", quote, &Value::Null);
    assert_eq!((status, code.as_str()), (404, "attestation_not_configured"));
    // Any good certificate may read the public routes.
    for peer in [&agent_p, &executor_p, &approver_p] {
        for path in ["/v1/trust", "/v1/crl", "/healthz", "/metrics"] {
            let (status, code, _) = h.call(peer, "GET", path, &Value::Null);
            assert_eq!(status, 200, "{path}: {code}");
        }
        let (status, code, _) = h.call(
            peer,
            "GET",
            "/v1/attestation?nonce=00112233445566778899aabbccddeeff",
            &Value::Null,
        );
        assert_eq!((status, code.as_str()), (404, "attestation_not_configured"));
    }
    let (status, code, answer) = h.call(
        &executor_p,
        "POST",
        "/v1/tokens/redeem",
        &json!({"token": mine["token"]}),
    );
    assert_eq!((status, code.as_str()), (200, ""), "{answer}");
}

/// RFC 3339 in UTC, whole seconds.
fn rfc3339(t: SystemTime) -> String {
    der::DateTime::from_system_time(t).unwrap().to_string()
}
