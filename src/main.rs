//! The `seb` command: one binary for the security team (init, certificates, revocation), the
//! broker host and the benchmarks.
//!
//! The binary only parses arguments, wires configuration to the library and turns errors into a
//! message and an exit status. It must never print a PIN, and never panic on bad input.

#![deny(clippy::print_stdout)]

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Writes one line to stdout, like `println!`, but never panics: a reader that went away
/// (`seb keys | head -1`: EPIPE) or any other write error just drops the output, and the
/// command finishes and exits with its own status. `println!` would panic (exit 101).
/// `#![deny(clippy::print_stdout)]` above keeps `println!` out of the binary.
macro_rules! say {
    () => {
        $crate::cli::say(format_args!(""))
    };
    ($($arg:tt)*) => {
        $crate::cli::say(format_args!($($arg)*))
    };
}

/// Writes one line to stderr ([`cli::tell`]): like `eprintln!`, but a closed stderr (`seb …
/// 2>&1 | head -1`) drops the line instead of panicking.
macro_rules! tell {
    ($($arg:tt)*) => {
        $crate::cli::tell(format_args!($($arg)*))
    };
}

mod bench;
mod cli;

/// mimalloc rather than the C library's allocator for the broker's own allocations. SoftHSM2
/// runs in this process and keeps the C library's allocator to itself then; with both sharing
/// it, the raw two-session P-256 signing rate measured inside the broker process after a load
/// fell by about a fifth, and issuance throughput with it (docs/PERFORMANCE.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// seb, the Sovereign Execution Broker.
#[derive(Debug, Parser)]
#[command(name = "seb", version, about, propagate_version = true)]
struct Args {
    /// Configuration file: seb.toml, or executor.toml for `seb exec`. Required by commands that
    /// use the HSM or the state, and by `seb exec`.
    #[arg(long, global = true, env = "SEB_CONFIG")]
    config: Option<PathBuf>,

    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Generate the broker's keys inside the HSM and write the root and service certificates.
    Init(cli::init::InitArgs),
    /// Generate a key pair (P-384, or P-256 with --curve p256) and a CSR for an agent,
    /// approver or executor (runs anywhere).
    Keygen(cli::cert::KeygenArgs),
    /// Issue and revoke certificates.
    #[command(subcommand)]
    Cert(cli::cert::CertCommand),
    /// Write a CRL signed in the HSM by the root key, or with --issuer by an intermediate whose key is there.
    Crl(cli::cert::CrlArgs),
    /// List the broker's keys in the HSM and how the device protects them.
    Keys,
    /// Check a deployment: config, file modes, the HSM and every key, the state directory,
    /// certificates near expiry, attestation. Exit 0 only when there is no problem.
    Check,
    /// Re-key a broker key (token, tls or audit): a new generation in the device and its
    /// certificate; a running broker switches without a restart.
    Rotate(cli::rotate::RotateArgs),
    /// Seal the HSM user PIN in the [attestation] TPM to the current boot state (PCRs).
    SealPin(cli::seal::SealArgs),
    /// Verify execution tokens offline (needs no --config). Exit status: 0 verified, 1
    /// refused or error, 2 usage, 3 signature only (--signature-only: nothing else checked).
    #[command(subcommand)]
    Token(cli::token::TokenCommand),
    /// Measure the HSM, the CA, the authorization decision and the broker.
    #[command(subcommand)]
    Bench(bench::BenchCommand),
    /// TPM attestation: enroll the attestation key, record reference values, verify a broker.
    #[command(subcommand)]
    Attest(cli::attest::AttestCommand),
    /// The audit log: verify it offline with only the root certificate, export it for a SIEM
    /// (needs no --config).
    #[command(subcommand)]
    Audit(cli::audit::AuditCommand),
    /// Run the broker (HTTPS with client certificates) until SIGTERM.
    Serve(cli::serve::ServeArgs),
    /// Create or bring up to date the store's schema (the PostgreSQL database of replicas, or
    /// SQLite in the state directory). `seb init` does it too; with SQLite every command
    /// opening the store does, with PostgreSQL only `init` and `migrate` (the others refuse
    /// another version).
    Migrate,
    /// Ask a broker for an execution token, as an agent. Exit status: 0 granted, 2 pending
    /// approval (without --wait), 1 denied, rejected, expired or error.
    Request(cli::request::RequestArgs),
    /// Serve the agent side to an MCP host over stdio (Model Context Protocol): tools
    /// list_grants, request_execution, execution_status and, with --executor, execute. The
    /// identity and the endpoints come from these options only, never from the model.
    Mcp(cli::mcp::McpArgs),
    /// List the requests waiting for your approval, with the exact parameters (as an approver).
    Pending(cli::approve::PendingArgs),
    /// Sign and post a decision on a pending request with your own key (as an approver).
    Approve(cli::approve::ApproveArgs),
    /// Run the reference executor (HTTPS with client certificates) until SIGTERM: verifies
    /// tokens offline, redeems them once, runs the mapped action, returns a signed receipt.
    /// `--config` names the executor's configuration (executor.toml).
    Exec,
    /// Verify an executor's signed receipt.
    #[command(subcommand)]
    Receipt(cli::exec::ReceiptCommand),
    /// The policy epoch of the running broker: `bump` refuses every earlier token.
    #[command(subcommand)]
    Epoch(cli::policy::EpochCommand),
    /// Stop all issuance on the running broker (within a second), until `seb unfreeze`.
    Freeze(cli::policy::FreezeArgs),
    /// Resume issuance after `seb freeze`.
    Unfreeze(cli::policy::FreezeArgs),
    /// The demo's sample action: write TEXT into DIR/NAME (a plain file name).
    DemoWrite(cli::exec::DemoWriteArgs),
}

