//! `seb rotate token|tls|audit` (a new key generation in the device and its certificate) and
//! `seb cert renew` (a new certificate for the same key and grants).
//!
//! Key generations are recorded in `<state_dir>/keys.toml` (`seb::ca::generations`): the
//! `[keys]` labels name generation 1, a rotation makes `LABEL.N+1`. No key is ever deleted
//! from the device and no label is reused.

use std::path::PathBuf;
use std::time::SystemTime;

use der::Decode;
use seb::audit::entry::{CertRef, Entry, EntryKind};
use seb::backend::{KeyAlgorithm, P384Signer};
use seb::base64url;
use seb::ca::generations::KeyKind;
use seb::ca::{self, CertKind, LeafRequest};
use seb::cert::{Certificate, Purpose, SEB_GRANTS_OID, SEB_ROLE_OID};
use seb::config::Config;
use seb::grants::{GrantSet, Role};
use seb::serial::Serial;
use seb::store::IssuedCertificate;

use super::inventory::time_text;
use super::{open_backend, open_store, write_file, CliError, CliResult};

/// Options of `seb rotate`.
#[derive(Debug, clap::Args)]
pub struct RotateArgs {
    /// Which key: token, tls or audit. (The root is rotated by a ceremony: docs/OPERATIONS.md.)
    kind: String,
}

/// Options of `seb cert renew`.
#[derive(Debug, clap::Args)]
pub struct RenewArgs {
    /// Serial of the certificate to renew (as `seb cert list` prints it).
    #[arg(long)]
    serial: String,
    /// Validity of the new certificate, e.g. "30d" (default: as long as the old one's).
    #[arg(long)]
    ttl: Option<String>,
    /// Where to write the new certificate (PEM, with its issuing intermediates); standard
    /// output when left out.
    #[arg(long)]
    out: Option<PathBuf>,
    /// Replace --out if it exists.
    #[arg(long)]
    force: bool,
}

