//! Paging: the one rule every listing follows (`list_secrets`, `get_mappings`, the WIT
//! `list-secrets` and `list-mappings`), as pure functions over names, and the limits that
//! keep a page inside one NATS message.

use std::collections::BTreeMap;
use std::ops::Bound;

/// Entries in a page of a listing (`list_secrets`, `get_mappings`, the WIT `list-secrets` and
/// `list-mappings`) when the caller names no limit.
pub const PAGE_DEFAULT: usize = 1000;

/// Most entries in a page; a larger requested limit is lowered to this.
///
/// Why it always fits a NATS message: a [`SecretMeta`](super::SecretMeta) that piggybank wrote serializes to at
/// most 484 bytes of JSON, comma included: a name of 255 bytes that JSON never escapes
/// (names are `[A-Za-z0-9-_/=.]`), a 20-digit version, a 6-letter kind, two RFC 3339 times
/// of at most 35 bytes, a 56-byte key id, and the keys and quotes around them. So a page of
/// `PAGE_MAX` entries plus its envelope (`{"secrets":[...],"next":"<255 bytes>"}`) is at most
/// 968,300 bytes, under the default NATS max payload of 1 MiB (1,048,576), and the default
/// page is half that. A mapping page is smaller: a name is at most 258 bytes with quotes and
/// comma. Data piggybank did not write (a key id or name planted in the bucket) can be
/// longer; then the front door's size check answers an error instead (code 413), and
/// [`crate::client::AdminClient`] asks again for smaller pages. The unit test
/// `a_full_page_of_the_largest_entries_fits_a_nats_message` checks the arithmetic.
pub const PAGE_MAX: usize = 2000;

/// `limit` was 0: a page holds at least one entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("limit must be at least 1 (default {PAGE_DEFAULT}, at most {PAGE_MAX})")]
pub(crate) struct ZeroLimit;

/// The number of entries a page holds for a requested `limit`: [`PAGE_DEFAULT`] when none is
/// named, at most [`PAGE_MAX`]; 0 is refused.
pub(crate) fn page_limit(requested: Option<u64>) -> Result<usize, ZeroLimit> {
    match requested {
        None => Ok(PAGE_DEFAULT),
        Some(0) => Err(ZeroLimit),
        Some(n) => Ok(usize::try_from(n).map_or(PAGE_MAX, |n| n.min(PAGE_MAX))),
    }
}

/// Which page of a listing to return.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PageRequest<'a> {
    /// Only names that start with this.
    pub prefix: &'a str,
    /// The cursor: only names strictly after this one (the previous page's `next`).
    pub after: Option<&'a str>,
    /// Most entries returned; already checked with [`page_limit`] (0 is treated as 1).
    pub limit: usize,
}

/// One page of a listing, in name order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Page<T> {
    pub items: Vec<T>,
    /// When more entries remain: the last name of this page, to pass as the next request's
    /// `after`. `None`: this is the last page.
    pub next: Option<String>,
}

impl<T> Default for Page<T> {
    fn default() -> Self {
        Self {
            items: Vec::new(),
            next: None,
        }
    }
}

/// The paging rule every listing follows, as a pure function: of `names` (any order, no
/// duplicates), those that start with `request.prefix` and sort strictly after
/// `request.after`, the first `request.limit` in byte order, and the cursor of the next page
/// when more remain. A listing is not a snapshot: a name added behind the cursor while a
/// caller pages is not seen, one added ahead of it is.
pub(crate) fn page_names<'a>(
    names: impl IntoIterator<Item = &'a str>,
    request: &PageRequest<'_>,
) -> Page<&'a str> {
    let limit = request.limit.max(1);
    let mut items: Vec<&str> = names
        .into_iter()
        .filter(|n| n.starts_with(request.prefix) && request.after.is_none_or(|a| *n > a))
        .collect();
    let more = items.len() > limit;
    if more {
        // The `limit` smallest first, in O(n); only they are sorted.
        items.select_nth_unstable(limit - 1);
        items.truncate(limit);
    }
    items.sort_unstable();
    let next = if more {
        items.last().map(|n| n.to_string())
    } else {
        None
    };
    Page { items, next }
}

