//! `seb bench broker`: the broker under load, measured next to the raw HSM signing rate.
//!
//! Runs the real server (same code as `seb serve`) in this process on a loopback port with the
//! configured device, a throwaway store under the state directory, and a bench agent
//! certificate issued by the root key in the device. The per-certificate rate limit is lifted
//! for the run (one agent identity drives all the load). Load comes from N concurrent
//! keep-alive mTLS connections in a closed loop (each agent asks again as soon as it has its
//! answer: the peak rate), then from the same connections in an open loop at fixed fractions of
//! that peak (requests sent on a schedule, latency counted from the scheduled time, as agents
//! that ask when they need a token would see it), and separately from full handshakes with TLS
//! resumption off (each one costs an extra HSM signature).

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use seb::backend::{KeyAlgorithm, KeyBackend, P384Signer};
use seb::broker::Broker;
use seb::ca::{self, csr, LeafRequest};
use seb::client::ClientTls;
use seb::config::{Config, StoreConfig};
use seb::grants::{GrantSet, Role, RoleKind};
use seb::server::{self, App};
use seb::store::postgres::PgStore;
use seb::store::sqlite::SqliteStore;

use super::load::{Driver, Mode, Pace};
use super::sign_rate;
use crate::cli::{open_backend, read_file, CliError, CliResult};

/// Options of `seb bench broker`.
#[derive(Debug, clap::Args)]
pub struct BrokerBenchArgs {
    /// Concurrent keep-alive agents, comma-separated (one measurement each).
    #[arg(long, default_value = "1,32", value_delimiter = ',', value_parser = agent_count)]
    agents: Vec<usize>,
    /// Seconds per measurement (1 to 3600).
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u64).range(1..=3600))]
    seconds: u64,
    /// Concurrent agents for the full-handshake measurement (0 skips it; at most 4096).
    #[arg(long, default_value_t = 8, value_parser = handshake_count)]
    handshake_agents: usize,
    /// Open-loop loads to measure after the closed-loop ones, as fractions of the closed-loop
    /// rate of the largest agent count, comma-separated (0 skips them).
    #[arg(long, default_value = "0.5,0.8", value_delimiter = ',', value_parser = open_loop_fraction)]
    open_loop: Vec<f64>,
    /// Audit log modes to measure side by side in this run, comma-separated: `on` (the
    /// broker as it serves) and `off` (a baseline store that writes no audit entries). The
    /// open-loop and handshake measurements use the first.
    #[arg(long, default_value = "on,off", value_delimiter = ',')]
    audit: Vec<AuditMode>,
    /// Stores to measure side by side in this run, comma-separated: `sqlite` (a throwaway
    /// database under the state directory, with each --audit mode) and `postgres` (the
    /// database of `[store] backend = "postgres"`, in a throwaway schema of its own, audit
    /// log on, with each --replicas count). The open-loop and handshake measurements use the
    /// first. Default: `sqlite`, and `sqlite,postgres` when the configuration's store is
    /// PostgreSQL, so the two are compared in one run.
    #[arg(long, value_delimiter = ',')]
    store: Vec<StoreKind>,
    /// PostgreSQL: broker replicas sharing the store, comma-separated (one measurement each).
    /// They run in this process, each with its own store connections and listener; the
    /// agents are spread over them, as a TCP load balancer would.
    #[arg(long, default_value = "1,2", value_delimiter = ',', value_parser = replica_count)]
    replicas: Vec<usize>,
    /// Run the load generator as a separate process (`seb bench load`), so that the CPU
    /// reported per token is the broker process's own (broker, store and in-process
    /// SoftHSM2) and the agents' TLS and parsing do not count. Also measures handshakes
    /// without a request, to split the CPU of a new connection into handshake and token.
    #[arg(long)]
    external: bool,
    /// Curve of the bench agent's key: p384 (default) or p256. The broker checks the agent's
    /// TLS CertificateVerify signature on every new connection, so this moves the handshake's
    /// cost.
    #[arg(long, default_value = "p384", value_parser = crate::cli::cert::curve)]
    agent_curve: KeyAlgorithm,
}

/// A number of agents: 1 to 4096.
pub(super) fn agent_count(text: &str) -> Result<usize, String> {
    match text.parse::<usize>() {
        Ok(n) if (1..=4096).contains(&n) => Ok(n),
        _ => Err(format!("{text:?}: a number of agents from 1 to 4096")),
    }
}

