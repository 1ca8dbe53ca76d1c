//! `seb attest`: enrolling the broker's attestation key, recording reference measurements from
//! a known-good host, and verifying a broker's attestation as a relying party.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

use seb::attest::selfcheck::AttestationState;
use seb::attest::tpm::{create_ak, read_pcrs_of, TpmAttestor};
use seb::attest::{self, AttestPolicy, Attestor, EventLog, Evidence, PcrBank, QuoteCheck};
use seb::backend::{KeyBackend, P384Signer};
use seb::ca::{self, CertKind};
use seb::cert::Certificate;
use seb::client::{Client, ClientTls};
use seb::config::{AttestationConfig, Config};
use seb::tpm::Tpm;
use sha2::Digest as _;
use spki::SubjectPublicKeyInfoOwned;

use super::{open_backend, read_file, write_file, CliError, CliResult};

/// `seb attest ...`
#[derive(Debug, clap::Subcommand)]
pub enum AttestCommand {
    /// Create the attestation key in the TPM, bind it to the EK by credential activation and
    /// certify it with the root (run by `seb init` when [attestation] is configured).
    Enroll,
    /// Record this host's current PCR values and event log as the reference policy.
    Record(RecordArgs),
    /// Verify a broker's attestation: fresh nonce, quote signature, AK chain to the root,
    /// binding to this TLS session's certificate and broker, event-log replay, policy (needs no
    /// --config).
    Verify(VerifyArgs),
    /// Measure quote latency (PCR read + quote + consistency check) and the full self-check
    /// (quote + verification against the policy) on this TPM.
    Bench {
        /// Number of quotes and of self-checks.
        #[arg(long, default_value_t = 50)]
        count: usize,
    },
}

/// Options of `seb attest record`.
#[derive(Debug, clap::Args)]
pub struct RecordArgs {
    /// Where to write the policy (TOML).
    #[arg(long)]
    out: PathBuf,
    /// PCRs to quote (comma-separated), 0-15 only: software resets 16 and 23 (and a dynamic
    /// launch 17-22). 10 is where kernel IMA measures the broker image.
    #[arg(long, default_value = "0,1,2,3,4,5,6,7,10", value_delimiter = ',')]
    pcrs: Vec<u8>,
    /// PCR bank.
    #[arg(long, default_value = "sha256")]
    bank: String,
    /// Accepted EK CA certificate (PEM), as written into the policy; repeatable.
    #[arg(long)]
    ek_ca: Vec<String>,
    /// Event log (seb JSON form); defaults to [attestation] event_log.
    #[arg(long)]
    event_log: Option<PathBuf>,
    /// Maximum age of the broker's last good self-check.
    #[arg(long, default_value = "5m")]
    max_age: String,
}

/// Options of `seb attest verify`.
#[derive(Debug, clap::Args)]
pub struct VerifyArgs {
    /// Broker URL, e.g. https://127.0.0.1:8443
    #[arg(long)]
    broker: String,
    /// The seb root certificate (PEM): TLS trust anchor and AK certificate anchor.
    #[arg(long)]
    trust: PathBuf,
    /// The attestation policy (reference measurements).
    #[arg(long)]
    policy: PathBuf,
    /// Client certificate chain (PEM), if the relying party has one; attestation is served
    /// to anyone, so without --cert and --key the check presents no certificate.
    #[arg(long, requires = "key")]
    cert: Option<PathBuf>,
    /// Client private key (PKCS#8 PEM), with --cert.
    #[arg(long, requires = "cert")]
    key: Option<PathBuf>,
    /// Also write the evidence received to this file.
    #[arg(long)]
    save: Option<PathBuf>,
}

/// Runs an attest subcommand.
pub fn dispatch(config_path: Option<&Path>, command: AttestCommand) -> CliResult {
    match command {
        AttestCommand::Verify(a) => verify(a),
        AttestCommand::Enroll => super::with_config(config_path, |c| {
            let backend = open_backend(c, Some(1))?;
            enroll(c, backend.as_ref())
        }),
        AttestCommand::Record(a) => super::with_config(config_path, |c| record(c, a)),
        AttestCommand::Bench { count } => super::with_config(config_path, |c| bench(c, count)),
    }
}

