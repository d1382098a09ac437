//! Hiding sensitive fields before anything leaves the server.

use serde_json::Value;

/// Rewrites a JSON value (a saga's input, a step's output, an item's payloads, a history detail
/// that is JSON) before the console sends or shows it. Implement it for your own rules.
pub trait Redactor: Send + Sync + 'static {
    /// Hides what must not leave the server, in place.
    fn redact(&self, value: &mut Value);
}

/// What a redacted value is replaced with.
pub const REDACTED: &str = "[redacted]";

/// Replaces the value of every object field with one of these names (compared without regard
/// to case, at any depth) with [`REDACTED`].
#[derive(Debug, Clone, Default)]
pub struct RedactFields {
    names: Vec<String>,
}

impl RedactFields {
    /// Hides nothing.
    pub const fn none() -> Self {
        Self { names: Vec::new() }
    }

    /// Hides the fields named in `names`.
    pub fn new<I, S>(names: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        Self {
            names: names
                .into_iter()
                .map(|name| name.as_ref().trim().to_ascii_lowercase())
                .filter(|name| !name.is_empty())
                .collect(),
        }
    }

    /// Reads a comma-separated list of field names, as `saga serve` reads `--redact`.
    pub fn parse(list: &str) -> Self {
        Self::new(list.split(','))
    }
}

impl Redactor for RedactFields {
    fn redact(&self, value: &mut Value) {
        match value {
            Value::Object(map) => {
                for (key, field) in map.iter_mut() {
                    if self.names.iter().any(|name| key.eq_ignore_ascii_case(name)) {
                        *field = Value::String(REDACTED.to_owned());
                    } else {
                        self.redact(field);
                    }
                }
            }
            Value::Array(items) => items.iter_mut().for_each(|item| self.redact(item)),
            _ => {}
        }
    }
}

/// Redacts every JSON object or array written inside `text` (an error that quotes a payload,
/// a history detail), leaving the words around them as they are.
pub fn redact_text(redactor: &dyn Redactor, text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(start) = rest.find(['{', '[']) {
        out.push_str(&rest[..start]);
        let candidate = &rest[start..];
        let mut values = serde_json::Deserializer::from_str(candidate).into_iter::<Value>();
        match values.next() {
            Some(Ok(mut value)) if value.is_object() || value.is_array() => {
                let consumed = values.byte_offset();
                redactor.redact(&mut value);
                out.push_str(&value.to_string());
                rest = candidate.get(consumed..).unwrap_or_default();
            }
            _ => {
                // Not JSON here: keep the bracket and look further.
                out.push_str(&candidate[..1]);
                rest = &candidate[1..];
            }
        }
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn named_fields_are_hidden_at_any_depth() {
        let redactor = RedactFields::parse("card_number, Email");
        let mut value = json!({
            "order": 7,
            "card_number": "4242424242424242",
            "customer": { "EMAIL": "a@example.com", "name": "Ada" },
            "lines": [{ "email": "b@example.com" }]
        });
        redactor.redact(&mut value);
        assert_eq!(
            value,
            json!({
                "order": 7,
                "card_number": REDACTED,
                "customer": { "EMAIL": REDACTED, "name": "Ada" },
                "lines": [{ "email": REDACTED }]
            })
        );
        assert_eq!(
            redact_text(&redactor, r#"{"email":"c@example.com"}"#),
            r#"{"email":"[redacted]"}"#
        );
        assert_eq!(redact_text(&redactor, "plain words"), "plain words");
        assert_eq!(
            redact_text(
                &redactor,
                r#"permanent: gateway said {"card_number": "4242424242424242", "code": 51} [x] {oops"#
            ),
            r#"permanent: gateway said {"card_number":"[redacted]","code":51} [x] {oops"#,
            "JSON inside words is redacted; what is not JSON is kept"
        );
    }
}
