//! Agents and clients ride out a server restart or stall: their connections
//! come back by themselves, with their subscriptions, and durable work
//! resumes, each task run once.

use agentbus::delivery::{DeliveryOptions, Queue};
use agentbus::{
    Agent, AgentOptions, Bus, RequestOptions, Runtime, TaskContext, TaskError, TaskRequest,
    TaskResponse, TaskStatus, TaskTypeSpec,
};
use agentbus_testkit::NatsServer;
use serde_json::{Value, json};
use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const AGENT: &str = "steadfast";
/// How long the connections may take to come back after the restart.
const RECOVERY: Duration = Duration::from_secs(30);

struct Echo;

impl Agent for Echo {
    fn name(&self) -> &str {
        AGENT
    }

    fn task_types(&self) -> Vec<TaskTypeSpec> {
        vec![TaskTypeSpec::new("echo").unwrap()]
    }

    async fn handle(&self, task: TaskRequest, _ctx: TaskContext) -> Result<Value, TaskError> {
        Ok(json!({ "echo": task.payload }))
    }
}

/// Retries `attempt` until it succeeds, for at most [`RECOVERY`].
async fn eventually<T, E: std::fmt::Display, F: Future<Output = Result<T, E>>>(
    what: &str,
    attempt: impl Fn() -> F,
) -> T {
    let deadline = Instant::now() + RECOVERY;
    loop {
        match attempt().await {
            Ok(value) => return value,
            Err(err) => {
                assert!(
                    Instant::now() < deadline,
                    "{what}: still failing after {RECOVERY:?}: {err}"
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

fn assert_echoed(response: &TaskResponse, request: &TaskRequest) {
    assert_eq!(response.task_id, request.task_id);
    assert_eq!(response.status, TaskStatus::Completed, "{response:?}");
    assert_eq!(response.result, Some(json!({ "echo": request.payload })));
}

#[tokio::test]
async fn agents_and_clients_keep_working_across_a_server_restart() {
    let mut server = NatsServer::start().await;
    let mut runtime = Runtime::new(
        Bus::connect(&server.target(), "reconnect-agent")
            .await
            .unwrap(),
    );
    let options = AgentOptions {
        delivery: DeliveryOptions {
            idle_poll: Duration::from_millis(100),
            ..DeliveryOptions::default()
        },
        ..AgentOptions::default()
    };
    runtime.add(Echo, options).await.unwrap();
    let client = Bus::connect(&server.target(), "reconnect-client")
        .await
        .unwrap();
    let queue = Queue::agent(AGENT).unwrap();
    let request_options = RequestOptions {
        timeout: Duration::from_secs(2),
        retries: 0,
    };

    // Before: request/reply and a queued task.
    let before = TaskRequest::new("echo", json!({ "n": 1 }));
    let response = client
        .request(AGENT, &before, request_options)
        .await
        .unwrap();
    assert_echoed(&response, &before);
    let queued = TaskRequest::new("echo", json!({ "n": 2 }));
    client.submit(&queue, &queued).await.unwrap();
    let response = client
        .wait_task(&queued.task_id, Duration::from_secs(10))
        .await
        .unwrap();
    assert_echoed(&response, &queued);

    let old_pid = server.pid();
    server.restart().await;
    assert_ne!(server.pid(), old_pid, "a new server process");

    // After: the same connections serve and send tasks again...
    let after = TaskRequest::new("echo", json!({ "n": 3 }));
    let response = eventually("request/reply after the restart", || {
        client.request(AGENT, &after, request_options)
    })
    .await;
    assert_echoed(&response, &after);

    // ...and the agent's durable consumers (kept in file storage) resume the queue.
    let later = TaskRequest::new("echo", json!({ "n": 4 }));
    eventually("submit after the restart", || client.submit(&queue, &later)).await;
    let response = client.wait_task(&later.task_id, RECOVERY).await.unwrap();
    assert_echoed(&response, &later);
    assert_eq!(
        runtime.stats(AGENT).map(|s| s.completed),
        Some(4),
        "each task ran once"
    );
    runtime.shutdown(Duration::from_secs(5)).await;
}

/// Counts the runs of each task; each takes a little while.
#[derive(Clone, Default)]
struct Counting {
    runs: Arc<Mutex<HashMap<String, usize>>>,
}

impl Agent for Counting {
    fn name(&self) -> &str {
        "counted"
    }

    fn task_types(&self) -> Vec<TaskTypeSpec> {
        vec![TaskTypeSpec::new("work").unwrap()]
    }

    async fn handle(&self, task: TaskRequest, _ctx: TaskContext) -> Result<Value, TaskError> {
        *self
            .runs
            .lock()
            .unwrap()
            .entry(task.task_id.to_string())
            .or_default() += 1;
        tokio::time::sleep(Duration::from_millis(20)).await;
        Ok(json!({ "done": task.payload }))
    }
}

#[tokio::test]
async fn a_server_that_stalls_longer_than_a_fetch_still_runs_each_task_once() {
    let server = NatsServer::start().await;
    let agent = Counting::default();
    let mut runtime = Runtime::new(Bus::connect(&server.target(), "stall-agent").await.unwrap());
    let options = AgentOptions {
        max_concurrency: 2,
        delivery: DeliveryOptions {
            ack_wait: Duration::from_secs(2),
            idle_poll: Duration::from_millis(100),
            ..DeliveryOptions::default()
        },
        ..AgentOptions::default()
    };
    runtime.add(agent.clone(), options).await.unwrap();
    let client = Bus::connect(&server.target(), "stall-client")
        .await
        .unwrap();
    let queue = Queue::agent("counted").unwrap();
    let tasks: Vec<TaskRequest> = (0..40)
        .map(|i| TaskRequest::new("work", json!({ "i": i })))
        .collect();
    for task in &tasks {
        client.submit(&queue, task).await.unwrap();
    }

    // Freeze the server mid-queue for longer than a fetch waits (5 s), so
    // that fetches, acks and result writes all hang, then let it go on.
    let started = Instant::now();
    while agent.runs.lock().unwrap().len() < 5 {
        assert!(started.elapsed() < RECOVERY, "the queue did not start");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let signal = |name: &str| {
        let status = std::process::Command::new("kill")
            .args([name, &server.pid().to_string()])
            .status()
            .unwrap();
        assert!(status.success(), "kill {name}");
    };
    signal("-STOP");
    tokio::time::sleep(Duration::from_secs(6)).await;
    signal("-CONT");

    for task in &tasks {
        let response = client.wait_task(&task.task_id, RECOVERY).await.unwrap();
        assert_eq!(response.status, TaskStatus::Completed, "{response:?}");
    }
    let runs = agent.runs.lock().unwrap().clone();
    let twice: Vec<_> = runs.iter().filter(|(_, n)| **n != 1).collect();
    assert!(twice.is_empty(), "tasks not run exactly once: {twice:?}");
    assert_eq!(runs.len(), tasks.len());
    runtime.shutdown(Duration::from_secs(5)).await;
}

/// Submissions made while the server restarts are all stored: none is
/// told that no stream stores its subject while JetStream comes back, and
/// none waits out an acknowledgement timeout (5 s) that went to the
/// connection that is gone.
#[tokio::test]
async fn submissions_during_a_restart_are_all_stored_without_waiting_out_a_timeout() {
    let mut server = NatsServer::start().await;
    let client = Bus::connect(&server.target(), "restart-submitter")
        .await
        .unwrap();
    let queue = Queue::agent("later").unwrap();
    let submitter = {
        let client = client.clone();
        tokio::spawn(async move {
            let mut slowest = Duration::ZERO;
            let mut stored = 0;
            let started = Instant::now();
            // Sixty-four at a time, for five seconds: the restart falls in between.
            while started.elapsed() < Duration::from_secs(5) {
                let batch = (0..64).map(|n| {
                    let client = client.clone();
                    let queue = queue.clone();
                    async move {
                        let task = TaskRequest::new("echo", json!({ "n": n }));
                        let began = Instant::now();
                        client.submit(&queue, &task).await.map(|_| began.elapsed())
                    }
                });
                for took in futures::future::join_all(batch).await {
                    slowest = slowest.max(took.expect("every submission is stored"));
                    stored += 1;
                }
                // Well below the queue's limit.
                tokio::time::sleep(Duration::from_millis(25)).await;
            }
            (stored, slowest)
        })
    };
    tokio::time::sleep(Duration::from_millis(1500)).await;
    server.restart().await;
    let (stored, slowest) = submitter.await.unwrap();
    eprintln!("{stored} stored, the slowest in {slowest:?}");
    assert!(stored > 0);
    assert!(
        slowest < Duration::from_secs(3),
        "the slowest submission took {slowest:?}: it waited for an acknowledgement that could not come"
    );
}
