//! Shared helpers for the integration tests. (`tests/common/mod.rs` rather than
//! `tests/common.rs`: Cargo would build the latter as a test crate of its own.)
//!
//! Every test provisions its own SoftHSM2 token in a temporary directory through the same
//! `softhsm-setup/provision.sh` that operators use, so tests run in parallel and clean up.
//! A missing SoftHSM2 makes the test fail loudly; nothing is skipped.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// A provisioned SoftHSM2 token with its seb configuration.
pub struct Hsm {
    pub dir: tempfile::TempDir,
    pub port: u16,
}

impl Hsm {
    /// Provisions a fresh token (and config) in a new temporary directory.
    pub fn provision() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let port = free_port();
        let out = Command::new("bash")
            .arg(repo().join("softhsm-setup/provision.sh"))
            .arg(dir.path())
            .args(["--port", &port.to_string()])
            .output()
            .expect("run provision.sh");
        assert!(
            out.status.success(),
            "provision.sh failed (is softhsm2 installed?):\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        Self { dir, port }
    }

    /// Provisions and runs `seb init`.
    pub fn initialised() -> Self {
        let hsm = Self::provision();
        hsm.seb_ok(&["init"]);
        hsm
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    pub fn config(&self) -> PathBuf {
        self.path("seb.toml")
    }

    pub fn trust(&self, name: &str) -> PathBuf {
        self.path("state/trust").join(name)
    }

    pub fn softhsm_conf(&self) -> PathBuf {
        self.path("softhsm2.conf")
    }

    pub fn user_pin(&self) -> String {
        std::fs::read_to_string(self.path("user.pin"))
            .unwrap()
            .trim()
            .to_owned()
    }

    /// Runs `seb --config <this config> ARGS`.
    pub fn seb(&self, args: &[&str]) -> Output {
        let mut full = vec!["--config".to_owned(), self.config().display().to_string()];
        full.extend(args.iter().map(|s| s.to_string()));
        seb(
            &full.iter().map(String::as_str).collect::<Vec<_>>(),
            self.dir.path(),
        )
    }

    /// Runs seb and asserts success; returns stdout.
    pub fn seb_ok(&self, args: &[&str]) -> String {
        let out = self.seb(args);
        assert_success(&out, &format!("seb {args:?}"));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Makes a key + CSR with `seb keygen` and issues a certificate; returns the cert path.
    pub fn issue(&self, name: &str, subject: &str, role: &str, extra: &[&str]) -> PathBuf {
        let key = self.path(&format!("{name}.key"));
        let csr = self.path(&format!("{name}.csr"));
        let cert = self.path(&format!("{name}.pem"));
        self.seb_ok(&[
            "keygen",
            "--out-key",
            key.to_str().unwrap(),
            "--out-csr",
            csr.to_str().unwrap(),
            "--subject",
            subject,
        ]);
        let mut args = vec![
            "cert",
            "issue",
            "--csr",
            csr.to_str().unwrap(),
            "--role",
            role,
            "--ttl",
            "30d",
            "--out",
            cert.to_str().unwrap(),
        ];
        args.extend_from_slice(extra);
        self.seb_ok(&args);
        cert
    }
}

impl Drop for Hsm {
    fn drop(&mut self) {
        let _ = Command::new("bash").arg(self.path("stop.sh")).output();
    }
}

/// Runs the `seb` binary in `cwd`.
pub fn seb(args: &[&str], cwd: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_seb"))
        .args(args)
        .current_dir(cwd)
        .env_remove("SEB_CONFIG")
        .env("RUST_LOG", "warn")
        .output()
        .expect("run seb")
}

pub fn assert_success(out: &Output, what: &str) {
    assert!(
        out.status.success(),
        "{what} failed with {:?}\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Asserts a clean failure: non-zero exit, `needle` in stderr, and no panic.
pub fn assert_clean_failure(out: &Output, needle: &str) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "expected failure, got success:\n{stderr}"
    );
    assert_eq!(out.status.code(), Some(1), "exit code; stderr:\n{stderr}");
    assert!(!stderr.contains("panicked"), "panic:\n{stderr}");
    assert!(
        stderr.contains(needle),
        "stderr should mention {needle:?}:\n{stderr}"
    );
}

/// Runs `openssl ARGS`; returns (success, stdout+stderr).
pub fn openssl(args: &[&str], cwd: &Path) -> (bool, String) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(cwd)
        .output()
        .expect("openssl is installed");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// A free TCP port on the loopback interface.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("bind a free port")
}

pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The SoftHSM2 module path the provisioner found.
pub fn module() -> String {
    for c in [
        "/usr/lib/softhsm/libsofthsm2.so",
        "/usr/lib/x86_64-linux-gnu/softhsm/libsofthsm2.so",
    ] {
        if Path::new(c).exists() {
            return c.to_owned();
        }
    }
    panic!("libsofthsm2.so not found: install softhsm2");
}

/// A running `seb serve` on the token of an [`Hsm`]; stopped with SIGTERM on drop.
pub struct Broker {
    pub child: Option<std::process::Child>,
    pub url: String,
    pub log: PathBuf,
}

impl Broker {
    /// Starts the broker and waits until it listens.
    pub fn start(hsm: &Hsm) -> Self {
        use std::io::{BufRead, BufReader};
        let log = hsm.path("broker.log");
        let stderr = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .unwrap();
        let mut child = Command::new(env!("CARGO_BIN_EXE_seb"))
            .args(["--config", hsm.config().to_str().unwrap(), "serve"])
            .current_dir(hsm.dir.path())
            .env("RUST_LOG", "info")
            .stdout(std::process::Stdio::piped())
            .stderr(stderr)
            .spawn()
            .expect("start seb serve");
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut lines = BufReader::new(stdout).lines();
            if let Some(Ok(line)) = lines.next() {
                let _ = tx.send(line);
            }
            for _ in lines {}
        });
        let line = rx
            .recv_timeout(std::time::Duration::from_secs(20))
            .unwrap_or_else(|_| {
                panic!(
                    "broker did not start:\n{}",
                    std::fs::read_to_string(&log).unwrap_or_default()
                )
            });
        let url = line
            .rsplit(' ')
            .next()
            .filter(|u| u.starts_with("https://"))
            .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
            .to_owned();
        Self {
            child: Some(child),
            url,
            log,
        }
    }

    /// Sends SIGTERM and waits for a clean exit; returns whether it exited successfully.
    pub fn stop(&mut self) -> bool {
        let Some(mut child) = self.child.take() else {
            return true;
        };
        let _ = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                return status.success();
            }
            if std::time::Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                return false;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        self.stop();
    }
}

