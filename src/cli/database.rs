//! The database commands, `init`, `unlock`, `lock`, `status` and `rotate`: requests on
//! `{prefix}.database.{name}.<op>` (served by `database`), printed as text
//! or, with `--json`, as JSON.
//!
//! `status` reaches every instance (no queue group), so it gathers every reply that arrives
//! until none has come for `QUIET`, and exits as `vault status` does: 0 unsealed, 2 if any
//! instance is sealed, 1 on error. `lock`, `rotate` and each `unlock` read the first reply;
//! `init` reads until an answer proves itself (below).
//!
//! Key material never crosses the bus in clear (`crate::seal::transfer`): `init` sends a
//! one-time xkey and opens the key (or shares) sealed to it, from the backend's transit key
//! when pinned with `-t` (anyone can seal something to the one-time key and answer first);
//! `unlock` asks `status` which instances there are, with a one-time xkey, and sends the
//! key or share, sealed to the unseal xkey it announced, to each instance that proved it
//! holds the backend's transit key (pinned with `-t`): anyone on the account can answer
//! `status`.
//!
//! `init`, `unlock`, `lock` and `rotate` are signed with the admin seed when one is given
//! (`PIGGYBANK_ADMIN_SEED` or `--admin-seed-file`): a backend run with `--admin-keys`
//! refuses every one of them without it.
//!
//! A key or share is read from the env or stdin, never from argv, and printed only by
//! `init`, once. On stdin, a key and a share are told apart by decoding them (32 bytes or
//! 33), not by their length as text: both are 44 base64 characters.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::{anyhow, bail, Context};
use clap::Args;
use futures::StreamExt as _;
use zeroize::Zeroizing;

use async_nats::HeaderMap;
use nkeys::XKey;

use super::Conn;
use crate::config::{self, env};
use crate::seal::key_record::{self as vault, DatabaseKey as MasterKey};
use crate::seal::transfer::{InstanceClaim, Sealed, SealedInitialize, SealedUnlock};
use crate::seal::StatusReport;

/// How long `status` waits for the first reply.
const FIRST_REPLY: Duration = Duration::from_secs(5);
/// `status` stops gathering once no reply has come for this long.
const QUIET: Duration = Duration::from_millis(300);
/// After a "no responders" (which anyone can forge into an inbox), how long a real reply may
/// still come before it is believed.
const NO_RESPONDERS_GRACE: Duration = Duration::from_secs(1);
/// ... or once this many instances have answered.
const MAX_REPLIES: usize = 1024;
/// How long `init` waits for its answer (the request timeout of the other commands).
const INIT_TIMEOUT: Duration = Duration::from_secs(10);
/// The most distinct keys `init --unverified-instances` shows.
const MAX_INIT_ANSWERS: usize = 16;

#[derive(Args)]
pub struct DatabaseArgs {
    /// Prefix of the database operations (the backend's --piggybank-prefix)
    #[arg(long, env = env::PIGGYBANK_PREFIX, default_value = crate::piggybank_api::DEFAULT_PREFIX)]
    pub piggybank_prefix: String,
    /// The name of the backend (its -n/--name)
    #[arg(short = 'n', long = "name", default_value = config::DEFAULT_BACKEND_NAME)]
    pub backend_name: String,
    /// Print the reply as JSON instead of text
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub conn: Conn,
    #[command(flatten)]
    pub admin: super::admin_seed::AdminSeed,
}

impl DatabaseArgs {
    fn subject(&self, op: &str) -> String {
        crate::database::subject(&self.piggybank_prefix, &self.backend_name, op)
    }
}

#[derive(Args)]
pub struct UnlockArgs {
    #[command(flatten)]
    pub db: DatabaseArgs,
    #[command(flatten)]
    pub pin: Pin,
}

/// Which answers the CLI believes: anyone who may publish on the account can answer
/// `initialize` and `status`.
#[derive(Args)]
pub struct Pin {
    /// The backend's transit key (its public key X..., or its seed SX...): only answers
    /// that prove they come from a holder of it are believed (init: the key it shows;
    /// unlock: the instances it sends the key or share to)
    #[arg(
        short = 't',
        long = "transit-xkey",
        alias = "transit-xkey-seed",
        env = env::TRANSIT_XKEY_SEED,
        hide_env_values = true
    )]
    pub transit_xkey: Option<String>,
    /// Believe answers that prove nothing: init shows every key it is given, unlock sends
    /// the key or share to every instance that answers `status`. Anyone who may publish on
    /// the account can answer so; only for stores run without TRANSIT_XKEY_SEED, where no
    /// one else publishes
    #[arg(long)]
    pub unverified_instances: bool,
}

