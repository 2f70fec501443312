//! Discovery for standard NATS tooling: every agent a [`crate::Runtime`]
//! serves also answers the NATS services protocol ("micro", `io.nats.micro.v1`),
//! so `nats micro ls`, `nats micro info <agent>` and `nats micro stats <agent>`
//! list it like any NATS service.
//!
//! | request | answer |
//! | --- | --- |
//! | `$SRV.PING[.<agent>[.<id>]]` | `io.nats.micro.v1.ping_response`: name, id, version, metadata |
//! | `$SRV.INFO[.<agent>[.<id>]]` | `io.nats.micro.v1.info_response`: plus the endpoint `agent.<agent>.task` with its task types |
//! | `$SRV.STATS[.<agent>[.<id>]]` | `io.nats.micro.v1.stats_response`: requests, errors and processing time |
//!
//! The service name is the agent name and the id is the runtime's instance
//! id, so replicas of an agent show as instances of one service. Figures come
//! from the runtime's counters ([`AgentStats`]) and cover every task the agent
//! answered, request/reply and queued: `num_requests` counts each answer (each
//! attempt at a queued task; a request/reply retry answered from the
//! deduplication window is not counted again), `num_errors` those answered
//! with any status but `completed`, including the
//! ones refused before a handler ran (malformed, unknown task type, payload
//! not matching its schema), and `last_error` is the last of them as
//! `"<code>:<description>"` (400 rejected, 500 failed, 503 cancelled, 504
//! timeout). Durations are integer nanoseconds everywhere, `data` included.
//!
//! One responder answers for every agent of a runtime, on three
//! subscriptions of its own: the task subscriptions on `agent.<agent>.task`
//! and their hot path are untouched.

use super::AgentStats;
use super::stats::Counters;
use crate::name::Name;
use crate::subject::{self, service};
use bytes::Bytes;
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use tokio::task::JoinHandle;

/// `type` of a PING answer.
pub const PING_RESPONSE_TYPE: &str = "io.nats.micro.v1.ping_response";
/// `type` of an INFO answer.
pub const INFO_RESPONSE_TYPE: &str = "io.nats.micro.v1.info_response";
/// `type` of a STATS answer.
pub const STATS_RESPONSE_TYPE: &str = "io.nats.micro.v1.stats_response";
/// Name of the one endpoint of an agent: its task subject.
pub const TASK_ENDPOINT: &str = "task";
/// Endpoint metadata key listing the accepted task types, comma-separated.
pub const TASK_TYPES_KEY: &str = "task_types";

pub use crate::subject::service::Verb;

/// Answer to `$SRV.PING`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PingResponse {
    /// Always [`PING_RESPONSE_TYPE`].
    #[serde(rename = "type")]
    pub kind: String,
    /// The service (agent) name.
    pub name: String,
    /// The instance id.
    pub id: String,
    /// The service version.
    pub version: String,
    /// Service metadata.
    #[serde(default)]
    pub metadata: BTreeMap<String, String>,
}

/// One endpoint in an INFO answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EndpointInfo {
    /// Endpoint name ([`TASK_ENDPOINT`]).
    pub name: String,
    /// The subject requests go to: `agent.<name>.task`.
    pub subject: String,
    /// The queue group replicas share: the agent name.
    pub queue_group: String,
    /// Endpoint metadata; [`TASK_TYPES_KEY`] lists the task types.
    #[serde(default)]
    pub metadata: BTreeMap<String, String>,
}

/// Answer to `$SRV.INFO`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InfoResponse {
    /// Always [`INFO_RESPONSE_TYPE`].
    #[serde(rename = "type")]
    pub kind: String,
    /// The service (agent) name.
    pub name: String,
    /// The instance id.
    pub id: String,
    /// What the service is.
    pub description: String,
    /// The service version.
    pub version: String,
    /// Service metadata.
    #[serde(default)]
    pub metadata: BTreeMap<String, String>,
    /// Its endpoints.
    pub endpoints: Vec<EndpointInfo>,
}

