//! The LLM agent: `generate_text` through an OpenAI-compatible endpoint or,
//! with none configured, an honest echo that says it is one; either way
//! streamed to a caller that follows the task.

use crate::completion::{complete, stream_completion};
use crate::echo::{MAX_ECHO_DELAY_MS, echo, echo_delay};
use crate::llm_endpoint::{LlmEndpoint, LlmSetupError};
use crate::output::TextOutput;
use agentbus::{Agent, TaskContext, TaskError, TaskRequest, TaskTypeSpec};
use serde::Deserialize;
use serde_json::{Value, json};

/// The agent's name on the bus.
pub const LLM_AGENT: &str = "llm_agent";
/// Its one task type.
pub const GENERATE_TEXT: &str = "generate_text";
/// `max_tokens` when the payload has none.
pub const DEFAULT_MAX_TOKENS: u64 = 200;
/// What an echo result says about itself, in its `note` field.
pub const ECHO_NOTE: &str = "no model configured (set LLM_BASE_URL); this is the prompt echoed back, truncated to max_tokens words";

/// The JSON Schema of a `generate_text` payload.
pub fn generate_text_schema() -> Value {
    json!({
        "type": "object",
        "required": ["prompt"],
        "properties": {
            "prompt": {"type": "string"},
            "max_tokens": {"type": "integer", "minimum": 1},
            "echo_delay_ms": {"type": "integer", "minimum": 0, "maximum": MAX_ECHO_DELAY_MS}
        }
    })
}

/// The `llm_agent`, serving task type `generate_text` with payload
/// `{"prompt": string, "max_tokens"?: integer >= 1, "echo_delay_ms"?: integer}`.
///
/// With an [`LlmEndpoint`], the result is `{"text", "model", "mode": "model"}`
/// from the endpoint's `choices[0].message.content`. Without one it does not
/// pretend: the result is `{"text", "mode": "echo", "note"}`, where `text` is
/// the prompt's first `max_tokens` whitespace-separated words joined by single
/// spaces, and `note` is [`ECHO_NOTE`]; `echo_delay_ms` (0 to
/// [`MAX_ECHO_DELAY_MS`], default 0) pauses between those words.
///
/// A request with `"stream": true` ([`TaskRequest::streamed`]) gets its text
/// as it is made, as `partial` events `{"text": piece}` whose pieces
/// concatenate to the result's `text`: one per word in echo mode (the word
/// and the space after it), one per content delta of the endpoint's
/// server-sent events otherwise (the call asks for `"stream": true`). A
/// request without it gets no events and the endpoint's answer whole.
///
/// A cancelled task (or one out of time) stops at once, dropping the call to
/// the endpoint; when it was echoing or streaming, its response carries the
/// text made until then as its result.
///
/// ```no_run
/// # async fn example(bus: agentbus::Bus) -> Result<(), Box<dyn std::error::Error>> {
/// use agentbus::{AgentOptions, Runtime};
/// use agentbus_demo::LlmAgent;
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

impl LlmAgent {
    /// An agent calling `endpoint`, or echoing when it is `None`.
    pub fn new(endpoint: Option<LlmEndpoint>) -> Result<Self, LlmSetupError> {
        let backend = match endpoint {
            None => Backend::Echo,
            Some(endpoint) => {
                let http = reqwest::Client::builder()
                    .build()
                    .map_err(|source| LlmSetupError::HttpClient { source })?;
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
            Backend::Echo => Ok(echo_result(&truncate_words(
                prompt,
                usize::try_from(max_tokens).unwrap_or(usize::MAX),
            ))),
            Backend::Model { endpoint, http } => {
                Ok(complete(endpoint, http, prompt, max_tokens).await?)
            }
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

    async fn handle(&self, task: TaskRequest, ctx: TaskContext) -> Result<Value, TaskError> {
        let input: GenerateText = task.payload_as()?;
        let max_tokens = input.max_tokens.unwrap_or(DEFAULT_MAX_TOKENS);
        let mut out = TextOutput::new(&ctx, task.stream);
        match &self.backend {
            Backend::Echo => {
                let delay = echo_delay(&task.payload)?;
                let words = usize::try_from(max_tokens).unwrap_or(usize::MAX);
                echo(&input.prompt, words, delay, &mut out).await;
                Ok(echo_result(out.text()))
            }
            Backend::Model { endpoint, http } if task.stream => {
                Ok(stream_completion(endpoint, http, &input.prompt, max_tokens, &mut out).await?)
            }
            Backend::Model { endpoint, http } => {
                let call = complete(endpoint, http, &input.prompt, max_tokens);
                tokio::select! {
                    result = call => Ok(result?),
                    // The call is dropped, closing its connection; the
                    // runtime answers the task as stopped.
                    _ = ctx.cancelled() => Err(TaskError::permanent(
                        "the task was stopped before the language model answered",
                    )),
                }
            }
        }
    }
}

/// The result of an echo.
fn echo_result(text: &str) -> Value {
    json!({"text": text, "mode": "echo", "note": ECHO_NOTE})
}

/// The first `max_words` whitespace-separated words of `text`, joined by single spaces.
///
/// ```
/// assert_eq!(agentbus_demo::truncate_words("  one two\tthree four ", 3), "one two three");
/// ```
pub fn truncate_words(text: &str, max_words: usize) -> String {
    text.split_whitespace()
        .take(max_words)
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
