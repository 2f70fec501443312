//! The wire format of tasks: TaskRequest and TaskResponse as JSON.
//!
//! ```json
//! {"task_id": "…", "task_type": "generate_text", "payload": {…}, "priority": "normal"}
//! {"task_id": "…", "status": "completed", "result": {…}, "error": null}
//! ```
//!
//! Keys are snake_case, enum values lowercase, absent values `null`. Unknown
//! fields are ignored. `docs/PROTOCOL.md` in the repository is the reference
//! for clients in other languages; plain nats-py agents read and write exactly
//! this.

use crate::payload::Payload;
use crate::task_id::{InvalidTaskId, TaskId};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use std::fmt;
use std::sync::Arc;
use std::time::SystemTime;

/// How urgent a task is; under load, higher priorities are taken first.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Priority {
    /// Taken last.
    Low,
    /// The default. `medium` is accepted on input, as some clients send it.
    #[default]
    #[serde(alias = "medium")]
    Normal,
    /// Taken before normal.
    High,
    /// Taken first.
    Critical,
}

impl Priority {
    /// Every priority, most urgent first.
    pub const ALL: [Priority; 4] = [Self::Critical, Self::High, Self::Normal, Self::Low];

    /// The lowercase wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Low => "low",
            Self::Normal => "normal",
            Self::High => "high",
            Self::Critical => "critical",
        }
    }

    /// Parses a wire name (`medium` is `normal`).
    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "low" => Some(Self::Low),
            "normal" | "medium" => Some(Self::Normal),
            "high" => Some(Self::High),
            "critical" => Some(Self::Critical),
            _ => None,
        }
    }
}

impl fmt::Display for Priority {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Priority {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
            .ok_or_else(|| format!("unknown priority {s:?}; use low, normal, high or critical"))
    }
}

/// Where a task is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TaskStatus {
    /// Stored, not yet taken by a worker.
    Pending,
    /// A handler is working on it.
    Running,
    /// The handler succeeded; `result` holds its output.
    Completed,
    /// The handler failed; `error` says why.
    Failed,
    /// The task was refused before running: malformed, unknown type, invalid payload.
    Rejected,
    /// The handler ran out of time.
    Timeout,
    /// The task was cancelled (for example, its agent shut down before running it).
    Cancelled,
}

impl TaskStatus {
    /// The lowercase wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Running => "running",
            Self::Completed => "completed",
            Self::Failed => "failed",
            Self::Rejected => "rejected",
            Self::Timeout => "timeout",
            Self::Cancelled => "cancelled",
        }
    }
}

impl fmt::Display for TaskStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A task sent to an agent.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskRequest {
    /// Unique id; a repeated id is the same task (retries reuse it).
    pub task_id: TaskId,
    /// What to do; one of the task types the agent accepts.
    pub task_type: String,
    /// Input of the task: a JSON object, kept as received until read.
    pub payload: Payload,
    /// Urgency.
    #[serde(default)]
    pub priority: Priority,
    /// When the task must be over, RFC 3339 (UTC, `Z`): a runtime does not
    /// start it later, and stops it (status `timeout`) when it runs past.
    /// Absent: no deadline beyond the agent's own task timeout.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deadline: Option<String>,
    /// The sender follows the task's events (partials, progress,
    /// questions): its event log is kept in full from the start. Without
    /// it, the log starts only when the handler reports something.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub stream: bool,
}

impl TaskRequest {
    /// A request with a fresh task id.
    pub fn new(task_type: impl Into<String>, payload: Value) -> Self {
        Self {
            task_id: TaskId::new(),
            task_type: task_type.into(),
            payload: Payload::from(payload),
            priority: Priority::Normal,
            deadline: None,
            stream: false,
        }
    }

    /// Sets the priority.
    #[must_use]
    pub fn with_priority(mut self, priority: Priority) -> Self {
        self.priority = priority;
        self
    }

    /// Sets the deadline: the task must be over by `deadline`.
    #[must_use]
    pub fn with_deadline(mut self, deadline: SystemTime) -> Self {
        self.deadline = Some(crate::clock::rfc3339(deadline));
        self
    }

    /// Asks for the task's full event log (see [`TaskRequest::stream`]).
    #[must_use]
    pub fn streamed(mut self) -> Self {
        self.stream = true;
        self
    }

    /// The deadline as a time; `None` when there is none. A deadline that
    /// is not RFC 3339 was refused when the request was read.
    pub fn deadline_time(&self) -> Option<SystemTime> {
        self.deadline
            .as_deref()
            .and_then(|text| humantime::parse_rfc3339_weak(text).ok())
    }