impl Pin {
    /// The pinned transit public key, or `None` with `--unverified-instances` (warned);
    /// without either, an error that explains why (`why_pin`) and what to do.
    fn resolve(&self, why_pin: &str) -> anyhow::Result<Option<String>> {
        match (&self.transit_xkey, self.unverified_instances) {
            (_, true) => {
                eprintln!(
                    "warning: --unverified-instances: answers are believed without proof, \
                     including an impostor's: anyone on the account can answer"
                );
                Ok(None)
            }
            (Some(key), false) => Ok(Some(super::transit_xkey(key)?.public_key())),
            (None, false) => bail!(
                "{why_pin} Give the backend's transit key with -t/--transit-xkey (its public \
                 key, server_xkey in status, checked out of band; or TRANSIT_XKEY_SEED), or \
                 pass --unverified-instances"
            ),
        }
    }
}

#[derive(Args)]
pub struct InitArgs {
    /// Split the key into this many Shamir shares (with --threshold)
    #[arg(long, requires = "threshold")]
    pub shares: Option<u8>,
    /// Shares needed to unlock
    #[arg(long, requires = "shares")]
    pub threshold: Option<u8>,
    #[command(flatten)]
    pub db: DatabaseArgs,
    #[command(flatten)]
    pub pin: Pin,
}

/// `init`: the key, or the shares, printed once; the warning goes to stderr. With a pinned
/// transit key only the answer sealed from it is shown; without one
/// (`--unverified-instances`) every distinct answer is, and more than one is an error.
pub async fn init(args: InitArgs) -> anyhow::Result<()> {
    let pin = args.pin.resolve(
        "whose key is it? Anyone on the NATS account can answer initialize with a key of \
         their own, and the real one would be lost. A store run without TRANSIT_XKEY_SEED \
         makes its transit key at init and cannot prove itself: use --unverified-instances \
         there, and init shows every answer.",
    )?;
    let mut body = serde_json::Map::new();
    if let Some(n) = args.shares {
        body.insert("shares".into(), n.into());
    }
    if let Some(k) = args.threshold {
        body.insert("threshold".into(), k.into());
    }
    let body = serde_json::Value::Object(body).to_string();
    // The key comes back sealed to this one-time key, which never leaves this process.
    let one_time = XKey::new();
    let mut headers = HeaderMap::new();
    headers.insert(
        config::headers::REQUESTER_XKEY,
        one_time.public_key().as_str(),
    );
    let nats = args.db.conn.connect("piggybank cli").await?;
    let signer = args.db.admin.signer()?;
    let subject = args.db.subject("initialize");
    let body = body.into_bytes();
    if let Some(signer) = &signer {
        signer.sign_into(&subject, &body, &mut headers);
    }
    let answers = init_answers(&nats, &subject, headers, body, &one_time, pin.as_deref()).await?;
    for ignored in &answers.ignored {
        eprintln!(
            "warning: ignored an answer on {subject}: {}",
            printable(ignored)
        );
    }
    if answers.more_ignored > 0 {
        eprintln!("warning: ignored {} more answers", answers.more_ignored);
    }
    let several = answers.keys.len() > 1;
    for (i, key) in answers.keys.iter().enumerate() {
        if several && !args.db.json {
            println!("Answer {} of {}:", i + 1, answers.keys.len());
        }
        if args.db.json {
            println!("{:#}", serde_json::Value::Object(key.clone()));
        } else {
            print!("{}", *init_text(key));
        }
    }
    if several {
        bail!(
            "{} different answers claim to hold the new key: someone else on the bus \
             answered too, and without a pinned transit key the real one cannot be told \
             apart. Keep every one until one of them unlocks the store",
            answers.keys.len()
        );
    }
    eprintln!(
        "Keep the key (or the shares, apart) somewhere safe: it is shown only once, and \
         without it nothing in the store can be read. The store stays sealed until \
         `piggybank unlock`."
    );
    Ok(())
}

/// What `init` was answered: the key material of each believed answer (one, with a pin),
/// and why others were not believed (the first few; then a count).
#[derive(Default)]
struct InitAnswers {
    keys: Vec<serde_json::Map<String, serde_json::Value>>,
    ignored: Vec<String>,
    more_ignored: usize,
}

impl InitAnswers {
    fn ignore(&mut self, why: String) {
        match self.ignored.len() < 8 {
            true => self.ignored.push(why),
            false => self.more_ignored += 1,
        }
    }
}

