//! The dashboard's HTTP API against a real nats-server with a real agent:
//! the token is asked everywhere, the overview and `/metrics` count the
//! tasks the test ran, a dead letter shows and its replay brings the task
//! back, a task's log streams, and the tail follows a subject.

use agentbus::delivery::{DeliveryOptions, Queue, TaskState};
use agentbus::{
    Agent, AgentOptions, Bus, RequestOptions, Runtime, TaskContext, TaskError, TaskRequest,
    TaskStatus, TaskTypeSpec,
};
use agentbus_dashboard::{Dashboard, DashboardOptions};
use agentbus_testkit::NatsServer;
use agentbus_testkit::{metric_value as value, parse_metrics};
use reqwest::StatusCode;
use reqwest::header::{AUTHORIZATION, CONTENT_TYPE, COOKIE, HeaderName, LOCATION, SET_COOKIE};
use serde_json::{Value, json};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

const AGENT: &str = "dash-worker";
/// Partials of a `chunks` task.
const CHUNKS: u64 = 5;

/// `ok` completes; `fail` fails; `chunks` streams partials; `ask` asks a
/// question and returns the answer; `slow` runs until cancelled; `fragile`
/// is refused for good (a dead letter) until `healthy` is set.
struct Worker {
    healthy: Arc<AtomicBool>,
}

impl Agent for Worker {
    fn name(&self) -> &str {
        AGENT
    }

    fn task_types(&self) -> Vec<TaskTypeSpec> {
        ["ok", "fail", "chunks", "fragile", "ask", "slow"]
            .map(|t| TaskTypeSpec::new(t).unwrap())
            .to_vec()
    }

    async fn handle(&self, task: TaskRequest, ctx: TaskContext) -> Result<Value, TaskError> {
        match task.task_type.as_str() {
            "ok" => Ok(json!({ "ok": true })),
            "fail" => Err(TaskError::failed("told to fail")),
            "chunks" => {
                for chunk in 0..CHUNKS {
                    ctx.partial(&chunk)
                        .await
                        .map_err(|err| TaskError::failed(err.to_string()))?;
                }
                Ok(json!({ "chunks": CHUNKS }))
            }
            "ask" => {
                let answer = ctx.ask(json!({ "question": "which disk?" })).await?;
                Ok(json!({ "answer": answer }))
            }
            "slow" => {
                let reason = ctx.cancelled().await;
                Err(TaskError::failed(format!("stopped: {reason:?}")))
            }
            _ if self.healthy.load(Ordering::SeqCst) => Ok(json!({ "recovered": true })),
            _ => Err(TaskError::permanent("the disk is full")),
        }
    }
}

struct Setup {
    _server: NatsServer,
    bus: Bus,
    runtime: Option<Runtime>,
    dashboard: Dashboard,
    healthy: Arc<AtomicBool>,
    token: String,
    http: reqwest::Client,
}

async fn setup() -> Setup {
    let server = NatsServer::start().await;
    let bus = Bus::from_client(server.connect().await);
    let healthy = Arc::new(AtomicBool::new(false));
    let mut runtime = Runtime::new(Bus::from_client(server.connect().await));
    let options = AgentOptions {
        delivery: DeliveryOptions {
            idle_poll: Duration::from_millis(100),
            ..DeliveryOptions::default()
        },
        ..AgentOptions::default()
    };
    runtime
        .add(
            Worker {
                healthy: healthy.clone(),
            },
            options,
        )
        .await
        .unwrap();
    let token = uuid::Uuid::new_v4().simple().to_string();
    let mut options = DashboardOptions::new("127.0.0.1:0".parse().unwrap(), token.clone());
    options.poll = Duration::from_millis(200);
    let dashboard = Dashboard::start(Bus::from_client(server.connect().await), options)
        .await
        .unwrap();
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    Setup {
        _server: server,
        bus,
        runtime: Some(runtime),
        dashboard,
        healthy,
        token,
        http,
    }
}

impl Setup {
    fn url(&self, path: &str) -> String {
        format!("{}{}", self.dashboard.url(), path.trim_start_matches('/'))
    }

    /// GET `path` with the token.
    async fn get(&self, path: &str) -> reqwest::Response {
        let bearer = format!("Bearer {}", self.token);
        self.get_with(path, AUTHORIZATION, &bearer).await
    }

    /// GET `path` with one header `name` (the token only if that is it).
    async fn get_with(&self, path: &str, name: HeaderName, value: &str) -> reqwest::Response {
        self.http
            .get(self.url(path))
            .header(name, value)
            .send()
            .await
            .unwrap()
    }

