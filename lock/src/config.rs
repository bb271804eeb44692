//! Lease timing.

use std::time::Duration;

use crate::Error;

/// The smallest renewal interval [`LeaseConfig::validate`] accepts: GCS allows about one
/// update per second per object, so production configurations renew no faster than this.
pub const MIN_RENEW_INTERVAL: Duration = Duration::from_secs(2);

/// Timing of the lease.
///
/// * The holder may act until `start of its last successful renewal + duration - margin`.
/// * A contender takes over only after seeing the same record unchanged for
///   `max(duration, the record's durationMs) + margin` on its own monotonic clock.
/// * The holder renews every `renew_interval`, with one create-only write and no read.
/// * Every `check_interval` the holder lists the records (to collect old ones and to notice
///   a wiped prefix), and a client that does not want the lease looks at it. A client that
///   wants the lease and does not hold it looks at every tick.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseConfig {
    /// How long a lease record stays valid after its renewal started.
    pub duration: Duration,
    /// Safety margin against clock-rate differences and scheduling delays: the holder stops
    /// `margin` early and contenders wait `margin` longer.
    pub margin: Duration,
    /// How often the holder writes a renewal.
    pub renew_interval: Duration,
    /// How often a holder between renewals, or a client that does not want the lease,
    /// reads the store at all. Zero: at every tick.
    pub check_interval: Duration,
}

/// The default [`LeaseConfig::check_interval`].
pub const CHECK_INTERVAL: Duration = Duration::from_secs(60);

impl Default for LeaseConfig {
    /// 5 s, renewed every 2.5 s, with a 1.5 s margin: a dead leader is replaced
    /// about 6.5 s after its last renewal.
    fn default() -> Self {
        Self::with_duration(Duration::from_secs(5))
    }
}

impl LeaseConfig {
    /// A lease of `duration` with a margin of 30 % of the duration: clocks
    /// may run 10 % fast or slow (the holder stops after at most 0.78 x
    /// duration of true time, a contender waits at least 1.18 x). Renewed
    /// halfway through the lease, but not faster than [`MIN_RENEW_INTERVAL`]
    /// (2.5 s for 5 s: 1,440 writes an hour, leaving 1 s of the 3.5 s the
    /// holder may act for a slow write). Durations under about 3 s fail
    /// [`LeaseConfig::validate`].
    pub fn with_duration(duration: Duration) -> Self {
        Self {
            duration,
            margin: duration * 3 / 10,
            renew_interval: (duration / 2).max(MIN_RENEW_INTERVAL),
            check_interval: CHECK_INTERVAL,
        }
    }

    /// The same configuration with another [`LeaseConfig::check_interval`].
    pub fn with_check_interval(mut self, check_interval: Duration) -> Self {
        self.check_interval = check_interval;
        self
    }

    /// A configuration for tests and simulations: like a struct literal, but documents that
    /// the [`MIN_RENEW_INTERVAL`] floor does not apply. Check it with
    /// [`LeaseConfig::validate_relaxed`]. Reads the store at every tick
    /// (`check_interval` zero) unless [`LeaseConfig::with_check_interval`] says otherwise.
    pub fn for_tests(duration: Duration, margin: Duration, renew_interval: Duration) -> Self {
        Self {
            duration,
            margin,
            renew_interval,
            check_interval: Duration::ZERO,
        }
    }

    /// Check the configuration for production use: everything
    /// [`LeaseConfig::validate_relaxed`] checks, and `renew_interval >= 2 s`.
    pub fn validate(&self) -> Result<(), Error> {
        self.validate_relaxed()?;
        if self.renew_interval < MIN_RENEW_INTERVAL {
            return Err(Error::InvalidConfig(format!(
                "lease renew interval {:?} is shorter than the minimum {:?} (GCS allows about one \
                 update per second per object); raise the renew interval",
                self.renew_interval, MIN_RENEW_INTERVAL
            )));
        }
        Ok(())
    }

    /// Check the rules that keep the protocol safe, without the 2 s floor on the renewal
    /// interval: `margin > 0`, `margin < duration`, `0 < renew_interval < duration - margin`.
    /// [`LeaseClient::tick`](crate::LeaseClient::tick) refuses to run with a configuration
    /// that fails this check.
    pub fn validate_relaxed(&self) -> Result<(), Error> {
        if self.margin.is_zero() {
            return Err(Error::InvalidConfig(
                "lease margin is zero; it must be positive (for example 2s)".to_string(),
            ));
        }
        if self.margin >= self.duration {
            return Err(Error::InvalidConfig(format!(
                "lease margin {:?} is not shorter than the lease duration {:?}; raise the \
                 duration or lower the margin",
                self.margin, self.duration
            )));
        }
        let usable = self.duration - self.margin;
        if self.renew_interval.is_zero() || self.renew_interval >= usable {
            return Err(Error::InvalidConfig(format!(
                "lease renew interval {:?} must be positive and shorter than duration - margin \
                 ({:?}), or the holder loses the lease between renewals; lower the renew \
                 interval or raise the duration",
                self.renew_interval, usable
            )));
        }
        Ok(())
    }
}
