//! The calling side of `bench stream`: follow a task's chunks while it runs,
//! and cancel a running task, through agentbus or bare async-nats.
//!
//! Every chunk is checked (all of them, in order, each the text its index
//! calls for) and so is every answer: a benchmark of lost or wrong chunks is
//! worthless, so the first one fails the command.

use super::agents::{
    AGENT, BARE_AGENT, BareChunk, Chunks, READY, Seen, UNTIL_CANCELLED, bare_cancel_subject,
    bare_chunks_subject, bare_task_key, chunk_text,
};
use agentbus::task_log::{CancelOutcome, EventType, Watch, Watched};
use agentbus::{Bus, Name, RequestOptions, TaskRequest, TaskResponse, TaskStatus, subject};
use anyhow::Context as _;
use async_nats::jetstream;
use async_nats::jetstream::consumer::DeliverPolicy;
use async_nats::jetstream::consumer::push::OrderedConfig;
use futures::future::try_join;
use futures::{Stream, StreamExt};
use serde_json::json;
use std::time::{Duration, Instant};

/// Generous: a task this late means something is broken, not slow.
const TASK_TIMEOUT: Duration = Duration::from_secs(60);
const REQUEST_OPTIONS: RequestOptions = RequestOptions {
    timeout: TASK_TIMEOUT,
    retries: 0,
};

/// How a task's chunks travel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Path {
    /// `TaskContext::partial` into the task's log, followed with `Bus::watch`.
    Agentbus,
    /// Core NATS messages to a subject the caller subscribed to.
    BareLive,
    /// JetStream publishes into the task events stream, read with an
    /// ordered consumer.
    BareStored,
}

impl Path {
    pub(super) fn name(self) -> &'static str {
        match self {
            Self::Agentbus => "agentbus",
            Self::BareLive => "bare_live",
            Self::BareStored => "bare_stored",
        }
    }
}

/// When things happened in one followed task.
#[derive(Debug, Clone, Copy)]
pub(super) struct Streamed {
    /// The caller began, before it set up following the task.
    pub(super) started: Instant,
    /// Following set up (watch, subscription or consumer): the task is sent now.
    pub(super) sent: Instant,
    /// The first chunk in hand.
    pub(super) first: Instant,
    /// The last chunk in hand.
    pub(super) last: Instant,
}

/// One cancel, from the moment it was sent.
#[derive(Debug, Clone, Copy)]
pub(super) struct Cancel {
    /// Until the handler saw it.
    pub(super) seen: Duration,
    /// Until the caller had the task's final answer.
    pub(super) answered: Duration,
}

/// Both callers: an agentbus client and a bare one, each on its own connection.
pub(super) struct Callers {
    pub(super) bus: Bus,
    pub(super) client: async_nats::Client,
    /// The bare agent's `agent.<name>.task`.
    bare_task: async_nats::Subject,
    events: jetstream::stream::Stream<()>,
    seen: Seen,
}

impl Callers {
    pub(super) async fn new(
        bus: Bus,
        client: async_nats::Client,
        seen: Seen,
    ) -> anyhow::Result<Self> {
        let bare_task = subject::agent_task(&Name::parse("agent name", BARE_AGENT)?).into();
        let events = jetstream::new(client.clone())
            .get_stream_no_info(subject::TASK_EVENTS_STREAM)
            .await
            .context("cannot open the task events stream")?;
        Ok(Self {
            bus,
            client,
            bare_task,
            events,
            seen,
        })
    }

    /// Sends a task asking for `partials` chunks of `chunk_bytes` over
    /// `path`, following it from before it is sent until every chunk and
    /// the answer are in hand.
    pub(super) async fn stream(
        &self,
        path: Path,
        partials: usize,
        chunk_bytes: usize,
    ) -> anyhow::Result<Streamed> {
        let work = Chunks {
            partials,
            chunk_bytes,
            stored: path == Path::BareStored,
        };
        let request = work.request();
        let task_id = request.task_id.to_string();
        let run = async {
            match path {
                Path::Agentbus => self.stream_agentbus(request.streamed(), work).await,
                Path::BareLive | Path::BareStored => self.stream_bare(request, work).await,
            }
        };
        tokio::time::timeout(TASK_TIMEOUT, run)
            .await
            .map_err(|_| {
                anyhow::anyhow!(
                    "{} task {task_id} did not deliver its {partials} chunks and answer within {TASK_TIMEOUT:?}; the server or this machine is stuck",
                    path.name()
                )
            })?
            .with_context(|| {
                format!(
                    "{} task {task_id} did not stream as it must, so the figures would be meaningless",
                    path.name()
                )
            })
    }

