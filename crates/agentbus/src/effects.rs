//! Effects that happen once per task. Before an attempt makes an effect it
//! claims it under the task id, with a lease; the effect's result replaces
//! the claim. Any later attempt at the task (a retry, a redelivery, a rerun
//! after a server lost its deliveries, a paused worker that resumed) finds
//! the result and gets it back instead of making the effect again, and one
//! that finds another attempt's live claim waits for its result. A claim
//! whose lease ran out (its attempt died after claiming, or could not store
//! the result while the claim held: it tries until shortly before the lease
//! ends) is taken over.

use crate::bucket::Bucket;
use crate::client::Bus;
use crate::ride::{ride, ride_until};
use crate::subject::TASK_RESULTS_BUCKET;
use async_nats::jetstream::kv;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use std::future::Future;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The longest effect name.
const MAX_NAME_LEN: usize = 64;
/// The shortest a claim holds: an attempt that claimed an effect and did
/// not record its result within it is taken to have died, and the effect is
/// made by the attempt that finds the claim. A claim holds at least twice
/// the bus's store deadline, which the result's store may take through an
/// election.
const MIN_LEASE: Duration = Duration::from_secs(30);
/// How long before its claim's lease ends an attempt stops trying to store
/// the result of the effect it made: what the clocks of two processes may
/// differ by.
const LEASE_MARGIN: Duration = Duration::from_secs(2);
/// How often an attempt that waits for another one's claim looks again.
const WAIT_POLL: Duration = Duration::from_millis(100);

