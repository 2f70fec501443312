//! An agent: what it declares, how it handles a task, and what it can do
//! while it works on one.

use crate::client::{Bus, PublishError, RequestOptions, SendTaskError};
use crate::name::{InvalidName, Name};
use crate::protocol::{TaskRequest, TaskResponse, TaskStatus};
use crate::sender::Sender;
pub use crate::subject::MessageChannel;
use crate::task_log::{AskError, EventType, LogError, RunningTask, StopReason};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;
use std::future::Future;
use std::sync::Arc;
use std::time::SystemTime;

/// An agent: a name, the task types it accepts, and a handler.
///
/// ```no_run
/// use agentbus::{Agent, TaskContext, TaskError, TaskRequest, TaskTypeSpec};
/// use serde_json::{json, Value};
///
/// struct Echo;
///
/// impl Agent for Echo {
///     fn name(&self) -> &str { "echo" }
///     fn task_types(&self) -> Vec<TaskTypeSpec> {
///         vec![TaskTypeSpec::new("echo").expect("valid name")]
///     }
///     async fn handle(&self, task: TaskRequest, _ctx: TaskContext) -> Result<Value, TaskError> {
///         Ok(json!({ "echo": task.payload }))
///     }
/// }
/// ```
pub trait Agent: Send + Sync + 'static {
    /// The agent's name on the bus: it serves `agent.<name>.task`.
    fn name(&self) -> &str;

    /// The task types it accepts, each optionally with a JSON Schema for its payload.
    fn task_types(&self) -> Vec<TaskTypeSpec>;

    /// Handles one task. The payload has already been checked against the
    /// task type's schema, if it has one.
    fn handle(
        &self,
        task: TaskRequest,
        ctx: TaskContext,
    ) -> impl Future<Output = Result<Value, TaskError>> + Send;

    /// Handles one durable message: from the agent's inbox or direct channel,
    /// a broadcast on a topic it subscribes to, or an announcement. Called
    /// only when the agent is added with [`crate::AgentOptions::messages`] on.
    /// `Ok` acknowledges the message; a retryable error redelivers it with
    /// backoff; anything else moves it to the dead letters.
    fn handle_message(
        &self,
        message: AgentMessage,
        ctx: TaskContext,
    ) -> impl Future<Output = Result<(), TaskError>> + Send {
        let _ = (message, ctx);
        async { Err(TaskError::permanent("this agent does not handle messages")) }
    }
}

/// A durable message delivered to an agent.
#[derive(Debug, Clone, serde::Serialize)]
pub struct AgentMessage {
    /// Where it came in.
    pub channel: MessageChannel,
    /// The subject it was stored on.
    pub subject: String,
    /// Its id (`Nats-Msg-Id`), when the sender set one.
    pub message_id: Option<String>,
    /// The sending agent as the sender claimed it (the `Agentbus-From`
    /// header): not verified; [`AgentMessage::sender`] is.
    pub from: Option<String>,
    /// Who sent it, as the bus vouches for it (from the subject).
    pub sender: Sender,
    /// The body: JSON when it is JSON, else a string.
    pub body: Value,
    /// Sequence in its stream.
    pub sequence: u64,
    /// 1 for the first delivery.
    pub attempt: u32,
}

/// A task type an agent accepts.
#[derive(Debug, Clone)]
pub struct TaskTypeSpec {
    name: Name,
    schema: Option<Value>,
}

impl TaskTypeSpec {
    /// A task type with no payload schema.
    pub fn new(name: &str) -> Result<Self, InvalidName> {
        Ok(Self {
            name: Name::parse("task type", name)?,
            schema: None,
        })
    }

    /// Adds a JSON Schema the payload must satisfy.
    #[must_use]
    pub fn with_schema(mut self, schema: Value) -> Self {
        self.schema = Some(schema);
        self
    }

    /// The task type's name.
    pub fn name(&self) -> &Name {
        &self.name
    }

