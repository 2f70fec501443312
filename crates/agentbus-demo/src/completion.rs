//! One call to the chat-completions endpoint, and its failures as task
//! errors a person can act on, never showing the API key.

use crate::llm_endpoint::LlmEndpoint;
use agentbus::TaskError;
use agentbus::redact::redact_url;
use serde::Deserialize;
use serde_json::{Value, json};
use std::time::Duration;

/// The part of a chat-completions answer the agent uses.
#[derive(Debug, Deserialize)]
struct ChatCompletion {
    model: Option<String>,
    #[serde(default)]
    choices: Vec<Choice>,
}

#[derive(Debug, Deserialize)]
struct Choice {
    message: Option<ChoiceMessage>,
}

#[derive(Debug, Deserialize)]
struct ChoiceMessage {
    content: Option<String>,
}

/// Why a call to the endpoint produced no text. Every field and cause is
/// already masked: URLs without passwords, texts without the API key.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub(crate) enum CompletionError {
    /// No answer within the endpoint's timeout.
    #[error(
        "the language model at {url} did not answer within {timeout:?}; try again later or use a faster model"
    )]
    Timeout {
        /// The URL posted to.
        url: String,
        /// The timeout.
        timeout: Duration,
        /// The client's error.
        #[source]
        source: Masked,
    },
    /// No connection to the endpoint.
    #[error(
        "cannot reach the language model at {url} ({source}); check LLM_BASE_URL and that the server is running"
    )]
    Unreachable {
        /// The URL posted to.
        url: String,
        /// The innermost cause (reqwest's own message says only "error sending request").
        #[source]
        source: Masked,
    },
    /// The call failed otherwise (the connection dropped, the body was cut off).
    #[error("the call to the language model at {url} failed ({source}); try again")]
    Transport {
        /// The URL posted to.
        url: String,
        /// The innermost cause.
        #[source]
        source: Masked,
    },
    /// The endpoint answered with an HTTP error status.
    #[error("the language model at {url} answered HTTP {status}{}; {}", detail_note(.detail), advice(*.status))]
    Status {
        /// The URL posted to.
        url: String,
        /// The status.
        status: reqwest::StatusCode,
        /// The endpoint's message (`error.message`, else the body's start), on one line.
        detail: String,
    },
    /// The answer is JSON, but not a chat completion.
    #[error(
        "the language model at {url} answered with JSON that is not a chat completion ({source}); check that LLM_BASE_URL points at an OpenAI-compatible API"
    )]
    NotACompletion {
        /// The URL posted to.
        url: String,
        /// The decoder's complaint, which may quote the answer.
        #[source]
        source: Masked,
    },
    /// The answer has no `choices[0].message.content`.
    #[error(
        "the language model at {url} answered without choices[0].message.content; check that LLM_BASE_URL points at an OpenAI-compatible API"
    )]
    NoContent {
        /// The URL posted to.
        url: String,
    },
}

/// Why a call produced no text, as a kind to match.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub(crate) enum CompletionErrorKind {
    /// No answer in time.
    Timeout,
    /// No connection.
    Unreachable,
    /// The call failed midway.
    Transport,
    /// The endpoint refused the request: a 4xx other than 408 and 429. Trying
    /// again will not help (a wrong key, an unknown model).
    Refused,
    /// The endpoint failed or is rate limiting: a 5xx, 408 or 429.
    Unavailable,
    /// The answer is not a usable chat completion.
    InvalidReply,
}

impl CompletionError {
    /// Why the call produced no text.
    pub(crate) fn kind(&self) -> CompletionErrorKind {
        match self {
            Self::Timeout { .. } => CompletionErrorKind::Timeout,
            Self::Unreachable { .. } => CompletionErrorKind::Unreachable,
            Self::Transport { .. } => CompletionErrorKind::Transport,
            Self::Status { status, .. }
                if status.is_client_error() && !matches!(status.as_u16(), 408 | 429) =>
            {
                CompletionErrorKind::Refused
            }
            Self::Status { .. } => CompletionErrorKind::Unavailable,
            Self::NotACompletion { .. } | Self::NoContent { .. } => {
                CompletionErrorKind::InvalidReply
            }
        }
    }

