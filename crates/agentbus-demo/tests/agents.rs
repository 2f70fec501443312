//! The demo agents and the demo that drives them, against a real
//! nats-server, and an OpenAI-compatible endpoint played by a small HTTP
//! server on 127.0.0.1:0.

use agentbus::{AgentOptions, Bus, Priority, Runtime, TaskResponse, TaskStatus};
use agentbus_demo::{
    self as demo, CHAT_MESSAGE_NEW, ChatManager, DemoOptions, ECHO_NOTE, ENHANCEMENT_FEEDBACK,
    EnhancementAgent, LlmAgent, LlmEndpoint,
};
use agentbus_testkit::{ClosedPort, LlmServer, NatsServer};
use futures::StreamExt;
use serde_json::{Value, json};
use std::collections::BTreeSet;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

const WAIT: Duration = Duration::from_secs(10);

/// A runtime serving `agent` on its own connection, and a client connection.
async fn serve<A: agentbus::Agent>(server: &NatsServer, agent: A) -> (Runtime, Bus) {
    let agent_bus = Bus::connect(&server.target(), "agents").await.unwrap();
    let mut runtime = Runtime::new(agent_bus.clone());
    runtime.add(agent, AgentOptions::default()).await.unwrap();
    // The subscription must be in place before another connection sends a task.
    sync_with_server(&agent_bus).await;
    let client = Bus::connect(&server.target(), "orchestrator")
        .await
        .unwrap();
    (runtime, client)
}

async fn generate(bus: &Bus, payload: Value) -> TaskResponse {
    bus.publish_task("llm_agent", "generate_text", payload, Priority::Normal)
        .await
        .unwrap()
}

#[tokio::test]
async fn orchestrator_gets_echoed_text_without_a_model() {
    let server = NatsServer::start().await;
    let (runtime, bus) = serve(&server, LlmAgent::new(None).unwrap()).await;

    let response =
        demo::send_generate_text(&bus, "Write a short   story about\nan AI agent.", Some(4))
            .await
            .unwrap();
    assert_eq!(response.status, TaskStatus::Completed, "{response:?}");
    assert_eq!(response.error, None);
    assert_eq!(
        response.result,
        Some(json!({"text": "Write a short story", "mode": "echo", "note": ECHO_NOTE}))
    );

    // Without max_tokens the default (200 words) keeps a short prompt whole.
    let whole = demo::send_generate_text(&bus, "Hi there", None)
        .await
        .unwrap();
    assert_eq!(whole.result.unwrap()["text"], "Hi there");
    runtime.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test]
async fn invalid_max_tokens_is_rejected_naming_the_field() {
    let server = NatsServer::start().await;
    let (runtime, bus) = serve(&server, LlmAgent::new(None).unwrap()).await;

    let response = generate(&bus, json!({"prompt": "hi", "max_tokens": "x"})).await;
    assert_eq!(response.status, TaskStatus::Rejected, "{response:?}");
    let error = response.error.unwrap();
    assert!(error.contains("/max_tokens"), "{error}");
    let zero = generate(&bus, json!({"prompt": "hi", "max_tokens": 0})).await;
    assert_eq!(zero.status, TaskStatus::Rejected, "{zero:?}");
    let no_prompt = generate(&bus, json!({"max_tokens": 3})).await;
    assert_eq!(no_prompt.status, TaskStatus::Rejected, "{no_prompt:?}");
    assert!(no_prompt.error.unwrap().contains("prompt"));
    runtime.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test]