/// Send `initialize` and read its answers. With `pin`, until one is sealed from the pinned
/// transit key (answers that are not are ignored, and named). Without, every answer that
/// opens, until none has come for `NO_RESPONDERS_GRACE`. An error answer (which anyone can
/// forge too) is believed only if no key comes within `NO_RESPONDERS_GRACE` after it.
async fn init_answers(
    nats: &async_nats::Client,
    subject: &str,
    headers: HeaderMap,
    body: Vec<u8>,
    one_time: &XKey,
    pin: Option<&str>,
) -> anyhow::Result<InitAnswers> {
    let mut replies = publish_gathering(nats, subject, headers, body).await?;
    let mut answers = InitAnswers::default();
    let mut errors = Vec::new();
    let mut no_responders = false;
    let mut deadline = tokio::time::Instant::now() + INIT_TIMEOUT;
    let grace = |deadline: tokio::time::Instant| {
        deadline.min(tokio::time::Instant::now() + NO_RESPONDERS_GRACE)
    };
    while let Ok(Some(reply)) = tokio::time::timeout_at(deadline, replies.next()).await {
        if reply.status == Some(async_nats::StatusCode::NO_RESPONDERS) {
            no_responders = true;
            deadline = grace(deadline);
            continue;
        }
        let (status, value) = decode(&reply);
        if status != "200" {
            if errors.len() < 8 {
                errors.push(refused("initialize", &status, &value));
            }
            deadline = grace(deadline);
            continue;
        }
        let opened = match serde_json::from_value::<SealedInitialize>(value.clone()) {
            Ok(sealed) => sealed.open(one_time, pin).map_err(anyhow::Error::from),
            Err(_) => clear_initialize(value, pin),
        };
        match opened {
            Ok(mut key) => {
                key.insert("sealed".into(), true.into());
                // Without a pin a flood of keys is possible: the first MAX_INIT_ANSWERS
                // are kept (the real answer comes within milliseconds), the rest counted.
                if answers.keys.len() >= MAX_INIT_ANSWERS {
                    answers.ignore("one more key than init shows".into());
                } else if !answers.keys.contains(&key) {
                    answers.keys.push(key);
                }
                if pin.is_some() {
                    return Ok(answers);
                }
                deadline = grace(deadline);
            }
            // A pinned requester waits on for the real answer (until INIT_TIMEOUT).
            Err(e) => {
                answers.ignore(format!("{e:#}"));
                if pin.is_none() {
                    deadline = grace(deadline);
                }
            }
        }
    }
    if !answers.keys.is_empty() {
        return Ok(answers);
    }
    if let Some(first) = errors.first() {
        let mut all = vec![first.clone()];
        all.extend(answers.ignored.iter().map(|i| format!("ignored: {i}")));
        bail!("{}", all.join("; "));
    }
    if !answers.ignored.is_empty() {
        bail!(
            "no answer on {subject} came from the backend (none was sealed from the pinned \
             transit key): {}",
            answers.ignored.join("; ")
        );
    }
    if no_responders {
        bail!(nobody_answers(subject));
    }
    bail!(
        "no answer on {subject} within {} s: is a backend of this name (-n/--name) running \
         with this prefix?",
        INIT_TIMEOUT.as_secs()
    )
}

/// An `initialize` answer in clear (from a backend older than sealed key transfer): shown
/// with a warning, since the key is already out; never with a pin (it proves nothing).
fn clear_initialize(
    value: serde_json::Value,
    pin: Option<&str>,
) -> anyhow::Result<serde_json::Map<String, serde_json::Value>> {
    let serde_json::Value::Object(material) = value else {
        bail!("not an initialize reply");
    };
    if material.get("database_key").is_none() && material.get("shares").is_none() {
        bail!("not an initialize reply");
    }
    if pin.is_some() {
        bail!("a key in clear, which proves nothing (a pinned transit key seals the real one)");
    }
    eprintln!(
        "warning: an answer has the key in clear (a backend older than sealed key transfer, \
         or not the backend): anyone subscribed to its reply subject could read it"
    );
    Ok(material)
}

/// `init`'s reply as text: `Database key: ...`, or one `Share N: ...` line per share.
fn init_text(reply: &serde_json::Map<String, serde_json::Value>) -> Zeroizing<String> {
    let mut out = Zeroizing::new(String::new());
    if let Some(key) = reply.get("database_key").and_then(|k| k.as_str()) {
        out.push_str(&format!("Database key: {}\n", printable(key)));
    }
    if let Some(shares) = reply.get("shares").and_then(|s| s.as_array()) {
        for (i, share) in shares.iter().enumerate() {
            out.push_str(&format!(
                "Share {}: {}\n",
                i + 1,
                printable(share.as_str().unwrap_or("?"))
            ));
        }
        let threshold = reply.get("threshold").cloned().unwrap_or_default();
        out.push_str(&format!(
            "Threshold: {threshold} (any {threshold} of these {} shares unlock the store)\n",
            shares.len()
        ));
    }
    out
}

