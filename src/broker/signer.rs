//! Token signing off the async runtime: one thread per HSM session, fed by a queue.
//!
//! Each thread takes the next digest, has the device sign it and hands the result back through
//! a oneshot channel, so an async handler waits for the device without holding a thread. Under
//! load a thread goes from one signature to the next without sleeping, and never more threads
//! wait on the device than it has sessions.

use std::collections::VecDeque;
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

use crate::backend::{BackendError, KeyBackend, Signature};

/// Who waits for a signature.
pub trait SignWaiter: Send {
    /// False once nobody wants the signature any more: it is then not made.
    fn wanted(&self) -> bool;
    /// Receives the device's answer, on a signing thread.
    fn finish(self: Box<Self>, result: Result<Signature, BackendError>);
}

struct OneshotWaiter(oneshot::Sender<Result<Signature, BackendError>>);

impl SignWaiter for OneshotWaiter {
    fn wanted(&self) -> bool {
        !self.0.is_closed()
    }

    fn finish(self: Box<Self>, result: Result<Signature, BackendError>) {
        let _ = self.0.send(result);
    }
}

/// One digest to sign: the key's label, the digest, who waits.
type Job = (Arc<str>, Vec<u8>, Box<dyn SignWaiter>);

struct Queue {
    jobs: VecDeque<Job>,
    /// Threads waiting for work.
    idle: usize,
    /// Threads that have not exited.
    alive: usize,
    closed: bool,
}

struct Shared {
    queue: Mutex<Queue>,
    ready: Condvar,
    /// The label [`SignQueue::submit`] signs with.
    default_label: Arc<str>,
}

/// Signs digests with one key on a fixed set of threads.
pub struct SignQueue {
    shared: Arc<Shared>,
    threads: Vec<JoinHandle<()>>,
}

impl std::fmt::Debug for SignQueue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SignQueue")
            .field("threads", &self.threads.len())
            .finish()
    }
}

impl SignQueue {
    /// Starts `threads` signing threads for the key `label`; `observe` gets each device call's
    /// duration.
    pub fn start(
        backend: Arc<dyn KeyBackend>,
        label: String,
        threads: usize,
        observe: Arc<dyn Fn(Duration) + Send + Sync>,
    ) -> std::io::Result<Self> {
        let shared = Arc::new(Shared {
            queue: Mutex::new(Queue {
                jobs: VecDeque::new(),
                idle: 0,
                alive: 0,
                closed: false,
            }),
            ready: Condvar::new(),
            default_label: Arc::from(label.as_str()),
        });
        let mut handles = Vec::with_capacity(threads.max(1));
        for i in 0..threads.max(1) {
            let (mine, backend, observe) = (shared.clone(), backend.clone(), observe.clone());
            if let Ok(mut queue) = shared.queue.lock() {
                queue.alive += 1;
            }
            let spawned = std::thread::Builder::new()
                .name(format!("seb-sign-{i}"))
                .spawn(move || {
                    // Declared first, so dropped last: the device handle is released before
                    // the exit is announced, also when the thread unwinds.
                    let _exit = SignerExit(mine.clone());
                    let (backend, observe) = (backend, observe);
                    sign_loop(&mine, backend.as_ref(), observe.as_ref());
                });
            match spawned {
                Ok(handle) => handles.push(handle),
                Err(e) => {
                    if let Ok(mut queue) = shared.queue.lock() {
                        queue.alive -= 1;
                    }
                    let queue = SignQueue {
                        shared,
                        threads: handles,
                    };
                    drop(queue);
                    return Err(e);
                }
            }
        }
        Ok(SignQueue {
            shared,
            threads: handles,
        })
    }

    /// Signs `digest` on a signing thread.
    pub async fn sign(&self, digest: Vec<u8>) -> Result<Signature, BackendError> {
        let (tx, rx) = oneshot::channel();
        self.submit(digest, Box::new(OneshotWaiter(tx)));
        rx.await.map_err(|_| stopped())?
    }

    /// Signs `digest` with the key `label` on a signing thread.
    pub async fn sign_as(
        &self,
        label: Arc<str>,
        digest: Vec<u8>,
    ) -> Result<Signature, BackendError> {
        let (tx, rx) = oneshot::channel();
        self.submit_as(label, digest, Box::new(OneshotWaiter(tx)));
        rx.await.map_err(|_| stopped())?
    }

