//! Built-in plugin `cors`: ingress-nginx's CORS annotations: `enable-cors`,
//! `cors-allow-origin` (default `*`; a comma-separated list, where `https://*.example.com`
//! stands for one more label), `cors-allow-methods`, `cors-allow-headers`,
//! `cors-expose-headers`, `cors-allow-credentials` (default true) and `cors-max-age` (default
//! 1728000 s).
//!
//! Owns only these keys and only states the rules; the host answers preflights (204, without
//! the upstream) and adds the headers. Values ingress-nginx would replace by its default are
//! replaced here too, with a warning naming the key; an origin it would skip is skipped with a
//! warning (that only narrows access), and a list left empty grants no origin at all.
#![cfg_attr(target_arch = "wasm32", no_std)]

extern crate alloc;

use alloc::format;
use alloc::string::{String, ToString};
use alloc::vec::Vec;
use wasmgress_plugin_sdk::{
    Cors, Diagnostic, Diagnostics, Directive, Info, Plugin, Policy, Settings, export_plugin, info,
    parse_bool,
};

/// Turns CORS on.
pub const ENABLE: &str = "nginx.ingress.kubernetes.io/enable-cors";
/// Allowed origins.
pub const ORIGIN: &str = "nginx.ingress.kubernetes.io/cors-allow-origin";
/// `Access-Control-Allow-Methods`.
pub const METHODS: &str = "nginx.ingress.kubernetes.io/cors-allow-methods";
/// `Access-Control-Allow-Headers`.
pub const HEADERS: &str = "nginx.ingress.kubernetes.io/cors-allow-headers";
/// `Access-Control-Expose-Headers`.
pub const EXPOSE: &str = "nginx.ingress.kubernetes.io/cors-expose-headers";
/// `Access-Control-Allow-Credentials`.
pub const CREDENTIALS: &str = "nginx.ingress.kubernetes.io/cors-allow-credentials";
/// `Access-Control-Max-Age`.
pub const MAX_AGE: &str = "nginx.ingress.kubernetes.io/cors-max-age";

const KEYS: [&str; 7] = [
    ENABLE,
    ORIGIN,
    METHODS,
    HEADERS,
    EXPOSE,
    CREDENTIALS,
    MAX_AGE,
];

/// ingress-nginx's defaults.
pub const DEFAULT_METHODS: &str = "GET, PUT, POST, DELETE, PATCH, OPTIONS";
pub const DEFAULT_HEADERS: &str = "DNT,Keep-Alive,User-Agent,X-Requested-With,If-Modified-Since,Cache-Control,Content-Type,Range,Authorization";
pub const DEFAULT_MAX_AGE: u32 = 1_728_000;

