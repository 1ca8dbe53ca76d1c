//! The tamper-evident audit log: RFC 6962 Merkle hashing and proofs (`merkle.rs`), the
//! versioned entry format (`entry.rs`), signed checkpoints in the C2SP tlog-checkpoint format
//! (`checkpoint.rs`) and the offline log verifier (`verify.rs`).
//!
//! Everything here is pure and builds without the `broker` feature, so auditors and executors
//! can link it. It never signs by itself: the broker signs checkpoints with `seb-audit` in the
//! device (`broker/audit.rs`), and nothing here ever sees a private key.

pub mod checkpoint;
pub mod entry;
pub mod merkle;
pub mod verify;
