//! The broker over HTTPS: a tokio-rustls accept loop that asks every client for a certificate
//! (and serves a client without one only the routes for anyone), an axum router for the v1
//! API, and graceful shutdown.
//!
//! Device calls and store writes never run on async workers: TLS handshake signatures and
//! other blocking work run on blocking threads, token signatures on the broker's signing
//! threads, and store writes on the store's writer thread. The caller's identity is
//! established once per connection from its verified certificate chain and handed to every
//! request on it.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use axum::extract::State;
use axum::http::{header, HeaderValue, Method, Request};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use tokio::net::TcpListener;
use tokio::sync::{watch, Semaphore};
use tokio_rustls::{LazyConfigAcceptor, TlsAcceptor};
use tracing::Instrument;

use crate::broker::{Access, Broker, BrokerError, Peer};
use crate::grants::RoleKind;

mod admit;
pub mod error;
mod handlers;
pub(crate) mod listen;
pub mod ratelimit;
pub mod tls;

use admit::authorize;
pub use error::{ApiError, HttpError};
use ratelimit::RateLimiter;

/// How long a client has to complete the TLS handshake, waiting for a slot included.
const HANDSHAKE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// ClientHellos answered at once. Each answer holds a blocking thread for the device's
/// signature; the bound keeps a flood of hellos from taking every blocking thread away from
/// token signing. A slot is taken only once the whole ClientHello has arrived and given back
/// once the answer is made, so connections that send nothing, part of a hello, or a hello and
/// then nothing hold none (docs/RELIABILITY.md).
const HANDSHAKE_SLOTS: usize = 32;

/// Shared state of the HTTP layer.
#[derive(Clone)]
pub struct App {
    /// The broker.
    pub broker: Arc<Broker>,
    limiter: Arc<RateLimiter>,
    attest_limiter: Arc<RateLimiter>,
    attest_global: Arc<RateLimiter>,
    attest_anonymous: Arc<RateLimiter>,
    handshakes: Arc<Semaphore>,
}

/// Quotes per second (and burst) one certificate may ask for. Each quote holds the TPM, so one
/// busy caller must not take the turns of everyone else.
const ATTESTATION_PER_CERT: (u32, u32) = (2, 5);
/// Quotes per second (and burst) for all callers together.
const ATTESTATION_ALL: (u32, u32) = (20, 40);
/// Quotes per second (and burst) for all callers without a certificate together: a share of
/// [`ATTESTATION_ALL`], so that many addresses cannot spend the budget of certificate holders.
const ATTESTATION_ANONYMOUS: (u32, u32) = (5, 10);

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
            attest_anonymous: Arc::new(RateLimiter::new(
                ATTESTATION_ANONYMOUS.0,
                ATTESTATION_ANONYMOUS.1,
            )),
            handshakes: Arc::new(Semaphore::new(HANDSHAKE_SLOTS)),
        }
    }

    /// The caller's request rate: `key` is a certificate's key (`Peer::key_id`, not its
    /// certificate's encoding) or, without a certificate, the client's address.
    fn check_rate(&self, key: &str, what: &'static str) -> Result<(), ApiError> {
        if self
            .limiter
            .allow_share(key, Instant::now(), self.broker.replicas())
        {
            Ok(())
        } else {
            Err(HttpError::RateLimited { what }.into())
        }
    }
}

/// A connection that presented no client certificate, and the address it came from: it may
/// use the routes for anyone ([`Access::Anyone`]) and no other.
#[derive(Clone, Copy, Debug)]
pub struct Anonymous(pub std::net::IpAddr);

impl Anonymous {
    /// What its requests are counted under: its IPv4 address, or its IPv6 /64 (one host
    /// commonly holds a whole /64, and would otherwise have as many budgets as addresses).
    pub(crate) fn rate_key(&self) -> RateKey {
        RateKey::Address(match self.0 {
            std::net::IpAddr::V4(v4) => v4.to_string(),
            std::net::IpAddr::V6(v6) => {
                let s = v6.segments();
                format!("{:x}:{:x}:{:x}:{:x}::/64", s[0], s[1], s[2], s[3])
            }
        })
    }
}

/// What a request's rate limits are keyed on.
#[derive(Clone, Debug)]
pub(crate) enum RateKey {
    /// The caller's certificate key (`Peer::key_id`).
    Certificate(String),
    /// The address (IPv4, or IPv6 /64) of a client without a certificate.
    Address(String),
}

