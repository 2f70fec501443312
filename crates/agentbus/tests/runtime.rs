//! The agent runtime against a real nats-server: request/reply, load sharing,
//! priority, dedup, bad input, events and shutdown.

use agentbus::RuntimeError;
use agentbus::{
    Agent, AgentOptions, Bus, Priority, Runtime, TaskContext, TaskError, TaskRequest, TaskStatus,
    TaskTypeSpec,
};
use agentbus::{RequestOptions, SendTaskError};
use agentbus_testkit::NatsServer;
use futures::StreamExt;
use serde_json::{Value, json};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::Semaphore;

/// What the test agent did, shared with the test.
#[derive(Debug, Default)]
struct Record {
    /// Task ids in the order handlers started.
    started: Vec<String>,
    /// Executions per task id.
    runs: HashMap<String, usize>,
}

/// An untyped agent whose behaviour is picked by task type.
#[derive(Clone)]
struct Worker {
    name: String,
    record: Arc<Mutex<Record>>,
    gate: Arc<Semaphore>,
}

impl Worker {
    fn new(name: &str) -> Self {
        Self {
            name: name.to_owned(),
            record: Arc::default(),
            gate: Arc::new(Semaphore::new(0)),
        }
    }

    fn runs(&self, task_id: &str) -> usize {
        self.record
            .lock()
            .unwrap()
            .runs
            .get(task_id)
            .copied()
            .unwrap_or(0)
    }

    fn total_runs(&self) -> usize {
        self.record.lock().unwrap().runs.values().sum()
    }
}

impl Agent for Worker {
    fn name(&self) -> &str {
        &self.name
    }

    fn task_types(&self) -> Vec<TaskTypeSpec> {
        ["echo", "slow", "fail", "panic", "gated"]
            .into_iter()
            .map(|t| TaskTypeSpec::new(t).unwrap())
            .collect()
    }

    async fn handle(&self, task: TaskRequest, ctx: TaskContext) -> Result<Value, TaskError> {
        {
            let mut record = self.record.lock().unwrap();
            record.started.push(task.task_id.to_string());
            *record.runs.entry(task.task_id.to_string()).or_default() += 1;
        }
        match task.task_type.as_str() {
            "echo" => Ok(
                json!({ "echo": task.payload, "agent": ctx.agent_name().as_str(), "instance": ctx.instance_id() }),
            ),
            "slow" => {
                let ms = task.payload["ms"].as_u64().unwrap_or(100);
                tokio::time::sleep(Duration::from_millis(ms)).await;
                Ok(json!({ "slept_ms": ms }))
            }
            "fail" => Err(TaskError::failed("the disk is full")),
            "panic" => panic!("handler bug"),
            "gated" => {
                let permit = self
                    .gate
                    .acquire()
                    .await
                    .map_err(|_| TaskError::failed("gate closed"))?;
                permit.forget();
                Ok(json!({ "passed": task.task_id }))
            }
            other => Err(TaskError::rejected(format!("unexpected {other}"))),
        }
    }
}

/// A typed agent: its payload has a schema and a Rust type.
struct Calculator;

#[derive(serde::Deserialize)]
struct AddPayload {
    a: i64,
    b: i64,
}

impl Agent for Calculator {
    fn name(&self) -> &str {
        "calculator"
    }

    fn task_types(&self) -> Vec<TaskTypeSpec> {
        vec![TaskTypeSpec::new("add").unwrap().with_schema(json!({
            "type": "object",
            "required": ["a", "b"],
            "properties": { "a": { "type": "integer" }, "b": { "type": "integer" } }
        }))]
    }

    async fn handle(&self, task: TaskRequest, _ctx: TaskContext) -> Result<Value, TaskError> {
        let AddPayload { a, b } = task.payload_as()?;
        Ok(json!({ "sum": a + b }))
    }
}

async fn bus(server: &NatsServer) -> Bus {
    Bus::from_client(server.connect().await)
}

