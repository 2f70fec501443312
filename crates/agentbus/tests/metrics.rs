//! A runtime's Prometheus endpoint against a real nats-server: its
//! counters match the tasks the test ran, over request/reply and queues,
//! and it parses with a Prometheus text-format parser.

use agentbus::delivery::{DeliveryOptions, Queue, TaskState};
use agentbus::{
    Agent, AgentOptions, Bus, RequestOptions, Runtime, TaskContext, TaskError, TaskRequest,
    TaskStatus, TaskTypeSpec,
};
use agentbus_testkit::NatsServer;
use agentbus_testkit::{metric_value as value, parse_metrics};
use prometheus_parse::Scrape;
use serde_json::{Value, json};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

const AGENT: &str = "metered";

/// `ok` completes, `fail` fails for good, `flaky` fails its first attempt
/// (retryable) then completes, `poison` is refused for good (dead letter).
#[derive(Default)]
struct Metered {
    flaky_runs: AtomicU32,
}

impl Agent for Metered {
    fn name(&self) -> &str {
        AGENT
    }

    fn task_types(&self) -> Vec<TaskTypeSpec> {
        ["ok", "fail", "flaky", "poison"]
            .map(|t| TaskTypeSpec::new(t).unwrap())
            .to_vec()
    }

    async fn handle(&self, task: TaskRequest, _ctx: TaskContext) -> Result<Value, TaskError> {
        match task.task_type.as_str() {
            "ok" => Ok(json!({ "ok": true })),
            "fail" => Err(TaskError::failed("no")),
            "flaky" if self.flaky_runs.fetch_add(1, Ordering::SeqCst) == 0 => {
                Err(TaskError::failed("not yet"))
            }
            "flaky" => Ok(json!({ "ok": true })),
            _ => Err(TaskError::permanent("never")),
        }
    }
}

fn tasks(scrape: &Scrape, task_type: &str, outcome: &str) -> f64 {
    value(
        scrape,
        "agentbus_tasks_total",
        &[
            ("agent", AGENT),
            ("task_type", task_type),
            ("outcome", outcome),
        ],
    )
}

