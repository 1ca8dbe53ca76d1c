//! The kill switches on a running broker: `seb epoch bump|show`, `seb freeze`, `seb unfreeze`.
//!
//! Each writes the store in the state directory (with an event in the same commit); the
//! running broker reads it every `seb::broker::POLICY_INTERVAL`, so the change takes effect
//! within a second without a restart. `policy.epoch` and `policy.frozen` in the configuration
//! are applied by `seb serve` at every start (`cli::serve`): a floor for the epoch, and a
//! freeze.

use std::time::SystemTime;

use seb::config::Config;

use super::{open_store, CliResult};

/// `seb epoch ...`.
#[derive(Debug, clap::Subcommand)]
pub enum EpochCommand {
    /// Raise the policy epoch by one: every token issued before is refused by executors and
    /// at redemption.
    Bump,
    /// Print the current policy epoch.
    Show,
}

/// The epoch in effect: the larger of the configured and the stored one.
fn effective_epoch(config: &Config, stored: Option<u64>) -> u64 {
    stored.unwrap_or(0).max(config.policy.epoch)
}

/// Runs `seb epoch ...`.
pub fn epoch(config: &Config, command: EpochCommand) -> CliResult {
    let store = open_store(config)?;
    match command {
        EpochCommand::Bump => {
            let epoch = store.bump_epoch(config.policy.epoch, SystemTime::now())?;
            say!("policy epoch is now {epoch}; the broker applies it within a second, and tokens of earlier epochs are refused");
        }
        EpochCommand::Show => {
            let state = store.policy_state()?;
            say!("{}", effective_epoch(config, state.epoch));
        }
    }
    Ok(())
}

/// Options of `seb freeze` / `seb unfreeze`.
#[derive(Debug, clap::Args)]
pub struct FreezeArgs {
    /// Why (recorded with the event).
    #[arg(long, default_value = "")]
    reason: String,
}

/// Runs `seb freeze` (`frozen`) or `seb unfreeze`.
pub fn freeze(config: &Config, args: FreezeArgs, frozen: bool) -> CliResult {
    let store = open_store(config)?;
    store.set_frozen(frozen, &args.reason, SystemTime::now())?;
    if frozen {
        say!("issuance frozen: the broker refuses every new token within a second (issuance_frozen) until `seb unfreeze`");
    } else {
        say!("issuance resumed: the broker issues tokens again within a second");
    }
    Ok(())
}
