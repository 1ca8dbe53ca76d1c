//! The same contract checked on both stores through the `Store` trait: the embedded SQLite
//! store and the PostgreSQL store of replicas (a throwaway cluster from `provision.sh
//! --postgres`). Single use, revocation inside redemption, approvals and their quorum, the
//! kill switches, revocations and CRL numbers, outcomes, and an audit log whose roots and
//! proofs match the RFC 6962 tree of its entries.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::time::{Duration, SystemTime};

use seb::approval::Decision;
use seb::audit::entry::{Entry, EntryKind};
use seb::audit::merkle;
use seb::ca::crl::Reason;
use seb::serial::Serial;
use seb::store::{
    ApprovalOutcome, ApprovalRecord, Commit, ExecutionRecord, ExecutionStatus, PendingApproval,
    RedeemOutcome, ReservedToken, RevokeOutcome, Store,
};

/// An executor certificate as the broker names it (thumbprint only here).
fn executor(thumbprint: impl Into<String>) -> seb::store::CertRef {
    seb::store::CertRef {
        thumbprint: thumbprint.into(),
        serial: String::new(),
        subject: String::new(),
    }
}

fn serial(n: u8) -> Serial {
    Serial::from_magnitude(&[n, 0x42]).unwrap()
}

fn now() -> SystemTime {
    // Whole seconds: the stores keep Unix seconds.
    seb::time::from_unix(seb::time::unix(SystemTime::now()))
}

fn record(
    id: &str,
    status: ExecutionStatus,
    jti: Option<&str>,
    serials: &[Serial],
) -> ExecutionRecord {
    ExecutionRecord {
        request_id: id.into(),
        agent: "agent-x5t".into(),
        agent_serials: serials.to_vec(),
        agent_subject: "CN=deploy-bot".into(),
        operation: "deploy.rollout".into(),
        resource: "prod/payments/api".into(),
        params: "{\"replicas\":3}".into(),
        request_digest: format!("digest-{id}"),
        status,
        deny_code: None,
        approvals_required: 0,
        jti: jti.map(str::to_owned),
        token: None,
        expires_at: Some(now() + Duration::from_secs(60)),
        created_at: now(),
    }
}

fn entry(kind: EntryKind, id: &str) -> Entry {
    let mut e = Entry::new(kind, seb::time::unix_millis(SystemTime::now()));
    e.request_id = Some(id.into());
    e
}

fn approval(id: &str, who: &str, decision: Decision) -> ApprovalRecord {
    ApprovalRecord {
        request_id: id.into(),
        approver: format!("{who}-x5t"),
        approver_subject: format!("CN={who}"),
        approver_key: format!("{who}-key"),
        decision,
        signature: "sig".into(),
        reason: Some("looked at it".into()),
        at: now(),
        // Each approver its own leaf under one shared intermediate.
        approver_serials: vec![serial(0x80 | who.as_bytes()[0]), serial(0x7f)],
        request_digest: format!("digest-{id}"),
    }
}

fn reserve(jti: &str) -> ReservedToken {
    ReservedToken {
        jti: jti.into(),
        expires_at: now() + Duration::from_secs(60),
    }
}

/// Waits for an asynchronous write's completion.
fn wait(f: impl FnOnce(seb::store::WriteDone)) {
    let (tx, rx) = std::sync::mpsc::channel();
    f(Box::new(move |r| {
        let _ = tx.send(r);
    }));
    rx.recv_timeout(Duration::from_secs(20)).unwrap().unwrap();
}

