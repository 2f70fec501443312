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
//! - [`subject`]: the only place where subject strings are built.
//! - [`protocol`]: the wire format of the requirements (TaskRequest, TaskResponse).
//! - [`connect`]: finding the server (`--server`, `NATS_URL`, `connection.env`),
//!   credentials, and connecting with errors a person can act on.
//! - [`topology`]: the streams as declarative data, validated and applied idempotently.
//! - [`server_binary`]: locating (or installing) a recent enough `nats-server`.
//! - [`local_server`]: writing a config for and supervising a local `nats-server`.
//! - [`monitor`]: the HTTP monitoring endpoint (`/varz`, `/jsz`).
//! - [`agent`], [`runtime`], [`client`]: the BaseAgent trait, the runtime that
//!   serves agents, and the client side that sends tasks and events.
//! - [`discovery`]: served agents answer the NATS services protocol (`$SRV.PING|INFO|STATS`).
//! - [`delivery`]: guaranteed delivery on JetStream: work queues, durable
//!   inboxes, broadcasts, results and dead letters.
//! - [`state`]: per-agent key/value state with TTL, on NATS KV or Redis.
//! - [`presence`]: heartbeats, who is online, and `agent_offline` events.
//! - [`data_dir`], [`private_file`]: the data directory of `agentbus up` and its secrets.
//! - [`redact`]: keeping passwords out of everything printed or logged.
//! - [`check`]: the delivery test of the requirements and a configuration doctor.

pub mod agent;
pub mod check;
pub mod client;
pub mod connect;
pub mod data_dir;
pub mod delivery;
pub mod discovery;
pub mod local_server;
pub mod monitor;
pub mod name;
pub mod presence;
pub mod private_file;
pub mod protocol;
pub mod redact;
pub mod runtime;
pub mod server_binary;
pub mod state;
pub mod subject;
pub mod topology;

pub use agent::{Agent, AgentMessage, MessageChannel, TaskContext, TaskError, TaskTypeSpec};
pub use client::{Bus, RequestOptions, SendTaskError};
pub use connect::{ConnectError, ServerTarget};
pub use name::{InvalidName, Name};
pub use protocol::{Priority, TaskRequest, TaskResponse, TaskStatus};
pub use runtime::{AgentOptions, Runtime};
