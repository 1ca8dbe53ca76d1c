//! Shared helpers for the integration tests. (`tests/common/mod.rs` rather than
//! `tests/common.rs`: Cargo would build the latter as a test crate of its own.)
//!
//! Every test provisions its own SoftHSM2 token in a temporary directory through the same
//! `softhsm-setup/provision.sh` that operators use, so tests run in parallel and clean up.
//! A missing SoftHSM2 makes the test fail loudly; nothing is skipped.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

pub mod exec;
#[allow(unused_imports)] // not every test crate starts an executor
pub use exec::Executor;
pub mod load;

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

    /// Provisions with `--p11kit`: the token is served by a `p11-kit server` of its own (a
    /// network HSM) that `hsm_stop` pulls and `hsm_start` plugs in again.
    pub fn provision_p11kit() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let port = free_port();
        let out = Command::new("bash")
            .arg(repo().join("softhsm-setup/provision.sh"))
            .arg(dir.path())
            .args(["--port", &port.to_string(), "--p11kit"])
            .output()
            .expect("run provision.sh");
        assert!(
            out.status.success(),
            "provision.sh --p11kit failed (are p11-kit and p11-kit-modules installed?):\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        Self { dir, port }
    }

    /// Pulls the network HSM (`DIR/hsm-stop.sh`: SIGKILL to the p11-kit server).
    pub fn hsm_stop(&self) {
        let out = Command::new("bash")
            .arg(self.path("hsm-stop.sh"))
            .output()
            .expect("run hsm-stop.sh");
        assert_success(&out, "hsm-stop.sh");
    }

    /// Plugs the network HSM in again (`DIR/hsm-start.sh`).
    pub fn hsm_start(&self) {
        let out = Command::new("bash")
            .arg(self.path("hsm-start.sh"))
            .output()
            .expect("run hsm-start.sh");
        assert_success(&out, "hsm-start.sh");
    }

    /// Provisions with `--tpm` (an swtpm under the directory, attestation configured and its
    /// policy recorded); `tpm_backend` also keeps the broker's keys in that TPM.
    ///
    /// Ports are picked free but may be taken by a parallel test before the swtpm binds them;
    /// provision.sh then says so ("did not start") and this tries again on other ports.
    pub fn provision_tpm(tpm_backend: bool) -> Self {
        let mut last = String::new();
        for _ in 0..3 {
            let dir = tempfile::tempdir().expect("tempdir");
            let port = free_port();
            let tpm_port = free_port_pair();
            let mut cmd = Command::new("bash");
            cmd.arg(repo().join("softhsm-setup/provision.sh"))
                .arg(dir.path())
                .args([
                    "--port",
                    &port.to_string(),
                    "--tpm",
                    "--tpm-port",
                    &tpm_port.to_string(),
                ])
                .env("SEB_BIN", env!("CARGO_BIN_EXE_seb"));
            if tpm_backend {
                cmd.args(["--backend", "tpm"]);
            }
            let out = cmd.output().expect("run provision.sh");
            if out.status.success() {
                return Self { dir, port };
            }
            last = format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            let _ = Command::new("bash")
                .arg(dir.path().join("stop.sh"))
                .output();
            if !last.contains("swtpm did not start") {
                break;
            }
        }
        panic!(
            "provision.sh --tpm failed (are swtpm, swtpm-tools and tpm2-tools installed?):\n{last}"
        );
    }

    /// The TCTI of the swtpm that `provision_tpm` started.
    pub fn tcti(&self) -> String {
        let port = std::fs::read_to_string(self.path("swtpm.port")).unwrap();
        format!("swtpm:host=127.0.0.1,port={}", port.trim())
    }

    /// Reboots the host, as far as the TPM can tell: an orderly TPM2_Shutdown and stop
    /// (`stop.sh`), swtpm started again on the same state and port with TPM2_Startup(CLEAR),
    /// which returns every PCR to its initial value, and the synthetic boot measured again
    /// (`provision.sh` run again changes nothing else). The only way back from a measurement
    /// into a PCR that cannot be reset.
    pub fn reboot_tpm(&self) {
        let tpm_port = std::fs::read_to_string(self.path("swtpm.port"))
            .unwrap()
            .trim()
            .to_owned();
        let out = Command::new("bash")
            .arg(self.path("stop.sh"))
            .output()
            .expect("run stop.sh");
        assert_success(&out, "stop.sh");
        self.start_tpm(&tpm_port);
    }

    /// Kills the swtpm of `provision_tpm` with SIGKILL (a power loss: no TPM2_Shutdown).
    pub fn kill_tpm(&self) {
        let pid = std::fs::read_to_string(self.path("swtpm.pid"))
            .unwrap()
            .trim()
            .to_owned();
        assert_success(
            &Command::new("kill").args(["-KILL", &pid]).output().unwrap(),
            "kill -KILL swtpm",
        );
        let proc_dir = PathBuf::from(format!("/proc/{pid}"));
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while proc_dir.exists() && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        let _ = std::fs::remove_file(self.path("swtpm.pid"));
    }

    /// Starts the swtpm of `provision_tpm` again on its state and port (provision.sh run
    /// again): TPM2_Startup(CLEAR) and the synthetic boot measured again.
    pub fn restart_tpm(&self) {
        let tpm_port = std::fs::read_to_string(self.path("swtpm.port"))
            .unwrap()
            .trim()
            .to_owned();
        self.start_tpm(&tpm_port);
    }

    fn start_tpm(&self, tpm_port: &str) {
        let out = Command::new("bash")
            .arg(repo().join("softhsm-setup/provision.sh"))
            .arg(self.dir.path())
            .args([
                "--port",
                &self.port.to_string(),
                "--tpm",
                "--tpm-port",
                tpm_port,
            ])
            .env("SEB_BIN", env!("CARGO_BIN_EXE_seb"))
            .output()
            .expect("run provision.sh");
        assert_success(&out, "provision.sh --tpm (reboot)");
        assert!(
            String::from_utf8_lossy(&out.stdout).contains("synthetic boot measured"),
            "{}",
            String::from_utf8_lossy(&out.stdout)
        );
    }

    /// Runs a tpm2-tools command against the provisioned swtpm.
    pub fn tpm_tool(&self, args: &[&str]) -> Output {
        Command::new(args[0])
            .args(&args[1..])
            .env("TPM2TOOLS_TCTI", self.tcti())
            .output()
            .expect("tpm2-tools are installed")
    }

    /// Provisions with `--postgres` (a throwaway PostgreSQL cluster of its own under the
    /// directory, `[store] backend = "postgres"` in seb.toml) and runs `seb init`, which
    /// creates the schema.
    pub fn initialised_postgres() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let port = free_port();
        let out = Command::new("bash")
            .arg(repo().join("softhsm-setup/provision.sh"))
            .arg(dir.path())
            .args(["--port", &port.to_string(), "--postgres"])
            .output()
            .expect("run provision.sh");
        let hsm = Self { dir, port };
        assert!(
            out.status.success(),
            "provision.sh --postgres failed (is postgresql installed?):\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        hsm.seb_ok(&["init"]);
        hsm
    }

    /// Stops the PostgreSQL cluster of `--postgres` (fast shutdown: open connections end).
    pub fn pg_stop(&self) {
        let out = Command::new("bash")
            .arg(self.path("pg-stop.sh"))
            .output()
            .unwrap();
        assert_success(&out, "pg-stop.sh");
    }

    /// Starts it again on the same port and waits until it accepts connections.
    pub fn pg_start(&self) {
        let out = Command::new("bash")
            .arg(self.path("pg-start.sh"))
            .output()
            .unwrap();
        assert_success(&out, "pg-start.sh");
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

    /// The SQLite store's audit entries of `kind`, read now.
    pub fn audit_entries(&self, kind: &str) -> Vec<serde_json::Value> {
        use seb::store::Store;
        let store = seb::store::sqlite::SqliteStore::open(&self.path("state")).unwrap();
        let size = store.audit_size().unwrap();
        store
            .audit_entries(0, size)
            .unwrap()
            .into_iter()
            .map(|(_, text)| serde_json::from_str::<serde_json::Value>(&text).unwrap())
            .filter(|e| e["kind"] == kind)
            .collect()
    }

    /// [`Hsm::audit_entries`] once there are `count` of them, or whatever there is after 10 s
    /// (refusals are logged without holding the answer back).
    pub fn audit_entries_eventually(&self, kind: &str, count: usize) -> Vec<serde_json::Value> {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            let found = self.audit_entries(kind);
            if found.len() >= count || std::time::Instant::now() > deadline {
                return found;
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
    }

    pub fn config(&self) -> PathBuf {
        self.path("seb.toml")
    }

    pub fn trust(&self, name: &str) -> PathBuf {
        self.path("state/trust").join(name)
    }

    /// Replaces the first `from` in seb.toml (which must hold it) with `to`.
    pub fn edit_config(&self, from: &str, to: &str) {
        let config = std::fs::read_to_string(self.config()).unwrap();
        assert!(config.contains(from), "seb.toml has no {from:?}:\n{config}");
        std::fs::write(self.config(), config.replacen(from, to, 1)).unwrap();
    }

    /// Opens this token in-process with `sessions` pool sessions. The caller must point the
    /// process's SoftHSM2 at this token first (`SOFTHSM2_CONF`, see `softhsm_conf`).
    pub fn backend(&self, sessions: usize) -> seb::backend::pkcs11::Pkcs11Backend {
        seb::backend::pkcs11::Pkcs11Backend::open(seb::backend::pkcs11::Pkcs11Settings {
            module: module().into(),
            token: seb::backend::pkcs11::TokenSelector {
                label: "seb".into(),
                serial: None,
            },
            pin: self.user_pin().into(),
            sessions,
        })
        .unwrap()
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

    /// Makes a key + CSR with `seb keygen` and issues a certificate for 30 days; returns the
    /// cert path.
    pub fn issue(&self, name: &str, subject: &str, role: &str, extra: &[&str]) -> PathBuf {
        self.issue_for("30d", name, subject, role, extra)
    }

    /// `seb cert revoke --serial SERIAL --reason key-compromise`: a stolen key.
    pub fn revoke_compromised(&self, serial: &str) {
        self.revoke_for(serial, "key-compromise");
    }

    /// `seb cert revoke --serial SERIAL --reason REASON`.
    pub fn revoke_for(&self, serial: &str, reason: &str) {
        self.seb_ok(&["cert", "revoke", "--serial", serial, "--reason", reason]);
    }

    /// `seb cert revoke --unknown` of a certificate the issuance record does not hold (those
    /// `seb init` made: the service certificates, the attestation key's), into the root's CRL.
    pub fn revoke_unrecorded(&self, serial: &str, reason: &str) {
        self.seb_ok(&[
            "cert",
            "revoke",
            "--serial",
            serial,
            "--reason",
            reason,
            "--unknown",
        ]);
    }

    /// `seb cert issue-ca --label LABEL --subject SUBJECT --ttl 60d` with `extra`; returns the
    /// path of the intermediate's certificate (`LABEL.pem`).
    pub fn issue_ca(&self, label: &str, subject: &str, extra: &[&str]) -> PathBuf {
        let out = self.path(&format!("{label}.pem"));
        let mut args = vec![
            "cert",
            "issue-ca",
            "--label",
            label,
            "--subject",
            subject,
            "--ttl",
            "60d",
            "--out",
            out.to_str().unwrap(),
        ];
        args.extend_from_slice(extra);
        self.seb_ok(&args);
        out
    }

    /// As [`Hsm::issue`], valid for `ttl`.
    pub fn issue_for(
        &self,
        ttl: &str,
        name: &str,
        subject: &str,
        role: &str,
        extra: &[&str],
    ) -> PathBuf {
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
            ttl,
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

/// A CSR for a fresh P-256 key (`key`) made by openssl in `dir` with the UTF-8 `subject`
/// (`/A=x/B=y`, attributes in that order) and `extra` options (`-config FILE`).
pub fn openssl_csr(dir: &Path, key: &Path, subject: &str, csr: &Path, extra: &[&str]) {
    let mut args = vec![
        "req",
        "-new",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
        "-keyout",
        key.to_str().unwrap(),
        "-utf8",
        "-subj",
        subject,
        "-out",
        csr.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    let (ok, text) = openssl(&args, dir);
    assert!(ok, "openssl req: {text}");
}

/// The serial `openssl x509 -noout -serial` prints for the certificate (the first of a chain)
/// in `cert`.
pub fn openssl_serial(cert: &Path) -> String {
    let dir = cert.parent().unwrap_or(Path::new("."));
    let (ok, out) = openssl(
        &["x509", "-noout", "-serial", "-in", cert.to_str().unwrap()],
        dir,
    );
    assert!(ok, "{out}");
    out.trim().trim_start_matches("serial=").to_owned()
}

/// A free port P on the loopback interface with P+1 also free (swtpm server + control).
pub fn free_port_pair() -> u16 {
    for _ in 0..100 {
        let p = free_port();
        if p < u16::MAX - 1 && std::net::TcpListener::bind(("127.0.0.1", p + 1)).is_ok() {
            return p;
        }
    }
    panic!("no pair of free ports");
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
        Self::start_with(hsm, &[], "broker.log")
    }

    /// Starts another replica of `hsm`'s broker on `port` (`serve --listen`), logging to
    /// `log_name` in the directory.
    pub fn start_replica(hsm: &Hsm, port: u16, log_name: &str) -> Self {
        Self::start_with(hsm, &["--listen", &format!("127.0.0.1:{port}")], log_name)
    }

    fn start_with(hsm: &Hsm, serve_args: &[&str], log_name: &str) -> Self {
        let log = hsm.path(log_name);
        let stderr = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .unwrap();
        let (child, url) = spawn_serving(
            Command::new(env!("CARGO_BIN_EXE_seb"))
                .args(["--config", hsm.config().to_str().unwrap(), "serve"])
                .args(serve_args)
                .current_dir(hsm.dir.path())
                .env("RUST_LOG", "info"),
            stderr,
            &log,
            "broker",
        );
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

    /// The token's private keys as an independent PKCS#11 client (OpenSC's pkcs11-tool)
    /// lists them.
    pub fn pkcs11_private_keys(&self) -> String {
        let out = Command::new("pkcs11-tool")
            .env("SOFTHSM2_CONF", self.softhsm_conf())
            .args([
                "--module",
                &module(),
                "--token-label",
                "seb",
                "--login",
                "--pin",
                &self.user_pin(),
                "--list-objects",
                "--type",
                "privkey",
            ])
            .output()
            .expect("pkcs11-tool (opensc) is installed");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
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

/// A running swtpm with its own state directory and loopback ports, manufactured by
/// `swtpm_setup` with an EK certificate signed by a per-instance test EK CA (ECDSA P-384).
/// On drop it gets an orderly TPM2_Shutdown, is told to exit and is killed if it lingers, so a
/// restart never counts as a dictionary-attack failure. A missing swtpm fails the test.
pub struct Swtpm {
    pub dir: tempfile::TempDir,
    pub port: u16,
    child: Option<std::process::Child>,
}

impl Swtpm {
    /// Manufactures a fresh TPM (EK + EK certificate) and starts it.
    pub fn start() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let d = dir.path();
        let state = d.join("state");
        let ca = d.join("ek-ca");
        std::fs::create_dir_all(&state).unwrap();
        std::fs::create_dir_all(&ca).unwrap();
        let (ok, text) = openssl(
            &[
                "ecparam",
                "-name",
                "secp384r1",
                "-genkey",
                "-noout",
                "-out",
                "ek-ca/signkey.pem",
            ],
            d,
        );
        assert!(ok, "openssl ecparam: {text}");
        let (ok, text) = openssl(
            &[
                "req",
                "-new",
                "-x509",
                "-key",
                "ek-ca/signkey.pem",
                "-subj",
                "/CN=seb test EK CA",
                "-days",
                "3650",
                "-out",
                "ek-ca/issuercert.pem",
            ],
            d,
        );
        assert!(ok, "openssl req: {text}");
        std::fs::write(ca.join("certserial"), "1\n").unwrap();
        std::fs::write(
            d.join("localca.conf"),
            format!(
                "statedir = {ca}\nsigningkey = {ca}/signkey.pem\nissuercert = {ca}/issuercert.pem\ncertserial = {ca}/certserial\n",
                ca = ca.display()
            ),
        )
        .unwrap();
        std::fs::write(
            d.join("localca.options"),
            "--platform-manufacturer seb\n--platform-version 1\n--platform-model swtpm\n",
        )
        .unwrap();
        std::fs::write(
            d.join("swtpm_setup.conf"),
            format!(
                "create_certs_tool = /usr/bin/swtpm_localca\ncreate_certs_tool_config = {}\ncreate_certs_tool_options = {}\nactive_pcr_banks = sha256\n",
                d.join("localca.conf").display(),
                d.join("localca.options").display()
            ),
        )
        .unwrap();
        let out = Command::new("swtpm_setup")
            .args(["--tpm2", "--tpmstate"])
            .arg(&state)
            .args(["--create-ek-cert", "--config"])
            .arg(d.join("swtpm_setup.conf"))
            .output()
            .expect("swtpm_setup is installed (apt-get install swtpm swtpm-tools)");
        assert!(
            out.status.success(),
            "swtpm_setup failed:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let mut tpm = Self {
            dir,
            port: 0,
            child: None,
        };
        tpm.launch();
        tpm
    }

    /// Starts swtpm on fresh ports (or the current ones when restarting).
    fn launch(&mut self) {
        for _ in 0..20 {
            let port = if self.port != 0 {
                self.port
            } else {
                let p = free_port();
                if p >= u16::MAX - 1 || std::net::TcpListener::bind(("127.0.0.1", p + 1)).is_err() {
                    continue;
                }
                p
            };
            let log = std::fs::File::create(self.dir.path().join("swtpm.log")).unwrap();
            let mut child = Command::new("swtpm")
                .args(["socket", "--tpm2", "--tpmstate"])
                .arg(format!("dir={}", self.dir.path().join("state").display()))
                .arg("--server")
                .arg(format!("type=tcp,port={port},bindaddr=127.0.0.1"))
                .arg("--ctrl")
                .arg(format!("type=tcp,port={},bindaddr=127.0.0.1", port + 1))
                .args(["--flags", "not-need-init,startup-clear"])
                .stdout(log.try_clone().unwrap())
                .stderr(log)
                .spawn()
                .expect("swtpm is installed (apt-get install swtpm)");
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
            loop {
                if let Ok(Some(_)) = child.try_wait() {
                    break; // port taken or state locked: try again
                }
                if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                    self.port = port;
                    self.child = Some(child);
                    return;
                }
                if std::time::Instant::now() > deadline {
                    let _ = child.kill();
                    let _ = child.wait();
                    break;
                }
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            if self.port != 0 {
                std::thread::sleep(std::time::Duration::from_millis(200));
            }
        }
        panic!(
            "swtpm did not start:\n{}",
            std::fs::read_to_string(self.dir.path().join("swtpm.log")).unwrap_or_default()
        );
    }

    pub fn tcti(&self) -> String {
        format!("swtpm:host=127.0.0.1,port={}", self.port)
    }

    /// The PEM certificate of the EK CA that signed this TPM's EK certificate.
    pub fn ek_ca(&self) -> PathBuf {
        self.dir.path().join("ek-ca/issuercert.pem")
    }

    /// Runs a tpm2-tools command against this TPM (e.g. `["tpm2_pcrextend", "10:sha256=..."]`).
    pub fn tool(&self, args: &[&str]) -> Output {
        Command::new(args[0])
            .args(&args[1..])
            .env("TPM2TOOLS_TCTI", self.tcti())
            .output()
            .expect("tpm2-tools are installed")
    }

    /// Extends `pcr` (SHA-256 bank) with `digest_hex`, as tampering would.
    pub fn extend(&self, pcr: u8, digest_hex: &str) {
        let out = self.tool(&["tpm2_pcrextend", &format!("{pcr}:sha256={digest_hex}")]);
        assert_success(&out, "tpm2_pcrextend");
    }

    /// Orderly stop: TPM2_Shutdown, then swtpm exits.
    pub fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        let _ = self.tool(&["tpm2_shutdown"]);
        let _ = Command::new("swtpm_ioctl")
            .args(["--tcp", &format!("127.0.0.1:{}", self.port + 1), "-s"])
            .output();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while std::time::Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        let _ = child.kill();
        let _ = child.wait();
    }

    /// Kills swtpm without a TPM2_Shutdown (a power loss): counts toward DA lockout for
    /// objects without noDA.
    pub fn kill_uncleanly(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts swtpm again on the same state and ports.
    pub fn restart(&mut self) {
        self.stop();
        self.launch();
    }

    /// Starts it again after [`Swtpm::kill_uncleanly`] or [`Swtpm::stop`].
    pub fn start_again(&mut self) {
        self.launch();
    }
}

impl Drop for Swtpm {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Grants for the agents of the TPM tests.
pub const TPM_TEST_GRANTS: &str = r#"
[[grant]]
operation = "deploy.rollout"
resource  = "prod/payments/*"
max_ttl   = "30s"
params_any = true
"#;

/// The PCR and digest of the broker image measurement in the synthetic boot, read from the
/// checked-in event log (firmware-config/swtpm-eventlog.json).
pub fn broker_image_event() -> (u8, String) {
    let log: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(repo().join("firmware-config/swtpm-eventlog.json")).unwrap(),
    )
    .unwrap();
    let event = log["events"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| {
            e["data"]
                .as_str()
                .is_some_and(|d| d.starts_with("seb broker image"))
        })
        .expect("the synthetic event log measures the broker image");
    (
        u8::try_from(event["pcr"].as_u64().unwrap()).unwrap(),
        event["digest"].as_str().unwrap().to_owned(),
    )
}

/// The same certificate with the other ECDSA spelling of its issuer's P-384 signature,
/// `(r, n − s)`: still valid under the issuer's key, but other DER bytes, so another SHA-256
/// thumbprint. What a client can make of its own certificate without any key.
pub fn other_spelling(pem: &[u8]) -> String {
    use der::{Decode, Encode};
    /// The certificate's three parts, the signed one untouched.
    #[derive(der::Sequence)]
    struct Parts {
        tbs: der::asn1::Any,
        algorithm: spki::AlgorithmIdentifierOwned,
        signature: der::asn1::BitString,
    }
    let cert = seb::cert::Certificate::parse(pem).unwrap();
    let mut parts = Parts::from_der(&cert.to_der_bytes().unwrap()).unwrap();
    let sig = p384::ecdsa::Signature::from_der(parts.signature.raw_bytes()).unwrap();
    let (r, s) = sig.split_scalars();
    let other = p384::ecdsa::Signature::from_scalars(r.to_bytes(), (-*s).to_bytes()).unwrap();
    parts.signature = der::asn1::BitString::from_bytes(other.to_der().as_bytes()).unwrap();
    seb::cert::Certificate::parse(&parts.to_der().unwrap())
        .unwrap()
        .to_pem_string()
        .unwrap()
}

/// A broker in this process on the token of `hsm`, for driving the router without a socket
/// (`Router::oneshot`). Points this process's SoftHSM2 at the token through the environment,
/// so a test binary using it must hold one test.
pub fn in_process_broker(hsm: &Hsm) -> std::sync::Arc<seb::broker::Broker> {
    use seb::backend::pkcs11::{Pkcs11Backend, Pkcs11Settings, TokenSelector};
    use seb::config::{BackendConfig, Config};
    std::env::set_var("SOFTHSM2_CONF", hsm.softhsm_conf());
    let config = Config::load(&hsm.config()).unwrap();
    let BackendConfig::Pkcs11(p) = &config.backend else {
        panic!("pkcs11 expected")
    };
    let backend: std::sync::Arc<dyn seb::backend::KeyBackend> = std::sync::Arc::new(
        Pkcs11Backend::open(Pkcs11Settings {
            module: p.module.clone(),
            token: TokenSelector {
                label: p.token_label.clone(),
                serial: None,
            },
            pin: p.read_pin().unwrap(),
            sessions: 1,
        })
        .unwrap(),
    );
    let store =
        std::sync::Arc::new(seb::store::sqlite::SqliteStore::open(&config.state_dir).unwrap());
    std::sync::Arc::new(seb::broker::Broker::new(config, backend, store).unwrap())
}

/// A certificate for `role` and the key `leaf_key`, made by an offline CA (`issuer`, whose
/// key `key` is held outside the broker) with `x509-cert`'s builder: what a CA that is not
/// seb's would sign, bypassing seb's issuance checks. Valid for a day from now.
pub fn offline_leaf(
    issuer: &seb::cert::Certificate,
    key: &p384::ecdsa::SigningKey,
    subject: &str,
    role: seb::grants::Role,
    grants: Option<seb::grants::GrantSet>,
    leaf_key: &p384::ecdsa::SigningKey,
) -> seb::cert::Certificate {
    let mut extra = vec![seb::ca::role_extension(&role).unwrap()];
    if let Some(grants) = &grants {
        extra.push(seb::ca::grants_extension(grants).unwrap());
    }
    let der = offline_leaf_der(issuer, key, subject, extra, leaf_key);
    seb::cert::Certificate::parse(&der).unwrap()
}

/// The DER of a leaf an offline intermediate signed, with `extra` extensions as given (also
/// ones seb would refuse to parse, such as one twice).
pub fn offline_leaf_der(
    issuer: &seb::cert::Certificate,
    key: &p384::ecdsa::SigningKey,
    subject: &str,
    extra: Vec<x509_cert::ext::Extension>,
    leaf_key: &p384::ecdsa::SigningKey,
) -> Vec<u8> {
    use x509_cert::builder::{Builder, CertificateBuilder};

    let profile = OfflineProfile {
        issuer: issuer.tbs().subject().clone(),
        subject: seb::ca::parse_subject(subject).unwrap(),
        extra,
    };
    let builder = CertificateBuilder::new(
        profile,
        seb::ca::random_serial().unwrap(),
        seb::ca::validity_from(
            std::time::SystemTime::now(),
            std::time::Duration::from_secs(86_400),
        )
        .unwrap(),
        spki::SubjectPublicKeyInfoOwned::from_key(leaf_key.verifying_key()).unwrap(),
    )
    .unwrap();
    let cert = builder.build::<_, p384::ecdsa::DerSignature>(key).unwrap();
    der::Encode::to_der(&cert).unwrap()
}

impl Hsm {
    /// An identity whose certificate an offline intermediate (`issuer`, key `issuer_key`)
    /// signed for `role`: `NAME.pem` holds the leaf and the intermediate, `NAME.key` its key.
    pub fn offline_identity(
        &self,
        name: &str,
        issuer: &seb::cert::Certificate,
        issuer_key: &p384::ecdsa::SigningKey,
        role: seb::grants::Role,
    ) -> Identity {
        use p384::elliptic_curve::Generate;
        use p384::pkcs8::EncodePrivateKey;
        let key = p384::ecdsa::SigningKey::try_generate().unwrap();
        let leaf = offline_leaf(issuer, issuer_key, &format!("CN={name}"), role, None, &key);
        let cert = self.path(&format!("{name}.pem"));
        std::fs::write(
            &cert,
            format!(
                "{}{}",
                leaf.to_pem_string().unwrap(),
                issuer.to_pem_string().unwrap()
            ),
        )
        .unwrap();
        let key_path = self.path(&format!("{name}.key"));
        let pem = key.to_pkcs8_pem(p384::pkcs8::LineEnding::LF).unwrap();
        std::fs::write(&key_path, pem.as_bytes()).unwrap();
        Identity {
            cert,
            key: key_path,
        }
    }

    /// An offline intermediate: a key made in software (`seb keygen`, standing for a key held
    /// elsewhere), certified by the root with `seb cert issue-ca --csr` and `extra` options
    /// (for 30 days unless they hold `--ttl`). Returns its certificate and key.
    pub fn offline_intermediate(
        &self,
        label: &str,
        extra: &[&str],
    ) -> (seb::cert::Certificate, p384::ecdsa::SigningKey) {
        use p384::pkcs8::DecodePrivateKey;
        let key = self.path(&format!("{label}-ca.key"));
        let csr = self.path(&format!("{label}-ca.csr"));
        let out = self.path(&format!("{label}-ca.pem"));
        self.seb_ok(&[
            "keygen",
            "--out-key",
            key.to_str().unwrap(),
            "--out-csr",
            csr.to_str().unwrap(),
            "--subject",
            &format!("CN={label}"),
        ]);
        let mut args = vec![
            "cert",
            "issue-ca",
            "--label",
            label,
            "--csr",
            csr.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
        ];
        if !extra.contains(&"--ttl") {
            args.extend(["--ttl", "30d"]);
        }
        args.extend_from_slice(extra);
        self.seb_ok(&args);
        let cert = seb::cert::Certificate::parse(&std::fs::read(&out).unwrap()).unwrap();
        let key = p384::ecdsa::SigningKey::from_pkcs8_pem(&std::fs::read_to_string(&key).unwrap())
            .unwrap();
        (cert, key)
    }
}

/// An end-entity profile for client certificates: basicConstraints cA=FALSE, digitalSignature,
/// clientAuth, key identifiers, then the given (seb) extensions.
struct OfflineProfile {
    issuer: x509_cert::name::Name,
    subject: x509_cert::name::Name,
    extra: Vec<x509_cert::ext::Extension>,
}

impl x509_cert::builder::profile::BuilderProfile for OfflineProfile {
    fn get_issuer(&self, _subject: &x509_cert::name::Name) -> x509_cert::name::Name {
        self.issuer.clone()
    }

    fn get_subject(&self) -> x509_cert::name::Name {
        self.subject.clone()
    }

    fn build_extensions(
        &self,
        spk: spki::SubjectPublicKeyInfoRef<'_>,
        issuer_spk: spki::SubjectPublicKeyInfoRef<'_>,
        _tbs: &x509_cert::TbsCertificate,
    ) -> x509_cert::builder::Result<Vec<x509_cert::ext::Extension>> {
        use x509_cert::ext::pkix::{
            AuthorityKeyIdentifier, BasicConstraints, ExtendedKeyUsage, KeyUsage, KeyUsages,
            SubjectKeyIdentifier,
        };
        use x509_cert::ext::ToExtension;
        let mut out = Vec::new();
        let ext = BasicConstraints {
            ca: false,
            path_len_constraint: None,
        }
        .to_extension(&self.subject, &out)?;
        out.push(ext);
        let ext = KeyUsage(KeyUsages::DigitalSignature.into()).to_extension(&self.subject, &out)?;
        out.push(ext);
        let client_auth = der::asn1::ObjectIdentifier::new_unwrap("1.3.6.1.5.5.7.3.2");
        let ext = ExtendedKeyUsage(vec![client_auth]).to_extension(&self.subject, &out)?;
        out.push(ext);
        let ext = SubjectKeyIdentifier::try_from(spk)?.to_extension(&self.subject, &out)?;
        out.push(ext);
        let ext = AuthorityKeyIdentifier {
            key_identifier: Some(SubjectKeyIdentifier::try_from(issuer_spk)?.0),
            ..Default::default()
        }
        .to_extension(&self.subject, &out)?;
        out.push(ext);
        out.extend(self.extra.iter().cloned());
        Ok(out)
    }
}

/// The Python interpreter of the test virtual environment that `deploy/install-deps.sh`
/// makes (with `cryptography` and PyJWT); `SEB_TEST_PYTHON` overrides it.
pub fn python() -> PathBuf {
    std::env::var_os("SEB_TEST_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/lib/seb-ci/interop-venv/bin/python"))
}

/// Spawns `command` (a server that prints its URL as the last word of its first stdout line,
/// as `seb serve`, `seb exec` and the Go executor do) with stderr into `stderr` (the file at
/// `log`), and waits up to 20 s for that line. Panics with the log when it does not come.
pub fn spawn_serving(
    command: &mut Command,
    stderr: std::fs::File,
    log: &Path,
    what: &str,
) -> (std::process::Child, String) {
    use std::io::{BufRead, BufReader};
    let mut child = command
        .stdout(std::process::Stdio::piped())
        .stderr(stderr)
        .spawn()
        .unwrap_or_else(|e| panic!("start the {what}: {e}"));
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
                "the {what} did not start:\n{}",
                std::fs::read_to_string(log).unwrap_or_default()
            )
        });
    let url = line
        .rsplit(' ')
        .next()
        .filter(|u| u.starts_with("https://"))
        .unwrap_or_else(|| panic!("unexpected first line of the {what}: {line:?}"))
        .to_owned();
    (child, url)
}

/// A small tmpfs mounted for one test, unmounted on drop.
pub struct SmallFs(pub PathBuf);

impl SmallFs {
    /// Mounts a tmpfs of `size` (`2m`) at `path` (tests run as root).
    pub fn mount(path: PathBuf, size: &str) -> Self {
        std::fs::create_dir_all(&path).unwrap();
        let status = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(&path)
            .status()
            .expect("mount (tests run as root)");
        assert!(
            status.success(),
            "cannot mount a tmpfs at {}",
            path.display()
        );
        Self(path)
    }
}

impl Drop for SmallFs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

impl Hsm {
    /// Moves the initialised state directory (store and trust files) onto a small filesystem
    /// of `size`, and points the configuration at it: a disk that can be filled.
    pub fn state_on_small_fs(&self, size: &str) -> SmallFs {
        let fs = SmallFs::mount(self.path("small-state"), size);
        let copied = Command::new("cp")
            .arg("-a")
            .arg(format!("{}/.", self.path("state").display()))
            .arg(&fs.0)
            .status()
            .unwrap();
        assert!(copied.success(), "cp -a state");
        let config = std::fs::read_to_string(self.config()).unwrap();
        std::fs::write(
            self.config(),
            config.replace("state_dir = \"state\"", "state_dir = \"small-state\""),
        )
        .unwrap();
        fs
    }
}
