//! A KV bucket reached through its subjects alone: a key is read with a
//! direct get of `$KV.<bucket>.<key>` and written with a publish to it.
//!
//! async-nats' `kv::Store` is opened with a description of the bucket's
//! stream (`$JS.API.STREAM.INFO`). Whoever may ask for that description may
//! also ask it to list every subject the stream holds, with a count each:
//! every key of the bucket. An agent identity is not given that request for
//! the buckets whose keys name agents (state, task records), and reads and
//! writes them through [`Bucket`], which needs no description. The errors
//! are async-nats' own KV errors, with the kinds `kv::Store` gives.

use crate::client::Bus;
use crate::state::ttl_seconds;
use crate::stream_read::{self, FindError, last_on_subject};
use async_nats::HeaderMap;
use async_nats::jetstream::kv::{
    CreateError, CreateErrorKind, Entry, EntryError, EntryErrorKind, Operation, PutError,
    PutErrorKind, UpdateError, UpdateErrorKind,
};
use async_nats::jetstream::{self, consumer, stream::Stream};
use bytes::Bytes;
use std::str::FromStr;
use std::time::Duration;

/// The header a KV delete or purge is marked with.
const KV_OPERATION: &str = "KV-Operation";
/// What a purge rolls up: the messages of its own key.
const ROLLUP_SUBJECT: &str = "sub";

/// A KV bucket's keys, read and written without its stream's description.
#[derive(Debug, Clone)]
pub(crate) struct Bucket {
    name: String,
    /// `$KV.<bucket>.`
    prefix: String,
    stream: Stream<()>,
    js: jetstream::Context,
}

impl Bucket {
    /// Bucket `bucket`, once the server says which stream stores its keys
    /// ([`stream_read::find`]).
    pub(crate) async fn open(bus: &Bus, bucket: &str) -> Result<Self, FindError> {
        let keys = format!("$KV.{bucket}.>");
        let stream = stream_read::find(bus, &format!("KV_{bucket}"), &keys).await?;
        Ok(Self::on(bus.jetstream(), bucket, stream))
    }

    /// Bucket `bucket`, known to exist (its stream was described already):
    /// nothing is asked of the server.
    pub(crate) async fn known(
        js: &jetstream::Context,
        bucket: &str,
    ) -> Result<Self, jetstream::context::GetStreamError> {
        let stream = js.get_stream_no_info(format!("KV_{bucket}")).await?;
        Ok(Self::on(js, bucket, stream))
    }

    fn on(js: &jetstream::Context, bucket: &str, stream: Stream<()>) -> Self {
        Self {
            name: bucket.to_owned(),
            prefix: format!("$KV.{bucket}."),
            stream,
            js: js.clone(),
        }
    }

    /// The bucket's stream, for reads by subject.
    pub(crate) fn stream(&self) -> &Stream<()> {
        &self.stream
    }

    /// The subject key `key` is stored on.
    pub(crate) fn subject(&self, key: &str) -> String {
        format!("{}{key}", self.prefix)
    }

    /// A watch of the keys matching `pattern` (`*` and `>` allowed),
    /// delivered as `from` says (`LastPerSubject`: the last message of each
    /// key first, its delete or purge included; `New`: changes only); with
    /// `headers_only`, without the values. Returns how many messages were
    /// waiting when it started, and the watch. Its consumer is named (the
    /// form of creation an agent identity may be granted for its own keys)
    /// and goes away once the watch is dropped.
    pub(crate) async fn watch(
        &self,
        pattern: &str,
        from: consumer::DeliverPolicy,
        headers_only: bool,
    ) -> Result<(u64, consumer::push::Ordered), async_nats::Error> {
        let consumer = self
            .stream
            .create_consumer(consumer::push::OrderedConfig {
                name: Some(format!("watch-{}", uuid::Uuid::new_v4().simple())),
                deliver_subject: self.js.client().new_inbox(),
                filter_subject: self.subject(pattern),
                deliver_policy: from,
                headers_only,
                ..Default::default()
            })
            .await?;
        let pending = consumer.cached_info().num_pending;
        Ok((pending, consumer.messages().await?))
    }

