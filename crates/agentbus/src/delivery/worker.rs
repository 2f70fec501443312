//! The worker of a runtime: one task that works every durable source of every
//! agent the runtime serves, runs the jobs and lets them settle.
//!
//! # Cost
//!
//! A work queue (`tasks.<agent>`, `work.<task_type>`, each at four
//! priorities) costs the server nothing while it is empty: its consumer is
//! made when work arrives and carries an inactivity threshold, so the server
//! deletes it once it has been idle for 30 s (see `consumers`). An agent's
//! own queue rings on the agent's subscription ([`QueueRing`]): the tasks
//! stream republishes its normal-priority tasks there, and senders ring the
//! other priorities. A task-type queue (or an agent queue on a tasks stream
//! without that republish) has a doorbell while idle instead: a core
//! subscription to its subjects (two per queue, shared by every agent of the
//! runtime that works it), which a publish rings. A queue whose doorbell rang
//! is busy: its fetches see every message, so its doorbell is unsubscribed
//! (both subscriptions) until the queue is drained again.
//! Redeliveries (after a NAK delay, an expired ack wait, a crashed worker)
//! publish nothing, and tasks may have been queued while no worker ran, so the
//! worker also sweeps: every `idle_poll` it asks the tasks stream once which
//! subjects hold messages (on an agent identity, which may not have the
//! stream described, it asks for the last message of each queue it works,
//! two direct gets per queue, and leaves nine sweeps out after one that
//! found them all empty, until a queue rings). Durable message sources
//! (inboxes, broadcasts) keep their consumers (they hold the agent's cursor)
//! and are looked at by the sweep too. At most [`MAX_CONSUMERS`] queue
//! consumers are kept by one worker; past that, the least recently used idle
//! one is deleted.
//!
//! # Priority
//!
//! Sources are fetched most urgent first: each round fetches as many messages
//! as their handlers have free slots, from critical to low; every eighth round
//! visits the priorities in reverse, so that under a sustained backlog of
//! urgent work, low-priority work still gets one round in eight. Only sources
//! that may hold messages are fetched from: a ring, a doorbell or a sweep
//! marks a source, and a fetch that comes back short unmarks it. A source whose
//! jobs run waits for half its slots to be free, or [`REFILL_LINGER`] after
//! the first frees, so that a busy worker fetches in batches. A source whose
//! last fetch came back full, recently, fetches up to half its slots more
//! than it has room for: they wait in the worker, so that the next batch is
//! at hand when the running one ends rather than a round trip later. One
//! that waited half its ack wait is kept alive (a progress ack, which counts
//! no delivery), and one kept past it (the server stalled) is let go, since
//! JetStream delivers it again; what waits when the worker stops is given
//! back, and JetStream counts that as a delivery, as after a crash, so a
//! consumer that allows one delivery only is never fetched ahead from.
//!
//! Fetches are pull requests answered on one subscription that lives as long
//! as the worker ([`Puller`]), rather than on a subscription per fetch. Jobs
//! are polled in the worker's task rather than spawned one per message: jobs
//! therefore share a thread, and CPU-heavy handlers should use
//! `spawn_blocking`.

use super::consumers::{ConsumerErrorKind, ConsumerSpec};
use super::settle::Delivery;
use super::{DeliveryOptions, Queue};
use crate::client::Bus;
use crate::name::Name;
use crate::protocol::Priority;
use crate::subject::{self, overlaps};
use async_nats::jetstream::stream::DirectGetErrorKind;
use async_nats::jetstream::{self, consumer::PullConsumer, consumer::pull::BatchConfig};
use async_nats::{StatusCode, Subject};
use futures::stream::FuturesUnordered;
use futures::{FutureExt, StreamExt};
use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering as AtomicOrdering};
use std::time::Duration;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;

/// Queue consumers one worker keeps at most.
const MAX_CONSUMERS: usize = 64;

/// How long a sweep on an agent identity waits for each of its direct gets:
/// one its permissions refuse (those of an earlier version) is never
/// answered, and the worker must not stall on it.
const QUEUE_READ_WAIT: Duration = Duration::from_secs(1);
/// Sweeps an identity's worker leaves out after its queues could not be
/// read, so that a refusal that takes [`QUEUE_READ_WAIT`] to tell holds the
/// worker a small share of the time.
const QUEUE_READ_BACKOFF: u32 = 10;
/// Sweeps an identity's worker leaves out after one that found all its
/// queues empty: nothing in them can be redelivered, and new work rings
/// (all but a task that a client outside agentbus stores at a priority
/// other than normal, which waits up to this many sweeps more). A fleet of
/// identity agents, each its own process, pays the sweep per agent.
const EMPTY_QUEUES_BACKOFF: u32 = 9;
/// Every `REVERSE_EVERY`th round visits the least urgent sources first.
const REVERSE_EVERY: u64 = 8;
/// Deliveries a source with a backlog fetches beyond its free slots, at
/// most (and at most half its slots): they start as the running ones end,
/// while the next fetch is on its way.
const MAX_AHEAD: usize = 64;
/// A source fetches ahead only when its last fetch is more recent than this.
const AHEAD_TURNOVER: Duration = Duration::from_millis(100);
/// A source whose jobs run is fetched from once half its slots are free, or
/// this long after a slot freed: a busy worker fetches in batches rather
/// than paying a round trip per message.
const REFILL_LINGER: Duration = Duration::from_millis(2);
/// How often deliveries fetched ahead are looked at: one that waited half
/// its ack wait is kept alive (a progress ack), so that JetStream does not
/// deliver it again meanwhile.
const HELD_CHECK: Duration = Duration::from_millis(250);
/// How long a fetch waits for the server's answer before giving up on it.
/// A fetch that does not wait for messages is answered in milliseconds;
/// one that went to a consumer leader that died is never answered, and the
/// worker asks again (the new leader's, once elected) after this. As in
/// `ride`, whose tries are sent again after as long.
const FETCH_TIMEOUT: Duration = Duration::from_secs(2);

/// A job's run, boxed: the worker runs the jobs of many agents.
pub(crate) type JobFuture = Pin<Box<dyn Future<Output = ()> + Send>>;

/// What to do with each delivery of a source.
pub(crate) trait Job: Send + Sync + 'static {
    /// Handles one delivery and settles it (see [`super::settle`]); one left
    /// unsettled is delivered again after the ack wait.
    fn run(&self, delivery: Delivery) -> JobFuture;
}

