//! Applying a topology to a server: the JetStream configuration of each
//! stream and bucket, what differs from the server's, and creating or
//! updating what is missing or changed.

use super::{
    BucketSpec, Discard, Replicas, Retention, Storage, StreamAction, StreamSpec, Topology,
    TopologyError,
};
use async_nats::jetstream::{self, stream};

/// An `async_nats` error of a look-up, create or update.
type Cause = Box<dyn std::error::Error + Send + Sync>;

impl Topology {
    /// Applies every stream to the server behind `js`, in order.
    ///
    /// `replicas = "auto"` becomes the number of servers of the cluster
    /// behind `js` (up to 3): see [`Topology::on_servers`].
    pub async fn apply(
        &self,
        js: &jetstream::Context,
    ) -> Result<Vec<(String, StreamAction)>, TopologyError> {
        let resolved = self.on_servers(servers_in_cluster(&js.client()));
        let mut actions = Vec::with_capacity(resolved.streams.len());
        for spec in &resolved.streams {
            actions.push((spec.name.clone(), spec.apply(js).await?));
        }
        for bucket in &resolved.buckets {
            actions.push((format!("KV {}", bucket.name), bucket.apply(js).await?));
        }
        Ok(actions)
    }

    /// This topology with every `replicas = "auto"` made a count for a
    /// cluster of `servers` servers.
    pub fn on_servers(&self, servers: usize) -> Self {
        let mut resolved = self.clone();
        for spec in &mut resolved.streams {
            spec.replicas = Replicas::Count(spec.replicas.on(servers));
        }
        for bucket in &mut resolved.buckets {
            bucket.replicas = Replicas::Count(bucket.replicas.on(servers));
        }
        resolved
    }
}

/// How many servers the cluster behind `client` has, as its server
/// announced them when the client connected (a server alone announces none:
/// 1). Later announcements are not taken in by the client: a cluster still
/// forming is counted by a new connection.
pub fn servers_in_cluster(client: &async_nats::Client) -> usize {
    client.server_info().connect_urls.len().max(1)
}

/// Whether JetStream can change `field` (as [`StreamSpec::differences`]
/// names it) of an existing stream. Storage and retention it cannot: `apply`
/// refuses such a change, and only recreating the stream makes it.
pub fn changes_in_place(field: &str) -> bool {
    !matches!(field, "storage" | "retention")
}

/// The next step when `field` of `stream` is `current` on the server and
/// JetStream cannot change it in place (see [`changes_in_place`]).
pub fn recreate_advice(stream: &str, field: &str, current: &str) -> String {
    format!(
        "keep {field} = \"{current}\" in the topology, or delete stream {stream} with its messages (for example `nats stream rm {stream}`) and run `agentbus setup` to recreate it"
    )
}

impl StreamSpec {
    /// The JetStream configuration for this stream.
    pub fn to_config(&self) -> stream::Config {
        stream::Config {
            name: self.name.clone(),
            description: self.description.clone(),
            subjects: self.subjects.clone(),
            retention: match self.retention {
                Retention::Limits => stream::RetentionPolicy::Limits,
                Retention::Interest => stream::RetentionPolicy::Interest,
                Retention::Workqueue => stream::RetentionPolicy::WorkQueue,
            },
            max_messages: self.max_msgs,
            max_messages_per_subject: self.max_msgs_per_subject.unwrap_or(-1),
            max_consumers: self.max_consumers.unwrap_or(-1),
            max_bytes: self.max_bytes,
            max_age: self.max_age,
            storage: match self.storage {
                Storage::File => stream::StorageType::File,
                Storage::Memory => stream::StorageType::Memory,
            },
            discard: match self.discard {
                Discard::Old => stream::DiscardPolicy::Old,
                Discard::New => stream::DiscardPolicy::New,
            },
            duplicate_window: self.duplicate_window,
            num_replicas: self.replicas.on(1),
            allow_direct: self.allow_direct,
            republish: self.republish.as_ref().map(|r| stream::Republish {
                source: r.src.clone(),
                destination: r.dest.clone(),
                headers_only: r.headers_only,
            }),
            ..Default::default()
        }
    }

