//! `seb keygen`, `seb cert issue|revoke` and `seb crl`.

use std::path::PathBuf;
use std::time::SystemTime;

use seb::backend::P384Signer;
use seb::ca::crl::{self, Reason};
use seb::ca::{self, csr, LeafRequest};
use seb::cert::Certificate;
use seb::config::Config;
use seb::grants::{GrantSet, Role, RoleKind};
use seb::store::{IssuedCertificate, RevokeOutcome, Store};
use secrecy::ExposeSecret;

use super::{open_backend, open_store, read_file, write_file, CliResult};

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
}

/// `seb cert ...`
#[derive(Debug, clap::Subcommand)]
pub enum CertCommand {
    /// Issue a certificate for an agent, approver or executor from its CSR.
    Issue(IssueArgs),
    /// Revoke a certificate by serial number.
    Revoke(RevokeArgs),
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
    /// Where to write the certificate (PEM).
    #[arg(long)]
    out: PathBuf,
}

/// Options of `seb cert revoke`.
#[derive(Debug, clap::Args)]
pub struct RevokeArgs {
    /// Serial number in hex (colons allowed), as `seb cert issue` printed it.
    #[arg(long)]
    serial: String,
    /// unspecified, key-compromise, affiliation-changed, superseded, cessation-of-operation,
    /// privilege-withdrawn.
    #[arg(long, default_value = "unspecified")]
    reason: String,
}

/// Options of `seb crl`.
#[derive(Debug, clap::Args)]
pub struct CrlArgs {
    /// Where to write the CRL (PEM).
    #[arg(long)]
    out: PathBuf,
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
    let subject = ca::parse_subject(&args.subject)?;
    let made = csr::generate(subject)?;
    write_file(&args.out_key, made.key_pem.expose_secret().as_bytes(), true)?;
    write_file(&args.out_csr, made.csr_pem.as_bytes(), false)?;
    println!("key written to {} (keep it secret)", args.out_key.display());
    println!("CSR written to {}", args.out_csr.display());
    Ok(())
}

/// Dispatches `seb cert ...`.
pub fn run(config: &Config, command: CertCommand) -> CliResult {
    match command {
        CertCommand::Issue(a) => issue(config, a),
        CertCommand::Revoke(a) => revoke(config, a),
    }
}

fn issue(config: &Config, args: IssueArgs) -> CliResult {
    // Check everything the user gave us before touching the device.
    let request = read_file(&args.csr)?;
    let verified = csr::verify(&request)?;
    let ttl = seb::duration::parse(&args.ttl)?;
    let kind: RoleKind = args
        .role
        .parse()
        .map_err(|_| format!("unknown role {:?} (agent, approver or executor)", args.role))?;
    let grants = match &args.grants {
        Some(path) => {
            let text = String::from_utf8(read_file(path)?)
                .map_err(|_| format!("{} is not UTF-8", path.display()))?;
            Some(
                GrantSet::from_toml_str(&text)
                    .map_err(|e| format!("invalid grants file {}: {e}", path.display()))?,
            )
        }
        None => None,
    };
    let root = load_root(config)?;
    let store = open_store(config)?;
    let backend = open_backend(config, Some(1))?;
    let signer = P384Signer::new(backend.as_ref(), &config.keys.root)?;
    let cert = ca::issue_leaf(
        &signer,
        &root,
        LeafRequest {
            public_key: verified.public_key,
            subject: verified.subject,
            role: Role::new(kind, args.groups).map_err(|e| format!("invalid --group: {e}"))?,
            grants,
            ttl,
        },
        config.ca.max_leaf_validity,
        SystemTime::now(),
    )?;
    let pem = cert.to_pem_string()?;
    store.record_issued(&IssuedCertificate {
        serial: cert.tbs.serial_number.as_bytes().to_vec(),
        subject: cert.subject_string(),
        role: kind.to_string(),
        issuer_label: config.keys.root.clone(),
        not_after: cert.not_after(),
        pem: pem.clone(),
    })?;
    write_file(&args.out, pem.as_bytes(), false)?;
    println!(
        "issued {kind} certificate serial {} for {} until {}",
        cert.serial_hex(),
        cert.subject_string(),
        cert.tbs.validity.not_after
    );
    Ok(())
}

fn revoke(config: &Config, args: RevokeArgs) -> CliResult {
    let serial = parse_serial(&args.serial)?;
    let reason = Reason::parse(&args.reason).ok_or_else(|| {
        let names: Vec<&str> = Reason::ALL.iter().map(|(n, _)| *n).collect();
        format!(
            "unknown reason {:?} (one of {})",
            args.reason,
            names.join(", ")
        )
    })?;
    let store = open_store(config)?;
    match store.revoke(&serial, reason, SystemTime::now())? {
        RevokeOutcome::Revoked { known: true } => {
            println!("revoked {} ({})", hex::encode(&serial), reason.as_str())
        }
        RevokeOutcome::Revoked { known: false } => println!(
            "revoked {} ({}); note: this broker has no record of issuing it",
            hex::encode(&serial),
            reason.as_str()
        ),
        RevokeOutcome::AlreadyRevoked => {
            println!(
                "{} was already revoked; nothing changed",
                hex::encode(&serial)
            )
        }
    }
    Ok(())
}

/// Writes a fresh CRL signed by the root key.
pub fn crl(config: &Config, args: CrlArgs) -> CliResult {
    let root = load_root(config)?;
    let store = open_store(config)?;
    let revoked = store.revocations()?;
    let backend = open_backend(config, Some(1))?;
    let signer = P384Signer::new(backend.as_ref(), &config.keys.root)?;
    let number = store.next_crl_number()?;
    let list = crl::sign(
        &signer,
        &root,
        number,
        &revoked,
        SystemTime::now(),
        config.ca.crl_validity,
    )?;
    write_file(&args.out, crl::to_pem(&list)?.as_bytes(), false)?;
    println!(
        "CRL number {number} with {} revoked certificate(s) written to {}",
        revoked.len(),
        args.out.display()
    );
    Ok(())
}

fn load_root(config: &Config) -> Result<Certificate, super::CliError> {
    let path = config.trust_dir().join("root.pem");
    let bytes = read_file(&path).map_err(|e| format!("{e} (has `seb init` run?)"))?;
    Ok(Certificate::parse(&bytes)?)
}

fn parse_serial(text: &str) -> Result<Vec<u8>, super::CliError> {
    let cleaned: String = text.chars().filter(|c| *c != ':').collect();
    let bytes = hex::decode(&cleaned).map_err(|_| format!("serial {text:?} is not hex"))?;
    if bytes.is_empty() || bytes.len() > 20 {
        return Err(format!("serial {text:?} must be 1 to 20 bytes").into());
    }
    Ok(bytes)
}
