//! Per-agent state against real servers: every case runs on both backends,
//! NATS KV (a nats-server with the topology) and Redis (a redis-server with
//! a password and expired-key notifications on).

use agentbus::state::{StateChange, StateError, StateStore};
use agentbus::{Bus, Name};
use agentbus_ops::topology::Topology;
#[cfg(feature = "redis")]
use agentbus_testkit::ClosedPort;
use agentbus_testkit::{NatsServer, RedisServer};
use futures::{Stream, StreamExt};
use serde_json::json;
use std::time::{Duration, Instant};

/// The servers behind a store; dropped (killed) with it.
struct Backend {
    store: StateStore,
    _nats: NatsServer,
    _redis: Option<RedisServer>,
}

impl Backend {
    async fn nats_kv() -> Self {
        let nats = NatsServer::start().await;
        let store = StateStore::open(&bus(&nats).await, None).await.unwrap();
        assert_eq!(store.backend_name(), "nats-kv");
        Self {
            store,
            _nats: nats,
            _redis: None,
        }
    }

    #[cfg(feature = "redis")]
    async fn redis() -> Self {
        let nats = NatsServer::start().await;
        let redis = RedisServer::start().await;
        let store = StateStore::open(&bus(&nats).await, Some(&redis.url()))
            .await
            .unwrap();
        assert_eq!(store.backend_name(), "redis");
        Self {
            store,
            _nats: nats,
            _redis: Some(redis),
        }
    }
}

async fn bus(server: &NatsServer) -> Bus {
    Bus::from_client(server.connect().await)
}

fn name(s: &str) -> Name {
    Name::parse("agent name", s).unwrap()
}

/// Runs each case once per backend, as `nats_kv::<case>` and `redis::<case>`.
macro_rules! on_both_backends {
    ($($case:ident),* $(,)?) => {
        mod nats_kv {
            $(
                #[tokio::test]
                async fn $case() {
                    let backend = super::Backend::nats_kv().await;
                    super::$case(&backend.store).await;
                }
            )*
        }
        #[cfg(feature = "redis")]
        mod redis {
            $(
                #[tokio::test]
                async fn $case() {
                    let backend = super::Backend::redis().await;
                    super::$case(&backend.store).await;
                }
            )*
        }
    };
}

on_both_backends!(
    set_get_and_overwrite,
    delete_removes_the_key,
    list_is_sorted,
    agents_cannot_see_each_others_keys,
    a_ttl_expires_the_key,
    watch_sees_sets_deletes_and_expiries,
    invalid_keys_and_ttls_are_refused,
);

async fn set_get_and_overwrite(store: &StateStore) {
    let state = store.agent(&name("llm_agent"));
    assert_eq!(state.get("missing").await.unwrap(), None);
    let value = json!({"prompt": "Hi", "tokens": [1, 2, 3], "nested": {"ok": true}});
    state.set("last", &value, None).await.unwrap();
    assert_eq!(state.get("last").await.unwrap(), Some(value));
    state.set("last", &json!("second"), None).await.unwrap();
    assert_eq!(state.get("last").await.unwrap(), Some(json!("second")));
    state.set("number", &json!(42), None).await.unwrap();
    assert_eq!(state.get("number").await.unwrap(), Some(json!(42)));
}

async fn delete_removes_the_key(store: &StateStore) {
    let state = store.agent(&name("deleter"));
    state.set("k", &json!(1), None).await.unwrap();
    state.set("kept", &json!(2), None).await.unwrap();
    state.delete("k").await.unwrap();
    assert_eq!(state.get("k").await.unwrap(), None);
    assert_eq!(state.list().await.unwrap(), ["kept"]);
    // Deleting again, or a key never set, is not an error.
    state.delete("k").await.unwrap();
    state.delete("never-set").await.unwrap();
    assert_eq!(state.get("kept").await.unwrap(), Some(json!(2)));
}

async fn list_is_sorted(store: &StateStore) {
    let state = store.agent(&name("lister"));
    assert!(state.list().await.unwrap().is_empty());
    for key in ["zeta", "alpha", "Mid", "b-2", "b_1"] {
        state.set(key, &json!(key), None).await.unwrap();
    }
    state.set("alpha", &json!("again"), None).await.unwrap();
    assert_eq!(
        state.list().await.unwrap(),
        ["Mid", "alpha", "b-2", "b_1", "zeta"]
    );
}

