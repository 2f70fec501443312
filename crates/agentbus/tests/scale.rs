//! Many agents on one bus, against a real nats-server: presence costs one
//! message per runtime per interval (idle agents add nothing, and nothing
//! goes per pair), idle agents hold no server consumers, an idle agent
//! holds one subscription and is rung on it (with a doorbell of its own on a
//! tasks stream that does not ring, which a queue going busy and idle keeps
//! one of) and only replicas that work the queue hear its rings, thousands
//! of agents each serve a queued task, a silent death among many is
//! reported once, an upgrade from the durable consumers of
//! earlier versions loses no queued task, and a runtime dropped without a
//! shutdown stops working its queues.

use agentbus::delivery::{DeliveryOptions, Queue, ResultRetention};
use agentbus::presence::PresenceOptions;
use agentbus::{
    Agent, AgentOptions, Bus, Priority, Runtime, TaskContext, TaskError, TaskRequest, TaskTypeSpec,
};
use agentbus_ops::topology::{StreamAction, Topology};
use agentbus_testkit::NatsServer;
use futures::StreamExt;
use serde_json::{Value, json};
use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const TASK_TYPE: &str = "echo";

/// An echo agent that notes every task it ran.
#[derive(Clone)]
struct Echo {
    name: String,
    ran: Arc<Mutex<Vec<String>>>,
}

impl Agent for Echo {
    fn name(&self) -> &str {
        &self.name
    }
    fn task_types(&self) -> Vec<TaskTypeSpec> {
        vec![TaskTypeSpec::new(TASK_TYPE).unwrap()]
    }
    async fn handle(&self, task: TaskRequest, _ctx: TaskContext) -> Result<Value, TaskError> {
        self.ran.lock().unwrap().push(task.task_id.to_string());
        Ok(json!({"echo": task.payload}))
    }
}

fn name(index: usize) -> String {
    format!("agent-{index}")
}

fn quick_presence() -> PresenceOptions {
    PresenceOptions {
        interval: Duration::from_millis(500),
        offline_after: Duration::from_secs(2),
    }
}

/// A runtime serving `count` echo agents on one connection.
async fn serve_many(
    server: &NatsServer,
    count: usize,
    options: AgentOptions,
    ran: &Arc<Mutex<Vec<String>>>,
) -> Runtime {
    let bus = Bus::connect(&server.target(), "many-agents").await.unwrap();
    let mut runtime = Runtime::new(bus);
    for index in 0..count {
        let agent = Echo {
            name: name(index),
            ran: ran.clone(),
        };
        runtime.add(agent, options.clone()).await.unwrap();
    }
    runtime
}

/// Consumers on the server, over every stream.
async fn consumers(server: &NatsServer) -> usize {
    let js = server.jetstream().await;
    js.query_account().await.unwrap().consumers
}

/// Heartbeats written to the presence bucket during `window`.
async fn heartbeats_during(server: &NatsServer, window: Duration) -> usize {
    let client = server.connect().await;
    let mut beats = client.subscribe("$KV.agent-presence.>").await.unwrap();
    client.flush().await.unwrap();
    let mut count = 0;
    let deadline = tokio::time::Instant::now() + window;
    while let Ok(Some(_)) = tokio::time::timeout_at(deadline, beats.next()).await {
        count += 1;
    }
    count
}

#[tokio::test]
async fn presence_messages_grow_with_runtimes_not_with_idle_agents() {
    let server = NatsServer::start().await;
    let options = AgentOptions {
        heartbeat: quick_presence(),
        work_queues: false,
        ..AgentOptions::default()
    };
    let ran = Arc::default();
    let mut runtimes = Vec::new();
    let mut served = 0;
    let mut seen = Vec::new();
    for total in [10, 100, 1_000] {
        // The agents of earlier rounds keep beating too: add up to `total`,
        // in one more runtime.
        let bus = Bus::connect(&server.target(), "round").await.unwrap();
        let mut runtime = Runtime::new(bus);
        for index in served..total {
            let agent = Echo {
                name: name(index),
                ran: Arc::clone(&ran),
            };
            runtime.add(agent, options.clone()).await.unwrap();
        }
        runtimes.push(runtime);
        served = total;
        // Every message the presence bucket carries over four intervals: one
        // heartbeat per runtime per interval; an idle agent adds nothing
        // (each runtime's one watch receives them; nothing goes per pair).
        let beats = heartbeats_during(&server, Duration::from_secs(2)).await;
        seen.push((total, runtimes.len(), beats));
    }
    for (agents, runtimes, beats) in &seen {
        assert!(
            *beats <= runtimes * 5,
            "{agents} agents in {runtimes} runtimes: {beats} presence messages in 4 intervals (all: {seen:?})"
        );
        assert!(*beats >= *runtimes, "every runtime beats: {seen:?}");
    }
    for runtime in runtimes {
        runtime.shutdown(Duration::from_secs(5)).await;
    }
}

