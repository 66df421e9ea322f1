//! Built-in plugin `affinity`: ingress-nginx's cookie session affinity, the `affinity`,
//! `affinity-mode`, `affinity-canary-behavior` and `session-cookie-*` annotations (`name`,
//! `path`, `domain`, `max-age`, `expires`, `secure`, `samesite`,
//! `conditional-samesite-none`, `change-on-failure`).
//!
//! Owns only these keys and only parses them, into at most one [`Directive::Affinity`]; the
//! host executes affinity natively, so a sticky route costs no Wasm call per request:
//!
//! - `balanced` (the default mode): the cookie holds a random key placed on a consistent-hash
//!   ring of the backend's endpoints, the same on every replica; adding endpoints moves a
//!   bounded share of clients, and a client whose endpoint leaves moves with its key to the
//!   ring's next one (ingress-nginx's `sticky_balanced`).
//! - `persistent`: the cookie names the endpoint by a keyed hash, never its address; clients
//!   stay on their endpoint until it leaves, whatever the scaling (`sticky_persistent`).
//!
//! A client without a usable cookie (none, or one whose endpoint has left) gets an endpoint
//! from the route's balancer and a `Set-Cookie`, `HttpOnly`, with the configured attributes.
//! The directive replaces the route's `load-balance` and `upstream-hash-by` for sticky
//! clients; the host settles that, as it settles the canary side
//! (`affinity-canary-behavior`).
//!
//! # Keys
//!
//! - `affinity`: the only type is `cookie` (ingress-nginx: "The only affinity type available
//!   for NGINX is cookie"); anything else is refused. Absent, the other keys are inert: each
//!   present one gets a warning that it has no effect, and the policy is empty.
//! - `affinity-mode`: `balanced` (default) or `persistent`.
//! - `affinity-canary-behavior`: `sticky` (default: a client stuck to the main backend is not
//!   sent to the canary) or `legacy` (the canary rule decides as for anyone).
//! - `session-cookie-name`: an RFC 6265 cookie name (a token), default `INGRESSCOOKIE`.
//! - `session-cookie-path`: starts with `/`; visible ASCII without `;` or `,` (it goes into the
//!   `Set-Cookie` value as is). Default: the route's Ingress path. ingress-nginx requires it
//!   when the Ingress's paths are regular expressions (`use-regex: "true"`, or
//!   `rewrite-target`, which implies it), since a cookie path is a literal prefix; this plugin
//!   only sees its own keys, so that check is the host's. A path that looks like a regular
//!   expression gets a warning.
//! - `session-cookie-domain`: a domain name (letters, digits and `-` in dot-separated labels,
//!   an optional leading `.`), as written.
//! - `session-cookie-max-age`, `session-cookie-expires`: whole seconds, 0 or more
//!   (`Max-Age`, and `Expires` as that many seconds after the cookie is set). ingress-nginx's
//!   check lets negative numbers through; they are refused here. A cookie that expires at once
//!   (0) gets a warning: it sticks no one.
//! - `session-cookie-secure`: Go `ParseBool` values; absent, the cookie is `Secure` when the
//!   request came over HTTPS.
//! - `session-cookie-samesite`: `None`, `Lax` or `Strict`, any case (ingress-nginx passes the
//!   value through; anything else is refused here). `None` with `session-cookie-secure:
//!   "false"` gets a warning: browsers drop such cookies.
//! - `session-cookie-conditional-samesite-none`: Go `ParseBool`, default false: leave
//!   `SameSite=None` out for the user agents ingress-nginx knows to mishandle it. Without
//!   `session-cookie-samesite: None` it has no effect (a warning).
//! - `session-cookie-change-on-failure`: Go `ParseBool`, default false: after a failed attempt
//!   the client gets a new endpoint and cookie instead of keeping its own.
//!
//! The options are matched after trimming surrounding whitespace, case-sensitively except
//! `session-cookie-samesite`, as ingress-nginx's validators do. Where ingress-nginx silently
//! falls back to a default on a bad value, this plugin reports an error instead; invalid
//! values are refused even where they would have no effect, and every problem of every key is
//! reported in the same pass.
#![cfg_attr(target_arch = "wasm32", no_std)]

extern crate alloc;

use alloc::format;
use alloc::string::{String, ToString};
use alloc::vec::Vec;
use wasmgress_plugin_sdk::validate::is_header_name;
use wasmgress_plugin_sdk::{
    Affinity, AffinityMode, Diagnostic, Diagnostics, Directive, Info, Plugin, Policy, SameSite,
    Settings, export_plugin, info, parse_bool,
};

