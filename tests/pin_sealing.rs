//! PIN sealing end to end: each test provisions its own SoftHSM2 token and swtpm
//! (`provision.sh --tpm`), seals the user PIN with `seb init --seal-pin`, switches the broker to
//! `pin_sealed` with the plain PIN file moved away, and checks that the broker starts only in
//! the sealed boot state, only with the TPM that sealed it, and never shows the PIN.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::{runtime, Broker, Hsm, Identity, Swtpm};
use seb::client::Client;
use serde_json::json;

/// A broker whose PIN is sealed; `pin` is the real PIN, kept only to look for leaks.
struct Sealed {
    hsm: Hsm,
    pin: String,
    agent: Identity,
    /// Every output seen, to check none shows the PIN.
    seen: Vec<String>,
}

impl Sealed {
    fn setup() -> Self {
        let hsm = Hsm::provision_tpm(false);
        let pin = hsm.user_pin();
        let out = hsm.seb(&["init", "--seal-pin"]);
        common::assert_success(&out, "seb init --seal-pin");
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(stdout.contains("sealed the HSM user PIN"), "{stdout}");
        let sealed = hsm.path("state/pin.sealed");
        // The line to paste names the file absolutely: the configuration's relative paths are
        // relative to the configuration file, not to where `seb` ran.
        let absolute = std::fs::canonicalize(&sealed).unwrap();
        assert!(
            stdout.contains(&format!("pin_sealed = \"{}\"", absolute.display())),
            "{stdout}"
        );
        assert_eq!(mode(&sealed), 0o600);
        let agent = hsm.agent("deploy-bot", common::TPM_TEST_GRANTS);
        // Switch to the sealed PIN and take the plain one away: nothing may fall back to it.
        let config = std::fs::read_to_string(hsm.config()).unwrap();
        assert!(config.contains("pin_file = \"user.pin\""));
        std::fs::write(
            hsm.config(),
            config.replace(
                "pin_file = \"user.pin\"",
                "pin_sealed = \"state/pin.sealed\"",
            ),
        )
        .unwrap();
        std::fs::rename(hsm.path("user.pin"), hsm.path("user.pin.escrow")).unwrap();
        let mut s = Self {
            hsm,
            pin,
            agent,
            seen: Vec::new(),
        };
        s.record(&out);
        s
    }

    fn seb(&mut self, args: &[&str]) -> Output {
        let out = self.hsm.seb(args);
        self.record(&out);
        out
    }

    fn record(&mut self, out: &Output) {
        self.seen
            .push(String::from_utf8_lossy(&out.stdout).into_owned());
        self.seen
            .push(String::from_utf8_lossy(&out.stderr).into_owned());
    }

