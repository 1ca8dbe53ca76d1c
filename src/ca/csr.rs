//! Certificate signing requests: checking the ones agents send, and making them for
//! `seb keygen`.
//!
//! A CSR is accepted only if it parses completely (no trailing bytes), carries an EC P-256 or
//! P-384 key, and its self-signature verifies under that key: proof that the requester holds
//! the private key. The subject and public key are the only things taken from it; extensions
//! a CSR asks for are ignored (grants and roles come from the security team, never the
//! requester).

use der::{Decode, Encode};
use signature::hazmat::PrehashVerifier;
use spki::{ObjectIdentifier, SubjectPublicKeyInfoOwned};
use x509_cert::name::Name;
use x509_cert::request::CertReq;

use super::CaError;
use crate::backend::KeyAlgorithm;

const EC_PUBLIC_KEY: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.2.1");
const P256: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.3.1.7");
const P384: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.132.0.34");
const ECDSA_SHA256: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.4.3.2");
const ECDSA_SHA384: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.4.3.3");

/// What a verified CSR yields.
#[derive(Debug, Clone)]
pub struct VerifiedCsr {
    /// The subject the requester asked for.
    pub subject: Name,
    /// The requester's public key.
    pub public_key: SubjectPublicKeyInfoOwned,
}

/// Parses a PEM or DER CSR and verifies its self-signature.
pub fn verify(bytes: &[u8]) -> Result<VerifiedCsr, CaError> {
    let req = parse(bytes)?;
    let info_der = req.info.to_der()?;
    let spki_der = req.info.public_key.to_der()?;
    let digest: Vec<u8> = match req.algorithm.oid {
        ECDSA_SHA256 => <sha2::Sha256 as sha2::Digest>::digest(&info_der).to_vec(),
        ECDSA_SHA384 => <sha2::Sha384 as sha2::Digest>::digest(&info_der).to_vec(),
        other => {
            return Err(CaError::UnsupportedKey(format!(
                "signature algorithm {other}"
            )))
        }
    };
    if req.algorithm.parameters.is_some() {
        return Err(CaError::MalformedCsr(
            "ECDSA signature algorithm with parameters".into(),
        ));
    }
    let signature = req
        .signature
        .as_bytes()
        .ok_or_else(|| CaError::MalformedCsr("signature has unused bits".into()))?;
    if req.info.public_key.algorithm.oid != EC_PUBLIC_KEY {
        return Err(CaError::UnsupportedKey(format!(
            "key algorithm {}",
            req.info.public_key.algorithm.oid
        )));
    }
    let curve = req
        .info
        .public_key
        .algorithm
        .parameters
        .as_ref()
        .and_then(|p| p.decode_as::<ObjectIdentifier>().ok())
        .ok_or_else(|| CaError::UnsupportedKey("EC key without a named curve".into()))?;
    let verified = match curve {
        P256 => {
            use spki::DecodePublicKey;
            let key = p256::ecdsa::VerifyingKey::from_public_key_der(&spki_der)
                .map_err(|e| CaError::MalformedCsr(e.to_string()))?;
            let sig = p256::ecdsa::DerSignature::from_bytes(signature)
                .and_then(p256::ecdsa::Signature::try_from)
                .map_err(|_| CaError::CsrSignature)?;
            key.verify_prehash(&digest, &sig).is_ok()
        }
        P384 => {
            use spki::DecodePublicKey;
            let key = p384::ecdsa::VerifyingKey::from_public_key_der(&spki_der)
                .map_err(|e| CaError::MalformedCsr(e.to_string()))?;
            let sig = p384::ecdsa::DerSignature::from_bytes(signature)
                .and_then(p384::ecdsa::Signature::try_from)
                .map_err(|_| CaError::CsrSignature)?;
            key.verify_prehash(&digest, &sig).is_ok()
        }
        other => return Err(CaError::UnsupportedKey(format!("curve {other}"))),
    };
    if !verified {
        return Err(CaError::CsrSignature);
    }
    // Certified with the point uncompressed, however the CSR spelled it: one key, one
    // encoding in every certificate seb issues.
    let canonical = crate::cert::canonical_spki_der(&spki_der);
    Ok(VerifiedCsr {
        subject: req.info.subject.clone(),
        public_key: SubjectPublicKeyInfoOwned::from_der(&canonical)?,
    })
}

