//! The run's state machine, without I/O: a [`Tick`] is handed the clock and the answers to
//! the requests it asked for, and hands back the next request to send, what to log, and when
//! to wake up. Its decisions are persisted through [`Store`] before each request goes out and
//! after each answer, so a tick that dies loses no project and breaks no limit.
//!
//! One tick at a time: the caller (the Durable Object) must not run two ticks concurrently.

use std::time::{Duration, SystemTime};

use serde::Serialize;
use url::Url;

use crate::config::Config;
use crate::gitlab::{ExportAnswer, GitLab, GitLabError};
use crate::http::{HttpRequest, HttpResult, Method};
use crate::s3::{self, object_key, presign, region_from_answer};
use crate::store::{ClaimedProject, Outcome, Phase, RunRow, Sql, Store, StoreError};

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
/// Rows of old runs deleted per tick at most, so pruning never makes one tick heavy.
pub const PRUNE_BATCH: u64 = 500;

pub(crate) const META_BLOCKED_UNTIL: &str = "exports_blocked_until_ms";
pub(crate) const META_BACKOFF_UNTIL: &str = "gitlab_backoff_until_ms";
const META_FAILURES: &str = "gitlab_consecutive_failures";
pub(crate) const META_REGION: &str = "bucket_region";
pub(crate) const META_LAST_ERROR: &str = "last_error";
pub(crate) const META_LAST_ERROR_AT: &str = "last_error_at_ms";

pub(crate) fn ms(d: Duration) -> u64 {
    d.as_millis() as u64
}

fn system_time(at_ms: u64) -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_millis(at_ms)
}

