//! Errors a tool reports to the model: one sentence saying what is wrong and
//! what to do. They come back as tool results with `isError`, never as
//! protocol errors, so the model reads them and the server keeps serving.

use rmcp::model::{CallToolResult, ContentBlock};
use serde_json::Value;

/// A tool call that could not be carried out, and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ToolError(String);

impl ToolError {
    /// An error with `message`.
    pub fn new(message: impl Into<String>) -> Self {
        Self(message.into())
    }

    /// An error whose message is `err`'s.
    pub fn from_display(err: impl std::fmt::Display) -> Self {
        Self(err.to_string())
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
        Err(err) => CallToolResult::error(vec![ContentBlock::text(err.to_string())]),
    }
}
