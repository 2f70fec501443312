//! Per-agent key/value state with an optional TTL, on NATS KV or on Redis.
//!
//! One interface, two backends. NATS KV is the default and needs no other
//! server; Redis is there for teams that already keep state, cache and
//! presence in Redis (behind the `redis` feature). The backend also stores
//! short-lived entries with a TTL, where [presence](crate::presence) keeps its
//! heartbeats, so a deployment that chooses Redis keeps both there.
//!
//! ```no_run
//! # async fn example(bus: agentbus::Bus) -> Result<(), agentbus::state::StateError> {
//! use agentbus::{Name, state::StateStore};
//! use std::time::Duration;
//! let store = StateStore::from_env(&bus).await?; // AGENTBUS_STATE_URL, else NATS KV
//! let state = store.agent(&Name::parse("agent name", "llm_agent").expect("valid"));
//! state.set("last_prompt", &serde_json::json!("Hi"), Some(Duration::from_secs(60))).await?;
//! assert_eq!(state.get("last_prompt").await?, Some(serde_json::json!("Hi")));
//! # Ok(()) }
//! ```
//!
//! Keys follow a strict rule (see [`validate_key`]); values are JSON.
//!
//! | | NATS KV (`nats-kv`) | Redis (`redis`) |
//! | --- | --- | --- |
//! | where | bucket `agent-state`, key `<agent>.<key>` | key `agentbus:state:<agent>:<key>` |
//! | TTL | whole seconds, rounded up (server per-message TTL, nats-server 2.11+) | milliseconds (`SET .. PX`) |
//! | watch: set and delete | yes | yes: agentbus publishes each change on `agentbus:state-changes:<agent>` |
//! | watch: expiry | yes (the bucket's limit markers) | when the server's `notify-keyspace-events` includes `Ex` |
//! | short-lived entries (presence) | bucket `agent-presence`, key `<agent>.<instance>` | key `agentbus:presence:<agent>:<instance>` |
//!
//! On NATS KV a value without a TTL still expires after the bucket's
//! `max_age` (one year in the shipped topology); a TTL longer than that is
//! cut to it. On Redis a value without a TTL stays until deleted. Changes made
//! to Redis keys by other programs, bypassing agentbus, are not reported by
//! `watch`.

mod entries;
mod key;
mod nats_kv;
#[cfg(feature = "redis")]
mod redis;

pub(crate) use entries::{EntryChange, EntryKey};
pub use key::{MAX_KEY_LEN, validate_key};

use crate::client::Bus;
use crate::name::{InvalidName, Name};
use futures::stream::BoxStream;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::sync::Arc;
use std::time::Duration;

/// Variable holding the state backend URL (`nats`, `redis://…`, `rediss://…`).
pub const STATE_URL_ENV: &str = "AGENTBUS_STATE_URL";
/// NATS KV bucket holding agents' state.
pub const STATE_BUCKET: &str = "agent-state";
/// NATS KV bucket holding presence entries.
pub const PRESENCE_BUCKET: &str = "agent-presence";

/// Where state and presence live; cheap to clone.
#[derive(Debug, Clone)]
pub struct StateStore {
    backend: Backend,
}

#[derive(Debug, Clone)]
enum Backend {
    // Shared: a KV store handle is large next to a Redis connection handle.
    NatsKv(Arc<nats_kv::NatsKv>),
    #[cfg(feature = "redis")]
    Redis(redis::RedisStore),
}

/// One agent's view of the state store: keys of other agents are out of reach.
#[derive(Debug, Clone)]
pub struct AgentState {
    backend: AgentBackend,
}

#[derive(Debug, Clone)]
enum AgentBackend {
    NatsKv(Box<nats_kv::AgentKv>),
    #[cfg(feature = "redis")]
    Redis(redis::AgentRedis),
}

/// A change seen by [`AgentState::watch`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StateChange {
    /// The key that changed.
    pub key: String,
    /// The new value; `None` when the key was deleted or expired.
    pub value: Option<Value>,
}

