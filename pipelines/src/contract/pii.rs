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
    'outer: while !rest.is_empty() {
        for key in PII_FIELDS {
            let quoted = format!("\"{key}\"");
            if let Some(after_key) = rest.strip_prefix(quoted.as_str()) {
                let trimmed = after_key.trim_start();
                if let Some(after_colon) = trimmed.strip_prefix(':') {
                    out.push_str(&quoted);
                    out.push_str(":\"[removed]\"");
                    rest = skip_json_value(after_colon);
                    continue 'outer;
                }
            }
        }
        let c = rest.chars().next().expect("non-empty");
        out.push(c);
        rest = &rest[c.len_utf8()..];
    }
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
