//! The documentation stays true: the README starts with the two commands, CI runs the second,
//! the commented example configuration is a valid configuration, and no source file outgrows
//! issue 10's 700 lines.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

#[test]
fn readme_starts_with_the_two_commands_and_ci_runs_the_second() {
    let readme = std::fs::read_to_string(common::repo().join("README.md")).unwrap();
    let block: Vec<&str> = readme
        .split("```sh")
        .nth(1)
        .and_then(|rest| rest.split("```").next())
        .unwrap()
        .lines()
        .filter(|l| !l.trim().is_empty())
        .collect();
    assert_eq!(block.len(), 2, "{block:?}");
    assert!(block[0].starts_with("./deploy/demo.sh"), "{block:?}");
    assert!(block[1].starts_with("./tests/run.sh"), "{block:?}");
    let preamble = readme.split("```sh").next().unwrap();
    assert_eq!(
        preamble.lines().filter(|l| !l.trim().is_empty()).count(),
        1,
        "only the title comes first"
    );
    let ci = std::fs::read_to_string(common::repo().join(".ci/run")).unwrap();
    assert!(ci.contains("tests/run.sh"), "{ci}");
    for script in [
        "deploy/demo.sh",
        "tests/run.sh",
        ".ci/run",
        "softhsm-setup/provision.sh",
    ] {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(common::repo().join(script))
            .unwrap()
            .permissions()
            .mode();
        assert!(mode & 0o111 != 0, "{script} is not executable");
    }
}

#[test]
fn the_example_configuration_parses() {
    let text = std::fs::read_to_string(common::repo().join("deploy/seb.example.toml")).unwrap();
    let config = seb::config::Config::parse(&text).unwrap();
    assert_eq!(config.broker_id, "seb-prod-1");
    // The commented TPM and attestation alternatives parse when enabled.
    let block = |start: &str| -> String {
        text.lines()
            .skip_while(|l| !l.starts_with(start))
            .take_while(|l| l.starts_with('#'))
            .map(|l| l.trim_start_matches('#').trim_start())
            .collect::<Vec<_>>()
            .join("\n")
    };
    let tpm_backend: String = text
        .lines()
        .skip_while(|l| !l.contains("#   [backend]"))
        .take_while(|l| l.starts_with("#   "))
        .map(|l| l.trim_start_matches("#   "))
        .collect::<Vec<_>>()
        .join("\n");
    assert!(tpm_backend.contains("type = \"tpm\""), "{tpm_backend}");
    let head = text.split("[backend]").next().unwrap();
    let tail = text.split("[keys]").nth(1).unwrap();
    let tpm = format!(
        "{head}{tpm_backend}\n[keys]{tail}\n{}",
        block("# [attestation]")
    );
    let config = seb::config::Config::parse(&tpm).unwrap();
    assert!(matches!(config.backend, seb::config::BackendConfig::Tpm(_)));
    assert!(config.attestation.is_some(), "{tpm}");
    // So does the commented PostgreSQL store of replicas.
    let replicas = format!("{text}\n{}", block("# [store]"));
    let config = seb::config::Config::parse(&replicas).unwrap();
    let seb::config::StoreConfig::Postgres(pg) = config.store else {
        panic!("no [store] backend = \"postgres\" in {replicas}")
    };
    assert!(
        pg.url.contains("sslmode=require") && pg.ca_file.is_some(),
        "{pg:?}"
    );
}

/// Issue 10's rule for the source: no file in `src/` over 700 lines, sibling `tests.rs` files
/// aside, so that a file holds one idea and a reader finds it.
#[test]
fn no_source_file_is_over_700_lines() {
    fn walk(dir: &std::path::Path, long: &mut Vec<String>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                walk(&path, long);
            } else if path.extension().is_some_and(|e| e == "rs")
                && path.file_name().is_some_and(|n| n != "tests.rs")
            {
                let lines = std::fs::read_to_string(&path).unwrap().lines().count();
                if lines > 700 {
                    long.push(format!("{} ({lines} lines)", path.display()));
                }
            }
        }
    }
    let mut long = Vec::new();
    walk(&common::repo().join("src"), &mut long);
    assert!(long.is_empty(), "split these: {long:?}");
}
