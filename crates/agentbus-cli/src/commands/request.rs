//! `agentbus request`: send a task to a running agent and print its TaskResponse.

use super::{ServerArgs, read_json_argument, seconds};
use crate::output::outln;
use agentbus::RequestOptions;
use agentbus::TaskId;
use agentbus::{Bus, Priority, TaskRequest};
use clap::Args;
use std::process::ExitCode;

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

    /// Seconds to wait for the answer.
    #[arg(long, default_value_t = 30.0, value_name = "SECONDS")]
    timeout: f64,

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
    let (_, client) = args.server.connect().await?;
    let bus = Bus::from_client(client);
    let request = TaskRequest {
        task_id: match args.task_id.as_deref() {
            Some(id) => TaskId::parse(id)?,
            None => TaskId::new(),
        },
        task_type: args.task_type,
        payload,
        priority: args.priority,
    };
    let options = RequestOptions {
        timeout,
        retries: args.retries,
    };
    let response = bus.request(&args.agent, &request, options).await?;
    outln!("{}", serde_json::to_string_pretty(&response)?)?;
    Ok(if response.is_completed() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
