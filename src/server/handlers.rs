//! The v1 API's handlers: each parses its input strictly, runs the broker's work on a blocking
//! thread ([`blocking`]) and answers JSON (or PEM, or text). Who may call which route is
//! decided before them, by [`super::authorize`] over [`super::ROUTES`].

use std::sync::Arc;
use std::time::{Instant, SystemTime};

use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use serde_json::json;

use super::error::{self, ApiError, HttpError};
use super::App;
use crate::broker::{ApprovalBody, BrokerError, Caller, ExecutionRequest};

/// The query strings and bodies of the v1 routes, strictly: an unknown field is refused.
mod shapes {
    /// `GET /v1/executions?status=pending`: only `pending` is served.
    #[derive(serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    pub(in crate::server) struct ListQuery {
        pub(in crate::server) status: String,
    }

    /// `POST /v1/tokens/redeem`: the token an executor is about to act on.
    #[derive(serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    pub(in crate::server) struct RedeemBody {
        pub(in crate::server) token: String,
    }

    /// `POST /v1/executions/{id}/outcome`: the executor's signed receipt.
    #[derive(serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    pub(in crate::server) struct OutcomeBody {
        pub(in crate::server) receipt: crate::receipt::Receipt,
    }

    /// `GET /v1/crl[?issuer=NAME]`: the root's CRL, or a named intermediate's.
    #[derive(serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    pub(in crate::server) struct CrlQuery {
        pub(in crate::server) issuer: Option<String>,
    }

    /// `GET /v1/attestation?nonce=HEX`: the caller's fresh nonce.
    #[derive(serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    pub(in crate::server) struct AttestationQuery {
        pub(in crate::server) nonce: String,
    }

    /// `GET /v1/audit/entries?start=S[&end=E]`: a page of the log, `end` exclusive.
    #[derive(serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    pub(in crate::server) struct EntriesQuery {
        pub(in crate::server) start: u64,
        pub(in crate::server) end: Option<u64>,
    }

    /// `GET /v1/audit/proof/inclusion?index=I&size=N`.
    #[derive(serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    pub(in crate::server) struct InclusionQuery {
        pub(in crate::server) index: u64,
        pub(in crate::server) size: u64,
    }

    /// `GET /v1/audit/proof/consistency?from=M&to=N`.
    #[derive(serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    pub(in crate::server) struct ConsistencyQuery {
        pub(in crate::server) from: u64,
        pub(in crate::server) to: u64,
    }
}
use shapes::*;

/// A query string as axum extracts it, kept as a `Result` so a bad one gets seb's own error.
type QueryResult<T> = Result<Query<T>, QueryRejection>;

/// The parsed query, or `invalid` for a query that does not fit `T`.
fn query_or<T>(
    query: QueryResult<T>,
    invalid: impl FnOnce(QueryRejection) -> ApiError,
) -> Result<T, ApiError> {
    query.map(|Query(q)| q).map_err(invalid)
}

pub(super) async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, BrokerError> + Send + 'static,
) -> Result<T, ApiError> {
    match tokio::task::spawn_blocking(f).await {
        Ok(result) => result.map_err(ApiError::from),
        Err(e) => Err(ApiError::from(BrokerError::Internal(e.to_string()))),
    }
}

/// Runs `f` with the broker on a blocking thread ([`blocking`]) and answers its result as JSON.
async fn blocking_json<T: serde::Serialize + Send + 'static>(
    app: &App,
    f: impl FnOnce(&crate::broker::Broker) -> Result<T, BrokerError> + Send + 'static,
) -> Result<Response, ApiError> {
    let broker = app.broker.clone();
    let value = blocking(move || f(&broker)).await?;
    Ok(Json(value).into_response())
}

fn parse_body<T: serde::de::DeserializeOwned>(
    body: Result<Bytes, BytesRejection>,
) -> Result<T, ApiError> {
    let bytes = body.map_err(|rejection| {
        if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
            HttpError::BodyTooLarge
        } else {
            HttpError::UnreadableBody
        }
    })?;
    let value = crate::json::parse_strict(&bytes).map_err(|e| match e {
        // Well-formed JSON with a number not every parser holds alike: the same code as an
        // unsafe integer found while canonicalising the parameters.
        crate::json::StrictJsonError::UnsafeNumber(_) => HttpError::InvalidBody(e.to_string()),
        crate::json::StrictJsonError::Syntax(_) => HttpError::MalformedJson(e.to_string()),
    })?;
    // Every body is an object, and so is every member the API documents as one: serde would
    // otherwise fill a struct from an array by position.
    let objects: &[&[&str]] = &[&["receipt"], &["receipt", "body"]];
    Ok(crate::json::object_as(value, objects).map_err(HttpError::InvalidBody)?)
}

