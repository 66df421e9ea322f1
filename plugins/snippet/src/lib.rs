//! Built-in plugin `snippet`: ingress-nginx's `configuration-snippet` and `server-snippet`,
//! translated, never executed.
//!
//! A snippet is parsed with nginx's token rules and only these directives are understood, each
//! turned into a static header edit the host applies natively:
//!
//! | directive | becomes |
//! | --- | --- |
//! | `proxy_set_header Name value;` | request `set` (an empty value removes the header, as in nginx) |
//! | `more_set_input_headers 'Name: value'...;` | request `set` (`'Name:'` removes) |
//! | `add_header Name value [always];` | response `append` |
//! | `more_set_headers 'Name: value'...;` | response `set` (`'Name:'` removes) |
//! | `more_clear_headers Name...;` | response `remove` |
//!
//! Values are literals with, optionally, `$host`, `$remote_addr`, `$scheme` and `$request_uri`.
//! Anything else rejects the whole snippet with a diagnostic naming it: any other directive
//! (Lua, `include`, `load_module`, `return`, `if`...), any other variable, `{` or `}` (no
//! breaking out of the location block), `#` comments (which could hide text from a reader),
//! newlines, control characters or escapes inside values, headers-more options (`-s`, `-t`,
//! `-r`) and header wildcards. `server-snippet` is translated before `configuration-snippet`,
//! so for the same header the location-level snippet wins.
#![cfg_attr(target_arch = "wasm32", no_std)]

extern crate alloc;

use alloc::format;
use alloc::string::{String, ToString};
use alloc::vec::Vec;
use wasmgress_plugin_sdk::validate::check_header_name;
use wasmgress_plugin_sdk::{
    Diagnostic, Diagnostics, Directive, HeaderEdit, HeaderValue, Info, Plugin, Policy, Settings,
    TemplatePart, export_plugin, info, template,
};

/// ingress-nginx `configuration-snippet` (location level).
pub const CONFIGURATION: &str = "nginx.ingress.kubernetes.io/configuration-snippet";
/// ingress-nginx `server-snippet` (server level).
pub const SERVER: &str = "nginx.ingress.kubernetes.io/server-snippet";

const ALLOWED: &str =
    "proxy_set_header, more_set_headers, more_set_input_headers, more_clear_headers and add_header";

/// What a snippet translates to.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Translation {
    pub request: Vec<HeaderEdit>,
    pub response: Vec<HeaderEdit>,
    /// Non-fatal remarks (reported as info diagnostics).
    pub notes: Vec<String>,
}

#[derive(Debug, Clone, PartialEq)]
struct Token {
    text: String,
    quoted: bool,
}

/// Split a snippet into directives (lists of tokens), with nginx's quoting rules and our
/// stricter safety rules. Fails on the first thing it will not accept, naming it.
fn directives(snippet: &str) -> Result<Vec<Vec<Token>>, String> {
    let chars: Vec<char> = snippet.chars().collect();
    let mut out: Vec<Vec<Token>> = Vec::new();
    let mut current: Vec<Token> = Vec::new();
    let mut i = 0;
    // The directive being read, for friendlier messages: `content_by_lua_block {` should say
    // the directive is refused rather than that `{` is.
    let refuse_block = |current: &[Token], c: char| -> String {
        match current.first() {
            Some(name) if !is_allowed(&name.text) => directive_refusal(&name.text),
            _ => format!("`{c}` is not allowed: a snippet cannot open or close nginx blocks"),
        }
    };
    while i < chars.len() {
        let c = chars[i];
        match c {
            ' ' | '\t' | '\n' => i += 1,
            '\r' if chars.get(i + 1) == Some(&'\n') => i += 1,
            ';' => {
                if current.is_empty() {
                    return Err("empty directive (a stray `;`)".to_string());
                }
                out.push(core::mem::take(&mut current));
                i += 1;
            }
            '{' | '}' => return Err(refuse_block(&current, c)),
            '#' => {
                return Err(
                    "`#` comments are not allowed in snippets: a comment could hide directives"
                        .to_string(),
                );
            }
            '"' | '\'' => {
                let (text, next) = quoted(&chars, i)?;
                if let Some(&after) = chars.get(next)
                    && !matches!(after, ' ' | '\t' | '\n' | '\r' | ';')
                {
                    return Err(format!(
                        "unexpected {after:?} right after the quoted value \"{text}\""
                    ));
                }
                current.push(Token { text, quoted: true });
                i = next;
            }
            c if c.is_control() => return Err(control(c)),
            _ => {
                let start = i;
                while i < chars.len() {
                    let b = chars[i];
                    if matches!(b, ' ' | '\t' | '\n' | '\r' | ';') {
                        break;
                    }
                    match b {
                        '{' | '}' => {
                            current.push(Token {
                                text: chars[start..i].iter().collect(),
                                quoted: false,
                            });
                            return Err(refuse_block(&current, b));
                        }
                        '#' => {
                            return Err("`#` is not allowed in snippets outside quotes: it could start a comment that hides directives".to_string());
                        }
                        '"' | '\'' => {
                            return Err(format!(
                                "a quote in the middle of `{}` is not allowed",
                                chars[start..=i].iter().collect::<String>()
                            ));
                        }
                        '\\' => {
                            return Err("`\\` escapes are not allowed outside quotes".to_string());
                        }
                        b if b.is_control() => return Err(control(b)),
                        _ => i += 1,
                    }
                }
                current.push(Token {
                    text: chars[start..i].iter().collect(),
                    quoted: false,
                });
            }
        }
    }
    if let Some(name) = current.first() {
        return Err(format!(
            "directive `{}` is missing its closing `;`",
            name.text
        ));
    }
    Ok(out)
}