    /// Parses a request, naming the field that is missing or mistyped.
    ///
    /// On error, the task id is returned too when it could be read, so the
    /// error response can still carry it.
    pub fn from_json(bytes: &[u8]) -> Result<Self, (Option<String>, RequestError)> {
        // Fast path for the common, well-formed request: straight into the
        // struct. Anything else takes the path below, which names the problem.
        if let Ok(request) = serde_json::from_slice::<Self>(bytes)
            && !request.task_id.is_empty()
            && !request.task_type.is_empty()
            && request.payload.is_object()
            && (request.deadline.is_none() || request.deadline_time().is_some())
        {
            return Ok(request);
        }
        let value: Value = serde_json::from_slice(bytes)
            .map_err(|err| (None, RequestError::MalformedJson(Arc::new(err))))?;
        let Value::Object(mut object) = value else {
            return Err((None, RequestError::NotAnObject));
        };
        let raw_id = take_string(&mut object, "task_id").map_err(|e| (None, e))?;
        // An invalid id is still echoed, so the sender can match the rejection.
        let task_id = TaskId::parse(&raw_id)
            .map_err(|err| (Some(raw_id.clone()), RequestError::InvalidTaskId(err)))?;
        let fail = |e| (Some(raw_id.clone()), e);
        let task_type = take_string(&mut object, "task_type").map_err(fail)?;
        let payload = match object.remove("payload") {
            None | Some(Value::Null) => Value::Object(Map::new()),
            Some(payload @ Value::Object(_)) => payload,
            Some(_) => {
                return Err(fail(RequestError::WrongType {
                    field: "payload",
                    expected: "a JSON object",
                }));
            }
        };
        let priority = match object.remove("priority") {
            None | Some(Value::Null) => Priority::Normal,
            Some(Value::String(text)) => {
                Priority::parse(&text).ok_or_else(|| fail(RequestError::UnknownPriority(text)))?
            }
            Some(_) => {
                return Err(fail(RequestError::WrongType {
                    field: "priority",
                    expected: "a string",
                }));
            }
        };
        let deadline = match object.remove("deadline") {
            None | Some(Value::Null) => None,
            Some(Value::String(text)) if humantime::parse_rfc3339_weak(&text).is_ok() => Some(text),
            Some(_) => {
                return Err(fail(RequestError::WrongType {
                    field: "deadline",
                    expected: "an RFC 3339 time such as \"2026-01-01T12:00:00Z\"",
                }));
            }
        };
        let stream = match object.remove("stream") {
            None | Some(Value::Null) => false,
            Some(Value::Bool(stream)) => stream,
            Some(_) => {
                return Err(fail(RequestError::WrongType {
                    field: "stream",
                    expected: "true or false",
                }));
            }
        };
        Ok(Self {
            task_id,
            task_type,
            payload: Payload::from(payload),
            priority,
            deadline,
            stream,
        })
    }

    /// The request as JSON bytes.
    pub fn to_json(&self) -> Vec<u8> {
        let mut json = Vec::with_capacity(JSON_CAPACITY);
        serde_json::to_writer(&mut json, self).expect("a TaskRequest always serializes");
        json
    }
}

fn take_string(
    object: &mut Map<String, Value>,
    field: &'static str,
) -> Result<String, RequestError> {
    match object.remove(field) {
        None | Some(Value::Null) => Err(RequestError::MissingField(field)),
        Some(Value::String(s)) if s.is_empty() => Err(RequestError::WrongType {
            field,
            expected: "a non-empty string",
        }),
        Some(Value::String(s)) => Ok(s),
        Some(_) => Err(RequestError::WrongType {
            field,
            expected: "a string",
        }),
    }
}

