//! Issued certificates, revocations and CRL numbers on PostgreSQL (the same rules as
//! `sqlite/certificates.rs`). A revocation is an audited write, so it commits with its entry
//! and, read on every request by every replica, takes effect on all of them at once.

use std::time::SystemTime;

use tokio_postgres::Row;

use super::conn::{Db, DbError};
use super::{encode, unix, PgStore};
use crate::ca::crl::{Reason, Revocation};
use crate::serial::Serial;
use crate::store::entries;
use crate::store::sqlite::rows::{from_unix, parsed, revocation_from_row};
use crate::store::{IssuedCertificate, RevokeOutcome, StoreError};

pub(super) fn record_issued(store: &PgStore, cert: &IssuedCertificate) -> Result<(), StoreError> {
    let now = SystemTime::now();
    let entry = entries::certificate_issued(cert, crate::time::unix_millis(now));
    let cert = cert.clone();
    store.write_audited(
        "record issued certificate",
        move |b| {
            b.db()?
                .execute(
                    "INSERT INTO issued (serial, subject, role, issuer_label, not_after, issued_at, pem)
                     VALUES ($1, $2, $3, $4, $5, $6, $7)",
                    &[
                        &cert.serial.as_bytes(),
                        &cert.subject,
                        &cert.role,
                        &cert.issuer_label,
                        &unix(cert.not_after),
                        &unix(now),
                        &cert.pem,
                    ],
                )
                .map(|_| ())
        },
        move |()| encode(&entry).unwrap_or_default(),
    )?;
    Ok(())
}

fn issued(r: &Row) -> Result<IssuedCertificate, DbError> {
    let serial: Vec<u8> = r.get(0);
    Ok(IssuedCertificate {
        serial: Serial::from_magnitude(&serial)
            .map_err(|e| DbError::Corrupt(format!("issued serial: {e}")))?,
        subject: r.get(1),
        role: r.get(2),
        issuer_label: r.get(3),
        not_after: from_unix(r.get(4)).map_err(|e| DbError::Corrupt(e.to_string()))?,
        pem: r.get(5),
    })
}

pub(super) fn issued_certificates(store: &PgStore) -> Result<Vec<IssuedCertificate>, StoreError> {
    store.read("list issued certificates", |db| {
        db.query(
            "SELECT serial, subject, role, issuer_label, not_after, pem FROM issued
             ORDER BY issued_at, seq",
            &[],
        )?
        .iter()
        .map(issued)
        .collect()
    })
}

pub(super) fn issued_certificate(
    store: &PgStore,
    serial: &Serial,
) -> Result<Option<IssuedCertificate>, StoreError> {
    store.read("look up an issued certificate", |db| {
        db.query_opt(
            "SELECT serial, subject, role, issuer_label, not_after, pem FROM issued
             WHERE serial = $1",
            &[&serial.as_bytes()],
        )?
        .map(|r| issued(&r))
        .transpose()
    })
}

pub(super) fn revoke_issued_by(
    store: &PgStore,
    serial: &Serial,
    issuer_label: Option<&str>,
    reason: Reason,
    at: SystemTime,
) -> Result<RevokeOutcome, StoreError> {
    let serial_hex = serial.to_string();
    let serial = serial.as_bytes().to_vec();
    let issuer_label = issuer_label.map(str::to_owned);
    let time_ms = crate::time::unix_millis(at);
    let (outcome, _) = store.write_audited(
        "revoke",
        move |b| {
            let inserted = b.db()?.execute(
                "INSERT INTO revoked (serial, reason, revoked_at) VALUES ($1, $2, $3)
                 ON CONFLICT (serial) DO NOTHING",
                &[&serial, &reason.as_str(), &unix(at)],
            )?;
            if inserted == 0 {
                return Ok(RevokeOutcome::AlreadyRevoked);
            }
            let known = b
                .db()?
                .exists("SELECT 1 FROM issued WHERE serial = $1", &[&serial])?;
            if let Some(label) = &issuer_label {
                b.db()?.execute(
                    "INSERT INTO revocation_issuers (serial, issuer_label) VALUES ($1, $2)
                     ON CONFLICT (serial) DO UPDATE SET issuer_label = excluded.issuer_label",
                    &[&serial, label],
                )?;
            }
            Ok(RevokeOutcome::Revoked { known })
        },
        move |outcome| {
            let already = *outcome == RevokeOutcome::AlreadyRevoked;
            let e = entries::revocation(&serial_hex, reason.as_str(), already, time_ms);
            encode(&e).unwrap_or_default()
        },
    )?;
    Ok(outcome)
}

