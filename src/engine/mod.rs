//! The run's state machine, without I/O: a [`Tick`] is handed the clock and the answers to
//! the requests it asked for, and hands back the next requests to send, what to log, and when
//! to wake up and why. Its decisions are persisted through [`Store`] before each request goes
//! out and after each answer, so a tick that dies loses no project and breaks no limit.
//!
//! The files follow one project from listing to proof: [`schedule`] (start a run, or resume
//! one), [`preflight`] (token, region, bucket), [`listing`] (the groups' pages), [`export`]
//! (claim, rate window, export request), [`verify`] (GitLab's status, then a signed ranged `GET`, and
//! retries), [`record`] (the manifest and the summary in the bucket). Beside them: [`gates`]
//! (may GitLab, its exports, the bucket be asked now; the invocation's budget), [`timers`] (why
//! to wake), [`intents`] (follow-ups the handlers record), [`window`] (the rolling minute of
//! exports) and [`event`] (what is logged).

pub mod allowance;
pub mod changed;
mod event;
mod export;
mod flights;
mod gates;
mod intents;
mod listing;
mod preflight;
mod record;
pub mod restores;
mod schedule;
mod timers;
mod verify;
pub(crate) mod window;

#[cfg(test)]
mod tests;

use std::time::{Duration, SystemTime};

use crate::config::{Config, RunSettings};
use crate::gitlab::GitLab;
use crate::http::{HttpRequest, HttpResult};
use crate::s3::Signer;
use crate::store::{ClaimedProject, MetaKey, Phase, RunRow, Sql, Store, StoreError};
use crate::time::system_time;

pub use event::Event;
pub use export::{
    EXPORT_WINDOW, LEARNED_LIMIT_HOLDS, MAX_EXPORTS_UNDER_WAY, UNANSWERED_PER_ATTEMPT,
};
pub use gates::{BACKOFF_MAX, BACKOFF_STEP, RETRY_AFTER_SLACK};
pub use listing::{LISTING_CONCURRENCY, LISTING_PAGE_CPU_MS};
pub use record::RECORD_GIVE_UP;
pub use schedule::{
    arrival, cancel, run_due, schedule_anchor, Arrival, Begin, Cancel, Start, BACKUPS_REMEMBERED,
    BUSY_RETRY, PRUNE_BATCH, RUNS_KEPT, RUNS_KEPT_IN_DETAIL,
};
pub use timers::{Timer, TimerTable};
pub use verify::{
    next_check_ms, CHECK_SLACK, CHECK_STEPS, CLOCK_SKEW, FIRST_CHECK_AFTER, NONE_GRACE,
    RETRY_BACKOFF,
};

use gates::{Budget, Gate, Gates};
use intents::{Intent, Intents};
use window::Window;

/// How long a request may be in flight before it is given up; until its answer arrives, the
/// rate window counts it as arriving at GitLab as late as this.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// A request the tick wants sent, and what it is for.
#[derive(Debug)]
pub struct Step {
    pub request: HttpRequest,
    purpose: Purpose,
}

#[derive(Debug)]
enum Purpose {
    CheckUser,
    Probe,
    ReadBackProbe,
    CheckMarker,
    PutMarker,
    ProjectSize {
        project: ClaimedProject,
        reason: String,
    },
    ListPage {
        position: u64,
        page: u64,
        group: String,
    },
    Export {
        project: ClaimedProject,
        log_id: u64,
    },
    ExportStatus {
        project: ClaimedProject,
    },
    FirstBytes {
        project: ClaimedProject,
        gitlab_said: intents::GitLabSaid,
    },
    ManifestPart {
        key: String,
        last_project_id: u64,
        projects: usize,
    },
    Summary {
        key: String,
    },
    FindRegion,
}

/// What the tick did, for the caller's logs and alarm.
#[derive(Debug, Default)]
pub struct TickReport {
    pub events: Vec<Event>,
    /// When work will be possible again sooner than the next cron tick may come…
    pub wake_at_ms: Option<u64>,
    /// … and why.
    pub wake_for: Option<Timer>,
    pub subrequests: u32,
    pub exports: u32,
}

