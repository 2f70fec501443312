//! `agentbus task`: what is known of a queued task.

use super::ServerArgs;
use crate::output::outln;
use crate::output::print_json;
use agentbus::delivery::{TaskRecord, TaskState};
use agentbus::{Bus, TaskId};
use clap::Args;
use std::process::ExitCode;

/// Arguments of `agentbus task`.
#[derive(Debug, Args)]
pub(crate) struct TaskArgs {
    #[command(flatten)]
    server: ServerArgs,

    /// The task id printed by `agentbus submit`.
    task_id: String,

    /// Print one JSON document.
    #[arg(long)]
    json: bool,
}

pub(super) async fn exec(args: TaskArgs) -> anyhow::Result<ExitCode> {
    let task_id = TaskId::parse(&args.task_id)?;
    let (_, client) = args.server.connect().await?;
    let bus = Bus::from_client(client);
    let record = bus.task_record(&task_id).await?;
    if args.json {
        let document = match &record {
            Some(record) => serde_json::to_value(record)?,
            None => {
                serde_json::json!({ "task_id": task_id, "state": TaskState::Pending, "attempts": 0 })
            }
        };
        print_json(&document)?;
        return Ok(ExitCode::SUCCESS);
    }
    match record {
        None => outln!(
            "task {task_id}: pending (queued, or running its first attempt; nothing is recorded until an attempt ends, and a fire-and-forget task that succeeds at once leaves no record)"
        )?,
        Some(record) => print_record(&record)?,
    }
    Ok(ExitCode::SUCCESS)
}

fn print_record(record: &TaskRecord) -> anyhow::Result<()> {
    let state = serde_json::to_value(record.state)?;
    outln!("task      {}", record.task_id)?;
    outln!("state     {}", state.as_str().unwrap_or_default())?;
    outln!("queue     {}", record.subject)?;
    outln!("attempts  {}", record.attempts)?;
    for error in &record.errors {
        outln!(
            "  attempt {} at {}: {}",
            error.attempt,
            error.at,
            error.error
        )?;
    }
    if let Some(response) = &record.response {
        outln!("response  {}", serde_json::to_string_pretty(response)?)?;
    }
    Ok(())
}
