//! TLS for the broker: the server key is `seb-tls` inside the device (rustls signs through
//! the key backend); a client certificate is asked for and, when sent, verified against seb's
//! root (a client without one gets only the routes for anyone, `server::Anonymous`).
//!
//! The device call blocks, so handshakes run on blocking threads (see `server::serve`); this
//! module never touches key bytes.

use std::sync::Arc;

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
use client_chains::CachedClientVerifier;

pub mod client_chains;

/// The broker's rustls configuration from its trust directory: `tls.pem` served with the
/// current generation of the `keys.tls` key in the device, client certificates verified
/// against `root.pem`.
pub fn broker_server_config(
    backend: Arc<dyn KeyBackend>,
    config: &Config,
    resumption: bool,
) -> Result<ServerConfig, String> {
    broker_server_config_reloading(backend, config, resumption).map(|(c, _)| c)
}

/// Like [`broker_server_config`], with the handle that switches the served certificate and
/// key after `seb rotate tls` ([`TlsCertificate::reload`]): new handshakes use the new key,
/// connections already open keep theirs, nothing restarts.
pub fn broker_server_config_reloading(
    backend: Arc<dyn KeyBackend>,
    config: &Config,
    resumption: bool,
) -> Result<(ServerConfig, Arc<TlsCertificate>), String> {
    let trust = config.trust_dir();
    let (label, cert_der) = current_tls(&backend, config)?;
    let root = der_of(&trust.root_path())?;
    let current = Arc::new(TlsCertificate {
        backend: backend.clone(),
        served: std::sync::RwLock::new(certified(backend, &label, cert_der.clone())),
        label_and_cert: std::sync::Mutex::new((label.clone(), cert_der.clone())),
    });
    let config = server_config_with(current.clone(), root, resumption)?;
    Ok((config, current))
}

/// The current TLS key label and certificate (DER), after checking that they belong together.
fn current_tls(
    backend: &Arc<dyn KeyBackend>,
    config: &Config,
) -> Result<(String, Vec<u8>), String> {
    let label = config
        .current_key_label(crate::ca::generations::KeyKind::Tls)
        .map_err(|e| e.to_string())?;
    let path = config.trust_dir().tls_path();
    let cert = read_certificate(&path).map_err(|e| e.to_string())?;
    let public = backend
        .public_key(&label)
        .and_then(|k| k.to_spki_der())
        .map_err(|e| format!("TLS key {label:?}: {e}"))?;
    if public != cert.public_key_der().map_err(|e| e.to_string())? {
        return Err(crate::ca::trust_dir::key_mismatch(&label, &path));
    }
    let der = cert.to_der_bytes().map_err(|e| e.to_string())?;
    Ok((label, der))
}

fn der_of(path: &std::path::Path) -> Result<Vec<u8>, String> {
    read_certificate(path)
        .and_then(|c| {
            c.to_der_bytes()
                .map_err(|e| crate::ca::TrustDirError::Certificate {
                    path: path.to_owned(),
                    reason: e.to_string(),
                })
        })
        .map_err(|e| e.to_string())
}

fn certified(backend: Arc<dyn KeyBackend>, label: &str, cert_der: Vec<u8>) -> Arc<CertifiedKey> {
    let key: Arc<dyn SigningKey> = Arc::new(HsmKey {
        backend,
        label: label.to_owned(),
    });
    Arc::new(CertifiedKey::new(vec![CertificateDer::from(cert_der)], key))
}

/// The certificate and device key the broker serves, switchable while it runs.
#[derive(Debug)]
pub struct TlsCertificate {
    backend: Arc<dyn KeyBackend>,
    served: std::sync::RwLock<Arc<CertifiedKey>>,
    label_and_cert: std::sync::Mutex<(String, Vec<u8>)>,
}

impl TlsCertificate {
    /// The certificate (DER) served to new handshakes.
    pub fn certificate_der(&self) -> Vec<u8> {
        self.label_and_cert
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .1
            .clone()
    }

    /// Re-reads the current TLS generation; switches when it changed and checks out (the
    /// certificate matches the key in the device). Returns whether it switched.
    pub fn reload(&self, config: &Config) -> Result<bool, String> {
        let (label, der) = current_tls(&self.backend, config)?;
        let mut known = self
            .label_and_cert
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if known.0 == label && known.1 == der {
            return Ok(false);
        }
        let fresh = certified(self.backend.clone(), &label, der.clone());
        *self
            .served
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = fresh;
        tracing::info!(label = %label, "TLS certificate and key switched");
        *known = (label, der);
        Ok(true)
    }
}

impl ResolvesServerCert for TlsCertificate {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(
            self.served
                .read()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .clone(),
        )
    }
}

/// Builds the rustls server configuration.
pub fn server_config(
    backend: Arc<dyn KeyBackend>,
    tls_label: &str,
    tls_cert_der: Vec<u8>,
    root_der: Vec<u8>,
    resumption: bool,
) -> Result<ServerConfig, String> {
    let certified = certified(backend, tls_label, tls_cert_der);
    server_config_with(Arc::new(OneCert(certified)), root_der, resumption)
}

fn server_config_with(
    resolver: Arc<dyn ResolvesServerCert>,
    root_der: Vec<u8>,
    resumption: bool,
) -> Result<ServerConfig, String> {
    let provider = crate::tls::provider();
    let mut roots = RootCertStore::empty();
    roots
        .add(CertificateDer::from(root_der))
        .map_err(|e| format!("root certificate: {e}"))?;
    // A client certificate is asked for and, when one is sent, verified here as before; a
    // client without one completes the handshake and may use only the routes for anyone
    // (`server::Anonymous`).
    let webpki = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .allow_unauthenticated()
        .build()
        .map_err(|e| format!("client verifier: {e}"))?;
    // A returning agent's chain is not verified again (see `client_chains`); its handshake
    // signature is, and revocation is the broker's, on every request.
    let verifier = Arc::new(CachedClientVerifier::new(webpki));
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("protocol versions: {e}"))?
        .with_client_cert_verifier(verifier)
        .with_cert_resolver(resolver);
    if !resumption {
        config.session_storage = Arc::new(NoServerSessionStorage {});
        config.send_tls13_tickets = 0;
    }
    config.alpn_protocols = crate::tls::SERVER_ALPN.map(<[u8]>::to_vec).to_vec();
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
