//! `seb keygen`, `seb cert issue|revoke` and `seb crl`.

use std::path::PathBuf;
use std::time::SystemTime;

use der::Decode;
use seb::backend::{KeyAlgorithm, P384Signer};
use seb::ca::{self, csr, IntermediateRequest, LeafRequest};
use seb::cert::Certificate;
use seb::config::Config;
use seb::grants::{GrantSet, IssuableRoles, Role, RoleKind};
use seb::serial::Serial;
use seb::store::IssuedCertificate;
use secrecy::ExposeSecret;

use super::{
    check_writable, open_backend, open_store, read_file, write_file, write_issued, CliResult,
};

mod revocation;

use revocation::revoke;
pub use revocation::{crl, CrlArgs, RevokeArgs};

/// Options of `seb keygen`.
#[derive(Debug, clap::Args)]
pub struct KeygenArgs {
    /// Where to write the private key (PKCS#8 PEM, mode 0600). Must not exist.
    #[arg(long)]
    out_key: PathBuf,
    /// Where to write the CSR (PEM).
    #[arg(long)]
    out_csr: PathBuf,
    /// Subject, e.g. "CN=deploy-bot,O=example".
    #[arg(long)]
    subject: String,
    /// Curve of the key: p384 (ECDSA with SHA-384, the default) or p256 (ECDSA with SHA-256).
    /// A P-256 agent's TLS handshake costs the broker less CPU (docs/PERFORMANCE.md).
    #[arg(long, default_value = "p384", value_parser = curve)]
    curve: KeyAlgorithm,
}

/// A requester's key curve: `p256` or `p384` (also spelled `ec-p256`, `P-256`, ...).
pub(crate) fn curve(text: &str) -> Result<KeyAlgorithm, String> {
    match text
        .to_ascii_lowercase()
        .trim_start_matches("ec-")
        .replace('-', "")
        .as_str()
    {
        "p256" | "prime256v1" | "secp256r1" => Ok(KeyAlgorithm::EcP256),
        "p384" | "secp384r1" => Ok(KeyAlgorithm::EcP384),
        _ => Err(format!("{text:?}: a curve, p256 or p384")),
    }
}

/// `seb cert ...`
#[derive(Debug, clap::Subcommand)]
pub enum CertCommand {
    /// Issue a certificate for an agent, approver or executor from its CSR.
    Issue(IssueArgs),
    /// Create an intermediate CA: its key in the HSM under --label, or (with --csr) an
    /// offline intermediate whose key is held elsewhere.
    IssueCa(IssueCaArgs),
    /// Revoke a certificate by serial number.
    Revoke(RevokeArgs),
    /// List the certificates this broker issued (serial, subject, role, issuer, validity,
    /// status).
    List(super::inventory::ListArgs),
    /// Show a certificate (a FILE, or --serial from the store): role, groups, chain,
    /// validity, revocation status and its grants as TOML.
    Show(super::inventory::ShowArgs),
    /// Re-issue a stored agent, approver or executor certificate for the same key, subject,
    /// role and grants.
    Renew(super::rotate::RenewArgs),
    /// Root rotation: have this broker's root certify a new root's key (a cross-certificate),
    /// so that relying parties that trust only this root accept chains ending in the new one.
    CrossSign(CrossSignArgs),
}

/// Options of `seb cert cross-sign`.
#[derive(Debug, clap::Args)]
pub struct CrossSignArgs {
    /// The new root's self-signed certificate (the `trust/root.pem` of the installation made
    /// for it).
    #[arg(long)]
    root: PathBuf,
    /// Validity, e.g. "730d"; never beyond either root.
    #[arg(long)]
    ttl: String,
    /// Where to write the cross-certificate (PEM).
    #[arg(long)]
    out: PathBuf,
}

