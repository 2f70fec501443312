//! Reading the last message stored on a subject the way an agent identity
//! may: a direct get by subject where the stream allows direct gets, else a
//! get through the stream's leader (which only the operator may ask for).

use async_nats::jetstream::message::StreamMessage;
use async_nats::jetstream::stream::{DirectGetErrorKind, LastRawMessageErrorKind, Stream};

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
