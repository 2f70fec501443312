//! Every subject agentbus uses is built here, from validated [`Name`]s, and
//! every subject agentbus reads back is parsed here.
//!
//! | subject | carries |
//! | --- | --- |
//! | `agent.<name>.task` | TaskRequest over core request/reply (never in a stream) |
//! | `agent.<name>.inbox`, `agent.<name>.direct` | durable messages to one agent (`agent-messages`) |
//! | `tasks.<agent>[.<priority>]`, `work.<task_type>[.<priority>]` | work queues (`agent-tasks`) |
//! | `broadcast.<topic>`, `announce.<topic>` | announcements to every agent (`agent-broadcast`) |
//! | `dlq.<original subject>` | dead letters (`agent-dlq`) |
//! | `platform.events.<event>` | lifecycle and task events ([`crate::events`]) |
//! | `task.<task key>.events` | a task's event log (`agent-task-events`, [`crate::task_log`]), under its [`TaskKey`] |
//! | `task.<from>.<runner>.<task_id>.control.<verb>` | cancel, answer or ask about a task held by a runtime of its runner (`agent.<name>`, `work.<type>`, `_._` unknown) (core request/reply) |
//! | `$SRV.PING\|INFO\|STATS[.<agent>[.<instance>]]` | discovery (the NATS services protocol) |
//! | `agentbus.check.<run>` | the publish/subscribe probe of `agentbus check` |
//! | `<inbox>.<n>` | a worker's pull requests, answered on one subscription `<inbox>.*` |
//!
//! Durable consumer names are built here too, from the same validated names, and
//! so are the names and subjects of `agentbus check` runs ([`CheckRun`]).
//! `docs/PROTOCOL.md` in the repository describes each for other clients.

use crate::name::Name;
use crate::protocol::Priority;
use crate::task_id::{TaskId, TaskKey};
use std::fmt;

/// A subject built here or validated by [`Subject::parse`]; cheap to clone
/// and handed to the NATS client without a copy.
#[derive(Clone, PartialEq, Eq)]
pub struct Subject(async_nats::Subject);

impl std::hash::Hash for Subject {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.as_str().hash(state);
    }
}

impl Subject {
    /// Validates a subject to publish to: tokens separated by dots, no
    /// wildcards, no white space, not in the reserved `$` or `_INBOX` spaces.
    pub fn parse(value: &str) -> Result<Self, InvalidSubject> {
        check_subject(value, false)?;
        Ok(Self::built(value.to_owned()))
    }

    /// A subject made here from validated parts.
    fn built(value: String) -> Self {
        Self(async_nats::Subject::from(value))
    }

    /// The subject as a string slice.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The subject as the NATS client takes it.
    pub fn to_nats(&self) -> async_nats::Subject {
        self.0.clone()
    }

    /// The subject as the NATS client takes it, without a copy: a clone of
    /// a subject built from a `String` allocates.
    pub fn into_nats(self) -> async_nats::Subject {
        self.0
    }
}

impl async_nats::subject::ToSubject for Subject {
    fn to_subject(&self) -> async_nats::Subject {
        self.0.clone()
    }
}

impl async_nats::subject::ToSubject for &Subject {
    fn to_subject(&self) -> async_nats::Subject {
        self.0.clone()
    }
}

impl std::ops::Deref for Subject {
    type Target = str;
    fn deref(&self) -> &str {
        &self.0
    }
}

impl AsRef<str> for Subject {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl PartialEq<str> for Subject {
    fn eq(&self, other: &str) -> bool {
        self.as_str() == other
    }
}

impl PartialEq<String> for Subject {
    fn eq(&self, other: &String) -> bool {
        self.as_str() == other
    }
}

impl PartialEq<&str> for Subject {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

impl From<Subject> for async_nats::Subject {
    fn from(subject: Subject) -> Self {
        subject.0
    }
}

impl From<Subject> for String {
    fn from(subject: Subject) -> Self {
        subject.as_str().to_owned()
    }
}

impl fmt::Display for Subject {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for Subject {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.as_str(), f)
    }
}

impl serde::Serialize for Subject {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

/// A subject pattern to subscribe to: like [`Subject`], plus `*` as a whole
/// token and `>` as the last token.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct SubjectPattern(String);

impl SubjectPattern {
    /// Validates a subject pattern to subscribe to.
    pub fn parse(value: &str) -> Result<Self, InvalidSubject> {
        check_subject(value, true)?;
        Ok(Self(value.to_owned()))
    }

