//! Parsing and validating `seb.toml`: defaults, typos, PIN sources, relative paths.

use std::collections::BTreeMap;

use super::*;

const MINIMAL: &str = r#"
broker_id = "b1"
state_dir = "state"
[backend]
type = "pkcs11"
module = "/usr/lib/softhsm/libsofthsm2.so"
token_label = "seb"
pin_file = "user.pin"
"#;

#[test]
fn minimal_config_gets_defaults() {
    let c = Config::parse(MINIMAL).unwrap();
    assert_eq!(c.keys.root, "seb-root");
    assert_eq!(c.keys.token_algorithm, KeyAlgorithm::EcP384);
    assert_eq!(c.ca.crl_validity, Duration::from_secs(7 * 86_400));
}

#[test]
fn async_workers_leave_the_signing_threads_their_cpus() {
    let cpus = std::thread::available_parallelism().map_or(2, |n| n.get());
    let two_sessions = format!("{MINIMAL}sessions = 2\n");
    let c = Config::parse(&two_sessions).unwrap();
    assert_eq!(c.backend.signing_threads(), 2);
    assert_eq!(c.worker_threads(), cpus.saturating_sub(2).max(1));
    let set = format!("{two_sessions}[server]\nworker_threads = 3\n");
    assert_eq!(Config::parse(&set).unwrap().worker_threads(), 3);
    let zero = format!("{two_sessions}[server]\nworker_threads = 0\n");
    assert_eq!(
        Config::parse(&zero).unwrap().worker_threads(),
        1,
        "never zero"
    );
}

#[test]
fn typo_is_an_error() {
    let text = MINIMAL.replace("token_label", "token_lable");
    let err = Config::parse(&text).unwrap_err().to_string();
    assert!(err.contains("token_lable"), "{err}");
    let text = format!("{MINIMAL}\n[keys]\nrot = \"x\"\n");
    assert!(Config::parse(&text).is_err());
}

#[test]
fn pin_needs_exactly_one_source() {
    let none = MINIMAL.replace("pin_file = \"user.pin\"", "");
    assert!(Config::parse(&none).is_err());
    let both = MINIMAL.replace(
        "pin_file = \"user.pin\"",
        "pin_file = \"a\"\npin_env = \"B\"",
    );
    assert!(Config::parse(&both).is_err());
}

const ATTESTATION: &str = r#"
[attestation]
tcti = "swtpm:host=127.0.0.1,port=2321"
policy = "attest-policy.toml"
event_log = "eventlog.json"
"#;

#[test]
fn sealed_pin_is_a_third_exclusive_source() {
    let sealed = MINIMAL.replace("pin_file = \"user.pin\"", "pin_sealed = \"pin.sealed\"");
    let c = Config::parse(&format!("{sealed}{ATTESTATION}")).unwrap();
    let BackendConfig::Pkcs11(p) = &c.backend else {
        panic!("pkcs11 expected")
    };
    assert!(p.pin_is_sealed());
    let PinSource::Sealed { tcti, .. } = &p.pin else {
        panic!("sealed PIN expected")
    };
    assert_eq!(tcti.as_deref(), Some("swtpm:host=127.0.0.1,port=2321"));
    // Without a TPM to unseal with.
    let err = Config::parse(&sealed).unwrap_err().to_string();
    assert!(err.contains("[attestation]"), "{err}");
    // With another source as well.
    for other in ["pin_file = \"user.pin\"", "pin_env = \"SEB_PIN\""] {
        let two = sealed.replace(
            "pin_sealed = \"pin.sealed\"",
            &format!("pin_sealed = \"pin.sealed\"\n{other}"),
        );
        let err = Config::parse(&format!("{two}{ATTESTATION}"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("exactly one of"), "{err}");
    }
    let three = MINIMAL.replace(
        "pin_file = \"user.pin\"",
        "pin_file = \"a\"\npin_env = \"B\"\npin_sealed = \"c\"",
    );
    assert!(Config::parse(&format!("{three}{ATTESTATION}")).is_err());
    // The internal TCTI is not a configuration key.
    let smuggled = sealed.replace(
        "pin_sealed = \"pin.sealed\"",
        "pin_sealed = \"pin.sealed\"\nsealed_pin_tcti = \"x\"",
    );
    assert!(Config::parse(&format!("{smuggled}{ATTESTATION}")).is_err());
}

#[test]
fn sealed_pin_path_is_relative_to_the_config() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("seb.toml");
    let sealed = MINIMAL.replace("pin_file = \"user.pin\"", "pin_sealed = \"pin.sealed\"");
    std::fs::write(&file, format!("{sealed}{ATTESTATION}")).unwrap();
    let c = Config::load(&file).unwrap();
    let BackendConfig::Pkcs11(p) = &c.backend else {
        panic!("pkcs11 expected")
    };
    let PinSource::Sealed { path, .. } = &p.pin else {
        panic!("sealed PIN expected")
    };
    assert_eq!(path.as_path(), dir.path().join("pin.sealed").as_path());
    assert_eq!(c.default_sealed_pin(), dir.path().join("state/pin.sealed"));
}

