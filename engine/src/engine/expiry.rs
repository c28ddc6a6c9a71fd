//! Deadlines in the shell: the expiry pass over every shard, the expiry thread that sleeps
//! until the next deadline, and the wake-up a decision gives it for an earlier one. What
//! expires is decided by the state machine (`Command::ExpireDue`).

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use crate::error::EngineError;
use crate::machine::{Command, Reply};
use crate::wal::Ticket;

use super::{EXPIRY_BATCH_MAX, Engine};

impl Engine {
    pub(super) fn note_expiry(&self, lateness_ms: i64) {
        self.expirations.fetch_add(1, Ordering::Relaxed);
        metrics::counter!("miqat_expirations_total").increment(1);
        metrics::histogram!("miqat_expiry_lateness_seconds")
            .record(lateness_ms.max(0) as f64 / 1000.0);
    }

    /// The earliest pending deadline over all shards (possibly one already handled).
    pub fn next_deadline_ms(&self) -> Option<i64> {
        let next = self
            .shards
            .iter()
            .map(|s| s.counters.next_deadline_ms.load(Ordering::SeqCst))
            .min()
            .unwrap_or(i64::MAX);
        (next != i64::MAX).then_some(next)
    }

    /// Expires every hold and offer whose deadline is at or before now, exactly once each,
    /// passing their seats on. Returns how many expired and the ticket of the last one.
    pub fn expire_due(&self) -> Result<(usize, Option<Ticket>), EngineError> {
        let now_ms = self.now_ms();
        let mut expired = 0usize;
        let mut last_ticket = None;
        for p in 0..self.shards.len() {
            if self.shards[p]
                .counters
                .next_deadline_ms
                .load(Ordering::Acquire)
                > now_ms
            {
                continue;
            }
            loop {
                let (count, ticket, more) = self.expire_batch(p, now_ms)?;
                expired += count;
                last_ticket = ticket.or(last_ticket);
                if !more {
                    break;
                }
            }
        }
        Ok((expired, last_ticket))
    }

    /// Expires up to [`EXPIRY_BATCH_MAX`] due deadlines of shard `p`; returns whether more may
    /// be due.
    fn expire_batch(
        &self,
        p: usize,
        now_ms: i64,
    ) -> Result<(usize, Option<Ticket>, bool), EngineError> {
        let counters = &self.shards[p].counters;
        let mut st = self.shards[p].state.lock();
        let mut count = 0usize;
        let mut ticket = None;
        let mut wake_at: Option<i64> = None;
        while count < EXPIRY_BATCH_MAX {
            st.prune_timers(counters);
            // A failed commit leaves the timer in place: the deadline stays pending.
            let ran = self.run(p, &mut st, Command::ExpireDue, now_ms)?;
            if !matches!(ran.reply, Reply::Expired) {
                break;
            }
            ticket = ran.ticket.or(ticket);
            wake_at = wake_at.into_iter().chain(ran.wake_at).min();
            count += 1;
        }
        st.prune_timers(counters);
        let more = st.earliest_timer().is_some_and(|(d, _)| d <= now_ms);
        drop(st);
        self.wake_expiry_if_earlier(wake_at);
        Ok((count, ticket, more))
    }

    pub(super) fn wake_expiry_if_earlier(&self, deadline_ms: Option<i64>) {
        // i64::MIN while no expiry thread sleeps: nothing to wake.
        let planned = self.expiry_planned_ms.load(Ordering::SeqCst);
        if deadline_ms.is_some_and(|d| planned != i64::MIN && d < planned) {
            let (lock, condvar) = &self.expiry_wake;
            // The flag makes a wake-up between two checks of the expiry thread not lost.
            let mut woken = lock.lock();
            if !*woken {
                *woken = true;
                condvar.notify_one();
            }
        }
    }

    /// Runs the expiry loop on a thread until [`Engine::stop`]: it sleeps until the next
    /// deadline (at most `idle_max`), expires what is due, and snapshots now and then.
    pub fn spawn_expiry_thread(
        self: &Arc<Self>,
        idle_max: Duration,
    ) -> std::io::Result<std::thread::JoinHandle<()>> {
        let engine = Arc::clone(self);
        std::thread::Builder::new()
            .name("miqat-expiry".into())
            .spawn(move || engine.expiry_loop(idle_max))
    }

    fn expiry_loop(&self, idle_max: Duration) {
        while !self.stopping.load(Ordering::Acquire) {
            match self.expire_due() {
                Ok(_) => {}
                Err(EngineError::Overloaded) => {
                    // The log is saturated for a moment: the deadlines stay pending; retry.
                    std::thread::sleep(Duration::from_millis(10));
                    continue;
                }
                Err(e) => {
                    tracing::error!(error = %e, "expiry stopped: the log refused a decision");
                    return;
                }
            }
            if self.records_committed() - self.records_at_snapshot.load(Ordering::Relaxed)
                >= self.config.snapshot_every_records
                && let Err(e) = self.snapshot()
            {
                tracing::error!(error = %e, "snapshot failed");
            }
            let now_ms = self.now_ms();
            let sleep_ms = self
                .next_deadline_ms()
                .map_or(idle_max.as_millis() as i64, |d| d - now_ms)
                .clamp(0, idle_max.as_millis() as i64);
            let (lock, condvar) = &self.expiry_wake;
            let mut woken = lock.lock();
            if !*woken && sleep_ms > 0 {
                // Published under the lock: a decision that reads it and finds its deadline
                // earlier takes the same lock to wake us, so no wake-up is lost.
                // SeqCst pairs with the decision side (deadline published, then the plan read):
                // either it sees this plan and wakes us, or we see its deadline here.
                let planned = now_ms + sleep_ms;
                self.expiry_planned_ms.store(planned, Ordering::SeqCst);
                if self.next_deadline_ms().is_none_or(|d| d >= planned) {
                    let _ = condvar.wait_for(&mut woken, Duration::from_millis(sleep_ms as u64));
                }
                self.expiry_planned_ms.store(i64::MIN, Ordering::SeqCst);
            }
            *woken = false;
        }
    }

    /// Asks the expiry thread to finish.
    pub fn stop(&self) {
        self.stopping.store(true, Ordering::Release);
        let (lock, condvar) = &self.expiry_wake;
        *lock.lock() = true;
        condvar.notify_all();
    }
}
