//! Calls to the chat-completions endpoint: one answer whole, or streamed
//! as server-sent events; their failures as task errors a person can act
//! on, never showing the API key.

mod error;
mod sse;
mod stream;

pub(crate) use error::CompletionError;
pub(crate) use stream::stream_completion;

use crate::llm_endpoint::LlmEndpoint;
use error::{Masked, shown_url};
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
) -> Result<Value, CompletionError> {
    let response = post(endpoint, http, prompt, max_tokens, false)
        .timeout(endpoint.timeout())
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
    let (content, model) = read_completion(endpoint, &text)?;
    Ok(model_result(endpoint, content, model))
}

/// The request for a completion of `prompt`, streamed or not.
fn post(
    endpoint: &LlmEndpoint,
    http: &reqwest::Client,
    prompt: &str,
    max_tokens: u64,
    stream: bool,
) -> reqwest::RequestBuilder {
    let mut body = json!({
        "model": endpoint.model(),
        "messages": [{"role": "user", "content": prompt}],
        "max_tokens": max_tokens,
    });
    if stream {
        body["stream"] = json!(true);
    }
    let request = http.post(endpoint.completions_url().clone()).json(&body);
    match endpoint.api_key() {
        Some(key) => request.bearer_auth(key),
        None => request,
    }
}

/// The content of a whole chat completion, and the model it names.
fn read_completion(
    endpoint: &LlmEndpoint,
    text: &str,
) -> Result<(String, Option<String>), CompletionError> {
    let reply: ChatCompletion =
        serde_json::from_str(text).map_err(|err| CompletionError::NotACompletion {
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
    Ok((content, reply.model))
}

/// The task's result: `text`, the model the endpoint named (else the one
/// asked for), and `"mode": "model"`.
fn model_result(endpoint: &LlmEndpoint, text: String, model: Option<String>) -> Value {
    json!({
        "text": text,
        "model": model.unwrap_or_else(|| endpoint.model().to_owned()),
        "mode": "model",
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use agentbus_testkit::ClosedPort;
    use error::CompletionErrorKind;

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
}