fn control(c: char) -> String {
    format!(
        "control character U+{:04X} is not allowed in snippets",
        c as u32
    )
}

/// Read a quoted string starting at `chars[start]` (the quote); returns it and the index after
/// the closing quote. Only `\"`, `\'` and `\\` escapes; no newlines or control characters.
fn quoted(chars: &[char], start: usize) -> Result<(String, usize), String> {
    let quote = chars[start];
    let mut out = String::new();
    let mut i = start + 1;
    loop {
        let Some(&c) = chars.get(i) else {
            return Err(format!("unclosed {quote} quote"));
        };
        match c {
            c if c == quote => return Ok((out, i + 1)),
            '\\' => match chars.get(i + 1) {
                Some(&e @ ('"' | '\'' | '\\')) => {
                    out.push(e);
                    i += 2;
                }
                Some(&e) => {
                    return Err(format!(
                        "escape `\\{e}` is not allowed in snippet values (only \\\" \\' \\\\)"
                    ));
                }
                None => return Err(format!("unclosed {quote} quote")),
            },
            '\n' | '\r' => {
                return Err(format!(
                    "a newline inside the quoted value \"{out}\" is not allowed (header injection)"
                ));
            }
            '{' | '}' => {
                return Err(format!(
                    "`{c}` is not allowed in snippets, even quoted: a snippet cannot open or close nginx blocks"
                ));
            }
            c if c.is_control() => return Err(control(c)),
            c => {
                out.push(c);
                i += 1;
            }
        }
    }
}

fn is_allowed(name: &str) -> bool {
    matches!(
        name,
        "proxy_set_header"
            | "more_set_headers"
            | "more_set_input_headers"
            | "more_clear_headers"
            | "add_header"
    )
}

fn directive_refusal(name: &str) -> String {
    let why = if name.contains("lua") {
        " (Lua is never executed)"
    } else if name == "include" || name == "load_module" {
        " (snippets cannot load files or modules)"
    } else {
        ""
    };
    format!(
        "directive `{name}` is not allowed{why}; only {ALLOWED} are translated, nothing is executed"
    )
}

/// A header value with the supported variables.
fn header_value(text: &str) -> Result<HeaderValue, String> {
    let parts = template::parse(text).map_err(|e| format!("in `{text}`: {e}"))?;
    Ok(match parts.as_slice() {
        [] => HeaderValue::text(""),
        [TemplatePart::Literal(s)] => HeaderValue::text(s.clone()),
        _ => HeaderValue::Template(parts),
    })
}

fn name(text: &str) -> Result<String, String> {
    check_header_name(text)?;
    Ok(text.to_string())
}

/// Refuse headers-more options (`-s`, `-t`, `-r`): they change which responses an edit
/// applies to, which a static edit cannot express.
fn no_option(directive: &str, arg: &Token) -> Result<(), String> {
    if !arg.quoted && arg.text.starts_with('-') {
        Err(format!(
            "option `{}` of `{directive}` is not supported",
            arg.text
        ))
    } else {
        Ok(())
    }
}

/// `Name: value` (headers-more syntax); an empty value means remove.
fn name_value(directive: &str, arg: &Token) -> Result<HeaderEdit, String> {
    no_option(directive, arg)?;
    let (n, v) = arg
        .text
        .split_once(':')
        .ok_or_else(|| format!("`{directive}` expects 'Name: value', got `{}`", arg.text))?;
    let n = name(n.trim())?;
    let v = v.trim_start_matches([' ', '\t']);
    if v.is_empty() {
        Ok(HeaderEdit::remove(n))
    } else {
        Ok(HeaderEdit::set(n, header_value(v)?))
    }
}

