//! The dashboard `agentbus up --demo` serves, in a real headless Chromium
//! (Debian's `chromium`, driven by playwright-core from npm): it opens
//! logged in from the printed URL, shows the demo agents online within
//! seconds, replays a dead letter with its button, shows a task's timeline,
//! reads on a narrow screen, and keeps out a browser without the token.
//! The screenshots stay in the target directory for people to look at.
//! Then `agentbus dashboard` serves the same page against the same bus.

mod common;

use agentbus::delivery::Queue;
use agentbus::{
    Agent, AgentOptions, Bus, RequestOptions, Runtime, TaskContext, TaskError, TaskRequest,
    TaskStatus, TaskTypeSpec,
};
use common::Up;
use serde_json::{Value, json};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use tokio::io::AsyncBufReadExt;

/// The playwright-core release the page is driven with.
const PLAYWRIGHT: &str = "playwright-core@1.65.1";
const AGENT: &str = "dash-browsed";
/// Partials of a `chunks` task.
const CHUNKS: usize = 4;

/// `chunks` streams partials; `fragile` is refused for good (a dead letter)
/// until `healthy` is set.
struct Browsed {
    healthy: Arc<AtomicBool>,
}

impl Agent for Browsed {
    fn name(&self) -> &str {
        AGENT
    }

    fn task_types(&self) -> Vec<TaskTypeSpec> {
        ["chunks", "fragile"]
            .map(|t| TaskTypeSpec::new(t).unwrap())
            .to_vec()
    }

    async fn handle(&self, task: TaskRequest, ctx: TaskContext) -> Result<Value, TaskError> {
        if task.task_type == "chunks" {
            for chunk in 0..CHUNKS {
                ctx.partial(&json!({ "chunk": chunk, "text": "<b>not markup</b>" }))
                    .await
                    .map_err(|err| TaskError::failed(err.to_string()))?;
            }
            return Ok(json!({ "chunks": CHUNKS }));
        }
        if self.healthy.load(Ordering::SeqCst) {
            return Ok(json!({ "recovered": true }));
        }
        Err(TaskError::permanent("the disk is full"))
    }
}

