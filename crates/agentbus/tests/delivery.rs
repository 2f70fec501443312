//! Guaranteed delivery against a real nats-server: durable inboxes, work
//! queues, retries, dead letters, priority, broadcast, full streams.

use agentbus::delivery::{
    DeliveryOptions, Queue, RESULT_HEADER, ResultRetention, StoreError, TaskClaims, TaskState,
};
use agentbus::{
    Agent, AgentMessage, AgentOptions, Bus, MessageChannel, Priority, Runtime, TaskContext,
    TaskError, TaskId, TaskRequest, TaskStatus, TaskTypeSpec,
};
use agentbus_ops::topology::Topology;
use agentbus_testkit::NatsServer;
use futures::StreamExt;
use serde_json::{Value, json};
use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Records what it handled; behaviour is chosen by task type.
#[derive(Clone, Default)]
struct Worker {
    name: String,
    runs: Arc<Mutex<HashMap<String, usize>>>,
    order: Arc<Mutex<Vec<String>>>,
    messages: Arc<Mutex<Vec<AgentMessage>>>,
    failures_left: Arc<AtomicUsize>,
}

impl Worker {
    fn new(name: &str) -> Self {
        Self {
            name: name.to_owned(),
            ..Self::default()
        }
    }

    fn runs(&self, task_id: &str) -> usize {
        self.runs.lock().unwrap().get(task_id).copied().unwrap_or(0)
    }

    fn total(&self) -> usize {
        self.runs.lock().unwrap().values().sum()
    }
}

impl Agent for Worker {
    fn name(&self) -> &str {
        &self.name
    }

    fn task_types(&self) -> Vec<TaskTypeSpec> {
        ["echo", "slow", "poison", "flaky", "summarize"]
            .into_iter()
            .map(|t| TaskTypeSpec::new(t).unwrap())
            .collect()
    }

    async fn handle(&self, task: TaskRequest, _ctx: TaskContext) -> Result<Value, TaskError> {
        *self
            .runs
            .lock()
            .unwrap()
            .entry(task.task_id.to_string())
            .or_default() += 1;
        self.order.lock().unwrap().push(task.task_id.to_string());
        match task.task_type.as_str() {
            "slow" => {
                let ms = task.payload["ms"].as_u64().unwrap_or(100);
                tokio::time::sleep(Duration::from_millis(ms)).await;
                Ok(json!({"slept_ms": ms}))
            }
            "poison" => Err(TaskError::failed(format!(
                "cannot digest {}",
                task.payload["food"]
            ))),
            "flaky" => {
                if self.failures_left.load(Ordering::SeqCst) > 0 {
                    self.failures_left.fetch_sub(1, Ordering::SeqCst);
                    Err(TaskError::failed("temporarily unavailable"))
                } else {
                    Ok(json!({"ok": true}))
                }
            }
            _ => Ok(json!({"echo": task.payload})),
        }
    }

    async fn handle_message(
        &self,
        message: AgentMessage,
        _ctx: TaskContext,
    ) -> Result<(), TaskError> {
        if message.body["fail"] == json!(true) && self.failures_left.load(Ordering::SeqCst) > 0 {
            self.failures_left.fetch_sub(1, Ordering::SeqCst);
            return Err(TaskError::failed("not yet"));
        }
        self.messages.lock().unwrap().push(message);
        Ok(())
    }
}

fn fast_retries() -> AgentOptions {
    AgentOptions {
        delivery: DeliveryOptions {
            retry_backoff: Duration::from_millis(50),
            max_retry_backoff: Duration::from_millis(200),
            idle_poll: Duration::from_millis(100),
            ..DeliveryOptions::default()
        },
        ..AgentOptions::default()
    }
}

/// `options` with its delivery settings changed by `change`.
fn with_delivery(
    mut options: AgentOptions,
    change: impl FnOnce(&mut DeliveryOptions),
) -> AgentOptions {
    change(&mut options.delivery);
    options
}

async fn bus(server: &NatsServer) -> Bus {
    Bus::from_client(server.connect().await)
}

async fn serve(server: &NatsServer, worker: Worker, options: AgentOptions) -> Runtime {
    let mut runtime = Runtime::new(bus(server).await);
    runtime.add(worker, options).await.unwrap();
    runtime
}

/// How many tasks the tasks stream holds (queued, or taken and not acknowledged).
async fn tasks_stored(bus: &Bus) -> u64 {
    let stream = bus
        .jetstream()
        .get_stream(agentbus::subject::TASKS_STREAM)
        .await
        .unwrap();
    stream.get_info().await.unwrap().state.messages
}

