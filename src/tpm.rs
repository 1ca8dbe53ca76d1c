//! The TPM 2.0 device layer over `tss-esapi` (swtpm in development and CI, the host's TPM
//! through `/dev/tpmrm0` in production): the one place that reaches a TPM.
//!
//! Both TPM users sit on it: the key backend ([`crate::backend::tpm`]) and attestation
//! ([`crate::attest::tpm`] for the attestation key and quotes, [`crate::attest::seal`] for the
//! sealed HSM PIN). They bring the meaning (key labels, PCR policies, PINs); this layer brings
//! the device:
//!
//! * `context`: the connection ([`Tpm`]), one serialised command batch at a time, the
//!   [`Failure`] a batch ends in, and flushing transient objects;
//! * `templates`: every object seb creates (storage primary, signing keys, the attestation key,
//!   the sealed object), each written once;
//! * `blob`: key blobs, the form in which a TPM object lives outside the TPM, their file
//!   format and load–use–flush;
//! * `convert`: TPM public keys and signatures as the normalized
//!   [`PublicKey`](crate::backend::PublicKey) and [`Signature`](crate::backend::Signature).
//!
//! Errors are the backend layer's [`BackendError`](crate::backend::BackendError): what fails
//! here fails a key operation, and attestation wraps it as the source of its own errors.
//!
//! This layer must never ask the TPM for private key bytes (there is no command that would give
//! them), never create an object without fixedTPM and fixedParent, and never create or flush a
//! persistent handle: everything it loads is transient and flushed after use.

mod blob;
mod context;
mod convert;
mod templates;

pub(crate) use blob::{decode_object, encode_object, file_header, split_file_header, KeyBlob};
pub(crate) use context::{flush, in_nullauth_session};
pub use context::{Failure, Tpm};
pub(crate) use convert::signature_of;
pub(crate) use templates::{sealed_object, SigningUse};
