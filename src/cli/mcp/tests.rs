use super::tools::schema;
use super::*;

#[test]
fn request_ids_cannot_steer_the_route() {
    assert!(seb::broker::is_request_id(
        "AZLb0cYxAAAAbWFkZS11cC1yYW5kb20"
    ));
    for bad in [
        "",
        "../trust",
        "x?status=pending",
        "abc/approvals",
        "AZLb0cYxAAAAbWFkZS11cC1yYW5kb20%2F",
        "short",
    ] {
        assert!(!seb::broker::is_request_id(bad), "{bad}");
    }
}

#[test]
fn tool_inputs_have_no_identity_fields_and_refuse_unknown_ones() {
    for schema in [
        schema::<ExecutionRequest>(),
        schema::<RequestRef>(),
        schema::<NoArguments>(),
    ] {
        assert_eq!(schema["additionalProperties"], json!(false), "{schema:?}");
        let properties = schema
            .get("properties")
            .and_then(Value::as_object)
            .cloned()
            .unwrap_or_default();
        for forbidden in ["cert", "key", "ca", "broker", "executor", "identity"] {
            assert!(!properties.contains_key(forbidden), "{forbidden}");
        }
    }
    let err = parse::<ExecutionRequest>(json!({
        "operation": "demo.write", "resource": "demo/files", "cert": "/tmp/other.pem"
    }));
    let Err(Outcome::Refused(v)) = err else {
        panic!("accepted an unknown field")
    };
    assert_eq!(v["error"]["code"], "invalid_arguments");
    assert!(v["error"]["message"].as_str().unwrap().contains("cert"));
}

/// An executor's 500 `action_failed` after the redemption carries the failed run's receipt:
/// the agent's tool result keeps it (outside review: only the code and message were kept).
#[test]
fn a_refusal_keeps_the_receipt_of_a_run_that_failed_after_redemption() {
    let answer = seb::client::ApiResponse {
        status: 500,
        body: json!({
            "error": {"code": "action_failed", "message": "the token was redeemed ..."},
            "receipt": {"body": {"exit_code": -2}, "signature": "sig"},
            "outcome_recorded": true,
        }),
        text: String::new(),
    };
    let Outcome::Refused(refused) = refusal_from("executor", &answer) else {
        panic!("not a refusal")
    };
    assert_eq!(refused["error"]["code"], "action_failed");
    assert_eq!(refused["receipt"]["body"]["exit_code"], -2, "{refused}");
    assert_eq!(refused["outcome_recorded"], true, "{refused}");
    let plain = seb::client::ApiResponse {
        status: 403,
        body: json!({"error": {"code": "wrong_params", "message": "m"}}),
        text: String::new(),
    };
    let Outcome::Refused(refused) = refusal_from("executor", &plain) else {
        panic!("not a refusal")
    };
    assert!(refused.get("receipt").is_none(), "{refused}");
}
