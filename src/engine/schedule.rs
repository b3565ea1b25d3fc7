//! When a run starts, how a tick begins (resume the active run, or start one), the pruning of
//! old runs that idle ticks do, and what the Durable Object does with an event that arrives
//! while a tick is busy.

use std::time::Duration;

use super::allowance::Usage;
use super::gates::{Budget, Gates, GitLabGate, Hold, S3Gate};
use super::intents::Intents;
use super::listing::pages_budget;
use super::timers::{Timer, TimerTable};
use super::window::Window;
use super::{Event, Tick, TickReport};
use crate::config::{Config, RunSettings};
use crate::gitlab::GitLab;
use crate::s3::{Bucket, LearnedRegion};
use crate::store::{MetaKey, Phase, RunRow, Sql, Store, StoreError};
use crate::time::ms;

/// Runs whose per-project rows are kept (the current and the previous one).
pub const RUNS_KEPT_IN_DETAIL: u64 = 2;
/// Runs whose summaries are kept.
pub const RUNS_KEPT: u64 = 30;
/// Rows of old runs deleted per tick at most, so pruning never makes one tick heavy. A run of
/// N projects takes at least N / 6 ticks (GitLab's export limit), so pruning the run it
/// replaces keeps up.
pub const PRUNE_BATCH: u64 = 20;
/// How long a project's last verified backup stays known after its last backup: more than a
/// year, since restoring deleted projects is a main reason to have backups.
pub const BACKUPS_REMEMBERED: Duration = Duration::from_secs(400 * 24 * 3600);
/// A run started while another tick is busy is advanced this much later by the alarm.
pub const BUSY_RETRY: Duration = Duration::from_secs(5);

/// The `meta` facts a tick reads, in its one `meta` statement.
const TICK_FACTS: [MetaKey; 13] = [
    MetaKey::LearnedLimit,
    MetaKey::LearnedUntil,
    MetaKey::BucketRegion,
    MetaKey::ExportWindow,
    MetaKey::GitLabFailures,
    MetaKey::GitLabBackoffUntil,
    MetaKey::ExportsBlockedUntil,
    MetaKey::PrunedBelow,
    MetaKey::Intents,
    MetaKey::LastScheduledStart,
    MetaKey::DailyUsage,
    MetaKey::PrefixCheckedRun,
    MetaKey::RecordFailingSince,
];

/// Whether a tick may start a new run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Start {
    /// The cron trigger and alarms: when the interval (and start hour) say so.
    IfDue,
    /// `POST /run`: now, unless a run is going.
    Now,
}

/// What `POST /run/cancel` did.
#[derive(Debug, PartialEq, Eq)]
pub enum Cancel {
    /// The run goes straight to writing its record; the event is for the log.
    Cancelled(RunRow, Event),
    /// No run is going.
    NoRun,
    /// The run was cancelled already and is writing its record.
    AlreadyCancelled(RunRow),
}

/// The operator ends the active run: its exports under way and follow-ups are dropped (GitLab
/// may still upload what it accepted; the record does not count it), and its projects without
/// an outcome are `cancelled` in its manifest and summary, which the next ticks write. The
/// schedule is untouched: the next run starts when it would have.
pub fn cancel<S: Sql>(store: &Store<S>, now_ms: u64) -> Result<Cancel, StoreError> {
    let Some(run) = store.active_run()? else {
        return Ok(Cancel::NoRun);
    };
    let preflight = run.phase == Phase::Preflight;
    let Some(mut run) = store.cancel_run(run.id, now_ms)? else {
        return Ok(Cancel::AlreadyCancelled(run));
    };
    if preflight {
        // Nothing listed, and the bucket (or its prefix) not proven the run's: no record to
        // write, and none written there.
        run = store.stop_run(
            run.id,
            "cancelled by the operator before its preflight ended",
            now_ms,
        )?;
    }
    let meta = store.meta(&[MetaKey::ExportWindow])?;
    let mut window = Window::read(meta.text(MetaKey::ExportWindow)?.as_deref())?;
    window.flights.for_run(run.id);
    if window.flights.len() > 0 {
        window.flights.clear();
        store.set_meta(MetaKey::ExportWindow, window.to_json()?)?;
    }
    store.delete_meta(MetaKey::Intents)?;
    let event = Event::RunCancelled {
        run: run.id,
        listed: run.listed,
        verified: run.verified,
        failed: run.failed,
    };
    Ok(Cancel::Cancelled(run, event))
}

/// How a tick begins.
pub enum Begin<'a, S: Sql> {
    Tick(Box<Tick<'a, S>>),
    /// No run is going and none is due.
    Idle,
    /// `Start::Now` while this run is going.
    AlreadyRunning(u64),
    /// A daily allowance is nearly spent: nothing is written or sent until 00:00 UTC (the
    /// event says which, for the log).
    Paused(Event),
}

