//! Which work queue a task goes to.

use crate::name::{InvalidName, Name};
use crate::protocol::Priority;
use crate::subject::{self, QueueKind, Subject};
use crate::task_id::{TaskId, TaskKey};
use std::fmt;

/// A work queue on the `agent-tasks` stream.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Queue {
    /// `tasks.<agent>`: work for one agent, shared by its replicas.
    Agent(Name),
    /// `work.<task_type>`: work for any agent accepting the type.
    TaskType(Name),
}

/// Where the record and log of queued task `task_id` are kept: run by the
/// agent or task type whose queue `subject` is, for the caller its
/// submitter named (`from`, its `Agentbus-From` header; a value that is no
/// agent name counts as none). `None` when `subject` is no queue's.
pub(crate) fn queued_task_key(
    subject: &str,
    from: Option<&str>,
    task_id: &TaskId,
) -> Option<TaskKey> {
    let (queue, _) = Queue::from_subject(subject)?;
    let caller = from.and_then(|from| Name::parse("caller", from).ok());
    Some(TaskKey::new(&queue, caller.as_ref(), task_id))
}

impl Queue {
    /// The queue of agent `name`.
    pub fn agent(name: &str) -> Result<Self, InvalidName> {
        Ok(Self::Agent(Name::parse("agent name", name)?))
    }

    /// The shared queue of `task_type`.
    pub fn task_type(task_type: &str) -> Result<Self, InvalidName> {
        Ok(Self::TaskType(Name::parse("task type", task_type)?))
    }

    /// The subject holding this queue's tasks of `priority`.
    pub fn subject(&self, priority: Priority) -> Subject {
        match self {
            Self::Agent(name) => subject::task_queue(name, priority),
            Self::TaskType(name) => subject::work_queue(name, priority),
        }
    }

    /// The durable consumer of this queue's tasks of `priority`.
    pub fn durable(&self, priority: Priority) -> String {
        match self {
            Self::Agent(name) => subject::durable::task_queue(name, priority),
            Self::TaskType(name) => subject::durable::work_queue(name, priority),
        }
    }

    /// Parses a queue subject back into the queue and priority.
    pub fn from_subject(text: &str) -> Option<(Self, Priority)> {
        let (kind, name, priority) = subject::parse_queue(text)?;
        let queue = match kind {
            QueueKind::Agent => Self::Agent(name),
            QueueKind::TaskType => Self::TaskType(name),
        };
        Some((queue, priority))
    }
}

impl fmt::Display for Queue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.subject(Priority::Normal))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subjects_round_trip() {
        for queue in [Queue::agent("a").unwrap(), Queue::task_type("t").unwrap()] {
            for priority in Priority::ALL {
                assert_eq!(
                    Queue::from_subject(&queue.subject(priority)),
                    Some((queue.clone(), priority))
                );
            }
        }
        assert_eq!(Queue::from_subject("tasks.a.normal"), None);
        assert_eq!(Queue::from_subject("tasks.*"), None);
        assert_eq!(Queue::from_subject("agent.a.inbox"), None);
    }
}
