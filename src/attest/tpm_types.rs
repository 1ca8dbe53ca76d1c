//! Just enough of the TPM 2.0 wire format (Part 2, big-endian, size-prefixed) to verify a quote
//! offline: `TPMS_ATTEST` of type `TPM_ST_ATTEST_QUOTE` and an ECDSA `TPMT_SIGNATURE`.
//!
//! Parsing is strict: every length is bounded by the input, trailing bytes are refused, and
//! nothing here allocates more than the input's size. It never trusts a field it has not checked
//! (the caller verifies the signature over the exact bytes it was given, not a re-encoding).

use super::{PcrBank, QuoteError};

/// `TPM_GENERATED_VALUE`: every structure the TPM signs starts with it.
pub const TPM_GENERATED: u32 = 0xff54_4347;
/// `TPM_ST_ATTEST_QUOTE`.
pub const ST_ATTEST_QUOTE: u16 = 0x8018;
/// `TPM_ALG_ECDSA`.
pub const ALG_ECDSA: u16 = 0x0018;
/// `TPM_ALG_SHA256`.
pub const ALG_SHA256: u16 = 0x000b;
/// `TPM_ALG_SHA384`.
pub const ALG_SHA384: u16 = 0x000c;

/// A parsed `TPMS_ATTEST` carrying a `TPMS_QUOTE_INFO`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct QuoteInfo {
    /// Qualified name of the signing key (`qualifiedSigner`).
    pub qualified_signer: Vec<u8>,
    /// The caller's nonce (`extraData`).
    pub extra_data: Vec<u8>,
    /// `clockInfo.clock`: milliseconds the TPM has been powered (monotonic across resets).
    pub clock: u64,
    /// `clockInfo.resetCount`.
    pub reset_count: u32,
    /// `clockInfo.restartCount`.
    pub restart_count: u32,
    /// `clockInfo.safe`.
    pub safe: bool,
    /// `firmwareVersion`.
    pub firmware_version: u64,
    /// The PCR selection quoted: (hash algorithm id, PCR indices ascending) per bank.
    pub selection: Vec<(u16, Vec<u8>)>,
    /// `pcrDigest`: hash of the selected PCR values, concatenated in selection order.
    pub pcr_digest: Vec<u8>,
}

/// A parsed ECDSA `TPMT_SIGNATURE`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EcdsaSignature {
    /// Hash algorithm id of the signing scheme.
    pub hash: u16,
    /// r, big-endian, as the TPM sent it (leading zeros may be stripped).
    pub r: Vec<u8>,
    /// s, big-endian.
    pub s: Vec<u8>,
}

struct Reader<'a> {
    bytes: &'a [u8],
    what: &'static str,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], QuoteError> {
        let (head, rest) = self
            .bytes
            .split_at_checked(n)
            .ok_or(QuoteError::Malformed {
                what: self.what,
                reason: "truncated",
            })?;
        self.bytes = rest;
        Ok(head)
    }

    fn u8(&mut self) -> Result<u8, QuoteError> {
        Ok(self.take(1)?[0])
    }

    fn u16(&mut self) -> Result<u16, QuoteError> {
        let b = self.take(2)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }

    fn u32(&mut self) -> Result<u32, QuoteError> {
        let b = self.take(4)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    fn u64(&mut self) -> Result<u64, QuoteError> {
        let b = self.take(8)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(u64::from_be_bytes(a))
    }

    /// A TPM2B: u16 size then that many bytes (at most `max`).
    fn tpm2b(&mut self, max: usize) -> Result<Vec<u8>, QuoteError> {
        let size = usize::from(self.u16()?);
        if size > max {
            return Err(QuoteError::Malformed {
                what: self.what,
                reason: "a sized buffer is larger than the TPM allows",
            });
        }
        Ok(self.take(size)?.to_vec())
    }

    fn finish(self) -> Result<(), QuoteError> {
        if self.bytes.is_empty() {
            Ok(())
        } else {
            Err(QuoteError::Malformed {
                what: self.what,
                reason: "trailing bytes",
            })
        }
    }
}

