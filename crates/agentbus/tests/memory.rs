//! What an agent holds in memory for large tasks, measured on a process of
//! its own: this test binary started again as the agent (the ignored test
//! `agent_process`), so that the resident size read from `/proc` is the
//! agent's alone, not the sender's or the test harness's.
//!
//! Forty tasks of about 1 MB each (an array of small numbers, which as a
//! parsed `serde_json::Value` would take about sixteen times its text) are
//! sent at once over request/reply, then queued at once on the agent's work
//! queue. The agent could run all of them at once but holds 8 MiB of
//! payload at most, so at most nine run together; its handler reads the
//! payload's text only.

#![cfg(target_os = "linux")]

use agentbus::connect::TargetSource;
use agentbus::delivery::Queue;
use agentbus::{
    Agent, AgentOptions, Bus, Payload, RequestOptions, Runtime, ServerTarget, TaskContext,
    TaskError, TaskRequest, TaskResponse, TaskStatus, TaskTypeSpec,
};
use agentbus_testkit::NatsServer;
use serde_json::{Value, json};
use std::process::Stdio;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};
use tokio::process::Command;

/// Where the agent process finds the server.
const AGENT_URL: &str = "AGENTBUS_MEMORY_TEST_URL";
const TASKS: usize = 40;
/// The text of each payload: under the server's 1 MiB `max_payload` with
/// the rest of the request.
const PAYLOAD_BYTES: usize = 1_000_000;
/// The agent's `max_held_bytes`.
const HELD_BYTES: usize = 8 << 20;
/// Growth of the agent's peak resident size allowed for forty tasks at once
/// over request/reply: about twice their text (beyond the held bound they
/// wait as bytes in the connection's buffers, and each is copied once when
/// read). As values they would take about 640 MB.
const REQUEST_REPLY_LIMIT: u64 = 2 * (TASKS * PAYLOAD_BYTES) as u64;
/// Growth allowed for forty queued tasks: twice the held bound and the task
/// taken beyond it (a running queued task keeps its message, to settle it,
/// and its request), and 24 MiB for the connection's read buffers (a
/// message held keeps the buffer it was read into) and the
/// allocator. As values the nine running tasks alone would take 144 MB.
const QUEUED_LIMIT: u64 = 2 * (HELD_BYTES + PAYLOAD_BYTES) as u64 + (24 << 20);

/// The most tasks the agent ran at once: those within `HELD_BYTES`, and
/// the one taken while less than that was held.
const MOST_AT_ONCE: usize = HELD_BYTES / PAYLOAD_BYTES + 1;

/// Counts the handlers running now.
#[derive(Default)]
struct Heavy {
    running: AtomicUsize,
}

impl Agent for Heavy {
    fn name(&self) -> &str {
        "heavy"
    }

    fn task_types(&self) -> Vec<TaskTypeSpec> {
        vec![TaskTypeSpec::new("count").unwrap()]
    }

    async fn handle(&self, task: TaskRequest, _ctx: TaskContext) -> Result<Value, TaskError> {
        let at_once = self.running.fetch_add(1, Ordering::SeqCst) + 1;
        // Held for a while, so that many tasks would be taken in at once.
        tokio::time::sleep(Duration::from_millis(200)).await;
        self.running.fetch_sub(1, Ordering::SeqCst);
        Ok(json!({ "bytes": task.payload.json().len(), "at_once": at_once }))
    }
}

#[tokio::test]
#[ignore = "the agent process of a_large_task_costs_about_its_own_size, which starts it"]
async fn agent_process() {
    let Ok(url) = std::env::var(AGENT_URL) else {
        return;
    };
    let client = ServerTarget::from_url(&url, TargetSource::Environment)
        .connect("memory-test-agent")
        .await
        .expect("the test's server");
    let mut runtime = Runtime::new(Bus::from_client(client));
    let options = AgentOptions {
        max_concurrency: 64,
        max_held_bytes: HELD_BYTES,
        task_events: false,
        presence: false,
        ..AgentOptions::default()
    };
    runtime.add(Heavy::default(), options).await.unwrap();
    println!("agent ready");
    // Serves until the test closes its stdin.
    let mut rest = Vec::new();
    let _ = tokio::io::stdin().read_to_end(&mut rest).await;
}

