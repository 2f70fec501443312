//! The chat manager: announces new chat messages on `chat.message.new`, and
//! reads its durable inbox.

use crate::message_log::MessageLog;
use agentbus::PublishError;
use agentbus::{
    Agent, AgentMessage, AgentOptions, Bus, TaskContext, TaskError, TaskRequest, TaskTypeSpec,
};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

/// The agent's name on the bus.
pub const CHAT_MANAGER: &str = "chat_manager";
/// Its task type: post a message to a session.
pub const POST_MESSAGE: &str = "post_message";
/// The event announcing a new chat message.
pub const CHAT_MESSAGE_NEW: &str = "chat.message.new";

/// The body of a `chat.message.new` event: these three fields and no others.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChatMessageEvent {
    /// The chat session.
    pub session_id: String,
    /// The new message's id (a UUID).
    pub message_id: String,
    /// Its text.
    pub content: String,
}

/// The JSON Schema of a `post_message` payload.
pub fn post_message_schema() -> Value {
    json!({
        "type": "object",
        "required": ["session_id", "content"],
        "properties": {
            "session_id": {"type": "string", "minLength": 1},
            "content": {"type": "string"}
        }
    })
}

/// Announces chat messages; as an agent (`chat_manager`), task type
/// `post_message` with payload `{"session_id", "content"}` announces one and
/// returns `{"session_id", "message_id"}`. Served with
/// [`ChatManager::options`], it also takes the messages of its durable inbox
/// (`agentbus send chat_manager ...`) into its [`MessageLog`].
///
/// ```no_run
/// # async fn example(bus: agentbus::Bus) -> Result<(), agentbus::PublishError> {
/// use agentbus_demo::ChatManager;
/// let message_id = ChatManager::new().announce(&bus, "session-1", "Hello!").await?;
/// bus.flush().await?; // a short-lived process must flush before exiting
/// # Ok(()) }
/// ```
#[derive(Debug, Clone, Default)]
pub struct ChatManager {
    messages: MessageLog,
}

#[derive(Debug, Deserialize)]
struct PostMessage {
    session_id: String,
    content: String,
}

impl ChatManager {
    /// A chat manager whose message log only counts.
    pub fn new() -> Self {
        Self::default()
    }

    /// The same chat manager, logging the messages it takes into `messages`.
    #[must_use]
    pub fn with_message_log(mut self, messages: MessageLog) -> Self {
        self.messages = messages;
        self
    }

    /// The messages it has taken.
    pub fn message_log(&self) -> &MessageLog {
        &self.messages
    }

    /// How the demo serves it: with its durable inbox (`agent.chat_manager.inbox`)
    /// and direct channel, and announcements.
    pub fn options() -> AgentOptions {
        AgentOptions {
            messages: true,
            ..AgentOptions::default()
        }
    }

    /// Publishes `chat.message.new` with a fresh message id, and returns the id.
    /// Like every publish, it is only queued: flush before a process exits.
    pub async fn announce(
        &self,
        bus: &Bus,
        session_id: &str,
        content: &str,
    ) -> Result<String, PublishError> {
        let event = ChatMessageEvent {
            session_id: session_id.to_owned(),
            message_id: uuid::Uuid::new_v4().to_string(),
            content: content.to_owned(),
        };
        bus.publish(CHAT_MESSAGE_NEW, &event).await?;
        Ok(event.message_id)
    }
}

impl Agent for ChatManager {
    fn name(&self) -> &str {
        CHAT_MANAGER
    }

    fn task_types(&self) -> Vec<TaskTypeSpec> {
        TaskTypeSpec::new(POST_MESSAGE)
            .map(|spec| spec.with_schema(post_message_schema()))
            .into_iter()
            .collect()
    }

    async fn handle(&self, task: TaskRequest, ctx: TaskContext) -> Result<Value, TaskError> {
        let input: PostMessage = task.payload_as()?;
        let message_id = self
            .announce(ctx.bus(), &input.session_id, &input.content)
            .await
            .map_err(|err| TaskError::failed(format!("cannot announce the message: {err}")))?;
        Ok(json!({"session_id": input.session_id, "message_id": message_id}))
    }

    async fn handle_message(
        &self,
        message: AgentMessage,
        _ctx: TaskContext,
    ) -> Result<(), TaskError> {
        self.messages.record(CHAT_MANAGER, message);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_has_exactly_the_three_fields() {
        let event = ChatMessageEvent {
            session_id: "s".into(),
            message_id: "m".into(),
            content: "c".into(),
        };
        assert_eq!(
            serde_json::to_value(&event).unwrap(),
            json!({"session_id": "s", "message_id": "m", "content": "c"})
        );
        assert_eq!(ChatManager::new().task_types().len(), 1);
    }
}
