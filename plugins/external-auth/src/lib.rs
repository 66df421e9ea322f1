//! Built-in plugin `external-auth`: ingress-nginx's external authentication (nginx
//! `auth_request`): `auth-url`, `auth-method`, `auth-signin`, `auth-signin-redirect-param`,
//! `auth-response-headers`, `auth-request-redirect`, `auth-cache-key`, `auth-cache-duration`,
//! `auth-always-set-cookie` and the `auth-keepalive*` tuning; and `enable-global-auth`, which
//! lets a route opt out of the controller-wide `--global-auth-url` (the host configures that
//! with this same plugin, from its flags).
//!
//! Owns only these keys and only states the rule; the host sends the subrequests (pooled, so
//! the `auth-keepalive*` keys are accepted with a note) and enforces the answers. URLs and the
//! cache key take nginx variables the host substitutes (`$host`, `$http_host`, `$scheme`,
//! `$request_uri`, `$escaped_request_uri`, `$request_method`, `$remote_addr`, and request
//! headers as `$http_<name>`); any other variable is an error rather than a literal.
//! `auth-proxy-set-headers` names a ConfigMap (`NAME` or `NS/NAME`) whose entries the host
//! sets as headers on every subrequest. `auth-snippet` is not owned (nginx text is never
//! executed).
#![cfg_attr(target_arch = "wasm32", no_std)]

extern crate alloc;

use alloc::format;
use alloc::string::{String, ToString};
use alloc::vec::Vec;
use wasmgress_plugin_sdk::refs::parse_object_ref;
use wasmgress_plugin_sdk::template::parse_with_headers;
use wasmgress_plugin_sdk::validate::check_header_name;
use wasmgress_plugin_sdk::{
    AuthCacheDuration, Diagnostic, Diagnostics, Directive, ExternalAuth, Info, Plugin, Policy,
    Settings, TemplatePart, export_plugin, info, parse_bool,
};

pub const URL: &str = "nginx.ingress.kubernetes.io/auth-url";
pub const METHOD: &str = "nginx.ingress.kubernetes.io/auth-method";
pub const SIGNIN: &str = "nginx.ingress.kubernetes.io/auth-signin";
pub const SIGNIN_PARAM: &str = "nginx.ingress.kubernetes.io/auth-signin-redirect-param";
pub const RESPONSE_HEADERS: &str = "nginx.ingress.kubernetes.io/auth-response-headers";
pub const REQUEST_REDIRECT: &str = "nginx.ingress.kubernetes.io/auth-request-redirect";
pub const CACHE_KEY: &str = "nginx.ingress.kubernetes.io/auth-cache-key";
pub const CACHE_DURATION: &str = "nginx.ingress.kubernetes.io/auth-cache-duration";
pub const ALWAYS_SET_COOKIE: &str = "nginx.ingress.kubernetes.io/auth-always-set-cookie";
pub const PROXY_SET_HEADERS: &str = "nginx.ingress.kubernetes.io/auth-proxy-set-headers";
pub const KEEPALIVE: &str = "nginx.ingress.kubernetes.io/auth-keepalive";
pub const KEEPALIVE_REQUESTS: &str = "nginx.ingress.kubernetes.io/auth-keepalive-requests";
pub const KEEPALIVE_TIMEOUT: &str = "nginx.ingress.kubernetes.io/auth-keepalive-timeout";
pub const KEEPALIVE_SHARE_VARS: &str = "nginx.ingress.kubernetes.io/auth-keepalive-share-vars";
pub const ENABLE_GLOBAL: &str = "nginx.ingress.kubernetes.io/enable-global-auth";

const KEYS: [&str; 15] = [
    ENABLE_GLOBAL,
    URL,
    METHOD,
    SIGNIN,
    SIGNIN_PARAM,
    RESPONSE_HEADERS,
    REQUEST_REDIRECT,
    CACHE_KEY,
    CACHE_DURATION,
    ALWAYS_SET_COOKIE,
    PROXY_SET_HEADERS,
    KEEPALIVE,
    KEEPALIVE_REQUESTS,
    KEEPALIVE_TIMEOUT,
    KEEPALIVE_SHARE_VARS,
];

/// ingress-nginx's default `auth-cache-duration`.
pub const DEFAULT_CACHE_DURATION: &str = "200 202 401 5m";

/// An nginx time (`5m`, `30s`, `1h30m`, `90`) in seconds.
pub fn parse_duration(text: &str) -> Option<u32> {
    let mut total: u64 = 0;
    let mut number = String::new();
    for c in text.trim().chars() {
        if c.is_ascii_digit() {
            number.push(c);
            continue;
        }
        let unit: u64 = match c {
            's' => 1,
            'm' => 60,
            'h' => 3600,
            'd' => 86_400,
            'w' => 604_800,
            _ => return None,
        };
        total += number.parse::<u64>().ok()?.checked_mul(unit)?;
        number.clear();
    }
    if !number.is_empty() {
        total += number.parse::<u64>().ok()?;
    }
    u32::try_from(total).ok().filter(|t| *t > 0)
}

