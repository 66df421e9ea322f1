//! Built-in plugin `load-balance`: how a route chooses among its backend's endpoints, as
//! ingress-nginx's `load-balance`, `upstream-hash-by`, `upstream-hash-by-subset`,
//! `upstream-hash-by-subset-size` and `service-upstream` annotations say.
//!
//! Owns only these keys and only parses them, into at most one directive; the host picks
//! endpoints natively, so balancing costs no Wasm call per request. With nothing set the
//! policy is empty and the host's default (round-robin, ingress-nginx's default too) applies.
//!
//! # `load-balance`
//!
//! One [`Directive::LoadBalance`]. With `round_robin` the host takes the endpoints in turn;
//! with `ewma` it takes the better of two endpoints drawn at random, scored by the peak-EWMA of
//! their response times (decaying over 10 s) times the requests each has in flight, as
//! ingress-nginx's Lua balancer (`balancer/ewma.lua`) with Finagle's in-flight factor.
//!
//! Values follow ingress-nginx's documented ones, `round_robin` and `ewma`, matched exactly
//! (its validator is case-sensitive) after trimming surrounding whitespace. ingress-nginx also
//! accepts its balancer's other names: `chash` and `chashsubset` (consistent hashing, which it
//! configures with `upstream-hash-by`) and `sticky_balanced` and `sticky_persistent` (cookie
//! session affinity, configured with `affinity`); this plugin refuses them, saying so. Where
//! ingress-nginx silently falls back to the global algorithm (any other value) this plugin
//! reports an error instead.
//!
//! # `upstream-hash-by`, `upstream-hash-by-subset`, `upstream-hash-by-subset-size`
//!
//! One [`Directive::HashBy`]: requests with the same key go to the same endpoint. The key is an
//! nginx expression, literal text and variables (`$name` or `${name}`; names are letters,
//! digits and `_`, matched case-insensitively as nginx does): `$request_uri`, `$uri`, `$host`,
//! `$remote_addr`, `$binary_remote_addr`, `$http_<name>` (a request header: `$http_x_user` is
//! `x-user`), `$cookie_<name>` and `$arg_<name>` (a cookie, a query parameter, named as
//! written). Any other variable is refused, naming it and the supported ones, as are a `$`
//! without a name and an unclosed `${`; text between variables is kept (adjacent text is one
//! [`HashPart::Literal`]), surrounding whitespace is not. ingress-nginx's validator only admits
//! letters, digits, `-`, `_`, spaces and the `$`, `{` and `}` of variables; this plugin refuses
//! the other characters too, rather than accept Ingresses ingress-nginx rejects. A key without
//! any variable is accepted with a warning: every request then goes to the same endpoint.
//!
//! The host executes the hashing natively: a consistent-hash ring over the endpoints, built
//! deterministically from their addresses, so every replica and every recompile maps a key to
//! the same endpoint and a change of endpoints moves only a share of the keys. With
//! `upstream-hash-by-subset: "true"` (Go `ParseBool` values, default false) the key picks a
//! group of `upstream-hash-by-subset-size` endpoints (a positive whole number, default 3) and a
//! random member of the group takes the request (ingress-nginx's `chashsubset`); the directive
//! carries the size only then. The subset keys without `upstream-hash-by`, and the size
//! without the subset turned on, have no effect: accepted with a warning.
//!
//! As in ingress-nginx (`balancer.lua`), `upstream-hash-by` takes precedence over
//! `load-balance`: with both, `load-balance` is accepted with a warning and no
//! [`Directive::LoadBalance`] is emitted.
//!
//! # `service-upstream`
//!
//! Go `ParseBool` values, default false. `"true"` is one [`Directive::ServiceUpstream`]: the
//! route sends to the Service's cluster IP and port and kube-proxy (or a mesh) picks the pod,
//! so `load-balance` and `upstream-hash-by` (and its subset keys) have no effect: they are
//! accepted with a warning and their directives are not emitted. `"false"` emits nothing.
//!
//! Every problem of every key is reported in the same pass.
#![cfg_attr(target_arch = "wasm32", no_std)]

extern crate alloc;

use alloc::format;
use alloc::string::{String, ToString};
use alloc::vec::Vec;
use wasmgress_plugin_sdk::{
    Balance, Diagnostic, Diagnostics, Directive, HashBy, HashPart, Info, Plugin, Policy, Settings,
    export_plugin, info, parse_bool,
};

/// `load-balance`
pub const LOAD_BALANCE: &str = "nginx.ingress.kubernetes.io/load-balance";
/// `upstream-hash-by`: ingress-nginx's consistent hashing.
pub const UPSTREAM_HASH_BY: &str = "nginx.ingress.kubernetes.io/upstream-hash-by";
/// `upstream-hash-by-subset`: hash to a group of endpoints instead of one.
pub const HASH_BY_SUBSET: &str = "nginx.ingress.kubernetes.io/upstream-hash-by-subset";
/// `upstream-hash-by-subset-size`: how many endpoints a group holds.
pub const HASH_BY_SUBSET_SIZE: &str = "nginx.ingress.kubernetes.io/upstream-hash-by-subset-size";
/// `service-upstream`: send to the Service's cluster IP instead of its endpoints.
pub const SERVICE_UPSTREAM: &str = "nginx.ingress.kubernetes.io/service-upstream";
/// `affinity`: ingress-nginx's cookie session affinity (not owned here).
pub const AFFINITY: &str = "nginx.ingress.kubernetes.io/affinity";

