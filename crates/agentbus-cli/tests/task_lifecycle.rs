//! Long-running tasks through the CLI (`request --stream`, `submit --wait
//! --stream`, `submit --deadline`, `task watch|cancel|answer`, `task`)
//! against a real testkit nats-server, with the agent served in this process.

mod common;

use agentbus::delivery::DeliveryOptions;
use agentbus::{
    Agent, AgentOptions, Bus, Runtime, TaskContext, TaskError, TaskRequest, TaskTypeSpec,
};
use agentbus_testkit::NatsServer;
use serde_json::{Value, json};
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};
use tokio::io::{AsyncBufReadExt, BufReader};

const WAIT: Duration = Duration::from_secs(15);

async fn cli(server: &NatsServer, args: &[&str]) -> common::Output {
    let url = server.url_with_credentials();
    let mut all: Vec<&str> = args.to_vec();
    all.extend(["--server", url.as_str()]);
    common::run(all).await
}

/// Streams words, waits to be cancelled, or asks a question; counts runs.
#[derive(Clone, Default)]
struct Streamer {
    runs: Arc<AtomicUsize>,
}

impl Agent for Streamer {
    fn name(&self) -> &str {
        "streamer"
    }

    fn task_types(&self) -> Vec<TaskTypeSpec> {
        ["words", "forever", "ask"]
            .into_iter()
            .map(|t| TaskTypeSpec::new(t).unwrap())
            .collect()
    }

    async fn handle(&self, task: TaskRequest, ctx: TaskContext) -> Result<Value, TaskError> {
        self.runs.fetch_add(1, Ordering::SeqCst);
        match task.task_type.as_str() {
            "words" => {
                let count = task.payload["count"].as_u64().unwrap_or(4);
                let delay = task.payload["delay_ms"].as_u64().unwrap_or(0);
                let mut text = String::new();
                for i in 0..count {
                    let word = format!("w{i} ");
                    ctx.partial(&json!({ "text": word }))
                        .await
                        .map_err(|err| TaskError::failed(err.to_string()))?;
                    text.push_str(&word);
                    tokio::time::sleep(Duration::from_millis(delay)).await;
                }
                Ok(json!({ "text": text }))
            }
            "forever" => {
                ctx.cancelled().await;
                Err(TaskError::failed("stopped"))
            }
            "ask" => {
                let answer = ctx.ask(json!("which colour?")).await?;
                Ok(json!({ "colour": answer }))
            }
            _ => Err(TaskError::rejected("unknown")),
        }
    }
}

async fn serve(server: &NatsServer, agent: &Streamer) -> Runtime {
    let mut runtime = Runtime::new(Bus::from_client(server.connect().await));
    let options = AgentOptions {
        presence: false,
        delivery: DeliveryOptions {
            idle_poll: Duration::from_millis(100),
            ..DeliveryOptions::default()
        },
        ..AgentOptions::default()
    };
    runtime.add(agent.clone(), options).await.unwrap();
    runtime
}

fn lines(stdout: &str) -> Vec<Value> {
    stdout
        .lines()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}")))
        .collect()
}

fn seqs(events: &[Value]) -> Vec<u64> {
    events.iter().filter_map(|e| e["seq"].as_u64()).collect()
}

/// A CLI process whose stdout is read line by line while it runs.
struct Running {
    child: tokio::process::Child,
    lines: tokio::io::Lines<BufReader<tokio::process::ChildStdout>>,
}

impl Running {
    fn start(server: &NatsServer, args: &[&str]) -> Self {
        let url = server.url_with_credentials();
        let mut command = common::command();
        command
            .args(args)
            .args(["--server", &url])
            .stdout(Stdio::piped())
            .stderr(Stdio::null());
        let mut child = command.spawn().expect("spawn agentbus");
        let stdout = child.stdout.take().unwrap();
        Self {
            child,
            lines: BufReader::new(stdout).lines(),
        }
    }

    async fn line(&mut self) -> Option<Value> {
        let line = tokio::time::timeout(WAIT, self.lines.next_line())
            .await
            .expect("a line in time")
            .unwrap()?;
        Some(serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line}")))
    }

    /// The next printed event of type `kind`, skipping the others.
    async fn until(&mut self, kind: &str) -> Value {
        loop {
            let event = self.line().await.expect("events");
            if event["type"] == kind {
                return event;
            }
        }
    }

    async fn rest(&mut self) -> Vec<Value> {
        let mut out = Vec::new();
        while let Some(line) = self.line().await {
            out.push(line);
        }
        out
    }
}