fn parse(bytes: &[u8]) -> Result<CertReq, CaError> {
    use der::DecodePem;
    let text_start = bytes
        .iter()
        .position(|b| !b.is_ascii_whitespace())
        .unwrap_or(bytes.len());
    let trimmed = &bytes[text_start..];
    let parsed = if trimmed.starts_with(b"-----BEGIN") {
        CertReq::from_pem(crate::cert::rewrap_pem(trimmed))
    } else {
        CertReq::from_der(bytes)
    };
    parsed.map_err(|e| CaError::MalformedCsr(e.to_string()))
}

/// A freshly generated key for an agent, approver or executor, with its CSR. The key is made
/// in software on purpose: it belongs to the requester, not the broker, and is written to the
/// requester's own file.
pub struct KeyAndCsr {
    /// PKCS#8 PEM of the private key.
    pub key_pem: secrecy::SecretString,
    /// PEM of the CSR.
    pub csr_pem: String,
}

/// Generates a key pair on `curve` (P-384 by default in `seb keygen`; P-256 where a cheaper
/// handshake matters) and a CSR for `subject`, signed with ECDSA and the curve's hash.
pub fn generate(subject: Name, curve: KeyAlgorithm) -> Result<KeyAndCsr, CaError> {
    match curve {
        KeyAlgorithm::EcP256 => {
            generate_with::<p256::ecdsa::SigningKey, p256::ecdsa::DerSignature>(subject)
        }
        KeyAlgorithm::EcP384 => {
            generate_with::<p384::ecdsa::SigningKey, p384::ecdsa::DerSignature>(subject)
        }
    }
}

