//! `seb audit`: verifying the broker's audit log offline with only the root certificate, and
//! exporting it as JSON lines for a SIEM (which `verify --file` checks as well).
//!
//! Needs no --config and no device: it runs on an auditor's machine.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use seb::audit::checkpoint::Checkpoint;
use seb::audit::merkle::Hash;
use seb::audit::verify::{self, LoggedEntry, Verified};
use seb::base64url;
use seb::cert::Certificate;
use seb::client::{Client, ClientTls};
use seb::store::MAX_AUDIT_PAGE;
use seb::verify::TrustStore;

use super::{read_file, read_file_within, write_file, CliError, CliResult};

/// `seb audit ...`
#[derive(Debug, clap::Subcommand)]
pub enum AuditCommand {
    /// Verify the audit log: every entry, every checkpoint signature and its certificate
    /// chain, and consistency with a checkpoint kept from before.
    Verify(VerifyArgs),
    /// Write the entries and the newest checkpoint as JSON lines (for a SIEM, and for
    /// `verify --file`).
    Export(ExportArgs),
}

/// The broker connection (`--broker` with a client certificate).
#[derive(Debug, clap::Args)]
pub struct BrokerArgs {
    /// Broker URL, e.g. https://127.0.0.1:8443
    #[arg(long)]
    broker: Option<String>,
    /// Client certificate chain (PEM) for the broker's mutual TLS (any role).
    #[arg(long)]
    cert: Option<PathBuf>,
    /// Client private key (PKCS#8 PEM).
    #[arg(long)]
    key: Option<PathBuf>,
}

/// Options of `seb audit verify`.
#[derive(Debug, clap::Args)]
pub struct VerifyArgs {
    /// The seb root certificate (PEM): the only thing trusted.
    #[arg(long)]
    trust: PathBuf,
    #[command(flatten)]
    broker: BrokerArgs,
    /// An export written by `seb audit export` (instead of --broker).
    #[arg(long, conflicts_with = "broker")]
    file: Option<PathBuf>,
    /// A checkpoint kept from an earlier verification: the log must extend it.
    #[arg(long)]
    checkpoint: Option<PathBuf>,
    /// More certificates to consider as checkpoint signers, PEM (repeatable): the audit
    /// certificate of a generation `seb rotate audit` retired, which signed a kept
    /// checkpoint. They must chain to --trust like any other.
    #[arg(long = "audit-cert")]
    audit_certs: Vec<PathBuf>,
    /// Write the newest verified checkpoint here. A checkpoint already in the file is one the
    /// log must extend first, like --checkpoint: a monitor restarted by cron or systemd with
    /// the same command picks up where it stopped, and a rewritten log is refused without
    /// overwriting the evidence. A file that does not exist yet starts a new record.
    #[arg(long)]
    save: Option<PathBuf>,
    /// Keep watching the broker: verify each new checkpoint against the last verified one
    /// (kept in --save, or else --checkpoint) and exit non-zero the moment the log is not an
    /// extension of it.
    #[arg(long, requires = "broker")]
    follow: bool,
    /// How often --follow polls.
    #[arg(long, default_value = "10s")]
    interval: String,
}

/// Options of `seb audit export`.
#[derive(Debug, clap::Args)]
pub struct ExportArgs {
    /// The seb root certificate (PEM): TLS trust anchor.
    #[arg(long)]
    trust: PathBuf,
    #[command(flatten)]
    broker: BrokerArgs,
    /// Where to write the JSON lines (`-`: standard output, with the verdict on stderr).
    #[arg(long)]
    out: PathBuf,
}

/// Runs an audit subcommand.
pub fn run(command: AuditCommand) -> CliResult {
    match command {
        AuditCommand::Verify(a) => verify_cmd(a),
        AuditCommand::Export(a) => export(a),
    }
}

/// One line of an export.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
enum Line {
    /// The broker's published certificates (`/v1/trust`): the audit certificate among them.
    Trust { pem: String },
    /// One entry.
    Entry {
        index: u64,
        leaf_hash: String,
        entry: serde_json::Value,
    },
    /// A signed checkpoint note.
    Checkpoint { note: String },
}

