//! The backup format's rules, each on bytes in memory.

use super::*;
use crate::backup::sizes::Total;
use std::io::Cursor;
use zeroize::Zeroizing;

fn header(secrets: u64, versions: u64, mappings: u64, key_record: bool) -> Header {
    Header {
        format: FORMAT.into(),
        version: FORMAT_VERSION,
        backend: "nats-kv".into(),
        secrets_bucket: "WASMCLOUD_SECRETS".into(),
        secrets_history: 64,
        created_at: "2026-01-01T00:00:00Z".into(),
        secrets,
        versions,
        mappings,
        app_mappings: 0,
        key_record,
        body_bytes: 0,
        body_sha256: String::new(),
        signer: String::new(),
        signature: String::new(),
    }
}

/// The admin key the tests' backups are signed with.
fn signer() -> AdminSigner {
    AdminSigner::from_seed(&AdminSigner::generate_seed()).unwrap()
}

fn open_trusting(
    bytes: Vec<u8>,
    signer: &AdminSigner,
) -> Result<VerifiedBackup<Cursor<Vec<u8>>>, BackupError> {
    let keys = [signer.public_key().to_string()];
    VerifiedBackup::open(Cursor::new(bytes), Trust::AdminKeys(&keys))
}

/// A small backup: two versions of one secret, one of another, one mapping.
fn small_backup(signer: &AdminSigner) -> Vec<u8> {
    let key = crate::keys::DataKey::from_seed(&crate::keys::generate_seed()).unwrap();
    let sealed = |secret: &str, text: &str| {
        let value = envelope::SecretValue::String(Zeroizing::new(text.to_string()));
        b64(&envelope::seal(&value, secret, &key, 1).unwrap())
    };
    let mut out = Cursor::new(Vec::new());
    let mut body = BodyWriter::start(&mut out).unwrap();
    for (secret, revision, text) in [("db", 1, "one"), ("api", 2, "two"), ("db", 3, "three")] {
        body.line(&Line::Version {
            secret: secret.into(),
            revision,
            written_ms: 5,
            value: sealed(secret, text),
        })
        .unwrap();
    }
    body.line(&Line::Mapping {
        entity: nkeys::KeyPair::new_module().public_key(),
        names: vec!["api".into(), "db".into()],
    })
    .unwrap();
    body.finish(header(2, 3, 1, false), signer).unwrap();
    out.into_inner()
}

