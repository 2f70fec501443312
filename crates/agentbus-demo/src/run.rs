//! The demo: the three agents in one runtime, and an orchestrator that drives
//! them every couple of seconds, printing one line per step and one per
//! durable message the agents take.

use crate::chat_manager::{CHAT_MANAGER, POST_MESSAGE};
use crate::chat_manager::{CHAT_MESSAGE_NEW, ChatManager};
use crate::enhancement_agent::FEEDBACK_SUMMARY;
use crate::enhancement_agent::{ENHANCEMENT_AGENT, EnhancementAgent};
use crate::llm_agent::LlmAgent;
use crate::llm_agent::{GENERATE_TEXT, LLM_AGENT};
use crate::llm_endpoint::{LlmEndpoint, LlmSetupError};
use crate::message_log::MessageLog;
use crate::round::Orchestrator;
use agentbus::RuntimeError;
use agentbus::SubscribeError;
use agentbus::permissions::{EventPattern, Grant};
use agentbus::{AgentOptions, Bus, Name, Runtime};
use std::future::Future;
use std::io::Write;
use std::sync::{Mutex, PoisonError};
use std::time::Duration;
use tokio::sync::mpsc;

/// The chat session the demo posts to.
pub const DEMO_SESSION: &str = "demo-session";

/// How long running tasks may take to finish when the demo stops.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// The name the orchestrator has on the bus (it serves nothing; with
/// identities, what it sends carries this name).
pub const ORCHESTRATOR: &str = "demo_orchestrator";

/// The connections the demo's parts run on: each agent's and the
/// orchestrator's, with an identity of its own each
/// ([`DemoBuses::grants`]), or one connection for all
/// ([`DemoBuses::shared`]).
#[derive(Debug, Clone)]
pub struct DemoBuses {
    /// `llm_agent`'s.
    pub llm_agent: Bus,
    /// `chat_manager`'s.
    pub chat_manager: Bus,
    /// `enhancement_agent`'s.
    pub enhancement_agent: Bus,
    /// The orchestrator's: it calls the agents, publishes feedback and
    /// follows the chat.
    pub orchestrator: Bus,
}

impl DemoBuses {
    /// One connection for every part.
    pub fn shared(bus: Bus) -> Self {
        Self {
            llm_agent: bus.clone(),
            chat_manager: bus.clone(),
            enhancement_agent: bus.clone(),
            orchestrator: bus,
        }
    }

    /// What each part's identity needs, in the order of the fields: the
    /// agents their task types' shared queues, and the events each
    /// publishes or follows (`chat.>`, `enhancement.>`).
    pub fn grants() -> [Grant; 4] {
        let name =
            |text: &str| Name::parse("agent name", text).expect("the demo's names are valid");
        let events = |patterns: &[&str]| -> Vec<EventPattern> {
            patterns
                .iter()
                .map(|p| EventPattern::parse(p).expect("the demo's events are valid"))
                .collect()
        };
        let grant = |agent: &str, work: &[&str], patterns: &[&str]| Grant {
            work_types: work.iter().map(|t| name(t)).collect(),
            events: events(patterns),
            ..Grant::new(name(agent))
        };
        [
            grant(LLM_AGENT, &[GENERATE_TEXT], &[]),
            grant(CHAT_MANAGER, &[POST_MESSAGE], &["chat.>"]),
            grant(ENHANCEMENT_AGENT, &[FEEDBACK_SUMMARY], &["enhancement.>"]),
            grant(ORCHESTRATOR, &[], &["chat.>", "enhancement.>"]),
        ]
    }
}

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
    run_demo_with(DemoBuses::shared(bus), options, shutdown, |line| {
        // A closed stdout must not stop the agents.
        let _ = writeln!(std::io::stdout().lock(), "{line}");
    })
    .await
}

/// Like [`run_demo`], on `buses`, with explicit options, handing each line
/// to `report`. The first line says what is served; it comes once the
/// agents take tasks and messages.
pub async fn run_demo_with(
    buses: DemoBuses,
    options: DemoOptions,
    shutdown: impl Future<Output = ()>,
    report: impl FnMut(&str),
) -> Result<(), DemoError> {
    let llm = LlmAgent::new(options.llm.clone())?;
    let mode = match llm.endpoint() {
        None => "echo mode; set LLM_BASE_URL for a model".to_owned(),
        Some(endpoint) => format!("model {} at {}", endpoint.model(), endpoint.display_url()),
    };
    let chat = buses.orchestrator.subscribe(CHAT_MESSAGE_NEW, None).await?;
    let (feedback, consumer) =
        EnhancementAgent::start(&buses.enhancement_agent, Some(ENHANCEMENT_AGENT)).await?;
    let (arrived, mut arrivals) = mpsc::unbounded_channel();
    let feedback = feedback.with_message_log(MessageLog::with_listener(arrived.clone()));
    let chat_manager = ChatManager::new().with_message_log(MessageLog::with_listener(arrived));
    // A runtime per agent: one on an agent's identity serves that agent only.
    let mut runtimes = [
        &buses.llm_agent,
        &buses.chat_manager,
        &buses.enhancement_agent,
    ]
    .map(|bus| Runtime::new(bus.clone()));
    let served = async {
        let [llm_runtime, chat_runtime, feedback_runtime] = &mut runtimes;
        llm_runtime.add(llm, AgentOptions::default()).await?;
        chat_runtime
            .add(chat_manager, ChatManager::options())
            .await?;
        feedback_runtime
            .add(feedback.clone(), EnhancementAgent::options())
            .await?;
        Ok::<_, RuntimeError>(())
    }
    .await;
    if let Err(err) = served {
        consumer.abort();
        for runtime in runtimes {
            runtime.shutdown(Duration::ZERO).await;
        }
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
        bus: buses.orchestrator,
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
    futures::future::join_all(
        runtimes
            .into_iter()
            .map(|runtime| runtime.shutdown(SHUTDOWN_GRACE)),
    )
    .await;
    Ok(())
}
