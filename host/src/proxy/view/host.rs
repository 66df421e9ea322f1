//! The request's host, checked once: what routing, certificates and `Host` upstream agree on.
//!
//! Owns the syntax a host must have to be routed (RFC 3986 `host [":" port]`, stricter than
//! nginx where being strict costs nobody: no userinfo, no empty labels, no characters outside
//! host names and IP literals) and the form routing compares (lowercase, no port, no final dot).
//! It never picks *which* header the host comes from: that is the view's job.

/// Why a request's host is refused (400).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum HostError {
    #[error("an HTTP/1.1 request needs a Host header")]
    Missing,
    #[error("more than one Host header")]
    Several,
    #[error("the host header and :authority differ")]
    Disagree,
    #[error("userinfo ('@') is not allowed in the authority")]
    Userinfo,
    #[error("the host is empty or has an empty label")]
    Empty,
    #[error("the host has a character a host name cannot have")]
    Character,
    #[error("the port is not a number from 0 to 65535")]
    Port,
}

/// The host part of a checked authority, in the form routing compares.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Host {
    /// `authority[..len]` is already lowercase.
    Prefix(usize),
    /// The authority had uppercase letters: the lowercased host.
    Lowered(Box<str>),
}

impl Host {
    /// The host, given the authority it was checked from.
    pub fn as_str<'a>(&'a self, authority: &'a str) -> &'a str {
        match self {
            Host::Prefix(len) => &authority[..*len],
            Host::Lowered(host) => host,
        }
    }
}

/// Checks `authority` (`host[:port]`, as in `Host` or `:authority`) in one pass; an empty one
/// (HTTP/1.0 without `Host`) is an empty host.
pub fn check(authority: &str) -> Result<Host, HostError> {
    if authority.is_empty() {
        return Ok(Host::Prefix(0));
    }
    if authority.contains('@') {
        return Err(HostError::Userinfo);
    }
    let (host, port) = split_port(authority)?;
    if let Some(port) = port {
        check_port(port)?;
    }
    if host.starts_with('[') {
        check_ip_literal(host)?;
    } else {
        check_name(host)?;
    }
    let host = host.strip_suffix('.').unwrap_or(host);
    Ok(if host.bytes().any(|b| b.is_ascii_uppercase()) {
        Host::Lowered(host.to_ascii_lowercase().into_boxed_str())
    } else {
        Host::Prefix(host.len())
    })
}

fn split_port(authority: &str) -> Result<(&str, Option<&str>), HostError> {
    if authority.starts_with('[') {
        let end = authority.find(']').ok_or(HostError::Character)?;
        let (host, rest) = authority.split_at(end + 1);
        return match rest {
            "" => Ok((host, None)),
            _ => rest
                .strip_prefix(':')
                .map(|port| (host, Some(port)))
                .ok_or(HostError::Character),
        };
    }
    Ok(match authority.split_once(':') {
        Some((host, port)) => (host, Some(port)),
        None => (authority, None),
    })
}

/// Digits only (an empty port is allowed by RFC 3986 and means the default).
fn check_port(port: &str) -> Result<(), HostError> {
    if port.is_empty() {
        return Ok(());
    }
    if port.len() > 5 || !port.bytes().all(|b| b.is_ascii_digit()) {
        return Err(HostError::Port);
    }
    port.parse::<u16>().map(drop).map_err(|_| HostError::Port)
}

/// Labels of letters, digits, `-` and `_` (seen in the wild), separated by single dots; one
/// final dot is allowed (a fully qualified name).
fn check_name(host: &str) -> Result<(), HostError> {
    let host = host.strip_suffix('.').unwrap_or(host);
    if host.is_empty() {
        return Err(HostError::Empty);
    }
    for label in host.split('.') {
        if label.is_empty() {
            return Err(HostError::Empty);
        }
        if !label
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return Err(HostError::Character);
        }
    }
    Ok(())
}

/// `[` IPv6 address `]`, parsed for real (no zone identifiers, no IPvFuture).
fn check_ip_literal(host: &str) -> Result<(), HostError> {
    let inner = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .ok_or(HostError::Character)?;
    inner
        .parse::<std::net::Ipv6Addr>()
        .map(drop)
        .map_err(|_| HostError::Character)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host(a: &str) -> Result<String, HostError> {
        check(a).map(|h| h.as_str(a).to_owned())
    }

    #[test]
    fn hosts_are_checked_and_compared_lowercase_without_port() {
        assert_eq!(host("a.test").as_deref(), Ok("a.test"));
        assert_eq!(host("A.Test:8443").as_deref(), Ok("a.test"));
        assert_eq!(host("a.test.").as_deref(), Ok("a.test"));
        assert_eq!(host("a.test:").as_deref(), Ok("a.test"));
        assert_eq!(host("[::1]:8080").as_deref(), Ok("[::1]"));
        assert_eq!(host("127.0.0.1:80").as_deref(), Ok("127.0.0.1"));
        assert_eq!(host("my_host.internal").as_deref(), Ok("my_host.internal"));
        assert_eq!(host("").as_deref(), Ok(""));
    }

    #[test]
    fn odd_hosts_are_refused() {
        assert_eq!(host("app.test:1@other.test"), Err(HostError::Userinfo));
        assert_eq!(host("user@a.test"), Err(HostError::Userinfo));
        assert_eq!(host("a..test"), Err(HostError::Empty));
        assert_eq!(host(".a.test"), Err(HostError::Empty));
        assert_eq!(host(":80"), Err(HostError::Empty));
        assert_eq!(host("a.test:80:80"), Err(HostError::Port));
        assert_eq!(host("a.test:99999"), Err(HostError::Port));
        assert_eq!(host("a.test:8x"), Err(HostError::Port));
        assert_eq!(host("a/b.test"), Err(HostError::Character));
        assert_eq!(host("a b.test"), Err(HostError::Character));
        assert_eq!(host("a.test\\x"), Err(HostError::Character));
        assert_eq!(host("[::1"), Err(HostError::Character));
        assert_eq!(host("[zz::1]"), Err(HostError::Character));
        assert_eq!(host("[::1]x"), Err(HostError::Character));
        assert_eq!(host("é.test"), Err(HostError::Character));
    }
}
