//! Long-running tasks through `agentbus mcp`, driven by the official MCP
//! Python SDK (tests/mcp/driver.rs) against a real nats-server, with a Rust
//! agent served by a Runtime in the test: task handles from request_task,
//! watch_task, cancel_task, answer_task, and task_status on all of them.
//! MCP's tasks extension, which the Python SDK does not speak, is driven by
//! the official Rust SDK's client (rmcp).

#[path = "mcp/driver.rs"]
mod driver;

use agentbus::{
    Agent, AgentOptions, Bus, Runtime, TaskContext, TaskError, TaskRequest, TaskTypeSpec,
};
use agentbus_testkit::NatsServer;
use driver::{Driver, STEP};
use serde_json::{Value, json};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{Semaphore, mpsc};

/// MCP's tasks extension, through the Rust SDK's client.
#[path = "mcp/tasks_extension.rs"]
mod tasks_extension;

/// An agent whose behaviour is picked by task type. Handlers that wait hold
/// on `gate` until the test adds a permit; a handler that is stopped says
/// why on `stops`.
#[derive(Clone)]
struct Writer {
    gate: Arc<Semaphore>,
    stops: mpsc::UnboundedSender<String>,
}

impl Agent for Writer {
    fn name(&self) -> &str {
        "writer"
    }

    fn task_types(&self) -> Vec<TaskTypeSpec> {
        ["chunks", "forever", "ask", "gated", "quick"]
            .into_iter()
            .map(|t| TaskTypeSpec::new(t).unwrap())
            .collect()
    }

    async fn handle(&self, task: TaskRequest, ctx: TaskContext) -> Result<Value, TaskError> {
        let failed = |err: agentbus::task_log::LogError| TaskError::failed(err.to_string());
        match task.task_type.as_str() {
            // Three partials, the gate, three more.
            "chunks" => {
                for i in 0..6 {
                    if i == 3 {
                        self.pass_gate().await;
                    }
                    ctx.partial(&json!({ "text": format!("w{i}") }))
                        .await
                        .map_err(failed)?;
                }
                Ok(json!({ "chunks": 6 }))
            }
            "forever" => {
                let reason = ctx.cancelled().await;
                let _ = self.stops.send(format!("{reason:?}"));
                Err(TaskError::failed("stopped"))
            }
            "ask" => {
                let answer = ctx.ask(json!({ "question": "proceed?" })).await?;
                Ok(json!({ "answer": answer }))
            }
            "gated" => {
                self.pass_gate().await;
                Ok(json!({ "done": task.payload }))
            }
            _ => Ok(json!({ "quick": task.payload })),
        }
    }
}

impl Writer {
    async fn pass_gate(&self) {
        self.gate
            .acquire()
            .await
            .expect("the gate stays open")
            .forget();
    }
}

/// The agent, served; its gate (closed) and what its stopped handlers said.
struct Served {
    runtime: Runtime,
    gate: Arc<Semaphore>,
    stops: mpsc::UnboundedReceiver<String>,
}

async fn serve_writer(server: &NatsServer) -> Served {
    let bus = Bus::connect(&server.target(), "rust-agents").await.unwrap();
    let gate = Arc::new(Semaphore::new(0));
    let (stops_tx, stops) = mpsc::unbounded_channel();
    let writer = Writer {
        gate: gate.clone(),
        stops: stops_tx,
    };
    let mut runtime = Runtime::new(bus.clone());
    runtime.add(writer, AgentOptions::default()).await.unwrap();
    bus.sync().await.unwrap();
    Served {
        runtime,
        gate,
        stops,
    }
}

/// `request_task` with a wait, which must come back as a handle.
async fn request_handle(driver: &mut Driver, task_type: &str) -> String {
    let handle = driver
        .ok(
            "a",
            "request_task",
            json!({"agent": "writer", "task_type": task_type, "payload": {"n": 1}, "wait_seconds": 1}),
        )
        .await;
    assert!(
        handle["state"] == "running" || handle["state"] == "input_required",
        "{handle}"
    );
    assert_eq!(handle["agent"], "writer", "{handle}");
    assert!(handle.get("answer").is_none(), "{handle}");
    let note = handle["note"].as_str().unwrap();
    for tool in ["watch_task", "task_status", "cancel_task", "answer_task"] {
        assert!(note.contains(tool), "{note}");
    }
    handle["task_id"].as_str().unwrap().to_owned()
}

