//! agentbus: messaging for multi-agent systems on NATS with JetStream.
//!
//! Agents send each other typed tasks over request/reply on `agent.<name>.task`,
//! publish and subscribe to events, and rely on JetStream streams for delivery
//! that survives an agent being offline. The engine underneath is always a real
//! `nats-server`; this crate never implements a broker of its own.
//!
//! # Layout
//!
//! - [`name`]: the one validated name type; every subject token comes from it.
//! - [`subject`]: the only place where subject strings and consumer names are built.
//! - [`protocol`]: the wire format of tasks (TaskRequest, TaskResponse).
//! - [`connect`]: finding the server (`--server`, `NATS_URL`, `connection.env`
//!   in the data directory), credentials, and connecting with errors a person
//!   can act on.
//! - [`agent`], [`runtime`], [`client`]: the Agent trait, the runtime that
//!   serves agents, and the client side that sends tasks and events.
//! - [`discovery`]: served agents answer the NATS services protocol (`$SRV.PING|INFO|STATS`).
//! - [`delivery`]: guaranteed delivery on JetStream: work queues, durable
//!   inboxes, broadcasts, results and dead letters.
//! - [`state`]: per-agent key/value state with TTL, on NATS KV or Redis.
//! - [`presence`]: heartbeats, who is online, and `agent_offline` events.
//! - [`redact`]: keeping passwords out of everything printed or logged.
//!
//! Running a server (finding `nats-server`, the data directory of `agentbus up`,
//! the stream topology, monitoring, `agentbus check`) is the `agentbus-ops`
//! crate's: agents do not carry it.

mod agent;
mod client;
mod clock;
pub mod connect;
pub mod delivery;
pub mod events;
mod jetstream_errors;
mod name;
pub mod presence;
mod protocol;
pub mod redact;
mod runtime;
pub mod state;
pub mod subject;
mod task_id;

pub use agent::{Agent, AgentMessage, MessageChannel, TaskContext, TaskError, TaskTypeSpec};
pub use client::{
    Bus, Event, EventDecodeError, PublishError, PublishErrorKind, RequestOptions, SendTaskError,
    SendTaskErrorKind, SubscribeError, SubscribeErrorKind, Subscription,
};
pub use connect::{ConnectError, ServerTarget};
pub use name::{InvalidName, MAX_NAME_LEN, Name};
pub use protocol::{Priority, RequestError, TaskRequest, TaskResponse, TaskStatus};
pub use runtime::discovery;
pub use runtime::{
    AgentOptions, AgentStats, InvalidSchema, Runtime, RuntimeError, RuntimeErrorKind,
};
pub use task_id::{InvalidTaskId, MAX_TASK_ID_LEN, TaskId};
