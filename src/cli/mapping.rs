//! The mapping commands, `add-mapping`, `remove-mapping` and `mappings`.
//!
//! Who a command is about, an entity's public key or a wadm application
//! (`--application`), is checked by [`GranteeArgs::grantee`] before any connection, so a
//! key that could never be granted (a placeholder such as `MCOMPONENTPUBLICKEY...`, an
//! account key, a seed) gets its own message, not "no backend answers" from a subject the
//! dots made invalid. The message never repeats a seed.
//!
//! A grant ahead of a `put` is legitimate (the operator may map first), so `add-mapping`
//! grants names that do not exist yet, and says so on stderr. Names are printed plainly
//! (`db_password, api_key`), escaped for the terminal; `-o json` prints one document:
//! the grantee, the names, and (add-mapping) the names not stored yet.

use std::collections::BTreeSet;

use anyhow::bail;
use clap::Args;
use serde::Serialize;

use super::{printable, Conn, Output, Target};
use crate::client::AdminClient;
use crate::store::{ApplicationName, EntityKey, Grantee};

#[derive(Args)]
pub struct MappingArgs {
    #[command(flatten)]
    pub grantee: GranteeArgs,
    /// A secret name; repeat for several
    #[arg(long = "secret", required = true, value_name = "NAME")]
    pub secrets: Vec<String>,
    #[command(flatten)]
    pub target: Target,
    #[command(flatten)]
    pub output: Output,
}

#[derive(Args)]
pub struct EntityArgs {
    #[command(flatten)]
    pub grantee: GranteeArgs,
    // Text: one name per line; JSON: one array of names.
    #[command(flatten)]
    pub output: Output,
    #[command(flatten)]
    pub target: Target,
}

/// What add-mapping and remove-mapping print with `-o json`.
#[derive(Serialize)]
struct Changed<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    public_key: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    application: Option<&'a str>,
    secrets: &'a BTreeSet<String>,
    /// add-mapping: the names granted that no secret holds yet.
    #[serde(skip_serializing_if = "Option::is_none")]
    missing: Option<&'a [String]>,
}

impl<'a> Changed<'a> {
    fn new(grantee: &'a Grantee, secrets: &'a BTreeSet<String>) -> Self {
        let (public_key, application) = match grantee {
            Grantee::Entity(key) => (Some(key.as_str()), None),
            Grantee::Application(app) => (None, Some(app.as_str())),
        };
        Changed {
            public_key,
            application,
            secrets,
            missing: None,
        }
    }
}

/// `Public key 'M...'` or `Application 'shop'`, for the text output.
fn who(grantee: &Grantee) -> String {
    match grantee {
        Grantee::Entity(key) => format!("Public key '{key}'"),
        Grantee::Application(app) => format!("Application '{}'", printable(app.as_str())),
    }
}

/// Names as a reader writes them: `db_password, api_key`.
fn listed(names: impl IntoIterator<Item = impl AsRef<str>>) -> String {
    names
        .into_iter()
        .map(|n| printable(n.as_ref()).into_owned())
        .collect::<Vec<_>>()
        .join(", ")
}

/// `add-mapping`: grant the names, warn about the ones not stored yet.
pub async fn add(args: MappingArgs, conn: &Conn) -> anyhow::Result<()> {
    let grantee = args.grantee.grantee()?;
    let names: BTreeSet<String> = args.secrets.iter().cloned().collect();
    let client = args.target.client(conn).await?;
    match &grantee {
        Grantee::Application(app) => client.add_app_mapping(app.as_str(), &names).await?,
        Grantee::Entity(key) => client.add_mapping(key.as_str(), &names).await?,
    }
    let missing = missing(&client, &names).await;
    if !missing.is_empty() {
        eprintln!(
            "warning: no secret is stored under {} (yet): granted all the same; `piggybank \
             put` it before a component reads it",
            listed(&missing)
        );
    }
    if args.output.json() {
        let mut changed = Changed::new(&grantee, &names);
        changed.missing = Some(&missing);
        return Output::print_json(&changed);
    }
    println!(
        "{} can now access secrets: {}",
        who(&grantee),
        listed(&names)
    );
    Ok(())
}