async fn llm_agent_calls_an_openai_compatible_endpoint() {
    let mut llm = LlmServer::start(|request| {
        let prompt = request.body["messages"][0]["content"].as_str().unwrap_or("");
        let reply = json!({
            "id": "chatcmpl-1",
            "object": "chat.completion",
            "model": "tiny-model-2025",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": format!("Once upon a time: {prompt}")}, "finish_reason": "stop"}],
        });
        (200, reply.to_string())
    })
    .await;
    let endpoint = LlmEndpoint::new(llm.base_url())
        .unwrap()
        .with_api_key("sk-test-123")
        .with_model("tiny-model");
    let server = NatsServer::start().await;
    let (runtime, bus) = serve(&server, LlmAgent::new(Some(endpoint)).unwrap()).await;

    let response = generate(&bus, json!({"prompt": "a robot", "max_tokens": 42})).await;
    assert_eq!(response.status, TaskStatus::Completed, "{response:?}");
    assert_eq!(
        response.result,
        Some(
            json!({"text": "Once upon a time: a robot", "model": "tiny-model-2025", "mode": "model"})
        )
    );

    let request = llm.next_request().await;
    assert_eq!(request.method_and_path, "POST /v1/chat/completions");
    assert_eq!(request.header("authorization"), Some("Bearer sk-test-123"));
    assert_eq!(
        request.header("content-type"),
        Some("application/json"),
        "{request:?}"
    );
    assert_eq!(
        request.body,
        json!({"model": "tiny-model", "messages": [{"role": "user", "content": "a robot"}], "max_tokens": 42})
    );
    runtime.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test]
async fn http_error_is_a_failed_task_that_never_shows_the_key() {
    let mut llm = LlmServer::start(|_| {
        (
            401,
            json!({"error": {"message": "Incorrect API key provided: sk-wrong-key"}}).to_string(),
        )
    })
    .await;
    let endpoint = LlmEndpoint::new(llm.base_url())
        .unwrap()
        .with_api_key("sk-wrong-key");
    let server = NatsServer::start().await;
    let (runtime, bus) = serve(&server, LlmAgent::new(Some(endpoint)).unwrap()).await;

    let response = generate(&bus, json!({"prompt": "hi"})).await;
    assert_eq!(response.status, TaskStatus::Failed, "{response:?}");
    let error = response.error.unwrap();
    assert!(error.contains("answered HTTP 401 Unauthorized"), "{error}");
    assert!(error.contains("check LLM_API_KEY"), "{error}");
    assert!(!error.contains("sk-wrong-key"), "the key leaked: {error}");
    // No max_tokens in the payload: the default is sent.
    assert_eq!(
        llm.next_request().await.body["max_tokens"],
        json!(demo::DEFAULT_MAX_TOKENS)
    );
    runtime.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test]
async fn unreachable_endpoint_is_a_failed_task_and_the_agent_keeps_serving() {
    // Nothing listens on it, and no other test's server can take it meanwhile.
    let closed = ClosedPort::new();
    let port = closed.port();
    let endpoint = LlmEndpoint::new(&format!("http://127.0.0.1:{port}/v1"))
        .unwrap()
        .with_api_key("sk-never-shown");
    let server = NatsServer::start().await;
    let (runtime, bus) = serve(&server, LlmAgent::new(Some(endpoint)).unwrap()).await;

    for attempt in 0..2 {
        let response = generate(&bus, json!({"prompt": "hi", "max_tokens": 5})).await;
        assert_eq!(
            response.status,
            TaskStatus::Failed,
            "attempt {attempt}: {response:?}"
        );
        assert_eq!(response.result, None);
        let error = response.error.unwrap();
        assert!(
            error.starts_with(&format!(
                "cannot reach the language model at http://127.0.0.1:{port}/v1/chat/completions ("
            )),
            "{error}"
        );
        assert!(
            error.ends_with("check LLM_BASE_URL and that the server is running"),
            "{error}"
        );
        assert!(!error.contains("sk-never-shown"), "{error}");
    }
    // Still serving: a bad payload is answered too.
    let rejected = generate(&bus, json!({"prompt": 1})).await;
    assert_eq!(rejected.status, TaskStatus::Rejected);
    runtime.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test]