impl RateKey {
    /// The limiter's key; the two kinds never collide.
    pub(crate) fn key(&self) -> String {
        match self {
            RateKey::Certificate(key) => key.clone(),
            RateKey::Address(address) => format!("address {address}"),
        }
    }
}

/// Who is at the other end of a connection, once its handshake is done.
enum Client {
    /// A certificate chain that validated to the root.
    Certified(Arc<Peer>),
    /// A chain TLS accepted that seb cannot use, why, and its leaf as the audit log names it.
    Unusable(String, Option<crate::audit::entry::CertRef>),
    /// No client certificate.
    Anonymous,
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
/// The trust bundle, the CRL and attestation are for anyone ([`Access::Anyone`], ARCHITECTURE
/// §7): a relying party checking the broker's boot state, or fetching the CRL, needs no
/// certificate of its own. Health, metrics and the audit routes ([`Access::AnyCertificate`])
/// need a client certificate whose path validates to the root and is valid and unrevoked now.
pub const ROUTES: &[(&str, &str, Access)] = &[
    ("POST", "/v1/executions", Access::Roles(AGENT)),
    ("GET", "/v1/executions", Access::Roles(APPROVER)),
    ("GET", "/v1/grants", Access::Roles(AGENT)),
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
    ("GET", "/v1/trust", Access::Anyone),
    ("GET", "/v1/crl", Access::Anyone),
    ("GET", "/healthz", Access::AnyCertificate),
    ("GET", "/metrics", Access::AnyCertificate),
    ("GET", "/v1/attestation", Access::Anyone),
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
/// extension the accept loop adds from the connection's client certificate, or [`Anonymous`]
/// for a connection without one (admitted to [`Access::Anyone`] routes only).
pub fn router(app: App) -> Router {
    let config = &app.broker.config().server;
    let timeout = config.request_timeout;
    let body_limit = config.max_body_bytes;
    use handlers::*;
    Router::new()
        .route(
            "/v1/executions",
            post(create_execution).get(list_executions),
        )
        .route("/v1/executions/{id}", get(get_execution))
        .route("/v1/grants", get(grants))
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
            bounded(req, next, body_limit, timeout, timeout)
        }))
        .layer(middleware::from_fn_with_state(app.clone(), request_context))
        .with_state(app)
}

/// The limits every request runs under, in this order:
///
/// 1. A body declared (`Content-Length`) larger than the limit gets 413 `body_too_large` at
///    once. hyper sends `100 Continue` to a client that sent `Expect: 100-continue` (curl does
///    for large bodies) as soon as the body is first read, so a limit seen only while reading
///    would come after the 100 and end in a dropped connection instead of an answer.
/// 2. The body is read whole within the request's time: a client too slow to send it gets 408
///    `request_timeout` (its fault, not the broker's), a chunked body that runs over the limit
///    413, one that breaks off 400 `bad_body`. These close the connection: the rest of the body
///    is unread.
/// 3. The route gets what is left of the time; past it, 503 `timeout` and no token.
///
/// The broker gives the body and the route the same time (`server.request_timeout`, counted
/// from when the headers were read); `seb exec` gives the body a short time of its own and the
/// route as long as its longest action may run.
pub(crate) async fn bounded(
    req: Request<axum::body::Body>,
    next: Next,
    limit: usize,
    body_within: std::time::Duration,
    answer_within: std::time::Duration,
) -> Response {
    let start = tokio::time::Instant::now();
    let (body_deadline, deadline) = (start + body_within, start + answer_within);
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    if declared.is_some_and(|len| len > limit as u64) {
        return closing(HttpError::BodyTooLarge);
    }
    if !plain_body(req.headers()) {
        return closing(HttpError::UnsupportedEncoding);
    }
    let declared_type = req.headers().get(header::CONTENT_TYPE).map(is_json);
    let takes_body = !matches!(*req.method(), Method::GET | Method::HEAD);
    if takes_body && declared_type == Some(false) {
        return closing(HttpError::UnsupportedMediaType);
    }
    let (parts, body) = req.into_parts();
    let read = axum::body::to_bytes(body, limit);
    let bytes = match tokio::time::timeout_at(body_deadline, read).await {
        Ok(Ok(bytes)) => bytes,
        Ok(Err(e)) => {
            let over = e
                .into_inner()
                .downcast_ref::<http_body_util::LengthLimitError>()
                .is_some();
            return closing(if over {
                HttpError::BodyTooLarge
            } else {
                HttpError::UnreadableBody
            });
        }
        Err(_) => return closing(HttpError::RequestTimeout),
    };
    // A body without a declared type: what a browser's form or `text/plain` fetch cannot
    // send either, but a client that forgot the header can.
    if takes_body && declared_type.is_none() && !bytes.is_empty() {
        return closing(HttpError::UnsupportedMediaType);
    }
    let req = Request::from_parts(parts, axum::body::Body::from(bytes));
    match tokio::time::timeout_at(deadline, next.run(req)).await {
        Ok(response) => response,
        Err(_) => ApiError::from(HttpError::Timeout).into_response(),
    }
}

