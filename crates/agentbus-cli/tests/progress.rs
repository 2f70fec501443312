//! Commands that wait show it on a terminal (a spinner or a bar on stderr)
//! and stay quiet in `--json` mode and when not on a terminal: run on a
//! real pseudo-terminal against a real nats-server.

mod common;

use agentbus::delivery::{DeliveryOptions, Queue};
use agentbus::{
    Agent, AgentOptions, Bus, Runtime, TaskContext, TaskError, TaskRequest, TaskTypeSpec,
};
use agentbus_testkit::NatsServer;
use common::{run, run_on_terminal};
use serde_json::{Value, json};
use std::time::{Duration, Instant};

/// `args` with `--server <server>` added.
fn with_server(server: &NatsServer, args: &[&str]) -> Vec<String> {
    let mut all: Vec<String> = args.iter().map(|arg| (*arg).to_owned()).collect();
    all.extend(["--server".to_owned(), server.url_with_credentials()]);
    all
}

/// An agent whose tasks fail for good: each becomes a dead letter at once.
struct Refuser;

impl Agent for Refuser {
    fn name(&self) -> &str {
        "refuser"
    }

    fn task_types(&self) -> Vec<TaskTypeSpec> {
        vec![TaskTypeSpec::new("anything").unwrap()]
    }

    async fn handle(&self, _task: TaskRequest, _ctx: TaskContext) -> Result<Value, TaskError> {
        Err(TaskError::permanent("refused"))
    }
}

#[tokio::test]
async fn check_shows_a_spinner_on_a_terminal_only_without_json() {
    let server = NatsServer::start().await;
    let shown = run_on_terminal(with_server(&server, &["check"])).await;
    shown.assert_success();
    assert!(shown.stdout.contains("checking"), "{}", shown.stdout);
    assert!(shown.stdout.contains("STATUS"), "{}", shown.stdout);

    let json = run_on_terminal(with_server(&server, &["check", "--json"])).await;
    json.assert_success();
    assert!(!json.stdout.contains("checking"), "{}", json.stdout);
    let document: Value = serde_json::from_str(json.stdout.trim()).expect("only JSON is shown");
    assert!(document["checks"].is_array(), "{document}");

    // Not on a terminal: nothing but the table.
    let piped = run(with_server(&server, &["check"])).await;
    piped.assert_success();
    assert!(!piped.stderr.contains("checking"), "{}", piped.stderr);
}

#[tokio::test]
async fn submit_wait_and_task_watch_show_what_they_wait_for() {
    let server = NatsServer::start().await;
    // No agent takes it: the command waits until its timeout, saying so.
    let submit = |timeout: &str| {
        let args = [
            "submit",
            "nobody",
            "anything",
            "{}",
            "--wait",
            "--timeout",
            timeout,
        ];
        with_server(&server, &args)
    };
    let started = Instant::now();
    let shown = run_on_terminal(submit("2")).await;
    assert!(!shown.status.success(), "{}", shown.stdout);
    assert!(started.elapsed() >= Duration::from_secs(2));
    assert!(
        shown.stdout.contains("waiting for task"),
        "{}",
        shown.stdout
    );
    let piped = run(submit("1")).await;
    assert!(
        !piped.stderr.contains("waiting for task"),
        "{}",
        piped.stderr
    );

    // A queued task nobody runs: `task watch` waits for its first event.
    let bus = Bus::from_client(server.connect().await);
    let task = TaskRequest::new("anything", json!({})).streamed();
    bus.submit_recorded(
        &Queue::agent("nobody").unwrap(),
        &task,
        agentbus::delivery::ResultRetention::Keep,
    )
    .await
    .unwrap();
    let id = task.task_id.to_string();
    // Cancelled after a while: until then the watch waits, saying so.
    let canceller = bus.clone();
    let cancel = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(1500)).await;
        canceller.cancel(&task.task_id).await.unwrap();
    });
    let shown = run_on_terminal(with_server(&server, &["task", "watch", &id])).await;
    cancel.await.unwrap();
    assert!(shown.stdout.contains("waiting for"), "{}", shown.stdout);
    assert!(shown.stdout.contains("cancelled"), "{}", shown.stdout);
}

#[tokio::test]
async fn dlq_replay_all_shows_a_bar_of_the_letters() {
    let server = NatsServer::start().await;
    let bus = Bus::from_client(server.connect().await);
    let mut runtime = Runtime::new(Bus::from_client(server.connect().await));
    let options = AgentOptions {
        delivery: DeliveryOptions {
            idle_poll: Duration::from_millis(100),
            ..DeliveryOptions::default()
        },
        ..AgentOptions::default()
    };
    runtime.add(Refuser, options).await.unwrap();
    let queue = Queue::agent("refuser").unwrap();
    for _ in 0..3 {
        bus.submit(&queue, &TaskRequest::new("anything", json!({})))
            .await
            .unwrap();
    }
    let deadline = Instant::now() + Duration::from_secs(15);
    while bus.dead_letters().await.unwrap().len() < 3 {
        assert!(Instant::now() < deadline, "three dead letters within 15 s");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    runtime.shutdown(Duration::from_secs(1)).await;

    let shown = run_on_terminal(with_server(&server, &["dlq", "replay", "--all"])).await;
    shown.assert_success();
    assert!(
        shown.stdout.contains("replaying dead letters"),
        "{}",
        shown.stdout
    );
    assert!(
        shown.stdout.contains("replayed 3 dead letter(s)"),
        "{}",
        shown.stdout
    );

    // With --json: one document, nothing else.
    let json = run_on_terminal(with_server(&server, &["dlq", "replay", "--all", "--json"])).await;
    json.assert_success();
    let document: Value = serde_json::from_str(json.stdout.trim()).expect("only JSON is shown");
    assert_eq!(document, json!({ "replayed": 0 }));
}
