//! The programs in `examples/`, run as a reader runs them (the README's
//! `cargo run --release --example ...`), against a real nats-server: the
//! server reaches them through `NATS_URL` only, and a language model is
//! played by a small HTTP server on 127.0.0.1:0.
//!
//! The binaries are the ones `cargo test` builds beside this test, in
//! `target/<profile>/examples/`: cargo builds examples whenever no target is
//! selected, so `cargo test` and `cargo test -p agentbus` test the current
//! examples. A binary that is missing or older than its sources is refused,
//! not run (see [`example`]).

use agentbus::{Bus, Priority, TaskStatus};
use agentbus_testkit::{LlmServer, NatsServer};
use futures::StreamExt;
use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::{Duration, Instant, SystemTime};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader, Lines};
use tokio::process::{Child, ChildStdout, Command};
use tokio::task::JoinHandle;

/// Start-up, answers and shutdown of an example stay well within this.
const WAIT: Duration = Duration::from_secs(30);

/// Variables that would point an example elsewhere than the test's server
/// or model.
const REDIRECTING_VARS: &[&str] = &[
    "NATS_URL",
    "NATS_USER",
    "NATS_PASSWORD",
    "NATS_TOKEN",
    "NATS_CREDS",
    "NATS_CA",
    "AGENTBUS_MONITOR_URL",
    "AGENTBUS_DATA_DIR",
    "LLM_BASE_URL",
    "LLM_API_KEY",
    "LLM_MODEL",
    "AGENTBUS_METRICS_ADDR",
];

