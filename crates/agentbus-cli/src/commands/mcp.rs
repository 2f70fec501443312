//! `agentbus mcp`: speak MCP over stdin/stdout, so the LLM agent behind an
//! MCP client joins the bus under `--agent` for as long as this runs.
//! stdout carries the protocol: everything else goes to stderr.

use super::ServerArgs;
use agentbus::{Bus, Name};
use agentbus_mcp::BridgeOptions;
use clap::Args;
use std::process::ExitCode;

/// Arguments of `agentbus mcp`.
#[derive(Debug, Args)]
pub(crate) struct McpArgs {
    #[command(flatten)]
    server: ServerArgs,

    /// The name the MCP client's agent has on the bus (its inbox is agent.<NAME>.inbox).
    #[arg(long, value_name = "NAME")]
    agent: String,

    /// State backend: "nats" or a redis:// URL [default: AGENTBUS_STATE_URL, then NATS KV]
    #[arg(long, value_name = "URL")]
    state: Option<String>,
}

pub(super) async fn exec(args: McpArgs) -> anyhow::Result<ExitCode> {
    let agent = Name::parse("agent name", &args.agent)?;
    let target = args.server.target()?;
    let client = target.connect(&format!("agentbus-mcp-{agent}")).await?;
    let mut options = BridgeOptions::new(agent);
    options.state_url = args.state;
    agentbus_mcp::serve_stdio(Bus::from_client(client), options, stop_signal()).await?;
    Ok(ExitCode::SUCCESS)
}

/// Resolves on SIGINT or SIGTERM (never, if the handlers cannot be installed).
async fn stop_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) {
        (Ok(mut terminate), Ok(mut interrupt)) => {
            tokio::select! {
                _ = terminate.recv() => {}
                _ = interrupt.recv() => {}
            }
        }
        _ => std::future::pending().await,
    }
}
