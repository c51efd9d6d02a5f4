//! `piggybank nats-config`: writes the least-privilege NATS layout of one deployment
//! ([`crate::nats_layout`]) into a directory: one nkey seed file per role (mode 0600, kept
//! when it exists, so running it again with one more `--app` changes no other user), the
//! `authorization` block (`auth.conf`), a server config that includes it with
//! `jetstream { sync_interval: always }` (`nats-server.conf`), and the same users as `nsc`
//! commands for an operator/JWT setup (`nsc-users.sh`). Prints who may do what; never a
//! seed.

use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::Args;
use zeroize::Zeroizing;

use crate::config::{self, env};
use crate::nats_layout::{self, Deployment, Role};

/// The file the authorization block is written to, beside the seeds.
pub(crate) const AUTHORIZATION_FILE: &str = "auth.conf";
/// The server config that includes it.
pub(crate) const SERVER_CONFIG_FILE: &str = "nats-server.conf";
/// The same users as nsc commands, for an operator/JWT setup.
pub(crate) const NSC_SCRIPT_FILE: &str = "nsc-users.sh";
/// The admin signing key (a user nkey seed) the printed `run` line requires with
/// `--admin-keys`: without it the admin role's NATS user alone would administer the store,
/// and read every value through `read_secret`.
pub(crate) const ADMIN_SIGNING_SEED_FILE: &str = "admin.seed";

#[derive(Args)]
pub struct NatsConfigArgs {
    /// The directory to write the seeds and configs to (created with mode 0700)
    #[arg(long)]
    pub dir: PathBuf,
    /// The subject prefix of the backend (its -s)
    #[arg(short = 's', long, default_value = config::DEFAULT_SUBJECT_BASE)]
    pub subject_base: String,
    /// The name of the backend (its -n)
    #[arg(short = 'n', long = "name", value_name = "BACKEND_NAME", default_value = config::DEFAULT_BACKEND_NAME)]
    pub backend_name: String,
    /// The KV bucket secrets are stored in (its -b)
    #[arg(short = 'b', long, default_value = config::DEFAULT_SECRETS_BUCKET)]
    pub secrets_bucket: String,
    /// The secrets API version
    #[arg(long, default_value = config::DEFAULT_API_VERSION)]
    pub secrets_api_version: String,
    /// Prefix of the Piggy Bank API and the database operations (the backend's
    /// --piggybank-prefix)
    #[arg(long, env = env::PIGGYBANK_PREFIX, default_value = crate::piggybank_api::DEFAULT_PREFIX)]
    pub piggybank_prefix: String,
    /// A Piggy Bank API application: a user of its own on `<PREFIX>.<APP>.>`; repeat for
    /// several
    #[arg(long = "app", value_name = "NAME")]
    pub apps: Vec<String>,
    /// Bind an inbox of any name to an application (`foo=foo.secrets`): it may receive
    /// there too, as the backend's `--app-inbox` answers it there; repeat for several
    #[arg(long = "app-inbox", value_name = "APP=PREFIX")]
    pub app_inboxes: Vec<crate::config::AppInbox>,
    /// A read-only Piggy Bank API application (e.g. `global`): every application's user may
    /// request its secrets, which only signed admin commands write (the backend's
    /// `--read-only-apps`); repeat for several
    #[arg(long = "read-only-app", value_name = "NAME")]
    pub read_only_apps: Vec<String>,
    #[command(flatten)]
    pub output: super::Output,
}

/// A layout written to a directory.
pub(crate) struct WrittenLayout {
    pub deployment: Deployment,
    /// Each role, its seed file and its user's public key.
    pub users: Vec<(Role, PathBuf, String)>,
    pub server_config: PathBuf,
}

impl WrittenLayout {
    pub fn seed_file(&self, role: &Role) -> Option<&Path> {
        self.users
            .iter()
            .find(|(r, _, _)| r == role)
            .map(|(_, path, _)| path.as_path())
    }

    pub fn public_key(&self, role: &Role) -> Option<&str> {
        self.users
            .iter()
            .find(|(r, _, _)| r == role)
            .map(|(_, _, key)| key.as_str())
    }
}

/// Write the layout of `deployment` into `dir` (absolute paths in what it returns).
pub(crate) fn write_layout(dir: &Path, deployment: Deployment) -> anyhow::Result<WrittenLayout> {
    super::dev::create_private_dir(dir)?;
    let dir = std::path::absolute(dir).context("cannot resolve the layout directory")?;
    let mut users = Vec::new();
    for role in deployment.roles() {
        let path = dir.join(format!("{}.nk", role.file_stem()));
        let public_key = load_or_create_user(&path, &role)?;
        users.push((role, path, public_key));
    }
    let pairs: Vec<(Role, String)> = users
        .iter()
        .map(|(role, _, key)| (role.clone(), key.clone()))
        .collect();
    let auth = dir.join(AUTHORIZATION_FILE);
    std::fs::write(&auth, deployment.authorization(&pairs))
        .with_context(|| format!("cannot write {}", auth.display()))?;
    let server_config = dir.join(SERVER_CONFIG_FILE);
    std::fs::write(
        &server_config,
        nats_layout::server_config(AUTHORIZATION_FILE, ""),
    )
    .with_context(|| format!("cannot write {}", server_config.display()))?;
    let nsc = dir.join(NSC_SCRIPT_FILE);
    std::fs::write(&nsc, deployment.nsc_script())
        .with_context(|| format!("cannot write {}", nsc.display()))?;
    Ok(WrittenLayout {
        deployment,
        users,
        server_config,
    })
}

