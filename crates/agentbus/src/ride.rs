//! Riding out a stream without a leader and a lost connection: the one
//! retry loop for what the library stores in JetStream (tasks, messages,
//! dead letters, task records).

use crate::client::Bus;
use std::future::Future;
use std::time::Duration;

/// The first wait before a failed store is tried again; it doubles.
const FIRST_BACKOFF: Duration = Duration::from_millis(50);
/// The longest wait between two tries.
const MAX_BACKOFF: Duration = Duration::from_secs(1);

/// Runs `attempt` until it succeeds, fails with an error `passes` does not
/// let through, or the bus's store deadline ([`Bus::store_deadline`]) would
/// pass before the next try; then returns the last error. An attempt in
/// flight when the connection is made again is abandoned and made again at
/// once: its answer was to go to the connection that is gone.
///
/// Only for what is safe to repeat: a publish with a message id (the stream
/// stores it once), or a write of the same value.
pub(crate) async fn ride<T, E, F, Fut>(
    bus: &Bus,
    what: &str,
    mut attempt: F,
    passes: impl Fn(&E) -> bool,
) -> Result<T, E>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, E>>,
    E: std::fmt::Display,
{
    let deadline = tokio::time::Instant::now() + bus.store_deadline();
    let mut backoff = FIRST_BACKOFF;
    let mut reconnects = bus.reconnects();
    loop {
        reconnects.borrow_and_update();
        let err = tokio::select! {
            biased;
            outcome = attempt() => match outcome {
                Ok(value) => return Ok(value),
                Err(err) => err,
            },
            Ok(()) = reconnects.changed() => continue,
        };
        if !passes(&err) || tokio::time::Instant::now() + backoff > deadline {
            return Err(err);
        }
        tracing::debug!(what, error = %err, ?backoff, "JetStream did not store; trying again");
        tokio::select! {
            () = tokio::time::sleep(backoff) => {}
            Ok(()) = reconnects.changed() => {}
        }
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}
