//! The request path as routing sees it.
//!
//! This module owns one thing: turning the path of a request target into the path that routing
//! judges the request by. Ingress-nginx matches `location`s against nginx's normalised URI, so an
//! Ingress that sends `/admin` to a guarded backend must catch `/static/../admin`, `//admin` and
//! `/%61dmin` too; matching on the raw bytes would let each of those walk past the rule.
//! [`normalize`] applies nginx's rules (`ngx_http_parse_complex_uri` with `merge_slashes on`):
//! every `%XX` is decoded once, then `.` and `..` segments are resolved (RFC 3986 §5.2.4) and
//! runs of slashes merged, on the decoded bytes, so an escaped `/` or `.` counts as one.
//!
//! What it must not touch: what is sent upstream. The result is only a routing key; the proxy
//! forwards the client's original bytes, as nginx's `proxy_pass` without a URI part does, so that
//! a backend that gives `%2F` a meaning of its own still sees it.
//!
//! It depends on std and `thiserror` only, so the fuzz target (`host/fuzz`) can include this file
//! by path without building the rest of the proxy.

use std::borrow::Cow;

/// Why a request path cannot be normalised (the request is answered 400).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    #[error("the path does not start with '/'")]
    NotAbsolute,
    #[error("a '..' segment climbs above the root")]
    AboveRoot,
    #[error("a '%' is not followed by two hex digits")]
    BadEscape,
    #[error("the path decodes to a NUL byte")]
    Nul,
}

/// The path routing sees: percent-decoded, `.`/`..` resolved (RFC 3986 5.2.4), repeated slashes
/// merged (nginx `merge_slashes on`). `path` is the path part only: the caller splits at `?`.
///
/// A path that is already normal (the common case) is returned borrowed after one scan; any
/// other costs one allocation for the output. A trailing slash is kept (`/a/b/..` is `/a/`).
/// Bytes that decode to invalid UTF-8 come back as U+FFFD: routes are UTF-8, so no route
/// matches those bytes either way, and the replacement never touches a `/` or `.` (ASCII bytes
/// are never part of an invalid sequence), so the segments routing compares are the same.
pub fn normalize(path: &str) -> Result<Cow<'_, str>, PathError> {
    if !path.starts_with('/') {
        return Err(PathError::NotAbsolute);
    }
    if is_normal(path.as_bytes()) {
        return Ok(Cow::Borrowed(path));
    }
    let mut buf = decode(path.as_bytes())?;
    resolve(&mut buf)?;
    Ok(Cow::Owned(into_string(buf)))
}

/// Whether `path` (which starts with `/`) is its own normal form: no escape, no NUL, no empty
/// segment (`//`) and no `.` or `..` segment. One pass; a segment is only looked at when its
/// `/` is reached, so `/a.b/c` and `/.well-known/x` stay on the fast path.
fn is_normal(path: &[u8]) -> bool {
    let mut segment = 1;
    for (i, &b) in path.iter().enumerate().skip(1) {
        match b {
            b'%' | 0 => return false,
            b'/' if matches!(&path[segment..i], b"" | b"." | b"..") => return false,
            b'/' => segment = i + 1,
            _ => {}
        }
    }
    // The last segment may be empty: that is the trailing slash, which is kept.
    !matches!(&path[segment..], b"." | b"..")
}

/// Decodes every `%XX` exactly once: a decoded `%` is a literal byte, never the start of another
/// escape (`%252e` is `%2e`, not `.`), and a decoded `?` or `#` is literal too, as in nginx. A
/// NUL, escaped or not, is refused: nginx refuses it, and it would cut the path short for any
/// consumer that reads it as a C string.
fn decode(path: &[u8]) -> Result<Vec<u8>, PathError> {
    let mut out = Vec::with_capacity(path.len());
    let mut i = 0;
    while i < path.len() {
        let byte = if path[i] == b'%' {
            i += 3;
            unescape(path.get(i - 2..i))?
        } else {
            i += 1;
            path[i - 1]
        };
        if byte == 0 {
            return Err(PathError::Nul);
        }
        out.push(byte);
    }
    Ok(out)
}

