//! The streams, as declarative data, and applying them to a server idempotently.
//!
//! The standard topology ([`Topology::standard`], `topology.toml` beside this
//! crate's manifest) holds the streams of direct messages, broadcasts, work
//! queues and dead letters, and the KV buckets of task results, presence and
//! agent state. [`Topology::apply`] creates what is missing, updates what
//! changed where JetStream allows it, and refuses with a named stream and
//! field where it does not.

mod apply;
mod error;

pub(crate) use apply::is_stream_not_found;
pub use apply::{changes_in_place, recreate_advice, servers_in_cluster};
pub use error::{TopologyError, TopologyErrorKind};

use agentbus::subject::{REQUEST_REPLY_SUBJECTS, SubjectPattern, covers, overlaps};
use serde::{Deserialize, Deserializer};
use std::fmt;
use std::path::Path;
use std::time::Duration;

/// The text of the standard topology file (see [`Topology::standard`]).
pub const STANDARD_TOPOLOGY_TOML: &str = include_str!("../../topology.toml");

/// A set of streams and KV buckets to provision. The default is the empty
/// topology: applying it changes nothing.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Topology {
    /// The streams, in the order they are applied.
    #[serde(rename = "stream")]
    pub streams: Vec<StreamSpec>,
    /// Key/value buckets, applied after the streams.
    #[serde(rename = "bucket", default)]
    pub buckets: Vec<BucketSpec>,
}

/// A NATS KV bucket of a topology (one value per key).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BucketSpec {
    /// Bucket name.
    pub name: String,
    /// What the bucket is for.
    #[serde(default)]
    pub description: Option<String>,
    /// How long a value lives.
    #[serde(deserialize_with = "deserialize_duration")]
    pub max_age: Duration,
    /// Storage backend.
    pub storage: Storage,
    /// Number of replicas.
    #[serde(default)]
    pub replicas: Replicas,
    /// With a value, the bucket accepts per-key TTLs and leaves a marker,
    /// kept this long, when a key expires, so watchers see the expiry
    /// (`limit_markers`, nats-server 2.11+).
    #[serde(default, deserialize_with = "deserialize_optional_duration")]
    pub limit_markers: Option<Duration>,
}

/// One stream of a topology.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StreamSpec {
    /// Stream name.
    pub name: String,
    /// What the stream is for.
    #[serde(default)]
    pub description: Option<String>,
    /// Subjects the stream captures.
    pub subjects: Vec<String>,
    /// Retention policy.
    pub retention: Retention,
    /// Maximum number of messages.
    pub max_msgs: i64,
    /// Maximum number of messages per subject (unset: no such limit).
    #[serde(default)]
    pub max_msgs_per_subject: Option<i64>,
    /// Maximum number of consumers (unset: the server's default, which is
    /// 1,000 from nats-server 2.15 on: `jetstream.limits.default_max_consumers`).
    #[serde(default)]
    pub max_consumers: Option<i32>,
    /// Maximum total size in bytes.
    #[serde(deserialize_with = "deserialize_size")]
    pub max_bytes: i64,
    /// Maximum age of a message.
    #[serde(deserialize_with = "deserialize_duration")]
    pub max_age: Duration,
    /// Storage backend.
    pub storage: Storage,
    /// What happens when the stream is full.
    #[serde(default)]
    pub discard: Discard,
    /// Window in which a repeated `Nats-Msg-Id` is stored once.
    #[serde(
        default = "default_duplicate_window",
        deserialize_with = "deserialize_duration"
    )]
    pub duplicate_window: Duration,
    /// Number of replicas.
    #[serde(default)]
    pub replicas: Replicas,
    /// Whether any server with the stream answers `DIRECT.GET` requests
    /// (reads by subject that a permission on the subject can allow).
    #[serde(default)]
    pub allow_direct: bool,
    /// Publishes what the stream stores on some of its subjects again, on
    /// other subjects, once stored.
    #[serde(default)]
    pub republish: Option<RepublishSpec>,
}

