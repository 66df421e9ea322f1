//! Canary routing (ingress-nginx `canary-*`): which requests of a main route its canary's
//! backend takes.
//!
//! The rule is decided at compile time (the `canary` plugin parses the annotations, compile
//! attaches a canary Ingress to its main route); this module only evaluates it per request,
//! with ingress-nginx's precedence (its Lua balancer's `route_to_alternative_balancer`):
//!
//! 1. the header: `always` (or the configured value, or a match of the configured pattern)
//!    sends to the canary, `never` keeps the request off it, anything else falls through;
//! 2. the cookie: `always` and `never` as for the header;
//! 3. the weight: `weight` out of `total` requests, drawn from a thread-local generator (no
//!    lock, no allocation).
//!
//! It must not pick endpoints: the chosen backend does that.

use std::sync::Arc;

use http::header::{COOKIE, HeaderMap, HeaderName};

use crate::route::Backend;

/// Longest `canary-by-header-pattern` compiled program, so a pattern cannot cost the proxy
/// unbounded memory.
const PATTERN_SIZE_LIMIT: usize = 1 << 20;

/// How the canary header's value is read.
#[derive(Debug)]
enum HeaderMatch {
    /// `always` / `never`.
    Keywords,
    /// `canary-by-header-value`: this value sends to the canary.
    Value(Box<[u8]>),
    /// `canary-by-header-pattern`: a value containing a match sends to the canary.
    Pattern(regex::bytes::Regex),
}

/// Which requests go to the canary.
#[derive(Debug)]
pub struct Rule {
    header: Option<(HeaderName, HeaderMatch)>,
    cookie: Option<Box<str>>,
    weight: u32,
    total: u32,
}

/// A canary rule as the plugin stated it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RuleText {
    pub by_header: Option<String>,
    pub by_header_value: Option<String>,
    pub by_header_pattern: Option<String>,
    pub by_cookie: Option<String>,
    pub weight: u32,
    pub total: u32,
}

impl PartialEq for Rule {
    fn eq(&self, other: &Self) -> bool {
        self.describe() == other.describe()
    }
}

impl Rule {
    /// Validates a rule; `Err` says what is wrong in the user's words.
    pub fn new(text: RuleText) -> Result<Self, String> {
        let header = match text.by_header.as_deref().filter(|h| !h.is_empty()) {
            None => None,
            Some(name) => {
                let name = HeaderName::try_from(name)
                    .map_err(|_| format!("canary-by-header `{name}` is not a header name"))?;
                let matching = match (text.by_header_value, text.by_header_pattern) {
                    (Some(v), _) if !v.is_empty() => HeaderMatch::Value(v.into_bytes().into()),
                    (_, Some(p)) if !p.is_empty() => HeaderMatch::Pattern(
                        regex::bytes::RegexBuilder::new(&p)
                            .size_limit(PATTERN_SIZE_LIMIT)
                            .build()
                            .map_err(|e| {
                                format!("canary-by-header-pattern `{p}` is not a valid regular expression: {e}")
                            })?,
                    ),
                    _ => HeaderMatch::Keywords,
                };
                Some((name, matching))
            }
        };
        if text.total == 0 {
            return Err("canary-weight-total must be at least 1".into());
        }
        Ok(Rule {
            header,
            cookie: text.by_cookie.filter(|c| !c.is_empty()).map(Into::into),
            weight: text.weight,
            total: text.total,
        })
    }

    /// Whether this request goes to the canary.
    pub fn chooses(&self, headers: &HeaderMap) -> bool {
        self.decide(headers, || fastrand::u32(1..=self.total))
    }

    /// [`chooses`](Self::chooses) with the weighted draw (1..=total) supplied, for tests.
    fn decide(&self, headers: &HeaderMap, draw: impl FnOnce() -> u32) -> bool {
        if let Some((name, matching)) = &self.header
            && let Some(value) = headers.get(name)
        {
            let value = value.as_bytes();
            let decided = match matching {
                HeaderMatch::Value(wanted) if value == &**wanted => Some(true),
                HeaderMatch::Pattern(re) if re.is_match(value) => Some(true),
                // ingress-nginx reads `always`/`never` only without a value or pattern.
                HeaderMatch::Keywords if value == b"always" => Some(true),
                HeaderMatch::Keywords if value == b"never" => Some(false),
                _ => None,
            };
            if let Some(decided) = decided {
                return decided;
            }
        }
        if let Some(name) = &self.cookie {
            match cookie(headers, name) {
                Some(b"always") => return true,
                Some(b"never") => return false,
                _ => {}
            }
        }
        self.weight > 0 && draw() <= self.weight
    }

    /// The rule for `/debug/routes`.
    pub fn describe(&self) -> serde_json::Value {
        let (header, value, pattern) = match &self.header {
            None => (None, None, None),
            Some((name, HeaderMatch::Keywords)) => (Some(name.as_str()), None, None),
            Some((name, HeaderMatch::Value(v))) => (
                Some(name.as_str()),
                Some(String::from_utf8_lossy(v).into_owned()),
                None,
            ),
            Some((name, HeaderMatch::Pattern(re))) => {
                (Some(name.as_str()), None, Some(re.as_str().to_owned()))
            }
        };
        serde_json::json!({
            "byHeader": header,
            "byHeaderValue": value,
            "byHeaderPattern": pattern,
            "byCookie": self.cookie.as_deref(),
            "weight": self.weight,
            "weightTotal": self.total,
        })
    }
}

