//! Example wasmgress plugin `jwt`: requests need a valid `Authorization: Bearer` JSON Web
//! Token, signed HS256 or RS256 with a key from a Secret; chosen claims go upstream as
//! headers.
//!
//! ```yaml
//! wasmgress.io/plugins: "jwt"
//! wasmgress.io/plugin.jwt.capabilities: "clock, secrets(jwt-keys)"  # the grant: required
//! wasmgress.io/plugin.jwt.secret: "jwt-keys"  # required: `hs256-secret` (and `hs256-previous`
//!                                              # while rotating) and/or `rs256.pem`
//! wasmgress.io/plugin.jwt.issuer: "https://issuer.example"   # optional: `iss` must match
//! wasmgress.io/plugin.jwt.audience: "api"                    # optional: `aud` must contain it
//! wasmgress.io/plugin.jwt.leeway: "60"                       # clock skew, seconds (default 60)
//! wasmgress.io/plugin.jwt.claim-headers: "sub: X-User, tenant: X-Tenant"  # optional
//! ```
//!
//! The keys are read from the granted Secret in `configure` (the `secrets` capability), so a
//! bad key rejects the Ingress with a message naming it, and a changed Secret reconfigures the
//! route. Time comes from the `clock` capability. A missing or invalid token gets 401 with a
//! `WWW-Authenticate: Bearer` challenge (RFC 6750) naming the reason, before the upstream.
//! Client-sent copies of the claim headers are always removed, so the upstream can trust them.
//! The verifier ([`jwt`]) is plain `no_std` Rust over RustCrypto crates, unit-tested natively.
#![cfg_attr(target_arch = "wasm32", no_std)]
extern crate alloc;

pub mod jwt;

use alloc::format;
use alloc::string::{String, ToString};
use alloc::vec::Vec;
use wasmgress_plugin_sdk::validate::is_header_name;
use wasmgress_plugin_sdk::{
    Action, Diagnostic, Diagnostics, Headers, Hook, Info, Plugin, Policy, Request, Settings, clock,
    export_plugin, info, secrets,
};

const SECRET: &str = "wasmgress.io/plugin.jwt.secret";
const ISSUER: &str = "wasmgress.io/plugin.jwt.issuer";
const AUDIENCE: &str = "wasmgress.io/plugin.jwt.audience";
const LEEWAY: &str = "wasmgress.io/plugin.jwt.leeway";
const CLAIM_HEADERS: &str = "wasmgress.io/plugin.jwt.claim-headers";

/// What `configure` parsed.
pub struct Config {
    keys: jwt::Keys,
    expect: jwt::Expect,
    /// `(claim, lower-case header)` pairs.
    claim_headers: Vec<(String, String)>,
}

/// Parses `claim: Header, claim: Header`.
pub fn parse_claim_headers(value: &str) -> Result<Vec<(String, String)>, String> {
    let mut out = Vec::new();
    for item in value.split(',').map(str::trim).filter(|i| !i.is_empty()) {
        let Some((claim, header)) = item.split_once(':') else {
            return Err(format!("`{item}` is not `claim: Header`"));
        };
        let (claim, header) = (claim.trim(), header.trim().to_ascii_lowercase());
        if claim.is_empty() || !is_header_name(&header) {
            return Err(format!("`{item}` is not `claim: Header`"));
        }
        out.push((claim.to_string(), header));
    }
    Ok(out)
}

/// The Secret entries read: the `secrets` capability reads keys by name (it cannot list a
/// Secret), so rotation uses fixed names: `hs256-previous` keeps the old HS256 secret valid
/// while tokens signed with it expire; `rs256.pem` may hold several PEM keys.
const ENTRIES: [&str; 3] = [
    jwt::SECRET_HS256_ENTRY,
    "hs256-previous",
    jwt::SECRET_RS256_ENTRY,
];

/// Reads the keys from the granted Secret `name`.
fn keys(name: &str) -> Result<jwt::Keys, String> {
    let entries: Vec<(&str, Vec<u8>)> = ENTRIES
        .into_iter()
        .filter_map(|key| secrets::get(name, key).map(|v| (key, v)))
        .collect();
    if entries.is_empty() {
        // `secrets::get` answers nothing alike for a Secret that is missing, lacks the keys,
        // or is not granted: say all three.
        return Err(format!(
            "Secret `{name}` has none of `{}`, `hs256-previous`, `{}`, or is not granted: \
             grant it with `secrets({name})` in wasmgress.io/plugin.jwt.capabilities",
            jwt::SECRET_HS256_ENTRY,
            jwt::SECRET_RS256_ENTRY
        ));
    }
    jwt::Keys::from_secret(entries.iter().map(|(k, v)| (*k, v.as_slice())))
}

