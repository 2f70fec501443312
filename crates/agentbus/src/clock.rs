//! Times as the bus writes them: RFC 3339, UTC, with milliseconds.

use std::time::SystemTime;

/// `time` as RFC 3339 with milliseconds.
pub(crate) fn rfc3339(time: SystemTime) -> String {
    humantime::format_rfc3339_millis(time).to_string()
}

/// The current time as RFC 3339 with milliseconds.
pub(crate) fn now() -> String {
    rfc3339(SystemTime::now())
}
