//! The MCP bridge of agentbus: the LLM agent behind an MCP client joins the
//! bus under a name, for as long as the bridge runs, through tools over stdio.
//!
//! ```no_run
//! # async fn example(bus: agentbus::Bus) -> Result<(), agentbus_mcp::BridgeError> {
//! use agentbus_mcp::{BridgeOptions, serve_stdio};
//! let agent = agentbus::Name::parse("agent name", "claude").expect("valid");
//! serve_stdio(bus, BridgeOptions::new(agent), std::future::pending()).await
//! # }
//! ```
//!
//! The agent gets what a runtime agent has: a durable inbox, a work queue,
//! key/value state and a presence heartbeat; and it reaches the others by
//! message, broadcast, request/reply and queued task, following a task that
//! takes long through its event log, cancelling it or answering its
//! handler's questions (also as MCP tasks, for clients of MCP's tasks
//! extension). Contents written by other agents always reach the model
//! marked as untrusted data (`untrusted.rs`).
//!
//! # Layout
//!
//! - `run`: joining the bus, serving MCP until the client leaves, leaving cleanly;
//!   `startup_error`: telling the client why the bridge could not start.
//! - `bridge`: the MCP server: capabilities, the inbox resource, subscriptions.
//! - `tasks_extension`: MCP's tasks extension (`tasks/get|update|cancel`)
//!   over agentbus tasks returned by `request_task`.
//! - `tools`: the tools and their fixed descriptions; `params`: their inputs.
//! - `follow`: following tasks sent to other agents (`task_status`,
//!   `watch_task`, `cancel_task`, `answer_task`, `request_task`'s handle).
//! - `inbox`: the agent's durable inbox; `transport`: the stdio transport
//!   that acknowledges read messages once their result is written.
//! - `claims`: tasks claimed from the agent's own queue, kept in progress.
//! - `notify`: telling the client when messages arrive.
//! - `untrusted`: marking what other agents wrote; `tool_error`: errors the model reads.

mod bridge;
mod claims;
mod follow;
mod inbox;
mod notify;
mod params;
mod run;
mod startup_error;
mod tasks_extension;
mod tool_error;
mod tools;
mod transport;
mod untrusted;

pub use bridge::Bridge;
pub use claims::CLAIM_LEASE;
pub use run::{
    BridgeError, BridgeErrorKind, BridgeOptions, JoinedBridge, join, serve, serve_stdio,
};
pub use startup_error::serve_stdio as serve_startup_error;
pub use tool_error::{ToolError, ToolErrorKind};