    /// Fields whose value on the server differs from this spec, as
    /// `(field, server value, wanted value)`.
    pub fn differences(&self, actual: &stream::Config) -> Vec<(&'static str, String, String)> {
        let wanted = self.to_config();
        let mut out = Vec::new();
        let mut check = |field, current: String, want: String| {
            if current != want {
                out.push((field, current, want));
            }
        };
        check(
            "storage",
            format!("{:?}", actual.storage),
            format!("{:?}", wanted.storage),
        );
        check(
            "retention",
            format!("{:?}", actual.retention),
            format!("{:?}", wanted.retention),
        );
        let mut actual_subjects = actual.subjects.clone();
        let mut wanted_subjects = wanted.subjects.clone();
        actual_subjects.sort();
        wanted_subjects.sort();
        check(
            "subjects",
            format!("{actual_subjects:?}"),
            format!("{wanted_subjects:?}"),
        );
        check(
            "max_msgs",
            actual.max_messages.to_string(),
            wanted.max_messages.to_string(),
        );
        check(
            "max_consumers",
            actual.max_consumers.to_string(),
            wanted.max_consumers.to_string(),
        );
        check(
            "max_msgs_per_subject",
            actual.max_messages_per_subject.to_string(),
            wanted.max_messages_per_subject.to_string(),
        );
        check(
            "max_bytes",
            actual.max_bytes.to_string(),
            wanted.max_bytes.to_string(),
        );
        check(
            "max_age",
            format!("{:?}", actual.max_age),
            format!("{:?}", wanted.max_age),
        );
        check(
            "discard",
            format!("{:?}", actual.discard),
            format!("{:?}", wanted.discard),
        );
        check(
            "duplicate_window",
            format!("{:?}", actual.duplicate_window),
            format!("{:?}", wanted.duplicate_window),
        );
        check(
            "replicas",
            actual.num_replicas.to_string(),
            wanted.num_replicas.to_string(),
        );
        check(
            "allow_direct",
            actual.allow_direct.to_string(),
            wanted.allow_direct.to_string(),
        );
        let republish = |config: &stream::Config| match &config.republish {
            Some(r) if r.headers_only => {
                format!("{} -> {} (headers only)", r.source, r.destination)
            }
            Some(r) => format!("{} -> {}", r.source, r.destination),
            None => "none".to_owned(),
        };
        check("republish", republish(actual), republish(&wanted));
        check(
            "description",
            format!("{:?}", actual.description),
            format!("{:?}", wanted.description),
        );
        out
    }

    async fn apply(&self, js: &jetstream::Context) -> Result<StreamAction, TopologyError> {
        let js_error = |action, source: Cause| TopologyError::JetStream {
            stream: self.name.clone(),
            action,
            source,
        };
        let mut existing = match js.get_stream(&self.name).await {
            Ok(stream) => stream,
            Err(err) if is_stream_not_found(&err) => {
                js.create_stream(self.to_config())
                    .await
                    .map_err(|err| js_error("create", err.into()))?;
                return Ok(StreamAction::Created);
            }
            Err(err) => return Err(js_error("look up", err.into())),
        };
        let info = existing
            .info()
            .await
            .map_err(|err| js_error("look up", err.into()))?;
        let differences = self.differences(&info.config);
        if differences.is_empty() {
            return Ok(StreamAction::Unchanged);
        }
        if let Some((field, current, wanted)) = differences
            .iter()
            .find(|(field, _, _)| !changes_in_place(field))
        {
            return Err(TopologyError::Immutable {
                stream: self.name.clone(),
                field,
                current: current.to_lowercase(),
                wanted: wanted.to_lowercase(),
            });
        }
        // Keep what the server added (metadata, placement, ...) and change only our fields.
        let wanted = self.to_config();
        let config = stream::Config {
            subjects: wanted.subjects,
            max_messages: wanted.max_messages,
            max_messages_per_subject: wanted.max_messages_per_subject,
            max_consumers: wanted.max_consumers,
            max_bytes: wanted.max_bytes,
            max_age: wanted.max_age,
            discard: wanted.discard,
            duplicate_window: wanted.duplicate_window,
            num_replicas: wanted.num_replicas,
            allow_direct: wanted.allow_direct,
            republish: wanted.republish,
            description: wanted.description,
            ..info.config.clone()
        };
        js.update_stream(config)
            .await
            .map_err(|err| js_error("update", err.into()))?;
        Ok(StreamAction::Updated)
    }
}

