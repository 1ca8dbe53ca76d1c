//! `seb init` and `seb keys`: generating the broker's keys inside the device and writing the
//! trust material that everyone else pins.

use std::path::PathBuf;
use std::time::SystemTime;

use seb::backend::{KeyAlgorithm, KeyBackend, P384Signer};
use seb::ca::generations::KeyKind;
use seb::ca::trust_dir::read_certificate;
use seb::ca::{self, CertKind};
use seb::cert::Purpose;
use seb::config::Config;
use spki::SubjectPublicKeyInfoOwned;

use super::{open_backend, write_file, CliResult};

/// Options of `seb init`.
#[derive(Debug, clap::Args)]
pub struct InitArgs {
    /// Also seal the HSM user PIN in the [attestation] TPM (`seb seal-pin`).
    #[arg(long)]
    seal_pin: bool,
}

/// Generates root, token, audit and TLS keys in the device and certifies them.
pub fn run(config: &Config, args: InitArgs) -> CliResult {
    let backend = open_backend(config, Some(1))?;
    let labels = &config.keys;
    let all = [
        (&labels.root, KeyAlgorithm::EcP384),
        (&labels.token, labels.token_algorithm),
        (&labels.audit, KeyAlgorithm::EcP384),
        (&labels.tls, KeyAlgorithm::EcP384),
    ];
    let mut present = Vec::new();
    for (label, _) in &all {
        if backend.contains(label)? {
            present.push(label.as_str());
        }
    }
    if !present.is_empty() {
        return Err(format!(
            "the token is already initialised (keys {present:?} exist); init changed nothing. \
             `seb check` shows the state of this deployment (provision.sh --executor-port runs \
             init itself). Only to start over: create a new token and run init again"
        )
        .into());
    }
    let trust = config.trust_dir();
    if trust.is_initialised() {
        return Err(format!(
            "{} already holds a root certificate; init changed nothing",
            trust.path().display()
        )
        .into());
    }

    // Every name the certificates will carry, before any key exists: a configuration mistake
    // (a comma in broker_id, a root subject without CN) must not leave keys on the token and
    // no certificates, which init could not resume.
    let root_subject = ca::parse_new_subject(&config.ca.root_subject)
        .map_err(|e| format!("[ca] root_subject {:?}: {e}", config.ca.root_subject))?;
    ca::check_tls_names(&config.ca.tls_names)
        .map_err(|e| format!("[ca] tls_names {:?}: {e}", config.ca.tls_names))?;
    for cn in ["token signer", "audit signer", "broker"] {
        ca::parse_new_subject(&format!("CN={} {cn},O=seb", config.broker_id)).map_err(|e| {
            format!(
                "broker_id {:?} does not fit a subject name: {e}",
                config.broker_id
            )
        })?;
    }
    // The state directory, private to the broker's user when init makes it (one that exists
    // keeps the mode its operator gave it; `seb check` warns when others may read it).
    if !config.state_dir.exists() {
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&config.state_dir)
            .map_err(|e| format!("cannot create {}: {e}", config.state_dir.display()))?;
    }
    // The store's schema (the shared PostgreSQL database, or seb.db), before any key exists:
    // a database that cannot be reached stops init with nothing generated.
    drop(super::create_store(config)?);
    for (label, algorithm) in &all {
        backend.generate(label, *algorithm)?;
    }
    let now = SystemTime::now();
    let root_signer = P384Signer::new(backend.as_ref(), &labels.root)?;
    let root = ca::self_signed_root(&root_signer, &root_subject, config.ca.root_validity, now)?;

    let service = |label: &str, cn: &str, kind: CertKind| -> Result<_, super::CliError> {
        let public = spki_of(backend.as_ref(), label)?;
        let subject = ca::parse_subject(&format!("CN={} {cn},O=seb", config.broker_id))?;
        Ok(ca::issue_service(
            &root_signer,
            &root,
            public,
            &subject,
            kind,
            config.ca.service_validity,
            now,
        )?)
    };
    let token = service(
        &labels.token,
        "token signer",
        CertKind::Signing(Purpose::Token),
    )?;
    let audit = service(
        &labels.audit,
        "audit signer",
        CertKind::Signing(Purpose::Audit),
    )?;
    let tls = service(
        &labels.tls,
        "broker",
        CertKind::TlsServer {
            names: config.ca.tls_names.clone(),
        },
    )?;

    // The root last: its presence is what marks the directory as initialised.
    for (path, cert) in [
        (trust.token_path(), &token),
        (trust.audit_path(), &audit),
        (trust.tls_path(), &tls),
        (trust.root_path(), &root),
    ] {
        write_file(&path, cert.to_pem_string()?.as_bytes(), false)?;
    }
    say!("initialised {}", backend.describe());
    for (label, cert) in [
        (&labels.root, &root),
        (&labels.token, &token),
        (&labels.audit, &audit),
        (&labels.tls, &tls),
    ] {
        say!(
            "  {label:<12} serial {}  {}",
            cert.serial_hex(),
            cert.subject_string()
        );
    }
    say!("trust material written to {}", trust.path().display());
    if config.attestation.is_some() {
        super::attest::enroll(config, backend.as_ref())?;
    }
    if args.seal_pin {
        drop(backend);
        super::seal::run(config, super::seal::SealArgs::default())?;
    }
    Ok(())
}

