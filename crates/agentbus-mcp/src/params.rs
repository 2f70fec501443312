//! The inputs of the tools, with the JSON Schema the client shows the model.
//!
//! Field documentation becomes the schema's descriptions: fixed text, never
//! anything read from the bus.
//!
//! # Arguments given as text
//!
//! Some clients send every argument as a string (the MCP Inspector's forms
//! and older Inspector CLIs, some models). The schemas stay as they are, and
//! the bridge reads such strings as follows:
//!
//! - a number or integer field takes a string holding one (`"5"`, `" 1.5 "`),
//!   a true/false field `"true"` or `"false"`; any other string is refused;
//! - a field that takes any JSON value (`message`, `value`, `result`, `answer`) takes a
//!   string holding a JSON object or array as that object or array; any other
//!   string, including one that only looks like JSON, stays a string. Its
//!   description says so, as the model sees it.
//! - `payload` takes a JSON object or a string holding one (see its description).

use rmcp::schemars::JsonSchema;
use serde::Deserialize;
use serde_json::Value;

/// `send_message`.
#[derive(Debug, Deserialize, JsonSchema)]
#[schemars(crate = "rmcp::schemars")]
pub(crate) struct SendMessage {
    /// Name of the receiving agent (1-64 characters from a-z, 0-9, '_' and '-').
    pub to: String,
    /// The message: any JSON value (text, object, ...). Text holding a JSON
    /// object or array is sent as that object or array.
    #[serde(deserialize_with = "text::any_json")]
    pub message: Value,
}

/// `read_inbox`.
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[schemars(crate = "rmcp::schemars")]
pub(crate) struct ReadInbox {
    /// Most messages to return (1-100). The inbox is in order and hands out
    /// one message per read, so a read returns at most one whatever this says.
    #[serde(default, deserialize_with = "text::integer")]
    #[schemars(with = "Option<u32>")]
    pub max_messages: Option<u32>,
    /// When the inbox is empty, wait up to this many seconds for a message (0-60, default 0).
    #[serde(default, deserialize_with = "text::number")]
    #[schemars(with = "Option<f64>")]
    pub wait_seconds: Option<f64>,
}

/// `broadcast`.
#[derive(Debug, Deserialize, JsonSchema)]
#[schemars(crate = "rmcp::schemars")]
pub(crate) struct Broadcast {
    /// Topic (1-64 characters from a-z, 0-9, '_' and '-'); agents subscribed to it receive the message.
    pub topic: String,
    /// The message: any JSON value. Text holding a JSON object or array is
    /// sent as that object or array.
    #[serde(deserialize_with = "text::any_json")]
    pub message: Value,
}

/// `request_task`.
#[derive(Debug, Deserialize, JsonSchema)]
#[schemars(crate = "rmcp::schemars")]
pub(crate) struct RequestTask {
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
    /// How long to wait for the answer, in seconds (1-300, default 30); the
    /// call fails when it has not come by then.
    #[serde(default, deserialize_with = "text::number")]
    #[schemars(with = "Option<f64>")]
    pub timeout_seconds: Option<f64>,
    /// For a task that may take long, instead of timeout_seconds: wait up to
    /// this many seconds (1-300) for the answer and, when it has not come by
    /// then, return the task's handle (its task_id) instead of failing. The
    /// task goes on; follow it with watch_task, task_status, answer_task and
    /// cancel_task.
    #[serde(default, deserialize_with = "text::number")]
    #[schemars(with = "Option<f64>")]
    pub wait_seconds: Option<f64>,
    /// Stop the task if it has not finished this many seconds from now
    /// (1-604800); it then ends with status timeout. Default: no deadline.
    #[serde(default, deserialize_with = "text::number")]
    #[schemars(with = "Option<f64>")]
    pub deadline_seconds: Option<f64>,
}

/// `submit_task`.
#[derive(Debug, Deserialize, JsonSchema)]
#[schemars(crate = "rmcp::schemars")]
pub(crate) struct SubmitTask {
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
    /// Stop the task if it has not finished this many seconds from now
    /// (1-604800): an agent does not start it later, and stops it when it
    /// runs past (status timeout). Default: no deadline.
    #[serde(default, deserialize_with = "text::number")]
    #[schemars(with = "Option<f64>")]
    pub deadline_seconds: Option<f64>,
    /// Keep the task's full event log from the start, to follow it with
    /// watch_task (default false: only what its handler reports is logged).
    #[serde(default, deserialize_with = "text::boolean")]
    #[schemars(with = "Option<bool>")]
    pub stream: Option<bool>,
}

