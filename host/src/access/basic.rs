//! HTTP Basic authentication against htpasswd-style users (ingress-nginx `auth-type: basic`).
//!
//! Owns: parsing the users of an `auth-secret` (`auth-file` or `auth-map` form), checking
//! the password hashes Debian's `htpasswd` writes, a short-lived cache of successful
//! checks, and the `WWW-Authenticate` challenge value.
//!
//! Must not touch: routing, the proxy, responses, Kubernetes objects or logging. The caller
//! hands in a Secret's data map and the raw `Authorization` header value and gets a bool
//! back; what a failure turns into (401, metrics) is the caller's business. A cache miss on
//! a bcrypt user costs one bcrypt computation (milliseconds to tens of milliseconds) on the
//! calling thread, so an async caller may want `spawn_blocking` for it.
//!
//! Supported hashes: bcrypt (`$2y$`, `$2a$`, `$2b$`; `htpasswd -B`), apr1 MD5 (`$apr1$`;
//! `htpasswd -m`, its default), MD5-crypt (`$1$`; same algorithm) and SHA-1 (`{SHA}`;
//! `htpasswd -s`). Refused when the Secret is parsed: crypt(3) DES (`htpasswd -d`), plain
//! text (`htpasswd -p`), SHA-256/512-crypt (`$5$`/`$6$`) and anything else.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::DecodePaddingMode;
use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig, STANDARD};
use md5::Digest as _;
use subtle::ConstantTimeEq as _;

/// Named in every unsupported-hash error so the Secret's owner knows what to regenerate.
const SUPPORTED: &str = "bcrypt ($2y$/$2a$/$2b$, htpasswd -B), apr1 MD5 ($apr1$, htpasswd -m), \
                         MD5-crypt ($1$) and SHA-1 ({SHA}, htpasswd -s)";

/// Apache's `htpasswd -C` accepts 4..=17; a higher cost would stall every check for seconds.
const BCRYPT_COSTS: std::ops::RangeInclusive<u32> = 4..=17;

/// Longest decoded `user:password` accepted; bounds the work an MD5-crypt check can be made to do.
const MAX_CREDENTIALS: usize = 4096;

/// How long a successful check is remembered. ingress-nginx has no cache; this only saves
/// repeating bcrypt for a client that sends the same credentials on every request.
const CACHE_TTL: Duration = Duration::from_secs(60);

/// The cache is split so concurrent requests rarely wait on the same lock.
const CACHE_SHARDS: usize = 16;

/// 16 × 64 = 1024 remembered successes at most.
const SHARD_CAPACITY: usize = 64;

/// Characters of crypt(3)'s base-64 (used by bcrypt, apr1 and DES hashes).
const CRYPT_ALPHABET: &[u8; 64] =
    b"./0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