/// Why a state or presence operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StateError {
    /// The key does not follow the rule of [`validate_key`].
    #[error(
        "invalid state key {key:?}: {reason}; use 1-128 characters from A-Z, a-z, 0-9, '_' and '-'"
    )]
    InvalidKey {
        /// The rejected key.
        key: String,
        /// Why it was rejected.
        reason: &'static str,
    },
    /// An agent name or instance id is not a valid name.
    #[error(transparent)]
    InvalidName(#[from] InvalidName),
    /// The state URL is not one agentbus understands.
    #[error("invalid state URL {url}: {reason}")]
    InvalidUrl {
        /// The URL, its password masked.
        url: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The TTL cannot be used.
    #[error("invalid TTL {ttl:?}: {reason}")]
    InvalidTtl {
        /// The TTL given.
        ttl: Duration,
        /// Why it cannot be used.
        reason: &'static str,
    },
    /// The NATS KV bucket is missing or predates what agentbus needs.
    #[error(
        "the NATS KV bucket {bucket} {problem}; run `agentbus setup` (or `agentbus up`) to provision it"
    )]
    Setup {
        /// The bucket.
        bucket: &'static str,
        /// What is wrong with it.
        problem: &'static str,
    },
    /// The backend cannot be reached or refused the connection.
    #[error("the {backend} state backend is unavailable: {source}")]
    Unavailable {
        /// `nats-kv` or `redis`.
        backend: &'static str,
        /// Why, with no password in it.
        #[source]
        source: BackendError,
    },
    /// The value does not fit.
    #[error("the value for {key:?} is {size} bytes, more than the {backend} limit of {max} bytes")]
    TooLarge {
        /// The key.
        key: String,
        /// The value's size as JSON.
        size: usize,
        /// The limit.
        max: usize,
        /// `nats-kv` or `redis`.
        backend: &'static str,
    },
    /// A stored value is not JSON (written by something other than agentbus).
    #[error("the stored value of {key:?} is not JSON ({source}); overwrite or delete it")]
    NotJson {
        /// The key.
        key: String,
        /// The decoding error.
        #[source]
        source: serde_json::Error,
    },
    /// An operation failed on the backend.
    #[error("the {backend} state backend could not {operation}: {source}")]
    Backend {
        /// `nats-kv` or `redis`.
        backend: &'static str,
        /// What was attempted.
        operation: &'static str,
        /// Why it failed, with no password in it.
        #[source]
        source: BackendError,
    },
}

/// What kind of state or presence failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum StateErrorKind {
    /// A key, name, URL, TTL or value is not acceptable.
    InvalidInput,
    /// The NATS KV buckets need `agentbus setup`.
    Setup,
    /// The backend cannot be reached.
    Unavailable,
    /// A stored value is not JSON.
    NotJson,
    /// The backend failed an operation.
    Backend,
}

impl StateError {
    /// What kind of failure this is.
    pub fn kind(&self) -> StateErrorKind {
        match self {
            Self::InvalidKey { .. }
            | Self::InvalidName(_)
            | Self::InvalidUrl { .. }
            | Self::InvalidTtl { .. }
            | Self::TooLarge { .. } => StateErrorKind::InvalidInput,
            Self::Setup { .. } => StateErrorKind::Setup,
            Self::Unavailable { .. } => StateErrorKind::Unavailable,
            Self::NotJson { .. } => StateErrorKind::NotJson,
            Self::Backend { .. } => StateErrorKind::Backend,
        }
    }
}

/// The cause of a backend failure: the backend's own error, or, where that
/// could echo a password (Redis errors quote their URL), its text with the
/// password masked.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BackendError {
    /// An error of the NATS client.
    #[error(transparent)]
    Nats(async_nats::Error),
    /// An error's text, with any password masked.
    #[error("{0}")]
    Masked(String),
}

