//! The messaging subcommands (`request`, `publish`, `tail`, `send`, `submit`,
//! `task`, `broadcast`, `dlq`) against a real testkit nats-server, with the
//! agents they talk to served in this process.

mod common;

use agentbus::delivery::DeliveryOptions;
use agentbus::delivery::TaskState;
use agentbus::{
    Agent, AgentMessage, AgentOptions, Bus, MessageChannel, Priority, Runtime, TaskContext,
    TaskError, TaskId, TaskRequest, TaskTypeSpec,
};
use agentbus_testkit::{ClosedPort, NatsServer};
use futures::{StreamExt, TryStreamExt};
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::AsyncReadExt;

/// How long anything a test waits for may take.
const WAIT: Duration = Duration::from_secs(15);

/// `agentbus ARGS --server <server>`.
async fn cli(server: &NatsServer, args: &[&str]) -> common::Output {
    let url = server.url_with_credentials();
    let mut all: Vec<&str> = args.to_vec();
    all.extend(["--server", url.as_str()]);
    common::run(all).await
}

/// An agent that records what it gets; its behaviour is chosen by task type.
#[derive(Clone, Default)]
struct Probe {
    name: String,
    tasks: Arc<Mutex<Vec<TaskRequest>>>,
    messages: Arc<Mutex<Vec<AgentMessage>>>,
}

impl Probe {
    fn new(name: &str) -> Self {
        Self {
            name: name.to_owned(),
            ..Self::default()
        }
    }

    /// How often the handler ran task `task_id`.
    fn runs(&self, task_id: &str) -> usize {
        self.tasks
            .lock()
            .unwrap()
            .iter()
            .filter(|t| t.task_id == task_id)
            .count()
    }

    fn messages(&self) -> Vec<AgentMessage> {
        self.messages.lock().unwrap().clone()
    }
}

impl Agent for Probe {
    fn name(&self) -> &str {
        &self.name
    }

    fn task_types(&self) -> Vec<TaskTypeSpec> {
        ["echo", "fail", "slow", "flaky", "poison"]
            .into_iter()
            .map(|t| TaskTypeSpec::new(t).unwrap())
            .collect()
    }

    async fn handle(&self, task: TaskRequest, _ctx: TaskContext) -> Result<Value, TaskError> {
        let attempt = {
            let mut tasks = self.tasks.lock().unwrap();
            tasks.push(task.clone());
            tasks.iter().filter(|t| t.task_id == task.task_id).count()
        };
        match task.task_type.as_str() {
            "fail" => Err(TaskError::failed("boom: the probe was told to fail")),
            "slow" => {
                let ms = task.payload["ms"].as_u64().unwrap_or(5_000);
                tokio::time::sleep(Duration::from_millis(ms)).await;
                Ok(json!({"slept_ms": ms}))
            }
            "flaky" if attempt == 1 => Err(TaskError::failed("temporarily unavailable")),
            "poison" => Err(TaskError::failed(format!(
                "cannot digest {}",
                task.payload["food"]
            ))),
            _ => Ok(json!({"echo": task.payload})),
        }
    }

    async fn handle_message(
        &self,
        message: AgentMessage,
        _ctx: TaskContext,
    ) -> Result<(), TaskError> {
        self.messages.lock().unwrap().push(message);
        Ok(())
    }
}

