//! The agent's durable inbox (`agent.<name>.inbox`), read through the durable
//! pull consumer `inbox-<name>`, made from the library's one definition of it
//! (in order: a message is delivered once the one before it is acknowledged,
//! whoever reads the inbox, this bridge or a runtime replica of the agent).
//!
//! Messages are fetched unacknowledged and handed to `Settlements` under the
//! id of the tool call that returns them; the transport acknowledges them
//! only once that result has been written to the client (see
//! [`crate::transport`]). A client that dies first loses nothing: the
//! messages come back after the consumer's ack wait. While they wait for the
//! acknowledgement they are in flight, so a second read does not return them
//! again.

use crate::untrusted::untrusted;
use agentbus::Name;
use agentbus::delivery::{ConsumerError, ConsumerSpec, DeliveryOptions, body_value};
use async_nats::jetstream::{self, AckKind, consumer::PullConsumer};
use futures::StreamExt;
use rmcp::model::RequestId;
use serde_json::{Value, json};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};
use tokio::sync::watch;
use tokio::task::JoinSet;

/// Why the inbox could not be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum InboxError {
    /// The consumer could not be created.
    #[error(transparent)]
    Consumer(#[from] ConsumerError),
    /// Watching the inbox subject failed.
    #[error("cannot watch the inbox: {0}")]
    Watch(#[source] async_nats::SubscribeError),
    /// Fetching failed.
    #[error("cannot read the inbox: {0}")]
    Fetch(#[source] async_nats::Error),
}

/// Why the inbox could not be used, as a kind to match.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum InboxErrorKind {
    /// Its durable consumer could not be created (see [`ConsumerError::kind`]).
    Consumer,
    /// Its subject could not be watched.
    Watch,
    /// Reading it failed.
    Fetch,
}

impl InboxError {
    /// Why the inbox could not be used.
    pub fn kind(&self) -> InboxErrorKind {
        match self {
            Self::Consumer(_) => InboxErrorKind::Consumer,
            Self::Watch(_) => InboxErrorKind::Watch,
            Self::Fetch(_) => InboxErrorKind::Fetch,
        }
    }
}

/// The inbox of the bridged agent.
#[derive(Debug, Clone)]
pub(crate) struct Inbox {
    consumer: PullConsumer,
    /// Counts publishes to the inbox subject seen by [`watch_inbox`].
    arrivals: watch::Receiver<u64>,
    /// The task behind `arrivals`.
    watcher: tokio::task::AbortHandle,
}

impl Inbox {
    /// Creates (or reuses) the durable consumer and starts watching the inbox
    /// subject. The watch ends with the connection.
    pub(crate) async fn open(bus: &agentbus::Bus, agent: &Name) -> Result<Self, InboxError> {
        let spec = ConsumerSpec::inbox(agent);
        // Created, or updated to the one definition: an existing consumer
        // (from an earlier run, or a runtime serving this name) keeps its
        // cursor, and the ack wait and max deliver it was made with.
        let (consumer, _) = spec
            .create_sharing(bus, &DeliveryOptions::default())
            .await?;
        let [plain, stamped] =
            agentbus::subject::with_senders(&agentbus::subject::agent_inbox(agent));
        let plain = bus
            .client()
            .subscribe(plain)
            .await
            .map_err(InboxError::Watch)?;
        let stamped = bus
            .client()
            .subscribe(stamped)
            .await
            .map_err(InboxError::Watch)?;
        let (arrived, arrivals) = watch::channel(0);
        let subscription = futures::stream::select(plain, stamped);
        let watcher = tokio::spawn(watch_inbox(subscription, arrived)).abort_handle();
        Ok(Self {
            consumer,
            arrivals,
            watcher,
        })
    }

    /// How long a read message may stay unacknowledged before JetStream
    /// delivers it again (the client died between read and result).
    pub(crate) fn ack_wait(&self) -> Duration {
        self.consumer.cached_info().config.ack_wait
    }

    /// Stops watching the inbox subject (at shutdown).
    pub(crate) fn close(&self) {
        self.watcher.abort();
    }

    /// A receiver that changes whenever a message arrives.
    pub(crate) fn arrivals(&self) -> watch::Receiver<u64> {
        self.arrivals.clone()
    }

    /// Messages not yet delivered to any read.
    pub(crate) async fn waiting(&self) -> Result<u64, InboxError> {
        let info = self
            .consumer
            .get_info()
            .await
            .map_err(|err| InboxError::Fetch(err.into()))?;
        Ok(info.num_pending)
    }

    /// The next message, if one waits now; if none does and `wait` is not
    /// zero, waits that long for one to arrive. The inbox hands out one
    /// message at a time, in order: while the previous one is unacknowledged
    /// (its result not yet written, or another reader of the inbox working
    /// on it) the next one waits.
    pub(crate) async fn take(
        &self,
        wait: Duration,
    ) -> Result<Option<jetstream::Message>, InboxError> {
        let mut arrivals = self.arrivals.clone();
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            arrivals.mark_unchanged();
            if self.waiting().await? > 0
                && let Some(message) = self.fetch_next().await?
            {
                return Ok(Some(message));
            }
            let arrived = tokio::time::timeout_at(deadline, arrivals.changed()).await;
            if !arrived.is_ok_and(|changed| changed.is_ok()) {
                return Ok(None);
            }
        }
    }

    /// Fetches the next message. A message waits, so the request stays open
    /// until it can be delivered (once the one before it is acknowledged),
    /// for at most [`BLOCKED_FETCH`].
    async fn fetch_next(&self) -> Result<Option<jetstream::Message>, InboxError> {
        let mut batch = self
            .consumer
            .fetch()
            .max_messages(1)
            .expires(BLOCKED_FETCH)
            .messages()
            .await
            .map_err(|err| InboxError::Fetch(err.into()))?;
        match batch.next().await {
            Some(Ok(message)) => Ok(Some(message)),
            Some(Err(err)) => Err(InboxError::Fetch(err)),
            None => Ok(None),
        }
    }
}

