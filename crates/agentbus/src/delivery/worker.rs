//! Working durable consumers: fetch by priority, run jobs with progress acks.
//!
//! Priority policy: sources are grouped by priority. Each round fetches as
//! many messages as there are free slots, from the most urgent group first;
//! every eighth round visits the groups in reverse, so that under a sustained
//! backlog of urgent work, low-priority work still gets at least one round in
//! eight. Only sources that may hold messages are fetched from: a fetch that
//! comes back short marks its source empty, and a core subscription to the
//! source's subject marks it non-empty again when something is published.
//! Redeliveries (after a NAK delay or an expired ack wait) publish nothing, so
//! an idle worker also looks at every source once per `idle_poll`.
//!
//! Fetches are pull requests answered on one subscription that lives as long
//! as the worker ([`Puller`]), rather than on a subscription per fetch.

use super::settle::Delivery;
use crate::protocol::Priority;
use crate::subject::{self, overlaps};
use async_nats::jetstream::{self, consumer::PullConsumer, consumer::pull::BatchConfig};
use async_nats::{StatusCode, Subject};
use futures::FutureExt;
use futures::StreamExt;
use futures::stream::FuturesUnordered;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

/// Every `REVERSE_EVERY`th round visits the least urgent sources first.
const REVERSE_EVERY: u64 = 8;
/// A busy worker refills when half of its slots are free...
const REFILL_FRACTION: usize = 2;
/// ...or when this long has passed since the first slot freed.
const REFILL_LINGER: Duration = Duration::from_millis(2);
/// How long a fetch waits for the server's answer before giving up on it.
const FETCH_TIMEOUT: Duration = Duration::from_secs(5);

/// A durable consumer to work, at a priority.
#[derive(Debug)]
pub(crate) struct Source {
    pub(crate) consumer: PullConsumer,
    /// Subjects (or patterns) whose publishes mean the consumer may have work.
    pub(crate) wake_subjects: Vec<String>,
    pub(crate) priority: Priority,
}

/// How to work a set of sources.
#[derive(Debug, Clone)]
pub(crate) struct WorkerConfig {
    /// Jobs running at once.
    pub(crate) max_concurrency: usize,
    /// How often an idle worker looks at every source.
    pub(crate) idle_poll: Duration,
}

/// What to do with each delivery.
pub(crate) trait Job: Send + Sync + 'static {
    /// Handles one delivery and settles it (see [`super::settle`]); one left
    /// unsettled is delivered again after the ack wait.
    fn run(&self, delivery: Delivery) -> impl Future<Output = ()> + Send;
}

struct SourceState {
    source: Source,
    maybe_pending: bool,
}

