//! Who may call what: the check every route runs before it does anything.
//!
//! The TLS handshake verified the caller's chain once, when the connection opened, and not at
//! all on a resumed session; the connection may then stay open for hours. So on every request,
//! on every route, [`Broker::authenticate`] checks the caller's whole verified path again:
//!
//! 1. the chain validated to the broker's root (`bad_certificate` otherwise);
//! 2. no certificate of the path (leaf, intermediates, root) is revoked, read from the store
//!    now (`certificate_revoked`);
//! 3. every certificate of the path is valid now, `notBefore` included
//!    (`certificate_not_yet_valid`, `certificate_expired`);
//! 4. the leaf's role is one the route admits ([`Access`], declared per route in the HTTP
//!    layer's one table, `server::ROUTES`) (`wrong_role`), and every intermediate above the
//!    leaf may issue that role (`role_not_delegated`, [`crate::authz::delegated_role`]).
//!
//! Only this function makes a [`Caller`], and the broker's request methods take a `Caller`,
//! so no route can reach them unchecked. It must never admit a caller on doubt: a store that
//! cannot say whether a serial is revoked is an error, not a pass.

use std::sync::Arc;
use std::time::SystemTime;

use super::peer::RevokedSet;
use super::{Broker, BrokerError, Peer};
use crate::authz::{DenyCode, RevocationView};
use crate::grants::RoleKind;

/// What a route requires of its caller beyond a path that is valid now and unrevoked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    /// Anyone, with or without a client certificate (ARCHITECTURE §7: the trust bundle, the
    /// CRL, attestation). A certificate that is presented is checked as for
    /// [`Access::AnyCertificate`]: a revoked or expired one is refused, not ignored.
    Anyone,
    /// Any certificate whose path validates to the broker's root, every certificate of it
    /// valid now and none revoked, whatever its role (or none).
    AnyCertificate,
    /// As [`Access::AnyCertificate`], and the leaf's `sebRole` is one of these.
    Roles(&'static [RoleKind]),
}

impl Access {
    /// The role names admitted, for documentation (`["any"]` for any certificate,
    /// `["anyone"]` for no certificate needed).
    pub fn names(&self) -> Vec<String> {
        match self {
            Access::Anyone => vec!["anyone".into()],
            Access::AnyCertificate => vec!["any".into()],
            Access::Roles(roles) => roles.iter().map(|r| r.to_string()).collect(),
        }
    }
}

/// A caller that passed [`Broker::authenticate`] for a route.
#[derive(Debug)]
pub struct Caller {
    peer: Arc<Peer>,
    /// What was read from the store when the caller was checked: by construction, none of
    /// the path's serials. The decision is handed this very snapshot.
    revoked: RevokedSet,
}

impl Caller {
    /// Who is calling.
    pub fn peer(&self) -> &Peer {
        &self.peer
    }

    /// The revocation state of the caller's path read when it was checked.
    pub(crate) fn revocations(&self) -> &RevokedSet {
        &self.revoked
    }
}

impl Broker {
    /// Checks `peer`'s whole path at `now` and its role against `access` (module
    /// documentation). Refusals are counted under the `auth` endpoint in the metrics.
    pub fn authenticate(
        &self,
        peer: Arc<Peer>,
        access: Access,
        now: SystemTime,
    ) -> Result<Caller, BrokerError> {
        let result = self.check_caller(peer, access, now);
        if let Err(e) = &result {
            self.metrics.record_request("auth", e.code());
        }
        result
    }

    fn check_caller(
        &self,
        peer: Arc<Peer>,
        access: Access,
        now: SystemTime,
    ) -> Result<Caller, BrokerError> {
        peer.verified_chain()?;
        let revoked = peer.revocations(self.store.as_ref())?;
        for (depth, cert) in peer.path.iter().enumerate() {
            let name = |what: &str| {
                format!(
                    "certificate {:?} (depth {depth}, serial {}) {what}",
                    cert.subject, cert.serial
                )
            };
            let denied = |code, reason| BrokerError::Denied {
                code,
                reason,
                request_id: None,
            };
            if revoked.is_revoked(&cert.serial) {
                return Err(denied(DenyCode::CertificateRevoked, name("is revoked")));
            }
            if now < cert.not_before {
                return Err(denied(
                    DenyCode::CertificateNotYetValid,
                    name("is not valid yet"),
                ));
            }
            if now > cert.not_after {
                return Err(denied(DenyCode::CertificateExpired, name("has expired")));
            }
        }
        if let Access::Roles(roles) = access {
            // The role counts only if every intermediate above the leaf may issue it.
            let role = peer.delegated_role()?;
            if !roles.contains(&role) {
                return Err(BrokerError::WrongRole {
                    actual: role.to_string(),
                    action: "use this endpoint",
                });
            }
        }
        Ok(Caller { peer, revoked })
    }
}