    async fn json(&self, path: &str) -> Value {
        let response = self.get(path).await;
        assert_eq!(response.status(), StatusCode::OK, "{path}");
        response.json().await.unwrap()
    }

    async fn post(&self, path: &str, body: Value) -> reqwest::Response {
        self.http
            .post(self.url(path))
            .header(AUTHORIZATION, format!("Bearer {}", self.token))
            .json(&body)
            .send()
            .await
            .unwrap()
    }

    /// The overview once `done` holds, or a panic with the last one.
    async fn overview_until(&self, what: &str, done: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let overview = self.json("/api/overview").await;
            if done(&overview) {
                return overview;
            }
            assert!(Instant::now() < deadline, "{what}: {overview:#}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The server-sent events of `path` until `done` holds of their text.
    async fn events_until(&self, path: &str, done: impl Fn(&str) -> bool) -> String {
        let response = self.get(path).await;
        assert_eq!(response.status(), StatusCode::OK, "{path}");
        read_until(response, done).await
    }
}

fn agent_row<'a>(overview: &'a Value, name: &str) -> Option<&'a Value> {
    overview["agents"]
        .as_array()?
        .iter()
        .find(|agent| agent["name"] == name)
}

#[tokio::test]
async fn nothing_is_shown_without_the_token() {
    let setup = setup().await;
    let anonymous = |path: &str| setup.http.get(setup.url(path)).send();
    // The API and the metrics: 401, saying how to authenticate.
    for path in ["/api/overview", "/metrics", "/api/tasks", "/api/stream"] {
        let response = anonymous(path).await.unwrap();
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED, "{path}");
        assert_eq!(response.headers()["www-authenticate"], "Bearer");
    }
    // A wrong token, as a bearer token, as a cookie or in the URL.
    let wrong = uuid::Uuid::new_v4().simple().to_string();
    let response = setup
        .get_with("/api/overview", AUTHORIZATION, &format!("Bearer {wrong}"))
        .await;
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    let response = setup
        .get_with(
            "/api/overview",
            COOKIE,
            &format!("agentbus_session={wrong}"),
        )
        .await;
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    let response = anonymous(&format!("/api/overview?token={wrong}"))
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    assert!(response.headers().get(SET_COOKIE).is_none());
    // Pages send the browser to the login form, which refuses a wrong token.
    for path in [
        "/",
        "/tasks?state=failed",
        "/task/abc",
        &format!("/?token={wrong}"),
    ] {
        let response = anonymous(path).await.unwrap();
        assert_eq!(response.status(), StatusCode::SEE_OTHER, "{path}");
        assert_eq!(response.headers()[LOCATION], "/login", "{path}");
    }
    let response = anonymous("/login").await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let refused = setup
        .http
        .post(setup.url("/login"))
        .form(&[("token", wrong.as_str())])
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), StatusCode::UNAUTHORIZED);
    assert!(refused.headers().get(SET_COOKIE).is_none());
    assert!(
        refused
            .text()
            .await
            .unwrap()
            .contains("not the dashboard's token")
    );
}

#[tokio::test]
async fn the_token_opens_a_session_once_in_the_url_or_through_the_form() {
    let setup = setup().await;
    // `?token=` sets the session cookie and goes to the same page without it.
    let response = setup
        .http
        .get(setup.url(&format!("/tasks?state=failed&token={}", setup.token)))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::SEE_OTHER);
    assert_eq!(response.headers()[LOCATION], "/tasks?state=failed");
    let cookie = response.headers()[SET_COOKIE].to_str().unwrap().to_owned();
    assert!(
        cookie.contains("HttpOnly") && cookie.contains("SameSite=Strict"),
        "{cookie}"
    );
    assert!(
        !cookie.contains(&setup.token),
        "the cookie is not the token: {cookie}"
    );
    let session = cookie.split(';').next().unwrap().to_owned();
    let page = setup.get_with("/", COOKIE, &session).await;
    assert_eq!(page.status(), StatusCode::OK);
    let policy = page.headers()["content-security-policy"].to_str().unwrap();
    assert!(policy.contains("script-src 'self'"), "{policy}");
    assert!(page.text().await.unwrap().contains("Dead letters"));
    let api = setup.get_with("/api/overview", COOKIE, &session).await;
    assert_eq!(api.status(), StatusCode::OK);
    // The login form opens one too.
    let login = setup
        .http
        .post(setup.url("/login"))
        .form(&[("token", setup.token.as_str())])
        .send()
        .await
        .unwrap();
    assert_eq!(login.status(), StatusCode::SEE_OTHER);
    assert_eq!(login.headers()[LOCATION], "/");
    assert!(login.headers().get(SET_COOKIE).is_some());
    // An action takes JSON only: a form a page of another site could post is refused.
    let form_post = setup
        .http
        .post(setup.url("/api/dead-letters/x/replay"))
        .header(COOKIE, &session)
        .header(CONTENT_TYPE, "application/x-www-form-urlencoded")
        .body("a=1")
        .send()
        .await
        .unwrap();
    assert_eq!(form_post.status(), StatusCode::UNSUPPORTED_MEDIA_TYPE);
}

