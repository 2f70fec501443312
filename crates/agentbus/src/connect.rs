//! Finding the NATS server and connecting to it.
//!
//! The server is taken from, in order: an explicit URL (`--server`), the
//! `NATS_URL` environment variable, or `<data-dir>/connection.env` written by
//! `agentbus up` (the data directory is `--data-dir`, else `AGENTBUS_DATA_DIR`,
//! else `./.agentbus`: see [`resolve_data_dir`]). Credentials come from the
//! URL's user-info, else from `NATS_CREDS`, `NATS_NKEY` (a file holding an
//! nkey seed), `NATS_TOKEN` or `NATS_USER`/`NATS_PASSWORD`. `AGENTBUS_AGENT`
//! names the agent whose identity those credentials are (the env file
//! `agentbus creds add` writes sets it): the connection then sends as that
//! agent and keeps its replies under `_INBOX.<agent>`, the only inbox its
//! identity may read. URLs are only ever shown without their password. A `tls://` URL requires TLS; `NATS_CA` names
//! a PEM file of certificate authorities to trust besides the system's (for a
//! server with a private CA or a self-signed certificate).

use crate::name::{InvalidName, Name};
use crate::redact::{Redacted, split_userinfo};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Name of the file `agentbus up` writes in its data directory.
pub const CONNECTION_FILE: &str = "connection.env";
/// Default data directory of `agentbus up`, relative to the working directory.
pub const DEFAULT_DATA_DIR: &str = ".agentbus";
/// Variable naming the data directory of `agentbus up`.
pub const DATA_DIR_VAR: &str = "AGENTBUS_DATA_DIR";
/// Variable holding the server URL, as NATS clients name it.
pub const NATS_URL_VAR: &str = "NATS_URL";
/// Variable holding the monitoring endpoint URL.
pub const MONITOR_URL_VAR: &str = "AGENTBUS_MONITOR_URL";
/// Variable holding the URL of the bus's web dashboard.
pub const DASHBOARD_URL_VAR: &str = "AGENTBUS_DASHBOARD_URL";
/// Variable holding the token the dashboard asks for.
pub const DASHBOARD_TOKEN_VAR: &str = "AGENTBUS_DASHBOARD_TOKEN";
/// Variable naming a PEM file of extra certificate authorities to trust.
pub const CA_FILE_VAR: &str = "NATS_CA";
/// Variable naming a file that holds an nkey seed.
pub const NKEY_VAR: &str = "NATS_NKEY";
/// Variable naming the agent whose identity the credentials are.
pub const AGENT_VAR: &str = "AGENTBUS_AGENT";
/// Variable naming the shared work queues (`work.<type>`) an agent identity
/// may take tasks from, comma-separated (`agentbus creds add --work-type`).
pub const WORK_TYPES_VAR: &str = "AGENTBUS_WORK_TYPES";
/// The user of the operator identity `agentbus up` keeps for itself and the
/// operator commands: it may do everything.
pub const OPERATOR_USER: &str = "agentbus";

const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// How to authenticate to the server.
#[derive(Clone, PartialEq, Eq)]
pub enum Credentials {
    /// No credentials.
    None,
    /// User and password.
    UserPassword {
        /// The user.
        user: String,
        /// Its password.
        password: String,
    },
    /// A token.
    Token(String),
    /// A `.creds` file (JWT and nkey seed).
    CredsFile(PathBuf),
    /// A file holding an nkey seed (`SU...`).
    NkeyFile(PathBuf),
    /// An nkey seed (`SU...`) held in memory.
    NkeySeed(String),
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::None => f.write_str("None"),
            Self::UserPassword { user, .. } => write!(f, "UserPassword({user}, ***)"),
            Self::Token(_) => f.write_str("Token(***)"),
            Self::CredsFile(path) => write!(f, "CredsFile({})", path.display()),
            Self::NkeyFile(path) => write!(f, "NkeyFile({})", path.display()),
            Self::NkeySeed(_) => f.write_str("NkeySeed(***)"),
        }
    }
}