fn contract(store: &dyn Store) {
    // Single use, and the agent's revocation checked inside the redemption.
    store
        .record_execution(
            &record("r1", ExecutionStatus::Granted, Some("j1"), &[serial(1)]),
            &entry(EntryKind::ExecutionGranted, "r1"),
        )
        .unwrap();
    store
        .record_execution(
            &record(
                "r2",
                ExecutionStatus::Granted,
                Some("j2"),
                &[serial(2), serial(3)],
            ),
            &entry(EntryKind::ExecutionGranted, "r2"),
        )
        .unwrap();
    let at = now();
    assert_eq!(
        store.redeem("j1", &executor("exec-x5t"), at).unwrap(),
        RedeemOutcome::Redeemed
    );
    assert_eq!(
        store.redeem("j1", &executor("exec-x5t"), at).unwrap(),
        RedeemOutcome::AlreadyRedeemed { at }
    );
    assert_eq!(
        store.redeem("nope", &executor("exec-x5t"), at).unwrap(),
        RedeemOutcome::Unknown
    );
    assert_eq!(
        store.redeemed_by("j1").unwrap().as_deref(),
        Some("exec-x5t")
    );
    assert_eq!(store.request_of_token("j2").unwrap().as_deref(), Some("r2"));
    assert_eq!(
        store.revoke(&serial(3), Reason::KeyCompromise, at).unwrap(),
        RevokeOutcome::Revoked { known: false }
    );
    assert_eq!(
        store.redeem("j2", &executor("exec-x5t"), at).unwrap(),
        RedeemOutcome::AgentRevoked { serial: serial(3) }
    );
    assert_eq!(store.redeemed_by("j2").unwrap(), None);

    // An issuance completed: the token is on the record, which is granted.
    let issuing = record("r3", ExecutionStatus::Issuing, Some("j3"), &[serial(1)]);
    let (tx, rx) = std::sync::mpsc::channel();
    store.record_execution_positioned(
        issuing,
        &entry(EntryKind::ExecutionGranted, "r3"),
        Commit::Now,
        Box::new(move |p| {
            let _ = tx.send(p);
        }),
        Box::new(|r| r.unwrap()),
    );
    let placed = rx.recv_timeout(Duration::from_secs(20)).unwrap().unwrap();
    // The token is stored by a deferred write, which waits a little for company; on a store
    // with nothing else to do (its writer idle) it must still be written (within `wait`'s
    // 20 s, against a 50 ms deferral).
    std::thread::sleep(Duration::from_millis(300));
    wait(|done| store.complete_issuance_then("r3", Some("the.token".into()), done));
    let r3 = store.execution("r3").unwrap().unwrap();
    assert_eq!(r3.status, ExecutionStatus::Granted);
    assert_eq!(r3.token.as_deref(), Some("the.token"));
    assert_eq!(r3.agent_serials, vec![serial(1)]);

    // Approvals: duplicates count once, the quorum reserves the token id once, later
    // decisions find the request closed; a rejection closes another; expiry a third.
    let mut pending = record("p1", ExecutionStatus::PendingApproval, None, &[serial(1)]);
    pending.approvals_required = 2;
    let wait_for = PendingApproval {
        request_id: "p1".into(),
        group: "sre-leads".into(),
        token_ttl: Duration::from_secs(60),
        justification: Some("INC-1".into()),
        agent_key: "agent-key".into(),
        agent_not_after: now() + Duration::from_secs(3600),
        expires_at: now() + Duration::from_secs(600),
    };
    wait(|done| {
        store
            .record_pending_then(
                pending,
                wait_for.clone(),
                &entry(EntryKind::ExecutionPending, "p1"),
                done,
            )
            .unwrap();
    });
    assert_eq!(
        store.pending_approval("p1").unwrap(),
        Some(wait_for.clone())
    );
    let groups = vec!["sre-leads".to_owned()];
    assert_eq!(
        store
            .open_approval_requests(now(), &groups, None, 10)
            .unwrap()
            .len(),
        1
    );
    // Pages continue after the last request id of the page before.
    let after = |id: &str| {
        store
            .open_approval_requests(now(), &groups, Some(id), 10)
            .unwrap()
            .len()
    };
    assert_eq!((after("p0"), after("p1")), (1, 0));
    // Another group's approvers do not see it, and it takes none of their list's places.
    let others = vec!["dba".to_owned(), "sre".to_owned()];
    assert!(store
        .open_approval_requests(now(), &others, None, 10)
        .unwrap()
        .is_empty());
    assert!(store
        .open_approval_requests(now(), &[], None, 10)
        .unwrap()
        .is_empty());
    // Counted per agent key while open (`[approvals] max_open_per_agent`).
    assert_eq!(store.open_requests_of("agent-key", now()).unwrap(), 1);
    assert_eq!(store.open_requests_of("another-key", now()).unwrap(), 0);
    assert_eq!(
        store
            .open_requests_of("agent-key", now() + Duration::from_secs(601))
            .unwrap(),
        0,
        "an expired request is not open"
    );
    let first = store
        .add_approval(
            approval("p1", "alice", Decision::Approve),
            2,
            now(),
            reserve("jp1"),
        )
        .unwrap();
    assert!(
        matches!(first, ApprovalOutcome::Approved { quorum: false, .. }),
        "{first:?}"
    );
    let mut again = approval("p1", "alice-2", Decision::Approve);
    again.approver_key = "alice-key".into();
    assert_eq!(
        store.add_approval(again, 2, now(), reserve("jp1")).unwrap(),
        ApprovalOutcome::Duplicate
    );
    let second = store
        .add_approval(
            approval("p1", "bob", Decision::Approve),
            2,
            now(),
            reserve("jp1"),
        )
        .unwrap();
    let ApprovalOutcome::Approved {
        approvals,
        quorum: true,
    } = second
    else {
        panic!("{second:?}")
    };
    assert_eq!(approvals.len(), 2);
    let p1 = store.execution("p1").unwrap().unwrap();
    assert_eq!(
        (p1.status, p1.jti.as_deref()),
        (ExecutionStatus::Issuing, Some("jp1"))
    );
    assert_eq!(
        store
            .add_approval(
                approval("p1", "carol", Decision::Approve),
                2,
                now(),
                reserve("jp1x")
            )
            .unwrap(),
        ApprovalOutcome::Closed(ExecutionStatus::Issuing)
    );
    assert_eq!(store.approvals("p1").unwrap().len(), 2);
    // Three approvers of a two-approval request at once (three replicas, or three requests
    // on one broker): one of them completes the quorum and reserves the token, once.
    let mut r = record("p-race", ExecutionStatus::PendingApproval, None, &[]);
    r.approvals_required = 2;
    let mut w = wait_for.clone();
    w.request_id = "p-race".into();
    wait(|done| {
        store
            .record_pending_then(r, w, &entry(EntryKind::ExecutionPending, "p-race"), done)
            .unwrap();
    });
    let outcomes: Vec<ApprovalOutcome> = std::thread::scope(|scope| {
        let racers: Vec<_> = ["ann", "ben", "cat"]
            .map(|who| {
                scope.spawn(move || {
                    store
                        .add_approval(
                            approval("p-race", who, Decision::Approve),
                            2,
                            now(),
                            reserve("jp-race"),
                        )
                        .unwrap()
                })
            })
            .into_iter()
            .collect();
        racers.into_iter().map(|r| r.join().unwrap()).collect()
    });
    let quorums = outcomes
        .iter()
        .filter(|o| matches!(o, ApprovalOutcome::Approved { quorum: true, .. }))
        .count();
    assert_eq!(quorums, 1, "{outcomes:?}");
    assert_eq!(store.approvals("p-race").unwrap().len(), 2, "{outcomes:?}");
    for (id, expires) in [("p2", 600), ("p3", 0)] {
        let mut r = record(id, ExecutionStatus::PendingApproval, None, &[]);
        r.approvals_required = 2;
        let mut w = wait_for.clone();
        w.request_id = id.into();
        w.expires_at = now() + Duration::from_secs(expires);
        wait(|done| {
            store
                .record_pending_then(r, w, &entry(EntryKind::ExecutionPending, id), done)
                .unwrap();
        });
    }
    assert_eq!(
        store
            .add_approval(
                approval("p2", "alice", Decision::Reject),
                2,
                now(),
                reserve("jp2")
            )
            .unwrap(),
        ApprovalOutcome::Rejected
    );
    assert_eq!(
        store.execution("p2").unwrap().unwrap().status,
        ExecutionStatus::Rejected
    );
    let size = store.audit_size().unwrap();
    assert_eq!(
        store
            .expire_approval_requests(now() + Duration::from_secs(1))
            .unwrap(),
        vec!["p3".to_owned()]
    );
    // Closed in the commit that appended its entry: the next entry of the log is its expiry.
    assert_eq!(store.audit_size().unwrap(), size + 1);
    let (_, text) = store.audit_entries(size, size + 1).unwrap().remove(0);
    let logged: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(logged["kind"], "approval_expired", "{text}");
    assert_eq!(logged["request_id"], "p3", "{text}");
    // Nothing is left to expire, and nothing more is logged.
    assert!(store
        .expire_approval_requests(now() + Duration::from_secs(2))
        .unwrap()
        .is_empty());
    assert_eq!(store.audit_size().unwrap(), size + 1);
    assert_eq!(
        store.execution("p3").unwrap().unwrap().status,
        ExecutionStatus::Expired
    );
    assert!(store
        .open_approval_requests(now(), &groups, None, 10)
        .unwrap()
        .is_empty());
    assert_eq!(store.open_requests_of("agent-key", now()).unwrap(), 0);

    // An approval stops counting once a certificate of its approver's path is revoked: the
    // quorum needs two others, and only they are the approvals it reports.
    let mut r = record("p4", ExecutionStatus::PendingApproval, None, &[]);
    r.approvals_required = 2;
    let mut w = wait_for.clone();
    w.request_id = "p4".into();
    wait(|done| {
        store
            .record_pending_then(r, w, &entry(EntryKind::ExecutionPending, "p4"), done)
            .unwrap();
    });
    let decide = |who: &str| {
        store
            .add_approval(
                approval("p4", who, Decision::Approve),
                2,
                now(),
                reserve("jp4"),
            )
            .unwrap()
    };
    decide("dave");
    let dave = approval("p4", "dave", Decision::Approve).approver_serials[0].clone();
    store
        .revoke_issued_by(&dave, Some("seb-approvers"), Reason::KeyCompromise, now())
        .unwrap();
    let after = decide("erin");
    assert!(
        matches!(&after, ApprovalOutcome::Approved { quorum: false, approvals } if approvals.len() == 1),
        "{after:?}"
    );
    // Dave again, with a new certificate: his revoked decision does not count, so this one
    // is no duplicate, and it completes the quorum.
    let mut renewed = approval("p4", "dave", Decision::Approve);
    renewed.approver = "dave-renewed-x5t".into();
    renewed.approver_serials[0] = serial(0x11);
    let ApprovalOutcome::Approved {
        approvals,
        quorum: true,
    } = store
        .add_approval(renewed, 2, now(), reserve("jp4"))
        .unwrap()
    else {
        panic!("dave's renewed approval did not complete the quorum")
    };
    let names: Vec<&str> = approvals
        .iter()
        .map(|a| a.approver_subject.as_str())
        .collect();
    assert_eq!(names, ["CN=erin", "CN=dave"]);
    assert_eq!(store.approvals("p4").unwrap().len(), 3);
    // Read back with the request's own digest, which each approval signed.
    assert!(store
        .approvals("p4")
        .unwrap()
        .iter()
        .all(|a| a.request_digest == "digest-p4"));
    assert_eq!(
        store.approvals("p4").unwrap()[0].approver_serials,
        approval("p4", "dave", Decision::Approve).approver_serials
    );

    // Revocations, their generation, CRL numbers.
    let generation = store.revocation_generation().unwrap();
    assert_eq!(
        store.revoke(&serial(3), Reason::Superseded, at).unwrap(),
        RevokeOutcome::AlreadyRevoked
    );
    assert_eq!(store.revocation_generation().unwrap(), generation);
    store
        .revoke_issued_by(&serial(4), Some("seb-int"), Reason::Superseded, at)
        .unwrap();
    assert!(store.revocation_generation().unwrap() > generation);
    assert_eq!(
        store.revocations_issued_by("seb-int", false).unwrap().len(),
        1
    );
    assert_eq!(
        store.revocations_issued_by("seb-root", true).unwrap().len(),
        1
    );
    assert_eq!(
        store.revocation(&serial(3)).unwrap().unwrap().reason,
        Reason::KeyCompromise
    );
    assert_eq!(
        store
            .revoked_among(&[serial(1), serial(3), serial(4)])
            .unwrap(),
        vec![serial(3), serial(4)]
    );
    let n = store.next_crl_number().unwrap();
    assert_eq!(store.next_crl_number().unwrap(), n + 1);

    // Kill switches.
    assert_eq!(store.policy_state().unwrap().epoch, None);
    assert_eq!(store.bump_epoch(5, now()).unwrap(), 6);
    assert_eq!(store.bump_epoch(0, now()).unwrap(), 7);
    store.set_frozen(true, "drill", now()).unwrap();
    let state = store.policy_state().unwrap();
    assert_eq!((state.epoch, state.frozen), (Some(7), Some(true)));

    // Outcomes once per token.
    assert!(store
        .record_outcome("j1", "r1", &executor("exec-x5t"), "{\"receipt\":1}", now())
        .unwrap());
    assert!(!store
        .record_outcome("j1", "r1", &executor("exec-x5t"), "{\"receipt\":2}", now())
        .unwrap());
    assert_eq!(
        store.outcome("j1").unwrap().as_deref(),
        Some("{\"receipt\":1}")
    );
    store
        .record_event("attestation_failed", "quote mismatch", now())
        .unwrap();
    assert_eq!(store.events("attestation_failed").unwrap().len(), 1);

    // The audit log: every audited write is an entry; roots and proofs are those of the
    // RFC 6962 tree of the entries, computed here from scratch.
    let size = store.audit_size().unwrap();
    assert!(size >= 20, "{size} entries");
    let entries = store.audit_entries(0, size).unwrap();
    assert_eq!(entries.len() as u64, size);
    let leaves: Vec<_> = entries
        .iter()
        .enumerate()
        .map(|(i, (index, text))| {
            assert_eq!(*index, i as u64);
            merkle::leaf_hash(text.as_bytes())
        })
        .collect();
    assert_eq!(leaves[placed.index as usize], placed.leaf_hash);
    // The stored leaves the tree was built from are the entries' hashes.
    let stored: Vec<(u64, merkle::Hash)> = leaves
        .iter()
        .enumerate()
        .map(|(i, h)| (i as u64, *h))
        .collect();
    assert_eq!(store.audit_leaf_hashes(0, size).unwrap(), stored);
    assert_eq!(store.audit_leaf_hashes(2, 3).unwrap(), stored[2..3]);
    let root = store.audit_root(size).unwrap();
    assert_eq!(root, merkle::root_of(&leaves));
    for index in [0, size / 2, size - 1] {
        let proof = store.audit_inclusion_proof(index, size).unwrap();
        merkle::verify_inclusion(index, size, &leaves[index as usize], &proof, &root).unwrap();
    }
    let old = size / 3;
    let old_root = store.audit_root(old).unwrap();
    assert_eq!(old_root, merkle::root_of(&leaves[..old as usize]));
    let proof = store.audit_consistency_proof(old, size).unwrap();
    merkle::verify_consistency(old, size, &proof, &old_root, &root).unwrap();
    store.check_writable().unwrap();
    store.audit_health().unwrap();
    // A replay stays a replay once the agent is revoked (what a SIEM alerts on), not a
    // revocation.
    let at = now();
    store
        .record_execution(
            &record(
                "r-replay",
                ExecutionStatus::Granted,
                Some("j-replay"),
                &[serial(99)],
            ),
            &entry(EntryKind::ExecutionGranted, "r-replay"),
        )
        .unwrap();
    assert_eq!(
        store.redeem("j-replay", &executor("exec-x5t"), at).unwrap(),
        RedeemOutcome::Redeemed
    );
    store
        .revoke(&serial(99), Reason::KeyCompromise, at)
        .unwrap();
    assert_eq!(
        store.redeem("j-replay", &executor("exec-x5t"), at).unwrap(),
        RedeemOutcome::AlreadyRedeemed { at }
    );
}

