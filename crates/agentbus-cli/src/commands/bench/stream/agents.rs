//! The two agents of `bench stream`, doing the same work: the agentbus one
//! served by a runtime, the bare one a plain async-nats responder.
//!
//! Task type `chunks` (payload `{"partials": n, "chunk_bytes": b, "stored":
//! bool}`) sends n chunks of the result, each [`chunk_text`], then answers
//! `{"partials": n}`. Task type `until_cancelled` sends one chunk,
//! [`READY`], then waits to be cancelled, notes when it saw the cancel in
//! [`Seen`] and answers `cancelled`.

use agentbus::subject;
use agentbus::{
    Agent, TaskContext, TaskError, TaskId, TaskRequest, TaskResponse, TaskStatus, TaskTypeSpec,
};
use async_nats::jetstream;
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;
use tokio::sync::watch;

/// The agentbus agent.
pub(super) const AGENT: &str = "bench_stream";
/// The bare agent: under another name, so that neither answers the other's tasks.
pub(super) const BARE_AGENT: &str = "bench_bare_stream";
pub(super) const CHUNKS: &str = "chunks";
pub(super) const UNTIL_CANCELLED: &str = "until_cancelled";
/// The one chunk an `until_cancelled` task sends, once it waits for its cancel.
pub(super) const READY: &str = "ready";
/// Acknowledgements the bare responder waits for at most at once when it
/// stores chunks: as many as the runtime's log writer lets pile up.
const STORED_WINDOW: usize = 64;

/// What a `chunks` task is asked to send.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub(super) struct Chunks {
    pub(super) partials: usize,
    pub(super) chunk_bytes: usize,
    /// Bare only: through the stream (JetStream publish) rather than core NATS.
    #[serde(default)]
    pub(super) stored: bool,
}

impl Chunks {
    /// A task asking for these chunks, with a fresh id.
    pub(super) fn request(self) -> TaskRequest {
        TaskRequest::new(
            CHUNKS,
            serde_json::to_value(self).expect("chunks serialize"),
        )
    }
}

/// Chunk `index` of a result: its index, then text up to `bytes` in all.
pub(super) fn chunk_text(index: usize, bytes: usize) -> String {
    let mut text = format!("{index}:");
    text.extend(
        "the quick brown fox jumps over the lazy dog. "
            .chars()
            .cycle()
            .take(bytes.saturating_sub(text.len())),
    );
    text
}

/// A chunk as the bare responder sends it: its place and its text.
#[derive(Debug, Serialize, Deserialize)]
pub(super) struct BareChunk {
    pub(super) seq: usize,
    pub(super) data: String,
}

/// The core subject a bare task's chunks go to: the caller subscribes to it
/// before it sends the task. Out of every stream of the standard topology.
pub(super) fn bare_chunks_subject(task_id: &TaskId) -> String {
    format!("bench.chunks.{task_id}")
}

/// The core subject a bare task is cancelled on; the responder subscribes
/// once to all of them, as a runtime does to `task.*.*.*.*.control.*`.
pub(super) fn bare_cancel_subject(task_id: &TaskId) -> String {
    format!("bench.cancel.{task_id}")
}
const BARE_CANCEL_SUBJECTS: &str = "bench.cancel.*";

/// When each handler saw its task's cancel, by task.
#[derive(Debug, Clone, Default)]
pub(super) struct Seen(Arc<Mutex<HashMap<TaskId, Instant>>>);

impl Seen {
    fn mark(&self, task_id: &TaskId) {
        if let Ok(mut seen) = self.0.lock() {
            seen.insert(task_id.clone(), Instant::now());
        }
    }

    /// When the handler of `task_id` saw its cancel, if it did.
    pub(super) fn take(&self, task_id: &TaskId) -> Option<Instant> {
        self.0.lock().ok()?.remove(task_id)
    }
}

/// The agentbus agent: chunks through `TaskContext::partial`, the cancel
/// through `TaskContext::cancelled`.
pub(super) struct StreamAgent {
    pub(super) seen: Seen,
}

impl Agent for StreamAgent {
    fn name(&self) -> &str {
        AGENT
    }

