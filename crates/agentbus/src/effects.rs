//! Effects that happen once per task: the result of an effect is stored
//! under the task id before the handler goes on, so any later attempt at the
//! task (a retry, a redelivery, a rerun after a server lost its deliveries,
//! a stale worker that resumed) finds it instead of making the effect again.

use crate::client::Bus;
use crate::ride::ride;
use crate::subject::TASK_RESULTS_BUCKET;
use async_nats::jetstream::kv;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use std::future::Future;

/// The longest effect name.
const MAX_NAME_LEN: usize = 64;

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

/// An effect's result as stored.
#[derive(Serialize, Deserialize)]
struct Stored<S, T> {
    task_id: S,
    effect: S,
    value: T,
}

/// The key of effect `name` of task `task_id`: one token (task ids and
/// effect names hold no dots, and `=` is in neither).
pub(crate) fn key(task_id: &str, name: &str) -> String {
    format!("{task_id}={name}")
}

/// Runs `effect` unless its result for `task_id` and `name` is stored; then
/// stores it. Returns the stored result, or the effect's own, or the
/// effect's error (nothing stored: a later attempt makes the effect again).
pub(crate) async fn once<T, E, F, Fut>(
    bus: &Bus,
    task_id: &str,
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
    let store = bus
        .jetstream()
        .get_key_value(TASK_RESULTS_BUCKET)
        .await
        .map_err(|err| failed("open the bucket for", err.into()))?;
    let key = key(task_id, name);
    let read = |bytes: &[u8]| {
        serde_json::from_slice::<Stored<String, T>>(bytes).map_err(|source| OnceError::Decode {
            task_id: task_id.to_owned(),
            name: name.to_owned(),
            source,
        })
    };
    let stored = ride(
        bus,
        &key,
        || store.get(&key),
        |err| err.kind() != kv::EntryErrorKind::InvalidKey,
    )
    .await
    .map_err(|err| failed("read", err.into()))?;
    if let Some(bytes) = stored {
        return Ok(Ok(read(&bytes)?.value));
    }
    let value = match effect().await {
        Ok(value) => value,
        Err(err) => return Ok(Err(err)),
    };
    let body: bytes::Bytes = serde_json::to_vec(&Stored {
        task_id,
        effect: name,
        value: &value,
    })
    .map_err(|err| failed("encode", err.into()))?
    .into();
    let created = ride(
        bus,
        &key,
        || store.create(&key, body.clone()),
        |err| {
            !matches!(
                err.kind(),
                kv::CreateErrorKind::AlreadyExists | kv::CreateErrorKind::InvalidKey
            )
        },
    )
    .await;
    match created {
        Ok(_) => Ok(Ok(value)),
        // Another attempt stored its result first: that one stands.
        Err(err) if err.kind() == kv::CreateErrorKind::AlreadyExists => {
            let stored = store
                .get(&key)
                .await
                .map_err(|err| failed("read", err.into()))?;
            match stored {
                Some(bytes) => Ok(Ok(read(&bytes)?.value)),
                None => Ok(Ok(value)),
            }
        }
        Err(err) => Err(failed("store", err.into())),
    }
}
