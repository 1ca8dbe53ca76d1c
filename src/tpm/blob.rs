//! Key blobs: a TPM object kept outside the TPM as its public area and its private part, which
//! the TPM encrypted to the storage primary, so only this TPM can load it. The key backend's
//! keys and the attestation key are created into a [`KeyBlob`], written once to an owner-only
//! file, and loaded, used and flushed for each batch (load–use–flush), so seb never holds
//! more than a batch's worth of the TPM's few transient slots (what a killed process leaves
//! behind is swept when seb next connects, [`super::context`]) and nothing persistent is
//! created.
//!
//! A key blob file is `SEBTPMK1 ‖ alg(u8) ‖ object`, where `object` is `u32 len ‖ TPMT_PUBLIC ‖
//! u32 len ‖ TPM2B_PRIVATE buffer` ([`encode_object`]). The sealed PIN's file has the same
//! frame: its own magic and kind byte ([`file_header`]) first, the same object part last.
//!
//! This module writes no file itself (callers use [`crate::files::write_new_private`]: mode
//! 0600, never replacing a file) and must never accept a file with missing or trailing bytes.

use tss_esapi::handles::KeyHandle;
use tss_esapi::structures::{Private, Public};
use tss_esapi::traits::{Marshall, UnMarshall};
use tss_esapi::Context;

use super::context::{flush, Failure, Tpm};
use super::convert::public_key_of;
use super::templates::{self, SigningUse};
use crate::backend::{BackendError, KeyAlgorithm, PublicKey};

/// A key as stored on disk: the TPM's encrypted private part and the public area.
pub(crate) struct KeyBlob {
    pub(crate) algorithm: KeyAlgorithm,
    pub(crate) public: Public,
    pub(crate) private: Private,
}

/// Magic of the key blob file format (version 1).
const BLOB_MAGIC: &[u8; 8] = b"SEBTPMK1";

impl KeyBlob {
    /// Has the TPM generate an ECDSA key for `usage` under a fresh storage primary (flushed
    /// again) and returns its blob.
    pub(crate) fn create(
        ctx: &mut Context,
        algorithm: KeyAlgorithm,
        usage: SigningUse,
    ) -> Result<Self, Failure> {
        let template = templates::signing_key(algorithm, usage)?;
        let primary = Tpm::storage_primary(ctx)?;
        let created = ctx.execute_with_nullauth_session(|ctx| {
            ctx.create(primary, template, None, None, None, None)
        });
        flush(ctx, primary);
        let created = created?;
        Ok(Self {
            algorithm,
            public: created.out_public,
            private: created.out_private,
        })
    }

    /// Loads the key under a fresh storage primary, runs `op` with it, and flushes both.
    pub(crate) fn with_loaded<T>(
        &self,
        ctx: &mut Context,
        op: impl FnOnce(&mut Context, KeyHandle) -> Result<T, Failure>,
    ) -> Result<T, Failure> {
        let primary = Tpm::storage_primary(ctx)?;
        let loaded = ctx.execute_with_nullauth_session(|ctx| {
            ctx.load(primary, self.private.clone(), self.public.clone())
        });
        flush(ctx, primary);
        let key = loaded?;
        let result = op(ctx, key);
        flush(ctx, key);
        result
    }

    /// The key's public half, checked to be on its curve.
    pub(crate) fn public_key(&self) -> Result<PublicKey, BackendError> {
        public_key_of(&self.public, self.algorithm)
    }

    /// `SEBTPMK1 ‖ alg(u8) ‖ u32 len ‖ TPMT_PUBLIC ‖ u32 len ‖ TPM2B_PRIVATE buffer`.
    pub(crate) fn encode(&self) -> Result<Vec<u8>, BackendError> {
        let code = match self.algorithm {
            KeyAlgorithm::EcP256 => 1,
            KeyAlgorithm::EcP384 => 2,
        };
        let mut out = file_header(BLOB_MAGIC, code);
        encode_object(&mut out, &self.public, &self.private).map_err(|e| BackendError::Device {
            operation: "encode a TPM key blob",
            source: e.into(),
        })?;
        Ok(out)
    }

