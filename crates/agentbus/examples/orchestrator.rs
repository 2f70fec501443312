//! Sends one `generate_text` task to `llm_agent` and prints the TaskResponse JSON.
//!
//! ```text
//! agentbus up                                   # in one terminal
//! cargo run -p agentbus --example llm_agent     # in another
//! cargo run -p agentbus --example orchestrator -- "Write a short story about an AI agent." 200
//! ```
//!
//! Arguments: the prompt (default: the requirements' example) and an optional
//! `max_tokens`. Exits with 1 when the task did not complete. The server comes
//! from `NATS_URL` or the `connection.env` written by `agentbus up`.

use agentbus::demo::send_generate_text;
use agentbus::{Bus, ServerTarget};
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

async fn run() -> Result<bool, Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let prompt = args
        .next()
        .unwrap_or_else(|| "Write a short story about an AI agent.".to_owned());
    let max_tokens = match args.next() {
        Some(text) => Some(
            text.parse::<u64>()
                .map_err(|_| format!("max_tokens must be a positive integer, not {text:?}"))?,
        ),
        None => None,
    };
    let target = ServerTarget::resolve(None, &agentbus::connect::resolve_data_dir(None))?;
    let bus = Bus::connect(&target, "orchestrator-example").await?;
    let response = send_generate_text(&bus, &prompt, max_tokens).await?;
    println!("{}", serde_json::to_string_pretty(&response)?);
    Ok(response.is_completed())
}