/// Something worth a log line.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
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
    ExportFailed {
        run: u64,
        project_id: u64,
        path: String,
        reason: String,
    },
    RateLimited {
        retry_after_s: u64,
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
        failed: u64,
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

/// A request the tick wants sent, and what it is for.
#[derive(Debug)]
pub struct Step {
    pub request: HttpRequest,
    purpose: Purpose,
}

#[derive(Debug)]
enum Purpose {
    ListPage {
        position: u64,
        group: String,
    },
    Export {
        project: ClaimedProject,
        key: String,
        log_id: u64,
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

/// One invocation's work on the current run.
pub struct Tick<'a, S: Sql> {
    store: &'a Store<S>,
    config: &'a Config,
    gitlab: GitLab,
    run: RunRow,
    region: Option<String>,
    subrequests_left: u32,
    exports_left: u32,
    /// Set once GitLab must not be asked anything more in this tick.
    gitlab_stopped: bool,
    /// Set once exports must stop for this tick.
    exports_stopped: bool,
    /// Whether GitLab failed in earlier ticks (the backoff counter is set).
    recovering: bool,
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
        store.prune(RUNS_KEPT_IN_DETAIL, RUNS_KEPT, PRUNE_BATCH)?;
        let gitlab = GitLab::new(&config.gitlab_url, config.gitlab_token.clone());
        let mut events = Vec::new();
        let run = match (store.active_run()?, start) {
            (Some(run), Start::Now) => return Ok(Begin::AlreadyRunning(run.id)),
            (Some(run), Start::IfDue) => {
                // Only one tick runs at a time, so an `exporting` project belongs to a tick that
                // died before it recorded the answer.
                store.requeue_interrupted(run.id)?;
                run
            }
            (None, _) => {
                let last = store.latest_run()?.map(|r| r.started_ms);
                if start == Start::IfDue && !run_due(config, last, now_ms) {
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
                events.push(Event::RunStarted {
                    run: run.id,
                    groups: groups.into_iter().map(|(g, _)| g).collect(),
                    manual: start == Start::Now,
                });
                run
            }
        };
        let region = match &config.bucket.region {
            Some(region) => Some(region.clone()),
            None => store.meta_text(META_REGION)?,
        };
        Ok(Begin::Tick(Box::new(Tick {
            store,
            config,
            gitlab,
            run,
            region,
            subrequests_left: config.subrequests_per_invocation,
            exports_left: config.exports_per_minute,
            gitlab_stopped: false,
            exports_stopped: false,
            recovering: store.meta_u64(META_FAILURES)?.is_some(),
            report: TickReport {
                events,
                ..TickReport::default()
            },
        })))
    }

    pub fn run(&self) -> &RunRow {
        &self.run
    }

    /// The next request to send, already persisted as under way; `None` when this tick is done.
    pub fn next_step(&mut self, now_ms: u64) -> Result<Option<Step>, StoreError> {
        if self.subrequests_left == 0 || self.gitlab_stopped || !self.gitlab_available(now_ms)? {
            return Ok(None);
        }
        if self.run.phase == Phase::Listing {
            if let Some(listing) = self.store.next_listing(self.run.id)? {
                let page = Url::parse(&listing.next_url)
                    .map_err(|e| StoreError(format!("stored page URL: {e}")))?;
                return Ok(Some(self.spend(Step {
                    request: self.gitlab.projects_page_request(page),
                    purpose: Purpose::ListPage {
                        position: listing.position,
                        group: listing.group,
                    },
                })));
            }
            self.set_phase(Phase::Exporting, now_ms)?;
        }
        if self.run.phase != Phase::Exporting {
            return Ok(None);
        }
        if !self.store.has_unfinished_projects(self.run.id)? {
            self.finish_run(now_ms)?;
            return Ok(None);
        }
        if self.exports_stopped || self.exports_left == 0 || !self.window_allows(now_ms)? {
            return Ok(None);
        }
        let Some(region) = self.region.clone() else {
            return Ok(Some(self.region_probe(now_ms)?));
        };
        let in_flight_until = now_ms + ms(REQUEST_TIMEOUT);
        let Some((project, log_id)) = self.store.claim_next(self.run.id, in_flight_until)? else {
            // Everything left is being exported by this tick.
            return Ok(None);
        };
        let key = object_key(
            &self.config.s3_prefix,
            &project.path,
            system_time(self.run.started_ms),
        );
        let object = self.config.bucket.object_url(&region, &key);
        let upload = match presign(
            Method::Put,
            &object,
            &self.config.credentials,
            &region,
            system_time(now_ms),
            self.config.presign_expiry,
        ) {
            Ok(url) => url,
            Err(e) => {
                self.store.export_answered(log_id, 0)?;
                self.fail_project(&project, &e.to_string(), now_ms)?;
                return self.next_step(now_ms);
            }
        };
        self.report.events.push(Event::ExportRequested {
            run: self.run.id,
            project_id: project.project_id,
            path: project.path.clone(),
            key: key.clone(),
            upload_url: s3::redact_url(&upload),
        });
        self.exports_left -= 1;
        self.report.exports += 1;
        Ok(Some(self.spend(Step {
            request: self.gitlab.export_request(project.project_id, &upload),
            purpose: Purpose::Export {
                project,
                key,
                log_id,
            },
        })))
    }

    fn spend(&mut self, step: Step) -> Step {
        self.subrequests_left -= 1;
        self.report.subrequests += 1;
        step
    }

    /// A signed HEAD of the bucket, whose answer names its region.
    fn region_probe(&mut self, now_ms: u64) -> Result<Step, StoreError> {
        // One probe per tick: the answer either names the region or stops exports.
        self.exports_stopped = true;
        let url = presign(
            Method::Head,
            &self.config.bucket.region_probe_url(),
            &self.config.credentials,
            "us-east-1",
            system_time(now_ms),
            Duration::from_secs(60),
        )
        .map_err(|e| StoreError(e.to_string()))?;
        Ok(self.spend(Step {
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
        if !self.recovering {
            return Ok(true);
        }
        match self.store.meta_u64(META_BACKOFF_UNTIL)? {
            Some(until) if until > now_ms => {
                self.wake_at(until);
                Ok(false)
            }
            _ => Ok(true),
        }
    }

    /// Whether the rolling window has room for one more export request now; if not, when it
    /// will (for the caller's alarm).
    fn window_allows(&mut self, now_ms: u64) -> Result<bool, StoreError> {
        if let Some(until) = self.store.meta_u64(META_BLOCKED_UNTIL)? {
            if until > now_ms {
                self.wake_at(until);
                return Ok(false);
            }
        }
        let since = now_ms.saturating_sub(ms(EXPORT_WINDOW));
        self.store.prune_window(since)?;
        let window = self.store.window_use(since)?;
        if window.requests < self.config.exports_per_minute {
            return Ok(true);
        }
        if let Some(oldest) = window.oldest_ms {
            self.wake_at(oldest + ms(EXPORT_WINDOW));
        }
        Ok(false)
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
            Purpose::ListPage { position, group } => self.on_page(position, group, answer, now_ms),
            Purpose::Export {
                project,
                key,
                log_id,
            } => {
                self.store.export_answered(log_id, now_ms)?;
                self.on_export(project, key, answer, now_ms)
            }
            Purpose::FindRegion => self.on_region(answer, now_ms),
        }
    }

    fn on_page(
        &mut self,
        position: u64,
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
                let next = page.next.as_ref().map(Url::as_str);
                let new = self
                    .store
                    .record_page(self.run.id, position, &projects, next)?;
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
                self.rate_limited(retry_after, now_ms)?;
                self.gitlab_stopped = true;
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
        key: String,
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
                self.store.finish_project(
                    self.run.id,
                    project.project_id,
                    Outcome::Exported,
                    None,
                )?;
                self.store
                    .record_backup(&project, &key, self.run.id, now_ms)?;
                self.run.exported += 1;
                self.report.events.push(Event::Exported {
                    run: self.run.id,
                    project_id: project.project_id,
                    path: project.path,
                });
            }
            ExportAnswer::Refused(reason) => {
                self.gitlab_answered()?;
                self.fail_project(&project, &reason, now_ms)?;
            }
            ExportAnswer::Retry(e) => {
                // The project keeps its place in line; no attempt is used up.
                self.store
                    .release_project(self.run.id, project.project_id)?;
                self.exports_stopped = true;
                match e {
                    GitLabError::RateLimited { retry_after } => {
                        self.rate_limited(retry_after, now_ms)?
                    }
                    e => self
                        .gitlab_unavailable(&format!("exporting {}: {e}", project.path), now_ms)?,
                }
            }
        }
        Ok(())
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
                // The probe stopped exports only until the region was known.
                self.exports_stopped = false;
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

    fn rate_limited(&mut self, retry_after: Duration, now_ms: u64) -> Result<(), StoreError> {
        let until = now_ms + ms(retry_after) + ms(RETRY_AFTER_SLACK);
        self.store.set_meta(META_BLOCKED_UNTIL, until)?;
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

    /// GitLab failed in a way worth retrying: nothing more from it this tick, and back off.
    fn gitlab_unavailable(&mut self, reason: &str, now_ms: u64) -> Result<(), StoreError> {
        self.gitlab_stopped = true;
        let failures = self.store.meta_u64(META_FAILURES)?.unwrap_or(0) + 1;
        let backoff = BACKOFF_STEP
            .saturating_mul(1 << (failures - 1).min(16) as u32)
            .min(BACKOFF_MAX);
        let until = now_ms + ms(backoff);
        self.store.set_meta(META_FAILURES, failures)?;
        self.store.set_meta(META_BACKOFF_UNTIL, until)?;
        self.recovering = true;
        self.report.events.push(Event::RetryLater {
            run: self.run.id,
            reason: reason.to_owned(),
            not_before_ms: until,
        });
        self.note_error(reason, now_ms)
    }

    /// GitLab answered as documented: any backoff ends.
    fn gitlab_answered(&mut self) -> Result<(), StoreError> {
        if self.recovering {
            self.store.delete_meta(META_FAILURES)?;
            self.store.delete_meta(META_BACKOFF_UNTIL)?;
            self.recovering = false;
        }
        Ok(())
    }

    fn note_error(&mut self, message: &str, now_ms: u64) -> Result<(), StoreError> {
        self.store.set_meta(META_LAST_ERROR, message)?;
        self.store.set_meta(META_LAST_ERROR_AT, now_ms)
    }

    fn fail_project(
        &mut self,
        project: &ClaimedProject,
        reason: &str,
        now_ms: u64,
    ) -> Result<(), StoreError> {
        self.store.finish_project(
            self.run.id,
            project.project_id,
            Outcome::Failed,
            Some(reason),
        )?;
        self.run.failed += 1;
        self.note_error(&format!("{}: {reason}", project.path), now_ms)?;
        self.report.events.push(Event::ExportFailed {
            run: self.run.id,
            project_id: project.project_id,
            path: project.path.clone(),
            reason: reason.to_owned(),
        });
        Ok(())
    }

    fn set_phase(&mut self, phase: Phase, now_ms: u64) -> Result<(), StoreError> {
        self.store.set_phase(self.run.id, phase, now_ms)?;
        self.run.phase = phase;
        Ok(())
    }

    fn finish_run(&mut self, now_ms: u64) -> Result<(), StoreError> {
        self.set_phase(Phase::Finished, now_ms)?;
        self.run.finished_ms = Some(now_ms);
        self.report.events.push(Event::RunFinished {
            run: self.run.id,
            listed: self.run.listed,
            exported: self.run.exported,
            failed: self.run.failed,
        });
        Ok(())
    }

    /// Ends the tick. Work cut short by the subrequest budget alone wakes again at once, with a
    /// fresh budget.
    pub fn finish(mut self, now_ms: u64) -> TickReport {
        let stopped = self.gitlab_stopped
            || match self.run.phase {
                Phase::Listing => false,
                Phase::Exporting => self.exports_stopped,
                Phase::Finished => true,
            };
        if self.subrequests_left == 0 && !stopped {
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

#[cfg(test)]
mod tests;