const KEYS: [&str; 5] = [
    LOAD_BALANCE,
    UPSTREAM_HASH_BY,
    HASH_BY_SUBSET,
    HASH_BY_SUBSET_SIZE,
    SERVICE_UPSTREAM,
];

/// ingress-nginx's default subset size.
pub const DEFAULT_SUBSET_SIZE: u32 = 3;

/// The values this plugin accepts, with their algorithms, in ingress-nginx's documentation's
/// order.
const ALGORITHMS: [(&str, Balance); 2] = [
    ("round_robin", Balance::RoundRobin),
    ("ewma", Balance::Ewma),
];

/// "`round_robin` or `ewma`": for messages.
fn valid_values() -> String {
    let names: Vec<String> = ALGORITHMS
        .iter()
        .map(|(name, _)| format!("`{name}`"))
        .collect();
    names.join(" or ")
}

/// The algorithm of an exact value.
fn algorithm(value: &str) -> Option<Balance> {
    ALGORITHMS
        .iter()
        .find(|(name, _)| *name == value)
        .map(|(_, balance)| *balance)
}

/// Parse a `load-balance` value (surrounding whitespace tolerated); `Err` says why it is
/// refused, naming the value and the valid ones.
pub fn parse(value: &str) -> Result<Balance, String> {
    let v = value.trim();
    if let Some(balance) = algorithm(v) {
        return Ok(balance);
    }
    let valid = valid_values();
    Err(match v {
        "" => format!(
            "is empty: valid values are {valid}; remove the annotation for the default \
             (round_robin)"
        ),
        "chash" | "chashsubset" => format!(
            "`{v}` (consistent hashing) is not supported as a load-balance value; wasmgress \
             supports {valid}: for consistent hashing use {UPSTREAM_HASH_BY} instead"
        ),
        "sticky_balanced" | "sticky_persistent" => format!(
            "`{v}` (cookie session affinity) is not supported as a load-balance value; \
             wasmgress supports {valid}: for session affinity use {AFFINITY} instead"
        ),
        _ => {
            // Say what was probably meant: ingress-nginx only takes the lowercase names with
            // underscores.
            let guess = v.to_ascii_lowercase().replace(['-', ' '], "_");
            let hint = match algorithm(&guess) {
                Some(_) => format!(" (did you mean `{guess}`?)"),
                None => String::new(),
            };
            format!("`{v}` is not a load-balance algorithm{hint}; valid values are {valid}")
        }
    })
}

/// The variables an `upstream-hash-by` key may use, for messages.
const HASH_VARIABLES: &str = "$request_uri, $uri, $host, $remote_addr, $binary_remote_addr, \
                              $http_<header>, $cookie_<name>, $arg_<name>";

/// A character of an nginx variable name.
fn is_name_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_'
}

/// A character ingress-nginx's `upstream-hash-by` validator admits (`^[A-Za-z0-9\-_${}]*$`
/// once spaces are removed).
fn is_admitted(c: char) -> bool {
    is_name_char(c) || matches!(c, '-' | '$' | '{' | '}' | ' ')
}

/// `name` without the ASCII-case-insensitive `prefix`, if it starts with it.
fn strip_prefix_ci<'a>(name: &'a str, prefix: &str) -> Option<&'a str> {
    let head = name.get(..prefix.len())?;
    head.eq_ignore_ascii_case(prefix)
        .then(|| &name[prefix.len()..])
}

/// The key part of variable `name` (nginx names are case-insensitive).
fn hash_variable(name: &str) -> Result<HashPart, String> {
    let lower = name.to_ascii_lowercase();
    let part = match lower.as_str() {
        "request_uri" => Some(HashPart::RequestUri),
        "uri" => Some(HashPart::Uri),
        "host" => Some(HashPart::Host),
        "remote_addr" => Some(HashPart::RemoteAddr),
        "binary_remote_addr" => Some(HashPart::BinaryRemoteAddr),
        _ => None,
    };
    if let Some(part) = part {
        return Ok(part);
    }
    // (prefix, what it names, its part from the name after the prefix)
    type Named = fn(&str) -> HashPart;
    let prefixed: [(&str, &str, Named); 3] = [
        ("http_", "request header", |n| {
            HashPart::Header(n.replace('_', "-").to_ascii_lowercase())
        }),
        ("cookie_", "cookie", |n| HashPart::Cookie(n.to_string())),
        ("arg_", "query parameter", |n| HashPart::Arg(n.to_string())),
    ];
    for (prefix, what, part) in prefixed {
        if let Some(rest) = strip_prefix_ci(name, prefix) {
            if rest.is_empty() {
                return Err(format!(
                    "`${name}` names no {what}: write the {what}'s name after `{prefix}`"
                ));
            }
            return Ok(part(rest));
        }
    }
    Err(format!(
        "variable `${name}` is not supported in a hash key; supported: {HASH_VARIABLES}"
    ))
}