    /// The pattern as a string slice.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for SubjectPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl From<SubjectPattern> for String {
    fn from(pattern: SubjectPattern) -> Self {
        pattern.0
    }
}

impl PartialEq<&str> for SubjectPattern {
    fn eq(&self, other: &&str) -> bool {
        self.0 == *other
    }
}

/// A subject or pattern that cannot be used, and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid subject {value:?}: {reason}")]
pub struct InvalidSubject {
    /// The rejected value.
    pub value: String,
    /// Why it was rejected.
    pub reason: &'static str,
}

/// Subjects answered over core request/reply. A stream capturing one of them
/// would answer the requester with its own PubAck instead of the agent's reply.
pub const REQUEST_REPLY_SUBJECTS: [&str; 4] = [
    "agent.*.task",
    "agent.*.task.*",
    ALL_TASK_CONTROLS,
    "_INBOX.>",
];

/// Stream holding direct messages (`agent.<name>.inbox|direct`).
pub const MESSAGES_STREAM: &str = "agent-messages";
/// Stream holding broadcasts and announcements.
pub const BROADCAST_STREAM: &str = "agent-broadcast";
/// Work-queue stream holding tasks.
pub const TASKS_STREAM: &str = "agent-tasks";
/// Stream holding dead letters.
pub const DEAD_LETTER_STREAM: &str = "agent-dlq";
/// KV bucket holding the state and result of queued tasks.
pub const TASK_RESULTS_BUCKET: &str = "agent-task-results";
/// KV bucket holding dead letters that the dead-letter stream refused (it
/// was full), by original subject and sequence, until they are moved there.
pub const PARKED_LETTERS_BUCKET: &str = "agent-dlq-parked";
/// Stream holding every task's event log.
pub const TASK_EVENTS_STREAM: &str = "agent-task-events";
/// The bus's streams (its key-value buckets aside), by name.
pub const STREAMS: [&str; 5] = [
    MESSAGES_STREAM,
    BROADCAST_STREAM,
    TASKS_STREAM,
    TASK_EVENTS_STREAM,
    DEAD_LETTER_STREAM,
];
/// The subjects of every task's event log: what [`TASK_EVENTS_STREAM`] captures.
pub const ALL_TASK_EVENTS: &str = "task.*.*.*.*.events";
/// Every control request to a task: what a runtime without an agent
/// identity subscribes to once. One with an identity hears the requests to
/// its own tasks ([`agent_task_controls`], [`work_task_controls`]) and
/// [`ANONYMOUS_UNADDRESSED_TASK_CONTROLS`].
pub const ALL_TASK_CONTROLS: &str = "task.*.*.*.*.control.*";
/// The control requests of clients without an agent identity (the
/// operator, seed-format clients) that do not know who runs the task (a
/// request/reply task that logs nothing has no key to look up): every
/// runtime hears them, and obeys them for a task it holds. An agent
/// identity names the runner of every request it sends about a task it
/// waits for, so no agent hears who another agent asks about.
pub const ANONYMOUS_UNADDRESSED_TASK_CONTROLS: &str = "task._._._.*.control.*";
/// Every subject the bus itself uses, as patterns: application subjects
/// (events an agent publishes with [`crate::Bus::publish`]) stay outside.
pub const BUS_SUBJECTS: [&str; 10] = [
    "agent.>",
    "tasks.>",
    "work.>",
    "broadcast.>",
    "announce.>",
    "task.>",
    "platform.>",
    "dlq.>",
    "_INBOX.>",
    "$SRV.>",
];

/// Subject of the event log of the task keyed `key`: `task.<key>.events`.
pub fn task_events(key: &TaskKey) -> Subject {
    Subject::built(format!("task.{key}.events"))
}

/// The log subjects matching a key pattern ([`TaskKey`]'s with wildcards).
pub(crate) fn task_events_matching(key_pattern: &str) -> String {
    format!("task.{key_pattern}.events")
}

/// Reads a log subject back into its task's key.
pub fn parse_task_events(subject: &str) -> Option<TaskKey> {
    TaskKey::parse(subject.strip_prefix("task.")?.strip_suffix(".events")?)
}

/// The name of the ephemeral consumer of one watch of a task's log.
pub fn watch_consumer() -> String {
    format!("watch-{}", uuid::Uuid::new_v4().simple())
}

/// A request about a task, answered by the runtime that holds it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TaskControl {
    /// Stop it: the handler's `cancelled()` resolves.
    Cancel,
    /// The answer to the question the handler asked.
    Answer,
    /// Where it stands (running or waiting for input).
    Status,
}

impl TaskControl {
    fn as_str(self) -> &'static str {
        match self {
            Self::Cancel => "cancel",
            Self::Answer => "answer",
            Self::Status => "status",
        }
    }
}

/// Subject of a control request to task `task_id` from `from`, for the
/// runtimes of the task's runner: `task.<from>.<runner>.<task_id>.control.<verb>`,
/// `<from>` `_` for a client with no agent name, `<runner>` the first two
/// tokens of the task's key (`agent.<name>` or `work.<type>`), or `_._` when
/// the asker does not know who runs it (runtimes without an identity hear
/// it then, and those with one when the asker has no agent name either:
/// see [`ANONYMOUS_UNADDRESSED_TASK_CONTROLS`]). Publish permissions let an
/// agent's identity use only its own name, so the runtime holding the task
/// knows who asks: it obeys the task's caller, and a client with no agent
/// identity (the operator). Subscribe permissions let an agent's identity
/// hear the requests to the tasks it may run, and those of clients with no
/// agent name that name no runner.
pub fn task_control(
    from: Option<&Name>,
    key: Option<&TaskKey>,
    task_id: &TaskId,
    control: TaskControl,
) -> Subject {
    let from = from.map_or(crate::task_id::NO_CALLER, Name::as_str);
    let runner = key.map_or(UNKNOWN_RUNNER, TaskKey::runner);
    Subject::built(format!(
        "task.{from}.{runner}.{task_id}.control.{}",
        control.as_str()
    ))
}

/// The runner tokens of a control request whose asker does not know who
/// runs the task.
const UNKNOWN_RUNNER: &str = "_._";

/// A control request read back from its subject.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParsedControl {
    /// Who asks: `None` for a client with no agent name.
    pub from: Option<Name>,
    /// Who the asker says runs the task (`agent.<name>` or `work.<type>`),
    /// `None` when it does not know.
    pub runner: Option<String>,
    /// The task.
    pub task_id: TaskId,
    /// What is asked of it.
    pub control: TaskControl,
}

/// Reads a control subject back; `None` for anything [`task_control`]
/// would not build.
pub fn parse_task_control(subject: &str) -> Option<ParsedControl> {
    let [
        Some("task"),
        Some(from),
        Some(kind),
        Some(runner),
        Some(id),
        Some("control"),
        Some(verb),
        None,
    ] = first_tokens(subject)
    else {
        return None;
    };
    let from = match from {
        crate::task_id::NO_CALLER => None,
        from => Some(Name::parse("sender", from).ok()?),
    };
    let runner = match (kind, runner) {
        ("_", "_") => None,
        ("agent" | "work", name) => Some(format!("{kind}.{}", Name::parse("runner", name).ok()?)),
        _ => return None,
    };
    let control = match verb {
        "cancel" => TaskControl::Cancel,
        "answer" => TaskControl::Answer,
        "status" => TaskControl::Status,
        _ => return None,
    };
    Some(ParsedControl {
        from,
        runner,
        task_id: TaskId::parse(id).ok()?,
        control,
    })
}