/// The public key of the user whose seed is in `path`, made (mode 0600) if it is not there.
fn load_or_create_user(path: &Path, role: &Role) -> anyhow::Result<String> {
    let seed = if path.exists() {
        super::files::read_private_line(path, "nkey seed file")?
    } else {
        let key = nkeys::KeyPair::new_user();
        let seed = Zeroizing::new(key.seed().context("cannot encode a new nkey seed")?);
        let body = Zeroizing::new(format!(
            "# piggybank nats-config: the NATS nkey of {} (piggybank --nats-nkey, nats --nkey)\n{}\n",
            role.describe(),
            seed.as_str()
        ));
        super::write_private(path, body.as_bytes())?;
        seed
    };
    let key = nkeys::KeyPair::from_seed(&seed)
        .map_err(|_| anyhow::anyhow!("{} holds no valid nkey seed", path.display()))?;
    Ok(key.public_key())
}

pub(crate) fn run(args: NatsConfigArgs) -> anyhow::Result<()> {
    let deployment = Deployment::new(
        &args.subject_base,
        &args.secrets_api_version,
        &args.backend_name,
        &args.secrets_bucket,
        &args.piggybank_prefix,
        &args.apps,
    )?
    .with_app_inboxes(args.app_inboxes)?
    .with_read_only_apps(args.read_only_apps)?;
    let layout = write_layout(&args.dir, deployment)?;
    let signer = super::admin_seed::load_or_create(&args.dir.join(ADMIN_SIGNING_SEED_FILE))?;
    let admin = AdminSigning {
        public_key: signer.public_key().to_string(),
        seed_file: std::path::absolute(args.dir.join(ADMIN_SIGNING_SEED_FILE))
            .context("cannot resolve the admin seed file's path")?,
    };
    if args.output.json() {
        let users: Vec<_> = layout
            .users
            .iter()
            .map(|(role, path, key)| {
                serde_json::json!({
                    "role": role.file_stem(),
                    "seed_file": path,
                    "public_key": key,
                })
            })
            .collect();
        return super::Output::print_json(&serde_json::json!({
            "backend": layout.deployment.backend_name,
            "server_config": layout.server_config,
            "users": users,
            "admin_key": admin.public_key,
            "admin_seed_file": admin.seed_file,
        }));
    }
    print!("{}", summary(&layout, &admin));
    Ok(())
}

/// The admin signing key of a layout: its public key for `--admin-keys`, its seed's file
/// for the operators (`PIGGYBANK_ADMIN_SEED_FILE`).
pub(crate) struct AdminSigning {
    pub public_key: String,
    pub seed_file: PathBuf,
}

/// Who may do what, which files to hand to whom, and how the backend must run.
pub(crate) fn summary(layout: &WrittenLayout, admin: &AdminSigning) -> String {
    let d = &layout.deployment;
    let mut out = format!(
        "NATS layout of backend {:?} written: server config {} (include it, or run nats-server -c it)\n\n",
        d.backend_name,
        layout.server_config.display()
    );
    for (role, path, key) in &layout.users {
        out.push_str(&format!(
            "  {:<12} {}\n               seed file {} ({key})\n",
            role.file_stem(),
            role.describe(),
            path.display()
        ));
    }
    let backend = layout.seed_file(&Role::Backend).map(Path::display);
    let backend = backend.map(|p| p.to_string()).unwrap_or_default();
    let read_only = match d.read_only_apps.as_slice() {
        [] => String::new(),
        apps => format!(" \\\n    --read-only-apps {}", apps.join(",")),
    };
    let app_inboxes: String = d
        .app_inboxes
        .iter()
        .map(|i| {
            format!(
                " \\\n    --app-inbox {}={}",
                i.application,
                i.prefix.trim_end_matches('.')
            )
        })
        .collect();
    out.push_str(&format!(
        "\nRun the backend as its role, answering the admin's and the applications' inboxes:\n  \
         piggybank run -n {} -s {} -b {} --piggybank-prefix {} --nats-nkey {backend} \\\n    \
         --sealed-keys-only --admin-keys {admin_key} \\\n    \
         --reply-prefixes {}{app_inboxes}{read_only}\n\
         Operators: NATS_NKEY={admin_nk} NATS_INBOX_PREFIX={} \\\n  \
         PIGGYBANK_ADMIN_SEED_FILE={admin_seed} piggybank ...\n\
         Applications: connect with their seed and the inbox prefix _INBOX_<app> (or the one\n\
         bound to them with --app-inbox).\n\
         restore and rekey write the buckets: run them as the backend role\n  \
         (NATS_NKEY={backend} NATS_INBOX_PREFIX={}.cli).\n\
         No user but the backend may write the buckets or create, update, purge or delete a\n\
         stream. With an operator/JWT setup: nsc-users.sh makes the same users.\n\
         See docs/nats-layout.md.\n",
        d.backend_name,
        d.subject_base,
        d.secrets_bucket,
        d.piggybank_prefix,
        d.reply_prefixes().join(","),
        nats_layout::admin_inbox_prefix(&d.backend_name),
        crate::reply_policy::SERVER_INBOX_PREFIX,
        admin_key = admin.public_key,
        admin_nk = layout
            .seed_file(&Role::Admin)
            .map(|p| super::dev::shell_word(&p.display().to_string()))
            .unwrap_or_default(),
        admin_seed = super::dev::shell_word(&admin.seed_file.display().to_string()),
    ));
    out
}