/// Options of `seb cert issue`.
#[derive(Debug, clap::Args)]
pub struct IssueArgs {
    /// The requester's CSR (PEM or DER).
    #[arg(long)]
    csr: PathBuf,
    /// Grants file (TOML); required for agents.
    #[arg(long)]
    grants: Option<PathBuf>,
    /// Validity, e.g. "30d".
    #[arg(long)]
    ttl: String,
    /// agent, approver or executor.
    #[arg(long)]
    role: String,
    /// Approver group (repeatable).
    #[arg(long = "group")]
    groups: Vec<String>,
    /// Where to write the certificate (PEM), followed by the issuing intermediates up to but
    /// excluding the root (leaf first).
    #[arg(long)]
    out: PathBuf,
    /// Replace --out if it exists (without it, an existing file is never overwritten).
    #[arg(long)]
    force: bool,
    /// Sign with this intermediate (`seb cert issue-ca --label NAME`) instead of the root.
    #[arg(long)]
    issuer: Option<String>,
    /// Executors only: a DNS name or IP address the executor serves HTTPS under (`seb exec`);
    /// repeatable. Adds serverAuth and the subjectAltNames.
    #[arg(long = "tls-name")]
    tls_names: Vec<String>,
    /// Start of validity for a scheduled rotation, RFC 3339 UTC (e.g. 2027-01-01T00:00:00Z);
    /// at most a year ahead, never in the past. Default: now (less 60 s for clock skew).
    #[arg(long)]
    not_before: Option<String>,
}

/// Longest a certificate's start may be scheduled ahead.
const MAX_SCHEDULE_AHEAD: std::time::Duration = std::time::Duration::from_secs(366 * 86_400);

/// Parses `--not-before`: a UTC RFC 3339 time, not in the past, at most a year ahead.
fn parse_not_before(text: &str, now: SystemTime) -> Result<SystemTime, super::CliError> {
    let time = <der::DateTime as std::str::FromStr>::from_str(text)
        .map_err(|_| {
            format!("--not-before {text:?} is not an RFC 3339 UTC time like 2027-01-01T00:00:00Z")
        })?
        .to_system_time();
    if time < now {
        return Err(format!(
            "--not-before {text} is in the past; certificates are never backdated"
        )
        .into());
    }
    if time > now + MAX_SCHEDULE_AHEAD {
        return Err(format!("--not-before {text} is more than a year ahead").into());
    }
    Ok(time)
}

/// Options of `seb cert issue-ca`.
#[derive(Debug, clap::Args)]
pub struct IssueCaArgs {
    /// The intermediate's name: its key label in the HSM, and its certificate's file name
    /// under `<state_dir>/trust/intermediates/`. Lower-case letters, digits, `.`, `_`, `-`.
    #[arg(long)]
    label: String,
    /// Subject, e.g. "CN=payments-ops,O=example" (with --csr, defaults to the CSR's subject).
    #[arg(long)]
    subject: Option<String>,
    /// Grants file (TOML) bounding every certificate beneath this CA.
    #[arg(long)]
    grants: Option<PathBuf>,
    /// The roles of the certificates this CA may issue, comma-separated: agent, approver,
    /// executor. At most those of the CAs above it. An executor redeems (burns) any agent's
    /// token and an approver approves for its groups: delegate them deliberately.
    #[arg(long, default_value = "agent")]
    roles: String,
    /// pathLenConstraint: how many intermediate CAs may follow below this one.
    #[arg(long)]
    path_len: Option<u8>,
    /// Validity, e.g. "365d".
    #[arg(long)]
    ttl: String,
    /// Where to write the certificate (PEM), followed by its issuing intermediates up to but
    /// excluding the root.
    #[arg(long)]
    out: PathBuf,
    /// Replace --out if it exists (without it, an existing file is never overwritten).
    #[arg(long)]
    force: bool,
    /// Certify an offline intermediate from its CSR instead of generating a key in the HSM.
    #[arg(long)]
    csr: Option<PathBuf>,
    /// Parent intermediate (default: the root).
    #[arg(long)]
    issuer: Option<String>,
}

