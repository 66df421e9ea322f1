//! Built-in plugin `redirect`: ingress-nginx's redirect and rewrite annotations.
//!
//! - `ssl-redirect`, `force-ssl-redirect`: booleans handed to the host, which redirects plain
//!   HTTP to HTTPS (308) when the host has TLS (or always, when forced).
//! - `permanent-redirect` (+ `permanent-redirect-code`, default 301) and `temporal-redirect`
//!   (+ `temporal-redirect-code`, default 302): answer every request with a redirect to an
//!   absolute http(s) URL; `$request_uri`, `$host` and `$scheme` are substituted by the host.
//!   As in ingress-nginx, a temporal redirect takes precedence over a permanent one.
//! - `app-root`: redirect `/` to this path (302).
//! - `rewrite-target` (+ `use-regex`): the host replaces the matched path before proxying;
//!   `$1`..`$9` are the Ingress path's capture groups. As in ingress-nginx, `rewrite-target`
//!   implies regular-expression paths.
//!
//! This crate owns only the parsing and validation; the host executes the result.
#![cfg_attr(target_arch = "wasm32", no_std)]

extern crate alloc;

use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;
use wasmgress_plugin_sdk::template;
use wasmgress_plugin_sdk::{
    Diagnostic, Diagnostics, Directive, Info, Plugin, Policy, Redirect, Settings, StaticResponse,
    TemplatePart, export_plugin, info, parse_bool,
};

/// `ssl-redirect`
pub const SSL_REDIRECT: &str = "nginx.ingress.kubernetes.io/ssl-redirect";
/// `force-ssl-redirect`
pub const FORCE_SSL_REDIRECT: &str = "nginx.ingress.kubernetes.io/force-ssl-redirect";
/// `permanent-redirect`
pub const PERMANENT: &str = "nginx.ingress.kubernetes.io/permanent-redirect";
/// `permanent-redirect-code`
pub const PERMANENT_CODE: &str = "nginx.ingress.kubernetes.io/permanent-redirect-code";
/// `temporal-redirect`
pub const TEMPORAL: &str = "nginx.ingress.kubernetes.io/temporal-redirect";
/// `temporal-redirect-code`
pub const TEMPORAL_CODE: &str = "nginx.ingress.kubernetes.io/temporal-redirect-code";
/// `app-root`
pub const APP_ROOT: &str = "nginx.ingress.kubernetes.io/app-root";
/// `rewrite-target`
pub const REWRITE_TARGET: &str = "nginx.ingress.kubernetes.io/rewrite-target";
/// `use-regex`
pub const USE_REGEX: &str = "nginx.ingress.kubernetes.io/use-regex";

const KEYS: [&str; 9] = [
    SSL_REDIRECT,
    FORCE_SSL_REDIRECT,
    PERMANENT,
    PERMANENT_CODE,
    TEMPORAL,
    TEMPORAL_CODE,
    APP_ROOT,
    REWRITE_TARGET,
    USE_REGEX,
];

/// Characters that may appear in a URL or path we hand on (RFC 3986 minus anything that could
/// end a header or smuggle syntax).
fn is_url_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || "-._~:/?#[]@!$&'()*+,;=%".contains(c)
}

/// Parse a redirect URL: absolute `http://` or `https://` with a host; variables allowed.
pub fn parse_redirect_url(value: &str) -> Result<Vec<TemplatePart>, String> {
    let value = value.trim();
    if let Some(bad) = value.chars().find(|&c| !is_url_char(c)) {
        return Err(format!(
            "`{value}` contains {bad:?}, which is not allowed in a redirect URL"
        ));
    }
    let rest = value
        .strip_prefix("https://")
        .or_else(|| value.strip_prefix("http://"))
        .ok_or_else(|| format!("`{value}` must be an absolute http:// or https:// URL"))?;
    if rest.is_empty() || rest.starts_with('/') {
        return Err(format!("`{value}` has no host"));
    }
    template::parse(value).map_err(|e| format!("`{value}`: {e}"))
}

/// Parse a redirect status code: 300 to 308, as ingress-nginx accepts.
pub fn parse_code(value: &str) -> Result<u16, String> {
    match value.trim().parse::<u16>() {
        Ok(code) if (300..=308).contains(&code) => Ok(code),
        _ => Err(format!(
            "`{value}` is not a redirect status code (300 to 308)"
        )),
    }
}