/// Parse an `upstream-hash-by` value into key parts (surrounding whitespace tolerated);
/// `Err` carries every problem found.
pub fn parse_hash_key(value: &str) -> Result<Vec<HashPart>, Vec<String>> {
    let v = value.trim();
    if v.is_empty() {
        return Err(alloc::vec![format!(
            "is empty: write the key to hash on, for example \"$request_uri\" or \
             \"$http_x_user_id\"; remove the annotation to turn consistent hashing off"
        )]);
    }
    let mut errors = Vec::new();

    let mut refused: Vec<char> = Vec::new();
    for c in v.chars() {
        if !is_admitted(c) && !refused.contains(&c) {
            refused.push(c);
        }
    }
    if !refused.is_empty() {
        let shown: Vec<String> = refused
            .iter()
            .map(|c| format!("`{}`", c.escape_debug()))
            .collect();
        errors.push(format!(
            "`{v}` contains {}: ingress-nginx's validator admits only letters, digits, `-`, \
             `_`, spaces and the `$`, `{{` and `}}` of variables, and rejects the Ingress \
             otherwise",
            shown.join(", ")
        ));
    }

    let mut parts = Vec::new();
    let mut literal = String::new();
    let mut rest = v;
    while let Some(at) = rest.find('$') {
        literal.push_str(&rest[..at]);
        let after = &rest[at + 1..];
        let (name, consumed) = if let Some(braced) = after.strip_prefix('{') {
            let len = braced.find(|c| !is_name_char(c)).unwrap_or(braced.len());
            let name = &braced[..len];
            if braced[len..].starts_with('}') {
                if name.is_empty() {
                    errors.push("`${}` names no variable".to_string());
                    rest = &braced[len + 1..];
                    continue;
                }
                (name, 1 + len + 1)
            } else {
                errors.push(format!(
                    "`${{{name}` is not closed: write `${{{name}}}` (variable names are \
                     letters, digits and `_`)"
                ));
                rest = &braced[len..];
                continue;
            }
        } else {
            let len = after.find(|c| !is_name_char(c)).unwrap_or(after.len());
            if len == 0 {
                errors.push(match after.chars().next() {
                    None => "ends with a `$` that names no variable".to_string(),
                    Some(c) => format!(
                        "a `$` followed by `{}` names no variable (nginx has no literal `$`); \
                         supported variables: {HASH_VARIABLES}",
                        c.escape_debug()
                    ),
                });
                rest = after;
                continue;
            }
            (&after[..len], len)
        };
        match hash_variable(name) {
            Ok(part) => {
                if !literal.is_empty() {
                    parts.push(HashPart::Literal(core::mem::take(&mut literal)));
                }
                parts.push(part);
            }
            Err(why) => errors.push(why),
        }
        rest = &after[consumed..];
    }
    literal.push_str(rest);
    if !literal.is_empty() {
        parts.push(HashPart::Literal(literal));
    }
    if errors.is_empty() {
        Ok(parts)
    } else {
        Err(errors)
    }
}

/// Parse `upstream-hash-by-subset-size`: endpoints per group, a positive whole number.
pub fn parse_subset_size(value: &str) -> Result<u32, String> {
    let v = value.trim();
    if v.is_empty() || !v.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!(
            "`{value}` is not a positive whole number of endpoints per subset (for example \
             \"{DEFAULT_SUBSET_SIZE}\", the default)"
        ));
    }
    match v.parse::<u32>() {
        Ok(0) => Err(format!(
            "`{value}`: a subset holds at least 1 endpoint (ingress-nginx reads 0 as the \
             default, {DEFAULT_SUBSET_SIZE}: remove the annotation for it)"
        )),
        Ok(size) => Ok(size),
        Err(_) => Err(format!("`{value}` is too large (at most {})", u32::MAX)),
    }
}

/// A boolean setting (Go `ParseBool` values); records an error and gives `None` when invalid.
fn bool_setting(diags: &mut Diagnostics, settings: &Settings, key: &str) -> Option<bool> {
    let value = settings.get(key)?;
    let parsed = parse_bool(value);
    if parsed.is_none() {
        diags.error(
            key,
            format!("`{value}` is not a boolean: write \"true\" or \"false\""),
        );
    }
    parsed
}

