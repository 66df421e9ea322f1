//! JSON Web Token verification (RFC 7519 / RFC 7515 compact form), HS256 and RS256 only.
//!
//! Pure logic, no SDK types, `no_std` + `alloc`: the plugin glue hands it the Secret's data,
//! the `Authorization` header value, the current time and the expectations from annotations.
//!
//! Hardening, in the order [`verify`] applies it:
//! - the token is bounded ([`MAX_TOKEN_LEN`]) before anything is decoded;
//! - exactly three non-empty base64url segments, without padding;
//! - the header's `alg` must be `HS256` or `RS256` *and* a key of that kind must be configured.
//!   Keys are stored by kind, so an RSA public key can never be used as an HMAC secret (the
//!   classic `alg` confusion) and `none` is never accepted; `crit` extensions are refused;
//! - the signature is checked (HMAC in constant time) before the payload is even parsed;
//! - `exp` is required; `exp`, `nbf` and `iat` are enforced with a leeway; `iss` and `aud`
//!   (a string or an array of strings) are checked when expected.
//!
//! Header parameters `kid`, `jku`, `jwk`, `x5u`, `x5c` are ignored: keys only ever come from
//! the configuration, and every configured key of the token's kind is tried (at most
//! [`MAX_KEYS_PER_KIND`]). Duplicate JSON members keep the last value (RFC 7519 §4 allows it).

use alloc::borrow::ToOwned;
use alloc::format;
use alloc::string::{String, ToString};
use alloc::vec::Vec;
use core::fmt;

use base64ct::{Base64, Base64UrlUnpadded, Encoding};
use hmac::{Hmac, KeyInit, Mac};
use miniserde::json::{Number, Object, Value};
use rsa::pkcs1::DecodeRsaPublicKey;
use rsa::pkcs8::DecodePublicKey;
use rsa::traits::PublicKeyParts;
use rsa::{Pkcs1v15Sign, PublicKey};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// Longest token accepted, in bytes, checked before any decoding.
pub const MAX_TOKEN_LEN: usize = 8 * 1024;
/// Default clock-skew allowance for `exp`, `nbf` and `iat`, in seconds.
pub const DEFAULT_LEEWAY_SECS: u64 = 60;
/// At most this many keys of one kind (each is tried in turn, so this bounds a request's cost).
pub const MAX_KEYS_PER_KIND: usize = 16;
/// Shortest HS256 secret: the hash output size, as RFC 7518 §3.2 requires.
pub const MIN_HS256_SECRET_LEN: usize = 32;
/// Smallest RSA modulus accepted for RS256, in bits (RFC 7518 §3.3).
pub const MIN_RSA_BITS: u32 = 2048;

/// The conventional Secret entry for an HS256 shared secret (any `hs256…` name works, see
/// [`Keys::from_secret`]); the `secrets` capability reads entries by name, so the glue asks for
/// this one and [`SECRET_RS256_ENTRY`].
pub const SECRET_HS256_ENTRY: &str = "hs256-secret";
/// The conventional Secret entry for PEM RSA public keys (one or more blocks).
pub const SECRET_RS256_ENTRY: &str = "rs256.pem";

const NOT_A_KEY_ENTRY: &str = "is not a key entry: name HS256 secrets `hs256…` and PEM RSA \
                               public keys `rs256…` or `….pem`";
const NO_KEY: &str = "the Secret holds no key: expected an `hs256-secret` entry (HS256) and/or \
                      an `rs256.pem` entry (RS256 public key)";
const NO_PEM_BLOCK: &str = "no PEM block found (expected `-----BEGIN PUBLIC KEY-----` or \
                            `-----BEGIN RSA PUBLIC KEY-----`)";
const CERTIFICATE: &str = "certificates are not supported: extract the public key \
                           (`openssl x509 -in cert.pem -pubkey -noout`)";

/// The two supported signature algorithms.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Alg {
    /// HMAC with SHA-256 and a shared secret.
    Hs256,
    /// RSASSA-PKCS1-v1_5 with SHA-256 and an RSA public key.
    Rs256,
}

impl Alg {
    /// The JOSE name (`HS256`, `RS256`).
    pub fn as_str(self) -> &'static str {
        match self {
            Alg::Hs256 => "HS256",
            Alg::Rs256 => "RS256",
        }
    }

    /// Exact, case-sensitive match: `hs256`, `none`, `HS512`... are not supported.
    fn from_jose(name: &str) -> Option<Alg> {
        match name {
            "HS256" => Some(Alg::Hs256),
            "RS256" => Some(Alg::Rs256),
            _ => None,
        }
    }
}

