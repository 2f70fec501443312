//! The MCP tasks extension (SEP-2663, `io.modelcontextprotocol/tasks`) over
//! agentbus tasks.
//!
//! For a client that declares the extension, the handle `request_task`
//! returns for a task that goes on after its wait is an MCP task
//! (`CreateTaskResult`) whose id is the agentbus task id; other clients get
//! the handle in the tool result. Then:
//!
//! - `tasks/get` is [`Bus::task_report`]: `working`, `input_required`
//!   (the handler's question, asked as a form elicitation), `cancelled`, or
//!   `completed` with the tool result `request_task` gives when the answer
//!   comes in time (from the task's record, else its log's final event);
//! - `tasks/update` answers the question ([`Bus::answer`]): an accepted
//!   form's `answer`, `null` when declined; a cancelled form cancels the task;
//! - `tasks/cancel` is [`Bus::cancel`].
//!
//! Only tasks this bridge returned are known; other ids are invalid params.
//! The question is another agent's words: the elicitation message says so.
//!
//! [`Bus::task_report`]: agentbus::Bus::task_report
//! [`Bus::answer`]: agentbus::Bus::answer
//! [`Bus::cancel`]: agentbus::Bus::cancel

use crate::bridge::Bridge;
use crate::follow::{Handle, answer_json, final_response};
use crate::params::structured;
use crate::tool_error::tool_result;
use agentbus::TaskId;
use agentbus::delivery::{TaskReport, TaskState};
use agentbus::task_log::{ControlErrorKind, EventType, LogEvent};
use rmcp::model::{
    CreateTaskResult, DetailedTask, ElicitRequest, ElicitRequestParams, ElicitResult,
    ElicitationAction, ElicitationSchema, GetTaskResult, InputRequest, InputRequests,
    InputResponses, JsonObject, Task, TaskPayload,
};
use rmcp::service::RequestContext;
use rmcp::{ErrorData, RoleServer};
use serde_json::{Value, json};
use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;

/// How long an MCP task can be looked up: its log keeps its events a day.
const TASK_TTL_MS: u64 = 86_400_000;
/// How often a client is asked to poll `tasks/get`.
const POLL_INTERVAL_MS: u64 = 1_000;
/// MCP tasks remembered at most; the oldest are forgotten first.
const REMEMBERED: usize = 10_000;
/// Longest question shown in an elicitation message, in characters.
const MAX_QUESTION_CHARS: usize = 2_000;

/// Whether the request's client declared the tasks extension.
pub(crate) fn declares_tasks(context: &RequestContext<RoleServer>) -> bool {
    context
        .client_capabilities()
        .is_some_and(|caps| caps.supports_tasks())
}

/// The MCP tasks this bridge returned: task id to who handles it and when
/// the task was returned; the oldest forgotten past [`REMEMBERED`].
#[derive(Debug, Default)]
pub(crate) struct McpTasks {
    inner: Mutex<Remembered>,
}

#[derive(Debug, Default)]
struct Remembered {
    tasks: HashMap<String, Returned>,
    /// Task ids, oldest first.
    order: VecDeque<String>,
}

#[derive(Debug, Clone)]
struct Returned {
    agent: String,
    created_at: String,
}

impl McpTasks {
    fn insert(&self, task_id: &TaskId, agent: &str) -> String {
        let created_at = now();
        if let Ok(mut inner) = self.inner.lock() {
            while inner.order.len() >= REMEMBERED {
                if let Some(oldest) = inner.order.pop_front() {
                    inner.tasks.remove(&oldest);
                }
            }
            let returned = Returned {
                agent: agent.to_owned(),
                created_at: created_at.clone(),
            };
            if inner.tasks.insert(task_id.to_string(), returned).is_none() {
                inner.order.push_back(task_id.to_string());
            }
        }
        created_at
    }

    fn get(&self, task_id: &str) -> Option<Returned> {
        self.inner.lock().ok()?.tasks.get(task_id).cloned()
    }
}

