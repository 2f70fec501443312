//! `llm_agent` streaming its text to a caller that follows the task: echo
//! mode word by word, and an OpenAI-compatible endpoint's server-sent
//! events (played by the testkit's server on 127.0.0.1:0), against a real
//! nats-server, the agent in a real Runtime and the caller on a connection
//! of its own.

use agentbus::subject::TASK_EVENTS_STREAM;
use agentbus::task_log::{CancelOutcome, EventType, LogEvent, Watch, Watched};
use agentbus::{
    AgentOptions, Bus, RequestOptions, Runtime, TaskId, TaskRequest, TaskResponse, TaskStatus,
};
use agentbus_demo::{ECHO_NOTE, LlmAgent, LlmEndpoint};
use agentbus_testkit::{LlmRequest, LlmServer, LlmServerOptions, NatsServer, stream_tokens};
use futures::StreamExt;
use serde_json::{Value, json};
use std::time::{Duration, Instant};
use tokio::io::AsyncReadExt;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
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
        // Whoever runs it, for any caller.
        .get_last_raw_message_by_subject(&format!("task.*.*.*.{task_id}.events"))
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

/// A story for any prompt, streamed when asked; the prompts below get the
/// failures a streaming endpoint can have.
fn storyteller(request: &LlmRequest) -> (u16, String) {
    let story = |content: &str| {
        json!({"model": "tiny-model-2025", "choices": [{"message": {"role": "assistant", "content": content}}]})
            .to_string()
    };
    match request.prompt().unwrap_or_default() {
        "http error" => (
            500,
            json!({"error": {"message": "the model is overloaded"}}).to_string(),
        ),
        "garbage" => (
            200,
            "data: {\"choices\": [{\"delta\": {\"content\": \"Once\"}}]}\n\ndata: <html>oops</html>\n\n"
                .to_owned(),
        ),
        "cut short" => (
            200,
            "data: {\"choices\": [{\"delta\": {\"content\": \"Once\"}}]}\n\n".to_owned(),
        ),
        "error event" => (
            200,
            "data: {\"error\": {\"message\": \"the model  crashed\\nmidway\"}}\n\n".to_owned(),
        ),
        "a long story" => (200, story(&"and then ".repeat(30))),
        prompt => (200, story(&format!("Once upon a time: {prompt}"))),
    }
}

/// Streams with `millis` between events.
fn paced(millis: u64) -> LlmServerOptions {
    LlmServerOptions {
        token_delay: Duration::from_millis(millis),
        ..LlmServerOptions::default()
    }
}

fn endpoint(llm: &LlmServer) -> LlmEndpoint {
    LlmEndpoint::new(llm.base_url())
        .unwrap()
        .with_api_key("sk-test-123")
        .with_model("tiny-model")
}

fn llm_agent(llm: &LlmServer) -> LlmAgent {
    LlmAgent::new(Some(endpoint(llm))).unwrap()
}

#[tokio::test]
async fn an_endpoints_streamed_tokens_are_the_partials_in_order() {
    let mut llm = LlmServer::start_with(storyteller, paced(60)).await;
    let server = NatsServer::start().await;
    let (runtime, caller) = serve(&server, llm_agent(&llm)).await;
    let request = streamed(json!({"prompt": "a robot who learns to paint", "max_tokens": 42}));
    let mut watch = caller.watch(&request.task_id, 1).await.unwrap();
    let sent = send(&caller, &request);

    let seen = until_final(&mut watch).await;
    let (response, answered_at) = sent.await.unwrap();
    let story = "Once upon a time: a robot who learns to paint";
    assert_eq!(response.status, TaskStatus::Completed, "{response:?}");
    assert_eq!(
        response.result,
        Some(json!({"text": story, "model": "tiny-model-2025", "mode": "model"}))
    );
    assert_eq!(texts(&seen), stream_tokens(story));
    assert_eq!(texts(&seen).len(), 10);
    assert_contiguous(&seen);
    assert_eq!(seen.last().unwrap().0.kind, EventType::Completed);
    // Live: the first token came well before the answer (11 more pauses of 60 ms).
    let first = seen
        .iter()
        .find(|(e, _)| e.kind == EventType::Partial)
        .unwrap()
        .1;
    let ahead = answered_at.duration_since(first);
    assert!(ahead >= Duration::from_millis(300), "{ahead:?}");

    let asked = llm.next_request().await;
    assert_eq!(
        asked.body,
        json!({"model": "tiny-model", "messages": [{"role": "user", "content": "a robot who learns to paint"}], "max_tokens": 42, "stream": true})
    );
    assert_eq!(asked.header("accept"), Some("text/event-stream"));
    assert_eq!(asked.header("authorization"), Some("Bearer sk-test-123"));
    runtime.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test]
