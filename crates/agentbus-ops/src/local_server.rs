//! Running a local `nats-server` as a supervised child process.
//!
//! [`crate::LocalBus`] starts it; `agentbus up`, `agentbus bench` and the test
//! kit then hold the [`LocalServer`] until they stop it. The server gets a
//! generated config in its directory: JetStream storage there, the requested
//! (or random) ports, authentication with one user whose password reaches the
//! server through an environment variable, so it never lands in the config file.
//! On Linux the child is asked to die with its parent, so no server outlives
//! the process that started it, even when that process is killed. It runs in
//! a process group of its own: Ctrl-C in a terminal signals the foreground
//! group, and the process that started the server is the one to stop it.

use crate::private_file::write_private;
use agentbus::connect::{Credentials, ServerTarget, TargetSource};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::{Duration, Instant};
use tokio::process::{Child, Command};

use crate::identity::{AUTH_FILE, Identities, PASSWORD_VAR, PID_FILE};
const START_TIMEOUT: Duration = Duration::from_secs(20);
/// File name of the generated server configuration.
pub const CONFIG_FILE: &str = "nats.conf";
/// File name of the server's log (its stderr).
pub const LOG_FILE: &str = "nats-server.log";

/// How to run a local server.
#[derive(Clone)]
pub struct LocalServerConfig {
    /// The `nats-server` executable.
    pub binary: PathBuf,
    /// Directory holding the config, log, ports file and JetStream store.
    pub dir: PathBuf,
    /// Address to bind the client port to.
    pub host: String,
    /// Client port; 0 picks a free one.
    pub port: u16,
    /// Address to bind the HTTP monitoring port to: it has no authentication.
    pub monitor_host: String,
    /// Monitoring port; 0 picks a free one.
    pub monitor_port: u16,
    /// The one user allowed to connect.
    pub user: String,
    /// Its password.
    pub password: String,
    /// Optional server name (shown by `server_info`); unique in a cluster.
    pub server_name: String,
    /// The cluster this server is a node of; `None` runs it alone.
    pub cluster: Option<ClusterRoutes>,
    /// Where the agent identities it accepts are kept (`agentbus creds`);
    /// `None`: in `dir`. A further node of a cluster names the first
    /// node's directory.
    pub identities_dir: Option<PathBuf>,
}

/// How a node reaches the other nodes of its cluster: routes on loopback
/// ports fixed before any node starts (each node names all of them), with
/// one route user that every node accepts and uses.
#[derive(Clone)]
pub struct ClusterRoutes {
    /// The cluster's name (the same on every node).
    pub name: String,
    /// Address the route port binds to.
    pub host: String,
    /// This node's route port.
    pub port: u16,
    /// The route ports this node dials: every node's, this one's included
    /// (a node ignores a route to itself).
    pub ports: Vec<u16>,
    /// The address other nodes are told to reach this one at, when not its
    /// route port (`cluster.advertise`); nodes dial it when they learn of
    /// this node from a third one.
    pub advertise: Option<String>,
    /// The route user.
    pub user: String,
    /// Its password: in the config file (mode 0600), never in a log.
    pub password: String,
}

impl std::fmt::Debug for ClusterRoutes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterRoutes")
            .field("name", &self.name)
            .field("host", &self.host)
            .field("port", &self.port)
            .field("ports", &self.ports)
            .field("advertise", &self.advertise)
            .field("user", &self.user)
            .finish_non_exhaustive()
    }
}

/// Makes `configs` the nodes of one cluster named `name`: each gets a
/// route port on `host` picked now, every node's port to dial, and one
/// route user with a password made for this start.
pub fn route_as_cluster(
    configs: &mut [LocalServerConfig],
    name: &str,
    host: &str,
) -> std::io::Result<()> {
    let ports = free_route_ports(host, configs.len())?;
    let password = crate::data_dir::new_password();
    for (config, port) in configs.iter_mut().zip(&ports) {
        config.cluster = Some(ClusterRoutes {
            name: name.to_owned(),
            host: host.to_owned(),
            port: *port,
            ports: ports.clone(),
            advertise: None,
            user: "route".to_owned(),
            password: password.clone(),
        });
    }
    Ok(())
}

