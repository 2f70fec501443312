//! Reading JetStream's answers by their error codes rather than their text.

use async_nats::jetstream;

/// Whether a stream lookup failed because the stream does not exist.
pub(crate) fn is_stream_not_found(err: &jetstream::context::GetStreamError) -> bool {
    matches!(
        err.kind(),
        jetstream::context::GetStreamErrorKind::JetStream(js)
            if js.error_code() == jetstream::ErrorCode::STREAM_NOT_FOUND
    )
}

/// Whether a bucket could not be opened because its stream does not exist
/// (not because the server did not answer).
pub(crate) fn is_missing_bucket(err: &jetstream::context::KeyValueError) -> bool {
    std::error::Error::source(err)
        .and_then(|source| source.downcast_ref::<jetstream::context::GetStreamError>())
        .is_some_and(is_stream_not_found)
}

/// JetStream's refusal behind a failed publish, with its error code (none
/// when the publish failed otherwise: a timeout, no responders).
pub(crate) fn publish_refusal(err: &jetstream::context::PublishError) -> Option<&jetstream::Error> {
    std::error::Error::source(err).and_then(|source| source.downcast_ref::<jetstream::Error>())
}

/// Whether a failed publish may succeed if sent again: JetStream had no
/// leader for the stream, the acknowledgement did not come, the connection
/// broke, the cluster is not available, or an earlier try with the same
/// message id is still being stored (its outcome comes with the next try).
/// A refusal for any other reason (a limit, a wrong expected sequence) is
/// final.
pub(crate) fn publish_passes(err: &jetstream::context::PublishError) -> bool {
    use jetstream::context::PublishErrorKind;
    if matches!(
        err.kind(),
        PublishErrorKind::StreamNotFound
            | PublishErrorKind::TimedOut
            | PublishErrorKind::BrokenPipe
    ) {
        return true;
    }
    publish_refusal(err).is_some_and(|refusal| {
        matches!(
            refusal.error_code(),
            jetstream::ErrorCode::STREAM_DUPLICATE_MESSAGE_CONFLICT
                | jetstream::ErrorCode::CLUSTER_NOT_AVAILABLE
        )
    })
}
