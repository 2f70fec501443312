//! Errors a tool reports to the model: one sentence saying what is wrong and
//! what to do. They come back as tool results with `isError`, never as
//! protocol errors, so the model reads them and the server keeps serving.

use rmcp::model::{CallToolResult, ContentBlock};
use serde_json::Value;

/// The error a tool failed with, if any, as a cause to keep.
type Cause = Box<dyn std::error::Error + Send + Sync>;

/// A tool call that could not be carried out, and why.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct ToolError {
    kind: ToolErrorKind,
    message: String,
    #[source]
    source: Option<Cause>,
}

/// Why a tool call failed, as a kind to match.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ToolErrorKind {
    /// An argument is missing, malformed or out of range.
    InvalidInput,
    /// What the call names is not there: no such agent running, no such task,
    /// no such claim.
    NotFound,
    /// The bus (NATS, JetStream, the state store) refused or failed the operation.
    Bus,
    /// The client cancelled the call.
    Cancelled,
    /// The bridge itself failed.
    Internal,
}

impl ToolError {
    /// An error of `kind` with `message` and no cause.
    pub fn new(kind: ToolErrorKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into(),
            source: None,
        }
    }

    /// An argument is wrong: `message` says which and how to fix it.
    pub fn invalid_input(message: impl Into<String>) -> Self {
        Self::new(ToolErrorKind::InvalidInput, message)
    }

    /// An error of `kind` caused by `err`, whose sentence is the message.
    pub fn from_error(
        kind: ToolErrorKind,
        err: impl std::error::Error + Send + Sync + 'static,
    ) -> Self {
        Self {
            kind,
            message: err.to_string(),
            source: Some(Box::new(err)),
        }
    }

    /// An error of `kind` with its own `message`, caused by `err`.
    pub fn with_source(
        kind: ToolErrorKind,
        message: impl Into<String>,
        err: impl std::error::Error + Send + Sync + 'static,
    ) -> Self {
        Self {
            kind,
            message: message.into(),
            source: Some(Box::new(err)),
        }
    }

    /// Why the call failed.
    pub fn kind(&self) -> ToolErrorKind {
        self.kind
    }
}

/// The tool result of `outcome`: its JSON as text and as structured
/// content, or the error's sentence with `isError`.
pub(crate) fn tool_result(outcome: Result<Value, ToolError>) -> CallToolResult {
    match outcome {
        Ok(value) => {
            let text = serde_json::to_string_pretty(&value).unwrap_or_else(|_| value.to_string());
            let mut result = CallToolResult::success(vec![ContentBlock::text(text)]);
            if value.is_object() {
                result.structured_content = Some(value);
            }
            result
        }
        Err(err) => {
            tracing::debug!(kind = ?err.kind(), error = %err, "a tool call failed");
            CallToolResult::error(vec![ContentBlock::text(err.to_string())])
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::error::Error;

    #[test]
    fn the_cause_is_kept_and_the_message_is_the_sentence() {
        let cause = std::io::Error::other("connection reset");
        let err = ToolError::with_source(
            ToolErrorKind::Bus,
            "cannot list the streams: connection reset",
            cause,
        );
        assert_eq!(err.to_string(), "cannot list the streams: connection reset");
        assert_eq!(err.kind(), ToolErrorKind::Bus);
        assert_eq!(err.source().unwrap().to_string(), "connection reset");
        let plain = ToolError::invalid_input("pass result or error");
        assert!(plain.source().is_none());
        assert_eq!(plain.kind(), ToolErrorKind::InvalidInput);
    }
}
