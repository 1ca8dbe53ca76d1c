//! `seb exec` (the reference executor), `seb receipt verify`, and `seb demo-write` (the demo's
//! sample action program).

use std::path::PathBuf;
use std::sync::Arc;

use seb::cert::Certificate;
use seb::executor::{Executor, ExecutorConfig};

use super::{read_file, CliError, CliResult};

/// Runs the executor until SIGTERM or SIGINT. `config` is the global `--config`, which for
/// `seb exec` names the executor's own configuration (executor.toml), not a broker's.
pub fn exec(config: Option<&std::path::Path>) -> CliResult {
    let path = config.ok_or("seb exec needs --config executor.toml")?;
    let config = ExecutorConfig::load(path)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .thread_name("seb-exec")
        .build()?;
    runtime.block_on(async move {
        let (listener, local) = seb::executor::bind(&config).await?;
        let executor = Arc::new(Executor::new(config).await?);
        let (tx, rx) = tokio::sync::watch::channel(false);
        let signalled = super::serve::shutdown_signal();
        tokio::spawn(async move {
            signalled.await;
            let _ = tx.send(true);
        });
        say!("seb executor listening on https://{local}");
        seb::executor::serve(executor, listener, rx).await?;
        say!("seb executor stopped");
        Ok::<(), CliError>(())
    })
}

/// `seb receipt ...`.
#[derive(Debug, clap::Subcommand)]
pub enum ReceiptCommand {
    /// Verify an executor's receipt: its signature under the executor certificate, which must
    /// chain to the root and carry the executor role. Prints the receipt body.
    Verify(ReceiptVerifyArgs),
}

/// Options of `seb receipt verify`.
#[derive(Debug, clap::Args)]
pub struct ReceiptVerifyArgs {
    /// The receipt (JSON: `{"body":…,"signature":…}`, or an executor's whole answer holding
    /// `receipt`); `-` reads stdin.
    #[arg(long)]
    receipt: PathBuf,
    /// The executor's certificate (PEM, leaf first).
    #[arg(long)]
    cert: PathBuf,
    /// The root certificate (PEM).
    #[arg(long)]
    trust: PathBuf,
}

/// Verifies a receipt; exit 0 verified, 1 refused.
pub fn receipt(command: ReceiptCommand) -> CliResult {
    let ReceiptCommand::Verify(args) = command;
    let text = if args.receipt.as_os_str() == "-" {
        let mut buf = Vec::new();
        let limit = super::MAX_INPUT_FILE;
        let mut stdin = std::io::Read::take(std::io::stdin(), limit + 1);
        std::io::Read::read_to_end(&mut stdin, &mut buf)?;
        if buf.len() as u64 > limit {
            return Err("the receipt on standard input is larger than 16 MiB".into());
        }
        buf
    } else {
        read_file(&args.receipt)?
    };
    let value = seb::json::parse_strict(&text).map_err(|e| format!("receipt: {e}"))?;
    let inner = value
        .get("receipt")
        .cloned()
        .unwrap_or_else(|| value.clone());
    let receipt = seb::receipt::parse(&serde_json::to_vec(&inner)?)?;
    let chain = Certificate::parse_pem_chain(&read_file(&args.cert)?)?;
    // Only the self-signed certificates of --trust are roots (an intermediate beside the root
    // must not pass for the root that issues executors' certificates); its other CA
    // certificates may be on the path, as the chain --cert carries may be.
    let trust = seb::verify::TrustStore::from_pem(&read_file(&args.trust)?)
        .map_err(|e| format!("{}: --trust: {e}", e.code()))?;
    let roots = trust.roots().to_vec();
    let (leaf, presented) = chain.split_first().ok_or("no certificate in --cert")?;
    let mut rest = presented.to_vec();
    rest.extend(
        trust
            .others()
            .iter()
            .filter(|c| !presented.contains(c))
            .cloned(),
    );
    let rest = rest.as_slice();
    // Evidence outlives certificates: the path is judged at the time the receipt says the
    // action finished (not necessarily now). Revocation is the CRL's to say.
    let finished = std::time::UNIX_EPOCH
        .checked_add(std::time::Duration::from_millis(
            receipt.body.finished_at_ms,
        ))
        .ok_or("malformed_receipt: finished_at_ms is out of range")?;
    let validated = seb::chain::validate(leaf, rest, &roots, finished).map_err(|e| {
        format!(
            "untrusted_executor: the executor certificate does not chain to the root: {}: {e}",
            e.code()
        )
    })?;
    if let Some(cert) = validated
        .path()
        .iter()
        .find(|c| finished < c.not_before() || finished > c.not_after())
    {
        return Err(format!(
            "certificate_not_valid_then: {} was not valid at the receipt's finished_at_ms ({})",
            cert.subject_string(),
            receipt.body.finished_at_ms
        )
        .into());
    }
    if leaf.seb_role() != Some(seb::grants::RoleKind::Executor) {
        return Err("not_an_executor: the certificate's role is not executor".into());
    }
    // The role counts only if every intermediate above the executor may issue executors, as
    // the broker requires (a role minted by an intermediate that may not counts for nothing).
    if let Err((_, reason)) = seb::authz::delegated_role(&validated.chain_view()) {
        return Err(format!("role_not_delegated: {reason}").into());
    }
    seb::receipt::verify(&receipt, leaf).map_err(|e| format!("{}: {e}", e.code()))?;
    // The executor's whole answer: what it shows next to the receipt must be what the receipt
    // says, or the signature vouches for something else than the reader sees.
    let notes = if value.get("receipt").is_some() {
        answer_matches(&value, &receipt.body)?
    } else {
        Vec::new()
    };
    say!("{}", serde_json::to_string_pretty(&receipt.body)?);
    for note in notes {
        tell!("{note}");
    }
    tell!("receipt verified: signed by {}", leaf.subject_string());
    Ok(())
}

