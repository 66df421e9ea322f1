//! Cookie session affinity (ingress-nginx `affinity: cookie`, `affinity-mode`,
//! `session-cookie-*`): which endpoint a returning client sticks to, and the cookie that says so.
//!
//! - `balanced` (the default): the cookie holds a random key; the endpoint is the key's on the
//!   backend's consistent-hash ring ([`crate::route::hash`]). Every replica agrees, a client
//!   whose endpoint leaves moves with its key, and adding endpoints moves a bounded share of
//!   clients, as ingress-nginx's `sticky_balanced`.
//! - `persistent`: the cookie names the endpoint by a keyed hash of its address (HMAC-SHA256
//!   under a key derived from the Ingress's UID, or its name where there is none), so the
//!   address is never revealed; a client stays until its endpoint leaves.
//!
//! A request without a usable cookie (none, malformed, or its endpoint gone or ejected) gets an
//! endpoint from the route's balancer and a `Set-Cookie` (HttpOnly, with the configured
//! attributes; `Secure` by default on HTTPS). Rules are compiled per route (the cookie's default
//! path is the route's Ingress path). This module decides and writes cookies; it does not send.

use std::sync::OnceLock;

use http::HeaderValue;
use http::header::HeaderMap;

use crate::route::{Backend, Endpoint, health};

/// How a sticky client's endpoint is found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    Balanced,
    Persistent,
}

/// `SameSite`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SameSite {
    None,
    Lax,
    Strict,
}

/// The affinity settings as the plugin stated them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RuleText {
    pub mode: Mode,
    pub name: String,
    pub path: Option<String>,
    pub domain: Option<String>,
    pub max_age: Option<u32>,
    pub expires: Option<u32>,
    pub secure: Option<bool>,
    pub same_site: Option<SameSite>,
    pub conditional_same_site_none: bool,
    pub change_on_failure: bool,
    pub canary_sticky: bool,
}

/// One route's affinity: its settings, the key of its persistent hashes, and the endpoints'
/// names under that key (computed once per generation, on first use).
#[derive(Debug)]
pub struct Affinity {
    pub rule: RuleText,
    key: ring::hmac::Key,
    /// The cookie path: the rule's, or the route's Ingress path.
    path: Box<str>,
    names: OnceLock<Box<[(u64, u32)]>>,
}

/// Bytes of a cookie value (16 hex digits).
const VALUE_LEN: usize = 16;

impl Affinity {
    /// The affinity of one route: `key_material` is the Ingress's UID (or `namespace/name`),
    /// `path` the route's Ingress path.
    pub fn new(rule: RuleText, key_material: &str, path: &str) -> Self {
        let digest = ring::digest::digest(
            &ring::digest::SHA256,
            format!("wasmgress session affinity\0{key_material}").as_bytes(),
        );
        Self {
            path: rule.path.as_deref().unwrap_or(path).into(),
            key: ring::hmac::Key::new(ring::hmac::HMAC_SHA256, digest.as_ref()),
            rule,
            names: OnceLock::new(),
        }
    }