/// [`page_names`] over a map ordered by name: the same page, found by a range scan, so it
/// costs the page's size plus the entries `keep` skips, never a pass over every name.
pub(crate) fn page_of_sorted<'a, V>(
    map: &'a BTreeMap<Box<str>, V>,
    request: &PageRequest<'_>,
    keep: impl Fn(&V) -> bool,
) -> Page<(&'a str, &'a V)> {
    let limit = request.limit.max(1);
    // Names with the prefix are one contiguous run in byte order, starting at the prefix.
    let from = match request.after {
        Some(after) if after >= request.prefix => Bound::Excluded(after),
        _ => Bound::Included(request.prefix),
    };
    let mut items: Vec<(&str, &V)> = map
        .range::<str, _>((from, Bound::Unbounded))
        .take_while(|(name, _)| name.starts_with(request.prefix))
        .filter(|(_, value)| keep(value))
        .map(|(name, value)| (&**name, value))
        .take(limit + 1)
        .collect();
    let more = items.len() > limit;
    items.truncate(limit);
    let next = match more {
        true => items.last().map(|(name, _)| name.to_string()),
        false => None,
    };
    Page { items, next }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::envelope::SecretKind;
    use crate::store::SecretMeta;

    fn page<'a>(
        names: &[&'a str],
        prefix: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Page<&'a str> {
        page_names(
            names.iter().copied(),
            &PageRequest {
                prefix,
                after,
                limit,
            },
        )
    }

    #[test]
    fn pages_follow_name_order_and_resume_strictly_after_the_cursor() {
        let names = ["d", "a", "c/2", "b", "c/1", "e", "c/3"];
        let first = page(&names, "", None, 3);
        assert_eq!(first.items, ["a", "b", "c/1"]);
        assert_eq!(first.next.as_deref(), Some("c/1"));
        let second = page(&names, "", first.next.as_deref(), 3);
        assert_eq!(second.items, ["c/2", "c/3", "d"]);
        let third = page(&names, "", second.next.as_deref(), 3);
        assert_eq!((third.items, third.next), (vec!["e"], None));
        // Exactly `limit` left: no next page is announced.
        let exact = page(&names, "", Some("c/3"), 2);
        assert_eq!((exact.items, exact.next), (vec!["d", "e"], None));
        // A cursor that is not a name still works: it is a position in name order.
        assert_eq!(page(&names, "", Some("bz"), 2).items, ["c/1", "c/2"]);
        assert_eq!(page(&names, "", Some("z"), 2), Page::default());
    }

    #[test]
    fn pages_respect_the_prefix() {
        let names = ["c/2", "a", "c/1", "cc", "c/3"];
        let first = page(&names, "c/", None, 2);
        assert_eq!(first.items, ["c/1", "c/2"]);
        assert_eq!(first.next.as_deref(), Some("c/2"));
        let last = page(&names, "c/", first.next.as_deref(), 2);
        assert_eq!((last.items, last.next), (vec!["c/3"], None));
        // A cursor before the prefix starts at the prefix's first name.
        assert_eq!(page(&names, "c/", Some("a"), 1).items, ["c/1"]);
        assert_eq!(page(&names, "x/", None, 5), Page::default());
    }

    #[test]
    fn paging_through_returns_every_name_once() {
        let names: Vec<String> = (0..1037).rev().map(|i| format!("app/{i:05}")).collect();
        let refs: Vec<&str> = names.iter().map(String::as_str).collect();
        let mut seen = Vec::new();
        let mut after: Option<String> = None;
        loop {
            let p = page(&refs, "app/", after.as_deref(), 100);
            assert!(p.items.len() <= 100);
            seen.extend(p.items.iter().map(|s| s.to_string()));
            match p.next {
                Some(next) => after = Some(next),
                None => break,
            }
        }
        let mut expected = names.clone();
        expected.sort();
        assert_eq!(seen, expected);
    }

    #[test]
    fn a_page_of_the_ordered_map_is_the_page_of_its_names() {
        let names = [
            "a", "b", "c", "c/", "c/1", "c/10", "c/2", "c/3", "cc", "d", "d/x", "e=1", "z",
        ];
        // Every third entry is a tombstone, which no page may show.
        let map: BTreeMap<Box<str>, bool> = names
            .iter()
            .enumerate()
            .map(|(i, n)| (Box::from(*n), i % 3 != 1))
            .collect();
        let live: Vec<&str> = names
            .iter()
            .enumerate()
            .filter(|(i, _)| i % 3 != 1)
            .map(|(_, n)| *n)
            .collect();
        for prefix in ["", "c", "c/", "d", "x", "c/1"] {
            for after in [
                None,
                Some(""),
                Some("a"),
                Some("bz"),
                Some("c/1"),
                Some("cc"),
                Some("z"),
            ] {
                for limit in [1, 2, 3, 100] {
                    let request = PageRequest {
                        prefix,
                        after,
                        limit,
                    };
                    let expected = page_names(live.iter().copied(), &request);
                    let got = page_of_sorted(&map, &request, |live| *live);
                    let got_names: Vec<&str> = got.items.iter().map(|(n, _)| *n).collect();
                    assert_eq!(
                        (got_names, got.next),
                        (expected.items, expected.next),
                        "{request:?}"
                    );
                }
            }
        }
    }

    #[test]
    fn limits_default_clamp_and_refuse_zero() {
        assert_eq!(page_limit(None), Ok(PAGE_DEFAULT));
        assert_eq!(page_limit(Some(7)), Ok(7));
        assert_eq!(page_limit(Some(PAGE_MAX as u64 + 1)), Ok(PAGE_MAX));
        assert_eq!(page_limit(Some(u64::MAX)), Ok(PAGE_MAX));
        assert_eq!(page_limit(Some(0)), Err(ZeroLimit));
        assert_eq!(
            page(&["a", "b"], "", None, 0).items,
            ["a"],
            "0 is read as 1"
        );
    }

    /// The bound documented on [`PAGE_MAX`], computed rather than trusted.
    #[test]
    fn a_full_page_of_the_largest_entries_fits_a_nats_message() {
        const NATS_DEFAULT_MAX_PAYLOAD: usize = 1024 * 1024;
        let name = "n".repeat(super::super::MAX_NAME_LEN);
        // The longest RFC 3339 time `rfc3339` writes: nanoseconds and a non-UTC offset.
        let time = "2026-11-25T15:30:00.123456789+01:00".to_string();
        let meta = SecretMeta {
            name: name.clone(),
            version: u64::MAX,
            kind: SecretKind::Legacy,
            created_at: Some(time.clone()),
            updated_at: time,
            key_id: Some(nkeys::XKey::new().public_key()),
        };
        let entry = serde_json::to_vec(&meta).unwrap().len() + 1;
        assert!(entry <= 484, "a SecretMeta entry takes {entry} bytes");
        #[derive(serde::Serialize)]
        struct Reply {
            secrets: Vec<SecretMeta>,
            next: Option<String>,
        }
        let page = Reply {
            secrets: vec![meta; PAGE_MAX],
            next: Some(name.clone()),
        };
        let size = serde_json::to_vec(&page).unwrap().len();
        assert!(size <= 968_300, "{size}");
        assert!(size < NATS_DEFAULT_MAX_PAYLOAD, "{size}");
        // Mappings: `{"entity":"<56>","secrets":[...],"next":"<255>"}`.
        let names = serde_json::to_vec(&vec![name; PAGE_MAX]).unwrap().len();
        assert!(names + 400 < NATS_DEFAULT_MAX_PAYLOAD / 2, "{names}");
    }
}