async fn runtime_with<A: Agent>(server: &NatsServer, agent: A, options: AgentOptions) -> Runtime {
    let mut runtime = Runtime::new(bus(server).await);
    runtime.add(agent, options).await.unwrap();
    runtime
}

fn quick() -> RequestOptions {
    RequestOptions {
        timeout: Duration::from_secs(10),
        retries: 0,
    }
}

/// Sends raw bytes to an agent's task subject and returns the decoded answer.
async fn raw_request(bus: &Bus, agent: &str, body: &'static [u8]) -> agentbus::TaskResponse {
    let message = bus
        .client()
        .request(format!("agent.{agent}.task"), body.into())
        .await
        .unwrap();
    serde_json::from_slice(&message.payload).unwrap()
}

#[tokio::test]
async fn typed_and_untyped_agents_answer_over_request_reply() {
    let server = NatsServer::start().await;
    let mut runtime = Runtime::new(bus(&server).await);
    runtime
        .add(Worker::new("worker"), AgentOptions::default())
        .await
        .unwrap();
    runtime
        .add(Calculator, AgentOptions::default())
        .await
        .unwrap();
    let client = bus(&server).await;

    let response = client
        .publish_task("worker", "echo", json!({"x": 1}), Priority::High)
        .await
        .unwrap();
    assert_eq!(response.status, TaskStatus::Completed);
    assert_eq!(response.result.as_ref().unwrap()["echo"], json!({"x": 1}));
    assert_eq!(response.result.as_ref().unwrap()["agent"], "worker");
    assert_eq!(
        response.result.as_ref().unwrap()["instance"],
        runtime.instance_id()
    );
    assert_eq!(response.error, None);

    let response = client
        .publish_task(
            "calculator",
            "add",
            json!({"a": 2, "b": 40}),
            Priority::Normal,
        )
        .await
        .unwrap();
    assert_eq!(response.status, TaskStatus::Completed);
    assert_eq!(response.result, Some(json!({"sum": 42})));
    runtime.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test]
async fn replicas_share_the_load_and_no_task_runs_twice() {
    let server = NatsServer::start().await;
    let replicas: Vec<Worker> = (0..3).map(|_| Worker::new("shared")).collect();
    let mut runtimes = Vec::new();
    for replica in &replicas {
        runtimes.push(runtime_with(&server, replica.clone(), AgentOptions::default()).await);
    }
    let client = bus(&server).await;
    let total = 300;
    let responses = futures::stream::iter(0..total)
        .map(|i| {
            let client = client.clone();
            async move {
                client
                    .publish_task("shared", "echo", json!({"i": i}), Priority::Normal)
                    .await
                    .unwrap()
            }
        })
        .buffer_unordered(32)
        .collect::<Vec<_>>()
        .await;
    assert!(responses.iter().all(|r| r.status == TaskStatus::Completed));
    let shares: Vec<usize> = replicas.iter().map(Worker::total_runs).collect();
    assert_eq!(shares.iter().sum::<usize>(), total, "{shares:?}");
    assert!(
        shares.iter().all(|&n| n > 0),
        "every replica gets a share: {shares:?}"
    );
    for replica in &replicas {
        assert!(
            replica
                .record
                .lock()
                .unwrap()
                .runs
                .values()
                .all(|&n| n == 1)
        );
    }
    let mut all_ids: Vec<String> = replicas
        .iter()
        .flat_map(|r| {
            r.record
                .lock()
                .unwrap()
                .runs
                .keys()
                .cloned()
                .collect::<Vec<_>>()
        })
        .collect();
    all_ids.sort();
    all_ids.dedup();
    assert_eq!(
        all_ids.len(),
        total,
        "no task id was handled by two replicas"
    );
}

