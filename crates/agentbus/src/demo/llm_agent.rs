//! The LLM agent of the requirements: `generate_text` through an
//! OpenAI-compatible chat-completions endpoint, or, with none configured, an
//! honest echo that says it is one.

use crate::agent::{Agent, TaskContext, TaskError, TaskTypeSpec};
use crate::protocol::TaskRequest;
use crate::redact::redact_url;
use serde::Deserialize;
use serde_json::{Value, json};
use std::fmt;
use std::time::Duration;

/// The agent's name on the bus.
pub const LLM_AGENT: &str = "llm_agent";
/// Its one task type.
pub const GENERATE_TEXT: &str = "generate_text";
/// Variable holding the endpoint's base URL, e.g. `https://api.openai.com/v1`.
pub const LLM_BASE_URL_VAR: &str = "LLM_BASE_URL";
/// Variable holding the API key, sent as `Authorization: Bearer <key>`.
pub const LLM_API_KEY_VAR: &str = "LLM_API_KEY";
/// Variable holding the model name.
pub const LLM_MODEL_VAR: &str = "LLM_MODEL";
/// The model asked for when `LLM_MODEL` is not set.
pub const DEFAULT_LLM_MODEL: &str = "gpt-4o-mini";
/// `max_tokens` when the payload has none (the requirements' example uses 200).
pub const DEFAULT_MAX_TOKENS: u64 = 200;
/// How long one call to the endpoint may take, body included.
pub const DEFAULT_LLM_TIMEOUT: Duration = Duration::from_secs(20);
/// What an echo result says about itself, in its `note` field.
pub const ECHO_NOTE: &str = "no model configured (set LLM_BASE_URL); this is the prompt echoed back, truncated to max_tokens words";

/// The JSON Schema of a `generate_text` payload.
pub fn generate_text_schema() -> Value {
    json!({
        "type": "object",
        "required": ["prompt"],
        "properties": {
            "prompt": {"type": "string"},
            "max_tokens": {"type": "integer", "minimum": 1}
        }
    })
}

/// An OpenAI-compatible endpoint: `POST {base_url}/chat/completions`.
///
/// ```
/// use agentbus::demo::LlmEndpoint;
/// let endpoint = LlmEndpoint::new("http://127.0.0.1:8000/v1").unwrap().with_model("llama3");
/// assert_eq!(endpoint.completions_url().as_str(), "http://127.0.0.1:8000/v1/chat/completions");
/// ```
#[derive(Clone)]
pub struct LlmEndpoint {
    completions_url: reqwest::Url,
    api_key: Option<String>,
    model: String,
    timeout: Duration,
}

/// Why the LLM agent cannot be set up.
#[derive(Debug, thiserror::Error)]
pub enum LlmSetupError {
    /// The base URL is not an http(s) URL.
    #[error(
        "the LLM base URL {url:?} is not usable ({reason}); set LLM_BASE_URL to an OpenAI-compatible base such as https://api.openai.com/v1"
    )]
    InvalidBaseUrl {
        /// The URL, with any password masked.
        url: String,
        /// Why it was refused.
        reason: String,
    },
    /// The HTTP client could not be built.
    #[error("cannot set up the HTTP client for the language model: {reason}")]
    HttpClient {
        /// Why.
        reason: String,
    },
}

impl LlmEndpoint {
    /// An endpoint at `base_url` (the part before `/chat/completions`), with
    /// model [`DEFAULT_LLM_MODEL`], no API key and [`DEFAULT_LLM_TIMEOUT`].
    pub fn new(base_url: &str) -> Result<Self, LlmSetupError> {
        let invalid = |reason: String| LlmSetupError::InvalidBaseUrl {
            url: redact_url(base_url),
            reason,
        };
        let base = base_url.trim().trim_end_matches('/');
        // Checked before joining: "http://" + "/chat/completions" would parse with host "chat".
        let parsed = reqwest::Url::parse(base).map_err(|err| invalid(err.to_string()))?;
        if !matches!(parsed.scheme(), "http" | "https") {
            return Err(invalid(format!(
                "the scheme is {:?}, not http or https",
                parsed.scheme()
            )));
        }
        if parsed.host_str().is_none_or(str::is_empty) {
            return Err(invalid("it has no host".to_owned()));
        }
        if parsed.query().is_some() || parsed.fragment().is_some() {
            return Err(invalid("it has a query or fragment".to_owned()));
        }
        let url = reqwest::Url::parse(&format!("{base}/chat/completions"))
            .map_err(|err| invalid(err.to_string()))?;
        Ok(Self {
            completions_url: url,
            api_key: None,
            model: DEFAULT_LLM_MODEL.to_owned(),
            timeout: DEFAULT_LLM_TIMEOUT,
        })
    }

    /// The endpoint configured by `LLM_BASE_URL`, `LLM_API_KEY` and
    /// `LLM_MODEL`; `None` when `LLM_BASE_URL` is unset or empty.
    pub fn from_env() -> Result<Option<Self>, LlmSetupError> {
        Self::from_env_with(|key| std::env::var(key).ok())
    }