/// Lists the broker's keys (the current generation of each) with the protection the device
/// reports. Fails when `seb init` never ran for this state directory, when a key is missing
/// or when one is not bound to the device.
pub fn keys(config: &Config) -> CliResult {
    let backend = open_backend(config, Some(1))?;
    say!("{}", backend.describe());
    let mut all_bound = true;
    let mut mismatched = Vec::new();
    for key in broker_keys(config)? {
        let (what, label) = (key.what, &key.label);
        if !backend.contains(label)? {
            say!("  {label:<12} missing ({what})");
            all_bound = false;
            continue;
        }
        let public = backend.public_key(label)?;
        if key.matches_certificate(&public.to_spki_der()?)? == Some(false) {
            mismatched.push(seb::ca::trust_dir::key_mismatch(label, &key.certificate));
        }
        let p = backend.protection(label)?;
        all_bound &= p.is_hardware_bound();
        say!(
            "  {label:<12} {}  sensitive={} extractable={} always_sensitive={} never_extractable={} private_value_readable={}",
            public.algorithm(),
            p.sensitive,
            p.extractable,
            p.always_sensitive,
            p.never_extractable,
            p.private_value_readable
        );
    }
    let trust = config.trust_dir();
    if !trust.is_initialised() {
        return Err(format!(
            "{} holds no root certificate: this state directory was never initialised; run `seb init`",
            trust.path().display()
        )
        .into());
    }
    if !all_bound {
        return Err("not every broker key is present and bound to the device".into());
    }
    if !mismatched.is_empty() {
        return Err(mismatched.join("; ").into());
    }
    Ok(())
}

/// The broker's keys now: the root, and the current generation of the token, TLS and audit
/// keys (`seb rotate`), each with its device label and its certificate in the trust directory.
pub fn broker_keys(config: &Config) -> Result<Vec<BrokerKey>, super::CliError> {
    let generations = config.key_generations()?;
    let trust = config.trust_dir();
    let mut keys = vec![BrokerKey {
        what: "root",
        label: config.keys.root.clone(),
        certificate: trust.root_path(),
    }];
    for kind in KeyKind::ALL {
        keys.push(BrokerKey {
            what: kind.as_str(),
            label: generations
                .current(kind, config.keys.configured_label(kind))
                .label,
            certificate: trust.service_path(kind),
        });
    }
    Ok(keys)
}

/// One of the broker's own keys.
pub struct BrokerKey {
    /// "root", "token", "tls" or "audit".
    pub what: &'static str,
    /// Its label in the device.
    pub label: String,
    /// Its certificate in the trust directory.
    pub certificate: PathBuf,
}

impl BrokerKey {
    /// Whether `device` (the key's public half in the device, DER SubjectPublicKeyInfo) is
    /// the key the trust directory's certificate certifies; `None` when that certificate
    /// cannot be read (the directory was never initialised).
    pub fn matches_certificate(&self, device: &[u8]) -> Result<Option<bool>, super::CliError> {
        let Ok(cert) = read_certificate(&self.certificate) else {
            return Ok(None);
        };
        Ok(Some(cert.public_key_der()? == device))
    }
}

fn spki_of(
    backend: &dyn KeyBackend,
    label: &str,
) -> Result<SubjectPublicKeyInfoOwned, super::CliError> {
    use der::Decode;
    let der = backend.public_key(label)?.to_spki_der()?;
    Ok(SubjectPublicKeyInfoOwned::from_der(&der)?)
}
