//! Checkpoints (signed tree heads) in the C2SP `tlog-checkpoint` text format, signed as a
//! C2SP `signed-note`:
//!
//! ```text
//! <origin>\n
//! <tree size, decimal>\n
//! <root hash, standard base64>\n
//! \n
//! — <key name> <base64(key id (4 bytes) ‖ DER ECDSA signature)>\n
//! ```
//!
//! The signature is ECDSA P-384 with SHA-384 over the note text (the three body lines with
//! their newlines), DER-encoded; signed-note has no registered type for it, so seb uses the
//! signature-type byte 0xFF and computes the key id as the first 4 bytes of
//! `SHA-256(key name ‖ 0x0A ‖ 0xFF ‖ SubjectPublicKeyInfo DER)`. docs/AUDIT.md records this
//! deviation. This module verifies; signing takes a closure, so the key stays in the device.

use base64ct::{Base64, Encoding};
use sha2::{Digest, Sha256, Sha384};

use super::merkle::Hash;

/// The signed-note signature-type byte seb uses for ECDSA P-384 / SHA-384 (DER).
pub const SIGNATURE_TYPE: u8 = 0xFF;
/// Longest note text the parser looks at.
pub const MAX_NOTE_LEN: usize = 16 * 1024;
/// Most signature lines the parser accepts (signed-note's own cap).
pub const MAX_SIGNATURES: usize = 100;
const DASH: &str = "\u{2014} ";

/// An unsigned checkpoint: which log, how many entries, and the root over them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checkpoint {
    /// The log's origin line (`<broker id>/audit`), also the signing key's name.
    pub origin: String,
    /// Number of entries.
    pub size: u64,
    /// RFC 6962 root hash over them.
    pub root: Hash,
}

/// A signature line of a note.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NoteSignature {
    /// Key name.
    pub name: String,
    /// 4-byte key id.
    pub key_id: [u8; 4],
    /// DER ECDSA signature.
    pub signature: Vec<u8>,
}

/// Why a checkpoint was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CheckpointError {
    /// Not a note of the checkpoint shape.
    #[error("malformed checkpoint: {0}")]
    Malformed(&'static str),
    /// The origin is not the one expected.
    #[error("checkpoint is for log {found:?}, expected {expected:?}")]
    WrongOrigin {
        /// Expected origin.
        expected: String,
        /// Found origin.
        found: String,
    },
    /// No signature line by the expected key.
    #[error("checkpoint carries no signature by key {name:?} ({key_id})")]
    NoSignature {
        /// Key name.
        name: String,
        /// Key id, hex.
        key_id: String,
    },
    /// The expected key's signature does not verify.
    #[error("checkpoint signature by {name:?} does not verify")]
    BadSignature {
        /// Key name.
        name: String,
    },
}

impl Checkpoint {
    /// The note text that is signed.
    pub fn body(&self) -> String {
        format!(
            "{}\n{}\n{}\n",
            self.origin,
            self.size,
            Base64::encode_string(&self.root)
        )
    }

    /// Parses the body lines (extension lines after the root are refused: seb writes none).
    pub fn parse_body(body: &str) -> Result<Self, CheckpointError> {
        let lines: Vec<&str> = body
            .strip_suffix('\n')
            .ok_or(CheckpointError::Malformed("body does not end in a newline"))?
            .split('\n')
            .collect();
        let [origin, size, root] = lines.as_slice() else {
            return Err(CheckpointError::Malformed("body is not three lines"));
        };
        if origin.is_empty() || origin.chars().any(|c| c.is_whitespace() || c == '+') {
            return Err(CheckpointError::Malformed("bad origin"));
        }
        if size.is_empty()
            || !size.bytes().all(|b| b.is_ascii_digit())
            || (size.len() > 1 && size.starts_with('0'))
        {
            return Err(CheckpointError::Malformed("bad tree size"));
        }
        let size: u64 = size
            .parse()
            .map_err(|_| CheckpointError::Malformed("bad tree size"))?;
        let root = Base64::decode_vec(root)
            .ok()
            .and_then(|r| Hash::try_from(r).ok())
            .ok_or(CheckpointError::Malformed("bad root hash"))?;
        Ok(Self {
            origin: (*origin).to_owned(),
            size,
            root,
        })
    }

    /// The signed note: body, blank line, one signature line by `name`. `sign` returns the
    /// DER ECDSA signature over the body (SHA-384 inside).
    pub fn sign<E>(
        &self,
        spki_der: &[u8],
        sign: impl FnOnce(&[u8]) -> Result<Vec<u8>, E>,
    ) -> Result<String, E> {
        let body = self.body();
        let signature = sign(body.as_bytes())?;
        let mut blob = key_id(&self.origin, spki_der).to_vec();
        blob.extend_from_slice(&signature);
        Ok(format!(
            "{body}\n{DASH}{} {}\n",
            self.origin,
            Base64::encode_string(&blob)
        ))
    }
}

/// The signed-note key id of a P-384 key named `name`.
pub fn key_id(name: &str, spki_der: &[u8]) -> [u8; 4] {
    let mut h = Sha256::new();
    h.update(name.as_bytes());
    h.update([0x0A, SIGNATURE_TYPE]);
    h.update(spki_der);
    let d = h.finalize();
    [d[0], d[1], d[2], d[3]]
}

