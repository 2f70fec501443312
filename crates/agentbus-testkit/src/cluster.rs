//! A JetStream cluster of real `nats-server`s on loopback, for the tests of
//! what happens when servers fail: each node is its own process with its own
//! store, and any node can be killed, stopped and started again.

use crate::{ClosedPort, TcpProxy, nats_server_binary, port_of};
use agentbus::connect::{ServerTarget, TargetSource};
use agentbus_ops::LocalCluster;
use agentbus_ops::local_server::{LocalServer, LocalServerConfig, route_as_cluster};
use agentbus_ops::monitor::Monitor;
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
    /// With routes through proxies: the proxy node `from` dials node `to`
    /// through, for every ordered pair.
    proxies: Vec<Route>,
    /// What nodes behind proxies advertise: a port that refuses, so that no
    /// node dials another around the proxies when it learns of it from a
    /// third (nats-server's implicit routes).
    _advertised: Option<ClosedPort>,
    _dir: tempfile::TempDir,
}

/// The proxy between two nodes, in one direction.
#[derive(Debug)]
struct Route {
    from: usize,
    to: usize,
    proxy: TcpProxy,
}

impl NatsCluster {
    /// Starts `nodes` servers as one cluster with the standard topology
    /// (`replicas = "auto"`: min(nodes, 3) copies of every stream).
    pub async fn start(nodes: usize) -> Self {
        Self::start_with_topology(nodes, &Topology::standard()).await
    }

    /// Starts `nodes` servers as one cluster with `topology` applied.
    pub async fn start_with_topology(nodes: usize, topology: &Topology) -> Self {
        Self::start_routed(nodes, topology, false).await
    }

    /// Starts `nodes` servers as one cluster whose routes all pass through
    /// proxies in this process, so that a node can be cut off from the
    /// others ([`NatsCluster::isolate`]) while its clients stay connected.
    pub async fn start_behind_proxies(nodes: usize) -> Self {
        Self::start_routed(nodes, &Topology::standard(), true).await
    }

    async fn start_routed(nodes: usize, topology: &Topology, proxied: bool) -> Self {
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
        let mut proxies = Vec::new();
        let advertised = proxied.then(ClosedPort::new);
        if let Some(advertised) = &advertised {
            let listens: Vec<u16> = configs
                .iter()
                .map(|config| config.cluster.as_ref().expect("routed").port)
                .collect();
            for (from, config) in configs.iter_mut().enumerate() {
                let routes = config.cluster.as_mut().expect("routed");
                routes.ports.clear();
                routes.advertise = Some(format!("127.0.0.1:{}", advertised.port()));
                for (to, listen) in listens.iter().enumerate().filter(|(to, _)| *to != from) {
                    let proxy = TcpProxy::start(([127, 0, 0, 1], *listen).into()).await;
                    routes.ports.push(proxy.port());
                    proxies.push(Route { from, to, proxy });
                }
            }
        }
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
            proxies,
            _advertised: advertised,
            _dir: dir,
        }
    }

    /// Cuts node `node` off from the others: every route to and from it is
    /// dropped and refused until [`NatsCluster::rejoin`]. Its clients stay
    /// connected to it. Only for a cluster started behind proxies.
    pub fn isolate(&self, node: usize) {
        assert!(
            !self.proxies.is_empty(),
            "the cluster was not started behind proxies"
        );
        for route in self.routes_of(node) {
            route.proxy.cut();
        }
    }

    /// Lets node `node` reach the others again.
    pub fn rejoin(&self, node: usize) {
        for route in self.routes_of(node) {
            route.proxy.heal();
        }
    }

    fn routes_of(&self, node: usize) -> impl Iterator<Item = &Route> {
        self.proxies
            .iter()
            .filter(move |route| route.from == node || route.to == node)
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

    /// A client connected to node `node` only (it must be up).
    pub async fn connect_to(&self, node: usize) -> async_nats::Client {
        let server = self.servers[node].as_ref().expect("the node is up");
        ServerTarget::from_url(
            &server.client_url_with_credentials(),
            TargetSource::Explicit,
        )
        .connect("agentbus-testkit")
        .await
        .expect("connect to a node of the test cluster")
    }

    /// A client connected to node `node` (it must be up) with `options`,
    /// e.g. a slower reconnection.
    pub async fn connect_to_with(
        &self,
        node: usize,
        options: async_nats::ConnectOptions,
    ) -> async_nats::Client {
        let server = self.servers[node].as_ref().expect("the node is up");
        options
            .user_and_password(server.user().into(), server.password().into())
            .connect(server.client_url())
            .await
            .expect("connect to a node of the test cluster")
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

    /// Waits until no running node has a route to node `node` any more (it
    /// was killed or stopped). Until then a running node may still route a
    /// message to it, and core NATS loses such a message.
    pub async fn await_departure(&self, node: usize) {
        let name = self.name(node);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        for server in self.servers.iter().flatten() {
            let monitor = Monitor::new(server.monitor_url());
            loop {
                let routes = monitor
                    .route_names()
                    .await
                    .unwrap_or_else(|err| panic!("{err}"));
                if !routes.iter().any(|route| route == name) {
                    break;
                }
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "a node still routes to {name} after 10 s"
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
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
