//! The SQLite store against real files: durability order, group commit, deferred writes,
//! failure injection and reopening.

use std::time::UNIX_EPOCH;

use super::*;
use crate::store::ExecutionStatus;

/// An executor certificate as the broker names it (thumbprint only here).
fn executor(thumbprint: impl Into<String>) -> crate::store::CertRef {
    crate::store::CertRef {
        thumbprint: thumbprint.into(),
        serial: String::new(),
        subject: String::new(),
    }
}

fn serial(bytes: &[u8]) -> Serial {
    Serial::from_magnitude(bytes).unwrap()
}

/// Queues a write that ends the transaction itself with `ROLLBACK`, as SQLite does after an
/// I/O error or a full disk; the receiver hears whether that write was reported done.
fn queue_rollback(store: &SqliteStore) -> mpsc::Receiver<bool> {
    let (tx, breaker) = mpsc::channel();
    store.enqueue(
        "roll back",
        |c| c.execute_batch("ROLLBACK"),
        move |r| {
            let _ = tx.send(r.is_ok());
        },
        Scope::OneStatement,
        true,
    );
    breaker
}
#[test]
fn revocation_is_recorded_once_and_survives_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(dir.path()).unwrap();
    let at = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
    assert_eq!(
        store
            .revoke(&serial(&[1, 2, 3]), Reason::KeyCompromise, at)
            .unwrap(),
        RevokeOutcome::Revoked { known: false }
    );
    assert_eq!(
        store
            .revoke(&serial(&[1, 2, 3]), Reason::Superseded, at)
            .unwrap(),
        RevokeOutcome::AlreadyRevoked
    );
    drop(store);
    let store = SqliteStore::open(dir.path()).unwrap();
    assert!(store.is_revoked(&serial(&[1, 2, 3])).unwrap());
    assert!(!store.is_revoked(&serial(&[1, 2, 4])).unwrap());
    let all = store.revocations().unwrap();
    assert_eq!(all.len(), 1);
    assert_eq!(all[0].reason, Reason::KeyCompromise);
    assert_eq!(all[0].revoked_at, at);
}

#[test]
fn crl_numbers_only_grow() {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(dir.path()).unwrap();
    assert_eq!(store.next_crl_number().unwrap(), 1);
    assert_eq!(store.next_crl_number().unwrap(), 2);
    drop(store);
    assert_eq!(
        SqliteStore::open(dir.path())
            .unwrap()
            .next_crl_number()
            .unwrap(),
        3
    );
}

#[test]
fn known_serials_are_reported() {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(dir.path()).unwrap();
    store
        .record_issued(&IssuedCertificate {
            serial: serial(&[9]),
            subject: "CN=a".into(),
            role: "agent".into(),
            issuer_label: "seb-root".into(),
            not_after: SystemTime::now(),
            pem: String::new(),
        })
        .unwrap();
    assert_eq!(
        store
            .revoke(&serial(&[9]), Reason::Unspecified, SystemTime::now())
            .unwrap(),
        RevokeOutcome::Revoked { known: true }
    );
}

#[test]
fn issued_certificates_are_listed_in_order_and_looked_up_by_serial() {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(dir.path()).unwrap();
    let at = SystemTime::UNIX_EPOCH + Duration::from_secs(1_900_000_000);
    let record = |n: u8, role: &str| IssuedCertificate {
        serial: serial(&[n]),
        subject: format!("CN={n}"),
        role: role.into(),
        issuer_label: "seb-root".into(),
        not_after: at,
        pem: format!("pem {n}"),
    };
    store.record_issued(&record(7, "agent")).unwrap();
    store.record_issued(&record(3, "executor")).unwrap();
    assert_eq!(
        store.issued_certificates().unwrap(),
        vec![record(7, "agent"), record(3, "executor")]
    );
    assert_eq!(
        store.issued_certificate(&serial(&[3])).unwrap(),
        Some(record(3, "executor"))
    );
    assert_eq!(store.issued_certificate(&serial(&[4])).unwrap(), None);
    assert_eq!(store.revocation(&serial(&[3])).unwrap(), None);
    store.revoke(&serial(&[3]), Reason::Superseded, at).unwrap();
    let revoked = store.revocation(&serial(&[3])).unwrap().unwrap();
    assert_eq!(
        (revoked.reason, revoked.revoked_at),
        (Reason::Superseded, at)
    );
}

