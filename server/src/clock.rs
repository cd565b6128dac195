//! A replica's clock. Everything on a replica that measures time for leases and elections
//! reads it: the lease table's instants, the read-index round's start, the quiet span and the
//! lease waits of a writer, the prompt-election watcher, and (scaled once, at start) openraft's
//! heartbeat and election timeouts. A real replica's clock is the machine's (`ClockSkew::NONE`);
//! the simulation gives each replica a rate and an offset of its own, within the lease drift
//! bound in chaos and beyond it in the scenario that shows the bound matters
//! (`sim-tests/tests/clocks.rs`).
//!
//! Instants read from a skewed clock are on that clock's own time line: they may only be
//! compared with, and slept until, through the same clock.

use std::time::Duration;

use tokio::time::Instant;

/// How far a clock deviates from true time: its rate, in parts per million fast (positive)
/// or slow (negative), and a fixed offset of its readings.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ClockSkew {
    pub rate_ppm: i32,
    pub offset: Duration,
}

impl ClockSkew {
    /// The machine's own clock.
    pub const NONE: ClockSkew = ClockSkew { rate_ppm: 0, offset: Duration::ZERO };

    /// The slowest rate a clock may run at: a tenth of true time (a clock that stands still
    /// would never expire anything).
    pub const RATE_PPM_MIN: i32 = -900_000;

    /// How long `local` of this clock's time takes in true time.
    pub fn to_real(self, local: Duration) -> Duration {
        scale(local, 1_000_000, 1_000_000 + i64::from(self.rate_ppm))
    }

    /// How much of this clock's time passes in `real` of true time.
    pub fn to_local(self, real: Duration) -> Duration {
        scale(real, 1_000_000 + i64::from(self.rate_ppm), 1_000_000)
    }
}

#[derive(Debug, Clone, Copy)]
pub struct Clock {
    skew: ClockSkew,
    /// True time when the clock started; its readings are `origin + offset + elapsed × rate`.
    origin: Instant,
}

impl Clock {
    /// A clock with `skew`, starting now. Panics on a rate below `ClockSkew::RATE_PPM_MIN`
    /// (only the simulation sets one).
    pub fn new(skew: ClockSkew) -> Clock {
        assert!(skew.rate_ppm >= ClockSkew::RATE_PPM_MIN, "clock rate {} ppm is below the minimum", skew.rate_ppm);
        Clock { skew, origin: Instant::now() }
    }

    pub fn now(&self) -> Instant {
        if self.skew == ClockSkew::NONE {
            return Instant::now();
        }
        self.origin + self.skew.offset + self.skew.to_local(self.origin.elapsed())
    }

    /// This clock's time since `earlier` (one of its own readings).
    pub fn since(&self, earlier: Instant) -> Duration {
        self.now().saturating_duration_since(earlier)
    }

    /// Sleeps for `local` of this clock's time.
    pub async fn sleep(&self, local: Duration) {
        tokio::time::sleep(self.skew.to_real(local)).await
    }

    /// Sleeps until this clock reads `deadline`.
    pub async fn sleep_until(&self, deadline: Instant) {
        self.sleep(deadline.saturating_duration_since(self.now())).await
    }
}

fn scale(duration: Duration, numerator: i64, denominator: i64) -> Duration {
    if numerator == denominator {
        return duration;
    }
    let nanos = duration.as_nanos() * numerator as u128 / denominator as u128;
    Duration::from_nanos(u64::try_from(nanos).unwrap_or(u64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_convert_both_ways() {
        let fast = ClockSkew { rate_ppm: 500_000, offset: Duration::ZERO };
        assert_eq!(fast.to_local(Duration::from_millis(100)), Duration::from_millis(150));
        assert_eq!(fast.to_real(Duration::from_millis(150)), Duration::from_millis(100));
        let slow = ClockSkew { rate_ppm: -10_000, offset: Duration::ZERO };
        assert_eq!(slow.to_local(Duration::from_secs(100)), Duration::from_secs(99));
        assert_eq!(ClockSkew::NONE.to_real(Duration::from_millis(7)), Duration::from_millis(7));
    }

    // Simulated time only: the real build's tokio has no paused clock.
    #[cfg(madsim)]
    #[madsim::test]
    async fn a_fast_clock_reads_ahead_and_sleeps_short() {
        let skew = ClockSkew { rate_ppm: 1_000_000, offset: Duration::from_secs(5) };
        let clock = Clock::new(skew);
        let start = clock.now();
        let real_start = Instant::now();
        // madsim wakes a sleeper a little after its deadline (tens of nanoseconds here).
        let close = |a: Duration, b: Duration| a.abs_diff(b) < Duration::from_millis(1);
        clock.sleep(Duration::from_secs(2)).await;
        assert!(close(real_start.elapsed(), Duration::from_secs(1)), "two seconds of a double-rate clock take one");
        assert!(close(clock.since(start), Duration::from_secs(2)));
        let deadline = clock.now() + Duration::from_secs(4);
        clock.sleep_until(deadline).await;
        assert!(close(real_start.elapsed(), Duration::from_secs(3)));
        assert!(clock.now() >= deadline);
    }
}