/// `unlock`: one key or one share per call, to every instance that answers `status` and
/// proves it holds the pinned transit key (or to every one, with `--unverified-instances`),
/// each sealed to that instance's unseal xkey.
pub async fn unlock(args: UnlockArgs) -> anyhow::Result<()> {
    let plaintext = unlock_body()?;
    let pin = args.pin.resolve(
        "which instances are this backend's? Anyone on the NATS account can answer status \
         as an instance. With the transit key, the key goes only to instances that prove \
         they hold it.",
    )?;
    let args = args.db;
    let signer = args.admin.signer()?;
    let nats = args.conn.connect("piggybank cli").await?;
    let status_subject = args.subject("status");
    // Each instance vouches for its unseal xkey to this one-time key (`unseal_proof`).
    let one_time = XKey::new();
    let mut headers = HeaderMap::new();
    headers.insert(
        config::headers::REQUESTER_XKEY,
        one_time.public_key().as_str(),
    );
    let mut instances: Vec<StatusReport> = Vec::new();
    let mut unproven = Vec::new();
    for reply in gather(&nats, &status_subject, headers).await? {
        let Ok(instance) = serde_json::from_value::<StatusReport>(decode(&reply).1) else {
            continue;
        };
        if let Some(pin) = &pin {
            if let Err(e) = proven(&instance, &one_time, pin) {
                unproven.push(format!(
                    "an answer on {status_subject} as instance {}: {e:#}; nothing was sent to it",
                    instance.instance_id
                ));
                continue;
            }
        }
        // A copy of a reply (anyone can send one into this inbox) is not a second instance.
        if !instances
            .iter()
            .any(|i| i.instance_id == instance.instance_id)
        {
            instances.push(instance);
        }
    }
    if instances.is_empty() {
        match unproven.is_empty() {
            true => bail!("no instance on {status_subject} sent a status this CLI can read"),
            false => bail!("{}", unproven.join("; ")),
        }
    }
    let subject = args.subject("unlock");
    let sends = instances.iter().map(|instance| {
        let (nats, signer, subject, plaintext) = (&nats, signer.as_ref(), &subject, &plaintext);
        async move {
            let Some(xkey) = instance.unseal_xkey.as_deref() else {
                bail!(
                    "it announces no unseal xkey (a piggybank older than sealed key \
                     transfer): the key is not sent to it in clear"
                );
            };
            let body = SealedUnlock::new(
                &instance.instance_id,
                Sealed::seal(plaintext.as_bytes(), xkey)?,
            );
            let body = serde_json::to_vec(&body)?;
            send(nats, signer, subject, None, body).await
        }
    });
    let results = futures::future::join_all(sends).await;
    let one = instances.len() == 1;
    let mut failed = Vec::new();
    let mut accepted = 0;
    for (instance, result) in instances.iter().zip(results) {
        let prefix = match one {
            true => String::new(),
            false => format!("Instance {}: ", printable(&instance.instance_id)),
        };
        match result {
            Ok(mut reply) => {
                accepted += 1;
                if args.json {
                    reply["instance_id"] = instance.instance_id.clone().into();
                    println!("{reply}");
                } else if reply["sealed"] == false {
                    println!("{prefix}Unsealed: the store is unlocked.");
                } else {
                    println!(
                        "{prefix}Share accepted: {} of {} given; the store is still sealed.",
                        reply["progress"], reply["threshold"]
                    );
                }
            }
            Err(e) => failed.push((prefix, e)),
        }
    }
    // Instances already unlocked are not a failure when the others took the key.
    let (notes, errors): (Vec<_>, Vec<_>) = failed
        .into_iter()
        .partition(|(_, e)| accepted > 0 && e.to_string().contains("database already unlocked"));
    for (prefix, _) in notes {
        println!("{prefix}already unlocked.");
    }
    let mut all: Vec<String> = errors.iter().map(|(p, e)| format!("{p}{e:#}")).collect();
    all.extend(unproven);
    if !all.is_empty() {
        bail!("{}", all.join("; "));
    }
    Ok(())
}

/// Whether `instance` proved, in its `unseal_proof`, that it holds the transit key `pin`
/// and that the unseal xkey it announced is its own.
fn proven(instance: &StatusReport, one_time: &XKey, pin: &str) -> anyhow::Result<()> {
    let (Some(unseal_xkey), Some(proof)) = (&instance.unseal_xkey, &instance.unseal_proof) else {
        bail!(
            "it sent no proof that it holds the transit key (an impostor, or an instance run \
             without TRANSIT_XKEY_SEED or older than this CLI)"
        );
    };
    let claim = InstanceClaim {
        instance_id: instance.instance_id.clone(),
        unseal_xkey: unseal_xkey.clone(),
    };
    claim.verify(proof, one_time, pin)?;
    Ok(())
}

/// `lock`: every instance forgets its keys.
pub async fn lock(args: DatabaseArgs) -> anyhow::Result<()> {
    let reply = request(&args, "lock", Vec::new()).await?;
    if args.json {
        println!("{reply}");
    } else {
        println!("Sealed: every instance that received the lock dropped its keys.");
    }
    Ok(())
}

/// `rotate`: a new data key, current a moment later; values are re-sealed in the background.
pub async fn rotate(args: DatabaseArgs) -> anyhow::Result<()> {
    let reply = request(&args, "rotate", Vec::new()).await?;
    if args.json {
        println!("{reply:#}");
    } else {
        println!(
            "{}",
            aligned(&[
                ("New data key", text(&reply["key_id"])),
                ("Key version", text(&reply["key_version"])),
                (
                    "Current from",
                    format!("{} (unix ms)", reply["active_from_ms"])
                ),
            ])
        );
        println!("Every value is re-sealed with it in the background: see `piggybank status`.");
    }
    Ok(())
}

