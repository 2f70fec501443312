//! `agentbus send` and `agentbus broadcast`: store a message durably.

use super::{PresenceArgs, ServerArgs, Unreached, read_json_argument, report};
use crate::output::outln;
use agentbus::Name;
use agentbus::delivery::Address;
use clap::Args;
use std::process::ExitCode;

/// Arguments of `agentbus send`.
#[derive(Debug, Args)]
pub(crate) struct SendArgs {
    #[command(flatten)]
    server: ServerArgs,

    #[command(flatten)]
    presence: PresenceArgs,

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

    /// Print one JSON line instead of a sentence (with `warning` and
    /// `online_agents` when no agent would receive it).
    #[arg(long)]
    json: bool,
}

pub(super) async fn exec(args: SendArgs) -> anyhow::Result<ExitCode> {
    let message = read_json_argument(&args.message)?;
    let agent = Name::parse("agent name", &args.agent)?;
    let bus = args.server.bus().await?;
    let address = if args.direct {
        Address::Direct(agent)
    } else {
        Address::Inbox(agent)
    };
    let published = bus
        .publish_durable(
            &address.subject_from(bus.identity()),
            &message,
            args.message_id.as_deref(),
            None,
        )
        .await?;
    let unreached = Unreached::check(&bus, &address, &args.presence).await;
    report(args.json, &published, unreached.as_ref(), || {
        if published.duplicate {
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
        Ok(())
    })?;
    Ok(ExitCode::SUCCESS)
}

/// Arguments of `agentbus broadcast`.
#[derive(Debug, Args)]
pub(crate) struct BroadcastArgs {
    #[command(flatten)]
    server: ServerArgs,

    #[command(flatten)]
    presence: PresenceArgs,

    /// The topic: agents subscribed to it receive the message (broadcast.<topic>).
    topic: String,

    /// The message: JSON, or - to read it from stdin.
    message: String,

    /// Announce to every agent that takes messages (announce.<topic>) instead.
    #[arg(long)]
    announce: bool,

    /// Print one JSON line instead of a sentence (with `warning` and
    /// `online_agents` when no agent would receive it).
    #[arg(long)]
    json: bool,
}

pub(super) async fn exec_broadcast(args: BroadcastArgs) -> anyhow::Result<ExitCode> {
    let message = read_json_argument(&args.message)?;
    let topic = Name::parse("topic", &args.topic)?;
    let bus = args.server.bus().await?;
    let (published, address) = if args.announce {
        let published = bus.announce(&args.topic, &message).await?;
        (published, Address::Announce(topic))
    } else {
        let published = bus.broadcast(&args.topic, &message).await?;
        (published, Address::Broadcast(topic))
    };
    let unreached = Unreached::check(&bus, &address, &args.presence).await;
    report(args.json, &published, unreached.as_ref(), || {
        outln!(
            "stored {} on {} (sequence {})",
            published.message_id,
            published.subject,
            published.sequence
        )?;
        Ok(())
    })?;
    Ok(ExitCode::SUCCESS)
}
