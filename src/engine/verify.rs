//! Proof of landing: ask GitLab how each accepted export stands, then, once it says `finished`
//! or `none`, send a signed ranged `GET` of the object's first bytes; only an object that is
//! there, not empty, starts like a gzip stream and has GitLab's `application/gzip` counts. A failed attempt is retried with backoff and a fresh URL, up to MAX_ATTEMPTS.

use std::time::Duration;

use super::gates::Limited;
use super::intents::{GitLabSaid, Intent};
use super::record::s3_error;
use super::{Event, Purpose, Step, Tick};
use crate::gitlab::{ExportStatus, GitLabError};
use crate::http::HttpResult;
use crate::s3::{object_key, read_archive_start, NotAnArchive};
use crate::store::{Backup, ClaimedProject, Sql, StoreError};
use crate::time::{http_date_ms, ms, rfc3339};

/// The looks at an accepted export back off, as real exports wait minutes in GitLab's queue:
/// the first this long after GitLab accepted it, each later one a step after the one before,
/// the last step repeating (see [`next_check_ms`]).
pub const CHECK_STEPS: [Duration; 5] = [
    Duration::from_secs(10),
    Duration::from_secs(30),
    Duration::from_secs(60),
    Duration::from_secs(2 * 60),
    Duration::from_secs(5 * 60),
];
/// How much later than its schedule a look may come to share a tick with the looks due just
/// after it (exports go out together, and so come their looks): a tick is a request and a
/// row written, and so is its alarm. (A tick that got exports accepted still wakes for the
/// first of their first looks on time.)
pub const CHECK_SLACK: Duration = Duration::from_secs(10);
/// The first look at an accepted export (GitLab needs a while to build it).
pub const FIRST_CHECK_AFTER: Duration = CHECK_STEPS[0];
/// GitLab may read `none` for a while after the request; after this, look in the bucket anyway
/// (some versions keep `none` for exports with an upload URL, and GitLab deletes its export
/// file after the upload). A `none` before it ends is looked at again when it ends.
pub const NONE_GRACE: Duration = Duration::from_secs(120);
/// How much older than its export request an object may look and still be that attempt's:
/// GitLab's, S3's and the worker's clocks differ a little.
pub const CLOCK_SKEW: Duration = Duration::from_secs(60);
/// The largest object S3 takes in one PUT (5 GiB); GitLab uploads an export in one PUT.
pub const S3_SINGLE_PUT_MAX: u64 = 5 << 30;
/// Waits before the 2nd, 3rd, 4th and later attempts of a failed export.
pub const RETRY_BACKOFF: [Duration; 4] = [
    Duration::from_secs(60),
    Duration::from_secs(5 * 60),
    Duration::from_secs(15 * 60),
    Duration::from_secs(30 * 60),
];

/// When an export GitLab accepted at `exported_ms` is looked at next, after a look at `now_ms`:
/// the first point of its schedule ([`CHECK_STEPS`] from `exported_ms`) after `now_ms`, but not
/// after `deadline_ms` (`VERIFY_TIMEOUT_MINUTES` after `exported_ms`) while that is still to
/// come, so the look that decides the attempt comes on time. The schedule is the export's age
/// alone: nothing more is stored, and a late tick does not shift the looks after it.
pub fn next_check_ms(exported_ms: u64, now_ms: u64, deadline_ms: u64) -> u64 {
    let mut at = exported_ms;
    for step in CHECK_STEPS {
        at += ms(step);
        if at > now_ms {
            break;
        }
    }
    if at <= now_ms {
        let every = ms(CHECK_STEPS[CHECK_STEPS.len() - 1]);
        at += ((now_ms - at) / every + 1) * every;
    }
    if deadline_ms > now_ms {
        at.min(deadline_ms)
    } else {
        at
    }
}

