//! The connection to a TPM: a [`Tpm`] per TCTI, which runs batches of commands one at a time,
//! the [`Failure`] a batch ends in, and the flushing of the transient objects a batch loads.
//!
//! A [`Tpm`] serialises every batch behind a mutex and runs it on the caller's thread. It opens
//! the TCTI for each batch and closes it afterwards: swtpm serves one client connection at a
//! time, and holding none between batches lets other tools (and the tests' tampering) reach the
//! same simulator. The storage primary is re-derived from the owner seed in each batch that needs
//! it (deterministic, a few milliseconds), so no persistent handle is needed.
//!
//! Every call here blocks on the device: it must never run on an async worker thread (callers
//! reach it from their own threads or through `spawn_blocking`), and it must never keep a
//! context open between batches.

use std::str::FromStr;
use std::sync::{Arc, Mutex};

use tss_esapi::constants::CapabilityType;
use tss_esapi::handles::KeyHandle;
use tss_esapi::interface_types::resource_handles::Hierarchy;
use tss_esapi::structures::CapabilityData;
use tss_esapi::tcti_ldr::TctiNameConf;
use tss_esapi::Context;

use super::templates;
use crate::backend::{BackendError, KeyAlgorithm};

/// A TPM reached through one TCTI, with every command batch serialised.
///
/// Shared (behind an `Arc`) by the key backend and the attestor when both use the same TPM.
pub struct Tpm {
    tcti: TctiNameConf,
    tcti_text: String,
    lock: Mutex<()>,
}

impl std::fmt::Debug for Tpm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tpm")
            .field("tcti", &self.tcti_text)
            .finish_non_exhaustive()
    }
}

/// Why a TPM command batch failed: a TSS/TPM error, or one of ours.
#[derive(Debug)]
pub enum Failure {
    /// The TSS stack or the TPM returned an error.
    Tss(tss_esapi::Error),
    /// A backend-level error (bad blob, unsupported curve, ...).
    Backend(BackendError),
}

impl From<tss_esapi::Error> for Failure {
    fn from(e: tss_esapi::Error) -> Self {
        Failure::Tss(e)
    }
}

impl From<BackendError> for Failure {
    fn from(e: BackendError) -> Self {
        Failure::Backend(e)
    }
}

impl Tpm {
    /// Parses the TCTI (`device:/dev/tpmrm0`, `swtpm:host=127.0.0.1,port=2321`) and checks that
    /// the TPM answers.
    pub fn open(tcti: &str) -> Result<Arc<Self>, BackendError> {
        let conf = TctiNameConf::from_str(tcti).map_err(|e| BackendError::Device {
            operation: "parse the TCTI configuration",
            source: Box::new(e),
        })?;
        let tpm = Arc::new(Self {
            tcti: conf,
            tcti_text: tcti.to_owned(),
            lock: Mutex::new(()),
        });
        tpm.run("reach the TPM", |ctx| {
            ctx.get_capability(CapabilityType::TpmProperties, 0x100, 1)?;
            sweep(ctx);
            Ok(())
        })?;
        Ok(tpm)
    }

    /// The TCTI this TPM is reached through.
    pub fn tcti(&self) -> &str {
        &self.tcti_text
    }

    /// A cheap round trip (TPM2_GetCapability).
    pub fn ping(&self) -> Result<(), BackendError> {
        self.run("ping the TPM", |ctx| {
            ctx.get_capability(CapabilityType::TpmProperties, 0x100, 1)?;
            Ok(())
        })
    }

    /// Runs `op` on a freshly opened context while holding the TPM lock. Every transient object
    /// `op` leaves loaded is flushed when the context is dropped.
    pub fn run<T>(
        &self,
        operation: &'static str,
        op: impl FnOnce(&mut Context) -> Result<T, Failure>,
    ) -> Result<T, BackendError> {
        let _guard = self.lock.lock().map_err(|_| BackendError::Unavailable {
            operation,
            source: "TPM lock poisoned by an earlier panic".into(),
        })?;
        let mut ctx = Context::new(self.tcti.clone()).map_err(|e| BackendError::Unavailable {
            operation,
            source: Box::new(e),
        })?;
        match op(&mut ctx) {
            Ok(v) => Ok(v),
            Err(Failure::Backend(e)) => Err(e),
            // Out of slots: most likely objects a killed process left behind. This batch
            // fails; the leftovers are flushed on a fresh connection so the next one runs.
            Err(Failure::Tss(e)) if out_of_slots(&e) => {
                drop(ctx);
                if let Ok(mut fresh) = Context::new(self.tcti.clone()) {
                    sweep(&mut fresh);
                }
                Err(BackendError::Unavailable {
                    operation,
                    source: Box::new(e),
                })
            }
            // Every TSS error fails closed as "unavailable": the broker refuses to issue either
            // way, and the source chain (with the TPM response code) goes to the operator's log.
            Err(Failure::Tss(e)) => Err(BackendError::Unavailable {
                operation,
                source: Box::new(e),
            }),
        }
    }