#[tokio::test]
async fn idle_agents_hold_no_server_consumers() {
    let server = NatsServer::start().await;
    let before = consumers(&server).await;
    let ran = Arc::default();
    let runtime = serve_many(&server, 200, AgentOptions::default(), &ran).await;
    // Work queues and presence are on: the only consumer is the runtime's
    // one watch of the presence bucket.
    let idle = consumers(&server).await;
    assert!(
        idle <= before + 1,
        "200 idle agents hold {} consumers",
        idle - before
    );
    runtime.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test]
async fn two_thousand_agents_each_serve_one_queued_task() {
    let server = NatsServer::start().await;
    let ran: Arc<Mutex<Vec<String>>> = Arc::default();
    let options = AgentOptions {
        presence: false,
        task_events: false,
        ..AgentOptions::default()
    };
    let runtime = serve_many(&server, 2_000, options, &ran).await;
    let client = Bus::from_client(server.connect().await);
    let mut expected = HashSet::new();
    for index in 0..2_000 {
        let request = TaskRequest::new(TASK_TYPE, json!({"n": index}));
        expected.insert(request.task_id.to_string());
        submit(&client, index, &request).await;
    }
    let deadline = Instant::now() + Duration::from_secs(120);
    while ran.lock().unwrap().len() < 2_000 {
        assert!(
            Instant::now() < deadline,
            "{} of 2000 queued tasks ran",
            ran.lock().unwrap().len()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let ran: HashSet<String> = ran.lock().unwrap().iter().cloned().collect();
    assert_eq!(ran, expected, "each task ran, once each");
    // However many queues had work, the worker keeps few consumers: once
    // the last deliveries are settled, at most 64.
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut busy = consumers(&server).await;
    while busy > 64 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
        busy = consumers(&server).await;
    }
    assert!(busy <= 64, "{busy} consumers after 2000 queues had work");
    runtime.shutdown(Duration::from_secs(5)).await;
}

/// Subscriptions of the connections named `name`, from the server's
/// monitoring endpoint.
async fn subscriptions_of(server: &NatsServer, name: &str) -> u64 {
    let url = format!("{}/connz", server.monitor_url());
    let body = reqwest::get(url).await.unwrap().text().await.unwrap();
    let connz: Value = serde_json::from_str(&body).unwrap();
    connz["connections"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["name"] == name)
        .map(|c| c["subscriptions"].as_u64().unwrap())
        .sum()
}

/// Submits `count` tasks to `agent`'s queue at `priority`, then waits until
/// the agent ran `total` tasks in all.
async fn queue_and_wait(
    client: &Bus,
    ran: &Arc<Mutex<Vec<String>>>,
    (count, priority): (usize, Priority),
    total: usize,
) {
    // All at once: a burst queues faster than the agent works it.
    let queue = Queue::agent(&name(0)).unwrap();
    let submits = (0..count).map(|index| {
        let request = TaskRequest::new(TASK_TYPE, json!({"n": index})).with_priority(priority);
        let queue = &queue;
        async move {
            client
                .submit_with(queue, &request, ResultRetention::Discard)
                .await
                .unwrap();
        }
    });
    futures::future::join_all(submits).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    while ran.lock().unwrap().len() < total {
        assert!(Instant::now() < deadline, "queued tasks did not run");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// An echo agent whose tasks take a while: a burst keeps its slots full.
struct Slow(Echo);

impl Agent for Slow {
    fn name(&self) -> &str {
        self.0.name()
    }
    fn task_types(&self) -> Vec<TaskTypeSpec> {
        self.0.task_types()
    }
    async fn handle(&self, task: TaskRequest, ctx: TaskContext) -> Result<Value, TaskError> {
        tokio::time::sleep(Duration::from_millis(10)).await;
        self.0.handle(task, ctx).await
    }
}

/// The standard topology, but with a tasks stream that does not ring agents
/// on their names (as one made before it did): idle queues keep doorbells.
fn without_rings() -> Topology {
    let mut topology = Topology::standard();
    for stream in &mut topology.streams {
        stream.republish = None;
    }
    topology
}

/// Queues `request` for agent `index`, fire and forget.
async fn submit(client: &Bus, index: usize, request: &TaskRequest) {
    client
        .submit_with(
            &Queue::agent(&name(index)).unwrap(),
            request,
            ResultRetention::Discard,
        )
        .await
        .unwrap();
}

/// Waits until the agents ran task `task_id`.
async fn ran_within(ran: &Arc<Mutex<Vec<String>>>, task_id: &str, limit: Duration) {
    let deadline = Instant::now() + limit;
    while !ran.lock().unwrap().iter().any(|id| id == task_id) {
        assert!(
            Instant::now() < deadline,
            "task {task_id} did not run within {limit:?}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Stores a task on `subject` as a client outside agentbus would (nats-py
/// written to the JSON protocol, say): a JetStream publish, and no ring.
async fn publish_plainly(server: &NatsServer, subject: &str) -> String {
    let request = TaskRequest::new(TASK_TYPE, json!({"plain": true}));
    server
        .jetstream()
        .await
        .publish(subject.to_owned(), request.to_json().into())
        .await
        .unwrap()
        .await
        .unwrap();
    request.task_id.to_string()
}

/// Options under which a worker never sweeps during a test: a task that
/// runs was rung for.
fn no_sweeps() -> AgentOptions {
    AgentOptions {
        presence: false,
        task_events: false,
        delivery: DeliveryOptions {
            idle_poll: Duration::from_secs(600),
            ..DeliveryOptions::default()
        },
        ..AgentOptions::default()
    }
}

/// A runtime on a connection named `connection`, serving agents
/// `first..first + 1 + more` without sweeps, and the subscriptions its
/// connection holds for the `more` agents added after the first.
async fn subscriptions_for_more_agents(
    server: &NatsServer,
    connection: &str,
    (first, more): (usize, usize),
    ran: &Arc<Mutex<Vec<String>>>,
) -> (Runtime, u64) {
    let bus = Bus::connect(&server.target(), connection).await.unwrap();
    let mut runtime = Runtime::new(bus);
    let mut counts = Vec::new();
    for range in [first..first + 1, first + 1..first + 1 + more] {
        for index in range {
            let agent = Echo {
                name: name(index),
                ran: ran.clone(),
            };
            runtime.add(agent, no_sweeps()).await.unwrap();
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
        counts.push(subscriptions_of(server, connection).await);
    }
    (runtime, counts[1] - counts[0])
}

/// An idle agent holds one subscription, `agent.<name>.>`, which takes its
/// tasks and hears its queue ring: the tasks stream republishes what it
/// stores on `tasks.<agent>` there, and a sender rings the other priorities.
/// With sweeps off, only the rings explain that the tasks run.
#[tokio::test]
async fn an_idle_agent_holds_one_subscription_and_is_rung_on_it() {
    let server = NatsServer::start().await;
    let ran: Arc<Mutex<Vec<String>>> = Arc::default();
    let (runtime, added) = subscriptions_for_more_agents(&server, "rung", (0, 100), &ran).await;
    assert_eq!(added, 100, "subscriptions for 100 more idle agents");
    let many = subscriptions_of(&server, "rung").await;

    let plain = publish_plainly(&server, &format!("tasks.{}", name(7))).await;
    ran_within(&ran, &plain, Duration::from_secs(5)).await;
    let client = Bus::from_client(server.connect().await);
    for (index, priority) in [
        (8, Priority::High),
        (9, Priority::Critical),
        (10, Priority::Low),
    ] {
        let request = TaskRequest::new(TASK_TYPE, json!({})).with_priority(priority);
        submit(&client, index, &request).await;
        ran_within(&ran, request.task_id.as_str(), Duration::from_secs(5)).await;
    }
    // Busy and idle again: still rung.
    for _ in 0..3 {
        let request = TaskRequest::new(TASK_TYPE, json!({}));
        submit(&client, 7, &request).await;
        ran_within(&ran, request.task_id.as_str(), Duration::from_secs(5)).await;
    }
    assert_eq!(subscriptions_of(&server, "rung").await, many);
    runtime.shutdown(Duration::from_secs(5)).await;
}

/// A tasks stream made before it rang agents (no republish): each idle
/// queue keeps its two-subscription doorbell, and a task stored by any
/// client runs at once. `agentbus setup` then updates the stream in place,
/// and a runtime started after it holds one subscription per agent.
#[tokio::test]
async fn a_tasks_stream_that_does_not_ring_leaves_idle_queues_a_doorbell_until_updated() {
    let server = NatsServer::start_with_topology(&without_rings()).await;
    let ran: Arc<Mutex<Vec<String>>> = Arc::default();
    let (runtime, added) = subscriptions_for_more_agents(&server, "belled", (0, 10), &ran).await;
    assert_eq!(added, 30, "a request subscription and a doorbell each");
    let plain = publish_plainly(&server, &format!("tasks.{}", name(3))).await;
    ran_within(&ran, &plain, Duration::from_secs(5)).await;
    let high = publish_plainly(&server, &format!("tasks.{}.high", name(4))).await;
    ran_within(&ran, &high, Duration::from_secs(5)).await;

    let actions = Topology::standard()
        .apply(&server.jetstream().await)
        .await
        .unwrap();
    assert!(
        actions.contains(&("agent-tasks".to_owned(), StreamAction::Updated)),
        "{actions:?}"
    );
    let (upgraded, added) = subscriptions_for_more_agents(&server, "rung", (100, 10), &ran).await;
    assert_eq!(added, 10);
    let plain = publish_plainly(&server, &format!("tasks.{}", name(105))).await;
    ran_within(&ran, &plain, Duration::from_secs(5)).await;
    upgraded.shutdown(Duration::from_secs(5)).await;
    runtime.shutdown(Duration::from_secs(5)).await;
}

/// On a tasks stream that does not ring (doorbells are how idle queues
/// hear of work there), a queue going busy and idle again keeps one doorbell.
#[tokio::test]
async fn a_queue_going_busy_and_idle_again_keeps_one_doorbell() {
    let server = NatsServer::start_with_topology(&without_rings()).await;
    let ran: Arc<Mutex<Vec<String>>> = Arc::default();
    let bus = Bus::connect(&server.target(), "slow-agent").await.unwrap();
    let mut runtime = Runtime::new(bus);
    let agent = Slow(Echo {
        name: name(0),
        ran: ran.clone(),
    });
    let options = AgentOptions {
        presence: false,
        task_events: false,
        ..AgentOptions::default()
    };
    runtime.add(agent, options).await.unwrap();
    let client = Bus::from_client(server.connect().await);
    // At one priority: one task at a time (the doorbell rings for each),
    // then bursts that fill every slot (the doorbell goes, and comes back
    // once the queue is drained). Each priority's subject matches one of the
    // doorbell's two subscriptions.
    let mut total = 0;
    let cycle = async |total: &mut usize, priority: Priority| {
        for _ in 0..5 {
            *total += 1;
            queue_and_wait(&client, &ran, (1, priority), *total).await;
        }
        for _ in 0..3 {
            *total += 300;
            queue_and_wait(&client, &ran, (300, priority), *total).await;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
        subscriptions_of(&server, "slow-agent").await
    };
    // Idle: the doorbell is subscribed.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut counts = vec![subscriptions_of(&server, "slow-agent").await];
    for priority in [Priority::Normal, Priority::High] {
        for _ in 0..2 {
            counts.push(cycle(&mut total, priority).await);
        }
    }
    assert!(
        counts[0] > 0,
        "the runtime's connection is not on the server"
    );
    assert!(
        counts.iter().all(|count| *count == counts[0]),
        "the runtime's subscriptions went {counts:?} from idle as its queue went busy and idle"
    );
    runtime.shutdown(Duration::from_secs(5)).await;
}

/// When run as `<test binary> --exact silent_agent_process --ignored` with
/// AGENTBUS_TEST_SILENT_URL set, this test is an agent process of its own,
/// for the silent-death test below.
#[tokio::test]
#[ignore = "an agent process for a_silent_death_among_many_agents_is_reported_once; not a test on its own"]
async fn silent_agent_process() {
    let Ok(url) = std::env::var("AGENTBUS_TEST_SILENT_URL") else {
        return;
    };
    let target = agentbus::ServerTarget::from_url(&url, agentbus::connect::TargetSource::Explicit);
    let bus = Bus::connect(&target, "silent").await.unwrap();
    let mut runtime = Runtime::new(bus);
    let options = AgentOptions {
        heartbeat: quick_presence(),
        work_queues: false,
        ..AgentOptions::default()
    };
    let agent = Echo {
        name: "doomed".into(),
        ran: Arc::default(),
    };
    runtime.add(agent, options).await.unwrap();
    println!("ready");
    tokio::time::sleep(Duration::from_secs(600)).await;
}

#[tokio::test]
async fn a_silent_death_among_many_agents_is_reported_once() {
    let server = NatsServer::start().await;
    let ran = Arc::default();
    let options = AgentOptions {
        heartbeat: quick_presence(),
        work_queues: false,
        ..AgentOptions::default()
    };
    // 500 agents in two runtimes (two watchers that must agree on one reporter).
    let first = serve_many(&server, 250, options.clone(), &ran).await;
    let bus = Bus::connect(&server.target(), "second").await.unwrap();
    let mut second = Runtime::new(bus);
    for index in 250..500 {
        let agent = Echo {
            name: name(index),
            ran: Arc::clone(&ran),
        };
        second.add(agent, options.clone()).await.unwrap();
    }
    let client = Bus::from_client(server.connect().await);
    let mut offline = client
        .subscribe("platform.events.agent_offline", None)
        .await
        .unwrap();
    let mut child = tokio::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "silent_agent_process",
            "--ignored",
            "--nocapture",
        ])
        .env("AGENTBUS_TEST_SILENT_URL", server.url_with_credentials())
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines =
        tokio::io::AsyncBufReadExt::lines(tokio::io::BufReader::new(child.stdout.take().unwrap()));
    loop {
        let line = tokio::time::timeout(Duration::from_secs(60), lines.next_line())
            .await
            .expect("the agent process started")
            .unwrap()
            .expect("the agent process printed ready");
        if line == "ready" {
            break;
        }
    }
    child.kill().await.unwrap(); // SIGKILL: no goodbye
    let mut events = Vec::new();
    // Offline after 2 s; then a little longer for any second report.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(8);
    while let Ok(Some(event)) = tokio::time::timeout_at(deadline, offline.next()).await {
        let event: Value = event.json().unwrap();
        events.push(event);
    }
    let doomed: Vec<&Value> = events.iter().filter(|e| e["agent"] == "doomed").collect();
    assert_eq!(doomed.len(), 1, "{events:?}");
    assert_eq!(doomed[0]["reason"], "heartbeat_timeout");
    assert_eq!(events.len(), 1, "nobody else went offline: {events:?}");
    first.shutdown(Duration::from_secs(5)).await;
    second.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test]
async fn queued_tasks_survive_an_upgrade_from_always_on_consumers() {
    let server = NatsServer::start().await;
    let js = server.jetstream().await;
    let stream = js.get_stream("agent-tasks").await.unwrap();
    // The consumers earlier versions made at start and kept: same names and
    // subjects, no inactivity threshold; and tasks waiting in them.
    for priority in Priority::ALL {
        let queue = Queue::agent("veteran").unwrap();
        stream
            .create_consumer(async_nats::jetstream::consumer::pull::Config {
                durable_name: Some(queue.durable(priority)),
                filter_subject: queue.subject(priority).into(),
                ack_policy: async_nats::jetstream::consumer::AckPolicy::Explicit,
                ack_wait: Duration::from_secs(30),
                max_deliver: 5,
                max_ack_pending: 1024,
                ..Default::default()
            })
            .await
            .unwrap();
    }
    let client = Bus::from_client(server.connect().await);
    let mut expected = HashSet::new();
    for (index, priority) in Priority::ALL.iter().cycle().take(12).enumerate() {
        let request = TaskRequest::new(TASK_TYPE, json!({"n": index})).with_priority(*priority);
        expected.insert(request.task_id.to_string());
        client
            .submit(&Queue::agent("veteran").unwrap(), &request)
            .await
            .unwrap();
    }
    let ran: Arc<Mutex<Vec<String>>> = Arc::default();
    let bus = Bus::connect(&server.target(), "upgraded").await.unwrap();
    let mut runtime = Runtime::new(bus);
    let agent = Echo {
        name: "veteran".into(),
        ran: ran.clone(),
    };
    let options = AgentOptions {
        delivery: DeliveryOptions {
            idle_poll: Duration::from_millis(100),
            ..DeliveryOptions::default()
        },
        ..AgentOptions::default()
    };
    runtime.add(agent, options).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while ran.lock().unwrap().len() < expected.len() {
        assert!(
            Instant::now() < deadline,
            "{} of {} queued tasks ran",
            ran.lock().unwrap().len(),
            expected.len()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let ran: HashSet<String> = ran.lock().unwrap().iter().cloned().collect();
    assert_eq!(ran, expected);
    // The old consumers now carry the inactivity threshold: they go once idle.
    let queue = Queue::agent("veteran").unwrap();
    let consumer: async_nats::jetstream::consumer::PullConsumer = stream
        .get_consumer(&queue.durable(Priority::Normal))
        .await
        .unwrap();
    assert!(
        consumer.cached_info().config.inactive_threshold > Duration::ZERO,
        "{:?}",
        consumer.cached_info().config
    );
    runtime.shutdown(Duration::from_secs(5)).await;
}

/// A runtime dropped without a shutdown stops working its queues: the rings
/// its agents' subscriptions hand to the worker do not keep the worker alive.
#[tokio::test]
async fn a_dropped_runtime_stops_working_its_queue() {
    let server = NatsServer::start().await;
    let ran: Arc<Mutex<Vec<String>>> = Arc::default();
    let options = AgentOptions {
        presence: false,
        task_events: false,
        delivery: DeliveryOptions {
            idle_poll: Duration::from_millis(100),
            ..DeliveryOptions::default()
        },
        ..AgentOptions::default()
    };
    let runtime = serve_many(&server, 1, options, &ran).await;
    let client = Bus::from_client(server.connect().await);
    let before = TaskRequest::new(TASK_TYPE, json!({}));
    submit(&client, 0, &before).await;
    ran_within(&ran, before.task_id.as_str(), Duration::from_secs(5)).await;
    drop(runtime);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let after = TaskRequest::new(TASK_TYPE, json!({}));
    submit(&client, 0, &after).await;
    // Ten sweeps of a worker still running would have found it.
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(ran.lock().unwrap().len(), 1, "a dropped runtime ran a task");
}

/// Rings go only to the replicas that work the queue: a replica of the same
/// agent that serves request/reply only (work queues off) subscribes to the
/// two task subjects, so no ring lands where nothing would act on it. With
/// sweeps off, every task stored on the queue runs at once on the other
/// replica (a ring to the request/reply replica would wait for a sweep).
#[tokio::test]
async fn rings_reach_only_the_replicas_that_work_the_queue() {
    let server = NatsServer::start().await;
    let ran: Arc<Mutex<Vec<String>>> = Arc::default();
    let mut serving = Runtime::new(Bus::connect(&server.target(), "serving").await.unwrap());
    let agent = || Echo {
        name: name(0),
        ran: ran.clone(),
    };
    serving
        .add(
            agent(),
            AgentOptions {
                work_queues: false,
                ..no_sweeps()
            },
        )
        .await
        .unwrap();
    let mut working = Runtime::new(Bus::connect(&server.target(), "working").await.unwrap());
    working.add(agent(), no_sweeps()).await.unwrap();
    let subjects = async |connection: &str| {
        let mut subjects: Vec<String> = server
            .subscriptions(connection)
            .await
            .into_iter()
            .filter(|s| s.subject.starts_with("agent.") && s.qgroup.as_deref() == Some("agent-0"))
            .map(|s| s.subject)
            .collect();
        subjects.sort();
        subjects
    };
    assert_eq!(
        subjects("serving").await,
        ["agent.agent-0.task", "agent.agent-0.task.*"]
    );
    assert_eq!(subjects("working").await, ["agent.agent-0.>"]);
    for _ in 0..6 {
        let plain = publish_plainly(&server, &format!("tasks.{}", name(0))).await;
        ran_within(&ran, &plain, Duration::from_secs(5)).await;
    }
    working.shutdown(Duration::from_secs(5)).await;
    serving.shutdown(Duration::from_secs(5)).await;
}