#[tokio::test]
async fn the_metrics_count_the_tasks_run() {
    let server = NatsServer::start().await;
    let mut runtime = Runtime::new(Bus::from_client(server.connect().await));
    let options = AgentOptions {
        metrics_address: Some(([127, 0, 0, 1], 0).into()),
        delivery: DeliveryOptions {
            retry_backoff: Duration::from_millis(50),
            idle_poll: Duration::from_millis(100),
            ..DeliveryOptions::default()
        },
        ..AgentOptions::default()
    };
    runtime.add(Metered::default(), options).await.unwrap();
    let address = runtime.metrics_address().expect("an endpoint");
    assert!(
        address.ip().is_loopback() && address.port() != 0,
        "{address}"
    );

    let bus = Bus::from_client(server.connect().await);
    let ask = RequestOptions::default();
    for _ in 0..3 {
        let done = bus
            .request(AGENT, &TaskRequest::new("ok", json!({})), ask)
            .await
            .unwrap();
        assert_eq!(done.status, TaskStatus::Completed);
    }
    let failed = bus
        .request(AGENT, &TaskRequest::new("fail", json!({})), ask)
        .await
        .unwrap();
    assert_eq!(failed.status, TaskStatus::Failed);
    // A type the agent does not accept, and a body that is not a task:
    // counted under `unknown`, whatever they are called.
    let refused = bus
        .request(AGENT, &TaskRequest::new("made-up", json!({})), ask)
        .await
        .unwrap();
    assert_eq!(refused.status, TaskStatus::Rejected);
    let malformed = bus
        .client()
        .request(format!("agent.{AGENT}.task"), "not json".into())
        .await
        .unwrap();
    assert!(String::from_utf8_lossy(&malformed.payload).contains("rejected"));

    let queue = Queue::agent(AGENT).unwrap();
    let flaky = TaskRequest::new("flaky", json!({}));
    let poison = TaskRequest::new("poison", json!({}));
    bus.submit(&queue, &flaky).await.unwrap();
    bus.submit(&queue, &poison).await.unwrap();
    let done = bus
        .wait_task(&flaky.task_id, Duration::from_secs(30))
        .await
        .unwrap();
    assert_eq!(done.status, TaskStatus::Completed, "{done:?}");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let record = bus.task_record(&poison.task_id).await.unwrap();
        if record.is_some_and(|r| r.state == TaskState::DeadLettered) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "poison dead-lettered within 30 s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let response = reqwest::get(format!("http://{address}/metrics"))
        .await
        .unwrap();
    assert!(response.status().is_success());
    let content_type = response.headers()["content-type"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(
        content_type.starts_with("application/openmetrics-text"),
        "{content_type}"
    );
    let text = response.text().await.unwrap();
    let scrape = parse_metrics(&text);

    assert_eq!(tasks(&scrape, "ok", "completed"), 3.0, "{text}");
    assert_eq!(tasks(&scrape, "ok", "failed"), 0.0, "{text}");
    assert_eq!(tasks(&scrape, "fail", "failed"), 1.0, "{text}");
    assert_eq!(tasks(&scrape, "unknown", "rejected"), 2.0, "{text}");
    assert_eq!(tasks(&scrape, "flaky", "failed"), 1.0, "{text}");
    assert_eq!(tasks(&scrape, "flaky", "completed"), 1.0, "{text}");
    assert_eq!(tasks(&scrape, "poison", "failed"), 1.0, "{text}");
    let agent = [("agent", AGENT)];
    assert_eq!(
        value(&scrape, "agentbus_task_redeliveries_total", &agent),
        1.0
    );
    assert_eq!(value(&scrape, "agentbus_dead_letters_total", &agent), 1.0);
    assert_eq!(value(&scrape, "agentbus_stale_results_total", &agent), 0.0);
    assert_eq!(value(&scrape, "agentbus_tasks_in_flight", &agent), 0.0);
    assert_eq!(value(&scrape, "agentbus_tasks_waiting", &agent), 0.0);
    let ok = [("agent", AGENT), ("task_type", "ok")];
    assert_eq!(value(&scrape, "agentbus_task_run_seconds_count", &ok), 3.0);
    assert_eq!(
        value(&scrape, "agentbus_task_queue_wait_seconds_count", &ok),
        3.0
    );
    let flaky = [("agent", AGENT), ("task_type", "flaky")];
    assert_eq!(
        value(&scrape, "agentbus_task_run_seconds_count", &flaky),
        2.0
    );
    // What a sender makes up never becomes a label value.
    assert!(!text.contains("made-up"), "{text}");
    runtime.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test]
async fn an_agent_without_an_address_serves_no_metrics() {
    let server = NatsServer::start().await;
    let mut runtime = Runtime::new(Bus::from_client(server.connect().await));
    runtime
        .add(Metered::default(), AgentOptions::default())
        .await
        .unwrap();
    assert_eq!(runtime.metrics_address(), None);
    // An address already taken is a clear error.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let options = AgentOptions {
        metrics_address: Some(taken.local_addr().unwrap()),
        ..AgentOptions::default()
    };
    struct Other;
    impl Agent for Other {
        fn name(&self) -> &str {
            "other"
        }
        fn task_types(&self) -> Vec<TaskTypeSpec> {
            vec![TaskTypeSpec::new("ok").unwrap()]
        }
        async fn handle(&self, _: TaskRequest, _: TaskContext) -> Result<Value, TaskError> {
            Ok(Value::Null)
        }
    }
    let err = runtime.add(Other, options).await.unwrap_err();
    assert_eq!(err.kind(), agentbus::RuntimeErrorKind::Metrics, "{err}");
    assert!(
        err.to_string()
            .contains("cannot serve metrics at http://127.0.0.1:"),
        "{err}"
    );
    runtime.shutdown(Duration::from_secs(1)).await;
}
