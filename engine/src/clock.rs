//! Time as the engine sees it: an injectable [`Clock`], and the only place in the engine that
//! reads the machine's clocks.
//!
//! Engine time advances with a monotonic clock anchored to the wall clock at start
//! ([`AnchoredClock`]). Small differences from the wall clock (an NTP slew, under the step
//! tolerance) are followed; a larger step is not trusted: it is logged, counted in
//! `miqat_clock_steps_total`, shown in `miqat_clock_untrusted_offset_seconds`, and engine time
//! keeps advancing at the monotonic rate, so a forward step never expires holds early and a
//! backward one never revives them. A restart re-anchors to the wall clock.

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

/// A source of engine time in milliseconds since the Unix epoch (UTC).
pub trait Clock: Send + Sync + 'static {
    /// The current instant in milliseconds since the Unix epoch.
    fn now_ms(&self) -> i64;
}

/// The wall-clock step the engine follows without question, by default (2 s).
pub const STEP_TOLERANCE_MS_DEFAULT: i64 = 2_000;

/// Engine time: `monotonic` milliseconds (any origin) anchored to `wall` milliseconds since
/// the Unix epoch, following the wall clock only within a step tolerance.
pub struct AnchoredClock<M, W> {
    monotonic: M,
    wall: W,
    /// Wall time minus monotonic time, as last trusted.
    offset_ms: AtomicI64,
    step_tolerance_ms: i64,
    /// The untrusted offset last reported, so one step is logged once.
    reported_ms: AtomicI64,
    steps: AtomicU64,
}

impl<M, W> AnchoredClock<M, W>
where
    M: Fn() -> i64 + Send + Sync + 'static,
    W: Fn() -> i64 + Send + Sync + 'static,
{
    /// A clock anchored now: engine time starts at `wall()`.
    pub fn new(monotonic: M, wall: W, step_tolerance_ms: i64) -> Self {
        let offset = wall().saturating_sub(monotonic());
        AnchoredClock {
            monotonic,
            wall,
            offset_ms: AtomicI64::new(offset),
            step_tolerance_ms: step_tolerance_ms.max(0),
            reported_ms: AtomicI64::new(0),
            steps: AtomicU64::new(0),
        }
    }

    /// Wall-clock steps larger than the tolerance seen so far (each distinct step once).
    pub fn steps(&self) -> u64 {
        self.steps.load(Ordering::Relaxed)
    }

    fn untrusted_step(&self, step_ms: i64) {
        let reported = self.reported_ms.swap(step_ms, Ordering::Relaxed);
        // The same step seen again (or drifting within the tolerance of it) is not news.
        if reported.abs_diff(step_ms) <= self.step_tolerance_ms as u64 {
            return;
        }
        self.steps.fetch_add(1, Ordering::Relaxed);
        metrics::counter!("miqat_clock_steps_total").increment(1);
        metrics::gauge!("miqat_clock_untrusted_offset_seconds").set(step_ms as f64 / 1000.0);
        tracing::error!(
            step_ms,
            tolerance_ms = self.step_tolerance_ms,
            "the wall clock stepped by more than the tolerance; engine time keeps the monotonic \
             rate (no hold expires early or late because of it). Check the clock source, then \
             restart to adopt the wall clock"
        );
    }
}

impl<M, W> Clock for AnchoredClock<M, W>
where
    M: Fn() -> i64 + Send + Sync + 'static,
    W: Fn() -> i64 + Send + Sync + 'static,
{
    fn now_ms(&self) -> i64 {
        let monotonic = (self.monotonic)();
        let offset = self.offset_ms.load(Ordering::Relaxed);
        let wall_offset = (self.wall)().saturating_sub(monotonic);
        let step = wall_offset.saturating_sub(offset);
        if step.abs() <= self.step_tolerance_ms {
            if step != 0 {
                self.offset_ms.store(wall_offset, Ordering::Relaxed);
            }
            if self.reported_ms.load(Ordering::Relaxed) != 0 {
                self.reported_ms.store(0, Ordering::Relaxed);
                metrics::gauge!("miqat_clock_untrusted_offset_seconds").set(0.0);
            }
            return monotonic.saturating_add(wall_offset);
        }
        self.untrusted_step(step);
        monotonic.saturating_add(offset)
    }
}

/// The machine's clocks: the process's monotonic clock anchored to the system's wall clock.
pub type SystemClock = AnchoredClock<fn() -> i64, fn() -> i64>;