#[test]
fn events_are_recorded_in_order_and_survive_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(dir.path()).unwrap();
    let t = UNIX_EPOCH + Duration::from_secs(1_800_000_000);
    store
        .record_event("attestation_failed", "PCR 23 differs", t)
        .unwrap();
    store.record_event("attestation_restored", "", t).unwrap();
    store
        .record_event("attestation_failed", "TPM unreachable", t)
        .unwrap();
    drop(store);
    let store = SqliteStore::open(dir.path()).unwrap();
    let failed = store.events("attestation_failed").unwrap();
    assert_eq!(
        failed,
        vec![
            (t, "PCR 23 differs".to_owned()),
            (t, "TPM unreachable".to_owned())
        ]
    );
    assert!(store.events("nothing").unwrap().is_empty());
}

#[test]
fn unwritable_state_dir_is_an_open_error() {
    // /dev/null is a file, so a directory below it cannot exist (root ignores modes).
    let err = SqliteStore::open(Path::new("/dev/null/state")).unwrap_err();
    assert!(matches!(err, StoreError::Open { .. }), "{err}");
}

fn issuing(id: &str) -> ExecutionRecord {
    ExecutionRecord {
        request_id: id.into(),
        agent: "thumb".into(),
        agent_serials: vec![serial(&[0x42]), serial(&[0x80, 0x01])],
        agent_subject: "CN=agent".into(),
        operation: "deploy.restart".into(),
        resource: "prod/api".into(),
        params: "{}".into(),
        request_digest: "digest".into(),
        status: ExecutionStatus::Issuing,
        deny_code: None,
        approvals_required: 0,
        jti: Some(format!("jti-{id}")),
        token: None,
        expires_at: Some(UNIX_EPOCH + Duration::from_secs(1_700_000_060)),
        created_at: UNIX_EPOCH + Duration::from_secs(1_700_000_000),
    }
}

fn entry() -> Entry {
    Entry::new(EntryKind::ExecutionGranted, 1_700_000_000_000)
}

/// Queues `record` with `commit` and returns a receiver for its completion.
fn queue(store: &SqliteStore, record: ExecutionRecord, commit: Commit) -> mpsc::Receiver<bool> {
    let (tx, rx) = mpsc::channel();
    let _ = store.record_execution_then(
        record,
        &entry(),
        commit,
        Box::new(move |r| {
            let _ = tx.send(r.is_ok());
        }),
    );
    rx
}

fn complete(store: &SqliteStore, id: &str, token: Option<&str>) -> mpsc::Receiver<bool> {
    let (tx, rx) = mpsc::channel();
    store.complete_issuance_then(
        id,
        token.map(str::to_owned),
        Box::new(move |r| {
            let _ = tx.send(r.is_ok());
        }),
    );
    rx
}

/// Whether the store in `dir`, opened afresh, holds request `id`.
fn persisted(dir: &Path, id: &str) -> bool {
    let store = SqliteStore::open(dir).unwrap();
    store.execution(id).unwrap().is_some()
}

const WAIT: Duration = Duration::from_secs(10);

#[test]
fn an_issuance_is_reserved_then_completed_and_reads_see_the_completion() {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(dir.path()).unwrap();
    assert!(queue(&store, issuing("r1"), Commit::Now)
        .recv_timeout(WAIT)
        .unwrap());
    let reserved = store.execution("r1").unwrap().unwrap();
    assert_eq!(reserved.status, ExecutionStatus::Issuing);
    assert_eq!(reserved.token, None);
    // The token id is known to redemption as soon as it is reserved.
    let at = UNIX_EPOCH + Duration::from_secs(1_700_000_010);
    assert_eq!(
        store.redeem("jti-r1", &executor("exec"), at).unwrap(),
        RedeemOutcome::Redeemed
    );

    // The completion is queued without waiting; a read right after already sees it.
    let done = complete(&store, "r1", Some("header.claims.sig"));
    let granted = store.execution("r1").unwrap().unwrap();
    assert_eq!(granted.status, ExecutionStatus::Granted);
    assert_eq!(granted.token.as_deref(), Some("header.claims.sig"));
    assert!(done.recv_timeout(WAIT).unwrap());

    // An outcome is recorded once: a late failure does not undo a granted token.
    assert!(complete(&store, "r1", None).recv_timeout(WAIT).unwrap());
    assert_eq!(
        store.execution("r1").unwrap().unwrap().status,
        ExecutionStatus::Granted
    );
}

#[test]
fn a_failed_issuance_is_marked_failed_and_survives_reopen() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = SqliteStore::open(dir.path()).unwrap();
        assert!(queue(&store, issuing("r2"), Commit::Now)
            .recv_timeout(WAIT)
            .unwrap());
        let _ = complete(&store, "r2", None);
        // Closing commits what is still deferred.
    }
    let store = SqliteStore::open(dir.path()).unwrap();
    let failed = store.execution("r2").unwrap().unwrap();
    assert_eq!(failed.status, ExecutionStatus::Failed);
    assert_eq!(failed.token, None);
}

