//! A tiny block-style YAML writer for `serde_json::Value`s.
//!
//! Manifests are built as JSON values (so the tests read like the objects they describe) and
//! written as the block YAML a user would write by hand. Strings are always double-quoted with
//! JSON escapes, which YAML reads the same way, so `"80"` stays a string and `80` a number.

use serde_json::Value;

/// Renders several objects as one multi-document YAML file.
pub fn documents(docs: &[Value]) -> String {
    let mut out = String::new();
    for doc in docs {
        out.push_str("---\n");
        emit(doc, 0, &mut out);
    }
    out
}

fn emit(value: &Value, indent: usize, out: &mut String) {
    let pad = " ".repeat(indent);
    match value {
        Value::Object(map) if !map.is_empty() => {
            for (key, v) in map {
                out.push_str(&pad);
                out.push_str(&key_text(key));
                out.push(':');
                emit_child(v, indent, out);
            }
        }
        Value::Array(items) if !items.is_empty() => {
            for item in items {
                let mut nested = String::new();
                match item {
                    Value::Object(m) if !m.is_empty() => emit(item, indent + 2, &mut nested),
                    Value::Array(a) if !a.is_empty() => emit(item, indent + 2, &mut nested),
                    scalar => {
                        nested.push_str(&" ".repeat(indent + 2));
                        nested.push_str(&scalar_text(scalar));
                        nested.push('\n');
                    }
                }
                // The first line of the item carries the dash in place of its indentation.
                out.push_str(&pad);
                out.push_str("- ");
                out.push_str(&nested[indent + 2..]);
            }
        }
        scalar => {
            out.push_str(&pad);
            out.push_str(&scalar_text(scalar));
            out.push('\n');
        }
    }
}

fn emit_child(value: &Value, indent: usize, out: &mut String) {
    match value {
        Value::Object(m) if !m.is_empty() => {
            out.push('\n');
            emit(value, indent + 2, out);
        }
        Value::Array(a) if !a.is_empty() => {
            out.push('\n');
            emit(value, indent + 2, out);
        }
        scalar => {
            out.push(' ');
            out.push_str(&scalar_text(scalar));
            out.push('\n');
        }
    }
}

fn key_text(key: &str) -> String {
    let plain = !key.is_empty()
        && key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '/' | '-'))
        && key.starts_with(|c: char| c.is_ascii_alphabetic());
    if plain {
        key.to_owned()
    } else {
        Value::String(key.to_owned()).to_string()
    }
}

fn scalar_text(value: &Value) -> String {
    match value {
        Value::Object(_) => "{}".to_owned(),
        Value::Array(_) => "[]".to_owned(),
        other => other.to_string(),
    }
}

#[test]
fn block_yaml_shape() {
    let doc = serde_json::json!({
        "kind": "Service",
        "metadata": {"name": "one", "labels": {"kubernetes.io/service-name": "one"}},
        "spec": {"ports": [{"name": "http", "port": 80, "targetPort": "web"}], "empty": []},
        "nested": [[1, 2], {"a": {}}],
    });
    let text = documents(&[doc]);
    let expected = "---
kind: \"Service\"
metadata:
  labels:
    kubernetes.io/service-name: \"one\"
  name: \"one\"
nested:
  - - 1
    - 2
  - a: {}
spec:
  empty: []
  ports:
    - name: \"http\"
      port: 80
      targetPort: \"web\"
";
    assert_eq!(text, expected);
}

#[test]
fn reads_back_as_the_same_objects() {
    let docs = vec![
        serde_json::json!({"a": "x: y # not a comment", "b": ["1", 1, true, null], "c": {"d": [{"e": []}, [[]]]}}),
        serde_json::json!({"quote": "say \"hi\"\n", "unicode": "é ✓", "-dash": "-"}),
    ];
    let text = documents(&docs);
    let back: Vec<Value> = serde_yaml::Deserializer::from_str(&text)
        .map(|d| <Value as serde::Deserialize>::deserialize(d).expect("valid YAML"))
        .collect();
    assert_eq!(back, docs, "YAML was:\n{text}");
}
