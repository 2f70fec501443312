//! The demo: the three agents in one runtime, and an orchestrator that drives
//! them every couple of seconds, printing one line per step.

use super::chat_manager::{
    CHAT_MANAGER, CHAT_MESSAGE_NEW, ChatManager, ChatMessageEvent, POST_MESSAGE,
};
use super::enhancement_agent::{
    ENHANCEMENT_AGENT, ENHANCEMENT_FEEDBACK, EnhancementAgent, FEEDBACK_SUMMARY,
};
use super::llm_agent::{LlmAgent, LlmEndpoint, LlmSetupError};
use super::orchestrator::send_generate_text;
use crate::client::{Bus, SubscribeError, Subscription};
use crate::protocol::{Priority, TaskResponse};
use crate::runtime::{AgentOptions, Runtime, RuntimeError};
use futures::StreamExt;
use serde_json::{Value, json};
use std::future::Future;
use std::io::Write;
use std::time::Duration;

/// The chat session the demo posts to.
pub const DEMO_SESSION: &str = "demo-session";

/// Prompts the demo cycles through; each is longer than the demo's
/// `max_tokens`, so echo mode visibly truncates.
const PROMPTS: [&str; 3] = [
    "Write a short story about an AI agent that learns to share its work.",
    "Explain in one paragraph why queue groups spread tasks across replicas.",
    "Suggest three names for a messaging bus that agents use to talk.",
];

/// How long a step waits for an event it caused before moving on.
const EVENT_WAIT: Duration = Duration::from_secs(2);
/// How long running tasks may take to finish when the demo stops.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);
/// Printed text is cut to this many characters.
const SHOWN_CHARS: usize = 72;

/// How the demo runs.
#[derive(Debug, Clone)]
pub struct DemoOptions {
    /// Time between rounds.
    pub interval: Duration,
    /// `max_tokens` of each `generate_text` task.
    pub max_tokens: u64,
    /// The endpoint `llm_agent` calls; `None` for echo mode.
    pub llm: Option<LlmEndpoint>,
}

impl Default for DemoOptions {
    fn default() -> Self {
        Self {
            interval: Duration::from_secs(2),
            max_tokens: 8,
            llm: None,
        }
    }
}

impl DemoOptions {
    /// The defaults, with the LLM endpoint from `LLM_BASE_URL`, `LLM_API_KEY`
    /// and `LLM_MODEL`.
    pub fn from_env() -> Result<Self, LlmSetupError> {
        Ok(Self {
            llm: LlmEndpoint::from_env()?,
            ..Self::default()
        })
    }
}

