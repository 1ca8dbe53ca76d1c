//! `seb check`: is this deployment in order? Config, files and their modes, the HSM and every
//! key's protection, the state directory, certificates near expiry, the attestation policy.
//! One line per finding, each saying what to do; exit 0 only when there is no problem.
//! Read-only: it signs nothing and writes nothing.

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::SystemTime;

use seb::attest::policy::AttestPolicy;
use seb::ca::crl::Revocation;
use seb::ca::trust_dir::read_certificate;
use seb::config::{BackendConfig, Config, PinSource, PostgresConfig, StoreConfig};
use seb::store::IssuedCertificate;

use super::inventory::time_text;
use super::{open_backend, CliResult};

/// Findings so far.
#[derive(Default)]
struct Report {
    problems: usize,
    warnings: usize,
}

impl Report {
    fn ok(&mut self, what: &str) {
        say!("ok       {what}");
    }

    fn warn(&mut self, what: &str) {
        self.warnings += 1;
        say!("warning  {what}");
    }

    fn problem(&mut self, what: &str) {
        self.problems += 1;
        say!("problem  {what}");
    }
}

/// How long before the root expires `seb check` warns: its rotation is a ceremony.
const ROOT_EXPIRY_WARNING: std::time::Duration = std::time::Duration::from_secs(365 * 86_400);