/// Turn the owned settings into a policy: nothing when none is set (or only ones that change
/// nothing), otherwise exactly one of [`Directive::ServiceUpstream`], [`Directive::HashBy`] and
/// [`Directive::LoadBalance`], in that precedence.
pub fn policy(settings: &Settings) -> Result<Policy, Vec<Diagnostic>> {
    let mut diags = Diagnostics::default();
    let mut policy = Policy::default();

    // Parse everything first, so every problem is reported in this pass. `Some(Ok)` is a
    // usable value, `Some(Err(()))` a present value already reported as an error.
    let balance = settings
        .get(LOAD_BALANCE)
        .map(|v| parse(v).map_err(|why| diags.error(LOAD_BALANCE, why)));
    let key = settings.get(UPSTREAM_HASH_BY).map(|v| {
        parse_hash_key(v).map_err(|errors| {
            for e in errors {
                diags.error(UPSTREAM_HASH_BY, e);
            }
        })
    });
    let subset = settings
        .get(HASH_BY_SUBSET)
        .map(|_| bool_setting(&mut diags, settings, HASH_BY_SUBSET).ok_or(()));
    let size = settings
        .get(HASH_BY_SUBSET_SIZE)
        .map(|v| parse_subset_size(v).map_err(|why| diags.error(HASH_BY_SUBSET_SIZE, why)));
    let service_upstream = bool_setting(&mut diags, settings, SERVICE_UPSTREAM) == Some(true);

    // Each valid key that has no effect gets one warning, for its most fundamental reason.
    fn no_effect(diags: &mut Diagnostics, key: &str, valid: bool, why: &str) {
        if valid {
            diags.warning(key, why.to_string());
        }
    }
    fn valid<T>(setting: &Option<Result<T, ()>>) -> bool {
        matches!(setting, Some(Ok(_)))
    }
    let subset_on = matches!(subset, Some(Ok(true)));

    if service_upstream {
        let why = format!(
            "has no effect with {SERVICE_UPSTREAM}: \"true\": the Service's cluster IP is the \
             only endpoint and kube-proxy (or a mesh) picks the pod"
        );
        no_effect(&mut diags, LOAD_BALANCE, valid(&balance), &why);
        no_effect(&mut diags, UPSTREAM_HASH_BY, valid(&key), &why);
        no_effect(&mut diags, HASH_BY_SUBSET, valid(&subset), &why);
        no_effect(&mut diags, HASH_BY_SUBSET_SIZE, valid(&size), &why);
        policy.push(Directive::ServiceUpstream(true));
    } else if let Some(key) = key {
        no_effect(
            &mut diags,
            LOAD_BALANCE,
            valid(&balance),
            &format!(
                "has no effect: {UPSTREAM_HASH_BY} takes precedence (as in ingress-nginx), so \
                 requests are balanced by their hash key; remove one of the two"
            ),
        );
        if !subset_on {
            no_effect(
                &mut diags,
                HASH_BY_SUBSET_SIZE,
                valid(&size),
                &format!("has no effect without {HASH_BY_SUBSET}: \"true\""),
            );
        }
        if let Ok(key) = key {
            if key.iter().all(|p| matches!(p, HashPart::Literal(_))) {
                diags.warning(
                    UPSTREAM_HASH_BY,
                    "has no variable: every request has the same key, so one endpoint (or \
                     subset) takes all the traffic",
                );
            }
            let subset_size = match (subset_on, size) {
                (true, Some(Ok(size))) => Some(size),
                (true, _) => Some(DEFAULT_SUBSET_SIZE),
                (false, _) => None,
            };
            policy.push(Directive::HashBy(HashBy { key, subset_size }));
        }
    } else {
        let why = format!("has no effect without {UPSTREAM_HASH_BY}");
        no_effect(&mut diags, HASH_BY_SUBSET, valid(&subset), &why);
        no_effect(&mut diags, HASH_BY_SUBSET_SIZE, valid(&size), &why);
        if let Some(Ok(balance)) = balance {
            policy.push(Directive::LoadBalance(balance));
        }
    }
    diags.finish(policy)
}

struct LoadBalance;

impl Plugin for LoadBalance {
    type Config = ();

    fn info() -> Info {
        info("load-balance", env!("CARGO_PKG_VERSION"), &KEYS, &[], &[])
    }

    fn configure(settings: &Settings) -> Result<(Policy, ()), Vec<Diagnostic>> {
        policy(settings).map(|p| (p, ()))
    }
}

export_plugin!(LoadBalance);

#[cfg(test)]
mod tests {
    use super::*;
    use wasmgress_plugin_sdk::Severity;

    fn balance(value: &str) -> Balance {
        let p = policy(&Settings::from_pairs(&[(LOAD_BALANCE, value)])).expect("valid");
        assert!(p.notes.is_empty(), "{:?}", p.notes);
        assert!(p.hooks.is_empty(), "no Wasm call per request");
        match p.directives.as_slice() {
            [Directive::LoadBalance(b)] => *b,
            other => panic!("expected exactly one load-balance directive, got {other:?}"),
        }
    }

    /// The one error for `value`, checked to name the key, the value and the valid values.
    fn refused(value: &str) -> String {
        let e = policy(&Settings::from_pairs(&[(LOAD_BALANCE, value)])).expect_err("refused");
        assert_eq!(e.len(), 1, "{e:?}");
        let d = &e[0];
        assert_eq!(d.severity, Severity::Error);
        assert_eq!(d.key, LOAD_BALANCE);
        assert!(
            d.message.contains("`round_robin` or `ewma`"),
            "{}",
            d.message
        );
        if !value.trim().is_empty() {
            assert!(d.message.contains(value.trim()), "{}", d.message);
        }
        d.message.clone()
    }

