//! The accept loop and the HTTP/1.1 connection shared by the broker (`seb serve`) and the
//! reference executor (`seb exec`): a bound on open connections, one task per connection,
//! and a graceful stop that lets requests in flight finish.
//!
//! At the bound, a new connection takes the place of the oldest connection that has not
//! finished its TLS handshake after [`PROVE_WITHIN`], if there is one: sockets that connect
//! and send nothing (or stall mid-handshake) cost an attacker nothing and no certificate, so
//! they must not be able to keep authenticated clients out (docs/RELIABILITY.md).

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use axum::http::Request;
use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::{GracefulShutdown, Watcher};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Notify, Semaphore};
use tokio::time::Instant;
use tower::ServiceExt;

/// How long a client may take to send a request's headers.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);
/// The read buffer's limit: a request head (request line and headers) still incomplete once
/// the buffer holds this much is refused with 431. hyper reads in growing steps, so heads up
/// to about 40 KiB pass and every head over 64 KiB is refused. Requests' heads are a few
/// hundred bytes (a client certificate travels in the handshake, not a header).
const MAX_HEAD_BUFFER: usize = 32 * 1024;

/// How long a stop waits for open connections before it gives up on them.
const DRAIN: Duration = Duration::from_secs(15);

/// How long, and how much, a closing connection goes on reading what its client still sends
/// ([`Lingering`]).
const LINGER: Duration = Duration::from_secs(3);
const LINGER_BYTES: usize = 64 * 1024 * 1024;

/// How long a connection may take over its TLS handshake before a new connection may take its
/// place when every connection slot is in use. A client a network away sends its ClientHello
/// at once and finishes within a few round trips.
pub(crate) const PROVE_WITHIN: Duration = Duration::from_secs(1);

/// How long a new connection waits for the slot of the connection it displaced.
const TAKE_OVER: Duration = Duration::from_millis(100);

/// The connections still in their TLS handshake, oldest first.
#[derive(Default)]
struct Unproven {
    next: u64,
    queue: VecDeque<(u64, Instant, Arc<Notify>)>,
}

/// A connection's place among those still in their handshake; dropping it (the handshake is
/// done, or failed) takes the connection out of the running for displacement.
pub(crate) struct Handshaking {
    /// Its place in the queue (a new one when [`Handshaking::progressed`] moves it back).
    id: std::sync::atomic::AtomicU64,
    displaced: Arc<Notify>,
    set: Arc<Mutex<Unproven>>,
}

impl Handshaking {
    fn register(set: &Arc<Mutex<Unproven>>) -> Self {
        let mut unproven = set.lock().unwrap_or_else(PoisonError::into_inner);
        let id = unproven.next;
        unproven.next += 1;
        let displaced = Arc::new(Notify::new());
        unproven
            .queue
            .push_back((id, Instant::now(), displaced.clone()));
        Self {
            id: std::sync::atomic::AtomicU64::new(id),
            displaced,
            set: set.clone(),
        }
    }

    /// The client did its part so far (its whole ClientHello arrived): it goes to the back of
    /// the queue with a fresh [`PROVE_WITHIN`], so that time the server itself spends (waiting
    /// for a handshake slot, the device's signature) is not held against it.
    pub(crate) fn progressed(&self) {
        use std::sync::atomic::Ordering;
        let mut unproven = self.set.lock().unwrap_or_else(PoisonError::into_inner);
        let id = self.id.load(Ordering::SeqCst);
        let Ok(at) = unproven.queue.binary_search_by_key(&id, |entry| entry.0) else {
            return; // already chosen for displacement
        };
        unproven.queue.remove(at);
        let fresh = unproven.next;
        unproven.next += 1;
        unproven
            .queue
            .push_back((fresh, Instant::now(), self.displaced.clone()));
        self.id.store(fresh, Ordering::SeqCst);
    }

    /// Completes when the accept loop gives this connection's slot to a new connection: the
    /// connection should then close.
    pub(crate) async fn displaced(&self) {
        self.displaced.notified().await
    }
}

