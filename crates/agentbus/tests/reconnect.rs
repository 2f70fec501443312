//! Agents and clients ride out a server restart: their connections come back
//! by themselves, with their subscriptions, and durable work resumes.

use agentbus::delivery::Queue;
use agentbus::{
    Agent, AgentOptions, Bus, RequestOptions, Runtime, TaskContext, TaskError, TaskRequest,
    TaskResponse, TaskStatus, TaskTypeSpec,
};
use agentbus_testkit::NatsServer;
use serde_json::{Value, json};
use std::future::Future;
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
        idle_poll: Duration::from_millis(100),
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