/// The unlock request: the key from PIGGYBANK_DATABASE_KEY, a share from PIGGYBANK_SHARE,
/// or else one line of stdin, which is a key or a share as it decodes. Never from argv.
fn unlock_body() -> anyhow::Result<Zeroizing<String>> {
    let nothing = || {
        anyhow!(
            "no key or share given (stdin, {} or {})",
            env::PIGGYBANK_DATABASE_KEY,
            env::PIGGYBANK_SHARE
        )
    };
    let (field, value) = if let Ok(key) = std::env::var(env::PIGGYBANK_DATABASE_KEY) {
        (UnlockField::DatabaseKey, Zeroizing::new(key))
    } else if let Ok(share) = std::env::var(env::PIGGYBANK_SHARE) {
        (UnlockField::Share, Zeroizing::new(share))
    } else {
        if std::io::IsTerminal::is_terminal(&std::io::stdin()) {
            eprint!("database key or share: ");
        }
        let mut line = Zeroizing::new(String::new());
        std::io::stdin().read_line(&mut line)?;
        let value = Zeroizing::new(line.trim().to_string());
        if value.is_empty() {
            return Err(nothing());
        }
        (UnlockField::of(&value)?, value)
    };
    if value.trim().is_empty() {
        return Err(nothing());
    }
    Ok(Zeroizing::new(
        serde_json::json!({ field.name(): value.trim() }).to_string(),
    ))
}

/// Which field of the unlock request a text goes in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum UnlockField {
    DatabaseKey,
    Share,
}

impl UnlockField {
    /// Decode `text` as the backend will: a key is 32 bytes; a share is 33 (its x coordinate,
    /// never 0, then one byte per key byte). The two never overlap, so the answer is exact for
    /// anything `init` printed, whatever backend version printed it. The error never
    /// repeats the text.
    fn of(text: &str) -> anyhow::Result<Self> {
        if MasterKey::from_base64(text).is_ok() {
            return Ok(UnlockField::DatabaseKey);
        }
        if vault::decode_share(text).is_ok() {
            return Ok(UnlockField::Share);
        }
        bail!(
            "what was given on stdin is neither a database key nor a share: give one of the \
             base64 lines `piggybank init` printed"
        )
    }

    fn name(self) -> &'static str {
        match self {
            UnlockField::DatabaseKey => "database_key",
            UnlockField::Share => "share",
        }
    }
}

/// The text of `no responders`: nothing subscribes the subject.
fn nobody_answers(subject: &str) -> String {
    format!(
        "no piggybank backend answers on {subject} (is one running on this NATS server? if it \
         runs with --piggybank-prefix or -n/--name, pass the same prefix and name here)"
    )
}

/// One database operation, answered by one instance: its reply's JSON on 200, its error
/// otherwise.
async fn request(
    args: &DatabaseArgs,
    op: &str,
    body: Vec<u8>,
) -> anyhow::Result<serde_json::Value> {
    let signer = args.admin.signer()?;
    let nats = args.conn.connect("piggybank cli").await?;
    send(&nats, signer.as_ref(), &args.subject(op), None, body).await
}

/// Send one request on `subject` (signed when `signer` is given) and read the first reply:
/// its JSON on 200, its error otherwise.
async fn send(
    nats: &async_nats::Client,
    signer: Option<&crate::admin_auth::AdminSigner>,
    subject: &str,
    headers: Option<HeaderMap>,
    body: Vec<u8>,
) -> anyhow::Result<serde_json::Value> {
    let op = subject.rsplit('.').next().unwrap_or_default();
    let subject = subject.to_string();
    let sent = crate::client::signed_request(nats, signer, &subject, headers, body).await;
    let reply = sent.map_err(|e| match e.kind() {
        async_nats::RequestErrorKind::NoResponders => anyhow!(nobody_answers(&subject)),
        async_nats::RequestErrorKind::TimedOut => anyhow!(
            "no answer on {subject} within 10 s (the request timeout): is a backend of this \
             name (-n/--name) running with this prefix?"
        ),
        _ => anyhow!(e).context(format!("request on {subject} failed")),
    })?;
    let (status, value) = decode(&reply);
    if status != "200" {
        bail!(refused(op, &status, &value));
    }
    Ok(value)
}

/// What an error answer says, with a hint when it is the admin signature's refusal.
fn refused(op: &str, status: &str, value: &serde_json::Value) -> String {
    let hint = if status == "403" && value["error"] == crate::admin_auth::REFUSED {
        format!(
            " (the backend requires a signature by one of its --admin-keys: set {} or \
             --admin-seed-file to that key's seed)",
            env::PIGGYBANK_ADMIN_SEED
        )
    } else {
        String::new()
    };
    format!(
        "{op} refused ({status}): {}{hint}",
        value["error"].as_str().unwrap_or("no reason given")
    )
}