/// How long `seb attest verify` waits for the broker's evidence, connection included.
const ATTEST_VERIFY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

fn attestation_config(config: &Config) -> Result<&AttestationConfig, CliError> {
    config
        .attestation
        .as_ref()
        .ok_or_else(|| "this command needs an [attestation] section in the configuration".into())
}

fn open_tpm(config: &Config) -> Result<Arc<Tpm>, CliError> {
    let tcti = config
        .attestation_tcti()
        .ok_or("[attestation] names no TPM (tcti)")?;
    Ok(Tpm::open(&tcti)?)
}

/// Creates the AK if needed, proves it shares a TPM with the EK, checks the EK certificate
/// against the policy's EK CAs and certifies the AK with the root key.
pub fn enroll(config: &Config, backend: &dyn KeyBackend) -> CliResult {
    let settings = attestation_config(config)?;
    let policy = AttestPolicy::load(&settings.policy)?;
    let tpm = open_tpm(config)?;
    let ak_path = config.ak_blob();
    if !ak_path.exists() {
        create_ak(&tpm, &ak_path)?;
    }
    let attestor = TpmAttestor::open(tpm, &ak_path)?;
    let endorsement = attestor.activate_credential()?;
    let trust = config.trust_dir();
    let ek_pem = match &endorsement.ek_certificate {
        Some(der) => {
            let cert = Certificate::parse(der)
                .map_err(|e| format!("the TPM's EK certificate is unparseable: {e}"))?;
            if ek_modulus(&cert)? != strip_zeros(&endorsement.ek_modulus) {
                return Err("the EK certificate in NV does not certify this TPM's EK".into());
            }
            let pem = cert.to_pem_string()?;
            policy
                .check_ek_certificate(pem.as_bytes(), SystemTime::now())
                .map_err(|e| format!("{} ({e})", e.code()))?;
            Some((pem, attest::ek_certificate_digest(&cert)?))
        }
        None if !policy.ek_cas().is_empty() => return Err(
            "the TPM has no EK certificate, but the policy only accepts EKs certified by its ek_ca"
                .into(),
        ),
        None => None,
    };
    let root = trust.root()?;
    let store = super::open_store(config)?;
    let signer = P384Signer::new(backend, &config.keys.root)?;
    let spki = {
        use der::Decode;
        SubjectPublicKeyInfoOwned::from_der(&attestor.ak_public()?.to_spki_der()?)?
    };
    let subject = ca::parse_subject(&format!("CN={} attestation key,O=seb", config.broker_id))?;
    let ak_cert = ca::issue_service(
        &signer,
        &root,
        spki,
        &subject,
        CertKind::AttestationKey {
            ek_certificate_sha256: ek_pem.as_ref().map(|(_, digest)| *digest),
        },
        config.ca.service_validity,
        SystemTime::now(),
    )?;
    // Recorded like every certificate the root issues (`seb cert list`, revocable by its
    // serial, a certificate_issued audit entry).
    let record =
        seb::store::IssuedCertificate::of(&ak_cert, "attestation-key", config.keys.root.clone())?;
    store.record_issued(&record)?;
    super::write_issued(
        &trust.ak_path(),
        record.pem.as_bytes(),
        &ak_cert.serial_hex(),
    )?;
    if let Some((pem, _)) = ek_pem {
        write_file(&trust.ek_path(), pem.as_bytes(), false)?;
    }
    say!(
        "attestation key enrolled ({}); credential activation against the EK succeeded; AK certificate serial {}",
        attestor.describe(),
        ak_cert.serial_hex()
    );
    Ok(())
}