/// The byte that the two hex digits after a `%` stand for; `digits` is `None` when the path
/// ends before two follow.
fn unescape(digits: Option<&[u8]>) -> Result<u8, PathError> {
    match digits {
        Some(&[high, low]) => Ok((hex(high)? << 4) | hex(low)?),
        _ => Err(PathError::BadEscape),
    }
}

fn hex(digit: u8) -> Result<u8, PathError> {
    char::from(digit)
        .to_digit(16)
        .map(|value| value as u8)
        .ok_or(PathError::BadEscape)
}

/// Resolves `.` and `..` segments and merges slashes in place on a decoded path that starts with
/// `/`. In place because the result is never longer than the input: the write cursor `out`
/// never passes the read cursor `start`, so the one allocation `decode` made is all it takes.
///
/// `buf[..out]` is the resolved prefix and ends with `/` until the last segment is copied.
/// Resolving is idempotent: its output has no empty, `.` or `..` segment left to remove.
pub(crate) fn resolve(buf: &mut Vec<u8>) -> Result<(), PathError> {
    debug_assert_eq!(buf.first(), Some(&b'/'));
    let len = buf.len();
    let (mut out, mut start) = (1, 1);
    while start <= len {
        let end = buf[start..]
            .iter()
            .position(|&b| b == b'/')
            .map_or(len, |i| start + i);
        match &buf[start..end] {
            b"" | b"." => {}
            b".." => out = parent(&buf[..out])?,
            _ => {
                buf.copy_within(start..end, out);
                out += end - start;
                if end < len {
                    buf[out] = b'/';
                    out += 1;
                }
            }
        }
        start = end + 1;
    }
    buf.truncate(out);
    Ok(())
}

/// The length of `resolved` (which ends with `/`) without its last segment: `/a/b/` gives the
/// length of `/a/`. There is nothing above `/`, so climbing from there is an error (nginx
/// answers 400 too) rather than a silent stop at the root that would hide the attempt.
fn parent(resolved: &[u8]) -> Result<usize, PathError> {
    let (_, without_slash) = resolved.split_last().ok_or(PathError::AboveRoot)?;
    without_slash
        .iter()
        .rposition(|&b| b == b'/')
        .map(|slash| slash + 1)
        .ok_or(PathError::AboveRoot)
}

