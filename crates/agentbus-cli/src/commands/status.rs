//! `agentbus status`: the server, JetStream usage, and every stream.

use super::{ServerArgs, jetstream_context};
use crate::output::outln;
use crate::output::{Table, human_bytes, percent, print_json};
use agentbus_ops::monitor::Monitor;
use clap::Args;
use futures::TryStreamExt;
use serde::Serialize;
use std::collections::BTreeMap;
use std::process::ExitCode;

/// Arguments of `agentbus status`.
#[derive(Debug, Args)]
pub(crate) struct StatusArgs {
    #[command(flatten)]
    server: ServerArgs,

    /// Monitoring endpoint URL [default: AGENTBUS_MONITOR_URL, then connection.env]
    #[arg(long, value_name = "URL")]
    monitor: Option<String>,

    /// Print one JSON document instead of tables.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Serialize)]
struct Status {
    server: ServerStatus,
    jetstream: Option<agentbus_ops::monitor::Jsz>,
    streams: BTreeMap<String, StreamStatus>,
}

#[derive(Debug, Serialize)]
struct ServerStatus {
    url: String,
    name: String,
    version: String,
    monitor_url: Option<String>,
    uptime: Option<String>,
    connections: Option<u64>,
    memory_bytes: Option<u64>,
    cpu_percent: Option<f64>,
    /// Why the monitoring figures are missing, when they are.
    monitor_error: Option<String>,
}

#[derive(Debug, Serialize)]
struct StreamStatus {
    subjects: Vec<String>,
    retention: String,
    storage: String,
    messages: u64,
    bytes: u64,
    consumers: usize,
    max_msgs: i64,
    max_bytes: i64,
    msgs_full_percent: Option<f64>,
    bytes_full_percent: Option<f64>,
}

pub(super) async fn exec(args: StatusArgs) -> anyhow::Result<ExitCode> {
    let (target, client) = args.server.connect().await?;
    let info = client.server_info();
    let monitor_url = args
        .monitor
        .clone()
        .or_else(|| target.monitor_url().map(str::to_owned));
    let (varz, jsz, monitor_error) = match &monitor_url {
        Some(url) => {
            let monitor = Monitor::new(url);
            match tokio::try_join!(monitor.varz(), monitor.jsz()) {
                Ok((varz, jsz)) => (Some(varz), Some(jsz), None),
                Err(err) => (None, None, Some(err.to_string())),
            }
        }
        None => (
            None,
            None,
            Some(
                "no monitoring URL known; pass --monitor URL or set AGENTBUS_MONITOR_URL"
                    .to_owned(),
            ),
        ),
    };
    let js = async_nats::jetstream::new(client);
    let infos: Vec<_> = jetstream_context(js.streams().try_collect().await, "list the streams")?;
    let streams = infos
        .into_iter()
        .map(|info| {
            let config = &info.config;
            let state = &info.state;
            let status = StreamStatus {
                subjects: config.subjects.clone(),
                retention: format!("{:?}", config.retention).to_lowercase(),
                storage: format!("{:?}", config.storage).to_lowercase(),
                messages: state.messages,
                bytes: state.bytes,
                consumers: state.consumer_count,
                max_msgs: config.max_messages,
                max_bytes: config.max_bytes,
                msgs_full_percent: percent(state.messages, config.max_messages),
                bytes_full_percent: percent(state.bytes, config.max_bytes),
            };
            (config.name.clone(), status)
        })
        .collect();
    let status = Status {
        server: ServerStatus {
            url: target.display_url().to_owned(),
            name: info.server_name.clone(),
            version: info.version.clone(),
            monitor_url,
            uptime: varz.as_ref().map(|v| v.uptime.clone()),
            connections: varz.as_ref().map(|v| v.connections),
            memory_bytes: varz.as_ref().map(|v| v.mem),
            cpu_percent: varz.as_ref().map(|v| v.cpu),
            monitor_error,
        },
        jetstream: jsz,
        streams,
    };
    if args.json {
        print_json(&status)?;
    } else {
        print_tables(&status)?;
    }
    Ok(ExitCode::SUCCESS)
}

fn print_tables(status: &Status) -> anyhow::Result<()> {
    let server = &status.server;
    let or_dash = |v: Option<String>| v.unwrap_or_else(|| "-".to_owned());
    let mut table = Table::new(&["SERVER", ""]);
    table.row(vec!["url".into(), server.url.clone()]);
    table.row(vec!["version".into(), server.version.clone()]);
    table.row(vec!["name".into(), server.name.clone()]);
    table.row(vec!["uptime".into(), or_dash(server.uptime.clone())]);
    table.row(vec![
        "connections".into(),
        or_dash(server.connections.map(|c| c.to_string())),
    ]);
    table.row(vec![
        "memory".into(),
        or_dash(server.memory_bytes.map(human_bytes)),
    ]);
    table.row(vec![
        "monitoring".into(),
        or_dash(server.monitor_url.clone()),
    ]);
    if let Some(js) = &status.jetstream {
        table.row(vec![
            "jetstream".into(),
            format!(
                "{} streams, {} consumers, {} messages, {} on disk, {} in memory",
                js.streams,
                js.consumers,
                js.messages,
                human_bytes(js.storage),
                human_bytes(js.memory)
            ),
        ]);
    }
    table.print()?;
    if let Some(err) = &server.monitor_error {
        outln!("note: {err}")?;
    }
    outln!()?;
    let mut table = Table::new(&[
        "STREAM",
        "SUBJECTS",
        "RETENTION",
        "MESSAGES",
        "BYTES",
        "FULL",
        "CONSUMERS",
    ]);
    for (name, s) in &status.streams {
        let full = [s.msgs_full_percent, s.bytes_full_percent]
            .into_iter()
            .flatten()
            .fold(None::<f64>, |acc, p| Some(acc.map_or(p, |a| a.max(p))));
        table.row(vec![
            name.clone(),
            s.subjects.join(","),
            s.retention.clone(),
            format!("{}/{}", s.messages, s.max_msgs),
            format!(
                "{}/{}",
                human_bytes(s.bytes),
                human_bytes(u64::try_from(s.max_bytes).unwrap_or(0))
            ),
            full.map_or_else(|| "-".to_owned(), |p| format!("{p:.1}%")),
            s.consumers.to_string(),
        ]);
    }
    table.print()?;
    Ok(())
}
