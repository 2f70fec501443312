//! Every way of subscribing works while a plain `>` subscriber watches the
//! whole bus from another connection, as `nats sub '>'` does: the library's
//! `Bus::subscribe`, `Runtime::add` with presence and durable messages,
//! `agentbus tail` with wildcards, and the demo's enhancement agent. Each is
//! confirmed at once: a confirmation that relied on "no responders" for an
//! internal subject waited 10 s for an answer the watcher swallowed, then failed.

mod common;

use agentbus::presence::online_agents;
use agentbus::state::StateStore;
use agentbus::{
    Agent, AgentMessage, AgentOptions, Bus, RequestOptions, Runtime, TaskContext, TaskError,
    TaskRequest, TaskStatus, TaskTypeSpec,
};
use agentbus_demo::{
    ENHANCEMENT_AGENT, ENHANCEMENT_FEEDBACK, EnhancementAgent, FEEDBACK_SUMMARY, FEEDBACK_TOPIC,
    MessageLog,
};
use agentbus_testkit::NatsServer;
use futures::StreamExt;
use serde_json::{Value, json};
use std::collections::BTreeSet;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::sync::mpsc;

/// How long a subscription may take to be confirmed: well under the 10 s a
/// swallowed confirmation used to wait, with room for a loaded machine.
const QUICK: Duration = Duration::from_secs(5);
/// How long a message or an answer may take to arrive.
const WAIT: Duration = Duration::from_secs(15);

#[tokio::test]
async fn every_subscribe_path_works_at_once_while_a_wildcard_subscriber_watches() {
    let server = NatsServer::start().await;
    let watcher = Watcher::start(&server).await;
    let publisher = Bus::connect(&server.target(), "publisher").await.unwrap();

    // The library: a plain subscription and a queue subscription.
    for group in [None, Some("readers")] {
        let bus = Bus::connect(&server.target(), "subscriber").await.unwrap();
        let started = Instant::now();
        let mut events = bus.subscribe("events.>", group).await.unwrap();
        assert_quick(&format!("Bus::subscribe (queue group {group:?})"), started);
        let subject = format!("events.watched.{}", group.unwrap_or("none"));
        publisher.publish(&subject, &json!({"n": 1})).await.unwrap();
        let event = tokio::time::timeout(WAIT, events.next())
            .await
            .expect("the event arrives")
            .expect("the subscription is open");
        assert_eq!(event.subject, subject);
        assert_eq!(event.json::<Value>().unwrap(), json!({"n": 1}));
        watcher.saw(&subject).await;
    }

    // The runtime: an agent with presence and durable messages serves tasks
    // and takes messages.
    let (messages, mut arrived) = mpsc::unbounded_channel();
    let mut runtime = Runtime::new(Bus::connect(&server.target(), "agents").await.unwrap());
    let started = Instant::now();
    runtime
        .add(
            Watched { messages },
            AgentOptions {
                messages: true,
                presence: true,
                ..AgentOptions::default()
            },
        )
        .await
        .unwrap();
    assert_quick("Runtime::add", started);
    let request = TaskRequest::new("echo", json!({"x": 1}));
    let response = publisher
        .request("watched", &request, answer_within())
        .await
        .unwrap();
    assert_eq!(response.status, TaskStatus::Completed, "{response:?}");
    assert_eq!(response.result, Some(json!({"x": 1})));
    publisher
        .send("watched", &json!({"note": "hi"}))
        .await
        .unwrap();
    let message = tokio::time::timeout(WAIT, arrived.recv())
        .await
        .expect("the message arrives")
        .unwrap();
    assert_eq!(message.body, json!({"note": "hi"}));
    let store = StateStore::open(&publisher, None).await.unwrap();
    let online: Vec<String> = online_agents(&store)
        .await
        .unwrap()
        .into_iter()
        .map(|agent| agent.name)
        .collect();
    assert!(online.iter().any(|name| name == "watched"), "{online:?}");
    runtime.shutdown(Duration::from_secs(5)).await;

    // The CLI: `agentbus tail` with each kind of wildcard.
    let url = server.url_with_credentials();
    for (index, pattern) in [">", "*.>", "*.*.*"].into_iter().enumerate() {
        let subject = format!("tail.watched.{index}");
        let mut tail = Tail::start(&url, pattern).await;
        publisher
            .publish(&subject, &json!({"pattern": pattern}))
            .await
            .unwrap();
        let line = tail.line_for(&subject).await;
        assert_eq!(line["data"], json!({"pattern": pattern}), "{line}");
        watcher.saw(&subject).await;
    }

    // The demo's enhancement agent: its event subscription, and the agent
    // itself with durable messages on.
    let (arrivals, mut arrived) = mpsc::unbounded_channel();
    let agent_bus = Bus::connect(&server.target(), "demo").await.unwrap();
    let started = Instant::now();
    let (agent, _consumer) = EnhancementAgent::start(&agent_bus, Some(ENHANCEMENT_AGENT))
        .await
        .unwrap();
    let agent = agent.with_message_log(MessageLog::with_listener(arrivals));
    let mut runtime = Runtime::new(agent_bus);
    runtime
        .add(agent.clone(), EnhancementAgent::options())
        .await
        .unwrap();
    assert_quick("the demo's enhancement agent", started);
    publisher
        .publish(ENHANCEMENT_FEEDBACK, &json!({"rating": 4}))
        .await
        .unwrap();
    tokio::time::timeout(WAIT, agent.wait_for(1))
        .await
        .expect("the feedback event arrives");
    let summary = publisher
        .request(
            ENHANCEMENT_AGENT,
            &TaskRequest::new(FEEDBACK_SUMMARY, json!({})),
            answer_within(),
        )
        .await
        .unwrap();
    assert_eq!(summary.status, TaskStatus::Completed, "{summary:?}");
    assert_eq!(
        summary.result,
        Some(json!({"feedback_seen": 1, "last_feedback": {"rating": 4}, "undecodable": 0}))
    );
    publisher
        .broadcast(FEEDBACK_TOPIC, &json!({"rating": 5}))
        .await
        .unwrap();
    let arrival = tokio::time::timeout(WAIT, arrived.recv())
        .await
        .expect("the broadcast arrives")
        .unwrap();
    assert_eq!(arrival.agent, ENHANCEMENT_AGENT, "{arrival:?}");
    assert_eq!(arrival.message.body, json!({"rating": 5}), "{arrival:?}");
    runtime.shutdown(Duration::from_secs(5)).await;
}

