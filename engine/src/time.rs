//! Time as the sans-IO core sees it: a monotonic instant passed in by the caller.
//!
//! The protocol layers never read a clock. The driver shells read `CLOCK_MONOTONIC` once per batch
//! and hand the value down; tests and benchmarks advance a virtual clock.

use core::ops::{Add, AddAssign, Sub};
use core::time::Duration;

/// A point in time, in microseconds since an arbitrary origin chosen by the caller.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Instant(u64);

impl Instant {
    /// The origin.
    pub const ZERO: Instant = Instant(0);
    /// Far future: "no deadline".
    pub const MAX: Instant = Instant(u64::MAX);

    /// An instant `micros` microseconds after the origin.
    pub const fn from_micros(micros: u64) -> Self {
        Instant(micros)
    }
    /// An instant `millis` milliseconds after the origin.
    pub const fn from_millis(millis: u64) -> Self {
        Instant(millis.saturating_mul(1000))
    }
    /// An instant `secs` seconds after the origin.
    pub const fn from_secs(secs: u64) -> Self {
        Instant(secs.saturating_mul(1_000_000))
    }
    /// Microseconds since the origin.
    pub const fn as_micros(self) -> u64 {
        self.0
    }
    /// Milliseconds since the origin.
    pub const fn as_millis(self) -> u64 {
        self.0 / 1000
    }
    /// `self` plus `micros` microseconds, saturating (as `self + Duration::from_micros`, without
    /// the `Duration` arithmetic).
    #[inline]
    pub const fn add_micros(self, micros: u64) -> Instant {
        Instant(self.0.saturating_add(micros))
    }
    /// `self` plus `millis` milliseconds, saturating.
    #[inline]
    pub const fn add_millis(self, millis: u64) -> Instant {
        Instant(self.0.saturating_add(millis.saturating_mul(1000)))
    }
    /// Time elapsed from `earlier` to `self`, zero if `earlier` is later.
    pub fn saturating_since(self, earlier: Instant) -> Duration {
        Duration::from_micros(self.0.saturating_sub(earlier.0))
    }
}

impl Add<Duration> for Instant {
    type Output = Instant;
    fn add(self, d: Duration) -> Instant {
        Instant(
            self.0
                .saturating_add(d.as_micros().min(u64::MAX as u128) as u64),
        )
    }
}

impl AddAssign<Duration> for Instant {
    fn add_assign(&mut self, d: Duration) {
        *self = *self + d;
    }
}

impl Sub<Instant> for Instant {
    type Output = Duration;
    fn sub(self, rhs: Instant) -> Duration {
        self.saturating_since(rhs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arithmetic_saturates() {
        let t = Instant::from_millis(5);
        assert_eq!((t + Duration::from_millis(3)).as_millis(), 8);
        assert_eq!(Instant::from_millis(1) - t, Duration::ZERO);
        assert_eq!(Instant::MAX + Duration::from_secs(1), Instant::MAX);
        assert_eq!(t.add_millis(3), t + Duration::from_millis(3));
        assert_eq!(t.add_micros(7), t + Duration::from_micros(7));
        assert_eq!(t.add_millis(u64::MAX), Instant::MAX);
        assert_eq!(Instant::MAX.add_micros(1), Instant::MAX);
    }
}
