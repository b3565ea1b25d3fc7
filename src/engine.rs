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
use crate::gitlab::{ExportAnswer, GitLab, GitLabError, ListingOptions};
use crate::http::{HttpRequest, HttpResult, Method};
use crate::s3::{self, object_key, presign};
use crate::store::{ClaimedProject, Outcome, Phase, RunRow, Sql, Store, StoreError};

/// GitLab counts export requests per user in windows of one minute.
pub const EXPORT_WINDOW: Duration = Duration::from_secs(60);
/// How long a request may be in flight before it is given up; until its answer arrives, the
/// rate window counts it as arriving at GitLab as late as this.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// After a 429, a little more than GitLab asked, for clock and network skew.
pub const RETRY_AFTER_SLACK: Duration = Duration::from_secs(2);

const META_BLOCKED_UNTIL: &str = "exports_blocked_until_ms";

fn ms(d: Duration) -> u64 {
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
    },
    RunFinished {
        run: u64,
        listed: u64,
        exported: u64,
        failed: u64,
    },
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
        log_id: u64,
    },
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
    subrequests_left: u32,
    exports_left: u32,
    /// Set once exports must stop for this tick (429, GitLab unavailable, token refused).
    exports_stopped: bool,
    /// Set once listing must stop for this tick.
    listing_stopped: bool,
    report: TickReport,
}

