//! The server's HTTP monitoring endpoint: `/varz` (server), `/jsz`
//! (JetStream) and `/connz` (client connections).

use agentbus::redact::redact_url;
use serde::Deserialize;
use std::time::Duration;

const TIMEOUT: Duration = Duration::from_secs(5);

/// The parts of `/varz` agentbus shows.
#[derive(Debug, Clone, Deserialize, serde::Serialize)]
pub struct Varz {
    /// Server name.
    pub server_name: String,
    /// Server version.
    pub version: String,
    /// Uptime as the server formats it, e.g. `1h2m3s`.
    pub uptime: String,
    /// Current client connections.
    pub connections: u64,
    /// Resident memory in bytes.
    pub mem: u64,
    /// CPU use in percent.
    #[serde(default)]
    pub cpu: f64,
    /// Messages received since start.
    #[serde(default)]
    pub in_msgs: u64,
    /// Messages sent since start.
    #[serde(default)]
    pub out_msgs: u64,
    /// Largest accepted payload in bytes.
    #[serde(default)]
    pub max_payload: u64,
    /// Clients cut off since start for not reading fast enough.
    #[serde(default)]
    pub slow_consumers: u64,
}

/// The parts of `/jsz` agentbus shows.
#[derive(Debug, Clone, Deserialize, serde::Serialize)]
pub struct Jsz {
    /// Memory used by memory-backed streams, in bytes.
    #[serde(default)]
    pub memory: u64,
    /// Disk used by file-backed streams, in bytes.
    #[serde(default)]
    pub storage: u64,
    /// Number of streams.
    #[serde(default)]
    pub streams: u64,
    /// Number of consumers.
    #[serde(default)]
    pub consumers: u64,
    /// Messages stored.
    #[serde(default)]
    pub messages: u64,
    /// Bytes stored.
    #[serde(default)]
    pub bytes: u64,
}

/// One client connection as `/connz?auth=1&subs=detail` shows it.
#[derive(Debug, Clone, Deserialize, serde::Serialize)]
pub struct Connection {
    /// The name the client gave, if any.
    #[serde(default)]
    pub name: Option<String>,
    /// The user it authenticated as (an nkey's public key for an nkey user).
    #[serde(default)]
    pub authorized_user: Option<String>,
    /// Its subscriptions.
    #[serde(default, rename = "subscriptions_list_detail")]
    pub subscriptions: Vec<Subscription>,
}

/// One subscription of a connection.
#[derive(Debug, Clone, Deserialize, serde::Serialize)]
pub struct Subscription {
    /// The subject or pattern.
    pub subject: String,
    /// Its queue group, if any.
    #[serde(default)]
    pub qgroup: Option<String>,
}

/// One page of `/connz`.
#[derive(Debug, Deserialize)]
struct ConnzPage {
    #[serde(default)]
    connections: Vec<Connection>,
    #[serde(default)]
    total: usize,
}

/// The parts of `/routez` agentbus reads.
#[derive(Debug, Deserialize)]
struct Routez {
    #[serde(default)]
    routes: Vec<RouteInfo>,
}

#[derive(Debug, Deserialize)]
struct RouteInfo {
    #[serde(default)]
    remote_name: Option<String>,
}

/// Connections asked per page of `/connz`.
const CONNZ_PAGE: usize = 1024;

/// Why the monitoring endpoint could not be read. The URL it shows has any
/// password masked, and its cause carries no URL.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
#[error(
    "cannot read the NATS monitoring endpoint {url}: {}; check AGENTBUS_MONITOR_URL or that the server runs with monitoring (`agentbus up` enables it)",
    describe(.source)
)]
pub struct MonitorError {
    kind: MonitorErrorKind,
    url: String,
    #[source]
    source: reqwest::Error,
}

/// Why the monitoring endpoint could not be read, as a kind to match.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum MonitorErrorKind {
    /// No answer: the server is down, monitoring is off, or it timed out.
    Unreachable,
    /// The endpoint answered with an HTTP error status.
    Status,
    /// The answer was not the expected JSON.
    InvalidResponse,
}

impl MonitorError {
    fn new(kind: MonitorErrorKind, url: &str, source: reqwest::Error) -> Self {
        Self {
            kind,
            url: redact_url(url),
            // The message names the URL once, masked; the client's error would again.
            source: source.without_url(),
        }
    }

    /// Why the endpoint could not be read.
    pub fn kind(&self) -> MonitorErrorKind {
        self.kind
    }