impl StateStore {
    /// Opens the state store. `url`: `None` or `"nats"` → NATS KV on `bus`
    /// (buckets `agent-state` and `agent-presence`, provisioned by
    /// `agentbus setup`); `"redis://…"` or `"rediss://…"` → Redis.
    pub async fn open(bus: &Bus, url: Option<&str>) -> Result<StateStore, StateError> {
        let backend = match url.map(str::trim) {
            None | Some("" | "nats") => {
                Backend::NatsKv(Arc::new(nats_kv::NatsKv::open(bus).await?))
            }
            #[cfg(feature = "redis")]
            Some(url) if url.starts_with("redis://") || url.starts_with("rediss://") => {
                Backend::Redis(redis::RedisStore::open(url).await?)
            }
            #[cfg(not(feature = "redis"))]
            Some(url) if url.starts_with("redis://") || url.starts_with("rediss://") => {
                return Err(StateError::InvalidUrl {
                    url: crate::redact::redact_url(url),
                    reason:
                        "this build of agentbus has no Redis backend (the `redis` feature is off)"
                            .into(),
                });
            }
            Some(url) => {
                return Err(StateError::InvalidUrl {
                    url: crate::redact::redact_url(url),
                    reason: "use \"nats\" for NATS KV, or a redis:// or rediss:// URL".into(),
                });
            }
        };
        Ok(StateStore { backend })
    }

    /// Like [`StateStore::open`], with the URL from `AGENTBUS_STATE_URL`
    /// (NATS KV when it is unset or empty).
    pub async fn from_env(bus: &Bus) -> Result<StateStore, StateError> {
        let url = std::env::var(STATE_URL_ENV).ok();
        Self::open(bus, url.as_deref()).await
    }

    /// The state of `agent`.
    pub fn agent(&self, agent: &Name) -> AgentState {
        let backend = match &self.backend {
            Backend::NatsKv(kv) => AgentBackend::NatsKv(Box::new(kv.agent(agent))),
            #[cfg(feature = "redis")]
            Backend::Redis(redis) => AgentBackend::Redis(redis.agent(agent)),
        };
        AgentState { backend }
    }

    /// `"nats-kv"` or `"redis"`.
    pub fn backend_name(&self) -> &'static str {
        match &self.backend {
            Backend::NatsKv(_) => nats_kv::BACKEND,
            #[cfg(feature = "redis")]
            Backend::Redis(_) => redis::BACKEND,
        }
    }

    /// Stores `value` under `key` until `ttl` passes without another put.
    pub(crate) async fn put_entry(
        &self,
        key: &EntryKey,
        value: Vec<u8>,
        ttl: Duration,
    ) -> Result<(), StateError> {
        match &self.backend {
            Backend::NatsKv(kv) => kv.put_entry(key, value, ttl).await,
            #[cfg(feature = "redis")]
            Backend::Redis(redis) => redis.put_entry(key, value, ttl).await,
        }
    }

    /// Removes the entry under `key`: watchers see it [removed](EntryChange::Removed),
    /// not expired, for at least `remembered`.
    pub(crate) async fn remove_entry(
        &self,
        key: &EntryKey,
        remembered: Duration,
    ) -> Result<(), StateError> {
        match &self.backend {
            Backend::NatsKv(kv) => {
                let _ = remembered; // a delete marker stays until the next put
                kv.remove_entry(key).await
            }
            #[cfg(feature = "redis")]
            Backend::Redis(redis) => redis.remove_entry(key, remembered).await,
        }
    }

    /// Every entry stored now (unsorted).
    pub(crate) async fn list_entries(&self) -> Result<Vec<(EntryKey, Vec<u8>)>, StateError> {
        match &self.backend {
            Backend::NatsKv(kv) => kv.list_entries().await,
            #[cfg(feature = "redis")]
            Backend::Redis(redis) => redis.list_entries().await,
        }
    }

    /// The entries present now, then every change. Redis has no change feed
    /// for expiring keys that works without server configuration, so there
    /// the entries are listed every `poll` and compared.
    pub(crate) async fn entry_changes(
        &self,
        poll: Duration,
    ) -> Result<BoxStream<'static, EntryChange>, StateError> {
        match &self.backend {
            Backend::NatsKv(kv) => {
                let _ = poll; // NATS KV reports every change as it happens
                kv.entry_changes().await
            }
            #[cfg(feature = "redis")]
            Backend::Redis(redis) => Ok(redis.entry_changes(poll)),
        }
    }

    /// The longest an entry can live without another put, when the backend
    /// imposes one (the presence bucket's `max_age`).
    pub(crate) fn entry_ttl_cap(&self) -> Option<Duration> {
        match &self.backend {
            Backend::NatsKv(kv) => Some(kv.entries_max_age()),
            #[cfg(feature = "redis")]
            Backend::Redis(_) => None,
        }
    }
}

