//! A task's payload, kept as the JSON text it arrived as until it is read.
//!
//! A JSON document parsed into [`serde_json::Value`] takes many times its own
//! size (an array of small numbers about sixteen times: each number is a
//! 32-byte value), so a runtime holding waiting tasks as values would hold
//! far more than it received. A received payload is therefore kept as its
//! text; a handler parses it into its own type ([`Payload::parse`],
//! [`crate::TaskRequest::payload_as`]), and a [`Value`] is made only the
//! first time one is asked for (through `Deref`), then kept with the task.

use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::Value;
use serde_json::value::RawValue;
use std::borrow::Cow;
use std::fmt;
use std::ops::Deref;
use std::sync::OnceLock;

/// The JSON payload of a task: the text it arrived as, parsed on demand.
///
/// It dereferences to a [`Value`] (parsed once, at the first use), so
/// `task.payload["prompt"]` works as on a value; a handler that reads a large
/// payload should rather [`parse`](Payload::parse) it into its own type,
/// which costs about the size of that type.
#[derive(Default)]
pub struct Payload {
    /// The text as received; `None` for a payload made from a value.
    text: Option<Box<RawValue>>,
    /// The parsed value: set at once for a payload made from a value, and on
    /// first use for one received as text.
    value: OnceLock<Value>,
}

impl Payload {
    /// Parses the payload into `T`, straight from its text when it has one.
    pub fn parse<T: DeserializeOwned>(&self) -> Result<T, serde_json::Error> {
        match (&self.text, self.value.get()) {
            (_, Some(value)) => T::deserialize(value),
            (Some(text), None) => serde_json::from_str(text.get()),
            (None, None) => T::deserialize(&Value::Null),
        }
    }

    /// The payload as JSON text: borrowed when it arrived as text.
    pub fn json(&self) -> Cow<'_, str> {
        match &self.text {
            Some(text) => Cow::Borrowed(text.get()),
            None => Cow::Owned(self.deref().to_string()),
        }
    }

    /// Whether the payload is a JSON object, without parsing it.
    pub fn is_object(&self) -> bool {
        match &self.text {
            Some(text) => text.get().trim_start().starts_with('{'),
            None => self.deref().is_object(),
        }
    }

    /// The payload as a value (parsed if it has not been).
    pub fn into_value(self) -> Value {
        let Self { text, value } = self;
        match value.into_inner() {
            Some(value) => value,
            None => text.map_or(Value::Null, |text| parse_value(&text)),
        }
    }
}

/// Parses text that is valid JSON (a `RawValue` is checked when made): the
/// only failure left is nesting deeper than the parser allows, which the
/// same parser would have refused when the text was received.
fn parse_value(text: &RawValue) -> Value {
    serde_json::from_str(text.get()).unwrap_or(Value::Null)
}

impl Deref for Payload {
    type Target = Value;

    fn deref(&self) -> &Value {
        self.value.get_or_init(|| match &self.text {
            Some(text) => parse_value(text),
            None => Value::Null,
        })
    }
}

impl From<Value> for Payload {
    fn from(value: Value) -> Self {
        Self {
            text: None,
            value: OnceLock::from(value),
        }
    }
}

impl From<Payload> for Value {
    fn from(payload: Payload) -> Self {
        payload.into_value()
    }
}

impl Clone for Payload {
    /// Clones the text only, when there is one: the copy parses on its own.
    fn clone(&self) -> Self {
        match &self.text {
            Some(text) => Self {
                text: Some(text.clone()),
                value: OnceLock::new(),
            },
            None => Self::from(self.deref().clone()),
        }
    }
}

impl fmt::Debug for Payload {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.text {
            Some(text) => f.write_str(text.get()),
            None => fmt::Debug::fmt(self.deref(), f),
        }
    }
}

impl PartialEq for Payload {
    fn eq(&self, other: &Self) -> bool {
        match (&self.text, &other.text) {
            (Some(left), Some(right)) if left.get() == right.get() => true,
            _ => self.deref() == other.deref(),
        }
    }
}

impl PartialEq<Value> for Payload {
    fn eq(&self, other: &Value) -> bool {
        self.deref() == other
    }
}

impl Serialize for Payload {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match &self.text {
            Some(text) => text.serialize(serializer),
            None => self.deref().serialize(serializer),
        }
    }
}

impl<'de> Deserialize<'de> for Payload {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        Ok(Self {
            text: Some(Box::<RawValue>::deserialize(deserializer)?),
            value: OnceLock::new(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[derive(Deserialize)]
    struct Prompt {
        prompt: String,
    }

    #[test]
    fn received_text_is_kept_until_read() {
        let payload: Payload = serde_json::from_str(r#"{"prompt": "hi", "n": [1, 2]}"#).unwrap();
        assert!(payload.value.get().is_none(), "parsed before it was read");
        assert!(payload.is_object());
        assert_eq!(payload.json(), r#"{"prompt": "hi", "n": [1, 2]}"#);
        assert_eq!(payload.parse::<Prompt>().unwrap().prompt, "hi");
        assert!(payload.value.get().is_none(), "a typed parse made a value");
        assert_eq!(payload["n"][1], 2);
        assert_eq!(payload, json!({ "prompt": "hi", "n": [1, 2] }));
        assert_eq!(
            serde_json::to_string(&payload).unwrap(),
            r#"{"prompt": "hi", "n": [1, 2]}"#
        );
    }

    #[test]
    fn a_value_serializes_and_parses_as_itself() {
        let payload = Payload::from(json!({ "prompt": "hi" }));
        assert_eq!(payload.json(), r#"{"prompt":"hi"}"#);
        assert_eq!(payload.parse::<Prompt>().unwrap().prompt, "hi");
        let back: Payload = serde_json::from_value(json!({ "prompt": "hi" })).unwrap();
        assert_eq!(back, payload);
        assert_eq!(back.clone().into_value(), json!({ "prompt": "hi" }));
        assert!(!Payload::from(json!([1])).is_object());
        let text: Payload = serde_json::from_str(" [1]").unwrap();
        assert!(!text.is_object());
    }
}
