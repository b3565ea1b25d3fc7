//! Why a tick wants to wake again, as named timers in the shape of quinn-proto's `TimerTable`:
//! each reason sets its own timer, [`TimerTable::next`] answers the earliest with its name, and
//! the Durable Object sets its one alarm for it.

use serde::{Deserialize, Serialize};

/// A reason to wake before the next cron tick may come.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Timer {
    /// A budget cut the tick's work short (subrequests, listing pages, a manifest part as the
    /// tick's whole work): go on at once, with a fresh budget.
    Continue,
    /// The rolling export window has room again.
    WindowFrees,
    /// GitLab's `Retry-After` (and a little slack) for exports ends.
    RetryAfter,
    /// GitLab's backoff ends: after failures, or a 429 outside exports.
    GitLabBackoff,
    /// An accepted export's next check comes due.
    NextCheck,
    /// A failed export's retry comes due.
    RetryDue,
    /// A run was started while another tick awaited a subrequest: advance it shortly.
    Busy,
}

impl Timer {
    pub const ALL: [Timer; 7] = [
        Timer::Continue,
        Timer::WindowFrees,
        Timer::RetryAfter,
        Timer::GitLabBackoff,
        Timer::NextCheck,
        Timer::RetryDue,
        Timer::Busy,
    ];

    fn index(self) -> usize {
        self as usize
    }
}

/// One optional deadline per [`Timer`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TimerTable {
    at_ms: [Option<u64>; Timer::ALL.len()],
}

impl TimerTable {
    /// Wake for `timer` by `at_ms`: a timer set twice keeps the earlier time.
    pub fn set(&mut self, timer: Timer, at_ms: u64) {
        let slot = &mut self.at_ms[timer.index()];
        *slot = Some(slot.map_or(at_ms, |at| at.min(at_ms)));
    }

    pub fn get(&self, timer: Timer) -> Option<u64> {
        self.at_ms[timer.index()]
    }

    pub fn stop(&mut self, timer: Timer) {
        self.at_ms[timer.index()] = None;
    }

    /// The earliest timer and its time; of two at the same time, the one listed first.
    pub fn next(&self) -> Option<(Timer, u64)> {
        Timer::ALL
            .into_iter()
            .filter_map(|timer| self.get(timer).map(|at| (timer, at)))
            .min_by_key(|&(_, at)| at)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_earliest_timer_wins_and_a_timer_keeps_its_earliest_time() {
        let mut timers = TimerTable::default();
        assert_eq!(timers.next(), None);
        timers.set(Timer::NextCheck, 50);
        timers.set(Timer::WindowFrees, 30);
        timers.set(Timer::NextCheck, 20);
        timers.set(Timer::NextCheck, 40);
        assert_eq!(timers.next(), Some((Timer::NextCheck, 20)));
        timers.stop(Timer::NextCheck);
        assert_eq!(timers.next(), Some((Timer::WindowFrees, 30)));
        timers.set(Timer::Continue, 30);
        assert_eq!(
            timers.next(),
            Some((Timer::Continue, 30)),
            "a tie: the first listed"
        );
    }

    #[test]
    fn timers_are_listed_in_index_order() {
        for (i, timer) in Timer::ALL.into_iter().enumerate() {
            assert_eq!(timer.index(), i);
        }
    }
}
