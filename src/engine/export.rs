//! Exports: claim the next due project and log its request in the rolling window in one
//! synchronous step, presign its object's PUT URL and ask GitLab to export to it; then record
//! GitLab's answer (accepted, refused, 429, or none).

use std::time::Duration;

use super::gates::{Gate, Limited};
use super::timers::Timer;
use super::{Event, Purpose, Step, Tick, REQUEST_TIMEOUT};
use crate::gitlab::{ExportAnswer, GitLabError};
use crate::http::{redact_url, HttpResult, Method};
use crate::s3::object_key;
use crate::store::{ClaimedProject, MetaKey, Sql, StoreError};
use crate::time::ms;

use super::verify::next_check_ms;

/// Exports under way at most (claimed, or accepted and awaiting their proof): they are kept in
/// one `meta` row, about 150 bytes each, and a Durable Object's value holds 2 MB. A run only
/// reaches it with a high `EXPORTS_PER_MINUTE` and exports that sit in GitLab's queue.
pub const MAX_EXPORTS_UNDER_WAY: usize = 5_000;
/// GitLab counts export requests per user in windows of one minute.
pub const EXPORT_WINDOW: Duration = Duration::from_secs(60);
/// Export requests of one project left without a usable answer (5xx, timeout) in a row that
/// count as one failed attempt.
pub const UNANSWERED_PER_ATTEMPT: u64 = 3;
/// How long a learned limit holds before the configured one is tried again: one 429 (someone
/// else's export with the same user, a hiccup) must not slow a run of days for good, and a
/// GitLab whose limit really is lower costs one 429 per this span.
pub const LEARNED_LIMIT_HOLDS: Duration = Duration::from_secs(15 * 60);

impl<S: Sql> Tick<'_, S> {
    /// Whether one more export request may go out now: the tick's export budget, GitLab's 429
    /// block, and room in the rolling window (closed until it frees).
    fn export_gate(&self, now_ms: u64) -> Gate {
        if self.budget.exports_left == 0 || self.window.flights.len() >= MAX_EXPORTS_UNDER_WAY {
            // (At the limit, the exports under way make room as their checks end them.)
            return Gate::Shut;
        }
        match self.gates.exports.gate(now_ms) {
            Gate::Open => {}
            closed => return closed,
        }
        if self.window.used(now_ms) < self.export_limit {
            return Gate::Open;
        }
        match self.window.frees_at(now_ms) {
            Some(at) => Gate::Until(Timer::WindowFrees, at),
            None => Gate::Shut,
        }
    }

    pub(super) fn export_step(
        &mut self,
        region: &str,
        now_ms: u64,
    ) -> Result<Option<Step>, StoreError> {
        let gate = self.export_gate(now_ms);
        if !self.pass(gate) {
            return Ok(None);
        }
        let in_flight_until = now_ms + ms(REQUEST_TIMEOUT);
        let under_way = self.window.flights.under_way();
        let claims = self.window.flights.claims(&under_way);
        let Some(claimable) = self.store.claim_next(self.run.id, now_ms, claims)? else {
            return Ok(None);
        };
        let project = claimable.project.clone();
        // The claim and the request's place in the window are one row, written before the
        // request goes out.
        self.window.flights.claim(claimable);
        let log_id = self.window.request(in_flight_until, now_ms);
        self.save_window()?;
        let key = object_key(&self.settings.s3_prefix, &project.path, self.run_started());
        let object = self.settings.bucket.object_url(region, &key);
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
        self.budget.exports_left -= 1;
        self.report.exports += 1;
        Ok(Some(Step {
            request: self.gitlab.export_request(project.project_id, &upload),
            purpose: Purpose::Export { project, log_id },
        }))
    }

    pub(super) fn save_window(&mut self) -> Result<(), StoreError> {
        self.window_unsaved = false;
        self.store
            .set_meta(MetaKey::ExportWindow, self.window.to_json()?)
    }

    pub(super) fn on_export(
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
                let first_check =
                    next_check_ms(now_ms, now_ms, now_ms + ms(self.config.verify_timeout));
                self.window
                    .flights
                    .accepted(project.project_id, now_ms, first_check);
                // Stored at once: a tick that dies now must not export the project again.
                self.save_window()?;
                self.timers.set(Timer::NextCheck, first_check);
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
                self.gates.exports.shut();
                match e {
                    GitLabError::RateLimited { retry_after } => {
                        self.window.flights.release(project.project_id);
                        self.window_unsaved = true;
                        self.learn_limit(now_ms)?;
                        self.rate_limited(retry_after, Limited::Exports, now_ms)?
                    }
                    e => self.export_unanswered(&project, &e, now_ms)?,
                }
            }
        }
        Ok(())
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
        let behind = now_ms + ms(super::BACKOFF_STEP);
        let (in_a_row, attempts) = self.store.export_unanswered(
            self.run.id,
            project.project_id,
            behind,
            UNANSWERED_PER_ATTEMPT,
        )?;
        // Ended once its row is back in line: a write that fails leaves it under way.
        self.window.flights.end(project.project_id);
        self.window_unsaved = true;
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
        // The refused request is in the window too (its answer just came). With none of ours
        // in the minute, the quota went to someone else: nothing to learn.
        let learned = self.window.used(now_ms).saturating_sub(1);
        if learned > 0 && learned < self.export_limit {
            self.export_limit = learned;
            self.store
                .set_meta(MetaKey::LearnedLimit, u64::from(learned))?;
            self.store
                .set_meta(MetaKey::LearnedUntil, now_ms + ms(LEARNED_LIMIT_HOLDS))?;
            self.report.events.push(Event::LimitLearned {
                run: self.run.id,
                exports_per_minute: learned,
            });
        }
        Ok(())
    }
}
