//! The NATS KV backend: buckets `agent-state` and `agent-presence`.
//!
//! Both buckets keep one value per key, allow per-message TTLs and leave a
//! marker when a key expires (`limit_markers` in the topology; nats-server
//! 2.11+). A watcher therefore sees an expiry as a purge, and a deliberate
//! removal as a delete.

use super::{PRESENCE_BUCKET, STATE_BUCKET, StateChange, StateError, ttl_seconds};
use crate::client::Bus;
use crate::name::Name;
use crate::presence::{AgentPresence, EntryId, PresenceChange};
use async_nats::jetstream::{self, kv};
use bytes::Bytes;
use futures::stream::BoxStream;
use futures::{StreamExt, TryStreamExt};
use std::time::Duration;

pub(super) const BACKEND: &str = "nats-kv";

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

fn backend_error(operation: &'static str) -> impl Fn(&dyn std::fmt::Display) -> StateError {
    move |err| StateError::Backend {
        backend: BACKEND,
        operation,
        reason: err.to_string(),
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

    pub(super) async fn put_presence(
        &self,
        agent: &Name,
        instance: &Name,
        value: Vec<u8>,
        ttl: Duration,
    ) -> Result<(), StateError> {
        let key = presence_key(agent, instance);
        put(&self.js, &self.presence, &key, value.into(), Some(ttl))
            .await
            .map_err(|err| backend_error("store a heartbeat")(&err))
    }

    /// A delete (not a purge): watchers tell a goodbye from an expiry by it.
    pub(super) async fn remove_presence(
        &self,
        agent: &Name,
        instance: &Name,
    ) -> Result<(), StateError> {
        self.presence
            .delete(presence_key(agent, instance))
            .await
            .map_err(|err| backend_error("remove a presence entry")(&err))
    }

    pub(super) async fn list_presence(&self) -> Result<Vec<AgentPresence>, StateError> {
        let keys: Vec<String> = self
            .presence
            .keys()
            .await
            .map_err(|err| backend_error("list presence entries")(&err))?
            .try_collect()
            .await
            .map_err(|err| backend_error("list presence entries")(&err))?;
        let mut entries = Vec::with_capacity(keys.len());
        for key in keys {
            // An entry may expire between the listing and the read.
            let value = self
                .presence
                .get(&key)
                .await
                .map_err(|err| backend_error("read a presence entry")(&err))?;
            if let Some(presence) = value.and_then(|v| decode_presence(&key, &v)) {
                entries.push(presence);
            }
        }
        Ok(entries)
    }

    pub(super) async fn presence_changes(
        &self,
    ) -> Result<BoxStream<'static, PresenceChange>, StateError> {
        let watch = self
            .presence
            .watch_with_history(">")
            .await
            .map_err(|err| backend_error("watch presence entries")(&err))?;
        Ok(watch
            .filter_map(|entry| async move {
                let entry = match entry {
                    Ok(entry) => entry,
                    Err(err) => {
                        tracing::debug!(%err, "presence watch error");
                        return None;
                    }
                };
                let id = parse_presence_key(&entry.key)?;
                match entry.operation {
                    kv::Operation::Put => {
                        decode_presence(&entry.key, &entry.value).map(PresenceChange::Seen)
                    }
                    kv::Operation::Delete => Some(PresenceChange::Left(id)),
                    // The limit marker of an expired entry (or a manual purge).
                    kv::Operation::Purge => Some(PresenceChange::Expired(id)),
                }
            })
            .boxed())
    }

    pub(super) fn presence_max_age(&self) -> Duration {
        self.presence.stream.cached_info().config.max_age
    }
}

impl AgentKv {
    pub(super) async fn get(&self, key: &str) -> Result<Option<Bytes>, StateError> {
        self.store
            .get(key)
            .await
            .map_err(|err| backend_error("read a key")(&err))
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
            .map_err(|err| backend_error("set a key")(&err))
    }

    pub(super) async fn delete(&self, key: &str) -> Result<(), StateError> {
        self.store
            .delete(key)
            .await
            .map_err(|err| backend_error("delete a key")(&err))
    }

    pub(super) async fn list(&self) -> Result<Vec<String>, StateError> {
        self.store
            .keys()
            .await
            .map_err(|err| backend_error("list keys")(&err))?
            .try_collect()
            .await
            .map_err(|err| backend_error("list keys")(&err))
    }

    pub(super) async fn watch(&self) -> Result<BoxStream<'static, StateChange>, StateError> {
        let watch = self
            .store
            .watch_all()
            .await
            .map_err(|err| backend_error("watch keys")(&err))?;
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
        Err(err) if is_stream_not_found(&err) => {
            return Err(StateError::Setup {
                bucket,
                problem: "does not exist",
            });
        }
        Err(err) => {
            return Err(StateError::Unavailable {
                backend: BACKEND,
                reason: format!("cannot look up the bucket {bucket}: {err}"),
            });
        }
    }
    js.get_key_value(bucket)
        .await
        .map_err(|err| StateError::Unavailable {
            backend: BACKEND,
            reason: format!("cannot open the bucket {bucket}: {err}"),
        })
}

/// `store` seen through the key prefix `<agent>.`: its keys, listing and
/// watches cover that agent's keys only, and the keys it reports are the
/// agent's own (without the prefix). `Store`'s prefixes are public for this.
/// Whether JetStream answered that the stream (here: a bucket's) does not exist.
fn is_stream_not_found(err: &jetstream::context::GetStreamError) -> bool {
    matches!(
        err.kind(),
        jetstream::context::GetStreamErrorKind::JetStream(js)
            if js.error_code() == jetstream::ErrorCode::STREAM_NOT_FOUND
    )
}

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

fn presence_key(agent: &Name, instance: &Name) -> String {
    format!("{agent}.{instance}")
}

fn parse_presence_key(key: &str) -> Option<EntryId> {
    let (agent, instance) = key.split_once('.')?;
    Some(EntryId {
        agent: agent.to_owned(),
        instance: instance.to_owned(),
    })
}

fn decode_presence(key: &str, value: &[u8]) -> Option<AgentPresence> {
    match serde_json::from_slice(value) {
        Ok(presence) => Some(presence),
        Err(err) => {
            tracing::warn!(key, %err, "presence entry is not an AgentPresence; ignored");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn presence_keys_round_trip() {
        let agent = Name::parse("agent name", "llm_agent").unwrap();
        let instance = Name::parse("instance id", "0a1b").unwrap();
        let key = presence_key(&agent, &instance);
        assert_eq!(key, "llm_agent.0a1b");
        assert_eq!(
            parse_presence_key(&key),
            Some(EntryId {
                agent: "llm_agent".into(),
                instance: "0a1b".into()
            })
        );
        assert_eq!(parse_presence_key("nodot"), None);
    }
}