/// How much work of one kind runs at once.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Limits {
    /// Jobs at once.
    pub(crate) concurrency: usize,
    /// Bytes of payload held at most, running and fetched ahead together:
    /// fetching stops at it (at most one message beyond it is taken).
    pub(crate) bytes: usize,
}

/// Bytes a fetch may take beyond the largest payload the server allows:
/// JetStream counts the subject, the reply subject and the headers too.
const FETCH_BYTES_SLACK: usize = 64 << 10;

/// The durable work of one agent.
pub(crate) struct AgentWork {
    /// Queued tasks: the job, its limits, and the queues to work.
    pub(crate) tasks: Option<(Arc<dyn Job>, Limits, Vec<Queue>)>,
    /// Durable messages: a job, its limits, and its consumer (made already:
    /// it holds the agent's cursor), per source.
    pub(crate) messages: Vec<(Arc<dyn Job>, Limits, PullConsumer, ConsumerSpec)>,
    /// How its consumers are made.
    pub(crate) options: DeliveryOptions,
}

/// The worker of one runtime; add agents' work, stop with a deadline.
#[derive(Debug)]
pub(crate) struct Worker {
    commands: mpsc::UnboundedSender<Command>,
    task: Option<JoinHandle<()>>,
}

enum Command {
    Add(Box<AgentWork>),
    /// An agent's own queue rang: the priorities are in the bits.
    Ring(Name, Arc<AtomicU8>),
    Stop(Instant, oneshot::Sender<()>),
}

/// Tells a runtime's worker that an agent's own queue has a new task: what
/// the agent's subscription does with a ring ([`subject::agent_queued`]).
///
/// Rings the worker has not taken yet are kept as one bit per priority, so
/// a flood of rings costs one command until the worker takes them. It holds
/// the worker's channel weakly: a runtime dropped without a shutdown still
/// stops its worker.
#[derive(Debug, Clone)]
pub(crate) struct QueueRing {
    commands: mpsc::WeakUnboundedSender<Command>,
    agent: Name,
    rung: Arc<AtomicU8>,
}

impl QueueRing {
    /// The queue rang at `priority`.
    pub(crate) fn ring(&self, priority: Priority) {
        let bit = 1 << priority_index(priority);
        if self.rung.fetch_or(bit, AtomicOrdering::AcqRel) == 0
            && let Some(commands) = self.commands.upgrade()
        {
            let _ = commands.send(Command::Ring(self.agent.clone(), self.rung.clone()));
        }
    }
}

impl Worker {
    /// Starts the worker on `bus`; idle, it sweeps every `idle_poll`.
    pub(crate) fn start(bus: &Bus, idle_poll: Duration) -> Self {
        let (commands, receiver) = mpsc::unbounded_channel();
        let state = State {
            bus: bus.clone(),
            idle_poll,
            slots: Vec::new(),
            handlers: Vec::new(),
            sources: Vec::new(),
            by_subject: HashMap::new(),
            by_queue: HashMap::new(),
            groups: Vec::new(),
            pending: Default::default(),
            round: 0,
            linger: None,
            held_total: 0,
            largest_fetch: bus
                .client()
                .server_info()
                .max_payload
                .saturating_add(FETCH_BYTES_SLACK),
            tasks_stream: None,
            live_consumers: 0,
            stream_rings: None,
            queue_reads_failing: false,
            queue_reads_skipped: 0,
        };
        Self {
            commands,
            task: Some(tokio::spawn(state.run(receiver))),
        }
    }

    /// What rings agent `agent`'s own queue in this worker.
    pub(crate) fn queue_ring(&self, agent: &Name) -> QueueRing {
        QueueRing {
            commands: self.commands.downgrade(),
            agent: agent.clone(),
            rung: Arc::default(),
        }
    }

    /// Starts working one agent's sources.
    pub(crate) fn add(&self, work: AgentWork) {
        let _ = self.commands.send(Command::Add(Box::new(work)));
    }

