//! A real `redis-server` for tests: loopback only, a random free port, a
//! generated password, no persistence, a temporary directory, killed on drop.
//!
//! `redis-server` comes from `PATH`. When it is missing and the tests run as
//! root on a machine with `apt-get`, Debian's `redis-server` package is
//! installed once (a lock file keeps parallel test processes from racing);
//! otherwise the test panics saying how to install it. Redis tests are never
//! skipped silently.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// How long a started server may take to answer PING.
const READY_TIMEOUT: Duration = Duration::from_secs(20);
/// Ports tried before giving up (another process may take a port we picked).
const PORT_ATTEMPTS: usize = 10;

/// A running `redis-server` with a password (`requirepass`) and expired-key
/// notifications on (`notify-keyspace-events Ex`).
#[derive(Debug)]
pub struct RedisServer {
    child: Child,
    port: u16,
    password: String,
    _dir: tempfile::TempDir,
}

impl RedisServer {
    /// Starts a server on a free loopback port and waits until it answers PING.
    pub async fn start() -> Self {
        let binary = redis_server_binary();
        let password = uuid::Uuid::new_v4().simple().to_string();
        let dir = tempfile::tempdir().expect("create a temporary directory");
        let mut last_error = String::new();
        for _ in 0..PORT_ATTEMPTS {
            let port = free_port();
            let mut child = spawn(&binary, dir.path(), port, &password);
            match wait_ready(&mut child, port, &password).await {
                Ok(()) => {
                    return Self {
                        child,
                        port,
                        password,
                        _dir: dir,
                    };
                }
                Err(err) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    last_error = err;
                }
            }
        }
        let log = std::fs::read_to_string(dir.path().join("redis.log")).unwrap_or_default();
        panic!(
            "redis-server did not start after {PORT_ATTEMPTS} attempts ({last_error}); its log:\n{log}"
        );
    }

    /// `redis://:<password>@127.0.0.1:<port>/0`.
    pub fn url(&self) -> String {
        self.url_with_password(&self.password)
    }

    /// The URL with another password (to test refusals).
    pub fn url_with_password(&self, password: &str) -> String {
        format!("redis://:{password}@127.0.0.1:{}/0", self.port)
    }

    /// The port it listens on (127.0.0.1).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The generated password.
    pub fn password(&self) -> &str {
        &self.password
    }

    /// The server process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn spawn(binary: &Path, dir: &Path, port: u16, password: &str) -> Child {
    let port = port.to_string();
    Command::new(binary)
        .args(["--bind", "127.0.0.1", "--port", &port])
        .args(["--save", "", "--appendonly", "no"])
        .arg("--dir")
        .arg(dir)
        .arg("--logfile")
        .arg(dir.join("redis.log"))
        .args(["--requirepass", password])
        .args(["--notify-keyspace-events", "Ex"])
        .args(["--daemonize", "no"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|err| panic!("cannot start {}: {err}", binary.display()))
}

/// A port that was free a moment ago (redis-server has no `--port 0`).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("bind a loopback port")
        .port()
}

/// Waits until the server answers an authenticated PING, or fails if it
/// exits (its port was taken) or takes too long.
async fn wait_ready(child: &mut Child, port: u16, password: &str) -> Result<(), String> {
    let deadline = Instant::now() + READY_TIMEOUT;
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            return Err(format!("redis-server exited with {status}"));
        }
        if ping(port, password).await.is_ok() {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(format!("no answer to PING within {READY_TIMEOUT:?}"));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn ping(port: u16, password: &str) -> std::io::Result<()> {
    let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
    let command = format!(
        "*2\r\n$4\r\nAUTH\r\n${}\r\n{password}\r\n*1\r\n$4\r\nPING\r\n",
        password.len()
    );
    stream.write_all(command.as_bytes()).await?;
    let mut answer = Vec::new();
    let mut buffer = [0u8; 64];
    while !answer.ends_with(b"+PONG\r\n") {
        let read = tokio::time::timeout(Duration::from_secs(2), stream.read(&mut buffer))
            .await
            .map_err(|_| std::io::Error::other("timed out"))??;
        if read == 0 || answer.len() > 1024 {
            return Err(std::io::Error::other("no PONG"));
        }
        answer.extend_from_slice(&buffer[..read]);
    }
    Ok(())
}

/// The `redis-server` binary tests use, located (or installed) once per process.
pub fn redis_server_binary() -> PathBuf {
    static BINARY: OnceLock<PathBuf> = OnceLock::new();
    BINARY.get_or_init(locate_or_install).clone()
}

fn locate_or_install() -> PathBuf {
    crate::debian::debian_program("redis-server", "redis-server", "the Redis tests")
}