/// Refuses to replace an existing `out` unless `force` (a certificate in use is not lost to a
/// typo in `--out`).
pub(super) fn refuse_overwrite(out: &std::path::Path, force: bool) -> CliResult {
    if out.exists() && !force {
        return Err(format!(
            "{} exists; refusing to overwrite it (give --force to replace it)",
            out.display()
        )
        .into());
    }
    Ok(())
}

/// Generates a key pair and CSR for a requester.
pub fn keygen(args: KeygenArgs) -> CliResult {
    if args.out_key.exists() {
        return Err(format!(
            "{} exists; refusing to overwrite a key",
            args.out_key.display()
        )
        .into());
    }
    let subject = ca::parse_new_subject(&args.subject)?;
    let made = csr::generate(subject, args.curve)?;
    write_file(&args.out_key, made.key_pem.expose_secret().as_bytes(), true)?;
    write_file(&args.out_csr, made.csr_pem.as_bytes(), false)?;
    say!(
        "{} key written to {} (keep it secret)",
        args.curve,
        args.out_key.display()
    );
    say!("CSR written to {}", args.out_csr.display());
    Ok(())
}

/// Dispatches `seb cert ...`.
pub fn run(config: &Config, command: CertCommand) -> CliResult {
    match command {
        CertCommand::Issue(a) => issue(config, a),
        CertCommand::IssueCa(a) => issue_ca(config, a),
        CertCommand::Revoke(a) => revoke(config, a),
        CertCommand::List(a) => super::inventory::list(config, a),
        CertCommand::Show(a) => super::inventory::show(Some(config), a),
        CertCommand::Renew(a) => super::rotate::renew(config, a),
        CertCommand::CrossSign(a) => cross_sign(config, a),
    }
}

/// `seb cert cross-sign`: the root certifies a new root's key under the new root's name
/// (docs/OPERATIONS.md, "Rotate the root"). Recorded in the store, under the role
/// `cross-certificate`.
fn cross_sign(config: &Config, args: CrossSignArgs) -> CliResult {
    let ttl = seb::duration::parse(&args.ttl)?;
    if args.out.exists() {
        return Err(format!(
            "{} already exists; choose another --out",
            args.out.display()
        )
        .into());
    }
    check_writable(&args.out)?;
    let new_root = Certificate::parse(&read_file(&args.root)?)
        .map_err(|e| format!("{}: {e}", args.root.display()))?;
    let old_root = config.trust_dir().root()?;
    let now = SystemTime::now();
    let store = open_store(config)?;
    let backend = open_backend(config, Some(1))?;
    let signer = P384Signer::new(backend.as_ref(), &config.keys.root)?;
    let cert = ca::cross_certificate(&signer, &old_root, &new_root, ttl, now)?;
    let record = IssuedCertificate::of(&cert, "cross-certificate", config.keys.root.clone())?;
    store.record_issued(&record)?;
    write_issued(&args.out, record.pem.as_bytes(), &cert.serial_hex())?;
    say!(
        "issued cross-certificate serial {}: {} certified by {} until {}",
        cert.serial_hex(),
        cert.subject_string(),
        cert.issuer_string(),
        cert.tbs().validity().not_after
    );
    say!(
        "relying parties that trust only {} accept chains ending in the new root when this \
         certificate is sent or installed as an intermediate",
        old_root.subject_string()
    );
    Ok(())
}

