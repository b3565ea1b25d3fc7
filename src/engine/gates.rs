//! One gate per resource a tick asks: GitLab as a whole, GitLab's export endpoint, the bucket,
//! and the invocation's budget. Asking a gate has no side effect; where it is closed until a
//! time, the caller arms the timer it names. What closes a gate (a failure, a 429, a spent
//! budget) is recorded here too.

use std::time::Duration;

use super::timers::Timer;
use super::{Event, Tick};
use crate::store::{MetaKey, Sql, StoreError};
use crate::time::ms;

/// After a 429, a little more than GitLab asked, for clock and network skew.
pub const RETRY_AFTER_SLACK: Duration = Duration::from_secs(2);
/// Backoff after GitLab was unavailable (5xx, network, 401): 1, 2, 4, then 8 minutes.
pub const BACKOFF_STEP: Duration = Duration::from_secs(60);
pub const BACKOFF_MAX: Duration = Duration::from_secs(8 * 60);

/// Whether a resource may be asked now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Gate {
    Open,
    /// Not again in this tick: it failed or refused, or the budget for it is spent. Whatever
    /// wakes the object again was armed when it closed.
    Shut,
    /// Not before this time: arm the timer to come back then.
    Until(Timer, u64),
}

/// A resource that a failure or a 429 holds back: shut for the rest of the tick, or until a time.
#[derive(Debug)]
pub(crate) struct Hold {
    /// Not again in this tick.
    shut: bool,
    /// Not before this time.
    not_before: u64,
    /// The timer that wakes the object when the hold ends.
    timer: Timer,
}

impl Hold {
    pub fn new(not_before: u64, timer: Timer) -> Self {
        Hold {
            shut: false,
            not_before,
            timer,
        }
    }

    pub fn gate(&self, now_ms: u64) -> Gate {
        if self.shut {
            Gate::Shut
        } else if self.not_before > now_ms {
            Gate::Until(self.timer, self.not_before)
        } else {
            Gate::Open
        }
    }

    pub fn shut(&mut self) {
        self.shut = true;
    }

    pub fn is_shut(&self) -> bool {
        self.shut
    }
}

/// GitLab as a whole: its backoff after failures, and a 429 outside exports.
#[derive(Debug)]
pub(crate) struct GitLabGate {
    pub hold: Hold,
    /// GitLab's failures in a row, over ticks (the backoff grows with them).
    failures: u64,
    /// Whether a request of the batch being handled failed: an answer to another request sent
    /// with it does not end the backoff (it left before the failure was known).
    pub failed_in_batch: bool,
}

impl GitLabGate {
    pub fn new(failures: u64, not_before: u64) -> Self {
        GitLabGate {
            hold: Hold::new(not_before, Timer::GitLabBackoff),
            failures,
            failed_in_batch: false,
        }
    }
}

/// The bucket, for the worker's own requests (preflight, region probe, manifest).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum S3Gate {
    Open,
    /// The region probe went out in this tick: S3 opens again only if it names the region.
    ProbeSent,
    /// S3 refused or failed a request in this tick: rest until the next.
    Resting,
}

impl S3Gate {
    pub fn is_open(self) -> bool {
        self == S3Gate::Open
    }
}

/// The resources' gates, together.
#[derive(Debug)]
pub(crate) struct Gates {
    pub gitlab: GitLabGate,
    /// GitLab's export endpoint: its 429 block (the rolling window is asked beside it).
    pub exports: Hold,
    pub s3: S3Gate,
}

/// What one invocation may still spend.
#[derive(Debug)]
pub(crate) struct Budget {
    pub subrequests_left: u32,
    /// Listing pages the CPU budget still allows.
    pub pages_left: u32,
    pub exports_left: u32,
    /// The tick's work is done for its cost (a page of rows, a manifest part): it sends nothing
    /// more, and the next tick goes on at once.
    ended: bool,
}

