//! An agent: what it declares, how it handles a task, and what it can do
//! while it works on one.

use crate::client::{Bus, PublishError, RequestOptions, SendTaskError};
use crate::name::{InvalidName, Name};
use crate::protocol::{TaskRequest, TaskResponse, TaskStatus};
pub use crate::subject::MessageChannel;
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;
use std::future::Future;
use std::sync::Arc;

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
    /// The sending agent, when the sender said.
    pub from: Option<String>,
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
        T::deserialize(&self.payload).map_err(|err| {
            TaskError::rejected(format!("invalid payload for {}: {err}", self.task_type))
        })
    }
}

/// What a handler knows and can do while it works on a task.
#[derive(Debug, Clone)]
pub struct TaskContext {
    pub(crate) agent: Name,
    pub(crate) instance_id: Arc<str>,
    pub(crate) task_id: Arc<str>,
    pub(crate) bus: Bus,
}

impl TaskContext {
    /// The name of the agent handling the task.
    pub fn agent_name(&self) -> &Name {
        &self.agent
    }

    /// The id of this runtime process (distinguishes replicas of one agent).
    pub fn instance_id(&self) -> &str {
        &self.instance_id
    }

    /// The id of the task being handled.
    pub fn task_id(&self) -> &str {
        &self.task_id
    }

    /// The bus, for anything beyond the helpers below.
    pub fn bus(&self) -> &Bus {
        &self.bus
    }

    /// Publishes an event as JSON.
    pub async fn publish<T: Serialize + ?Sized>(
        &self,
        subject: &str,
        value: &T,
    ) -> Result<(), PublishError> {
        self.bus.publish(subject, value).await
    }

    /// Sends a task to another agent and waits for its response.
    pub async fn send_task(
        &self,
        agent: &str,
        request: &TaskRequest,
        options: RequestOptions,
    ) -> Result<TaskResponse, SendTaskError> {
        self.bus.request(agent, request, options).await
    }
}