/// `task_status`.
#[derive(Debug, Deserialize, JsonSchema)]
#[schemars(crate = "rmcp::schemars")]
pub(crate) struct TaskStatus {
    /// The task id returned by submit_task or request_task.
    pub task_id: String,
    /// Wait up to this many seconds for the task to finish (0-300, default 0: answer at once).
    #[serde(default, deserialize_with = "text::number")]
    #[schemars(with = "Option<f64>")]
    pub wait_seconds: Option<f64>,
}

/// `watch_task`.
#[derive(Debug, Deserialize, JsonSchema)]
#[schemars(crate = "rmcp::schemars")]
pub(crate) struct WatchTask {
    /// The task id returned by request_task or submit_task.
    pub task_id: String,
    /// The first event wanted: 1 (default) for the whole log, else the
    /// next_seq returned by the previous watch_task call.
    #[serde(default, deserialize_with = "text::integer")]
    #[schemars(with = "Option<u32>")]
    pub from_seq: Option<u32>,
    /// When no event from from_seq on is stored yet, wait up to this many
    /// seconds for one (0-60, default 0: answer at once).
    #[serde(default, deserialize_with = "text::number")]
    #[schemars(with = "Option<f64>")]
    pub wait_seconds: Option<f64>,
}

/// `cancel_task`.
#[derive(Debug, Deserialize, JsonSchema)]
#[schemars(crate = "rmcp::schemars")]
pub(crate) struct CancelTask {
    /// The task id returned by request_task or submit_task.
    pub task_id: String,
}

/// `answer_task`.
#[derive(Debug, Deserialize, JsonSchema)]
#[schemars(crate = "rmcp::schemars")]
pub(crate) struct AnswerTask {
    /// The task whose handler asked a question (watch_task shows it as an
    /// input_required event).
    pub task_id: String,
    /// The answer: any JSON value (text, object, ...). Text holding a JSON
    /// object or array is sent as that object or array.
    #[serde(deserialize_with = "text::any_json")]
    pub answer: Value,
}

/// `claim_task`.
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[schemars(crate = "rmcp::schemars")]
pub(crate) struct ClaimTask {
    /// When your queue is empty, wait up to this many seconds for a task (0-60, default 0).
    #[serde(default, deserialize_with = "text::number")]
    #[schemars(with = "Option<f64>")]
    pub wait_seconds: Option<f64>,
}

/// `complete_task`.
#[derive(Debug, Deserialize, JsonSchema)]
#[schemars(crate = "rmcp::schemars")]
pub(crate) struct CompleteTask {
    /// The task id returned by claim_task.
    pub task_id: String,
    /// The result when the task succeeded: any JSON value. Text holding a
    /// JSON object or array is stored as that object or array.
    #[serde(default, deserialize_with = "text::any_json_option")]
    #[schemars(with = "Option<Value>")]
    pub result: Option<Value>,
    /// Instead of a result: why the task cannot be done. The task then fails
    /// for good and goes to the dead letters.
    #[serde(default)]
    pub error: Option<String>,
}

/// `get_state`.
#[derive(Debug, Deserialize, JsonSchema)]
#[schemars(crate = "rmcp::schemars")]
pub(crate) struct GetState {
    /// The key (1-128 characters from A-Z, a-z, 0-9, '_' and '-').
    pub key: String,
    /// Read another agent's state instead of your own.
    #[serde(default)]
    pub agent: Option<String>,
}

/// `set_state`.
#[derive(Debug, Deserialize, JsonSchema)]
#[schemars(crate = "rmcp::schemars")]
pub(crate) struct SetState {
    /// The key (1-128 characters from A-Z, a-z, 0-9, '_' and '-').
    pub key: String,
    /// The value: any JSON value. Text holding a JSON object or array is
    /// stored as that object or array.
    #[serde(deserialize_with = "text::any_json")]
    pub value: Value,
    /// Forget the value after this many seconds (default: keep it).
    #[serde(default, deserialize_with = "text::number")]
    #[schemars(with = "Option<f64>")]
    pub ttl_seconds: Option<f64>,
}

