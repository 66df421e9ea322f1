//! Who may reach a route: the executable access rules of phase 4 (`proxy::access`).
//!
//! Owns the decision, from data compile resolved once per route: source-address lists
//! ([`Sources`]: ingress-nginx `denylist-source-range`, `allowlist-source-range`), HTTP Basic
//! authentication ([`basic`]: `auth-type: basic` over an htpasswd Secret; [`digest`]:
//! `auth-type: digest` over an htdigest one), external
//! authentication ([`external`]: `auth-url`) and how they combine ([`Satisfy`], ingress-nginx
//! `satisfy`); and, run before them, per-client rate limits ([`limit`]). It reads only the client address the
//! request view computed (after PROXY protocol and trusted forwarding headers) and the
//! `Authorization` header; it must not build responses (the proxy phase does) nor read
//! Kubernetes objects (compile does, and hands over parsed users).
//!
//! Everything restricting fails closed: a route whose rules cannot be built is refused at
//! compile time, never served open.

pub mod basic;
pub mod digest;
pub mod external;
pub mod limit;
mod source;

use std::net::IpAddr;

pub use basic::BasicAuth;
pub use digest::DigestAuth;
pub use external::ExternalAuth;
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
    pub digest: Option<DigestAuth>,
    pub external: Option<ExternalAuth>,
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
    /// Every other rule admits the request (or, with `satisfy any`, none did): the external
    /// auth service decides.
    External,
}

/// What a request brings to authentication.
#[derive(Clone, Copy, Debug)]
pub struct Credentials<'a> {
    pub authorization: Option<&'a [u8]>,
    pub method: &'a str,
    /// The request target as sent (Digest responses are computed over it).
    pub target: &'a str,
    /// External auth applies to this route (false under `--no-auth-locations`).
    pub external: bool,
}

impl Access {
    /// Decide without computing a password hash or asking the external service;
    /// [`Verdict::Verify`] or [`Verdict::External`] when only they can tell.
    pub fn check(&self, client: IpAddr, creds: &Credentials<'_>) -> Verdict {
        self.decide(client, creds.external, || {
            match (&self.basic, &self.digest) {
                (Some(b), _) => b.quick(creds.authorization),
                (None, Some(d)) => Some(
                    d.verify(creds.authorization, creds.method, creds.target)
                        .is_ok(),
                ),
                (None, None) => Some(false),
            }
        })
    }

    /// Decide, computing the hash if needed (may block for milliseconds). Never
    /// [`Verdict::Verify`].
    pub fn check_fully(&self, client: IpAddr, creds: &Credentials<'_>) -> Verdict {
        self.decide(client, creds.external, || {
            Some(match (&self.basic, &self.digest) {
                (Some(b), _) => b.verify(creds.authorization),
                (None, Some(d)) => d
                    .verify(creds.authorization, creds.method, creds.target)
                    .is_ok(),
                (None, None) => false,
            })
        })
    }

    /// As nginx's access phase decides. With `satisfy all` every rule present must admit the
    /// request; with `any`, one admitting it is enough, and when every rule refuses, the
    /// authentication's 401 wins over the source's 403 (a client can still log in). `basic`
    /// runs only when its answer matters (`None`: it cannot tell without a hash); the
    /// external service, being a network call, is asked last and only when its answer
    /// decides ([`Verdict::External`]).
    fn decide(
        &self,
        client: IpAddr,
        external: bool,
        basic: impl FnOnce() -> Option<bool>,
    ) -> Verdict {
        let source = self.sources.as_ref().map(|s| s.admits(client));
        let external = external && self.external.is_some();
        let password = self.basic.is_some() || self.digest.is_some();
        match self.satisfy {
            Satisfy::All => {
                if source == Some(false) {
                    return Verdict::Forbidden;
                }
                if password {
                    match basic() {
                        Some(true) => {}
                        Some(false) => return Verdict::Unauthorized,
                        None => return Verdict::Verify,
                    }
                }
                if external {
                    Verdict::External
                } else {
                    Verdict::Pass
                }
            }
            Satisfy::Any => {
                if source == Some(true) {
                    return Verdict::Pass;
                }
                if password {
                    match basic() {
                        Some(true) => return Verdict::Pass,
                        None => return Verdict::Verify,
                        Some(false) => {}
                    }
                }
                if external {
                    Verdict::External
                } else if password {
                    Verdict::Unauthorized
                } else if source == Some(false) {
                    Verdict::Forbidden
                } else {
                    Verdict::Pass
                }
            }
        }
    }

    /// The `WWW-Authenticate` value of a 401, when a password rule refused `creds` (Digest:
    /// a fresh nonce, `stale` when only the client's nonce expired).
    pub fn challenge(&self, creds: &Credentials<'_>) -> Option<http::HeaderValue> {
        if let Some(b) = &self.basic {
            return Some(b.challenge().clone());
        }
        let d = self.digest.as_ref()?;
        let stale = d.verify(creds.authorization, creds.method, creds.target) == Err(true);
        Some(d.challenge(stale))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NONE: Credentials<'static> = Credentials {
        authorization: None,
        method: "GET",
        target: "/",
        external: true,
    };

    fn access(allow: &[&str], satisfy: Satisfy) -> Access {
        let nets = allow.iter().map(|s| s.parse().expect("cidr")).collect();
        Access {
            sources: Some(Sources::new(nets, Vec::new())),
            basic: None,
            digest: None,
            external: None,
            satisfy,
        }
    }

    #[test]
    fn source_rule_alone() {
        let a = access(&["10.0.0.0/8"], Satisfy::All);
        assert_eq!(
            a.check("10.1.2.3".parse().expect("ip"), &NONE),
            Verdict::Pass
        );
        assert_eq!(
            a.check("192.0.2.1".parse().expect("ip"), &NONE),
            Verdict::Forbidden
        );
        // `satisfy any` with only a source rule still needs the source rule.
        let a = access(&["10.0.0.0/8"], Satisfy::Any);
        assert_eq!(
            a.check("192.0.2.1".parse().expect("ip"), &NONE),
            Verdict::Forbidden
        );
    }

    #[test]
    fn no_rules_pass() {
        let a = Access {
            sources: None,
            basic: None,
            digest: None,
            external: None,
            satisfy: Satisfy::Any,
        };
        assert_eq!(
            a.check("192.0.2.1".parse().expect("ip"), &NONE),
            Verdict::Pass
        );
    }
}
