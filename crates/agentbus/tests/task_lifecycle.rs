//! Long-running tasks against a real nats-server: their event logs,
//! watching with resume, cancellation, deadlines and questions back.

use agentbus::delivery::{Queue, ResultRetention, TaskState};
use agentbus::task_log::{CancelOutcome, ControlErrorKind, EventType, LogEvent, Watch, Watched};
use agentbus::{
    Agent, AgentOptions, Bus, RequestOptions, Runtime, TaskContext, TaskError, TaskId, TaskRequest,
    TaskResponse, TaskStatus, TaskTypeSpec,
};
use agentbus_ops::topology::Topology;
use agentbus_testkit::NatsServer;
use futures::StreamExt;
use serde_json::{Value, json};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

/// An agent whose behaviour is picked by task type; counts its runs.
#[derive(Clone, Default)]
struct Writer {
    runs: Arc<AtomicUsize>,
    /// Set when a handler saw `cancelled()` resolve.
    saw_stop: Arc<Mutex<Option<Instant>>>,
    /// Attempts at `flaky` tasks.
    flaky: Arc<AtomicUsize>,
}

impl Agent for Writer {
    fn name(&self) -> &str {
        "writer"
    }

    fn task_types(&self) -> Vec<TaskTypeSpec> {
        [
            "words", "forever", "stubborn", "ask", "quick", "deadline", "delegate", "flaky", "big",
            "broken",
        ]
        .into_iter()
        .map(|t| TaskTypeSpec::new(t).unwrap())
        .collect()
    }

    async fn handle(&self, task: TaskRequest, ctx: TaskContext) -> Result<Value, TaskError> {
        self.runs.fetch_add(1, Ordering::SeqCst);
        match task.task_type.as_str() {
            "words" => {
                let count = task.payload["count"].as_u64().unwrap_or(5);
                let delay = task.payload["delay_ms"].as_u64().unwrap_or(0);
                for i in 0..count {
                    ctx.partial(&json!({ "text": format!("w{i} ") }))
                        .await
                        .map_err(|err| TaskError::failed(err.to_string()))?;
                    if i == count / 2 {
                        ctx.progress(Some(0.5), Some("halfway")).await.ok();
                    }
                    tokio::time::sleep(Duration::from_millis(delay)).await;
                }
                Ok(json!({ "words": count }))
            }
            "forever" => {
                let reason = ctx.cancelled().await;
                *self.saw_stop.lock().unwrap() = Some(Instant::now());
                Err(TaskError::failed(format!("stopped: {reason:?}")))
            }
            "stubborn" => {
                tokio::time::sleep(Duration::from_secs(60)).await;
                Ok(json!("never"))
            }
            "ask" => {
                let answer = ctx.ask(json!({ "question": "proceed?" })).await?;
                Ok(json!({ "answer": answer }))
            }
            "quick" => Ok(json!("done")),
            "big" => {
                let size = task.payload["size"].as_u64().unwrap_or(0) as usize;
                Ok(json!({ "text": "x".repeat(size) }))
            }
            "broken" => Err(TaskError::permanent("broken for good")),
            "flaky" => {
                let attempt = self.flaky.fetch_add(1, Ordering::SeqCst) + 1;
                ctx.partial(&json!({ "attempt": attempt })).await.ok();
                if attempt == 1 {
                    return Err(TaskError::failed("first attempts fail"));
                }
                Ok(json!({ "attempts": attempt }))
            }
            "deadline" => Ok(json!({
                "deadline": ctx.deadline().map(|d| humantime::format_rfc3339_millis(d).to_string())
            })),
            "delegate" => {
                let inner = TaskRequest::new("deadline", json!({}));
                let response = ctx
                    .send_task("writer", &inner, RequestOptions::default())
                    .await
                    .map_err(|err| TaskError::failed(err.to_string()))?;
                Ok(json!({
                    "mine": ctx.deadline().map(|d| humantime::format_rfc3339_millis(d).to_string()),
                    "inner": response.result,
                }))
            }
            other => Err(TaskError::rejected(format!("no {other}"))),
        }
    }
}