/// The control requests to the tasks agent `agent` runs (its own, over
/// request/reply or its queue), from anyone.
pub fn agent_task_controls(agent: &Name) -> String {
    format!("task.*.agent.{agent}.*.control.*")
}

/// The control requests to the tasks of the shared queue of `task_type`,
/// from anyone.
pub fn work_task_controls(task_type: &Name) -> String {
    format!("task.*.work.{task_type}.*.control.*")
}

/// Subject of the tasks an agent answers over request/reply.
pub fn agent_task(agent: &Name) -> Subject {
    // Built for every request: joined, without the formatting machinery.
    Subject::built(["agent.", agent.as_str(), ".task"].concat())
}

/// Subject of the tasks `from` sends `agent` over request/reply:
/// `agent.<agent>.task.<from>`. Publish permissions let an agent's identity
/// use only its own name as the last token, so the receiver knows the sender.
pub fn agent_task_from(agent: &Name, from: &Name) -> Subject {
    Subject::built(["agent.", agent.as_str(), ".task.", from.as_str()].concat())
}

/// Every sender-stamped task subject of `agent`: `agent.<agent>.task.*`.
pub fn agent_tasks_stamped(agent: &Name) -> SubjectPattern {
    SubjectPattern(format!("agent.{agent}.task.*"))
}

/// Every subject under `agent`'s name: `agent.<agent>.>`. A runtime that
/// works the agent's queue takes its request/reply tasks, plain
/// (`agent.<agent>.task`) and stamped (`agent.<agent>.task.<from>`), and its
/// queue's rings ([`agent_queued`]) on this one subscription: no single
/// token pattern matches both task forms, and every subscription costs the
/// client a buffer of its own. Whatever else it matches (the inbox and
/// direct channel, which streams keep) is dropped: see [`is_agent_task`].
pub fn agent_subjects(agent: &Name) -> SubjectPattern {
    SubjectPattern(format!("agent.{agent}.>"))
}

/// What agent `to`'s senders may ring: [`agent_queued`] at every priority
/// but normal (the tasks stream rings that one).
pub fn agent_rings(to: &str) -> String {
    format!("agent.{to}.queued.*")
}

/// Whether a subject under [`agent_subjects`] is a request/reply task:
/// `agent.<agent>.task` or `agent.<agent>.task.<from>`.
pub fn is_agent_task(subject: &str) -> bool {
    agent_task_sender(subject).is_some()
}

/// For a request/reply task's subject ([`is_agent_task`]), the sender's
/// token of a stamped one (unchecked, as [`sender_token`]) or `None` for a
/// plain one; `None` for any other subject.
pub(crate) fn agent_task_sender(subject: &str) -> Option<Option<&str>> {
    match first_tokens(subject) {
        [Some("agent"), Some(_), Some("task"), from, None] => Some(from),
        _ => None,
    }
}

/// Subject of a message `from` stores in `agent`'s inbox: `agent.<agent>.inbox.<from>`.
pub fn agent_inbox_from(agent: &Name, from: &Name) -> Subject {
    Subject::built(format!("agent.{agent}.inbox.{from}"))
}

/// Subject of a message `from` stores on `agent`'s direct channel: `agent.<agent>.direct.<from>`.
pub fn agent_direct_from(agent: &Name, from: &Name) -> Subject {
    Subject::built(format!("agent.{agent}.direct.{from}"))
}

/// Subject of a broadcast `from` sends on `topic`: `broadcast.<topic>.<from>`.
pub fn broadcast_from(topic: &Name, from: &Name) -> Subject {
    Subject::built(format!("broadcast.{topic}.{from}"))
}

/// Subject of an announcement `from` sends on `topic`: `announce.<topic>.<from>`.
pub fn announce_from(topic: &Name, from: &Name) -> Subject {
    Subject::built(format!("announce.{topic}.{from}"))
}

/// Who sent a message, read from the subject it was published on.
///
/// Task, inbox, direct, broadcast, announcement and platform event subjects
/// carry the sender's name as their last token when the sender is an agent
/// (`agent.<to>.task.<from>`, `broadcast.<topic>.<from>`, ...). nats-server's
/// publish permissions give each agent identity its own name only, so that
/// token is the sender. A subject without it (the plain forms, which clients
/// outside agentbus use) has no known sender.
pub fn sender_of(subject: &str) -> crate::Sender {
    match sender_token(subject).and_then(|from| Name::parse("sender", from).ok()) {
        Some(from) => crate::Sender::Agent(from),
        None => crate::Sender::Unverified,
    }
}

/// The token of `subject` that [`sender_of`] reads the sender from, if it
/// has one (unchecked).
pub(crate) fn sender_token(subject: &str) -> Option<&str> {
    match first_tokens(subject) {
        [
            Some("agent"),
            Some(_),
            Some("task" | "inbox" | "direct"),
            Some(from),
            None,
        ] => Some(from),
        [
            Some("broadcast" | "announce"),
            Some(_),
            Some(from),
            None,
            None,
        ] => Some(from),
        [Some("platform"), Some("events"), Some(_), Some(from), None] => Some(from),
        _ => None,
    }
}

/// The first `N` tokens of `subject`, `None` past its end: a pattern whose
/// last element is `None` matches subjects of fewer than `N` tokens only.
fn first_tokens<const N: usize>(subject: &str) -> [Option<&str>; N] {
    let mut tokens = subject.split('.');
    std::array::from_fn(|_| tokens.next())
}

/// The prefix of the reply subjects of a connection with agent `agent`'s
/// identity: `_INBOX.<agent>`. Its identity may subscribe under it only, so
/// no other agent reads its replies (task answers, pulled messages).
pub fn agent_reply_prefix(agent: &Name) -> String {
    format!("_INBOX.{agent}")
}

/// Subject of an agent's durable inbox.
pub fn agent_inbox(agent: &Name) -> Subject {
    Subject::built(format!("agent.{agent}.inbox"))
}

/// Subject of an agent's durable direct channel.
pub fn agent_direct(agent: &Name) -> Subject {
    Subject::built(format!("agent.{agent}.direct"))
}

