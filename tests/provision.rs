//! `softhsm-setup/provision.sh` when something goes wrong half-way: whatever it started can
//! always be stopped with the `stop.sh` it writes, and a missing `seb` binary is found before
//! anything is started (issue: provisioning left a running swtpm and no stop script).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use common::{free_port, free_port_pair, repo};

fn provision_tpm(dir: &Path, seb_bin: &str) -> Output {
    Command::new("bash")
        .arg(repo().join("softhsm-setup/provision.sh"))
        .arg(dir)
        .args([
            "--port",
            &free_port().to_string(),
            "--tpm",
            "--tpm-port",
            &free_port_pair().to_string(),
        ])
        .env("SEB_BIN", seb_bin)
        .output()
        .expect("run provision.sh")
}

fn alive(pid: &str) -> bool {
    Path::new(&format!("/proc/{}", pid.trim())).exists()
}

#[test]
fn a_failure_after_the_swtpm_started_leaves_a_stop_script_that_stops_it() {
    let dir = tempfile::tempdir().unwrap();
    // `attest record` is the last step and needs the seb binary: /bin/false fails it after
    // the swtpm is running.
    let out = provision_tpm(dir.path(), "/bin/false");
    assert!(!out.status.success(), "provisioning must fail");
    let pid = std::fs::read_to_string(dir.path().join("swtpm.pid"))
        .expect("the swtpm was started before the failing step");
    assert!(alive(&pid), "the swtpm is still running after the failure");
    let stop = dir.path().join("stop.sh");
    assert!(stop.exists(), "stop.sh must exist after a failed run");
    let stopped = Command::new("bash").arg(&stop).output().unwrap();
    assert!(stopped.status.success());
    let deadline = Instant::now() + Duration::from_secs(5);
    while alive(&pid) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(!alive(&pid), "stop.sh stopped the swtpm");
}

#[test]
fn a_missing_seb_binary_is_reported_before_anything_starts() {
    let dir = tempfile::tempdir().unwrap();
    let out = provision_tpm(dir.path(), "/nonexistent/seb");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("SEB_BIN"), "says how to fix it: {stderr}");
    assert!(
        !dir.path().join("swtpm.pid").exists(),
        "no swtpm was started: {stderr}"
    );
    assert!(dir.path().join("stop.sh").exists());
}

/// A TPM port taken by someone else (another test, another service) is named, with the
/// swtpm's own reason, instead of a silent exit after "manufactured an swtpm"; the test
/// helpers retry on other ports when they see it.
#[test]
fn a_taken_tpm_port_is_reported_with_the_swtpm_reason() {
    let dir = tempfile::tempdir().unwrap();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let out = Command::new("bash")
        .arg(repo().join("softhsm-setup/provision.sh"))
        .arg(dir.path())
        .args(["--port", &free_port().to_string(), "--tpm"])
        .args(["--tpm-port", &port.to_string()])
        .env("SEB_BIN", env!("CARGO_BIN_EXE_seb"))
        .output()
        .expect("run provision.sh");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "provisioning must fail");
    assert!(
        stderr.contains(&format!("swtpm did not start on 127.0.0.1:{port}"))
            && stderr.contains("Address already in use"),
        "{stderr}"
    );
    let _ = Command::new("bash")
        .arg(dir.path().join("stop.sh"))
        .output();
    drop(taken);
}

/// The postmaster's pid of the cluster in `dir`, while it runs.
fn postmaster(dir: &Path) -> Option<String> {
    let text = std::fs::read_to_string(dir.join("postgres/data/postmaster.pid")).ok()?;
    let pid = text.lines().next()?.trim().to_owned();
    alive(&pid).then_some(pid)
}

#[test]
fn a_postgres_cluster_is_provisioned_once_runs_as_postgres_and_stop_stops_it() {
    let dir = tempfile::tempdir().unwrap();
    let provision = || {
        Command::new("bash")
            .arg(repo().join("softhsm-setup/provision.sh"))
            .arg(dir.path())
            .args(["--port", &free_port().to_string(), "--postgres"])
            .output()
            .unwrap()
    };
    common::assert_success(&provision(), "provision.sh --postgres");
    let config = std::fs::read_to_string(dir.path().join("seb.toml")).unwrap();
    let port = std::fs::read_to_string(dir.path().join("pg.port")).unwrap();
    assert!(
        config.contains(&format!(
            "url = \"postgres://seb@127.0.0.1:{}/seb\"",
            port.trim()
        )),
        "{config}"
    );
    assert!(!config.contains(
        std::fs::read_to_string(dir.path().join("pg.password"))
            .unwrap()
            .trim()
    ));
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let secret = std::fs::metadata(dir.path().join("pg.password")).unwrap();
    assert_eq!(
        secret.permissions().mode() & 0o077,
        0,
        "the password file is private"
    );
    let pid = postmaster(dir.path()).expect("the cluster runs");
    // The server refuses root: it runs as the postgres user.
    let owner = std::fs::metadata(format!("/proc/{pid}")).unwrap().uid();
    assert_ne!(owner, 0, "postgres runs as root");
    // A second run changes nothing and keeps the same server.
    let before = std::fs::read(dir.path().join("seb.toml")).unwrap();
    common::assert_success(&provision(), "provision.sh --postgres again");
    assert_eq!(std::fs::read(dir.path().join("seb.toml")).unwrap(), before);
    assert_eq!(postmaster(dir.path()).as_deref(), Some(pid.as_str()));
    // stop.sh stops it.
    let out = Command::new("bash")
        .arg(dir.path().join("stop.sh"))
        .output()
        .unwrap();
    common::assert_success(&out, "stop.sh");
    let deadline = Instant::now() + Duration::from_secs(10);
    while alive(&pid) {
        assert!(
            Instant::now() < deadline,
            "postgres still runs after stop.sh"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A re-run keeps the configuration it finds (idempotent), and says so when `--port` asks for
/// another port than the one it keeps.
#[test]
fn a_rerun_with_another_port_keeps_the_configuration_and_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let provision = |port: u16, exec_port: u16| {
        Command::new("bash")
            .arg(repo().join("softhsm-setup/provision.sh"))
            .arg(dir.path())
            .args(["--port", &port.to_string()])
            .args(["--executor-port", &exec_port.to_string()])
            .env("SEB_BIN", env!("CARGO_BIN_EXE_seb"))
            .output()
            .expect("run provision.sh")
    };
    let ports: Vec<u16> = (0..16).map(|_| free_port()).collect();
    let mut distinct = ports.clone();
    distinct.sort_unstable();
    distinct.dedup();
    let [first, second, exec_first, exec_second] = distinct[..4] else {
        panic!("no four distinct free ports in {ports:?}")
    };
    common::assert_success(&provision(first, exec_first), "provision.sh");
    let again = provision(first, exec_first);
    common::assert_success(&again, "provision.sh again");
    assert!(!String::from_utf8_lossy(&again.stderr).contains("warning"));
    let other = provision(second, exec_second);
    common::assert_success(&other, "provision.sh with other ports");
    let stderr = String::from_utf8_lossy(&other.stderr);
    assert!(
        stderr.contains(&format!(
            "listens on 127.0.0.1:{first}, not on port {second}"
        )),
        "{stderr}"
    );
    assert!(
        stderr.contains(&format!(
            "executor.toml exists and listens on 127.0.0.1:{exec_first}, not on port {exec_second}"
        )),
        "{stderr}"
    );
    let config = std::fs::read_to_string(dir.path().join("seb.toml")).unwrap();
    assert!(
        config.contains(&format!("listen = \"127.0.0.1:{first}\"")),
        "{config}"
    );
}
