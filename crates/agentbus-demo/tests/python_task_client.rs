//! A Python client written from docs/PROTOCOL.md alone
//! (tests/python/py_task_client.py: nats-py, no agentbus code) follows,
//! cancels and answers tasks that a Rust agent runs, over a real server: it
//! sends streamed tasks with deadlines, resumes a task's log from any
//! sequence, reports events the limits removed, cancels running and queued
//! tasks, and answers a handler's question.

mod common;

use agentbus::delivery::{Queue, ResultRetention, TaskState};
use agentbus::task_log::{LogError, Watched};
use agentbus::{
    Agent, AgentOptions, Bus, RequestOptions, TaskContext, TaskError, TaskId, TaskRequest,
    TaskResponse, TaskStatus, TaskTypeSpec,
};
use agentbus_ops::topology::Topology;
use agentbus_testkit::NatsServer;
use common::{WAIT, python, python_command, serve};
use futures::StreamExt;
use serde_json::{Value, json};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader, Lines};
use tokio::process::{Child, ChildStderr, ChildStdout};
use tokio::sync::{Notify, Semaphore};
use tokio::task::JoinHandle;

const AGENT: &str = "steps";

/// A Rust agent whose behaviour is picked by task type; counts its runs.
#[derive(Clone)]
struct Steps {
    /// `chunks` waits here for a permit at its `gate_after`th chunk.
    gate: Arc<Semaphore>,
    /// Told when `wait` starts.
    started: Arc<Notify>,
    /// Why `wait` was stopped, as it saw it.
    stopped: Arc<Mutex<Option<String>>>,
    runs: Arc<AtomicUsize>,
}

impl Steps {
    fn new() -> Self {
        Self {
            gate: Arc::new(Semaphore::new(0)),
            started: Arc::new(Notify::new()),
            stopped: Arc::default(),
            runs: Arc::default(),
        }
    }
}

impl Agent for Steps {
    fn name(&self) -> &str {
        AGENT
    }

    fn task_types(&self) -> Vec<TaskTypeSpec> {
        ["chunks", "wait", "ask", "quick"]
            .into_iter()
            .map(|t| TaskTypeSpec::new(t).unwrap())
            .collect()
    }

    async fn handle(&self, task: TaskRequest, ctx: TaskContext) -> Result<Value, TaskError> {
        self.runs.fetch_add(1, Ordering::SeqCst);
        let logged = |err: LogError| TaskError::failed(err.to_string());
        match task.task_type.as_str() {
            // `count` partials; at `gate_after`, waits for a permit, then
            // reports progress.
            "chunks" => {
                let count = task.payload["count"].as_u64().unwrap_or(0);
                let gate_after = task.payload["gate_after"].as_u64();
                for i in 0..count {
                    if gate_after == Some(i) {
                        self.gate
                            .acquire()
                            .await
                            .expect("the gate is never closed")
                            .forget();
                        ctx.progress(Some(0.5), Some("resumed"))
                            .await
                            .map_err(logged)?;
                    }
                    ctx.partial(&json!({ "text": format!("c{i}") }))
                        .await
                        .map_err(logged)?;
                }
                Ok(json!({ "chunks": count }))
            }
            "wait" => {
                self.started.notify_one();
                let reason = ctx.cancelled().await;
                *self.stopped.lock().unwrap() = Some(format!("{reason:?}"));
                Err(TaskError::failed("stopped"))
            }
            "ask" => {
                let answer = ctx.ask(json!({ "question": "proceed?" })).await?;
                Ok(json!({ "answer": answer }))
            }
            "quick" => Ok(json!("done")),
            other => Err(TaskError::rejected(format!("no {other}"))),
        }
    }
}

fn options() -> AgentOptions {
    AgentOptions {
        presence: false,
        cancel_grace: Duration::from_millis(300),
        ..AgentOptions::default()
    }
}

