//! The broker over HTTPS: a tokio-rustls accept loop with mandatory client certificates, an
//! axum router for the v1 API, and graceful shutdown.
//!
//! Device calls and store writes never run on async workers: TLS handshake signatures and
//! other blocking work run on blocking threads, token signatures on the broker's signing
//! threads, and store writes on the store's writer thread. The caller's identity is
//! established once per connection from its verified certificate chain and handed to every
//! request on it.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{MatchedPath, Path, State};
use axum::http::{header, HeaderValue, Request, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use serde_json::json;
use tokio::net::TcpListener;
use tokio::sync::{watch, Semaphore};
use tokio_rustls::TlsAcceptor;
use tracing::Instrument;

use crate::broker::{Access, ApprovalBody, Broker, BrokerError, Caller, ExecutionRequest, Peer};
use crate::grants::RoleKind;

pub mod error;
pub(crate) mod listen;
pub mod ratelimit;
pub mod tls;

pub use error::{ApiError, HttpError};
use ratelimit::RateLimiter;

/// How long a client has to complete the TLS handshake, waiting for a slot included.
const HANDSHAKE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// Handshakes in progress at once. Each holds a blocking thread (the HSM signature blocks);
/// the bound keeps clients that stall their handshakes from taking every blocking thread away
/// from token signing.
const HANDSHAKE_SLOTS: usize = 32;

/// Shared state of the HTTP layer.
#[derive(Clone)]
pub struct App {
    /// The broker.
    pub broker: Arc<Broker>,
    limiter: Arc<RateLimiter>,
    attest_limiter: Arc<RateLimiter>,
    attest_global: Arc<RateLimiter>,
    handshakes: Arc<Semaphore>,
}

/// Quotes per second (and burst) one certificate may ask for. Each quote holds the TPM, so one
/// busy caller must not take the turns of everyone else.
const ATTESTATION_PER_CERT: (u32, u32) = (2, 5);
/// Quotes per second (and burst) for all callers together.
const ATTESTATION_ALL: (u32, u32) = (20, 40);

impl App {
    /// Wraps a broker with the HTTP layer's own state.
    pub fn new(broker: Arc<Broker>) -> Self {
        let server = &broker.config().server;
        let limiter = Arc::new(RateLimiter::new(
            server.rate_limit_per_second,
            server.rate_limit_burst,
        ));
        Self {
            broker,
            limiter,
            // Quotes serialise on the TPM (a few ms on swtpm, tens to hundreds on hardware).
            attest_limiter: Arc::new(RateLimiter::new(
                ATTESTATION_PER_CERT.0,
                ATTESTATION_PER_CERT.1,
            )),
            attest_global: Arc::new(RateLimiter::new(ATTESTATION_ALL.0, ATTESTATION_ALL.1)),
            handshakes: Arc::new(Semaphore::new(HANDSHAKE_SLOTS)),
        }
    }

    fn check_rate(&self, peer: &Peer) -> Result<(), ApiError> {
        // Keyed on the client's key, not its certificate's encoding (see `Peer::key_id`).
        if self.limiter.allow(&peer.key_id, Instant::now()) {
            Ok(())
        } else {
            self.broker.metrics().record_request("any", "rate_limited");
            Err(HttpError::RateLimited {
                what: "requests from this certificate",
            }
            .into())
        }
    }
}

const AGENT: &[RoleKind] = &[RoleKind::Agent];
const AGENT_OR_APPROVER: &[RoleKind] = &[RoleKind::Agent, RoleKind::Approver];
const APPROVER: &[RoleKind] = &[RoleKind::Approver];
const EXECUTOR: &[RoleKind] = &[RoleKind::Executor];

/// Every route the router serves, as (method, path template, who may call it): the one table
/// of access. [`authorize`] runs for every route and admits a request only if the caller's
/// whole path is valid now and unrevoked ([`Broker::authenticate`]) and its role is the
/// route's; a route missing here is refused. The OpenAPI document in `docs/openapi.json` must
/// describe exactly these routes, with these roles in `x-seb-roles` (a test checks both
/// against the router).
///
/// "Public" routes ([`Access::AnyCertificate`]) still need a client certificate whose path
/// validates to the root and is valid and unrevoked now: the trust bundle, the CRL, health,
/// metrics and attestation are for any certificate holder, not for anyone on the network.
pub const ROUTES: &[(&str, &str, Access)] = &[
    ("POST", "/v1/executions", Access::Roles(AGENT)),
    ("GET", "/v1/executions", Access::Roles(APPROVER)),
    (
        "GET",
        "/v1/executions/{id}",
        Access::Roles(AGENT_OR_APPROVER),
    ),
    (
        "POST",
        "/v1/executions/{id}/approvals",
        Access::Roles(APPROVER),
    ),
    ("POST", "/v1/tokens/redeem", Access::Roles(EXECUTOR)),
    (
        "POST",
        "/v1/executions/{id}/outcome",
        Access::Roles(EXECUTOR),
    ),
    ("GET", "/v1/trust", Access::AnyCertificate),
    ("GET", "/v1/crl", Access::AnyCertificate),
    ("GET", "/healthz", Access::AnyCertificate),
    ("GET", "/metrics", Access::AnyCertificate),
    ("GET", "/v1/attestation", Access::AnyCertificate),
    ("GET", "/v1/audit/checkpoint", Access::AnyCertificate),
    ("GET", "/v1/audit/entries", Access::AnyCertificate),
    ("GET", "/v1/audit/proof/inclusion", Access::AnyCertificate),
    ("GET", "/v1/audit/proof/consistency", Access::AnyCertificate),
];

/// Who may call `method path` (a route template), from [`ROUTES`]; HEAD as GET.
fn access_for(method: &str, path: &str) -> Option<Access> {
    let method = if method == "HEAD" { "GET" } else { method };
    ROUTES
        .iter()
        .find(|(m, p, _)| *m == method && *p == path)
        .map(|(_, _, access)| *access)
}

/// The v1 API routes. Every route runs [`authorize`] first, which needs the [`Peer`]
/// extension the accept loop adds from the connection's client certificate.
pub fn router(app: App) -> Router {
    let config = &app.broker.config().server;
    let timeout = config.request_timeout;
    let body_limit = config.max_body_bytes;
    Router::new()
        .route(
            "/v1/executions",
            post(create_execution).get(list_executions),
        )
        .route("/v1/executions/{id}", get(get_execution))
        .route("/v1/executions/{id}/approvals", post(post_approval))
        .route("/v1/executions/{id}/outcome", post(post_outcome))
        .route("/v1/tokens/redeem", post(redeem))
        .route("/v1/trust", get(trust))
        .route("/v1/crl", get(crl))
        .route("/v1/attestation", get(attestation))
        .route("/v1/audit/checkpoint", get(audit_checkpoint))
        .route("/v1/audit/entries", get(audit_entries))
        .route("/v1/audit/proof/inclusion", get(audit_inclusion))
        .route("/v1/audit/proof/consistency", get(audit_consistency))
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics))
        .route_layer(middleware::from_fn_with_state(app.clone(), authorize))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(axum::extract::DefaultBodyLimit::max(body_limit))
        .layer(middleware::from_fn(move |req, next| {
            refuse_declared_oversize(req, next, body_limit)
        }))
        .layer(middleware::from_fn(move |req, next| {
            request_context(req, next, timeout)
        }))
        .with_state(app)
}