#[tokio::test]
async fn saturated_agent_takes_waiting_tasks_by_priority_then_arrival() {
    let server = NatsServer::start().await;
    let worker = Worker::new("busy");
    let options = AgentOptions {
        max_concurrency: 1,
        ..AgentOptions::default()
    };
    let runtime = runtime_with(&server, worker.clone(), options).await;
    let client = bus(&server).await;

    let send = |id: &str, priority: Priority| {
        let client = client.clone();
        let mut request = TaskRequest::new("gated", json!({})).with_priority(priority);
        request.task_id = agentbus::TaskId::parse(id).unwrap();
        tokio::spawn(async move { client.request("busy", &request, quick()).await.unwrap() })
    };
    let blocker = send("blocker", Priority::Low);
    wait_for(|| runtime.stats("busy").unwrap().running == 1).await;
    let order = [
        ("low-1", Priority::Low),
        ("normal-1", Priority::Normal),
        ("critical-1", Priority::Critical),
        ("high-1", Priority::High),
        ("low-2", Priority::Low),
        ("critical-2", Priority::Critical),
    ];
    let mut pending = Vec::new();
    for (id, priority) in order {
        pending.push(send(id, priority));
    }
    wait_for(|| runtime.stats("busy").unwrap().waiting == order.len()).await;
    worker.gate.add_permits(order.len() + 1);
    blocker.await.unwrap();
    for task in pending {
        assert_eq!(task.await.unwrap().status, TaskStatus::Completed);
    }
    let started = worker.record.lock().unwrap().started.clone();
    assert_eq!(
        started,
        [
            "blocker",
            "critical-1",
            "critical-2",
            "high-1",
            "normal-1",
            "low-1",
            "low-2"
        ]
    );
}

#[tokio::test]
async fn missing_agent_is_not_a_timeout_and_a_slow_one_is() {
    let server = NatsServer::start().await;
    let _runtime = runtime_with(&server, Worker::new("sleepy"), AgentOptions::default()).await;
    let client = bus(&server).await;

    let started = Instant::now();
    let err = client
        .publish_task("nobody", "echo", json!({}), Priority::Normal)
        .await
        .unwrap_err();
    assert!(
        matches!(&err, SendTaskError::NoAgent { agent } if agent == "nobody"),
        "{err}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "no-responders is immediate"
    );
    assert!(
        err.to_string()
            .contains("no agent named \"nobody\" is running")
    );

    let request = TaskRequest::new("slow", json!({"ms": 2000}));
    let options = RequestOptions {
        timeout: Duration::from_millis(200),
        retries: 0,
    };
    let err = client
        .request("sleepy", &request, options)
        .await
        .unwrap_err();
    assert!(matches!(err, SendTaskError::TimedOut { .. }), "{err}");
}

/// An agent that is not an agentbus runtime (a plain subscriber, as one
/// written with nats.js would be) gets every retry as a new request: the
/// timeout message promises deduplication only for agentbus agents.
#[tokio::test]
async fn a_timeout_promises_retry_deduplication_only_for_agentbus_agents() {
    let server = NatsServer::start().await;
    let plain = bus(&server).await;
    let mut requests = plain.subscribe("agent.plain.task", None).await.unwrap();
    let client = bus(&server).await;

    let request = TaskRequest::new("echo", json!({}));
    let options = RequestOptions {
        timeout: Duration::from_millis(200),
        retries: 1,
    };
    let err = client
        .request("plain", &request, options)
        .await
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        format!(
            "agent \"plain\" did not answer task {} within 200ms; it may be busy or stuck; a retry with the same task_id is answered without running the task twice only by an agentbus agent (another implementation may run it again)",
            request.task_id
        )
    );
    // Both attempts reached the plain agent, which would have run both.
    for _ in 0..2 {
        let delivered = tokio::time::timeout(Duration::from_secs(5), requests.next())
            .await
            .expect("each attempt is delivered")
            .unwrap();
        let delivered: Value = delivered.json().unwrap();
        assert_eq!(delivered["task_id"], request.task_id.to_string());
    }
}

