//! Served agents answer the NATS services protocol (`$SRV.PING|INFO|STATS`)
//! over core NATS, as `nats micro ls/info/stats` ask it, against a real
//! nats-server. Answers are parsed with async-nats's own `service` types too,
//! and read by nats.js's services client (`@nats-io/services`, installed
//! with npm on first use), so standard tooling reads them.

use agentbus::delivery::Queue;
use agentbus::discovery::{
    InfoResponse, PING_RESPONSE_TYPE, PingResponse, STATS_RESPONSE_TYPE, StatsResponse,
};
use agentbus::{
    Agent, AgentOptions, Bus, Name, Priority, RequestOptions, Runtime, TaskContext, TaskError,
    TaskRequest, TaskStatus, TaskTypeSpec,
};
use agentbus_testkit::NatsServer;
use bytes::Bytes;
use futures::StreamExt;
use serde_json::{Value, json};
use std::path::Path;
use std::time::Duration;

/// nats.js and its services client, as the nats.js test installs them.
const NATS_JS: [&str; 2] = [
    "@nats-io/transport-node@3.4.0",
    "@nats-io/services@3.0.0-25",
];

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

/// An agent that checks its payloads: `echo` wants `{"text": <string>}`,
/// `fail` fails, `slow` outlasts the task timeout of [`serve_strict`].
struct Strict;

impl Agent for Strict {
    fn name(&self) -> &str {
        "strict"
    }

    fn task_types(&self) -> Vec<TaskTypeSpec> {
        vec![
            TaskTypeSpec::new("echo").unwrap().with_schema(json!({
                "type": "object",
                "required": ["text"],
                "properties": {"text": {"type": "string"}},
            })),
            TaskTypeSpec::new("fail").unwrap(),
            TaskTypeSpec::new("slow").unwrap(),
        ]
    }

    async fn handle(&self, task: TaskRequest, _ctx: TaskContext) -> Result<Value, TaskError> {
        match task.task_type.as_str() {
            "fail" => Err(TaskError::permanent("failed on purpose")),
            "slow" => {
                tokio::time::sleep(Duration::from_secs(5)).await;
                Ok(Value::Null)
            }
            _ => Ok(json!({"echo": task.payload})),
        }
    }
}

/// The task timeout [`Strict`] is served with.
const STRICT_TIMEOUT: Duration = Duration::from_millis(100);

async fn serve(server: &NatsServer, agent: impl Agent) -> (Runtime, Bus) {
    let options = AgentOptions {
        task_events: false,
        ..AgentOptions::default()
    };
    serve_with(server, agent, options).await
}

async fn serve_strict(server: &NatsServer) -> (Runtime, Bus) {
    let options = AgentOptions {
        task_events: false,
        task_timeout: Some(STRICT_TIMEOUT),
        ..AgentOptions::default()
    };
    serve_with(server, Strict, options).await
}

