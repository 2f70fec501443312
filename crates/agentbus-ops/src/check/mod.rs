//! `agentbus check`: a delivery test (publish/subscribe, offline delivery, work
//! queue, broadcast) and a configuration doctor, runnable against any server.
//!
//! [`run`] performs twelve checks, in this order, each bounded in time:
//!
//! | check | what passes |
//! | --- | --- |
//! | [`names::PUBLISH_SUBSCRIBE`] | a core subscriber receives what is published |
//! | [`names::OFFLINE_DELIVERY`] | a message stored before its durable consumer existed reaches it |
//! | [`names::WORK_QUEUE`] | N tasks over K workers on one consumer run once each, and leave the stream |
//! | [`names::BROADCAST`] | one broadcast reaches each of M durable consumers exactly once |
//! | [`names::STREAMS`] | every stream of the topology exists with its settings |
//! | [`names::REQUEST_REPLY`] | no stream on the server captures a request/reply subject |
//! | [`names::DURABLE_CONSUMERS`] | agentbus consumers are durable and never expire |
//! | [`names::DEDUP_AND_DISCARD`] | the task stream deduplicates and refuses tasks when full |
//! | [`names::AUTHENTICATION`] | a client without credentials is refused |
//! | [`names::OPERATOR_AGENTS`] | every agent serving tasks connects with an identity of its own |
//! | [`names::PERMISSIONS`] | a probe agent identity is refused what an agent may not do (`agentbus up`'s server only) |
//! | [`names::DEAD_LETTERS`] | no dead letter waits parked because the dead-letter stream was full |
//!
//! Each run uses names of its own (`check-<uuid>`, built by
//! [`agentbus::subject::CheckRun`]), so runs at the same time do not collide, and removes what it created after each check: the consumers it
//! made are deleted and its subjects are purged from the streams holding them.
//! Its consumers also expire on their own a few minutes after a run that was
//! killed midway; messages left by such a run age out with their stream's `max_age`.
//!
//! ```no_run
//! # async fn example(client: async_nats::Client, target: agentbus::ServerTarget) {
//! use agentbus_ops::topology::Topology;
//! let report = agentbus_ops::check::run(&client, &target, &Topology::standard()).await;
//! for check in &report.checks {
//!     println!("{} {} {}", if check.passed { "PASS" } else { "FAIL" }, check.name, check.detail);
//! }
//! # }
//! ```

mod delivery;
mod doctor;
mod identities;

use crate::topology::{Topology, is_stream_not_found};
use agentbus::connect::ServerTarget;
use agentbus::subject::CheckRun;
use async_nats::jetstream::{self, ErrorCode};
use futures::StreamExt;
use serde::Serialize;
use std::future::Future;
use std::sync::Mutex;
use std::time::Duration;

/// The names of the checks, in the order [`run`] performs them.
pub mod names {
    /// Core publish/subscribe.
    pub const PUBLISH_SUBSCRIBE: &str = "publish-subscribe";
    /// Delivery to a subscriber that was offline at publish time.
    pub const OFFLINE_DELIVERY: &str = "offline-delivery";
    /// A work queue of N tasks over K workers.
    pub const WORK_QUEUE: &str = "work-queue";
    /// A broadcast reaching each of M consumers.
    pub const BROADCAST: &str = "broadcast";
    /// The topology's streams exist with the expected settings.
    pub const STREAMS: &str = "streams";
    /// No stream captures a request/reply subject.
    pub const REQUEST_REPLY: &str = "request-reply";
    /// Consumers meant to be durable are durable.
    pub const DURABLE_CONSUMERS: &str = "durable-consumers";
    /// The work-queue stream deduplicates and refuses new tasks when full.
    pub const DEDUP_AND_DISCARD: &str = "dedup-and-discard";
    /// Clients without credentials are refused.
    pub const AUTHENTICATION: &str = "authentication";
    /// No agent is served with a shared password user.
    pub const OPERATOR_AGENTS: &str = "operator-agents";
    /// nats-server refuses an agent identity what it may not do.
    pub const PERMISSIONS: &str = "permissions";
    /// No dead letter waits parked for room in the dead-letter stream.
    pub const DEAD_LETTERS: &str = "dead-letters";

