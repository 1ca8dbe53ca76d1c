//! Which certificates vouch for a quote: the attestation key's and the TLS session's, each
//! validated to a trusted root that issued it directly, and both naming the same broker.

use std::time::SystemTime;

use super::QuoteError;
use crate::cert::Certificate;
use crate::chain::{self, CertKey};

/// tcg-kp-AIKCertificate (TCG EK Credential Profile): the EKU of an attestation key certificate.
pub const TCG_KP_AIK_CERTIFICATE: der::asn1::ObjectIdentifier =
    der::asn1::ObjectIdentifier::new_unwrap("2.23.133.8.3");

/// id-kp-serverAuth: the purpose of the broker's TLS server certificate.
const SERVER_AUTH: der::asn1::ObjectIdentifier =
    der::asn1::ObjectIdentifier::new_unwrap("1.3.6.1.5.5.7.3.1");

/// The common-name suffix of the broker's TLS server certificate: `CN=<broker_id> broker,O=seb`
/// (`seb init`).
const TLS_CN_SUFFIX: &str = " broker";
/// The common-name suffix of the AK certificate: `CN=<broker_id> attestation key,O=seb`
/// (`seb attest enroll`).
const AK_CN_SUFFIX: &str = " attestation key";

/// The AK public key from a PEM chain (AK first) that must end under one of `roots`, with the
/// AK certificate and the root that issued it.
///
/// The AK certificate must carry the tcg-kp-AIKCertificate purpose, its path must pass the
/// same validation as every other seb chain ([`chain::validate`]: signatures, `cA`,
/// `keyCertSign`, `pathLenConstraint`, critical extensions, the root's validity), every
/// certificate on it must be valid at `now`, and the root must have certified the AK directly:
/// enrolment (`seb attest enroll`) has the root do it, so an intermediate on the path means
/// someone else certified the key.
pub fn certified_ak<'r>(
    chain_pem: &[String],
    roots: &'r [Certificate],
    now: SystemTime,
) -> Result<(CertKey, Certificate, &'r Certificate), QuoteError> {
    let bad = |reason: String| QuoteError::AkNotCertified { reason };
    let mut certs = Vec::new();
    for pem in chain_pem.iter().take(4) {
        certs.extend(
            Certificate::parse_pem_chain(pem.as_bytes())
                .map_err(|e| bad(format!("unparseable certificate: {e}")))?,
        );
    }
    let (ak, intermediates) = certs
        .split_first()
        .ok_or_else(|| bad("no AK certificate".into()))?;
    if !has_purpose(ak, &TCG_KP_AIK_CERTIFICATE).map_err(&bad)? {
        return Err(bad(
            "the certificate is not an attestation key certificate (no tcg-kp-AIKCertificate EKU)"
                .into(),
        ));
    }
    let root = issued_directly_by_a_root(ak, intermediates, roots, now).map_err(bad)?;
    let key = CertKey::of(ak).map_err(|e| bad(format!("AK key: {e}")))?;
    Ok((key, ak.clone(), root))
}

/// The TLS server certificate of the session (DER) must be a TLS server certificate
/// (serverAuth), valid now, issued directly by `ak_root`, the trusted root that certified the
/// AK: `seb init` has the root issue it, and a certificate from anyone else (an intermediate,
/// another root) does not speak for the broker.
pub fn certified_tls(
    der: &[u8],
    roots: &[Certificate],
    ak_root: &Certificate,
    now: SystemTime,
) -> Result<Certificate, QuoteError> {
    let bad = |reason: String| QuoteError::TlsNotCertified { reason };
    let tls = Certificate::parse(der).map_err(|e| bad(format!("unparseable: {e}")))?;
    if !has_purpose(&tls, &SERVER_AUTH).map_err(&bad)? {
        return Err(bad(format!(
            "{:?} is not a TLS server certificate (no serverAuth EKU)",
            tls.subject_string()
        )));
    }
    // An agent's, approver's or executor's certificate may carry serverAuth (an executor
    // serving agents does) and a name like the broker's; it never speaks for the broker.
    if tls.extension(crate::cert::SEB_ROLE_OID).is_some() {
        return Err(bad(format!(
            "{:?} carries sebRole: it is an agent's, approver's or executor's certificate, not \
             the broker's",
            tls.subject_string()
        )));
    }
    let root = issued_directly_by_a_root(&tls, &[], roots, now).map_err(bad)?;
    if root != ak_root {
        return Err(bad(format!(
            "{:?} is issued by the root {:?}, the attestation key by {:?}",
            tls.subject_string(),
            root.subject_string(),
            ak_root.subject_string()
        )));
    }
    Ok(tls)
}

/// Whether `cert`'s extended key usage names `purpose`.
fn has_purpose(cert: &Certificate, purpose: &der::asn1::ObjectIdentifier) -> Result<bool, String> {
    let eku: Option<x509_cert::ext::pkix::ExtendedKeyUsage> = cert
        .standard_extension()
        .map_err(|e| format!("unparseable extended key usage: {e}"))?;
    Ok(eku.is_some_and(|e| e.0.contains(purpose)))
}

/// Validates `leaf`'s path with [`chain::validate`], dates every certificate on it, and requires
/// a root to have issued `leaf` directly; returns that root.
fn issued_directly_by_a_root<'r>(
    leaf: &Certificate,
    intermediates: &[Certificate],
    roots: &'r [Certificate],
    now: SystemTime,
) -> Result<&'r Certificate, String> {
    let path = chain::validate(leaf, intermediates, roots, now)
        .map_err(|e| format!("{}: {e}", e.code()))?;
    // chain::validate dates the root only; the leaf and anything between are dated here.
    for cert in path.path() {
        if now < cert.not_before() || now > cert.not_after() {
            return Err(format!(
                "{:?} is not valid at this time",
                cert.subject_string()
            ));
        }
    }
    if let Some(issuer) = path.intermediates().first() {
        return Err(format!(
            "{:?} is certified by {:?}, not directly by a trusted root",
            leaf.subject_string(),
            issuer.subject_string()
        ));
    }
    let root = path.root();
    roots
        .iter()
        .find(|r| *r == root)
        .ok_or_else(|| "the path does not end at a trusted root".to_owned())
}

/// The broker both certificates name: `CN=<broker_id> attestation key` on the AK certificate
/// and `CN=<broker_id> broker` on the TLS certificate, as `seb attest enroll` and `seb init`
/// issue them. A quote made by one broker's TPM and served over another broker's TLS session
/// is refused even when both are certified by the same root.
pub(super) fn same_broker(ak: &Certificate, tls: &Certificate) -> Result<String, QuoteError> {
    let ak_broker = broker_of(ak, AK_CN_SUFFIX);
    let tls_broker = broker_of(tls, TLS_CN_SUFFIX);
    match (ak_broker, tls_broker) {
        (Some(a), Some(t)) if a == t => Ok(a),
        (a, t) => Err(QuoteError::BrokerMismatch {
            ak_broker: a.unwrap_or_else(|| ak.subject_string()),
            tls_broker: t.unwrap_or_else(|| tls.subject_string()),
        }),
    }
}

/// The broker id in a service certificate's single common name `<broker_id><suffix>`.
fn broker_of(cert: &Certificate, suffix: &str) -> Option<String> {
    let common_name = crate::ca::common_name(cert.tbs().subject())?;
    let id = common_name.strip_suffix(suffix)?.to_owned();
    (!id.trim().is_empty()).then_some(id)
}
