//! agentbus-dashboard: a live web view of one agent bus, and Prometheus
//! metrics of the whole bus.
//!
//! The page shows, pushed to the browser as it changes (server-sent
//! events): tasks counted by state, the agents online with their counts and
//! run times, every work queue by priority with its oldest waiting task,
//! how full each stream is, the dead letters with a replay action, a live
//! tail of any subject pattern, and a page per task with its event timeline
//! and its cancel and answer actions. `/metrics` serves the same figures
//! in the Prometheus text format.
//!
//! Everything behind it is one token ([`DashboardOptions::token`]): sent as
//! `Authorization: Bearer <token>`, typed into the login form, or passed
//! once as `?token=` on any page, which sets a session cookie and sends the
//! browser to the same page without it.
//!
//! ```no_run
//! # async fn example(bus: agentbus::Bus) -> Result<(), Box<dyn std::error::Error>> {
//! use agentbus_dashboard::{Dashboard, DashboardOptions};
//! let options = DashboardOptions::new("127.0.0.1:0".parse()?, "a-long-random-token".into());
//! let dashboard = Dashboard::start(bus, options).await?;
//! println!("open {}", dashboard.login_url());
//! # Ok(()) }
//! ```
//!
//! # Layout
//!
//! - `live`: what the page shows, gathered from the bus: platform events,
//!   task logs and presence as they come, streams, consumers and dead
//!   letters read every [`DashboardOptions::poll`];
//! - `bus_metrics`: the same figures as Prometheus metrics;
//! - `auth`: the token, the session cookie and the login form;
//! - `api`: the routes, JSON and server-sent events, and the actions;
//! - `assets`: the page itself, HTML, CSS and plain JavaScript built into
//!   the binary.

mod api;
mod assets;
mod auth;
mod bus_metrics;
mod live;

use agentbus::Bus;
use std::net::SocketAddr;
use std::time::Duration;

/// How a dashboard runs.
#[derive(Clone)]
pub struct DashboardOptions {
    /// Where it listens; port 0 picks a free port.
    pub address: SocketAddr,
    /// What a browser or a scraper must show.
    pub token: String,
    /// How often streams, queues and dead letters are read (less often
    /// while a read takes more than a quarter of it).
    pub poll: Duration,
    /// Where presence lives: `None` for NATS KV, else a `redis://` URL.
    pub state_url: Option<String>,
}

impl std::fmt::Debug for DashboardOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DashboardOptions")
            .field("address", &self.address)
            .field("token", &"***")
            .field("poll", &self.poll)
            .field(
                "state_url",
                &self.state_url.as_deref().map(agentbus::redact::redact_url),
            )
            .finish()
    }
}

impl DashboardOptions {
    /// Listens on `address` behind `token`, reading the bus every 2 s.
    pub fn new(address: SocketAddr, token: String) -> Self {
        Self {
            address,
            token,
            poll: Duration::from_secs(2),
            state_url: None,
        }
    }
}

/// Why a dashboard could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DashboardError {
    /// The address could not be bound.
    #[error(
        "cannot serve the dashboard on {address}: {source}; pass another --dashboard-port (0 picks a free one)"
    )]
    Bind {
        /// The address asked for.
        address: SocketAddr,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The token is too short to keep anyone out.
    #[error("the dashboard token must be at least {MIN_TOKEN_LEN} characters")]
    WeakToken,
    /// The presence store could not be opened.
    #[error("cannot read presence for the dashboard: {0}")]
    State(#[from] agentbus::state::StateError),
    /// The bus's events could not be followed.
    #[error("cannot follow the bus's events for the dashboard: {0}")]
    Subscribe(#[from] agentbus::SubscribeError),
}

/// The shortest token accepted.
pub const MIN_TOKEN_LEN: usize = 16;

/// A running dashboard; it stops when dropped or with [`Dashboard::stop`].
#[derive(Debug)]
pub struct Dashboard {
    address: SocketAddr,
    token: String,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    server: tokio::task::JoinHandle<()>,
    live: live::Handle,
}

impl Dashboard {
    /// Starts following `bus` and serving the page on `options.address`.
    pub async fn start(bus: Bus, options: DashboardOptions) -> Result<Self, DashboardError> {
        if options.token.len() < MIN_TOKEN_LEN {
            return Err(DashboardError::WeakToken);
        }
        let listener = tokio::net::TcpListener::bind(options.address)
            .await
            .map_err(|source| DashboardError::Bind {
                address: options.address,
                source,
            })?;
        let address = listener
            .local_addr()
            .map_err(|source| DashboardError::Bind {
                address: options.address,
                source,
            })?;
        let live = live::Live::start(bus, options.state_url.as_deref(), options.poll).await?;
        let app = api::router(live.shared(), auth::Auth::new(options.token.clone()));
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(async move {
            let serving = axum::serve(listener, app).with_graceful_shutdown(async move {
                let _ = stopped.await;
            });
            if let Err(err) = serving.await {
                tracing::warn!(%err, "the dashboard stopped serving");
            }
        });
        Ok(Self {
            address,
            token: options.token,
            stop: Some(stop),
            server,
            live,
        })
    }

    /// The address it listens on.
    pub fn address(&self) -> SocketAddr {
        self.address
    }

    /// Its URL, such as `http://127.0.0.1:8223/`.
    pub fn url(&self) -> String {
        format!("http://{}/", self.address)
    }

    /// The token it asks for.
    pub fn token(&self) -> &str {
        &self.token
    }

    /// Its URL with the token, which opens it logged in.
    pub fn login_url(&self) -> String {
        format!("{}?token={}", self.url(), self.token)
    }

    /// Stops serving (open event streams end) and following the bus.
    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        self.live.stop();
        // Event streams kept open by browsers would hold a graceful stop.
        if tokio::time::timeout(Duration::from_secs(2), &mut self.server)
            .await
            .is_err()
        {
            self.server.abort();
        }
    }
}

impl Drop for Dashboard {
    fn drop(&mut self) {
        self.server.abort();
        self.live.stop();
    }
}