/// Calls watch_task from `from` (waiting for new events) until `enough`
/// says the events so far suffice; checks every call's seqs are contiguous
/// from its from_seq. Returns the events and the last next_seq and answer.
async fn watch_until(
    driver: &mut Driver,
    task_id: &str,
    mut from: u64,
    enough: impl Fn(&[Value]) -> bool,
) -> (Vec<Value>, u64, Value) {
    let started = Instant::now();
    let mut events = Vec::new();
    loop {
        let watched = driver
            .ok(
                "a",
                "watch_task",
                json!({"task_id": task_id, "from_seq": from, "wait_seconds": 10}),
            )
            .await;
        for (i, event) in watched["events"].as_array().unwrap().iter().enumerate() {
            assert_eq!(event["seq"], from + i as u64, "{watched}");
            events.push(event.clone());
        }
        from = watched["next_seq"].as_u64().unwrap();
        if enough(&events) || watched["done"] == true {
            return (events, from, watched);
        }
        assert!(started.elapsed() < STEP, "only {events:?} within {STEP:?}");
    }
}

fn types(events: &[Value]) -> Vec<&str> {
    events.iter().map(|e| e["type"].as_str().unwrap()).collect()
}

fn partials(events: &[Value]) -> Vec<Value> {
    events
        .iter()
        .filter(|e| e["type"] == "partial")
        .map(|e| {
            assert_eq!(e["data"]["untrusted_content_from"], "writer", "{e}");
            e["data"]["content"]["text"].clone()
        })
        .collect()
}

#[tokio::test]
async fn watch_task_returns_partials_in_order_and_resumes_from_next_seq() {
    let server = NatsServer::start().await;
    let served = serve_writer(&server).await;
    let mut driver = Driver::start(&server).await;
    driver.open("a", "alice", "auto").await;

    let task_id = request_handle(&mut driver, "chunks").await;
    // The first half, up to the gate.
    let (events, next, last) = watch_until(&mut driver, &task_id, 1, |events| {
        partials(events).len() >= 3
    })
    .await;
    assert_eq!(
        types(&events),
        ["accepted", "started", "partial", "partial", "partial"],
        "{events:?}"
    );
    assert_eq!(partials(&events), [json!("w0"), json!("w1"), json!("w2")]);
    assert_eq!(next, 6);
    assert_eq!(last["done"], false, "{last}");
    assert_eq!(last["state"], "running", "{last}");
    assert_eq!(
        events[1]["data"]["content"]["agent"], "writer",
        "started says who runs it: {events:?}"
    );

    // Asked again from an earlier seq: the same events, replayed.
    let again = driver
        .ok(
            "a",
            "watch_task",
            json!({"task_id": task_id, "from_seq": 3}),
        )
        .await;
    assert_eq!(again["events"].as_array().unwrap(), &events[2..], "{again}");
    assert_eq!(again["next_seq"], 6);
    // Nothing new yet, and no wait: at once, nothing.
    let none = driver
        .ok(
            "a",
            "watch_task",
            json!({"task_id": task_id, "from_seq": 6}),
        )
        .await;
    assert_eq!(none["events"], json!([]), "{none}");
    assert_eq!(
        (none["next_seq"].clone(), none["done"].clone()),
        (json!(6), json!(false))
    );
    // Past the end is refused.
    let refused = driver
        .tool_error(
            "a",
            "watch_task",
            json!({"task_id": task_id, "from_seq": 9}),
        )
        .await;
    assert!(
        refused.contains("from_seq 9 is past the end of task")
            && refused.contains("holds events 1 to 5"),
        "{refused}"
    );

    // Resumed from next_seq: the rest, then the final state.
    served.gate.add_permits(1);
    let (rest, next, last) = watch_until(&mut driver, &task_id, next, |_| false).await;
    assert_eq!(
        types(&rest),
        ["partial", "partial", "partial", "completed"],
        "{rest:?}"
    );
    assert_eq!(rest[0]["seq"], 6);
    assert_eq!(partials(&rest), [json!("w3"), json!("w4"), json!("w5")]);
    let result = &rest[3]["data"];
    assert_eq!(result["untrusted_content_from"], "writer");
    assert_eq!(result["content"]["result"], json!({"chunks": 6}));
    assert_eq!(
        (last["done"].clone(), last["state"].clone()),
        (json!(true), json!("completed"))
    );
    assert_eq!(next, 10);
    let over = driver
        .ok(
            "a",
            "watch_task",
            json!({"task_id": task_id, "from_seq": 10, "wait_seconds": 30}),
        )
        .await;
    assert_eq!(
        (over["events"].clone(), over["done"].clone()),
        (json!([]), json!(true))
    );

    let status = driver
        .ok("a", "task_status", json!({"task_id": task_id}))
        .await;
    assert_eq!(status["state"], "completed", "{status}");
    assert_eq!(status["outcome"]["untrusted_content_from"], "writer");
    assert_eq!(status["outcome"]["content"]["result"], json!({"chunks": 6}));
    assert_eq!(status["logged_events"], 9);

    driver.finish().await;
    served.runtime.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test]
