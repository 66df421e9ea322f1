//! Built-in plugin `mirror`: ingress-nginx's request mirroring, the `mirror-target`,
//! `mirror-request-body` and `mirror-host` annotations.
//!
//! Owns only these keys and only parses them, into at most one [`Directive::Mirror`]. The host
//! sends the copies natively, so a mirrored route costs no Wasm call per request, and a copy
//! never slows or fails the request it copies: the host never waits for a copy, its answer is
//! thrown away, and a copy that cannot keep up is dropped and counted on `/metrics`. Copies
//! never reach link-local or metadata addresses, nor loopback in a cluster (the host checks
//! literal addresses when it compiles the route and resolved ones when it connects).
//!
//! # Keys
//!
//! - `mirror-target`: where copies go, an absolute `http://` or `https://` URL with a host
//!   (a DNS name, an IPv4 address or an IPv6 address in brackets) and an optional port, for
//!   example `https://test.env.com$request_uri`. No userinfo (`user@`) and no fragment (`#`).
//!   The path and query may hold the nginx variables the host fills per request: `$request_uri`,
//!   `$escaped_request_uri`, `$host`, `$http_host`, `$scheme`, `$remote_addr`,
//!   `$request_method`, and request headers as `$http_<name>` (`$http_x_env` is `X-Env`); any
//!   other variable is refused, never sent as text. The scheme, host and port must be literal,
//!   so that a request cannot choose where its copies go: a variable may directly follow the
//!   host only if it is `$request_uri` (which starts with `/`), else only after a `/` or `?`.
//!   As ingress-nginx (`ValidateServerName`) refuses `%`, `@`, `#`, `,`, `;`, `!`, `'`,
//!   spaces and the like, so does this plugin; it also refuses `^`, `|` and `\` (not URL
//!   characters), brackets outside an IPv6 host and braces outside `${name}`. Absent (or
//!   refused), nothing is mirrored. A target that keeps nothing of the request's URI gets an
//!   info: every copy then goes to the same path.
//! - `mirror-request-body`: `on` (the default: copies carry the request body) or `off`,
//!   case-sensitive, as ingress-nginx's `^(on|off)$`.
//! - `mirror-host`: the copies' `Host` header, a host name or address with an optional port
//!   (default: the target's host). ingress-nginx lets regular-expression characters through
//!   here; anything but a valid host is refused.
//!
//! Values are matched after trimming surrounding whitespace. Where ingress-nginx logs a bad
//! value and falls back to a default, this plugin reports an error; invalid values are refused
//! even where they would have no effect, and every problem of every key is reported in the same
//! pass. `mirror-request-body` and `mirror-host` without `mirror-target` are inert: each gets a
//! warning, and the policy is empty.
#![cfg_attr(target_arch = "wasm32", no_std)]

extern crate alloc;

use alloc::format;
use alloc::string::{String, ToString};
use alloc::vec::Vec;
use core::net::{Ipv4Addr, Ipv6Addr};
use wasmgress_plugin_sdk::template::{TemplateError, parse_with_headers};
use wasmgress_plugin_sdk::{
    Diagnostic, Diagnostics, Directive, Info, Mirror, Plugin, Policy, RequestVariable, Settings,
    TemplatePart, export_plugin, info, parse_bool,
};

/// `mirror-target`: the URL copies go to.
pub const TARGET: &str = "nginx.ingress.kubernetes.io/mirror-target";
/// `mirror-request-body`: `on` or `off`.
pub const REQUEST_BODY: &str = "nginx.ingress.kubernetes.io/mirror-request-body";
/// `mirror-host`: the copies' `Host`.
pub const HOST: &str = "nginx.ingress.kubernetes.io/mirror-host";

const KEYS: [&str; 3] = [TARGET, REQUEST_BODY, HOST];

/// The variables a target may use, for messages.
const VARIABLES: &str = "$request_uri, $escaped_request_uri, $host, $http_host, $scheme, \
                         $remote_addr, $request_method and request headers as $http_<name>";