/// `value`, or the JSON object or array it holds as text (the rule of
/// fields taking any JSON value).
pub(crate) fn structured(value: Value) -> Value {
    text::structured(value)
}

/// Arguments given as text, read by the rules in the module documentation.
mod text {
    use serde::Deserialize;
    use serde::de::{Deserializer, Error, Unexpected};
    use serde_json::Value;

    /// A number, or a string holding one; absent or null is `None`.
    pub(super) fn number<'de, D: Deserializer<'de>>(d: D) -> Result<Option<f64>, D::Error> {
        const EXPECTED: &str = "a number, or a string holding one";
        match Value::deserialize(d)? {
            Value::Null => Ok(None),
            Value::Number(n) => Ok(n.as_f64()),
            Value::String(text) => match text.trim().parse::<f64>() {
                Ok(n) => Ok(Some(n)),
                Err(_) => Err(D::Error::invalid_value(Unexpected::Str(&text), &EXPECTED)),
            },
            other => Err(D::Error::invalid_type(unexpected(&other), &EXPECTED)),
        }
    }

    /// A whole number from 0 to 2^32-1, or a string holding one; absent or null is `None`.
    pub(super) fn integer<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u32>, D::Error> {
        const EXPECTED: &str = "a whole number, or a string holding one";
        let parsed = match Value::deserialize(d)? {
            Value::Null => return Ok(None),
            Value::Number(n) => {
                n.as_u64()
                    .and_then(|n| u32::try_from(n).ok())
                    .ok_or_else(|| {
                        D::Error::invalid_value(Unexpected::Other(&n.to_string()), &EXPECTED)
                    })?
            }
            Value::String(text) => text
                .trim()
                .parse::<u32>()
                .map_err(|_| D::Error::invalid_value(Unexpected::Str(&text), &EXPECTED))?,
            other => return Err(D::Error::invalid_type(unexpected(&other), &EXPECTED)),
        };
        Ok(Some(parsed))
    }

    /// `true` or `false`, or a string holding one; absent or null is `None`.
    pub(super) fn boolean<'de, D: Deserializer<'de>>(d: D) -> Result<Option<bool>, D::Error> {
        const EXPECTED: &str = "true or false, or a string holding one";
        match Value::deserialize(d)? {
            Value::Null => Ok(None),
            Value::Bool(b) => Ok(Some(b)),
            Value::String(text) => match text.trim() {
                "true" => Ok(Some(true)),
                "false" => Ok(Some(false)),
                _ => Err(D::Error::invalid_value(Unexpected::Str(&text), &EXPECTED)),
            },
            other => Err(D::Error::invalid_type(unexpected(&other), &EXPECTED)),
        }
    }

    /// Any JSON value; a string holding a JSON object or array becomes it.
    pub(super) fn any_json<'de, D: Deserializer<'de>>(d: D) -> Result<Value, D::Error> {
        Value::deserialize(d).map(structured)
    }

    /// [`any_json`], where absent or null is `None`.
    pub(super) fn any_json_option<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<Option<Value>, D::Error> {
        Ok(match Value::deserialize(d)? {
            Value::Null => None,
            value => Some(structured(value)),
        })
    }

    /// The object or array `value` holds as text, else `value` itself.
    pub(super) fn structured(value: Value) -> Value {
        if let Value::String(text) = &value
            && let Ok(parsed @ (Value::Object(_) | Value::Array(_))) =
                serde_json::from_str::<Value>(text)
        {
            return parsed;
        }
        value
    }