/// Works `sources` until `stop` carries a deadline; jobs still running then
/// are given until that deadline to finish (their messages are redelivered
/// elsewhere otherwise).
pub(crate) async fn run_worker<J: Job>(
    client: async_nats::Client,
    jetstream: jetstream::Context,
    sources: Vec<Source>,
    job: Arc<J>,
    config: WorkerConfig,
    mut stop: watch::Receiver<Option<tokio::time::Instant>>,
) {
    let mut states: Vec<SourceState> = sources
        .into_iter()
        .map(|source| SourceState {
            source,
            maybe_pending: true,
        })
        .collect();
    // Most urgent first; the sort is stable, so the given order breaks ties.
    states.sort_by_key(|s| std::cmp::Reverse(s.source.priority));
    // Subscribed only while idle: under load every publish would otherwise
    // reach every worker a second time, for nothing.
    let mut wake: Option<WakeStream> = None;
    let max_concurrency = config.max_concurrency.max(1);
    let refill = (max_concurrency / REFILL_FRACTION).max(1);
    // Jobs are polled here, in the worker's task, rather than spawned: one
    // task per message costs more than the work of a quick handler. Jobs
    // therefore share a thread; CPU-heavy handlers should use spawn_blocking.
    let mut running = FuturesUnordered::new();
    let mut round = 0u64;
    let mut puller = loop {
        match Puller::new(&client, jetstream.clone()).await {
            Ok(puller) => break puller,
            Err(err) => {
                tracing::warn!(%err, "cannot subscribe for pull replies; retrying");
                tokio::select! {
                    _ = stop.changed() => return,
                    () = tokio::time::sleep(config.idle_poll) => {}
                }
            }
        }
    };
    loop {
        if stop.borrow().is_some() {
            break;
        }
        // Wait for free slots: for one at least, and, while jobs finish, up to
        // REFILL_LINGER for `refill` of them, so that a busy worker fetches
        // in batches rather than paying a round trip per message.
        let mut linger_until = None;
        while running.len() >= max_concurrency
            || (max_concurrency - running.len() < refill && !running.is_empty())
        {
            let linger = async {
                match linger_until {
                    Some(until) => tokio::time::sleep_until(until).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = stop.changed() => break,
                _ = running.next() => {
                    linger_until.get_or_insert_with(|| tokio::time::Instant::now() + REFILL_LINGER);
                }
                () = linger => break,
            }
        }
        if stop.borrow().is_some() {
            break;
        }
        round += 1;
        let reverse = round.is_multiple_of(REVERSE_EVERY);
        let mut fetched = 0;
        let order: Vec<usize> = if reverse {
            (0..states.len()).rev().collect()
        } else {
            (0..states.len()).collect()
        };
        for index in order {
            let free = max_concurrency - running.len();
            if free == 0 {
                break;
            }
            let state = &mut states[index];
            if !state.maybe_pending {
                continue;
            }
            // Jobs keep running while the fetch waits for the server.
            let fetching = puller.fetch(&state.source.consumer, free);
            tokio::pin!(fetching);
            let messages = loop {
                tokio::select! {
                    messages = &mut fetching => break messages,
                    Some(()) = running.next(), if !running.is_empty() => {}
                }
            };
            if messages.len() < free {
                state.maybe_pending = false;
            }
            fetched += messages.len();
            let ack_wait = state.source.consumer.cached_info().config.ack_wait;
            for message in messages {
                let job = job.clone();
                let delivery = Delivery::new(message, ack_wait);
                running.push(async move {
                    let sequence = delivery.stream_sequence();
                    if AssertUnwindSafe(job.run(delivery))
                        .catch_unwind()
                        .await
                        .is_err()
                    {
                        // The delivery stays unacknowledged and is redelivered.
                        tracing::error!(sequence, "a job panicked");
                    }
                });
            }
        }
        if fetched > 0 {
            wake = None;
            continue;
        }
        let Some(wake_stream) = wake.as_mut() else {
            // Going idle: watch the subjects, then look once more, so that a
            // publish between the last fetch and the subscription is not missed.
            match subscribe_all(&client, &states).await {
                Ok(stream) => wake = Some(stream),
                Err(err) => tracing::warn!(%err, "cannot watch queue subjects; polling instead"),
            }
            for state in &mut states {
                state.maybe_pending = true;
            }
            if wake.is_some() {
                continue;
            }
            tokio::select! {
                _ = stop.changed() => break,
                Some(()) = running.next(), if !running.is_empty() => {}
                _ = tokio::time::sleep(config.idle_poll) => {}
            }
            continue;
        };
        // Nothing to do: wait for a publish, a finished job, the poll timer or stop.
        tokio::select! {
            _ = stop.changed() => break,
            Some(subject) = wake_stream.next() => {
                for state in states
                    .iter_mut()
                    .filter(|s| s.source.wake_subjects.iter().any(|w| overlaps(w, &subject)))
                {
                    state.maybe_pending = true;
                }
            }
            Some(()) = running.next(), if !running.is_empty() => {}
            _ = tokio::time::sleep(config.idle_poll) => {
                for state in &mut states {
                    state.maybe_pending = true;
                }
            }
        }
    }
    let deadline = stop.borrow().unwrap_or_else(tokio::time::Instant::now);
    let finished =
        tokio::time::timeout_at(deadline, async { while running.next().await.is_some() {} }).await;
    if finished.is_err() {
        tracing::warn!(
            abandoned = running.len(),
            "deadline passed with queued tasks running; they will be redelivered"
        );
        drop(running);
    }
}

type WakeStream = futures::stream::SelectAll<futures::stream::BoxStream<'static, String>>;

async fn subscribe_all(
    client: &async_nats::Client,
    states: &[SourceState],
) -> Result<WakeStream, async_nats::SubscribeError> {
    let mut streams = Vec::new();
    for subject in states.iter().flat_map(|s| &s.source.wake_subjects) {
        let subscriber = client.subscribe(subject.clone()).await?;
        streams.push(subscriber.map(|m| m.subject.to_string()).boxed());
    }
    Ok(futures::stream::select_all(streams))
}

/// Pull requests of one worker and their answers, on one subscription to
/// `<inbox>.*`. Each request gets its own reply subject `<inbox>.<n>`, so
/// that a status is matched to its request (messages arrive under their own
/// subject, whatever the request).
struct Puller {
    client: async_nats::Client,
    jetstream: jetstream::Context,
    inbox: String,
    replies: async_nats::Subscriber,
    requests: u64,
    /// A fetch was given up: what the server still sends for it must not be
    /// taken (and run) later, so the next fetch starts on a new inbox. The
    /// server drops those messages, and redelivers them after the ack wait.
    abandoned: bool,
}

impl Puller {
    async fn new(
        client: &async_nats::Client,
        jetstream: jetstream::Context,
    ) -> Result<Self, async_nats::SubscribeError> {
        let inbox = client.new_inbox();
        let replies = client.subscribe(subject::pull_replies(&inbox)).await?;
        Ok(Self {
            client: client.clone(),
            jetstream,
            inbox,
            replies,
            requests: 0,
            abandoned: false,
        })
    }

    /// Fetches up to `max` messages that are there now, without waiting.
    async fn fetch(&mut self, consumer: &PullConsumer, max: usize) -> Vec<jetstream::Message> {
        if self.abandoned {
            match Self::new(&self.client, self.jetstream.clone()).await {
                Ok(fresh) => *self = fresh, // the old subscription ends on drop
                Err(err) => {
                    tracing::warn!(%err, "cannot subscribe for pull replies");
                    return Vec::new();
                }
            }
        }
        self.requests += 1;
        let reply = Subject::from(subject::pull_reply(&self.inbox, self.requests));
        let request = BatchConfig {
            batch: max,
            no_wait: true,
            ..Default::default()
        };
        if let Err(err) = consumer.request_batch(request, reply.clone()).await {
            tracing::warn!(%err, "fetch from a work queue failed");
            return Vec::new();
        }
        let mut messages = Vec::with_capacity(max);
        let deadline = tokio::time::Instant::now() + FETCH_TIMEOUT;
        while messages.len() < max {
            let message = match tokio::time::timeout_at(deadline, self.replies.next()).await {
                Ok(Some(message)) => message,
                Ok(None) => {
                    tracing::warn!("the pull reply subscription ended");
                    self.abandoned = true;
                    break;
                }
                Err(_) => {
                    tracing::warn!(timeout = ?FETCH_TIMEOUT, "no answer to a fetch from a work queue");
                    self.abandoned = true;
                    break;
                }
            };
            match message.status {
                None | Some(StatusCode::OK) => messages.push(jetstream::Message {
                    message,
                    context: self.jetstream.clone(),
                }),
                Some(_) if message.subject != reply => {} // about an earlier request
                Some(StatusCode::IDLE_HEARTBEAT) => {}
                // No (more) messages, or the request expired: the batch is done.
                Some(StatusCode::NOT_FOUND | StatusCode::TIMEOUT) => break,
                Some(status) => {
                    tracing::warn!(%status, description = ?message.description, "fetch from a work queue ended");
                    break;
                }
            }
        }
        messages
    }
}
