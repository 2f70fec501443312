//! `llm_agent` streaming its text to a caller that follows the task: echo
//! mode word by word, against a real nats-server, the agent in a real
//! Runtime and the caller on a connection of its own.

use agentbus::subject::{TASK_EVENTS_STREAM, task_events};
use agentbus::task_log::{CancelOutcome, EventType, LogEvent, Watch, Watched};
use agentbus::{
    AgentOptions, Bus, RequestOptions, Runtime, TaskId, TaskRequest, TaskResponse, TaskStatus,
};
use agentbus_demo::{ECHO_NOTE, LlmAgent};
use agentbus_testkit::NatsServer;
use futures::StreamExt;
use serde_json::{Value, json};
use std::time::{Duration, Instant};
use tokio::task::JoinHandle;

const WAIT: Duration = Duration::from_secs(10);

/// A runtime serving `agent` on its own connection, and a caller's connection.
async fn serve(server: &NatsServer, agent: LlmAgent) -> (Runtime, Bus) {
    let agent_bus = Bus::connect(&server.target(), "agents").await.unwrap();
    let mut runtime = Runtime::new(agent_bus.clone());
    runtime.add(agent, AgentOptions::default()).await.unwrap();
    sync_with_server(&agent_bus).await;
    let caller = Bus::connect(&server.target(), "caller").await.unwrap();
    (runtime, caller)
}

/// A request that follows its task.
fn streamed(payload: Value) -> TaskRequest {
    TaskRequest::new("generate_text", payload).streamed()
}

/// Sends `request` in the background; resolves to the response and when it came.
fn send(caller: &Bus, request: &TaskRequest) -> JoinHandle<(TaskResponse, Instant)> {
    let caller = caller.clone();
    let request = request.clone();
    tokio::spawn(async move {
        let response = caller
            .request("llm_agent", &request, RequestOptions::default())
            .await
            .unwrap();
        (response, Instant::now())
    })
}

/// The next event of `watch`, with when it arrived.
async fn next_event(watch: &mut Watch) -> (LogEvent, Instant) {
    match tokio::time::timeout(WAIT, watch.next()).await {
        Ok(Some(Ok(Watched::Event(event)))) => (event, Instant::now()),
        other => panic!("expected the next event of the log, got {other:?}"),
    }
}

/// The events of `watch` up to and with its final state.
async fn until_final(watch: &mut Watch) -> Vec<(LogEvent, Instant)> {
    let mut seen = Vec::new();
    loop {
        let (event, at) = next_event(watch).await;
        let last = event.kind.is_final();
        seen.push((event, at));
        if last {
            return seen;
        }
    }
}

fn texts(events: &[(LogEvent, Instant)]) -> Vec<String> {
    events
        .iter()
        .filter(|(e, _)| e.kind == EventType::Partial)
        .map(|(e, _)| e.data["text"].as_str().unwrap().to_owned())
        .collect()
}

fn assert_contiguous(events: &[(LogEvent, Instant)]) {
    let seqs: Vec<u64> = events.iter().map(|(e, _)| e.seq).collect();
    assert_eq!(seqs, (1..=seqs.len() as u64).collect::<Vec<_>>());
}

/// The last event stored for `task_id`, read from the stream itself.
async fn last_stored(server: &NatsServer, task_id: &TaskId) -> LogEvent {
    let message = server
        .jetstream()
        .await
        .get_stream(TASK_EVENTS_STREAM)
        .await
        .unwrap()
        .get_last_raw_message_by_subject(task_events(task_id).as_str())
        .await
        .unwrap();
    serde_json::from_slice(&message.payload).unwrap()
}

#[tokio::test]
async fn echo_streams_one_partial_per_word_in_order() {
    let server = NatsServer::start().await;
    let (runtime, caller) = serve(&server, LlmAgent::new(None).unwrap()).await;
    let request = streamed(json!({"prompt": "  The quick\tbrown fox\n jumps ", "max_tokens": 4}));
    let mut watch = caller.watch(&request.task_id, 1).await.unwrap();
    let sent = send(&caller, &request);

    let seen = until_final(&mut watch).await;
    let (response, _) = sent.await.unwrap();
    assert_eq!(response.status, TaskStatus::Completed, "{response:?}");
    assert_eq!(
        response.result,
        Some(json!({"text": "The quick brown fox", "mode": "echo", "note": ECHO_NOTE}))
    );
    let kinds: Vec<EventType> = seen.iter().map(|(e, _)| e.kind).collect();
    assert_eq!(
        kinds,
        [
            EventType::Accepted,
            EventType::Started,
            EventType::Partial,
            EventType::Partial,
            EventType::Partial,
            EventType::Partial,
            EventType::Completed
        ]
    );
    assert_contiguous(&seen);
    assert_eq!(texts(&seen), ["The ", "quick ", "brown ", "fox"]);
    assert_eq!(texts(&seen).concat(), "The quick brown fox");
    assert_eq!(seen.last().unwrap().0.response(), Some(response));
    runtime.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test]