#[tokio::test]
async fn the_overview_and_the_metrics_count_the_tasks_run() {
    let mut setup = setup().await;
    let options = RequestOptions::default();
    for n in 0..5 {
        let task = TaskRequest::new("ok", json!({ "n": n }));
        let response = setup.bus.request(AGENT, &task, options).await.unwrap();
        assert_eq!(response.status, TaskStatus::Completed);
    }
    for n in 0..2 {
        let task = TaskRequest::new("fail", json!({ "n": n }));
        let response = setup.bus.request(AGENT, &task, options).await.unwrap();
        assert_eq!(response.status, TaskStatus::Failed);
    }
    let overview = setup
        .overview_until("the agent with 5 done and 2 failed", |overview| {
            agent_row(overview, AGENT)
                .is_some_and(|agent| agent["done"] == 5 && agent["failed"] == 2)
        })
        .await;
    let agent = agent_row(&overview, AGENT).unwrap();
    assert_eq!(agent["online"], true);
    assert_eq!(agent["instances"], 1);
    assert_eq!(
        agent["task_types"],
        json!(["ok", "fail", "chunks", "fragile", "ask", "slow"])
    );
    assert!(agent["p50_ms"].as_f64().unwrap() > 0.0, "{agent}");
    assert!(agent["wait_p50_ms"].as_f64().unwrap() >= 0.0, "{agent}");
    assert!(agent["heartbeat_age_s"].as_f64().unwrap() < 30.0, "{agent}");
    assert_eq!(overview["counts"]["completed"], 5);
    assert_eq!(overview["counts"]["failed"], 2);
    let streams: Vec<&str> = overview["streams"]
        .as_array()
        .unwrap()
        .iter()
        .map(|stream| stream["name"].as_str().unwrap())
        .collect();
    assert!(streams.contains(&"agent-tasks"), "{streams:?}");
    let failed = setup.json("/api/tasks?state=failed").await;
    let failed = failed["tasks"].as_array().unwrap();
    assert_eq!(failed.len(), 2, "{failed:?}");
    assert_eq!(failed[0]["error"], "told to fail");

    // Three tasks wait in the agent's queue at high priority while it is stopped.
    setup
        .runtime
        .take()
        .unwrap()
        .shutdown(Duration::from_secs(5))
        .await;
    for n in 0..3 {
        let task =
            TaskRequest::new("ok", json!({ "n": n })).with_priority(agentbus::Priority::High);
        setup
            .bus
            .submit(&Queue::agent(AGENT).unwrap(), &task)
            .await
            .unwrap();
    }
    let overview = setup
        .overview_until("three tasks queued", |overview| {
            overview["counts"]["queued"] == 3
        })
        .await;
    let queue = overview["queues"]
        .as_array()
        .unwrap()
        .iter()
        .find(|queue| queue["queue"] == format!("tasks.{AGENT}") && queue["priority"] == "high")
        .unwrap_or_else(|| panic!("no high queue: {overview:#}"));
    assert_eq!(queue["waiting"], 3, "{queue}");
    assert!(queue["oldest_age_s"].as_f64().is_some(), "{queue}");
    let queued = setup.json("/api/tasks?state=queued").await;
    assert_eq!(queued["tasks"].as_array().unwrap().len(), 3, "{queued}");

    let response = setup.get("/metrics").await;
    assert_eq!(response.status(), StatusCode::OK);
    let text = response.text().await.unwrap();
    let scrape = parse_metrics(&text);
    let tasks = |outcome: &str| {
        value(
            &scrape,
            "agentbus_bus_tasks_total",
            &[
                ("agent", AGENT),
                (
                    "task_type",
                    if outcome == "completed" { "ok" } else { "fail" },
                ),
                ("outcome", outcome),
            ],
        )
    };
    assert_eq!(tasks("completed"), 5.0);
    assert_eq!(tasks("failed"), 2.0);
    let queue = [("queue", "tasks.dash-worker"), ("priority", "high")];
    assert_eq!(value(&scrape, "agentbus_queue_waiting", &queue), 3.0);
    let stream = [("stream", "agent-tasks")];
    assert_eq!(value(&scrape, "agentbus_stream_messages", &stream), 3.0);
    assert_eq!(
        value(&scrape, "agentbus_stream_max_messages", &stream),
        50_000.0
    );
    assert!(
        scrape
            .samples
            .iter()
            .any(|s| s.metric.starts_with("agentbus_bus_task_run_seconds")),
        "{text}"
    );
    let wait_count = |task_type: &str| {
        value(
            &scrape,
            "agentbus_bus_task_queue_wait_seconds_count",
            &[("agent", AGENT), ("task_type", task_type)],
        )
    };
    assert_eq!(wait_count("ok"), 5.0);
    assert_eq!(wait_count("fail"), 2.0);
    // The agent is gone: its instances are no longer counted online.
    setup
        .overview_until("the stopped agent offline", |overview| {
            agent_row(overview, AGENT).is_some_and(|agent| agent["online"] == false)
        })
        .await;
}

