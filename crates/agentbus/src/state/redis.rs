//! The Redis backend, for deployments that keep state and presence in Redis.
//!
//! | key or channel | holds |
//! | --- | --- |
//! | `agentbus:state:<agent>:<key>` | a state value (JSON), with `PX` when it has a TTL |
//! | `agentbus:state-changes:<agent>` | channel: each set and delete, as a JSON [`StateChange`] |
//! | `agentbus:presence:<key parts joined by :>` | a short-lived entry (a presence entry), `PX` = its TTL |
//! | `agentbus:presence-left:<key parts joined by :>` | a mark left for a while by a removal, so watchers tell it from an expiry |
//!
//! Every part of a key is a validated name or state key, so no key contains
//! `:` or a glob character of its own, and `SCAN MATCH` patterns built from
//! them match exactly what they mean to.
//!
//! The URL may hold a password: it is never printed (see
//! [`crate::redact::redact_url`]), and it is masked in every error message
//! that could echo it.

use super::{BackendError, EntryChange, EntryKey, StateChange, StateError};
use crate::name::Name;
use crate::redact::redact_url;
use ::redis::aio::{ConnectionManager, ConnectionManagerConfig};
use ::redis::{AsyncConnectionConfig, Client, RedisError};
use futures::StreamExt;
use futures::stream::BoxStream;
use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

pub(super) const BACKEND: &str = "redis";

const STATE_PREFIX: &str = "agentbus:state:";
const CHANGES_PREFIX: &str = "agentbus:state-changes:";
const ENTRY_PREFIX: &str = "agentbus:presence:";
const REMOVED_PREFIX: &str = "agentbus:presence-left:";
/// How long to wait for a connection, and for an answer.
const TIMEOUT: Duration = Duration::from_secs(5);

/// A connection to Redis and what is needed to open more (for subscriptions).
#[derive(Clone)]
pub(super) struct RedisStore {
    inner: Arc<Inner>,
    connection: ConnectionManager,
}

struct Inner {
    client: Client,
    /// The URL with its password masked.
    display_url: String,
    /// The password, to mask it in error messages.
    password: Option<String>,
    /// The database number, for keyspace notification channels.
    db: i64,
}

/// One agent's keys.
#[derive(Clone)]
pub(super) struct AgentRedis {
    store: RedisStore,
    agent: Name,
}

// `Client` prints its password in its Debug form: these print the masked URL only.
impl fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisStore")
            .field("url", &self.inner.display_url)
            .finish_non_exhaustive()
    }
}

impl fmt::Debug for AgentRedis {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AgentRedis")
            .field("url", &self.store.inner.display_url)
            .field("agent", &self.agent)
            .finish()
    }
}