/// Where the server URL came from, so errors can point at it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TargetSource {
    /// The `--server` flag or an explicit argument.
    Explicit,
    /// The `NATS_URL` environment variable.
    Environment,
    /// A `connection.env` file written by `agentbus up`.
    ConnectionFile(PathBuf),
    /// An agent's env file written by `agentbus creds add`.
    EnvFile(PathBuf),
}

impl std::fmt::Display for TargetSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Explicit => f.write_str("--server"),
            Self::Environment => f.write_str(NATS_URL_VAR),
            Self::ConnectionFile(path) | Self::EnvFile(path) => write!(f, "{}", path.display()),
        }
    }
}

/// The data directory of `agentbus up`, where its `connection.env` is: `flag`
/// (a `--data-dir` option), else `AGENTBUS_DATA_DIR`, else `./.agentbus`.
pub fn resolve_data_dir(flag: Option<&Path>) -> PathBuf {
    flag.map(Path::to_path_buf)
        .or_else(|| {
            std::env::var_os(DATA_DIR_VAR)
                .filter(|v| !v.is_empty())
                .map(PathBuf::from)
        })
        .unwrap_or_else(|| PathBuf::from(DEFAULT_DATA_DIR))
}

/// A server to connect to: its URL without credentials, and the credentials.
#[derive(Debug, Clone)]
pub struct ServerTarget {
    url: String,
    credentials: Credentials,
    source: TargetSource,
    monitor_url: Option<String>,
    ca_file: Option<PathBuf>,
    agent: Option<Name>,
    work_types: Option<Vec<Name>>,
    /// Whether the server refusing an operation is expected (a probe).
    refusals_expected: bool,
}

/// Why no connection could be made. Each message is one sentence saying what to do.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConnectError {
    /// Nothing says where the server is.
    #[error(
        "no NATS server configured: pass --server URL, set NATS_URL, or start one with `agentbus up` (looked for {})",
        .connection_file.display()
    )]
    NoServer {
        /// The `connection.env` looked for.
        connection_file: PathBuf,
    },
    /// A `connection.env` file could not be read.
    #[error("cannot use {}: {source}", .path.display())]
    ConnectionFile {
        /// The file.
        path: PathBuf,
        /// Why it could not be read.
        #[source]
        source: std::io::Error,
    },
    /// A `connection.env` file has no `NATS_URL` line.
    #[error("cannot use {}: it has no NATS_URL line; restart `agentbus up` to rewrite it", .path.display())]
    NoUrlInFile {
        /// The file.
        path: PathBuf,
    },
    /// `AGENTBUS_AGENT` is not an agent name.
    #[error("{AGENT_VAR} is not usable: {source}")]
    InvalidAgent {
        /// Why the name is invalid.
        #[source]
        source: InvalidName,
    },
    /// `AGENTBUS_WORK_TYPES` holds something that is not a task type.
    #[error("{WORK_TYPES_VAR} is not usable: {source}")]
    InvalidWorkTypes {
        /// Why a name is invalid.
        #[source]
        source: InvalidName,
    },
    /// The `.creds` or nkey seed file could not be read.
    #[error("cannot read the NATS credentials file {}: {source}", .path.display())]
    CredsFile {
        /// The file.
        path: PathBuf,
        /// Why it could not be read.
        #[source]
        source: std::io::Error,
    },
    /// The URL is not a valid NATS URL.
    #[error("invalid NATS server URL {url} (from {source_name}): {source}")]
    InvalidUrl {
        /// The URL, without its password.
        url: String,
        /// Where the URL came from.
        source_name: String,
        /// The client's complaint, passwords masked.
        #[source]
        source: Redacted,
    },
    /// The server did not answer.
    #[error(
        "cannot reach NATS at {url} (from {source_name}): {source}; check that the server is running (`agentbus up` starts one)"
    )]
    Unreachable {
        /// The URL, without its password.
        url: String,
        /// Where the URL came from.
        source_name: String,
        /// The client's error, passwords masked.
        #[source]
        source: Redacted,
    },
    /// The server refused the credentials.
    #[error(
        "NATS at {url} refused the credentials (authorization violation); check the user and password in {source_name} or NATS_USER/NATS_PASSWORD"
    )]
    Refused {
        /// The URL, without its password.
        url: String,
        /// Where the URL came from.
        source_name: String,
    },
    /// The server refused an nkey (an agent identity it does not know).
    #[error(
        "NATS at {url} refused the nkey {who}; it may have been revoked or made again (`agentbus creds list` shows the identities, `agentbus creds add` makes a new one)"
    )]
    RefusedKey {
        /// The URL.
        url: String,
        /// Whose key: `of agent <name>`, or where it came from.
        who: String,
    },
    /// TLS could not be set up.
    #[error(
        "TLS to NATS at {url} failed: {source}; a tls:// URL needs a server with TLS, and a certificate from a private CA needs NATS_CA set to that CA's PEM file"
    )]
    Tls {
        /// The URL, without its password.
        url: String,
        /// The handshake's error, passwords masked.
        #[source]
        source: Redacted,
    },
}