impl AnchoredClock<fn() -> i64, fn() -> i64> {
    /// The system clock with the default step tolerance.
    pub fn system() -> SystemClock {
        SystemClock::system_with_tolerance(STEP_TOLERANCE_MS_DEFAULT)
    }

    /// The system clock, trusting wall-clock steps up to `step_tolerance_ms`.
    pub fn system_with_tolerance(step_tolerance_ms: i64) -> SystemClock {
        AnchoredClock::new(
            monotonic_ms as fn() -> i64,
            wall_ms as fn() -> i64,
            step_tolerance_ms,
        )
    }
}

/// Milliseconds of the process's monotonic clock since its first reading.
fn monotonic_ms() -> i64 {
    static ORIGIN: OnceLock<Instant> = OnceLock::new();
    let elapsed = ORIGIN.get_or_init(Instant::now).elapsed();
    i64::try_from(elapsed.as_millis()).unwrap_or(i64::MAX)
}

/// Milliseconds since the Unix epoch on the system's wall clock.
fn wall_ms() -> i64 {
    let since_epoch = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    i64::try_from(since_epoch.as_millis()).unwrap_or(i64::MAX)
}

/// Measures how long something took, for metrics and reports (never for decisions).
#[derive(Clone, Copy, Debug)]
pub struct Stopwatch(Instant);

impl Stopwatch {
    /// Starts measuring now.
    pub fn start() -> Stopwatch {
        Stopwatch(Instant::now())
    }

    /// Time since the start.
    pub fn elapsed(&self) -> Duration {
        self.0.elapsed()
    }
}

/// A clock that moves only when told to; clones share the same time.
#[derive(Clone, Debug, Default)]
pub struct ManualClock {
    now_ms: Arc<AtomicI64>,
}

impl ManualClock {
    /// A manual clock reading `now_ms`.
    pub fn new(now_ms: i64) -> ManualClock {
        ManualClock {
            now_ms: Arc::new(AtomicI64::new(now_ms)),
        }
    }

    /// Sets the time (it may go backwards, to test clock jumps).
    pub fn set(&self, now_ms: i64) {
        self.now_ms.store(now_ms, Ordering::SeqCst);
    }

    /// Moves the time by `delta_ms` (negative moves it back).
    pub fn advance(&self, delta_ms: i64) {
        self.now_ms.fetch_add(delta_ms, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now_ms(&self) -> i64 {
        self.now_ms.load(Ordering::SeqCst)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An anchored clock over two manual clocks: (clock, monotonic, wall).
    #[allow(clippy::type_complexity)]
    fn anchored() -> (
        AnchoredClock<impl Fn() -> i64 + Send + Sync, impl Fn() -> i64 + Send + Sync>,
        ManualClock,
        ManualClock,
    ) {
        let monotonic = ManualClock::new(5_000);
        let wall = ManualClock::new(1_600_000_000_000);
        let (m, w) = (monotonic.clone(), wall.clone());
        let clock = AnchoredClock::new(move || m.now_ms(), move || w.now_ms(), 2_000);
        (clock, monotonic, wall)
    }

    #[test]
    fn engine_time_starts_at_the_wall_clock_and_follows_small_adjustments() {
        let (clock, monotonic, wall) = anchored();
        assert_eq!(clock.now_ms(), 1_600_000_000_000);
        monotonic.advance(1_000);
        wall.advance(1_000);
        assert_eq!(clock.now_ms(), 1_600_000_001_000);
        // An NTP slew of 1.5 s, within the tolerance, is followed.
        wall.advance(1_500);
        assert_eq!(clock.now_ms(), 1_600_000_002_500);
    }

    #[test]
    fn a_step_beyond_the_tolerance_is_not_followed_either_way() {
        let (clock, monotonic, wall) = anchored();
        // The wall clock jumps an hour ahead: engine time moves with the monotonic clock only.
        wall.advance(3_600_000);
        monotonic.advance(100);
        assert_eq!(clock.now_ms(), 1_600_000_000_100);
        monotonic.advance(100);
        wall.advance(100);
        assert_eq!(clock.now_ms(), 1_600_000_000_200);
        // And an hour back: still the monotonic rate.
        assert_eq!(
            clock.steps(),
            1,
            "one step, seen on two reads, is counted once"
        );
        wall.advance(-7_200_000);
        monotonic.advance(100);
        assert_eq!(clock.now_ms(), 1_600_000_000_300);
        assert_eq!(clock.steps(), 2);
    }
}
