//! A real `seb exec` (the reference executor) for integration tests.

use std::path::{Path, PathBuf};
use std::process::Command;

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

/// Writes `executor.toml` in the test directory: the certificate of [`identity`], `extra`
/// top-level lines (e.g. `approvers = "approvers.pem"`), and a `demo.write` action (`seb
/// demo-write` into `out`, created here) for each of `resources`.
pub fn config(hsm: &Hsm, broker: &Broker, out: &Path, extra: &str, resources: &[&str]) -> PathBuf {
    std::fs::create_dir_all(out).unwrap();
    let actions: String = resources
        .iter()
        .map(|resource| {
            format!(
                r#"
[[action]]
operation = "demo.write"
resource = "{resource}"
argv = ["{seb}", "demo-write", "--dir", "{out}", "--", "{{name}}", "{{text}}"]
timeout = "10s"
"#,
                seb = env!("CARGO_BIN_EXE_seb"),
                out = out.display(),
            )
        })
        .collect();
    with_actions(hsm, broker, "executor.toml", extra, &actions)
}

/// Writes `name` in the test directory: an executor configuration with the certificate of
/// [`identity`], `extra` top-level lines and the `[[action]]` tables in `actions`.
pub fn with_actions(hsm: &Hsm, broker: &Broker, name: &str, extra: &str, actions: &str) -> PathBuf {
    let config = hsm.path(name);
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
{extra}
{actions}"#,
            port = super::free_port(),
            broker = broker.url,
        ),
    )
    .unwrap();
    config
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
        let config = config(hsm, broker, &out, "", &["demo/files"]);
        (Executor::start(hsm, &config), out)
    }

    /// Starts `seb exec --config CONFIG` in the test directory and waits for its first line
    /// (the URL it serves).
    pub fn start(hsm: &Hsm, config: &Path) -> Executor {
        let log = hsm.path("executor.log");
        let (child, url) = super::spawn_serving(
            Command::new(env!("CARGO_BIN_EXE_seb"))
                .args(["exec", "--config", config.to_str().unwrap()])
                .current_dir(hsm.dir.path())
                .env_remove("SEB_CONFIG")
                .env("RUST_LOG", "info"),
            std::fs::File::create(&log).unwrap(),
            &log,
            "executor",
        );
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
