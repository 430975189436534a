//! Personal data: the fields that identify a person are never stored (SPEC 1), so what goes
//! into the DLQ and the `rejected` table has them removed.

use serde_json::Value;

/// Fields that identify a person: never stored, not in the lake, not in the DLQ.
pub const PII_FIELDS: [&str; 5] = ["email", "user_id", "phone", "name", "ip"];

/// The record as it goes into the DLQ and `rejected`: JSON with every PII field removed (at any
/// depth); where it cannot be parsed (or `parse` is false, as for `too_large`), its first 4 KiB
/// as text with PII values blanked.
pub fn scrubbed_record(bytes: &[u8], parse: bool) -> String {
    if let Some(Ok(mut v)) = parse.then(|| serde_json::from_slice::<Value>(bytes)) {
        strip_pii(&mut v);
        return v.to_string();
    }
    let head = &bytes[..bytes.len().min(4096)];
    scrub_text(&String::from_utf8_lossy(head))
}

fn strip_pii(v: &mut Value) {
    match v {
        Value::Object(map) => {
            map.retain(|k, _| !PII_FIELDS.contains(&k.as_str()));
            map.values_mut().for_each(strip_pii);
        }
        Value::Array(items) => items.iter_mut().for_each(strip_pii),
        _ => {}
    }
}

/// Blanks the value after every `"<pii field>"` key in text that is not valid JSON: the value
/// runs to the next `,`, `}` or `]` outside a string, or to the end.
fn scrub_text(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    'outer: while let Some(at) = rest.find('"') {
        // Text up to the next quote is copied as it is: only a quote can start a key.
        out.push_str(&rest[..at]);
        rest = &rest[at..];
        for key in PII_FIELDS {
            let after_key = rest.strip_prefix('"').and_then(|r| r.strip_prefix(key)).and_then(|r| r.strip_prefix('"'));
            if let Some(after_colon) = after_key.and_then(|r| r.trim_start().strip_prefix(':')) {
                out.push('"');
                out.push_str(key);
                out.push_str("\":\"[removed]\"");
                rest = skip_json_value(after_colon);
                continue 'outer;
            }
        }
        out.push('"');
        rest = &rest[1..];
    }
    out.push_str(rest);
    out
}

fn skip_json_value(s: &str) -> &str {
    let mut in_str = false;
    let mut escaped = false;
    for (i, c) in s.char_indices() {
        if in_str {
            match (escaped, c) {
                (true, _) => escaped = false,
                (false, '\\') => escaped = true,
                (false, '"') => in_str = false,
                _ => {}
            }
        } else {
            match c {
                '"' => in_str = true,
                ',' | '}' | ']' => return &s[i..],
                _ => {}
            }
        }
    }
    ""
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_that_is_not_json_keeps_everything_but_pii_values() {
        let text = r#"{"email": "a@b.c", "hz": 432, "note":"ünïcode", "ip":"10.0.0.1"} trailing "name" here"#;
        let out = scrub_text(text);
        assert_eq!(out, r#"{"email":"[removed]", "hz": 432, "note":"ünïcode", "ip":"[removed]"} trailing "name" here"#);
        // A quoted value that ends the text, and a value with a quote escaped inside it.
        assert_eq!(scrub_text(r#"x "phone": "+1 \"555\"", "user_id":"#), r#"x "phone":"[removed]", "user_id":"[removed]""#);
        assert_eq!(scrub_text("no quotes at all"), "no quotes at all");
        assert_eq!(scrub_text(r#"ends with a quote ""#), r#"ends with a quote ""#);
    }

    #[test]
    fn a_record_cut_at_4_kib_is_scrubbed_as_text() {
        let record = format!(r#"{{"email":"someone@example.test","pad":"{}"}}"#, "x".repeat(5000));
        let out = scrubbed_record(record.as_bytes(), false);
        assert!(!out.contains("someone@example.test"), "{out}");
        assert!(out.starts_with(r#"{"email":"[removed]","pad":"xxx"#));
    }
}
