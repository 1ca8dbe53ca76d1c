//! `seb cert list` and `seb cert show`: what the CA issued, read back from the store's
//! `issued` records and from the certificates themselves (grants decoded back to the TOML the
//! security team wrote). Read-only: nothing here opens the HSM.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use seb::ca::crl::Revocation;
use seb::cert::{Certificate, SEB_GRANTS_OID, SEB_ROLE_OID};
use seb::config::Config;
use seb::grants::{GrantSet, Role};
use seb::serial::Serial;
use seb::store::IssuedCertificate;

use super::{open_store, read_file, CliError, CliResult};

/// Options of `seb cert list`.
#[derive(Debug, clap::Args)]
pub struct ListArgs {
    /// Only this role: agent, approver, executor, intermediate, cross-certificate or a broker
    /// key (token, tls, audit).
    #[arg(long)]
    role: Option<String>,
    /// Only certificates still valid that expire within this time, e.g. "30d".
    #[arg(long)]
    expiring: Option<String>,
    /// Only revoked certificates, and those under a revoked CA (status `issuer-revoked`).
    #[arg(long)]
    revoked: bool,
}

/// Options of `seb cert show`.
#[derive(Debug, clap::Args)]
pub struct ShowArgs {
    /// A certificate file (PEM chain, leaf first, or DER). Needs no --config; with one, the
    /// chain is also checked against this broker's root and the store's revocations.
    #[arg(conflicts_with = "serial", required_unless_present = "serial")]
    file: Option<PathBuf>,
    /// The serial of a certificate this broker issued (hex, any case, colons allowed).
    #[arg(long)]
    serial: Option<String>,
}

/// The status of one certificate at a given time.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Status {
    Valid,
    NotYetValid,
    Expired,
    Revoked(Revocation),
    /// A CA above it (named by subject) is revoked: the certificate authorizes nothing.
    IssuerRevoked(String),
}

impl Status {
    fn of(
        not_before: SystemTime,
        not_after: SystemTime,
        revocation: Option<Revocation>,
        now: SystemTime,
    ) -> Self {
        match revocation {
            Some(r) => Status::Revoked(r),
            None if now >= not_after => Status::Expired,
            None if now < not_before => Status::NotYetValid,
            None => Status::Valid,
        }
    }

    fn short(&self) -> String {
        match self {
            Status::Valid => "valid".into(),
            Status::NotYetValid => "not-yet-valid".into(),
            Status::Expired => "expired".into(),
            Status::Revoked(r) => format!("revoked:{}", r.reason.as_str()),
            Status::IssuerRevoked(_) => "issuer-revoked".into(),
        }
    }

    /// This status, or [`Status::IssuerRevoked`] when a CA above the certificate is revoked
    /// and the certificate is not revoked itself.
    fn under(self, revoked_issuer: Option<String>) -> Self {
        match (self, revoked_issuer) {
            (own @ Status::Revoked(_), _) => own,
            (_, Some(issuer)) => Status::IssuerRevoked(issuer),
            (status, None) => status,
        }
    }
}

/// The subject of the first revoked CA among `issuers` (the CAs above a certificate).
fn revoked_issuer(issuers: &[Certificate], revocations: &[Revocation]) -> Option<String> {
    issuers.iter().find_map(|ca| {
        let serial = Serial::of(ca).ok()?;
        revocations
            .iter()
            .any(|r| r.serial == serial)
            .then(|| ca.subject_string())
    })
}

/// The roles `seb cert list` records certificates under (`--role`).
const LISTED_ROLES: [&str; 8] = [
    "agent",
    "approver",
    "executor",
    "intermediate",
    "cross-certificate",
    "token",
    "tls",
    "audit",
];

