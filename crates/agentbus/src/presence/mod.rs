//! Who is online: one entry per agent instance, kept alive by the heartbeat
//! of the runtime that serves it, and `platform.events.agent_offline`.
//!
//! Presence lives among the short-lived entries of the [state
//! store](crate::state) (NATS KV bucket `agent-presence` by default, Redis
//! keys when the state store is Redis), as two kinds of entry:
//!
//! - `<instance>`: the heartbeat of one runtime (or MCP bridge) instance,
//!   rewritten every [`PresenceOptions::interval`] with a TTL of
//!   [`PresenceOptions::offline_after`]: when the process dies without a
//!   goodbye, it expires on its own;
//! - `<agent>.<instance>`: an [`AgentPresence`], written when the agent is
//!   added, again when its tasks in flight change (at most once per
//!   interval), and refreshed well before the bucket's `max_age`.
//!
//! An agent is online while both its entry and its instance's heartbeat
//! exist ([`online_agents`] lists them so). An idle agent therefore costs the
//! bus nothing per interval: a runtime serving ten thousand agents writes one
//! heartbeat per interval, plus the agents whose load changed.
//!
//! `platform.events.agent_offline` is published
//! - by the runtime itself when an agent stops gracefully (`"reason":
//!   "shutdown"`), after removing its entry;
//! - when an instance's heartbeat expires (`"reason": "heartbeat_timeout"`),
//!   once for each of its agents, by one of the live instances: the one with
//!   the smallest instance id, which also removes the dead agents' entries.
//!   Each runtime watches the entries once to know (see the `offline` module
//!   for the edge cases).
//!
//! On NATS KV an expiry is seen within about a second of `offline_after`
//! (the bucket's limit marker); on Redis the entries are listed every
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
    /// When its instance's last heartbeat was written (RFC 3339).
    pub last_seen: String,
}

/// The heartbeat of one runtime instance: its agents are alive while it is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct InstanceBeat {
    /// The instance.
    pub(crate) instance_id: String,
    /// The host it runs on.
    pub(crate) host: String,
    /// When this heartbeat was written (RFC 3339).
    pub(crate) last_seen: String,
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
    /// A heartbeat not refreshed for this long expires: the agents of its
    /// instance are offline (default 30 s). On NATS KV it is rounded up to
    /// whole seconds and capped by the `agent-presence` bucket's `max_age`.
    /// A runtime beats at the shortest interval and expires after the
    /// shortest `offline_after` of the agents it serves.
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

/// The last part of a heartbeat's key.
const HEARTBEAT: &str = "alive";

/// The key of an instance's heartbeat: `<owner>.<instance>.alive`, where
/// the owner is the first agent it served. The owner's name comes first so
/// that an agent identity may write its own heartbeat and no other
/// instance's, with the same permission as its own entries
/// (`<agent>.>`).
pub(crate) fn instance_key(owner: &Name, instance: &Name) -> EntryKey {
    let heartbeat = Name::parse("presence key part", HEARTBEAT).expect("a valid name");
    EntryKey::new(vec![owner.clone(), instance.clone(), heartbeat])
}

/// The instance whose heartbeat `key` is, or `None` for an agent's entry.
/// A key of one part is an instance's heartbeat as versions before the
/// owner was part of it wrote it.
fn heartbeat_of(key: &EntryKey) -> Option<String> {
    match key.parts() {
        [instance] => Some(instance.to_string()),
        [_owner, instance, last] if last.as_str() == HEARTBEAT => Some(instance.to_string()),
        _ => None,
    }
}

/// The agents online now (their entry and their instance's heartbeat both
/// exist), sorted by name, then instance id; `last_seen` is the instance's
/// last heartbeat.
pub async fn online_agents(store: &StateStore) -> Result<Vec<AgentPresence>, StateError> {
    let mut beats = std::collections::HashMap::new();
    let mut agents = Vec::new();
    for (key, value) in store.list_entries().await? {
        match decode(&key, &value) {
            Some(Decoded::Agent(agent)) => agents.push(agent),
            Some(Decoded::Instance(beat)) => {
                beats.insert(beat.instance_id, beat.last_seen);
            }
            None => {}
        }
    }
    Ok(joined(agents, &beats))
}

/// The agents whose instance has a heartbeat in `beats` (instance id to its
/// last heartbeat), with it as `last_seen`, sorted by name, then instance id.
fn joined(
    agents: impl IntoIterator<Item = AgentPresence>,
    beats: &std::collections::HashMap<String, String>,
) -> Vec<AgentPresence> {
    let mut online: Vec<AgentPresence> = agents
        .into_iter()
        .filter_map(|mut agent| {
            agent.last_seen = beats.get(&agent.instance_id)?.clone();
            Some(agent)
        })
        .collect();
    online.sort_by(|a, b| (&a.name, &a.instance_id).cmp(&(&b.name, &b.instance_id)));
    online
}

/// Who is online, kept from one watch of the presence entries: one consumer
/// (NATS KV) or one poll (Redis) for as long as it lives, however often it
/// is read. For a process that asks again and again, such as a dashboard; a
/// question asked once is [`online_agents`], which lists the entries.
#[derive(Debug)]
pub struct OnlineAgents {
    known: std::sync::Arc<std::sync::Mutex<Known>>,
    task: tokio::task::JoinHandle<()>,
}