fn issue(config: &Config, args: IssueArgs) -> CliResult {
    // Check everything the user gave us before touching the device.
    refuse_overwrite(&args.out, args.force)?;
    check_writable(&args.out)?;
    let request = read_file(&args.csr)?;
    let verified = csr::verify(&request)?;
    let ttl = seb::duration::parse(&args.ttl)?;
    let kind: RoleKind = args
        .role
        .parse()
        .map_err(|_| format!("unknown role {:?} (agent, approver or executor)", args.role))?;
    let grants = args.grants.as_deref().map(read_grants).transpose()?;
    let now = SystemTime::now();
    let start = match &args.not_before {
        Some(text) => parse_not_before(text, now)?,
        None => now,
    };
    let (issuer_label, issuer_chain) =
        issuer_chain(config, args.issuer.as_deref(), now, NOTHING_ISSUED)?;
    refuse_service_name(config, &verified.subject)?;
    if let Some(problem) = ca::attribute_problem(&verified.subject) {
        return Err(format!(
            "the CSR's subject {}: {problem}; nothing was issued",
            verified.subject
        )
        .into());
    }
    let store = open_store(config)?;
    let backend = open_backend(config, Some(1))?;
    let signer = issuer_signer(backend.as_ref(), &issuer_label, args.issuer.is_some())?;
    let cert = ca::issue_leaf_serving(
        &signer,
        &issuer_chain,
        LeafRequest {
            public_key: verified.public_key,
            subject: verified.subject,
            role: Role::new(kind, args.groups).map_err(|e| format!("invalid --group: {e}"))?,
            grants,
            ttl,
        },
        &args.tls_names,
        config.ca.max_leaf_validity,
        start,
    )?;
    let record = IssuedCertificate::of(&cert, kind.to_string(), issuer_label)?;
    store.record_issued(&record)?;
    let pem = record.pem;
    write_issued(
        &args.out,
        chain_pem(&pem, &issuer_chain)?.as_bytes(),
        &cert.serial_hex(),
    )?;
    say!(
        "issued {kind} certificate serial {} for {} until {}",
        cert.serial_hex(),
        cert.subject_string(),
        cert.tbs().validity().not_after
    );
    Ok(())
}