    /// The policy of valid settings: its one directive (if any) and its notes.
    fn accepted(pairs: &[(&str, &str)]) -> (Option<Directive>, Vec<Diagnostic>) {
        let p = policy(&Settings::from_pairs(pairs)).expect("valid");
        assert!(p.hooks.is_empty(), "no Wasm call per request");
        assert!(p.directives.len() <= 1, "{:?}", p.directives);
        (p.directives.into_iter().next(), p.notes)
    }

    /// The hash rule of valid settings, with the notes.
    fn hash_by(pairs: &[(&str, &str)]) -> (HashBy, Vec<Diagnostic>) {
        match accepted(pairs) {
            (Some(Directive::HashBy(h)), notes) => (h, notes),
            other => panic!("expected a hash-by directive, got {other:?}"),
        }
    }

    /// The key parts of a valid `upstream-hash-by` value, checked to carry no notes.
    fn key(value: &str) -> Vec<HashPart> {
        let (h, notes) = hash_by(&[(UPSTREAM_HASH_BY, value)]);
        assert!(notes.is_empty(), "{notes:?}");
        assert_eq!(h.subset_size, None);
        h.key
    }

    /// The errors of refused settings (all of them errors).
    fn errors(pairs: &[(&str, &str)]) -> Vec<Diagnostic> {
        let e = policy(&Settings::from_pairs(pairs)).expect_err("refused");
        assert!(e.iter().any(|d| d.severity == Severity::Error), "{e:?}");
        e.into_iter()
            .filter(|d| d.severity == Severity::Error)
            .collect()
    }

    /// The messages of the errors `value` of `upstream-hash-by` gets.
    fn key_errors(value: &str) -> Vec<String> {
        let e = errors(&[(UPSTREAM_HASH_BY, value)]);
        assert!(e.iter().all(|d| d.key == UPSTREAM_HASH_BY), "{e:?}");
        e.into_iter().map(|d| d.message).collect()
    }

    fn warned(notes: &[Diagnostic], key: &str, words: &str) -> bool {
        notes
            .iter()
            .any(|d| d.severity == Severity::Warning && d.key == key && d.message.contains(words))
    }

    fn lit(s: &str) -> HashPart {
        HashPart::Literal(s.to_string())
    }

    #[test]
    fn owns_the_keys_without_hooks() {
        let i = <LoadBalance as Plugin>::info();
        assert_eq!(i.name, "load-balance");
        assert_eq!(
            i.keys,
            [
                LOAD_BALANCE,
                UPSTREAM_HASH_BY,
                HASH_BY_SUBSET,
                HASH_BY_SUBSET_SIZE,
                SERVICE_UPSTREAM
            ]
        );
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
        assert_eq!(
            policy(&Settings::from_pairs(&[(AFFINITY, "cookie")])).expect("valid"),
            Policy::default()
        );
    }

    #[test]
    fn documented_values() {
        assert_eq!(balance("round_robin"), Balance::RoundRobin);
        assert_eq!(balance("ewma"), Balance::Ewma);
    }

    #[test]
    fn surrounding_whitespace_is_trimmed() {
        assert_eq!(balance("  ewma\n"), Balance::Ewma);
        assert_eq!(balance("\tround_robin "), Balance::RoundRobin);
    }

    #[test]
    fn consistent_hashing_points_at_upstream_hash_by() {
        for v in ["chash", "chashsubset", " chash "] {
            let m = refused(v);
            assert!(m.contains("consistent hashing"), "{m}");
            assert!(m.contains(UPSTREAM_HASH_BY), "{m}");
        }
    }

    #[test]
    fn sticky_points_at_affinity() {
        for v in ["sticky_balanced", "sticky_persistent"] {
            let m = refused(v);
            assert!(m.contains("session affinity"), "{m}");
            assert!(m.contains(AFFINITY), "{m}");
        }
    }

    #[test]
    fn near_misses_get_a_hint() {
        // ingress-nginx's validator is case-sensitive and wants underscores.
        for (v, meant) in [
            ("round-robin", "round_robin"),
            ("Round_Robin", "round_robin"),
            ("round robin", "round_robin"),
            ("EWMA", "ewma"),
        ] {
            let m = refused(v);
            assert!(m.contains(&format!("did you mean `{meant}`?")), "{m}");
        }
    }

    #[test]
    fn anything_else_is_refused() {
        for v in ["least_conn", "random", "ewma round_robin", "1"] {
            let m = refused(v);
            assert!(m.contains("not a load-balance algorithm"), "{m}");
            assert!(!m.contains("did you mean"), "{m}");
        }
        let m = refused("");
        assert!(m.contains("is empty"), "{m}");
        let m = refused("   ");
        assert!(m.contains("is empty"), "{m}");
    }