/// What was read from a broker or a file.
struct Evidence {
    bundle: String,
    entries: Vec<LoggedEntry>,
    notes: Vec<String>,
}

fn logged(index: u64, leaf_hash: &str, entry: &serde_json::Value) -> Result<LoggedEntry, CliError> {
    let bytes = seb::canonical::canonicalize(entry)
        .map_err(|e| format!("entry {index}: {e}"))?
        .into_bytes();
    let leaf_hash = base64url::decode(leaf_hash)
        .and_then(|h| Hash::try_from(h).ok())
        .ok_or_else(|| format!("entry {index}: malformed leaf hash"))?;
    Ok(LoggedEntry {
        index,
        bytes,
        leaf_hash: Some(leaf_hash),
    })
}

/// The trusted roots (from --trust only) plus the non-root certificates the broker publishes.
fn trust_store(root_pem: &[u8], bundle: &str) -> Result<TrustStore, CliError> {
    // Only --trust names roots: a self-issued certificate from the broker or the file is
    // ignored, never trusted.
    let pinned = Certificate::parse_pem_chain(root_pem).map_err(|e| format!("--trust: {e}"))?;
    let published = Certificate::parse_pem_chain(bundle.as_bytes())
        .map_err(|e| format!("the published certificates: {e}"))?;
    Ok(TrustStore::pinned_with(pinned, published)?)
}

/// The largest export `audit verify --file` reads (it is held in memory whole).
const MAX_EXPORT: u64 = 1 << 30;

fn read_export(path: &Path) -> Result<Evidence, CliError> {
    let text = String::from_utf8(read_file_within(path, MAX_EXPORT)?)
        .map_err(|_| format!("{} is not UTF-8", path.display()))?;
    let mut evidence = Evidence {
        bundle: String::new(),
        entries: Vec::new(),
        notes: Vec::new(),
    };
    for (n, line) in text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
    {
        // Strictly: a duplicate key inside an entry would be hashed as one value (serde_json
        // keeps the last) while a SIEM reading the same line may show the other.
        let line: Line = seb::json::parse_strict(line.as_bytes())
            .map_err(|e| e.to_string())
            .and_then(|value| serde_json::from_value(value).map_err(|e| e.to_string()))
            .map_err(|e| format!("{} line {}: {e}", path.display(), n + 1))?;
        match line {
            Line::Trust { pem } => evidence.bundle.push_str(&pem),
            Line::Entry {
                index,
                leaf_hash,
                entry,
            } => evidence.entries.push(logged(index, &leaf_hash, &entry)?),
            Line::Checkpoint { note } => evidence.notes.push(note),
        }
    }
    Ok(evidence)
}

struct Session {
    runtime: tokio::runtime::Runtime,
    client: Client,
}

impl Session {
    fn open(root_pem: &[u8], args: &BrokerArgs) -> Result<Self, CliError> {
        let url = args
            .broker
            .as_deref()
            .ok_or("--broker URL or --file FILE is needed")?;
        let cert = args
            .cert
            .as_deref()
            .ok_or("--broker needs --cert and --key")?;
        let key = args
            .key
            .as_deref()
            .ok_or("--broker needs --cert and --key")?;
        let tls = ClientTls::new(root_pem, &read_file(cert)?, &read_file(key)?, false)?;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let client = runtime.block_on(Client::connect(url, &tls))?;
        Ok(Self { runtime, client })
    }

    fn get(&mut self, path: &str) -> Result<seb::client::ApiResponse, CliError> {
        let response = self.get_any(path)?;
        if response.status != 200 {
            return Err(format!(
                "GET {path}: the broker answered {}: {}",
                response.status, response.text
            )
            .into());
        }
        Ok(response)
    }

    /// `GET path`, whatever the status.
    fn get_any(&mut self, path: &str) -> Result<seb::client::ApiResponse, CliError> {
        Ok(self.runtime.block_on(self.client.send("GET", path, None))?)
    }