/// The first value of cookie `name` in the request's `Cookie` headers (nginx `$cookie_NAME`).
pub(crate) fn cookie<'h>(headers: &'h HeaderMap, name: &str) -> Option<&'h [u8]> {
    headers
        .get_all(COOKIE)
        .iter()
        .flat_map(|v| v.as_bytes().split(|&b| b == b';'))
        .find_map(|pair| {
            let pair = pair.trim_ascii_start();
            let (k, v) = pair.split_at(pair.iter().position(|&b| b == b'=')?);
            // As nginx: the name is followed by `=` directly (`name = v` is another name), and
            // compared without regard to case.
            k.eq_ignore_ascii_case(name.as_bytes())
                .then(|| v[1..].trim_ascii_end())
        })
}

/// A canary attached to a main route: its rule and its backend.
#[derive(Debug)]
pub struct Canary {
    pub rule: Arc<Rule>,
    pub backend: Arc<Backend>,
    /// `namespace/name` of the canary Ingress.
    pub ingress: Arc<str>,
}

impl Canary {
    pub fn describe(&self) -> serde_json::Value {
        serde_json::json!({
            "ingress": &*self.ingress,
            "backend": &*self.backend.name,
            "endpoints": self.backend.endpoints().iter().map(|e| e.addr.to_string()).collect::<Vec<_>>(),
            "rule": self.rule.describe(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(text: RuleText) -> Rule {
        Rule::new(RuleText {
            total: text.total.max(1),
            ..text
        })
        .expect("valid rule")
    }

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, http::HeaderValue::from_static(v));
        }
        h
    }

    /// Draws that must not happen: the header or cookie decided.
    fn no_draw() -> u32 {
        panic!("the weight was consulted")
    }

    #[test]
    fn the_header_decides_with_always_and_never_before_cookie_and_weight() {
        let r = rule(RuleText {
            by_header: Some("x-canary".into()),
            by_cookie: Some("canary".into()),
            weight: 100,
            total: 100,
            ..Default::default()
        });
        let never = headers(&[("x-canary", "never"), ("cookie", "canary=always")]);
        assert!(!r.decide(&never, no_draw));
        let always = headers(&[("x-canary", "always"), ("cookie", "canary=never")]);
        assert!(r.decide(&always, no_draw));
        // Any other value falls through to the cookie.
        let other = headers(&[("x-canary", "maybe"), ("cookie", "a=b; canary=never")]);
        assert!(!r.decide(&other, no_draw));
        // And without a cookie, to the weight.
        assert!(r.decide(&headers(&[("x-canary", "maybe")]), || 100));
    }

    #[test]
    fn a_header_value_replaces_always_and_a_pattern_matches_anywhere() {
        let by_value = rule(RuleText {
            by_header: Some("x-region".into()),
            by_header_value: Some("eu".into()),
            by_header_pattern: Some("ignored".into()),
            ..Default::default()
        });
        assert!(by_value.decide(&headers(&[("x-region", "eu")]), no_draw));
        // `always` is just another value now, and a non-matching value falls through.
        assert!(!by_value.decide(&headers(&[("x-region", "always")]), || 1));
        let by_pattern = rule(RuleText {
            by_header: Some("user-agent".into()),
            by_header_pattern: Some("Chrome/1[0-9]{2}".into()),
            ..Default::default()
        });
        assert!(by_pattern.decide(&headers(&[("user-agent", "Mozilla Chrome/120 x")]), no_draw));
        assert!(!by_pattern.decide(&headers(&[("user-agent", "curl/8")]), || 1));
    }

    #[test]
    fn the_weight_is_a_share_of_the_total() {
        let r = rule(RuleText {
            weight: 20,
            total: 100,
            ..Default::default()
        });
        assert!(r.decide(&HeaderMap::new(), || 20));
        assert!(!r.decide(&HeaderMap::new(), || 21));
        let none = rule(RuleText {
            weight: 0,
            total: 100,
            ..Default::default()
        });
        assert!(
            !none.decide(&HeaderMap::new(), no_draw),
            "weight 0 never draws"
        );
        // The real draw stays within bounds: 1 of 1000 with weight 1000 is always taken.
        let all = rule(RuleText {
            weight: 1000,
            total: 1000,
            ..Default::default()
        });
        assert!((0..1000).all(|_| all.chooses(&HeaderMap::new())));
    }

    #[test]
    fn cookies_are_read_like_nginx_cookie_variables() {
        let h = headers(&[("cookie", "a=1;  canary = x"), ("cookie", "canary=always")]);
        assert_eq!(cookie(&h, "canary"), Some(&b"always"[..]), "{h:?}");
        let h = headers(&[("cookie", "xcanary=always; canary=never")]);
        assert_eq!(cookie(&h, "canary"), Some(&b"never"[..]));
        assert_eq!(cookie(&headers(&[("cookie", "flag")]), "flag"), None);
    }

    #[test]
    fn bad_rules_are_refused_with_the_reason() {
        let bad_pattern = Rule::new(RuleText {
            by_header: Some("x".into()),
            by_header_pattern: Some("(".into()),
            total: 100,
            ..Default::default()
        });
        assert!(
            bad_pattern
                .expect_err("bad regex")
                .contains("canary-by-header-pattern")
        );
        let bad_header = Rule::new(RuleText {
            by_header: Some("x y".into()),
            total: 100,
            ..Default::default()
        });
        assert!(
            bad_header
                .expect_err("bad name")
                .contains("canary-by-header")
        );
    }
}
