//! The text of a `generate_text` task as it is made: gathered for the final
//! result and, when the caller follows the task, reported piece by piece.

use agentbus::TaskContext;
use serde_json::json;

/// Where the pieces of a task's text go.
///
/// Each piece becomes a `partial` event `{"text": piece}` only when the
/// request asked to be followed (`"stream": true`): a task nobody follows
/// keeps request/reply's cost, with no event log.
#[derive(Debug)]
pub(crate) struct TextOutput<'a> {
    ctx: &'a TaskContext,
    /// Whether pieces are reported as partial results.
    report: bool,
    text: String,
}

impl<'a> TextOutput<'a> {
    /// Gathers the text of `ctx`'s task; reports its pieces when `report`.
    pub(crate) fn new(ctx: &'a TaskContext, report: bool) -> Self {
        Self {
            ctx,
            report,
            text: String::new(),
        }
    }

    /// Adds `piece` to the text, and reports it.
    ///
    /// Reporting is awaited to its end, never raced against a cancel: the
    /// log numbers its events as it stores them. When the log does not take
    /// the piece, the text still grows and reporting stops (the final
    /// result carries it all).
    pub(crate) async fn push(&mut self, piece: &str) {
        self.text.push_str(piece);
        if !self.report {
            return;
        }
        if let Err(err) = self.ctx.partial(&json!({ "text": piece })).await {
            tracing::warn!(%err, task_id = self.ctx.task_id(), "cannot report a partial result; the rest of the text comes with the final result only");
            self.report = false;
        }
    }

    /// Whether the task was cancelled or ran out of time.
    pub(crate) fn stopped(&self) -> bool {
        self.ctx.stop_reason().is_some()
    }

    /// Resolves when the task is cancelled or runs out of time.
    pub(crate) async fn until_stopped(&self) {
        self.ctx.cancelled().await;
    }

    /// The text so far.
    pub(crate) fn text(&self) -> &str {
        &self.text
    }
}
