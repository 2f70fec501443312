//! The enhancement agent: consumes `enhancement.feedback` events and reports
//! what it has seen, and takes the broadcasts on topic `feedback`.

use crate::message_log::MessageLog;
use agentbus::{
    Agent, AgentMessage, AgentOptions, Bus, TaskContext, TaskError, TaskRequest, TaskTypeSpec,
};
use agentbus::{SubscribeError, Subscription};
use futures::StreamExt;
use serde::Serialize;
use serde_json::Value;
use std::sync::Arc;
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// The agent's name on the bus; also the queue group its replicas share.
pub const ENHANCEMENT_AGENT: &str = "enhancement_agent";
/// Its task type: report the feedback seen so far.
pub const FEEDBACK_SUMMARY: &str = "feedback_summary";
/// The event carrying feedback (any JSON value).
pub const ENHANCEMENT_FEEDBACK: &str = "enhancement.feedback";
/// The broadcast topic it takes (`broadcast.feedback`): feedback for every
/// enhancement agent, stored until each has read it.
pub const FEEDBACK_TOPIC: &str = "feedback";

/// What the agent has seen; the result of a `feedback_summary` task.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct FeedbackSummary {
    /// Feedback events decoded as JSON.
    pub feedback_seen: u64,
    /// The last of them.
    pub last_feedback: Option<Value>,
    /// Events that were not JSON (not counted in `feedback_seen`).
    pub undecodable: u64,
}

/// Consumes `enhancement.feedback`; as an agent (`enhancement_agent`), task
/// type `feedback_summary` answers with its [`FeedbackSummary`].
///
/// Clones share their state, so one clone can be served by a [`Runtime`]
/// while another consumes events. Served with [`EnhancementAgent::options`],
/// it also takes the broadcasts on [`FEEDBACK_TOPIC`]
/// (`agentbus broadcast feedback ...`) into its [`MessageLog`].
///
/// ```no_run
/// # async fn example(bus: agentbus::Bus) -> Result<(), Box<dyn std::error::Error>> {
/// use agentbus::{AgentOptions, Runtime};
/// use agentbus_demo::EnhancementAgent;
/// let (agent, consumer) = EnhancementAgent::start(&bus, Some("enhancement_agent")).await?;
/// let mut runtime = Runtime::new(bus);
/// runtime.add(agent, AgentOptions::default()).await?;
/// # Ok(()) }
/// ```
///
/// [`Runtime`]: agentbus::Runtime
#[derive(Debug, Clone, Default)]
pub struct EnhancementAgent {
    state: Arc<watch::Sender<FeedbackSummary>>,
    messages: MessageLog,
}

impl EnhancementAgent {
    /// An agent that has seen nothing yet, whose message log only counts.
    pub fn new() -> Self {
        Self::default()
    }

    /// The same agent (its feedback state still shared with its clones),
    /// logging the messages it takes into `messages`.
    #[must_use]
    pub fn with_message_log(mut self, messages: MessageLog) -> Self {
        self.messages = messages;
        self
    }

    /// The messages it has taken.
    pub fn message_log(&self) -> &MessageLog {
        &self.messages
    }

    /// How the demo serves it: taking the broadcasts on [`FEEDBACK_TOPIC`],
    /// announcements, and its own inbox and direct channel.
    pub fn options() -> AgentOptions {
        AgentOptions {
            messages: true,
            broadcast_topics: vec![FEEDBACK_TOPIC.to_owned()],
            ..AgentOptions::default()
        }
    }

    /// Subscribes to `enhancement.feedback` (in `queue_group`, if given, so
    /// replicas share the events) and consumes it in a spawned task, which
    /// ends when the subscription does. Events published after this returns
    /// are received.
    pub async fn start(
        bus: &Bus,
        queue_group: Option<&str>,
    ) -> Result<(Self, JoinHandle<()>), SubscribeError> {
        let subscription = bus.subscribe(ENHANCEMENT_FEEDBACK, queue_group).await?;
        let agent = Self::new();
        let consumer = tokio::spawn(agent.clone().consume(subscription));
        Ok((agent, consumer))
    }

    /// Records every event of `subscription` until it ends.
    pub async fn consume(self, mut subscription: Subscription) {
        while let Some(event) = subscription.next().await {
            if let Err(err) = self.record(&event.payload) {
                tracing::warn!(%err, subject = %event.subject, "feedback is not JSON");
            }
        }
    }

    /// Records one feedback event; returns it decoded, or why it is not JSON.
    pub fn record(&self, payload: &[u8]) -> Result<Value, serde_json::Error> {
        match serde_json::from_slice::<Value>(payload) {
            Ok(feedback) => {
                self.state.send_modify(|state| {
                    state.feedback_seen += 1;
                    state.last_feedback = Some(feedback.clone());
                });
                Ok(feedback)
            }
            Err(err) => {
                self.state.send_modify(|state| state.undecodable += 1);
                Err(err)
            }
        }
    }

    /// What has been seen so far.
    pub fn summary(&self) -> FeedbackSummary {
        self.state.borrow().clone()
    }

    /// Waits until at least `count` feedback events have been recorded.
    pub async fn wait_for(&self, count: u64) -> FeedbackSummary {
        let mut changes = self.state.subscribe();
        match changes.wait_for(|state| state.feedback_seen >= count).await {
            Ok(state) => state.clone(),
            // Unreachable while `self` holds the sender; answer with what is known.
            Err(_) => self.summary(),
        }
    }
}

impl Agent for EnhancementAgent {
    fn name(&self) -> &str {
        ENHANCEMENT_AGENT
    }

    fn task_types(&self) -> Vec<TaskTypeSpec> {
        TaskTypeSpec::new(FEEDBACK_SUMMARY).into_iter().collect()
    }

    async fn handle(&self, _task: TaskRequest, _ctx: TaskContext) -> Result<Value, TaskError> {
        serde_json::to_value(self.summary()).map_err(|err| {
            TaskError::permanent(format!("cannot encode the feedback summary: {err}"))
        })
    }

    async fn handle_message(
        &self,
        message: AgentMessage,
        _ctx: TaskContext,
    ) -> Result<(), TaskError> {
        self.messages.record(ENHANCEMENT_AGENT, message);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[tokio::test]
    async fn records_json_and_counts_the_rest() {
        let agent = EnhancementAgent::new();
        let shared = agent.clone();
        assert!(agent.record(br#"{"rating": 5}"#).is_ok());
        assert!(agent.record(b"not json").is_err());
        assert!(agent.record(br#"{"rating": 2}"#).is_ok());
        assert_eq!(
            shared.wait_for(2).await,
            FeedbackSummary {
                feedback_seen: 2,
                last_feedback: Some(json!({"rating": 2})),
                undecodable: 1,
            }
        );
    }
}
