//! Remote attestation of the broker's own boot state: the evidence a broker serves
//! (`GET /v1/attestation`), the reference policy it is compared with (`firmware-config/`), and
//! the offline verification a relying party runs.
//!
//! Verification is pure: it parses the TPM structures itself ([`tpm_types`]), checks the quote
//! signature with the AK public key from the AK certificate, the AK certificate's chain to the
//! seb root, the binding of the quote to the caller's nonce and to the TLS certificate of the
//! session that served it ([`qualifying_data`]), that the AK and that TLS certificate belong to
//! the same broker, the PCR digest against the PCR values served with it, replays the event log
//! against those values and compares everything with the policy. It links no TPM code, so
//! `seb attest verify` and executors can run it anywhere.
//!
//! Device code (the [`Attestor`] over a real TPM) sits in `attest::tpm` behind the `tpm`
//! feature; the broker's periodic self-check in `attest::selfcheck` behind `broker`.
//! Nothing in this module may trust evidence it has not verified, accept a quote whose nonce
//! it did not choose, or accept a quote bound to another TLS certificate than the one the
//! verifier saw.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256, Sha384};

use crate::cert::Certificate;
use crate::chain::CertKey;

mod certs;
mod error;
pub mod eventlog;
pub mod policy;
#[cfg(feature = "tpm")]
pub mod seal;
#[cfg(feature = "broker")]
pub mod selfcheck;
#[cfg(feature = "tpm")]
pub mod tpm;
pub mod tpm_types;

use certs::same_broker;
pub use certs::{certified_ak, certified_tls, TCG_KP_AIK_CERTIFICATE};
pub use error::{AttestError, QuoteError};
pub use eventlog::{Event, EventLog};
pub use policy::{AttestPolicy, PolicyError};

/// The qualifying data (`extraData`) of a quote served for `nonce` over a TLS session whose
/// server certificate is `tls_certificate` (DER): `SHA-256(nonce ‖ SHA-256(tls_certificate))`.
///
/// The broker quotes with its own TLS certificate; the verifier recomputes it with the
/// certificate it saw in its own handshake. Evidence relayed by anyone else (a proxy, another
/// broker of the same root) was bound to the broker's certificate, not to the relay's, and
/// fails. The nonce has a variable length and the certificate digest a fixed one at the end,
/// so the concatenation is unambiguous.
pub fn qualifying_data(nonce: &[u8], tls_certificate: &[u8]) -> Vec<u8> {
    bind(nonce, &Sha256::digest(tls_certificate))
}

fn bind(nonce: &[u8], tls_certificate_sha256: &[u8]) -> Vec<u8> {
    let mut hash = Sha256::new();
    hash.update(nonce);
    hash.update(tls_certificate_sha256);
    hash.finalize().to_vec()
}

/// Shortest nonce accepted, in bytes: shorter ones could be guessed and pre-computed.
pub const MIN_NONCE: usize = 8;
/// Longest nonce accepted, in bytes (a TPM2B_DATA holds at most a SHA-512 digest).
pub const MAX_NONCE: usize = 64;

/// Why `pcr` cannot anchor an attestation policy or a sealed PIN, or `None` when only a host
/// reboot (TPM reset) returns it to its initial value (PCRs 0-15).
///
/// PCRs 16 (debug) and 23 (application) are reset by `TPM2_PCR_Reset` from locality 0 (seen on
/// swtpm and required by the PC Client platform profile): any program that reaches the TPM,
/// a replaced broker binary included, can reset them and extend exactly what a policy expects.
/// PCRs 17-22 belong to the dynamic root of trust: a dynamic launch resets them without a
/// reboot, they start at all ones, and seb's event log (replayed from zero) does not describe
/// dynamic launches, so they are refused as well.
pub fn resettable_pcr(pcr: u8) -> Option<&'static str> {
    match pcr {
        16 => Some(
            "it is the debug PCR, which TPM2_PCR_Reset clears from locality 0: any program that \
             reaches the TPM can reset it and extend the values the policy expects",
        ),
        23 => Some(
            "it is the application PCR, which TPM2_PCR_Reset clears from locality 0: any program \
             that reaches the TPM can reset it and extend the values the policy expects",
        ),
        17..=22 => Some(
            "it is a dynamic root of trust (DRTM) PCR: a dynamic launch resets it without a \
             reboot, and it starts at all ones, which seb's event log replay does not describe",
        ),
        _ => None,
    }
}

