//! An agent's accepted task types, with compiled payload schemas.

use crate::agent::{TaskError, TaskTypeSpec};
use crate::protocol::TaskRequest;
use std::collections::HashMap;
use std::sync::Arc;

#[cfg(feature = "json-schema")]
type Validator = jsonschema::Validator;
/// Without the `json-schema` feature no schema compiles, so none is ever held.
#[cfg(not(feature = "json-schema"))]
type Validator = std::convert::Infallible;

/// The task types of one agent, ready to check requests against.
#[derive(Debug)]
pub(crate) struct TaskTypes {
    /// By name: the name is shared with every task of the type.
    validators: HashMap<Arc<str>, Option<Validator>, foldhash::fast::RandomState>,
    accepted: String,
}

/// A payload schema that does not compile.
#[derive(Debug, Clone, thiserror::Error)]
#[error("the JSON Schema of task type {task_type:?} is invalid: {reason}")]
pub struct InvalidSchema {
    /// The task type.
    pub task_type: String,
    /// Why (the schema compiler's message).
    pub reason: String,
}

impl TaskTypes {
    /// Compiles every schema.
    pub(crate) fn compile(specs: &[TaskTypeSpec]) -> Result<Self, InvalidSchema> {
        let mut validators = HashMap::default();
        for spec in specs {
            let validator = spec
                .schema()
                .map(|schema| compile_schema(spec.name().as_str(), schema))
                .transpose()?;
            validators.insert(Arc::from(spec.name().as_str()), validator);
        }
        let mut names: Vec<&str> = validators.keys().map(|name| &**name).collect();
        names.sort_unstable();
        Ok(Self {
            accepted: names.join(", "),
            validators,
        })
    }

    /// Whether `request` names an accepted type and its payload fits the
    /// schema; the type's name when it does.
    pub(crate) fn check(&self, agent: &str, request: &TaskRequest) -> Result<Arc<str>, TaskError> {
        let Some((name, validator)) = self.validators.get_key_value(request.task_type.as_str())
        else {
            return Err(TaskError::rejected(format!(
                "agent {agent} does not accept task_type {:?}; it accepts: {}",
                request.task_type, self.accepted
            )));
        };
        if let Some(validator) = validator {
            validate(validator, request)?;
        }
        Ok(name.clone())
    }
}

#[cfg(feature = "json-schema")]
fn compile_schema(task_type: &str, schema: &serde_json::Value) -> Result<Validator, InvalidSchema> {
    jsonschema::validator_for(schema).map_err(|err| InvalidSchema {
        task_type: task_type.to_owned(),
        // The compiler's error borrows the schema: its text is what remains.
        reason: err.to_string(),
    })
}

#[cfg(not(feature = "json-schema"))]
fn compile_schema(
    task_type: &str,
    _schema: &serde_json::Value,
) -> Result<Validator, InvalidSchema> {
    Err(InvalidSchema {
        task_type: task_type.to_owned(),
        reason: "this build of agentbus checks no schemas (the `json-schema` feature is off)"
            .to_owned(),
    })
}

#[cfg(feature = "json-schema")]
fn validate(validator: &Validator, request: &TaskRequest) -> Result<(), TaskError> {
    // A value made for the check only: a waiting task keeps its payload as
    // text, which costs its own size rather than many times it.
    let payload = request
        .payload
        .parse::<serde_json::Value>()
        .unwrap_or(serde_json::Value::Null);
    let Err(err) = validator.validate(&payload) else {
        return Ok(());
    };
    let path = err.instance_path().to_string();
    let path = if path.is_empty() {
        "/".to_owned()
    } else {
        path
    };
    Err(TaskError::rejected(format!(
        "the payload of {} does not match its schema at {path}: {err}",
        request.task_type
    )))
}

#[cfg(not(feature = "json-schema"))]
fn validate(validator: &Validator, _request: &TaskRequest) -> Result<(), TaskError> {
    match *validator {}
}

#[cfg(all(test, feature = "json-schema"))]
mod tests {
    use super::*;
    use serde_json::json;

    fn types() -> TaskTypes {
        TaskTypes::compile(&[
            TaskTypeSpec::new("generate_text").unwrap().with_schema(json!({
                "type": "object",
                "required": ["prompt"],
                "properties": {"prompt": {"type": "string"}, "max_tokens": {"type": "integer", "minimum": 1}}
            })),
            TaskTypeSpec::new("ping").unwrap(),
        ])
        .unwrap()
    }

    #[test]
    fn unknown_type_lists_the_accepted_ones() {
        let request = TaskRequest::new("dance", json!({}));
        let err = types().check("llm_agent", &request).unwrap_err();
        assert_eq!(
            err.message(),
            "agent llm_agent does not accept task_type \"dance\"; it accepts: generate_text, ping"
        );
    }

    #[test]
    fn schema_failure_names_the_json_path() {
        let request = TaskRequest::new(
            "generate_text",
            json!({"prompt": "x", "max_tokens": "many"}),
        );
        let err = types().check("llm_agent", &request).unwrap_err();
        assert!(
            err.message().contains("at /max_tokens:"),
            "{}",
            err.message()
        );
        let missing = TaskRequest::new("generate_text", json!({}));
        let err = types().check("llm_agent", &missing).unwrap_err();
        assert!(
            err.message().contains("at /:") && err.message().contains("prompt"),
            "{}",
            err.message()
        );
        assert!(
            types()
                .check("a", &TaskRequest::new("ping", json!({"any": 1})))
                .is_ok()
        );
    }

    #[test]
    fn invalid_schema_is_refused_up_front() {
        let bad = TaskTypeSpec::new("x")
            .unwrap()
            .with_schema(json!({"type": 12}));
        assert!(TaskTypes::compile(&[bad]).is_err());
    }
}