#[tokio::test]
async fn a_large_task_costs_about_its_own_size() {
    let server = NatsServer::start().await;
    let mut agent = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "agent_process", "--ignored", "--nocapture"])
        .env(AGENT_URL, server.url_with_credentials())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(agent.stdout.take().unwrap()).lines();
    tokio::time::timeout(Duration::from_secs(30), async {
        while let Some(line) = lines.next_line().await.unwrap() {
            if line.contains("agent ready") {
                return;
            }
        }
        panic!("the agent process ended before it was ready");
    })
    .await
    .expect("the agent process is ready within 30 s");
    let pid = agent.id().unwrap();
    let bus = Bus::from_client(server.connect().await);
    let text = numbers(PAYLOAD_BYTES);
    let request = || {
        let mut request = TaskRequest::new("count", json!({}));
        request.payload = serde_json::from_str::<Payload>(&text).unwrap();
        request
    };

    let before = Memory::of(pid);
    Memory::reset_peak(pid);
    let queue = Queue::agent("heavy").unwrap();
    let mut queued = Vec::new();
    for _ in 0..TASKS {
        let request = request();
        bus.submit(&queue, &request).await.unwrap();
        queued.push(request.task_id);
    }
    for task_id in &queued {
        let response = bus
            .wait_task(task_id, Duration::from_secs(60))
            .await
            .unwrap();
        check(&response, text.len());
    }
    let after_queued = Memory::of(pid);

    // Request/reply second: what the allocator keeps after it would hide
    // the queued tasks' peak.
    Memory::reset_peak(pid);
    let options = RequestOptions {
        timeout: Duration::from_secs(60),
        ..RequestOptions::default()
    };
    let answers = futures::future::join_all((0..TASKS).map(|_| {
        let (bus, request) = (&bus, request());
        async move { bus.request("heavy", &request, options).await }
    }))
    .await;
    for answer in answers {
        let response = answer.expect("every request is answered");
        check(&response, text.len());
    }
    let after = Memory::of(pid);

    let queued_growth = after_queued.peak.saturating_sub(before.resident);
    let rr_growth = after.peak.saturating_sub(after_queued.resident);
    eprintln!(
        "agent resident size (MiB): {} before; queued peak {}, then {}; request/reply peak {}, then {}",
        before.resident >> 20,
        after_queued.peak >> 20,
        after_queued.resident >> 20,
        after.peak >> 20,
        after.resident >> 20,
    );
    assert!(
        rr_growth < REQUEST_REPLY_LIMIT,
        "forty 1 MB requests grew the agent by {rr_growth} bytes at peak (limit {REQUEST_REPLY_LIMIT})"
    );
    assert!(
        queued_growth < QUEUED_LIMIT,
        "forty 1 MB queued tasks grew the agent by {queued_growth} bytes at peak (limit {QUEUED_LIMIT})"
    );
    drop(agent.stdin.take());
    let status = tokio::time::timeout(Duration::from_secs(30), agent.wait())
        .await
        .expect("the agent process ends when its stdin closes")
        .unwrap();
    assert!(status.success(), "{status}");
}

/// A task's answer: completed, the payload whole, and run with few others.
fn check(response: &TaskResponse, bytes: usize) {
    assert_eq!(response.status, TaskStatus::Completed, "{response:?}");
    let result = response.result.as_ref().unwrap();
    assert_eq!(result["bytes"], bytes);
    let at_once = result["at_once"].as_u64().unwrap() as usize;
    assert!(
        at_once <= MOST_AT_ONCE,
        "{at_once} tasks ran at once, beyond the {MOST_AT_ONCE} that fit in max_held_bytes"
    );
}

/// A JSON object of about `bytes` bytes: `{"numbers":[0,1,...,9,0,...]}`.
fn numbers(bytes: usize) -> String {
    let mut text = String::with_capacity(bytes + 16);
    text.push_str("{\"numbers\":[0");
    let mut digit = 1u8;
    while text.len() + 3 < bytes {
        text.push(',');
        text.push(char::from(b'0' + digit));
        digit = (digit + 1) % 10;
    }
    text.push_str("]}");
    text
}

/// A process's resident size now and at its peak, in bytes.
#[derive(Debug, Clone, Copy)]
struct Memory {
    resident: u64,
    peak: u64,
}

impl Memory {
    fn of(pid: u32) -> Self {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
        let field = |name: &str| -> u64 {
            status
                .lines()
                .find_map(|line| line.strip_prefix(name))
                .and_then(|rest| {
                    rest.trim()
                        .trim_end_matches("kB")
                        .trim()
                        .parse::<u64>()
                        .ok()
                })
                .unwrap_or_else(|| panic!("{name} in /proc/{pid}/status"))
                * 1024
        };
        Self {
            resident: field("VmRSS:"),
            peak: field("VmHWM:"),
        }
    }

    /// Starts the peak over from the size now (`clear_refs` 5).
    fn reset_peak(pid: u32) {
        std::fs::write(format!("/proc/{pid}/clear_refs"), "5").unwrap();
    }
}