    /// Its payload schema, if any.
    pub fn schema(&self) -> Option<&Value> {
        self.schema.as_ref()
    }
}

/// Why a handler did not produce a result.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct TaskError {
    status: TaskStatus,
    retryable: bool,
    message: String,
}

impl TaskError {
    /// The task failed and may succeed if tried again (status `failed`).
    pub fn failed(message: impl Into<String>) -> Self {
        Self {
            status: TaskStatus::Failed,
            retryable: true,
            message: message.into(),
        }
    }

    /// The task failed and trying again will not help (status `failed`).
    pub fn permanent(message: impl Into<String>) -> Self {
        Self {
            status: TaskStatus::Failed,
            retryable: false,
            message: message.into(),
        }
    }

    /// The input is unacceptable (status `rejected`, never retried).
    pub fn rejected(message: impl Into<String>) -> Self {
        Self {
            status: TaskStatus::Rejected,
            retryable: false,
            message: message.into(),
        }
    }

    /// The handler gives up because the task was cancelled (status
    /// `cancelled`, never retried). A task cancelled through the bus ends
    /// `cancelled` whatever its handler returns.
    pub fn cancelled(message: impl Into<String>) -> Self {
        Self {
            status: TaskStatus::Cancelled,
            retryable: false,
            message: message.into(),
        }
    }

    /// The task was stopped: status `cancelled`, or `timeout` when its
    /// time ran out.
    pub(crate) fn stopped(reason: StopReason) -> Self {
        Self {
            status: match reason {
                StopReason::Cancelled => TaskStatus::Cancelled,
                _ => TaskStatus::Timeout,
            },
            retryable: false,
            message: reason.message(),
        }
    }

    /// The status a response to this error carries.
    pub fn status(&self) -> TaskStatus {
        self.status
    }

    /// Whether another attempt could succeed.
    pub fn is_retryable(&self) -> bool {
        self.retryable
    }

    /// The message.
    pub fn message(&self) -> &str {
        &self.message
    }

    /// The error response to task `task_id`.
    pub fn to_response(&self, task_id: &str) -> TaskResponse {
        TaskResponse::error(task_id, self.status, self.message.clone())
    }
}

impl TaskRequest {
    /// The payload as a typed value; a mismatch is a `rejected` task error.
    pub fn payload_as<T: DeserializeOwned>(&self) -> Result<T, TaskError> {
        self.payload.parse().map_err(|err| {
            TaskError::rejected(format!("invalid payload for {}: {err}", self.task_type))
        })
    }
}

/// What a handler knows and can do while it works on a task: report
/// partial results, progress and questions into the task's log (see
/// [`crate::task_log`]), and see when it is cancelled or out of time.
///
/// ```no_run
/// use agentbus::{TaskContext, TaskError, TaskRequest};
/// use serde_json::{json, Value};
///
/// async fn generate(task: TaskRequest, ctx: TaskContext) -> Result<Value, TaskError> {
///     let mut text = String::new();
///     for word in ["Once", "upon", "a", "time"] {
///         tokio::select! {
///             // Cancelled, or past the task's deadline: stop with what there is.
///             reason = ctx.cancelled() => return Err(TaskError::failed(format!("{reason:?}"))),
///             _ = tokio::time::sleep(std::time::Duration::from_millis(50)) => {}
///         }
///         ctx.partial(&json!({ "text": format!("{word} ") })).await.ok();
///         text.push_str(word);
///     }
///     let go_on = ctx.ask(json!("Add a moral?")).await?; // input_required until answered
///     Ok(json!({ "text": text, "moral": go_on, "prompt": task.payload["prompt"] }))
/// }
/// ```
#[derive(Debug, Clone)]
pub struct TaskContext {
    pub(crate) handled: Handled,
    /// Who sent the task or message.
    pub(crate) sender: Sender,
}

