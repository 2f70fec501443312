//! Why a call to the chat-completions endpoint produced no text, as task
//! errors a person can act on, never showing the API key.

use crate::llm_endpoint::LlmEndpoint;
use agentbus::TaskError;
use agentbus::redact::redact_url;
use serde_json::Value;
use std::time::Duration;

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
    /// A streamed answer went quiet: no bytes for the endpoint's timeout.
    #[error(
        "the language model at {url} sent nothing for {timeout:?} while streaming; try again later or use a faster model"
    )]
    Silent {
        /// The URL posted to.
        url: String,
        /// The timeout.
        timeout: Duration,
    },
    /// A streamed answer is not server-sent events of chat completion chunks.
    #[error(
        "the language model at {url} streamed something that is not a chat completion chunk ({source}); check that LLM_BASE_URL points at an OpenAI-compatible API"
    )]
    NotAChunk {
        /// The URL posted to.
        url: String,
        /// What is wrong, which may quote the event.
        #[source]
        source: Masked,
    },
    /// A streamed answer carried an error instead of the next chunk.
    #[error(
        "the language model at {url} reported an error while streaming ({detail}); try again later"
    )]
    StreamedError {
        /// The URL posted to.
        url: String,
        /// The endpoint's message (`error.message`, else the error as JSON), on one line.
        detail: String,
    },
    /// A streamed answer ended without `data: [DONE]` or a finish reason.
    #[error(
        "the language model at {url} ended its stream before data: [DONE]; try again, and check that LLM_BASE_URL points at an OpenAI-compatible API"
    )]
    Unfinished {
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
            Self::Timeout { .. } | Self::Silent { .. } => CompletionErrorKind::Timeout,
            Self::Unreachable { .. } => CompletionErrorKind::Unreachable,
            Self::Transport { .. } => CompletionErrorKind::Transport,
            Self::Status { status, .. }
                if status.is_client_error() && !matches!(status.as_u16(), 408 | 429) =>
            {
                CompletionErrorKind::Refused
            }
            Self::Status { .. } | Self::StreamedError { .. } => CompletionErrorKind::Unavailable,
            Self::NotACompletion { .. }
            | Self::NoContent { .. }
            | Self::NotAChunk { .. }
            | Self::Unfinished { .. } => CompletionErrorKind::InvalidReply,
        }
    }

    pub(super) fn transport(endpoint: &LlmEndpoint, err: &reqwest::Error) -> Self {
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

    pub(super) fn status(endpoint: &LlmEndpoint, status: reqwest::StatusCode, body: &str) -> Self {
        let detail = serde_json::from_str::<Value>(body)
            .ok()
            .and_then(|v| {
                v.pointer("/error/message")
                    .and_then(Value::as_str)
                    .map(str::to_owned)
            })
            .unwrap_or_else(|| body.chars().take(200).collect());
        Self::Status {
            url: shown_url(endpoint),
            status,
            detail: one_line(endpoint, &detail),
        }
    }

    /// A streamed answer with nothing new for the endpoint's timeout.
    pub(super) fn silent(endpoint: &LlmEndpoint) -> Self {
        Self::Silent {
            url: shown_url(endpoint),
            timeout: endpoint.timeout(),
        }
    }

    /// A streamed answer that is not chat completion chunks, and why.
    pub(super) fn not_a_chunk(endpoint: &LlmEndpoint, why: &str) -> Self {
        Self::NotAChunk {
            url: shown_url(endpoint),
            source: Masked::new(endpoint, why),
        }
    }

    /// The `error` member of a streamed event.
    pub(super) fn streamed_error(endpoint: &LlmEndpoint, error: &Value) -> Self {
        let detail = match error.get("message").and_then(Value::as_str) {
            Some(message) => message.to_owned(),
            None => error.to_string().chars().take(200).collect(),
        };
        Self::StreamedError {
            url: shown_url(endpoint),
            detail: one_line(endpoint, &detail),
        }
    }

    /// A streamed answer that ended before its end.
    pub(super) fn unfinished(endpoint: &LlmEndpoint) -> Self {
        Self::Unfinished {
            url: shown_url(endpoint),
        }
    }
}

/// An endpoint's message as errors show it: on one line, whatever the
/// endpoint sent (HTML error pages included), without the API key.
fn one_line(endpoint: &LlmEndpoint, text: &str) -> String {
    let line = text.split_whitespace().collect::<Vec<_>>().join(" ");
    endpoint.scrub(&line)
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
    pub(super) fn new(endpoint: &LlmEndpoint, text: &str) -> Self {
        Self(endpoint.scrub(&redact_url(text)))
    }
}

/// The URL posted to, as errors show it: no password, no API key.
pub(super) fn shown_url(endpoint: &LlmEndpoint) -> String {
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

    #[test]
    fn masked_causes_hide_the_key_and_url_passwords() {
        let endpoint = LlmEndpoint::new("http://h/v1")
            .unwrap()
            .with_api_key("sk-secret");
        let masked = Masked::new(&endpoint, "no: http://u:pw@h:1/x said sk-secret");
        assert_eq!(masked.to_string(), "no: http://u:***@h:1/x said ***");
    }
}
