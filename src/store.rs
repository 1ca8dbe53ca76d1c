//! Durable broker state behind a small trait: issued certificates, revocations, CRL numbers
//! (and, with the HTTPS broker, redeemed token ids).
//!
//! The embedded default is SQLite in the state directory ([`sqlite::SqliteStore`]); a shared
//! database for several broker replicas can implement the same trait. Every write is durable
//! (committed and synced) before the call returns. Serials are [`Serial`]s, so every
//! implementation stores and compares the one canonical form.

/// The executor certificate a redemption or outcome names (its thumbprint is what the store
/// keeps; all three fields go into the audit entry).
pub use crate::audit::entry::CertRef;
use std::time::{Duration, SystemTime};

use crate::audit::entry::Entry;
use crate::audit::merkle::Hash;
use crate::ca::crl::{Reason, Revocation};
use crate::serial::Serial;

#[cfg(feature = "broker")]
pub(crate) mod entries;
#[cfg(feature = "broker")]
pub mod postgres;
#[cfg(feature = "broker")]
pub mod sqlite;

#[cfg(feature = "broker")]
pub(crate) use write_health::WriteHealth;

#[cfg(feature = "broker")]
pub(crate) mod write_health {
    use std::sync::Mutex;
    use std::time::{Duration, Instant};

    /// How long a failed commit keeps the audit check failing after later commits succeed. On
    /// a nearly full disk, small writes (a health probe, an `issuance_failed` entry) may still
    /// fit while every grant's larger write fails: a success right after a failure proves
    /// little, so the check turns good only once no write has failed for this long. A write
    /// failing again restarts it.
    pub(crate) const FAILURE_HOLD: Duration = Duration::from_secs(5);

    /// Whether the audit log's writes succeed, as `/healthz` reports it (`checks.audit`): set
    /// by the store's writer after every commit, read by the health check.
    #[derive(Debug, Default)]
    pub(crate) struct WriteHealth(Mutex<Option<Failure>>);

    /// The last failed commit, and whether one has succeeded since.
    #[derive(Debug)]
    struct Failure {
        why: String,
        at: Instant,
        recovered: bool,
    }

    impl WriteHealth {
        /// `Err(why)` until a commit has succeeded after the last failed one and
        /// [`FAILURE_HOLD`] has passed since that failure.
        pub(crate) fn get(&self) -> Result<(), String> {
            match &*self.0.lock().unwrap_or_else(|p| p.into_inner()) {
                Some(f) if !f.recovered || f.at.elapsed() < FAILURE_HOLD => Err(f.why.clone()),
                _ => Ok(()),
            }
        }

        /// A commit failed.
        pub(crate) fn failed(&self, why: &str) {
            *self.0.lock().unwrap_or_else(|p| p.into_inner()) = Some(Failure {
                why: format!("the audit log cannot be written: {why}"),
                at: Instant::now(),
                recovered: false,
            });
        }

        /// A commit succeeded.
        pub(crate) fn succeeded(&self) {
            if let Some(f) = self.0.lock().unwrap_or_else(|p| p.into_inner()).as_mut() {
                f.recovered = true;
            }
        }
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn a_success_right_after_a_failure_does_not_clear_it() {
            let health = WriteHealth::default();
            assert!(health.get().is_ok());
            health.failed("disk full");
            assert!(health.get().unwrap_err().contains("disk full"));
            health.succeeded();
            assert!(health.get().is_err(), "held for FAILURE_HOLD");
            // Once the hold has passed, the success counts; without a success it never does.
            let at = Instant::now()
                .checked_sub(FAILURE_HOLD * 2)
                .expect("the monotonic clock is past the hold");
            health.0.lock().unwrap().as_mut().unwrap().at = at;
            assert!(health.get().is_ok());
            health.failed("disk full");
            health.0.lock().unwrap().as_mut().unwrap().at = at;
            assert!(health.get().is_err(), "no commit has succeeded since");
        }
    }
}

/// How recently a replica must have announced itself to count as live
/// ([`Store::live_replicas`]).
pub const REPLICA_LIVENESS: Duration = Duration::from_secs(5);

