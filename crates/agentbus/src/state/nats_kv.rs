//! The NATS KV backend: buckets `agent-state` and `agent-presence`.
//!
//! Both buckets keep one value per key, allow per-message TTLs and leave a
//! marker when a key expires (`limit_markers` in the topology; nats-server
//! 2.11+). A watcher therefore sees an expiry as a purge, and a deliberate
//! removal as a delete.

use super::{
    BackendError, EntryChange, EntryKey, PRESENCE_BUCKET, STATE_BUCKET, StateChange, StateError,
};
use crate::bucket::{Bucket, is_put, operation_of};
use crate::client::Bus;
use crate::name::Name;
use crate::stream_read::FindError;
use async_nats::jetstream::consumer::DeliverPolicy;
use async_nats::jetstream::{self, kv};
use bytes::Bytes;
use futures::stream::BoxStream;
use futures::{StreamExt, TryStreamExt};
use std::time::Duration;

pub(super) const BACKEND: &str = "nats-kv";

/// Reads of a listing in flight at once.
const LIST_READS_IN_FLIGHT: usize = 64;

/// Both buckets, opened. Presence is read and watched whole (everyone may
/// read it) through `kv::Store`; state is reached key by key through
/// [`Bucket`], which needs no description of the bucket's stream: that
/// description can list every key of every agent.
#[derive(Debug, Clone)]
pub(super) struct NatsKv {
    state: Bucket,
    presence: kv::Store,
    /// Writes of presence entries, which carry TTLs.
    presence_writes: Bucket,
    max_payload: usize,
}

/// One agent's keys: the state bucket's keys under `<agent>.`.
#[derive(Debug, Clone)]
pub(super) struct AgentKv {
    bucket: Bucket,
    /// `<agent>.`
    prefix: String,
    max_payload: usize,
}

fn backend_error<E: Into<async_nats::Error>>(operation: &'static str) -> impl Fn(E) -> StateError {
    move |err| StateError::Backend {
        backend: BACKEND,
        operation,
        source: BackendError::Nats(err.into()),
    }
}

impl NatsKv {
    pub(super) async fn open(bus: &Bus) -> Result<Self, StateError> {
        // Made by the same topology, both allow per-message TTLs or neither
        // does: the presence bucket, which may be described, tells.
        let presence = open_presence(bus.jetstream()).await?;
        // Described just now: it exists.
        let presence_writes = Bucket::known(bus.jetstream(), PRESENCE_BUCKET)
            .await
            .map_err(|err| StateError::Unavailable {
                backend: BACKEND,
                source: BackendError::Nats(err.into()),
            })?;
        Ok(Self {
            state: open_bucket(bus, STATE_BUCKET).await?,
            presence,
            presence_writes,
            max_payload: bus.max_payload(),
        })
    }

    pub(super) fn agent(&self, agent: &Name) -> AgentKv {
        AgentKv {
            bucket: self.state.clone(),
            prefix: format!("{agent}."),
            max_payload: self.max_payload,
        }
    }

    pub(super) async fn put_entry(
        &self,
        key: &EntryKey,
        value: Vec<u8>,
        ttl: Duration,
    ) -> Result<(), StateError> {
        self.presence_writes
            .put_with_ttl(&key.join("."), value.into(), Some(ttl))
            .await
            .map(drop)
            .map_err(backend_error("store an entry"))
    }

    /// A delete (not a purge): watchers tell a removal from an expiry by it.
    pub(super) async fn remove_entry(&self, key: &EntryKey) -> Result<(), StateError> {
        self.presence
            .delete(key.join("."))
            .await
            .map_err(backend_error("remove an entry"))
    }

    pub(super) async fn list_entries(&self) -> Result<Vec<(EntryKey, Vec<u8>)>, StateError> {
        let keys: Vec<String> = self
            .presence
            .keys()
            .await
            .map_err(backend_error("list entries"))?
            .try_collect()
            .await
            .map_err(backend_error("list entries"))?;
        // One read per key, several in flight: a listing of many entries
        // waits for a few round trips instead of one per entry.
        futures::stream::iter(keys)
            .map(|key| async move {
                let value = self
                    .presence
                    .get(&key)
                    .await
                    .map_err(backend_error("read an entry"))?;
                // An entry may expire between the listing and the read.
                Ok(EntryKey::split(&key, '.').zip(value))
            })
            .buffered(LIST_READS_IN_FLIGHT)
            .try_filter_map(
                |entry| async move { Ok(entry.map(|(key, value)| (key, value.to_vec()))) },
            )
            .try_collect()
            .await
    }

    pub(super) async fn entry_changes(
        &self,
    ) -> Result<BoxStream<'static, EntryChange>, StateError> {
        let watch = self
            .presence
            .watch_with_history(">")
            .await
            .map_err(backend_error("watch entries"))?;
        Ok(watch
            .filter_map(|entry| async move {
                let entry = match entry {
                    Ok(entry) => entry,
                    Err(err) => {
                        tracing::debug!(%err, "entry watch error");
                        return None;
                    }
                };
                let key = EntryKey::split(&entry.key, '.')?;
                Some(match entry.operation {
                    kv::Operation::Put => EntryChange::Put(key, entry.value.to_vec()),
                    kv::Operation::Delete => EntryChange::Removed(key),
                    // The limit marker of an expired entry (or a manual purge).
                    kv::Operation::Purge => EntryChange::Expired(key),
                })
            })
            .boxed())
    }

    pub(super) fn entries_max_age(&self) -> Duration {
        self.presence.stream.cached_info().config.max_age
    }
}