    #[test]
    fn parse_matches_policy() {
        assert_eq!(parse(" ewma "), Ok(Balance::Ewma));
        assert!(parse("chash").is_err());
    }

    #[test]
    fn hash_key_variables() {
        assert_eq!(key("$request_uri"), [HashPart::RequestUri]);
        assert_eq!(key("$uri"), [HashPart::Uri]);
        assert_eq!(key("$host"), [HashPart::Host]);
        assert_eq!(key("$remote_addr"), [HashPart::RemoteAddr]);
        assert_eq!(key("$binary_remote_addr"), [HashPart::BinaryRemoteAddr]);
        // Headers: `_` is `-`, lowercase.
        assert_eq!(
            key("$http_x_user_id"),
            [HashPart::Header("x-user-id".to_string())]
        );
        assert_eq!(
            key("$http_X_Tenant"),
            [HashPart::Header("x-tenant".to_string())]
        );
        // Cookies and query parameters: as written.
        assert_eq!(
            key("$cookie_SessionID"),
            [HashPart::Cookie("SessionID".to_string())]
        );
        assert_eq!(key("$arg_user_id"), [HashPart::Arg("user_id".to_string())]);
        // nginx's variable names are case-insensitive.
        assert_eq!(key("$Request_URI"), [HashPart::RequestUri]);
        assert_eq!(
            key("$HTTP_x_user"),
            [HashPart::Header("x-user".to_string())]
        );
        assert_eq!(key("$Cookie_sid"), [HashPart::Cookie("sid".to_string())]);
    }

    #[test]
    fn hash_key_documented_examples() {
        // ingress-nginx's documentation's three examples.
        assert_eq!(key("$request_uri"), [HashPart::RequestUri]);
        assert_eq!(
            key("$request_uri$host"),
            [HashPart::RequestUri, HashPart::Host]
        );
        assert_eq!(
            key("${request_uri}-text-value"),
            [HashPart::RequestUri, lit("-text-value")]
        );
    }

    #[test]
    fn hash_key_text_and_braces() {
        // A bare name runs as far as name characters do; braces end it earlier.
        assert_eq!(key("${host}_suffix"), [HashPart::Host, lit("_suffix")]);
        assert_eq!(
            key("pre-$host-mid-${uri}post"),
            [
                lit("pre-"),
                HashPart::Host,
                lit("-mid-"),
                HashPart::Uri,
                lit("post")
            ]
        );
        // Spaces between variables are kept; surrounding whitespace is not.
        assert_eq!(
            key("  $host $request_uri \n"),
            [HashPart::Host, lit(" "), HashPart::RequestUri]
        );
        // Adjacent text is one literal, braces outside `${...}` included.
        assert_eq!(key("$host}{x"), [HashPart::Host, lit("}{x")]);
        // Variables with no text between them have no empty literal between them.
        assert_eq!(
            key("${uri}${arg_page}"),
            [HashPart::Uri, HashPart::Arg("page".to_string())]
        );
    }

    #[test]
    fn hash_key_without_variables_warns() {
        let (h, notes) = hash_by(&[(UPSTREAM_HASH_BY, "fixed-key")]);
        assert_eq!(h.key, [lit("fixed-key")]);
        assert_eq!(notes.len(), 1, "{notes:?}");
        assert!(warned(&notes, UPSTREAM_HASH_BY, "same key"), "{notes:?}");
    }

    #[test]
    fn hash_key_empty_is_refused() {
        for v in ["", "   "] {
            let e = key_errors(v);
            assert_eq!(e.len(), 1, "{e:?}");
            assert!(e[0].contains("is empty"), "{}", e[0]);
        }
    }

    #[test]
    fn hash_key_unknown_variables_are_named_with_the_supported_ones() {
        for (v, name) in [
            ("$scheme", "$scheme"),
            ("${server_name}", "$server_name"),
            ("$hostname", "$hostname"),
            ("$1", "$1"),
            ("$request_uri$remote_port", "$remote_port"),
        ] {
            let e = key_errors(v);
            assert_eq!(e.len(), 1, "{v}: {e:?}");
            assert!(e[0].contains(&format!("`{name}`")), "{}", e[0]);
            assert!(e[0].contains(HASH_VARIABLES), "{}", e[0]);
        }
        // A prefix without a name.
        for (v, what) in [
            ("$http_", "request header"),
            ("${cookie_}", "cookie"),
            ("$arg_", "query parameter"),
        ] {
            let e = key_errors(v);
            assert_eq!(e.len(), 1, "{v}: {e:?}");
            assert!(e[0].contains(&format!("names no {what}")), "{}", e[0]);
        }
    }

