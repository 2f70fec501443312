//! A `nats-server` run with arguments the test chooses, for configurations
//! [`crate::NatsServer`] does not make (no authentication, TLS, ...).

use std::ffi::OsStr;
use std::process::Stdio;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, BufReader};

/// How long the server may take to say it is ready.
const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// A `nats-server` started with the test's own arguments; killed on drop.
#[derive(Debug)]
pub struct CustomNatsServer {
    _process: tokio::process::Child,
    address: String,
}

impl CustomNatsServer {
    /// Starts `nats-server ARGS` and waits until it is ready. The arguments
    /// must make it listen on a free port (`-p -1`, or `listen: "host:-1"`).
    pub async fn start<S: AsRef<OsStr>>(args: impl IntoIterator<Item = S>) -> Self {
        let mut process = tokio::process::Command::new(crate::nats_server_binary())
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("start nats-server");
        let mut lines = BufReader::new(process.stderr.take().expect("piped stderr")).lines();
        let mut address = None;
        let ready = tokio::time::timeout(READY_TIMEOUT, async {
            while let Some(line) = lines.next_line().await.expect("read nats-server's log") {
                if let Some((_, addr)) = line.split_once("Listening for client connections on ") {
                    address = Some(addr.trim().to_owned());
                }
                if line.contains("Server is ready") {
                    return;
                }
            }
            panic!("nats-server exited before it was ready");
        })
        .await;
        assert!(
            ready.is_ok(),
            "nats-server was not ready within {READY_TIMEOUT:?}"
        );
        // Keep reading, so the server never blocks on a full stderr pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        Self {
            _process: process,
            address: address.expect("nats-server logged its client port"),
        }
    }

    /// Where clients connect: `host:port`.
    pub fn address(&self) -> &str {
        &self.address
    }
}
