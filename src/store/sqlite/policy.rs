//! The kill switches kept in the store: the policy epoch (raised, never lowered) and the
//! issuance freeze, each change an audit entry in the same commit.

use std::time::SystemTime;

use rusqlite::OptionalExtension;

use super::{encode, SqliteStore};
use crate::store::entries;
use crate::store::{PolicyState, StoreError};

pub(super) fn policy_state(store: &SqliteStore) -> Result<PolicyState, StoreError> {
    let (epoch, frozen): (Option<i64>, Option<i64>) = store.read("read the policy", |c| {
        let mut stmt = c.prepare_cached("SELECT value FROM counters WHERE name = ?1")?;
        let epoch = stmt.query_row(["policy_epoch"], |r| r.get(0)).optional()?;
        let frozen = stmt.query_row(["policy_frozen"], |r| r.get(0)).optional()?;
        Ok((epoch, frozen))
    })?;
    let epoch = epoch
        .map(u64::try_from)
        .transpose()
        .map_err(|_| StoreError::Corrupt("negative policy epoch".into()))?;
    Ok(PolicyState {
        epoch,
        frozen: frozen.map(|f| f != 0),
    })
}

pub(super) fn bump_epoch(
    store: &SqliteStore,
    floor: u64,
    at: SystemTime,
) -> Result<u64, StoreError> {
    let floor = i64::try_from(floor)
        .map_err(|_| StoreError::Corrupt("policy epoch out of range".into()))?;
    let time_ms = crate::time::unix_millis(at);
    let (value, _) = store.write_audited(
        "bump the policy epoch",
        move |c| {
            c.execute(
                "INSERT INTO counters (name, value) VALUES ('policy_epoch', ?1 + 1)
                 ON CONFLICT(name) DO UPDATE SET value = MAX(value, ?1) + 1",
                [floor],
            )?;
            c.query_row(
                "SELECT value FROM counters WHERE name = 'policy_epoch'",
                [],
                |r| r.get::<_, i64>(0),
            )
        },
        move |value| encode(&entries::epoch_changed(*value, time_ms)).unwrap_or_default(),
    )?;
    u64::try_from(value).map_err(|_| StoreError::Corrupt("negative policy epoch".into()))
}

pub(super) fn set_frozen(
    store: &SqliteStore,
    frozen: bool,
    reason: &str,
    at: SystemTime,
) -> Result<(), StoreError> {
    let reason = reason.to_owned();
    let time_ms = crate::time::unix_millis(at);
    store.write_audited(
        "set the issuance freeze",
        move |c| {
            c.execute(
                "INSERT INTO counters (name, value) VALUES ('policy_frozen', ?1)
                 ON CONFLICT(name) DO UPDATE SET value = excluded.value",
                [i64::from(frozen)],
            )
            .map(|_| ())
        },
        move |_| encode(&entries::freeze(frozen, &reason, time_ms)).unwrap_or_default(),
    )?;
    Ok(())
}
