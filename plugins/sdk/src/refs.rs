//! Settings that name Kubernetes objects or client addresses, parsed the same way by every
//! plugin: `NAME` / `NAMESPACE/NAME` object references (which the host resolves; a plugin
//! never sees the object) and comma-separated address lists (CIDRs or plain addresses).

use crate::ObjectRef;
use alloc::format;
use alloc::string::{String, ToString};
use alloc::vec::Vec;
use core::net::IpAddr;

/// A Kubernetes object name (DNS-1123 subdomain): lower-case letters, digits, `-` and `.`.
fn object_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 253
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
}

/// `NAME` (the route's own namespace) or `NAMESPACE/NAME`, as ingress-nginx's `auth-secret`.
pub fn parse_object_ref(value: &str, what: &str) -> Result<ObjectRef, String> {
    let v = value.trim();
    let (namespace, name) = match v.split_once('/') {
        Some((ns, name)) => (Some(ns), name),
        None => (None, v),
    };
    if !object_name(name) || namespace.is_some_and(|ns| !object_name(ns)) {
        return Err(format!(
            "`{value}` is not a {what} name (NAME or NAMESPACE/NAME)"
        ));
    }
    Ok(ObjectRef {
        namespace: namespace.map(str::to_string),
        name: name.to_string(),
    })
}

/// One entry: an address, or an address and a prefix length that fits it.
fn address_or_cidr(entry: &str) -> bool {
    let (addr, len) = match entry.split_once('/') {
        Some((a, l)) => (a, Some(l)),
        None => (entry, None),
    };
    let Ok(ip) = addr.parse::<IpAddr>() else {
        return false;
    };
    let max = if ip.is_ipv4() { 32 } else { 128 };
    len.is_none_or(|l| {
        !l.is_empty()
            && l.len() <= 3
            && l.bytes().all(|b| b.is_ascii_digit())
            && l.parse::<u32>().is_ok_and(|n| n <= max)
    })
}

/// `10.0.0.0/8, 192.168.1.7, 2001:db8::/32`: the entries, trimmed; empty entries are skipped,
/// every bad one is named, and a list with no entry at all is refused (an empty allow list
/// would mean nothing to a reader and everything to an attacker).
pub fn parse_address_list(value: &str) -> Result<Vec<String>, String> {
    let entries: Vec<&str> = value
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .collect();
    if entries.is_empty() {
        return Err("lists no address or CIDR".to_string());
    }
    let bad: Vec<String> = entries
        .iter()
        .filter(|e| !address_or_cidr(e))
        .map(|e| format!("`{e}`"))
        .collect();
    if !bad.is_empty() {
        return Err(format!("not an IP address or CIDR: {}", bad.join(", ")));
    }
    Ok(entries.into_iter().map(str::to_string).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn object_refs() {
        let r = parse_object_ref(" team/users ", "Secret").expect("valid");
        assert_eq!(r.namespace.as_deref(), Some("team"));
        assert_eq!(r.name, "users");
        assert_eq!(
            parse_object_ref("users", "Secret")
                .expect("valid")
                .namespace,
            None
        );
        for bad in ["", "Users", "a/b/c", "/x", "x/", "a_b"] {
            assert!(parse_object_ref(bad, "Secret").is_err(), "{bad:?}");
        }
    }

    #[test]
    fn address_lists() {
        assert_eq!(
            parse_address_list(" 10.0.0.0/8, 192.168.1.7 ,2001:db8::/32,"),
            Ok(alloc::vec![
                "10.0.0.0/8".to_string(),
                "192.168.1.7".to_string(),
                "2001:db8::/32".to_string()
            ])
        );
        for bad in [
            "",
            " , ",
            "10.0.0.0/33",
            "::/129",
            "10.0.0/8",
            "example.com",
            "1.2.3.4/",
        ] {
            assert!(parse_address_list(bad).is_err(), "{bad:?}");
        }
        let why = parse_address_list("10.0.0.0/8, nope, 1.1.1.1/40").expect_err("bad");
        assert!(
            why.contains("`nope`") && why.contains("`1.1.1.1/40`"),
            "{why}"
        );
    }
}
