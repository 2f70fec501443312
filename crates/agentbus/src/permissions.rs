//! What an agent identity may publish and subscribe to: the least-privilege
//! permissions nats-server enforces for one agent.
//!
//! An agent may serve its own tasks, call other agents, send to inboxes and
//! broadcasts with its own name as the sender, submit to work queues, work
//! its own durable consumers, keep its own state, write its own presence and
//! read everyone's, read and write the records and logs of the tasks it
//! runs and of those it sent (under their [`crate::TaskKey`]), and cancel and
//! answer the tasks it sent.
//! It may not read another agent's inbox, direct messages, state or queue by
//! any path (subscribing, a consumer on another filter, reading a stream's
//! messages by sequence), serve or answer another agent's tasks, send in
//! another agent's name, manage streams or touch `$SYS`.
//!
//! nats-server checks a consumer's filter only when it is part of the create
//! request's subject (`$JS.API.CONSUMER.CREATE.<stream>.<consumer>.<filter>`),
//! and a permission with a wildcard never admits a subject that has a
//! wildcard token in the same place. So an agent makes its own work-queue
//! consumers (one filter each, named after it), and the consumers of its
//! inbox and direct channel, which filter on two subjects, are provisioned
//! for it by the operator ([`crate::delivery::ConsumerSpec::is_provisioned`]).

use crate::delivery::{ConsumerSpec, Queue};
use crate::name::Name;
use crate::protocol::Priority;
use crate::state::{PRESENCE_BUCKET, STATE_BUCKET};
use crate::subject::{
    self, BROADCAST_STREAM, PARKED_LETTERS_BUCKET, TASK_EVENTS_STREAM, TASK_RESULTS_BUCKET,
    TASKS_STREAM,
};
use std::time::Duration;

/// The streams an agent identity may describe (`STREAM.INFO`). A
/// description can list every subject a stream holds with its count, so the
/// others are not described to agents: their subjects name who messages,
/// calls, queues work for whom or keeps state under which key. This one is:
/// the presence bucket, which every agent reads whole anyway.
pub const DESCRIBABLE_STREAMS: [&str; 1] = [PRESENCE_STREAM];

/// The stream of the presence bucket.
const PRESENCE_STREAM: &str = "KV_agent-presence";

/// How long a served request may take to be answered: the identity may
/// publish one reply to each request it received, this long after it.
pub const RESPONSE_WINDOW: Duration = Duration::from_secs(24 * 60 * 60);

/// What one agent identity is granted.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Grant {
    /// The agent.
    pub agent: Name,
    /// The shared work queues (`work.<type>`) it may take tasks from.
    #[serde(default)]
    pub work_types: Vec<Name>,
    /// The agents it may call and queue tasks for; every agent when `None`.
    #[serde(default)]
    pub may_call: Option<Vec<Name>>,
    /// The agents it may send inbox and direct messages to; every agent when `None`.
    #[serde(default)]
    pub may_message: Option<Vec<Name>>,
    /// The application events (subject patterns outside the bus's own
    /// subjects, such as `chat.>`) it may publish and subscribe to.
    #[serde(default)]
    pub events: Vec<EventPattern>,
}

/// A subject pattern of application events (`chat.message.new`, `chat.>`):
/// valid, and outside every subject the bus itself uses
/// ([`subject::BUS_SUBJECTS`]).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct EventPattern(String);

/// Why a pattern is not one of application events.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvalidEventPattern {
    /// Not a subject pattern.
    #[error(transparent)]
    Subject(#[from] subject::InvalidSubject),
    /// It reaches subjects of the bus itself.
    #[error(
        "event pattern {pattern} reaches the bus's own subjects ({reserved}); application events need a first token of their own, such as chat.>"
    )]
    Reserved {
        /// The pattern.
        pattern: String,
        /// The bus's subjects it overlaps.
        reserved: &'static str,
    },
}

impl EventPattern {
    /// Validates an application event pattern.
    pub fn parse(text: &str) -> Result<Self, InvalidEventPattern> {
        let pattern = subject::SubjectPattern::parse(text)?;
        if let Some(reserved) = subject::BUS_SUBJECTS
            .into_iter()
            .find(|reserved| subject::overlaps(pattern.as_str(), reserved))
        {
            return Err(InvalidEventPattern::Reserved {
                pattern: text.to_owned(),
                reserved,
            });
        }
        Ok(Self(text.to_owned()))
    }