/// How long a read waits for the message before it to be acknowledged.
const BLOCKED_FETCH: Duration = Duration::from_secs(1);

/// Bumps `arrived` for every message published to the inbox subject.
async fn watch_inbox(
    mut subscription: impl futures::Stream<Item = async_nats::Message> + Unpin,
    arrived: watch::Sender<u64>,
) {
    while subscription.next().await.is_some() {
        arrived.send_modify(|count| *count += 1);
    }
}

/// A message as the model sees it: the body marked as untrusted content of
/// its sender.
pub(crate) fn describe(message: &jetstream::Message) -> Value {
    let header = |name: &str| {
        message
            .headers
            .as_ref()
            .and_then(|h| h.get(name))
            .map(|v| v.as_str().to_owned())
    };
    // The sender the bus vouches for (the subject's last token, which only
    // that agent's identity may publish); a `from` header is a claim, and
    // is not shown as the sender.
    let sender = agentbus::subject::sender_of(&message.subject);
    let label = match &sender {
        agentbus::Sender::Agent(name) => name.to_string(),
        agentbus::Sender::Unverified => "(unverified sender)".to_owned(),
    };
    let mut described = untrusted(Some(&label), body_value(&message.payload));
    described["sender_verified"] = json!(sender.is_verified());
    if let Ok(info) = message.info() {
        described["sequence"] = json!(info.stream_sequence);
        let nanos = u64::try_from(info.published.unix_timestamp_nanos()).unwrap_or(0);
        let sent = SystemTime::UNIX_EPOCH + Duration::from_nanos(nanos);
        described["sent_at"] = json!(humantime::format_rfc3339_millis(sent).to_string());
    }
    if let Some(id) = header("Nats-Msg-Id") {
        described["message_id"] = json!(id);
    }
    described
}

/// Messages to acknowledge once the result of the tool call that returned
/// them has been written, by that call's request id.
#[derive(Debug, Clone, Default)]
pub(crate) struct Settlements {
    pending: Arc<Mutex<HashMap<RequestId, Vec<jetstream::Message>>>>,
    /// Acknowledgements (or releases) under way, finished before the bridge exits.
    settling: Arc<Mutex<JoinSet<()>>>,
}

impl Settlements {
    /// Holds `messages` until the response to `request` is written.
    pub(crate) fn hold(&self, request: RequestId, messages: Vec<jetstream::Message>) {
        if messages.is_empty() {
            return;
        }
        if let Ok(mut pending) = self.pending.lock() {
            pending.entry(request).or_default().extend(messages);
        }
    }

    /// The response to `request` was written (`delivered`) or could not be:
    /// acknowledges or releases what it returned.
    pub(crate) fn settle(&self, request: &RequestId, delivered: bool) {
        let messages = self
            .pending
            .lock()
            .ok()
            .and_then(|mut pending| pending.remove(request))
            .unwrap_or_default();
        if messages.is_empty() {
            return;
        }
        if let Ok(mut settling) = self.settling.lock() {
            while settling.try_join_next().is_some() {}
            if delivered {
                settling.spawn(acknowledge(messages));
            } else {
                settling.spawn(release(messages));
            }
        }
    }

    /// At shutdown: releases what was never written and waits for the
    /// acknowledgements under way.
    pub(crate) async fn finish(&self) {
        let unsent: Vec<_> = self
            .pending
            .lock()
            .map(|mut pending| pending.drain().flat_map(|(_, m)| m).collect())
            .unwrap_or_default();
        release(unsent).await;
        let settling = self
            .settling
            .lock()
            .map(|mut settling| std::mem::take(&mut *settling))
            .unwrap_or_default();
        settling.join_all().await;
    }
}

/// Acknowledges `messages` and waits for the server to confirm, so a
/// restarted bridge never reads them again.
pub(crate) async fn acknowledge(messages: Vec<jetstream::Message>) {
    let acks = messages.iter().map(|message| message.double_ack());
    for result in futures::future::join_all(acks).await {
        if let Err(err) = result {
            tracing::warn!(%err, "cannot acknowledge an inbox message; it will be read again");
        }
    }
}

/// Hands `messages` back for redelivery now (their result never reached the client).
pub(crate) async fn release(messages: Vec<jetstream::Message>) {
    for message in messages {
        if let Err(err) = message.ack_with(AckKind::Nak(None)).await {
            tracing::warn!(%err, "cannot release an inbox message; it comes back after the ack wait");
        }
    }
}
