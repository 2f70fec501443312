//! Consumes `enhancement.feedback` and prints each event, while serving
//! `enhancement_agent` (task type `feedback_summary`), until Ctrl-C.
//!
//! ```text
//! agentbus up                                   # in one terminal
//! cargo run -p agentbus --example enhancement_agent
//! agentbus publish enhancement.feedback '{"message_id": "m1", "rating": 5}'
//! agentbus request enhancement_agent feedback_summary '{}'
//! ```
//!
//! Replicas share the events through the queue group `enhancement_agent`.
//! The server comes from `NATS_URL` or the `connection.env` written by `agentbus up`.

use agentbus::demo::{ENHANCEMENT_AGENT, ENHANCEMENT_FEEDBACK, EnhancementAgent};
use agentbus::{AgentOptions, Bus, Runtime, ServerTarget};
use futures::StreamExt;
use std::process::ExitCode;
use std::time::Duration;

#[tokio::main]
async fn main() -> ExitCode {
    match run().await {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("enhancement_agent: {err}");
            ExitCode::FAILURE
        }
    }
}

async fn run() -> Result<(), Box<dyn std::error::Error>> {
    let target = ServerTarget::resolve(None, &agentbus::connect::resolve_data_dir(None))?;
    let bus = Bus::connect(&target, "enhancement_agent-example").await?;
    let agent = EnhancementAgent::new();
    let mut feedback = bus
        .subscribe(ENHANCEMENT_FEEDBACK, Some(ENHANCEMENT_AGENT))
        .await?;
    let mut runtime = Runtime::new(bus);
    runtime.add(agent.clone(), AgentOptions::default()).await?;
    println!("enhancement_agent consuming {ENHANCEMENT_FEEDBACK}; Ctrl-C to stop");
    let mut interrupted = std::pin::pin!(tokio::signal::ctrl_c());
    loop {
        tokio::select! {
            _ = &mut interrupted => break,
            event = feedback.next() => {
                let Some(event) = event else { break };
                match agent.record(&event.payload) {
                    Ok(value) => println!("feedback #{}: {value}", agent.summary().feedback_seen),
                    Err(err) => println!("ignored a message on {} that is not JSON: {err}", event.subject),
                }
            }
        }
    }
    runtime.shutdown(Duration::from_secs(5)).await;
    Ok(())
}
