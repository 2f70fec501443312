//! The Redis backend, as the requirements' "Hybrid Bridge" used it.
//!
//! | key or channel | holds |
//! | --- | --- |
//! | `agentbus:state:<agent>:<key>` | a state value (JSON), with `PX` when it has a TTL |
//! | `agentbus:state-changes:<agent>` | channel: each set and delete, as a JSON [`StateChange`] |
//! | `agentbus:presence:<agent>:<instance>` | a presence entry (JSON), `PX` = the offline threshold |
//! | `agentbus:presence-left:<agent>:<instance>` | a short-lived goodbye mark left by a graceful shutdown |
//!
//! Every part of a key is a validated name or state key, so no key contains
//! `:` or a glob character of its own, and `SCAN MATCH` patterns built from
//! them match exactly what they mean to.
//!
//! The URL may hold a password: it is never printed (see
//! [`crate::redact::redact_url`]), and it is masked in every error message
//! that could echo it.

use super::{StateChange, StateError};
use crate::name::Name;
use crate::presence::{AgentPresence, EntryId, PresenceChange};
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
const PRESENCE_PREFIX: &str = "agentbus:presence:";
const GOODBYE_PREFIX: &str = "agentbus:presence-left:";
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
            reason: format!(
                "cannot connect to {}: {}; check the URL, its password and that Redis runs",
                inner.display_url,
                inner.mask(&err)
            ),
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
            reason: self.inner.mask(&err),
        }
    }

    pub(super) async fn put_presence(
        &self,
        agent: &Name,
        instance: &Name,
        value: Vec<u8>,
        ttl: Duration,
    ) -> Result<(), StateError> {
        ::redis::cmd("SET")
            .arg(presence_key(agent, instance))
            .arg(value)
            .arg("PX")
            .arg(millis(ttl))
            .query_async::<()>(&mut self.connection.clone())
            .await
            .map_err(self.error("store a heartbeat"))
    }

    /// Leaves a goodbye mark, then deletes the entry, in one transaction: a
    /// watcher that finds the entry gone also finds the mark.
    pub(super) async fn remove_presence(
        &self,
        agent: &Name,
        instance: &Name,
        goodbye_ttl: Duration,
    ) -> Result<(), StateError> {
        ::redis::pipe()
            .atomic()
            .cmd("SET")
            .arg(goodbye_key(agent, instance))
            .arg(1)
            .arg("PX")
            .arg(millis(goodbye_ttl))
            .ignore()
            .cmd("DEL")
            .arg(presence_key(agent, instance))
            .ignore()
            .query_async::<()>(&mut self.connection.clone())
            .await
            .map_err(self.error("remove a presence entry"))
    }

    pub(super) async fn list_presence(&self) -> Result<Vec<AgentPresence>, StateError> {
        Ok(self.presence_entries().await?.into_values().collect())
    }

    /// Current entries by id. Keys that expire between SCAN and MGET come
    /// back as nil and are left out.
    async fn presence_entries(&self) -> Result<BTreeMap<EntryId, AgentPresence>, StateError> {
        let keys = self
            .scan(&format!("{PRESENCE_PREFIX}*"))
            .await
            .map_err(self.error("list presence entries"))?;
        if keys.is_empty() {
            return Ok(BTreeMap::new());
        }
        let values: Vec<Option<Vec<u8>>> = ::redis::cmd("MGET")
            .arg(&keys)
            .query_async(&mut self.connection.clone())
            .await
            .map_err(self.error("read presence entries"))?;
        let mut entries = BTreeMap::new();
        for (key, value) in keys.iter().zip(values) {
            let (Some(id), Some(value)) = (parse_presence_key(key), value) else {
                continue;
            };
            match serde_json::from_slice(&value) {
                Ok(presence) => {
                    entries.insert(id, presence);
                }
                Err(err) => {
                    tracing::warn!(key, %err, "presence entry is not an AgentPresence; ignored")
                }
            }
        }
        Ok(entries)
    }

    /// Lists the entries every `poll` and reports what appeared and what went.
    pub(super) fn presence_changes(&self, poll: Duration) -> BoxStream<'static, PresenceChange> {
        struct Poller {
            store: RedisStore,
            known: BTreeMap<EntryId, AgentPresence>,
            pending: std::collections::VecDeque<PresenceChange>,
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
                let current = match p.store.presence_entries().await {
                    Ok(current) => current,
                    Err(err) => {
                        tracing::warn!(%err, "cannot poll presence entries");
                        continue;
                    }
                };
                for id in p.known.keys().filter(|id| !current.contains_key(*id)) {
                    let goodbye = p.store.has_goodbye(id).await.unwrap_or(false);
                    p.pending.push_back(if goodbye {
                        PresenceChange::Left(id.clone())
                    } else {
                        PresenceChange::Expired(id.clone())
                    });
                }
                for (id, presence) in &current {
                    if p.known.get(id) != Some(presence) {
                        p.pending.push_back(PresenceChange::Seen(presence.clone()));
                    }
                }
                p.known = current;
            }
        })
        .boxed()
    }

    async fn has_goodbye(&self, id: &EntryId) -> Result<bool, RedisError> {
        ::redis::cmd("EXISTS")
            .arg(format!("{GOODBYE_PREFIX}{}:{}", id.agent, id.instance))
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
            reason: inner.mask(&err),
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

fn presence_key(agent: &Name, instance: &Name) -> String {
    format!("{PRESENCE_PREFIX}{agent}:{instance}")
}

fn goodbye_key(agent: &Name, instance: &Name) -> String {
    format!("{GOODBYE_PREFIX}{agent}:{instance}")
}

fn parse_presence_key(key: &str) -> Option<EntryId> {
    let (agent, instance) = key.strip_prefix(PRESENCE_PREFIX)?.split_once(':')?;
    Some(EntryId {
        agent: agent.to_owned(),
        instance: instance.to_owned(),
    })
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
        let agent = Name::parse("agent name", "llm_agent").unwrap();
        let instance = Name::parse("instance id", "abc").unwrap();
        assert_eq!(
            presence_key(&agent, &instance),
            "agentbus:presence:llm_agent:abc"
        );
        assert_eq!(
            goodbye_key(&agent, &instance),
            "agentbus:presence-left:llm_agent:abc"
        );
        assert_eq!(
            parse_presence_key("agentbus:presence:llm_agent:abc"),
            Some(EntryId {
                agent: "llm_agent".into(),
                instance: "abc".into()
            })
        );
        assert_eq!(parse_presence_key("agentbus:presence-left:a:b"), None);
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