    /// Every check, in order.
    pub const ALL: [&str; 12] = [
        PUBLISH_SUBSCRIBE,
        OFFLINE_DELIVERY,
        WORK_QUEUE,
        BROADCAST,
        STREAMS,
        REQUEST_REPLY,
        DURABLE_CONSUMERS,
        DEDUP_AND_DISCARD,
        AUTHENTICATION,
        OPERATOR_AGENTS,
        PERMISSIONS,
        DEAD_LETTERS,
    ];
}

/// The outcome of one check.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CheckResult {
    /// One of [`names::ALL`].
    pub name: &'static str,
    /// Whether the check passed.
    pub passed: bool,
    /// One line: what was verified, or what is wrong and what to do.
    pub detail: String,
}

/// The outcome of a run: serializes as `{"passed": bool, "checks": [...]}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CheckReport {
    /// True when every check passed.
    pub passed: bool,
    /// Every check, in the order of [`names::ALL`].
    pub checks: Vec<CheckResult>,
}

impl CheckReport {
    fn new(checks: Vec<CheckResult>) -> Self {
        Self {
            passed: checks.iter().all(|c| c.passed),
            checks,
        }
    }

    /// The result of the check called `name`.
    pub fn get(&self, name: &str) -> Option<&CheckResult> {
        self.checks.iter().find(|c| c.name == name)
    }

    /// The checks that failed.
    pub fn failed(&self) -> impl Iterator<Item = &CheckResult> {
        self.checks.iter().filter(|c| !c.passed)
    }
}

/// Sizes and time bounds of a run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckOptions {
    /// Longest a check may take; removing what it created may take as long again (at least 5 s).
    pub timeout: Duration,
    /// Tasks put on the work queue.
    pub tasks: usize,
    /// Workers sharing the work queue's consumer.
    pub workers: usize,
    /// Durable consumers the broadcast must reach.
    pub broadcast_consumers: usize,
}

impl Default for CheckOptions {
    fn default() -> Self {
        Self {
            timeout: Duration::from_secs(5),
            tasks: 50,
            workers: 3,
            broadcast_consumers: 3,
        }
    }
}

/// Runs every check against the server behind `client` with default options.
///
/// `target` is where `client` is connected (its URL is probed without
/// credentials); `topology` is what the streams should look like.
pub async fn run(
    client: &async_nats::Client,
    target: &ServerTarget,
    topology: &Topology,
) -> CheckReport {
    run_with(
        client,
        target,
        topology,
        &CheckOptions::default(),
        |_: &str| {},
    )
    .await
}