/// Starts py_task_client.py with `args`; the handle yields its exit code
/// and the JSON lines it printed.
fn spawn_client(server: &NatsServer, args: &[&str]) -> JoinHandle<(i32, Vec<Value>)> {
    let mut command = python_command(python(), server, "py_task_client.py");
    command.args(args);
    let child = command.spawn().expect("py_task_client.py starts");
    let what = args.join(" ");
    tokio::spawn(async move {
        let output = tokio::time::timeout(WAIT, child.wait_with_output())
            .await
            .unwrap_or_else(|_| panic!("py_task_client.py {what} finishes"))
            .expect("py_task_client.py runs");
        let stderr = String::from_utf8_lossy(&output.stderr);
        let lines = String::from_utf8_lossy(&output.stdout)
            .lines()
            .filter(|line| !line.trim().is_empty())
            .map(|line| {
                serde_json::from_str(line).unwrap_or_else(|err| {
                    panic!("py_task_client.py {what} printed {line:?} ({err}); stderr: {stderr}")
                })
            })
            .collect();
        let code = output.status.code().unwrap_or(-1);
        assert!(
            code <= 1,
            "py_task_client.py {what} failed ({}): {stderr}",
            output.status
        );
        (code, lines)
    })
}

/// Runs py_task_client.py with `args` to its end.
async fn client(server: &NatsServer, args: &[&str]) -> (i32, Vec<Value>) {
    spawn_client(server, args).await.unwrap()
}

/// py_task_client.py watching a task's log, read line by line.
struct Watcher {
    child: Child,
    lines: Lines<BufReader<ChildStdout>>,
    stderr: ChildStderr,
}

impl Watcher {
    fn start(server: &NatsServer, task_id: &TaskId, from: u64) -> Self {
        let mut command = python_command(python(), server, "py_task_client.py");
        command.args(["watch", task_id.as_str(), "--from", &from.to_string()]);
        let mut child = command.spawn().expect("py_task_client.py starts");
        let stdout = child.stdout.take().expect("stdout is piped");
        let stderr = child.stderr.take().expect("stderr is piped");
        Self {
            child,
            lines: BufReader::new(stdout).lines(),
            stderr,
        }
    }

    /// The next line printed; `None` once the watcher ended.
    async fn next(&mut self) -> Option<Value> {
        let line = tokio::time::timeout(WAIT, self.lines.next_line())
            .await
            .expect("the watcher prints or ends")
            .expect("stdout is readable")?;
        Some(serde_json::from_str(&line).unwrap_or_else(|err| panic!("{line:?}: {err}")))
    }

    /// Every line up to the watcher's end, which must be a success.
    async fn rest(mut self) -> Vec<Value> {
        let mut lines = Vec::new();
        while let Some(line) = self.next().await {
            lines.push(line);
        }
        let status = tokio::time::timeout(WAIT, self.child.wait())
            .await
            .expect("the watcher exits")
            .unwrap();
        let mut stderr = String::new();
        let _ = self.stderr.read_to_string(&mut stderr).await;
        assert!(status.success(), "the watcher failed ({status}): {stderr}");
        lines
    }

    async fn kill(mut self) {
        self.child.kill().await.expect("the watcher is killed");
    }
}

fn seqs(events: &[Value]) -> Vec<u64> {
    events.iter().map(|e| e["seq"].as_u64().unwrap()).collect()
}

fn types(events: &[Value]) -> Vec<&str> {
    events.iter().map(|e| e["type"].as_str().unwrap()).collect()
}

/// The task's whole log as the Rust library reads it, as JSON.
async fn rust_log(bus: &Bus, task_id: &TaskId) -> Vec<Value> {
    let mut watch = bus.watch(task_id, 1).await.unwrap();
    let mut events = Vec::new();
    while let Some(item) = tokio::time::timeout(WAIT, watch.next()).await.unwrap() {
        match item.unwrap() {
            Watched::Event(event) => events.push(serde_json::to_value(event).unwrap()),
            gone => panic!("nothing is gone from this log: {gone:?}"),
        }
    }
    events
}

async fn bus(server: &NatsServer) -> Bus {
    Bus::from_client(server.connect().await)
}

