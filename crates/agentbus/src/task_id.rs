//! Task ids: one rule wherever a task id travels.
//!
//! A task id is a `Nats-Msg-Id` (a repeat within the dedup window is stored
//! once), a key of the task results bucket, and an id that logs, tools and
//! other agents quote back. So it is 1 to 128 characters from `A-Z`, `a-z`,
//! `0-9`, `_` and `-`: no dots, wildcards, white space or control characters,
//! nothing that changes meaning when it becomes a key or a header. The UUIDs
//! that [`TaskId::new`] makes, and that most clients send, fit.

use crate::delivery::Queue;
use crate::name::Name;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::borrow::Cow;
use std::fmt;
use std::sync::Arc;

/// The longest task id accepted, in bytes.
pub const MAX_TASK_ID_LEN: usize = 128;

/// A validated task id; cheap to clone (the runtime hands it to the task's
/// context, its retry cache entry and its event).
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TaskId(Arc<str>);

/// A value that cannot be a task id, and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "invalid task id {value:?}: {reason}; use 1-128 characters from A-Z, a-z, 0-9, '_' and '-'"
)]
pub struct InvalidTaskId {
    /// The rejected value, escaped when printed.
    pub value: String,
    /// Why it was rejected.
    pub reason: &'static str,
}

impl TaskId {
    /// A fresh random id (a hyphenated UUID v4).
    #[allow(clippy::new_without_default)] // a default id would be a random one: say so at the call
    pub fn new() -> Self {
        Self(uuid::Uuid::new_v4().hyphenated().to_string().into())
    }

    /// Validates `value` as a task id.
    ///
    /// ```
    /// use agentbus::TaskId;
    /// assert!(TaskId::parse("order-42").is_ok());
    /// assert!(TaskId::parse("a.b").is_err());
    /// ```
    pub fn parse(value: &str) -> Result<Self, InvalidTaskId> {
        check(value)?;
        Ok(Self(value.into()))
    }

    /// The id as a string slice.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Where a task's record and log are kept: the agent or task type that runs
/// it, the agent that sent it, and its id, as
/// `<agent|work>.<runner>.<caller>.<task_id>` (`_` for a caller with no
/// agent name). Its record's key in the task results bucket and its log's
/// subject (`task.<key>.events`) are built from it, so that an agent
/// identity's permissions can name the tasks it runs and those it sent, and
/// no others.
///
/// The caller is the task's verified sender over request/reply (its
/// subject's last token) and, for a queued task, the submitter's agent as
/// it declared it (`Agentbus-From`): a false one only shows the task to
/// that agent, never to the one that lied.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct TaskKey {
    text: Arc<str>,
    id: TaskId,
    caller: Option<Name>,
}

/// The key token of a caller with no agent name. [`Name`] refuses it.
pub(crate) const NO_CALLER: &str = "_";

impl TaskKey {
    /// The key of task `id`, run by `runner` (an agent's own tasks, over
    /// request/reply or its queue, or a task type's shared queue), sent by
    /// `caller`.
    pub fn new(runner: &Queue, caller: Option<&Name>, id: &TaskId) -> Self {
        let (kind, name) = runner_tokens(runner);
        Self::joined(kind, name, caller, id)
    }

    /// [`TaskKey::new`] of a task agent `agent` runs over request/reply or
    /// from its own queue, without a [`Queue`] made for it.
    pub(crate) fn of_agent(agent: &Name, caller: Option<&Name>, id: &TaskId) -> Self {
        Self::joined(AGENT_RUNNER, agent, caller, id)
    }

    fn joined(kind: &str, name: &Name, caller: Option<&Name>, id: &TaskId) -> Self {
        let caller_token = caller.map_or(NO_CALLER, Name::as_str);
        Self {
            text: dotted(&[kind, name.as_str(), caller_token, id.as_str()]),
            id: id.clone(),
            caller: caller.cloned(),
        }
    }

    /// Reads a key back; `None` for anything [`TaskKey::new`] would not build.
    pub fn parse(text: &str) -> Option<Self> {
        let mut tokens = text.split('.');
        let (Some(kind), Some(name), Some(caller), Some(id), None) = (
            tokens.next(),
            tokens.next(),
            tokens.next(),
            tokens.next(),
            tokens.next(),
        ) else {
            return None;
        };
        let name = Name::parse("task runner", name).ok()?;
        let runner = match kind {
            AGENT_RUNNER => Queue::Agent(name),
            TYPE_RUNNER => Queue::TaskType(name),
            _ => return None,
        };
        let caller = match caller {
            NO_CALLER => None,
            caller => Some(Name::parse("task caller", caller).ok()?),
        };
        Some(Self::new(
            &runner,
            caller.as_ref(),
            &TaskId::parse(id).ok()?,
        ))
    }

