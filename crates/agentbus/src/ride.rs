//! Riding out a stream without a leader and a lost connection: the one
//! retry loop for what the library asks of JetStream that is safe to ask
//! again (storing tasks, messages and dead letters; reading and writing task
//! records and effect claims; looking up streams and making consumers).

use crate::client::Bus;
use std::future::Future;
use std::time::Duration;

/// The first wait before a failed store is tried again; it doubles.
const FIRST_BACKOFF: Duration = Duration::from_millis(50);
/// The longest wait between two tries.
const MAX_BACKOFF: Duration = Duration::from_secs(1);
/// How long one try may wait for its answer while the deadline leaves room
/// for another: a healthy server answers in milliseconds, and a request
/// that went to a server that died (a stream leader killed) gets no answer.
const TRY_TIMEOUT: Duration = Duration::from_secs(2);

/// Runs `attempt` until it succeeds, fails with an error `passes` does not
/// let through, or the bus's store deadline ([`Bus::store_deadline`]) would
/// pass before the next try; then returns the last error. An attempt in
/// flight when the connection is made again is abandoned and made again at
/// once: its answer was to go to the connection that is gone; so is one
/// unanswered for 2 s while the deadline leaves room for another.
///
/// Only for what is safe to repeat: a publish with a message id (the stream
/// stores it once), or a write of the same value.
pub(crate) async fn ride<T, E, F, Fut>(
    bus: &Bus,
    what: &str,
    attempt: F,
    passes: impl Fn(&E) -> bool,
) -> Result<T, E>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, E>>,
    E: std::fmt::Display,
{
    let deadline = tokio::time::Instant::now() + bus.store_deadline();
    ride_until(bus, what, deadline, attempt, passes).await
}

/// [`ride`] up to `deadline` instead of the bus's store deadline.
pub(crate) async fn ride_until<T, E, F, Fut>(
    bus: &Bus,
    what: &str,
    deadline: tokio::time::Instant,
    mut attempt: F,
    passes: impl Fn(&E) -> bool,
) -> Result<T, E>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, E>>,
    E: std::fmt::Display,
{
    let mut backoff = FIRST_BACKOFF;
    let mut reconnects = bus.reconnects();
    loop {
        reconnects.borrow_and_update();
        // The last try waits for its own answer, so that an error comes back.
        let bounded = tokio::time::Instant::now() + TRY_TIMEOUT < deadline;
        let unanswered = async {
            if bounded {
                tokio::time::sleep(TRY_TIMEOUT).await;
            } else {
                std::future::pending::<()>().await;
            }
        };
        let err = tokio::select! {
            biased;
            outcome = attempt() => match outcome {
                Ok(value) => return Ok(value),
                Err(err) => err,
            },
            Ok(()) = reconnects.changed() => continue,
            () = unanswered => {
                tracing::debug!(what, "no answer to a store yet; trying again");
                continue;
            }
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

/// Opens KV bucket `bucket`, asked again through an election or a
/// reconnect up to the bus's store deadline, unless the server says the
/// bucket is missing ([`crate::jetstream_errors::is_missing_bucket`]).
pub(crate) async fn open_bucket(
    bus: &Bus,
    bucket: &str,
) -> Result<async_nats::jetstream::kv::Store, async_nats::jetstream::context::KeyValueError> {
    ride(
        bus,
        bucket,
        || bus.jetstream().get_key_value(bucket),
        |err| !crate::jetstream_errors::is_missing_bucket(err),
    )
    .await
}
