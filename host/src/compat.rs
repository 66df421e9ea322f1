//! Compatibility with ingress-nginx: the fate of every annotation it documents.
//!
//! The list is data (`compat/annotations.tsv`, compiled in): each documented
//! `nginx.ingress.kubernetes.io/*` key is *owned* (a built-in plugin implements it), *refused*
//! (an Ingress carrying it is rejected until a plugin owns it, because serving it without the
//! annotation would open access or send traffic elsewhere) or *ignored* (served, with the
//! reason as a warning). Plugins decide what they own; this module only says what happens to
//! a documented key that no attached plugin owns. It reads nothing but its own data.

use std::collections::HashMap;
use std::sync::OnceLock;

/// The annotation prefix ingress-nginx's keys live under.
pub const NGINX_PREFIX: &str = "nginx.ingress.kubernetes.io/";

const TABLE: &str = include_str!("compat/annotations.tsv");

/// What happens to a documented annotation no attached plugin owns.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fate {
    /// A built-in plugin implements it (the reason names the plugin).
    Owned,
    /// The Ingress is rejected with the reason.
    Refused,
    /// The Ingress is served; the reason is a warning.
    Ignored,
}

/// A documented annotation's fate and why.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Entry {
    pub fate: Fate,
    pub reason: &'static str,
}

/// Every documented key (without the prefix) and its entry, in the table's order.
pub fn all() -> &'static [(&'static str, Entry)] {
    static PARSED: OnceLock<Vec<(&'static str, Entry)>> = OnceLock::new();
    PARSED.get_or_init(|| {
        TABLE
            .lines()
            .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
            .filter_map(parse_line)
            .collect()
    })
}

/// The entry for a full annotation key, if ingress-nginx documents it.
pub fn fate(annotation: &str) -> Option<Entry> {
    static INDEX: OnceLock<HashMap<&'static str, Entry>> = OnceLock::new();
    let key = annotation.strip_prefix(NGINX_PREFIX)?;
    INDEX
        .get_or_init(|| all().iter().copied().collect())
        .get(key)
        .copied()
}

fn parse_line(line: &'static str) -> Option<(&'static str, Entry)> {
    let mut cols = line.splitn(3, '\t');
    let (key, fate, reason) = (cols.next()?, cols.next()?, cols.next()?);
    let fate = match fate {
        "owned" => Fate::Owned,
        "refused" => Fate::Refused,
        "ignored" => Fate::Ignored,
        _ => return None,
    };
    Some((key, Entry { fate, reason }))
}

/// The table as markdown, for `docs/annotations.md` (a test keeps the file in step).
pub fn markdown() -> String {
    let mut out = String::from(
        "# ingress-nginx annotations in wasmgress\n\n\
         Generated from `host/src/compat/annotations.tsv` (a test keeps this file in step: \
         `cargo test -p wasmgress --lib compat` prints the new text when it differs). Every \
         annotation ingress-nginx documents, under `nginx.ingress.kubernetes.io/`, has one \
         fate: **owned** (a built-in plugin implements it), **refused** (the Ingress is \
         rejected, with the reason, until a plugin owns it: `validate` exits 1 and the webhook \
         denies it) or **ignored** (served, with the reason as a warning).\n\n\
         | annotation | fate | why |\n|---|---|---|\n",
    );
    for (key, entry) in all() {
        let fate = match entry.fate {
            Fate::Owned => "owned",
            Fate::Refused => "refused",
            Fate::Ignored => "ignored",
        };
        out.push_str(&format!(
            "| `{key}` | {fate} | {} |\n",
            entry.reason.replace('|', "\\|")
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const DOCUMENTED: &str = include_str!("compat/annotations-documented.txt");

    #[test]
    fn every_documented_annotation_has_exactly_one_fate() {
        let documented: Vec<&str> = DOCUMENTED
            .lines()
            .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
            .collect();
        let table_lines = TABLE
            .lines()
            .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
            .count();
        assert_eq!(all().len(), table_lines, "every table line parses");
        let keys: Vec<&str> = all().iter().map(|(k, _)| *k).collect();
        let missing: Vec<_> = documented.iter().filter(|k| !keys.contains(k)).collect();
        assert!(missing.is_empty(), "documented without a fate: {missing:?}");
        let extra: Vec<_> = keys.iter().filter(|k| !documented.contains(k)).collect();
        assert!(
            extra.is_empty(),
            "a fate for an undocumented key: {extra:?}"
        );
        let mut sorted = keys.clone();
        sorted.sort_unstable();
        sorted.dedup();
        assert_eq!(sorted, keys, "sorted, each key once");
        assert!(all().iter().all(|(_, e)| !e.reason.trim().is_empty()));
    }

    #[test]
    fn docs_annotations_md_is_in_step_with_the_table() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/annotations.md");
        let on_disk = std::fs::read_to_string(path).unwrap_or_default();
        let wanted = markdown();
        if on_disk != wanted {
            panic!("docs/annotations.md is out of date; write this into it:\n{wanted}");
        }
    }

    #[test]
    fn looks_up_full_keys_only() {
        assert_eq!(
            fate("nginx.ingress.kubernetes.io/ssl-passthrough").map(|e| e.fate),
            Some(Fate::Refused)
        );
        assert_eq!(
            fate("ssl-passthrough"),
            None,
            "the prefix is part of the key"
        );
        assert_eq!(fate("nginx.ingress.kubernetes.io/no-such-thing"), None);
    }
}