/// Free ports on `host` for the routes of a cluster of `nodes` nodes: each
/// bound once by the system's choice and released, so that every node can
/// be told every other node's port before any of them starts.
fn free_route_ports(host: &str, nodes: usize) -> std::io::Result<Vec<u16>> {
    // All held at once, so the system hands out distinct ports.
    let listeners = (0..nodes)
        .map(|_| TcpListener::bind(socket_address(host, 0)))
        .collect::<std::io::Result<Vec<_>>>()?;
    listeners
        .iter()
        .map(|listener| listener.local_addr().map(|addr| addr.port()))
        .collect()
}

impl std::fmt::Debug for LocalServerConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalServerConfig")
            .field("binary", &self.binary)
            .field("dir", &self.dir)
            .field("host", &self.host)
            .field("port", &self.port)
            .field("monitor_host", &self.monitor_host)
            .field("monitor_port", &self.monitor_port)
            .field("user", &self.user)
            .field("cluster", &self.cluster)
            .finish_non_exhaustive()
    }
}

/// Why a local server could not be started.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LocalServerError {
    /// A file in the server directory could not be written.
    #[error("cannot write {}: {source}; check that the directory is writable", .path.display())]
    Write {
        /// The file.
        path: PathBuf,
        /// Why it could not be written.
        #[source]
        source: std::io::Error,
    },
    /// The requested port is taken.
    #[error(
        "{what} port {port} on {host} is already in use; stop what listens there or pass {flag} 0 to pick a free port"
    )]
    PortInUse {
        /// Which port: `client` or `monitoring`.
        what: &'static str,
        /// The address it was to be bound on.
        host: String,
        /// The port.
        port: u16,
        /// The command-line flag that sets it.
        flag: &'static str,
    },
    /// The process could not be spawned.
    #[error("cannot start {}: {source}", .binary.display())]
    Spawn {
        /// The `nats-server` executable.
        binary: PathBuf,
        /// Why it could not be started.
        #[source]
        source: std::io::Error,
    },
    /// The server exited while starting.
    #[error("nats-server exited while starting ({status}); its last log lines:\n{log_tail}")]
    ExitedEarly {
        /// How it exited.
        status: ExitStatus,
        /// The last lines of its log.
        log_tail: String,
    },
    /// The server did not report its ports in time.
    #[error("nats-server did not become ready within {} s; its last log lines:\n{log_tail}", START_TIMEOUT.as_secs())]
    NotReady {
        /// The last lines of its log.
        log_tail: String,
    },
}

/// Why a local server could not be started, as a kind to match.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum LocalServerErrorKind {
    /// The server's directory is not writable.
    Write,
    /// A requested port is taken.
    PortInUse,
    /// The `nats-server` executable could not be run.
    Spawn,
    /// The server exited before it listened (its log says why).
    ExitedEarly,
    /// The server did not listen in time.
    NotReady,
}

impl LocalServerError {
    /// Why the server could not be started.
    pub fn kind(&self) -> LocalServerErrorKind {
        match self {
            Self::Write { .. } => LocalServerErrorKind::Write,
            Self::PortInUse { .. } => LocalServerErrorKind::PortInUse,
            Self::Spawn { .. } => LocalServerErrorKind::Spawn,
            Self::ExitedEarly { .. } => LocalServerErrorKind::ExitedEarly,
            Self::NotReady { .. } => LocalServerErrorKind::NotReady,
        }
    }
}

/// A running local server; killed when dropped.
#[derive(Debug)]
pub struct LocalServer {
    child: Child,
    pid: u32,
    client_url: String,
    monitor_url: String,
    user: String,
    password: String,
    dir: PathBuf,
}