async fn serve_with(
    server: &NatsServer,
    agent: impl Agent,
    options: AgentOptions,
) -> (Runtime, Bus) {
    let bus = Bus::connect(&server.target(), "discovery-agents")
        .await
        .unwrap();
    let mut runtime = Runtime::new(bus.clone());
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
    // Another instance id: nobody answers (a runtime hears every discovery
    // request on three subscriptions, and answers only for its own agents).
    assert!(
        collect(&requester, "$SRV.PING.other.not-an-instance")
            .await
            .is_empty()
    );

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
    let data = endpoint.data.as_ref().unwrap();
    assert_eq!(data["completed"], 3);
    // Durations are integer nanoseconds in `data` too, as in the protocol.
    assert_eq!(data["processing_time"], endpoint.processing_time, "{data}");
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
            collect(&requester, &subject).await.is_empty(),
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

/// Sends `payload` as is (no TaskRequest around it) to `agent`'s task subject
/// and returns the TaskResponse.
async fn send_raw(bus: &Bus, agent: &str, payload: &'static [u8]) -> agentbus::TaskResponse {
    let answer = bus
        .client()
        .request(format!("agent.{agent}.task"), Bytes::from_static(payload))
        .await
        .unwrap();
    serde_json::from_slice(&answer.payload).unwrap()
}

async fn ask(bus: &Bus, task_type: &str, payload: Value) -> TaskStatus {
    let request = TaskRequest::new(task_type, payload);
    let options = RequestOptions {
        timeout: Duration::from_secs(10),
        retries: 0,
    };
    bus.request("strict", &request, options)
        .await
        .unwrap()
        .status
}

async fn strict_stats(bus: &Bus) -> (StatsResponse, async_nats::service::Stats) {
    let answers = collect(bus, "$SRV.STATS.strict").await;
    assert_eq!(answers.len(), 1);
    (parse(&answers[0]), parse(&answers[0]))
}

#[tokio::test]
async fn stats_count_every_request_and_every_error_with_the_last_one() {
    let server = NatsServer::start().await;
    let (runtime, _) = serve_strict(&server).await;
    let requester = Bus::connect(&server.target(), "nats-tooling")
        .await
        .unwrap();

    assert_eq!(
        ask(&requester, "echo", json!({"text": "hi"})).await,
        TaskStatus::Completed
    );
    let (stats, standard) = strict_stats(&requester).await;
    assert_eq!(stats.endpoints[0].last_error, "");
    assert_eq!(standard.endpoints[0].last_error, None);

    // Refused before any handler runs: malformed, unknown type, invalid payload.
    let malformed = send_raw(&requester, "strict", b"not json").await;
    assert_eq!(malformed.status, TaskStatus::Rejected);
    assert_eq!(
        ask(&requester, "dance", json!({})).await,
        TaskStatus::Rejected
    );
    assert_eq!(
        ask(&requester, "echo", json!({"text": 1})).await,
        TaskStatus::Rejected
    );
    let (stats, standard) = strict_stats(&requester).await;
    let endpoint = &stats.endpoints[0];
    assert_eq!((endpoint.num_requests, endpoint.num_errors), (4, 3));
    assert!(
        endpoint
            .last_error
            .starts_with("400:the payload of echo does not match its schema at /text:"),
        "{}",
        endpoint.last_error
    );
    let last = standard.endpoints[0].last_error.clone().unwrap();
    assert_eq!(last.code, 400);
    assert!(last.status.starts_with("the payload of echo"), "{last:?}");
    assert_eq!(
        (standard.endpoints[0].requests, standard.endpoints[0].errors),
        (4, 3)
    );

    // The handler fails; the handler runs out of time.
    assert_eq!(ask(&requester, "fail", json!({})).await, TaskStatus::Failed);
    let (stats, _) = strict_stats(&requester).await;
    assert_eq!(stats.endpoints[0].last_error, "500:failed on purpose");
    assert_eq!(
        ask(&requester, "slow", json!({})).await,
        TaskStatus::Timeout
    );

    // A queued task of an unknown type is refused too (and dead-lettered).
    let queued = TaskRequest::new("dance", json!({}));
    let queue = Queue::Agent(Name::parse("agent name", "strict").unwrap());
    let submitted = requester.submit(&queue, &queued).await.unwrap();
    let record = requester
        .wait_task(&submitted.task_id, Duration::from_secs(10))
        .await
        .unwrap();
    assert_eq!(record.status, TaskStatus::Rejected);

    let (stats, standard) = strict_stats(&requester).await;
    let endpoint = &stats.endpoints[0];
    assert_eq!((endpoint.num_requests, endpoint.num_errors), (7, 6));
    assert!(
        endpoint
            .last_error
            .starts_with("400:agent strict does not accept task_type \"dance\""),
        "{}",
        endpoint.last_error
    );
    assert_eq!(
        endpoint.average_processing_time,
        endpoint.processing_time / 7
    );
    // The timed-out handler ran for the whole task timeout.
    assert!(
        endpoint.processing_time >= STRICT_TIMEOUT.as_nanos() as u64,
        "{}",
        endpoint.processing_time
    );
    let data = endpoint.data.as_ref().unwrap();
    assert_eq!(
        (&data["completed"], &data["failed"], &data["rejected"]),
        (&json!(1), &json!(2), &json!(4)),
        "{data}"
    );
    assert_eq!(data["processing_time"], endpoint.processing_time, "{data}");
    let standard = &standard.endpoints[0];
    assert_eq!((standard.requests, standard.errors), (7, 6));
    assert_eq!(standard.last_error.as_ref().unwrap().code, 400);
    assert_eq!(
        standard.processing_time,
        Duration::from_nanos(endpoint.processing_time)
    );

    runtime.shutdown(Duration::from_secs(1)).await;
}

/// What nats.js's services client read: `{"ping": [...], "info": [...], "stats": [...]}`.
async fn read_with_nats_js(server: &NatsServer, service: &str) -> Value {
    let packages = agentbus_testkit::npm_packages(Path::new(env!("CARGO_TARGET_TMPDIR")), &NATS_JS);
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/discovery/services_client.js");
    let output = tokio::process::Command::new("node")
        .arg(script)
        .arg(service)
        .env("NODE_PATH", packages.join("node_modules"))
        .env("NATS_URL", server.url_with_credentials())
        .kill_on_drop(true)
        .output();
    let output = tokio::time::timeout(Duration::from_secs(30), output)
        .await
        .expect("services_client.js finishes")
        .expect("run node");
    assert!(
        output.status.success(),
        "services_client.js failed ({}): {}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).unwrap_or_else(|err| {
        panic!(
            "services_client.js printed {:?} ({err})",
            String::from_utf8_lossy(&output.stdout)
        )
    })
}