#[cfg(feature = "tpm")]
#[test]
fn unreadable_sealed_pin_fails_closed() {
    let sealed = MINIMAL.replace(
        "pin_file = \"user.pin\"",
        "pin_sealed = \"/nonexistent/pin.sealed\"",
    );
    let c = Config::parse(&format!("{sealed}{ATTESTATION}")).unwrap();
    let BackendConfig::Pkcs11(p) = &c.backend else {
        panic!("pkcs11 expected")
    };
    let err = p.read_pin().unwrap_err();
    assert!(matches!(err, ConfigError::SealedPin { .. }), "{err}");
}

#[cfg(not(feature = "tpm"))]
#[test]
fn sealed_pin_without_tpm_support_says_so() {
    let sealed = MINIMAL.replace("pin_file = \"user.pin\"", "pin_sealed = \"pin.sealed\"");
    let c = Config::parse(&format!("{sealed}{ATTESTATION}")).unwrap();
    let BackendConfig::Pkcs11(p) = &c.backend else {
        panic!("pkcs11 expected")
    };
    let err = p.read_pin().unwrap_err().to_string();
    assert!(err.contains("`tpm` feature"), "{err}");
}

#[test]
fn duplicate_labels_are_refused() {
    let text = format!("{MINIMAL}\n[keys]\nroot = \"k\"\ntoken = \"k\"\n");
    assert!(Config::parse(&text)
        .unwrap_err()
        .to_string()
        .contains("two keys"));
}

#[test]
fn a_broker_id_the_checkpoint_format_cannot_carry_is_refused() {
    for id in [
        "seb prod",
        "seb\tprod",
        "seb\u{a0}prod",
        "seb+1",
        "",
        " ",
        &"b".repeat(52),
    ] {
        let text = MINIMAL.replace("\"b1\"", &format!("\"{id}\""));
        let err = Config::parse(&text).unwrap_err().to_string();
        assert!(err.contains("broker_id"), "{id:?}: {err}");
    }
    for id in [
        "seb-prod-1",
        "broker.example.com",
        "b\u{e9}1",
        &"b".repeat(51),
    ] {
        let text = MINIMAL.replace("\"b1\"", &format!("\"{id}\""));
        assert_eq!(Config::parse(&text).unwrap().broker_id, id);
    }
}

#[test]
fn with_attestation_the_broker_id_must_fit_the_attestation_keys_name() {
    let text = MINIMAL.replace("\"b1\"", &format!("\"{}\"", "b".repeat(49)));
    assert!(Config::parse(&text).is_ok());
    let attesting = format!("{text}\n[attestation]\npolicy = \"p.toml\"\nevent_log = \"e.json\"\ntcti = \"swtpm:host=127.0.0.1,port=1\"\n");
    let err = Config::parse(&attesting).unwrap_err().to_string();
    assert!(
        err.contains("broker_id") && err.contains("[attestation]"),
        "{err}"
    );
}

