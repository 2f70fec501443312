//! Who is online: heartbeats with a TTL, and `platform.events.agent_offline`.
//!
//! Each running agent instance keeps one presence entry (an [`AgentPresence`])
//! among the short-lived entries of the [state store](crate::state): NATS KV
//! bucket `agent-presence` by default, Redis keys when the state store is
//! Redis. Its heartbeat rewrites the entry every [`PresenceOptions::interval`]
//! with a TTL of [`PresenceOptions::offline_after`], so the entry of an agent
//! that dies without a goodbye expires on its own. [`online_agents`] lists
//! the entries; a [`Heartbeat`] keeps one entry outside a runtime.
//!
//! `platform.events.agent_offline` is published
//! - by the instance itself on a graceful stop (`"reason": "shutdown"`), after
//!   removing its entry;
//! - when an entry expires (`"reason": "heartbeat_timeout"`), by one of the
//!   live runtimes: the one that keeps the smallest live entry by (agent
//!   name, instance id). Each runtime watches the entries once to know (see
//!   the `offline` module for the edge cases).
//!
//! One task per runtime writes the heartbeats of all its agents and holds
//! that one watch: the bus carries one message per agent per interval, and
//! each runtime's watch receives them all, whatever the number of agents.
//!
//! On NATS KV an expiry is seen within about a second of `offline_after`
//! (the bucket's limit marker); on Redis the heartbeats list the entries every
//! `interval`, so it is seen within `offline_after + interval`.
//!
//! The event's body is an [`OfflineEvent`](crate::events::OfflineEvent).

mod beats;
mod heartbeat;
mod offline;

pub(crate) use beats::{Beats, InFlightSource};
pub use heartbeat::Heartbeat;

use crate::agent::TaskTypeSpec;
use crate::clock;
use crate::name::Name;
use crate::state::{EntryChange, EntryKey, StateError, StateStore};
use futures::StreamExt;
use futures::stream::BoxStream;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::time::Duration;

/// One live agent instance, as stored in its presence entry.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AgentPresence {
    /// The agent's name.
    pub name: String,
    /// The runtime (or process) instance serving it.
    pub instance_id: String,
    /// The task types it accepts, with their payload schemas.
    pub task_types: Vec<PresenceTaskType>,
    /// The agentbus version it runs.
    pub version: String,
    /// When it started (RFC 3339).
    pub started_at: String,
    /// The host it runs on.
    pub host: String,
    /// Tasks waiting or running at the last heartbeat.
    pub in_flight: usize,
    /// When the last heartbeat was written (RFC 3339).
    pub last_seen: String,
}

/// A task type in a presence entry.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PresenceTaskType {
    /// The task type's name.
    pub name: String,
    /// The JSON Schema its payload must satisfy, if any.
    pub schema: Option<Value>,
}

/// How often a heartbeat is written and when a silent agent counts as offline.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PresenceOptions {
    /// Time between heartbeats (default 10 s).
    pub interval: Duration,
    /// An entry not refreshed for this long expires: the agent is offline
    /// (default 30 s). On NATS KV it is rounded up to whole seconds and
    /// capped by the `agent-presence` bucket's `max_age` (30 s as shipped).
    pub offline_after: Duration,
}

impl Default for PresenceOptions {
    fn default() -> Self {
        Self {
            interval: Duration::from_secs(10),
            offline_after: Duration::from_secs(30),
        }
    }
}

impl AgentPresence {
    /// The presence of agent `name` in instance `instance_id`, starting now on
    /// this host, with this crate's version.
    pub fn new(name: &Name, instance_id: &str, task_types: &[TaskTypeSpec]) -> Self {
        let now = clock::now();
        Self {
            name: name.to_string(),
            instance_id: instance_id.to_owned(),
            task_types: task_types
                .iter()
                .map(|t| PresenceTaskType {
                    name: t.name().to_string(),
                    schema: t.schema().cloned(),
                })
                .collect(),
            version: env!("CARGO_PKG_VERSION").to_owned(),
            started_at: now.clone(),
            host: host_name(),
            in_flight: 0,
            last_seen: now,
        }
    }

    /// The entry's key: the validated agent name and instance id.
    pub(crate) fn entry_key(&self) -> Result<EntryKey, StateError> {
        Ok(EntryKey::new(vec![
            Name::parse("agent name", &self.name)?,
            Name::parse("instance id", &self.instance_id)?,
        ]))
    }

    fn id(&self) -> Option<EntryKey> {
        self.entry_key().ok()
    }
}

/// The agents online now, sorted by name, then instance id.
pub async fn online_agents(store: &StateStore) -> Result<Vec<AgentPresence>, StateError> {
    let mut agents: Vec<AgentPresence> = store
        .list_entries()
        .await?
        .into_iter()
        .filter_map(|(key, value)| decode(&key, &value))
        .collect();
    agents.sort_by(|a, b| (&a.name, &a.instance_id).cmp(&(&b.name, &b.instance_id)));
    Ok(agents)
}

/// The presence entries present now, then every change to them.
pub(crate) async fn changes(
    store: &StateStore,
    poll: Duration,
) -> Result<BoxStream<'static, PresenceChange>, StateError> {
    Ok(store
        .entry_changes(poll)
        .await?
        .filter_map(|change| {
            futures::future::ready(match change {
                EntryChange::Put(key, value) => decode(&key, &value).map(PresenceChange::Seen),
                EntryChange::Removed(key) => Some(PresenceChange::Left(key)),
                EntryChange::Expired(key) => Some(PresenceChange::Expired(key)),
            })
        })
        .boxed())
}

/// An entry's value as a presence; what another program wrote there is skipped.
fn decode(key: &EntryKey, value: &[u8]) -> Option<AgentPresence> {
    match serde_json::from_slice(value) {
        Ok(presence) => Some(presence),
        Err(err) => {
            tracing::warn!(?key, %err, "presence entry is not an AgentPresence; ignored");
            None
        }
    }
}

/// This machine's host name (`unknown` when it cannot be read).
pub fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "unknown".to_owned())
}

/// A change to the presence entries.
#[derive(Debug, Clone)]
pub(crate) enum PresenceChange {
    /// An entry was written (or is there when watching starts).
    Seen(AgentPresence),
    /// An entry was removed by a graceful shutdown.
    Left(EntryKey),
    /// An entry expired: its heartbeats stopped.
    Expired(EntryKey),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_new_presence_describes_this_process() {
        let spec = TaskTypeSpec::new("generate_text")
            .unwrap()
            .with_schema(serde_json::json!({"type": "object"}));
        let p = AgentPresence::new(&Name::parse("agent name", "llm").unwrap(), "i1", &[spec]);
        assert_eq!(p.name, "llm");
        assert_eq!(p.version, env!("CARGO_PKG_VERSION"));
        assert_eq!(p.task_types[0].name, "generate_text");
        assert_eq!(
            p.task_types[0].schema,
            Some(serde_json::json!({"type": "object"}))
        );
        assert!(!p.host.is_empty());
        assert!(humantime::parse_rfc3339(&p.started_at).is_ok());
        let key = EntryKey::new(vec![
            Name::parse("agent name", "llm").unwrap(),
            Name::parse("instance id", "i1").unwrap(),
        ]);
        assert_eq!(p.id(), Some(key));
    }

    #[test]
    fn invalid_ids_are_refused_before_they_become_keys() {
        let mut p = AgentPresence::new(&Name::parse("agent name", "llm").unwrap(), "i1", &[]);
        p.instance_id = "a.b".into();
        assert!(matches!(p.entry_key(), Err(StateError::InvalidName(_))));
        assert!(p.id().is_none());
    }
}
