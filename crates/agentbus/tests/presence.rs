//! Presence against real servers, on both state backends: who is online,
//! graceful shutdown, and an agent process killed with SIGKILL.

use agentbus::presence::{AgentPresence, PresenceOptions, host_name, online_agents};
use agentbus::state::StateStore;
use agentbus::subject::events;
use agentbus::{
    Agent, AgentOptions, Bus, Priority, Runtime, TaskContext, TaskError, TaskRequest, TaskTypeSpec,
};
use agentbus_testkit::{NatsServer, RedisServer};
use futures::StreamExt;
use serde_json::{Value, json};
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::Semaphore;

/// Heartbeats every 200 ms, offline after 1 s without one.
fn fast() -> PresenceOptions {
    PresenceOptions {
        interval: Duration::from_millis(200),
        offline_after: Duration::from_secs(1),
    }
}

fn options() -> AgentOptions {
    AgentOptions {
        heartbeat: fast(),
        work_queues: false,
        ..AgentOptions::default()
    }
}

/// An agent whose `gated` tasks wait until the test opens the gate.
#[derive(Clone)]
struct Probe {
    name: String,
    gate: Arc<Semaphore>,
}

impl Probe {
    fn new(name: &str) -> Self {
        Self {
            name: name.to_owned(),
            gate: Arc::new(Semaphore::new(0)),
        }
    }
}

fn summarize_schema() -> Value {
    json!({"type": "object", "required": ["text"], "properties": {"text": {"type": "string"}}})
}

impl Agent for Probe {
    fn name(&self) -> &str {
        &self.name
    }

    fn task_types(&self) -> Vec<TaskTypeSpec> {
        vec![
            TaskTypeSpec::new("gated").unwrap(),
            TaskTypeSpec::new("summarize")
                .unwrap()
                .with_schema(summarize_schema()),
        ]
    }

    async fn handle(&self, _task: TaskRequest, _ctx: TaskContext) -> Result<Value, TaskError> {
        let _permit = self.gate.acquire().await.expect("gate open");
        Ok(json!({"done": true}))
    }
}

/// The servers behind a test; the state store is NATS KV or Redis.
struct Servers {
    nats: NatsServer,
    redis: Option<RedisServer>,
}

impl Servers {
    async fn nats_kv() -> Self {
        Self {
            nats: NatsServer::start().await,
            redis: None,
        }
    }

    #[cfg(feature = "redis")]
    async fn redis() -> Self {
        Self {
            nats: NatsServer::start().await,
            redis: Some(RedisServer::start().await),
        }
    }

    fn state_url(&self) -> Option<String> {
        self.redis.as_ref().map(RedisServer::url)
    }

    async fn bus(&self) -> Bus {
        Bus::from_client(self.nats.connect().await)
    }

    async fn store(&self) -> StateStore {
        StateStore::open(&self.bus().await, self.state_url().as_deref())
            .await
            .unwrap()
    }

    /// A runtime on its own connection, with presence in this test's backend.
    async fn runtime(&self) -> Runtime {
        Runtime::new(self.bus().await).with_state(self.store().await)
    }
}

macro_rules! on_both_backends {
    ($($case:ident),* $(,)?) => {
        mod nats_kv {
            $(
                #[tokio::test]
                async fn $case() {
                    super::$case(super::Servers::nats_kv().await).await;
                }
            )*
        }
        #[cfg(feature = "redis")]
        mod redis {
            $(
                #[tokio::test]
                async fn $case() {
                    super::$case(super::Servers::redis().await).await;
                }
            )*
        }
    };
}

on_both_backends!(
    a_running_agent_is_online_with_what_it_accepts_and_does,
    graceful_shutdown_removes_the_entry_and_reports_offline_once,
    a_killed_agent_process_is_reported_offline_by_one_live_instance,
);