/// Runs every check on the configuration read from `config_file`; fails when any problem was
/// found (warnings alone pass).
pub fn run(config: &Config, config_file: Option<&Path>) -> CliResult {
    let mut r = Report::default();
    r.ok("configuration parses and validates");
    let now = SystemTime::now();

    // Files and their modes.
    if let Some(path) = config_file {
        check_mode(
            &mut r,
            "configuration file",
            path,
            0o022,
            "writable by others than its owner (it names the PKCS#11 module the broker loads \
             and where its PIN comes from); chmod go-w it",
        );
    }
    if config.state_dir.exists() {
        check_mode(
            &mut r,
            "state directory",
            &config.state_dir,
            0o077,
            "open to others than its owner (it holds the store, the audit log and keys.toml); \
             chmod 0700 it",
        );
    }
    if let BackendConfig::Pkcs11(p) = &config.backend {
        if let PinSource::File(path) = &p.pin {
            check_pin_file(&mut r, path);
        }
        if !p.module.exists() {
            r.problem(&format!(
                "PKCS#11 module {} does not exist: fix [backend] module",
                p.module.display()
            ));
        }
        if let Some(conf) = p.module_env.get("SOFTHSM2_CONF") {
            if let Err(e) = std::fs::File::open(conf) {
                r.problem(&format!(
                    "SoftHSM2 configuration {conf} cannot be read ({e}): Debian ships it \
                     root:softhsm 0640, add the seb user to the softhsm group"
                ));
            }
        }
    }

    // The shared store of replicas.
    if let StoreConfig::Postgres(pg) = &config.store {
        check_postgres(&mut r, pg);
    }

    // State directory.
    let trust = config.trust_dir();
    if trust.is_initialised() {
        r.ok(&format!(
            "state directory {} is initialised",
            config.state_dir.display()
        ));
    } else {
        r.problem(&format!(
            "{} holds no root certificate: run `seb init`",
            trust.path().display()
        ));
    }
    let generations = match config.key_generations() {
        Ok(g) => Some(g),
        Err(e) => {
            r.problem(&format!(
                "{e}: restore it from a backup of the state directory"
            ));
            None
        }
    };

    if let Err(e) = seb::ca::check_tls_names(&config.ca.tls_names) {
        r.problem(&format!(
            "[ca] tls_names {:?}: {e}: `seb rotate tls` would refuse it",
            config.ca.tls_names
        ));
    }

    // Certificates near expiry.
    if trust.is_initialised() {
        let mut certs = vec![("root", trust.root_path())];
        for kind in seb::ca::generations::KeyKind::ALL {
            certs.push((kind.as_str(), trust.service_path(kind)));
        }
        if trust.ak_path().exists() {
            certs.push(("ak", trust.ak_path()));
        }
        for (what, path) in certs {
            match read_certificate(&path) {
                Ok(cert) if cert.not_after() <= now => r.problem(&format!(
                    "the {what} certificate expired at {}: {}",
                    time_text(cert.not_after()),
                    renew_hint(what)
                )),
                // The root's successor is a ceremony planned a year ahead (OPERATIONS §11).
                Ok(cert)
                    if what == "root"
                        && cert.not_after() <= now + ROOT_EXPIRY_WARNING
                        && cert.not_after() > now + seb::broker::EXPIRY_WARNING =>
                {
                    r.warn(&format!(
                        "the root certificate expires at {} (within a year): plan the root \
                         rotation now (docs/OPERATIONS.md §11, \"Rotate the root\"); \
                         certificates under it cannot outlive it",
                        time_text(cert.not_after())
                    ))
                }
                Ok(cert) if cert.not_after() <= now + seb::broker::EXPIRY_WARNING => {
                    r.warn(&format!(
                        "the {what} certificate expires at {} (within 30 days): {}",
                        time_text(cert.not_after()),
                        renew_hint(what)
                    ))
                }
                Ok(cert) => r.ok(&format!(
                    "the {what} certificate is valid until {}",
                    time_text(cert.not_after())
                )),
                Err(e) => r.problem(&format!(
                    "{e}: restore the trust directory or run `seb init`"
                )),
            }
        }
    }

    // The embedded database is sound (a restore beside an old write-ahead log is not).
    if matches!(config.store, StoreConfig::Sqlite)
        && config
            .state_dir
            .join(seb::store::sqlite::SqliteStore::FILE)
            .exists()
    {
        match seb::store::sqlite::SqliteStore::quick_check(&config.state_dir) {
            Ok(found) if found.is_empty() => r.ok("the database passes SQLite's quick_check"),
            Ok(found) => r.problem(&format!(
                "the database is damaged ({}): stop the broker and restore a backup, deleting \
                 seb.db-wal and seb.db-shm before copying it in (docs/OPERATIONS.md §9)",
                found.into_iter().take(3).collect::<Vec<_>>().join("; ")
            )),
            Err(e) => r.problem(&format!(
                "the database cannot be checked ({}): run `seb check` as the broker's user; \
                 if that cannot open it either, it is damaged: stop the broker and restore a \
                 backup (docs/OPERATIONS.md §9)",
                super::mcp::with_causes(&e)
            )),
        }
    }

    // Room to write: with a full disk the broker refuses every token (no log entry, no token).
    if config.state_dir.exists() {
        check_free_space(&mut r, &config.state_dir);
    }

    // Certificates this CA issued (agents, approvers, executors, intermediates) near expiry.
    if trust.is_initialised() {
        match super::open_store(config)
            .and_then(|store| Ok((store.issued_certificates()?, store.revocations()?)))
        {
            Ok((issued, revocations)) => check_issued(&mut r, config, &issued, &revocations, now),
            Err(e) => r.problem(&format!(
                "the store cannot be read ({}): check the state directory or the database",
                super::mcp::with_causes(e.as_ref())
            )),
        }
    }

    // The device and every key.
    match open_backend(config, Some(1)) {
        Err(e) => r.problem(&format!(
            "the key device cannot be opened or logged in to ({}): check [backend], the \
             token and the PIN (docs/OPERATIONS.md §10)",
            super::mcp::with_causes(e.as_ref())
        )),
        Ok(backend) => {
            r.ok(&format!("{} reachable and logged in", backend.describe()));
            if generations.is_some() {
                for key in super::init::broker_keys(config)? {
                    let (what, label) = (key.what, &key.label);
                    match backend
                        .contains(label)
                        .and_then(|present| present.then(|| backend.protection(label)).transpose())
                    {
                        Ok(Some(p)) if p.is_hardware_bound() => {
                            r.ok(&format!(
                                "{what} key {label:?} is sensitive and never extractable"
                            ));
                            let device = backend
                                .public_key(label)
                                .and_then(|public| public.to_spki_der())
                                .map_err(super::CliError::from);
                            match device.and_then(|d| key.matches_certificate(&d)) {
                                Ok(Some(false)) => r.problem(&seb::ca::trust_dir::key_mismatch(
                                    label,
                                    &key.certificate,
                                )),
                                Ok(_) => {}
                                Err(e) => r.problem(&format!("{what} key {label:?}: {e}")),
                            }
                        }
                        Ok(Some(_)) => r.problem(&format!(
                            "{what} key {label:?} is not bound to the device (extractable or \
                             not sensitive): re-key it (`seb rotate {what}`, or a new root)"
                        )),
                        Ok(None) => r.problem(&format!(
                            "{what} key {label:?} is missing from the device: this state \
                             directory belongs to another token, or run `seb init`"
                        )),
                        Err(e) => r.problem(&format!("{what} key {label:?}: {e}")),
                    }
                }
            }
        }
    }

    // Attestation.
    match &config.attestation {
        None => r.warn(
            "no [attestation]: the broker does not attest its boot state (docs/ATTESTATION.md)",
        ),
        Some(a) => match AttestPolicy::load(&a.policy) {
            Err(e) => r.problem(&format!(
                "attestation policy {}: {e}: record one with `seb attest record`",
                a.policy.display()
            )),
            Ok(policy) => {
                r.ok(&format!(
                    "attestation policy {} is valid",
                    a.policy.display()
                ));
                let interval_problem = seb::attest::selfcheck::AttestationState::interval_problem(
                    a.interval,
                    policy.max_age,
                );
                match (interval_problem, policy.max_age) {
                    (Some(problem), _) => r.problem(&problem),
                    (None, Some(max_age)) if a.interval * 3 > max_age => r.warn(&format!(
                        "the self-check interval ({} s) is more than a third of the policy's \
                         max_age ({} s): one slow or failed check stops issuance",
                        a.interval.as_secs(),
                        max_age.as_secs()
                    )),
                    _ => {}
                }
                let trust = config.trust_dir();
                let unbound = !policy.ek_cas().is_empty()
                    && trust.ek_path().exists()
                    && read_certificate(&trust.ak_path())
                        .is_ok_and(|ak| ak.extension(seb::cert::SEB_EK_CERTIFICATE_OID).is_none());
                if unbound {
                    r.warn(
                        "the attestation key's certificate names no EK certificate (enrolled by \
                         an older seb): verifiers that pin EK CAs refuse this broker's \
                         evidence (ek_not_accepted); run `seb attest enroll`, then restart the \
                         broker",
                    );
                }
                // The evidence rests on the root key certifying the AK: a host that booted
                // into another state must not be able to use it (docs/ATTESTATION.md §5.2).
                match &config.backend {
                    BackendConfig::Pkcs11(p) if !matches!(p.pin, PinSource::Sealed { .. }) => {
                        r.warn(
                            "the PIN is not sealed to the boot state (pin_file or pin_env): a \
                             host booted into another state can still use the root key, certify \
                             a key of its own as the AK and forge evidence that `seb attest \
                             verify` accepts; seal it with `seb seal-pin` and set pin_sealed \
                             (docs/ATTESTATION.md §5.2, §9)",
                        );
                    }
                    BackendConfig::Tpm(_) => r.warn(
                        "the broker's keys are in the TPM with no PCR policy: a host booted into \
                         another state can still use the root key and forge attestation \
                         evidence (docs/ATTESTATION.md §5.2); keep the keys in an HSM with a \
                         sealed PIN where attestation matters",
                    ),
                    BackendConfig::Pkcs11(_) => {}
                }
                if policy.ek_cas().is_empty() {
                    r.warn(
                        "the attestation policy pins no EK CA (ek_ca): any TPM's EK is \
                            accepted; add the TPM maker's CA (docs/ATTESTATION.md)",
                    );
                }
                let ak_blob = config.ak_blob();
                if !ak_blob.exists() || !trust.ak_path().exists() {
                    r.problem(&format!(
                        "the attestation key ({} and {}) is missing: `seb serve` will not start; \
                         run `seb attest enroll` (or restore them from the backup, \
                         docs/OPERATIONS.md §9)",
                        ak_blob.display(),
                        trust.ak_path().display()
                    ));
                }
                if !a.event_log.exists() {
                    r.problem(&format!(
                        "event log {} does not exist: fix [attestation] event_log",
                        a.event_log.display()
                    ));
                }
                match config.attestation_tcti() {
                    Some(tcti) => match seb::tpm::Tpm::open(&tcti) {
                        Ok(tpm) => {
                            r.ok(&format!("TPM reachable at {tcti}"));
                            check_boot_state(&mut r, &tpm, &policy, &a.event_log);
                        }
                        Err(e) => r.problem(&format!(
                            "TPM at {tcti} does not answer ({}): check the TCTI and the TPM",
                            super::mcp::with_causes(&e)
                        )),
                    },
                    None => r.problem("[attestation] has no TCTI: set [attestation] tcti"),
                }
            }
        },
    }

    say!("{} problem(s), {} warning(s)", r.problems, r.warnings);
    if r.problems > 0 {
        return Err(format!("{} problem(s) found", r.problems).into());
    }
    Ok(())
}