/// Answers 413 `body_too_large` from the `Content-Length` header alone, before any handler
/// touches the body. hyper sends `100 Continue` to a client that sent `Expect: 100-continue`
/// (curl does for large bodies) as soon as the body is first read, so a limit seen only while
/// reading would come after the 100 and end in a dropped connection instead of an answer.
/// Bodies without a length (chunked) are still bounded while they are read.
async fn refuse_declared_oversize(
    req: Request<axum::body::Body>,
    next: Next,
    limit: usize,
) -> Response {
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    if declared.is_some_and(|len| len > limit as u64) {
        let mut response = ApiError::from(HttpError::BodyTooLarge).into_response();
        // The unread body makes the connection unusable for another request.
        response
            .headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
        return response;
    }
    next.run(req).await
}

/// Serves until `shutdown` turns true, then stops accepting and lets open requests finish.
pub async fn serve(
    app: App,
    tls_config: rustls::ServerConfig,
    listener: TcpListener,
    shutdown: watch::Receiver<bool>,
) -> std::io::Result<()> {
    let acceptor = TlsAcceptor::from(Arc::new(tls_config));
    let router = router(app.clone());
    let handle = tokio::runtime::Handle::current();
    let max_connections = app.broker.config().server.max_connections;
    listen::accept_until(
        listener,
        shutdown,
        max_connections,
        |stream, remote, watcher| {
            let (acceptor, router, app, handle) = (
                acceptor.clone(),
                router.clone(),
                app.clone(),
                handle.clone(),
            );
            async move {
                if let Some((tls, peer)) =
                    accept_connection(acceptor, stream, remote, app, handle).await
                {
                    listen::serve_http1(tls, router, peer, watcher, remote).await;
                }
            }
        },
    )
    .await;
    Ok(())
}

