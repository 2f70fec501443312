//! Python agents written to agentbus's TaskRequest/TaskResponse JSON with
//! nats-py (no agentbus code; see tests/python/) talk to Rust agents both
//! ways over a real server: the demo's `llm_agent` in echo mode, and a probe.
//! The virtual environment with nats-py is made once ([`common::python`]).

mod common;

use agentbus::permissions::Grant;
use agentbus::task_log::ControlErrorKind;
use agentbus::{
    Agent, AgentOptions, Bus, Name, Priority, RequestOptions, Runtime, ServerTarget, TaskContext,
    TaskError, TaskRequest, TaskStatus, TaskTypeSpec,
};
use agentbus_demo::{ECHO_NOTE, LlmAgent};
use agentbus_testkit::NatsServer;
use common::{WAIT, as_identity, python, python_command, serve};
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
        None,
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
        None,
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
        json!({
            "priority": "normal",
            "payload": {"n": 1},
            "sender": {"agent": null, "verified": false},
        })
    );
    runtime.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test]
async fn rust_sends_a_task_to_the_python_agent() {
    let python = python();
    let server = NatsServer::start().await;
    let _agent = PythonAgent::start(python, &server, "py_agent", None).await;
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
    let _agent = PythonAgent::start(python, &server, "py_agent", None).await;
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
    let _agent = PythonAgent::start(python, &server, "py_agent", None).await;
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

    async fn handle(&self, task: TaskRequest, ctx: TaskContext) -> Result<Value, TaskError> {
        Ok(json!({"priority": task.priority, "payload": task.payload, "sender": ctx.sender()}))
    }
}

/// Python agents with identities of their own, as `agentbus creds add`
/// makes them: the Python agent serves a Rust caller's stamped task and
/// sees it verified; the Python caller reaches a Rust agent, which sees the
/// Python agent as its verified sender.
#[tokio::test]
async fn python_agents_with_identities_of_their_own_see_verified_senders() {
    let python = python();
    let server = NatsServer::start().await;
    let name = |n: &str| Name::parse("agent name", n).unwrap();
    let identity = async |agent: &str, work: &[&str]| {
        let mut grant = Grant::new(name(agent));
        grant.work_types = work.iter().map(|t| name(t)).collect();
        server.add_identity(grant).await
    };

    // Rust calls Python.
    let py_agent = identity("py_agent", &[]).await;
    let _agent = PythonAgent::start(python, &server, "py_agent", Some(&py_agent)).await;
    let caller = Bus::connect(&identity("rust_caller", &[]).await, "rust-caller")
        .await
        .unwrap();
    let request = TaskRequest::new("whoami", json!({}));
    let answered = caller
        .request("py_agent", &request, RequestOptions::default())
        .await
        .unwrap();
    assert_eq!(answered.status, TaskStatus::Completed, "{answered:?}");
    assert_eq!(
        answered.result,
        Some(json!({"sender": {"agent": "rust_caller", "verified": true}}))
    );

    // Python calls Rust.
    let probe = identity("probe", &["inspect"]).await;
    let mut runtime = Runtime::new(Bus::connect(&probe, "probe").await.unwrap());
    runtime.add(Probe, AgentOptions::default()).await.unwrap();
    runtime.bus().flush().await.unwrap();
    let py_caller = identity("py_caller", &[]).await;
    let output = run_orchestrator(
        python,
        &server,
        Some(&py_caller),
        &["probe", "inspect", r#"{"n": 2}"#],
    )
    .await;
    let received = &output["received"];
    assert_eq!(received["status"], "completed", "{output}");
    assert_eq!(
        received["result"]["sender"],
        json!({"agent": "py_caller", "verified": true}),
        "{output}"
    );
    runtime.shutdown(Duration::from_secs(1)).await;
}

/// Runs py_orchestrator.py (with agent identity `identity`, if any) and
/// returns the JSON line it printed.
async fn run_orchestrator(
    python: &Path,
    server: &NatsServer,
    identity: Option<&ServerTarget>,
    args: &[&str],
) -> Value {
    let mut command = python_command(python, server, "py_orchestrator.py");
    if let Some(target) = identity {
        as_identity(&mut command, target);
    }
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
    /// Starts the agent (with agent identity `identity`, if any) and waits
    /// for its "ready" line (printed after subscribe + flush).
    async fn start(
        python: &Path,
        server: &NatsServer,
        name: &str,
        identity: Option<&ServerTarget>,
    ) -> Self {
        let mut command = python_command(python, server, "py_agent.py");
        if let Some(target) = identity {
            as_identity(&mut command, target);
        }
        let mut child = command.arg(name).spawn().expect("py_agent.py starts");
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
