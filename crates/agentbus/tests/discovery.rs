//! Served agents answer the NATS services protocol (`$SRV.PING|INFO|STATS`)
//! over core NATS, as `nats micro ls/info/stats` ask it, against a real
//! nats-server. Answers are parsed with async-nats's own `service` types too,
//! so standard tooling reads them.

use agentbus::discovery::{
    InfoResponse, PING_RESPONSE_TYPE, PingResponse, STATS_RESPONSE_TYPE, StatsResponse,
};
use agentbus::{
    Agent, AgentOptions, Bus, Priority, Runtime, TaskContext, TaskError, TaskRequest, TaskStatus,
    TaskTypeSpec,
};
use agentbus_testkit::NatsServer;
use bytes::Bytes;
use futures::StreamExt;
use serde_json::{Value, json};
use std::time::Duration;

/// How long to collect answers to one discovery request: every responder is
/// on the same loopback server, so they all answer well within it.
const COLLECT: Duration = Duration::from_millis(750);

/// An agent with two task types; `fail` fails.
struct Probe {
    name: &'static str,
}

impl Agent for Probe {
    fn name(&self) -> &str {
        self.name
    }

    fn task_types(&self) -> Vec<TaskTypeSpec> {
        vec![
            TaskTypeSpec::new("echo").unwrap(),
            TaskTypeSpec::new("fail").unwrap(),
        ]
    }

    async fn handle(&self, task: TaskRequest, _ctx: TaskContext) -> Result<Value, TaskError> {
        match task.task_type.as_str() {
            "fail" => Err(TaskError::permanent("failed on purpose")),
            _ => {
                // Long enough for a measurable processing time.
                tokio::time::sleep(Duration::from_millis(5)).await;
                Ok(json!({"echo": task.payload}))
            }
        }
    }
}

async fn serve(server: &NatsServer, agent: Probe) -> (Runtime, Bus) {
    let bus = Bus::connect(&server.target(), "discovery-agents")
        .await
        .unwrap();
    let mut runtime = Runtime::new(bus.clone());
    let options = AgentOptions {
        task_events: false,
        ..AgentOptions::default()
    };
    runtime.add(agent, options).await.unwrap();
    // The server has processed the subscriptions once a round trip returns.
    bus.sync().await.unwrap();
    (runtime, bus)
}

/// Sends one core NATS request to `subject` and collects every answer that
/// arrives within [`COLLECT`].
async fn collect(bus: &Bus, subject: &str) -> Vec<Bytes> {
    let client = bus.client();
    let inbox = client.new_inbox();
    let mut answers = client.subscribe(inbox.clone()).await.unwrap();
    client
        .publish_with_reply(subject.to_owned(), inbox, Bytes::new())
        .await
        .unwrap();
    client.flush().await.unwrap();
    let mut collected = Vec::new();
    let deadline = tokio::time::Instant::now() + COLLECT;
    while let Ok(Some(message)) = tokio::time::timeout_at(deadline, answers.next()).await {
        // The server itself says "no responders" with a status-only message.
        if message.status.is_none() {
            collected.push(message.payload);
        }
    }
    collected
}

/// Whether the server knows no subscriber of `subject` at all.
async fn no_responders(bus: &Bus, subject: &str) -> bool {
    let sent = bus.client().request(subject.to_owned(), Bytes::new()).await;
    matches!(sent, Err(err) if err.kind() == async_nats::client::RequestErrorKind::NoResponders)
}

fn parse<T: serde::de::DeserializeOwned>(answer: &Bytes) -> T {
    serde_json::from_slice(answer)
        .unwrap_or_else(|err| panic!("{err}: {}", String::from_utf8_lossy(answer)))
}