    /// The key a message of this bucket is stored under.
    pub(crate) fn key_of<'a>(&self, subject: &'a str) -> Option<&'a str> {
        subject.strip_prefix(self.prefix.as_str())
    }

    /// The last entry of `key`, a delete or purge included; `None` when it
    /// never held one (or its history was purged away).
    pub(crate) async fn entry(&self, key: &str) -> Result<Option<Entry>, EntryError> {
        if !is_valid_key(key) {
            return Err(EntryError::new(EntryErrorKind::InvalidKey));
        }
        let message = last_on_subject(&self.stream, &self.subject(key))
            .await
            .map_err(|err| EntryError::with_source(EntryErrorKind::Other, err))?;
        let Some(message) = message else {
            return Ok(None);
        };
        let operation = operation_of(&message.headers)?;
        Ok(Some(Entry {
            bucket: self.name.clone(),
            key: key.to_owned(),
            value: message.payload,
            revision: message.sequence,
            delta: 0,
            created: message.time,
            operation,
            seen_current: false,
        }))
    }

    /// The value of `key`; `None` when it holds none (never written,
    /// deleted or purged).
    pub(crate) async fn get(&self, key: &str) -> Result<Option<Bytes>, EntryError> {
        Ok(self
            .entry(key)
            .await?
            .filter(|entry| entry.operation == Operation::Put)
            .map(|entry| entry.value))
    }

    /// Stores `value` under `key`; its revision.
    pub(crate) async fn put(&self, key: &str, value: Bytes) -> Result<u64, PutError> {
        self.put_with_ttl(key, value, None).await
    }

    /// Stores `value` under `key`, to expire after `ttl` when one is given
    /// (rounded up to whole seconds; the bucket must allow per-message
    /// TTLs); its revision.
    pub(crate) async fn put_with_ttl(
        &self,
        key: &str,
        value: Bytes,
        ttl: Option<Duration>,
    ) -> Result<u64, PutError> {
        if !is_valid_key(key) {
            return Err(PutError::new(PutErrorKind::InvalidKey));
        }
        let mut headers = HeaderMap::new();
        if let Some(ttl) = ttl {
            headers.insert(
                async_nats::header::NATS_MESSAGE_TTL,
                ttl_seconds(ttl).to_string().as_str(),
            );
        }
        let ack = self
            .js
            .publish_with_headers(self.subject(key), headers, value)
            .await
            .map_err(|err| PutError::with_source(PutErrorKind::Publish, err))?;
        let ack = ack
            .await
            .map_err(|err| PutError::with_source(PutErrorKind::Ack, err))?;
        Ok(ack.sequence)
    }

    /// Stores `value` under `key` if its last revision is `revision` (`0`:
    /// if it never held one); the new revision.
    pub(crate) async fn update(
        &self,
        key: &str,
        value: Bytes,
        revision: u64,
    ) -> Result<u64, UpdateError> {
        self.publish_expecting(key, HeaderMap::new(), value, Some(revision))
            .await
    }

    /// Stores `value` under `key` if it holds no value (never written,
    /// deleted or purged); `AlreadyExists` when it holds one.
    pub(crate) async fn create(&self, key: &str, value: Bytes) -> Result<u64, CreateError> {
        let first_try = match self.update(key, value.clone(), 0).await {
            Ok(revision) => return Ok(revision),
            Err(err) => err,
        };
        match self.entry(key).await? {
            Some(Entry {
                operation: Operation::Delete | Operation::Purge,
                revision,
                ..
            }) => Ok(self.update(key, value, revision).await?),
            Some(_) => Err(CreateError::new(CreateErrorKind::AlreadyExists)),
            None => Err(first_try.into()),
        }
    }

    /// Removes `key`'s value (a delete marker, which watchers tell from an
    /// expiry).
    pub(crate) async fn delete(&self, key: &str) -> Result<(), UpdateError> {
        let mut headers = HeaderMap::new();
        headers.insert(KV_OPERATION, "DEL");
        self.publish_expecting(key, headers, Bytes::new(), None)
            .await
            .map(drop)
    }

    /// Purges `key`'s history if its last revision is `revision`.
    pub(crate) async fn purge_expect_revision(
        &self,
        key: &str,
        revision: u64,
    ) -> Result<(), UpdateError> {
        let mut headers = HeaderMap::new();
        headers.insert(KV_OPERATION, "PURGE");
        headers.insert(async_nats::header::NATS_ROLLUP, ROLLUP_SUBJECT);
        self.publish_expecting(key, headers, Bytes::new(), Some(revision))
            .await
            .map(drop)
    }

    /// Publishes to `key`'s subject with `headers`, expecting its last
    /// revision to be `revision` when one is given.
    async fn publish_expecting(
        &self,
        key: &str,
        mut headers: HeaderMap,
        value: Bytes,
        revision: Option<u64>,
    ) -> Result<u64, UpdateError> {
        if !is_valid_key(key) {
            return Err(UpdateError::new(UpdateErrorKind::InvalidKey));
        }
        if let Some(revision) = revision {
            headers.insert(
                async_nats::header::NATS_EXPECTED_LAST_SUBJECT_SEQUENCE,
                revision.to_string().as_str(),
            );
        }
        let ack = self
            .js
            .publish_with_headers(self.subject(key), headers, value)
            .await?
            .await?;
        Ok(ack.sequence)
    }
}