async fn wait_for(what: &str, limit: Duration, condition: impl Fn() -> bool) {
    let deadline = Instant::now() + limit;
    while !condition() {
        assert!(
            Instant::now() < deadline,
            "{what}: not reached within {limit:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn an_offline_agent_gets_every_message_in_order_when_it_starts() {
    let server = NatsServer::start().await;
    let sender = bus(&server).await;
    for i in 0..100 {
        let sent = sender.send("sleeper", &json!({"n": i})).await.unwrap();
        assert!(!sent.duplicate);
    }
    let worker = Worker::new("sleeper");
    let runtime = serve(
        &server,
        worker.clone(),
        AgentOptions {
            messages: true,
            ..fast_retries()
        },
    )
    .await;
    wait_for("100 messages", Duration::from_secs(15), || {
        worker.messages.lock().unwrap().len() == 100
    })
    .await;
    let messages = worker.messages.lock().unwrap().clone();
    let numbers: Vec<u64> = messages
        .iter()
        .map(|m| m.body["n"].as_u64().unwrap())
        .collect();
    assert_eq!(numbers, (0..100).collect::<Vec<_>>());
    assert!(
        messages
            .iter()
            .all(|m| m.channel == MessageChannel::Inbox && m.attempt == 1)
    );
    runtime.shutdown(Duration::from_secs(2)).await;

    // Acknowledged: a restart delivers nothing again.
    let again = Worker::new("sleeper");
    let runtime = serve(
        &server,
        again.clone(),
        AgentOptions {
            messages: true,
            ..fast_retries()
        },
    )
    .await;
    sender.send("sleeper", &json!({"n": 100})).await.unwrap();
    wait_for("the new message", Duration::from_secs(10), || {
        !again.messages.lock().unwrap().is_empty()
    })
    .await;
    assert_eq!(again.messages.lock().unwrap()[0].body, json!({"n": 100}));
    assert_eq!(again.messages.lock().unwrap().len(), 1);
    runtime.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test]
async fn a_failing_message_is_redelivered_with_backoff_then_handled() {
    let server = NatsServer::start().await;
    let worker = Worker::new("retrier");
    worker.failures_left.store(2, Ordering::SeqCst);
    let runtime = serve(
        &server,
        worker.clone(),
        AgentOptions {
            messages: true,
            ..fast_retries()
        },
    )
    .await;
    bus(&server)
        .await
        .send_direct("retrier", &json!({"fail": true}))
        .await
        .unwrap();
    wait_for("the third attempt", Duration::from_secs(10), || {
        !worker.messages.lock().unwrap().is_empty()
    })
    .await;
    let message = worker.messages.lock().unwrap()[0].clone();
    assert_eq!(
        (message.attempt, message.channel),
        (3, MessageChannel::Direct)
    );
    runtime.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test]
async fn queued_tasks_complete_and_results_outlive_the_submitter() {
    let server = NatsServer::start().await;
    let worker = Worker::new("queued");
    let _runtime = serve(&server, worker.clone(), fast_retries()).await;
    let submitter = bus(&server).await;
    let request = TaskRequest::new("echo", json!({"x": 1}));
    let submitted = submitter
        .submit(&Queue::agent("queued").unwrap(), &request)
        .await
        .unwrap();
    assert_eq!(submitted.subject, "tasks.queued");
    drop(submitter);

    // A new connection (the submitter restarted) collects the result by id.
    let later = bus(&server).await;
    let response = later
        .wait_task(&request.task_id, Duration::from_secs(10))
        .await
        .unwrap();
    assert_eq!(response.status, TaskStatus::Completed);
    assert_eq!(response.result, Some(json!({"echo": {"x": 1}})));
    let record = later.task_record(&request.task_id).await.unwrap().unwrap();
    assert_eq!((record.state, record.attempts), (TaskState::Completed, 1));

    // Completed tasks leave the work-queue stream: acknowledged just after
    // the result was recorded.
    let mut stream = later.jetstream().get_stream("agent-tasks").await.unwrap();
    let until = std::time::Instant::now() + Duration::from_secs(5);
    while stream.info().await.unwrap().state.messages != 0 {
        assert!(
            std::time::Instant::now() < until,
            "the task stayed in its queue"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn fire_and_forget_tasks_leave_a_record_only_when_they_failed_first() {
    let server = NatsServer::start().await;
    let worker = Worker::new("forgetful");
    worker.failures_left.store(1, Ordering::SeqCst);
    let _runtime = serve(&server, worker.clone(), fast_retries()).await;
    let client = bus(&server).await;
    let queue = Queue::agent("forgetful").unwrap();
    let mut events = client
        .subscribe("platform.events.task_completed", None)
        .await
        .unwrap();

    // Fails once, then succeeds: the failure was recorded, so the success is too.
    let flaky = TaskRequest::new("flaky", json!({}));
    client
        .submit_with(&queue, &flaky, ResultRetention::Discard)
        .await
        .unwrap();
    let response = client
        .wait_task(&flaky.task_id, Duration::from_secs(10))
        .await
        .unwrap();
    assert_eq!(response.status, TaskStatus::Completed);
    let record = client.task_record(&flaky.task_id).await.unwrap().unwrap();
    assert_eq!((record.state, record.attempts), (TaskState::Completed, 2));

    // Succeeds at once: it runs, is announced and leaves the queue, but no record is kept.
    let quick = TaskRequest::new("echo", json!({"x": 1}));
    client
        .submit_with(&queue, &quick, ResultRetention::Discard)
        .await
        .unwrap();
    let event: Value = loop {
        let event = tokio::time::timeout(Duration::from_secs(10), events.next())
            .await
            .expect("a task_completed event")
            .unwrap();
        let event: Value = event.json().unwrap();
        if event["task_id"] == json!(quick.task_id) {
            break event;
        }
    };
    assert_eq!(event["agent"], json!("forgetful"));
    assert_eq!(worker.runs(&quick.task_id), 1);
    assert_eq!(client.task_record(&quick.task_id).await.unwrap(), None);
    let mut stream = client.jetstream().get_stream("agent-tasks").await.unwrap();
    assert_eq!(stream.info().await.unwrap().state.messages, 0);

    // The header is the whole protocol: a plain client can ask for it too.
    let plain = TaskRequest::new("echo", json!({"x": 2}));
    let mut headers = async_nats::HeaderMap::new();
    headers.insert(RESULT_HEADER, "discard");
    headers.insert("Nats-Msg-Id", plain.task_id.as_str());
    client
        .jetstream()
        .publish_with_headers("tasks.forgetful", headers, plain.to_json().into())
        .await
        .unwrap()
        .await
        .unwrap();
    wait_for("the plain task to run", Duration::from_secs(10), || {
        worker.runs(&plain.task_id) == 1
    })
    .await;
    // Settled right after its handler returned: wait until it left the queue.
    let deadline = Instant::now() + Duration::from_secs(10);
    while stream.info().await.unwrap().state.messages > 0 {
        assert!(Instant::now() < deadline, "the plain task stayed queued");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(client.task_record(&plain.task_id).await.unwrap(), None);
}

#[tokio::test]
async fn a_recorded_submission_tells_queued_from_done_and_a_repeat_resets_nothing() {
    let server = NatsServer::start().await;
    let client = bus(&server).await;
    let queue = Queue::agent("tracked").unwrap();

    let unknown = client.task_report(&TaskId::new()).await.unwrap();
    assert_eq!(
        (unknown.state, &unknown.record),
        (TaskState::Unknown, &None)
    );
    assert!(unknown.note().unwrap().contains("cannot be told apart"));

    // Nobody works the queue yet.
    let request = TaskRequest::new("echo", json!({"x": 1}));
    let submitted = client
        .submit_recorded(&queue, &request, ResultRetention::Keep)
        .await
        .unwrap();
    let report = client.task_report(&request.task_id).await.unwrap();
    assert_eq!(report.state, TaskState::Queued);
    let record = report.record.unwrap();
    assert_eq!(record.sequence, Some(submitted.sequence));
    assert_eq!(record.subject, "tasks.tracked");

    let worker = Worker::new("tracked");
    let _runtime = serve(&server, worker.clone(), fast_retries()).await;
    client
        .wait_task(&request.task_id, Duration::from_secs(10))
        .await
        .unwrap();
    assert_eq!(
        client.task_state(&request.task_id).await.unwrap(),
        TaskState::Completed
    );

    // Submitted again within the dedup window: stored once, and the
    // outcome stays on record.
    let again = client
        .submit_recorded(&queue, &request, ResultRetention::Keep)
        .await
        .unwrap();
    assert!(again.duplicate);
    assert_eq!(
        client.task_state(&request.task_id).await.unwrap(),
        TaskState::Completed
    );
    assert_eq!(worker.runs(&request.task_id), 1);

    // Fire and forget: it runs and leaves its queue; no outcome is recorded.
    let quick = TaskRequest::new("echo", json!({"x": 2}));
    client
        .submit_recorded(&queue, &quick, ResultRetention::Discard)
        .await
        .unwrap();
    wait_for("the task to run", Duration::from_secs(10), || {
        worker.runs(&quick.task_id) == 1
    })
    .await;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let state = client.task_state(&quick.task_id).await.unwrap();
        if state == TaskState::FinishedWithoutRecord {
            break;
        }
        // Settled right after its handler returned.
        assert_eq!(state, TaskState::Running);
        assert!(Instant::now() < deadline, "the task stayed in its queue");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A report reads the record, then the queue; the worker stores the outcome,
/// then acknowledges. A report that reads the record just before the
/// outcome lands and the queue just after the ack must still say completed.
#[tokio::test]
async fn a_report_racing_the_settling_worker_never_loses_the_recorded_outcome() {
    let server = NatsServer::start().await;
    let client = bus(&server).await;
    let queue = Queue::agent("raced").unwrap();
    let _runtime = serve(&server, Worker::new("raced"), fast_retries()).await;

    let mut pollers = Vec::new();
    for n in 0..60 {
        let request = TaskRequest::new("slow", json!({"ms": 5 + n % 7}));
        client
            .submit_recorded(&queue, &request, ResultRetention::Keep)
            .await
            .unwrap();
        let client = client.clone();
        pollers.push(tokio::spawn(async move {
            let deadline = Instant::now() + Duration::from_secs(20);
            loop {
                let state = client.task_state(&request.task_id).await.unwrap();
                if state.is_final() {
                    return state;
                }
                assert!(Instant::now() < deadline, "task {n} stayed {state:?}");
            }
        }));
    }
    let mut finals = HashMap::new();
    for poller in pollers {
        *finals.entry(poller.await.unwrap()).or_insert(0) += 1;
    }
    assert_eq!(finals, HashMap::from([(TaskState::Completed, 60)]));
}

#[tokio::test]
async fn the_same_task_id_submitted_twice_runs_once() {
    let server = NatsServer::start().await;
    let worker = Worker::new("dedup");
    let client = bus(&server).await;
    let queue = Queue::agent("dedup").unwrap();
    let request = TaskRequest::new("echo", json!({}));
    let first = client.submit(&queue, &request).await.unwrap();
    let second = client.submit(&queue, &request).await.unwrap();
    assert!(!first.duplicate);
    assert!(second.duplicate);
    assert_eq!(first.sequence, second.sequence);
    let _runtime = serve(&server, worker.clone(), fast_retries()).await;
    client
        .wait_task(&request.task_id, Duration::from_secs(10))
        .await
        .unwrap();
    // Give a would-be second copy every chance to run, then count.
    let marker = TaskRequest::new("echo", json!({"marker": true}));
    client.submit(&queue, &marker).await.unwrap();
    client
        .wait_task(&marker.task_id, Duration::from_secs(10))
        .await
        .unwrap();
    assert_eq!(worker.runs(&request.task_id), 1);
}

#[tokio::test]
async fn shared_work_queue_spreads_tasks_and_runs_each_once() {
    let server = NatsServer::start().await;
    let replicas: Vec<Worker> = (0..3)
        .map(|i| Worker::new(&format!("summarizer-{i}")))
        .collect();
    let mut runtimes = Vec::new();
    for replica in &replicas {
        runtimes.push(serve(&server, replica.clone(), fast_retries()).await);
    }
    let client = bus(&server).await;
    let queue = Queue::task_type("summarize").unwrap();
    let mut ids = Vec::new();
    for i in 0..60 {
        let request = TaskRequest::new("summarize", json!({"i": i}));
        client.submit(&queue, &request).await.unwrap();
        ids.push(request.task_id);
    }
    for id in &ids {
        assert_eq!(
            client
                .wait_task(id, Duration::from_secs(20))
                .await
                .unwrap()
                .status,
            TaskStatus::Completed
        );
    }
    let total: usize = replicas.iter().map(Worker::total).sum();
    assert_eq!(total, 60, "every task ran exactly once");
    for id in &ids {
        assert_eq!(
            replicas.iter().map(|r| r.runs(id)).sum::<usize>(),
            1,
            "{id}"
        );
    }
}

/// A worker with a backlog fetches beyond its free slots; when it stops,
/// what it fetched ahead goes back to the queue at once (not after the ack
/// wait), and every task still runs exactly once. Whether anything is held
/// at the moment of the stop depends on timing: with tasks of uneven
/// lengths it usually is, and a worker that kept it would leave the second
/// one waiting for the 30 s ack wait.
#[tokio::test]
async fn tasks_fetched_ahead_are_given_back_when_the_worker_stops() {
    let server = NatsServer::start().await;
    let options = AgentOptions {
        max_concurrency: 4,
        ..fast_retries()
    };
    assert!(options.delivery.ack_wait >= Duration::from_secs(30));
    let client = bus(&server).await;
    let queue = Queue::agent("ahead").unwrap();
    let mut ids = Vec::new();
    // Uneven lengths: slots free one by one, and a fetch brings more than
    // the room there is.
    for i in 0..60 {
        let request = TaskRequest::new("slow", json!({"ms": 5 + (i % 4) * 25}));
        client.submit(&queue, &request).await.unwrap();
        ids.push(request.task_id);
    }
    let first = Worker::new("ahead");
    let runtime = serve(&server, first.clone(), options.clone()).await;
    wait_for(
        "a third of the backlog done",
        Duration::from_secs(10),
        || first.total() >= 20,
    )
    .await;
    runtime.shutdown(Duration::from_secs(5)).await;
    let ran_first = first.total();
    assert!(ran_first < 60, "the backlog outlasted the first worker");

    let second = Worker::new("ahead");
    let _runtime = serve(&server, second.clone(), options).await;
    for id in &ids {
        let response = client
            .wait_task(id, Duration::from_secs(10))
            .await
            .unwrap_or_else(|err| panic!("{id}: {err} (not given back?)"));
        assert_eq!(response.status, TaskStatus::Completed);
    }
    for id in &ids {
        assert_eq!(first.runs(id) + second.runs(id), 1, "{id} ran once");
    }
}

#[tokio::test]
async fn a_task_running_longer_than_ack_wait_is_not_run_twice() {
    let server = NatsServer::start().await;
    let options = with_delivery(fast_retries(), |d| d.ack_wait = Duration::from_millis(600));
    let a = Worker::new("long");
    let b = Worker::new("long");
    let _ra = serve(&server, a.clone(), options.clone()).await;
    let _rb = serve(&server, b.clone(), options).await;
    let client = bus(&server).await;
    let request = TaskRequest::new("slow", json!({"ms": 2500}));
    client
        .submit(&Queue::agent("long").unwrap(), &request)
        .await
        .unwrap();
    let response = client
        .wait_task(&request.task_id, Duration::from_secs(15))
        .await
        .unwrap();
    assert_eq!(response.status, TaskStatus::Completed);
    assert_eq!(a.runs(&request.task_id) + b.runs(&request.task_id), 1);
    let record = client.task_record(&request.task_id).await.unwrap().unwrap();
    assert_eq!(record.attempts, 1);
}

#[tokio::test]
async fn a_poison_task_becomes_a_dead_letter_with_its_history_and_replays_once() {
    let server = NatsServer::start().await;
    let options = with_delivery(fast_retries(), |d| d.max_deliver = 3);
    let worker = Worker::new("digester");
    let runtime = serve(&server, worker.clone(), options).await;
    let client = bus(&server).await;
    let request = TaskRequest::new("poison", json!({"food": "glass"}));
    client
        .submit(&Queue::agent("digester").unwrap(), &request)
        .await
        .unwrap();
    let response = client
        .wait_task(&request.task_id, Duration::from_secs(15))
        .await
        .unwrap();
    assert_eq!(response.status, TaskStatus::Failed);
    assert_eq!(worker.runs(&request.task_id), 3);

    let letters = client.dead_letters().await.unwrap();
    assert_eq!(letters.len(), 1);
    let letter = &letters[0].letter;
    assert_eq!(letter.task_id.as_deref(), Some(request.task_id.as_str()));
    assert_eq!(letter.subject, "tasks.digester");
    assert_eq!(letter.attempts, 3);
    assert_eq!(letter.body["payload"], json!({"food": "glass"}));
    let attempts: Vec<u32> = letter.errors.iter().map(|e| e.attempt).collect();
    assert_eq!(attempts, [1, 2, 3]);
    assert!(
        letter
            .errors
            .iter()
            .all(|e| e.error == "cannot digest \"glass\"")
    );
    let record = client.task_record(&request.task_id).await.unwrap().unwrap();
    assert_eq!(record.state, TaskState::DeadLettered);
    let mut tasks = client.jetstream().get_stream("agent-tasks").await.unwrap();
    assert_eq!(
        tasks.info().await.unwrap().state.messages,
        0,
        "the poison left the work queue"
    );

    // Replay with a cured worker: it runs once more and completes.
    runtime.shutdown(Duration::from_secs(1)).await;
    let cured = Worker::new("digester");
    assert_eq!(
        client.replay_dead_letter(&request.task_id).await.unwrap(),
        1
    );
    assert_eq!(
        client.replay_dead_letter(&request.task_id).await.unwrap(),
        0,
        "replay is idempotent"
    );
    assert!(client.dead_letters().await.unwrap().is_empty());
    // Back in its queue, not delivered: the record says so.
    assert_eq!(
        client.task_state(&request.task_id).await.unwrap(),
        TaskState::Queued
    );
    #[derive(Clone)]
    struct Cured(Worker);
    impl Agent for Cured {
        fn name(&self) -> &str {
            "digester"
        }
        fn task_types(&self) -> Vec<TaskTypeSpec> {
            vec![TaskTypeSpec::new("poison").unwrap()]
        }
        async fn handle(&self, task: TaskRequest, _ctx: TaskContext) -> Result<Value, TaskError> {
            *self
                .0
                .runs
                .lock()
                .unwrap()
                .entry(task.task_id.to_string())
                .or_default() += 1;
            Ok(json!({"digested": true}))
        }
    }
    let _runtime = serve_any(&server, Cured(cured.clone())).await;
    let response = client
        .wait_task(&request.task_id, Duration::from_secs(10))
        .await
        .unwrap();
    assert_eq!(response.status, TaskStatus::Completed);
    assert_eq!(cured.runs(&request.task_id), 1);
}

async fn serve_any<A: Agent>(server: &NatsServer, agent: A) -> Runtime {
    let mut runtime = Runtime::new(bus(server).await);
    runtime.add(agent, fast_retries()).await.unwrap();
    runtime
}

#[tokio::test]
async fn a_flaky_task_is_retried_and_its_errors_are_recorded() {
    let server = NatsServer::start().await;
    let worker = Worker::new("flaky");
    worker.failures_left.store(2, Ordering::SeqCst);
    let _runtime = serve(&server, worker.clone(), fast_retries()).await;
    let client = bus(&server).await;
    let request = TaskRequest::new("flaky", json!({}));
    client
        .submit(&Queue::agent("flaky").unwrap(), &request)
        .await
        .unwrap();
    let response = client
        .wait_task(&request.task_id, Duration::from_secs(10))
        .await
        .unwrap();
    assert_eq!(response.status, TaskStatus::Completed);
    let record = client.task_record(&request.task_id).await.unwrap().unwrap();
    assert_eq!(record.attempts, 3);
    assert_eq!(
        record.errors.iter().map(|e| e.attempt).collect::<Vec<_>>(),
        [1, 2]
    );
}

#[tokio::test]
async fn bad_input_in_a_queue_is_dead_lettered_at_once() {
    let server = NatsServer::start().await;
    let worker = Worker::new("strict");
    let _runtime = serve(&server, worker.clone(), fast_retries()).await;
    let client = bus(&server).await;
    let unknown = TaskRequest::new("juggle", json!({}));
    client
        .submit(&Queue::agent("strict").unwrap(), &unknown)
        .await
        .unwrap();
    let response = client
        .wait_task(&unknown.task_id, Duration::from_secs(10))
        .await
        .unwrap();
    assert_eq!(response.status, TaskStatus::Rejected);
    assert!(
        response
            .error
            .unwrap()
            .contains("does not accept task_type \"juggle\"")
    );
    // Malformed JSON published by a plain client.
    client
        .jetstream()
        .publish("tasks.strict", "{oops".into())
        .await
        .unwrap()
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while client.dead_letters().await.unwrap().len() < 2 {
        assert!(
            Instant::now() < deadline,
            "the malformed task was not dead-lettered"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let letters = client.dead_letters().await.unwrap();
    let malformed = letters.iter().find(|l| l.letter.task_id.is_none()).unwrap();
    assert_eq!(malformed.letter.body, json!("{oops"));
    assert!(
        malformed.letter.reason.contains("not valid JSON"),
        "{}",
        malformed.letter.reason
    );
    assert_eq!(worker.total(), 0, "nothing invalid reached the handler");
}

#[tokio::test]
async fn priority_order_holds_under_a_backlog_and_low_still_progresses() {
    let server = NatsServer::start().await;
    let client = bus(&server).await;
    let queue = Queue::agent("ranked").unwrap();
    let mut priority_of = HashMap::new();
    for i in 0..10 {
        for priority in [
            Priority::Low,
            Priority::Normal,
            Priority::High,
            Priority::Critical,
        ] {
            let request = TaskRequest::new("echo", json!({"i": i})).with_priority(priority);
            priority_of.insert(request.task_id.to_string(), priority);
            client.submit(&queue, &request).await.unwrap();
        }
    }
    // A plain client publishing to tasks.<agent> (no priority information) is normal priority.
    let mut plain = TaskRequest::new("echo", json!({}));
    plain.task_id = TaskId::parse("plain-client").unwrap();
    client
        .jetstream()
        .publish(
            "tasks.ranked",
            serde_json::to_vec(
                &json!({"task_id": "plain-client", "task_type": "echo", "payload": {}}),
            )
            .unwrap()
            .into(),
        )
        .await
        .unwrap()
        .await
        .unwrap();
    priority_of.insert(plain.task_id.to_string(), Priority::Normal);

    let worker = Worker::new("ranked");
    let options = AgentOptions {
        max_concurrency: 1,
        ..fast_retries()
    };
    let _runtime = serve(&server, worker.clone(), options).await;
    wait_for("41 tasks", Duration::from_secs(20), || worker.total() == 41).await;
    let order: Vec<Priority> = worker
        .order
        .lock()
        .unwrap()
        .iter()
        .map(|id| priority_of[id])
        .collect();
    assert!(
        order[..7].iter().all(|p| *p == Priority::Critical),
        "{order:?}"
    );
    let mean = |p: Priority| {
        let positions: Vec<usize> = order
            .iter()
            .enumerate()
            .filter(|(_, q)| **q == p)
            .map(|(i, _)| i)
            .collect();
        positions.iter().sum::<usize>() as f64 / positions.len() as f64
    };
    assert!(mean(Priority::Critical) < mean(Priority::High));
    assert!(mean(Priority::High) < mean(Priority::Normal));
    assert!(mean(Priority::Normal) < mean(Priority::Low));
    let last_critical = order
        .iter()
        .rposition(|p| *p == Priority::Critical)
        .unwrap();
    let first_low = order.iter().position(|p| *p == Priority::Low).unwrap();
    assert!(
        first_low < last_critical,
        "low progresses during the critical backlog: {order:?}"
    );
    assert_eq!(worker.runs("plain-client"), 1);
}

#[tokio::test]
async fn every_broadcast_reaches_each_of_three_agents_once_even_offline() {
    let server = NatsServer::start().await;
    let agents: Vec<Worker> = ["alpha", "beta", "gamma"]
        .into_iter()
        .map(Worker::new)
        .collect();
    let options = AgentOptions {
        messages: true,
        broadcast_topics: vec!["news".into()],
        ..fast_retries()
    };
    let mut runtimes = Vec::new();
    for agent in &agents {
        runtimes.push(serve(&server, agent.clone(), options.clone()).await);
    }
    let client = bus(&server).await;
    for i in 0..5 {
        client.broadcast("news", &json!({"i": i})).await.unwrap();
    }
    client
        .broadcast("sports", &json!({"ignored": true}))
        .await
        .unwrap();
    client
        .announce("maintenance", &json!({"at": "noon"}))
        .await
        .unwrap();
    // gamma goes offline; two more broadcasts wait for it.
    let gamma = runtimes.pop().unwrap();
    gamma.shutdown(Duration::from_secs(1)).await;
    for i in 5..7 {
        client.broadcast("news", &json!({"i": i})).await.unwrap();
    }
    runtimes.push(serve(&server, agents[2].clone(), options.clone()).await);
    for agent in &agents {
        wait_for(&agent.name, Duration::from_secs(10), || {
            agent.messages.lock().unwrap().len() == 8
        })
        .await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    for agent in &agents {
        let messages = agent.messages.lock().unwrap().clone();
        assert_eq!(messages.len(), 8, "{}: each message once", agent.name);
        let news: Vec<u64> = messages
            .iter()
            .filter(|m| m.channel == MessageChannel::Broadcast("news".into()))
            .map(|m| m.body["i"].as_u64().unwrap())
            .collect();
        assert_eq!(news, (0..7).collect::<Vec<_>>(), "{}", agent.name);
        assert!(
            messages
                .iter()
                .any(|m| m.channel == MessageChannel::Announce("maintenance".into()))
        );
        assert!(!messages.iter().any(|m| m.subject == "broadcast.sports"));
    }
}

#[tokio::test]
async fn a_full_queue_rejects_the_publish() {
    let text = agentbus_ops::topology::STANDARD_TOPOLOGY_TOML.replace(
        "max_msgs = 50000\nmax_bytes = \"200MiB\"\nmax_age = \"14d\"",
        "max_msgs = 3\nmax_bytes = \"200MiB\"\nmax_age = \"14d\"",
    );
    let topology = Topology::parse(&text, std::path::Path::new("small.toml")).unwrap();
    assert_eq!(topology.stream("agent-tasks").unwrap().max_msgs, 3);
    let server = NatsServer::start_with_topology(&topology).await;
    let client = bus(&server).await;
    let queue = Queue::agent("nobody_home").unwrap();
    let mut ids = Vec::new();
    for _ in 0..3 {
        let request = TaskRequest::new("echo", json!({}));
        client.submit(&queue, &request).await.unwrap();
        ids.push(request.task_id);
    }
    let err = client
        .submit(&queue, &TaskRequest::new("echo", json!({})))
        .await
        .unwrap_err();
    assert!(
        matches!(&err, StoreError::StreamFull { stream, .. } if stream == "agent-tasks"),
        "{err}"
    );
    assert!(err.to_string().contains("is full"), "{err}");
    let mut stream = client.jetstream().get_stream("agent-tasks").await.unwrap();
    assert_eq!(
        stream.info().await.unwrap().state.messages,
        3,
        "nothing older was dropped"
    );
}

#[tokio::test]
async fn a_foreign_consumer_can_share_the_stream_with_the_runtime() {
    let server = NatsServer::start().await;
    let worker = Worker::new("ours");
    let _runtime = serve(&server, worker.clone(), fast_retries()).await;
    let js = server.jetstream().await;
    let stream = js.get_stream("agent-tasks").await.unwrap();
    let consumer = stream
        .create_consumer(async_nats::jetstream::consumer::pull::Config {
            durable_name: Some("foreign".into()),
            filter_subject: "tasks.some_other_agent".into(),
            ..Default::default()
        })
        .await;
    assert!(consumer.is_ok(), "{:?}", consumer.err());
    // While the runtime works its queue, its consumer holds the subject.
    let client = bus(&server).await;
    let request = TaskRequest::new("slow", json!({"ms": 2000}));
    client
        .submit(&Queue::agent("ours").unwrap(), &request)
        .await
        .unwrap();
    wait_for("the slow task to start", Duration::from_secs(10), || {
        worker.runs(&request.task_id) == 1
    })
    .await;
    let overlapping = stream
        .create_consumer(async_nats::jetstream::consumer::pull::Config {
            durable_name: Some("greedy".into()),
            filter_subject: "tasks.ours".into(),
            ..Default::default()
        })
        .await;
    assert!(
        overlapping.is_err(),
        "the server refuses a second consumer on the runtime's subject"
    );
}

/// When run as `<test binary> --exact worker_process --ignored` with
/// AGENTBUS_TEST_WORKER_URL set, this test is a worker process of its own,
/// for the crash test below.
#[tokio::test]
#[ignore = "a worker process for killed_worker_mid_task; not a test on its own"]
async fn worker_process() {
    let Ok(url) = std::env::var("AGENTBUS_TEST_WORKER_URL") else {
        return;
    };
    let target = agentbus::ServerTarget::from_url(&url, agentbus::connect::TargetSource::Explicit);
    let bus = Bus::connect(&target, "crash-worker").await.unwrap();
    struct Stuck;
    impl Agent for Stuck {
        fn name(&self) -> &str {
            "crashy"
        }
        fn task_types(&self) -> Vec<TaskTypeSpec> {
            vec![TaskTypeSpec::new("slow").unwrap()]
        }
        async fn handle(&self, task: TaskRequest, _ctx: TaskContext) -> Result<Value, TaskError> {
            println!("started {}", task.task_id);
            tokio::time::sleep(Duration::from_secs(600)).await;
            Ok(json!({"from": "the process that gets killed"}))
        }
    }
    let mut runtime = Runtime::new(bus);
    let options = with_delivery(fast_retries(), |d| d.ack_wait = Duration::from_secs(1));
    runtime.add(Stuck, options).await.unwrap();
    println!("ready");
    tokio::time::sleep(Duration::from_secs(600)).await;
}

struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test]
async fn a_worker_killed_mid_task_is_replaced_and_the_task_runs_to_completion_once() {
    let server = NatsServer::start().await;
    let mut child = KillOnDrop(
        Command::new(std::env::current_exe().unwrap())
            .args(["--exact", "worker_process", "--ignored", "--nocapture"])
            .env("AGENTBUS_TEST_WORKER_URL", server.url_with_credentials())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let (lines_tx, lines_rx) = std::sync::mpsc::channel();
    let stdout = child.0.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = lines_tx.send(line);
        }
    });
    let next_line = |what: &str| {
        loop {
            let line = lines_rx
                .recv_timeout(Duration::from_secs(30))
                .unwrap_or_else(|_| panic!("no {what} line"));
            if line.starts_with(what) {
                return line;
            }
        }
    };
    next_line("ready");
    let client = bus(&server).await;
    let request = TaskRequest::new("slow", json!({"ms": 50}));
    client
        .submit(&Queue::agent("crashy").unwrap(), &request)
        .await
        .unwrap();
    assert_eq!(next_line("started"), format!("started {}", request.task_id));
    child.0.kill().unwrap(); // SIGKILL, mid-task
    child.0.wait().unwrap();

    let survivor = Worker::new("crashy");
    let options = with_delivery(fast_retries(), |d| d.ack_wait = Duration::from_secs(1));
    let _runtime = serve(&server, survivor.clone(), options).await;
    let response = client
        .wait_task(&request.task_id, Duration::from_secs(20))
        .await
        .unwrap();
    assert_eq!(response.status, TaskStatus::Completed);
    assert_eq!(response.result, Some(json!({"slept_ms": 50})));
    assert_eq!(survivor.runs(&request.task_id), 1);
    let record = client.task_record(&request.task_id).await.unwrap().unwrap();
    assert_eq!(
        record.attempts, 2,
        "the killed attempt counts as a delivery"
    );
}

#[tokio::test]
async fn claims_go_on_after_the_server_deleted_an_idle_queue_consumer() {
    let server = NatsServer::start().await;
    let bus = bus(&server).await;
    let agent = agentbus::Name::parse("agent name", "claimer").unwrap();
    let queue = Queue::agent("claimer").unwrap();
    let claims = TaskClaims::open(&bus, &agent, "claimer-1", DeliveryOptions::default())
        .await
        .unwrap();
    // What the server does once they are idle past their inactive threshold.
    let stream = bus
        .jetstream()
        .get_stream(agentbus::subject::TASKS_STREAM)
        .await
        .unwrap();
    for priority in Priority::ALL {
        stream
            .delete_consumer(&queue.durable(priority))
            .await
            .unwrap();
    }
    let request = TaskRequest::new("t", json!({"n": 1})).with_priority(Priority::Low);
    bus.submit(&queue, &request).await.unwrap();
    let (attempt, claimed) = claims
        .next()
        .await
        .unwrap()
        .expect("the queued task is claimed");
    assert_eq!(claimed.task_id, request.task_id);
    attempt
        .complete(&agentbus::TaskResponse::completed(
            claimed.task_id.as_str(),
            json!({}),
        ))
        .await
        .unwrap();
    assert!(claims.next().await.unwrap().is_none(), "nothing else waits");
}

/// An agent's queues of every priority share its slots: a less urgent queue
/// with nothing running, or with tasks fetched ahead, does not take slots
/// that freed while more urgent work waits.
#[tokio::test]
async fn urgent_work_takes_the_shared_slots_before_less_urgent_work() {
    let server = NatsServer::start().await;
    let client = bus(&server).await;
    let queue = Queue::agent("shared-slots").unwrap();
    let mut low = Vec::new();
    for (priority, count) in [(Priority::Low, 48), (Priority::Critical, 96)] {
        for i in 0..count {
            let request =
                TaskRequest::new("slow", json!({"ms": 25, "i": i})).with_priority(priority);
            if priority == Priority::Low {
                low.push(request.task_id.to_string());
            }
            client.submit(&queue, &request).await.unwrap();
        }
    }
    let worker = Worker::new("shared-slots");
    let options = AgentOptions {
        max_concurrency: 8,
        ..fast_retries()
    };
    let _runtime = serve(&server, worker.clone(), options).await;
    wait_for("144 tasks", Duration::from_secs(30), || {
        worker.total() == 144
    })
    .await;
    let order = worker.order.lock().unwrap().clone();
    let is_low = |id: &String| low.contains(id);
    // The first round fills all 8 slots with critical tasks, and low work
    // is visited first only in the eighth round: at least 14 critical tasks
    // start before any low one.
    assert!(
        !order[..12].iter().any(is_low),
        "a low task took a slot before the eighth round: {order:?}"
    );
    // And low work still progresses while critical work waits.
    let last_critical = order.iter().rposition(|id| !is_low(id)).unwrap();
    assert!(
        order[..last_critical].iter().any(is_low),
        "low work waited for the whole critical backlog"
    );
}

/// A kept consumer (an agent's inbox) deleted from under a running agent:
/// the worker warns and looks again at its sweeps, rather than asking for
/// it without end, and the runtime still stops.
#[tokio::test]
async fn an_inbox_consumer_deleted_under_a_running_agent_leaves_the_runtime_able_to_stop() {
    let server = NatsServer::start().await;
    let client = bus(&server).await;
    let worker = Worker::new("orphaned");
    let options = AgentOptions {
        messages: true,
        ..fast_retries()
    };
    let runtime = serve(&server, worker.clone(), options).await;
    let name = agentbus::Name::parse("agent name", "orphaned").unwrap();
    client
        .jetstream()
        .get_stream(agentbus::subject::MESSAGES_STREAM)
        .await
        .unwrap()
        .delete_consumer(&agentbus::subject::durable::inbox(&name))
        .await
        .unwrap();
    client.send("orphaned", &json!({"n": 1})).await.unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    tokio::time::timeout(
        Duration::from_secs(10),
        runtime.shutdown(Duration::from_secs(2)),
    )
    .await
    .expect("the runtime stops");
    assert!(worker.messages.lock().unwrap().is_empty());
}

/// Two attempts at one task: the first is paused past its ack wait, so
/// JetStream gives the task to a second. Whichever finishes first, the
/// record holds the second attempt's outcome, and the first one's late
/// result is discarded (`Settled::Stale`), never written over it.
#[tokio::test]
async fn a_stale_attempt_never_overwrites_the_attempt_that_took_the_task_over() {
    use agentbus::delivery::Settled;
    let server = NatsServer::start().await;
    let bus = bus(&server).await;
    let agent = agentbus::Name::parse("agent name", "fenced").unwrap();
    let queue = Queue::agent("fenced").unwrap();
    let options = DeliveryOptions {
        ack_wait: Duration::from_secs(1),
        ..DeliveryOptions::default()
    };
    let done =
        |id: &TaskId, by: &str| agentbus::TaskResponse::completed(id.as_str(), json!({ "by": by }));
    // The stale attempt ends first, then last.
    for stale_first in [true, false] {
        let request = TaskRequest::new("t", json!({ "stale_first": stale_first }));
        bus.submit(&queue, &request).await.unwrap();
        let paused = TaskClaims::open(&bus, &agent, "paused-1", options)
            .await
            .unwrap();
        let (stale, _) = paused.next().await.unwrap().expect("the task is claimed");
        assert_eq!(stale.attempt(), 1);
        tokio::time::sleep(options.ack_wait + Duration::from_millis(500)).await;
        let fresh_claims = TaskClaims::open(&bus, &agent, "fresh-2", options)
            .await
            .unwrap();
        let (fresh, _) = fresh_claims
            .next()
            .await
            .unwrap()
            .expect("the task is delivered again");
        assert_eq!(fresh.attempt(), 2);
        if stale_first {
            let late = stale.complete(&done(&request.task_id, "paused-1")).await;
            assert_eq!(late.unwrap(), Settled::Stale);
            let settled = fresh.complete(&done(&request.task_id, "fresh-2")).await;
            assert_eq!(settled.unwrap(), Settled::Done);
        } else {
            let settled = fresh.complete(&done(&request.task_id, "fresh-2")).await;
            assert_eq!(settled.unwrap(), Settled::Done);
            let late = stale.complete(&done(&request.task_id, "paused-1")).await;
            assert_eq!(late.unwrap(), Settled::Stale);
        }
        let record = bus.task_record(&request.task_id).await.unwrap().unwrap();
        assert_eq!(record.state, TaskState::Completed);
        assert_eq!(record.attempts, 2);
        assert_eq!(record.instance_id.as_deref(), Some("fresh-2"));
        let result = record.response.and_then(|r| r.result);
        assert_eq!(
            result,
            Some(json!({ "by": "fresh-2" })),
            "stale first: {stale_first}"
        );
    }
}

/// A server that loses its deliveries (a crash before it stored an
/// acknowledgement) hands a finished task out again as a first delivery:
/// the record tells, and the task is acknowledged without running again.
#[tokio::test]
async fn a_finished_task_delivered_again_as_new_is_not_run_again() {
    let server = NatsServer::start().await;
    let client = bus(&server).await;
    let worker = Worker::new("rerun");
    let runtime = serve(&server, worker.clone(), AgentOptions::default()).await;
    let queue = Queue::agent("rerun").unwrap();
    let request = TaskRequest::new("echo", json!({ "n": 1 }));
    client.submit(&queue, &request).await.unwrap();
    let response = client
        .wait_task(&request.task_id, Duration::from_secs(20))
        .await
        .unwrap();
    assert_eq!(response.status, TaskStatus::Completed);
    // The same task stored again under another message id: delivery 1.
    client
        .publish_durable(
            queue.subject(Priority::Normal).as_str(),
            &request,
            Some("lost-ack-rerun"),
            None,
        )
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while tasks_stored(&client).await > 0 {
        assert!(Instant::now() < deadline, "the rerun is never taken");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(worker.runs(request.task_id.as_str()), 1, "ran once");
    let record = client.task_record(&request.task_id).await.unwrap().unwrap();
    assert_eq!(record.attempts, 1);
    runtime.shutdown(Duration::from_secs(5)).await;
}

/// Charges once, however often its task runs: the first run fails after
/// the charge, the retry finds the charge's receipt stored.
#[derive(Clone, Default)]
struct Charging {
    runs: Arc<AtomicUsize>,
    charges: Arc<AtomicUsize>,
}

impl Agent for Charging {
    fn name(&self) -> &str {
        "charging"
    }

    fn task_types(&self) -> Vec<TaskTypeSpec> {
        vec![TaskTypeSpec::new("charge").unwrap()]
    }

    async fn handle(&self, _task: TaskRequest, ctx: TaskContext) -> Result<Value, TaskError> {
        let run = self.runs.fetch_add(1, Ordering::SeqCst) + 1;
        let charges = self.charges.clone();
        let receipt: u64 = ctx
            .once("charge", || async move {
                let n = charges.fetch_add(1, Ordering::SeqCst) + 1;
                Ok(1000 + n as u64)
            })
            .await?;
        if run == 1 {
            return Err(TaskError::failed("lost the connection after charging"));
        }
        Ok(json!({ "receipt": receipt, "key": ctx.idempotency_key("charge") }))
    }
}

#[tokio::test]
async fn an_effect_made_through_once_happens_once_across_retries() {
    let server = NatsServer::start().await;
    let client = bus(&server).await;
    let agent = Charging::default();
    let mut runtime = Runtime::new(bus(&server).await);
    let options = with_delivery(AgentOptions::default(), |d| {
        d.retry_backoff = Duration::from_millis(50);
    });
    runtime.add(agent.clone(), options).await.unwrap();
    let request = TaskRequest::new("charge", json!({}));
    client
        .submit(&Queue::agent("charging").unwrap(), &request)
        .await
        .unwrap();
    let response = client
        .wait_task(&request.task_id, Duration::from_secs(20))
        .await
        .unwrap();
    assert_eq!(response.status, TaskStatus::Completed, "{response:?}");
    assert_eq!(agent.runs.load(Ordering::SeqCst), 2, "the task ran twice");
    assert_eq!(
        agent.charges.load(Ordering::SeqCst),
        1,
        "the charge was made once"
    );
    let result = response.result.unwrap();
    assert_eq!(result["receipt"], 1001, "the first charge's receipt");
    assert_eq!(result["key"], format!("{}=charge", request.task_id));
    runtime.shutdown(Duration::from_secs(5)).await;
}

/// A full dead-letter stream does not strand work: the letters it refuses
/// are parked, every task leaves its queue with a record that says it was
/// dead-lettered, and the parked letters move once there is room.
#[tokio::test]
async fn dead_letters_refused_by_a_full_stream_are_parked_then_moved() {
    let mut topology = Topology::standard();
    let dlq = topology
        .streams
        .iter_mut()
        .find(|stream| stream.name == "agent-dlq")
        .unwrap();
    dlq.max_msgs = 2;
    let server = NatsServer::start_with_topology(&topology).await;
    let client = bus(&server).await;
    let options = with_delivery(fast_retries(), |d| d.max_deliver = 2);
    let runtime = serve(&server, Worker::new("choking"), options).await;
    let queue = Queue::agent("choking").unwrap();
    let mut ids = Vec::new();
    for n in 0..5 {
        let request = TaskRequest::new("poison", json!({ "food": n }));
        client.submit(&queue, &request).await.unwrap();
        ids.push(request.task_id);
    }
    for id in &ids {
        let response = client.wait_task(id, Duration::from_secs(30)).await.unwrap();
        assert_eq!(response.status, TaskStatus::Failed, "{response:?}");
        let record = client.task_record(id).await.unwrap().unwrap();
        assert_eq!(record.state, TaskState::DeadLettered);
    }
    runtime.shutdown(Duration::from_secs(5)).await;
    assert_eq!(tasks_stored(&client).await, 0, "nothing stranded");
    assert_eq!(client.dead_letters().await.unwrap().len(), 2);
    let parked = client.parked_dead_letters().await.unwrap();
    assert_eq!(parked.len(), 3, "{parked:?}");
    for (_, letter) in &parked {
        let record = client
            .task_record(&TaskId::parse(letter.task_id.as_deref().unwrap()).unwrap())
            .await
            .unwrap()
            .unwrap();
        let error = record.response.and_then(|r| r.error).unwrap();
        assert!(error.contains("agent-dlq-parked"), "{error}");
    }
    // No room: nothing moves. Two replayed: two move.
    assert_eq!(client.move_parked_dead_letters().await.unwrap(), 0);
    assert_eq!(client.replay_all_dead_letters().await.unwrap(), 2);
    assert_eq!(client.move_parked_dead_letters().await.unwrap(), 2);
    assert_eq!(client.parked_dead_letters().await.unwrap().len(), 1);
    assert_eq!(client.dead_letters().await.unwrap().len(), 2);
}

/// A letter the bus did not write (published to the dead-letter stream by
/// hand) is listed as not replayable and never replayed: it cannot put a
/// task on another queue, name a subject that is not a queue, or make a
/// replay clear another task's log.
#[tokio::test]
async fn forged_dead_letters_are_not_replayed() {
    use agentbus::delivery::DeadLetter;
    let server = NatsServer::start().await;
    let client = bus(&server).await;
    let victim = TaskRequest::new("echo", json!({}));
    let letter = |subject: &str, task_id: &str, body: &TaskRequest| DeadLetter {
        subject: subject.to_owned(),
        task_id: Some(task_id.to_owned()),
        body: serde_json::to_value(body).unwrap(),
        attempts: 1,
        errors: Vec::new(),
        reason: "forged".to_owned(),
        dead_lettered_at: "2026-11-30T00:00:00Z".to_owned(),
        original_sequence: 1,
        traceparent: None,
        tracestate: None,
        from: None,
    };
    let own = TaskRequest::new("echo", json!({ "own": true }));
    let forged = [
        // Stored under one queue, naming another.
        (
            "dlq.tasks.mallory",
            letter("tasks.bob", own.task_id.as_str(), &own),
        ),
        // Not a queue at all.
        (
            "dlq.$JS.API.STREAM.PURGE.agent-tasks",
            letter(
                "$JS.API.STREAM.PURGE.agent-tasks",
                own.task_id.as_str(),
                &own,
            ),
        ),
        // Naming the victim's task, holding another one.
        (
            "dlq.tasks.mallory",
            letter("tasks.mallory", victim.task_id.as_str(), &own),
        ),
    ];
    for (n, (stored_on, letter)) in forged.iter().enumerate() {
        client
            .publish_durable(stored_on, letter, Some(&format!("forged-{n}")), None)
            .await
            .unwrap();
    }
    let letters = client.dead_letters().await.unwrap();
    assert_eq!(letters.len(), 3);
    for entry in &letters {
        assert!(entry.refused.is_some(), "{entry:?}");
    }
    assert_eq!(client.replay_all_dead_letters().await.unwrap(), 0);
    let err = client
        .replay_dead_letter(victim.task_id.as_str())
        .await
        .unwrap_err();
    assert_eq!(
        err.kind(),
        agentbus::delivery::DeadLetterErrorKind::Refused,
        "{err}"
    );
    assert_eq!(
        client.dead_letters().await.unwrap().len(),
        3,
        "all still there"
    );
    assert_eq!(tasks_stored(&client).await, 0, "nothing queued");
}

/// An error that points at `agentbus setup`, given within 3 s of `started`.
fn told_at_once(err: &dyn std::fmt::Display, started: Instant) {
    assert!(err.to_string().contains("agentbus setup"), "{err}");
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
}

/// A bus never set up has no task results bucket: asking for a task says
/// so at once, rather than trying through the store deadline as it does
/// while a cluster elects a leader.
#[tokio::test]
async fn a_missing_results_bucket_is_told_at_once() {
    let server = NatsServer::start_bare().await;
    let client = bus(&server).await;
    let started = Instant::now();
    let err = client
        .wait_task(&TaskId::new(), Duration::from_secs(30))
        .await
        .unwrap_err();
    assert_eq!(
        err.kind(),
        agentbus::delivery::RecordErrorKind::NoBucket,
        "{err}"
    );
    told_at_once(&err, started);
}

/// A bus never set up has no stream for a queue: a submission says so at
/// once (the server tells that no stream stores the subject), rather than
/// trying through the store deadline as it does while a stream has no leader.
#[tokio::test]
async fn a_submission_no_stream_stores_is_told_at_once() {
    let server = NatsServer::start_bare().await;
    let client = bus(&server).await;
    let started = Instant::now();
    let err = client
        .submit(
            &Queue::agent("nowhere").unwrap(),
            &TaskRequest::new("t", json!({})),
        )
        .await
        .unwrap_err();
    assert_eq!(
        err.kind(),
        agentbus::delivery::StoreErrorKind::NoStream,
        "{err}"
    );
    told_at_once(&err, started);
}

/// An agent's tasks and its stored messages come under one name: the
/// runtime's one subscription, `agent.<name>.>`, also sees what is sent to
/// its inbox and direct channel, and anything else published under the name.
/// Only task subjects are served: nothing else is answered (an inbox
/// message's reply subject waits for the stream's ack) or counted as a
/// rejected task, and the messages still reach the agent once each.
#[tokio::test]
async fn only_task_subjects_under_an_agents_name_are_served() {
    let server = NatsServer::start().await;
    let client = bus(&server).await;
    let worker = Worker::new("named");
    let options = AgentOptions {
        messages: true,
        ..fast_retries()
    };
    let runtime = serve(&server, worker.clone(), options).await;
    for subject in ["agent.named.status", "agent.named.task.alice.extra"] {
        let answer = tokio::time::timeout(
            Duration::from_millis(500),
            client
                .client()
                .request(subject, r#"{"task_id":"x"}"#.into()),
        )
        .await;
        assert!(answer.is_err(), "{subject} was answered: {answer:?}");
    }
    for n in 0..5 {
        client.send("named", &json!({ "n": n })).await.unwrap();
        client
            .send_direct("named", &json!({ "n": n }))
            .await
            .unwrap();
    }
    wait_for("the ten messages", Duration::from_secs(10), || {
        worker.messages.lock().unwrap().len() >= 10
    })
    .await;
    let answer = client
        .publish_task("named", "echo", json!({ "still": true }), Priority::Normal)
        .await
        .unwrap();
    assert_eq!(answer.status, TaskStatus::Completed);
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(worker.messages.lock().unwrap().len(), 10);
    let stats = runtime.stats("named").unwrap();
    assert_eq!((stats.rejected, stats.completed), (0, 1), "{stats:?}");
    runtime.shutdown(Duration::from_secs(2)).await;
}