/// Refuses a PCR selection that names a PCR software can reset ([`resettable_pcr`]).
pub fn check_pcr_selection(pcrs: &[u8]) -> Result<(), QuoteError> {
    match pcrs
        .iter()
        .find_map(|p| resettable_pcr(*p).map(|reason| (*p, reason)))
    {
        Some((pcr, reason)) => Err(QuoteError::ResettablePcr { pcr, reason }),
        None => Ok(()),
    }
}

/// A PCR bank (hash algorithm).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PcrBank {
    /// SHA-256 PCRs (every TPM 2.0 has them).
    Sha256,
    /// SHA-384 PCRs, where the TPM has the bank.
    Sha384,
}

impl PcrBank {
    /// Size of one PCR value in bytes.
    pub fn digest_len(self) -> usize {
        match self {
            PcrBank::Sha256 => 32,
            PcrBank::Sha384 => 48,
        }
    }

    /// Hashes `data` with the bank's algorithm.
    pub fn hash(self, data: &[u8]) -> Vec<u8> {
        match self {
            PcrBank::Sha256 => Sha256::digest(data).to_vec(),
            PcrBank::Sha384 => Sha384::digest(data).to_vec(),
        }
    }

    /// `PCR := H(PCR ‖ digest)`.
    pub fn extend(self, pcr: &[u8], digest: &[u8]) -> Vec<u8> {
        let mut data = Vec::with_capacity(pcr.len() + digest.len());
        data.extend_from_slice(pcr);
        data.extend_from_slice(digest);
        self.hash(&data)
    }
}

impl std::fmt::Display for PcrBank {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            PcrBank::Sha256 => "sha256",
            PcrBank::Sha384 => "sha384",
        })
    }
}

/// What a TPM returns for one quote: the signed `TPMS_ATTEST`, the `TPMT_SIGNATURE` and the PCR
/// values the quote covers (read in the same locked batch, checked against its digest).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RawQuote {
    /// `TPMS_ATTEST` bytes, exactly as signed.
    pub attest: Vec<u8>,
    /// `TPMT_SIGNATURE` bytes.
    pub signature: Vec<u8>,
    /// PCR index → value, in the quoted bank.
    pub pcrs: BTreeMap<u8, Vec<u8>>,
}

/// A TPM that can quote its own PCRs with the broker's attestation key.
///
/// Implementations block on the device; async callers use `spawn_blocking`.
pub trait Attestor: Send + Sync + std::fmt::Debug {
    /// Quotes `pcrs` of `bank` with `qualifying_data` (the quote's `extraData`, 8 to 64 bytes;
    /// the broker passes [`qualifying_data`]), returning values consistent with the quote's PCR
    /// digest (re-reading and re-quoting if the PCRs changed meanwhile).
    fn quote(
        &self,
        qualifying_data: &[u8],
        bank: PcrBank,
        pcrs: &[u8],
    ) -> Result<RawQuote, AttestError>;

    /// Reads the current PCR values (not signed: for recording reference values).
    fn pcr_read(&self, bank: PcrBank, pcrs: &[u8]) -> Result<BTreeMap<u8, Vec<u8>>, AttestError>;

    /// One line for logs.
    fn describe(&self) -> String;
}

/// The body of `GET /v1/attestation`: everything a relying party needs to check the broker.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Evidence {
    /// The caller's nonce, hex (echoed; the check uses the caller's own copy).
    pub nonce: String,
    /// Hex SHA-256 of the DER TLS server certificate the broker bound the quote to (the quote's
    /// `extraData` is [`qualifying_data`]). Informational: the check uses the certificate the
    /// verifier saw in its own handshake; this only lets a mismatch name what it was bound to.
    pub tls_certificate_sha256: String,
    /// base64url `TPMS_ATTEST` as signed by the AK.
    pub quote: String,
    /// base64url `TPMT_SIGNATURE`.
    pub signature: String,
    /// The bank of `pcrs`.
    pub pcr_bank: PcrBank,
    /// PCR index → hex value, for every quoted PCR.
    pub pcrs: BTreeMap<u8, String>,
    /// PEM certificates, the AK certificate first, up to (not including) the root.
    pub ak_chain: Vec<String>,
    /// PEM EK certificate from the TPM's NV, when it has one.
    pub ek_certificate: Option<String>,
    /// The measured-boot event log of the quoted PCRs.
    pub event_log: EventLog,
    /// The broker's own latest self-check (unsigned, informational).
    pub self_check: Option<SelfCheckReport>,
}