impl fmt::Display for Alg {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Verification keys, kept apart by kind so a key is only ever used with its own algorithm.
#[derive(Clone, Default)]
pub struct Keys {
    hs256: Vec<Vec<u8>>,
    rs256: Vec<PublicKey>,
}

impl fmt::Debug for Keys {
    /// Never prints secret material.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Keys")
            .field("hs256_secrets", &self.hs256.len())
            .field("rs256_keys", &self.rs256.len())
            .finish()
    }
}

impl Keys {
    /// No keys: every token is rejected until one is added.
    pub fn new() -> Keys {
        Keys::default()
    }

    /// Keys from a Secret's data (entry name, raw bytes), by entry name:
    /// - `hs256…` (e.g. `hs256-secret`, `hs256-previous` for rotation): an HS256 shared secret, used
    ///   byte for byte (no trimming: mind a trailing newline from `--from-file`), at least
    ///   [`MIN_HS256_SECRET_LEN`] bytes;
    /// - `rs256…` or `….pem` (e.g. `rs256.pem`): one or more PEM RSA public keys,
    ///   `-----BEGIN PUBLIC KEY-----` (SPKI) or `-----BEGIN RSA PUBLIC KEY-----` (PKCS#1).
    ///
    /// Any other entry, or no key at all, is an error naming it.
    pub fn from_secret<'a, I>(entries: I) -> Result<Keys, String>
    where
        I: IntoIterator<Item = (&'a str, &'a [u8])>,
    {
        let mut keys = Keys::new();
        for (name, value) in entries {
            let lower = name.to_ascii_lowercase();
            let added = if lower.starts_with("hs256") {
                keys.add_hs256_secret(value)
            } else if lower.starts_with("rs256") || lower.ends_with(".pem") {
                match core::str::from_utf8(value) {
                    Ok(text) => keys.add_rs256_pem(text).map(|_| ()),
                    Err(_) => Err("is not UTF-8 text (expected PEM)".to_string()),
                }
            } else {
                Err(NOT_A_KEY_ENTRY.to_string())
            };
            added.map_err(|e| format!("Secret key `{name}`: {e}"))?;
        }
        if keys.is_empty() {
            return Err(NO_KEY.to_string());
        }
        Ok(keys)
    }

    /// Add an HS256 shared secret.
    pub fn add_hs256_secret(&mut self, secret: &[u8]) -> Result<(), String> {
        if secret.len() < MIN_HS256_SECRET_LEN {
            return Err(format!(
                "HS256 secret is {} bytes, at least {MIN_HS256_SECRET_LEN} are required",
                secret.len()
            ));
        }
        if secret.trim_ascii_start().starts_with(b"-----BEGIN") {
            // Almost certainly a key pasted in the wrong place; as an HMAC secret a public
            // key would let anyone who has it mint tokens.
            return Err("looks like a PEM key, not an HS256 shared secret".to_string());
        }
        if self.hs256.len() >= MAX_KEYS_PER_KIND {
            return Err(format!("more than {MAX_KEYS_PER_KIND} HS256 secrets"));
        }
        self.hs256.push(secret.to_vec());
        Ok(())
    }

    /// Add every RSA public key of a PEM text (one or more blocks; text outside blocks is
    /// ignored). Returns how many were added.
    pub fn add_rs256_pem(&mut self, pem: &str) -> Result<usize, String> {
        let parsed = parse_pem_public_keys(pem)?;
        if self.rs256.len() + parsed.len() > MAX_KEYS_PER_KIND {
            return Err(format!("more than {MAX_KEYS_PER_KIND} RS256 public keys"));
        }
        let n = parsed.len();
        self.rs256.extend(parsed);
        Ok(n)
    }

    /// Whether a key for `alg` is configured.
    pub fn supports(&self, alg: Alg) -> bool {
        match alg {
            Alg::Hs256 => !self.hs256.is_empty(),
            Alg::Rs256 => !self.rs256.is_empty(),
        }
    }

    /// No key of any kind.
    pub fn is_empty(&self) -> bool {
        self.hs256.is_empty() && self.rs256.is_empty()
    }

    /// Number of (HS256 secrets, RS256 public keys).
    pub fn counts(&self) -> (usize, usize) {
        (self.hs256.len(), self.rs256.len())
    }
}