/// Like [`run`], with `options`; `progress` is called with each check's name
/// as it starts (for a spinner).
pub async fn run_with(
    client: &async_nats::Client,
    target: &ServerTarget,
    topology: &Topology,
    options: &CheckOptions,
    mut progress: impl FnMut(&'static str),
) -> CheckReport {
    let run = Run::new(client, target, topology, options);
    let mut checks = Vec::with_capacity(names::ALL.len());
    macro_rules! check {
        ($name:expr, $check:expr) => {{
            progress($name);
            checks.push(run.bounded($name, $check).await);
        }};
    }
    check!(names::PUBLISH_SUBSCRIBE, delivery::publish_subscribe(&run));
    check!(names::OFFLINE_DELIVERY, delivery::offline_delivery(&run));
    check!(names::WORK_QUEUE, delivery::work_queue(&run));
    check!(names::BROADCAST, delivery::broadcast(&run));
    check!(names::STREAMS, doctor::streams(&run));
    check!(names::REQUEST_REPLY, doctor::request_reply(&run));
    check!(names::DURABLE_CONSUMERS, doctor::durable_consumers(&run));
    check!(names::DEDUP_AND_DISCARD, doctor::dedup_and_discard(&run));
    check!(names::AUTHENTICATION, doctor::authentication(&run));
    check!(names::OPERATOR_AGENTS, identities::operator_agents(&run));
    check!(names::PERMISSIONS, identities::permissions(&run));
    check!(names::DEAD_LETTERS, doctor::dead_letters(&run));
    CheckReport::new(checks)
}

/// What a check found: `Ok(detail)` when it passed, `Err(detail)` when not.
type Outcome = Result<String, String>;

/// The least time removing what a check created may take, however short its timeout.
const MIN_CLEAN_UP_TIMEOUT: Duration = Duration::from_secs(5);

/// How long a check's own consumers live on after a run that died midway.
const CONSUMER_EXPIRY: Duration = Duration::from_secs(300);

/// One run: the connection, its unique id, and what to remove after each check.
struct Run<'a> {
    client: &'a async_nats::Client,
    js: jetstream::Context,
    target: &'a ServerTarget,
    topology: &'a Topology,
    options: &'a CheckOptions,
    /// The names of what this run creates.
    names: CheckRun,
    created: Mutex<Created>,
}

/// What a check created, recorded before it is created, so that a check cut
/// short by its timeout is cleaned up too.
#[derive(Debug, Default)]
struct Created {
    /// Subjects it published to.
    subjects: Vec<String>,
    /// `(stream, consumer)` pairs.
    consumers: Vec<(String, String)>,
}

impl<'a> Run<'a> {
    fn new(
        client: &'a async_nats::Client,
        target: &'a ServerTarget,
        topology: &'a Topology,
        options: &'a CheckOptions,
    ) -> Self {
        let mut js = jetstream::new(client.clone());
        // A JetStream request never outlives the check that makes it.
        js.set_timeout(options.timeout);
        Self {
            client,
            js,
            target,
            topology,
            options,
            names: CheckRun::new(uuid::Uuid::new_v4()),
            created: Mutex::new(Created::default()),
        }
    }

    /// The longest a check waits for a message it expects.
    fn receive_timeout(&self) -> Duration {
        self.options.timeout / 2
    }

    /// Notes that this check publishes to `subject`.
    fn will_publish(&self, subject: &str) {
        let mut created = self.created.lock().expect("not poisoned");
        if !created.subjects.iter().any(|s| s == subject) {
            created.subjects.push(subject.to_owned());
        }
    }

    /// Notes that this check creates `consumer` on `stream`.
    fn will_create_consumer(&self, stream: &str, consumer: &str) {
        let mut created = self.created.lock().expect("not poisoned");
        created
            .consumers
            .push((stream.to_owned(), consumer.to_owned()));
    }

    /// Runs `check` within the timeout, then removes what it created.
    async fn bounded(
        &self,
        name: &'static str,
        check: impl Future<Output = Outcome>,
    ) -> CheckResult {
        let outcome = tokio::time::timeout(self.options.timeout, check)
            .await
            .unwrap_or_else(|_| {
                Err(format!(
                    "did not finish within {}; the server is overloaded or JetStream is not answering",
                    humantime::format_duration(self.options.timeout)
                ))
            });
        let clean_up_timeout = self.options.timeout.max(MIN_CLEAN_UP_TIMEOUT);
        let cleaned = tokio::time::timeout(clean_up_timeout, self.clean_up())
            .await
            .unwrap_or_else(|_| Err("it did not finish in time".to_owned()));
        let (passed, detail) = match (outcome, cleaned) {
            (Ok(detail), Ok(())) => (true, detail),
            (Err(detail), Ok(())) => (false, detail),
            (Ok(detail) | Err(detail), Err(err)) => (
                false,
                format!("{detail}; but removing what the check created failed: {err}"),
            ),
        };
        CheckResult {
            name,
            passed,
            detail,
        }
    }

