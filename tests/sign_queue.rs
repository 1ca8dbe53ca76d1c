//! The broker's signing threads against a real SoftHSM2 token: many concurrent requests get
//! valid signatures from a fixed set of threads, an abandoned request costs no signature, and
//! stopping the queue fails what is still queued instead of leaving it waiting.
//!
//! One test in this binary: it sets the process's SOFTHSM2_CONF, which must not race with
//! another test in the same process.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Arc};
use std::time::Duration;

use common::Hsm;
use seb::backend::{BackendError, KeyAlgorithm, KeyBackend, PublicKey, Signature};
use seb::broker::signer::{SignQueue, SignWaiter};
use sha2::{Digest, Sha384};
use signature::hazmat::PrehashVerifier;

/// A waiter that may be abandoned before its turn, reporting to a channel.
struct Probe {
    wanted: bool,
    tx: mpsc::Sender<Result<Signature, BackendError>>,
}

impl SignWaiter for Probe {
    fn wanted(&self) -> bool {
        self.wanted
    }

    fn finish(self: Box<Self>, result: Result<Signature, BackendError>) {
        let _ = self.tx.send(result);
    }
}

/// A waiter that holds its signing thread (inside `wanted`) until the gate opens.
struct Held {
    gate: Arc<(std::sync::Mutex<bool>, std::sync::Condvar)>,
    entered: mpsc::Sender<()>,
    tx: mpsc::Sender<Result<Signature, BackendError>>,
}

impl SignWaiter for Held {
    fn wanted(&self) -> bool {
        let _ = self.entered.send(());
        let mut open = self.gate.0.lock().unwrap();
        while !*open {
            open = self.gate.1.wait(open).unwrap();
        }
        true
    }

    fn finish(self: Box<Self>, result: Result<Signature, BackendError>) {
        let _ = self.tx.send(result);
    }
}

#[test]
fn signing_threads_sign_concurrently_skip_abandoned_work_and_stop_cleanly() {
    let hsm = Hsm::provision();
    std::env::set_var("SOFTHSM2_CONF", hsm.softhsm_conf());
    let backend: Arc<dyn KeyBackend> = Arc::new(hsm.backend(2));
    let PublicKey::P384(public) = backend.generate("queue-key", KeyAlgorithm::EcP384).unwrap()
    else {
        panic!("not a P-384 key");
    };
    let verifying = p384::ecdsa::VerifyingKey::from(public);
    let signed = Arc::new(AtomicUsize::new(0));
    let counter = signed.clone();
    let queue = SignQueue::start(
        backend.clone(),
        "queue-key".into(),
        2,
        Arc::new(move |_| {
            counter.fetch_add(1, Ordering::SeqCst);
        }),
    )
    .unwrap();

    // 64 concurrent requests from async tasks, served by two threads; every signature checks.
    let runtime = common::runtime();
    let queue = Arc::new(queue);
    let results = runtime.block_on(async {
        let mut tasks = Vec::new();
        for i in 0..64u32 {
            let queue = queue.clone();
            tasks.push(tokio::spawn(async move {
                let digest = Sha384::digest(i.to_be_bytes()).to_vec();
                (digest.clone(), queue.sign(digest).await)
            }));
        }
        let mut out = Vec::new();
        for task in tasks {
            out.push(task.await.unwrap());
        }
        out
    });
    for (digest, result) in results {
        let Signature::P384(sig) = result.unwrap() else {
            panic!("not a P-384 signature");
        };
        verifying.verify_prehash(&digest, &sig).unwrap();
    }
    assert_eq!(signed.load(Ordering::SeqCst), 64);

    // An abandoned request is dropped from the queue without a device signature.
    let (tx, rx) = mpsc::channel();
    let digest = Sha384::digest(b"abandoned").to_vec();
    queue.submit(
        digest.clone(),
        Box::new(Probe {
            wanted: false,
            tx: tx.clone(),
        }),
    );
    queue.submit(digest, Box::new(Probe { wanted: true, tx }));
    let answer = rx.recv_timeout(Duration::from_secs(10)).unwrap();
    assert!(answer.is_ok());
    assert!(rx.recv_timeout(Duration::from_millis(200)).is_err());
    assert_eq!(
        signed.load(Ordering::SeqCst),
        65,
        "only the wanted one was signed"
    );

    // Stopping fails what is still queued rather than signing it or leaving it waiting. Both
    // signing threads are first held inside a job of their own, so that the 20 jobs behind them
    // are certainly still queued when the queue stops, however busy the machine is.
    let gate = Arc::new((std::sync::Mutex::new(false), std::sync::Condvar::new()));
    let (entered_tx, entered) = mpsc::channel();
    let (held_tx, _held_answers) = mpsc::channel();
    for i in 0..2u32 {
        queue.submit(
            Sha384::digest(i.to_be_bytes()).to_vec(),
            Box::new(Held {
                gate: gate.clone(),
                entered: entered_tx.clone(),
                tx: held_tx.clone(),
            }),
        );
    }
    for _ in 0..2 {
        entered.recv_timeout(Duration::from_secs(10)).unwrap();
    }
    let queue = Arc::try_unwrap(queue).ok().unwrap();
    let (tx, rx) = mpsc::channel();
    for i in 0..20u32 {
        queue.submit(
            Sha384::digest(i.to_le_bytes()).to_vec(),
            Box::new(Probe {
                wanted: true,
                tx: tx.clone(),
            }),
        );
    }
    let release = {
        let gate = gate.clone();
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(100));
            *gate.0.lock().unwrap() = true;
            gate.1.notify_all();
        })
    };
    drop(queue);
    release.join().unwrap();
    let (mut answered, mut refused) = (0, 0);
    while let Ok(result) = rx.recv_timeout(Duration::from_secs(10)) {
        answered += 1;
        if let Err(e) = result {
            assert!(e.is_unavailable(), "{e}");
            refused += 1;
        }
        if answered == 20 {
            break;
        }
    }
    assert_eq!(answered, 20, "every queued request got an answer");
    assert_eq!(
        refused, 20,
        "queued work is refused, not signed, when the queue stops"
    );
}