/// One invocation's work on the current run.
///
/// Driving a tick (the Durable Object does this, and so do the tests' harness and the
/// benchmark):
///
/// ```text
/// Tick::begin(store, config, now, start)   → Idle | AlreadyRunning(run) | Tick
/// loop {
///     steps = tick.next_steps(now)          // persisted as under way; empty: the tick is done
///     send the steps together (they are independent), then for each, in order:
///     tick.handle(step, answer, now)        // records the answer; builds nothing
/// }
/// tick.finish(now)                          → events to log, the earliest timer for the alarm
/// ```
///
/// Only one tick runs at a time: see [`arrival`] for what to do with an event that comes
/// while a tick awaits its subrequests.
pub struct Tick<'a, S: Sql> {
    store: &'a Store<S>,
    config: &'a Config,
    /// The run's GitLab: its origin with the current token.
    gitlab: GitLab,
    /// The run as last read from or written to the store (its counters are the store's).
    run: RunRow,
    /// The settings the run started with (read from `run` once, when the tick begins): every
    /// request and key of the run comes from them.
    settings: RunSettings,
    /// Whether the run keeps its settings in the store (runs begun before that go on with the
    /// current settings).
    pinned: bool,
    /// The region the bucket is signed for, `None` until it is known (or after S3 said it is
    /// another: then it is asked again).
    region: Option<String>,
    /// The region the last steps' S3 requests were signed for.
    signed_for: Option<String>,
    /// Whether this tick forgot a region S3 said was wrong (once a tick: a second time, S3
    /// rests until the next).
    region_relearned: bool,
    budget: Budget,
    gates: Gates,
    /// The rolling window of export requests.
    window: Window,
    /// Whether an answer changed the window since it was last stored: it is stored with the
    /// next claim, or at the end of the tick (until then the store counts the request as in
    /// flight, which is the safe side).
    window_unsaved: bool,
    /// Export requests allowed per rolling minute: EXPORTS_PER_MINUTE, or less if GitLab's
    /// 429s showed a lower limit in this run.
    export_limit: u32,
    /// Whether the token was checked in this tick (preflight).
    token_checked: bool,
    /// Whether this run's preflight found the prefix's marker this deployment's.
    prefix_ours: bool,
    /// `(due_ms, project_id)` of the last project this tick checked: the next check comes after.
    checked_after: (u64, u64),
    /// Since when S3 has refused the run's record in a row (see [`RECORD_GIVE_UP`]).
    record_failing_since: Option<u64>,
    intents: Intents,
    timers: TimerTable,
    /// Today's use of the daily allowances, and the store's count of rows written when the
    /// tick began.
    usage: allowance::Usage,
    rows_at_begin: u64,
    report: TickReport,
}

impl<'a, S: Sql> Tick<'a, S> {
    pub fn run(&self) -> &RunRow {
        &self.run
    }

    fn run_started(&self) -> SystemTime {
        system_time(self.run.started_ms)
    }

    fn signer<'r>(&'r self, region: &'r str, now_ms: u64) -> Signer<'r> {
        Signer {
            credentials: &self.config.credentials,
            region,
            now: system_time(now_ms),
        }
    }

    /// The next requests to send, already persisted as under way; empty when this tick is
    /// done. The caller sends them together (they are independent), then hands each answer to
    /// [`Tick::handle`] in the order of the steps. This is the one place requests are built:
    /// the intents the handlers recorded first, then the phase's own work.
    pub fn next_steps(&mut self, now_ms: u64) -> Result<Vec<Step>, StoreError> {
        self.gates.gitlab.failed_in_batch = false;
        let mut steps = Vec::new();
        self.signed_for = self.region.clone();
        while self.budget.can_send() {
            // What asks the bucket waits until its region is known (asked again after S3 said
            // it is another): the phase's step asks it.
            if self.region.is_none() && self.intents.peek().is_some_and(Intent::needs_region) {
                break;
            }
            let Some(intent) = self.intents.pop() else {
                break;
            };
            if let Some(step) = self.intent_step(intent, now_ms)? {
                steps.push(self.spend(step));
            }
        }
        if steps.is_empty() && self.budget.can_send() {
            let phase_steps = match self.run.phase {
                Phase::Preflight => self.preflight_step(now_ms)?.into_iter().collect(),
                Phase::Listing => self.listing_steps(now_ms)?,
                Phase::Exporting | Phase::Verifying | Phase::Recording => self.run_steps(now_ms)?,
                Phase::Finished => Vec::new(),
            };
            steps = phase_steps
                .into_iter()
                .map(|step| self.spend(step))
                .collect();
        }
        self.intents.save(self.store, self.run.id)?;
        Ok(steps)
    }

