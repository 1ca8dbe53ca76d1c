//! `seb token verify`: the offline verifier on the command line, for executors and auditors.
//!
//! Needs no configuration, no HSM and no network: a trust bundle, a token, and what the token
//! must authorize (operation, resource, params, and the agent certificate or an explicit
//! `--skip-binding`). Prints the verified claims as JSON (exit 0), or `error: <code>: <message>`
//! (exit 1). `--signature-only` checks the token's own validity alone and says so: a JSON
//! object with `"checked": "signature_only"` on stdout, a warning on stderr, exit 3.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, SystemTime};

use seb::cert::Certificate;
use seb::verify::{
    self, Action, Binding, Expectations, Params, TokenRules, TrustStore, VerifyError,
};

use super::{read_file, CliError};

/// `seb token ...`
#[derive(Debug, clap::Subcommand)]
pub enum TokenCommand {
    /// Verify an execution token offline against a trust bundle.
    Verify(VerifyArgs),
}

/// Options of `seb token verify`.
///
/// Either the action (`--operation`, `--resource`, `--params`) and the binding (`--cert` or
/// `--skip-binding`) are all given, or `--signature-only` is: leaving them out is a usage
/// error, never a check of less.
#[derive(Debug, clap::Args)]
#[command(group = clap::ArgGroup::new("binding")
    .args(["cert", "skip_binding", "signature_only"])
    .required(true))]
pub struct VerifyArgs {
    /// PEM bundle to trust (what `GET /v1/trust` serves): its self-signed certificates are the
    /// roots, the rest (intermediates, token certificate) may be used on the path.
    #[arg(long)]
    trust: PathBuf,
    /// File holding the compact token (surrounding whitespace is ignored); `-` reads stdin.
    #[arg(long)]
    token: PathBuf,
    /// The operation about to be performed; must equal the token's.
    #[arg(long, required_unless_present = "signature_only")]
    operation: Option<String>,
    /// The resource about to be acted on; must equal the token's.
    #[arg(long, required_unless_present = "signature_only")]
    resource: Option<String>,
    /// The parameters about to be used, as JSON (parsed strictly, as the broker parses them);
    /// their JCS SHA-384 digest must equal the token's params_digest.
    #[arg(long, required_unless_present = "signature_only")]
    params: Option<String>,
    /// The certificate (PEM) of the agent presenting the token; the token must be bound to it.
    #[arg(long)]
    cert: Option<PathBuf>,
    /// No agent presented a certificate to this executor: do not check the token's binding.
    #[arg(long, conflicts_with = "cert")]
    skip_binding: bool,
    /// Check only the token's signature, signing certificate, lifetime and epoch, not the
    /// action or binding. Exit status 3 on success, so that `verify && act` never acts.
    #[arg(
        long,
        conflicts_with_all = ["operation", "resource", "params", "cert", "skip_binding", "issuer"]
    )]
    signature_only: bool,
    /// PEM bundle of approver certificates: needed for tokens issued after approvals, whose
    /// approvers' signatures, roles, groups and chains are checked against it.
    #[arg(long, conflicts_with = "signature_only")]
    approvers: Option<PathBuf>,
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

/// Exit status of `seb token verify --signature-only` when the token's own checks passed:
/// not 0, because nothing about the action was checked.
pub const SIGNATURE_ONLY_EXIT: u8 = 3;

/// What `--signature-only` leaves unchecked, as printed.
const NOT_CHECKED: [&str; 4] = ["operation", "resource", "params", "agent_binding"];

/// Dispatches `seb token ...`; the exit status on success.
pub fn run(command: TokenCommand) -> Result<ExitCode, CliError> {
    match command {
        TokenCommand::Verify(args) => verify(args),
    }
}

fn verify(args: VerifyArgs) -> Result<ExitCode, CliError> {
    let input =
        |what: &str, e: CliError| -> CliError { format!("invalid_input: {what}: {e}").into() };
    let trust = TrustStore::from_pem(&read_file(&args.trust).map_err(|e| input("--trust", e))?)
        .map_err(|e| format!("{}: {e}", e.code()))?;
    let token = read_token(&args.token)?;
    let now = match args.now {
        Some(secs) => SystemTime::UNIX_EPOCH + Duration::from_secs(secs),
        None => SystemTime::now(),
    };
    let refused = |e: VerifyError| -> CliError { format!("{}: {e}", e.code()).into() };
    let (Some(operation), Some(resource), Some(params)) =
        (args.operation, args.resource, args.params)
    else {
        // clap admits a missing action only with --signature-only.
        return signature_only(&token, &trust, now, args.min_epoch);
    };
    let params =
        Params::parse(params.as_bytes()).map_err(|e| format!("{}: --params: {e}", e.code()))?;
    let binding = match (&args.cert, args.skip_binding) {
        (Some(path), false) => Binding::agent(
            presented_leaf(&read_file(path).map_err(|e| input("--cert", e))?)
                .map_err(|e| input("--cert", e.into()))?,
        ),
        (None, true) => Binding::NotPresented,
        _ => return Err("invalid_input: give exactly one of --cert and --skip-binding".into()),
    };
    let mut expect = Expectations::new(now, Action::new(operation, resource, params), binding)
        .min_epoch(args.min_epoch);
    if let Some(issuer) = args.issuer {
        expect = expect.issuer(issuer);
    }
    if let Some(path) = &args.approvers {
        expect = expect.approvers(
            Certificate::parse_pem_chain(&read_file(path).map_err(|e| input("--approvers", e))?)
                .map_err(|e| input("--approvers", e.into()))?,
        );
    }
    let verified = verify::verify_token(&token, &trust, &expect).map_err(refused)?;
    say!("{}", serde_json::to_string_pretty(&verified.claims)?);
    Ok(ExitCode::SUCCESS)
}

/// `--signature-only`: the token's own checks, said loudly to be only those.
fn signature_only(
    token: &str,
    trust: &TrustStore,
    now: SystemTime,
    min_epoch: u64,
) -> Result<ExitCode, CliError> {
    let rules = TokenRules {
        min_epoch,
        ..TokenRules::at(now)
    };
    let checked = verify::verify_signature_only(token, trust, &rules)
        .map_err(|e| format!("{}: {e}", e.code()))?;
    let out = serde_json::json!({
        "checked": "signature_only",
        "not_checked": NOT_CHECKED,
        "claims": checked.claims,
    });
    say!("{}", serde_json::to_string_pretty(&out)?);
    tell!(
        "warning: signature_only: the signature, signing certificate, lifetime and epoch verified; \
         the operation, resource, params and agent binding were NOT checked (exit {SIGNATURE_ONLY_EXIT}): do not act on this token"
    );
    Ok(ExitCode::from(SIGNATURE_ONLY_EXIT))
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

/// The agent's certificate as the agent presents it: a DER certificate, or a PEM file that may
/// hold the whole chain, leaf first (what `seb cert issue --out` writes).
fn presented_leaf(bytes: &[u8]) -> Result<Certificate, seb::cert::CertError> {
    let text = bytes.trim_ascii_start();
    if text.starts_with(b"-----BEGIN") {
        Certificate::parse_pem_chain(text)?
            .into_iter()
            .next()
            .ok_or(seb::cert::CertError::Empty)
    } else {
        Certificate::parse(bytes)
    }
}
