//! One module per subcommand: its arguments and a short `exec`.

mod agents;
mod bench;
mod check;
mod creds;
pub(crate) mod dashboard;
mod dlq;
mod follow;
mod mcp;
mod publish;
mod request;
mod send;
mod setup;
mod status;
mod submit;
mod tail;
mod task;
mod up;

use agentbus::connect::ServerTarget;
use anyhow::Context as _;
use clap::{Args, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;

/// The subcommands.
#[derive(Debug, Subcommand)]
pub(crate) enum Command {
    /// Run a local nats-server with JetStream, auth and monitoring, and provision the streams.
    Up(up::UpArgs),
    /// Apply the topology (the streams) to a server, idempotently.
    Setup(setup::SetupArgs),
    /// Show the server, JetStream usage and every stream.
    Status(status::StatusArgs),
    /// List the agents online (from their heartbeats): name, instance, task types, load.
    Agents(agents::AgentsArgs),
    /// Send a task to a running agent and print its TaskResponse (exit 1 unless completed).
    Request(request::RequestArgs),
    /// Publish one JSON event on a subject.
    Publish(publish::PublishArgs),
    /// Print live messages matching a subject pattern.
    Tail(tail::TailArgs),
    /// Store a message in an agent's durable inbox.
    Send(send::SendArgs),
    /// Store a task in a work queue (tasks.<agent>, or work.<task_type> with --any).
    Submit(submit::SubmitArgs),
    /// Broadcast a message to every agent subscribed to a topic.
    Broadcast(send::BroadcastArgs),
    /// Show where a task stands; watch its events, cancel it or answer its question.
    Task(task::TaskArgs),
    /// List and replay dead letters.
    Dlq(dlq::DlqArgs),
    /// Serve the web dashboard (and the bus's Prometheus metrics) against any server or cluster.
    Dashboard(dashboard::DashboardArgs),
    /// Measure agentbus against bare async-nats, side by side.
    Bench(bench::BenchArgs),
    /// Run the delivery test and the configuration doctor against a server.
    Check(check::CheckArgs),
    /// Give agents identities of their own (add, list, revoke, export).
    Creds(creds::CredsArgs),
    /// Serve MCP on stdin/stdout: the MCP client's LLM agent joins the bus as --agent.
    Mcp(mcp::McpArgs),
}

impl Command {
    /// Runs the subcommand.
    pub(crate) async fn exec(self) -> anyhow::Result<ExitCode> {
        match self {
            Self::Up(args) => up::exec(args).await,
            Self::Setup(args) => setup::exec(args).await,
            Self::Status(args) => status::exec(args).await,
            Self::Agents(args) => agents::exec(args).await,
            Self::Request(args) => request::exec(args).await,
            Self::Publish(args) => publish::exec(args).await,
            Self::Tail(args) => tail::exec(args).await,
            Self::Send(args) => send::exec(args).await,
            Self::Submit(args) => submit::exec(args).await,
            Self::Broadcast(args) => send::exec_broadcast(args).await,
            Self::Task(args) => task::exec(args).await,
            Self::Dlq(args) => dlq::exec(args).await,
            Self::Dashboard(args) => dashboard::exec(args).await,
            Self::Bench(args) => bench::exec(args).await,
            Self::Check(args) => check::exec(args).await,
            Self::Creds(args) => creds::exec(args).await,
            Self::Mcp(args) => mcp::exec(args).await,
        }
    }
}

/// How client commands find the server.
#[derive(Debug, Clone, Args)]
pub(crate) struct ServerArgs {
    /// NATS server URL (credentials may be in the URL). Default: NATS_URL, then <data-dir>/connection.env.
    #[arg(long, value_name = "URL")]
    pub server: Option<String>,

    /// Data directory of `agentbus up`, where connection.env is found [env: AGENTBUS_DATA_DIR] [default: ./.agentbus]
    #[arg(long, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
}

impl ServerArgs {
    /// Resolves the server target.
    pub(crate) fn target(&self) -> anyhow::Result<ServerTarget> {
        let data_dir = agentbus::connect::resolve_data_dir(self.data_dir.as_deref());
        Ok(ServerTarget::resolve(self.server.as_deref(), &data_dir)?)
    }

    /// Resolves the target and connects as a [`agentbus::Bus`]: with an agent
    /// identity (`AGENTBUS_AGENT`), what it sends carries that agent.
    pub(crate) async fn bus(&self) -> anyhow::Result<agentbus::Bus> {
        Ok(agentbus::Bus::connect(&self.target()?, "agentbus-cli").await?)
    }

    /// Resolves the target and connects.
    pub(crate) async fn connect(&self) -> anyhow::Result<(ServerTarget, async_nats::Client)> {
        let target = self.target()?;
        let client = target.connect("agentbus-cli").await?;
        Ok((target, client))
    }
}

/// Where presence is read, for commands that tell whether anybody would
/// receive what they stored.
#[derive(Debug, Clone, Args)]
pub(crate) struct PresenceArgs {
    /// Where presence lives: "nats" (NATS KV, the default) or a redis:// or rediss:// URL.
    #[arg(
        long,
        value_name = "URL",
        env = "AGENTBUS_STATE_URL",
        hide_env_values = true
    )]
    pub state: Option<String>,
}

