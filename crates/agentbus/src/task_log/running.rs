//! A task a runtime holds: what its handler, the runtime and control
//! requests share while it waits or runs.

use super::writer::{Earlier, LogError, LogWriter};
use super::{EventType, LOG_FINAL_AFTER};
use crate::client::Bus;
use crate::name::Name;
use crate::protocol::TaskResponse;
use crate::task_id::{TaskId, TaskKey};
use serde_json::{Value, json};
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, SystemTime};
use tokio::sync::{Notify, oneshot};
use tokio::time::Instant;

/// Why a task is being stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum StopReason {
    /// Someone cancelled it ([`crate::Bus::cancel`]).
    Cancelled,
    /// Its deadline passed.
    DeadlinePassed,
    /// It ran for the agent's task timeout.
    TimeLimit(Duration),
}

impl StopReason {
    /// The error a stopped task's response carries.
    pub(crate) fn message(self) -> String {
        match self {
            Self::Cancelled => "the task was cancelled".to_owned(),
            Self::DeadlinePassed => "the task's deadline passed".to_owned(),
            Self::TimeLimit(limit) => format!("the handler did not finish within {limit:?}"),
        }
    }
}

const RUNNING: u8 = 0;
const CANCELLED: u8 = 1;

/// Where a task's time runs out.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Stop {
    /// When, on the runtime's clock.
    at: Instant,
    /// The deadline as a time, when the request carried one that comes first.
    deadline: Option<SystemTime>,
    /// Why the task stops then.
    reason: StopReason,
}

impl Stop {
    /// The request's `deadline`, on the runtime's clock.
    pub(crate) fn deadline(deadline: SystemTime) -> Self {
        Self {
            at: Instant::now()
                + deadline
                    .duration_since(SystemTime::now())
                    .unwrap_or_default(),
            deadline: Some(deadline),
            reason: StopReason::DeadlinePassed,
        }
    }

    /// The earlier of `stop` and the agent's time `limit` from now.
    fn with_limit(stop: Option<Self>, limit: Duration) -> Self {
        let by_limit = Self {
            at: Instant::now() + limit,
            deadline: None,
            reason: StopReason::TimeLimit(limit),
        };
        match stop {
            Some(stop) if stop.at <= by_limit.at => stop,
            _ => by_limit,
        }
    }
}

/// A task held by a runtime, from admission to its answer.
#[derive(Debug)]
pub(crate) struct RunningTask {
    key: TaskKey,
    agent: Name,
    task_type: Arc<str>,
    attempt: u32,
    /// The sender follows it: its log is kept in full from the start.
    streamed: bool,
    /// Its log holds events of its submitter or of earlier attempts.
    resumed: AtomicBool,
    /// Whether it came from a queue: what an earlier final state in its log means.
    earlier: Earlier,
    /// An answer is being logged and handed over.
    answering: AtomicBool,
    /// When its time runs out; the agent's time limit joins when it starts.
    stop: Mutex<Option<Stop>>,
    /// Whether `stop` holds a time: most tasks have none, and then reading
    /// it takes no lock.
    timed: AtomicBool,
    /// Whether anything was written to the log (or found there): until
    /// then, ending the task takes no lock of the log.
    logged: AtomicBool,
    state: AtomicU8,
    notify: Notify,
    question: Mutex<Option<oneshot::Sender<Value>>>,
    /// Made at its first use: most tasks never write a log.
    log: OnceLock<tokio::sync::Mutex<LogWriter>>,
    bus: Bus,
    instance: Arc<str>,
}

