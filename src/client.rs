//! A small HTTPS client for the broker's API with a client certificate: used by `seb request`,
//! `seb bench` and the end-to-end tests.
//!
//! It keeps one keep-alive HTTP/1.1 connection. It pins the broker's root from a file and
//! never falls back to system trust. The agent's key is the agent's own (a file), not a broker
//! key.
//!
//! The broker's TLS certificate must be issued **directly** by the pinned root and carry
//! serverAuth ([`check_broker_certificate`]): an intermediate CA may be delegated agents (and
//! approvers or executors), never the broker's identity, so a certificate an intermediate
//! issued for the broker's name is refused even though it chains to the root.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::client::conn::http1::SendRequest;
use hyper::Request;
use hyper_util::rt::TokioIo;
use rustls::client::WebPkiServerVerifier;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::RootCertStore;

use crate::cert::Certificate;

mod server_cert;

pub(crate) use server_cert::SERVER_AUTH;
pub use server_cert::{check_broker_certificate, check_executor_certificate};
use server_cert::{Server, ServerVerifier};

/// Client failures, with enough context to act on.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// A file could not be read or parsed.
    #[error("{0}")]
    Input(String),
    /// A broker or executor URL is not `https://host:port`.
    #[error("invalid URL {0:?}: expected https://host:port")]
    Url(String),
    /// Connecting to `host:port` or the TLS handshake failed.
    #[error("cannot connect to {0}")]
    Connect(String, #[source] std::io::Error),
    /// HTTP failed.
    #[error("HTTP error")]
    Http(#[source] hyper::Error),
    /// No connection, or no whole answer, within the time allowed.
    #[error("{0} gave no answer within {1} s")]
    TimedOut(String, u64),
    /// The answer's body was larger than [`MAX_ANSWER_BYTES`]: no seb answer is.
    #[error("the answer is larger than {} MiB: not an answer seb sends", MAX_ANSWER_BYTES >> 20)]
    TooLarge,
}

/// The largest answer body a client reads (a page of 1000 audit entries is a few MiB): a peer
/// that streams more, such as a compromised broker answering an attestation check, is cut off
/// instead of exhausting the caller's memory.
pub const MAX_ANSWER_BYTES: usize = 64 << 20;

/// A body read to its end, refused past `limit` bytes.
async fn read_limited<B>(body: B, limit: usize) -> Result<Bytes, ClientError>
where
    B: hyper::body::Body,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    http_body_util::Limited::new(body, limit)
        .collect()
        .await
        .map(|collected| collected.to_bytes())
        .map_err(|e| {
            if e.is::<http_body_util::LengthLimitError>() {
                return ClientError::TooLarge;
            }
            match e.downcast::<hyper::Error>() {
                Ok(e) => ClientError::Http(*e),
                Err(e) => ClientError::Input(e.to_string()),
            }
        })
}

/// TLS settings for talking to a broker (or, through [`ClientTls::to_executors`], to
/// executors).
#[derive(Clone)]
pub struct ClientTls {
    config: Arc<rustls::ClientConfig>,
    /// The same identity, checking the server as an executor instead of the broker.
    executor_config: Arc<rustls::ClientConfig>,
    /// The client's own chain and the pinned roots, parsed, to explain a failed connection.
    own_chain: Vec<Certificate>,
    roots: Vec<Certificate>,
}

impl ClientTls {
    /// Trusts `root_pem` only and authenticates with `chain_pem` (leaf first) and `key_pem`
    /// (PKCS#8). `resumption` off forces a full handshake (and an HSM signature) per
    /// connection.
    pub fn new(
        root_pem: &[u8],
        chain_pem: &[u8],
        key_pem: &[u8],
        resumption: bool,
    ) -> Result<Self, ClientError> {
        Self::build(root_pem, Some((chain_pem, key_pem)), resumption)
    }

    /// Trusts `root_pem` only and presents no client certificate: enough for the routes the
    /// broker serves to anyone (`/v1/trust`, `/v1/crl`, `/v1/attestation`), as a relying
    /// party without a certificate of its own (`seb attest verify`) uses them.
    pub fn anonymous(root_pem: &[u8]) -> Result<Self, ClientError> {
        Self::build(root_pem, None, false)
    }