/// Why a variable before the path is refused.
const LITERAL_HOST: &str = "variables are not allowed in the scheme, host or port: the host \
                            must be literal, so that a request cannot choose where its copies \
                            go (variables may follow in the path or query, for example \
                            \"https://test.env.com$request_uri\")";

/// A character a target may hold: letters, digits, `-._~/:?&=()*+`, `[]` (around an IPv6
/// host), and `$`, `{`, `}` (variables). All are admitted by ingress-nginx's
/// `ValidateServerName` too.
fn is_target_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || "-._~/:?&=()*+[]${}".contains(c)
}

/// `text` for messages: control characters (and `\`) escaped, the rest as written.
fn printable(text: &str) -> String {
    text.chars()
        .map(|c| {
            if c.is_control() || c == '\\' {
                c.escape_debug().to_string()
            } else {
                c.to_string()
            }
        })
        .collect()
}

/// "`a`, `b`": distinct characters, for messages.
fn shown(chars: &[char]) -> String {
    let shown: Vec<String> = chars
        .iter()
        .map(|c| format!("`{}`", printable(c.encode_utf8(&mut [0; 4]))))
        .collect();
    shown.join(", ")
}

/// The distinct characters of `v` that `ok` refuses, in order.
fn refused_chars(v: &str, ok: impl Fn(char) -> bool) -> Vec<char> {
    let mut refused: Vec<char> = Vec::new();
    for c in v.chars() {
        if !ok(c) && !refused.contains(&c) {
            refused.push(c);
        }
    }
    refused
}

/// What a host looks like, for messages.
const HOST_SHAPE: &str = "a host is an IPv4 address, an IPv6 address in brackets, or letters, \
                          digits and `-` in labels separated by dots";

/// Check a host name or address with an optional port (`name`, `name:port`, `1.2.3.4:80`,
/// `[::1]:8080`). `Err` completes "the host ...".
fn check_authority(authority: &str) -> Result<(), String> {
    let (host, port) = if let Some(bracketed) = authority.strip_prefix('[') {
        let Some((inside, after)) = bracketed.split_once(']') else {
            return Err(format!("`{authority}` has an unclosed `[`"));
        };
        if inside.parse::<Ipv6Addr>().is_err() {
            return Err(format!(
                "`{authority}` has `[{inside}]`, which is not an IPv6 address"
            ));
        }
        match after {
            "" => (None, None),
            _ => match after.strip_prefix(':') {
                Some(port) => (None, Some(port)),
                None => {
                    return Err(format!(
                        "`{authority}` has `{after}` after the IPv6 address, where only \
                         `:port` may follow"
                    ));
                }
            },
        }
    } else if authority.parse::<Ipv6Addr>().is_ok() {
        return Err(format!(
            "`{authority}` is an IPv6 address without brackets: write `[{authority}]`"
        ));
    } else {
        match authority.split_once(':') {
            Some((host, port)) => (Some(host), Some(port)),
            None => (Some(authority), None),
        }
    };
    if let Some(host) = host {
        check_host_name(host).map_err(|why| format!("`{authority}` {why}"))?;
    }
    if let Some(port) = port {
        let why = if port.is_empty() {
            Some("has an empty port".to_string())
        } else if !port.bytes().all(|b| b.is_ascii_digit()) {
            Some(format!("has port `{port}`, which is not a number"))
        } else if !matches!(port.parse::<u16>(), Ok(1..)) {
            Some(format!("has port `{port}`, out of range (1 to 65535)"))
        } else {
            None
        };
        if let Some(why) = why {
            return Err(format!("`{authority}` {why}"));
        }
    }
    Ok(())
}

