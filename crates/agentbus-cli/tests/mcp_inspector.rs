//! `agentbus mcp` under the official MCP Inspector's command line
//! (`@modelcontextprotocol/inspector --cli`, installed with npm on first use
//! into the cargo target directory), against a real nats-server: arguments
//! given as text, and startup errors, which the Inspector must show with our
//! sentence rather than "Connection closed".
//!
//! The Inspector hands arguments over as text and converts them by the
//! tool's schema where it can: numbers become numbers, but a field that takes
//! any JSON value (`message`, `value`) stays text, which the bridge reads as
//! the object it holds. (Clients that convert nothing, such as older
//! Inspectors, are covered through the Python SDK in tests/mcp.rs.)

mod common;

use agentbus::state::StateStore;
use agentbus::{Bus, Name};
use agentbus_testkit::{ClosedPort, NatsServer};
use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::OnceLock;
use std::time::{Duration, Instant};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};

/// The Inspector release the bridge is tested with.
const INSPECTOR: &str = "@modelcontextprotocol/inspector@2.12.0";
/// One Inspector run (start the bridge, one request, stop) stays well within this.
const RUN_LIMIT: Duration = Duration::from_secs(30);

/// The Inspector's `mcp-inspector` command, installed once.
fn inspector() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        agentbus_testkit::npm_packages(Path::new(env!("CARGO_TARGET_TMPDIR")), &[INSPECTOR])
            .join("node_modules/.bin/mcp-inspector")
    })
}

/// What one Inspector run printed, and how it ended.
#[derive(Debug)]
struct Run {
    success: bool,
    /// The Inspector's JSON output: a method's result (on stdout), or
    /// `{"error": {...}}` (on stderr).
    output: Value,
    /// The Inspector's stderr, where the bridge's stderr goes too.
    stderr: String,
    elapsed: Duration,
}

/// Runs `mcp-inspector --cli <inspector_args> -- agentbus mcp <bridge_args>`.
async fn inspect(inspector_args: &[&str], bridge_args: &[&str]) -> Run {
    let mut command = tokio::process::Command::new(inspector());
    command
        .arg("--cli")
        .args(inspector_args)
        .arg("--")
        .arg(common::BIN)
        .arg("mcp")
        .args(bridge_args)
        .env_remove("NATS_URL")
        .env_remove("AGENTBUS_DATA_DIR")
        .env_remove("AGENTBUS_STATE_URL")
        .stdin(Stdio::null())
        .kill_on_drop(true);
    let started = Instant::now();
    let output = tokio::time::timeout(RUN_LIMIT, command.output())
        .await
        .expect("the Inspector finishes")
        .expect("run the Inspector");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    // A result goes to stdout; an error, as a JSON line, to stderr.
    let printed = match stdout.trim() {
        "" => stderr
            .lines()
            .rfind(|line| line.starts_with('{'))
            .unwrap_or_default(),
        result => result,
    };
    let output_json = serde_json::from_str(printed)
        .unwrap_or_else(|err| panic!("the Inspector printed {stdout:?} ({err}); stderr: {stderr}"));
    Run {
        success: output.status.success(),
        output: output_json,
        stderr,
        elapsed: started.elapsed(),
    }
}

/// Calls `tool` as `agent` with `args` passed verbatim (`--tool-args-json`);
/// the Inspector fails when the tool returns an error.
async fn call(server: &NatsServer, agent: &str, tool: &str, args: &Value) -> Run {
    let args = args.to_string();
    let url = server.url_with_credentials();
    inspect(
        &[
            "--method",
            "tools/call",
            "--tool-name",
            tool,
            "--tool-args-json",
            &args,
        ],
        &["--agent", agent, "--server", &url],
    )
    .await
}

/// [`call`], which must succeed; returns the tool's structured result.
async fn ok(server: &NatsServer, agent: &str, tool: &str, args: Value) -> Value {
    let run = call(server, agent, tool, &args).await;
    assert!(run.success, "{tool} {args}: {run:#?}");
    assert_eq!(run.output["isError"], false, "{tool} {args}: {run:#?}");
    run.output["structuredContent"].clone()
}

