//! The check of the server's certificate on every connection: rustls-webpki against the pinned
//! root, then seb's own rules for whose certificate it must be: the broker's (issued directly
//! by the root, serverAuth, no `sebRole`) or an executor's (the executor role, delegated along
//! its chain).

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{CertificateError, DigitallySignedStruct, OtherError, SignatureScheme};
use x509_cert::ext::pkix::ExtendedKeyUsage;

use crate::cert::Certificate;
use crate::chain;

/// Which server a connection is for.
#[derive(Clone, Copy, Debug)]
pub(super) enum Server {
    Broker,
    Executor,
}

/// The server certificate check: rustls-webpki against the pinned root (signature path,
/// validity, the server's name, serverAuth), then [`check_broker_certificate`] or
/// [`check_executor_certificate`]. Handshake signatures are webpki's to check.
#[derive(Debug)]
pub(super) struct ServerVerifier {
    pub(super) webpki: Arc<WebPkiServerVerifier>,
    pub(super) roots: Vec<Certificate>,
    pub(super) server: Server,
}

impl ServerCertVerifier for ServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        self.webpki.verify_server_cert(
            end_entity,
            intermediates,
            server_name,
            ocsp_response,
            now,
        )?;
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(now.as_secs());
        let checked = match self.server {
            Server::Broker => check_broker_certificate(end_entity.as_ref(), &self.roots, now),
            Server::Executor => {
                check_executor_certificate(end_entity.as_ref(), intermediates, &self.roots, now)
            }
        };
        checked.map_err(|reason| {
            rustls::Error::InvalidCertificate(CertificateError::Other(OtherError(Arc::new(
                NotTheBroker(reason),
            ))))
        })?;
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.webpki.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.webpki.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.webpki.supported_verify_schemes()
    }
}

/// Why a server certificate is not the broker's. rustls shows it with `Debug`, so that is
/// the plain message too.
#[derive(thiserror::Error)]
#[error("{0}")]
struct NotTheBroker(String);

impl std::fmt::Debug for NotTheBroker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// id-kp-serverAuth.
pub(crate) const SERVER_AUTH: der::asn1::ObjectIdentifier =
    der::asn1::ObjectIdentifier::new_unwrap("1.3.6.1.5.5.7.3.1");

/// Whether the DER certificate `der` may be the broker's TLS certificate: issued directly by
/// one of `roots` (a path of exactly the certificate and the root, checked with
/// [`chain::validate`] offering no intermediates), carrying serverAuth, and no seb role.
/// Service certificates count only from the root: an intermediate, whatever it was delegated,
/// cannot make a broker. An executor's certificate may be root-issued with serverAuth too,
/// but it carries `sebRole` (executor), which the broker's own never does: whoever holds an
/// executor's key must not be able to answer redemptions as the broker.
pub fn check_broker_certificate(
    der: &[u8],
    roots: &[Certificate],
    now: SystemTime,
) -> Result<(), String> {
    let cert = Certificate::parse(der).map_err(|e| format!("the server certificate: {e}"))?;
    if let Err(e) = chain::validate(&cert, &[], roots, now) {
        return Err(format!(
            "the server certificate {:?} (issuer {:?}) is not issued directly by the root ({}); \
             only the root certifies the broker",
            cert.subject_string(),
            cert.issuer_string(),
            e.code()
        ));
    }
    let eku = cert
        .standard_extension::<ExtendedKeyUsage>()
        .map_err(|e| format!("the server certificate: {e}"))?;
    if !eku.is_some_and(|eku| eku.0.contains(&SERVER_AUTH)) {
        return Err(format!(
            "the server certificate {:?} lacks the serverAuth extended key usage",
            cert.subject_string()
        ));
    }
    // Any sebRole at all, even one this version cannot read: the broker's never has one.
    if cert.extension(crate::cert::SEB_ROLE_OID).is_some() {
        let role = cert
            .seb_role()
            .map_or_else(|| "unreadable".to_owned(), |r| r.to_string());
        return Err(format!(
            "the server certificate {:?} carries sebRole ({role}): it is an agent's, approver's \
             or executor's certificate, not the broker's",
            cert.subject_string()
        ));
    }
    Ok(())
}

/// Whether the DER certificate `der`, with the `intermediates` the server sent, may be an
/// executor's TLS certificate: seb's own path validation to one of `roots` (a site CA may
/// certify executors), the executor role in `sebRole`, delegated by every intermediate above
/// it. serverAuth and the server's name are rustls-webpki's to check before this.
pub fn check_executor_certificate(
    der: &[u8],
    intermediates: &[CertificateDer<'_>],
    roots: &[Certificate],
    now: SystemTime,
) -> Result<(), String> {
    let cert = Certificate::parse(der).map_err(|e| format!("the server certificate: {e}"))?;
    let intermediates = intermediates
        .iter()
        .map(|c| Certificate::parse(c.as_ref()))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("a certificate the server sent: {e}"))?;
    let path = chain::validate(&cert, &intermediates, roots, now).map_err(|e| {
        format!(
            "the server certificate {:?} does not chain to the root ({})",
            cert.subject_string(),
            e.code()
        )
    })?;
    match crate::authz::delegated_role(&path.chain_view()) {
        Ok(role) if role.kind == crate::grants::RoleKind::Executor => Ok(()),
        Ok(role) => Err(format!(
            "the server certificate {:?} is an {} certificate, not an executor's",
            cert.subject_string(),
            role.kind
        )),
        Err((_, reason)) => Err(format!(
            "the server certificate {:?} is not an executor's: {reason}",
            cert.subject_string()
        )),
    }
}