/// Waits (bounded) until `online_agents` satisfies `done`; returns the list.
async fn wait_for_agents(
    store: &StateStore,
    what: &str,
    done: impl Fn(&[AgentPresence]) -> bool,
) -> Vec<AgentPresence> {
    let start = Instant::now();
    loop {
        let agents = online_agents(store).await.unwrap();
        if done(&agents) {
            return agents;
        }
        assert!(
            start.elapsed() < Duration::from_secs(15),
            "{what}: not within 15 s; online: {agents:#?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn a_running_agent_is_online_with_what_it_accepts_and_does(servers: Servers) {
    let store = servers.store().await;
    assert!(online_agents(&store).await.unwrap().is_empty());
    let probe = Probe::new("prober");
    let mut runtime = servers.runtime().await;
    runtime.add(probe.clone(), options()).await.unwrap();
    let mut other = servers.runtime().await;
    other.add(Probe::new("another"), options()).await.unwrap();

    // Visible as soon as add returns: it waits for the first heartbeat.
    let agents = online_agents(&store).await.unwrap();
    let names: Vec<&str> = agents.iter().map(|a| a.name.as_str()).collect();
    assert_eq!(names, ["another", "prober"], "sorted by name");
    let me = &agents[1];
    assert_eq!(me.instance_id, runtime.instance_id());
    assert_eq!(me.host, host_name());
    assert_eq!(me.version, env!("CARGO_PKG_VERSION"));
    assert_eq!(me.in_flight, 0);
    let types: Vec<(&str, Option<&Value>)> = me
        .task_types
        .iter()
        .map(|t| (t.name.as_str(), t.schema.as_ref()))
        .collect();
    assert_eq!(
        types,
        [("gated", None), ("summarize", Some(&summarize_schema()))]
    );
    let started = humantime::parse_rfc3339(&me.started_at).unwrap();
    let last_seen = humantime::parse_rfc3339(&me.last_seen).unwrap();
    assert!(last_seen >= started);

    // Three tasks held at the gate are in flight in the next heartbeats.
    let client = servers.bus().await;
    let requests: Vec<_> = (0..3)
        .map(|_| {
            let client = client.clone();
            tokio::spawn(async move {
                client
                    .publish_task("prober", "gated", json!({}), Priority::Normal)
                    .await
            })
        })
        .collect();
    let agents = wait_for_agents(&store, "3 tasks in flight", |agents| {
        agents
            .iter()
            .any(|a| a.name == "prober" && a.in_flight == 3)
    })
    .await;
    let me = agents.iter().find(|a| a.name == "prober").unwrap();
    assert!(humantime::parse_rfc3339(&me.last_seen).unwrap() > last_seen);
    probe.gate.add_permits(3);
    for request in requests {
        assert_eq!(
            request.await.unwrap().unwrap().result,
            Some(json!({"done": true}))
        );
    }
    wait_for_agents(&store, "nothing in flight", |agents| {
        agents
            .iter()
            .any(|a| a.name == "prober" && a.in_flight == 0)
    })
    .await;
    runtime.shutdown(Duration::from_secs(1)).await;
    other.shutdown(Duration::from_secs(1)).await;
    assert!(online_agents(&store).await.unwrap().is_empty());
}

/// Collects agent_offline events for `window`.
async fn offline_events(events: &mut agentbus::Subscription, window: Duration) -> Vec<Value> {
    let mut seen = Vec::new();
    let deadline = tokio::time::Instant::now() + window;
    while let Ok(Some(event)) = tokio::time::timeout_at(deadline, events.next()).await {
        seen.push(event.json::<Value>().unwrap());
    }
    seen
}

async fn graceful_shutdown_removes_the_entry_and_reports_offline_once(servers: Servers) {
    let store = servers.store().await;
    let watcher = servers.bus().await;
    let mut events = watcher
        .subscribe(events::AGENT_OFFLINE, None)
        .await
        .unwrap();
    // Two live instances that watch: neither may report the goodbye again.
    let mut observer_a = servers.runtime().await;
    observer_a
        .add(Probe::new("a-observer"), options())
        .await
        .unwrap();
    let mut observer_b = servers.runtime().await;
    observer_b
        .add(Probe::new("b-observer"), options())
        .await
        .unwrap();
    let mut leaving = servers.runtime().await;
    leaving.add(Probe::new("leaver"), options()).await.unwrap();
    let instance = leaving.instance_id().to_owned();
    wait_for_agents(&store, "three online", |agents| agents.len() == 3).await;

    leaving.shutdown(Duration::from_secs(1)).await;
    let names: Vec<String> = online_agents(&store)
        .await
        .unwrap()
        .into_iter()
        .map(|a| a.name)
        .collect();
    assert_eq!(names, ["a-observer", "b-observer"], "gone at once");
    // Long enough for an expiry to be noticed, were the entry left to expire.
    let seen = offline_events(&mut events, Duration::from_secs(3)).await;
    assert_eq!(seen.len(), 1, "{seen:#?}");
    assert_eq!(seen[0]["agent"], "leaver");
    assert_eq!(seen[0]["instance_id"], instance.as_str());
    assert_eq!(seen[0]["reason"], "shutdown");
    assert_eq!(seen[0]["reported_by"], instance.as_str());
    observer_a.shutdown(Duration::from_secs(1)).await;
    observer_b.shutdown(Duration::from_secs(1)).await;
}

/// When run as `<test binary> --exact presence_agent_process --ignored` with
/// AGENTBUS_TEST_PRESENCE_NATS_URL set, this test is an agent process of its
/// own, killed by the test below.
#[tokio::test]
#[ignore = "an agent process for a_killed_agent_process_is_reported_offline_by_one_live_instance; not a test on its own"]
async fn presence_agent_process() {
    let Ok(url) = std::env::var("AGENTBUS_TEST_PRESENCE_NATS_URL") else {
        return;
    };
    let state_url = std::env::var("AGENTBUS_TEST_PRESENCE_STATE_URL").ok();
    let target = agentbus::ServerTarget::from_url(&url, agentbus::connect::TargetSource::Explicit);
    let bus = Bus::connect(&target, "presence-victim").await.unwrap();
    let store = StateStore::open(&bus, state_url.as_deref()).await.unwrap();
    let mut runtime = Runtime::new(bus).with_state(store);
    runtime.add(Probe::new("victim"), options()).await.unwrap();
    println!("ready {}", runtime.instance_id());
    tokio::time::sleep(Duration::from_secs(600)).await;
}

struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

async fn a_killed_agent_process_is_reported_offline_by_one_live_instance(servers: Servers) {
    let store = servers.store().await;
    let watcher = servers.bus().await;
    let mut events = watcher
        .subscribe(events::AGENT_OFFLINE, None)
        .await
        .unwrap();
    let mut command = Command::new(std::env::current_exe().unwrap());
    command
        .args([
            "--exact",
            "presence_agent_process",
            "--ignored",
            "--nocapture",
        ])
        .env(
            "AGENTBUS_TEST_PRESENCE_NATS_URL",
            servers.nats.url_with_credentials(),
        )
        .env_remove("AGENTBUS_TEST_PRESENCE_STATE_URL")
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    if let Some(url) = servers.state_url() {
        command.env("AGENTBUS_TEST_PRESENCE_STATE_URL", url);
    }
    let mut child = KillOnDrop(command.spawn().unwrap());
    let stdout = child.0.stdout.take().unwrap();
    let ready = tokio::task::spawn_blocking(move || {
        BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
            .find_map(|line| line.strip_prefix("ready ").map(str::to_owned))
    });
    let victim_instance = tokio::time::timeout(Duration::from_secs(60), ready)
        .await
        .expect("the agent process is ready within 60 s")
        .unwrap()
        .expect("the agent process printed its instance id");

    // Two live instances watch; the one with the smaller instance id reports.
    let mut observer_a = servers.runtime().await;
    observer_a
        .add(Probe::new("a-observer"), options())
        .await
        .unwrap();
    let mut observer_b = servers.runtime().await;
    observer_b
        .add(Probe::new("b-observer"), options())
        .await
        .unwrap();
    let agents = online_agents(&store).await.unwrap();
    let victim = agents
        .iter()
        .find(|a| a.name == "victim")
        .expect("the agent process is online");
    assert_eq!(victim.instance_id, victim_instance);

    child.0.kill().unwrap(); // SIGKILL: no goodbye
    child.0.wait().unwrap();
    let killed_at = Instant::now();
    let event = tokio::time::timeout(Duration::from_secs(15), events.next())
        .await
        .expect("agent_offline within 15 s")
        .unwrap()
        .json::<Value>()
        .unwrap();
    let detected_after = killed_at.elapsed();
    assert_eq!(event["agent"], "victim");
    assert_eq!(event["instance_id"], victim_instance.as_str());
    assert_eq!(event["reason"], "heartbeat_timeout");
    let reporter = observer_a.instance_id().min(observer_b.instance_id());
    assert_eq!(event["reported_by"], reporter);
    assert_eq!(event["host"], host_name().as_str());
    // offline_after (1 s), plus the backend's detection: about a second for
    // the NATS server's expiry check, one poll interval on Redis.
    assert!(
        detected_after <= Duration::from_secs(4),
        "detected after {detected_after:?}"
    );
    eprintln!("agent_offline {detected_after:?} after SIGKILL");
    let online: Vec<String> = online_agents(&store)
        .await
        .unwrap()
        .into_iter()
        .map(|a| a.name)
        .collect();
    assert_eq!(online, ["a-observer", "b-observer"]);
    let more = offline_events(&mut events, Duration::from_secs(2)).await;
    assert!(more.is_empty(), "reported once: {more:#?}");
    observer_a.shutdown(Duration::from_secs(1)).await;
    observer_b.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test]
async fn presence_off_keeps_no_entry_and_a_missing_bucket_names_agentbus_setup() {
    let servers = Servers::nats_kv().await;
    let store = servers.store().await;
    let mut runtime = Runtime::new(servers.bus().await);
    let quiet = AgentOptions {
        presence: false,
        ..options()
    };
    runtime.add(Probe::new("quiet"), quiet).await.unwrap();
    assert!(online_agents(&store).await.unwrap().is_empty());
    runtime.shutdown(Duration::from_secs(1)).await;

    let bare = NatsServer::start_bare().await;
    let mut runtime = Runtime::new(Bus::from_client(bare.connect().await));
    let err = runtime
        .add(Probe::new("needs-setup"), options())
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("agentbus setup"), "{err}");
    assert!(
        err.contains("agent-presence") || err.contains("agent-state"),
        "{err}"
    );
}

#[tokio::test]
async fn a_standalone_heartbeat_reports_in_flight_and_says_goodbye() {
    use agentbus::presence::Heartbeat;
    let servers = Servers::nats_kv().await;
    let store = servers.store().await;
    let watcher = servers.bus().await;
    let mut events = watcher
        .subscribe(events::AGENT_OFFLINE, None)
        .await
        .unwrap();
    let name = agentbus::Name::parse("agent name", "mcp_agent").unwrap();
    let presence = AgentPresence::new(&name, "bridge1", &[]);
    let heartbeat = Heartbeat::start(servers.bus().await, store.clone(), presence, fast());
    heartbeat.first_beat().await.unwrap();
    heartbeat.set_in_flight(7);
    wait_for_agents(&store, "in flight 7", |agents| {
        agents.len() == 1 && agents[0].in_flight == 7 && agents[0].instance_id == "bridge1"
    })
    .await;
    heartbeat.stop().await;
    assert!(online_agents(&store).await.unwrap().is_empty());
    let event = tokio::time::timeout(Duration::from_secs(5), events.next())
        .await
        .unwrap()
        .unwrap()
        .json::<Value>()
        .unwrap();
    assert_eq!(event["agent"], "mcp_agent");
    assert_eq!(event["reason"], "shutdown");

    // An invalid instance id is refused before it becomes a key.
    let bad = AgentPresence::new(&name, "a.b", &[]);
    let heartbeat = Heartbeat::start(servers.bus().await, store.clone(), bad, fast());
    let err = heartbeat.first_beat().await.unwrap_err().to_string();
    assert!(err.contains("invalid instance id"), "{err}");
    assert!(online_agents(&store).await.unwrap().is_empty());
}