/// `affinity`: the affinity type; only `cookie`.
pub const AFFINITY: &str = "nginx.ingress.kubernetes.io/affinity";
/// `affinity-mode`: `balanced` or `persistent`.
pub const MODE: &str = "nginx.ingress.kubernetes.io/affinity-mode";
/// `affinity-canary-behavior`: `sticky` or `legacy`.
pub const CANARY_BEHAVIOR: &str = "nginx.ingress.kubernetes.io/affinity-canary-behavior";
/// `session-cookie-name`
pub const NAME: &str = "nginx.ingress.kubernetes.io/session-cookie-name";
/// `session-cookie-path`
pub const PATH: &str = "nginx.ingress.kubernetes.io/session-cookie-path";
/// `session-cookie-domain`
pub const DOMAIN: &str = "nginx.ingress.kubernetes.io/session-cookie-domain";
/// `session-cookie-max-age`
pub const MAX_AGE: &str = "nginx.ingress.kubernetes.io/session-cookie-max-age";
/// `session-cookie-expires`
pub const EXPIRES: &str = "nginx.ingress.kubernetes.io/session-cookie-expires";
/// `session-cookie-secure`
pub const SECURE: &str = "nginx.ingress.kubernetes.io/session-cookie-secure";
/// `session-cookie-samesite`
pub const SAME_SITE: &str = "nginx.ingress.kubernetes.io/session-cookie-samesite";
/// `session-cookie-conditional-samesite-none`
pub const CONDITIONAL_SAME_SITE_NONE: &str =
    "nginx.ingress.kubernetes.io/session-cookie-conditional-samesite-none";
/// `session-cookie-change-on-failure`
pub const CHANGE_ON_FAILURE: &str = "nginx.ingress.kubernetes.io/session-cookie-change-on-failure";

const KEYS: [&str; 12] = [
    AFFINITY,
    MODE,
    CANARY_BEHAVIOR,
    NAME,
    PATH,
    DOMAIN,
    MAX_AGE,
    EXPIRES,
    SECURE,
    SAME_SITE,
    CONDITIONAL_SAME_SITE_NONE,
    CHANGE_ON_FAILURE,
];

/// ingress-nginx's default cookie name.
pub const DEFAULT_NAME: &str = "INGRESSCOOKIE";

/// The one affinity type.
const COOKIE: &str = "cookie";

const MODES: [(&str, AffinityMode); 2] = [
    ("balanced", AffinityMode::Balanced),
    ("persistent", AffinityMode::Persistent),
];

/// `affinity-canary-behavior` values: whether the canary respects affinity.
const CANARY_BEHAVIORS: [(&str, bool); 2] = [("sticky", true), ("legacy", false)];

const SAME_SITES: [(&str, SameSite); 3] = [
    ("None", SameSite::None),
    ("Lax", SameSite::Lax),
    ("Strict", SameSite::Strict),
];

/// "`a` or `b`", "`a`, `b` or `c`": for messages.
fn listed<T>(options: &[(&str, T)]) -> String {
    let names: Vec<String> = options.iter().map(|(n, _)| format!("`{n}`")).collect();
    match names.split_last() {
        Some((last, [])) => last.clone(),
        Some((last, rest)) => format!("{} or {last}", rest.join(", ")),
        None => String::new(),
    }
}

/// One of `options`, matched exactly after trimming (as ingress-nginx's case-sensitive
/// `ValidateOptions`); `what` names the setting in messages, `default` the option taken when
/// the annotation is absent.
fn choice<T: Copy>(
    value: &str,
    options: &[(&str, T)],
    what: &str,
    default: &str,
) -> Result<T, String> {
    let v = value.trim();
    if let Some((_, t)) = options.iter().find(|(n, _)| *n == v) {
        return Ok(*t);
    }
    let valid = listed(options);
    if v.is_empty() {
        return Err(format!(
            "is empty: valid values are {valid}; remove the annotation for the default \
             ({default})"
        ));
    }
    let hint = match options.iter().find(|(n, _)| n.eq_ignore_ascii_case(v)) {
        Some((n, _)) => format!(" (did you mean `{n}`? values are case-sensitive)"),
        None => String::new(),
    };
    Err(format!(
        "`{v}` is not {what}{hint}; valid values are {valid}"
    ))
}

/// Check an `affinity` value: only `cookie` is a type.
pub fn parse_type(value: &str) -> Result<(), String> {
    let v = value.trim();
    if v == COOKIE {
        return Ok(());
    }
    if v.is_empty() {
        return Err(format!(
            "is empty: the only affinity type is `{COOKIE}`; remove the annotation to turn \
             session affinity off"
        ));
    }
    let hint = if v.eq_ignore_ascii_case(COOKIE) {
        format!(" (did you mean `{COOKIE}`? the value is case-sensitive)")
    } else {
        String::new()
    };
    Err(format!(
        "`{v}` is not an affinity type{hint}: the only one is `{COOKIE}`"
    ))
}

/// Parse `affinity-mode`.
pub fn parse_mode(value: &str) -> Result<AffinityMode, String> {
    choice(value, &MODES, "an affinity mode", "balanced")
}

/// Parse `affinity-canary-behavior`: whether the canary respects affinity (`sticky`).
pub fn parse_canary_behavior(value: &str) -> Result<bool, String> {
    choice(value, &CANARY_BEHAVIORS, "a canary behavior", "sticky")
}