    fn transport(endpoint: &LlmEndpoint, err: &reqwest::Error) -> Self {
        let url = shown_url(endpoint);
        let source = Masked::new(endpoint, &root_cause(err));
        if err.is_timeout() {
            Self::Timeout {
                url,
                timeout: endpoint.timeout(),
                source,
            }
        } else if err.is_connect() {
            Self::Unreachable { url, source }
        } else {
            Self::Transport { url, source }
        }
    }

    fn status(endpoint: &LlmEndpoint, status: reqwest::StatusCode, body: &str) -> Self {
        let detail = serde_json::from_str::<Value>(body)
            .ok()
            .and_then(|v| {
                v.pointer("/error/message")
                    .and_then(Value::as_str)
                    .map(str::to_owned)
            })
            .unwrap_or_else(|| body.chars().take(200).collect());
        // One line, whatever the endpoint sent (HTML error pages included).
        let detail = detail.split_whitespace().collect::<Vec<_>>().join(" ");
        Self::Status {
            url: shown_url(endpoint),
            status,
            detail: endpoint.scrub(&detail),
        }
    }
}

impl From<CompletionError> for TaskError {
    fn from(err: CompletionError) -> Self {
        let message = err.to_string();
        match err.kind() {
            // A refused key or an unknown model stays wrong on every retry.
            CompletionErrorKind::Refused => TaskError::permanent(message),
            _ => TaskError::failed(message),
        }
    }
}

/// An error's text with the API key and any URL password masked: the cause
/// of a [`CompletionError`], whose original could echo either.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub(crate) struct Masked(String);

impl Masked {
    fn new(endpoint: &LlmEndpoint, text: &str) -> Self {
        Self(endpoint.scrub(&redact_url(text)))
    }
}

/// The URL posted to, as errors show it: no password, no API key.
fn shown_url(endpoint: &LlmEndpoint) -> String {
    endpoint.scrub(&endpoint.display_url())
}

fn detail_note(detail: &str) -> String {
    if detail.is_empty() {
        String::new()
    } else {
        format!(" ({detail})")
    }
}

/// What to do about an HTTP error status.
fn advice(status: reqwest::StatusCode) -> &'static str {
    match status.as_u16() {
        401 | 403 => "check LLM_API_KEY",
        404 => "check LLM_BASE_URL and LLM_MODEL",
        429 => "the endpoint is rate limiting; try again later",
        s if s >= 500 => "the endpoint is failing; try again later",
        _ => "check LLM_MODEL and the endpoint's documentation",
    }
}

/// Asks `endpoint` to complete `prompt`; the result is
/// `{"text", "model", "mode": "model"}`.
pub(crate) async fn complete(
    endpoint: &LlmEndpoint,
    http: &reqwest::Client,
    prompt: &str,
    max_tokens: u64,
) -> Result<Value, CompletionError> {
    let body = json!({
        "model": endpoint.model(),
        "messages": [{"role": "user", "content": prompt}],
        "max_tokens": max_tokens,
    });
    let mut request = http
        .post(endpoint.completions_url().clone())
        .timeout(endpoint.timeout())
        .json(&body);
    if let Some(key) = endpoint.api_key() {
        request = request.bearer_auth(key);
    }
    let response = request
        .send()
        .await
        .map_err(|err| CompletionError::transport(endpoint, &err))?;
    let status = response.status();
    let text = response
        .text()
        .await
        .map_err(|err| CompletionError::transport(endpoint, &err))?;
    if !status.is_success() {
        return Err(CompletionError::status(endpoint, status, &text));
    }
    let reply: ChatCompletion =
        serde_json::from_str(&text).map_err(|err| CompletionError::NotACompletion {
            url: shown_url(endpoint),
            source: Masked::new(endpoint, &err.to_string()),
        })?;
    let content = reply
        .choices
        .into_iter()
        .next()
        .and_then(|choice| choice.message)
        .and_then(|message| message.content)
        .ok_or_else(|| CompletionError::NoContent {
            url: shown_url(endpoint),
        })?;
    Ok(json!({
        "text": content,
        "model": reply.model.unwrap_or_else(|| endpoint.model().to_owned()),
        "mode": "model",
    }))
}