impl RedisStore {
    /// Connects and checks the connection (a wrong password fails here).
    pub(super) async fn open(url: &str) -> Result<Self, StateError> {
        let display_url = redact_url(url);
        let client = Client::open(url).map_err(|err| StateError::InvalidUrl {
            url: display_url.clone(),
            reason: mask(&err.to_string(), password_in(url).as_deref()),
        })?;
        let settings = client.get_connection_info().redis_settings();
        let inner = Inner {
            password: settings.password().map(str::to_owned),
            db: settings.db(),
            display_url,
            client,
        };
        let unavailable = |err: RedisError| StateError::Unavailable {
            backend: BACKEND,
            source: BackendError::Masked(format!(
                "cannot connect to {}: {}; check the URL, its password and that Redis runs",
                inner.display_url,
                inner.mask(&err)
            )),
        };
        // One plain connection first: its error says what is wrong at once,
        // where the connection manager would retry with backoff.
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(TIMEOUT))
            .set_response_timeout(Some(TIMEOUT));
        let mut probe = inner
            .client
            .get_multiplexed_async_connection_with_config(&config)
            .await
            .map_err(unavailable)?;
        ::redis::cmd("PING")
            .query_async::<String>(&mut probe)
            .await
            .map_err(unavailable)?;
        let manager_config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(TIMEOUT))
            .set_response_timeout(Some(TIMEOUT));
        let connection = inner
            .client
            .get_connection_manager_with_config(manager_config)
            .await
            .map_err(unavailable)?;
        Ok(Self {
            inner: Arc::new(inner),
            connection,
        })
    }

    pub(super) fn agent(&self, agent: &Name) -> AgentRedis {
        AgentRedis {
            store: self.clone(),
            agent: agent.clone(),
        }
    }

    fn error(&self, operation: &'static str) -> impl Fn(RedisError) -> StateError + '_ {
        move |err| StateError::Backend {
            backend: BACKEND,
            operation,
            source: BackendError::Masked(self.inner.mask(&err)),
        }
    }

    pub(super) async fn put_entry(
        &self,
        key: &EntryKey,
        value: Vec<u8>,
        ttl: Duration,
    ) -> Result<(), StateError> {
        ::redis::cmd("SET")
            .arg(entry_key(key))
            .arg(value)
            .arg("PX")
            .arg(millis(ttl))
            .query_async::<()>(&mut self.connection.clone())
            .await
            .map_err(self.error("store an entry"))
    }

    /// Leaves a removal mark for `remembered`, then deletes the entry, in one
    /// transaction: a watcher that finds the entry gone also finds the mark.
    pub(super) async fn remove_entry(
        &self,
        key: &EntryKey,
        remembered: Duration,
    ) -> Result<(), StateError> {
        ::redis::pipe()
            .atomic()
            .cmd("SET")
            .arg(removed_key(key))
            .arg(1)
            .arg("PX")
            .arg(millis(remembered))
            .ignore()
            .cmd("DEL")
            .arg(entry_key(key))
            .ignore()
            .query_async::<()>(&mut self.connection.clone())
            .await
            .map_err(self.error("remove an entry"))
    }

    /// Current entries by key. Keys that expire between SCAN and MGET come
    /// back as nil and are left out.
    pub(super) async fn list_entries(&self) -> Result<Vec<(EntryKey, Vec<u8>)>, StateError> {
        Ok(self.entries().await?.into_iter().collect())
    }

    async fn entries(&self) -> Result<BTreeMap<EntryKey, Vec<u8>>, StateError> {
        let keys = self
            .scan(&format!("{ENTRY_PREFIX}*"))
            .await
            .map_err(self.error("list entries"))?;
        if keys.is_empty() {
            return Ok(BTreeMap::new());
        }
        let values: Vec<Option<Vec<u8>>> = ::redis::cmd("MGET")
            .arg(&keys)
            .query_async(&mut self.connection.clone())
            .await
            .map_err(self.error("read entries"))?;
        Ok(keys
            .iter()
            .zip(values)
            .filter_map(|(key, value)| Some((parse_entry_key(key)?, value?)))
            .collect())
    }

    /// Lists the entries every `poll` and reports what appeared, changed and went.
    pub(super) fn entry_changes(&self, poll: Duration) -> BoxStream<'static, EntryChange> {
        struct Poller {
            store: RedisStore,
            known: BTreeMap<EntryKey, Vec<u8>>,
            pending: std::collections::VecDeque<EntryChange>,
            first: bool,
            poll: Duration,
        }
        let poller = Poller {
            store: self.clone(),
            known: BTreeMap::new(),
            pending: Default::default(),
            first: true,
            poll,
        };
        futures::stream::unfold(poller, |mut p| async move {
            loop {
                if let Some(change) = p.pending.pop_front() {
                    return Some((change, p));
                }
                if !p.first {
                    tokio::time::sleep(p.poll).await;
                }
                p.first = false;
                let current = match p.store.entries().await {
                    Ok(current) => current,
                    Err(err) => {
                        tracing::warn!(%err, "cannot poll entries");
                        continue;
                    }
                };
                for key in p.known.keys().filter(|key| !current.contains_key(*key)) {
                    let removed = p.store.was_removed(key).await.unwrap_or(false);
                    p.pending.push_back(if removed {
                        EntryChange::Removed(key.clone())
                    } else {
                        EntryChange::Expired(key.clone())
                    });
                }
                for (key, value) in &current {
                    if p.known.get(key) != Some(value) {
                        p.pending
                            .push_back(EntryChange::Put(key.clone(), value.clone()));
                    }
                }
                p.known = current;
            }
        })
        .boxed()
    }

    async fn was_removed(&self, key: &EntryKey) -> Result<bool, RedisError> {
        ::redis::cmd("EXISTS")
            .arg(removed_key(key))
            .query_async::<bool>(&mut self.connection.clone())
            .await
    }

    /// Every key matching `pattern` (SCAN may repeat keys: callers dedupe or map).
    async fn scan(&self, pattern: &str) -> Result<Vec<String>, RedisError> {
        let mut connection = self.connection.clone();
        let mut cursor: u64 = 0;
        let mut keys = Vec::new();
        loop {
            let (next, batch): (u64, Vec<String>) = ::redis::cmd("SCAN")
                .arg(cursor)
                .arg("MATCH")
                .arg(pattern)
                .arg("COUNT")
                .arg(500)
                .query_async(&mut connection)
                .await?;
            keys.extend(batch);
            if next == 0 {
                break;
            }
            cursor = next;
        }
        keys.sort();
        keys.dedup();
        Ok(keys)
    }
}

