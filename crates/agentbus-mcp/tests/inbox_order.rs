//! An agent's inbox stays in order when a runtime and an MCP bridge serve the
//! same agent, whichever of them starts first: both create the inbox consumer
//! from the one definition, which hands out one message at a time; and a
//! bridge started after a runtime keeps the runtime's delivery options.

use agentbus::delivery::DeliveryOptions;
use agentbus::presence::online_agents;
use agentbus::state::StateStore;
use agentbus::{
    Agent, AgentMessage, AgentOptions, Bus, Name, Runtime, TaskContext, TaskError, TaskRequest,
    TaskTypeSpec,
};
use agentbus_mcp::BridgeOptions;
use agentbus_testkit::NatsServer;
use serde_json::{Value, json};
use std::sync::{Arc, Mutex};
use std::time::Duration;

const AGENT: &str = "ordered";

/// Takes inbox messages `{"n": N}`; the first delivery of message 1 fails
/// (retryable), so a consumer that hands out more than one message at a time
/// runs 2 and 3 before 1 comes back.
#[derive(Clone, Default)]
struct Reader {
    /// `n` of every delivery, and whether it succeeded.
    seen: Arc<Mutex<Vec<(u64, bool)>>>,
}

impl Agent for Reader {
    fn name(&self) -> &str {
        AGENT
    }
    fn task_types(&self) -> Vec<TaskTypeSpec> {
        vec![TaskTypeSpec::new("noop").unwrap()]
    }
    async fn handle(&self, _task: TaskRequest, _ctx: TaskContext) -> Result<Value, TaskError> {
        Ok(json!({}))
    }
    async fn handle_message(
        &self,
        message: AgentMessage,
        _ctx: TaskContext,
    ) -> Result<(), TaskError> {
        let n = message.body["n"].as_u64().unwrap();
        let fail = n == 1 && message.attempt == 1;
        self.seen.lock().unwrap().push((n, !fail));
        if fail {
            Err(TaskError::failed("first delivery of message 1 fails"))
        } else {
            Ok(())
        }
    }
}

fn options() -> AgentOptions {
    AgentOptions {
        messages: true,
        delivery: DeliveryOptions {
            retry_backoff: Duration::from_millis(200),
            idle_poll: Duration::from_millis(100),
            ..DeliveryOptions::default()
        },
        ..AgentOptions::default()
    }
}

async fn start_runtime(server: &NatsServer, reader: &Reader) -> Runtime {
    let bus = Bus::connect(&server.target(), "ordered-runtime")
        .await
        .unwrap();
    let mut runtime = Runtime::new(bus);
    runtime.add(reader.clone(), options()).await.unwrap();
    runtime
}

/// Starts a bridge for the agent on a pipe no client speaks on (it sets up
/// the inbox before the MCP handshake), and waits until it is online.
async fn start_bridge(server: &NatsServer, instances_before: usize) -> tokio::task::JoinHandle<()> {
    let bus = Bus::connect(&server.target(), "ordered-bridge")
        .await
        .unwrap();
    let (client_side, bridge_side) = tokio::io::duplex(64 * 1024);
    let (read, write) = tokio::io::split(bridge_side);
    let options = BridgeOptions::new(Name::parse("agent name", AGENT).unwrap());
    let bridge = tokio::spawn(async move {
        let _client = client_side; // kept open: the bridge waits for a handshake
        let _ = agentbus_mcp::serve(bus, options, read, write, std::future::pending()).await;
    });
    let store = StateStore::open(&Bus::from_client(server.connect().await), None)
        .await
        .unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let online = online_agents(&store).await.unwrap();
        if online.iter().filter(|a| a.name == AGENT).count() > instances_before {
            return bridge;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the bridge did not come online"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn send_and_check_order(server: &NatsServer, reader: &Reader) {
    let bus = Bus::from_client(server.connect().await);
    for n in 1..=3 {
        bus.send(AGENT, &json!({ "n": n })).await.unwrap();
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    while reader
        .seen
        .lock()
        .unwrap()
        .iter()
        .filter(|(_, ok)| *ok)
        .count()
        < 3
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{:?}",
            reader.seen.lock().unwrap()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let seen = reader.seen.lock().unwrap().clone();
    assert_eq!(
        seen,
        [(1, false), (1, true), (2, true), (3, true)],
        "message 2 waits until message 1 is handled"
    );
    let stream = bus
        .jetstream()
        .get_stream(agentbus::subject::MESSAGES_STREAM)
        .await
        .unwrap();
    let name = Name::parse("agent name", AGENT).unwrap();
    let consumer: async_nats::jetstream::consumer::PullConsumer = stream
        .get_consumer(&agentbus::subject::durable::inbox(&name))
        .await
        .unwrap();
    assert_eq!(consumer.cached_info().config.max_ack_pending, 1);
}

#[tokio::test]
async fn the_inbox_stays_in_order_when_the_bridge_starts_after_the_runtime() {
    let server = NatsServer::start().await;
    let reader = Reader::default();
    let runtime = start_runtime(&server, &reader).await;
    let bridge = start_bridge(&server, 1).await;
    send_and_check_order(&server, &reader).await;
    bridge.abort();
    runtime.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test]
async fn the_inbox_stays_in_order_when_the_bridge_starts_before_the_runtime() {
    let server = NatsServer::start().await;
    let reader = Reader::default();
    let bridge = start_bridge(&server, 0).await;
    let runtime = start_runtime(&server, &reader).await;
    send_and_check_order(&server, &reader).await;
    bridge.abort();
    runtime.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test]
async fn a_bridge_started_after_the_runtime_keeps_the_runtimes_delivery_options() {
    let server = NatsServer::start().await;
    let reader = Reader::default();
    let mut options = options();
    options.delivery.ack_wait = Duration::from_secs(45);
    options.delivery.max_deliver = 9;
    let bus = Bus::connect(&server.target(), "ordered-runtime")
        .await
        .unwrap();
    let mut runtime = Runtime::new(bus);
    runtime.add(reader.clone(), options).await.unwrap();
    // Work at one priority: the runtime makes that queue's consumer only.
    let client = Bus::from_client(server.connect().await);
    let queue = agentbus::delivery::Queue::agent(AGENT).unwrap();
    let task = TaskRequest::new("noop", json!({})).with_priority(agentbus::Priority::High);
    client.submit(&queue, &task).await.unwrap();
    client
        .wait_task(&task.task_id, Duration::from_secs(10))
        .await
        .unwrap();
    let bridge = start_bridge(&server, 1).await;
    let js = server.jetstream().await;
    let high = js
        .get_stream(agentbus::subject::TASKS_STREAM)
        .await
        .unwrap()
        .consumer_info(queue.durable(agentbus::Priority::High))
        .await
        .unwrap()
        .config;
    assert_eq!(
        high.ack_wait,
        Duration::from_secs(45),
        "the queue's consumer"
    );
    assert_eq!(high.max_deliver, 9);
    let stream = js
        .get_stream(agentbus::subject::MESSAGES_STREAM)
        .await
        .unwrap();
    let name = Name::parse("agent name", AGENT).unwrap();
    let config = stream
        .consumer_info(agentbus::subject::durable::inbox(&name))
        .await
        .unwrap()
        .config;
    assert_eq!(config.ack_wait, Duration::from_secs(45));
    assert_eq!(config.max_deliver, 9);
    assert_eq!(config.max_ack_pending, 1, "and the definition is applied");
    bridge.abort();
    runtime.shutdown(Duration::from_secs(5)).await;
}