/// Generates the next generation of a broker key in the device and certifies it.
pub fn rotate(config: &Config, args: RotateArgs) -> CliResult {
    let kind = KeyKind::parse(&args.kind).ok_or_else(|| {
        format!(
            "cannot rotate {:?}: one of token, tls, audit (the root is rotated by a ceremony, \
             docs/OPERATIONS.md \"Year two\")",
            args.kind
        )
    })?;
    let trust = config.trust_dir();
    let root = trust
        .root()
        .map_err(|e| format!("{e}; run `seb init` first"))?;
    let configured = config.keys.configured_label(kind);
    let mut generations = config.key_generations()?;
    let old = generations.current(kind, configured);
    let next = generations.next(kind, configured);
    let current_path = trust.service_path(kind);
    let old_pem = std::fs::read(&current_path).map_err(|e| {
        format!(
            "cannot read {}: {e}; run `seb init` first",
            current_path.display()
        )
    })?;

    // Everything the new certificate needs is checked before a key is generated for it.
    if kind == KeyKind::Tls {
        seb::ca::check_tls_names(&config.ca.tls_names).map_err(|e| {
            format!(
                "[ca] tls_names {:?}: {e}; fix it before rotating (nothing changed)",
                config.ca.tls_names
            )
        })?;
    }
    let store = open_store(config)?;
    let backend = open_backend(config, Some(1))?;
    if backend.contains(&next.label)? {
        return Err(format!(
            "the device already holds a key labelled {:?} (a rotation that failed half-way?); \
             nothing changed. Remove that key with the HSM's tools if it is unused, or set \
             the generation in {} by hand",
            next.label,
            seb::ca::generations::KeyGenerations::path(&config.state_dir).display()
        )
        .into());
    }
    let algorithm = match kind {
        KeyKind::Token => config.keys.token_algorithm,
        KeyKind::Tls | KeyKind::Audit => KeyAlgorithm::EcP384,
    };
    let public = backend.generate(&next.label, algorithm)?;
    let spki = spki::SubjectPublicKeyInfoOwned::from_der(&public.to_spki_der()?)?;
    let (cn, cert_kind) = match kind {
        KeyKind::Token => ("token signer", CertKind::Signing(Purpose::Token)),
        KeyKind::Audit => ("audit signer", CertKind::Signing(Purpose::Audit)),
        KeyKind::Tls => (
            "broker",
            CertKind::TlsServer {
                names: config.ca.tls_names.clone(),
            },
        ),
    };
    let subject = ca::parse_subject(&format!("CN={} {cn},O=seb", config.broker_id))?;
    let signer = P384Signer::new(backend.as_ref(), &config.keys.root)?;
    let now = SystemTime::now();
    let cert = ca::issue_service(
        &signer,
        &root,
        spki,
        &subject,
        cert_kind,
        config.ca.service_validity,
        now,
    )?;
    let record = IssuedCertificate::of(&cert, kind.as_str(), config.keys.root.clone())?;
    store.record_issued(&record)?;
    let pem = record.pem;

    // Re-keying is a change auditors must see, as revocations and freezes are. Logged before
    // the switch (no rotation without its entry), while the old audit key still signs the
    // checkpoints that cover it.
    let mut entry = Entry::new(EntryKind::KeyRotated, seb::time::unix_millis(now));
    entry.cert = Some(CertRef {
        thumbprint: base64url::encode(&cert.thumbprint_sha256()?),
        serial: cert.serial_hex(),
        subject: cert.subject_string(),
    });
    entry.detail = Some(format!(
        "{} key generation {} ({:?}) replaces generation {} ({:?})",
        kind.as_str(),
        next.generation,
        next.label,
        old.generation,
        old.label
    ));
    if let Err(e) = store.append_audit(&entry) {
        return Err(format!(
            "the key_rotated audit entry could not be written ({e}); nothing was switched, \
             but the new key {:?} is in the device: remove it with the HSM's tools before \
             rotating again",
            next.label
        )
        .into());
    }

    // The old certificate first (kept, and served while its tokens may live), then the new
    // one, then the generation record. A running broker checks that key and certificate
    // belong together before it switches, so it never acts on a half-done rotation.
    let retired_name = format!("{}.{}.pem", kind.as_str(), old.generation);
    let half_done = |e: &dyn std::fmt::Display| {
        format!(
            "{e}; the key_rotated entry for generation {} is in the audit log, but the switch \
             did not finish (see docs/OPERATIONS.md, \"Re-key\": a rotation that fails half-way)",
            next.generation
        )
    };
    write_file(&trust.retired_dir().join(&retired_name), &old_pem, false)
        .map_err(|e| half_done(&e))?;
    write_file(&current_path, pem.as_bytes(), false).map_err(|e| half_done(&e))?;
    generations.rotate(kind, configured, next.clone(), retired_name, now);
    generations
        .save(&config.state_dir)
        .map_err(|e| half_done(&e))?;

    say!(
        "rotated {}: generation {} is {:?} in the device, certificate serial {} until {}",
        kind.as_str(),
        next.generation,
        next.label,
        cert.serial_hex(),
        time_text(cert.not_after())
    );
    say!(
        "  generation {} ({:?}) is retired; its key stays in the device",
        old.generation,
        old.label
    );
    match kind {
        KeyKind::Token => say!(
            "  the old token certificate stays in /v1/trust, and its tokens keep redeeming, \
             until {}",
            time_text(now + seb::broker::retired_token_window(config))
        ),
        KeyKind::Tls => say!("  a running broker serves the new certificate to new connections"),
        KeyKind::Audit => {}
    }
    say!(
        "  a running broker switches within {} s; no restart needed",
        seb::broker::RELOAD_INTERVAL.as_secs()
    );
    Ok(())
}

