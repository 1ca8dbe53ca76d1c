//! `seb serve`: the broker, until SIGTERM or SIGINT.

use std::fs::{File, OpenOptions, TryLockError};
use std::os::unix::fs::DirBuilderExt;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use seb::attest::selfcheck::AttestationState;
use seb::broker::Broker;
use seb::config::{Config, StoreConfig};
use seb::server::{self, App};

use super::{open_backend, open_store, CliError, CliResult};

/// `seb serve` options.
#[derive(Debug, clap::Args)]
pub struct ServeArgs {
    /// Listen on ADDR instead of `[server] listen` (a second replica of the same configuration
    /// on another port).
    #[arg(long, value_name = "ADDR")]
    pub listen: Option<std::net::SocketAddr>,
}

/// How long a broker waits for another `seb serve` on its SQLite state directory to exit: longer
/// than a stopping broker takes to finish its open requests, so a restart that overlaps the old
/// process waits for it instead of failing.
const STATE_DIR_WAIT: Duration = Duration::from_secs(30);

/// Takes the SQLite state directory for this broker alone. Replicas share a PostgreSQL store;
/// two brokers on one SQLite directory would contend for the audit log's next index, and each
/// would allow an agent the full rate limit. CLI commands (revoke, freeze, audit) do not take
/// this lock: they are meant to run beside the broker.
fn one_broker_per_state_dir(state_dir: &Path) -> Result<File, CliError> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(state_dir)
        .map_err(|e| format!("cannot create {}: {e}", state_dir.display()))?;
    let path = state_dir.join("serve.lock");
    // Read-only when it exists (a lock needs no more), so a file left by another user (a
    // broker once started by hand as root) does not keep the service's user out.
    let file = match File::open(&path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path),
        opened => opened,
    }
    .map_err(|e| format!("cannot open {}: {e}", path.display()))?;
    let deadline = Instant::now() + STATE_DIR_WAIT;
    let mut said = false;
    loop {
        match file.try_lock() {
            Ok(()) => return Ok(file),
            Err(TryLockError::WouldBlock) if Instant::now() < deadline => {
                if !said {
                    tracing::warn!(
                        state_dir = %state_dir.display(),
                        "another seb serve holds this state directory; waiting for it to exit"
                    );
                    said = true;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            Err(TryLockError::WouldBlock) => {
                return Err(format!(
                    "another seb serve is using {} (it holds {}): one broker per SQLite state \
                     directory; run replicas on a PostgreSQL store (OPERATIONS.md §12)",
                    state_dir.display(),
                    path.display()
                )
                .into())
            }
            Err(TryLockError::Error(e)) => {
                return Err(format!("cannot lock {}: {e}", path.display()).into())
            }
        }
    }
}

/// The configuration's kill switches, made the store's at every start, each with its audit
/// entry: `[policy] frozen = true` freezes issuance (after a restore, docs/OPERATIONS.md §9)
/// until `seb unfreeze`, even when an earlier `seb unfreeze` is stored; `[policy] epoch` is a
/// floor the store keeps, so that removing the line later cannot lower the epoch.
fn apply_configured_policy(config: &Config, store: &dyn seb::store::Store) -> CliResult {
    let state = store.policy_state()?;
    let now = std::time::SystemTime::now();
    if config.policy.frozen && state.frozen != Some(true) {
        store.set_frozen(
            true,
            "[policy] frozen = true in the configuration, at start",
            now,
        )?;
        tell!(
            "issuance frozen at start ([policy] frozen = true): `seb unfreeze` resumes it; \
             remove the line once it is no longer needed"
        );
    }
    // A store that never had an epoch is at 1, as a fresh broker is.
    if config.policy.epoch > state.epoch.unwrap_or(1) {
        // One more than the floor given: exactly the configured epoch.
        let epoch = store.bump_epoch(config.policy.epoch - 1, now)?;
        tell!("policy epoch {epoch} from [policy] epoch, kept in the store");
    }
    Ok(())
}

/// Runs the broker until SIGTERM or SIGINT.
pub fn serve(config: &Config, args: ServeArgs) -> CliResult {
    let mut config = config.clone();
    if let Some(listen) = args.listen {
        config.server.listen = listen;
    }
    let config = &config;
    // Taken before the device and the store are opened (a second broker must not migrate or
    // write the store under the first) and so dropped after both are closed. The kernel
    // releases it however the process ends.
    let _one_broker = match config.store {
        StoreConfig::Sqlite => Some(one_broker_per_state_dir(&config.state_dir)?),
        StoreConfig::Postgres(_) => None,
    };
    let backend: Arc<dyn seb::backend::KeyBackend> = Arc::from(open_backend(config, None)?);
    let store = open_store(config)?;
    apply_configured_policy(config, store.as_ref())?;
    let mut broker = Broker::new(config.clone(), backend.clone(), store.clone())?;
    if let Some(state) = AttestationState::from_config(config)? {
        state.clone().start_self_check(store);
        broker = broker.with_attestation(state);
    }
    // The kill switches as last set on this host, before the first request.
    broker.refresh_policy()?;
    let broker = Arc::new(broker);
    let (tls, tls_cert) =
        server::tls::broker_server_config_reloading(backend, config, config.server.tls_resumption)?;
    if let Some(attestation) = broker.attestation() {
        // Quotes are bound to exactly the certificate the TLS layer serves.
        attestation.serve_tls_certificate(tls_cert.certificate_der());
    }
    let runtime = server::runtime(config)?;
    runtime.block_on(async move {
        survive_file_size_limit();
        let listen = config.server.listen;
        let listener = tokio::net::TcpListener::bind(listen)
            .await
            .map_err(|e| format!("cannot listen on {listen} (server.listen): {e}"))?;
        let local = listener.local_addr()?;
        let (tx, rx) = tokio::sync::watch::channel(false);
        tokio::spawn(watch_state_dir(broker.clone(), tls_cert, config.clone()));
        tokio::spawn(expire_pending(broker.clone()));
        tokio::spawn(watch_policy(broker.clone()));
        // The replica's name in the shared store: unique even where every replica binds the
        // same address as pid 1 (containers), so each one counts in the rate limits' shares.
        let mut nonce = [0u8; 6];
        getrandom::fill(&mut nonce).map_err(|e| format!("no randomness: {e}"))?;
        tokio::spawn(heartbeat(
            broker.clone(),
            format!(
                "{}@{local}/{}/{}",
                config.broker_id,
                std::process::id(),
                hex::encode(nonce)
            ),
        ));
        let signalled = shutdown_signal();
        tokio::spawn(async move {
            signalled.await;
            tracing::info!("shutting down");
            let _ = tx.send(true);
        });
        say!(
            "seb broker {} listening on https://{local}",
            config.broker_id
        );
        server::serve(App::new(broker.clone()), tls, listener, rx).await?;
        let stopping = broker.clone();
        tokio::task::spawn_blocking(move || stopping.record_stop()).await?;
        say!("seb broker stopped");
        Ok::<(), CliError>(())
    })
}

/// Polls the state directory every [`seb::broker::RELOAD_INTERVAL`] for what `seb rotate` and
/// `seb cert issue-ca` change (key generations, certificates), and switches to it: the token
/// key for new tokens (the retired one keeps redeeming), the TLS certificate and key for new
/// handshakes, the `/v1/trust` bundle. A state that does not check out is logged and the
/// current one kept. Polling rather than a signal: nothing to forget after a rotation, and the
/// same whether systemd, a container or a test runs the broker.
async fn watch_state_dir(
    broker: Arc<Broker>,
    tls: Arc<server::tls::TlsCertificate>,
    config: Config,
) {
    let mut tick = tokio::time::interval(seb::broker::RELOAD_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        tick.tick().await;
        let (broker, tls, config) = (broker.clone(), tls.clone(), config.clone());
        let _ = tokio::task::spawn_blocking(move || {
            if let Err(e) = broker.reload() {
                tracing::warn!(error = %e, "state directory changed but does not check out; keeping the current keys");
            }
            match tls.reload(&config) {
                // Quotes are bound to the certificate served (docs/ATTESTATION.md §5.1).
                Ok(true) => {
                    if let Some(attestation) = broker.attestation() {
                        attestation.serve_tls_certificate(tls.certificate_der());
                    }
                }
                Ok(false) => {}
                Err(e) => {
                    tracing::warn!(error = %e, "TLS material changed but does not check out; keeping the current certificate");
                }
            }
        })
        .await;
    }
}

/// Closes requests whose approval deadline passed (each recorded as an `approval_expired`
/// event), every [`seb::broker::RELOAD_INTERVAL`]. Expiry does not depend on this: a request
/// past its deadline shows `expired` and takes no decisions whether or not it was swept.
async fn expire_pending(broker: Arc<Broker>) {
    let mut tick = tokio::time::interval(seb::broker::RELOAD_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let broker = broker.clone();
        let _ = tokio::task::spawn_blocking(move || {
            if let Err(e) = broker.expire_pending(std::time::SystemTime::now()) {
                tracing::warn!(error = %e, "cannot expire pending approval requests");
            }
        })
        .await;
    }
}

/// Re-reads the kill switches (`seb epoch bump`, `seb freeze` / `unfreeze`, written to the
/// store by the security team on this host) every [`seb::broker::POLICY_INTERVAL`], so each
/// takes effect within a second without a restart. A store that cannot be read keeps the
/// current values (and readiness reports the store).
async fn watch_policy(broker: Arc<Broker>) {
    let mut tick = tokio::time::interval(seb::broker::POLICY_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let broker = broker.clone();
        let _ = tokio::task::spawn_blocking(move || {
            if let Err(e) = broker.refresh_policy() {
                tracing::warn!(error = %e, "cannot read the kill switches; keeping the current ones");
            }
        })
        .await;
    }
}

/// A write past the process's file-size limit (`RLIMIT_FSIZE`, `ulimit -f`) raises SIGXFSZ,
/// whose default action ends the process. The broker catches it instead, so that the write
/// fails with EFBIG like any other storage fault: no token, 503 `audit_unavailable` or
/// `store_unavailable`, and issuance resumes once the limit is lifted.
fn survive_file_size_limit() {
    use tokio::signal::unix::{signal, SignalKind};
    match signal(SignalKind::from_raw(libc::SIGXFSZ)) {
        Ok(mut xfsz) => {
            tokio::spawn(async move {
                while xfsz.recv().await.is_some() {
                    tracing::error!(
                        "a write went past the file-size limit (RLIMIT_FSIZE); it failed, and \
                         issuance stops until the limit is raised"
                    );
                }
            });
        }
        Err(e) => {
            tracing::warn!(error = %e, "cannot catch SIGXFSZ; a file-size limit would end the broker")
        }
    }
}

/// Registers for SIGTERM and SIGINT now, and returns what completes on either. Called before
/// the process says it is listening: a supervisor (or a test) that stops it at once must find
/// the handler in place, not the default action (which ends the process with a failure).
/// Must be called inside the runtime.
pub(crate) fn shutdown_signal() -> impl std::future::Future<Output = ()> {
    use tokio::signal::unix::{signal, SignalKind};
    let registered = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    );
    async move {
        match registered {
            (Ok(mut term), Ok(mut int)) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = int.recv() => {}
                }
            }
            _ => std::future::pending::<()>().await,
        }
    }
}

/// Announces this replica in the store every [`seb::broker::HEARTBEAT_INTERVAL`] and learns
/// how many are live, so that each divides the per-client rate limit among them (an agent
/// spreading its requests over replicas gets no more than from one broker).
async fn heartbeat(broker: Arc<Broker>, replica: String) {
    let mut tick = tokio::time::interval(seb::broker::HEARTBEAT_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let (b, id) = (broker.clone(), replica.clone());
        match tokio::task::spawn_blocking(move || b.heartbeat(&id)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!(error = %e, "replica heartbeat failed"),
            Err(e) => tracing::warn!(error = %e, "replica heartbeat task failed"),
        }
    }
}
