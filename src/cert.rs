//! seb's certificates: the project's OIDs, and `x509-cert` certificates that passed seb's
//! stricter parsing.
//!
//! Decoding is `x509-cert`'s ([`x509_cert::Certificate`]), and so is building (the CA uses its
//! `CertificateBuilder`, see [`crate::ca`]). Since the OIDs moved to the GUID arc (every
//! component under 2^24), `const-oid` holds them and no certificate needs types of our own.
//! [`Certificate`] wraps the decoded certificate for what `x509-cert` does not do:
//!
//! * **One encoding.** `x509-cert` re-encodes what it decoded on demand (signatures are
//!   checked over the DER of the decoded `TBSCertificate`, thumbprints over the DER of the
//!   certificate), and its encoder normalises some values (a validity time before 2050 is
//!   always written as UTCTime). [`Certificate::parse`] therefore refuses input that does not
//!   re-encode to exactly the bytes given, so the bytes signed, hashed (`kid`, `cnf`) and
//!   received are one and the same.
//! * **No duplicate extensions.** RFC 5280 §4.2 forbids an extension appearing twice;
//!   `x509-cert` decodes such a list and only notices when asked for that one standard type.
//!   Two `sebGrants`, one checked and one acted on, must be impossible, so parsing refuses.
//! * **seb's own extensions by OID.** `sebGrants`, `sebRole` and `sebIssuableRoles` have
//!   strict decoders of their own (size limits, canonical re-encoding: [`crate::grants`]), not
//!   `der::Decode` types, so they are looked up by OID here ([`Certificate::extension`]).
//! * **PEM bundles** with text between the blocks (`/v1/trust`, files with comments).
//!
//! This module only encodes and decodes; it never signs and never decides what is trusted.
//! A certificate carrying the retired `2.25.<128-bit>` arc does not decode at all (`const-oid`
//! refuses the arc), so it is refused as malformed: no migration, and no grants or role.

use std::time::SystemTime;

use der::asn1::ObjectIdentifier;
use der::{Decode, DecodePem, Encode, EncodePem};
use sha2::{Digest, Sha256};
use x509_cert::TbsCertificate;

mod name;

pub use name::same_name;
pub(crate) use name::string_text;

pub use x509_cert::ext::Extension;

/// The project's OID arc: the registration-free GUID arc `1.2.840.113556.1.8000.2554`
/// followed by the GUID `2b4f760d-515e-4075-9fb0-281a61960d8f` in 4,4,4,4,4,6,6 hex digits.
/// Every component fits in 24 bits, so Go's `crypto/x509` and `const-oid` hold it.
pub const SEB_ARC: ObjectIdentifier = ObjectIdentifier::new_unwrap(
    "1.2.840.113556.1.8000.2554.11087.30221.20830.16501.40880.2628193.9833871",
);

/// `sebGrants` (arc.1): `SEQUENCE OF Grant`, the grants of an agent or the bound an
/// intermediate CA puts on everything below it.
pub const SEB_GRANTS_OID: ObjectIdentifier = ObjectIdentifier::new_unwrap(
    "1.2.840.113556.1.8000.2554.11087.30221.20830.16501.40880.2628193.9833871.1",
);

/// `sebRole` (arc.2): agent, approver, executor or broker, with an approver's groups.
pub const SEB_ROLE_OID: ObjectIdentifier = ObjectIdentifier::new_unwrap(
    "1.2.840.113556.1.8000.2554.11087.30221.20830.16501.40880.2628193.9833871.2",
);

/// `sebIssuableRoles` (arc.3): on an intermediate CA, the roles of the end-entity
/// certificates it may issue; absent means agents only.
pub const SEB_ISSUABLE_ROLES_OID: ObjectIdentifier = ObjectIdentifier::new_unwrap(
    "1.2.840.113556.1.8000.2554.11087.30221.20830.16501.40880.2628193.9833871.3",
);

/// `sebEkCertificate` (arc.5): on the attestation key's certificate, the SHA-256 of the DER
/// EK certificate the AK was enrolled against (credential activation proved that the AK and
/// that EK share a TPM), as an OCTET STRING. A verifier that pins EK CAs checks the EK
/// certificate a broker serves against it: the served one is otherwise unsigned.
pub const SEB_EK_CERTIFICATE_OID: ObjectIdentifier = ObjectIdentifier::new_unwrap(
    "1.2.840.113556.1.8000.2554.11087.30221.20830.16501.40880.2628193.9833871.5",
);