    /// The URL asked, with any password masked.
    pub fn url(&self) -> &str {
        &self.url
    }
}

/// A client for one server's monitoring endpoint.
#[derive(Clone)]
pub struct Monitor {
    base: String,
    http: reqwest::Client,
}

impl std::fmt::Debug for Monitor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Monitor")
            .field("base", &redact_url(&self.base))
            .finish_non_exhaustive()
    }
}

impl Monitor {
    /// A client for the endpoint at `base`, e.g. `http://127.0.0.1:8222`.
    pub fn new(base: &str) -> Self {
        let http = reqwest::Client::builder()
            .timeout(TIMEOUT)
            .build()
            .unwrap_or_default();
        Self {
            base: base.trim_end_matches('/').to_owned(),
            http,
        }
    }

    /// Reads `/varz`.
    pub async fn varz(&self) -> Result<Varz, MonitorError> {
        self.get("varz").await
    }

    /// Reads `/jsz`.
    pub async fn jsz(&self) -> Result<Jsz, MonitorError> {
        self.get("jsz").await
    }

    /// The names of the servers this one has routes to, as `/routez`
    /// lists them: a name once per route (a pool holds several per server).
    pub async fn route_names(&self) -> Result<Vec<String>, MonitorError> {
        let routez: Routez = self.get("routez").await?;
        Ok(routez
            .routes
            .into_iter()
            .filter_map(|route| route.remote_name)
            .collect())
    }

    /// Every client connection, with its user and subscriptions, read page
    /// by page from `/connz`.
    pub async fn connections(&self) -> Result<Vec<Connection>, MonitorError> {
        let mut all = Vec::new();
        loop {
            let page: ConnzPage = self
                .get(&format!(
                    "connz?auth=1&subs=detail&offset={}&limit={CONNZ_PAGE}",
                    all.len()
                ))
                .await?;
            let last = page.connections.len() < CONNZ_PAGE
                || all.len() + page.connections.len() >= page.total;
            all.extend(page.connections);
            if last {
                return Ok(all);
            }
        }
    }

    async fn get<T: serde::de::DeserializeOwned>(&self, path: &str) -> Result<T, MonitorError> {
        use MonitorErrorKind::{InvalidResponse, Status, Unreachable};
        let url = format!("{}/{path}", self.base);
        let response = self
            .http
            .get(&url)
            .send()
            .await
            .map_err(|err| MonitorError::new(Unreachable, &url, err))?;
        let response = response
            .error_for_status()
            .map_err(|err| MonitorError::new(Status, &url, err))?;
        response
            .json()
            .await
            .map_err(|err| MonitorError::new(InvalidResponse, &url, err))
    }
}

/// The client's error and its first cause: its own text alone is as vague as
/// "error sending request".
fn describe(err: &reqwest::Error) -> String {
    let source = std::error::Error::source(err).map(ToString::to_string);
    let text = err.to_string();
    match source {
        Some(source) if !text.contains(&source) => format!("{text} ({source})"),
        _ => text,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use agentbus_testkit::ClosedPort;

    /// Everything an error can show: its message, its debug form and its causes.
    fn everything_shown(err: &MonitorError) -> Vec<String> {
        let mut shown = vec![err.to_string(), format!("{err:?}")];
        let mut cause = std::error::Error::source(err);
        while let Some(next) = cause {
            shown.push(next.to_string());
            shown.push(format!("{next:?}"));
            cause = next.source();
        }
        shown
    }

    #[tokio::test]
    async fn an_unreachable_endpoint_never_shows_its_password() {
        let closed = ClosedPort::new();
        let base = format!("http://watcher:pw-never-shown@127.0.0.1:{}", closed.port());
        let monitor = Monitor::new(&base);
        assert!(!format!("{monitor:?}").contains("pw-never-shown"));
        let err = monitor.varz().await.unwrap_err();
        assert_eq!(err.kind(), MonitorErrorKind::Unreachable, "{err}");
        let masked = format!("http://watcher:***@127.0.0.1:{}/varz", closed.port());
        assert_eq!(err.url(), masked);
        assert!(
            err.to_string().starts_with(&format!(
                "cannot read the NATS monitoring endpoint {masked}: "
            )),
            "{err}"
        );
        for text in everything_shown(&err) {
            assert!(!text.contains("pw-never-shown"), "{text}");
        }
    }
}
