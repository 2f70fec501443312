//! The routes: the pages, the JSON and server-sent events behind them, the
//! actions (cancel, answer, replay) and `/metrics`.
//!
//! | route | what |
//! | --- | --- |
//! | `GET /`, `/tasks`, `/task/{id}`, `/login` | the pages |
//! | `GET /api/overview` | the first screen's figures, JSON |
//! | `GET /api/stream` | the same, pushed at every read (server-sent events) |
//! | `GET /api/tail?subject=<pattern>` | messages on a subject pattern as they come |
//! | `GET /api/tasks?state=<state>` | tasks seen in a state, or stored in the queues (`queued`) |
//! | `GET /api/task/{id}` | what is known of one task, and its request when stored |
//! | `GET /api/task/{id}/events` | its log, then each new event (server-sent events) |
//! | `POST /api/task/{id}/cancel`, `/answer` | cancel it; answer its question (`{"answer": ...}`) |
//! | `POST /api/dead-letters/{task_id}/replay` | put a dead-lettered task back in its queue |
//! | `GET /metrics` | Prometheus text format |

use crate::assets;
use crate::auth::{self, Auth};
use crate::live::Shared;
use agentbus::delivery::{TaskState, body_value};
use agentbus::subject::TASKS_STREAM;
use agentbus::task_log::{CancelOutcome, Watched};
use agentbus::{TaskId, TaskRequest};
use axum::Json;
use axum::extract::{FromRef, Path, Query, State};
use axum::http::{StatusCode, header};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use futures::{Stream, StreamExt};
use serde::Deserialize;
use serde_json::{Value, json};
use std::convert::Infallible;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Messages of a tail passed on per second at most; the rest are counted.
const TAIL_RATE: u32 = 50;
/// Characters of a message body a tail shows.
const TAIL_BODY: usize = 2048;
/// Stored tasks listed for `queued`.
const QUEUED_LISTED: usize = 100;
/// Dead letters, newest first, searched for a dead-lettered task's request.
const DEAD_LETTERS_SEARCHED: usize = 1_000;

#[derive(Clone)]
struct App {
    shared: Arc<Shared>,
    auth: Auth,
}

impl FromRef<App> for Auth {
    fn from_ref(app: &App) -> Self {
        app.auth.clone()
    }
}

pub(crate) fn router(shared: Arc<Shared>, auth: Auth) -> axum::Router {
    axum::Router::new()
        .route("/", get(|| async { assets::page(assets::INDEX) }))
        .route("/tasks", get(|| async { assets::page(assets::TASKS) }))
        .route("/task/{id}", get(|| async { assets::page(assets::TASK) }))
        .route("/assets/{file}", get(assets::asset))
        .route("/favicon.ico", get(|| async { StatusCode::NO_CONTENT }))
        .route(
            "/login",
            get(|| async { auth::login_page(false) }).post(auth::login),
        )
        .route("/api/overview", get(overview))
        .route("/api/stream", get(stream))
        .route("/api/tail", get(tail))
        .route("/api/tasks", get(tasks))
        .route("/api/task/{id}", get(task))
        .route("/api/task/{id}/events", get(task_events))
        .route("/api/task/{id}/cancel", post(cancel))
        .route("/api/task/{id}/answer", post(answer))
        .route("/api/dead-letters/{task_id}/replay", post(replay))
        .route("/metrics", get(metrics))
        .layer(axum::middleware::from_fn_with_state(
            auth.clone(),
            auth::require,
        ))
        .with_state(App { shared, auth })
}

/// A refusal or a failure, answered as JSON: `{"error": "..."}`.
struct ApiError(StatusCode, String);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.0, Json(json!({ "error": self.1 }))).into_response()
    }
}

fn error(status: StatusCode, message: impl std::fmt::Display) -> ApiError {
    ApiError(status, message.to_string())
}

type Answer = Result<Response, ApiError>;

fn task_id(id: &str) -> Result<TaskId, ApiError> {
    TaskId::parse(id).map_err(|err| error(StatusCode::BAD_REQUEST, err))
}

async fn overview(State(app): State<App>) -> Response {
    let overview = app.shared.overview.borrow().clone();
    Json(&*overview).into_response()
}