#[tokio::test]
async fn request_stream_prints_each_event_then_the_response_and_watch_resumes_anywhere() {
    let server = NatsServer::start().await;
    let agent = Streamer::default();
    let _runtime = serve(&server, &agent).await;
    let out = cli(
        &server,
        &[
            "request",
            "streamer",
            "words",
            r#"{"count": 5}"#,
            "--stream",
            "--json",
            "--task-id",
            "cli-stream-1",
        ],
    )
    .await;
    out.assert_success();
    let printed = lines(&out.stdout);
    let (response, events) = printed.split_last().unwrap();
    assert_eq!(response["status"], "completed");
    assert_eq!(response["result"]["text"], "w0 w1 w2 w3 w4 ");
    let types: Vec<&str> = events.iter().map(|e| e["type"].as_str().unwrap()).collect();
    assert_eq!(
        types,
        [
            "accepted",
            "started",
            "partial",
            "partial",
            "partial",
            "partial",
            "partial",
            "completed"
        ]
    );
    assert_eq!(seqs(events), (1..=8).collect::<Vec<_>>());
    for event in events {
        assert_eq!(event["task_id"], "cli-stream-1");
        assert!(event["time"].is_string() && event["instance"].is_string());
    }

    // Text mode: the partials' text, then the response.
    let out = cli(
        &server,
        &[
            "request",
            "streamer",
            "words",
            r#"{"count": 3}"#,
            "--stream",
        ],
    )
    .await;
    out.assert_success();
    assert!(out.stdout.starts_with("w0 w1 w2 \n{"), "{}", out.stdout);

    // Watching after the end, from any sequence: those events, then the response.
    let out = cli(
        &server,
        &["task", "watch", "cli-stream-1", "--from", "6", "--json"],
    )
    .await;
    out.assert_success();
    let printed = lines(&out.stdout);
    assert_eq!(seqs(&printed), [6, 7, 8]);
    assert_eq!(printed.last().unwrap()["status"], "completed");

    let out = cli(&server, &["task", "cli-stream-1", "--json"]).await;
    out.assert_success();
    let document = out.json();
    assert_eq!(document["state"], "completed");
    assert_eq!(document["response"]["result"]["text"], "w0 w1 w2 w3 w4 ");
    // Run by streamer, sent by a client with no agent identity.
    assert_eq!(document["key"], "agent.streamer._.cli-stream-1");
}

#[tokio::test]
async fn a_watcher_killed_mid_stream_resumes_with_from_and_misses_nothing() {
    let server = NatsServer::start().await;
    let agent = Streamer::default();
    let _runtime = serve(&server, &agent).await;
    let client = Bus::from_client(server.connect().await);
    let request = TaskRequest::new("words", json!({"count": 30, "delay_ms": 40})).streamed();
    let task_id = request.task_id.to_string();
    let mut first = Running::start(&server, &["task", "watch", &task_id, "--json"]);
    let sent = tokio::spawn(async move {
        client
            .request("streamer", &request, agentbus::RequestOptions::default())
            .await
            .unwrap()
    });
    let mut seen = Vec::new();
    for _ in 0..6 {
        seen.push(first.line().await.expect("an event"));
    }
    first.child.kill().await.unwrap();
    let next = seen.last().unwrap()["seq"].as_u64().unwrap() + 1;
    let mut second = Running::start(
        &server,
        &[
            "task",
            "watch",
            &task_id,
            "--from",
            &next.to_string(),
            "--json",
        ],
    );
    let rest = second.rest().await;
    let status = second.child.wait().await.unwrap();
    assert!(status.success());
    let response = sent.await.unwrap();
    let (printed_response, events) = rest.split_last().unwrap();
    assert_eq!(printed_response, &serde_json::to_value(&response).unwrap());
    seen.extend(events.iter().cloned());
    // 2 + 30 partials + the final state, each exactly once, in order.
    assert_eq!(seqs(&seen), (1..=33).collect::<Vec<_>>());
    assert_eq!(seen.last().unwrap()["type"], "completed");
}

