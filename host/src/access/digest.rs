//! HTTP Digest authentication (RFC 7616 with MD5, as nginx's auth_digest module that
//! ingress-nginx builds in does it) for `auth-type: digest`: the Secret's `auth` key holds an
//! `htdigest` file (`user:realm:HA1` lines, HA1 = MD5 of `user:realm:password`).
//!
//! Owns the challenge (a fresh nonce per 401) and the check of a `Digest` Authorization:
//! realm, a nonce this proxy issued and that has not expired (nonces are stateless: a time and
//! an HMAC of it under a per-route random key), the request target the response was computed
//! for, and the response itself, compared in constant time. An unknown user costs the same
//! as a known one. A nonce can be replayed until it expires (nginx's module tracks nonce
//! counts in shared memory; over TLS a response cannot be captured to replay). This module
//! must not touch routing or the proxy; it only reads credentials.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use md5::Digest as _;
use subtle::ConstantTimeEq as _;

/// How long a nonce is honoured; past it the client is challenged again with `stale=true`,
/// which browsers answer without asking the user.
const NONCE_LIFETIME: Duration = Duration::from_secs(300);
/// Longest Authorization header considered.
const MAX_HEADER: usize = 4096;

/// Why an htdigest Secret cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum DigestUsersError {
    #[error("the Secret has no `auth` key (an htdigest file: user:realm:HA1 lines)")]
    MissingAuthKey,
    #[error("line {0} is not `user:realm:HA1` with HA1 32 hexadecimal digits")]
    BadLine(usize),
    #[error("line {line}: realm `{realm}` is not the auth-realm `{expected}`")]
    WrongRealm {
        line: usize,
        realm: String,
        expected: String,
    },
    #[error("the htdigest file lists no user")]
    NoUsers,
}

/// A route's digest users and nonce key.
pub struct DigestAuth {
    realm: String,
    /// HA1 by user name.
    users: HashMap<String, [u8; 16]>,
    key: ring::hmac::Key,
}

impl std::fmt::Debug for DigestAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DigestAuth")
            .field("realm", &self.realm)
            .field("users", &self.users.len())
            .finish_non_exhaustive()
    }
}