pub(super) async fn create_execution(
    State(app): State<App>,
    Extension(caller): Extension<Arc<Caller>>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let request: ExecutionRequest = parse_body(body)?;
    let response = match app.broker.request_execution(&caller, request).await {
        Ok(response) => response,
        // Every refusal is in the log already: a decision's with the request, one by the
        // broker's own state (frozen, attestation) as a request refused before deciding.
        Err(e) => return Err(e.into()),
    };
    let status = if response.token.is_some() {
        StatusCode::CREATED
    } else {
        StatusCode::ACCEPTED
    };
    Ok((status, Json(response)).into_response())
}

/// The request id in a path: one that cannot be a request id (not even text, such as `%FF`)
/// names no request, so it is `404 not_found` like any unknown id, not axum's own plain-text
/// refusal.
fn request_id(id: Result<Path<String>, PathRejection>) -> Result<String, ApiError> {
    match id {
        Ok(Path(id)) if crate::broker::is_request_id(&id) => Ok(id),
        _ => Err(ApiError::from(BrokerError::NotFound)),
    }
}

pub(super) async fn get_execution(
    State(app): State<App>,
    Extension(caller): Extension<Arc<Caller>>,
    id: Result<Path<String>, PathRejection>,
) -> Result<Response, ApiError> {
    let id = request_id(id)?;
    blocking_json(&app, move |broker| broker.execution(&caller, &id)).await
}

/// `GET /v1/grants`: the calling agent's own grants as the decision applies them, its
/// certificate's expiry, the policy epoch and whether issuance is frozen. Reads nothing but the
/// caller's own path (admitted a moment ago) and the broker's in-memory policy.
pub(super) async fn grants(
    State(app): State<App>,
    Extension(caller): Extension<Arc<Caller>>,
) -> Result<Response, ApiError> {
    let result = app.broker.agent_authority(&caller, SystemTime::now());
    app.broker.metrics().record_request(
        "grants",
        match &result {
            Ok(_) => "ok",
            Err(e) => e.code(),
        },
    );
    Ok(Json(result?).into_response())
}

/// `GET /v1/executions?status=pending`: the open requests the calling approver may decide,
/// with the exact parameters it would sign over.
pub(super) async fn list_executions(
    State(app): State<App>,
    Extension(caller): Extension<Arc<Caller>>,
    query: QueryResult<ListQuery>,
) -> Result<Response, ApiError> {
    let query = query_or(query, |_| HttpError::InvalidQuery.into())?;
    if query.status != "pending" {
        return Err(HttpError::InvalidQuery.into());
    }
    let broker = app.broker.clone();
    let (requests, truncated) = blocking(move || broker.pending_requests(&caller)).await?;
    // A list that left requests out says so, so that no approver takes it for all.
    Ok(Json(json!({ "requests": requests, "truncated": truncated })).into_response())
}

/// `POST /v1/executions/{id}/approvals`: an approver's signed decision. The work runs in a
/// task of its own, so a client that goes away after its approval was recorded cannot leave a
/// quorum without its token.
pub(super) async fn post_approval(
    State(app): State<App>,
    Extension(caller): Extension<Arc<Caller>>,
    id: Result<Path<String>, PathRejection>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let id = request_id(id)?;
    let decision: ApprovalBody = parse_body(body)?;
    let broker = app.broker.clone();
    let task = tokio::spawn(async move {
        let recorder = broker.clone();
        let step = match tokio::task::spawn_blocking(move || {
            recorder.record_approval(&caller, &id, decision)
        })
        .await
        {
            Ok(step) => step?,
            Err(e) => return Err(BrokerError::Internal(e.to_string())),
        };
        broker.finish_approval(step).await
    });
    let response = match task.await {
        Ok(result) => result?,
        Err(e) => return Err(ApiError::from(BrokerError::Internal(e.to_string()))),
    };
    Ok(Json(response).into_response())
}

