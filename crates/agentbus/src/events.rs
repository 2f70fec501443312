//! The events agentbus publishes on `platform.events.*`, one shape each.
//!
//! | subject | body |
//! | --- | --- |
//! | `platform.events.agent_registered` | [`LifecycleEvent`], with `task_types` |
//! | `platform.events.agent_deregistered` | [`LifecycleEvent`] |
//! | `platform.events.agent_offline` | [`OfflineEvent`] |
//! | `platform.events.task_completed` | [`TaskEvent`] with status `completed` |
//! | `platform.events.task_failed` | [`TaskEvent`] with any other status |
//!
//! Every publisher (the runtime, the MCP bridge, presence) builds its bodies
//! from these types, and a subscriber reads them back with
//! [`PlatformEvent::parse`]:
//!
//! ```no_run
//! # async fn example(bus: agentbus::Bus) -> Result<(), Box<dyn std::error::Error>> {
//! use agentbus::events::PlatformEvent;
//! use futures::StreamExt;
//! let mut events = bus.subscribe("platform.events.>", None).await?;
//! while let Some(event) = events.next().await {
//!     if let Ok(PlatformEvent::TaskFailed(task)) = PlatformEvent::parse(&event.subject, &event.payload) {
//!         eprintln!("{} failed on {}: {:?}", task.task_id, task.agent, task.error);
//!     }
//! }
//! # Ok(()) }
//! ```

use crate::protocol::{JSON_CAPACITY, TaskStatus};
use crate::subject::events as subjects;
use serde::{Deserialize, Serialize};
use std::borrow::Cow;
use std::time::Duration;

/// A task finished: on `task_completed` when its status is `completed`, else
/// on `task_failed`. Borrowed while published (this is sent once per task),
/// owned when read.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskEvent<'a> {
    /// The task.
    #[serde(borrow)]
    pub task_id: Cow<'a, str>,
    /// The agent that handled it.
    #[serde(borrow)]
    pub agent: Cow<'a, str>,
    /// Its task type.
    #[serde(borrow)]
    pub task_type: Cow<'a, str>,
    /// How it ended.
    pub status: TaskStatus,
    /// What went wrong, unless it completed.
    #[serde(borrow)]
    pub error: Option<Cow<'a, str>>,
    /// How long the handler ran, in milliseconds.
    pub duration_ms: f64,
    /// The runtime (or bridge) instance that handled it.
    #[serde(borrow)]
    pub instance_id: Cow<'a, str>,
    /// How long it waited before its handler started, in milliseconds:
    /// since the stream stored it, for a queued task; since it arrived,
    /// over request/reply. Absent where the publisher does not tell.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub waited_ms: Option<f64>,
}

impl<'a> TaskEvent<'a> {
    /// The event of a task that ended with `status` after running `duration`.
    pub fn new(
        task_id: &'a str,
        agent: &'a str,
        task_type: &'a str,
        status: TaskStatus,
        error: Option<&'a str>,
        duration: Duration,
        instance_id: &'a str,
    ) -> Self {
        Self {
            task_id: Cow::Borrowed(task_id),
            agent: Cow::Borrowed(agent),
            task_type: Cow::Borrowed(task_type),
            status,
            error: error.map(Cow::Borrowed),
            duration_ms: duration.as_secs_f64() * 1000.0,
            instance_id: Cow::Borrowed(instance_id),
            waited_ms: None,
        }
    }

    /// The same event, saying the task waited `waited` before it started.
    pub fn with_waited(mut self, waited: Duration) -> Self {
        self.waited_ms = Some(waited.as_secs_f64() * 1000.0);
        self
    }

    /// `platform.events.task_completed` or `platform.events.task_failed`.
    pub fn subject(&self) -> &'static str {
        if self.status == TaskStatus::Completed {
            subjects::TASK_COMPLETED
        } else {
            subjects::TASK_FAILED
        }
    }

    /// The body as JSON, serialized into a buffer sized for a typical event.
    pub(crate) fn to_json(&self) -> Vec<u8> {
        let mut body = Vec::with_capacity(JSON_CAPACITY);
        serde_json::to_writer(&mut body, self).expect("a task event always serializes");
        body
    }
}

/// An agent started or stopped serving.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LifecycleEvent {
    /// The agent.
    pub agent: String,
    /// The runtime instance serving it.
    pub instance_id: String,
    /// When, RFC 3339 with milliseconds.
    pub timestamp: String,
    /// The task types it accepts; on `agent_registered` only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub task_types: Option<Vec<String>>,
}

/// Why an agent instance went offline.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum OfflineReason {
    /// It stopped gracefully and said so.
    Shutdown,
    /// Its heartbeats stopped: it crashed, hung or lost its connection.
    HeartbeatTimeout,
}

/// An agent instance went offline (see [`crate::presence`] for who reports it).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OfflineEvent {
    /// The agent.
    pub agent: String,
    /// The instance that went offline.
    pub instance_id: String,
    /// When it was reported, RFC 3339 with milliseconds.
    pub timestamp: String,
    /// Why.
    pub reason: OfflineReason,
    /// Its last heartbeat, RFC 3339.
    pub last_seen: String,
    /// The host it ran on.
    pub host: String,
    /// The instance that published this event.
    pub reported_by: String,
}