/// Why what was just stored may reach nobody: one sentence, and who is online.
#[derive(Debug)]
pub(crate) struct Unreached {
    warning: String,
    /// `None` when the lookup itself failed.
    online_agents: Option<Vec<String>>,
}

impl Unreached {
    /// Asks who would receive work sent to `address`: `None` when someone
    /// would. A lookup that fails is reported the same way: the work is
    /// stored either way, so it is a warning, not an error.
    pub(crate) async fn check(
        bus: &agentbus::Bus,
        address: &agentbus::delivery::Address,
        presence: &PresenceArgs,
    ) -> Option<Self> {
        // An agent identity may not look at other agents' consumers: the
        // question is the operator's.
        if bus.identity().is_some() {
            return None;
        }
        let looked_up =
            match agentbus::state::StateStore::open(bus, presence.state.as_deref()).await {
                Ok(store) => bus
                    .recipients(address, &store)
                    .await
                    .map_err(anyhow::Error::from),
                Err(err) => Err(err.into()),
            };
        match looked_up {
            Ok(recipients) => recipients.warning.map(|warning| Self {
                warning,
                online_agents: Some(recipients.online_agents),
            }),
            Err(err) => Some(Self {
                warning: format!(
                    "stored, but cannot tell whether any agent receives it ({err}); `agentbus agents` lists who is online"
                ),
                online_agents: None,
            }),
        }
    }

    /// Prints the warning as one line on stderr.
    pub(crate) fn print(&self) {
        eprintln!("warning: {}", self.warning);
    }

    /// Adds `warning` (and `online_agents`) to a JSON object.
    pub(crate) fn add_to(&self, document: &mut serde_json::Value) {
        if let Some(object) = document.as_object_mut() {
            object.insert("warning".into(), self.warning.clone().into());
            if let Some(online) = &self.online_agents {
                object.insert("online_agents".into(), online.clone().into());
            }
        }
    }
}

/// Prints `document` as one JSON line, with the warning when there is one;
/// else the warning goes to stderr and `text` prints the outcome.
pub(crate) fn report(
    json: bool,
    document: &impl serde::Serialize,
    unreached: Option<&Unreached>,
    text: impl FnOnce() -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    if json {
        let mut document = serde_json::to_value(document)?;
        if let Some(unreached) = unreached {
            unreached.add_to(&mut document);
        }
        return crate::output::print_json(&document);
    }
    text()?;
    if let Some(unreached) = unreached {
        unreached.print();
    }
    Ok(())
}

/// Loads the topology from `path`, or the standard one.
pub(crate) fn load_topology(
    path: Option<&std::path::Path>,
) -> anyhow::Result<agentbus_ops::topology::Topology> {
    match path {
        Some(path) => Ok(agentbus_ops::topology::Topology::from_file(path)?),
        None => Ok(agentbus_ops::topology::Topology::standard()),
    }
}

/// Makes an error from a JetStream call read as one sentence with context.
pub(crate) fn jetstream_context<T, E: std::error::Error + Send + Sync + 'static>(
    result: Result<T, E>,
    what: &str,
) -> anyhow::Result<T> {
    result
        .with_context(|| format!("JetStream could not {what}; is JetStream enabled on the server?"))
}

/// A positive number of seconds given as `--<flag>`, as a Duration (at most
/// a year: beyond that a typo is likelier than intent).
pub(crate) fn seconds(value: f64, flag: &str) -> anyhow::Result<std::time::Duration> {
    const YEAR: f64 = 365.0 * 24.0 * 3600.0;
    anyhow::ensure!(
        value.is_finite() && value > 0.0 && value <= YEAR,
        "--{flag} must be a positive number of seconds, at most a year ({YEAR})"
    );
    Ok(std::time::Duration::from_secs_f64(value))
}

/// Parses a JSON command-line argument; `-` reads it from stdin.
pub(crate) fn read_json_argument(argument: &str) -> anyhow::Result<serde_json::Value> {
    let text = if argument == "-" {
        std::io::read_to_string(std::io::stdin()).context("cannot read JSON from stdin")?
    } else {
        argument.to_owned()
    };
    serde_json::from_str(&text).map_err(|err| {
        anyhow::anyhow!("the JSON argument is not valid JSON ({err}); quote it for the shell, e.g. '{{\"key\": \"value\"}}'")
    })
}
