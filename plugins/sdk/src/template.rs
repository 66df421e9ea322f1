//! nginx-style `$variable` templates, restricted to the variables the host can substitute
//! ([`RequestVariable`]). Used by plugins that accept header values or redirect targets with
//! variables; anything else is refused, never passed through.

use crate::{RequestVariable, TemplatePart};
use alloc::string::{String, ToString};
use alloc::vec::Vec;
use core::fmt;

/// Why a template was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TemplateError {
    /// `$name` with a name the host does not substitute (nginx would have).
    UnknownVariable(String),
    /// A `$` not followed by a variable name, or an unclosed `${`.
    BadDollar,
}

impl fmt::Display for TemplateError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TemplateError::UnknownVariable(name) => write!(
                f,
                "variable `${name}` is not supported (only {VARIABLES} are)"
            ),
            TemplateError::BadDollar => {
                write!(f, "`$` must start a variable name ({VARIABLES})")
            }
        }
    }
}

/// The variables the host substitutes, for error messages.
const VARIABLES: &str =
    "$host, $http_host, $remote_addr, $scheme, $request_uri, $escaped_request_uri, $request_method";

/// The host-substituted variable called `name` (nginx spelling), if any.
pub fn variable(name: &str) -> Option<RequestVariable> {
    match name {
        "host" => Some(RequestVariable::Host),
        "remote_addr" => Some(RequestVariable::RemoteAddr),
        "scheme" => Some(RequestVariable::Scheme),
        "request_uri" => Some(RequestVariable::RequestUri),
        "escaped_request_uri" => Some(RequestVariable::EscapedRequestUri),
        "http_host" => Some(RequestVariable::Authority),
        "request_method" => Some(RequestVariable::RequestMethod),
        _ => None,
    }
}

/// Split `text` into literals and variables (`$name` or `${name}`; names are
/// `[A-Za-z0-9_]+`). Adjacent literals are merged; an empty text gives no parts. Request
/// headers (`$http_<name>`) are refused: header edits and redirects cannot read them (see
/// [`parse_with_headers`]).
pub fn parse(text: &str) -> Result<Vec<TemplatePart>, TemplateError> {
    parse_as(text, false)
}

/// As [`parse`], also accepting `$http_<name>` (a request header: `$http_x_api_key` is
/// `x-api-key`), for templates only external authentication renders (its URL, sign-in URL,
/// cache key).
pub fn parse_with_headers(text: &str) -> Result<Vec<TemplatePart>, TemplateError> {
    parse_as(text, true)
}

fn parse_as(text: &str, headers: bool) -> Result<Vec<TemplatePart>, TemplateError> {
    let mut parts = Vec::new();
    let mut literal = String::new();
    let mut rest = text;
    while let Some(pos) = rest.find('$') {
        literal.push_str(&rest[..pos]);
        let after = &rest[pos + 1..];
        let (name, tail) = if let Some(braced) = after.strip_prefix('{') {
            let end = braced.find('}').ok_or(TemplateError::BadDollar)?;
            (&braced[..end], &braced[end + 1..])
        } else {
            let end = after
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(after.len());
            (&after[..end], &after[end..])
        };
        if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            return Err(TemplateError::BadDollar);
        }
        let part = match (variable(name), name.strip_prefix("http_")) {
            (Some(var), _) => TemplatePart::Variable(var),
            (None, Some(header)) if headers && !header.is_empty() => {
                TemplatePart::Header(header.replace('_', "-").to_ascii_lowercase())
            }
            _ => return Err(TemplateError::UnknownVariable(name.to_string())),
        };
        if !literal.is_empty() {
            parts.push(TemplatePart::Literal(core::mem::take(&mut literal)));
        }
        parts.push(part);
        rest = tail;
    }
    literal.push_str(rest);
    if !literal.is_empty() {
        parts.push(TemplatePart::Literal(literal));
    }
    Ok(parts)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn literals_and_variables() {
        let parts = parse("https://example.com$request_uri").expect("valid");
        assert_eq!(
            parts,
            alloc::vec![
                TemplatePart::Literal("https://example.com".into()),
                TemplatePart::Variable(RequestVariable::RequestUri),
            ]
        );
        assert_eq!(
            parse("${scheme}://x").expect("valid"),
            alloc::vec![
                TemplatePart::Variable(RequestVariable::Scheme),
                TemplatePart::Literal("://x".into()),
            ]
        );
        assert!(parse("").expect("valid").is_empty());
    }

    #[test]
    fn unknown_and_dangling_refused() {
        assert_eq!(
            parse("$http_cookie"),
            Err(TemplateError::UnknownVariable("http_cookie".into()))
        );
        assert_eq!(
            parse_with_headers("$http_x_api_key$http_host"),
            Ok(alloc::vec![
                TemplatePart::Header("x-api-key".into()),
                TemplatePart::Variable(RequestVariable::Authority),
            ])
        );
        assert_eq!(parse("a$"), Err(TemplateError::BadDollar));
        assert_eq!(parse("${host"), Err(TemplateError::BadDollar));
        assert_eq!(parse("$-"), Err(TemplateError::BadDollar));
    }
}
