//! The accept loop and the HTTP/1.1 connection shared by the broker (`seb serve`) and the
//! reference executor (`seb exec`): a bound on open connections, one task per connection,
//! and a graceful stop that lets requests in flight finish.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::http::Request;
use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::{GracefulShutdown, Watcher};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Semaphore};
use tower::ServiceExt;

/// How long a client may take to send a request's headers.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);

/// How long a stop waits for open connections before it gives up on them.
const DRAIN: Duration = Duration::from_secs(15);

/// Accepts connections until `shutdown` turns true and runs `on_connection` for each on its
/// own task, at most `max_connections` at once: beyond that a new connection is closed at
/// once. Then stops accepting and waits up to 15 s for the connections that `on_connection`
/// registered with the [`Watcher`] it was given (through [`serve_http1`]).
pub(crate) async fn accept_until<F, Fut>(
    listener: TcpListener,
    mut shutdown: watch::Receiver<bool>,
    max_connections: usize,
    mut on_connection: F,
) where
    F: FnMut(TcpStream, SocketAddr, Watcher) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let graceful = GracefulShutdown::new();
    let limit = Arc::new(Semaphore::new(max_connections));
    loop {
        let (stream, remote) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    continue;
                }
            },
            _ = shutdown.changed() => break,
        };
        let Ok(permit) = limit.clone().try_acquire_owned() else {
            tracing::warn!(%remote, "connection limit reached; closing");
            continue;
        };
        let _ = stream.set_nodelay(true);
        let connection = on_connection(stream, remote, graceful.watcher());
        tokio::spawn(async move {
            let _permit = permit;
            connection.await;
        });
    }
    drop(listener);
    tokio::select! {
        _ = graceful.shutdown() => tracing::info!("all connections closed"),
        _ = tokio::time::sleep(DRAIN) => {
            tracing::warn!("connections still open after {DRAIN:?}; stopping anyway")
        }
    }
}

/// Serves HTTP/1.1 with keep-alive over `io` (an established TLS stream) with `router`,
/// handing every request `identity` (the authenticated caller) as an extension, until the
/// client closes or a graceful stop drains it.
pub(crate) async fn serve_http1<T, E>(
    io: T,
    router: Router,
    identity: E,
    watcher: Watcher,
    remote: SocketAddr,
) where
    T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    E: Clone + Send + Sync + 'static,
{
    let service = router.map_request(move |mut req: Request<hyper::body::Incoming>| {
        req.extensions_mut().insert(identity.clone());
        req
    });
    let connection = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT)
        .keep_alive(true)
        .serve_connection(
            TokioIo::new(io),
            hyper_util::service::TowerToHyperService::new(service),
        );
    if let Err(e) = watcher.watch(connection).await {
        tracing::debug!(%remote, error = %e, "connection ended with an error");
    }
}
