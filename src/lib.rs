//! seb, the Sovereign Execution Broker.
//!
//! The library holds everything that does not need a device: the grant schema, the
//! authorization decision, certificate issuance over an abstract signer, and the offline
//! verifier (tokens, certificate chains, TPM quotes). Features:
//!
//! * `pkcs11`: the PKCS#11 key backend (cryptoki);
//! * `tpm`: the TPM device layer, the TPM key backend, the attestor and PIN sealing
//!   (tss-esapi);
//! * `broker` (default): both of those, the embedded store, the HTTPS server and the `seb`
//!   binary.
//!
//! An executor depends on `seb` with `default-features = false` and links no HSM, TPM, SQLite
//! or async code at all.

pub mod approval;
pub mod attest;
pub mod audit;
pub mod authz;
pub mod backend;
pub mod base64url;
#[cfg(feature = "broker")]
pub mod broker;
pub mod ca;
pub mod canonical;
pub mod cert;
pub mod chain;
#[cfg(feature = "broker")]
pub mod client;
pub mod config;
pub mod duration;
#[cfg(feature = "broker")]
pub mod executor;
pub mod files;
pub mod grants;
pub mod json;
pub mod receipt;
pub mod serial;
#[cfg(feature = "broker")]
pub mod server;
pub mod store;
pub mod text;
pub mod time;
#[cfg(feature = "broker")]
pub mod tls;
pub mod token;
#[cfg(feature = "tpm")]
pub mod tpm;
pub mod verify;

#[cfg(test)]
mod testkit;
