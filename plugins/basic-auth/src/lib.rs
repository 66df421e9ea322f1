//! Built-in plugin `basic-auth`: ingress-nginx's HTTP Basic and Digest authentication
//! annotations: `auth-type` (`basic` or `digest`), `auth-secret` (`NAME` or
//! `NAMESPACE/NAME`), `auth-secret-type` (`auth-file`, the default: key `auth` holds an
//! htpasswd file, or for digest an htdigest file; `auth-map`: one key per user, basic only)
//! and `auth-realm`.
//!
//! Owns only these keys and only names the Secret: the host reads it (the plugin never sees a
//! hash), verifies the hashes `htpasswd` writes and answers 401 with `WWW-Authenticate`.
//! Where ingress-nginx would quietly serve an Ingress without authentication (an
//! `auth-secret` without `auth-type`), this plugin refuses it instead.
#![cfg_attr(target_arch = "wasm32", no_std)]

extern crate alloc;

use alloc::format;
use alloc::string::ToString;
use alloc::vec::Vec;
use wasmgress_plugin_sdk::refs::parse_object_ref;
use wasmgress_plugin_sdk::{
    AuthSecretFormat, BasicAuth, Diagnostic, Diagnostics, DigestAuth, Directive, Info, ObjectRef,
    Plugin, Policy, Settings, export_plugin, info,
};

/// `basic` or `digest`.
pub const TYPE: &str = "nginx.ingress.kubernetes.io/auth-type";
/// The Secret holding the users.
pub const SECRET: &str = "nginx.ingress.kubernetes.io/auth-secret";
/// How the Secret holds them.
pub const SECRET_TYPE: &str = "nginx.ingress.kubernetes.io/auth-secret-type";
/// Sent in the challenge.
pub const REALM: &str = "nginx.ingress.kubernetes.io/auth-realm";

/// `NAME` or `NAMESPACE/NAME`.
pub fn parse_secret(value: &str) -> Result<ObjectRef, alloc::string::String> {
    parse_object_ref(value, "Secret")
}

fn format_of(settings: &Settings, diags: &mut Diagnostics) -> AuthSecretFormat {
    match settings.get(SECRET_TYPE).map(str::trim) {
        None | Some("auth-file") => AuthSecretFormat::AuthFile,
        Some("auth-map") => AuthSecretFormat::AuthMap,
        Some(other) => {
            diags.error(
                SECRET_TYPE,
                format!("`{other}` is neither auth-file nor auth-map"),
            );
            AuthSecretFormat::AuthFile
        }
    }
}

/// Turn the owned settings into a policy.
pub fn policy(settings: &Settings) -> Result<Policy, Vec<Diagnostic>> {
    let mut diags = Diagnostics::default();
    let mut policy = Policy::default();
    let Some(kind) = settings.get(TYPE).map(str::trim) else {
        // Only the other keys: ingress-nginx would serve the Ingress open.
        if let Some((key, _)) = settings.iter().next() {
            diags.error(
                key,
                format!("has no effect without {TYPE}, so the backend would be served without authentication; set {TYPE}: basic"),
            );
        }
        return diags.finish(policy);
    };
    let digest = match kind {
        "basic" => false,
        "digest" => true,
        other => {
            diags.error(TYPE, format!("`{other}` is neither basic nor digest"));
            false
        }
    };
    let format = format_of(settings, &mut diags);
    let secret = match settings.get(SECRET).map(parse_secret) {
        Some(Ok(secret)) => Some(secret),
        Some(Err(why)) => {
            diags.error(SECRET, why);
            None
        }
        None => {
            diags.error(
                TYPE,
                format!("needs {SECRET} naming the Secret with the users"),
            );
            None
        }
    };
    let realm = settings.get(REALM).unwrap_or("").to_string();
    match secret {
        Some(secret) if digest => {
            if format != AuthSecretFormat::AuthFile {
                diags.error(
                    SECRET_TYPE,
                    "digest users come from an htdigest file (auth-file)",
                );
            }
            policy.push(Directive::DigestAuth(DigestAuth { realm, secret }));
        }
        Some(secret) => {
            policy.push(Directive::BasicAuth(BasicAuth {
                realm,
                secret,
                format,
            }));
        }
        None => {}
    }
    diags.finish(policy)
}

struct BasicAuthPlugin;

impl Plugin for BasicAuthPlugin {
    type Config = ();

    fn info() -> Info {
        info(
            "basic-auth",
            env!("CARGO_PKG_VERSION"),
            &[TYPE, SECRET, SECRET_TYPE, REALM],
            &[],
            &[],
        )
    }

    fn configure(settings: &Settings) -> Result<(Policy, ()), Vec<Diagnostic>> {
        policy(settings).map(|p| (p, ()))
    }
}

export_plugin!(BasicAuthPlugin);

#[cfg(test)]
mod tests {
    use super::*;

    fn s(pairs: &[(&str, &str)]) -> Settings {
        Settings::from_pairs(pairs)
    }

    #[test]
    fn basic_with_secret_and_realm() {
        let p = policy(&s(&[
            (TYPE, "basic"),
            (SECRET, "other/users"),
            (SECRET_TYPE, "auth-map"),
            (REALM, "Staff only"),
        ]))
        .expect("valid");
        assert_eq!(
            p.directives,
            [Directive::BasicAuth(BasicAuth {
                realm: "Staff only".into(),
                secret: ObjectRef {
                    namespace: Some("other".into()),
                    name: "users".into()
                },
                format: AuthSecretFormat::AuthMap,
            })]
        );
    }

    #[test]
    fn anything_that_would_serve_open_is_refused() {
        for (pairs, key) in [
            (&[(SECRET, "users")][..], SECRET),
            (&[(TYPE, "basic")][..], TYPE),
            (
                &[
                    (TYPE, "digest"),
                    (SECRET, "users"),
                    (SECRET_TYPE, "auth-map"),
                ][..],
                SECRET_TYPE,
            ),
            (&[(TYPE, "ntlm"), (SECRET, "users")][..], TYPE),
            (&[(TYPE, "basic"), (SECRET, "Bad_Name")][..], SECRET),
            (&[(TYPE, "basic"), (SECRET, "a/b/c")][..], SECRET),
            (
                &[(TYPE, "basic"), (SECRET, "u"), (SECRET_TYPE, "file")][..],
                SECRET_TYPE,
            ),
        ] {
            let e = policy(&s(pairs)).expect_err("refused");
            assert!(e.iter().any(|d| d.key == key), "{pairs:?}: {e:?}");
        }
    }
}