/// What a stream publishes again once stored: the tasks stream rings an
/// agent on its name when a normal-priority task is stored on its queue.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RepublishSpec {
    /// The stored subjects republished (one pattern within the stream's subjects).
    pub src: String,
    /// Where they are published, with `{{wildcard(n)}}` for the n-th
    /// wildcard of `src`.
    pub dest: String,
    /// Whether only the headers are published (the payload's size is in
    /// `Nats-Msg-Size`).
    #[serde(default)]
    pub headers_only: bool,
}

impl RepublishSpec {
    /// The subjects it publishes on, as a pattern: each mapped token a `*`.
    fn dest_pattern(&self) -> String {
        self.dest
            .split('.')
            .map(|token| if token.contains("{{") { "*" } else { token })
            .collect::<Vec<_>>()
            .join(".")
    }
}

fn default_duplicate_window() -> Duration {
    Duration::from_secs(120)
}

/// How many servers keep a copy of a stream or bucket.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Replicas {
    /// As many as the cluster has servers, up to 3: 1 on a single server.
    /// Written `replicas = "auto"`; the default.
    #[default]
    Auto,
    /// Exactly this many (1 to 5; more than the cluster has servers fails).
    Count(usize),
}

impl Replicas {
    /// The most replicas `Auto` asks for: a majority of 3 survives the loss
    /// of one server, and more copies cost every write.
    pub const AUTO_MAX: usize = 3;

    /// The number of replicas on a cluster of `servers` servers.
    pub fn on(self, servers: usize) -> usize {
        match self {
            Self::Auto => servers.clamp(1, Self::AUTO_MAX),
            Self::Count(count) => count,
        }
    }
}

impl<'de> Deserialize<'de> for Replicas {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Count(usize),
            Word(String),
        }
        match Raw::deserialize(deserializer)? {
            Raw::Count(count) => Ok(Self::Count(count)),
            Raw::Word(word) if word == "auto" => Ok(Self::Auto),
            Raw::Word(word) => Err(serde::de::Error::custom(format!(
                "replicas must be a number or \"auto\", not {word:?}"
            ))),
        }
    }
}

/// Retention policy of a stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Retention {
    /// Keep messages until a limit is reached.
    Limits,
    /// Keep messages while some consumer is interested.
    Interest,
    /// Remove a message once it is acknowledged.
    #[serde(alias = "work_queue")]
    Workqueue,
}

/// Storage backend of a stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Storage {
    /// On disk.
    File,
    /// In memory.
    Memory,
}

/// What a full stream does with a new message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Discard {
    /// Delete the oldest message.
    #[default]
    Old,
    /// Refuse the new message with an error.
    New,
}

/// What [`Topology::apply`] did to a stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StreamAction {
    /// The stream did not exist and was created.
    Created,
    /// The stream existed with other settings and was updated in place.
    Updated,
    /// The stream already had these settings.
    Unchanged,
}

impl fmt::Display for StreamAction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Created => "created",
            Self::Updated => "updated",
            Self::Unchanged => "unchanged",
        })
    }
}

impl Topology {
    /// The standard topology, shipped with agentbus (`topology.toml` beside
    /// this crate's manifest): what `agentbus up` and `agentbus setup` apply
    /// unless given another.
    pub fn standard() -> Self {
        Self::parse(STANDARD_TOPOLOGY_TOML, Path::new("topology.toml"))
            .expect("the shipped topology is valid")
    }

