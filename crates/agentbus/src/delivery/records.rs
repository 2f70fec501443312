//! The state and result of queued tasks, in the KV bucket `agent-task-results`.

use super::{DeliveryError, now_rfc3339};
use crate::protocol::TaskResponse;
use crate::subject::TASK_RESULTS_BUCKET;
use async_nats::jetstream::{self, kv};
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use std::time::Duration;

/// Where a queued task stands (while it is still queued and never failed, no
/// record exists yet).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TaskState {
    /// An attempt failed; the task waits to be retried.
    Retrying,
    /// The task finished; `response` holds the TaskResponse.
    Completed,
    /// The task failed for good and sits in the dead-letter stream.
    DeadLettered,
}

/// One failed attempt.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AttemptError {
    /// 1 for the first delivery.
    pub attempt: u32,
    /// What went wrong.
    pub error: String,
    /// When, RFC 3339.
    pub at: String,
    /// The runtime instance that ran the attempt.
    pub instance_id: String,
}

/// What is known of a queued task.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskRecord {
    /// The task id.
    pub task_id: String,
    /// Where it stands.
    pub state: TaskState,
    /// The subject it was queued on.
    pub subject: String,
    /// Deliveries so far.
    pub attempts: u32,
    /// Each failed attempt.
    pub errors: Vec<AttemptError>,
    /// The final response, once completed or dead-lettered.
    pub response: Option<TaskResponse>,
    /// Last change, RFC 3339.
    pub updated_at: String,
}

impl TaskRecord {
    /// A record for a task seen for the first time.
    pub(crate) fn new(task_id: &str, subject: &str) -> Self {
        Self {
            task_id: task_id.to_owned(),
            state: TaskState::Retrying,
            subject: subject.to_owned(),
            attempts: 0,
            errors: Vec::new(),
            response: None,
            updated_at: now_rfc3339(),
        }
    }
}

/// KV keys allow fewer characters than task ids: ids that are not plain are
/// hex-encoded under a prefix that a plain id cannot start with.
pub(crate) fn record_key(task_id: &str) -> String {
    let plain = !task_id.is_empty()
        && task_id.len() <= 200
        && !task_id.starts_with("x=")
        && task_id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
    if plain {
        task_id.to_owned()
    } else {
        let hex: String = task_id.bytes().map(|b| format!("{b:02x}")).collect();
        format!("x={hex}")
    }
}

/// Access to the records bucket.
#[derive(Debug, Clone)]
pub(crate) struct Records {
    store: kv::Store,
}

impl Records {
    pub(crate) async fn open(js: &jetstream::Context) -> Result<Self, DeliveryError> {
        let store = js.get_key_value(TASK_RESULTS_BUCKET).await.map_err(|err| {
            DeliveryError::jetstream("open the task results bucket (run `agentbus setup`)", err)
        })?;
        Ok(Self { store })
    }

    pub(crate) async fn get(&self, task_id: &str) -> Result<Option<TaskRecord>, DeliveryError> {
        let value = self
            .store
            .get(record_key(task_id))
            .await
            .map_err(|err| DeliveryError::jetstream("read a task record", err))?;
        Ok(value.and_then(|bytes| serde_json::from_slice(&bytes).ok()))
    }

    pub(crate) async fn put(&self, record: &TaskRecord) -> Result<(), DeliveryError> {
        let body = serde_json::to_vec(record)
            .map_err(|err| DeliveryError::jetstream("encode a task record", err))?;
        self.store
            .put(record_key(&record.task_id), body.into())
            .await
            .map_err(|err| DeliveryError::jetstream("store a task record", err))?;
        Ok(())
    }

    pub(crate) async fn delete(&self, task_id: &str) -> Result<(), DeliveryError> {
        self.store
            .delete(record_key(task_id))
            .await
            .map_err(|err| DeliveryError::jetstream("delete a task record", err))
    }

    /// Waits until the task is completed or dead-lettered.
    pub(crate) async fn wait_final(
        &self,
        task_id: &str,
        timeout: Duration,
    ) -> Result<TaskRecord, DeliveryError> {
        let key = record_key(task_id);
        // Watch first, then read, so a change between the two is not missed.
        let mut watch = self
            .store
            .watch(&key)
            .await
            .map_err(|err| DeliveryError::jetstream("watch a task record", err))?;
        if let Some(record) = self.get(task_id).await?
            && record.state != TaskState::Retrying
        {
            return Ok(record);
        }
        let waited = tokio::time::timeout(timeout, async {
            while let Some(entry) = watch.next().await {
                let Ok(entry) = entry else { continue };
                if entry.operation != kv::Operation::Put {
                    continue;
                }
                if let Ok(record) = serde_json::from_slice::<TaskRecord>(&entry.value)
                    && record.state != TaskState::Retrying
                {
                    return Some(record);
                }
            }
            None
        })
        .await;
        match waited {
            Ok(Some(record)) => Ok(record),
            Ok(None) => Err(DeliveryError::jetstream(
                "watch a task record",
                "the watch ended",
            )),
            Err(_) => Err(DeliveryError::WaitTimedOut {
                task_id: task_id.to_owned(),
                after: timeout,
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_ids_are_keys_and_others_are_encoded() {
        assert_eq!(record_key("0b5c-1a_Z"), "0b5c-1a_Z");
        assert_eq!(record_key("a.b"), "x=612e62");
        assert_eq!(record_key("x=1"), "x=783d31");
        assert_ne!(record_key("a b"), record_key("a_b"));
    }
}
