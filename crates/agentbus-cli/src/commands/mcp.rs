//! `agentbus mcp`: speak MCP over stdin/stdout, so the LLM agent behind an
//! MCP client joins the bus under `--agent` for as long as this runs.
//! stdout carries the protocol: everything else goes to stderr. When it
//! cannot start, the client is told why as the error of its requests.

use super::ServerArgs;
use agentbus::{Bus, Name};
use agentbus_mcp::{BridgeOptions, JoinedBridge};
use clap::Args;
use std::io::IsTerminal;
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
    let joined = match join(args).await {
        Ok(joined) => joined,
        Err(err) => return Ok(report_startup_error(&err).await),
    };
    joined.serve_stdio(stop_signal()).await?;
    Ok(ExitCode::SUCCESS)
}

/// Connects and joins the bus as `--agent`.
async fn join(args: McpArgs) -> anyhow::Result<JoinedBridge> {
    let agent = Name::parse("agent name", &args.agent)?;
    let target = args.server.target()?;
    let client = target.connect(&format!("agentbus-mcp-{agent}")).await?;
    let mut options = BridgeOptions::new(agent);
    options.state_url = args.state;
    Ok(agentbus_mcp::join(Bus::from_client(client), options).await?)
}

/// A bridge that cannot start says why on stderr at once, and to its MCP
/// client (which would otherwise only see the connection close) until the
/// client leaves; then it exits with 1. Nobody speaks MCP on a terminal, so
/// there it exits at once.
async fn report_startup_error(err: &anyhow::Error) -> ExitCode {
    let sentence = crate::one_sentence(err);
    eprintln!("error: {sentence}");
    if !std::io::stdin().is_terminal() {
        agentbus_mcp::serve_startup_error(&sentence, stop_signal()).await;
    }
    ExitCode::FAILURE
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