#[tokio::test]
async fn nats_js_services_client_reads_requests_errors_and_times() {
    let server = NatsServer::start().await;
    let (runtime, _) = serve_strict(&server).await;
    let requester = Bus::connect(&server.target(), "nats-tooling")
        .await
        .unwrap();
    assert_eq!(
        ask(&requester, "echo", json!({"text": "hi"})).await,
        TaskStatus::Completed
    );
    assert_eq!(ask(&requester, "fail", json!({})).await, TaskStatus::Failed);
    assert_eq!(
        send_raw(&requester, "strict", b"{").await.status,
        TaskStatus::Rejected
    );
    assert_eq!(
        ask(&requester, "dance", json!({})).await,
        TaskStatus::Rejected
    );

    let read = read_with_nats_js(&server, "strict").await;
    let pings = read["ping"].as_array().unwrap();
    assert_eq!(pings.len(), 1, "{read}");
    assert_eq!(pings[0]["name"], "strict");
    assert_eq!(pings[0]["id"], runtime.instance_id());
    let info = &read["info"][0];
    assert_eq!(
        info["endpoints"][0]["subject"], "agent.strict.task",
        "{read}"
    );
    assert_eq!(
        info["endpoints"][0]["metadata"]["task_types"],
        "echo,fail,slow"
    );

    let stats = read["stats"].as_array().unwrap();
    assert_eq!(stats.len(), 1, "{read}");
    let endpoint = &stats[0]["endpoints"][0];
    assert_eq!(endpoint["num_requests"], 4, "{endpoint}");
    assert_eq!(endpoint["num_errors"], 3, "{endpoint}");
    let last_error = endpoint["last_error"].as_str().unwrap();
    assert!(
        last_error.starts_with("400:agent strict does not accept task_type \"dance\""),
        "{last_error}"
    );
    // Integer nanoseconds, as nats.js computes and shows them, also in `data`.
    let processing = endpoint["processing_time"].as_u64().unwrap();
    assert_eq!(
        endpoint["average_processing_time"].as_u64(),
        Some(processing / 4)
    );
    assert_eq!(
        endpoint["data"]["processing_time"].as_u64(),
        Some(processing),
        "{endpoint}"
    );
    assert_eq!(endpoint["data"]["rejected"], 2, "{endpoint}");
    assert!(
        stats[0]["started"].as_str().unwrap().ends_with('Z'),
        "{read}"
    );

    runtime.shutdown(Duration::from_secs(1)).await;
}