/// The innermost cause: reqwest's own message says only "error sending request".
fn root_cause(err: &(dyn std::error::Error + 'static)) -> String {
    let mut cause = err;
    while let Some(next) = cause.source() {
        cause = next;
    }
    cause.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use agentbus_testkit::ClosedPort;

    fn status_error(endpoint: &LlmEndpoint, status: reqwest::StatusCode, body: &str) -> TaskError {
        CompletionError::status(endpoint, status, body).into()
    }

    #[test]
    fn status_errors_never_show_the_key() {
        let endpoint = LlmEndpoint::new("http://h/v1")
            .unwrap()
            .with_api_key("sk-secret");
        let err = status_error(
            &endpoint,
            reqwest::StatusCode::UNAUTHORIZED,
            r#"{"error":{"message":"Incorrect API key provided: sk-secret"}}"#,
        );
        assert_eq!(
            err.message(),
            "the language model at http://h/v1/chat/completions answered HTTP 401 Unauthorized (Incorrect API key provided: ***); check LLM_API_KEY"
        );
        assert!(!err.is_retryable());
        let err = status_error(&endpoint, reqwest::StatusCode::BAD_GATEWAY, "");
        assert!(err.is_retryable());
        assert_eq!(err.status(), agentbus::TaskStatus::Failed);
    }

    #[test]
    fn client_errors_are_refusals_except_timeouts_and_rate_limits() {
        let endpoint = LlmEndpoint::new("http://h/v1").unwrap();
        let kind = |status: u16| {
            let status = reqwest::StatusCode::from_u16(status).unwrap();
            CompletionError::status(&endpoint, status, "").kind()
        };
        for refused in [400, 401, 403, 404, 422] {
            assert_eq!(kind(refused), CompletionErrorKind::Refused, "{refused}");
        }
        for unavailable in [408, 429, 500, 502, 503] {
            assert_eq!(
                kind(unavailable),
                CompletionErrorKind::Unavailable,
                "{unavailable}"
            );
        }
    }

    #[tokio::test]
    async fn unreachable_endpoint_shows_neither_password_nor_key() {
        let closed = ClosedPort::new();
        let endpoint = LlmEndpoint::new(&format!(
            "http://user:pw-never-shown@127.0.0.1:{}/v1",
            closed.port()
        ))
        .unwrap()
        .with_api_key("sk-never-shown");
        let err = complete(&endpoint, &reqwest::Client::new(), "hi", 5)
            .await
            .unwrap_err();
        assert_eq!(err.kind(), CompletionErrorKind::Unreachable, "{err}");
        let mut shown = vec![err.to_string(), format!("{err:?}")];
        let mut cause = std::error::Error::source(&err);
        while let Some(next) = cause {
            shown.push(next.to_string());
            cause = next.source();
        }
        for text in shown {
            assert!(!text.contains("never-shown"), "{text}");
        }
        assert!(
            err.to_string().starts_with(&format!(
                "cannot reach the language model at http://user:***@127.0.0.1:{}/v1/chat/completions (",
                closed.port()
            )),
            "{err}"
        );
    }

    #[test]
    fn masked_causes_hide_the_key_and_url_passwords() {
        let endpoint = LlmEndpoint::new("http://h/v1")
            .unwrap()
            .with_api_key("sk-secret");
        let masked = Masked::new(&endpoint, "no: http://u:pw@h:1/x said sk-secret");
        assert_eq!(masked.to_string(), "no: http://u:***@h:1/x said ***");
    }
}