/// Parses a `TPMS_ATTEST` and requires it to be a TPM-generated quote.
pub fn parse_quote(bytes: &[u8]) -> Result<QuoteInfo, QuoteError> {
    let mut r = Reader {
        bytes,
        what: "quote (TPMS_ATTEST)",
    };
    if r.u32()? != TPM_GENERATED {
        return Err(QuoteError::NotAQuote {
            reason: "magic is not TPM_GENERATED_VALUE",
        });
    }
    if r.u16()? != ST_ATTEST_QUOTE {
        return Err(QuoteError::NotAQuote {
            reason: "type is not TPM_ST_ATTEST_QUOTE",
        });
    }
    // TPM2B_NAME: at most a handle or a 2-byte algorithm id plus a SHA-512 digest.
    let qualified_signer = r.tpm2b(2 + 64)?;
    // TPM2B_DATA: at most sizeof(TPMT_HA).
    let extra_data = r.tpm2b(2 + 64)?;
    let clock = r.u64()?;
    let reset_count = r.u32()?;
    let restart_count = r.u32()?;
    let safe = match r.u8()? {
        0 => false,
        1 => true,
        _ => {
            return Err(QuoteError::Malformed {
                what: "quote (TPMS_ATTEST)",
                reason: "clockInfo.safe is not a boolean",
            })
        }
    };
    let firmware_version = r.u64()?;
    let count = r.u32()?;
    if count > 16 {
        return Err(QuoteError::Malformed {
            what: "quote (TPMS_ATTEST)",
            reason: "more PCR banks selected than any TPM has",
        });
    }
    let mut selection = Vec::new();
    for _ in 0..count {
        let hash = r.u16()?;
        let size = usize::from(r.u8()?);
        if size > 8 {
            return Err(QuoteError::Malformed {
                what: "quote (TPMS_ATTEST)",
                reason: "PCR select bitmap longer than 8 bytes",
            });
        }
        let bitmap = r.take(size)?;
        let mut pcrs = Vec::new();
        for (byte_index, byte) in bitmap.iter().enumerate() {
            for bit in 0..8u8 {
                if byte & (1 << bit) != 0 {
                    // byte_index < 8, so the index fits in a u8.
                    pcrs.push((byte_index as u8) * 8 + bit);
                }
            }
        }
        selection.push((hash, pcrs));
    }
    let pcr_digest = r.tpm2b(64)?;
    r.finish()?;
    Ok(QuoteInfo {
        qualified_signer,
        extra_data,
        clock,
        reset_count,
        restart_count,
        safe,
        firmware_version,
        selection,
        pcr_digest,
    })
}

/// Parses a `TPMT_SIGNATURE` and requires ECDSA.
pub fn parse_signature(bytes: &[u8]) -> Result<EcdsaSignature, QuoteError> {
    let mut r = Reader {
        bytes,
        what: "quote signature (TPMT_SIGNATURE)",
    };
    let alg = r.u16()?;
    if alg != ALG_ECDSA {
        return Err(QuoteError::UnsupportedAlgorithm {
            what: "quote signature",
            id: alg,
        });
    }
    let hash = r.u16()?;
    let sig = EcdsaSignature {
        hash,
        r: r.tpm2b(66)?,
        s: r.tpm2b(66)?,
    };
    r.finish()?;
    Ok(sig)
}

/// The TPM algorithm id of a PCR bank.
pub fn bank_id(bank: PcrBank) -> u16 {
    match bank {
        PcrBank::Sha256 => ALG_SHA256,
        PcrBank::Sha384 => ALG_SHA384,
    }
}

/// Encodes a `TPMS_ATTEST` quote; used by tests to build (and tamper with) quotes.
#[cfg(test)]
pub fn encode_quote(q: &QuoteInfo) -> Vec<u8> {
    let mut out = Vec::new();
    out.extend_from_slice(&TPM_GENERATED.to_be_bytes());
    out.extend_from_slice(&ST_ATTEST_QUOTE.to_be_bytes());
    for b in [&q.qualified_signer, &q.extra_data] {
        out.extend_from_slice(&(b.len() as u16).to_be_bytes());
        out.extend_from_slice(b);
    }
    out.extend_from_slice(&q.clock.to_be_bytes());
    out.extend_from_slice(&q.reset_count.to_be_bytes());
    out.extend_from_slice(&q.restart_count.to_be_bytes());
    out.push(u8::from(q.safe));
    out.extend_from_slice(&q.firmware_version.to_be_bytes());
    out.extend_from_slice(&(q.selection.len() as u32).to_be_bytes());
    for (hash, pcrs) in &q.selection {
        out.extend_from_slice(&hash.to_be_bytes());
        let mut bitmap = [0u8; 3];
        for p in pcrs {
            bitmap[usize::from(*p / 8)] |= 1 << (p % 8);
        }
        out.push(3);
        out.extend_from_slice(&bitmap);
    }
    out.extend_from_slice(&(q.pcr_digest.len() as u16).to_be_bytes());
    out.extend_from_slice(&q.pcr_digest);
    out
}

/// Encodes an ECDSA `TPMT_SIGNATURE`; used by tests.
#[cfg(test)]
pub fn encode_signature(s: &EcdsaSignature) -> Vec<u8> {
    let mut out = Vec::new();
    out.extend_from_slice(&ALG_ECDSA.to_be_bytes());
    out.extend_from_slice(&s.hash.to_be_bytes());
    for b in [&s.r, &s.s] {
        out.extend_from_slice(&(b.len() as u16).to_be_bytes());
        out.extend_from_slice(b);
    }
    out
}
