//! A small, strict reader for the structured header annotations: JSON, YAML flow style
//! (`{set: {X-A: b}}`) and the block-style YAML subset people write in annotations:
//!
//! ```yaml
//! set:
//!   X-Frame-Options: DENY
//! add:
//!   X-Tag: [a, b]
//! remove:
//!   - X-Powered-By
//! ```
//!
//! Only mappings, sequences and scalars; no anchors, aliases, tags, block scalars or multiple
//! documents, each refused with a message rather than guessed at. A full YAML parser is not
//! worth its size inside a plugin for a three-key document.

use alloc::format;
use alloc::string::{String, ToString};
use alloc::vec::Vec;

/// A parsed value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Node {
    Scalar(String),
    List(Vec<Node>),
    Map(Vec<(String, Node)>),
}

/// Parse a document.
pub fn parse(text: &str) -> Result<Node, String> {
    let trimmed = text.trim();
    let body = trimmed
        .strip_prefix("---")
        .map(str::trim)
        .unwrap_or(trimmed);
    if body.starts_with('{') || body.starts_with('[') {
        let mut p = Flow {
            s: body.as_bytes(),
            text: body,
            i: 0,
        };
        let node = p.value()?;
        p.skip_ws();
        if p.i != p.s.len() {
            return Err(format!(
                "unexpected text after the document: `{}`",
                &body[p.i..]
            ));
        }
        return Ok(node);
    }
    let lines = block_lines(body)?;
    if lines.is_empty() {
        return Err("the document is empty".to_string());
    }
    let (node, next) = block(&lines, 0, lines[0].indent)?;
    if next != lines.len() {
        return Err(format!("unexpected indentation at `{}`", lines[next].text));
    }
    Ok(node)
}

struct Line<'a> {
    indent: usize,
    text: &'a str,
}

fn block_lines(body: &str) -> Result<Vec<Line<'_>>, String> {
    let mut out = Vec::new();
    for raw in body.lines() {
        let without_cr = raw.strip_suffix('\r').unwrap_or(raw);
        let content = without_cr.trim_start_matches(' ');
        if content.starts_with('\t') {
            return Err("tabs are not allowed for indentation".to_string());
        }
        let content = content.trim_end();
        if content.is_empty() || content.starts_with('#') {
            continue;
        }
        if content == "---" || content == "..." {
            return Err("only one document is allowed".to_string());
        }
        out.push(Line {
            indent: without_cr.len() - without_cr.trim_start_matches(' ').len(),
            text: content,
        });
    }
    Ok(out)
}