/// `200 202 401 5m, 500 1m`: each entry statuses then a time.
pub fn parse_cache_durations(text: &str) -> Result<Vec<AuthCacheDuration>, String> {
    text.split(',')
        .map(str::trim)
        .filter(|e| !e.is_empty())
        .map(|entry| {
            let words: Vec<&str> = entry.split_whitespace().collect();
            let (time, codes) = words
                .split_last()
                .ok_or_else(|| format!("`{entry}` is empty"))?;
            let seconds =
                parse_duration(time).ok_or_else(|| format!("`{time}` is not a time (5m, 30s)"))?;
            let statuses = codes
                .iter()
                .map(|c| {
                    c.parse::<u16>()
                        .ok()
                        .filter(|s| (100..=599).contains(s))
                        .ok_or_else(|| format!("`{c}` is not an HTTP status"))
                })
                .collect::<Result<Vec<_>, _>>()?;
            if statuses.is_empty() {
                return Err(format!("`{entry}` names no status"));
            }
            Ok(AuthCacheDuration { statuses, seconds })
        })
        .collect()
}

fn template(settings: &Settings, key: &str, diags: &mut Diagnostics) -> Option<Vec<TemplatePart>> {
    let value = settings.get(key)?.trim();
    match parse_with_headers(value) {
        Ok(parts) => Some(parts),
        Err(why) => {
            diags.error(key, format!("{why}"));
            None
        }
    }
}

/// The URL must start with a literal `http://` or `https://`: no variable picks the scheme.
/// (The host checks which variables may name the auth host.)
fn url(settings: &Settings, diags: &mut Diagnostics) -> Option<Vec<TemplatePart>> {
    let parts = template(settings, URL, diags)?;
    match parts.first() {
        Some(TemplatePart::Literal(s)) if s.starts_with("http://") || s.starts_with("https://") => {
            Some(parts)
        }
        _ => {
            diags.error(URL, "must be an http:// or https:// URL");
            None
        }
    }
}

fn response_headers(settings: &Settings, diags: &mut Diagnostics) -> Vec<String> {
    let Some(value) = settings.get(RESPONSE_HEADERS) else {
        return Vec::new();
    };
    let mut names = Vec::new();
    for name in value.split(',').map(str::trim).filter(|n| !n.is_empty()) {
        match check_header_name(name) {
            Ok(()) => names.push(name.to_string()),
            Err(why) => diags.error(RESPONSE_HEADERS, format!("`{name}`: {why}")),
        }
    }
    names
}

fn method(settings: &Settings, diags: &mut Diagnostics) -> String {
    match settings.get(METHOD).map(str::trim) {
        None | Some("") => "GET".to_string(),
        Some(m) if m.bytes().all(|b| b.is_ascii_uppercase()) => m.to_string(),
        Some(m) => {
            diags.error(
                METHOD,
                format!("`{m}` is not an HTTP method (GET, POST...)"),
            );
            "GET".to_string()
        }
    }
}

/// Turn the owned settings into a policy.
pub fn policy(settings: &Settings) -> Result<Policy, Vec<Diagnostic>> {
    let mut diags = Diagnostics::default();
    let mut policy = Policy::default();
    if let Some(v) = settings.get(ENABLE_GLOBAL) {
        // ingress-nginx reads anything but a boolean as true: the stricter reading.
        let enabled = parse_bool(v).unwrap_or_else(|| {
            diags.warning(
                ENABLE_GLOBAL,
                format!("`{v}` is not a boolean; true applies"),
            );
            true
        });
        policy.push(Directive::GlobalAuth(enabled));
    }
    if settings.get(URL).is_none() {
        if let Some((key, _)) = settings.iter().find(|(k, _)| *k != ENABLE_GLOBAL) {
            diags.warning(key, format!("has no effect without {URL}"));
        }
        return diags.finish(policy);
    }
    let proxy_set_headers = settings.get(PROXY_SET_HEADERS).and_then(|v| {
        parse_object_ref(v, "ConfigMap")
            .map_err(|why| diags.error(PROXY_SET_HEADERS, why))
            .ok()
    });
    for key in [
        KEEPALIVE,
        KEEPALIVE_REQUESTS,
        KEEPALIVE_TIMEOUT,
        KEEPALIVE_SHARE_VARS,
    ] {
        if settings.get(key).is_some() {
            diags.info(
                key,
                "not needed: auth requests always reuse pooled connections",
            );
        }
    }
    let always_set_cookie = match settings.get(ALWAYS_SET_COOKIE) {
        None => false,
        Some(v) => parse_bool(v).unwrap_or_else(|| {
            diags.error(ALWAYS_SET_COOKIE, format!("`{v}` is not a boolean"));
            false
        }),
    };
    let durations = settings
        .get(CACHE_DURATION)
        .unwrap_or(DEFAULT_CACHE_DURATION);
    let cache_durations = parse_cache_durations(durations).unwrap_or_else(|why| {
        diags.error(CACHE_DURATION, why);
        Vec::new()
    });
    let rule = ExternalAuth {
        url: url(settings, &mut diags).unwrap_or_default(),
        method: method(settings, &mut diags),
        signin: template(settings, SIGNIN, &mut diags),
        signin_redirect_param: settings
            .get(SIGNIN_PARAM)
            .map(str::trim)
            .filter(|p| !p.is_empty())
            .unwrap_or("rd")
            .to_string(),
        response_headers: response_headers(settings, &mut diags),
        request_redirect: template(settings, REQUEST_REDIRECT, &mut diags),
        cache_key: template(settings, CACHE_KEY, &mut diags).filter(|k| !k.is_empty()),
        cache_durations,
        always_set_cookie,
        proxy_set_headers,
    };
    policy.push(Directive::ExternalAuth(rule));
    diags.finish(policy)
}