async fn cancel_during_an_endpoints_stream_closes_the_connection() {
    let mut llm = LlmServer::start_with(storyteller, paced(200)).await;
    let server = NatsServer::start().await;
    let (runtime, caller) = serve(&server, llm_agent(&llm)).await;
    let request = streamed(json!({"prompt": "a long story"}));
    let mut watch = caller.watch(&request.task_id, 1).await.unwrap();
    let sent = send(&caller, &request);

    let mut seen = Vec::new();
    while texts(&seen).is_empty() {
        seen.push(next_event(&mut watch).await);
    }
    let asked = Instant::now();
    caller.cancel(&request.task_id).await.unwrap();
    let (response, answered_at) = sent.await.unwrap();
    let took = answered_at.duration_since(asked);
    assert!(
        took < Duration::from_secs(1),
        "answered {took:?} after the cancel"
    );
    assert_eq!(response.status, TaskStatus::Cancelled, "{response:?}");
    seen.extend(until_final(&mut watch).await);
    assert_contiguous(&seen);
    assert_eq!(
        response.result.unwrap()["text"],
        texts(&seen).concat().as_str()
    );
    // The agent hung up: the endpoint saw its client leave mid-answer.
    let abandoned = llm.next_abandoned().await;
    assert!(abandoned.sent < abandoned.total, "{abandoned:?}");
    runtime.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test]
async fn a_failing_stream_is_a_failed_task_with_a_clear_message() {
    let llm = LlmServer::start(storyteller).await;
    let server = NatsServer::start().await;
    let (runtime, caller) = serve(&server, llm_agent(&llm)).await;
    let url = format!("{}/chat/completions", llm.base_url());
    let cases = [
        (
            "http error",
            format!(
                "the language model at {url} answered HTTP 500 Internal Server Error (the model is overloaded); the endpoint is failing; try again later"
            ),
            0,
        ),
        (
            "garbage",
            format!(
                "the language model at {url} streamed something that is not a chat completion chunk (expected value at line 1 column 1); check that LLM_BASE_URL points at an OpenAI-compatible API"
            ),
            1,
        ),
        (
            "cut short",
            format!(
                "the language model at {url} ended its stream before data: [DONE]; try again, and check that LLM_BASE_URL points at an OpenAI-compatible API"
            ),
            1,
        ),
        (
            "error event",
            format!(
                "the language model at {url} reported an error while streaming (the model crashed midway); try again later"
            ),
            0,
        ),
    ];
    for (prompt, message, partials) in cases {
        let request = streamed(json!({ "prompt": prompt }));
        let mut watch = caller.watch(&request.task_id, 1).await.unwrap();
        let (response, _) = send(&caller, &request).await.unwrap();
        assert_eq!(
            response.status,
            TaskStatus::Failed,
            "{prompt}: {response:?}"
        );
        assert_eq!(
            response.error.as_deref(),
            Some(message.as_str()),
            "{prompt}"
        );
        let seen = until_final(&mut watch).await;
        assert_eq!(texts(&seen).len(), partials, "{prompt}");
        assert_eq!(seen.last().unwrap().0.kind, EventType::Failed, "{prompt}");
    }
    runtime.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test]