    /// Whether a digest queued now would be signed at once (a thread is idle).
    pub fn would_start_now(&self) -> bool {
        self.shared
            .queue
            .lock()
            .is_ok_and(|q| q.jobs.len() < q.idle)
    }

    /// Queues `digest` for the key the queue was started with; `waiter` gets the signature
    /// on a signing thread.
    pub fn submit(&self, digest: Vec<u8>, waiter: Box<dyn SignWaiter>) {
        self.submit_as(self.shared.default_label.clone(), digest, waiter);
    }

    /// Queues `digest` for the key `label` (after a rotation, the broker names the generation
    /// whose `kid` the token carries); `waiter` gets the signature on a signing thread.
    pub fn submit_as(&self, label: Arc<str>, digest: Vec<u8>, waiter: Box<dyn SignWaiter>) {
        let rejected = match self.shared.queue.lock() {
            Ok(mut queue) if !queue.closed => {
                queue.jobs.push_back((label, digest, waiter));
                None
            }
            Ok(_) | Err(_) => Some(waiter),
        };
        match rejected {
            None => self.shared.ready.notify_one(),
            Some(waiter) => waiter.finish(Err(stopped())),
        }
    }
}

/// How long stopping waits for a signature in progress.
const STOP_WAIT: Duration = Duration::from_secs(5);

impl Drop for SignQueue {
    /// Stops the threads: queued digests are not signed (their waiters get an error), and a
    /// signature in progress is waited for, up to [`STOP_WAIT`], so that the device is released
    /// before the broker goes on shutting down. A device that hangs longer is left behind
    /// rather than holding up the shutdown.
    fn drop(&mut self) {
        let queued: Vec<_> = match self.shared.queue.lock() {
            Ok(mut queue) => {
                queue.closed = true;
                queue.jobs.drain(..).collect()
            }
            Err(_) => Vec::new(),
        };
        self.shared.ready.notify_all();
        for (_, _, waiter) in queued {
            waiter.finish(Err(stopped()));
        }
        let deadline = Instant::now() + STOP_WAIT;
        if let Ok(mut queue) = self.shared.queue.lock() {
            while queue.alive > 0 {
                let left = deadline.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    tracing::warn!("a signing thread is still in the device; not waiting");
                    break;
                }
                queue = match self.shared.ready.wait_timeout(queue, left) {
                    Ok((q, _)) => q,
                    Err(_) => break,
                };
            }
        }
        self.threads.clear();
    }
}

/// Announces a signing thread's exit, however it ends. The last thread to go closes the
/// queue and fails what is left in it, so that no request waits for a thread that is gone.
struct SignerExit(Arc<Shared>);

impl Drop for SignerExit {
    fn drop(&mut self) {
        let orphans: Vec<_> = {
            let mut queue = self.0.queue.lock().unwrap_or_else(|p| p.into_inner());
            queue.alive = queue.alive.saturating_sub(1);
            if queue.alive == 0 {
                queue.closed = true;
                queue.jobs.drain(..).collect()
            } else {
                Vec::new()
            }
        };
        self.0.ready.notify_all();
        for (_, _, waiter) in orphans {
            waiter.finish(Err(stopped()));
        }
    }
}

fn sign_loop(shared: &Shared, backend: &dyn KeyBackend, observe: &dyn Fn(Duration)) {
    loop {
        let job = {
            let Ok(mut queue) = shared.queue.lock() else {
                return;
            };
            loop {
                if let Some(job) = queue.jobs.pop_front() {
                    break job;
                }
                if queue.closed {
                    return;
                }
                queue.idle += 1;
                queue = match shared.ready.wait(queue) {
                    Ok(q) => q,
                    Err(_) => return,
                };
                queue.idle -= 1;
            }
        };
        let (label, digest, waiter) = job;
        if !waiter.wanted() {
            continue; // the request was abandoned (timeout, disconnect): sign nothing
        }
        let started = Instant::now();
        let result = backend.sign_digest(&label, &digest);
        observe(started.elapsed());
        waiter.finish(result);
    }
}

fn stopped() -> BackendError {
    BackendError::Unavailable {
        operation: "sign",
        source: "the signing threads have stopped".into(),
    }
}
