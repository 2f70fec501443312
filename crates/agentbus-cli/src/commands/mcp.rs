//! `agentbus mcp`: speak MCP over stdin/stdout, so the LLM agent behind an
//! MCP client joins the bus under `--agent` for as long as this runs.
//! stdout carries the protocol: everything else goes to stderr. When it
//! cannot start, the client is told why as the error of its requests.

use super::ServerArgs;
use agentbus::connect::{ServerTarget, TargetSource};
use agentbus::{Bus, Name};
use agentbus_mcp::{BridgeOptions, JoinedBridge};
use agentbus_ops::identity;
use clap::Args;
use std::io::IsTerminal;
use std::path::Path;
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

    /// Join with the operator identity of `agentbus up` (which may do
    /// everything on the bus) when the agent has no identity of its own.
    /// Without it, the bridge refuses to: an LLM reads untrusted text.
    #[arg(long)]
    as_operator: bool,
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
    let target = identity_of(&agent, args.server.target()?, args.as_operator)?;
    let bus = Bus::connect(&target, &format!("agentbus-mcp-{agent}")).await?;
    let mut options = BridgeOptions::new(agent);
    options.state_url = args.state;
    Ok(agentbus_mcp::join(bus, options).await?)
}

/// The identity the bridge joins with: the agent's own, given by the
/// environment (its env file's variables) or, when the bus of `agentbus up`
/// was found through its data directory, the env file `creds add` left
/// there. Another agent's identity is refused, and so is the operator's
/// unless `as_operator` says so.
fn identity_of(
    agent: &Name,
    target: ServerTarget,
    as_operator: bool,
) -> anyhow::Result<ServerTarget> {
    if let Some(other) = target.agent() {
        anyhow::ensure!(
            other == agent,
            "the credentials in use are agent {other}'s identity, not {agent}'s; run the bridge with {agent}'s env file (`agentbus creds add {agent}` makes one)"
        );
        return Ok(target);
    }
    if let TargetSource::ConnectionFile(connection_file) = target.source() {
        let data_dir = connection_file.parent().unwrap_or(Path::new("."));
        let env_file = identity::env_file(data_dir, agent.as_str());
        if env_file.exists() {
            return Ok(ServerTarget::from_env_file(&env_file)?);
        }
    }
    if target.is_operator() {
        anyhow::ensure!(
            as_operator,
            "agent {agent} has no identity of its own, and the bridge will not join with the operator's, which may do everything on the bus; run `agentbus creds add {agent}` first, or pass --as-operator"
        );
        tracing::warn!(%agent, "the bridge joins with the operator identity: whatever the model is led to do, it may do to the whole bus");
    }
    Ok(target)
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
