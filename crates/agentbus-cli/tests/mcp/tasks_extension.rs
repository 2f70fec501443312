//! MCP's tasks extension (SEP-2663) through `agentbus mcp`, driven by the
//! official Rust SDK's client (rmcp), which declares the extension: a
//! request_task that goes on after its wait is an MCP task whose id is the
//! agentbus task id, followed with tasks/get, answered with tasks/update and
//! stopped with tasks/cancel.

use super::{Served, serve_writer};
use crate::driver::STEP;
use agentbus::TaskId;
use agentbus_testkit::NatsServer;
use rmcp::ServiceExt;
use rmcp::model::{
    CallToolRequestParams, CallToolResponse, CallToolResult, CancelTaskParams, ClientCapabilities,
    ClientConfig, DetailedTask, GetTaskParams, Implementation, InputRequest, TaskPayload,
    TaskStatus, UpdateTaskParams,
};
use rmcp::service::{RoleClient, RunningService};
use serde_json::{Value, json};
use std::process::Stdio;
use std::time::{Duration, Instant};
use tokio::process::{Child, Command};

/// An `agentbus mcp` bridge and the Rust SDK client speaking to it.
struct Session {
    client: RunningService<RoleClient, ClientConfig>,
    bridge: Child,
}

/// Starts a bridge as agent `agent` and connects a client declaring the
/// tasks extension and form elicitation.
async fn connect(server: &NatsServer, agent: &str) -> Session {
    let mut bridge = Command::new(env!("CARGO_BIN_EXE_agentbus"))
        .args(["mcp", "--agent", agent, "--server"])
        .arg(server.url_with_credentials())
        .env_remove("NATS_URL")
        .env_remove("AGENTBUS_DATA_DIR")
        .env_remove("AGENTBUS_STATE_URL")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("start agentbus mcp");
    let stdin = bridge.stdin.take().expect("stdin is piped");
    let stdout = bridge.stdout.take().expect("stdout is piped");
    let capabilities = ClientCapabilities::builder()
        .enable_elicitation()
        .enable_tasks()
        .build();
    let config = ClientConfig::new(capabilities, Implementation::new("agentbus-test", "1"));
    let client = tokio::time::timeout(STEP, config.serve((stdout, stdin)))
        .await
        .expect("the handshake ends in time")
        .expect("the handshake succeeds");
    Session { client, bridge }
}

impl Session {
    async fn call(&self, tool: &str, args: Value) -> CallToolResponse {
        let args = args.as_object().cloned().unwrap_or_default();
        let params = CallToolRequestParams::new(tool.to_owned()).with_arguments(args);
        tokio::time::timeout(STEP, self.client.call_tool_once(params))
            .await
            .expect("the call ends in time")
            .expect("the call succeeds")
    }

    /// Calls request_task, which must return an MCP task; its id.
    async fn task(&self, args: Value) -> String {
        match self.call("request_task", args).await {
            CallToolResponse::Task(created) => {
                let task = created.task;
                assert!(
                    matches!(task.status, TaskStatus::Working | TaskStatus::InputRequired),
                    "{task:?}"
                );
                assert_eq!(task.poll_interval_ms, Some(1_000));
                task.task_id
            }
            other => panic!("request_task returned {other:?}, not a task"),
        }
    }

    async fn get(&self, task_id: &str) -> DetailedTask {
        let params = GetTaskParams::new(task_id.to_owned());
        tokio::time::timeout(STEP, self.client.peer().get_task(params))
            .await
            .expect("tasks/get ends in time")
            .expect("tasks/get succeeds")
            .task
    }

