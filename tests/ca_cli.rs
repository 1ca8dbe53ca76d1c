//! The foundation as a security team uses it: provision a token, `seb init`, issue, revoke,
//! publish a CRL, with every certificate also checked by `openssl`.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::{assert_clean_failure, openssl, Hsm};
use seb::cert::{Certificate, SEB_GRANTS_OID, SEB_ROLE_OID};
use seb::grants::{GrantSet, Role, RoleKind};

const GRANTS: &str = r#"
[[grant]]
operation = "deploy.rollout"
resource  = "prod/payments/*"
max_ttl   = "60s"
params.replicas = { min = 1, max = 10 }
params.image    = { prefix = "registry.internal/payments/" }
params.strategy = { one_of = ["rolling", "canary"] }
params.region   = { equals = "eu-west-1" }
approval  = { required = 2, group = "sre-leads" }

[[grant]]
operation = "k8s.read.*"
resource  = "prod/**"
max_ttl   = "30s"
params_any = true
"#;

fn write_grants(hsm: &Hsm, text: &str) -> String {
    let path = hsm.path("grants.toml");
    std::fs::write(&path, text).unwrap();
    path.display().to_string()
}

#[test]
fn init_keys_are_sensitive_and_never_extractable() {
    let hsm = Hsm::initialised();
    let listing = hsm.seb_ok(&["keys"]);
    for label in ["seb-root", "seb-token", "seb-audit", "seb-tls"] {
        let line = listing
            .lines()
            .find(|l| l.trim_start().starts_with(label))
            .unwrap_or_else(|| panic!("{label} missing from:\n{listing}"));
        assert!(line.contains("ec-p384"), "{line}");
        assert!(line.contains("sensitive=true"), "{line}");
        assert!(line.contains("extractable=false"), "{line}");
        assert!(line.contains("never_extractable=true"), "{line}");
        assert!(line.contains("private_value_readable=false"), "{line}");
    }

    // The same facts through an independent PKCS#11 client.
    let text = hsm.pkcs11_private_keys();
    assert_eq!(text.matches("Private Key Object; EC").count(), 4, "{text}");
    assert_eq!(
        text.matches("sensitive, always sensitive, never extractable, local")
            .count(),
        4,
        "{text}"
    );
    assert!(!text.contains("decrypt"), "keys may only sign:\n{text}");
}

/// A configuration mistake in a name is found before any key is made: the token is left as
/// it was, and init can run again once the configuration is fixed.
#[test]
fn a_bad_subject_in_the_configuration_stops_init_before_any_key_exists() {
    let hsm = Hsm::provision();
    let config = std::fs::read_to_string(hsm.config()).unwrap();
    hsm.edit_config("broker_id = \"seb-dev\"", "broker_id = \"seb,dev\"");
    assert_clean_failure(&hsm.seb(&["init"]), "broker_id \"seb,dev\"");
    assert!(
        !hsm.pkcs11_private_keys().contains("seb-"),
        "no key was generated: {}",
        hsm.pkcs11_private_keys()
    );
    // A TLS name that is neither an IP address nor an ASCII DNS name, the same.
    std::fs::write(
        hsm.config(),
        format!("{config}\n[ca]\ntls_names = [\"127.0.0.1\", \"bröker.example\"]\n"),
    )
    .unwrap();
    assert_clean_failure(&hsm.seb(&["init"]), "tls_names");
    assert!(
        !hsm.pkcs11_private_keys().contains("seb-"),
        "no key was generated: {}",
        hsm.pkcs11_private_keys()
    );
    std::fs::write(hsm.config(), config).unwrap();
    hsm.seb_ok(&["init"]);
}

#[test]
fn init_twice_refuses_and_changes_nothing() {
    let hsm = Hsm::initialised();
    let root_before = std::fs::read(hsm.trust("root.pem")).unwrap();
    let tokens_before = dir_digest(&hsm.path("tokens"));
    let out = hsm.seb(&["init"]);
    assert_clean_failure(&out, "already initialised");
    assert_eq!(std::fs::read(hsm.trust("root.pem")).unwrap(), root_before);
    assert_eq!(tokens_before.len(), 8, "four key pairs");
    assert!(
        dir_digest(&hsm.path("tokens")) == tokens_before,
        "token objects changed"
    );
}

