//! Redial timing and the circuit breaker, as pure logic (the dialer supplies time and jitter).

use std::time::Duration;

/// Longest wait between dials while the circuit is closed.
pub const MAX_BACKOFF: Duration = Duration::from_secs(60);

/// `base` doubled `times` times, capped at [`MAX_BACKOFF`]: the wait of redials and of
/// message republishing alike.
pub fn doubled(base: Duration, times: u32) -> Duration {
    base.checked_mul(1u32 << times.min(16))
        .unwrap_or(MAX_BACKOFF)
        .min(MAX_BACKOFF)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Circuit {
    /// Dialling with exponential backoff.
    Closed,
    /// Too many consecutive failures: wait out the cool-down, then try once (half-open).
    Open,
}

/// Tracks consecutive failed dials to one peer.
#[derive(Debug, Clone)]
pub struct Backoff {
    base: Duration,
    open_after: u32,
    cooldown: Duration,
    failures: u32,
    circuit: Circuit,
}

/// What a failed dial leads to.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AfterFailure {
    pub wait: Duration,
    /// True on the failure that opened the circuit (log it once, at critical).
    pub opened: bool,
}

impl Backoff {
    pub fn new(base: Duration, open_after: u32, cooldown: Duration) -> Self {
        Backoff {
            base,
            open_after: open_after.max(1),
            cooldown,
            failures: 0,
            circuit: Circuit::Closed,
        }
    }

    pub fn circuit(&self) -> Circuit {
        self.circuit
    }

    pub fn failures(&self) -> u32 {
        self.failures
    }

    /// A dial succeeded: the circuit closes and the count restarts. Returns whether it was open.
    pub fn succeeded(&mut self) -> bool {
        let was_open = self.circuit == Circuit::Open;
        self.failures = 0;
        self.circuit = Circuit::Closed;
        was_open
    }

    /// A dial failed. `jitter` in [0, 1) spreads redials of many nodes apart (±20 %).
    pub fn failed(&mut self, jitter: f64) -> AfterFailure {
        self.failures = self.failures.saturating_add(1);
        if self.failures >= self.open_after {
            let opened = self.circuit == Circuit::Closed;
            self.circuit = Circuit::Open;
            return AfterFailure {
                wait: self.cooldown,
                opened,
            };
        }
        AfterFailure {
            wait: self.delay(self.failures, jitter),
            opened: false,
        }
    }

    /// Wait before redialling after an established connection was lost.
    pub fn after_loss(&self, jitter: f64) -> Duration {
        self.delay(1, jitter)
    }

    fn delay(&self, failures: u32, jitter: f64) -> Duration {
        let exp = doubled(self.base, failures - 1);
        exp.mul_f64(0.8 + 0.4 * jitter.clamp(0.0, 1.0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waits_double_from_the_base_and_are_capped() {
        let mut b = Backoff::new(Duration::from_secs(5), 100, Duration::from_secs(60));
        let waits: Vec<_> = (0..6).map(|_| b.failed(0.5).wait).collect();
        let secs: Vec<u64> = waits.iter().map(|d| d.as_secs()).collect();
        assert_eq!(secs, vec![5, 10, 20, 40, 60, 60]);
    }

    #[test]
    fn jitter_spreads_by_twenty_percent() {
        let mut b = Backoff::new(Duration::from_secs(10), 100, Duration::from_secs(60));
        assert_eq!(b.clone().failed(0.0).wait, Duration::from_secs(8));
        assert_eq!(b.failed(0.999_999).wait.as_secs(), 11);
    }

    #[test]
    fn circuit_opens_after_the_configured_failures_and_half_opens() {
        let mut b = Backoff::new(Duration::from_secs(1), 3, Duration::from_secs(30));
        assert!(!b.failed(0.5).opened);
        assert!(!b.failed(0.5).opened);
        let third = b.failed(0.5);
        assert!(third.opened);
        assert_eq!(third.wait, Duration::from_secs(30));
        assert_eq!(b.circuit(), Circuit::Open);
        // The half-open try fails: still open, waits the cool-down again, logged only once.
        let again = b.failed(0.5);
        assert!(!again.opened);
        assert_eq!(again.wait, Duration::from_secs(30));
        // It never gives up: success closes it.
        assert!(b.succeeded());
        assert_eq!(b.circuit(), Circuit::Closed);
        assert_eq!(b.failures(), 0);
    }
}