#[test]
fn bad_duration_is_refused() {
    let text = format!("{MINIMAL}\n[ca]\ncrl_validity = \"7 days\"\n");
    assert!(Config::parse(&text).is_err());
}

#[test]
fn tpm_backend_is_parsed_strictly() {
    let text = r#"
broker_id = "b1"
state_dir = "state"
[backend]
type = "tpm"
tcti = "swtpm:host=127.0.0.1,port=2321"
"#;
    let c = Config::parse(text).unwrap();
    let BackendConfig::Tpm(t) = &c.backend else {
        panic!("not a TPM backend")
    };
    assert_eq!(t.key_dir(Path::new("/s")), Path::new("/s/tpm-keys"));
    assert!(Config::parse(&text.replace("tcti =", "tcit =")).is_err());
}

#[test]
fn empty_pin_file_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let pin = dir.path().join("pin");
    std::fs::write(&pin, "  \n").unwrap();
    let p = Pkcs11Config {
        module: "/m.so".into(),
        token_label: "t".into(),
        token_serial: None,
        pin: PinSource::File(pin),
        sessions: None,
        module_env: BTreeMap::new(),
    };
    assert!(p.read_pin().unwrap_err().to_string().contains("empty"));
}

#[test]
fn a_typo_in_the_backend_table_names_its_own_line() {
    let text = MINIMAL.replace("token_label", "token_lable");
    let err = Config::parse(&text).unwrap_err().to_string();
    let line = text
        .lines()
        .position(|l| l.starts_with("token_lable"))
        .unwrap()
        + 1;
    assert!(
        err.contains(&format!("line {line}: unknown field `token_lable`")),
        "{err}"
    );
    assert_eq!(err.matches("line ").count(), 1, "one line named: {err}");
    // A key of the same name valid in another table is not taken for it: `sessions` belongs
    // in [backend], not in [server].
    let text = format!("{MINIMAL}sessions = 2\n[server]\nsessions = 4\n");
    let err = Config::parse(&text).unwrap_err().to_string();
    let line = text.lines().count();
    assert!(
        err.contains(&format!("line {line}: unknown field `sessions`")),
        "{err}"
    );
}

#[test]
fn the_store_is_sqlite_unless_postgres_is_configured_without_a_password_in_the_url() {
    assert!(matches!(
        Config::parse(MINIMAL).unwrap().store,
        StoreConfig::Sqlite
    ));
    let pg = |body: &str| Config::parse(&format!("{MINIMAL}[store]\n{body}"));
    let ok = pg(
        "backend = \"postgres\"\nurl = \"postgres://seb@db:5432/seb?sslmode=require\"\n\
         password_file = \"pg.password\"\nca_file = \"ca.pem\"\n",
    )
    .unwrap();
    let StoreConfig::Postgres(p) = ok.store else {
        panic!("postgres expected")
    };
    assert_eq!(p.pool, 4);
    assert_eq!(p.ca_file, Some(PathBuf::from("ca.pem")));
    // The password lives in its file only: in the URL, in either form, it is refused.
    for url in [
        "postgres://seb:hunter2@db/seb",
        "postgresql://seb:hunter2@db:5432/seb",
        "postgres://seb@db/seb?password=hunter2",
        // The driver reads credentials up to the first '@': a '/' in the password hides
        // nothing.
        "postgres://seb:hun/ter2@db/seb",
        "postgres://seb:hunter2?x@db/seb",
    ] {
        let err = pg(&format!(
            "backend = \"postgres\"\nurl = \"{url}\"\npassword_file = \"p\"\n"
        ))
        .unwrap_err()
        .to_string();
        assert!(err.contains("password_file"), "{url}: {err}");
        assert!(
            !err.contains("hunter2"),
            "the error repeats the password: {err}"
        );
    }
    let err = pg("backend = \"postgres\"\nurl = \"mysql://db/seb\"\npassword_file = \"p\"\n")
        .unwrap_err()
        .to_string();
    assert!(err.contains("postgres://"), "{err}");
    let err = pg("backend = \"postgres\"\nurl = \"postgres://seb@db/seb\"\npassword_file = \"p\"\npool = 0\n")
        .unwrap_err()
        .to_string();
    assert!(err.contains("pool"), "{err}");
    // Unknown keys are refused, as everywhere in seb.toml.
    assert!(pg("backend = \"postgres\"\nurl = \"postgres://seb@db/seb\"\npassword_file = \"p\"\npasword = \"x\"\n").is_err());
    assert!(pg("backend = \"oracle\"\n").is_err());
}

