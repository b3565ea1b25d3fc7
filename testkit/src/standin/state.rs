//! State shared by the request handlers, the export jobs and the [`Standin`](super::Standin) handle:
//! the immutable seed and options, and behind one mutex the mutable parts (faults, request records,
//! counters, the export rate-limit window and the export jobs).
//!
//! The stand-in has a single user (the one owning [`Options::token`]), so "per user" state such as the
//! rate-limit window and export statuses is simply global here. The mutex is never held across an
//! `.await`.

use std::borrow::Cow;
use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::{Serialize, Serializer};
use time::format_description::well_known::Rfc3339;
use time::macros::format_description;
use time::{OffsetDateTime, UtcOffset};
use tokio::sync::Notify;
use tokio::task::AbortHandle;

use super::repr::{ExportStatus, ImportStatus};
use super::seed::{Group, Project, Seed};
use super::{Faults, HoldStage, Options, ProjectChange, HOLD_LIMIT};

/// Which project a `POST /projects/:id/export` named.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(untagged)]
pub enum ProjectRef {
    /// A project of the seed (named by id or by path).
    Known(u64),
    /// The raw, percent-decoded `:id` that matched no project.
    Unknown(String),
}

/// One `POST /projects/:id/export` request and the stand-in's answer.
#[derive(Clone, Debug, Serialize)]
pub struct ExportRecord {
    /// When the request arrived; serialized as milliseconds since the Unix epoch.
    #[serde(serialize_with = "unix_millis")]
    pub at: SystemTime,
    pub project_id: ProjectRef,
    /// HTTP status of the answer (202, 400, 401, 404, 429, 500).
    pub status: u16,
    /// `upload[url]` exactly as sent (decoded from the form/JSON/query encoding), if sent.
    pub upload_url: Option<String>,
    /// `upload[http_method]` as sent, if sent (GitLab's default when absent is `PUT`).
    pub method: Option<String>,
}

/// One upload attempt of a finished export archive.
#[derive(Clone, Debug, Serialize)]
pub struct UploadRecord {
    pub project_id: u64,
    pub url: String,
    /// HTTP status the upload target answered; `None` when no answer came (connection error, or the
    /// `fail_upload` fault).
    pub status: Option<u16>,
    /// Size of the archive.
    pub bytes: usize,
}

/// One `POST /projects/remote-import` request: what it asked for, what the stand-in found when
/// it checked the URL (`HEAD`), its answer and, once accepted, how its import went.
#[derive(Clone, Debug, Serialize)]
pub struct ImportRecord {
    /// When the request arrived; serialized as milliseconds since the Unix epoch.
    #[serde(serialize_with = "unix_millis")]
    pub at: SystemTime,
    /// `url` as sent, if sent.
    pub url: Option<String>,
    /// `namespace` (or `namespace_id` / `namespace_path`) as sent, if sent.
    pub namespace: Option<String>,
    pub path: Option<String>,
    pub name: Option<String>,
    pub overwrite: bool,
    /// HTTP status of the answer (201, 400, 401, 404, 429).
    pub status: u16,
    /// The refusal's message (`message`, or Grape's `error`); `None` on 201.
    pub message: Option<String>,
    /// The `HEAD` sent to `url` before deciding; `None` when none was sent (refused before).
    pub head: Option<HeadRecord>,
    /// The project created for the import (201 only).
    pub project_id: Option<u64>,
    /// `scheduled`, `started`, `finished` or `failed`; `None` when refused.
    pub import_status: Option<ImportStatus>,
    pub import_error: Option<String>,
    /// SHA-256 (lowercase hex) and length of the archive downloaded with `GET`, once downloaded.
    pub archive_sha256: Option<String>,
    pub archive_bytes: Option<u64>,
}

/// What the `HEAD` of an import URL met.
#[derive(Clone, Debug, Default, Serialize, PartialEq, Eq)]
pub struct HeadRecord {
    /// HTTP status; `None` when no answer came (`error` says why).
    pub status: Option<u16>,
    pub content_type: Option<String>,
    pub content_length: Option<String>,
    /// The `Server` header (`AmazonS3` on AWS).
    pub server: Option<String>,
    pub amz_request_id: Option<String>,
    /// Why no answer came (timeout, connection refused).
    pub error: Option<String>,
}