impl Drop for Handshaking {
    fn drop(&mut self) {
        let id = *self.id.get_mut();
        let mut unproven = self.set.lock().unwrap_or_else(PoisonError::into_inner);
        if let Ok(at) = unproven.queue.binary_search_by_key(&id, |entry| entry.0) {
            unproven.queue.remove(at);
        }
    }
}

/// Tells the oldest connection that has been in its handshake for [`PROVE_WITHIN`] or more
/// to close; whether there was one.
fn displace_oldest(set: &Mutex<Unproven>) -> bool {
    let mut unproven = set.lock().unwrap_or_else(PoisonError::into_inner);
    match unproven.queue.front() {
        Some((_, since, _)) if since.elapsed() >= PROVE_WITHIN => {}
        _ => return false,
    }
    match unproven.queue.pop_front() {
        Some((_, _, displaced)) => {
            displaced.notify_one();
            true
        }
        None => false,
    }
}

/// The open connections of each client key (the certificate's key), oldest first.
#[derive(Default)]
pub(crate) struct PerClient {
    next: u64,
    open: HashMap<String, VecDeque<(u64, Arc<Notify>)>>,
}

/// A connection's place among those of its client key. At the cap a new connection of the same
/// key displaces that key's oldest one: one certificate (valid, or revoked and still in use)
/// cannot hold every connection slot, and a client whose old connections went stale is not
/// locked out by them. Dropping it gives the place up.
pub(crate) struct ClientSlot {
    key: String,
    id: u64,
    displaced: Arc<Notify>,
    set: Arc<Mutex<PerClient>>,
}

impl ClientSlot {
    /// Takes a place for `key`, displacing its oldest connections beyond `cap - 1`.
    pub(crate) fn register(set: &Arc<Mutex<PerClient>>, key: &str, cap: usize) -> Self {
        let mut clients = set.lock().unwrap_or_else(PoisonError::into_inner);
        let id = clients.next;
        clients.next += 1;
        let open = clients.open.entry(key.to_owned()).or_default();
        while open.len() >= cap.max(1) {
            if let Some((_, displaced)) = open.pop_front() {
                displaced.notify_one();
            }
        }
        let displaced = Arc::new(Notify::new());
        open.push_back((id, displaced.clone()));
        Self {
            key: key.to_owned(),
            id,
            displaced,
            set: set.clone(),
        }
    }

    /// Resolves once a newer connection of the same key has taken this one's place.
    pub(crate) async fn displaced(&self) {
        self.displaced.notified().await
    }
}

impl Drop for ClientSlot {
    fn drop(&mut self) {
        let mut clients = self.set.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(open) = clients.open.get_mut(&self.key) {
            open.retain(|(id, _)| *id != self.id);
            if open.is_empty() {
                clients.open.remove(&self.key);
            }
        }
    }
}

/// Accepts connections until `shutdown` turns true and runs `on_connection` for each on its
/// own task, at most `max_connections` at once. Beyond that, a new connection takes the slot
/// of the oldest connection that has spent [`PROVE_WITHIN`] in its handshake without
/// finishing it (`on_connection` must close a connection whose [`Handshaking`] says it was
/// displaced, and drop it once the handshake is done); with none, the new connection is
/// closed at once. Then stops accepting and waits up to 15 s for the connections that
/// `on_connection` was given a [`Lifetime`] for (and passed on to [`serve_http1`]).
pub(crate) async fn accept_until<F, Fut>(
    listener: TcpListener,
    mut shutdown: watch::Receiver<bool>,
    max_connections: usize,
    mut on_connection: F,
) where
    F: FnMut(TcpStream, SocketAddr, Lifetime, Handshaking) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let graceful = GracefulShutdown::new();
    let limit = Arc::new(Semaphore::new(max_connections));
    let unproven = Arc::new(Mutex::new(Unproven::default()));
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
        let permit = match limit.clone().try_acquire_owned() {
            Ok(permit) => Some(permit),
            Err(_) if displace_oldest(&unproven) => {
                tokio::time::timeout(TAKE_OVER, limit.clone().acquire_owned())
                    .await
                    .ok()
                    .and_then(Result::ok)
            }
            Err(_) => None,
        };
        let Some(permit) = permit else {
            tracing::warn!(%remote, "connection limit reached; closing");
            continue;
        };
        let _ = stream.set_nodelay(true);
        let handshaking = Handshaking::register(&unproven);
        let lifetime = Lifetime {
            stop: shutdown.clone(),
            _counted: graceful.watcher(),
        };
        let connection = on_connection(stream, remote, lifetime, handshaking);
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

