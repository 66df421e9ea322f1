//! Cross-origin resource sharing for a route, as ingress-nginx's `enable-cors` does it.
//!
//! Owns matching a request's `Origin` against the allowed origins and the headers a match
//! earns; compile builds a [`Cors`] once per route (every header value prepared then), and the
//! proxy asks it per request. Semantics, from ingress-nginx's template: with `*` every request
//! gets `Access-Control-Allow-Origin: *`; with a list, a matching `Origin` is echoed back and
//! others get no CORS headers. An `OPTIONS` request that earns the headers is a preflight,
//! answered 204 by the proxy without the upstream (before authentication: browsers send no
//! credentials on a preflight). Unlike ingress-nginx, a list-based route also gets
//! `Vary: Origin` on every response, so a shared cache never serves one origin's grant to
//! another. This module must not build responses or read requests beyond the `Origin` value.

use http::header::{
    ACCESS_CONTROL_ALLOW_CREDENTIALS, ACCESS_CONTROL_ALLOW_HEADERS, ACCESS_CONTROL_ALLOW_METHODS,
    ACCESS_CONTROL_ALLOW_ORIGIN, ACCESS_CONTROL_EXPOSE_HEADERS, ACCESS_CONTROL_MAX_AGE, VARY,
};
use http::{HeaderMap, HeaderValue};

/// The rules as a plugin stated them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CorsRule {
    pub allow_origins: Vec<String>,
    pub allow_methods: String,
    pub allow_headers: String,
    pub expose_headers: String,
    pub allow_credentials: bool,
    pub max_age_seconds: u32,
}

/// One allowed origin: exact, or `scheme://*.rest` where `*` is one DNS label.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Pattern {
    Exact(String),
    Label { prefix: String, suffix: String },
}

impl Pattern {
    fn parse(origin: &str) -> Result<Pattern, String> {
        let lower = origin.to_ascii_lowercase();
        let valid = lower == "null"
            || lower.split_once("://").is_some_and(|(scheme, rest)| {
                !scheme.is_empty()
                    && scheme.bytes().all(|b| b.is_ascii_lowercase())
                    && !rest.is_empty()
                    && rest
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b"-.:*".contains(&b))
            });
        if !valid {
            return Err(format!(
                "`{origin}` is not an origin (scheme://host[:port])"
            ));
        }
        match lower.find('*') {
            None => Ok(Pattern::Exact(lower)),
            // Only `scheme://*.` may hold the wildcard, as in ingress-nginx's validation.
            Some(i) if lower[..i].ends_with("://") && lower[i + 1..].starts_with('.') => {
                let suffix = lower[i + 1..].to_string();
                if suffix.contains('*') {
                    return Err(format!("`{origin}` has more than one wildcard"));
                }
                Ok(Pattern::Label {
                    prefix: lower[..i].to_string(),
                    suffix,
                })
            }
            Some(_) => Err(format!(
                "`{origin}`: a wildcard may only stand for the first label (https://*.example.com)"
            )),
        }
    }

    fn matches(&self, origin: &[u8]) -> bool {
        match self {
            Pattern::Exact(o) => origin.eq_ignore_ascii_case(o.as_bytes()),
            Pattern::Label { prefix, suffix } => {
                let (p, s) = (prefix.as_bytes(), suffix.as_bytes());
                origin.len() > p.len() + s.len()
                    && origin[..p.len()].eq_ignore_ascii_case(p)
                    && origin[origin.len() - s.len()..].eq_ignore_ascii_case(s)
                    && origin[p.len()..origin.len() - s.len()]
                        .iter()
                        .all(|b| b.is_ascii_alphanumeric() || *b == b'-')
            }
        }
    }
}

/// A route's CORS rules, ready to run.
#[derive(Debug, Clone)]
pub struct Cors {
    /// `None`: any origin (`*`).
    origins: Option<Vec<Pattern>>,
    methods: HeaderValue,
    headers: HeaderValue,
    expose: Option<HeaderValue>,
    credentials: bool,
    max_age: HeaderValue,
}

fn header(value: &str, what: &str) -> Result<HeaderValue, String> {
    HeaderValue::from_str(value.trim())
        .map_err(|_| format!("the CORS {what} are not a valid header value"))
}

impl Cors {
    /// Prepare the rules; `Err` names what is unusable.
    pub fn new(rule: &CorsRule) -> Result<Cors, String> {
        let origins = if rule.allow_origins.iter().any(|o| o.trim() == "*") {
            None
        } else {
            let list: Vec<Pattern> = rule
                .allow_origins
                .iter()
                .map(|o| Pattern::parse(o.trim()))
                .collect::<Result<_, _>>()?;
            if list.is_empty() {
                return Err("the CORS origin list is empty".into());
            }
            Some(list)
        };
        let expose = rule.expose_headers.trim();
        Ok(Cors {
            origins,
            methods: header(&rule.allow_methods, "methods")?,
            headers: header(&rule.allow_headers, "headers")?,
            expose: (!expose.is_empty())
                .then(|| header(expose, "exposed headers"))
                .transpose()?,
            credentials: rule.allow_credentials,
            max_age: HeaderValue::from(rule.max_age_seconds),
        })
    }

