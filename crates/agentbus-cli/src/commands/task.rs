//! `agentbus task`: where a task stands, and what is recorded of it; and
//! `task watch|cancel|answer`.

use super::ServerArgs;
use super::follow::Printer;
use super::read_json_argument;
use crate::output::outln;
use crate::output::print_json;
use agentbus::delivery::{TaskRecord, TaskReport, TaskState};
use agentbus::task_log::CancelOutcome;
use agentbus::{Bus, TaskId};
use clap::{Args, Subcommand};
use serde_json::json;
use std::process::ExitCode;

/// Arguments of `agentbus task`.
#[derive(Debug, Args)]
#[command(
    args_conflicts_with_subcommands = true,
    subcommand_negates_reqs = true,
    override_usage = "agentbus task [OPTIONS] <TASK_ID>\n       agentbus task watch [OPTIONS] <TASK_ID>\n       agentbus task cancel [OPTIONS] <TASK_ID>\n       agentbus task answer [OPTIONS] <TASK_ID> <ANSWER>"
)]
pub(crate) struct TaskArgs {
    #[command(subcommand)]
    action: Option<TaskAction>,

    #[command(flatten)]
    server: ServerArgs,

    /// The task id (printed by `agentbus submit`, or given with --task-id).
    #[arg(required = true)]
    task_id: Option<String>,

    /// Print one JSON document.
    #[arg(long)]
    json: bool,
}

/// What to do with a task.
#[derive(Debug, Subcommand)]
enum TaskAction {
    /// Print the task's events from a sequence to its final state, live
    /// while it runs (resume after an interruption with --from).
    Watch(WatchArgs),
    /// Cancel the task: a running handler is stopped, a queued task never runs.
    Cancel(CancelArgs),
    /// Answer the question the task's handler asked (its state is input_required).
    Answer(AnswerArgs),
}

