//! `seb mcp` end to end: a real MCP client (the official Python SDK, PyPI `mcp`, in the venv
//! `deploy/install-deps.sh` makes) starts `seb mcp` over stdio and drives it against a real
//! `seb serve` (its own SoftHSM2 token) and a real `seb exec`. The agent, using only the MCP
//! tools, lists its grants, has a granted request executed with a signed receipt, is denied
//! with the broker's code, and waits for a request that two approvers (`seb approve`) approve.
//! Threats named: the model choosing its own identity or broker (unknown fields), a request id
//! that would steer the route, replaying an executed request.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};

use common::{Broker, Executor, Hsm, Identity};
use serde_json::{json, Value};

/// The Python with the `mcp` SDK: the agents' side virtual environment that
/// deploy/install-deps.sh makes (`SEB_PYTHON` overrides it). Missing, the test fails: it is
/// never skipped.
fn python() -> PathBuf {
    let python = std::env::var_os("SEB_PYTHON").map_or_else(
        || PathBuf::from("/var/lib/seb-ci/agents-venv/bin/python"),
        PathBuf::from,
    );
    assert!(
        python.exists(),
        "{} not found: run `bash deploy/install-deps.sh` (it puts the Python MCP SDK in \
         /var/lib/seb-ci/agents-venv), or set SEB_PYTHON",
        python.display()
    );
    python
}

/// The MCP host (tests/mcp_host.py) running `seb mcp ARGS`: one JSON command in, one JSON
/// answer out.
struct Host {
    child: Child,
    stdin: Option<ChildStdin>,
    stdout: BufReader<ChildStdout>,
    stderr: PathBuf,
}

impl Host {
    fn start(dir: &Path, seb_mcp_args: &[String]) -> (Self, Value) {
        let stderr = dir.join(format!("mcp-host-{}.log", common::free_port()));
        let mut child = Command::new(python())
            .arg(common::repo().join("tests/mcp_host.py"))
            .arg("--")
            .arg(env!("CARGO_BIN_EXE_seb"))
            .arg("mcp")
            .args(seb_mcp_args)
            .current_dir(dir)
            .env_remove("SEB_CONFIG")
            .env("RUST_LOG", "warn")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&stderr).unwrap())
            .spawn()
            .expect("start the Python MCP host");
        let stdin = child.stdin.take();
        let stdout = BufReader::new(child.stdout.take().unwrap());
        let mut host = Self {
            child,
            stdin,
            stdout,
            stderr,
        };
        let hello = host.read();
        (host, hello)
    }

    fn read(&mut self) -> Value {
        let mut line = String::new();
        self.stdout.read_line(&mut line).unwrap();
        assert!(
            !line.is_empty(),
            "the MCP host ended:\n{}",
            std::fs::read_to_string(&self.stderr).unwrap_or_default()
        );
        serde_json::from_str(&line).unwrap()
    }

    fn send(&mut self, command: &Value) -> Value {
        let stdin = self.stdin.as_mut().unwrap();
        writeln!(stdin, "{command}").unwrap();
        stdin.flush().unwrap();
        self.read()
    }

    fn tools(&mut self) -> Vec<Value> {
        self.send(&json!({"list_tools": true}))["tools"]
            .as_array()
            .unwrap()
            .clone()
    }

    /// Calls a tool; asserts the SDK found nothing wrong with the answer (its output schema
    /// check included) and that it was a tool result, not a protocol error.
    fn call(&mut self, tool: &str, arguments: Value) -> Value {
        let answer = self.send(&json!({"call": tool, "arguments": arguments}));
        assert!(
            answer.get("client_error").is_none() && answer.get("protocol_error").is_none(),
            "{tool}: {answer}"
        );
        answer
    }

    /// A successful tool result's structured content.
    fn ok(&mut self, tool: &str, arguments: Value) -> Value {
        let answer = self.call(tool, arguments);
        assert_eq!(answer["is_error"], false, "{tool}: {answer}");
        answer["structured"].clone()
    }

    /// A refused tool call (isError): its structured content, with `error.code`.
    fn refused(&mut self, tool: &str, arguments: Value) -> Value {
        let answer = self.call(tool, arguments);
        assert_eq!(answer["is_error"], true, "{tool}: {answer}");
        assert!(
            answer["structured"]["error"]["code"].is_string(),
            "{answer}"
        );
        assert!(
            answer["structured"]["error"]["message"].is_string(),
            "{answer}"
        );
        answer["structured"].clone()
    }

    /// Closes stdin; the host ends the session and exits cleanly.
    fn finish(mut self) {
        drop(self.stdin.take());
        let status = self.child.wait().unwrap();
        assert!(
            status.success(),
            "MCP host: {status}\n{}",
            std::fs::read_to_string(&self.stderr).unwrap_or_default()
        );
    }
}