    /// Re-derives the storage primary (the TCG SRK template) in the owner hierarchy.
    /// Deterministic for a given owner seed. The caller flushes it.
    pub fn storage_primary(ctx: &mut Context) -> Result<KeyHandle, Failure> {
        let public = templates::storage_primary()?;
        let primary = ctx.execute_with_nullauth_session(|ctx| {
            ctx.create_primary(Hierarchy::Owner, public, None, None, None, None)
        })?;
        Ok(primary.key_handle)
    }

    /// Whether the TPM implements the curve of `algorithm`.
    pub fn supports(ctx: &mut Context, algorithm: KeyAlgorithm) -> Result<bool, Failure> {
        let (curve, _) = templates::curve_of(algorithm);
        let (data, _) = ctx.get_capability(CapabilityType::EccCurves, 0, 64)?;
        Ok(match data {
            CapabilityData::EccCurves(list) => list.contains(&curve.into()),
            _ => false,
        })
    }
}

/// Whether a TPM error says it has no room for another transient object or session.
fn out_of_slots(e: &tss_esapi::Error) -> bool {
    use tss_esapi::constants::Tss2ResponseCodeKind as Kind;
    matches!(e, tss_esapi::Error::Tss2Error(rc) if matches!(
        rc.kind(),
        Some(Kind::ObjectMemory | Kind::SessionMemory | Kind::ObjectHandles | Kind::SessionHandles)
    ))
}

/// Flushes every transient object and loaded session a fresh connection finds. seb loads,
/// uses and flushes within one batch and never keeps a context open between batches, so on a
/// TPM without a resource manager (`swtpm:`, `mssim:`, `device:/dev/tpm0`, which serve one
/// connection at a time) whatever is loaded when a connection opens was left by a process
/// killed in the middle of a batch: nothing else would free it, and a TPM has only a few slots
/// (three objects on swtpm), so issuance and attestation would fail until the TPM restarts.
/// Behind a resource manager (`/dev/tpmrm0`, tabrmd) a new connection sees only its own
/// handles: none. Best effort, logged.
fn sweep(ctx: &mut Context) {
    let mut flushed = 0;
    // Transient objects and loaded sessions (TPM_HT_TRANSIENT, TPM_HT_LOADED_SESSION). Not
    // saved sessions (0x03): a program keeps those on purpose between its commands (tpm2-tools'
    // session files), and flushing one would break it.
    for first in [0x8000_0000u32, 0x0200_0000] {
        let Ok((CapabilityData::Handles(list), _)) =
            ctx.get_capability(CapabilityType::Handles, first, 32)
        else {
            continue;
        };
        for handle in list.iter() {
            let freed = ctx
                .tr_from_tpm_public(*handle)
                .and_then(|object| ctx.flush_context(object));
            match freed {
                Ok(()) => flushed += 1,
                Err(e) => tracing::warn!(error = %e, ?handle, "cannot flush a leftover TPM handle"),
            }
        }
    }
    if flushed > 0 {
        tracing::warn!(
            flushed,
            "flushed transient TPM objects or sessions a killed process had left loaded"
        );
    }
}

/// Flushes a transient object, logging (not failing) if the TPM refuses: the context drop
/// flushes it again as a backstop.
pub(crate) fn flush(ctx: &mut Context, handle: KeyHandle) {
    if let Err(e) = ctx.flush_context(handle.into()) {
        tracing::warn!(error = %e, "cannot flush a transient TPM object");
    }
}

/// Runs `op` in a null-authorization password session, keeping its [`Failure`] as it is.
pub(crate) fn in_nullauth_session<T>(
    ctx: &mut Context,
    op: impl FnOnce(&mut Context) -> Result<T, Failure>,
) -> Result<T, Failure> {
    ctx.execute_with_nullauth_session(|ctx| op(ctx).map_err(Fail))
        .map_err(|Fail(f)| f)
}

/// Carries a [`Failure`] through `execute_with_nullauth_session`, whose closure error type must
/// convert from `tss_esapi::Error`.
struct Fail(Failure);

impl From<tss_esapi::Error> for Fail {
    fn from(e: tss_esapi::Error) -> Self {
        Fail(Failure::Tss(e))
    }
}