struct ExternalAuthPlugin;

impl Plugin for ExternalAuthPlugin {
    type Config = ();

    fn info() -> Info {
        info("external-auth", env!("CARGO_PKG_VERSION"), &KEYS, &[], &[])
    }

    fn configure(settings: &Settings) -> Result<(Policy, ()), Vec<Diagnostic>> {
        policy(settings).map(|p| (p, ()))
    }
}

export_plugin!(ExternalAuthPlugin);

#[cfg(test)]
mod tests {
    use super::*;
    use wasmgress_plugin_sdk::RequestVariable;

    fn rule(pairs: &[(&str, &str)]) -> Result<ExternalAuth, Vec<Diagnostic>> {
        let p = policy(&Settings::from_pairs(pairs))?;
        Ok(p.directives
            .into_iter()
            .find_map(|d| match d {
                Directive::ExternalAuth(a) => Some(a),
                _ => None,
            })
            .expect("an external-auth directive"))
    }

    #[test]
    fn oauth2_proxy_example() {
        let r = rule(&[
            (URL, "https://$host/oauth2/auth"),
            (SIGNIN, "https://$host/oauth2/start?rd=$escaped_request_uri"),
            (
                RESPONSE_HEADERS,
                "X-Auth-Request-User, X-Auth-Request-Email",
            ),
            (CACHE_KEY, "$remote_addr$http_authorization"),
        ])
        .expect("valid");
        assert_eq!(r.method, "GET");
        assert_eq!(r.signin_redirect_param, "rd");
        assert_eq!(r.url[1], TemplatePart::Variable(RequestVariable::Host));
        assert_eq!(
            r.response_headers,
            ["X-Auth-Request-User", "X-Auth-Request-Email"]
        );
        assert_eq!(
            r.cache_key.expect("key")[1],
            TemplatePart::Header("authorization".into())
        );
        assert_eq!(r.cache_durations[0].statuses, [200, 202, 401]);
        assert_eq!(r.cache_durations[0].seconds, 300);
    }

    #[test]
    fn refusals_name_their_key() {
        for (pairs, key) in [
            (&[(URL, "ftp://auth")][..], URL),
            (&[(URL, "$scheme://auth/check")][..], URL),
            (&[(URL, "http://auth/$foo")][..], URL),
            (&[(URL, "http://auth"), (METHOD, "get it")][..], METHOD),
            (
                &[(URL, "http://auth"), (CACHE_DURATION, "200 soon")][..],
                CACHE_DURATION,
            ),
            (
                &[(URL, "http://auth"), (RESPONSE_HEADERS, "X Bad")][..],
                RESPONSE_HEADERS,
            ),
            (
                &[(URL, "http://auth"), (PROXY_SET_HEADERS, "Bad/Name")][..],
                PROXY_SET_HEADERS,
            ),
        ] {
            let e = rule(pairs).expect_err("refused");
            assert!(e.iter().any(|d| d.key == key), "{pairs:?}: {e:?}");
        }
    }

    #[test]
    fn global_auth_can_be_turned_off_per_ingress() {
        let p = policy(&Settings::from_pairs(&[(ENABLE_GLOBAL, "false")])).expect("valid");
        assert_eq!(p.directives, [Directive::GlobalAuth(false)]);
        assert!(p.notes.is_empty());
        let p = policy(&Settings::from_pairs(&[(ENABLE_GLOBAL, "maybe")])).expect("valid");
        assert_eq!(p.directives, [Directive::GlobalAuth(true)]);
    }

    #[test]
    fn nginx_times() {
        assert_eq!(parse_duration("5m"), Some(300));
        assert_eq!(parse_duration("1h30m"), Some(5400));
        assert_eq!(parse_duration("90"), Some(90));
        assert_eq!(parse_duration("0"), None);
        assert_eq!(parse_duration("5x"), None);
        let d = parse_cache_durations("200 5m, 401 30s").expect("valid");
        assert_eq!(
            (d[1].statuses.clone(), d[1].seconds),
            (alloc::vec![401], 30)
        );
    }
}