/// Store failures. The message names the operation; the source keeps the detail for logs.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The store could not be opened.
    #[error("cannot open the store at {path}")]
    Open {
        /// Where.
        path: String,
        /// Why.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// A read or write failed.
    #[error("store {operation} failed")]
    Io {
        /// What we were doing.
        operation: &'static str,
        /// Why.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The stored data does not make sense (hand-edited or corrupted).
    #[error("store data is corrupt: {0}")]
    Corrupt(String),
}

/// How many times in all an audited write is made when its reserved log index keeps being
/// taken by another process ([`StoreError::is_index_taken`]).
pub const INDEX_TAKEN_ATTEMPTS: u32 = 3;

impl StoreError {
    /// Whether a write failed only because the log index reserved for it was taken (another
    /// process appended first, or an earlier commit failed): nothing of it was stored, and
    /// making it again takes the next index.
    #[cfg(feature = "broker")]
    pub fn is_index_taken(&self) -> bool {
        sqlite::is_stale(self)
    }
}

/// A certificate the CA issued, as recorded for the security team's inventory.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IssuedCertificate {
    /// Serial number (canonical).
    pub serial: Serial,
    /// Subject (RFC 4514).
    pub subject: String,
    /// Role name.
    pub role: String,
    /// Label of the issuing key.
    pub issuer_label: String,
    /// notAfter.
    pub not_after: SystemTime,
    /// PEM of the certificate.
    pub pem: String,
}

impl IssuedCertificate {
    /// The record of `cert`, issued under the key labelled `issuer_label` with `role`.
    pub fn of(
        cert: &crate::cert::Certificate,
        role: impl Into<String>,
        issuer_label: impl Into<String>,
    ) -> Result<Self, StoreError> {
        let bad =
            |e: &dyn std::fmt::Display| StoreError::Corrupt(format!("issued certificate: {e}"));
        Ok(Self {
            serial: Serial::of(cert).map_err(|e| bad(&e))?,
            subject: cert.subject_string(),
            role: role.into(),
            issuer_label: issuer_label.into(),
            not_after: cert.not_after(),
            pem: cert.to_pem_string().map_err(|e| bad(&e))?,
        })
    }
}

/// What `revoke` did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RevokeOutcome {
    /// Newly revoked; `known` says whether this CA's records hold the serial.
    Revoked {
        /// The serial was issued by this broker.
        known: bool,
    },
    /// It was revoked before; nothing changed.
    AlreadyRevoked,
}

/// Status of an execution request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExecutionStatus {
    /// A token was issued.
    Granted,
    /// Waiting for approvals.
    PendingApproval,
    /// Refused.
    Denied,
    /// Granted, and the token id reserved while the device signs. It stays so if the broker
    /// stopped at that moment (the token may have left).
    Issuing,
    /// Granted, but no token left the broker (the device failed, or the client went away
    /// before the token was ready).
    Failed,
    /// An approver rejected the request: no token.
    Rejected,
    /// Nobody approved the request in time: no token.
    Expired,
}

impl ExecutionStatus {
    /// The API spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            ExecutionStatus::Granted => "granted",
            ExecutionStatus::PendingApproval => "pending_approval",
            ExecutionStatus::Denied => "denied",
            ExecutionStatus::Issuing => "issuing",
            ExecutionStatus::Failed => "failed",
            ExecutionStatus::Rejected => "rejected",
            ExecutionStatus::Expired => "expired",
        }
    }

    /// Parses the API spelling.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "granted" => Some(ExecutionStatus::Granted),
            "pending_approval" => Some(ExecutionStatus::PendingApproval),
            "denied" => Some(ExecutionStatus::Denied),
            "issuing" => Some(ExecutionStatus::Issuing),
            "failed" => Some(ExecutionStatus::Failed),
            "rejected" => Some(ExecutionStatus::Rejected),
            "expired" => Some(ExecutionStatus::Expired),
            _ => None,
        }
    }
}

/// One execution request as the broker recorded it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExecutionRecord {
    /// Request id: a millisecond time prefix and 128 random bits (base64url).
    pub request_id: String,
    /// SHA-256 thumbprint of the agent certificate (base64url).
    pub agent: String,
    /// Serials of the agent's verified path, leaf first: redemption refuses the token once
    /// any of them is revoked. Empty in records written before seb kept them.
    pub agent_serials: Vec<Serial>,
    /// Agent subject.
    pub agent_subject: String,
    /// Operation.
    pub operation: String,
    /// Resource.
    pub resource: String,
    /// JCS of the params.
    pub params: String,
    /// base64url request digest.
    pub request_digest: String,
    /// Status.
    pub status: ExecutionStatus,
    /// Deny code, for denied requests.
    pub deny_code: Option<String>,
    /// Approvals the grant requires.
    pub approvals_required: u32,
    /// The token id, for granted requests.
    pub jti: Option<String>,
    /// The token, for granted requests (bound to the agent certificate by `cnf`).
    pub token: Option<String>,
    /// Token or request expiry.
    pub expires_at: Option<SystemTime>,
    /// When the request arrived.
    pub created_at: SystemTime,
}