    /// The key a message handler's effects are kept under, laid out as a
    /// task's: run by `agent`, no caller, the message id in the task id's
    /// place (a message id need not be a valid task id).
    pub(crate) fn of_message(agent: &Name, message_id: &str) -> String {
        let runner = Queue::Agent(agent.clone());
        let (kind, name) = runner_tokens(&runner);
        format!("{kind}.{name}.{NO_CALLER}.{message_id}")
    }

    /// The pattern of the keys under which `caller` finds task `id`, whoever
    /// runs it (`*.*.<caller>.<id>`); any caller's with `None`, as the
    /// operator looks.
    pub(crate) fn pattern(caller: Option<&Name>, id: &TaskId) -> String {
        format!("*.*.{}.{id}", caller.map_or("*", Name::as_str))
    }

    /// The key the caller stores its answer to the task's question under,
    /// beside the record (`<key>/answer`: as many tokens as the task key,
    /// which the caller may write, where an effect's key has one more).
    pub(crate) fn answer_key(&self) -> String {
        format!("{}/answer", self.text)
    }

    /// The task's id.
    pub fn id(&self) -> &TaskId {
        &self.id
    }

    /// The agent that sent it, if it has a name.
    pub fn caller(&self) -> Option<&Name> {
        self.caller.as_ref()
    }

    /// The key as a string.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// Who runs the task, as the key's first two tokens: `agent.<name>` or
    /// `work.<type>`.
    pub(crate) fn runner(&self) -> &str {
        let kind = self.text.find('.').map_or(0, |dot| dot + 1);
        let end = self.text[kind..]
            .find('.')
            .map_or(self.text.len(), |dot| kind + dot);
        &self.text[..end]
    }
}

/// `parts` joined by dots, in one allocation: a key is made for every task
/// a runtime takes, and one joined in a `String` first is copied again into
/// its `Arc`.
fn dotted(parts: &[&str]) -> Arc<str> {
    // Longer than any key of valid names and ids.
    const ON_STACK: usize = 320;
    let len = parts
        .iter()
        .map(|part| part.len() + 1)
        .sum::<usize>()
        .saturating_sub(1);
    if len > ON_STACK {
        return parts.join(".").into();
    }
    let mut joined = [0u8; ON_STACK];
    let mut at = 0;
    for (index, part) in parts.iter().enumerate() {
        if index > 0 {
            joined[at] = b'.';
            at += 1;
        }
        joined[at..at + part.len()].copy_from_slice(part.as_bytes());
        at += part.len();
    }
    match std::str::from_utf8(&joined[..at]) {
        Ok(text) => text.into(),
        // Whole strings and dots are UTF-8: never taken.
        Err(_) => parts.join(".").into(),
    }
}

/// The first token of a key of an agent's task.
const AGENT_RUNNER: &str = "agent";
/// The first token of a key of a task of a task type's shared queue.
const TYPE_RUNNER: &str = "work";

/// The two tokens naming who runs a task.
fn runner_tokens(runner: &Queue) -> (&'static str, &Name) {
    match runner {
        Queue::Agent(name) => (AGENT_RUNNER, name),
        Queue::TaskType(name) => (TYPE_RUNNER, name),
    }
}

impl fmt::Display for TaskKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl Serialize for TaskKey {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.text)
    }
}

impl fmt::Debug for TaskKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.text, f)
    }
}

fn check(value: &str) -> Result<(), InvalidTaskId> {
    let invalid = |reason| {
        Err(InvalidTaskId {
            value: value.to_owned(),
            reason,
        })
    };
    if value.is_empty() {
        return invalid("it is empty");
    }
    if value.len() > MAX_TASK_ID_LEN {
        return invalid("it is longer than 128 characters");
    }
    match value
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || *c == '_' || *c == '-'))
    {
        None => Ok(()),
        Some(c) if c.is_whitespace() => invalid("white space is not allowed"),
        Some(c) if c.is_control() => invalid("control characters are not allowed"),
        Some(_) => invalid("it contains a character outside the allowed set"),
    }
}

impl fmt::Display for TaskId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for TaskId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

impl std::ops::Deref for TaskId {
    type Target = str;
    fn deref(&self) -> &str {
        &self.0
    }
}

