//! `agentbus agents`: who is online, from the presence entries.

use super::ServerArgs;
use crate::output::outln;
use crate::output::{Table, print_json};
use agentbus::presence::{AgentPresence, online_agents};
use agentbus::state::StateStore;
use clap::Args;
use serde_json::json;
use std::process::ExitCode;
use std::time::{Duration, SystemTime};

/// Arguments of `agentbus agents`.
#[derive(Debug, Args)]
pub(crate) struct AgentsArgs {
    #[command(flatten)]
    server: ServerArgs,

    /// Where presence lives: "nats" (NATS KV, the default) or a redis:// or rediss:// URL.
    #[arg(
        long,
        value_name = "URL",
        env = "AGENTBUS_STATE_URL",
        hide_env_values = true
    )]
    state: Option<String>,

    /// Print one JSON document (`{"backend", "agents": [...]}`) instead of a table.
    #[arg(long)]
    json: bool,
}

pub(super) async fn exec(args: AgentsArgs) -> anyhow::Result<ExitCode> {
    let bus = args.server.bus().await?;
    let store = StateStore::open(&bus, args.state.as_deref()).await?;
    let agents = online_agents(&store).await?;
    if args.json {
        print_json(&json!({"backend": store.backend_name(), "agents": agents}))?;
    } else if agents.is_empty() {
        outln!("no agents online (presence in {})", store.backend_name())?;
    } else {
        print_table(&agents, SystemTime::now())?;
    }
    Ok(ExitCode::SUCCESS)
}

fn print_table(agents: &[AgentPresence], now: SystemTime) -> std::io::Result<()> {
    let mut table = Table::new(&[
        "NAME",
        "INSTANCE",
        "TASK TYPES",
        "IN FLIGHT",
        "HOST",
        "STARTED",
        "LAST SEEN",
    ]);
    for agent in agents {
        let task_types: Vec<&str> = agent.task_types.iter().map(|t| t.name.as_str()).collect();
        table.row(vec![
            agent.name.clone(),
            // Like container ids: the first 12 characters tell instances apart.
            agent.instance_id.chars().take(12).collect(),
            task_types.join(","),
            agent.in_flight.to_string(),
            agent.host.clone(),
            to_seconds(&agent.started_at),
            ago(&agent.last_seen, now),
        ]);
    }
    table.print()
}

/// An RFC 3339 timestamp without its fraction of a second.
fn to_seconds(timestamp: &str) -> String {
    humantime::parse_rfc3339(timestamp)
        .map(|time| humantime::format_rfc3339_seconds(time).to_string())
        .unwrap_or_else(|_| timestamp.to_owned())
}

/// How long before `now` the timestamp was, e.g. `2.5s ago`.
fn ago(timestamp: &str, now: SystemTime) -> String {
    let Ok(time) = humantime::parse_rfc3339(timestamp) else {
        return timestamp.to_owned();
    };
    let age = now.duration_since(time).unwrap_or(Duration::ZERO);
    if age < Duration::from_secs(60) {
        format!("{:.1}s ago", age.as_secs_f64())
    } else {
        format!(
            "{} ago",
            humantime::format_duration(Duration::from_secs(age.as_secs()))
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ages_are_short() {
        let now = humantime::parse_rfc3339("2026-01-01T00:01:00Z").unwrap();
        assert_eq!(ago("2026-01-01T00:00:57.500Z", now), "2.5s ago");
        assert_eq!(ago("2025-12-31T23:58:00Z", now), "3m ago");
        assert_eq!(ago("2026-01-01T00:02:00Z", now), "0.0s ago", "clock skew");
        assert_eq!(ago("garbage", now), "garbage");
        assert_eq!(
            to_seconds("2026-01-01T00:00:57.500Z"),
            "2026-01-01T00:00:57Z"
        );
    }
}