impl Inner {
    fn mask(&self, err: &RedisError) -> String {
        mask(&err.to_string(), self.password.as_deref())
    }
}

impl AgentRedis {
    fn key(&self, key: &str) -> String {
        format!("{STATE_PREFIX}{}:{key}", self.agent)
    }

    fn prefix(&self) -> String {
        format!("{STATE_PREFIX}{}:", self.agent)
    }

    fn changes_channel(&self) -> String {
        format!("{CHANGES_PREFIX}{}", self.agent)
    }

    pub(super) async fn get(&self, key: &str) -> Result<Option<Vec<u8>>, StateError> {
        ::redis::cmd("GET")
            .arg(self.key(key))
            .query_async(&mut self.store.connection.clone())
            .await
            .map_err(self.store.error("read a key"))
    }

    /// SET and the change notice in one transaction, so a watcher never
    /// misses a change that was made.
    pub(super) async fn set(
        &self,
        key: &str,
        value: Vec<u8>,
        ttl: Option<Duration>,
    ) -> Result<(), StateError> {
        let notice = change_notice(key, Some(&value));
        let mut pipe = ::redis::pipe();
        pipe.atomic().cmd("SET").arg(self.key(key)).arg(value);
        if let Some(ttl) = ttl {
            pipe.arg("PX").arg(millis(ttl));
        }
        pipe.ignore()
            .cmd("PUBLISH")
            .arg(self.changes_channel())
            .arg(notice)
            .ignore()
            .query_async::<()>(&mut self.store.connection.clone())
            .await
            .map_err(self.store.error("set a key"))
    }

    pub(super) async fn delete(&self, key: &str) -> Result<(), StateError> {
        ::redis::pipe()
            .atomic()
            .cmd("DEL")
            .arg(self.key(key))
            .ignore()
            .cmd("PUBLISH")
            .arg(self.changes_channel())
            .arg(change_notice(key, None))
            .ignore()
            .query_async::<()>(&mut self.store.connection.clone())
            .await
            .map_err(self.store.error("delete a key"))
    }

    pub(super) async fn list(&self) -> Result<Vec<String>, StateError> {
        let prefix = self.prefix();
        let keys = self
            .store
            .scan(&format!("{prefix}*"))
            .await
            .map_err(self.store.error("list keys"))?;
        Ok(keys
            .iter()
            .filter_map(|k| k.strip_prefix(&prefix).map(str::to_owned))
            .collect())
    }