#[test]
fn deferred_writes_commit_on_flush_or_after_the_bound() {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(dir.path()).unwrap();
    // A flush makes a deferred write durable now.
    let flushed = queue(&store, issuing("r3"), Commit::Deferred);
    store.flush();
    assert!(flushed.recv_timeout(WAIT).unwrap());
    // With nothing else happening, a deferred write still commits on its own.
    let alone = queue(&store, issuing("r4"), Commit::Deferred);
    assert!(alone.recv_timeout(WAIT).unwrap());
    // An urgent write takes the deferred ones along in its commit.
    let deferred = queue(&store, issuing("r5"), Commit::Deferred);
    let urgent = queue(&store, issuing("r6"), Commit::Now);
    assert!(urgent.recv_timeout(WAIT).unwrap());
    assert!(deferred.recv_timeout(WAIT).unwrap());
    drop(store);
    for id in ["r3", "r4", "r5", "r6"] {
        assert!(persisted(dir.path(), id), "{id}");
    }
}

#[test]
fn a_failing_write_does_not_take_the_rest_of_its_commit_with_it() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = SqliteStore::open(dir.path()).unwrap();
        // Deferred, so all three share one transaction; the middle one breaks the
        // uniqueness of the request id.
        let first = queue(&store, issuing("r7"), Commit::Deferred);
        let duplicate = queue(&store, issuing("r7"), Commit::Deferred);
        let last = queue(&store, issuing("r8"), Commit::Deferred);
        store.flush();
        assert!(first.recv_timeout(WAIT).unwrap());
        assert!(!duplicate.recv_timeout(WAIT).unwrap());
        assert!(last.recv_timeout(WAIT).unwrap());
    }
    assert!(persisted(dir.path(), "r7"));
    assert!(persisted(dir.path(), "r8"));
}

#[test]
fn when_the_database_rolls_the_batch_back_no_write_of_it_is_reported_or_left_committed() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = SqliteStore::open(dir.path()).unwrap();
        let before = queue(&store, issuing("r9"), Commit::Deferred);
        // Stands for an I/O error or a full disk, after which SQLite ends the transaction
        // itself: the writes after it must not run (each would commit on its own).
        let breaker = queue_rollback(&store);
        let after = queue(&store, issuing("r10"), Commit::Deferred);
        store.flush();
        assert!(!before.recv_timeout(WAIT).unwrap());
        assert!(!breaker.recv_timeout(WAIT).unwrap());
        assert!(!after.recv_timeout(WAIT).unwrap());
    }
    assert!(!persisted(dir.path(), "r9"));
    assert!(!persisted(dir.path(), "r10"));
}

#[test]
fn a_write_after_the_writer_stopped_fails_instead_of_hanging() {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(dir.path()).unwrap();
    // Stop the writer as Drop would.
    store.jobs.close();
    let result = queue(&store, issuing("r7"), Commit::Now).recv_timeout(WAIT);
    assert_eq!(result, Ok(false));
    assert!(store.record_execution(&issuing("r8"), &entry()).is_err());
}

#[test]
fn a_writer_callback_may_drop_the_last_reference_to_the_store() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(SqliteStore::open(dir.path()).unwrap());
    let (tx, rx) = mpsc::channel();
    let held = store.clone();
    let _ = store.record_execution_then(
        issuing("z1"),
        &entry(),
        Commit::Deferred,
        Box::new(move |r| {
            // The last reference goes on the writer thread, which then closes the store.
            drop(held);
            let _ = tx.send(r.is_ok());
        }),
    );
    drop(store);
    assert_eq!(rx.recv_timeout(WAIT), Ok(true));
    let store = SqliteStore::open(dir.path()).unwrap();
    assert!(store.execution("z1").unwrap().is_some());
}

#[test]
fn closing_the_store_checkpoints_the_log_into_the_database() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = SqliteStore::open(dir.path()).unwrap();
        for i in 0..200 {
            store
                .record_execution(&issuing(&format!("c{i}")), &entry())
                .unwrap();
        }
        let wal = std::fs::metadata(dir.path().join("seb.db-wal"))
            .unwrap()
            .len();
        assert!(wal > 0, "commits go to the write-ahead log first");
    }
    let wal = std::fs::metadata(dir.path().join("seb.db-wal")).map_or(0, |m| m.len());
    assert_eq!(wal, 0, "the log was copied into the database and truncated");
    let store = SqliteStore::open(dir.path()).unwrap();
    assert!(store.execution("c199").unwrap().is_some());
}