/// Why no connection could be made, as a kind to match.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ConnectErrorKind {
    /// Nothing says where the server is, or the URL or its file is unusable.
    NotConfigured,
    /// The credentials file cannot be read.
    Credentials,
    /// The server did not answer.
    Unreachable,
    /// The server refused the credentials.
    Refused,
    /// TLS could not be set up.
    Tls,
}

impl ConnectError {
    /// Why no connection could be made.
    pub fn kind(&self) -> ConnectErrorKind {
        match self {
            Self::NoServer { .. }
            | Self::ConnectionFile { .. }
            | Self::NoUrlInFile { .. }
            | Self::InvalidUrl { .. }
            | Self::InvalidAgent { .. }
            | Self::InvalidWorkTypes { .. } => ConnectErrorKind::NotConfigured,
            Self::CredsFile { .. } => ConnectErrorKind::Credentials,
            Self::Unreachable { .. } => ConnectErrorKind::Unreachable,
            Self::Refused { .. } | Self::RefusedKey { .. } => ConnectErrorKind::Refused,
            Self::Tls { .. } => ConnectErrorKind::Tls,
        }
    }
}

impl ServerTarget {
    /// Resolves the server from `explicit`, the process environment, or the
    /// `connection.env` in `data_dir`, in that order.
    pub fn resolve(explicit: Option<&str>, data_dir: &Path) -> Result<Self, ConnectError> {
        Self::resolve_with(explicit, data_dir, |key| std::env::var(key).ok())
    }