/// Every `-----BEGIN …-----` block of `text`, which must all be RSA public keys.
fn parse_pem_public_keys(text: &str) -> Result<Vec<PublicKey>, String> {
    const BEGIN: &str = "-----BEGIN ";
    let mut keys = Vec::new();
    let mut rest = text;
    while let Some(start) = rest.find(BEGIN) {
        let after = &rest[start + BEGIN.len()..];
        let Some(label_end) = after.find("-----") else {
            return Err("malformed PEM BEGIN line".to_string());
        };
        let label = &after[..label_end];
        let body_and_rest = &after[label_end + 5..];
        let end_line = format!("-----END {label}-----");
        let Some(body_end) = body_and_rest.find(&end_line) else {
            return Err(format!("PEM block `{label}` has no `{end_line}` line"));
        };
        let body = &body_and_rest[..body_end];
        rest = &body_and_rest[body_end + end_line.len()..];
        keys.push(pem_block_public_key(label, body)?);
        if keys.len() > MAX_KEYS_PER_KIND {
            return Err(format!("more than {MAX_KEYS_PER_KIND} RS256 public keys"));
        }
    }
    if keys.is_empty() {
        return Err(NO_PEM_BLOCK.to_string());
    }
    Ok(keys)
}

fn pem_block_public_key(label: &str, body: &str) -> Result<PublicKey, String> {
    if label.contains("PRIVATE KEY") {
        return Err(format!(
            "`{label}` is a private key: the Secret must hold only the public key \
             (`openssl pkey -in key.pem -pubout`)"
        ));
    }
    if label == "CERTIFICATE" {
        return Err(CERTIFICATE.to_string());
    }
    if label != "PUBLIC KEY" && label != "RSA PUBLIC KEY" {
        return Err(format!(
            "unsupported PEM block `{label}` (expected PUBLIC KEY or RSA PUBLIC KEY)"
        ));
    }
    if body.contains(':') {
        return Err(format!(
            "PEM block `{label}` has headers (encrypted?): not supported"
        ));
    }
    // Lax about line length and CRLF, strict about the alphabet and padding.
    let b64: String = body.chars().filter(|c| !c.is_ascii_whitespace()).collect();
    let der =
        Base64::decode_vec(&b64).map_err(|_| format!("PEM block `{label}`: invalid base64"))?;
    let key = if label == "PUBLIC KEY" {
        PublicKey::from_public_key_der(&der)
            .map_err(|e| format!("PUBLIC KEY is not a usable RSA public key: {e}"))?
    } else {
        PublicKey::from_pkcs1_der(&der)
            .map_err(|e| format!("RSA PUBLIC KEY is not a usable RSA public key: {e}"))?
    };
    let bits = key.n().bit_width();
    if bits < MIN_RSA_BITS {
        return Err(format!(
            "RSA key is {bits} bits, RS256 requires at least {MIN_RSA_BITS}"
        ));
    }
    Ok(key)
}

/// What the token must say besides being validly signed and unexpired.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Expect {
    /// Required exact `iss`, if any.
    pub issuer: Option<String>,
    /// Required member of `aud` (a string or an array of strings), if any. When `None`, `aud`
    /// is not checked (only its type).
    pub audience: Option<String>,
    /// Clock skew tolerated for `exp`, `nbf` and `iat`, in seconds.
    pub leeway_secs: u64,
}

impl Default for Expect {
    fn default() -> Self {
        Expect {
            issuer: None,
            audience: None,
            leeway_secs: DEFAULT_LEEWAY_SECS,
        }
    }
}

/// Why a token was refused. [`Reject::as_str`] is a short, client-safe reason.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reject {
    /// No bearer token in the request (for the glue: [`verify`] never returns it).
    MissingToken,
    /// Longer than [`MAX_TOKEN_LEN`].
    TooLarge,
    /// Not three base64url segments of JSON objects, a claim of the wrong type, `crit`...
    Malformed,
    /// `alg` is not HS256/RS256, or no key of that kind is configured.
    UnsupportedAlg,
    /// No configured key of the token's kind verifies the signature.
    BadSignature,
    /// No `exp` claim.
    MissingExpiry,
    /// `exp` is past (beyond the leeway).
    Expired,
    /// `nbf` or `iat` is in the future (beyond the leeway).
    NotYetValid,
    /// `iss` missing or different from the expected issuer.
    WrongIssuer,
    /// `aud` missing or without the expected audience.
    WrongAudience,
}