fn hex16(s: &str) -> Option<[u8; 16]> {
    if s.len() != 32 {
        return None;
    }
    let mut out = [0u8; 16];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(s.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn md5_hex(parts: &[&[u8]]) -> String {
    let mut h = md5::Md5::new();
    for (i, p) in parts.iter().enumerate() {
        if i > 0 {
            h.update(b":");
        }
        h.update(p);
    }
    hex(&h.finalize())
}

impl DigestAuth {
    /// Users from the Secret's `auth` key; every line's realm must be `realm`.
    pub fn new(realm: &str, data: &BTreeMap<String, Vec<u8>>) -> Result<Self, DigestUsersError> {
        let file = data.get("auth").ok_or(DigestUsersError::MissingAuthKey)?;
        let text = String::from_utf8_lossy(file);
        let mut users = HashMap::new();
        for (i, line) in text.lines().enumerate() {
            let line = line.trim_end_matches('\r');
            if line.trim().is_empty() || line.starts_with('#') {
                continue;
            }
            let mut fields = line.splitn(3, ':');
            let (Some(user), Some(line_realm), Some(ha1)) =
                (fields.next(), fields.next(), fields.next())
            else {
                return Err(DigestUsersError::BadLine(i + 1));
            };
            let ha1 = hex16(ha1.trim()).ok_or(DigestUsersError::BadLine(i + 1))?;
            if user.is_empty() {
                return Err(DigestUsersError::BadLine(i + 1));
            }
            if line_realm != realm {
                return Err(DigestUsersError::WrongRealm {
                    line: i + 1,
                    realm: line_realm.to_string(),
                    expected: realm.to_string(),
                });
            }
            users.entry(user.to_string()).or_insert(ha1);
        }
        if users.is_empty() {
            return Err(DigestUsersError::NoUsers);
        }
        let rng = ring::rand::SystemRandom::new();
        let key = ring::hmac::Key::generate(ring::hmac::HMAC_SHA256, &rng)
            .map_err(|_| DigestUsersError::NoUsers)?;
        Ok(DigestAuth {
            realm: realm.to_string(),
            users,
            key,
        })
    }

    fn now() -> u64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs())
    }

    /// A nonce for `at` (seconds since the epoch): the time and its MAC, URL-safe base64.
    fn nonce_at(&self, at: u64) -> String {
        let tag = ring::hmac::sign(&self.key, &at.to_be_bytes());
        let mut raw = at.to_be_bytes().to_vec();
        raw.extend_from_slice(&tag.as_ref()[..16]);
        URL_SAFE_NO_PAD.encode(raw)
    }

    /// Whether `nonce` is ours and still fresh at `now`: `Some(true)` fresh, `Some(false)`
    /// ours but expired (`stale`), `None` not ours.
    fn nonce_fresh(&self, nonce: &str, now: u64) -> Option<bool> {
        let raw = URL_SAFE_NO_PAD.decode(nonce).ok()?;
        let (at, tag) = raw.split_at_checked(8)?;
        let at_bytes: [u8; 8] = at.try_into().ok()?;
        let expected = ring::hmac::sign(&self.key, at);
        if !bool::from(expected.as_ref()[..16].ct_eq(tag)) {
            return None;
        }
        let at = u64::from_be_bytes(at_bytes);
        Some(now.saturating_sub(at) <= NONCE_LIFETIME.as_secs() && at <= now + 5)
    }

    /// The `WWW-Authenticate` value of a 401: a fresh nonce; `stale` when the client's nonce
    /// only expired (it may retry without asking its user).
    pub fn challenge(&self, stale: bool) -> http::HeaderValue {
        let realm = self.realm.replace(['"', '\\'], "");
        let mut value = format!(
            "Digest realm=\"{realm}\", nonce=\"{}\", qop=\"auth\", algorithm=MD5",
            self.nonce_at(Self::now())
        );
        if stale {
            value.push_str(", stale=true");
        }
        http::HeaderValue::from_str(&value)
            .unwrap_or_else(|_| http::HeaderValue::from_static("Digest qop=\"auth\""))
    }

    /// Check a `Digest` Authorization for a request of `method` to `target` (the request
    /// target as sent). `Err(stale)` refuses; `stale` is true when only the nonce expired.
    pub fn verify(
        &self,
        authorization: Option<&[u8]>,
        method: &str,
        target: &str,
    ) -> Result<(), bool> {
        self.verify_at(authorization, method, target, Self::now())
    }

    fn verify_at(
        &self,
        authorization: Option<&[u8]>,
        method: &str,
        target: &str,
        now: u64,
    ) -> Result<(), bool> {
        let header = authorization
            .filter(|h| h.len() <= MAX_HEADER)
            .and_then(|h| std::str::from_utf8(h).ok())
            .ok_or(false)?;
        let params = parse_digest(header).ok_or(false)?;
        let get = |k: &str| params.get(k).map(String::as_str);
        let (Some(user), Some(realm), Some(nonce), Some(uri), Some(response)) = (
            get("username"),
            get("realm"),
            get("nonce"),
            get("uri"),
            get("response"),
        ) else {
            return Err(false);
        };
        if realm != self.realm || uri != target {
            return Err(false);
        }
        if get("algorithm").is_some_and(|a| !a.eq_ignore_ascii_case("md5")) {
            return Err(false);
        }
        // Unknown users are checked against a zero HA1, so they cost the same.
        let ha1 = self.users.get(user).copied();
        let known = ha1.is_some();
        let ha1 = hex(&ha1.unwrap_or([0; 16]));
        let ha2 = md5_hex(&[method.as_bytes(), uri.as_bytes()]);
        let expected = match get("qop") {
            Some("auth") => {
                let (Some(nc), Some(cnonce)) = (get("nc"), get("cnonce")) else {
                    return Err(false);
                };
                md5_hex(&[
                    ha1.as_bytes(),
                    nonce.as_bytes(),
                    nc.as_bytes(),
                    cnonce.as_bytes(),
                    b"auth",
                    ha2.as_bytes(),
                ])
            }
            None => md5_hex(&[ha1.as_bytes(), nonce.as_bytes(), ha2.as_bytes()]),
            Some(_) => return Err(false),
        };
        let matches = bool::from(expected.as_bytes().ct_eq(response.as_bytes()));
        match self.nonce_fresh(nonce, now) {
            None => Err(false),
            Some(fresh) if matches && known => {
                if fresh {
                    Ok(())
                } else {
                    Err(true)
                }
            }
            Some(_) => Err(false),
        }
    }
}

/// `Digest k=v, k="v", ...` into a map (keys lower-case); `None` for another scheme or a
/// malformed list.
fn parse_digest(header: &str) -> Option<HashMap<String, String>> {
    let header = header.trim();
    let (scheme, rest) = header.split_once(char::is_whitespace)?;
    if !scheme.eq_ignore_ascii_case("digest") {
        return None;
    }
    let mut map = HashMap::new();
    let mut rest = rest.trim_start();
    while !rest.is_empty() {
        let (key, after) = rest.split_once('=')?;
        let key = key.trim().to_ascii_lowercase();
        let after = after.trim_start();
        let (value, tail) = if let Some(quoted) = after.strip_prefix('"') {
            let mut value = String::new();
            let mut chars = quoted.char_indices();
            let mut end = None;
            while let Some((i, c)) = chars.next() {
                match c {
                    '\\' => value.push(chars.next()?.1),
                    '"' => {
                        end = Some(i + 1);
                        break;
                    }
                    c => value.push(c),
                }
            }
            (value, &quoted[end?..])
        } else {
            let end = after.find(',').unwrap_or(after.len());
            (after[..end].trim().to_string(), &after[end..])
        };
        map.insert(key, value);
        rest = tail.trim_start().trim_start_matches(',').trim_start();
    }
    Some(map)
}