    /// Deletes the consumers the last check created and purges its subjects
    /// from whichever stream stores them.
    async fn clean_up(&self) -> Result<(), String> {
        let created = std::mem::take(&mut *self.created.lock().expect("not poisoned"));
        // Whatever this run sent reaches the server before it is purged.
        self.client
            .flush()
            .await
            .map_err(|err| failed("flush the connection", err))?;
        for (stream, consumer) in &created.consumers {
            if let Err(err) = self.js.delete_consumer_from_stream(consumer, stream).await
                && !is_not_found(&err)
            {
                return Err(format!(
                    "cannot delete consumer {consumer} of stream {stream}: {err}"
                ));
            }
        }
        for subject in &created.subjects {
            let stream = match self.js.stream_by_subject(subject.as_str()).await {
                Ok(stream) => stream,
                Err(err)
                    if err.kind() == jetstream::context::GetStreamByNameErrorKind::NotFound =>
                {
                    continue; // No stream stores it: nothing to purge.
                }
                Err(err) => return Err(format!("cannot find the stream of {subject}: {err}")),
            };
            self.purge(&stream, subject)
                .await
                .map_err(|err| format!("cannot purge {subject} from stream {stream}: {err}"))?;
        }
        Ok(())
    }

    /// Purges `subject` from `stream` until it holds none of it: publishes of a
    /// check cut short may still be on their way into the stream at the first purge.
    async fn purge(&self, stream: &str, subject: &str) -> Result<(), String> {
        let stream = self
            .js
            .get_stream(stream)
            .await
            .map_err(|err| err.to_string())?;
        for _ in 0..PURGE_ATTEMPTS {
            stream
                .purge()
                .filter(subject)
                .await
                .map_err(|err| err.to_string())?;
            if messages_on(&stream, subject).await? == 0 {
                return Ok(());
            }
        }
        Err(format!(
            "messages kept arriving after {PURGE_ATTEMPTS} purges"
        ))
    }
}

/// How often clean-up purges a subject that is not yet empty.
const PURGE_ATTEMPTS: usize = 3;

/// How many messages on `subject` `stream` holds.
async fn messages_on(stream: &jetstream::stream::Stream, subject: &str) -> Result<usize, String> {
    let mut subjects = stream
        .info_with_subjects(subject)
        .await
        .map_err(|err| failed("read the stream's subjects", err))?;
    let mut count = 0;
    while let Some(entry) = subjects.next().await {
        let (_, n) = entry.map_err(|err| failed("read the stream's subjects", err))?;
        count += n;
    }
    Ok(count)
}

/// Whether JetStream answered that a consumer (or its stream) does not exist.
fn is_not_found(err: &jetstream::stream::ConsumerError) -> bool {
    matches!(
        err.kind(),
        jetstream::stream::ConsumerErrorKind::JetStream(js)
            if js.error_code() == ErrorCode::CONSUMER_NOT_FOUND
                || js.error_code() == ErrorCode::STREAM_NOT_FOUND
    )
}

/// A failure detail for a JetStream call: what could not be done, and why.
fn failed(what: &str, err: impl std::fmt::Display) -> String {
    format!("cannot {what}: {err}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_report_passes_only_when_every_check_passes() {
        let result = |name, passed| CheckResult {
            name,
            passed,
            detail: String::new(),
        };
        let report = CheckReport::new(vec![
            result(names::STREAMS, true),
            result(names::BROADCAST, false),
        ]);
        assert!(!report.passed);
        let failed: Vec<_> = report.failed().map(|c| c.name).collect();
        assert_eq!(failed, [names::BROADCAST]);
        assert!(CheckReport::new(vec![result(names::STREAMS, true)]).passed);
        assert_eq!(
            serde_json::to_value(&report).unwrap()["checks"][1],
            serde_json::json!({"name": "broadcast", "passed": false, "detail": ""})
        );
    }
}
