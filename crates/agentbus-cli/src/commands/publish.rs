//! `agentbus publish`: publish one JSON event.

use super::{ServerArgs, read_json_argument};
use crate::output::outln;
use clap::Args;
use std::process::ExitCode;

/// Arguments of `agentbus publish`.
#[derive(Debug, Args)]
pub(crate) struct PublishArgs {
    #[command(flatten)]
    server: ServerArgs,

    /// The subject, e.g. chat.message.new (no wildcards).
    subject: String,

    /// The message: JSON, or - to read it from stdin.
    message: String,
}

pub(super) async fn exec(args: PublishArgs) -> anyhow::Result<ExitCode> {
    let message = read_json_argument(&args.message)?;
    let subject = agentbus::subject::Subject::parse(&args.subject)?;
    let bus = args.server.bus().await?;
    let body = serde_json::to_vec(&message)?;
    let size = body.len();
    bus.publish_bytes(&subject, body.into()).await?;
    bus.flush().await?;
    outln!("published {size} bytes to {subject}")?;
    Ok(ExitCode::SUCCESS)
}