#[tokio::test]
async fn a_python_watcher_killed_mid_stream_resumes_at_the_next_sequence_with_nothing_lost() {
    let server = NatsServer::start().await;
    let agent = Steps::new();
    let runtime = serve(&server, agent.clone(), options()).await;
    let task_id = TaskId::new();
    let mut first = Watcher::start(&server, &task_id, 1);
    let sender = spawn_client(
        &server,
        &[
            "send",
            AGENT,
            "chunks",
            r#"{"count": 6, "gate_after": 3}"#,
            "--task-id",
            task_id.as_str(),
            "--stream",
            "--deadline-ms",
            "20000",
        ],
    );
    // Four events, then the watcher dies while the task waits at its gate
    // (after its fifth event).
    let mut before = Vec::new();
    for _ in 0..4 {
        before.push(first.next().await.expect("the log goes on"));
    }
    first.kill().await;
    let mut second = Watcher::start(&server, &task_id, 5);
    let fifth = second.next().await.expect("the fifth event is stored");
    assert!(!sender.is_finished(), "the task still runs");
    agent.gate.add_permits(1);
    let mut after = vec![fifth];
    after.extend(second.rest().await);
    let (code, sent) = sender.await.unwrap();
    assert_eq!(code, 0, "{sent:?}");
    let (request, response) = (&sent[0]["sent"], &sent[0]["received"]);

    assert_eq!(seqs(&before), [1, 2, 3, 4]);
    assert_eq!(
        types(&before),
        ["accepted", "started", "partial", "partial"]
    );
    assert!(request["deadline"].is_string(), "{request}");
    assert_eq!(request["stream"], true);
    assert_eq!(
        before[0]["data"],
        json!({"task_type": "chunks", "deadline": request["deadline"]})
    );
    assert_eq!(before[1]["data"], json!({"agent": AGENT, "attempt": 1}));
    assert_eq!(before[1]["instance"], runtime.instance_id());
    assert_eq!(seqs(&after), [5, 6, 7, 8, 9, 10], "{after:?}");
    assert_eq!(
        types(&after),
        [
            "partial",
            "progress",
            "partial",
            "partial",
            "partial",
            "completed"
        ]
    );
    assert_eq!(
        after[1]["data"],
        json!({"progress": 0.5, "message": "resumed"})
    );
    let texts: Vec<&Value> = before
        .iter()
        .chain(&after)
        .filter(|e| e["type"] == "partial")
        .map(|e| &e["data"]["text"])
        .collect();
    assert_eq!(texts, ["c0", "c1", "c2", "c3", "c4", "c5"]);
    assert_eq!(
        *response,
        json!({"task_id": task_id.as_str(), "status": "completed", "result": {"chunks": 6}, "error": null})
    );
    assert_eq!(after.last().unwrap()["data"], *response);
    // Exactly the log the Rust library reads.
    let whole: Vec<Value> = before.into_iter().chain(after).collect();
    assert_eq!(whole, rust_log(&bus(&server).await, &task_id).await);
    runtime.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test]
async fn the_python_watcher_reports_events_the_limits_removed_as_gone() {
    let mut topology = Topology::standard();
    for stream in &mut topology.streams {
        if stream.name == "agent-task-events" {
            stream.max_msgs_per_subject = Some(5);
        }
    }
    let server = NatsServer::start_with_topology(&topology).await;
    let runtime = serve(&server, Steps::new(), options()).await;
    let task_id = TaskId::new();
    let (code, sent) = client(
        &server,
        &[
            "send",
            AGENT,
            "chunks",
            r#"{"count": 12}"#,
            "--task-id",
            task_id.as_str(),
            "--stream",
        ],
    )
    .await;
    assert_eq!(
        (code, &sent[0]["received"]["status"]),
        (0, &json!("completed"))
    );

    // accepted, started, 12 partials, completed: 15 events; the last 5 are kept.
    let lines = Watcher::start(&server, &task_id, 3).rest().await;
    assert_eq!(lines[0], json!({"type": "gone", "from": 3, "until": 11}));
    assert_eq!(seqs(&lines[1..]), [11, 12, 13, 14, 15]);
    assert_eq!(lines.last().unwrap()["type"], "completed");
    let lines = Watcher::start(&server, &task_id, 13).rest().await;
    assert_eq!(seqs(&lines), [13, 14, 15], "{lines:?}");
    assert!(
        Watcher::start(&server, &task_id, 100)
            .rest()
            .await
            .is_empty()
    );
    runtime.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test]