/// Suffix of a queue subject for `priority`: none for normal, so a task
/// published by a plain client to `tasks.<agent>` is a normal-priority task.
fn priority_suffix(priority: Priority) -> &'static str {
    match priority {
        Priority::Normal => "",
        Priority::Critical => ".critical",
        Priority::High => ".high",
        Priority::Low => ".low",
    }
}

/// Subject of an agent's own work queue at `priority`: `tasks.<agent>[.<priority>]`.
pub fn task_queue(agent: &Name, priority: Priority) -> Subject {
    Subject::built(format!("tasks.{agent}{}", priority_suffix(priority)))
}

/// Subject of the shared work queue of a task type: `work.<type>[.<priority>]`.
pub fn work_queue(task_type: &Name, priority: Priority) -> Subject {
    Subject::built(format!("work.{task_type}{}", priority_suffix(priority)))
}

/// Where an agent hears that its own queue has a new task:
/// `agent.<agent>.queued[.<priority>]`, under [`agent_subjects`], so the
/// agent's one subscription hears it and an idle queue needs no doorbell of
/// its own. The tasks stream rings `agent.<agent>.queued` when it stores a
/// normal-priority task (a republish of [`QUEUED_REPUBLISH_SOURCE`], headers
/// only); a sender rings the other priorities once its task is stored (a
/// republish takes one subject pattern, and no pattern of one wildcard covers
/// `tasks.<agent>` and `tasks.<agent>.<priority>`).
pub fn agent_queued(agent: &Name, priority: Priority) -> Subject {
    Subject::built(format!("agent.{agent}.queued{}", priority_suffix(priority)))
}

/// The subjects the tasks stream republishes as rings: every agent's
/// normal-priority queue.
pub const QUEUED_REPUBLISH_SOURCE: &str = "tasks.*";
/// Where the tasks stream republishes them: [`agent_queued`] at normal priority.
pub const QUEUED_REPUBLISH_DESTINATION: &str = "agent.{{wildcard(1)}}.queued";

/// Reads an [`agent_queued`] subject back: the priority of the queue that
/// rang. `None` for anything else.
pub fn parse_agent_queued(subject: &str) -> Option<Priority> {
    let mut tokens = subject.split('.');
    let (Some("agent"), Some(_), Some("queued")) = (tokens.next(), tokens.next(), tokens.next())
    else {
        return None;
    };
    let priority = parse_priority_suffix(tokens.next())?;
    tokens.next().is_none().then_some(priority)
}

/// Reads the token [`priority_suffix`] adds back: none is normal, and
/// `normal` itself is not a suffix.
fn parse_priority_suffix(token: Option<&str>) -> Option<Priority> {
    match token {
        None => Some(Priority::Normal),
        Some("normal") => None,
        Some(p) => Priority::parse(p),
    }
}

/// Patterns that match a work queue's subjects at every priority, given its
/// normal-priority subject: the subject itself and its one-token suffixes.
pub fn queue_patterns(normal: &Subject) -> [String; 2] {
    [normal.to_string(), format!("{normal}.*")]
}

/// Which kind of work queue a subject belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QueueKind {
    /// `tasks.<agent>`: one agent's queue.
    Agent,
    /// `work.<task_type>`: the shared queue of a task type.
    TaskType,
}

/// Reads a work-queue subject back: its kind, name and priority. `None` for
/// anything that [`task_queue`] or [`work_queue`] would not build (including
/// `tasks.<agent>.normal`: normal priority has no suffix).
pub fn parse_queue(subject: &str) -> Option<(QueueKind, Name, Priority)> {
    let mut tokens = subject.split('.');
    let kind = match tokens.next()? {
        "tasks" => QueueKind::Agent,
        "work" => QueueKind::TaskType,
        _ => return None,
    };
    let name = tokens.next()?;
    let priority = parse_priority_suffix(tokens.next())?;
    if tokens.next().is_some() {
        return None;
    }
    let what = match kind {
        QueueKind::Agent => "agent name",
        QueueKind::TaskType => "task type",
    };
    Some((kind, Name::parse(what, name).ok()?, priority))
}

/// Subject of a broadcast on `topic`: delivered to agents subscribed to the topic.
pub fn broadcast(topic: &Name) -> Subject {
    Subject::built(format!("broadcast.{topic}"))
}

/// Subject of an announcement on `topic`: delivered to every agent.
pub fn announce(topic: &Name) -> Subject {
    Subject::built(format!("announce.{topic}"))
}

/// Every announcement, without and with a sender.
pub const ALL_ANNOUNCEMENTS: [&str; 2] = ["announce.*", "announce.*.*"];

/// A subject that may carry a sender, and its sender-stamped forms: what a
/// consumer of it filters on (`agent.bob.inbox` and `agent.bob.inbox.*`).
pub fn with_senders(plain: &Subject) -> [String; 2] {
    [plain.to_string(), format!("{plain}.*")]
}

/// Which durable channel a message came in on.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case", tag = "channel", content = "topic")]
pub enum MessageChannel {
    /// `agent.<name>.inbox`: in order, one at a time.
    Inbox,
    /// `agent.<name>.direct`: concurrently, unordered.
    Direct,
    /// `broadcast.<topic>`.
    Broadcast(String),
    /// `announce.<topic>`.
    Announce(String),
}

/// Reads the channel of a subject of the messages or broadcast streams.
pub fn parse_channel(subject: &str) -> Option<MessageChannel> {
    let tokens: Vec<&str> = subject.split('.').collect();
    match tokens.as_slice() {
        ["agent", _, "inbox"] | ["agent", _, "inbox", _] => Some(MessageChannel::Inbox),
        ["agent", _, "direct"] | ["agent", _, "direct", _] => Some(MessageChannel::Direct),
        ["broadcast", topic] | ["broadcast", topic, _] => {
            Some(MessageChannel::Broadcast((*topic).to_owned()))
        }
        ["announce", topic] | ["announce", topic, _] => {
            Some(MessageChannel::Announce((*topic).to_owned()))
        }
        _ => None,
    }
}

