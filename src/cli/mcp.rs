//! `seb mcp`: the agent side as a Model Context Protocol server over stdio, so an MCP host
//! (Claude Desktop, an agent framework) can give a model seb's tools and nothing more.
//!
//! Tools: `list_grants`, `request_execution`, `execution_status` and, with `--executor`,
//! `execute`. Their input schemas are the JSON schemas of the broker's own request type
//! ([`seb::broker::ExecutionRequest`]), and the results of `request_execution` and
//! `execution_status` are described by the broker's own answer type
//! ([`seb::broker::ExecutionResponse`]); the broker's JSON is passed through.
//!
//! What it must never do:
//! * let the model choose who it is or whom it talks to: the broker, the root it pins, the
//!   certificate, the key and the executor come from the command line only; no tool input has
//!   a field for them, and an unknown field is refused;
//! * let the model reach another broker route: a request id must look like one before it goes
//!   into a path;
//! * write anything but MCP messages to stdout (logs go to stderr).
//!
//! A refusal the model can act on (the broker's deny code and message, an executor's refusal,
//! bad arguments, an unreachable broker) is a tool result with `isError` and the code and
//! message as structured content, never a protocol error.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rmcp::model::{
    CallToolRequestParams, CallToolResponse, CallToolResult, ContentBlock, Implementation,
    JsonObject, ListToolsResult, PaginatedRequestParams, ServerCapabilities, ServerConfig,
};
use rmcp::service::RequestContext;
use rmcp::{ErrorData, RoleServer, ServerHandler, ServiceExt};
use seb::broker::ExecutionRequest;
use seb::client::{ApiResponse, Client, ClientTls};
use serde_json::{json, Value};

use super::{BrokerConnection, CliError, CliResult};

mod framing;
mod tools;

/// Options of `seb mcp`: the identity and the endpoints, fixed for the whole session.
#[derive(Debug, clap::Args)]
pub struct McpArgs {
    #[command(flatten)]
    connection: BrokerConnection,
    /// Also offer the `execute` tool: request a token, then run it at this executor
    /// (`https://host:port`, `seb exec`) with the same certificate, and return its receipt.
    #[arg(long, value_name = "EXECUTOR_URL")]
    executor: Option<String>,
    /// How long `execute` waits for the executor's answer once the token is presented: at
    /// least the longest action `timeout` the executor runs, plus a minute (its checks,
    /// redemption and report). Past it the tool says it does not know whether the action ran.
    #[arg(long, default_value = "10m", value_parser = parse_duration)]
    execute_timeout: Duration,
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    seb::duration::parse(s).map_err(|e| e.to_string())
}

/// How long one broker or executor exchange may take before the tool reports
/// `broker_unreachable` / `executor_unreachable`.
const CALL_TIMEOUT: Duration = Duration::from_secs(30);