/// Key purpose (extended key usage, arc.4.1): signs execution tokens.
pub const SEB_KP_TOKEN: ObjectIdentifier = ObjectIdentifier::new_unwrap(
    "1.2.840.113556.1.8000.2554.11087.30221.20830.16501.40880.2628193.9833871.4.1",
);

/// Key purpose (arc.4.2): signs audit checkpoints.
pub const SEB_KP_AUDIT: ObjectIdentifier = ObjectIdentifier::new_unwrap(
    "1.2.840.113556.1.8000.2554.11087.30221.20830.16501.40880.2628193.9833871.4.2",
);

/// Key purpose (arc.4.3): signs executor receipts (reserved for the outcome endpoint).
pub const SEB_KP_RECEIPT: ObjectIdentifier = ObjectIdentifier::new_unwrap(
    "1.2.840.113556.1.8000.2554.11087.30221.20830.16501.40880.2628193.9833871.4.3",
);

/// seb's key purposes, the extended key usages under arc.4. A key certificate carries exactly
/// one, so that a signature made for one purpose (an audit checkpoint) can never pass for
/// another (a token). [`crate::chain::require_purpose`] checks it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Purpose {
    /// Execution tokens ([`SEB_KP_TOKEN`]), by the broker's `seb-token` key.
    Token,
    /// Audit checkpoints ([`SEB_KP_AUDIT`]), by the broker's `seb-audit` key.
    Audit,
    /// Executor receipts ([`SEB_KP_RECEIPT`]).
    Receipt,
}

impl Purpose {
    /// Every purpose.
    pub const ALL: [Purpose; 3] = [Purpose::Token, Purpose::Audit, Purpose::Receipt];

    /// Its extended key usage OID.
    pub const fn oid(self) -> ObjectIdentifier {
        match self {
            Purpose::Token => SEB_KP_TOKEN,
            Purpose::Audit => SEB_KP_AUDIT,
            Purpose::Receipt => SEB_KP_RECEIPT,
        }
    }

    /// The purpose with this OID, if it is one of seb's.
    pub fn from_oid(oid: &ObjectIdentifier) -> Option<Self> {
        Self::ALL.into_iter().find(|p| p.oid() == *oid)
    }

    /// Whether it is the purpose of one of the broker's own keys (token, audit), whose
    /// certificates carry that purpose and nothing else.
    pub const fn is_broker_key(self) -> bool {
        matches!(self, Purpose::Token | Purpose::Audit)
    }
}

impl std::fmt::Display for Purpose {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Purpose::Token => "token signing",
            Purpose::Audit => "audit checkpoints",
            Purpose::Receipt => "executor receipts",
        })
    }
}

/// Errors decoding certificates.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CertError {
    /// The bytes are not a DER certificate.
    #[error("malformed certificate: {0}")]
    Malformed(String),
    /// The PEM bundle held no certificate.
    #[error("no certificate found in the input")]
    Empty,
    /// An extension appears twice (RFC 5280 §4.2 forbids it).
    #[error("extension {0} appears more than once")]
    DuplicateExtension(String),
}

/// An X.509 certificate as `x509-cert` decodes it, known to be in its one DER encoding and
/// free of duplicate extensions (see the module documentation).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Certificate {
    inner: x509_cert::Certificate,
}

impl Certificate {
    /// Parses one certificate from PEM or DER, rejecting trailing data, any encoding but the
    /// DER one, and duplicate extensions.
    pub fn parse(bytes: &[u8]) -> Result<Self, CertError> {
        let start = bytes
            .iter()
            .position(|b| !b.is_ascii_whitespace())
            .unwrap_or(bytes.len());
        let (decoded, der) = if bytes[start..].starts_with(b"-----BEGIN") {
            let pem = rewrap_pem(&bytes[start..]);
            let cert = x509_cert::Certificate::from_pem(&pem).map_err(malformed)?;
            // PEM carries no encoding of its own to compare with: the base64 is the DER.
            let der = pem_der(&pem)?;
            (cert, der)
        } else {
            (
                x509_cert::Certificate::from_der(bytes).map_err(malformed)?,
                bytes.to_vec(),
            )
        };
        if decoded.to_der().map_err(malformed)? != der {
            return Err(CertError::Malformed(
                "not the DER encoding of its content (a value is encoded in a non-canonical form)"
                    .into(),
            ));
        }
        Self::from_x509(decoded)
    }