#[tokio::test]
async fn the_dashboard_in_a_browser() {
    let chromium =
        agentbus_testkit::debian_program("chromium", "chromium", "the dashboard's browser test");
    let packages =
        agentbus_testkit::npm_packages(Path::new(env!("CARGO_TARGET_TMPDIR")), &[PLAYWRIGHT]);
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("bus");
    let mut up = Up::start(&data_dir, &["--demo"]).await;
    let file = common::connection_file(&data_dir);
    let url = file
        .dashboard_url
        .clone()
        .expect("connection.env has the dashboard URL");
    let token = file
        .dashboard_token
        .clone()
        .expect("connection.env has the token");
    assert_eq!(up.ready()["dashboard_url"], url.as_str());
    assert!(
        !up.stdout().contains(&token),
        "the JSON ready line holds no token"
    );
    let mode = std::fs::metadata(data_dir.join("dashboard-token"))
        .map(|meta| std::os::unix::fs::PermissionsExt::mode(&meta.permissions()) & 0o777)
        .unwrap();
    assert_eq!(mode, 0o600);

    // A dead letter, and a task with a log, from an agent of the test's own.
    let healthy = Arc::new(AtomicBool::new(false));
    let mut runtime = Runtime::new(Bus::connect(&up.target(), "dash-test").await.unwrap());
    let browsed = Browsed {
        healthy: healthy.clone(),
    };
    runtime.add(browsed, AgentOptions::default()).await.unwrap();
    let bus = Bus::connect(&up.target(), "dash-test-caller")
        .await
        .unwrap();
    let doomed = TaskRequest::new("fragile", json!({ "disk": "sda" }));
    bus.submit(&Queue::agent(AGENT).unwrap(), &doomed)
        .await
        .unwrap();
    let streamed = TaskRequest::new("chunks", json!({})).streamed();
    let response = bus
        .request(AGENT, &streamed, RequestOptions::default())
        .await
        .unwrap();
    assert_eq!(response.status, TaskStatus::Completed);
    wait_dead_lettered(&bus, &doomed).await;
    healthy.store(true, Ordering::SeqCst);

    let shots = Path::new(env!("CARGO_TARGET_TMPDIR")).join("dashboard-screenshots");
    std::fs::create_dir_all(&shots).unwrap();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/dashboard/browse.js");
    let output = tokio::time::timeout(
        Duration::from_secs(120),
        common::program("node")
            .arg(&script)
            .env("NODE_PATH", packages.join("node_modules"))
            .env("CHROMIUM", &chromium)
            .env("DASHBOARD_URL", &url)
            .env("DASHBOARD_TOKEN", &token)
            .env("DEAD_TASK", doomed.task_id.as_str())
            .env("STREAMED_TASK", streamed.task_id.as_str())
            .env("CHUNKS", CHUNKS.to_string())
            .env("SHOT_DIR", &shots)
            .output(),
    )
    .await
    .expect("the browser script ends within 2 minutes")
    .expect("run node");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "the browser script failed ({}):\n{stdout}\n{stderr}\n`up` said:\n{}",
        output.status,
        up.stderr()
    );
    let seen: Value = serde_json::from_str(stdout.trim().lines().last().unwrap_or_default())
        .unwrap_or_else(|err| panic!("the script printed no JSON line ({err}): {stdout}"));
    assert_eq!(seen["partials"], CHUNKS, "{seen}");
    assert!(
        seen["agents_online_ms"].as_u64().unwrap() < 15_000,
        "{seen}"
    );
    eprintln!(
        "dashboard in the browser: {seen}; screenshots in {}",
        shots.display()
    );
    for shot in ["dashboard.png", "task.png", "dashboard-narrow.png"] {
        let bytes = std::fs::read(shots.join(shot)).unwrap();
        assert!(
            bytes.starts_with(b"\x89PNG") && bytes.len() > 10_000,
            "{shot}"
        );
    }
    // The replay the button made: the task ran again and completed.
    let replayed = bus
        .wait_task(&doomed.task_id, Duration::from_secs(15))
        .await
        .unwrap();
    assert_eq!(replayed.status, TaskStatus::Completed, "{replayed:?}");

    // `agentbus dashboard` serves the same page against the same bus.
    let mut served = common::command()
        .args(["dashboard", "--data-dir"])
        .arg(&data_dir)
        .arg("--json")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = tokio::io::BufReader::new(served.stdout.take().unwrap()).lines();
    let line = tokio::time::timeout(Duration::from_secs(30), lines.next_line())
        .await
        .expect("a line within 30 s")
        .unwrap()
        .expect("`agentbus dashboard` printed a line");
    let serving: Value = serde_json::from_str(&line).unwrap();
    let other = serving["dashboard_url"].as_str().unwrap().to_owned();
    assert_ne!(other, url);
    let (status, _) = common::http_get(&other, "/api/overview").await;
    assert_eq!(status, 401, "without the token");
    let bearer = format!("Authorization: Bearer {token}");
    let (status, body) = common::http_get_with(&other, "/api/overview", &[&bearer]).await;
    assert_eq!(status, 200, "{body}");
    let overview: Value = serde_json::from_str(&body).unwrap();
    assert!(overview["streams"].as_array().is_some(), "{overview}");
    served.kill().await.unwrap();
    runtime.shutdown(Duration::from_secs(5)).await;
    assert!(up.terminate().await.success());
}

/// Waits until `task` is dead-lettered.
async fn wait_dead_lettered(bus: &Bus, task: &TaskRequest) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        let letters = bus.dead_letters().await.unwrap();
        if letters
            .iter()
            .any(|entry| entry.letter.task_id.as_deref() == Some(task.task_id.as_str()))
        {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{} not dead-lettered",
            task.task_id
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
