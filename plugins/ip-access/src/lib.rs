//! Built-in plugin `ip-access`: ingress-nginx's client address lists and `satisfy`:
//!
//! - `allowlist-source-range` (and its old name `whitelist-source-range`): only these CIDRs
//!   (or plain addresses), comma-separated, may reach the Ingress; others get 403;
//! - `denylist-source-range`: these get 403, checked before the allow list;
//! - `satisfy`: `all` (default) needs both the address lists and authentication to admit a
//!   request; `any` lets either.
//!
//! Owns only these keys and only states the lists; the host matches them against the client
//! address its request edge computed (after PROXY protocol and trusted `X-Forwarded-For`).
//! Anything it cannot read is an error, never a rule dropped: a list that would silently
//! shrink would open the backend.
#![cfg_attr(target_arch = "wasm32", no_std)]

extern crate alloc;

use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;
use wasmgress_plugin_sdk::refs::parse_address_list;
use wasmgress_plugin_sdk::{
    Diagnostic, Diagnostics, Directive, Info, Plugin, Policy, Satisfy, Settings, export_plugin,
    info,
};

/// The allow list.
pub const ALLOW: &str = "nginx.ingress.kubernetes.io/allowlist-source-range";
/// The allow list's old name; `ALLOW` wins when both are set, as in ingress-nginx.
pub const WHITELIST: &str = "nginx.ingress.kubernetes.io/whitelist-source-range";
/// The deny list.
pub const DENY: &str = "nginx.ingress.kubernetes.io/denylist-source-range";
/// How address lists and authentication combine.
pub const SATISFY: &str = "nginx.ingress.kubernetes.io/satisfy";

/// Parse a comma-separated CIDR list; every bad entry is named.
pub fn parse_ranges(value: &str) -> Result<Vec<String>, String> {
    parse_address_list(value)
}

fn list(settings: &Settings, key: &str, diags: &mut Diagnostics) -> Option<Vec<String>> {
    let value = settings.get(key)?;
    parse_ranges(value)
        .map_err(|why| diags.error(key, why))
        .ok()
}

/// Turn the owned settings into a policy.
pub fn policy(settings: &Settings) -> Result<Policy, Vec<Diagnostic>> {
    let mut diags = Diagnostics::default();
    let mut policy = Policy::default();
    let allow = list(settings, ALLOW, &mut diags);
    let whitelist = list(settings, WHITELIST, &mut diags);
    if allow.is_some() && settings.get(WHITELIST).is_some() {
        diags.warning(WHITELIST, format!("ignored: {ALLOW} is also set and wins"));
    }
    if let Some(deny) = list(settings, DENY, &mut diags) {
        policy.push(Directive::DenySource(deny));
    }
    if let Some(allow) = allow.or(whitelist) {
        policy.push(Directive::AllowSource(allow));
    }
    match settings.get(SATISFY).map(str::trim) {
        None => {}
        Some("all") => {
            policy.push(Directive::Satisfy(Satisfy::All));
        }
        Some("any") => {
            policy.push(Directive::Satisfy(Satisfy::Any));
        }
        // ingress-nginx drops an unknown value, which leaves `all`: the stricter reading.
        Some(other) => diags.warning(
            SATISFY,
            format!("`{other}` is neither any nor all; all applies (as in ingress-nginx)"),
        ),
    }
    diags.finish(policy)
}

struct IpAccess;

impl Plugin for IpAccess {
    type Config = ();

    fn info() -> Info {
        info(
            "ip-access",
            env!("CARGO_PKG_VERSION"),
            &[ALLOW, WHITELIST, DENY, SATISFY],
            &[],
            &[],
        )
    }

    fn configure(settings: &Settings) -> Result<(Policy, ()), Vec<Diagnostic>> {
        policy(settings).map(|p| (p, ()))
    }
}

export_plugin!(IpAccess);

#[cfg(test)]
mod tests {
    use super::*;

    fn s(pairs: &[(&str, &str)]) -> Settings {
        Settings::from_pairs(pairs)
    }

    #[test]
    fn allowlist_wins_over_its_old_name() {
        let p = policy(&s(&[(ALLOW, "10.0.0.0/8"), (WHITELIST, "0.0.0.0/0")])).expect("ok");
        assert_eq!(
            p.directives,
            [Directive::AllowSource(alloc::vec!["10.0.0.0/8".into()])]
        );
        assert_eq!(p.notes[0].key, WHITELIST);
        let p = policy(&s(&[(WHITELIST, "10.0.0.0/8")])).expect("ok");
        assert_eq!(
            p.directives,
            [Directive::AllowSource(alloc::vec!["10.0.0.0/8".into()])]
        );
    }

    #[test]
    fn deny_and_satisfy() {
        let p = policy(&s(&[(DENY, "10.9.0.0/16"), (SATISFY, "any")])).expect("ok");
        assert_eq!(
            p.directives,
            [
                Directive::DenySource(alloc::vec!["10.9.0.0/16".into()]),
                Directive::Satisfy(Satisfy::Any)
            ]
        );
        let p = policy(&s(&[(SATISFY, "some")])).expect("unknown satisfy is a warning");
        assert!(p.directives.is_empty());
        assert_eq!(p.notes.len(), 1);
        let e = policy(&s(&[(DENY, "x")])).expect_err("a bad deny list is an error");
        assert_eq!(e[0].key, DENY);
    }
}