#[derive(Debug, Args)]
struct WatchArgs {
    #[command(flatten)]
    server: ServerArgs,
    /// The task id.
    task_id: String,
    /// The first event to print, by its sequence number (1: all).
    #[arg(long, default_value_t = 1, value_name = "SEQ")]
    from: u64,
    /// One JSON object per line, each event then the TaskResponse.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Args)]
struct CancelArgs {
    #[command(flatten)]
    server: ServerArgs,
    /// The task id.
    task_id: String,
    /// Print one JSON document.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Args)]
struct AnswerArgs {
    #[command(flatten)]
    server: ServerArgs,
    /// The task id.
    task_id: String,
    /// The answer: any JSON value, or - to read it from stdin.
    answer: String,
    /// Print one JSON document.
    #[arg(long)]
    json: bool,
}

pub(super) async fn exec(args: TaskArgs) -> anyhow::Result<ExitCode> {
    match args.action {
        Some(TaskAction::Watch(args)) => watch(args).await,
        Some(TaskAction::Cancel(args)) => cancel(args).await,
        Some(TaskAction::Answer(args)) => answer(args).await,
        None => {
            let task_id = args.task_id.unwrap_or_default();
            show(&args.server, &task_id, args.json).await
        }
    }
}

async fn connect(server: &ServerArgs) -> anyhow::Result<Bus> {
    server.bus().await
}

async fn watch(args: WatchArgs) -> anyhow::Result<ExitCode> {
    let task_id = TaskId::parse(&args.task_id)?;
    anyhow::ensure!(args.from >= 1, "--from counts events from 1");
    let bus = connect(&args.server).await?;
    // Following first, so nothing is missed while looking the task up.
    let mut watch = bus.watch(&task_id, args.from).await?;
    if bus.task_report(&task_id).await?.state == TaskState::Unknown {
        anyhow::bail!(
            "no task {task_id} is known: nothing is recorded or logged of it and no runtime holds it; check the id (a task over request/reply that reports nothing logs nothing)"
        );
    }
    let mut printer = Printer::new(args.json);
    let last = printer.follow(&mut watch).await?;
    let Some(response) = last.as_ref().and_then(|event| event.response()) else {
        // Asked from past the final event: nothing more to print.
        return Ok(ExitCode::SUCCESS);
    };
    printer.response(&response)?;
    Ok(if response.is_completed() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

async fn cancel(args: CancelArgs) -> anyhow::Result<ExitCode> {
    let task_id = TaskId::parse(&args.task_id)?;
    let bus = connect(&args.server).await?;
    let outcome = bus.cancel(&task_id).await?;
    let (outcome_name, text, extra) = match &outcome {
        CancelOutcome::Cancelling { agent, instance } => (
            "cancelling",
            format!(
                "task {task_id}: cancel sent to agent {agent} (instance {instance}); it ends as cancelled"
            ),
            json!({"agent": agent, "instance": instance}),
        ),
        CancelOutcome::Dequeued => (
            "dequeued",
            format!(
                "task {task_id}: removed from its queue before any worker took it; it never runs"
            ),
            json!({}),
        ),
        CancelOutcome::Marked => (
            "marked",
            format!(
                "task {task_id}: no runtime holds it now; it is marked cancelled and no worker will run it"
            ),
            json!({}),
        ),
        CancelOutcome::AlreadyOver(state) => (
            "already_over",
            format!("task {task_id}: already over ({state}); nothing changed"),
            json!({"state": state}),
        ),
        _ => ("unknown", format!("task {task_id}: {outcome:?}"), json!({})),
    };
    if args.json {
        let mut document = json!({"task_id": task_id, "outcome": outcome_name});
        if let (Some(document), Some(extra)) = (document.as_object_mut(), extra.as_object()) {
            document.extend(extra.clone());
        }
        print_json(&document)?;
    } else {
        outln!("{text}")?;
    }
    Ok(ExitCode::SUCCESS)
}

async fn answer(args: AnswerArgs) -> anyhow::Result<ExitCode> {
    let task_id = TaskId::parse(&args.task_id)?;
    let answer = read_json_argument(&args.answer)?;
    let bus = connect(&args.server).await?;
    bus.answer(&task_id, &answer).await?;
    if args.json {
        print_json(&json!({"task_id": task_id, "answered": true}))?;
    } else {
        outln!("task {task_id}: answered; its handler goes on")?;
    }
    Ok(ExitCode::SUCCESS)
}

async fn show(server: &ServerArgs, task_id: &str, json: bool) -> anyhow::Result<ExitCode> {
    let task_id = TaskId::parse(task_id)?;
    let bus = connect(server).await?;
    let report = bus.task_report(&task_id).await?;
    if report.state == TaskState::Unknown {
        anyhow::bail!(
            "no task {task_id} is known: check the id that `agentbus submit` or `agentbus request --task-id` used (a task queued by `Bus::submit` or a plain NATS publish is known only once an attempt ends, one over request/reply while it runs or once it logged events, and records and logs expire after 7 days and 1 day as shipped)"
        );
    }
    if json {
        print_json(&document(&report)?)?;
        return Ok(ExitCode::SUCCESS);
    }
    let Some(record) = &report.record else {
        outln!("task      {task_id}")?;
        outln!("state     {}", report.state)?;
        if let Some(instance) = &report.held_by {
            outln!("held by   instance {instance}")?;
        }
        if let Some(event) = &report.last_event {
            outln!(
                "last      event {} ({}) at {}",
                event.seq,
                event.kind,
                event.time
            )?;
            if let Some(response) = event.response() {
                outln!("response  {}", serde_json::to_string_pretty(&response)?)?;
            }
        }
        return Ok(ExitCode::SUCCESS);
    };
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
        TaskState::InputRequired => outln!(
            "task {task_id}: input required: its handler asked a question (`agentbus task watch {task_id}` shows it; `agentbus task answer {task_id} '<json>'` answers it)"
        )?,
        TaskState::FinishedWithoutRecord => outln!(
            "task {task_id}: finished without a record: it left {subject} and no outcome was recorded ({})",
            report.note().unwrap_or_default()
        )?,
        _ => print_record(record, report.state)?,
    }
    Ok(ExitCode::SUCCESS)
}

/// The record (if any) as JSON, with the state told by the lookup, its
/// note, the last event of the task's log, the instance holding it and
/// the key its record and log are kept under.
fn document(report: &TaskReport) -> anyhow::Result<serde_json::Value> {
    let mut document = match &report.record {
        Some(record) => serde_json::to_value(record)?,
        None => json!({ "task_id": report.task_id }),
    };
    document["state"] = serde_json::to_value(report.state)?;
    if let Some(note) = report.note() {
        document["note"] = note.into();
    }
    if let Some(event) = &report.last_event {
        document["last_event"] = serde_json::to_value(event)?;
        if report.record.is_none()
            && let Some(response) = event.response()
        {
            document["response"] = serde_json::to_value(response)?;
        }
    }
    if let Some(instance) = &report.held_by {
        document["held_by"] = instance.as_str().into();
    }
    if let Some(key) = &report.key {
        document["key"] = key.as_str().into();
    }
    Ok(document)
}

fn print_record(record: &TaskRecord, state: TaskState) -> anyhow::Result<()> {
    outln!("task      {}", record.task_id)?;
    outln!("state     {state}")?;
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
