//! `seb request`: the agent side. Asks a broker for an execution token over mutual TLS and
//! prints the broker's JSON answer; the exit status says granted, pending or refused.

use seb::client::Client;

use super::{BrokerConnection, CliError};

/// Options of `seb request`.
#[derive(Debug, clap::Args)]
pub struct RequestArgs {
    #[command(flatten)]
    connection: BrokerConnection,
    /// Operation, e.g. deploy.rollout
    #[arg(long)]
    operation: String,
    /// Resource, e.g. prod/payments/api
    #[arg(long)]
    resource: String,
    /// Parameters as a JSON object.
    #[arg(long, default_value = "{}")]
    params: String,
    /// Why the agent asks (goes to the audit log).
    #[arg(long)]
    justification: Option<String>,
    /// When the request needs approvals, wait for the decision: print the token alone (exit 0), or
    /// exit 1 when it is rejected, expires or --timeout passes.
    #[arg(long)]
    wait: bool,
    /// How long --wait waits, e.g. 10m.
    #[arg(long, default_value = "10m", value_parser = parse_duration)]
    timeout: std::time::Duration,
    /// Once granted, present the token and the parameters to this executor
    /// (`https://host:port`, `seb exec`) over mutual TLS with the same certificate, and print
    /// its answer (the signed receipt). Exit 0 only when the executor ran the action and it
    /// succeeded (exit status 0, or HTTP 2xx); 1 when it was refused or the action failed.
    #[arg(long, value_name = "EXECUTOR_URL")]
    execute: Option<String>,
}

fn parse_duration(s: &str) -> Result<std::time::Duration, String> {
    seb::duration::parse(s).map_err(|e| e.to_string())
}

/// How often `--wait` asks for the status.
const POLL: std::time::Duration = std::time::Duration::from_secs(1);