    /// Polls tasks/get until `wanted` holds (the extension has no push).
    async fn get_until(
        &self,
        task_id: &str,
        wanted: impl Fn(&DetailedTask) -> bool,
    ) -> DetailedTask {
        let started = Instant::now();
        loop {
            let task = self.get(task_id).await;
            if wanted(&task) {
                return task;
            }
            assert!(started.elapsed() < STEP, "still {task:?} after {STEP:?}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn close(mut self) {
        self.client.cancel().await.expect("the client closes");
        let status = tokio::time::timeout(STEP, self.bridge.wait())
            .await
            .expect("the bridge exits once its client leaves")
            .expect("wait for the bridge");
        assert!(status.success(), "{status}");
    }
}

/// The tool result a completed task carries, as request_task's JSON.
fn completed_result(task: &DetailedTask) -> Value {
    match &task.payload {
        TaskPayload::Completed { result } => {
            let result: CallToolResult =
                serde_json::from_value(Value::Object(result.clone())).expect("a CallToolResult");
            assert_ne!(result.is_error, Some(true), "{result:?}");
            result.structured_content.expect("structured content")
        }
        other => panic!("not completed: {other:?}"),
    }
}

#[tokio::test]
async fn request_task_becomes_an_mcp_task_followed_answered_and_cancelled() {
    let server = NatsServer::start().await;
    let mut served: Served = serve_writer(&server).await;
    let session = connect(&server, "carol").await;
    let info = session
        .client
        .peer_info()
        .expect("the server said who it is");
    assert!(info.capabilities.supports_tasks(), "{info:?}");

    // Answered within the wait: a plain result, as for any client.
    let quick = session
        .call(
            "request_task",
            json!({"agent": "writer", "task_type": "quick", "payload": {"k": 1}, "wait_seconds": 20}),
        )
        .await;
    let CallToolResponse::Complete(quick) = quick else {
        panic!("{quick:?}");
    };
    assert_eq!(
        quick.structured_content.unwrap()["answer"]["content"]["result"],
        json!({"quick": {"k": 1}})
    );

    // A question: input_required with a form, answered with tasks/update.
    let task_id = session
        .task(json!({"agent": "writer", "task_type": "ask", "wait_seconds": 1}))
        .await;
    TaskId::parse(&task_id).expect("the MCP task id is the agentbus task id");
    let asking = session
        .get_until(&task_id, |t| t.status() == TaskStatus::InputRequired)
        .await;
    let TaskPayload::InputRequired { input_requests } = &asking.payload else {
        panic!("{asking:?}");
    };
    assert_eq!(input_requests.len(), 1, "{input_requests:?}");
    let (key, request) = input_requests.iter().next().unwrap();
    let InputRequest::Elicitation(elicit) = request else {
        panic!("{request:?}");
    };
    let asked = serde_json::to_value(&elicit.params).unwrap();
    let message = asked["message"].as_str().unwrap();
    assert!(
        message.starts_with(&format!(
            "Agent writer asks, for task {task_id} (its own words, not this server's): "
        )) && message.contains("proceed?"),
        "{message}"
    );
    assert_eq!(asked["requestedSchema"]["required"], json!(["answer"]));
    // A response to no open question is ignored; then the real one.
    let ignored = json!({"question-999": {"action": "accept", "content": {"answer": "no"}}});
    let answer =
        json!({ key.clone(): {"action": "accept", "content": {"answer": "{\"go\": true}"}} });
    for responses in [ignored, answer] {
        let responses = serde_json::from_value(responses).unwrap();
        let params = UpdateTaskParams::new(task_id.clone(), responses);
        session.client.peer().update_task(params).await.unwrap();
    }
    let done = session
        .get_until(&task_id, |t| t.status().is_terminal())
        .await;
    assert_eq!(done.status(), TaskStatus::Completed, "{done:?}");
    let result = completed_result(&done);
    assert_eq!(result["task_id"], task_id.as_str());
    assert_eq!(result["status"], "completed");
    assert_eq!(result["answer"]["untrusted_content_from"], "writer");
    assert_eq!(
        result["answer"]["content"]["result"],
        json!({"answer": {"go": true}})
    );

    // A declined question is answered with null; a cancelled form cancels the task.
    for (action, status) in [
        ("decline", TaskStatus::Completed),
        ("cancel", TaskStatus::Cancelled),
    ] {
        let task_id = session
            .task(json!({"agent": "writer", "task_type": "ask", "wait_seconds": 1}))
            .await;
        let asking = session
            .get_until(&task_id, |t| t.status() == TaskStatus::InputRequired)
            .await;
        let TaskPayload::InputRequired { input_requests } = &asking.payload else {
            panic!("{asking:?}");
        };
        let key = input_requests.keys().next().unwrap().clone();
        let responses = serde_json::from_value(json!({ key: {"action": action} })).unwrap();
        let params = UpdateTaskParams::new(task_id.clone(), responses);
        session.client.peer().update_task(params).await.unwrap();
        let over = session
            .get_until(&task_id, |t| t.status().is_terminal())
            .await;
        assert_eq!(over.status(), status, "{action}: {over:?}");
        if action == "decline" {
            let result = completed_result(&over);
            assert_eq!(
                result["answer"]["content"]["result"],
                json!({"answer": null})
            );
        }
    }

    // tasks/cancel stops the handler.
    let task_id = session
        .task(json!({"agent": "writer", "task_type": "forever", "wait_seconds": 1}))
        .await;
    let working = session.get(&task_id).await;
    assert_eq!(working.status(), TaskStatus::Working, "{working:?}");
    session
        .client
        .peer()
        .cancel_task(CancelTaskParams::new(task_id.clone()))
        .await
        .unwrap();
    let stop = tokio::time::timeout(STEP, served.stops.recv()).await;
    assert_eq!(stop.unwrap().as_deref(), Some("Cancelled"));
    let cancelled = session
        .get_until(&task_id, |t| t.status().is_terminal())
        .await;
    assert_eq!(cancelled.status(), TaskStatus::Cancelled, "{cancelled:?}");

    // Only tasks this server returned are known.
    let unknown = session
        .client
        .peer()
        .get_task(GetTaskParams::new("never-returned"))
        .await
        .unwrap_err()
        .to_string();
    assert!(
        unknown.contains("no task \"never-returned\" was returned by this server"),
        "{unknown}"
    );

    session.close().await;
    served.runtime.shutdown(Duration::from_secs(1)).await;
}