/// A connection's part in a graceful stop: the stop signal, and a token whose drop tells the
/// stop that the connection is gone.
pub(crate) struct Lifetime {
    stop: watch::Receiver<bool>,
    _counted: Watcher,
}

/// Serves HTTP/1.1 with keep-alive over `io` (an established TLS stream) with `router`,
/// handing every request `identity` (the authenticated caller) as an extension, until the
/// client closes, or until a stop or `leave` (a newer connection took this one's place) closes
/// it gracefully: a request in progress is answered first, then the connection closes.
pub(crate) async fn serve_http1<T, E>(
    io: T,
    router: Router,
    identity: E,
    lifetime: Lifetime,
    remote: SocketAddr,
    leave: impl Future<Output = ()>,
) where
    T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    E: Clone + Send + Sync + 'static,
{
    // Set while bytes have been read that no answer has followed yet (a request being read,
    // or one hyper refused itself, such as a head too large: 431), and when an answer closes
    // the connection (a refusal that left the body unread): only then is what the client
    // still sends read and discarded ([`Lingering`]). An idle connection closed by a stop, or
    // one the client closed, is not held.
    let refused = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let marks = refused.clone();
    let service = router
        .map_request(move |mut req: Request<hyper::body::Incoming>| {
            req.extensions_mut().insert(identity.clone());
            req
        })
        .map_response(move |response: axum::response::Response| {
            let closes = response
                .headers()
                .get(axum::http::header::CONNECTION)
                .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"close"));
            marks.store(closes, std::sync::atomic::Ordering::Relaxed);
            response
        });
    let connection = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT)
        .max_buf_size(MAX_HEAD_BUFFER)
        .keep_alive(true)
        .serve_connection(
            TokioIo::new(Lingering::new(io, refused)),
            hyper_util::service::TowerToHyperService::new(service),
        );
    let mut connection = std::pin::pin!(connection);
    let mut leave = std::pin::pin!(leave);
    let Lifetime {
        mut stop,
        _counted: counted,
    } = lifetime;
    let mut closing = false;
    let ended = loop {
        tokio::select! {
            ended = connection.as_mut() => break ended,
            _ = stop.wait_for(|stopping| *stopping), if !closing => {
                connection.as_mut().graceful_shutdown();
                closing = true;
            }
            () = &mut leave, if !closing => {
                connection.as_mut().graceful_shutdown();
                closing = true;
            }
        }
    };
    drop(counted);
    if let Err(e) = ended {
        tracing::debug!(%remote, error = %e, "connection ended with an error");
    }
}

/// A connection's stream that, once the server has shut down its side after a refusal that
/// closes the connection (such as `413` from the declared length of a body), goes on reading
/// and discarding what the client still sends, for at most [`LINGER`] and [`LINGER_BYTES`],
/// until the client closes. Closing a socket with unread data makes the kernel reset the
/// connection, and the reset can destroy the answer before the client has read it: a client
/// that sends its whole body without `Expect: 100-continue` would get a broken pipe instead of
/// its `413`.
struct Lingering<T> {
    io: T,
    /// Whether bytes were read that no answer followed, or an answer closed the connection
    /// with the request's body unread.
    refused: Arc<std::sync::atomic::AtomicBool>,
    /// Set once the write side is shut down: the deadline and the bytes left to discard.
    draining: Option<(std::pin::Pin<Box<tokio::time::Sleep>>, usize)>,
}

