//! `seb serve` (the broker) and `seb request` (the agent-side client).

use std::path::PathBuf;
use std::sync::Arc;

use seb::broker::Broker;
use seb::client::{Client, ClientTls};
use seb::config::Config;
use seb::server::{self, App};

use super::{open_backend, open_store, read_file, CliError, CliResult};

/// Runs the broker until SIGTERM or SIGINT.
pub fn serve(config: &Config) -> CliResult {
    let backend: Arc<dyn seb::backend::KeyBackend> = Arc::from(open_backend(config, None)?);
    let store: Arc<dyn seb::store::Store> = Arc::new(open_store(config)?);
    let mut broker = Broker::new(config.clone(), backend.clone(), store.clone())?;
    if let Some(state) = super::attest::attestation_state(config)? {
        super::attest::start_self_check(state.clone(), store);
        broker = broker.with_attestation(state);
    }
    let broker = Arc::new(broker);
    let trust = config.trust_dir();
    let tls_cert = first_der(&read_file(&trust.join("tls.pem"))?)?;
    let root = first_der(&read_file(&trust.join("root.pem"))?)?;
    let tls = server::tls::server_config(
        backend,
        &config.keys.tls,
        tls_cert,
        root,
        config.server.tls_resumption,
    )?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(config.worker_threads())
        .enable_all()
        .thread_name("seb-worker")
        .build()?;
    runtime.block_on(async move {
        let listener = tokio::net::TcpListener::bind(config.server.listen).await?;
        let local = listener.local_addr()?;
        let (tx, rx) = tokio::sync::watch::channel(false);
        tokio::spawn(async move {
            wait_for_signal().await;
            tracing::info!("shutting down");
            let _ = tx.send(true);
        });
        println!(
            "seb broker {} listening on https://{local}",
            config.broker_id
        );
        server::serve(App::new(broker), tls, listener, rx).await?;
        println!("seb broker stopped");
        Ok::<(), CliError>(())
    })
}

async fn wait_for_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) {
        (Ok(mut term), Ok(mut int)) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
        }
        _ => std::future::pending::<()>().await,
    }
}

fn first_der(pem: &[u8]) -> Result<Vec<u8>, CliError> {
    Ok(seb::client::pem_blocks(pem, "CERTIFICATE")?
        .into_iter()
        .next()
        .ok_or("no certificate")?)
}

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
pub fn request(args: RequestArgs) -> Result<std::process::ExitCode, CliError> {
    let params: serde_json::Value =
        serde_json::from_str(&args.params).map_err(|e| format!("--params is not JSON: {e}"))?;
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
    let response = runtime.block_on(async {
        let mut client = Client::connect(&args.broker, &tls).await?;
        client.post_json("/v1/executions", &body).await
    })?;
    println!("{}", response.text);
    Ok(match response.status {
        201 => std::process::ExitCode::SUCCESS,
        202 => std::process::ExitCode::from(2),
        _ => std::process::ExitCode::FAILURE,
    })
}