fn record(config: &Config, args: RecordArgs) -> CliResult {
    let settings = attestation_config(config)?;
    let bank = match args.bank.as_str() {
        "sha256" => PcrBank::Sha256,
        "sha384" => PcrBank::Sha384,
        other => return Err(format!("unknown PCR bank {other:?} (sha256 or sha384)").into()),
    };
    if let Some(pcr) = args.pcrs.iter().find(|p| **p > 23) {
        return Err(format!(
            "PCR {pcr} does not exist: a TPM 2.0 has PCRs 0 to 23 (record 0-15; see \
             docs/ATTESTATION.md)"
        )
        .into());
    }
    // A PCR that software can reset records nothing worth comparing: refuse before reading.
    attest::check_pcr_selection(&args.pcrs)
        .map_err(|e| format!("not recording ({}): {e}", e.code()))?;
    let log_path = args.event_log.unwrap_or_else(|| settings.event_log.clone());
    let log = EventLog::from_json(&read_file(&log_path)?)
        .map_err(|e| format!("event log {}: {e}", log_path.display()))?;
    let tpm = open_tpm(config)?;
    let pcrs = read_pcrs_of(&tpm, bank, &args.pcrs)?;
    // Refuse to record a host whose log does not explain its PCRs.
    log.check_replay(bank, &pcrs)
        .map_err(|e| format!("not recording: {e}"))?;
    if args.ek_ca.is_empty() {
        tell!(
            "warning: the policy has no EK pinning (no --ek-ca): any TPM, a software one \
             included, can enroll an attestation key under it. Pass the TPM vendor's EK CA \
             certificate with --ek-ca (docs/ATTESTATION.md)"
        );
    }
    let text = AttestPolicy::record_toml(bank, &pcrs, Some(&log), &args.ek_ca, &args.max_age);
    let base = args.out.parent().unwrap_or(Path::new("."));
    AttestPolicy::parse(&text, base)?;
    write_file(&args.out, text.as_bytes(), false)?;
    say!(
        "recorded {} PCRs ({bank}) and {} events into {}",
        pcrs.len(),
        log.events
            .iter()
            .filter(|e| pcrs.contains_key(&e.pcr))
            .count(),
        args.out.display()
    );
    Ok(())
}

fn verify(args: VerifyArgs) -> CliResult {
    let root_pem = read_file(&args.trust)?;
    // The self-signed certificates only: an intermediate in the file must not pass for the
    // root that certifies the attestation key and the broker's TLS certificate directly.
    let roots = seb::chain::bundle_roots(&Certificate::parse_pem_chain(&root_pem)?)?;
    let policy = AttestPolicy::load(&args.policy)?;
    let tls = match (&args.cert, &args.key) {
        (Some(cert), Some(key)) => {
            ClientTls::new(&root_pem, &read_file(cert)?, &read_file(key)?, false)?
        }
        _ => ClientTls::anonymous(&root_pem)?,
    };
    let mut nonce = [0u8; 32];
    getrandom::fill(&mut nonce).map_err(|e| format!("no randomness: {e}"))?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    // The evidence must be bound to the TLS certificate of the session it comes over.
    // A broker that never answers (the host attestation guards against may be compromised)
    // must not hold the relying party: a quote takes well under a second (ATTESTATION.md §7).
    let (response, tls_certificate) = runtime
        .block_on(async {
            tokio::time::timeout(ATTEST_VERIFY_TIMEOUT, async {
                let mut client = Client::connect(&args.broker, &tls).await?;
                let response = client
                    .send(
                        "GET",
                        &format!("/v1/attestation?nonce={}", hex::encode(nonce)),
                        None,
                    )
                    .await?;
                Ok::<_, seb::client::ClientError>((response, client.server_certificate().to_vec()))
            })
            .await
        })
        .map_err(|_| {
            format!(
                "the broker did not answer within {} s: attestation not verified",
                ATTEST_VERIFY_TIMEOUT.as_secs()
            )
        })?
        .map_err(|e| super::explained(&tls, e))?;
    if response.status != 200 {
        return Err(format!("the broker answered {}: {}", response.status, response.text).into());
    }
    if let Some(path) = &args.save {
        write_file(path, response.text.as_bytes(), false)?;
    }
    let evidence: Evidence = serde_json::from_slice(response.text.as_bytes()).map_err(|e| {
        format!("malformed_evidence: the broker's evidence is not what it should be: {e}")
    })?;
    let check = QuoteCheck {
        nonce: &nonce,
        tls_certificate: &tls_certificate,
        roots: &roots,
        policy: &policy,
        now: SystemTime::now(),
    };
    match attest::verify_evidence(&evidence, &check) {
        Ok(v) => {
            say!("attestation OK: broker {} ({})", v.broker_id, v.ak_subject);
            say!(
                "  quote bound to this TLS session's certificate (SHA-256 {})",
                hex::encode(sha2::Sha256::digest(&tls_certificate))
            );
            say!(
                "  PCRs {:?} ({}) match the policy; event log replays ({} events)",
                v.pcrs.keys().collect::<Vec<_>>(),
                evidence.pcr_bank,
                evidence.event_log.events.len()
            );
            // resetCount/restartCount are obfuscated by the TPM for owner-hierarchy signers.
            say!("  TPM clock {} ms", v.info.clock);
            if check.policy.ek_cas().is_empty() {
                tell!(
                    "warning: the policy pins no EK CA (ek_ca), so the TPM itself was not \
                     checked: any TPM's EK is accepted (docs/ATTESTATION.md)"
                );
            }
            Ok(())
        }
        Err(e) => Err(format!("attestation REJECTED ({}): {e}", e.code()).into()),
    }
}

