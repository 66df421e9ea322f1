//! Header name and value checks shared by the built-in plugins, so that a bad header is
//! reported at compile time with the annotation that caused it instead of failing per request.
//! The host checks again when it converts a policy; these are the plugin-side, friendlier half.

/// Headers the proxy manages itself: a plugin's static edits may not touch them, because
/// changing them would break message framing or connection management.
pub const RESERVED_HEADERS: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-connection",
    "transfer-encoding",
    "upgrade",
    "te",
    "trailer",
    "content-length",
];

/// RFC 9110 token: a valid header name.
pub fn is_header_name(name: &str) -> bool {
    !name.is_empty()
        && name.bytes().all(|b| {
            b.is_ascii_alphanumeric()
                || matches!(
                    b,
                    b'!' | b'#'
                        | b'$'
                        | b'%'
                        | b'&'
                        | b'\''
                        | b'*'
                        | b'+'
                        | b'-'
                        | b'.'
                        | b'^'
                        | b'_'
                        | b'`'
                        | b'|'
                        | b'~'
                )
        })
}

/// A valid header value: visible ASCII, space, tab and obs-text; no CR, LF, NUL or other
/// control characters (which would allow header injection).
pub fn is_header_value(value: &[u8]) -> bool {
    value
        .iter()
        .all(|&b| b == b'\t' || (b' '..=b'~').contains(&b) || b >= 0x80)
}

/// True when `name` is one of [`RESERVED_HEADERS`] (case-insensitive).
pub fn is_reserved(name: &str) -> bool {
    RESERVED_HEADERS
        .iter()
        .any(|r| r.eq_ignore_ascii_case(name))
}

/// Check a header name for a static edit: `Err(why)` if invalid or reserved.
pub fn check_header_name(name: &str) -> Result<(), alloc::string::String> {
    if !is_header_name(name) {
        Err(alloc::format!("`{name}` is not a valid header name"))
    } else if is_reserved(name) {
        Err(alloc::format!(
            "header `{name}` is managed by the proxy and cannot be edited"
        ))
    } else {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert!(is_header_name("X-Request-Id"));
        assert!(!is_header_name("X Bad"));
        assert!(!is_header_name(""));
        assert!(!is_header_name("x:y"));
        assert!(check_header_name("Transfer-Encoding").is_err());
        assert!(check_header_name("x-ok").is_ok());
    }

    #[test]
    fn values() {
        assert!(is_header_value(b"a b\tc"));
        assert!(!is_header_value(b"a\r\nb"));
        assert!(!is_header_value(b"a\0"));
    }
}
