//! Execution receipts: what an executor signs after it acted on a token, so that the broker,
//! the agent and an auditor can hold it to what it says it did.
//!
//! A receipt is the JSON object `{"body": {...}, "signature": "..."}`. The signature is
//! ECDSA by the executor's own key (P-384 over SHA-384, or P-256 over SHA-256: the hash follows
//! the curve of the executor certificate's key), DER-encoded, base64url without padding, over
//! the UTF-8 bytes of the RFC 8785 (JCS) canonical JSON of `body`. `body.typ` is
//! [`RECEIPT_TYPE`], which keeps a receipt signature from being anything else the executor's
//! key might sign (docs/VERIFYING.md §"Receipts").
//!
//! This module is pure (no I/O, no clock) and builds with `--no-default-features`. It never
//! sees a broker key: receipts are signed by the executor's key.

use sha2::{Digest, Sha256};

use crate::approval::ApproverKey;
use crate::base64url;
use crate::cert::{Certificate, Purpose};
use crate::chain::CertKey;

/// `body.typ` of every receipt of this version.
pub const RECEIPT_TYPE: &str = "seb-receipt-v1";

/// Largest receipt accepted, in bytes of JSON.
pub const MAX_RECEIPT_LEN: usize = 16 * 1024;

/// What the executor did, as it signs it.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReceiptBody {
    /// Always [`RECEIPT_TYPE`].
    pub typ: String,
    /// The token id (`jti`) the executor redeemed.
    pub jti: String,
    /// The request the token was issued for (from the broker's redemption answer).
    pub request_id: String,
    /// The operation performed (the token's).
    pub operation: String,
    /// The resource acted on (the token's).
    pub resource: String,
    /// base64url SHA-384 of the JCS form of the parameters used (the token's `params_digest`).
    pub params_digest: String,
    /// The action's exit status: the process exit code, `-1` when it was killed (timeout or
    /// signal), or for an HTTP action the response status.
    pub exit_code: i64,
    /// Whether the action was killed on its timeout.
    pub timed_out: bool,
    /// base64url SHA-256 of the action's standard output (HTTP action: the response body).
    pub stdout_sha256: String,
    /// base64url SHA-256 of the action's standard error (HTTP action: of nothing).
    pub stderr_sha256: String,
    /// When the action started, Unix milliseconds.
    pub started_at_ms: u64,
    /// When it finished, Unix milliseconds.
    pub finished_at_ms: u64,
    /// base64url SHA-256 thumbprint of the executor's certificate (DER).
    pub executor: String,
}

/// A signed receipt.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Receipt {
    /// What is signed.
    pub body: ReceiptBody,
    /// base64url DER ECDSA signature over the JCS form of `body`.
    pub signature: String,
}

/// Why a receipt does not verify.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ReceiptError {
    /// The receipt is not the JSON this module writes.
    #[error("malformed receipt: {0}")]
    Malformed(String),
    /// `body.typ` is not [`RECEIPT_TYPE`].
    #[error("receipt type {0:?} is not {RECEIPT_TYPE}")]
    WrongType(String),
    /// The receipt names another executor certificate than the one given.
    #[error("the receipt names executor {named}, not the certificate given ({given})")]
    WrongExecutor {
        /// Thumbprint in the receipt.
        named: String,
        /// Thumbprint of the certificate checked against.
        given: String,
    },
    /// The certificate is not certified for receipts (the executor key purpose, arc.4.3).
    #[error("not an executor's receipt key: {0}")]
    WrongKeyPurpose(String),
    /// The certificate's key cannot verify receipts.
    #[error("executor certificate key unusable: {0}")]
    Key(String),
    /// The signature does not verify.
    #[error("the receipt signature does not verify under the executor certificate")]
    BadSignature,
}

impl ReceiptError {
    /// Stable snake_case code.
    pub fn code(&self) -> &'static str {
        match self {
            ReceiptError::Malformed(_) => "malformed_receipt",
            ReceiptError::WrongType(_) => "wrong_receipt_type",
            ReceiptError::WrongExecutor { .. } => "wrong_executor",
            ReceiptError::WrongKeyPurpose(_) => "wrong_key_purpose",
            ReceiptError::Key(_) => "unusable_executor_key",
            ReceiptError::BadSignature => "bad_receipt_signature",
        }
    }
}

/// The exact bytes signed: the RFC 8785 canonical JSON of `body`.
pub fn signing_input(body: &ReceiptBody) -> Result<Vec<u8>, ReceiptError> {
    let value = serde_json::to_value(body).map_err(|e| ReceiptError::Malformed(e.to_string()))?;
    crate::canonical::canonicalize(&value)
        .map(String::into_bytes)
        .map_err(|e| ReceiptError::Malformed(e.to_string()))
}

/// Signs `body` with the executor's own key.
pub fn sign(body: ReceiptBody, key: &ApproverKey) -> Result<Receipt, ReceiptError> {
    let message = signing_input(&body)?;
    let signature = base64url::encode(&key.sign(&message));
    Ok(Receipt { body, signature })
}

/// Parses a receipt from JSON (strictly: duplicate keys and unknown fields are refused).
pub fn parse(text: &[u8]) -> Result<Receipt, ReceiptError> {
    if text.len() > MAX_RECEIPT_LEN {
        return Err(ReceiptError::Malformed("too large".into()));
    }
    let value =
        crate::json::parse_strict(text).map_err(|e| ReceiptError::Malformed(e.to_string()))?;
    crate::json::object_as(value, &[&["body"]]).map_err(ReceiptError::Malformed)
}