    /// The published certificates, the newest checkpoint and every entry it covers.
    fn fetch(&mut self) -> Result<Evidence, CliError> {
        let bundle = self.get("/v1/trust")?.text;
        let note = self.get("/v1/audit/checkpoint")?.text;
        let (body, _) = seb::audit::checkpoint::parse_note(&note)?;
        let size = Checkpoint::parse_body(&body)?.size;
        let mut entries = Vec::new();
        while (entries.len() as u64) < size {
            let start = entries.len() as u64;
            let end = size.min(start + MAX_AUDIT_PAGE);
            let page = self.get(&format!("/v1/audit/entries?start={start}&end={end}"))?;
            let items = page.body["entries"]
                .as_array()
                .ok_or("the broker's entries page is malformed")?;
            if items.is_empty() {
                return Err(format!(
                    "the broker served no entries from {start}, below its checkpoint's size {size}"
                )
                .into());
            }
            for item in items {
                entries.push(logged(
                    item["index"].as_u64().ok_or("entry without an index")?,
                    item["leaf_hash"].as_str().unwrap_or_default(),
                    &item["entry"],
                )?);
            }
        }
        Ok(Evidence {
            bundle,
            entries,
            notes: vec![note],
        })
    }

    fn consistency(&mut self, from: u64, to: u64) -> Result<Vec<Hash>, CliError> {
        let r = self.get(&format!("/v1/audit/proof/consistency?from={from}&to={to}"))?;
        r.body["proof"]
            .as_array()
            .ok_or("malformed consistency proof")?
            .iter()
            .map(|h| {
                h.as_str()
                    .and_then(base64url::decode)
                    .and_then(|h| Hash::try_from(h).ok())
                    .ok_or_else(|| "malformed hash in the consistency proof".into())
            })
            .collect()
    }
}

fn report(v: &Verified) {
    say!("{}", verified_text(v));
}

fn verified_text(v: &Verified) -> String {
    format!(
        "audit log OK: {} entries, {} checkpoint(s) verified; log {} size {} root {}",
        v.entries,
        v.checkpoints,
        v.checkpoint.origin,
        v.checkpoint.size,
        <base64ct::Base64 as base64ct::Encoding>::encode_string(&v.checkpoint.root)
    )
}

fn verify_cmd(args: VerifyArgs) -> CliResult {
    let root_pem = read_file(&args.trust)?;
    let kept = kept_checkpoints(&args)?;
    let mut session = match &args.file {
        Some(_) => None,
        None => Some(Session::open(&root_pem, &args.broker)?),
    };
    let evidence = match (&args.file, session.as_mut()) {
        (Some(path), _) => read_export(path)?,
        (None, Some(s)) => s.fetch()?,
        (None, None) => return Err("--broker URL or --file FILE is needed".into()),
    };
    let mut bundle = evidence.bundle.clone();
    for path in &args.audit_certs {
        bundle.push_str(
            &String::from_utf8(read_file(path)?)
                .map_err(|_| format!("{} is not UTF-8", path.display()))?,
        );
    }
    let trust = trust_store(&root_pem, &bundle)?;
    // Against every kept checkpoint in one pass; a rejection names the files they came from.
    let rejected = |e: &dyn std::fmt::Display| match kept.as_slice() {
        [] => format!("audit log REJECTED: {e}"),
        files => format!(
            "audit log REJECTED against the checkpoint in {}: {e}",
            files
                .iter()
                .map(|(path, _)| path.display().to_string())
                .collect::<Vec<_>>()
                .join(" and ")
        ),
    };
    let notes: Vec<&str> = kept.iter().map(|(_, note)| note.as_str()).collect();
    let verified = verify::verify_log(&trust, &evidence.entries, &evidence.notes, &notes)
        .map_err(|e| rejected(&e))?;
    // With a broker, also check the proof it serves from each kept checkpoint.
    if let Some(s) = session.as_mut() {
        for old in &verified.kept {
            let proof = s.consistency(old.size, verified.checkpoint.size)?;
            verify::verify_extension(old, &verified.checkpoint, &proof)
                .map_err(|e| rejected(&e))?;
        }
    }
    report(&verified);
    for ((path, _), old) in kept.iter().zip(&verified.kept) {
        say!(
            "it extends the checkpoint in {} ({} entries)",
            path.display(),
            old.size
        );
    }
    let state = args.save.as_ref().or(args.checkpoint.as_ref());
    if let Some(path) = &args.save {
        write_file(path, verified.note.as_bytes(), false)?;
    }
    if !args.follow {
        return Ok(());
    }
    follow(
        session,
        &root_pem,
        &args.broker,
        bundle,
        verified,
        state.map(PathBuf::as_path),
        &args.interval,
    )
}

