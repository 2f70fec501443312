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
