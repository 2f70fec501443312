//! Python agents written to agentbus's TaskRequest/TaskResponse JSON with
//! nats-py (no agentbus code; see tests/python/) talk to Rust agents both
//! ways over a real server: the demo's `llm_agent` in echo mode, and a probe.
//! The virtual environment with nats-py is made once ([`common::python`]).

mod common;

use agentbus::task_log::ControlErrorKind;
use agentbus::{
    Agent, AgentOptions, Bus, Priority, RequestOptions, TaskContext, TaskError, TaskRequest,
    TaskStatus, TaskTypeSpec,
};
use agentbus_demo::{ECHO_NOTE, LlmAgent};
use agentbus_testkit::NatsServer;
use common::{WAIT, python, python_command, serve};
use serde_json::{Value, json};
use std::path::Path;
use std::time::{Duration, SystemTime};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader, Lines};
use tokio::process::{Child, ChildStdout};
use tokio::task::JoinHandle;

#[tokio::test]
async fn python_orchestrator_gets_text_from_the_rust_llm_agent() {
    let python = python();
    let server = NatsServer::start().await;
    let runtime = serve(
        &server,
        LlmAgent::new(None).unwrap(),
        AgentOptions::default(),
    )
    .await;

    let output = run_orchestrator(
        python,
        &server,
        &[
            "llm_agent",
            "generate_text",
            r#"{"prompt": "The quick brown fox jumps over the lazy dog", "max_tokens": 4}"#,
        ],
    )
    .await;
    let sent = &output["sent"];
    assert_eq!(sent["priority"], "normal");
    assert_eq!(
        output["received"],
        json!({
            "task_id": sent["task_id"],
            "status": "completed",
            "result": {"text": "The quick brown fox", "mode": "echo", "note": ECHO_NOTE},
            "error": null,
        })
    );
    runtime.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test]
async fn python_priority_medium_and_unknown_fields_are_accepted() {
    let python = python();
    let server = NatsServer::start().await;
    let runtime = serve(&server, Probe, AgentOptions::default()).await;

    let output = run_orchestrator(
        python,
        &server,
        &[
            "probe",
            "inspect",
            r#"{"n": 1}"#,
            "--priority",
            "medium",
            "--extra-field",
        ],
    )
    .await;
    assert_eq!(output["sent"]["priority"], "medium");
    assert!(output["sent"]["trace"].is_object(), "{output}");
    let received = &output["received"];
    assert_eq!(received["status"], "completed", "{output}");
    assert_eq!(received["task_id"], output["sent"]["task_id"]);
    assert_eq!(
        received["result"],
        json!({"priority": "normal", "payload": {"n": 1}})
    );
    runtime.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test]
async fn rust_sends_a_task_to_the_python_agent() {
    let python = python();
    let server = NatsServer::start().await;
    let _agent = PythonAgent::start(python, &server, "py_agent").await;
    let bus = Bus::connect(&server.target(), "rust-orchestrator")
        .await
        .unwrap();

    let request =
        TaskRequest::new("reverse", json!({"text": "agentbus"})).with_priority(Priority::High);
    let response = bus
        .request("py_agent", &request, RequestOptions::default())
        .await
        .unwrap();
    assert_eq!(response.task_id, request.task_id);
    assert_eq!(response.status, TaskStatus::Completed, "{response:?}");
    assert_eq!(response.error, None);
    assert_eq!(
        response.result,
        Some(json!({"text": "subtnega", "priority_seen": "high", "task_id_seen": request.task_id}))
    );

    let defaults = bus
        .publish_task(
            "py_agent",
            "reverse",
            json!({"text": "ab"}),
            Priority::Normal,
        )
        .await
        .unwrap();
    assert_eq!(defaults.result.unwrap()["text"], "ba");
}

#[tokio::test]
async fn python_failed_and_rejected_responses_reach_rust_as_such() {
    let python = python();
    let server = NatsServer::start().await;
    let _agent = PythonAgent::start(python, &server, "py_agent").await;
    let bus = Bus::connect(&server.target(), "rust-orchestrator")
        .await
        .unwrap();

    let failed = bus
        .publish_task("py_agent", "fail", json!({}), Priority::Normal)
        .await
        .unwrap();
    assert_eq!(failed.status, TaskStatus::Failed, "{failed:?}");
    assert_eq!(failed.result, None);
    assert_eq!(failed.error.as_deref(), Some("py_agent failed on purpose"));

    let rejected = bus
        .publish_task("py_agent", "dance", json!({}), Priority::Low)
        .await
        .unwrap();
    assert_eq!(rejected.status, TaskStatus::Rejected, "{rejected:?}");
    assert_eq!(
        rejected.error.as_deref(),
        Some("py_agent does not accept task_type 'dance'")
    );
}