    /// The pattern.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for EventPattern {
    type Error = InvalidEventPattern;

    fn try_from(text: String) -> Result<Self, Self::Error> {
        Self::parse(&text)
    }
}

impl From<EventPattern> for String {
    fn from(pattern: EventPattern) -> Self {
        pattern.0
    }
}

impl std::fmt::Display for EventPattern {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// Subjects an identity may publish and subscribe to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Permissions {
    /// Subjects (with wildcards) it may publish to.
    pub publish: Vec<String>,
    /// Subjects (with wildcards) it may subscribe to.
    pub subscribe: Vec<String>,
    /// How long after a request it may publish its one reply
    /// (nats-server's `allow_responses`).
    pub response_window: Duration,
}

const PRIORITIES: [Priority; 4] = [
    Priority::Critical,
    Priority::High,
    Priority::Normal,
    Priority::Low,
];

impl Grant {
    /// An agent that may reach every agent and serves no shared work queue.
    pub fn new(agent: Name) -> Self {
        Self {
            agent,
            work_types: Vec::new(),
            may_call: None,
            may_message: None,
            events: Vec::new(),
        }
    }

    /// The durable consumers this agent works: its queue at each priority,
    /// the shared queues it serves, its inbox and direct channel.
    pub fn consumers(&self) -> Vec<ConsumerSpec> {
        let mut queues = vec![Queue::Agent(self.agent.clone())];
        queues.extend(self.work_types.iter().cloned().map(Queue::TaskType));
        let mut specs: Vec<ConsumerSpec> = queues
            .iter()
            .flat_map(|queue| PRIORITIES.map(|p| ConsumerSpec::task_queue(queue, p)))
            .collect();
        specs.push(ConsumerSpec::inbox(&self.agent));
        specs.push(ConsumerSpec::direct(&self.agent));
        specs
    }

