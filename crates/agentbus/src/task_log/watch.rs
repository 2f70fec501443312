//! Following a task's log: replay from any sequence, then live, to the end.

use super::LogEvent;
use super::writer::{LogError, find_last_event};
use crate::client::Bus;
use crate::delivery::TaskState;
use crate::subject::{self, TASK_EVENTS_STREAM};
use crate::task_id::{TaskId, TaskKey};
use async_nats::jetstream::consumer::DeliverPolicy;
use async_nats::jetstream::consumer::push::OrderedConfig;
use futures::{Stream, StreamExt};
use std::pin::Pin;
use std::task::{Context, Poll};

/// What a watch yields.
#[derive(Debug, Clone, PartialEq)]
pub enum Watched {
    /// The next event of the log.
    Event(LogEvent),
    /// Events `from` up to `until` (not included) are no longer stored: the
    /// stream's limits or age removed them. The events after follow.
    Gone {
        /// The first sequence missing.
        from: u64,
        /// The first sequence still stored.
        until: u64,
    },
}

/// Why a task cannot be watched, or a watch stopped.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum WatchError {
    /// The task finished without logging anything, or its whole log is
    /// gone: only its record tells how it ended.
    #[error(
        "task {task_id} is over ({state}) and its log holds no events: it reported nothing while it ran, or its events aged out; `agentbus task {task_id}` shows its record"
    )]
    NotLogged {
        /// The task.
        task_id: TaskId,
        /// Its state, from its record.
        state: TaskState,
    },
    /// The log could not be read.
    #[error(transparent)]
    Log(#[from] LogError),
    /// The stream's messages could not be followed.
    #[error("cannot follow the log of task {task_id}: {source}")]
    Follow {
        /// The task.
        task_id: TaskId,
        /// Why.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

/// What went wrong watching a task.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum WatchErrorKind {
    /// The task is over and logged nothing.
    NotLogged,
    /// The log could not be read or followed.
    Stream,
}

impl WatchError {
    /// What went wrong.
    pub fn kind(&self) -> WatchErrorKind {
        match self {
            Self::NotLogged { .. } => WatchErrorKind::NotLogged,
            Self::Log(_) | Self::Follow { .. } => WatchErrorKind::Stream,
        }
    }
}

/// The events of one task, from a sequence to its final state (see
/// [`Bus::watch`]). Its consumer on the server is deleted when it is
/// dropped, rather than left for the server's 30 s inactive threshold.
pub struct Watch {
    inner: Pin<Box<dyn Stream<Item = Result<Watched, WatchError>> + Send>>,
    consumer: Option<(async_nats::jetstream::Context, String)>,
}

impl Drop for Watch {
    fn drop(&mut self) {
        let Some((jetstream, name)) = self.consumer.take() else {
            return;
        };
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move {
                let _ = jetstream
                    .delete_consumer_from_stream(&name, TASK_EVENTS_STREAM)
                    .await;
            });
        }
    }
}

impl std::fmt::Debug for Watch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Watch").finish_non_exhaustive()
    }
}

impl Stream for Watch {
    type Item = Result<Watched, WatchError>;
    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.inner.as_mut().poll_next(cx)
    }
}

impl Bus {
    /// The events of task `task_id` from sequence `from` (1 for all): what
    /// is stored first, then each new event as it is written, ending after
    /// the final state. Events asked for that the stream no longer holds are
    /// reported as [`Watched::Gone`], never skipped silently. Works the same
    /// while the task waits, runs or after it finished, and can be started
    /// before the task is sent: nothing is missed in between.
    ///
    /// A task that is over and logged nothing is [`WatchError::NotLogged`];
    /// one not known yet is waited for. With an agent identity, the tasks
    /// this agent sent can be followed, and no others.
    pub async fn watch(&self, task_id: &TaskId, from: u64) -> Result<Watch, WatchError> {
        let from = from.max(1);
        let stream = self
            .jetstream()
            .get_stream_no_info(TASK_EVENTS_STREAM)
            .await
            .map_err(|err| follow_error(task_id, err))?;
        let name = subject::watch_consumer();
        let consumer = stream
            .create_consumer(OrderedConfig {
                name: Some(name.clone()),
                deliver_subject: self.client().new_inbox(),
                filter_subject: subject::task_events_matching(&TaskKey::pattern(
                    self.identity(),
                    task_id,
                )),
                deliver_policy: DeliverPolicy::All,
                ..Default::default()
            })
            .await
            .map_err(|err| follow_error(task_id, err))?;
        let messages = consumer
            .messages()
            .await
            .map_err(|err| follow_error(task_id, err))?;
        // Following first, then looking: a task that ends in between is
        // still seen in the log.
        if find_last_event(self, self.identity(), task_id)
            .await?
            .is_none()
            && let Ok(report) = self.task_report_logged(task_id, false, None).await
            && report.state.is_final()
        {
            return Err(WatchError::NotLogged {
                task_id: task_id.clone(),
                state: report.state,
            });
        }
        let task_id = task_id.clone();
        let state = Follow {
            messages,
            task_id,
            next: from,
            ended: false,
            queued: None,
        };
        let inner = futures::stream::unfold(state, |mut state| async move {
            let item = state.next_item().await?;
            Some((item, state))
        });
        Ok(Watch {
            inner: Box::pin(inner),
            consumer: Some((self.jetstream().clone(), name)),
        })
    }
}

struct Follow {
    messages: async_nats::jetstream::consumer::push::Ordered,
    task_id: TaskId,
    /// The sequence wanted next.
    next: u64,
    ended: bool,
    /// An event that follows a gap, yielded after the gap.
    queued: Option<LogEvent>,
}

impl Follow {
    async fn next_item(&mut self) -> Option<Result<Watched, WatchError>> {
        if let Some(event) = self.queued.take() {
            return Some(Ok(self.deliver(event)));
        }
        if self.ended {
            return None;
        }
        loop {
            let message = match self.messages.next().await? {
                Ok(message) => message,
                Err(err) => {
                    self.ended = true;
                    return Some(Err(follow_error(&self.task_id, err)));
                }
            };
            let Ok(event) = serde_json::from_slice::<LogEvent>(&message.payload) else {
                continue;
            };
            if event.task_id != self.task_id {
                continue;
            }
            if event.seq < self.next {
                // Before what was asked for; a final one ends the watch.
                if event.kind.is_final() {
                    self.ended = true;
                    return None;
                }
                continue;
            }
            if event.seq > self.next {
                let gone = Watched::Gone {
                    from: self.next,
                    until: event.seq,
                };
                self.next = event.seq;
                self.queued = Some(event);
                return Some(Ok(gone));
            }
            return Some(Ok(self.deliver(event)));
        }
    }

    fn deliver(&mut self, event: LogEvent) -> Watched {
        self.next = event.seq + 1;
        if event.kind.is_final() {
            self.ended = true;
        }
        Watched::Event(event)
    }
}

fn follow_error(
    task_id: &TaskId,
    source: impl std::error::Error + Send + Sync + 'static,
) -> WatchError {
    WatchError::Follow {
        task_id: task_id.clone(),
        source: Box::new(source),
    }
}