#[test]
fn openssl_accepts_every_issued_chain() {
    let hsm = Hsm::initialised();
    let root = hsm.trust("root.pem");
    let root = root.to_str().unwrap();
    let dir = hsm.dir.path();

    let (ok, text) = openssl(&["x509", "-in", root, "-noout", "-text"], dir);
    assert!(ok, "{text}");
    assert!(text.contains("CA:TRUE"), "{text}");
    assert!(text.contains("Certificate Sign, CRL Sign"), "{text}");
    assert!(text.contains("ecdsa-with-SHA384"), "{text}");
    assert!(text.contains("NIST CURVE: P-384"), "{text}");

    for (name, purpose) in [
        ("token.pem", "any"),
        ("audit.pem", "any"),
        ("tls.pem", "sslserver"),
    ] {
        let cert = hsm.trust(name);
        let (ok, text) = openssl(
            &[
                "verify",
                "-purpose",
                purpose,
                "-CAfile",
                root,
                cert.to_str().unwrap(),
            ],
            dir,
        );
        assert!(ok && text.contains(": OK"), "{name}: {text}");
    }
    // Each broker key certificate carries its one seb key purpose as its extended key usage.
    let arc = "1.2.840.113556.1.8000.2554.11087.30221.20830.16501.40880.2628193.9833871";
    for (name, purpose, not) in [("token.pem", "4.1", "4.2"), ("audit.pem", "4.2", "4.1")] {
        let (ok, text) = openssl(
            &[
                "x509",
                "-in",
                hsm.trust(name).to_str().unwrap(),
                "-noout",
                "-ext",
                "extendedKeyUsage",
            ],
            dir,
        );
        assert!(ok, "{name}: {text}");
        let usages: Vec<&str> = text
            .lines()
            .skip_while(|l| !l.contains("Extended Key Usage"))
            .skip(1)
            .flat_map(|l| l.split(','))
            .map(str::trim)
            .filter(|u| !u.is_empty())
            .collect();
        assert_eq!(usages, [format!("{arc}.{purpose}")], "{name}: {text}");
        assert!(!text.contains(&format!("{arc}.{not}")), "{name}: {text}");
    }
    let (_, tls_text) = openssl(
        &[
            "x509",
            "-in",
            hsm.trust("tls.pem").to_str().unwrap(),
            "-noout",
            "-text",
        ],
        dir,
    );
    assert!(tls_text.contains("DNS:localhost"), "{tls_text}");
    assert!(tls_text.contains("IP Address:127.0.0.1"), "{tls_text}");

    let grants = write_grants(&hsm, GRANTS);
    let agent = hsm.issue(
        "agent",
        "CN=deploy-bot,O=example",
        "agent",
        &["--grants", &grants],
    );
    let approver = hsm.issue(
        "approver",
        "CN=alice,O=example",
        "approver",
        &["--group", "sre-leads"],
    );
    let executor = hsm.issue("executor", "CN=k8s-executor,O=example", "executor", &[]);
    for cert in [&agent, &approver, &executor] {
        let (ok, text) = openssl(
            &[
                "verify",
                "-purpose",
                "sslclient",
                "-CAfile",
                root,
                cert.to_str().unwrap(),
            ],
            dir,
        );
        assert!(ok && text.contains(": OK"), "{}: {text}", cert.display());
    }
    let (ok, text) = openssl(
        &["x509", "-in", agent.to_str().unwrap(), "-noout", "-text"],
        dir,
    );
    assert!(ok, "{text}");
    assert!(
        text.contains(
            "1.2.840.113556.1.8000.2554.11087.30221.20830.16501.40880.2628193.9833871.1:"
        ),
        "sebGrants must show:\n{text}"
    );
    assert!(
        text.contains(
            "1.2.840.113556.1.8000.2554.11087.30221.20830.16501.40880.2628193.9833871.2:"
        ),
        "sebRole must show:\n{text}"
    );
    assert!(text.contains("TLS Web Client Authentication"), "{text}");
    assert!(
        text.contains("Subject: O = example, CN = deploy-bot"),
        "{text}"
    );
    // Serial: positive, at most 20 octets.
    let (_, serial) = openssl(
        &["x509", "-in", agent.to_str().unwrap(), "-noout", "-serial"],
        dir,
    );
    let hex = serial.trim().trim_start_matches("serial=");
    assert!(hex.len() <= 40 && !hex.is_empty(), "{hex}");
    assert!(u8::from_str_radix(&hex[..2], 16).unwrap() < 0x80, "{hex}");
}