impl RunningTask {
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        bus: &Bus,
        instance: &Arc<str>,
        agent: &Name,
        key: TaskKey,
        task_type: Arc<str>,
        attempt: u32,
        streamed: bool,
        queued: bool,
        stop: Option<Stop>,
    ) -> Self {
        Self {
            key,
            agent: agent.clone(),
            task_type,
            attempt,
            streamed,
            resumed: AtomicBool::new(false),
            earlier: if queued {
                Earlier::Queued
            } else {
                Earlier::Requested
            },
            answering: AtomicBool::new(false),
            timed: AtomicBool::new(stop.is_some()),
            logged: AtomicBool::new(false),
            stop: Mutex::new(stop),
            state: AtomicU8::new(RUNNING),
            notify: Notify::new(),
            question: Mutex::new(None),
            log: OnceLock::new(),
            bus: bus.clone(),
            instance: instance.clone(),
        }
    }

    fn log(&self) -> &tokio::sync::Mutex<LogWriter> {
        self.log.get_or_init(|| {
            tokio::sync::Mutex::new(LogWriter::new(self.key.clone(), self.instance.clone()))
        })
    }

    pub(crate) fn task_id(&self) -> &TaskId {
        self.key.id()
    }

    /// Where the task's record and log are kept.
    pub(crate) fn key(&self) -> &TaskKey {
        &self.key
    }

    pub(crate) fn task_type(&self) -> &Arc<str> {
        &self.task_type
    }

    pub(crate) fn agent(&self) -> &Name {
        &self.agent
    }

    pub(crate) fn bus(&self) -> &Bus {
        &self.bus
    }

    pub(crate) fn instance(&self) -> &str {
        &self.instance
    }

    fn stop(&self) -> Option<Stop> {
        if !self.timed.load(Ordering::Acquire) {
            return None;
        }
        self.stop.lock().ok().and_then(|stop| *stop)
    }

    /// Starts the agent's time limit for the handler, from now.
    pub(crate) fn limit(&self, limit: Option<Duration>) {
        if let Some(limit) = limit
            && let Ok(mut stop) = self.stop.lock()
        {
            *stop = Some(Stop::with_limit(*stop, limit));
            self.timed.store(true, Ordering::Release);
        }
    }

    /// When the task must be over: its request's deadline, or the end of
    /// the agent's time limit, whichever comes first.
    pub(crate) fn deadline(&self) -> Option<SystemTime> {
        let stop = self.stop()?;
        stop.deadline.or_else(|| {
            let left = stop.at.saturating_duration_since(Instant::now());
            Some(SystemTime::now() + left)
        })
    }

    /// Why the task must stop, if it must by now.
    pub(crate) fn stop_reason(&self) -> Option<StopReason> {
        if self.state.load(Ordering::Acquire) == CANCELLED {
            return Some(StopReason::Cancelled);
        }
        self.stop()
            .filter(|stop| stop.at <= Instant::now())
            .map(|stop| stop.reason)
    }

    /// Resolves when the task is cancelled or its time runs out.
    pub(crate) async fn stopped(&self) -> StopReason {
        let notified = self.notify.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        if let Some(reason) = self.stop_reason() {
            return reason;
        }
        match self.stop() {
            Some(stop) => tokio::select! {
                () = notified => StopReason::Cancelled,
                () = tokio::time::sleep_until(stop.at) => self.stop_reason().unwrap_or(stop.reason),
            },
            None => {
                notified.await;
                StopReason::Cancelled
            }
        }
    }

    /// Cancels the task; `false` when it was cancelled already.
    pub(crate) fn cancel(&self) -> bool {
        let first = self
            .state
            .compare_exchange(RUNNING, CANCELLED, Ordering::AcqRel, Ordering::Acquire)
            .is_ok();
        self.notify.notify_waiters();
        first
    }

    /// Whether the handler waits for an answer.
    pub(crate) fn asking(&self) -> bool {
        self.question.lock().is_ok_and(|slot| slot.is_some())
    }

    /// Takes over the log of a queued task, which earlier attempts or its
    /// submitter may have begun; the final state when it is over already.
    pub(crate) async fn take_over_log(&self) -> Result<Option<EventType>, LogError> {
        let mut log = self.log().lock().await;
        let ended = log.take_over(&self.bus, self.earlier).await?;
        self.resumed.store(log.begun(), Ordering::Release);
        self.logged.store(true, Ordering::Release);
        Ok(ended)
    }

    async fn begin(&self, log: &mut LogWriter) -> Result<(), LogError> {
        if log.begun() {
            return Ok(());
        }
        let deadline = self
            .stop()
            .and_then(|stop| stop.deadline)
            .map(crate::clock::rfc3339);
        log.write(
            &self.bus,
            EventType::Accepted,
            json!({"task_type": &*self.task_type, "deadline": deadline}),
            self.earlier,
        )
        .await?;
        self.write_started(log).await
    }

    async fn write_started(&self, log: &mut LogWriter) -> Result<(), LogError> {
        log.write(
            &self.bus,
            EventType::Started,
            json!({"agent": self.agent.as_str(), "attempt": self.attempt}),
            self.earlier,
        )
        .await
    }

    /// Starts the log of a streamed task: `accepted` and `started`, or
    /// only `started` after what a queued task's log holds already.
    pub(crate) async fn log_start(&self) -> Result<(), LogError> {
        self.logged.store(true, Ordering::Release);
        let mut log = self.log().lock().await;
        if log.begun() {
            self.write_started(&mut log).await
        } else {
            self.begin(&mut log).await
        }
    }

    /// Whether this attempt's start belongs in the log: its sender follows
    /// the task, or the log holds events already.
    pub(crate) fn logs_start(&self) -> bool {
        self.streamed || self.resumed.load(Ordering::Acquire)
    }

    /// Adds an event, beginning the log first when it is empty.
    pub(crate) async fn emit(&self, kind: EventType, data: Value) -> Result<(), LogError> {
        self.logged.store(true, Ordering::Release);
        let mut log = self.log().lock().await;
        self.begin(&mut log).await?;
        log.write(&self.bus, kind, data, self.earlier).await
    }

    /// Asks the task's caller a question and waits for the answer, or for
    /// the task to be stopped.
    pub(crate) async fn ask(&self, question: Value) -> Result<Value, AskError> {
        let (sender, answer) = oneshot::channel();
        {
            let mut slot = self.question.lock().map_err(|_| AskError::Busy)?;
            if slot.is_some() {
                return Err(AskError::Busy);
            }
            *slot = Some(sender);
        }
        if let Err(err) = self
            .emit(EventType::InputRequired, json!({ "question": question }))
            .await
        {
            self.question.lock().ok().and_then(|mut slot| slot.take());
            return Err(AskError::Log(err));
        }
        tokio::select! {
            answer = answer => answer.map_err(|_| AskError::Stopped(StopReason::Cancelled)),
            reason = self.stopped() => {
                self.question.lock().ok().and_then(|mut slot| slot.take());
                Err(AskError::Stopped(reason))
            }
        }
    }

    /// Gives the handler the answer to its question, logged first as
    /// `input_received`; `false` when no question waits (or another answer
    /// is being given). An answer the log refuses (too large) is not given:
    /// the question still waits.
    pub(crate) async fn answer(&self, answer: Value) -> Result<bool, LogError> {
        if !self.asking()
            || self
                .answering
                .compare_exchange(false, true, Ordering::AcqRel, Ordering::Acquire)
                .is_err()
        {
            return Ok(false);
        }
        let logged = self
            .emit(
                EventType::InputReceived,
                json!({ "answer": answer.clone() }),
            )
            .await;
        let given = logged.map(|()| {
            self.question
                .lock()
                .ok()
                .and_then(|mut slot| slot.take())
                .is_some_and(|sender| sender.send(answer).is_ok())
        });
        self.answering.store(false, Ordering::Release);
        given
    }

    /// Logs the final state when someone could ask for it: the log holds
    /// events, the sender follows the task, it was stopped, or it ran
    /// [`LOG_FINAL_AFTER`] or longer. Then waits for what was written to
    /// be stored.
    ///
    /// The common case, nothing logged and nothing to log, returns at once.
    /// The writing is boxed: a task's future, one per task, would otherwise
    /// carry room for it (with this and the other rare paths of a
    /// request/reply task inline, its future took 5,160 bytes; 1,520 without).
    pub(crate) async fn finish(&self, response: &TaskResponse, ran: Duration, stopped: bool) {
        if self.logged.load(Ordering::Acquire) || self.streamed || stopped || ran >= LOG_FINAL_AFTER
        {
            Box::pin(self.log_final(response, ran, stopped)).await;
        }
    }

    async fn log_final(&self, response: &TaskResponse, ran: Duration, stopped: bool) {
        let mut log = self.log().lock().await;
        if log.ended().is_some() {
            return;
        }
        let wanted = log.begun() || self.streamed || stopped || ran >= LOG_FINAL_AFTER;
        if wanted {
            let kind = EventType::of_status(response.status);
            let data = serde_json::to_value(response).unwrap_or(Value::Null);
            let mut written = log.write(&self.bus, kind, data, self.earlier).await;
            if let Err(LogError::TooLarge { size, .. }) = written {
                // The final state is logged all the same, without the result
                // (the caller received it whole).
                let mut short = response.clone();
                short.result = None;
                short.error = Some(format!(
                    "the result ({size} bytes with its event) is too large for the task's log; the caller received it{}",
                    response
                        .error
                        .as_deref()
                        .map(|error| format!(": {error}"))
                        .unwrap_or_default()
                ));
                let data = serde_json::to_value(&short).unwrap_or(Value::Null);
                written = log.write(&self.bus, kind, data, self.earlier).await;
            }
            if let Err(err) = written {
                tracing::warn!(%err, task_id = %self.task_id(), "cannot log the task's final state");
            }
        }
        log.flush(&self.bus).await;
    }
}

impl RunningTask {
    /// Waits for what was written to the log to be stored, without ending it
    /// (an attempt that will be retried).
    pub(crate) async fn flush_log(&self) {
        if self.logged.load(Ordering::Acquire) {
            self.log().lock().await.flush(&self.bus).await;
        }
    }
}

/// Why a question got no answer.
#[derive(Debug, thiserror::Error)]
pub(crate) enum AskError {
    #[error("the handler asked a second question before the first was answered")]
    Busy,
    #[error(transparent)]
    Log(LogError),
    #[error("no answer came: {}", .0.message())]
    Stopped(StopReason),
}