fn issue_ca(config: &Config, args: IssueCaArgs) -> CliResult {
    // Check everything before touching the device, so a refusal leaves no key behind.
    let name = &args.label;
    check_intermediate_name(config, name)?;
    let cert_path = config.trust_dir().intermediate_path(name)?;
    if cert_path.exists() {
        return Err(format!(
            "an intermediate named {name:?} already exists ({}); choose another --label",
            cert_path.display()
        )
        .into());
    }
    refuse_overwrite(&args.out, args.force)?;
    check_writable(&args.out)?;
    // The certificate also goes into the trust directory, before --out: that must be
    // writable too, or a key and a recorded intermediate would be left without their file.
    if let Some(dir) = cert_path.parent() {
        std::fs::create_dir_all(dir)
            .map_err(|e| format!("cannot create {}: {e}; nothing was issued", dir.display()))?;
    }
    check_writable(&cert_path)?;
    let ttl = seb::duration::parse(&args.ttl)?;
    let grants = args.grants.as_deref().map(read_grants).transpose()?;
    let roles: IssuableRoles = args
        .roles
        .parse()
        .map_err(|e| format!("invalid --roles {:?}: {e}", args.roles))?;
    let offline = args.csr.as_deref().map(read_csr).transpose()?;
    let subject = match (&args.subject, &offline) {
        (Some(s), _) => ca::parse_new_subject(s)?,
        (None, Some(csr)) => {
            if let Some(problem) = ca::attribute_problem(&csr.subject) {
                return Err(format!(
                    "the CSR's subject {}: {problem}; nothing was issued (or give --subject)",
                    csr.subject
                )
                .into());
            }
            csr.subject.clone()
        }
        (None, None) => return Err("--subject is required (unless --csr gives one)".into()),
    };
    let now = SystemTime::now();
    let (issuer_label, issuer_chain) =
        issuer_chain(config, args.issuer.as_deref(), now, NOTHING_ISSUED)?;
    ca::check_intermediate(
        &issuer_chain,
        grants.as_ref(),
        roles,
        args.path_len,
        ttl,
        now,
    )?;

    // The grants that bind what this CA's agents may be granted: its own, or, if it has none,
    // those of the CAs above it.
    let inherited: Vec<GrantSet> = issuer_chain
        .iter()
        .filter_map(|ca| ca.extension(seb::cert::SEB_GRANTS_OID))
        .filter_map(|ext| GrantSet::from_der(ext.extn_value.as_bytes()).ok())
        .collect();
    let binding: Vec<&GrantSet> = match &grants {
        Some(own) => vec![own],
        None => inherited.iter().collect(),
    };
    if let Some(rule) = binding
        .into_iter()
        .flat_map(|set| &set.grants)
        .find_map(|g| g.approval.as_ref())
        .filter(|_| roles.contains(RoleKind::Approver) && roles.contains(RoleKind::Agent))
    {
        // Allowed (a team that runs its own approvals), but M-of-N then means M certificates
        // this key signed, not M people.
        tell!(
            "warning: {name:?} may issue both agents and approvers, and the grants that bind \
             its agents require {} approvals from {:?}: whoever holds its key can issue an \
             agent and every one of \
             those approvers; issue approvers from the root where the rule must mean \
             {} people (docs/GRANTS.md, \"Approvers under an intermediate\")",
            rule.required,
            rule.group,
            rule.required
        );
    }
    let store = open_store(config)?;
    let backend = open_backend(config, Some(1))?;
    let signer = issuer_signer(backend.as_ref(), &issuer_label, args.issuer.is_some())?;
    if backend.contains(name)? {
        return Err(format!(
            "the HSM already holds a key labelled {name:?}; refusing to reuse or shadow it"
        )
        .into());
    }
    let (public_key, held) = match offline {
        Some(csr) => (csr.public_key, "offline (key held elsewhere)"),
        None => {
            let public = backend.generate(name, KeyAlgorithm::EcP384)?;
            let der = public.to_spki_der()?;
            (
                spki::SubjectPublicKeyInfoOwned::from_der(&der)?,
                "key generated in the HSM",
            )
        }
    };
    let cert = ca::issue_intermediate(
        &signer,
        &issuer_chain,
        IntermediateRequest {
            public_key,
            subject,
            grants,
            roles,
            path_len: args.path_len,
            ttl,
        },
        now,
    )
    .map_err(|e| -> super::CliError {
        if args.csr.is_none() {
            format!(
                "{e}; note: the key {name:?} was generated in the HSM before this failure, \
                 so that label is now taken"
            )
            .into()
        } else {
            e.into()
        }
    })?;
    let record = IssuedCertificate::of(&cert, "intermediate", issuer_label)?;
    store.record_issued(&record)?;
    let pem = record.pem;
    let serial = cert.serial_hex();
    write_issued(&cert_path, pem.as_bytes(), &serial)?;
    write_issued(
        &args.out,
        chain_pem(&pem, &issuer_chain)?.as_bytes(),
        &serial,
    )?;
    say!(
        "issued intermediate CA {name:?} serial {} for {} until {} ({held}); it may issue: {roles}",
        cert.serial_hex(),
        cert.subject_string(),
        cert.tbs().validity().not_after
    );
    Ok(())
}

/// How a refusal to issue ends.
const NOTHING_ISSUED: &str = "nothing was issued";

/// The issuing chain for `--issuer NAME` (validated against the root, so a tampered or
/// foreign file in the trust directory cannot become an issuer), or just the root; with the
/// issuing key's label. `refused` ends the message of a refusal: what was not done.
pub(super) fn issuer_chain(
    config: &Config,
    issuer: Option<&str>,
    now: SystemTime,
    refused: &str,
) -> Result<(String, Vec<Certificate>), super::CliError> {
    let chain = config
        .trust_dir()
        .issuer_chain(issuer, now)
        .map_err(not_initialised)?;
    // Nothing is issued under an intermediate that has expired or been revoked: its
    // certificates would be refused everywhere, or worse, accepted by a relying party that
    // does not check revocation.
    if issuer.is_some() {
        let store = open_store(config)?;
        for cert in &chain {
            let name = cert.subject_string();
            if now > cert.not_after() {
                return Err(format!(
                    "the issuing CA {name:?} expired at {}; {refused}",
                    cert.tbs().validity().not_after
                )
                .into());
            }
            if store.is_revoked(&Serial::of(cert)?)? {
                return Err(format!("the issuing CA {name:?} is revoked; {refused}").into());
            }
        }
    }
    let label = issuer.map_or_else(|| config.keys.root.clone(), str::to_owned);
    Ok((label, chain))
}

