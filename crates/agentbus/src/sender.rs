//! Who sent a task or a message, as far as the bus can vouch for it.

use crate::name::Name;
use std::fmt;

/// The sender of a task, inbox or direct message, broadcast or announcement.
///
/// [`Sender::Agent`] comes from the subject the message was published on
/// ([`crate::subject::sender_of`]); nats-server's publish permissions let an
/// agent identity put only its own name there, so it cannot be forged by
/// another agent identity. A claim inside the message (a `from` field or
/// header) is never promoted to it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Sender {
    /// Sent by this agent, as the bus's permissions guarantee.
    Agent(Name),
    /// Sent on a subject without a sender (a client outside agentbus, or one
    /// without an agent identity): who sent it is not known.
    Unverified,
}

impl Sender {
    /// The verified agent, if any.
    pub fn agent(&self) -> Option<&Name> {
        match self {
            Self::Agent(name) => Some(name),
            Self::Unverified => None,
        }
    }

    /// Whether the bus vouches for the sender.
    pub fn is_verified(&self) -> bool {
        matches!(self, Self::Agent(_))
    }
}

impl fmt::Display for Sender {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Agent(name) => write!(f, "{name}"),
            Self::Unverified => f.write_str("unverified"),
        }
    }
}

impl serde::Serialize for Sender {
    /// `{"agent": "<name>", "verified": true}` or `{"agent": null, "verified": false}`.
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct;
        let mut out = serializer.serialize_struct("Sender", 2)?;
        out.serialize_field("agent", &self.agent().map(Name::as_str))?;
        out.serialize_field("verified", &self.is_verified())?;
        out.end()
    }
}