impl Budget {
    pub fn new(subrequests: u32, pages: u32, exports: u32) -> Self {
        Budget {
            subrequests_left: subrequests,
            pages_left: pages,
            exports_left: exports,
            ended: false,
        }
    }

    /// Whether one more request may go out.
    pub fn can_send(&self) -> bool {
        !self.ended && self.subrequests_left > 0
    }

    /// The tick leaves the rest to the next one, which the alarm starts at once.
    pub fn end(&mut self) {
        self.ended = true;
    }

    /// Whether a budget cut the tick short (so it continues at once).
    pub fn cut(&self) -> bool {
        self.ended || self.subrequests_left == 0
    }
}

/// What a 429 holds back.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Limited {
    /// The export endpoint's own limit.
    Exports,
    /// Any other endpoint: wait before asking GitLab anything.
    AllOfGitLab,
}

impl<S: Sql> Tick<'_, S> {
    /// GitLab answered 429: nothing of that kind (exports, or anything) before `Retry-After`
    /// and a little slack.
    pub(super) fn rate_limited(
        &mut self,
        retry_after: Duration,
        limited: Limited,
        now_ms: u64,
    ) -> Result<(), StoreError> {
        let until = now_ms + ms(retry_after) + ms(RETRY_AFTER_SLACK);
        // A shorter wait asked later never shortens one still running.
        let until = until.max(self.gates.exports.not_before);
        self.store.set_meta(MetaKey::ExportsBlockedUntil, until)?;
        self.gates.exports.not_before = until;
        if limited == Limited::AllOfGitLab {
            self.gates.gitlab.hold.shut();
            self.gates.gitlab.failed_in_batch = true;
            self.gates.gitlab.hold.not_before = self.gates.gitlab.hold.not_before.max(until);
            self.store.set_meta(
                MetaKey::GitLabBackoffUntil,
                self.gates.gitlab.hold.not_before,
            )?;
        }
        self.timers.set(Timer::RetryAfter, until);
        self.gates.exports.shut();
        self.report.events.push(Event::RateLimited {
            retry_after_s: retry_after.as_secs(),
        });
        self.note_error(
            &format!("GitLab answered 429; waiting {} s", retry_after.as_secs()),
            now_ms,
        )
    }

    /// GitLab failed in a way worth retrying: nothing more from it this tick, and back off.
    pub(super) fn gitlab_unavailable(
        &mut self,
        reason: &str,
        now_ms: u64,
    ) -> Result<(), StoreError> {
        self.gates.gitlab.hold.shut();
        self.gates.gitlab.failed_in_batch = true;
        let failures = self.gates.gitlab.failures + 1;
        let backoff = BACKOFF_STEP
            .saturating_mul(1 << (failures - 1).min(16) as u32)
            .min(BACKOFF_MAX);
        let until = now_ms + ms(backoff);
        self.store.set_meta(MetaKey::GitLabFailures, failures)?;
        self.store.set_meta(MetaKey::GitLabBackoffUntil, until)?;
        self.gates.gitlab.failures = failures;
        self.gates.gitlab.hold.not_before = until;
        self.timers.set(Timer::GitLabBackoff, until);
        self.report.events.push(Event::RetryLater {
            run: self.run.id,
            reason: reason.to_owned(),
            not_before_ms: until,
        });
        self.note_error(reason, now_ms)
    }

    /// GitLab answered as documented: any backoff ends.
    pub(super) fn gitlab_answered(&mut self) -> Result<(), StoreError> {
        if self.gates.gitlab.failures > 0 && !self.gates.gitlab.failed_in_batch {
            self.store.delete_meta(MetaKey::GitLabFailures)?;
            self.store.delete_meta(MetaKey::GitLabBackoffUntil)?;
            self.gates.gitlab.failures = 0;
            self.gates.gitlab.hold.not_before = 0;
        }
        Ok(())
    }
}