    /// Subscribes to this agent's change channel and to expired-key events
    /// (which arrive only if the server has `notify-keyspace-events` with `Ex`).
    pub(super) async fn watch(&self) -> Result<BoxStream<'static, StateChange>, StateError> {
        let inner = &self.store.inner;
        let failed = |err: RedisError| StateError::Backend {
            backend: BACKEND,
            operation: "watch keys",
            source: BackendError::Masked(inner.mask(&err)),
        };
        let mut pubsub = inner.client.get_async_pubsub().await.map_err(failed)?;
        let changes = self.changes_channel();
        let expired = format!("__keyevent@{}__:expired", inner.db);
        pubsub.subscribe(&changes).await.map_err(failed)?;
        pubsub.subscribe(&expired).await.map_err(failed)?;
        let prefix = self.prefix();
        Ok(pubsub
            .into_on_message()
            .filter_map(move |message| {
                let change = if message.get_channel_name() == changes {
                    serde_json::from_slice::<StateChange>(message.get_payload_bytes()).ok()
                } else {
                    std::str::from_utf8(message.get_payload_bytes())
                        .ok()
                        .and_then(|key| key.strip_prefix(&prefix))
                        .map(|key| StateChange {
                            key: key.to_owned(),
                            value: None,
                        })
                };
                futures::future::ready(change)
            })
            .boxed())
    }
}

/// `{"key": .., "value": ..}` around the stored bytes, which are JSON already.
fn change_notice(key: &str, value: Option<&[u8]>) -> Vec<u8> {
    let mut notice = br#"{"key":"#.to_vec();
    notice.extend(serde_json::to_vec(key).expect("a string serializes"));
    notice.extend_from_slice(br#","value":"#);
    notice.extend_from_slice(value.unwrap_or(b"null"));
    notice.push(b'}');
    notice
}

fn entry_key(key: &EntryKey) -> String {
    format!("{ENTRY_PREFIX}{}", key.join(":"))
}

fn removed_key(key: &EntryKey) -> String {
    format!("{REMOVED_PREFIX}{}", key.join(":"))
}

fn parse_entry_key(key: &str) -> Option<EntryKey> {
    EntryKey::split(key.strip_prefix(ENTRY_PREFIX)?, ':')
}

/// A TTL in milliseconds, at least 1 (Redis refuses `PX 0`).
fn millis(ttl: Duration) -> u64 {
    u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1)
}

/// The password as written in the URL's user-info, for masking before the
/// client has parsed it.
fn password_in(url: &str) -> Option<String> {
    let (_, userinfo) = crate::redact::split_userinfo(url);
    userinfo.and_then(|u| u.split_once(':').map(|(_, p)| p.to_owned()))
}

/// `text` with every occurrence of `password` replaced by `***`.
fn mask(text: &str, password: Option<&str>) -> String {
    match password {
        Some(p) if !p.is_empty() => text.replace(p, "***"),
        _ => text.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_namespaced() {
        let key = EntryKey::new(vec![
            Name::parse("agent name", "llm_agent").unwrap(),
            Name::parse("instance id", "abc").unwrap(),
        ]);
        assert_eq!(entry_key(&key), "agentbus:presence:llm_agent:abc");
        assert_eq!(removed_key(&key), "agentbus:presence-left:llm_agent:abc");
        assert_eq!(
            parse_entry_key("agentbus:presence:llm_agent:abc"),
            Some(key)
        );
        assert_eq!(parse_entry_key("agentbus:presence-left:a:b"), None);
    }

    #[test]
    fn passwords_are_masked() {
        assert_eq!(
            password_in("redis://:s3cret@h:1/0").as_deref(),
            Some("s3cret")
        );
        let url = format!("redis://u:{}@h:1", "p");
        assert_eq!(password_in(&url).as_deref(), Some("p"));
        assert_eq!(password_in("redis://h:1"), None);
        assert_eq!(mask("bad s3cret here", Some("s3cret")), "bad *** here");
        assert_eq!(mask("nothing", Some("")), "nothing");
    }

    #[test]
    fn change_notices_decode_as_state_changes() {
        let set: StateChange =
            serde_json::from_slice(&change_notice("k", Some(br#"{"a":[1]}"#))).unwrap();
        assert_eq!(set.key, "k");
        assert_eq!(set.value, Some(serde_json::json!({"a": [1]})));
        let deleted: StateChange = serde_json::from_slice(&change_notice("k", None)).unwrap();
        assert_eq!(deleted.value, None);
    }

    #[test]
    fn millis_are_at_least_one() {
        assert_eq!(millis(Duration::from_micros(10)), 1);
        assert_eq!(millis(Duration::from_millis(1500)), 1500);
    }
}