/// `seb cert list`: one line per issued certificate.
pub fn list(config: &Config, args: ListArgs) -> CliResult {
    if let Some(role) = args.role.as_deref() {
        if !LISTED_ROLES.contains(&role) {
            return Err(format!(
                "unknown --role {role:?}: one of {}",
                LISTED_ROLES.join(", ")
            )
            .into());
        }
    }
    let within = args
        .expiring
        .as_deref()
        .map(seb::duration::parse)
        .transpose()
        .map_err(|e| format!("--expiring: {e}"))?;
    let store = open_store(config)?;
    let revocations = store.revocations()?;
    let now = SystemTime::now();
    // Per issuing CA: the revoked CA above its certificates, if any.
    let mut issuers_revoked: HashMap<String, Option<String>> = HashMap::new();
    let mut rows = Vec::new();
    let issued = store.issued_certificates()?;
    if args.revoked && args.role.is_none() && within.is_none() {
        // Revocations of serials this broker has no record of issuing (`cert revoke --issuer`
        // for an offline intermediate's certificate, `--unknown`, a retired service
        // certificate): in a CRL all the same.
        for r in &revocations {
            if issued.iter().all(|record| record.serial != r.serial) {
                rows.push([
                    r.serial.to_string(),
                    "(no issuance record)".to_owned(),
                    "-".to_owned(),
                    "-".to_owned(),
                    "-".to_owned(),
                    "-".to_owned(),
                    format!("revoked:{}", r.reason.as_str()),
                ]);
            }
        }
    }
    for record in issued {
        if args.role.as_deref().is_some_and(|r| r != record.role) {
            continue;
        }
        let cert = Certificate::parse(record.pem.as_bytes()).map_err(|e| {
            format!(
                "the store's record of serial {} does not parse: {e}",
                record.serial
            )
        })?;
        let revocation = revocations
            .iter()
            .find(|r| r.serial == record.serial)
            .cloned();
        let issuer_revoked = issuers_revoked
            .entry(record.issuer_label.clone())
            .or_insert_with(|| revoked_above(config, &record, &revocations, now))
            .clone();
        let status =
            Status::of(cert.not_before(), record.not_after, revocation, now).under(issuer_revoked);
        if args.revoked && !matches!(status, Status::Revoked(_) | Status::IssuerRevoked(_)) {
            continue;
        }
        if let Some(within) = within {
            if status != Status::Valid || record.not_after > now + within {
                continue;
            }
        }
        rows.push([
            record.serial.to_string(),
            record.subject.clone(),
            record.role.clone(),
            record.issuer_label.clone(),
            time_text(cert.not_before()),
            time_text(record.not_after),
            status.short(),
        ]);
    }
    let header = [
        "SERIAL",
        "SUBJECT",
        "ROLE",
        "ISSUER",
        "NOT_BEFORE",
        "NOT_AFTER",
        "STATUS",
    ]
    .map(str::to_owned);
    let mut widths = header.clone().map(|h| h.len());
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    for row in std::iter::once(&header).chain(rows.iter()) {
        let line: Vec<String> = row
            .iter()
            .zip(widths)
            .map(|(cell, w)| format!("{cell:<w$}"))
            .collect();
        say!("{}", line.join("  ").trim_end());
    }
    Ok(())
}

/// `seb cert show FILE` or `seb --config F cert show --serial S`.
pub fn show(config: Option<&Config>, args: ShowArgs) -> CliResult {
    let now = SystemTime::now();
    let store = config.map(open_store).transpose()?;
    let (source, chain) = match (&args.file, &args.serial) {
        (Some(file), _) => (file.display().to_string(), read_chain(file)?),
        (None, Some(serial)) => {
            let (config, store) = config
                .zip(store.as_ref())
                .ok_or("--serial needs --config FILE (the store is in its state_dir)")?;
            let serial = Serial::parse(serial)?;
            let Some(record) = store.issued_certificate(&serial)? else {
                return Err(match store.revocation(&serial)? {
                    Some(r) => format!(
                        "this broker has no record of issuing serial {serial}, but the serial \
                         is revoked ({} at {}) and in a CRL",
                        r.reason.as_str(),
                        time_text(r.revoked_at)
                    ),
                    None => format!(
                        "this broker has no record of issuing serial {serial} (see `seb cert list`)"
                    ),
                }
                .into());
            };
            let mut chain = vec![Certificate::parse(record.pem.as_bytes())?];
            chain.extend(issuer_chain_below_root(config, &record, now));
            ("the store".to_owned(), chain)
        }
        (None, None) => return Err("give a certificate FILE or --serial".into()),
    };
    let Some(leaf) = chain.first() else {
        return Err("no certificate found".into());
    };
    say!("certificate  {} (from {source})", leaf.subject_string());
    say!("serial       {}", leaf.serial_hex());
    say!("issuer       {}", leaf.tbs().issuer());
    match leaf.extension(SEB_ROLE_OID) {
        Some(ext) => match Role::from_der(ext.extn_value.as_bytes()) {
            Ok(role) => {
                say!("role         {}", role.kind);
                if !role.groups.is_empty() {
                    say!("groups       {}", role.groups.join(", "));
                }
            }
            Err(e) => say!("role         invalid sebRole extension: {e}"),
        },
        None => say!("role         none (a CA or a broker service certificate)"),
    }
    // What `cert issue --tls-name` gave an executor (or the broker's TLS certificate): needed
    // to issue its successor with the same names.
    match super::rotate::served_names(leaf) {
        Ok(names) if names.is_empty() => {}
        Ok(names) => say!("tls names    {}", names.join(", ")),
        Err(e) => say!("tls names    {e}"),
    }
    say!(
        "validity     {} to {} ({})",
        time_text(leaf.not_before()),
        time_text(leaf.not_after()),
        remaining(leaf.not_after(), now)
    );
    say!("chain        {}", chain_text(config, &chain, now));
    match &store {
        Some(store) => {
            let serial = Serial::of(leaf)?;
            let status = Status::of(
                leaf.not_before(),
                leaf.not_after(),
                store.revocation(&serial)?,
                now,
            )
            .under(revoked_issuer(&chain[1..], &store.revocations()?));
            let text = match status {
                Status::Revoked(r) => format!(
                    "revoked ({}) at {}",
                    r.reason.as_str(),
                    time_text(r.revoked_at)
                ),
                Status::IssuerRevoked(issuer) => format!(
                    "issuer-revoked: {issuer} above it is revoked, so it authorizes nothing"
                ),
                other => other.short(),
            };
            let known = if store.issued_certificate(&serial)?.is_some() {
                ""
            } else {
                "; this broker has no record of issuing it"
            };
            say!("status       {text}{known}");
        }
        None => say!(
            "status       {} (revocation not checked: give --config for the store)",
            Status::of(leaf.not_before(), leaf.not_after(), None, now).short()
        ),
    }
    match leaf.extension(SEB_GRANTS_OID) {
        Some(ext) => match GrantSet::from_der(ext.extn_value.as_bytes()) {
            Ok(grants) => {
                say!("grants (TOML, as `seb cert issue --grants` reads it):");
                say!("{}", grants.to_toml_string().trim_end());
            }
            Err(e) => say!("grants       invalid sebGrants extension: {e}"),
        },
        None => say!("grants       none"),
    }
    Ok(())
}