#[test]
fn a_token_id_is_redeemed_once_by_anyone_and_across_reopening() {
    let dir = tempfile::tempdir().unwrap();
    let t = |s: u64| UNIX_EPOCH + Duration::from_secs(1_700_000_000 + s);
    {
        let store = SqliteStore::open(dir.path()).unwrap();
        store.record_execution(&issuing("d1"), &entry()).unwrap();
        store.record_execution(&issuing("d2"), &entry()).unwrap();
        assert_eq!(
            store
                .redeem("jti-d1", &executor("executor-a"), t(10))
                .unwrap(),
            RedeemOutcome::Redeemed
        );
        // The same executor again, then another executor: both too late, and told when
        // the first redemption happened.
        assert_eq!(
            store
                .redeem("jti-d1", &executor("executor-a"), t(11))
                .unwrap(),
            RedeemOutcome::AlreadyRedeemed { at: t(10) }
        );
        assert_eq!(
            store
                .redeem("jti-d1", &executor("executor-b"), t(12))
                .unwrap(),
            RedeemOutcome::AlreadyRedeemed { at: t(10) }
        );
        // The guard is per token id: another token still redeems once.
        assert_eq!(
            store
                .redeem("jti-d2", &executor("executor-b"), t(13))
                .unwrap(),
            RedeemOutcome::Redeemed
        );
        assert_eq!(
            store
                .redeem("jti-unknown", &executor("executor-a"), t(14))
                .unwrap(),
            RedeemOutcome::Unknown
        );
    }
    let store = SqliteStore::open(dir.path()).unwrap();
    assert_eq!(
        store
            .redeem("jti-d1", &executor("executor-c"), t(20))
            .unwrap(),
        RedeemOutcome::AlreadyRedeemed { at: t(10) }
    );
    assert_eq!(
        store
            .redeem("jti-d2", &executor("executor-a"), t(21))
            .unwrap(),
        RedeemOutcome::AlreadyRedeemed { at: t(13) }
    );
}

#[test]
fn concurrent_redemptions_of_one_token_id_succeed_exactly_once() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(SqliteStore::open(dir.path()).unwrap());
    store.record_execution(&issuing("d3"), &entry()).unwrap();
    let at = UNIX_EPOCH + Duration::from_secs(1_700_000_100);
    let outcomes: Vec<RedeemOutcome> = (0..8)
        .map(|i| {
            let store = store.clone();
            std::thread::spawn(move || {
                store
                    .redeem("jti-d3", &executor(format!("executor-{i}")), at)
                    .unwrap()
            })
        })
        .collect::<Vec<_>>()
        .into_iter()
        .map(|h| h.join().unwrap())
        .collect();
    let firsts = outcomes
        .iter()
        .filter(|o| **o == RedeemOutcome::Redeemed)
        .count();
    assert_eq!(firsts, 1, "{outcomes:?}");
    assert!(
        outcomes.iter().all(|o| matches!(
            o,
            RedeemOutcome::Redeemed | RedeemOutcome::AlreadyRedeemed { .. }
        )),
        "{outcomes:?}"
    );
}

#[test]
fn the_revocation_generation_moves_with_every_new_revocation_only() {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(dir.path()).unwrap();
    let at = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
    let empty = store.revocation_generation().unwrap();
    store
        .revoke(&serial(&[1]), Reason::KeyCompromise, at)
        .unwrap();
    let one = store.revocation_generation().unwrap();
    assert_ne!(one, empty);
    store
        .revoke(&serial(&[1]), Reason::KeyCompromise, at)
        .unwrap();
    assert_eq!(
        store.revocation_generation().unwrap(),
        one,
        "nothing changed"
    );
    store.revoke(&serial(&[2]), Reason::Superseded, at).unwrap();
    assert_ne!(store.revocation_generation().unwrap(), one);
}

#[test]
fn serials_stored_before_canonical_serials_are_canonicalised_on_open() {
    // A store written by an earlier seb: `revoked` holds serials as they were typed, with a
    // DER sign byte (00 80 ...) and leading zeros; one serial twice in two spellings.
    let dir = tempfile::tempdir().unwrap();
    drop(SqliteStore::open(dir.path()).unwrap());
    {
        let c = Connection::open(dir.path().join("seb.db")).unwrap();
        c.execute_batch(
            "PRAGMA user_version = 0;
             INSERT INTO revoked VALUES (x'0080a1b2', 'key-compromise', 1700000100);
             INSERT INTO revoked VALUES (x'80a1b2', 'superseded', 1700000200);
             INSERT INTO revoked VALUES (x'000001', 'unspecified', 1700000300);
             INSERT INTO revoked VALUES (x'00', 'unspecified', 1700000400);
             INSERT INTO issued VALUES (x'0099', 'CN=a', 'agent', 'seb-root', 1800000000, 1700000000, '');",
        )
        .unwrap();
    }
    let store = SqliteStore::open(dir.path()).unwrap();
    assert!(store.is_revoked(&serial(&[0x80, 0xa1, 0xb2])).unwrap());
    assert!(store.is_revoked(&serial(&[0x01])).unwrap());
    let all = store.revocations().unwrap();
    assert_eq!(all.len(), 2, "{all:?}");
    // One serial, one row: the first revocation's time and reason are kept.
    let first = all
        .iter()
        .find(|r| r.serial == serial(&[0x80, 0xa1, 0xb2]))
        .unwrap();
    assert_eq!(first.reason, Reason::KeyCompromise);
    assert_eq!(
        first.revoked_at,
        UNIX_EPOCH + Duration::from_secs(1_700_000_100)
    );
    assert_eq!(
        store
            .revoke(&serial(&[0x99]), Reason::Unspecified, SystemTime::now())
            .unwrap(),
        RevokeOutcome::Revoked { known: true },
        "issued serials are canonical too"
    );
    // Zero is no serial of any certificate seb accepts; it is dropped (and said so).
    assert_eq!(store.events("serial_migration").unwrap().len(), 1);
}