#[tokio::test]
async fn the_python_agent_ignores_deadline_and_stream() {
    let python = python();
    let server = NatsServer::start().await;
    let _agent = PythonAgent::start(python, &server, "py_agent").await;
    let bus = Bus::connect(&server.target(), "rust-orchestrator")
        .await
        .unwrap();

    let request = TaskRequest::new("reverse", json!({"text": "agentbus"}))
        .with_deadline(SystemTime::now() + Duration::from_secs(30))
        .streamed();
    let sent: Value = serde_json::from_slice(&request.to_json()).unwrap();
    assert!(
        sent["deadline"].is_string() && sent["stream"] == true,
        "{sent}"
    );
    let response = bus
        .request("py_agent", &request, RequestOptions::default())
        .await
        .unwrap();
    assert_eq!(response.status, TaskStatus::Completed, "{response:?}");
    assert_eq!(response.result.unwrap()["text"], "subtnega");
    // It writes no log, and answers no control request: its task is unknown.
    let events = server
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
    assert_eq!(events, 0);
    let err = bus.cancel(&request.task_id).await.unwrap_err();
    assert_eq!(err.kind(), ControlErrorKind::UnknownTask);
}

/// A Rust agent that answers with the priority and payload it parsed.
struct Probe;

impl Agent for Probe {
    fn name(&self) -> &str {
        "probe"
    }

    fn task_types(&self) -> Vec<TaskTypeSpec> {
        vec![TaskTypeSpec::new("inspect").unwrap()]
    }

    async fn handle(&self, task: TaskRequest, _ctx: TaskContext) -> Result<Value, TaskError> {
        Ok(json!({"priority": task.priority, "payload": task.payload}))
    }
}

/// Runs py_orchestrator.py and returns the JSON line it printed.
async fn run_orchestrator(python: &Path, server: &NatsServer, args: &[&str]) -> Value {
    let mut command = python_command(python, server, "py_orchestrator.py");
    command.args(args);
    let output = tokio::time::timeout(WAIT, command.output())
        .await
        .expect("py_orchestrator.py finishes")
        .expect("py_orchestrator.py starts");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "py_orchestrator.py failed ({}): {stderr}",
        output.status
    );
    let line = stdout.lines().rfind(|l| !l.trim().is_empty()).unwrap_or("");
    serde_json::from_str(line).unwrap_or_else(|err| {
        panic!("py_orchestrator.py printed {stdout:?} ({err}); stderr: {stderr}")
    })
}

/// py_agent.py running until dropped.
struct PythonAgent {
    child: Child,
    _stdout: Lines<BufReader<ChildStdout>>,
    _stderr: JoinHandle<String>,
}

impl PythonAgent {
    /// Starts the agent and waits for its "ready" line (printed after subscribe + flush).
    async fn start(python: &Path, server: &NatsServer, name: &str) -> Self {
        let mut child = python_command(python, server, "py_agent.py")
            .arg(name)
            .spawn()
            .expect("py_agent.py starts");
        let mut stdout = BufReader::new(child.stdout.take().expect("stdout is piped")).lines();
        let mut stderr_pipe = child.stderr.take().expect("stderr is piped");
        let mut stderr = tokio::spawn(async move {
            let mut text = String::new();
            let _ = stderr_pipe.read_to_string(&mut text).await;
            text
        });
        let ready = tokio::time::timeout(WAIT, async {
            while let Ok(Some(line)) = stdout.next_line().await {
                if line.trim() == "ready" {
                    return true;
                }
            }
            false
        })
        .await;
        if ready != Ok(true) {
            let _ = child.start_kill();
            let text = tokio::time::timeout(Duration::from_secs(5), &mut stderr)
                .await
                .ok()
                .and_then(Result::ok)
                .unwrap_or_default();
            panic!("py_agent.py did not print \"ready\" ({ready:?}); stderr: {text}");
        }
        Self {
            child,
            _stdout: stdout,
            _stderr: stderr,
        }
    }
}

impl Drop for PythonAgent {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
    }
}