    /// Loads and validates a topology file.
    pub fn from_file(path: &Path) -> Result<Self, TopologyError> {
        let text = std::fs::read_to_string(path).map_err(|source| TopologyError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::parse(&text, path)
    }

    /// Parses and validates topology text; `path` is used in errors.
    pub fn parse(text: &str, path: &Path) -> Result<Self, TopologyError> {
        let topology: Self = toml::from_str(text).map_err(|err| {
            let offset = err.span().map_or(0, |span| span.start);
            let (line, column) = line_and_column(text, offset);
            TopologyError::Parse {
                path: path.to_owned(),
                line,
                column,
                message: err.message().trim_end().replace('\n', "; "),
            }
        })?;
        topology.validate()?;
        topology.validate_buckets()?;
        Ok(topology)
    }

    /// Checks what TOML alone cannot: names, subjects, limits, overlaps.
    pub fn validate(&self) -> Result<(), TopologyError> {
        let mut seen_subjects: Vec<(&str, &str)> = Vec::new();
        for (index, spec) in self.streams.iter().enumerate() {
            let invalid = |reason: String| TopologyError::Invalid {
                stream: spec.name.clone(),
                reason,
            };
            if spec.name.is_empty()
                || spec
                    .name
                    .chars()
                    .any(|c| !(c.is_ascii_alphanumeric() || c == '-' || c == '_'))
            {
                return Err(invalid(
                    "a stream name uses only letters, digits, '-' and '_'".into(),
                ));
            }
            if self.streams[..index].iter().any(|s| s.name == spec.name) {
                return Err(invalid("the name appears twice".into()));
            }
            if spec.subjects.is_empty() {
                return Err(invalid("it captures no subjects".into()));
            }
            for subject in &spec.subjects {
                if let Some(rr) = REQUEST_REPLY_SUBJECTS
                    .iter()
                    .find(|rr| overlaps(subject, rr))
                {
                    return Err(invalid(format!(
                        "subject {subject:?} captures the request/reply subject {rr:?}, so JetStream would answer requesters with its own ack instead of the agent's reply; narrow the subject"
                    )));
                }
                SubjectPattern::parse(subject).map_err(|source| TopologyError::InvalidSubject {
                    stream: spec.name.clone(),
                    source,
                })?;
                if let Some((other, other_subject)) =
                    seen_subjects.iter().find(|(_, s)| overlaps(subject, s))
                {
                    return Err(invalid(format!(
                        "subject {subject:?} overlaps {other_subject:?} of stream {other:?}; a subject can belong to one stream only"
                    )));
                }
            }
            seen_subjects.extend(
                spec.subjects
                    .iter()
                    .map(|s| (spec.name.as_str(), s.as_str())),
            );
            if let Some(republish) = &spec.republish {
                SubjectPattern::parse(&republish.src).map_err(|source| {
                    TopologyError::InvalidSubject {
                        stream: spec.name.clone(),
                        source,
                    }
                })?;
                if !spec.subjects.iter().any(|s| covers(s, &republish.src)) {
                    return Err(invalid(format!(
                        "republish src {:?} is not within the stream's subjects",
                        republish.src
                    )));
                }
            }
            if spec.max_msgs <= 0 || spec.max_bytes <= 0 || spec.max_age.is_zero() {
                return Err(invalid(
                    "max_msgs, max_bytes and max_age must be positive (an unbounded stream could fill the disk)".into(),
                ));
            }
            if spec.duplicate_window > spec.max_age {
                return Err(invalid("duplicate_window must not exceed max_age".into()));
            }
            if let Replicas::Count(count) = spec.replicas
                && !(1..=5).contains(&count)
            {
                return Err(invalid("replicas must be between 1 and 5".into()));
            }
        }
        // A stream storing what another republishes would keep every copy.
        for spec in &self.streams {
            let Some(republish) = &spec.republish else {
                continue;
            };
            let dest = republish.dest_pattern();
            if let Some(rr) = REQUEST_REPLY_SUBJECTS.iter().find(|rr| overlaps(&dest, rr)) {
                return Err(TopologyError::Invalid {
                    stream: spec.name.clone(),
                    reason: format!(
                        "republish dest {:?} overlaps the request/reply subject {rr:?}, so agents would take what it republishes as requests",
                        republish.dest
                    ),
                });
            }
            if let Some((other, subject)) = self.streams.iter().find_map(|other| {
                other
                    .subjects
                    .iter()
                    .find(|s| overlaps(s, &dest))
                    .map(|s| (&other.name, s))
            }) {
                return Err(TopologyError::Invalid {
                    stream: spec.name.clone(),
                    reason: format!(
                        "republish dest {:?} overlaps subject {subject:?} of stream {other:?}, which would store every republished message",
                        republish.dest
                    ),
                });
            }
        }
        Ok(())
    }

    fn validate_buckets(&self) -> Result<(), TopologyError> {
        for (index, bucket) in self.buckets.iter().enumerate() {
            let invalid = |reason: &str| TopologyError::Invalid {
                stream: format!("KV_{}", bucket.name),
                reason: reason.to_owned(),
            };
            if bucket.name.is_empty()
                || bucket
                    .name
                    .chars()
                    .any(|c| !(c.is_ascii_alphanumeric() || c == '-' || c == '_'))
            {
                return Err(invalid(
                    "a bucket name uses only letters, digits, '-' and '_'",
                ));
            }
            if self.buckets[..index].iter().any(|b| b.name == bucket.name) {
                return Err(invalid("the bucket appears twice"));
            }
            if bucket.max_age.is_zero() {
                return Err(invalid("max_age must be positive"));
            }
            if bucket
                .limit_markers
                .is_some_and(|markers| markers < Duration::from_secs(1))
            {
                return Err(invalid("limit_markers must be at least 1s"));
            }
        }
        Ok(())
    }

    /// Finds a bucket by name.
    pub fn bucket(&self, name: &str) -> Option<&BucketSpec> {
        self.buckets.iter().find(|b| b.name == name)
    }

    /// Finds a stream by name.
    pub fn stream(&self, name: &str) -> Option<&StreamSpec> {
        self.streams.iter().find(|s| s.name == name)
    }
}

fn line_and_column(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let column = before.len() - before.rfind('\n').map_or(0, |i| i + 1) + 1;
    (line, column)
}

/// Parses sizes such as `100MiB`, `50 MB`, `1024` into bytes.
pub fn parse_size(text: &str) -> Result<i64, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: i64 = number
        .parse()
        .map_err(|_| format!("{text:?} is not a size such as \"100MiB\""))?;
    let factor: i64 = match unit.trim() {
        "" | "B" => 1,
        "KiB" => 1 << 10,
        "MiB" => 1 << 20,
        "GiB" => 1 << 30,
        "KB" => 1_000,
        "MB" => 1_000_000,
        "GB" => 1_000_000_000,
        other => {
            return Err(format!(
                "unknown size unit {other:?}; use B, KiB, MiB, GiB, KB, MB or GB"
            ));
        }
    };
    number
        .checked_mul(factor)
        .ok_or_else(|| format!("{text:?} is too large"))
}

