//! The layout as text: the nats-server `authorization` block, the server config that
//! includes it, and the same users as `nsc` commands. Every list is quoted, so no subject is
//! read as a variable or a shell word.

use std::fmt::Write as _;

use super::{Deployment, Role};

impl Deployment {
    /// The nats-server `authorization` block: one nkey user per role, `users` pairing each
    /// role with its user's public key (`U...`).
    pub fn authorization(&self, users: &[(Role, String)]) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "# The NATS layout of piggybank backend {:?} (subjects {}.>, bucket {}),\n\
             # written by `piggybank nats-config`. Include it in the nats-server config.\n\
             # Each user is an nkey: the seed stays in its role's file, the server holds\n\
             # only the public key.",
            self.backend_name,
            self.protocol(),
            self.secrets_bucket,
        );
        out.push_str("authorization {\n  users = [\n");
        for (role, public_key) in users {
            let p = self.permissions(role);
            let _ = writeln!(out, "    # {}", role.describe());
            let _ = writeln!(out, "    {{\n      nkey: {}", quoted(public_key));
            out.push_str("      permissions: {\n");
            write_direction(&mut out, "publish", &p.publish_allow, &p.publish_deny);
            write_direction(&mut out, "subscribe", &p.subscribe_allow, &p.subscribe_deny);
            if p.allow_responses {
                out.push_str("        allow_responses: true\n");
            }
            out.push_str("      }\n    }\n");
        }
        out.push_str("  ]\n}\n");
        out
    }

    /// The same users for an operator/JWT deployment: one `nsc add user` per role, with the
    /// same allow and deny lists (nsc makes each user's keys; `nsc generate creds` then
    /// writes the `.creds` file `--nats-creds-file` reads). `$ACCOUNT` names the account
    /// piggybank's streams live in.
    pub fn nsc_script(&self) -> String {
        let mut out = format!(
            "#!/bin/sh\n\
             # Written by `piggybank nats-config`: the NATS layout of backend {:?} as nsc users,\n\
             # for an operator/JWT setup. Run: ACCOUNT=<account> sh nsc-users.sh; then\n\
             # nsc push (or your resolver's update), and nsc generate creds -a \"$ACCOUNT\" -n <user>.\n\
             set -eu\n: \"${{ACCOUNT:?set ACCOUNT to the account piggybank's streams live in}}\"\n",
            self.backend_name
        );
        for role in self.roles() {
            let p = self.permissions(&role);
            let name = format!("piggybank-{}-{}", self.backend_name, role.file_stem());
            let _ = write!(
                out,
                "\n# {}\nnsc add user -a \"$ACCOUNT\" --name {name}",
                role.describe()
            );
            for (flag, list) in [
                ("--allow-pub", &p.publish_allow),
                ("--deny-pub", &p.publish_deny),
                ("--allow-sub", &p.subscribe_allow),
                ("--deny-sub", &p.subscribe_deny),
            ] {
                if !list.is_empty() {
                    let _ = write!(out, " \\\n  {flag} '{}'", list.join(","));
                }
            }
            if p.allow_responses {
                out.push_str(" \\\n  --allow-pub-response");
            }
            out.push('\n');
        }
        out
    }
}

/// The server config that includes the layout: JetStream syncs every write to disk before it
/// acknowledges it (see docs/nats-layout.md for why and what it costs).
pub fn server_config(authorization_file: &str, extra: &str) -> String {
    format!(
        "# Written by `piggybank nats-config`: JetStream with every write synced before it is\n\
         # acknowledged (an acknowledged revocation survives a power loss), and the layout.\n\
         {extra}jetstream {{\n  sync_interval: always\n}}\n\
         include {}\n",
        quoted(authorization_file)
    )
}

fn write_direction(out: &mut String, name: &str, allow: &[String], deny: &[String]) {
    let list = |items: &[String]| {
        items
            .iter()
            .map(|s| quoted(s))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let _ = write!(out, "        {name}: {{ allow: [{}]", list(allow));
    if !deny.is_empty() {
        let _ = write!(out, ", deny: [{}]", list(deny));
    }
    out.push_str(" }\n");
}

/// A string in the config's syntax: JSON's quoting, which nats-server reads literally (no
/// `$variable` is expanded inside quotes).
fn quoted(s: &str) -> String {
    serde_json::Value::String(s.to_string()).to_string()
}