/// One `DELETE /projects/:id` request and the stand-in's answer.
#[derive(Clone, Debug, Serialize)]
pub struct DeletionRecord {
    /// When the request arrived; serialized as milliseconds since the Unix epoch.
    #[serde(serialize_with = "unix_millis")]
    pub at: SystemTime,
    pub project_id: ProjectRef,
    /// HTTP status of the answer (202, 401, 403, 404).
    pub status: u16,
}

/// Why a project cannot be created under this path or name in its namespace.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Taken {
    Path,
    Name,
}

/// An export request held by [`Faults::hold_export`].
#[derive(Clone, Debug, Serialize)]
pub struct HeldRecord {
    /// When the request arrived; serialized as milliseconds since the Unix epoch.
    #[serde(serialize_with = "unix_millis")]
    pub at: SystemTime,
    pub project_id: ProjectRef,
    /// Its place among the export requests that arrived (from 1).
    pub request: usize,
    pub stage: HoldStage,
}

/// What an export request meets on arrival, besides the usual checks.
#[derive(Debug, Default)]
pub struct Arrival {
    /// Its place among the export requests that arrived (from 1).
    pub request: usize,
    /// Held at this stage ([`Faults::hold_export`]).
    pub hold: Option<HoldStage>,
    /// Answered after this delay ([`Faults::export_answer_delays`]).
    pub answer_delay: Option<Duration>,
}

fn unix_millis<S: Serializer>(at: &SystemTime, serializer: S) -> Result<S::Ok, S::Error> {
    let millis = at
        .duration_since(UNIX_EPOCH)
        .map_or(0, |since| since.as_millis());
    serializer.serialize_u64(u64::try_from(millis).unwrap_or(u64::MAX))
}

/// Identifies one export job, so that a job replaced by a newer export of the same project stops
/// touching the project's status.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct JobId(u64);

/// Why an export request may not start an export now.
#[derive(Debug, Clone)]
pub struct RateLimited {
    /// Seconds for the `Retry-After` header; `None` when the `omit_retry_after` fault is set.
    pub retry_after: Option<u64>,
}

pub struct Shared {
    pub seed: Seed,
    pub options: Options,
    /// Base of every URL the stand-in writes into answers, without a trailing slash.
    pub public_base: String,
    /// Sends export archives to their upload URLs and downloads import archives.
    pub client: reqwest::Client,
    /// Sends the `HEAD` of an import URL, with GitLab's 1 s timeout.
    pub head_client: reqwest::Client,
    mutable: Mutex<Mutable>,
    /// Woken whenever an export job reaches a final status.
    export_settled: Notify,
    /// Woken when an export request is held, and when held ones are released.
    held_changed: Notify,
    /// Woken whenever an import reaches a final status.
    import_settled: Notify,
}

#[derive(Default)]
struct Mutable {
    faults: Faults,
    exports: Vec<ExportRecord>,
    uploads: Vec<UploadRecord>,
    listing_requests: usize,
    export_requests: usize,
    rate_window: Option<RateWindow>,
    jobs: HashMap<u64, Job>,
    last_job_id: u64,
    /// Export requests that arrived, held and dropped ones included.
    export_arrivals: usize,
    /// When the [`Faults::export_429_burst`] began.
    burst_began: Option<Instant>,
    held: Vec<HeldRecord>,
    /// Set by [`Shared::release_held`]: held requests go on, and later ones are not held.
    held_released: bool,
    deleted: HashSet<u64>,
    /// Renamed projects, as they are now.
    renamed: HashMap<u64, Project>,
    /// Project id → its `last_activity_at`, for the projects [`ProjectChange::Activity`] moved.
    last_activity: HashMap<u64, String>,
    /// Set by [`Shared::set_token_revoked`]: the token no longer works.
    token_revoked: bool,
    /// Projects created after the seed (by imports), as they are now.
    created: Vec<Project>,
    imports: Vec<ImportRecord>,
    /// Project id → its import in `imports`.
    import_of: HashMap<u64, usize>,
    import_window: Option<RateWindow>,
    import_tasks: Vec<AbortHandle>,
    deletions: Vec<DeletionRecord>,
}

