//! Key generations: which device label is the *current* token, TLS and audit key, and which
//! token certificates were retired by `seb rotate` and when.
//!
//! The labels in `[keys]` name the first generation (what `seb init` made). `seb rotate KIND`
//! generates generation N+1 under `LABEL.N+1` (e.g. `seb-token.2`) and records it in
//! `<state_dir>/keys.toml`; everything that signs looks the current label up here. A device
//! label is never reused and no key is deleted: an old token key may still be needed to
//! understand what it signed, and deleting keys is the HSM custodian's decision.
//!
//! The file is written only by `seb rotate`, atomically, and read by the broker (which polls
//! it, see `Broker::reload`). It holds no secret.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};

use crate::files::{self, Access, Existing};

/// The broker keys that `seb rotate` re-keys. The root is rotated by a ceremony
/// (docs/OPERATIONS.md, "Year two"), not by this command.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum KeyKind {
    /// `seb-token`: signs execution tokens.
    Token,
    /// `seb-tls`: the broker's HTTPS key.
    Tls,
    /// `seb-audit`: signs audit checkpoints.
    Audit,
}

impl KeyKind {
    /// Every rotatable kind.
    pub const ALL: [KeyKind; 3] = [KeyKind::Token, KeyKind::Tls, KeyKind::Audit];

    /// The CLI spelling, also the certificate's file stem in the trust directory.
    pub fn as_str(self) -> &'static str {
        match self {
            KeyKind::Token => "token",
            KeyKind::Tls => "tls",
            KeyKind::Audit => "audit",
        }
    }

    /// Parses the CLI spelling.
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.as_str() == s)
    }
}

/// Why the generations file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum GenerationsError {
    /// Unreadable.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// Not valid (hand-edited?).
    #[error("{path} is not a valid key generations file: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// Could not be written.
    #[error("cannot write {path}: {source}")]
    Write {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

/// The current generation of one key.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Current {
    /// 1 for the key `seb init` made, then 2, 3, ...
    pub generation: u32,
    /// Its label in the device.
    pub label: String,
}

/// A certificate (and key) replaced by a rotation.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Retired {
    /// `token`, `tls` or `audit`.
    pub kind: String,
    /// Its generation.
    pub generation: u32,
    /// Its label in the device (the key is kept).
    pub label: String,
    /// Its certificate, a file name in `<trust>/retired/`.
    pub cert: String,
    /// When it stopped being current (Unix seconds).
    pub retired_at: u64,
}

/// `<state_dir>/keys.toml`. Absent means: every key is in its first generation.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyGenerations {
    /// The token key, once rotated.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<Current>,
    /// The TLS key, once rotated.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<Current>,
    /// The audit key, once rotated.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub audit: Option<Current>,
    /// Every retired generation, oldest first.
    #[serde(default)]
    pub retired: Vec<Retired>,
}

const HEADER: &str =
    "# Written by `seb rotate`: the current generation of each broker key (the [keys]\n\
# labels of seb.toml name generation 1) and the retired ones. Do not edit.\n";

impl KeyGenerations {
    /// Where the file lives.
    pub fn path(state_dir: &Path) -> PathBuf {
        state_dir.join("keys.toml")
    }