/// Parse `app-root`: an absolute path without variables.
pub fn parse_app_root(value: &str) -> Result<String, String> {
    let value = value.trim();
    if !value.starts_with('/') {
        return Err(format!(
            "`{value}` must be an absolute path starting with /"
        ));
    }
    if let Some(bad) = value.chars().find(|&c| !is_url_char(c) || c == '$') {
        return Err(format!(
            "`{value}` contains {bad:?}, which is not allowed in app-root"
        ));
    }
    Ok(String::from(value))
}

/// Parse `rewrite-target`; returns the target and whether it refers to capture groups.
/// Only `$1`..`$9` (or `${1}`) are allowed: anything else nginx would substitute is refused.
pub fn parse_rewrite_target(value: &str) -> Result<(String, bool), String> {
    let value = value.trim();
    if value.is_empty() {
        return Err(String::from("rewrite-target is empty"));
    }
    if let Some(bad) = value
        .chars()
        .find(|&c| !is_url_char(c) && c != '{' && c != '}')
    {
        return Err(format!(
            "`{value}` contains {bad:?}, which is not allowed in rewrite-target"
        ));
    }
    let mut captures = false;
    let mut rest = value;
    while let Some(pos) = rest.find('$') {
        let after = &rest[pos + 1..];
        let (name, tail) = match after.strip_prefix('{') {
            Some(b) => match b.find('}') {
                Some(end) => (&b[..end], &b[end + 1..]),
                None => return Err(format!("`{value}`: unclosed `${{`")),
            },
            None => {
                let end = after
                    .find(|c: char| !c.is_ascii_alphanumeric() && c != '_')
                    .unwrap_or(after.len());
                (&after[..end], &after[end..])
            }
        };
        if name.len() == 1 && matches!(name.as_bytes()[0], b'1'..=b'9') {
            captures = true;
        } else {
            return Err(format!(
                "`{value}`: `${name}` is not allowed; rewrite-target may only use capture groups $1 to $9"
            ));
        }
        rest = tail;
    }
    if value.contains(['{', '}']) && !value.contains("${") {
        return Err(format!("`{value}`: braces are only allowed in `${{N}}`"));
    }
    Ok((String::from(value), captures))
}

fn bool_key(annotations: &Settings, key: &str, diags: &mut Diagnostics) -> Option<bool> {
    let value = annotations.get(key)?;
    let parsed = parse_bool(value);
    if parsed.is_none() {
        diags.error(key, format!("`{value}` is not a boolean (true or false)"));
    }
    parsed
}

fn redirect(
    annotations: &Settings,
    url_key: &str,
    code_key: &str,
    default_code: u16,
    diags: &mut Diagnostics,
) -> Option<Redirect> {
    let code = match annotations.get(code_key) {
        Some(v) => match parse_code(v) {
            Ok(c) => c,
            Err(why) => {
                diags.error(code_key, why);
                default_code
            }
        },
        None => default_code,
    };
    let Some(url) = annotations.get(url_key) else {
        if annotations.get(code_key).is_some() {
            diags.warning(code_key, format!("has no effect without {url_key}"));
        }
        return None;
    };
    match parse_redirect_url(url) {
        Ok(location) => Some(Redirect {
            status: code,
            location,
        }),
        Err(why) => {
            diags.error(url_key, why);
            None
        }
    }
}

/// Turn the owned annotations into a policy.
pub fn policy(annotations: &Settings) -> Result<Policy, Vec<Diagnostic>> {
    let mut diags = Diagnostics::default();
    let mut policy = Policy::default();
    let d = &mut policy.directives;
    d.extend(bool_key(annotations, SSL_REDIRECT, &mut diags).map(Directive::SslRedirect));
    let force = bool_key(annotations, FORCE_SSL_REDIRECT, &mut diags);
    d.extend(force.map(Directive::ForceSslRedirect));

    let permanent = redirect(annotations, PERMANENT, PERMANENT_CODE, 301, &mut diags);
    let temporal = redirect(annotations, TEMPORAL, TEMPORAL_CODE, 302, &mut diags);
    if temporal.is_some() && permanent.is_some() {
        diags.warning(
            PERMANENT,
            "ignored: temporal-redirect is also set and takes precedence (as in ingress-nginx)",
        );
    }
    let respond = temporal.or(permanent).map(StaticResponse::Redirect);
    d.extend(respond.map(Directive::Respond));

    if let Some(v) = annotations.get(APP_ROOT) {
        match parse_app_root(v) {
            Ok(root) => d.push(Directive::AppRoot(root)),
            Err(why) => diags.error(APP_ROOT, why),
        }
    }

    let use_regex = bool_key(annotations, USE_REGEX, &mut diags);
    let mut rewrite = false;
    if let Some(v) = annotations.get(REWRITE_TARGET) {
        match parse_rewrite_target(v) {
            Ok((target, captures)) => {
                if captures && use_regex == Some(false) {
                    diags.error(
                        REWRITE_TARGET,
                        format!("`{target}` uses capture groups but {USE_REGEX} is false"),
                    );
                }
                d.push(Directive::RewriteTarget(target));
                rewrite = true;
            }
            Err(why) => diags.error(REWRITE_TARGET, why),
        }
    }
    // ingress-nginx turns paths into regular expressions as soon as rewrite-target is set.
    let regex = use_regex.or(rewrite.then_some(true));
    d.extend(regex.map(Directive::UseRegex));
    diags.finish(policy)
}

