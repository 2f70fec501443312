//! An agent that consumes `enhancement.feedback` events, printing each, and
//! answers `feedback_summary` with how many it has seen and the last one,
//! until Ctrl-C.
//!
//! ```text
//! agentbus up                                   # in one terminal
//! cargo run --release --example enhancement_agent
//! agentbus publish enhancement.feedback '{"message_id": "m1", "rating": 5}'
//! agentbus request enhancement_agent feedback_summary '{}'
//! ```
//!
//! Replicas share the events through the queue group `enhancement_agent`.
//! The server comes from `NATS_URL` or the `connection.env` written by `agentbus up`.

use agentbus::{
    Agent, AgentOptions, Bus, Runtime, ServerTarget, TaskContext, TaskError, TaskRequest,
    TaskTypeSpec,
};
use futures::StreamExt;
use serde::Serialize;
use serde_json::Value;
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::signal::unix::{SignalKind, signal};

/// What the agent has seen: the result of `feedback_summary`.
#[derive(Clone, Default, Serialize)]
struct Summary {
    feedback_seen: u64,
    last_feedback: Option<Value>,
}

/// Serves `feedback_summary`; clones share the summary, so the event loop
/// in `run` records into the one the runtime serves.
#[derive(Clone, Default)]
struct EnhancementAgent {
    summary: Arc<Mutex<Summary>>,
}

impl EnhancementAgent {
    /// Records one feedback event; returns how many have been seen.
    fn record(&self, feedback: Value) -> u64 {
        let mut summary = self.summary.lock().expect("not poisoned");
        summary.feedback_seen += 1;
        summary.last_feedback = Some(feedback);
        summary.feedback_seen
    }
}

impl Agent for EnhancementAgent {
    fn name(&self) -> &str {
        "enhancement_agent"
    }

    fn task_types(&self) -> Vec<TaskTypeSpec> {
        vec![TaskTypeSpec::new("feedback_summary").expect("a valid task type name")]
    }

    async fn handle(&self, _task: TaskRequest, _ctx: TaskContext) -> Result<Value, TaskError> {
        let summary = self.summary.lock().expect("not poisoned").clone();
        serde_json::to_value(summary)
            .map_err(|err| TaskError::permanent(format!("cannot encode the summary: {err}")))
    }
}

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
    // Spans over OTLP when OTEL_EXPORTER_OTLP_ENDPOINT is set; nothing otherwise.
    #[cfg(feature = "otlp")]
    let _telemetry = agentbus::telemetry::init_from_env("enhancement_agent")?;
    let mut interrupt = signal(SignalKind::interrupt())?;
    let target = ServerTarget::resolve(None, &agentbus::connect::resolve_data_dir(None))?;
    let bus = Bus::connect(&target, "enhancement_agent-example").await?;
    let mut feedback = bus
        .subscribe("enhancement.feedback", Some("enhancement_agent"))
        .await?;
    let agent = EnhancementAgent::default();
    let mut runtime = Runtime::new(bus);
    runtime
        .add(agent.clone(), AgentOptions::default().metrics_from_env()?)
        .await?;
    println!("enhancement_agent consuming enhancement.feedback; Ctrl-C to stop");
    loop {
        tokio::select! {
            _ = interrupt.recv() => break,
            event = feedback.next() => {
                let Some(event) = event else { break };
                match event.json::<Value>() {
                    Ok(value) => println!("feedback #{}: {value}", agent.record(value.clone())),
                    Err(err) => println!("ignored a message on {} that is not JSON: {err}", event.subject),
                }
            }
        }
    }
    runtime.shutdown(Duration::from_secs(5)).await;
    Ok(())
}
