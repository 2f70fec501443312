//! One call to the chat-completions endpoint, and its failures as task
//! errors a person can act on, never showing the API key.

use crate::llm_endpoint::LlmEndpoint;
use agentbus::TaskError;
use serde::Deserialize;
use serde_json::{Value, json};

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

/// Asks `endpoint` to complete `prompt`; the result is
/// `{"text", "model", "mode": "model"}`.
pub(crate) async fn complete(
    endpoint: &LlmEndpoint,
    http: &reqwest::Client,
    prompt: &str,
    max_tokens: u64,
) -> Result<Value, TaskError> {
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
        .map_err(|err| transport_error(endpoint, &err))?;
    let status = response.status();
    let text = response
        .text()
        .await
        .map_err(|err| transport_error(endpoint, &err))?;
    if !status.is_success() {
        return Err(status_error(endpoint, status, &text));
    }
    let reply: ChatCompletion = serde_json::from_str(&text).map_err(|err| {
        TaskError::failed(endpoint.scrub(&format!(
            "the language model at {} answered with JSON that is not a chat completion ({err}); check that LLM_BASE_URL points at an OpenAI-compatible API",
            endpoint.display_url()
        )))
    })?;
    let content = reply
        .choices
        .into_iter()
        .next()
        .and_then(|choice| choice.message)
        .and_then(|message| message.content)
        .ok_or_else(|| {
            TaskError::failed(format!(
                "the language model at {} answered without choices[0].message.content; check that LLM_BASE_URL points at an OpenAI-compatible API",
                endpoint.display_url()
            ))
        })?;
    Ok(json!({
        "text": content,
        "model": reply.model.unwrap_or_else(|| endpoint.model().to_owned()),
        "mode": "model",
    }))
}

fn transport_error(endpoint: &LlmEndpoint, err: &reqwest::Error) -> TaskError {
    let url = endpoint.display_url();
    let message = if err.is_timeout() {
        format!(
            "the language model at {url} did not answer within {:?}; try again later or use a faster model",
            endpoint.timeout()
        )
    } else if err.is_connect() {
        format!(
            "cannot reach the language model at {url} ({}); check LLM_BASE_URL and that the server is running",
            root_cause(err)
        )
    } else {
        format!(
            "the call to the language model at {url} failed ({}); try again",
            root_cause(err)
        )
    };
    TaskError::failed(endpoint.scrub(&message))
}

fn status_error(endpoint: &LlmEndpoint, status: reqwest::StatusCode, body: &str) -> TaskError {
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
    let advice = match status.as_u16() {
        401 | 403 => "check LLM_API_KEY",
        404 => "check LLM_BASE_URL and LLM_MODEL",
        429 => "the endpoint is rate limiting; try again later",
        s if s >= 500 => "the endpoint is failing; try again later",
        _ => "check LLM_MODEL and the endpoint's documentation",
    };
    let detail = if detail.is_empty() {
        String::new()
    } else {
        format!(" ({detail})")
    };
    let message = endpoint.scrub(&format!(
        "the language model at {} answered HTTP {status}{detail}; {advice}",
        endpoint.display_url()
    ));
    // A refused key or an unknown model stays wrong on every retry.
    if status.is_client_error() && !matches!(status.as_u16(), 408 | 429) {
        TaskError::permanent(message)
    } else {
        TaskError::failed(message)
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
}