#[test]
fn the_sqlite_store_keeps_the_contract() {
    let dir = tempfile::tempdir().unwrap();
    let store = seb::store::sqlite::SqliteStore::open(dir.path()).unwrap();
    contract(&store);
}

#[test]
fn the_postgres_store_keeps_the_contract() {
    let hsm = common::Hsm::initialised_postgres();
    let config = seb::config::Config::load(&hsm.config()).unwrap();
    let seb::config::StoreConfig::Postgres(pg) = &config.store else {
        panic!("provision.sh --postgres wrote no [store]")
    };
    let store = seb::store::postgres::PgStore::open(pg).unwrap();
    contract(&store);
    // A second store on the same database (another replica) sees the same state and log.
    let other = seb::store::postgres::PgStore::open(pg).unwrap();
    assert_eq!(other.audit_size().unwrap(), store.audit_size().unwrap());
    assert_eq!(
        other.redeem("j1", &executor("exec-x5t"), now()).unwrap(),
        store.redeem("j1", &executor("exec-x5t"), now()).unwrap()
    );
    other.append_audit(&entry(EntryKind::Frozen, "x")).unwrap();
    let size = store.audit_size().unwrap();
    let position = store
        .append_audit(&entry(EntryKind::Unfrozen, "y"))
        .unwrap();
    assert_eq!(
        position.index, size,
        "the second replica follows the first's appends"
    );

    // Replicas count each other on the database's clock: one whose own clock runs an hour
    // ahead (or behind) still counts the other, so neither hands out the whole rate.
    let hour = std::time::Duration::from_secs(3600);
    assert_eq!(other.live_replicas("replica-b", now()).unwrap(), 1);
    assert_eq!(store.live_replicas("replica-a", now() + hour).unwrap(), 2);
    assert_eq!(other.live_replicas("replica-b", now() - hour).unwrap(), 2);
}