/// A fixed rate-limit window, opened by the first export request after the previous one ended.
struct RateWindow {
    opened: Instant,
    used: u32,
}

/// The latest export of one project.
struct Job {
    id: JobId,
    status: ExportStatus,
    task: AbortHandle,
}

impl Shared {
    pub fn new(
        seed: Seed,
        options: Options,
        public_base: String,
        client: reqwest::Client,
        head_client: reqwest::Client,
    ) -> Self {
        Shared {
            seed,
            options,
            public_base,
            client,
            head_client,
            mutable: Mutex::default(),
            export_settled: Notify::new(),
            held_changed: Notify::new(),
            import_settled: Notify::new(),
        }
    }

    /// A panicking holder cannot leave the state inconsistent (every update is a single assignment or
    /// push), so a poisoned lock is simply taken over.
    fn lock(&self) -> MutexGuard<'_, Mutable> {
        self.mutable.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub fn set_faults(&self, faults: Faults) {
        self.lock().faults = faults;
    }

    /// Reads the current faults without copying them.
    pub fn with_faults<R>(&self, read: impl FnOnce(&Faults) -> R) -> R {
        read(&self.lock().faults)
    }

    /// Counts a listing request: its place among them (from 1), and whether the
    /// `listing_5xx_every` fault makes it fail.
    pub fn count_listing_request(&self) -> (usize, bool) {
        let mut state = self.lock();
        state.listing_requests += 1;
        let request = state.listing_requests;
        (request, is_nth(request, state.faults.listing_5xx_every))
    }

    /// The `request`th listing request has read its page: applies the changes of
    /// [`Faults::after_listing`] due after it.
    pub fn listed(&self, request: usize) {
        let mut guard = self.lock();
        let state = &mut *guard;
        let due: Vec<ProjectChange> = state
            .faults
            .after_listing
            .iter()
            .filter(|(after, _)| *after == request)
            .map(|(_, change)| change.clone())
            .collect();
        for change in due {
            state.apply(&self.seed, change);
        }
    }

    pub fn listing_requests(&self) -> usize {
        self.lock().listing_requests
    }

    /// Counts an export request; true when the `export_5xx_every` fault makes this one fail.
    pub fn count_export_request(&self) -> bool {
        let mut state = self.lock();
        state.export_requests += 1;
        is_nth(state.export_requests, state.faults.export_5xx_every)
    }

    /// Counts an export request's arrival (before anything else), applies
    /// [`Faults::on_first_export`] on the first, and says whether it is held or answered late.
    pub fn arrive(&self) -> Arrival {
        let mut guard = self.lock();
        let state = &mut *guard;
        state.export_arrivals += 1;
        let request = state.export_arrivals;
        if request == 1 {
            for change in state.faults.on_first_export.clone() {
                state.apply(&self.seed, change);
            }
        }
        let hold = state
            .faults
            .hold_export
            .filter(|hold| hold.request == request && !state.held_released)
            .map(|hold| hold.stage);
        Arrival {
            request,
            hold,
            answer_delay: state.faults.export_answer_delays.get(&request).copied(),
        }
    }

    /// The 429 of [`Faults::export_429_burst`], if the `request`-th export request falls in it.
    pub fn burst_429(&self, request: usize, now: Instant) -> Option<RateLimited> {
        let mut guard = self.lock();
        let state = &mut *guard;
        let burst = state.faults.export_429_burst.clone()?;
        if state.burst_began.is_none() && request >= burst.from_request {
            state.burst_began = Some(now);
        }
        let began = state.burst_began?;
        (now.duration_since(began) < burst.lasting).then(|| RateLimited {
            retry_after: (!state.faults.omit_retry_after).then(|| whole_seconds(burst.retry_after)),
        })
    }

    /// Records a held request and waits until [`Shared::release_held`], or [`HOLD_LIMIT`].
    pub async fn hold(&self, record: HeldRecord) {
        let deadline = tokio::time::Instant::now() + HOLD_LIMIT;
        self.lock().held.push(record);
        self.held_changed.notify_waiters();
        loop {
            // Registered before checking, so a release in between still wakes this waiter.
            let changed = self.held_changed.notified();
            if self.lock().held_released {
                return;
            }
            if tokio::time::timeout_at(deadline, changed).await.is_err() {
                return;
            }
        }
    }