impl AgentKv {
    /// The bucket's key of the agent's `key`.
    fn key(&self, key: &str) -> String {
        format!("{}{key}", self.prefix)
    }

    pub(super) async fn get(&self, key: &str) -> Result<Option<Bytes>, StateError> {
        self.bucket
            .get(&self.key(key))
            .await
            .map_err(backend_error("read a key"))
    }

    pub(super) async fn set(
        &self,
        key: &str,
        value: Vec<u8>,
        ttl: Option<Duration>,
    ) -> Result<(), StateError> {
        if value.len() > self.max_payload {
            return Err(StateError::TooLarge {
                key: key.to_owned(),
                size: value.len(),
                max: self.max_payload,
                backend: BACKEND,
            });
        }
        self.bucket
            .put_with_ttl(&self.key(key), value.into(), ttl)
            .await
            .map(drop)
            .map_err(backend_error("set a key"))
    }

    pub(super) async fn delete(&self, key: &str) -> Result<(), StateError> {
        self.bucket
            .delete(&self.key(key))
            .await
            .map_err(backend_error("delete a key"))
    }

    /// The agent's keys holding a value: the last message of each, without
    /// its value, read until none is left to come.
    pub(super) async fn list(&self) -> Result<Vec<String>, StateError> {
        let listed = async {
            let (mut pending, mut watch) = self
                .bucket
                .watch(&self.key(">"), DeliverPolicy::LastPerSubject, true)
                .await?;
            let mut keys = Vec::new();
            while pending > 0 {
                let Some(message) = watch.next().await else {
                    break;
                };
                let message = message?;
                pending = message.info()?.pending;
                if is_put(message.headers.as_ref())
                    && let Some(key) = self.own_key(&message.subject)
                {
                    keys.push(key.to_owned());
                }
            }
            Ok::<_, async_nats::Error>(keys)
        };
        listed.await.map_err(backend_error("list keys"))
    }

    /// The agent's key a message of the bucket is stored under.
    fn own_key<'a>(&self, subject: &'a str) -> Option<&'a str> {
        self.bucket
            .key_of(subject)?
            .strip_prefix(self.prefix.as_str())
    }

    pub(super) async fn watch(&self) -> Result<BoxStream<'static, StateChange>, StateError> {
        let (_, watch) = self
            .bucket
            .watch(&self.key(">"), DeliverPolicy::New, false)
            .await
            .map_err(backend_error("watch keys"))?;
        let keys = self.clone();
        Ok(watch
            .filter_map(move |message| {
                let change = match message {
                    Ok(message) => keys.change(&message),
                    Err(err) => {
                        tracing::debug!(%err, "state watch error");
                        None
                    }
                };
                async move { change }
            })
            .boxed())
    }

    /// The change a watched message made.
    fn change(&self, message: &jetstream::Message) -> Option<StateChange> {
        let key = self.own_key(&message.subject)?.to_owned();
        let operation = match message.headers.as_ref().map(operation_of) {
            None => kv::Operation::Put,
            Some(Ok(operation)) => operation,
            Some(Err(err)) => {
                tracing::debug!(%key, %err, "state watch: an unknown operation");
                return None;
            }
        };
        let value = match operation {
            kv::Operation::Put => match serde_json::from_slice(&message.payload) {
                Ok(value) => Some(value),
                Err(err) => {
                    tracing::warn!(%key, %err, "state value is not JSON; not reported");
                    return None;
                }
            },
            kv::Operation::Delete | kv::Operation::Purge => None,
        };
        Some(StateChange { key, value })
    }
}

/// Opens the state bucket for reads and writes by key, with an error naming
/// `agentbus setup` when it is missing.
async fn open_bucket(bus: &Bus, bucket: &'static str) -> Result<Bucket, StateError> {
    Bucket::open(bus, bucket).await.map_err(|err| match err {
        FindError::Missing { .. } => StateError::Setup {
            bucket,
            problem: "does not exist",
        },
        err @ FindError::Unanswered { .. } => StateError::Unavailable {
            backend: BACKEND,
            source: BackendError::Nats(err.into()),
        },
    })
}

/// Opens the presence bucket, with an error naming `agentbus setup` when it
/// is missing or was made before it allowed per-message TTLs.
async fn open_presence(js: &jetstream::Context) -> Result<kv::Store, StateError> {
    let bucket = PRESENCE_BUCKET;
    match js.get_stream(format!("KV_{bucket}")).await {
        Ok(stream) if !stream.cached_info().config.allow_message_ttl => {
            return Err(StateError::Setup {
                bucket,
                problem: "does not allow per-message TTLs (it was made by an older agentbus)",
            });
        }
        Ok(_) => {}
        Err(err) if crate::jetstream_errors::is_stream_not_found(&err) => {
            return Err(StateError::Setup {
                bucket,
                problem: "does not exist",
            });
        }
        Err(err) => {
            return Err(StateError::Unavailable {
                backend: BACKEND,
                source: BackendError::Nats(err.into()),
            });
        }
    }
    js.get_key_value(bucket)
        .await
        .map_err(|err| StateError::Unavailable {
            backend: BACKEND,
            source: BackendError::Nats(err.into()),
        })
}