    /// Like [`LlmEndpoint::from_env`], reading variables through `env`.
    pub fn from_env_with(
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Option<Self>, LlmSetupError> {
        let value = |key: &str| env(key).filter(|v| !v.trim().is_empty());
        let Some(base_url) = value(LLM_BASE_URL_VAR) else {
            return Ok(None);
        };
        let mut endpoint = Self::new(&base_url)?;
        if let Some(key) = value(LLM_API_KEY_VAR) {
            endpoint = endpoint.with_api_key(key.trim());
        }
        if let Some(model) = value(LLM_MODEL_VAR) {
            endpoint = endpoint.with_model(model.trim());
        }
        Ok(Some(endpoint))
    }

    /// Sends `Authorization: Bearer <key>` with every call.
    #[must_use]
    pub fn with_api_key(mut self, key: impl Into<String>) -> Self {
        self.api_key = Some(key.into());
        self
    }

    /// Asks for `model` instead of [`DEFAULT_LLM_MODEL`].
    #[must_use]
    pub fn with_model(mut self, model: impl Into<String>) -> Self {
        self.model = model.into();
        self
    }

    /// Gives up on a call after `timeout` (answered as a `failed` task).
    #[must_use]
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// The URL posted to.
    pub fn completions_url(&self) -> &reqwest::Url {
        &self.completions_url
    }

    /// The model asked for.
    pub fn model(&self) -> &str {
        &self.model
    }

    /// How long one call may take.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// Whether an API key is sent.
    pub fn has_api_key(&self) -> bool {
        self.api_key.is_some()
    }

    /// The URL posted to, safe to print (any password in it masked).
    pub fn display_url(&self) -> String {
        redact_url(self.completions_url.as_str())
    }

    /// Removes the API key from text that may echo it (error bodies, causes).
    fn scrub(&self, text: &str) -> String {
        match &self.api_key {
            Some(key) if !key.is_empty() => text.replace(key.as_str(), "***"),
            _ => text.to_owned(),
        }
    }
}

impl fmt::Debug for LlmEndpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LlmEndpoint")
            .field("completions_url", &self.display_url())
            .field("api_key", &self.api_key.as_ref().map(|_| "***"))
            .field("model", &self.model)
            .field("timeout", &self.timeout)
            .finish()
    }
}

/// The `llm_agent` of the requirements, serving task type `generate_text`
/// with payload `{"prompt": string, "max_tokens"?: integer >= 1}`.
///
/// With an [`LlmEndpoint`], the result is `{"text", "model", "mode": "model"}`
/// from the endpoint's `choices[0].message.content`. Without one it does not
/// pretend: the result is `{"text", "mode": "echo", "note"}`, where `text` is
/// the prompt's first `max_tokens` whitespace-separated words joined by single
/// spaces, and `note` is [`ECHO_NOTE`].
///
/// ```no_run
/// # async fn example(bus: agentbus::Bus) -> Result<(), Box<dyn std::error::Error>> {
/// use agentbus::{AgentOptions, Runtime};
/// use agentbus::demo::LlmAgent;
/// let mut runtime = Runtime::new(bus);
/// runtime.add(LlmAgent::from_env()?, AgentOptions::default()).await?;
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct LlmAgent {
    backend: Backend,
}

#[derive(Debug, Clone)]
enum Backend {
    Echo,
    Model {
        endpoint: LlmEndpoint,
        http: reqwest::Client,
    },
}

#[derive(Debug, Deserialize)]
struct GenerateText {
    prompt: String,
    max_tokens: Option<u64>,
}

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

impl LlmAgent {
    /// An agent calling `endpoint`, or echoing when it is `None`.
    pub fn new(endpoint: Option<LlmEndpoint>) -> Result<Self, LlmSetupError> {
        let backend = match endpoint {
            None => Backend::Echo,
            Some(endpoint) => {
                let http = reqwest::Client::builder().build().map_err(|err| {
                    LlmSetupError::HttpClient {
                        reason: err.to_string(),
                    }
                })?;
                Backend::Model { endpoint, http }
            }
        };
        Ok(Self { backend })
    }

    /// An agent configured by `LLM_BASE_URL`, `LLM_API_KEY` and `LLM_MODEL`.
    pub fn from_env() -> Result<Self, LlmSetupError> {
        Self::new(LlmEndpoint::from_env()?)
    }

    /// The endpoint called, or `None` in echo mode.
    pub fn endpoint(&self) -> Option<&LlmEndpoint> {
        match &self.backend {
            Backend::Echo => None,
            Backend::Model { endpoint, .. } => Some(endpoint),
        }
    }

