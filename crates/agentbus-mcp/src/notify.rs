//! Telling the client that messages arrived, so an idle agent is woken
//! instead of polling.
//!
//! The inbox is the resource `agentbus://agents/<name>/inbox`. A client
//! learns of new messages by
//! - `subscriptions/listen` naming that resource (protocol 2026-07-28):
//!   `notifications/resources/updated` on the listen stream (see
//!   [`crate::Bridge`]'s `listen`);
//! - `resources/subscribe` to it (earlier protocols):
//!   `notifications/resources/updated`;
//! - on earlier protocols, also a `notifications/message` log line at level
//!   `notice`, unless the client set a higher level.
//!
//! Notifications never carry message contents: the model reads those with
//! `read_inbox`, marked as untrusted.

use agentbus::Name;
use rmcp::model::ResourceUpdatedNotificationParam;
use rmcp::{Peer, RoleServer};
use serde_json::json;
use std::sync::{Arc, Mutex};
use tokio::sync::watch;

/// The URI of `agent`'s inbox resource.
pub(crate) fn inbox_uri(agent: &Name) -> String {
    format!("agentbus://agents/{agent}/inbox")
}

/// Who to tell, on the protocols with a session (before 2026-07-28).
#[derive(Debug)]
pub(crate) struct Notifier {
    agent: Name,
    uri: String,
    session: Mutex<Session>,
}

#[derive(Debug, Default)]
struct Session {
    /// The client subscribed to the inbox resource.
    subscriber: Option<Peer<RoleServer>>,
    /// The client, for log lines.
    client: Option<Peer<RoleServer>>,
    /// The lowest level the client wants logged, ranked 0 (debug) to 7.
    min_level: Option<u8>,
}

/// Rank of `notice` among the MCP log levels (debug = 0 .. emergency = 7).
const NOTICE_RANK: u8 = 2;

impl Notifier {
    pub(crate) fn new(agent: &Name) -> Self {
        Self {
            agent: agent.clone(),
            uri: inbox_uri(agent),
            session: Mutex::default(),
        }
    }

    /// The inbox resource URI.
    pub(crate) fn uri(&self) -> &str {
        &self.uri
    }

    /// The client subscribed to the inbox.
    pub(crate) fn subscribe(&self, peer: Peer<RoleServer>) {
        if let Ok(mut session) = self.session.lock() {
            session.subscriber = Some(peer);
        }
    }

    /// The client unsubscribed.
    pub(crate) fn unsubscribe(&self) {
        if let Ok(mut session) = self.session.lock() {
            session.subscriber = None;
        }
    }

    /// The client finished the handshake: it can be sent log lines.
    pub(crate) fn session_started(&self, peer: Peer<RoleServer>) {
        if let Ok(mut session) = self.session.lock() {
            session.client = Some(peer);
        }
    }

    /// The client set the lowest log level it wants (0 = debug .. 7 = emergency).
    pub(crate) fn set_min_level(&self, rank: u8) {
        if let Ok(mut session) = self.session.lock() {
            session.min_level = Some(rank);
        }
    }

    /// Tells the session's client that the inbox changed.
    pub(crate) async fn inbox_changed(&self) {
        let (subscriber, client) = match self.session.lock() {
            Ok(session) => {
                let wants_notice = session.min_level.is_none_or(|min| min <= NOTICE_RANK);
                (
                    session.subscriber.clone(),
                    session.client.clone().filter(|_| wants_notice),
                )
            }
            Err(_) => return,
        };
        if let Some(peer) = subscriber {
            let update = ResourceUpdatedNotificationParam::new(self.uri.clone());
            if let Err(err) = peer.notify_resource_updated(update).await {
                tracing::debug!(%err, "cannot send a resource update");
            }
        }
        if let Some(peer) = client {
            send_log_line(&peer, &self.agent, &self.uri).await;
        }
    }
}

#[allow(deprecated)] // Logging is deprecated from 2026-07-28 on, and only used before it.
async fn send_log_line(peer: &Peer<RoleServer>, agent: &Name, uri: &str) {
    use rmcp::model::{LoggingLevel, LoggingMessageNotificationParam};
    let data = json!({
        "event": "inbox_message",
        "agent": agent.as_str(),
        "resource": uri,
        "text": "A new message arrived in your agentbus inbox; call read_inbox to read it.",
    });
    let line =
        LoggingMessageNotificationParam::new(LoggingLevel::Notice, data).with_logger("agentbus");
    if let Err(err) = peer.notify_logging_message(line).await {
        tracing::debug!(%err, "cannot send a log line");
    }
}

/// The rank of a log level (0 = debug .. 7 = emergency).
#[allow(deprecated)]
pub(crate) fn level_rank(level: rmcp::model::LoggingLevel) -> u8 {
    use rmcp::model::LoggingLevel as L;
    match level {
        L::Debug => 0,
        L::Info => 1,
        L::Notice => 2,
        L::Warning => 3,
        L::Error => 4,
        L::Critical => 5,
        L::Alert => 6,
        L::Emergency => 7,
    }
}

/// Tells the session's client of every arrival until the inbox watch ends.
pub(crate) async fn run(notifier: Arc<Notifier>, mut arrivals: watch::Receiver<u64>) {
    while arrivals.changed().await.is_ok() {
        notifier.inbox_changed().await;
    }
}
