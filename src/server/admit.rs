//! Admission of a request to its route: the caller's rate limit, then its whole path and role
//! checked for the route's [`Access`]; and the audit entries of refusals for the caller's own
//! certificate or the broker's kill switches.

use std::sync::Arc;
use std::time::SystemTime;

use axum::extract::{MatchedPath, State};
use axum::http::Request;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::{access_for, closing, Anonymous, ApiError, App, HttpError};
use crate::broker::{Access, BrokerError, Peer, RefusedAttempt};

/// Admits a request to its route, or answers the refusal: the caller's rate limit (keyed on
/// its key), then its whole path and role ([`Broker::authenticate`] with the route's
/// [`Access`] from [`ROUTES`]). The handler gets the [`Caller`] as an extension. With SQLite
/// it runs on the async worker (the revocation lookups are indexed reads of a few local
/// pages); with a shared PostgreSQL store they are network round trips that may wait for a
/// connection, so they run on a blocking thread and a slow database holds that request only,
/// never the worker the other connections need.
pub(super) async fn authorize(
    State(app): State<App>,
    mut req: Request<axum::body::Body>,
    next: Next,
) -> Response {
    let access = req
        .extensions()
        .get::<MatchedPath>()
        .and_then(|path| access_for(req.method().as_str(), path.as_str()));
    let Some(access) = access else {
        // A route someone added to the router but not to the table: refused, not open.
        return ApiError::from(HttpError::NoAccessRule).into_response();
    };
    let Some(peer) = req.extensions().get::<Arc<Peer>>().cloned() else {
        return match req.extensions().get::<Anonymous>().copied() {
            // A client without a certificate: the routes for anyone, rate-limited by address.
            Some(anonymous) if access == Access::Anyone => {
                let key = anonymous.rate_key();
                if let Err(refused) = app.check_rate(&key.key(), "requests from this address") {
                    return refused.into_response();
                }
                next.run(req).await
            }
            _ => ApiError::from(BrokerError::BadCertificate(
                "no client certificate: this route needs one that chains to the broker's root \
                 (only /v1/trust, /v1/crl and /v1/attestation answer without)"
                    .into(),
            ))
            .into_response(),
        };
    };
    if let Err(refused) = app.check_rate(&peer.key_id, "requests from this certificate") {
        return refused.into_response();
    }
    // An agent asking or an executor redeeming with a certificate that does not count (revoked,
    // expired, another role) is an audit entry: what a SIEM alerts on.
    // So is an approver's decision (a revoked approver still trying is a stolen key at work),
    // and one posted by another role.
    let attempt = match (req.method().as_str(), req.uri().path()) {
        ("POST", "/v1/executions") => Some((RefusedAttempt::Execution, None)),
        ("POST", "/v1/tokens/redeem") => Some((RefusedAttempt::Redemption, None)),
        ("POST", p) => p.strip_prefix("/v1/executions/").and_then(|rest| {
            // The request id from the path, when it is one.
            let named = |id: &str| crate::broker::is_request_id(id).then(|| id.to_owned());
            if let Some(id) = rest.strip_suffix("/outcome") {
                Some((RefusedAttempt::Outcome, named(id)))
            } else {
                rest.strip_suffix("/approvals")
                    .map(|id| (RefusedAttempt::Approval, named(id)))
            }
        }),
        _ => None,
    };
    let caller = peer.clone();
    let admitted = if matches!(
        app.broker.config().store,
        crate::config::StoreConfig::Postgres(_)
    ) {
        let broker = app.broker.clone();
        tokio::task::spawn_blocking(move || broker.authenticate(peer, access, SystemTime::now()))
            .await
            .unwrap_or_else(|e| Err(BrokerError::Internal(format!("authentication task: {e}"))))
    } else {
        app.broker.authenticate(peer, access, SystemTime::now())
    };
    match admitted {
        Ok(caller) => {
            req.extensions_mut().insert(Arc::new(caller));
            next.run(req).await
        }
        Err(e) => {
            if let Some((attempt, request_id)) = attempt {
                audit_refused(&app, &caller, attempt, request_id.as_deref(), &e);
            } else {
                // Any other route refused for the caller's own certificate: a revoked or
                // expired key still in use, even only to look. The route as the router knows
                // it (`/v1/executions/{id}`), never the raw path the caller sent.
                let template = req
                    .extensions()
                    .get::<MatchedPath>()
                    .map_or("(unknown route)", |p| p.as_str());
                let route = format!("{} {template}", req.method());
                audit_refused_access(&app, &caller, &route, &e);
            }
            // A certificate that does not count now will not on this connection either: the
            // connection is closed, so a revoked key cannot keep holding it.
            if CALLER_CERTIFICATE_CODES.contains(&e.code()) {
                return closing(e);
            }
            ApiError::from(e).into_response()
        }
    }
}

/// Refusals for the caller's own certificate (its path revoked, out of its validity, unusable,
/// or its role not delegated): audited on every route.
const CALLER_CERTIFICATE_CODES: [&str; 5] = [
    "certificate_revoked",
    "certificate_expired",
    "certificate_not_yet_valid",
    "bad_certificate",
    "role_not_delegated",
];

/// Queues the `access_refused` entry of a request on `route` (not one that acts: those have
/// entries of their own kinds) refused for the caller's own certificate. Another role's
/// `wrong_role` on a read is not logged: it is a misdirected client, not a key that should no
/// longer be in use.
fn audit_refused_access(app: &App, peer: &Peer, route: &str, e: &BrokerError) {
    let code = e.code();
    if CALLER_CERTIFICATE_CODES.contains(&code) {
        let mut entry = crate::broker::refused_entry(peer, RefusedAttempt::Access, code);
        entry.detail = Some(route.to_owned());
        app.broker.append_refusal(entry);
    }
}

/// Queues the audit entry of an attempt refused for the caller's certificate (revoked,
/// expired, another role) or the broker's kill switches (frozen, attestation), without waiting
/// for it: the refusal does not depend on it ([`Broker::audit_refused_attempt`]). Other
/// failures (store, internal) are not the caller's doing and are in the broker's log.
fn audit_refused(
    app: &App,
    peer: &Peer,
    attempt: RefusedAttempt,
    request_id: Option<&str>,
    e: &BrokerError,
) {
    let code = e.code();
    // The broker's own state is not an approver's doing (docs/AUDIT.md).
    let own_state = ["issuance_frozen", "attestation_failed"];
    if attempt == RefusedAttempt::Approval && own_state.contains(&code) {
        return;
    }
    let audited = CALLER_CERTIFICATE_CODES.contains(&code)
        || ["wrong_role", "issuance_frozen", "attestation_failed"].contains(&code);
    if audited {
        app.broker
            .audit_refused_attempt_on(peer, attempt, code, request_id);
    }
}