    /// The endpoint the request's cookie names, if it is still there and up.
    pub fn find<'b>(&self, headers: &HeaderMap, backend: &'b Backend) -> Option<&'b Endpoint> {
        let value = crate::canary::cookie(headers, &self.rule.name)?;
        let value = parse_hex(value)?;
        let endpoint = match self.rule.mode {
            Mode::Balanced => backend.endpoint_for_hash(crc32fast::hash(&value.to_be_bytes()))?,
            Mode::Persistent => {
                let names = self.names(backend);
                let i = names.binary_search_by_key(&value, |(n, _)| *n).ok()?;
                let index = usize::try_from(names[i].1).ok()?;
                backend.endpoints().get(index)?
            }
        };
        endpoint.health.is_up(health::now_ms).then_some(endpoint)
    }

    /// A new endpoint for a client without one (other than `avoid`, a failed endpoint, where
    /// there is another), and the cookie value that names it.
    pub fn choose<'b>(
        &self,
        backend: &'b Backend,
        pick: impl Fn() -> Option<&'b Endpoint>,
        avoid: Option<&Endpoint>,
    ) -> Option<(&'b Endpoint, u64)> {
        match self.rule.mode {
            Mode::Persistent => {
                let endpoint = pick()?;
                Some((endpoint, self.name_of(endpoint)))
            }
            Mode::Balanced => {
                // Random keys until one lands on an endpoint that is up and not `avoid`; a
                // handful suffice unless nearly all are down, then the last one is taken.
                let mut last = None;
                for _ in 0..32 {
                    let token = fastrand::u64(..);
                    let e = backend.endpoint_for_hash(crc32fast::hash(&token.to_be_bytes()))?;
                    last = Some((e, token));
                    let avoided = avoid.is_some_and(|a| a.addr == e.addr);
                    if !avoided && e.health.is_up(health::now_ms) {
                        break;
                    }
                }
                last
            }
        }
    }

    /// The `Set-Cookie` value naming `value`.
    pub fn set_cookie(
        &self,
        value: u64,
        secure_request: bool,
        user_agent: Option<&HeaderValue>,
    ) -> HeaderValue {
        let r = &self.rule;
        let mut c = format!("{}={:016x}; Path={}", r.name, value, self.path);
        if let Some(domain) = &r.domain {
            c.push_str("; Domain=");
            c.push_str(domain);
        }
        if let Some(expires) = r.expires {
            let at =
                std::time::SystemTime::now() + std::time::Duration::from_secs(u64::from(expires));
            c.push_str("; Expires=");
            c.push_str(&httpdate::fmt_http_date(at));
        }
        if let Some(max_age) = r.max_age {
            c.push_str(&format!("; Max-Age={max_age}"));
        }
        if r.secure.unwrap_or(secure_request) {
            c.push_str("; Secure");
        }
        c.push_str("; HttpOnly");
        let same_site = match r.same_site {
            Some(SameSite::None)
                if r.conditional_same_site_none && !same_site_none_compatible(user_agent) =>
            {
                None
            }
            other => other,
        };
        if let Some(s) = same_site {
            c.push_str(match s {
                SameSite::None => "; SameSite=None",
                SameSite::Lax => "; SameSite=Lax",
                SameSite::Strict => "; SameSite=Strict",
            });
        }
        // Every part was validated at compile time; a value that still is not one is dropped.
        HeaderValue::try_from(c).unwrap_or_else(|_| HeaderValue::from_static(""))
    }

    /// The persistent name of `endpoint`: the first 8 bytes of its address's HMAC.
    fn name_of(&self, endpoint: &Endpoint) -> u64 {
        let tag = ring::hmac::sign(&self.key, endpoint.addr.to_string().as_bytes());
        let mut first = [0u8; 8];
        first.copy_from_slice(&tag.as_ref()[..8]);
        u64::from_be_bytes(first)
    }

    /// Every endpoint's persistent name, sorted, with its index.
    fn names(&self, backend: &Backend) -> &[(u64, u32)] {
        self.names.get_or_init(|| {
            let mut names: Vec<(u64, u32)> = backend
                .endpoints()
                .iter()
                .enumerate()
                .map(|(i, e)| (self.name_of(e), u32::try_from(i).unwrap_or(u32::MAX)))
                .collect();
            names.sort_unstable();
            names.into()
        })
    }
}

/// A cookie value: exactly 16 lowercase or uppercase hex digits.
fn parse_hex(value: &[u8]) -> Option<u64> {
    if value.len() != VALUE_LEN {
        return None;
    }
    let text = std::str::from_utf8(value).ok()?;
    u64::from_str_radix(text, 16).ok()
}

