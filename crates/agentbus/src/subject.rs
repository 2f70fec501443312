//! Every subject agentbus uses is built here, from validated [`Name`]s.
//!
//! | subject | carries |
//! | --- | --- |
//! | `agent.<name>.task` | TaskRequest over core request/reply (never in a stream) |
//! | `agent.<name>.inbox`, `agent.<name>.direct` | durable messages to one agent (`agent-messages`) |
//! | `tasks.<agent>`, `work.<task_type>` | work queues (`agent-tasks`) |
//! | `broadcast.<topic>`, `announce.<topic>` | announcements to every agent (`agent-broadcast`) |
//! | `platform.events.<event>` | lifecycle events published by the runtime |

use crate::name::Name;
use std::fmt;

/// Subjects answered over core request/reply. A stream capturing one of them
/// would answer the requester with its own PubAck instead of the agent's reply.
pub const REQUEST_REPLY_SUBJECTS: [&str; 2] = ["agent.*.task", "_INBOX.>"];

/// Subject of the tasks an agent answers over request/reply.
pub fn agent_task(agent: &Name) -> String {
    format!("agent.{agent}.task")
}

/// Subject of an agent's durable inbox.
pub fn agent_inbox(agent: &Name) -> String {
    format!("agent.{agent}.inbox")
}

/// Subject of an agent's durable direct channel.
pub fn agent_direct(agent: &Name) -> String {
    format!("agent.{agent}.direct")
}

/// Lifecycle and task events published by the runtime.
pub mod events {
    /// An agent started serving.
    pub const AGENT_REGISTERED: &str = "platform.events.agent_registered";
    /// An agent stopped serving after a graceful shutdown.
    pub const AGENT_DEREGISTERED: &str = "platform.events.agent_deregistered";
    /// A task finished with status `completed`.
    pub const TASK_COMPLETED: &str = "platform.events.task_completed";
    /// A task finished with any other status.
    pub const TASK_FAILED: &str = "platform.events.task_failed";
    /// Every platform event.
    pub const ALL: &str = "platform.events.>";
}

/// A subject an application publishes to: tokens separated by dots, no
/// wildcards, no white space, not in the reserved `$` or `_INBOX` spaces.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Subject(String);

/// A subject pattern an application subscribes to: like [`Subject`], plus `*`
/// as a whole token and `>` as the last token.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct SubjectPattern(String);

/// A subject or pattern that cannot be used, and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid subject {value:?}: {reason}")]
pub struct InvalidSubject {
    /// The rejected value.
    pub value: String,
    /// Why it was rejected.
    pub reason: &'static str,
}

impl Subject {
    /// Validates a subject to publish to.
    pub fn parse(value: &str) -> Result<Self, InvalidSubject> {
        check_subject(value, false)?;
        Ok(Self(value.to_owned()))
    }

    /// The subject as a string slice.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

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

impl fmt::Display for Subject {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Display for SubjectPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
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

    fn name(s: &str) -> Name {
        Name::parse("test name", s).unwrap()
    }

    #[test]
    fn builds_the_subjects_of_the_requirements() {
        assert_eq!(agent_task(&name("llm_agent")), "agent.llm_agent.task");
        assert_eq!(agent_inbox(&name("a")), "agent.a.inbox");
        assert_eq!(agent_direct(&name("a")), "agent.a.direct");
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
}
