//! The attestation policy (`firmware-config/*.toml`, documented in docs/ATTESTATION.md): which
//! PCRs are quoted, their reference values and/or reference event digests, the EK CAs accepted
//! when the attestation key is enrolled, and how old the broker's last good self-check may be.
//!
//! Parsed once, validated, and never defaulted silently: unknown keys are errors, a selected PCR
//! without a reference is an error, a reference for an unselected PCR is an error, and a PCR
//! that software can reset without a reboot (16-23, [`super::resettable_pcr`]) is refused.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use serde::Deserialize;

use super::{EventLog, PcrBank, QuoteError};
use crate::cert::Certificate;
use crate::chain;

/// A policy file that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    /// The file could not be read.
    #[error("cannot read attestation policy {path}: {reason}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// Not valid TOML for the schema, or inconsistent.
    #[error("invalid attestation policy: {0}")]
    Invalid(String),
    /// The policy quotes a PCR that software can reset (see [`super::resettable_pcr`]).
    #[error(
        "invalid attestation policy (resettable_pcr): PCR {pcr} can be reset without rebooting \
         the host ({reason}); a policy that quotes it proves nothing. Quote only PCRs 0-15 and \
         have the broker image measured into one of them (docs/ATTESTATION.md §3)"
    )]
    ResettablePcr {
        /// PCR index.
        pcr: u8,
        /// Why it is resettable.
        reason: &'static str,
    },
}

impl PolicyError {
    /// A stable snake_case code for scripts and logs.
    pub fn code(&self) -> &'static str {
        match self {
            PolicyError::Read { .. } => "policy_unreadable",
            PolicyError::Invalid(_) => "invalid_policy",
            PolicyError::ResettablePcr { .. } => "resettable_pcr",
        }
    }
}