async fn cancel_task_stops_a_running_handler_or_takes_a_task_out_of_its_queue() {
    let server = NatsServer::start().await;
    let mut served = serve_writer(&server).await;
    let mut driver = Driver::start(&server).await;
    driver.open("a", "alice", "auto").await;

    let task_id = request_handle(&mut driver, "forever").await;
    let cancelled = driver
        .ok("a", "cancel_task", json!({"task_id": task_id}))
        .await;
    assert_eq!(cancelled["outcome"], "cancelling", "{cancelled}");
    assert_eq!(cancelled["agent"], "writer");
    assert!(
        cancelled["message"]
            .as_str()
            .unwrap()
            .starts_with("agent writer is stopping the task"),
        "{cancelled}"
    );
    let stop = tokio::time::timeout(STEP, served.stops.recv()).await;
    assert_eq!(stop.unwrap().as_deref(), Some("Cancelled"));
    let status = driver
        .ok(
            "a",
            "task_status",
            json!({"task_id": task_id, "wait_seconds": 20}),
        )
        .await;
    assert_eq!(status["state"], "cancelled", "{status}");
    assert_eq!(status["status"], "cancelled", "{status}");
    let (events, _, last) = watch_until(&mut driver, &task_id, 1, |_| false).await;
    assert_eq!(types(&events), ["accepted", "started", "cancelled"]);
    assert_eq!(last["done"], true);
    // Cancelled twice: it says so and changes nothing.
    let again = driver
        .ok("a", "cancel_task", json!({"task_id": task_id}))
        .await;
    assert_eq!(again["outcome"], "already_over", "{again}");
    assert_eq!(again["state"], "cancelled");

    // A queued task nobody takes: removed from its queue.
    let queued = driver
        .ok(
            "a",
            "submit_task",
            json!({"agent": "offline-agent", "task_type": "summarize"}),
        )
        .await;
    let dequeued = driver
        .ok("a", "cancel_task", json!({"task_id": queued["task_id"]}))
        .await;
    assert_eq!(dequeued["outcome"], "dequeued", "{dequeued}");
    let status = driver
        .ok("a", "task_status", json!({"task_id": queued["task_id"]}))
        .await;
    assert_eq!(status["state"], "cancelled", "{status}");
    assert_eq!(status["outcome"]["untrusted_content_from"], "offline-agent");

    driver.finish().await;
    served.runtime.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test]
async fn answer_task_resumes_a_handler_that_asked() {
    let server = NatsServer::start().await;
    let served = serve_writer(&server).await;
    let mut driver = Driver::start(&server).await;
    driver.open("a", "alice", "auto").await;

    let task_id = request_handle(&mut driver, "ask").await;
    let asked = |events: &[Value]| events.iter().any(|e| e["type"] == "input_required");
    let (events, next, last) = watch_until(&mut driver, &task_id, 1, asked).await;
    let question = events.last().unwrap();
    assert_eq!(question["type"], "input_required", "{events:?}");
    assert_eq!(question["data"]["untrusted_content_from"], "writer");
    assert_eq!(
        question["data"]["content"],
        json!({"question": {"question": "proceed?"}})
    );
    assert_eq!(last["state"], "input_required");
    let status = driver
        .ok("a", "task_status", json!({"task_id": task_id}))
        .await;
    assert_eq!(status["state"], "input_required", "{status}");

    // An object given as text is answered as the object.
    let answered = driver
        .ok(
            "a",
            "answer_task",
            json!({"task_id": task_id, "answer": "{\"go\": true}"}),
        )
        .await;
    assert_eq!(answered["answered"], true, "{answered}");
    let status = driver
        .ok(
            "a",
            "task_status",
            json!({"task_id": task_id, "wait_seconds": 20}),
        )
        .await;
    assert_eq!(status["state"], "completed", "{status}");
    assert_eq!(
        status["outcome"]["content"]["result"],
        json!({"answer": {"go": true}})
    );
    let (rest, _, _) = watch_until(&mut driver, &task_id, next, |_| false).await;
    assert_eq!(types(&rest), ["input_received", "completed"], "{rest:?}");
    assert_eq!(rest[0]["data"]["content"], json!({"answer": {"go": true}}));

    // Over: no more answers.
    let refused = driver
        .tool_error(
            "a",
            "answer_task",
            json!({"task_id": task_id, "answer": "again"}),
        )
        .await;
    assert_eq!(
        refused,
        format!("task {task_id} is over (completed); it takes no answer")
    );

    driver.finish().await;
    served.runtime.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test]