fn revocation_rows(rows: Vec<Row>) -> Result<Vec<Revocation>, StoreError> {
    rows.iter()
        .map(|r| revocation_from_row((r.get(0), r.get(1), r.get(2))))
        .collect()
}

pub(super) fn revocations_issued_by(
    store: &PgStore,
    issuer_label: &str,
    with_unattributed: bool,
) -> Result<Vec<Revocation>, StoreError> {
    let rows = store.read("list revocations by issuer", |db| {
        db.query(
            "SELECT r.serial, r.reason, r.revoked_at FROM revoked r
               LEFT JOIN revocation_issuers ri ON ri.serial = r.serial
               LEFT JOIN issued i ON i.serial = r.serial
             WHERE COALESCE(ri.issuer_label, i.issuer_label) = $1
                OR ($2 AND COALESCE(ri.issuer_label, i.issuer_label) IS NULL)
             ORDER BY r.revoked_at, r.serial",
            &[&issuer_label, &with_unattributed],
        )
    })?;
    revocation_rows(rows)
}

pub(super) fn revocations(store: &PgStore) -> Result<Vec<Revocation>, StoreError> {
    let rows = store.read("list revocations", |db| {
        db.query(
            "SELECT serial, reason, revoked_at FROM revoked ORDER BY revoked_at, serial",
            &[],
        )
    })?;
    revocation_rows(rows)
}

pub(super) fn revocation_generation(store: &PgStore) -> Result<u64, StoreError> {
    // Rows are only ever inserted; the largest sequence number names the list's state.
    let last: Option<i64> = store.read("read the revocation generation", |db| {
        Ok(db.query_one("SELECT MAX(seq) FROM revoked", &[])?.get(0))
    })?;
    Ok(last.map_or(0, |n| u64::try_from(n).unwrap_or(0)))
}

pub(super) fn revocation(
    store: &PgStore,
    serial: &Serial,
) -> Result<Option<Revocation>, StoreError> {
    let row: Option<(String, i64)> = store.read("look up a revocation", |db| {
        Ok(db
            .query_opt(
                "SELECT reason, revoked_at FROM revoked WHERE serial = $1",
                &[&serial.as_bytes()],
            )?
            .map(|r| (r.get(0), r.get(1))))
    })?;
    row.map(|(reason, at)| {
        Ok(Revocation {
            serial: serial.clone(),
            reason: parsed("revocation reason", &reason, Reason::parse)?,
            revoked_at: from_unix(at)?,
        })
    })
    .transpose()
}

pub(super) fn next_crl_number(store: &PgStore) -> Result<u64, StoreError> {
    let value: i64 = store.read("allocate CRL number", |db| {
        Ok(db
            .query_one(
                "INSERT INTO counters (name, value) VALUES ('crl_number', 1)
                 ON CONFLICT (name) DO UPDATE SET value = counters.value + 1
                 RETURNING value",
                &[],
            )?
            .get(0))
    })?;
    u64::try_from(value).map_err(|_| StoreError::Corrupt("negative CRL number".into()))
}

/// Those of `serials` that are revoked, in the order given (the path's order), with one query
/// on `db`: a pool connection for the per-request check, the batch's transaction for a
/// redemption.
pub(super) fn revoked_in(
    db: &mut Db<'_, tokio_postgres::Client>,
    serials: &[Serial],
) -> Result<Vec<Serial>, DbError> {
    if serials.is_empty() {
        return Ok(Vec::new());
    }
    let bytes: Vec<Vec<u8>> = serials.iter().map(|s| s.as_bytes().to_vec()).collect();
    let revoked: Vec<Vec<u8>> = db
        .query(
            "SELECT serial FROM revoked WHERE serial = ANY($1)",
            &[&bytes],
        )?
        .iter()
        .map(|r| r.get(0))
        .collect();
    Ok(serials
        .iter()
        .filter(|s| revoked.iter().any(|r| r.as_slice() == s.as_bytes()))
        .cloned()
        .collect())
}
