//! What an approver signs: the one definition of the approval message, shared by the broker
//! (which checks an approval when it is posted), the offline verifier (which checks the
//! approvals carried in a token) and the approver's command line (which signs).
//!
//! The signed message is the UTF-8 text
//!
//! ```text
//! seb-approval-v1\n<decision>\n<request_digest>\n<agent>
//! ```
//!
//! with no trailing newline, where `<decision>` is `approve` or `reject`, `<request_digest>`
//! is the base64url SHA-384 over the RFC 8785 form of `{operation, resource, params}` (the
//! token's `authorization_details[0].request_digest`) and `<agent>` is the base64url SHA-256
//! thumbprint of the requesting agent's certificate (the token's `cnf.x5t#S256`). The
//! approver signs it with its own key: ECDSA P-256 over SHA-256 or P-384 over SHA-384 (the
//! hash follows the key's curve), DER-encoded signature, base64url without padding.
//!
//! The domain-separation prefix keeps an approval from being anything else an approver's key
//! might sign; the decision keeps a rejection from counting as an approval; the agent's
//! thumbprint keeps an approval of one agent's request from being moved into another agent's
//! token. This module is pure (no I/O, no clock) and builds with `--no-default-features`; it
//! never sees a broker key.

use sha2::{Digest, Sha256, Sha384};

use crate::chain::CertKey;

/// The domain-separation prefix (first line) of every approval message.
pub const CONTEXT: &str = "seb-approval-v1";

/// An approver's decision.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[cfg_attr(feature = "broker", derive(schemars::JsonSchema))]
#[serde(rename_all = "snake_case")]
pub enum Decision {
    /// Counts towards the quorum.
    Approve,
    /// Closes the request: no token.
    Reject,
}

impl Decision {
    /// `approve` or `reject`.
    pub fn as_str(self) -> &'static str {
        match self {
            Decision::Approve => "approve",
            Decision::Reject => "reject",
        }
    }

    /// Parses `approve` / `reject`.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "approve" => Some(Decision::Approve),
            "reject" => Some(Decision::Reject),
            _ => None,
        }
    }
}

/// The exact bytes an approver signs (see the module documentation).
pub fn message(decision: Decision, request_digest: &str, agent_x5t: &str) -> Vec<u8> {
    format!(
        "{CONTEXT}\n{}\n{request_digest}\n{agent_x5t}",
        decision.as_str()
    )
    .into_bytes()
}

/// Whether `signature` (DER ECDSA) by `key` verifies over `message`, hashing with the hash
/// that goes with the key's curve (SHA-256 for P-256, SHA-384 for P-384).
pub fn verify(key: &CertKey, message: &[u8], signature_der: &[u8]) -> bool {
    match key {
        CertKey::P256(_) => key.verify_prehash_der(&Sha256::digest(message), signature_der),
        CertKey::P384(_) => key.verify_prehash_der(&Sha384::digest(message), signature_der),
    }
}

/// An approver's own signing key (software, read from the approver's PKCS#8 file). Never a
/// broker key: broker keys stay in the device.
pub enum ApproverKey {
    /// P-256 (signs over SHA-256).
    P256(p256::ecdsa::SigningKey),
    /// P-384 (signs over SHA-384).
    P384(p384::ecdsa::SigningKey),
}

/// Why a key file that seb cannot read is not the unencrypted PKCS#8 key it wants, with the
/// fix, when it is one of the usual other forms (a SEC1 or an encrypted key).
pub fn not_pkcs8(key_pem: &[u8]) -> Option<&'static str> {
    let text = String::from_utf8_lossy(key_pem);
    if text.contains("BEGIN EC PRIVATE KEY") {
        Some(
            "the key file holds a SEC1 key (BEGIN EC PRIVATE KEY); seb reads PKCS#8: convert it \
             with `openssl pkcs8 -topk8 -nocrypt -in KEY -out KEY.pkcs8` (or make keys with \
             `seb keygen`)",
        )
    } else if text.contains("BEGIN ENCRYPTED PRIVATE KEY") {
        Some(
            "the key file is encrypted; seb reads an unencrypted PKCS#8 key (BEGIN PRIVATE KEY) \
             from a file only its holder can read",
        )
    } else {
        None
    }
}

impl ApproverKey {
    /// Reads a PKCS#8 PEM private key of either curve.
    pub fn from_pkcs8_pem(pem: &str) -> Result<Self, String> {
        use p256::pkcs8::DecodePrivateKey;
        if let Ok(k) = p384::ecdsa::SigningKey::from_pkcs8_pem(pem) {
            return Ok(ApproverKey::P384(k));
        }
        p256::ecdsa::SigningKey::from_pkcs8_pem(pem)
            .map(ApproverKey::P256)
            .map_err(|_| match not_pkcs8(pem.as_bytes()) {
                Some(why) => why.to_owned(),
                None => "the key is not a PKCS#8 EC P-256 or P-384 private key".to_owned(),
            })
    }

    /// Signs `message` (DER signature).
    pub fn sign(&self, message: &[u8]) -> Vec<u8> {
        match self {
            ApproverKey::P256(k) => {
                let sig: p256::ecdsa::Signature = signature::Signer::sign(k, message);
                sig.to_der().as_bytes().to_vec()
            }
            ApproverKey::P384(k) => {
                let sig: p384::ecdsa::Signature = signature::Signer::sign(k, message);
                sig.to_der().as_bytes().to_vec()
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_message_is_the_documented_text() {
        assert_eq!(
            message(Decision::Approve, "RD", "AG"),
            b"seb-approval-v1\napprove\nRD\nAG".to_vec()
        );
        assert_eq!(
            message(Decision::Reject, "RD", "AG"),
            b"seb-approval-v1\nreject\nRD\nAG".to_vec()
        );
    }

    #[test]
    fn signatures_verify_only_over_their_message() {
        use p384::elliptic_curve::Generate;
        let sk = p384::ecdsa::SigningKey::try_generate().unwrap();
        let key = CertKey::P384(*sk.verifying_key());
        let approver = ApproverKey::P384(sk);
        let m = message(Decision::Approve, "RD", "AG");
        let sig = approver.sign(&m);
        assert!(verify(&key, &m, &sig));
        assert!(!verify(&key, &message(Decision::Reject, "RD", "AG"), &sig));
        assert!(!verify(&key, &message(Decision::Approve, "RX", "AG"), &sig));
        assert!(!verify(&key, &message(Decision::Approve, "RD", "AX"), &sig));

        let sk = p256::ecdsa::SigningKey::try_generate().unwrap();
        let key = CertKey::P256(*sk.verifying_key());
        let sig = ApproverKey::P256(sk).sign(&m);
        assert!(verify(&key, &m, &sig));
    }
}