/// The broker's view of its latest self-check.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SelfCheckReport {
    /// Whether the latest check passed.
    pub ok: bool,
    /// Unix seconds of the latest check.
    pub checked_at: u64,
    /// Unix seconds of the latest good check, if any.
    pub last_good: Option<u64>,
    /// Why the latest check failed.
    pub reason: Option<String>,
}

/// What a successful verification established.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VerifiedQuote {
    /// The parsed quote.
    pub info: tpm_types::QuoteInfo,
    /// The quoted PCR values.
    pub pcrs: BTreeMap<u8, Vec<u8>>,
    /// The AK certificate's subject.
    pub ak_subject: String,
    /// The broker both the AK certificate and the TLS certificate name.
    pub broker_id: String,
}

/// What the verifier brings: its own nonce, its trust anchors, the reference policy, the time.
#[derive(Clone, Copy, Debug)]
pub struct QuoteCheck<'a> {
    /// The nonce the verifier sent.
    pub nonce: &'a [u8],
    /// The DER TLS server certificate of the session the evidence came over, as the verifier's
    /// own TLS stack received it in the handshake (never a certificate from the evidence).
    pub tls_certificate: &'a [u8],
    /// The seb root certificates the AK certificate must chain to.
    pub roots: &'a [Certificate],
    /// Reference measurements and rules.
    pub policy: &'a AttestPolicy,
    /// Now, for certificate validity and the self-check age.
    pub now: SystemTime,
}

/// Verifies evidence end to end (see the module documentation for the order of checks).
pub fn verify_evidence(
    evidence: &Evidence,
    check: &QuoteCheck<'_>,
) -> Result<VerifiedQuote, QuoteError> {
    check_pcr_selection(&check.policy.pcrs)?;
    let attest = crate::base64url::decode(&evidence.quote).ok_or(QuoteError::Malformed {
        what: "quote",
        reason: "not base64url",
    })?;
    let signature = crate::base64url::decode(&evidence.signature).ok_or(QuoteError::Malformed {
        what: "quote signature",
        reason: "not base64url",
    })?;
    let (ak, ak_cert, ak_root) = certified_ak(&evidence.ak_chain, check.roots, check.now)?;
    let tls = certified_tls(check.tls_certificate, check.roots, ak_root, check.now)?;
    let info = verify_quote_signature(&attest, &signature, &ak)?;
    check_binding(&info, evidence, check)?;
    let broker_id = same_broker(&ak_cert, &tls)?;
    // The bank is the policy's, whatever the evidence says it is.
    let bank = check.policy.bank;
    if evidence.pcr_bank != bank {
        return Err(QuoteError::SelectionMismatch {
            quoted: format!("the {} bank", evidence.pcr_bank),
            required: format!("the {bank} bank"),
        });
    }
    let pcrs = decode_pcrs(&evidence.pcrs, bank)?;
    check_pcr_digest(&info, bank, &pcrs, &check.policy.pcrs)?;
    evidence.event_log.check_replay(bank, &pcrs)?;
    check.policy.compare(&pcrs, &evidence.event_log)?;
    if let Some(ek) = &evidence.ek_certificate {
        check
            .policy
            .check_ek_certificate(ek.as_bytes(), check.now)?;
        if !check.policy.ek_cas().is_empty() {
            check_ek_binding(&ak_cert, ek.as_bytes())?;
        }
    } else if !check.policy.ek_cas().is_empty() {
        return Err(QuoteError::EkNotAccepted {
            reason: "the broker served no EK certificate".into(),
        });
    }
    if let Some(report) = &evidence.self_check {
        if let Some(max) = check.policy.max_age {
            check_age(report.last_good, check.now, max)?;
        }
        if !report.ok {
            return Err(QuoteError::SelfCheckFailed {
                reason: report
                    .reason
                    .clone()
                    .unwrap_or_else(|| "no reason given".into()),
            });
        }
    }
    Ok(VerifiedQuote {
        info,
        pcrs,
        ak_subject: ak_cert.subject_string(),
        broker_id,
    })
}

