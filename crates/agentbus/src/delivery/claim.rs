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
use std::sync::{Arc, Mutex};

/// The work queue `tasks.<agent>` of one agent, taken from most urgent first.
#[derive(Debug, Clone)]
pub struct TaskClaims {
    queue: Queue,
    /// The queue's consumers as made, most urgent first: the server deletes
    /// one that is idle past its inactive threshold, and it is made again.
    consumers: Arc<Mutex<Vec<(ConsumerSpec, PullConsumer)>>>,
    /// The options the consumers are made with.
    options: DeliveryOptions,
    /// Whether consumers that exist keep the options they were made with.
    sharing: bool,
    bus: Bus,
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

/// What kind of [`ClaimError`] happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ClaimErrorKind {
    /// A queue consumer could not be set up.
    Consumer,
    /// The results bucket is missing or unreadable.
    Record,
    /// A task that cannot run could not be settled.
    Settle,
    /// Fetching from the queue failed.
    Fetch,
}

impl ClaimError {
    /// What kind of error this is.
    pub fn kind(&self) -> ClaimErrorKind {
        match self {
            Self::Consumer(_) => ClaimErrorKind::Consumer,
            Self::Record(_) => ClaimErrorKind::Record,
            Self::Settle(_) => ClaimErrorKind::Settle,
            Self::Fetch { .. } => ClaimErrorKind::Fetch,
        }
    }
}

impl TaskClaims {
    /// Creates (or updates) the queue's consumers, one per priority.
    pub async fn open(
        bus: &Bus,
        agent: &Name,
        instance_id: &str,
        options: DeliveryOptions,
    ) -> Result<Self, ClaimError> {
        Self::open_with(bus, agent, instance_id, options, false).await
    }

    /// Like [`TaskClaims::open`], for a process that shares the queue with
    /// runtime replicas of the agent and has no delivery options of its own:
    /// consumers that exist keep the options they were made with (see
    /// [`ConsumerSpec::create_sharing`]), and the rest are made with
    /// `defaults`.
    pub async fn open_sharing(
        bus: &Bus,
        agent: &Name,
        instance_id: &str,
        defaults: DeliveryOptions,
    ) -> Result<Self, ClaimError> {
        Self::open_with(bus, agent, instance_id, defaults, true).await
    }

    async fn open_with(
        bus: &Bus,
        agent: &Name,
        instance_id: &str,
        options: DeliveryOptions,
        sharing: bool,
    ) -> Result<Self, ClaimError> {
        let queue = Queue::Agent(agent.clone());
        let mut consumers = Vec::with_capacity(Priority::ALL.len());
        let mut settling = options;
        for priority in Priority::ALL {
            let spec = ConsumerSpec::task_queue(&queue, priority);
            let (consumer, made_with) = make(bus, &spec, &options, sharing).await?;
            if priority == Priority::Normal {
                // Failed attempts are retried and given up by the normal
                // queue's options: replicas make all four alike.
                settling = made_with;
            }
            consumers.push((spec, consumer));
        }
        let settler = Settler::for_tasks(bus, settling, instance_id.into()).await?;
        Ok(Self {
            queue,
            consumers: Arc::new(Mutex::new(consumers)),
            options,
            sharing,
            bus: bus.clone(),
            settler,
        })
    }

    /// Keeps `made` as the consumer of priority `index`.
    fn replace(&self, index: usize, made: PullConsumer) {
        let mut consumers = self.consumers.lock().unwrap_or_else(|e| e.into_inner());
        consumers[index].1 = made;
    }

    /// The consumer of priority `index` (most urgent first).
    fn consumer(&self, index: usize) -> Option<(ConsumerSpec, PullConsumer)> {
        let consumers = self.consumers.lock().unwrap_or_else(|e| e.into_inner());
        consumers.get(index).cloned()
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
        for index in 0..Priority::ALL.len() {
            let Some((spec, mut consumer)) = self.consumer(index) else {
                continue;
            };
            loop {
                let message = match self.fetch_one(&consumer).await {
                    Ok(message) => message,
                    // Deleted while idle (no responders): made again, once.
                    Err(err) => match make(&self.bus, &spec, &self.options, self.sharing).await {
                        Ok((made, _)) => {
                            consumer = made.clone();
                            self.replace(index, made);
                            self.fetch_one(&consumer).await?
                        }
                        Err(_) => return Err(err),
                    },
                };
                let Some(message) = message else { break };
                // A runtime replica may have made the consumer with its own ack wait.
                let ack_wait = consumer.cached_info().config.ack_wait;
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

/// Makes a queue consumer: with `options`, or, `sharing`, keeping the
/// options of one that exists. Returns it with the options in force.
async fn make(
    bus: &Bus,
    spec: &ConsumerSpec,
    options: &DeliveryOptions,
    sharing: bool,
) -> Result<(PullConsumer, DeliveryOptions), ConsumerError> {
    if sharing {
        spec.create_sharing(bus, options).await
    } else {
        Ok((spec.create(bus, options).await?, *options))
    }
}