fn assert_quick(what: &str, started: Instant) {
    let took = started.elapsed();
    assert!(
        took < QUICK,
        "{what} took {took:?} with a `>` subscriber on the bus"
    );
}

fn answer_within() -> RequestOptions {
    RequestOptions {
        timeout: WAIT,
        retries: 0,
    }
}

/// A plain NATS client subscribed to `>`, recording every subject it sees.
struct Watcher {
    seen: Arc<Mutex<BTreeSet<String>>>,
    grew: tokio::sync::watch::Receiver<()>,
    _client: async_nats::Client,
}

impl Watcher {
    /// Subscribes to `>` and returns once the server delivers to it.
    async fn start(server: &NatsServer) -> Self {
        let (client, mut all) = server.watch_everything().await;
        let seen = Arc::new(Mutex::new(BTreeSet::new()));
        let (grew_tx, grew) = tokio::sync::watch::channel(());
        let recorded = seen.clone();
        tokio::spawn(async move {
            while let Some(message) = all.next().await {
                recorded.lock().unwrap().insert(message.subject.to_string());
                grew_tx.send_replace(());
            }
        });
        Self {
            seen,
            grew,
            _client: client,
        }
    }

    /// Waits until the watcher has seen a message on `subject`: it really
    /// watches what the test publishes.
    async fn saw(&self, subject: &str) {
        let mut grew = self.grew.clone();
        let found = tokio::time::timeout(WAIT, async {
            loop {
                grew.mark_unchanged();
                if self.seen.lock().unwrap().contains(subject) {
                    return;
                }
                grew.changed().await.expect("the watcher is running");
            }
        })
        .await;
        assert!(found.is_ok(), "the `>` subscriber never saw {subject}");
    }
}

/// An agent that echoes its task payload and hands on its messages.
struct Watched {
    messages: mpsc::UnboundedSender<AgentMessage>,
}

impl Agent for Watched {
    fn name(&self) -> &str {
        "watched"
    }

    fn task_types(&self) -> Vec<TaskTypeSpec> {
        vec![TaskTypeSpec::new("echo").unwrap()]
    }

    async fn handle(&self, task: TaskRequest, _ctx: TaskContext) -> Result<Value, TaskError> {
        Ok(task.payload.into_value())
    }

    async fn handle_message(
        &self,
        message: AgentMessage,
        _ctx: TaskContext,
    ) -> Result<(), TaskError> {
        let _ = self.messages.send(message);
        Ok(())
    }
}

/// A running `agentbus tail PATTERN --json`, killed on drop.
struct Tail {
    lines: tokio::io::Lines<BufReader<tokio::process::ChildStdout>>,
    _child: tokio::process::Child,
}

impl Tail {
    /// Starts it and waits for its "listening on" line, which it prints once
    /// the server has confirmed the subscription.
    async fn start(url: &str, pattern: &str) -> Self {
        let started = Instant::now();
        let mut child = common::command()
            .args(["tail", pattern, "--json", "--server", url])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn agentbus tail");
        let mut stderr = BufReader::new(child.stderr.take().unwrap()).lines();
        let listening = tokio::time::timeout(WAIT, stderr.next_line())
            .await
            .unwrap_or_else(|_| panic!("`tail {pattern}` printed nothing within {WAIT:?}"))
            .unwrap();
        assert_eq!(
            listening.as_deref(),
            Some(format!("listening on {pattern} (Ctrl-C to stop)").as_str()),
            "`tail {pattern}`"
        );
        assert_quick(&format!("`agentbus tail {pattern}`"), started);
        Self {
            lines: BufReader::new(child.stdout.take().unwrap()).lines(),
            _child: child,
        }
    }

    /// The first printed message on `subject` (others may come first).
    async fn line_for(&mut self, subject: &str) -> Value {
        tokio::time::timeout(WAIT, async {
            loop {
                let line = self
                    .lines
                    .next_line()
                    .await
                    .unwrap()
                    .expect("tail is still running");
                let line: Value = serde_json::from_str(&line).unwrap();
                if line["subject"] == subject {
                    return line;
                }
            }
        })
        .await
        .unwrap_or_else(|_| panic!("tail printed nothing on {subject} within {WAIT:?}"))
    }
}