    pub fn release_held(&self) {
        self.lock().held_released = true;
        self.held_changed.notify_waiters();
    }

    /// Waits until a request is held; the first one held.
    pub async fn wait_held(&self, timeout: Duration) -> anyhow::Result<HeldRecord> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let changed = self.held_changed.notified();
            if let Some(held) = self.lock().held.first() {
                return Ok(held.clone());
            }
            if tokio::time::timeout_at(deadline, changed).await.is_err() {
                anyhow::bail!("no export request was held within {timeout:?}");
            }
        }
    }

    pub fn apply(&self, change: ProjectChange) {
        self.lock().apply(&self.seed, change);
    }

    pub fn set_token_revoked(&self, revoked: bool) {
        self.lock().token_revoked = revoked;
    }

    pub fn token_revoked(&self) -> bool {
        self.lock().token_revoked
    }

    /// The project a GitLab `:id` path parameter names now: by id, or by its current path (a
    /// renamed project's old path no longer resolves); none once deleted.
    pub fn find_project(&self, id_or_path: &str) -> Option<Project> {
        let state = self.lock();
        let found =
            match id_or_path.parse::<u64>() {
                Ok(id) => self
                    .seed
                    .project(id)
                    .or_else(|| state.created.iter().find(|project| project.id == id)),
                Err(_) => {
                    if let Some(renamed) = state.renamed.values().find(|project| {
                        project.path_with_namespace.eq_ignore_ascii_case(id_or_path)
                    }) {
                        return (!state.deleted.contains(&renamed.id)).then(|| renamed.clone());
                    }
                    self.seed
                        .project_by_path(id_or_path)
                        .filter(|project| {
                            !state.renamed.contains_key(&project.id)
                                && !state.deleted.contains(&project.id)
                        })
                        .or_else(|| {
                            state.created.iter().find(|project| {
                                !state.deleted.contains(&project.id)
                                    && project.path_with_namespace.eq_ignore_ascii_case(id_or_path)
                            })
                        })
                }
            }?;
        state.current(found).map(Cow::into_owned)
    }

    /// The project with this id as it is now; none once deleted.
    pub fn project(&self, id: u64) -> Option<Project> {
        self.find_project(&id.to_string())
    }

    /// Seed projects as they are now: deleted ones left out, renamed ones with their new path.
    pub fn current_projects<'s>(&self, projects: Vec<&'s Project>) -> Vec<Cow<'s, Project>> {
        let state = self.lock();
        if state.deleted.is_empty() && state.renamed.is_empty() && state.last_activity.is_empty() {
            return projects.into_iter().map(Cow::Borrowed).collect();
        }
        projects
            .into_iter()
            .filter_map(|project| state.current(project))
            .collect()
    }

    /// Takes one export from the current rate-limit window, opening a new window if none is open.
    pub fn take_export_slot(&self, now: Instant) -> Result<(), RateLimited> {
        let mut guard = self.lock();
        let state = &mut *guard;
        let limit = self.options.exports_per_window;
        if RateWindow::take(&mut state.rate_window, now, limit, self.options.window) {
            return Ok(());
        }
        Err(state.rate_limited(self.options.window))
    }

    /// Takes one import from the project import rate-limit window (GitLab's `project_import`, a
    /// limit of its own), opening a new window if none is open.
    pub fn take_import_slot(&self, now: Instant) -> Result<(), RateLimited> {
        let mut guard = self.lock();
        let state = &mut *guard;
        let limit = self.options.imports_per_window;
        if RateWindow::take(&mut state.import_window, now, limit, self.options.window) {
            return Ok(());
        }
        Err(state.rate_limited(self.options.window))
    }

    /// Projects created after the seed (by imports), as they are now, deleted ones included (the
    /// listing leaves them out as it does the seed's).
    pub fn created_projects(&self) -> Vec<Project> {
        self.lock().created.clone()
    }

    /// Creates a project for an import in `group`, `scheduled`, with `path` and `name` (GitLab:
    /// both unique in the namespace). With `overwrite`, a project already at `path` does not stand
    /// in the way: the new one takes `path` with `-<temporary suffix>` until its import finishes
    /// and then replaces it (see [`Shared::finish_import`]). Returns the project and the id of the
    /// one it is to replace.
    pub fn create_imported_project(
        &self,
        group: &Group,
        path: &str,
        name: &str,
        overwrite: bool,
        temporary_suffix: &str,
    ) -> Result<(Project, Option<u64>), Taken> {
        let mut guard = self.lock();
        let state = &mut *guard;
        let in_namespace: Vec<Project> = self
            .seed
            .projects()
            .iter()
            .chain(&state.created)
            .filter_map(|project| state.current(project))
            .filter(|project| project.group_id == group.id)
            .map(Cow::into_owned)
            .collect();
        let at_path = in_namespace
            .iter()
            .find(|project| project.path.eq_ignore_ascii_case(path))
            .map(|project| project.id);
        let replaced = match at_path {
            Some(_) if !overwrite => return Err(Taken::Path),
            at_path => at_path,
        };
        if in_namespace
            .iter()
            .any(|project| project.name == name && Some(project.id) != replaced)
        {
            return Err(Taken::Name);
        }
        let path = match replaced {
            Some(_) => format!("{path}-{temporary_suffix}"),
            None => path.to_owned(),
        };
        let id = self.seed.next_project_id() + state.created.len() as u64;
        let project = Seed::new_project(group, id, &path, name);
        state.created.push(project.clone());
        Ok((project, replaced))
    }

    /// Records an import request; its index in [`Shared::imports`].
    pub fn record_import(&self, record: ImportRecord) -> usize {
        let mut state = self.lock();
        state.imports.push(record);
        let index = state.imports.len() - 1;
        if let Some(project_id) = state.imports[index].project_id {
            state.import_of.insert(project_id, index);
        }
        index
    }

    pub fn imports(&self) -> Vec<ImportRecord> {
        self.lock().imports.clone()
    }

    /// Moves the import recorded at `index` to `status` (with `error` when it failed); false (and
    /// nothing changed) once its project was deleted, which ends the import.
    pub fn set_import_status(
        &self,
        index: usize,
        status: ImportStatus,
        error: Option<String>,
    ) -> bool {
        let mut state = self.lock();
        let Some(record) = state.imports.get(index) else {
            return false;
        };
        if record
            .project_id
            .is_none_or(|project_id| state.deleted.contains(&project_id))
        {
            return false;
        }
        let record = &mut state.imports[index];
        record.import_status = Some(status);
        record.import_error = error;
        drop(state);
        if !status.is_active() {
            self.import_settled.notify_waiters();
        }
        true
    }

    /// Notes the archive the import recorded at `index` downloaded.
    pub fn set_import_archive(&self, index: usize, sha256: String, bytes: u64) {
        if let Some(record) = self.lock().imports.get_mut(index) {
            record.archive_sha256 = Some(sha256);
            record.archive_bytes = Some(bytes);
        }
    }

    /// The project's import (status, error and the record's index), if it was created by one.
    pub fn import_of(&self, project_id: u64) -> Option<(ImportStatus, Option<String>, usize)> {
        let state = self.lock();
        let index = *state.import_of.get(&project_id)?;
        let record = &state.imports[index];
        Some((
            record.import_status.unwrap_or(ImportStatus::Scheduled),
            record.import_error.clone(),
            index,
        ))
    }

    /// An import that replaces a project (`overwrite`) finished: the replaced project is gone and
    /// the new one takes its path.
    pub fn finish_overwrite(&self, project_id: u64, replaced: u64, path: &str) {
        let mut guard = self.lock();
        let state = &mut *guard;
        state.deleted.insert(replaced);
        let Some(project) = state.created.iter_mut().find(|p| p.id == project_id) else {
            return;
        };
        let namespace = project
            .path_with_namespace
            .rsplit_once('/')
            .map_or("", |(namespace, _)| namespace);
        project.path_with_namespace = format!("{namespace}/{path}");
        project.path = path.to_owned();
    }

    /// Keeps an import job, to abort it on shutdown.
    pub fn keep_import_task(&self, task: AbortHandle) {
        self.lock().import_tasks.push(task);
    }

    /// Waits until no import is `scheduled` or `started`.
    pub async fn wait_imports_idle(&self, timeout: Duration) -> anyhow::Result<()> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let settled = self.import_settled.notified();
            let active = {
                let state = self.lock();
                state
                    .imports
                    .iter()
                    .filter(|record| {
                        record.import_status.is_some_and(ImportStatus::is_active)
                            && record
                                .project_id
                                .is_some_and(|id| !state.deleted.contains(&id))
                    })
                    .count()
            };
            if active == 0 {
                return Ok(());
            }
            if tokio::time::timeout_at(deadline, settled).await.is_err() {
                anyhow::bail!("{active} import(s) still scheduled or started after {timeout:?}");
            }
        }
    }

    /// Deletes a project (`DELETE /projects/:id` accepted).
    pub fn delete_project(&self, project_id: u64) {
        self.lock().deleted.insert(project_id);
        // An import of a deleted project ends: let waiters look again.
        self.import_settled.notify_waiters();
    }

    pub fn record_deletion(&self, record: DeletionRecord) {
        self.lock().deletions.push(record);
    }

    pub fn deletions(&self) -> Vec<DeletionRecord> {
        self.lock().deletions.clone()
    }

    pub fn record_export(&self, record: ExportRecord) {
        self.lock().exports.push(record);
    }

    pub fn exports(&self) -> Vec<ExportRecord> {
        self.lock().exports.clone()
    }

    pub fn record_upload(&self, record: UploadRecord) {
        self.lock().uploads.push(record);
    }

    pub fn uploads(&self) -> Vec<UploadRecord> {
        self.lock().uploads.clone()
    }

    /// Starts `job` as the project's export, `queued`, replacing (and aborting) any previous one.
    pub fn start_export<F>(&self, project_id: u64, job: impl FnOnce(JobId) -> F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        let mut state = self.lock();
        state.last_job_id += 1;
        let id = JobId(state.last_job_id);
        // Spawned under the lock, so the job cannot look at its status before it is recorded.
        let task = tokio::spawn(job(id)).abort_handle();
        let job = Job {
            id,
            status: ExportStatus::Queued,
            task,
        };
        if let Some(replaced) = state.jobs.insert(project_id, job) {
            replaced.task.abort();
        }
    }

    /// Moves export `job` of the project to `status`; false (and nothing changed) when a newer export
    /// of the project replaced it.
    pub fn set_export_status(&self, project_id: u64, job: JobId, status: ExportStatus) -> bool {
        let mut state = self.lock();
        let Some(current) = state
            .jobs
            .get_mut(&project_id)
            .filter(|current| current.id == job)
        else {
            return false;
        };
        current.status = status;
        drop(state);
        if !status.is_active() {
            self.export_settled.notify_waiters();
        }
        true
    }

    pub fn export_status(&self, project_id: u64) -> ExportStatus {
        self.lock()
            .jobs
            .get(&project_id)
            .map_or(ExportStatus::None, |job| job.status)
    }

    /// Waits until no export is `queued` or `started`.
    pub async fn wait_idle(&self, timeout: Duration) -> anyhow::Result<()> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            // Registered before checking, so a job settling in between still wakes this waiter.
            let settled = self.export_settled.notified();
            let active = self
                .lock()
                .jobs
                .values()
                .filter(|job| job.status.is_active())
                .count();
            if active == 0 {
                return Ok(());
            }
            if tokio::time::timeout_at(deadline, settled).await.is_err() {
                anyhow::bail!("{active} export(s) still queued or started after {timeout:?}");
            }
        }
    }

    /// Aborts every export and import job (on shutdown).
    pub fn abort_exports(&self) {
        let state = self.lock();
        for job in state.jobs.values() {
            job.task.abort();
        }
        for task in &state.import_tasks {
            task.abort();
        }
    }
}

