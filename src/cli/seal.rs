//! `seb seal-pin` (and `seb init --seal-pin`): seals the HSM user PIN in the `[attestation]`
//! TPM to the current values of the attestation policy's PCRs.
//!
//! It refuses to seal to a boot state the attestation policy does not accept, checks that the
//! PIN logs in to the token before sealing it, and unseals the new blob once before writing it,
//! so a written blob is known to open in the state it was sealed in. It never prints the PIN.

use std::collections::BTreeMap;
use std::path::PathBuf;

use seb::attest::seal::SealedPin;
use seb::attest::tpm::read_pcrs_of;
use seb::attest::{AttestPolicy, EventLog};
use seb::backend::pkcs11::{Pkcs11Backend, Pkcs11Settings, TokenSelector};
use seb::config::{BackendConfig, Config, PinSource};
use seb::tpm::Tpm;
use secrecy::{ExposeSecret, SecretString};

use super::{read_file, write_file, CliResult};

/// The policy's PCRs as the TPM holds them now, judged as the broker's self-check judges them:
/// the event log must replay to them and both must match the policy. The outer error is one
/// of reading (the TPM, the log file); the inner one says why the state is not the policy's.
pub(super) fn boot_state(
    tpm: &Tpm,
    policy: &AttestPolicy,
    event_log: &std::path::Path,
) -> Result<Result<BTreeMap<u8, Vec<u8>>, String>, super::CliError> {
    let values = read_pcrs_of(tpm, policy.bank, &policy.pcrs)?;
    let log = EventLog::from_json(&read_file(event_log)?)
        .map_err(|e| format!("event log {}: {e}", event_log.display()))?;
    Ok(log
        .check_replay(policy.bank, &values)
        .and_then(|()| policy.compare(&values, &log))
        .map(|()| values)
        .map_err(|e| e.to_string()))
}

/// Options of `seb seal-pin`.
#[derive(Debug, Default, clap::Args)]
pub struct SealArgs {
    /// Where to write the sealed PIN (default: STATE_DIR/pin.sealed).
    #[arg(long)]
    pub out: Option<PathBuf>,
}

/// Reads the PIN from the configured source and seals it to the current boot state.
pub fn run(config: &Config, args: SealArgs) -> CliResult {
    let BackendConfig::Pkcs11(p11) = &config.backend else {
        return Err("PIN sealing protects a PKCS#11 user PIN; this [backend] has none".into());
    };
    let settings = config.attestation.as_ref().ok_or(
        "seal-pin needs an [attestation] section: its TPM seals the PIN and its policy names the PCRs",
    )?;
    let tcti = config
        .attestation_tcti()
        .ok_or("[attestation] names no TPM (tcti)")?;
    let policy = AttestPolicy::load(&settings.policy)?;

    // The PIN must work before it is made the only way in.
    let pin = p11.read_pin()?;
    Pkcs11Backend::open(Pkcs11Settings {
        module: p11.module.clone(),
        token: TokenSelector {
            label: p11.token_label.clone(),
            serial: p11.token_serial.clone(),
        },
        pin: pin.clone(),
        sessions: 1,
    })
    .map_err(|e| format!("not sealing: the configured PIN does not open the token: {e}"))?;

    // Seal only to a state the attestation policy accepts.
    let tpm = Tpm::open(&tcti)?;
    let values = boot_state(&tpm, &policy, &settings.event_log)?.map_err(|why| {
        format!(
            "not sealing: the current boot state is not the one the attestation policy \
             accepts ({why}); seal from a known-good state"
        )
    })?;

    let started = std::time::Instant::now();
    let sealed = SealedPin::seal(&tpm, policy.bank, &values, &pin)?;
    let sealing = started.elapsed();
    let started = std::time::Instant::now();
    let back: SecretString = sealed.unseal(&tpm)?;
    let unsealing = started.elapsed();
    if back.expose_secret() != pin.expose_secret() {
        return Err(
            "the TPM unsealed something other than the PIN it sealed; nothing written".into(),
        );
    }
    let out = args.out.unwrap_or_else(|| config.default_sealed_pin());
    write_file(&out, &sealed.encode()?, true)?;
    // Absolute, so that the line to paste means this file wherever the configuration is (its
    // relative paths are relative to the configuration file, not to where this ran).
    let out = std::fs::canonicalize(&out).unwrap_or(out);

    let pcrs: Vec<String> = sealed.pcrs().iter().map(u8::to_string).collect();
    say!(
        "sealed the HSM user PIN in {} to PCRs {} ({}) in {} ms; test unseal {} ms",
        tpm.tcti(),
        pcrs.join(","),
        sealed.bank(),
        sealing.as_millis(),
        unsealing.as_millis()
    );
    say!("wrote {} (mode 0600)", out.display());
    match &p11.pin {
        PinSource::Sealed { path, .. } if std::fs::canonicalize(path).is_ok_and(|p| p == out) => {
            say!("the configuration already reads the PIN from this file");
        }
        current => {
            say!("to use it, change [backend] in the configuration:");
            say!("  remove   {} = ...", current.key());
            say!("  add      pin_sealed = \"{}\"", out.display());
            say!(
                "keep the PIN itself in escrow: after a planned PCR change (firmware update) it is \
                 needed to re-seal with `seb seal-pin`"
            );
        }
    }
    Ok(())
}
