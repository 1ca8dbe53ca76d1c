//! Errors of attestation: [`AttestError`] from an attestor (the device side), and
//! [`QuoteError`], why evidence was rejected, with its stable snake_case codes.

use super::{MAX_NONCE, MIN_NONCE};

/// Errors from an attestor (the device side), distinct from verification failures.
#[derive(Debug, thiserror::Error)]
pub enum AttestError {
    /// The TPM failed or is unreachable.
    #[error("TPM unavailable during {operation}")]
    Tpm {
        /// What we were doing.
        operation: &'static str,
        /// The TPM/TSS error.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The PCRs kept changing between the read and the quote.
    #[error("PCR values changed during {attempts} consecutive quote attempts")]
    PcrRace {
        /// Attempts made.
        attempts: u32,
    },
    /// The attestation identity (EK, AK, AK certificate) is missing or inconsistent.
    #[error("attestation identity: {0}")]
    Identity(String),
    /// The nonce is too short or too long.
    #[error("nonce must be {MIN_NONCE} to {MAX_NONCE} bytes, got {0}")]
    Nonce(usize),
    /// The TPM is taken by the broker's own self-check and other quotes; try again later.
    #[error("the TPM is busy; try again")]
    Busy,
    /// Files (AK blob, certificates, event log, policy) could not be read or written.
    #[error("{what}: {reason}")]
    File {
        /// Which file.
        what: String,
        /// Why.
        reason: String,
    },
}

/// Why evidence was rejected. Messages name what differed; nothing here carries I/O types.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QuoteError {
    /// A structure could not be parsed.
    #[error("malformed {what}: {reason}")]
    Malformed {
        /// Which structure.
        what: &'static str,
        /// What is wrong.
        reason: &'static str,
    },
    /// The signed structure is not a TPM-generated quote.
    #[error("not a TPM quote: {reason}")]
    NotAQuote {
        /// What is wrong.
        reason: &'static str,
    },
    /// An algorithm seb does not verify.
    #[error("unsupported algorithm 0x{id:04x} in {what}")]
    UnsupportedAlgorithm {
        /// Where.
        what: &'static str,
        /// TPM algorithm id.
        id: u16,
    },
    /// The quote's qualifying data is not bound to the nonce the verifier chose and the TLS
    /// certificate of its session: a replayed, stale or redirected quote.
    #[error("the quote's qualifying data is not bound to the nonce we sent and this TLS session's certificate (replayed or stale quote)")]
    NonceMismatch,
    /// The quote is bound to the verifier's nonce but to another TLS server certificate than the
    /// one of the session that served it: evidence relayed by someone else.
    #[error("the quote is bound to the TLS certificate with SHA-256 {bound}, but it came over a TLS session with the certificate {session} (relayed evidence, or the broker's TLS certificate changed after this connection was opened)")]
    TlsBindingMismatch {
        /// Hex SHA-256 of the certificate the quote is bound to.
        bound: String,
        /// Hex SHA-256 of the certificate the verifier saw.
        session: String,
    },
    /// The TLS server certificate of the session is not a broker TLS certificate issued
    /// directly by the trusted root that certified the AK.
    #[error("the TLS server certificate of this session is not a broker certificate issued directly by the trusted root: {reason}")]
    TlsNotCertified {
        /// Why.
        reason: String,
    },
    /// The AK certificate and the TLS certificate name different brokers.
    #[error("the attestation key belongs to broker {ak_broker:?} but the TLS session to broker {tls_broker:?}")]
    BrokerMismatch {
        /// The broker id in the AK certificate's subject.
        ak_broker: String,
        /// The broker id in the TLS certificate's subject.
        tls_broker: String,
    },
    /// The AK certificate does not chain to the trusted root.
    #[error("the attestation key certificate is not certified by the trusted root: {reason}")]
    AkNotCertified {
        /// Why.
        reason: String,
    },
    /// The quote's signature does not verify with the certified AK (another TPM, another key,
    /// or a modified quote).
    #[error("the quote signature does not verify with the certified attestation key (quote modified or signed by another key)")]
    BadSignature,
    /// The quoted PCR selection is not what the policy asks for.
    #[error("the quote covers {quoted} but the policy requires {required}")]
    SelectionMismatch {
        /// What the quote covers.
        quoted: String,
        /// What the policy selects.
        required: String,
    },
    /// The PCR values served with the quote do not hash to its PCR digest.
    #[error("the PCR values served with the quote do not match the quote's PCR digest")]
    PcrDigestMismatch,
    /// The event log does not replay to a quoted PCR value.
    #[error("the event log does not replay to PCR {pcr}: replayed {replayed}, quoted {quoted}")]
    EventLogMismatch {
        /// PCR index.
        pcr: u8,
        /// Replayed value (hex).
        replayed: String,
        /// Quoted value (hex).
        quoted: String,
    },
    /// A PCR differs from its reference value.
    #[error("PCR {pcr} is {actual}, the policy expects {expected}")]
    PcrPolicy {
        /// PCR index.
        pcr: u8,
        /// Reference value (hex).
        expected: String,
        /// Quoted value (hex).
        actual: String,
    },
    /// The events measured into a PCR differ from the reference events.
    #[error("the events measured into PCR {pcr} differ from the policy: {detail}")]
    EventPolicy {
        /// PCR index.
        pcr: u8,
        /// First difference.
        detail: String,
    },
    /// The EK certificate is not issued by an accepted EK CA.
    #[error("the EK certificate is not issued by an accepted EK CA: {reason}")]
    EkNotAccepted {
        /// Why.
        reason: String,
    },
    /// The policy quotes a PCR that can be reset without rebooting the host: whatever it
    /// holds, software could have put there.
    #[error(
        "PCR {pcr} can be reset without rebooting the host ({reason}); a policy that quotes it \
         proves nothing"
    )]
    ResettablePcr {
        /// PCR index.
        pcr: u8,
        /// Why it is resettable.
        reason: &'static str,
    },
    /// The broker's last good self-check is older than the policy's maximum age.
    #[error(
        "the broker's last good self-check is {age_secs} s old, the policy allows {max_secs} s"
    )]
    Stale {
        /// Age in seconds.
        age_secs: u64,
        /// Maximum in seconds.
        max_secs: u64,
    },
    /// The broker reports no good self-check since it started.
    #[error("the broker has not passed a self-check since it started")]
    NeverChecked,
    /// The broker reports that its latest self-check failed (it refuses to issue tokens): the
    /// quote may be good while the broker itself says its state is not.
    #[error("the broker reports that its latest self-check failed: {reason}")]
    SelfCheckFailed {
        /// The broker's reason.
        reason: String,
    },
}

