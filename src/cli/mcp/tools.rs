//! The tools `seb mcp` offers a model, with their descriptions and annotations, and the JSON
//! schemas of their inputs and results (written so that MCP hosts accept them).

use std::sync::Arc;

use rmcp::model::{JsonObject, Tool, ToolAnnotations};
use seb::broker::{ExecutionRequest, ExecutionResponse};
use serde_json::{json, Value};

use super::{NoArguments, RequestRef, SebMcp};

impl SebMcp {
    /// The tools this session offers.
    pub(super) fn tools(&self) -> Vec<Tool> {
        let read_only = ToolAnnotations::new()
            .read_only(true)
            .destructive(false)
            .open_world(false);
        let mut tools = vec![
            Tool::new(
                "list_grants",
                "What this agent may ask for: its effective grants (operation, resource, \
                 parameter constraints, token lifetime, approval rule), its certificate's \
                 expiry, the broker's policy epoch and whether issuance is frozen. Call it \
                 before asking, so requests match a grant.",
                schema::<NoArguments>(),
            )
            .annotate(read_only.clone()),
            Tool::new(
                "request_execution",
                "Ask the broker for a short-lived, single-use execution token for one \
                 operation on one resource with exact parameters. Result `status`: `granted` \
                 (with `token` and `expires_at`), or `pending_approval` (with `request_id`, \
                 `approvals_required`, `approval_group`, the `approvals` so far and \
                 `expires_at`: poll `execution_status`). A refusal is an error result with \
                 the broker's `error.code` and `error.message` (e.g. operation_not_granted, \
                 param_constraint_violated): change the request to fit a grant, or stop.",
                schema::<ExecutionRequest>(),
            )
            .with_raw_output_schema(answer_or_refusal_schema::<ExecutionResponse>())
            .annotate(
                ToolAnnotations::new()
                    .read_only(false)
                    .destructive(false)
                    .idempotent(false)
                    .open_world(false),
            ),
            Tool::new(
                "execution_status",
                "Where a request stands: `pending_approval` (approvals so far), `granted` \
                 (with the token, while it is valid), `rejected`, `expired`, `denied`, \
                 `issuing` or `failed`. Poll it, not more than every few seconds, after \
                 `request_execution` answered `pending_approval`.",
                schema::<RequestRef>(),
            )
            .with_raw_output_schema(answer_or_refusal_schema::<ExecutionResponse>())
            .annotate(read_only),
        ];
        if self.executor.is_some() {
            tools.push(
                Tool::new(
                    "execute",
                    "Request a token and run it at the executor, which verifies it, redeems it \
                     once, performs the mapped action and returns a receipt signed with its own \
                     key (`status: executed`, `succeeded`, `receipt`). An action that ran and \
                     failed is an error result with code `action_failed`, the receipt beside \
                     it. Give the request (operation, \
                     resource, params, justification), or `request_id` alone to run a request \
                     made earlier in this session once its approvals are in. A request that \
                     waits for approvals returns `pending_approval` and runs nothing. A \
                     refusal by the broker or the executor is an error result with its \
                     `error.code` and `error.message`.",
                    execute_schema(),
                )
                .annotate(
                    ToolAnnotations::new()
                        .read_only(false)
                        .destructive(true)
                        .idempotent(false)
                        .open_world(true),
                ),
            );
        }
        tools
    }
}

/// The input schema of `T`, as rmcp writes it for tools (JSON Schema 2020-12).
pub(super) fn schema<T: schemars::JsonSchema + 'static>() -> Arc<JsonObject> {
    rmcp::handler::server::common::schema_for_type::<T>()
}

/// `execute` takes a request, or the id of one made earlier. One flat object with the fields of
/// both and none required: hosts refuse `anyOf`/`oneOf` at the top of an input schema (the
/// Anthropic API fails every call of a session that offers such a tool), so which of the two
/// was meant is decided when the call is parsed ([`SebMcp::execute`]: `request_id` present or
/// not), and each form is then parsed strictly.
fn execute_schema() -> Arc<JsonObject> {
    let mut object = schema::<ExecutionRequest>().as_ref().clone();
    object.remove("required");
    let reference = schema::<RequestRef>();
    if let (Some(Value::Object(properties)), Some(Value::Object(id))) = (
        object.get_mut("properties"),
        reference
            .get("properties")
            .and_then(|p| p.get("request_id")),
    ) {
        let mut id = id.clone();
        id.insert(
            "description".into(),
            json!(
                "Instead of a request: the `request_id` of a request this session made \
                 earlier, to run it once its approvals are in. Give it alone."
            ),
        );
        properties.insert("request_id".into(), Value::Object(id));
    }
    object.insert(
        "description".into(),
        json!(
            "Either a request (`operation`, `resource`, `params`, optional `justification`) \
             or `request_id` alone."
        ),
    );
    Arc::new(object)
}

/// The output schema of a tool that answers `T` or a refusal (`{"error": {"code",
/// "message"}, "source", "http_status"}`, with `isError`): hosts check structured content
/// against the output schema even for error results, so the schema admits both. The answer's
/// `$defs` stay at the root, where its `$ref`s point.
fn answer_or_refusal_schema<T: schemars::JsonSchema + 'static>() -> Arc<JsonObject> {
    let mut answer = rmcp::handler::server::common::schema_for_output::<T>()
        .as_ref()
        .clone();
    let mut root = JsonObject::new();
    for hoisted in ["$schema", "$defs"] {
        if let Some(value) = answer.remove(hoisted) {
            root.insert(hoisted.into(), value);
        }
    }
    let refusal = json!({
        "type": "object",
        "required": ["error"],
        "properties": {
            "error": {
                "type": "object",
                "required": ["code", "message"],
                "properties": {
                    "code": {"type": "string", "description": "The stable error code."},
                    "message": {"type": "string"}
                }
            },
            "source": {"type": "string", "enum": ["broker", "executor"]},
            "http_status": {"type": "integer"}
        }
    });
    root.insert("type".into(), json!("object"));
    root.insert("anyOf".into(), json!([Value::Object(answer), refusal]));
    Arc::new(root)
}