fn deserialize_size<'de, D: Deserializer<'de>>(deserializer: D) -> Result<i64, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Size {
        Bytes(i64),
        Text(String),
    }
    match Size::deserialize(deserializer)? {
        Size::Bytes(n) => Ok(n),
        Size::Text(text) => parse_size(&text).map_err(serde::de::Error::custom),
    }
}

fn deserialize_optional_duration<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<Duration>, D::Error> {
    deserialize_duration(deserializer).map(Some)
}

fn deserialize_duration<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Duration, D::Error> {
    let text = String::deserialize(deserializer)?;
    humantime::parse_duration(&text).map_err(|err| {
        serde::de::Error::custom(format!("{text:?} is not a duration such as \"7d\": {err}"))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use agentbus::subject::InvalidSubject;

    #[test]
    fn standard_topology_has_the_agentbus_streams_and_buckets() {
        let t = Topology::standard();
        let names: Vec<_> = t.streams.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "agent-messages",
                "agent-broadcast",
                "agent-tasks",
                "agent-task-events",
                "agent-dlq"
            ]
        );
        // nats-server 2.15 allows 1,000 consumers per stream unless the
        // stream says otherwise: inboxes take two per agent.
        assert_eq!(
            t.stream("agent-messages").unwrap().max_consumers,
            Some(100_000)
        );
        let events = t.stream("agent-task-events").unwrap();
        assert_eq!(events.subjects, [agentbus::subject::ALL_TASK_EVENTS]);
        assert_eq!(events.max_msgs_per_subject, Some(10_000));
        assert_eq!(events.discard, Discard::Old);
        let tasks = t.stream("agent-tasks").unwrap();
        // Wider than tasks.* and work.*, which it still captures (priority sub-queues).
        assert_eq!(tasks.subjects, ["tasks.>", "work.>"]);
        for required in ["tasks.*", "work.*"] {
            assert!(
                tasks
                    .subjects
                    .iter()
                    .any(|s| agentbus::subject::overlaps(s, required))
            );
        }
        assert_eq!(
            t.bucket("agent-task-results").unwrap().max_age,
            Duration::from_secs(7 * 86_400)
        );
        assert_eq!(tasks.retention, Retention::Workqueue);
        assert_eq!(tasks.max_msgs, 50_000);
        assert_eq!(tasks.max_bytes, 200 * 1024 * 1024);
        assert_eq!(tasks.max_age, Duration::from_secs(14 * 86_400));
        assert_eq!(tasks.discard, Discard::New);
        // It rings agents where their runtime listens.
        let republish = tasks.republish.as_ref().unwrap();
        assert_eq!(
            (republish.src.as_str(), republish.dest.as_str()),
            (
                agentbus::subject::QUEUED_REPUBLISH_SOURCE,
                agentbus::subject::QUEUED_REPUBLISH_DESTINATION
            )
        );
        assert!(republish.headers_only);
    }

    #[test]
    fn a_republish_stays_within_its_stream_and_outside_every_stream() {
        let tasks_ring = "republish = { src = \"tasks.*\", dest = \"agent.{{wildcard(1)}}.queued\", headers_only = true }";
        assert!(STANDARD_TOPOLOGY_TOML.contains(tasks_ring));
        let outside = STANDARD_TOPOLOGY_TOML.replacen(
            tasks_ring,
            "republish = { src = \"jobs.*\", dest = \"agent.{{wildcard(1)}}.queued\" }",
            1,
        );
        let err = Topology::parse(&outside, Path::new("t.toml"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("not within the stream's subjects"), "{err}");
        let stored = STANDARD_TOPOLOGY_TOML.replacen(
            tasks_ring,
            "republish = { src = \"tasks.*\", dest = \"agent.{{wildcard(1)}}.inbox\" }",
            1,
        );
        let err = Topology::parse(&stored, Path::new("t.toml"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("agent-messages"), "{err}");
        for dest in ["agent.{{wildcard(1)}}.task", "agent.x{{wildcard(1)}}.task"] {
            let answered = STANDARD_TOPOLOGY_TOML.replacen(
                tasks_ring,
                &format!("republish = {{ src = \"tasks.*\", dest = \"{dest}\" }}"),
                1,
            );
            let err = Topology::parse(&answered, Path::new("t.toml"))
                .unwrap_err()
                .to_string();
            assert!(err.contains("request/reply"), "{dest}: {err}");
        }
    }

    #[test]
    fn shipped_presence_and_state_buckets_have_limit_markers() {
        let t = Topology::standard();
        let presence = t.bucket("agent-presence").unwrap();
        assert_eq!(
            presence.max_age,
            Duration::from_secs(86_400),
            "a day: agents rewrite their entries twice a day, and instance heartbeats carry their own TTL"
        );
        assert!(presence.limit_markers.is_some());
        let state = t.bucket("agent-state").unwrap();
        assert!(state.limit_markers.is_some());
        let config = state.to_config();
        assert_eq!(config.history, 1);
        assert_eq!(config.limit_markers, state.limit_markers);
        assert_eq!(t.bucket("agent-task-results").unwrap().limit_markers, None);
    }

    #[test]
    fn limit_markers_parse_and_are_checked() {
        let bucket = |markers: &str| {
            format!(
                "{STANDARD_TOPOLOGY_TOML}\n[[bucket]]\nname = \"b\"\nmax_age = \"1m\"\nstorage = \"file\"\nlimit_markers = \"{markers}\"\n"
            )
        };
        let t = Topology::parse(&bucket("5s"), Path::new("t.toml")).unwrap();
        assert_eq!(
            t.bucket("b").unwrap().limit_markers,
            Some(Duration::from_secs(5))
        );
        let err = Topology::parse(&bucket("500ms"), Path::new("t.toml"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("limit_markers must be at least 1s"), "{err}");
        let err = Topology::parse(&bucket("soon"), Path::new("t.toml"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("is not a duration"), "{err}");
    }

    #[test]
    fn sizes_parse_with_units() {
        assert_eq!(parse_size("100MiB"), Ok(104_857_600));
        assert_eq!(parse_size("50 MB"), Ok(50_000_000));
        assert_eq!(parse_size("1024"), Ok(1024));
        assert!(parse_size("ten").is_err());
        assert!(parse_size("1 PB").is_err());
    }

    #[test]
    fn malformed_file_reports_line_and_column() {
        let text = "[[stream]]\nname = \"x\"\nsubjects = [\"a.*\"\n";
        let err = Topology::parse(text, Path::new("t.toml")).unwrap_err();
        match &err {
            TopologyError::Parse { line, path, .. } => {
                assert_eq!(path, Path::new("t.toml"));
                assert!(*line >= 3, "{err}");
            }
            other => panic!("unexpected {other:?}"),
        }
        assert!(
            err.to_string()
                .starts_with("invalid topology file t.toml at line")
        );
    }

    #[test]
    fn missing_field_is_named() {
        let text = "[[stream]]\nname = \"x\"\nsubjects = [\"a.*\"]\n";
        let err = Topology::parse(text, Path::new("t.toml"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("retention"), "{err}");
    }

    fn with_subjects(subjects: &str) -> String {
        STANDARD_TOPOLOGY_TOML.replacen(
            "subjects = [\"agent.*.inbox\", \"agent.*.direct\", \"agent.*.inbox.*\", \"agent.*.direct.*\"]",
            &format!("subjects = {subjects}"),
            1,
        )
    }

    #[test]
    fn refuses_streams_capturing_request_reply_subjects() {
        for subjects in [
            r#"["agent.*.task"]"#,
            r#"["agent.>"]"#,
            r#"["_INBOX.>"]"#,
            r#"[">"]"#,
        ] {
            let err = Topology::parse(&with_subjects(subjects), Path::new("t.toml"))
                .unwrap_err()
                .to_string();
            assert!(err.contains("request/reply"), "{subjects}: {err}");
        }
    }

    #[test]
    fn refuses_overlapping_streams() {
        let err = Topology::parse(&with_subjects(r#"["tasks.x"]"#), Path::new("t.toml"))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("\"tasks.>\" overlaps \"tasks.x\" of stream \"agent-messages\""),
            "{err}"
        );
    }

    #[test]
    fn kinds_of_unloadable_topologies() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("missing.toml");
        let err = Topology::from_file(&missing).unwrap_err();
        assert_eq!(err.kind(), TopologyErrorKind::Read);
        assert!(
            std::error::Error::source(&err)
                .and_then(|s| s.downcast_ref::<std::io::Error>())
                .is_some_and(|io| io.kind() == std::io::ErrorKind::NotFound),
            "{err:?}"
        );

        let err = Topology::parse("[[stream]]\nname = 1\n", Path::new("t.toml")).unwrap_err();
        assert_eq!(err.kind(), TopologyErrorKind::Parse);

        let err = Topology::parse(&with_subjects(r#"["a..b"]"#), Path::new("t.toml")).unwrap_err();
        assert_eq!(err.kind(), TopologyErrorKind::Invalid);
        assert!(
            std::error::Error::source(&err).is_some_and(|s| s.is::<InvalidSubject>()),
            "{err:?}"
        );
        assert!(
            err.to_string().starts_with(
                "invalid topology: stream \"agent-messages\": invalid subject \"a..b\""
            ),
            "{err}"
        );

        let err = Topology::parse(&with_subjects("[]"), Path::new("t.toml")).unwrap_err();
        assert_eq!(err.kind(), TopologyErrorKind::Invalid);
    }
}