/// A reply's `Status` header and JSON body (`null` if the body is not JSON).
fn decode(reply: &async_nats::Message) -> (String, serde_json::Value) {
    let status = reply
        .headers
        .as_ref()
        .and_then(|h| h.get(crate::piggybank_api::headers::STATUS))
        .map(|s| s.as_str().to_string())
        .unwrap_or_default();
    let value = serde_json::from_slice(&reply.payload).unwrap_or_default();
    (status, value)
}

/// `status`: every instance's report; the exit code says whether any is sealed.
pub async fn status(args: DatabaseArgs) -> anyhow::Result<ExitCode> {
    let nats = args.conn.connect("piggybank cli").await?;
    let subject = args.subject("status");
    let replies = gather(&nats, &subject, HeaderMap::new()).await?;
    let mut answers = Answers::default();
    for reply in &replies {
        let (status, value) = decode(reply);
        if status != "200" {
            answers.errors.push(format!(
                "an instance refused status ({status}): {}",
                value["error"].as_str().unwrap_or("no reason given")
            ));
            continue;
        }
        match serde_json::from_value::<StatusReport>(value.clone()) {
            Ok(report) => answers.reports.push((report, value)),
            Err(e) => answers.errors.push(format!(
                "an instance sent a status this CLI cannot read: {e}"
            )),
        }
    }
    answers
        .reports
        .sort_by(|a, b| a.0.instance_id.cmp(&b.0.instance_id));
    let code = answers.exit_code();
    if args.json {
        println!("{:#}", answers.to_json(&subject));
    } else {
        print!("{}", answers.to_text(&subject));
    }
    for error in &answers.errors {
        eprintln!("error: {}", printable(error));
    }
    Ok(ExitCode::from(code))
}

/// Publish one request with a fresh inbox as its reply subject and gather every reply until
/// none has come for `QUIET` (or `MAX_REPLIES` came). Fails when nothing answers:
/// after `NO_RESPONDERS_GRACE` on NATS's `no responders` (unless a real reply comes
/// meanwhile: anyone can forge one), after `FIRST_REPLY` otherwise.
async fn gather(
    nats: &async_nats::Client,
    subject: &str,
    headers: HeaderMap,
) -> anyhow::Result<Vec<async_nats::Message>> {
    let mut replies = publish_gathering(nats, subject, headers, Vec::new()).await?;
    let mut gathered = Vec::new();
    let mut wait = FIRST_REPLY;
    let mut no_responders = false;
    while gathered.len() < MAX_REPLIES {
        let Ok(Some(reply)) = tokio::time::timeout(wait, replies.next()).await else {
            break;
        };
        if reply.status == Some(async_nats::StatusCode::NO_RESPONDERS) {
            // The server says so, but anyone may publish a "no responders" into this inbox:
            // a real reply may still come, so wait a little longer before believing it.
            no_responders = true;
            if gathered.is_empty() {
                wait = NO_RESPONDERS_GRACE;
            }
            continue;
        }
        gathered.push(reply);
        wait = QUIET;
    }
    if gathered.is_empty() && no_responders {
        bail!(nobody_answers(subject));
    }
    if gathered.is_empty() {
        bail!(
            "no answer on {subject} within {} s: is a piggybank backend running? (something \
             subscribes the subject, but it did not reply)",
            FIRST_REPLY.as_secs()
        );
    }
    Ok(gathered)
}

/// Publish one request with a fresh inbox as its reply subject, subscribed first: every
/// answer, from every instance (and from anyone else), arrives there.
async fn publish_gathering(
    nats: &async_nats::Client,
    subject: &str,
    headers: HeaderMap,
    body: Vec<u8>,
) -> anyhow::Result<async_nats::Subscriber> {
    let inbox = nats.new_inbox();
    let replies = nats
        .subscribe(inbox.clone())
        .await
        .context("cannot subscribe to a reply inbox")?;
    nats.publish_with_reply_and_headers(subject.to_string(), inbox, headers, body.into())
        .await
        .with_context(|| format!("cannot publish on {subject}"))?;
    nats.flush()
        .await
        .with_context(|| format!("cannot publish on {subject}"))?;
    Ok(replies)
}

/// What the instances answered to `status`.
#[derive(Default)]
struct Answers {
    /// Each report, and the JSON it came as (printed as is by `--json`).
    reports: Vec<(StatusReport, serde_json::Value)>,
    errors: Vec<String>,
}

impl Answers {
    fn sealed(&self) -> usize {
        self.reports.iter().filter(|(r, _)| r.sealed).count()
    }

    /// As `vault status`: 2 if any instance is sealed, else 1 if any failed to report,
    /// else 0.
    fn exit_code(&self) -> u8 {
        if self.sealed() > 0 {
            2
        } else if !self.errors.is_empty() || self.reports.is_empty() {
            1
        } else {
            0
        }
    }

    fn to_json(&self, subject: &str) -> serde_json::Value {
        serde_json::json!({
            "subject": subject,
            "sealed": self.sealed() > 0,
            "instances": self.reports.iter().map(|(_, v)| v).collect::<Vec<_>>(),
            "errors": self.errors,
        })
    }

