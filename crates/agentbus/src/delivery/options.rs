//! How durable work is delivered and settled: one set of options for every
//! durable consumer and every settlement.

use std::time::Duration;

/// Delivery settings of an agent's durable consumers; embedded in
/// [`crate::AgentOptions`]. Every runtime replica that works the same
/// consumer should use the same values: the consumer is created or updated
/// to the options of the replica that made it last. An MCP bridge has no
/// options of its own and keeps those of a consumer that exists.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeliveryOptions {
    /// How long a delivered task or message may go without an ack or a
    /// progress ack before JetStream redelivers it.
    pub ack_wait: Duration,
    /// Deliveries of a task or message before it becomes a dead letter.
    pub max_deliver: u32,
    /// Delay before the first retry of a failed task; doubles per attempt.
    pub retry_backoff: Duration,
    /// Longest delay between retries.
    pub max_retry_backoff: Duration,
    /// How often an idle worker checks its queues for redeliveries (which
    /// publish nothing a worker could wait for). One worker serves every
    /// agent of a runtime, at the `idle_poll` of the first agent added with
    /// durable work. On an agent identity, a check that finds every queue
    /// empty is followed by nine left out, unless a queue rings first.
    pub idle_poll: Duration,
}

impl Default for DeliveryOptions {
    fn default() -> Self {
        Self {
            ack_wait: Duration::from_secs(30),
            max_deliver: 5,
            retry_backoff: Duration::from_secs(1),
            max_retry_backoff: Duration::from_secs(60),
            idle_poll: Duration::from_millis(500),
        }
    }
}

impl DeliveryOptions {
    /// The delay before retry `attempt` (1-based): exponential from
    /// `retry_backoff`, capped at `max_retry_backoff`, with ±20 % jitter so
    /// that retries of many tasks spread out.
    pub(crate) fn backoff(&self, attempt: u32) -> Duration {
        let exponent = attempt.saturating_sub(1).min(20);
        let delay = self
            .retry_backoff
            .saturating_mul(1 << exponent)
            .min(self.max_retry_backoff);
        delay.mul_f64(rand::random_range(0.8..1.2))
    }

    /// How often a running task tells JetStream it is still in progress: a
    /// third of the ack wait, so one lost progress ack is not a redelivery.
    pub(crate) fn progress_period(ack_wait: Duration) -> Duration {
        (ack_wait / 3).max(Duration::from_millis(100))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_and_is_capped() {
        let options = DeliveryOptions {
            retry_backoff: Duration::from_millis(100),
            max_retry_backoff: Duration::from_secs(5),
            ..DeliveryOptions::default()
        };
        for (attempt, nominal) in [(1, 100), (2, 200), (3, 400), (10, 5000), (40, 5000)] {
            let delay = options.backoff(attempt).as_millis() as f64;
            let nominal = nominal as f64;
            assert!(
                delay >= nominal * 0.8 - 1.0 && delay <= nominal * 1.2 + 1.0,
                "{attempt}: {delay}"
            );
        }
    }
}