    fn unexpected(value: &Value) -> Unexpected<'_> {
        match value {
            Value::Bool(b) => Unexpected::Bool(*b),
            Value::Array(_) => Unexpected::Seq,
            Value::Object(_) => Unexpected::Map,
            _ => Unexpected::Other("a value"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn read<T: serde::de::DeserializeOwned>(args: Value) -> Result<T, String> {
        serde_json::from_value(args).map_err(|err| err.to_string())
    }

    #[test]
    fn numbers_given_as_text_are_numbers() {
        let p: ReadInbox = read(json!({"max_messages": "5", "wait_seconds": " 1.5 "})).unwrap();
        assert_eq!((p.max_messages, p.wait_seconds), (Some(5), Some(1.5)));
        let p: ReadInbox = read(json!({"max_messages": 5, "wait_seconds": 2})).unwrap();
        assert_eq!((p.max_messages, p.wait_seconds), (Some(5), Some(2.0)));
        let p: ReadInbox = read(json!({"max_messages": null})).unwrap();
        assert_eq!((p.max_messages, p.wait_seconds), (None, None));
        let p: SetState = read(json!({"key": "k", "value": 1, "ttl_seconds": "60"})).unwrap();
        assert_eq!(p.ttl_seconds, Some(60.0));
        let p: RequestTask =
            read(json!({"agent": "a", "task_type": "t", "timeout_seconds": "5"})).unwrap();
        assert_eq!(p.timeout_seconds, Some(5.0));
        let p: WatchTask =
            read(json!({"task_id": "t", "from_seq": "7", "wait_seconds": "2"})).unwrap();
        assert_eq!((p.from_seq, p.wait_seconds), (Some(7), Some(2.0)));
        let p: SubmitTask =
            read(json!({"task_type": "t", "stream": "true", "deadline_seconds": "30"})).unwrap();
        assert_eq!((p.stream, p.deadline_seconds), (Some(true), Some(30.0)));
        let p: SubmitTask = read(json!({"task_type": "t", "stream": false})).unwrap();
        assert_eq!(p.stream, Some(false));
        assert!(read::<SubmitTask>(json!({"task_type": "t", "stream": "yes"})).is_err());
    }

    #[test]
    fn text_that_is_no_number_is_refused() {
        let err = read::<ReadInbox>(json!({"wait_seconds": "soon"})).unwrap_err();
        assert_eq!(
            err,
            "invalid value: string \"soon\", expected a number, or a string holding one"
        );
        for bad in [
            json!("5.5"),
            json!("-1"),
            json!(-1),
            json!(1.5),
            json!(true),
        ] {
            assert!(
                read::<ReadInbox>(json!({"max_messages": bad})).is_err(),
                "{bad}"
            );
        }
    }

    #[test]
    fn objects_and_arrays_given_as_text_are_structured_other_text_stays_text() {
        let p: SetState = read(json!({"key": "k", "value": "{\"level\": 3}"})).unwrap();
        assert_eq!(p.value, json!({"level": 3}));
        let p: SendMessage = read(json!({"to": "b", "message": "[1, 2]"})).unwrap();
        assert_eq!(p.message, json!([1, 2]));
        for text in ["hello", "5", "true", "null", "\"quoted\"", "{not json"] {
            let p: Broadcast = read(json!({"topic": "t", "message": text})).unwrap();
            assert_eq!(p.message, json!(text));
        }
        let p: SendMessage = read(json!({"to": "b", "message": {"n": 2}})).unwrap();
        assert_eq!(p.message, json!({"n": 2}));
        let p: CompleteTask = read(json!({"task_id": "t", "result": "{\"a\": 1}"})).unwrap();
        assert_eq!(p.result, Some(json!({"a": 1})));
        let p: CompleteTask = read(json!({"task_id": "t", "error": "no"})).unwrap();
        assert_eq!(p.result, None);
        let p: AnswerTask = read(json!({"task_id": "t", "answer": "{\"go\": true}"})).unwrap();
        assert_eq!(p.answer, json!({"go": true}));
        let p: AnswerTask = read(json!({"task_id": "t", "answer": "yes"})).unwrap();
        assert_eq!(p.answer, json!("yes"));
    }

    #[test]
    fn the_schemas_still_say_number_integer_and_any_value() {
        let schema = serde_json::to_value(rmcp::schemars::schema_for!(ReadInbox)).unwrap();
        assert_eq!(
            schema["properties"]["max_messages"]["type"],
            json!(["integer", "null"])
        );
        assert_eq!(
            schema["properties"]["wait_seconds"]["type"],
            json!(["number", "null"])
        );
        let schema = serde_json::to_value(rmcp::schemars::schema_for!(SetState)).unwrap();
        assert!(
            schema["properties"]["value"].get("type").is_none(),
            "{schema}"
        );
        let description = schema["properties"]["value"]["description"]
            .as_str()
            .unwrap()
            .replace('\n', " ");
        assert!(
            description.ends_with(
                "Text holding a JSON object or array is stored as that object or array."
            ),
            "{description}"
        );
    }
}
