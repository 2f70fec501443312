//! The heartbeat of one presence entry outside a runtime (the MCP bridge
//! keeps one for its agent): a heartbeat service with a single entry.

use super::beats::{Beats, InFlightSource};
use super::{AgentPresence, PresenceOptions};
use crate::client::Bus;
use crate::state::{BackendError, EntryKey, StateError, StateStore};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use tokio::sync::{Mutex, oneshot};

/// Publishes heartbeats for `presence` every `interval` until stopped or
/// dropped (then removes the entry and publishes `agent_offline`), and
/// reports agents whose heartbeats stopped (see the [module](super)).
///
/// ```no_run
/// # async fn example(bus: agentbus::Bus, store: agentbus::state::StateStore) {
/// use agentbus::presence::{AgentPresence, Heartbeat, PresenceOptions};
/// let name = agentbus::Name::parse("agent name", "mcp_agent").expect("valid");
/// let instance = uuid::Uuid::new_v4().simple().to_string();
/// let presence = AgentPresence::new(&name, &instance, &[]);
/// let heartbeat = Heartbeat::start(bus, store, presence, PresenceOptions::default());
/// heartbeat.set_in_flight(2);
/// heartbeat.stop().await;
/// # }
/// ```
#[derive(Debug)]
pub struct Heartbeat {
    beats: Beats,
    in_flight: Arc<AtomicUsize>,
    /// The first heartbeat's outcome: awaited once, then kept.
    first: Mutex<FirstBeat>,
}

#[derive(Debug)]
enum FirstBeat {
    Waiting(oneshot::Receiver<Result<EntryKey, StateError>>),
    Stored,
    Failed(String),
}

impl Heartbeat {
    /// Starts the heartbeats on the current tokio runtime. The name and
    /// instance id must be valid [`Name`](crate::Name)s (they become key
    /// parts); if not, nothing is written and [`Heartbeat::first_beat`] says why.
    pub fn start(
        bus: Bus,
        store: StateStore,
        presence: AgentPresence,
        options: PresenceOptions,
    ) -> Heartbeat {
        let in_flight = Arc::new(AtomicUsize::new(presence.in_flight));
        let source = in_flight.clone();
        let source: InFlightSource = Arc::new(move || source.load(Ordering::Relaxed));
        let beats = Beats::start(bus, store);
        let first = beats.register_later(presence, options, source);
        Heartbeat {
            beats,
            in_flight,
            first: Mutex::new(FirstBeat::Waiting(first)),
        }
    }

    /// Sets the number of tasks in flight carried by the next heartbeats.
    pub fn set_in_flight(&self, n: usize) {
        self.in_flight.store(n, Ordering::Relaxed);
    }

    /// Waits until the first heartbeat was written, or says why it was not.
    pub async fn first_beat(&self) -> Result<(), StateError> {
        let mut first = self.first.lock().await;
        if let FirstBeat::Waiting(outcome) = &mut *first {
            *first = match outcome.await {
                Ok(Ok(_)) => FirstBeat::Stored,
                Ok(Err(err)) => FirstBeat::Failed(err.to_string()),
                Err(_) => FirstBeat::Failed(self.beats.stopped().to_string()),
            };
        }
        match &*first {
            FirstBeat::Failed(reason) => Err(StateError::Backend {
                backend: self.beats.backend(),
                operation: "store the first heartbeat",
                source: BackendError::Masked(reason.clone()),
            }),
            _ => Ok(()),
        }
    }

    /// Stops the heartbeats, removes the entry and publishes `agent_offline`.
    pub async fn stop(self) {
        self.beats.stop().await;
    }
}
