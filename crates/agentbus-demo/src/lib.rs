//! The demo agents of `agentbus up --demo`, and the demo that runs them together.
//!
//! | agent | task type | what it does |
//! | --- | --- | --- |
//! | [`LlmAgent`] (`llm_agent`) | `generate_text` | calls an OpenAI-compatible endpoint when `LLM_BASE_URL` is set; otherwise echoes the prompt truncated, and says so; streams its text to a caller that follows the task |
//! | [`ChatManager`] (`chat_manager`) | `post_message` | announces `chat.message.new` with `{session_id, message_id, content}`; reads its durable inbox |
//! | [`EnhancementAgent`] (`enhancement_agent`) | `feedback_summary` | consumes `enhancement.feedback` and reports what it has seen; takes the broadcasts on topic [`FEEDBACK_TOPIC`] |
//!
//! [`send_generate_text`] is the orchestrator's side of the LLM scenario, and
//! [`run_demo`] serves all three agents and drives them every couple of
//! seconds, printing one line per step (what `agentbus up --demo` shows),
//! and one per durable message the agents take ([`Arrival`]).
//!
//! # Layout
//!
//! - `llm_agent`: [`LlmAgent`] and its `generate_text` task.
//! - `echo`: echo mode's text, word by word, and its `echo_delay_ms`.
//! - `output`: a task's text as it is made, reported as partial results when
//!   the caller follows the task.
//! - `llm_endpoint`: [`LlmEndpoint`], configured from `LLM_*`, and [`LlmSetupError`].
//! - `completion`: the HTTP call to the endpoint, whole (`mod.rs`) or streamed
//!   (`stream.rs`, reading server-sent events with `sse.rs`); its errors by
//!   kind, and those as task errors (a refusal is not retried) (`error.rs`).
//! - `chat_manager`: [`ChatManager`] and the [`ChatMessageEvent`] it publishes.
//! - `enhancement_agent`: [`EnhancementAgent`] and its [`FeedbackSummary`].
//! - `message_log`: [`MessageLog`], where those two agents count the durable
//!   messages they take and hand each on as an [`Arrival`].
//! - `orchestrator`: [`send_generate_text`].
//! - `run`: [`run_demo`], [`run_demo_with`], [`DemoBuses`], [`DemoOptions`] and [`DemoError`].
//! - `round`: one round of the demo: the orchestrator's four steps and their lines.
//! - `text`: shortening text and ids for the printed lines.

#![warn(missing_docs, unreachable_pub)]

mod chat_manager;
mod completion;
mod echo;
mod enhancement_agent;
mod llm_agent;
mod llm_endpoint;
mod message_log;
mod orchestrator;
mod output;
mod round;
mod run;
mod text;

pub use chat_manager::{
    CHAT_MANAGER, CHAT_MESSAGE_NEW, ChatManager, ChatMessageEvent, POST_MESSAGE,
    post_message_schema,
};
pub use echo::MAX_ECHO_DELAY_MS;
pub use enhancement_agent::{
    ENHANCEMENT_AGENT, ENHANCEMENT_FEEDBACK, EnhancementAgent, FEEDBACK_SUMMARY, FEEDBACK_TOPIC,
    FeedbackSummary,
};
pub use llm_agent::{
    DEFAULT_MAX_TOKENS, ECHO_NOTE, GENERATE_TEXT, LLM_AGENT, LlmAgent, generate_text_schema,
    truncate_words,
};
pub use llm_endpoint::{
    BaseUrlProblem, DEFAULT_LLM_MODEL, DEFAULT_LLM_TIMEOUT, LLM_API_KEY_VAR, LLM_BASE_URL_VAR,
    LLM_MODEL_VAR, LlmEndpoint, LlmSetupError, LlmSetupErrorKind,
};
pub use message_log::{Arrival, MessageLog};
pub use orchestrator::send_generate_text;
pub use run::{
    DEMO_SESSION, DemoBuses, DemoError, DemoErrorKind, DemoOptions, ORCHESTRATOR, run_demo,
    run_demo_with,
};
