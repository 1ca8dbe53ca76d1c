//! The offline audit-log verifier: given only the root certificate (and the certificates the
//! broker publishes), it recomputes the tree over every entry, checks every checkpoint's
//! signature, the audit certificate's chain and purpose, and that the log extends a checkpoint
//! the auditor kept from before. `seb audit verify` and the tamper tests run it.
//!
//! It links no device, store or async code (builds with `--no-default-features`).

use std::time::Duration;

use spki::EncodePublicKey;

use super::checkpoint::{self, Checkpoint, CheckpointError};
use super::entry::{Entry, EntryError};
use super::merkle::{self, CompactRange, Hash, ProofError};
use crate::cert::{Certificate, Purpose};
use crate::chain::{self, CertKey};
use crate::verify::TrustStore;

/// Why a log did not verify. Every variant says where.
#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    /// An entry is not a v1 entry in canonical form.
    #[error("entry {index}: {source}")]
    Entry {
        /// Leaf index.
        index: u64,
        /// Why.
        #[source]
        source: EntryError,
    },
    /// Entries are not numbered 0, 1, 2, … in order.
    #[error("entry at position {position} claims index {claimed}: entries are missing, inserted or reordered")]
    Sequence {
        /// Where in the input.
        position: u64,
        /// The index it claims.
        claimed: u64,
    },
    /// A leaf hash given with an entry is not the hash of the entry.
    #[error("entry {index}: its leaf hash does not match its content")]
    LeafHash {
        /// Leaf index.
        index: u64,
    },
    /// A checkpoint is malformed or its signature does not verify.
    #[error(
        "checkpoint{}: {source}",
        .size.map(|n| format!(" of size {n}")).unwrap_or_default()
    )]
    Checkpoint {
        /// Its size, when readable.
        size: Option<u64>,
        /// Why.
        #[source]
        source: CheckpointError,
    },
    /// No published certificate is a valid audit certificate that signed the checkpoint.
    #[error("checkpoint of size {size}: not signed by a valid audit certificate ({reason})")]
    Signer {
        /// Its size.
        size: u64,
        /// Why each candidate failed.
        reason: String,
    },
    /// The root recomputed from the entries differs from the signed one.
    #[error("checkpoint of size {size}: the entries give root {computed}, the checkpoint says {signed}: the log was edited")]
    RootMismatch {
        /// Tree size.
        size: u64,
        /// base64 of the recomputed root.
        computed: String,
        /// base64 of the signed root.
        signed: String,
    },
    /// A checkpoint covers more entries than were given.
    #[error("checkpoint of size {size} covers more than the {entries} entries given: entries were deleted")]
    MissingEntries {
        /// Checkpoint size.
        size: u64,
        /// Entries given.
        entries: u64,
    },
    /// Entries past the newest checkpoint: nothing signed covers them, so they prove nothing
    /// and may have been added by anyone (an export holds the log up to its newest checkpoint).
    #[error("{extra} entries after the newest checkpoint (size {size}) are covered by no signed checkpoint: entries were added")]
    UnsignedEntries {
        /// Newest checkpoint's size.
        size: u64,
        /// Entries beyond it.
        extra: u64,
    },
    /// The log is not an extension of the checkpoint the auditor kept.
    #[error("the log is not an extension of the kept checkpoint (size {kept}): {reason}")]
    NotAnExtension {
        /// Size of the kept checkpoint.
        kept: u64,
        /// What was seen.
        reason: String,
    },
    /// A proof from the broker did not verify.
    #[error("{what} proof: {source}")]
    Proof {
        /// Which proof.
        what: &'static str,
        /// Why.
        #[source]
        source: ProofError,
    },
    /// Two checkpoints name different logs.
    #[error("checkpoints of different logs: {0:?} and {1:?}")]
    Origins(String, String),
    /// Nothing to verify.
    #[error("no checkpoint to verify against")]
    NoCheckpoint,
}

