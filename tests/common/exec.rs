//! A real `seb exec` (the reference executor) for integration tests.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use super::{Broker, Hsm, Identity};

/// The grants of an agent that may run the demo's `demo.write` with any parameters.
pub const DEMO_WRITE_GRANTS: &str = r#"
[[grant]]
operation = "demo.write"
resource = "demo/files"
max_ttl = "60s"
params_any = true
"#;

/// The executor's certificate (`executor.pem`, `executor.key` in the test directory): the
/// executor role, serving HTTPS on 127.0.0.1 and localhost.
pub fn identity(hsm: &Hsm) -> Identity {
    hsm.identity(
        "executor",
        "CN=demo-executor",
        "executor",
        &["--tls-name", "127.0.0.1", "--tls-name", "localhost"],
    )
}

/// A running `seb exec`; stopped with SIGTERM on drop.
pub struct Executor {
    /// The `seb exec` process.
    pub child: std::process::Child,
    /// `https://127.0.0.1:PORT`.
    pub url: String,
}

impl Executor {
    /// Starts `seb exec` with the certificate of [`identity`] (issued before) and one action,
    /// `demo.write` on `demo/files` (`seb demo-write` into the returned folder).
    pub fn demo_write(hsm: &Hsm, broker: &Broker) -> (Executor, PathBuf) {
        let out = hsm.path("demo-output");
        std::fs::create_dir_all(&out).unwrap();
        let config = hsm.path("executor.toml");
        std::fs::write(
            &config,
            format!(
                r#"
listen = "127.0.0.1:{port}"
broker_url = "{broker}"
broker_id = "seb-dev"
root = "state/trust/root.pem"
cert = "executor.pem"
key = "executor.key"

[[action]]
operation = "demo.write"
resource = "demo/files"
argv = ["{seb}", "demo-write", "--dir", "{out}", "--", "{{name}}", "{{text}}"]
timeout = "10s"
"#,
                port = super::free_port(),
                broker = broker.url,
                seb = env!("CARGO_BIN_EXE_seb"),
                out = out.display(),
            ),
        )
        .unwrap();
        (Executor::start(hsm, &config), out)
    }

    /// Starts `seb exec --config CONFIG` in the test directory and waits for its first line
    /// (the URL it serves).
    pub fn start(hsm: &Hsm, config: &Path) -> Executor {
        let log = std::fs::File::create(hsm.path("executor.log")).unwrap();
        let mut child = Command::new(env!("CARGO_BIN_EXE_seb"))
            .args(["exec", "--config", config.to_str().unwrap()])
            .current_dir(hsm.dir.path())
            .env_remove("SEB_CONFIG")
            .env("RUST_LOG", "info")
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .unwrap();
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
            .recv_timeout(Duration::from_secs(20))
            .unwrap_or_else(|_| {
                panic!(
                    "executor did not start:\n{}",
                    std::fs::read_to_string(hsm.path("executor.log")).unwrap_or_default()
                )
            });
        let url = line.rsplit(' ').next().unwrap().to_owned();
        assert!(url.starts_with("https://"), "{line}");
        Executor { child, url }
    }
}

impl Drop for Executor {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let _ = self.child.wait();
    }
}
