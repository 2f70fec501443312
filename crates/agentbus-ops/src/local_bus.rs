//! Starting a local bus: a supervised `nats-server` that accepts authenticated
//! clients, with JetStream answering and a topology applied.
//!
//! `agentbus up`, `agentbus bench` and the test kit all start their servers
//! with [`LocalBus::start`]; they differ only in the configuration (data
//! directory or temporary one, ports, credentials) and the topology.

use crate::local_server::{LocalServer, LocalServerConfig, LocalServerError};
use crate::topology::{StreamAction, Topology, TopologyError, servers_in_cluster};
use agentbus::connect::{ConnectError, ServerTarget, TargetSource};
use async_nats::jetstream::context::AccountError;
use std::future::Future;
use std::path::PathBuf;
use std::time::Duration;

/// How long JetStream may take to answer once the server listens.
const JETSTREAM_TIMEOUT: Duration = Duration::from_secs(15);
/// How often JetStream is asked until it answers.
const JETSTREAM_POLL: Duration = Duration::from_millis(50);
/// How long a cluster may take, once its nodes listen, to elect its
/// JetStream leader and take the topology.
const CLUSTER_TIMEOUT: Duration = Duration::from_secs(30);
/// How often a forming cluster is asked again.
const CLUSTER_POLL: Duration = Duration::from_millis(250);
/// How long a server that failed to get ready may take to stop.
const STOP_GRACE: Duration = Duration::from_secs(10);
/// Client name of the connection that waits for JetStream and applies the topology.
const CLIENT_NAME: &str = "agentbus-start";

/// A running local server, ready for clients, with its topology applied.
#[derive(Debug)]
pub struct LocalBus {
    /// The supervised server; killed when dropped.
    pub server: LocalServer,
    /// The version the server reports to clients, e.g. `2.15.1`.
    pub version: String,
    /// What applying the topology did, per stream and bucket, in order.
    pub applied: Vec<(String, StreamAction)>,
}

/// Why a local bus could not be started.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LocalBusError {
    /// The server did not start or did not listen.
    #[error(transparent)]
    Start(#[from] LocalServerError),
    /// The configured user could not connect to the server.
    #[error(transparent)]
    Connect(#[from] ConnectError),
    /// JetStream did not answer in time.
    #[error(
        "JetStream did not answer within {} s: {source}; see the server's log in {}",
        JETSTREAM_TIMEOUT.as_secs(),
        .log.display()
    )]
    JetStreamNotReady {
        /// The last error JetStream gave.
        #[source]
        source: AccountError,
        /// The server's log file.
        log: PathBuf,
    },
    /// Not every node of a cluster joined it in time.
    #[error(
        "only {joined} of the cluster's {nodes} servers joined it within {} s; see the servers' logs, the first in {}",
        CLUSTER_TIMEOUT.as_secs(),
        .log.display()
    )]
    NotClustered {
        /// Servers that joined.
        joined: usize,
        /// Servers started.
        nodes: usize,
        /// The first server's log file.
        log: PathBuf,
    },
    /// The topology could not be applied.
    #[error(transparent)]
    Topology(#[from] TopologyError),
    /// The stop of [`LocalBus::start_unless`] came first; the server is stopped.
    #[error("stopped before the bus was ready")]
    Stopped,
}

/// Why a local bus could not be started, as a kind to match.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum LocalBusErrorKind {
    /// The server did not start or did not listen ([`LocalServerError::kind`] says why).
    Start,
    /// The configured user could not connect.
    Connect,
    /// JetStream did not answer in time.
    JetStreamNotReady,
    /// Not every node of a cluster joined it in time.
    NotClustered,
    /// The topology could not be applied.
    Topology,
    /// The start was stopped before the bus was ready.
    Stopped,
}

impl LocalBusError {
    /// Why the bus could not be started.
    pub fn kind(&self) -> LocalBusErrorKind {
        match self {
            Self::Start(_) => LocalBusErrorKind::Start,
            Self::Connect(_) => LocalBusErrorKind::Connect,
            Self::JetStreamNotReady { .. } => LocalBusErrorKind::JetStreamNotReady,
            Self::NotClustered { .. } => LocalBusErrorKind::NotClustered,
            Self::Topology(_) => LocalBusErrorKind::Topology,
            Self::Stopped => LocalBusErrorKind::Stopped,
        }
    }
}

impl LocalBus {
    /// Starts `nats-server` as `config` says, waits until the configured user
    /// can connect and JetStream answers, and applies `topology`
    /// ([`Topology::default()`] applies nothing). A server that started but
    /// did not get ready is stopped before the error is returned.
    pub async fn start(
        config: &LocalServerConfig,
        topology: &Topology,
    ) -> Result<Self, LocalBusError> {
        Self::start_unless(config, topology, std::future::pending()).await
    }

    /// Like [`LocalBus::start`], unless `stop` completes first (a stop signal,
    /// say): then a server already started is stopped (SIGTERM, so JetStream
    /// flushes its storage) and the error is [`LocalBusError::Stopped`].
    pub async fn start_unless(
        config: &LocalServerConfig,
        topology: &Topology,
        stop: impl Future<Output = ()>,
    ) -> Result<Self, LocalBusError> {
        let mut server = LocalServer::spawn(config)?;
        let ready = tokio::select! {
            ready = ready(&mut server, config, topology) => ready,
            () = stop => Err(LocalBusError::Stopped),
        };
        match ready {
            Ok((version, applied)) => Ok(Self {
                server,
                version,
                applied,
            }),
            Err(err) => {
                let _ = server.stop(STOP_GRACE).await;
                Err(err)
            }
        }
    }
}

