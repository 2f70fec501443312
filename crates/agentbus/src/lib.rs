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
//! - [`demo`]: three demo scenarios as agents (`agentbus up --demo`).
//! - [`redact`]: keeping passwords out of everything printed or logged.
//!
//! Running a server (finding `nats-server`, the data directory of `agentbus up`,
//! the stream topology, monitoring, `agentbus check`) is the `agentbus-ops`
//! crate's: agents do not carry it.

pub mod agent;
pub mod client;
pub mod connect;
pub mod delivery;
pub mod demo;
pub mod discovery;
pub mod name;
pub mod presence;
pub mod protocol;
pub mod redact;
pub mod runtime;
pub mod state;
pub mod subject;

pub use agent::{Agent, AgentMessage, MessageChannel, TaskContext, TaskError, TaskTypeSpec};
pub use client::{Bus, RequestOptions, SendTaskError};
pub use connect::{ConnectError, ServerTarget};
pub use name::{InvalidName, Name};
pub use protocol::{Priority, TaskRequest, TaskResponse, TaskStatus};
pub use runtime::{AgentOptions, Runtime};
