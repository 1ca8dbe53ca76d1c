//! TLS for the broker: the server key is `seb-tls` inside the device (rustls signs through
//! the key backend), client certificates are mandatory and verified against seb's root.
//!
//! The device call blocks, so handshakes run on blocking threads (see `server::serve`); this
//! module never touches key bytes.

use std::sync::Arc;

use rustls::crypto::ring;
use rustls::pki_types::CertificateDer;
use rustls::server::{
    ClientHello, NoServerSessionStorage, ResolvesServerCert, WebPkiClientVerifier,
};
use rustls::sign::{CertifiedKey, Signer, SigningKey};
use rustls::{RootCertStore, ServerConfig, SignatureAlgorithm, SignatureScheme};
use sha2::{Digest, Sha384};

use crate::backend::{KeyBackend, Signature};
use crate::ca::trust_dir::read_certificate;
use crate::config::Config;

/// The broker's rustls configuration from its trust directory: `tls.pem` served with the
/// `keys.tls` key in the device, client certificates verified against `root.pem`.
pub fn broker_server_config(
    backend: Arc<dyn KeyBackend>,
    config: &Config,
    resumption: bool,
) -> Result<ServerConfig, String> {
    let trust = config.trust_dir();
    let der = |path: &std::path::Path| {
        read_certificate(path)
            .and_then(|c| {
                c.to_der_bytes()
                    .map_err(|e| crate::ca::TrustDirError::Certificate {
                        path: path.to_owned(),
                        reason: e.to_string(),
                    })
            })
            .map_err(|e| e.to_string())
    };
    server_config(
        backend,
        &config.keys.tls,
        der(&trust.tls_path())?,
        der(&trust.root_path())?,
        resumption,
    )
}

/// Builds the rustls server configuration.
pub fn server_config(
    backend: Arc<dyn KeyBackend>,
    tls_label: &str,
    tls_cert_der: Vec<u8>,
    root_der: Vec<u8>,
    resumption: bool,
) -> Result<ServerConfig, String> {
    let provider = Arc::new(ring::default_provider());
    let mut roots = RootCertStore::empty();
    roots
        .add(CertificateDer::from(root_der))
        .map_err(|e| format!("root certificate: {e}"))?;
    let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .build()
        .map_err(|e| format!("client verifier: {e}"))?;
    let key: Arc<dyn SigningKey> = Arc::new(HsmKey {
        backend,
        label: tls_label.to_owned(),
    });
    let certified = Arc::new(CertifiedKey::new(
        vec![CertificateDer::from(tls_cert_der)],
        key,
    ));
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("protocol versions: {e}"))?
        .with_client_cert_verifier(verifier)
        .with_cert_resolver(Arc::new(OneCert(certified)));
    if !resumption {
        config.session_storage = Arc::new(NoServerSessionStorage {});
        config.send_tls13_tickets = 0;
    }
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

#[derive(Debug)]
struct OneCert(Arc<CertifiedKey>);

impl ResolvesServerCert for OneCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.clone())
    }
}

/// The broker's TLS key, held in the device.
#[derive(Debug)]
struct HsmKey {
    backend: Arc<dyn KeyBackend>,
    label: String,
}

impl SigningKey for HsmKey {
    fn choose_scheme(&self, offered: &[SignatureScheme]) -> Option<Box<dyn Signer>> {
        offered
            .contains(&SignatureScheme::ECDSA_NISTP384_SHA384)
            .then(|| {
                Box::new(HsmSigner {
                    backend: self.backend.clone(),
                    label: self.label.clone(),
                }) as Box<dyn Signer>
            })
    }

    fn algorithm(&self) -> SignatureAlgorithm {
        SignatureAlgorithm::ECDSA
    }
}

#[derive(Debug)]
struct HsmSigner {
    backend: Arc<dyn KeyBackend>,
    label: String,
}

impl Signer for HsmSigner {
    fn sign(&self, message: &[u8]) -> Result<Vec<u8>, rustls::Error> {
        let digest = Sha384::digest(message);
        match self.backend.sign_digest(&self.label, &digest) {
            Ok(Signature::P384(sig)) => Ok(sig.to_der().as_bytes().to_vec()),
            Ok(Signature::P256(_)) => Err(rustls::Error::General(
                "the TLS key is not a P-384 key".into(),
            )),
            Err(e) => {
                tracing::error!(
                    error = %crate::server::error::ErrorChain(&e),
                    "TLS handshake signature failed in the HSM"
                );
                Err(rustls::Error::General("HSM signature failed".into()))
            }
        }
    }

    fn scheme(&self) -> SignatureScheme {
        SignatureScheme::ECDSA_NISTP384_SHA384
    }
}
