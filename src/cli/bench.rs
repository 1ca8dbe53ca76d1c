//! `seb bench`: measured figures, never asserted in tests.
//!
//! `seb bench sign` reports the raw device signing rate through the backend's session pool;
//! `seb bench issue` reports certificate issuance latency through the HSM.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use seb::backend::{KeyBackend, P384Signer};
use seb::ca::{self, csr, LeafRequest};
use seb::config::Config;
use seb::grants::{GrantSet, Role, RoleKind};
use sha2::{Digest, Sha384};

use super::{open_backend, CliResult};

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
            println!("device: {}", backend.describe());
            for threads in 1..=max_sessions.max(1) {
                let rate = sign_rate(&backend, &label, threads, Duration::from_secs(seconds))?;
                println!("raw HSM sign {algorithm} key {label:?}: {threads} session(s): {rate:.0} signatures/s");
            }
            Ok(())
        }
        BenchCommand::Issue { count } => issue_latency(config, count),
    }
}

/// Signs as fast as possible from `threads` threads for `duration`; returns signatures/s.
pub fn sign_rate(
    backend: &Arc<dyn KeyBackend>,
    label: &str,
    threads: usize,
    duration: Duration,
) -> Result<f64, super::CliError> {
    let len = backend.public_key(label)?.algorithm().digest_len();
    let digest = Sha384::digest(b"seb bench");
    let digest = digest[..len.min(48)].to_vec();
    backend.sign_digest(label, &digest)?; // warm the handle cache
    let stop = Arc::new(AtomicBool::new(false));
    let count = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let workers: Vec<_> = (0..threads)
        .map(|_| {
            let (backend, stop, count) = (backend.clone(), stop.clone(), count.clone());
            let (label, digest) = (label.to_owned(), digest.clone());
            std::thread::spawn(move || -> Result<(), String> {
                while !stop.load(Ordering::Relaxed) {
                    backend
                        .sign_digest(&label, &digest)
                        .map_err(|e| e.to_string())?;
                    count.fetch_add(1, Ordering::Relaxed);
                }
                Ok(())
            })
        })
        .collect();
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
    let root =
        seb::cert::Certificate::parse(&super::read_file(&config.trust_dir().join("root.pem"))?)?;
    let made = csr::generate(ca::parse_subject("CN=bench-agent")?)?;
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
    println!(
        "certificate issuance through the HSM ({} certificates): median {:.2} ms, p99 {:.2} ms",
        samples.len(),
        pct(0.5).as_secs_f64() * 1e3,
        pct(0.99).as_secs_f64() * 1e3
    );
    Ok(())
}