    fn task_types(&self) -> Vec<TaskTypeSpec> {
        [CHUNKS, UNTIL_CANCELLED]
            .into_iter()
            .map(|name| TaskTypeSpec::new(name).expect("the bench task types are valid names"))
            .collect()
    }

    async fn handle(&self, task: TaskRequest, ctx: TaskContext) -> Result<Value, TaskError> {
        let failed = |err: agentbus::task_log::LogError| TaskError::failed(err.to_string());
        if task.task_type == UNTIL_CANCELLED {
            ctx.partial(READY).await.map_err(failed)?;
            let reason = ctx.cancelled().await;
            self.seen.mark(&task.task_id);
            return Err(TaskError::failed(format!("stopped: {reason:?}")));
        }
        let work: Chunks = task.payload_as()?;
        for index in 0..work.partials {
            ctx.partial(&chunk_text(index, work.chunk_bytes))
                .await
                .map_err(failed)?;
        }
        Ok(json!({ "partials": work.partials }))
    }
}

/// The bare agent: a queue subscriber on `agent.<name>.task` that runs each
/// task in a task of its own, and a subscriber to the cancel subjects.
pub(super) struct BareAgent {
    client: async_nats::Client,
    jetstream: jetstream::Context,
    seen: Seen,
    /// The flag of each `until_cancelled` task that waits, which a cancel flips.
    cancels: Mutex<HashMap<TaskId, watch::Sender<bool>>>,
    /// Tasks answered.
    answered: AtomicU64,
}

impl BareAgent {
    /// Subscribes on `client` and serves until the subscriptions end.
    pub(super) async fn start(
        client: async_nats::Client,
        seen: Seen,
    ) -> anyhow::Result<(Arc<Self>, Vec<tokio::task::JoinHandle<()>>)> {
        let name = agentbus::Name::parse("agent name", BARE_AGENT)?;
        let tasks = client
            .queue_subscribe(subject::agent_task(&name), BARE_AGENT.to_owned())
            .await?;
        let cancels = client.subscribe(BARE_CANCEL_SUBJECTS).await?;
        // The server has taken the subscriptions once it answers a ping.
        client.flush().await?;
        let agent = Arc::new(Self {
            jetstream: jetstream::new(client.clone()),
            client,
            seen,
            cancels: Mutex::new(HashMap::new()),
            answered: AtomicU64::new(0),
        });
        let serving = vec![
            tokio::spawn(agent.clone().serve_tasks(tasks)),
            tokio::spawn(agent.clone().serve_cancels(cancels)),
        ];
        Ok((agent, serving))
    }

    /// Tasks answered so far.
    pub(super) fn answered(&self) -> u64 {
        self.answered.load(Ordering::Relaxed)
    }

    async fn serve_tasks(self: Arc<Self>, mut tasks: async_nats::Subscriber) {
        while let Some(message) = tasks.next().await {
            let Some(reply) = message.reply else { continue };
            let agent = self.clone();
            tokio::spawn(async move {
                let response = match serde_json::from_slice::<TaskRequest>(&message.payload) {
                    Ok(request) => agent.run(request).await,
                    Err(err) => TaskResponse::error("", TaskStatus::Rejected, err.to_string()),
                };
                agent.answered.fetch_add(1, Ordering::Relaxed);
                let _ = agent.client.publish(reply, response.to_json().into()).await;
            });
        }
    }

    async fn run(&self, request: TaskRequest) -> TaskResponse {
        let task_id = request.task_id.clone();
        let outcome = if request.task_type == UNTIL_CANCELLED {
            self.until_cancelled(&task_id).await
        } else {
            match request.payload.parse::<Chunks>() {
                Ok(work) if work.stored => self.send_stored(&task_id, work).await,
                Ok(work) => self.send_live(&task_id, work).await,
                Err(err) => Err(err.to_string()),
            }
        };
        match outcome {
            Ok(Some(result)) => TaskResponse::completed(task_id, result),
            Ok(None) => {
                TaskResponse::error(task_id, TaskStatus::Cancelled, "the task was cancelled")
            }
            Err(err) => TaskResponse::error(task_id, TaskStatus::Failed, err),
        }
    }