/// Subject under which a dead letter from `original` is stored.
pub fn dead_letter(original: &str) -> Subject {
    Subject::built(format!("dlq.{original}"))
}

/// The key under which a dead letter of the message stored at `sequence`
/// on `original` waits in [`PARKED_LETTERS_BUCKET`].
pub fn parked_letter(original: &str, sequence: u64) -> String {
    format!("{original}.{sequence}")
}

/// Advisories for messages that reached `max_deliver` on the tasks stream.
pub const MAX_DELIVERIES_ADVISORY: &str =
    "$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.agent-tasks.*";

/// The subscription of a worker's pull replies: every `<inbox>.<n>`.
pub fn pull_replies(inbox: &str) -> SubjectPattern {
    SubjectPattern(format!("{inbox}.*"))
}

/// Where the answer to a worker's `n`th pull request goes.
pub fn pull_reply(inbox: &str, n: u64) -> Subject {
    Subject::built(format!("{inbox}.{n}"))
}

/// Durable consumer names.
pub mod durable {
    use super::Name;
    use crate::protocol::Priority;

    /// Consumer of `tasks.<agent>[.<priority>]`, shared by the agent's replicas.
    pub fn task_queue(agent: &Name, priority: Priority) -> String {
        format!("tasks-{agent}-{priority}")
    }

    /// Consumer of `work.<type>[.<priority>]`, shared by every agent accepting the type.
    pub fn work_queue(task_type: &Name, priority: Priority) -> String {
        format!("work-{task_type}-{priority}")
    }

    /// Consumer of an agent's inbox (`agent.<name>.inbox`).
    pub fn inbox(agent: &Name) -> String {
        format!("inbox-{agent}")
    }

    /// Consumer of an agent's direct channel (`agent.<name>.direct`).
    pub fn direct(agent: &Name) -> String {
        format!("direct-{agent}")
    }

    /// Consumer of the broadcasts an agent receives.
    pub fn broadcast(agent: &Name) -> String {
        format!("broadcast-{agent}")
    }

    /// Prefixes of every durable consumer name agentbus creates.
    pub const PREFIXES: [&str; 5] = ["tasks-", "work-", "inbox-", "direct-", "broadcast-"];
}

/// The names one `agentbus check` run gives what it creates.
///
/// Every name starts with the run's own `check-<id>`, so runs at the same time
/// never collide and what a run killed midway left behind is recognizable.
/// None starts with a prefix of [`durable::PREFIXES`]: the check's consumers
/// are not agents' consumers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckRun(Name);

impl CheckRun {
    /// The run with id `id`.
    pub fn new(id: uuid::Uuid) -> Self {
        let name = format!("check-{}", id.simple());
        Self(Name::parse("check run name", &name).expect("a UUID makes a valid name"))
    }

    /// `check-<id>`: the agent and the topic the run's messages go to.
    pub fn name(&self) -> &Name {
        &self.0
    }

    /// `agentbus.check.<run>`: the core subject of the publish/subscribe test,
    /// outside every agentbus subject, so nothing but the run listens to it.
    pub fn core_subject(&self) -> Subject {
        Subject::built(format!("agentbus.check.{}", self.0))
    }

    /// `check-<id>-dedup`: the agent whose task queue the deduplication test
    /// uses; the message id it stores twice is this name too.
    pub fn dedup_agent(&self) -> Name {
        Name::parse("check agent name", &format!("{}-dedup", self.0))
            .expect("a run name leaves room for the suffix")
    }

    /// `check-<id>-inbox`: the durable consumer of the offline-delivery test.
    pub fn inbox_consumer(&self) -> String {
        format!("{}-inbox", self.0)
    }

    /// `check-<id>-tasks`: the durable consumer the work-queue test's workers share.
    pub fn tasks_consumer(&self) -> String {
        format!("{}-tasks", self.0)
    }

    /// `check-<id>-broadcast-<index>`: durable consumer `index` of the broadcast test.
    pub fn broadcast_consumer(&self, index: usize) -> String {
        format!("{}-broadcast-{index}", self.0)
    }
}

/// Lifecycle and task events ([`crate::events`] has their bodies).
pub mod events {
    /// An agent started serving.
    pub const AGENT_REGISTERED: &str = "platform.events.agent_registered";
    /// An agent stopped serving after a graceful shutdown.
    pub const AGENT_DEREGISTERED: &str = "platform.events.agent_deregistered";
    /// An agent instance went offline: it shut down, or its heartbeats
    /// stopped (see [`crate::presence`] for who reports it).
    pub const AGENT_OFFLINE: &str = "platform.events.agent_offline";
    /// A task finished with status `completed`.
    pub const TASK_COMPLETED: &str = "platform.events.task_completed";
    /// A task finished with any other status.
    pub const TASK_FAILED: &str = "platform.events.task_failed";
    /// Every platform event.
    pub const ALL: &str = "platform.events.>";

    /// The subject of platform event `event` (one of the constants above)
    /// published by `from`: `<event>.<from>`, which an agent identity may
    /// publish with its own name only; `<event>` itself for a client with
    /// no agent identity (the operator, or any client on a bus without
    /// identities).
    pub fn stamped(event: &'static str, from: Option<&super::Name>) -> super::Subject {
        match from {
            Some(from) => super::Subject::built(format!("{event}.{from}")),
            None => super::Subject::built(event.to_owned()),
        }
    }

    /// The event a platform event subject names, without its stamp:
    /// `platform.events.<event>` of `platform.events.<event>[.<from>]`.
    pub fn unstamped(subject: &str) -> &str {
        match subject.match_indices('.').nth(2) {
            Some((third_dot, _)) => &subject[..third_dot],
            None => subject,
        }
    }
}

/// Discovery subjects of the NATS services protocol.
pub mod service {
    use super::{Name, Subject};