/// Splits a signed note into its body and signature lines.
pub fn parse_note(text: &str) -> Result<(String, Vec<NoteSignature>), CheckpointError> {
    if text.len() > MAX_NOTE_LEN {
        return Err(CheckpointError::Malformed("note too long"));
    }
    let split = text.rfind("\n\n").ok_or(CheckpointError::Malformed(
        "no blank line before the signatures",
    ))?;
    let body = &text[..split + 1];
    let sigs = text[split + 2..]
        .strip_suffix('\n')
        .ok_or(CheckpointError::Malformed(
            "signatures do not end in a newline",
        ))?;
    let mut signatures = Vec::new();
    for line in sigs.split('\n') {
        let rest = line.strip_prefix(DASH).ok_or(CheckpointError::Malformed(
            "signature line without the em dash",
        ))?;
        let (name, b64) = rest
            .split_once(' ')
            .ok_or(CheckpointError::Malformed("signature line without a name"))?;
        let blob = Base64::decode_vec(b64)
            .map_err(|_| CheckpointError::Malformed("signature is not base64"))?;
        if name.is_empty() || blob.len() < 5 {
            return Err(CheckpointError::Malformed("signature line too short"));
        }
        signatures.push(NoteSignature {
            name: name.to_owned(),
            key_id: [blob[0], blob[1], blob[2], blob[3]],
            signature: blob[4..].to_vec(),
        });
        if signatures.len() > MAX_SIGNATURES {
            return Err(CheckpointError::Malformed("too many signature lines"));
        }
    }
    Ok((body.to_owned(), signatures))
}

/// Verifies a signed checkpoint note against the P-384 key `key` (with its SPKI DER) named
/// `origin`, and returns the checkpoint. The first signature line with that name and key id
/// decides: if it does not verify, the note is refused.
pub fn open(
    text: &str,
    origin: &str,
    key: &p384::ecdsa::VerifyingKey,
    spki_der: &[u8],
) -> Result<Checkpoint, CheckpointError> {
    use signature::hazmat::PrehashVerifier;
    let (body, signatures) = parse_note(text)?;
    let checkpoint = Checkpoint::parse_body(&body)?;
    if checkpoint.origin != origin {
        return Err(CheckpointError::WrongOrigin {
            expected: origin.to_owned(),
            found: checkpoint.origin,
        });
    }
    let id = key_id(origin, spki_der);
    let sig = signatures
        .iter()
        .find(|s| s.name == origin && s.key_id == id)
        .ok_or_else(|| CheckpointError::NoSignature {
            name: origin.to_owned(),
            key_id: hex::encode(id),
        })?;
    let digest = Sha384::digest(body.as_bytes());
    let ok = p384::ecdsa::Signature::from_der(&sig.signature)
        .is_ok_and(|s| key.verify_prehash(&digest, &s).is_ok());
    if !ok {
        return Err(CheckpointError::BadSignature {
            name: origin.to_owned(),
        });
    }
    Ok(checkpoint)
}

/// The origin line of the audit log of broker `broker_id`.
pub fn origin_for(broker_id: &str) -> String {
    format!("{broker_id}/audit")
}

#[cfg(test)]
mod tests {
    use p384::ecdsa::{signature::Signer, DerSignature, SigningKey};
    use spki::EncodePublicKey;

    use super::*;

    /// A software key: these tests check the note format and verification logic only.
    fn key(seed: u8) -> (SigningKey, Vec<u8>) {
        let sk = SigningKey::from_slice(&[seed; 48]).unwrap();
        let spki = sk.verifying_key().to_public_key_der().unwrap().into_vec();
        (sk, spki)
    }

    fn signed(sk: &SigningKey, spki: &[u8], cp: &Checkpoint) -> String {
        cp.sign(spki, |body| {
            let sig: DerSignature = sk.sign(body);
            Ok::<_, ()>(sig.as_bytes().to_vec())
        })
        .unwrap()
    }

    #[test]
    fn checkpoints_verify_under_their_key_only() {
        let (sk, spki) = key(7);
        let cp = Checkpoint {
            origin: "broker-1/audit".into(),
            size: 42,
            root: [9; 32],
        };
        let note = signed(&sk, &spki, &cp);
        assert!(note.starts_with("broker-1/audit\n42\nCQkJ"));
        assert!(note.contains("\n\n\u{2014} broker-1/audit "));
        assert_eq!(
            open(&note, "broker-1/audit", sk.verifying_key(), &spki),
            Ok(cp.clone())
        );
        // Another key, the right name: no signature with its key id.
        let (other, other_spki) = key(8);
        assert!(matches!(
            open(&note, "broker-1/audit", other.verifying_key(), &other_spki),
            Err(CheckpointError::NoSignature { .. })
        ));
        // Another key claiming this key's id: the signature fails.
        let forged = signed(&other, &spki, &cp);
        assert!(matches!(
            open(&forged, "broker-1/audit", sk.verifying_key(), &spki),
            Err(CheckpointError::BadSignature { .. })
        ));
        // Edited body under the old signature.
        let edited = note.replacen("\n42\n", "\n43\n", 1);
        assert!(matches!(
            open(&edited, "broker-1/audit", sk.verifying_key(), &spki),
            Err(CheckpointError::BadSignature { .. })
        ));
        assert!(matches!(
            open(&note, "broker-2/audit", sk.verifying_key(), &spki),
            Err(CheckpointError::WrongOrigin { .. })
        ));
        for bad in [
            "",
            "x\n1\n",
            "broker-1/audit\n01\nAA==\n\n",
            "a\n1\nAAAA\n\n\u{2014} a AAAAAAAA\n",
        ] {
            assert!(
                open(bad, "broker-1/audit", sk.verifying_key(), &spki).is_err(),
                "{bad:?}"
            );
        }
    }
}