    /// Each chunk as a core message to the caller's subscription.
    async fn send_live(&self, task_id: &TaskId, work: Chunks) -> Result<Option<Value>, String> {
        let subject = bare_chunks_subject(task_id);
        for index in 0..work.partials {
            self.client
                .publish(subject.clone(), chunk_body(index, work.chunk_bytes).into())
                .await
                .map_err(|err| err.to_string())?;
        }
        Ok(Some(json!({ "partials": work.partials })))
    }

    /// Each chunk stored in the task events stream, on the task's subject
    /// there, every one acknowledged before the answer.
    async fn send_stored(&self, task_id: &TaskId, work: Chunks) -> Result<Option<Value>, String> {
        let subject = subject::task_events(&bare_task_key(task_id));
        let mut acks = VecDeque::with_capacity(STORED_WINDOW);
        for index in 0..work.partials {
            if acks.len() == STORED_WINDOW
                && let Some(ack) = acks.pop_front()
            {
                wait_ack(ack).await?;
            }
            let ack = self
                .jetstream
                .publish(&subject, chunk_body(index, work.chunk_bytes).into())
                .await
                .map_err(|err| err.to_string())?;
            acks.push_back(ack);
        }
        for ack in acks {
            wait_ack(ack).await?;
        }
        Ok(Some(json!({ "partials": work.partials })))
    }

    /// Says it is ready on the live chunk subject, then waits until a cancel
    /// flips its flag.
    async fn until_cancelled(&self, task_id: &TaskId) -> Result<Option<Value>, String> {
        let (flag, mut flipped) = watch::channel(false);
        if let Ok(mut cancels) = self.cancels.lock() {
            cancels.insert(task_id.clone(), flag);
        }
        let ready = serde_json::to_vec(&BareChunk {
            seq: 0,
            data: READY.to_owned(),
        })
        .expect("a chunk serializes");
        let sent = self
            .client
            .publish(bare_chunks_subject(task_id), ready.into())
            .await;
        if sent.is_ok() {
            let _ = flipped.wait_for(|cancelled| *cancelled).await;
            self.seen.mark(task_id);
        }
        if let Ok(mut cancels) = self.cancels.lock() {
            cancels.remove(task_id);
        }
        sent.map(|()| None).map_err(|err| err.to_string())
    }

    async fn serve_cancels(self: Arc<Self>, mut cancels: async_nats::Subscriber) {
        while let Some(message) = cancels.next().await {
            let Some(reply) = message.reply else { continue };
            let flipped = message
                .subject
                .rsplit('.')
                .next()
                .and_then(|id| TaskId::parse(id).ok())
                .and_then(|task_id| {
                    let cancels = self.cancels.lock().ok()?;
                    cancels.get(&task_id).map(|flag| flag.send(true).is_ok())
                })
                .unwrap_or(false);
            let body = if flipped {
                json!({ "state": "cancelling" })
            } else {
                json!({ "error": "no such task waits here" })
            };
            let _ = self.client.publish(reply, body.to_string().into()).await;
        }
    }
}

fn chunk_body(index: usize, bytes: usize) -> Vec<u8> {
    let chunk = BareChunk {
        seq: index,
        data: chunk_text(index, bytes),
    };
    serde_json::to_vec(&chunk).expect("a chunk serializes")
}

async fn wait_ack(ack: jetstream::context::PublishAckFuture) -> Result<(), String> {
    ack.await.map(drop).map_err(|err| err.to_string())
}

/// Where the bare agent keeps a task's chunks: the task's log subject for a
/// caller with no agent name, as agentbus would key it.
pub(super) fn bare_task_key(task_id: &TaskId) -> agentbus::TaskKey {
    let runner = agentbus::delivery::Queue::agent(BARE_AGENT).expect("a valid agent name");
    agentbus::TaskKey::new(&runner, None, task_id)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunks_have_the_asked_size_and_their_index() {
        assert_eq!(chunk_text(7, 32).len(), 32);
        assert!(chunk_text(7, 32).starts_with("7:the quick"));
        assert_ne!(chunk_text(1, 32), chunk_text(2, 32));
        // Never cut below its index.
        assert_eq!(chunk_text(12345, 2), "12345:");
    }
}