/// Handshake agents: 0 (skip) to 4096.
fn handshake_count(text: &str) -> Result<usize, String> {
    match text.parse::<usize>() {
        Ok(0) => Ok(0),
        _ => agent_count(text),
    }
}

/// Replicas: 1 to 16.
fn replica_count(text: &str) -> Result<usize, String> {
    match text.parse::<usize>() {
        Ok(n) if (1..=16).contains(&n) => Ok(n),
        _ => Err(format!("{text:?}: a number of replicas from 1 to 16")),
    }
}

/// An open-loop fraction: finite, from 0 (skip) to 10 times the closed-loop rate.
fn open_loop_fraction(text: &str) -> Result<f64, String> {
    let fraction: f64 = text
        .parse()
        .map_err(|_| format!("{text:?} is not a number"))?;
    if !(0.0..=10.0).contains(&fraction) {
        return Err(format!(
            "{text}: a fraction of the closed-loop rate from 0 (skip) to 10"
        ));
    }
    Ok(fraction)
}

/// One thing measured: its label, and its brokers (one, or replicas sharing a store).
type Variant = (String, Vec<Arc<Broker>>);

/// Which store a measured broker uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum StoreKind {
    /// Embedded SQLite.
    Sqlite,
    /// The configured PostgreSQL database.
    Postgres,
}

/// Whether the store writes the audit log.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum AuditMode {
    /// Entries and tree nodes commit with every record (as `seb serve` runs).
    On,
    /// Baseline: no audit entries written.
    Off,
}

/// Runs the benchmark and prints one line per measurement.
pub fn run(config: &Config, args: BrokerBenchArgs) -> CliResult {
    let backend: Arc<dyn KeyBackend> = Arc::from(open_backend(config, None)?);
    let sessions = config.backend.signing_threads();
    let token_label = config.keys.token.clone();
    let algorithm = backend.public_key(&token_label)?.algorithm();
    say!("device: {}", backend.describe());
    say!(
        "token key: {algorithm}, {sessions} HSM session(s); bench agent key: {}",
        args.agent_curve
    );
    let single = sign_latency(backend.as_ref(), &token_label, 300)?;
    say!(
        "raw HSM sign latency, one signature at a time: p50 {:.2} ms  p99 {:.2} ms",
        single.0.as_secs_f64() * 1e3,
        single.1.as_secs_f64() * 1e3
    );

    remove_abandoned_bench_dirs(&config.state_dir);
    let bench_dir = config
        .state_dir
        .join(format!("bench-{}", std::process::id()));
    std::fs::create_dir_all(&bench_dir)?;
    std::fs::write(bench_dir.join(BENCH_MARKER), b"")?;
    let sync = sync_latency(&bench_dir, 200)?;
    say!(
        "fdatasync of 4 KiB where the store lives, one at a time: p50 {:.2} ms  p99 {:.2} ms (the floor under a durable token)",
        sync.0.as_secs_f64() * 1e3,
        sync.1.as_secs_f64() * 1e3
    );
    let raw = RawRate {
        label: token_label,
        sessions,
    };
    let result = run_load(config, backend, &bench_dir, &args, &raw);
    let _ = std::fs::remove_dir_all(&bench_dir);
    result
}

/// The file that marks a `bench-PID` directory as one `seb bench broker` made.
const BENCH_MARKER: &str = ".seb-bench";