    #[test]
    fn hash_key_bad_dollars() {
        let e = key_errors("$host$");
        assert_eq!(e.len(), 1, "{e:?}");
        assert!(e[0].contains("ends with a `$`"), "{}", e[0]);
        let e = key_errors("$host-$-x");
        assert_eq!(e.len(), 1, "{e:?}");
        assert!(e[0].contains("`$` followed by `-`"), "{}", e[0]);
        let e = key_errors("${request_uri");
        assert_eq!(e.len(), 1, "{e:?}");
        assert!(e[0].contains("`${request_uri` is not closed"), "{}", e[0]);
        assert!(e[0].contains("`${request_uri}`"), "{}", e[0]);
        let e = key_errors("${host-x}");
        assert_eq!(e.len(), 1, "{e:?}");
        assert!(e[0].contains("`${host` is not closed"), "{}", e[0]);
        let e = key_errors("a${}b");
        assert_eq!(e.len(), 1, "{e:?}");
        assert!(e[0].contains("`${}` names no variable"), "{}", e[0]);
    }

    #[test]
    fn hash_key_characters_ingress_nginx_refuses() {
        // Its validator: `^[A-Za-z0-9\-_${}]*$` once spaces are removed; no CR or LF.
        let e = key_errors("$host/$uri.x:y");
        assert_eq!(e.len(), 1, "one error listing them: {e:?}");
        assert!(e[0].contains("`/`, `.`, `:`"), "{}", e[0]);
        assert!(e[0].contains("validator"), "{}", e[0]);
        for v in ["$host\t$uri", "$host\n$uri", "a,b", "é$host", "$host\\$uri"] {
            let e = key_errors(v);
            assert_eq!(e.len(), 1, "{v:?}: {e:?}");
            assert!(e[0].contains("admits only"), "{}", e[0]);
        }
        // Every problem of the value in one pass.
        let e = key_errors("$scheme://$host$");
        assert_eq!(e.len(), 3, "{e:?}");
    }

    #[test]
    fn subset_carries_its_size_only_when_on() {
        let (h, notes) = hash_by(&[(UPSTREAM_HASH_BY, "$uri"), (HASH_BY_SUBSET, "true")]);
        assert_eq!(h.key, [HashPart::Uri]);
        assert_eq!(h.subset_size, Some(DEFAULT_SUBSET_SIZE));
        assert!(notes.is_empty(), "{notes:?}");
        let (h, notes) = hash_by(&[
            (UPSTREAM_HASH_BY, "$uri"),
            (HASH_BY_SUBSET, "1"),
            (HASH_BY_SUBSET_SIZE, " 5 "),
        ]);
        assert_eq!(h.subset_size, Some(5));
        assert!(notes.is_empty(), "{notes:?}");
        for off in ["false", "F", "0"] {
            let (h, notes) = hash_by(&[(UPSTREAM_HASH_BY, "$uri"), (HASH_BY_SUBSET, off)]);
            assert_eq!(h.subset_size, None, "{off}");
            assert!(notes.is_empty(), "{notes:?}");
        }
    }

    #[test]
    fn subset_size_without_subset_warns() {
        for pairs in [
            &[(UPSTREAM_HASH_BY, "$uri"), (HASH_BY_SUBSET_SIZE, "4")][..],
            &[
                (UPSTREAM_HASH_BY, "$uri"),
                (HASH_BY_SUBSET, "false"),
                (HASH_BY_SUBSET_SIZE, "4"),
            ][..],
        ] {
            let (h, notes) = hash_by(pairs);
            assert_eq!(h.subset_size, None);
            assert_eq!(notes.len(), 1, "{notes:?}");
            assert!(
                warned(
                    &notes,
                    HASH_BY_SUBSET_SIZE,
                    "has no effect without nginx.ingress.kubernetes.io/upstream-hash-by-subset: \
                     \"true\""
                ),
                "{notes:?}"
            );
        }
    }

    #[test]
    fn subset_keys_without_upstream_hash_by_warn() {
        let (d, notes) = accepted(&[(HASH_BY_SUBSET, "true"), (HASH_BY_SUBSET_SIZE, "4")]);
        assert_eq!(d, None);
        assert_eq!(notes.len(), 2, "one warning per key: {notes:?}");
        for k in [HASH_BY_SUBSET, HASH_BY_SUBSET_SIZE] {
            assert!(
                warned(&notes, k, &format!("no effect without {UPSTREAM_HASH_BY}")),
                "{notes:?}"
            );
        }
        // Next to load-balance, which then applies.
        let (d, notes) = accepted(&[(LOAD_BALANCE, "ewma"), (HASH_BY_SUBSET, "true")]);
        assert_eq!(d, Some(Directive::LoadBalance(Balance::Ewma)));
        assert!(warned(&notes, HASH_BY_SUBSET, "no effect"), "{notes:?}");
    }

    #[test]
    fn subset_values() {
        assert_eq!(parse_subset_size("3"), Ok(3));
        assert_eq!(parse_subset_size(" 1 "), Ok(1));
        assert_eq!(parse_subset_size("4294967295"), Ok(u32::MAX));
        for bad in ["", "-1", "+3", "2.5", "three", "4294967296"] {
            let e = parse_subset_size(bad).expect_err(bad);
            assert!(e.contains(&format!("`{bad}`")), "{e}");
        }
        assert!(
            parse_subset_size("0")
                .expect_err("0")
                .contains("at least 1")
        );
        let e = errors(&[
            (UPSTREAM_HASH_BY, "$uri"),
            (HASH_BY_SUBSET, "yes"),
            (HASH_BY_SUBSET_SIZE, "0"),
        ]);
        assert_eq!(e.len(), 2, "{e:?}");
        assert_eq!(e[0].key, HASH_BY_SUBSET);
        assert!(e[0].message.contains("`yes` is not a boolean"), "{e:?}");
        assert_eq!(e[1].key, HASH_BY_SUBSET_SIZE);
        // Invalid values are refused even where they would have no effect.
        let e = errors(&[(HASH_BY_SUBSET_SIZE, "many")]);
        assert_eq!(e.len(), 1, "{e:?}");
    }