/// Whether a message of a bucket stores a value under its key (a put),
/// rather than removing it.
pub(crate) fn is_put(headers: Option<&HeaderMap>) -> bool {
    headers.is_none_or(|headers| matches!(operation_of(headers), Ok(Operation::Put)))
}

/// What a stored message did to its key: a put unless marked a delete or a
/// purge, by the KV header or by the server's marker of an expired key.
pub(crate) fn operation_of(headers: &HeaderMap) -> Result<Operation, EntryError> {
    if let Some(operation) = headers.get(KV_OPERATION) {
        return Operation::from_str(operation.as_str())
            .map_err(|err| EntryError::with_source(EntryErrorKind::Other, err));
    }
    match headers
        .get(async_nats::header::NATS_MARKER_REASON)
        .map(|reason| reason.as_str())
    {
        None => Ok(Operation::Put),
        Some("MaxAge" | "Purge") => Ok(Operation::Purge),
        Some("Remove") => Ok(Operation::Delete),
        Some(other) => Err(EntryError::with_source(
            EntryErrorKind::Other,
            format!("unknown marker reason {other:?}"),
        )),
    }
}

/// Whether `key` is a valid KV key, as `kv::Store` checks it: dot-separated
/// tokens of letters, digits and `-/_=`.
fn is_valid_key(key: &str) -> bool {
    !key.is_empty()
        && !key.starts_with('.')
        && !key.ends_with('.')
        && !key.contains("..")
        && key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-/_=.".contains(&b))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_checked_as_the_kv_api_does() {
        for valid in [
            "a",
            "agent.bob.carol.0a1b",
            "x.y/answer",
            "k=effect",
            "a-b_c",
        ] {
            assert!(is_valid_key(valid), "{valid}");
        }
        for invalid in ["", ".a", "a.", "a..b", "a b", "a*", "a.>", "é"] {
            assert!(!is_valid_key(invalid), "{invalid}");
        }
    }

    #[test]
    fn operations_are_read_from_the_kv_header_or_the_marker() {
        let with = |name: &str, value: &str| {
            let mut headers = HeaderMap::new();
            headers.insert(name, value);
            headers
        };
        assert_eq!(operation_of(&HeaderMap::new()).unwrap(), Operation::Put);
        assert_eq!(
            operation_of(&with(KV_OPERATION, "DEL")).unwrap(),
            Operation::Delete
        );
        assert_eq!(
            operation_of(&with(KV_OPERATION, "PURGE")).unwrap(),
            Operation::Purge
        );
        let marker = async_nats::header::NATS_MARKER_REASON.as_ref();
        assert_eq!(
            operation_of(&with(marker, "MaxAge")).unwrap(),
            Operation::Purge
        );
        assert_eq!(
            operation_of(&with(marker, "Remove")).unwrap(),
            Operation::Delete
        );
        assert!(operation_of(&with(KV_OPERATION, "NOPE")).is_err());
        assert!(is_put(None));
        assert!(is_put(Some(&with(KV_OPERATION, "PUT"))));
        assert!(!is_put(Some(&with(KV_OPERATION, "DEL"))));
        assert!(!is_put(Some(&with(marker, "MaxAge"))));
        assert!(!is_put(Some(&with(KV_OPERATION, "NOPE"))));
    }
}
