//! `agentbus send` and `agentbus broadcast`: store a message durably.

use super::{ServerArgs, read_json_argument};
use crate::output::outln;
use crate::output::print_json;
use agentbus::Bus;
use clap::Args;
use std::process::ExitCode;

/// Arguments of `agentbus send`.
#[derive(Debug, Args)]
pub(crate) struct SendArgs {
    #[command(flatten)]
    server: ServerArgs,

    /// The receiving agent.
    agent: String,

    /// The message: JSON, or - to read it from stdin.
    message: String,

    /// Use the agent's direct channel (delivered concurrently, unordered) instead of its inbox (in order).
    #[arg(long)]
    direct: bool,

    /// Message id for dedup (a repeat within the stream's duplicate window is stored once); default: a new UUID.
    #[arg(long)]
    message_id: Option<String>,

    /// Print one JSON line instead of a sentence.
    #[arg(long)]
    json: bool,
}

pub(super) async fn exec(args: SendArgs) -> anyhow::Result<ExitCode> {
    let message = read_json_argument(&args.message)?;
    let agent = agentbus::Name::parse("agent name", &args.agent)?;
    let (_, client) = args.server.connect().await?;
    let bus = Bus::from_client(client);
    let subject = if args.direct {
        agentbus::subject::agent_direct(&agent)
    } else {
        agentbus::subject::agent_inbox(&agent)
    };
    let published = bus
        .publish_durable(&subject, &message, args.message_id.as_deref(), None)
        .await?;
    if args.json {
        print_json(&published)?;
    } else if published.duplicate {
        outln!(
            "already stored: message {} on {} (duplicate id, stored once)",
            published.message_id,
            published.subject
        )?;
    } else {
        outln!(
            "stored message {} on {} (sequence {})",
            published.message_id,
            published.subject,
            published.sequence
        )?;
    }
    Ok(ExitCode::SUCCESS)
}

/// Arguments of `agentbus broadcast`.
#[derive(Debug, Args)]
pub(crate) struct BroadcastArgs {
    #[command(flatten)]
    server: ServerArgs,

    /// The topic: agents subscribed to it receive the message (broadcast.<topic>).
    topic: String,

    /// The message: JSON, or - to read it from stdin.
    message: String,

    /// Announce to every agent that takes messages (announce.<topic>) instead.
    #[arg(long)]
    announce: bool,

    /// Print one JSON line instead of a sentence.
    #[arg(long)]
    json: bool,
}

pub(super) async fn exec_broadcast(args: BroadcastArgs) -> anyhow::Result<ExitCode> {
    let message = read_json_argument(&args.message)?;
    agentbus::Name::parse("topic", &args.topic)?;
    let (_, client) = args.server.connect().await?;
    let bus = Bus::from_client(client);
    let published = if args.announce {
        bus.announce(&args.topic, &message).await?
    } else {
        bus.broadcast(&args.topic, &message).await?
    };
    if args.json {
        print_json(&published)?;
    } else {
        outln!(
            "stored {} on {} (sequence {})",
            published.message_id,
            published.subject,
            published.sequence
        )?;
    }
    Ok(ExitCode::SUCCESS)
}