#[tokio::test]
async fn task_cancel_from_another_process_stops_a_running_handler_within_a_second() {
    let server = NatsServer::start().await;
    let agent = Streamer::default();
    let _runtime = serve(&server, &agent).await;
    let mut request = Running::start(
        &server,
        &[
            "request",
            "streamer",
            "forever",
            "{}",
            "--stream",
            "--json",
            "--task-id",
            "cli-cancel-1",
        ],
    );
    // Started: the handler runs.
    request.until("started").await;
    let out = cli(&server, &["task", "cli-cancel-1", "--json"]).await;
    assert_eq!(out.assert_success().json()["state"], "running");
    let asked = Instant::now();
    let out = cli(&server, &["task", "cancel", "cli-cancel-1", "--json"]).await;
    let document = out.assert_success().json();
    assert_eq!(document["outcome"], "cancelling");
    assert_eq!(document["agent"], "streamer");
    let rest = request.rest().await;
    let took = asked.elapsed();
    assert!(took < Duration::from_secs(2), "{took:?}");
    let status = request.child.wait().await.unwrap();
    assert_eq!(status.code(), Some(1), "a cancelled task is not completed");
    let (response, events) = rest.split_last().unwrap();
    assert_eq!(response["status"], "cancelled");
    assert_eq!(events.last().unwrap()["type"], "cancelled");

    // Again: over already, nothing changes.
    let out = cli(&server, &["task", "cancel", "cli-cancel-1"]).await;
    assert!(
        out.assert_success()
            .stdout
            .contains("already over (cancelled); nothing changed"),
        "{}",
        out.stdout
    );
    let out = cli(&server, &["task", "cancel", "no-such-task"]).await;
    out.assert_one_error("no task no-such-task is known");
    let out = cli(&server, &["task", "watch", "no-such-task"]).await;
    out.assert_one_error("no task no-such-task is known");
}

#[tokio::test]
async fn a_question_is_answered_through_the_cli() {
    let server = NatsServer::start().await;
    let agent = Streamer::default();
    let _runtime = serve(&server, &agent).await;
    let mut request = Running::start(
        &server,
        &[
            "request",
            "streamer",
            "ask",
            "{}",
            "--stream",
            "--json",
            "--task-id",
            "cli-ask-1",
        ],
    );
    let event = request.until("input_required").await;
    assert_eq!(event["data"]["question"], "which colour?");
    let out = cli(&server, &["task", "cli-ask-1", "--json"]).await;
    assert_eq!(out.assert_success().json()["state"], "input_required");
    let out = cli(&server, &["task", "answer", "cli-ask-1", r#""blue""#]).await;
    out.assert_success();
    let rest = request.rest().await;
    let (response, events) = rest.split_last().unwrap();
    assert_eq!(response["result"], json!({"colour": "blue"}));
    assert_eq!(events[0]["type"], "input_received");
    assert_eq!(events[0]["data"]["answer"], "blue");
    // Answered and over: a second answer is refused in one line.
    let out = cli(&server, &["task", "answer", "cli-ask-1", r#""red""#]).await;
    out.assert_one_error("task cli-ask-1 is over (completed); it takes no answer");
    let out = cli(&server, &["task", "answer", "cli-ask-1", "{not json"]).await;
    out.assert_one_error("the JSON argument is not valid JSON");
}

#[tokio::test]
async fn queued_tasks_cancelled_or_past_their_deadline_never_run() {
    let server = NatsServer::start().await;
    let cancelled = cli(&server, &["submit", "streamer", "words", "{}"]).await;
    let cancelled = cancelled.assert_success().stdout.trim().to_owned();
    let late = cli(
        &server,
        &["submit", "streamer", "words", "{}", "--deadline", "200ms"],
    )
    .await;
    let late = late.assert_success().stdout.trim().to_owned();
    let out = cli(&server, &["task", "cancel", &cancelled, "--json"]).await;
    assert_eq!(out.assert_success().json()["outcome"], "dequeued");
    tokio::time::sleep(Duration::from_millis(300)).await;

    let agent = Streamer::default();
    let _runtime = serve(&server, &agent).await;
    // A task submitted now with --wait --stream runs, streamed to the end.
    let out = cli(
        &server,
        &[
            "submit",
            "streamer",
            "words",
            r#"{"count": 2}"#,
            "--wait",
            "--stream",
            "--json",
        ],
    )
    .await;
    out.assert_success();
    let printed = lines(&out.stdout);
    let (response, events) = printed.split_last().unwrap();
    assert_eq!(response["status"], "completed");
    let types: Vec<&str> = events.iter().map(|e| e["type"].as_str().unwrap()).collect();
    assert_eq!(
        types,
        ["accepted", "started", "partial", "partial", "completed"]
    );
    assert_eq!(events[0]["instance"], "submitter");

    let client = Bus::from_client(server.connect().await);
    let late_id = agentbus::TaskId::parse(&late).unwrap();
    let ended = client.wait_task(&late_id, WAIT).await.unwrap();
    assert_eq!(ended.status, agentbus::TaskStatus::Timeout);
    let out = cli(&server, &["task", &late, "--json"]).await;
    let late_state = out.assert_success().json();
    assert_eq!(late_state["state"], "timeout", "{late_state}");
    let out = cli(&server, &["task", &cancelled, "--json"]).await;
    assert_eq!(out.assert_success().json()["state"], "cancelled");
    assert_eq!(
        agent.runs.load(Ordering::SeqCst),
        1,
        "only the streamed task ran"
    );
}