#[test]
fn store_files_are_taken_relative_to_the_configuration() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("seb.toml");
    std::fs::write(
        &path,
        format!(
            "{MINIMAL}[store]\nbackend = \"postgres\"\nurl = \"postgres://seb@db/seb\"\n\
             password_file = \"pg.password\"\nca_file = \"pg-ca.pem\"\n"
        ),
    )
    .unwrap();
    let StoreConfig::Postgres(p) = Config::load(&path).unwrap().store else {
        panic!("postgres expected")
    };
    assert_eq!(p.password_file, dir.path().join("pg.password"));
    assert_eq!(p.ca_file, Some(dir.path().join("pg-ca.pem")));
}

#[test]
fn a_secret_under_a_key_seb_does_not_know_is_not_repeated_in_the_error() {
    // A database password or PIN typed into the configuration instead of its file is refused,
    // and the refusal (which reaches the journal) names the key and its line, not the value.
    for (text, key) in [
        (
            format!(
                "{MINIMAL}[store]\nbackend = \"postgres\"\nurl = \"postgres://seb@db/seb\"\n\
                 password_file = \"p\"\npassword = \"hunter2-in-the-config\"\n"
            ),
            "password",
        ),
        (
            MINIMAL.replace("pin_file = \"user.pin\"", "pin = \"hunter2-in-the-config\""),
            "pin",
        ),
        (
            format!("{MINIMAL}password = \"hunter2-in-the-config\"\n"),
            "password",
        ),
    ] {
        let err = Config::parse(&text).unwrap_err().to_string();
        assert!(
            !err.contains("hunter2"),
            "the error repeats the secret: {err}"
        );
        let line = text
            .lines()
            .position(|l| l.starts_with(&format!("{key} =")))
            .unwrap()
            + 1;
        assert!(err.contains(&format!("line {line}")), "{err}");
        assert!(err.contains(key), "{err}");
    }
}

#[test]
fn a_secret_in_place_of_a_path_is_not_repeated_in_the_error() {
    // A PIN typed where the PIN file's path belongs: the type is wrong, the value stays out.
    for value in [
        "123456789",
        "[\"hunter2-in-the-config\"]",
        "{ pin = \"hunter2\" }",
    ] {
        let text = MINIMAL.replace("\"user.pin\"", value);
        let err = Config::parse(&text).unwrap_err().to_string();
        assert!(
            !err.contains("123456789") && !err.contains("hunter2"),
            "the error repeats the value: {err}"
        );
        assert!(err.contains("invalid type"), "{err}");
        // Inside the tagged `[backend]` table the parser points at the table's header.
        assert!(
            err.contains("line 4:") && err.contains("expected path string"),
            "{err}"
        );
    }
}

#[test]
fn per_agent_and_per_certificate_limits_of_zero_are_refused() {
    let c = Config::parse(MINIMAL).unwrap();
    assert_eq!(c.approvals.max_open_per_agent, 50);
    assert_eq!(c.server.max_connections_per_certificate, 64);
    for (table, key) in [
        ("approvals", "max_open_per_agent"),
        ("server", "max_connections_per_certificate"),
    ] {
        let text = format!("{MINIMAL}\n[{table}]\n{key} = 0\n");
        let err = Config::parse(&text).unwrap_err().to_string();
        assert!(
            err.contains(&format!("[{table}] {key} must be at least 1")),
            "{err}"
        );
        Config::parse(&format!("{MINIMAL}\n[{table}]\n{key} = 1\n")).unwrap();
    }
}