#[test]
fn grants_round_trip_through_a_certificate() {
    let hsm = Hsm::initialised();
    let grants = write_grants(&hsm, GRANTS);
    let agent = hsm.issue("agent", "CN=deploy-bot", "agent", &["--grants", &grants]);
    let cert = Certificate::parse(&std::fs::read(agent).unwrap()).unwrap();
    let ext = cert.extension(SEB_GRANTS_OID).expect("sebGrants present");
    assert!(!ext.critical);
    let decoded = GrantSet::from_der(ext.extn_value.as_bytes()).unwrap();
    assert_eq!(decoded, GrantSet::from_toml_str(GRANTS).unwrap());
    let role = Role::from_der(cert.extension(SEB_ROLE_OID).unwrap().extn_value.as_bytes()).unwrap();
    assert_eq!(role.kind, RoleKind::Agent);
    // And back to TOML, which parses to the same grants again.
    assert_eq!(
        GrantSet::from_toml_str(&decoded.to_toml_string()).unwrap(),
        decoded
    );

    let approver = hsm.issue(
        "approver",
        "CN=alice",
        "approver",
        &["--group", "sre-leads", "--group", "dba"],
    );
    let cert = Certificate::parse(&std::fs::read(approver).unwrap()).unwrap();
    let role = Role::from_der(cert.extension(SEB_ROLE_OID).unwrap().extn_value.as_bytes()).unwrap();
    assert_eq!(role.kind, RoleKind::Approver);
    let mut groups = role.groups.clone();
    groups.sort();
    assert_eq!(groups, ["dba", "sre-leads"]);
    assert!(
        cert.extension(SEB_GRANTS_OID).is_none(),
        "approvers carry no grants"
    );
}

#[test]
fn revoked_certificate_is_in_a_crl_that_openssl_verifies() {
    let hsm = Hsm::initialised();
    let dir = hsm.dir.path();
    let root = hsm.trust("root.pem");
    let root = root.to_str().unwrap();
    let grants = write_grants(&hsm, GRANTS);
    let agent = hsm.issue("agent", "CN=deploy-bot", "agent", &["--grants", &grants]);
    let other = hsm.issue("other", "CN=other-bot", "agent", &["--grants", &grants]);
    let serial = Certificate::parse(&std::fs::read(&agent).unwrap())
        .unwrap()
        .serial_hex();

    let out = hsm.seb_ok(&[
        "cert",
        "revoke",
        "--serial",
        &serial,
        "--reason",
        "key-compromise",
    ]);
    assert!(out.contains("revoked"), "{out}");
    let again = hsm.seb_ok(&["cert", "revoke", "--serial", &serial]);
    assert!(again.contains("already revoked"), "{again}");
    // It says when and why, and that another reason does not replace the first.
    assert!(again.contains("(key-compromise, at 20"), "{again}");
    assert!(again.contains("is not changed afterwards"), "{again}");
    // Both attempts are entries: the second says it changed nothing.
    let entries = hsm.audit_entries("certificate_revoked");
    assert_eq!(entries.len(), 2, "{entries:?}");
    assert!(entries[0].get("code").is_none(), "{}", entries[0]);
    assert_eq!(entries[1]["code"], "already_revoked", "{}", entries[1]);

    let crl = hsm.path("crl.pem");
    let crl = crl.to_str().unwrap();
    hsm.seb_ok(&["crl", "--out", crl]);
    let (ok, text) = openssl(&["crl", "-in", crl, "-CAfile", root, "-noout"], dir);
    assert!(ok && text.contains("verify OK"), "{text}");
    let (_, text) = openssl(&["crl", "-in", crl, "-noout", "-text"], dir);
    assert!(text.contains(&serial.to_uppercase()), "{text}");
    assert!(text.contains("Key Compromise"), "{text}");
    assert!(text.contains("Next Update"), "{text}");

    // `openssl verify -crl_check` of `cert` against the CRL, with `at` (`-attime`) if given.
    let verify = |cert: &std::path::Path, at: Option<u64>| {
        let at = at.map(|t| t.to_string());
        let mut args = vec!["verify"];
        if let Some(at) = &at {
            args.extend(["-attime", at.as_str()]);
        }
        args.extend(["-crl_check", "-CRLfile", crl, "-CAfile", root]);
        args.push(cert.to_str().unwrap());
        openssl(&args, dir)
    };
    let (ok, text) = verify(&agent, None);
    assert!(!ok && text.contains("certificate revoked"), "{text}");
    let (ok, text) = verify(&other, None);
    assert!(ok, "an unrevoked certificate still verifies: {text}");
    // A relying party whose clock is 30 s behind: the fresh CRL is backdated like the
    // certificates, so it is already valid there (it was "not yet valid", and every
    // certificate refused).
    let behind = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        - 30;
    let (ok, text) = verify(&other, Some(behind));
    assert!(ok, "a clock 30 s behind: {text}");

    // CRL numbers grow.
    let crl2 = hsm.path("crl2.pem");
    hsm.seb_ok(&["crl", "--out", crl2.to_str().unwrap()]);
    let (_, text) = openssl(
        &["crl", "-in", crl2.to_str().unwrap(), "-noout", "-crlnumber"],
        dir,
    );
    assert!(
        text.contains("crlNumber=0x02") || text.contains("crlNumber=02"),
        "{text}"
    );
    // `--out -`: the PEM alone on standard output, no file named `-`.
    let out = hsm.seb(&["crl", "--out", "-"]);
    common::assert_success(&out, "seb crl --out -");
    let pem = String::from_utf8_lossy(&out.stdout);
    assert!(
        pem.starts_with("-----BEGIN X509 CRL-----")
            && pem.trim_end().ends_with("-----END X509 CRL-----"),
        "{pem}"
    );
    assert!(!hsm.path("-").exists());
}

