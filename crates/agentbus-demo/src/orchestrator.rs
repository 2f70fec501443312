//! The orchestrator's side of the LLM scenario: sending `generate_text` to
//! `llm_agent` and waiting for the answer.

use crate::llm_agent::{GENERATE_TEXT, LLM_AGENT};
use agentbus::{Bus, Priority, SendTaskError, TaskResponse};
use serde_json::json;

/// Sends `generate_text` with `{"prompt", "max_tokens"?}` to `llm_agent` at
/// normal priority and waits for its response (default timeout).
///
/// ```no_run
/// # async fn example(bus: agentbus::Bus) -> Result<(), agentbus::SendTaskError> {
/// let response = agentbus_demo::send_generate_text(
///     &bus, "Write a short story about an AI agent.", Some(200)).await?;
/// println!("{}", serde_json::to_string(&response).unwrap_or_default());
/// # Ok(()) }
/// ```
pub async fn send_generate_text(
    bus: &Bus,
    prompt: &str,
    max_tokens: Option<u64>,
) -> Result<TaskResponse, SendTaskError> {
    let mut payload = json!({ "prompt": prompt });
    if let Some(max_tokens) = max_tokens {
        payload["max_tokens"] = json!(max_tokens);
    }
    bus.publish_task(LLM_AGENT, GENERATE_TEXT, payload, Priority::Normal)
        .await
}