/// Fast retries, so failing tasks settle in well under a second.
fn fast() -> AgentOptions {
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

fn task_id(text: &str) -> TaskId {
    TaskId::parse(text).unwrap()
}

/// Serves `probe` in this process on its own connection.
async fn serve(server: &NatsServer, probe: &Probe, options: AgentOptions) -> Runtime {
    let mut runtime = Runtime::new(Bus::from_client(server.connect().await));
    runtime.add(probe.clone(), options).await.unwrap();
    runtime
}

async fn wait_until(what: &str, condition: impl Fn() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !condition() {
        assert!(Instant::now() < deadline, "{what}: not within {WAIT:?}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Messages per subject in `stream`.
async fn subject_counts(server: &NatsServer, stream: &str) -> BTreeMap<String, usize> {
    let js = server.jetstream().await;
    let stream = js.get_stream(stream).await.unwrap();
    stream
        .info_with_subjects(">")
        .await
        .unwrap()
        .try_collect()
        .await
        .unwrap()
}

/// Polls until `stream` holds no message (work-queue messages leave once acked).
async fn wait_stream_empty(server: &NatsServer, stream: &str) {
    let js = server.jetstream().await;
    let mut stream = js.get_stream(stream).await.unwrap();
    let deadline = Instant::now() + WAIT;
    while stream.info().await.unwrap().state.messages > 0 {
        assert!(Instant::now() < deadline, "the stream did not empty");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// The last message stored on `subject` in `stream`: (payload as JSON, Nats-Msg-Id).
async fn last_on(server: &NatsServer, stream: &str, subject: &str) -> (Value, Option<String>) {
    let js = server.jetstream().await;
    let stream = js.get_stream(stream).await.unwrap();
    let message = stream
        .get_last_raw_message_by_subject(subject)
        .await
        .unwrap_or_else(|err| panic!("nothing stored on {subject}: {err}"));
    let id = message
        .headers
        .get("Nats-Msg-Id")
        .map(|v| v.as_str().to_owned());
    (serde_json::from_slice(&message.payload).unwrap(), id)
}

/// A CLI process left running (`agentbus tail`), its output collected as it comes.
struct Spawned {
    child: tokio::process::Child,
    stdout: Arc<Mutex<String>>,
    stderr: Arc<Mutex<String>>,
    drains: Vec<tokio::task::JoinHandle<()>>,
}

fn collect(
    mut reader: impl tokio::io::AsyncRead + Unpin + Send + 'static,
    into: Arc<Mutex<String>>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut buf = [0u8; 4096];
        while let Ok(n) = reader.read(&mut buf).await {
            if n == 0 {
                break;
            }
            into.lock()
                .unwrap()
                .push_str(&String::from_utf8_lossy(&buf[..n]));
        }
    })
}

impl Spawned {
    fn start(args: &[&str]) -> Self {
        let mut child = common::command()
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn agentbus");
        let stdout = Arc::new(Mutex::new(String::new()));
        let stderr = Arc::new(Mutex::new(String::new()));
        let drains = vec![
            collect(child.stdout.take().unwrap(), stdout.clone()),
            collect(child.stderr.take().unwrap(), stderr.clone()),
        ];
        Self {
            child,
            stdout,
            stderr,
            drains,
        }
    }

    fn stdout(&self) -> String {
        self.stdout.lock().unwrap().clone()
    }

    fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    /// Waits until stdout or stderr (`on_stderr`) satisfies `condition`.
    async fn wait_output(&mut self, what: &str, on_stderr: bool, condition: impl Fn(&str) -> bool) {
        let deadline = Instant::now() + WAIT;
        loop {
            let text = if on_stderr {
                self.stderr()
            } else {
                self.stdout()
            };
            if condition(&text) {
                return;
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                // Exited: give the output a moment to arrive, then decide.
                for drain in self.drains.drain(..) {
                    let _ = tokio::time::timeout(common::EXIT_TIMEOUT, drain).await;
                }
                let text = if on_stderr {
                    self.stderr()
                } else {
                    self.stdout()
                };
                assert!(
                    condition(&text),
                    "{what}: the process exited ({status}) first; stdout:\n{}\nstderr:\n{}",
                    self.stdout(),
                    self.stderr()
                );
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{what}: not within {WAIT:?}; stdout:\n{}\nstderr:\n{}",
                self.stdout(),
                self.stderr()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Waits (bounded) for the process to exit and its output to end.
    async fn wait(&mut self) -> ExitStatus {
        let status = tokio::time::timeout(common::EXIT_TIMEOUT, self.child.wait())
            .await
            .unwrap_or_else(|_| {
                panic!(
                    "did not exit within {:?}; stdout:\n{}\nstderr:\n{}",
                    common::EXIT_TIMEOUT,
                    self.stdout(),
                    self.stderr()
                )
            })
            .unwrap();
        for drain in self.drains.drain(..) {
            let _ = tokio::time::timeout(common::EXIT_TIMEOUT, drain).await;
        }
        status
    }

    fn signal(&self, signal: &str) {
        let pid = self.child.id().expect("still running").to_string();
        let sent = std::process::Command::new("kill")
            .args([signal, &pid])
            .status()
            .unwrap();
        assert!(sent.success(), "kill {signal} {pid}");
    }
}

// ---------------------------------------------------------------- request

#[tokio::test]
async fn request_prints_the_completed_response_and_the_agent_sees_the_priority() {
    common::ensure_nats_server().await;
    let server = NatsServer::start().await;
    let probe = Probe::new("req_ok");
    let _runtime = serve(&server, &probe, fast()).await;

    let out = cli(
        &server,
        &[
            "request",
            "req_ok",
            "echo",
            r#"{"x": 1}"#,
            "--priority",
            "high",
            "--timeout",
            "10",
            "--task-id",
            "req-task-1",
        ],
    )
    .await;
    out.assert_success();
    let response = out.json();
    assert_eq!(response["task_id"], "req-task-1", "{response}");
    assert_eq!(response["status"], "completed", "{response}");
    assert_eq!(response["result"], json!({"echo": {"x": 1}}), "{response}");
    assert_eq!(response["error"], Value::Null, "{response}");
    let seen = probe.tasks.lock().unwrap().clone();
    assert_eq!(seen.len(), 1, "{seen:?}");
    assert_eq!(seen[0].task_id, "req-task-1");
    assert_eq!(seen[0].task_type, "echo");
    assert_eq!(seen[0].priority, Priority::High);

    // A new task id by default.
    let out = cli(&server, &["request", "req_ok", "echo", "{}"]).await;
    out.assert_success();
    let response = out.json();
    assert_eq!(response["status"], "completed");
    let id = response["task_id"].as_str().unwrap();
    assert!(!id.is_empty() && id != "req-task-1", "{response}");
}

#[tokio::test]
async fn request_exits_non_zero_and_prints_the_response_when_the_agent_fails() {
    let server = NatsServer::start().await;
    let probe = Probe::new("req_fail");
    let _runtime = serve(&server, &probe, fast()).await;

    let out = cli(
        &server,
        &["request", "req_fail", "fail", "{}", "--timeout", "10"],
    )
    .await;
    out.assert_failure();
    assert_eq!(out.status.code(), Some(1), "{out:#?}");
    let response = out.json();
    assert_eq!(response["status"], "failed", "{response}");
    assert_eq!(
        response["error"], "boom: the probe was told to fail",
        "{response}"
    );
    assert_eq!(response["result"], Value::Null, "{response}");
    assert!(!out.stderr.contains("error:"), "{}", out.stderr);

    // A task type the agent does not accept: rejected, also non-zero.
    let out = cli(&server, &["request", "req_fail", "juggle", "{}"]).await;
    assert_eq!(out.status.code(), Some(1), "{out:#?}");
    assert_eq!(out.json()["status"], "rejected", "{}", out.stdout);
}

#[tokio::test]
async fn request_to_a_missing_agent_fails_fast_with_one_line() {
    let server = NatsServer::start().await;
    let out = cli(
        &server,
        &["request", "ghost", "echo", "{}", "--timeout", "10"],
    )
    .await;
    out.assert_one_error(r#"no agent named "ghost" is running"#);
    assert!(
        out.elapsed < Duration::from_secs(3),
        "took {:?}, the timeout was 10 s",
        out.elapsed
    );
}

#[tokio::test]
async fn request_times_out_on_a_stuck_agent_naming_the_task() {
    let server = NatsServer::start().await;
    let probe = Probe::new("req_slow");
    let _runtime = serve(&server, &probe, fast()).await;
    // --timeout is the task's deadline: the agent stops the task and says so.
    let out = cli(
        &server,
        &[
            "request",
            "req_slow",
            "slow",
            r#"{"ms": 5000}"#,
            "--timeout",
            "0.5",
            "--task-id",
            "stuck-1",
        ],
    )
    .await;
    assert_eq!(out.status.code(), Some(1), "{out:#?}");
    let response = out.json();
    assert_eq!(response["task_id"], "stuck-1");
    assert_eq!(response["status"], "timeout");
    assert_eq!(response["error"], "the task's deadline passed");
    assert!(out.elapsed < Duration::from_secs(4), "{:?}", out.elapsed);

    // An agent that does not stop it (a plain NATS responder that never
    // answers): the wait ends a moment after the deadline, naming the task.
    let client = server.connect().await;
    let _silent = client.subscribe("agent.req_mute.task").await.unwrap();
    client.flush().await.unwrap();
    let out = cli(
        &server,
        &[
            "request",
            "req_mute",
            "slow",
            "{}",
            "--timeout",
            "0.5",
            "--task-id",
            "stuck-2",
        ],
    )
    .await;
    out.assert_one_error(r#"agent "req_mute" did not answer task stuck-2 within 1.5s"#);
    assert!(out.elapsed < Duration::from_secs(4), "{:?}", out.elapsed);
}

#[tokio::test]
async fn request_refuses_bad_input_with_one_line_before_sending() {
    let server = NatsServer::start().await;
    let cases: &[(&[&str], &str)] = &[
        (
            &["request", "someone", "echo", "{oops"],
            "the JSON argument is not valid JSON",
        ),
        (
            &["request", "someone", "echo", "[1, 2]"],
            "the payload must be a JSON object",
        ),
        (
            &["request", "a.b", "echo", "{}"],
            r#"invalid agent name "a.b": dots separate subject tokens"#,
        ),
        (
            &["request", "*", "echo", "{}"],
            r#"invalid agent name "*": wildcards are not allowed"#,
        ),
        (
            &["request", "someone", "ec>ho", "{}"],
            r#"invalid task type "ec>ho": wildcards are not allowed"#,
        ),
        (
            &["request", "someone", "echo", "{}", "--timeout", "0"],
            "--timeout must be a positive number of seconds",
        ),
    ];
    for (args, expected) in cases {
        let out = cli(&server, args).await;
        out.assert_one_error(expected);
    }

    // An unknown priority is refused by the argument parser.
    let out = cli(
        &server,
        &["request", "someone", "echo", "{}", "--priority", "urgent"],
    )
    .await;
    let stderr = out.assert_failure();
    assert_eq!(out.status.code(), Some(2), "{out:#?}");
    assert!(
        stderr.contains("unknown priority \"urgent\"; use low, normal, high or critical"),
        "{stderr}"
    );
}

// ---------------------------------------------------------------- publish / tail

#[tokio::test]
async fn publish_reaches_a_subscriber_and_refuses_bad_subjects() {
    let server = NatsServer::start().await;
    let client = server.connect().await;
    let mut subscriber = client.subscribe("app.events.>").await.unwrap();
    client.flush().await.unwrap();

    let message = json!({"id": 7, "name": "seven"});
    let text = message.to_string();
    let out = cli(&server, &["publish", "app.events.created", &text]).await;
    out.assert_success();
    assert_eq!(
        out.stdout.trim(),
        format!("published {} bytes to app.events.created", text.len())
    );
    let received = tokio::time::timeout(WAIT, subscriber.next())
        .await
        .expect("the subscriber gets the message")
        .unwrap();
    assert_eq!(received.subject.as_str(), "app.events.created");
    let body: Value = serde_json::from_slice(&received.payload).unwrap();
    assert_eq!(body, message);

    for (subject, expected) in [
        ("app.*.created", "invalid subject \"app.*.created\""),
        ("app..created", "invalid subject \"app..created\""),
    ] {
        let out = cli(&server, &["publish", subject, "{}"]).await;
        out.assert_one_error(expected);
    }
    let out = cli(&server, &["publish", "app.events.created", "{oops"]).await;
    out.assert_one_error("not valid JSON");
    // Nothing else reached the subscriber.
    assert!(
        tokio::time::timeout(Duration::from_millis(200), subscriber.next())
            .await
            .is_err(),
        "a refused publish was delivered"
    );
}

#[tokio::test]
async fn tail_prints_the_subject_and_json_of_matching_messages_until_interrupted() {
    let server = NatsServer::start().await;
    let url = server.url_with_credentials();
    let mut tail = Spawned::start(&["tail", "app.events.>", "--server", &url]);
    tail.wait_output("the listening line", true, |e| {
        e.contains("listening on app.events.> (Ctrl-C to stop)")
    })
    .await;

    // Not matching, then matching: only the second is printed.
    cli(&server, &["publish", "other.events.created", r#"{"n": 0}"#])
        .await
        .assert_success();
    let message = json!({"n": 1, "text": "hello"});
    cli(
        &server,
        &["publish", "app.events.created", &message.to_string()],
    )
    .await
    .assert_success();
    tail.wait_output("the message", false, |o| o.trim_end().ends_with('}'))
        .await;

    let stdout = tail.stdout();
    let (head, body) = stdout.split_once('\n').unwrap();
    let head: Vec<&str> = head.split_whitespace().collect();
    assert_eq!(head.len(), 2, "{stdout}");
    assert!(
        humantime::parse_rfc3339(head[0]).is_ok(),
        "not a time: {stdout}"
    );
    assert_eq!(head[1], "app.events.created", "{stdout}");
    let body: Value = serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {stdout}"));
    assert_eq!(body, message);
    assert!(!stdout.contains("other.events"), "{stdout}");

    // Ctrl-C stops it cleanly.
    tail.signal("-INT");
    let status = tail.wait().await;
    assert!(status.success(), "{status}; stderr:\n{}", tail.stderr());
}

#[tokio::test]
async fn tail_json_prints_one_object_per_message_and_count_exits() {
    let server = NatsServer::start().await;
    let url = server.url_with_credentials();
    let mut tail = Spawned::start(&[
        "tail",
        "app.*.created",
        "--json",
        "--count",
        "2",
        "--server",
        &url,
    ]);
    tail.wait_output("the listening line", true, |e| e.contains("listening on"))
        .await;
    let message = json!({"a": [1, 2]});
    cli(
        &server,
        &["publish", "app.orders.created", &message.to_string()],
    )
    .await
    .assert_success();
    cli(&server, &["publish", "app.orders.deleted", "{}"])
        .await
        .assert_success();
    // A payload that is not JSON is shown as a string.
    let client = server.connect().await;
    client
        .publish("app.users.created", "plain text".into())
        .await
        .unwrap();
    client.flush().await.unwrap();

    let status = tail.wait().await;
    assert!(status.success(), "{status}; stderr:\n{}", tail.stderr());
    let stdout = tail.stdout();
    let lines: Vec<Value> = stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {stdout}")))
        .collect();
    assert_eq!(lines.len(), 2, "{stdout}");
    assert_eq!(lines[0]["subject"], "app.orders.created");
    assert_eq!(lines[0]["data"], message);
    assert_eq!(lines[1]["subject"], "app.users.created");
    assert_eq!(lines[1]["data"], "plain text");
    for line in &lines {
        let time = line["time"].as_str().unwrap();
        assert!(humantime::parse_rfc3339(time).is_ok(), "{line}");
        assert_eq!(line.as_object().unwrap().len(), 3, "{line}");
    }
}

// ---------------------------------------------------------------- send / broadcast

#[tokio::test]
async fn send_stores_in_the_inbox_dedups_by_message_id_and_the_agent_gets_each_once() {
    let server = NatsServer::start().await;

    // The agent is offline: the messages wait in the stream.
    let out = cli(&server, &["send", "mailbox", r#"{"n": 1}"#]).await;
    out.assert_success();
    let line = out.stdout.trim();
    let rest = line
        .strip_prefix("stored message ")
        .unwrap_or_else(|| panic!("{line}"));
    let (message_id, rest) = rest.split_once(' ').unwrap();
    assert!(
        rest.starts_with("on agent.mailbox.inbox (sequence "),
        "{line}"
    );
    let (body, id) = last_on(&server, "agent-messages", "agent.mailbox.inbox").await;
    assert_eq!(body, json!({"n": 1}));
    assert_eq!(id.as_deref(), Some(message_id));

    // The same message, sent twice with --json and once more as text.
    let send_m2 = ["send", "mailbox", r#"{"n": 2}"#, "--message-id", "m-2"];
    let send_m2_json = [&send_m2[..], &["--json"]].concat();
    let first = cli(&server, &send_m2_json).await;
    first.assert_success();
    let first = first.json();
    assert_eq!(first["message_id"], "m-2");
    assert_eq!(first["subject"], "agent.mailbox.inbox");
    assert_eq!(first["duplicate"], false);
    let again = cli(&server, &send_m2_json).await;
    again.assert_success();
    let again = again.json();
    assert_eq!(again["duplicate"], true, "{again}");
    assert_eq!(again["sequence"], first["sequence"], "{again}");
    let text = cli(&server, &send_m2).await;
    text.assert_success();
    assert_eq!(
        text.stdout.trim(),
        "already stored: message m-2 on agent.mailbox.inbox (duplicate id, stored once)"
    );

    let direct = cli(
        &server,
        &["send", "mailbox", r#"{"n": 3}"#, "--direct", "--json"],
    )
    .await;
    direct.assert_success();
    assert_eq!(direct.json()["subject"], "agent.mailbox.direct");

    let counts = subject_counts(&server, "agent-messages").await;
    assert_eq!(
        counts,
        BTreeMap::from([
            ("agent.mailbox.direct".to_owned(), 1),
            ("agent.mailbox.inbox".to_owned(), 2),
        ])
    );

    // The agent starts and receives each stored message once, on its channel.
    let probe = Probe::new("mailbox");
    let _runtime = serve(
        &server,
        &probe,
        AgentOptions {
            messages: true,
            ..fast()
        },
    )
    .await;
    wait_until("three messages", || probe.messages().len() == 3).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut got: Vec<(u64, MessageChannel, Option<String>)> = probe
        .messages()
        .into_iter()
        .map(|m| (m.body["n"].as_u64().unwrap(), m.channel, m.message_id))
        .collect();
    got.sort_by_key(|(n, _, _)| *n);
    assert_eq!(got.len(), 3, "{got:?}");
    assert_eq!(
        got[0],
        (1, MessageChannel::Inbox, Some(message_id.to_owned()))
    );
    assert_eq!(got[1], (2, MessageChannel::Inbox, Some("m-2".to_owned())));
    assert_eq!((got[2].0, &got[2].1), (3, &MessageChannel::Direct));

    let out = cli(&server, &["send", "a*", "{}"]).await;
    out.assert_one_error(r#"invalid agent name "a*""#);
}

#[tokio::test]
async fn broadcast_reaches_agents_subscribed_to_the_topic_and_announce_reaches_all() {
    let server = NatsServer::start().await;
    let probe = Probe::new("listener");
    let _runtime = serve(
        &server,
        &probe,
        AgentOptions {
            messages: true,
            broadcast_topics: vec!["news".into()],
            ..fast()
        },
    )
    .await;

    let sports = cli(&server, &["broadcast", "sports", r#"{"score": 3}"#]).await;
    sports.assert_success();
    let news = cli(&server, &["broadcast", "news", r#"{"headline": "hi"}"#]).await;
    news.assert_success();
    let line = news.stdout.trim();
    let rest = line
        .strip_prefix("stored ")
        .unwrap_or_else(|| panic!("{line}"));
    let (news_id, rest) = rest.split_once(' ').unwrap();
    assert!(rest.starts_with("on broadcast.news (sequence "), "{line}");
    let announce = cli(
        &server,
        &[
            "broadcast",
            "maintenance",
            r#"{"at": "noon"}"#,
            "--announce",
            "--json",
        ],
    )
    .await;
    announce.assert_success();
    let announce = announce.json();
    assert_eq!(announce["subject"], "announce.maintenance", "{announce}");
    assert_eq!(announce["duplicate"], false, "{announce}");

    wait_until("the news and the announcement", || {
        probe.messages().len() >= 2
    })
    .await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let messages = probe.messages();
    assert_eq!(messages.len(), 2, "{messages:?}");
    let news = messages
        .iter()
        .find(|m| m.channel == MessageChannel::Broadcast("news".into()))
        .unwrap_or_else(|| panic!("no news: {messages:?}"));
    assert_eq!(news.body, json!({"headline": "hi"}));
    assert_eq!(news.subject, "broadcast.news");
    assert_eq!(news.message_id.as_deref(), Some(news_id));
    let announcement = messages
        .iter()
        .find(|m| m.channel == MessageChannel::Announce("maintenance".into()))
        .unwrap_or_else(|| panic!("no announcement: {messages:?}"));
    assert_eq!(announcement.body, json!({"at": "noon"}));

    // The sports broadcast was stored, but the agent is not subscribed to it.
    let counts = subject_counts(&server, "agent-broadcast").await;
    assert_eq!(
        counts,
        BTreeMap::from([
            ("announce.maintenance".to_owned(), 1),
            ("broadcast.news".to_owned(), 1),
            ("broadcast.sports".to_owned(), 1),
        ])
    );

    let out = cli(&server, &["broadcast", "news.today", "{}"]).await;
    out.assert_one_error(r#"invalid topic "news.today""#);
}

/// The one `warning: ...` line of `stderr` (nothing else is printed there).
fn one_warning(stderr: &str) -> &str {
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 1, "expected one warning line: {stderr}");
    assert!(lines[0].starts_with("warning: "), "{stderr}");
    lines[0]
}

#[tokio::test]
async fn work_for_names_nobody_announced_is_stored_with_a_warning_naming_who_is_online() {
    let server = NatsServer::start().await;

    // Nobody online, nobody ever read anything.
    let out = cli(&server, &["send", "ghost", r#"{"n": 1}"#]).await;
    out.assert_success();
    assert!(out.stdout.starts_with("stored message "), "{}", out.stdout);
    let warning = one_warning(&out.stderr);
    assert!(warning.contains(r#"no agent "ghost""#), "{warning}");
    assert!(warning.contains("agent.ghost.inbox"), "{warning}");
    assert!(warning.contains("no agent is online"), "{warning}");

    let probe = Probe::new("helper");
    let runtime = serve(
        &server,
        &probe,
        AgentOptions {
            messages: true,
            broadcast_topics: vec!["news".into()],
            ..fast()
        },
    )
    .await;

    // A typo of the agent's name, as text and as JSON.
    let out = cli(&server, &["send", "helpr", "{}"]).await;
    out.assert_success();
    let warning = one_warning(&out.stderr);
    assert!(warning.contains(r#"no agent "helpr""#), "{warning}");
    assert!(warning.contains("(online: helper)"), "{warning}");
    let out = cli(&server, &["send", "helpr", "{}", "--direct", "--json"]).await;
    out.assert_success();
    assert!(out.stderr.is_empty(), "{}", out.stderr);
    let json = out.json();
    assert_eq!(json["subject"], "agent.helpr.direct", "{json}");
    assert_eq!(json["online_agents"], json!(["helper"]), "{json}");
    let warning = json["warning"].as_str().unwrap_or_else(|| panic!("{json}"));
    assert!(warning.contains("agent.helpr.direct"), "{warning}");

    // Tasks: an unknown agent, a task type the agent does not accept, a
    // shared queue no agent works.
    let out = cli(&server, &["submit", "helpr", "echo", "{}"]).await;
    out.assert_success();
    let warning = one_warning(&out.stderr);
    assert!(warning.contains(r#"no agent "helpr""#), "{warning}");
    assert!(warning.contains("tasks.helpr"), "{warning}");
    assert!(warning.contains("(online: helper)"), "{warning}");
    let out = cli(&server, &["submit", "helper", "ehco", "{}"]).await;
    out.assert_success();
    let warning = one_warning(&out.stderr);
    assert!(
        warning.contains(r#"agent "helper" is online but does not accept task type "ehco""#),
        "{warning}"
    );
    assert!(
        warning.contains("echo, fail, flaky, poison, slow"),
        "{warning}"
    );
    let out = cli(
        &server,
        &[
            "submit",
            "--any",
            "summarize",
            "{}",
            "--priority",
            "low",
            "--json",
        ],
    )
    .await;
    out.assert_success();
    assert!(out.stderr.is_empty(), "{}", out.stderr);
    let json = out.json();
    assert_eq!(json["subject"], "work.summarize.low", "{json}");
    assert_eq!(json["duplicate"], false, "{json}");
    assert_eq!(json["online_agents"], json!(["helper"]), "{json}");
    let warning = json["warning"].as_str().unwrap_or_else(|| panic!("{json}"));
    assert!(
        warning.contains(r#"no online agent accepts task type "summarize""#),
        "{warning}"
    );

    // A topic nobody subscribed to.
    let out = cli(&server, &["broadcast", "sprots", "{}"]).await;
    out.assert_success();
    let warning = one_warning(&out.stderr);
    assert!(warning.contains(r#"topic "sprots""#), "{warning}");
    assert!(warning.contains("(online: helper)"), "{warning}");

    // What someone receives: no warning, and no warning field.
    for args in [
        &["send", "helper", "{}"][..],
        &["send", "helper", "{}", "--direct"],
        &["submit", "helper", "echo", "{}"],
        &["submit", "--any", "echo", "{}"],
        &["broadcast", "news", "{}"],
        &["broadcast", "anything", "{}", "--announce"],
    ] {
        let out = cli(&server, args).await;
        out.assert_success();
        assert!(out.stderr.is_empty(), "{args:?}: {}", out.stderr);
    }
    let out = cli(&server, &["send", "helper", "{}", "--json"]).await;
    assert_eq!(out.json().get("warning"), None, "{}", out.stdout);

    // Offline, but it has read its inbox and worked its queue before: what
    // is sent now waits for it, as intended.
    runtime.shutdown(Duration::from_secs(1)).await;
    for args in [
        &["send", "helper", "{}"][..],
        &["submit", "helper", "echo", "{}"],
        &["broadcast", "news", "{}"],
    ] {
        let out = cli(&server, args).await;
        out.assert_success();
        assert!(out.stderr.is_empty(), "{args:?}: {}", out.stderr);
    }
    let out = cli(&server, &["send", "helpr", "{}"]).await;
    let warning = one_warning(&out.stderr);
    assert!(warning.contains("no agent is online"), "{warning}");

    // Everything was stored, warned about or not.
    let tasks = subject_counts(&server, "agent-tasks").await;
    assert_eq!(tasks.get("tasks.helpr"), Some(&1), "{tasks:?}");
    assert_eq!(tasks.get("work.summarize.low"), Some(&1), "{tasks:?}");
    let messages = subject_counts(&server, "agent-messages").await;
    assert_eq!(messages.get("agent.ghost.inbox"), Some(&1), "{messages:?}");
    assert_eq!(messages.get("agent.helpr.inbox"), Some(&2), "{messages:?}");
    assert_eq!(messages.get("agent.helpr.direct"), Some(&1), "{messages:?}");
    let broadcasts = subject_counts(&server, "agent-broadcast").await;
    assert_eq!(
        broadcasts.get("broadcast.sprots"),
        Some(&1),
        "{broadcasts:?}"
    );
}

// ---------------------------------------------------------------- submit / task

#[tokio::test]
async fn submit_stores_on_the_queue_subject_of_its_target_and_priority_once_per_id() {
    let server = NatsServer::start().await;

    let out = cli(&server, &["submit", "queued_a", "echo", r#"{"x": 1}"#]).await;
    out.assert_success();
    let plain_id = out.stdout.trim().to_owned();
    assert!(!plain_id.is_empty() && !plain_id.contains(char::is_whitespace));
    // No agent queued_a has ever been seen: stored, and said so.
    let warning = one_warning(&out.stderr);
    assert!(warning.contains(r#"no agent "queued_a""#), "{warning}");
    let (stored, msg_id) = last_on(&server, "agent-tasks", "tasks.queued_a").await;
    assert_eq!(stored["task_id"], plain_id.as_str(), "{stored}");
    assert_eq!(stored["task_type"], "echo");
    assert_eq!(stored["payload"], json!({"x": 1}));
    assert_eq!(msg_id.as_deref(), Some(plain_id.as_str()));

    let out = cli(
        &server,
        &["submit", "queued_a", "echo", "{}", "--priority", "high"],
    )
    .await;
    out.assert_success();
    let high_id = out.stdout.trim().to_owned();
    let (stored, _) = last_on(&server, "agent-tasks", "tasks.queued_a.high").await;
    assert_eq!(stored["task_id"], high_id.as_str());
    assert_eq!(stored["priority"], "high");

    let out = cli(&server, &["submit", "--any", "summarize", r#"{"doc": 1}"#]).await;
    out.assert_success();
    let any_id = out.stdout.trim().to_owned();
    let (stored, _) = last_on(&server, "agent-tasks", "work.summarize").await;
    assert_eq!(stored["task_id"], any_id.as_str());
    assert_eq!(stored["task_type"], "summarize");

    let args = ["submit", "queued_b", "echo", "{}", "--task-id", "fixed-1"];
    let first = cli(&server, &args).await;
    first.assert_success();
    assert_eq!(first.stdout.trim(), "fixed-1");
    let warning = one_warning(&first.stderr);
    assert!(warning.contains(r#"no agent "queued_b""#), "{warning}");
    let second = cli(&server, &args).await;
    second.assert_success();
    assert_eq!(second.stdout.trim(), "fixed-1");
    let (note, warning) = second.stderr.split_once('\n').unwrap_or_default();
    assert_eq!(
        note,
        "note: task fixed-1 was already queued (same task id): stored once"
    );
    assert!(
        one_warning(warning).contains(r#"no agent "queued_b""#),
        "{}",
        second.stderr
    );

    let counts = subject_counts(&server, "agent-tasks").await;
    assert_eq!(
        counts,
        BTreeMap::from([
            ("tasks.queued_a".to_owned(), 1),
            ("tasks.queued_a.high".to_owned(), 1),
            ("tasks.queued_b".to_owned(), 1),
            ("work.summarize".to_owned(), 1),
        ])
    );
}

#[tokio::test]
async fn submit_refuses_bad_arguments() {
    let server = NatsServer::start().await;
    // (arguments, exit code, expected text on stderr)
    let cases: &[(&[&str], i32, &str)] = &[
        (
            &[
                "submit",
                "worker",
                "echo",
                "{}",
                "--wait",
                "--discard-result",
            ],
            2,
            "cannot be used with",
        ),
        (
            &["submit", "worker", "echo", "{}", "--timeout", "5"],
            2,
            "--wait",
        ),
        (
            &["submit", "--any", "worker", "echo", "{}"],
            1,
            "submit --any takes <TASK_TYPE> <PAYLOAD>, without an agent",
        ),
        (
            &["submit", "echo", "{}"],
            1,
            "submit takes <AGENT> <TASK_TYPE> <PAYLOAD>",
        ),
        (
            &["submit", "work.er", "echo", "{}"],
            1,
            "invalid agent name",
        ),
        (&["submit", "worker", "echo", "{oops"], 1, "not valid JSON"),
        (
            &["submit", "worker", "echo", "\"text\""],
            1,
            "the payload must be a JSON object",
        ),
    ];
    for (args, code, expected) in cases {
        let out = cli(&server, args).await;
        let stderr = out.assert_failure();
        assert_eq!(out.status.code(), Some(*code), "{args:?}: {out:#?}");
        assert!(stderr.contains(expected), "{args:?}: {stderr}");
        if *code == 1 {
            common::one_error_line(stderr);
        }
        assert!(out.stdout.is_empty(), "{args:?}: {}", out.stdout);
    }
    // Nothing was queued.
    assert!(subject_counts(&server, "agent-tasks").await.is_empty());
}

#[tokio::test]
async fn submit_wait_prints_the_task_response_from_an_agent_in_this_process() {
    let server = NatsServer::start().await;
    let probe = Probe::new("waiter");
    let _runtime = serve(&server, &probe, fast()).await;

    let out = cli(
        &server,
        &[
            "submit",
            "waiter",
            "echo",
            r#"{"x": 2}"#,
            "--wait",
            "--timeout",
            "20",
        ],
    )
    .await;
    out.assert_success();
    let response = out.json();
    let task_id = response["task_id"].as_str().unwrap_or_default().to_owned();
    assert!(!task_id.is_empty(), "{response}");
    assert_eq!(response["status"], "completed", "{response}");
    assert_eq!(response["result"], json!({"echo": {"x": 2}}), "{response}");
    assert_eq!(probe.runs(&task_id), 1);

    // --any: the shared queue of the task type, worked by every agent accepting it.
    let out = cli(
        &server,
        &[
            "submit",
            "--any",
            "echo",
            r#"{"shared": true}"#,
            "--wait",
            "--task-id",
            "any-1",
            "--priority",
            "critical",
        ],
    )
    .await;
    out.assert_success();
    let response = out.json();
    assert_eq!(response["task_id"], "any-1", "{response}");
    assert_eq!(response["status"], "completed", "{response}");
    assert_eq!(probe.runs("any-1"), 1);
    let seen = probe.tasks.lock().unwrap().clone();
    let any = seen.iter().find(|t| t.task_id == "any-1").unwrap();
    assert_eq!(any.priority, Priority::Critical);

    // A failing task (retried, then dead-lettered) exits non-zero with its response.
    let out = cli(
        &server,
        &[
            "submit",
            "waiter",
            "fail",
            "{}",
            "--wait",
            "--task-id",
            "f-1",
        ],
    )
    .await;
    assert_eq!(out.status.code(), Some(1), "{out:#?}");
    let response = out.json();
    assert_eq!(response["task_id"], "f-1", "{response}");
    assert_eq!(response["status"], "failed", "{response}");
}

#[tokio::test]
async fn submit_discard_result_runs_the_task_and_keeps_no_record() {
    let server = NatsServer::start().await;
    let probe = Probe::new("forgetful");
    let _runtime = serve(&server, &probe, fast()).await;

    let out = cli(
        &server,
        &["submit", "forgetful", "echo", "{}", "--discard-result"],
    )
    .await;
    out.assert_success();
    let task_id = out.stdout.trim().to_owned();
    wait_until("the task to run", || probe.runs(&task_id) == 1).await;
    // Settled once it left the work queue.
    wait_stream_empty(&server, "agent-tasks").await;

    let bus = Bus::from_client(server.connect().await);
    // No result was kept: only what `submit` recorded of the submission.
    let record = bus
        .task_record(&self::task_id(&task_id))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(record.state, TaskState::Queued);
    assert_eq!(record.response, None);
    // The task left its queue and nothing recorded an outcome.
    let out = cli(&server, &["task", &task_id, "--json"]).await;
    out.assert_success();
    let json = out.json();
    assert_eq!(json["task_id"], task_id.as_str(), "{json}");
    assert_eq!(json["state"], "finished_without_record", "{json}");
    assert_eq!(json["attempts"], 0, "{json}");
    assert_eq!(probe.runs(&task_id), 1);

    // For comparison: without --discard-result the same outcome is recorded.
    let out = cli(&server, &["submit", "forgetful", "echo", "{}"]).await;
    out.assert_success();
    let kept = out.stdout.trim().to_owned();
    bus.wait_task(&self::task_id(&kept), WAIT).await.unwrap();
    let out = cli(&server, &["task", &kept, "--json"]).await;
    assert_eq!(out.json()["state"], "completed", "{}", out.stdout);
}

#[tokio::test]
async fn task_shows_state_attempts_errors_and_result() {
    let server = NatsServer::start().await;
    let probe = Probe::new("tasker");
    let _runtime = serve(&server, &probe, fast()).await;

    // Fails its first attempt, then completes.
    let out = cli(
        &server,
        &[
            "submit",
            "tasker",
            "flaky",
            r#"{"k": "v"}"#,
            "--task-id",
            "flaky-1",
            "--wait",
        ],
    )
    .await;
    out.assert_success();
    assert_eq!(out.json()["status"], "completed");

    let out = cli(&server, &["task", "flaky-1", "--json"]).await;
    out.assert_success();
    let record = out.json();
    assert_eq!(record["task_id"], "flaky-1", "{record}");
    assert_eq!(record["state"], "completed", "{record}");
    assert_eq!(record["subject"], "tasks.tasker", "{record}");
    assert_eq!(record["attempts"], 2, "{record}");
    let errors = record["errors"].as_array().unwrap();
    assert_eq!(errors.len(), 1, "{record}");
    assert_eq!(errors[0]["attempt"], 1);
    assert_eq!(errors[0]["error"], "temporarily unavailable");
    assert_eq!(record["response"]["status"], "completed", "{record}");
    assert_eq!(
        record["response"]["result"],
        json!({"echo": {"k": "v"}}),
        "{record}"
    );

    let out = cli(&server, &["task", "flaky-1"]).await;
    out.assert_success();
    let lines: Vec<&str> = out.stdout.lines().collect();
    assert_eq!(lines[0], "task      flaky-1", "{}", out.stdout);
    assert_eq!(lines[1], "state     completed", "{}", out.stdout);
    assert_eq!(lines[2], "queue     tasks.tasker", "{}", out.stdout);
    assert_eq!(lines[3], "attempts  2", "{}", out.stdout);
    assert!(
        lines[4].starts_with("  attempt 1 at ") && lines[4].ends_with(": temporarily unavailable"),
        "{}",
        out.stdout
    );
    let response = out
        .stdout
        .split_once("response  ")
        .map(|(_, r)| r)
        .unwrap_or_else(|| panic!("no response: {}", out.stdout));
    let response: Value = serde_json::from_str(response).unwrap();
    assert_eq!(response["result"], json!({"echo": {"k": "v"}}));

    // Nothing known about an id: an error.
    let out = cli(&server, &["task", "never-submitted"]).await;
    out.assert_one_error("no task never-submitted is known");
}

#[tokio::test]
async fn task_tells_queued_running_finished_without_record_and_unknown_apart() {
    let server = NatsServer::start().await;

    // Unknown: an error, as text and as JSON.
    for args in [
        &["task", "never-submitted"][..],
        &["task", "never-submitted", "--json"],
    ] {
        let out = cli(&server, args).await;
        let error = out.assert_one_error("no task never-submitted is known");
        assert!(error.contains("agentbus submit"), "{error}");
    }

    // Queued on a queue nobody ever worked.
    let out = cli(
        &server,
        &["submit", "sleeper", "slow", "{}", "--task-id", "q-1"],
    )
    .await;
    out.assert_success();
    let out = cli(&server, &["task", "q-1", "--json"]).await;
    out.assert_success();
    let json = out.json();
    assert_eq!(json["task_id"], "q-1", "{json}");
    assert_eq!(json["state"], "queued", "{json}");
    assert_eq!(json["subject"], "tasks.sleeper", "{json}");
    assert_eq!(json["attempts"], 0, "{json}");
    let out = cli(&server, &["task", "q-1"]).await;
    out.assert_success();
    assert!(
        out.stdout.starts_with("task q-1: queued on tasks.sleeper"),
        "{}",
        out.stdout
    );

    // Running: delivered to the agent, which is still at it.
    let probe = Probe::new("sleeper");
    let runtime = serve(&server, &probe, fast()).await;
    wait_until("the task to start", || probe.runs("q-1") == 1).await;
    let out = cli(&server, &["task", "q-1", "--json"]).await;
    out.assert_success();
    let json = out.json();
    assert_eq!(json["state"], "running", "{json}");
    let note = json["note"].as_str().unwrap_or_else(|| panic!("{json}"));
    assert!(note.contains("cannot be told apart"), "{note}");
    let out = cli(&server, &["task", "q-1"]).await;
    assert!(
        out.stdout.starts_with("task q-1: running on tasks.sleeper"),
        "{}",
        out.stdout
    );

    // Queued again: the agent stopped; its queue has a consumer now, which
    // has not delivered the new task.
    runtime.shutdown(Duration::from_millis(100)).await;
    let out = cli(
        &server,
        &["submit", "sleeper", "echo", "{}", "--task-id", "q-2"],
    )
    .await;
    out.assert_success();
    let out = cli(&server, &["task", "q-2", "--json"]).await;
    assert_eq!(out.json()["state"], "queued", "{}", out.stdout);

    // Finished without a record: a plain NATS worker (no agentbus runtime)
    // takes the task and acknowledges it, recording nothing.
    let out = cli(
        &server,
        &["submit", "plain_worker", "echo", "{}", "--task-id", "p-1"],
    )
    .await;
    out.assert_success();
    let js = server.jetstream().await;
    let stream = js.get_stream("agent-tasks").await.unwrap();
    let consumer: async_nats::jetstream::consumer::PullConsumer = stream
        .create_consumer(async_nats::jetstream::consumer::pull::Config {
            durable_name: Some("plain-worker".into()),
            filter_subject: "tasks.plain_worker".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    let mut batch = consumer.fetch().max_messages(1).messages().await.unwrap();
    let message = batch.next().await.unwrap().unwrap();
    message.double_ack().await.unwrap();
    let out = cli(&server, &["task", "p-1", "--json"]).await;
    out.assert_success();
    let json = out.json();
    assert_eq!(json["state"], "finished_without_record", "{json}");
    let out = cli(&server, &["task", "p-1"]).await;
    assert!(
        out.stdout
            .starts_with("task p-1: finished without a record: it left tasks.plain_worker"),
        "{}",
        out.stdout
    );
}

// ---------------------------------------------------------------- dlq

#[tokio::test]
async fn dlq_lists_poison_tasks_and_replays_each_onto_its_queue_once() {
    let server = NatsServer::start().await;
    let probe = Probe::new("digester");
    let runtime = serve(
        &server,
        &probe,
        AgentOptions {
            delivery: DeliveryOptions {
                max_deliver: 2,
                ..fast().delivery
            },
            ..fast()
        },
    )
    .await;

    let out = cli(
        &server,
        &[
            "submit",
            "digester",
            "poison",
            r#"{"food": "glass"}"#,
            "--task-id",
            "poison-a",
        ],
    )
    .await;
    out.assert_success();
    let out = cli(
        &server,
        &[
            "submit",
            "digester",
            "poison",
            r#"{"food": "nails"}"#,
            "--task-id",
            "poison-b",
            "--wait",
        ],
    )
    .await;
    assert_eq!(out.status.code(), Some(1), "{out:#?}");
    assert_eq!(out.json()["status"], "failed");
    let bus = Bus::from_client(server.connect().await);
    bus.wait_task(&task_id("poison-a"), WAIT).await.unwrap();
    assert_eq!(probe.runs("poison-a"), 2);
    assert_eq!(probe.runs("poison-b"), 2);

    let out = cli(&server, &["dlq", "list", "--json"]).await;
    out.assert_success();
    let json = out.json();
    let letters = json["dead_letters"].as_array().unwrap();
    assert_eq!(letters.len(), 2, "{json:#}");
    let a = letters
        .iter()
        .find(|l| l["task_id"] == "poison-a")
        .unwrap_or_else(|| panic!("{json:#}"));
    assert_eq!(a["subject"], "tasks.digester", "{a}");
    assert_eq!(a["attempts"], 2, "{a}");
    assert_eq!(a["body"]["payload"], json!({"food": "glass"}), "{a}");
    let errors: Vec<&str> = a["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["error"].as_str().unwrap())
        .collect();
    assert_eq!(errors, ["cannot digest \"glass\""; 2], "{a}");
    assert!(a["sequence"].as_u64().is_some(), "{a}");

    let out = cli(&server, &["dlq", "list"]).await;
    out.assert_success();
    let lines: Vec<&str> = out.stdout.lines().collect();
    assert_eq!(
        lines[0].split_whitespace().collect::<Vec<_>>(),
        ["SEQ", "TASK", "SUBJECT", "ATTEMPTS", "WHEN", "REASON"],
        "{}",
        out.stdout
    );
    assert_eq!(lines.len(), 3, "{}", out.stdout);
    // Oldest first: the two tasks may have died in either order.
    let mut ids = Vec::new();
    for line in &lines[1..] {
        let cells: Vec<&str> = line.split_whitespace().collect();
        assert_eq!(&cells[2..4], ["tasks.digester", "2"], "{}", out.stdout);
        ids.push(cells[1]);
    }
    ids.sort_unstable();
    assert_eq!(ids, ["poison-a", "poison-b"], "{}", out.stdout);

    // Stop the agent so replayed tasks stay queued where the test can count them.
    runtime.shutdown(Duration::from_secs(1)).await;
    assert!(subject_counts(&server, "agent-tasks").await.is_empty());

    let out = cli(&server, &["dlq", "replay", "poison-a"]).await;
    out.assert_success();
    assert_eq!(
        out.stdout.trim(),
        "replayed 1 dead letter(s) onto their original queues"
    );
    let out = cli(&server, &["dlq", "replay", "poison-a"]).await;
    out.assert_one_error("nothing to replay for task poison-a");
    let out = cli(&server, &["dlq", "replay", "never-dead"]).await;
    let error = out.assert_one_error("nothing to replay for task never-dead");
    assert!(error.contains("agentbus dlq list"), "{error}");
    // The replayed task waits in its queue again, and `task` says so.
    let out = cli(&server, &["task", "poison-a", "--json"]).await;
    assert_eq!(out.json()["state"], "queued", "{}", out.stdout);
    assert_eq!(
        subject_counts(&server, "agent-tasks").await,
        BTreeMap::from([("tasks.digester".to_owned(), 1)])
    );
    let (stored, _) = last_on(&server, "agent-tasks", "tasks.digester").await;
    assert_eq!(stored["task_id"], "poison-a");
    assert_eq!(stored["payload"], json!({"food": "glass"}));
    let out = cli(&server, &["dlq", "list", "--json"]).await;
    let json = out.json();
    let left: Vec<&Value> = json["dead_letters"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| &l["task_id"])
        .collect();
    assert_eq!(left, [&json!("poison-b")], "{json:#}");

    let out = cli(&server, &["dlq", "replay", "--all"]).await;
    out.assert_success();
    assert_eq!(
        out.stdout.trim(),
        "replayed 1 dead letter(s) onto their original queues"
    );
    let out = cli(&server, &["dlq", "replay", "--all"]).await;
    out.assert_success();
    assert_eq!(out.stdout.trim(), "nothing to replay");
    assert_eq!(
        subject_counts(&server, "agent-tasks").await,
        BTreeMap::from([("tasks.digester".to_owned(), 2)])
    );
    let out = cli(&server, &["dlq", "list"]).await;
    out.assert_success();
    assert!(
        out.stdout.trim_end().ends_with("no dead letters"),
        "{}",
        out.stdout
    );

    let out = cli(&server, &["dlq", "replay"]).await;
    assert_eq!(out.status.code(), Some(2), "{out:#?}");
    let out = cli(&server, &["dlq", "replay", "poison-a", "--all"]).await;
    assert_eq!(out.status.code(), Some(2), "{out:#?}");
}

/// A dead letter keeps the trace context its task was stored with, and a
/// replay by a process that does not trace (this CLI without an OTLP
/// endpoint) stores the task again with it as it was: the run after the
/// replay stays in the task's trace.
#[tokio::test]
async fn a_replayed_dead_letter_keeps_its_trace_context() {
    const PARENT: &str = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
    let server = NatsServer::start().await;
    let probe = Probe::new("digester");
    let options = AgentOptions {
        delivery: DeliveryOptions {
            max_deliver: 1,
            ..fast().delivery
        },
        ..fast()
    };
    let runtime = serve(&server, &probe, options).await;
    let task = TaskRequest::new("poison", json!({"food": "glass"}));
    let mut headers = async_nats::HeaderMap::new();
    headers.insert("traceparent", PARENT);
    headers.insert("tracestate", "vendor=1");
    let js = server.jetstream().await;
    js.publish_with_headers("tasks.digester", headers, task.to_json().into())
        .await
        .unwrap()
        .await
        .unwrap();

    let id = task.task_id.to_string();
    let deadline = Instant::now() + WAIT;
    let letter = loop {
        let out = cli(&server, &["dlq", "list", "--json"]).await;
        out.assert_success();
        let json = out.json();
        let found = json["dead_letters"]
            .as_array()
            .unwrap()
            .iter()
            .find(|letter| letter["task_id"] == id.as_str())
            .cloned();
        if let Some(letter) = found {
            break letter;
        }
        assert!(Instant::now() < deadline, "no dead letter: {json:#}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(letter["traceparent"], PARENT, "{letter}");
    assert_eq!(letter["tracestate"], "vendor=1", "{letter}");

    runtime.shutdown(Duration::from_secs(1)).await;
    cli(&server, &["dlq", "replay", &id]).await.assert_success();
    let stored = js
        .get_stream("agent-tasks")
        .await
        .unwrap()
        .get_last_raw_message_by_subject("tasks.digester")
        .await
        .unwrap();
    let header = |name| {
        stored
            .headers
            .get(name)
            .map(|value| value.as_str().to_owned())
    };
    assert_eq!(
        header("Nats-Msg-Id"),
        Some(format!("replay-{}", letter["sequence"]))
    );
    assert_eq!(header("traceparent").as_deref(), Some(PARENT));
    assert_eq!(header("tracestate").as_deref(), Some("vendor=1"));
}
#[tokio::test]
async fn submit_wait_gives_up_after_its_timeout_with_one_line() {
    let server = NatsServer::start().await;
    let out = cli(
        &server,
        &[
            "submit",
            "nobody_home",
            "echo",
            "{}",
            "--task-id",
            "late-1",
            "--wait",
            "--timeout",
            "0.5",
        ],
    )
    .await;
    let stderr = out.assert_failure();
    assert_eq!(out.status.code(), Some(1), "{out:#?}");
    // First the warning that no such agent is known, then the error.
    let (warning, stderr) = stderr.split_once('\n').unwrap_or_default();
    assert!(
        one_warning(warning).contains(r#"no agent "nobody_home""#),
        "{}",
        out.stderr
    );
    assert_eq!(
        common::one_error_line(stderr),
        "error: task late-1 did not finish within 500ms; `agentbus task late-1` shows its state"
    );
    assert!(out.stdout.is_empty(), "{}", out.stdout);
    assert!(out.elapsed < Duration::from_secs(4), "{:?}", out.elapsed);
    // It stays queued for when the agent starts.
    assert_eq!(
        subject_counts(&server, "agent-tasks").await,
        BTreeMap::from([("tasks.nobody_home".to_owned(), 1)])
    );
    let out = cli(&server, &["task", "late-1", "--json"]).await;
    assert_eq!(out.json()["state"], "queued", "{}", out.stdout);
}

#[tokio::test]
async fn a_huge_timeout_is_refused_before_anything_is_sent() {
    let server = NatsServer::start().await;
    let probe = Probe::new("patient");
    let _runtime = serve(&server, &probe, fast()).await;
    for args in [
        &["request", "ghost", "echo", "{}", "--timeout", "1e30"][..],
        &["request", "patient", "echo", "{}", "--timeout", "1e30"],
        &[
            "submit",
            "patient",
            "echo",
            "{}",
            "--wait",
            "--timeout",
            "1e30",
        ],
    ] {
        let out = cli(&server, args).await;
        assert!(!out.stderr.contains("panicked"), "{args:?}: {}", out.stderr);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {out:#?}");
        let error = common::one_error_line(&out.stderr);
        assert!(
            error.contains("--timeout must be a positive number of seconds, at most a year"),
            "{error}"
        );
    }
    // Refused before anything was stored.
    assert!(subject_counts(&server, "agent-tasks").await.is_empty());
}

/// Runs `agentbus ARGS --server <server>` with its stdout a pipe nobody reads
/// (closed before it writes, as `agentbus ... | head -0` would).
async fn run_with_closed_stdout(server: &NatsServer, args: &[&str]) -> (ExitStatus, String) {
    let url = server.url_with_credentials();
    let mut child = common::command()
        .args(args)
        .args(["--server", url.as_str()])
        .env_remove("RUST_BACKTRACE")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn agentbus");
    drop(child.stdout.take());
    let output = tokio::time::timeout(WAIT, child.wait_with_output())
        .await
        .expect("agentbus exits")
        .unwrap();
    (
        output.status,
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[tokio::test]
async fn json_output_to_a_closed_pipe_exits_quietly() {
    let server = NatsServer::start().await;
    let out = cli(
        &server,
        &["submit", "reader", "echo", "{}", "--task-id", "some-task"],
    )
    .await;
    out.assert_success();
    for args in [
        &["send", "reader", "{}", "--json"][..],
        &["broadcast", "news", "{}", "--json"],
        &["task", "some-task", "--json"],
        &["dlq", "list"],
    ] {
        let (status, stderr) = run_with_closed_stdout(&server, args).await;
        assert!(status.success(), "{args:?}: {status}; {stderr}");
        assert!(stderr.is_empty(), "{args:?}: {stderr}");
    }
}

#[tokio::test]
async fn text_output_to_a_closed_pipe_exits_quietly() {
    let server = NatsServer::start().await;
    let out = cli(
        &server,
        &["submit", "reader", "echo", "{}", "--task-id", "some-task"],
    )
    .await;
    out.assert_success();
    for args in [
        &["publish", "app.events.x", "{}"][..],
        &["send", "reader", "{}"],
        &["submit", "reader", "echo", "{}"],
        &["task", "some-task"],
    ] {
        let (status, stderr) = run_with_closed_stdout(&server, args).await;
        assert!(!stderr.contains("panicked"), "{args:?}: {stderr}");
        assert!(status.success(), "{args:?}: {status}; {stderr}");
    }
}

#[tokio::test]
async fn send_with_an_empty_message_id_is_refused() {
    let server = NatsServer::start().await;
    for _ in 0..2 {
        let out = cli(&server, &["send", "reader", "{}", "--message-id", ""]).await;
        out.assert_one_error("invalid message id");
    }
    let counts = subject_counts(&server, "agent-messages").await;
    assert_eq!(counts.get("agent.reader.inbox"), None, "{counts:?}");
}

// ---------------------------------------------------------------- bad servers

#[tokio::test]
async fn an_unreachable_server_fails_fast_with_one_line() {
    // Nothing listens there, and no other test's server can take it meanwhile.
    let closed = ClosedPort::new();
    let port = closed.port();
    let url = format!("nats://127.0.0.1:{port}");
    for args in [
        &["publish", "app.events.x", "{}"][..],
        &["request", "someone", "echo", "{}"],
        &["submit", "someone", "echo", "{}"],
        &["dlq", "list"],
    ] {
        let mut all = args.to_vec();
        all.extend(["--server", url.as_str()]);
        let out = common::run(&all).await;
        out.assert_one_error(&format!("cannot reach NATS at {url}"));
        assert!(
            out.elapsed < Duration::from_secs(5),
            "{args:?}: {:?}",
            out.elapsed
        );
    }
}

#[tokio::test]
async fn wrong_credentials_or_no_server_configured_fail_with_one_line() {
    let server = NatsServer::start().await;
    let (url, secret) = server.url_with_wrong_password();
    let out = common::run(["publish", "app.x", "{}", "--server", &url]).await;
    let stderr = out.assert_failure();
    let error = common::one_error_line(stderr);
    assert!(error.contains("refused the credentials"), "{stderr}");
    assert!(!stderr.contains(&secret), "{stderr}");
    assert!(out.elapsed < Duration::from_secs(5), "{:?}", out.elapsed);

    let empty = tempfile::tempdir().unwrap();
    let out = common::run([
        "send".as_ref(),
        "someone".as_ref(),
        "{}".as_ref(),
        "--data-dir".as_ref(),
        empty.path().as_os_str(),
    ])
    .await;
    let stderr = out.assert_failure();
    assert!(
        common::one_error_line(stderr).contains("no NATS server configured"),
        "{stderr}"
    );
}