/// Re-issues a stored agent, approver or executor certificate for the same key, subject, role
/// and grants, signed by the same issuer.
pub fn renew(config: &Config, args: RenewArgs) -> CliResult {
    if let Some(out) = &args.out {
        super::cert::refuse_overwrite(out, args.force)?;
        super::check_writable(out)?;
    }
    let serial = Serial::parse(&args.serial)?;
    let store = open_store(config)?;
    let record = store.issued_certificate(&serial)?.ok_or_else(|| {
        format!(
            "this broker has no record of issuing serial {} (see `seb cert list`)",
            serial
        )
    })?;
    if !["agent", "approver", "executor"].contains(&record.role.as_str()) {
        return Err(format!(
            "serial {} is {}: renew agent, approver and executor certificates here; broker \
             keys with `seb rotate`, intermediates with a new `seb cert issue-ca`",
            serial,
            if record.role == "intermediate" {
                "an intermediate CA's certificate".to_owned()
            } else {
                format!("a {} certificate", record.role)
            }
        )
        .into());
    }
    if let Some(r) = store.revocation(&serial)? {
        return Err(format!(
            "serial {} was revoked ({}); a revoked certificate is not renewed: issue a new one \
             from a fresh CSR",
            serial,
            r.reason.as_str()
        )
        .into());
    }
    let old = Certificate::parse(record.pem.as_bytes())?;
    let role = old
        .extension(SEB_ROLE_OID)
        .map(|e| Role::from_der(e.extn_value.as_bytes()))
        .transpose()?
        .ok_or("the stored certificate has no sebRole extension")?;
    let grants = old
        .extension(SEB_GRANTS_OID)
        .map(|e| GrantSet::from_der(e.extn_value.as_bytes()))
        .transpose()?;
    let ttl = match &args.ttl {
        Some(t) => seb::duration::parse(t)?,
        None => old
            .not_after()
            .duration_since(old.not_before())
            .map_err(|_| "the stored certificate's validity is inverted")?
            .saturating_sub(ca::BACKDATE),
    };
    let now = SystemTime::now();
    let is_intermediate = record.issuer_label != config.keys.root;
    let issuer = is_intermediate.then_some(record.issuer_label.as_str());
    // As for `cert issue`: nothing is signed under an intermediate that has expired or been
    // revoked.
    let (_, issuer_chain) = super::cert::issuer_chain(
        config,
        issuer,
        now,
        "nothing was renewed: a renewal keeps its issuer; issue the holder a certificate under \
         a valid one (`seb cert issue --issuer NAME`, or without --issuer for the root)",
    )?;
    let backend = open_backend(config, Some(1))?;
    let signer =
        P384Signer::new(backend.as_ref(), &record.issuer_label).map_err(|e| -> CliError {
            format!("cannot sign with the issuer {:?}: {e}", record.issuer_label).into()
        })?;
    // An executor that serves HTTPS keeps its names (and with them serverAuth).
    let tls_names = served_names(&old)?;
    let cert = ca::issue_leaf_serving(
        &signer,
        &issuer_chain,
        LeafRequest {
            public_key: old.tbs().subject_public_key_info().clone(),
            subject: old.tbs().subject().clone(),
            role,
            grants,
            ttl,
        },
        &tls_names,
        config.ca.max_leaf_validity,
        now,
    )?;
    let record = IssuedCertificate::of(&cert, record.role, record.issuer_label.clone())?;
    store.record_issued(&record)?;
    let pem = record.pem;
    let mut out = pem;
    for c in &issuer_chain[..issuer_chain.len().saturating_sub(1)] {
        out.push_str(&c.to_pem_string()?);
    }
    // Without --out the certificate is the standard output, and what was done is said on
    // standard error (so `seb cert renew --serial S > new.pem` gives a clean file).
    let report = |line: std::fmt::Arguments<'_>| match &args.out {
        Some(_) => super::say(line),
        None => {
            use std::io::Write;
            let _ = writeln!(std::io::stderr(), "{line}");
        }
    };
    let written = match &args.out {
        Some(path) => {
            super::write_issued(path, out.as_bytes(), &cert.serial_hex())?;
            path.display().to_string()
        }
        None => {
            use std::io::Write;
            std::io::stdout()
                .lock()
                .write_all(out.as_bytes())
                .map_err(|e| {
                    let serial = cert.serial_hex();
                    format!(
                        "cannot write the certificate to standard output: {e}; certificate \
                         serial {serial} was issued and recorded: revoke it (`seb cert revoke \
                         --serial {serial}`) before issuing another"
                    )
                })?;
            "standard output".to_owned()
        }
    };
    report(format_args!(
        "renewed {} certificate {} for {}: new serial {} until {}, written to {}",
        record.role,
        serial,
        cert.subject_string(),
        cert.serial_hex(),
        time_text(cert.not_after()),
        written
    ));
    if old.not_after() > SystemTime::now() {
        report(format_args!(
            "  the old certificate stays valid until {}; once the new one is deployed: \
             seb cert revoke --serial {} --reason superseded",
            time_text(old.not_after()),
            serial
        ));
    } else {
        report(format_args!(
            "  the old certificate expired at {}",
            time_text(old.not_after())
        ));
    }
    Ok(())
}

/// The DNS names and IP addresses a certificate serves HTTPS under (its SANs), as
/// `cert issue --tls-name` took them.
pub(super) fn served_names(cert: &Certificate) -> Result<Vec<String>, CliError> {
    use x509_cert::ext::pkix::name::GeneralName;
    use x509_cert::ext::pkix::SubjectAltName;
    let Some(san) = cert.standard_extension::<SubjectAltName>()? else {
        return Ok(Vec::new());
    };
    let mut names = Vec::new();
    for name in san.0 {
        match name {
            GeneralName::DnsName(dns) => names.push(dns.to_string()),
            GeneralName::IpAddress(ip) => {
                let bytes = ip.as_bytes();
                let addr = match bytes.len() {
                    4 => <[u8; 4]>::try_from(bytes).map(std::net::IpAddr::from).ok(),
                    16 => <[u8; 16]>::try_from(bytes).map(std::net::IpAddr::from).ok(),
                    _ => None,
                };
                names.push(
                    addr.ok_or("the stored certificate has a malformed IP address SAN")?
                        .to_string(),
                );
            }
            // The subject again, which seb puts on leaves that serve no names.
            GeneralName::DirectoryName(name) if &name == cert.tbs().subject() => {}
            _ => {
                return Err("the stored certificate has a subjectAltName seb does not issue".into())
            }
        }
    }
    Ok(names)
}
