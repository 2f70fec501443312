//! One round of the demo: the orchestrator asks `llm_agent` for text, has
//! `chat_manager` post it, sends feedback on it, and asks
//! `enhancement_agent` what it has seen, reporting one line per step.

use crate::chat_manager::{CHAT_MANAGER, CHAT_MESSAGE_NEW, ChatMessageEvent, POST_MESSAGE};
use crate::enhancement_agent::{
    ENHANCEMENT_AGENT, ENHANCEMENT_FEEDBACK, EnhancementAgent, FEEDBACK_SUMMARY,
};
use crate::orchestrator::send_generate_text;
use crate::run::DEMO_SESSION;
use crate::text::{short_id, shorten};
use agentbus::Subscription;
use agentbus::{Bus, Priority, SendTaskError, TaskResponse};
use futures::StreamExt;
use serde_json::{Value, json};
use std::time::Duration;

/// Prompts the demo cycles through; each is longer than the demo's
/// `max_tokens`, so echo mode visibly truncates.
const PROMPTS: [&str; 3] = [
    "Write a short story about an AI agent that learns to share its work.",
    "Explain in one paragraph why queue groups spread tasks across replicas.",
    "Suggest three names for a messaging bus that agents use to talk.",
];

/// How long a step waits for an event it caused before moving on.
const EVENT_WAIT: Duration = Duration::from_secs(2);

/// The orchestrator's side of the demo, kept between rounds.
pub(crate) struct Orchestrator {
    pub(crate) bus: Bus,
    /// `chat.message.new`, to show what `chat_manager` announced.
    pub(crate) chat: Subscription,
    /// The served enhancement agent, to wait until it has seen the feedback.
    pub(crate) feedback: EnhancementAgent,
    pub(crate) feedback_sent: u64,
    pub(crate) max_tokens: u64,
}

impl Orchestrator {
    /// Runs round number `round` (from 0), reporting each step.
    pub(crate) async fn round(&mut self, round: usize, report: &impl Fn(&str)) {
        let prompt = PROMPTS[round % PROMPTS.len()];
        let text = self.generate_text(prompt, report).await;
        let message_id = self
            .post_message(text.as_deref().unwrap_or(prompt), report)
            .await;
        self.send_feedback(round, message_id.as_deref(), report)
            .await;
        self.feedback_summary(report).await;
    }

    /// Step 1: orchestrator -> llm_agent; returns the generated text.
    async fn generate_text(&self, prompt: &str, report: &impl Fn(&str)) -> Option<String> {
        let step = "orchestrator -> llm_agent generate_text";
        let response = send_generate_text(&self.bus, prompt, Some(self.max_tokens)).await;
        let result = completed(step, response, report)?;
        let text = result["text"].as_str().unwrap_or_default().to_owned();
        let mode = result["mode"].as_str().unwrap_or("?");
        report(&format!("{step}: completed ({mode}) {:?}", shorten(&text)));
        Some(text)
    }

    /// Step 2: orchestrator -> chat_manager, then the event it announced.
    async fn post_message(&mut self, content: &str, report: &impl Fn(&str)) -> Option<String> {
        let step = "orchestrator -> chat_manager post_message";
        let response = self
            .bus
            .publish_task(
                CHAT_MANAGER,
                POST_MESSAGE,
                json!({"session_id": DEMO_SESSION, "content": content}),
                Priority::Normal,
            )
            .await;
        let result = completed(step, response, report)?;
        let message_id = result["message_id"].as_str().unwrap_or_default().to_owned();
        report(&format!(
            "{step}: completed (message {})",
            short_id(&message_id)
        ));
        let seen = tokio::time::timeout(EVENT_WAIT, async {
            while let Some(event) = self.chat.next().await {
                match event.json::<ChatMessageEvent>() {
                    Ok(chat) => {
                        report(&format!(
                            "{CHAT_MESSAGE_NEW}: session {}, message {}: {:?}",
                            chat.session_id,
                            short_id(&chat.message_id),
                            shorten(&chat.content)
                        ));
                        if chat.message_id == message_id {
                            return;
                        }
                    }
                    Err(err) => report(&format!("{CHAT_MESSAGE_NEW}: not a chat message ({err})")),
                }
            }
        })
        .await;
        if seen.is_err() {
            report(&format!(
                "{CHAT_MESSAGE_NEW}: not seen within {EVENT_WAIT:?}"
            ));
        }
        Some(message_id)
    }

    /// Step 3: a feedback event for the message.
    async fn send_feedback(
        &mut self,
        round: usize,
        message_id: Option<&str>,
        report: &impl Fn(&str),
    ) {
        let rating = 1 + round % 5;
        let feedback = json!({
            "session_id": DEMO_SESSION,
            "message_id": message_id,
            "rating": rating,
            "comment": "feedback from the demo",
        });
        match self.bus.publish(ENHANCEMENT_FEEDBACK, &feedback).await {
            Ok(()) => {
                self.feedback_sent += 1;
                report(&format!(
                    "orchestrator -> {ENHANCEMENT_FEEDBACK}: rating {rating} for message {}",
                    message_id.map(short_id).unwrap_or("(none)")
                ));
            }
            Err(err) => report(&format!("orchestrator -> {ENHANCEMENT_FEEDBACK}: {err}")),
        }
    }

    /// Step 4: orchestrator -> enhancement_agent, once it has seen the feedback.
    async fn feedback_summary(&self, report: &impl Fn(&str)) {
        // A replica in another process may take some events (queue group): do not wait forever.
        let _ = tokio::time::timeout(EVENT_WAIT, self.feedback.wait_for(self.feedback_sent)).await;
        let step = "orchestrator -> enhancement_agent feedback_summary";
        let response = self
            .bus
            .publish_task(
                ENHANCEMENT_AGENT,
                FEEDBACK_SUMMARY,
                json!({}),
                Priority::Normal,
            )
            .await;
        if let Some(result) = completed(step, response, report) {
            let seen = &result["feedback_seen"];
            let noun = if seen == 1 { "event" } else { "events" };
            report(&format!("{step}: completed ({seen} feedback {noun} seen)"));
        }
    }
}

/// The result of a completed task; otherwise reports why not and returns `None`.
fn completed(
    step: &str,
    response: Result<TaskResponse, SendTaskError>,
    report: &impl Fn(&str),
) -> Option<Value> {
    match response {
        Ok(response) if response.is_completed() => Some(response.result.unwrap_or(Value::Null)),
        Ok(response) => {
            report(&format!(
                "{step}: {}: {}",
                response.status,
                response.error.as_deref().unwrap_or("no error message")
            ));
            None
        }
        Err(err) => {
            report(&format!("{step}: no answer: {err}"));
            None
        }
    }
}
