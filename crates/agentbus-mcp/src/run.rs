//! Running the bridge: join the bus ([`join`]), serve MCP until the client
//! goes away (or `shutdown` resolves), then leave cleanly.

use crate::bridge::{Bridge, Parts};
use crate::claims::Claims;
use crate::inbox::{Inbox, InboxError, Settlements};
use crate::notify::{self, Notifier};
use crate::transport::SettlingTransport;
use agentbus::Bus;
use agentbus::Name;
use agentbus::delivery::ClaimError;
use agentbus::presence::{AgentPresence, Heartbeat, PresenceOptions};
use agentbus::state::{StateError, StateStore};
use rmcp::ServiceExt;
use rmcp::service::ServerInitializeError;
use rmcp::transport::async_rw::AsyncRwTransport;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};

/// How often the heartbeat's count of claimed tasks is refreshed.
const IN_FLIGHT_REFRESH: Duration = Duration::from_secs(1);
/// Longest time leaving the bus may take (releasing, goodbye, flush).
const LEAVE_LIMIT: Duration = Duration::from_secs(5);

/// How to run the bridge.
#[derive(Debug, Clone)]
pub struct BridgeOptions {
    /// The name the client's model has on the bus.
    pub agent: Name,
    /// The state backend: `None` reads `AGENTBUS_STATE_URL`, else NATS KV.
    pub state_url: Option<String>,
    /// How often the bridge's presence heartbeat is written.
    pub presence: PresenceOptions,
}

impl BridgeOptions {
    /// Options for agent `agent`, with the defaults.
    pub fn new(agent: Name) -> Self {
        Self {
            agent,
            state_url: None,
            presence: PresenceOptions::default(),
        }
    }
}

