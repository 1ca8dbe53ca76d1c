//! `seb bench`: measured figures, never asserted in tests. A module of the binary of its own,
//! beside `cli/` and out of the serving path: nothing the broker runs in production calls it.
//!
//! `seb bench sign` reports the raw device signing rate through the backend's session pool;
//! `seb bench issue` reports certificate issuance latency through the HSM; `seb bench decide`
//! reports the authorization decision's latency (pure logic, no device, no configuration).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use seb::backend::{KeyAlgorithm, KeyBackend, P384Signer};
use seb::ca::{self, csr, LeafRequest};
use seb::config::Config;
use seb::grants::{GrantSet, Role, RoleKind};

use crate::cli::{open_backend, with_config, CliError, CliResult};

mod audit;
mod broker;
mod load;

/// `seb bench ...`
#[derive(Debug, clap::Subcommand)]
pub enum BenchCommand {
    /// Raw HSM P-384 signing rate with 1..=N threads, each with its own pool session.
    Sign {
        /// Seconds per measurement.
        #[arg(long, default_value_t = 3)]
        seconds: u64,
        /// Largest number of threads/sessions to measure.
        #[arg(long, default_value_t = 2)]
        max_sessions: usize,
        /// Key label to sign with (default: the root key).
        #[arg(long)]
        label: Option<String>,
    },
    /// Certificate issuance through the HSM: median and p99 of N issuances.
    Issue {
        /// Number of certificates.
        #[arg(long, default_value_t = 200)]
        count: usize,
    },
    /// The whole broker: starts it in this process on a loopback port, drives it with N
    /// concurrent mTLS keep-alive agents, and reports tokens/s and latency next to the raw HSM
    /// sign rate of the token key measured in the same run with the same number of sessions.
    Broker(broker::BrokerBenchArgs),
    /// The load generator of `bench broker --external` on its own (no --config): agents
    /// against a running broker, in this process, so that the broker's CPU is measured alone.
    Load(load::LoadArgs),
    /// The audit log at scale (no device, no --config): append rate, proof latency,
    /// verification speed and store size per entry.
    Audit(audit::AuditBenchArgs),
    /// Authorization decision time for certificates with 1, 10 and 100 grants (pure logic:
    /// needs no HSM and no --config; certificates come from a throwaway software root).
    Decide {
        /// Decisions measured per size and path.
        #[arg(long, default_value_t = 2000)]
        iterations: usize,
    },
}

/// Runs `bench decide` without configuration, the others with it.
pub fn dispatch(config: Option<&std::path::Path>, command: BenchCommand) -> CliResult {
    match command {
        BenchCommand::Decide { iterations } => decide_latency(iterations),
        BenchCommand::Audit(args) => audit::run(args),
        BenchCommand::Load(args) => load::run_load_process(args),
        other => with_config(config, |c| run(c, other)),
    }
}

/// Runs a benchmark.
pub fn run(config: &Config, command: BenchCommand) -> CliResult {
    match command {
        BenchCommand::Sign {
            seconds,
            max_sessions,
            label,
        } => {
            let backend: Arc<dyn KeyBackend> = Arc::from(open_backend(config, Some(max_sessions))?);
            let label = label.unwrap_or_else(|| config.keys.root.clone());
            let algorithm = backend.public_key(&label)?.algorithm();
            say!("device: {}", backend.describe());
            for threads in 1..=max_sessions.max(1) {
                let rate = sign_rate(&backend, &label, threads, Duration::from_secs(seconds))?;
                say!("raw HSM sign {algorithm} key {label:?}: {threads} session(s): {rate:.0} signatures/s");
            }
            Ok(())
        }
        BenchCommand::Issue { count } => issue_latency(config, count),
        BenchCommand::Broker(args) => broker::run(config, args),
        BenchCommand::Audit(args) => audit::run(args),
        BenchCommand::Load(args) => load::run_load_process(args),
        BenchCommand::Decide { iterations } => decide_latency(iterations),
    }
}