#[derive(Debug, Default)]
struct Known {
    agents: std::collections::HashMap<EntryKey, AgentPresence>,
    beats: std::collections::HashMap<String, String>,
}

/// How often a Redis store is polled for changes while followed.
const FOLLOW_POLL: Duration = Duration::from_secs(1);

impl OnlineAgents {
    /// Starts following the presence entries of `store`.
    pub async fn follow(store: &StateStore) -> Result<Self, StateError> {
        let mut changes = changes(store, FOLLOW_POLL).await?;
        let known = std::sync::Arc::new(std::sync::Mutex::new(Known::default()));
        let task = tokio::spawn({
            let known = known.clone();
            async move {
                while let Some(change) = changes.next().await {
                    let mut known = known.lock().expect("presence lock");
                    match change {
                        PresenceChange::Seen(agent) => {
                            if let Ok(key) = agent.entry_key() {
                                known.agents.insert(key, agent);
                            }
                        }
                        PresenceChange::Left(key) | PresenceChange::Expired(key) => {
                            known.agents.remove(&key);
                        }
                        PresenceChange::Alive(beat) => {
                            known.beats.insert(beat.instance_id, beat.last_seen);
                        }
                        PresenceChange::Stopped(instance) | PresenceChange::Died(instance) => {
                            known.beats.remove(&instance);
                        }
                    }
                }
            }
        });
        Ok(Self { known, task })
    }

    /// The agents online now, as [`online_agents`] tells them.
    pub fn now(&self) -> Vec<AgentPresence> {
        let known = self.known.lock().expect("presence lock");
        joined(known.agents.values().cloned(), &known.beats)
    }
}

impl Drop for OnlineAgents {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The presence entries present now, then every change to them.
pub(crate) async fn changes(
    store: &StateStore,
    poll: Duration,
) -> Result<BoxStream<'static, PresenceChange>, StateError> {
    Ok(store
        .entry_changes(poll)
        .await?
        .filter_map(|change| futures::future::ready(presence_change(change)))
        .boxed())
}

/// An entry change as what it means for presence.
fn presence_change(change: EntryChange) -> Option<PresenceChange> {
    Some(match change {
        EntryChange::Put(key, value) => match decode(&key, &value)? {
            Decoded::Agent(agent) => PresenceChange::Seen(agent),
            Decoded::Instance(beat) => PresenceChange::Alive(beat),
        },
        EntryChange::Removed(key) => match heartbeat_of(&key) {
            Some(instance) => PresenceChange::Stopped(instance),
            None => PresenceChange::Left(key),
        },
        EntryChange::Expired(key) => match heartbeat_of(&key) {
            Some(instance) => PresenceChange::Died(instance),
            None => PresenceChange::Expired(key),
        },
    })
}

/// What a presence entry holds.
enum Decoded {
    Agent(AgentPresence),
    Instance(InstanceBeat),
}

/// An entry's value by its key's form; what another program wrote there is skipped.
fn decode(key: &EntryKey, value: &[u8]) -> Option<Decoded> {
    let decoded = if heartbeat_of(key).is_some() {
        serde_json::from_slice(value).map(Decoded::Instance)
    } else {
        serde_json::from_slice(value).map(Decoded::Agent)
    };
    match decoded {
        Ok(decoded) => Some(decoded),
        Err(err) => {
            tracing::warn!(?key, %err, "presence entry is not a presence record; ignored");
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
    /// An agent's entry was written (or is there when watching starts).
    Seen(AgentPresence),
    /// An agent's entry was removed (a graceful stop).
    Left(EntryKey),
    /// An agent's entry expired (its runtime did not refresh it).
    Expired(EntryKey),
    /// An instance's heartbeat was written.
    Alive(InstanceBeat),
    /// An instance's heartbeat was removed (a graceful stop).
    Stopped(String),
    /// An instance's heartbeat expired: it stopped without a goodbye.
    Died(String),
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

    #[test]
    fn heartbeats_are_told_from_agent_entries_by_their_keys() {
        let name = |text: &str| Name::parse("key part", text).unwrap();
        let key = |parts: &[&str]| EntryKey::new(parts.iter().map(|p| name(p)).collect());
        let beat = instance_key(&name("llm"), &name("i1"));
        assert_eq!(beat, key(&["llm", "i1", "alive"]));
        assert_eq!(heartbeat_of(&beat).as_deref(), Some("i1"));
        // As earlier versions wrote it.
        assert_eq!(heartbeat_of(&key(&["i1"])).as_deref(), Some("i1"));
        // An agent's entry, even one named like a heartbeat's last part.
        assert_eq!(heartbeat_of(&key(&["llm", "i1"])), None);
        assert_eq!(heartbeat_of(&key(&["alive", "i1"])), None);
        assert_eq!(heartbeat_of(&key(&["llm", "i1", "other"])), None);
        // Both decode as what they are.
        let value = br#"{"instance_id": "i1", "host": "h", "last_seen": "2026-01-01T00:00:00Z"}"#;
        assert!(matches!(decode(&beat, value), Some(Decoded::Instance(_))));
        assert!(matches!(
            presence_change(EntryChange::Expired(beat)),
            Some(PresenceChange::Died(instance)) if instance == "i1"
        ));
    }
}