/// What a successful verification established.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    /// The latest verified checkpoint.
    pub checkpoint: Checkpoint,
    /// Its signed note text (to keep for the next run).
    pub note: String,
    /// Entries whose hashes were recomputed.
    pub entries: u64,
    /// Checkpoints whose signatures and roots were verified.
    pub checkpoints: usize,
    /// The checkpoints the auditor kept, opened and found extended, in the order given.
    pub kept: Vec<Checkpoint>,
}

/// Verifies a checkpoint note: a well-formed C2SP checkpoint signed by a certificate of
/// `trust` that chains to one of its roots and is the broker's audit certificate
/// ([`check_audit_certificate`]).
pub fn open_checkpoint(trust: &TrustStore, note: &str) -> Result<Checkpoint, AuditError> {
    let (body, _) = checkpoint::parse_note(note)
        .map_err(|source| AuditError::Checkpoint { size: None, source })?;
    let unsigned = Checkpoint::parse_body(&body)
        .map_err(|source| AuditError::Checkpoint { size: None, source })?;
    let mut reasons = Vec::new();
    for cert in trust.others() {
        let name = cert.subject_string();
        let (key, spki) = match p384_key(cert) {
            Ok(k) => k,
            Err(e) => {
                reasons.push(format!("{name}: {e}"));
                continue;
            }
        };
        match checkpoint::open(note, &unsigned.origin, &key, &spki) {
            Ok(cp) => {
                // Signed by this key: it must also be a valid audit certificate.
                return match audit_certificate_chain(trust, cert) {
                    Ok(()) => Ok(cp),
                    Err(reason) => Err(AuditError::Signer {
                        size: cp.size,
                        reason: format!("{name}: {reason}"),
                    }),
                };
            }
            Err(CheckpointError::NoSignature { .. }) => {
                reasons.push(format!("{name}: did not sign it"))
            }
            Err(source) => {
                return Err(AuditError::Checkpoint {
                    size: Some(unsigned.size),
                    source,
                })
            }
        }
    }
    Err(AuditError::Signer {
        size: unsigned.size,
        reason: reasons.join("; "),
    })
}

fn p384_key(cert: &Certificate) -> Result<(p384::ecdsa::VerifyingKey, Vec<u8>), String> {
    match CertKey::of(cert)? {
        CertKey::P384(key) => {
            let spki = key
                .to_public_key_der()
                .map_err(|e| e.to_string())?
                .into_vec();
            Ok((key, spki))
        }
        CertKey::P256(_) => Err("not a P-384 key".into()),
    }
}

/// The audit certificate must chain to a root of `trust` (signatures and path rules; its
/// expiry is not enforced, since logs are verified years after their checkpoints were signed),
/// directly: only the root certifies the broker's keys, and have the audit profile
/// ([`check_audit_certificate`]).
fn audit_certificate_chain(trust: &TrustStore, cert: &Certificate) -> Result<(), String> {
    // Inside the leaf's validity, which lies inside its issuers'.
    let at = cert.not_before() + Duration::from_secs(1);
    let intermediates = trust.intermediates();
    let path =
        chain::validate(cert, &intermediates, trust.roots(), at).map_err(|e| e.to_string())?;
    path.require_service(Purpose::Audit)
        .map_err(not_the_audit_certificate)
}

/// The audit certificate's profile ([`chain::require_purpose`] with [`Purpose::Audit`]): an
/// end entity whose key may sign (digitalSignature), with no seb role or grants, whose extended
/// key usage is exactly the audit key purpose ([`crate::cert::SEB_KP_AUDIT`], arc.4.2). The
/// token and TLS certificates chain to the same root, but carry another purpose: a checkpoint
/// signed by the token key is refused, and so is one under a certificate with no purpose.
pub fn check_audit_certificate(cert: &Certificate) -> Result<(), String> {
    chain::require_purpose(cert, Purpose::Audit).map_err(not_the_audit_certificate)
}

fn not_the_audit_certificate(e: chain::PurposeError) -> String {
    format!(
        "it is not the broker's audit certificate ({}: {e})",
        e.code()
    )
}