/// Why the demo could not run.
#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    /// The LLM endpoint is misconfigured.
    #[error(transparent)]
    Llm(#[from] LlmSetupError),
    /// An agent could not be served.
    #[error(transparent)]
    Runtime(#[from] RuntimeError),
    /// A subscription could not be made or confirmed.
    #[error(transparent)]
    Subscribe(#[from] SubscribeError),
}

/// Serves `llm_agent`, `chat_manager` and `enhancement_agent` on `bus` and,
/// every two seconds until `shutdown` completes, sends them work, printing one
/// line per step to stdout. The LLM endpoint comes from the environment
/// (see [`DemoOptions::from_env`]).
///
/// ```no_run
/// # async fn example(bus: agentbus::Bus) -> Result<(), agentbus::demo::DemoError> {
/// agentbus::demo::run_demo(bus, async { let _ = tokio::signal::ctrl_c().await; }).await
/// # }
/// ```
pub async fn run_demo(bus: Bus, shutdown: impl Future<Output = ()>) -> Result<(), DemoError> {
    let options = DemoOptions::from_env()?;
    run_demo_with(bus, options, shutdown, |line| {
        // A closed stdout must not stop the agents.
        let _ = writeln!(std::io::stdout().lock(), "{line}");
    })
    .await
}

/// Like [`run_demo`], with explicit options, handing each line to `report`.
pub async fn run_demo_with(
    bus: Bus,
    options: DemoOptions,
    shutdown: impl Future<Output = ()>,
    mut report: impl FnMut(&str),
) -> Result<(), DemoError> {
    let llm = LlmAgent::new(options.llm.clone())?;
    let mode = match llm.endpoint() {
        None => "echo mode; set LLM_BASE_URL for a model".to_owned(),
        Some(endpoint) => format!("model {} at {}", endpoint.model(), endpoint.display_url()),
    };
    let chat = bus.subscribe(CHAT_MESSAGE_NEW, None).await?;
    let (feedback, consumer) = EnhancementAgent::start(&bus, Some(ENHANCEMENT_AGENT)).await?;
    let mut runtime = Runtime::new(bus.clone());
    let served = async {
        runtime.add(llm, AgentOptions::default()).await?;
        runtime
            .add(ChatManager::new(), AgentOptions::default())
            .await?;
        runtime
            .add(feedback.clone(), AgentOptions::default())
            .await?;
        Ok::<_, RuntimeError>(())
    }
    .await;
    if let Err(err) = served {
        consumer.abort();
        runtime.shutdown(Duration::ZERO).await;
        return Err(err.into());
    }
    report(&format!(
        "demo: serving llm_agent ({mode}), chat_manager and enhancement_agent; a round every {:?}",
        options.interval
    ));

    let mut demo = Demo {
        bus,
        chat,
        feedback,
        feedback_sent: 0,
        max_tokens: options.max_tokens,
    };
    let mut shutdown = std::pin::pin!(shutdown);
    let mut ticker = tokio::time::interval(options.interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut round = 0usize;
    loop {
        tokio::select! {
            () = &mut shutdown => break,
            () = async {
                ticker.tick().await;
                demo.round(round, &mut report).await;
            } => round += 1,
        }
    }
    report("demo: stopping");
    consumer.abort();
    runtime.shutdown(SHUTDOWN_GRACE).await;
    Ok(())
}

struct Demo {
    bus: Bus,
    chat: Subscription,
    feedback: EnhancementAgent,
    feedback_sent: u64,
    max_tokens: u64,
}

impl Demo {
    async fn round(&mut self, round: usize, report: &mut impl FnMut(&str)) {
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
    async fn generate_text(&self, prompt: &str, report: &mut impl FnMut(&str)) -> Option<String> {
        let step = "orchestrator -> llm_agent generate_text";
        let response = send_generate_text(&self.bus, prompt, Some(self.max_tokens)).await;
        let result = completed(step, response, report)?;
        let text = result["text"].as_str().unwrap_or_default().to_owned();
        let mode = result["mode"].as_str().unwrap_or("?");
        report(&format!("{step}: completed ({mode}) {:?}", shorten(&text)));
        Some(text)
    }

    /// Step 2: orchestrator -> chat_manager, then the event it announced.
    async fn post_message(
        &mut self,
        content: &str,
        report: &mut impl FnMut(&str),
    ) -> Option<String> {
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
        report: &mut impl FnMut(&str),
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
    async fn feedback_summary(&self, report: &mut impl FnMut(&str)) {
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
    response: Result<TaskResponse, crate::SendTaskError>,
    report: &mut impl FnMut(&str),
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

fn shorten(text: &str) -> String {
    if text.chars().count() <= SHOWN_CHARS {
        return text.to_owned();
    }
    let mut cut: String = text.chars().take(SHOWN_CHARS - 1).collect();
    cut.push('…');
    cut
}

fn short_id(id: &str) -> &str {
    id.get(..8).unwrap_or(id)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_text_is_shortened_on_a_char_boundary() {
        assert_eq!(shorten("short"), "short");
        let long = "é".repeat(100);
        let cut = shorten(&long);
        assert_eq!(cut.chars().count(), SHOWN_CHARS);
        assert!(cut.ends_with('…'));
        assert_eq!(short_id("0123456789"), "01234567");
        assert_eq!(short_id("abc"), "abc");
    }
}
