//! The grouped spellings of the client and operator commands, as vault and natscli group
//! theirs: `secret put|get|delete|list`, `mapping add|remove|list`, and
//! `operator init|unlock|lock|status|rotate` (also `database ...`). Each is the flat
//! command under another name: the same arguments, turned into the flat [`Command`] by
//! [`Command::ungrouped`] before anything runs, so a group cannot drift from the command it
//! names. The flat names (`put`, `add-mapping`, `init`, ...) stay: the sample's scripts and
//! the README use them.

use clap::Subcommand;

use super::get::GetArgs;
use super::mapping::{EntityArgs, MappingArgs};
use super::put::PutArgs;
use super::{database, Command, ListArgs, NameArgs};

#[derive(Subcommand)]
pub enum SecretCommand {
    /// Put a secret (value from --string, --binary FILE, or stdin): `piggybank put`
    Put(PutArgs),
    /// Get a secret: `piggybank get`
    Get(GetArgs),
    /// Delete a secret and all its versions: `piggybank delete`
    Delete(NameArgs),
    /// List secrets (metadata only, never values): `piggybank list`
    List(ListArgs),
}

#[derive(Subcommand)]
pub enum MappingCommand {
    /// Allow an entity, or a wadm application, to read secrets: `piggybank add-mapping`
    Add(MappingArgs),
    /// Revoke an entity's (or an application's) access: `piggybank remove-mapping`
    Remove(MappingArgs),
    /// Show the secrets an entity (or an application) may read: `piggybank mappings`
    List(EntityArgs),
}

#[derive(Subcommand)]
pub enum OperatorCommand {
    /// Initialize a sealed store: `piggybank init`
    Init(database::InitArgs),
    /// Unlock a sealed store with its key or one share: `piggybank unlock`
    #[command(after_help = super::UNLOCK_AFTER_HELP)]
    Unlock(database::UnlockArgs),
    /// Lock the store: `piggybank lock`
    Lock(database::DatabaseArgs),
    /// Every instance's mode, seal, counts and version: `piggybank status`
    Status(database::DatabaseArgs),
    /// Add a new data key and re-seal every value with it: `piggybank rotate`
    Rotate(database::DatabaseArgs),
}

impl Command {
    /// The flat command a grouped spelling names; a flat command as it is.
    pub fn ungrouped(self) -> Command {
        match self {
            Command::Secret(group) => match group {
                SecretCommand::Put(args) => Command::Put(args),
                SecretCommand::Get(args) => Command::Get(args),
                SecretCommand::Delete(args) => Command::Delete(args),
                SecretCommand::List(args) => Command::List(args),
            },
            Command::Mapping(group) => match group {
                MappingCommand::Add(args) => Command::AddMapping(args),
                MappingCommand::Remove(args) => Command::RemoveMapping(args),
                MappingCommand::List(args) => Command::Mappings(args),
            },
            Command::Operator(group) => match group {
                OperatorCommand::Init(args) => Command::Init(args),
                OperatorCommand::Unlock(args) => Command::Unlock(args),
                OperatorCommand::Lock(args) => Command::Lock(args),
                OperatorCommand::Status(args) => Command::Status(args),
                OperatorCommand::Rotate(args) => Command::Rotate(args),
            },
            flat => flat,
        }
    }
}
