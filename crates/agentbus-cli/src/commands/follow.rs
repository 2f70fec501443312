//! Printing a task's events as they come: `request --stream`,
//! `submit --wait --stream` and `task watch`.

use crate::output::{outln, spinner_for};
use agentbus::TaskResponse;
use agentbus::task_log::{EventType, LogEvent, Watch, Watched};
use futures::StreamExt;
use serde_json::Value;
use std::io::Write as _;

/// How events are printed: text for a person, or one JSON object per line.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Printer {
    pub(crate) json: bool,
    /// Whether a partial was printed without its line ended yet.
    open_line: bool,
}

impl Printer {
    pub(crate) fn new(json: bool) -> Self {
        Self {
            json,
            open_line: false,
        }
    }

    /// Prints the events of `watch` up to its final state; returns it.
    /// Between events, a spinner on a terminal says what is awaited (not
    /// while a partial's line is open, and never in JSON mode).
    pub(crate) async fn follow(&mut self, watch: &mut Watch) -> anyhow::Result<Option<LogEvent>> {
        let mut first = true;
        loop {
            let waiting = (!self.open_line).then(|| {
                spinner_for(
                    self.json,
                    if first {
                        "waiting for the task's events"
                    } else {
                        "waiting for the task's next event"
                    },
                )
            });
            let item = watch.next().await;
            if let Some(waiting) = waiting {
                waiting.finish_and_clear();
            }
            first = false;
            let Some(item) = item else {
                return Ok(None);
            };
            match item? {
                Watched::Gone { from, until } => self.gone(from, until)?,
                Watched::Event(event) => {
                    self.event(&event)?;
                    if event.kind.is_final() {
                        return Ok(Some(event));
                    }
                }
            }
        }
    }

    fn gone(&mut self, from: u64, until: u64) -> anyhow::Result<()> {
        self.end_line()?;
        if self.json {
            let gone = serde_json::json!({"type": "gone", "from": from, "until": until});
            outln!("{gone}")?;
        } else {
            eprintln!(
                "note: events {from} to {} of this task are no longer stored (the log's limits or age removed them)",
                until - 1
            );
        }
        Ok(())
    }

    /// Prints one event.
    pub(crate) fn event(&mut self, event: &LogEvent) -> anyhow::Result<()> {
        if self.json {
            outln!("{}", serde_json::to_string(event)?)?;
            return Ok(());
        }
        match event.kind {
            EventType::Partial => {
                let mut out = std::io::stdout().lock();
                match &event.data {
                    Value::String(text) => write!(out, "{text}")?,
                    Value::Object(chunk) if chunk.get("text").is_some_and(Value::is_string) => {
                        write!(out, "{}", chunk["text"].as_str().unwrap_or_default())?;
                    }
                    other => write!(out, "{other}")?,
                }
                out.flush()?;
                self.open_line = true;
            }
            EventType::Progress => {
                self.end_line()?;
                let done = event.data.get("progress").map(Value::to_string);
                let message = event.data.get("message").and_then(Value::as_str);
                eprintln!(
                    "[progress] {}",
                    [done.as_deref(), message]
                        .into_iter()
                        .flatten()
                        .collect::<Vec<_>>()
                        .join(" ")
                );
            }
            EventType::InputRequired => {
                self.end_line()?;
                let question = event.data.get("question").unwrap_or(&Value::Null);
                eprintln!(
                    "[input required] {question}\n  answer with: agentbus task answer {} '<json>'",
                    event.task_id
                );
            }
            EventType::InputReceived => {
                let answer = event.data.get("answer").unwrap_or(&Value::Null);
                eprintln!("[answered] {answer}");
            }
            EventType::Started => {
                let agent = event.data.get("agent").and_then(Value::as_str);
                eprintln!(
                    "[started] by {} (instance {})",
                    agent.unwrap_or("?"),
                    event.instance
                );
            }
            EventType::Accepted => {}
            _ => self.end_line()?,
        }
        Ok(())
    }

    /// Prints the final response: pretty for a person, one line with `--json`.
    pub(crate) fn response(&mut self, response: &TaskResponse) -> anyhow::Result<()> {
        self.end_line()?;
        if self.json {
            outln!("{}", serde_json::to_string(response)?)?;
        } else {
            outln!("{}", serde_json::to_string_pretty(response)?)?;
        }
        Ok(())
    }

    fn end_line(&mut self) -> anyhow::Result<()> {
        if self.open_line {
            outln!()?;
            self.open_line = false;
        }
        Ok(())
    }
}