impl LocalServer {
    /// Writes the config and starts the server, without waiting for it
    /// ([`crate::LocalBus::start`] waits until it is ready).
    pub(crate) fn spawn(config: &LocalServerConfig) -> Result<Self, LocalServerError> {
        check_ports_free(
            &config.host,
            config.port,
            &config.monitor_host,
            config.monitor_port,
        )?;
        let identities = config.identities_dir.as_deref().unwrap_or(&config.dir);
        Identities::load(identities)
            .map(|ids| ids.authorization(&config.user))
            .and_then(|text| {
                let path = config.dir.join(AUTH_FILE);
                write_private(&path, &text)
                    .map(|()| path)
                    .map_err(|source| crate::identity::IdentityError::File {
                        path: config.dir.join(AUTH_FILE),
                        source,
                    })
            })
            .map_err(|err| LocalServerError::Write {
                path: config.dir.join(AUTH_FILE),
                source: std::io::Error::other(err.to_string()),
            })?;
        let config_path = config.dir.join(CONFIG_FILE);
        write_private(&config_path, &render_config(config)).map_err(|source| {
            LocalServerError::Write {
                path: config_path.clone(),
                source,
            }
        })?;
        remove_stale_ports_files(&config.dir);
        let log_path = config.dir.join(LOG_FILE);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .map_err(|source| LocalServerError::Write {
                path: log_path.clone(),
                source,
            })?;
        let log_err = log.try_clone().map_err(|source| LocalServerError::Write {
            path: log_path.clone(),
            source,
        })?;
        let mut command = Command::new(&config.binary);
        command
            .arg("-c")
            .arg(&config_path)
            .env(PASSWORD_VAR, &config.password)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log_err)
            .process_group(0)
            .kill_on_drop(true);
        die_with_parent(&mut command);
        let child = command.spawn().map_err(|source| LocalServerError::Spawn {
            binary: config.binary.clone(),
            source,
        })?;
        let pid = child.id().unwrap_or_default();
        Ok(Self {
            child,
            pid,
            client_url: String::new(),
            monitor_url: String::new(),
            user: config.user.clone(),
            password: config.password.clone(),
            dir: config.dir.clone(),
        })
    }

    /// Starts a server as `config` says and waits until it listens; it is
    /// stopped again when it does not. No readiness of JetStream or of its
    /// cluster is awaited ([`crate::LocalBus`] and [`crate::LocalCluster`] do that).
    pub async fn start(config: &LocalServerConfig) -> Result<Self, LocalServerError> {
        let mut server = Self::spawn(config)?;
        if let Err(err) = server.wait_for_ports(config).await {
            let _ = server.stop(Duration::from_secs(10)).await;
            return Err(err);
        }
        Ok(server)
    }

    /// Waits until the server (started with `config`) reports the ports it listens on.
    pub(crate) async fn wait_for_ports(
        &mut self,
        config: &LocalServerConfig,
    ) -> Result<(), LocalServerError> {
        let ports_file = self.dir.join(format!("nats-server_{}.ports", self.pid));
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Some(status) = self.child.try_wait().ok().flatten() {
                let log_tail = self.log_tail(15);
                if log_tail.contains("address already in use") {
                    // Someone took the port between our check and the server's bind.
                    let monitoring = config.monitor_port != 0
                        && log_tail.contains(&format!(":{}", config.monitor_port));
                    let (what, host, port, flag) = if monitoring {
                        (
                            "monitoring",
                            &config.monitor_host,
                            config.monitor_port,
                            "--monitor-port",
                        )
                    } else {
                        ("client", &config.host, config.port, "--port")
                    };
                    return Err(LocalServerError::PortInUse {
                        what,
                        host: host.clone(),
                        port,
                        flag,
                    });
                }
                return Err(LocalServerError::ExitedEarly { status, log_tail });
            }
            if let Some((client, monitor)) = read_ports_file(&ports_file) {
                self.client_url = client;
                self.monitor_url = monitor;
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(LocalServerError::NotReady {
                    log_tail: self.log_tail(15),
                });
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Process id of the server.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Client URL without credentials, e.g. `nats://127.0.0.1:4222`.
    pub fn client_url(&self) -> &str {
        &self.client_url
    }

    /// Client URL with the user and password: a secret, never print it.
    pub fn client_url_with_credentials(&self) -> String {
        let rest = self.client_url.trim_start_matches("nats://");
        format!("nats://{}:{}@{rest}", self.user, self.password)
    }

    /// The server as agentbus clients find it: its client URL, the user and
    /// password, and its monitoring URL.
    pub fn target(&self) -> ServerTarget {
        ServerTarget::from_url(&self.client_url, TargetSource::Explicit)
            .with_credentials(Credentials::UserPassword {
                user: self.user.clone(),
                password: self.password.clone(),
            })
            .with_monitor_url(Some(self.monitor_url.clone()).filter(|url| !url.is_empty()))
    }

    /// Monitoring URL, e.g. `http://127.0.0.1:8222`.
    pub fn monitor_url(&self) -> &str {
        &self.monitor_url
    }

    /// The user allowed to connect.
    pub fn user(&self) -> &str {
        &self.user
    }

    /// Its password: a secret, never print it.
    pub fn password(&self) -> &str {
        &self.password
    }

    /// The server's directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// How the server exited, if it did (without waiting).
    pub fn exited(&mut self) -> std::io::Result<Option<ExitStatus>> {
        self.child.try_wait()
    }

    /// Waits for the server process to exit.
    pub async fn wait(&mut self) -> std::io::Result<ExitStatus> {
        self.child.wait().await
    }

    /// Stops the server: SIGTERM (it flushes JetStream and exits), then SIGKILL
    /// after `grace`.
    pub async fn stop(&mut self, grace: Duration) -> std::io::Result<ExitStatus> {
        if let Some(status) = self.child.try_wait()? {
            return Ok(status);
        }
        send_sigterm(self.pid);
        match tokio::time::timeout(grace, self.child.wait()).await {
            Ok(status) => status,
            Err(_) => {
                self.child.kill().await?;
                self.child.wait().await
            }
        }
    }

    /// Kills the server at once (SIGKILL: nothing is flushed), as a crash would.
    pub async fn kill(&mut self) -> std::io::Result<()> {
        self.child.kill().await
    }

    /// The server's log file (its stdout and stderr).
    pub fn log_file(&self) -> PathBuf {
        self.dir.join(LOG_FILE)
    }

    /// The last `lines` lines of the server log.
    pub fn log_tail(&self, lines: usize) -> String {
        log_tail(&self.log_file(), lines)
    }
}

/// The last `lines` lines of a log file, or a note that it could not be read.
pub fn log_tail(path: &Path, lines: usize) -> String {
    match std::fs::read_to_string(path) {
        Ok(text) => {
            let all: Vec<&str> = text.lines().collect();
            all[all.len().saturating_sub(lines)..].join("\n")
        }
        Err(err) => format!("(cannot read {}: {err})", path.display()),
    }
}

fn render_config(config: &LocalServerConfig) -> String {
    let port = |p: u16| if p == 0 { -1 } else { i32::from(p) };
    let dir = config.dir.display();
    // Monitoring listens on the client host unless `http` names another one.
    let monitoring = if config.monitor_host == config.host {
        format!("http_port: {}", port(config.monitor_port))
    } else {
        let address = socket_address(&config.monitor_host, port(config.monitor_port));
        format!("http: {address:?}")
    };
    let cluster = config
        .cluster
        .as_ref()
        .map(render_cluster)
        .unwrap_or_default();
    format!(
        r#"# Generated by agentbus at every start; edits are overwritten.
server_name: {name:?}
host: {host:?}
port: {port}
{monitoring}
ports_file_dir: "{dir}"
pid_file: "{dir}/{PID_FILE}"
jetstream {{
  store_dir: "{dir}"
}}
{cluster}# The operator and every agent identity (`agentbus creds`).
include "{AUTH_FILE}"
"#,
        name = config.server_name,
        host = config.host,
        port = port(config.port),
    )
}

fn render_cluster(routes: &ClusterRoutes) -> String {
    let urls: Vec<String> = routes
        .ports
        .iter()
        .map(|port| {
            let address = socket_address(&routes.host, port);
            format!(
                "    {:?}",
                format!("nats-route://{}:{}@{address}", routes.user, routes.password)
            )
        })
        .collect();
    let advertise = routes
        .advertise
        .as_ref()
        .map(|address| format!("  advertise: {address:?}\n"))
        .unwrap_or_default();
    format!(
        r#"cluster {{
  name: {name:?}
  listen: {listen:?}
{advertise}  authorization {{
    user: {user:?}
    password: {password:?}
  }}
  routes: [
{urls}
  ]
}}
"#,
        name = routes.name,
        listen = socket_address(&routes.host, routes.port),
        user = routes.user,
        password = routes.password,
        urls = urls.join("\n"),
    )
}