async fn python_cancels_a_running_rust_handler() {
    let server = NatsServer::start().await;
    let agent = Steps::new();
    let runtime = serve(&server, agent.clone(), options()).await;
    let instance = runtime.instance_id().to_owned();
    let caller = bus(&server).await;
    let request = TaskRequest::new("wait", json!({}));
    let id = request.task_id.as_str().to_owned();
    let sent = tokio::spawn({
        let request = request.clone();
        async move {
            caller
                .request(AGENT, &request, RequestOptions::default())
                .await
                .unwrap()
        }
    });
    tokio::time::timeout(WAIT, agent.started.notified())
        .await
        .expect("the handler starts");

    let (_, status) = client(&server, &["status", &id]).await;
    assert_eq!(
        status,
        [
            json!({"task_id": id, "state": "running", "record": null, "last_event": null, "held_by": instance, "key": null})
        ]
    );
    let refused = client(&server, &["answer", &id, r#""now?""#]).await;
    assert_eq!(
        refused,
        (
            1,
            vec![
                json!({"outcome": "refused", "error": format!("task {id} is not waiting for an answer")})
            ]
        )
    );
    let cancelled = client(&server, &["cancel", &id]).await;
    assert_eq!(
        cancelled,
        (
            0,
            vec![json!({"outcome": "cancelling", "agent": AGENT, "instance": instance})]
        )
    );

    let response = tokio::time::timeout(WAIT, sent).await.unwrap().unwrap();
    assert_eq!(
        response,
        TaskResponse::error(&id, TaskStatus::Cancelled, "the task was cancelled")
    );
    assert_eq!(agent.stopped.lock().unwrap().as_deref(), Some("Cancelled"));
    // It reported nothing: its log is its final state alone.
    let log = Watcher::start(&server, &request.task_id, 1).rest().await;
    assert_eq!(log.len(), 1, "{log:?}");
    assert_eq!(
        (&log[0]["seq"], &log[0]["type"], &log[0]["instance"]),
        (&json!(1), &json!("cancelled"), &json!(instance))
    );
    assert_eq!(log[0]["data"], serde_json::to_value(&response).unwrap());
    let again = client(&server, &["cancel", &id]).await;
    assert_eq!(
        again,
        (
            0,
            vec![json!({"outcome": "already_over", "state": "cancelled"})]
        )
    );
    let report = bus(&server)
        .await
        .task_report(&request.task_id)
        .await
        .unwrap();
    assert_eq!(report.state, TaskState::Cancelled);
    runtime.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test]
async fn python_answers_the_question_of_a_rust_handler() {
    let server = NatsServer::start().await;
    let runtime = serve(&server, Steps::new(), options()).await;
    let instance = runtime.instance_id().to_owned();
    let caller = bus(&server).await;
    let request = TaskRequest::new("ask", json!({}));
    let id = request.task_id.as_str().to_owned();
    let mut watch = caller.watch(&request.task_id, 1).await.unwrap();
    let sent = tokio::spawn({
        let caller = caller.clone();
        let request = request.clone();
        async move {
            caller
                .request(AGENT, &request, RequestOptions::default())
                .await
                .unwrap()
        }
    });
    loop {
        let Ok(Some(Ok(Watched::Event(event)))) = tokio::time::timeout(WAIT, watch.next()).await
        else {
            panic!("the log goes on to the question")
        };
        if event.kind.as_str() == "input_required" {
            break;
        }
    }

    let (_, status) = client(&server, &["status", &id]).await;
    assert_eq!(status[0]["state"], "input_required", "{status:?}");
    assert_eq!(status[0]["held_by"], instance);
    assert_eq!(status[0]["last_event"]["type"], "input_required");
    let answer = json!({"go": true, "by": "python"});
    let answered = client(&server, &["answer", &id, &answer.to_string()]).await;
    assert_eq!(
        answered,
        (
            0,
            vec![json!({"outcome": "answered", "agent": AGENT, "instance": instance})]
        )
    );

    let response = tokio::time::timeout(WAIT, sent).await.unwrap().unwrap();
    assert_eq!(
        response,
        TaskResponse::completed(&id, json!({ "answer": answer }))
    );
    let log = Watcher::start(&server, &request.task_id, 1).rest().await;
    assert_eq!(seqs(&log), [1, 2, 3, 4, 5]);
    assert_eq!(
        types(&log),
        [
            "accepted",
            "started",
            "input_required",
            "input_received",
            "completed"
        ]
    );
    assert_eq!(
        log[2]["data"],
        json!({"question": {"question": "proceed?"}})
    );
    assert_eq!(log[3]["data"], json!({ "answer": answer }));
    assert_eq!(log[4]["data"], serde_json::to_value(&response).unwrap());
    let late = client(&server, &["answer", &id, r#""again""#]).await;
    assert_eq!(
        late,
        (1, vec![json!({"outcome": "over", "state": "completed"})])
    );
    runtime.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test]
async fn python_takes_a_queued_task_out_of_its_queue_and_it_never_runs() {
    let server = NatsServer::start().await;
    let submitter = bus(&server).await;
    let queue = Queue::agent(AGENT).unwrap();
    // Streamed: the submitter begins its log, so the cancel event follows it.
    let cancelled = TaskRequest::new("quick", json!({})).streamed();
    let kept = TaskRequest::new("quick", json!({}));
    for request in [&cancelled, &kept] {
        submitter
            .submit_recorded(&queue, request, ResultRetention::Keep)
            .await
            .unwrap();
    }
    let id = cancelled.task_id.as_str();

    let outcome = client(&server, &["cancel", id]).await;
    assert_eq!(outcome, (0, vec![json!({"outcome": "dequeued"})]));
    let tasks = server.jetstream().await;
    let queued = tasks
        .get_stream("agent-tasks")
        .await
        .unwrap()
        .info()
        .await
        .unwrap()
        .state
        .messages;
    assert_eq!(queued, 1, "only the kept task is left in the queue");
    let report = submitter.task_report(&cancelled.task_id).await.unwrap();
    assert_eq!(report.state, TaskState::Cancelled);
    let record = report.record.unwrap();
    assert_eq!(record.state, TaskState::Cancelled);
    let response = TaskResponse::error(
        id,
        TaskStatus::Cancelled,
        "the task was cancelled before it ran",
    );
    assert_eq!(record.response, Some(response.clone()));
    let log = rust_log(&submitter, &cancelled.task_id).await;
    assert_eq!(seqs(&log), [1, 2]);
    assert_eq!(types(&log), ["accepted", "cancelled"]);
    assert_eq!(log[0]["instance"], "submitter");
    assert_eq!(log[1]["instance"], "cancel");
    assert_eq!(log[1]["data"], serde_json::to_value(&response).unwrap());
    assert_eq!(
        client(&server, &["cancel", id]).await,
        (
            0,
            vec![json!({"outcome": "already_over", "state": "cancelled"})]
        )
    );
    assert_eq!(
        client(&server, &["cancel", TaskId::new().as_str()]).await,
        (1, vec![json!({"outcome": "unknown"})])
    );

    // Workers come: the queue holds only the kept task.
    let agent = Steps::new();
    let runtime = serve(&server, agent.clone(), options()).await;
    let done = submitter
        .wait_task(&kept.task_id, Duration::from_secs(10))
        .await
        .unwrap();
    assert!(done.is_completed(), "{done:?}");
    assert_eq!(
        agent.runs.load(Ordering::SeqCst),
        1,
        "only the kept task ran"
    );
    runtime.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test]
async fn python_deadlines_stop_rust_handlers_and_keep_late_tasks_from_starting() {
    let server = NatsServer::start().await;
    let agent = Steps::new();
    let runtime = serve(&server, agent.clone(), options()).await;
    let task_id = TaskId::new();

    let started = Instant::now();
    let (_, sent) = client(
        &server,
        &[
            "send",
            AGENT,
            "wait",
            "{}",
            "--task-id",
            task_id.as_str(),
            "--deadline-ms",
            "300",
        ],
    )
    .await;
    assert!(started.elapsed() < Duration::from_secs(8));
    let timeout = json!({"task_id": task_id.as_str(), "status": "timeout", "result": null,
                         "error": "the task's deadline passed"});
    assert_eq!(sent[0]["received"], timeout);
    // Stopped: its final state is logged although it reported nothing.
    let log = Watcher::start(&server, &task_id, 1).rest().await;
    assert_eq!(types(&log), ["timeout"]);
    assert_eq!(log[0]["data"], timeout);

    let runs = agent.runs.load(Ordering::SeqCst);
    let (_, sent) = client(
        &server,
        &["send", AGENT, "quick", "{}", "--deadline-ms=-1000"],
    )
    .await;
    assert_eq!(sent[0]["received"]["status"], "timeout", "{sent:?}");
    assert_eq!(
        agent.runs.load(Ordering::SeqCst),
        runs,
        "a late task never starts"
    );

    for deadline in ["tomorrow", "2030-01-01T00:00:00+02:00"] {
        let (_, sent) = client(
            &server,
            &["send", AGENT, "quick", "{}", "--deadline", deadline],
        )
        .await;
        assert_eq!(
            sent[0]["received"]["status"], "rejected",
            "{deadline}: {sent:?}"
        );
        assert_eq!(
            sent[0]["received"]["error"],
            "the request's `deadline` field must be an RFC 3339 time such as \"2026-01-01T12:00:00Z\""
        );
    }
    runtime.shutdown(Duration::from_secs(1)).await;
}