/// Runs the MCP server on stdin/stdout until the host closes it.
pub fn run(args: McpArgs) -> CliResult {
    // Read the files and URLs before serving: a wrong path or URL is a start-up error, not a
    // tool error (and an executor URL found wrong only after a token was issued would spend
    // it for nothing).
    let tls = args.connection.tls()?;
    seb::client::parse_url(&args.connection.broker)?;
    if let Some(executor) = &args.executor {
        seb::client::parse_url(executor)?;
    }
    let server = SebMcp {
        broker: args.connection.broker,
        executor: args.executor,
        execute_timeout: args.execute_timeout,
        tls,
        asked: Arc::new(Mutex::new(VecDeque::new())),
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let result = runtime.block_on(async move {
        // The host's lines are screened before the session sees them (framing.rs); the
        // session's answers and the screen's share one writer to stdout.
        let (host_side, session_in) = tokio::io::duplex(64 << 10);
        let (session_out, from_session) = tokio::io::duplex(64 << 10);
        let (lines, to_stdout) = tokio::sync::mpsc::channel(64);
        let writer = tokio::spawn(framing::write_lines(to_stdout, tokio::io::stdout()));
        tokio::spawn(framing::session_output(
            tokio::io::BufReader::new(from_session),
            lines.clone(),
        ));
        tokio::spawn(framing::screen_input(
            tokio::io::BufReader::new(tokio::io::stdin()),
            host_side,
            lines,
        ));
        let service = server
            .serve((session_in, session_out))
            .await
            .map_err(|e| -> CliError { format!("MCP initialisation failed: {e}").into() })?;
        let ended = service
            .waiting()
            .await
            .map_err(|e| -> CliError { format!("MCP session ended with an error: {e}").into() });
        // Everything answered reaches stdout before the process ends.
        let _ = tokio::time::timeout(Duration::from_secs(5), writer).await;
        ended?;
        Ok(())
    });
    // A read of stdin still waiting (the session ended before the host closed it) must not
    // keep the process alive.
    runtime.shutdown_timeout(Duration::from_secs(1));
    result
}

/// The server: the session's fixed identity and endpoints, and the parameters of the last
/// [`REMEMBERED`] requests it made (so `execute` can run a request once its approvals are in).
#[derive(Clone)]
struct SebMcp {
    broker: String,
    executor: Option<String>,
    execute_timeout: Duration,
    tls: ClientTls,
    asked: Arc<Mutex<VecDeque<(String, Value)>>>,
}

/// How many of its requests (id and parameters) a session remembers for `execute {request_id}`.
const REMEMBERED: usize = 256;

/// `list_grants` takes nothing.
#[derive(Debug, serde::Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
struct NoArguments {}

/// A request made earlier, by its id.
#[derive(Debug, serde::Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
struct RequestRef {
    /// The `request_id` that `request_execution` or `execute` returned.
    request_id: String,
}

/// A tool's outcome: structured content, and whether it is an error for the model to act on.
enum Outcome {
    Ok(Value, Option<String>),
    Refused(Value),
}

impl Outcome {
    /// A refusal with a stable code and a message.
    fn refused(code: &str, message: impl Into<String>) -> Self {
        Outcome::Refused(json!({"error": {"code": code, "message": message.into()}}))
    }

    fn into_result(self) -> CallToolResult {
        match self {
            Outcome::Ok(value, hint) => {
                let mut result = CallToolResult::structured(value);
                if let Some(hint) = hint {
                    result.content.push(ContentBlock::text(hint));
                }
                result
            }
            Outcome::Refused(value) => CallToolResult::structured_error(value),
        }
    }
}

impl SebMcp {
    async fn call(&self, name: &str, arguments: JsonObject) -> Result<Outcome, ErrorData> {
        let arguments = Value::Object(arguments);
        Ok(match name {
            "list_grants" => match parse::<NoArguments>(arguments) {
                Ok(NoArguments {}) => self.list_grants().await,
                Err(refusal) => refusal,
            },
            "request_execution" => match parse::<ExecutionRequest>(arguments) {
                Ok(request) => self.request_execution(&request).await.0,
                Err(refusal) => refusal,
            },
            "execution_status" => match parse::<RequestRef>(arguments) {
                Ok(r) => self.execution_status(&r.request_id).await.0,
                Err(refusal) => refusal,
            },
            "execute" if self.executor.is_some() => self.execute(arguments).await,
            other => {
                return Err(ErrorData::invalid_params(
                    format!("no tool named {other:?}"),
                    None,
                ))
            }
        })
    }

    async fn list_grants(&self) -> Outcome {
        match self.broker_call("GET", "/v1/grants", None).await {
            Ok(r) if r.status == 200 => Outcome::Ok(r.body, None),
            Ok(r) => refusal_from("broker", &r),
            Err(refusal) => refusal,
        }
    }

    /// Posts the request; returns the outcome and, when granted, the token.
    async fn request_execution(&self, request: &ExecutionRequest) -> (Outcome, Option<String>) {
        if !request.params.is_object() {
            return (
                Outcome::refused("invalid_arguments", "params must be a JSON object"),
                None,
            );
        }
        let mut body = json!({
            "operation": request.operation,
            "resource": request.resource,
            "params": request.params,
        });
        if let Some(j) = &request.justification {
            body["justification"] = Value::String(j.clone());
        }
        if serde_json::to_vec(&body).map_or(true, |b| b.len() > MAX_FORWARDED) {
            return (
                Outcome::refused(
                    "invalid_arguments",
                    format!(
                        "the request is larger than {} KiB; send smaller params or justification",
                        MAX_FORWARDED >> 10
                    ),
                ),
                None,
            );
        }
        let response = match self
            .broker_call("POST", "/v1/executions", Some(&body))
            .await
        {
            Ok(r) => r,
            Err(refusal) => return (refusal, None),
        };
        if let Some(id) = response.body["request_id"].as_str() {
            if let Ok(mut asked) = self.asked.lock() {
                if asked.len() == REMEMBERED {
                    asked.pop_front();
                }
                asked.push_back((id.to_owned(), request.params.clone()));
            }
        }
        match response.status {
            201 | 202 => execution_answer(response),
            _ => (refusal_from("broker", &response), None),
        }
    }

    /// The request's status; returns the outcome and, when granted, the token.
    async fn execution_status(&self, id: &str) -> (Outcome, Option<String>) {
        if !seb::broker::is_request_id(id) {
            return (
                Outcome::refused(
                    "invalid_arguments",
                    "request_id is not a request id (base64url, as request_execution returned it)",
                ),
                None,
            );
        }
        match self
            .broker_call("GET", &format!("/v1/executions/{id}"), None)
            .await
        {
            Ok(r) if r.status == 200 => execution_answer(r),
            Ok(r) => (refusal_from("broker", &r), None),
            Err(refusal) => (refusal, None),
        }
    }

    /// `execute`: a new request, or `{request_id}` of one made earlier in this session.
    async fn execute(&self, arguments: Value) -> Outcome {
        let by_id = arguments
            .as_object()
            .is_some_and(|a| a.contains_key("request_id"));
        let (id, answer, token, params) = if by_id {
            let reference = match parse::<RequestRef>(arguments) {
                Ok(r) => r,
                Err(refusal) => return refusal,
            };
            let remembered = self.asked.lock().ok().and_then(|asked| {
                asked
                    .iter()
                    .find(|(id, _)| *id == reference.request_id)
                    .map(|(_, params)| params.clone())
            });
            let Some(params) = remembered else {
                return Outcome::refused(
                    "unknown_request",
                    "this server made no request with that id in this session (or too many \
                     since); ask again with execute and the request",
                );
            };
            let (answer, token) = self.execution_status(&reference.request_id).await;
            (reference.request_id, answer, token, params)
        } else {
            let request = match parse::<ExecutionRequest>(arguments) {
                Ok(r) => r,
                Err(refusal) => return refusal,
            };
            let (answer, token) = self.request_execution(&request).await;
            let id = match &answer {
                Outcome::Ok(v, _) => v["request_id"].as_str().unwrap_or_default().to_owned(),
                Outcome::Refused(_) => String::new(),
            };
            (id, answer, token, request.params)
        };
        // Not granted (pending, rejected, refused): say so and run nothing.
        let Some(token) = token else {
            return answer;
        };
        let Some(executor) = &self.executor else {
            return Outcome::refused("no_executor", "seb mcp was started without --executor");
        };
        let body = json!({"token": token, "params": params});
        let call = async {
            // Its own limit (`--execute-timeout`) holds the whole call.
            let mut client = Client::connect(executor, &self.tls.to_executors())
                .await?
                .answer_within(seb::client::EXECUTOR_ANSWER_TIMEOUT);
            client.post_json("/v1/run", &body).await
        };
        let outcome = match tokio::time::timeout(self.execute_timeout, call).await {
            Ok(Ok(r)) if r.status == 200 => {
                let mut value = r.body;
                let failure = super::request::action_failure(&value);
                if let Some(object) = value.as_object_mut() {
                    object.insert("request_id".into(), Value::String(id.clone()));
                }
                let Some(failure) = failure else {
                    return Outcome::Ok(value, None);
                };
                // It ran and failed: an error result the model must not take for success, with
                // the receipt (evidence of what ran) kept beside the code.
                let message = format!("{failure}; the token is spent");
                value["error"] = json!({"code": "action_failed", "message": message});
                value["source"] = json!("executor");
                Outcome::Refused(value)
            }
            Ok(Ok(r)) => refusal_from("executor", &r),
            // Not connected: the token was never presented.
            Ok(Err(
                e @ (seb::client::ClientError::Connect(..) | seb::client::ClientError::Url(_)),
            )) => Outcome::refused(
                "executor_unreachable",
                format!(
                    "cannot reach the executor: {}; the token was not presented",
                    with_causes(&e)
                ),
            ),
            // Presented, but no answer: it may have acted. A retry cannot act twice.
            Ok(Err(e)) => Outcome::refused(
                "executor_unreachable",
                format!(
                    "the executor's answer was lost ({}); whether it acted is unknown. \
                     Retrying with execute {{request_id}} is safe: the token is single-use, so \
                     the executor acts at most once",
                    with_causes(&e)
                ),
            ),
            Err(_) => Outcome::refused(
                "executor_unreachable",
                "the executor did not answer in time; whether it acted is unknown. Retrying \
                 with execute {request_id} is safe: the token is single-use, so the executor \
                 acts at most once",
            ),
        };
        // Every answer after a token was issued names its request: the retry the messages
        // offer (`execute {request_id}`) presents the same single-use token again, where a
        // retry with the action would be a new request and could act twice.
        match outcome {
            Outcome::Refused(mut value) if !id.is_empty() => {
                if let Some(object) = value.as_object_mut() {
                    object.insert("request_id".into(), Value::String(id));
                }
                Outcome::Refused(value)
            }
            other => other,
        }
    }

    /// One exchange with the broker, on a fresh connection (TLS session resumption keeps it
    /// cheap); a failure to reach it is a refusal the model can act on.
    async fn broker_call(
        &self,
        method: &str,
        path: &str,
        body: Option<&Value>,
    ) -> Result<ApiResponse, Outcome> {
        let call = async {
            let mut client = Client::connect(&self.broker, &self.tls).await?;
            match body {
                Some(b) => client.post_json(path, b).await,
                None => client.send(method, path, None).await,
            }
        };
        match tokio::time::timeout(CALL_TIMEOUT, call).await {
            Ok(Ok(r)) => Ok(r),
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "broker call failed");
                let hint = self
                    .tls
                    .explain(&e, std::time::SystemTime::now())
                    .map(|h| format!(" ({h})"))
                    .unwrap_or_default();
                Err(Outcome::refused(
                    "broker_unreachable",
                    format!("{}{hint}", with_causes(&e)),
                ))
            }
            Err(_) => Err(Outcome::refused(
                "broker_unreachable",
                "the broker did not answer in time",
            )),
        }
    }
}