/// The overview now, then at every read.
async fn stream(State(app): State<App>) -> Sse<impl Stream<Item = Result<Event, Infallible>>> {
    let receiver = app.shared.overview.clone();
    let events = futures::stream::unfold((receiver, true), |(mut receiver, first)| async move {
        if !first {
            receiver.changed().await.ok()?;
        }
        let overview = receiver.borrow_and_update().clone();
        let event = Event::default()
            .event("overview")
            .json_data(&*overview)
            .ok()?;
        Some((Ok(event), (receiver, false)))
    });
    Sse::new(events).keep_alive(KeepAlive::default())
}

#[derive(Deserialize)]
struct TailQuery {
    subject: Option<String>,
}

/// Messages on a subject pattern (`platform.events.>` unless told), each
/// with its subject, size and the start of its body; past [`TAIL_RATE`] a
/// second, a `skipped` event counts what was left out.
async fn tail(State(app): State<App>, Query(query): Query<TailQuery>) -> Answer {
    let pattern = query
        .subject
        .filter(|subject| !subject.trim().is_empty())
        .unwrap_or_else(|| agentbus::subject::events::ALL.to_owned());
    let subscription = app
        .shared
        .bus
        .subscribe(pattern.trim(), None)
        .await
        .map_err(|err| error(StatusCode::BAD_REQUEST, err))?;
    let mut window = (Instant::now(), 0u32, 0u64);
    let events = subscription.filter_map(move |message| {
        let (started, passed, skipped) = &mut window;
        if started.elapsed() >= Duration::from_secs(1) {
            *started = Instant::now();
            *passed = 0;
        }
        let event = if *passed < TAIL_RATE {
            *passed += 1;
            let text = String::from_utf8_lossy(&message.payload);
            let body: String = text.chars().take(TAIL_BODY).collect();
            let data = json!({
                "subject": message.subject,
                "size": message.payload.len(),
                "body": body,
                "skipped": std::mem::take(skipped),
            });
            Event::default().event("message").json_data(data).ok()
        } else {
            *skipped += 1;
            None
        };
        async move { event.map(Ok::<_, Infallible>) }
    });
    Ok(Sse::new(events)
        .keep_alive(KeepAlive::default())
        .into_response())
}

#[derive(Deserialize)]
struct TasksQuery {
    state: Option<String>,
}

/// Tasks the dashboard saw in a state, newest first; with `queued`, the
/// tasks the queues hold (waiting, or taken and not yet settled).
async fn tasks(State(app): State<App>, Query(query): Query<TasksQuery>) -> Answer {
    let state = query.state.filter(|state| !state.is_empty());
    if state.as_deref() == Some("queued") {
        let tasks = stored_tasks(&app.shared.bus)
            .await
            .map_err(|err| error(StatusCode::BAD_GATEWAY, err))?;
        return Ok(Json(json!({ "state": "queued", "tasks": tasks })).into_response());
    }
    let tasks = app.shared.tasks(state.as_deref());
    Ok(Json(json!({ "state": state, "tasks": tasks })).into_response())
}

/// The first tasks stored in the tasks stream.
async fn stored_tasks(bus: &agentbus::Bus) -> Result<Vec<Value>, async_nats::Error> {
    let stream = bus.jetstream().get_stream(TASKS_STREAM).await?;
    let mut sequence = stream.get_info().await?.state.first_sequence;
    let mut tasks = Vec::new();
    while tasks.len() < QUEUED_LISTED {
        let found = stream
            .raw_message_builder()
            .sequence(sequence)
            .next_by_subject(">")
            .send()
            .await;
        let Ok(message) = found else { break };
        let request = serde_json::from_slice::<TaskRequest>(&message.payload).ok();
        tasks.push(json!({
            "task_id": request.as_ref().map(|r| r.task_id.to_string()),
            "task_type": request.as_ref().map(|r| r.task_type.clone()),
            "state": "queued",
            "queue": message.subject.to_string(),
            "at": humantime::format_rfc3339_millis(message.time.into()).to_string(),
        }));
        sequence = message.sequence + 1;
    }
    Ok(tasks)
}