async fn silent_endpoint_times_out_as_a_failed_task() {
    // Accepts connections and never answers.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let hold: JoinHandle<()> = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((stream, _)) = listener.accept().await {
            held.push(stream);
        }
    });
    let endpoint = LlmEndpoint::new(&format!("http://{addr}/v1"))
        .unwrap()
        .with_timeout(Duration::from_millis(300));
    let server = NatsServer::start().await;
    let (runtime, bus) = serve(&server, LlmAgent::new(Some(endpoint)).unwrap()).await;

    let response = generate(&bus, json!({"prompt": "hi"})).await;
    assert_eq!(response.status, TaskStatus::Failed, "{response:?}");
    assert_eq!(
        response.error.as_deref(),
        Some(
            format!(
                "the language model at http://{addr}/v1/chat/completions did not answer within 300ms; try again later or use a faster model"
            )
            .as_str()
        )
    );
    hold.abort();
    runtime.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test]
async fn chat_manager_events_have_exactly_the_three_fields() {
    let server = NatsServer::start().await;
    let (runtime, bus) = serve(&server, ChatManager::new()).await;
    let watcher = Bus::connect(&server.target(), "watcher").await.unwrap();
    let mut chat = watcher.subscribe("chat.>", None).await.unwrap();
    sync_with_server(&watcher).await;

    // Directly...
    let direct_id = ChatManager::new()
        .announce(&bus, "session-1", "hello")
        .await
        .unwrap();
    // ...and as a task.
    let response = bus
        .publish_task(
            "chat_manager",
            "post_message",
            json!({"session_id": "session-2", "content": "second"}),
            Priority::Normal,
        )
        .await
        .unwrap();
    assert_eq!(response.status, TaskStatus::Completed, "{response:?}");
    let result = response.result.unwrap();
    assert_eq!(result["session_id"], "session-2");
    let task_id = result["message_id"].as_str().unwrap().to_owned();

    let expected = [
        ("session-1", direct_id.as_str(), "hello"),
        ("session-2", task_id.as_str(), "second"),
    ];
    for (session_id, message_id, content) in expected {
        let event = tokio::time::timeout(WAIT, chat.next())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(event.subject, CHAT_MESSAGE_NEW);
        let body: Value = event.json().unwrap();
        let keys: BTreeSet<&str> = body
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        assert_eq!(
            keys,
            BTreeSet::from(["content", "message_id", "session_id"])
        );
        assert_eq!(
            body,
            json!({"session_id": session_id, "message_id": message_id, "content": content})
        );
    }
    assert_ne!(direct_id, task_id);
    assert!(uuid_like(&direct_id), "{direct_id}");

    let empty_session = bus
        .publish_task(
            "chat_manager",
            "post_message",
            json!({"session_id": "", "content": "x"}),
            Priority::Normal,
        )
        .await
        .unwrap();
    assert_eq!(empty_session.status, TaskStatus::Rejected);
    runtime.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test]
async fn enhancement_agent_counts_the_feedback_it_consumed() {
    const N: u64 = 25;
    let server = NatsServer::start().await;
    let agent_bus = Bus::connect(&server.target(), "enhancement").await.unwrap();
    let (agent, consumer) = EnhancementAgent::start(&agent_bus, Some("enhancement_agent"))
        .await
        .unwrap();
    let mut runtime = Runtime::new(agent_bus.clone());
    runtime
        .add(agent.clone(), AgentOptions::default())
        .await
        .unwrap();
    sync_with_server(&agent_bus).await;

    let bus = Bus::connect(&server.target(), "users").await.unwrap();
    // Garbage first: one publisher's messages arrive in order, so it has been
    // consumed by the time the N-th feedback has.
    bus.publish_bytes(
        &agentbus::subject::Subject::parse(ENHANCEMENT_FEEDBACK).unwrap(),
        "not json".into(),
    )
    .await
    .unwrap();
    for i in 1..=N {
        bus.publish(
            ENHANCEMENT_FEEDBACK,
            &json!({"message_id": format!("m{i}"), "rating": i % 5 + 1}),
        )
        .await
        .unwrap();
    }
    bus.flush().await.unwrap();
    tokio::time::timeout(WAIT, agent.wait_for(N)).await.unwrap();

    let response = bus
        .publish_task(
            "enhancement_agent",
            "feedback_summary",
            json!({}),
            Priority::Normal,
        )
        .await
        .unwrap();
    assert_eq!(response.status, TaskStatus::Completed, "{response:?}");
    let result = response.result.unwrap();
    assert_eq!(result["feedback_seen"], json!(N));
    assert_eq!(
        result["last_feedback"],
        json!({"message_id": format!("m{N}"), "rating": N % 5 + 1})
    );
    assert_eq!(result["undecodable"], json!(1));
    consumer.abort();
    runtime.shutdown(Duration::from_secs(1)).await;
}