/// Translate one snippet.
pub fn translate(snippet: &str) -> Result<Translation, String> {
    let mut t = Translation::default();
    for d in directives(snippet)? {
        let (head, args) = d.split_first().ok_or("empty directive")?;
        if head.quoted {
            return Err(format!(
                "directive name \"{}\" must not be quoted",
                head.text
            ));
        }
        let dn = head.text.as_str();
        if !is_allowed(dn) {
            return Err(directive_refusal(dn));
        }
        match dn {
            "proxy_set_header" => {
                let [n, v] = args else {
                    return Err("`proxy_set_header` takes a name and a value".to_string());
                };
                // The classic WebSocket snippet: the proxy forwards upgrades by itself, so
                // these two are already what happens, not an edit to refuse.
                if n.text.eq_ignore_ascii_case("upgrade")
                    || n.text.eq_ignore_ascii_case("connection")
                {
                    t.notes.push(format!(
                        "proxy_set_header {}: not needed, WebSocket upgrades are forwarded by the proxy; ignored",
                        n.text
                    ));
                    continue;
                }
                let n = name(&n.text)?;
                t.request.push(if v.text.is_empty() {
                    HeaderEdit::remove(n)
                } else {
                    HeaderEdit::set(n, header_value(&v.text)?)
                });
            }
            "add_header" => {
                let (n, v, always) = match args {
                    [n, v] => (n, v, false),
                    [n, v, a] if a.text == "always" => (n, v, true),
                    _ => {
                        return Err("`add_header` takes a name, a value and optionally `always`"
                            .to_string());
                    }
                };
                if !always {
                    t.notes.push(format!(
                        "add_header {}: applied to every response status (nginx adds it only to 2xx and 3xx without `always`)",
                        n.text
                    ));
                }
                t.response
                    .push(HeaderEdit::append(name(&n.text)?, header_value(&v.text)?));
            }
            "more_set_headers" | "more_set_input_headers" => {
                if args.is_empty() {
                    return Err(format!("`{dn}` needs at least one 'Name: value'"));
                }
                for a in args {
                    let edit = name_value(dn, a)?;
                    if dn == "more_set_headers" {
                        t.response.push(edit);
                    } else {
                        t.request.push(edit);
                    }
                }
            }
            "more_clear_headers" => {
                if args.is_empty() {
                    return Err("`more_clear_headers` needs at least one header name".to_string());
                }
                for a in args {
                    no_option(dn, a)?;
                    if a.text.contains('*') {
                        return Err(format!(
                            "wildcard `{}` in more_clear_headers is not supported; list the headers",
                            a.text
                        ));
                    }
                    t.response.push(HeaderEdit::remove(name(&a.text)?));
                }
            }
            _ => return Err(directive_refusal(dn)),
        }
    }
    Ok(t)
}

/// Turn the owned annotations into a policy.
pub fn policy(annotations: &Settings) -> Result<Policy, Vec<Diagnostic>> {
    let mut diags = Diagnostics::default();
    let mut policy = Policy::default();
    for key in [SERVER, CONFIGURATION] {
        if let Some(snippet) = annotations.get(key) {
            match translate(snippet) {
                Ok(t) => {
                    let request = t.request.into_iter().map(Directive::RequestHeader);
                    let response = t.response.into_iter().map(Directive::ResponseHeader);
                    policy.directives.extend(request.chain(response));
                    for note in t.notes {
                        diags.info(key, note);
                    }
                }
                Err(why) => diags.error(key, format!("snippet refused: {why}")),
            }
        }
    }
    diags.finish(policy)
}

struct Snippet;

impl Plugin for Snippet {
    type Config = ();

    fn info() -> Info {
        info(
            "snippet",
            env!("CARGO_PKG_VERSION"),
            &[CONFIGURATION, SERVER],
            &[],
            &[],
        )
    }

    fn configure(annotations: &Settings) -> Result<(Policy, ()), Vec<Diagnostic>> {
        policy(annotations).map(|p| (p, ()))
    }
}