#[test]
fn bad_csrs_are_refused_cleanly() {
    let hsm = Hsm::initialised();
    let grants = write_grants(&hsm, GRANTS);
    let issue = |csr: &std::path::Path| {
        hsm.seb(&[
            "cert",
            "issue",
            "--csr",
            csr.to_str().unwrap(),
            "--grants",
            &grants,
            "--role",
            "agent",
            "--ttl",
            "1d",
            "--out",
            hsm.path("x.pem").to_str().unwrap(),
        ])
    };
    let garbage = hsm.path("garbage.csr");
    std::fs::write(
        &garbage,
        "-----BEGIN CERTIFICATE REQUEST-----\nnot base64!\n-----END CERTIFICATE REQUEST-----\n",
    )
    .unwrap();
    assert_clean_failure(&issue(&garbage), "malformed certificate signing request");
    std::fs::write(&garbage, [0x30, 0x82, 0xff, 0xff, 0x01]).unwrap();
    assert_clean_failure(&issue(&garbage), "malformed certificate signing request");

    // A well-formed CSR whose signature was made by another key.
    hsm.seb_ok(&[
        "keygen",
        "--out-key",
        hsm.path("a.key").to_str().unwrap(),
        "--out-csr",
        hsm.path("a.csr").to_str().unwrap(),
        "--subject",
        "CN=a",
    ]);
    let pem = std::fs::read_to_string(hsm.path("a.csr")).unwrap();
    let (ok, der) = {
        let out = std::process::Command::new("openssl")
            .args([
                "req",
                "-in",
                hsm.path("a.csr").to_str().unwrap(),
                "-outform",
                "DER",
            ])
            .output()
            .unwrap();
        (out.status.success(), out.stdout)
    };
    assert!(ok, "{pem}");
    let mut tampered = der.clone();
    // Flip a bit in the last byte of the signature.
    let last = tampered.len() - 1;
    tampered[last] ^= 0x01;
    let bad = hsm.path("tampered.csr");
    std::fs::write(&bad, &tampered).unwrap();
    assert_clean_failure(&issue(&bad), "signature does not verify");
    assert!(!hsm.path("x.pem").exists(), "no certificate was written");

    // CSRs openssl makes with an empty subject, or with the root's own name.
    let key = hsm.path("o.key");
    let subject_of = |file: &str| {
        let (ok, text) = openssl(
            &[
                "x509",
                "-in",
                hsm.trust(file).to_str().unwrap(),
                "-noout",
                "-subject",
                "-nameopt",
                "compat",
            ],
            hsm.dir.path(),
        );
        assert!(ok, "{text}");
        text.trim().trim_start_matches("subject=").to_owned()
    };
    let root_subject = subject_of("root.pem");
    for (name, subject, refusal) in [
        ("empty", "/".to_owned(), "has no common name"),
        ("no-cn", "/O=payments".to_owned(), "has no common name"),
        (
            "root-name",
            root_subject,
            "is the name of a CA on the issuing chain",
        ),
        (
            "broker-name",
            subject_of("tls.pem"),
            "has the name of the broker's own tls certificate",
        ),
        // The broker's common name under another organisation: what a verifier matching
        // `CN=<broker_id> broker` would take for the broker.
        (
            "broker-cn",
            "/O=evil/CN=seb-dev broker".to_owned(),
            "has the name of the broker's own tls certificate",
        ),
        (
            "token-cn",
            "/CN=seb-dev token signer".to_owned(),
            "has the name of the broker's own token certificate",
        ),
    ] {
        let csr = hsm.path(&format!("{name}.csr"));
        common::openssl_csr(hsm.dir.path(), &key, &subject, &csr, &[]);
        assert_clean_failure(&issue(&csr), refusal);
        assert!(
            !hsm.path("x.pem").exists(),
            "{name}: no certificate was written"
        );
    }
}