/// One endpoint in a STATS answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EndpointStats {
    /// Endpoint name ([`TASK_ENDPOINT`]).
    pub name: String,
    /// The endpoint's subject.
    pub subject: String,
    /// The endpoint's queue group.
    pub queue_group: String,
    /// Answers: completed, failed or rejected.
    pub num_requests: u64,
    /// Answers with any status but `completed`, rejections included.
    pub num_errors: u64,
    /// The last error as `"<code>:<description>"`, empty when there was none.
    #[serde(default)]
    pub last_error: String,
    /// Time spent on the answered tasks, nanoseconds.
    pub processing_time: u64,
    /// `processing_time / num_requests`, nanoseconds (0 before the first request).
    pub average_processing_time: u64,
    /// The runtime's own figures ([`AgentStats`], durations in nanoseconds).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<serde_json::Value>,
}

/// Answer to `$SRV.STATS`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StatsResponse {
    /// Always [`STATS_RESPONSE_TYPE`].
    #[serde(rename = "type")]
    pub kind: String,
    /// The service (agent) name.
    pub name: String,
    /// The instance id.
    pub id: String,
    /// The service version.
    pub version: String,
    /// Service metadata.
    #[serde(default)]
    pub metadata: BTreeMap<String, String>,
    /// When the agent started serving, RFC 3339.
    pub started: String,
    /// Figures per endpoint.
    pub endpoints: Vec<EndpointStats>,
}

/// Everything a responder tells about one served agent.
#[derive(Debug, Clone)]
pub(crate) struct ServiceDescription {
    pub(crate) name: Name,
    pub(crate) instance_id: String,
    pub(crate) task_types: Vec<Name>,
}

/// One served agent's answers: PING and INFO made once, STATS on request.
struct Service {
    ping: Bytes,
    info: Bytes,
    stats: StatsResponse,
    /// The agent's figures, read on each STATS request.
    counters: Arc<Counters>,
}

/// The agents a runtime serves, as the responder answers for them.
type Services = Arc<Mutex<BTreeMap<Name, Service>>>;

/// Answers the services protocol for every agent of one runtime, on three
/// subscriptions whatever the number of agents: `$SRV.*` (every service),
/// `$SRV.*.*` (by name) and `$SRV.*.*.*` (by name and instance). It hears
/// the discovery requests for other services too, and ignores them:
/// discovery is rare, and a subscription per agent costs memory at idle.
pub(crate) struct Responder {
    services: Services,
    instance_id: String,
    task: JoinHandle<()>,
}

impl std::fmt::Debug for Responder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Responder")
            .field("instance_id", &self.instance_id)
            .finish_non_exhaustive()
    }
}

impl Responder {
    /// Subscribes and starts answering (for no agent yet).
    pub(super) async fn start(
        client: &async_nats::Client,
        instance_id: &str,
    ) -> Result<Self, async_nats::SubscribeError> {
        let mut subscriptions = Vec::new();
        for pattern in service::listen_all() {
            subscriptions.push(client.subscribe(pattern).await?);
        }
        let services = Services::default();
        let task = tokio::spawn(serve(
            client.clone(),
            instance_id.to_owned(),
            futures::stream::select_all(subscriptions),
            services.clone(),
        ));
        Ok(Self {
            services,
            instance_id: instance_id.to_owned(),
            task,
        })
    }

    /// Answers for one more agent from now on.
    pub(super) fn add(&self, service: ServiceDescription, counters: Arc<Counters>) {
        let name = service.name.clone();
        let id = service.instance_id.as_str();
        let metadata = service_metadata(&service);
        let endpoint = endpoint_info(&service);
        let ping = PingResponse {
            kind: PING_RESPONSE_TYPE.to_owned(),
            name: name.to_string(),
            id: id.to_owned(),
            version: version(),
            metadata: metadata.clone(),
        };
        let info = InfoResponse {
            kind: INFO_RESPONSE_TYPE.to_owned(),
            name: name.to_string(),
            id: id.to_owned(),
            description: format!("agentbus agent {name}: TaskRequest in, TaskResponse out"),
            version: version(),
            metadata: metadata.clone(),
            endpoints: vec![endpoint.clone()],
        };
        let stats = StatsResponse {
            kind: STATS_RESPONSE_TYPE.to_owned(),
            name: name.to_string(),
            id: id.to_owned(),
            version: version(),
            metadata,
            started: humantime::format_rfc3339_nanos(std::time::SystemTime::now()).to_string(),
            endpoints: vec![EndpointStats {
                name: endpoint.name,
                subject: endpoint.subject,
                queue_group: endpoint.queue_group,
                num_requests: 0,
                num_errors: 0,
                last_error: String::new(),
                processing_time: 0,
                average_processing_time: 0,
                data: None,
            }],
        };
        let service = Service {
            ping: to_json(&ping),
            info: to_json(&info),
            stats,
            counters,
        };
        if let Ok(mut services) = self.services.lock() {
            services.insert(name, service);
        }
    }