/// One origin as ingress-nginx accepts it: `scheme://[*.]host[:port]`, or `null`.
fn valid_origin(o: &str) -> bool {
    if o == "null" {
        return true;
    }
    let Some((scheme, rest)) = o.split_once("://") else {
        return false;
    };
    let rest = rest.strip_prefix("*.").unwrap_or(rest);
    let (host, port) = match rest.rsplit_once(':') {
        Some((h, p)) => (h, Some(p)),
        None => (rest, None),
    };
    !scheme.is_empty()
        && scheme.bytes().all(|b| b.is_ascii_lowercase())
        && !host.is_empty()
        && host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
        && port.is_none_or(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
}

fn origins(settings: &Settings, diags: &mut Diagnostics) -> Vec<String> {
    let Some(value) = settings.get(ORIGIN) else {
        return alloc::vec!["*".to_string()];
    };
    let mut list = Vec::new();
    for origin in value.split(',').map(str::trim).filter(|o| !o.is_empty()) {
        if origin == "*" {
            return alloc::vec!["*".to_string()];
        }
        if valid_origin(origin) {
            list.push(origin.to_string());
        } else {
            diags.warning(
                ORIGIN,
                format!("skipped `{origin}`: not an origin (scheme://host[:port])"),
            );
        }
    }
    if list.is_empty() {
        diags.warning(
            ORIGIN,
            "no valid origin: no cross-origin request is granted",
        );
    }
    list
}

/// `GET, POST` or `GET,POST`: letters separated by commas and optional spaces.
fn valid_methods(v: &str) -> bool {
    v.split(',')
        .map(str::trim)
        .all(|m| !m.is_empty() && m.bytes().all(|b| b.is_ascii_alphabetic()))
}

/// Header names or `*`, separated by commas and optional spaces.
fn valid_headers(v: &str) -> bool {
    v.split(',').map(str::trim).all(|h| {
        h == "*"
            || (!h.is_empty()
                && h.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'))
    })
}

/// The value of `key` if `ok`, else the default (with a warning when a value was given).
fn text(
    settings: &Settings,
    key: &str,
    default: &str,
    ok: fn(&str) -> bool,
    diags: &mut Diagnostics,
) -> String {
    match settings.get(key).map(str::trim) {
        None => default.to_string(),
        Some(v) if ok(v) => v.to_string(),
        Some(v) => {
            diags.warning(
                key,
                format!(
                    "`{v}` is not valid here; the default `{default}` applies (as in ingress-nginx)"
                ),
            );
            default.to_string()
        }
    }
}

/// Turn the owned settings into a policy.
pub fn policy(settings: &Settings) -> Result<Policy, Vec<Diagnostic>> {
    let mut diags = Diagnostics::default();
    let mut policy = Policy::default();
    let enabled = match settings.get(ENABLE) {
        None => false,
        Some(v) => parse_bool(v).unwrap_or_else(|| {
            diags.warning(ENABLE, format!("`{v}` is not a boolean; CORS stays off"));
            false
        }),
    };
    if !enabled {
        if let Some(key) = KEYS[1..].iter().find(|k| settings.get(k).is_some()) {
            diags.warning(key, format!("ignored: {ENABLE} is not true"));
        }
        return diags.finish(policy);
    }
    let allow_credentials = match settings.get(CREDENTIALS) {
        None => true,
        Some(v) => parse_bool(v).unwrap_or_else(|| {
            diags.warning(
                CREDENTIALS,
                format!("`{v}` is not a boolean; true applies (as in ingress-nginx)"),
            );
            true
        }),
    };
    let max_age_seconds = match settings.get(MAX_AGE).map(str::trim) {
        None => DEFAULT_MAX_AGE,
        Some(v) => v.parse::<u32>().unwrap_or_else(|_| {
            diags.warning(
                MAX_AGE,
                format!("`{v}` is not a number of seconds; {DEFAULT_MAX_AGE} applies"),
            );
            DEFAULT_MAX_AGE
        }),
    };
    let cors = Cors {
        allow_origins: origins(settings, &mut diags),
        allow_methods: text(
            settings,
            METHODS,
            DEFAULT_METHODS,
            valid_methods,
            &mut diags,
        ),
        allow_headers: text(
            settings,
            HEADERS,
            DEFAULT_HEADERS,
            valid_headers,
            &mut diags,
        ),
        expose_headers: text(settings, EXPOSE, "", valid_headers, &mut diags),
        allow_credentials,
        max_age_seconds,
    };
    if cors.allow_origins.is_empty() {
        // Nothing granted: CORS headers are never sent, as in ingress-nginx.
        return diags.finish(policy);
    }
    policy.push(Directive::Cors(cors));
    diags.finish(policy)
}

struct CorsPlugin;

impl Plugin for CorsPlugin {
    type Config = ();

    fn info() -> Info {
        info("cors", env!("CARGO_PKG_VERSION"), &KEYS, &[], &[])
    }

    fn configure(settings: &Settings) -> Result<(Policy, ()), Vec<Diagnostic>> {
        policy(settings).map(|p| (p, ()))
    }
}

export_plugin!(CorsPlugin);

#[cfg(test)]
mod tests {
    use super::*;

    fn cors_of(pairs: &[(&str, &str)]) -> Option<Cors> {
        let p = policy(&Settings::from_pairs(pairs)).expect("never an error");
        p.directives.into_iter().find_map(|d| match d {
            Directive::Cors(c) => Some(c),
            _ => None,
        })
    }

    #[test]
    fn defaults_are_ingress_nginx_defaults() {
        let c = cors_of(&[(ENABLE, "true")]).expect("enabled");
        assert_eq!(c.allow_origins, ["*"]);
        assert_eq!(c.allow_methods, DEFAULT_METHODS);
        assert_eq!(c.allow_headers, DEFAULT_HEADERS);
        assert_eq!(c.expose_headers, "");
        assert!(c.allow_credentials);
        assert_eq!(c.max_age_seconds, DEFAULT_MAX_AGE);
        assert!(
            cors_of(&[(ORIGIN, "https://a.test")]).is_none(),
            "off without enable-cors"
        );
    }

    #[test]
    fn origins_lists_and_wildcards() {
        let c = cors_of(&[
            (ENABLE, "true"),
            (
                ORIGIN,
                "https://app.example.com, https://*.example.org:8443, http://bad host, null",
            ),
        ])
        .expect("enabled");
        assert_eq!(
            c.allow_origins,
            [
                "https://app.example.com",
                "https://*.example.org:8443",
                "null"
            ]
        );
        assert!(cors_of(&[(ENABLE, "true"), (ORIGIN, "nope")]).is_none());
        let c = cors_of(&[(ENABLE, "true"), (ORIGIN, "https://a.test, *")]).expect("enabled");
        assert_eq!(c.allow_origins, ["*"]);
    }

    #[test]
    fn bad_values_fall_back_with_a_warning() {
        let p = policy(&Settings::from_pairs(&[
            (ENABLE, "true"),
            (METHODS, "GET; DROP"),
            (MAX_AGE, "soon"),
            (CREDENTIALS, "false"),
            (EXPOSE, "X-Total, X-Page"),
        ]))
        .expect("valid");
        assert_eq!(p.notes.len(), 2);
        let Directive::Cors(c) = &p.directives[0] else {
            panic!("cors")
        };
        assert_eq!(c.allow_methods, DEFAULT_METHODS);
        assert_eq!(c.max_age_seconds, DEFAULT_MAX_AGE);
        assert!(!c.allow_credentials);
        assert_eq!(c.expose_headers, "X-Total, X-Page");
    }
}