    fn build(
        root_pem: &[u8],
        identity: Option<(&[u8], &[u8])>,
        resumption: bool,
    ) -> Result<Self, ClientError> {
        let provider = crate::tls::provider();
        let mut roots = RootCertStore::empty();
        let mut pinned = Vec::new();
        // Which input is wrong: the CLI reads these from --ca and --cert.
        let named =
            |what: &'static str| move |e: ClientError| ClientError::Input(format!("{what}: {e}"));
        let mut given = Vec::new();
        for der in pem_blocks(root_pem, "CERTIFICATE").map_err(named("the root certificate"))? {
            given.push(
                Certificate::parse(&der)
                    .map_err(|e| ClientError::Input(format!("root certificate: {e}")))?,
            );
        }
        // Only the self-signed certificates are pinned: an intermediate in the file (the
        // bundle `GET /v1/trust` serves holds them) would otherwise certify a broker or an
        // attestation key of its own making.
        for root in crate::chain::bundle_roots(&given)
            .map_err(|e| ClientError::Input(format!("root certificate: {e}")))?
        {
            let der = root
                .to_der_bytes()
                .map_err(|e| ClientError::Input(format!("root certificate: {e}")))?;
            roots
                .add(CertificateDer::from(der))
                .map_err(|e| ClientError::Input(format!("root certificate: {e}")))?;
            pinned.push(root);
        }
        if pinned.is_empty() {
            let held = given.first().map_or_else(
                || "no certificate".to_owned(),
                |c| {
                    format!(
                        "{}, which is not a root (it was issued by {})",
                        c.subject_string(),
                        c.issuer_string()
                    )
                },
            );
            return Err(ClientError::Input(format!(
                "the --ca file holds {held}: it holds no self-signed root \
                 certificate (an intermediate or a service certificate cannot be pinned); give \
                 the broker's root (<state_dir>/trust/root.pem on the broker host, or the bundle \
                 GET /v1/trust serves)"
            )));
        }
        let webpki = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone())
            .build()
            .map_err(|e| ClientError::Input(format!("server verifier: {e}")))?;
        let identity = match identity {
            Some((chain_pem, key_pem)) => {
                let chain: Vec<CertificateDer<'static>> = pem_blocks(chain_pem, "CERTIFICATE")
                    .map_err(named("the client certificate"))?
                    .into_iter()
                    .map(CertificateDer::from)
                    .collect();
                let key = pem_blocks(key_pem, "PRIVATE KEY")
                    .ok()
                    .and_then(|blocks| blocks.into_iter().next())
                    .ok_or_else(|| ClientError::Input(missing_key_hint(key_pem)))?;
                Some((chain, PrivateKeyDer::Pkcs8(key.into()), chain_pem))
            }
            None => None,
        };
        let config = |server: Server| {
            let verifier = Arc::new(ServerVerifier {
                webpki: webpki.clone(),
                roots: pinned.clone(),
                server,
            });
            let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
                .with_safe_default_protocol_versions()
                .map_err(|e| ClientError::Input(e.to_string()))?
                .dangerous()
                .with_custom_certificate_verifier(verifier);
            let mut config = match &identity {
                Some((chain, key, _)) => builder
                    .with_client_auth_cert(chain.clone(), key.clone_key())
                    .map_err(|e| {
                        ClientError::Input(format!(
                            "client certificate or key: {e} (is --key the private key of --cert?)"
                        ))
                    })?,
                None => builder.with_no_client_auth(),
            };
            if !resumption {
                config.resumption = rustls::client::Resumption::disabled();
            }
            config.alpn_protocols = vec![b"http/1.1".to_vec()];
            Ok::<_, ClientError>(Arc::new(config))
        };
        Ok(Self {
            config: config(Server::Broker)?,
            executor_config: config(Server::Executor)?,
            own_chain: identity
                .as_ref()
                .and_then(|(_, _, pem)| Certificate::parse_pem_chain(pem).ok())
                .unwrap_or_default(),
            roots: pinned,
        })
    }

    /// The same identity and pinned root for talking to executors: the server must be an
    /// executor ([`check_executor_certificate`]), not the broker.
    pub fn to_executors(&self) -> Self {
        Self {
            config: self.executor_config.clone(),
            ..self.clone()
        }
    }

    /// What a person can do about `error`, a failed connection or request: the client's own
    /// certificate is checked locally (validity, chain to the pinned root) and the TLS failure
    /// read, since a TLS alert alone ("CertificateExpired", "UnknownCA", "DecryptError") does
    /// not say whose certificate is wrong or what to do.
    pub fn explain(&self, error: &ClientError, now: SystemTime) -> Option<String> {
        let text = error_text(error);
        let mut hints = Vec::new();
        // The server's certificate was refused here: the broker never saw ours, and a chain
        // check of ours against a --ca that may be the wrong one would blame it for nothing.
        let server_refused = text.contains("not issued directly by the root")
            || text.contains("lacks the serverAuth")
            || text.contains("carries sebRole")
            || text.contains("invalid peer certificate");
        if text.contains("not issued directly by the root")
            || text.contains("lacks the serverAuth")
            || text.contains("carries sebRole")
        {
            hints.push(
                "the server's certificate is not the broker's own: only the root certifies the \
                 broker, and this one was issued by an intermediate CA, lacks serverAuth, or is \
                 an agent's, approver's or executor's certificate. Do not talk to this server; \
                 tell the security team"
                    .to_owned(),
            );
        } else if text.contains("invalid peer certificate") {
            hints.push(
                "the broker's TLS certificate was not accepted: check that the pinned root \
                 (--ca, or --trust) is this broker's root certificate (<state_dir>/trust/root.pem \
                 on the broker host), that the URL's host is one of the names in its TLS \
                 certificate (ca.tls_names), and that it has not expired (`seb rotate tls`)"
                    .to_owned(),
            );
        }
        // A server that closes a handshake without an alert could not or would not finish its
        // side of it: the broker's TLS key is in its HSM, so this is what a new connection
        // gets while the HSM is unavailable; also when the broker has no handshake slot free,
        // or a TCP load balancer has no broker behind it.
        // The same seen as a reset: the server closed with bytes of ours unread.
        if text.to_ascii_lowercase().contains("handshake eof") || text.contains("Connection reset")
        {
            hints.push(
                "the server closed the TLS handshake without saying why: the broker's HSM may be \
                 unavailable (it cannot sign its side of a new handshake then; connections \
                 already open get 503 hsm_unavailable), the broker may be overloaded, or a load \
                 balancer may have no broker behind it. Check the broker's log and its /healthz, \
                 and retry"
                    .to_owned(),
            );
        }
        let refused_by_broker = text.contains("received fatal alert")
            || text.contains("connection closed before message completed");
        let own = self.own_problems(now, !server_refused);
        // An alert names what the server did not accept: UnknownCA is a certificate from a
        // root it does not trust (after a root rotation, the other installation's), never a
        // revocation (which is a 403 after the handshake).
        let unknown_ca = text.contains("UnknownCA") || text.contains("UnknownIssuer");
        // DecryptError: a signature did not verify, which is what a root of the same name as
        // the server's, but another key (another installation's), gives.
        let bad_signature = text.contains("DecryptError");
        if refused_by_broker || !own.is_empty() {
            if own.is_empty() && (unknown_ca || bad_signature) {
                hints.push(
                    "the server does not trust the root your certificate chains to: it belongs \
                     to another installation (after a root rotation, use the certificate issued \
                     under the root this server trusts), or, if a signature failed, your key \
                     does not match your certificate"
                        .to_owned(),
                );
            } else if own.is_empty() {
                hints.push(
                    "the broker refused the connection; your certificate looks valid and chains \
                     to the pinned root here, so it may be revoked, or its role may not use this \
                     endpoint"
                        .to_owned(),
                );
            }
            hints.extend(own);
        }
        (!hints.is_empty()).then(|| hints.join("; "))
    }

    /// What the client's own certificate file says about a refusal the broker answered for the
    /// caller's certificate (`certificate_expired`, `certificate_not_yet_valid`,
    /// `bad_certificate`): its validity and path as seen here, with what to do; for
    /// `certificate_revoked`, that revocation is final and what to do instead. `None` for other
    /// codes, or when nothing is found locally.
    pub fn explain_refusal(&self, code: &str, now: SystemTime) -> Option<String> {
        if code == "certificate_revoked" {
            let leaf = self.own_chain.first()?;
            return Some(format!(
                "your certificate ({}, serial {}) or a CA above it is revoked, for good: it \
                 authorizes nothing any more. Make a new key (`seb keygen`) and ask the \
                 security team for a new certificate; if you did not expect this, your key may \
                 have been reported compromised",
                leaf.subject_string(),
                leaf.serial_hex()
            ));
        }
        if !matches!(
            code,
            "certificate_expired" | "certificate_not_yet_valid" | "bad_certificate"
        ) {
            return None;
        }
        let own = self.own_problems(now, true);
        (!own.is_empty()).then(|| own.join("; "))
    }

    /// Problems with the client's own certificate file, as seen locally: its validity now, a
    /// --ca file that holds no root, and, with `chain`, its path to the --ca root.
    fn own_problems(&self, now: SystemTime, chain: bool) -> Vec<String> {
        let Some((leaf, rest)) = self.own_chain.split_first() else {
            return vec!["the certificate file holds no certificate".into()];
        };
        let mut problems = Vec::new();
        let at = |t: SystemTime| {
            der::DateTime::from_system_time(t).map_or_else(|_| "?".into(), |d| d.to_string())
        };
        if now > leaf.not_after() {
            problems.push(format!(
                "your certificate ({}) expired at {}; ask the security team to renew it \
                 (`seb cert renew --serial {}`)",
                leaf.subject_string(),
                at(leaf.not_after()),
                leaf.serial_hex()
            ));
        } else if now < leaf.not_before() {
            problems.push(format!(
                "your certificate ({}) is not valid before {}; check this host's clock",
                leaf.subject_string(),
                at(leaf.not_before())
            ));
        }
        // The pinned roots are self-signed ones only (a --ca file without one is refused when
        // the client is built, naming what it holds).
        if let Err(e) = crate::chain::validate(leaf, rest, &self.roots, now) {
            match e {
                crate::chain::ChainError::UnknownIssuer { .. }
                    if chain && leaf.is_self_issued() =>
                {
                    problems.push(format!(
                        "your certificate ({}) is self-signed: it must be issued by the \
                         broker's CA (make a CSR with `seb keygen` and have the security team \
                         run `seb cert issue`)",
                        leaf.subject_string()
                    ))
                }
                // The broker's certificate was refused: ours was never sent.
                _ if !chain => {}
                crate::chain::ChainError::UnknownIssuer { .. }
                    if rest.is_empty()
                        && !self
                            .roots
                            .iter()
                            .any(|r| r.tbs().subject() == leaf.tbs().issuer()) =>
                {
                    problems.push(format!(
                        "your certificate was issued by {}, not by the --ca root: if that is an \
                         intermediate CA of this broker, send the chain, not only the leaf (the \
                         certificate file must hold the leaf followed by its intermediates, as \
                         `seb cert issue --out` writes it); otherwise the certificate is from \
                         another CA and this broker will not accept it",
                        leaf.issuer_string()
                    ))
                }
                other => problems.push(format!(
                    "your certificate does not chain to the --ca root ({}: {other})",
                    other.code()
                )),
            }
        }
        problems
    }
}