    #[test]
    fn upstream_hash_by_takes_precedence_over_load_balance() {
        let (h, notes) = hash_by(&[(LOAD_BALANCE, "ewma"), (UPSTREAM_HASH_BY, "$host")]);
        assert_eq!(h.key, [HashPart::Host]);
        assert_eq!(notes.len(), 1, "{notes:?}");
        assert!(
            warned(
                &notes,
                LOAD_BALANCE,
                &format!("{UPSTREAM_HASH_BY} takes precedence")
            ),
            "{notes:?}"
        );
        // Both invalid: both reported.
        let e = errors(&[(LOAD_BALANCE, "chash"), (UPSTREAM_HASH_BY, "$scheme")]);
        assert_eq!(e.len(), 2, "{e:?}");
        assert_eq!(e[0].key, LOAD_BALANCE);
        assert_eq!(e[1].key, UPSTREAM_HASH_BY);
    }

    #[test]
    fn service_upstream() {
        let (d, notes) = accepted(&[(SERVICE_UPSTREAM, "true")]);
        assert_eq!(d, Some(Directive::ServiceUpstream(true)));
        assert!(notes.is_empty(), "{notes:?}");
        let (d, _) = accepted(&[(SERVICE_UPSTREAM, " True ")]);
        assert_eq!(d, Some(Directive::ServiceUpstream(true)));
        for off in ["false", "0", "FALSE"] {
            let (d, notes) = accepted(&[(SERVICE_UPSTREAM, off)]);
            assert_eq!(d, None, "{off}");
            assert!(notes.is_empty(), "{notes:?}");
        }
        // false leaves the other keys alone.
        let (d, notes) = accepted(&[(SERVICE_UPSTREAM, "false"), (LOAD_BALANCE, "ewma")]);
        assert_eq!(d, Some(Directive::LoadBalance(Balance::Ewma)));
        assert!(notes.is_empty(), "{notes:?}");
        for bad in ["yes", "on", ""] {
            let e = errors(&[(SERVICE_UPSTREAM, bad)]);
            assert_eq!(e.len(), 1, "{bad}: {e:?}");
            assert_eq!(e[0].key, SERVICE_UPSTREAM);
            assert!(e[0].message.contains("not a boolean"), "{e:?}");
        }
    }

    #[test]
    fn service_upstream_overrides_balancing() {
        let (d, notes) = accepted(&[
            (SERVICE_UPSTREAM, "true"),
            (LOAD_BALANCE, "ewma"),
            (UPSTREAM_HASH_BY, "$uri"),
            (HASH_BY_SUBSET, "true"),
            (HASH_BY_SUBSET_SIZE, "2"),
        ]);
        assert_eq!(d, Some(Directive::ServiceUpstream(true)));
        assert_eq!(notes.len(), 4, "one warning per key: {notes:?}");
        for k in [
            LOAD_BALANCE,
            UPSTREAM_HASH_BY,
            HASH_BY_SUBSET,
            HASH_BY_SUBSET_SIZE,
        ] {
            assert!(
                warned(&notes, k, &format!("no effect with {SERVICE_UPSTREAM}")),
                "{k}: {notes:?}"
            );
        }
        // Invalid values are still refused.
        let e = errors(&[(SERVICE_UPSTREAM, "true"), (UPSTREAM_HASH_BY, "$scheme")]);
        assert_eq!(e.len(), 1, "{e:?}");
        assert_eq!(e[0].key, UPSTREAM_HASH_BY);
    }

    #[test]
    fn every_problem_in_one_pass() {
        let e = errors(&[
            (LOAD_BALANCE, "least_conn"),
            (UPSTREAM_HASH_BY, "$scheme$"),
            (HASH_BY_SUBSET, "maybe"),
            (HASH_BY_SUBSET_SIZE, "-2"),
            (SERVICE_UPSTREAM, "sometimes"),
        ]);
        let count = |k: &str| e.iter().filter(|d| d.key == k).count();
        assert_eq!(count(LOAD_BALANCE), 1, "{e:?}");
        assert_eq!(count(UPSTREAM_HASH_BY), 2, "{e:?}");
        assert_eq!(count(HASH_BY_SUBSET), 1, "{e:?}");
        assert_eq!(count(HASH_BY_SUBSET_SIZE), 1, "{e:?}");
        assert_eq!(count(SERVICE_UPSTREAM), 1, "{e:?}");
    }
}
