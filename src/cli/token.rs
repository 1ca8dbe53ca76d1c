//! `seb token verify`: the offline verifier on the command line, for executors and auditors.
//!
//! Needs no configuration, no HSM and no network: a trust bundle, a token and, optionally,
//! what the token must authorize. Prints the verified claims as JSON (exit 0), or
//! `error: <code>: <message>` (exit 1).

use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use seb::cert::Certificate;
use seb::verify::{self, Expectations, Params, TrustStore};

use super::{read_file, CliError, CliResult};

/// `seb token ...`
#[derive(Debug, clap::Subcommand)]
pub enum TokenCommand {
    /// Verify an execution token offline against a trust bundle.
    Verify(VerifyArgs),
}

/// Options of `seb token verify`.
#[derive(Debug, clap::Args)]
pub struct VerifyArgs {
    /// PEM bundle to trust (what `GET /v1/trust` serves): its self-signed certificates are the
    /// roots, the rest (intermediates, token certificate) may be used on the path.
    #[arg(long)]
    trust: PathBuf,
    /// File holding the compact token (surrounding whitespace is ignored); `-` reads stdin.
    #[arg(long)]
    token: PathBuf,
    /// The operation about to be performed; must equal the token's.
    #[arg(long)]
    operation: Option<String>,
    /// The resource about to be acted on; must equal the token's.
    #[arg(long)]
    resource: Option<String>,
    /// The parameters about to be used, as JSON; their JCS SHA-384 digest must equal the
    /// token's params_digest.
    #[arg(long)]
    params: Option<String>,
    /// The certificate (PEM) of the agent presenting the token; the token must be bound to it.
    #[arg(long)]
    cert: Option<PathBuf>,
    /// The broker id the token must name as issuer.
    #[arg(long)]
    issuer: Option<String>,
    /// Refuse tokens of an older policy epoch.
    #[arg(long, default_value_t = 0)]
    min_epoch: u64,
    /// Verify at this time (Unix seconds) instead of the system clock.
    #[arg(long)]
    now: Option<u64>,
}

/// Dispatches `seb token ...`.
pub fn run(command: TokenCommand) -> CliResult {
    match command {
        TokenCommand::Verify(args) => verify(args),
    }
}

fn verify(args: VerifyArgs) -> CliResult {
    let input =
        |what: &str, e: CliError| -> CliError { format!("invalid_input: {what}: {e}").into() };
    let trust = TrustStore::from_pem(&read_file(&args.trust).map_err(|e| input("--trust", e))?)
        .map_err(|e| format!("{}: {e}", e.code()))?;
    let token = read_token(&args.token)?;
    let agent_certificate = match &args.cert {
        Some(path) => Some(
            Certificate::parse(&read_file(path).map_err(|e| input("--cert", e))?)
                .map_err(|e| input("--cert", e.into()))?,
        ),
        None => None,
    };
    let params = match &args.params {
        Some(text) => Some(
            Params::parse(text.as_bytes()).map_err(|e| format!("{}: --params: {e}", e.code()))?,
        ),
        None => None,
    };
    let now = match args.now {
        Some(secs) => SystemTime::UNIX_EPOCH + Duration::from_secs(secs),
        None => SystemTime::now(),
    };
    let expect = Expectations {
        min_epoch: args.min_epoch,
        issuer: args.issuer,
        operation: args.operation,
        resource: args.resource,
        params,
        agent_certificate,
        ..Expectations::at(now)
    };
    let verified =
        verify::verify_token(&token, &trust, &expect).map_err(|e| format!("{}: {e}", e.code()))?;
    say!("{}", serde_json::to_string_pretty(&verified.claims)?);
    Ok(())
}

fn read_token(path: &std::path::Path) -> Result<String, CliError> {
    use std::io::Read;
    // Read at most a little more than the verifier accepts, so a huge file is refused by
    // size without being held in memory.
    let limit = (seb::token::MAX_TOKEN_LEN + 64) as u64;
    let mut bytes = Vec::new();
    if path.as_os_str() == "-" {
        std::io::stdin()
            .take(limit + 1)
            .read_to_end(&mut bytes)
            .map_err(|e| format!("invalid_input: cannot read the token from stdin: {e}"))?;
    } else {
        std::fs::File::open(path)
            .and_then(|f| f.take(limit + 1).read_to_end(&mut bytes))
            .map_err(|e| format!("invalid_input: cannot read {}: {e}", path.display()))?;
    }
    if bytes.len() as u64 > limit {
        return Err(format!(
            "token_too_large: more than {} bytes",
            seb::token::MAX_TOKEN_LEN
        )
        .into());
    }
    let text = String::from_utf8(bytes).map_err(|_| "malformed_token: the token is not UTF-8")?;
    Ok(text.trim().to_owned())
}