async fn agents_cannot_see_each_others_keys(store: &StateStore) {
    // "a" is a prefix of "a-b": neither may reach the other's keys.
    let a = store.agent(&name("a"));
    let ab = store.agent(&name("a-b"));
    a.set("shared_name", &json!("from a"), None).await.unwrap();
    a.set("only_a", &json!(1), None).await.unwrap();
    assert_eq!(ab.get("shared_name").await.unwrap(), None);
    assert!(ab.list().await.unwrap().is_empty());
    ab.set("shared_name", &json!("from a-b"), None)
        .await
        .unwrap();
    ab.delete("only_a").await.unwrap();
    assert_eq!(a.get("shared_name").await.unwrap(), Some(json!("from a")));
    assert_eq!(a.get("only_a").await.unwrap(), Some(json!(1)));
    assert_eq!(a.list().await.unwrap(), ["only_a", "shared_name"]);
    assert_eq!(ab.list().await.unwrap(), ["shared_name"]);
}

/// Waits (bounded) until `key` reads as unset; returns how long it took.
async fn wait_until_gone(state: &agentbus::state::AgentState, key: &str) -> Duration {
    let start = Instant::now();
    while state.get(key).await.unwrap().is_some() {
        assert!(
            start.elapsed() < Duration::from_secs(15),
            "{key} did not expire"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    start.elapsed()
}

async fn a_ttl_expires_the_key(store: &StateStore) {
    let state = store.agent(&name("cache"));
    let set_at = Instant::now();
    state
        .set("short", &json!("soon gone"), Some(Duration::from_secs(1)))
        .await
        .unwrap();
    state.set("long", &json!("stays"), None).await.unwrap();
    assert_eq!(state.get("short").await.unwrap(), Some(json!("soon gone")));
    wait_until_gone(&state, "short").await;
    let lived = set_at.elapsed();
    assert!(
        lived >= Duration::from_millis(900),
        "expired too early: {lived:?}"
    );
    assert_eq!(state.list().await.unwrap(), ["long"]);
    assert_eq!(state.get("long").await.unwrap(), Some(json!("stays")));

    // Setting again without a TTL keeps the value.
    state
        .set("renewed", &json!(1), Some(Duration::from_secs(1)))
        .await
        .unwrap();
    state.set("renewed", &json!(2), None).await.unwrap();
    state
        .set("marker", &json!(0), Some(Duration::from_secs(1)))
        .await
        .unwrap();
    wait_until_gone(&state, "marker").await;
    assert_eq!(state.get("renewed").await.unwrap(), Some(json!(2)));
}

async fn next_change(changes: &mut (impl Stream<Item = StateChange> + Unpin)) -> StateChange {
    tokio::time::timeout(Duration::from_secs(15), changes.next())
        .await
        .expect("a change within 15 s")
        .expect("the watch goes on")
}

fn change(key: &str, value: Option<serde_json::Value>) -> StateChange {
    StateChange {
        key: key.into(),
        value,
    }
}

async fn watch_sees_sets_deletes_and_expiries(store: &StateStore) {
    let watched = store.agent(&name("watched"));
    let other = store.agent(&name("other"));
    watched.set("before", &json!(0), None).await.unwrap();
    let mut changes = watched.watch().await.unwrap();
    other.set("k", &json!("not ours"), None).await.unwrap();
    watched.set("k", &json!(1), None).await.unwrap();
    assert_eq!(
        next_change(&mut changes).await,
        change("k", Some(json!(1))),
        "only changes after the call, only this agent's"
    );
    watched.set("k", &json!({"v": 2}), None).await.unwrap();
    assert_eq!(
        next_change(&mut changes).await,
        change("k", Some(json!({"v": 2})))
    );
    watched.delete("k").await.unwrap();
    assert_eq!(next_change(&mut changes).await, change("k", None));
    // Both backends report expiries here: NATS KV through the bucket's limit
    // markers, Redis through keyspace notifications (on in the testkit).
    watched
        .set("ttl", &json!("t"), Some(Duration::from_secs(1)))
        .await
        .unwrap();
    assert_eq!(
        next_change(&mut changes).await,
        change("ttl", Some(json!("t")))
    );
    let expired = next_change(&mut changes).await;
    assert_eq!(expired, change("ttl", None));
}

async fn invalid_keys_and_ttls_are_refused(store: &StateStore) {
    let state = store.agent(&name("strict"));
    for key in ["*", "a.b", "", " ", "a b", ">", "a:b", "k*", "é"] {
        let invalid =
            |result: Result<(), StateError>| matches!(result, Err(StateError::InvalidKey { .. }));
        assert!(
            invalid(state.set(key, &json!(1), None).await),
            "set {key:?}"
        );
        assert!(invalid(state.get(key).await.map(drop)), "get {key:?}");
        assert!(invalid(state.delete(key).await), "delete {key:?}");
    }
    let err = state.set("a.b", &json!(1), None).await.unwrap_err();
    assert_eq!(
        err.to_string(),
        "invalid state key \"a.b\": dots are not allowed; use 1-128 characters from A-Z, a-z, 0-9, '_' and '-'"
    );
    let err = state
        .set("ok", &json!(1), Some(Duration::ZERO))
        .await
        .unwrap_err();
    assert!(matches!(err, StateError::InvalidTtl { .. }), "{err}");
    assert!(
        state.list().await.unwrap().is_empty(),
        "nothing was written"
    );
}

#[cfg(feature = "redis")]
#[tokio::test]
async fn a_wrong_redis_password_is_a_clear_error_without_the_password() {
    let nats = NatsServer::start().await;
    let redis = RedisServer::start().await;
    let wrong = "wrong-pass-1234567890";
    let err = StateStore::open(&bus(&nats).await, Some(&redis.url_with_password(wrong)))
        .await
        .unwrap_err();
    let message = err.to_string();
    assert!(
        matches!(
            err,
            StateError::Unavailable {
                backend: "redis",
                ..
            }
        ),
        "{err:?}"
    );
    assert!(!message.contains(wrong), "{message}");
    assert!(!message.contains(redis.password()), "{message}");
    assert!(message.contains("redis://:***@127.0.0.1:"), "{message}");
    let lower = message.to_lowercase();
    assert!(
        lower.contains("authentication failed") || message.contains("WRONGPASS"),
        "says what is wrong: {message}"
    );
    assert!(!format!("{err:?}").contains(wrong));

    // A store opened with the right one does not show its password either.
    let store = StateStore::open(&bus(&nats).await, Some(&redis.url()))
        .await
        .unwrap();
    assert!(
        !format!("{store:?}").contains(redis.password()),
        "{store:?}"
    );
    let state = store.agent(&name("a"));
    assert!(!format!("{state:?}").contains(redis.password()));
}

#[cfg(feature = "redis")]
#[tokio::test]
async fn an_unreachable_redis_or_unknown_url_is_a_clear_error() {
    let nats = NatsServer::start().await;
    let bus = bus(&nats).await;
    let closed = ClosedPort::new();
    let port = closed.port();
    let err = StateStore::open(&bus, Some(&format!("redis://:s3cret@127.0.0.1:{port}")))
        .await
        .unwrap_err();
    assert!(matches!(err, StateError::Unavailable { .. }), "{err:?}");
    assert!(!err.to_string().contains("s3cret"), "{err}");
    let err = StateStore::open(&bus, Some("postgres://u:s3cret@h/db"))
        .await
        .unwrap_err();
    assert!(matches!(err, StateError::InvalidUrl { .. }), "{err:?}");
    assert!(!err.to_string().contains("s3cret"), "{err}");
    assert!(err.to_string().contains("redis://"), "{err}");
}

#[tokio::test]
async fn a_server_without_the_buckets_names_agentbus_setup() {
    let server = NatsServer::start_bare().await;
    let err = StateStore::open(&bus(&server).await, Some("nats"))
        .await
        .unwrap_err();
    assert!(matches!(err, StateError::Setup { .. }), "{err:?}");
    assert!(err.to_string().contains("agentbus setup"), "{err}");
}

#[tokio::test]
async fn setup_upgrades_a_bucket_made_without_limit_markers() {
    // A server provisioned by an agentbus that predates per-key TTLs.
    let mut old = Topology::standard();
    for bucket in &mut old.buckets {
        bucket.limit_markers = None;
    }
    let server = NatsServer::start_with_topology(&old).await;
    let err = StateStore::open(&bus(&server).await, None)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("per-message TTL"), "{err}");
    assert!(err.to_string().contains("agentbus setup"), "{err}");

    let actions = Topology::standard()
        .apply(&server.jetstream().await)
        .await
        .unwrap();
    let updated: Vec<&str> = actions
        .iter()
        .filter(|(_, action)| action.to_string() == "updated")
        .map(|(name, _)| name.as_str())
        .collect();
    assert_eq!(updated, ["KV agent-presence", "KV agent-state"]);
    let store = StateStore::open(&bus(&server).await, None).await.unwrap();
    let state = store.agent(&name("a"));
    state
        .set("t", &json!(1), Some(Duration::from_secs(1)))
        .await
        .unwrap();
    wait_until_gone(&state, "t").await;
    // Applying again changes nothing.
    let again = Topology::standard()
        .apply(&server.jetstream().await)
        .await
        .unwrap();
    assert!(
        again
            .iter()
            .all(|(_, action)| action.to_string() == "unchanged"),
        "{again:?}"
    );
}