/// One entry as exported or served: its index, its canonical bytes, and (optionally) the leaf
/// hash the broker stated for it.
#[derive(Debug, Clone)]
pub struct LoggedEntry {
    /// Claimed leaf index.
    pub index: u64,
    /// Canonical entry bytes.
    pub bytes: Vec<u8>,
    /// Leaf hash as stated by the source, if any.
    pub leaf_hash: Option<Hash>,
}

/// Opens a checkpoint the auditor kept. One whose signer is not among the log's certificates
/// is refused as such, and when it also covers more entries than the log's newest checkpoint,
/// as what that most likely means: a log older than the kept checkpoint (replayed, truncated,
/// or an export made before `seb rotate audit`).
fn open_kept(
    trust: &TrustStore,
    note: &str,
    newest: Option<u64>,
) -> Result<Checkpoint, AuditError> {
    match open_checkpoint(trust, note) {
        Err(AuditError::Signer { size, reason }) => match newest {
            Some(newest) if size > newest => Err(AuditError::NotAnExtension {
                kept: size,
                reason: format!(
                    "the newest checkpoint has only {newest} entries: an old checkpoint is being replayed, or the log was truncated (or it is an export made before `seb rotate audit`, or the kept file is not genuine: its signer is not among this log's audit certificates: {reason})"
                ),
            }),
            _ => Err(AuditError::Signer {
                size,
                reason: format!(
                    "{reason}; a kept checkpoint may be signed by an audit key this log's certificates do not include (give its certificate with --audit-cert)"
                ),
            }),
        },
        other => other,
    }
}

/// Verifies a whole log: `entries` (every entry from index 0), every checkpoint note in
/// `notes`, and that the log extends every checkpoint the auditor kept (`kept`, often one or
/// none), in one pass over the entries.
pub fn verify_log(
    trust: &TrustStore,
    entries: &[LoggedEntry],
    notes: &[String],
    kept: &[&str],
) -> Result<Verified, AuditError> {
    let mut checkpoints: Vec<(Checkpoint, &String)> = Vec::new();
    for note in notes {
        checkpoints.push((open_checkpoint(trust, note)?, note));
    }
    checkpoints.sort_by_key(|(cp, _)| cp.size);
    let newest = checkpoints.last().map(|(cp, _)| cp.size);
    let kept = kept
        .iter()
        .map(|k| open_kept(trust, k, newest))
        .collect::<Result<Vec<_>, _>>()?;
    if let Some(first) = checkpoints.first() {
        let all = checkpoints.iter().map(|(cp, _)| cp).chain(&kept);
        for cp in all {
            if cp.origin != first.0.origin {
                return Err(AuditError::Origins(
                    first.0.origin.clone(),
                    cp.origin.clone(),
                ));
            }
        }
    }
    let Some((latest, latest_note)) = checkpoints.last().cloned() else {
        return Err(AuditError::NoCheckpoint);
    };
    for kept in &kept {
        if kept.size > latest.size {
            return Err(AuditError::NotAnExtension {
                kept: kept.size,
                reason: format!(
                    "the newest checkpoint has only {} entries: an old checkpoint is being replayed, or the log was truncated",
                    latest.size
                ),
            });
        }
    }
    // Every checkpoint (and the kept one) must be matched by the recomputed root at its size.
    let mut targets: Vec<&Checkpoint> = checkpoints.iter().map(|(cp, _)| cp).collect();
    targets.extend(&kept);
    targets.sort_by_key(|cp| cp.size);
    let mut range = CompactRange::default();
    let mut next = targets.iter().peekable();
    let check = |range: &CompactRange, cp: &Checkpoint, is_kept: bool| -> Result<(), AuditError> {
        let computed = range.root();
        if computed == cp.root {
            return Ok(());
        }
        let b64 = |h: &Hash| <base64ct::Base64 as base64ct::Encoding>::encode_string(h);
        if is_kept {
            Err(AuditError::NotAnExtension {
                kept: cp.size,
                reason: "the first entries no longer hash to the kept root (the log was rewritten: split view)".into(),
            })
        } else {
            Err(AuditError::RootMismatch {
                size: cp.size,
                computed: b64(&computed),
                signed: b64(&cp.root),
            })
        }
    };
    let is_kept = |cp: &Checkpoint| kept.iter().any(|k| std::ptr::eq(k, cp));
    while let Some(cp) = next.next_if(|cp| cp.size == 0) {
        check(&range, cp, is_kept(cp))?;
    }
    for (position, e) in entries.iter().enumerate() {
        let position = position as u64;
        if e.index != position {
            return Err(AuditError::Sequence {
                position,
                claimed: e.index,
            });
        }
        Entry::parse(&e.bytes).map_err(|source| AuditError::Entry {
            index: e.index,
            source,
        })?;
        let leaf = merkle::leaf_hash(&e.bytes);
        if e.leaf_hash.is_some_and(|h| h != leaf) {
            return Err(AuditError::LeafHash { index: e.index });
        }
        range.push(leaf);
        while let Some(cp) = next.next_if(|cp| cp.size == range.size()) {
            check(&range, cp, is_kept(cp))?;
        }
    }
    if let Some(cp) = next.next() {
        return Err(AuditError::MissingEntries {
            size: cp.size,
            entries: range.size(),
        });
    }
    if range.size() > latest.size {
        return Err(AuditError::UnsignedEntries {
            size: latest.size,
            extra: range.size() - latest.size,
        });
    }
    Ok(Verified {
        checkpoint: latest,
        note: latest_note.clone(),
        entries: range.size(),
        checkpoints: checkpoints.len(),
        kept,
    })
}

