//! Who would receive work sent to an address: the agents online that take
//! it (from presence) and the durable consumers that read it (one exists for
//! every agent that ever read that inbox, queue or topic, online or not).
//!
//! An address that no agent announced and no consumer ever read is most
//! likely a typo. The work is stored all the same, since an agent may start
//! later; [`Recipients::warning`] says so in one sentence.
//!
//! Sending never asks: [`Bus::send`], [`Bus::submit`] and the rest stay one
//! stored message. [`Bus::recipients`] is a separate call, costing a listing
//! of presence (see there): made where a person or a tool typed the name.

use super::Queue;
use crate::client::Bus;
use crate::name::Name;
use crate::presence::{AgentPresence, online_agents};
use crate::protocol::Priority;
use crate::state::{StateError, StateStore};
use crate::subject::{self, BROADCAST_STREAM, MESSAGES_STREAM, Subject, TASKS_STREAM};
use async_nats::jetstream::context::ConsumerInfoErrorKind;
use futures::TryStreamExt;
use serde::Serialize;
use std::collections::BTreeSet;

/// Where work is sent, for [`Bus::recipients`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Address {
    /// An agent's inbox, `agent.<name>.inbox`.
    Inbox(Name),
    /// An agent's direct channel, `agent.<name>.direct`.
    Direct(Name),
    /// A task of `task_type` on `queue` at `priority`.
    Task {
        /// The queue: one agent's, or a task type's.
        queue: Queue,
        /// The task's type.
        task_type: Name,
        /// Its priority (each has its own consumer).
        priority: Priority,
    },
    /// A broadcast, `broadcast.<topic>`.
    Broadcast(Name),
    /// An announcement to every agent taking messages, `announce.<topic>`.
    Announce(Name),
}

impl Address {
    /// The subject the work is stored on when sent as agent `from` (inbox,
    /// direct, broadcast and announcement subjects carry the sender), or
    /// without a sender.
    pub fn subject_from(&self, from: Option<&Name>) -> Subject {
        match (self, from) {
            (Self::Inbox(agent), Some(from)) => subject::agent_inbox_from(agent, from),
            (Self::Direct(agent), Some(from)) => subject::agent_direct_from(agent, from),
            (Self::Broadcast(topic), Some(from)) => subject::broadcast_from(topic, from),
            (Self::Announce(topic), Some(from)) => subject::announce_from(topic, from),
            _ => self.subject(),
        }
    }

    /// The subject the work is stored on, without a sender.
    pub fn subject(&self) -> Subject {
        match self {
            Self::Inbox(agent) => subject::agent_inbox(agent),
            Self::Direct(agent) => subject::agent_direct(agent),
            Self::Task {
                queue, priority, ..
            } => queue.subject(*priority),
            Self::Broadcast(topic) => subject::broadcast(topic),
            Self::Announce(topic) => subject::announce(topic),
        }
    }
}

/// Who would receive work sent to an [`Address`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Recipients {
    /// Every agent online now, by name, sorted, each name once.
    pub online_agents: Vec<String>,
    /// The online agents that would take it, by name.
    pub online_receivers: Vec<String>,
    /// The durable consumers that read it (of agents online or not).
    pub consumers: Vec<String>,
    /// Why nobody may ever receive it, in one sentence; `None` when someone would.
    pub warning: Option<String>,
}