fn main() -> ExitCode {
    let args = Args::parse();
    cli::init_tracing();
    cli::cap_tss_logging();
    let result = match args.command {
        Command::Keygen(a) => cli::cert::keygen(a),
        Command::Init(a) => cli::with_config(args.config.as_deref(), |c| cli::init::run(c, a)),
        Command::Cert(cli::cert::CertCommand::Show(a)) => {
            cli::with_optional_config(args.config.as_deref(), |c| cli::inventory::show(c, a))
        }
        Command::Cert(c) => cli::with_config(args.config.as_deref(), |cfg| cli::cert::run(cfg, c)),
        Command::Crl(a) => cli::with_config(args.config.as_deref(), |c| cli::cert::crl(c, a)),
        Command::Rotate(a) => {
            cli::with_config(args.config.as_deref(), |c| cli::rotate::rotate(c, a))
        }
        Command::Check => cli::with_config(args.config.as_deref(), |config| {
            cli::check::run(config, args.config.as_deref())
        }),
        Command::Keys => cli::with_config(args.config.as_deref(), cli::init::keys),
        Command::SealPin(a) => cli::with_config(args.config.as_deref(), |c| cli::seal::run(c, a)),
        Command::Token(t) => match cli::token::run(t) {
            Ok(code) => return code,
            Err(e) => Err(e),
        },
        Command::Bench(b) => bench::dispatch(args.config.as_deref(), b),
        Command::Attest(a) => cli::attest::dispatch(args.config.as_deref(), a),
        Command::Audit(a) => cli::audit::run(a),
        Command::Serve(a) => cli::with_config(args.config.as_deref(), |c| cli::serve::serve(c, a)),
        Command::Migrate => cli::with_config(args.config.as_deref(), cli::migrate),
        Command::Pending(a) => cli::approve::pending(a),
        Command::Mcp(a) => cli::mcp::run(a),
        Command::Approve(a) => cli::approve::approve(a),
        Command::Exec => cli::exec::exec(args.config.as_deref()),
        Command::Receipt(r) => cli::exec::receipt(r),
        Command::Epoch(e) => cli::with_config(args.config.as_deref(), |c| cli::policy::epoch(c, e)),
        Command::Freeze(a) => {
            cli::with_config(args.config.as_deref(), |c| cli::policy::freeze(c, a, true))
        }
        Command::Unfreeze(a) => {
            cli::with_config(args.config.as_deref(), |c| cli::policy::freeze(c, a, false))
        }
        Command::DemoWrite(a) => cli::exec::demo_write(a),
        Command::Request(a) => match cli::request::run(a) {
            Ok(code) => return code,
            Err(e) => Err(e),
        },
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            tell!("error: {err}");
            let mut pin_refused = is_pin_refusal(err.as_ref());
            let mut source = std::error::Error::source(err.as_ref());
            while let Some(cause) = source {
                tell!("  caused by: {cause}");
                pin_refused |= is_pin_refusal(cause);
                source = cause.source();
            }
            if pin_refused {
                // EX_CONFIG: deploy/seb.service does not restart on it, so a wrong PIN is not
                // offered to the HSM again every few seconds until the HSM locks it.
                ExitCode::from(PIN_REFUSED_EXIT)
            } else {
                ExitCode::FAILURE
            }
        }
    }
}

/// Exit status when the HSM refused the PIN (sysexits EX_CONFIG).
const PIN_REFUSED_EXIT: u8 = 78;

fn is_pin_refusal(error: &(dyn std::error::Error + 'static)) -> bool {
    matches!(
        error.downcast_ref::<seb::backend::BackendError>(),
        Some(seb::backend::BackendError::PinIncorrect | seb::backend::BackendError::PinLocked)
    )
}