impl Drop for Host {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

const GRANTS: &str = r#"
[[grant]]
operation = "demo.write"
resource = "demo/files"
max_ttl = "60s"
params_any = true

[[grant]]
operation = "demo.write"
resource = "demo/approved"
max_ttl = "60s"
params_any = true
approval = { required = 2, group = "sre-leads" }
"#;

/// The options of a client of the broker with `who`'s certificate.
fn connection(hsm: &Hsm, broker: &str, who: &Identity) -> Vec<String> {
    vec![
        "--broker".into(),
        broker.into(),
        "--ca".into(),
        hsm.trust("root.pem").display().to_string(),
        "--cert".into(),
        who.cert.display().to_string(),
        "--key".into(),
        who.key.display().to_string(),
    ]
}

/// `who` approves request `id` with `seb approve`, signing with its own key.
fn approve(hsm: &Hsm, broker: &Broker, who: &Identity, id: &str) {
    let conn = connection(hsm, &broker.url, who);
    let mut args = vec!["approve"];
    args.extend(conn.iter().map(String::as_str));
    args.extend(["--reason", "looked at it", id]);
    common::assert_success(&common::seb(&args, hsm.dir.path()), "seb approve");
}

/// An executor with the `demo.write` action on both resources, writing into `out`, that
/// checks approved tokens against the certificates of `approvers`.
fn executor_config(hsm: &Hsm, broker: &Broker, out: &Path, approvers: &[&Identity]) -> PathBuf {
    let bundle: String = approvers
        .iter()
        .map(|a| std::fs::read_to_string(&a.cert).unwrap())
        .collect();
    std::fs::write(hsm.path("approvers.pem"), bundle).unwrap();
    common::exec::config(
        hsm,
        broker,
        out,
        r#"approvers = "approvers.pem""#,
        &["demo/files", "demo/approved"],
    )
}

fn claims(token: &str) -> Value {
    let payload = token.split('.').nth(1).unwrap();
    serde_json::from_slice(&seb::base64url::decode(payload).unwrap()).unwrap()
}

#[test]
fn an_agent_using_only_mcp_lists_grants_executes_is_denied_and_waits_for_two_approvers() {
    let hsm = Hsm::initialised();
    common::exec::identity(&hsm);
    let agent = hsm.agent("agent", GRANTS);
    let other = hsm.agent("other-agent", GRANTS);
    let approver = |name: &str| {
        hsm.identity(
            name,
            &format!("CN={name}"),
            "approver",
            &["--group", "sre-leads"],
        )
    };
    let (alice, bob) = (approver("alice"), approver("bob"));
    let broker = Broker::start(&hsm);
    let out = hsm.path("demo-output");
    let exec = Executor::start(&hsm, &executor_config(&hsm, &broker, &out, &[&alice, &bob]));

    // The MCP host starts `seb mcp` with the agent's identity: the only place it is given.
    let mut args = connection(&hsm, &broker.url, &agent);
    args.extend(["--executor".into(), exec.url.clone()]);
    let (mut host, hello) = Host::start(hsm.dir.path(), &args);
    assert_eq!(hello["initialized"]["server"], "seb", "{hello}");

    // The tools, their input schemas from the broker's request type: no field for an
    // identity, a certificate or a broker, and no other field either.
    let tools = host.tools();
    let names: Vec<&str> = tools.iter().map(|t| t["name"].as_str().unwrap()).collect();
    assert_eq!(
        names,
        [
            "list_grants",
            "request_execution",
            "execution_status",
            "execute"
        ]
    );
    let request_tool = &tools[1];
    let properties: Vec<&String> = request_tool["input_schema"]["properties"]
        .as_object()
        .unwrap()
        .keys()
        .collect();
    assert_eq!(
        properties,
        ["justification", "operation", "params", "resource"]
    );
    for tool in &tools[..3] {
        assert_eq!(
            tool["input_schema"]["additionalProperties"], false,
            "{tool}"
        );
        assert!(!tool["description"].as_str().unwrap().is_empty());
    }
    // The answer's schema, or the refusal's: hosts check error results against it too.
    let output = &request_tool["output_schema"];
    assert_eq!(
        output["anyOf"][0]["properties"]["status"]["$ref"],
        "#/$defs/ExecutionState"
    );
    assert!(output["$defs"]["ExecutionState"].is_object(), "{output}");
    assert_eq!(output["anyOf"][1]["required"], json!(["error"]), "{output}");
    // `execute` takes a request or a request id, in one flat object: hosts refuse anyOf,
    // oneOf or allOf at the top of an input schema (the Anthropic API fails the session).
    let execute = &tools[3]["input_schema"];
    for combinator in ["anyOf", "oneOf", "allOf"] {
        assert!(execute.get(combinator).is_none(), "{execute}");
    }
    assert_eq!(execute["type"], "object");
    assert_eq!(execute["additionalProperties"], false, "{execute}");
    for field in [
        "operation",
        "resource",
        "params",
        "justification",
        "request_id",
    ] {
        assert!(
            execute["properties"][field].is_object(),
            "{field}: {execute}"
        );
    }

    // 1. Its grants, as the broker states them: the tool passes the broker's answer through.
    let grants = host.ok("list_grants", json!({}));
    let direct = common::runtime().block_on(async {
        let mut c = seb::client::Client::connect(&broker.url, &hsm.tls(&agent, true))
            .await
            .unwrap();
        c.send("GET", "/v1/grants", None).await.unwrap()
    });
    assert_eq!(direct.status, 200, "{}", direct.text);
    assert_eq!(grants, direct.body);
    let text = grants.to_string();
    assert!(
        text.contains("demo/files") && text.contains("demo/approved") && text.contains("sre-leads"),
        "{grants}"
    );

    // 2. A granted request, executed: the executor's answer with its signed receipt.
    let params = json!({"name": "mcp.txt", "text": "written by a model through MCP"});
    let executed = host.ok(
        "execute",
        json!({"operation": "demo.write", "resource": "demo/files", "params": params,
               "justification": "the user asked for it"}),
    );
    assert_eq!(executed["status"], "executed", "{executed}");
    assert_eq!(executed["succeeded"], true, "{executed}");
    assert_eq!(executed["receipt"]["body"]["exit_code"], 0, "{executed}");
    assert!(executed["request_id"].is_string(), "{executed}");
    // An action that ran and failed is an error result, with the receipt beside the code.
    let failed = host.refused(
        "execute",
        json!({"operation": "demo.write", "resource": "demo/files",
               "params": {"name": "../escape.txt", "text": "x"}}),
    );
    assert_eq!(failed["error"]["code"], "action_failed", "{failed}");
    assert_eq!(failed["succeeded"], false, "{failed}");
    assert_eq!(failed["receipt"]["body"]["exit_code"], 1, "{failed}");
    // Neither form of the arguments half-given: a request without its resource.
    let half = host.refused("execute", json!({"operation": "demo.write", "params": {}}));
    assert_eq!(half["error"]["code"], "invalid_arguments", "{half}");
    assert_eq!(
        std::fs::read_to_string(out.join("mcp.txt")).unwrap(),
        "written by a model through MCP"
    );
    // The receipt is evidence: it verifies offline under the executor's certificate.
    let receipt = hsm.path("mcp-receipt.json");
    std::fs::write(&receipt, executed.to_string()).unwrap();
    common::assert_success(
        &common::seb(
            &[
                "receipt",
                "verify",
                "--receipt",
                receipt.to_str().unwrap(),
                "--cert",
                hsm.path("executor.pem").to_str().unwrap(),
                "--trust",
                hsm.trust("root.pem").to_str().unwrap(),
            ],
            hsm.dir.path(),
        ),
        "seb receipt verify",
    );

    // 3. A denied request: the broker's code and message, as a tool error the model can read.
    let denied = host.refused(
        "request_execution",
        json!({"operation": "db.drop", "resource": "prod/payments/db"}),
    );
    assert_eq!(denied["error"]["code"], "operation_not_granted", "{denied}");
    assert_eq!(denied["source"], "broker");
    assert_eq!(denied["http_status"], 403);

    // The model cannot pick another identity or broker: such fields are refused, and nothing
    // is asked for.
    for smuggled in [
        json!({"cert": other.cert.display().to_string()}),
        json!({"key": other.key.display().to_string()}),
        json!({"broker": "https://127.0.0.1:1"}),
        json!({"ca": "/etc/ssl/certs/ca-certificates.crt"}),
    ] {
        let mut arguments =
            json!({"operation": "demo.write", "resource": "demo/files", "params": {}});
        for (k, v) in smuggled.as_object().unwrap() {
            arguments[k] = v.clone();
        }
        let refused = host.refused("request_execution", arguments);
        assert_eq!(refused["error"]["code"], "invalid_arguments", "{refused}");
        assert!(
            refused["error"]["message"]
                .as_str()
                .unwrap()
                .contains("unknown field"),
            "{refused}"
        );
    }
    // Params that are not an object, and a request too large for any broker, are the
    // arguments' fault, said as such (not "broker unreachable").
    for arguments in [
        json!({"operation": "demo.write", "resource": "demo/files", "params": "notobj"}),
        json!({"operation": "demo.write", "resource": "demo/files",
               "params": {"name": "big.txt", "text": "x".repeat(2 << 20)}}),
    ] {
        let refused = host.refused("request_execution", arguments);
        assert_eq!(refused["error"]["code"], "invalid_arguments", "{refused}");
    }
    // Nor reach another route through a request id.
    for id in ["../../v1/trust", "x?status=pending", "../grants"] {
        let refused = host.refused("execution_status", json!({"request_id": id}));
        assert_eq!(refused["error"]["code"], "invalid_arguments", "{refused}");
    }

    // 4. A request that needs two approvers: pending, with what it waits for.
    let approved_params = json!({"name": "approved.txt", "text": "after two approvals"});
    let asked = host.call(
        "request_execution",
        json!({"operation": "demo.write", "resource": "demo/approved",
               "params": approved_params, "justification": "quarterly cleanup"}),
    );
    assert_eq!(asked["is_error"], false, "{asked}");
    let pending = &asked["structured"];
    assert_eq!(pending["status"], "pending_approval", "{pending}");
    assert_eq!(pending["approvals_required"], 2);
    assert_eq!(pending["approval_group"], "sre-leads");
    assert!(pending["expires_at"].as_u64().is_some(), "{pending}");
    assert!(pending.get("token").is_none(), "{pending}");
    assert!(
        asked["text"].to_string().contains("execution_status"),
        "{asked}"
    );
    let id = pending["request_id"].as_str().unwrap().to_owned();
    // Running it now runs nothing: it still waits.
    let early = host.ok("execute", json!({"request_id": id}));
    assert_eq!(early["status"], "pending_approval", "{early}");
    assert!(!out.join("approved.txt").exists());

    approve(&hsm, &broker, &alice, &id);
    let one = host.ok("execution_status", json!({"request_id": id}));
    assert_eq!(one["status"], "pending_approval", "{one}");
    assert_eq!(one["approvals"].as_array().unwrap().len(), 1, "{one}");
    assert!(one.get("token").is_none(), "{one}");

    approve(&hsm, &broker, &bob, &id);
    let mut granted = Value::Null;
    for _ in 0..50 {
        granted = host.ok("execution_status", json!({"request_id": id}));
        if granted["status"] == "granted" && granted["token"].is_string() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    assert_eq!(granted["status"], "granted", "{granted}");
    let token = granted["token"].as_str().unwrap();
    let claims = claims(token);
    assert_eq!(
        claims["authorization_details"][0]["approvals"], 2,
        "{claims}"
    );
    assert_eq!(
        claims["authorization_details"][0]["resource"],
        "demo/approved"
    );

    // ... and, approved, it runs at the executor once.
    let ran = host.ok("execute", json!({"request_id": id}));
    assert_eq!(ran["status"], "executed", "{ran}");
    assert_eq!(ran["request_id"], id.as_str());
    assert_eq!(
        std::fs::read_to_string(out.join("approved.txt")).unwrap(),
        "after two approvals"
    );
    let again = host.refused("execute", json!({"request_id": id}));
    assert_eq!(again["source"], "executor", "{again}");
    assert_eq!(again["error"]["code"], "token_already_redeemed", "{again}");

    // `execute` by id runs only requests this session made.
    let unknown = host.refused(
        "execute",
        json!({"request_id": "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"}),
    );
    assert_eq!(unknown["error"]["code"], "unknown_request", "{unknown}");

    // An unknown tool is the protocol's error, not a tool result.
    let unknown = host.send(&json!({"call": "sign_anything", "arguments": {}}));
    assert!(unknown["protocol_error"]["code"].is_i64(), "{unknown}");

    host.finish();
}

#[test]
fn without_an_executor_there_is_no_execute_and_an_unreachable_broker_is_a_tool_error() {
    let hsm = Hsm::initialised();
    let agent = hsm.agent("agent", GRANTS);
    // Nothing listens here.
    let nowhere = format!("https://127.0.0.1:{}", common::free_port());
    let (mut host, _) = Host::start(hsm.dir.path(), &connection(&hsm, &nowhere, &agent));
    let names: Vec<String> = host
        .tools()
        .iter()
        .map(|t| t["name"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(
        names,
        ["list_grants", "request_execution", "execution_status"]
    );
    let refused = host.refused(
        "request_execution",
        json!({"operation": "demo.write", "resource": "demo/files"}),
    );
    assert_eq!(refused["error"]["code"], "broker_unreachable", "{refused}");
    // `execute` is not offered, so not callable either.
    let answer = host.send(&json!({"call": "execute",
        "arguments": {"operation": "demo.write", "resource": "demo/files"}}));
    assert!(answer["protocol_error"].is_object(), "{answer}");
    host.finish();

    // Files the identity options name are read at start: a missing key stops `seb mcp` with a
    // message, before any MCP traffic.
    let mut args = vec!["mcp".to_owned()];
    args.extend(connection(&hsm, &nowhere, &agent));
    let key_at = args.iter().position(|a| a == "--key").unwrap() + 1;
    args[key_at] = hsm.path("missing.key").display().to_string();
    let out = common::seb(
        &args.iter().map(String::as_str).collect::<Vec<_>>(),
        hsm.dir.path(),
    );
    common::assert_clean_failure(&out, "missing.key");

    // So are the URLs: an executor URL that is not https would otherwise be found out only
    // after the broker had issued (and spent) a token for it.
    for (option, url) in [
        ("--executor", "http://127.0.0.1:18202"),
        ("--broker", "http://127.0.0.1:18201"),
    ] {
        let mut args = vec!["mcp".to_owned()];
        args.extend(connection(&hsm, &nowhere, &agent));
        match args.iter().position(|a| a == option) {
            Some(at) => args[at + 1] = url.to_owned(),
            None => args.extend([option.to_owned(), url.to_owned()]),
        }
        let out = common::seb(
            &args.iter().map(String::as_str).collect::<Vec<_>>(),
            hsm.dir.path(),
        );
        common::assert_clean_failure(
            &out,
            &format!("invalid URL \"{url}\": expected https://host:port"),
        );
    }
}

/// Input JSON-RPC 2.0 calls an error gets an error answer (a host waiting for one must not
/// wait for ever), with the request's id when it can be read, and the session goes on.
#[test]
fn malformed_json_rpc_gets_an_error_answer_and_the_session_goes_on() {
    let hsm = Hsm::initialised();
    let agent = hsm.agent("agent", GRANTS);
    let nowhere = format!("https://127.0.0.1:{}", common::free_port());
    let mut child = Command::new(env!("CARGO_BIN_EXE_seb"))
        .arg("mcp")
        .args(connection(&hsm, &nowhere, &agent))
        .current_dir(hsm.dir.path())
        .env_remove("SEB_CONFIG")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let stdout = BufReader::new(child.stdout.take().unwrap());
    let (answers, received) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in stdout.lines() {
            let Ok(line) = line else { break };
            let _ = answers.send(line);
        }
    });
    let send = |stdin: &mut ChildStdin, line: &str| {
        writeln!(stdin, "{line}").unwrap();
        stdin.flush().unwrap();
    };
    let exchange = |stdin: &mut ChildStdin, line: &str| -> Value {
        send(stdin, line);
        let answer = received
            .recv_timeout(std::time::Duration::from_secs(20))
            .unwrap_or_else(|_| panic!("no answer to {line}"));
        serde_json::from_str(&answer).unwrap()
    };
    let error = |answer: &Value| (answer["error"]["code"].clone(), answer["id"].clone());
    assert_eq!(
        error(&exchange(&mut stdin, "not json")),
        (json!(-32700), Value::Null)
    );
    let deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
    assert_eq!(
        error(&exchange(&mut stdin, &deep)),
        (json!(-32700), Value::Null)
    );
    assert_eq!(
        error(&exchange(
            &mut stdin,
            r#"[{"jsonrpc":"2.0","id":1,"method":"ping"}]"#
        )),
        (json!(-32600), Value::Null)
    );
    assert_eq!(
        error(&exchange(
            &mut stdin,
            r#"{"jsonrpc":"1.0","id":21,"method":"ping"}"#
        )),
        (json!(-32600), json!(21))
    );
    let init = exchange(
        &mut stdin,
        r#"{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-06-18","capabilities":{},"clientInfo":{"name":"raw","version":"1"}}}"#,
    );
    assert_eq!(init["result"]["serverInfo"]["name"], "seb", "{init}");
    send(
        &mut stdin,
        r#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#,
    );
    for params in [
        "",
        r#","params":[]"#,
        r#","params":{"name":"list_grants","arguments":[]}"#,
    ] {
        let line = format!(r#"{{"jsonrpc":"2.0","id":5,"method":"tools/call"{params}}}"#);
        assert_eq!(
            error(&exchange(&mut stdin, &line)),
            (json!(-32602), json!(5)),
            "{line}"
        );
    }
    let tools = exchange(
        &mut stdin,
        r#"{"jsonrpc":"2.0","id":6,"method":"tools/list"}"#,
    );
    assert!(tools["result"]["tools"].is_array(), "{tools}");
    drop(stdin);
    let status = child.wait().unwrap();
    assert!(status.success(), "{status}");
}

/// After a token was issued, every answer of `execute` names its request, so the retry its
/// message offers (`execute {request_id}`, the same single-use token) can be made (outside
/// review: it was missing, and the only retry left was a new request that could act twice).
#[test]
fn an_execute_that_cannot_reach_the_executor_names_the_request_to_retry() {
    let hsm = Hsm::initialised();
    let agent = hsm.agent("agent", GRANTS);
    let broker = Broker::start(&hsm);
    let mut args = connection(&hsm, &broker.url, &agent);
    let nowhere = format!("https://127.0.0.1:{}", common::free_port());
    args.extend(["--executor".into(), nowhere]);
    let (mut host, _) = Host::start(hsm.dir.path(), &args);
    let refused = host.refused(
        "execute",
        json!({"operation": "demo.write", "resource": "demo/files",
               "params": {"name": "notes.txt", "text": "x"}}),
    );
    assert_eq!(
        refused["error"]["code"], "executor_unreachable",
        "{refused}"
    );
    let id = refused["request_id"]
        .as_str()
        .unwrap_or_else(|| panic!("no request_id in {refused}"));
    let status = host.call("execution_status", json!({"request_id": id}));
    assert_eq!(status["structured"]["status"], "granted", "{status}");
    host.finish();
}