    /// One block of aligned `key: value` lines per instance, then a summary line.
    fn to_text(&self, subject: &str) -> String {
        let mut out = String::new();
        for (r, _) in &self.reports {
            let mut lines = vec![
                ("Mode", r.mode.to_string()),
                ("Initialized", r.initialized.to_string()),
                ("Sealed", r.sealed.to_string()),
            ];
            if let (Some(threshold), Some(shares)) = (r.threshold, r.shares) {
                lines.push(("Threshold", format!("{threshold} of {shares} shares")));
                if r.sealed && r.initialized {
                    lines.push(("Unseal progress", format!("{}/{threshold}", r.progress)));
                }
            }
            lines.push(("Secrets", count(r.secrets)));
            lines.push(("Mapped entities", count(r.mapped_entities)));
            match (r.loaded, r.mirror_pending) {
                (Some(true), _) => lines.push(("Mirror", "loaded".into())),
                (Some(false), pending) => lines.push((
                    "Mirror",
                    format!(
                        "loading ({} changes to go; counts so far)",
                        pending.unwrap_or_default()
                    ),
                )),
                (None, _) => {}
            }
            if let Some(version) = r.key_version.filter(|_| r.initialized) {
                lines.push(("Key version", version.to_string()));
            }
            lines.push(("Data key", r.key_id.clone().unwrap_or_else(|| "-".into())));
            lines.push((
                "Server xkey",
                r.server_xkey.clone().unwrap_or_else(|| "-".into()),
            ));
            lines.push((
                "Unseal xkey",
                r.unseal_xkey.clone().unwrap_or_else(|| "-".into()),
            ));
            if let Some(re) = r.reencryption.filter(|re| re.running || re.total > 0) {
                lines.push((
                    "Re-encryption",
                    format!(
                        "{}, {}/{} done ({} re-sealed, {} failed)",
                        if re.running { "running" } else { "finished" },
                        re.done,
                        re.total,
                        re.resealed,
                        re.failed
                    ),
                ));
            }
            lines.push((
                "Admin",
                r.admin
                    .map_or_else(|| "unauthenticated".into(), |a| a.to_string()),
            ));
            lines.push((
                "Version",
                r.version.clone().unwrap_or_else(|| "unknown".into()),
            ));
            out.push_str(&format!(
                "Instance {}\n{}\n\n",
                printable(&r.instance_id),
                aligned(&lines)
            ));
        }
        let n = self.reports.len();
        let instances = if n == 1 { "instance" } else { "instances" };
        let next = if self.reports.iter().any(|(r, _)| !r.initialized) {
            "initialize it with `piggybank init`, then unlock it with `piggybank unlock`"
        } else {
            "unlock it with `piggybank unlock`"
        };
        let state = match self.sealed() {
            0 if self.errors.is_empty() => "unsealed".to_string(),
            0 => format!("{} failed to report", self.errors.len()),
            s if s == n => format!("sealed: {next}"),
            s => format!("{s} of them sealed, so the store counts as sealed (exit code 2): {next}"),
        };
        out.push_str(&format!("{n} {instances} answered on {subject}: {state}\n"));
        out
    }
}

fn count(n: Option<usize>) -> String {
    n.map_or_else(|| "unknown".into(), |n| n.to_string())
}

/// A JSON value as plain text: strings without their quotes.
fn text(value: &serde_json::Value) -> String {
    match value.as_str() {
        Some(s) => s.to_string(),
        None => value.to_string(),
    }
}