pub(super) async fn redeem(
    State(app): State<App>,
    Extension(caller): Extension<Arc<Caller>>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let RedeemBody { token } = parse_body(body)?;
    blocking_json(&app, move |broker| broker.redeem(&caller, &token)).await
}

/// `POST /v1/executions/{id}/outcome`: an executor's signed receipt for a token it redeemed.
pub(super) async fn post_outcome(
    State(app): State<App>,
    Extension(caller): Extension<Arc<Caller>>,
    id: Result<Path<String>, PathRejection>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let id = request_id(id)?;
    let OutcomeBody { receipt } = parse_body(body)?;
    let broker = app.broker.clone();
    let recorded = blocking(move || broker.record_outcome(&caller, &id, receipt)).await?;
    Ok((StatusCode::CREATED, Json(recorded)).into_response())
}

pub(super) async fn trust(State(app): State<App>) -> Result<Response, ApiError> {
    let broker = app.broker.clone();
    let pem = blocking(move || {
        broker.reload_if_rotated();
        Ok(broker.trust_pem().to_owned())
    })
    .await?;
    // A bundle, not a chain: RFC 8555's application/pem-certificate-chain means an end-entity
    // certificate first and each next one certifying the one before, and this starts with
    // the root.
    Ok(([(header::CONTENT_TYPE, "application/x-pem-file")], pem).into_response())
}

/// Whether the request's `Accept` names `media_type` itself with a weight above zero (RFC 9110
/// §12.5.1: `q=0` means "not acceptable"). Wildcards do not count: PEM is the default.
fn accepts(headers: &axum::http::HeaderMap, media_type: &str) -> bool {
    headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|range| {
            let mut parts = range.split(';');
            let named = parts
                .next()
                .is_some_and(|t| t.trim().eq_ignore_ascii_case(media_type));
            let refused = parts.any(|p| {
                p.split_once('=').is_some_and(|(k, v)| {
                    k.trim().eq_ignore_ascii_case("q")
                        && v.trim()
                            .parse::<f32>()
                            .map_or(true, |q| !(q.is_finite() && q > 0.0))
                })
            });
            named && !refused
        })
}

/// `GET /v1/crl[?issuer=NAME]`: the root's CRL, or an intermediate's (key in the HSM). PEM
/// (`application/x-pem-file`) by default; DER under its registered type
/// (`application/pkix-crl`, RFC 2585) for a client whose `Accept` names that type.
pub(super) async fn crl(
    State(app): State<App>,
    headers: axum::http::HeaderMap,
    query: QueryResult<CrlQuery>,
) -> Result<Response, ApiError> {
    let query = query_or(query, |_| HttpError::InvalidQuery.into())?;
    let der_wanted = accepts(&headers, "application/pkix-crl");
    let broker = app.broker.clone();
    let pem = blocking(move || broker.crl_pem(query.issuer.as_deref())).await?;
    if der_wanted {
        let (_, der) = der::pem::decode_vec(pem.as_bytes())
            .map_err(|e| BrokerError::Internal(format!("the CRL's PEM does not decode: {e}")))?;
        return Ok(([(header::CONTENT_TYPE, "application/pkix-crl")], der).into_response());
    }
    Ok(([(header::CONTENT_TYPE, "application/x-pem-file")], pem).into_response())
}