    /// Generates text for `prompt` as the `generate_text` task does, without the bus.
    pub async fn generate(
        &self,
        prompt: &str,
        max_tokens: Option<u64>,
    ) -> Result<Value, TaskError> {
        let max_tokens = max_tokens.unwrap_or(DEFAULT_MAX_TOKENS);
        match &self.backend {
            Backend::Echo => Ok(json!({
                "text": truncate_words(prompt, usize::try_from(max_tokens).unwrap_or(usize::MAX)),
                "mode": "echo",
                "note": ECHO_NOTE,
            })),
            Backend::Model { endpoint, http } => complete(endpoint, http, prompt, max_tokens).await,
        }
    }
}

impl Agent for LlmAgent {
    fn name(&self) -> &str {
        LLM_AGENT
    }

    fn task_types(&self) -> Vec<TaskTypeSpec> {
        TaskTypeSpec::new(GENERATE_TEXT)
            .map(|spec| spec.with_schema(generate_text_schema()))
            .into_iter()
            .collect()
    }

    async fn handle(&self, task: TaskRequest, _ctx: TaskContext) -> Result<Value, TaskError> {
        let input: GenerateText = task.payload_as()?;
        self.generate(&input.prompt, input.max_tokens).await
    }
}

/// The first `max_words` whitespace-separated words of `text`, joined by single spaces.
///
/// ```
/// assert_eq!(agentbus::demo::truncate_words("  one two\tthree four ", 3), "one two three");
/// ```
pub fn truncate_words(text: &str, max_words: usize) -> String {
    text.split_whitespace()
        .take(max_words)
        .collect::<Vec<_>>()
        .join(" ")
}

async fn complete(
    endpoint: &LlmEndpoint,
    http: &reqwest::Client,
    prompt: &str,
    max_tokens: u64,
) -> Result<Value, TaskError> {
    let body = json!({
        "model": endpoint.model,
        "messages": [{"role": "user", "content": prompt}],
        "max_tokens": max_tokens,
    });
    let mut request = http
        .post(endpoint.completions_url.clone())
        .timeout(endpoint.timeout)
        .json(&body);
    if let Some(key) = &endpoint.api_key {
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
        "model": reply.model.unwrap_or_else(|| endpoint.model.clone()),
        "mode": "model",
    }))
}

fn transport_error(endpoint: &LlmEndpoint, err: &reqwest::Error) -> TaskError {
    let url = endpoint.display_url();
    let message = if err.is_timeout() {
        format!(
            "the language model at {url} did not answer within {:?}; try again later or use a faster model",
            endpoint.timeout
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
    use std::collections::HashMap;

    #[test]
    fn echo_truncates_to_words() {
        assert_eq!(truncate_words("a b  c\nd", 2), "a b");
        assert_eq!(truncate_words("a b", 10), "a b");
        assert_eq!(truncate_words("   ", 3), "");
    }

    #[test]
    fn declares_generate_text_with_its_schema() {
        let types = LlmAgent::new(None).unwrap().task_types();
        assert_eq!(types.len(), 1);
        assert_eq!(types[0].name().as_str(), GENERATE_TEXT);
        assert_eq!(types[0].schema(), Some(&generate_text_schema()));
    }

    #[test]
    fn endpoint_from_environment() {
        let vars: HashMap<&str, &str> = [
            (LLM_BASE_URL_VAR, "http://127.0.0.1:9/v1/"),
            (LLM_API_KEY_VAR, "sk-test"),
            (LLM_MODEL_VAR, "tiny"),
        ]
        .into();
        let endpoint = LlmEndpoint::from_env_with(|k| vars.get(k).map(|v| v.to_string()))
            .unwrap()
            .unwrap();
        assert_eq!(
            endpoint.completions_url().as_str(),
            "http://127.0.0.1:9/v1/chat/completions"
        );
        assert_eq!(endpoint.model(), "tiny");
        assert!(endpoint.has_api_key());
        assert!(!format!("{endpoint:?}").contains("sk-test"));
        assert!(
            LlmEndpoint::from_env_with(|k| (k == LLM_BASE_URL_VAR).then(String::new))
                .unwrap()
                .is_none()
        );
        let defaults = LlmEndpoint::from_env_with(|k| {
            (k == LLM_BASE_URL_VAR).then(|| "https://h/v1".to_owned())
        })
        .unwrap()
        .unwrap();
        assert_eq!(defaults.model(), DEFAULT_LLM_MODEL);
        assert!(!defaults.has_api_key());
    }

    #[test]
    fn bad_base_urls_are_one_clear_error() {
        for bad in ["ftp://h/v1", "not a url", "http://", "http://h/v1?x=1"] {
            let err = LlmEndpoint::new(bad).unwrap_err();
            assert!(err.to_string().contains("set LLM_BASE_URL"), "{err}");
        }
        let err = LlmEndpoint::new("ftp://u:hunter2@h/v1").unwrap_err();
        assert!(!err.to_string().contains("hunter2"), "{err}");
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
        assert_eq!(err.status(), crate::TaskStatus::Failed);
    }
}