/// Whether a `Content-Type` is JSON: `application/json`, with parameters (`; charset=utf-8`)
/// or not. Anything else, such as the `text/plain` or form types a web page can make a
/// browser send to another site with the user's client certificate, is refused before the
/// body is read.
fn is_json(value: &HeaderValue) -> bool {
    value.to_str().is_ok_and(|v| {
        let mut parts = v.split(';');
        let media = parts.next().unwrap_or_default();
        // JSON is UTF-8 (RFC 8259 §8.1): a body declared in another charset would be read as
        // something its sender did not mean.
        let charset_ok = parts.all(|p| match p.split_once('=') {
            Some((name, value)) if name.trim().eq_ignore_ascii_case("charset") => {
                let value = value.trim().trim_matches('"');
                value.eq_ignore_ascii_case("utf-8") || value.eq_ignore_ascii_case("utf8")
            }
            _ => true,
        });
        media.trim().eq_ignore_ascii_case("application/json") && charset_ok
    })
}

/// Whether the body is plain bytes as sent: no content coding but `identity`, no transfer
/// coding but `chunked` (which hyper undoes). Anything else would reach the JSON parser still
/// encoded.
fn plain_body(headers: &axum::http::HeaderMap) -> bool {
    let only = |name: header::HeaderName, allowed: &str| {
        headers.get_all(name).iter().all(|value| {
            value.to_str().is_ok_and(|v| {
                v.split(',')
                    .map(str::trim)
                    .all(|coding| coding.is_empty() || coding.eq_ignore_ascii_case(allowed))
            })
        })
    };
    only(header::CONTENT_ENCODING, "identity") && only(header::TRANSFER_ENCODING, "chunked")
}

/// The router of a connection whose client chain passed the TLS handshake but that seb cannot
/// read at all (a certificate it cannot parse, such as one with an extension twice): every
/// request gets `403 bad_certificate` saying why, and the connection closes, instead of a
/// reset with no code.
fn unusable_certificate(
    app: App,
    why: String,
    cert: Option<crate::audit::entry::CertRef>,
) -> Router {
    let broker = app.broker.clone();
    Router::new()
        .fallback(move |method: Method| {
            // Audited like every refusal for the caller's own certificate: one an offline
            // intermediate signed with a name that reads as another is what an auditor must
            // see.
            if let Some(cert) = &cert {
                let mut entry =
                    crate::broker::audit::entry_now(crate::audit::entry::EntryKind::AccessRefused);
                entry.cert = Some(cert.clone());
                entry.code = Some("bad_certificate".into());
                // The method as a client may send any token: a known one, or a mark, never
                // a 15 KB string kept in the log for good.
                let method = match method.as_str() {
                    m if m.len() <= 10 && m.bytes().all(|b| b.is_ascii_uppercase()) => m,
                    _ => "(other method)",
                };
                entry.detail = Some(format!("{method}: {}", crate::text::escaped(&why)));
                broker.append_refusal(entry);
            }
            let why = why.clone();
            async move { closing(BrokerError::BadCertificate(why)) }
        })
        // The same request id and headers as every other answer.
        .layer(middleware::from_fn_with_state(app, request_context))
}

/// How the audit log names a client certificate seb cannot use: the thumbprint of its bytes,
/// and its serial and subject (control and formatting characters escaped) when it parses.
fn unusable_leaf(der: &[u8]) -> crate::audit::entry::CertRef {
    use sha2::Digest;
    let parsed = crate::cert::Certificate::parse(der).ok();
    crate::audit::entry::CertRef {
        thumbprint: crate::base64url::encode(&sha2::Sha256::digest(der)),
        serial: parsed.as_ref().map(|c| c.serial_hex()).unwrap_or_default(),
        subject: parsed
            .map(|c| crate::text::escaped(&c.subject_string()))
            .unwrap_or_default(),
    }
}

