//! Built-in plugin `headers`: static request and response header edits.
//!
//! - `wasmgress.io/request-headers`, `wasmgress.io/response-headers`: a JSON or YAML document
//!   with `set` (name -> value), `add` (name -> value or list of values) and `remove` (list of
//!   names). Edits are emitted in a fixed order, whatever order the document uses: `remove`,
//!   then `set`, then `add`. Values are literal text (no variables).
//! - ingress-nginx's `upstream-vhost` (sets the `Host` sent upstream) and `x-forwarded-prefix`
//!   (sets `X-Forwarded-Prefix`).
//! - ingress-nginx's `custom-headers` names a ConfigMap, which plugins cannot read: refused
//!   with a diagnostic pointing at `wasmgress.io/response-headers`.
//!
//! This crate owns parsing and validation only; the host applies the edits natively.
#![cfg_attr(target_arch = "wasm32", no_std)]

extern crate alloc;

pub mod doc;

use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;
use doc::Node;
use wasmgress_plugin_sdk::validate::{check_header_name, is_header_value};
use wasmgress_plugin_sdk::{
    Diagnostic, Diagnostics, Directive, HeaderEdit, HeaderValue, Info, Plugin, Policy, Settings,
    export_plugin, info,
};

/// Our request header edits.
pub const REQUEST: &str = "wasmgress.io/request-headers";
/// Our response header edits.
pub const RESPONSE: &str = "wasmgress.io/response-headers";
/// ingress-nginx `upstream-vhost`.
pub const UPSTREAM_VHOST: &str = "nginx.ingress.kubernetes.io/upstream-vhost";
/// ingress-nginx `x-forwarded-prefix`.
pub const X_FORWARDED_PREFIX: &str = "nginx.ingress.kubernetes.io/x-forwarded-prefix";
/// ingress-nginx `custom-headers`.
pub const CUSTOM_HEADERS: &str = "nginx.ingress.kubernetes.io/custom-headers";

fn scalar<'a>(node: &'a Node, what: &str) -> Result<&'a str, String> {
    match node {
        Node::Scalar(s) => Ok(s),
        _ => Err(format!("{what} must be a single text value")),
    }
}

fn value(name: &str, text: &str) -> Result<HeaderValue, String> {
    if is_header_value(text.as_bytes()) {
        Ok(HeaderValue::text(text))
    } else {
        Err(format!(
            "the value of `{name}` contains a control character (CR, LF, NUL...)"
        ))
    }
}

/// Parse one header document into edits (in the order remove, set, add).
pub fn parse_edits(text: &str) -> Result<Vec<HeaderEdit>, String> {
    let Node::Map(entries) = doc::parse(text)? else {
        return Err(String::from(
            "expected a mapping with `set`, `add` and/or `remove`",
        ));
    };
    let (mut removes, mut sets, mut adds) = (Vec::new(), Vec::new(), Vec::new());
    for (key, node) in &entries {
        match key.as_str() {
            "remove" => {
                let names: Vec<&Node> = match node {
                    Node::List(items) => items.iter().collect(),
                    single @ Node::Scalar(_) => alloc::vec![single],
                    Node::Map(_) => {
                        return Err(String::from("`remove` must be a list of header names"));
                    }
                };
                for n in names {
                    let name = scalar(n, "a header name in `remove`")?;
                    check_header_name(name)?;
                    removes.push(HeaderEdit::remove(name));
                }
            }
            "set" | "add" => {
                let Node::Map(headers) = node else {
                    return Err(format!("`{key}` must map header names to values"));
                };
                for (name, v) in headers {
                    check_header_name(name)?;
                    let values: Vec<&Node> = match (key.as_str(), v) {
                        ("add", Node::List(items)) => items.iter().collect(),
                        _ => alloc::vec![v],
                    };
                    for item in values {
                        let text = scalar(item, &format!("the value of `{name}`"))?;
                        let hv = value(name, text)?;
                        if key == "set" {
                            sets.push(HeaderEdit::set(name.as_str(), hv));
                        } else {
                            adds.push(HeaderEdit::append(name.as_str(), hv));
                        }
                    }
                }
            }
            other => {
                return Err(format!(
                    "unknown key `{other}` (expected `set`, `add` or `remove`)"
                ));
            }
        }
    }
    removes.extend(sets);
    removes.extend(adds);
    Ok(removes)
}

/// Validate an `upstream-vhost`: a host name or IP, with an optional port. nginx variables are
/// refused (they would never be expanded here).
pub fn parse_vhost(value: &str) -> Result<String, String> {
    let v = value.trim();
    if v.contains('$') {
        return Err(format!(
            "`{v}`: nginx variables are not supported in upstream-vhost"
        ));
    }
    let ok = !v.is_empty()
        && v.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | ':' | '[' | ']' | '_'));
    if ok {
        Ok(String::from(v))
    } else {
        Err(format!("`{v}` is not a host name (with an optional :port)"))
    }
}