/// A serial no CRL can carry is refused at revocation: once stored, every later CRL of the
/// issuer would fail. `unspecified` is left out of the CRL entry (RFC 5280 §5.3.1), and
/// `ca-compromise` is a reason for an intermediate.
#[test]
fn revocations_keep_every_crl_encodable_and_reasons_as_rfc_5280_says() {
    let hsm = Hsm::initialised();
    let dir = hsm.dir.path();
    let too_long = format!("80{}", "11".repeat(19));
    let out = hsm.seb(&["cert", "revoke", "--serial", &too_long, "--unknown"]);
    assert_clean_failure(&out, "needs more than 20 octets");
    let grants = write_grants(&hsm, GRANTS);
    let plain = hsm.issue("plain", "CN=plain-bot", "agent", &["--grants", &grants]);
    let plain_serial = Certificate::parse(&std::fs::read(&plain).unwrap())
        .unwrap()
        .serial_hex();
    hsm.seb_ok(&["cert", "revoke", "--serial", &plain_serial]);
    let ca = hsm.issue_ca("team", "CN=team CA", &[]);
    let ca_serial =
        Certificate::parse_pem_chain(&std::fs::read(&ca).unwrap()).unwrap()[0].serial_hex();
    hsm.seb_ok(&[
        "cert",
        "revoke",
        "--serial",
        &ca_serial,
        "--reason",
        "ca-compromise",
    ]);
    let crl_pem = hsm.path("crl.pem");
    hsm.seb_ok(&["crl", "--out", crl_pem.to_str().unwrap()]);
    let (ok, text) = openssl(
        &["crl", "-in", crl_pem.to_str().unwrap(), "-noout", "-text"],
        dir,
    );
    assert!(ok, "{text}");
    let entry = |serial: &str| {
        let start = text
            .find(&format!("Serial Number: {serial}"))
            .unwrap_or_else(|| panic!("{serial} in {text}"));
        let rest = &text[start + 10..];
        rest[..rest.find("Serial Number:").unwrap_or(rest.len())].to_owned()
    };
    assert!(!entry(&plain_serial).contains("Reason Code"), "{text}");
    assert!(entry(&ca_serial).contains("CA Compromise"), "{text}");
}