/// `key: value` lines, values aligned, indented by two spaces.
fn aligned(lines: &[(&str, String)]) -> String {
    let width = lines.iter().map(|(k, _)| k.len()).max().unwrap_or(0) + 1;
    lines
        .iter()
        .map(|(k, v)| format!("  {:<width$} {}", format!("{k}:"), printable(v)))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Text from an answer, fit for a terminal: control characters (a carriage return, an
/// escape sequence) and invisible format characters (bidi overrides, zero-width ones, line
/// and paragraph separators) are shown escaped, so an answer cannot rewrite or reorder
/// what the operator sees.
pub fn printable(text: &str) -> std::borrow::Cow<'_, str> {
    if !text.chars().any(unprintable) {
        return text.into();
    }
    text.chars()
        .map(|c| match unprintable(c) {
            true => c.escape_unicode().to_string(),
            false => c.to_string(),
        })
        .collect::<String>()
        .into()
}

/// Control characters, and Unicode's format characters (general category Cf) with the line
/// and paragraph separators.
fn unprintable(c: char) -> bool {
    c.is_control()
        || matches!(
            c,
            '\u{00AD}'
                | '\u{0600}'..='\u{0605}'
                | '\u{061C}'
                | '\u{06DD}'
                | '\u{070F}'
                | '\u{0890}'..='\u{0891}'
                | '\u{08E2}'
                | '\u{180E}'
                | '\u{200B}'..='\u{200F}'
                | '\u{2028}'..='\u{202E}'
                | '\u{2060}'..='\u{2064}'
                | '\u{2066}'..='\u{206F}'
                | '\u{FEFF}'
                | '\u{FFF9}'..='\u{FFFB}'
                | '\u{110BD}'
                | '\u{110CD}'
                | '\u{13430}'..='\u{1343F}'
                | '\u{1BCA0}'..='\u{1BCA3}'
                | '\u{1D173}'..='\u{1D17A}'
                | '\u{E0001}'
                | '\u{E0020}'..='\u{E007F}'
        )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn printable_escapes_controls_and_invisible_format_characters() {
        assert!(matches!(
            printable("plain text: ok"),
            std::borrow::Cow::Borrowed(_)
        ));
        assert_eq!(printable("a\u{1b}[2Kb\r"), "a\\u{1b}[2Kb\\u{d}");
        assert_eq!(printable("x\u{202e}y\u{200b}z"), "x\\u{202e}y\\u{200b}z");
        assert_eq!(printable("\u{2028}\u{feff}"), "\\u{2028}\\u{feff}");
        assert_eq!(printable("café 名前"), "café 名前");
    }
    use crate::seal::key_record::ShareSpec;
    use crate::seal::Mode;

    #[test]
    fn a_key_and_a_share_are_told_apart_by_decoding_though_both_are_44_characters() {
        let spec = ShareSpec {
            shares: 3,
            threshold: 2,
        };
        for _ in 0..20 {
            let (_, master) = vault::initialize(None, Some(spec), 1).expect("initialize");
            let key = master.to_base64();
            assert_eq!(key.len(), 44);
            assert_eq!(UnlockField::of(&key).unwrap(), UnlockField::DatabaseKey);
            for share in master.split(spec) {
                assert_eq!(share.len(), 44);
                assert_eq!(UnlockField::of(&share).unwrap(), UnlockField::Share);
            }
        }
        for bad in ["", "AAAA", "not base64!", &"A".repeat(60)] {
            let err = UnlockField::of(bad).unwrap_err().to_string();
            assert!(err.contains("neither"), "{err}");
            assert!(
                bad.len() < 5 || !err.contains(bad),
                "the error repeats the input"
            );
        }
    }

    fn report(id: &str, mode: Mode, sealed: bool) -> (StatusReport, serde_json::Value) {
        let r = StatusReport {
            mode,
            version: Some("0.1.0".into()),
            instance_id: id.into(),
            initialized: true,
            sealed,
            progress: 0,
            threshold: None,
            shares: None,
            key_version: None,
            key_id: None,
            server_xkey: None,
            secrets: Some(12),
            mapped_entities: Some(3),
            reencryption: None,
            admin: Some(crate::admin_auth::AdminMode::Signed),
            unseal_xkey: None,
            unseal_proof: None,
            audit_dropped: None,
            loaded: Some(true),
            mirror_pending: Some(0),
        };
        let v = serde_json::to_value(&r).unwrap();
        (r, v)
    }

    #[test]
    fn status_exits_as_vault_does_and_says_why() {
        let subject = "piggybank.database.status";
        let mut answers = Answers::default();
        answers.reports.push(report("AAA", Mode::Keyed, false));
        assert_eq!(answers.exit_code(), 0);
        let text = answers.to_text(subject);
        assert!(text.contains("Instance AAA\n"), "{text}");
        assert!(text.contains("  Mode:            keyed\n"), "{text}");
        assert!(text.contains("  Mapped entities: 3\n"), "{text}");
        assert!(text.contains("  Mirror:          loaded\n"), "{text}");
        assert!(text.contains("  Admin:           signed\n"), "{text}");
        assert!(text.ends_with("1 instance answered on piggybank.database.status: unsealed\n"));

        answers.reports.push(report("BBB", Mode::Sealed, true));
        assert_eq!(answers.exit_code(), 2);
        let text = answers.to_text(subject);
        assert!(text.contains("2 instances answered") && text.contains("1 of them sealed"));
        assert_eq!(answers.to_json(subject)["sealed"], true);

        answers.reports.remove(1);
        answers
            .errors
            .push("an instance refused status (500): x".into());
        assert_eq!(answers.exit_code(), 1);
    }

    #[test]
    fn a_status_reply_of_an_older_backend_still_reads() {
        let old = serde_json::json!({
            "initialized": true, "sealed": true, "progress": 0, "threshold": null,
            "shares": null, "key_version": 1, "key_id": "XK", "server_xkey": "XS",
            "instance_id": "NABC", "reencryption": {"running": false, "done": 0, "total": 0,
            "resealed": 0, "failed": 0},
        });
        let r: StatusReport = serde_json::from_value(old).unwrap();
        assert_eq!((r.mode, r.secrets, r.version), (Mode::Sealed, None, None));
        assert_eq!(
            r.admin, None,
            "shown as unauthenticated: older backends were"
        );
    }
}