struct RedirectPlugin;

impl Plugin for RedirectPlugin {
    type Config = ();

    fn info() -> Info {
        info("redirect", env!("CARGO_PKG_VERSION"), &KEYS, &[], &[])
    }

    fn configure(annotations: &Settings) -> Result<(Policy, ()), Vec<Diagnostic>> {
        policy(annotations).map(|p| (p, ()))
    }
}

export_plugin!(RedirectPlugin);

#[cfg(test)]
mod tests {
    use super::*;
    use wasmgress_plugin_sdk::RequestVariable;

    fn a(pairs: &[(&str, &str)]) -> Settings {
        Settings::from_pairs(pairs)
    }

    fn redirect_of(p: &Policy) -> Redirect {
        p.directives
            .iter()
            .find_map(|d| match d {
                Directive::Respond(StaticResponse::Redirect(r)) => Some(r.clone()),
                _ => None,
            })
            .expect("a redirect")
    }

    #[test]
    fn ssl_flags() {
        let p = policy(&a(&[(SSL_REDIRECT, "false"), (FORCE_SSL_REDIRECT, "true")])).expect("ok");
        assert_eq!(
            p.directives,
            [
                Directive::SslRedirect(false),
                Directive::ForceSslRedirect(true)
            ]
        );
        let e = policy(&a(&[(SSL_REDIRECT, "maybe")])).expect_err("bad bool");
        assert_eq!(e[0].key, SSL_REDIRECT);
    }

    #[test]
    fn permanent_and_temporal() {
        let p = policy(&a(&[(PERMANENT, "https://new.example.com$request_uri")])).expect("ok");
        let r = redirect_of(&p);
        assert_eq!(r.status, 301);
        assert_eq!(
            r.location,
            [
                TemplatePart::Literal("https://new.example.com".into()),
                TemplatePart::Variable(RequestVariable::RequestUri)
            ]
        );
        let p = policy(&a(&[
            (PERMANENT, "https://a.example.com"),
            (PERMANENT_CODE, "308"),
            (TEMPORAL, "https://b.example.com"),
        ]))
        .expect("ok");
        let r = redirect_of(&p);
        assert_eq!(r.status, 302, "temporal wins");
        assert_eq!(p.notes.len(), 1);
    }

    #[test]
    fn bad_redirects_named() {
        for (k, v) in [
            (PERMANENT, "/relative"),
            (PERMANENT, "ftp://x"),
            (PERMANENT, "https://x/\r\nSet-Cookie: a"),
            (PERMANENT, "https://x/$http_cookie"),
            (PERMANENT_CODE, "200"),
            (TEMPORAL_CODE, "abc"),
        ] {
            let mut pairs = alloc::vec![(k, v)];
            if k.ends_with("-code") {
                pairs.push((PERMANENT, "https://x"));
            }
            let e = policy(&a(&pairs)).expect_err(v);
            assert_eq!(e[0].key, k, "{v}");
        }
    }

    #[test]
    fn app_root_and_rewrite() {
        let p = policy(&a(&[(APP_ROOT, "/app1"), (REWRITE_TARGET, "/$2")])).expect("ok");
        assert_eq!(
            p.directives,
            [
                Directive::AppRoot("/app1".into()),
                Directive::RewriteTarget("/$2".into()),
                Directive::UseRegex(true)
            ]
        );
        assert!(policy(&a(&[(APP_ROOT, "app1")])).is_err());
        assert!(policy(&a(&[(REWRITE_TARGET, "/$host")])).is_err());
        assert!(policy(&a(&[(REWRITE_TARGET, "/$1"), (USE_REGEX, "false")])).is_err());
        assert_eq!(
            policy(&a(&[(USE_REGEX, "true")])).expect("ok").directives,
            [Directive::UseRegex(true)]
        );
        assert_eq!(
            parse_rewrite_target("/${1}/x"),
            Ok(("/${1}/x".into(), true))
        );
        assert_eq!(parse_rewrite_target("/"), Ok(("/".into(), false)));
    }
}