/// Why bytes are not a valid TaskRequest.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum RequestError {
    /// Not JSON at all.
    #[error("the request is not valid JSON: {0}")]
    MalformedJson(#[source] Arc<serde_json::Error>),
    /// JSON, but not an object.
    #[error("the request must be a JSON object with task_id, task_type, payload and priority")]
    NotAnObject,
    /// A required field is absent.
    #[error("the request has no `{0}` field")]
    MissingField(&'static str),
    /// A field has the wrong type.
    #[error("the request's `{field}` field must be {expected}")]
    WrongType {
        /// The field.
        field: &'static str,
        /// What it must be.
        expected: &'static str,
    },
    /// The priority is not one of the four.
    #[error("the request's `priority` {0:?} is unknown; use low, normal, high or critical")]
    UnknownPriority(String),
    /// The task id does not follow the rule of [`TaskId`].
    #[error("the request's `task_id` is unusable: {0}")]
    InvalidTaskId(#[source] InvalidTaskId),
}

/// The answer to a task.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskResponse {
    /// The id of the task answered.
    pub task_id: String,
    /// Outcome.
    pub status: TaskStatus,
    /// Output, when completed.
    #[serde(default)]
    pub result: Option<Value>,
    /// What went wrong, when not completed.
    #[serde(default)]
    pub error: Option<String>,
}

impl TaskResponse {
    /// A `completed` response.
    pub fn completed(task_id: impl Into<String>, result: Value) -> Self {
        Self {
            task_id: task_id.into(),
            status: TaskStatus::Completed,
            result: Some(result),
            error: None,
        }
    }

    /// A response with `status` and an error message.
    pub fn error(task_id: impl Into<String>, status: TaskStatus, error: impl Into<String>) -> Self {
        Self {
            task_id: task_id.into(),
            status,
            result: None,
            error: Some(error.into()),
        }
    }

    /// Whether the task completed.
    pub fn is_completed(&self) -> bool {
        self.status == TaskStatus::Completed
    }

    /// The response as JSON bytes.
    pub fn to_json(&self) -> Vec<u8> {
        let mut json = Vec::with_capacity(JSON_CAPACITY);
        serde_json::to_writer(&mut json, self).expect("a TaskResponse always serializes");
        json
    }
}

/// Bytes reserved up front when serializing a request or response: enough
/// for a typical one, so the buffer is not regrown (and copied) several
/// times per message.
pub(crate) const JSON_CAPACITY: usize = 256;

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn request_serializes_exactly_as_documented() {
        let request = TaskRequest {
            task_id: TaskId::parse("t1").unwrap(),
            task_type: "generate_text".into(),
            payload: json!({"prompt": "hi", "max_tokens": 200}).into(),
            priority: Priority::Normal,
            deadline: None,
            stream: false,
        };
        assert_eq!(
            serde_json::to_value(&request).unwrap(),
            json!({"task_id": "t1", "task_type": "generate_text", "payload": {"prompt": "hi", "max_tokens": 200}, "priority": "normal"})
        );
    }

    #[test]
    fn response_serializes_nulls() {
        let response = TaskResponse::error("t1", TaskStatus::Failed, "boom");
        assert_eq!(
            serde_json::to_value(&response).unwrap(),
            json!({"task_id": "t1", "status": "failed", "result": null, "error": "boom"})
        );
        let done = TaskResponse::completed("t2", json!({"text": "x"}));
        assert_eq!(
            serde_json::to_string(&done).unwrap(),
            r#"{"task_id":"t2","status":"completed","result":{"text":"x"},"error":null}"#
        );
    }

    #[test]
    fn medium_is_normal_and_unknown_fields_are_ignored() {
        let request = TaskRequest::from_json(
            br#"{"task_id":"a","task_type":"b","payload":{},"priority":"medium","extra":1}"#,
        )
        .unwrap();
        assert_eq!(request.priority, Priority::Normal);
        let serde_path: TaskRequest = serde_json::from_str(
            r#"{"task_id":"a","task_type":"b","payload":{},"priority":"medium"}"#,
        )
        .unwrap();
        assert_eq!(serde_path.priority, Priority::Normal);
    }

    #[test]
    fn errors_name_the_field() {
        // `None` expected: malformed JSON, whose message is serde's.
        let cases: [(&[u8], Option<&str>, Option<RequestError>); 8] = [
            (b"{not json", None, None),
            (b"[1]", None, Some(RequestError::NotAnObject)),
            (
                br#"{"task_type":"b"}"#,
                None,
                Some(RequestError::MissingField("task_id")),
            ),
            (
                br#"{"task_id":"a"}"#,
                Some("a"),
                Some(RequestError::MissingField("task_type")),
            ),
            (
                br#"{"task_id":5,"task_type":"b"}"#,
                None,
                Some(RequestError::WrongType {
                    field: "task_id",
                    expected: "a string",
                }),
            ),
            (
                br#"{"task_id":"a","task_type":"b","payload":[1]}"#,
                Some("a"),
                Some(RequestError::WrongType {
                    field: "payload",
                    expected: "a JSON object",
                }),
            ),
            (
                br#"{"task_id":"a","task_type":"b","priority":"urgent"}"#,
                Some("a"),
                Some(RequestError::UnknownPriority("urgent".into())),
            ),
            (
                br#"{"task_id":"a.b","task_type":"b"}"#,
                Some("a.b"),
                Some(RequestError::InvalidTaskId(
                    TaskId::parse("a.b").unwrap_err(),
                )),
            ),
        ];
        for (bytes, id, expected) in cases {
            let (got_id, err) = TaskRequest::from_json(bytes).unwrap_err();
            assert_eq!(got_id.as_deref(), id);
            match expected {
                None => assert!(matches!(err, RequestError::MalformedJson(_)), "{err}"),
                Some(expected) => assert_eq!(err.to_string(), expected.to_string()),
            }
        }
        let (_, err) = TaskRequest::from_json(br#"{"task_id":"a"}"#).unwrap_err();
        assert_eq!(err.to_string(), "the request has no `task_type` field");
    }

    #[test]
    fn priorities_order_by_urgency() {
        assert!(Priority::Critical > Priority::High);
        assert!(Priority::High > Priority::Normal);
        assert!(Priority::Normal > Priority::Low);
        assert_eq!("medium".parse::<Priority>(), Ok(Priority::Normal));
    }
}
