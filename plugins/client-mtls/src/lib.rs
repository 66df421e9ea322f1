//! Built-in plugin `client-mtls`: ingress-nginx's client certificate annotations:
//! `auth-tls-secret` (`NAME` or `NS/NAME`: a Secret with `ca.crt`, optionally `ca.crl`),
//! `auth-tls-verify-client` (`on`, the default; `optional`; `optional_no_ca`; `off`),
//! `auth-tls-verify-depth` (default 1), `auth-tls-error-page`,
//! `auth-tls-pass-certificate-to-upstream` and `auth-tls-match-cn`.
//!
//! Owns only these keys and only states the rule; the host reads the Secret, asks for a
//! certificate during the handshake of connections for the Ingress's hosts, checks it per
//! request and sets `ssl-client-verify`, `ssl-client-subject-dn`, `ssl-client-issuer-dn`
//! (and `ssl-client-cert`) for the upstream. A value ingress-nginx would replace by its
//! default (an unknown verify mode, a bad depth) is replaced here too, with a warning; the
//! defaults are the strict ones.
#![cfg_attr(target_arch = "wasm32", no_std)]

extern crate alloc;

use alloc::format;
use alloc::string::{String, ToString};
use alloc::vec::Vec;
use wasmgress_plugin_sdk::refs::parse_object_ref;
use wasmgress_plugin_sdk::{
    ClientTls, ClientVerify, Diagnostic, Diagnostics, Directive, Info, ObjectRef, Plugin, Policy,
    Settings, export_plugin, info, parse_bool,
};

pub const SECRET: &str = "nginx.ingress.kubernetes.io/auth-tls-secret";
pub const VERIFY: &str = "nginx.ingress.kubernetes.io/auth-tls-verify-client";
pub const DEPTH: &str = "nginx.ingress.kubernetes.io/auth-tls-verify-depth";
pub const ERROR_PAGE: &str = "nginx.ingress.kubernetes.io/auth-tls-error-page";
pub const PASS: &str = "nginx.ingress.kubernetes.io/auth-tls-pass-certificate-to-upstream";
pub const MATCH_CN: &str = "nginx.ingress.kubernetes.io/auth-tls-match-cn";

const KEYS: [&str; 6] = [SECRET, VERIFY, DEPTH, ERROR_PAGE, PASS, MATCH_CN];

/// `NAME` or `NAMESPACE/NAME`.
fn secret(value: &str) -> Result<ObjectRef, String> {
    parse_object_ref(value, "Secret")
}

fn verify(settings: &Settings, diags: &mut Diagnostics) -> Option<ClientVerify> {
    match settings.get(VERIFY).map(str::trim) {
        None | Some("on") => Some(ClientVerify::On),
        Some("optional") => Some(ClientVerify::Optional),
        Some("optional_no_ca") => Some(ClientVerify::OptionalNoCa),
        Some("off") => None,
        Some(other) => {
            diags.warning(VERIFY, format!("`{other}` is not on, off, optional or optional_no_ca; on applies (as in ingress-nginx)"));
            Some(ClientVerify::On)
        }
    }
}

fn depth(settings: &Settings, diags: &mut Diagnostics) -> u32 {
    match settings.get(DEPTH).map(str::trim) {
        None => 1,
        Some(v) => match v.parse::<u32>() {
            Ok(n) if n > 0 => n,
            _ => {
                diags.warning(
                    DEPTH,
                    format!("`{v}` is not a positive number; 1 applies (as in ingress-nginx)"),
                );
                1
            }
        },
    }
}