/// Turn the owned annotations into a policy.
pub fn policy(annotations: &Settings) -> Result<Policy, Vec<Diagnostic>> {
    let mut diags = Diagnostics::default();
    let mut policy = Policy::default();
    type Edit = fn(HeaderEdit) -> Directive;
    let lists: [(&str, Edit); 2] = [
        (REQUEST, Directive::RequestHeader),
        (RESPONSE, Directive::ResponseHeader),
    ];
    for (key, directive) in lists {
        if let Some(text) = annotations.get(key) {
            match parse_edits(text) {
                Ok(parsed) => policy.directives.extend(parsed.into_iter().map(directive)),
                Err(why) => diags.error(key, why),
            }
        }
    }
    if let Some(v) = annotations.get(UPSTREAM_VHOST) {
        match parse_vhost(v) {
            Ok(host) => {
                let edit = HeaderEdit::set("host", HeaderValue::text(host));
                policy.push(Directive::RequestHeader(edit));
            }
            Err(why) => diags.error(UPSTREAM_VHOST, why),
        }
    }
    if let Some(v) = annotations.get(X_FORWARDED_PREFIX) {
        match value("X-Forwarded-Prefix", v.trim()) {
            Ok(hv) => {
                let edit = HeaderEdit::set("x-forwarded-prefix", hv);
                policy.push(Directive::RequestHeader(edit));
            }
            Err(why) => diags.error(X_FORWARDED_PREFIX, why),
        }
    }
    if let Some(v) = annotations.get(CUSTOM_HEADERS) {
        diags.error(
            CUSTOM_HEADERS,
            format!(
                "refers to ConfigMap `{}`, which plugins cannot read; list the headers in {RESPONSE} instead",
                v.trim()
            ),
        );
    }
    diags.finish(policy)
}

struct Headers;

impl Plugin for Headers {
    type Config = ();

    fn info() -> Info {
        info(
            "headers",
            env!("CARGO_PKG_VERSION"),
            &[
                REQUEST,
                RESPONSE,
                UPSTREAM_VHOST,
                X_FORWARDED_PREFIX,
                CUSTOM_HEADERS,
            ],
            &[],
            &[],
        )
    }

    fn configure(annotations: &Settings) -> Result<(Policy, ()), Vec<Diagnostic>> {
        policy(annotations).map(|p| (p, ()))
    }
}

export_plugin!(Headers);

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::vec;
    use wasmgress_plugin_sdk::Header;

    #[test]
    fn yaml_document_in_fixed_order() {
        let edits =
            parse_edits("add:\n  X-Tag: [a, b]\nset:\n  X-Frame-Options: DENY\nremove: [Server]\n")
                .expect("valid");
        assert_eq!(
            edits,
            vec![
                HeaderEdit::remove("Server"),
                HeaderEdit::set("X-Frame-Options", HeaderValue::text("DENY")),
                HeaderEdit::append("X-Tag", HeaderValue::text("a")),
                HeaderEdit::append("X-Tag", HeaderValue::text("b")),
            ]
        );
    }

    #[test]
    fn json_document() {
        let edits = parse_edits(r#"{"set": {"X-A": "1"}, "remove": "X-B"}"#).expect("valid");
        assert_eq!(edits.len(), 2);
        assert!(matches!(&edits[1], HeaderEdit::Set(Header { name, .. }) if name == "X-A"));
    }

    #[test]
    fn bad_documents_refused() {
        for bad in [
            "set: {Bad Name: x}",
            "set: {Transfer-Encoding: chunked}",
            "rename: {X-A: X-B}",
            r#"{"set": {"X-A": "a\u000db"}}"#,
            "set: {X-A: [a, b]}",
            "[X-A]",
        ] {
            assert!(parse_edits(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn nginx_keys() {
        let p = policy(&Settings::from_pairs(&[
            (UPSTREAM_VHOST, "internal.svc:8080"),
            (X_FORWARDED_PREFIX, "/api"),
        ]))
        .expect("valid");
        assert_eq!(
            p.request_headers().cloned().collect::<Vec<_>>(),
            vec![
                HeaderEdit::set("host", HeaderValue::text("internal.svc:8080")),
                HeaderEdit::set("x-forwarded-prefix", HeaderValue::text("/api")),
            ]
        );
        let e = policy(&Settings::from_pairs(&[
            (UPSTREAM_VHOST, "$service.svc"),
            (CUSTOM_HEADERS, "default/extra"),
        ]))
        .expect_err("refused");
        let keys: Vec<&str> = e.iter().map(|d| d.key.as_str()).collect();
        assert_eq!(keys, [UPSTREAM_VHOST, CUSTOM_HEADERS]);
    }
}