    /// Parses every certificate in a PEM bundle, in order; text between the blocks is ignored.
    pub fn parse_pem_chain(text: &[u8]) -> Result<Vec<Self>, CertError> {
        let text = std::str::from_utf8(text)
            .map_err(|_| CertError::Malformed("PEM is not UTF-8".into()))?;
        let mut out = Vec::new();
        let mut rest = text;
        const END: &str = "-----END CERTIFICATE-----";
        while let Some(begin) = rest.find("-----BEGIN CERTIFICATE-----") {
            let after = &rest[begin..];
            let end = after
                .find(END)
                .ok_or_else(|| CertError::Malformed("unterminated PEM block".into()))?;
            let block = &after[..end + END.len()];
            out.push(Self::parse(block.as_bytes())?);
            rest = &after[end + END.len()..];
        }
        if out.is_empty() {
            return Err(CertError::Empty);
        }
        Ok(out)
    }

    /// A certificate built in this process (by the CA, or a test): checked like a parsed one.
    pub fn from_x509(inner: x509_cert::Certificate) -> Result<Self, CertError> {
        let exts = inner
            .tbs_certificate()
            .extensions()
            .map_or(&[][..], Vec::as_slice);
        for (i, a) in exts.iter().enumerate() {
            if exts[i + 1..].iter().any(|b| b.extn_id == a.extn_id) {
                return Err(CertError::DuplicateExtension(a.extn_id.to_string()));
            }
        }
        Ok(Self { inner })
    }

    /// The certificate as `x509-cert` has it.
    pub fn x509(&self) -> &x509_cert::Certificate {
        &self.inner
    }

    /// The signed part.
    pub fn tbs(&self) -> &TbsCertificate {
        self.inner.tbs_certificate()
    }

    /// DER encoding (the bytes it was parsed from).
    pub fn to_der_bytes(&self) -> Result<Vec<u8>, der::Error> {
        self.inner.to_der()
    }

    /// PEM encoding.
    pub fn to_pem_string(&self) -> Result<String, der::Error> {
        self.inner.to_pem(der::pem::LineEnding::LF)
    }

    /// The role in the certificate's `sebRole` extension, if it carries a readable one.
    pub fn seb_role(&self) -> Option<crate::grants::RoleKind> {
        self.extension(SEB_ROLE_OID)
            .and_then(|e| crate::grants::Role::from_der(e.extn_value.as_bytes()).ok())
            .map(|r| r.kind)
    }

    /// The extension with this OID, if present (at most one can be: see [`Certificate::parse`]).
    pub fn extension(&self, oid: ObjectIdentifier) -> Option<&Extension> {
        self.tbs().extensions()?.iter().find(|e| e.extn_id == oid)
    }

    /// The value of a standard extension decoded as `T`.
    pub fn standard_extension<T>(&self) -> Result<Option<T>, CertError>
    where
        T: for<'a> Decode<'a> + der::oid::AssociatedOid,
    {
        match self.extension(T::OID) {
            None => Ok(None),
            Some(ext) => T::from_der(ext.extn_value.as_bytes())
                .map(Some)
                .map_err(|e| CertError::Malformed(format!("extension {}: {e}", T::OID))),
        }
    }

    /// The serial number's content octets, as in the certificate (DER INTEGER contents, sign
    /// byte included). Compare and store serials as [`crate::serial::Serial`].
    pub fn serial(&self) -> &[u8] {
        self.tbs().serial_number().as_bytes()
    }

    /// The serial number in seb's canonical form ([`crate::serial::Serial`]: upper-case hex
    /// of the positive integer, no sign byte); a zero or negative serial, which seb refuses
    /// anywhere it matters, as the hex of its DER contents.
    pub fn serial_hex(&self) -> String {
        crate::serial::Serial::of(self)
            .map_or_else(|_| hex::encode(self.serial()), |s| s.to_string())
    }

    /// SHA-256 over the DER (the `x5t#S256` thumbprint, RFC 8705).
    pub fn thumbprint_sha256(&self) -> Result<[u8; 32], der::Error> {
        Ok(Sha256::digest(self.inner.to_der()?).into())
    }

    /// SHA-256 over the SubjectPublicKeyInfo DER, its EC point uncompressed
    /// ([`canonical_spki_der`]): names the key, whichever certificate carries it and however
    /// that certificate spells the point (per-key limits, approvers counted once, caches).
    pub fn spki_sha256(&self) -> Result<[u8; 32], der::Error> {
        Ok(Sha256::digest(self.canonical_spki_der()?).into())
    }

    /// The certified public key as SubjectPublicKeyInfo DER with its EC point in the
    /// uncompressed form ([`canonical_spki_der`]).
    pub fn canonical_spki_der(&self) -> Result<Vec<u8>, der::Error> {
        Ok(canonical_spki_der(&self.public_key_der()?))
    }

    /// notBefore.
    pub fn not_before(&self) -> SystemTime {
        self.tbs().validity().not_before.to_system_time()
    }