/// The stored tree's root at the log's size, against the root of its entries recomputed.
fn assert_tree_matches_entries(store: &dyn Store) {
    let size = store.audit_size().unwrap();
    let leaves: Vec<_> = store
        .audit_entries(0, size)
        .unwrap()
        .iter()
        .map(|(_, text)| merkle::leaf_hash(text.as_bytes()))
        .collect();
    assert_eq!(leaves.len() as u64, size);
    assert_eq!(store.audit_root(size).unwrap(), merkle::root_of(&leaves));
}

#[test]
fn a_replica_whose_last_commit_was_lost_follows_the_log_as_stored() {
    let hsm = common::Hsm::initialised_postgres();
    let config = seb::config::Config::load(&hsm.config()).unwrap();
    let seb::config::StoreConfig::Postgres(pg) = &config.store else {
        panic!("provision.sh --postgres wrote no [store]")
    };
    let first = seb::store::postgres::PgStore::open(pg).unwrap();
    for i in 0..11 {
        first
            .append_audit(&entry(EntryKind::Frozen, &format!("f{i}")))
            .unwrap();
    }
    let size = first.audit_size().unwrap();
    // A promoted standby that lost the first replica's last commit: its entry and leaf gone.
    let password =
        std::fs::read_to_string(hsm.config().parent().unwrap().join(&pg.password_file)).unwrap();
    let out = std::process::Command::new("psql")
        .arg(&pg.url)
        .args(["-v", "ON_ERROR_STOP=1", "-c"])
        .arg(format!(
            "DELETE FROM audit_entries WHERE idx = {last}; \
             DELETE FROM audit_nodes WHERE level = 0 AND idx = {last};",
            last = size - 1
        ))
        .env("PGPASSWORD", password.trim())
        .output()
        .unwrap();
    common::assert_success(&out, "psql");
    // Another replica makes the log as long again, with an entry of its own.
    let second = seb::store::postgres::PgStore::open(pg).unwrap();
    second
        .append_audit(&entry(EntryKind::Unfrozen, "second"))
        .unwrap();
    assert_eq!(second.audit_size().unwrap(), size);
    // The first replica's next appends build on the stored log, not on its memory of it.
    for i in 0..6 {
        first
            .append_audit(&entry(EntryKind::Frozen, &format!("g{i}")))
            .unwrap();
    }
    assert_eq!(first.audit_size().unwrap(), size + 6);
    assert_tree_matches_entries(&first);
}