/// Why [`Bus::recipients`] could not tell.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RecipientsError {
    /// The presence entries could not be listed.
    #[error("cannot list the agents online: {0}")]
    Presence(#[source] StateError),
    /// The durable consumers could not be looked up.
    #[error("cannot look up the consumers of stream {stream}: {source}")]
    Consumers {
        /// The stream whose consumers were looked up.
        stream: &'static str,
        /// Why.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

/// What kept [`Bus::recipients`] from telling.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum RecipientsErrorKind {
    /// Listing presence failed.
    Presence,
    /// Looking up consumers failed.
    Consumers,
}

impl RecipientsError {
    /// What kept it from telling.
    pub fn kind(&self) -> RecipientsErrorKind {
        match self {
            Self::Presence(_) => RecipientsErrorKind::Presence,
            Self::Consumers { .. } => RecipientsErrorKind::Consumers,
        }
    }

    fn consumers(
        stream: &'static str,
        source: impl std::error::Error + Send + Sync + 'static,
    ) -> Self {
        Self::Consumers {
            stream,
            source: Box::new(source),
        }
    }
}

impl Bus {
    /// Who would receive work sent to `address`, with presence read from
    /// `presence`. The warning is set when no online agent takes it and no
    /// durable consumer reads it, or when the named agent is online and none
    /// of its instances accepts the task type (an instance announcing no
    /// task types, such as an MCP bridge, is taken to accept any).
    ///
    /// It looks at other agents' durable consumers, which an agent identity
    /// may not: ask it with the operator's identity (or none).
    ///
    /// Sending never asks this. It costs one listing of the presence entries
    /// (one read per online agent instance on NATS KV, 64 in flight) and one
    /// consumer lookup; for a broadcast or an announcement, a listing of the
    /// broadcast stream's consumers instead (one request per 256 agents that
    /// take messages).
    pub async fn recipients(
        &self,
        address: &Address,
        presence: &StateStore,
    ) -> Result<Recipients, RecipientsError> {
        let agents = online_agents(presence)
            .await
            .map_err(RecipientsError::Presence)?;
        let online: BTreeSet<&str> = agents.iter().map(|a| a.name.as_str()).collect();
        let online_agents: Vec<String> = online.iter().map(|n| (*n).to_owned()).collect();
        let subject = address.subject();
        let (online_receivers, consumers) = match address {
            Address::Inbox(agent) => (
                named(&agents, agent),
                self.durable(MESSAGES_STREAM, subject::durable::inbox(agent))
                    .await?,
            ),
            Address::Direct(agent) => (
                named(&agents, agent),
                self.durable(MESSAGES_STREAM, subject::durable::direct(agent))
                    .await?,
            ),
            Address::Task {
                queue,
                task_type,
                priority,
            } => {
                let receivers = match queue {
                    Queue::Agent(agent) => named(&agents, agent),
                    Queue::TaskType(_) => accepting(&agents, task_type),
                };
                let consumers = self.durable(TASKS_STREAM, queue.durable(*priority)).await?;
                (receivers, consumers)
            }
            Address::Broadcast(_) | Address::Announce(_) => {
                let consumers = self.reading(BROADCAST_STREAM, &subject).await?;
                let receivers = online
                    .iter()
                    .filter(|agent| {
                        Name::parse("agent name", agent).is_ok_and(|agent| {
                            consumers.contains(&subject::durable::broadcast(&agent))
                        })
                    })
                    .map(|agent| (*agent).to_owned())
                    .collect();
                (receivers, consumers)
            }
        };
        let warning = warning(address, &subject, &agents, &online_receivers, &consumers).map(
            |(problem, outcome)| format!("{problem} ({}): {outcome}", list_online(&online_agents)),
        );
        Ok(Recipients {
            online_agents,
            online_receivers,
            consumers,
            warning,
        })
    }

    /// `[name]` when the durable consumer `name` exists on `stream`, else none.
    async fn durable(
        &self,
        stream: &'static str,
        name: String,
    ) -> Result<Vec<String>, RecipientsError> {
        let handle = self
            .jetstream()
            .get_stream_no_info(stream)
            .await
            .map_err(|err| RecipientsError::consumers(stream, err))?;
        match handle.consumer_info(&name).await {
            Ok(_) => Ok(vec![name]),
            Err(err) if err.kind() == ConsumerInfoErrorKind::NotFound => Ok(Vec::new()),
            Err(err) => Err(RecipientsError::consumers(stream, err)),
        }
    }

    /// The consumers of `stream` whose filters take `subject`, sorted.
    async fn reading(
        &self,
        stream: &'static str,
        subject: &str,
    ) -> Result<Vec<String>, RecipientsError> {
        let handle = self
            .jetstream()
            .get_stream_no_info(stream)
            .await
            .map_err(|err| RecipientsError::consumers(stream, err))?;
        let infos: Vec<_> = handle
            .consumers()
            .try_collect()
            .await
            .map_err(|err| RecipientsError::consumers(stream, err))?;
        let mut names: Vec<String> = infos
            .into_iter()
            .filter(|info| {
                let config = &info.config;
                // No filter at all reads the whole stream.
                let all = config.filter_subject.is_empty() && config.filter_subjects.is_empty();
                all || std::iter::once(&config.filter_subject)
                    .chain(&config.filter_subjects)
                    .any(|filter| !filter.is_empty() && subject::overlaps(filter, subject))
            })
            .map(|info| info.name)
            .collect();
        names.sort();
        Ok(names)
    }
}

/// The online agents named `agent` (its name once, or nothing).
fn named(agents: &[AgentPresence], agent: &Name) -> Vec<String> {
    if agents.iter().any(|a| a.name == agent.as_str()) {
        vec![agent.to_string()]
    } else {
        Vec::new()
    }
}

/// The online agents accepting `task_type`, sorted, each once.
fn accepting(agents: &[AgentPresence], task_type: &Name) -> Vec<String> {
    let names: BTreeSet<&str> = agents
        .iter()
        .filter(|a| a.task_types.iter().any(|t| t.name == task_type.as_str()))
        .map(|a| a.name.as_str())
        .collect();
    names.into_iter().map(str::to_owned).collect()
}

/// Why nobody may receive the work, and what becomes of it (the list of
/// who is online goes between the two).
fn warning(
    address: &Address,
    subject: &str,
    agents: &[AgentPresence],
    receivers: &[String],
    consumers: &[String],
) -> Option<(String, &'static str)> {
    if let Address::Task {
        queue: Queue::Agent(agent),
        task_type,
        ..
    } = address
    {
        return task_warning(agent, task_type, subject, agents, consumers);
    }
    if !receivers.is_empty() || !consumers.is_empty() {
        return None;
    }
    Some(match address {
        Address::Inbox(agent) | Address::Direct(agent) => (
            format!("no agent \"{agent}\" is online or has ever read {subject}"),
            "the message is stored until one starts; check the name",
        ),
        Address::Task { task_type, .. } => (
            format!(
                "no online agent accepts task type \"{task_type}\" and none has ever worked {subject}"
            ),
            "the task is stored until one starts; check the task type",
        ),
        Address::Broadcast(topic) => (
            format!(
                "no agent is subscribed to topic \"{topic}\" and no durable consumer reads {subject}"
            ),
            "the message is stored for agents that subscribe within the stream's max_age; check the topic",
        ),
        Address::Announce(_) => (
            format!("no agent takes messages and no durable consumer reads {subject}"),
            "the announcement is stored for agents that start within the stream's max_age",
        ),
    })
}

/// A task for one agent: nobody by that name, or nobody accepting its type.
fn task_warning(
    agent: &Name,
    task_type: &Name,
    subject: &str,
    agents: &[AgentPresence],
    consumers: &[String],
) -> Option<(String, &'static str)> {
    let instances: Vec<&AgentPresence> =
        agents.iter().filter(|a| a.name == agent.as_str()).collect();
    if instances.is_empty() {
        return consumers.is_empty().then(|| {
            (
                format!("no agent \"{agent}\" is online or has ever worked {subject}"),
                "the task is stored until one starts; check the name",
            )
        });
    }
    // An instance announcing no task types (an MCP bridge) takes any by hand.
    let accepted = |a: &&AgentPresence| {
        a.task_types.is_empty() || a.task_types.iter().any(|t| t.name == task_type.as_str())
    };
    if instances.iter().any(accepted) {
        return None;
    }
    let types: BTreeSet<&str> = instances
        .iter()
        .flat_map(|a| a.task_types.iter().map(|t| t.name.as_str()))
        .collect();
    let types: Vec<&str> = types.into_iter().collect();
    Some((
        format!(
            "agent \"{agent}\" is online but does not accept task type \"{task_type}\", only {}",
            types.join(", ")
        ),
        "it will reject the task; check the task type",
    ))
}

/// `online: a, b`, or that nobody is.
fn list_online(online: &[String]) -> String {
    if online.is_empty() {
        "no agent is online".to_owned()
    } else {
        format!("online: {}", online.join(", "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::agent::TaskTypeSpec;

    fn name(text: &str) -> Name {
        Name::parse("test name", text).unwrap()
    }

    fn online(agent: &str, task_types: &[&str]) -> AgentPresence {
        let specs: Vec<TaskTypeSpec> = task_types
            .iter()
            .map(|t| TaskTypeSpec::new(t).unwrap())
            .collect();
        AgentPresence::new(&name(agent), "i1", &specs)
    }

    fn task(agent: &str, task_type: &str) -> Address {
        Address::Task {
            queue: Queue::agent(agent).unwrap(),
            task_type: name(task_type),
            priority: Priority::Normal,
        }
    }

    fn problem(address: &Address, agents: &[AgentPresence], consumers: &[&str]) -> Option<String> {
        let consumers: Vec<String> = consumers.iter().map(|c| (*c).to_owned()).collect();
        let receivers = match address {
            Address::Task {
                queue: Queue::TaskType(t),
                ..
            } => accepting(agents, t),
            Address::Inbox(a) | Address::Direct(a) => named(agents, a),
            _ => Vec::new(),
        };
        let subject = address.subject();
        warning(address, &subject, agents, &receivers, &consumers).map(|(problem, _)| problem)
    }

    #[test]
    fn an_agent_that_ever_read_its_inbox_is_no_typo_even_offline() {
        let inbox = Address::Inbox(name("mailbox"));
        assert_eq!(problem(&inbox, &[], &["inbox-mailbox"]), None);
        assert_eq!(problem(&inbox, &[online("mailbox", &["x"])], &[]), None);
        assert_eq!(
            problem(&inbox, &[online("other", &["x"])], &[]).as_deref(),
            Some("no agent \"mailbox\" is online or has ever read agent.mailbox.inbox")
        );
    }

    #[test]
    fn a_task_type_is_checked_against_every_online_instance_of_the_agent() {
        let agents = [
            online("llm", &["generate_text"]),
            online("llm", &["summarize"]),
        ];
        assert_eq!(problem(&task("llm", "summarize"), &agents, &[]), None);
        assert_eq!(
            problem(&task("llm", "generate_txt"), &agents, &["tasks-llm-normal"]).as_deref(),
            Some(
                "agent \"llm\" is online but does not accept task type \"generate_txt\", only generate_text, summarize"
            )
        );
        // Offline with a consumer: its task types are not known, no warning.
        assert_eq!(
            problem(&task("llm", "anything"), &[], &["tasks-llm-normal"]),
            None
        );
        // An instance announcing no task types (an MCP bridge) claims any.
        let bridge = [online("claude", &[])];
        assert_eq!(problem(&task("claude", "anything"), &bridge, &[]), None);
    }

    #[test]
    fn a_shared_queue_needs_an_agent_accepting_the_type_or_a_consumer() {
        let any = Address::Task {
            queue: Queue::task_type("summarize").unwrap(),
            task_type: name("summarize"),
            priority: Priority::High,
        };
        let agents = [online("llm", &["summarize"])];
        assert_eq!(problem(&any, &agents, &[]), None);
        assert_eq!(problem(&any, &[], &["work-summarize-high"]), None);
        assert_eq!(
            problem(&any, &[online("llm", &["other"])], &[]).as_deref(),
            Some(
                "no online agent accepts task type \"summarize\" and none has ever worked work.summarize.high"
            )
        );
    }

    #[test]
    fn who_is_online_is_listed_or_said_to_be_nobody() {
        assert_eq!(list_online(&[]), "no agent is online");
        assert_eq!(
            list_online(&["a".to_owned(), "b".to_owned()]),
            "online: a, b"
        );
    }
}
