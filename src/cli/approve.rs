//! `seb pending` and `seb approve`: the approver side. Lists the requests an approver may
//! decide, with the exact parameters, and signs a decision locally with the approver's own key
//! (never a broker key) before posting it over mutual TLS.
//!
//! Before signing, `seb approve` recomputes the request digest from the operation, resource and
//! parameters it shows, and refuses to sign when the broker's digest differs: the approver signs
//! what it sees.

use seb::approval::{self, ApproverKey, Decision};
use seb::client::{ApiResponse, Client};
use serde_json::Value;

use super::{read_file, BrokerConnection, CliError, CliResult};

/// Options of `seb pending`.
#[derive(Debug, clap::Args)]
pub struct PendingArgs {
    #[command(flatten)]
    connection: BrokerConnection,
    /// Print the open requests as a JSON array (the `requests` of the broker's answer, each as
    /// the broker sent it) instead of the readable form.
    #[arg(long)]
    json: bool,
}

/// Options of `seb approve`.
#[derive(Debug, clap::Args)]
pub struct ApproveArgs {
    #[command(flatten)]
    connection: BrokerConnection,
    /// Reject the request instead of approving it (one rejection closes it).
    #[arg(long)]
    reject: bool,
    /// Why (recorded with the decision).
    #[arg(long)]
    reason: Option<String>,
    /// The request id (from `seb pending`).
    request_id: String,
}

/// Lists the open requests this approver may decide.
pub fn pending(args: PendingArgs) -> CliResult {
    let (requests, truncated) = fetch_pending(&args.connection)?;
    let list = requests.as_array().map(Vec::as_slice).unwrap_or_default();
    if args.json {
        say!("{}", serde_json::to_string_pretty(&requests)?);
    } else {
        if list.is_empty() {
            say!("no open requests for your groups");
        }
        for request in list {
            say!("{}", describe(request));
        }
    }
    if truncated {
        tell!(
            "only the {} oldest open requests are shown; more wait (decide these, or ask the \
             security team: an agent may be flooding its group)",
            list.len()
        );
    }
    Ok(())
}

/// Signs a decision on one request and posts it.
pub fn approve(args: ApproveArgs) -> CliResult {
    if !seb::broker::is_request_id(&args.request_id) {
        return Err(format!(
            "{:?} is not a request id (base64url, as `seb pending` shows it)",
            args.request_id
        )
        .into());
    }
    let key_path = &args.connection.key;
    let key = std::str::from_utf8(&read_file(key_path)?)
        .map_err(|_| "the key file is not PEM text".to_owned())
        .and_then(ApproverKey::from_pkcs8_pem)
        .map_err(|e| format!("{}: {e}", key_path.display()))?;
    let (requests, _) = fetch_pending(&args.connection)?;
    let decision = if args.reject {
        Decision::Reject
    } else {
        Decision::Approve
    };
    let path = format!("/v1/executions/{}/approvals", args.request_id);
    let Some(request) = requests.as_array().and_then(|l| {
        l.iter()
            .find(|r| r["request_id"] == args.request_id.as_str())
    }) else {
        // Yours already: the request's own status lists the decisions that count, so a second
        // `seb approve` is told so without posting anything (the audit log then holds no
        // refused decision for a person who only ran the command twice).
        if let Some(why) = decided_already(&args.connection, &args.request_id)? {
            return Err(why.into());
        }
        // Not open for this approver: the broker says why with its own code (not_found,
        // request_closed, request_expired, wrong_approval_group, self_approval), all checked
        // before the signature, so nothing is signed for a request nobody was shown.
        let body = serde_json::json!({"decision": decision.as_str(), "signature": ""});
        let response = call(&args.connection, |mut client| async move {
            client.post_json(&path, &body).await
        })?;
        return Err(if response.status == 200 {
            "the broker accepted an unsigned decision; refusing to go on".into()
        } else if response.body["error"]["code"] == "bad_approval_signature" {
            // Open and yours to decide, but not among the requests listed to you (the list
            // holds the oldest 500, and leaves out what you approved already): nothing is
            // signed for a request that was not shown.
            format!(
                "request_not_listed: request {} is open but not in your list of pending \
                 requests: you approved it already (an approval of yours counts once), or it \
                 is not among the oldest 500 `seb pending` shows; nothing was signed",
                args.request_id
            )
            .into()
        } else {
            api_error(&response)
        });
    };
    let text = |field: &str| -> Result<&str, CliError> {
        request[field]
            .as_str()
            .ok_or_else(|| format!("the broker's answer lacks {field}").into())
    };
    // Sign what is shown: the digest is recomputed from the shown request.
    let digest =
        seb::canonical::request_digest(text("operation")?, text("resource")?, &request["params"])
            .map_err(|e| format!("cannot canonicalise the shown parameters: {e}"))?;
    let digest = seb::base64url::encode(&digest);
    if digest != text("request_digest")? {
        return Err(
            "the broker's request digest does not match the request it shows; refusing to sign"
                .into(),
        );
    }
    let agent = request["requester"]["x5t#S256"]
        .as_str()
        .ok_or("the broker's answer lacks the requester's thumbprint")?;
    tell!("{}", describe(request));
    tell!("signing: {} request {}", decision.as_str(), args.request_id);
    let signature = key.sign(&approval::message(decision, &digest, agent));
    let mut body = serde_json::json!({
        "decision": decision.as_str(),
        "signature": seb::base64url::encode(&signature),
    });
    if let Some(reason) = args.reason {
        body["reason"] = Value::String(reason);
    }
    let response = call(&args.connection, |mut client| async move {
        client.post_json(&path, &body).await
    })?;
    if response.status != 200 {
        return Err(api_error(&response));
    }
    say!("{}", response.text);
    Ok(())
}