async fn bus(server: &NatsServer) -> Bus {
    Bus::from_client(server.connect().await)
}

async fn serve(server: &NatsServer, agent: Writer, options: AgentOptions) -> Runtime {
    let mut runtime = Runtime::new(bus(server).await);
    runtime.add(agent, options).await.unwrap();
    runtime
}

fn quick_options() -> AgentOptions {
    AgentOptions {
        presence: false,
        cancel_grace: Duration::from_millis(300),
        ..AgentOptions::default()
    }
}

/// Sends `request` to the writer in the background: its response, and when
/// it came.
fn send(client: &Bus, request: &TaskRequest) -> tokio::task::JoinHandle<(TaskResponse, Instant)> {
    let (client, request) = (client.clone(), request.clone());
    tokio::spawn(async move {
        let response = client
            .request("writer", &request, RequestOptions::default())
            .await
            .unwrap();
        (response, Instant::now())
    })
}

/// Reads `watch` up to the next event of `kind`, which it returns.
async fn next_of(watch: &mut Watch, kind: EventType) -> LogEvent {
    loop {
        let Some(Ok(Watched::Event(event))) = watch.next().await else {
            panic!("the log goes on")
        };
        if event.kind == kind {
            return event;
        }
    }
}

/// Every event of a watch up to its end, with the gaps reported.
async fn collect(bus: &Bus, task_id: &TaskId, from: u64) -> Vec<Watched> {
    let mut watch = bus.watch(task_id, from).await.unwrap();
    let mut items = Vec::new();
    while let Some(item) = tokio::time::timeout(Duration::from_secs(10), watch.next())
        .await
        .expect("the watch ends at the final state")
    {
        items.push(item.unwrap());
    }
    items
}

fn events(items: &[Watched]) -> Vec<LogEvent> {
    items
        .iter()
        .filter_map(|item| match item {
            Watched::Event(event) => Some(event.clone()),
            Watched::Gone { .. } => None,
        })
        .collect()
}

#[tokio::test]
async fn partials_arrive_in_order_with_no_gaps_while_the_task_runs() {
    let server = NatsServer::start().await;
    let _runtime = serve(&server, Writer::default(), quick_options()).await;
    let client = bus(&server).await;
    let request = TaskRequest::new("words", json!({"count": 8, "delay_ms": 50})).streamed();
    let mut watch = client.watch(&request.task_id, 1).await.unwrap();
    let sent = send(&client, &request);
    let mut seen = Vec::new();
    let mut first_partial_at = None;
    while let Some(item) = watch.next().await {
        let Watched::Event(event) = item.unwrap() else {
            panic!("nothing is gone from a fresh log")
        };
        if event.kind == EventType::Partial && first_partial_at.is_none() {
            first_partial_at = Some(Instant::now());
        }
        let last = event.kind.is_final();
        seen.push(event);
        if last {
            break;
        }
    }
    let (response, answered_at) = sent.await.unwrap();
    assert_eq!(response.status, TaskStatus::Completed);
    // Live: the first chunk came well before the answer (8 × 50 ms of work).
    assert!(answered_at.duration_since(first_partial_at.unwrap()) > Duration::from_millis(200));
    let kinds: Vec<EventType> = seen.iter().map(|e| e.kind).collect();
    assert_eq!(kinds[..2], [EventType::Accepted, EventType::Started]);
    assert_eq!(*kinds.last().unwrap(), EventType::Completed);
    assert_eq!(
        kinds.iter().filter(|k| **k == EventType::Partial).count(),
        8
    );
    assert!(kinds.contains(&EventType::Progress));
    let seqs: Vec<u64> = seen.iter().map(|e| e.seq).collect();
    assert_eq!(seqs, (1..=seen.len() as u64).collect::<Vec<_>>());
    let texts: Vec<&str> = seen
        .iter()
        .filter(|e| e.kind == EventType::Partial)
        .map(|e| e.data["text"].as_str().unwrap())
        .collect();
    assert_eq!(texts, (0..8).map(|i| format!("w{i} ")).collect::<Vec<_>>());
    assert_eq!(seen.last().unwrap().response().unwrap(), response);

    // Resumed from any sequence: exactly the events from there to the end.
    let resumed = events(&collect(&client, &request.task_id, 5).await);
    assert_eq!(resumed, seen[4..].to_vec());
    // From past the end: nothing, and the watch ends.
    assert!(collect(&client, &request.task_id, 100).await.is_empty());
    let report = client.task_report(&request.task_id).await.unwrap();
    assert_eq!(report.state, TaskState::Completed);
}