/// Checks the quote's signature with `ak` and that its qualifying data is exactly
/// `qualifying_data` (for evidence a broker served: [`qualifying_data`] of the nonce and the
/// session's TLS certificate); returns the parsed quote.
pub fn verify_quote(
    attest: &[u8],
    signature: &[u8],
    ak: &CertKey,
    qualifying_data: &[u8],
) -> Result<tpm_types::QuoteInfo, QuoteError> {
    let info = verify_quote_signature(attest, signature, ak)?;
    // Only now is the content trustworthy; constant time is unnecessary (public values).
    if info.extra_data != qualifying_data {
        return Err(QuoteError::NonceMismatch);
    }
    Ok(info)
}

/// Parses the quote and checks its signature with `ak` (nothing about its content).
fn verify_quote_signature(
    attest: &[u8],
    signature: &[u8],
    ak: &CertKey,
) -> Result<tpm_types::QuoteInfo, QuoteError> {
    let info = tpm_types::parse_quote(attest)?;
    let sig = tpm_types::parse_signature(signature)?;
    let digest = match sig.hash {
        tpm_types::ALG_SHA256 => Sha256::digest(attest).to_vec(),
        tpm_types::ALG_SHA384 => Sha384::digest(attest).to_vec(),
        other => {
            return Err(QuoteError::UnsupportedAlgorithm {
                what: "quote signature hash",
                id: other,
            })
        }
    };
    let size = match ak {
        CertKey::P256(_) => 32,
        CertKey::P384(_) => 48,
    };
    let mut raw = pad(&sig.r, size).ok_or(QuoteError::BadSignature)?;
    raw.extend_from_slice(&pad(&sig.s, size).ok_or(QuoteError::BadSignature)?);
    if !ak.verify_prehash_raw(&digest, &raw) {
        return Err(QuoteError::BadSignature);
    }
    Ok(info)
}

/// The (signed) qualifying data must be [`qualifying_data`] of the verifier's nonce and the TLS
/// certificate it saw. When it is not, and the evidence names another certificate that the
/// quote is indeed bound to (with our nonce), the evidence was relayed: say so.
fn check_binding(
    info: &tpm_types::QuoteInfo,
    evidence: &Evidence,
    check: &QuoteCheck<'_>,
) -> Result<(), QuoteError> {
    let session = Sha256::digest(check.tls_certificate);
    if info.extra_data == bind(check.nonce, &session) {
        return Ok(());
    }
    let served = hex::decode(&evidence.tls_certificate_sha256)
        .ok()
        .filter(|h| h.len() == session.len() && h.as_slice() != session.as_slice());
    match served {
        Some(bound) if info.extra_data == bind(check.nonce, &bound) => {
            Err(QuoteError::TlsBindingMismatch {
                bound: hex::encode(bound),
                session: hex::encode(session),
            })
        }
        _ => Err(QuoteError::NonceMismatch),
    }
}

/// Decodes the served PCR values and checks their length.
pub fn decode_pcrs(
    pcrs: &BTreeMap<u8, String>,
    bank: PcrBank,
) -> Result<BTreeMap<u8, Vec<u8>>, QuoteError> {
    let mut out = BTreeMap::new();
    for (index, value) in pcrs {
        let bytes = hex::decode(value).map_err(|_| QuoteError::Malformed {
            what: "PCR values",
            reason: "not hex",
        })?;
        if bytes.len() != bank.digest_len() || *index > 23 {
            return Err(QuoteError::Malformed {
                what: "PCR values",
                reason: "wrong length or index",
            });
        }
        out.insert(*index, bytes);
    }
    Ok(out)
}

