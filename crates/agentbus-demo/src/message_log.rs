//! What a demo agent does with the durable messages it takes (its inbox, its
//! broadcast topics, announcements): counts them, and hands each to a
//! listener as an [`Arrival`], so that the demo can print it.

use crate::text::{short_id, shorten};
use agentbus::AgentMessage;
use std::fmt;
use std::sync::Arc;
use tokio::sync::{mpsc, watch};

/// A durable message as a demo agent received it.
#[derive(Debug, Clone)]
pub struct Arrival {
    /// The agent that received it.
    pub agent: &'static str,
    /// The message.
    pub message: AgentMessage,
}

/// The line the demo prints:
/// `<subject> -> <agent>: message <id>[ from <sender>]: <body as JSON>`.
impl fmt::Display for Arrival {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let message = &self.message;
        let id = message.message_id.as_deref().map_or("(no id)", short_id);
        write!(f, "{} -> {}: message {id}", message.subject, self.agent)?;
        if let Some(from) = &message.from {
            write!(f, " from {from}")?;
        }
        write!(f, ": {}", shorten(&message.body.to_string()))
    }
}

/// Counts the durable messages an agent received and hands each to the
/// listener, if there is one. Clones share the count and the listener.
#[derive(Debug, Clone, Default)]
pub struct MessageLog {
    received: Arc<watch::Sender<u64>>,
    listener: Option<mpsc::UnboundedSender<Arrival>>,
}

impl MessageLog {
    /// A log that only counts.
    pub fn new() -> Self {
        Self::default()
    }

    /// A log that also sends every arrival to `listener` (nothing is lost
    /// while the receiver lives; after that, arrivals are only counted).
    pub fn with_listener(listener: mpsc::UnboundedSender<Arrival>) -> Self {
        Self {
            listener: Some(listener),
            ..Self::default()
        }
    }

    /// How many messages have been received.
    pub fn received(&self) -> u64 {
        *self.received.borrow()
    }

    /// Waits until at least `count` messages have been received; returns how many.
    pub async fn wait_for(&self, count: u64) -> u64 {
        let mut changes = self.received.subscribe();
        match changes.wait_for(|received| *received >= count).await {
            Ok(received) => *received,
            // Unreachable while `self` holds the sender; answer with what is known.
            Err(_) => self.received(),
        }
    }

    /// Records that `agent` received `message`.
    pub(crate) fn record(&self, agent: &'static str, message: AgentMessage) {
        self.received.send_modify(|received| *received += 1);
        if let Some(listener) = &self.listener {
            // A closed receiver means nobody prints arrivals any more: count only.
            let _ = listener.send(Arrival { agent, message });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use agentbus::MessageChannel;
    use serde_json::json;

    fn message(subject: &str, from: Option<&str>) -> AgentMessage {
        AgentMessage {
            channel: MessageChannel::Inbox,
            subject: subject.to_owned(),
            message_id: Some("0123456789abcdef".to_owned()),
            from: from.map(str::to_owned),
            sender: agentbus::Sender::Unverified,
            body: json!({"text": "hi"}),
            sequence: 1,
            attempt: 1,
        }
    }

    #[tokio::test]
    async fn counts_and_hands_on_every_arrival() {
        let (listener, mut arrivals) = mpsc::unbounded_channel();
        let log = MessageLog::with_listener(listener);
        let shared = log.clone();
        log.record("chat_manager", message("agent.chat_manager.inbox", None));
        log.record(
            "chat_manager",
            message("agent.chat_manager.inbox", Some("ana")),
        );
        assert_eq!(shared.wait_for(2).await, 2);
        assert_eq!(
            arrivals.recv().await.unwrap().to_string(),
            r#"agent.chat_manager.inbox -> chat_manager: message 01234567: {"text":"hi"}"#
        );
        assert_eq!(
            arrivals.recv().await.unwrap().to_string(),
            r#"agent.chat_manager.inbox -> chat_manager: message 01234567 from ana: {"text":"hi"}"#
        );
        drop(arrivals);
        log.record("chat_manager", message("agent.chat_manager.inbox", None));
        assert_eq!(shared.received(), 3);
    }
}