    fn intent_step(&mut self, intent: Intent, now_ms: u64) -> Result<Option<Step>, StoreError> {
        match intent {
            Intent::FirstBytes {
                project,
                gitlab_said,
            } => self.first_bytes_step(project, gitlab_said, now_ms),
            Intent::ReadBackProbe => self.read_back_step(now_ms),
            Intent::PutMarker => self.put_marker_step(now_ms),
            Intent::SizeHint { project, reason } => {
                // A word on the size is worth a request, not a wait: while GitLab is held
                // back, the attempt fails with the reason as it stands.
                if self.gates.gitlab.hold.gate(now_ms) != Gate::Open {
                    self.attempt_failed(&project, &reason, now_ms)?;
                    return Ok(None);
                }
                Ok(Some(Step {
                    request: self.gitlab.project_size_request(project.project_id),
                    purpose: Purpose::ProjectSize { project, reason },
                }))
            }
        }
    }

    /// Leaves `subrequests` of the invocation's budget to other work (the restores, sent
    /// before the tick).
    pub fn reserve(&mut self, subrequests: u32) {
        self.budget.subrequests_left = self.budget.subrequests_left.saturating_sub(subrequests);
    }

    fn spend(&mut self, step: Step) -> Step {
        self.budget.subrequests_left -= 1;
        self.report.subrequests += 1;
        step
    }

    /// Arms the timer of a gate closed until a time; whether it is open.
    fn pass(&mut self, gate: Gate) -> bool {
        match gate {
            Gate::Open => true,
            Gate::Shut => false,
            Gate::Until(timer, at) => {
                self.timers.set(timer, at);
                false
            }
        }
    }

    /// Exports first (never delayed by checks), then checks of accepted exports; once every
    /// project has its outcome, the run's record ([`Tick::record_step`]). What the checks'
    /// answers change in the exports under way is stored with the next claim or at the end of
    /// the tick: a tick that dies first asks GitLab about those exports again, nothing more.
    fn run_steps(&mut self, now_ms: u64) -> Result<Vec<Step>, StoreError> {
        let Some(region) = self.region.clone() else {
            return Ok(self.region_probe(now_ms)?.into_iter().collect());
        };
        if self.run.phase == Phase::Recording {
            return Ok(self.record_step(&region, now_ms)?.into_iter().collect());
        }
        let gitlab = self.gates.gitlab.hold.gate(now_ms);
        if self.pass(gitlab) {
            if let Some(step) = self.export_step(&region, now_ms)? {
                return Ok(vec![step]);
            }
            // One at a time, like every GitLab request of a tick: an answer that holds GitLab
            // back (a 5xx, a 429) is known before the next request goes out.
            if let Some(step) = self.check_step(now_ms)? {
                return Ok(vec![step]);
            }
        }
        Ok(self.settle(&region, now_ms)?.into_iter().collect())
    }

    /// Nothing to send for the exports or checks now: the run's phase follows what is left,
    /// and the timers say when to come back.
    fn settle(&mut self, region: &str, now_ms: u64) -> Result<Option<Step>, StoreError> {
        let under_way = self.window.flights.under_way();
        let claims = self.window.flights.claims(&under_way);
        let (pending_due, run) = self.store.remaining(self.run.id, claims)?;
        self.run = run;
        let checks = self.window.flights.checks_due(crate::time::ms(CHECK_SLACK));
        let phase = if self.run.cancelled_ms.is_some() {
            Phase::Recording
        } else if pending_due.is_some() || self.window.flights.requesting() {
            Phase::Exporting
        } else if checks.is_some() {
            Phase::Verifying
        } else {
            Phase::Recording
        };
        if phase != self.run.phase {
            self.set_phase(phase, now_ms)?;
        }
        if phase == Phase::Recording {
            return self.record_step(region, now_ms);
        }
        // Nothing to do now: wake when the next retry or check comes due.
        if let Some(due) = pending_due.filter(|&due| due > now_ms) {
            self.timers.set(Timer::RetryDue, due);
        }
        if let Some((first, last)) = checks.filter(|&(first, _)| first > now_ms) {
            // The checks due within CHECK_SLACK of the first share one tick, at the last of
            // them (exports go out together, and so come their checks): a tick is a request
            // and a row written, and so is its alarm.
            self.timers.set(Timer::NextCheck, last.max(first));
        }
        Ok(None)
    }