impl ServerHandler for SebMcp {
    fn get_info(&self) -> ServerConfig {
        ServerConfig::new(ServerCapabilities::builder().enable_tools().build())
            .with_server_info(Implementation::new("seb", env!("CARGO_PKG_VERSION")))
            .with_instructions(
                "seb issues short-lived, single-use execution tokens for exactly what this \
                 agent's certificate grants. Call list_grants first; ask with \
                 request_execution (or execute, when offered); a request that needs approvals \
                 answers pending_approval: poll execution_status. A refusal carries a stable \
                 error.code and a message: adjust the request to a grant or stop; never try to \
                 obtain another identity.",
            )
    }

    async fn list_tools(
        &self,
        _request: Option<PaginatedRequestParams>,
        _context: RequestContext<RoleServer>,
    ) -> Result<ListToolsResult, ErrorData> {
        Ok(ListToolsResult::with_all_items(self.tools()))
    }

    async fn call_tool(
        &self,
        request: CallToolRequestParams,
        _context: RequestContext<RoleServer>,
    ) -> Result<CallToolResponse, ErrorData> {
        let outcome = self
            .call(&request.name, request.arguments.unwrap_or_default())
            .await?;
        Ok(outcome.into_result().into())
    }
}

/// The largest request `seb mcp` forwards: far above the broker's default body limit (64 KiB),
/// so that an oversized one is refused here as what it is rather than failing as if the
/// broker were unreachable.
const MAX_FORWARDED: usize = 1 << 20;

