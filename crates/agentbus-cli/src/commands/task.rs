//! `agentbus task`: where a queued task stands, and what is recorded of it.

use super::ServerArgs;
use crate::output::outln;
use crate::output::print_json;
use agentbus::delivery::{TaskRecord, TaskReport, TaskState};
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
    let report = bus.task_report(&task_id).await?;
    let Some(record) = &report.record else {
        anyhow::bail!(
            "no task {task_id} is known: check the id that `agentbus submit` printed (a task queued by `Bus::submit` or a plain NATS publish is known only once an attempt ends, and records expire after 7 days as shipped)"
        );
    };
    if args.json {
        print_json(&document(&report, record)?)?;
        return Ok(ExitCode::SUCCESS);
    }
    let subject = &record.subject;
    match report.state {
        TaskState::Queued => outln!(
            "task {task_id}: queued on {subject}, not delivered to a worker yet{}",
            record
                .sequence
                .map(|sequence| format!(" (sequence {sequence})"))
                .unwrap_or_default()
        )?,
        TaskState::Running => outln!(
            "task {task_id}: running on {subject}: delivered to a worker, not acknowledged yet ({})",
            report.note().unwrap_or_default()
        )?,
        TaskState::FinishedWithoutRecord => outln!(
            "task {task_id}: finished without a record: it left {subject} and no outcome was recorded ({})",
            report.note().unwrap_or_default()
        )?,
        _ => print_record(record)?,
    }
    Ok(ExitCode::SUCCESS)
}

/// The record as JSON, with the state told by the lookup and its note.
fn document(report: &TaskReport, record: &TaskRecord) -> anyhow::Result<serde_json::Value> {
    let mut document = serde_json::to_value(record)?;
    document["state"] = serde_json::to_value(report.state)?;
    if let Some(note) = report.note() {
        document["note"] = note.into();
    }
    Ok(document)
}

fn print_record(record: &TaskRecord) -> anyhow::Result<()> {
    outln!("task      {}", record.task_id)?;
    outln!("state     {}", record.state)?;
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