/// Parse the block (mapping or sequence) whose lines start at `start` with indent `indent`.
fn block(lines: &[Line<'_>], start: usize, indent: usize) -> Result<(Node, usize), String> {
    let is_list = lines[start].text.starts_with("- ") || lines[start].text == "-";
    let mut i = start;
    if is_list {
        let mut items = Vec::new();
        while i < lines.len() && lines[i].indent == indent {
            let text = lines[i].text;
            let item = match text.strip_prefix('-') {
                Some(rest) if rest.is_empty() || rest.starts_with(' ') => rest.trim(),
                _ => return Err(format!("expected `- item` at `{text}`")),
            };
            if item.is_empty() {
                return Err("empty list items are not supported".to_string());
            }
            if split_key(item).is_some() {
                return Err(format!("mappings inside lists are not supported: `{text}`"));
            }
            items.push(inline_value(item)?);
            i += 1;
            if i < lines.len() && lines[i].indent > indent {
                return Err(format!("unexpected indentation at `{}`", lines[i].text));
            }
        }
        return Ok((Node::List(items), i));
    }
    let mut entries = Vec::new();
    while i < lines.len() && lines[i].indent == indent {
        let text = lines[i].text;
        let (key, rest) =
            split_key(text).ok_or_else(|| format!("expected `key: value` at `{text}`"))?;
        let key = scalar(key)?;
        i += 1;
        if rest.is_empty() {
            if i < lines.len() && lines[i].indent > indent {
                let (node, next) = block(lines, i, lines[i].indent)?;
                entries.push((key, node));
                i = next;
            } else if i < lines.len()
                && lines[i].indent == indent
                && (lines[i].text.starts_with("- ") || lines[i].text == "-")
            {
                // YAML allows a sequence at the same indentation as its parent key.
                let (node, next) = block(lines, i, indent)?;
                entries.push((key, node));
                i = next;
            } else {
                return Err(format!("`{key}` has no value"));
            }
        } else {
            entries.push((key, inline_value(rest)?));
            if i < lines.len() && lines[i].indent > indent {
                return Err(format!("unexpected indentation at `{}`", lines[i].text));
            }
        }
    }
    Ok((Node::Map(entries), i))
}

/// Split `key: rest` at the first `:` followed by a space or the end, outside quotes.
fn split_key(text: &str) -> Option<(&str, &str)> {
    let bytes = text.as_bytes();
    let mut quote = None;
    for (i, &b) in bytes.iter().enumerate() {
        match quote {
            Some(q) if b == q => quote = None,
            Some(_) => {}
            None if (b == b'"' || b == b'\'') && i == 0 => quote = Some(b),
            None if b == b':' && (i + 1 == bytes.len() || bytes[i + 1] == b' ') => {
                return Some((text[..i].trim(), text[i + 1..].trim()));
            }
            None => {}
        }
    }
    None
}

/// A value on the same line as its key or dash: a flow collection or a scalar (comments
/// after a plain scalar are dropped).
fn inline_value(text: &str) -> Result<Node, String> {
    if text.starts_with('{') || text.starts_with('[') {
        let mut p = Flow {
            s: text.as_bytes(),
            text,
            i: 0,
        };
        let node = p.value()?;
        p.skip_ws();
        let rest = &text[p.i..];
        if !(rest.is_empty() || rest.starts_with('#')) {
            return Err(format!(
                "unexpected text after `{}`: `{rest}`",
                &text[..p.i]
            ));
        }
        return Ok(node);
    }
    let value = if text.starts_with('"') || text.starts_with('\'') {
        text
    } else {
        match text.find(" #") {
            Some(pos) => text[..pos].trim_end(),
            None => text,
        }
    };
    Ok(Node::Scalar(scalar(value)?))
}

/// A complete scalar: quoted (with its escapes) or plain.
fn scalar(text: &str) -> Result<String, String> {
    if text.starts_with('"') || text.starts_with('\'') {
        let mut p = Flow {
            s: text.as_bytes(),
            text,
            i: 0,
        };
        let s = p.quoted()?;
        if p.i != text.len() {
            return Err(format!(
                "unexpected text after the quoted string in `{text}`"
            ));
        }
        return Ok(s);
    }
    plain(text)
}

fn plain(text: &str) -> Result<String, String> {
    match text.chars().next() {
        None => Err("empty value".to_string()),
        Some(c @ ('&' | '*' | '!' | '|' | '>' | '%' | '@' | '`')) => Err(format!(
            "`{text}`: YAML feature `{c}` is not supported; quote the value"
        )),
        _ => Ok(text.to_string()),
    }
}

/// Flow-style (and JSON) reader.
struct Flow<'a> {
    s: &'a [u8],
    text: &'a str,
    i: usize,
}

