//! A JetStream cluster of real `nats-server`s on loopback, for the tests of
//! what happens when servers fail: each node is its own process with its own
//! store, and any node can be killed, stopped and started again.

use crate::{nats_server_binary, port_of};
use agentbus::connect::ServerTarget;
use agentbus_ops::LocalCluster;
use agentbus_ops::local_server::{LocalServer, LocalServerConfig, route_as_cluster};
use agentbus_ops::topology::Topology;
use std::time::Duration;

/// A running cluster; every node is killed on drop.
#[derive(Debug)]
pub struct NatsCluster {
    /// One per node; `None` while the node is down.
    servers: Vec<Option<LocalServer>>,
    /// How each node was started, with the ports it got.
    configs: Vec<LocalServerConfig>,
    /// The first start's client URLs and credentials: what clients were given.
    target: ServerTarget,
    _dir: tempfile::TempDir,
}

impl NatsCluster {
    /// Starts `nodes` servers as one cluster with the standard topology
    /// (`replicas = "auto"`: min(nodes, 3) copies of every stream).
    pub async fn start(nodes: usize) -> Self {
        Self::start_with_topology(nodes, &Topology::standard()).await
    }

    /// Starts `nodes` servers as one cluster with `topology` applied.
    pub async fn start_with_topology(nodes: usize, topology: &Topology) -> Self {
        let dir = tempfile::tempdir().expect("create a temporary directory");
        let password = format!("t{}", uuid::Uuid::new_v4().simple());
        let mut configs: Vec<LocalServerConfig> = (0..nodes)
            .map(|node| {
                let node_dir = dir.path().join(format!("n{node}"));
                std::fs::create_dir_all(&node_dir).expect("create a node directory");
                LocalServerConfig {
                    binary: nats_server_binary(),
                    dir: node_dir,
                    host: "127.0.0.1".into(),
                    port: 0,
                    monitor_host: "127.0.0.1".into(),
                    monitor_port: 0,
                    user: "test".into(),
                    password: password.clone(),
                    server_name: format!("n{node}"),
                    cluster: None,
                    identities_dir: None,
                }
            })
            .collect();
        route_as_cluster(&mut configs, "agentbus-test", "127.0.0.1").expect("pick route ports");
        let cluster = LocalCluster::start_unless(&configs, topology, std::future::pending())
            .await
            .unwrap_or_else(|err| panic!("{err}"));
        // Pinned to the ports they got, so a node comes back where clients look.
        for (config, server) in configs.iter_mut().zip(&cluster.servers) {
            config.port = port_of(server.client_url());
            config.monitor_port = port_of(server.monitor_url());
        }
        let target = cluster.target();
        Self {
            servers: cluster.servers.into_iter().map(Some).collect(),
            configs,
            target,
            _dir: dir,
        }
    }

    /// Every node's client URL as a seed list, with the credentials.
    pub fn target(&self) -> ServerTarget {
        self.target.clone()
    }

    /// How many nodes the cluster has, up or down.
    pub fn len(&self) -> usize {
        self.configs.len()
    }

    /// Whether the cluster has no nodes (never: it starts with at least one).
    pub fn is_empty(&self) -> bool {
        self.configs.is_empty()
    }

    /// A client connected to every node's URL.
    pub async fn connect(&self) -> async_nats::Client {
        self.target
            .connect("agentbus-testkit")
            .await
            .expect("connect to the test cluster")
    }

    /// The name of node `node` (`n0`, `n1`, ...), as JetStream names leaders.
    pub fn name(&self, node: usize) -> &str {
        &self.configs[node].server_name
    }

    /// The node whose name is `name`.
    pub fn node_named(&self, name: &str) -> Option<usize> {
        self.configs
            .iter()
            .position(|config| config.server_name == name)
    }

    /// The process id of node `node`, while it runs.
    pub fn pid(&self, node: usize) -> Option<u32> {
        self.servers[node].as_ref().map(LocalServer::pid)
    }

    /// The node leading `stream`, asked through `js`; waits up to 30 s for a leader.
    pub async fn stream_leader(&self, js: &async_nats::jetstream::Context, stream: &str) -> usize {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            let leader = match js.get_stream(stream).await {
                Ok(mut stream) => stream
                    .info()
                    .await
                    .ok()
                    .and_then(|info| info.cluster.clone())
                    .and_then(|cluster| cluster.leader)
                    .and_then(|leader| self.node_named(&leader)),
                Err(_) => None,
            };
            if let Some(leader) = leader {
                return leader;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "stream {stream} has no leader after 30 s"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Kills node `node` at once (SIGKILL), as a crash would.
    pub async fn kill(&mut self, node: usize) {
        if let Some(mut server) = self.servers[node].take() {
            server.kill().await.expect("kill the node");
        }
    }

    /// Stops node `node` gracefully (SIGTERM: it flushes and leaves).
    pub async fn stop(&mut self, node: usize) {
        if let Some(mut server) = self.servers[node].take() {
            server
                .stop(Duration::from_secs(10))
                .await
                .expect("stop the node");
        }
    }

    /// Starts node `node` again on its ports, with its store: it rejoins
    /// the cluster and catches up.
    pub async fn restart(&mut self, node: usize) {
        self.stop(node).await;
        let server = LocalServer::start(&self.configs[node])
            .await
            .unwrap_or_else(|err| panic!("{err}"));
        self.servers[node] = Some(server);
    }
}
