//! The measured-boot event log in seb's normalized JSON form: for each event, the PCR it was
//! extended into, the digest extended (in the log's bank) and a description.
//!
//! A host's TCG binary log (`/sys/kernel/security/tpm0/binary_bios_measurements`) carries the
//! same facts; the synthetic log used with swtpm (`firmware-config/swtpm-eventlog.json`) is
//! written directly in this form and extended into the simulator at provisioning.
//! Replaying means: every PCR starts at zero and `PCR := H(PCR ‖ digest)` for each of its events
//! in order; the result must equal the quoted value.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::{PcrBank, QuoteError};

/// Most events a log may hold (a real firmware log has a few hundred).
pub const MAX_EVENTS: usize = 10_000;

/// An event log.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EventLog {
    /// The bank the digests are in.
    pub bank: PcrBank,
    /// Events in the order they were extended.
    pub events: Vec<Event>,
}

/// One measurement.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Event {
    /// PCR index.
    pub pcr: u8,
    /// Hex digest extended into the PCR.
    pub digest: String,
    /// TCG event type name (`EV_POST_CODE`, `EV_SEPARATOR`, ...).
    #[serde(rename = "type")]
    pub kind: String,
    /// What was measured, for humans.
    #[serde(default)]
    pub data: String,
}

impl EventLog {
    /// Parses a JSON event log.
    pub fn from_json(bytes: &[u8]) -> Result<Self, String> {
        let log: EventLog = serde_json::from_slice(bytes).map_err(|e| e.to_string())?;
        if log.events.len() > MAX_EVENTS {
            return Err(format!("more than {MAX_EVENTS} events"));
        }
        Ok(log)
    }

    /// The digests extended into `pcr`, in order.
    pub fn digests_for(&self, pcr: u8) -> impl Iterator<Item = &str> {
        self.events
            .iter()
            .filter(move |e| e.pcr == pcr)
            .map(|e| e.digest.as_str())
    }

    /// Replays the log for `pcr` from zero.
    pub fn replay(&self, pcr: u8) -> Result<Vec<u8>, QuoteError> {
        let mut value = vec![0u8; self.bank.digest_len()];
        for digest in self.digests_for(pcr) {
            let bytes = hex::decode(digest).map_err(|_| QuoteError::Malformed {
                what: "event log",
                reason: "a digest is not hex",
            })?;
            if bytes.len() != self.bank.digest_len() {
                return Err(QuoteError::Malformed {
                    what: "event log",
                    reason: "a digest has the wrong length for the bank",
                });
            }
            value = self.bank.extend(&value, &bytes);
        }
        Ok(value)
    }

    /// Every quoted PCR must equal the replay of its events.
    pub fn check_replay(
        &self,
        bank: PcrBank,
        quoted: &BTreeMap<u8, Vec<u8>>,
    ) -> Result<(), QuoteError> {
        if self.bank != bank {
            return Err(QuoteError::Malformed {
                what: "event log",
                reason: "the log's bank is not the quoted bank",
            });
        }
        if self.events.len() > MAX_EVENTS {
            return Err(QuoteError::Malformed {
                what: "event log",
                reason: "too many events",
            });
        }
        for (pcr, value) in quoted {
            let replayed = self.replay(*pcr)?;
            if &replayed != value {
                return Err(QuoteError::EventLogMismatch {
                    pcr: *pcr,
                    replayed: hex::encode(replayed),
                    quoted: hex::encode(value),
                });
            }
        }
        Ok(())
    }
}