/// Any event of the platform, as read from its subject and body.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum PlatformEvent {
    /// `platform.events.agent_registered`.
    AgentRegistered(LifecycleEvent),
    /// `platform.events.agent_deregistered`.
    AgentDeregistered(LifecycleEvent),
    /// `platform.events.agent_offline`.
    AgentOffline(OfflineEvent),
    /// `platform.events.task_completed`.
    TaskCompleted(TaskEvent<'static>),
    /// `platform.events.task_failed`.
    TaskFailed(TaskEvent<'static>),
}

/// Why a message is not a platform event.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EventParseError {
    /// The subject is not one of the platform's events.
    #[error("{0} is not a platform event subject")]
    UnknownSubject(String),
    /// The body does not have the event's shape.
    #[error("the body of {subject} is not a {subject} event: {source}")]
    Body {
        /// The event's subject.
        subject: String,
        /// The decoding error.
        #[source]
        source: serde_json::Error,
    },
}

impl PlatformEvent {
    /// Reads the event published on `subject` with `body`.
    pub fn parse(subject: &str, body: &[u8]) -> Result<Self, EventParseError> {
        fn decode<T: serde::de::DeserializeOwned>(
            subject: &str,
            body: &[u8],
        ) -> Result<T, EventParseError> {
            serde_json::from_slice(body).map_err(|source| EventParseError::Body {
                subject: subject.to_owned(),
                source,
            })
        }
        fn decode_task<'b>(
            subject: &str,
            body: &'b [u8],
        ) -> Result<TaskEvent<'b>, EventParseError> {
            serde_json::from_slice(body).map_err(|source| EventParseError::Body {
                subject: subject.to_owned(),
                source,
            })
        }
        fn owned(event: TaskEvent<'_>) -> TaskEvent<'static> {
            TaskEvent {
                task_id: Cow::Owned(event.task_id.into_owned()),
                agent: Cow::Owned(event.agent.into_owned()),
                task_type: Cow::Owned(event.task_type.into_owned()),
                status: event.status,
                error: event.error.map(|e| Cow::Owned(e.into_owned())),
                duration_ms: event.duration_ms,
                instance_id: Cow::Owned(event.instance_id.into_owned()),
                waited_ms: event.waited_ms,
            }
        }
        Ok(match subjects::unstamped(subject) {
            subjects::AGENT_REGISTERED => Self::AgentRegistered(decode(subject, body)?),
            subjects::AGENT_DEREGISTERED => Self::AgentDeregistered(decode(subject, body)?),
            subjects::AGENT_OFFLINE => Self::AgentOffline(decode(subject, body)?),
            subjects::TASK_COMPLETED => Self::TaskCompleted(owned(decode_task(subject, body)?)),
            subjects::TASK_FAILED => Self::TaskFailed(owned(decode_task(subject, body)?)),
            other => return Err(EventParseError::UnknownSubject(other.to_owned())),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn task_events_keep_their_wire_shape() {
        let event = TaskEvent::new(
            "t1",
            "echo",
            "echo",
            TaskStatus::Failed,
            Some("boom"),
            Duration::from_millis(3),
            "i1",
        );
        assert_eq!(event.subject(), subjects::TASK_FAILED);
        let value: serde_json::Value = serde_json::from_slice(&event.to_json()).unwrap();
        assert_eq!(
            value,
            json!({"task_id": "t1", "agent": "echo", "task_type": "echo", "status": "failed",
                   "error": "boom", "duration_ms": 3.0, "instance_id": "i1"})
        );
        let parsed = PlatformEvent::parse(subjects::TASK_FAILED, &event.to_json()).unwrap();
        assert_eq!(parsed, PlatformEvent::TaskFailed(event.clone()));
    }

    #[test]
    fn every_event_subject_parses_its_own_shape() {
        let lifecycle = LifecycleEvent {
            agent: "a".into(),
            instance_id: "i".into(),
            timestamp: crate::clock::now(),
            task_types: None,
        };
        let body = serde_json::to_vec(&lifecycle).unwrap();
        assert!(!String::from_utf8_lossy(&body).contains("task_types"));
        assert_eq!(
            PlatformEvent::parse(subjects::AGENT_DEREGISTERED, &body).unwrap(),
            PlatformEvent::AgentDeregistered(lifecycle)
        );
        let offline = json!({"agent": "a", "instance_id": "i", "timestamp": "t",
            "reason": "heartbeat_timeout", "last_seen": "t", "host": "h", "reported_by": "j"});
        let parsed = PlatformEvent::parse(subjects::AGENT_OFFLINE, offline.to_string().as_bytes());
        assert!(matches!(
            parsed,
            Ok(PlatformEvent::AgentOffline(OfflineEvent {
                reason: OfflineReason::HeartbeatTimeout,
                ..
            }))
        ));
        assert!(matches!(
            PlatformEvent::parse("chat.message.new", b"{}"),
            Err(EventParseError::UnknownSubject(_))
        ));
        assert!(matches!(
            PlatformEvent::parse(subjects::AGENT_OFFLINE, b"{}"),
            Err(EventParseError::Body { .. })
        ));
    }
}
