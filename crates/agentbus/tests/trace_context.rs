//! Trace context across agents on a real nats-server: a caller's span →
//! orchestrator → llm → a queued sub-task retried once, each agent in a
//! runtime of its own on its own connection (so only the W3C headers on
//! the wire carry the context), all in one trace with the right parents;
//! then a dead letter replayed, back in the trace it was first queued in.
//! Spans are collected by an in-process span exporter.

use agentbus::delivery::{DeliveryOptions, Queue};
use agentbus::{
    Agent, AgentOptions, Bus, RequestOptions, Runtime, TaskContext, TaskError, TaskRequest,
    TaskStatus, TaskTypeSpec,
};
use agentbus_testkit::NatsServer;
use opentelemetry::trace::{Span as _, SpanId, SpanKind, Status, TraceContextExt, Tracer};
use opentelemetry::{Context, KeyValue, global};
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::trace::{SdkTracerProvider, SpanData, SpanExporter};
use serde_json::{Value, json};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Every span ended, as the provider exported it.
#[derive(Debug, Clone, Default)]
struct Collected(Arc<Mutex<Vec<SpanData>>>);

impl SpanExporter for Collected {
    async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
        self.0.lock().unwrap().extend(batch);
        Ok(())
    }
}

/// Calls `llm` over request/reply.
struct Orchestrator;

impl Agent for Orchestrator {
    fn name(&self) -> &str {
        "orchestrator-t"
    }

    fn task_types(&self) -> Vec<TaskTypeSpec> {
        vec![TaskTypeSpec::new("plan").unwrap()]
    }

    async fn handle(&self, task: TaskRequest, ctx: TaskContext) -> Result<Value, TaskError> {
        let asked = TaskRequest::new("generate", task.payload.into_value());
        let response = ctx
            .bus()
            .request("llm-t", &asked, RequestOptions::default())
            .await
            .map_err(|err| TaskError::failed(err.to_string()))?;
        Ok(json!({ "llm": response.result }))
    }
}

/// Queues a sub-task for `worker`.
struct Llm;

impl Agent for Llm {
    fn name(&self) -> &str {
        "llm-t"
    }

    fn task_types(&self) -> Vec<TaskTypeSpec> {
        vec![TaskTypeSpec::new("generate").unwrap()]
    }

    async fn handle(&self, _task: TaskRequest, ctx: TaskContext) -> Result<Value, TaskError> {
        let sub = TaskRequest::new("index", json!({ "doc": 1 }));
        ctx.bus()
            .submit(&Queue::agent("worker-t").unwrap(), &sub)
            .await
            .map_err(|err| TaskError::failed(err.to_string()))?;
        Ok(json!({ "sub_task": sub.task_id }))
    }
}

/// `index` fails its first attempt (retryable), then completes; `fragile`
/// is refused for good (a dead letter) until `healthy` is set.
#[derive(Default)]
struct Worker {
    attempts: AtomicU32,
    healthy: Arc<AtomicBool>,
}

impl Agent for Worker {
    fn name(&self) -> &str {
        "worker-t"
    }

    fn task_types(&self) -> Vec<TaskTypeSpec> {
        ["index", "fragile"]
            .map(|t| TaskTypeSpec::new(t).unwrap())
            .to_vec()
    }

    async fn handle(&self, task: TaskRequest, _ctx: TaskContext) -> Result<Value, TaskError> {
        if task.task_type == "fragile" {
            return match self.healthy.load(Ordering::SeqCst) {
                true => Ok(json!({ "recovered": true })),
                false => Err(TaskError::permanent("the disk is full")),
            };
        }
        if self.attempts.fetch_add(1, Ordering::SeqCst) == 0 {
            return Err(TaskError::failed("the index is locked"));
        }
        Ok(json!({ "indexed": true }))
    }
}

async fn serve(server: &NatsServer, agent: impl Agent) -> Runtime {
    let mut runtime = Runtime::new(Bus::from_client(server.connect().await));
    let options = AgentOptions {
        delivery: DeliveryOptions {
            idle_poll: Duration::from_millis(100),
            retry_backoff: Duration::from_millis(100),
            ..DeliveryOptions::default()
        },
        ..AgentOptions::default()
    };
    runtime.add(agent, options).await.unwrap();
    runtime
}

