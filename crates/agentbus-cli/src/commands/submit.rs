//! `agentbus submit`: store a task in a work queue, optionally wait for its result.

use super::follow::Printer;
use super::{PresenceArgs, ServerArgs, Unreached, read_json_argument, report, seconds};
use crate::output::{outln, spinner_for};
use agentbus::delivery::{Address, Queue, ResultRetention};
use agentbus::{Name, Priority, TaskId, TaskRequest};
use clap::Args;
use std::process::ExitCode;

/// Arguments of `agentbus submit`.
#[derive(Debug, Args)]
#[command(
    override_usage = "agentbus submit [OPTIONS] <AGENT> <TASK_TYPE> <PAYLOAD>\n       agentbus submit [OPTIONS] --any <TASK_TYPE> <PAYLOAD>"
)]
pub(crate) struct SubmitArgs {
    #[command(flatten)]
    server: ServerArgs,

    #[command(flatten)]
    presence: PresenceArgs,

    /// Queue for any agent accepting the task type (work.<task_type>) instead of one agent (tasks.<agent>).
    #[arg(long)]
    any: bool,

    /// `<AGENT> <TASK_TYPE> <PAYLOAD>`, or with --any `<TASK_TYPE> <PAYLOAD>`; PAYLOAD is a JSON object or - for stdin.
    #[arg(required = true, num_args = 2..=3, value_name = "ARGS")]
    args: Vec<String>,

    /// low, normal, high or critical.
    #[arg(long, default_value = "normal")]
    priority: Priority,

    /// Task id (a repeat within the dedup window is stored once); default: a new UUID.
    #[arg(long)]
    task_id: Option<String>,

    /// Wait for the task to finish and print its TaskResponse (exit 1 unless completed).
    #[arg(long)]
    wait: bool,

    /// Fire and forget: keep no result of a task that succeeds at its first attempt (failures are still recorded).
    #[arg(long, conflicts_with = "wait")]
    discard_result: bool,

    /// The task must be over within this long from now (such as 30s or 5m):
    /// no worker starts it later, and one running it stops it (status timeout).
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
    deadline: Option<std::time::Duration>,

    /// With --wait: print the task's partial results and progress as they
    /// come, then its TaskResponse (with --json, one JSON object per line).
    #[arg(long, requires = "wait")]
    stream: bool,

    /// Seconds to wait with --wait.
    #[arg(
        long,
        default_value_t = 60.0,
        value_name = "SECONDS",
        requires = "wait"
    )]
    timeout: f64,

    /// Print one JSON line (task_id, subject, sequence, duplicate; with `warning` and
    /// `online_agents` when no agent would take the task) instead of the task id;
    /// with --wait --stream, each event and then the TaskResponse as JSON lines.
    #[arg(long)]
    json: bool,
}

pub(super) async fn exec(args: SubmitArgs) -> anyhow::Result<ExitCode> {
    let (queue, task_type, payload) = match (args.any, args.args.as_slice()) {
        (false, [agent, task_type, payload]) => (Queue::agent(agent)?, task_type, payload),
        (true, [task_type, payload]) => (Queue::task_type(task_type)?, task_type, payload),
        (false, _) => anyhow::bail!(
            "submit takes <AGENT> <TASK_TYPE> <PAYLOAD> (or --any <TASK_TYPE> <PAYLOAD>)"
        ),
        (true, _) => anyhow::bail!("submit --any takes <TASK_TYPE> <PAYLOAD>, without an agent"),
    };
    let task_type = Name::parse("task type", task_type)?;
    let payload = read_json_argument(payload)?;
    anyhow::ensure!(
        payload.is_object(),
        "the payload must be a JSON object such as '{{\"prompt\": \"hi\"}}'"
    );
    let timeout = seconds(args.timeout, "timeout")?;
    let bus = args.server.bus().await?;
    anyhow::ensure!(
        !args.json || !args.wait || args.stream,
        "--json with --wait needs --stream (the TaskResponse --wait prints is JSON already)"
    );
    let mut request = TaskRequest::new(task_type.to_string(), payload).with_priority(args.priority);
    if let Some(id) = args.task_id.as_deref() {
        request.task_id = TaskId::parse(id)?;
    }
    if let Some(deadline) = args.deadline {
        request = request.with_deadline(std::time::SystemTime::now() + deadline);
    }
    request.stream = args.stream;
    // Following before submitting: no event is missed.
    let mut watch = if args.stream {
        Some(bus.watch(&request.task_id, 1).await?)
    } else {
        None
    };
    let retention = if args.discard_result {
        ResultRetention::Discard
    } else {
        ResultRetention::Keep
    };
    // Recorded, so that `agentbus task` tells queued from running from
    // finished without a record.
    let submitted = bus.submit_recorded(&queue, &request, retention).await?;
    let address = Address::Task {
        queue,
        task_type,
        priority: args.priority,
    };
    let unreached = Unreached::check(&bus, &address, &args.presence).await;
    if !args.wait {
        report(args.json, &submitted, unreached.as_ref(), || {
            outln!("{}", submitted.task_id)?;
            if submitted.duplicate {
                eprintln!(
                    "note: task {} was already queued (same task id): stored once",
                    submitted.task_id
                );
            }
            Ok(())
        })?;
        return Ok(ExitCode::SUCCESS);
    }
    // Said before waiting, which may take until the timeout.
    if let Some(unreached) = &unreached {
        unreached.print();
    }
    let response = match &mut watch {
        Some(watch) => {
            let mut printer = Printer::new(args.json);
            tokio::time::timeout(timeout, printer.follow(watch))
                .await
                .map_err(|_| {
                    anyhow::anyhow!(
                        "task {} did not finish within {timeout:?}; `agentbus task {}` shows its state",
                        submitted.task_id,
                        submitted.task_id
                    )
                })??;
            // The record is written before the final event: this reads it.
            let response = bus.wait_task(&submitted.task_id, timeout).await?;
            printer.response(&response)?;
            response
        }
        None => {
            let waiting = spinner_for(
                args.json,
                format!("waiting for task {} to finish", submitted.task_id),
            );
            let response = bus.wait_task(&submitted.task_id, timeout).await;
            waiting.finish_and_clear();
            let response = response?;
            outln!("{}", serde_json::to_string_pretty(&response)?)?;
            response
        }
    };
    Ok(if response.is_completed() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