fn generate_with<K, S>(subject: Name) -> Result<KeyAndCsr, CaError>
where
    K: p384::elliptic_curve::Generate
        + p384::pkcs8::EncodePrivateKey
        + signature::Keypair
        + signature::Signer<S>
        + spki::DynSignatureAlgorithmIdentifier,
    K::VerifyingKey: spki::EncodePublicKey,
    S: spki::SignatureBitStringEncoding,
{
    use x509_cert::request::{CertReqInfo, Version};

    let key = K::try_generate().map_err(|e| CaError::Encoding(format!("no randomness: {e}")))?;
    // Built by hand: no attributes at all. (x509-cert's builder adds an empty
    // extensionRequest, which RFC 2985 does not allow: `Extensions` has SIZE (1..MAX).)
    let bad = |e: &dyn std::fmt::Display| CaError::Encoding(e.to_string());
    let info = CertReqInfo {
        version: Version::V1,
        subject,
        public_key: SubjectPublicKeyInfoOwned::from_key(&key.verifying_key())
            .map_err(|e| bad(&e))?,
        attributes: Default::default(),
    };
    let signature = signature::Signer::<S>::try_sign(&key, &info.to_der()?).map_err(|e| bad(&e))?;
    let req = CertReq {
        info,
        algorithm: key.signature_algorithm_identifier().map_err(|e| bad(&e))?,
        signature: signature.to_bitstring()?,
    };
    let key_pem = key
        .to_pkcs8_pem(der::pem::LineEnding::LF)
        .map_err(|e| CaError::Encoding(e.to_string()))?;
    let csr_pem = der::EncodePem::to_pem(&req, der::pem::LineEnding::LF)?;
    Ok(KeyAndCsr {
        key_pem: secrecy::SecretString::from(key_pem.as_str().to_owned()),
        csr_pem,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ca::parse_subject;

    #[test]
    fn generated_csrs_verify_on_either_curve_with_its_own_hash() {
        use der::DecodePem;
        for (curve, curve_oid, algorithm) in [
            (KeyAlgorithm::EcP256, P256, ECDSA_SHA256),
            (KeyAlgorithm::EcP384, P384, ECDSA_SHA384),
        ] {
            let made = generate(parse_subject("CN=agent-1,O=test").unwrap(), curve).unwrap();
            let csr = verify(made.csr_pem.as_bytes()).unwrap();
            assert_eq!(csr.subject.to_string(), "CN=agent-1,O=test");
            let params: ObjectIdentifier = csr
                .public_key
                .algorithm
                .parameters
                .as_ref()
                .unwrap()
                .decode_as()
                .unwrap();
            assert_eq!(params, curve_oid, "{curve}");
            let req = CertReq::from_pem(made.csr_pem.as_bytes()).unwrap();
            assert_eq!(req.algorithm.oid, algorithm, "{curve}");
            // No empty extensionRequest (RFC 2985: `Extensions` has at least one).
            assert!(req.info.attributes.is_empty(), "{curve}");
            // The key file holds the same key as the CSR.
            use secrecy::ExposeSecret;
            let key_pem = made.key_pem.expose_secret();
            let public = match curve {
                KeyAlgorithm::EcP256 => {
                    use p256::pkcs8::{DecodePrivateKey, EncodePublicKey};
                    p256::ecdsa::SigningKey::from_pkcs8_pem(key_pem)
                        .unwrap()
                        .verifying_key()
                        .to_public_key_der()
                        .unwrap()
                }
                KeyAlgorithm::EcP384 => {
                    use p384::pkcs8::{DecodePrivateKey, EncodePublicKey};
                    p384::ecdsa::SigningKey::from_pkcs8_pem(key_pem)
                        .unwrap()
                        .verifying_key()
                        .to_public_key_der()
                        .unwrap()
                }
            };
            assert_eq!(
                public.as_bytes(),
                csr.public_key.to_der().unwrap(),
                "{curve}"
            );
        }
    }

    /// `pem`'s base64 wrapped at `width` columns (0: one line).
    fn rewrapped(pem: &str, width: usize) -> String {
        let mut lines = pem.lines();
        let (first, mut body, mut last) = (lines.next().unwrap(), String::new(), "");
        for line in lines {
            if line.starts_with("-----END") {
                last = line;
            } else {
                body.push_str(line);
            }
        }
        let width = if width == 0 { body.len() } else { width };
        let wrapped: Vec<String> = body
            .as_bytes()
            .chunks(width)
            .map(|c| String::from_utf8(c.to_vec()).unwrap())
            .collect();
        format!("{first}\r\n{}\r\n{last}\r\n", wrapped.join("\r\n"))
    }

    #[test]
    fn a_csr_wrapped_at_76_columns_or_not_at_all_verifies() {
        // MIME base64 (Python's base64.encodebytes, Java) wraps at 76; RFC 7468 asks parsers
        // to accept any line length.
        let made = generate(
            parse_subject("CN=agent-1,O=test").unwrap(),
            KeyAlgorithm::EcP384,
        )
        .unwrap();
        for width in [76, 0, 16] {
            let pem = rewrapped(&made.csr_pem, width);
            let csr = verify(pem.as_bytes()).unwrap_or_else(|e| panic!("{width}: {e}"));
            assert_eq!(csr.subject.to_string(), "CN=agent-1,O=test");
        }
        // Trailing data after the block is still refused.
        let trailing = format!("{}junk", rewrapped(&made.csr_pem, 76));
        assert!(verify(trailing.as_bytes()).is_err());
    }

    #[test]
    fn tampered_csr_is_refused() {
        use der::DecodePem;
        for curve in [KeyAlgorithm::EcP256, KeyAlgorithm::EcP384] {
            let made = generate(parse_subject("CN=agent-1").unwrap(), curve).unwrap();
            let mut req = CertReq::from_pem(made.csr_pem.as_bytes()).unwrap();
            req.info.subject = parse_subject("CN=root-impersonator").unwrap();
            let der = req.to_der().unwrap();
            assert!(
                matches!(verify(&der), Err(CaError::CsrSignature)),
                "{curve}"
            );
        }
    }

    #[test]
    fn garbage_is_malformed_not_a_panic() {
        for input in [
            &b""[..],
            b"-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n",
            b"\x30\x82\xff\xff",
            b"\x30\x03\x02\x01\x01trailing",
            b"not a csr at all",
        ] {
            assert!(
                matches!(verify(input), Err(CaError::MalformedCsr(_))),
                "{input:?}"
            );
        }
    }

    #[test]
    fn trailing_bytes_after_der_are_refused() {
        use der::DecodePem;
        let made = generate(parse_subject("CN=a").unwrap(), KeyAlgorithm::EcP256).unwrap();
        let mut der = CertReq::from_pem(made.csr_pem.as_bytes())
            .unwrap()
            .to_der()
            .unwrap();
        der.push(0);
        assert!(matches!(verify(&der), Err(CaError::MalformedCsr(_))));
    }
}
