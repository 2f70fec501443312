//! `agentbus request`: send a task to a running agent and print its TaskResponse.

use super::follow::Printer;
use super::{ServerArgs, read_json_argument, seconds};
use crate::output::outln;
use agentbus::RequestOptions;
use agentbus::TaskId;
use agentbus::{Priority, TaskRequest};
use clap::Args;
use std::process::ExitCode;
use std::time::Duration;

/// How long the rest of a task's log is waited for once its answer came.
const LOG_LAG: Duration = Duration::from_secs(1);
/// How much longer than the task's deadline its answer is waited for.
const ANSWER_MARGIN: Duration = Duration::from_secs(1);

/// Arguments of `agentbus request`.
#[derive(Debug, Args)]
pub(crate) struct RequestArgs {
    #[command(flatten)]
    server: ServerArgs,

    /// The agent to ask (it serves agent.<agent>.task).
    agent: String,

    /// The task type, one the agent accepts.
    task_type: String,

    /// The payload: a JSON object, or - to read it from stdin.
    payload: String,

    /// low, normal, high or critical.
    #[arg(long, default_value = "normal")]
    priority: Priority,

    /// The task's deadline in seconds: the agent stops it when it runs
    /// longer (status timeout), and the answer is waited for a second more.
    #[arg(long, default_value_t = 30.0, value_name = "SECONDS")]
    timeout: f64,

    /// Print the task's partial results and progress as they come, then its TaskResponse.
    #[arg(long)]
    stream: bool,

    /// With --stream: one JSON object per line, each event then the TaskResponse.
    #[arg(long, requires = "stream")]
    json: bool,

    /// Task id to use (an agentbus agent answers a retry with the same id instead of running it twice); default: a new UUID.
    #[arg(long)]
    task_id: Option<String>,

    /// Attempts after a timeout, with the same task id.
    #[arg(long, default_value_t = 0)]
    retries: u32,
}

pub(super) async fn exec(args: RequestArgs) -> anyhow::Result<ExitCode> {
    let payload = read_json_argument(&args.payload)?;
    anyhow::ensure!(
        payload.is_object(),
        "the payload must be a JSON object such as '{{\"prompt\": \"hi\"}}'"
    );
    let timeout = seconds(args.timeout, "timeout")?;
    agentbus::Name::parse("agent name", &args.agent)?;
    agentbus::Name::parse("task type", &args.task_type)?;
    let bus = args.server.bus().await?;
    let task_id = match args.task_id.as_deref() {
        Some(id) => TaskId::parse(id)?,
        None => TaskId::new(),
    };
    let mut request = TaskRequest::new(args.task_type, payload)
        .with_priority(args.priority)
        .with_deadline(std::time::SystemTime::now() + timeout * (args.retries + 1));
    request.task_id = task_id;
    request.stream = args.stream;
    // The agent stops the task at its deadline and answers `timeout`: the
    // wait lasts a moment longer, so that answer arrives.
    let options = RequestOptions {
        timeout: timeout + ANSWER_MARGIN,
        retries: args.retries,
    };
    let response = if args.stream {
        // Following before sending: no event is missed.
        let mut watch = bus.watch(&request.task_id, 1).await?;
        let mut printer = Printer::new(args.json);
        let sent = bus.request(&args.agent, &request, options);
        tokio::pin!(sent);
        let response = {
            let follow = printer.follow(&mut watch);
            tokio::pin!(follow);
            tokio::select! {
                response = &mut sent => {
                    let response = response?;
                    // The agent logs the final state before it answers:
                    // what is left of the log is a moment away, unless the
                    // task was refused before it was logged at all.
                    let _ = tokio::time::timeout(LOG_LAG, &mut follow).await;
                    response
                }
                followed = &mut follow => {
                    followed?;
                    sent.await?
                }
            }
        };
        printer.response(&response)?;
        response
    } else {
        let response = bus.request(&args.agent, &request, options).await?;
        outln!("{}", serde_json::to_string_pretty(&response)?)?;
        response
    };
    Ok(if response.is_completed() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