/// What is known of a task, and its request when a queue or the dead
/// letters still hold it.
async fn task(State(app): State<App>, Path(id): Path<String>) -> Answer {
    let task_id = task_id(&id)?;
    let bus = &app.shared.bus;
    let report = bus
        .task_report(&task_id)
        .await
        .map_err(|err| error(StatusCode::BAD_GATEWAY, err))?;
    let stored_at = report.record.as_ref().and_then(|record| record.sequence);
    let mut request = None;
    if let Some(sequence) = stored_at
        && let Ok(stream) = bus.jetstream().get_stream(TASKS_STREAM).await
        && let Ok(message) = stream.get_raw_message(sequence).await
    {
        request = Some(body_value(&message.payload));
    }
    let mut dead_letter = None;
    if request.is_none()
        && report.state == TaskState::DeadLettered
        && let Ok((_, entries)) = bus.recent_dead_letters(DEAD_LETTERS_SEARCHED).await
    {
        dead_letter = entries
            .into_iter()
            .find(|entry| entry.letter.task_id.as_deref() == Some(task_id.as_str()));
        request = dead_letter.as_ref().map(|entry| entry.letter.body.clone());
    }
    Ok(Json(json!({
        "report": report,
        "note": report.note(),
        "request": request,
        "dead_letter": dead_letter,
    }))
    .into_response())
}

/// The task's log from its first event, then each new one, as
/// server-sent events: `event` (a log event), `gone` (events the stream no
/// longer holds), `unlogged` (the task logged nothing), `error`.
async fn task_events(State(app): State<App>, Path(id): Path<String>) -> Answer {
    let task_id = task_id(&id)?;
    let events = match app.shared.bus.watch(&task_id, 1).await {
        Ok(watch) => watch
            .filter_map(|watched| async move {
                let event = match watched {
                    Ok(Watched::Event(event)) => Event::default().event("event").json_data(event),
                    Ok(Watched::Gone { from, until }) => Event::default()
                        .event("gone")
                        .json_data(json!({ "from": from, "until": until })),
                    Err(err) => Ok(Event::default().event("error").data(err.to_string())),
                };
                event.ok()
            })
            .map(Ok::<_, Infallible>)
            .left_stream(),
        Err(err) => {
            let event = Event::default().event("unlogged").data(err.to_string());
            futures::stream::iter([Ok(event)]).right_stream()
        }
    };
    Ok(Sse::new(events)
        .keep_alive(KeepAlive::default())
        .into_response())
}

/// Cancels a task; the body is any JSON object (`{}`).
async fn cancel(State(app): State<App>, Path(id): Path<String>, Json(_): Json<Value>) -> Answer {
    let task_id = task_id(&id)?;
    let outcome = app
        .shared
        .bus
        .cancel(&task_id)
        .await
        .map_err(|err| error(StatusCode::CONFLICT, err))?;
    let (outcome, message) = match outcome {
        CancelOutcome::Cancelling { agent, .. } => (
            "cancelling",
            format!("cancel sent to agent {agent}; the task ends as cancelled"),
        ),
        CancelOutcome::Dequeued => (
            "dequeued",
            "removed from its queue before any worker took it".to_owned(),
        ),
        CancelOutcome::Marked => (
            "marked",
            "no runtime holds it now; it is marked cancelled".to_owned(),
        ),
        CancelOutcome::AlreadyOver(state) => ("already_over", format!("already over ({state})")),
        other => ("other", format!("{other:?}")),
    };
    Ok(Json(json!({ "outcome": outcome, "message": message })).into_response())
}

#[derive(Deserialize)]
struct AnswerBody {
    answer: Value,
}

/// Answers a task's question.
async fn answer(
    State(app): State<App>,
    Path(id): Path<String>,
    Json(body): Json<AnswerBody>,
) -> Answer {
    let task_id = task_id(&id)?;
    app.shared
        .bus
        .answer(&task_id, &body.answer)
        .await
        .map_err(|err| error(StatusCode::CONFLICT, err))?;
    Ok(Json(json!({ "answered": true })).into_response())
}

/// Puts a dead-lettered task back in its queue; the body is `{}`.
async fn replay(State(app): State<App>, Path(id): Path<String>, Json(_): Json<Value>) -> Answer {
    match app.shared.bus.replay_dead_letter(&id).await {
        Ok(0) => Err(error(
            StatusCode::NOT_FOUND,
            format!("no dead letter of task {id}"),
        )),
        Ok(replayed) => Ok(Json(json!({ "replayed": replayed })).into_response()),
        Err(err) => Err(error(StatusCode::CONFLICT, err)),
    }
}

async fn metrics(State(app): State<App>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        app.shared.metrics.encode(),
    )
        .into_response()
}