/// A parsed and validated attestation policy.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AttestPolicy {
    /// The bank quoted.
    pub bank: PcrBank,
    /// The PCRs quoted, ascending.
    pub pcrs: Vec<u8>,
    /// How old the last good self-check may be before issuance stops / verifiers refuse.
    pub max_age: Option<Duration>,
    /// Reference PCR values.
    pub expected_pcrs: BTreeMap<u8, Vec<u8>>,
    /// Reference event digests per PCR, in order.
    pub expected_events: BTreeMap<u8, Vec<Vec<u8>>>,
    ek_cas: Vec<Certificate>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PolicyFile {
    version: u32,
    pcr_bank: PcrBank,
    pcrs: Vec<u8>,
    max_age: Option<String>,
    #[serde(default)]
    ek_ca: Vec<PathBuf>,
    #[serde(default)]
    expected_pcrs: BTreeMap<String, String>,
    #[serde(default)]
    expected_events: Vec<ExpectedEvents>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ExpectedEvents {
    pcr: u8,
    digests: Vec<String>,
}

impl AttestPolicy {
    /// Reads a policy file; `ek_ca` paths are relative to the file's directory.
    pub fn load(path: &Path) -> Result<Self, PolicyError> {
        let text = std::fs::read_to_string(path).map_err(|e| PolicyError::Read {
            path: path.to_owned(),
            reason: e.to_string(),
        })?;
        let base = path.parent().unwrap_or(Path::new("."));
        Self::parse(&text, base)
    }

    /// Parses policy text; `ek_ca` paths are resolved against `base`.
    pub fn parse(text: &str, base: &Path) -> Result<Self, PolicyError> {
        let file: PolicyFile =
            toml::from_str(text).map_err(|e| PolicyError::Invalid(e.to_string()))?;
        let invalid = |m: String| PolicyError::Invalid(m);
        if file.version != 1 {
            return Err(invalid(format!(
                "version {} (this seb reads 1)",
                file.version
            )));
        }
        let mut pcrs = file.pcrs.clone();
        pcrs.sort_unstable();
        pcrs.dedup();
        if pcrs.is_empty() || pcrs.iter().any(|p| *p > 23) || pcrs.len() != file.pcrs.len() {
            return Err(invalid(
                "pcrs must list distinct PCR indices 0..=23, at least one".into(),
            ));
        }
        if let Some((pcr, reason)) = pcrs
            .iter()
            .find_map(|p| super::resettable_pcr(*p).map(|r| (*p, r)))
        {
            return Err(PolicyError::ResettablePcr { pcr, reason });
        }
        let max_age = file
            .max_age
            .as_deref()
            .map(crate::duration::parse)
            .transpose()
            .map_err(|e| invalid(e.to_string()))?;
        let digest = |what: &str, value: &str| -> Result<Vec<u8>, PolicyError> {
            let bytes = hex::decode(value).map_err(|_| invalid(format!("{what}: not hex")))?;
            if bytes.len() != file.pcr_bank.digest_len() {
                return Err(invalid(format!(
                    "{what}: {} bytes, a {} digest has {}",
                    bytes.len(),
                    file.pcr_bank,
                    file.pcr_bank.digest_len()
                )));
            }
            Ok(bytes)
        };
        let mut expected_pcrs = BTreeMap::new();
        for (key, value) in &file.expected_pcrs {
            let pcr: u8 = key
                .parse()
                .map_err(|_| invalid(format!("expected_pcrs key {key:?} is not a PCR index")))?;
            if !pcrs.contains(&pcr) {
                return Err(invalid(format!(
                    "expected_pcrs has PCR {pcr}, which is not in pcrs"
                )));
            }
            expected_pcrs.insert(pcr, digest(&format!("expected_pcrs.{pcr}"), value)?);
        }
        let mut expected_events = BTreeMap::new();
        for e in &file.expected_events {
            if !pcrs.contains(&e.pcr) {
                return Err(invalid(format!(
                    "expected_events has PCR {}, which is not in pcrs",
                    e.pcr
                )));
            }
            let digests = e
                .digests
                .iter()
                .map(|d| digest(&format!("expected_events PCR {}", e.pcr), d))
                .collect::<Result<Vec<_>, _>>()?;
            if expected_events.insert(e.pcr, digests).is_some() {
                return Err(invalid(format!(
                    "expected_events lists PCR {} twice",
                    e.pcr
                )));
            }
        }
        for pcr in &pcrs {
            if !expected_pcrs.contains_key(pcr) && !expected_events.contains_key(pcr) {
                return Err(invalid(format!(
                    "PCR {pcr} is quoted but has neither an expected value nor expected events"
                )));
            }
        }
        let mut ek_cas = Vec::new();
        for path in &file.ek_ca {
            let path = base.join(path);
            let bytes = std::fs::read(&path)
                .map_err(|e| invalid(format!("ek_ca {}: {e}", path.display())))?;
            let certs = Certificate::parse_pem_chain(&bytes)
                .map_err(|e| invalid(format!("ek_ca {}: {e}", path.display())))?;
            ek_cas.extend(certs);
        }
        Ok(Self {
            bank: file.pcr_bank,
            pcrs,
            max_age,
            expected_pcrs,
            expected_events,
            ek_cas,
        })
    }

    /// The accepted EK CA certificates.
    /// This policy without its EK pinning: what the broker's own self-check compares (its EK
    /// was checked at enrolment; relying parties check the EK certificate it serves).
    pub fn without_ek_pinning(&self) -> Self {
        Self {
            ek_cas: Vec::new(),
            ..self.clone()
        }
    }

    /// The accepted EK CAs.
    pub fn ek_cas(&self) -> &[Certificate] {
        &self.ek_cas
    }

    /// Compares quoted (and already replay-checked) PCR values and the event log with the
    /// references.
    pub fn compare(&self, pcrs: &BTreeMap<u8, Vec<u8>>, log: &EventLog) -> Result<(), QuoteError> {
        for (pcr, expected) in &self.expected_pcrs {
            let actual = pcrs.get(pcr).ok_or(QuoteError::PcrDigestMismatch)?;
            if actual != expected {
                return Err(QuoteError::PcrPolicy {
                    pcr: *pcr,
                    expected: hex::encode(expected),
                    actual: hex::encode(actual),
                });
            }
        }
        for (pcr, expected) in &self.expected_events {
            let actual: Vec<&str> = log.digests_for(*pcr).collect();
            if actual.len() != expected.len() {
                return Err(QuoteError::EventPolicy {
                    pcr: *pcr,
                    detail: format!(
                        "{} events, the policy lists {}",
                        actual.len(),
                        expected.len()
                    ),
                });
            }
            for (i, (a, e)) in actual.iter().zip(expected).enumerate() {
                if !a.eq_ignore_ascii_case(&hex::encode(e)) {
                    return Err(QuoteError::EventPolicy {
                        pcr: *pcr,
                        detail: format!(
                            "event {i} has digest {a}, the policy expects {}",
                            hex::encode(e)
                        ),
                    });
                }
            }
        }
        Ok(())
    }

    /// The EK certificate must be signed by one of the accepted EK CAs (EC CAs; EK certificate
    /// validity is not enforced, as TCG guidance advises).
    pub fn check_ek_certificate(&self, ek_pem: &[u8], _now: SystemTime) -> Result<(), QuoteError> {
        let bad = |reason: String| QuoteError::EkNotAccepted { reason };
        if self.ek_cas.is_empty() {
            return Ok(());
        }
        let ek = Certificate::parse(ek_pem).map_err(|e| bad(format!("unparseable: {e}")))?;
        let mut last = String::from("no accepted EK CA has its issuer name");
        for ca in &self.ek_cas {
            if ca.tbs().subject() != ek.tbs().issuer() {
                continue;
            }
            match chain::verify_signature(&ek, ca) {
                Ok(()) => return Ok(()),
                Err(e) => last = e.to_string(),
            }
        }
        Err(bad(last))
    }

    /// Writes a policy file with `pcrs` as the reference values and the log's digests as the
    /// reference events (what `seb attest record` produces).
    pub fn record_toml(
        bank: PcrBank,
        pcrs: &BTreeMap<u8, Vec<u8>>,
        log: Option<&EventLog>,
        ek_ca: &[String],
        max_age: &str,
    ) -> String {
        let mut out = String::new();
        out.push_str(
            "# seb attestation policy recorded by `seb attest record` from a known-good host.\n",
        );
        out.push_str("# Schema: docs/ATTESTATION.md.\n");
        out.push_str("version = 1\n");
        out.push_str(&format!("pcr_bank = \"{bank}\"\n"));
        let list: Vec<String> = pcrs.keys().map(|p| p.to_string()).collect();
        out.push_str(&format!("pcrs = [{}]\n", list.join(", ")));
        out.push_str(&format!("max_age = \"{max_age}\"\n"));
        let cas: Vec<String> = ek_ca.iter().map(|c| format!("{c:?}")).collect();
        out.push_str(&format!("ek_ca = [{}]\n\n", cas.join(", ")));
        out.push_str("[expected_pcrs]\n");
        for (pcr, value) in pcrs {
            out.push_str(&format!("{pcr} = \"{}\"\n", hex::encode(value)));
        }
        if let Some(log) = log {
            for pcr in pcrs.keys() {
                let digests: Vec<String> = log
                    .digests_for(*pcr)
                    .map(|d| format!("  \"{d}\",\n"))
                    .collect();
                if digests.is_empty() {
                    continue;
                }
                out.push_str(&format!(
                    "\n[[expected_events]]\npcr = {pcr}\ndigests = [\n"
                ));
                for d in digests {
                    out.push_str(&d);
                }
                out.push_str("]\n");
            }
        }
        out
    }
}