impl Bridge {
    /// `request_task`'s handle as an MCP task, known to `tasks/*` from now.
    pub(crate) fn materialize(&self, handle: Handle) -> CreateTaskResult {
        let created_at = self
            .mcp_tasks()
            .insert(&handle.task_id, handle.agent.as_str());
        let (status, message) = match handle.state {
            TaskState::InputRequired => (
                rmcp::model::TaskStatus::InputRequired,
                format!("agent {} asked a question", handle.agent),
            ),
            _ => (
                rmcp::model::TaskStatus::Working,
                format!("agent {} is working on it", handle.agent),
            ),
        };
        let task = Task::new(handle.task_id.to_string(), status, &created_at, &created_at)
            .with_status_message(message)
            .with_ttl_ms(TASK_TTL_MS)
            .with_poll_interval_ms(POLL_INTERVAL_MS);
        CreateTaskResult::new(task)
    }

    /// `tasks/get`.
    pub(crate) async fn get_mcp_task(
        &self,
        task_id: &str,
        context: &RequestContext<RoleServer>,
    ) -> Result<GetTaskResult, ErrorData> {
        let (id, returned) = self.known(task_id)?;
        let report = self.task_report_for_mcp(&id).await?;
        let agent = returned.agent.as_str();
        let (payload, message) = match report.state {
            TaskState::Cancelled => (TaskPayload::Cancelled, "the task was cancelled".to_owned()),
            state if state.is_final() => match final_response(&report) {
                Some(response) => {
                    let result = call_tool_result(answer_json(agent, &response));
                    (
                        TaskPayload::Completed { result },
                        format!("the task is over ({state})"),
                    )
                }
                None => {
                    let message =
                        format!("task {id} is over ({state}), but its answer is no longer stored");
                    let error = json!({"code": -32603, "message": message});
                    let error = error.as_object().cloned().unwrap_or_default();
                    (TaskPayload::Failed { error }, message)
                }
            },
            TaskState::InputRequired => match question(&report) {
                Some(question) if answers_forms(context) => {
                    let input_requests = ask(agent, &id, question)?;
                    let message = format!("agent {agent} asked a question");
                    (TaskPayload::InputRequired { input_requests }, message)
                }
                _ => (
                    TaskPayload::Working,
                    format!("agent {agent} asked a question: the answer_task tool answers it"),
                ),
            },
            _ => (
                TaskPayload::Working,
                format!("agent {agent} is working on it"),
            ),
        };
        let updated = report
            .last_event
            .as_ref()
            .map_or_else(|| returned.created_at.clone(), |event| event.time.clone());
        let task = Task::new(
            task_id,
            payload.status(),
            returned.created_at.clone(),
            updated,
        )
        .with_status_message(message)
        .with_ttl_ms(TASK_TTL_MS)
        .with_poll_interval_ms(POLL_INTERVAL_MS);
        Ok(GetTaskResult::new(DetailedTask::new(task, payload)))
    }

    /// `tasks/update`: the response to the open question, if any; responses
    /// to anything else are ignored, as the extension asks.
    pub(crate) async fn update_mcp_task(
        &self,
        task_id: &str,
        responses: &InputResponses,
    ) -> Result<(), ErrorData> {
        let (id, _) = self.known(task_id)?;
        let report = self.task_report_for_mcp(&id).await?;
        let Some(question) = question(&report) else {
            return Ok(());
        };
        let key = question_key(question);
        let Some(response) = responses.get(&key) else {
            return Ok(());
        };
        let response: ElicitResult = serde_json::from_value(response.clone()).map_err(|err| {
            ErrorData::invalid_params(
                format!("the response to {key} is not an elicitation result ({err}); send {{\"action\": \"accept\", \"content\": {{\"answer\": ...}}}}"),
                None,
            )
        })?;
        let answer = match response.action {
            ElicitationAction::Accept => {
                let content = response.content.unwrap_or(Value::Null);
                structured(content.get("answer").cloned().unwrap_or(content))
            }
            ElicitationAction::Cancel => return self.cancel_for_mcp(&id).await,
            _ => Value::Null,
        };
        match self.bus().answer(&id, &answer).await {
            Ok(()) => Ok(()),
            // Answered or over meanwhile: nothing is waiting for this one.
            Err(err)
                if matches!(
                    err.kind(),
                    ControlErrorKind::NotAsking | ControlErrorKind::Over
                ) =>
            {
                tracing::debug!(%err, "an answer nobody waits for any more");
                Ok(())
            }
            Err(err) => Err(ErrorData::internal_error(err.to_string(), None)),
        }
    }