/// Removes the `bench-PID` directories of benches that ended without cleaning up (killed): ones
/// this code made (they hold [`BENCH_MARKER`]) whose process no longer exists. They hold
/// throwaway stores and, with `--external`, an agent key.
fn remove_abandoned_bench_dirs(state_dir: &std::path::Path) {
    let Ok(entries) = std::fs::read_dir(state_dir) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name
            .to_str()
            .and_then(|n| n.strip_prefix("bench-"))
            .and_then(|pid| pid.parse::<u32>().ok())
        else {
            continue;
        };
        let ours = entry.path().join(BENCH_MARKER).is_file();
        // Without /proc nothing can be told about the process: keep the directory.
        let procfs = std::path::Path::new("/proc/self").exists();
        let alive = std::path::Path::new(&format!("/proc/{pid}")).exists();
        if ours && procfs && !alive {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

fn run_load(
    config: &Config,
    backend: Arc<dyn KeyBackend>,
    bench_dir: &std::path::Path,
    args: &BrokerBenchArgs,
    raw: &RawRate,
) -> CliResult {
    let (cert_pem, key_pem) = bench_agent(config, backend.as_ref(), args.agent_curve)?;
    let root_pem = read_file(&config.trust_dir().root_path())?;
    let mut cfg = config.clone();
    cfg.server.rate_limit_per_second = 10_000_000;
    cfg.server.rate_limit_burst = 10_000_000;
    // Every bench agent presents the same certificate.
    cfg.server.max_connections_per_certificate = usize::MAX;
    cfg.server.tls_resumption = true;
    let modes = if args.audit.is_empty() {
        vec![AuditMode::On]
    } else {
        args.audit.clone()
    };
    // What is measured: a label, and the brokers (one, or replicas sharing a store).
    // Every schema made is dropped at the end, also when making a later one failed.
    let mut namespaces = Vec::new();
    let stores = match (&args.store[..], &config.store) {
        ([], StoreConfig::Postgres(_)) => vec![StoreKind::Sqlite, StoreKind::Postgres],
        ([], StoreConfig::Sqlite) => vec![StoreKind::Sqlite],
        (chosen, _) => chosen.to_vec(),
    };
    let mut build = || -> Result<Vec<Variant>, CliError> {
        let mut variants: Vec<Variant> = Vec::new();
        for kind in &stores {
            match kind {
                StoreKind::Sqlite => {
                    for mode in &modes {
                        let dir = bench_dir.join(format!("{mode:?}").to_lowercase());
                        let store: Arc<dyn seb::store::Store> = Arc::new(match mode {
                            AuditMode::On => SqliteStore::open(&dir)?,
                            AuditMode::Off => SqliteStore::open_without_audit_log(&dir)?,
                        });
                        let label = match mode {
                            AuditMode::On => "sqlite, audit log on",
                            AuditMode::Off => "sqlite, audit log off",
                        };
                        let broker = Arc::new(Broker::new(cfg.clone(), backend.clone(), store)?);
                        variants.push((label.to_owned(), vec![broker]));
                    }
                }
                StoreKind::Postgres => {
                    let StoreConfig::Postgres(pg) = &config.store else {
                        return Err("--store postgres needs [store] backend = \"postgres\" in the configuration (softhsm-setup/provision.sh DIR --postgres)".into());
                    };
                    for &replicas in &args.replicas {
                        let namespace = format!("seb_bench_{}_{replicas}", std::process::id());
                        namespaces.push((pg.clone(), namespace.clone()));
                        let mut brokers = Vec::new();
                        for _ in 0..replicas.max(1) {
                            let store: Arc<dyn seb::store::Store> =
                                Arc::new(PgStore::open_in_namespace(pg, &namespace)?);
                            brokers.push(Arc::new(Broker::new(
                                cfg.clone(),
                                backend.clone(),
                                store,
                            )?));
                        }
                        let label = format!(
                            "postgres, {} replica{}",
                            replicas.max(1),
                            if replicas > 1 { "s" } else { "" }
                        );
                        variants.push((label, brokers));
                    }
                }
            }
        }
        Ok(variants)
    };
    let built = build();
    let result = built.and_then(|variants| {
        let measured = variants.first().and_then(|(_, b)| b.first().cloned());
        serve_and_measure(
            config,
            backend,
            bench_dir,
            args,
            raw,
            &cfg,
            variants,
            measured,
            (cert_pem, key_pem, root_pem),
        )
    });
    for (pg, namespace) in namespaces {
        if let Err(e) = PgStore::drop_namespace(&pg, &namespace) {
            say!("could not drop the bench schema {namespace}: {e}");
        }
    }
    result
}

/// Serves every variant on loopback listeners and drives the load against them.
#[allow(clippy::too_many_arguments)]
fn serve_and_measure(
    config: &Config,
    backend: Arc<dyn KeyBackend>,
    bench_dir: &std::path::Path,
    args: &BrokerBenchArgs,
    raw: &RawRate,
    cfg: &Config,
    variants: Vec<(String, Vec<Arc<Broker>>)>,
    measured: Option<Arc<Broker>>,
    (cert_pem, key_pem, root_pem): (String, String, Vec<u8>),
) -> CliResult {
    let tls = server::tls::broker_server_config(backend.clone(), cfg, true)?;
    let runtime = server::runtime(config)?;
    runtime.block_on(async move {
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        let mut servers = Vec::new();
        let mut urls: Vec<(String, Vec<String>)> = Vec::new();
        for (label, brokers) in variants {
            let mut these = Vec::new();
            for broker in brokers {
                let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
                these.push(format!("https://{}", listener.local_addr()?));
                servers.push(tokio::spawn(server::serve(
                    App::new(broker),
                    tls.clone(),
                    listener,
                    stop_rx.clone(),
                )));
            }
            urls.push((label, these));
        }
        let url = urls
            .first()
            .map(|(_, u)| u.clone())
            .ok_or("no broker to measure")?;
        let mut rates_by_label: Vec<(String, usize, f64)> = Vec::new();
        let driver = if args.external {
            let files = bench_dir.join("agent");
            std::fs::create_dir_all(&files)?;
            let (ca, cert, key) = (
                files.join("root.pem"),
                files.join("agent.pem"),
                files.join("agent.key"),
            );
            std::fs::write(&ca, &root_pem)?;
            std::fs::write(&cert, &cert_pem)?;
            // The agent's key, for the length of the run: readable by this user only.
            {
                use std::io::Write;
                use std::os::unix::fs::OpenOptionsExt;
                std::fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o600)
                    .open(&key)?
                    .write_all(key_pem.as_bytes())?;
            }
            Driver::External {
                exe: std::env::current_exe()?,
                ca,
                cert,
                key,
            }
        } else {
            Driver::InProcess {
                keep_alive: ClientTls::new(&root_pem, cert_pem.as_bytes(), key_pem.as_bytes(), true)?,
                full: ClientTls::new(&root_pem, cert_pem.as_bytes(), key_pem.as_bytes(), false)?,
            }
        };
        let seconds = Duration::from_secs(args.seconds);
        let mut peak = None;
        for &agents in &args.agents {
            // The raw rate drifts with the machine (by tens of percent within minutes on a
            // shared virtual machine), so it is measured right before and right after each
            // load and the load compared with their mean.
            for (label, variant_urls) in &urls {
                // One agent waits for one signature at a time: its floor is the latency of one
                // signature, measured around the load like the rate.
                let lone = agents <= 1;
                let single_before = if lone { Some(raw.latency(&backend).await?) } else { None };
                let before = raw.measure(&backend).await?;
                let stats = driver
                    .drive(variant_urls, agents.max(1), seconds, Pace::Closed, Mode::KeepAlive)
                    .await?;
                let after = raw.measure(&backend).await?;
                let single_after = if lone { Some(raw.latency(&backend).await?) } else { None };
                let raw_mean = (before + after) / 2.0;
                say!(
                    "broker {agents:>3} keep-alive agent(s), {label}: {:>6.0} tokens/s ({:.0} % of raw {:.0}/s, measured {:.0} before and {:.0} after)  {}  ({})",
                    stats.rate(),
                    100.0 * stats.rate() / raw_mean,
                    raw_mean,
                    before,
                    after,
                    stats.latency(),
                    stats.counts(),
                );
                if let (Some(a), Some(b)) = (single_before, single_after) {
                    let raw_p50 = (a + b) / 2.0;
                    say!(
                        "broker {agents:>3} keep-alive agent(s) ({label}): p50 {:+.2} ms over one raw signature's p50 {:.2} ms (measured {:.2} before and {:.2} after)",
                        stats.pct(0.50) - raw_p50,
                        raw_p50,
                        a,
                        b,
                    );
                } else if stats.ok > 0 {
                    let floor = 1e3 * agents as f64 / stats.rate();
                    say!(
                        "broker {agents:>3} keep-alive agent(s) ({label}): p99 {:.2} × the Little's-law floor of {floor:.2} ms ({agents} / throughput)",
                        stats.pct(0.99) / floor,
                    );
                }
                rates_by_label.push((label.clone(), agents, stats.rate()));
                if variant_urls == &url && peak.is_none_or(|(most, _)| agents >= most) {
                    peak = Some((agents, stats.rate()));
                }
            }
            let rate_of = |label: &str| {
                rates_by_label
                    .iter()
                    .find(|(l, a, _)| l == label && *a == agents)
                    .map(|r| r.2)
            };
            if let (Some(on), Some(off)) = (
                rate_of("sqlite, audit log on"),
                rate_of("sqlite, audit log off"),
            ) {
                say!(
                    "broker {agents:>3} keep-alive agent(s): the audit log costs {:.1} % of throughput",
                    100.0 * (1.0 - on / off)
                );
            }
            if let Some(sqlite) = rate_of("sqlite, audit log on") {
                for (label, _) in urls.iter().filter(|(l, _)| l.starts_with("postgres")) {
                    if let Some(pg) = rate_of(label) {
                        say!(
                            "broker {agents:>3} keep-alive agent(s): {label} at {:.0} % of sqlite's throughput (audit log on)",
                            100.0 * pg / sqlite
                        );
                    }
                }
            }
        }
        let fractions = args.open_loop.iter().filter(|f| **f > 0.0);
        for &fraction in fractions {
            let Some((agents, rate)) = peak else { break };
            let offered = fraction * rate;
            let agents = agents.max(1);
            let interval = Duration::from_secs_f64(agents as f64 / offered.max(1.0))
                .max(Duration::from_micros(1));
            let before = measured.as_ref().map(|b| issuance_buckets(b)).unwrap_or_default();
            let stats = driver
                .drive(&url, agents, seconds, Pace::Every(interval), Mode::KeepAlive)
                .await?;
            say!(
                "broker {agents:>3} keep-alive agent(s), open loop at {offered:.0} tokens/s offered ({:.0} % of the closed-loop rate): {:>6.0} tokens/s  {}  ({}, {} not sent by the end)",
                100.0 * fraction,
                stats.rate(),
                stats.latency(),
                stats.counts(),
                stats.unsent
            );
            // Where the tail is: inside the issuance (decision to durable token, as the broker
            // times it) or around it (TLS, HTTP, the async worker, the agent).
            let after = measured.as_ref().map(|b| issuance_buckets(b)).unwrap_or_default();
            let issued = after
                .last()
                .map(|l| l.1)
                .unwrap_or(0)
                .saturating_sub(before.last().map(|l| l.1).unwrap_or(0));
            let mut slow = Vec::new();
            for ((bound, a), (_, b)) in after.iter().zip(&before) {
                if [0.004, 0.008, 0.016, 0.032].iter().any(|x| (x - bound).abs() < 1e-9) {
                    let over = issued.saturating_sub(a.saturating_sub(*b));
                    let agents_over = stats
                        .latencies
                        .iter()
                        .filter(|l| l.as_secs_f64() > *bound)
                        .count();
                    slow.push(format!(
                        "> {:.0} ms: {:.2} % inside the broker, {:.2} % as the agents saw it",
                        bound * 1e3,
                        100.0 * over as f64 / issued.max(1) as f64,
                        100.0 * agents_over as f64 / stats.latencies.len().max(1) as f64
                    ));
                }
            }
            say!("  issuance latency {}", slow.join("; "));
        }
        if args.handshake_agents > 0 {
            let full = driver
                .drive(&url, args.handshake_agents, seconds, Pace::Closed, Mode::NewConnection)
                .await?;
            say!(
                "broker {:>3} agent(s), new connection per request, TLS resumption off: {:>6.0} handshakes+tokens/s  {}  ({})",
                args.handshake_agents,
                full.rate(),
                full.latency(),
                full.counts(),
            );
            if args.external {
                // The same connections without a request: the handshake's share of the CPU.
                let bare = driver
                    .drive(&url, args.handshake_agents, seconds, Pace::Closed, Mode::HandshakeOnly)
                    .await?;
                say!(
                    "broker {:>3} agent(s), handshake only, TLS resumption off: {:>6.0} handshakes/s  {}  ({})",
                    args.handshake_agents,
                    bare.rate(),
                    bare.latency(),
                    bare.counts(),
                );
                if let (Some(both), Some(handshake)) = (full.cpu_us(), bare.cpu_us()) {
                    say!(
                        "broker CPU per new connection: {both:.0} µs = handshake {handshake:.0} µs + token and HTTP {:.0} µs",
                        both - handshake
                    );
                }
            }
        }
        let _ = stop_tx.send(true);
        for server in servers {
            let _ = server.await;
        }
        Ok::<(), CliError>(())
    })
}

/// Median and 99th percentile of `count` signatures made one after another on one thread: the
/// floor under the broker's latency with one agent.
fn sign_latency(
    backend: &dyn KeyBackend,
    label: &str,
    count: usize,
) -> Result<(Duration, Duration), CliError> {
    let digest = backend
        .public_key(label)?
        .algorithm()
        .digest(b"seb bench latency");
    let mut samples = Vec::with_capacity(count);
    for _ in 0..count {
        let started = Instant::now();
        backend.sign_digest(label, &digest)?;
        samples.push(started.elapsed());
    }
    Ok(super::percentiles(&mut samples))
}

/// Median and 99th percentile of `count` synced 4 KiB writes (`fdatasync`, as the store's
/// commits) in `dir`, one after another: no token can be answered faster than its commit.
fn sync_latency(dir: &std::path::Path, count: usize) -> Result<(Duration, Duration), CliError> {
    use std::os::unix::fs::FileExt;
    let path = dir.join("sync-probe");
    let file = std::fs::File::create(&path)?;
    let block = [0x5au8; 4096];
    let mut samples = Vec::with_capacity(count);
    for i in 0..count {
        file.write_all_at(&block, (i % 16) as u64 * 4096)?;
        let started = Instant::now();
        file.sync_data()?;
        samples.push(started.elapsed());
    }
    drop(file);
    let _ = std::fs::remove_file(&path);
    Ok(super::percentiles(&mut samples))
}

/// The raw signing rate of the token key, with as many threads as the broker has sessions.
struct RawRate {
    label: String,
    sessions: usize,
}

impl RawRate {
    async fn measure(&self, backend: &Arc<dyn KeyBackend>) -> Result<f64, CliError> {
        let (backend, label, sessions) = (backend.clone(), self.label.clone(), self.sessions);
        tokio::task::spawn_blocking(move || {
            sign_rate(&backend, &label, sessions, Duration::from_secs(2))
        })
        .await?
    }

    /// The median latency in milliseconds of signatures made one at a time.
    async fn latency(&self, backend: &Arc<dyn KeyBackend>) -> Result<f64, CliError> {
        let (backend, label) = (backend.clone(), self.label.clone());
        let (p50, _) =
            tokio::task::spawn_blocking(move || sign_latency(backend.as_ref(), &label, 200))
                .await??;
        Ok(p50.as_secs_f64() * 1e3)
    }
}

/// The broker's issuance histogram (decision to durable token) as (upper bound in seconds,
/// cumulative count), the last entry the total, read from its Prometheus text.
fn issuance_buckets(broker: &Broker) -> Vec<(f64, u64)> {
    let text = broker.metrics().render();
    let mut buckets = Vec::new();
    for line in text.lines() {
        let Some(rest) = line.strip_prefix("seb_issuance_seconds_bucket{le=\"") else {
            continue;
        };
        let Some((bound, count)) = rest.split_once("\"} ") else {
            continue;
        };
        let bound = if bound == "+Inf" {
            f64::INFINITY
        } else {
            bound.parse().unwrap_or(f64::NAN)
        };
        buckets.push((bound, count.trim().parse().unwrap_or(0)));
    }
    buckets
}

/// A bench agent: a software key (the agent's, not the broker's) certified by the root key in
/// the device, with one grant for the bench operation.
fn bench_agent(
    config: &Config,
    backend: &dyn KeyBackend,
    curve: KeyAlgorithm,
) -> Result<(String, String), CliError> {
    use secrecy::ExposeSecret;
    let made = csr::generate(ca::parse_subject("CN=seb-bench-agent")?, curve)?;
    let verified = csr::verify(made.csr_pem.as_bytes())?;
    let grants = GrantSet::from_toml_str(
        "[[grant]]\noperation = \"bench.run\"\nresource = \"bench/*\"\nmax_ttl = \"60s\"\nparams_any = true\n",
    )?;
    let root = config.trust_dir().root()?;
    let signer = P384Signer::new(backend, &config.keys.root)?;
    let cert = ca::issue_leaf(
        &signer,
        &root,
        LeafRequest {
            public_key: verified.public_key,
            subject: verified.subject,
            role: Role::new(RoleKind::Agent, vec![])?,
            grants: Some(grants),
            ttl: Duration::from_secs(3600),
        },
        config.ca.max_leaf_validity,
        SystemTime::now(),
    )?;
    Ok((
        cert.to_pem_string()?,
        made.key_pem.expose_secret().to_owned(),
    ))
}