    /// Which discovery request a subject asks.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub enum Verb {
        /// `$SRV.PING`: who is there.
        Ping,
        /// `$SRV.INFO`: what each service offers.
        Info,
        /// `$SRV.STATS`: how much each service did.
        Stats,
    }

    impl Verb {
        /// The subject token, e.g. `PING`.
        pub fn as_str(self) -> &'static str {
            match self {
                Self::Ping => "PING",
                Self::Info => "INFO",
                Self::Stats => "STATS",
            }
        }
    }

    /// The subject of `verb` for every service, one service name, or one instance.
    ///
    /// ```
    /// use agentbus::subject::service::{Verb, request};
    /// use agentbus::Name;
    /// let name = Name::parse("agent name", "echo").unwrap();
    /// assert_eq!(request(Verb::Info, None, None), "$SRV.INFO");
    /// assert_eq!(request(Verb::Stats, Some(&name), Some("abc")), "$SRV.STATS.echo.abc");
    /// ```
    pub fn request(verb: Verb, name: Option<&Name>, id: Option<&str>) -> Subject {
        let mut subject = format!("$SRV.{}", verb.as_str());
        if let Some(name) = name {
            subject.push('.');
            subject.push_str(name.as_str());
            if let Some(id) = id {
                subject.push('.');
                subject.push_str(id);
            }
        }
        Subject::built(subject)
    }

    /// The patterns a responder for many services listens on (`*` stands
    /// for the verb, then the name, then the id): every service, by name,
    /// and by name and id.
    pub fn listen_all() -> [&'static str; 3] {
        ["$SRV.*", "$SRV.*.*", "$SRV.*.*.*"]
    }

    /// Reads the verb of a discovery request's subject.
    pub fn parse_verb(subject: &str) -> Option<Verb> {
        parse_request(subject).map(|(verb, _, _)| verb)
    }

    /// Reads a discovery request's subject: its verb, and the service name
    /// and instance id it asks for, if any.
    pub fn parse_request(subject: &str) -> Option<(Verb, Option<&str>, Option<&str>)> {
        let mut tokens = subject.split('.');
        if tokens.next()? != "$SRV" {
            return None;
        }
        let verb = match tokens.next()? {
            "PING" => Verb::Ping,
            "INFO" => Verb::Info,
            "STATS" => Verb::Stats,
            _ => return None,
        };
        let name = tokens.next();
        let id = tokens.next();
        if tokens.next().is_some() {
            return None;
        }
        Some((verb, name, id))
    }
}

fn check_subject(value: &str, wildcards: bool) -> Result<(), InvalidSubject> {
    let invalid = |reason| {
        Err(InvalidSubject {
            value: value.to_owned(),
            reason,
        })
    };
    if value.is_empty() {
        return invalid("it is empty");
    }
    if value.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return invalid("white space and control characters are not allowed");
    }
    if value.starts_with('$') || value == "_INBOX" || value.starts_with("_INBOX.") {
        return invalid("'$' and '_INBOX' subjects are reserved for NATS itself");
    }
    let tokens: Vec<&str> = value.split('.').collect();
    for (index, token) in tokens.iter().enumerate() {
        if token.is_empty() {
            return invalid("it has an empty token (a leading, trailing or double dot)");
        }
        let is_last = index + 1 == tokens.len();
        match *token {
            "*" | ">" if !wildcards => {
                return invalid("wildcards are only allowed when subscribing");
            }
            ">" if !is_last => return invalid("'>' is only allowed as the last token"),
            "*" | ">" => {}
            t if t.contains(['*', '>']) => {
                return invalid("'*' and '>' must be whole tokens");
            }
            _ => {}
        }
    }
    Ok(())
}

/// Whether some subject matches both patterns (`*` is one token, `>` one or more).
///
/// ```
/// use agentbus::subject::overlaps;
/// assert!(overlaps("agent.*.task", "agent.>"));
/// assert!(!overlaps("agent.*.inbox", "agent.*.task"));
/// ```
pub fn overlaps(a: &str, b: &str) -> bool {
    let a: Vec<&str> = a.split('.').collect();
    let b: Vec<&str> = b.split('.').collect();
    tokens_overlap(&a, &b)
}

/// Whether every subject that pattern `inner` matches, pattern `outer`
/// matches too.
///
/// ```
/// use agentbus::subject::covers;
/// assert!(covers("tasks.>", "tasks.*"));
/// assert!(!covers("tasks.*", "tasks.>"));
/// ```
pub fn covers(outer: &str, inner: &str) -> bool {
    let mut outer = outer.split('.');
    let mut inner = inner.split('.');
    loop {
        match (outer.next(), inner.next()) {
            (None, None) | (Some(">"), Some(_)) => return true,
            (Some("*"), Some(token)) if token != ">" => {}
            (Some(a), Some(b)) if a == b => {}
            _ => return false,
        }
    }
}

