//! What restore will write, by size: the largest value of each kind and the totals per
//! bucket, tallied while a backup's body is checked, so that restore can compare them with the
//! target server's limits before it writes anything.

/// One value restore will write, by its size: the largest of its kind in a backup.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LargestValue {
    /// What it is, for an error message: "a version of secret \"db\"".
    pub what: String,
    /// Its line in the file.
    pub line: u64,
    /// The bytes restore writes for it (the message's payload).
    pub bytes: u64,
}

/// The largest value of each kind (versions, mappings, the key record): restore checks them
/// against the target server's limits before it writes anything.
#[derive(Debug, Clone, Default)]
pub struct Largest {
    pub version: Option<LargestValue>,
    pub mapping: Option<LargestValue>,
    pub key_record: Option<LargestValue>,
}

impl Largest {
    pub(super) fn note(
        slot: &mut Option<LargestValue>,
        line: u64,
        bytes: usize,
        what: impl FnOnce() -> String,
    ) {
        let bytes = bytes as u64;
        if slot.as_ref().is_none_or(|largest| bytes > largest.bytes) {
            *slot = Some(LargestValue {
                what: what(),
                line,
                bytes,
            });
        }
    }
}

/// The messages restore writes into one bucket, in all: checked against the bucket's total
/// limits (`max_msgs`, `max_bytes`) before anything is written.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Total {
    pub messages: u64,
    /// The payloads and keys of those messages (a key is part of the message's subject).
    pub bytes: u64,
}

impl Total {
    pub(super) fn add(&mut self, key: &str, payload: usize) {
        self.messages += 1;
        self.bytes += (key.len() + payload) as u64;
    }
}

/// What restore writes of each kind: the versions into the secrets bucket, the mappings into
/// the mappings bucket, the key record into the vault bucket.
#[derive(Debug, Clone, Default)]
pub struct Totals {
    pub versions: Total,
    pub mappings: Total,
    pub key_record: Total,
}