    /// Like [`ServerTarget::resolve`], reading variables through `env`.
    pub fn resolve_with(
        explicit: Option<&str>,
        data_dir: &Path,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Self, ConnectError> {
        let env_value = |key: &str| env(key).filter(|v| !v.trim().is_empty());
        let mut target = if let Some(url) = explicit {
            Self::from_url(url, TargetSource::Explicit)
        } else if let Some(url) = env_value(NATS_URL_VAR) {
            Self::from_url(&url, TargetSource::Environment)
        } else {
            let path = data_dir.join(CONNECTION_FILE);
            if !path.exists() {
                return Err(ConnectError::NoServer {
                    connection_file: path,
                });
            }
            let file = ConnectionFile::read(&path)?;
            let mut target = Self::from_url(&file.nats_url, TargetSource::ConnectionFile(path));
            target.monitor_url = file.monitor_url;
            target
        };
        if target.credentials == Credentials::None {
            target.credentials = credentials_from_env(&env_value);
        }
        if let Some(url) = env_value(MONITOR_URL_VAR) {
            target.monitor_url = Some(url);
        }
        target.ca_file = env_value(CA_FILE_VAR).map(PathBuf::from);
        if let Some(agent) = env_value(AGENT_VAR) {
            let agent = Name::parse("agent name", agent.trim())
                .map_err(|source| ConnectError::InvalidAgent { source })?;
            target.agent = Some(agent);
        }
        // Present and empty: no shared queue at all.
        if let Some(list) = env(WORK_TYPES_VAR) {
            let types = list
                .split(',')
                .map(str::trim)
                .filter(|t| !t.is_empty())
                .map(|t| Name::parse("task type", t))
                .collect::<Result<_, _>>()
                .map_err(|source| ConnectError::InvalidWorkTypes { source })?;
            target.work_types = Some(types);
        }
        Ok(target)
    }

    /// The target an agent's env file (`KEY=VALUE` lines, as `agentbus
    /// creds add` writes them) describes, read as [`ServerTarget::resolve`]
    /// reads the environment; `NATS_CA` and `AGENTBUS_MONITOR_URL` may also
    /// come from the process environment.
    pub fn from_env_file(path: &Path) -> Result<Self, ConnectError> {
        let text = read_file(path)?;
        let vars: std::collections::HashMap<&str, &str> = variables(&text).collect();
        let Some(url) = vars.get(NATS_URL_VAR) else {
            return Err(ConnectError::NoUrlInFile {
                path: path.to_owned(),
            });
        };
        let mut target = Self::resolve_with(Some(url), Path::new(""), |key| {
            vars.get(key)
                .map(|value| (*value).to_owned())
                .or_else(|| transport_var(key))
        })?;
        target.source = TargetSource::EnvFile(path.to_owned());
        Ok(target)
    }

    /// The target the `connection.env` of `agentbus up` in `data_dir`
    /// describes (the operator identity), whatever `NATS_URL`, credentials
    /// or agent the process environment holds (an agent's env file sourced
    /// in the shell); `NATS_CA` and `AGENTBUS_MONITOR_URL` may come from it.
    pub fn from_connection_file(data_dir: &Path) -> Result<Self, ConnectError> {
        Self::resolve_with(None, data_dir, transport_var)
    }

    /// A target for `url`, taking credentials from its user-info. `url` may
    /// be a comma-separated seed list of a cluster's servers, as NATS clients
    /// take it; the first user-info in it gives the credentials.
    pub fn from_url(url: &str, source: TargetSource) -> Self {
        let mut credentials = Credentials::None;
        let mut servers = Vec::new();
        for one in url.split(',').map(str::trim).filter(|one| !one.is_empty()) {
            let (bare, userinfo) = split_userinfo(one);
            if let (Credentials::None, Some(info)) = (&credentials, userinfo) {
                credentials = match info.split_once(':') {
                    Some((user, password)) => Credentials::UserPassword {
                        user: percent_decode(user),
                        password: percent_decode(password),
                    },
                    None => Credentials::Token(percent_decode(&info)),
                };
            }
            servers.push(bare);
        }
        Self {
            url: servers.join(","),
            credentials,
            source,
            monitor_url: None,
            ca_file: None,
            agent: None,
            work_types: None,
            refusals_expected: false,
        }
    }

    /// Says that the connection will try what its identity may not, and
    /// that the server refusing it is expected (a check's probe): refusals
    /// are then logged at debug level rather than as warnings.
    #[must_use]
    pub fn with_refusals_expected(mut self) -> Self {
        self.refusals_expected = true;
        self
    }

    /// The servers to try, in order: one, or a cluster's seed list.
    pub fn servers(&self) -> Vec<&str> {
        self.url.split(',').collect()
    }

    /// Says that the credentials are agent `agent`'s identity.
    #[must_use]
    pub fn with_agent(mut self, agent: Option<Name>) -> Self {
        self.agent = agent;
        self
    }

    /// The agent whose identity the credentials are (`AGENTBUS_AGENT`), if any.
    pub fn agent(&self) -> Option<&Name> {
        self.agent.as_ref()
    }

    /// Says which shared work queues the agent identity may take tasks
    /// from (`None`: not known).
    #[must_use]
    pub fn with_work_types(mut self, work_types: Option<Vec<Name>>) -> Self {
        self.work_types = work_types;
        self
    }

    /// The task types whose shared queues (`work.<type>`) the agent identity
    /// may take tasks from (`AGENTBUS_WORK_TYPES`), when known.
    pub fn work_types(&self) -> Option<&[Name]> {
        self.work_types.as_deref()
    }

    /// Whether the credentials are the operator identity of `agentbus up`
    /// (user [`OPERATOR_USER`]), which may do everything.
    pub fn is_operator(&self) -> bool {
        matches!(&self.credentials, Credentials::UserPassword { user, .. } if user == OPERATOR_USER)
    }

    /// Replaces the credentials.
    #[must_use]
    pub fn with_credentials(mut self, credentials: Credentials) -> Self {
        self.credentials = credentials;
        self
    }

    /// Sets the monitoring endpoint URL.
    #[must_use]
    pub fn with_monitor_url(mut self, url: Option<String>) -> Self {
        self.monitor_url = url;
        self
    }

    /// Trusts the certificate authorities in the PEM file `path` too (for TLS).
    #[must_use]
    pub fn with_ca_file(mut self, path: Option<PathBuf>) -> Self {
        self.ca_file = path;
        self
    }

    /// The extra certificate authorities to trust, when set.
    pub fn ca_file(&self) -> Option<&Path> {
        self.ca_file.as_deref()
    }

    /// The server URL without credentials: safe to print.
    pub fn display_url(&self) -> &str {
        &self.url
    }

    /// The credentials.
    pub fn credentials(&self) -> &Credentials {
        &self.credentials
    }

    /// Where the URL came from.
    pub fn source(&self) -> &TargetSource {
        &self.source
    }

    /// The monitoring endpoint, when known (from `AGENTBUS_MONITOR_URL` or `connection.env`).
    pub fn monitor_url(&self) -> Option<&str> {
        self.monitor_url.as_deref()
    }

    /// Connects with options suited to agents: a client name, a bounded
    /// connect timeout, and transparent reconnects afterwards.
    pub async fn connect(&self, client_name: &str) -> Result<async_nats::Client, ConnectError> {
        let options = self
            .options()
            .await?
            .name(client_name)
            .connection_timeout(CONNECT_TIMEOUT)
            .event_callback({
                let refusals_expected = self.refusals_expected;
                move |event| async move { log_event(&event, refusals_expected) }
            });
        options
            .connect(self.servers())
            .await
            .map_err(|err| self.connect_error(err))
    }

    async fn options(&self) -> Result<async_nats::ConnectOptions, ConnectError> {
        let mut options = async_nats::ConnectOptions::new();
        if let Some(agent) = &self.agent {
            options = options.custom_inbox_prefix(crate::subject::agent_reply_prefix(agent));
        }
        if let Some(path) = &self.ca_file {
            options = options.add_root_certificates(path.clone());
        }
        Ok(match &self.credentials {
            Credentials::None => options,
            Credentials::UserPassword { user, password } => {
                options.user_and_password(user.clone(), password.clone())
            }
            Credentials::Token(token) => options.token(token.clone()),
            Credentials::NkeyFile(path) => {
                let seed =
                    std::fs::read_to_string(path).map_err(|source| ConnectError::CredsFile {
                        path: path.clone(),
                        source,
                    })?;
                options.nkey(seed.trim().to_owned())
            }
            Credentials::NkeySeed(seed) => options.nkey(seed.clone()),
            Credentials::CredsFile(path) => {
                options
                    .credentials_file(path)
                    .await
                    .map_err(|source| ConnectError::CredsFile {
                        path: path.clone(),
                        source,
                    })?
            }
        })
    }

    fn connect_error(&self, err: async_nats::ConnectError) -> ConnectError {
        use async_nats::ConnectErrorKind as Kind;
        let url = self.url.clone();
        let source_name = self.source.to_string();
        // The error text may echo the URL; never let a password through.
        let source = Redacted::from_error(&err);
        match err.kind() {
            Kind::AuthorizationViolation | Kind::Authentication => {
                let who = match (&self.agent, &self.credentials) {
                    (Some(agent), Credentials::NkeyFile(_) | Credentials::NkeySeed(_)) => {
                        format!("of agent {agent}")
                    }
                    (None, Credentials::NkeyFile(path)) => format!("in {}", path.display()),
                    (None, Credentials::NkeySeed(_)) => "given".to_owned(),
                    _ => return ConnectError::Refused { url, source_name },
                };
                ConnectError::RefusedKey { url, who }
            }
            Kind::ServerParse => ConnectError::InvalidUrl {
                url,
                source_name,
                source,
            },
            Kind::Tls => ConnectError::Tls { url, source },
            // rustls failures (an untrusted certificate, a server without TLS)
            // surface as I/O errors: they are not a reachability problem.
            Kind::Io if is_tls_failure(source.as_str()) => ConnectError::Tls { url, source },
            Kind::Dns | Kind::TimedOut | Kind::Io | Kind::MaxReconnects => {
                ConnectError::Unreachable {
                    url,
                    source_name,
                    source,
                }
            }
        }
    }
}

/// Logs a connection event: what the server refused (a permission
/// violation is an agent trying what its identity does not allow) is a
/// warning, the rest is information.
fn log_event(event: &async_nats::Event, refusals_expected: bool) {
    use async_nats::{Event, ServerError};
    match event {
        Event::ServerError(ServerError::Other(text))
            if text.to_ascii_lowercase().contains("permissions violation") =>
        {
            if refusals_expected {
                tracing::debug!(%event, "the server refused an operation, as expected");
            } else {
                tracing::warn!(%event, "the server refused an operation this identity is not allowed");
            }
        }
        Event::ServerError(ServerError::AuthorizationViolation) => {
            tracing::warn!(%event, "the server refused the credentials");
        }
        Event::SlowConsumer(_) | Event::ServerError(_) | Event::ClientError(_) => {
            tracing::warn!(%event, "nats connection event");
        }
        _ => tracing::info!(%event, "nats connection event"),
    }
}

/// Whether an I/O error's text is a TLS handshake failure.
fn is_tls_failure(reason: &str) -> bool {
    let reason = reason.to_ascii_lowercase();
    [
        "certificate",
        "handshake",
        "corrupt message",
        "invalidcontenttype",
    ]
    .iter()
    .any(|sign| reason.contains(sign))
}

fn credentials_from_env(env: &impl Fn(&str) -> Option<String>) -> Credentials {
    if let Some(path) = env("NATS_CREDS") {
        Credentials::CredsFile(PathBuf::from(path))
    } else if let Some(path) = env(NKEY_VAR) {
        Credentials::NkeyFile(PathBuf::from(path))
    } else if let Some(token) = env("NATS_TOKEN") {
        Credentials::Token(token)
    } else if let (Some(user), Some(password)) = (env("NATS_USER"), env("NATS_PASSWORD")) {
        Credentials::UserPassword { user, password }
    } else {
        Credentials::None
    }
}

/// Decodes `%XX` escapes in URL user-info (passwords may contain reserved characters).
fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && let Some(b) = s
                .get(i + 1..i + 3)
                .and_then(|hex| u8::from_str_radix(hex, 16).ok())
        {
            out.push(b);
            i += 3;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// A variable of the process environment that says how to reach the
/// server, not who connects: `NATS_CA` and `AGENTBUS_MONITOR_URL`.
fn transport_var(key: &str) -> Option<String> {
    [CA_FILE_VAR, MONITOR_URL_VAR]
        .contains(&key)
        .then(|| std::env::var(key).ok())
        .flatten()
}

/// Reads a file of variables (`connection.env`, an agent's env file).
fn read_file(path: &Path) -> Result<String, ConnectError> {
    std::fs::read_to_string(path).map_err(|source| ConnectError::ConnectionFile {
        path: path.to_owned(),
        source,
    })
}

/// The `KEY=VALUE` lines of `text`, trimmed; comments (`#`) left out.
fn variables(text: &str) -> impl Iterator<Item = (&str, &str)> {
    text.lines()
        .map(str::trim)
        .filter(|line| !line.starts_with('#'))
        .filter_map(|line| line.split_once('='))
        .map(|(key, value)| (key.trim(), value.trim()))
}

/// The contents of `connection.env`: `KEY=VALUE` lines.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectionFile {
    /// `NATS_URL`, with credentials.
    pub nats_url: String,
    /// `AGENTBUS_MONITOR_URL`, when present.
    pub monitor_url: Option<String>,
    /// `AGENTBUS_DASHBOARD_URL`, when the dashboard runs.
    pub dashboard_url: Option<String>,
    /// `AGENTBUS_DASHBOARD_TOKEN`, when the dashboard runs.
    pub dashboard_token: Option<String>,
}

impl ConnectionFile {
    /// Reads and parses a connection file.
    pub fn read(path: &Path) -> Result<Self, ConnectError> {
        let text = read_file(path)?;
        Self::parse(&text).ok_or_else(|| ConnectError::NoUrlInFile {
            path: path.to_owned(),
        })
    }