async fn a_slow_request_returns_a_handle_and_task_status_reports_its_result() {
    let server = NatsServer::start().await;
    let mut served = serve_writer(&server).await;
    let mut driver = Driver::start(&server).await;
    driver.open("a", "alice", "auto").await;

    // Answered within the wait: the answer itself.
    let answer = driver
        .ok(
            "a",
            "request_task",
            json!({"agent": "writer", "task_type": "quick", "payload": {"k": 1}, "wait_seconds": 20}),
        )
        .await;
    assert_eq!(answer["status"], "completed", "{answer}");
    assert_eq!(answer["answer"]["untrusted_content_from"], "writer");
    assert_eq!(
        answer["answer"]["content"]["result"],
        json!({"quick": {"k": 1}})
    );

    // Not answered within the wait: the handle, after the wait.
    let started = Instant::now();
    let task_id = request_handle(&mut driver, "gated").await;
    assert!(started.elapsed() >= Duration::from_secs(1));
    let status = driver
        .ok("a", "task_status", json!({"task_id": task_id}))
        .await;
    assert_eq!(status["state"], "running", "{status}");
    assert!(status["held_by"].is_string(), "{status}");
    assert_eq!(status["status"], json!(null));
    // Sent to be followed: its log holds its start while it runs.
    let watched = driver
        .ok(
            "a",
            "watch_task",
            json!({"task_id": task_id, "wait_seconds": 10}),
        )
        .await;
    assert_eq!(
        types(watched["events"].as_array().unwrap()),
        ["accepted", "started"],
        "{watched}"
    );
    assert_eq!(watched["state"], "running", "{watched}");

    served.gate.add_permits(1);
    let status = driver
        .ok(
            "a",
            "task_status",
            json!({"task_id": task_id, "wait_seconds": 20}),
        )
        .await;
    assert_eq!(status["state"], "completed", "{status}");
    assert_eq!(status["status"], "completed");
    assert_eq!(status["outcome"]["untrusted_content_from"], "writer");
    assert_eq!(
        status["outcome"]["content"]["result"],
        json!({"done": {"n": 1}})
    );

    // A queued task with a deadline and a full log: stopped at its deadline.
    let submitted = driver
        .ok(
            "a",
            "submit_task",
            json!({"task_type": "forever", "deadline_seconds": 1, "stream": true}),
        )
        .await;
    assert_eq!(submitted["stream"], true, "{submitted}");
    assert!(submitted["deadline"].is_string(), "{submitted}");
    let task_id = submitted["task_id"].as_str().unwrap().to_owned();
    let stop = tokio::time::timeout(STEP, served.stops.recv()).await;
    assert_eq!(stop.unwrap().as_deref(), Some("DeadlinePassed"));
    let status = driver
        .ok(
            "a",
            "task_status",
            json!({"task_id": task_id, "wait_seconds": 20}),
        )
        .await;
    assert_eq!(status["state"], "timeout", "{status}");
    assert_eq!(
        status["outcome"]["untrusted_content_from"],
        "(an agent taking forever tasks)"
    );
    let (events, _, _) = watch_until(&mut driver, &task_id, 1, |_| false).await;
    assert_eq!(
        types(&events),
        ["accepted", "started", "timeout"],
        "{events:?}"
    );
    // Begun by the submitter, or by the runtime when it took the task first.
    assert_eq!(
        events[0]["data"]["content"]["task_type"], "forever",
        "{events:?}"
    );
    assert!(
        events[0]["data"]["content"]["deadline"].is_string(),
        "{events:?}"
    );

    driver.finish().await;
    served.runtime.shutdown(Duration::from_secs(1)).await;
}
