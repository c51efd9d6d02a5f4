//! `unlock`: one key or one share, to every instance that proves it holds the pinned
//! transit key.

use super::*;

/// `unlock`: one key or one share per call, to every instance that answers `status` and
/// proves it holds the pinned transit key (or to every one, with `--unverified-instances`),
/// each sealed to that instance's unseal xkey.
pub async fn unlock(args: UnlockArgs, conn: &Conn) -> anyhow::Result<()> {
    let plaintext = unlock_body()?;
    let pin = args.pin.resolve(
        "which instances are this backend's? Anyone on the NATS account can answer status \
         as an instance. With the transit key, the key goes only to instances that prove \
         they hold it.",
    )?;
    let next = super::hint::command("unlock", &super::hint::Pin::of(pin.as_deref()));
    let args = args.db;
    let signer = args.admin.signer()?;
    let nats = conn.connect("piggybank cli").await?;
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
                if args.output.json() {
                    reply["instance_id"] = instance.instance_id.clone().into();
                    println!("{reply}");
                } else if reply["sealed"] == false {
                    println!("{prefix}Unsealed: the store is unlocked.");
                } else {
                    println!(
                        "{prefix}Share accepted: {} of {} given; the store is still sealed: \
                         give the next share with `{next}`.",
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
        // Stdout holds the JSON in JSON mode: a note goes beside it, to stderr.
        match args.output.json() {
            true => eprintln!("{prefix}already unlocked."),
            false => println!("{prefix}already unlocked."),
        }
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
pub(super) fn proven(instance: &StatusReport, one_time: &XKey, pin: &str) -> anyhow::Result<()> {
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

/// The unlock request: the key from PIGGYBANK_DATABASE_KEY, a share from PIGGYBANK_SHARE,
/// or else one line of stdin, which is a key or a share as it decodes. Never from argv.
pub(super) fn unlock_body() -> anyhow::Result<Zeroizing<String>> {
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
pub(super) enum UnlockField {
    DatabaseKey,
    Share,
}

impl UnlockField {
    /// Decode `text` as the backend will: a key is 32 bytes; a share is 33 (its x coordinate,
    /// never 0, then one byte per key byte). The two never overlap, so the answer is exact for
    /// anything `init` printed, whatever backend version printed it. The error never
    /// repeats the text.
    pub(super) fn of(text: &str) -> anyhow::Result<Self> {
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