    /// Reads the file; a missing file is the first generation of everything.
    pub fn load(state_dir: &Path) -> Result<Self, GenerationsError> {
        let path = Self::path(state_dir);
        let text = match std::fs::read_to_string(&path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Self::default()),
            Err(source) => return Err(GenerationsError::Read { path, source }),
        };
        toml::from_str(&text).map_err(|e| GenerationsError::Parse {
            path,
            message: e.to_string(),
        })
    }

    /// Writes the file atomically.
    pub fn save(&self, state_dir: &Path) -> Result<(), GenerationsError> {
        let path = Self::path(state_dir);
        let body = toml::to_string(self).map_err(|e| GenerationsError::Parse {
            path: path.clone(),
            message: e.to_string(),
        })?;
        files::write(
            &path,
            format!("{HEADER}{body}").as_bytes(),
            Access::Public,
            Existing::Replace,
        )
        .map_err(|source| GenerationsError::Write { path, source })
    }

    fn slot(&self, kind: KeyKind) -> Option<&Current> {
        match kind {
            KeyKind::Token => self.token.as_ref(),
            KeyKind::Tls => self.tls.as_ref(),
            KeyKind::Audit => self.audit.as_ref(),
        }
    }

    /// The current generation and label of `kind`; `configured` is the `[keys]` label.
    pub fn current(&self, kind: KeyKind, configured: &str) -> Current {
        self.slot(kind).cloned().unwrap_or_else(|| Current {
            generation: 1,
            label: configured.to_owned(),
        })
    }

    /// The generation a rotation of `kind` makes: `LABEL.N+1`.
    pub fn next(&self, kind: KeyKind, configured: &str) -> Current {
        let generation = self.current(kind, configured).generation.saturating_add(1);
        Current {
            generation,
            label: format!("{configured}.{generation}"),
        }
    }

    /// Makes `next` current and records the one it replaces as retired at `now`, with its
    /// certificate saved as `retired_cert` in the trust directory's `retired/`.
    pub fn rotate(
        &mut self,
        kind: KeyKind,
        configured: &str,
        next: Current,
        retired_cert: String,
        now: SystemTime,
    ) {
        let old = self.current(kind, configured);
        self.retired.push(Retired {
            kind: kind.as_str().to_owned(),
            generation: old.generation,
            label: old.label,
            cert: retired_cert,
            retired_at: crate::time::unix(now),
        });
        let slot = match kind {
            KeyKind::Token => &mut self.token,
            KeyKind::Tls => &mut self.tls,
            KeyKind::Audit => &mut self.audit,
        };
        *slot = Some(next);
    }

    /// Every retired audit key: checkpoints it signed stay verifiable from the published
    /// certificates, however old.
    pub fn retired_audit(&self) -> impl Iterator<Item = &Retired> {
        self.retired
            .iter()
            .filter(|r| r.kind == KeyKind::Audit.as_str())
    }

    /// Retired token certificates that may still have signed a live token at `now`: those
    /// retired less than `window` ago (the longest token lifetime the broker accepts, plus the
    /// time a running broker takes to notice the rotation, plus clock skew).
    pub fn live_retired_tokens(&self, now: SystemTime, window: Duration) -> Vec<&Retired> {
        let now = crate::time::unix(now);
        self.retired
            .iter()
            .filter(|r| r.kind == KeyKind::Token.as_str())
            .filter(|r| r.retired_at.saturating_add(window.as_secs()) > now)
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generations_start_at_the_configured_label_and_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let mut g = KeyGenerations::load(dir.path()).unwrap();
        assert_eq!(g, KeyGenerations::default());
        assert_eq!(g.current(KeyKind::Token, "seb-token").label, "seb-token");
        let next = g.next(KeyKind::Token, "seb-token");
        assert_eq!((next.generation, next.label.as_str()), (2, "seb-token.2"));
        let at = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000);
        g.rotate(KeyKind::Token, "seb-token", next, "token.1.pem".into(), at);
        assert_eq!(g.next(KeyKind::Token, "seb-token").label, "seb-token.3");
        assert_eq!(g.current(KeyKind::Tls, "seb-tls").generation, 1);
        g.save(dir.path()).unwrap();
        let back = KeyGenerations::load(dir.path()).unwrap();
        assert_eq!(back, g);
        let window = Duration::from_secs(100);
        assert_eq!(
            back.live_retired_tokens(at + Duration::from_secs(99), window)
                .len(),
            1
        );
        assert!(back.live_retired_tokens(at + window, window).is_empty());
    }

    #[test]
    fn a_hand_edited_file_is_an_error_not_a_default() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(KeyGenerations::path(dir.path()), "tokn = 3\n").unwrap();
        assert!(matches!(
            KeyGenerations::load(dir.path()),
            Err(GenerationsError::Parse { .. })
        ));
    }
}