async fn an_endpoint_that_ignores_stream_is_read_whole_as_one_partial() {
    let options = LlmServerOptions {
        streams: false,
        ..LlmServerOptions::default()
    };
    let mut llm = LlmServer::start_with(storyteller, options).await;
    let server = NatsServer::start().await;
    let (runtime, caller) = serve(&server, llm_agent(&llm)).await;
    let request = streamed(json!({"prompt": "a cat"}));
    let mut watch = caller.watch(&request.task_id, 1).await.unwrap();
    let (response, _) = send(&caller, &request).await.unwrap();
    let story = "Once upon a time: a cat";
    assert_eq!(
        response.result,
        Some(json!({"text": story, "model": "tiny-model-2025", "mode": "model"})),
        "{response:?}"
    );
    assert_eq!(texts(&until_final(&mut watch).await), [story]);
    assert!(llm.next_request().await.wants_stream());
    runtime.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test]
async fn a_stream_that_goes_quiet_fails_after_the_endpoints_timeout() {
    // The first event (the role) comes at once, the next after 3 s.
    let llm = LlmServer::start_with(storyteller, paced(3_000)).await;
    let endpoint = endpoint(&llm).with_timeout(Duration::from_millis(300));
    let server = NatsServer::start().await;
    let (runtime, caller) = serve(&server, LlmAgent::new(Some(endpoint)).unwrap()).await;
    let request = streamed(json!({"prompt": "a slow story"}));
    let asked = Instant::now();
    let (response, answered_at) = send(&caller, &request).await.unwrap();
    assert_eq!(response.status, TaskStatus::Failed, "{response:?}");
    assert_eq!(
        response.error.as_deref(),
        Some(
            format!(
                "the language model at {}/chat/completions sent nothing for 300ms while streaming; try again later or use a faster model",
                llm.base_url()
            )
            .as_str()
        )
    );
    let took = answered_at.duration_since(asked);
    assert!(took < Duration::from_secs(2), "{took:?}");
    runtime.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test]
async fn cancel_during_a_call_not_streamed_closes_the_connection() {
    // Accepts one call, never answers, and says when the caller hangs up.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (accepted_tx, accepted) = oneshot::channel();
    let (hung_up_tx, hung_up) = oneshot::channel();
    let _endpoint = tokio::spawn(async move {
        let (mut call, _) = listener.accept().await.unwrap();
        accepted_tx.send(()).unwrap();
        let mut buffer = [0u8; 4096];
        while call.read(&mut buffer).await.is_ok_and(|n| n > 0) {}
        hung_up_tx.send(Instant::now()).unwrap();
    });
    let endpoint = LlmEndpoint::new(&format!("http://{addr}/v1")).unwrap();
    let server = NatsServer::start().await;
    let (runtime, caller) = serve(&server, LlmAgent::new(Some(endpoint)).unwrap()).await;
    let request = TaskRequest::new("generate_text", json!({"prompt": "hi"}));
    let sent = send(&caller, &request);
    tokio::time::timeout(WAIT, accepted).await.unwrap().unwrap();

    let asked = Instant::now();
    caller.cancel(&request.task_id).await.unwrap();
    let (response, answered_at) = sent.await.unwrap();
    assert_eq!(response.status, TaskStatus::Cancelled, "{response:?}");
    assert_eq!(response.result, None);
    let took = answered_at.duration_since(asked);
    assert!(
        took < Duration::from_secs(1),
        "answered {took:?} after the cancel"
    );
    let hung_up_at = tokio::time::timeout(WAIT, hung_up).await.unwrap().unwrap();
    assert!(hung_up_at.duration_since(asked) < Duration::from_secs(1));
    runtime.shutdown(Duration::from_secs(1)).await;
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
