//! The demo: the three agents in one runtime, and an orchestrator that drives
//! them every couple of seconds, printing one line per step and one per
//! durable message the agents take.

use crate::chat_manager::{CHAT_MESSAGE_NEW, ChatManager};
use crate::enhancement_agent::{ENHANCEMENT_AGENT, EnhancementAgent};
use crate::llm_agent::LlmAgent;
use crate::llm_endpoint::{LlmEndpoint, LlmSetupError};
use crate::message_log::MessageLog;
use crate::round::Orchestrator;
use agentbus::RuntimeError;
use agentbus::SubscribeError;
use agentbus::{AgentOptions, Bus, Runtime};
use std::future::Future;
use std::io::Write;
use std::sync::{Mutex, PoisonError};
use std::time::Duration;
use tokio::sync::mpsc;

/// The chat session the demo posts to.
pub const DEMO_SESSION: &str = "demo-session";

/// How long running tasks may take to finish when the demo stops.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

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
#[non_exhaustive]
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

/// Why the demo could not run, as a kind to match.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum DemoErrorKind {
    /// The LLM endpoint is misconfigured ([`LlmSetupError::kind`] says how).
    Llm,
    /// An agent could not be served ([`RuntimeError::kind`] says why).
    Runtime,
    /// A subscription could not be made or confirmed.
    Subscribe,
}

impl DemoError {
    /// Why the demo could not run.
    pub fn kind(&self) -> DemoErrorKind {
        match self {
            Self::Llm(_) => DemoErrorKind::Llm,
            Self::Runtime(_) => DemoErrorKind::Runtime,
            Self::Subscribe(_) => DemoErrorKind::Subscribe,
        }
    }
}

/// Serves `llm_agent`, `chat_manager` and `enhancement_agent` on `bus` and,
/// every two seconds until `shutdown` completes, sends them work, printing one
/// line per step to stdout. The durable messages the agents take get a line
/// each as they arrive: `chat_manager`'s inbox, broadcasts on
/// [`FEEDBACK_TOPIC`] for `enhancement_agent`, and announcements for both.
/// The LLM endpoint comes from the environment (see [`DemoOptions::from_env`]).
///
/// [`FEEDBACK_TOPIC`]: crate::FEEDBACK_TOPIC
///
/// ```no_run
/// # async fn example(bus: agentbus::Bus) -> Result<(), agentbus_demo::DemoError> {
/// agentbus_demo::run_demo(bus, async { let _ = tokio::signal::ctrl_c().await; }).await
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
/// The first line says what is served; it comes once the agents take tasks
/// and messages.
pub async fn run_demo_with(
    bus: Bus,
    options: DemoOptions,
    shutdown: impl Future<Output = ()>,
    report: impl FnMut(&str),
) -> Result<(), DemoError> {
    let llm = LlmAgent::new(options.llm.clone())?;
    let mode = match llm.endpoint() {
        None => "echo mode; set LLM_BASE_URL for a model".to_owned(),
        Some(endpoint) => format!("model {} at {}", endpoint.model(), endpoint.display_url()),
    };
    let chat = bus.subscribe(CHAT_MESSAGE_NEW, None).await?;
    let (feedback, consumer) = EnhancementAgent::start(&bus, Some(ENHANCEMENT_AGENT)).await?;
    let (arrived, mut arrivals) = mpsc::unbounded_channel();
    let feedback = feedback.with_message_log(MessageLog::with_listener(arrived.clone()));
    let chat_manager = ChatManager::new().with_message_log(MessageLog::with_listener(arrived));
    let mut runtime = Runtime::new(bus.clone());
    let served = async {
        runtime.add(llm, AgentOptions::default()).await?;
        runtime.add(chat_manager, ChatManager::options()).await?;
        runtime
            .add(feedback.clone(), EnhancementAgent::options())
            .await?;
        Ok::<_, RuntimeError>(())
    }
    .await;
    if let Err(err) = served {
        consumer.abort();
        runtime.shutdown(Duration::ZERO).await;
        return Err(err.into());
    }
    // Rounds and arrivals report concurrently, each line whole.
    let sink = Mutex::new(report);
    let report = |line: &str| (sink.lock().unwrap_or_else(PoisonError::into_inner))(line);
    report(&format!(
        "demo: serving llm_agent ({mode}), chat_manager and enhancement_agent; a round every {:?}",
        options.interval
    ));

    let mut orchestrator = Orchestrator {
        bus,
        chat,
        feedback,
        feedback_sent: 0,
        max_tokens: options.max_tokens,
    };
    let mut ticker = tokio::time::interval(options.interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let rounds = async {
        for round in 0usize.. {
            ticker.tick().await;
            orchestrator.round(round, &report).await;
        }
    };
    // The agents hold the senders: this ends only when they are gone.
    let arrivals = async {
        while let Some(arrival) = arrivals.recv().await {
            report(&arrival.to_string());
        }
    };
    tokio::select! {
        () = shutdown => {}
        _ = futures::future::join(rounds, arrivals) => {}
    }
    report("demo: stopping");
    consumer.abort();
    runtime.shutdown(SHUTDOWN_GRACE).await;
    Ok(())
}