impl AgentState {
    /// The value of `key`, if it is set and has not expired.
    pub async fn get(&self, key: &str) -> Result<Option<Value>, StateError> {
        validate_key(key)?;
        let bytes = match &self.backend {
            AgentBackend::NatsKv(kv) => kv.get(key).await?.map(|b| b.to_vec()),
            #[cfg(feature = "redis")]
            AgentBackend::Redis(redis) => redis.get(key).await?,
        };
        bytes
            .map(|bytes| {
                serde_json::from_slice(&bytes).map_err(|source| StateError::NotJson {
                    key: key.to_owned(),
                    source,
                })
            })
            .transpose()
    }

    /// Sets `key` to `value`; with a `ttl`, the key expires that long after
    /// this call unless set again (see the module documentation for each
    /// backend's precision).
    pub async fn set(
        &self,
        key: &str,
        value: &Value,
        ttl: Option<Duration>,
    ) -> Result<(), StateError> {
        validate_key(key)?;
        if ttl.is_some_and(|ttl| ttl.is_zero()) {
            return Err(StateError::InvalidTtl {
                ttl: Duration::ZERO,
                reason: "a TTL must be positive; pass None to keep the value until it is deleted",
            });
        }
        let bytes = serde_json::to_vec(value).expect("a JSON value serializes");
        match &self.backend {
            AgentBackend::NatsKv(kv) => kv.set(key, bytes, ttl).await,
            #[cfg(feature = "redis")]
            AgentBackend::Redis(redis) => redis.set(key, bytes, ttl).await,
        }
    }

    /// Deletes `key`; deleting a key that is not set is not an error.
    pub async fn delete(&self, key: &str) -> Result<(), StateError> {
        validate_key(key)?;
        match &self.backend {
            AgentBackend::NatsKv(kv) => kv.delete(key).await,
            #[cfg(feature = "redis")]
            AgentBackend::Redis(redis) => redis.delete(key).await,
        }
    }

    /// The keys that are set, sorted.
    pub async fn list(&self) -> Result<Vec<String>, StateError> {
        let mut keys = match &self.backend {
            AgentBackend::NatsKv(kv) => kv.list().await?,
            #[cfg(feature = "redis")]
            AgentBackend::Redis(redis) => redis.list().await?,
        };
        keys.sort();
        keys.dedup();
        Ok(keys)
    }

    /// Changes made after this returns: sets, deletes and expiries (see the
    /// module documentation for what each backend reports). A removal may be
    /// reported more than once; the stream ends only if the backend
    /// connection is closed for good.
    pub async fn watch(
        &self,
    ) -> Result<impl futures::Stream<Item = StateChange> + Send + Unpin + use<>, StateError> {
        let changes: BoxStream<'static, StateChange> = match &self.backend {
            AgentBackend::NatsKv(kv) => kv.watch().await?,
            #[cfg(feature = "redis")]
            AgentBackend::Redis(redis) => redis.watch().await?,
        };
        Ok(changes)
    }
}

/// A TTL in whole seconds, rounded up: NATS per-message TTLs are at least 1 s.
pub(crate) fn ttl_seconds(ttl: Duration) -> u64 {
    ttl.as_secs() + u64::from(ttl.subsec_nanos() > 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ttls_round_up_to_whole_seconds() {
        assert_eq!(ttl_seconds(Duration::from_millis(1)), 1);
        assert_eq!(ttl_seconds(Duration::from_secs(1)), 1);
        assert_eq!(ttl_seconds(Duration::from_millis(1500)), 2);
        assert_eq!(ttl_seconds(Duration::from_secs(30)), 30);
    }
}