/// Clients differ on `=` padding; nginx does not insist on it either.
const BASIC_BASE64: GeneralPurpose = GeneralPurpose::new(
    &base64::alphabet::STANDARD,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

use super::SecretFormat as Format;

/// Why a Secret's users could not be used. Messages never quote a hash.
#[derive(Debug, thiserror::Error)]
pub enum UsersError {
    #[error("secret has no `auth` key (auth-secret-type auth-file)")]
    MissingAuthKey,
    #[error("auth line {line}: not valid UTF-8")]
    NotUtf8 { line: usize },
    #[error("auth line {line}: no ':' between user name and password hash")]
    MissingColon { line: usize },
    #[error("auth line {line}: empty user name")]
    EmptyUser { line: usize },
    #[error("secret key {key:?} cannot be a user name: {problem}")]
    BadUserKey { key: String, problem: &'static str },
    #[error("user {user:?}: {problem}; supported formats: {}", SUPPORTED)]
    UnsupportedHash { user: String, problem: &'static str },
    #[error("user {user:?}: malformed {kind} hash")]
    MalformedHash { user: String, kind: &'static str },
    #[error("secret holds no users")]
    NoUsers,
}

/// What is wrong with one hash, before we know whose it is.
enum HashProblem {
    Unsupported(&'static str),
    Malformed(&'static str),
}

impl HashProblem {
    fn for_user(self, user: &str) -> UsersError {
        let user = user.to_owned();
        match self {
            HashProblem::Unsupported(problem) => UsersError::UnsupportedHash { user, problem },
            HashProblem::Malformed(kind) => UsersError::MalformedHash { user, kind },
        }
    }
}

/// One user's stored password hash, validated at parse time.
#[derive(Clone)]
enum Hash {
    /// Kept as text because that is what `bcrypt::verify` takes; already known to parse.
    Bcrypt {
        hash: String,
        cost: u32,
    },
    /// `$apr1$` and `$1$` differ only in the magic string mixed into the digest.
    Md5Crypt {
        magic: &'static str,
        salt: String,
        digest: [u8; 22],
    },
    Sha1([u8; 20]),
}

impl Hash {
    fn parse(text: &str) -> Result<Hash, HashProblem> {
        if ["$2y$", "$2a$", "$2b$"].iter().any(|p| text.starts_with(p)) {
            return parse_bcrypt(text);
        }
        if let Some(rest) = text.strip_prefix("$apr1$") {
            return parse_md5_crypt("$apr1$", rest);
        }
        if let Some(rest) = text.strip_prefix("$1$") {
            return parse_md5_crypt("$1$", rest);
        }
        if let Some(rest) = text.strip_prefix("{SHA}") {
            return parse_sha1(rest);
        }
        Err(HashProblem::Unsupported(describe_unsupported(text)))
    }

    fn verify(&self, password: &[u8]) -> bool {
        match self {
            // Err only for a cost or format we already refused at parse time.
            Hash::Bcrypt { hash, .. } => bcrypt::verify(password, hash).unwrap_or(false),
            Hash::Md5Crypt {
                magic,
                salt,
                digest,
            } => {
                let computed = md5_crypt(password, salt.as_bytes(), magic.as_bytes());
                computed.ct_eq(digest).into()
            }
            Hash::Sha1(digest) => {
                let computed =
                    ring::digest::digest(&ring::digest::SHA1_FOR_LEGACY_USE_ONLY, password);
                computed.as_ref().ct_eq(digest).into()
            }
        }
    }

    /// Rough relative cost of one check, to pick the decoy for unknown users.
    fn work(&self) -> u64 {
        match self {
            Hash::Bcrypt { cost, .. } => 1_u64 << (cost + 8),
            Hash::Md5Crypt { .. } => 1_000,
            Hash::Sha1(_) => 1,
        }
    }
}

fn parse_bcrypt(text: &str) -> Result<Hash, HashProblem> {
    let parts: bcrypt::HashParts = text.parse().map_err(|_| HashProblem::Malformed("bcrypt"))?;
    let cost = parts.get_cost();
    if !BCRYPT_COSTS.contains(&cost) {
        return Err(HashProblem::Unsupported(
            "bcrypt cost outside 4..=17 (what htpasswd -C accepts)",
        ));
    }
    let hash = text.to_owned();
    Ok(Hash::Bcrypt { hash, cost })
}

/// `rest` is `salt$digest`, after the magic.
fn parse_md5_crypt(magic: &'static str, rest: &str) -> Result<Hash, HashProblem> {
    let kind = if magic == "$apr1$" {
        "apr1 MD5"
    } else {
        "MD5-crypt"
    };
    let (salt, encoded) = rest.split_once('$').ok_or(HashProblem::Malformed(kind))?;
    // The algorithm reads at most 8 salt characters; a longer one was not made by it.
    let salt_ok = !salt.is_empty() && salt.len() <= 8 && salt.is_ascii();
    let digest: Option<[u8; 22]> = encoded.as_bytes().try_into().ok();
    match digest {
        Some(digest) if salt_ok && digest.iter().all(|b| CRYPT_ALPHABET.contains(b)) => {
            Ok(Hash::Md5Crypt {
                magic,
                salt: salt.to_owned(),
                digest,
            })
        }
        _ => Err(HashProblem::Malformed(kind)),
    }
}

fn parse_sha1(encoded: &str) -> Result<Hash, HashProblem> {
    let bytes = STANDARD
        .decode(encoded)
        .map_err(|_| HashProblem::Malformed("{SHA}"))?;
    let digest = bytes
        .try_into()
        .map_err(|_| HashProblem::Malformed("{SHA}"))?;
    Ok(Hash::Sha1(digest))
}

/// Names the refused format without echoing the hash (it may be a plain-text password).
fn describe_unsupported(text: &str) -> &'static str {
    if text.starts_with("$5$") {
        "SHA-256-crypt (htpasswd -2) is not supported"
    } else if text.starts_with("$6$") {
        "SHA-512-crypt (htpasswd -5) is not supported"
    } else if text.starts_with('$') || text.starts_with('{') {
        "unknown hash scheme"
    } else if text.len() == 13 && text.bytes().all(|b| CRYPT_ALPHABET.contains(&b)) {
        "crypt(3) DES (htpasswd -d) is not supported"
    } else {
        "plain-text passwords (htpasswd -p) are not supported"
    }
}

/// MD5-crypt as in FreeBSD's `crypt_md5.c` and APR's `apr_md5_encode`; returns the encoded digest.
fn md5_crypt(password: &[u8], salt: &[u8], magic: &[u8]) -> [u8; 22] {
    let alternate: [u8; 16] = md5::Md5::new()
        .chain_update(password)
        .chain_update(salt)
        .chain_update(password)
        .finalize()
        .into();
    let mut context = md5::Md5::new();
    context.update(password);
    context.update(magic);
    context.update(salt);
    for chunk in password.chunks(16) {
        context.update(&alternate[..chunk.len()]);
    }
    // The original's odd bit loop: a NUL for each set bit, the first password byte otherwise.
    let mut bits = password.len();
    while bits != 0 {
        let byte = if bits & 1 == 1 {
            &[0_u8][..]
        } else {
            password.get(..1).unwrap_or_default()
        };
        context.update(byte);
        bits >>= 1;
    }
    let digest = md5_crypt_rounds(context.finalize().into(), password, salt);
    encode_md5_crypt(&digest)
}

/// The 1000 extra rounds that were meant to slow down guessing in 1994.
fn md5_crypt_rounds(mut digest: [u8; 16], password: &[u8], salt: &[u8]) -> [u8; 16] {
    for round in 0..1000 {
        let mut context = md5::Md5::new();
        let odd = round % 2 == 1;
        context.update(if odd { password } else { &digest[..] });
        if round % 3 != 0 {
            context.update(salt);
        }
        if round % 7 != 0 {
            context.update(password);
        }
        context.update(if odd { &digest[..] } else { password });
        digest = context.finalize().into();
    }
    digest
}

/// crypt(3)'s byte shuffle and little-endian base-64 of the final MD5 digest.
fn encode_md5_crypt(digest: &[u8; 16]) -> [u8; 22] {
    const GROUPS: [(usize, usize, usize); 5] =
        [(0, 6, 12), (1, 7, 13), (2, 8, 14), (3, 9, 15), (4, 10, 5)];
    let mut out = [0_u8; 22];
    let mut chunks = out.chunks_mut(4);
    for ((a, b, c), chunk) in GROUPS.iter().zip(&mut chunks) {
        let value =
            u32::from(digest[*a]) << 16 | u32::from(digest[*b]) << 8 | u32::from(digest[*c]);
        put_crypt64(chunk, value);
    }
    if let Some(chunk) = chunks.next() {
        put_crypt64(chunk, u32::from(digest[11]));
    }
    out
}

fn put_crypt64(out: &mut [u8], mut value: u32) {
    for slot in out {
        *slot = CRYPT_ALPHABET[(value & 0x3f) as usize];
        value >>= 6;
    }
}

/// Users and their password hashes, parsed once at compile time from a Secret.
pub struct Users {
    by_name: HashMap<String, Hash>,
    /// Checked for unknown user names so they cost what the dearest known user costs.
    decoy: Hash,
}

impl Users {
    /// `data`: the Secret's data map (key -> bytes). AuthFile: key `auth` holds an htpasswd
    /// file (`user:hash` lines; blank lines and lines starting with `#` skipped; CRLF
    /// tolerated). AuthMap: every key is a user name, its value the hash.
    pub fn parse(format: Format, data: &BTreeMap<String, Vec<u8>>) -> Result<Users, UsersError> {
        let by_name = match format {
            Format::AuthFile => {
                parse_auth_file(data.get("auth").ok_or(UsersError::MissingAuthKey)?)?
            }
            Format::AuthMap => parse_auth_map(data)?,
        };
        let decoy = by_name
            .values()
            .max_by_key(|hash| hash.work())
            .cloned()
            .ok_or(UsersError::NoUsers)?;
        Ok(Users { by_name, decoy })
    }

    pub fn len(&self) -> usize {
        self.by_name.len()
    }

    /// Always false for parsed users (parsing refuses an empty list); here for completeness.
    pub fn is_empty(&self) -> bool {
        self.by_name.is_empty()
    }
}

impl fmt::Debug for Users {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Users")
            .field("len", &self.len())
            .finish_non_exhaustive()
    }
}

fn parse_auth_file(file: &[u8]) -> Result<HashMap<String, Hash>, UsersError> {
    let mut users = HashMap::new();
    for (index, raw) in file.split(|&b| b == b'\n').enumerate() {
        let Some((user, text)) = parse_line(raw, index + 1)? else {
            continue;
        };
        let hash = Hash::parse(text).map_err(|problem| problem.for_user(user))?;
        // nginx stops at the first line naming the user, so a later duplicate never counts.
        users.entry(user.to_owned()).or_insert(hash);
    }
    Ok(users)
}

/// `None` for blank and comment lines, else the user and the hash text.
fn parse_line(raw: &[u8], line: usize) -> Result<Option<(&str, &str)>, UsersError> {
    let text = std::str::from_utf8(raw).map_err(|_| UsersError::NotUtf8 { line })?;
    let text = text.trim_end();
    if text.trim_start().is_empty() || text.starts_with('#') {
        return Ok(None);
    }
    let (user, rest) = text
        .split_once(':')
        .ok_or(UsersError::MissingColon { line })?;
    if user.is_empty() {
        return Err(UsersError::EmptyUser { line });
    }
    // Apache and nginx end the hash at a further ':' (some tools append fields there).
    let hash = rest.split_once(':').map_or(rest, |(hash, _)| hash);
    Ok(Some((user, hash)))
}

fn parse_auth_map(data: &BTreeMap<String, Vec<u8>>) -> Result<HashMap<String, Hash>, UsersError> {
    let mut users = HashMap::new();
    for (user, value) in data {
        check_map_user(user)?;
        let text = std::str::from_utf8(value)
            .map_err(|_| HashProblem::Unsupported("the hash is not text").for_user(user))?;
        // `kubectl create secret --from-file` keeps a trailing newline.
        let hash = Hash::parse(text.trim()).map_err(|problem| problem.for_user(user))?;
        users.insert(user.clone(), hash);
    }
    Ok(users)
}

fn check_map_user(user: &str) -> Result<(), UsersError> {
    let problem = if user.is_empty() {
        "it is empty"
    } else if user.contains(':') {
        "it contains ':', which Basic credentials cannot carry in a user name"
    } else {
        return Ok(());
    };
    let key = user.to_owned();
    Err(UsersError::BadUserKey { key, problem })
}

/// HMAC-SHA256 of `user:password` under the cache's random key.
type Tag = [u8; 32];

/// Recently verified credentials. Holds keyed tags, never passwords, and only successes, so
/// failed guesses cannot grow it; each shard is capped, evicting expired then oldest entries.
struct Cache {
    /// Random per verifier, so tags are useless outside this process and this Secret.
    /// `None` if the OS RNG failed: then every request is checked in full.
    key: Option<ring::hmac::Key>,
    ttl: Duration,
    shards: [Mutex<HashMap<Tag, Instant>>; CACHE_SHARDS],
}

impl Cache {
    fn new(ttl: Duration) -> Cache {
        let random = ring::rand::SystemRandom::new();
        Cache {
            key: ring::hmac::Key::generate(ring::hmac::HMAC_SHA256, &random).ok(),
            ttl,
            shards: std::array::from_fn(|_| Mutex::new(HashMap::new())),
        }
    }

    fn tag(&self, user: &[u8], password: &[u8]) -> Option<Tag> {
        let mut context = ring::hmac::Context::with_key(self.key.as_ref()?);
        // Unambiguous: a Basic user name cannot contain ':'.
        context.update(user);
        context.update(b":");
        context.update(password);
        context.sign().as_ref().try_into().ok()
    }

    /// The tag is keyed, so the map lookup's timing tells an attacker nothing they can use.
    fn hit(&self, tag: &Tag, now: Instant) -> bool {
        let mut shard = self.shard(tag);
        match shard.get(tag) {
            Some(&at) if self.fresh(at, now) => true,
            Some(_) => {
                shard.remove(tag);
                false
            }
            None => false,
        }
    }

    fn insert(&self, tag: Tag, now: Instant) {
        let mut shard = self.shard(&tag);
        if shard.len() >= SHARD_CAPACITY && !shard.contains_key(&tag) {
            shard.retain(|_, at| self.fresh(*at, now));
        }
        if shard.len() >= SHARD_CAPACITY && !shard.contains_key(&tag) {
            let oldest = shard.iter().min_by_key(|(_, at)| **at).map(|(tag, _)| *tag);
            if let Some(oldest) = oldest {
                shard.remove(&oldest);
            }
        }
        shard.insert(tag, now);
    }

    fn fresh(&self, at: Instant, now: Instant) -> bool {
        now.saturating_duration_since(at) < self.ttl
    }

    fn shard(&self, tag: &Tag) -> MutexGuard<'_, HashMap<Tag, Instant>> {
        let shard = &self.shards[usize::from(tag[0]) % CACHE_SHARDS];
        // A panic elsewhere cannot leave the map invalid, so a poisoned lock is still usable.
        shard.lock().unwrap_or_else(PoisonError::into_inner)
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        (0..CACHE_SHARDS)
            .map(|i| self.shard(&[i as u8; 32]).len())
            .sum()
    }
}

/// A verifier with a cache of recently verified credentials, shared by all requests of a
/// route (Send + Sync; no lock is held while a hash is computed).
pub struct BasicAuth {
    users: Users,
    cache: Cache,
    challenge: http::HeaderValue,
    /// Full hash checks done, so tests can see the cache working.
    #[cfg(test)]
    checks: std::sync::atomic::AtomicUsize,
}

impl BasicAuth {
    pub fn new(realm: &str, users: Users) -> BasicAuth {
        BasicAuth::with_ttl(realm, users, CACHE_TTL)
    }

    fn with_ttl(realm: &str, users: Users, ttl: Duration) -> BasicAuth {
        BasicAuth {
            users,
            cache: Cache::new(ttl),
            challenge: challenge_value(realm),
            #[cfg(test)]
            checks: std::sync::atomic::AtomicUsize::new(0),
        }
    }

    /// The answer when it needs no hash computation: `Some(true)` for credentials verified
    /// within the cache's lifetime, `Some(false)` for a header that can never verify (absent,
    /// another scheme, malformed), `None` when only [`BasicAuth::verify`] can tell. Cheap
    /// enough for the request thread; `verify` may cost a bcrypt computation.
    pub fn quick(&self, authorization: Option<&[u8]>) -> Option<bool> {
        let Some(credentials) = authorization.and_then(decode_basic) else {
            return Some(false);
        };
        let Some((user, password)) = split_credentials(&credentials) else {
            return Some(false);
        };
        // Without a cache (no randomness at start-up) every check is a full one.
        let tag = self.cache.tag(user, password)?;
        self.cache.hit(&tag, Instant::now()).then_some(true)
    }

    /// `authorization`: the raw `Authorization` header value, if any. Returns true when it
    /// is `Basic <base64 user:password>` (scheme case-insensitive, extra spaces tolerated)
    /// for a known user whose hash verifies.
    pub fn verify(&self, authorization: Option<&[u8]>) -> bool {
        self.verify_at(authorization, Instant::now())
    }

    fn verify_at(&self, authorization: Option<&[u8]>, now: Instant) -> bool {
        let Some(credentials) = authorization.and_then(decode_basic) else {
            return false;
        };
        let Some((user, password)) = split_credentials(&credentials) else {
            return false;
        };
        let tag = self.cache.tag(user, password);
        if tag.is_some_and(|tag| self.cache.hit(&tag, now)) {
            return true;
        }
        let verified = self.check(user, password);
        if let (true, Some(tag)) = (verified, tag) {
            self.cache.insert(tag, now);
        }
        verified
    }

    /// The full hash check; an unknown user pays for the decoy so timing does not reveal names.
    fn check(&self, user: &[u8], password: &[u8]) -> bool {
        #[cfg(test)]
        self.checks
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let known = std::str::from_utf8(user)
            .ok()
            .and_then(|user| self.users.by_name.get(user));
        match known {
            Some(hash) => hash.verify(password),
            None => {
                std::hint::black_box(self.users.decoy.verify(password));
                false
            }
        }
    }

    /// The `WWW-Authenticate` value for a 401: `Basic realm="<realm>"`, with `"` and `\`
    /// escaped. An empty realm (ingress-nginx's default `auth-realm`) gives `Basic realm=""`,
    /// as nginx sends for `auth_basic ""`.
    pub fn challenge(&self) -> &http::HeaderValue {
        &self.challenge
    }
}

impl fmt::Debug for BasicAuth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BasicAuth")
            .field("challenge", &self.challenge)
            .field("users", &self.users)
            .finish_non_exhaustive()
    }
}

fn challenge_value(realm: &str) -> http::HeaderValue {
    let mut value = String::with_capacity(realm.len() + 16);
    value.push_str("Basic realm=\"");
    for c in realm.chars() {
        match c {
            '"' | '\\' => {
                value.push('\\');
                value.push(c);
            }
            // A header value cannot carry control characters.
            c if c.is_control() => value.push(' '),
            c => value.push(c),
        }
    }
    value.push('"');
    http::HeaderValue::from_str(&value)
        .unwrap_or_else(|_| http::HeaderValue::from_static("Basic realm=\"\""))
}

/// The decoded token of a `Basic` header, if it is one and not oversized.
fn decode_basic(header: &[u8]) -> Option<Vec<u8>> {
    let header = header.trim_ascii();
    let split = header.iter().position(u8::is_ascii_whitespace)?;
    let (scheme, token) = header.split_at(split);
    if !scheme.eq_ignore_ascii_case(b"basic") {
        return None;
    }
    let token = token.trim_ascii();
    // Refuse before decoding, so a huge header costs no allocation.
    if token.len() > base64::encoded_len(MAX_CREDENTIALS, true)? {
        return None;
    }
    let decoded = BASIC_BASE64.decode(token).ok()?;
    (decoded.len() <= MAX_CREDENTIALS).then_some(decoded)
}

/// `user:password`, split at the first ':' (the password may contain more).
fn split_credentials(credentials: &[u8]) -> Option<(&[u8], &[u8])> {
    let mut parts = credentials.splitn(2, |&b| b == b':');
    Some((parts.next()?, parts.next()?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::Ordering;

    // Made with Debian's htpasswd 2.4 (`htpasswd -nbB`, `-nbB -C 4`, `-nbm`, `-nbs`) and
    // `openssl passwd -1`; the password is in the comment.
    const ALICE: &str = "alice:$2y$05$Nr630IcY5PTpJlJNU1CSquMT9gTuSLxovLcxYbTXeSsMPq2rbfz8u"; // correct horse
    const BOB: &str = "bob:$2y$04$c6TEKXi1rFe4X7n1vRq.MujoViiajzSw.8XK94aJSHU4QUaAI1I.y"; // b0b:pass
    const UNI: &str = "ünï:$2y$05$T8xJbhV7PV.klxMz1E.nIeuR9.zijyJIVWne13F9fY3a0p7n2soLO"; // pässwörd
    const LONG: &str = "long:$2y$04$yo2EHIVRvyudLCPla5T3C.zeJlWBm2GirQGE1PKOLJEA42WECThse"; // 100 × 'x'
    const CAROL: &str = "carol:$apr1$boClZ8.M$gbhDfQvPs/jOWcQan4oxJ0"; // c@rol pw
    const FOO: &str = "foo:$apr1$xdMAfib4$Y1tRqdFR4EDo6wOlX.dOV."; // bar
    const EMPTY: &str = "empty:$apr1$csA4y5V4$T6eV9FEma094rGAzypJ8q/"; // (empty)
    const MD5: &str = "md5:$1$sAlt1234$b3QyPvBJO8QmYSY031KUy."; // md5 crypt pw
    const DAVE: &str = "dave:{SHA}Ztuad/ftNAIlMYv8uco6C0z8hVQ="; // dave-secret
    const DES: &str = "erin:n./.VF1KXylW6"; // htpasswd -nbd erin erinpw
    const PLAIN: &str = "frank:frankpw"; // htpasswd -nbp
    const SHA256: &str = "x:$5$LTz8RKdMtmpBz2EN$rZcEDT6SMeOwyAqkPzEuRaGwHiA6x6dYfx0puBDjdD2";
    const SHA512: &str = "y:$6$UD3NQ4j3bUjYlkq3$sw0UVkfx0GkbggBAxqYARpKyCA7EIE2PithoKO4949bCzmIo3a0P4GBPPM.GPtZPy7nvKcft1nUNgBNbYUdpo/";

    fn file(lines: &[&str]) -> BTreeMap<String, Vec<u8>> {
        BTreeMap::from([("auth".to_owned(), lines.join("\n").into_bytes())])
    }

    fn auth(lines: &[&str]) -> BasicAuth {
        BasicAuth::new("test", users(lines))
    }

    fn users(lines: &[&str]) -> Users {
        match Users::parse(Format::AuthFile, &file(lines)) {
            Ok(users) => users,
            Err(error) => panic!("test users do not parse: {error}"),
        }
    }

    fn parse_error(lines: &[&str]) -> String {
        match Users::parse(Format::AuthFile, &file(lines)) {
            Ok(_) => panic!("parsed: {lines:?}"),
            Err(error) => error.to_string(),
        }
    }

    fn header(user: &str, password: &str) -> Vec<u8> {
        format!("Basic {}", STANDARD.encode(format!("{user}:{password}"))).into_bytes()
    }

    fn ok(auth: &BasicAuth, user: &str, password: &str) -> bool {
        auth.verify(Some(&header(user, password)))
    }

    fn checks(auth: &BasicAuth) -> usize {
        auth.checks.load(Ordering::Relaxed)
    }

    #[test]
    fn bcrypt_right_and_wrong() {
        let auth = auth(&[ALICE, BOB, UNI]);
        assert!(ok(&auth, "alice", "correct horse"));
        assert!(!ok(&auth, "alice", "correct horse "));
        assert!(!ok(&auth, "alice", ""));
        assert!(ok(&auth, "bob", "b0b:pass"), "password keeps its ':'");
        assert!(!ok(&auth, "bob", "b0b"));
        assert!(ok(&auth, "ünï", "pässwörd"));
        assert!(!ok(&auth, "ünï", "passwords"));
    }

    #[test]
    fn bcrypt_2a_and_2b_prefixes() {
        // Same algorithm as $2y$ for these passwords; htpasswd only writes $2y$.
        for prefix in ["$2a$", "$2b$"] {
            let line = ALICE.replace("$2y$", prefix);
            let auth = auth(&[&line]);
            assert!(ok(&auth, "alice", "correct horse"), "{prefix}");
            assert!(!ok(&auth, "alice", "wrong"), "{prefix}");
        }
    }

    #[test]
    fn bcrypt_reads_72_bytes_like_htpasswd() {
        let auth = auth(&[LONG]);
        assert!(ok(&auth, "long", &"x".repeat(100)));
        assert!(ok(&auth, "long", &format!("{}tail", "x".repeat(72))));
        assert!(!ok(&auth, "long", &"x".repeat(71)));
    }

    #[test]
    fn apr1_and_md5_crypt_right_and_wrong() {
        let auth = auth(&[CAROL, FOO, EMPTY, MD5]);
        assert!(ok(&auth, "carol", "c@rol pw"));
        assert!(!ok(&auth, "carol", "c@rol pW"));
        assert!(ok(&auth, "foo", "bar"));
        assert!(!ok(&auth, "foo", "baz"));
        assert!(ok(&auth, "empty", ""));
        assert!(!ok(&auth, "empty", " "));
        assert!(ok(&auth, "md5", "md5 crypt pw"));
        assert!(!ok(&auth, "md5", "md5 crypt"));
    }

    #[test]
    fn sha1_right_and_wrong() {
        let auth = auth(&[DAVE]);
        assert!(ok(&auth, "dave", "dave-secret"));
        assert!(!ok(&auth, "dave", "dave-secreT"));
    }

    #[test]
    fn unknown_user_is_refused_after_a_decoy_check() {
        let auth = auth(&[DAVE, CAROL, ALICE]);
        assert!(!ok(&auth, "mallory", "correct horse"));
        assert!(!ok(&auth, "Alice", "correct horse"));
        assert_eq!(checks(&auth), 2, "unknown users still pay a full check");
        // The decoy is the dearest hash: the bcrypt one.
        assert!(matches!(auth.users.decoy, Hash::Bcrypt { cost: 5, .. }));
    }

    #[test]
    fn malformed_headers_are_refused() {
        let auth = auth(&[DAVE]);
        let token = STANDARD.encode("dave:dave-secret");
        let huge = format!(
            "Basic {}",
            STANDARD.encode(format!("dave:{}", "a".repeat(5000)))
        );
        let refused: Vec<Vec<u8>> = vec![
            Vec::new(),
            b"Basic".to_vec(),
            b"Basic ".to_vec(),
            b"Basic !!!!".to_vec(),
            format!("Bearer {token}").into_bytes(),
            format!("Basic{token}").into_bytes(),
            format!("Basic {}", STANDARD.encode("dave")).into_bytes(),
            format!("Basic {}", STANDARD.encode(b"\xffdave:dave-secret")).into_bytes(),
            vec![0xff, 0xfe, b' ', 0x80],
            huge.into_bytes(),
            b"Basic "
                .iter()
                .copied()
                .chain(std::iter::repeat_n(b'A', 1 << 20))
                .collect(),
        ];
        assert!(!auth.verify(None));
        for value in &refused {
            assert!(
                !auth.verify(Some(value)),
                "{:?}",
                String::from_utf8_lossy(&value[..value.len().min(40)])
            );
        }
    }

    #[test]
    fn scheme_case_spaces_and_padding_are_tolerated() {
        let auth = auth(&[DAVE]);
        let token = STANDARD.encode("dave:dave-secret");
        for value in [
            format!("basic {token}"),
            format!("BASIC\t{token}"),
            format!("  Basic    {token}  "),
            format!("Basic {}", token.trim_end_matches('=')),
        ] {
            assert!(auth.verify(Some(value.as_bytes())), "{value:?}");
        }
    }

    #[test]
    fn garbage_headers_never_panic() {
        let auth = auth(&[DAVE]);
        let mut state = 0x2545_f491_4f6c_dd1d_u64;
        for round in 0..2000 {
            let mut value = if round % 2 == 0 {
                b"Basic ".to_vec()
            } else {
                Vec::new()
            };
            for _ in 0..(round % 97) {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                value.push(state.to_le_bytes()[0]);
            }
            assert!(!auth.verify(Some(&value)));
        }
    }

    #[test]
    fn auth_map_format() {
        let data = BTreeMap::from([
            (
                "dave".to_owned(),
                b"{SHA}Ztuad/ftNAIlMYv8uco6C0z8hVQ=\n".to_vec(),
            ),
            (
                "foo".to_owned(),
                b"$apr1$xdMAfib4$Y1tRqdFR4EDo6wOlX.dOV.".to_vec(),
            ),
        ]);
        let users = Users::parse(Format::AuthMap, &data).map_err(|e| e.to_string());
        let auth = BasicAuth::new("map", users.unwrap_or_else(|e| panic!("{e}")));
        assert_eq!(auth.users.len(), 2);
        assert!(ok(&auth, "dave", "dave-secret"));
        assert!(ok(&auth, "foo", "bar"));
        assert!(!ok(&auth, "foo", "dave-secret"));
        // The file key has no special meaning in a map.
        assert!(Users::parse(Format::AuthMap, &file(&[FOO])).is_err());
    }

    #[test]
    fn auth_map_errors() {
        let error = |key: &str, value: &[u8]| {
            let data = BTreeMap::from([(key.to_owned(), value.to_vec())]);
            Users::parse(Format::AuthMap, &data)
                .map(|_| ())
                .unwrap_err()
                .to_string()
        };
        assert!(error("a:b", b"{SHA}Ztuad/ftNAIlMYv8uco6C0z8hVQ=").contains("\"a:b\""));
        assert!(error("", b"{SHA}Ztuad/ftNAIlMYv8uco6C0z8hVQ=").contains("empty"));
        assert!(error("eve", b"\xff\xfe").contains("\"eve\""));
        let plain = error("eve", b"hunter2");
        assert!(
            plain.contains("\"eve\"") && plain.contains("htpasswd -p"),
            "{plain}"
        );
        assert!(!plain.contains("hunter2"), "{plain}");
        let empty = Users::parse(Format::AuthMap, &BTreeMap::new())
            .map(|_| ())
            .unwrap_err();
        assert!(matches!(empty, UsersError::NoUsers));
    }

    #[test]
    fn file_tolerates_comments_blank_lines_and_crlf() {
        let text = format!("# users\r\n\r\n   \n{DAVE}\r\n{FOO}:extra field\r\n#{CAROL}\n");
        let data = BTreeMap::from([("auth".to_owned(), text.into_bytes())]);
        let users = Users::parse(Format::AuthFile, &data).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(users.len(), 2);
        let auth = BasicAuth::new("", users);
        assert!(ok(&auth, "dave", "dave-secret"));
        assert!(ok(&auth, "foo", "bar"));
        assert!(!ok(&auth, "carol", "c@rol pw"));
    }

    #[test]
    fn first_line_of_a_duplicate_user_wins_like_nginx() {
        let auth = auth(&[DAVE, "dave:$apr1$xdMAfib4$Y1tRqdFR4EDo6wOlX.dOV."]);
        assert!(ok(&auth, "dave", "dave-secret"));
        assert!(!ok(&auth, "dave", "bar"));
    }

    #[test]
    fn file_errors_name_the_line() {
        assert_eq!(
            Users::parse(Format::AuthFile, &BTreeMap::new())
                .map(|_| ())
                .unwrap_err()
                .to_string(),
            "secret has no `auth` key (auth-secret-type auth-file)"
        );
        assert!(parse_error(&[DAVE, "no colon here"]).starts_with("auth line 2: no ':'"));
        assert!(
            parse_error(&["# c", ":{SHA}Ztuad/ftNAIlMYv8uco6C0z8hVQ="])
                .starts_with("auth line 2: empty user")
        );
        assert!(parse_error(&["# only a comment", ""]).contains("no users"));
        let text = [DAVE.as_bytes(), b"\n\xff:y"].concat();
        let data = BTreeMap::from([("auth".to_owned(), text)]);
        let error = Users::parse(Format::AuthFile, &data)
            .map(|_| ())
            .unwrap_err();
        assert!(matches!(error, UsersError::NotUtf8 { line: 2 }));
    }

    #[test]
    fn refused_formats_name_the_user_and_the_choices() {
        let cases = [
            (DES, "erin", "htpasswd -d", "n./.VF1KXylW6"),
            (PLAIN, "frank", "htpasswd -p", "frankpw"),
            (SHA256, "x", "htpasswd -2", "LTz8RKdMtmpBz2EN"),
            (SHA512, "y", "htpasswd -5", "UD3NQ4j3bUjYlkq3"),
        ];
        for (line, user, flag, secret) in cases {
            let error = parse_error(&[DAVE, line]);
            assert!(error.contains(&format!("user {user:?}")), "{error}");
            assert!(
                error.contains(flag) && error.contains("htpasswd -B"),
                "{error}"
            );
            assert!(!error.contains(secret), "{error}");
        }
    }

    #[test]
    fn malformed_hashes_of_known_kinds() {
        let cases = [
            ("a:$2y$05$tooShort", "malformed bcrypt"),
            ("a:$apr1$nodigest", "malformed apr1 MD5"),
            (
                "a:$apr1$saltsaltsalt$gbhDfQvPs/jOWcQan4oxJ0",
                "malformed apr1 MD5",
            ),
            ("a:$1$salt$short", "malformed MD5-crypt"),
            ("a:{SHA}bm90IDIwIGJ5dGVz", "malformed {SHA}"),
            ("a:{SHA}***", "malformed {SHA}"),
        ];
        for (line, expected) in cases {
            let error = parse_error(&[line]);
            assert!(
                error.starts_with("user \"a\": ") && error.contains(expected),
                "{error}"
            );
        }
        let dear = ALICE.replace("$2y$05$", "$2y$18$");
        assert!(parse_error(&[&dear]).contains("cost"));
    }

    #[test]
    fn success_is_cached_and_failure_is_not() {
        let auth = auth(&[ALICE]);
        assert!(ok(&auth, "alice", "correct horse"));
        assert!(ok(&auth, "alice", "correct horse"));
        assert_eq!(checks(&auth), 1, "second success came from the cache");
        assert!(!ok(&auth, "alice", "wrong"));
        assert!(!ok(&auth, "alice", "wrong"));
        assert_eq!(checks(&auth), 3, "failures are checked every time");
        assert_eq!(auth.cache.len(), 1);
    }

    #[test]
    fn cache_entries_expire() {
        let auth = auth(&[DAVE]);
        let value = header("dave", "dave-secret");
        let start = Instant::now();
        assert!(auth.verify_at(Some(&value), start));
        assert!(auth.verify_at(Some(&value), start + CACHE_TTL - Duration::from_secs(1)));
        assert_eq!(checks(&auth), 1);
        assert!(auth.verify_at(Some(&value), start + CACHE_TTL));
        assert_eq!(checks(&auth), 2, "expired entry was checked again");
    }

    #[test]
    fn short_ttl_constructor_expires_entries() {
        let auth = BasicAuth::with_ttl("t", users(&[DAVE]), Duration::from_millis(1));
        let value = header("dave", "dave-secret");
        let start = Instant::now();
        assert!(auth.verify_at(Some(&value), start));
        assert!(auth.verify_at(Some(&value), start + Duration::from_millis(2)));
        assert_eq!(checks(&auth), 2);
    }

    #[test]
    fn cache_is_bounded_and_keeps_the_newest() {
        let cache = Cache::new(CACHE_TTL);
        let start = Instant::now();
        let mut last = None;
        for i in 0..5000_u32 {
            let tag = cache.tag(b"user", &i.to_le_bytes());
            let tag = tag.unwrap_or_else(|| panic!("no cache key"));
            cache.insert(tag, start + Duration::from_millis(u64::from(i)));
            last = Some(tag);
        }
        assert!(
            cache.len() <= CACHE_SHARDS * SHARD_CAPACITY,
            "{}",
            cache.len()
        );
        assert!(cache.len() > CACHE_SHARDS * SHARD_CAPACITY / 2);
        let last = last.unwrap_or_else(|| panic!("nothing inserted"));
        assert!(cache.hit(&last, start + Duration::from_secs(5)));
    }

    #[test]
    fn a_new_verifier_does_not_share_the_cache() {
        let first = auth(&[DAVE]);
        let second = auth(&[DAVE]);
        assert_ne!(
            first.cache.tag(b"dave", b"p"),
            second.cache.tag(b"dave", b"p")
        );
    }

    #[test]
    fn challenge_escapes_the_realm() {
        let value = |realm: &str| BasicAuth::new(realm, users(&[DAVE])).challenge().clone();
        assert_eq!(value(""), "Basic realm=\"\"");
        assert_eq!(
            value("Authentication Required - foo"),
            "Basic realm=\"Authentication Required - foo\""
        );
        assert_eq!(value(r#"say "hi" \o/"#), r#"Basic realm="say \"hi\" \\o/""#);
        assert_eq!(value("a\r\nb"), "Basic realm=\"a  b\"");
        assert_eq!(
            value("Zürich").as_bytes(),
            "Basic realm=\"Zürich\"".as_bytes()
        );
    }

    #[test]
    fn verifier_is_shareable_across_threads() {
        fn shareable<T: Send + Sync>() {}
        shareable::<BasicAuth>();
        let auth = std::sync::Arc::new(auth(&[DAVE]));
        let handles: Vec<_> = (0..4)
            .map(|_| {
                let auth = auth.clone();
                std::thread::spawn(move || (0..50).all(|_| ok(&auth, "dave", "dave-secret")))
            })
            .collect();
        for handle in handles {
            assert!(handle.join().unwrap_or(false));
        }
    }
}