/// What the broker keeps about a request that waits for approvers, beside its
/// [`ExecutionRecord`]: what it needs to judge approvals and, once enough arrive, to issue
/// the token without the agent being connected.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PendingApproval {
    /// The request.
    pub request_id: String,
    /// The approver group the grant names.
    pub group: String,
    /// Lifetime of the token once approved (the grant's and broker's caps at request time;
    /// capped again by the agent certificate's validity at issuance).
    pub token_ttl: Duration,
    /// The agent's justification, shown to approvers.
    pub justification: Option<String>,
    /// base64url SHA-256 of the agent's SubjectPublicKeyInfo (an approver with the same key
    /// is the requester).
    pub agent_key: String,
    /// The agent certificate's notAfter.
    pub agent_not_after: SystemTime,
    /// When the request expires unless decided.
    pub expires_at: SystemTime,
}

/// One approver's decision on a request, as recorded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ApprovalRecord {
    /// The request.
    pub request_id: String,
    /// base64url SHA-256 of the approver's certificate.
    pub approver: String,
    /// The approver certificate's subject.
    pub approver_subject: String,
    /// base64url SHA-256 of the approver's SubjectPublicKeyInfo.
    pub approver_key: String,
    /// Approve or reject.
    pub decision: crate::approval::Decision,
    /// base64url DER signature over the approval message.
    pub signature: String,
    /// The approver's reason, if given.
    pub reason: Option<String>,
    /// When it was recorded.
    pub at: SystemTime,
    /// Serials of the approver's certificate path (leaf first) as it approved; empty for an
    /// approval recorded before seb kept them. An approval counts towards a quorum only while
    /// none of these is revoked.
    pub approver_serials: Vec<crate::serial::Serial>,
    /// The request's canonical digest (base64url SHA-384), which the approval signs; named in
    /// the decision's audit entry. Read back from the request's own record.
    pub request_digest: String,
}

impl ApprovalRecord {
    /// Whether `other` was made by the same approver: the same certificate, the same key, or
    /// the same subject as names are matched ([`crate::cert::same_name`]: attribute order,
    /// string types, case and insignificant spaces do not make two people). Such an approver
    /// counts once.
    pub fn same_approver(&self, other: &ApprovalRecord) -> bool {
        self.made_by(
            &other.approver,
            &other.approver_key,
            &other.approver_subject,
        )
    }

    /// Whether this approval was made by the approver with certificate thumbprint
    /// `certificate`, key thumbprint `key` or subject `subject` ([`Self::same_approver`]).
    pub fn made_by(&self, certificate: &str, key: &str, subject: &str) -> bool {
        self.approver == certificate
            || self.approver_key == key
            || crate::cert::same_name(&self.approver_subject, subject)
    }
}

/// The token id and expiry reserved for a request in case an approval completes its quorum,
/// so that the id is durable in the same commit as the approval that completes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReservedToken {
    /// Token id.
    pub jti: String,
    /// Token expiry.
    pub expires_at: SystemTime,
}

/// What [`Store::add_approval`] did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ApprovalOutcome {
    /// No request with that id waits for approvals.
    Unknown,
    /// The request is no longer open (granted, rejected, expired...): nothing recorded.
    Closed(ExecutionStatus),
    /// The request expired before this approval; it is now marked expired.
    Expired,
    /// This approver (same certificate, key or subject) decided before; nothing recorded.
    Duplicate,
    /// Recorded a rejection; the request is closed.
    Rejected,
    /// Recorded an approval. With `quorum` the request is now `issuing` with the reserved
    /// token id, and `approvals` are the approvals that make it (oldest first).
    Approved {
        /// Every approval so far, oldest first.
        approvals: Vec<ApprovalRecord>,
        /// Whether this approval completed the quorum.
        quorum: bool,
    },
}

/// What `redeem` found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RedeemOutcome {
    /// First redemption: the executor may act.
    Redeemed,
    /// Redeemed before (at that time); the executor must not act.
    AlreadyRedeemed {
        /// When it was first redeemed.
        at: SystemTime,
    },
    /// No token with that id was issued by this broker's store.
    Unknown,
    /// A certificate of the path of the agent the token was issued to is revoked; the token
    /// was not redeemed.
    AgentRevoked {
        /// The revoked serial.
        serial: Serial,
    },
    /// The token's record predates seb keeping the agent's serials, so the agent's revocation
    /// cannot be checked; the token was not redeemed (fail closed).
    AgentUnrecorded,
}

