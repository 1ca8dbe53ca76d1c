//! Writing files that must never be seen half-written or with the wrong mode: keys held by
//! agents, TPM key blobs, the sealed PIN, certificates and policies.
//!
//! Every write goes to a temporary file beside the target (created with its final mode, so a
//! private file is never readable by others, not even for a moment), is synced, and then takes
//! the target's name in one step. A reader sees the old file or the new one, never a mix. This
//! module never follows a request to loosen a mode on an existing file.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

/// Who may read the file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    /// Mode 0600: keys, key blobs, sealed secrets.
    Private,
    /// Mode 0644: certificates, CSRs, CRLs, policies.
    Public,
}

/// Whether an existing file may be replaced.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Existing {
    /// Replace it (atomically).
    Replace,
    /// Fail with `AlreadyExists` and leave it untouched (key blobs are never overwritten).
    Keep,
}

/// Writes `contents` to `path` (creating its directory) through a synced temporary file.
pub fn write(
    path: &Path,
    contents: &[u8],
    access: Access,
    existing: Existing,
) -> std::io::Result<()> {
    if let Some(dir) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    let tmp = temporary_name(path)?;
    let result = write_synced(&tmp, contents, access).and_then(|()| match existing {
        Existing::Replace => std::fs::rename(&tmp, path),
        // A hard link takes the name only if nobody holds it, in one step.
        Existing::Keep => std::fs::hard_link(&tmp, path),
    });
    // After a rename the temporary name is gone already; after a link (or a failure) it
    // must go.
    if existing == Existing::Keep || result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result?;
    sync_directory(path);
    Ok(())
}

/// A private file (0600) that must not exist yet.
pub fn write_new_private(path: &Path, contents: &[u8]) -> std::io::Result<()> {
    write(path, contents, Access::Private, Existing::Keep)
}

fn write_synced(tmp: &Path, contents: &[u8], access: Access) -> std::io::Result<()> {
    let mode = match access {
        Access::Private => 0o600,
        Access::Public => 0o644,
    };
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(tmp)?;
    file.write_all(contents)?;
    file.sync_all()
}

/// `.NAME.RANDOM.tmp` beside `path`: random, so two writers never share one.
fn temporary_name(path: &Path) -> std::io::Result<PathBuf> {
    let name = path.file_name().ok_or_else(|| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("{} is not a file path", path.display()),
        )
    })?;
    let mut salt = [0u8; 6];
    getrandom::fill(&mut salt).map_err(std::io::Error::other)?;
    Ok(path.with_file_name(format!(
        ".{}.{}.tmp",
        name.to_string_lossy(),
        hex::encode(salt)
    )))
}

/// Whether [`write`] could put a file at `path` without creating a directory: the directory
/// exists and a file can be made in it (a temporary one, removed at once), and `path` is not a
/// directory. For commands that do something that cannot be undone (issue a certificate)
/// before they write its result, so that a mistyped or unwritable `--out` refuses first.
pub fn probe_writable(path: &Path) -> std::io::Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    if !dir.is_dir() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::NotFound,
            format!("the directory {} does not exist", dir.display()),
        ));
    }
    if path.is_dir() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "it is a directory",
        ));
    }
    let tmp = temporary_name(path)?;
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)?;
    std::fs::remove_file(&tmp)
}

/// Makes the new name durable. Best effort: some file systems refuse to sync a directory.
fn sync_directory(path: &Path) {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    fn mode(path: &Path) -> u32 {
        std::fs::metadata(path).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn private_files_are_0600_public_0644_and_no_temporary_is_left() {
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("sub/key.pem");
        write(&key, b"secret", Access::Private, Existing::Replace).unwrap();
        assert_eq!(mode(&key), 0o600);
        let cert = dir.path().join("cert.pem");
        write(&cert, b"public", Access::Public, Existing::Replace).unwrap();
        assert_eq!(mode(&cert), 0o644);
        write(&cert, b"newer", Access::Public, Existing::Replace).unwrap();
        assert_eq!(std::fs::read(&cert).unwrap(), b"newer");
        let names: Vec<_> = std::fs::read_dir(dir.path().join("sub"))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["key.pem"]);
    }

    #[test]
    fn keep_refuses_to_replace_and_leaves_the_old_contents() {
        let dir = tempfile::tempdir().unwrap();
        let blob = dir.path().join("k.tpmkey");
        write_new_private(&blob, b"first").unwrap();
        let err = write_new_private(&blob, b"second").unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::AlreadyExists);
        assert_eq!(std::fs::read(&blob).unwrap(), b"first");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn probing_refuses_a_missing_directory_and_a_directory_and_leaves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let missing = probe_writable(&dir.path().join("no/such/x.pem")).unwrap_err();
        assert!(missing.to_string().contains("does not exist"), "{missing}");
        assert!(!dir.path().join("no").exists());
        assert!(probe_writable(dir.path()).is_err());
        probe_writable(&dir.path().join("x.pem")).unwrap();
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }

    #[test]
    fn a_failed_write_leaves_nothing_behind() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("d");
        std::fs::create_dir(&target).unwrap();
        // Renaming a file over a directory fails.
        assert!(write(&target, b"x", Access::Public, Existing::Replace).is_err());
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }
}