    /// Stops fetching; jobs still running are given until `deadline` (their
    /// deliveries are redelivered elsewhere otherwise).
    pub(crate) async fn stop(mut self, deadline: Instant) {
        let (done, stopped) = oneshot::channel();
        if self.commands.send(Command::Stop(deadline, done)).is_ok() {
            let _ = stopped.await;
        }
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

/// Slots of one concurrency limit (an agent's queued tasks, or one message
/// source), and the bytes its running jobs hold.
struct Slots {
    max: usize,
    running: usize,
    max_bytes: usize,
    bytes: usize,
    /// A fetch stopped at the bytes left: no more until a job ends.
    bytes_full: bool,
}

struct Handler {
    job: Arc<dyn Job>,
    slots: usize,
}

/// Where a source's consumer stands. A consumer handle carries its whole
/// info (over a kilobyte), so it is shared behind an `Arc`: an idle agent's
/// four queue sources then take a few hundred bytes, and a fetch clones a
/// pointer.
enum Consumer {
    /// Made when work arrives (work queues).
    OnDemand {
        spec: ConsumerSpec,
        options: DeliveryOptions,
        made: Option<(Arc<PullConsumer>, Instant)>,
    },
    /// Made once and kept (durable messages).
    Kept(Arc<PullConsumer>),
}

struct Source {
    consumer: Consumer,
    priority: Priority,
    handlers: Vec<usize>,
    /// The handler that took the last delivery, to spread deliveries.
    next_handler: usize,
    group: usize,
    pending: bool,
    /// Deliveries of this source being worked or held now: its consumer
    /// must live until they are settled.
    in_flight: usize,
    /// Deliveries fetched ahead, waiting for a free slot.
    held: VecDeque<Delivery>,
    /// Bytes of the payloads of `held`.
    held_bytes: usize,
    /// Whether its last fetch came back full: it has a backlog, and the next
    /// fetch asks for more than there is room for, so that the next batch is
    /// here when the running one ends.
    backlog: bool,
    /// When it was last fetched from.
    fetched: Option<Instant>,
    /// Whether its kept consumer was found deleted (warned once).
    gone: bool,
}

/// Sources that share a doorbell: one queue's priorities, or one message source.
struct Group {
    patterns: Vec<String>,
    sources: Vec<usize>,
    /// Its doorbell, while subscribed: dropping the sender ends every
    /// subscription of the doorbell.
    bell: Option<watch::Sender<()>>,
    /// Counts its doorbells: a ring of an earlier one (a message it had
    /// received before it ended) leaves the current one alone.
    generation: u64,
    /// Whether it is rung on its agent's subscription instead
    /// ([`subject::agent_queued`]): it never subscribes a doorbell.
    rung_by_name: bool,
}

/// A doorbell subscription, with the group it rings for; yields the message
/// it received with the subscriber (which rides in the future), or `None`
/// once the group drops its bell.
type Doorbell = Pin<Box<dyn Future<Output = Option<Rung>> + Send>>;

/// A doorbell that rang: its group and generation, its subscription, what
/// it received.
struct Rung {
    group: usize,
    generation: u64,
    subscriber: async_nats::Subscriber,
    message: Option<async_nats::Message>,
}

/// A running job: yields the slots it held, its source, and the bytes of
/// its payload.
type Running = Pin<Box<dyn Future<Output = (usize, usize, usize)> + Send>>;

struct State {
    bus: Bus,
    idle_poll: Duration,
    slots: Vec<Slots>,
    handlers: Vec<Handler>,
    sources: Vec<Source>,
    /// On-demand sources by their subject (doorbells and sweeps).
    by_subject: HashMap<String, usize>,
    /// On-demand sources by queue and priority: agents of one runtime share them.
    by_queue: HashMap<(Queue, Priority), usize>,
    groups: Vec<Group>,
    /// Sources that may hold messages, by priority (most urgent first).
    pending: [VecDeque<usize>; 4],
    round: u64,
    /// When sources with room that wait for more are fetched from anyway.
    linger: Option<Instant>,
    /// Deliveries fetched ahead and waiting, over every source.
    held_total: usize,
    /// Bytes a fetch holding one message of the largest size the server
    /// allows may ask for.
    largest_fetch: usize,
    tasks_stream: Option<jetstream::stream::Stream>,
    live_consumers: usize,
    /// Whether the tasks stream rings agents' normal-priority queues on
    /// their names (its republish), looked up at the first agent queue.
    stream_rings: Option<bool>,
    /// Whether the last sweep on an identity could not read its queues'
    /// last tasks (said once, when it starts failing).
    queue_reads_failing: bool,
    /// Sweeps an identity's worker leaves out before reading its queues
    /// again: after a failure ([`QUEUE_READ_BACKOFF`]), or after finding them
    /// all empty ([`EMPTY_QUEUES_BACKOFF`], cut short when a queue rings).
    queue_reads_skipped: u32,
}

fn priority_index(priority: Priority) -> usize {
    match priority {
        Priority::Critical => 0,
        Priority::High => 1,
        Priority::Normal => 2,
        Priority::Low => 3,
    }
}

impl State {
    async fn run(mut self, mut commands: mpsc::UnboundedReceiver<Command>) {
        let mut running: FuturesUnordered<Running> = FuturesUnordered::new();
        let mut doorbells: FuturesUnordered<Doorbell> = FuturesUnordered::new();
        let mut puller = loop {
            match Puller::new(&self.bus).await {
                Ok(puller) => break puller,
                Err(err) => {
                    tracing::warn!(%err, "cannot subscribe for pull replies; retrying");
                    tokio::time::sleep(self.idle_poll).await;
                }
            }
        };
        let mut sweep = tokio::time::interval(self.idle_poll.max(Duration::from_millis(10)));
        sweep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut keep_alive = tokio::time::interval(HELD_CHECK);
        keep_alive.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let stop = loop {
            // Over the bound (deliveries were in flight when it was crossed):
            // retire what is idle now.
            while self.live_consumers > MAX_CONSUMERS && self.retire_one(usize::MAX).await {}
            // Fetch while some source may hold work its handlers have room for.
            if self.fetchable() {
                self.fetch_round(&mut puller, &mut running, &mut doorbells)
                    .await;
                // Finished jobs free their slots before the next round.
                while let Some(Some(done)) = running.next().now_or_never() {
                    self.finished(done);
                }
                continue;
            }
            tokio::select! {
                command = commands.recv() => {
                    // Agents come in bursts (a runtime adding thousands):
                    // take them all, then look for their queued work once.
                    let mut next = command;
                    let mut added = false;
                    let stop = loop {
                        match next {
                            Some(Command::Add(work)) => {
                                self.add(*work, &mut doorbells).await;
                                added = true;
                            }
                            Some(Command::Ring(agent, rung)) => self.rung(agent, &rung),
                            Some(Command::Stop(deadline, done)) => break Some(Some((deadline, done))),
                            None => break Some(None),
                        }
                        next = match commands.try_recv() {
                            Ok(command) => Some(command),
                            Err(mpsc::error::TryRecvError::Empty) => break None,
                            Err(mpsc::error::TryRecvError::Disconnected) => None,
                        };
                    };
                    if added {
                        // Tasks may have been queued while no worker ran.
                        self.queue_rang();
                        self.sweep().await;
                    }
                    if let Some(stop) = stop {
                        break stop;
                    }
                }
                Some(done) = running.next(), if !running.is_empty() => self.finished(done),
                Some(rung) = doorbells.next(), if !doorbells.is_empty() => {
                    if let Some(rung) = rung {
                        self.rang(rung);
                    }
                }
                _ = sweep.tick() => self.sweep().await,
                _ = keep_alive.tick(), if self.held_total > 0 => self.keep_held_alive().await,
                () = tokio::time::sleep_until(self.linger.unwrap_or_else(Instant::now)), if self.linger.is_some() => {}
            }
        };
        // Stopping: take no more work; give back what was fetched ahead;
        // let running jobs finish in time.
        drop(doorbells);
        for source in &mut self.sources {
            // JetStream counts each as a delivery, as after a crash.
            for delivery in source.held.drain(..) {
                if let Err(err) = delivery.hand_back().await {
                    tracing::warn!(%err, "cannot give back a task fetched ahead; it is redelivered after its ack wait");
                }
            }
        }
        let deadline = stop
            .as_ref()
            .map_or_else(Instant::now, |(deadline, _)| *deadline);
        let finished =
            tokio::time::timeout_at(deadline, async { while running.next().await.is_some() {} })
                .await;
        if finished.is_err() {
            tracing::warn!(
                abandoned = running.len(),
                "deadline passed with queued work running; it will be redelivered"
            );
        }
        if let Some((_, done)) = stop {
            let _ = done.send(());
        }
    }

    /// Registers an agent's handlers and sources, and rings for them.
    async fn add(&mut self, work: AgentWork, doorbells: &mut FuturesUnordered<Doorbell>) {
        if let Some((job, max, queues)) = work.tasks {
            let slots = self.new_slots(max);
            let handler = self.new_handler(job, slots);
            for queue in queues {
                let group = self.groups.len();
                let mut sources = Vec::new();
                for priority in Priority::ALL {
                    if let Some(&shared) = self.by_queue.get(&(queue.clone(), priority)) {
                        self.sources[shared].handlers.push(handler);
                        continue;
                    }
                    let spec = ConsumerSpec::task_queue(&queue, priority);
                    let id = self.sources.len();
                    for filter in spec.filters() {
                        self.by_subject.insert(filter.clone(), id);
                    }
                    self.by_queue.insert((queue.clone(), priority), id);
                    self.sources.push(Source {
                        consumer: Consumer::OnDemand {
                            spec,
                            options: work.options,
                            made: None,
                        },
                        priority,
                        handlers: vec![handler],
                        next_handler: 0,
                        group,
                        pending: false,
                        in_flight: 0,
                        held: VecDeque::new(),
                        held_bytes: 0,
                        backlog: false,
                        fetched: None,
                        gone: false,
                    });
                    sources.push(id);
                }
                if !sources.is_empty() {
                    let normal = queue.subject(Priority::Normal);
                    let rung_by_name =
                        matches!(queue, Queue::Agent(_)) && self.stream_rings().await;
                    self.groups.push(Group {
                        patterns: subject::queue_patterns(&normal).to_vec(),
                        sources,
                        bell: None,
                        generation: 0,
                        rung_by_name,
                    });
                    self.subscribe_doorbell(group, doorbells).await;
                }
            }
        }
        for (job, max, consumer, spec) in work.messages {
            let slots = self.new_slots(max);
            let handler = self.new_handler(job, slots);
            let id = self.sources.len();
            let group = self.groups.len();
            self.sources.push(Source {
                consumer: Consumer::Kept(Arc::new(consumer)),
                priority: Priority::Normal,
                handlers: vec![handler],
                next_handler: 0,
                group,
                // Messages may have waited for the agent while it was away.
                pending: true,
                in_flight: 0,
                held: VecDeque::new(),
                held_bytes: 0,
                backlog: false,
                fetched: None,
                gone: false,
            });
            self.pending[priority_index(Priority::Normal)].push_back(id);
            self.groups.push(Group {
                patterns: spec.filters().to_vec(),
                sources: vec![id],
                bell: None,
                generation: 0,
                rung_by_name: false,
            });
        }
    }

    /// A job ended: its slot, its bytes and its source's delivery are free.
    fn finished(&mut self, (slots, source, bytes): (usize, usize, usize)) {
        let slots = &mut self.slots[slots];
        slots.running -= 1;
        slots.bytes -= bytes;
        slots.bytes_full = false;
        self.sources[source].in_flight -= 1;
    }

    fn new_slots(&mut self, limits: Limits) -> usize {
        self.slots.push(Slots {
            max: limits.concurrency.max(1),
            running: 0,
            max_bytes: limits.bytes.max(1),
            bytes: 0,
            bytes_full: false,
        });
        self.slots.len() - 1
    }

    fn new_handler(&mut self, job: Arc<dyn Job>, slots: usize) -> usize {
        self.handlers.push(Handler { job, slots });
        self.handlers.len() - 1
    }

    /// The slots of a source's handlers: how many in all, how many taken.
    fn slots_of(&self, source: usize) -> (usize, usize) {
        self.sources[source]
            .handlers
            .iter()
            .map(|h| &self.slots[self.handlers[*h].slots])
            .fold((0, 0), |(max, running), slots| {
                (max + slots.max, running + slots.running)
            })
    }

    /// Free slots of a source's handlers.
    fn capacity(&self, source: usize) -> usize {
        let (max, running) = self.slots_of(source);
        max.saturating_sub(running)
    }

    /// Bytes a fetch from a source may take: what its handlers have left,
    /// less what it fetched ahead; `None` when that is nothing, or when its
    /// last fetch stopped at the bytes left and no job has ended since. With
    /// nothing held, at least one message of the largest size fits, so that
    /// a payload larger than the bound is still taken, alone.
    fn fetch_bytes(&self, source: usize) -> Option<usize> {
        let mut left = 0usize;
        let mut held = self.sources[source].held_bytes;
        let mut blocked = true;
        for handler in &self.sources[source].handlers {
            let slots = &self.slots[self.handlers[*handler].slots];
            left += slots.max_bytes.saturating_sub(slots.bytes);
            held += slots.bytes;
            blocked &= slots.bytes_full;
        }
        let left = left.saturating_sub(self.sources[source].held_bytes);
        if held == 0 {
            return Some(left.max(self.largest_fetch));
        }
        (left > 0 && !blocked).then_some(left)
    }

    /// Whether some pending source is ready to take work now; when one has
    /// room but waits for more, the linger that ends its wait starts.
    fn fetchable(&mut self) -> bool {
        let lingered = self.lingered();
        let mut waiting = false;
        for source in self.pending.iter().flatten() {
            if self.ready(*source, lingered) {
                return true;
            }
            waiting |= self.capacity(*source) > 0 && self.fetch_bytes(*source).is_some();
        }
        if waiting {
            self.linger
                .get_or_insert_with(|| Instant::now() + REFILL_LINGER);
        } else {
            self.linger = None;
        }
        false
    }

    /// Whether the linger of the sources waiting for more room has ended.
    fn lingered(&self) -> bool {
        self.linger.is_some_and(|until| until <= Instant::now())
    }

    /// Whether a source with room is fetched from now: its handlers' slots
    /// are all free, half free, or done waiting for more room. Judged by the
    /// slots, which an agent's sources of every priority share, so that all
    /// of them are ready together and the most urgent is fetched first.
    fn ready(&self, source: usize, lingered: bool) -> bool {
        let (max, running) = self.slots_of(source);
        let free = max.saturating_sub(running);
        free > 0
            && (lingered || running == 0 || free * 2 >= max)
            && self.fetch_bytes(source).is_some()
    }

    /// Marks a source as possibly holding messages.
    fn mark(&mut self, source: usize) {
        let entry = &mut self.sources[source];
        if !entry.pending {
            entry.pending = true;
            self.pending[priority_index(entry.priority)].push_back(source);
        }
    }

    /// Subscribes a group's doorbell, then marks its sources for one more
    /// look, so that a publish between their last fetch and the subscription
    /// is not missed (the server handles the subscription before the fetch).
    async fn subscribe_doorbell(
        &mut self,
        group: usize,
        doorbells: &mut FuturesUnordered<Doorbell>,
    ) {
        if self.groups[group].bell.is_some() || self.groups[group].rung_by_name {
            return;
        }
        let (bell, silenced) = watch::channel(());
        let generation = self.groups[group].generation + 1;
        let mut subscribed = false;
        for pattern in self.groups[group].patterns.clone() {
            match self.bus.client().subscribe(pattern).await {
                Ok(subscriber) => {
                    doorbells.push(listen((group, generation), subscriber, silenced.clone()));
                    subscribed = true;
                }
                Err(err) => {
                    tracing::warn!(%err, "cannot subscribe a queue's doorbell; the sweep finds its work");
                }
            }
        }
        if subscribed {
            self.groups[group].generation = generation;
            self.groups[group].bell = Some(bell);
        }
    }

    /// A doorbell rang (or its subscription ended): mark the sources it
    /// names. The queue is busy now: its fetches see every message, and the
    /// doorbell would receive each publish a second time, for nothing, so it
    /// is unsubscribed; the group subscribes again once drained.
    fn rang(&mut self, rung: Rung) {
        self.queue_rang();
        let Rung {
            group,
            generation,
            subscriber,
            message,
        } = rung;
        // Dropping a subscriber unsubscribes it; the group's others end with
        // its bell.
        drop(subscriber);
        if generation == self.groups[group].generation {
            self.groups[group].bell = None;
        }
        let Some(message) = message else {
            return;
        };
        let subject = message.subject.as_str();
        let named: Vec<usize> = match self.by_subject.get(subject) {
            Some(&source) => vec![source],
            // Message sources filter with wildcards.
            None => self.groups[group]
                .sources
                .iter()
                .copied()
                .filter(|s| {
                    self.groups[self.sources[*s].group]
                        .patterns
                        .iter()
                        .any(|p| overlaps(p, subject))
                })
                .collect(),
        };
        for source in named {
            self.mark(source);
        }
    }

    /// Whether the tasks stream rings agents' normal-priority queues on
    /// their names (its republish of [`subject::QUEUED_REPUBLISH_SOURCE`]).
    /// Asked once, by a connection that may describe the stream. Without it
    /// (a stream made by an older topology, or by hand) an idle agent queue
    /// keeps a doorbell of its own.
    async fn stream_rings(&mut self) -> bool {
        if let Some(rings) = self.stream_rings {
            return rings;
        }
        if self.bus.identity().is_some() {
            // An agent identity may not describe the stream: it counts on
            // the topology `up` and `setup` apply. On a stream that does not
            // ring, its normal-priority tasks wait for a sweep.
            self.stream_rings = Some(true);
            return true;
        }
        let stream = match self.bus.jetstream().get_stream(subject::TASKS_STREAM).await {
            Ok(stream) => stream,
            Err(err) => {
                // Asked again at the next agent.
                tracing::warn!(%err, "cannot open the tasks stream; an idle queue keeps a doorbell");
                return false;
            }
        };
        let rings = stream
            .cached_info()
            .config
            .republish
            .as_ref()
            .is_some_and(|republish| {
                republish.source == subject::QUEUED_REPUBLISH_SOURCE
                    && republish.destination == subject::QUEUED_REPUBLISH_DESTINATION
            });
        if !rings {
            tracing::info!(
                "the tasks stream does not ring agents on their names (`agentbus up` or `agentbus setup` updates it): each idle agent queue keeps a doorbell"
            );
        }
        self.tasks_stream = Some(stream);
        self.stream_rings = Some(rings);
        rings
    }

    /// A queue may hold work: the next sweep reads the queues, unless their
    /// last read failed.
    fn queue_rang(&mut self) {
        if !self.queue_reads_failing {
            self.queue_reads_skipped = 0;
        }
    }

    /// Agent `agent`'s queue rang at the priorities in `rung`: marks them.
    fn rung(&mut self, agent: Name, rung: &AtomicU8) {
        self.queue_rang();
        let bits = rung.swap(0, AtomicOrdering::AcqRel);
        let queue = Queue::Agent(agent);
        for priority in Priority::ALL {
            if bits & (1 << priority_index(priority)) != 0
                && let Some(&source) = self.by_queue.get(&(queue.clone(), priority))
            {
                self.mark(source);
            }
        }
    }

    /// Asks the tasks stream which subjects hold messages and marks the
    /// sources working them; marks every kept (message) source.
    async fn sweep(&mut self) {
        for (id, source) in self.sources.iter().enumerate() {
            if matches!(source.consumer, Consumer::Kept(_)) && !source.pending {
                self.pending[priority_index(source.priority)].push_back(id);
            }
        }
        for source in self.sources.iter_mut() {
            if matches!(source.consumer, Consumer::Kept(_)) {
                source.pending = true;
            }
        }
        if self.by_subject.is_empty() {
            return;
        }
        let found = if self.bus.identity().is_some() {
            self.queues_holding_work().await
        } else {
            self.subjects_holding_work().await
        };
        for source in found {
            self.mark(source);
        }
    }

    /// The sources whose subjects hold messages, from one description of
    /// the tasks stream that lists them: one request for every queue of
    /// every agent the runtime serves.
    async fn subjects_holding_work(&mut self) -> Vec<usize> {
        let stream = match &mut self.tasks_stream {
            Some(stream) => stream,
            None => match self.bus.jetstream().get_stream(subject::TASKS_STREAM).await {
                Ok(stream) => self.tasks_stream.insert(stream),
                Err(err) => {
                    tracing::warn!(%err, "cannot open the tasks stream to look for queued work");
                    return Vec::new();
                }
            },
        };
        let mut subjects = match stream.info_with_subjects(">").await {
            Ok(subjects) => subjects,
            Err(err) => {
                tracing::warn!(%err, "cannot list the tasks stream's subjects");
                return Vec::new();
            }
        };
        let mut found = Vec::new();
        while let Some(entry) = subjects.next().await {
            match entry {
                Ok((subject, count)) if count > 0 => {
                    if let Some(&source) = self.by_subject.get(&subject) {
                        found.push(source);
                    }
                }
                Ok(_) => {}
                Err(err) => {
                    tracing::warn!(%err, "cannot list the tasks stream's subjects");
                    break;
                }
            }
        }
        found
    }

    /// The sources whose subjects hold messages, asked queue by queue, as
    /// an agent identity may: a description of the stream would list every
    /// agent's queues and their depths, so it is not granted; a direct get
    /// of the last message on a queue's own subjects is. Two per queue: its
    /// normal priority, and the newest of its other priorities (`<queue>.*`).
    /// A queue holding work at two of those finds the second once the first
    /// is drained, a sweep later.
    ///
    /// After a sweep that finds every queue empty, the next
    /// [`EMPTY_QUEUES_BACKOFF`] are left out unless a queue rings first.
    async fn queues_holding_work(&mut self) -> Vec<usize> {
        if self.queue_reads_skipped > 0 {
            self.queue_reads_skipped -= 1;
            return Vec::new();
        }
        let stream = match self
            .bus
            .jetstream()
            .get_stream_no_info(subject::TASKS_STREAM)
            .await
        {
            Ok(stream) => stream,
            Err(err) => {
                tracing::warn!(%err, "cannot open the tasks stream to look for queued work");
                return Vec::new();
            }
        };
        let normals: Vec<_> = (self.by_queue.keys())
            .filter(|(_, priority)| *priority == Priority::Normal)
            .map(|(queue, _)| queue.subject(Priority::Normal))
            .collect();
        let mut found = Vec::new();
        let mut failed = None;
        let mut all_empty = true;
        'queues: for normal in normals {
            for asked in subject::queue_patterns(&normal) {
                let read = stream.direct_get_last_for_subject(&asked);
                match tokio::time::timeout(QUEUE_READ_WAIT, read).await {
                    Ok(Ok(message)) => {
                        all_empty = false;
                        if let Some(&source) = self.by_subject.get(message.subject.as_str()) {
                            found.push(source);
                        }
                    }
                    Ok(Err(err)) if err.kind() == DirectGetErrorKind::NotFound => {}
                    // The first failure ends the sweep: the others would fail alike.
                    Ok(Err(err)) => {
                        failed = Some(err.to_string());
                        break 'queues;
                    }
                    Err(_) => {
                        failed = Some(format!("no answer within {QUEUE_READ_WAIT:?}"));
                        break 'queues;
                    }
                }
            }
        }
        if failed.is_some() {
            self.queue_reads_skipped = QUEUE_READ_BACKOFF;
        } else if all_empty {
            self.queue_reads_skipped = EMPTY_QUEUES_BACKOFF;
        }
        match failed {
            Some(err) if !self.queue_reads_failing => {
                self.queue_reads_failing = true;
                tracing::warn!(
                    %err,
                    "cannot read the last task of this agent's queues (a tasks stream without direct gets, or permissions from an earlier version): a redelivery waits until its queue rings; `agentbus setup` and a restart of `agentbus up` allow it"
                );
            }
            Some(err) => tracing::debug!(%err, "cannot read the last task of this agent's queues"),
            None if self.queue_reads_failing => {
                self.queue_reads_failing = false;
                tracing::info!("reading the last task of this agent's queues again");
            }
            None => {}
        }
        found
    }

    /// One round over the pending sources, most urgent first (least urgent
    /// first every eighth round): each is fetched for as many messages as its
    /// handlers have room for, and the messages start as jobs.
    async fn fetch_round(
        &mut self,
        puller: &mut Puller,
        running: &mut FuturesUnordered<Running>,
        doorbells: &mut FuturesUnordered<Doorbell>,
    ) {
        self.round += 1;
        let reverse = self.round.is_multiple_of(REVERSE_EVERY);
        let order: [usize; 4] = if reverse { [3, 2, 1, 0] } else { [0, 1, 2, 3] };
        let lingered = self.lingered();
        self.linger = None;
        for level in order {
            // Each source pending at this level now, once.
            for _ in 0..self.pending[level].len() {
                let Some(source) = self.pending[level].pop_front() else {
                    break;
                };
                if !self.ready(source, lingered) {
                    self.pending[level].push_back(source); // waits for free slots
                    continue;
                }
                let free = self.capacity(source);
                // What was fetched ahead starts first.
                let mut room = free;
                while room > 0
                    && let Some(delivery) = self.sources[source].held.pop_front()
                {
                    let mut delivery = delivery;
                    self.sources[source].in_flight -= 1;
                    self.sources[source].held_bytes -= delivery.payload().len();
                    self.held_total -= 1;
                    if delivery.expired() {
                        // Kept past its ack wait (the server stalled): it
                        // is delivered again, and must not also run here.
                        continue;
                    }
                    if delivery.stale() {
                        delivery.keep_alive().await;
                    }
                    self.start(source, delivery, running);
                    room -= 1;
                }
                if !self.sources[source].held.is_empty() || room == 0 {
                    self.pending[level].push_back(source);
                    continue;
                }
                let Some((consumer, ack_wait)) = self.consumer(source).await else {
                    self.sources[source].pending = false;
                    continue;
                };
                // Only while slots turn over fast (slow jobs would keep what
                // is fetched ahead waiting), and only where a delivery given
                // back at a stop can be delivered again.
                let turning = self.sources[source]
                    .fetched
                    .is_some_and(|at| at.elapsed() < AHEAD_TURNOVER);
                let redeliverable = consumer.cached_info().config.max_deliver != 1;
                let ahead = if self.sources[source].backlog && turning && redeliverable {
                    (self.slots_of(source).0 / 2).min(MAX_AHEAD)
                } else {
                    0
                };
                let want = room + ahead;
                let Some(max_bytes) = self.fetch_bytes(source) else {
                    self.pending[level].push_back(source);
                    continue;
                };
                // Jobs keep running while the fetch waits for the server.
                let fetching = puller.fetch(&consumer, want, max_bytes);
                tokio::pin!(fetching);
                let fetched = loop {
                    tokio::select! {
                        fetched = &mut fetching => break fetched,
                        Some(done) = running.next(), if !running.is_empty() => self.finished(done),
                    }
                };
                let (messages, bytes_full) = match fetched {
                    Fetched::Messages(messages) => (messages, false),
                    Fetched::BytesFull(messages) => (messages, true),
                    Fetched::ConsumerGone => {
                        self.sources[source].backlog = false;
                        if let Consumer::Kept(consumer) = &self.sources[source].consumer {
                            // It held the agent's cursor: not made again here
                            // (it would start over). Looked at again at the
                            // next sweep.
                            if !self.sources[source].gone {
                                tracing::warn!(
                                    consumer = %consumer.cached_info().name,
                                    "an agent's durable consumer was deleted; its messages wait until it is made again (restart the agent)"
                                );
                            }
                            self.sources[source].gone = true;
                            self.sources[source].pending = false;
                            continue;
                        }
                        // Deleted while idle: made again at the next look.
                        self.forget_consumer(source);
                        self.pending[level].push_back(source);
                        continue;
                    }
                };
                self.sources[source].gone = false;
                if bytes_full {
                    for handler in self.sources[source].handlers.clone() {
                        self.slots[self.handlers[handler].slots].bytes_full = true;
                    }
                }
                let drained = messages.len() < want && !bytes_full;
                self.sources[source].backlog = !drained;
                self.sources[source].fetched = Some(Instant::now());
                // Slots freed while the fetch was out are taken too.
                let mut room = self.capacity(source);
                for message in messages {
                    let delivery = Delivery::new(message, ack_wait);
                    if room > 0 {
                        self.start(source, delivery, running);
                        room -= 1;
                    } else {
                        self.sources[source].in_flight += 1;
                        self.sources[source].held_bytes += delivery.payload().len();
                        self.held_total += 1;
                        self.sources[source].held.push_back(delivery);
                    }
                }
                if drained && self.sources[source].held.is_empty() {
                    self.sources[source].pending = false;
                    let group = self.sources[source].group;
                    let idle = self.groups[group]
                        .sources
                        .iter()
                        .all(|s| !self.sources[*s].pending);
                    if idle && self.groups[group].bell.is_none() && !self.groups[group].rung_by_name
                    {
                        self.subscribe_doorbell(group, doorbells).await;
                        for member in self.groups[group].sources.clone() {
                            self.mark(member);
                        }
                    }
                } else {
                    self.pending[level].push_back(source);
                }
            }
        }
    }

    /// Starts the job of one delivery in a free slot of the source's handlers.
    fn start(
        &mut self,
        source: usize,
        delivery: Delivery,
        running: &mut FuturesUnordered<Running>,
    ) {
        let handler = self.take_slot(source);
        let job = self.handlers[handler].job.clone();
        let slots = self.handlers[handler].slots;
        let sequence = delivery.stream_sequence();
        let bytes = delivery.payload().len();
        self.slots[slots].bytes += bytes;
        self.sources[source].in_flight += 1;
        running.push(Box::pin(
            AssertUnwindSafe(job.run(delivery))
                .catch_unwind()
                .map(move |outcome| {
                    if outcome.is_err() {
                        // The delivery stays unacknowledged and is redelivered.
                        tracing::error!(sequence, "a job panicked");
                    }
                    (slots, source, bytes)
                }),
        ));
    }

    /// Keeps alive the deliveries fetched ahead that waited half their ack
    /// wait. Those kept past their ack wait are let go: JetStream delivers them
    /// again.
    async fn keep_held_alive(&mut self) {
        for source in &mut self.sources {
            let before = source.held.len();
            let mut let_go = 0;
            source.held.retain(|delivery| {
                let expired = delivery.expired();
                if expired {
                    let_go += delivery.payload().len();
                }
                !expired
            });
            source.held_bytes -= let_go;
            let expired = before - source.held.len();
            source.in_flight -= expired;
            self.held_total -= expired;
            for delivery in source.held.iter_mut() {
                if delivery.stale() {
                    delivery.keep_alive().await;
                }
            }
        }
    }

    /// Takes a free slot of one of the source's handlers, spreading
    /// deliveries over handlers with room; returns the handler.
    fn take_slot(&mut self, source: usize) -> usize {
        let count = self.sources[source].handlers.len();
        for step in 0..count {
            let index = (self.sources[source].next_handler + step) % count;
            let handler = self.sources[source].handlers[index];
            let slots = &mut self.slots[self.handlers[handler].slots];
            if slots.running < slots.max {
                slots.running += 1;
                self.sources[source].next_handler = index + 1;
                return handler;
            }
        }
        // Capacity was counted before the fetch: there is always room.
        let handler = self.sources[source].handlers[0];
        self.slots[self.handlers[handler].slots].running += 1;
        handler
    }

    /// The source's consumer and its ack wait, made first if it is made on
    /// demand; `None` (logged) when it cannot be made now.
    async fn consumer(&mut self, source: usize) -> Option<(Arc<PullConsumer>, Duration)> {
        let now = Instant::now();
        let made = match &mut self.sources[source].consumer {
            Consumer::Kept(consumer) => {
                let ack_wait = consumer.cached_info().config.ack_wait;
                return Some((consumer.clone(), ack_wait));
            }
            Consumer::OnDemand {
                made: Some((consumer, used)),
                ..
            } => {
                *used = now;
                let ack_wait = consumer.cached_info().config.ack_wait;
                return Some((consumer.clone(), ack_wait));
            }
            Consumer::OnDemand { spec, options, .. } => {
                let js = self.bus.jetstream();
                match spec.create(&self.bus, options).await {
                    Ok(consumer) => Arc::new(consumer),
                    // One made before consumers were made on demand, and not
                    // updatable in place: work it as it is.
                    Err(err) if err.kind() == ConsumerErrorKind::Refused => {
                        match existing(js, spec).await {
                            Some(consumer) => Arc::new(consumer),
                            None => {
                                tracing::warn!(%err, "cannot make a work-queue consumer");
                                return None;
                            }
                        }
                    }
                    Err(err) => {
                        tracing::warn!(%err, "cannot make a work-queue consumer");
                        return None;
                    }
                }
            }
        };
        let ack_wait = made.cached_info().config.ack_wait;
        if let Consumer::OnDemand { made: slot, .. } = &mut self.sources[source].consumer {
            *slot = Some((made.clone(), now));
        }
        self.live_consumers += 1;
        while self.live_consumers > MAX_CONSUMERS && self.retire_one(source).await {}
        Some((made, ack_wait))
    }

    /// Drops the handle of a consumer the server deleted.
    fn forget_consumer(&mut self, source: usize) {
        if let Consumer::OnDemand { made, .. } = &mut self.sources[source].consumer
            && made.take().is_some()
        {
            self.live_consumers -= 1;
        }
    }

    /// Deletes the least recently used consumer that no delivery is being
    /// worked from (not `keep`'s), keeping the worker within
    /// [`MAX_CONSUMERS`]; `false` when there is none to delete.
    async fn retire_one(&mut self, keep: usize) -> bool {
        let oldest = self
            .sources
            .iter()
            .enumerate()
            .filter(|(id, source)| *id != keep && source.in_flight == 0)
            .filter_map(|(id, source)| match &source.consumer {
                Consumer::OnDemand {
                    made: Some((_, used)),
                    ..
                } => Some((*used, id)),
                _ => None,
            })
            .min();
        let Some((_, id)) = oldest else {
            return false;
        };
        let Consumer::OnDemand { spec, made, .. } = &mut self.sources[id].consumer else {
            return false;
        };
        if let Some((consumer, _)) = made.take() {
            self.live_consumers -= 1;
            let name = consumer.cached_info().name.clone();
            if let Ok(stream) = self.bus.jetstream().get_stream_no_info(spec.stream()).await {
                let _ = stream.delete_consumer(&name).await;
            }
        }
        true
    }
}

/// An existing consumer of `spec`'s name, as it is.
async fn existing(js: &jetstream::Context, spec: &ConsumerSpec) -> Option<PullConsumer> {
    let stream = js.get_stream_no_info(spec.stream()).await.ok()?;
    stream.get_consumer(spec.name()).await.ok()
}

/// Waits for the next message of a doorbell subscription.
fn listen(
    (group, generation): (usize, u64),
    mut subscriber: async_nats::Subscriber,
    mut silenced: watch::Receiver<()>,
) -> Doorbell {
    Box::pin(async move {
        tokio::select! {
            message = subscriber.next() => Some(Rung { group, generation, subscriber, message }),
            // Nothing is ever sent: this ends when the group drops its bell,
            // and dropping the subscriber unsubscribes it.
            _ = silenced.changed() => None,
        }
    })
}

/// What a fetch came to.
enum Fetched {
    /// The messages there were (possibly none).
    Messages(Vec<jetstream::Message>),
    /// The messages that fitted in the bytes asked for: the next one did not.
    BytesFull(Vec<jetstream::Message>),
    /// The consumer does not exist (any more).
    ConsumerGone,
}

/// Pull requests of one worker and their answers, on one subscription to
/// `<inbox>.*`. Each request gets its own reply subject `<inbox>.<n>`, so
/// that a status is matched to its request (messages arrive under their own
/// subject, whatever the request).
struct Puller {
    bus: Bus,
    /// Changes when the connection is made again: a fetch in flight then
    /// gets no answer (it went to the connection that is gone).
    reconnects: tokio::sync::watch::Receiver<u64>,
    inbox: String,
    replies: async_nats::Subscriber,
    requests: u64,
    /// A fetch was given up: what the server still sends for it must not be
    /// taken (and run) later, so the next fetch starts on a new inbox. The
    /// server drops those messages, and redelivers them after the ack wait.
    abandoned: bool,
}

impl Puller {
    async fn new(bus: &Bus) -> Result<Self, async_nats::SubscribeError> {
        let client = bus.client();
        let inbox = client.new_inbox();
        let replies = client
            .subscribe(String::from(subject::pull_replies(&inbox)))
            .await?;
        Ok(Self {
            bus: bus.clone(),
            reconnects: bus.reconnects(),
            inbox,
            replies,
            requests: 0,
            abandoned: false,
        })
    }