/// The boot state as the broker's self-check will judge it: the policy's PCRs read from the
/// TPM, the event log replayed to them, both compared with the policy. A mismatch is a
/// problem: the broker answers every request `503 attestation_failed`.
fn check_boot_state(r: &mut Report, tpm: &seb::tpm::Tpm, policy: &AttestPolicy, log: &Path) {
    match super::seal::boot_state(tpm, policy, log) {
        Ok(Ok(_)) => r.ok(&format!(
            "the TPM's PCRs {} and the event log match the attestation policy",
            policy
                .pcrs
                .iter()
                .map(u8::to_string)
                .collect::<Vec<_>>()
                .join(",")
        )),
        Ok(Err(why)) => r.problem(&format!(
            "the boot state does not match the attestation policy ({why}): the broker refuses \
             every request with 503 attestation_failed; boot a known-good state, or record the \
             new one after a planned change (docs/OPERATIONS.md §2)"
        )),
        Err(e) => r.problem(&format!(
            "the boot state cannot be judged ({}): check the TPM and [attestation] event_log",
            super::mcp::with_causes(e.as_ref())
        )),
    }
}

fn renew_hint(what: &str) -> String {
    if what == "root" {
        "plan a root rotation (docs/OPERATIONS.md, \"Year two\")".into()
    } else if what == "ak" {
        "run `seb attest enroll` (a new certificate for the same attestation key), then restart \
         the broker"
            .into()
    } else {
        format!("run `seb rotate {what}`")
    }
}