/// What a handler handles.
#[derive(Debug, Clone)]
pub(crate) enum Handled {
    /// A task, which knows its agent, runtime, id and bus: a context made
    /// for every task copies nothing more.
    Task(Arc<RunningTask>),
    /// A message to the agent.
    Message {
        agent: Name,
        instance_id: Arc<str>,
        message_id: Arc<str>,
        bus: Bus,
    },
}

impl TaskContext {
    /// The task, when this is a task's handler (not a message's).
    fn running(&self) -> Option<&Arc<RunningTask>> {
        match &self.handled {
            Handled::Task(task) => Some(task),
            Handled::Message { .. } => None,
        }
    }

    /// Who sent the task or message being handled, as far as the bus
    /// vouches for it ([`Sender::Unverified`] for a sender without an agent
    /// identity, and for queued tasks, whose subjects carry no sender).
    pub fn sender(&self) -> &Sender {
        &self.sender
    }

    /// The name of the agent handling the task.
    pub fn agent_name(&self) -> &Name {
        match &self.handled {
            Handled::Task(task) => task.agent(),
            Handled::Message { agent, .. } => agent,
        }
    }

    /// The id of this runtime process (distinguishes replicas of one agent).
    pub fn instance_id(&self) -> &str {
        match &self.handled {
            Handled::Task(task) => task.instance(),
            Handled::Message { instance_id, .. } => instance_id,
        }
    }

    /// The id of the task being handled.
    pub fn task_id(&self) -> &str {
        match &self.handled {
            Handled::Task(task) => task.task_id(),
            Handled::Message { message_id, .. } => message_id,
        }
    }

    /// The bus, for anything beyond the helpers below.
    pub fn bus(&self) -> &Bus {
        match &self.handled {
            Handled::Task(task) => task.bus(),
            Handled::Message { bus, .. } => bus,
        }
    }

    /// Makes an effect (a payment, an email, a write to another system)
    /// once for this task, whatever happens to its attempts. The attempt
    /// claims the effect under this task id and `name` before `effect`
    /// runs, and stores its result after; a retry, a redelivery, a rerun
    /// after a server lost its deliveries, or a paused worker that resumed
    /// gets the stored result instead, and an attempt that finds another
    /// one's claim waits for its result.
    ///
    /// What is left: a claim holds for twice the bus's store deadline (30 s
    /// at least). An attempt that dies between its claim and storing the
    /// result leaves the effect unknown, and the next attempt makes it again
    /// once the claim ran out; so does one whose effect and store take
    /// longer than that. A system that takes an idempotency key
    /// closes both windows: pass it [`TaskContext::idempotency_key`]. An
    /// effect that fails gives its claim back, so a retry tries it again.
    /// `name` is 1-64 characters from `A-Z`, `a-z`, `0-9`, `_` and `-`; a
    /// failure to read or store the claim or result is a retryable
    /// [`TaskError`].
    pub async fn once<T, F, Fut>(&self, name: &str, effect: F) -> Result<T, TaskError>
    where
        T: Serialize + serde::de::DeserializeOwned,
        F: FnOnce() -> Fut,
        Fut: std::future::Future<Output = Result<T, TaskError>>,
    {
        // A task's effects are kept with its record; a message's under the
        // agent that handles it.
        let key = match self.running() {
            Some(task) => task.key().as_str().to_owned(),
            None => crate::TaskKey::of_message(self.agent_name(), self.task_id()),
        };
        match crate::effects::once(self.bus(), &key, self.instance_id(), name, effect).await {
            Ok(outcome) => outcome,
            Err(err @ crate::effects::OnceError::InvalidName(_)) => {
                Err(TaskError::permanent(err.to_string()))
            }
            Err(err) => Err(TaskError::failed(err.to_string())),
        }
    }

    /// A key naming effect `name` of this task, the same in every attempt:
    /// for a system that makes a request with a repeated key once (an
    /// `Idempotency-Key` header, a unique constraint).
    pub fn idempotency_key(&self, name: &str) -> String {
        crate::effects::idempotency_key(self.task_id(), name)
    }