#[tokio::test]
async fn llm_agent_echoes_for_the_orchestrator_and_stops_on_ctrl_c() {
    let server = NatsServer::start().await;
    let mut agent = Running::start(
        "llm_agent",
        &server,
        &[("AGENTBUS_METRICS_ADDR", "127.0.0.1:0")],
    )
    .await;
    assert!(agent.ready.contains("in echo mode"), "{}", agent.ready);
    let metrics = agent
        .ready
        .split_once("metrics at ")
        .and_then(|(_, rest)| rest.split_once(';'))
        .map(|(url, _)| url.to_owned())
        .unwrap_or_else(|| panic!("no metrics address in: {}", agent.ready));

    let out = run(
        "orchestrator",
        &server,
        &["The quick brown   fox\njumps over", "3"],
    )
    .await;
    assert!(out.status.success(), "{out:?}");
    let response: Value = serde_json::from_str(&out.stdout).expect("the TaskResponse as JSON");
    assert_eq!(response["status"], "completed", "{response}");
    assert_eq!(response["result"]["text"], "The quick brown", "{response}");
    assert_eq!(response["result"]["mode"], "echo", "{response}");
    assert_eq!(response["error"], Value::Null, "{response}");

    // The agent's schema refuses a prompt that is not a string.
    let bus = Bus::connect(&server.target(), "test").await.unwrap();
    let rejected = bus
        .publish_task(
            "llm_agent",
            "generate_text",
            json!({"prompt": 1}),
            Priority::Normal,
        )
        .await
        .unwrap();
    assert_eq!(rejected.status, TaskStatus::Rejected, "{rejected:?}");

    // Its metrics count both.
    let text = reqwest::get(&metrics).await.unwrap().text().await.unwrap();
    let counted = |outcome: &str| {
        let line = format!(
            "agentbus_tasks_total{{agent=\"llm_agent\",task_type=\"generate_text\",outcome=\"{outcome}\"}} 1"
        );
        assert!(text.lines().any(|l| l == line), "no {line:?} in:\n{text}");
    };
    counted("completed");
    counted("rejected");

    let bad = run("orchestrator", &server, &["hi", "x"]).await;
    assert_eq!(bad.status.code(), Some(1), "{bad:?}");
    assert_eq!(
        bad.stderr.trim(),
        r#"orchestrator: max_tokens must be a positive integer, not "x""#
    );

    let status = agent.interrupt().await;
    assert_eq!(status.code(), Some(0), "{status}: {}", agent.stderr().await);
    let alone = run("orchestrator", &server, &["hi"]).await;
    assert_eq!(alone.status.code(), Some(1), "{alone:?}");
    assert!(
        alone
            .stderr
            .contains(r#"no agent named "llm_agent" is running"#),
        "{alone:?}"
    );
}

#[tokio::test]
async fn llm_agent_asks_the_model_at_llm_base_url() {
    // Tells a story, except for the prompt "refuse", which gets the 401 of a
    // wrong key (repeating the key in its body, as some providers do).
    let mut model = LlmServer::start(|request| {
        let prompt = request.prompt().unwrap_or_default();
        if prompt == "refuse" {
            let key = request.header("authorization").unwrap_or_default();
            let error = json!({"error": {"message": format!("Incorrect API key: {key}")}});
            (401, error.to_string())
        } else {
            let content = format!("Once upon a time: {prompt}");
            let completion =
                json!({"choices": [{"message": {"role": "assistant", "content": content}}]});
            (200, completion.to_string())
        }
    })
    .await;
    let server = NatsServer::start().await;
    let base_url = format!("{}/", model.base_url());
    let agent = Running::start(
        "llm_agent",
        &server,
        &[
            ("LLM_BASE_URL", base_url.as_str()),
            ("LLM_API_KEY", "sk-test-123"),
            ("LLM_MODEL", "tiny"),
        ],
    )
    .await;
    let completions = format!("{}/chat/completions", model.base_url());
    assert!(
        agent
            .ready
            .contains(&format!("in model tiny at {completions}")),
        "{}",
        agent.ready
    );

    let out = run("orchestrator", &server, &["a robot", "7"]).await;
    assert!(out.status.success(), "{out:?}");
    let response: Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(
        response["result"],
        json!({"text": "Once upon a time: a robot", "model": "tiny", "mode": "model"}),
        "{response}"
    );
    let request = model.next_request().await;
    assert_eq!(request.method_and_path, "POST /v1/chat/completions");
    assert_eq!(request.header("authorization"), Some("Bearer sk-test-123"));
    assert_eq!(
        request.body,
        json!({"model": "tiny", "messages": [{"role": "user", "content": "a robot"}], "max_tokens": 7})
    );

    // The fake model refuses this prompt, repeating the key in its body.
    let refused = run("orchestrator", &server, &["refuse"]).await;
    assert_eq!(refused.status.code(), Some(1), "{refused:?}");
    let response: Value = serde_json::from_str(&refused.stdout).unwrap();
    assert_eq!(response["status"], "failed", "{response}");
    assert_eq!(
        response["error"],
        format!(
            "the model at {completions} answered HTTP 401 Unauthorized; check LLM_API_KEY and LLM_MODEL"
        )
    );
    assert_eq!(model.next_request().await.body["max_tokens"], 200);
    assert!(!refused.stdout.contains("sk-test-123"), "{refused:?}");
}

#[tokio::test]
async fn chat_manager_posts_one_chat_message_event() {
    let server = NatsServer::start().await;
    let watcher = Bus::connect(&server.target(), "watcher").await.unwrap();
    let mut chat = watcher.subscribe("chat.>", None).await.unwrap();
    watcher.sync().await.unwrap();

    let out = run("chat_manager", &server, &["session-7", "hello there"]).await;
    assert!(out.status.success(), "{out:?}");
    let message_id = out
        .stdout
        .trim()
        .strip_prefix("published chat.message.new for session session-7: message_id ")
        .unwrap_or_else(|| panic!("{out:?}"));
    let event = tokio::time::timeout(WAIT, chat.next())
        .await
        .expect("the event arrives")
        .expect("the subscription is open");
    assert_eq!(event.subject, "chat.message.new");
    assert_eq!(
        event.json::<Value>().unwrap(),
        json!({"session_id": "session-7", "message_id": message_id, "content": "hello there"})
    );
}

#[tokio::test]
async fn enhancement_agent_counts_feedback_and_stops_on_ctrl_c() {
    let server = NatsServer::start().await;
    // Someone watches the whole bus, as `nats sub '>'` does: the agent's
    // subscriptions are still confirmed at once.
    let _watcher = server.watch_everything().await;
    let started = Instant::now();
    let mut agent = Running::start("enhancement_agent", &server, &[]).await;
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "the example took {:?} to start with a `>` subscriber on the bus",
        started.elapsed()
    );
    let bus = Bus::connect(&server.target(), "users").await.unwrap();
    // One publisher's messages arrive in order: the garbage comes first.
    let feedback = agentbus::subject::Subject::parse("enhancement.feedback").unwrap();
    bus.publish_bytes(&feedback, "not json".into())
        .await
        .unwrap();
    for rating in 1..=3 {
        bus.publish("enhancement.feedback", &json!({"rating": rating}))
            .await
            .unwrap();
    }
    bus.flush().await.unwrap();

    let printed = [
        r#"ignored a message on enhancement.feedback that is not JSON: "#,
        r#"feedback #1: {"rating":1}"#,
        r#"feedback #2: {"rating":2}"#,
        r#"feedback #3: {"rating":3}"#,
    ];
    for expected in printed {
        let line = agent.next_line().await;
        assert!(line.starts_with(expected), "{line:?} is not {expected:?}");
    }
    let summary = bus
        .publish_task(
            "enhancement_agent",
            "feedback_summary",
            json!({}),
            Priority::Normal,
        )
        .await
        .unwrap();
    assert_eq!(summary.status, TaskStatus::Completed, "{summary:?}");
    assert_eq!(
        summary.result,
        Some(json!({"feedback_seen": 3, "last_feedback": {"rating": 3}}))
    );

    let status = agent.interrupt().await;
    assert_eq!(status.code(), Some(0), "{status}: {}", agent.stderr().await);
}