    /// `seb serve` must refuse to start: runs it with a deadline and returns its output.
    fn serve_refused(&mut self) -> Output {
        let mut child = Command::new(env!("CARGO_BIN_EXE_seb"))
            .args(["--config", self.hsm.config().to_str().unwrap(), "serve"])
            .current_dir(self.hsm.dir.path())
            .env("RUST_LOG", "debug")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        while child.try_wait().unwrap().is_none() {
            if Instant::now() > deadline {
                let _ = child.kill();
                let out = child.wait_with_output().unwrap();
                panic!(
                    "seb serve started although the PIN must not unseal:\n{}",
                    String::from_utf8_lossy(&out.stdout)
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let out = child.wait_with_output().unwrap();
        self.record(&out);
        out
    }

    fn broker_issues_a_token(&mut self) {
        let broker = Broker::start(&self.hsm);
        let tls = self.hsm.tls(&self.agent, true);
        let r = runtime().block_on(async {
            let mut client = Client::connect(&broker.url, &tls).await.unwrap();
            let body = json!({"operation": "deploy.rollout", "resource": "prod/payments/api", "params": {}});
            client
                .send(
                    "POST",
                    "/v1/executions",
                    Some(serde_json::to_vec(&body).unwrap()),
                )
                .await
                .unwrap()
        });
        assert_eq!(r.status, 201, "{}", r.text);
        let mut broker = broker;
        assert!(broker.stop(), "broker did not stop cleanly");
        self.seen.push(broker.log_text());
    }

    fn assert_pin_never_shown(&self) {
        assert!(self.pin.len() >= 16, "provisioned PINs are random and long");
        // Hex dumps split it at 16 characters: look for either half.
        for text in &self.seen {
            for part in [&self.pin[..], &self.pin[..16], &self.pin[16..]] {
                assert!(!text.contains(part), "the PIN was printed:\n{text}");
            }
        }
    }
}

fn mode(path: &std::path::Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

#[test]
fn sealed_pin_opens_the_hsm_only_in_the_sealed_boot_state() {
    let mut s = Sealed::setup();

    // Good state: the broker unseals at start and issues tokens.
    let out = s.seb(&["keys"]);
    common::assert_success(&out, "seb keys with the sealed PIN");
    // With the PIN sealed, `seb check` has no warning about attestation resting on a root
    // key any boot state could use (docs/ATTESTATION.md §5.2).
    let out = s.seb(&["check"]);
    assert!(
        !String::from_utf8_lossy(&out.stdout).contains("the PIN is not sealed"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    // tpm2-tss would hex-dump the decrypted PIN at trace level; seb caps it.
    let out = Command::new(env!("CARGO_BIN_EXE_seb"))
        .args(["--config", s.hsm.config().to_str().unwrap(), "keys"])
        .current_dir(s.hsm.dir.path())
        .env("TSS2_LOG", "all+trace")
        .env("RUST_LOG", "trace")
        .output()
        .unwrap();
    common::assert_success(&out, "seb keys with TSS2_LOG=all+trace");
    assert!(String::from_utf8_lossy(&out.stderr).contains("TSS2_LOG capped"));
    for half in [&s.pin[..16], &s.pin[16..]] {
        for text in [&out.stdout, &out.stderr] {
            assert!(
                !String::from_utf8_lossy(text).contains(half),
                "PIN in TSS trace"
            );
        }
    }
    s.record(&out);
    s.broker_issues_a_token();

    // Tampering: something unlogged is measured into the broker image PCR.
    let (image_pcr, _) = common::broker_image_event();
    let out = s.hsm.tpm_tool(&[
        "tpm2_pcrextend",
        &format!("{image_pcr}:sha256={}", "ab".repeat(32)),
    ]);
    common::assert_success(&out, "tpm2_pcrextend");
    let policy = seb::attest::AttestPolicy::load(&s.hsm.path("attest-policy.toml")).unwrap();
    let selection = policy
        .pcrs
        .iter()
        .map(u8::to_string)
        .collect::<Vec<_>>()
        .join(",");
    for out in [s.seb(&["keys"]), s.serve_refused()] {
        common::assert_clean_failure(&out, "the TPM refused to unseal the HSM PIN");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.contains(&format!("measured boot state (PCRs {selection}, sha256)")),
            "{stderr}"
        );
        assert!(
            stderr.contains(&format!("changed: PCR {image_pcr}")),
            "{stderr}"
        );
        assert!(stderr.contains("pin.sealed"), "{stderr}");
        // seb's own error, not tpm2-tss' log lines before it.
        assert!(!stderr.contains(":esys"), "{stderr}");
        assert!(!String::from_utf8_lossy(&out.stdout).contains("listening"));
    }
    // Re-sealing needs the PIN, which the tampered state cannot get.
    let out = s.seb(&["seal-pin"]);
    common::assert_clean_failure(&out, "the TPM refused to unseal the HSM PIN");

    // Repair: the PCR cannot be reset; a reboot (TPM2_Startup(CLEAR)) into the measured boot
    // brings back the sealed state, and the broker starts again.
    s.hsm.reboot_tpm();
    common::assert_success(&s.seb(&["keys"]), "seb keys after repair");
    s.broker_issues_a_token();
    // In the good state the sealed PIN can be re-sealed (e.g. to a new file).
    let out = s.seb(&["seal-pin", "--out", "state/pin2.sealed"]);
    common::assert_success(&out, "seb seal-pin from the sealed PIN");
    s.assert_pin_never_shown();
}

#[test]
fn sealed_pin_is_refused_by_another_tpm_and_without_a_tpm() {
    let mut s = Sealed::setup();
    common::assert_success(&s.seb(&["keys"]), "seb keys with the sealed PIN");

    // Another TPM (its own EK, owner seed and storage primary).
    let other = Swtpm::start();
    let config = std::fs::read_to_string(s.hsm.config()).unwrap();
    let ours = s.hsm.tcti();
    assert!(config.contains(&ours));
    std::fs::write(s.hsm.config(), config.replace(&ours, &other.tcti())).unwrap();
    for out in [s.seb(&["keys"]), s.serve_refused()] {
        common::assert_clean_failure(&out, "sealed by another TPM");
    }
    std::fs::write(s.hsm.config(), &config).unwrap();
    drop(other);

    // Our TPM gone: fail closed, no fallback to any other PIN source.
    common::assert_success(
        &Command::new("bash")
            .arg(s.hsm.path("stop.sh"))
            .output()
            .unwrap(),
        "stop.sh",
    );
    for out in [s.seb(&["keys"]), s.serve_refused()] {
        common::assert_clean_failure(&out, "cannot reach the TPM to unseal the HSM PIN");
    }
    s.assert_pin_never_shown();
}

#[test]
fn sealing_refuses_a_state_the_attestation_policy_rejects() {
    let hsm = Hsm::provision_tpm(false);
    let pin = hsm.user_pin();
    hsm.seb_ok(&["init"]);
    let (image_pcr, _) = common::broker_image_event();
    let out = hsm.tpm_tool(&[
        "tpm2_pcrextend",
        &format!("{image_pcr}:sha256={}", "cd".repeat(32)),
    ]);
    common::assert_success(&out, "tpm2_pcrextend");
    let out = hsm.seb(&["seal-pin"]);
    common::assert_clean_failure(&out, "not sealing: the current boot state");
    assert!(!hsm.path("state/pin.sealed").exists());
    for text in [&out.stdout, &out.stderr] {
        assert!(!String::from_utf8_lossy(text).contains(&pin));
    }
}

#[test]
fn the_pin_is_never_sealed_to_a_resettable_pcr() {
    // Software resets PCRs 16 and 23 from locality 0 and extends what the seal expects: a PIN
    // sealed to them is released to whoever does that.
    let tpm = Swtpm::start();
    let device = seb::tpm::Tpm::open(&tpm.tcti()).unwrap();
    let pin = secrecy::SecretString::from("0123456789abcdef0123456789abcdef".to_owned());
    for resettable in [16u8, 23] {
        let values =
            seb::attest::tpm::read_pcrs_of(&device, seb::attest::PcrBank::Sha256, &[0, resettable])
                .unwrap();
        let err = seb::attest::seal::SealedPin::seal(
            &device,
            seb::attest::PcrBank::Sha256,
            &values,
            &pin,
        )
        .expect_err("sealed to a resettable PCR")
        .to_string();
        assert!(err.contains("resettable_pcr"), "{err}");
        assert!(err.contains(&format!("PCR {resettable} ")), "{err}");
    }
    // Control: PCRs that only a reboot resets.
    let values =
        seb::attest::tpm::read_pcrs_of(&device, seb::attest::PcrBank::Sha256, &[0, 7, 10]).unwrap();
    let sealed =
        seb::attest::seal::SealedPin::seal(&device, seb::attest::PcrBank::Sha256, &values, &pin)
            .unwrap();
    use secrecy::ExposeSecret;
    assert_eq!(
        sealed.unseal(&device).unwrap().expose_secret(),
        pin.expose_secret()
    );
}

#[test]
fn a_pin_sealed_to_fewer_pcrs_than_the_policy_opens_nothing() {
    // Outside review: a blob sealed under a weaker policy (PCR 0 alone) opened the HSM while
    // the configured policy's PCR 10 showed a tampered boot.
    let mut s = Sealed::setup();
    let device = seb::tpm::Tpm::open(&s.hsm.tcti()).unwrap();
    let values =
        seb::attest::tpm::read_pcrs_of(&device, seb::attest::PcrBank::Sha256, &[0]).unwrap();
    let pin = secrecy::SecretString::from(s.pin.clone());
    let weak =
        seb::attest::seal::SealedPin::seal(&device, seb::attest::PcrBank::Sha256, &values, &pin)
            .unwrap();
    drop(device);
    std::fs::write(s.hsm.path("state/pin.sealed"), weak.encode().unwrap()).unwrap();
    for out in [s.seb(&["keys"]), s.serve_refused()] {
        common::assert_clean_failure(&out, "do not cover the attestation policy's PCRs");
    }
    let out = s.seb(&["check"]);
    assert!(!out.status.success());
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(
        text.contains("do not cover the attestation policy's PCRs"),
        "{text}"
    );
    s.assert_pin_never_shown();
}

#[test]
fn objects_a_killed_process_left_in_the_tpm_do_not_lock_seb_out() {
    // Outside review: a seb killed in the middle of a TPM batch leaves its transient objects
    // loaded in a TPM without a resource manager (swtpm here); after a few, every load failed
    // with "out of memory for object contexts", across restarts, until the TPM restarted.
    // tpm2-tools leave their objects loaded the same way.
    let mut s = Sealed::setup();
    let handles = |s: &Sealed| {
        let out = s.hsm.tpm_tool(&["tpm2_getcap", "handles-transient"]);
        common::assert_success(&out, "tpm2_getcap");
        String::from_utf8_lossy(&out.stdout).matches("0x80").count()
    };
    for i in 0..3 {
        let ctx = s.hsm.path(&format!("left{i}.ctx"));
        let out = s
            .hsm
            .tpm_tool(&["tpm2_createprimary", "-C", "o", "-c", ctx.to_str().unwrap()]);
        common::assert_success(&out, "tpm2_createprimary");
    }
    assert_eq!(handles(&s), 3, "the TPM's three object slots are taken");
    common::assert_success(&s.seb(&["keys"]), "seb keys with the TPM's slots taken");
    assert_eq!(handles(&s), 0);
    s.assert_pin_never_shown();
}