/// A refusal after which the connection is closed: the client's body was not read to its end
/// (or the client's certificate is one seb cannot use), so nothing after it on the connection
/// is worth parsing.
fn closing(refusal: impl Into<ApiError>) -> Response {
    let mut response = refusal.into().into_response();
    response
        .headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("close"));
    response
}

/// The runtime the broker serves on: `worker_threads` async workers (`[server]`), named
/// `seb-worker`. `seb serve` and `seb bench broker` both run on it, so the bench measures the
/// runtime the broker serves with.
pub fn runtime(config: &crate::config::Config) -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(config.worker_threads())
        .enable_all()
        .thread_name("seb-worker")
        .build()
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
    let max_connections = app.broker.config().server.max_connections;
    let per_certificate = app.broker.config().server.max_connections_per_certificate;
    let clients = Arc::new(std::sync::Mutex::new(listen::PerClient::default()));
    listen::accept_until(
        listener,
        shutdown,
        max_connections,
        |stream, remote, lifetime, handshaking| {
            let (acceptor, router, app) = (acceptor.clone(), router.clone(), app.clone());
            let clients = clients.clone();
            async move {
                let broker = app.broker.clone();
                let accepted = tokio::select! {
                    accepted = accept_connection(acceptor, stream, remote, app.clone(), &handshaking) => accepted,
                    () = handshaking.displaced() => {
                        tracing::info!(%remote, "handshake unfinished at the connection limit; closed for a new connection");
                        broker.metrics().record_request("tls", "displaced");
                        None
                    }
                };
                match accepted {
                    Some((tls, Client::Certified(peer))) => {
                        drop(handshaking);
                        let slot = listen::ClientSlot::register(&clients, &peer.key_id, per_certificate);
                        // Closed gracefully: a request in progress is answered first.
                        let leave = async {
                            slot.displaced().await;
                            tracing::info!(%remote, "closing for a newer connection of the same certificate (server.max_connections_per_certificate)");
                            broker.metrics().record_request("tls", "displaced");
                        };
                        listen::serve_http1(tls, router, peer, lifetime, remote, leave).await;
                    }
                    // A connection without a certificate proved nothing and costs nothing to
                    // hold: it stays in the running for displacement, like an unfinished
                    // handshake, so anonymous clients cannot keep certificate holders out at
                    // the connection limit.
                    Some((tls, Client::Anonymous)) => {
                        let anonymous = Anonymous(remote.ip());
                        tokio::select! {
                            () = listen::serve_http1(tls, router, anonymous, lifetime, remote, std::future::pending()) => {}
                            () = handshaking.displaced() => {
                                tracing::info!(%remote, "connection without a certificate closed for a new connection");
                                broker.metrics().record_request("tls", "displaced");
                            }
                        }
                    }
                    Some((tls, Client::Unusable(why, cert))) => {
                        drop(handshaking);
                        let router = unusable_certificate(app, why, cert);
                        listen::serve_http1(tls, router, (), lifetime, remote, std::future::pending())
                            .await;
                    }
                    None => {}
                }
            }
        },
    )
    .await;
    Ok(())
}

/// Where a handshake stands when its ClientHello has been answered on the blocking thread.
enum Step<A, F> {
    /// The first flight is made; the rest is read on the async side.
    Answered(A),
    /// The whole handshake ran there (after a HelloRetryRequest).
    Finished(F),
}