impl<'a, S: Sql> Tick<'a, S> {
    /// Starts a tick: resumes the active run, or starts one when none ran within the backup
    /// interval. `None` when there is nothing to do.
    pub fn begin(
        store: &'a Store<S>,
        config: &'a Config,
        now_ms: u64,
    ) -> Result<Option<Tick<'a, S>>, StoreError> {
        let gitlab = GitLab::new(&config.gitlab_url, config.gitlab_token.clone());
        let mut events = Vec::new();
        let run = match store.active_run()? {
            Some(run) => {
                // Only one tick runs at a time, so an `exporting` project belongs to a tick that
                // died before it recorded the answer.
                store.requeue_interrupted(run.id)?;
                run
            }
            None => {
                let due = match store.latest_run()? {
                    None => true,
                    Some(last) => now_ms >= last.started_ms + ms(config.backup_interval),
                };
                if !due {
                    return Ok(None);
                }
                let groups: Vec<(String, String)> = config
                    .groups
                    .iter()
                    .map(|g| {
                        let first = gitlab.first_projects_page(g, ListingOptions::default());
                        (g.to_string(), first.to_string())
                    })
                    .collect();
                let run = store.start_run(now_ms, &groups)?;
                events.push(Event::RunStarted {
                    run: run.id,
                    groups: groups.into_iter().map(|(g, _)| g).collect(),
                });
                run
            }
        };
        Ok(Some(Tick {
            store,
            config,
            gitlab,
            run,
            subrequests_left: config.subrequests_per_invocation,
            exports_left: config.exports_per_minute,
            exports_stopped: false,
            listing_stopped: false,
            report: TickReport {
                events,
                ..TickReport::default()
            },
        }))
    }

    pub fn run(&self) -> &RunRow {
        &self.run
    }

    /// The next request to send, already persisted as under way; `None` when this tick is done.
    pub fn next_step(&mut self, now_ms: u64) -> Result<Option<Step>, StoreError> {
        if self.subrequests_left == 0 {
            return Ok(None);
        }
        if self.run.phase == Phase::Listing {
            if self.listing_stopped {
                return Ok(None);
            }
            if let Some(listing) = self.store.next_listing(self.run.id)? {
                return Ok(Some(
                    self.spend(Step {
                        request: self.gitlab.projects_page_request(
                            Url::parse(&listing.next_url)
                                .map_err(|e| StoreError(format!("stored page URL: {e}")))?,
                        ),
                        purpose: Purpose::ListPage {
                            position: listing.position,
                            group: listing.group,
                        },
                    }),
                ));
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
        let object = self.config.bucket.object_url(&key);
        let upload = match presign(
            Method::Put,
            &object,
            &self.config.credentials,
            &self.config.bucket.region,
            system_time(now_ms),
            self.config.presign_expiry,
        ) {
            Ok(url) => url,
            Err(e) => {
                self.fail_project(&project, &e.to_string())?;
                return self.next_step(now_ms);
            }
        };
        self.report.events.push(Event::ExportRequested {
            run: self.run.id,
            project_id: project.project_id,
            path: project.path.clone(),
            key,
            upload_url: s3::redact_url(&upload),
        });
        self.exports_left -= 1;
        self.report.exports += 1;
        Ok(Some(self.spend(Step {
            request: self.gitlab.export_request(project.project_id, &upload),
            purpose: Purpose::Export { project, log_id },
        })))
    }

    fn spend(&mut self, step: Step) -> Step {
        self.subrequests_left -= 1;
        self.report.subrequests += 1;
        step
    }

    /// Whether the rolling window has room for one more export request now; if not, when it
    /// will (for the caller's alarm).
    fn window_allows(&mut self, now_ms: u64) -> Result<bool, StoreError> {
        if let Some(until) = self.store.meta(META_BLOCKED_UNTIL)? {
            if until > now_ms {
                self.wake_at(until);
                return Ok(false);
            }
        }
        let window = self
            .store
            .window_use(now_ms.saturating_sub(ms(EXPORT_WINDOW)))?;
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
            Purpose::ListPage { position, group } => self.on_page(position, group, answer),
            Purpose::Export { project, log_id } => {
                self.store.export_answered(log_id, now_ms)?;
                self.on_export(project, answer, now_ms)
            }
        }
    }

    fn on_page(
        &mut self,
        position: u64,
        group: String,
        answer: HttpResult,
    ) -> Result<(), StoreError> {
        let page = answer
            .map_err(GitLabError::Unavailable)
            .and_then(|a| self.gitlab.read_projects_page(&a));
        match page {
            Ok(page) => {
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
            Err(
                e @ (GitLabError::Unauthorized
                | GitLabError::Unavailable(_)
                | GitLabError::RateLimited { .. }),
            ) => {
                // Nothing is wrong with the group: stop listing for this tick and go on later.
                self.listing_stopped = true;
                self.report.events.push(Event::RetryLater {
                    run: self.run.id,
                    reason: format!("listing group {group}: {e}"),
                });
            }
            Err(e) => {
                let reason = e.to_string();
                self.store
                    .record_listing_error(self.run.id, position, &reason)?;
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
                self.store.finish_project(
                    self.run.id,
                    project.project_id,
                    Outcome::Exported,
                    None,
                )?;
                self.run.exported += 1;
            }
            ExportAnswer::Refused(reason) => self.fail_project(&project, &reason)?,
            ExportAnswer::Retry(e) => {
                self.store
                    .release_project(self.run.id, project.project_id)?;
                self.exports_stopped = true;
                if let GitLabError::RateLimited { retry_after } = e {
                    let until = now_ms + ms(retry_after) + ms(RETRY_AFTER_SLACK);
                    self.store.set_meta(META_BLOCKED_UNTIL, until)?;
                    self.wake_at(until);
                    self.report.events.push(Event::RateLimited {
                        retry_after_s: retry_after.as_secs(),
                    });
                } else {
                    self.report.events.push(Event::RetryLater {
                        run: self.run.id,
                        reason: format!("exporting {}: {e}", project.path),
                    });
                }
            }
        }
        Ok(())
    }

    fn fail_project(&mut self, project: &ClaimedProject, reason: &str) -> Result<(), StoreError> {
        self.store.finish_project(
            self.run.id,
            project.project_id,
            Outcome::Failed,
            Some(reason),
        )?;
        self.run.failed += 1;
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
        let stopped = match self.run.phase {
            Phase::Listing => self.listing_stopped,
            Phase::Exporting => self.exports_stopped,
            Phase::Finished => true,
        };
        if self.subrequests_left == 0 && !stopped {
            self.wake_at(now_ms);
        }
        self.report
    }
}