/// Check a DNS name or IPv4 address (without port): labels of letters, digits and `-` (not at a
/// label's ends) separated by single dots, an optional trailing dot; a name whose last label is
/// all digits must be an IPv4 address. `Err` completes "`host` ...".
fn check_host_name(host: &str) -> Result<(), String> {
    if host.is_empty() {
        return Err("has no host name".to_string());
    }
    let name = host.strip_suffix('.').unwrap_or(host);
    let refused = refused_chars(name, |c| c.is_ascii_alphanumeric() || c == '-' || c == '.');
    let why = if !refused.is_empty() {
        format!("contains {}", shown(&refused))
    } else if name.len() > 253 {
        "is longer than 253 characters".to_string()
    } else if name.split('.').any(str::is_empty) {
        "has an empty label".to_string()
    } else if name
        .split('.')
        .any(|l| l.starts_with('-') || l.ends_with('-'))
    {
        "has a label that starts or ends with `-`".to_string()
    } else if name.split('.').any(|l| l.len() > 63) {
        "has a label longer than 63 characters".to_string()
    } else if name
        .rsplit('.')
        .next()
        .is_some_and(|l| l.bytes().all(|b| b.is_ascii_digit()))
        && name.parse::<Ipv4Addr>().is_err()
    {
        format!("has `{name}`, which is not an IPv4 address (no host name ends in a number)")
    } else {
        return Ok(());
    };
    Err(format!("{why}: {HOST_SHAPE}"))
}

/// True when the template keeps the request's URI (its path and query).
fn keeps_request_uri(parts: &[TemplatePart]) -> bool {
    parts.iter().any(|p| {
        matches!(
            p,
            TemplatePart::Variable(
                RequestVariable::RequestUri | RequestVariable::EscapedRequestUri
            )
        )
    })
}