fn tokens_overlap(a: &[&str], b: &[&str]) -> bool {
    match (a.split_first(), b.split_first()) {
        (None, None) => true,
        (Some((&">", _)), Some(_)) | (Some(_), Some((&">", _))) => true,
        (Some((x, a_rest)), Some((y, b_rest))) => {
            (*x == "*" || *y == "*" || x == y) && tokens_overlap(a_rest, b_rest)
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_subjects_name_who_asks_and_who_runs_the_task() {
        use crate::delivery::Queue;
        let alice = Name::parse("agent", "alice").unwrap();
        let bob = Name::parse("agent", "bob").unwrap();
        let id = TaskId::parse("t1").unwrap();
        let key = TaskKey::new(&Queue::Agent(bob.clone()), Some(&alice), &id);
        let sent = task_control(Some(&alice), Some(&key), &id, TaskControl::Cancel);
        assert_eq!(sent.as_str(), "task.alice.agent.bob.t1.control.cancel");
        assert_eq!(
            parse_task_control(sent.as_str()),
            Some(ParsedControl {
                from: Some(alice.clone()),
                runner: Some("agent.bob".to_owned()),
                task_id: id.clone(),
                control: TaskControl::Cancel,
            })
        );
        let shared = TaskKey::new(&Queue::TaskType(bob.clone()), None, &id);
        let sent = task_control(None, Some(&shared), &id, TaskControl::Answer);
        assert_eq!(sent.as_str(), "task._.work.bob.t1.control.answer");
        let unaddressed = task_control(None, None, &id, TaskControl::Status);
        assert_eq!(unaddressed.as_str(), "task._._._.t1.control.status");
        let parsed = parse_task_control(unaddressed.as_str()).unwrap();
        assert_eq!((parsed.from, parsed.runner), (None, None));
        for bad in [
            "task.alice.t1.control.cancel",
            "task.alice.queue.bob.t1.control.cancel",
            "task.alice.agent._.t1.control.cancel",
            "task.alice.agent.bob.t1.control.stop",
            "task.alice.agent.bob.t1.control.cancel.x",
        ] {
            assert_eq!(parse_task_control(bad), None, "{bad}");
        }
        // What each listens to covers what is sent to it, and no more.
        let matches = |pattern: &str, subject: &str| {
            let pattern: Vec<&str> = pattern.split('.').collect();
            let subject: Vec<&str> = subject.split('.').collect();
            pattern.len() == subject.len()
                && pattern
                    .iter()
                    .zip(&subject)
                    .all(|(p, s)| *p == "*" || p == s)
        };
        let to_bob = "task.alice.agent.bob.t1.control.cancel";
        assert!(matches(ALL_TASK_CONTROLS, to_bob));
        assert!(matches(&agent_task_controls(&bob), to_bob));
        assert!(!matches(&agent_task_controls(&alice), to_bob));
        assert!(!matches(ANONYMOUS_UNADDRESSED_TASK_CONTROLS, to_bob));
        assert!(matches(
            &work_task_controls(&bob),
            "task._.work.bob.t1.control.answer"
        ));
        assert!(matches(
            ANONYMOUS_UNADDRESSED_TASK_CONTROLS,
            unaddressed.as_str()
        ));
        // An agent's request that names no runner is not heard by agents.
        assert!(!matches(
            ANONYMOUS_UNADDRESSED_TASK_CONTROLS,
            "task.alice._._.t1.control.cancel"
        ));
    }

    fn name(s: &str) -> Name {
        Name::parse("test name", s).unwrap()
    }

    #[test]
    fn queue_patterns_match_every_priority_of_their_queue_only() {
        for (queue, other) in [
            (
                task_queue as fn(&Name, Priority) -> Subject,
                work_queue as fn(&Name, Priority) -> Subject,
            ),
            (work_queue, task_queue),
        ] {
            let patterns = queue_patterns(&queue(&name("a"), Priority::Normal));
            for priority in Priority::ALL {
                let subject = queue(&name("a"), priority);
                let matching = patterns.iter().filter(|p| overlaps(p, &subject)).count();
                assert_eq!(matching, 1, "{subject} against {patterns:?}");
                for foreign in [queue(&name("ab"), priority), other(&name("a"), priority)] {
                    assert!(!patterns.iter().any(|p| overlaps(p, &foreign)), "{foreign}");
                }
            }
        }
    }

    #[test]
    fn builds_the_documented_subjects() {
        assert_eq!(agent_task(&name("llm_agent")), "agent.llm_agent.task");
        assert_eq!(agent_inbox(&name("a")), "agent.a.inbox");
        assert_eq!(agent_direct(&name("a")), "agent.a.direct");
        assert_eq!(task_queue(&name("a"), Priority::Normal), "tasks.a");
        assert_eq!(
            task_queue(&name("a"), Priority::Critical),
            "tasks.a.critical"
        );
        assert_eq!(
            work_queue(&name("summarize"), Priority::Low),
            "work.summarize.low"
        );
        assert_eq!(broadcast(&name("news")), "broadcast.news");
        assert_eq!(announce(&name("news")), "announce.news");
        assert_eq!(
            durable::task_queue(&name("a"), Priority::High),
            "tasks-a-high"
        );
    }

    #[test]
    fn check_run_names_start_with_the_run() {
        let id = uuid::Uuid::new_v4();
        let run = CheckRun::new(id);
        let name = format!("check-{}", id.simple());
        assert_eq!(run.name().as_str(), name);
        assert_eq!(run.core_subject(), format!("agentbus.check.{name}"));
        assert_eq!(run.dedup_agent().as_str(), format!("{name}-dedup"));
        assert_eq!(run.inbox_consumer(), format!("{name}-inbox"));
        assert_eq!(run.tasks_consumer(), format!("{name}-tasks"));
        assert_eq!(run.broadcast_consumer(2), format!("{name}-broadcast-2"));
        for consumer in [run.inbox_consumer(), run.tasks_consumer()] {
            assert!(!durable::PREFIXES.iter().any(|p| consumer.starts_with(p)));
        }
    }

    #[test]
    fn queue_subjects_of_different_priorities_never_overlap() {
        let agent = name("a");
        let subjects: Vec<Subject> = Priority::ALL
            .iter()
            .map(|p| task_queue(&agent, *p))
            .collect();
        for (i, a) in subjects.iter().enumerate() {
            for b in &subjects[i + 1..] {
                assert!(!overlaps(a, b), "{a} ~ {b}");
            }
        }
    }

    #[test]
    fn overlap_follows_nats_wildcard_rules() {
        let cases = [
            ("agent.*.task", "agent.*.task", true),
            ("agent.*.task", "agent.>", true),
            ("agent.*.task", ">", true),
            ("agent.*.task", "*.*.*", true),
            ("agent.*.task", "agent.*.*", true),
            ("agent.*.task", "agent.x.task", true),
            ("agent.*.task", "agent.*.inbox", false),
            ("agent.*.task", "agent.*", false),
            ("agent.*.task", "agent.*.task.more", false),
            ("_INBOX.>", "_INBOX.abc.def", true),
            ("_INBOX.>", "_INBOX", false),
            ("_INBOX.>", "tasks.*", false),
            ("tasks.>", "tasks.a", true),
            ("tasks.*", "work.*", false),
        ];
        for (a, b, expected) in cases {
            assert_eq!(overlaps(a, b), expected, "{a} ~ {b}");
            assert_eq!(overlaps(b, a), expected, "{b} ~ {a}");
        }
    }

    #[test]
    fn queue_subjects_parse_back() {
        for priority in Priority::ALL {
            let (kind, parsed, p) = parse_queue(&task_queue(&name("a"), priority)).unwrap();
            assert_eq!(
                (kind, parsed.as_str(), p),
                (QueueKind::Agent, "a", priority)
            );
            let (kind, parsed, p) = parse_queue(&work_queue(&name("t"), priority)).unwrap();
            assert_eq!(
                (kind, parsed.as_str(), p),
                (QueueKind::TaskType, "t", priority)
            );
        }
        for not_a_queue in [
            "tasks.a.normal",
            "tasks.*",
            "tasks.a.high.x",
            "agent.a.inbox",
            "tasks",
        ] {
            assert!(parse_queue(not_a_queue).is_none(), "{not_a_queue}");
        }
    }

    #[test]
    fn queue_rings_are_heard_under_the_agents_name_and_parse_back() {
        let agent = name("a");
        for priority in Priority::ALL {
            let ring = agent_queued(&agent, priority);
            assert!(overlaps(&agent_subjects(&agent).0, &ring), "{ring}");
            assert!(!is_agent_task(&ring), "{ring}");
            assert_eq!(parse_agent_queued(&ring), Some(priority), "{ring}");
        }
        // What the tasks stream republishes lands on the normal ring.
        assert_eq!(
            QUEUED_REPUBLISH_DESTINATION.replace("{{wildcard(1)}}", "a"),
            agent_queued(&agent, Priority::Normal).as_str()
        );
        assert!(overlaps(
            QUEUED_REPUBLISH_SOURCE,
            &task_queue(&agent, Priority::Normal)
        ));
        assert!(!overlaps(
            QUEUED_REPUBLISH_SOURCE,
            &task_queue(&agent, Priority::High)
        ));
        for not_a_ring in [
            "agent.a.queued.normal",
            "agent.a.queued.high.x",
            "agent.a.task",
            "agent.a.inbox",
        ] {
            assert!(parse_agent_queued(not_a_ring).is_none(), "{not_a_ring}");
        }
        assert!(covers("tasks.>", "tasks.*"));
        assert!(covers("tasks.*", "tasks.*"));
        assert!(!covers("tasks.*", "tasks.>"));
        assert!(!covers("tasks.a", "tasks.*"));
        assert!(!covers("tasks.*", "tasks.a.b"));
        assert!(is_agent_task("agent.a.task"));
        assert!(is_agent_task("agent.a.task.b"));
        assert!(!is_agent_task("agent.a.task.b.c"));
    }

    #[test]
    fn message_subjects_name_their_channel() {
        let agent = name("a");
        assert_eq!(
            parse_channel(&agent_inbox(&agent)),
            Some(MessageChannel::Inbox)
        );
        assert_eq!(
            parse_channel(&agent_direct(&agent)),
            Some(MessageChannel::Direct)
        );
        assert_eq!(
            parse_channel(&broadcast(&name("news"))),
            Some(MessageChannel::Broadcast("news".into()))
        );
        assert_eq!(
            parse_channel(&announce(&name("news"))),
            Some(MessageChannel::Announce("news".into()))
        );
        assert_eq!(parse_channel("agent.a.task"), None);
    }

    #[test]
    fn discovery_subjects_follow_the_services_protocol() {
        use service::{Verb, parse_request, parse_verb, request};
        let echo = name("echo");
        assert_eq!(request(Verb::Ping, None, None), "$SRV.PING");
        assert_eq!(request(Verb::Info, Some(&echo), None), "$SRV.INFO.echo");
        assert_eq!(
            request(Verb::Stats, Some(&echo), Some("abc")),
            "$SRV.STATS.echo.abc"
        );
        for verb in [Verb::Ping, Verb::Info, Verb::Stats] {
            assert_eq!(parse_verb(&request(verb, Some(&echo), None)), Some(verb));
        }
        assert_eq!(parse_verb("$SRV.SCHEMA"), None);
        assert_eq!(
            parse_request("$SRV.STATS.echo.i1"),
            Some((Verb::Stats, Some("echo"), Some("i1")))
        );
        assert_eq!(parse_request("$SRV.PING"), Some((Verb::Ping, None, None)));
        assert_eq!(parse_request("$SRV.PING.a.b.c"), None);
        assert_eq!(parse_request("agent.PING.a"), None);
        let heard: Vec<bool> = ["$SRV.PING", "$SRV.PING.echo", "$SRV.PING.echo.i1"]
            .iter()
            .map(|s| service::listen_all().iter().any(|p| overlaps(p, s)))
            .collect();
        assert_eq!(heard, [true, true, true]);
    }

    #[test]
    fn publish_subjects_are_strict() {
        assert!(Subject::parse("chat.message.new").is_ok());
        for bad in [
            "", "a..b", ".a", "a.", "a.*", "a.>", "a b", "$SYS.x", "_INBOX.x", "a.b*",
        ] {
            assert!(Subject::parse(bad).is_err(), "{bad:?} should be refused");
        }
    }

    #[test]
    fn patterns_allow_whole_token_wildcards() {
        for ok in ["platform.events.*", "platform.>", ">", "*.x"] {
            assert!(SubjectPattern::parse(ok).is_ok(), "{ok}");
        }
        for bad in ["a.>.b", "a.b*", "$JS.API.>", ""] {
            assert!(SubjectPattern::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn platform_events_read_with_or_without_their_stamp() {
        let bob = Name::parse("agent", "bob").unwrap();
        let stamped = events::stamped(events::TASK_FAILED, Some(&bob));
        assert_eq!(stamped.as_str(), "platform.events.task_failed.bob");
        assert_eq!(
            events::stamped(events::TASK_FAILED, None).as_str(),
            events::TASK_FAILED
        );
        assert_eq!(events::unstamped(stamped.as_str()), events::TASK_FAILED);
        assert_eq!(events::unstamped(events::TASK_FAILED), events::TASK_FAILED);
        assert_eq!(sender_of(stamped.as_str()), crate::Sender::Agent(bob));
        assert_eq!(sender_of(events::TASK_FAILED), crate::Sender::Unverified);
    }
}