/// The names no secret is stored under: one short listing each (the first name a listing
/// by the name as prefix returns is the name itself when it exists). A backend that
/// cannot answer (locked, refusing) makes no warning: the grant stands either way.
async fn missing(client: &AdminClient, names: &BTreeSet<String>) -> Vec<String> {
    let mut missing = Vec::new();
    for name in names {
        match client.list_secrets_page(name, None, Some(1)).await {
            Ok(page) if page.secrets.first().is_some_and(|s| &s.name == name) => {}
            Ok(_) => missing.push(name.clone()),
            Err(e) => {
                tracing::debug!(error = %e, "cannot check which granted secrets exist");
                return Vec::new();
            }
        }
    }
    missing
}

/// `remove-mapping`: revoke the names.
pub async fn remove(args: MappingArgs, conn: &Conn) -> anyhow::Result<()> {
    let grantee = args.grantee.grantee()?;
    let names: BTreeSet<String> = args.secrets.iter().cloned().collect();
    let client = args.target.client(conn).await?;
    match &grantee {
        Grantee::Application(app) => client.remove_app_mapping(app.as_str(), &names).await?,
        Grantee::Entity(key) => client.remove_mapping(key.as_str(), &names).await?,
    }
    if args.output.json() {
        return Output::print_json(&Changed::new(&grantee, &names));
    }
    println!(
        "{} no longer has access to secrets: {}",
        who(&grantee),
        listed(&names)
    );
    Ok(())
}

/// `mappings`: the names the grantee may read.
pub async fn list(args: EntityArgs, conn: &Conn) -> anyhow::Result<()> {
    let grantee = args.grantee.grantee()?;
    let client = args.target.client(conn).await?;
    let names = match &grantee {
        Grantee::Application(app) => client.get_app_mappings(app.as_str()).await?,
        Grantee::Entity(key) => client.get_mappings(key.as_str()).await?,
    };
    if args.output.json() {
        println!("{}", serde_json::to_string(&names)?);
    } else {
        for name in names {
            println!("{}", printable(&name));
        }
    }
    Ok(())
}

#[derive(Args)]
pub struct GranteeArgs {
    /// The public key of the component (M...) or provider (V...)
    #[arg(
        required_unless_present = "application",
        conflicts_with = "application",
        value_name = "PUBLIC_KEY"
    )]
    pub public_key: Option<String>,
    /// A wadm application (its manifest's name), instead of a key: every component and
    /// provider a host says is part of it
    #[arg(long, value_name = "APPLICATION")]
    pub application: Option<String>,
}

impl GranteeArgs {
    /// The grantee, checked as the backend will check it.
    pub fn grantee(&self) -> anyhow::Result<Grantee> {
        match (&self.application, &self.public_key) {
            (Some(app), _) => match ApplicationName::parse(app) {
                Ok(app) => Ok(Grantee::Application(app)),
                Err(e) => bail!("{e}"),
            },
            (None, Some(key)) => entity(key).map(Grantee::Entity),
            (None, None) => bail!("give a component or provider public key, or --application"),
        }
    }
}

/// `key` as an entity key, or why it is not one.
fn entity(key: &str) -> anyhow::Result<EntityKey> {
    let key = key.trim();
    if let Ok(entity) = EntityKey::parse(key) {
        return Ok(entity);
    }
    // A seed is a private key: say what it is without repeating it.
    if key.starts_with('S') && nkeys::KeyPair::from_seed(key).is_ok() {
        bail!(
            "invalid entity: that is a seed (a private key), not a public key: give the \
             component's (M...) or provider's (V...) public key, as `wash inspect` shows it"
        );
    }
    bail!(
        "invalid entity {:?}: not a component (M...) or provider (V...) public key (`wash \
         inspect` shows a component's or provider's key)",
        super::printable(&key.chars().take(80).collect::<String>())
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_placeholder_an_account_key_and_a_seed_are_not_entities_and_a_seed_is_not_repeated() {
        let component = nkeys::KeyPair::new_module();
        let provider = nkeys::KeyPair::new_service();
        for ok in [component.public_key(), provider.public_key()] {
            assert_eq!(entity(&ok).unwrap().as_str(), ok);
        }
        let account = nkeys::KeyPair::new_account().public_key();
        for bad in ["MCOMPONENTPUBLICKEY...", "not-a-key", account.as_str(), ""] {
            let err = entity(bad).unwrap_err().to_string();
            assert!(
                err.contains("not a component (M...) or provider (V...) public key"),
                "{err}"
            );
        }
        let seed = component.seed().unwrap();
        let err = entity(&seed).unwrap_err().to_string();
        assert!(err.contains("seed") && !err.contains(&seed), "{err}");
    }
}
