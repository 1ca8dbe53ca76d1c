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