fn bench(config: &Config, count: usize) -> CliResult {
    let state =
        AttestationState::from_config(config)?.ok_or("no [attestation] in the configuration")?;
    let settings = attestation_config(config)?;
    let policy = AttestPolicy::load(&settings.policy)?;
    let attestor = TpmAttestor::open(open_tpm(config)?, &config.ak_blob())?;
    say!("attestor: {}", attestor.describe());
    let count = count.max(1);
    let mut quotes = Vec::with_capacity(count);
    for _ in 0..count {
        let started = std::time::Instant::now();
        attestor.quote(&[7u8; 32], policy.bank, &policy.pcrs)?;
        quotes.push(started.elapsed());
    }
    let mut checks = Vec::with_capacity(count);
    for _ in 0..count {
        let started = std::time::Instant::now();
        state.self_check()?;
        checks.push(started.elapsed());
    }
    for (name, mut samples) in [
        ("quote (PCR read + TPM2_Quote)", quotes),
        ("self-check (quote + verify)", checks),
    ] {
        samples.sort_unstable();
        let median = samples[samples.len() / 2];
        let p99 = samples[(samples.len() * 99 / 100).min(samples.len() - 1)];
        say!(
            "{name}: median {:.2} ms, p99 {:.2} ms over {} runs",
            median.as_secs_f64() * 1e3,
            p99.as_secs_f64() * 1e3,
            samples.len()
        );
    }
    Ok(())
}

/// The RSA modulus of an EK certificate's RSA public key.
fn ek_modulus(cert: &Certificate) -> Result<Vec<u8>, CliError> {
    #[derive(der::Sequence)]
    struct RsaPublicKey<'a> {
        modulus: der::asn1::UintRef<'a>,
        exponent: der::asn1::UintRef<'a>,
    }
    use der::Decode;
    let bits = cert
        .tbs()
        .subject_public_key_info()
        .subject_public_key
        .as_bytes()
        .ok_or("EK certificate key has unused bits")?;
    let key = RsaPublicKey::from_der(bits)
        .map_err(|e| format!("the EK certificate does not hold an RSA key: {e}"))?;
    let _ = key.exponent;
    Ok(strip_zeros(key.modulus.as_bytes()))
}

fn strip_zeros(b: &[u8]) -> Vec<u8> {
    let start = b.iter().position(|x| *x != 0).unwrap_or(b.len());
    b[start..].to_vec()
}