#[test]
fn a_header_without_application_grants_signs_the_bytes_it_always_did() {
    let h = header(1, 1, 1, false);
    let text = String::from_utf8(h.signed_bytes().unwrap()).unwrap();
    assert!(!text.contains("app_mappings"), "{text}");
    let with = Header {
        app_mappings: 2,
        ..h
    };
    let text = String::from_utf8(with.signed_bytes().unwrap()).unwrap();
    assert!(text.contains(r#""app_mappings":2"#), "{text}");
}

#[test]
fn an_application_grant_line_is_checked() {
    let mut check = BodyCheck::default();
    let ok = br#"{"type":"app_mapping","application":"shop","names":["db"]}"#;
    match check.line(1, ok) {
        Ok(Entry::Mapping { entity, .. }) => assert_eq!(entity, "app.shop"),
        _ => panic!("an application grant"),
    }
    assert!(check.line(2, ok).is_err(), "granted twice");
    for bad in [
        r#"{"type":"app_mapping","application":"a.b","names":["db"]}"#,
        r#"{"type":"app_mapping","application":">","names":["db"]}"#,
        r#"{"type":"app_mapping","application":"x","names":["_api/x/y"]}"#,
    ] {
        assert!(check.line(3, bad.as_bytes()).is_err(), "{bad}");
    }
    // Restore writes it into the mappings bucket: it counts toward that bucket's total.
    assert_eq!(
        check.totals.mappings,
        Total {
            messages: 1,
            bytes: ("app.shop".len() + br#"["db"]"#.len()) as u64
        }
    );
}

/// A component may never be granted a Piggy Bank API name (`_api/...`): an entity's
/// mapping line in a backup is checked by the rule `add_mapping` applies, as an
/// application's line is.
#[test]
fn an_entity_mapping_line_granting_an_api_name_is_refused() {
    let entity = nkeys::KeyPair::new_module().public_key();
    let mut check = BodyCheck::default();
    let line = |names: &str| format!(r#"{{"type":"mapping","entity":"{entity}","names":{names}}}"#);
    assert!(check
        .line(1, line(r#"["_api/shop/token"]"#).as_bytes())
        .is_err());
    assert!(matches!(
        check.line(2, line(r#"["db"]"#).as_bytes()),
        Ok(Entry::Mapping { .. })
    ));
}

#[test]
fn a_backup_verifies_with_its_header_padded_to_a_fixed_width() {
    let signer = signer();
    let bytes = small_backup(&signer);
    assert_eq!(bytes[HEADER_WIDTH - 1], b'\n');
    let verified = open_trusting(bytes, &signer).unwrap();
    let header = verified.header();
    assert_eq!(
        (header.secrets, header.versions, header.mappings),
        (2, 3, 1)
    );
    assert_eq!(header.version, FORMAT_VERSION);
    assert_eq!(verified.signed_by(), Some(signer.public_key()));
    assert_eq!(verified.max_versions, 2);
}

#[test]
fn a_header_changed_after_signing_is_refused() {
    let signer = signer();
    let bytes = small_backup(&signer);
    let end = bytes.iter().position(|b| *b == b' ').unwrap();
    // Every byte of the header's JSON, changed: never a backup that verifies.
    for at in 0..end {
        let mut flipped = bytes.clone();
        flipped[at] ^= 0x01;
        assert!(open_trusting(flipped, &signer).is_err(), "byte {at}");
    }
    // The issue's tamper: change the body, recompute its length and checksum.
    let mut header: Header = serde_json::from_slice(&bytes[..end]).unwrap();
    let mut body = bytes[HEADER_WIDTH..].to_vec();
    body.extend_from_slice(b"{\"type\":\"mapping\",\"entity\":\"x\",\"names\":[]}\n");
    header.body_bytes = body.len() as u64;
    header.body_sha256 = data_encoding::HEXLOWER.encode(&Sha256::digest(&body));
    header.mappings += 1;
    let mut tampered = serde_json::to_vec(&header).unwrap();
    tampered.resize(HEADER_WIDTH - 1, b' ');
    tampered.push(b'\n');
    tampered.extend_from_slice(&body);
    assert!(matches!(
        open_trusting(tampered, &signer).err(),
        Some(BackupError::BadSignature)
    ));
}

#[test]
fn a_backup_needs_a_trusted_signer_unless_the_operator_vouches_for_it() {
    let signer = signer();
    let bytes = small_backup(&signer);
    let other = [self::signer().public_key().to_string()];
    let open = |trust| VerifiedBackup::open(Cursor::new(bytes.clone()), trust).err();
    assert!(matches!(
        open(Trust::AdminKeys(&other)),
        Some(BackupError::UntrustedSigner { signer: s }) if s == signer.public_key()
    ));
    assert!(matches!(
        open(Trust::AdminKeys(&[])),
        Some(BackupError::NoTrustedKeys { .. })
    ));
    let verified = VerifiedBackup::open(Cursor::new(bytes.clone()), Trust::Unauthenticated);
    assert_eq!(verified.unwrap().signed_by(), None);
    // A signature made for an admin request is not a backup's (other domain tag).
    let mut header: Header =
        serde_json::from_slice(&bytes[..bytes.iter().position(|b| *b == b' ').unwrap()]).unwrap();
    let request = signer.sign("x", &header.signed_bytes().unwrap());
    header.signature = request
        .get(crate::config::headers::ADMIN_SIGNATURE)
        .unwrap()
        .to_string();
    assert!(!admin_auth::verify_document(
        signer.public_key(),
        SIGNATURE_DOMAIN,
        &header.signed_bytes().unwrap(),
        &base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(&header.signature)
            .unwrap()
    ));
}

#[test]
fn a_version_1_backup_is_read_only_unauthenticated() {
    let signer = signer();
    let bytes = small_backup(&signer);
    let end = bytes.iter().position(|b| *b == b' ').unwrap();
    let mut header: Header = serde_json::from_slice(&bytes[..end]).unwrap();
    header.version = FORMAT_VERSION_UNSIGNED;
    header.signer.clear();
    header.signature.clear();
    let mut old = serde_json::to_vec(&header).unwrap();
    assert!(!contains(&old, b"signer") && !contains(&old, b"signature"));
    old.resize(HEADER_WIDTH - 1, b' ');
    old.push(b'\n');
    old.extend_from_slice(&bytes[HEADER_WIDTH..]);
    assert!(matches!(
        open_trusting(old.clone(), &signer).err(),
        Some(BackupError::Unauthenticated)
    ));
    let verified = VerifiedBackup::open(Cursor::new(old), Trust::Unauthenticated).unwrap();
    assert_eq!(verified.header().secrets, 2);
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

#[test]
fn the_largest_value_of_each_kind_is_noted_with_its_line() {
    let signer = signer();
    let verified = open_trusting(small_backup(&signer), &signer).unwrap();
    let largest = &verified.largest;
    let version = largest.version.as_ref().unwrap();
    // "three" is the longest value: the third version, on line 4.
    assert_eq!(version.what, "a version of secret \"db\"");
    assert_eq!(version.line, 4);
    let mapping = largest.mapping.as_ref().unwrap();
    assert_eq!(
        (mapping.line, mapping.bytes),
        (5, br#"["api","db"]"#.len() as u64)
    );
    assert!(largest.key_record.is_none());
}

#[test]
fn the_total_of_each_kind_counts_every_message_with_its_key() {
    let signer = signer();
    let bytes = small_backup(&signer);
    let verified = open_trusting(bytes, &signer).unwrap();
    let totals = &verified.totals;
    // Three versions: their secrets' names and their envelopes, whatever their size.
    let Largest { version, .. } = &verified.largest;
    assert_eq!(totals.versions.messages, 3);
    let names = ("db".len() + "api".len() + "db".len()) as u64;
    assert!(totals.versions.bytes > names + 3 * 40);
    assert!(totals.versions.bytes <= names + 3 * version.as_ref().unwrap().bytes);
    // One mapping: the entity's key (56 characters) and its JSON names.
    let mapping = br#"["api","db"]"#.len() as u64;
    assert_eq!(
        totals.mappings,
        Total {
            messages: 1,
            bytes: 56 + mapping
        }
    );
    assert_eq!(totals.key_record, Total::default());
}

#[test]
fn every_flipped_body_byte_and_every_cut_is_refused() {
    let signer = signer();
    let bytes = small_backup(&signer);
    for at in HEADER_WIDTH..bytes.len() {
        let mut flipped = bytes.clone();
        flipped[at] ^= 0x01;
        match open_trusting(flipped, &signer) {
            Err(BackupError::Checksum { .. }) => {}
            Err(other) => panic!("byte {at}: {other}"),
            Ok(_) => panic!("byte {at} flipped, and the backup verified"),
        }
    }
    for len in 0..bytes.len() {
        let cut = bytes[..len].to_vec();
        let refused = open_trusting(cut, &signer);
        assert!(
            matches!(
                refused,
                Err(BackupError::Truncated { .. } | BackupError::NotABackup(_))
            ),
            "cut at {len}"
        );
    }
}

#[test]
fn a_body_whose_counts_disagree_with_its_header_is_refused() {
    let mut out = Cursor::new(Vec::new());
    let body = BodyWriter::start(&mut out).unwrap();
    let signer = signer();
    body.finish(header(1, 1, 0, false), &signer).unwrap();
    let refused = open_trusting(out.into_inner(), &signer);
    assert!(
        matches!(
            refused,
            Err(BackupError::Counts {
                what: "secrets",
                ..
            })
        ),
        "{:?}",
        refused.err()
    );
}

#[test]
fn other_files_and_other_versions_are_named_as_such() {
    let refused = |bytes: &[u8]| {
        VerifiedBackup::open(Cursor::new(bytes.to_vec()), Trust::Unauthenticated).err()
    };
    assert!(matches!(
        refused(b"{\"format\":\"tar\"}\n"),
        Some(BackupError::NotABackup(_))
    ));
    assert!(matches!(
        refused(b"hello\n"),
        Some(BackupError::NotABackup(_))
    ));
    assert!(matches!(
        refused(b"{\"format\":\"piggybank-backup\",\"version\":3}\n"),
        Some(BackupError::UnsupportedVersion { found: 3 })
    ));
}

#[test]
fn each_line_is_checked_on_its_own_and_against_the_lines_before_it() {
    let key = crate::keys::DataKey::from_seed(&crate::keys::generate_seed()).unwrap();
    let value = envelope::SecretValue::String(Zeroizing::new("x".to_string()));
    let sealed = b64(&envelope::seal(&value, "db", &key, 1).unwrap());
    let version = |secret: &str, revision: u64| {
        format!(
            r#"{{"type":"version","secret":"{secret}","revision":{revision},"written_ms":1,"value":"{sealed}"}}"#
        )
    };
    let entity = nkeys::KeyPair::new_module().public_key();
    let mapping = format!(r#"{{"type":"mapping","entity":"{entity}","names":["db"]}}"#);
    let mut check = BodyCheck::default();
    assert!(check.line(2, version("db", 3).as_bytes()).is_ok());
    assert!(check.line(2, version("api", 1).as_bytes()).is_ok());
    // A secret's versions come oldest first, and a name must be a key.
    assert!(check.line(2, version("db", 3).as_bytes()).is_err());
    assert!(check.line(2, version("db", 2).as_bytes()).is_err());
    assert!(check.line(2, version("a b", 4).as_bytes()).is_err());
    assert!(check.line(2, version("db", 4).as_bytes()).is_ok());
    assert_eq!((check.versions, check.max_versions()), (3, 2));
    // A value that is not base64, or not an envelope.
    let not_base64 = r#"{"type":"version","secret":"x","revision":1,"written_ms":1,"value":"*"}"#;
    assert!(check.line(2, not_base64.as_bytes()).is_err());
    let not_sealed =
        r#"{"type":"version","secret":"x","revision":1,"written_ms":1,"value":"aGk="}"#;
    assert!(check.line(2, not_sealed.as_bytes()).is_err());
    // An entity is mapped once, and is a public nkey.
    assert!(check.line(2, mapping.as_bytes()).is_ok());
    assert!(check.line(2, mapping.as_bytes()).is_err());
    let bad_entity = r#"{"type":"mapping","entity":"SOMEONE","names":["db"]}"#;
    assert!(check.line(2, bad_entity.as_bytes()).is_err());
    // The key record must be one.
    assert!(check
        .line(2, br#"{"type":"key_record","value":"e30="}"#)
        .is_err());
    assert!(check.key_record.is_none());
}

#[test]
fn a_header_that_does_not_fit_its_reserved_line_is_refused() {
    let mut out = Cursor::new(Vec::new());
    let body = BodyWriter::start(&mut out).unwrap();
    let mut long = header(0, 0, 0, false);
    long.backend = "n".repeat(HEADER_WIDTH);
    assert!(matches!(
        body.finish(long, &signer()),
        Err(BackupError::HeaderTooLong)
    ));
}

#[test]
fn lines_refuse_unknown_types_and_fields() {
    let parse = |text: &str| serde_json::from_str::<Line>(text).is_ok();
    assert!(parse(r#"{"type":"key_record","value":"e30="}"#));
    assert!(!parse(r#"{"type":"key_record","value":"e30=","extra":1}"#));
    assert!(!parse(r#"{"type":"nonce","value":"e30="}"#));
    assert!(!parse(r#"{"value":"e30="}"#));
}
