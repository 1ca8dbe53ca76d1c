//! `seb token verify`: the offline verifier on the command line, for executors and auditors.
//!
//! Needs no configuration, no HSM and no network: a trust bundle, a token, and what the token
//! must authorize (operation, resource, params, and the agent certificate when one was
//! presented). Prints the verified claims as JSON (exit 0), or `error: <code>: <message>`
//! (exit 1); without `--cert` stderr warns that the binding was not checked. Without the
//! action (or with `--signature-only`) it checks the token's own validity alone and says so: a
//! JSON object with `"checked": "signature_only"` on stdout, a warning on stderr, exit 3.

use std::path::{Path, PathBuf};
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
/// With the action (`--operation`, `--resource`, `--params`, all three) everything is checked,
/// the binding too when `--cert` is given; without `--cert` the binding is not checked and
/// stderr says so (`--skip-binding` says it on purpose: no agent presented a certificate).
/// Without the action only the token's own validity is checked, and the exit status is 3, not
/// 0 (`--signature-only` asks for that explicitly).
#[derive(Debug, clap::Args)]
pub struct VerifyArgs {
    /// The pinned trust: the PEM bundle `GET /v1/trust` serves (its self-signed certificates
    /// are the roots, the rest may be used on the path), or a broker's trust directory, or the
    /// root.pem in one (the token certificate and intermediates beside it are then read as the
    /// path to that root, never as roots).
    #[arg(long)]
    trust: PathBuf,
    /// File holding the compact token (surrounding whitespace is ignored); `-` reads stdin.
    #[arg(long)]
    token: PathBuf,
    /// The operation about to be performed; must equal the token's.
    #[arg(long, requires_all = ["resource", "params"])]
    operation: Option<String>,
    /// The resource about to be acted on; must equal the token's.
    #[arg(long, requires_all = ["operation", "params"])]
    resource: Option<String>,
    /// The parameters about to be used, as JSON (parsed strictly, as the broker parses them);
    /// their JCS SHA-384 digest must equal the token's params_digest.
    #[arg(long, requires_all = ["operation", "resource"])]
    params: Option<String>,
    /// The certificate (PEM) of the agent presenting the token; the token must be bound to it.
    #[arg(long, requires = "operation")]
    cert: Option<PathBuf>,
    /// No agent presented a certificate to this executor: do not check the token's binding
    /// (and do not warn that it was not checked).
    #[arg(long, conflicts_with = "cert", requires = "operation")]
    skip_binding: bool,
    /// Check only the token's signature, signing certificate, lifetime and epoch, not the
    /// action or binding (what leaving out the action does). Exit status 3 on success, so
    /// that `verify && act` never acts.
    #[arg(
        long,
        conflicts_with_all = ["operation", "resource", "params", "cert", "skip_binding", "issuer"]
    )]
    signature_only: bool,
    /// PEM bundle of approver certificates: needed for tokens issued after approvals, whose
    /// approvers' signatures, roles, groups and chains are checked against it.
    #[arg(long, conflicts_with = "signature_only", requires = "operation")]
    approvers: Option<PathBuf>,
    /// The broker id the token must name as issuer.
    #[arg(long, requires = "operation")]
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
    let trust = read_trust(&args.trust)?;
    let token = read_token(&args.token)?;
    let now = match args.now {
        Some(secs) => SystemTime::UNIX_EPOCH + Duration::from_secs(secs),
        None => SystemTime::now(),
    };
    let refused = |e: VerifyError| -> CliError { format!("{}: {e}", e.code()).into() };
    let (Some(operation), Some(resource), Some(params)) =
        (args.operation, args.resource, args.params)
    else {
        // clap admits the three together or none of them: without the action, only the
        // token's own validity can be checked, and that is said loudly (exit 3).
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
        (None, false) => Binding::NotPresented,
        (Some(_), true) => {
            return Err("invalid_input: give at most one of --cert and --skip-binding".into())
        }
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
    if args.cert.is_none() && !args.skip_binding {
        tell!(
            "warning: agent_binding not checked: no --cert was given. An executor that was \
             presented an agent's certificate passes it with --cert; --skip-binding says that \
             none was"
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// The trust bundle `--trust` names: a PEM bundle (what `GET /v1/trust` serves), or a
/// broker's trust directory, or a root certificate inside one. When the file holds roots
/// only, the certificates beside it in a trust directory's layout (the token certificate and
/// the intermediates) are read as candidates for the path to those roots, never as roots
/// themselves: every path must still end at a root the caller named.
fn read_trust(path: &Path) -> Result<TrustStore, CliError> {
    let file = if path.is_dir() {
        path.join("root.pem")
    } else {
        path.to_owned()
    };
    let bundle = read_file(&file).map_err(|e| format!("invalid_input: --trust: {e}"))?;
    let invalid = |e: VerifyError| -> CliError { format!("{}: {e}", e.code()).into() };
    let store = TrustStore::from_pem(&bundle).map_err(invalid)?;
    if !store.others().is_empty() {
        return Ok(store);
    }
    // `root.pem` named from inside its directory has the empty path as its parent.
    let dir = match file.parent() {
        Some(d) if d.as_os_str().is_empty() => Path::new("."),
        Some(d) => d,
        None => return Ok(store),
    };
    if !dir.join("token.pem").is_file() {
        return Ok(store);
    }
    // What the broker serves from that directory, less the retired token certificates
    // (`retired/` keeps every replaced key's, while `GET /v1/trust` keeps one only while a
    // token it signed may be live): the token, audit and TLS certificates and intermediates.
    let published = Certificate::parse_pem_chain(
        seb::ca::trust_dir::TrustDir::new(dir)
            .bundle_pem()
            .as_bytes(),
    )
    .unwrap_or_default();
    tell!(
        "note: {} holds only the root; the certificates beside it in {} were read as the path \
         to it (pin the bundle GET /v1/trust serves to verify elsewhere)",
        file.display(),
        dir.display()
    );
    TrustStore::pinned_with(store.roots().to_vec(), published).map_err(invalid)
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