/// Refusals made before a request reaches its handler that are audit entries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RefusedAttempt {
    /// An execution request (`execution_denied`).
    Execution,
    /// A redemption (`token_redeemed` with the code).
    Redemption,
    /// An executor's outcome report (`outcome_reported` with the code).
    Outcome,
    /// An approver's decision (`approval_given` with the code and no `decision`: the body,
    /// which says which, is not read for a caller refused before its handler).
    Approval,
    /// Any other route (`access_refused`): only for the caller's own certificate.
    Access,
}

impl Broker {
    /// Records that `peer`'s attempt was refused with the code `code` before its handler ran (its
    /// certificate revoked or expired, another role, the broker frozen): what a SIEM alerts on
    /// (docs/AUDIT.md). Best effort and without waiting: the entry is queued to the store's
    /// writer, a failed write is logged, and the refusal stands either way.
    pub fn audit_refused_attempt(&self, peer: &Peer, attempt: RefusedAttempt, code: &str) {
        self.audit_refused_attempt_on(peer, attempt, code, None);
    }

    /// [`Broker::audit_refused_attempt`] for an attempt about request `request_id` (an outcome
    /// report names the request in its path).
    pub fn audit_refused_attempt_on(
        &self,
        peer: &Peer,
        attempt: RefusedAttempt,
        code: &str,
        request_id: Option<&str>,
    ) {
        let mut entry = refused_entry(peer, attempt, code);
        entry.request_id = request_id.map(str::to_owned);
        self.append_refusal(entry);
    }

    /// Queues the entry of a refused attempt ([`refused_entry`]) without waiting for it.
    pub fn append_refusal(&self, entry: crate::audit::entry::Entry) {
        append_with_retries(
            self.store.clone(),
            entry,
            crate::store::INDEX_TAKEN_ATTEMPTS,
        );
    }
}

/// The audit entry of an attempt refused before any decision: who, which code.
pub fn refused_entry(
    peer: &Peer,
    attempt: RefusedAttempt,
    code: &str,
) -> crate::audit::entry::Entry {
    use crate::audit::entry::EntryKind;
    let kind = match attempt {
        RefusedAttempt::Execution => EntryKind::ExecutionDenied,
        RefusedAttempt::Redemption => EntryKind::TokenRedeemed,
        RefusedAttempt::Outcome => EntryKind::OutcomeReported,
        RefusedAttempt::Approval => EntryKind::ApprovalGiven,
        RefusedAttempt::Access => EntryKind::AccessRefused,
    };
    let mut entry = super::audit::entry_now(kind);
    entry.cert = Some(super::audit::cert_ref(
        &peer.thumbprint,
        peer.serials().next(),
        &peer.subject,
    ));
    if attempt == RefusedAttempt::Execution {
        entry.decision = Some("denied".into());
    }
    entry.code = Some(code.to_owned());
    entry
}

/// Queues `entry` without waiting; when its reserved index was taken meanwhile (the CLI, a
/// process of its own, appended an entry: `seb cert revoke`, `seb freeze`), queues it again
/// at a fresh one, up to `attempts` times. The retry is queued from a thread of its own, never
/// from inside the store writer's callback.
fn append_with_retries(
    store: Arc<dyn crate::store::Store>,
    entry: crate::audit::entry::Entry,
    attempts: u32,
) {
    let again = (store.clone(), entry.clone());
    store.append_audit_then(
        &entry,
        Box::new(move |written| match written {
            Err(e) if attempts > 1 && e.is_index_taken() => {
                let (store, entry) = again;
                std::thread::spawn(move || append_with_retries(store, entry, attempts - 1));
            }
            Err(e) => {
                let code = again.1.code.unwrap_or_default();
                tracing::error!(error = %e, %code, "a refused attempt could not be logged");
            }
            Ok(_) => {}
        }),
    );
}