/// Fails when the client port on `host` or the monitoring port on
/// `monitor_host` (either unless 0) is already taken.
pub fn check_ports_free(
    host: &str,
    port: u16,
    monitor_host: &str,
    monitor_port: u16,
) -> Result<(), LocalServerError> {
    check_port_free(host, port, "client", "--port")?;
    check_port_free(monitor_host, monitor_port, "monitoring", "--monitor-port")
}

/// `host:port`, with an IPv6 host in brackets.
fn socket_address(host: &str, port: impl std::fmt::Display) -> String {
    if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

fn check_port_free(
    host: &str,
    port: u16,
    what: &'static str,
    flag: &'static str,
) -> Result<(), LocalServerError> {
    if port == 0 {
        return Ok(());
    }
    match TcpListener::bind(socket_address(host, port)) {
        Err(err) if err.kind() == std::io::ErrorKind::AddrInUse => {
            Err(LocalServerError::PortInUse {
                what,
                host: host.to_owned(),
                port,
                flag,
            })
        }
        _ => Ok(()),
    }
}

fn remove_stale_ports_files(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if name.starts_with("nats-server_") && name.ends_with(".ports") {
            let _ = std::fs::remove_file(entry.path());
        }
    }
}

fn read_ports_file(path: &Path) -> Option<(String, String)> {
    #[derive(serde::Deserialize)]
    struct Ports {
        nats: Vec<String>,
        monitoring: Option<Vec<String>>,
    }
    let text = std::fs::read_to_string(path).ok()?;
    let ports: Ports = serde_json::from_str(&text).ok()?;
    let client = ports.nats.into_iter().next()?;
    let monitor = ports
        .monitoring
        .and_then(|m| m.into_iter().next())
        .unwrap_or_default();
    Some((client, monitor))
}