    /// The `Access-Control-Allow-Origin` a request with this `Origin` earns, if any.
    pub fn grant(&self, origin: Option<&HeaderValue>) -> Option<HeaderValue> {
        match &self.origins {
            None => Some(HeaderValue::from_static("*")),
            Some(list) => {
                let origin = origin?;
                list.iter()
                    .any(|p| p.matches(origin.as_bytes()))
                    .then(|| origin.clone())
            }
        }
    }

    /// Add what this response earns: the CORS headers for a grant, and `Vary: Origin` on
    /// every response of a list-based route. Overwrites CORS headers the upstream set (as
    /// ingress-nginx's `more_set_headers` does).
    pub fn decorate(&self, grant: Option<HeaderValue>, headers: &mut HeaderMap) {
        if self.origins.is_some() {
            headers.append(VARY, HeaderValue::from_static("Origin"));
        }
        let Some(origin) = grant else {
            return;
        };
        headers.insert(ACCESS_CONTROL_ALLOW_ORIGIN, origin);
        if self.credentials {
            headers.insert(
                ACCESS_CONTROL_ALLOW_CREDENTIALS,
                HeaderValue::from_static("true"),
            );
        }
        headers.insert(ACCESS_CONTROL_ALLOW_METHODS, self.methods.clone());
        headers.insert(ACCESS_CONTROL_ALLOW_HEADERS, self.headers.clone());
        if let Some(expose) = &self.expose {
            headers.insert(ACCESS_CONTROL_EXPOSE_HEADERS, expose.clone());
        }
        headers.insert(ACCESS_CONTROL_MAX_AGE, self.max_age.clone());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(origins: &[&str]) -> Cors {
        Cors::new(&CorsRule {
            allow_origins: origins.iter().map(|s| s.to_string()).collect(),
            allow_methods: "GET, POST".into(),
            allow_headers: "Content-Type".into(),
            expose_headers: String::new(),
            allow_credentials: true,
            max_age_seconds: 600,
        })
        .expect("valid")
    }

    fn origin(s: &'static str) -> HeaderValue {
        HeaderValue::from_static(s)
    }

    #[test]
    fn lists_echo_matching_origins_only() {
        let c = rule(&[
            "https://app.example.com",
            "https://*.example.org",
            "http://localhost:3000",
        ]);
        let granted = |o| {
            c.grant(Some(&origin(o)))
                .map(|v| v.to_str().expect("ascii").to_owned())
        };
        assert_eq!(
            granted("https://app.example.com").as_deref(),
            Some("https://app.example.com")
        );
        assert_eq!(
            granted("HTTPS://APP.EXAMPLE.COM").as_deref(),
            Some("HTTPS://APP.EXAMPLE.COM")
        );
        assert!(granted("https://a-1.example.org").is_some());
        assert!(granted("http://localhost:3000").is_some());
        for refused in [
            "https://app.example.com.evil.test",
            "https://evil.test/https://app.example.com",
            "http://app.example.com",
            "https://example.org",
            "https://a.b.example.org",
            "https://.example.org",
            "http://localhost:3001",
            "null",
        ] {
            assert!(granted(refused).is_none(), "{refused}");
        }
        assert!(c.grant(None).is_none());
    }

    #[test]
    fn star_grants_everyone_and_needs_no_vary() {
        let c = rule(&["*"]);
        let grant = c.grant(None);
        assert_eq!(grant, Some(origin("*")));
        let mut h = HeaderMap::new();
        c.decorate(grant, &mut h);
        assert_eq!(h[ACCESS_CONTROL_ALLOW_ORIGIN], "*");
        assert_eq!(h[ACCESS_CONTROL_ALLOW_CREDENTIALS], "true");
        assert_eq!(h[ACCESS_CONTROL_MAX_AGE], "600");
        assert!(!h.contains_key(VARY));
        assert!(!h.contains_key(ACCESS_CONTROL_EXPOSE_HEADERS));
    }

    #[test]
    fn list_routes_vary_on_origin_even_when_refused() {
        let c = rule(&["https://app.example.com"]);
        let mut h = HeaderMap::new();
        h.insert(ACCESS_CONTROL_ALLOW_ORIGIN, origin("https://upstream-said"));
        c.decorate(c.grant(Some(&origin("https://app.example.com"))), &mut h);
        assert_eq!(h[ACCESS_CONTROL_ALLOW_ORIGIN], "https://app.example.com");
        assert_eq!(h[VARY], "Origin");
        let mut h = HeaderMap::new();
        c.decorate(c.grant(Some(&origin("https://evil.test"))), &mut h);
        assert_eq!(h[VARY], "Origin");
        assert!(!h.contains_key(ACCESS_CONTROL_ALLOW_ORIGIN));
    }

    #[test]
    fn bad_patterns_are_named() {
        for bad in [
            "example.com",
            "https://*",
            "https://a.*.com",
            "https://*.*.com",
            "ftp ://x",
        ] {
            let err = Cors::new(&CorsRule {
                allow_origins: vec![bad.to_string()],
                allow_methods: "GET".into(),
                allow_headers: String::new(),
                expose_headers: String::new(),
                allow_credentials: false,
                max_age_seconds: 0,
            });
            assert!(err.is_err(), "{bad}");
        }
    }
}