    async fn stream_agentbus(
        &self,
        request: TaskRequest,
        work: Chunks,
    ) -> anyhow::Result<Streamed> {
        let started = Instant::now();
        let mut watch = self.bus.watch(&request.task_id, 1).await?;
        let sent = Instant::now();
        let sending = async { Ok(self.bus.request(AGENT, &request, REQUEST_OPTIONS).await?) };
        let reading = async {
            let mut chunks = Chunked::default();
            let mut next = 0;
            loop {
                let event = next_event(&mut watch).await?;
                if event.kind == EventType::Partial {
                    let expected = chunk_text(next, work.chunk_bytes);
                    anyhow::ensure!(
                        event.data.as_str() == Some(expected.as_str()),
                        "partial {next} is {} where {expected:?} was due",
                        event.data
                    );
                    chunks.arrived();
                    next += 1;
                } else if event.kind.is_final() {
                    anyhow::ensure!(
                        next == work.partials,
                        "the log ended ({}) after {next} of {} partials",
                        event.kind,
                        work.partials
                    );
                    return Ok(chunks);
                }
            }
        };
        // Whichever fails first ends the other: it would wait in vain.
        let (response, chunks) = try_join(sending, reading).await?;
        check_completed(&request, &response, work.partials)?;
        chunks.times(started, sent)
    }

    async fn stream_bare(&self, request: TaskRequest, work: Chunks) -> anyhow::Result<Streamed> {
        let started = Instant::now();
        let sending = async {
            let reply = self
                .client
                .request(self.bare_task.clone(), request.to_json().into())
                .await?;
            Ok(serde_json::from_slice::<TaskResponse>(&reply.payload)?)
        };
        // The subscription (or the consumer) is in place before the task
        // goes out: the server takes a connection's commands in order.
        let (sent, (response, chunks)) = if work.stored {
            let consumer = self
                .events
                .create_consumer(OrderedConfig {
                    deliver_subject: self.client.new_inbox(),
                    filter_subject: subject::task_events(&bare_task_key(&request.task_id))
                        .to_string(),
                    deliver_policy: DeliverPolicy::All,
                    ..Default::default()
                })
                .await?;
            let messages = consumer.messages().await?.map(|message| {
                message
                    .map(|message| message.message.payload)
                    .map_err(|err| err.to_string())
            });
            let sent = Instant::now();
            (sent, try_join(sending, read_bare(messages, work)).await?)
        } else {
            let chunks = self
                .client
                .subscribe(bare_chunks_subject(&request.task_id))
                .await?
                .map(|message| Ok(message.payload));
            let sent = Instant::now();
            (sent, try_join(sending, read_bare(chunks, work)).await?)
        };
        check_completed(&request, &response, work.partials)?;
        chunks.times(started, sent)
    }

    /// Sends a task that waits to be cancelled; once it says it waits,
    /// cancels it through agentbus (`Bus::cancel`) or bare (a core request
    /// to the bare agent's cancel subject).
    pub(super) async fn cancel(&self, path: Path) -> anyhow::Result<Cancel> {
        let request = TaskRequest::new(UNTIL_CANCELLED, json!({}));
        let task_id = request.task_id.clone();
        let run = async {
            match path {
                Path::Agentbus => self.cancel_agentbus(request.streamed()).await,
                _ => self.cancel_bare(request).await,
            }
        };
        let (asked, answered) = tokio::time::timeout(TASK_TIMEOUT, run)
            .await
            .map_err(|_| {
                anyhow::anyhow!(
                    "cancelling {} task {task_id} took longer than {TASK_TIMEOUT:?}; the server or this machine is stuck",
                    path.name()
                )
            })?
            .with_context(|| {
                format!(
                    "cancelling {} task {task_id} did not work as it must, so the figures would be meaningless",
                    path.name()
                )
            })?;
        let seen = self.seen.take(&task_id).with_context(|| {
            format!(
                "the handler of {} task {task_id} answered without seeing its cancel",
                path.name()
            )
        })?;
        Ok(Cancel {
            seen: seen.saturating_duration_since(asked),
            answered: answered.saturating_duration_since(asked),
        })
    }

    /// When the cancel was sent and when the answer came.
    async fn cancel_agentbus(&self, request: TaskRequest) -> anyhow::Result<(Instant, Instant)> {
        let mut watch = self.bus.watch(&request.task_id, 1).await?;
        let sending = async {
            let response = self.bus.request(AGENT, &request, REQUEST_OPTIONS).await?;
            Ok((response, Instant::now()))
        };
        let cancelling = async {
            loop {
                let event = next_event(&mut watch).await?;
                anyhow::ensure!(!event.kind.is_final(), "the task ended ({})", event.kind);
                if event.kind == EventType::Partial {
                    anyhow::ensure!(event.data == READY, "its first partial is {}", event.data);
                    break;
                }
            }
            let asked = Instant::now();
            match self.bus.cancel(&request.task_id).await? {
                CancelOutcome::Cancelling { .. } => Ok(asked),
                other => anyhow::bail!("the cancel found the task {other:?}"),
            }
        };
        let ((response, answered), asked) = try_join(sending, cancelling).await?;
        check_cancelled(&request, &response)?;
        Ok((asked, answered))
    }

