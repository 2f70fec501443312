//! Names that become NATS subject tokens: agent names, task types, topics.
//!
//! A name is 1 to 64 characters from `a-z`, `0-9`, `_` and `-`. Anything else is
//! refused before a subject is built: NATS clients do not reject `*`, `>` or `.`
//! inside a token, so an agent named `*` would otherwise read every agent's inbox.

use std::fmt;

/// The longest name accepted, in bytes.
pub const MAX_NAME_LEN: usize = 64;

/// A validated subject token. See the module documentation for the rule.
/// Cheap to clone: the runtime hands the agent's name to every task.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Name(std::sync::Arc<str>);

/// A value that cannot be used as a name, with what it was meant to name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid {what} {value:?}: {reason}; use 1-64 characters from a-z, 0-9, '_' and '-'")]
pub struct InvalidName {
    /// What the value was meant to be, e.g. "agent name" or "task type".
    pub what: &'static str,
    /// The rejected value, escaped when printed.
    pub value: String,
    /// Why it was rejected.
    pub reason: &'static str,
}

impl Name {
    /// Validates `value` as a name; `what` says what it names, for the error.
    ///
    /// ```
    /// use agentbus::Name;
    /// assert!(Name::parse("agent name", "llm_agent").is_ok());
    /// assert!(Name::parse("agent name", "*").is_err());
    /// ```
    pub fn parse(what: &'static str, value: &str) -> Result<Self, InvalidName> {
        let invalid = |reason| InvalidName {
            what,
            value: value.to_owned(),
            reason,
        };
        if value.is_empty() {
            return Err(invalid("it is empty"));
        }
        if value.len() > MAX_NAME_LEN {
            return Err(invalid("it is longer than 64 characters"));
        }
        if value == crate::task_id::NO_CALLER {
            return Err(invalid(
                "'_' alone is reserved: task keys use it for a caller with no name",
            ));
        }
        if let Some(c) = value.chars().find(|c| !is_name_char(*c)) {
            return Err(invalid(match c {
                '*' | '>' => "wildcards are not allowed",
                '.' => "dots separate subject tokens and are not allowed",
                '$' => "'$' is reserved for the system",
                c if c.is_whitespace() => "white space is not allowed",
                c if c.is_control() => "control characters are not allowed",
                c if c.is_ascii_uppercase() => "upper-case letters are not allowed",
                _ => "it contains a character outside the allowed set",
            }));
        }
        Ok(Self(value.into()))
    }

    /// The name as a string slice.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

fn is_name_char(c: char) -> bool {
    c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-'
}

impl fmt::Display for Name {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

// Ordered and compared as its text, so maps keyed by names take `&str` too.
impl std::borrow::Borrow<str> for Name {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl AsRef<str> for Name {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl serde::Serialize for Name {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

impl<'de> serde::Deserialize<'de> for Name {
    /// Validated as [`Name::parse`] does.
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let value = String::deserialize(deserializer)?;
        Self::parse("name", &value).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_the_names_agents_use() {
        for ok in [
            "llm_agent",
            "orchestrator",
            "generate_text",
            "a",
            "x-1",
            &"a".repeat(64),
        ] {
            assert_eq!(Name::parse("agent name", ok).unwrap().as_str(), ok);
        }
    }

    #[test]
    fn refuses_everything_that_could_change_a_subject() {
        let cases = [
            ("", "it is empty"),
            ("*", "wildcards are not allowed"),
            (">", "wildcards are not allowed"),
            ("a.b", "dots separate subject tokens and are not allowed"),
            ("$SYS", "'$' is reserved for the system"),
            ("a b", "white space is not allowed"),
            ("a\u{7}", "control characters are not allowed"),
            ("Agent", "upper-case letters are not allowed"),
            ("é", "it contains a character outside the allowed set"),
        ];
        for (value, reason) in cases {
            let err = Name::parse("agent name", value).unwrap_err();
            assert_eq!(err.reason, reason, "for {value:?}");
        }
        let long = "a".repeat(65);
        assert_eq!(
            Name::parse("agent name", &long).unwrap_err().reason,
            "it is longer than 64 characters"
        );
    }

    #[test]
    fn error_is_one_sentence_naming_the_value() {
        let err = Name::parse("agent name", "*").unwrap_err();
        assert_eq!(
            err.to_string(),
            "invalid agent name \"*\": wildcards are not allowed; use 1-64 characters from a-z, 0-9, '_' and '-'"
        );
    }
}