/// The example binary `name` that `cargo test` builds beside this test
/// (`target/<profile>/examples/<name>`). Cargo builds examples only when no
/// target is selected, so after `cargo test --test examples` alone the
/// binary may be missing or older than the code it was built from: then the
/// test stops and says how to build it, rather than test stale code.
fn example(name: &str) -> PathBuf {
    let test_binary = std::env::current_exe().expect("the test binary's path");
    let profile_dir = test_binary
        .parent()
        .and_then(Path::parent)
        .expect("the test binary is in target/<profile>/deps");
    let binary = profile_dir.join("examples").join(name);
    let crate_dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    let sources = [
        crate_dir.join("examples").join(format!("{name}.rs")),
        crate_dir.join("src"),
    ];
    let newest_source = sources.iter().map(|path| newest_change(path)).max();
    let built = std::fs::metadata(&binary).and_then(|m| m.modified()).ok();
    assert!(
        built.is_some() && built >= newest_source,
        "the example binary {} is missing or older than its sources; build the examples with `cargo build --examples -p agentbus`, or run `cargo test` without selecting targets, which builds them",
        binary.display()
    );
    binary
}

/// When the file at `path`, or anything under it, last changed.
fn newest_change(path: &Path) -> SystemTime {
    let metadata = std::fs::metadata(path)
        .unwrap_or_else(|err| panic!("cannot read {}: {err}", path.display()));
    let own = metadata.modified().expect("file times are available");
    if !metadata.is_dir() {
        return own;
    }
    std::fs::read_dir(path)
        .unwrap_or_else(|err| panic!("cannot list {}: {err}", path.display()))
        .map(|entry| newest_change(&entry.expect("a directory entry").path()))
        .fold(own, SystemTime::max)
}

/// Example `name` as a command: only `server` configured (plus `env`),
/// stdin null, killed on drop.
fn command(name: &str, server: &NatsServer, env: &[(&str, &str)]) -> Command {
    let mut command = Command::new(example(name));
    for var in REDIRECTING_VARS {
        command.env_remove(var);
    }
    command
        .env("NATS_URL", server.url_with_credentials())
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .kill_on_drop(true);
    command
}