    /// `tasks/cancel`.
    pub(crate) async fn cancel_mcp_task(&self, task_id: &str) -> Result<(), ErrorData> {
        let (id, _) = self.known(task_id)?;
        self.cancel_for_mcp(&id).await
    }

    async fn cancel_for_mcp(&self, task_id: &TaskId) -> Result<(), ErrorData> {
        self.bus()
            .cancel(task_id)
            .await
            .map(drop)
            .map_err(|err| ErrorData::internal_error(err.to_string(), None))
    }

    fn known(&self, task_id: &str) -> Result<(TaskId, Returned), ErrorData> {
        let returned = self.mcp_tasks().get(task_id);
        match (TaskId::parse(task_id), returned) {
            (Ok(id), Some(returned)) => Ok((id, returned)),
            _ => Err(ErrorData::invalid_params(
                format!(
                    "no task {task_id:?} was returned by this server; the tasks it knows are those request_task returned"
                ),
                None,
            )),
        }
    }

    async fn task_report_for_mcp(&self, task_id: &TaskId) -> Result<TaskReport, ErrorData> {
        self.bus()
            .task_report(task_id)
            .await
            .map_err(|err| ErrorData::internal_error(err.to_string(), None))
    }
}

/// The handler's open question: the log's last event, when it asks one.
fn question(report: &TaskReport) -> Option<&LogEvent> {
    report
        .last_event
        .as_ref()
        .filter(|event| event.kind == EventType::InputRequired)
}

/// The `inputRequests` key of a question: its place in the task's log,
/// unique over the task's life.
fn question_key(question: &LogEvent) -> String {
    format!("question-{}", question.seq)
}

/// Whether the client takes form elicitations (an empty elicitation
/// capability means forms).
fn answers_forms(context: &RequestContext<RoleServer>) -> bool {
    context
        .client_capabilities()
        .and_then(|caps| caps.elicitation)
        .is_some_and(|elicitation| elicitation.form.is_some() || elicitation.url.is_none())
}

/// The question as a form elicitation asking for one `answer`.
fn ask(agent: &str, task_id: &TaskId, question: &LogEvent) -> Result<InputRequests, ErrorData> {
    let asked = question.data.get("question").unwrap_or(&question.data);
    let mut text = asked
        .as_str()
        .map_or_else(|| asked.to_string(), str::to_owned);
    if let Some((cut, _)) = text.char_indices().nth(MAX_QUESTION_CHARS) {
        text.truncate(cut);
        text.push('…');
    }
    let message = format!(
        "Agent {agent} asks, for task {task_id} (its own words, not this server's): {text}"
    );
    let schema = json!({
        "type": "object",
        "properties": {"answer": {
            "type": "string",
            "title": "Answer",
            "description": "Your answer. Text holding a JSON object or array is sent as that object or array.",
        }},
        "required": ["answer"],
    });
    let schema = schema.as_object().cloned().unwrap_or_default();
    let requested_schema = ElicitationSchema::from_json_schema(schema)
        .map_err(|err| ErrorData::internal_error(err.to_string(), None))?;
    let params = ElicitRequestParams::FormElicitationParams {
        meta: None,
        message,
        requested_schema,
    };
    let request = InputRequest::Elicitation(ElicitRequest::new(params));
    Ok(InputRequests::from([(question_key(question), request)]))
}

/// `value` as the tool result `request_task` returns, as a JSON object.
fn call_tool_result(value: Value) -> JsonObject {
    match serde_json::to_value(tool_result(Ok(value))) {
        Ok(Value::Object(object)) => object,
        _ => JsonObject::new(),
    }
}

fn now() -> String {
    humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string()
}
