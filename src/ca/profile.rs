//! Certificate profiles: which standard extensions each kind of certificate carries.
//!
//! Every broker-made certificate gets a subject key identifier; every non-root one an authority
//! key identifier naming its issuer's key, so chain builders (openssl, webpki) find the path.

use der::asn1::ObjectIdentifier;
use spki::SubjectPublicKeyInfoRef;
use x509_cert::ext::pkix::{
    AuthorityKeyIdentifier, BasicConstraints, ExtendedKeyUsage, KeyUsage, KeyUsages,
    SubjectKeyIdentifier,
};
use x509_cert::ext::ToExtension;

use crate::cert::Extension;
use x509_cert::name::Name;

/// id-kp-serverAuth.
const SERVER_AUTH: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.6.1.5.5.7.3.1");
/// tcg-kp-AIKCertificate (TCG EK Credential Profile).
const TCG_KP_AIK_CERTIFICATE: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.23.133.8.3");
/// id-kp-clientAuth.
const CLIENT_AUTH: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.6.1.5.5.7.3.2");

/// The kinds of certificate seb makes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CertKind {
    /// Self-signed root CA: keyCertSign, cRLSign, no path length limit.
    Root,
    /// Intermediate CA with an optional path length limit.
    Intermediate {
        /// pathLenConstraint.
        path_len: Option<u8>,
    },
    /// Signs execution tokens or audit checkpoints: digitalSignature only, no EKU.
    Signing,
    /// The broker's HTTPS key: digitalSignature, serverAuth, with these SANs.
    TlsServer {
        /// DNS names and IP addresses.
        names: Vec<String>,
    },
    /// An agent, approver or executor: digitalSignature, clientAuth.
    Client,
    /// An executor that also serves HTTPS to agents (`seb exec`): digitalSignature,
    /// clientAuth and serverAuth, with these SANs.
    ClientServer {
        /// DNS names and IP addresses.
        names: Vec<String>,
    },
    /// The broker's TPM attestation key (AK), certified after credential activation against
    /// the EK: digitalSignature, EKU tcg-kp-AIKCertificate (2.23.133.8.3).
    AttestationKey,
}

/// The standard extensions of a certificate of `kind` for the key `spk`, issued by the key
/// `issuer_spk`, followed by `extra` (seb's own extensions).
pub(crate) fn extensions(
    kind: &CertKind,
    subject: &Name,
    spk: SubjectPublicKeyInfoRef<'_>,
    issuer_spk: SubjectPublicKeyInfoRef<'_>,
    extra: Vec<Extension>,
) -> Result<Vec<Extension>, der::Error> {
    let mut out: Vec<x509_cert::ext::Extension> = Vec::new();
    let (ca, path_len, usage, eku) = match kind {
        CertKind::Root => (
            true,
            None,
            KeyUsages::KeyCertSign | KeyUsages::CRLSign,
            None,
        ),
        CertKind::Intermediate { path_len } => (
            true,
            *path_len,
            KeyUsages::KeyCertSign | KeyUsages::CRLSign,
            None,
        ),
        CertKind::Signing => (false, None, KeyUsages::DigitalSignature.into(), None),
        CertKind::TlsServer { .. } => (
            false,
            None,
            KeyUsages::DigitalSignature.into(),
            Some(SERVER_AUTH),
        ),
        CertKind::Client => (
            false,
            None,
            KeyUsages::DigitalSignature.into(),
            Some(CLIENT_AUTH),
        ),
        CertKind::AttestationKey => (
            false,
            None,
            KeyUsages::DigitalSignature.into(),
            Some(TCG_KP_AIK_CERTIFICATE),
        ),
        CertKind::ClientServer { .. } => (false, None, KeyUsages::DigitalSignature.into(), None),
    };
    out.push(
        BasicConstraints {
            ca,
            path_len_constraint: path_len,
        }
        .to_extension(subject, &out)?,
    );
    out.push(KeyUsage(usage).to_extension(subject, &out)?);
    if let Some(purpose) = eku {
        out.push(ExtendedKeyUsage(vec![purpose]).to_extension(subject, &out)?);
    } else if let CertKind::ClientServer { .. } = kind {
        out.push(ExtendedKeyUsage(vec![CLIENT_AUTH, SERVER_AUTH]).to_extension(subject, &out)?);
    }
    let ski = SubjectKeyIdentifier::try_from(spk).map_err(|_| der::Tag::BitString.value_error())?;
    out.push(ski.to_extension(subject, &out)?);
    let issuer_ski = SubjectKeyIdentifier::try_from(issuer_spk)
        .map_err(|_| der::Tag::BitString.value_error())?;
    out.push(
        AuthorityKeyIdentifier {
            key_identifier: Some(issuer_ski.0),
            ..Default::default()
        }
        .to_extension(subject, &out)?,
    );
    let mut all = out
        .into_iter()
        .map(Extension::from_standard)
        .collect::<Result<Vec<_>, _>>()?;
    all.extend(extra);
    Ok(all)
}
