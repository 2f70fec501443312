//! Driving `agentbus mcp` bridges through tests/mcp/mcp_driver.py, the
//! official MCP Python SDK, one JSON command per line; shared by the MCP
//! test binaries. The first test to run creates a virtual environment under
//! the cargo target directory with a pinned `mcp`, and later runs reuse it.

// Each test binary uses a different subset of these helpers.
#![allow(dead_code)]

use agentbus_testkit::NatsServer;
use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::OnceLock;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::process::{Child, ChildStdin, ChildStdout, Command};
use tokio::task::JoinHandle;

/// The MCP Python SDK release the bridge is tested with.
const MCP_PY_VERSION: &str = "2.3.0";
/// One driver command (a bridge start, a tool call, a wait) stays well within this.
pub(crate) const STEP: Duration = Duration::from_secs(60);

/// tests/mcp/mcp_driver.py, running until dropped (it closes its bridges
/// when its stdin closes; killed on drop otherwise, and the bridges then
/// see their stdin close).
pub(crate) struct Driver {
    child: Child,
    stdin: Option<ChildStdin>,
    stdout: Lines<BufReader<ChildStdout>>,
    stderr: Option<JoinHandle<String>>,
}

impl Driver {
    pub(crate) async fn start(server: &NatsServer) -> Self {
        let mut child = Command::new(python())
            .arg(
                Path::new(env!("CARGO_MANIFEST_DIR"))
                    .join("tests/mcp")
                    .join("mcp_driver.py"),
            )
            .env("AGENTBUS_BIN", env!("CARGO_BIN_EXE_agentbus"))
            .env("AGENTBUS_SERVER", server.url_with_credentials())
            .env("PYTHONUNBUFFERED", "1")
            .env("PYTHONDONTWRITEBYTECODE", "1")
            .env("PYTHONWARNINGS", "ignore")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("start mcp_driver.py");
        let stdin = child.stdin.take().expect("stdin is piped");
        let stdout = BufReader::new(child.stdout.take().expect("stdout is piped")).lines();
        let mut stderr_pipe = child.stderr.take().expect("stderr is piped");
        let stderr = tokio::spawn(async move {
            let mut text = String::new();
            let _ = stderr_pipe.read_to_string(&mut text).await;
            text
        });
        Self {
            child,
            stdin: Some(stdin),
            stdout,
            stderr: Some(stderr),
        }
    }

    /// Sends one command and returns its answer; panics on a driver error.
    pub(crate) async fn send(&mut self, command: Value) -> Value {
        let answer = self.exchange(&command).await;
        if answer.get("error").is_some() {
            panic!(
                "mcp_driver.py failed {command}: {answer:#}; stderr: {}",
                self.stderr_text().await
            );
        }
        answer
    }

    /// Sends one command and returns its answer, a driver error included.
    async fn exchange(&mut self, command: &Value) -> Value {
        let line = format!("{command}\n");
        let stdin = self.stdin.as_mut().expect("the driver's stdin is open");
        stdin
            .write_all(line.as_bytes())
            .await
            .expect("write to mcp_driver.py");
        stdin.flush().await.expect("flush to mcp_driver.py");
        let answer = tokio::time::timeout(STEP, self.stdout.next_line()).await;
        let line = match answer {
            Ok(Ok(Some(line))) => line,
            other => panic!(
                "mcp_driver.py gave no answer to {command} ({other:?}); stderr: {}",
                self.stderr_text().await
            ),
        };
        serde_json::from_str(&line)
            .unwrap_or_else(|err| panic!("mcp_driver.py answered {line:?} ({err})"))
    }

    pub(crate) async fn open(&mut self, client: &str, agent: &str, mode: &str) -> Value {
        self.send(json!({"op": "open", "client": client, "agent": agent, "mode": mode}))
            .await
    }

    /// Opens a bridge whose variables are `env` (an agent's identity:
    /// `NATS_URL`, `NATS_NKEY`, `AGENTBUS_AGENT`) instead of the test
    /// server's user; returns the driver's answer (an error is not a panic).
    pub(crate) async fn open_with_env(&mut self, client: &str, agent: &str, env: Value) -> Value {
        self.exchange(&json!({"op": "open", "client": client, "agent": agent, "env": env}))
            .await
    }

    pub(crate) async fn close(&mut self, client: &str) {
        let closed = self.send(json!({"op": "close", "client": client})).await;
        assert_eq!(closed["closed"], true);
    }

    pub(crate) async fn call(&mut self, client: &str, tool: &str, args: Value) -> Value {
        self.send(json!({"op": "call", "client": client, "tool": tool, "args": args}))
            .await
    }

    /// Calls `tool`, which must succeed; returns its JSON result.
    pub(crate) async fn ok(&mut self, client: &str, tool: &str, args: Value) -> Value {
        let answer = self.call(client, tool, args.clone()).await;
        assert_eq!(
            answer["is_error"], false,
            "{tool} {args} failed: {}",
            answer["text"]
        );
        answer["json"].clone()
    }

    /// Calls `tool`, which must fail with a tool error; returns its text.
    pub(crate) async fn tool_error(&mut self, client: &str, tool: &str, args: Value) -> String {
        let answer = self.call(client, tool, args.clone()).await;
        assert_eq!(
            answer["is_error"], true,
            "{tool} {args} unexpectedly succeeded: {}",
            answer["text"]
        );
        answer["text"].as_str().unwrap_or_default().to_owned()
    }

    /// The legacy log lines `client` got, once there is at least one (or
    /// none after [`STEP`]).
    pub(crate) async fn wait_log_lines(&mut self, client: &str) -> Vec<Value> {
        let deadline = tokio::time::Instant::now() + STEP;
        loop {
            let answer = self
                .send(json!({"op": "log_lines", "client": client}))
                .await;
            let lines = answer["lines"].as_array().cloned().unwrap_or_default();
            if !lines.is_empty() || tokio::time::Instant::now() >= deadline {
                return lines;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub(crate) async fn wait_update(&mut self, client: &str) -> Vec<Value> {
        let answer = self
            .send(json!({"op": "wait_update", "client": client, "timeout": 20}))
            .await;
        answer["updated"].as_array().cloned().unwrap_or_default()
    }

    /// Closes every bridge and waits for the driver to exit.
    pub(crate) async fn finish(mut self) {
        drop(self.stdin.take());
        let status = tokio::time::timeout(STEP, self.child.wait())
            .await
            .expect("mcp_driver.py exits once its stdin closes")
            .expect("wait for mcp_driver.py");
        assert!(
            status.success(),
            "mcp_driver.py failed ({status}): {}",
            self.stderr_text().await
        );
    }

    async fn stderr_text(&mut self) -> String {
        let _ = self.child.start_kill();
        match self.stderr.take() {
            Some(task) => tokio::time::timeout(Duration::from_secs(5), task)
                .await
                .ok()
                .and_then(Result::ok)
                .unwrap_or_default(),
            None => String::new(),
        }
    }
}

/// The virtual environment's python, with the MCP SDK installed; made once.
fn python() -> &'static Path {
    static PYTHON: OnceLock<PathBuf> = OnceLock::new();
    PYTHON.get_or_init(prepare_venv)
}

fn prepare_venv() -> PathBuf {
    agentbus_testkit::python_venv(
        Path::new(env!("CARGO_TARGET_TMPDIR")),
        "mcp",
        MCP_PY_VERSION,
    )
}
