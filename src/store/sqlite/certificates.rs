//! Issued certificates, revocations and CRL numbers: the bodies of the [`Store`] methods over
//! the `issued`, `revoked`, `revocation_issuers` and `counters` tables. A revocation is an
//! audit entry in the same commit.
//!
//! [`Store`]: crate::store::Store

use std::time::SystemTime;

use rusqlite::{params, OptionalExtension};

use super::rows::{self, from_unix, parsed, revocation_from_row, unix};
use super::{encode, SqliteStore};
use crate::ca::crl::{Reason, Revocation};
use crate::serial::Serial;
use crate::store::entries;
use crate::store::{IssuedCertificate, RevokeOutcome, StoreError};

pub(super) fn record_issued(
    store: &SqliteStore,
    cert: &IssuedCertificate,
) -> Result<(), StoreError> {
    let now = SystemTime::now();
    let entry = entries::certificate_issued(cert, crate::time::unix_millis(now));
    let cert = cert.clone();
    store.write_audited(
        "record issued certificate",
        move |c| {
            c.execute(
                "INSERT INTO issued (serial, subject, role, issuer_label, not_after, issued_at, pem)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                params![
                    cert.serial.as_bytes(),
                    cert.subject,
                    cert.role,
                    cert.issuer_label,
                    unix(cert.not_after),
                    unix(now),
                    cert.pem
                ],
            )
            .map(|_| ())
        },
        move |()| encode(&entry).unwrap_or_default(),
    )?;
    Ok(())
}

pub(super) fn issued_certificates(
    store: &SqliteStore,
) -> Result<Vec<IssuedCertificate>, StoreError> {
    store.read("list issued certificates", |c| {
        let mut stmt = c.prepare(
            "SELECT serial, subject, role, issuer_label, not_after, pem FROM issued
             ORDER BY issued_at, rowid",
        )?;
        let rows = stmt.query_map([], rows::issued_certificate)?;
        rows.collect()
    })
}

pub(super) fn issued_certificate(
    store: &SqliteStore,
    serial: &Serial,
) -> Result<Option<IssuedCertificate>, StoreError> {
    store.read("look up an issued certificate", |c| {
        c.prepare_cached(
            "SELECT serial, subject, role, issuer_label, not_after, pem FROM issued
             WHERE serial = ?1",
        )?
        .query_row([serial.as_bytes()], rows::issued_certificate)
        .optional()
    })
}

pub(super) fn revoke_issued_by(
    store: &SqliteStore,
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
        move |c| {
            let already: Option<i64> = c
                .query_row("SELECT 1 FROM revoked WHERE serial = ?1", [&serial], |r| {
                    r.get(0)
                })
                .optional()?;
            if already.is_some() {
                return Ok(RevokeOutcome::AlreadyRevoked);
            }
            let known: Option<i64> = c
                .query_row("SELECT 1 FROM issued WHERE serial = ?1", [&serial], |r| {
                    r.get(0)
                })
                .optional()?;
            c.execute(
                "INSERT INTO revoked (serial, reason, revoked_at) VALUES (?1, ?2, ?3)",
                params![serial, reason.as_str(), unix(at)],
            )?;
            if let Some(label) = &issuer_label {
                c.execute(
                    "INSERT OR REPLACE INTO revocation_issuers (serial, issuer_label) VALUES (?1, ?2)",
                    params![serial, label],
                )?;
            }
            Ok(RevokeOutcome::Revoked {
                known: known.is_some(),
            })
        },
        move |outcome| {
            let already = *outcome == RevokeOutcome::AlreadyRevoked;
            let e = entries::revocation(&serial_hex, reason.as_str(), already, time_ms);
            encode(&e).unwrap_or_default()
        },
    )?;
    Ok(outcome)
}

pub(super) fn revocations_issued_by(
    store: &SqliteStore,
    issuer_label: &str,
    with_unattributed: bool,
) -> Result<Vec<Revocation>, StoreError> {
    let label = issuer_label.to_owned();
    let rows: Vec<(Vec<u8>, String, i64)> = store.read("list revocations by issuer", |c| {
        let mut stmt = c.prepare(
            "SELECT r.serial, r.reason, r.revoked_at FROM revoked r
               LEFT JOIN revocation_issuers ri ON ri.serial = r.serial
               LEFT JOIN issued i ON i.serial = r.serial
             WHERE COALESCE(ri.issuer_label, i.issuer_label) = ?1
                OR (?2 AND COALESCE(ri.issuer_label, i.issuer_label) IS NULL)
             ORDER BY r.revoked_at, r.serial",
        )?;
        let rows = stmt.query_map(params![label, with_unattributed], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?))
        })?;
        rows.collect()
    })?;
    rows.into_iter().map(revocation_from_row).collect()
}

pub(super) fn revocations(store: &SqliteStore) -> Result<Vec<Revocation>, StoreError> {
    let rows: Vec<(Vec<u8>, String, i64)> = store.read("list revocations", |c| {
        let mut stmt = c.prepare(
            "SELECT serial, reason, revoked_at FROM revoked ORDER BY revoked_at, serial",
        )?;
        let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?;
        rows.collect()
    })?;
    rows.into_iter().map(revocation_from_row).collect()
}

pub(super) fn revocation_generation(store: &SqliteStore) -> Result<u64, StoreError> {
    // Rows are only ever inserted, so the largest rowid names the list's state.
    let last: Option<i64> = store.read("read the revocation generation", |c| {
        c.prepare_cached("SELECT max(rowid) FROM revoked")?
            .query_row([], |r| r.get(0))
    })?;
    Ok(last.map_or(0, |n| u64::try_from(n).unwrap_or(0)))
}

pub(super) fn revocation(
    store: &SqliteStore,
    serial: &Serial,
) -> Result<Option<Revocation>, StoreError> {
    let row: Option<(String, i64)> = store.read("look up a revocation", |c| {
        c.prepare_cached("SELECT reason, revoked_at FROM revoked WHERE serial = ?1")?
            .query_row([serial.as_bytes()], |r| Ok((r.get(0)?, r.get(1)?)))
            .optional()
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

pub(super) fn is_revoked(store: &SqliteStore, serial: &Serial) -> Result<bool, StoreError> {
    store.read("check revocation", |c| {
        c.prepare_cached("SELECT 1 FROM revoked WHERE serial = ?1")?
            .query_row([serial.as_bytes()], |r| r.get::<_, i64>(0))
            .optional()
            .map(|row| row.is_some())
    })
}

pub(super) fn next_crl_number(store: &SqliteStore) -> Result<u64, StoreError> {
    let value: i64 = store.write("allocate CRL number", |c| {
        c.execute(
            "INSERT INTO counters (name, value) VALUES ('crl_number', 1)
             ON CONFLICT(name) DO UPDATE SET value = value + 1",
            [],
        )?;
        c.query_row(
            "SELECT value FROM counters WHERE name = 'crl_number'",
            [],
            |r| r.get(0),
        )
    })?;
    u64::try_from(value).map_err(|_| StoreError::Corrupt("negative CRL number".into()))
}
