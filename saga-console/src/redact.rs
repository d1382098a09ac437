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

/// Redacts `text` if it is a JSON object or array (a history detail may be), else returns it
/// as it is.
pub fn redact_text(redactor: &dyn Redactor, text: &str) -> String {
    let trimmed = text.trim_start();
    if !(trimmed.starts_with('{') || trimmed.starts_with('[')) {
        return text.to_owned();
    }
    match serde_json::from_str::<Value>(text) {
        Ok(mut value) => {
            redactor.redact(&mut value);
            value.to_string()
        }
        Err(_) => text.to_owned(),
    }
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
    }
}