/// Runs the TLS handshake on a blocking thread (the HSM signature blocks), then builds the
/// peer identity from the verified client chain, also off the async workers.
async fn accept_connection(
    acceptor: TlsAcceptor,
    stream: tokio::net::TcpStream,
    remote: SocketAddr,
    app: App,
    handle: tokio::runtime::Handle,
) -> Option<(
    tokio_rustls::server::TlsStream<tokio::net::TcpStream>,
    Arc<Peer>,
)> {
    let deadline = tokio::time::Instant::now() + HANDSHAKE_TIMEOUT;
    let Ok(Ok(slot)) =
        tokio::time::timeout_at(deadline, app.handshakes.clone().acquire_owned()).await
    else {
        tracing::warn!(%remote, "no handshake slot in time; closing");
        app.broker
            .metrics()
            .record_request("tls", "handshake_slots_exhausted");
        return None;
    };
    let handshake = tokio::task::spawn_blocking(move || {
        let _slot = slot;
        handle.block_on(
            async move { tokio::time::timeout_at(deadline, acceptor.accept(stream)).await },
        )
    });
    let tls = match handshake.await {
        Ok(Ok(Ok(tls))) => tls,
        Ok(Ok(Err(e))) => {
            tracing::info!(%remote, error = %e, "TLS handshake failed");
            app.broker
                .metrics()
                .record_request("tls", "handshake_failed");
            return None;
        }
        Ok(Err(_)) => {
            tracing::info!(%remote, "TLS handshake timed out");
            return None;
        }
        Err(e) => {
            tracing::error!(%remote, error = %e, "handshake task failed");
            return None;
        }
    };
    let presented: Vec<Vec<u8>> = tls
        .get_ref()
        .1
        .peer_certificates()
        .map(|certs| certs.iter().map(|c| c.as_ref().to_vec()).collect())
        .unwrap_or_default();
    // A returning client's validated path comes from the cache, here on the async worker;
    // validating a new chain checks signatures in software, on a blocking thread.
    let peer = match app.broker.cached_peer(&presented) {
        Some(peer) => Ok(peer),
        None => {
            let broker = app.broker.clone();
            tokio::task::spawn_blocking(move || broker.peer(&presented, SystemTime::now()))
                .await
                .ok()?
        }
    };
    match peer {
        Ok(peer) => Some((tls, peer)),
        Err(e) => {
            tracing::info!(%remote, error = %e, "client certificate unusable");
            None
        }
    }
}

/// Admits a request to its route, or answers the refusal: the caller's rate limit (keyed on
/// its key), then its whole path and role ([`Broker::authenticate`] with the route's
/// [`Access`] from [`ROUTES`]). The handler gets the [`Caller`] as an extension. Runs on the
/// async worker: the revocation lookups are indexed reads of a few pages, like the decision's.
async fn authorize(
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
        return ApiError::from(BrokerError::BadCertificate("no client certificate".into()))
            .into_response();
    };
    if let Err(refused) = app.check_rate(&peer) {
        return refused.into_response();
    }
    match app.broker.authenticate(peer, access, SystemTime::now()) {
        Ok(caller) => {
            req.extensions_mut().insert(Arc::new(caller));
            next.run(req).await
        }
        Err(e) => ApiError::from(e).into_response(),
    }
}

/// Request id, tracing span, time limit and security headers for every request.
async fn request_context(
    req: Request<axum::body::Body>,
    next: Next,
    timeout: std::time::Duration,
) -> Response {
    let mut id_bytes = [0u8; 12];
    let _ = getrandom::fill(&mut id_bytes);
    let request_id = hex::encode(id_bytes);
    let span = tracing::info_span!("request", id = %request_id, method = %req.method(), path = %req.uri().path());
    let mut response = match tokio::time::timeout(timeout, next.run(req).instrument(span)).await {
        Ok(response) => response,
        Err(_) => ApiError::from(HttpError::Timeout).into_response(),
    };
    let headers = response.headers_mut();
    if let Ok(v) = HeaderValue::from_str(&request_id) {
        headers.insert("x-request-id", v);
    }
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(
        "x-content-type-options",
        HeaderValue::from_static("nosniff"),
    );
    response
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, BrokerError> + Send + 'static,
) -> Result<T, ApiError> {
    match tokio::task::spawn_blocking(f).await {
        Ok(result) => result.map_err(ApiError::from),
        Err(e) => Err(ApiError::from(BrokerError::Internal(e.to_string()))),
    }
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
    let value =
        crate::json::parse_strict(&bytes).map_err(|e| HttpError::MalformedJson(e.to_string()))?;
    Ok(serde_json::from_value(value).map_err(|e| HttpError::InvalidBody(e.to_string()))?)
}

