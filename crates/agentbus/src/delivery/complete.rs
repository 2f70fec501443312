//! Settling a queued task that was taken by hand rather than by a runtime
//! worker (the MCP bridge lets an LLM agent claim tasks from its own queue):
//! the same records the runtime keeps, so `agentbus task`, [`Bus::wait_task`]
//! and the dead letters see no difference.

use super::records::Records;
use super::{AttemptError, DeliveryError, TaskRecord, TaskState, dead_letter_task, now_rfc3339};
use crate::client::Bus;
use crate::protocol::{TaskResponse, TaskStatus};
use async_nats::jetstream;

impl Bus {
    /// Records `response` as the final outcome of queued task `task_id`
    /// (queued on `subject`, finished at delivery `attempt`), keeping the
    /// errors of earlier attempts. Store it before acknowledging the task's
    /// message, as the runtime does: a crash in between then reruns nothing,
    /// because a redelivery finds the task completed.
    ///
    /// ```no_run
    /// # async fn example(bus: agentbus::Bus) -> Result<(), agentbus::delivery::DeliveryError> {
    /// use agentbus::TaskResponse;
    /// let response = TaskResponse::completed("t-1", serde_json::json!({"text": "done"}));
    /// let record = bus.complete_task_record("t-1", "tasks.llm_agent", 1, &response).await?;
    /// assert_eq!(record.state, agentbus::delivery::TaskState::Completed);
    /// # Ok(()) }
    /// ```
    pub async fn complete_task_record(
        &self,
        task_id: &str,
        subject: &str,
        attempt: u32,
        response: &TaskResponse,
    ) -> Result<TaskRecord, DeliveryError> {
        let records = Records::open(self.jetstream()).await?;
        let mut record = records
            .get(task_id)
            .await?
            .unwrap_or_else(|| TaskRecord::new(task_id, subject));
        record.state = TaskState::Completed;
        record.attempts = record.attempts.max(attempt);
        record.response = Some(response.clone());
        record.updated_at = now_rfc3339();
        records.put(&record).await?;
        Ok(record)
    }

    /// Gives up on a queued task for good: copies `message` to the dead
    /// letters with `error`, removes it from its queue and, when the task id
    /// is known, records it as dead-lettered with status `status` (replayable
    /// with `agentbus dlq replay`). `instance_id` names who gave up.
    pub async fn dead_letter_task_message(
        &self,
        message: &jetstream::Message,
        task_id: Option<&str>,
        error: &str,
        status: TaskStatus,
        instance_id: &str,
    ) -> Result<(), DeliveryError> {
        let js = self.jetstream();
        let records = Records::open(js).await?;
        let subject = message.subject.to_string();
        let attempt = message
            .info()
            .map(|info| u32::try_from(info.delivered).unwrap_or(u32::MAX))
            .unwrap_or(1);
        let mut record = match task_id {
            Some(id) => records
                .get(id)
                .await?
                .unwrap_or_else(|| TaskRecord::new(id, &subject)),
            None => TaskRecord::new("", &subject),
        };
        record.attempts = attempt;
        record.errors.push(AttemptError {
            attempt,
            error: error.to_owned(),
            at: now_rfc3339(),
            instance_id: instance_id.to_owned(),
        });
        let reason = format!("not retryable: {error}");
        dead_letter_task(js, &records, message, record, reason, status).await
    }
}