/// The demo's connections, each part on an identity of its own with the
/// permissions `up --demo` gives it.
async fn buses_with_identities(server: &NatsServer) -> demo::DemoBuses {
    let mut buses = Vec::new();
    for grant in demo::DemoBuses::grants() {
        let agent = grant.agent.to_string();
        let target = server.add_identity(grant).await;
        buses.push(Bus::connect(&target, &agent).await.unwrap());
    }
    let [llm_agent, chat_manager, enhancement_agent, orchestrator]: [Bus; 4] =
        buses.try_into().unwrap();
    demo::DemoBuses {
        llm_agent,
        chat_manager,
        enhancement_agent,
        orchestrator,
    }
}

/// Every scenario of a round, each part with its own least-privilege identity.
#[tokio::test]
async fn demo_runs_a_round_of_every_scenario() {
    let server = NatsServer::start().await;
    let buses = buses_with_identities(&server).await;
    let (lines_tx, mut lines) = mpsc::unbounded_channel::<String>();
    let (stop_tx, stop) = tokio::sync::oneshot::channel::<()>();
    let options = DemoOptions {
        interval: Duration::from_millis(50),
        ..DemoOptions::default()
    };
    let demo = tokio::spawn(demo::run_demo_with(
        buses,
        options,
        async {
            let _ = stop.await;
        },
        move |line| {
            let _ = lines_tx.send(line.to_owned());
        },
    ));

    let mut seen = Vec::new();
    while let Some(line) = tokio::time::timeout(WAIT, lines.recv()).await.unwrap() {
        let done = line.contains("feedback_summary:");
        seen.push(line);
        if done {
            break;
        }
    }
    stop_tx.send(()).unwrap();
    tokio::time::timeout(WAIT, demo)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    let rest: Vec<String> = std::iter::from_fn(|| lines.try_recv().ok()).collect();

    assert_eq!(seen.len(), 6, "{seen:#?}");
    assert!(
        seen[0].starts_with("demo: serving llm_agent (echo mode"),
        "{seen:#?}"
    );
    assert_eq!(
        seen[1],
        r#"orchestrator -> llm_agent generate_text: completed (echo) "Write a short story about an AI agent""#
    );
    assert!(
        seen[2].starts_with("orchestrator -> chat_manager post_message: completed (message "),
        "{seen:#?}"
    );
    assert!(
        seen[3].starts_with("chat.message.new: session demo-session, message ")
            && seen[3].ends_with(r#": "Write a short story about an AI agent""#),
        "{seen:#?}"
    );
    assert!(
        seen[4].starts_with("orchestrator -> enhancement.feedback: rating 1 for message "),
        "{seen:#?}"
    );
    assert_eq!(
        seen[5],
        "orchestrator -> enhancement_agent feedback_summary: completed (1 feedback event seen)"
    );
    assert_eq!(
        rest.last().map(String::as_str),
        Some("demo: stopping"),
        "{rest:#?}"
    );
}

/// Returns once the server has processed everything `bus` sent before
/// (subscriptions included): `flush` only writes to the socket.
async fn sync_with_server(bus: &Bus) {
    let subject = format!("test.sync.{}", uuid::Uuid::new_v4().simple());
    let mut echo = bus.subscribe(&subject, None).await.unwrap();
    bus.publish(&subject, &()).await.unwrap();
    tokio::time::timeout(WAIT, echo.next())
        .await
        .expect("the server echoes the sync message")
        .expect("the connection is open");
}

fn uuid_like(id: &str) -> bool {
    id.len() == 36 && id.chars().filter(|c| *c == '-').count() == 4
}