impl Flow<'_> {
    fn skip_ws(&mut self) {
        while self.i < self.s.len() && matches!(self.s[self.i], b' ' | b'\t' | b'\n' | b'\r') {
            self.i += 1;
        }
    }

    fn peek(&self) -> Option<u8> {
        self.s.get(self.i).copied()
    }

    fn value(&mut self) -> Result<Node, String> {
        self.skip_ws();
        match self.peek() {
            Some(b'{') => self.map(),
            Some(b'[') => self.list(),
            Some(b'"' | b'\'') => Ok(Node::Scalar(self.quoted()?)),
            Some(_) => Ok(Node::Scalar(self.plain_flow()?)),
            None => Err("unexpected end of the document".to_string()),
        }
    }

    fn map(&mut self) -> Result<Node, String> {
        self.i += 1;
        let mut entries = Vec::new();
        loop {
            self.skip_ws();
            if self.peek() == Some(b'}') {
                self.i += 1;
                return Ok(Node::Map(entries));
            }
            let key = match self.peek() {
                Some(b'"' | b'\'') => self.quoted()?,
                Some(_) => self.plain_flow()?,
                None => return Err("unclosed `{`".to_string()),
            };
            self.skip_ws();
            if self.peek() != Some(b':') {
                return Err(format!("expected `:` after `{key}`"));
            }
            self.i += 1;
            let value = self.value()?;
            entries.push((key, value));
            self.skip_ws();
            match self.peek() {
                Some(b',') => self.i += 1,
                Some(b'}') => {}
                _ => return Err("expected `,` or `}` in a mapping".to_string()),
            }
        }
    }

    fn list(&mut self) -> Result<Node, String> {
        self.i += 1;
        let mut items = Vec::new();
        loop {
            self.skip_ws();
            if self.peek() == Some(b']') {
                self.i += 1;
                return Ok(Node::List(items));
            }
            if self.peek().is_none() {
                return Err("unclosed `[`".to_string());
            }
            items.push(self.value()?);
            self.skip_ws();
            match self.peek() {
                Some(b',') => self.i += 1,
                Some(b']') => {}
                _ => return Err("expected `,` or `]` in a list".to_string()),
            }
        }
    }

    /// A plain scalar inside a flow collection: ends at `,`, `]`, `}` or `:` (then space or
    /// end), like YAML.
    fn plain_flow(&mut self) -> Result<String, String> {
        let start = self.i;
        while let Some(b) = self.peek() {
            let colon_end = b == b':'
                && matches!(
                    self.s.get(self.i + 1),
                    None | Some(b' ' | b'\t' | b'\n' | b'\r')
                );
            if matches!(b, b',' | b']' | b'}' | b'{' | b'[') || colon_end {
                break;
            }
            if b == b'\n' || b == b'\r' {
                return Err("multi-line plain values are not supported; quote them".to_string());
            }
            self.i += 1;
        }
        plain(self.text[start..self.i].trim())
    }

    /// A double-quoted (JSON escapes) or single-quoted (`''` escape) string.
    fn quoted(&mut self) -> Result<String, String> {
        let quote = self.s[self.i];
        self.i += 1;
        let mut out = String::new();
        loop {
            let rest = &self.text[self.i..];
            let mut chars = rest.chars();
            let c = chars.next().ok_or("unclosed quoted string")?;
            self.i += c.len_utf8();
            match c {
                '\'' if quote == b'\'' => {
                    if self.peek() == Some(b'\'') {
                        self.i += 1;
                        out.push('\'');
                    } else {
                        return Ok(out);
                    }
                }
                '"' if quote == b'"' => return Ok(out),
                '\\' if quote == b'"' => {
                    let e = self.peek().ok_or("unclosed quoted string")?;
                    self.i += 1;
                    match e {
                        b'"' => out.push('"'),
                        b'\\' => out.push('\\'),
                        b'/' => out.push('/'),
                        b't' => out.push('\t'),
                        b'u' => {
                            let hex = self
                                .text
                                .get(self.i..self.i + 4)
                                .ok_or("truncated \\u escape")?;
                            let code = u32::from_str_radix(hex, 16)
                                .map_err(|_| format!("bad \\u escape `{hex}`"))?;
                            self.i += 4;
                            out.push(char::from_u32(code).ok_or("\\u escape is not a character")?);
                        }
                        // \n, \r, \0 and friends would only produce characters that are never
                        // valid in a header; refuse them here with a clearer message.
                        other => {
                            return Err(format!(
                                "escape `\\{}` is not allowed in header values",
                                other as char
                            ));
                        }
                    }
                }
                c => out.push(c),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::vec;

    fn s(v: &str) -> Node {
        Node::Scalar(v.to_string())
    }

    #[test]
    fn block_yaml() {
        let doc = "set:\n  X-Frame-Options: DENY   # comment\n  X-Quoted: \"a: b\"\nadd:\n  X-Tag: [a, 'b c']\nremove:\n- X-Powered-By\n- Server\n";
        assert_eq!(
            parse(doc).expect("valid"),
            Node::Map(vec![
                (
                    "set".into(),
                    Node::Map(vec![
                        ("X-Frame-Options".into(), s("DENY")),
                        ("X-Quoted".into(), s("a: b")),
                    ])
                ),
                (
                    "add".into(),
                    Node::Map(vec![("X-Tag".into(), Node::List(vec![s("a"), s("b c")]))])
                ),
                (
                    "remove".into(),
                    Node::List(vec![s("X-Powered-By"), s("Server")])
                ),
            ])
        );
    }

    #[test]
    fn json_and_flow() {
        let j = parse(r#"{"set": {"X-A": "1\u0041"}, "remove": ["X-B"]}"#).expect("json");
        let f = parse("{set: {X-A: 1A}, remove: [X-B]}").expect("flow");
        assert_eq!(j, f);
    }

    #[test]
    fn refusals() {
        for bad in [
            "set: &a {X: y}",
            "set:\n  X: |\n    multi",
            "set:\n\tX: y",
            "set:\n  X:",
            "---\nset: {}\n---\nadd: {}",
            r#"{"set": {"X": "a\nb"}}"#,
            "{set: {X: y}",
            "remove:\n  - a: b",
            "set: {X: y} trailing",
        ] {
            assert!(parse(bad).is_err(), "{bad:?} should be refused");
        }
    }
}