#[tokio::test]
async fn a_dead_letter_shows_and_its_replay_brings_the_task_back() {
    let mut setup = setup().await;
    let task = TaskRequest::new("fragile", json!({ "disk": "sda" }));
    let queue = Queue::agent(AGENT).unwrap();
    setup.bus.submit(&queue, &task).await.unwrap();
    let id = task.task_id.to_string();
    let overview = setup
        .overview_until("the dead letter", |overview| {
            overview["dead_letters"]["recent"]
                .as_array()
                .is_some_and(|letters| letters.iter().any(|letter| letter["task_id"] == id))
        })
        .await;
    assert_eq!(overview["counts"]["dead_lettered"], 1);
    let letter = &overview["dead_letters"]["recent"][0];
    assert_eq!(letter["subject"], format!("tasks.{AGENT}"));
    assert!(
        letter["errors"].to_string().contains("the disk is full"),
        "{letter}"
    );
    // The task page's data: its request, from the dead letter.
    let page = setup.json(&format!("/api/task/{id}")).await;
    assert_eq!(page["report"]["state"], "dead_lettered", "{page}");
    assert_eq!(page["request"]["payload"]["disk"], "sda", "{page}");

    setup.healthy.store(true, Ordering::SeqCst);
    let replayed = setup
        .post(&format!("/api/dead-letters/{id}/replay"), json!({}))
        .await;
    assert_eq!(replayed.status(), StatusCode::OK);
    assert_eq!(replayed.json::<Value>().await.unwrap()["replayed"], 1);
    let response = setup
        .bus
        .wait_task(&task.task_id, Duration::from_secs(15))
        .await
        .unwrap();
    assert_eq!(response.status, TaskStatus::Completed, "{response:?}");
    setup
        .overview_until("the dead letter gone", |overview| {
            overview["counts"]["dead_lettered"] == 0
        })
        .await;
    // Replaying it again finds nothing; a made-up id neither.
    let again = setup
        .post(&format!("/api/dead-letters/{id}/replay"), json!({}))
        .await;
    assert!(again.status().is_client_error(), "{}", again.status());
    let report = setup.bus.task_report(&task.task_id).await.unwrap();
    assert_eq!(report.state, TaskState::Completed);
    setup
        .runtime
        .take()
        .unwrap()
        .shutdown(Duration::from_secs(5))
        .await;
}