/// The signer for the issuing key, with a clear message for an offline intermediate.
fn issuer_signer<'b>(
    backend: &'b dyn seb::backend::KeyBackend,
    label: &str,
    is_intermediate: bool,
) -> Result<P384Signer<'b>, super::CliError> {
    match P384Signer::new(backend, label) {
        Ok(signer) => Ok(signer),
        Err(seb::backend::BackendError::KeyNotFound { .. }) if is_intermediate => Err(format!(
            "intermediate {label:?} has no key in this HSM that this user can see: either it is \
             an offline intermediate, whose certificates are signed where its key is held, or \
             its key object was created by another OS user (SoftHSM2 keeps each object in a file \
             only its creator can read: run seb as the broker's user, e.g. sudo -u seb)"
        )
        .into()),
        Err(e) => Err(e.into()),
    }
}

/// `pem` followed by the intermediates of `issuer_chain` (everything but the root).
fn chain_pem(pem: &str, issuer_chain: &[Certificate]) -> Result<String, super::CliError> {
    let mut out = pem.to_owned();
    let below_root = issuer_chain.len().saturating_sub(1);
    for cert in &issuer_chain[..below_root] {
        out.push_str(&cert.to_pem_string()?);
    }
    Ok(out)
}

/// A new intermediate's name must be valid and not one of the broker's own key labels.
fn check_intermediate_name(config: &Config, name: &str) -> CliResult {
    seb::ca::trust_dir::check_intermediate_name(name)?;
    let own = &config.keys;
    if [&own.root, &own.token, &own.audit, &own.tls]
        .iter()
        .any(|label| label.as_str() == name)
    {
        return Err(format!("{name:?} is one of the broker's own key labels").into());
    }
    Ok(())
}

fn read_grants(path: &std::path::Path) -> Result<GrantSet, super::CliError> {
    let text = String::from_utf8(read_file(path)?)
        .map_err(|_| format!("{} is not UTF-8", path.display()))?;
    Ok(GrantSet::from_toml_str(&text)
        .map_err(|e| format!("invalid grants file {}: {e}", path.display()))?)
}

fn read_csr(path: &std::path::Path) -> Result<csr::VerifiedCsr, super::CliError> {
    Ok(csr::verify(&read_file(path)?)?)
}

/// Refuses a subject that is, or has the common name of, one of the broker's own certificates
/// (token, TLS, audit, attestation key): a person reading a log or a certificate, or a
/// verifier matching `CN=<broker_id> broker`, would take its holder for the broker.
fn refuse_service_name(config: &Config, subject: &x509_cert::name::Name) -> CliResult {
    let trust = config.trust_dir();
    let common_name =
        |name: &x509_cert::name::Name| ca::common_name(name).map(|cn| cn.trim().to_owned());
    let asked = common_name(subject);
    let services = seb::ca::generations::KeyKind::ALL
        .into_iter()
        .map(|kind| (kind.as_str(), trust.service_path(kind)))
        .chain([("attestation key", trust.ak_path())]);
    for (what, path) in services {
        let current = seb::ca::trust_dir::read_certificate(&path);
        let clash = current.is_ok_and(|cert| {
            cert.tbs().subject() == subject
                || (asked.is_some() && common_name(cert.tbs().subject()) == asked)
        });
        if clash {
            return Err(format!(
                "the CSR's subject {subject} has the name of the broker's own {what} \
                 certificate; give the holder a name of its own; nothing was issued"
            )
            .into());
        }
    }
    Ok(())
}

/// A missing root means `seb init` has not run; say so.
fn not_initialised(e: seb::ca::TrustDirError) -> super::CliError {
    match e {
        seb::ca::TrustDirError::Read { .. } => format!("{e} (has `seb init` run?)").into(),
        other => other.into(),
    }
}
