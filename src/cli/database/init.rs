//! `init`: the key, or the shares, printed once.

use super::*;

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
pub async fn init(args: InitArgs, conn: &Conn) -> anyhow::Result<()> {
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
    let nats = conn.connect("piggybank cli").await?;
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
        if several && !args.db.output.json() {
            println!("Answer {} of {}:", i + 1, answers.keys.len());
        }
        if args.db.output.json() {
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
    let unlock = super::hint::command("unlock", &super::hint::Pin::of(pin.as_deref()));
    let how = match args.threshold {
        Some(k) => format!("give it any {k} of the shares, one `{unlock}` each"),
        None => format!("give it the key: `{unlock}`"),
    };
    eprintln!(
        "Keep the key (or the shares, apart) somewhere safe: it is shown only once, and \
         without it nothing in the store can be read. The store stays sealed until you \
         {how} (on stdin, or in {} or {}).",
        env::PIGGYBANK_DATABASE_KEY,
        env::PIGGYBANK_SHARE
    );
    Ok(())
}

/// What `init` was answered: the key material of each believed answer (one, with a pin),
/// and why others were not believed (the first few; then a count).
#[derive(Default)]
pub(super) struct InitAnswers {
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
pub(super) async fn init_answers(
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
pub(super) fn clear_initialize(
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
pub(super) fn init_text(reply: &serde_json::Map<String, serde_json::Value>) -> Zeroizing<String> {
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
