//! Agents on a JetStream cluster of three real nats-servers: clients find it
//! through a seed list, every stream keeps three copies, and work goes on
//! while a server dies, with every submission stored and every task run.

use agentbus::connect::{ServerTarget, TargetSource};
use agentbus::delivery::{DeliveryOptions, Queue};
use agentbus::subject::{TASK_EVENTS_STREAM, TASKS_STREAM};
use agentbus::task_log::{EventType, Watched};
use agentbus::{
    Agent, AgentOptions, Bus, RequestOptions, Runtime, SendTaskErrorKind, TaskContext, TaskError,
    TaskRequest, TaskStatus, TaskTypeSpec,
};
use agentbus_testkit::{ClosedPort, NatsCluster};
use futures::StreamExt;
use serde_json::{Value, json};
use std::time::{Duration, Instant};

const AGENT: &str = "clustered";
/// Partials of a `chunks` task.
const CHUNKS: u64 = 60;

struct Echo;

impl Agent for Echo {
    fn name(&self) -> &str {
        AGENT
    }

    fn task_types(&self) -> Vec<TaskTypeSpec> {
        vec![
            TaskTypeSpec::new("echo").unwrap(),
            TaskTypeSpec::new("chunks").unwrap(),
        ]
    }

    async fn handle(&self, task: TaskRequest, ctx: TaskContext) -> Result<Value, TaskError> {
        if task.task_type == "chunks" {
            // One partial every 50 ms, each a number in order.
            for chunk in 0..CHUNKS {
                ctx.partial(&chunk)
                    .await
                    .map_err(|err| TaskError::failed(err.to_string()))?;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            return Ok(json!({ "chunks": CHUNKS }));
        }
        Ok(json!({ "echo": task.payload }))
    }
}

async fn serve_echo(target: &ServerTarget) -> Runtime {
    let bus = Bus::connect(target, "cluster-agent").await.unwrap();
    let mut runtime = Runtime::new(bus);
    let options = AgentOptions {
        delivery: DeliveryOptions {
            idle_poll: Duration::from_millis(100),
            ..DeliveryOptions::default()
        },
        ..AgentOptions::default()
    };
    runtime.add(Echo, options).await.unwrap();
    runtime
}

#[tokio::test]
async fn a_seed_list_finds_the_cluster_whose_streams_keep_three_copies() {
    let cluster = NatsCluster::start(3).await;
    // A seed list whose first server is down: the client goes on to the next.
    let down = ClosedPort::new();
    let target = cluster.target();
    let seeds = format!("nats://127.0.0.1:{},{}", down.port(), target.display_url());
    let target = ServerTarget::from_url(&seeds, TargetSource::Explicit)
        .with_credentials(target.credentials().clone());
    assert_eq!(target.servers().len(), 4, "{}", target.display_url());

    let js = async_nats::jetstream::new(target.connect("cluster-test").await.unwrap());
    for stream in agentbus::subject::STREAMS {
        let info = js
            .get_stream(stream)
            .await
            .unwrap()
            .info()
            .await
            .unwrap()
            .clone();
        assert_eq!(info.config.num_replicas, 3, "{stream}");
        let replicas = info.cluster.map(|c| c.replicas.len());
        assert_eq!(replicas, Some(2), "{stream}: a leader and two replicas");
    }

    let runtime = serve_echo(&target).await;
    let client = Bus::connect(&target, "cluster-client").await.unwrap();
    let task = TaskRequest::new("echo", json!({ "n": 1 }));
    client
        .submit(&Queue::agent(AGENT).unwrap(), &task)
        .await
        .unwrap();
    let response = client
        .wait_task(&task.task_id, Duration::from_secs(30))
        .await
        .unwrap();
    assert_eq!(response.status, TaskStatus::Completed, "{response:?}");
    runtime.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test]
async fn submissions_ride_the_loss_of_the_stream_leader() {
    const TASKS: usize = 120;
    const KILL_AT: usize = 30;
    let mut cluster = NatsCluster::start(3).await;
    let target = cluster.target();
    let runtime = serve_echo(&target).await;
    let client = Bus::connect(&target, "cluster-client").await.unwrap();
    let js = client.jetstream().clone();
    let queue = Queue::agent(AGENT).unwrap();

    let mut ids = Vec::new();
    let mut errors = Vec::new();
    let mut slowest = Duration::ZERO;
    let mut killed = None;
    for n in 0..TASKS {
        if n == KILL_AT {
            let leader = cluster.stream_leader(&js, TASKS_STREAM).await;
            cluster.kill(leader).await;
            killed = Some(leader);
        }
        let task = TaskRequest::new("echo", json!({ "n": n }));
        let started = Instant::now();
        match client.submit(&queue, &task).await {
            Ok(_) => ids.push(task.task_id),
            Err(err) => errors.push(err.to_string()),
        }
        slowest = slowest.max(started.elapsed());
    }
    assert!(killed.is_some());
    assert!(
        errors.is_empty(),
        "{} of {TASKS} submissions failed, the first with: {}",
        errors.len(),
        errors[0]
    );
    assert!(
        slowest < client.store_deadline(),
        "the slowest submission took {slowest:?}"
    );
    for id in &ids {
        let response = client.wait_task(id, Duration::from_secs(60)).await.unwrap();
        assert_eq!(response.status, TaskStatus::Completed, "{response:?}");
    }
    // A new leader, on one of the two servers left.
    let leader = cluster.stream_leader(&js, TASKS_STREAM).await;
    assert_ne!(Some(leader), killed);
    runtime.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test]
async fn a_task_log_rides_the_loss_of_its_stream_leader() {
    let mut cluster = NatsCluster::start(3).await;
    let target = cluster.target();
    let runtime = serve_echo(&target).await;
    let client = Bus::connect(&target, "cluster-client").await.unwrap();
    let js = client.jetstream().clone();
    let task = TaskRequest::new("chunks", json!({})).streamed();
    client
        .submit(&Queue::agent(AGENT).unwrap(), &task)
        .await
        .unwrap();
    // A quarter of the way in, the leader of the logs' stream dies.
    tokio::time::sleep(Duration::from_millis(50 * CHUNKS / 4)).await;
    let leader = cluster.stream_leader(&js, TASK_EVENTS_STREAM).await;
    cluster.kill(leader).await;
    let response = client
        .wait_task(&task.task_id, Duration::from_secs(60))
        .await
        .unwrap();
    assert_eq!(response.status, TaskStatus::Completed, "{response:?}");

    // Every partial is in the log once, in order, numbered without a gap.
    let mut watch = client.watch(&task.task_id, 1).await.unwrap();
    let mut chunks = Vec::new();
    let mut seqs = Vec::new();
    let mut ended = None;
    while let Some(item) = tokio::time::timeout(Duration::from_secs(30), watch.next())
        .await
        .expect("the log is read within 30 s")
    {
        match item.unwrap() {
            Watched::Event(event) => {
                seqs.push(event.seq);
                match event.kind {
                    EventType::Partial => chunks.push(event.data.as_u64().unwrap()),
                    kind if kind.is_final() => ended = Some(kind),
                    _ => {}
                }
            }
            Watched::Gone { from, until } => panic!("events {from}..{until} are gone"),
        }
    }
    assert_eq!(chunks, (0..CHUNKS).collect::<Vec<_>>());
    let numbered: Vec<u64> = (seqs[0]..seqs[0] + seqs.len() as u64).collect();
    assert_eq!(seqs, numbered, "the log's numbering has a gap or a repeat");
    assert_eq!(ended, Some(EventType::Completed));
    runtime.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test]
async fn a_request_waits_for_an_agent_whose_server_died() {
    let mut cluster = NatsCluster::start(3).await;
    // The agent on node 0 (it learns of the others from it), reconnecting a
    // second after a loss; the caller on node 1.
    const RECONNECT: Duration = Duration::from_secs(1);
    let options = async_nats::ConnectOptions::new().reconnect_delay_callback(|_| RECONNECT);
    let agent_client = cluster.connect_to_with(0, options).await;
    let mut runtime = Runtime::new(Bus::from_client(agent_client));
    runtime.add(Echo, AgentOptions::default()).await.unwrap();
    let caller = Bus::from_client(cluster.connect_to(1).await);
    let task = TaskRequest::new("echo", json!({ "n": 1 }));
    let options = RequestOptions::default();
    let response = caller.request(AGENT, &task, options).await.unwrap();
    assert_eq!(response.status, TaskStatus::Completed, "{response:?}");

    // Its server dies: until the agent has reconnected, nothing answers.
    // (A request sent before the caller's server has seen its route go is
    // lost on the way, as core NATS loses it, and times out.)
    cluster.kill(0).await;
    cluster.await_departure(0).await;
    let started = Instant::now();
    let task = TaskRequest::new("echo", json!({ "n": 2 }));
    let response = caller.request(AGENT, &task, options).await;
    let response = response.expect("answered once the agent reconnected");
    assert_eq!(response.status, TaskStatus::Completed, "{response:?}");
    assert!(
        started.elapsed() > RECONNECT / 2,
        "answered after {:?}: the agent had not left",
        started.elapsed()
    );

    // An agent that runs nowhere is still called absent, after the grace.
    let started = Instant::now();
    let err = caller
        .request("nobody", &task, options)
        .await
        .expect_err("nobody answers");
    assert_eq!(err.kind(), SendTaskErrorKind::NoAgent, "{err}");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    runtime.shutdown(Duration::from_secs(5)).await;
}
