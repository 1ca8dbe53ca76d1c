//! One issuance's two pieces of work, done at once: the device signs the token while the
//! store makes the token id durable. Whichever finishes last wakes the waiting request, so it
//! is woken once, and a signature that is ready before its record is durable asks the store to
//! commit now rather than wait for company.

use std::sync::{Arc, Mutex, MutexGuard, Weak};

use tokio::sync::oneshot;

use super::signer::{SignQueue, SignWaiter};
use crate::audit::entry::Entry;
use crate::backend::{BackendError, Signature};
use crate::store::{Commit, ExecutionRecord, LogPosition, Store, StoreError, INDEX_TAKEN_ATTEMPTS};

/// Both results of an issuance.
#[derive(Debug)]
pub struct Outcome {
    /// Whether the record (with the token id) is durable.
    pub stored: Result<(), StoreError>,
    /// The device's signature over the token; `None` when the record failed first and the
    /// signature was not waited for (it is then not made, or dropped when it arrives).
    pub signed: Option<Result<Signature, BackendError>>,
}

/// Records `record` with its audit `entry` and signs the digest `digest_for` makes from the
/// entry's place in the log, concurrently; returns once both are done.
///
/// The store hands out the entry's index when the write is queued, so the token can name its
/// entry (`audit` claim) before that entry is durable; the token leaves only once it is (the
/// caller checks [`Outcome::stored`]). When a signing thread is idle the record is committed
/// at once (it is then usually durable before the signature is ready). When signatures are
/// queued, the record waits to share a commit with others, and the first signature that needs
/// it durable starts that commit.
///
/// The index is reserved from the store's view of the log. When another process on the host
/// (`seb cert revoke`, `seb epoch bump`) appended an entry in between, the write is refused
/// whole and nothing of it is stored ([`StoreError::is_index_taken`]): the token named an
/// index that is now taken. The issuance is then made again, with the next index and a new
/// signature, up to [`INDEX_TAKEN_ATTEMPTS`] times.
pub async fn sign_and_record<T>(
    store: &Arc<dyn Store>,
    signer: &SignQueue,
    label: Arc<str>,
    record: ExecutionRecord,
    entry: &Entry,
    mut digest_for: impl FnMut(LogPosition) -> Result<(Vec<u8>, T), String>,
) -> Result<(Outcome, T), StoreError> {
    let mut attempts = 0;
    loop {
        attempts += 1;
        let (outcome, extra) = sign_and_record_once(
            store,
            signer,
            label.clone(),
            record.clone(),
            entry,
            &mut digest_for,
        )
        .await?;
        match &outcome.stored {
            Err(e) if attempts < INDEX_TAKEN_ATTEMPTS && e.is_index_taken() => continue,
            _ => return Ok((outcome, extra)),
        }
    }
}

async fn sign_and_record_once<T>(
    store: &Arc<dyn Store>,
    signer: &SignQueue,
    label: Arc<str>,
    record: ExecutionRecord,
    entry: &Entry,
    digest_for: &mut impl FnMut(LogPosition) -> Result<(Vec<u8>, T), String>,
) -> Result<(Outcome, T), StoreError> {
    let (tx, rx) = oneshot::channel();
    let commit = if signer.would_start_now() {
        Commit::Now
    } else {
        Commit::Deferred
    };
    let meeting = Arc::new(Meeting {
        slots: Mutex::new(Slots {
            stored: None,
            signed: None,
            reply: Some(tx),
        }),
        store: Arc::downgrade(store),
        commit,
    });
    // The write is queued first, so that a flush from the signing thread comes after it. Its
    // place in the log may come later (a store shared by replicas), without holding a thread.
    let half = meeting.clone();
    let (placed_tx, placed_rx) = oneshot::channel();
    store.record_execution_positioned(
        record,
        entry,
        commit,
        Box::new(move |p| {
            let _ = placed_tx.send(p);
        }),
        Box::new(move |r| half.stored(r)),
    );
    let position = received(placed_rx, "record execution").await?;
    let (digest, extra) = digest_for(position).map_err(|e| StoreError::Io {
        operation: "build the token",
        source: e.into(),
    })?;
    signer.submit_as(label, digest, Box::new(SignedHalf(meeting)));
    let outcome = rx.await.unwrap_or_else(|_| Outcome {
        stored: Err(StoreError::Io {
            operation: "record execution",
            source: "the issuance was abandoned".into(),
        }),
        signed: None,
    });
    Ok((outcome, extra))
}

struct Slots {
    stored: Option<Result<(), StoreError>>,
    signed: Option<Result<Signature, BackendError>>,
    reply: Option<oneshot::Sender<Outcome>>,
}

struct Meeting {
    slots: Mutex<Slots>,
    /// Weak: the store's own writer thread may hold the last reference to this meeting, and
    /// must not end up owning (and dropping) the store.
    store: Weak<dyn Store>,
    /// How the record was queued: a deferred one may need a flush.
    commit: Commit,
}

impl Meeting {
    fn lock(&self) -> MutexGuard<'_, Slots> {
        // The slots are plain values; a panic elsewhere cannot leave them half-written.
        self.slots.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn stored(&self, result: Result<(), StoreError>) {
        let mut slots = self.lock();
        slots.stored = Some(result);
        deliver(&mut slots);
    }
}

/// Sends the outcome once both halves are in, or at once when the record failed: no token can
/// leave then, so the request need not wait for the device.
fn deliver(slots: &mut Slots) {
    let record_failed = matches!(slots.stored, Some(Err(_)));
    if slots.stored.is_none() || (slots.signed.is_none() && !record_failed) {
        return;
    }
    if let (Some(stored), Some(reply)) = (slots.stored.take(), slots.reply.take()) {
        let _ = reply.send(Outcome {
            stored,
            signed: slots.signed.take(),
        });
    }
}

struct SignedHalf(Arc<Meeting>);

impl SignWaiter for SignedHalf {
    fn wanted(&self) -> bool {
        self.0
            .lock()
            .reply
            .as_ref()
            .is_some_and(|reply| !reply.is_closed())
    }

    fn finish(self: Box<Self>, result: Result<Signature, BackendError>) {
        let flush = {
            let mut slots = self.0.lock();
            let needs_record =
                self.0.commit == Commit::Deferred && result.is_ok() && slots.stored.is_none();
            slots.signed = Some(result);
            deliver(&mut slots);
            needs_record
        };
        if flush {
            if let Some(store) = self.0.store.upgrade() {
                store.flush();
            }
        }
    }
}

/// The result a store callback sends, or an error naming `operation` if it never does.
pub(super) async fn received<T>(
    rx: tokio::sync::oneshot::Receiver<Result<T, StoreError>>,
    operation: &'static str,
) -> Result<T, StoreError> {
    rx.await.unwrap_or_else(|_| {
        Err(StoreError::Io {
            operation,
            source: "the store dropped the write".into(),
        })
    })
}

/// Makes an audited write again (up to [`INDEX_TAKEN_ATTEMPTS`] times in all) while it fails only because the
/// log index reserved for it was taken: another process (`seb cert revoke`, `seb freeze`)
/// appended first, and nothing of the write was stored.
pub(super) async fn retry_when_index_taken<T, F>(
    mut write: impl FnMut() -> F,
) -> Result<T, StoreError>
where
    F: std::future::Future<Output = Result<T, StoreError>>,
{
    let mut attempt = 1;
    loop {
        match write().await {
            Err(e) if attempt < INDEX_TAKEN_ATTEMPTS && e.is_index_taken() => attempt += 1,
            done => return done,
        }
    }
}