impl<S: Sql> Tick<'_, S> {
    /// The next look at `project`'s export after one at `now_ms` ([`next_check_ms`]).
    pub(super) fn next_check_at(&self, project: &ClaimedProject, now_ms: u64) -> u64 {
        let exported_ms = project.exported_ms.unwrap_or(now_ms);
        next_check_ms(
            exported_ms,
            now_ms,
            exported_ms + ms(self.config.verify_timeout),
        )
    }

    /// GitLab's status of the accepted export whose check is most overdue (after the last this
    /// tick checked).
    pub(super) fn check_step(&mut self, now_ms: u64) -> Result<Option<Step>, StoreError> {
        let Some((project, due_ms)) = self.window.flights.next_check(now_ms, self.checked_after)
        else {
            return Ok(None);
        };
        self.checked_after = (due_ms, project.project_id);
        Ok(Some(Step {
            request: self.gitlab.export_status_request(project.project_id),
            purpose: Purpose::ExportStatus { project },
        }))
    }

    pub(super) fn on_export_status(
        &mut self,
        project: ClaimedProject,
        answer: HttpResult,
        now_ms: u64,
    ) -> Result<(), StoreError> {
        let status = answer
            .map_err(GitLabError::Unavailable)
            .and_then(|a| self.gitlab.read_export_status(&a));
        let check_again = self.next_check_at(&project, now_ms);
        let exported_ms = project.exported_ms.unwrap_or(now_ms);
        // Past VERIFY_TIMEOUT_MINUTES, whatever GitLab says, the bucket decides: the object is
        // looked for, and if it is not there the attempt fails. No answer of GitLab's can hold
        // a run (and every run after it) forever.
        let overdue = now_ms >= exported_ms + ms(self.config.verify_timeout);
        match status {
            Ok(in_progress @ ExportStatus::InProgress) => {
                // An export stuck in GitLab's queue must not hold the run (and the next ones)
                // forever: it counts against VERIFY_TIMEOUT_MINUTES like a missing upload.
                self.gitlab_answered()?;
                if overdue {
                    self.intents.push(Intent::FirstBytes {
                        project,
                        gitlab_said: GitLabSaid::Status(in_progress),
                    });
                } else {
                    self.reschedule(&project, check_again);
                }
            }
            Ok(ExportStatus::None) if now_ms < exported_ms + ms(NONE_GRACE) => {
                // Another `none` before the grace ends would change nothing: the next look is
                // when it ends (GitLab deletes its export file after the upload, so a quick
                // export reads `none` from then on).
                self.gitlab_answered()?;
                self.reschedule(&project, exported_ms + ms(NONE_GRACE));
            }
            Ok(said @ (ExportStatus::None | ExportStatus::Finished)) => {
                self.gitlab_answered()?;
                self.intents.push(Intent::FirstBytes {
                    project,
                    gitlab_said: GitLabSaid::Status(said),
                });
            }
            Ok(ExportStatus::Failed) => {
                self.gitlab_answered()?;
                self.attempt_failed(&project, "GitLab could not build the export", now_ms)?;
            }
            Err(gone @ GitLabError::ProjectGone) => {
                self.gitlab_answered()?;
                self.fail_for_good(&project, &gone.to_string(), now_ms)?;
            }
            Err(GitLabError::RateLimited { retry_after }) => {
                let e = GitLabError::RateLimited { retry_after };
                self.unanswered_check(project, &e, overdue, check_again)?;
                self.rate_limited(retry_after, Limited::AllOfGitLab, now_ms)?;
            }
            Err(e @ (GitLabError::Unauthorized | GitLabError::Unavailable(_))) => {
                let reason = format!("checking the export of {}: {e}", project.path);
                self.unanswered_check(project, &e, overdue, check_again)?;
                self.gitlab_unavailable(&reason, now_ms)?;
            }
            Err(e) => {
                self.gitlab_answered()?;
                if overdue {
                    self.intents.push(Intent::FirstBytes {
                        project,
                        gitlab_said: GitLabSaid::Unreadable(e.to_string()),
                    });
                } else {
                    self.reschedule(&project, check_again);
                }
            }
        }
        Ok(())
    }

    /// GitLab gave no usable answer about an export: ask again later, or, past the deadline,
    /// look in the bucket without it.
    fn unanswered_check(
        &mut self,
        project: ClaimedProject,
        error: &GitLabError,
        overdue: bool,
        check_again: u64,
    ) -> Result<(), StoreError> {
        if overdue {
            self.intents.push(Intent::FirstBytes {
                project,
                gitlab_said: GitLabSaid::Unanswered(error.to_string()),
            });
            return Ok(());
        }
        self.reschedule(&project, check_again);
        Ok(())
    }

    /// When an accepted export is checked next (kept with the exports under way: no row).
    fn reschedule(&mut self, project: &ClaimedProject, due_ms: u64) {
        self.window.flights.reschedule(project.project_id, due_ms);
        self.window_unsaved = true;
    }

    /// A ranged `GET` of the backup's first bytes, signed in its headers.
    pub(super) fn first_bytes_step(
        &mut self,
        project: ClaimedProject,
        gitlab_said: GitLabSaid,
        now_ms: u64,
    ) -> Result<Option<Step>, StoreError> {
        let Some(region) = self.region.clone() else {
            return Ok(None);
        };
        let key = object_key(&self.settings.s3_prefix, &project.path, self.run_started());
        let url = self.settings.bucket.object_url(&region, &key);
        let signer = self.signer(&region, now_ms);
        match signer.signed_first_bytes(&url) {
            Ok(request) => Ok(Some(Step {
                request,
                purpose: Purpose::FirstBytes {
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

    pub(super) fn on_first_bytes(
        &mut self,
        project: ClaimedProject,
        gitlab_said: GitLabSaid,
        answer: HttpResult,
        now_ms: u64,
    ) -> Result<(), StoreError> {
        if self.region_was_wrong(&answer, now_ms)? {
            // Looked for again once the bucket's region is known.
            self.intents.push(Intent::FirstBytes {
                project,
                gitlab_said,
            });
            return Ok(());
        }
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
            200 | 206 | 416 => {
                let size = match read_archive_start(&answer) {
                    Ok(start) => start.size,
                    // What is there is no archive (or the answer does not say how big it
                    // is): the attempt failed, and the next one uploads again.
                    Err(
                        e @ (NotAnArchive::Empty
                        | NotAnArchive::NotGzip(_)
                        | NotAnArchive::ContentType(_)
                        | NotAnArchive::NoSize(..)),
                    ) => return self.attempt_failed(&project, &e.to_string(), now_ms),
                };
                // The object must be this attempt's: one written before its export request
                // (another deployment's with the same prefix, or an earlier attempt's) is no
                // proof. A minute of slack for clock skew between GitLab, S3 and the worker.
                let requested_ms = project.exported_ms.unwrap_or(now_ms);
                let written_ms = answer.header("last-modified").and_then(http_date_ms);
                if let Some(written_ms) =
                    written_ms.filter(|&at| at + ms(CLOCK_SKEW) < requested_ms)
                {
                    let reason = format!(
                        "the object in S3 is older than this attempt's export request (Last-Modified {}, requested {}): another deployment or an earlier attempt wrote it",
                        rfc3339(written_ms),
                        rfc3339(requested_ms)
                    );
                    return self.not_there_yet(&project, &reason, now_ms);
                }
                let key = object_key(&self.settings.s3_prefix, &project.path, self.run_started());
                self.end_flight(&project);
                if !self.store.record_verified(self.run.id, &project, size)? {
                    // Verified or failed already, by a tick that died before it stored that
                    // the export was no longer under way.
                    return Ok(());
                }
                self.store.record_backup(&Backup {
                    project_id: project.project_id,
                    path: project.path.clone(),
                    key: key.clone(),
                    run_id: self.run.id,
                    at_ms: now_ms,
                    size,
                    // Every attempt of the run uploads to the same key, and an earlier one may land
                    // last: only the run's start is sure to precede the export GitLab snapshot.
                    requested_ms: Some(self.run.started_ms),
                })?;
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
                let status = answer.status;
                let never_arrived =
                    !matches!(gitlab_said, GitLabSaid::Status(ExportStatus::InProgress));
                let reason = match gitlab_said {
                    GitLabSaid::Status(ExportStatus::InProgress) => format!(
                        "GitLab's export stayed queued or started for more than {minutes} minutes"
                    ),
                    GitLabSaid::Status(said) => format!(
                        "the upload never arrived within {minutes} minutes (GitLab reported the export {said}; S3 answers {status})"
                    ),
                    GitLabSaid::Unanswered(why) => format!(
                        "the upload never arrived within {minutes} minutes (GitLab's export status did not answer: {why}; S3 answers {status})"
                    ),
                    GitLabSaid::Unreadable(why) => format!(
                        "the upload never arrived within {minutes} minutes (GitLab's export status was unreadable: {why}; S3 answers {status})"
                    ),
                };
                if never_arrived && self.last_attempt_overdue(&project, now_ms) {
                    // The usual cause of an upload that never lands is its size: ask first.
                    self.intents.push(Intent::SizeHint { project, reason });
                    return Ok(());
                }
                self.not_there_yet(&project, &reason, now_ms)
            }
            status => self.not_there_yet(
                &project,
                &format!("S3 refused the check ({status}): {}", s3_error(&answer)),
                now_ms,
            ),
        }
    }

    /// Whether the deadline of the project's last attempt has passed.
    fn last_attempt_overdue(&self, project: &ClaimedProject, now_ms: u64) -> bool {
        let exported_ms = project.exported_ms.unwrap_or(now_ms);
        now_ms >= exported_ms + ms(self.config.verify_timeout)
            && project.attempts.max(1) >= self.config.max_attempts
    }

    /// The project's size came (or not): its last attempt fails, with a word on the size when
    /// it is over what S3 takes in one PUT.
    pub(super) fn on_project_size(
        &mut self,
        project: ClaimedProject,
        reason: String,
        answer: HttpResult,
        now_ms: u64,
    ) -> Result<(), StoreError> {
        let size = answer
            .map_err(GitLabError::Unavailable)
            .and_then(|a| self.gitlab.read_project_size(&a));
        // GitLab's answer counts as any other: a failure backs it off, a 429 holds it back.
        match &size {
            Err(GitLabError::RateLimited { retry_after }) => {
                self.rate_limited(*retry_after, Limited::AllOfGitLab, now_ms)?
            }
            Err(e @ (GitLabError::Unauthorized | GitLabError::Unavailable(_))) => self
                .gitlab_unavailable(&format!("asking the size of {}: {e}", project.path), now_ms)?,
            _ => self.gitlab_answered()?,
        }
        let reason = match size {
            Ok(size) if size > S3_SINGLE_PUT_MAX => {
                // In tenths of a GiB, by integers (no float printing in the bundle).
                let tenths = size.saturating_mul(10) / (1u64 << 30);
                format!(
                    "{reason}; the project holds {}.{} GiB of repository, wiki, LFS objects and uploads: its archive is likely over S3's 5 GB single-PUT limit (GitLab uploads in one PUT)",
                    tenths / 10,
                    tenths % 10
                )
            }
            // Without the size (or below the limit) the reason stands as it is.
            _ => reason,
        };
        self.attempt_failed(&project, &reason, now_ms)
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
        let check_again = self.next_check_at(project, now_ms);
        self.reschedule(project, check_again);
        Ok(())
    }

    /// An attempt failed: retried with backoff and a fresh URL, up to `MAX_ATTEMPTS`.
    pub(super) fn attempt_failed(
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
        self.end_flight(project);
        if !self
            .store
            .record_failure(self.run.id, project, reason, Some(at_ms))?
        {
            return Ok(());
        }
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

    /// The project's export is no longer under way.
    fn end_flight(&mut self, project: &ClaimedProject) {
        self.window.flights.end(project.project_id);
        self.window_unsaved = true;
    }

    /// The project's final outcome is `failed`, for `reason`.
    pub(super) fn fail_for_good(
        &mut self,
        project: &ClaimedProject,
        reason: &str,
        now_ms: u64,
    ) -> Result<(), StoreError> {
        self.end_flight(project);
        if !self
            .store
            .record_failure(self.run.id, project, reason, None)?
        {
            return Ok(());
        }
        self.note_error(&format!("{}: {reason}", project.path), now_ms)?;
        self.report.events.push(Event::ExportFailed {
            run: self.run.id,
            project_id: project.project_id,
            path: project.path.clone(),
            reason: reason.to_owned(),
        });
        Ok(())
    }
}