/// The checkpoints the log must extend, with the files they came from: `--checkpoint`'s,
/// and the one a `--save` file already holds (the last run's record; a file not there yet
/// holds none).
fn kept_checkpoints(args: &VerifyArgs) -> Result<Vec<(PathBuf, String)>, CliError> {
    let text = |path: &PathBuf, bytes: Vec<u8>| {
        String::from_utf8(bytes).map_err(|_| format!("{} is not UTF-8", path.display()))
    };
    let mut kept = Vec::new();
    if let Some(path) = &args.checkpoint {
        kept.push((path.clone(), text(path, read_file(path)?)?));
    }
    if let Some(path) = args
        .save
        .as_ref()
        .filter(|p| args.checkpoint.as_ref() != Some(*p))
    {
        // Not there yet, or made empty beforehand (`touch`, `mktemp`): no record to extend.
        if path.exists() {
            let saved = text(path, read_file(path)?)?;
            if !saved.trim().is_empty() {
                kept.push((path.clone(), saved));
            }
        }
    }
    // A file that holds no checkpoint is a mistake to report, not a log to reject.
    for (path, note) in &kept {
        seb::audit::checkpoint::parse_note(note).map_err(|e| {
            format!(
                "{} holds no checkpoint ({e}): give the file a previous `seb audit verify \
                 --save` wrote; nothing was verified",
                path.display()
            )
        })?;
    }
    Ok(kept)
}

/// Polls the broker's checkpoint and checks each against the last verified one. A broker that
/// cannot be reached is retried (a monitor outlives restarts); a log that is not an extension
/// of the last verified checkpoint ends it with an error. A checkpoint under a key it does not
/// know yet (`seb rotate audit`) sends it to `/v1/trust` once for the new certificate, which
/// counts only if the root issued it for the audit purpose.
/// How many rounds in a row `--follow` accepts a newer signed checkpoint without its
/// consistency proof before it raises the alarm.
const UNPROVEN_LIMIT: u32 = 3;

