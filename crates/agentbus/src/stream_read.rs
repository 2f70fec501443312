//! Reaching a stream the way an agent identity may: found by a subject it
//! stores (a question that names streams, never what they hold, where a
//! description of the stream can list every subject in it), and read by
//! subject with a direct get where the stream allows direct gets, else
//! through the stream's leader (which only the operator may ask for).

use crate::client::Bus;
use crate::ride::ride;
use async_nats::jetstream::context::{GetStreamByNameError, GetStreamByNameErrorKind};
use async_nats::jetstream::message::StreamMessage;
use async_nats::jetstream::stream::{DirectGetErrorKind, LastRawMessageErrorKind, Stream};

/// Why a stream could not be found.
#[derive(Debug, thiserror::Error)]
pub(crate) enum FindError {
    /// Stream `stream` does not store the subject (or does not exist).
    #[error("stream {stream} does not exist or does not store {subject}")]
    Missing { stream: String, subject: String },
    /// The server did not say.
    #[error("cannot find stream {stream}: {source}")]
    Unanswered {
        stream: String,
        #[source]
        source: GetStreamByNameError,
    },
}

/// Stream `stream`, once the server says it stores `subject` (wildcards
/// allowed); asked again through an election or a reconnect, up to the
/// bus's store deadline, unless the server says no stream stores it.
pub(crate) async fn find(bus: &Bus, stream: &str, subject: &str) -> Result<Stream<()>, FindError> {
    let js = bus.jetstream();
    let missing = || FindError::Missing {
        stream: stream.to_owned(),
        subject: subject.to_owned(),
    };
    let found = ride(
        bus,
        stream,
        || js.stream_by_subject(subject),
        |err| err.kind() != GetStreamByNameErrorKind::NotFound,
    )
    .await;
    match found {
        Ok(name) if name == stream => js.get_stream_no_info(stream).await.map_err(|_| missing()),
        Ok(_) => Err(missing()),
        Err(err) if err.kind() == GetStreamByNameErrorKind::NotFound => Err(missing()),
        Err(source) => Err(FindError::Unanswered {
            stream: stream.to_owned(),
            source,
        }),
    }
}

/// The last message on the subjects matching `subject` (with wildcards, the
/// newest on any of them, carrying its own subject); `None` when none holds
/// one. A direct get that timed out is an error, not a reason to ask the
/// leader: the caller's retry decides.
pub(crate) async fn last_on_subject<I>(
    stream: &Stream<I>,
    subject: &str,
) -> Result<Option<StreamMessage>, async_nats::Error> {
    match stream.direct_get_last_for_subject(subject).await {
        Ok(message) => Ok(Some(message)),
        Err(err) if err.kind() == DirectGetErrorKind::NotFound => Ok(None),
        Err(err) if err.kind() == DirectGetErrorKind::TimedOut => Err(err.into()),
        Err(_) => match stream.get_last_raw_message_by_subject(subject).await {
            Ok(message) => Ok(Some(message)),
            Err(err) if err.kind() == LastRawMessageErrorKind::NoMessageFound => Ok(None),
            Err(err) => Err(err.into()),
        },
    }
}
