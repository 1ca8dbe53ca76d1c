//! `seb cert revoke` and `seb crl`: revoking a certificate by serial (never the root or a
//! certificate the broker is using now), and writing the CRL of the root or of an intermediate.

use std::path::PathBuf;
use std::time::SystemTime;

use seb::ca::crl::{self, Reason};
use seb::cert::Certificate;
use seb::config::Config;
use seb::serial::Serial;
use seb::store::RevokeOutcome;

use super::super::{open_backend, open_store, write_file, CliResult};
use super::{issuer_chain, issuer_signer};

/// Options of `seb cert revoke`.
#[derive(Debug, clap::Args)]
pub struct RevokeArgs {
    /// Serial number in hex, as `seb cert issue` or `openssl x509 -serial` / `-text` prints
    /// it: either case, colons, leading zeros (a `00` sign byte) and `0x` are all accepted.
    #[arg(long)]
    serial: String,
    /// unspecified (no reasonCode in the CRL), key-compromise, ca-compromise (an intermediate),
    /// affiliation-changed, superseded, cessation-of-operation,
    /// privilege-withdrawn.
    #[arg(long, default_value = "unspecified")]
    reason: String,
    /// For a certificate this broker has no record of issuing (an offline intermediate's):
    /// the intermediate that issued it (`--label` of `cert issue-ca`), so that its CRL lists it.
    #[arg(long, conflicts_with = "unknown")]
    issuer: Option<String>,
    /// Revoke a serial this broker has no record of issuing, and whose issuer is unknown (it
    /// goes into the root's CRL). Without this or --issuer, an unknown serial (a typo) is
    /// refused.
    #[arg(long)]
    unknown: bool,
}

/// Options of `seb crl`.
#[derive(Debug, clap::Args)]
pub struct CrlArgs {
    /// Where to write the CRL (PEM); `-` for standard output.
    #[arg(long)]
    out: PathBuf,
    /// Sign the CRL of this intermediate (`--label` of `cert issue-ca`; its key must be in the
    /// HSM) instead of the root's: it lists the revoked certificates that intermediate issued,
    /// which is where `openssl verify -crl_check` looks for a certificate under it.
    #[arg(long)]
    issuer: Option<String>,
}

/// Refuses to revoke the root or a certificate the broker is using now (token, TLS, audit):
/// the broker would go on signing with a key its own CRL disowns. A compromised service key
/// is rotated first; the retired certificate may then be revoked.
fn refuse_own_certificate(config: &Config, serial: &Serial) -> CliResult {
    let trust = config.trust_dir();
    let is = |cert: &Certificate| Serial::of(cert).is_ok_and(|s| s == *serial);
    if trust.root().is_ok_and(|root| is(&root)) {
        return Err(format!(
            "{serial} is the root certificate: a root cannot be revoked on its own CRL. A \
             compromised root means a new `seb init` and new certificates for everyone \
             (docs/OPERATIONS.md §9); nothing was revoked"
        )
        .into());
    }
    for kind in seb::ca::generations::KeyKind::ALL {
        let current = seb::ca::trust_dir::read_certificate(&trust.service_path(kind));
        if current.is_ok_and(|cert| is(&cert)) {
            let name = kind.as_str();
            return Err(format!(
                "{serial} is the broker's current {name} certificate: revoked, the broker would \
                 go on using a key its own CRL disowns. Rotate first (`seb rotate {name}`; a \
                 running broker switches within 5 s), then revoke the retired certificate \
                 (trust/retired/; with `--unknown` if `cert list` does not show it); nothing \
                 was revoked"
            )
            .into());
        }
    }
    Ok(())
}