fn follow(
    mut session: Option<Session>,
    root_pem: &[u8],
    broker: &BrokerArgs,
    mut bundle: String,
    mut last: Verified,
    state: Option<&Path>,
    interval: &str,
) -> CliResult {
    let interval: Duration =
        seb::duration::parse(interval).map_err(|e| format!("--interval: {e}"))?;
    let mut trust = trust_store(root_pem, &bundle)?;
    let mut unproven = 0u32;
    loop {
        std::thread::sleep(interval);
        let live = match session.take() {
            Some(s) => Ok(s),
            None => Session::open(root_pem, broker),
        };
        let mut live = match live {
            Ok(s) => s,
            Err(e) => {
                tell!("cannot reach the broker ({e}); retrying");
                continue;
            }
        };
        let note = match live.get_any("/v1/audit/checkpoint") {
            Ok(r) if r.status == 200 => r.text,
            // The broker itself found that its stored log no longer extends the checkpoint
            // it signed: what the monitor is for, not an outage.
            Ok(r) if r.body["error"]["code"] == "audit_log_diverged" => {
                return Err(format!(
                    "audit log REJECTED: the broker reports that its log was rewritten: {}",
                    r.body["error"]["message"].as_str().unwrap_or_default()
                )
                .into());
            }
            Ok(r) => {
                tell!(
                    "cannot fetch the checkpoint (the broker answered {}: {}); retrying",
                    r.status,
                    r.text
                );
                continue;
            }
            Err(e) => {
                tell!("cannot fetch the checkpoint ({e}); retrying");
                continue;
            }
        };
        let new = match verify::open_checkpoint(&trust, &note) {
            Ok(cp) => cp,
            Err(_) => {
                let published = match live.get("/v1/trust") {
                    Ok(r) => r.text,
                    Err(e) => {
                        tell!("cannot fetch the broker's certificates ({e}); retrying");
                        continue;
                    }
                };
                bundle.push_str(&published);
                trust = trust_store(root_pem, &bundle)?;
                verify::open_checkpoint(&trust, &note)
                    .map_err(|e| format!("audit log REJECTED: {e}"))?
            }
        };
        if new.size == last.checkpoint.size && new.root == last.checkpoint.root {
            session = Some(live);
            continue;
        }
        if new.size == last.checkpoint.size {
            return Err(format!(
                "audit log REJECTED: two checkpoints of size {} with different roots (split view)",
                new.size
            )
            .into());
        }
        let proof = if new.size > last.checkpoint.size && last.checkpoint.size > 0 {
            match live.consistency(last.checkpoint.size, new.size) {
                Ok(p) => p,
                Err(e) => {
                    // A broker that signs newer checkpoints but will not prove they extend
                    // the verified one is what a rewritten history looks like: retried a few
                    // times (a passing fault), then an alarm, not a wait for ever.
                    unproven += 1;
                    if unproven >= UNPROVEN_LIMIT {
                        return Err(format!(
                            "audit log REJECTED: the broker serves a signed checkpoint of {} \
                             entries but gave no proof that it extends the {} verified, {unproven} \
                             times in a row ({e})",
                            new.size, last.checkpoint.size
                        )
                        .into());
                    }
                    tell!("cannot fetch the consistency proof ({e}); retrying");
                    continue;
                }
            }
        } else {
            Vec::new()
        };
        unproven = 0;
        verify::verify_extension(&last.checkpoint, &new, &proof)
            .map_err(|e| format!("audit log REJECTED: {e}"))?;
        say!("audit log extends to {} entries (consistent)", new.size);
        if let Some(path) = state {
            write_file(path, note.as_bytes(), false)?;
        }
        last = Verified {
            checkpoint: new,
            note,
            entries: last.entries,
            checkpoints: last.checkpoints + 1,
            kept: Vec::new(),
        };
        session = Some(live);
    }
}

fn export(args: ExportArgs) -> CliResult {
    let root_pem = read_file(&args.trust)?;
    let mut session = Session::open(&root_pem, &args.broker)?;
    let evidence = session.fetch()?;
    // Checked before it is written: an export is evidence.
    let trust = trust_store(&root_pem, &evidence.bundle)?;
    let verified = verify::verify_log(&trust, &evidence.entries, &evidence.notes, &[])
        .map_err(|e| format!("audit log REJECTED: {e}"))?;
    let mut out = Vec::new();
    let mut line = |l: &Line| -> CliResult {
        serde_json::to_writer(&mut out, l)?;
        out.write_all(b"\n")?;
        Ok(())
    };
    line(&Line::Trust {
        pem: evidence.bundle.clone(),
    })?;
    for e in &evidence.entries {
        line(&Line::Entry {
            index: e.index,
            leaf_hash: e
                .leaf_hash
                .map(|h| base64url::encode(&h))
                .unwrap_or_default(),
            entry: serde_json::from_slice(&e.bytes)?,
        })?;
    }
    for note in &evidence.notes {
        line(&Line::Checkpoint { note: note.clone() })?;
    }
    if args.out.as_os_str() == "-" {
        // The JSON lines alone on stdout (for a pipe into a SIEM); the verdict on stderr. An
        // export that could not be delivered whole is a failure.
        let mut stdout = std::io::stdout().lock();
        match stdout.write_all(&out).and_then(|()| stdout.flush()) {
            Ok(()) => {}
            // The reader took what it wanted and left (`| head`): quiet, as every command is
            // on a broken pipe, but not a success, since the export was not delivered whole.
            Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => std::process::exit(1),
            Err(e) => return Err(format!("cannot write the export to standard output: {e}").into()),
        }
        tell!("{}", verified_text(&verified));
        return Ok(());
    }
    write_file(&args.out, &out, false)?;
    report(&verified);
    say!("exported to {}", args.out.display());
    Ok(())
}