/// An identity (certificate chain + key) for talking to the broker.
pub struct Identity {
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl Hsm {
    /// Issues a certificate with `seb cert issue` and returns the identity.
    pub fn identity(&self, name: &str, subject: &str, role: &str, extra: &[&str]) -> Identity {
        let cert = self.issue(name, subject, role, extra);
        Identity {
            cert,
            key: self.path(&format!("{name}.key")),
        }
    }

    /// Issues another certificate from the CSR `seb keygen` made for `name` (see [`Hsm::issue`]),
    /// with `extra` options, into `out`; returns the identity (same key).
    pub fn reissue(&self, name: &str, out: &str, extra: &[&str]) -> Identity {
        let csr = self.path(&format!("{name}.csr"));
        let cert = self.path(out);
        let mut args = vec![
            "cert",
            "issue",
            "--csr",
            csr.to_str().unwrap(),
            "--out",
            cert.to_str().unwrap(),
        ];
        args.extend_from_slice(extra);
        self.seb_ok(&args);
        Identity {
            cert,
            key: self.path(&format!("{name}.key")),
        }
    }

    /// Writes a grants file and returns its path.
    pub fn grants_file(&self, name: &str, text: &str) -> String {
        let path = self.path(name);
        std::fs::write(&path, text).unwrap();
        path.display().to_string()
    }

    /// An agent with the given grants.
    pub fn agent(&self, name: &str, grants: &str) -> Identity {
        let file = self.grants_file(&format!("{name}-grants.toml"), grants);
        self.identity(name, &format!("CN={name}"), "agent", &["--grants", &file])
    }

    pub fn tls(&self, who: &Identity, resumption: bool) -> seb::client::ClientTls {
        seb::client::ClientTls::new(
            &std::fs::read(self.trust("root.pem")).unwrap(),
            &std::fs::read(&who.cert).unwrap(),
            &std::fs::read(&who.key).unwrap(),
            resumption,
        )
        .unwrap()
    }
}

/// A single-threaded runtime for driving the client in tests.
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}
