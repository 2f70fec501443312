//! The server's HTTP monitoring endpoint: `/varz` (server) and `/jsz` (JetStream).

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

/// Why the monitoring endpoint could not be read.
#[derive(Debug, thiserror::Error)]
#[error(
    "cannot read the NATS monitoring endpoint {url}: {reason}; check AGENTBUS_MONITOR_URL or that the server runs with monitoring (`agentbus up` enables it)"
)]
pub struct MonitorError {
    /// The URL asked.
    pub url: String,
    /// What went wrong.
    pub reason: String,
}

/// A client for one server's monitoring endpoint.
#[derive(Debug, Clone)]
pub struct Monitor {
    base: String,
    http: reqwest::Client,
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

    async fn get<T: serde::de::DeserializeOwned>(&self, path: &str) -> Result<T, MonitorError> {
        let url = format!("{}/{path}", self.base);
        let error = |reason: String| MonitorError {
            url: url.clone(),
            reason,
        };
        let response = self
            .http
            .get(&url)
            .send()
            .await
            .map_err(|err| error(describe(err)))?;
        let response = response
            .error_for_status()
            .map_err(|err| error(describe(err)))?;
        response.json().await.map_err(|err| error(describe(err)))
    }
}

fn describe(err: reqwest::Error) -> String {
    let source = std::error::Error::source(&err).map(ToString::to_string);
    let text = err.without_url().to_string();
    match source {
        Some(source) if !text.contains(&source) => format!("{text} ({source})"),
        _ => text,
    }
}