impl BucketSpec {
    /// The KV configuration for this bucket.
    pub fn to_config(&self) -> async_nats::jetstream::kv::Config {
        async_nats::jetstream::kv::Config {
            bucket: self.name.clone(),
            description: self.description.clone().unwrap_or_default(),
            history: 1,
            max_age: self.max_age,
            storage: match self.storage {
                Storage::File => stream::StorageType::File,
                Storage::Memory => stream::StorageType::Memory,
            },
            num_replicas: self.replicas.on(1),
            limit_markers: self.limit_markers,
            ..Default::default()
        }
    }

    async fn apply(&self, js: &jetstream::Context) -> Result<StreamAction, TopologyError> {
        let js_error = |action, source: Cause| TopologyError::JetStream {
            stream: format!("KV_{}", self.name),
            action,
            source,
        };
        let stream_name = format!("KV_{}", self.name);
        let info = match js.get_stream(&stream_name).await {
            Ok(mut stream) => stream
                .info()
                .await
                .map_err(|err| js_error("look up", err.into()))?
                .clone(),
            Err(err) if is_stream_not_found(&err) => {
                js.create_key_value(self.to_config())
                    .await
                    .map_err(|err| js_error("create", err.into()))?;
                return Ok(StreamAction::Created);
            }
            Err(err) => return Err(js_error("look up", err.into())),
        };
        let wanted = self.to_config();
        let storage_wanted = wanted.storage;
        if info.config.storage != storage_wanted {
            return Err(TopologyError::Immutable {
                stream: stream_name,
                field: "storage",
                current: format!("{:?}", info.config.storage).to_lowercase(),
                wanted: format!("{storage_wanted:?}").to_lowercase(),
            });
        }
        // Per-message TTLs can be turned on in place but not off, so they are
        // checked only when the topology wants them.
        let markers_match = info.config.subject_delete_marker_ttl == wanted.limit_markers
            && (wanted.limit_markers.is_none() || info.config.allow_message_ttl);
        if info.config.max_age == wanted.max_age
            && info.config.num_replicas == wanted.num_replicas
            && markers_match
        {
            return Ok(StreamAction::Unchanged);
        }
        js.update_key_value(wanted)
            .await
            .map_err(|err| js_error("update", err.into()))?;
        Ok(StreamAction::Updated)
    }
}

/// Whether `err` says the stream does not exist.
pub(crate) fn is_stream_not_found(err: &jetstream::context::GetStreamError) -> bool {
    matches!(
        err.kind(),
        jetstream::context::GetStreamErrorKind::JetStream(js)
            if js.error_code() == jetstream::ErrorCode::STREAM_NOT_FOUND
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn differences_name_each_changed_field() {
        let spec = Topology::standard().stream("agent-tasks").unwrap().clone();
        let mut actual = spec.to_config();
        assert!(spec.differences(&actual).is_empty());
        actual.max_messages = 10;
        actual.storage = stream::StorageType::Memory;
        let fields: Vec<_> = spec.differences(&actual).into_iter().map(|d| d.0).collect();
        assert_eq!(fields, ["storage", "max_msgs"]);
    }
}
