//! The run's state machine, without I/O: a [`Tick`] is handed the clock and the answers to
//! the requests it asked for, and hands back the next request to send, what to log, and when
//! to wake up. Its decisions are persisted through [`Store`] before each request goes out and
//! after each answer, so a tick that dies loses no project and breaks no limit.
//!
//! One tick at a time: the caller (the Durable Object) must not run two ticks concurrently.

use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};
use url::Url;

use crate::config::Config;
use crate::gitlab::{ExportAnswer, ExportStatus, GitLab, GitLabError};
use crate::http::{redact_url, HttpRequest, HttpResponse, HttpResult, Method};
use crate::manifest::{self, PART_SIZE};
use crate::s3::{object_key, region_from_answer, Signer};
use crate::store::{
    Backup, ClaimedProject, ListedPage, Phase, RunRow, Sql, Store, StoreError, META_WINDOW,
};
use crate::time::{ms, rfc3339, system_time};
use window::Window;

/// GitLab counts export requests per user in windows of one minute.
pub const EXPORT_WINDOW: Duration = Duration::from_secs(60);
/// How long a request may be in flight before it is given up; until its answer arrives, the
/// rate window counts it as arriving at GitLab as late as this.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// After a 429, a little more than GitLab asked, for clock and network skew.
pub const RETRY_AFTER_SLACK: Duration = Duration::from_secs(2);
/// Backoff after GitLab was unavailable (5xx, network, 401): 1, 2, 4, then 8 minutes.
pub const BACKOFF_STEP: Duration = Duration::from_secs(60);
pub const BACKOFF_MAX: Duration = Duration::from_secs(8 * 60);
/// Runs whose per-project rows are kept (the current and the previous one).
pub const RUNS_KEPT_IN_DETAIL: u64 = 2;
/// Runs whose summaries are kept.
pub const RUNS_KEPT: u64 = 30;
/// Rows of old runs deleted per tick at most, so pruning never makes one tick heavy. A run of
/// N projects takes at least N / 6 ticks (GitLab's export limit), so pruning the run it
/// replaces keeps up.
pub const PRUNE_BATCH: u64 = 20;
/// Listing pages read at once: Cloudflare keeps at most six subrequests waiting for their
/// answer per invocation, and queues the rest.
pub const LISTING_CONCURRENCY: u32 = 6;
/// Export requests of one project left without a usable answer (5xx, timeout) in a row that
/// count as one failed attempt.
pub const UNANSWERED_PER_ATTEMPT: u64 = 3;
/// CPU time budgeted for one listing page of 100 projects (parsing it and recording its
/// rows): the free plan's 10 ms reads one page per invocation. `cargo xtask bench` measures
/// the real cost on the host.
pub const LISTING_PAGE_CPU_MS: u32 = 10;
/// The first look at an accepted export (GitLab needs a while to build it).
pub const FIRST_CHECK_AFTER: Duration = Duration::from_secs(10);
/// Later looks at an export that is not proven yet.
pub const CHECK_EVERY: Duration = Duration::from_secs(30);
/// GitLab may read `none` for a while after the request; after this, look in the bucket anyway
/// (some versions keep `none` for exports with an upload URL).
pub const NONE_GRACE: Duration = Duration::from_secs(120);
/// Waits before the 2nd, 3rd, 4th and later attempts of a failed export.
pub const RETRY_BACKOFF: [Duration; 4] = [
    Duration::from_secs(60),
    Duration::from_secs(5 * 60),
    Duration::from_secs(15 * 60),
    Duration::from_secs(30 * 60),
];

pub(crate) const META_BLOCKED_UNTIL: &str = "exports_blocked_until_ms";
pub(crate) const META_BACKOFF_UNTIL: &str = "gitlab_backoff_until_ms";
const META_FAILURES: &str = "gitlab_consecutive_failures";
pub(crate) const META_REGION: &str = "bucket_region";
/// The export limit learned from GitLab's 429s during the current run, and until when it holds.
pub(crate) const META_LEARNED_LIMIT: &str = "learned_exports_per_minute";
const META_LEARNED_UNTIL: &str = "learned_limit_until_ms";
/// The newest run when pruning found nothing left below it.
const META_PRUNED_BELOW: &str = "pruned_below_run";
/// How long a learned limit holds before the configured one is tried again: one 429 (someone
/// else's export with the same user, a hiccup) must not slow a run of days for good, and a
/// GitLab whose limit really is lower costs one 429 per this span.
pub const LEARNED_LIMIT_HOLDS: Duration = Duration::from_secs(15 * 60);
pub(crate) const META_LAST_ERROR: &str = "last_error";
pub(crate) const META_LAST_ERROR_AT: &str = "last_error_at_ms";

/// Something worth a log line.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Event {
    RunStarted {
        run: u64,
        groups: Vec<String>,
        manual: bool,
    },
    PageListed {
        run: u64,
        group: String,
        projects: usize,
        new: u64,
        more: bool,
    },
    GroupFailed {
        run: u64,
        group: String,
        reason: String,
    },
    ExportRequested {
        run: u64,
        project_id: u64,
        path: String,
        key: String,
        upload_url: String,
    },
    Exported {
        run: u64,
        project_id: u64,
        path: String,
    },
    Verified {
        run: u64,
        project_id: u64,
        path: String,
        key: String,
        size: u64,
    },
    RetryScheduled {
        run: u64,
        project_id: u64,
        path: String,
        attempts: u64,
        reason: String,
        at_ms: u64,
    },
    PreflightPassed {
        run: u64,
        user: String,
    },
    RunStopped {
        run: u64,
        reason: String,
    },
    ManifestWritten {
        run: u64,
        key: String,
        projects: usize,
    },
    ExportFailed {
        run: u64,
        project_id: u64,
        path: String,
        reason: String,
    },
    RateLimited {
        retry_after_s: u64,
    },
    /// GitLab refused an export with 429 while fewer than EXPORTS_PER_MINUTE were in the last
    /// minute: its real limit is lower, and the run keeps to it for LEARNED_LIMIT_HOLDS.
    LimitLearned {
        run: u64,
        exports_per_minute: u32,
    },
    RetryLater {
        run: u64,
        reason: String,
        not_before_ms: u64,
    },
    RegionFound {
        bucket: String,
        region: String,
    },
    RunFinished {
        run: u64,
        listed: u64,
        exported: u64,
        verified: u64,
        failed: u64,
        summary: String,
    },
    TickEnded {
        run: u64,
        phase: Phase,
        subrequests: u32,
        exports: u32,
    },
}