/// One warning per holder whose newest certificate (by subject and role) expires within 30
/// days and is not revoked, nor under a revoked CA (it authorizes nothing, and `cert renew`
/// refuses it): an older one that a renewal replaced is not worth a line.
fn check_issued(
    r: &mut Report,
    config: &Config,
    issued: &[IssuedCertificate],
    revocations: &[Revocation],
    now: SystemTime,
) {
    // The newest certificate in use of each holder (subject and role): revoked, expired and
    // under-a-revoked-CA ones are left out first, so that a renewal revoked as superseded
    // does not hide the re-keyed certificate beside it. The broker's own certificates (token,
    // tls, audit) are checked above, from the trust directory.
    let holders = ["agent", "approver", "executor", "intermediate"];
    let mut revoked_issuers = BTreeMap::new();
    let mut newest: BTreeMap<(&str, &str), &IssuedCertificate> = BTreeMap::new();
    for record in issued.iter().filter(|c| holders.contains(&c.role.as_str())) {
        let revoked = revocations.iter().any(|v| v.serial == record.serial);
        if revoked || record.not_after <= now {
            continue;
        }
        let under_revoked = *revoked_issuers
            .entry(record.issuer_label.as_str())
            .or_insert_with(|| {
                super::inventory::revoked_above(config, record, revocations, now).is_some()
            });
        if under_revoked {
            continue;
        }
        let slot = newest
            .entry((record.subject.as_str(), record.role.as_str()))
            .or_insert(record);
        if record.not_after > slot.not_after {
            *slot = record;
        }
    }
    let (mut expiring, mut in_use) = (0, 0);
    for record in newest.values() {
        in_use += 1;
        if record.not_after <= now + seb::broker::EXPIRY_WARNING {
            expiring += 1;
            let what_to_do = if record.role == "intermediate" {
                "issue a new intermediate (`seb cert issue-ca`) and the certificates below it"
                    .to_owned()
            } else {
                format!(
                    "renew it with `seb cert renew --serial {}` (same key, names and grants) \
                     and hand it to its holder",
                    record.serial
                )
            };
            r.warn(&format!(
                "the {} certificate {:?} (serial {}) expires at {} (within 30 days): \
                 {what_to_do}",
                record.role,
                record.subject,
                record.serial,
                time_text(record.not_after),
            ));
        }
    }
    if expiring == 0 {
        r.ok(&format!(
            "no issued certificate expires within 30 days ({in_use} in use: the newest of \
             each holder, neither revoked, under a revoked CA nor expired)"
        ));
    }
}

/// Below this much free space (or this many free inodes) on the state directory's filesystem
/// the broker is close to refusing tokens: a problem.
const FREE_SPACE_PROBLEM: u64 = 64 << 20;
const FREE_INODES_PROBLEM: u64 = 1_000;
/// Below this much, or this share of the filesystem, a warning.
const FREE_SPACE_WARNING: u64 = 1 << 30;
const FREE_SHARE_WARNING_PERCENT: u64 = 5;