impl Reject {
    /// A short reason, safe to show to the client.
    pub fn as_str(self) -> &'static str {
        match self {
            Reject::MissingToken => "missing bearer token",
            Reject::TooLarge => "token too large",
            Reject::Malformed => "malformed token",
            Reject::UnsupportedAlg => "unsupported algorithm",
            Reject::BadSignature => "bad signature",
            Reject::MissingExpiry => "token has no expiry",
            Reject::Expired => "token expired",
            Reject::NotYetValid => "token not yet valid",
            Reject::WrongIssuer => "wrong issuer",
            Reject::WrongAudience => "wrong audience",
        }
    }
}

impl fmt::Display for Reject {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The payload of a verified token.
#[derive(Debug, Clone)]
pub struct Claims {
    alg: Alg,
    exp: u64,
    map: Object,
}

impl Claims {
    /// The algorithm the token was verified with.
    pub fn alg(&self) -> Alg {
        self.alg
    }

    /// `exp`, in seconds since the epoch (fractions truncated).
    pub fn exp(&self) -> u64 {
        self.exp
    }

    /// `sub`, if present (always a string when present: checked).
    pub fn sub(&self) -> Option<&str> {
        self.get_str("sub")
    }

    /// `iss`, if present (always a string when present: checked).
    pub fn iss(&self) -> Option<&str> {
        self.get_str("iss")
    }

    /// A string claim by name; `None` if absent or not a string. The value is arbitrary
    /// Unicode from the token issuer: validate it before putting it in a header.
    pub fn get_str(&self, name: &str) -> Option<&str> {
        match self.map.get(name)? {
            Value::String(s) => Some(s),
            _ => None,
        }
    }

    /// A scalar claim rendered as text: strings as they are, numbers and booleans in JSON
    /// form; `None` if absent, null, an array or an object.
    pub fn get_scalar(&self, name: &str) -> Option<String> {
        match self.map.get(name)? {
            Value::String(s) => Some(s.clone()),
            Value::Number(n) => Some(n.to_string()),
            Value::Bool(b) => Some(if *b { "true" } else { "false" }.to_owned()),
            _ => None,
        }
    }