async fn create_execution(
    State(app): State<App>,
    Extension(caller): Extension<Arc<Caller>>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let request: ExecutionRequest = parse_body(body)?;
    let response = app.broker.request_execution(&caller, request).await?;
    let status = if response.token.is_some() {
        StatusCode::CREATED
    } else {
        StatusCode::ACCEPTED
    };
    Ok((status, Json(response)).into_response())
}

async fn get_execution(
    State(app): State<App>,
    Extension(caller): Extension<Arc<Caller>>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    if id.len() > 64 {
        return Err(ApiError::from(BrokerError::NotFound));
    }
    let broker = app.broker.clone();
    let response = blocking(move || broker.execution(&caller, &id)).await?;
    Ok(Json(response).into_response())
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct ListQuery {
    status: String,
}

/// `GET /v1/executions?status=pending`: the open requests the calling approver may decide,
/// with the exact parameters it would sign over.
async fn list_executions(
    State(app): State<App>,
    Extension(caller): Extension<Arc<Caller>>,
    query: Result<axum::extract::Query<ListQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    let axum::extract::Query(query) = query.map_err(|_| HttpError::InvalidQuery)?;
    if query.status != "pending" {
        return Err(HttpError::InvalidQuery.into());
    }
    let broker = app.broker.clone();
    let requests = blocking(move || broker.pending_requests(&caller)).await?;
    Ok(Json(json!({ "requests": requests })).into_response())
}

/// `POST /v1/executions/{id}/approvals`: an approver's signed decision. The work runs in a
/// task of its own, so a client that goes away after its approval was recorded cannot leave a
/// quorum without its token.
async fn post_approval(
    State(app): State<App>,
    Extension(caller): Extension<Arc<Caller>>,
    Path(id): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    if id.len() > 64 {
        return Err(ApiError::from(BrokerError::NotFound));
    }
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

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct RedeemBody {
    token: String,
}

async fn redeem(
    State(app): State<App>,
    Extension(caller): Extension<Arc<Caller>>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let RedeemBody { token } = parse_body(body)?;
    let broker = app.broker.clone();
    let redemption = blocking(move || broker.redeem(&caller, &token)).await?;
    Ok(Json(redemption).into_response())
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct OutcomeBody {
    receipt: crate::receipt::Receipt,
}

/// `POST /v1/executions/{id}/outcome`: an executor's signed receipt for a token it redeemed.
async fn post_outcome(
    State(app): State<App>,
    Extension(caller): Extension<Arc<Caller>>,
    Path(id): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    if id.len() > 64 {
        return Err(ApiError::from(BrokerError::NotFound));
    }
    let OutcomeBody { receipt } = parse_body(body)?;
    let broker = app.broker.clone();
    let recorded = blocking(move || broker.record_outcome(&caller, &id, receipt)).await?;
    Ok((StatusCode::CREATED, Json(recorded)).into_response())
}

async fn trust(State(app): State<App>) -> Response {
    (
        [(header::CONTENT_TYPE, "application/pem-certificate-chain")],
        app.broker.trust_pem().to_owned(),
    )
        .into_response()
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct CrlQuery {
    issuer: Option<String>,
}

/// `GET /v1/crl[?issuer=NAME]`: the root's CRL, or an intermediate's (key in the HSM).
async fn crl(
    State(app): State<App>,
    query: Result<axum::extract::Query<CrlQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    let axum::extract::Query(query) =
        query.map_err(|_| BrokerError::NoCrlIssuer("(malformed query)".into()))?;
    let broker = app.broker.clone();
    let pem = blocking(move || broker.crl_pem(query.issuer.as_deref())).await?;
    Ok(([(header::CONTENT_TYPE, "application/pkix-crl")], pem).into_response())
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct AttestationQuery {
    nonce: String,
}

/// `GET /v1/attestation?nonce=HEX`: a fresh quote for the caller's nonce. Rate-limited per
/// certificate like every route, then again per certificate and globally for quotes, since
/// they serialise on the TPM.
async fn attestation(
    State(app): State<App>,
    Extension(caller): Extension<Arc<Caller>>,
    query: Result<axum::extract::Query<AttestationQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    let now = Instant::now();
    if !app.attest_limiter.allow(&caller.peer().key_id, now) || !app.attest_global.allow("all", now)
    {
        return Err(HttpError::RateLimited {
            what: "attestation requests",
        }
        .into());
    }
    let axum::extract::Query(query) = query.map_err(|_| HttpError::InvalidNonce)?;
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

type AuditQuery<T> = Result<axum::extract::Query<T>, axum::extract::rejection::QueryRejection>;

fn audit_query<T>(query: AuditQuery<T>) -> Result<T, ApiError> {
    query
        .map(|axum::extract::Query(q)| q)
        .map_err(|e| ApiError::from(BrokerError::InvalidRequest(e.body_text())))
}

/// `GET /v1/audit/checkpoint`: the newest signed checkpoint (C2SP tlog-checkpoint text),
/// signed now if the log grew since the last one.
async fn audit_checkpoint(State(app): State<App>) -> Result<Response, ApiError> {
    let log = app.broker.audit_log().clone();
    let note = blocking(move || log.checkpoint()).await?;
    Ok(([(header::CONTENT_TYPE, "text/plain; charset=utf-8")], note).into_response())
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct EntriesQuery {
    start: u64,
    end: Option<u64>,
}

/// `GET /v1/audit/entries?start=&end=`: at most 1000 entries from `start`.
async fn audit_entries(
    State(app): State<App>,
    query: AuditQuery<EntriesQuery>,
) -> Result<Response, ApiError> {
    let q = audit_query(query)?;
    let broker = app.broker.clone();
    let entries = blocking(move || broker.audit_entries(q.start, q.end)).await?;
    Ok(Json(json!({ "entries": entries })).into_response())
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct InclusionQuery {
    index: u64,
    size: u64,
}

async fn audit_inclusion(
    State(app): State<App>,
    query: AuditQuery<InclusionQuery>,
) -> Result<Response, ApiError> {
    let q = audit_query(query)?;
    let broker = app.broker.clone();
    let proof = blocking(move || broker.audit_inclusion(q.index, q.size)).await?;
    Ok(Json(proof).into_response())
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct ConsistencyQuery {
    from: u64,
    to: u64,
}

async fn audit_consistency(
    State(app): State<App>,
    query: AuditQuery<ConsistencyQuery>,
) -> Result<Response, ApiError> {
    let q = audit_query(query)?;
    let broker = app.broker.clone();
    let proof = blocking(move || broker.audit_consistency(q.from, q.to)).await?;
    Ok(Json(proof).into_response())
}

async fn healthz(State(app): State<App>) -> Result<Response, ApiError> {
    let broker = app.broker.clone();
    let checks = tokio::task::spawn_blocking(move || broker.health())
        .await
        .unwrap_or_else(|_| vec![("health", Err("health check task failed".into()))]);
    // Warnings do not make the broker unready: an expiring certificate still works today.
    let warnings: Vec<serde_json::Value> = app
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
    let ready = checks.iter().all(|(_, r)| r.is_ok());
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
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    Ok((
        status,
        Json(json!({
            "status": if ready { "ready" } else { "not_ready" },
            "checks": detail,
            "warnings": warnings,
        })),
    )
        .into_response())
}

/// What to do about a broker certificate that expires soon: `seb rotate` for the token, TLS
/// and audit keys; the root is replaced by the plan in OPERATIONS.md ("Year two").
fn renewal_hint(what: &str, at: &str) -> String {
    if what == "root" {
        format!(
            "the root certificate expires at {at}; follow the root rotation plan in docs/OPERATIONS.md (a new root cross-signed by the old one)"
        )
    } else {
        format!("the {what} certificate expires at {at}; renew it with `seb rotate {what}`")
    }
}

async fn metrics(State(app): State<App>) -> Result<Response, ApiError> {
    Ok((
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        app.broker.metrics().render() + &app.broker.certificate_metrics(SystemTime::now()),
    )
        .into_response())
}

async fn not_found() -> ApiError {
    HttpError::NoSuchEndpoint.into()
}

async fn method_not_allowed() -> ApiError {
    HttpError::MethodNotAllowed.into()
}