impl QuoteError {
    /// A stable snake_case code for scripts and logs.
    pub fn code(&self) -> &'static str {
        match self {
            QuoteError::Malformed { .. } => "malformed_evidence",
            QuoteError::NotAQuote { .. } => "not_a_quote",
            QuoteError::UnsupportedAlgorithm { .. } => "unsupported_algorithm",
            QuoteError::NonceMismatch => "nonce_mismatch",
            QuoteError::TlsBindingMismatch { .. } => "tls_binding_mismatch",
            QuoteError::TlsNotCertified { .. } => "tls_not_certified",
            QuoteError::BrokerMismatch { .. } => "broker_mismatch",
            QuoteError::AkNotCertified { .. } => "ak_not_certified",
            QuoteError::BadSignature => "bad_quote_signature",
            QuoteError::SelectionMismatch { .. } => "pcr_selection_mismatch",
            QuoteError::PcrDigestMismatch => "pcr_digest_mismatch",
            QuoteError::EventLogMismatch { .. } => "event_log_mismatch",
            QuoteError::PcrPolicy { .. } => "pcr_policy_mismatch",
            QuoteError::EventPolicy { .. } => "event_policy_mismatch",
            QuoteError::EkNotAccepted { .. } => "ek_not_accepted",
            QuoteError::ResettablePcr { .. } => "resettable_pcr",
            QuoteError::Stale { .. } | QuoteError::NeverChecked => "stale_self_check",
            QuoteError::SelfCheckFailed { .. } => "self_check_failed",
        }
    }
}