/// `GET /v1/attestation?nonce=HEX`: a fresh quote for the caller's nonce. Rate-limited per
/// certificate (or address) like every route, then again per caller and globally for quotes,
/// since they serialise on the TPM; callers without a certificate share a smaller budget of
/// their own inside the global one.
pub(super) async fn attestation(
    State(app): State<App>,
    caller: Option<Extension<Arc<Caller>>>,
    anonymous: Option<Extension<super::Anonymous>>,
    query: QueryResult<AttestationQuery>,
) -> Result<Response, ApiError> {
    // `authorize` admitted a certificate holder (a `Caller`) or a client without one.
    let caller = match (caller, anonymous) {
        (Some(Extension(caller)), _) => super::RateKey::Certificate(caller.peer().key_id.clone()),
        (None, Some(Extension(anonymous))) => anonymous.rate_key(),
        (None, None) => return Err(BrokerError::Internal("no caller".into()).into()),
    };
    let now = Instant::now();
    let anonymous = matches!(caller, super::RateKey::Address(_));
    if !app.attest_limiter.allow(&caller.key(), now)
        || (anonymous && !app.attest_anonymous.allow("all", now))
        || !app.attest_global.allow("all", now)
    {
        return Err(HttpError::RateLimited {
            what: "attestation requests",
        }
        .into());
    }
    let query = query_or(query, |_| HttpError::InvalidNonce.into())?;
    let nonce = hex::decode(&query.nonce).map_err(|_| HttpError::InvalidNonce)?;
    if !(crate::attest::MIN_NONCE..=crate::attest::MAX_NONCE).contains(&nonce.len()) {
        return Err(HttpError::InvalidNonce.into());
    }
    let Some(state) = app.broker.attestation().cloned() else {
        return Err(HttpError::AttestationNotConfigured.into());
    };
    let evidence = tokio::task::spawn_blocking(move || state.evidence(&nonce))
        .await
        .map_err(|e| ApiError::from(BrokerError::Internal(e.to_string())))?
        .map_err(|e| match e {
            crate::attest::AttestError::Busy => ApiError::from(HttpError::AttestationBusy),
            e => {
                tracing::error!(error = %error::ErrorChain(&e), "attestation quote failed");
                ApiError::from(HttpError::QuoteFailed)
            }
        })?;
    Ok(Json(evidence).into_response())
}

/// An audit route's query, or `invalid_request` saying what is wrong with it.
fn audit_query<T>(query: QueryResult<T>) -> Result<T, ApiError> {
    // As `/v1/crl` and `/v1/executions` answer a query they do not take (not axum's text).
    query_or(query, |_| HttpError::InvalidQuery.into())
}

/// `GET /v1/audit/checkpoint`: the newest signed checkpoint (C2SP tlog-checkpoint text),
/// signed now if the log grew since the last one.
pub(super) async fn audit_checkpoint(State(app): State<App>) -> Result<Response, ApiError> {
    let broker = app.broker.clone();
    let note = blocking(move || {
        broker.reload_if_rotated();
        let note = broker.audit_log().checkpoint();
        // A rotation between the two: the bundle follows before the checkpoint is served.
        broker.reload_if_rotated();
        note
    })
    .await?;
    Ok(([(header::CONTENT_TYPE, "text/plain; charset=utf-8")], note).into_response())
}

/// `GET /v1/audit/entries?start=&end=`: at most 1000 entries from `start`.
pub(super) async fn audit_entries(
    State(app): State<App>,
    query: QueryResult<EntriesQuery>,
) -> Result<Response, ApiError> {
    let q = audit_query(query)?;
    let broker = app.broker.clone();
    let entries = blocking(move || broker.audit_entries(q.start, q.end)).await?;
    Ok(Json(json!({ "entries": entries })).into_response())
}

pub(super) async fn audit_inclusion(
    State(app): State<App>,
    query: QueryResult<InclusionQuery>,
) -> Result<Response, ApiError> {
    let q = audit_query(query)?;
    blocking_json(&app, move |broker| broker.audit_inclusion(q.index, q.size)).await
}

pub(super) async fn audit_consistency(
    State(app): State<App>,
    query: QueryResult<ConsistencyQuery>,
) -> Result<Response, ApiError> {
    let q = audit_query(query)?;
    blocking_json(&app, move |broker| broker.audit_consistency(q.from, q.to)).await
}

