//! The OpenAPI document in docs/ against the real router, driven without a socket
//! (`Router::oneshot`) over a real SoftHSM2 token: every documented operation exists and
//! answers with a documented status, and every route is documented.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::collections::BTreeSet;

use axum::body::Body;
use axum::http::Request;
use common::Hsm;
use seb::server::{router, App, ROUTES};
use tower::ServiceExt;

#[test]
fn openapi_document_matches_the_router() {
    let doc: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(common::repo().join("docs/openapi.json")).unwrap(),
    )
    .unwrap();
    let documented: BTreeSet<(String, String)> = doc["paths"]
        .as_object()
        .unwrap()
        .iter()
        .flat_map(|(path, ops)| {
            ops.as_object()
                .unwrap()
                .keys()
                .map(move |m| (m.to_uppercase(), path.clone()))
        })
        .collect();
    let served: BTreeSet<(String, String)> = ROUTES
        .iter()
        .map(|(m, p, _)| (m.to_string(), p.to_string()))
        .collect();
    assert_eq!(
        documented, served,
        "docs/openapi.json and server::ROUTES differ"
    );
    // Who may call each route, as the access table says.
    for (method, path, access) in ROUTES {
        let roles = &doc["paths"][path][method.to_lowercase()]["x-seb-roles"];
        assert_eq!(
            roles,
            &serde_json::json!(access.names()),
            "x-seb-roles of {method} {path} in docs/openapi.json"
        );
    }

    // A real broker on a real token, in this process (this test binary holds one test, so
    // setting the SoftHSM configuration for the process is safe).
    let hsm = Hsm::initialised();
    let agent = hsm.agent("agent", "[[grant]]\noperation = \"a.b\"\nresource = \"x/*\"\nmax_ttl = \"10s\"\nparams_any = true\n");
    let broker = common::in_process_broker(&hsm);
    let der = seb::client::pem_blocks(&std::fs::read(&agent.cert).unwrap(), "CERTIFICATE").unwrap();
    let peer = broker.peer(&der, std::time::SystemTime::now()).unwrap();
    let app = router(App::new(broker));

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    for (method, path) in &served {
        let uri = path.replace("{id}", "no-such-request");
        let body = match (method.as_str(), path.as_str()) {
            ("POST", "/v1/executions") => r#"{"operation":"a.b","resource":"x/y","params":{}}"#,
            ("POST", "/v1/tokens/redeem") => r#"{"token":"a.b.c"}"#,
            _ => "",
        };
        let mut request = Request::builder()
            .method(method.as_str())
            .uri(&uri)
            .header("content-type", "application/json")
            .body(Body::from(body))
            .unwrap();
        request.extensions_mut().insert(peer.clone());
        let response = runtime.block_on(app.clone().oneshot(request)).unwrap();
        let status = response.status().as_u16().to_string();
        let bytes = runtime
            .block_on(axum::body::to_bytes(response.into_body(), 1 << 20))
            .unwrap();
        let text = String::from_utf8_lossy(&bytes);
        assert!(
            !text.contains("no such endpoint") && !text.contains("method_not_allowed"),
            "{method} {path} is not routed: {text}"
        );
        let documented = &doc["paths"][path][method.to_lowercase()]["responses"];
        assert!(
            documented.get(&status).is_some(),
            "{method} {path} answered {status}, which docs/openapi.json does not document: {text}"
        );
    }
}

/// The snake_case string literals in the body of `fn disposition` in `file`: the error codes
/// that function can answer with (its messages have spaces, so they are not taken).
fn disposition_codes(file: &str) -> BTreeSet<String> {
    let text = std::fs::read_to_string(common::repo().join(file)).unwrap();
    let start = text.find("fn disposition(").unwrap();
    let body = &text[start..];
    let end = body.find("\n    }\n").unwrap();
    body[..end]
        .split('"')
        .skip(1)
        .step_by(2)
        .filter(|s| {
            !s.is_empty()
                && s.bytes().all(|b| b.is_ascii_lowercase() || b == b'_')
                && !s.starts_with('_')
        })
        .map(str::to_owned)
        .collect()
}

#[test]
fn every_error_code_the_broker_answers_with_is_in_the_documented_enum() {
    // A client validating answers against docs/openapi.json must not meet a code it lists
    // nowhere.
    let doc: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(common::repo().join("docs/openapi.json")).unwrap(),
    )
    .unwrap();
    let documented: BTreeSet<String> = doc["components"]["schemas"]["Error"]["properties"]["error"]
        ["properties"]["code"]["enum"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c.as_str().unwrap().to_owned())
        .collect();
    let mut answered = disposition_codes("src/broker/error.rs");
    answered.extend(disposition_codes("src/server/error.rs"));
    answered.extend(
        seb::authz::DenyCode::ALL
            .iter()
            .map(|c| c.as_str().to_owned()),
    );
    assert!(answered.len() > 40, "{answered:?}");
    let missing: Vec<_> = answered.difference(&documented).collect();
    assert!(
        missing.is_empty(),
        "codes missing from docs/openapi.json: {missing:?}"
    );
}