#[test]
fn bad_options_are_refused_cleanly() {
    let hsm = Hsm::initialised();
    let grants = write_grants(&hsm, GRANTS);
    hsm.seb_ok(&[
        "keygen",
        "--out-key",
        hsm.path("a.key").to_str().unwrap(),
        "--out-csr",
        hsm.path("a.csr").to_str().unwrap(),
        "--subject",
        "CN=a",
    ]);
    let csr = hsm.path("a.csr").display().to_string();
    let out = hsm.path("a.pem").display().to_string();
    let run = |extra: &[&str]| {
        let mut args = vec!["cert", "issue", "--csr", &csr, "--out", &out];
        args.extend_from_slice(extra);
        hsm.seb(&args)
    };
    assert_clean_failure(
        &run(&["--grants", &grants, "--role", "agent", "--ttl", "7 days"]),
        "invalid duration",
    );
    assert_clean_failure(
        &run(&["--grants", &grants, "--role", "agent", "--ttl", "5000d"]),
        "at most",
    );
    assert_clean_failure(
        &run(&["--grants", &grants, "--role", "superuser", "--ttl", "1d"]),
        "unknown role",
    );
    assert_clean_failure(&run(&["--role", "agent", "--ttl", "1d"]), "needs --grants");
    assert_clean_failure(&run(&["--role", "approver", "--ttl", "1d"]), "--group");
    let typo = write_grants(
        &hsm,
        "[[grant]]\noperation = \"a.b\"\nresourse = \"x\"\nmax_ttl = \"1s\"\n",
    );
    assert_clean_failure(
        &run(&["--grants", &typo, "--role", "agent", "--ttl", "1d"]),
        "invalid grants file",
    );
    assert!(!hsm.path("a.pem").exists());
    // An --out that cannot be written is refused before the certificate exists: a mistyped
    // directory, and one where no file can be made (/proc refuses even root). Nothing is
    // recorded, so no valid certificate is left that nobody received.
    let listed = hsm.seb_ok(&["cert", "list"]);
    for unwritable in [hsm.path("no-such-dir/a.pem"), "/proc/a.pem".into()] {
        let output = hsm.seb(&[
            "cert",
            "issue",
            "--csr",
            &csr,
            "--out",
            unwritable.to_str().unwrap(),
            "--grants",
            &grants,
            "--role",
            "agent",
            "--ttl",
            "1d",
        ]);
        assert_clean_failure(&output, "nothing was issued");
    }
    assert!(!hsm.path("no-such-dir").exists());
    assert_eq!(hsm.seb_ok(&["cert", "list"]), listed);

    assert_clean_failure(&hsm.seb(&["cert", "revoke", "--serial", "zz"]), "not hex");
    assert_clean_failure(
        &hsm.seb(&["cert", "revoke", "--serial", "01", "--reason", "bored"]),
        "unknown reason",
    );
    assert_clean_failure(
        &hsm.seb(&[
            "keygen",
            "--out-key",
            hsm.path("a.key").to_str().unwrap(),
            "--out-csr",
            "b.csr",
            "--subject",
            "CN=b",
        ]),
        "refusing to overwrite",
    );
    // `cert issue-ca --out` onto an existing certificate: refused before any key is made
    // (the same label then goes through with --force).
    let team = hsm.issue_ca("team4", "CN=team4", &[]);
    let before = std::fs::read(&team).unwrap();
    let onto_team4 = |force: &[&str]| {
        let mut args = vec![
            "cert",
            "issue-ca",
            "--label",
            "team5",
            "--subject",
            "CN=team5",
            "--ttl",
            "30d",
            "--out",
            team.to_str().unwrap(),
        ];
        args.extend_from_slice(force);
        hsm.seb(&args)
    };
    assert_clean_failure(&onto_team4(&[]), "refusing to overwrite");
    assert_eq!(std::fs::read(&team).unwrap(), before);
    common::assert_success(&onto_team4(&["--force"]), "issue-ca --force");
    assert_ne!(std::fs::read(&team).unwrap(), before);
    assert_clean_failure(
        &hsm.seb(&[
            "keygen",
            "--out-key",
            "c.key",
            "--out-csr",
            "c.csr",
            "--subject",
            "O=no-cn",
        ]),
        "common name",
    );
}