/// Verifies that checkpoint `new` extends checkpoint `old` with a consistency proof (for
/// monitors that do not fetch every entry).
pub fn verify_extension(
    old: &Checkpoint,
    new: &Checkpoint,
    proof: &[Hash],
) -> Result<(), AuditError> {
    if new.size < old.size {
        return Err(AuditError::NotAnExtension {
            kept: old.size,
            reason: format!(
                "the broker's checkpoint has only {} entries: an old checkpoint is being replayed, or the log was truncated",
                new.size
            ),
        });
    }
    if old.size == 0 {
        return Ok(());
    }
    merkle::verify_consistency(old.size, new.size, proof, &old.root, &new.root).map_err(|e| {
        AuditError::NotAnExtension {
            kept: old.size,
            reason: format!(
                "the consistency proof fails ({e}): the log was rewritten (split view)"
            ),
        }
    })
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::ca::{self, CertKind};
    use crate::testkit::{forge, key, now, resign, spki, Ca};

    #[test]
    fn a_checkpoint_error_names_its_size_as_a_number() {
        let error = |size| AuditError::Checkpoint {
            size,
            source: CheckpointError::Malformed("no size line"),
        };
        assert_eq!(
            error(Some(46)).to_string(),
            "checkpoint of size 46: malformed checkpoint: no size line"
        );
        assert_eq!(
            error(None).to_string(),
            "checkpoint: malformed checkpoint: no size line"
        );
    }

    #[test]
    fn only_the_audit_key_purpose_signs_checkpoints() {
        let root = Ca::root("root");
        let service = |purpose| {
            ca::issue_service(
                &root.key,
                &root.cert,
                spki(&key()),
                &ca::parse_subject("CN=seb-dev audit signer,O=seb").unwrap(),
                CertKind::Signing(purpose),
                Duration::from_secs(86_400),
                now(),
            )
            .unwrap()
        };
        for purpose in Purpose::ALL {
            let result = check_audit_certificate(&service(purpose));
            if purpose == Purpose::Audit {
                assert_eq!(result, Ok(()));
            } else {
                let err = result.unwrap_err();
                assert!(err.contains("wrong_key_purpose"), "{purpose}: {err}");
            }
        }
        // The audit certificate's subject with no key purpose (the profile before key purposes
        // existed): refused, whatever its name says.
        let mut old = forge(&service(Purpose::Audit));
        old.remove_extension(
            <x509_cert::ext::pkix::ExtendedKeyUsage as der::oid::AssociatedOid>::OID,
        );
        let err = check_audit_certificate(&resign(old, &root.key)).unwrap_err();
        assert!(err.contains("wrong_key_purpose"), "{err}");
    }
}
