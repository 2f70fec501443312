//! An agent's own work queue worked by hand, one task at a time: what the MCP
//! bridge offers a model that claims tasks. The consumers and the settlement
//! are the ones a runtime replica of the agent uses.

use super::consumers::{ConsumerError, ConsumerSpec};
use super::records::RecordError;
use super::settle::{Delivery, Opened, SettleError, Settler, TaskAttempt};
use super::{DeliveryOptions, Queue};
use crate::client::Bus;
use crate::name::Name;
use crate::protocol::{Priority, TaskRequest};
use crate::subject::Subject;
use async_nats::jetstream::consumer::PullConsumer;
use futures::StreamExt;
use std::sync::Arc;

/// The work queue `tasks.<agent>` of one agent, taken from most urgent first.
#[derive(Debug, Clone)]
pub struct TaskClaims {
    queue: Queue,
    /// Most urgent first.
    consumers: Arc<Vec<PullConsumer>>,
    settler: Settler,
}

/// Why the queue could not be opened or read.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClaimError {
    /// A queue consumer could not be set up.
    #[error(transparent)]
    Consumer(#[from] ConsumerError),
    /// The results bucket is missing.
    #[error(transparent)]
    Record(#[from] RecordError),
    /// A task that cannot run could not be settled on the way.
    #[error(transparent)]
    Settle(#[from] SettleError),
    /// Fetching from the queue failed.
    #[error("cannot read the task queue {queue}: {source}")]
    Fetch {
        /// The queue.
        queue: String,
        /// Why.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

impl TaskClaims {
    /// Creates (or updates) the queue's consumers, one per priority.
    pub async fn open(
        bus: &Bus,
        agent: &Name,
        instance_id: &str,
        options: DeliveryOptions,
    ) -> Result<Self, ClaimError> {
        let queue = Queue::Agent(agent.clone());
        let mut consumers = Vec::with_capacity(Priority::ALL.len());
        for priority in Priority::ALL {
            let spec = ConsumerSpec::task_queue(&queue, priority);
            consumers.push(spec.create(bus.jetstream(), &options).await?);
        }
        let settler = Settler::for_tasks(bus, options, instance_id.into()).await?;
        Ok(Self {
            queue,
            consumers: Arc::new(consumers),
            settler,
        })
    }

    /// The subjects the queue's tasks arrive on, to watch for arrivals.
    pub fn subjects(&self) -> Vec<Subject> {
        Priority::ALL
            .iter()
            .map(|priority| self.queue.subject(*priority))
            .collect()
    }

    /// The most urgent task waiting now, opened for running; `None` when the
    /// queue is empty. Deliveries that cannot run (malformed, or finished
    /// before) are settled on the way and skipped.
    pub async fn next(&self) -> Result<Option<(TaskAttempt, TaskRequest)>, ClaimError> {
        for consumer in self.consumers.iter() {
            // A runtime replica may have made the consumer with its own ack wait.
            let ack_wait = consumer.cached_info().config.ack_wait;
            while let Some(message) = self.fetch_one(consumer).await? {
                let delivery = Delivery::new(message, ack_wait);
                if let Opened::Run(attempt, request) = self.settler.open_task(delivery).await? {
                    return Ok(Some((attempt, request)));
                }
            }
        }
        Ok(None)
    }

    async fn fetch_one(
        &self,
        consumer: &PullConsumer,
    ) -> Result<Option<async_nats::jetstream::Message>, ClaimError> {
        let fetch_error = |source: Box<dyn std::error::Error + Send + Sync>| ClaimError::Fetch {
            queue: self.queue.to_string(),
            source,
        };
        let mut batch = consumer
            .fetch()
            .max_messages(1)
            .messages()
            .await
            .map_err(|err| fetch_error(Box::new(err)))?;
        match batch.next().await {
            Some(Ok(message)) => Ok(Some(message)),
            Some(Err(err)) => Err(fetch_error(err)),
            None => Ok(None),
        }
    }
}