/// The kill switches stored by `seb epoch bump` and `seb freeze` / `unfreeze`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PolicyState {
    /// The stored policy epoch, if ever bumped.
    pub epoch: Option<u64>,
    /// Whether issuance is frozen, if ever set.
    pub frozen: Option<bool>,
}

/// How soon an asynchronous write must become durable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Commit {
    /// In the next commit, which starts as soon as the store can.
    Now,
    /// In a commit someone else starts (an urgent write or [`Store::flush`]), or after a short
    /// bound: for writes whose caller has other work to wait for first.
    Deferred,
}

/// Called once an asynchronous write is durable (`Ok`) or has failed.
pub type WriteDone = Box<dyn FnOnce(Result<(), StoreError>) + Send>;

/// Called once an audited write has its place in the log (or has failed before it had one).
pub type Positioned = Box<dyn FnOnce(Result<LogPosition, StoreError>) + Send>;

/// Where an entry sits in the audit log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LogPosition {
    /// Leaf index.
    pub index: u64,
    /// RFC 6962 leaf hash of the entry.
    pub leaf_hash: Hash,
}

/// Most audit entries one read returns.
pub const MAX_AUDIT_PAGE: u64 = 1000;

/// The broker's durable state.
pub trait Store: Send + Sync {
    /// Records an execution request and, for a granted one, its token id (single-use state).
    /// Durable when it returns; many concurrent calls share one commit.
    fn record_execution(
        &self,
        record: &ExecutionRecord,
        entry: &Entry,
    ) -> Result<LogPosition, StoreError>;
    /// Records an execution request together with its audit entry, in one write of one
    /// commit: both are durable or neither is. Returns at once with the entry's place in the
    /// log (reserved now, so a token can name it before it is durable) and calls `done` (on a
    /// store thread) once the write is durable or has failed; a token may leave only after
    /// `done(Ok)`.
    fn record_execution_then(
        &self,
        record: ExecutionRecord,
        entry: &Entry,
        commit: Commit,
        done: WriteDone,
    ) -> Result<LogPosition, StoreError>;
    /// Like [`Store::record_execution_then`], but hands the entry's place to `positioned`
    /// rather than returning it, so the caller need not hold its thread until it is known: a
    /// store shared by replicas knows it only once its batch holds the log's lock. `positioned`
    /// is called exactly once, with the error if the write fails before it has a place; `done`
    /// is called as for `record_execution_then`.
    fn record_execution_positioned(
        &self,
        record: ExecutionRecord,
        entry: &Entry,
        commit: Commit,
        positioned: Positioned,
        done: WriteDone,
    ) {
        positioned(self.record_execution_then(record, entry, commit, done));
    }
    /// Starts a commit of every [`Commit::Deferred`] write queued so far.
    fn flush(&self) {}
    /// Completes an `issuing` execution: stores `token` and marks it `granted`, or with `None`
    /// marks it `failed` (no token left the broker). Queued
    /// behind every earlier write, so a later [`Store::execution`] sees it; `done` is called
    /// once it is durable or has failed.
    fn complete_issuance_then(&self, request_id: &str, token: Option<String>, done: WriteDone);
    /// The execution request with this id, reflecting every write made before the call.
    fn execution(&self, request_id: &str) -> Result<Option<ExecutionRecord>, StoreError>;
    /// The id of the request token `jti` was issued for, if this store issued it.
    fn request_of_token(&self, jti: &str) -> Result<Option<String>, StoreError>;
    /// Marks token `jti` redeemed by `executor`, exactly once across restarts and replicas
    /// sharing the store, unless a certificate of the issuing agent's path is revoked (checked
    /// in the same transaction as the redemption).
    fn redeem(
        &self,
        jti: &str,
        executor: &CertRef,
        at: SystemTime,
    ) -> Result<RedeemOutcome, StoreError>;
    /// Records a request that waits for approvals: its execution record (status
    /// `pending_approval`) and what approvals are judged against, in one commit.
    /// The request's `execution_pending` audit `entry` commits with them (its place is
    /// returned at once, like [`Store::record_execution_then`]).
    fn record_pending_then(
        &self,
        record: ExecutionRecord,
        pending: PendingApproval,
        entry: &Entry,
        done: WriteDone,
    ) -> Result<LogPosition, StoreError>;
    /// Like [`Store::record_pending_then`], handing the entry's place to `positioned` (see
    /// [`Store::record_execution_positioned`]) so the caller need not hold its thread.
    fn record_pending_positioned(
        &self,
        record: ExecutionRecord,
        pending: PendingApproval,
        entry: &Entry,
        positioned: Positioned,
        done: WriteDone,
    ) {
        positioned(self.record_pending_then(record, pending, entry, done));
    }
    /// Appends `entry` to the audit log without holding the caller's thread; `done` gets its
    /// place once it is durable, or the failure.
    fn append_audit_then(
        &self,
        entry: &Entry,
        done: Box<dyn FnOnce(Result<LogPosition, StoreError>) + Send>,
    );
    /// What is kept about a request that needed approvals (open or not).
    fn pending_approval(&self, request_id: &str) -> Result<Option<PendingApproval>, StoreError>;
    /// The decisions recorded on a request, oldest first.
    fn approvals(&self, request_id: &str) -> Result<Vec<ApprovalRecord>, StoreError>;
    /// Requests open for approval at `now` (not decided, not expired) by one of `groups`,
    /// oldest first, after the request id `after` if given (a page's last), at most `limit`.
    /// The groups are chosen before the limit, so requests of other groups cannot crowd an
    /// approver's out of the list.
    fn open_approval_requests(
        &self,
        now: SystemTime,
        groups: &[String],
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<(ExecutionRecord, PendingApproval)>, StoreError>;
    /// How many requests of the agent key `agent_key` are open for decision at `now`.
    fn open_requests_of(&self, agent_key: &str, now: SystemTime) -> Result<usize, StoreError>;
    /// Records one approver's decision, atomically with the checks that the request is still
    /// open at `now` and that this approver (certificate, key or subject) has not decided
    /// before. A rejection closes the request. An approval that completes the quorum marks the
    /// request `issuing` with `reserve`'s token id in the same commit.
    fn add_approval(
        &self,
        approval: ApprovalRecord,
        required: u32,
        now: SystemTime,
        reserve: ReservedToken,
    ) -> Result<ApprovalOutcome, StoreError>;
    /// Marks every request still waiting for approvals at `now` past its expiry `expired`;
    /// returns their ids.
    fn expire_approval_requests(&self, now: SystemTime) -> Result<Vec<String>, StoreError>;
    /// The executor certificate (base64url SHA-256 thumbprint) that redeemed token `jti`, if
    /// it was redeemed.
    fn redeemed_by(&self, jti: &str) -> Result<Option<String>, StoreError>;
    /// Records the outcome an executor reported for token `jti` (its signed receipt, as JSON)
    /// with an `outcome_reported` audit entry holding the receipt, in one commit. Once per token: returns `false`, and
    /// records nothing, when an outcome for `jti` was recorded before.
    fn record_outcome(
        &self,
        jti: &str,
        request_id: &str,
        executor: &CertRef,
        receipt_json: &str,
        at: SystemTime,
    ) -> Result<bool, StoreError>;
    /// The receipt (JSON) recorded for token `jti`, if any.
    fn outcome(&self, jti: &str) -> Result<Option<String>, StoreError>;
    /// The kill switches as the security team last set them on this host (`seb epoch bump`,
    /// `seb freeze`); `None` where they never did, and the configuration's value applies.
    fn policy_state(&self) -> Result<PolicyState, StoreError>;
    /// Raises the stored policy epoch to one more than the larger of itself and `floor` (the
    /// configured epoch), appends an `epoch_changed` audit entry in the same commit, and
    /// returns the new epoch.
    fn bump_epoch(&self, floor: u64, at: SystemTime) -> Result<u64, StoreError>;
    /// Freezes (or unfreezes) issuance and appends a `frozen` (`unfrozen`) audit entry with
    /// `reason` in the same commit.
    fn set_frozen(&self, frozen: bool, reason: &str, at: SystemTime) -> Result<(), StoreError>;
    /// A write-and-rollback round trip, for readiness checks.
    fn check_writable(&self) -> Result<(), StoreError>;
    /// Durably records a broker event in the audit log (`kind` is an entry kind such as
    /// `attestation_failed`; `detail` is for people and never holds secrets).
    fn record_event(&self, kind: &str, detail: &str, at: SystemTime) -> Result<(), StoreError>;
    /// Every audit entry of `kind`, oldest first, as (time, detail).
    fn events(&self, kind: &str) -> Result<Vec<(SystemTime, String)>, StoreError>;
    /// Durably appends `entry` to the audit log; returns its place.
    fn append_audit(&self, entry: &Entry) -> Result<LogPosition, StoreError>;
    /// Number of durable audit entries.
    fn audit_size(&self) -> Result<u64, StoreError>;
    /// Audit entries `start..end` (at most [`MAX_AUDIT_PAGE`]) as (index, canonical JSON).
    fn audit_entries(&self, start: u64, end: u64) -> Result<Vec<(u64, String)>, StoreError>;
    /// The stored leaf hashes (level-0 nodes of the tree) of entries `start..end` (at most
    /// [`MAX_AUDIT_PAGE`]): what the tree was built from, served beside each entry so that an
    /// entry edited in place is named by a verifier (its text no longer hashes to its leaf).
    fn audit_leaf_hashes(&self, start: u64, end: u64) -> Result<Vec<(u64, Hash)>, StoreError>;
    /// The root hash of the first `size` entries.
    fn audit_root(&self, size: u64) -> Result<Hash, StoreError>;
    /// The inclusion proof of entry `index` in the tree of `size` entries.
    fn audit_inclusion_proof(&self, index: u64, size: u64) -> Result<Vec<Hash>, StoreError>;
    /// The consistency proof between the trees of `old` and `new` entries.
    fn audit_consistency_proof(&self, old: u64, new: u64) -> Result<Vec<Hash>, StoreError>;
    /// `Err(why)` while the audit log cannot be written (the last commit failed).
    fn audit_health(&self) -> Result<(), String>;
    /// Records an issued certificate.
    fn record_issued(&self, cert: &IssuedCertificate) -> Result<(), StoreError>;
    /// Every issued certificate, oldest first (the security team's inventory).
    fn issued_certificates(&self) -> Result<Vec<IssuedCertificate>, StoreError>;
    /// The issued certificate with this serial, if this broker issued it.
    fn issued_certificate(&self, serial: &Serial) -> Result<Option<IssuedCertificate>, StoreError>;
    /// Records a revocation. Revoking twice keeps the first time and reason.
    fn revoke(
        &self,
        serial: &Serial,
        reason: Reason,
        at: SystemTime,
    ) -> Result<RevokeOutcome, StoreError> {
        self.revoke_issued_by(serial, None, reason, at)
    }
    /// Records a revocation and, for a certificate this broker has no record of issuing (an
    /// offline intermediate's), the label of the CA that issued it, so that the revocation
    /// goes into that CA's CRL.
    fn revoke_issued_by(
        &self,
        serial: &Serial,
        issuer_label: Option<&str>,
        reason: Reason,
        at: SystemTime,
    ) -> Result<RevokeOutcome, StoreError>;
    /// The revocations of certificates issued by the CA labelled `issuer_label`: recorded with
    /// the revocation, or else from the issuance record. `with_unattributed` adds revocations
    /// whose issuer is known neither way (they belong in the root's CRL).
    fn revocations_issued_by(
        &self,
        issuer_label: &str,
        with_unattributed: bool,
    ) -> Result<Vec<Revocation>, StoreError>;
    /// Every revocation, oldest first.
    fn revocations(&self) -> Result<Vec<Revocation>, StoreError>;
    /// A number that changes whenever a revocation is added (revocations are never removed):
    /// one index lookup, so a cached CRL can be checked without listing every revocation.
    fn revocation_generation(&self) -> Result<u64, StoreError>;
    /// The revocation of `serial`, if it is revoked.
    fn revocation(&self, serial: &Serial) -> Result<Option<Revocation>, StoreError>;
    /// Whether `serial` is revoked.
    fn is_revoked(&self, serial: &Serial) -> Result<bool, StoreError>;
    /// Which of `serials` are revoked (one question for a whole certificate path).
    fn revoked_among(&self, serials: &[Serial]) -> Result<Vec<Serial>, StoreError> {
        let mut revoked = Vec::new();
        for serial in serials {
            if self.is_revoked(serial)? {
                revoked.push(serial.clone());
            }
        }
        Ok(revoked)
    }
    /// Allocates the next CRL number (strictly increasing, never reused).
    fn next_crl_number(&self) -> Result<u64, StoreError>;
    /// Records that `replica` is running at `now` and returns how many replicas sharing this
    /// store are live (announced within [`REPLICA_LIVENESS`]), this one included. A store that
    /// only one broker can use answers 1.
    fn live_replicas(&self, _replica: &str, _now: SystemTime) -> Result<u32, StoreError> {
        Ok(1)
    }
}