/// Parse `mirror-target`: an absolute http(s) URL with a literal host (and port), variables
/// allowed after it.
pub fn parse_target(value: &str) -> Result<Vec<TemplatePart>, String> {
    let v = value.trim();
    if v.is_empty() {
        return Err("is empty: write the URL copies go to, for example \
             \"https://test.env.com$request_uri\"; remove the annotation to mirror nothing"
            .to_string());
    }
    let refused = refused_chars(v, is_target_char);
    if !refused.is_empty() {
        let mut hints = String::new();
        if refused.contains(&'@') {
            hints.push_str(" (no userinfo: copies carry no credentials in the URL)");
        }
        if refused.contains(&'#') {
            hints.push_str(" (no fragment: it is never sent)");
        }
        if refused.contains(&'%') {
            hints.push_str(" (ingress-nginx refuses `%` too: percent-encoding cannot be written)");
        }
        return Err(format!(
            "`{}` contains {}: a mirror target is letters, digits, `-._~/:?&=()*+`, `[` `]` \
             around an IPv6 host and $ variables{hints}",
            printable(v),
            shown(&refused)
        ));
    }
    let Some(rest) = v
        .strip_prefix("https://")
        .or_else(|| v.strip_prefix("http://"))
    else {
        if v.starts_with('$') {
            return Err(format!("`{v}`: {LITERAL_HOST}"));
        }
        let lower = v.to_ascii_lowercase();
        let hint = if lower.starts_with("http://") || lower.starts_with("https://") {
            " (write the scheme in lower case)"
        } else {
            ""
        };
        return Err(format!(
            "`{v}` is not an absolute http:// or https:// URL{hint}"
        ));
    };
    let end = rest.find(['/', '?', '$']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(end);
    if let Some(variable) = tail.strip_prefix('$') {
        // `$request_uri` starts with `/`: it cannot extend the host. Anything else could.
        let request_uri = variable.starts_with("{request_uri}")
            || variable.strip_prefix("request_uri").is_some_and(|after| {
                !after.starts_with(|c: char| c.is_ascii_alphanumeric() || c == '_')
            });
        if authority.is_empty() || !request_uri {
            return Err(format!("`{v}`: {LITERAL_HOST}"));
        }
    }
    if authority.is_empty() {
        return Err(format!("`{v}` has no host"));
    }
    check_authority(authority).map_err(|why| format!("`{v}`: the host {why}"))?;
    if tail.contains(['[', ']']) {
        return Err(format!(
            "`{v}`: `[` and `]` are only allowed around an IPv6 host"
        ));
    }
    let parts = parse_with_headers(v).map_err(|e| match e {
        TemplateError::UnknownVariable(name) => {
            format!("`{v}`: variable `${name}` is not supported (only {VARIABLES} are)")
        }
        TemplateError::BadDollar => {
            format!("`{v}`: `$` must start a variable name, `$name` or `${{name}}` ({VARIABLES})")
        }
    })?;
    let braces = parts
        .iter()
        .any(|p| matches!(p, TemplatePart::Literal(l) if l.contains(['{', '}'])));
    if braces {
        return Err(format!(
            "`{v}`: braces are only allowed in a variable, `${{name}}`"
        ));
    }
    Ok(parts)
}

/// Parse `mirror-request-body`: `on` (true) or `off` (false).
pub fn parse_request_body(value: &str) -> Result<bool, String> {
    let v = value.trim();
    match v {
        "on" => return Ok(true),
        "off" => return Ok(false),
        _ => {}
    }
    if v.is_empty() {
        return Err(
            "is empty: valid values are `on` or `off`; remove the annotation for the default \
             (on)"
                .to_string(),
        );
    }
    let hint = if v.eq_ignore_ascii_case("on") || v.eq_ignore_ascii_case("off") {
        format!(
            " (did you mean `{}`? values are case-sensitive)",
            v.to_ascii_lowercase()
        )
    } else {
        match parse_bool(v) {
            Some(true) => " (did you mean `on`? booleans are not accepted here)".to_string(),
            Some(false) => " (did you mean `off`? booleans are not accepted here)".to_string(),
            None => String::new(),
        }
    };
    Err(format!("`{}` is not `on` or `off`{hint}", printable(v)))
}

/// Parse `mirror-host`: a host name or address with an optional port, kept as written.
pub fn parse_host(value: &str) -> Result<String, String> {
    let v = value.trim();
    if v.is_empty() {
        return Err(
            "is empty: write the Host copies carry, for example \"test.env.com\"; remove the \
             annotation for the target's host"
                .to_string(),
        );
    }
    if v.contains('/') {
        return Err(format!(
            "`{}` is not a host: write only a host name, optionally with a port, for example \
             \"test.env.com\" or \"test.env.com:8080\"",
            printable(v)
        ));
    }
    let refused = refused_chars(v, |c| c.is_ascii_alphanumeric() || "-.:[]".contains(c));
    if !refused.is_empty() {
        return Err(format!(
            "`{}` contains {}: {HOST_SHAPE}, optionally with `:port`",
            printable(v),
            shown(&refused)
        ));
    }
    check_authority(v)?;
    Ok(v.to_string())
}

/// A setting parsed by `parse`: `None` when absent, `Some(Err(()))` (with the error recorded)
/// when refused.
fn setting<T>(
    diags: &mut Diagnostics,
    settings: &Settings,
    key: &str,
    parse: impl Fn(&str) -> Result<T, String>,
) -> Option<Result<T, ()>> {
    let value = settings.get(key)?;
    Some(parse(value).map_err(|why| diags.error(key, why)))
}

/// Turn the owned settings into a policy: one [`Directive::Mirror`] with a valid
/// `mirror-target`, else nothing.
pub fn policy(settings: &Settings) -> Result<Policy, Vec<Diagnostic>> {
    let mut diags = Diagnostics::default();
    let mut policy = Policy::default();

    // Every key is checked whatever the others say, so that every problem shows at once.
    let target = setting(&mut diags, settings, TARGET, parse_target);
    let body = setting(&mut diags, settings, REQUEST_BODY, parse_request_body);
    let host = setting(&mut diags, settings, HOST, parse_host);

    match target {
        None => {
            let valid = [
                (REQUEST_BODY, matches!(body, Some(Ok(_)))),
                (HOST, matches!(host, Some(Ok(_)))),
            ];
            for (key, _) in valid.iter().filter(|(_, valid)| *valid) {
                diags.warning(
                    key,
                    format!("has no effect without {TARGET} (nothing is mirrored); it is ignored"),
                );
            }
        }
        // Already reported.
        Some(Err(())) => {}
        Some(Ok(target)) => {
            if !keeps_request_uri(&target) {
                diags.info(
                    TARGET,
                    "keeps nothing of the request's URI: every copy goes to this same path and \
                     query; end the target in $request_uri to keep the request's, as \
                     ingress-nginx's documentation does",
                );
            }
            policy.push(Directive::Mirror(Mirror {
                target,
                host: host.and_then(Result::ok),
                body: body.and_then(Result::ok).unwrap_or(true),
            }));
        }
    }
    diags.finish(policy)
}

struct MirrorPlugin;

impl Plugin for MirrorPlugin {
    type Config = ();

    fn info() -> Info {
        info("mirror", env!("CARGO_PKG_VERSION"), &KEYS, &[], &[])
    }

    fn configure(settings: &Settings) -> Result<(Policy, ()), Vec<Diagnostic>> {
        policy(settings).map(|p| (p, ()))
    }
}

export_plugin!(MirrorPlugin);

#[cfg(test)]
mod tests {
    use super::*;
    use wasmgress_plugin_sdk::Severity;

    fn lit(s: &str) -> TemplatePart {
        TemplatePart::Literal(s.to_string())
    }

    fn var(v: RequestVariable) -> TemplatePart {
        TemplatePart::Variable(v)
    }

    /// The mirror of valid settings, with the notes.
    fn mirrored(pairs: &[(&str, &str)]) -> (Mirror, Vec<Diagnostic>) {
        let p = policy(&Settings::from_pairs(pairs)).expect("valid");
        assert!(p.hooks.is_empty(), "no Wasm call per request");
        match p.directives.as_slice() {
            [Directive::Mirror(m)] => (m.clone(), p.notes),
            other => panic!("expected exactly one mirror directive, got {other:?}"),
        }
    }

    /// The mirror of valid settings, checked to carry no notes.
    fn quiet(pairs: &[(&str, &str)]) -> Mirror {
        let (m, notes) = mirrored(pairs);
        assert!(notes.is_empty(), "{notes:?}");
        m
    }

    /// The mirror of `target` alone, checked to carry no notes.
    fn target(value: &str) -> Vec<TemplatePart> {
        quiet(&[(TARGET, value)]).target
    }

    /// The errors of refused settings.
    fn errors(pairs: &[(&str, &str)]) -> Vec<Diagnostic> {
        let e = policy(&Settings::from_pairs(pairs)).expect_err("refused");
        assert!(e.iter().any(|d| d.severity == Severity::Error), "{e:?}");
        e.into_iter()
            .filter(|d| d.severity == Severity::Error)
            .collect()
    }

    /// The one error `value` of `key` gets (next to a valid target); checked to name the key.
    fn refused(key: &str, value: &str) -> String {
        let mut pairs = alloc::vec![(key, value)];
        if key != TARGET {
            pairs.push((TARGET, "https://test.env.com$request_uri"));
        }
        let e = errors(&pairs);
        assert_eq!(e.len(), 1, "{key}={value:?}: {e:?}");
        assert_eq!(e[0].key, key);
        e[0].message.clone()
    }

    fn warned(notes: &[Diagnostic], key: &str, words: &str) -> bool {
        notes
            .iter()
            .any(|d| d.severity == Severity::Warning && d.key == key && d.message.contains(words))
    }

    #[test]
    fn owns_the_three_keys_without_hooks() {
        let i = <MirrorPlugin as Plugin>::info();
        assert_eq!(i.name, "mirror");
        assert_eq!(i.keys, KEYS);
        for k in ["mirror-target", "mirror-request-body", "mirror-host"] {
            let key = format!("nginx.ingress.kubernetes.io/{k}");
            assert!(i.keys.contains(&key), "{key}");
        }
        assert!(i.prefixes.is_empty());
        assert!(i.hooks.is_empty(), "no Wasm call per request");
        assert!(i.metrics.is_empty());
    }

    #[test]
    fn absent_is_an_empty_policy() {
        assert_eq!(
            policy(&Settings::from_pairs(&[])).expect("valid"),
            Policy::default()
        );
        let other = [("nginx.ingress.kubernetes.io/affinity", "cookie")];
        assert_eq!(
            policy(&Settings::from_pairs(&other)).expect("valid"),
            Policy::default()
        );
    }

    #[test]
    fn documented_examples() {
        // ingress-nginx's annotations doc, "Mirror".
        let m = quiet(&[(TARGET, "https://test.env.com$request_uri")]);
        assert_eq!(
            m,
            Mirror {
                target: alloc::vec![
                    lit("https://test.env.com"),
                    var(RequestVariable::RequestUri)
                ],
                host: None,
                body: true,
            }
        );
        let m = quiet(&[
            (TARGET, "https://1.2.3.4$request_uri"),
            (HOST, "test.env.com"),
        ]);
        assert_eq!(m.host.as_deref(), Some("test.env.com"));
        assert_eq!(
            m.target,
            [lit("https://1.2.3.4"), var(RequestVariable::RequestUri)]
        );
        let m = quiet(&[
            (TARGET, "https://test.env.com$request_uri"),
            (REQUEST_BODY, "off"),
        ]);
        assert!(!m.body);
    }

    #[test]
    fn target_variables() {
        assert_eq!(
            target(" http://mirror.ns.svc:8080/copy${request_uri} "),
            [
                lit("http://mirror.ns.svc:8080/copy"),
                var(RequestVariable::RequestUri)
            ]
        );
        assert_eq!(
            target(concat!(
                "https://m.example.com/$request_method/$host/$http_host",
                "?s=$scheme&a=$remote_addr&u=$escaped_request_uri&e=$http_x_env"
            )),
            [
                lit("https://m.example.com/"),
                var(RequestVariable::RequestMethod),
                lit("/"),
                var(RequestVariable::Host),
                lit("/"),
                var(RequestVariable::Authority),
                lit("?s="),
                var(RequestVariable::Scheme),
                lit("&a="),
                var(RequestVariable::RemoteAddr),
                lit("&u="),
                var(RequestVariable::EscapedRequestUri),
                lit("&e="),
                TemplatePart::Header("x-env".to_string()),
            ]
        );
        assert_eq!(
            target("https://m.example.com?u=$request_uri"),
            [
                lit("https://m.example.com?u="),
                var(RequestVariable::RequestUri)
            ]
        );
        for v in ["$cookie_x", "$args", "$uri", "$http_", "$request_id"] {
            let value = format!("https://m.example.com/x{v}");
            let m = refused(TARGET, &value);
            let name = v.trim_start_matches('$');
            assert!(
                m.contains(&format!("variable `${name}` is not supported")),
                "{v}: {m}"
            );
            assert!(m.contains("$http_<name>"), "{m}");
        }
        for v in ["https://m.example.com/$", "https://m.example.com/${host"] {
            let m = refused(TARGET, v);
            assert!(m.contains("`$` must start a variable name"), "{v}: {m}");
        }
    }

    #[test]
    fn target_hosts_must_be_literal() {
        for v in [
            "$scheme://m.example.com$request_uri",
            "${scheme}://m.example.com/",
            "http://$host/",
            "http://$http_host$request_uri",
            "https://${host}",
            "https://mirror-$host.example.com/",
            "https://m.example.com:$http_x_port/",
            "https://m.example.com$host/",
            "https://m.example.com$http_x_suffix/",
            "https://m.example.com$escaped_request_uri",
            "https://m.example.com$request_uri_x",
            "https://$request_uri",
        ] {
            let m = refused(TARGET, v);
            assert!(m.contains("the host must be literal"), "{v}: {m}");
        }
    }

    #[test]
    fn target_shapes() {
        for v in [
            "http://m",
            "https://m.example.com/",
            "https://m.example.com:8443/a/b.c?x=1&y=(2)*+~",
            "http://10.0.0.7:8080",
            "http://[::1]:8080/x",
            "http://[fd00::7]",
            "http://mirror.ns.svc.cluster.local./",
            "http://127.0.0.1/",
        ] {
            let (m, notes) = mirrored(&[(TARGET, v)]);
            assert_eq!(m.target, [lit(v)]);
            assert_eq!(notes.len(), 1, "{notes:?}");
            assert_eq!(notes[0].severity, Severity::Info);
            assert!(notes[0].message.contains("$request_uri"), "{notes:?}");
        }
        for (v, words) in [
            ("", "is empty"),
            ("   ", "is empty"),
            ("/copy", "not an absolute http:// or https:// URL"),
            ("test.env.com", "not an absolute http:// or https:// URL"),
            (
                "ftp://test.env.com/",
                "not an absolute http:// or https:// URL",
            ),
            ("//test.env.com/", "not an absolute http:// or https:// URL"),
            ("HTTPS://test.env.com/", "lower case"),
            ("https://", "has no host"),
            ("https:///x", "has no host"),
            ("https://?x", "has no host"),
            ("https://:80/", "has no host name"),
            ("https://a_b.example.com/", "contains `_`"),
            ("https://a..b/", "empty label"),
            ("https://-a.example.com/", "starts or ends with `-`"),
            ("https://m.example.com:/", "empty port"),
            ("https://m.example.com:0/", "out of range"),
            ("https://m.example.com:65536/", "out of range"),
            ("https://m.example.com:http/", "not a number"),
            ("https://m.example.com:80:80/", "not a number"),
            ("https://999.1.1.1/", "not an IPv4 address"),
            ("https://1.2.3/", "not an IPv4 address"),
            ("https://[::g]/", "not an IPv6 address"),
            ("https://fd00::7/", "without brackets"),
            ("https://[::1/", "unclosed `[`"),
            ("https://[::1]x/", "only `:port` may follow"),
            (
                "https://m.example.com/[x]",
                "only allowed around an IPv6 host",
            ),
            ("https://m.example.com/{x}", "braces are only allowed"),
        ] {
            let m = refused(TARGET, v);
            assert!(m.contains(words), "{v:?}: {m}");
        }
        let long = "a".repeat(64);
        let m = refused(TARGET, &format!("https://{long}.example.com/"));
        assert!(m.contains("longer than 63"), "{m}");
    }

    #[test]
    fn target_characters_ingress_nginx_refuses_are_refused() {
        for (v, words) in [
            ("https://user:pw@m.example.com/", "no userinfo"),
            ("https://m.example.com/#frag", "no fragment"),
            ("https://m.example.com/a%20b", "percent-encoding"),
            ("https://m.example.com/a,b", "`,`"),
            ("https://m.example.com/a;b", "`;`"),
            ("https://m.example.com/a!b", "`!`"),
            ("https://m.example.com/a'b", "`'`"),
            ("https://m.example.com/a b", "` `"),
            ("https://m.example.com/\r\nx: y", "`\\r`, `\\n`"),
            ("https://m.example.com/é", "`é`"),
            // Admitted by ingress-nginx (regular-expression characters), not URL characters.
            ("https://m.example.com/a^b", "`^`"),
            ("https://m.example.com/a|b", "`|`"),
            ("https://m.example.com/a\\b", "`\\\\`"),
        ] {
            let m = refused(TARGET, v);
            assert!(
                m.contains(&format!("contains {words}")) || m.contains(words),
                "{v:?}: {m}"
            );
            assert!(m.contains("a mirror target is"), "{v:?}: {m}");
        }
    }

    #[test]
    fn request_body_is_on_or_off() {
        let t = (TARGET, "https://test.env.com$request_uri");
        assert!(quiet(&[t]).body, "on by default");
        assert!(quiet(&[t, (REQUEST_BODY, "on")]).body);
        assert!(!quiet(&[t, (REQUEST_BODY, " off ")]).body);
        for (v, words) in [
            ("On", "did you mean `on`? values are case-sensitive"),
            ("OFF", "did you mean `off`? values are case-sensitive"),
            ("true", "did you mean `on`? booleans"),
            ("0", "did you mean `off`? booleans"),
            ("maybe", "`maybe` is not `on` or `off`"),
            ("", "is empty"),
        ] {
            let m = refused(REQUEST_BODY, v);
            assert!(m.contains(words), "{v:?}: {m}");
        }
    }

    #[test]
    fn mirror_hosts() {
        let t = (TARGET, "https://1.2.3.4$request_uri");
        for v in [
            "test.env.com",
            "test.env.com:8080",
            "TEST.env.com",
            "localhost",
            "10.1.2.3",
            "10.1.2.3:80",
            "[2001:db8::1]",
            "[2001:db8::1]:443",
            "svc.ns.svc.cluster.local.",
        ] {
            assert_eq!(quiet(&[t, (HOST, v)]).host.as_deref(), Some(v));
        }
        assert_eq!(
            quiet(&[t, (HOST, " test.env.com ")]).host.as_deref(),
            Some("test.env.com")
        );
        for (v, words) in [
            ("", "is empty"),
            ("https://test.env.com", "not a host"),
            ("test.env.com/x", "not a host"),
            ("*.env.com", "contains `*`"),
            ("~^www\\d+\\.example\\.com$", "contains"),
            ("test env.com", "contains ` `"),
            ("a_b.com", "contains `_`"),
            ("test.env.com\r\nX-Evil: 1", "contains `\\r`"),
            ("test..com", "empty label"),
            ("-test.com", "starts or ends with `-`"),
            ("test.com:", "empty port"),
            ("test.com:99999", "out of range"),
            ("2001:db8::1", "without brackets: write `[2001:db8::1]`"),
            ("[2001:db8::zz]", "not an IPv6 address"),
            ("300.1.1.1", "not an IPv4 address"),
        ] {
            let m = refused(HOST, v);
            assert!(m.contains(words), "{v:?}: {m}");
        }
    }

    #[test]
    fn without_a_target_the_other_keys_are_inert() {
        let p = policy(&Settings::from_pairs(&[
            (REQUEST_BODY, "off"),
            (HOST, "test.env.com"),
        ]))
        .expect("accepted");
        assert!(p.directives.is_empty(), "{:?}", p.directives);
        assert!(p.hooks.is_empty());
        assert_eq!(p.notes.len(), 2, "{:?}", p.notes);
        for k in [REQUEST_BODY, HOST] {
            assert!(
                warned(
                    &p.notes,
                    k,
                    "has no effect without nginx.ingress.kubernetes.io/mirror-target"
                ),
                "{k}: {:?}",
                p.notes
            );
        }
        // Invalid values are refused even where they have no effect; valid ones still warn.
        let e = policy(&Settings::from_pairs(&[(REQUEST_BODY, "yes"), (HOST, "h")]))
            .expect_err("refused");
        assert_eq!(e.len(), 2, "{e:?}");
        assert!(
            e.iter()
                .any(|d| d.severity == Severity::Error && d.key == REQUEST_BODY)
        );
        assert!(warned(&e, HOST, "has no effect"), "{e:?}");
    }

    #[test]
    fn a_bad_target_reports_the_others_problems_without_no_effect_warnings() {
        let e = policy(&Settings::from_pairs(&[
            (TARGET, "http://$host/"),
            (REQUEST_BODY, "off"),
            (HOST, "a b"),
        ]))
        .expect_err("refused");
        assert_eq!(e.len(), 2, "{e:?}");
        assert!(e.iter().all(|d| d.severity == Severity::Error), "{e:?}");
        assert_eq!(e[0].key, TARGET);
        assert_eq!(e[1].key, HOST);
    }

    #[test]
    fn every_problem_in_one_pass() {
        let e = errors(&[
            (TARGET, "ftp://x"),
            (REQUEST_BODY, "true"),
            (HOST, "*.example.com"),
        ]);
        assert_eq!(e.len(), KEYS.len(), "{e:?}");
        for k in KEYS {
            assert_eq!(e.iter().filter(|d| d.key == k).count(), 1, "{k}: {e:?}");
        }
    }

    #[test]
    fn parse_functions_match_policy() {
        assert_eq!(parse_request_body("on"), Ok(true));
        assert_eq!(parse_host("h:1"), Ok("h:1".to_string()));
        assert_eq!(
            parse_target("https://h$request_uri"),
            Ok(alloc::vec![
                lit("https://h"),
                var(RequestVariable::RequestUri)
            ])
        );
    }
}
