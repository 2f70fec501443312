//! `agentbus tail`: print live messages matching a subject pattern.

use super::ServerArgs;
use crate::output::{errln, print_json};
use clap::Args;
use futures::StreamExt;
use std::io::Write;
use std::process::ExitCode;

/// Arguments of `agentbus tail`.
#[derive(Debug, Args)]
pub(crate) struct TailArgs {
    #[command(flatten)]
    server: ServerArgs,

    /// Subject pattern; `*` matches one token, `>` the rest (e.g. platform.events.>).
    pattern: String,

    /// Print one JSON object per message: {"subject", "time", "data"}.
    #[arg(long)]
    json: bool,

    /// Exit after this many messages.
    #[arg(long, value_name = "N")]
    count: Option<u64>,
}

pub(super) async fn exec(args: TailArgs) -> anyhow::Result<ExitCode> {
    let bus = args.server.bus().await?;
    let mut subscription = bus.subscribe(&args.pattern, None).await?;
    // Make sure the server has the subscription before saying we listen.
    bus.flush().await?;
    errln!("listening on {} (Ctrl-C to stop)", args.pattern);
    let mut seen = 0u64;
    while args.count.is_none_or(|count| seen < count) {
        let event = tokio::select! {
            event = subscription.next() => event,
            _ = tokio::signal::ctrl_c() => None,
        };
        let Some(event) = event else { break };
        seen += 1;
        let time = humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string();
        let data = serde_json::from_slice::<serde_json::Value>(&event.payload)
            .unwrap_or_else(|_| String::from_utf8_lossy(&event.payload).into_owned().into());
        if args.json {
            print_json(
                &serde_json::json!({ "subject": event.subject, "time": time, "data": data }),
            )?;
        } else {
            let mut out = std::io::stdout().lock();
            writeln!(out, "{time} {}", event.subject)?;
            writeln!(out, "{}", serde_json::to_string_pretty(&data)?)?;
            out.flush()?;
        }
    }
    Ok(ExitCode::SUCCESS)
}
