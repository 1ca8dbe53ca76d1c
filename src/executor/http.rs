//! The executor's HTTPS front: the mutual-TLS accept loop, the check of each connection's
//! client certificate (the agent role, chained to the pinned root), the one route
//! (`POST /v1/run`) and how an [`ExecError`] becomes a response (never a path or an OS detail
//! of the executor's host).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Extension, Json, Router};
use serde_json::json;
use tokio::net::TcpListener;
use tokio::sync::watch;

use super::{Agent, ExecError, Executor, ExecutorConfig, RunBody, OVERHEAD};
use crate::cert::Certificate;
use crate::grants::RoleKind;
use crate::server::listen;

/// How long a client has to complete the TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Connections served at once.
const MAX_CONNECTIONS: usize = 256;
/// Most concurrent connections of one agent certificate; a newer one closes its oldest.
const MAX_CONNECTIONS_PER_CERTIFICATE: usize = 32;
/// How long a request's body may take to arrive once its headers have.
const BODY_TIMEOUT: Duration = Duration::from_secs(10);

fn error_response(error: &ExecError) -> Response {
    let (status, code) = error.disposition();
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let message = match error {
        // Never a path or an OS detail of the executor's host to the agent.
        ExecError::OutcomeUnknown { .. } => "the token was redeemed and the action failed: it \
            could not start, or its result is unknown (it may have acted); the receipt records \
            it, and the executor's log says why"
            .into(),
        ExecError::Internal(_) => "internal error".into(),
        other => other.to_string(),
    };
    let mut body = json!({"error": {"code": code, "message": message}});
    if let ExecError::OutcomeUnknown { receipt, recorded } = error {
        body["receipt"] = json!(receipt);
        body["outcome_recorded"] = json!(recorded);
    }
    (status, Json(body)).into_response()
}

async fn run_handler(
    State(executor): State<Arc<Executor>>,
    Extension(agent): Extension<Agent>,
    body: Bytes,
) -> Response {
    let result = async {
        if body.len() > executor.config.max_body_bytes {
            return Err(ExecError::BodyTooLarge);
        }
        let value = crate::json::parse_strict(&body).map_err(|e| match e {
            crate::json::StrictJsonError::Syntax(_) => ExecError::MalformedJson(e.to_string()),
            crate::json::StrictJsonError::UnsafeNumber(_) => {
                ExecError::InvalidRequest(e.to_string())
            }
        })?;
        let run: RunBody = crate::json::object_as(value, &[]).map_err(ExecError::InvalidRequest)?;
        // On a task of its own: once the token is redeemed, the action, its receipt and the
        // outcome report must not stop half-way because the agent closed its connection or
        // the answer's time ran out (hyper drops a handler whose client went away).
        let deadline = executor.run_deadline();
        let (executor, agent) = (executor.clone(), agent.clone());
        let task = tokio::spawn(async move { executor.run(&agent, run).await });
        match tokio::time::timeout(deadline, task).await {
            Ok(Ok(result)) => result,
            Ok(Err(e)) => Err(ExecError::Internal(format!("the run failed: {e}"))),
            Err(_) => Err(ExecError::Internal("the run took too long".into())),
        }
    }
    .await;
    match result {
        Ok(value) => (StatusCode::OK, Json(value)).into_response(),
        Err(e) => {
            let (_, code) = e.disposition();
            tracing::info!(%code, error = %e, "run refused");
            error_response(&e)
        }
    }
}

async fn not_found() -> Response {
    (
        StatusCode::NOT_FOUND,
        Json(
            json!({"error": {"code": "not_found", "message": "POST /v1/run is the only endpoint"}}),
        ),
    )
        .into_response()
}

async fn method_not_allowed() -> Response {
    (
        StatusCode::METHOD_NOT_ALLOWED,
        Json(
            json!({"error": {"code": "method_not_allowed", "message": "/v1/run takes POST only"}}),
        ),
    )
        .into_response()
}

/// The executor's routes.
///
/// A body must arrive within [`BODY_TIMEOUT`] and no larger than `max_body_bytes` (refused
/// from its `Content-Length` before it is read): a client that announces a body and stalls
/// holds its connection for seconds, not for good.
fn router(executor: Arc<Executor>) -> Router {
    let limit = executor.config.max_body_bytes;
    // A backstop only: the handler's own limit (`run_deadline`, counted once the body is in)
    // answers first; the extra OVERHEAD keeps the two from racing.
    let answer_within = BODY_TIMEOUT + executor.run_deadline() + OVERHEAD;
    Router::new()
        .route("/v1/run", post(run_handler))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(axum::extract::DefaultBodyLimit::max(limit))
        .layer(axum::middleware::from_fn(move |req, next| {
            crate::server::bounded(req, next, limit, BODY_TIMEOUT, answer_within)
        }))
        .with_state(executor)
}