/// Whether a tick may start a new run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Start {
    /// The cron trigger and alarms: when the interval (and start hour) say so.
    IfDue,
    /// `POST /run`: now, unless a run is going.
    Now,
}

/// How a tick begins.
pub enum Begin<'a, S: Sql> {
    Tick(Box<Tick<'a, S>>),
    /// No run is going and none is due.
    Idle,
    /// `Start::Now` while this run is going.
    AlreadyRunning(u64),
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

/// What a 429 holds back.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Limited {
    /// The export endpoint's own limit.
    Exports,
    /// Any other endpoint: wait before asking GitLab anything.
    AllOfGitLab,
}

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
    Head {
        project: ClaimedProject,
        gitlab_said: &'static str,
    },
    ManifestPart {
        key: String,
        project_ids: Vec<u64>,
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
    /// When work will be possible again sooner than the next cron tick may come.
    pub wake_at_ms: Option<u64>,
    pub subrequests: u32,
    pub exports: u32,
}

/// Listing pages one invocation reads at most, by its CPU budget.
fn pages_budget(config: &Config) -> u32 {
    (config.cpu_ms_per_invocation / LISTING_PAGE_CPU_MS).max(1)
}

/// One invocation's work on the current run.
pub struct Tick<'a, S: Sql> {
    store: &'a Store<S>,
    config: &'a Config,
    gitlab: GitLab,
    run: RunRow,
    region: Option<String>,
    subrequests_left: u32,
    exports_left: u32,
    /// Listing pages this invocation's CPU budget still allows.
    pages_left: u32,
    /// The rolling window of export requests.
    window: Window,
    /// `(due_ms, project_id)` of the last project this tick checked: the next check comes after.
    checked_after: (u64, u64),
    /// Export requests allowed per rolling minute: EXPORTS_PER_MINUTE, or less if GitLab's
    /// 429s showed a lower limit in this run.
    export_limit: u32,
    /// Set when the tick left work for the next one to keep its own cost bounded (the page
    /// budget, a listing tick's exports, a second manifest part): the alarm goes on at once.
    cut_short: bool,
    /// Whether this tick wrote a manifest part (its whole work).
    part_written: bool,
    /// A step that must follow the one just handled (the HEAD after a finished export).
    follow_up: Option<Step>,
    /// Set once GitLab must not be asked anything more in this tick.
    gitlab_stopped: bool,
    /// Set once exports must stop for this tick.
    exports_stopped: bool,
    /// Set once S3 refused the worker's own PUTs in this tick.
    s3_stopped: bool,
    /// Whether the token was checked in this tick (preflight).
    user_checked: bool,
    /// GitLab's failures in a row, over ticks (the backoff grows with them).
    gitlab_failures: u64,
    /// No GitLab request before this (backoff, or a 429 outside exports).
    gitlab_not_before: u64,
    /// No export request before this (a 429).
    exports_not_before: u64,
    report: TickReport,
}