#[tokio::test]
async fn a_task_that_reports_nothing_keeps_an_empty_log() {
    let server = NatsServer::start().await;
    let _runtime = serve(&server, Writer::default(), quick_options()).await;
    let client = bus(&server).await;
    let request = TaskRequest::new("quick", json!({}));
    let response = client
        .request("writer", &request, RequestOptions::default())
        .await
        .unwrap();
    assert!(response.is_completed());
    let stream = server
        .jetstream()
        .await
        .get_stream("agent-task-events")
        .await
        .unwrap()
        .info()
        .await
        .unwrap()
        .state
        .messages;
    assert_eq!(
        stream, 0,
        "a quick task that reports nothing writes no event"
    );
    // A handler that reports begins its log even unasked.
    let request = TaskRequest::new("words", json!({"count": 2}));
    client
        .request("writer", &request, RequestOptions::default())
        .await
        .unwrap();
    let kinds: Vec<EventType> = events(&collect(&client, &request.task_id, 1).await)
        .iter()
        .map(|e| e.kind)
        .collect();
    assert_eq!(
        kinds,
        [
            EventType::Accepted,
            EventType::Started,
            EventType::Partial,
            EventType::Partial,
            EventType::Progress,
            EventType::Completed
        ]
    );
}

#[tokio::test]
async fn a_watcher_asking_for_events_past_the_limits_is_told_they_are_gone() {
    let mut topology = Topology::standard();
    for stream in &mut topology.streams {
        if stream.name == "agent-task-events" {
            stream.max_msgs_per_subject = Some(5);
        }
    }
    let server = NatsServer::start_with_topology(&topology).await;
    let _runtime = serve(&server, Writer::default(), quick_options()).await;
    let client = bus(&server).await;
    let request = TaskRequest::new("words", json!({"count": 12})).streamed();
    client
        .request("writer", &request, RequestOptions::default())
        .await
        .unwrap();
    let items = collect(&client, &request.task_id, 3).await;
    // 2 + 12 partials + 1 progress + final = 16 events; the last 5 are kept.
    assert_eq!(items[0], Watched::Gone { from: 3, until: 12 });
    let seqs: Vec<u64> = events(&items).iter().map(|e| e.seq).collect();
    assert_eq!(seqs, [12, 13, 14, 15, 16]);
}

#[tokio::test]
async fn cancel_reaches_a_running_handler_on_another_connection_within_a_second() {
    let server = NatsServer::start().await;
    let agent = Writer::default();
    let _runtime = serve(&server, agent.clone(), quick_options()).await;
    let client = bus(&server).await;
    let canceller = bus(&server).await;
    let request = TaskRequest::new("forever", json!({})).streamed();
    let mut watch = client.watch(&request.task_id, 1).await.unwrap();
    let sent = send(&client, &request);
    // Started: the handler runs.
    next_of(&mut watch, EventType::Started).await;
    let asked = Instant::now();
    let outcome = canceller.cancel(&request.task_id).await.unwrap();
    assert!(matches!(outcome, CancelOutcome::Cancelling { ref agent, .. } if agent == "writer"));
    let (response, _) = sent.await.unwrap();
    let saw = agent
        .saw_stop
        .lock()
        .unwrap()
        .expect("the handler saw the cancel");
    assert!(saw.duration_since(asked) < Duration::from_secs(1));
    assert_eq!(response.status, TaskStatus::Cancelled);
    let last = events(&collect(&client, &request.task_id, 1).await)
        .pop()
        .unwrap();
    assert_eq!(last.kind, EventType::Cancelled);
    assert_eq!(
        client.task_report(&request.task_id).await.unwrap().state,
        TaskState::Cancelled
    );
    // Idempotent: a second cancel says it is over and changes nothing.
    assert_eq!(
        canceller.cancel(&request.task_id).await.unwrap(),
        CancelOutcome::AlreadyOver(TaskState::Cancelled)
    );
    let unknown = canceller.cancel(&TaskId::new()).await.unwrap_err();
    assert_eq!(unknown.kind(), ControlErrorKind::UnknownTask);
}