    /// Parses `KEY=VALUE` lines; `None` when `NATS_URL` is missing.
    pub fn parse(text: &str) -> Option<Self> {
        let mut nats_url = None;
        let mut monitor_url = None;
        let mut dashboard_url = None;
        let mut dashboard_token = None;
        for (key, value) in variables(text) {
            let value = Some(value.to_owned());
            match key {
                NATS_URL_VAR => nats_url = value,
                MONITOR_URL_VAR => monitor_url = value,
                DASHBOARD_URL_VAR => dashboard_url = value,
                DASHBOARD_TOKEN_VAR => dashboard_token = value,
                _ => {}
            }
        }
        Some(Self {
            nats_url: nats_url?,
            monitor_url,
            dashboard_url,
            dashboard_token,
        })
    }

    /// Renders the file, one `KEY=VALUE` per line.
    pub fn render(&self) -> String {
        let mut text = format!(
            "# Written by `agentbus up`; contains a password: keep it private.\n{NATS_URL_VAR}={}\n",
            self.nats_url
        );
        for (key, value) in [
            (MONITOR_URL_VAR, &self.monitor_url),
            (DASHBOARD_URL_VAR, &self.dashboard_url),
            (DASHBOARD_TOKEN_VAR, &self.dashboard_token),
        ] {
            if let Some(value) = value {
                text.push_str(&format!("{key}={value}\n"));
            }
        }
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn env(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |key| map.get(key).cloned()
    }

    #[test]
    fn explicit_beats_environment_beats_file() {
        let dir = tempfile::tempdir().unwrap();
        let secret = uuid::Uuid::new_v4().simple().to_string();
        std::fs::write(
            dir.path().join(CONNECTION_FILE),
            format!("NATS_URL=nats://agentbus:{secret}@127.0.0.1:1\nAGENTBUS_MONITOR_URL=http://127.0.0.1:2\n"),
        )
        .unwrap();
        let from_env = format!("nats://e:{secret}@127.0.0.1:3");
        let pairs = [("NATS_URL", from_env.as_str())];
        let vars = env(&pairs);

        let t = ServerTarget::resolve_with(Some("nats://127.0.0.1:4"), dir.path(), &vars).unwrap();
        assert_eq!(
            (t.display_url(), t.source()),
            ("nats://127.0.0.1:4", &TargetSource::Explicit)
        );

        let t = ServerTarget::resolve_with(None, dir.path(), &vars).unwrap();
        assert_eq!(t.display_url(), "nats://127.0.0.1:3");
        assert_eq!(
            t.credentials(),
            &Credentials::UserPassword {
                user: "e".into(),
                password: secret.clone()
            }
        );

        let t = ServerTarget::resolve_with(None, dir.path(), env(&[])).unwrap();
        assert_eq!(t.display_url(), "nats://127.0.0.1:1");
        assert_eq!(t.monitor_url(), Some("http://127.0.0.1:2"));
        assert!(matches!(t.source(), TargetSource::ConnectionFile(_)));
    }

    #[test]
    fn credentials_from_environment_apply_when_url_has_none() {
        let dir = tempfile::tempdir().unwrap();
        let vars = env(&[("NATS_USER", "u"), ("NATS_PASSWORD", "p")]);
        let t = ServerTarget::resolve_with(Some("nats://h:1"), dir.path(), &vars).unwrap();
        assert_eq!(
            t.credentials(),
            &Credentials::UserPassword {
                user: "u".into(),
                password: "p".into()
            }
        );
        let t =
            ServerTarget::resolve_with(Some("nats://h:1"), dir.path(), env(&[("NATS_TOKEN", "t")]))
                .unwrap();
        assert_eq!(t.credentials(), &Credentials::Token("t".into()));
    }

    #[test]
    fn an_env_file_gives_the_agent_and_its_granted_work_types() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("alice.env");
        std::fs::write(
            &file,
            "# comment\nNATS_URL=nats://h:1\nNATS_NKEY=/keys/alice.nk\nAGENTBUS_AGENT=alice\nAGENTBUS_WORK_TYPES=echo, summarize\n",
        )
        .unwrap();
        let t = ServerTarget::from_env_file(&file).unwrap();
        assert_eq!(t.agent().map(Name::as_str), Some("alice"));
        assert_eq!(
            t.credentials(),
            &Credentials::NkeyFile("/keys/alice.nk".into())
        );
        let types: Vec<&str> = t.work_types().unwrap().iter().map(Name::as_str).collect();
        assert_eq!(types, ["echo", "summarize"]);
        assert!(matches!(t.source(), TargetSource::EnvFile(_)));
        // Present and empty: no shared queue; absent: not known.
        let none = env(&[("AGENTBUS_WORK_TYPES", "")]);
        let t = ServerTarget::resolve_with(Some("nats://h:1"), dir.path(), none).unwrap();
        assert_eq!(t.work_types(), Some(&[][..]));
        let t = ServerTarget::resolve_with(Some("nats://h:1"), dir.path(), env(&[])).unwrap();
        assert_eq!(t.work_types(), None);
        let bad = env(&[("AGENTBUS_WORK_TYPES", "echo,$bad")]);
        let err = ServerTarget::resolve_with(Some("nats://h:1"), dir.path(), bad).unwrap_err();
        assert_eq!(err.kind(), ConnectErrorKind::NotConfigured);
        assert!(
            err.to_string()
                .starts_with("AGENTBUS_WORK_TYPES is not usable"),
            "{err}"
        );
    }