/// Asks the broker for a token; prints the JSON answer. Exit status: 0 granted, 2 pending
/// approval (without `--wait`), 1 denied, rejected, expired or error.
pub fn run(args: RequestArgs) -> Result<std::process::ExitCode, CliError> {
    // The broker's own parser: a duplicate key, too deep a nesting or an inexact number is
    // refused here as the broker would refuse it, rather than silently keeping one of two values.
    let params = seb::json::parse_strict(args.params.as_bytes())
        .map_err(|e| format!("--params is not acceptable JSON: {e}"))?;
    let tls = args.connection.tls()?;
    let mut body = serde_json::json!({
        "operation": args.operation,
        "resource": args.resource,
        "params": params,
    });
    if let Some(j) = args.justification {
        body["justification"] = serde_json::Value::String(j);
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let response = runtime
        .block_on(async {
            let mut client = Client::connect(&args.connection.broker, &tls).await?;
            client.post_json("/v1/executions", &body).await
        })
        .map_err(|e| super::explained(&tls, e))?;
    if response.status == 201 {
        if let Some(executor) = &args.execute {
            let token = response.body["token"]
                .as_str()
                .ok_or("the broker's answer has no token")?;
            let id = response.body["request_id"].as_str().unwrap_or("?");
            tell!("granted: request {id}");
            return execute(&runtime, executor, &tls, token, &params);
        }
    }
    if response.status != 202 || !args.wait {
        say!("{}", response.text);
        // A refusal of the caller's own certificate: what its file says, and what to do.
        if let Some(hint) = response.body["error"]["code"]
            .as_str()
            .and_then(|code| tls.explain_refusal(code, std::time::SystemTime::now()))
        {
            tell!("{hint}");
        }
        return Ok(match response.status {
            201 => std::process::ExitCode::SUCCESS,
            202 => std::process::ExitCode::from(2),
            _ => std::process::ExitCode::FAILURE,
        });
    }
    let id = response.body["request_id"]
        .as_str()
        .ok_or("the broker's answer has no request_id")?
        .to_owned();
    tell!(
        "pending approval: request {id} needs {} approval(s) from group {}; waiting up to {}s",
        response.body["approvals_required"],
        response.body["approval_group"].as_str().unwrap_or("?"),
        args.timeout.as_secs()
    );
    let deadline = std::time::Instant::now() + args.timeout;
    let path = format!("/v1/executions/{id}");
    let status = runtime.block_on(async {
        // The connection may close (idle, broker restart): reconnect until the deadline.
        let mut client: Option<Client> = None;
        let mut last = None;
        loop {
            if client.is_none() {
                client = Client::connect(&args.connection.broker, &tls).await.ok();
            }
            let answer = match client.as_mut() {
                Some(c) => c.send("GET", &path, None).await.ok(),
                None => None,
            };
            match answer {
                Some(r) => {
                    let state = r.body["status"].as_str().unwrap_or("");
                    let waiting = r.status == 200
                        && (state == "pending_approval"
                            || (state == "issuing" && r.body.get("token").is_none()));
                    if !waiting {
                        return Some(r);
                    }
                    last = Some(r);
                }
                None => client = None,
            }
            if std::time::Instant::now() >= deadline {
                return last;
            }
            tokio::time::sleep(POLL).await;
        }
    });
    let Some(status) = status else {
        return Err(format!("cannot reach the broker to learn the fate of request {id}").into());
    };
    let token = (status.status == 200 && status.body["status"] == "granted")
        .then(|| status.body["token"].as_str())
        .flatten();
    let granted = token.is_some();
    if let (Some(token), Some(executor)) = (token, &args.execute) {
        tell!("approved and granted: request {id}");
        return execute(&runtime, executor, &tls, token, &params);
    }
    match token {
        // The token alone on stdout, ready for `seb token verify --token -` or the executor.
        Some(token) => say!("{token}"),
        None => say!("{}", status.text),
    }
    if !granted {
        let state = status.body["status"].as_str().unwrap_or("unknown");
        if state == "pending_approval" {
            tell!("no token: the request is still pending_approval after --timeout; stdout has its status");
        } else {
            tell!("no token: the request is {state}; stdout has the broker's answer");
        }
    }
    Ok(if granted {
        std::process::ExitCode::SUCCESS
    } else {
        std::process::ExitCode::FAILURE
    })
}

/// Presents `token` and `params` to the executor at `url` (`POST /v1/run`) and prints its
/// answer. Exit 0 when it ran the action and the action succeeded (the receipt is in the
/// answer), 1 otherwise: refused, or ran and failed (exit status, HTTP status or timeout).
fn execute(
    runtime: &tokio::runtime::Runtime,
    url: &str,
    tls: &seb::client::ClientTls,
    token: &str,
    params: &serde_json::Value,
) -> Result<std::process::ExitCode, CliError> {
    let body = serde_json::json!({ "token": token, "params": params });
    let answer = runtime
        .block_on(async {
            let mut client = Client::connect(url, &tls.to_executors())
                .await?
                .answer_within(seb::client::EXECUTOR_ANSWER_TIMEOUT);
            client.post_json("/v1/run", &body).await
        })
        .map_err(|e| {
            format!(
                "cannot reach the executor at {url}: {}",
                super::mcp::with_causes(&e)
            )
        })?;
    say!("{}", answer.text);
    Ok(if answer.status == 200 {
        if let Some(failure) = action_failure(&answer.body) {
            tell!("{failure}");
            return Ok(std::process::ExitCode::FAILURE);
        }
        std::process::ExitCode::SUCCESS
    } else if answer.body.get("receipt").is_some() {
        // The token was redeemed; the action failed after that and may have acted.
        tell!(
            "the token was redeemed, then the action failed ({}): its outcome is unknown; the \
             executor signed a receipt of the failed run (above) and reported it",
            answer.body["error"]["code"].as_str().unwrap_or("unknown")
        );
        std::process::ExitCode::FAILURE
    } else {
        tell!(
            "the executor refused: {}",
            answer.body["error"]["code"].as_str().unwrap_or("unknown")
        );
        std::process::ExitCode::FAILURE
    })
}

/// What went wrong, when an executor's answer (`POST /v1/run`, 200) says the action ran and
/// did not succeed: its exit status (or HTTP status), and whether it was killed on its timeout.
/// An executor that does not say `succeeded` (the Go example) is judged by its receipt: exit
/// status 0 and not killed; one that says neither has not shown that the action succeeded.
pub(super) fn action_failure(answer: &serde_json::Value) -> Option<String> {
    let receipt = &answer["receipt"]["body"];
    let succeeded = answer["succeeded"]
        .as_bool()
        .unwrap_or_else(|| receipt["exit_code"] == 0 && receipt["timed_out"] != true);
    if succeeded {
        return None;
    }
    let killed = if receipt["timed_out"] == true {
        " (killed on its timeout)"
    } else {
        ""
    };
    Some(format!(
        "the action ran and failed: exit status {}{killed}",
        receipt["exit_code"]
    ))
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::action_failure;

    #[test]
    fn an_action_is_a_success_only_when_the_executor_or_its_receipt_says_so() {
        let receipt = |exit: i64, timed_out: bool| json!({"body": {"exit_code": exit, "timed_out": timed_out}});
        // seb exec says it.
        let ran = json!({"status": "executed", "succeeded": true, "receipt": receipt(0, false)});
        assert_eq!(action_failure(&ran), None);
        let failed =
            json!({"status": "executed", "succeeded": false, "receipt": receipt(1, false)});
        assert!(action_failure(&failed).unwrap().contains("exit status 1"));
        // An executor that does not say: its receipt decides.
        assert_eq!(
            action_failure(&json!({"status": "executed", "receipt": receipt(0, false)})),
            None
        );
        let failed = json!({"status": "executed", "receipt": receipt(1, false)});
        assert!(action_failure(&failed).unwrap().contains("exit status 1"));
        let killed = json!({"status": "executed", "receipt": receipt(-1, true)});
        assert!(action_failure(&killed)
            .unwrap()
            .contains("killed on its timeout"));
        // Nothing that shows success is not a success.
        assert!(action_failure(&json!({"status": "executed"})).is_some());
    }
}