impl AsRef<str> for TaskId {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl std::str::FromStr for TaskId {
    type Err = InvalidTaskId;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

impl PartialEq<str> for TaskId {
    fn eq(&self, other: &str) -> bool {
        &*self.0 == other
    }
}

impl PartialEq<&str> for TaskId {
    fn eq(&self, other: &&str) -> bool {
        &*self.0 == *other
    }
}

impl PartialEq<TaskId> for String {
    fn eq(&self, other: &TaskId) -> bool {
        self.as_str() == other.as_str()
    }
}

impl PartialEq<TaskId> for &str {
    fn eq(&self, other: &TaskId) -> bool {
        *self == other.as_str()
    }
}

impl From<TaskId> for String {
    fn from(id: TaskId) -> Self {
        id.0.to_string()
    }
}

impl From<&TaskId> for String {
    fn from(id: &TaskId) -> Self {
        id.0.to_string()
    }
}

impl Serialize for TaskId {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for TaskId {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = Cow::<'de, str>::deserialize(deserializer)?;
        Self::parse(&text).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn new_ids_follow_the_rule() {
        let id = TaskId::new();
        assert_eq!(id.len(), 36);
        assert_eq!(TaskId::parse(&id).unwrap(), id);
    }

    #[test]
    fn refuses_what_would_change_meaning_as_a_key_or_header() {
        for (value, reason) in [
            ("", "it is empty"),
            ("a b", "white space is not allowed"),
            ("a\u{7}", "control characters are not allowed"),
            ("a.b", "it contains a character outside the allowed set"),
            ("a*", "it contains a character outside the allowed set"),
            ("é", "it contains a character outside the allowed set"),
        ] {
            assert_eq!(
                TaskId::parse(value).unwrap_err().reason,
                reason,
                "{value:?}"
            );
        }
        assert!(TaskId::parse(&"x".repeat(128)).is_ok());
        assert_eq!(
            TaskId::parse(&"x".repeat(129)).unwrap_err().reason,
            "it is longer than 128 characters"
        );
    }

    #[test]
    fn error_is_one_sentence_naming_the_value() {
        assert_eq!(
            TaskId::parse("a b").unwrap_err().to_string(),
            "invalid task id \"a b\": white space is not allowed; use 1-128 characters from A-Z, a-z, 0-9, '_' and '-'"
        );
    }

    #[test]
    fn serializes_as_a_plain_string_and_validates_when_read() {
        let id = TaskId::parse("t-1").unwrap();
        assert_eq!(serde_json::to_string(&id).unwrap(), "\"t-1\"");
        assert_eq!(serde_json::from_str::<TaskId>("\"t-1\"").unwrap(), id);
        assert!(serde_json::from_str::<TaskId>("\"a.b\"").is_err());
    }

    #[test]
    fn keys_name_runner_and_caller() {
        let id = TaskId::parse("t1").unwrap();
        let bob = Name::parse("agent", "bob").unwrap();
        let alice = Name::parse("agent", "alice").unwrap();
        let key = TaskKey::new(&Queue::Agent(bob.clone()), Some(&alice), &id);
        assert_eq!(key.as_str(), "agent.bob.alice.t1");
        assert_eq!(key.runner(), "agent.bob");
        assert_eq!(TaskKey::parse(key.as_str()), Some(key));
        assert_eq!(
            TaskKey::of_agent(&bob, Some(&alice), &id),
            TaskKey::new(&Queue::Agent(bob.clone()), Some(&alice), &id)
        );
        let key = TaskKey::new(&Queue::TaskType(bob.clone()), None, &id);
        assert_eq!(key.as_str(), "work.bob._.t1");
        assert_eq!(key.runner(), "work.bob");
        assert_eq!(TaskKey::parse(key.as_str()).unwrap().caller(), None);
        for bad in [
            "t1",
            "x.bob._.t1",
            "agent.bob._.t1.x",
            "agent.*._.t1",
            "agent.bob._.a=b",
        ] {
            assert_eq!(TaskKey::parse(bad), None, "{bad}");
        }
        assert_eq!(TaskKey::pattern(Some(&alice), &id), "*.*.alice.t1");
        assert_eq!(TaskKey::pattern(None, &id), "*.*.*.t1");
        assert_eq!(TaskKey::of_message(&bob, "m-1"), "agent.bob._.m-1");
    }

    #[test]
    fn the_longest_keys_are_joined_whole() {
        let long = Name::parse("agent", &"n".repeat(crate::name::MAX_NAME_LEN)).unwrap();
        let id = TaskId::parse(&"i".repeat(MAX_TASK_ID_LEN)).unwrap();
        let key = TaskKey::new(&Queue::TaskType(long.clone()), Some(&long), &id);
        assert_eq!(key.as_str(), format!("work.{long}.{long}.{id}"));
        assert_eq!(TaskKey::parse(key.as_str()), Some(key));
        // Past the stack buffer, joined all the same.
        let parts = ["a".repeat(300), "é".repeat(40)];
        let parts = [parts[0].as_str(), parts[1].as_str()];
        assert_eq!(&*dotted(&parts), parts.join(".").as_str());
        assert_eq!(&*dotted(&["x"]), "x");
    }
}