/// Every message of an error's source chain, and of the I/O errors wrapped inside it (whose
/// `source` skips the wrapped error itself).
fn error_text(error: &ClientError) -> String {
    let mut parts = vec![error.to_string()];
    let mut next: Option<&(dyn std::error::Error + 'static)> = Some(error);
    while let Some(e) = next {
        if let Some(io) = e.downcast_ref::<std::io::Error>() {
            if let Some(inner) = io.get_ref() {
                parts.push(inner.to_string());
            }
        }
        parts.push(e.to_string());
        next = e.source();
    }
    parts.join(": ")
}

/// Why no PKCS#8 key was found, with the fix for the usual cause.
fn missing_key_hint(key_pem: &[u8]) -> String {
    crate::approval::not_pkcs8(key_pem)
        .unwrap_or("no PKCS#8 PRIVATE KEY in the key file")
        .to_owned()
}

/// Reads `https://host:port` (a trailing `/` allowed) into its authority (`host:port`) and the
/// name the server's certificate must carry.
pub fn parse_url(url: &str) -> Result<(String, ServerName<'static>), ClientError> {
    let authority = url
        .strip_prefix("https://")
        .map(|rest| rest.trim_end_matches('/'))
        .filter(|a| !a.is_empty() && !a.contains('/'))
        .ok_or_else(|| ClientError::Url(url.to_owned()))?
        .to_owned();
    let (host, _port) = authority
        .rsplit_once(':')
        .ok_or_else(|| ClientError::Url(url.to_owned()))?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let server_name =
        ServerName::try_from(host.to_owned()).map_err(|_| ClientError::Url(url.to_owned()))?;
    Ok((authority, server_name))
}

/// Opens a TCP connection to `url` (`https://host:port`) and completes the mutual-TLS
/// handshake; returns the stream and the URL's authority (`host:port`).
pub async fn connect_tls(
    url: &str,
    tls: &ClientTls,
) -> Result<
    (
        tokio_rustls::client::TlsStream<tokio::net::TcpStream>,
        String,
    ),
    ClientError,
> {
    let (authority, server_name) = parse_url(url)?;
    let tcp = tokio::net::TcpStream::connect(&authority)
        .await
        .map_err(|e| ClientError::Connect(authority.clone(), e))?;
    let _ = tcp.set_nodelay(true);
    let connector = tokio_rustls::TlsConnector::from(tls.config.clone());
    let stream = connector
        .connect(server_name, tcp)
        .await
        .map_err(|e| ClientError::Connect(authority.clone(), e))?;
    Ok((stream, authority))
}

/// How long a connection and its TLS handshake may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a broker's whole answer may take: it answers within its `request_timeout` (10 s
/// by default) or not at all, so a server that holds a request open is not one.
pub const BROKER_ANSWER_TIMEOUT: Duration = Duration::from_secs(60);
/// How long an executor's answer may take: it answers once the action ran, and an action may
/// be given up to an hour.
pub const EXECUTOR_ANSWER_TIMEOUT: Duration = Duration::from_secs(3_660);

/// One keep-alive connection to a broker (or an executor).
pub struct Client {
    sender: SendRequest<Full<Bytes>>,
    authority: String,
    server_certificate: Vec<u8>,
    answer_timeout: Duration,
}

/// A response: status and parsed JSON (or the raw text as a JSON string).
#[derive(Debug, Clone)]
pub struct ApiResponse {
    /// HTTP status.
    pub status: u16,
    /// Body.
    pub body: serde_json::Value,
    /// Body as text.
    pub text: String,
}

impl Client {
    /// Connects and completes the TLS handshake.
    pub async fn connect(url: &str, tls: &ClientTls) -> Result<Self, ClientError> {
        let (stream, authority) = tokio::time::timeout(CONNECT_TIMEOUT, connect_tls(url, tls))
            .await
            .map_err(|_| ClientError::TimedOut(url.to_owned(), CONNECT_TIMEOUT.as_secs()))??;
        let server_certificate = stream
            .get_ref()
            .1
            .peer_certificates()
            .and_then(|chain| chain.first())
            .map(|cert| cert.to_vec())
            .ok_or_else(|| {
                ClientError::Connect(
                    authority.clone(),
                    std::io::Error::new(
                        std::io::ErrorKind::InvalidData,
                        "the broker presented no TLS certificate",
                    ),
                )
            })?;
        let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(ClientError::Http)?;
        tokio::spawn(async move {
            let _ = connection.await;
        });
        Ok(Self {
            sender,
            authority,
            server_certificate,
            answer_timeout: BROKER_ANSWER_TIMEOUT,
        })
    }

    /// Waits up to `timeout` for each answer instead of [`BROKER_ANSWER_TIMEOUT`] (an
    /// executor's: [`EXECUTOR_ANSWER_TIMEOUT`]).
    pub fn answer_within(mut self, timeout: Duration) -> Self {
        self.answer_timeout = timeout;
        self
    }

    /// The DER TLS server certificate this connection's handshake received (and rustls checked
    /// against the pinned root): what attestation evidence served on it must be bound to
    /// (`seb::attest::qualifying_data`).
    pub fn server_certificate(&self) -> &[u8] {
        &self.server_certificate
    }

    /// Sends a request with an optional body; returns status and body.
    pub async fn send(
        &mut self,
        method: &str,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> Result<ApiResponse, ClientError> {
        let mut builder = Request::builder()
            .method(method)
            .uri(path)
            .header("host", &self.authority);
        if body.is_some() {
            builder = builder.header("content-type", "application/json");
        }
        let request = builder
            .body(Full::new(Bytes::from(body.unwrap_or_default())))
            .map_err(|e| ClientError::Input(e.to_string()))?;
        let exchange = async {
            self.sender.ready().await.map_err(ClientError::Http)?;
            let response = self
                .sender
                .send_request(request)
                .await
                .map_err(ClientError::Http)?;
            let status = response.status().as_u16();
            let bytes = read_limited(response.into_body(), MAX_ANSWER_BYTES).await?;
            Ok::<_, ClientError>((status, bytes))
        };
        let (status, bytes) = tokio::time::timeout(self.answer_timeout, exchange)
            .await
            .map_err(|_| {
                ClientError::TimedOut(
                    format!("{} ({method} {path})", self.authority),
                    self.answer_timeout.as_secs(),
                )
            })??;
        let text = String::from_utf8_lossy(&bytes).into_owned();
        // The broker's own strict parser: what a caller reads from an answer (an audit entry it
        // hashes, a grant it shows) must not depend on which of two duplicate keys is kept.
        // Anything else is kept as text.
        let body = crate::json::parse_unambiguous(&bytes)
            .unwrap_or_else(|_| serde_json::Value::String(text.clone()));
        Ok(ApiResponse { status, body, text })
    }

    /// POSTs a JSON value.
    pub async fn post_json(
        &mut self,
        path: &str,
        value: &serde_json::Value,
    ) -> Result<ApiResponse, ClientError> {
        let body = serde_json::to_vec(value).map_err(|e| ClientError::Input(e.to_string()))?;
        self.send("POST", path, Some(body)).await
    }
}

/// One request with a JSON body over plain HTTP/1.1 to an `http://host:port/path` URL (the
/// broker's approval webhook, an executor's HTTP action); returns the status and the body.
pub(crate) async fn plain_http_json(
    method: &str,
    url: &str,
    body: Vec<u8>,
    user_agent: &str,
) -> Result<(u16, Vec<u8>), String> {
    let rest = url
        .strip_prefix("http://")
        .ok_or("only http:// URLs are supported")?;
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let tcp = tokio::net::TcpStream::connect(authority)
        .await
        .map_err(|e| format!("connect {authority}: {e}"))?;
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
        .await
        .map_err(|e| e.to_string())?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    let request = hyper::Request::builder()
        .method(method)
        .uri(path)
        .header("host", authority)
        .header("content-type", "application/json")
        .header("user-agent", user_agent)
        .body(Full::new(Bytes::from(body)))
        .map_err(|e| e.to_string())?;
    let response = sender
        .send_request(request)
        .await
        .map_err(|e| e.to_string())?;
    let status = response.status().as_u16();
    let bytes = http_body_util::Limited::new(response.into_body(), MAX_PLAIN_RESPONSE)
        .collect()
        .await
        .map_err(|e| format!("the answer's body: {e} (at most {MAX_PLAIN_RESPONSE} bytes)"))?
        .to_bytes();
    Ok((status, bytes.to_vec()))
}

/// The most [`plain_http_json`] reads of an answer's body: an upstream that streams without
/// end cannot fill the caller's memory.
const MAX_PLAIN_RESPONSE: usize = 16 << 20;

/// The DER contents of every PEM block with `label` (e.g. "CERTIFICATE", "PRIVATE KEY").
pub fn pem_blocks(pem: &[u8], label: &str) -> Result<Vec<Vec<u8>>, ClientError> {
    let text =
        std::str::from_utf8(pem).map_err(|_| ClientError::Input("PEM is not UTF-8".into()))?;
    let begin = format!("-----BEGIN {label}-----");
    let end = format!("-----END {label}-----");
    let mut out = Vec::new();
    let mut rest = text;
    while let Some(start) = rest.find(&begin) {
        let after = &rest[start + begin.len()..];
        let stop = after
            .find(&end)
            .ok_or_else(|| ClientError::Input(format!("unterminated {label} PEM block")))?;
        let b64: String = after[..stop]
            .chars()
            .filter(|c| !c.is_whitespace())
            .collect();
        out.push(
            base64ct::Base64::decode_vec(&b64)
                .map_err(|_| ClientError::Input(format!("bad base64 in {label} PEM block")))?,
        );
        rest = &after[stop + end.len()..];
    }
    if out.is_empty() {
        return Err(ClientError::Input(format!("no {label} PEM block found")));
    }
    Ok(out)
}

use base64ct::Encoding as _;

#[cfg(test)]
mod tests;
