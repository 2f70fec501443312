//! The NATS KV backend: buckets `agent-state` and `agent-presence`.
//!
//! Both buckets keep one value per key, allow per-message TTLs and leave a
//! marker when a key expires (`limit_markers` in the topology; nats-server
//! 2.11+). A watcher therefore sees an expiry as a purge, and a deliberate
//! removal as a delete.

use super::{
    BackendError, EntryChange, EntryKey, PRESENCE_BUCKET, STATE_BUCKET, StateChange, StateError,
    ttl_seconds,
};
use crate::client::Bus;
use crate::name::Name;
use async_nats::jetstream::{self, kv};
use bytes::Bytes;
use futures::stream::BoxStream;
use futures::{StreamExt, TryStreamExt};
use std::time::Duration;

pub(super) const BACKEND: &str = "nats-kv";

/// Reads of a listing in flight at once.
const LIST_READS_IN_FLIGHT: usize = 64;

/// Both buckets, opened.
#[derive(Debug, Clone)]
pub(super) struct NatsKv {
    js: jetstream::Context,
    state: kv::Store,
    presence: kv::Store,
    max_payload: usize,
}

/// One agent's keys: the state bucket seen through the prefix `<agent>.`.
#[derive(Debug, Clone)]
pub(super) struct AgentKv {
    js: jetstream::Context,
    store: kv::Store,
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
        let js = bus.jetstream().clone();
        let state = open_bucket(&js, STATE_BUCKET).await?;
        let presence = open_bucket(&js, PRESENCE_BUCKET).await?;
        Ok(Self {
            js,
            state,
            presence,
            max_payload: bus.max_payload(),
        })
    }

    pub(super) fn agent(&self, agent: &Name) -> AgentKv {
        AgentKv {
            js: self.js.clone(),
            store: scoped(&self.state, agent),
            max_payload: self.max_payload,
        }
    }

    pub(super) async fn put_entry(
        &self,
        key: &EntryKey,
        value: Vec<u8>,
        ttl: Duration,
    ) -> Result<(), StateError> {
        put(
            &self.js,
            &self.presence,
            &key.join("."),
            value.into(),
            Some(ttl),
        )
        .await
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
    pub(super) async fn get(&self, key: &str) -> Result<Option<Bytes>, StateError> {
        self.store
            .get(key)
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
        put(&self.js, &self.store, key, value.into(), ttl)
            .await
            .map_err(backend_error("set a key"))
    }

    pub(super) async fn delete(&self, key: &str) -> Result<(), StateError> {
        self.store
            .delete(key)
            .await
            .map_err(backend_error("delete a key"))
    }

    pub(super) async fn list(&self) -> Result<Vec<String>, StateError> {
        self.store
            .keys()
            .await
            .map_err(backend_error("list keys"))?
            .try_collect()
            .await
            .map_err(backend_error("list keys"))
    }

    pub(super) async fn watch(&self) -> Result<BoxStream<'static, StateChange>, StateError> {
        let watch = self
            .store
            .watch_all()
            .await
            .map_err(backend_error("watch keys"))?;
        Ok(watch
            .filter_map(|entry| async move {
                let entry = match entry {
                    Ok(entry) => entry,
                    Err(err) => {
                        tracing::debug!(%err, "state watch error");
                        return None;
                    }
                };
                let value = match entry.operation {
                    kv::Operation::Put => match serde_json::from_slice(&entry.value) {
                        Ok(value) => Some(value),
                        Err(err) => {
                            tracing::warn!(key = %entry.key, %err, "state value is not JSON; not reported");
                            return None;
                        }
                    },
                    kv::Operation::Delete | kv::Operation::Purge => None,
                };
                Some(StateChange {
                    key: entry.key,
                    value,
                })
            })
            .boxed())
    }
}

/// Opens a bucket, with an error naming `agentbus setup` when it is missing
/// or was made before it allowed per-message TTLs.
async fn open_bucket(
    js: &jetstream::Context,
    bucket: &'static str,
) -> Result<kv::Store, StateError> {
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

/// `store` seen through the key prefix `<agent>.`: its keys, listing and
/// watches cover that agent's keys only, and the keys it reports are the
/// agent's own (without the prefix). `Store`'s prefixes are public for this.
fn scoped(store: &kv::Store, agent: &Name) -> kv::Store {
    let mut scoped = store.clone();
    scoped.prefix = format!("{}{agent}.", store.prefix);
    scoped.put_prefix = store.put_prefix.as_ref().map(|p| format!("{p}{agent}."));
    scoped
}

/// Puts `value` under `key`; with a TTL, as a message with a `Nats-TTL`
/// header (the KV API has no put with a TTL), built like `Store::put` does.
async fn put(
    js: &jetstream::Context,
    store: &kv::Store,
    key: &str,
    value: Bytes,
    ttl: Option<Duration>,
) -> Result<(), async_nats::Error> {
    let Some(ttl) = ttl else {
        store.put(key, value).await?;
        return Ok(());
    };
    let subject = format!(
        "{}{key}",
        store.put_prefix.as_deref().unwrap_or(&store.prefix)
    );
    let mut headers = async_nats::HeaderMap::new();
    headers.insert(
        async_nats::header::NATS_MESSAGE_TTL,
        ttl_seconds(ttl).to_string().as_str(),
    );
    js.publish_with_headers(subject, headers, value)
        .await?
        .await?;
    Ok(())
}
