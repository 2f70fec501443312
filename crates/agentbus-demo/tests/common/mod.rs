//! What the Python interop tests share: the virtual environment with the
//! pinned nats-py, the command that runs a script of `tests/python/`, and a
//! Rust runtime the Python side can reach at once.
//!
//! The first test to run creates the virtual environment under the cargo
//! target directory, and later runs reuse it. Python gets the server's URL,
//! credentials included, only through `NATS_URL`.

use agentbus::connect::Credentials;
use agentbus::{Agent, AgentOptions, Bus, Runtime, ServerTarget};
use agentbus_testkit::NatsServer;
use futures::StreamExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::OnceLock;
use std::time::Duration;
use tokio::process::Command;

/// The nats-py release the Python side is tested with.
const NATS_PY_VERSION: &str = "2.16.0";
/// Python start-up, connection and answers together stay well within this.
pub(crate) const WAIT: Duration = Duration::from_secs(30);

/// Serves `agent` and returns once the server knows its subscriptions.
pub(crate) async fn serve<A: Agent>(
    server: &NatsServer,
    agent: A,
    options: AgentOptions,
) -> Runtime {
    let bus = Bus::connect(&server.target(), "rust-agents").await.unwrap();
    let mut runtime = Runtime::new(bus.clone());
    runtime.add(agent, options).await.unwrap();
    // `flush` only writes to the socket; a message to ourselves is a round trip.
    let subject = format!("test.sync.{}", uuid::Uuid::new_v4().simple());
    let mut echo = bus.subscribe(&subject, None).await.unwrap();
    bus.publish(&subject, &()).await.unwrap();
    tokio::time::timeout(WAIT, echo.next())
        .await
        .expect("the server echoes the sync message")
        .expect("the connection is open");
    runtime
}

/// A Python command running `tests/python/<script_name>`, with only the
/// test server's URL as configuration.
pub(crate) fn python_command(python: &Path, server: &NatsServer, script_name: &str) -> Command {
    let script = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/python")
        .join(script_name);
    let mut command = Command::new(python);
    command
        .arg(script)
        .env("NATS_URL", server.url_with_credentials())
        .env("PYTHONUNBUFFERED", "1")
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    command
}

/// Gives `command` the variables of agent identity `target`'s env file
/// (`agentbus creds add` writes them) in place of the test server's user.
#[allow(dead_code)] // Not every test binary runs Python agents with identities.
pub(crate) fn as_identity(command: &mut Command, target: &ServerTarget) {
    let Credentials::NkeyFile(seed) = target.credentials() else {
        panic!("an nkey identity: {target:?}")
    };
    let agent = target.agent().expect("an agent identity");
    command
        .env("NATS_URL", target.display_url())
        .env("NATS_NKEY", seed)
        .env("AGENTBUS_AGENT", agent.as_str());
}

/// The virtual environment's python, with nats-py installed; made once.
pub(crate) fn python() -> &'static Path {
    static PYTHON: OnceLock<PathBuf> = OnceLock::new();
    PYTHON.get_or_init(|| {
        agentbus_testkit::python_venv(
            Path::new(env!("CARGO_TARGET_TMPDIR")),
            // With the nkeys extra: an agent identity is an nkey.
            "nats-py[nkeys]",
            NATS_PY_VERSION,
        )
    })
}