/// ingress-nginx's `same_site_none_compatible`: user agents that mishandle `SameSite=None`.
fn same_site_none_compatible(user_agent: Option<&HeaderValue>) -> bool {
    let Some(ua) = user_agent.and_then(|v| v.to_str().ok()) else {
        return true;
    };
    let has = |s: &str| ua.contains(s);
    !(has("Chrome/4")
        || has("Chrome/5")
        || has("Chrome/6")
        || has("CPU iPhone OS 12")
        || has("iPad; CPU OS 12")
        || (has("Macintosh") && has("Intel Mac OS X 10_14") && has("Safari") && !has("Chrome")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::SocketAddr;

    fn rule(mode: Mode) -> RuleText {
        RuleText {
            mode,
            name: "INGRESSCOOKIE".into(),
            path: None,
            domain: None,
            max_age: None,
            expires: None,
            secure: None,
            same_site: None,
            conditional_same_site_none: false,
            change_on_failure: false,
            canary_sticky: true,
        }
    }

    fn backend(n: u8) -> Backend {
        let addrs: Vec<SocketAddr> = (1..=n)
            .map(|i| format!("10.0.0.{i}:80").parse().expect("addr"))
            .collect();
        Backend::new("ns/svc:80", addrs)
    }

    fn with_cookie(name: &str, value: u64) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(
            http::header::COOKIE,
            HeaderValue::try_from(format!("a=b; {name}={value:016x}")).expect("value"),
        );
        h
    }

    #[test]
    fn a_cookie_brings_the_client_back_to_its_endpoint() {
        for mode in [Mode::Balanced, Mode::Persistent] {
            let b = backend(4);
            let a = Affinity::new(rule(mode), "uid-1", "/app");
            let (chosen, value) = a
                .choose(&b, || b.pick(crate::policy::Balance::RoundRobin), None)
                .expect("an endpoint");
            let back = a.find(&with_cookie("INGRESSCOOKIE", value), &b);
            assert_eq!(back.map(|e| e.addr), Some(chosen.addr), "{mode:?}");
            // Another generation (same addresses) and another replica (same key) agree.
            let again = Affinity::new(rule(mode), "uid-1", "/app");
            let b2 = backend(4);
            let back = again.find(&with_cookie("INGRESSCOOKIE", value), &b2);
            assert_eq!(back.map(|e| e.addr), Some(chosen.addr), "{mode:?}");
        }
    }

    #[test]
    fn persistent_names_do_not_reveal_addresses_and_depend_on_the_key() {
        let b = backend(2);
        let (one, two) = (
            Affinity::new(rule(Mode::Persistent), "uid-1", "/"),
            Affinity::new(rule(Mode::Persistent), "uid-2", "/"),
        );
        let e = &b.endpoints()[0];
        assert_ne!(one.name_of(e), two.name_of(e));
        let cookie = one.set_cookie(one.name_of(e), false, None);
        let text = cookie.to_str().expect("ascii");
        assert!(!text.contains("10.0.0"), "{text}");
        // Another Ingress's cookie names nothing here.
        assert!(
            two.find(&with_cookie("INGRESSCOOKIE", one.name_of(e)), &b)
                .is_none()
        );
    }

    #[test]
    fn a_departed_endpoint_or_a_bad_cookie_finds_nothing() {
        let a = Affinity::new(rule(Mode::Persistent), "uid", "/");
        let four = backend(4);
        let last = &four.endpoints()[3];
        let value = a.name_of(last);
        let three = backend(3);
        let fresh = Affinity::new(rule(Mode::Persistent), "uid", "/");
        assert!(
            fresh
                .find(&with_cookie("INGRESSCOOKIE", value), &three)
                .is_none()
        );
        let mut bad = HeaderMap::new();
        bad.insert(
            http::header::COOKIE,
            HeaderValue::from_static("INGRESSCOOKIE=zz"),
        );
        assert!(a.find(&bad, &four).is_none());
    }

    #[test]
    fn balanced_scaling_moves_a_bounded_share_of_clients() {
        let a = Affinity::new(rule(Mode::Balanced), "uid", "/");
        let (five, six) = (backend(5), backend(6));
        let mut moved = 0;
        for token in 0..2_000u64 {
            let h = with_cookie("INGRESSCOOKIE", token.wrapping_mul(0x9e37_79b9_7f4a_7c15));
            let before = a.find(&h, &five).expect("endpoint").addr;
            let after = a.find(&h, &six).expect("endpoint").addr;
            if before != after {
                moved += 1;
                assert_eq!(
                    after,
                    six.endpoints()[5].addr,
                    "clients move only to the new one"
                );
            }
        }
        assert!((150..700).contains(&moved), "{moved} of 2000 moved");
    }

    #[test]
    fn cookies_carry_the_configured_attributes() {
        let mut r = rule(Mode::Balanced);
        r.domain = Some("example.com".into());
        r.max_age = Some(3600);
        r.expires = Some(60);
        r.same_site = Some(SameSite::None);
        r.conditional_same_site_none = true;
        let a = Affinity::new(r, "uid", "/shop");
        let plain = a.set_cookie(0xab, true, None);
        let text = plain.to_str().expect("ascii");
        assert!(
            text.starts_with(
                "INGRESSCOOKIE=00000000000000ab; Path=/shop; Domain=example.com; Expires="
            ),
            "{text}"
        );
        assert!(
            text.contains("; Max-Age=3600; Secure; HttpOnly; SameSite=None"),
            "{text}"
        );
        let old_chrome = HeaderValue::from_static("Mozilla/5.0 Chrome/62.0.3202.94 Safari/537.36");
        let text = a.set_cookie(1, false, Some(&old_chrome));
        let text = text.to_str().expect("ascii");
        assert!(
            !text.contains("SameSite") && !text.contains("Secure"),
            "{text}"
        );
    }
}
