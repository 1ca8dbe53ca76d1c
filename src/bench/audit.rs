//! `seb bench audit`: the audit log at scale, without a device: append rate through the
//! store's group commit, inclusion- and consistency-proof latency, the offline verifier's
//! speed, and the store's size per entry, for logs of the sizes asked for.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use seb::audit::entry::{CertRef, Entry, EntryKind};
use seb::audit::merkle::{self, CompactRange};
use seb::store::sqlite::SqliteStore;
use seb::store::{Store, MAX_AUDIT_PAGE};

use crate::cli::{CliError, CliResult};

/// Options of `seb bench audit`.
#[derive(Debug, clap::Args)]
pub struct AuditBenchArgs {
    /// Log sizes to build and measure, comma-separated.
    #[arg(long, default_value = "10000,1000000", value_delimiter = ',')]
    entries: Vec<u64>,
    /// Threads appending concurrently (they share group commits, as requests do).
    #[arg(long, default_value_t = 64)]
    threads: u64,
    /// Where to build the throwaway logs (default: the system temporary directory).
    #[arg(long)]
    dir: Option<std::path::PathBuf>,
}

/// A grant's entry of realistic size (about 500 bytes).
fn grant_entry(i: u64) -> Entry {
    let mut e = Entry::new(EntryKind::ExecutionGranted, 1_765_000_000_000 + i);
    let id = format!("AZrWq0ZsLm3Xc9{i:016}");
    e.request_id = Some(id.clone());
    e.cert = Some(CertRef {
        thumbprint: "q0ZsLm3Xc9AZrWq0ZsLm3Xc9AZrWq0ZsLm3Xc9AZrWq".into(),
        serial: "3f1c2a9b8e7d6c5b4a39281706f5e4d3".into(),
        subject: "CN=deploy-bot,O=example".into(),
    });
    e.operation = Some("deploy.rollout".into());
    e.resource = Some("prod/payments/api".into());
    e.params_digest = Some("m1xM".repeat(16));
    e.request_digest = Some("C3aE".repeat(16));
    e.decision = Some("granted".into());
    e.jti = Some(id);
    e.expires_at = Some(1_765_000_060);
    e.epoch = Some(0);
    e
}

/// Runs the benchmark and prints one block per size.
pub fn run(args: AuditBenchArgs) -> CliResult {
    let base = args.dir.clone().unwrap_or_else(std::env::temp_dir);
    for &n in &args.entries {
        let dir = base.join(format!("seb-bench-audit-{}-{n}", std::process::id()));
        let result = measure(&dir, n, args.threads.max(1));
        let _ = std::fs::remove_dir_all(&dir);
        result?;
    }
    Ok(())
}

fn measure(dir: &std::path::Path, n: u64, threads: u64) -> CliResult {
    let store = Arc::new(SqliteStore::open(dir)?);
    // Append: `threads` writers, each waiting for its own commit (group commit).
    let next = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let workers: Vec<_> = (0..threads)
        .map(|_| {
            let (store, next) = (store.clone(), next.clone());
            std::thread::spawn(move || -> Result<(), String> {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= n {
                        return Ok(());
                    }
                    store
                        .append_audit(&grant_entry(i))
                        .map_err(|e| e.to_string())?;
                }
            })
        })
        .collect();
    for w in workers {
        w.join().map_err(|_| "an append thread panicked")??;
    }
    let append = started.elapsed();
    let size = store.audit_size()?;
    say!(
        "audit log of {size} entries: append {:.0} entries/s ({threads} threads, group commit, synced)",
        size as f64 / append.as_secs_f64()
    );
    // Proofs at the full size, for indexes spread over the log.
    let mut inclusion = Vec::new();
    let mut consistency = Vec::new();
    let mut root_time = Vec::new();
    for k in 0..500u64 {
        let index = (k * 7919 * 104_729) % size;
        let t = Instant::now();
        store.audit_inclusion_proof(index, size)?;
        inclusion.push(t.elapsed());
        let old = 1 + (k * 104_729) % (size - 1).max(1);
        let t = Instant::now();
        store.audit_consistency_proof(old, size)?;
        consistency.push(t.elapsed());
        let t = Instant::now();
        store.audit_root(size)?;
        root_time.push(t.elapsed());
    }
    let (p50, p99) = super::percentiles(&mut inclusion);
    say!(
        "  inclusion proof: p50 {:.0} µs  p99 {:.0} µs",
        micros(p50),
        micros(p99)
    );
    let (p50, p99) = super::percentiles(&mut consistency);
    say!(
        "  consistency proof: p50 {:.0} µs  p99 {:.0} µs",
        micros(p50),
        micros(p99)
    );
    let (p50, p99) = super::percentiles(&mut root_time);
    say!(
        "  root at the full size: p50 {:.0} µs  p99 {:.0} µs",
        micros(p50),
        micros(p99)
    );
    // The offline verifier's work: read every entry, check its form, hash, rebuild the tree.
    let t = Instant::now();
    let mut range = CompactRange::default();
    let mut start = 0;
    while start < size {
        let page = store.audit_entries(start, start + MAX_AUDIT_PAGE)?;
        for (_, text) in &page {
            Entry::parse(text.as_bytes()).map_err(|e| CliError::from(e.to_string()))?;
            range.push(merkle::leaf_hash(text.as_bytes()));
        }
        start += page.len() as u64;
    }
    let verify = t.elapsed();
    if range.root() != store.audit_root(size)? {
        return Err("the recomputed root differs from the stored one".into());
    }
    say!(
        "  verify (read, parse, hash, rebuild the tree): {:.0} entries/s ({:.2} s)",
        size as f64 / verify.as_secs_f64(),
        verify.as_secs_f64()
    );
    drop(store);
    // Closing the store copies the write-ahead log into the database and truncates it.
    let bytes: u64 = std::fs::read_dir(dir)?
        .filter_map(|e| e.ok()?.metadata().ok())
        .map(|m| m.len())
        .sum();
    say!(
        "  store size: {:.0} bytes per entry ({:.0} MB per million entries)",
        bytes as f64 / size as f64,
        bytes as f64 / size as f64
    );
    Ok(())
}

fn micros(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}
