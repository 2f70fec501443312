//! An agent serving `generate_text` until Ctrl-C: it asks an OpenAI-compatible
//! model when `LLM_BASE_URL` is set, and otherwise echoes the prompt,
//! truncated to `max_tokens` words, saying so in its result.
//!
//! ```text
//! agentbus up                                   # in one terminal
//! cargo run --release --example llm_agent     # in another
//! cargo run --release --example orchestrator -- "Write a haiku about queues" 5
//! ```
//!
//! For a model, set `LLM_BASE_URL` (for example `https://api.openai.com/v1`),
//! `LLM_API_KEY` and optionally `LLM_MODEL` (default `gpt-4o-mini`). The
//! server comes from `NATS_URL` or the `connection.env` written by `agentbus up`.
//! With `AGENTBUS_METRICS_ADDR=127.0.0.1:9464` it serves Prometheus metrics
//! at `http://127.0.0.1:9464/metrics`.

use agentbus::redact::redact_url;
use agentbus::{
    Agent, AgentOptions, Bus, Runtime, ServerTarget, TaskContext, TaskError, TaskRequest,
    TaskTypeSpec,
};
use serde::Deserialize;
use serde_json::{Value, json};
use std::process::ExitCode;
use std::time::Duration;

/// The payload of a `generate_text` task.
#[derive(Deserialize)]
struct GenerateText {
    prompt: String,
    max_tokens: Option<u64>,
}

/// Answers `generate_text` with `{"text", "mode"}`, from `model` if there is one.
struct LlmAgent {
    model: Option<Model>,
}

/// An OpenAI-compatible chat-completions endpoint.
struct Model {
    http: reqwest::Client,
    /// `<LLM_BASE_URL>/chat/completions`.
    url: String,
    api_key: Option<String>,
    name: String,
}

impl LlmAgent {
    /// A model from `LLM_BASE_URL`, `LLM_API_KEY` and `LLM_MODEL`; none without `LLM_BASE_URL`.
    fn from_env() -> Self {
        let var = |name: &str| std::env::var(name).ok().filter(|v| !v.trim().is_empty());
        let model = var("LLM_BASE_URL").map(|base| Model {
            http: reqwest::Client::new(),
            url: format!("{}/chat/completions", base.trim().trim_end_matches('/')),
            api_key: var("LLM_API_KEY"),
            name: var("LLM_MODEL").unwrap_or_else(|| "gpt-4o-mini".to_owned()),
        });
        Self { model }
    }
}

impl Agent for LlmAgent {
    fn name(&self) -> &str {
        "llm_agent"
    }

    fn task_types(&self) -> Vec<TaskTypeSpec> {
        // The runtime rejects a payload that does not match, naming the field.
        let schema = json!({
            "type": "object",
            "required": ["prompt"],
            "properties": {
                "prompt": {"type": "string"},
                "max_tokens": {"type": "integer", "minimum": 1}
            }
        });
        let spec = TaskTypeSpec::new("generate_text").expect("a valid task type name");
        vec![spec.with_schema(schema)]
    }

    async fn handle(&self, task: TaskRequest, _ctx: TaskContext) -> Result<Value, TaskError> {
        let input: GenerateText = task.payload_as()?;
        let max_tokens = input.max_tokens.unwrap_or(200);
        let Some(model) = &self.model else {
            let words = usize::try_from(max_tokens).unwrap_or(usize::MAX);
            let text: Vec<&str> = input.prompt.split_whitespace().take(words).collect();
            return Ok(json!({
                "text": text.join(" "),
                "mode": "echo",
                "note": "no model configured (set LLM_BASE_URL); this is the prompt, truncated",
            }));
        };
        let text = model.complete(&input.prompt, max_tokens).await?;
        Ok(json!({"text": text, "model": model.name, "mode": "model"}))
    }
}

impl Model {
    /// The model's answer to `prompt`: `choices[0].message.content`.
    async fn complete(&self, prompt: &str, max_tokens: u64) -> Result<String, TaskError> {
        let url = redact_url(&self.url);
        let body = json!({
            "model": self.name,
            "messages": [{"role": "user", "content": prompt}],
            "max_tokens": max_tokens,
        });
        let mut request = self.http.post(&self.url).timeout(Duration::from_secs(30));
        if let Some(key) = &self.api_key {
            request = request.bearer_auth(key);
        }
        let response = request.json(&body).send().await.map_err(|err| {
            TaskError::failed(format!(
                "cannot get an answer from the model at {url} ({}); check LLM_BASE_URL",
                err.without_url()
            ))
        })?;
        let status = response.status();
        if !status.is_success() {
            // The body is left out: some endpoints repeat the API key in it.
            let message = format!(
                "the model at {url} answered HTTP {status}; check LLM_API_KEY and LLM_MODEL"
            );
            // A refused key or an unknown model stays wrong on every retry.
            return Err(if status.is_client_error() {
                TaskError::permanent(message)
            } else {
                TaskError::failed(message)
            });
        }
        let reply: Value = response.json().await.map_err(|err| {
            TaskError::failed(format!(
                "the model at {url} did not answer with JSON ({}); check that LLM_BASE_URL is OpenAI-compatible",
                err.without_url()
            ))
        })?;
        let content = reply.pointer("/choices/0/message/content");
        content.and_then(Value::as_str).map(str::to_owned).ok_or_else(|| {
            TaskError::failed(format!(
                "the model at {url} answered without choices[0].message.content; check that LLM_BASE_URL is OpenAI-compatible"
            ))
        })
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    match run().await {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("llm_agent: {err}");
            ExitCode::FAILURE
        }
    }
}

async fn run() -> Result<(), Box<dyn std::error::Error>> {
    // Spans over OTLP when OTEL_EXPORTER_OTLP_ENDPOINT is set; nothing otherwise.
    #[cfg(feature = "otlp")]
    let _telemetry = agentbus::telemetry::init_from_env("llm_agent")?;
    let agent = LlmAgent::from_env();
    let mode = match &agent.model {
        Some(model) => format!("model {} at {}", model.name, redact_url(&model.url)),
        None => "echo mode (set LLM_BASE_URL for a model)".to_owned(),
    };
    let target = ServerTarget::resolve(None, &agentbus::connect::resolve_data_dir(None))?;
    let bus = Bus::connect(&target, "llm_agent-example").await?;
    let mut runtime = Runtime::new(bus);
    runtime
        .add(agent, AgentOptions::default().metrics_from_env()?)
        .await?;
    let metrics = runtime
        .metrics_address()
        .map(|address| format!(", metrics at http://{address}/metrics"))
        .unwrap_or_default();
    println!(
        "llm_agent serving generate_text on {} in {mode}{metrics}; Ctrl-C to stop",
        target.display_url()
    );
    runtime.run_until_signal(Duration::from_secs(10)).await?;
    Ok(())
}