/// A running local cluster: one supervised `nats-server` per node, routed
/// to each other, with JetStream clustered and a topology applied.
#[derive(Debug)]
pub struct LocalCluster {
    /// The nodes, in the order of their configurations; each is killed when dropped.
    pub servers: Vec<LocalServer>,
    /// The version the servers report, e.g. `2.15.1`.
    pub version: String,
    /// What applying the topology did, per stream and bucket, in order.
    pub applied: Vec<(String, StreamAction)>,
}

impl LocalCluster {
    /// Starts one server per configuration (each with its
    /// [`LocalServerConfig::cluster`] naming every node's route port), waits
    /// until the configured user can connect and JetStream's cluster answers,
    /// and applies `topology` (`replicas = "auto"` gives min(nodes, 3)).
    /// Servers that started are stopped again when the cluster does not get
    /// ready, or when `stop` completes first ([`LocalBusError::Stopped`]).
    pub async fn start_unless(
        configs: &[LocalServerConfig],
        topology: &Topology,
        stop: impl Future<Output = ()>,
    ) -> Result<Self, LocalBusError> {
        let mut servers = Vec::with_capacity(configs.len());
        let mut spawned = Ok(());
        for config in configs {
            match LocalServer::spawn(config) {
                Ok(server) => servers.push(server),
                Err(err) => {
                    spawned = Err(err.into());
                    break;
                }
            }
        }
        let ready = match spawned {
            Ok(()) => tokio::select! {
                ready = cluster_ready(&mut servers, configs, topology) => ready,
                () = stop => Err(LocalBusError::Stopped),
            },
            Err(err) => Err(err),
        };
        match ready {
            Ok((version, applied)) => Ok(Self {
                servers,
                version,
                applied,
            }),
            Err(err) => {
                for server in &mut servers {
                    let _ = server.stop(STOP_GRACE).await;
                }
                Err(err)
            }
        }
    }

    /// The cluster as clients find it: every node's client URL as a seed
    /// list, the configured user and password, the first node's monitoring URL.
    pub fn target(&self) -> ServerTarget {
        seed_target(&self.servers)
    }
}

/// `servers` as one target: their client URLs as a seed list, with the
/// first one's credentials and monitoring URL.
pub fn seed_target(servers: &[LocalServer]) -> ServerTarget {
    let urls: Vec<&str> = servers.iter().map(LocalServer::client_url).collect();
    let first = servers[0].target();
    ServerTarget::from_url(&urls.join(","), TargetSource::Explicit)
        .with_credentials(first.credentials().clone())
        .with_monitor_url(first.monitor_url().map(str::to_owned))
}

/// Waits until every node listens, connects to them all as the configured
/// user, waits until JetStream's cluster has a leader and every node joined
/// it, and applies `topology`, retried while the cluster still forms.
async fn cluster_ready(
    servers: &mut [LocalServer],
    configs: &[LocalServerConfig],
    topology: &Topology,
) -> Result<(String, Vec<(String, StreamAction)>), LocalBusError> {
    for (server, config) in servers.iter_mut().zip(configs) {
        server.wait_for_ports(config).await?;
    }
    let target = seed_target(servers);
    let deadline = tokio::time::Instant::now() + CLUSTER_TIMEOUT;
    // A replicated stream can be placed once the meta leader is elected and
    // every node has announced itself (the topology asks for all of them).
    // A client learns the cluster's servers when it connects only (later
    // announcements are not taken in), so each look is a new connection.
    loop {
        let client = target.connect(CLIENT_NAME).await?;
        let js = async_nats::jetstream::new(client.clone());
        let attempt = match js.query_account().await {
            Err(err) => Err(LocalBusError::JetStreamNotReady {
                source: err,
                log: servers[0].log_file(),
            }),
            Ok(_) if servers_in_cluster(&client) < servers.len() => {
                Err(LocalBusError::NotClustered {
                    joined: servers_in_cluster(&client),
                    nodes: servers.len(),
                    log: servers[0].log_file(),
                })
            }
            Ok(_) => topology.apply(&js).await.map_err(LocalBusError::from),
        };
        let version = client.server_info().version;
        client.drain().await.ok();
        match attempt {
            Ok(applied) => return Ok((version, applied)),
            Err(err) if tokio::time::Instant::now() > deadline => return Err(err),
            Err(_) => tokio::time::sleep(CLUSTER_POLL).await,
        }
    }
}

/// Waits until `server` listens, connects as the configured user, waits for
/// JetStream and applies `topology`; returns the server's version and what
/// was applied.
async fn ready(
    server: &mut LocalServer,
    config: &LocalServerConfig,
    topology: &Topology,
) -> Result<(String, Vec<(String, StreamAction)>), LocalBusError> {
    server.wait_for_ports(config).await?;
    let client = server.target().connect(CLIENT_NAME).await?;
    let js = async_nats::jetstream::new(client.clone());
    let deadline = tokio::time::Instant::now() + JETSTREAM_TIMEOUT;
    // JetStream normally answers at once: the server enables it before it listens.
    while let Err(err) = js.query_account().await {
        if tokio::time::Instant::now() > deadline {
            return Err(LocalBusError::JetStreamNotReady {
                source: err,
                log: server.log_file(),
            });
        }
        tokio::time::sleep(JETSTREAM_POLL).await;
    }
    let applied = topology.apply(&js).await?;
    let version = client.server_info().version;
    client.drain().await.ok();
    Ok((version, applied))
}