/// Verifies that `receipt` was signed by the key of `executor`, names that certificate, and
/// that the certificate carries the receipt key purpose (arc.4.3, which `seb cert issue --role
/// executor` writes) and no other seb key purpose. Whether `executor` is a valid executor certificate of this deployment (chain, role,
/// validity, revocation) is the caller's check.
pub fn verify(receipt: &Receipt, executor: &Certificate) -> Result<(), ReceiptError> {
    if receipt.body.typ != RECEIPT_TYPE {
        return Err(ReceiptError::WrongType(receipt.body.typ.clone()));
    }
    let given = executor
        .thumbprint_sha256()
        .map(|t| base64url::encode(&t))
        .map_err(|e| ReceiptError::Key(e.to_string()))?;
    if receipt.body.executor != given {
        return Err(ReceiptError::WrongExecutor {
            named: receipt.body.executor.clone(),
            given,
        });
    }
    check_shape(&receipt.body)?;
    crate::chain::require_purpose(executor, Purpose::Receipt)
        .map_err(|e| ReceiptError::WrongKeyPurpose(e.to_string()))?;
    let key = CertKey::of(executor).map_err(ReceiptError::Key)?;
    let signature = base64url::decode(&receipt.signature)
        .ok_or_else(|| ReceiptError::Malformed("signature is not base64url".into()))?;
    let message = signing_input(&receipt.body)?;
    if crate::approval::verify(&key, &message, &signature) {
        Ok(())
    } else {
        Err(ReceiptError::BadSignature)
    }
}

/// What every receipt must look like whatever signed it: its digests are digests (base64url
/// of 32 bytes for SHA-256, 48 for the SHA-384 `params_digest`) and it finished no earlier than
/// it started.
fn check_shape(body: &ReceiptBody) -> Result<(), ReceiptError> {
    for (field, value, len) in [
        ("params_digest", &body.params_digest, 48),
        ("stdout_sha256", &body.stdout_sha256, 32),
        ("stderr_sha256", &body.stderr_sha256, 32),
    ] {
        if base64url::decode(value).is_none_or(|bytes| bytes.len() != len) {
            return Err(ReceiptError::Malformed(format!(
                "{field} is not a base64url digest of {len} bytes"
            )));
        }
    }
    if body.finished_at_ms < body.started_at_ms {
        return Err(ReceiptError::Malformed(
            "finished_at_ms is before started_at_ms".into(),
        ));
    }
    Ok(())
}

/// base64url SHA-256 of `bytes`, as the receipt's output digests are written.
pub fn output_digest(bytes: &[u8]) -> String {
    base64url::encode(&Sha256::digest(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(executor: &str) -> ReceiptBody {
        ReceiptBody {
            typ: RECEIPT_TYPE.into(),
            jti: "j".into(),
            request_id: "r".into(),
            operation: "demo.write".into(),
            resource: "demo/files".into(),
            params_digest: base64url::encode(&[7; 48]),
            exit_code: 0,
            timed_out: false,
            stdout_sha256: output_digest(b""),
            stderr_sha256: output_digest(b""),
            started_at_ms: 1,
            finished_at_ms: 2,
            executor: executor.into(),
        }
    }

    #[test]
    fn the_signing_input_is_the_canonical_json_of_the_body() {
        let text = String::from_utf8(signing_input(&body("x")).unwrap()).unwrap();
        assert!(
            text.starts_with("{\"executor\":\"x\",\"exit_code\":0,"),
            "{text}"
        );
        assert!(text.ends_with("\"typ\":\"seb-receipt-v1\"}"), "{text}");
    }

    #[test]
    fn a_receipt_parses_strictly() {
        assert!(matches!(
            parse(br#"{"body":{},"signature":"x","extra":1}"#),
            Err(ReceiptError::Malformed(_))
        ));
        assert!(matches!(
            parse(br#"{"signature":"x","signature":"y"}"#),
            Err(ReceiptError::Malformed(_))
        ));
    }

    /// A certificate for `key` with `role`, issued by a test root.
    fn certificate(
        root: &crate::testkit::Ca,
        key: &p384::ecdsa::SigningKey,
        role: crate::grants::RoleKind,
    ) -> Certificate {
        use crate::testkit::{grant, grants, now, spki};
        let agent = role == crate::grants::RoleKind::Agent;
        crate::ca::issue_leaf_under(
            &root.key,
            &root.chain,
            crate::ca::LeafRequest {
                public_key: spki(key),
                subject: crate::ca::parse_subject("CN=x").unwrap(),
                role: crate::grants::Role::new(role, vec![]).unwrap(),
                grants: agent.then(|| grants(&grant("demo.write", "demo/files", "5m"))),
                ttl: std::time::Duration::from_secs(86_400),
            },
            std::time::Duration::from_secs(365 * 86_400),
            now(),
        )
        .unwrap()
    }

    #[test]
    fn only_a_certificate_with_the_receipt_purpose_signs_receipts() {
        use crate::grants::RoleKind;
        let root = crate::testkit::Ca::root("root");
        let key = crate::testkit::key();
        let signer = ApproverKey::P384(key.clone());
        for (role, purpose_ok) in [(RoleKind::Executor, true), (RoleKind::Agent, false)] {
            let cert = certificate(&root, &key, role);
            let thumb = base64url::encode(&cert.thumbprint_sha256().unwrap());
            let receipt = sign(body(&thumb), &signer).unwrap();
            let result = verify(&receipt, &cert);
            if purpose_ok {
                assert_eq!(result, Ok(()));
                let mut altered = receipt.clone();
                altered.body.exit_code = 1;
                assert_eq!(verify(&altered, &cert), Err(ReceiptError::BadSignature));
            } else {
                // The same key, certified as an agent: its signature is right, its purpose is not.
                let err = result.unwrap_err();
                assert_eq!(err.code(), "wrong_key_purpose", "{err}");
            }
        }
    }
}