#[tokio::test]
async fn ping_and_info_list_running_agents_with_their_task_endpoint() {
    let server = NatsServer::start().await;
    let (echo, _) = serve(&server, Probe { name: "echo" }).await;
    let (other, _) = serve(&server, Probe { name: "other" }).await;
    let requester = Bus::connect(&server.target(), "nats-tooling")
        .await
        .unwrap();

    // $SRV.PING: every service answers, one reply each.
    let answers = collect(&requester, "$SRV.PING").await;
    let mut pings: Vec<PingResponse> = answers.iter().map(parse).collect();
    pings.sort_by(|a, b| a.name.cmp(&b.name));
    let names: Vec<&str> = pings.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(names, ["echo", "other"]);
    let ping = &pings[0];
    assert_eq!(ping.kind, PING_RESPONSE_TYPE);
    assert_eq!(ping.id, echo.instance_id());
    assert_eq!(ping.version, env!("CARGO_PKG_VERSION"));
    // The NATS client's own type reads it too.
    for answer in &answers {
        let standard: async_nats::service::PingResponse = parse(answer);
        assert_eq!(standard.kind, PING_RESPONSE_TYPE);
    }

    // $SRV.INFO.<name>: only that agent, with its endpoint and task types.
    let answers = collect(&requester, "$SRV.INFO.echo").await;
    assert_eq!(answers.len(), 1, "one instance of echo answers");
    let info: InfoResponse = parse(&answers[0]);
    assert_eq!(info.name, "echo");
    assert_eq!(info.id, echo.instance_id());
    assert_eq!(info.endpoints.len(), 1);
    let endpoint = &info.endpoints[0];
    assert_eq!(endpoint.subject, "agent.echo.task");
    assert_eq!(endpoint.queue_group, "echo");
    assert_eq!(endpoint.metadata["task_types"], "echo,fail");
    let standard: async_nats::service::Info = parse(&answers[0]);
    assert_eq!(standard.endpoints[0].subject, "agent.echo.task");
    assert_eq!(
        standard.endpoints[0]
            .metadata
            .get("task_types")
            .map(String::as_str),
        Some("echo,fail")
    );

    // $SRV.PING.<name>.<id>: exactly that instance.
    let subject = format!("$SRV.PING.other.{}", other.instance_id());
    let answers = collect(&requester, &subject).await;
    assert_eq!(answers.len(), 1);
    assert_eq!(parse::<PingResponse>(&answers[0]).name, "other");
    assert!(no_responders(&requester, "$SRV.PING.other.not-an-instance").await);

    echo.shutdown(Duration::from_secs(1)).await;
    other.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test]
async fn stats_count_the_tasks_handled() {
    let server = NatsServer::start().await;
    let (runtime, _) = serve(&server, Probe { name: "echo" }).await;
    let requester = Bus::connect(&server.target(), "nats-tooling")
        .await
        .unwrap();

    let answers = collect(&requester, "$SRV.STATS.echo").await;
    assert_eq!(answers.len(), 1);
    let before: StatsResponse = parse(&answers[0]);
    assert_eq!(before.kind, STATS_RESPONSE_TYPE);
    assert_eq!(before.endpoints[0].num_requests, 0);

    for task_type in ["echo", "echo", "echo", "fail"] {
        let response = requester
            .publish_task("echo", task_type, json!({"n": 1}), Priority::Normal)
            .await
            .unwrap();
        let expected = if task_type == "fail" {
            TaskStatus::Failed
        } else {
            TaskStatus::Completed
        };
        assert_eq!(response.status, expected);
    }

    let answers = collect(&requester, "$SRV.STATS.echo").await;
    assert_eq!(answers.len(), 1);
    let stats: StatsResponse = parse(&answers[0]);
    let endpoint = &stats.endpoints[0];
    assert_eq!(endpoint.subject, "agent.echo.task");
    assert_eq!(endpoint.num_requests, 4);
    assert_eq!(endpoint.num_errors, 1);
    // Three handlers slept 5 ms each.
    assert!(
        endpoint.processing_time >= 15_000_000,
        "{}",
        endpoint.processing_time
    );
    assert_eq!(
        endpoint.average_processing_time,
        endpoint.processing_time / 4
    );
    assert_eq!(endpoint.data.as_ref().unwrap()["completed"], 3);
    assert_eq!(stats.started, before.started);
    let standard: async_nats::service::Stats = parse(&answers[0]);
    assert_eq!(standard.endpoints[0].requests, 4);
    assert_eq!(standard.endpoints[0].errors, 1);
    assert!(standard.endpoints[0].processing_time >= Duration::from_millis(15));

    runtime.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test]
async fn a_shut_down_agent_no_longer_answers() {
    let server = NatsServer::start().await;
    let (echo, echo_bus) = serve(&server, Probe { name: "echo" }).await;
    let (other, _) = serve(&server, Probe { name: "other" }).await;
    let requester = Bus::connect(&server.target(), "nats-tooling")
        .await
        .unwrap();
    assert_eq!(collect(&requester, "$SRV.PING.echo").await.len(), 1);
    assert!(!no_responders(&requester, "$SRV.STATS.echo").await);

    echo.shutdown(Duration::from_secs(1)).await;
    // Shutdown flushed the unsubscriptions; a round trip on the same
    // connection makes sure the server has processed them.
    echo_bus.sync().await.unwrap();

    for verb in ["PING", "INFO", "STATS"] {
        let subject = format!("$SRV.{verb}.echo");
        assert!(
            no_responders(&requester, &subject).await,
            "{subject} still answered"
        );
    }
    let answers = collect(&requester, "$SRV.PING").await;
    let names: Vec<String> = answers
        .iter()
        .map(|a| parse::<PingResponse>(a).name)
        .collect();
    assert_eq!(names, ["other"]);

    other.shutdown(Duration::from_secs(1)).await;
}
