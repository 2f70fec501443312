//! Serves `llm_agent` (task type `generate_text`) until Ctrl-C.
//!
//! ```text
//! agentbus up                                   # in one terminal
//! cargo run -p agentbus --example llm_agent     # in another
//! cargo run -p agentbus --example orchestrator -- "Write a haiku about queues" 5
//! ```
//!
//! Without `LLM_BASE_URL` the agent echoes the prompt, truncated to
//! `max_tokens` words, and says so in its result. Set `LLM_BASE_URL` (for
//! example `https://api.openai.com/v1`), `LLM_API_KEY` and optionally
//! `LLM_MODEL` to call a real OpenAI-compatible model. The server comes from
//! `NATS_URL` or the `connection.env` written by `agentbus up`.

use agentbus::demo::LlmAgent;
use agentbus::{AgentOptions, Bus, Runtime, ServerTarget};
use std::process::ExitCode;
use std::time::Duration;

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
    let agent = LlmAgent::from_env()?;
    let mode = match agent.endpoint() {
        Some(endpoint) => format!("model {} at {}", endpoint.model(), endpoint.display_url()),
        None => "echo mode (set LLM_BASE_URL for a model)".to_owned(),
    };
    let target = ServerTarget::resolve(None, &agentbus::connect::resolve_data_dir(None))?;
    let bus = Bus::connect(&target, "llm_agent-example").await?;
    let mut runtime = Runtime::new(bus);
    runtime.add(agent, AgentOptions::default()).await?;
    println!(
        "llm_agent serving generate_text on {} in {mode}; Ctrl-C to stop",
        target.display_url()
    );
    runtime.run_until_signal(Duration::from_secs(10)).await?;
    Ok(())
}