#[tokio::test]
async fn a_handler_that_ignores_cancellation_is_dropped_after_the_grace_period() {
    let server = NatsServer::start().await;
    let _runtime = serve(&server, Writer::default(), quick_options()).await;
    let client = bus(&server).await;
    let request = TaskRequest::new("stubborn", json!({}));
    let sent = send(&client, &request);
    // Held by the runtime: it answers for the task.
    let state = wait_for_state(&client, &request.task_id, TaskState::Running).await;
    assert_eq!(state, TaskState::Running);
    let asked = Instant::now();
    let outcome = client.cancel(&request.task_id).await.unwrap();
    assert!(matches!(outcome, CancelOutcome::Cancelling { .. }));
    let (response, answered) = sent.await.unwrap();
    assert_eq!(response.status, TaskStatus::Cancelled);
    let took = answered.duration_since(asked);
    assert!(
        took >= Duration::from_millis(300) && took < Duration::from_secs(3),
        "{took:?}"
    );
}

async fn wait_for_state(bus: &Bus, task_id: &TaskId, wanted: TaskState) -> TaskState {
    let until = Instant::now() + Duration::from_secs(10);
    loop {
        let state = bus.task_report(task_id).await.unwrap().state;
        if state == wanted || Instant::now() > until {
            return state;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn a_queued_task_cancelled_before_any_worker_takes_it_never_runs() {
    let server = NatsServer::start().await;
    let client = bus(&server).await;
    let queue = Queue::agent("writer").unwrap();
    let cancelled = TaskRequest::new("quick", json!({}));
    let kept = TaskRequest::new("quick", json!({}));
    for request in [&cancelled, &kept] {
        client
            .submit_recorded(&queue, request, ResultRetention::Keep)
            .await
            .unwrap();
    }
    assert_eq!(
        client.cancel(&cancelled.task_id).await.unwrap(),
        CancelOutcome::Dequeued
    );
    let agent = Writer::default();
    let _runtime = serve(&server, agent.clone(), quick_options()).await;
    let done = client
        .wait_task(&kept.task_id, Duration::from_secs(10))
        .await
        .unwrap();
    assert!(done.is_completed());
    assert_eq!(
        agent.runs.load(Ordering::SeqCst),
        1,
        "only the kept task ran"
    );
    let report = client.task_report(&cancelled.task_id).await.unwrap();
    assert_eq!(report.state, TaskState::Cancelled);
    assert_eq!(
        report.record.unwrap().response.unwrap().status,
        TaskStatus::Cancelled
    );
    assert_eq!(report.last_event.unwrap().kind, EventType::Cancelled);
}

#[tokio::test]
async fn deadlines_stop_running_tasks_and_keep_late_ones_from_starting() {
    let server = NatsServer::start().await;
    let agent = Writer::default();
    let _runtime = serve(&server, agent.clone(), quick_options()).await;
    let client = bus(&server).await;

    // Running past its deadline: stopped, `timeout`, logged.
    let request = TaskRequest::new("stubborn", json!({}))
        .with_deadline(SystemTime::now() + Duration::from_millis(400));
    let started = Instant::now();
    let response = client
        .request("writer", &request, RequestOptions::default())
        .await
        .unwrap();
    assert_eq!(response.status, TaskStatus::Timeout);
    assert!(started.elapsed() < Duration::from_secs(3));
    assert_eq!(
        client.task_report(&request.task_id).await.unwrap().state,
        TaskState::Timeout
    );

    // Past its deadline already: never started.
    let runs = agent.runs.load(Ordering::SeqCst);
    let late = TaskRequest::new("quick", json!({}))
        .with_deadline(SystemTime::now() - Duration::from_secs(1));
    let response = client
        .request("writer", &late, RequestOptions::default())
        .await
        .unwrap();
    assert_eq!(response.status, TaskStatus::Timeout);
    let queued = TaskRequest::new("quick", json!({}))
        .with_deadline(SystemTime::now() + Duration::from_millis(200));
    // Queued after its deadline passed.
    tokio::time::sleep(Duration::from_millis(300)).await;
    client
        .submit_recorded(
            &Queue::agent("writer").unwrap(),
            &queued,
            ResultRetention::Keep,
        )
        .await
        .unwrap();
    let done = client
        .wait_task(&queued.task_id, Duration::from_secs(10))
        .await
        .unwrap();
    assert_eq!(done.status, TaskStatus::Timeout);
    assert_eq!(
        agent.runs.load(Ordering::SeqCst),
        runs,
        "neither late task ran"
    );
    assert_eq!(
        client.task_report(&queued.task_id).await.unwrap().state,
        TaskState::Timeout
    );
}

#[tokio::test]
async fn a_sub_task_inherits_the_remaining_deadline() {
    let server = NatsServer::start().await;
    let _runtime = serve(&server, Writer::default(), quick_options()).await;
    let client = bus(&server).await;
    let deadline = SystemTime::now() + Duration::from_secs(20);
    let request = TaskRequest::new("delegate", json!({})).with_deadline(deadline);
    let response = client
        .request("writer", &request, RequestOptions::default())
        .await
        .unwrap();
    assert!(response.is_completed(), "{response:?}");
    let result = response.result.unwrap();
    let expected = humantime::format_rfc3339_millis(deadline).to_string();
    assert_eq!(result["mine"], expected.as_str());
    assert_eq!(result["inner"]["deadline"], expected.as_str());
    // A task without a deadline hands none down.
    let response = client
        .request(
            "writer",
            &TaskRequest::new("delegate", json!({})),
            RequestOptions::default(),
        )
        .await
        .unwrap();
    assert_eq!(response.result.unwrap()["inner"]["deadline"], Value::Null);
}

#[tokio::test]
async fn a_question_is_answered_through_the_library() {
    let server = NatsServer::start().await;
    let _runtime = serve(&server, Writer::default(), quick_options()).await;
    let client = bus(&server).await;
    let request = TaskRequest::new("ask", json!({}));
    let mut watch = client.watch(&request.task_id, 1).await.unwrap();
    let sent = send(&client, &request);
    let event = next_of(&mut watch, EventType::InputRequired).await;
    assert_eq!(event.data["question"], json!({"question": "proceed?"}));
    assert_eq!(
        client.task_report(&request.task_id).await.unwrap().state,
        TaskState::InputRequired
    );
    // Not JSON-shaped answers are any JSON value: a string here.
    client
        .answer(&request.task_id, &json!("yes"))
        .await
        .unwrap();
    let (response, _) = sent.await.unwrap();
    assert_eq!(response.result.unwrap(), json!({"answer": "yes"}));
    let kinds: Vec<EventType> = events(&collect(&client, &request.task_id, 1).await)
        .iter()
        .map(|e| e.kind)
        .collect();
    assert_eq!(
        kinds,
        [
            EventType::Accepted,
            EventType::Started,
            EventType::InputRequired,
            EventType::InputReceived,
            EventType::Completed
        ]
    );
    // The task is over: another answer is refused, saying so.
    let err = client
        .answer(&request.task_id, &json!("again"))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ControlErrorKind::Over);
}

#[tokio::test]
async fn an_unanswered_question_ends_the_task_at_its_deadline() {
    let server = NatsServer::start().await;
    let _runtime = serve(&server, Writer::default(), quick_options()).await;
    let client = bus(&server).await;
    let request = TaskRequest::new("ask", json!({}))
        .with_deadline(SystemTime::now() + Duration::from_millis(500));
    let response = client
        .request("writer", &request, RequestOptions::default())
        .await
        .unwrap();
    assert_eq!(response.status, TaskStatus::Timeout);
    let last = events(&collect(&client, &request.task_id, 1).await)
        .pop()
        .unwrap();
    assert_eq!(last.kind, EventType::Timeout);
}

#[tokio::test]
async fn a_retried_queued_task_goes_on_in_the_same_log() {
    let server = NatsServer::start().await;
    let options = AgentOptions {
        delivery: agentbus::delivery::DeliveryOptions {
            retry_backoff: Duration::from_millis(50),
            max_retry_backoff: Duration::from_millis(100),
            idle_poll: Duration::from_millis(100),
            ..Default::default()
        },
        ..quick_options()
    };
    let _runtime = serve(&server, Writer::default(), options).await;
    let client = bus(&server).await;
    let request = TaskRequest::new("flaky", json!({})).streamed();
    client
        .submit_recorded(
            &Queue::agent("writer").unwrap(),
            &request,
            ResultRetention::Keep,
        )
        .await
        .unwrap();
    let logged = events(&collect(&client, &request.task_id, 1).await);
    let kinds: Vec<(EventType, Value)> = logged
        .iter()
        .map(|e| {
            (
                e.kind,
                e.data.get("attempt").cloned().unwrap_or(Value::Null),
            )
        })
        .collect();
    assert_eq!(
        kinds,
        [
            (EventType::Accepted, Value::Null),
            (EventType::Started, json!(1)),
            (EventType::Partial, json!(1)),
            (EventType::Started, json!(2)),
            (EventType::Partial, json!(2)),
            (EventType::Completed, Value::Null),
        ]
    );
    assert_eq!(
        logged.iter().map(|e| e.seq).collect::<Vec<_>>(),
        (1..=6).collect::<Vec<_>>()
    );
    assert_eq!(logged[0].instance, "submitter");
}

/// A streamed task's log, as its kinds in order, after it ended.
async fn kinds_of(client: &Bus, task_id: &TaskId) -> Vec<EventType> {
    events(&collect(client, task_id, 1).await)
        .iter()
        .map(|e| e.kind)
        .collect()
}

#[tokio::test]
async fn a_foreign_message_in_a_log_does_not_stop_the_task_or_its_runtime() {
    let server = NatsServer::start().await;
    let _runtime = serve(&server, Writer::default(), quick_options()).await;
    let client = bus(&server).await;
    let request = TaskRequest::new("words", json!({"count": 2})).streamed();
    // Something that is not an event, on the task's log subject.
    client
        .jetstream()
        .publish(
            agentbus::subject::task_events(&agentbus::TaskKey::new(
                &Queue::agent("writer").unwrap(),
                None,
                &request.task_id,
            )),
            "not an event".into(),
        )
        .await
        .unwrap()
        .await
        .unwrap();
    client
        .submit_recorded(
            &Queue::agent("writer").unwrap(),
            &request,
            ResultRetention::Keep,
        )
        .await
        .unwrap();
    let done = client
        .wait_task(&request.task_id, Duration::from_secs(10))
        .await
        .unwrap();
    assert!(done.is_completed(), "{done:?}");
    let logged = events(&collect(&client, &request.task_id, 1).await);
    assert_eq!(logged.last().unwrap().kind, EventType::Completed);
    // And the runtime still serves.
    let response = client
        .request(
            "writer",
            &TaskRequest::new("quick", json!({})),
            RequestOptions::default(),
        )
        .await
        .unwrap();
    assert!(response.is_completed());
}

#[tokio::test]
async fn an_answer_too_large_for_the_log_is_refused_and_the_question_still_waits() {
    let server = NatsServer::start().await;
    let _runtime = serve(&server, Writer::default(), quick_options()).await;
    let client = bus(&server).await;
    let request = TaskRequest::new("ask", json!({}));
    let mut watch = client.watch(&request.task_id, 1).await.unwrap();
    let sent = send(&client, &request);
    next_of(&mut watch, EventType::InputRequired).await;
    let huge = json!("y".repeat(client.max_payload() - 300));
    let err = client.answer(&request.task_id, &huge).await.unwrap_err();
    assert_eq!(err.kind(), ControlErrorKind::NotAsking, "{err}");
    assert!(err.to_string().contains("max_payload"), "{err}");
    assert_eq!(
        client.task_report(&request.task_id).await.unwrap().state,
        TaskState::InputRequired
    );
    client.answer(&request.task_id, &json!("ok")).await.unwrap();
    let (response, _) = sent.await.unwrap();
    assert_eq!(response.result.unwrap(), json!({"answer": "ok"}));
}

#[tokio::test]
async fn a_replayed_streamed_task_runs_again_in_a_fresh_log() {
    let server = NatsServer::start().await;
    let _runtime = serve(&server, Writer::default(), quick_options()).await;
    let client = bus(&server).await;
    let request = TaskRequest::new("broken", json!({})).streamed();
    let queue = Queue::agent("writer").unwrap();
    client
        .submit_recorded(&queue, &request, ResultRetention::Keep)
        .await
        .unwrap();
    let first = client
        .wait_task(&request.task_id, Duration::from_secs(10))
        .await
        .unwrap();
    assert_eq!(first.status, TaskStatus::Failed);
    assert_eq!(
        kinds_of(&client, &request.task_id).await,
        [EventType::Accepted, EventType::Started, EventType::Failed]
    );
    assert_eq!(
        client
            .replay_dead_letter(request.task_id.as_str())
            .await
            .unwrap(),
        1
    );
    // It runs again (and fails again): a new log, not a refusal.
    let until = Instant::now() + Duration::from_secs(10);
    loop {
        let report = client.task_report(&request.task_id).await.unwrap();
        if report.state == TaskState::DeadLettered
            && report.record.as_ref().unwrap().attempts == 1
            && report.last_event.is_some()
            && report.last_event.as_ref().unwrap().kind == EventType::Failed
        {
            let record = report.record.unwrap();
            assert_eq!(record.response.unwrap().status, TaskStatus::Failed);
            break;
        }
        assert!(Instant::now() < until, "{report:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let logged = events(&collect(&client, &request.task_id, 1).await);
    assert_eq!(logged.first().unwrap().seq, 1);
    assert_eq!(
        logged
            .iter()
            .filter(|e| e.kind == EventType::Started)
            .count(),
        1,
        "the earlier run's events are cleared: {logged:?}"
    );
}

#[tokio::test]
async fn streamed_queued_tasks_log_one_accepted_each_with_no_gaps() {
    let server = NatsServer::start().await;
    let _runtime = serve(&server, Writer::default(), quick_options()).await;
    let client = bus(&server).await;
    let queue = Queue::agent("writer").unwrap();
    let requests: Vec<TaskRequest> = (0..60)
        .map(|_| TaskRequest::new("words", json!({"count": 1})).streamed())
        .collect();
    for request in &requests {
        client
            .submit_recorded(&queue, request, ResultRetention::Keep)
            .await
            .unwrap();
    }
    for request in &requests {
        let done = client
            .wait_task(&request.task_id, Duration::from_secs(20))
            .await
            .unwrap();
        assert!(done.is_completed());
        let logged = events(&collect(&client, &request.task_id, 1).await);
        let kinds: Vec<EventType> = logged.iter().map(|e| e.kind).collect();
        assert_eq!(
            kinds,
            [
                EventType::Accepted,
                EventType::Started,
                EventType::Partial,
                EventType::Progress,
                EventType::Completed
            ],
            "{logged:?}"
        );
        assert_eq!(
            logged.iter().map(|e| e.seq).collect::<Vec<_>>(),
            [1, 2, 3, 4, 5]
        );
    }
}

#[tokio::test]
async fn a_result_too_large_for_the_log_still_logs_the_final_state() {
    let server = NatsServer::start().await;
    let _runtime = serve(&server, Writer::default(), quick_options()).await;
    let client = bus(&server).await;
    let size = client.max_payload() - 200;
    let request = TaskRequest::new("big", json!({ "size": size })).streamed();
    let response = client
        .request("writer", &request, RequestOptions::default())
        .await
        .unwrap();
    assert!(response.is_completed());
    let last = events(&collect(&client, &request.task_id, 1).await)
        .pop()
        .unwrap();
    assert_eq!(last.kind, EventType::Completed);
    let logged = last.response().unwrap();
    assert_eq!(logged.result, None);
    assert!(
        logged
            .error
            .unwrap()
            .contains("too large for the task's log"),
        "the final event says where the result went"
    );
}

#[tokio::test]
async fn a_task_id_sent_again_after_its_end_starts_a_fresh_log() {
    let server = NatsServer::start().await;
    let options = AgentOptions {
        dedup_capacity: 0,
        ..quick_options()
    };
    let _runtime = serve(&server, Writer::default(), options).await;
    let client = bus(&server).await;
    let first = TaskRequest::new("words", json!({"count": 3})).streamed();
    client
        .request("writer", &first, RequestOptions::default())
        .await
        .unwrap();
    let mut again = TaskRequest::new("words", json!({"count": 1})).streamed();
    again.task_id = first.task_id.clone();
    client
        .request("writer", &again, RequestOptions::default())
        .await
        .unwrap();
    // The second run alone: one partial, not the first run's three.
    assert_eq!(
        kinds_of(&client, &first.task_id).await,
        [
            EventType::Accepted,
            EventType::Started,
            EventType::Partial,
            EventType::Progress,
            EventType::Completed
        ]
    );
}

#[tokio::test]
async fn a_dropped_watch_leaves_no_consumer_behind() {
    let server = NatsServer::start().await;
    let client = bus(&server).await;
    let js = server.jetstream().await;
    let consumers = || async {
        js.get_stream("agent-task-events")
            .await
            .unwrap()
            .info()
            .await
            .unwrap()
            .state
            .consumer_count
    };
    let watch = client.watch(&TaskId::new(), 1).await.unwrap();
    assert_eq!(consumers().await, 1);
    drop(watch);
    let until = Instant::now() + Duration::from_secs(5);
    while consumers().await != 0 {
        assert!(Instant::now() < until, "the watch's consumer stayed");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn a_task_waiting_for_a_slot_is_cancelled_before_it_runs() {
    let server = NatsServer::start().await;
    let agent = Writer::default();
    let options = AgentOptions {
        max_concurrency: 1,
        ..quick_options()
    };
    let _runtime = serve(&server, agent.clone(), options).await;
    let client = bus(&server).await;
    let blocker = TaskRequest::new("forever", json!({}));
    let waiting = TaskRequest::new("quick", json!({}));
    let blocked = send(&client, &blocker);
    assert_eq!(
        wait_for_state(&client, &blocker.task_id, TaskState::Running).await,
        TaskState::Running
    );
    let queued = send(&client, &waiting);
    // Held (waiting for the slot), so the runtime answers for it.
    assert_eq!(
        wait_for_state(&client, &waiting.task_id, TaskState::Running).await,
        TaskState::Running
    );
    assert!(matches!(
        client.cancel(&waiting.task_id).await.unwrap(),
        CancelOutcome::Cancelling { .. }
    ));
    client.cancel(&blocker.task_id).await.unwrap();
    assert_eq!(blocked.await.unwrap().0.status, TaskStatus::Cancelled);
    assert_eq!(queued.await.unwrap().0.status, TaskStatus::Cancelled);
    assert_eq!(
        agent.runs.load(Ordering::SeqCst),
        1,
        "the waiting task never ran"
    );
}

#[tokio::test]
async fn more_than_a_thousand_watches_can_be_open_at_once() {
    // nats-server 2.15 allows 1,000 consumers per stream unless the stream
    // sets its own limit, as the standard topology does.
    async fn open_watches(server: &NatsServer) -> (usize, Vec<agentbus::task_log::Watch>) {
        let client = bus(server).await;
        let watches = futures::stream::iter(0..1_010)
            .map(|_| {
                let client = client.clone();
                async move { client.watch(&TaskId::new(), 1).await }
            })
            .buffer_unordered(16)
            .collect::<Vec<_>>()
            .await;
        let open: Vec<_> = watches.into_iter().filter_map(Result::ok).collect();
        (open.len(), open)
    }
    let server = NatsServer::start().await;
    assert_eq!(open_watches(&server).await.0, 1_010);

    // Without the stream's own limit, the server's default stops them.
    let mut topology = Topology::standard();
    for stream in &mut topology.streams {
        stream.max_consumers = None;
    }
    let server = NatsServer::start_with_topology(&topology).await;
    assert_eq!(open_watches(&server).await.0, 1_000);
}