#[test]
fn a_token_of_a_revoked_agent_is_not_redeemed_and_old_records_fail_closed() {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(dir.path()).unwrap();
    let at = UNIX_EPOCH + Duration::from_secs(1_700_000_100);
    store.record_execution(&issuing("r1"), &entry()).unwrap();
    store.record_execution(&issuing("r2"), &entry()).unwrap();
    assert_eq!(
        store.execution("r1").unwrap().unwrap().agent_serials,
        issuing("r1").agent_serials
    );
    // The agent's intermediate (second serial of its path) is revoked: neither token redeems,
    // and neither is used up by trying.
    store
        .revoke(&serial(&[0x80, 0x01]), Reason::KeyCompromise, at)
        .unwrap();
    for jti in ["jti-r1", "jti-r2"] {
        assert_eq!(
            store.redeem(jti, &executor("executor"), at).unwrap(),
            RedeemOutcome::AgentRevoked {
                serial: serial(&[0x80, 0x01])
            }
        );
    }
    // A record from before agent serials were kept: refused, not waved through.
    let old = ExecutionRecord {
        agent_serials: vec![],
        ..issuing("r3")
    };
    store.record_execution(&old, &entry()).unwrap();
    assert_eq!(
        store.redeem("jti-r3", &executor("executor"), at).unwrap(),
        RedeemOutcome::AgentUnrecorded
    );
    drop(store);
    let c = Connection::open(dir.path().join("seb.db")).unwrap();
    let redeemed: i64 = c
        .query_row("SELECT count(*) FROM redemptions", [], |r| r.get(0))
        .unwrap();
    assert_eq!(redeemed, 0);
}

#[test]
fn a_store_from_before_agent_serials_gains_the_column() {
    let dir = tempfile::tempdir().unwrap();
    {
        let c = Connection::open(dir.path().join("seb.db")).unwrap();
        // The executions table as version 1 had it.
        c.execute_batch(
            "CREATE TABLE executions (
                request_id TEXT PRIMARY KEY, agent TEXT NOT NULL, agent_subject TEXT NOT NULL,
                operation TEXT NOT NULL, resource TEXT NOT NULL, params TEXT NOT NULL,
                request_digest TEXT NOT NULL, status TEXT NOT NULL, deny_code TEXT,
                approvals_required INTEGER NOT NULL, jti TEXT UNIQUE, token TEXT,
                expires_at INTEGER, created_at INTEGER NOT NULL);
             INSERT INTO executions VALUES ('old', 't', 'CN=a', 'op', 'res', '{}', 'd', 'granted',
                NULL, 0, 'jti-old', 'tok', 1800000000, 1700000000);
             PRAGMA user_version = 1;",
        )
        .unwrap();
    }
    let store = SqliteStore::open(dir.path()).unwrap();
    assert!(store
        .execution("old")
        .unwrap()
        .unwrap()
        .agent_serials
        .is_empty());
    assert_eq!(
        store
            .redeem("jti-old", &executor("executor"), SystemTime::now())
            .unwrap(),
        RedeemOutcome::AgentUnrecorded
    );
    store.record_execution(&issuing("new"), &entry()).unwrap();
    assert_eq!(
        store
            .redeem("jti-new", &executor("executor"), SystemTime::now())
            .unwrap(),
        RedeemOutcome::Redeemed
    );
}

/// Recomputes the root from the stored entries and checks it against the stored nodes, and
/// that indexes run 0..n without a gap.
fn assert_log_consistent(store: &SqliteStore) -> u64 {
    let size = store.audit_size().unwrap();
    let mut leaves = Vec::new();
    let mut start = 0;
    while start < size {
        let page = store.audit_entries(start, size).unwrap();
        for (index, text) in &page {
            assert_eq!(*index, leaves.len() as u64, "gap in the log");
            leaves.push(merkle::leaf_hash(text.as_bytes()));
        }
        start += page.len() as u64;
    }
    assert_eq!(leaves.len() as u64, size);
    assert_eq!(store.audit_root(size).unwrap(), merkle::root_of(&leaves));
    size
}