    /// Fetches up to `max` messages that are there now, of `max_bytes` at
    /// most together, without waiting.
    async fn fetch(&mut self, consumer: &PullConsumer, max: usize, max_bytes: usize) -> Fetched {
        if self.abandoned {
            match Self::new(&self.bus).await {
                Ok(fresh) => *self = fresh, // the old subscription ends on drop
                Err(err) => {
                    tracing::warn!(%err, "cannot subscribe for pull replies");
                    return Fetched::Messages(Vec::new());
                }
            }
        }
        self.requests += 1;
        let reply: Subject = subject::pull_reply(&self.inbox, self.requests).into();
        let request = BatchConfig {
            batch: max,
            no_wait: true,
            max_bytes,
            ..Default::default()
        };
        if let Err(err) = consumer.request_batch(request, reply.clone()).await {
            tracing::warn!(%err, "fetch from a work queue failed");
            return Fetched::Messages(Vec::new());
        }
        let mut messages = Vec::with_capacity(max);
        let deadline = tokio::time::Instant::now() + FETCH_TIMEOUT;
        self.reconnects.borrow_and_update();
        while messages.len() < max {
            let next = tokio::select! {
                next = tokio::time::timeout_at(deadline, self.replies.next()) => next,
                Ok(()) = self.reconnects.changed() => {
                    // The request, or its answer, went to the connection
                    // that is gone: asked again at the next fetch.
                    self.abandoned = true;
                    break;
                }
            };
            let message = match next {
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
                    context: self.bus.jetstream().clone(),
                }),
                Some(_) if message.subject != reply => {} // about an earlier request
                Some(StatusCode::IDLE_HEARTBEAT) => {}
                // No (more) messages, or the request expired: the batch is done.
                Some(StatusCode::NOT_FOUND | StatusCode::TIMEOUT) => break,
                // Nothing serves the consumer's pull subject: it was deleted.
                Some(StatusCode::NO_RESPONDERS) if messages.is_empty() => {
                    return Fetched::ConsumerGone;
                }
                // The next message is larger than the bytes left.
                Some(StatusCode::REQUEST_TERMINATED)
                    if message.description.as_deref().is_some_and(|text| {
                        text.eq_ignore_ascii_case("Message Size Exceeds MaxBytes")
                    }) =>
                {
                    return Fetched::BytesFull(messages);
                }
                Some(status) => {
                    tracing::warn!(%status, description = ?message.description, "fetch from a work queue ended");
                    break;
                }
            }
        }
        Fetched::Messages(messages)
    }
}