impl RateWindow {
    /// Takes one request from `window`, opening a new one if none is open (or the last one ended);
    /// false when the open window has no room left.
    fn take(window: &mut Option<RateWindow>, now: Instant, limit: u32, length: Duration) -> bool {
        let window = match window {
            Some(window) if now.duration_since(window.opened) < length => window,
            stale_or_none => stale_or_none.insert(RateWindow {
                opened: now,
                used: 0,
            }),
        };
        if window.used < limit {
            window.used += 1;
            return true;
        }
        false
    }
}

impl Mutable {
    /// The 429 of a full window of this length.
    fn rate_limited(&self, window_length: Duration) -> RateLimited {
        RateLimited {
            retry_after: (!self.faults.omit_retry_after).then(|| whole_seconds(window_length)),
        }
    }

    fn apply(&mut self, seed: &Seed, change: ProjectChange) {
        match change {
            ProjectChange::Delete(id) => {
                self.deleted.insert(id);
            }
            ProjectChange::Rename { id, path } => {
                let Some(project) = self
                    .renamed
                    .get(&id)
                    .or(seed.project(id))
                    .or_else(|| self.created.iter().find(|project| project.id == id))
                else {
                    return;
                };
                let group = seed.group(project.group_id);
                let mut renamed = project.clone();
                renamed.path_with_namespace = match group {
                    Some(group) => format!("{}/{path}", group.full_path),
                    None => path.clone(),
                };
                renamed.name_with_namespace = match group {
                    Some(group) => format!("{} / {path}", group.full_name),
                    None => path.clone(),
                };
                renamed.name.clone_from(&path);
                renamed.path = path;
                self.renamed.insert(id, renamed);
            }
            ProjectChange::Activity(id) => {
                let Some(project) = seed
                    .project(id)
                    .or_else(|| self.created.iter().find(|project| project.id == id))
                else {
                    return;
                };
                let Some(current) = self.current(project) else {
                    return;
                };
                if let Some(moved) =
                    activity_after_event(&current.last_activity_at, OffsetDateTime::now_utc())
                {
                    self.last_activity.insert(id, moved);
                }
            }
        }
    }

