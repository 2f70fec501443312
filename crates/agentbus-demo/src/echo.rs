//! Echo mode's text, word by word: the prompt's first `max_tokens` words,
//! with an optional pause between them (`echo_delay_ms`) to look like a
//! model that takes its time.

use crate::output::TextOutput;
use agentbus::TaskError;
use serde_json::Value;
use std::time::Duration;

/// The longest pause between echoed words that a payload may ask for, in
/// milliseconds (`echo_delay_ms`).
pub const MAX_ECHO_DELAY_MS: u64 = 10_000;

/// The payload's `echo_delay_ms`: absent is no pause; anything but an
/// integer from 0 to [`MAX_ECHO_DELAY_MS`] is a `rejected` task error.
pub(crate) fn echo_delay(payload: &Value) -> Result<Duration, TaskError> {
    let Some(value) = payload.get("echo_delay_ms").filter(|v| !v.is_null()) else {
        return Ok(Duration::ZERO);
    };
    // 5.0 is an integer to JSON Schema, as the payload's schema says.
    let millis = value.as_u64().or_else(|| {
        value
            .as_f64()
            .filter(|f| f.fract() == 0.0 && *f >= 0.0 && *f <= MAX_ECHO_DELAY_MS as f64)
            .map(|f| f as u64)
    });
    match millis {
        Some(millis) if millis <= MAX_ECHO_DELAY_MS => Ok(Duration::from_millis(millis)),
        _ => Err(TaskError::rejected(format!(
            "echo_delay_ms must be a whole number of milliseconds from 0 to {MAX_ECHO_DELAY_MS}, not {value}; send one in that range or leave it out"
        ))),
    }
}

/// Puts the first `max_words` words of `prompt` into `out`, one piece per
/// word (followed by a space, but the last), pausing `delay` between
/// words. Stops at once when the task is stopped, keeping the words so far.
pub(crate) async fn echo(
    prompt: &str,
    max_words: usize,
    delay: Duration,
    out: &mut TextOutput<'_>,
) {
    let mut words = prompt.split_whitespace().take(max_words).peekable();
    let mut first = true;
    while let Some(word) = words.next() {
        if !first && !delay.is_zero() {
            tokio::select! {
                () = out.until_stopped() => return,
                () = tokio::time::sleep(delay) => {}
            }
        }
        if out.stopped() {
            return;
        }
        first = false;
        let piece = if words.peek().is_some() {
            format!("{word} ")
        } else {
            word.to_owned()
        };
        out.push(&piece).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn echo_delay_is_a_bounded_whole_number_of_milliseconds() {
        let delay = |payload: Value| echo_delay(&payload);
        assert_eq!(delay(json!({})).unwrap(), Duration::ZERO);
        assert_eq!(
            delay(json!({"echo_delay_ms": null})).unwrap(),
            Duration::ZERO
        );
        assert_eq!(
            delay(json!({"echo_delay_ms": 250})).unwrap(),
            Duration::from_millis(250)
        );
        assert_eq!(
            delay(json!({"echo_delay_ms": 5.0})).unwrap(),
            Duration::from_millis(5)
        );
        assert_eq!(
            delay(json!({"echo_delay_ms": MAX_ECHO_DELAY_MS})).unwrap(),
            Duration::from_millis(MAX_ECHO_DELAY_MS)
        );
        for bad in [
            json!(-1),
            json!(1.5),
            json!("100"),
            json!(MAX_ECHO_DELAY_MS + 1),
            json!(true),
        ] {
            let err = delay(json!({ "echo_delay_ms": bad.clone() })).unwrap_err();
            assert_eq!(err.status(), agentbus::TaskStatus::Rejected);
            assert_eq!(
                err.message(),
                format!(
                    "echo_delay_ms must be a whole number of milliseconds from 0 to 10000, not {bad}; send one in that range or leave it out"
                )
            );
        }
    }
}