#[tokio::test]
async fn a_task_page_streams_its_log_and_the_tail_follows_a_subject() {
    let setup = setup().await;
    let task = TaskRequest::new("chunks", json!({})).streamed();
    let response = setup
        .bus
        .request(AGENT, &task, RequestOptions::default())
        .await
        .unwrap();
    assert_eq!(response.status, TaskStatus::Completed);
    let id = task.task_id.to_string();
    let text = setup
        .events_until(&format!("/api/task/{id}/events"), |text| {
            text.contains("event: event") && text.contains("\"type\":\"completed\"")
        })
        .await;
    let partials = text.matches("\"type\":\"partial\"").count() as u64;
    assert_eq!(partials, CHUNKS, "{text}");
    let page = setup.json(&format!("/api/task/{id}")).await;
    assert_eq!(page["report"]["state"], "completed", "{page}");
    // A bad id and a bad pattern are told, not served.
    let bad = setup.get("/api/task/not%20an%20id").await;
    assert_eq!(bad.status(), StatusCode::BAD_REQUEST);
    let bad = setup.get("/api/tail?subject=a..b").await;
    assert_eq!(bad.status(), StatusCode::BAD_REQUEST);
    assert!(bad.text().await.unwrap().contains("error"));

    // The tail: what is published on the pattern, as it comes.
    let tail = setup.get("/api/tail?subject=dash.test.%3E").await;
    assert_eq!(tail.status(), StatusCode::OK);
    let publisher = setup.bus.clone();
    let publishing = tokio::spawn(async move {
        for n in 0..50 {
            publisher
                .publish("dash.test.one", &json!({ "n": n }))
                .await
                .unwrap();
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
    let text = read_until(tail, |text| text.contains("dash.test.one")).await;
    publishing.abort();
    assert!(text.contains("event: message"), "{text}");
}

#[tokio::test]
async fn a_question_is_answered_and_a_task_cancelled_from_the_dashboard() {
    let setup = setup().await;
    let queue = Queue::agent(AGENT).unwrap();
    let asking = TaskRequest::new("ask", json!({}));
    setup.bus.submit(&queue, &asking).await.unwrap();
    let id = asking.task_id.to_string();
    setup
        .overview_until("the question counted", |overview| {
            overview["counts"]["input_required"] == 1
        })
        .await;
    let waiting = setup.json("/api/tasks?state=input_required").await;
    assert_eq!(waiting["tasks"][0]["task_id"], id.as_str(), "{waiting}");
    let page = setup.json(&format!("/api/task/{id}")).await;
    assert_eq!(page["report"]["state"], "input_required", "{page}");
    let answered = setup
        .post(
            &format!("/api/task/{id}/answer"),
            json!({ "answer": "sdb" }),
        )
        .await;
    assert_eq!(answered.status(), StatusCode::OK);
    let response = setup
        .bus
        .wait_task(&asking.task_id, Duration::from_secs(15))
        .await
        .unwrap();
    assert_eq!(response.status, TaskStatus::Completed, "{response:?}");
    assert_eq!(response.result, Some(json!({ "answer": "sdb" })));
    // Over: a second answer is refused, saying why.
    let again = setup
        .post(
            &format!("/api/task/{id}/answer"),
            json!({ "answer": "sdc" }),
        )
        .await;
    assert_eq!(again.status(), StatusCode::CONFLICT);
    assert!(again.text().await.unwrap().contains("over"));

    // A followed task logs its start: the running list shows it.
    let slow = TaskRequest::new("slow", json!({})).streamed();
    setup.bus.submit(&queue, &slow).await.unwrap();
    let id = slow.task_id.to_string();
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let running = setup.json("/api/tasks?state=running").await;
        if running["tasks"][0]["task_id"] == id.as_str() {
            assert_eq!(running["tasks"][0]["agent"], AGENT, "{running}");
            break;
        }
        assert!(Instant::now() < deadline, "not listed running: {running}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let cancelled = setup
        .post(&format!("/api/task/{id}/cancel"), json!({}))
        .await;
    assert_eq!(cancelled.status(), StatusCode::OK);
    let outcome: Value = cancelled.json().await.unwrap();
    assert_eq!(outcome["outcome"], "cancelling", "{outcome}");
    let response = setup
        .bus
        .wait_task(&slow.task_id, Duration::from_secs(15))
        .await
        .unwrap();
    assert_eq!(response.status, TaskStatus::Cancelled, "{response:?}");
    let unknown = TaskRequest::new("ok", json!({})).task_id;
    let nothing = setup
        .post(&format!("/api/task/{unknown}/cancel"), json!({}))
        .await;
    assert_eq!(nothing.status(), StatusCode::CONFLICT);
}

/// The body of a stream of server-sent events, read until `done` holds of it.
async fn read_until(mut response: reqwest::Response, done: impl Fn(&str) -> bool) -> String {
    let mut text = String::new();
    let read = tokio::time::timeout(Duration::from_secs(15), async {
        while let Some(chunk) = response.chunk().await.unwrap() {
            text.push_str(&String::from_utf8_lossy(&chunk));
            if done(&text) {
                return;
            }
        }
    })
    .await;
    assert!(read.is_ok(), "not seen in 15 s: {text}");
    text
}