    /// Publishes an event as JSON.
    pub async fn publish<T: Serialize + ?Sized>(
        &self,
        subject: &str,
        value: &T,
    ) -> Result<(), PublishError> {
        self.bus().publish(subject, value).await
    }

    /// Sends a task to another agent and waits for its response. The task
    /// inherits what remains of this task's deadline, unless it carries an
    /// earlier one, and the wait is no longer than that.
    pub async fn send_task(
        &self,
        agent: &str,
        request: &TaskRequest,
        mut options: RequestOptions,
    ) -> Result<TaskResponse, SendTaskError> {
        let from = Some(self.agent_name());
        let Some(deadline) = self.deadline() else {
            return self.bus().request_from(from, agent, request, options).await;
        };
        let mut request = request.clone();
        if request.deadline_time().is_none_or(|own| own > deadline) {
            request.deadline = Some(crate::clock::rfc3339(deadline));
        }
        let left = deadline
            .duration_since(SystemTime::now())
            .unwrap_or_default();
        options.timeout = options.timeout.min(left);
        self.bus()
            .request_from(from, agent, &request, options)
            .await
    }

    /// When the task must be over: its request's deadline, or the agent's
    /// task timeout from the start, whichever comes first. `None` when
    /// there is neither (or this is a message's handler).
    pub fn deadline(&self) -> Option<SystemTime> {
        self.running().and_then(|task| task.deadline())
    }

    /// Resolves when the task is cancelled or runs out of time, for
    /// `tokio::select!` against the work. A handler that goes on anyway is
    /// dropped: at once when out of time, after the agent's
    /// [`crate::AgentOptions::cancel_grace`] when cancelled. Never resolves
    /// in a message's handler.
    pub async fn cancelled(&self) -> StopReason {
        match self.running() {
            Some(task) => task.stopped().await,
            None => std::future::pending().await,
        }
    }

    /// Why the task must stop, if it must by now.
    pub fn stop_reason(&self) -> Option<StopReason> {
        self.running().and_then(|task| task.stop_reason())
    }

    /// Adds a chunk of the result to the task's log (a `partial` event),
    /// for whoever follows the task. The final result is still what the
    /// handler returns.
    pub async fn partial<T: Serialize + ?Sized>(&self, chunk: &T) -> Result<(), LogError> {
        let chunk = serde_json::to_value(chunk).unwrap_or(Value::Null);
        self.task()?.emit(EventType::Partial, chunk).await
    }

    /// Reports progress: `done` (such as a fraction or a count) and/or a message.
    pub async fn progress(&self, done: Option<f64>, message: Option<&str>) -> Result<(), LogError> {
        let mut data = serde_json::Map::new();
        if let Some(done) = done {
            data.insert("progress".into(), done.into());
        }
        if let Some(message) = message {
            data.insert("message".into(), message.into());
        }
        self.task()?
            .emit(EventType::Progress, Value::Object(data))
            .await
    }

    /// Asks the task's caller (or an operator, or another agent) a
    /// question and waits for the answer ([`Bus::answer`]). The task is
    /// `input_required` meanwhile. An error with status `cancelled` or
    /// `timeout` when the task is stopped first: return it.
    pub async fn ask(&self, question: Value) -> Result<Value, TaskError> {
        let task = self
            .task()
            .map_err(|err| TaskError::permanent(err.to_string()))?;
        task.ask(question).await.map_err(|err| match err {
            AskError::Stopped(reason) => TaskError::stopped(reason),
            AskError::Busy => TaskError::permanent(err.to_string()),
            AskError::Log(err) => TaskError::failed(err.to_string()),
        })
    }

    fn task(&self) -> Result<&RunningTask, LogError> {
        self.running().map(|task| &**task).ok_or(LogError::NotATask)
    }
}