/// Runs the TLS handshake: the ClientHello is read on the async side, answered on a blocking
/// thread (the server's first flight carries the HSM's signature, and the device blocks), and
/// the rest (the client's certificate and Finished) read on the async side again. Then builds
/// the peer identity from the verified client chain, off the async workers.
async fn accept_connection(
    acceptor: TlsAcceptor,
    stream: tokio::net::TcpStream,
    remote: SocketAddr,
    app: App,
    handshaking: &listen::Handshaking,
) -> Option<(
    tokio_rustls::server::TlsStream<tokio::net::TcpStream>,
    Client,
)> {
    let deadline = tokio::time::Instant::now() + HANDSHAKE_TIMEOUT;
    // The ClientHello is read on the async side: waiting for it needs no device and no
    // blocking thread, and a client that never finishes it never takes a handshake slot.
    let hello = tokio::time::timeout_at(
        deadline,
        LazyConfigAcceptor::new(rustls::server::Acceptor::default(), stream),
    )
    .await;
    let start = match hello {
        Ok(Ok(start)) => {
            handshaking.progressed();
            start
        }
        Ok(Err(e)) => {
            tracing::info!(%remote, error = %e, "TLS handshake failed before the ClientHello");
            app.broker
                .metrics()
                .record_request("tls", "handshake_failed");
            return None;
        }
        Err(_) => {
            tracing::info!(%remote, "no ClientHello in time; closing");
            return None;
        }
    };
    let Ok(Ok(slot)) =
        tokio::time::timeout_at(deadline, app.handshakes.clone().acquire_owned()).await
    else {
        tracing::warn!(%remote, "no handshake slot in time; closing");
        app.broker
            .metrics()
            .record_request("tls", "handshake_slots_exhausted");
        return None;
    };
    let config = acceptor.config().clone();
    let handle = tokio::runtime::Handle::current();
    // Answering the ClientHello makes the server's whole first flight, CertificateVerify (the
    // device's signature) included; nothing is read or written here. A client that stalls
    // after its hello then holds neither a slot nor a blocking thread, only its connection.
    // Unless the answer was a HelloRetryRequest (no key share the server takes): then the
    // signature comes with the second ClientHello, so that handshake finishes here, on this
    // blocking thread holding the slot, and never on an async worker.
    let answered = tokio::task::spawn_blocking(move || {
        let _slot = slot;
        let mut retry = false;
        let handshake = start.into_stream_with(config, |c| {
            retry = c.handshake_kind() == Some(rustls::HandshakeKind::FullWithHelloRetryRequest);
        });
        if retry {
            Step::Finished(handle.block_on(tokio::time::timeout_at(deadline, handshake)))
        } else {
            Step::Answered(handshake)
        }
    });
    let finished = match answered.await {
        Ok(Step::Answered(handshake)) => tokio::time::timeout_at(deadline, handshake).await,
        Ok(Step::Finished(finished)) => finished,
        Err(e) => {
            tracing::error!(%remote, error = %e, "handshake task failed");
            return None;
        }
    };
    let tls = match finished {
        Ok(Ok(tls)) => tls,
        Ok(Err(e)) => {
            tracing::info!(%remote, error = %e, "TLS handshake failed");
            app.broker
                .metrics()
                .record_request("tls", "handshake_failed");
            return None;
        }
        Err(_) => {
            tracing::info!(%remote, "TLS handshake timed out");
            return None;
        }
    };
    let presented: Vec<Vec<u8>> = tls
        .get_ref()
        .1
        .peer_certificates()
        .map(|certs| certs.iter().map(|c| c.as_ref().to_vec()).collect())
        .unwrap_or_default();
    if presented.is_empty() {
        return Some((tls, Client::Anonymous));
    }
    // A returning client's validated path comes from the cache, here on the async worker;
    // validating a new chain checks signatures in software, on a blocking thread.
    let (peer, leaf) = match app.broker.cached_peer(&presented) {
        Some(peer) => (Ok(peer), None),
        None => {
            let leaf = presented.first().cloned();
            let broker = app.broker.clone();
            let peer =
                tokio::task::spawn_blocking(move || broker.peer(&presented, SystemTime::now()))
                    .await
                    .ok()?;
            (peer, leaf)
        }
    };
    match peer {
        Ok(peer) => Some((tls, Client::Certified(peer))),
        Err(e) => {
            tracing::info!(%remote, error = %e, "client certificate unusable");
            app.broker
                .metrics()
                .record_request("tls", "bad_certificate");
            let why = match e {
                BrokerError::BadCertificate(why) => why,
                other => other.to_string(),
            };
            Some((
                tls,
                Client::Unusable(why, leaf.as_deref().map(unusable_leaf)),
            ))
        }
    }
}

/// Request id, tracing span and security headers for every request; refusals made by the HTTP
/// layer itself (bad bodies, unknown routes, time limits, rate limits) are counted in
/// `/metrics` under `endpoint="http"`, as the broker counts its own.
async fn request_context(
    State(app): State<App>,
    req: Request<axum::body::Body>,
    next: Next,
) -> Response {
    let mut id_bytes = [0u8; 12];
    let _ = getrandom::fill(&mut id_bytes);
    let request_id = hex::encode(id_bytes);
    let span = tracing::info_span!("request", id = %request_id, method = %req.method(), path = %req.uri().path());
    let mut response = next.run(req).instrument(span.clone()).await;
    // Refusals and failures log themselves (info and up); every answer is a debug line, so that
    // any `x-request-id` can be found without a line per token at the default level.
    span.in_scope(|| tracing::debug!(status = response.status().as_u16(), "answered"));
    if let Some(refusal) = response.extensions().get::<error::HttpRefusal>() {
        app.broker.metrics().record_request("http", refusal.code);
    }
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