fn parse(settings: &Settings) -> Result<Config, Vec<Diagnostic>> {
    let mut diags = Diagnostics::default();
    let keys = match settings.get(SECRET).map(str::trim) {
        None | Some("") => {
            diags.error(SECRET, "required: the Secret holding the keys");
            jwt::Keys::default()
        }
        Some(name) => keys(name).unwrap_or_else(|why| {
            diags.error(SECRET, why);
            jwt::Keys::default()
        }),
    };
    let leeway_secs = match settings.get(LEEWAY).map(str::trim) {
        None => jwt::DEFAULT_LEEWAY_SECS,
        Some(v) => v.parse().unwrap_or_else(|_| {
            diags.error(LEEWAY, format!("`{v}` is not a number of seconds"));
            0
        }),
    };
    let claim_headers = parse_claim_headers(settings.get(CLAIM_HEADERS).unwrap_or(""))
        .unwrap_or_else(|why| {
            diags.error(CLAIM_HEADERS, why);
            Vec::new()
        });
    let text = |key| settings.get(key).map(|v| v.trim().to_string());
    let expect = jwt::Expect {
        issuer: text(ISSUER),
        audience: text(AUDIENCE),
        leeway_secs,
    };
    diags.finish(Policy::default()).map(|_| Config {
        keys,
        expect,
        claim_headers,
    })
}

/// 401 with an RFC 6750 challenge.
fn unauthorized(reason: jwt::Reject) -> Action {
    let challenge = match reason {
        jwt::Reject::MissingToken => "Bearer".to_string(),
        other => format!(
            "Bearer error=\"invalid_token\", error_description=\"{}\"",
            other.as_str()
        ),
    };
    let mut answer = Action::respond_text(401, &format!("{}\n", reason.as_str()));
    if let Action::RespondNow(r) = &mut answer {
        r.headers
            .push(("www-authenticate".to_string(), challenge.into_bytes()));
    }
    answer
}

struct Jwt;

impl Plugin for Jwt {
    type Config = Config;

    fn info() -> Info {
        info("jwt", "0.1.0", &[], &[], &[Hook::RequestHeaders])
    }

    fn configure(settings: &Settings) -> Result<(Policy, Config), Vec<Diagnostic>> {
        let config = parse(settings)?;
        let policy = Policy {
            hooks: alloc::vec![Hook::RequestHeaders],
            ..Policy::default()
        };
        Ok((policy, config))
    }

    fn on_request_headers(config: &Config, _: &Request<'_>, headers: &Headers<'_>) -> Action {
        // Whatever happens next, the upstream never sees a client's own copy of these.
        for (_, header) in &config.claim_headers {
            let _ = headers.remove(header);
        }
        let authorization = headers.get_str("authorization").unwrap_or_default();
        let Some(token) = jwt::bearer_token(&authorization) else {
            return unauthorized(jwt::Reject::MissingToken);
        };
        let claims = match jwt::verify(token, &config.keys, clock::unix_seconds(), &config.expect) {
            Ok(claims) => claims,
            Err(reason) => return unauthorized(reason),
        };
        for (claim, header) in &config.claim_headers {
            // A claim value that is not a valid header value (control characters) is left
            // out rather than forwarded mangled.
            if let Some(value) = claims.get_scalar(claim) {
                let _ = headers.set(header, value.as_bytes());
            }
        }
        Action::Continue
    }
}

export_plugin!(Jwt);

#[cfg(test)]
mod glue_tests {
    use super::*;

    #[test]
    fn claim_headers_parse() {
        assert_eq!(
            parse_claim_headers("sub: X-User, tenant:X-Tenant").unwrap(),
            [
                ("sub".to_string(), "x-user".to_string()),
                ("tenant".to_string(), "x-tenant".to_string())
            ]
        );
        assert!(parse_claim_headers("sub").is_err());
        assert!(parse_claim_headers("sub: bad header").is_err());
        assert!(parse_claim_headers(": X-User").is_err());
        assert_eq!(parse_claim_headers("").unwrap(), []);
    }
}