/// Parse `session-cookie-samesite`, in any case.
pub fn parse_same_site(value: &str) -> Result<SameSite, String> {
    let v = value.trim();
    if let Some((_, s)) = SAME_SITES.iter().find(|(n, _)| n.eq_ignore_ascii_case(v)) {
        return Ok(*s);
    }
    let valid = listed(&SAME_SITES);
    if v.is_empty() {
        return Err(format!(
            "is empty: valid values are {valid}; remove the annotation to leave SameSite out"
        ));
    }
    Err(format!(
        "`{v}` is not a SameSite value; valid values are {valid}"
    ))
}

/// Parse `session-cookie-name`: an RFC 6265 cookie name (an RFC 9110 token).
pub fn parse_name(value: &str) -> Result<String, String> {
    let v = value.trim();
    if v.is_empty() {
        return Err(format!(
            "is empty: write a cookie name, or remove the annotation for the default \
             ({DEFAULT_NAME})"
        ));
    }
    if is_header_name(v) {
        Ok(v.to_string())
    } else {
        Err(format!(
            "`{}` is not a valid cookie name (a token: letters, digits and \
             !#$%&'*+-.^_`|~)",
            v.escape_debug()
        ))
    }
}

/// The characters that make a cookie path look like a regular expression.
const REGEX_CHARS: &[char] = &[
    '^', '$', '*', '+', '?', '(', ')', '[', ']', '{', '}', '|', '\\',
];

/// Parse `session-cookie-path`: starts with `/`, visible ASCII without `;` or `,` (no spaces
/// or control characters), so that it goes into a `Set-Cookie` value as is.
pub fn parse_path(value: &str) -> Result<String, String> {
    let v = value.trim();
    if v.is_empty() {
        return Err(
            "is empty: write the cookie's path, for example \"/\", or remove the annotation \
             for the route's Ingress path"
                .to_string(),
        );
    }
    let mut problems = Vec::new();
    if !v.starts_with('/') {
        problems.push("does not start with `/`".to_string());
    }
    let mut refused: Vec<char> = Vec::new();
    for c in v.chars() {
        let ok = c.is_ascii_graphic() && c != ';' && c != ',';
        if !ok && !refused.contains(&c) {
            refused.push(c);
        }
    }
    if !refused.is_empty() {
        let shown: Vec<String> = refused
            .iter()
            .map(|c| format!("`{}`", c.escape_debug()))
            .collect();
        problems.push(format!(
            "contains {}: a cookie path is visible ASCII without spaces, control characters, \
             `;` or `,`",
            shown.join(", ")
        ));
    }
    if problems.is_empty() {
        Ok(v.to_string())
    } else {
        Err(format!("`{}` {}", v.escape_debug(), problems.join(" and ")))
    }
}

/// Parse `session-cookie-domain`: a domain name, labels of letters, digits and `-` (not at a
/// label's ends) separated by single dots, with an optional leading dot; kept as written.
pub fn parse_domain(value: &str) -> Result<String, String> {
    let v = value.trim();
    let shape = "a domain is letters, digits and `-` in labels separated by dots, with an \
                 optional leading dot, for example \"example.com\" or \".example.com\"";
    if v.is_empty() {
        return Err(format!(
            "is empty: {shape}; remove the annotation for a host-only cookie"
        ));
    }
    let name = v.strip_prefix('.').unwrap_or(v);
    let why = if name.len() > 253 {
        Some("is longer than 253 characters".to_string())
    } else if let Some(c) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || *c == '-' || *c == '.'))
    {
        Some(format!("contains `{}`", c.escape_debug()))
    } else if name.split('.').any(str::is_empty) {
        Some("has an empty label".to_string())
    } else if name
        .split('.')
        .any(|l| l.starts_with('-') || l.ends_with('-'))
    {
        Some("has a label that starts or ends with `-`".to_string())
    } else if name.split('.').any(|l| l.len() > 63) {
        Some("has a label longer than 63 characters".to_string())
    } else {
        None
    };
    match why {
        None => Ok(v.to_string()),
        Some(why) => Err(format!("`{}` {why}: {shape}", v.escape_debug())),
    }
}

/// Parse `session-cookie-max-age` or `session-cookie-expires`: whole seconds, 0 or more.
pub fn parse_seconds(value: &str) -> Result<u32, String> {
    let v = value.trim();
    let example = "for example \"172800\" (two days)";
    if v.is_empty() {
        return Err(format!("is empty: write a number of seconds, {example}"));
    }
    if let Some(rest) = v.strip_prefix('-')
        && !rest.is_empty()
        && rest.bytes().all(|b| b.is_ascii_digit())
    {
        return Err(format!(
            "`{v}` is negative: write a number of seconds, 0 or more, {example}"
        ));
    }
    if !v.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!(
            "`{}` is not a whole number of seconds, {example}",
            v.escape_debug()
        ));
    }
    v.parse::<u32>()
        .map_err(|_| format!("`{v}` is too large (at most {} seconds)", u32::MAX))
}