pub(super) fn revoke(config: &Config, args: RevokeArgs) -> CliResult {
    let serial = Serial::parse(&args.serial)?;
    // A CRL must be able to list it, or every CRL of its issuer would fail from now on: twenty
    // octets with the top bit set take a sign byte more as a DER INTEGER, past RFC 5280's 20.
    if x509_cert::serial_number::SerialNumber::<x509_cert::certificate::Rfc5280>::new(
        serial.as_bytes(),
    )
    .is_err()
    {
        return Err(format!(
            "serial {serial} needs more than 20 octets as a DER INTEGER (RFC 5280 §4.1.2.2): no \
             CRL can list it, and no certificate of a conforming CA carries it; nothing changed"
        )
        .into());
    }
    let reason = Reason::parse(&args.reason).ok_or_else(|| {
        let names: Vec<&str> = Reason::ALL.iter().map(|(n, _)| *n).collect();
        format!(
            "unknown reason {:?} (one of {})",
            args.reason,
            names.join(", ")
        )
    })?;
    refuse_own_certificate(config, &serial)?;
    let store = open_store(config)?;
    if store.is_revoked(&serial)? {
        // Nothing changes, but the attempt is an audit entry (`code: already_revoked`): the
        // issuer checks below would only stand in its way.
        store.revoke_issued_by(&serial, None, reason, SystemTime::now())?;
        say!("{}", already_revoked(store.as_ref(), &serial, reason));
        return Ok(());
    }
    let issuer = match (store.issued_certificate(&serial)?, &args.issuer) {
        (Some(record), Some(named)) if record.issuer_label != *named => {
            return Err(format!(
                "this broker's record says {serial} was issued by {:?}, not {named:?}; nothing \
                 was revoked. A serial is revoked for every issuer at once: if {named:?} (an \
                 offline intermediate) signed a certificate with this serial too, run this \
                 again without --issuer, which also revokes the one {:?} issued, or revoke \
                 {named:?} itself",
                record.issuer_label, record.issuer_label
            )
            .into())
        }
        (Some(_), _) => None,
        (None, Some(named)) => {
            // The issuer must be one this broker knows, so the revocation reaches a CRL.
            if *named != config.keys.root {
                config
                    .trust_dir()
                    .issuer_chain(Some(named), SystemTime::now())?;
            }
            Some(named.as_str())
        }
        (None, None) if args.unknown => None,
        (None, None) => {
            return Err(format!(
                "this broker has no record of issuing {serial}: give --issuer NAME (the \
                 intermediate that issued it, so that its CRL lists it) or --unknown; nothing \
                 was revoked (check the serial for a typo)"
            )
            .into())
        }
    };
    match store.revoke_issued_by(&serial, issuer, reason, SystemTime::now())? {
        RevokeOutcome::Revoked { known: true } => {
            say!("revoked {serial} ({})", reason.as_str())
        }
        RevokeOutcome::Revoked { known: false } => say!(
            "revoked {serial} ({}); note: this broker has no record of issuing it",
            reason.as_str()
        ),
        RevokeOutcome::AlreadyRevoked => {
            say!("{}", already_revoked(store.as_ref(), &serial, reason))
        }
    }
    Ok(())
}

/// What to say when `serial` was revoked before: when and why, and that the reason asked for
/// now (`asked`) does not replace it.
fn already_revoked(store: &dyn seb::store::Store, serial: &Serial, asked: Reason) -> String {
    let earlier = store
        .revocations()
        .ok()
        .and_then(|all| all.into_iter().find(|r| r.serial == *serial));
    match earlier {
        Some(r) if r.reason != asked => format!(
            "{serial} was already revoked ({}, at {}); nothing changed: a revocation's reason \
             is not changed afterwards, and the CRLs keep saying {}",
            r.reason.as_str(),
            super::super::inventory::time_text(r.revoked_at),
            r.reason.as_str()
        ),
        Some(r) => format!(
            "{serial} was already revoked ({}, at {}); nothing changed",
            r.reason.as_str(),
            super::super::inventory::time_text(r.revoked_at)
        ),
        None => format!("{serial} was already revoked; nothing changed"),
    }
}

/// Writes a fresh CRL signed by the root key, or by the intermediate `--issuer` names.
pub fn crl(config: &Config, args: CrlArgs) -> CliResult {
    let now = SystemTime::now();
    // A revoked or expired intermediate's own CRL would be refused with it: the root's CRL
    // lists the intermediate, and that cuts off everything below it.
    let (label, chain) = issuer_chain(
        config,
        args.issuer.as_deref(),
        now,
        "no CRL was written: relying parties refuse everything it issued through the root's \
         CRL (`seb crl`), which is the one to publish",
    )?;
    let issuer = chain.first().ok_or("no issuing certificate")?;
    let store = open_store(config)?;
    let revoked = store.revocations_issued_by(&label, args.issuer.is_none())?;
    let backend = open_backend(config, Some(1))?;
    let signer = issuer_signer(backend.as_ref(), &label, args.issuer.is_some())?;
    let number = store.next_crl_number()?;
    let list = crl::sign(
        &signer,
        issuer,
        number,
        &revoked,
        now,
        config.ca.crl_validity,
    )?;
    let pem = crl::to_pem(&list)?;
    let summary = format!(
        "CRL number {number} of {} with {} revoked certificate(s)",
        issuer.subject_string(),
        revoked.len()
    );
    if args.out.as_os_str() == "-" {
        // The PEM alone on stdout (for a pipe into a web server's CRL file); what was signed
        // on stderr.
        use std::io::Write;
        let mut stdout = std::io::stdout().lock();
        match stdout
            .write_all(pem.as_bytes())
            .and_then(|()| stdout.flush())
        {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => std::process::exit(1),
            Err(e) => return Err(format!("cannot write the CRL to standard output: {e}").into()),
        }
        tell!("{summary} written to standard output");
        return Ok(());
    }
    write_file(&args.out, pem.as_bytes(), false)?;
    say!("{summary} written to {}", args.out.display());
    Ok(())
}