impl<T> Lingering<T> {
    fn new(io: T, refused: Arc<std::sync::atomic::AtomicBool>) -> Self {
        Self {
            io,
            refused,
            draining: None,
        }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Lingering<T> {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let read = std::pin::Pin::new(&mut self.io).poll_read(cx, buf);
        if buf.filled().len() > before {
            // Unanswered bytes: if the connection is closed before an answer clears this,
            // hyper refused them itself, and the client may still be sending.
            self.refused
                .store(true, std::sync::atomic::Ordering::Relaxed);
        }
        read
    }
}

impl<T: AsyncRead + AsyncWrite + Unpin> AsyncWrite for Lingering<T> {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        use std::task::Poll;
        let this = &mut *self;
        if this.draining.is_none() {
            std::task::ready!(std::pin::Pin::new(&mut this.io).poll_shutdown(cx))?;
            if !this.refused.load(std::sync::atomic::Ordering::Relaxed) {
                return Poll::Ready(Ok(()));
            }
            this.draining = Some((Box::pin(tokio::time::sleep(LINGER)), LINGER_BYTES));
        }
        let Some((deadline, left)) = this.draining.as_mut() else {
            return Poll::Ready(Ok(()));
        };
        let mut scratch = [0u8; 16 * 1024];
        loop {
            if *left == 0 || deadline.as_mut().poll(cx).is_ready() {
                return Poll::Ready(Ok(()));
            }
            let mut buf = tokio::io::ReadBuf::new(&mut scratch);
            match std::pin::Pin::new(&mut this.io).poll_read(cx, &mut buf) {
                Poll::Pending => return Poll::Pending,
                // The client closed (or broke off): nothing unread is left to cause a reset.
                Poll::Ready(Err(_)) => return Poll::Ready(Ok(())),
                Poll::Ready(Ok(())) if buf.filled().is_empty() => return Poll::Ready(Ok(())),
                Poll::Ready(Ok(())) => *left = left.saturating_sub(buf.filled().len()),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_at_its_cap_gives_up_its_oldest_connection() {
        let set = Arc::new(Mutex::new(PerClient::default()));
        let first = ClientSlot::register(&set, "a", 2);
        let second = ClientSlot::register(&set, "a", 2);
        let other = ClientSlot::register(&set, "b", 2);
        let is_displaced = |slot: &ClientSlot| {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_time()
                .build()
                .unwrap();
            rt.block_on(async {
                tokio::time::timeout(Duration::from_millis(10), slot.displaced())
                    .await
                    .is_ok()
            })
        };
        assert!(!is_displaced(&first) && !is_displaced(&second));
        let third = ClientSlot::register(&set, "a", 2);
        assert!(is_displaced(&first), "the oldest of key a gives way");
        assert!(!is_displaced(&second) && !is_displaced(&third) && !is_displaced(&other));
        drop(first);
        // Closing a connection frees its place: no one else is displaced for the next.
        drop(second);
        let fourth = ClientSlot::register(&set, "a", 2);
        assert!(!is_displaced(&third) && !is_displaced(&fourth));
        drop((third, fourth, other));
        assert!(set.lock().unwrap().open.is_empty());
    }

    #[test]
    fn the_oldest_unfinished_handshake_gives_way_and_progress_buys_time() {
        let set = Arc::new(Mutex::new(Unproven::default()));
        let first = Handshaking::register(&set);
        let second = Handshaking::register(&set);
        // Nobody has had its second yet.
        assert!(!displace_oldest(&set));
        std::thread::sleep(PROVE_WITHIN + Duration::from_millis(100));
        // The first sent its ClientHello: the second is now the oldest, and gives way.
        first.progressed();
        assert!(displace_oldest(&set));
        let left: Vec<u64> = set
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .queue
            .iter()
            .map(|e| e.0)
            .collect();
        assert_eq!(left, [first.id.load(std::sync::atomic::Ordering::SeqCst)]);
        // The first has a fresh second: not displaced yet.
        assert!(!displace_oldest(&set));
        drop(second);
        drop(first);
        assert!(set
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .queue
            .is_empty());
    }
}
