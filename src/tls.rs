//! The one rustls crypto provider every TLS endpoint of seb uses: the broker, the executor,
//! seb's own client and the connection to PostgreSQL.
//!
//! It is aws-lc-rs. A broker checks the agent's handshake signature on every new connection,
//! and agents may hold P-384 keys; aws-lc-rs checks a P-384 signature in about a quarter of
//! the CPU ring needs (docs/PERFORMANCE.md, "Stop 33"). Its defaults are rustls's: TLS 1.3 and
//! 1.2, X25519 first (X25519MLKEM768 is offered last, for peers that prefer it).

use std::sync::Arc;

use rustls::crypto::CryptoProvider;

/// The application protocols seb's HTTPS servers (broker and executor) accept in ALPN: HTTP/1.1,
/// and HTTP/1.0 for clients that offer only that (`curl --http1.0`). HTTP/2 is not served; a
/// client offering it and HTTP/1.1 gets HTTP/1.1.
pub const SERVER_ALPN: [&[u8]; 2] = [b"http/1.1", b"http/1.0"];

/// The crypto provider for every rustls configuration seb builds.
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}
