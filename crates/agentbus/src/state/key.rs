//! The rule for state keys: they become NATS KV key tokens and Redis key parts.
//!
//! A key is 1 to 128 characters from `A-Z`, `a-z`, `0-9`, `_` and `-`. Dots
//! (which would split a KV key into tokens), wildcards, `:` (the Redis
//! namespace separator), white space and everything else are refused, so a key
//! can never reach another agent's entries or match more than itself.

use super::StateError;

/// The longest state key accepted, in bytes.
pub const MAX_KEY_LEN: usize = 128;

/// Checks `key` against the rule in the module documentation.
///
/// ```
/// use agentbus::state::validate_key;
/// assert!(validate_key("last_summary-2").is_ok());
/// assert!(validate_key("a.b").is_err());
/// ```
pub fn validate_key(key: &str) -> Result<(), StateError> {
    let invalid = |reason| {
        Err(StateError::InvalidKey {
            key: key.to_owned(),
            reason,
        })
    };
    if key.is_empty() {
        return invalid("it is empty");
    }
    if key.len() > MAX_KEY_LEN {
        return invalid("it is longer than 128 characters");
    }
    match key.chars().find(|c| !is_key_char(*c)) {
        None => Ok(()),
        Some('*' | '>' | '?' | '[' | ']') => invalid("wildcards are not allowed"),
        Some('.') => invalid("dots are not allowed"),
        Some(':') => invalid("':' is not allowed"),
        Some(c) if c.is_whitespace() => invalid("white space is not allowed"),
        Some(c) if c.is_control() => invalid("control characters are not allowed"),
        Some(_) => invalid("it contains a character outside the allowed set"),
    }
}

fn is_key_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_' || c == '-'
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reason(key: &str) -> &'static str {
        match validate_key(key) {
            Err(StateError::InvalidKey { reason, .. }) => reason,
            other => panic!("{key:?}: expected InvalidKey, got {other:?}"),
        }
    }

    #[test]
    fn accepts_plain_keys() {
        for ok in [
            "a",
            "Z",
            "last_summary",
            "x-1",
            "CamelCase",
            &"k".repeat(128),
        ] {
            assert!(validate_key(ok).is_ok(), "{ok:?}");
        }
    }

    #[test]
    fn refuses_everything_that_could_reach_other_keys() {
        assert_eq!(reason(""), "it is empty");
        assert_eq!(reason("*"), "wildcards are not allowed");
        assert_eq!(reason(">"), "wildcards are not allowed");
        assert_eq!(reason("a?"), "wildcards are not allowed");
        assert_eq!(reason("a.b"), "dots are not allowed");
        assert_eq!(reason("agentbus:x"), "':' is not allowed");
        assert_eq!(reason("a b"), "white space is not allowed");
        assert_eq!(reason("a\u{0}"), "control characters are not allowed");
        assert_eq!(
            reason("é"),
            "it contains a character outside the allowed set"
        );
        assert_eq!(
            reason("a/b"),
            "it contains a character outside the allowed set"
        );
        assert_eq!(reason(&"k".repeat(129)), "it is longer than 128 characters");
    }

    #[test]
    fn error_is_one_sentence_naming_the_key_and_the_rule() {
        let err = validate_key("a.b").unwrap_err().to_string();
        assert_eq!(
            err,
            "invalid state key \"a.b\": dots are not allowed; use 1-128 characters from A-Z, a-z, 0-9, '_' and '-'"
        );
    }
}