#[tokio::test]
async fn a_repeated_task_id_runs_once() {
    let server = NatsServer::start().await;
    let worker = Worker::new("once");
    let _runtime = runtime_with(&server, worker.clone(), AgentOptions::default()).await;
    let client = bus(&server).await;

    // Sequential repeat: answered from memory.
    let request = TaskRequest::new("echo", json!({"n": 1}));
    let first = client.request("once", &request, quick()).await.unwrap();
    let second = client.request("once", &request, quick()).await.unwrap();
    assert_eq!(first, second);
    assert_eq!(worker.runs(&request.task_id), 1);

    // Retry after a timeout while the first attempt still runs: joins it.
    let slow = TaskRequest::new("slow", json!({"ms": 600}));
    let options = RequestOptions {
        timeout: Duration::from_millis(250),
        retries: 5,
    };
    let response = client.request("once", &slow, options).await.unwrap();
    assert_eq!(response.status, TaskStatus::Completed);
    assert_eq!(response.task_id, slow.task_id);
    assert_eq!(worker.runs(&slow.task_id), 1);
}

#[tokio::test]
async fn bad_input_is_answered_and_the_agent_keeps_serving() {
    let server = NatsServer::start().await;
    let mut runtime = Runtime::new(bus(&server).await);
    runtime
        .add(Worker::new("sturdy"), AgentOptions::default())
        .await
        .unwrap();
    runtime
        .add(Calculator, AgentOptions::default())
        .await
        .unwrap();
    let client = bus(&server).await;

    let malformed = raw_request(&client, "sturdy", b"{not json").await;
    assert_eq!(malformed.status, TaskStatus::Rejected);
    assert!(malformed.error.unwrap().contains("not valid JSON"));

    let missing = raw_request(&client, "sturdy", br#"{"task_id":"m1","payload":{}}"#).await;
    assert_eq!(
        (missing.status, missing.task_id.as_str()),
        (TaskStatus::Rejected, "m1")
    );
    assert_eq!(
        missing.error.as_deref(),
        Some("the request has no `task_type` field")
    );

    let mistyped = raw_request(
        &client,
        "sturdy",
        br#"{"task_id":"m2","task_type":"echo","payload":"text"}"#,
    )
    .await;
    assert_eq!(
        mistyped.error.as_deref(),
        Some("the request's `payload` field must be a JSON object")
    );

    let unknown = client
        .publish_task("sturdy", "dance", json!({}), Priority::Normal)
        .await
        .unwrap();
    assert_eq!(unknown.status, TaskStatus::Rejected);
    assert_eq!(
        unknown.error.as_deref(),
        Some(
            "agent sturdy does not accept task_type \"dance\"; it accepts: echo, fail, gated, panic, slow"
        )
    );

    let invalid = client
        .publish_task(
            "calculator",
            "add",
            json!({"a": 1, "b": "two"}),
            Priority::Normal,
        )
        .await
        .unwrap();
    assert_eq!(invalid.status, TaskStatus::Rejected);
    assert!(
        invalid.error.as_deref().unwrap().contains("at /b:"),
        "{:?}",
        invalid.error
    );

    let failed = client
        .publish_task("sturdy", "fail", json!({}), Priority::Normal)
        .await
        .unwrap();
    assert_eq!(
        (failed.status, failed.error.as_deref()),
        (TaskStatus::Failed, Some("the disk is full"))
    );

    let panicked = client
        .publish_task("sturdy", "panic", json!({}), Priority::Normal)
        .await
        .unwrap();
    assert_eq!(panicked.status, TaskStatus::Failed);
    assert_eq!(
        panicked.error.as_deref(),
        Some("the handler panicked: handler bug")
    );

    let still = client
        .publish_task("sturdy", "echo", json!({"alive": true}), Priority::Normal)
        .await
        .unwrap();
    assert_eq!(still.status, TaskStatus::Completed);
    assert_eq!(runtime.stats("sturdy").unwrap().completed, 1);
}

#[tokio::test]
async fn invalid_names_and_oversize_payloads_are_refused_before_sending() {
    let server = NatsServer::start().await;
    let client = bus(&server).await;
    for bad in ["*", ">", "a.b", "$SYS", "", "has space", "tab\t"] {
        let err = client
            .publish_task(bad, "echo", json!({}), Priority::Normal)
            .await
            .unwrap_err();
        assert!(
            matches!(err, SendTaskError::InvalidName(_)),
            "{bad:?}: {err}"
        );
        let mut runtime = Runtime::new(client.clone());
        let mut worker = Worker::new("x");
        worker.name = bad.to_owned();
        assert!(matches!(
            runtime.add(worker, AgentOptions::default()).await,
            Err(RuntimeError::InvalidName(_))
        ));
    }
    let _runtime = runtime_with(&server, Worker::new("big"), AgentOptions::default()).await;
    let huge = "x".repeat(client.max_payload() + 10);
    let err = client
        .publish_task("big", "echo", json!({"blob": huge}), Priority::Normal)
        .await
        .unwrap_err();
    match err {
        SendTaskError::TooLarge { size, max } => {
            assert_eq!(max, client.max_payload());
            assert!(size > max);
        }
        other => panic!("expected TooLarge, got {other}"),
    }
    let err = client.publish("chat.*", &json!({})).await.unwrap_err();
    assert!(
        err.to_string()
            .contains("wildcards are only allowed when subscribing"),
        "{err}"
    );
}

#[tokio::test]
async fn lifecycle_and_task_events_reach_a_wildcard_subscriber() {
    let server = NatsServer::start().await;
    let watcher = bus(&server).await;
    let mut events = watcher.subscribe("platform.events.>", None).await.unwrap();
    watcher.flush().await.unwrap();

    let runtime = runtime_with(&server, Worker::new("observed"), AgentOptions::default()).await;
    let client = bus(&server).await;
    let ok = client
        .publish_task("observed", "echo", json!({}), Priority::Normal)
        .await
        .unwrap();
    let bad = client
        .publish_task("observed", "fail", json!({}), Priority::Normal)
        .await
        .unwrap();
    runtime.shutdown(Duration::from_secs(1)).await;

    let mut seen = Vec::new();
    while seen.len() < 4 {
        let event = tokio::time::timeout(Duration::from_secs(5), events.next())
            .await
            .unwrap()
            .unwrap();
        seen.push((event.subject.clone(), event.json::<Value>().unwrap()));
    }
    let subjects: Vec<&str> = seen.iter().map(|(s, _)| s.as_str()).collect();
    assert_eq!(
        subjects,
        [
            "platform.events.agent_registered",
            "platform.events.task_completed",
            "platform.events.task_failed",
            "platform.events.agent_deregistered"
        ]
    );
    assert_eq!(seen[0].1["agent"], "observed");
    assert!(
        seen[0].1["task_types"]
            .as_array()
            .unwrap()
            .contains(&json!("echo"))
    );
    let completed = &seen[1].1;
    assert_eq!(completed["task_id"], ok.task_id.as_str());
    assert_eq!(completed["agent"], "observed");
    assert_eq!(completed["task_type"], "echo");
    assert!(completed["duration_ms"].as_f64().unwrap() >= 0.0);
    assert_eq!(seen[2].1["task_id"], bad.task_id.as_str());
    assert_eq!(seen[2].1["error"], "the disk is full");
}

#[tokio::test]
async fn shutdown_finishes_running_tasks_and_cancels_waiting_ones() {
    let server = NatsServer::start().await;
    let options = AgentOptions {
        max_concurrency: 1,
        ..AgentOptions::default()
    };
    let runtime = runtime_with(&server, Worker::new("closing"), options).await;
    let client = bus(&server).await;

    let send = |ms: u64| {
        let client = client.clone();
        tokio::spawn(async move {
            client
                .request(
                    "closing",
                    &TaskRequest::new("slow", json!({"ms": ms})),
                    quick(),
                )
                .await
                .unwrap()
        })
    };
    let running = send(400);
    wait_for(|| runtime.stats("closing").unwrap().running == 1).await;
    let waiting = send(10);
    wait_for(|| runtime.stats("closing").unwrap().waiting == 1).await;

    runtime.shutdown(Duration::from_secs(5)).await;
    let running = running.await.unwrap();
    assert_eq!(running.status, TaskStatus::Completed);
    assert_eq!(running.result, Some(json!({"slept_ms": 400})));
    let waiting = waiting.await.unwrap();
    assert_eq!(waiting.status, TaskStatus::Cancelled);

    let err = client
        .publish_task("closing", "echo", json!({}), Priority::Normal)
        .await
        .unwrap_err();
    assert!(matches!(err, SendTaskError::NoAgent { .. }), "{err}");
}

#[tokio::test]
async fn task_timeout_answers_timeout() {
    let server = NatsServer::start().await;
    let options = AgentOptions {
        task_timeout: Some(Duration::from_millis(100)),
        ..AgentOptions::default()
    };
    let _runtime = runtime_with(&server, Worker::new("deadline"), options).await;
    let client = bus(&server).await;
    let response = client
        .publish_task("deadline", "slow", json!({"ms": 5000}), Priority::Normal)
        .await
        .unwrap();
    assert_eq!(response.status, TaskStatus::Timeout);
    assert!(
        response
            .error
            .unwrap()
            .contains("did not finish within 100ms")
    );
}

#[tokio::test]
async fn typed_event_streams_and_queue_groups() {
    let server = NatsServer::start().await;
    let bus_a = bus(&server).await;
    let bus_b = bus(&server).await;
    #[derive(serde::Deserialize, Debug, PartialEq)]
    struct Chat {
        content: String,
    }
    let mut typed = bus_a
        .subscribe("chat.>", None)
        .await
        .unwrap()
        .typed::<Chat>();
    let mut group_1 = bus_a.subscribe("jobs.*", Some("workers")).await.unwrap();
    let mut group_2 = bus_b.subscribe("jobs.*", Some("workers")).await.unwrap();
    bus_a.flush().await.unwrap();
    bus_b.flush().await.unwrap();

    let publisher = bus(&server).await;
    publisher
        .publish("chat.message.new", &json!({"content": "hello"}))
        .await
        .unwrap();
    publisher
        .publish("chat.message.new", &json!({"oops": 1}))
        .await
        .unwrap();
    for i in 0..20 {
        publisher
            .publish("jobs.build", &json!({"i": i}))
            .await
            .unwrap();
    }
    publisher.flush().await.unwrap();

    let (subject, chat) = typed.next().await.unwrap().unwrap();
    assert_eq!(
        (subject.as_str(), chat),
        (
            "chat.message.new",
            Chat {
                content: "hello".into()
            }
        )
    );
    let err = typed.next().await.unwrap().unwrap_err();
    assert_eq!(err.subject, "chat.message.new");

    let mut received = 0;
    let deadline = Instant::now() + Duration::from_secs(5);
    while received < 20 && Instant::now() < deadline {
        tokio::select! {
            Some(_) = group_1.next() => received += 1,
            Some(_) = group_2.next() => received += 1,
            _ = tokio::time::sleep(Duration::from_millis(200)) => {}
        }
    }
    assert_eq!(
        received, 20,
        "each job reaches exactly one member of the group"
    );
    let extra = tokio::time::timeout(Duration::from_millis(200), async {
        tokio::select! { Some(_) = group_1.next() => (), Some(_) = group_2.next() => () }
    })
    .await;
    assert!(extra.is_err(), "no job is delivered twice");
}

/// Polls `condition` until it holds, for at most five seconds.
async fn wait_for(condition: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while !condition() {
        assert!(
            Instant::now() < deadline,
            "condition not reached within 5 s"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}
