//! `agentbus setup`: apply the topology to any server, idempotently.

use super::{ServerArgs, load_topology};
use crate::output::{Table, print_json};
use clap::Args;
use std::path::PathBuf;
use std::process::ExitCode;

/// Arguments of `agentbus setup`.
#[derive(Debug, Args)]
pub(crate) struct SetupArgs {
    #[command(flatten)]
    server: ServerArgs,

    /// Topology file (TOML); default: the standard topology (the agentbus streams and buckets).
    #[arg(long, value_name = "FILE")]
    topology: Option<PathBuf>,

    /// Print one JSON document instead of a table.
    #[arg(long)]
    json: bool,
}

pub(super) async fn exec(args: SetupArgs) -> anyhow::Result<ExitCode> {
    let topology = load_topology(args.topology.as_deref())?;
    let (_, client) = args.server.connect().await?;
    let js = async_nats::jetstream::new(client);
    let actions = topology.apply(&js).await?;
    if args.json {
        let streams: serde_json::Map<String, serde_json::Value> = actions
            .iter()
            .map(|(name, action)| (name.clone(), action.to_string().into()))
            .collect();
        print_json(&serde_json::json!({ "streams": streams }))?;
    } else {
        let mut table = Table::new(&["STREAM", "ACTION"]);
        for (name, action) in &actions {
            table.row(vec![name.clone(), action.to_string()]);
        }
        table.print()?;
    }
    Ok(ExitCode::SUCCESS)
}