/// What to do with a cron tick, an alarm or `POST /run` that arrives at the Durable Object.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Arrival {
    /// Run a tick.
    Tick,
    /// Another tick awaits a subrequest and sets the alarm when it ends: do nothing.
    Skip,
    /// `POST /run` while this run is going: refuse (409).
    AlreadyRunning(u64),
    /// `POST /run` with no run going while another tick is busy: start the run and leave it to
    /// the alarm ([`Tick::finish_busy`]). A full tick now would put the busy tick's in-flight
    /// project back in line.
    StartOnly,
}

/// The busy-tick rule: events come while a tick awaits its subrequests, and must not start a
/// second tick beside it.
pub fn arrival(busy: bool, start: Start, active_run: Option<u64>) -> Arrival {
    match (busy, start, active_run) {
        (false, _, _) => Arrival::Tick,
        (true, Start::IfDue, _) => Arrival::Skip,
        (true, Start::Now, Some(run)) => Arrival::AlreadyRunning(run),
        (true, Start::Now, None) => Arrival::StartOnly,
    }
}

/// The start a new run's schedule counts from. With a start hour, only runs the schedule
/// started count, so a run started by hand in the afternoon does not make the night's run not
/// due (`last_scheduled`: the store's record, 0 when none yet; a store from before it was kept
/// has none, and counts from its latest run once). Without one, the interval counts from the
/// latest run of any kind: a run by hand is a backup, and one right after it would repeat it.
pub fn schedule_anchor(
    config: &Config,
    latest_started_ms: Option<u64>,
    last_scheduled_ms: Option<u64>,
) -> Option<u64> {
    match (config.backup_start_hour_utc, last_scheduled_ms) {
        (None, _) | (Some(_), None) => latest_started_ms,
        (Some(_), Some(0)) => None,
        (Some(_), Some(at)) => Some(at),
    }
}

/// Whether a new run is due: `interval` after the last one started, and only during the start
/// hour when one is set (then "one interval ago" is counted from the start of that hour, so the
/// start time cannot drift out of it day by day).
pub fn run_due(config: &Config, last_started_ms: Option<u64>, now_ms: u64) -> bool {
    let interval = ms(config.backup_interval);
    match config.backup_start_hour_utc {
        None => last_started_ms.is_none_or(|last| now_ms >= last + interval),
        Some(hour) => {
            let hour_ms = 3_600_000;
            let in_hour = (now_ms / hour_ms) % 24 == u64::from(hour);
            let hour_start = now_ms - now_ms % hour_ms;
            in_hour && last_started_ms.is_none_or(|last| hour_start + hour_ms >= last + interval)
        }
    }
}

