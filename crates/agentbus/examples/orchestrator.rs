//! Sends one `generate_text` task to `llm_agent` and prints the TaskResponse
//! as JSON.
//!
//! ```text
//! agentbus up                                   # in one terminal
//! cargo run --release --example llm_agent     # in another
//! cargo run --release --example orchestrator -- "Write a short story about an AI agent." 200
//! ```
//!
//! Arguments: the prompt and an optional `max_tokens`. Exits with 1 when the
//! task did not complete. The server comes from `NATS_URL` or the
//! `connection.env` written by `agentbus up`.

use agentbus::{Bus, Priority, ServerTarget};
use serde_json::json;
use std::process::ExitCode;

#[tokio::main]
async fn main() -> ExitCode {
    match run().await {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(err) => {
            eprintln!("orchestrator: {err}");
            ExitCode::FAILURE
        }
    }
}

/// Returns whether the task completed.
async fn run() -> Result<bool, Box<dyn std::error::Error>> {
    // Spans over OTLP when OTEL_EXPORTER_OTLP_ENDPOINT is set; nothing otherwise.
    #[cfg(feature = "otlp")]
    let _telemetry = agentbus::telemetry::init_from_env("orchestrator")?;
    let mut args = std::env::args().skip(1);
    let prompt = args
        .next()
        .unwrap_or_else(|| "Write a short story about an AI agent.".to_owned());
    let mut payload = json!({ "prompt": prompt });
    if let Some(text) = args.next() {
        let max_tokens: u64 = text
            .parse()
            .map_err(|_| format!("max_tokens must be a positive integer, not {text:?}"))?;
        payload["max_tokens"] = json!(max_tokens);
    }
    let target = ServerTarget::resolve(None, &agentbus::connect::resolve_data_dir(None))?;
    let bus = Bus::connect(&target, "orchestrator-example").await?;
    // Request/reply: an error at once if no llm_agent runs, else its answer.
    let response = bus
        .publish_task("llm_agent", "generate_text", payload, Priority::Normal)
        .await?;
    println!("{}", serde_json::to_string_pretty(&response)?);
    Ok(response.is_completed())
}