/// Signs as fast as possible from `threads` threads for `duration`; returns signatures/s.
pub fn sign_rate(
    backend: &Arc<dyn KeyBackend>,
    label: &str,
    threads: usize,
    duration: Duration,
) -> Result<f64, CliError> {
    let digest = backend.public_key(label)?.algorithm().digest(b"seb bench");
    backend.sign_digest(label, &digest)?; // warm the handle cache
    let stop = Arc::new(AtomicBool::new(false));
    let count = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let workers: Vec<_> = (0..threads)
        .map(|_| {
            let (backend, stop, count) = (backend.clone(), stop.clone(), count.clone());
            let (label, digest) = (label.to_owned(), digest.clone());
            std::thread::Builder::new()
                .name("seb-raw-sign".into())
                .spawn(move || -> Result<(), String> {
                    while !stop.load(Ordering::Relaxed) {
                        backend
                            .sign_digest(&label, &digest)
                            .map_err(|e| e.to_string())?;
                        count.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(())
                })
        })
        .collect::<Result<Vec<_>, _>>()?;
    std::thread::sleep(duration);
    stop.store(true, Ordering::Relaxed);
    for worker in workers {
        worker.join().map_err(|_| "bench thread panicked")??;
    }
    Ok(count.load(Ordering::Relaxed) as f64 / start.elapsed().as_secs_f64())
}

fn issue_latency(config: &Config, count: usize) -> CliResult {
    let backend = open_backend(config, Some(1))?;
    let signer = P384Signer::new(backend.as_ref(), &config.keys.root)?;
    let root = config.trust_dir().root()?;
    let made = csr::generate(ca::parse_subject("CN=bench-agent")?, KeyAlgorithm::EcP384)?;
    let verified = csr::verify(made.csr_pem.as_bytes())?;
    let grants = GrantSet::from_toml_str(
        "[[grant]]\noperation = \"deploy.rollout\"\nresource = \"prod/payments/*\"\nmax_ttl = \"60s\"\nparams_any = true\n",
    )?;
    let mut samples = Vec::with_capacity(count);
    for _ in 0..count.max(1) {
        let start = Instant::now();
        ca::issue_leaf(
            &signer,
            &root,
            LeafRequest {
                public_key: verified.public_key.clone(),
                subject: verified.subject.clone(),
                role: Role {
                    kind: RoleKind::Agent,
                    groups: vec![],
                },
                grants: Some(grants.clone()),
                ttl: Duration::from_secs(86_400),
            },
            config.ca.max_leaf_validity,
            SystemTime::now(),
        )?;
        samples.push(start.elapsed());
    }
    samples.sort();
    let pct = |p: f64| samples[((samples.len() - 1) as f64 * p).round() as usize];
    say!(
        "certificate issuance through the HSM ({} certificates): median {:.2} ms, p99 {:.2} ms",
        samples.len(),
        pct(0.5).as_secs_f64() * 1e3,
        pct(0.99).as_secs_f64() * 1e3
    );
    Ok(())
}

/// Median and p99 of `samples` (sorted in place).
fn percentiles(samples: &mut [Duration]) -> (Duration, Duration) {
    samples.sort();
    if samples.is_empty() {
        return (Duration::ZERO, Duration::ZERO);
    }
    let pct = |p: f64| samples[((samples.len() - 1) as f64 * p).round() as usize];
    (pct(0.5), pct(0.99))
}

/// A grant file with `n` grants on one operation and resource that differ only in the region
/// they allow, so a request for the last grant goes through every grant's parameter checks.
fn bench_grants(n: usize) -> String {
    let mut toml = String::new();
    for i in 0..n {
        toml.push_str(&format!(
            "[[grant]]\noperation = \"deploy.rollout\"\nresource = \"prod/payments/*\"\nmax_ttl = \"60s\"\n\
             params.replicas = {{ min = 1, max = 10 }}\n\
             params.image = {{ prefix = \"registry.internal/payments/\" }}\n\
             params.strategy = {{ one_of = [\"rolling\", \"canary\"] }}\n\
             params.region = {{ equals = \"region-{i}\" }}\n\n"
        ));
    }
    toml
}

struct NoneRevoked;

impl seb::authz::RevocationView for NoneRevoked {
    fn is_revoked(&self, _serial: &seb::serial::Serial) -> bool {
        false
    }
}

fn decide_latency(iterations: usize) -> CliResult {
    use p384::elliptic_curve::Generate;
    use seb::authz::{decide, Decision, Request};
    use seb::ca::IntermediateRequest;

    // A throwaway software root: this measures the decision logic, not a device, and no key
    // made here is ever a broker key.
    let software_key =
        || p384::ecdsa::SigningKey::try_generate().map_err(|e| format!("no randomness: {e}"));
    let now = SystemTime::now();
    let root_key = software_key()?;
    let root = ca::self_signed_root(
        &root_key,
        &ca::parse_subject("CN=bench root (software)")?,
        Duration::from_secs(86_400),
        now,
    )?;
    let roots = [root.clone()];
    let iterations = iterations.max(1);
    say!(
        "decision benchmark: pure logic on a software test root (no HSM), {iterations} decisions per figure; \
         request matches the last grant after failing every other grant's parameters"
    );
    for (with_intermediate, label) in [
        (false, "leaf under root"),
        (true, "leaf under intermediate with the same grants"),
    ] {
        for n in [1usize, 10, 100] {
            let grants = GrantSet::from_toml_str(&bench_grants(n))?;
            let spki_of = |k: &p384::ecdsa::SigningKey| {
                spki::SubjectPublicKeyInfoOwned::from_key(k.verifying_key())
                    .map_err(|e| e.to_string())
            };
            let (issuer_key, issuer_chain, intermediates) = if with_intermediate {
                let key = software_key()?;
                let cert = ca::issue_intermediate(
                    &root_key,
                    std::slice::from_ref(&root),
                    IntermediateRequest {
                        public_key: spki_of(&key)?,
                        subject: ca::parse_subject("CN=bench intermediate")?,
                        grants: Some(grants.clone()),
                        roles: seb::grants::IssuableRoles::AGENTS_ONLY,
                        path_len: Some(0),
                        ttl: Duration::from_secs(3_600),
                    },
                    now,
                )?;
                (key, vec![cert.clone(), root.clone()], vec![cert])
            } else {
                (root_key.clone(), vec![root.clone()], vec![])
            };
            let agent_key = software_key()?;
            let leaf = ca::issue_leaf_under(
                &issuer_key,
                &issuer_chain,
                LeafRequest {
                    public_key: spki_of(&agent_key)?,
                    subject: ca::parse_subject("CN=bench agent")?,
                    role: Role::new(RoleKind::Agent, vec![])?,
                    grants: Some(grants),
                    ttl: Duration::from_secs(600),
                },
                Duration::from_secs(600),
                now,
            )?;
            let request = Request {
                operation: "deploy.rollout".into(),
                resource: "prod/payments/api".into(),
                params: serde_json::json!({
                    "replicas": 3,
                    "image": "registry.internal/payments/api:1.2.3",
                    "strategy": "canary",
                    "region": format!("region-{}", n - 1),
                }),
            };
            let validated = seb::chain::validate(&leaf, &intermediates, &roots, now)?;
            let mut logic = Vec::with_capacity(iterations);
            let mut full = Vec::with_capacity(iterations);
            let mut view_only = Vec::with_capacity(iterations);
            for _ in 0..iterations {
                let start = Instant::now();
                let view = validated.chain_view();
                view_only.push(start.elapsed());
                drop(view);

                let start = Instant::now();
                let decision = decide(
                    &validated.chain_view(),
                    &NoneRevoked,
                    &request,
                    now,
                    Duration::from_secs(60),
                );
                logic.push(start.elapsed());
                check_allowed(&decision, n)?;

                let start = Instant::now();
                let chain = seb::chain::validate(&leaf, &intermediates, &roots, now)?;
                let decision = decide(
                    &chain.chain_view(),
                    &NoneRevoked,
                    &request,
                    now,
                    Duration::from_secs(60),
                );
                full.push(start.elapsed());
                check_allowed(&decision, n)?;
            }
            let (logic_p50, logic_p99) = percentiles(&mut logic);
            let (full_p50, full_p99) = percentiles(&mut full);
            let (view_p50, _) = percentiles(&mut view_only);
            let us = |d: Duration| d.as_secs_f64() * 1e6;
            say!(
                "{label}, {n:>3} grant(s): decision (chain view + decide) median {:.1} µs p99 {:.1} µs \
                 (chain view alone, i.e. decoding the extensions: median {:.1} µs); \
                 with chain::validate signatures median {:.1} µs p99 {:.1} µs",
                us(logic_p50),
                us(logic_p99),
                us(view_p50),
                us(full_p50),
                us(full_p99)
            );
        }
    }
    fn check_allowed(decision: &Decision, n: usize) -> CliResult {
        match decision {
            Decision::Allow { grant_index, .. } if *grant_index == n - 1 => Ok(()),
            other => Err(
                format!("benchmark request was not allowed by the last grant: {other:?}").into(),
            ),
        }
    }
    Ok(())
}