/// Why `request_id` is not for this approver to decide, when its status says so: it is open
/// and a decision of this approver (this certificate, or another of the same name) is among
/// those that count. `None` otherwise (the broker is asked then, and says why).
fn decided_already(
    connection: &BrokerConnection,
    request_id: &str,
) -> Result<Option<String>, CliError> {
    let path = format!("/v1/executions/{request_id}");
    let response = call(connection, |mut client| async move {
        client.send("GET", &path, None).await
    })?;
    if response.status != 200 {
        return Ok(None);
    }
    if response.body["status"] != "pending_approval" {
        // Closed: the broker's own answer names how (request_closed, request_expired).
        return Ok(None);
    }
    let own = seb::cert::Certificate::parse_pem_chain(&read_file(&connection.cert)?)?;
    let Some(leaf) = own.first() else {
        return Ok(None);
    };
    let thumbprint = seb::base64url::encode(&leaf.thumbprint_sha256()?);
    let subject = leaf.subject_string();
    let mine = response.body["approvals"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|a| {
            a["x5t#S256"] == thumbprint.as_str()
                || a["approver"]
                    .as_str()
                    .is_some_and(|name| seb::cert::same_name(name, &subject))
        });
    Ok(mine.map(|a| {
        format!(
            "duplicate_approval: you decided request {request_id} already ({} at {}); an \
             approver counts once; nothing was signed",
            a["decision"].as_str().unwrap_or("a decision"),
            a["at"]
        )
    }))
}

/// The open requests the approver may decide, and whether the broker left some out.
fn fetch_pending(connection: &BrokerConnection) -> Result<(Value, bool), CliError> {
    let response = call(connection, |mut client| async move {
        client
            .send("GET", "/v1/executions?status=pending", None)
            .await
    })?;
    if response.status != 200 {
        return Err(api_error(&response));
    }
    // An answer that is not the list (unreadable JSON, another shape) is an error, never "no
    // open requests": an approver must not be told there is nothing to decide.
    match &response.body["requests"] {
        requests @ Value::Array(_) => Ok((
            requests.clone(),
            response.body["truncated"].as_bool().unwrap_or(false),
        )),
        _ => Err(format!(
            "the broker's list of pending requests is unreadable: {}",
            response.text.chars().take(200).collect::<String>()
        )
        .into()),
    }
}

fn call<F, Fut>(connection: &BrokerConnection, f: F) -> Result<ApiResponse, CliError>
where
    F: FnOnce(Client) -> Fut,
    Fut: std::future::Future<Output = Result<ApiResponse, seb::client::ClientError>>,
{
    let tls = connection.tls()?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime
        .block_on(async {
            let client = Client::connect(&connection.broker, &tls).await?;
            f(client).await
        })
        .map_err(|e| super::explained(&tls, e))
}

/// `code: message` from an error answer.
pub fn api_error(response: &ApiResponse) -> CliError {
    match (
        response.body["error"]["code"].as_str(),
        response.body["error"]["message"].as_str(),
    ) {
        (Some(code), Some(message)) => format!("{code}: {message}").into(),
        _ => format!("the broker answered {}: {}", response.status, response.text).into(),
    }
}

/// A request as an approver reads it.
fn describe(r: &Value) -> String {
    // Everything here came from the agent or an approver: shown with escapes, never obeyed
    // by the terminal (seb::text::escaped).
    let text = |v: &Value| seb::text::escaped(v.as_str().unwrap_or("?"));
    let approvals: Vec<String> = r["approvals"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default()
        .iter()
        .map(|a| format!("{} {}", text(&a["approver"]), text(&a["decision"])))
        .collect();
    let params =
        seb::canonical::canonicalize(&r["params"]).unwrap_or_else(|_| r["params"].to_string());
    format!(
        "request {id}\n  requester      {subject} (x5t#S256 {x5t})\n  operation      {op}\n  resource       {res}\n  params         {params}\n  justification  {just}\n  approvals      {n} of {req} from group {group}{list}\n  expires at     {exp}\n  request digest {digest}\n",
        id = text(&r["request_id"]),
        subject = text(&r["requester"]["subject"]),
        x5t = text(&r["requester"]["x5t#S256"]),
        op = text(&r["operation"]),
        res = text(&r["resource"]),
        params = seb::text::escaped(&params),
        just = r["justification"]
            .as_str()
            .map_or_else(|| "(none)".to_owned(), seb::text::escaped),
        n = approvals.len(),
        req = r["approvals_required"],
        group = text(&r["approval_group"]),
        list = if approvals.is_empty() {
            String::new()
        } else {
            format!(": {}", approvals.join(", "))
        },
        exp = r["expires_at"].as_u64().map_or_else(
            || text(&r["expires_at"]),
            |secs| format!("{} ({secs})", seb::time::rfc3339(seb::time::from_unix(secs)))
        ),
        digest = text(&r["request_digest"]),
    )
}