    /// Parses [`KeyBlob::encode`]'s format strictly.
    pub(crate) fn decode(bytes: &[u8]) -> Result<Self, String> {
        let (alg, rest) = split_file_header(bytes, BLOB_MAGIC, "not a seb TPM key blob")?;
        let algorithm = match alg {
            1 => KeyAlgorithm::EcP256,
            2 => KeyAlgorithm::EcP384,
            _ => return Err(format!("unknown algorithm {alg}")),
        };
        let (public, private) = decode_object(rest)?;
        Ok(Self {
            algorithm,
            public,
            private,
        })
    }
}

/// The start of a seb TPM file: its magic (format and version), then the byte that says what
/// it holds (a key blob's algorithm, a sealed PIN's PCR bank).
pub(crate) fn file_header(magic: &[u8; 8], kind: u8) -> Vec<u8> {
    let mut out = magic.to_vec();
    out.push(kind);
    out
}

/// Checks a [`file_header`] against `magic` (else fails with `not_ours`) and returns its kind
/// byte and the rest of the file.
pub(crate) fn split_file_header<'a>(
    bytes: &'a [u8],
    magic: &[u8; 8],
    not_ours: &str,
) -> Result<(u8, &'a [u8]), String> {
    let rest = bytes.strip_prefix(magic.as_slice()).ok_or(not_ours)?;
    let (&kind, rest) = rest.split_first().ok_or("truncated")?;
    Ok((kind, rest))
}

/// Appends a TPM object to `out`: `u32 len ‖ TPMT_PUBLIC ‖ u32 len ‖ TPM2B_PRIVATE buffer`.
pub(crate) fn encode_object(
    out: &mut Vec<u8>,
    public: &Public,
    private: &Private,
) -> Result<(), String> {
    let public = public.marshall().map_err(|e| e.to_string())?;
    for part in [public.as_slice(), private.value()] {
        let len = u32::try_from(part.len()).map_err(|_| "part too large")?;
        out.extend_from_slice(&len.to_be_bytes());
        out.extend_from_slice(part);
    }
    Ok(())
}

/// Parses an [`encode_object`] part that must fill `bytes` exactly.
pub(crate) fn decode_object(bytes: &[u8]) -> Result<(Public, Private), String> {
    let (public, rest) = take_part(bytes)?;
    let (private, rest) = take_part(rest)?;
    if !rest.is_empty() {
        return Err("trailing bytes".into());
    }
    Ok((
        Public::unmarshall(public).map_err(|e| format!("public area: {e}"))?,
        Private::try_from(private.to_vec()).map_err(|e| format!("private: {e}"))?,
    ))
}

fn take_part(bytes: &[u8]) -> Result<(&[u8], &[u8]), String> {
    let (len, rest) = bytes.split_at_checked(4).ok_or("truncated")?;
    let len = u32::from_be_bytes([len[0], len[1], len[2], len[3]]) as usize;
    rest.split_at_checked(len).ok_or_else(|| "truncated".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(algorithm: KeyAlgorithm) -> KeyBlob {
        KeyBlob {
            algorithm,
            public: templates::signing_key(algorithm, SigningUse::AnyDigest).unwrap(),
            private: Private::try_from(vec![9u8; 40]).unwrap(),
        }
    }

    #[test]
    fn key_blob_round_trips_and_is_parsed_strictly() {
        for algorithm in [KeyAlgorithm::EcP256, KeyAlgorithm::EcP384] {
            let bytes = sample(algorithm).encode().unwrap();
            let back = KeyBlob::decode(&bytes).unwrap();
            assert_eq!(back.algorithm, algorithm);
            assert_eq!(back.encode().unwrap(), bytes);
            assert!((0..bytes.len()).all(|cut| KeyBlob::decode(&bytes[..cut]).is_err()));

            let mut unknown = bytes.clone();
            unknown[8] = 3;
            let mut trailing = bytes.clone();
            trailing.push(0);
            let refused = [
                (b"SEBPIN01\x01".to_vec(), "not a seb TPM key blob"),
                (bytes[..8].to_vec(), "truncated"),
                (unknown, "unknown algorithm 3"),
                (trailing, "trailing bytes"),
            ];
            for (bad, reason) in refused {
                assert_eq!(KeyBlob::decode(&bad).err().unwrap(), reason);
            }
        }
    }
}