    /// The permissions nats-server enforces for this agent.
    pub fn permissions(&self) -> Permissions {
        let me = self.agent.as_str();
        let targets = |list: &Option<Vec<Name>>| -> Vec<String> {
            match list {
                None => vec!["*".to_owned()],
                Some(names) => names.iter().map(ToString::to_string).collect(),
            }
        };
        // Its own replies (a round trip to itself confirms subscriptions).
        let mut publish = vec![format!("{}.>", subject::agent_reply_prefix(&self.agent))];
        // What tells its worker that its queues have work.
        let mut queues = vec![subject::task_queue(&self.agent, Priority::Normal)];
        queues.extend(
            self.work_types
                .iter()
                .map(|t| subject::work_queue(t, Priority::Normal)),
        );
        // Where its own deliveries come from: what it may dead-letter.
        let mut delivered: Vec<String> = queues.iter().flat_map(subject::queue_patterns).collect();
        delivered.extend(subject::with_senders(&subject::agent_inbox(&self.agent)));
        delivered.extend(subject::with_senders(&subject::agent_direct(&self.agent)));
        delivered.extend(["broadcast.*".to_owned(), "broadcast.*.*".to_owned()]);
        delivered.extend(subject::ALL_ANNOUNCEMENTS.map(str::to_owned));
        let mut subscribe = vec![
            format!("{}.>", subject::agent_reply_prefix(&self.agent)),
            // Its own tasks over request/reply: on one subscription that
            // also hears its queue ring (and sees its inbox and direct
            // channel), or on the two task subjects when it works no queue.
            subject::agent_subjects(&self.agent).to_string(),
            subject::agent_task(&self.agent).to_string(),
            subject::agent_tasks_stamped(&self.agent).to_string(),
            // Discovery requests, answered once each.
            "$SRV.>".to_owned(),
            // Control requests to the tasks it runs, and those of clients
            // with no agent name that name no runner; only the holder
            // answers.
            subject::agent_task_controls(&self.agent),
            subject::ANONYMOUS_UNADDRESSED_TASK_CONTROLS.to_owned(),
            subject::events::ALL.to_owned(),
            // What tells its worker that its inbox, direct channel and
            // broadcasts have work (broadcasts are for everyone).
            "broadcast.*".to_owned(),
            "broadcast.*.*".to_owned(),
        ];
        subscribe.extend(subject::ALL_ANNOUNCEMENTS.map(str::to_owned));
        subscribe.extend(self.events.iter().map(ToString::to_string));
        subscribe.extend(queues.iter().flat_map(subject::queue_patterns));
        subscribe.extend(self.work_types.iter().map(subject::work_task_controls));
        subscribe.extend(subject::with_senders(&subject::agent_inbox(&self.agent)));
        subscribe.extend(subject::with_senders(&subject::agent_direct(&self.agent)));
        for to in targets(&self.may_call) {
            publish.push(format!("agent.{to}.task"));
            publish.push(format!("agent.{to}.task.{me}"));
            publish.push(format!("tasks.{to}"));
            publish.push(format!("tasks.{to}.*"));
            // The ring of a task queued at a priority other than normal.
            publish.push(subject::agent_rings(&to));
        }
        for to in targets(&self.may_message) {
            publish.push(format!("agent.{to}.inbox.{me}"));
            publish.push(format!("agent.{to}.direct.{me}"));
        }
        publish.extend([
            format!("broadcast.*.{me}"),
            format!("announce.*.{me}"),
            "work.*".to_owned(),
            "work.*.*".to_owned(),
            // Platform events in its own name: a receiver knows who reported.
            format!("platform.events.*.{me}"),
            // Control requests in its own name, to the tasks it sent, at
            // their runners (the runtime holding a task obeys its caller
            // only).
            format!("task.{me}.*.*.*.control.*"),
            "$SRV.>".to_owned(),
            // Which stream stores a subject: names only, never what they hold.
            "$JS.API.STREAM.NAMES".to_owned(),
        ]);
        // Dead letters of its own deliveries only, in the stream or parked
        // while the stream is full: a letter it forged for another queue
        // could be replayed onto that queue.
        for pattern in &delivered {
            publish.push(subject::dead_letter(pattern).to_string());
            // Parked under `<subject>.<sequence>`.
            publish.push(format!("$KV.{PARKED_LETTERS_BUCKET}.{pattern}.*"));
        }
        publish.extend(self.events.iter().map(ToString::to_string));
        publish.extend(
            DESCRIBABLE_STREAMS
                .iter()
                .map(|stream| format!("$JS.API.STREAM.INFO.{stream}")),
        );
        // The last task on each of its queues, which its worker's sweep
        // reads to find work nothing rang for (a redelivery).
        publish.extend(
            queues
                .iter()
                .flat_map(subject::queue_patterns)
                .map(|pattern| format!("$JS.API.DIRECT.GET.{TASKS_STREAM}.{pattern}")),
        );
        // Its durable consumers.
        for spec in self.consumers() {
            let (stream, name) = (spec.stream(), spec.name());
            if !spec.is_provisioned() {
                let [filter] = spec.filters() else {
                    unreachable!("a consumer an agent makes has one filter")
                };
                publish.push(format!("$JS.API.CONSUMER.CREATE.{stream}.{name}.{filter}"));
                publish.push(format!("$JS.API.CONSUMER.DELETE.{stream}.{name}"));
            }
            publish.push(format!("$JS.API.CONSUMER.INFO.{stream}.{name}"));
            publish.push(format!("$JS.API.CONSUMER.MSG.NEXT.{stream}.{name}"));
            publish.push(format!("$JS.ACK.{stream}.{name}.>"));
        }
        // Broadcasts are for everyone: it makes its own consumer of them,
        // with the topics it chooses.
        let broadcasts = subject::durable::broadcast(&self.agent);
        publish.extend([
            format!("$JS.API.CONSUMER.CREATE.{BROADCAST_STREAM}.{broadcasts}"),
            format!("$JS.API.CONSUMER.INFO.{BROADCAST_STREAM}.{broadcasts}"),
            format!("$JS.API.CONSUMER.MSG.NEXT.{BROADCAST_STREAM}.{broadcasts}"),
            format!("$JS.ACK.{BROADCAST_STREAM}.{broadcasts}.>"),
        ]);
        // Its own state: written, read by key, listed and watched.
        let own_state = format!("$KV.{STATE_BUCKET}.{me}.>");
        publish.extend([
            own_state.clone(),
            format!("$JS.API.DIRECT.GET.KV_{STATE_BUCKET}.{own_state}"),
            format!("$JS.API.CONSUMER.CREATE.KV_{STATE_BUCKET}.*.{own_state}"),
        ]);
        // Presence: its own entries and its runtime's heartbeat
        // (`<agent>.<instance>` and `<agent>.<instance>.alive`) written,
        // everyone's read and watched.
        publish.extend([
            format!("$KV.{PRESENCE_BUCKET}.{me}.>"),
            format!("$JS.API.DIRECT.GET.KV_{PRESENCE_BUCKET}.$KV.{PRESENCE_BUCKET}.>"),
            format!("$JS.API.CONSUMER.CREATE.KV_{PRESENCE_BUCKET}.*.$KV.{PRESENCE_BUCKET}.>"),
            // A watch of the whole bucket asks without a name or filter:
            // the bucket holds presence only, which everyone may read.
            format!("$JS.API.CONSUMER.CREATE.KV_{PRESENCE_BUCKET}"),
        ]);
        // Task records and logs: of the tasks it runs (its own, over
        // request/reply or its queue, and those of the shared queues it
        // works) and of those it sent, each kept under a key naming both
        // (`TaskKey`), and no others.
        let mut runs = vec![format!("agent.{me}.*")];
        runs.extend(self.work_types.iter().map(|t| format!("work.{t}.*")));
        let sent = format!("*.*.{me}");
        for scope in runs.iter().chain([&sent]) {
            let record = format!("$KV.{TASK_RESULTS_BUCKET}.{scope}.*");
            let log = format!("task.{scope}.*.events");
            publish.extend([
                format!("$JS.API.DIRECT.GET.KV_{TASK_RESULTS_BUCKET}.{record}"),
                format!("$JS.API.CONSUMER.CREATE.KV_{TASK_RESULTS_BUCKET}.*.{record}"),
                record,
                format!("$JS.API.DIRECT.GET.{TASK_EVENTS_STREAM}.{log}"),
                format!("$JS.API.CONSUMER.CREATE.{TASK_EVENTS_STREAM}.*.{log}"),
                log,
            ]);
        }
        // The effects of the tasks it runs (`<task key>.<effect>`), which
        // the tasks' callers may not write.
        for scope in &runs {
            let effect = format!("$KV.{TASK_RESULTS_BUCKET}.{scope}.*.*");
            publish.extend([
                format!("$JS.API.DIRECT.GET.KV_{TASK_RESULTS_BUCKET}.{effect}"),
                effect,
            ]);
        }
        publish.push(format!("$JS.API.CONSUMER.DELETE.{TASK_EVENTS_STREAM}.*"));
        Permissions {
            publish,
            subscribe,
            response_window: RESPONSE_WINDOW,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_presence_stream_is_the_presence_buckets() {
        assert_eq!(PRESENCE_STREAM, format!("KV_{PRESENCE_BUCKET}"));
    }

    #[test]
    fn event_patterns_stay_outside_the_bus_subjects() {
        for ok in ["chat.message.new", "chat.>", "orders.*.created"] {
            assert_eq!(EventPattern::parse(ok).unwrap().as_str(), ok);
        }
        for reserved in [
            "agent.bob.inbox",
            "tasks.>",
            "*.message.new",
            ">",
            "task.x.events",
        ] {
            let err = EventPattern::parse(reserved).unwrap_err();
            assert!(
                matches!(err, InvalidEventPattern::Reserved { .. }),
                "{reserved}: {err}"
            );
        }
        assert!(matches!(
            EventPattern::parse("$JS.API.>").unwrap_err(),
            InvalidEventPattern::Subject(_)
        ));
    }

    #[test]
    fn granted_events_are_published_and_subscribed() {
        let mut grant = Grant::new(Name::parse("agent", "chat").unwrap());
        let before = grant.permissions();
        grant.events = vec![EventPattern::parse("chat.>").unwrap()];
        let after = grant.permissions();
        assert!(!before.publish.contains(&"chat.>".to_owned()));
        assert!(after.publish.contains(&"chat.>".to_owned()));
        assert!(after.subscribe.contains(&"chat.>".to_owned()));
        // Stored and read back as the pattern, refused when it is not one.
        let json = serde_json::to_value(&grant).unwrap();
        assert_eq!(json["events"], serde_json::json!(["chat.>"]));
        let mut bad = json;
        bad["events"] = serde_json::json!(["agent.>"]);
        assert!(serde_json::from_value::<Grant>(bad).is_err());
    }
}