#[tokio::test]
async fn numbers_and_objects_given_as_text_are_taken_as_numbers_and_objects() {
    let server = NatsServer::start().await;

    // An object and a number, both as text: stored as an object, with its TTL.
    let stored = ok(
        &server,
        "alice",
        "set_state",
        json!({"key": "mood", "value": "{\"level\": 3}", "ttl_seconds": "60"}),
    )
    .await;
    assert_eq!(stored["stored"], true, "{stored}");
    assert_eq!(stored["ttl_seconds"], 60.0, "{stored}");
    let bus = Bus::connect(&server.target(), "inspector-test")
        .await
        .unwrap();
    let state = StateStore::open(&bus, None).await.unwrap();
    let alice = Name::parse("agent name", "alice").unwrap();
    let value = state.agent(&alice).get("mood").await.unwrap();
    assert_eq!(value, Some(json!({"level": 3})));

    // A message given as text holding an object arrives as the object;
    // max_messages given as text is a number.
    ok(
        &server,
        "alice",
        "send_message",
        json!({"to": "bob", "message": "{\"n\": 2}"}),
    )
    .await;
    let read = ok(&server, "bob", "read_inbox", json!({"max_messages": "5"})).await;
    assert_eq!(read["messages"][0]["content"], json!({"n": 2}), "{read}");
    assert_eq!(read["messages"][0]["untrusted_content_from"], "alice");

    // A wait given as text is waited for: 1.5 s for an agent that never
    // answers (its subscription takes the task and stays silent).
    let silent = bus.client().subscribe("agent.silent.task").await.unwrap();
    bus.sync().await.unwrap();
    let args = json!({"agent": "silent", "task_type": "echo", "timeout_seconds": "1.5"});
    let run = call(&server, "alice", "request_task", &args).await;
    assert!(
        !run.success,
        "the Inspector fails on a tool error: {run:#?}"
    );
    assert_eq!(run.output["isError"], true, "{run:#?}");
    let text = run.output["content"][0]["text"].as_str().unwrap();
    assert!(
        text.contains("did not answer task") && text.contains("within 1.5s"),
        "{text}"
    );
    assert!(run.elapsed >= Duration::from_millis(1500), "{run:#?}");
    drop(silent);

    // The Inspector's own key=value arguments keep working.
    let url = server.url_with_credentials();
    let run = inspect(
        &[
            "--method",
            "tools/call",
            "--tool-name",
            "get_state",
            "--tool-arg",
            "key=mood",
        ],
        &["--agent", "alice", "--server", &url],
    )
    .await;
    assert_eq!(
        run.output["structuredContent"]["value"]["content"],
        json!({"level": 3}),
        "{run:#?}"
    );
}

/// The sentence the bridge printed on stderr (`error: <sentence>`).
fn our_sentence(stderr: &str) -> &str {
    stderr
        .lines()
        .find_map(|line| line.strip_prefix("error: "))
        .unwrap_or_else(|| panic!("no error line in {stderr:?}"))
}

#[tokio::test]
async fn startup_errors_reach_the_inspector_as_our_sentence() {
    let closed = ClosedPort::new();
    let unreachable = format!("nats://127.0.0.1:{}", closed.port());
    let bare = NatsServer::start_bare().await;
    let no_streams = bare.url_with_credentials();
    let (wrong_password, _) = bare.url_with_wrong_password();
    let cases = [
        (
            vec!["--agent", "alice", "--server", &unreachable],
            "cannot reach NATS at",
        ),
        (
            vec!["--agent", "alice", "--server", &no_streams],
            "agentbus setup",
        ),
        (
            vec!["--agent", "alice", "--server", &wrong_password],
            "password",
        ),
        (
            vec!["--agent", "Bob!", "--server", &no_streams],
            "invalid agent name \"Bob!\"",
        ),
    ];
    for (bridge_args, expected) in cases {
        let run = inspect(&["--method", "tools/list"], &bridge_args).await;
        assert!(!run.success, "{bridge_args:?}: {run:#?}");
        let sentence = our_sentence(&run.stderr);
        assert!(
            sentence.contains(expected),
            "{bridge_args:?}: {sentence:?} lacks {expected:?}"
        );
        assert_eq!(
            run.output["error"]["message"], sentence,
            "{bridge_args:?}: {run:#?}"
        );
    }
}

#[tokio::test]
async fn a_bridge_that_cannot_start_answers_initialize_with_the_reason_and_exits_1_when_the_client_leaves()
 {
    let closed = ClosedPort::new();
    let url = format!("nats://127.0.0.1:{}", closed.port());
    let mut child = common::command()
        .args(["mcp", "--agent", "alice", "--server", &url])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start agentbus mcp");
    let mut stdin = child.stdin.take().unwrap();
    let mut stdout = BufReader::new(child.stdout.take().unwrap()).lines();
    let initialize = json!({
        "jsonrpc": "2.0", "id": 1, "method": "initialize",
        "params": {
            "protocolVersion": "2025-11-25",
            "capabilities": {},
            "clientInfo": {"name": "test", "version": "1"},
        },
    });
    stdin
        .write_all(format!("{initialize}\n").as_bytes())
        .await
        .unwrap();
    let line = tokio::time::timeout(RUN_LIMIT, stdout.next_line())
        .await
        .expect("an answer to initialize")
        .unwrap()
        .expect("a line");
    let answer: Value = serde_json::from_str(&line).unwrap();
    assert_eq!(answer["id"], 1, "{answer}");
    let message = answer["error"]["message"].as_str().unwrap().to_owned();
    assert!(message.starts_with("cannot reach NATS at"), "{message}");

    // Still there for the client; gone with exit status 1 once it leaves.
    let ping = json!({"jsonrpc": "2.0", "id": 2, "method": "ping"});
    stdin
        .write_all(format!("{ping}\n").as_bytes())
        .await
        .unwrap();
    let line = stdout.next_line().await.unwrap().expect("a line");
    assert_eq!(
        serde_json::from_str::<Value>(&line).unwrap()["result"],
        json!({})
    );
    drop(stdin);
    let status = tokio::time::timeout(RUN_LIMIT, child.wait())
        .await
        .expect("it exits once stdin closes")
        .unwrap();
    assert_eq!(status.code(), Some(1));
    let mut stderr = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .await
        .unwrap();
    assert_eq!(stderr, format!("error: {message}\n"));
}