fn attribute<'a>(span: &'a SpanData, key: &str) -> Option<&'a opentelemetry::Value> {
    span.attributes
        .iter()
        .find(|kv| kv.key.as_str() == key)
        .map(|kv| &kv.value)
}

/// The one span named `name`, or a panic listing them all.
fn named<'a>(spans: &'a [SpanData], name: &str) -> Vec<&'a SpanData> {
    spans.iter().filter(|span| span.name == name).collect()
}

#[tokio::test]
async fn one_trace_across_agents_request_reply_and_a_retried_queued_task() {
    let collected = Collected::default();
    let provider = SdkTracerProvider::builder()
        .with_simple_exporter(collected.clone())
        .build();
    global::set_tracer_provider(provider.clone());
    agentbus::telemetry::enable();

    let server = NatsServer::start().await;
    let worker = Worker::default();
    let healthy = worker.healthy.clone();
    let runtimes = vec![
        serve(&server, Orchestrator).await,
        serve(&server, Llm).await,
        serve(&server, worker).await,
    ];
    let caller = Bus::from_client(server.connect().await);
    // What starting them published (each a trace of its own) is not this test's.
    collected.0.lock().unwrap().clear();

    let tracer = global::tracer("test");
    let root = tracer.start("caller");
    let root_context = root.span_context().clone();
    let cx = Context::current_with_span(root);
    let task = TaskRequest::new("plan", json!({ "topic": "traces" }));
    let response = {
        use opentelemetry::context::FutureExt as _;
        caller
            .request("orchestrator-t", &task, RequestOptions::default())
            .with_context(cx.clone())
            .await
            .unwrap()
    };
    drop(cx);
    assert_eq!(response.status, TaskStatus::Completed, "{response:?}");
    let sub_id = response.result.as_ref().unwrap()["llm"]["sub_task"]
        .as_str()
        .unwrap()
        .to_owned();
    let sub_id = agentbus::TaskId::parse(&sub_id).unwrap();
    let sub = caller
        .wait_task(&sub_id, Duration::from_secs(15))
        .await
        .unwrap();
    assert_eq!(sub.status, TaskStatus::Completed, "{sub:?}");

    // Spans end when their task is over: wait for the second attempt's.
    let deadline = Instant::now() + Duration::from_secs(10);
    let spans = loop {
        let spans = collected.0.lock().unwrap().clone();
        if named(&spans, "process tasks.worker-t").len() == 2 && named(&spans, "caller").len() == 1
        {
            break spans;
        }
        let names: Vec<_> = spans.iter().map(|span| span.name.to_string()).collect();
        assert!(Instant::now() < deadline, "spans so far: {names:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let names: Vec<_> = spans.iter().map(|span| span.name.to_string()).collect();
    let trace_id = root_context.trace_id();
    for span in &spans {
        assert_eq!(
            span.span_context.trace_id(),
            trace_id,
            "{} is in another trace; all: {names:?}",
            span.name
        );
    }
    let one = |name: &str| -> &SpanData {
        let found = named(&spans, name);
        assert_eq!(found.len(), 1, "one span {name}: {names:?}");
        found[0]
    };
    let parent_of = |span: &SpanData| span.parent_span_id;
    let id_of = |span: &SpanData| span.span_context.span_id();

    let send_orch = one("send agent.orchestrator-t.task");
    assert_eq!(parent_of(send_orch), root_context.span_id());
    assert_eq!(send_orch.span_kind, SpanKind::Producer);
    let process_orch = one("process agent.orchestrator-t.task");
    assert_eq!(parent_of(process_orch), id_of(send_orch));
    assert!(process_orch.parent_span_is_remote, "it came over the wire");
    assert_eq!(process_orch.span_kind, SpanKind::Consumer);
    let send_llm = one("send agent.llm-t.task");
    assert_eq!(parent_of(send_llm), id_of(process_orch));
    let process_llm = one("process agent.llm-t.task");
    assert_eq!(parent_of(process_llm), id_of(send_llm));
    let publish_sub = one("publish tasks.worker-t");
    assert_eq!(parent_of(publish_sub), id_of(process_llm));
    let attempts = named(&spans, "process tasks.worker-t");
    for attempt in &attempts {
        assert_eq!(
            parent_of(attempt),
            id_of(publish_sub),
            "a retry stays a child of what queued it"
        );
        assert_ne!(parent_of(attempt), SpanId::INVALID);
    }
    let failed = attempts
        .iter()
        .filter(|span| matches!(span.status, Status::Error { .. }))
        .count();
    assert_eq!(failed, 1, "the first attempt failed: {attempts:?}");

    // Messaging conventions.
    assert_eq!(
        attribute(process_orch, "messaging.system"),
        Some(&opentelemetry::Value::from("nats"))
    );
    assert_eq!(
        attribute(publish_sub, "messaging.destination.name"),
        Some(&opentelemetry::Value::from("tasks.worker-t"))
    );
    assert_eq!(
        attribute(process_llm, "messaging.operation.type"),
        Some(&opentelemetry::Value::from("process"))
    );
    assert!(
        process_orch.attributes.contains(&KeyValue::new(
            "messaging.message.id",
            task.task_id.to_string()
        )),
        "{:?}",
        process_orch.attributes
    );

    // A task dead-lettered, then replayed by a client outside any trace of
    // its own: the replay is one more attempt, in the trace it was queued in.
    let root = tracer.start("caller-fragile");
    let fragile_context = root.span_context().clone();
    let fragile = TaskRequest::new("fragile", json!({}));
    {
        use opentelemetry::context::FutureExt as _;
        caller
            .submit(&Queue::agent("worker-t").unwrap(), &fragile)
            .with_context(Context::current_with_span(root))
            .await
            .unwrap();
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (_, letters) = caller.recent_dead_letters(10).await.unwrap();
        let id = fragile.task_id.as_str();
        if let Some(entry) = letters
            .iter()
            .find(|entry| entry.letter.task_id.as_deref() == Some(id))
        {
            let kept = entry.letter.traceparent.as_deref().unwrap_or_default();
            let trace = fragile_context.trace_id().to_string();
            assert!(kept.contains(&trace), "{kept} is not in trace {trace}");
            break;
        }
        assert!(Instant::now() < deadline, "no dead letter: {letters:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    healthy.store(true, Ordering::SeqCst);
    let replayed = caller
        .replay_dead_letter(fragile.task_id.as_str())
        .await
        .unwrap();
    assert_eq!(replayed, 1);
    let outcome = caller
        .wait_task(&fragile.task_id, Duration::from_secs(15))
        .await
        .unwrap();
    assert_eq!(outcome.status, TaskStatus::Completed, "{outcome:?}");
    let in_fragile_trace = |spans: &[SpanData], name: &str| -> Vec<SpanData> {
        spans
            .iter()
            .filter(|span| span.span_context.trace_id() == fragile_context.trace_id())
            .filter(|span| span.name == name)
            .cloned()
            .collect()
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    let (published, processed) = loop {
        let spans = collected.0.lock().unwrap().clone();
        let published = in_fragile_trace(&spans, "publish tasks.worker-t");
        let processed = in_fragile_trace(&spans, "process tasks.worker-t");
        if processed.len() == 2 {
            break (published, processed);
        }
        let names: Vec<_> = spans.iter().map(|span| span.name.to_string()).collect();
        assert!(Instant::now() < deadline, "spans so far: {names:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    // Queued by the caller, then by the replay as a child of that.
    assert_eq!(published.len(), 2, "{published:?}");
    let queued = published
        .iter()
        .find(|span| span.parent_span_id == fragile_context.span_id())
        .expect("the caller's publish");
    let replay = published
        .iter()
        .find(|span| span.parent_span_id == queued.span_context.span_id())
        .expect("the replay's publish, a child of the first");
    // The refused attempt under the first, the run after the replay under it.
    let parents: Vec<SpanId> = processed.iter().map(|span| span.parent_span_id).collect();
    assert!(
        parents.contains(&queued.span_context.span_id()),
        "{processed:?}"
    );
    assert!(
        parents.contains(&replay.span_context.span_id()),
        "{processed:?}"
    );

    for runtime in runtimes {
        runtime.shutdown(Duration::from_secs(5)).await;
    }
    let _ = provider.shutdown();
}