#[allow(unsafe_code)]
fn die_with_parent(command: &mut Command) {
    #[cfg(target_os = "linux")]
    // SAFETY: prctl is async-signal-safe and touches no memory of the parent.
    unsafe {
        command.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// Asks the server `pid` to reload its configuration (SIGHUP); `false`
/// when there is no such process.
#[allow(unsafe_code)]
pub(crate) fn send_reload(pid: u32) -> bool {
    let Ok(pid) = libc::pid_t::try_from(pid) else {
        return false;
    };
    // SAFETY: kill(2) has no memory effects; the pid is the server's own,
    // read from the pid file it writes.
    unsafe { libc::kill(pid, libc::SIGHUP) == 0 }
}

#[allow(unsafe_code)]
fn send_sigterm(pid: u32) {
    if let Ok(pid) = libc::pid_t::try_from(pid) {
        // SAFETY: kill(2) with a pid we spawned and still own (not yet reaped).
        unsafe {
            libc::kill(pid, libc::SIGTERM);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_keeps_the_password_out() {
        let config = LocalServerConfig {
            binary: "nats-server".into(),
            dir: "/data".into(),
            host: "127.0.0.1".into(),
            port: 0,
            monitor_host: "127.0.0.1".into(),
            monitor_port: 8222,
            user: "agentbus".into(),
            password: "hunter2".into(),
            server_name: "agentbus".into(),
            cluster: None,
            identities_dir: None,
        };
        let text = render_config(&config);
        assert!(!text.contains("hunter2"));
        assert!(text.contains("port: -1\n"));
        assert!(text.contains("http_port: 8222\n"));
        // The users live in the included authorization block, which reads
        // the password from the server's environment.
        assert!(
            text.contains(&format!("include \"{AUTH_FILE}\"\n")),
            "{text}"
        );
        let dir = tempfile::tempdir().unwrap();
        let auth = Identities::load(dir.path())
            .unwrap()
            .authorization(&config.user);
        assert!(auth.contains("password: $AGENTBUS_NATS_PASSWORD"), "{auth}");
        assert!(!auth.contains("hunter2"));
        assert!(!format!("{config:?}").contains("hunter2"));
    }

    #[test]
    fn monitoring_on_another_host_is_bound_there() {
        let config = |host: &str, monitor_host: &str| LocalServerConfig {
            binary: "nats-server".into(),
            dir: "/data".into(),
            host: host.into(),
            port: 4222,
            monitor_host: monitor_host.into(),
            monitor_port: 0,
            user: "agentbus".into(),
            password: "secret".into(),
            server_name: "agentbus".into(),
            cluster: None,
            identities_dir: None,
        };
        let text = render_config(&config("0.0.0.0", "127.0.0.1"));
        assert!(text.contains("host: \"0.0.0.0\"\n"), "{text}");
        assert!(text.contains("http: \"127.0.0.1:-1\"\n"), "{text}");
        assert!(!text.contains("http_port"), "{text}");
        let text = render_config(&config("0.0.0.0", "::1"));
        assert!(text.contains("http: \"[::1]:-1\"\n"), "{text}");
    }

    fn config_in(dir: &Path, binary: &str) -> LocalServerConfig {
        LocalServerConfig {
            binary: binary.into(),
            dir: dir.to_owned(),
            host: "127.0.0.1".into(),
            port: 0,
            monitor_host: "127.0.0.1".into(),
            monitor_port: 0,
            user: "agentbus".into(),
            password: "secret".into(),
            server_name: "agentbus".into(),
            cluster: None,
            identities_dir: None,
        }
    }

    #[test]
    fn a_missing_binary_is_a_spawn_error_with_its_cause() {
        let dir = tempfile::tempdir().unwrap();
        let err =
            LocalServer::spawn(&config_in(dir.path(), "/nonexistent/nats-server")).unwrap_err();
        assert_eq!(err.kind(), LocalServerErrorKind::Spawn);
        let source = std::error::Error::source(&err)
            .and_then(|s| s.downcast_ref::<std::io::Error>())
            .expect("the spawn's I/O error");
        assert_eq!(source.kind(), std::io::ErrorKind::NotFound);
        assert_eq!(
            err.to_string(),
            format!("cannot start /nonexistent/nats-server: {source}")
        );
    }

    #[test]
    fn a_missing_directory_is_a_write_error() {
        let dir = tempfile::tempdir().unwrap();
        let config = config_in(&dir.path().join("missing"), "nats-server");
        let err = LocalServer::spawn(&config).unwrap_err();
        assert_eq!(err.kind(), LocalServerErrorKind::Write, "{err}");
        assert!(
            err.to_string()
                .ends_with("check that the directory is writable"),
            "{err}"
        );
    }

    #[test]
    fn a_taken_port_is_named_with_its_flag() {
        let taken = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = taken.local_addr().unwrap().port();
        let err = check_ports_free("127.0.0.1", 0, "127.0.0.1", port).unwrap_err();
        assert_eq!(err.kind(), LocalServerErrorKind::PortInUse);
        assert_eq!(
            err.to_string(),
            format!(
                "monitoring port {port} on 127.0.0.1 is already in use; stop what listens there or pass --monitor-port 0 to pick a free port"
            )
        );
    }
}