pub(super) async fn healthz(State(app): State<App>) -> Result<Response, ApiError> {
    let broker = app.broker.clone();
    let checks = tokio::task::spawn_blocking(move || broker.health())
        .await
        .unwrap_or_else(|_| vec![("health", Err("health check task failed".into()))]);
    // Warnings do not make the broker unready: an expiring certificate still works today.
    let mut warnings: Vec<serde_json::Value> = app
        .broker
        .expiring_certificates(SystemTime::now())
        .into_iter()
        .map(|(what, not_after)| {
            let at = der::DateTime::from_system_time(not_after)
                .map(|d| d.to_string())
                .unwrap_or_default();
            json!({
                "check": "certificate_expiry",
                "certificate": what,
                "not_after": at,
                "message": renewal_hint(&what, &at),
            })
        })
        .collect();
    if app.broker.config().attestation.is_none() {
        // Allowed (a host without a TPM), but a security team should see it on every probe.
        warnings.push(json!({
            "check": "attestation",
            "message": "no [attestation] is configured: the broker does not attest its own boot \
                        state and its tokens carry no `att` claim (docs/ATTESTATION.md)",
        }));
    }
    let failing = checks.iter().find_map(|(name, result)| {
        result
            .as_ref()
            .err()
            .map(|reason| format!("{name}: {reason}"))
    });
    let ready = failing.is_none();
    let detail: serde_json::Map<String, serde_json::Value> = checks
        .into_iter()
        .map(|(name, result)| {
            let value = match result {
                Ok(()) => json!({"ok": true}),
                Err(reason) => json!({"ok": false, "reason": reason}),
            };
            (name.to_owned(), value)
        })
        .collect();
    let mut body = json!({
        "status": if ready { "ready" } else { "not_ready" },
        "checks": detail,
        "warnings": warnings,
    });
    let Some(failing) = failing else {
        return Ok((StatusCode::OK, Json(body)).into_response());
    };
    // Unready is also an error answer in the API's shape, naming the first failing check, for
    // clients and probes that read `error.code` from every non-2xx answer.
    let unready = ApiError::from(HttpError::NotReady(failing));
    body["error"] = json!({"code": unready.code, "message": unready.message});
    Ok((unready.status, Json(body)).into_response())
}

/// What to do about a broker certificate that expires soon: `seb rotate` for the token, TLS
/// and audit keys; the root is replaced by the plan in OPERATIONS.md ("Year two").
fn renewal_hint(what: &str, at: &str) -> String {
    if what == "root" {
        format!(
            "the root certificate expires at {at}; follow the root rotation plan in docs/OPERATIONS.md (a new root cross-signed by the old one)"
        )
    } else if what == "ak" {
        format!(
            "the attestation key's certificate expires at {at}; renew it with `seb attest enroll` on the broker host, then restart the broker"
        )
    } else {
        format!("the {what} certificate expires at {at}; renew it with `seb rotate {what}`")
    }
}

pub(super) async fn metrics(State(app): State<App>) -> Result<Response, ApiError> {
    Ok((
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        app.broker.metrics().render() + &app.broker.certificate_metrics(SystemTime::now()),
    )
        .into_response())
}

pub(super) async fn not_found() -> ApiError {
    HttpError::NoSuchEndpoint.into()
}

pub(super) async fn method_not_allowed() -> ApiError {
    HttpError::MethodNotAllowed.into()
}

#[cfg(test)]
mod tests {
    use axum::http::{header, HeaderMap, HeaderValue};

    fn accept(values: &[&str]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for v in values {
            headers.append(header::ACCEPT, HeaderValue::from_str(v).unwrap());
        }
        headers
    }

    #[test]
    fn each_certificate_is_renewed_with_a_command_that_exists() {
        let hint = super::renewal_hint("ak", "2027-01-01");
        assert!(
            hint.contains("seb attest enroll") && !hint.contains("rotate"),
            "{hint}"
        );
        assert!(super::renewal_hint("tls", "x").contains("seb rotate tls"));
        assert!(super::renewal_hint("root", "x").contains("root rotation"));
    }

    #[test]
    fn a_media_type_refused_with_q_zero_is_not_accepted() {
        let der = "application/pkix-crl";
        assert!(super::accepts(&accept(&[der]), der));
        assert!(super::accepts(
            &accept(&["text/plain", "Application/PKIX-CRL; q=0.5"]),
            der
        ));
        assert!(super::accepts(
            &accept(&["application/x-pem-file;q=0.1, application/pkix-crl"]),
            der
        ));
        assert!(!super::accepts(&accept(&[]), der));
        assert!(!super::accepts(&accept(&["*/*"]), der));
        assert!(!super::accepts(
            &accept(&["application/x-pem-file, application/pkix-crl;q=0"]),
            der
        ));
        assert!(!super::accepts(
            &accept(&["application/pkix-crl; Q=0.000"]),
            der
        ));
        for refused in ["nonsense", "NaN", "inf", "-1"] {
            let value = format!("application/pkix-crl;q={refused}");
            assert!(!super::accepts(&accept(&[value.as_str()]), der), "{value}");
        }
    }
}