    /// notAfter.
    pub fn not_after(&self) -> SystemTime {
        self.tbs().validity().not_after.to_system_time()
    }

    /// The certified public key as DER SubjectPublicKeyInfo, to compare with a device's key
    /// (`KeyBackend::public_key(..).to_spki_der()`).
    pub fn public_key_der(&self) -> Result<Vec<u8>, der::Error> {
        der::Encode::to_der(self.tbs().subject_public_key_info())
    }

    /// Whether its issuer is its subject: a root candidate (whether it is validly self-signed
    /// is [`crate::chain::bundle_roots`]'s to check).
    pub fn is_self_issued(&self) -> bool {
        self.tbs().issuer() == self.tbs().subject()
    }

    /// Subject as an RFC 4514 string.
    pub fn subject_string(&self) -> String {
        self.tbs().subject().to_string()
    }

    /// Issuer as an RFC 4514 string.
    pub fn issuer_string(&self) -> String {
        self.tbs().issuer().to_string()
    }
}

/// One encoding per key: a P-256 or P-384 SubjectPublicKeyInfo re-encoded with its point
/// uncompressed (SEC 1 `0x04 || X || Y`). A compressed (`0x02`/`0x03`) or hybrid
/// (`0x06`/`0x07`) spelling of the same point would otherwise hash as another key, and one
/// person could count as two approvers. Anything else (not a valid point of those curves) is
/// returned as it is: it names no key that could sign.
pub fn canonical_spki_der(spki_der: &[u8]) -> Vec<u8> {
    use spki::{DecodePublicKey, EncodePublicKey};
    let reencoded = match p384::PublicKey::from_public_key_der(spki_der) {
        Ok(key) => key.to_public_key_der(),
        Err(_) => match p256::PublicKey::from_public_key_der(spki_der) {
            Ok(key) => key.to_public_key_der(),
            Err(_) => return spki_der.to_vec(),
        },
    };
    reencoded.map_or_else(|_| spki_der.to_vec(), |d| d.into_vec())
}

fn malformed(e: impl std::fmt::Display) -> CertError {
    CertError::Malformed(e.to_string())
}

/// `pem` with the base64 of its first block wrapped at 64 columns, as RFC 7468's strict form
/// (which the decoder takes) has it: tools that wrap at 76 (MIME) or not at all are common,
/// and RFC 7468 asks parsers to accept them. Anything that is not one plain block (headers,
/// no END line) is returned as it is, for the decoder to refuse with its own message. What
/// follows the block is kept, so that trailing data is still refused.
pub(crate) fn rewrap_pem(pem: &[u8]) -> std::borrow::Cow<'_, [u8]> {
    use std::borrow::Cow;
    let Ok(text) = std::str::from_utf8(pem) else {
        return Cow::Borrowed(pem);
    };
    let text = text.trim_start();
    let Some(first) = text.lines().next() else {
        return Cow::Borrowed(pem);
    };
    let Some(label) = first
        .trim_end()
        .strip_prefix("-----BEGIN ")
        .and_then(|l| l.strip_suffix("-----"))
    else {
        return Cow::Borrowed(pem);
    };
    let end_line = format!("-----END {label}-----");
    let Some(end) = text.find(&end_line) else {
        return Cow::Borrowed(pem);
    };
    let body = &text[first.len()..end];
    if body.contains(':') || body.contains('-') {
        return Cow::Borrowed(pem);
    }
    let b64: String = body.chars().filter(|c| !c.is_ascii_whitespace()).collect();
    let mut out = format!("{first}\n", first = first.trim_end());
    for chunk in b64.as_bytes().chunks(64) {
        out.push_str(&String::from_utf8_lossy(chunk));
        out.push('\n');
    }
    out.push_str(&text[end..]);
    Cow::Owned(out.into_bytes())
}

/// The DER inside one PEM `CERTIFICATE` block.
fn pem_der(pem: &[u8]) -> Result<Vec<u8>, CertError> {
    let (label, der) = der::pem::decode_vec(pem).map_err(malformed)?;
    if label != "CERTIFICATE" {
        return Err(CertError::Malformed(format!("PEM label {label:?}")));
    }
    Ok(der)
}

#[cfg(test)]
mod tests {

    use super::*;