    #[test]
    fn nothing_configured_names_every_way() {
        let dir = tempfile::tempdir().unwrap();
        let err = ServerTarget::resolve_with(None, dir.path(), env(&[])).unwrap_err();
        let text = err.to_string();
        for needle in ["--server", "NATS_URL", "agentbus up", "connection.env"] {
            assert!(text.contains(needle), "{text}");
        }
    }

    #[test]
    fn debug_never_shows_secrets() {
        let secret = uuid::Uuid::new_v4().simple().to_string();
        let t = ServerTarget::from_url(
            &format!("nats://agentbus:{secret}@h:1"),
            TargetSource::Explicit,
        );
        let shown = format!("{t:?}");
        assert!(!shown.contains(&secret), "{shown}");
        assert_eq!(t.display_url(), "nats://h:1");
    }

    #[test]
    fn percent_escapes_in_passwords_are_decoded() {
        let escaped = ["a", "%40", "b", "%3A"].concat();
        let t = ServerTarget::from_url(&format!("nats://u:{escaped}@h:1"), TargetSource::Explicit);
        assert_eq!(
            t.credentials(),
            &Credentials::UserPassword {
                user: "u".into(),
                password: "a@b:".into()
            }
        );
    }

    #[test]
    fn connection_file_round_trips() {
        let file = ConnectionFile {
            nats_url: format!(
                "nats://agentbus:{}@127.0.0.1:4222",
                uuid::Uuid::new_v4().simple()
            ),
            monitor_url: Some("http://127.0.0.1:8222".into()),
            dashboard_url: Some("http://127.0.0.1:8223".into()),
            dashboard_token: Some(uuid::Uuid::new_v4().simple().to_string()),
        };
        assert_eq!(ConnectionFile::parse(&file.render()), Some(file));
        assert_eq!(ConnectionFile::parse("# nothing\n"), None);
    }
}