/// The free space and inodes left to unprivileged writers where the store, the audit log and
/// the trust files are written.
fn check_free_space(r: &mut Report, dir: &Path) {
    let fs = match rustix::fs::statvfs(dir) {
        Ok(fs) => fs,
        Err(e) => {
            r.warn(&format!(
                "the free space under {} cannot be read ({e})",
                dir.display()
            ));
            return;
        }
    };
    let free = fs.f_bavail.saturating_mul(fs.f_frsize);
    let size = fs.f_blocks.saturating_mul(fs.f_frsize);
    let share = free.saturating_mul(100).checked_div(size).unwrap_or(100);
    let what = format!(
        "{} free of {} on the filesystem of {} ({share} %)",
        bytes_text(free),
        bytes_text(size),
        dir.display()
    );
    let inodes = (fs.f_files > 0).then_some(fs.f_favail);
    if free < FREE_SPACE_PROBLEM || inodes.is_some_and(|n| n < FREE_INODES_PROBLEM) {
        r.problem(&format!(
            "{what}, {} inodes free: when a write fails the broker refuses every token \
             (503 audit_unavailable); free space or move the state directory to a larger \
             filesystem (docs/OPERATIONS.md §9, \"How the store grows\")",
            inodes.map_or("unlimited".to_owned(), |n| n.to_string())
        ));
    } else if free < FREE_SPACE_WARNING || share < FREE_SHARE_WARNING_PERCENT {
        r.warn(&format!(
            "{what}: the audit log grows with every decision; free space or move the state \
             directory to a larger filesystem before it fills (docs/OPERATIONS.md §9, \"How the store \
             grows\")"
        ));
    } else {
        r.ok(&what);
    }
}

/// `1.5 GiB`, `12.0 MiB`: a size an operator reads at a glance.
fn bytes_text(n: u64) -> String {
    const UNITS: [&str; 4] = ["KiB", "MiB", "GiB", "TiB"];
    if n < 1024 {
        return format!("{n} B");
    }
    let mut value = n as f64 / 1024.0;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.1} {}", UNITS[unit])
}

/// Warns when `path`'s mode has any of the bits in `forbidden`; a path that cannot be read is
/// left to the checks that need it.
fn check_mode(r: &mut Report, what: &str, path: &Path, forbidden: u32, why: &str) {
    if let Ok(meta) = std::fs::metadata(path) {
        let mode = meta.permissions().mode() & 0o777;
        if mode & forbidden != 0 {
            r.warn(&format!(
                "{what} {} has mode {mode:o}: {why}",
                path.display()
            ));
        } else {
            r.ok(&format!("{what} {} has mode {mode:o}", path.display()));
        }
    }
}

fn check_pin_file(r: &mut Report, path: &Path) {
    match std::fs::metadata(path) {
        Err(e) => r.problem(&format!(
            "PIN file {} cannot be read ({e}): fix [backend] pin_file or its permissions",
            path.display()
        )),
        Ok(meta) if meta.permissions().mode() & 0o077 != 0 => r.warn(&format!(
            "PIN file {} has mode {:o}: readable by others than its owner; chmod 0600 it",
            path.display(),
            meta.permissions().mode() & 0o777
        )),
        Ok(_) => r.ok(&format!(
            "PIN file {} is private to its owner",
            path.display()
        )),
    }
}

/// The PostgreSQL store: its password file private, the database reachable (with TLS when
/// asked), the schema at this seb's version. Changes nothing.
fn check_postgres(r: &mut Report, pg: &PostgresConfig) {
    match std::fs::metadata(&pg.password_file) {
        Err(e) => r.problem(&format!(
            "database password file {} cannot be read ({e}): fix [store] password_file",
            pg.password_file.display()
        )),
        Ok(meta) if meta.permissions().mode() & 0o077 != 0 => r.warn(&format!(
            "database password file {} has mode {:o}: chmod 0600 it",
            pg.password_file.display(),
            meta.permissions().mode() & 0o777
        )),
        Ok(_) => r.ok(&format!(
            "database password file {} is private to its owner",
            pg.password_file.display()
        )),
    }
    match seb::store::postgres::PgStore::schema_version(pg) {
        Ok((found, needed)) if found == needed => r.ok(&format!(
            "PostgreSQL store reachable, schema version {found}"
        )),
        Ok((0, _)) => r.problem("the PostgreSQL database has no seb schema: run `seb migrate`"),
        Ok((found, needed)) if found < needed => r.problem(&format!(
            "the PostgreSQL schema is version {found}, this seb needs {needed}: run `seb migrate`"
        )),
        Ok((found, needed)) => r.problem(&format!(
            "the PostgreSQL schema is version {found}, newer than this seb ({needed}): upgrade seb"
        )),
        Err(e) => r.problem(&format!(
            "the PostgreSQL store cannot be reached: {}",
            super::mcp::with_causes(&e)
        )),
    }
}