/// The resolved bytes as a string; see [`normalize`] for why lossy is right for invalid UTF-8.
fn into_string(buf: Vec<u8>) -> String {
    String::from_utf8(buf)
        .unwrap_or_else(|error| String::from_utf8_lossy(error.as_bytes()).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use PathError::{AboveRoot, BadEscape, NotAbsolute, Nul};
    use proptest::prelude::*;

    #[test]
    fn examples() {
        let ok: &[(&str, &str)] = &[
            ("/", "/"),
            ("/a", "/a"),
            ("/a/b/", "/a/b/"),
            ("/a/..", "/"),
            ("/a/.", "/a/"),
            ("/a/b/..", "/a/"),
            ("/.", "/"),
            ("/./", "/"),
            ("//", "/"),
            ("//admin", "/admin"),
            ("/./admin", "/admin"),
            ("/static/../admin", "/admin"),
            ("/%61dmin", "/admin"),
            ("/x/%2e%2e/admin", "/admin"),
            ("/x/%2E%2E/admin", "/admin"),
            ("/a%2F..%2Fadmin", "/admin"),
            ("/a%2f..%2fadmin", "/admin"),
            ("/%2F%2F", "/"),
            ("/%2Fadmin", "/admin"),
            ("/a//b///c", "/a/b/c"),
            ("/a/./b/../c", "/a/c"),
            ("/a/b/../../c/", "/c/"),
            ("/%2e", "/"),
            ("/a/.%2e/", "/"),
            ("/...", "/..."),
            ("/.a/..b/a../a.", "/.a/..b/a../a."),
            ("/a.b/c", "/a.b/c"),
            ("/%252e%252e/x", "/%2e%2e/x"),
            ("/%25", "/%"),
            ("/%3F", "/?"),
            ("/%23", "/#"),
            ("/%c3%a9", "/é"),
            ("/%C3%A9", "/é"),
            ("/é/../ü", "/ü"),
            ("/%ff", "/\u{fffd}"),
            ("/a%ff/..", "/"),
            ("/%ff/%2e%2e", "/"),
        ];
        for &(input, want) in ok {
            assert_eq!(normalize(input).as_deref(), Ok(want), "{input}");
        }
        let err: &[(&str, PathError)] = &[
            ("", NotAbsolute),
            ("a/b", NotAbsolute),
            ("*", NotAbsolute),
            ("%2Fa", NotAbsolute),
            ("/..", AboveRoot),
            ("/../etc/passwd", AboveRoot),
            ("/a/../../b", AboveRoot),
            ("/%2e%2e/x", AboveRoot),
            ("/.%2E", AboveRoot),
            ("/.%2e/", AboveRoot),
            ("/a/..%2F..", AboveRoot),
            ("/%", BadEscape),
            ("/%4", BadEscape),
            ("/%zz", BadEscape),
            ("/%+f", BadEscape),
            ("/a%2", BadEscape),
            ("/%é", BadEscape),
            ("/%00", Nul),
            ("/a%00b", Nul),
            ("/a\0b", Nul),
        ];
        for &(input, want) in err {
            assert_eq!(normalize(input), Err(want), "{input:?}");
        }
    }

    #[test]
    fn normal_paths_are_borrowed() {
        for path in [
            "/",
            "/a",
            "/a/b/",
            "/a.b/c",
            "/.well-known/acme",
            "/a/...",
            "/a./.b",
        ] {
            assert!(
                matches!(normalize(path), Ok(Cow::Borrowed(p)) if p == path),
                "{path}"
            );
        }
        for path in ["//", "/a/.", "/a/..", "/./a", "/%61"] {
            assert!(matches!(normalize(path), Ok(Cow::Owned(_))), "{path}");
        }
    }

    /// The slow path alone, to check that the fast path never changes an answer.
    fn slow(path: &str) -> Result<String, PathError> {
        let mut buf = decode(path.as_bytes())?;
        resolve(&mut buf)?;
        Ok(into_string(buf))
    }

    /// A deliberately different formulation: split at every `%` (each piece after the first must
    /// open with its two hex digits), then split the bytes at `/` and push/pop whole segments.
    fn reference(path: &str) -> Result<String, PathError> {
        if !path.starts_with('/') {
            return Err(NotAbsolute);
        }
        let mut pieces = path.split('%');
        let mut bytes = reference_literal(pieces.next().unwrap_or(""))?;
        for piece in pieces {
            let digits = piece
                .get(..2)
                .filter(|d| d.bytes().all(|b| b.is_ascii_hexdigit()));
            let byte = u8::from_str_radix(digits.ok_or(BadEscape)?, 16).unwrap();
            if byte == 0 {
                return Err(Nul);
            }
            bytes.push(byte);
            bytes.extend(reference_literal(&piece[2..])?);
        }
        let segments: Vec<&[u8]> = bytes[1..].split(|&b| b == b'/').collect();
        let mut stack: Vec<&[u8]> = Vec::new();
        for segment in &segments {
            match *segment {
                b"" | b"." => {}
                b".." => {
                    stack.pop().ok_or(AboveRoot)?;
                }
                name => stack.push(name),
            }
        }
        let last_is_name = !matches!(*segments.last().unwrap(), b"" | b"." | b"..");
        let mut out = b"/".to_vec();
        out.extend(stack.join(&b'/'));
        if !stack.is_empty() && !last_is_name {
            out.push(b'/');
        }
        Ok(String::from_utf8_lossy(&out).into_owned())
    }

    fn reference_literal(text: &str) -> Result<Vec<u8>, PathError> {
        if text.contains('\0') {
            Err(Nul)
        } else {
            Ok(text.as_bytes().to_vec())
        }
    }

    /// Paths built from the pieces that matter: slashes, dots, escapes of both, of `%` and of
    /// NUL, broken escapes, UTF-8 halves, and plain letters and hex digits that can complete a
    /// lone `%`. Half are drawn without escapes or NUL, so that the fast path's own check (which
    /// any `%` bypasses) is exercised on dot segments too. Most start with `/` so that most
    /// inputs get past the first check.
    fn paths() -> impl Strategy<Value = String> {
        const PLAIN: &[&str] = &["/", "/", "/..", "/.", ".", "..", "a", "b", ".a", "é", "?"];
        const ESCAPES: &[&str] = &[
            "%", "2", "e", "E", "f", "F", "0", "%2e", "%2E", "%2e%2e", "%2f", "%2F", "%25", "%00",
            "%zz", "%c3", "%a9", "%ff", "\0",
        ];
        let plain = prop::sample::select(PLAIN);
        let any = prop_oneof![plain.clone(), prop::sample::select(ESCAPES)];
        let body = prop_oneof![
            prop::collection::vec(plain, 0..24),
            prop::collection::vec(any, 0..24),
        ];
        (prop::bool::weighted(0.95), body).prop_map(|(slash, pieces)| {
            let start = if slash { "/" } else { "" };
            format!("{start}{}", pieces.concat())
        })
    }

    /// No empty, `.` or `..` segment, except that the last may be empty (the trailing slash).
    fn is_segment_clean(path: &str) -> bool {
        let segments: Vec<&str> = path[1..].split('/').collect();
        let (last, inner) = segments.split_last().unwrap();
        inner.iter().all(|s| !matches!(*s, "" | "." | "..")) && !matches!(*last, "." | "..")
    }

    proptest! {
        #[test]
        fn agrees_with_reference(path in paths()) {
            prop_assert_eq!(normalize(&path).map(Cow::into_owned), reference(&path));
        }

        #[test]
        fn agrees_with_reference_on_any_text(text in any::<String>()) {
            let path = format!("/{text}");
            prop_assert_eq!(normalize(&path).map(Cow::into_owned), reference(&path));
        }

        #[test]
        fn fast_path_is_the_slow_path(path in paths()) {
            if path.starts_with('/') {
                prop_assert_eq!(normalize(&path).map(Cow::into_owned), slow(&path));
            }
        }

        #[test]
        fn output_is_normal(path in paths()) {
            if let Ok(normal) = normalize(&path) {
                prop_assert!(normal.starts_with('/'));
                prop_assert!(!normal.contains("//"), "{}", normal);
                prop_assert!(is_segment_clean(&normal), "{}", normal);
            }
        }

        /// Idempotence, stated where it holds. `resolve` is idempotent on every output. The
        /// whole of `normalize` is not: a decoded `%` is literal (`/%252e` gives `/%2e`), and a
        /// second call would decode it again, so `normalize` is only a fixed point on outputs
        /// with no `%` in them; there it must also take the borrowed fast path.
        #[test]
        fn normalizing_is_idempotent(path in paths()) {
            if let Ok(normal) = normalize(&path) {
                let mut again = normal.as_bytes().to_vec();
                prop_assert_eq!(resolve(&mut again), Ok(()));
                prop_assert_eq!(&again[..], normal.as_bytes());
                if !normal.contains('%') {
                    let twice = normalize(&normal);
                    prop_assert!(matches!(twice, Ok(Cow::Borrowed(p)) if p == normal));
                }
            }
        }
    }
}