    async fn cancel_bare(&self, request: TaskRequest) -> anyhow::Result<(Instant, Instant)> {
        let mut chunks = self
            .client
            .subscribe(bare_chunks_subject(&request.task_id))
            .await?;
        let sending = async {
            let reply = self
                .client
                .request(self.bare_task.clone(), request.to_json().into())
                .await?;
            let answered = Instant::now();
            Ok((
                serde_json::from_slice::<TaskResponse>(&reply.payload)?,
                answered,
            ))
        };
        let cancelling = async {
            let ready = chunks
                .next()
                .await
                .context("the subscription to its chunks ended")?;
            let ready: BareChunk = serde_json::from_slice(&ready.payload)?;
            anyhow::ensure!(ready.data == READY, "its first chunk is {:?}", ready.data);
            let asked = Instant::now();
            let reply = self
                .client
                .request(bare_cancel_subject(&request.task_id), "".into())
                .await?;
            let state: serde_json::Value = serde_json::from_slice(&reply.payload)?;
            anyhow::ensure!(
                state["state"] == "cancelling",
                "the cancel was answered {state}"
            );
            Ok(asked)
        };
        let ((response, answered), asked) = try_join(sending, cancelling).await?;
        check_cancelled(&request, &response)?;
        Ok((asked, answered))
    }
}

/// The next event of a watch; a gap or its end is an error here: nothing
/// may be lost from a fresh log.
async fn next_event(watch: &mut Watch) -> anyhow::Result<agentbus::task_log::LogEvent> {
    match watch.next().await {
        Some(Ok(Watched::Event(event))) => Ok(event),
        Some(Ok(Watched::Gone { from, until })) => {
            anyhow::bail!("events {from} to {until} of its log were gone")
        }
        Some(Err(err)) => Err(err.into()),
        None => anyhow::bail!("its log ended before its final state"),
    }
}

/// When the first and the last chunk of a task came.
#[derive(Debug, Default)]
struct Chunked {
    first: Option<Instant>,
    last: Option<Instant>,
}

impl Chunked {
    fn arrived(&mut self) {
        let now = Instant::now();
        self.first.get_or_insert(now);
        self.last = Some(now);
    }

    fn times(self, started: Instant, sent: Instant) -> anyhow::Result<Streamed> {
        match (self.first, self.last) {
            (Some(first), Some(last)) => Ok(Streamed {
                started,
                sent,
                first,
                last,
            }),
            _ => anyhow::bail!("it sent no chunk"),
        }
    }
}

/// Reads a bare task's chunks, checking each.
async fn read_bare<P: AsRef<[u8]>>(
    mut messages: impl Stream<Item = Result<P, String>> + Unpin,
    work: Chunks,
) -> anyhow::Result<Chunked> {
    let mut chunks = Chunked::default();
    for next in 0..work.partials {
        let payload = messages
            .next()
            .await
            .with_context(|| format!("its chunks ended after {next} of {}", work.partials))?
            .map_err(|err| anyhow::anyhow!("cannot read its chunks: {err}"))?;
        let chunk: BareChunk = serde_json::from_slice(payload.as_ref())?;
        anyhow::ensure!(
            chunk.seq == next && chunk.data == chunk_text(next, work.chunk_bytes),
            "chunk {} came where {next} was due",
            chunk.seq
        );
        chunks.arrived();
    }
    Ok(chunks)
}

fn check_completed(
    request: &TaskRequest,
    response: &TaskResponse,
    partials: usize,
) -> anyhow::Result<()> {
    anyhow::ensure!(
        response.task_id == request.task_id.as_str(),
        "it was answered with task_id {}",
        response.task_id
    );
    anyhow::ensure!(
        response.status == TaskStatus::Completed,
        "it ended {}: {}",
        response.status,
        response.error.as_deref().unwrap_or("no error message")
    );
    let counted = response
        .result
        .as_ref()
        .and_then(|r| r["partials"].as_u64());
    anyhow::ensure!(
        counted == Some(partials as u64),
        "its answer counts {counted:?} partials, not {partials}"
    );
    Ok(())
}

fn check_cancelled(request: &TaskRequest, response: &TaskResponse) -> anyhow::Result<()> {
    anyhow::ensure!(
        response.task_id == request.task_id.as_str() && response.status == TaskStatus::Cancelled,
        "it was answered {} for task_id {}",
        response.status,
        response.task_id
    );
    Ok(())
}
