//! The inputs of the tools, with the JSON Schema the client shows the model.
//!
//! Field documentation becomes the schema's descriptions: fixed text, never
//! anything read from the bus.

use rmcp::schemars::JsonSchema;
use serde::Deserialize;
use serde_json::Value;

/// `send_message`.
#[derive(Debug, Deserialize, JsonSchema)]
#[schemars(crate = "rmcp::schemars")]
pub struct SendMessage {
    /// Name of the receiving agent (1-64 characters from a-z, 0-9, '_' and '-').
    pub to: String,
    /// The message: any JSON value (text, object, ...).
    pub message: Value,
}

/// `read_inbox`.
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[schemars(crate = "rmcp::schemars")]
pub struct ReadInbox {
    /// Most messages to return (1-100). The inbox is in order and hands out
    /// one message per read, so a read returns at most one whatever this says.
    #[serde(default)]
    pub max_messages: Option<u32>,
    /// When the inbox is empty, wait up to this many seconds for a message (0-60, default 0).
    #[serde(default)]
    pub wait_seconds: Option<f64>,
}

/// `broadcast`.
#[derive(Debug, Deserialize, JsonSchema)]
#[schemars(crate = "rmcp::schemars")]
pub struct Broadcast {
    /// Topic (1-64 characters from a-z, 0-9, '_' and '-'); agents subscribed to it receive the message.
    pub topic: String,
    /// The message: any JSON value.
    pub message: Value,
}

/// `request_task`.
#[derive(Debug, Deserialize, JsonSchema)]
#[schemars(crate = "rmcp::schemars")]
pub struct RequestTask {
    /// Name of the running agent to ask.
    pub agent: String,
    /// One of the task types the agent accepts (see list_agents).
    pub task_type: String,
    /// Input of the task: a JSON object (or a string holding one). Default {}.
    #[serde(default)]
    pub payload: Option<Value>,
    /// low, normal (default), high or critical.
    #[serde(default)]
    pub priority: Option<String>,
    /// How long to wait for the answer, in seconds (1-300, default 30).
    #[serde(default)]
    pub timeout_seconds: Option<f64>,
}

/// `submit_task`.
#[derive(Debug, Deserialize, JsonSchema)]
#[schemars(crate = "rmcp::schemars")]
pub struct SubmitTask {
    /// Agent whose work queue (`tasks.<agent>`) gets the task. Omit it to use the
    /// shared queue of the task type (`work.<task_type>`), taken by any agent accepting it.
    #[serde(default)]
    pub agent: Option<String>,
    /// What to do.
    pub task_type: String,
    /// Input of the task: a JSON object (or a string holding one). Default {}.
    #[serde(default)]
    pub payload: Option<Value>,
    /// low, normal (default), high or critical.
    #[serde(default)]
    pub priority: Option<String>,
    /// Your own task id (1-128 characters from A-Z, a-z, 0-9, '_' and '-'); submitting
    /// the same id again within two minutes stores the task once. Default: a new id.
    #[serde(default)]
    pub task_id: Option<String>,
}

/// `task_status`.
#[derive(Debug, Deserialize, JsonSchema)]
#[schemars(crate = "rmcp::schemars")]
pub struct TaskStatus {
    /// The task id returned by submit_task.
    pub task_id: String,
    /// Wait up to this many seconds for the task to finish (0-300, default 0: answer at once).
    #[serde(default)]
    pub wait_seconds: Option<f64>,
}

/// `claim_task`.
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[schemars(crate = "rmcp::schemars")]
pub struct ClaimTask {
    /// When your queue is empty, wait up to this many seconds for a task (0-60, default 0).
    #[serde(default)]
    pub wait_seconds: Option<f64>,
}

/// `complete_task`.
#[derive(Debug, Deserialize, JsonSchema)]
#[schemars(crate = "rmcp::schemars")]
pub struct CompleteTask {
    /// The task id returned by claim_task.
    pub task_id: String,
    /// The result when the task succeeded: any JSON value.
    #[serde(default)]
    pub result: Option<Value>,
    /// Instead of a result: why the task cannot be done. The task then fails
    /// for good and goes to the dead letters.
    #[serde(default)]
    pub error: Option<String>,
}

/// `get_state`.
#[derive(Debug, Deserialize, JsonSchema)]
#[schemars(crate = "rmcp::schemars")]
pub struct GetState {
    /// The key (1-128 characters from A-Z, a-z, 0-9, '_' and '-').
    pub key: String,
    /// Read another agent's state instead of your own.
    #[serde(default)]
    pub agent: Option<String>,
}

/// `set_state`.
#[derive(Debug, Deserialize, JsonSchema)]
#[schemars(crate = "rmcp::schemars")]
pub struct SetState {
    /// The key (1-128 characters from A-Z, a-z, 0-9, '_' and '-').
    pub key: String,
    /// The value: any JSON value.
    pub value: Value,
    /// Forget the value after this many seconds (default: keep it).
    #[serde(default)]
    pub ttl_seconds: Option<f64>,
}