    /// Stops answering.
    pub(super) fn stop(&self) {
        self.task.abort();
    }
}

/// Answers each request for the agents it names, until the subscriptions end.
async fn serve(
    client: async_nats::Client,
    instance_id: String,
    mut requests: futures::stream::SelectAll<async_nats::Subscriber>,
    services: Services,
) {
    while let Some(message) = requests.next().await {
        let Some(reply) = message.reply else { continue };
        let Some((verb, name, id)) = service::parse_request(&message.subject) else {
            continue;
        };
        if id.is_some_and(|id| id != instance_id) {
            continue;
        }
        // Answers are made under the lock and sent after it.
        let answers: Vec<Bytes> = match services.lock() {
            Ok(mut services) => match name {
                Some(name) => services
                    .get_mut(name)
                    .map(|service| service.answer(verb))
                    .into_iter()
                    .collect(),
                None => services.values_mut().map(|s| s.answer(verb)).collect(),
            },
            Err(_) => continue,
        };
        for body in answers {
            if let Err(err) = client.publish(reply.clone(), body).await {
                tracing::warn!(%err, "cannot answer a discovery request");
            }
        }
    }
}

impl Service {
    fn answer(&mut self, verb: Verb) -> Bytes {
        match verb {
            Verb::Ping => self.ping.clone(),
            Verb::Info => self.info.clone(),
            Verb::Stats => self.stats_body(),
        }
    }

    fn stats_body(&mut self) -> Bytes {
        let figures: AgentStats = self.counters.snapshot();
        let requests = figures.completed + figures.failed + figures.rejected;
        let nanos = u64::try_from(figures.processing_time.as_nanos()).unwrap_or(u64::MAX);
        let endpoint = &mut self.stats.endpoints[0];
        endpoint.num_requests = requests;
        endpoint.num_errors = figures.failed + figures.rejected;
        endpoint.last_error = self.counters.last_error();
        endpoint.processing_time = nanos;
        endpoint.average_processing_time = nanos.checked_div(requests).unwrap_or(0);
        endpoint.data = serde_json::to_value(figures).ok();
        to_json(&self.stats)
    }
}

fn version() -> String {
    env!("CARGO_PKG_VERSION").to_owned()
}

fn service_metadata(service: &ServiceDescription) -> BTreeMap<String, String> {
    BTreeMap::from([
        ("agentbus_version".to_owned(), version()),
        ("instance_id".to_owned(), service.instance_id.clone()),
    ])
}

fn endpoint_info(service: &ServiceDescription) -> EndpointInfo {
    let task_types: Vec<&str> = service.task_types.iter().map(Name::as_str).collect();
    EndpointInfo {
        name: TASK_ENDPOINT.to_owned(),
        subject: subject::agent_task(&service.name).into(),
        queue_group: service.name.to_string(),
        metadata: BTreeMap::from([(TASK_TYPES_KEY.to_owned(), task_types.join(","))]),
    }
}

fn to_json<T: Serialize>(value: &T) -> Bytes {
    Bytes::from(serde_json::to_vec(value).expect("discovery answers always serialize"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn service() -> ServiceDescription {
        ServiceDescription {
            name: Name::parse("agent name", "echo").unwrap(),
            instance_id: "abc123".to_owned(),
            task_types: vec![
                Name::parse("task type", "echo").unwrap(),
                Name::parse("task type", "reverse").unwrap(),
            ],
        }
    }

    #[test]
    fn the_endpoint_is_the_task_subject_with_its_task_types() {
        let endpoint = endpoint_info(&service());
        assert_eq!(
            serde_json::to_value(&endpoint).unwrap(),
            serde_json::json!({
                "name": "task",
                "subject": "agent.echo.task",
                "queue_group": "echo",
                "metadata": {"task_types": "echo,reverse"},
            })
        );
    }
}
