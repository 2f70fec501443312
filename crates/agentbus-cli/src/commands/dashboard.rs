//! `agentbus dashboard`: the web dashboard (and the bus's Prometheus
//! metrics) against any server or cluster, as `agentbus up` serves it.

use super::up::{DASHBOARD_PORT_VAR, DEFAULT_DASHBOARD_PORT, create_private_dir};
use super::{PresenceArgs, ServerArgs};
use crate::output::{outln, print_json};
use agentbus::connect::{DASHBOARD_TOKEN_VAR, resolve_data_dir};
use agentbus_dashboard::{Dashboard, DashboardOptions};
use agentbus_ops::data_dir::{DASHBOARD_TOKEN_FILE, secret_in};
use anyhow::Context as _;
use clap::Args;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::process::ExitCode;
use tokio::signal::unix::{SignalKind, signal};

/// Arguments of `agentbus dashboard`.
#[derive(Debug, Args)]
pub(crate) struct DashboardArgs {
    #[command(flatten)]
    server: ServerArgs,

    /// Port to serve on; 0 picks a free port.
    #[arg(long, default_value_t = DEFAULT_DASHBOARD_PORT, env = DASHBOARD_PORT_VAR)]
    port: u16,

    /// Address to bind; it asks for its token wherever it listens.
    #[arg(long, default_value = "127.0.0.1")]
    host: String,

    #[command(flatten)]
    presence: PresenceArgs,

    /// Print one JSON line once serving (`dashboard_url`, where the token is) instead of the URL.
    #[arg(long)]
    json: bool,
}

/// The address to bind for `host` (an IP address or `localhost`) and `port`.
pub(crate) fn address(host: &str, port: u16) -> anyhow::Result<SocketAddr> {
    let ip = match host {
        "localhost" => IpAddr::V4(Ipv4Addr::LOCALHOST),
        host => host.parse().map_err(|_| {
            anyhow::anyhow!("the dashboard host {host:?} is not an IP address or localhost")
        })?,
    };
    Ok(SocketAddr::new(ip, port))
}

pub(super) async fn exec(args: DashboardArgs) -> anyhow::Result<ExitCode> {
    let address = address(&args.host, args.port)?;
    let (token, token_source) = token(&args.server)?;
    let bus = args.server.bus().await?;
    let mut options = DashboardOptions::new(address, token);
    options.state_url = args.presence.state.clone();
    let dashboard = Dashboard::start(bus, options).await?;
    if args.json {
        print_json(&serde_json::json!({
            "status": "serving",
            "dashboard_url": dashboard.url(),
            "token": token_source,
        }))?;
    } else {
        outln!("dashboard   {} (opens logged in)", dashboard.login_url())?;
        outln!("token       {token_source}")?;
        outln!("Press Ctrl-C to stop.")?;
    }
    let mut terminate = signal(SignalKind::terminate()).context("cannot listen for SIGTERM")?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = terminate.recv() => {}
    }
    dashboard.stop().await;
    Ok(ExitCode::SUCCESS)
}

/// The token: `AGENTBUS_DASHBOARD_TOKEN` when set, else the data
/// directory's (made there, 0600, when missing); and where it came from.
fn token(server: &ServerArgs) -> anyhow::Result<(String, String)> {
    if let Ok(token) = std::env::var(DASHBOARD_TOKEN_VAR)
        && !token.trim().is_empty()
    {
        return Ok((token.trim().to_owned(), DASHBOARD_TOKEN_VAR.to_owned()));
    }
    let dir = resolve_data_dir(server.data_dir.as_deref());
    create_private_dir(&dir)?;
    let token = secret_in(&dir, DASHBOARD_TOKEN_FILE)?;
    Ok((token, dir.join(DASHBOARD_TOKEN_FILE).display().to_string()))
}