impl<'a, S: Sql> Tick<'a, S> {
    /// Starts a tick: resumes the active run, or starts one (see [`Start`]).
    pub fn begin(
        store: &'a Store<S>,
        config: &'a Config,
        now_ms: u64,
        start: Start,
    ) -> Result<Begin<'a, S>, StoreError> {
        let meta = store.meta(&[
            META_LEARNED_LIMIT,
            META_LEARNED_UNTIL,
            META_REGION,
            META_WINDOW,
            META_FAILURES,
            META_BACKOFF_UNTIL,
            META_BLOCKED_UNTIL,
            META_PRUNED_BELOW,
        ])?;
        // Old runs are pruned a batch at a time in ticks that read no pages (idle ticks and the
        // exporting ones) until nothing is left below the newest run; later ticks skip it.
        let prune = |newest: u64| -> Result<(), StoreError> {
            if meta.u64(META_PRUNED_BELOW)? == Some(newest) {
                return Ok(());
            }
            if store.prune(newest, RUNS_KEPT_IN_DETAIL, RUNS_KEPT, PRUNE_BATCH)? {
                store.set_meta(META_PRUNED_BELOW, newest)?;
            }
            Ok(())
        };
        let gitlab = GitLab::new(&config.gitlab_url, config.gitlab_token.clone());
        let mut events = Vec::new();
        let mut fresh_run = false;
        let run = match (store.active_run()?, start) {
            (Some(run), Start::Now) => return Ok(Begin::AlreadyRunning(run.id)),
            (Some(run), Start::IfDue) => {
                if matches!(run.phase, Phase::Exporting | Phase::Verifying) {
                    prune(run.id)?;
                }
                // Only one tick runs at a time, so an `exporting` project belongs to a tick that
                // died before it recorded the answer.
                store.requeue_interrupted(run.id)?;
                run
            }
            (None, _) => {
                let last = store.latest_run()?;
                if start == Start::IfDue
                    && !run_due(config, last.as_ref().map(|r| r.started_ms), now_ms)
                {
                    if let Some(last) = last {
                        prune(last.id)?;
                    }
                    return Ok(Begin::Idle);
                }
                let groups: Vec<(String, String)> = config
                    .groups
                    .iter()
                    .map(|g| {
                        let first = gitlab.first_projects_page(g, config.listing);
                        (g.to_string(), first.to_string())
                    })
                    .collect();
                let run = store.start_run(now_ms, &groups)?;
                // Each run tries the configured limit again.
                store.delete_meta(META_LEARNED_LIMIT)?;
                store.delete_meta(META_LEARNED_UNTIL)?;
                fresh_run = true;
                events.push(Event::RunStarted {
                    run: run.id,
                    groups: groups.into_iter().map(|(g, _)| g).collect(),
                    manual: start == Start::Now,
                });
                run
            }
        };
        let learned = meta.u64(META_LEARNED_LIMIT)?.filter(|_| !fresh_run);
        let holds = meta
            .u64(META_LEARNED_UNTIL)?
            .is_some_and(|until| until > now_ms);
        let export_limit = match learned {
            Some(learned) if holds => config.exports_per_minute.min(learned as u32).max(1),
            _ => config.exports_per_minute,
        };
        let region = match &config.bucket.region {
            Some(region) => Some(region.clone()),
            None => meta.text(META_REGION)?,
        };
        Ok(Begin::Tick(Box::new(Tick {
            store,
            config,
            gitlab,
            run,
            region,
            subrequests_left: config.subrequests_per_invocation,
            exports_left: export_limit,
            export_limit,
            pages_left: pages_budget(config),
            cut_short: false,
            part_written: false,
            window: Window::read(meta.text(META_WINDOW)?.as_deref())?,
            checked_after: (0, 0),
            follow_up: None,
            gitlab_stopped: false,
            exports_stopped: false,
            s3_stopped: false,
            user_checked: false,
            gitlab_failures: meta.u64(META_FAILURES)?.unwrap_or(0),
            gitlab_not_before: meta.u64(META_BACKOFF_UNTIL)?.unwrap_or(0),
            exports_not_before: meta.u64(META_BLOCKED_UNTIL)?.unwrap_or(0),
            report: TickReport {
                events,
                ..TickReport::default()
            },
        })))
    }

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
    /// done. The caller sends them together (they are independent: listing pages), then hands
    /// each answer to [`Tick::handle`] in the order of the steps.
    pub fn next_steps(&mut self, now_ms: u64) -> Result<Vec<Step>, StoreError> {
        if self.subrequests_left == 0 {
            return Ok(Vec::new());
        }
        if let Some(step) = self.follow_up.take() {
            return Ok(vec![self.spend(step)]);
        }
        let steps = match self.run.phase {
            Phase::Preflight => self.preflight_step(now_ms)?.into_iter().collect(),
            Phase::Listing => self.listing_steps(now_ms)?,
            Phase::Exporting | Phase::Verifying => self.run_step(now_ms)?.into_iter().collect(),
            Phase::Finished => Vec::new(),
        };
        Ok(steps.into_iter().map(|step| self.spend(step)).collect())
    }

    fn spend(&mut self, step: Step) -> Step {
        self.subrequests_left -= 1;
        self.report.subrequests += 1;
        step
    }

    /// Before anything else: the token is valid, the region is known, the bucket takes a PUT.
    fn preflight_step(&mut self, now_ms: u64) -> Result<Option<Step>, StoreError> {
        if !self.user_checked {
            if !self.gitlab_available(now_ms)? {
                return Ok(None);
            }
            return Ok(Some(Step {
                request: self.gitlab.user_request(),
                purpose: Purpose::CheckUser,
            }));
        }
        let Some(region) = self.region.clone() else {
            return self.region_probe(now_ms);
        };
        if self.s3_stopped {
            return Ok(None);
        }
        let key = manifest::probe_key(&self.config.s3_prefix, self.run_started());
        let body = serde_json::json!({
            "run": self.run.id,
            "started": rfc3339(self.run.started_ms),
            "purpose": "gitlab-backup checks that the bucket accepts its uploads",
        })
        .to_string();
        self.s3_put(
            &region,
            &key,
            body,
            "application/json",
            now_ms,
            Purpose::Probe,
        )
    }

    /// The next listing pages: each unfinished group's next page, then pages further on where
    /// GitLab gave the page count, at most [`LISTING_CONCURRENCY`] at once and within the
    /// tick's page and subrequest budgets.
    fn listing_steps(&mut self, now_ms: u64) -> Result<Vec<Step>, StoreError> {
        if self.gitlab_stopped || !self.gitlab_available(now_ms)? {
            return Ok(Vec::new());
        }
        let room = LISTING_CONCURRENCY
            .min(self.pages_left)
            .min(self.subrequests_left) as usize;
        let listings = self.store.open_listings(self.run.id, room.max(1) as u64)?;
        if listings.is_empty() {
            self.set_phase(Phase::Exporting, now_ms)?;
            if self.pages_left < pages_budget(self.config) {
                // This tick read pages: the exports start in the next one, at once, so no tick
                // carries both a page of rows and a minute's exports.
                self.cut_short = true;
                return Ok(Vec::new());
            }
            return Ok(self.run_step(now_ms)?.into_iter().collect());
        }
        if room == 0 {
            self.cut_short = true;
            return Ok(Vec::new());
        }
        let cursors = listings
            .iter()
            .map(|listing| {
                Url::parse(&listing.next_url)
                    .map(|url| (listing, url))
                    .map_err(|e| StoreError(format!("stored page URL: {e}")))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let mut pages: Vec<_> = cursors
            .iter()
            .map(|(listing, url)| (*listing, listing.page, url.clone()))
            .collect();
        for (listing, cursor) in &cursors {
            let Some(total) = listing.pages_total else {
                continue;
            };
            for page in listing.page + 1..=total {
                if pages.len() >= room {
                    break;
                }
                pages.push((listing, page, crate::gitlab::with_page(cursor, page)));
            }
        }
        pages.truncate(room);
        self.pages_left -= pages.len() as u32;
        Ok(pages
            .into_iter()
            .map(|(listing, page, url)| Step {
                request: self.gitlab.projects_page_request(url),
                purpose: Purpose::ListPage {
                    position: listing.position,
                    page,
                    group: listing.group.clone(),
                },
            })
            .collect())
    }

    /// Exports first (never delayed by checks), then checks of accepted exports, then the
    /// manifest; the run finishes when every project has its final outcome.
    fn run_step(&mut self, now_ms: u64) -> Result<Option<Step>, StoreError> {
        let Some(region) = self.region.clone() else {
            return self.region_probe(now_ms);
        };
        // A manifest part is a tick's whole work (a page of rows, like a listing tick): first
        // thing in a tick, and the tick ends after it; the alarm goes on at once.
        if self.part_written {
            self.cut_short = true;
            return Ok(None);
        }
        if self.report.subrequests == 0
            && !self.s3_stopped
            && self.run.manifest_waiting >= PART_SIZE
        {
            return self.manifest_part_step(&region, now_ms);
        }
        let gitlab_ok = !self.gitlab_stopped && self.gitlab_available(now_ms)?;
        if gitlab_ok {
            if let Some(step) = self.export_step(&region, now_ms)? {
                return Ok(Some(step));
            }
            if let Some((project, due_ms)) =
                self.store
                    .next_check(self.run.id, now_ms, self.checked_after)?
            {
                self.checked_after = (due_ms, project.project_id);
                return Ok(Some(Step {
                    request: self.gitlab.export_status_request(project.project_id),
                    purpose: Purpose::ExportStatus { project },
                }));
            }
        }
        let left = self.store.remaining(self.run.id)?;
        let exporting = left.pending_due.is_some() || left.exporting;
        let unproven = left.exported_due.is_some();
        let phase = if exporting {
            Phase::Exporting
        } else {
            Phase::Verifying
        };
        if phase != self.run.phase {
            self.set_phase(phase, now_ms)?;
        }
        if self.s3_stopped {
            return Ok(None);
        }
        let done = !exporting && !unproven;
        if self.run.manifest_waiting >= PART_SIZE || (done && self.run.manifest_waiting > 0) {
            if self.report.subrequests > 0 {
                // This tick did other work: the next one, at once, starts with the part.
                self.cut_short = true;
                return Ok(None);
            }
            return self.manifest_part_step(&region, now_ms);
        }
        if done {
            let key = manifest::summary_key(&self.config.s3_prefix, self.run_started());
            let errors = self.store.listing_errors(self.run.id)?;
            let body = manifest::summary_body(&self.config.s3_prefix, &self.run, &errors, now_ms);
            return self.s3_put(
                &region,
                &key.clone(),
                body,
                "application/json",
                now_ms,
                Purpose::Summary { key },
            );
        }
        // Nothing to do now: wake when the next retry or check comes due.
        for due in [left.pending_due, left.exported_due].into_iter().flatten() {
            if due > now_ms {
                self.wake_at(due);
            }
        }
        Ok(None)
    }

    fn export_step(&mut self, region: &str, now_ms: u64) -> Result<Option<Step>, StoreError> {
        if self.exports_stopped || self.exports_left == 0 || !self.window_allows(now_ms)? {
            return Ok(None);
        }
        let in_flight_until = now_ms + ms(REQUEST_TIMEOUT);
        let Some(project) = self.store.claim_next(self.run.id, now_ms)? else {
            return Ok(None);
        };
        // Logged in the window in the same synchronous step as the claim.
        let log_id = self.window.request(in_flight_until, now_ms);
        self.save_window()?;
        let key = object_key(&self.config.s3_prefix, &project.path, self.run_started());
        let object = self.config.bucket.object_url(region, &key);
        let upload = match self.signer(region, now_ms).presign(
            Method::Put,
            &object,
            self.config.presign_expiry,
        ) {
            Ok(url) => url,
            Err(e) => {
                // Nothing was sent: the request leaves the window again.
                self.window.answered(log_id, 0, now_ms);
                self.save_window()?;
                self.fail_for_good(&project, &e.to_string(), now_ms)?;
                return self.export_step(region, now_ms);
            }
        };
        self.report.events.push(Event::ExportRequested {
            run: self.run.id,
            project_id: project.project_id,
            path: project.path.clone(),
            key,
            upload_url: redact_url(&upload),
        });
        self.exports_left -= 1;
        self.report.exports += 1;
        Ok(Some(Step {
            request: self.gitlab.export_request(project.project_id, &upload),
            purpose: Purpose::Export { project, log_id },
        }))
    }

    fn manifest_part_step(
        &mut self,
        region: &str,
        now_ms: u64,
    ) -> Result<Option<Step>, StoreError> {
        let entries = self.store.manifest_entries(self.run.id, PART_SIZE)?;
        let part = self.run.manifest_parts + 1;
        let key = manifest::part_key(&self.config.s3_prefix, self.run_started(), part);
        let body = manifest::part_body(&self.config.s3_prefix, self.run_started(), &entries);
        let project_ids = entries.iter().map(|e| e.project_id).collect();
        self.s3_put(
            region,
            &key.clone(),
            body,
            "application/x-ndjson",
            now_ms,
            Purpose::ManifestPart { key, project_ids },
        )
    }

    /// A PUT of the worker's own object, signed in its headers (body hash included).
    fn s3_put(
        &mut self,
        region: &str,
        key: &str,
        body: String,
        content_type: &'static str,
        now_ms: u64,
        purpose: Purpose,
    ) -> Result<Option<Step>, StoreError> {
        let url = self.config.bucket.object_url(region, key);
        let signer = self.signer(region, now_ms);
        match signer.signed_request(Method::Put, &url, Some((body, content_type))) {
            Ok(request) => Ok(Some(Step { request, purpose })),
            Err(e) => {
                self.s3_stopped = true;
                self.note_error(&e.to_string(), now_ms)?;
                Ok(None)
            }
        }
    }

    /// A signed HEAD of the bucket, whose answer names its region (one per tick).
    fn region_probe(&mut self, now_ms: u64) -> Result<Option<Step>, StoreError> {
        if self.s3_stopped {
            return Ok(None);
        }
        self.s3_stopped = true;
        let url = match self.signer("us-east-1", now_ms).presign(
            Method::Head,
            &self.config.bucket.region_probe_url(),
            Duration::from_secs(60),
        ) {
            Ok(url) => url,
            Err(e) => {
                self.note_error(&e.to_string(), now_ms)?;
                return Ok(None);
            }
        };
        Ok(Some(Step {
            request: HttpRequest {
                method: Method::Head,
                url,
                headers: Vec::new(),
                body: None,
            },
            purpose: Purpose::FindRegion,
        }))
    }

    /// False while GitLab is in backoff after failures.
    fn gitlab_available(&mut self, now_ms: u64) -> Result<bool, StoreError> {
        if self.gitlab_not_before > now_ms {
            self.wake_at(self.gitlab_not_before);
            return Ok(false);
        }
        Ok(true)
    }

    /// Whether the rolling window has room for one more export request now; if not, when it
    /// will (for the caller's alarm).
    fn window_allows(&mut self, now_ms: u64) -> Result<bool, StoreError> {
        if self.exports_not_before > now_ms {
            self.wake_at(self.exports_not_before);
            return Ok(false);
        }
        if self.window.used(now_ms) < self.export_limit {
            return Ok(true);
        }
        if let Some(at) = self.window.frees_at(now_ms) {
            self.wake_at(at);
        }
        Ok(false)
    }

    fn save_window(&self) -> Result<(), StoreError> {
        self.store.set_meta(META_WINDOW, self.window.to_json()?)
    }

    fn wake_at(&mut self, at_ms: u64) {
        self.report.wake_at_ms = Some(self.report.wake_at_ms.map_or(at_ms, |w| w.min(at_ms)));
    }

    /// Feeds the answer (or the failure to get one) to a step, and persists what follows.
    pub fn handle(
        &mut self,
        step: Step,
        answer: HttpResult,
        now_ms: u64,
    ) -> Result<(), StoreError> {
        match step.purpose {
            Purpose::CheckUser => self.on_user(answer, now_ms),
            Purpose::Probe => self.on_probe(answer, now_ms),
            Purpose::ListPage {
                position,
                page,
                group,
            } => self.on_page(position, page, group, answer, now_ms),
            Purpose::Export { project, log_id } => {
                self.window.answered(log_id, now_ms, now_ms);
                self.save_window()?;
                self.on_export(project, answer, now_ms)
            }
            Purpose::ExportStatus { project } => self.on_export_status(project, answer, now_ms),
            Purpose::Head {
                project,
                gitlab_said,
            } => self.on_head(project, gitlab_said, answer, now_ms),
            Purpose::ManifestPart { key, project_ids } => {
                self.on_manifest_part(key, project_ids, answer, now_ms)
            }
            Purpose::Summary { key } => self.on_summary(key, answer, now_ms),
            Purpose::FindRegion => self.on_region(answer, now_ms),
        }
    }

    fn on_user(&mut self, answer: HttpResult, now_ms: u64) -> Result<(), StoreError> {
        match answer
            .map_err(GitLabError::Unavailable)
            .and_then(|a| self.gitlab.read_user(&a))
        {
            Ok(user) => {
                self.gitlab_answered()?;
                self.user_checked = true;
                self.report.events.push(Event::PreflightPassed {
                    run: self.run.id,
                    user,
                });
            }
            Err(GitLabError::Unauthorized) => {
                self.gitlab_answered()?;
                self.stop_run(&GitLabError::Unauthorized.to_string(), now_ms)?;
            }
            Err(GitLabError::RateLimited { retry_after }) => {
                self.rate_limited(retry_after, Limited::AllOfGitLab, now_ms)?;
            }
            Err(e) => self.gitlab_unavailable(&format!("checking the token: {e}"), now_ms)?,
        }
        Ok(())
    }

    fn on_probe(&mut self, answer: HttpResult, now_ms: u64) -> Result<(), StoreError> {
        match answer {
            Ok(a) if a.status == 200 => {
                self.set_phase(Phase::Listing, now_ms)?;
            }
            Ok(a) if a.status >= 500 => {
                self.s3_stopped = true;
                self.note_error(
                    &format!(
                        "S3 answered {} to the preflight PUT; trying again later",
                        a.status
                    ),
                    now_ms,
                )?;
            }
            Ok(a) => {
                let reason = format!(
                    "the bucket {} refused a signed PUT ({}): check AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_REGION and the key's s3:PutObject permission — {}",
                    self.config.bucket.name,
                    a.status,
                    s3_error(&a)
                );
                self.stop_run(&reason, now_ms)?;
            }
            Err(e) => {
                self.s3_stopped = true;
                self.note_error(&format!("S3 did not answer the preflight PUT: {e}"), now_ms)?;
            }
        }
        Ok(())
    }

    fn stop_run(&mut self, reason: &str, now_ms: u64) -> Result<(), StoreError> {
        let reason = format!("stopped before any export: {reason}");
        self.store.stop_run(self.run.id, &reason, now_ms)?;
        self.run.phase = Phase::Finished;
        self.run.finished_ms = Some(now_ms);
        self.run.error = Some(reason.clone());
        self.note_error(&reason, now_ms)?;
        self.report.events.push(Event::RunStopped {
            run: self.run.id,
            reason,
        });
        Ok(())
    }

    fn on_page(
        &mut self,
        position: u64,
        page_number: u64,
        group: String,
        answer: HttpResult,
        now_ms: u64,
    ) -> Result<(), StoreError> {
        let page = answer
            .map_err(GitLabError::Unavailable)
            .and_then(|a| self.gitlab.read_projects_page(&a));
        match page {
            Ok(page) => {
                self.gitlab_answered()?;
                let projects: Vec<(u64, &str)> = page
                    .projects
                    .iter()
                    .map(|p| (p.id, p.path_with_namespace.as_str()))
                    .collect();
                let next = page.next.as_ref().map(|url| {
                    let number = crate::gitlab::page_number(url).unwrap_or(page_number + 1);
                    (url.as_str(), number)
                });
                let new = self.store.record_page(
                    self.run.id,
                    &ListedPage {
                        position,
                        page: page_number,
                        projects: &projects,
                        next,
                        pages_total: page.total_pages,
                    },
                )?;
                self.run.listed += new;
                self.report.events.push(Event::PageListed {
                    run: self.run.id,
                    group,
                    projects: projects.len(),
                    new,
                    more: next.is_some(),
                });
            }
            Err(GitLabError::RateLimited { retry_after }) => {
                // Listing has its own, generous limit; wait as asked, exports included.
                self.rate_limited(retry_after, Limited::AllOfGitLab, now_ms)?;
            }
            Err(e @ (GitLabError::Unauthorized | GitLabError::Unavailable(_))) => {
                self.gitlab_unavailable(&format!("listing group {group}: {e}"), now_ms)?;
            }
            Err(e) => {
                self.gitlab_answered()?;
                let reason = e.to_string();
                self.store
                    .record_listing_error(self.run.id, position, &reason)?;
                self.note_error(&format!("group {group}: {reason}"), now_ms)?;
                self.report.events.push(Event::GroupFailed {
                    run: self.run.id,
                    group,
                    reason,
                });
            }
        }
        Ok(())
    }

    fn on_export(
        &mut self,
        project: ClaimedProject,
        answer: HttpResult,
        now_ms: u64,
    ) -> Result<(), StoreError> {
        let answer = match answer {
            Ok(a) => self.gitlab.read_export_answer(&a),
            Err(e) => ExportAnswer::Retry(GitLabError::Unavailable(e)),
        };
        match answer {
            ExportAnswer::Accepted => {
                self.gitlab_answered()?;
                self.store.record_exported(
                    self.run.id,
                    project.project_id,
                    now_ms,
                    now_ms + ms(FIRST_CHECK_AFTER),
                )?;
                // As the store counts it: at the project's first accepted export.
                self.run.exported += u64::from(project.exported_ms.is_none());
                self.wake_at(now_ms + ms(FIRST_CHECK_AFTER));
                self.report.events.push(Event::Exported {
                    run: self.run.id,
                    project_id: project.project_id,
                    path: project.path,
                });
            }
            ExportAnswer::Refused(reason) => {
                self.gitlab_answered()?;
                self.fail_for_good(&project, &reason, now_ms)?;
            }
            ExportAnswer::Retry(e) => {
                // A 429 keeps the project's place in line and uses no attempt; a missing answer
                // sends it behind the others (see `export_unanswered`).
                self.exports_stopped = true;
                match e {
                    GitLabError::RateLimited { retry_after } => {
                        self.store
                            .release_project(self.run.id, project.project_id)?;
                        self.learn_limit(now_ms)?;
                        self.rate_limited(retry_after, Limited::Exports, now_ms)?
                    }
                    e => self.export_unanswered(&project, &e, now_ms)?,
                }
            }
        }
        Ok(())
    }

    fn on_export_status(
        &mut self,
        project: ClaimedProject,
        answer: HttpResult,
        now_ms: u64,
    ) -> Result<(), StoreError> {
        let status = answer
            .map_err(GitLabError::Unavailable)
            .and_then(|a| self.gitlab.read_export_status(&a));
        let check_again = now_ms + ms(CHECK_EVERY);
        let exported_ms = project.exported_ms.unwrap_or(now_ms);
        match status {
            Ok(ExportStatus::InProgress) => {
                // An export stuck in GitLab's queue must not hold the run (and the next ones)
                // forever: it counts against VERIFY_TIMEOUT_MINUTES like a missing upload.
                self.gitlab_answered()?;
                let reason = format!(
                    "GitLab's export stayed queued or started for more than {} minutes",
                    self.config.verify_timeout.as_secs() / 60
                );
                self.not_there_yet(&project, &reason, now_ms)?;
            }
            Ok(ExportStatus::None) if now_ms < exported_ms + ms(NONE_GRACE) => {
                self.gitlab_answered()?;
                self.store
                    .reschedule(self.run.id, project.project_id, check_again)?;
            }
            Ok(status @ (ExportStatus::None | ExportStatus::Finished)) => {
                self.gitlab_answered()?;
                let gitlab_said = if status == ExportStatus::Finished {
                    "finished"
                } else {
                    "none"
                };
                self.follow_up = self.head_step(project, gitlab_said, now_ms)?;
            }
            Ok(ExportStatus::Failed) => {
                self.gitlab_answered()?;
                self.attempt_failed(&project, "GitLab could not build the export", now_ms)?;
            }
            Err(GitLabError::BadAnswer(why)) if why == "project gone" => {
                self.gitlab_answered()?;
                self.fail_for_good(&project, "project gone", now_ms)?;
            }
            Err(GitLabError::RateLimited { retry_after }) => {
                self.store
                    .reschedule(self.run.id, project.project_id, check_again)?;
                self.rate_limited(retry_after, Limited::AllOfGitLab, now_ms)?;
            }
            Err(e @ (GitLabError::Unauthorized | GitLabError::Unavailable(_))) => {
                self.store
                    .reschedule(self.run.id, project.project_id, check_again)?;
                self.gitlab_unavailable(
                    &format!("checking the export of {}: {e}", project.path),
                    now_ms,
                )?;
            }
            Err(e) => {
                self.gitlab_answered()?;
                self.not_there_yet(
                    &project,
                    &format!("GitLab's export status was unreadable: {e}"),
                    now_ms,
                )?;
            }
        }
        Ok(())
    }

    /// A HEAD of the backup's object, signed in its headers.
    fn head_step(
        &mut self,
        project: ClaimedProject,
        gitlab_said: &'static str,
        now_ms: u64,
    ) -> Result<Option<Step>, StoreError> {
        let Some(region) = self.region.clone() else {
            return Ok(None);
        };
        let key = object_key(&self.config.s3_prefix, &project.path, self.run_started());
        let url = self.config.bucket.object_url(&region, &key);
        let signer = self.signer(&region, now_ms);
        match signer.signed_request(Method::Head, &url, None) {
            Ok(request) => Ok(Some(Step {
                request,
                purpose: Purpose::Head {
                    project,
                    gitlab_said,
                },
            })),
            Err(e) => {
                self.not_there_yet(&project, &e.to_string(), now_ms)?;
                Ok(None)
            }
        }
    }

    fn on_head(
        &mut self,
        project: ClaimedProject,
        gitlab_said: &str,
        answer: HttpResult,
        now_ms: u64,
    ) -> Result<(), StoreError> {
        let answer = match answer {
            Ok(answer) => answer,
            Err(e) => {
                return self.not_there_yet(
                    &project,
                    &format!("S3 did not answer the check: {e}"),
                    now_ms,
                )
            }
        };
        match answer.status {
            200 => {
                let size = answer
                    .header("content-length")
                    .and_then(|v| v.trim().parse::<u64>().ok())
                    .unwrap_or(0);
                if size == 0 {
                    return self.attempt_failed(&project, "the object in S3 is empty", now_ms);
                }
                let key = object_key(&self.config.s3_prefix, &project.path, self.run_started());
                self.store
                    .record_verified(self.run.id, project.project_id, size)?;
                self.store.record_backup(&Backup {
                    project_id: project.project_id,
                    path: project.path.clone(),
                    key: key.clone(),
                    run_id: self.run.id,
                    at_ms: now_ms,
                    size,
                })?;
                self.run.verified += 1;
                self.run.manifest_waiting += 1;
                self.report.events.push(Event::Verified {
                    run: self.run.id,
                    project_id: project.project_id,
                    path: project.path,
                    key,
                    size,
                });
                Ok(())
            }
            // Missing: 404 when the key may list the bucket, 403 when it may not.
            403 | 404 => {
                let minutes = self.config.verify_timeout.as_secs() / 60;
                self.not_there_yet(
                    &project,
                    &format!(
                        "the upload never arrived within {minutes} minutes (GitLab reported the export {gitlab_said}; S3 answers {})",
                        answer.status
                    ),
                    now_ms,
                )
            }
            status => self.not_there_yet(
                &project,
                &format!("S3 refused the check ({status}): {}", s3_error(&answer)),
                now_ms,
            ),
        }
    }

    /// The proof is not there yet: look again later, or, once `VERIFY_TIMEOUT_MINUTES` passed
    /// since GitLab accepted the export, count the attempt as failed for `reason`.
    fn not_there_yet(
        &mut self,
        project: &ClaimedProject,
        reason: &str,
        now_ms: u64,
    ) -> Result<(), StoreError> {
        let exported_ms = project.exported_ms.unwrap_or(now_ms);
        if now_ms >= exported_ms + ms(self.config.verify_timeout) {
            return self.attempt_failed(project, reason, now_ms);
        }
        self.store
            .reschedule(self.run.id, project.project_id, now_ms + ms(CHECK_EVERY))
    }

    /// An attempt failed: retried with backoff and a fresh URL, up to `MAX_ATTEMPTS`.
    fn attempt_failed(
        &mut self,
        project: &ClaimedProject,
        reason: &str,
        now_ms: u64,
    ) -> Result<(), StoreError> {
        let attempts = project.attempts.max(1);
        if attempts >= self.config.max_attempts {
            let reason = format!("{reason} (after {attempts} attempts)");
            return self.fail_for_good(project, &reason, now_ms);
        }
        let wait = RETRY_BACKOFF[(attempts as usize - 1).min(RETRY_BACKOFF.len() - 1)];
        let at_ms = now_ms + ms(wait);
        self.store
            .record_failure(self.run.id, project.project_id, reason, Some(at_ms))?;
        self.note_error(&format!("{}: {reason}", project.path), now_ms)?;
        self.report.events.push(Event::RetryScheduled {
            run: self.run.id,
            project_id: project.project_id,
            path: project.path.clone(),
            attempts,
            reason: reason.to_owned(),
            at_ms,
        });
        Ok(())
    }

    fn fail_for_good(
        &mut self,
        project: &ClaimedProject,
        reason: &str,
        now_ms: u64,
    ) -> Result<(), StoreError> {
        self.store
            .record_failure(self.run.id, project.project_id, reason, None)?;
        self.run.failed += 1;
        self.run.manifest_waiting += 1;
        self.note_error(&format!("{}: {reason}", project.path), now_ms)?;
        self.report.events.push(Event::ExportFailed {
            run: self.run.id,
            project_id: project.project_id,
            path: project.path.clone(),
            reason: reason.to_owned(),
        });
        Ok(())
    }

    fn on_manifest_part(
        &mut self,
        key: String,
        project_ids: Vec<u64>,
        answer: HttpResult,
        now_ms: u64,
    ) -> Result<(), StoreError> {
        if !self.s3_put_succeeded(&key, answer, now_ms)? {
            return Ok(());
        }
        let part = self.run.manifest_parts + 1;
        self.part_written = true;
        self.store
            .record_manifest_part(self.run.id, part, &project_ids)?;
        self.run.manifest_parts = part;
        self.run.manifest_waiting = self
            .run
            .manifest_waiting
            .saturating_sub(project_ids.len() as u64);
        self.report.events.push(Event::ManifestWritten {
            run: self.run.id,
            key,
            projects: project_ids.len(),
        });
        Ok(())
    }

    fn on_summary(
        &mut self,
        key: String,
        answer: HttpResult,
        now_ms: u64,
    ) -> Result<(), StoreError> {
        if !self.s3_put_succeeded(&key, answer, now_ms)? {
            return Ok(());
        }
        self.store.record_summary(self.run.id, &key, now_ms)?;
        self.run.phase = Phase::Finished;
        self.run.finished_ms = Some(now_ms);
        self.report.events.push(Event::RunFinished {
            run: self.run.id,
            listed: self.run.listed,
            exported: self.run.exported,
            verified: self.run.verified,
            failed: self.run.failed,
            summary: key.clone(),
        });
        self.run.summary_key = Some(key);
        Ok(())
    }

    /// Whether S3 took the worker's PUT; if not, the error is noted and S3 rests this tick.
    fn s3_put_succeeded(
        &mut self,
        key: &str,
        answer: HttpResult,
        now_ms: u64,
    ) -> Result<bool, StoreError> {
        let why = match answer {
            Ok(a) if a.status == 200 => return Ok(true),
            Ok(a) => format!("S3 answered {}: {}", a.status, s3_error(&a)),
            Err(e) => e,
        };
        self.s3_stopped = true;
        self.note_error(&format!("writing {key}: {why}"), now_ms)?;
        Ok(false)
    }

    fn on_region(&mut self, answer: HttpResult, now_ms: u64) -> Result<(), StoreError> {
        let bucket = self.config.bucket.name.clone();
        match answer.as_ref().ok().and_then(region_from_answer) {
            Some(region) => {
                self.store.set_meta(META_REGION, region.as_str())?;
                self.report.events.push(Event::RegionFound {
                    bucket,
                    region: region.clone(),
                });
                self.region = Some(region);
                // The probe paused S3 work only until the region was known.
                self.s3_stopped = false;
            }
            None => {
                let why = match answer {
                    Ok(a) => format!("S3 answered {} without x-amz-bucket-region", a.status),
                    Err(e) => e,
                };
                self.note_error(
                    &format!(
                        "could not learn the region of bucket {bucket} ({why}); set AWS_REGION"
                    ),
                    now_ms,
                )?;
            }
        }
        Ok(())
    }

    /// GitLab answered 429: nothing of that kind (exports, or anything) before `Retry-After`
    /// and a little slack.
    fn rate_limited(
        &mut self,
        retry_after: Duration,
        limited: Limited,
        now_ms: u64,
    ) -> Result<(), StoreError> {
        let until = now_ms + ms(retry_after) + ms(RETRY_AFTER_SLACK);
        // A shorter wait asked later never shortens one still running.
        let until = until.max(self.exports_not_before);
        self.store.set_meta(META_BLOCKED_UNTIL, until)?;
        self.exports_not_before = until;
        if limited == Limited::AllOfGitLab {
            self.gitlab_stopped = true;
            self.gitlab_not_before = self.gitlab_not_before.max(until);
            self.store
                .set_meta(META_BACKOFF_UNTIL, self.gitlab_not_before)?;
        }
        self.wake_at(until);
        self.exports_stopped = true;
        self.report.events.push(Event::RateLimited {
            retry_after_s: retry_after.as_secs(),
        });
        self.note_error(
            &format!("GitLab answered 429; waiting {} s", retry_after.as_secs()),
            now_ms,
        )
    }

    /// An export request got no usable answer. GitLab backs off as a whole; the project goes
    /// behind the others (so one project that always fails cannot hold the run), and every
    /// [`UNANSWERED_PER_ATTEMPT`]-th time in a row it uses an attempt, so it ends `failed` with
    /// the reason after MAX_ATTEMPTS instead of being asked forever.
    fn export_unanswered(
        &mut self,
        project: &ClaimedProject,
        error: &GitLabError,
        now_ms: u64,
    ) -> Result<(), StoreError> {
        let reason = format!("exporting {}: {error}", project.path);
        let behind = now_ms + ms(BACKOFF_STEP);
        let (in_a_row, attempts) = self.store.export_unanswered(
            self.run.id,
            project.project_id,
            behind,
            UNANSWERED_PER_ATTEMPT,
        )?;
        self.gitlab_unavailable(&reason, now_ms)?;
        if in_a_row % UNANSWERED_PER_ATTEMPT == 0 {
            let why = format!(
                "GitLab gave no usable answer to {in_a_row} export requests in a row (last: {error})"
            );
            let project = ClaimedProject {
                attempts,
                ..project.clone()
            };
            self.attempt_failed(&project, &why, now_ms)?;
        }
        Ok(())
    }

    /// An export was refused with 429: if fewer requests than the limit were in the last
    /// minute, GitLab's own limit is lower (a self-managed setting, or someone else's exports
    /// with the same user), and the run keeps to what got through for [`LEARNED_LIMIT_HOLDS`].
    fn learn_limit(&mut self, now_ms: u64) -> Result<(), StoreError> {
        // The refused request is in the window too (its answer just came).
        let got_through = self.window.used(now_ms).saturating_sub(1);
        // With none of ours in the minute, the quota went to someone else: nothing to learn.
        let learned = got_through;
        if learned > 0 && learned < self.export_limit {
            self.export_limit = learned;
            self.store
                .set_meta(META_LEARNED_LIMIT, u64::from(learned))?;
            self.store
                .set_meta(META_LEARNED_UNTIL, now_ms + ms(LEARNED_LIMIT_HOLDS))?;
            self.report.events.push(Event::LimitLearned {
                run: self.run.id,
                exports_per_minute: learned,
            });
        }
        Ok(())
    }

    /// GitLab failed in a way worth retrying: nothing more from it this tick, and back off.
    fn gitlab_unavailable(&mut self, reason: &str, now_ms: u64) -> Result<(), StoreError> {
        self.gitlab_stopped = true;
        let failures = self.gitlab_failures + 1;
        let backoff = BACKOFF_STEP
            .saturating_mul(1 << (failures - 1).min(16) as u32)
            .min(BACKOFF_MAX);
        let until = now_ms + ms(backoff);
        self.store.set_meta(META_FAILURES, failures)?;
        self.store.set_meta(META_BACKOFF_UNTIL, until)?;
        self.gitlab_failures = failures;
        self.gitlab_not_before = until;
        self.wake_at(until);
        self.report.events.push(Event::RetryLater {
            run: self.run.id,
            reason: reason.to_owned(),
            not_before_ms: until,
        });
        self.note_error(reason, now_ms)
    }

    /// GitLab answered as documented: any backoff ends.
    fn gitlab_answered(&mut self) -> Result<(), StoreError> {
        if self.gitlab_failures > 0 {
            self.store.delete_meta(META_FAILURES)?;
            self.store.delete_meta(META_BACKOFF_UNTIL)?;
            self.gitlab_failures = 0;
            self.gitlab_not_before = 0;
        }
        Ok(())
    }

    fn note_error(&mut self, message: &str, now_ms: u64) -> Result<(), StoreError> {
        self.store.set_meta(META_LAST_ERROR, message)?;
        self.store.set_meta(META_LAST_ERROR_AT, now_ms)
    }

    fn set_phase(&mut self, phase: Phase, now_ms: u64) -> Result<(), StoreError> {
        self.store.set_phase(self.run.id, phase, now_ms)?;
        self.run.phase = phase;
        Ok(())
    }

    /// Ends the tick. Work cut short by the subrequest budget alone wakes again at once, with a
    /// fresh budget.
    pub fn finish(mut self, now_ms: u64) -> TickReport {
        let stopped = self.gitlab_stopped
            || match self.run.phase {
                Phase::Preflight | Phase::Listing => false,
                Phase::Exporting | Phase::Verifying => self.exports_stopped && self.s3_stopped,
                Phase::Finished => true,
            };
        if (self.subrequests_left == 0 || self.cut_short) && !stopped {
            self.wake_at(now_ms);
        }
        self.report.events.push(Event::TickEnded {
            run: self.run.id,
            phase: self.run.phase,
            subrequests: self.report.subrequests,
            exports: self.report.exports,
        });
        self.report
    }
}

/// S3's error code and message from an XML error body, or the start of the body.
fn s3_error(answer: &HttpResponse) -> String {
    let text = answer.body_excerpt();
    let between = |open: &str, close: &str| {
        let start = text.find(open)? + open.len();
        let end = text[start..].find(close)? + start;
        Some(text[start..end].to_owned())
    };
    match (
        between("<Code>", "</Code>"),
        between("<Message>", "</Message>"),
    ) {
        (Some(code), Some(message)) => format!("{code}: {message}"),
        (Some(code), None) => code,
        _ if text.is_empty() => "no details".to_owned(),
        _ => text,
    }
}

#[cfg(test)]
mod tests;
pub(crate) mod window;
