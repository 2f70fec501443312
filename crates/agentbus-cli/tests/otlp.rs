//! Spans exported over OTLP/HTTP when `OTEL_EXPORTER_OTLP_ENDPOINT` is
//! set, to a small OTLP receiver the test runs: `agentbus up --demo`
//! exports the demo's sends and handlers, and the MCP bridge continues the
//! trace an MCP client passes in `_meta.traceparent`.

mod common;

use common::Up;
use serde_json::{Value, json};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};

/// One request the receiver got: its path, content type and body.
type Export = (String, String, Vec<u8>);

/// What the receiver got.
#[derive(Clone, Default)]
struct Received(Arc<Mutex<Vec<Export>>>);

impl Received {
    /// Whether some export to `/v1/traces` holds every one of `needles`.
    fn has(&self, needles: &[&[u8]]) -> bool {
        self.0.lock().unwrap().iter().any(|(path, kind, body)| {
            path == "/v1/traces"
                && kind == "application/x-protobuf"
                && needles.iter().all(|needle| contains(body, needle))
        })
    }

    async fn wait_for(&self, what: &str, needles: &[&[u8]]) {
        let found = tokio::time::timeout(Duration::from_secs(20), async {
            while !self.has(needles) {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
        .await;
        let got: Vec<(String, usize)> = self
            .0
            .lock()
            .unwrap()
            .iter()
            .map(|(path, _, body)| (path.clone(), body.len()))
            .collect();
        assert!(found.is_ok(), "no export with {what}; got {got:?}");
    }
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack
        .windows(needle.len())
        .any(|window| window == needle)
}

/// An OTLP/HTTP receiver on a free loopback port: it keeps every request
/// and answers 200 with an empty protobuf body.
async fn receiver() -> (String, Received) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let received = Received::default();
    let kept = received.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let kept = kept.clone();
            tokio::spawn(async move {
                let mut stream = BufReader::new(stream);
                loop {
                    let mut request_line = String::new();
                    if stream.read_line(&mut request_line).await.unwrap_or(0) == 0 {
                        return;
                    }
                    let path = request_line
                        .split_whitespace()
                        .nth(1)
                        .unwrap_or("")
                        .to_owned();
                    let (mut length, mut kind) = (0, String::new());
                    loop {
                        let mut line = String::new();
                        if stream.read_line(&mut line).await.unwrap_or(0) == 0 {
                            return;
                        }
                        let line = line.trim_end();
                        if line.is_empty() {
                            break;
                        }
                        let (name, value) = line.split_once(':').unwrap_or((line, ""));
                        match name.to_ascii_lowercase().as_str() {
                            "content-length" => length = value.trim().parse().unwrap_or(0),
                            "content-type" => kind = value.trim().to_owned(),
                            _ => {}
                        }
                    }
                    let mut body = vec![0; length];
                    if stream.read_exact(&mut body).await.is_err() {
                        return;
                    }
                    kept.0.lock().unwrap().push((path, kind, body));
                    let answer = "HTTP/1.1 200 OK\r\nContent-Type: application/x-protobuf\r\nContent-Length: 0\r\n\r\n";
                    if stream.get_mut().write_all(answer.as_bytes()).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    (url, received)
}

#[tokio::test]
async fn spans_go_to_the_otlp_endpoint_and_mcp_meta_continues_a_trace() {
    let (endpoint, received) = receiver().await;
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("bus");
    let telemetry = [
        ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.as_str()),
        ("OTEL_BSP_SCHEDULE_DELAY", "200"),
        ("OTEL_SERVICE_NAME", "agentbus-under-test"),
    ];
    let mut up = Up::start_with_env(&data_dir, &["--demo"], &telemetry).await;
    received
        .wait_for(
            "the demo's request to llm_agent, sent and handled",
            &[
                b"agentbus-under-test",
                b"send agent.llm_agent.task",
                b"process agent.llm_agent.task",
                b"messaging.system",
            ],
        )
        .await;

    // An MCP client's trace, passed in `_meta`: the bridge's request is in it.
    let trace_id = format!("{:032x}", rand::random::<u128>() | 1);
    let traceparent = format!("00-{trace_id}-00f067aa0ba902b7-01");
    let mut bridge = common::command()
        .args([
            "mcp",
            "--agent",
            "traced-client",
            "--as-operator",
            "--data-dir",
        ])
        .arg(&data_dir)
        .envs(telemetry)
        .env("OTEL_SERVICE_NAME", "agentbus-bridge-under-test")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = bridge.stdin.take().unwrap();
    let mut stdout = BufReader::new(bridge.stdout.take().unwrap()).lines();
    let mut call = async |id: u64, method: &str, params: Value| -> Value {
        let request = json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params});
        stdin
            .write_all(format!("{request}\n").as_bytes())
            .await
            .unwrap();
        tokio::time::timeout(Duration::from_secs(20), async {
            loop {
                let line = stdout.next_line().await.unwrap().expect("the bridge runs");
                let message: Value = serde_json::from_str(&line).unwrap();
                if message["id"] == id {
                    return message;
                }
            }
        })
        .await
        .unwrap_or_else(|_| panic!("no answer to {method}"))
    };
    let init = json!({
        "protocolVersion": "2025-06-18",
        "capabilities": {},
        "clientInfo": {"name": "otlp-check", "version": "1.0"}
    });
    call(1, "initialize", init).await;
    // `request_task` to llm_agent with `meta`; it must be served.
    let mut request_task = async |id: u64, meta: Value| {
        let params = json!({
            "name": "request_task",
            "arguments": {
                "agent": "llm_agent",
                "task_type": "generate_text",
                "payload": {"prompt": "traced", "max_tokens": 5}
            },
            "_meta": meta
        });
        let answer = call(id, "tools/call", params).await;
        assert!(
            answer["result"]["isError"] != true,
            "the tool call failed: {answer}"
        );
    };
    request_task(2, json!({"traceparent": traceparent})).await;
    let raw_trace_id: Vec<u8> = (0..16)
        .map(|i| u8::from_str_radix(&trace_id[2 * i..2 * i + 2], 16).unwrap())
        .collect();
    received
        .wait_for(
            "the bridge's request in the client's trace",
            &[
                b"agentbus-bridge-under-test",
                b"send agent.llm_agent.task",
                &raw_trace_id,
            ],
        )
        .await;
    // The demo's llm_agent, in `up`, handled it in the same trace.
    received
        .wait_for(
            "llm_agent's handling in the client's trace",
            &[
                b"agentbus-under-test",
                b"process agent.llm_agent.task",
                &raw_trace_id,
            ],
        )
        .await;
    // A `tracestate` no header may hold (a line end in it): the call is
    // served all the same, without it.
    let meta = json!({"traceparent": traceparent, "tracestate": "vendor=1\r\nx-forged: 1"});
    request_task(3, meta).await;
    bridge.kill().await.unwrap();
    assert!(up.terminate().await.success());
}
