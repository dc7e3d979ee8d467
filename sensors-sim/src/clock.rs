//! The simulated clock: real time, or faster — a day of a lot in minutes, for billing and
//! arrears scenarios.
//!
//! A device's `observed_at` may not run ahead of the platform's clock (SPEC §2 refuses more than
//! ten minutes ahead) and may not be older than the event retention (72 hours). So a faster clock
//! starts in the past and ends its run, drain included, just before the real now: everything it
//! stamps is a late but valid read, applied at its `observed_at`.

use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio::time::Instant;

/// The oldest `observed_at` the platform accepts (its event retention), less a margin.
pub const MAX_SPAN: Duration = Duration::from_secs(70 * 3_600);

/// How far before the real now a compressed run ends.
const END_MARGIN: Duration = Duration::from_secs(300);

/// Why a compressed clock cannot be built.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum ClockError {
    #[error("speed must be at least 1 (got {0})")]
    TooSlow(f64),
    #[error(
        "{run:?} at {speed}× plus a drain of {drain:?} covers more than the platform accepts ({MAX_SPAN:?} back)"
    )]
    TooLong {
        run: Duration,
        speed: f64,
        drain: Duration,
    },
}

/// Simulated time: `start` at the moment the clock was made, then `speed` times real time.
#[derive(Debug, Clone, Copy)]
pub struct SimClock {
    origin: Instant,
    start: DateTime<Utc>,
    speed: f64,
}

impl SimClock {
    /// Real time.
    pub fn real() -> Self {
        Self {
            origin: Instant::now(),
            start: Utc::now(),
            speed: 1.0,
        }
    }

    /// A clock running `speed` times real time for `run` (real), then for at most `drain` of
    /// simulated time while journeys finish, ending a few minutes before the real now.
    pub fn compressed(run: Duration, speed: f64, drain: Duration) -> Result<Self, ClockError> {
        if !speed.is_finite() || speed < 1.0 {
            return Err(ClockError::TooSlow(speed));
        }
        let span = run.mul_f64(speed) + drain + END_MARGIN;
        if span > MAX_SPAN {
            return Err(ClockError::TooLong { run, speed, drain });
        }
        let back = chrono::Duration::from_std(span - run).unwrap_or(chrono::Duration::zero());
        Ok(Self {
            origin: Instant::now(),
            start: Utc::now() - back,
            speed,
        })
    }

    /// Simulated now.
    pub fn now(&self) -> DateTime<Utc> {
        let elapsed = self.origin.elapsed().mul_f64(self.speed);
        self.start + chrono::Duration::from_std(elapsed).unwrap_or(chrono::Duration::zero())
    }

    /// Where the clock started.
    pub fn start(&self) -> DateTime<Utc> {
        self.start
    }

    pub fn speed(&self) -> f64 {
        self.speed
    }

    /// The real time `simulated` takes.
    pub fn real_duration(&self, simulated: Duration) -> Duration {
        simulated.div_f64(self.speed)
    }

    /// Sleeps for `simulated` time.
    pub async fn sleep(&self, simulated: Duration) {
        tokio::time::sleep(self.real_duration(simulated)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_compressed_run_ends_before_the_real_now() {
        let run = Duration::from_secs(600);
        let drain = Duration::from_secs(4 * 3_600);
        let clock = SimClock::compressed(run, 144.0, drain).unwrap();
        let real_end = Utc::now() + chrono::Duration::seconds(600);
        // A day passes in the ten-minute run…
        tokio::time::advance(run).await;
        let end = clock.now();
        assert_eq!((end - clock.start()).num_hours(), 24);
        // …and the longest drain still ends before the real now.
        let drained = end + chrono::Duration::from_std(drain).unwrap();
        assert!(drained <= real_end - chrono::Duration::seconds(299));
    }

    #[test]
    fn a_run_longer_than_the_platform_accepts_is_refused() {
        let refused = SimClock::compressed(Duration::from_secs(3_600), 100.0, Duration::ZERO);
        assert!(matches!(refused, Err(ClockError::TooLong { .. })));
        assert_eq!(
            SimClock::compressed(Duration::from_secs(1), 0.5, Duration::ZERO).unwrap_err(),
            ClockError::TooSlow(0.5)
        );
    }

    #[tokio::test(start_paused = true)]
    async fn sleeping_an_hour_at_60x_takes_a_minute() {
        let clock = SimClock::compressed(Duration::from_secs(60), 60.0, Duration::ZERO).unwrap();
        let before = Instant::now();
        clock.sleep(Duration::from_secs(3_600)).await;
        assert_eq!(before.elapsed().as_secs(), 60);
    }
}