impl<'a, S: Sql> Tick<'a, S> {
    /// Starts a tick: resumes the active run, or starts one (see [`Start`]).
    pub fn begin(
        store: &'a Store<S>,
        config: &'a Config,
        now_ms: u64,
        start: Start,
    ) -> Result<Begin<'a, S>, StoreError> {
        let rows_at_begin = store.rows_written();
        let meta = store.meta(&TICK_FACTS)?;
        let mut usage = Usage::read(meta.text(MetaKey::DailyUsage)?.as_deref(), now_ms)?;
        if let Some(pause) = usage.pause(config) {
            return Ok(Begin::Paused(Event::DailyAllowancePaused {
                allowance: pause.allowance,
                used: pause.used,
                limit: pause.limit,
                until_ms: pause.until_ms,
            }));
        }
        // Old runs are pruned a batch at a time in ticks that read no pages (idle ticks and the
        // exporting ones) until nothing is left below the newest run; later ticks skip it.
        let prune = |newest: u64| -> Result<(), StoreError> {
            if meta.u64(MetaKey::PrunedBelow)? == Some(newest) {
                return Ok(());
            }
            let forget_before = now_ms.saturating_sub(ms(BACKUPS_REMEMBERED));
            if store.prune(
                newest,
                RUNS_KEPT_IN_DETAIL,
                RUNS_KEPT,
                PRUNE_BATCH,
                forget_before,
            )? {
                store.set_meta(MetaKey::PrunedBelow, newest)?;
            }
            Ok(())
        };
        // The region the bucket named when asked before, if it was this endpoint and bucket.
        let learned_region = |bucket: &Bucket| -> Result<Option<String>, StoreError> {
            Ok(LearnedRegion::read_for(
                meta.text(MetaKey::BucketRegion)?.as_deref(),
                bucket,
            ))
        };
        let mut events = Vec::new();
        let mut fresh_run = false;
        let run = match (store.active_run()?, start) {
            (Some(run), Start::Now) => return Ok(Begin::AlreadyRunning(run.id)),
            (Some(run), Start::IfDue) => {
                if matches!(run.phase, Phase::Exporting | Phase::Verifying) {
                    prune(run.id)?;
                }
                run
            }
            (None, _) => {
                let last = store.latest_run()?;
                let last_scheduled = meta.u64(MetaKey::LastScheduledStart)?;
                let anchor =
                    schedule_anchor(config, last.as_ref().map(|r| r.started_ms), last_scheduled);
                if start == Start::IfDue && !run_due(config, anchor, now_ms) {
                    if let Some(last) = last {
                        prune(last.id)?;
                    }
                    // Idle ticks write nothing, unless pruning did: then it counts.
                    let rows = store.rows_written() - rows_at_begin;
                    if rows > 0 {
                        usage.record(store, config, rows + 1)?;
                    }
                    return Ok(Begin::Idle);
                }
                // The run keeps the settings it starts with to its end.
                let settings = RunSettings::of(config, learned_region(&config.bucket)?)
                    .after(last.as_ref().map(|r| (r.id, r.settings.as_deref())));
                let gitlab = GitLab::new(&settings.gitlab_url, config.gitlab_token.clone());
                let groups: Vec<(String, String)> = config
                    .groups
                    .iter()
                    .map(|g| {
                        let first = gitlab.first_projects_page(g, config.listing);
                        (g.to_string(), first.to_string())
                    })
                    .collect();
                let run = store.start_run_with(now_ms, &groups, Some(&settings.to_json()))?;
                match start {
                    Start::IfDue => store.set_meta(MetaKey::LastScheduledStart, now_ms)?,
                    // The first manual run of a store that never kept the record: none yet.
                    Start::Now if last_scheduled.is_none() => {
                        store.set_meta(MetaKey::LastScheduledStart, 0u64)?
                    }
                    Start::Now => {}
                }
                // Each run tries the configured limit again.
                store.delete_meta(MetaKey::LearnedLimit)?;
                store.delete_meta(MetaKey::LearnedUntil)?;
                fresh_run = true;
                events.push(Event::RunStarted {
                    run: run.id,
                    groups: groups.into_iter().map(|(g, _)| g).collect(),
                    manual: start == Start::Now,
                });
                run
            }
        };
        let learned = meta.u64(MetaKey::LearnedLimit)?.filter(|_| !fresh_run);
        let holds = meta
            .u64(MetaKey::LearnedUntil)?
            .is_some_and(|until| until > now_ms);
        let export_limit = match learned {
            Some(learned) if holds => config.exports_per_minute.min(learned as u32).max(1),
            _ => config.exports_per_minute,
        };
        // Every request and key of the run comes from the settings it started with, read once
        // a tick. A run begun before runs kept them (`settings` NULL) goes on with the current
        // ones, as it did.
        let (settings, pinned) = match run.settings.as_deref() {
            Some(json) => (RunSettings::from_json(json).map_err(StoreError)?, true),
            None => (
                RunSettings::of(config, learned_region(&config.bucket)?),
                false,
            ),
        };
        // Secrets are never kept: the token is the current one, sent only to the run's GitLab.
        let gitlab = GitLab::new(&settings.gitlab_url, config.gitlab_token.clone());
        let region = settings.region().map(str::to_owned);
        let intents = Intents::read(meta.text(MetaKey::Intents)?.as_deref(), run.id)?;
        let mut window = Window::read(meta.text(MetaKey::ExportWindow)?.as_deref())?;
        window.flights.for_run(run.id);
        // Only one tick runs at a time, so a request under way without its answer belongs to a
        // tick that died before it recorded the answer: back in line (stored with the next
        // claim, or at the end of the tick).
        let window_unsaved = !fresh_run && window.flights.release_interrupted() > 0;
        // S3's refusals of a record count for the run that is writing it.
        let mut record_failing_since = meta.u64(MetaKey::RecordFailingSince)?;
        if fresh_run && record_failing_since.take().is_some() {
            store.delete_meta(MetaKey::RecordFailingSince)?;
        }
        Ok(Begin::Tick(Box::new(Tick {
            store,
            config,
            gitlab,
            settings,
            pinned,
            signed_for: None,
            region_relearned: false,
            region,
            budget: Budget::new(
                config.subrequests_per_invocation,
                pages_budget(config),
                export_limit,
            ),
            gates: Gates {
                gitlab: GitLabGate::new(
                    meta.u64(MetaKey::GitLabFailures)?.unwrap_or(0),
                    meta.u64(MetaKey::GitLabBackoffUntil)?.unwrap_or(0),
                ),
                exports: Hold::new(
                    meta.u64(MetaKey::ExportsBlockedUntil)?.unwrap_or(0),
                    Timer::RetryAfter,
                ),
                s3: S3Gate::Open,
            },
            window,
            window_unsaved,
            export_limit,
            token_checked: false,
            prefix_ours: meta.u64(MetaKey::PrefixCheckedRun)? == Some(run.id),
            checked_after: (0, 0),
            record_failing_since,
            intents,
            timers: TimerTable::default(),
            usage,
            rows_at_begin,
            run,
            report: TickReport {
                events,
                ..TickReport::default()
            },
        })))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_busy_object_skips_scheduled_ticks_and_only_records_a_manual_start() {
        assert_eq!(arrival(false, Start::IfDue, Some(3)), Arrival::Tick);
        assert_eq!(arrival(false, Start::Now, None), Arrival::Tick);
        assert_eq!(arrival(true, Start::IfDue, None), Arrival::Skip);
        assert_eq!(arrival(true, Start::IfDue, Some(3)), Arrival::Skip);
        assert_eq!(
            arrival(true, Start::Now, Some(3)),
            Arrival::AlreadyRunning(3)
        );
        assert_eq!(arrival(true, Start::Now, None), Arrival::StartOnly);
    }
}