/// Why an effect's stored result could not be read or written.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub(crate) enum OnceError {
    /// The name is not 1-64 characters from `A-Z`, `a-z`, `0-9`, `_` and `-`.
    #[error(
        "invalid effect name {0:?}: use 1-{MAX_NAME_LEN} characters from A-Z, a-z, 0-9, '_' and '-'"
    )]
    InvalidName(String),
    /// The stored result does not read as the type asked for.
    #[error(
        "the stored result of effect {name} of task {task_id} does not read as asked: {source}"
    )]
    Decode {
        /// The task.
        task_id: String,
        /// The effect.
        name: String,
        /// Why it does not read.
        #[source]
        source: serde_json::Error,
    },
    /// The results bucket could not be read or written.
    #[error(
        "cannot {operation} effect {name} of task {task_id} in {TASK_RESULTS_BUCKET}: {source}"
    )]
    Store {
        /// What was attempted.
        operation: &'static str,
        /// The task.
        task_id: String,
        /// The effect.
        name: String,
        /// Why.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

/// An effect as stored: claimed by an attempt, or made.
#[derive(Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
enum Stored<T> {
    /// An attempt makes it; the claim holds until `until_ms` (ms since the
    /// epoch, by the claimer's clock).
    Claimed { instance_id: String, until_ms: u64 },
    /// Made, with its result.
    Made { value: T },
}

/// The idempotency key of effect `name` of task `task_id`, the same in
/// every attempt: `=` is in neither.
pub(crate) fn idempotency_key(task_id: &str, name: &str) -> String {
    format!("{task_id}={name}")
}

/// Where effect `name` of the task keyed `task` is kept in the results
/// bucket: `<task key>.<name>`, one token longer than the task's key, so
/// that the agent that runs the task may write it and the caller, who may
/// write the task's own key, may not (the caller could otherwise store a
/// result for an effect the runner never made).
fn stored_key(task: &str, name: &str) -> String {
    format!("{task}.{name}")
}

fn now_ms() -> u64 {
    let since = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    u64::try_from(since.as_millis()).unwrap_or(u64::MAX)
}

/// Makes `effect` unless it was made for the task keyed `task_id` (its
/// [`TaskKey`](crate::TaskKey)) and `name`; returns its
/// result, stored or new, or the effect's error (then the claim is given
/// back, and a later attempt makes the effect again).
pub(crate) async fn once<T, E, F, Fut>(
    bus: &Bus,
    task_id: &str,
    instance_id: &str,
    name: &str,
    effect: F,
) -> Result<Result<T, E>, OnceError>
where
    T: Serialize + DeserializeOwned,
    F: FnOnce() -> Fut,
    Fut: Future<Output = Result<T, E>>,
{
    let valid = !name.is_empty()
        && name.len() <= MAX_NAME_LEN
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if !valid {
        return Err(OnceError::InvalidName(name.to_owned()));
    }
    let failed = |operation, source: Box<dyn std::error::Error + Send + Sync>| OnceError::Store {
        operation,
        task_id: task_id.to_owned(),
        name: name.to_owned(),
        source,
    };
    let store = Bucket::open(bus, TASK_RESULTS_BUCKET)
        .await
        .map_err(|err| failed("open the bucket for", err.into()))?;
    let key = stored_key(task_id, name);
    let encode = |stored: &Stored<&T>| -> Result<bytes::Bytes, OnceError> {
        serde_json::to_vec(stored)
            .map(Into::into)
            .map_err(|err| failed("encode", err.into()))
    };
    let lease = MIN_LEASE.max(bus.store_deadline() * 2);
    let claim = || Stored::<&T>::Claimed {
        instance_id: instance_id.to_owned(),
        until_ms: now_ms().saturating_add(u64::try_from(lease.as_millis()).unwrap_or(u64::MAX)),
    };
    // Claim the effect, or find it made, or wait for another attempt's claim.
    let (revision, claimed_at) = loop {
        // No later than the claim's own time, from which its lease runs.
        let claimed_at = tokio::time::Instant::now();
        let entry = ride(
            bus,
            &key,
            || store.entry(&key),
            |err| err.kind() != kv::EntryErrorKind::InvalidKey,
        )
        .await
        .map_err(|err| failed("read", err.into()))?;
        let found = entry.filter(|entry| entry.operation == kv::Operation::Put);
        let claimed = match &found {
            None => store
                .create(&key, encode(&claim())?)
                .await
                .map(Some)
                .or_else(|err| match err.kind() {
                    kv::CreateErrorKind::AlreadyExists => Ok(None),
                    _ => Err(failed("claim", err.into())),
                })?,
            Some(entry) => {
                match serde_json::from_slice::<Stored<serde_json::Value>>(&entry.value) {
                    Ok(Stored::Made { value }) => {
                        return serde_json::from_value(value).map(Ok).map_err(|source| {
                            OnceError::Decode {
                                task_id: task_id.to_owned(),
                                name: name.to_owned(),
                                source,
                            }
                        });
                    }
                    Ok(Stored::Claimed { until_ms, .. }) if until_ms > now_ms() => {
                        tokio::time::sleep(WAIT_POLL).await;
                        None
                    }
                    // Its claimer died (or it does not read): taken over.
                    _ => store
                        .update(&key, encode(&claim())?, entry.revision)
                        .await
                        .map(Some)
                        .or_else(|err| match err.kind() {
                            kv::UpdateErrorKind::WrongLastRevision => Ok(None),
                            _ => Err(failed("claim", err.into())),
                        })?,
                }
            }
        };
        if let Some(revision) = claimed {
            break (revision, claimed_at);
        }
    };
    match effect().await {
        Ok(value) => {
            let made = encode(&Stored::Made { value: &value })?;
            // Tried for as long as the claim holds, rather than for the
            // store deadline: an attempt that could not record the effect
            // made leaves it to be made again once the lease ends.
            let until = claimed_at + lease.saturating_sub(LEASE_MARGIN);
            let stored = ride_until(
                bus,
                &key,
                until,
                || store.update(&key, made.clone(), revision),
                |err| err.kind() != kv::UpdateErrorKind::WrongLastRevision,
            )
            .await;
            if let Err(err) = stored {
                // The lease ran out before the effect was done, and another
                // attempt took the claim over: it may make the effect again.
                tracing::warn!(%err, task_id, effect = name, "an effect took longer than its claim's lease; another attempt may make it again");
            }
            Ok(Ok(value))
        }
        Err(err) => {
            // Given back, so that a later attempt makes the effect.
            if let Err(purge) = store.purge_expect_revision(&key, revision).await {
                tracing::debug!(%purge, task_id, effect = name, "the claim of a failed effect was not given back");
            }
            Ok(Err(err))
        }
    }
}