/// A boolean setting: `None` when absent, `Some(Err(()))` (with an error recorded) when it is
/// not one of Go `ParseBool`'s values.
fn bool_setting(
    diags: &mut Diagnostics,
    settings: &Settings,
    key: &str,
) -> Option<Result<bool, ()>> {
    let value = settings.get(key)?;
    Some(parse_bool(value).ok_or_else(|| {
        diags.error(
            key,
            format!(
                "`{}` is not a boolean (accepted: 1, t, T, TRUE, true, True, 0, f, F, FALSE, \
                 false, False)",
                value.escape_debug()
            ),
        );
    }))
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

/// The value of a setting that is present and valid.
fn ok<T>(setting: Option<Result<T, ()>>) -> Option<T> {
    setting.and_then(Result::ok)
}

/// Turn the owned settings into a policy: one [`Directive::Affinity`] with `affinity:
/// cookie`, else nothing.
pub fn policy(settings: &Settings) -> Result<Policy, Vec<Diagnostic>> {
    let mut diags = Diagnostics::default();
    let mut policy = Policy::default();

    // Every key is checked whatever the others say, so that every problem shows at once.
    let kind = setting(&mut diags, settings, AFFINITY, parse_type);
    let mode = setting(&mut diags, settings, MODE, parse_mode);
    let canary_sticky = setting(&mut diags, settings, CANARY_BEHAVIOR, parse_canary_behavior);
    let name = setting(&mut diags, settings, NAME, parse_name);
    let path = setting(&mut diags, settings, PATH, parse_path);
    let domain = setting(&mut diags, settings, DOMAIN, parse_domain);
    let max_age = setting(&mut diags, settings, MAX_AGE, parse_seconds);
    let expires = setting(&mut diags, settings, EXPIRES, parse_seconds);
    let secure = bool_setting(&mut diags, settings, SECURE);
    let same_site = setting(&mut diags, settings, SAME_SITE, parse_same_site);
    let conditional = bool_setting(&mut diags, settings, CONDITIONAL_SAME_SITE_NONE);
    let change_on_failure = bool_setting(&mut diags, settings, CHANGE_ON_FAILURE);

    match kind {
        None => {
            let valid = [
                (MODE, matches!(mode, Some(Ok(_)))),
                (CANARY_BEHAVIOR, matches!(canary_sticky, Some(Ok(_)))),
                (NAME, matches!(name, Some(Ok(_)))),
                (PATH, matches!(path, Some(Ok(_)))),
                (DOMAIN, matches!(domain, Some(Ok(_)))),
                (MAX_AGE, matches!(max_age, Some(Ok(_)))),
                (EXPIRES, matches!(expires, Some(Ok(_)))),
                (SECURE, matches!(secure, Some(Ok(_)))),
                (SAME_SITE, matches!(same_site, Some(Ok(_)))),
                (
                    CONDITIONAL_SAME_SITE_NONE,
                    matches!(conditional, Some(Ok(_))),
                ),
                (CHANGE_ON_FAILURE, matches!(change_on_failure, Some(Ok(_)))),
            ];
            for (key, _) in valid.iter().filter(|(_, valid)| *valid) {
                diags.warning(
                    key,
                    format!(
                        "has no effect without {AFFINITY}: \"{COOKIE}\" (session affinity is \
                         off); it is ignored"
                    ),
                );
            }
        }
        // Already reported.
        Some(Err(())) => {}
        Some(Ok(())) => {
            if let Some(Ok(path)) = &path
                && path.contains(REGEX_CHARS)
            {
                diags.warning(
                    PATH,
                    format!(
                        "`{path}` looks like a regular expression: a cookie path is a literal \
                         prefix (browsers send the cookie for paths under it), so write the \
                         literal part, for example \"/\""
                    ),
                );
            }
            let max_age = ok(max_age);
            let expires = ok(expires);
            if max_age == Some(0) {
                diags.warning(
                    MAX_AGE,
                    "0 makes browsers discard the cookie at once: no client stays on its \
                     endpoint",
                );
            } else if max_age.is_none() && expires == Some(0) {
                diags.warning(
                    EXPIRES,
                    "0 makes browsers discard the cookie at once: no client stays on its \
                     endpoint",
                );
            }
            let same_site_refused = matches!(same_site, Some(Err(())));
            let same_site = ok(same_site);
            let secure = ok(secure);
            let conditional = ok(conditional).unwrap_or(false);
            if same_site == Some(SameSite::None) && secure == Some(false) {
                diags.warning(
                    SECURE,
                    format!(
                        "\"false\" with {SAME_SITE}: \"None\": browsers reject SameSite=None \
                         cookies that are not Secure, so clients would not stick"
                    ),
                );
            }
            // A refused samesite is reported already.
            if conditional && same_site != Some(SameSite::None) && !same_site_refused {
                diags.warning(
                    CONDITIONAL_SAME_SITE_NONE,
                    format!("has no effect without {SAME_SITE}: \"None\""),
                );
            }
            policy.push(Directive::Affinity(Affinity {
                mode: ok(mode).unwrap_or(AffinityMode::Balanced),
                name: ok(name).unwrap_or_else(|| DEFAULT_NAME.to_string()),
                path: ok(path),
                domain: ok(domain),
                max_age,
                expires,
                secure,
                same_site,
                conditional_same_site_none: conditional,
                change_on_failure: ok(change_on_failure).unwrap_or(false),
                canary_sticky: ok(canary_sticky).unwrap_or(true),
            }));
        }
    }
    diags.finish(policy)
}

struct AffinityPlugin;

impl Plugin for AffinityPlugin {
    type Config = ();

    fn info() -> Info {
        info("affinity", env!("CARGO_PKG_VERSION"), &KEYS, &[], &[])
    }

    fn configure(settings: &Settings) -> Result<(Policy, ()), Vec<Diagnostic>> {
        policy(settings).map(|p| (p, ()))
    }
}

export_plugin!(AffinityPlugin);

#[cfg(test)]
mod tests {
    use super::*;
    use wasmgress_plugin_sdk::Severity;

    /// The affinity of valid settings (`affinity: cookie` added), with the notes.
    fn sticky(pairs: &[(&str, &str)]) -> (Affinity, Vec<Diagnostic>) {
        let mut all = alloc::vec![(AFFINITY, COOKIE)];
        all.extend_from_slice(pairs);
        let p = policy(&Settings::from_pairs(&all)).expect("valid");
        assert!(p.hooks.is_empty(), "no Wasm call per request");
        match p.directives.as_slice() {
            [Directive::Affinity(a)] => (a.clone(), p.notes),
            other => panic!("expected exactly one affinity directive, got {other:?}"),
        }
    }

    /// The affinity of valid settings, checked to carry no notes.
    fn quiet(pairs: &[(&str, &str)]) -> Affinity {
        let (a, notes) = sticky(pairs);
        assert!(notes.is_empty(), "{notes:?}");
        a
    }

    /// The errors of refused settings (as given: add `affinity` yourself).
    fn errors(pairs: &[(&str, &str)]) -> Vec<Diagnostic> {
        let e = policy(&Settings::from_pairs(pairs)).expect_err("refused");
        assert!(e.iter().any(|d| d.severity == Severity::Error), "{e:?}");
        e.into_iter()
            .filter(|d| d.severity == Severity::Error)
            .collect()
    }

    /// The one error `value` of `key` gets next to `affinity: cookie`; checked to name the key.
    fn refused(key: &str, value: &str) -> String {
        let e = errors(&[(AFFINITY, COOKIE), (key, value)]);
        assert_eq!(e.len(), 1, "{key}={value:?}: {e:?}");
        assert_eq!(e[0].key, key);
        e[0].message.clone()
    }

    fn warned(notes: &[Diagnostic], key: &str, words: &str) -> bool {
        notes
            .iter()
            .any(|d| d.severity == Severity::Warning && d.key == key && d.message.contains(words))
    }

    fn defaults() -> Affinity {
        Affinity {
            mode: AffinityMode::Balanced,
            name: DEFAULT_NAME.to_string(),
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

    /// A valid value of every key but `affinity`.
    const OTHERS: [(&str, &str); 11] = [
        (MODE, "persistent"),
        (CANARY_BEHAVIOR, "legacy"),
        (NAME, "route"),
        (PATH, "/app"),
        (DOMAIN, ".example.com"),
        (MAX_AGE, "3600"),
        (EXPIRES, "7200"),
        (SECURE, "true"),
        (SAME_SITE, "None"),
        (CONDITIONAL_SAME_SITE_NONE, "true"),
        (CHANGE_ON_FAILURE, "true"),
    ];

    #[test]
    fn owns_the_twelve_keys_without_hooks() {
        let i = <AffinityPlugin as Plugin>::info();
        assert_eq!(i.name, "affinity");
        assert_eq!(i.keys, KEYS);
        for k in [
            "affinity",
            "affinity-mode",
            "affinity-canary-behavior",
            "session-cookie-name",
            "session-cookie-path",
            "session-cookie-domain",
            "session-cookie-max-age",
            "session-cookie-expires",
            "session-cookie-secure",
            "session-cookie-samesite",
            "session-cookie-conditional-samesite-none",
            "session-cookie-change-on-failure",
        ] {
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
        // Someone else's keys do not count.
        let other = [("nginx.ingress.kubernetes.io/load-balance", "ewma")];
        assert_eq!(
            policy(&Settings::from_pairs(&other)).expect("valid"),
            Policy::default()
        );
    }

    #[test]
    fn cookie_alone_has_ingress_nginx_defaults() {
        assert_eq!(quiet(&[]), defaults());
        // Surrounding whitespace is trimmed, as ingress-nginx's validator does.
        let p = policy(&Settings::from_pairs(&[(AFFINITY, " cookie\n")])).expect("valid");
        assert_eq!(p.directives, [Directive::Affinity(defaults())]);
    }

    #[test]
    fn every_key_at_once() {
        let a = quiet(&OTHERS);
        assert_eq!(
            a,
            Affinity {
                mode: AffinityMode::Persistent,
                name: "route".to_string(),
                path: Some("/app".to_string()),
                domain: Some(".example.com".to_string()),
                max_age: Some(3600),
                expires: Some(7200),
                secure: Some(true),
                same_site: Some(SameSite::None),
                conditional_same_site_none: true,
                change_on_failure: true,
                canary_sticky: false,
            }
        );
    }

    #[test]
    fn documented_example() {
        // docs/examples/affinity/cookie: ingress.yaml's annotations.
        let a = quiet(&[
            (NAME, "INGRESSCOOKIE"),
            (EXPIRES, "172800"),
            (MAX_AGE, "172800"),
        ]);
        assert_eq!(a.name, "INGRESSCOOKIE");
        assert_eq!((a.expires, a.max_age), (Some(172800), Some(172800)));
    }

    #[test]
    fn only_cookie_is_a_type() {
        for (v, words) in [
            ("Cookie", "did you mean `cookie`?"),
            ("COOKIE", "did you mean `cookie`?"),
            ("ip", "`ip` is not an affinity type"),
            ("header", "`header` is not an affinity type"),
            ("", "is empty"),
            ("  ", "is empty"),
        ] {
            let e = errors(&[(AFFINITY, v)]);
            assert_eq!(e.len(), 1, "{v:?}: {e:?}");
            assert_eq!(e[0].key, AFFINITY);
            assert!(e[0].message.contains(words), "{}", e[0].message);
            assert!(e[0].message.contains("`cookie`"), "{}", e[0].message);
        }
        assert_eq!(parse_type("cookie"), Ok(()));
    }

    #[test]
    fn without_affinity_the_other_keys_are_inert() {
        let p = policy(&Settings::from_pairs(&OTHERS)).expect("accepted");
        assert!(p.directives.is_empty(), "{:?}", p.directives);
        assert!(p.hooks.is_empty());
        assert_eq!(
            p.notes.len(),
            OTHERS.len(),
            "one warning per key: {:?}",
            p.notes
        );
        for (k, _) in OTHERS {
            assert!(
                warned(
                    &p.notes,
                    k,
                    "has no effect without nginx.ingress.kubernetes.io/affinity: \"cookie\""
                ),
                "{k}: {:?}",
                p.notes
            );
        }
        // Invalid values are refused even where they have no effect; the valid ones still warn.
        let e =
            policy(&Settings::from_pairs(&[(MODE, "sticky"), (NAME, "x")])).expect_err("refused");
        assert_eq!(e.len(), 2, "{e:?}");
        assert!(
            e.iter()
                .any(|d| d.severity == Severity::Error && d.key == MODE)
        );
        assert!(warned(&e, NAME, "has no effect"), "{e:?}");
    }

    #[test]
    fn a_bad_type_reports_the_others_problems_without_no_effect_warnings() {
        let e = policy(&Settings::from_pairs(&[
            (AFFINITY, "ip"),
            (NAME, "ok"),
            (MAX_AGE, "-5"),
        ]))
        .expect_err("refused");
        assert_eq!(e.len(), 2, "{e:?}");
        assert!(e.iter().all(|d| d.severity == Severity::Error), "{e:?}");
        assert_eq!(e[0].key, AFFINITY);
        assert_eq!(e[1].key, MAX_AGE);
    }

    #[test]
    fn modes() {
        assert_eq!(quiet(&[(MODE, "balanced")]).mode, AffinityMode::Balanced);
        assert_eq!(
            quiet(&[(MODE, " persistent ")]).mode,
            AffinityMode::Persistent
        );
        for (v, words) in [
            ("Persistent", "did you mean `persistent`?"),
            ("sticky", "`sticky` is not an affinity mode"),
            ("", "is empty"),
        ] {
            let m = refused(MODE, v);
            assert!(m.contains(words), "{m}");
            assert!(m.contains("`balanced` or `persistent`"), "{m}");
        }
    }

    #[test]
    fn canary_behavior() {
        assert!(quiet(&[(CANARY_BEHAVIOR, "sticky")]).canary_sticky);
        assert!(!quiet(&[(CANARY_BEHAVIOR, "legacy")]).canary_sticky);
        assert!(!quiet(&[(CANARY_BEHAVIOR, "\tlegacy ")]).canary_sticky);
        for (v, words) in [
            ("Legacy", "did you mean `legacy`?"),
            ("strict", "`strict` is not a canary behavior"),
            ("", "is empty"),
        ] {
            let m = refused(CANARY_BEHAVIOR, v);
            assert!(m.contains(words), "{m}");
            assert!(m.contains("`sticky` or `legacy`"), "{m}");
        }
    }

    #[test]
    fn cookie_names_are_tokens() {
        for v in ["route", "SERVERID", "__Host-sticky", "a.b_c~d!#$%&'*+^`|"] {
            assert_eq!(quiet(&[(NAME, v)]).name, v);
        }
        assert_eq!(quiet(&[(NAME, " sid ")]).name, "sid");
        for v in [
            "my cookie",
            "a=b",
            "a;b",
            "a,b",
            "\"a\"",
            "a/b",
            "a:b",
            "é",
            "a\tb",
        ] {
            let m = refused(NAME, v);
            assert!(m.contains("not a valid cookie name"), "{v:?}: {m}");
        }
        let m = refused(NAME, "");
        assert!(m.contains("is empty") && m.contains(DEFAULT_NAME), "{m}");
    }

    #[test]
    fn cookie_paths() {
        for v in ["/", "/app", "/app/v1.0/", "/a-b_c~d%20e"] {
            assert_eq!(quiet(&[(PATH, v)]).path.as_deref(), Some(v));
        }
        assert_eq!(quiet(&[(PATH, " /x ")]).path.as_deref(), Some("/x"));
        let m = refused(PATH, "app");
        assert!(m.contains("does not start with `/`"), "{m}");
        for (v, shown) in [
            ("/a b", "` `"),
            ("/a;b", "`;`"),
            ("/a,b", "`,`"),
            ("/a\tb", "`\\t`"),
            ("/a\u{7f}b", "`\\u{7f}`"),
            ("/é", "`é`"),
        ] {
            let m = refused(PATH, v);
            assert!(m.contains(&format!("contains {shown}")), "{v:?}: {m}");
        }
        // Both problems, one error.
        let m = refused(PATH, "a;b");
        assert!(
            m.contains("does not start with `/` and contains `;`"),
            "{m}"
        );
        let m = refused(PATH, "");
        assert!(m.contains("is empty"), "{m}");
    }

    #[test]
    fn regex_looking_paths_warn() {
        for v in ["/api/(.*)", "/users/[0-9]+", "/x$", "/a|b"] {
            let (a, notes) = sticky(&[(PATH, v)]);
            assert_eq!(a.path.as_deref(), Some(v));
            assert_eq!(notes.len(), 1, "{notes:?}");
            assert!(warned(&notes, PATH, "regular expression"), "{notes:?}");
        }
    }

    #[test]
    fn cookie_domains() {
        for v in [
            "example.com",
            ".example.com",
            "a-b.example.co.uk",
            "localhost",
            "EXAMPLE.com",
        ] {
            assert_eq!(quiet(&[(DOMAIN, v)]).domain.as_deref(), Some(v));
        }
        for (v, words) in [
            ("example.com/", "contains `/`"),
            ("exa mple.com", "contains ` `"),
            ("ex_ample.com", "contains `_`"),
            ("*.example.com", "contains `*`"),
            ("example.com;x", "contains `;`"),
            ("example..com", "empty label"),
            ("example.com.", "empty label"),
            ("..example.com", "empty label"),
            (".", "empty label"),
            ("-example.com", "starts or ends with `-`"),
            ("example-.com", "starts or ends with `-`"),
            ("", "is empty"),
        ] {
            let m = refused(DOMAIN, v);
            assert!(m.contains(words), "{v:?}: {m}");
        }
        let long = "a".repeat(64);
        assert!(refused(DOMAIN, &long).contains("longer than 63"));
        let label = "a".repeat(63);
        let huge = [label.as_str(); 5].join(".");
        assert!(refused(DOMAIN, &huge).contains("longer than 253"));
    }

    #[test]
    fn max_age_and_expires_are_seconds() {
        let a = quiet(&[(MAX_AGE, "172800"), (EXPIRES, " 3600 ")]);
        assert_eq!((a.max_age, a.expires), (Some(172800), Some(3600)));
        assert_eq!(quiet(&[(MAX_AGE, "4294967295")]).max_age, Some(u32::MAX));
        for key in [MAX_AGE, EXPIRES] {
            for (v, words) in [
                ("-1", "is negative"),
                ("-3600", "is negative"),
                ("+5", "not a whole number"),
                ("1.5", "not a whole number"),
                ("2d", "not a whole number"),
                ("-", "not a whole number"),
                ("4294967296", "too large"),
                ("", "is empty"),
            ] {
                let m = refused(key, v);
                assert!(m.contains(words), "{key} {v:?}: {m}");
            }
        }
    }

    #[test]
    fn cookies_that_expire_at_once_warn() {
        let (a, notes) = sticky(&[(MAX_AGE, "0")]);
        assert_eq!(a.max_age, Some(0));
        assert_eq!(notes.len(), 1, "{notes:?}");
        assert!(warned(&notes, MAX_AGE, "at once"), "{notes:?}");
        let (a, notes) = sticky(&[(EXPIRES, "0")]);
        assert_eq!(a.expires, Some(0));
        assert!(warned(&notes, EXPIRES, "at once"), "{notes:?}");
        // Max-Age wins over Expires in browsers.
        let a = quiet(&[(EXPIRES, "0"), (MAX_AGE, "60")]);
        assert_eq!((a.max_age, a.expires), (Some(60), Some(0)));
    }

    #[test]
    fn booleans_follow_go_parse_bool() {
        for (t, f) in [
            ("true", "false"),
            ("1", "0"),
            ("T", "F"),
            (" True ", "FALSE"),
        ] {
            let a = quiet(&[(SECURE, t), (CHANGE_ON_FAILURE, t)]);
            assert_eq!(a.secure, Some(true));
            assert!(a.change_on_failure);
            let a = quiet(&[(SECURE, f), (CHANGE_ON_FAILURE, f)]);
            assert_eq!(a.secure, Some(false));
            assert!(!a.change_on_failure);
            let a = quiet(&[(SAME_SITE, "None"), (CONDITIONAL_SAME_SITE_NONE, t)]);
            assert!(a.conditional_same_site_none);
            let a = quiet(&[(SAME_SITE, "None"), (CONDITIONAL_SAME_SITE_NONE, f)]);
            assert!(!a.conditional_same_site_none);
        }
        // Secure absent: the host decides by the request's scheme.
        assert_eq!(quiet(&[]).secure, None);
        for key in [SECURE, CONDITIONAL_SAME_SITE_NONE, CHANGE_ON_FAILURE] {
            for bad in ["yes", "on", "", "tRuE"] {
                let m = refused(key, bad);
                assert!(m.contains("is not a boolean"), "{key} {bad:?}: {m}");
                assert!(m.contains("TRUE, true, True"), "{m}");
            }
        }
    }

    #[test]
    fn same_site_in_any_case() {
        for (v, s) in [
            ("None", SameSite::None),
            ("none", SameSite::None),
            ("Lax", SameSite::Lax),
            ("LAX", SameSite::Lax),
            (" strict ", SameSite::Strict),
            ("Strict", SameSite::Strict),
        ] {
            assert_eq!(quiet(&[(SAME_SITE, v)]).same_site, Some(s), "{v}");
        }
        for v in ["", "Unset", "lax;", "No"] {
            let m = refused(SAME_SITE, v);
            assert!(m.contains("`None`, `Lax` or `Strict`"), "{v:?}: {m}");
        }
    }

    #[test]
    fn conditional_same_site_none_needs_same_site_none() {
        for pairs in [
            &[(CONDITIONAL_SAME_SITE_NONE, "true")][..],
            &[(CONDITIONAL_SAME_SITE_NONE, "true"), (SAME_SITE, "Lax")][..],
            &[(CONDITIONAL_SAME_SITE_NONE, "true"), (SAME_SITE, "strict")][..],
        ] {
            let (a, notes) = sticky(pairs);
            assert!(a.conditional_same_site_none);
            assert_eq!(notes.len(), 1, "{notes:?}");
            assert!(
                warned(
                    &notes,
                    CONDITIONAL_SAME_SITE_NONE,
                    "has no effect without nginx.ingress.kubernetes.io/session-cookie-samesite: \
                     \"None\""
                ),
                "{notes:?}"
            );
        }
        // False is inert, not worth a warning.
        quiet(&[(CONDITIONAL_SAME_SITE_NONE, "false"), (SAME_SITE, "Lax")]);
        // A refused samesite is reported once, without the warning.
        let e = policy(&Settings::from_pairs(&[
            (AFFINITY, COOKIE),
            (CONDITIONAL_SAME_SITE_NONE, "true"),
            (SAME_SITE, "Nope"),
        ]))
        .expect_err("refused");
        assert_eq!(e.len(), 1, "{e:?}");
        assert_eq!(e[0].key, SAME_SITE);
    }

    #[test]
    fn same_site_none_without_secure_warns() {
        let (a, notes) = sticky(&[(SAME_SITE, "None"), (SECURE, "false")]);
        assert_eq!((a.same_site, a.secure), (Some(SameSite::None), Some(false)));
        assert_eq!(notes.len(), 1, "{notes:?}");
        assert!(warned(&notes, SECURE, "not Secure"), "{notes:?}");
        quiet(&[(SAME_SITE, "None"), (SECURE, "true")]);
        quiet(&[(SAME_SITE, "None")]);
        quiet(&[(SAME_SITE, "Lax"), (SECURE, "false")]);
    }

    #[test]
    fn every_problem_in_one_pass() {
        let e = errors(&[
            (AFFINITY, "Cookie"),
            (MODE, "sticky"),
            (CANARY_BEHAVIOR, "never"),
            (NAME, "a b"),
            (PATH, "x"),
            (DOMAIN, "a_b"),
            (MAX_AGE, "-1"),
            (EXPIRES, "soon"),
            (SECURE, "yes"),
            (SAME_SITE, "Unset"),
            (CONDITIONAL_SAME_SITE_NONE, "maybe"),
            (CHANGE_ON_FAILURE, "no"),
        ]);
        assert_eq!(e.len(), KEYS.len(), "{e:?}");
        for k in KEYS {
            assert_eq!(e.iter().filter(|d| d.key == k).count(), 1, "{k}: {e:?}");
        }
    }
}