/// Why the bridge could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BridgeError {
    /// The state store (or the presence heartbeat in it) is unusable.
    #[error(transparent)]
    State(#[from] StateError),
    /// The inbox consumer could not be set up.
    #[error(transparent)]
    Inbox(#[from] InboxError),
    /// The work queue consumers could not be set up.
    #[error(transparent)]
    Queue(#[from] ClaimError),
    /// The work queue could not be watched for new tasks.
    #[error("cannot watch the task queue of agent {agent}: {source}")]
    QueueWatch {
        /// The bridged agent.
        agent: String,
        /// Why.
        #[source]
        source: async_nats::SubscribeError,
    },
    /// The MCP handshake with the client failed (not a tool error: those go to the client).
    #[error("the MCP handshake with the client failed: {0}")]
    Handshake(#[source] Box<ServerInitializeError>),
    /// The MCP session stopped unexpectedly.
    #[error("the MCP session stopped unexpectedly: {0}")]
    Session(#[source] tokio::task::JoinError),
}

/// Why the bridge could not start or stopped, as a kind to match.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum BridgeErrorKind {
    /// The state store or the presence heartbeat is unusable.
    State,
    /// The inbox could not be set up.
    Inbox,
    /// The work queue could not be set up.
    Queue,
    /// The MCP session with the client failed.
    Session,
}

impl BridgeError {
    /// Why the bridge could not start or stopped.
    pub fn kind(&self) -> BridgeErrorKind {
        match self {
            Self::State(_) => BridgeErrorKind::State,
            Self::Inbox(_) => BridgeErrorKind::Inbox,
            Self::Queue(_) | Self::QueueWatch { .. } => BridgeErrorKind::Queue,
            Self::Handshake(_) | Self::Session(_) => BridgeErrorKind::Session,
        }
    }
}

/// A bridge that has joined the bus: its agent is online, its inbox and
/// work queue are open. [`JoinedBridge::serve`] serves MCP with it. Dropped
/// unserved, its heartbeat says goodbye (it has claimed nothing yet); its
/// watches of the inbox and queue end with the connection.
#[derive(Debug)]
pub struct JoinedBridge {
    bus: Bus,
    agent: Name,
    bridge: Bridge,
    heartbeat: Heartbeat,
    notifier: Arc<Notifier>,
    inbox: Inbox,
    settlements: Settlements,
    claims: Claims,
}

/// Joins the bus as `options.agent`: opens the state store, the inbox and
/// the work queue, and stores the first presence heartbeat.
pub async fn join(bus: Bus, options: BridgeOptions) -> Result<JoinedBridge, BridgeError> {
    let agent = options.agent;
    let instance_id = uuid::Uuid::new_v4().simple().to_string();
    let state = match &options.state_url {
        Some(url) => StateStore::open(&bus, Some(url)).await?,
        None => StateStore::from_env(&bus).await?,
    };
    let inbox = Inbox::open(&bus, &agent).await?;
    let claims = Claims::open(&bus, &agent, &instance_id).await?;
    let heartbeat = Heartbeat::start(
        bus.clone(),
        state.clone(),
        AgentPresence::new(&agent, &instance_id, &[]),
        options.presence,
    );
    heartbeat.first_beat().await?;
    let notifier = Arc::new(Notifier::new(&agent));
    let settlements = Settlements::default();
    let bridge = Bridge::new(Parts {
        bus: bus.clone(),
        agent: agent.clone(),
        instance_id: instance_id.clone(),
        state,
        inbox: inbox.clone(),
        settlements: settlements.clone(),
        claims: claims.clone(),
        notifier: notifier.clone(),
        sent: Default::default(),
        mcp_tasks: Default::default(),
    });
    tracing::info!(%agent, %instance_id, "MCP bridge joined the bus");
    Ok(JoinedBridge {
        bus,
        agent,
        bridge,
        heartbeat,
        notifier,
        inbox,
        settlements,
        claims,
    })
}

/// Joins the bus and serves MCP on stdin/stdout until the client closes
/// stdin or `shutdown` resolves. Logs must go to stderr: stdout carries the
/// protocol. When the bridge cannot join, the client is told why (see
/// [`crate::serve_startup_error`]) until it leaves, and the error is returned.
pub async fn serve_stdio(
    bus: Bus,
    options: BridgeOptions,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), BridgeError> {
    match join(bus, options).await {
        Ok(joined) => joined.serve_stdio(shutdown).await,
        Err(err) => {
            crate::startup_error::serve_stdio(&err.to_string(), shutdown).await;
            Err(err)
        }
    }
}

/// [`serve_stdio`] over `read`/`write` (newline-delimited JSON-RPC, the
/// stdio transport).
pub async fn serve<R, W>(
    bus: Bus,
    options: BridgeOptions,
    read: R,
    write: W,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), BridgeError>
where
    R: AsyncRead + Send + Unpin + 'static,
    W: AsyncWrite + Send + Unpin + 'static,
{
    match join(bus, options).await {
        Ok(joined) => joined.serve(read, write, shutdown).await,
        Err(err) => {
            crate::startup_error::serve(&err.to_string(), read, write, shutdown).await;
            Err(err)
        }
    }
}

impl JoinedBridge {
    /// Serves MCP on stdin/stdout until the client closes stdin or
    /// `shutdown` resolves, then leaves the bus.
    pub async fn serve_stdio(
        self,
        shutdown: impl Future<Output = ()> + Send,
    ) -> Result<(), BridgeError> {
        // On Linux, pipes are reopened non-blocking: a blocking read of stdin
        // would keep the process from exiting on a signal while the client is quiet.
        let (read, write) = rmcp::transport::stdio_pipes();
        self.serve(read, write, shutdown).await
    }

    /// Serves MCP over `read`/`write` (newline-delimited JSON-RPC) until the
    /// client closes `read` or `shutdown` resolves, then leaves the bus.
    pub async fn serve<R, W>(
        self,
        read: R,
        write: W,
        shutdown: impl Future<Output = ()> + Send,
    ) -> Result<(), BridgeError>
    where
        R: AsyncRead + Send + Unpin + 'static,
        W: AsyncWrite + Send + Unpin + 'static,
    {
        let Self {
            bus,
            agent,
            bridge,
            heartbeat,
            notifier,
            inbox,
            settlements,
            claims,
        } = self;
        let heartbeat = Arc::new(heartbeat);
        // The heartbeat carries how many tasks the agent has claimed.
        let in_flight = tokio::spawn({
            let (heartbeat, claims) = (heartbeat.clone(), claims.clone());
            async move {
                let mut tick = tokio::time::interval(IN_FLIGHT_REFRESH);
                loop {
                    tick.tick().await;
                    heartbeat.set_in_flight(claims.in_flight());
                }
            }
        });
        let notifications = tokio::spawn(notify::run(notifier, inbox.arrivals()));
        let transport = SettlingTransport::new(
            AsyncRwTransport::new_server(read, write),
            settlements.clone(),
        );
        tokio::pin!(shutdown);
        let started = tokio::select! {
            started = bridge.serve(transport) => Some(started),
            () = &mut shutdown => None,
        };
        let outcome = match started {
            Some(Ok(running)) => {
                let cancel = running.cancellation_token();
                let waiting = running.waiting();
                tokio::pin!(waiting);
                tokio::select! {
                    ended = &mut waiting => ended.map(|_| ()).map_err(BridgeError::Session),
                    () = &mut shutdown => {
                        cancel.cancel();
                        let _ = waiting.await;
                        Ok(())
                    }
                }
            }
            // The client left before its handshake: nothing to serve.
            Some(Err(ServerInitializeError::ConnectionClosed(_))) => {
                tracing::info!("the client closed the connection before initializing");
                Ok(())
            }
            Some(Err(err)) => Err(BridgeError::Handshake(Box::new(err))),
            // Stopped before the client's handshake.
            None => Ok(()),
        };

        // Leave: hand back what was taken but not delivered, say goodbye. A
        // server that is gone must not keep the process from exiting.
        let leave = async {
            notifications.abort();
            inbox.close();
            settlements.finish().await;
            claims.release_all().await;
            in_flight.abort();
            let _ = in_flight.await;
            if let Ok(heartbeat) = Arc::try_unwrap(heartbeat) {
                heartbeat.stop().await;
            }
            if let Err(err) = bus.flush().await {
                tracing::warn!(%err, "flush at shutdown failed");
            }
        };
        if tokio::time::timeout(LEAVE_LIMIT, leave).await.is_err() {
            tracing::warn!(
                "could not leave the bus within {LEAVE_LIMIT:?} (is the NATS server gone?); exiting anyway"
            );
        }
        tracing::info!(%agent, "MCP bridge left the bus");
        outcome
    }
}