#[cfg(test)]
mod tests {
    use super::*;

    const REALM: &str = "Staff";

    fn auth() -> DigestAuth {
        // HA1 = MD5("alice:Staff:secret")
        let ha1 = md5_hex(&[b"alice", REALM.as_bytes(), b"secret"]);
        let file = format!("# users\nalice:{REALM}:{ha1}\n");
        let data = BTreeMap::from([("auth".to_string(), file.into_bytes())]);
        DigestAuth::new(REALM, &data).expect("valid")
    }

    /// What a client computes (RFC 7616 §3.4.1, qop=auth).
    fn header(a: &DigestAuth, user: &str, password: &str, uri: &str, nonce: &str) -> String {
        let ha1 = md5_hex(&[user.as_bytes(), a.realm.as_bytes(), password.as_bytes()]);
        let ha2 = md5_hex(&[b"GET", uri.as_bytes()]);
        let response = md5_hex(&[
            ha1.as_bytes(),
            nonce.as_bytes(),
            b"00000001",
            b"abc",
            b"auth",
            ha2.as_bytes(),
        ]);
        format!(
            r#"Digest username="{user}", realm="{}", nonce="{nonce}", uri="{uri}", qop=auth, nc=00000001, cnonce="abc", response="{response}", algorithm=MD5"#,
            a.realm
        )
    }

    #[test]
    fn right_password_passes_wrong_ones_do_not() {
        let a = auth();
        let now = DigestAuth::now();
        let nonce = a.nonce_at(now);
        let ok = header(&a, "alice", "secret", "/x?y=1", &nonce);
        assert_eq!(
            a.verify_at(Some(ok.as_bytes()), "GET", "/x?y=1", now),
            Ok(())
        );
        let wrong = header(&a, "alice", "nope", "/x?y=1", &nonce);
        assert_eq!(
            a.verify_at(Some(wrong.as_bytes()), "GET", "/x?y=1", now),
            Err(false)
        );
        let stranger = header(&a, "mallory", "secret", "/x?y=1", &nonce);
        assert_eq!(
            a.verify_at(Some(stranger.as_bytes()), "GET", "/x?y=1", now),
            Err(false)
        );
        // Computed for another target or method: refused.
        assert_eq!(
            a.verify_at(Some(ok.as_bytes()), "GET", "/admin", now),
            Err(false)
        );
        assert_eq!(
            a.verify_at(Some(ok.as_bytes()), "POST", "/x?y=1", now),
            Err(false)
        );
        assert_eq!(a.verify_at(None, "GET", "/", now), Err(false));
        assert_eq!(
            a.verify_at(Some(b"Basic YTpi"), "GET", "/", now),
            Err(false)
        );
    }

    #[test]
    fn nonces_are_ours_and_expire() {
        let a = auth();
        let now = DigestAuth::now();
        let old = a.nonce_at(now - NONCE_LIFETIME.as_secs() - 1);
        let h = header(&a, "alice", "secret", "/", &old);
        assert_eq!(
            a.verify_at(Some(h.as_bytes()), "GET", "/", now),
            Err(true),
            "stale"
        );
        let forged = URL_SAFE_NO_PAD.encode([0u8; 24]);
        let h = header(&a, "alice", "secret", "/", &forged);
        assert_eq!(a.verify_at(Some(h.as_bytes()), "GET", "/", now), Err(false));
        let other = auth().nonce_at(now);
        let h = header(&a, "alice", "secret", "/", &other);
        assert_eq!(
            a.verify_at(Some(h.as_bytes()), "GET", "/", now),
            Err(false),
            "another route's nonce"
        );
    }

    #[test]
    fn htdigest_files_are_checked() {
        let data = |t: &str| BTreeMap::from([("auth".to_string(), t.as_bytes().to_vec())]);
        assert!(matches!(
            DigestAuth::new(REALM, &BTreeMap::new()),
            Err(DigestUsersError::MissingAuthKey)
        ));
        assert!(matches!(
            DigestAuth::new(REALM, &data("alice:Staff:xyz")),
            Err(DigestUsersError::BadLine(1))
        ));
        assert!(matches!(
            DigestAuth::new(REALM, &data("alice:Other:00000000000000000000000000000000")),
            Err(DigestUsersError::WrongRealm { line: 1, .. })
        ));
        assert!(matches!(
            DigestAuth::new(REALM, &data("# nobody\n")),
            Err(DigestUsersError::NoUsers)
        ));
    }

    #[test]
    fn challenges_carry_a_fresh_nonce() {
        let a = auth();
        let c = a.challenge(true);
        let text = c.to_str().expect("ascii");
        assert!(
            text.starts_with("Digest realm=\"Staff\", nonce=\""),
            "{text}"
        );
        assert!(text.ends_with("stale=true"), "{text}");
        let params = parse_digest(text).expect("parses");
        assert_eq!(
            a.nonce_fresh(&params["nonce"], DigestAuth::now()),
            Some(true)
        );
    }
}