/// Reads a PEM chain (leaf first) or one DER certificate.
fn read_chain(path: &Path) -> Result<Vec<Certificate>, CliError> {
    let bytes = read_file(path)?;
    let parsed = if bytes.starts_with(b"-----") || bytes.windows(5).any(|w| w == b"-----") {
        Certificate::parse_pem_chain(&bytes)
    } else {
        Certificate::parse(&bytes).map(|c| vec![c])
    };
    parsed.map_err(|e| format!("{} is not a certificate: {e}", path.display()).into())
}

/// The subject of a revoked CA above `record` (between it and the root), if there is one: the
/// certificate then authorizes nothing, and `seb cert renew` refuses it.
pub(super) fn revoked_above(
    config: &Config,
    record: &IssuedCertificate,
    revocations: &[Revocation],
    now: SystemTime,
) -> Option<String> {
    revoked_issuer(&issuer_chain_below_root(config, record, now), revocations)
}

/// The intermediates that issued a stored certificate, from the trust directory.
fn issuer_chain_below_root(
    config: &Config,
    record: &IssuedCertificate,
    now: SystemTime,
) -> Vec<Certificate> {
    if record.issuer_label == config.keys.root {
        return Vec::new();
    }
    match config
        .trust_dir()
        .issuer_chain(Some(&record.issuer_label), now)
    {
        Ok(mut chain) => {
            chain.pop(); // the root
            chain
        }
        Err(_) => Vec::new(),
    }
}

/// The path from the leaf to the root: validated against this broker's root when there is a
/// configuration, otherwise the subjects as the file gives them.
fn chain_text(config: Option<&Config>, chain: &[Certificate], now: SystemTime) -> String {
    let subjects = |certs: &mut dyn Iterator<Item = &Certificate>| -> Vec<String> {
        certs.map(Certificate::subject_string).collect()
    };
    let Some(config) = config else {
        return format!(
            "{} (as given; not checked: no --config)",
            subjects(&mut chain.iter()).join(" <- ")
        );
    };
    let trust = config.trust_dir();
    let root = match trust.root() {
        Ok(root) => root,
        Err(e) => return format!("not checked: {e}"),
    };
    let mut intermediates: Vec<Certificate> = chain[1..].to_vec();
    intermediates.extend(trust.intermediates().unwrap_or_default());
    intermediates.truncate(seb::chain::MAX_INTERMEDIATES);
    let roots = [root];
    match seb::chain::validate(&chain[0], &intermediates, &roots, now) {
        Ok(path) => format!(
            "{} (chains to this broker's root)",
            subjects(&mut path.path().iter().copied()).join(" <- ")
        ),
        Err(e) => format!(
            "does NOT chain to this broker's root {}: {} ({e})",
            trust.root_path().display(),
            e.code()
        ),
    }
}

/// RFC 3339 UTC, to the second.
pub fn time_text(t: SystemTime) -> String {
    seb::time::rfc3339(t)
}

/// "expires in 29 days" / "expired 3 days ago".
fn remaining(not_after: SystemTime, now: SystemTime) -> String {
    let days = |d: Duration| d.as_secs() / 86_400;
    match not_after.duration_since(now) {
        Ok(left) => format!("expires in {} days", days(left)),
        Err(e) => format!("expired {} days ago", days(e.duration())),
    }
}