    /// A seed project (or one created by an import) as it is now.
    fn current<'s>(&self, project: &'s Project) -> Option<Cow<'s, Project>> {
        if self.deleted.contains(&project.id) {
            return None;
        }
        let mut current = match self.renamed.get(&project.id) {
            Some(renamed) => Cow::Owned(renamed.clone()),
            None => Cow::Borrowed(project),
        };
        if let Some(last_activity_at) = self.last_activity.get(&project.id) {
            last_activity_at.clone_into(&mut current.to_mut().last_activity_at);
        }
        Some(current)
    }
}

/// GitLab's `RESET_PROJECT_ACTIVITY_INTERVAL`.
const RESET_PROJECT_ACTIVITY_INTERVAL: time::Duration = time::Duration::HOUR;

/// A project's `last_activity_at` after an event happens in it at `now`: `now` (RFC 3339 in UTC
/// with milliseconds, as GitLab writes it: `2024-08-08T13:24:13.543Z`) when `current` is
/// [`RESET_PROJECT_ACTIVITY_INTERVAL`] old or older, else `None` (unchanged). GitLab's
/// `app/models/event.rb`: `after_create :update_project` calls `reset_project_activity`, which
/// returns early on `recent_update?` (`project.last_activity_at > RESET_PROJECT_ACTIVITY_INTERVAL.ago`)
/// and otherwise updates the project `where('last_activity_at <= ?', RESET_PROJECT_ACTIVITY_INTERVAL.ago)`
/// to the event's `created_at`; hence the API docs' "can be out of date by up to one hour". A
/// `current` that is no RFC 3339 time counts as old.
pub fn activity_after_event(current: &str, now: OffsetDateTime) -> Option<String> {
    let recent = OffsetDateTime::parse(current, &Rfc3339)
        .is_ok_and(|at| at > now - RESET_PROJECT_ACTIVITY_INTERVAL);
    if recent {
        return None;
    }
    let format =
        format_description!("[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]Z");
    now.to_offset(UtcOffset::UTC).format(&format).ok()
}

/// Whether the `count`-th request is one the "every `every`-th request" fault hits.
fn is_nth(count: usize, every: Option<u32>) -> bool {
    every.is_some_and(|every| count.checked_rem(every as usize) == Some(0))
}

/// A duration in whole seconds, rounded up (60 s → 60, 1.5 s → 2).
fn whole_seconds(duration: Duration) -> u64 {
    duration
        .as_millis()
        .div_ceil(1000)
        .try_into()
        .unwrap_or(u64::MAX)
}
