//! Why a topology could not be loaded or applied.

use agentbus::subject::InvalidSubject;
use std::path::PathBuf;

/// Why a topology could not be loaded or applied.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TopologyError {
    /// The file could not be read.
    #[error("cannot read topology file {}: {source}", .path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The file is not valid TOML or does not have the topology's shape.
    #[error("invalid topology file {} at line {line}, column {column}: {message}", .path.display())]
    Parse {
        /// The file.
        path: PathBuf,
        /// Line of the error, from 1.
        line: usize,
        /// Column of the error, from 1.
        column: usize,
        /// What is wrong there: the TOML parser's message on one line (its
        /// error itself spans several, quoting the file).
        message: String,
    },
    /// The topology is well-formed but would not work.
    #[error("invalid topology: stream {stream:?}: {reason}")]
    Invalid {
        /// The stream (or `KV_<bucket>`).
        stream: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A stream captures a subject that is not a valid subject pattern.
    #[error("invalid topology: stream {stream:?}: {source}")]
    InvalidSubject {
        /// The stream.
        stream: String,
        /// What is wrong with the subject.
        #[source]
        source: InvalidSubject,
    },
    /// The server has the stream with a setting JetStream cannot change in place.
    #[error(
        "stream {stream:?}: {field} cannot change in place ({current} on the server, {wanted} in the topology); {}",
        super::recreate_advice(stream, field, current)
    )]
    Immutable {
        /// The stream (or `KV_<bucket>`).
        stream: String,
        /// The setting.
        field: &'static str,
        /// Its value on the server.
        current: String,
        /// Its value in the topology.
        wanted: String,
    },
    /// JetStream refused an operation.
    #[error("stream {stream:?}: JetStream refused to {action} it: {source}")]
    JetStream {
        /// The stream (or `KV_<bucket>`).
        stream: String,
        /// What was asked: `look up`, `create` or `update`.
        action: &'static str,
        /// JetStream's answer (an `async_nats` error of that operation).
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

/// Why a topology could not be loaded or applied, as a kind to match.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum TopologyErrorKind {
    /// The file could not be read.
    Read,
    /// The file is not a topology: bad TOML, a missing or unknown field.
    Parse,
    /// The topology is well-formed but would not work (names, subjects, limits).
    Invalid,
    /// The server's stream has a setting JetStream cannot change in place.
    Immutable,
    /// JetStream refused or failed a look-up, create or update.
    JetStream,
}

impl TopologyError {
    /// Why the topology could not be loaded or applied.
    pub fn kind(&self) -> TopologyErrorKind {
        match self {
            Self::Read { .. } => TopologyErrorKind::Read,
            Self::Parse { .. } => TopologyErrorKind::Parse,
            Self::Invalid { .. } | Self::InvalidSubject { .. } => TopologyErrorKind::Invalid,
            Self::Immutable { .. } => TopologyErrorKind::Immutable,
            Self::JetStream { .. } => TopologyErrorKind::JetStream,
        }
    }
}
