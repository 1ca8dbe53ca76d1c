//! Certificate profiles: which standard extensions each kind of certificate carries, as an
//! `x509-cert` [`BuilderProfile`] so that its `CertificateBuilder` assembles the certificate.
//!
//! Every broker-made certificate gets a subject key identifier; every non-root one an authority
//! key identifier naming its issuer's key, so chain builders (openssl, webpki) find the path.

use der::asn1::ObjectIdentifier;
use spki::SubjectPublicKeyInfoRef;
use x509_cert::builder::profile::BuilderProfile;
use x509_cert::ext::pkix::{
    AuthorityKeyIdentifier, BasicConstraints, ExtendedKeyUsage, KeyUsage, KeyUsages,
    SubjectKeyIdentifier,
};
use x509_cert::ext::{Extension, ToExtension};
use x509_cert::name::Name;
use x509_cert::TbsCertificate;

use crate::cert::Purpose;

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
    /// One of the broker's signing keys (tokens, audit checkpoints): digitalSignature, and
    /// its one seb key purpose as the only extended key usage (docs/GRANTS.md §1).
    Signing(Purpose),
    /// The broker's HTTPS key: digitalSignature, serverAuth, with these SANs.
    TlsServer {
        /// DNS names and IP addresses.
        names: Vec<String>,
    },
    /// An agent or approver: digitalSignature, clientAuth.
    Client,
    /// An executor: digitalSignature, clientAuth and the receipt key purpose (its key signs
    /// receipts); with names (`seb exec` serving agents) also serverAuth and these SANs.
    Executor {
        /// DNS names and IP addresses; empty for an executor that serves no HTTPS.
        names: Vec<String>,
    },
    /// The broker's TPM attestation key (AK), certified after credential activation against
    /// the EK: digitalSignature, EKU tcg-kp-AIKCertificate (2.23.133.8.3), and `sebEkCertificate`
    /// naming the EK certificate when the TPM has one.
    AttestationKey {
        /// SHA-256 of the DER EK certificate the AK was enrolled against.
        ek_certificate_sha256: Option<[u8; 32]>,
    },
}

/// What the builder needs to make one certificate: names, kind and seb's own extensions.
pub(crate) struct Profile {
    /// Issuer name (the subject itself for the root).
    pub issuer: Name,
    /// Subject name.
    pub subject: Name,
    /// Which profile.
    pub kind: CertKind,
    /// seb's extensions (and a TLS certificate's subjectAltName), after the standard ones.
    pub extra: Vec<Extension>,
}

impl BuilderProfile for Profile {
    fn get_issuer(&self, _subject: &Name) -> Name {
        self.issuer.clone()
    }

    fn get_subject(&self) -> Name {
        self.subject.clone()
    }

    fn build_extensions(
        &self,
        spk: SubjectPublicKeyInfoRef<'_>,
        issuer_spk: SubjectPublicKeyInfoRef<'_>,
        _tbs: &TbsCertificate,
    ) -> x509_cert::builder::Result<Vec<Extension>> {
        Ok(extensions(
            &self.kind,
            &self.subject,
            spk,
            issuer_spk,
            self.extra.clone(),
        )?)
    }
}

/// The standard extensions of a certificate of `kind` for the key `spk`, issued by the key
/// `issuer_spk`, followed by `extra` (seb's own extensions).
fn extensions(
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
        CertKind::Signing(purpose) => (
            false,
            None,
            KeyUsages::DigitalSignature.into(),
            Some(purpose.oid()),
        ),
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
        CertKind::AttestationKey { .. } => (
            false,
            None,
            KeyUsages::DigitalSignature.into(),
            Some(TCG_KP_AIK_CERTIFICATE),
        ),
        CertKind::Executor { .. } => (false, None, KeyUsages::DigitalSignature.into(), None),
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
    } else if let CertKind::Executor { names } = kind {
        let mut usages = vec![CLIENT_AUTH];
        if !names.is_empty() {
            usages.push(SERVER_AUTH);
        }
        usages.push(Purpose::Receipt.oid());
        out.push(ExtendedKeyUsage(usages).to_extension(subject, &out)?);
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
    out.extend(extra);
    Ok(out)
}
