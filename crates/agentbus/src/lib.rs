//! agentbus: messaging for multi-agent systems on NATS with JetStream.
//!
//! Agents send each other typed tasks over request/reply on `agent.<name>.task`,
//! publish and subscribe to events, and rely on JetStream streams for delivery
//! that survives an agent being offline. The engine underneath is always a real
//! `nats-server`; this crate never implements a broker of its own.
//!
//! # Layout
//!
//! The front door is the crate root: [`Bus`] (send tasks, publish, subscribe,
//! store durably), [`Runtime`] and [`Agent`] (serve agents), the wire types
//! ([`TaskRequest`], [`TaskResponse`], [`TaskId`], [`Name`]) and their errors.
//! The modules that stay public hold what a user names by path:
//!
//! - [`delivery`]: guaranteed delivery on JetStream. It owns every durable
//!   consumer ([`delivery::ConsumerSpec`]) and how durable work is settled
//!   (acknowledged, retried, recorded, dead-lettered), for the runtime and
//!   for any other reader (the MCP bridge); work queues, inboxes,
//!   broadcasts, results and dead letters.
//! - [`events`]: the typed bodies of `platform.events.*`.
//! - [`task_log`]: each task's event log (partials, progress, questions,
//!   its final state), watching it, cancelling a task and answering it.
//! - [`state`]: per-agent key/value state with TTL, and short-lived entries,
//!   on NATS KV or Redis (the `redis` feature).
//! - [`presence`]: heartbeats, who is online, and `agent_offline` events.
//! - [`discovery`]: the NATS services protocol (`$SRV.PING|INFO|STATS`) that
//!   served agents answer.
//! - [`permissions`]: what nats-server lets one agent identity publish and
//!   subscribe to.
//! - [`subject`]: the only place where subjects and consumer names are built
//!   and parsed.
//! - [`telemetry`]: W3C trace context on what is sent, OpenTelemetry spans
//!   around sending and handling, and (feature `otlp`) their export.
//! - [`connect`]: finding the server (`--server`, `NATS_URL`,
//!   `connection.env` in the data directory) and connecting with errors a
//!   person can act on; [`redact`]: keeping secrets out of what is printed.
//!
//! Private: `name` and `task_id` (the validated tokens), `protocol` (the
//! task wire format; `docs/PROTOCOL.md` in the repository describes every
//! subject and body for other languages), `payload` ([`Payload`]: a task's
//! JSON kept as text until read), `client` ([`Bus`]), `agent`, `runtime`
//! (serving loops, retry cache, priority queue, the services responder),
//! `metrics` (a runtime's Prometheus endpoint, [`AgentOptions`]'s
//! `metrics_address`), `ride` (the one retry loop that carries what is
//! stored in JetStream through elections and reconnects), `effects`
//! (effects made once per task, [`TaskContext::once`]), `clock` and
//! `jetstream_errors`.
//!
//! Dependencies: `delivery` and `runtime` sit on `client`, `subject` and
//! `protocol`; `presence` sits on `state`; nothing below depends on what is
//! above it.
//!
//! Running a server (finding `nats-server`, the data directory of `agentbus
//! up`, the stream topology, monitoring, `agentbus check`) is the
//! `agentbus-ops` crate's: agents do not carry it.
//!
//! # Features
//!
//! - `json-schema` (default): task types may carry a JSON Schema that payloads
//!   are checked against.
//! - `redis`: state and presence in Redis.
//! - `otlp`: `telemetry::init_from_env`, exporting spans over OTLP/HTTP.

mod agent;
mod bucket;
mod client;
mod clock;
pub mod connect;
pub mod delivery;
mod effects;
pub mod events;
mod jetstream_errors;
mod metrics;
mod name;
mod payload;
pub mod permissions;
pub mod presence;
mod protocol;
pub mod redact;
mod ride;
mod runtime;
mod sender;
pub mod state;
mod stream_read;
pub mod subject;
mod task_id;
pub mod task_log;
pub mod telemetry;

pub use agent::{Agent, AgentMessage, MessageChannel, TaskContext, TaskError, TaskTypeSpec};
pub use client::{
    Bus, Event, EventDecodeError, PublishError, PublishErrorKind, RequestOptions, SendTaskError,
    SendTaskErrorKind, SubscribeError, SubscribeErrorKind, Subscription,
};
pub use connect::{ConnectError, ServerTarget};
pub use name::{InvalidName, MAX_NAME_LEN, Name};
pub use payload::Payload;
pub use protocol::{Priority, RequestError, TaskRequest, TaskResponse, TaskStatus};
pub use runtime::discovery;
pub use runtime::{
    AgentOptions, AgentStats, InvalidMetricsAddress, InvalidSchema, METRICS_ADDRESS_VAR, Runtime,
    RuntimeError, RuntimeErrorKind,
};
pub use sender::Sender;
pub use task_id::{InvalidTaskId, MAX_TASK_ID_LEN, TaskId, TaskKey};