/// Checks an executor's answer against its receipt: `stdout` and `stderr` (the first 64 KiB of
/// each, as text) against the digests, and `succeeded` against the exit status. Output that
/// does not hash to its digest is refused (`output_mismatch`), also when the executor cut it:
/// an edited answer could pass for a cut one.
fn answer_matches(
    answer: &serde_json::Value,
    body: &seb::receipt::ReceiptBody,
) -> Result<Vec<String>, super::CliError> {
    let mut notes = Vec::new();
    for (name, digest) in [
        ("stdout", &body.stdout_sha256),
        ("stderr", &body.stderr_sha256),
    ] {
        let Some(shown) = answer.get(name) else {
            continue;
        };
        let shown = shown
            .as_str()
            .ok_or(format!("output_mismatch: the answer's {name} is not text"))?;
        if seb::receipt::output_digest(shown.as_bytes()) != *digest {
            // Refused even when the executor may have cut it (64 KiB) or it was not UTF-8:
            // whoever edits an answer can make it look so, and then nothing is verified.
            return Err(format!(
                "output_mismatch: the answer's {name} does not hash to the receipt's \
                 {name}_sha256: it was altered, or the executor showed only part of it (the \
                 first 64 KiB) or not its exact bytes (not UTF-8). Verify the receipt alone \
                 (its `receipt` member) to check the signature without the output"
            )
            .into());
        }
        notes.push(format!(
            "{name}: the answer's text is what the receipt's digest covers"
        ));
    }
    if let Some(succeeded) = answer.get("succeeded") {
        // A command succeeded when it exited 0, an HTTP action when it answered 2xx; neither
        // after a timeout. The receipt does not say which kind of action it was.
        // An HTTP status is 100 to 599, so exit code 0 was a command's.
        let command = !body.timed_out && body.exit_code == 0;
        let http = (100..600)
            .contains(&body.exit_code)
            .then_some(!body.timed_out && (200..300).contains(&body.exit_code));
        if !succeeded
            .as_bool()
            .is_some_and(|s| s == command || Some(s) == http)
        {
            return Err(format!(
                "output_mismatch: the answer says succeeded = {succeeded}, but the receipt has \
                 exit_code {} and timed_out {}",
                body.exit_code, body.timed_out
            )
            .into());
        }
    }
    Ok(notes)
}

/// Options of `seb demo-write`.
#[derive(Debug, clap::Args)]
pub struct DemoWriteArgs {
    /// The directory files are written in.
    #[arg(long)]
    dir: PathBuf,
    /// A plain file name (no separators, no control or formatting characters, not `.` or
    /// `..`).
    name: String,
    /// The text written into it.
    text: String,
}

/// The demo's action: writes TEXT into DIR/NAME (NAME a plain file name).
pub fn demo_write(args: DemoWriteArgs) -> CliResult {
    let name = &args.name;
    let plain = !name.is_empty()
        && name != "."
        && name != ".."
        && !name.contains('/')
        && !name.contains('\\')
        && !name
            .chars()
            .any(|c| c.is_control() || seb::text::hides_text(c))
        && !name.starts_with('-')
        && name.len() <= 128;
    if !plain {
        return Err(format!("refused file name {name:?}: a plain file name only").into());
    }
    let path = args.dir.join(name);
    // No following a link someone left in the directory.
    if std::fs::symlink_metadata(&path).is_ok_and(|m| !m.is_file()) {
        return Err(format!("{} exists and is not a regular file", path.display()).into());
    }
    std::fs::write(&path, args.text.as_bytes())
        .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    say!("wrote {} bytes to {}", args.text.len(), path.display());
    Ok(())
}