    /// Feeds the answer (or the failure to get one) to a step, and persists what follows. A
    /// handler only records: a request that must follow is an [`Intent`] for `next_steps`.
    pub fn handle(
        &mut self,
        step: Step,
        answer: HttpResult,
        now_ms: u64,
    ) -> Result<(), StoreError> {
        match step.purpose {
            Purpose::CheckUser => self.on_user(answer, now_ms),
            Purpose::Probe => self.on_probe(answer, now_ms),
            Purpose::ReadBackProbe => self.on_read_back(answer, now_ms),
            Purpose::CheckMarker => self.on_marker(answer, now_ms),
            Purpose::PutMarker => self.on_marker_put(answer, now_ms),
            Purpose::ProjectSize { project, reason } => {
                self.on_project_size(project, reason, answer, now_ms)
            }
            Purpose::ListPage {
                position,
                page,
                group,
            } => self.on_page(position, page, group, &step.request.url, answer, now_ms),
            Purpose::Export { project, log_id } => {
                self.window.answered(log_id, now_ms, now_ms);
                self.window_unsaved = true;
                self.on_export(project, answer, now_ms)
            }
            Purpose::ExportStatus { project } => self.on_export_status(project, answer, now_ms),
            Purpose::FirstBytes {
                project,
                gitlab_said,
            } => self.on_first_bytes(project, gitlab_said, answer, now_ms),
            Purpose::ManifestPart {
                key,
                last_project_id,
                projects,
            } => self.on_manifest_part(key, last_project_id, projects, answer, now_ms),
            Purpose::Summary { key } => self.on_summary(key, answer, now_ms),
            Purpose::FindRegion => self.on_region(answer, now_ms),
        }
    }

    fn note_error(&mut self, message: &str, now_ms: u64) -> Result<(), StoreError> {
        self.store.set_meta(MetaKey::LastError, message)?;
        self.store.set_meta(MetaKey::LastErrorAt, now_ms)
    }

    fn set_phase(&mut self, phase: Phase, now_ms: u64) -> Result<(), StoreError> {
        self.run = self.store.set_phase(self.run.id, phase, now_ms)?;
        Ok(())
    }

    /// Ends the tick: the events to log, and the earliest timer for the alarm. Work cut short
    /// by a budget goes on at once, with a fresh budget, unless what it waits for is stopped.
    /// The tick's rows written (its alarm and this record included) count against the day.
    pub fn finish(mut self, now_ms: u64) -> Result<TickReport, StoreError> {
        let stopped = self.gates.gitlab.hold.is_shut()
            || match self.run.phase {
                Phase::Preflight | Phase::Listing => false,
                Phase::Exporting | Phase::Verifying => {
                    self.gates.exports.is_shut() && !self.gates.s3.is_open()
                }
                Phase::Recording => !self.gates.s3.is_open(),
                Phase::Finished => true,
            };
        if self.budget.cut() && !stopped {
            self.timers.set(Timer::Continue, now_ms);
        }
        if let Some((timer, at)) = self.timers.next() {
            self.report.wake_at_ms = Some(at);
            self.report.wake_for = Some(timer);
        }
        self.report.events.push(Event::TickEnded {
            run: self.run.id,
            phase: self.run.phase,
            subrequests: self.report.subrequests,
            exports: self.report.exports,
        });
        if self.window_unsaved {
            self.save_window()?;
        }
        let alarm = u64::from(self.report.wake_at_ms.is_some());
        let rows = self.store.rows_written() - self.rows_at_begin + 1 + alarm;
        self.usage.record(self.store, self.config, rows)?;
        Ok(self.report)
    }

    /// Ends a tick that [`arrival`] allowed only to start a run while another tick is busy:
    /// that tick owns the object's work, and this run is advanced [`BUSY_RETRY`] later.
    pub fn finish_busy(mut self, now_ms: u64) -> Result<TickReport, StoreError> {
        self.timers = TimerTable::default();
        self.timers
            .set(Timer::Busy, now_ms + crate::time::ms(BUSY_RETRY));
        self.finish(now_ms)
    }
}