async fn a_task_nobody_follows_writes_no_events() {
    let server = NatsServer::start().await;
    let (runtime, caller) = serve(&server, LlmAgent::new(None).unwrap()).await;
    let request = TaskRequest::new("generate_text", json!({"prompt": "one two three"}));
    let response = caller
        .request("llm_agent", &request, RequestOptions::default())
        .await
        .unwrap();
    assert_eq!(response.result.unwrap()["text"], "one two three");
    let stored = server
        .jetstream()
        .await
        .get_stream(TASK_EVENTS_STREAM)
        .await
        .unwrap()
        .info()
        .await
        .unwrap()
        .state
        .messages;
    assert_eq!(
        stored, 0,
        "no partial is logged for a caller that does not follow"
    );
    runtime.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test]
async fn echo_delay_spaces_the_words_and_the_first_arrives_well_before_the_answer() {
    let server = NatsServer::start().await;
    let (runtime, caller) = serve(&server, LlmAgent::new(None).unwrap()).await;
    let request = streamed(json!({"prompt": "a b c d e f", "echo_delay_ms": 150}));
    let mut watch = caller.watch(&request.task_id, 1).await.unwrap();
    let sent_at = Instant::now();
    let sent = send(&caller, &request);

    let seen = until_final(&mut watch).await;
    let (response, answered_at) = sent.await.unwrap();
    assert_eq!(response.status, TaskStatus::Completed, "{response:?}");
    assert_eq!(texts(&seen), ["a ", "b ", "c ", "d ", "e ", "f"]);
    // Five pauses of 150 ms between six words...
    let took = answered_at.duration_since(sent_at);
    assert!(took >= Duration::from_millis(750), "{took:?}");
    // ...and the first word came out before them.
    let first = seen
        .iter()
        .find(|(e, _)| e.kind == EventType::Partial)
        .unwrap()
        .1;
    let ahead = answered_at.duration_since(first);
    assert!(ahead >= Duration::from_millis(500), "{ahead:?}");
    runtime.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test]
async fn an_echo_delay_that_is_not_a_bounded_integer_is_rejected() {
    let server = NatsServer::start().await;
    let (runtime, caller) = serve(&server, LlmAgent::new(None).unwrap()).await;
    for bad in [json!(-1), json!("100"), json!(1.5), json!(10_001)] {
        let request = TaskRequest::new(
            "generate_text",
            json!({"prompt": "hi", "echo_delay_ms": bad.clone()}),
        );
        let response = caller
            .request("llm_agent", &request, RequestOptions::default())
            .await
            .unwrap();
        assert_eq!(response.status, TaskStatus::Rejected, "{bad}: {response:?}");
        let error = response.error.unwrap();
        assert!(
            error.starts_with(
                "the payload of generate_text does not match its schema at /echo_delay_ms: "
            ),
            "{bad}: {error}"
        );
    }
    runtime.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test]
async fn cancel_during_a_delayed_echo_ends_it_within_a_second() {
    let server = NatsServer::start().await;
    let (runtime, caller) = serve(&server, LlmAgent::new(None).unwrap()).await;
    let canceller = Bus::connect(&server.target(), "canceller").await.unwrap();
    let words: Vec<String> = (1..=20).map(|i| format!("w{i}")).collect();
    let request = streamed(json!({"prompt": words.join(" "), "echo_delay_ms": 500}));
    let mut watch = caller.watch(&request.task_id, 1).await.unwrap();
    let sent = send(&caller, &request);

    let mut seen = Vec::new();
    while texts(&seen).len() < 2 {
        seen.push(next_event(&mut watch).await);
    }
    let asked = Instant::now();
    let outcome = canceller.cancel(&request.task_id).await.unwrap();
    assert!(
        matches!(outcome, CancelOutcome::Cancelling { ref agent, .. } if agent == "llm_agent"),
        "{outcome:?}"
    );
    let (response, answered_at) = sent.await.unwrap();
    let took = answered_at.duration_since(asked);
    assert!(
        took < Duration::from_secs(1),
        "answered {took:?} after the cancel"
    );
    assert_eq!(response.status, TaskStatus::Cancelled, "{response:?}");
    seen.extend(until_final(&mut watch).await);
    assert_contiguous(&seen);
    let (last, _) = seen.last().unwrap();
    assert_eq!(last.kind, EventType::Cancelled);
    // The result is the text so far, exactly what the partials carried.
    let so_far = texts(&seen).concat();
    assert!(texts(&seen).len() < words.len(), "{so_far:?}");
    assert_eq!(response.result.unwrap()["text"], so_far.as_str());
    // Nothing was stored after the final event, even once the handler is gone.
    runtime.shutdown(Duration::from_secs(1)).await;
    assert_eq!(&last_stored(&server, &request.task_id).await, last);
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