#[test]
fn concurrent_audited_writes_get_distinct_consecutive_indexes_that_match_their_entries() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(SqliteStore::open(dir.path()).unwrap());
    let threads: Vec<_> = (0..8)
        .map(|t| {
            let store = store.clone();
            std::thread::spawn(move || {
                (0..40)
                    .map(|i| {
                        let mut e = entry();
                        e.request_id = Some(format!("t{t}-{i}"));
                        let (tx, rx) = mpsc::channel();
                        let commit = if i % 2 == 0 {
                            Commit::Now
                        } else {
                            Commit::Deferred
                        };
                        let position = store
                            .record_execution_then(
                                issuing(&format!("t{t}-{i}")),
                                &e,
                                commit,
                                Box::new(move |r| {
                                    let _ = tx.send(r.is_ok());
                                }),
                            )
                            .unwrap();
                        store.flush();
                        assert!(rx.recv_timeout(WAIT).unwrap());
                        (position, e)
                    })
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    let mut positions: Vec<(LogPosition, Entry)> = threads
        .into_iter()
        .flat_map(|t| t.join().unwrap())
        .collect();
    positions.sort_by_key(|(p, _)| p.index);
    for (i, (p, e)) in positions.iter().enumerate() {
        assert_eq!(p.index, i as u64);
        let text = &store.audit_entries(p.index, p.index + 1).unwrap()[0].1;
        assert_eq!(text.as_bytes(), e.to_canonical().unwrap());
        assert_eq!(p.leaf_hash, merkle::leaf_hash(text.as_bytes()));
    }
    assert_eq!(assert_log_consistent(&store), 320);
    drop(store);
    // The edge is rebuilt from the stored nodes on reopen: appends continue the same tree.
    let store = SqliteStore::open(dir.path()).unwrap();
    let p = store.record_execution(&issuing("after"), &entry()).unwrap();
    assert_eq!(p.index, 320);
    assert_log_consistent(&store);
}

#[test]
fn a_rolled_back_commit_abandons_its_indexes_and_leaves_no_gap() {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(dir.path()).unwrap();
    store.record_execution(&issuing("a1"), &entry()).unwrap();
    let before = queue(&store, issuing("a2"), Commit::Deferred);
    let breaker = queue_rollback(&store);
    // Reserved before the failure, queued behind it: its index is abandoned.
    let after = queue(&store, issuing("a3"), Commit::Deferred);
    store.flush();
    assert!(!before.recv_timeout(WAIT).unwrap());
    assert!(!breaker.recv_timeout(WAIT).unwrap());
    assert!(!after.recv_timeout(WAIT).unwrap());
    assert!(store.audit_health().is_err());
    // The next write takes the next free index and the log is whole.
    let p = store.record_execution(&issuing("a4"), &entry()).unwrap();
    assert_eq!(p.index, 1);
    // One success right after a failure is not yet proof (`WriteHealth`): still reported.
    assert!(store.audit_health().is_err());
    assert_eq!(assert_log_consistent(&store), 2);
}

#[test]
fn a_write_failing_alone_leaves_a_void_entry_not_a_gap() {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(dir.path()).unwrap();
    let first = queue(&store, issuing("v1"), Commit::Deferred);
    let duplicate = queue(&store, issuing("v1"), Commit::Deferred);
    let last = queue(&store, issuing("v2"), Commit::Deferred);
    store.flush();
    assert!(first.recv_timeout(WAIT).unwrap());
    assert!(!duplicate.recv_timeout(WAIT).unwrap());
    assert!(last.recv_timeout(WAIT).unwrap());
    assert_eq!(assert_log_consistent(&store), 3);
    let void = Entry::parse(store.audit_entries(1, 2).unwrap()[0].1.as_bytes()).unwrap();
    assert_eq!(void.kind, EntryKind::Void);
}

#[test]
fn appends_by_another_process_are_followed_not_overwritten() {
    let dir = tempfile::tempdir().unwrap();
    let broker = SqliteStore::open(dir.path()).unwrap();
    broker.record_execution(&issuing("p1"), &entry()).unwrap();
    // `seb cert revoke` on the host: another store on the same database.
    let cli = SqliteStore::open(dir.path()).unwrap();
    cli.revoke(&serial(&[7]), Reason::KeyCompromise, SystemTime::now())
        .unwrap();
    drop(cli);
    // The broker's next write follows the other process's append (a write holding an index
    // reserved from the old edge fails once and is retried by synchronous callers).
    let p = broker.record_execution(&issuing("p2"), &entry()).unwrap();
    assert_eq!(p.index, 2);
    assert_eq!(assert_log_consistent(&broker), 3);
    let revoked = Entry::parse(broker.audit_entries(1, 2).unwrap()[0].1.as_bytes()).unwrap();
    assert_eq!(revoked.kind, EntryKind::CertificateRevoked);
    assert_eq!(revoked.cert.unwrap().serial, "07");
}

#[test]
fn a_log_that_takes_no_entry_even_as_a_void_is_reported_unhealthy() {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(dir.path()).unwrap();
    store.record_execution(&issuing("h1"), &entry()).unwrap();
    assert!(store.audit_health().is_ok());
    // A stale tree node where the next leaf goes (a truncation by someone with the database
    // file): every append, void entries included, fails its constraint while the commits
    // that carry them go through.
    let raw = Connection::open(dir.path().join("seb.db")).unwrap();
    raw.execute(
        "INSERT INTO audit_nodes (level, idx, hash) VALUES (0, 1, ?1)",
        rusqlite::params![vec![0u8; 32]],
    )
    .unwrap();
    drop(raw);
    assert!(store.record_execution(&issuing("h2"), &entry()).is_err());
    let why = store.audit_health().unwrap_err();
    assert!(why.contains("cannot be appended"), "{why}");
    // Writes without entries (the health probe's) commit meanwhile; past the hold that a
    // failure keeps, they still do not make the log healthy.
    let hold = crate::store::write_health::FAILURE_HOLD + Duration::from_millis(300);
    let until = Instant::now() + hold;
    while Instant::now() < until {
        store.check_writable().unwrap();
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(store.audit_health().is_err());
    // Once an entry is appended again, the log is healthy after the hold.
    let raw = Connection::open(dir.path().join("seb.db")).unwrap();
    raw.execute("DELETE FROM audit_nodes WHERE level = 0 AND idx = 1", [])
        .unwrap();
    drop(raw);
    store.record_execution(&issuing("h3"), &entry()).unwrap();
    std::thread::sleep(hold);
    store.check_writable().unwrap();
    assert!(store.audit_health().is_ok(), "{:?}", store.audit_health());
}

/// Steady load: two threads recording issuances without a pause (so a write is always queued
/// while the other's commit is answered), until `stop` is set. Returns the count of records
/// so far and the threads.
fn steady_writers(
    store: &Arc<SqliteStore>,
    stop: &Arc<AtomicBool>,
) -> (
    Arc<std::sync::atomic::AtomicU64>,
    Vec<std::thread::JoinHandle<()>>,
) {
    let written = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let workers = (0..2)
        .map(|w| {
            let (store, stop, written) = (store.clone(), stop.clone(), written.clone());
            std::thread::spawn(move || {
                let mut i = 0u64;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    store
                        .record_execution(&issuing(&format!("w{w}-{i}")), &entry())
                        .unwrap();
                    written.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    i += 1;
                }
            })
        })
        .collect();
    (written, workers)
}

/// A broker under steady load never pauses long enough for a background checkpoint to catch
/// up with the writer; the write-ahead log must still start over from its beginning, or it
/// grows by every commit for as long as the load lasts (and every commit also has to sync the
/// file's new size).
#[test]
fn the_write_ahead_log_starts_over_under_steady_load() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(SqliteStore::open(dir.path()).unwrap());
    // Each record adds at least one 4 KiB page to the log unless it starts over (about five
    // are measured); the load runs until that alone is three times the bound.
    const RECORDS: u64 = 3 * LOG_BOUND / 4096;
    let stop = Arc::new(AtomicBool::new(false));
    let (written, workers) = steady_writers(&store, &stop);
    let cap = std::time::Instant::now() + Duration::from_secs(60);
    while written.load(std::sync::atomic::Ordering::Relaxed) < RECORDS
        && std::time::Instant::now() < cap
    {
        std::thread::sleep(Duration::from_millis(20));
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for worker in workers {
        worker.join().unwrap();
    }
    let records = written.load(std::sync::atomic::Ordering::Relaxed);
    assert!(records >= RECORDS, "only {records} records in a minute");
    let wal = std::fs::metadata(dir.path().join("seb.db-wal"))
        .unwrap()
        .len();
    assert!(
        wal <= LOG_BOUND,
        "the log is {wal} bytes after {records} records under steady load (bound {LOG_BOUND})"
    );
    assert!(store.execution("w0-0").unwrap().is_some());
}

/// What the log may reach under steady load: the checkpointer's threshold (4 MiB) and what a
/// checkpoint interval of commits adds on top of it (about 13 MB at this test's 2,900 records
/// a second in a debug build; without the writer's part of the checkpoint, the log grew by
/// about 30 KB a record, to 732 MB by the end).
const LOG_BOUND: u64 = 32 << 20;
/// Frames in the store's write-ahead log now: `mxFrame` of the WAL-index header at the start
/// of `seb.db-shm` (SQLite's documented WAL-index format: a native-endian u32 at offset 16).
/// Read from the file, so that looking does not checkpoint.
fn log_frames(dir: &Path) -> u32 {
    let shm = std::fs::read(dir.join("seb.db-shm")).unwrap();
    u32::from_ne_bytes(shm[16..20].try_into().unwrap())
}

/// An operator's `.backup` holds an old snapshot for as long as it runs: no checkpoint can copy
/// past it, so the log cannot start over meanwhile. The writer is not handed a checkpoint
/// meanwhile (the backlog, once the reader lets go, would fall on the request path), and once
/// the reader lets go the log starts over again under the same steady load.
#[test]
fn a_reader_holding_an_old_snapshot_only_delays_the_start_over() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(SqliteStore::open(dir.path()).unwrap());
    let db = dir.path().join("seb.db");
    let pin = rusqlite::Connection::open(&db).unwrap();
    pin.execute_batch("BEGIN").unwrap();
    let _: i64 = pin
        .query_row("SELECT count(*) FROM executions", [], |row| row.get(0))
        .unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let (_, workers) = steady_writers(&store, &stop);
    // Long enough for several of the checkpointer's passes (every 200 ms) over a long log.
    let started = std::time::Instant::now();
    let deadline = started + Duration::from_secs(60);
    let mut pinned = log_frames(dir.path());
    while (pinned < 3000 || started.elapsed() < Duration::from_millis(1200))
        && std::time::Instant::now() < deadline
    {
        std::thread::sleep(Duration::from_millis(100));
        pinned = log_frames(dir.path());
    }
    assert!(
        pinned >= 3000,
        "the log did not grow past the pinned snapshot: {pinned}"
    );
    let writer_checkpoints = || {
        store
            .jobs
            .writer_checkpoints
            .load(std::sync::atomic::Ordering::Relaxed)
    };
    assert_eq!(
        writer_checkpoints(),
        0,
        "the writer was handed a checkpoint the pinned reader kept from getting anywhere"
    );
    pin.execute_batch("COMMIT").unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    let mut now = log_frames(dir.path());
    while now >= pinned && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
        now = log_frames(dir.path());
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for worker in workers {
        worker.join().unwrap();
    }
    assert!(
        now < pinned,
        "the log never started over after the reader let go: {now} frames, {pinned} while pinned"
    );
    assert!(
        writer_checkpoints() > 0,
        "the log started over without the writer's part"
    );
}

#[test]
fn a_log_cut_short_then_put_back_under_the_writer_is_followed_not_built_on() {
    let dir = tempfile::tempdir().unwrap();
    let broker = SqliteStore::open(dir.path()).unwrap();
    let append = |id: &str| {
        let mut e = entry();
        e.request_id = Some(id.to_owned());
        broker.record_execution(&issuing(id), &e).unwrap()
    };
    for i in 0..11 {
        append(&format!("k{i}"));
    }
    let root_11 = broker.audit_root(11).unwrap();
    // Someone with the database cuts the last entry (and its leaf) off, keeping a copy.
    let db = rusqlite::Connection::open(dir.path().join("seb.db")).unwrap();
    let (text, leaf): (String, Vec<u8>) = db
        .query_row(
            "SELECT e.entry, n.hash FROM audit_entries e, audit_nodes n
             WHERE e.idx = 10 AND n.level = 0 AND n.idx = 10",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    db.execute_batch(
        "DELETE FROM audit_entries WHERE idx = 10; DELETE FROM audit_nodes WHERE level = 0 AND idx = 10",
    )
    .unwrap();
    // The broker appends in its place: the log has 11 entries again, the last one its own.
    let p = append("in-its-place");
    assert_eq!(p.index, 10);
    // The original is put back over it: the same size the writer knows, other nodes.
    db.execute(
        "UPDATE audit_entries SET entry = ?1 WHERE idx = 10",
        rusqlite::params![text],
    )
    .unwrap();
    db.execute(
        "UPDATE audit_nodes SET hash = ?1 WHERE level = 0 AND idx = 10",
        rusqlite::params![leaf],
    )
    .unwrap();
    drop(db);
    assert_eq!(broker.audit_root(11).unwrap(), root_11);
    // The next appends build on the log as stored, not on the writer's memory of it.
    for i in 0..6 {
        append(&format!("after{i}"));
    }
    assert_eq!(assert_log_consistent(&broker), 17);
}