/// The quote must cover exactly the policy's PCRs in one bank, and the served values must hash
/// to its PCR digest.
pub fn check_pcr_digest(
    info: &tpm_types::QuoteInfo,
    bank: PcrBank,
    pcrs: &BTreeMap<u8, Vec<u8>>,
    required: &[u8],
) -> Result<(), QuoteError> {
    let mut required = required.to_vec();
    required.sort_unstable();
    required.dedup();
    let quoted_desc = info
        .selection
        .iter()
        .map(|(alg, p)| format!("0x{alg:04x}:{p:?}"))
        .collect::<Vec<_>>()
        .join(",");
    let expected = vec![(tpm_types::bank_id(bank), required.clone())];
    if info.selection != expected {
        return Err(QuoteError::SelectionMismatch {
            quoted: quoted_desc,
            required: format!("{bank}:{required:?}"),
        });
    }
    let served: Vec<u8> = pcrs.keys().copied().collect();
    if served != required {
        return Err(QuoteError::PcrDigestMismatch);
    }
    let concatenated: Vec<u8> = pcrs.values().flatten().copied().collect();
    // The TPM hashes the PCR values with the signing scheme's hash; accept the one whose
    // length matches the digest in the quote (SHA-256 or SHA-384).
    let computed = match info.pcr_digest.len() {
        32 => Sha256::digest(&concatenated).to_vec(),
        48 => Sha384::digest(&concatenated).to_vec(),
        _ => return Err(QuoteError::PcrDigestMismatch),
    };
    if computed != info.pcr_digest {
        return Err(QuoteError::PcrDigestMismatch);
    }
    Ok(())
}

/// SHA-256 of an EK certificate's DER: what the AK certificate's `sebEkCertificate` holds.
pub fn ek_certificate_digest(ek: &Certificate) -> Result<[u8; 32], der::Error> {
    Ok(Sha256::digest(ek.to_der_bytes()?).into())
}

/// The EK certificate a broker serves is not signed by anything that speaks for the broker:
/// only the root-issued AK certificate ties it to the TPM that made the quote (enrolment proved
/// the AK and that EK share a TPM, and wrote the EK certificate's digest into the AK's).
fn check_ek_binding(ak_cert: &Certificate, ek_pem: &[u8]) -> Result<(), QuoteError> {
    let bad = |reason: &str| QuoteError::EkNotAccepted {
        reason: reason.into(),
    };
    let ek = Certificate::parse(ek_pem).map_err(|_| bad("the EK certificate is unparseable"))?;
    let served =
        ek_certificate_digest(&ek).map_err(|_| bad("the EK certificate is unparseable"))?;
    let Some(ext) = ak_cert.extension(crate::cert::SEB_EK_CERTIFICATE_OID) else {
        return Err(bad(
            "the AK certificate names no EK certificate (enrolled by an older seb): run `seb \
             attest enroll` on the broker host again",
        ));
    };
    let bound = <der::asn1::OctetString as der::Decode>::from_der(ext.extn_value.as_bytes())
        .map_err(|_| bad("the AK certificate's sebEkCertificate is malformed"))?;
    if bound.as_bytes() != served.as_slice() {
        return Err(bad(
            "the EK certificate served is not the one the attestation key was enrolled against",
        ));
    }
    Ok(())
}

fn check_age(last_good: Option<u64>, now: SystemTime, max: Duration) -> Result<(), QuoteError> {
    let now = crate::time::unix(now);
    let age = now.saturating_sub(last_good.ok_or(QuoteError::NeverChecked)?);
    if age > max.as_secs() {
        return Err(QuoteError::Stale {
            age_secs: age,
            max_secs: max.as_secs(),
        });
    }
    Ok(())
}

fn pad(value: &[u8], size: usize) -> Option<Vec<u8>> {
    let value = match value.iter().position(|b| *b != 0) {
        Some(i) => &value[i..],
        None => &[][..],
    };
    if value.len() > size {
        return None;
    }
    let mut out = vec![0u8; size - value.len()];
    out.extend_from_slice(value);
    Some(out)
}

/// Hex of each value, for evidence and policies.
pub fn hex_pcrs(pcrs: &BTreeMap<u8, Vec<u8>>) -> BTreeMap<u8, String> {
    pcrs.iter().map(|(k, v)| (*k, hex::encode(v))).collect()
}

#[cfg(test)]
mod tests;