/// Turn the owned settings into a policy.
pub fn policy(settings: &Settings) -> Result<Policy, Vec<Diagnostic>> {
    let mut diags = Diagnostics::default();
    let mut policy = Policy::default();
    let Some(value) = settings.get(SECRET) else {
        if let Some((key, _)) = settings.iter().next() {
            // Without the CA nothing is checked: refuse rather than serve what was meant to be
            // restricted.
            diags.error(key, format!("needs {SECRET} naming the CA bundle"));
        }
        return diags.finish(policy);
    };
    let secret = secret(value).map_err(|why| diags.error(SECRET, why)).ok();
    let verify = verify(settings, &mut diags);
    let depth = depth(settings, &mut diags);
    let pass_certificate = match settings.get(PASS) {
        None => false,
        Some(v) => parse_bool(v).unwrap_or_else(|| {
            diags.error(PASS, format!("`{v}` is not a boolean"));
            false
        }),
    };
    let error_page = settings
        .get(ERROR_PAGE)
        .map(str::trim)
        .filter(|p| !p.is_empty());
    if let Some(page) = error_page
        && !(page.starts_with("http://") || page.starts_with("https://") || page.starts_with('/'))
    {
        diags.error(
            ERROR_PAGE,
            format!("`{page}` is not a URL or an absolute path"),
        );
    }
    let match_cn = settings
        .get(MATCH_CN)
        .map(str::trim)
        .filter(|m| !m.is_empty());
    match (secret, verify) {
        (Some(secret), Some(verify)) => {
            policy.push(Directive::ClientTls(ClientTls {
                secret,
                verify,
                depth,
                error_page: error_page.map(str::to_string),
                pass_certificate,
                match_cn: match_cn.map(str::to_string),
            }));
        }
        (Some(_), None) => diags.info(VERIFY, "off: no client certificate is requested"),
        (None, _) => {}
    }
    diags.finish(policy)
}

struct ClientMtls;

impl Plugin for ClientMtls {
    type Config = ();

    fn info() -> Info {
        info("client-mtls", env!("CARGO_PKG_VERSION"), &KEYS, &[], &[])
    }

    fn configure(settings: &Settings) -> Result<(Policy, ()), Vec<Diagnostic>> {
        policy(settings).map(|p| (p, ()))
    }
}

export_plugin!(ClientMtls);

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(pairs: &[(&str, &str)]) -> Option<ClientTls> {
        let p = policy(&Settings::from_pairs(pairs)).expect("valid");
        p.directives.into_iter().find_map(|d| match d {
            Directive::ClientTls(c) => Some(c),
            _ => None,
        })
    }

    #[test]
    fn defaults_are_strict() {
        let r = rule(&[(SECRET, "default/ca")]).expect("a rule");
        assert_eq!(r.verify, ClientVerify::On);
        assert_eq!(r.depth, 1);
        assert!(!r.pass_certificate);
        assert_eq!(r.secret.namespace.as_deref(), Some("default"));
        let r = rule(&[(SECRET, "ca"), (VERIFY, "sometimes"), (DEPTH, "0")]).expect("a rule");
        assert_eq!((r.verify, r.depth), (ClientVerify::On, 1));
        assert!(rule(&[(SECRET, "ca"), (VERIFY, "off")]).is_none());
    }

    #[test]
    fn every_key_parsed() {
        let r = rule(&[
            (SECRET, "ca"),
            (VERIFY, "optional_no_ca"),
            (DEPTH, "3"),
            (ERROR_PAGE, "https://example.com/cert-help"),
            (PASS, "true"),
            (MATCH_CN, "CN=(alice|bob)"),
        ])
        .expect("a rule");
        assert_eq!(r.verify, ClientVerify::OptionalNoCa);
        assert_eq!(r.depth, 3);
        assert!(r.pass_certificate);
        assert_eq!(r.match_cn.as_deref(), Some("CN=(alice|bob)"));
    }

    #[test]
    fn what_would_serve_open_is_refused() {
        for (pairs, key) in [
            (&[(VERIFY, "on")][..], VERIFY),
            (&[(SECRET, "Bad_Name")][..], SECRET),
            (&[(SECRET, "ca"), (PASS, "yes")][..], PASS),
            (&[(SECRET, "ca"), (ERROR_PAGE, "help")][..], ERROR_PAGE),
        ] {
            let e = policy(&Settings::from_pairs(pairs)).expect_err("refused");
            assert!(e.iter().any(|d| d.key == key), "{pairs:?}: {e:?}");
        }
    }
}