    #[test]
    fn seb_oids_are_on_the_documented_arc_and_fit_24_bits() {
        assert_eq!(SEB_GRANTS_OID.parent(), Some(SEB_ARC));
        assert_eq!(SEB_ROLE_OID.parent(), Some(SEB_ARC));
        assert_eq!(SEB_GRANTS_OID.to_string(), format!("{SEB_ARC}.1"));
        assert_eq!(SEB_ROLE_OID.to_string(), format!("{SEB_ARC}.2"));
        assert_eq!(SEB_ISSUABLE_ROLES_OID.to_string(), format!("{SEB_ARC}.3"));
        assert_eq!(SEB_EK_CERTIFICATE_OID.to_string(), format!("{SEB_ARC}.5"));
        for (purpose, n) in Purpose::ALL.into_iter().zip(1..) {
            assert_eq!(purpose.oid().to_string(), format!("{SEB_ARC}.4.{n}"));
            assert_eq!(Purpose::from_oid(&purpose.oid()), Some(purpose));
        }
        // Go's crypto/x509 parses each component into an int; const-oid into a u32.
        assert!(SEB_GRANTS_OID.arcs().all(|arc| arc < 1 << 24));
    }

    fn agent() -> (crate::testkit::Ca, Certificate) {
        let root = crate::testkit::Ca::root("root");
        let agent = root
            .agent(
                "agent",
                &crate::testkit::grant("deploy.*", "prod/**", "60s"),
            )
            .unwrap();
        (root, agent)
    }

    #[test]
    fn a_certificate_on_the_retired_uuid_arc_is_not_a_seb_certificate() {
        // sebRole under 2.25.57569389650057206723867454425930272143.2, as issued before the
        // move: const-oid cannot hold the 126-bit arc, so the certificate does not decode at
        // all. No grants or role can be read from it, and nothing migrates it.
        const RETIRED_ROLE_OID: &[u8] = &[
            0x69, 0xd6, 0xcf, 0xbb, 0x83, 0xaa, 0x95, 0xf2, 0x81, 0xeb, 0x9f, 0xd8, 0x8a, 0x83,
            0xa6, 0x8c, 0xd8, 0x9b, 0x0f, 0x02,
        ];
        let (root, agent) = agent();
        let mut old = crate::testkit::forge(&agent);
        old.remove_extension(SEB_ROLE_OID);
        old.set_raw_extension(
            RETIRED_ROLE_OID,
            false,
            &[0x30, 0x05, 0x0a, 0x01, 0x00, 0x30, 0x00],
        );
        let der = old.resigned_der(&root.key);
        let err = Certificate::parse(&der).unwrap_err();
        assert!(matches!(err, CertError::Malformed(_)), "{err}");
    }

    #[test]
    fn only_the_der_encoding_is_accepted() {
        // A validity time before 2050 written as GeneralizedTime decodes, but x509-cert would
        // sign and hash it as UTCTime: refused, so signed, hashed and received bytes agree.
        let (root, agent) = agent();
        let mut odd = crate::testkit::forge(&agent);
        let when = agent.not_before();
        odd.tbs.validity.not_before = x509_cert::time::Time::GeneralTime(
            der::asn1::GeneralizedTime::from_system_time(when).unwrap(),
        );
        let der = odd.resigned_der(&root.key);
        let err = Certificate::parse(&der).unwrap_err();
        assert!(err.to_string().contains("not the DER encoding"), "{err}");

        // Trailing bytes after the certificate.
        let mut der = agent.to_der_bytes().unwrap();
        der.push(0);
        assert!(Certificate::parse(&der).is_err());
        // The same certificate as PEM and as DER parses to the same value.
        let pem = agent.to_pem_string().unwrap();
        assert_eq!(Certificate::parse(pem.as_bytes()).unwrap(), agent);
        assert_eq!(
            Certificate::parse(&agent.to_der_bytes().unwrap()).unwrap(),
            agent
        );
    }

    #[test]
    fn an_extension_twice_is_refused() {
        let (root, agent) = agent();
        let mut twice = crate::testkit::forge(&agent);
        let exts = twice.tbs.extensions.as_mut().unwrap();
        let grants = exts
            .iter()
            .find(|e| e.extn_id.value() == SEB_GRANTS_OID.as_bytes())
            .unwrap()
            .clone();
        exts.push(grants);
        let der = twice.resigned_der(&root.key);
        assert_eq!(
            Certificate::parse(&der),
            Err(CertError::DuplicateExtension(SEB_GRANTS_OID.to_string()))
        );
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        for input in [
            &b""[..],
            b"\x30",
            b"\x30\x80",
            b"-----BEGIN CERTIFICATE-----\n!!\n-----END CERTIFICATE-----",
            b"\x30\x03\x02\x01\x00",
        ] {
            assert!(Certificate::parse(input).is_err());
        }
        assert_eq!(
            Certificate::parse_pem_chain(b"nothing here"),
            Err(CertError::Empty)
        );
    }
}