/// Tool arguments as `T`; anything else (an unknown field such as a certificate or a broker
/// URL, a missing or mistyped one) is an `invalid_arguments` refusal.
fn parse<T: serde::de::DeserializeOwned>(arguments: Value) -> Result<T, Outcome> {
    serde_json::from_value(arguments)
        .map_err(|e| Outcome::refused("invalid_arguments", format!("invalid arguments: {e}")))
}

/// A `201`/`202`/`200` answer about a request: the broker's body as it is, a line for the
/// model about what to do next, and the token when there is one.
fn execution_answer(response: ApiResponse) -> (Outcome, Option<String>) {
    let status = response.body["status"].as_str().unwrap_or_default();
    let token = (status == "granted")
        .then(|| response.body["token"].as_str().map(str::to_owned))
        .flatten();
    let hint = match status {
        "pending_approval" => Some(format!(
            "Waiting for {} approval(s) from group {:?} (have {}); the request expires at \
             {} (Unix seconds). Poll execution_status with request_id {:?}.",
            response.body["approvals_required"],
            response.body["approval_group"].as_str().unwrap_or_default(),
            response.body["approvals"].as_array().map_or(0, |a| a
                .iter()
                .filter(|x| x["decision"] == "approve")
                .count()),
            response.body["expires_at"],
            response.body["request_id"].as_str().unwrap_or_default(),
        )),
        _ => None,
    };
    (Outcome::Ok(response.body, hint), token)
}

/// An error and its causes on one line ("cannot connect to the broker: Connection refused").
pub(super) fn with_causes(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// A refusal by the broker or the executor, with its code and message as it sent them.
fn refusal_from(source: &str, response: &ApiResponse) -> Outcome {
    let code = response.body["error"]["code"]
        .as_str()
        .unwrap_or("unexpected_answer");
    let message = response.body["error"]["message"]
        .as_str()
        .map_or_else(|| format!("HTTP {}", response.status), str::to_owned);
    let mut refused = json!({
        "error": {"code": code, "message": message},
        "source": source,
        "http_status": response.status,
    });
    // An executor's action that failed after its token was redeemed: the signed receipt of
    // the failed run, and whether the broker recorded it, go to the agent too.
    for field in ["receipt", "outcome_recorded"] {
        if let Some(value) = response.body.get(field) {
            refused[field] = value.clone();
        }
    }
    Outcome::Refused(refused)
}

#[cfg(test)]
mod tests;