/// Serves until `shutdown` turns true.
pub async fn serve(
    executor: Arc<Executor>,
    listener: TcpListener,
    shutdown: watch::Receiver<bool>,
) -> Result<(), String> {
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(executor.tls_config()?));
    let router = router(executor.clone());
    let clients = Arc::new(std::sync::Mutex::new(listen::PerClient::default()));
    listen::accept_until(
        listener,
        shutdown,
        MAX_CONNECTIONS,
        |stream, remote, lifetime, handshaking| {
            let (acceptor, router, executor) = (acceptor.clone(), router.clone(), executor.clone());
            let clients = clients.clone();
            async move {
                let handshake = tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream));
                let tls = tokio::select! {
                    handshake = handshake => match handshake {
                        Ok(Ok(tls)) => tls,
                        Ok(Err(e)) => {
                            tracing::info!(%remote, error = %e, "TLS handshake failed");
                            return;
                        }
                        Err(_) => {
                            tracing::info!(%remote, "TLS handshake timed out");
                            return;
                        }
                    },
                    () = handshaking.displaced() => {
                        tracing::info!(%remote, "handshake unfinished at the connection limit; closed for a new connection");
                        return;
                    }
                };
                drop(handshaking);
                match agent_of(&executor, &tls) {
                    Ok(agent) => {
                        // Keyed like the broker's: the SHA-256 of the certificate's public key.
                        let key = agent
                            .leaf
                            .spki_sha256()
                            .map(|k| crate::base64url::encode(&k))
                            .unwrap_or_default();
                        let slot = listen::ClientSlot::register(
                            &clients,
                            &key,
                            MAX_CONNECTIONS_PER_CERTIFICATE,
                        );
                        // Closed gracefully: a run in progress is answered first.
                        let leave = async {
                            slot.displaced().await;
                            tracing::info!(%remote, "closing for a newer connection of the same certificate");
                        };
                        listen::serve_http1(tls, router, agent, lifetime, remote, leave).await;
                    }
                    Err(refusal) => {
                        tracing::info!(%remote, reason = %refusal, "client certificate refused");
                        listen::serve_http1(
                            tls,
                            refusal_router(refusal),
                            (),
                            lifetime,
                            remote,
                            std::future::pending(),
                        )
                        .await
                    }
                }
            }
        },
    )
    .await;
    Ok(())
}

/// What a connection whose certificate was refused is served: every request gets the refusal
/// (403 with its code) and the connection is closed, so the caller learns why instead of
/// seeing a reset.
fn refusal_router(refusal: ExecError) -> Router {
    let refusal = Arc::new(refusal);
    Router::new().fallback(move || {
        let refusal = refusal.clone();
        async move {
            let mut response = error_response(&refusal);
            response.headers_mut().insert(
                axum::http::header::CONNECTION,
                axum::http::HeaderValue::from_static("close"),
            );
            response
        }
    })
}

/// The agent behind a connection: its chain validated to the pinned root (rustls did; seb's
/// own path validation again, as the broker does) and the agent role.
fn agent_of(
    executor: &Executor,
    tls: &tokio_rustls::server::TlsStream<tokio::net::TcpStream>,
) -> Result<Agent, ExecError> {
    let presented: Vec<Certificate> = tls
        .get_ref()
        .1
        .peer_certificates()
        .unwrap_or_default()
        .iter()
        .map(|c| Certificate::parse(c.as_ref()))
        .collect::<Result<_, _>>()
        .map_err(|e| ExecError::BadCertificate(e.to_string()))?;
    let (leaf, rest) = presented
        .split_first()
        .ok_or_else(|| ExecError::BadCertificate("no client certificate".into()))?;
    let path = crate::chain::validate(leaf, rest, &executor.roots, SystemTime::now())
        .map_err(|e| ExecError::BadCertificate(e.to_string()))?;
    let now = SystemTime::now();
    for cert in path.path() {
        if now < cert.not_before() || now > cert.not_after() {
            return Err(ExecError::BadCertificate(format!(
                "{} is not valid now",
                cert.subject_string()
            )));
        }
    }
    match leaf.seb_role() {
        Some(RoleKind::Agent) => {}
        Some(other) => return Err(ExecError::WrongRole(other.to_string())),
        None => return Err(ExecError::WrongRole("none".into())),
    }
    Ok(Agent {
        leaf: Arc::new(leaf.clone()),
    })
}

/// Binds `config.listen`, then serves; returns the bound address through `bound` first.
pub async fn bind(config: &ExecutorConfig) -> Result<(TcpListener, SocketAddr), String> {
    let listener = TcpListener::bind(config.listen)
        .await
        .map_err(|e| format!("cannot listen on {} (listen): {e}", config.listen))?;
    let local = listener.local_addr().map_err(|e| e.to_string())?;
    Ok((listener, local))
}