#[test]
fn device_and_config_problems_are_clear_errors() {
    let hsm = Hsm::provision();
    let config = std::fs::read_to_string(hsm.config()).unwrap();

    std::fs::write(hsm.path("user.pin"), "0000-wrong\n").unwrap();
    let refused = hsm.seb(&["init"]);
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(
        stderr.contains("refused the user PIN") && !stderr.contains("panicked"),
        "{stderr}"
    );
    // Its own exit status (EX_CONFIG), which deploy/seb.service does not restart on: a wrong
    // PIN offered again every few seconds would lock it on a real HSM.
    assert_eq!(refused.status.code(), Some(78), "{refused:?}");
    for unit in ["deploy/seb.service", "deploy/seb-replica@.service"] {
        assert!(
            std::fs::read_to_string(common::repo().join(unit))
                .unwrap()
                .contains("RestartPreventExitStatus=78"),
            "{unit}"
        );
    }

    let other_dir = tempfile::tempdir().unwrap();
    let write = |text: String| {
        let path = other_dir.path().join("seb.toml");
        std::fs::write(&path, text).unwrap();
        common::seb(
            &["--config", path.to_str().unwrap(), "init"],
            other_dir.path(),
        )
    };
    let abs = |s: &str| s.replace("\"user.pin\"", &format!("{:?}", hsm.path("user.pin")));
    let fixed_pin = hsm.path("good.pin");
    std::fs::write(&fixed_pin, "whatever").unwrap();

    let missing_module = abs(&config).replace(&common::module(), "/nonexistent/libpkcs11.so");
    assert_clean_failure(&write(missing_module), "cannot load the PKCS#11 module");

    let missing_token =
        abs(&config).replace("token_label = \"seb\"", "token_label = \"no-such-token\"");
    assert_clean_failure(&write(missing_token), "no token labelled \"no-such-token\"");

    let typo = config.replace("token_label", "token_lable");
    assert_clean_failure(&write(typo), "token_lable");

    let missing_pin = config.replace("pin_file = \"user.pin\"", "pin_file = \"/nonexistent/pin\"");
    assert_clean_failure(&write(missing_pin), "cannot read the HSM PIN");

    assert_clean_failure(&common::seb(&["init"], hsm.dir.path()), "needs --config");

    // No error message ever contains the PIN.
    let pin = hsm.user_pin();
    std::fs::write(hsm.path("user.pin"), format!("{pin}x")).unwrap();
    let out = hsm.seb(&["init"]);
    assert!(!String::from_utf8_lossy(&out.stderr).contains(&pin));
}

/// Key objects in a SoftHSM token directory: file name and SHA-256 of the content. Token
/// metadata (`token.object`, `generation`) is left out: SoftHSM rewrites it on every login.
fn dir_digest(dir: &std::path::Path) -> Vec<(String, String)> {
    use sha2::Digest;
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).unwrap() {
            let path = entry.unwrap().path();
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            if path.is_dir() {
                stack.push(path);
            } else if name.ends_with(".object") && name != "token.object" {
                let digest = sha2::Sha256::digest(std::fs::read(&path).unwrap());
                out.push((name, hex::encode(digest)));
            }
        }
    }
    out.sort();
    out
}

#[test]
fn csr_subjects_with_hidden_characters_are_not_given_out() {
    // A CSR made elsewhere (openssl) whose name reads as another in a terminal: refused for
    // an agent and for an offline intermediate, whose name every leaf under it would carry.
    let hsm = Hsm::initialised();
    let grants = write_grants(&hsm, GRANTS);
    let csr = hsm.path("odd.csr");
    common::openssl_csr(
        hsm.dir.path(),
        &hsm.path("odd.key"),
        "/CN=deploy-bot\u{202e}ko/O=test",
        &csr,
        &[],
    );
    let csr = csr.display().to_string();
    let agent = [
        "cert", "issue", "--csr", &csr, "--role", "agent", "--grants", &grants, "--ttl", "1d",
        "--out", "odd.pem",
    ];
    assert_clean_failure(&hsm.seb(&agent), "U+202E");
    let ca = [
        "cert",
        "issue-ca",
        "--label",
        "odd",
        "--csr",
        &csr,
        "--ttl",
        "30d",
        "--out",
        "odd-ca.pem",
    ];
    assert_clean_failure(&hsm.seb(&ca), "U+202E");
    assert!(!hsm.path("odd.pem").exists() && !hsm.path("odd-ca.pem").exists());
}
