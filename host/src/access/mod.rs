//! Who may reach a route: the executable access rules of phase 4 (`proxy::access`).
//!
//! Owns the decision, from data compile resolved once per route: source-address lists
//! ([`Sources`]: ingress-nginx `denylist-source-range`, `allowlist-source-range`), HTTP Basic
//! authentication ([`basic`]: `auth-type: basic` over an htpasswd Secret) and how they
//! combine ([`Satisfy`], ingress-nginx `satisfy`). It reads only the client address the
//! request view computed (after PROXY protocol and trusted forwarding headers) and the
//! `Authorization` header; it must not build responses (the proxy phase does) nor read
//! Kubernetes objects (compile does, and hands over parsed users).
//!
//! Everything restricting fails closed: a route whose rules cannot be built is refused at
//! compile time, never served open.

pub mod basic;
pub mod limit;
mod source;

use std::net::IpAddr;

pub use basic::BasicAuth;
pub use source::Sources;

/// How the source rule and the authentication rule combine (ingress-nginx `satisfy`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Satisfy {
    /// Every rule present must admit the request.
    #[default]
    All,
    /// One rule admitting it is enough.
    Any,
}

/// How a basic-auth Secret holds its users (ingress-nginx `auth-secret-type`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum SecretFormat {
    /// Key `auth` holds an htpasswd file.
    #[default]
    AuthFile,
    /// One key per user, the value its hash.
    AuthMap,
}

/// A route's access rules, ready to run.
#[derive(Debug)]
pub struct Access {
    pub sources: Option<Sources>,
    pub basic: Option<BasicAuth>,
    pub satisfy: Satisfy,
}

/// The access decision for one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Pass,
    /// 403: the source address is refused.
    Forbidden,
    /// 401: credentials are missing or wrong; the challenge goes in `WWW-Authenticate`.
    Unauthorized,
    /// The credentials need a full hash check (a bcrypt computation, milliseconds of CPU):
    /// call [`Access::check_fully`] away from the request thread.
    Verify,
}

impl Access {
    /// Decide without computing a password hash; [`Verdict::Verify`] when only a hash can
    /// tell.
    pub fn check(&self, client: IpAddr, authorization: Option<&[u8]>) -> Verdict {
        self.decide(client, || match &self.basic {
            Some(b) => b.quick(authorization),
            None => Some(false),
        })
    }

    /// Decide, computing the hash if needed (may block for milliseconds). Never
    /// [`Verdict::Verify`].
    pub fn check_fully(&self, client: IpAddr, authorization: Option<&[u8]>) -> Verdict {
        self.decide(client, || {
            Some(self.basic.as_ref().is_some_and(|b| b.verify(authorization)))
        })
    }

    /// As nginx's access phase decides: with `satisfy any`, a request one rule admits passes,
    /// and when every rule refuses, the authentication's 401 wins over the source's 403 (a
    /// client can still log in). `authenticated` runs only when its answer matters: `None`
    /// means it cannot tell without a hash computation.
    fn decide(&self, client: IpAddr, authenticated: impl FnOnce() -> Option<bool>) -> Verdict {
        let source = self.sources.as_ref().map(|s| s.admits(client));
        let has_auth = self.basic.is_some();
        let auth = |ok: Option<bool>| match ok {
            Some(true) => Verdict::Pass,
            Some(false) => Verdict::Unauthorized,
            None => Verdict::Verify,
        };
        match (self.satisfy, source) {
            (Satisfy::All, Some(false)) => Verdict::Forbidden,
            (Satisfy::Any, Some(true)) => Verdict::Pass,
            _ if has_auth => auth(authenticated()),
            (_, Some(false)) => Verdict::Forbidden,
            _ => Verdict::Pass,
        }
    }

    /// The `WWW-Authenticate` value of a 401, when authentication is a rule.
    pub fn challenge(&self) -> Option<&http::HeaderValue> {
        self.basic.as_ref().map(BasicAuth::challenge)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn access(allow: &[&str], satisfy: Satisfy) -> Access {
        let nets = allow.iter().map(|s| s.parse().expect("cidr")).collect();
        Access {
            sources: Some(Sources::new(nets, Vec::new())),
            basic: None,
            satisfy,
        }
    }

    #[test]
    fn source_rule_alone() {
        let a = access(&["10.0.0.0/8"], Satisfy::All);
        assert_eq!(
            a.check("10.1.2.3".parse().expect("ip"), None),
            Verdict::Pass
        );
        assert_eq!(
            a.check("192.0.2.1".parse().expect("ip"), None),
            Verdict::Forbidden
        );
        // `satisfy any` with only a source rule still needs the source rule.
        let a = access(&["10.0.0.0/8"], Satisfy::Any);
        assert_eq!(
            a.check("192.0.2.1".parse().expect("ip"), None),
            Verdict::Forbidden
        );
    }

    #[test]
    fn no_rules_pass() {
        let a = Access {
            sources: None,
            basic: None,
            satisfy: Satisfy::Any,
        };
        assert_eq!(
            a.check("192.0.2.1".parse().expect("ip"), None),
            Verdict::Pass
        );
    }
}