/// A finished example.
#[derive(Debug)]
struct Output {
    status: ExitStatus,
    stdout: String,
    stderr: String,
}

/// Runs example `name` with `args` to completion.
async fn run(name: &str, server: &NatsServer, args: &[&str]) -> Output {
    let output = tokio::time::timeout(WAIT, command(name, server, &[]).args(args).output())
        .await
        .unwrap_or_else(|_| panic!("the {name} example did not finish within {WAIT:?}"))
        .unwrap_or_else(|err| panic!("cannot run the {name} example: {err}"));
    Output {
        status: output.status,
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

/// An example that serves until interrupted, killed on drop.
struct Running {
    child: Child,
    stdout: Lines<BufReader<ChildStdout>>,
    stderr: JoinHandle<String>,
    /// The first line it printed: it serves from then on.
    ready: String,
}

impl Running {
    /// Starts example `name` and waits for its first line.
    async fn start(name: &str, server: &NatsServer, env: &[(&str, &str)]) -> Self {
        let mut child = command(name, server, env)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|err| panic!("cannot start the {name} example: {err}"));
        let stdout = BufReader::new(child.stdout.take().expect("stdout is piped")).lines();
        let mut pipe = child.stderr.take().expect("stderr is piped");
        let stderr = tokio::spawn(async move {
            let mut text = String::new();
            let _ = pipe.read_to_string(&mut text).await;
            text
        });
        let mut running = Self {
            child,
            stdout,
            stderr,
            ready: String::new(),
        };
        running.ready = running.next_line().await;
        running
    }

    /// The next line it prints.
    async fn next_line(&mut self) -> String {
        match tokio::time::timeout(WAIT, self.stdout.next_line()).await {
            Ok(Ok(Some(line))) => line,
            other => {
                let _ = self.child.start_kill();
                panic!(
                    "no line from the example ({other:?}); stderr: {}",
                    self.stderr().await
                )
            }
        }
    }

    /// Everything it printed on stderr, once it has exited.
    async fn stderr(&mut self) -> String {
        match tokio::time::timeout(WAIT, &mut self.stderr).await {
            Ok(Ok(text)) => text,
            other => format!("(stderr not available: {other:?})"),
        }
    }

    /// Sends SIGINT, as Ctrl-C does, once it listens for it, and waits for it to exit.
    async fn interrupt(&mut self) -> ExitStatus {
        let pid = self.child.id().expect("the example is running");
        wait_for_sigint_handler(pid).await;
        let sent = std::process::Command::new("kill")
            .args(["-INT", &pid.to_string()])
            .status()
            .expect("run kill");
        assert!(sent.success(), "kill -INT {pid} failed");
        tokio::time::timeout(WAIT, self.child.wait())
            .await
            .expect("the example exits after SIGINT")
            .expect("wait for the example")
    }
}

/// Waits until `pid` catches SIGINT (bit 2 of `SigCgt` in /proc/PID/status).
///
/// An example may print its first line before it listens for Ctrl-C (as
/// `Runtime::run_until_signal` does); a SIGINT before that would kill it with
/// the default action instead of testing its shutdown. There is no event to
/// await, so /proc is polled.
async fn wait_for_sigint_handler(pid: u32) {
    const SIGINT_BIT: u64 = 1 << (2 - 1);
    let deadline = Instant::now() + WAIT;
    loop {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
            .unwrap_or_else(|err| panic!("process {pid} is gone: {err}"));
        let caught = status
            .lines()
            .find_map(|line| line.strip_prefix("SigCgt:"))
            .and_then(|mask| u64::from_str_radix(mask.trim(), 16).ok())
            .unwrap_or(0);
        if caught & SIGINT_BIT != 0 {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "process {pid} did not listen for SIGINT within {WAIT:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