export_plugin!(Snippet);

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::vec;
    use wasmgress_plugin_sdk::RequestVariable;

    fn refused(snippet: &str) -> String {
        translate(snippet).expect_err(snippet)
    }

    #[test]
    fn the_websocket_snippet_is_accepted_as_a_no_op() {
        let t = translate(
            "proxy_set_header Upgrade \"websocket\";\nproxy_set_header Connection \"Upgrade\";",
        )
        .expect("the seed article's snippet");
        assert!(t.request.is_empty() && t.response.is_empty());
        assert_eq!(t.notes.len(), 2);
    }

    #[test]
    fn accepted_subset() {
        let t = translate(
            "proxy_set_header X-From-Snippet yes;\n\
             proxy_set_header X-Real-Host $host;\n\
             more_set_headers 'X-A: 1' \"X-B: two words\";\n\
             more_set_input_headers 'X-In: $scheme://$host$request_uri';\n\
             more_clear_headers Server X-Powered-By;\n\
             add_header X-Frame-Options DENY always;\r\n\
             proxy_set_header X-Drop \"\";",
        )
        .expect("valid");
        assert_eq!(
            t.request,
            vec![
                HeaderEdit::set("X-From-Snippet", HeaderValue::text("yes")),
                HeaderEdit::set(
                    "X-Real-Host",
                    HeaderValue::Template(vec![TemplatePart::Variable(RequestVariable::Host)])
                ),
                HeaderEdit::set(
                    "X-In",
                    HeaderValue::Template(vec![
                        TemplatePart::Variable(RequestVariable::Scheme),
                        TemplatePart::Literal("://".into()),
                        TemplatePart::Variable(RequestVariable::Host),
                        TemplatePart::Variable(RequestVariable::RequestUri),
                    ])
                ),
                HeaderEdit::remove("X-Drop"),
            ]
        );
        assert_eq!(
            t.response,
            vec![
                HeaderEdit::set("X-A", HeaderValue::text("1")),
                HeaderEdit::set("X-B", HeaderValue::text("two words")),
                HeaderEdit::remove("Server"),
                HeaderEdit::remove("X-Powered-By"),
                HeaderEdit::append("X-Frame-Options", HeaderValue::text("DENY")),
            ]
        );
        assert!(t.notes.is_empty());
        assert!(
            translate("   \n")
                .expect("empty is fine")
                .request
                .is_empty()
        );
    }

    #[test]
    fn dangerous_directives_named() {
        for (snippet, named) in [
            (
                "content_by_lua_block { ngx.say('hi') }",
                "content_by_lua_block",
            ),
            ("content_by_lua 'ngx.say(1)';", "content_by_lua"),
            ("access_by_lua_file /tmp/x.lua;", "access_by_lua_file"),
            ("lua_code_cache off;", "lua_code_cache"),
            ("include /etc/passwd;", "include"),
            ("load_module /tmp/evil.so;", "load_module"),
            ("return 200 hi;", "return"),
            ("proxy_pass http://evil;", "proxy_pass"),
        ] {
            let why = refused(snippet);
            assert!(why.contains(&format!("`{named}`")), "{snippet}: {why}");
        }
        assert!(refused("content_by_lua 'x';").contains("Lua"));
    }

    #[test]
    fn breakouts_comments_and_injection_refused() {
        for (snippet, needle) in [
            (
                "proxy_set_header X-A b; } location /evil { return 200;",
                "`}`",
            ),
            ("proxy_set_header X-A b}", "`}`"),
            ("more_set_headers 'X-A: }';", "`}`"),
            ("proxy_set_header X-A b; # include /etc/passwd;", "`#`"),
            ("proxy_set_header X-A b#c;", "`#`"),
            ("more_set_headers 'X-A: a\nX-B: b';", "newline"),
            ("proxy_set_header X-A \"a\r\nb\";", "newline"),
            ("proxy_set_header X-A 'a\\nb';", "escape"),
            ("proxy_set_header X-A a\u{0}b;", "control character"),
            (
                "proxy_set_header X-A $http_authorization;",
                "$http_authorization",
            ),
            ("proxy_set_header X-A $1;", "`$1`"),
            ("more_set_headers -s 404 'X-A: b';", "`-s`"),
            ("more_clear_headers 'X-Hidden-*';", "wildcard"),
            ("proxy_set_header X-A b", "missing its closing `;`"),
            ("proxy_set_header X-A;", "takes a name and a value"),
            (
                "proxy_set_header Transfer-Encoding chunked;",
                "managed by the proxy",
            ),
            ("proxy_set_header 'X-A'b c;", "right after the quoted value"),
            ("\"proxy_set_header\" X-A b;", "must not be quoted"),
            (";", "stray"),
        ] {
            let why = refused(snippet);
            assert!(why.contains(needle), "{snippet:?}: {why}");
        }
    }

    #[test]
    fn policy_orders_server_then_location_and_names_key() {
        let p = policy(&Settings::from_pairs(&[
            (CONFIGURATION, "proxy_set_header X-A loc;"),
            (SERVER, "proxy_set_header X-A srv; add_header X-B c;"),
        ]))
        .expect("valid");
        assert_eq!(
            p.request_headers().cloned().collect::<Vec<_>>(),
            vec![
                HeaderEdit::set("X-A", HeaderValue::text("srv")),
                HeaderEdit::set("X-A", HeaderValue::text("loc")),
            ]
        );
        assert_eq!(p.notes.len(), 1, "add_header without always is noted");
        let e =
            policy(&Settings::from_pairs(&[(CONFIGURATION, "include x;")])).expect_err("refused");
        assert_eq!(e[0].key, CONFIGURATION);
        assert!(e[0].message.contains("`include`"));
    }
}