    /// Whether the claim is present (with any value, null included).
    pub fn contains(&self, name: &str) -> bool {
        self.map.contains_key(name)
    }
}

/// The token of an `Authorization` header value: `Bearer <token>`, the scheme in any case,
/// then one or more spaces; surrounding whitespace is ignored. `None` for another scheme, an
/// empty token or one with inner whitespace or a comma.
pub fn bearer_token(authorization: &str) -> Option<&str> {
    let value = authorization.trim_matches([' ', '\t']);
    let (scheme, rest) = value.split_at_checked(6)?;
    if !scheme.eq_ignore_ascii_case("bearer") || !rest.starts_with(' ') {
        return None;
    }
    let token = rest.trim_start_matches(' ');
    if token.is_empty() || token.contains(|c: char| c.is_ascii_whitespace() || c == ',') {
        return None;
    }
    Some(token)
}

/// Verify a compact JWS `token` against `keys` at `now_unix_secs`, returning its claims.
pub fn verify(
    token: &str,
    keys: &Keys,
    now_unix_secs: u64,
    expect: &Expect,
) -> Result<Claims, Reject> {
    if token.len() > MAX_TOKEN_LEN {
        return Err(Reject::TooLarge);
    }
    let mut segments = token.split('.');
    let (Some(header_b64), Some(payload_b64), Some(sig_b64), None) = (
        segments.next(),
        segments.next(),
        segments.next(),
        segments.next(),
    ) else {
        return Err(Reject::Malformed);
    };
    if header_b64.is_empty() || payload_b64.is_empty() || sig_b64.is_empty() {
        return Err(Reject::Malformed);
    }

    let header = json_object(&b64url(header_b64)?)?;
    let alg = match header.get("alg") {
        Some(Value::String(name)) => Alg::from_jose(name).ok_or(Reject::UnsupportedAlg)?,
        _ => return Err(Reject::Malformed),
    };
    if header.contains_key("crit") {
        // We understand no extension, so per RFC 7515 §4.1.11 the token cannot be accepted.
        return Err(Reject::Malformed);
    }
    if !keys.supports(alg) {
        return Err(Reject::UnsupportedAlg);
    }

    let signature = b64url(sig_b64)?;
    let signing_input = &token.as_bytes()[..header_b64.len() + 1 + payload_b64.len()];
    let valid = match alg {
        Alg::Hs256 => verify_hs256(&keys.hs256, signing_input, &signature),
        Alg::Rs256 => verify_rs256(&keys.rs256, signing_input, &signature),
    };
    if !valid {
        return Err(Reject::BadSignature);
    }

    // Only an authenticated payload is parsed.
    let map = json_object(&b64url(payload_b64)?)?;
    check_claims(alg, map, now_unix_secs, expect)
}

fn verify_hs256(secrets: &[Vec<u8>], input: &[u8], signature: &[u8]) -> bool {
    if signature.len() != 32 {
        return false;
    }
    let mut valid = false;
    for secret in secrets {
        // HMAC accepts keys of any length; the only error is unreachable.
        let Ok(mut mac) = <Hmac<Sha256> as KeyInit>::new_from_slice(secret) else {
            continue;
        };
        mac.update(input);
        let tag = mac.finalize().into_bytes();
        // Constant time, and every secret is tried: the timing says nothing about which.
        valid |= bool::from(tag.as_slice().ct_eq(signature));
    }
    valid
}

fn verify_rs256(keys: &[PublicKey], input: &[u8], signature: &[u8]) -> bool {
    let hashed = Sha256::digest(input);
    keys.iter().any(|key| {
        key.verify(Pkcs1v15Sign::new::<Sha256>(), &hashed, signature)
            .is_ok()
    })
}

fn check_claims(alg: Alg, map: Object, now: u64, expect: &Expect) -> Result<Claims, Reject> {
    // Registered claims must have their registered types, whatever is expected.
    for name in ["iss", "sub", "jti"] {
        if map
            .get(name)
            .is_some_and(|v| !matches!(v, Value::String(_)))
        {
            return Err(Reject::Malformed);
        }
    }
    let audiences: Vec<&str> = match map.get("aud") {
        None => Vec::new(),
        Some(Value::String(s)) => alloc::vec![s.as_str()],
        Some(Value::Array(items)) => {
            let mut out = Vec::with_capacity(items.len());
            for item in items.iter() {
                match item {
                    Value::String(s) => out.push(s.as_str()),
                    _ => return Err(Reject::Malformed),
                }
            }
            out
        }
        Some(_) => return Err(Reject::Malformed),
    };
    let exp = numeric_date(map.get("exp").ok_or(Reject::MissingExpiry)?)?;
    let nbf = map.get("nbf").map(numeric_date).transpose()?;
    let iat = map.get("iat").map(numeric_date).transpose()?;

    let leeway = expect.leeway_secs;
    // RFC 7519 §4.1.4: the current time must be before `exp`.
    if now >= exp.saturating_add(leeway) {
        return Err(Reject::Expired);
    }
    let late_enough = |t: u64| t <= now.saturating_add(leeway);
    if !nbf.is_none_or(late_enough) || !iat.is_none_or(late_enough) {
        return Err(Reject::NotYetValid);
    }
    if let Some(issuer) = &expect.issuer {
        match map.get("iss") {
            Some(Value::String(iss)) if iss == issuer => {}
            _ => return Err(Reject::WrongIssuer),
        }
    }
    if let Some(audience) = &expect.audience
        && !audiences.iter().any(|a| a == audience)
    {
        return Err(Reject::WrongAudience);
    }
    Ok(Claims { alg, exp, map })
}

/// A NumericDate (RFC 7519 §2): seconds since the epoch, possibly fractional; before the
/// epoch counts as 0.
fn numeric_date(value: &Value) -> Result<u64, Reject> {
    match value {
        Value::Number(Number::U64(n)) => Ok(*n),
        Value::Number(Number::I64(n)) => Ok(u64::try_from(*n).unwrap_or(0)),
        // `as` truncates toward zero and saturates (negative -> 0, huge -> u64::MAX).
        Value::Number(Number::F64(f)) if f.is_finite() => Ok(*f as u64),
        _ => Err(Reject::Malformed),
    }
}

fn b64url(segment: &str) -> Result<Vec<u8>, Reject> {
    Base64UrlUnpadded::decode_vec(segment).map_err(|_| Reject::Malformed)
}

fn json_object(bytes: &[u8]) -> Result<Object, Reject> {
    let text = core::str::from_utf8(bytes).map_err(|_| Reject::Malformed)?;
    match miniserde::json::from_str::<Value>(text) {
        Ok(Value::Object(object)) => Ok(object),
        _ => Err(Reject::Malformed),
    }
}

#[cfg(test)]
mod tests;
