//! `seb request`: the agent side. Asks a broker for an execution token over mutual TLS and
//! prints the broker's JSON answer; the exit status says granted, pending or refused.

use std::path::PathBuf;

use seb::client::{Client, ClientTls};

use super::{read_file, CliError};

/// Options of `seb request`.
#[derive(Debug, clap::Args)]
pub struct RequestArgs {
    /// Broker URL, e.g. https://127.0.0.1:8443
    #[arg(long)]
    broker: String,
    /// The broker's root certificate (PEM), the only trust anchor used.
    #[arg(long)]
    ca: PathBuf,
    /// The agent's certificate (PEM; may hold the chain, leaf first).
    #[arg(long)]
    cert: PathBuf,
    /// The agent's private key (PKCS#8 PEM).
    #[arg(long)]
    key: PathBuf,
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
}

/// Asks the broker for a token; prints the JSON answer. Exit status: 0 granted, 2 pending
/// approval, 1 denied or error.
pub fn run(args: RequestArgs) -> Result<std::process::ExitCode, CliError> {
    // The broker's own parser: a duplicate key, too deep a nesting or an inexact number is
    // refused here as the broker would refuse it, rather than silently keeping one of two values.
    let params = seb::json::parse_strict(args.params.as_bytes())
        .map_err(|e| format!("--params is not acceptable JSON: {e}"))?;
    let tls = ClientTls::new(
        &read_file(&args.ca)?,
        &read_file(&args.cert)?,
        &read_file(&args.key)?,
        true,
    )?;
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
            let mut client = Client::connect(&args.broker, &tls).await?;
            client.post_json("/v1/executions", &body).await
        })
        .map_err(|e| super::explained(&tls, e))?;
    say!("{}", response.text);
    Ok(match response.status {
        201 => std::process::ExitCode::SUCCESS,
        202 => std::process::ExitCode::from(2),
        _ => std::process::ExitCode::FAILURE,
    })
}
