//! A GitLab REST v4 stand-in for end-to-end tests and the local demo: an HTTP server on 127.0.0.1 that
//! serves a fixed [`Seed`] of groups and projects the way GitLab does for the endpoints the backup
//! uses (`/user`, `/groups/:id`, `/groups/:id/projects`, `/projects/:id`, `/projects/:id/export`), including offset
//! pagination, the per-user export rate limit, and asynchronous exports that upload a real `.tar.gz`
//! to the presigned `upload[url]`. For restores it imports archives from a URL
//! (`POST /projects/remote-import`, GitLab's `HEAD` checks and `project_import` rate limit, then a
//! background download), reports `GET /projects/:id/import` and deletes projects
//! (`DELETE /projects/:id`). [`Faults`] switch on GitLab misbehaviour; every export request, upload
//! attempt, import request and deletion is recorded for assertions, also over HTTP at
//! `/__standin/exports`, `/__standin/uploads`, `/__standin/imports` and `/__standin/deletions`. The world can change under a running backup ([`ProjectChange`]: a project
//! deleted or renamed, or active again; [`Standin::set_token_revoked`]: the token revoked), GitLab can become unreachable and come back ([`Standin::pause`],
//! [`Standin::resume`]), and an export request can be held at a chosen point ([`HoldExport`]) so
//! that a test can kill the worker exactly there.
//!
//! This file owns the public handle ([`Standin`]) and its configuration ([`Options`], [`Faults`]).

mod api;
mod export;
mod import;
mod listing;
mod repr;
mod seed;
mod state;
#[cfg(test)]
mod tests;

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

pub use repr::{ExportStatus, ImportStatus};
pub use seed::{Group, Project, Seed, Statistics, DEMO_GROUPS};
pub use state::{
    DeletionRecord, ExportRecord, HeadRecord, HeldRecord, ImportRecord, ProjectRef, UploadRecord,
};

use state::Shared;

/// How long [`Standin::stop`] waits for open connections to finish before cutting them.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);
/// Upper bound for one archive upload.
const UPLOAD_TIMEOUT: Duration = Duration::from_secs(30);

/// How the stand-in behaves when nothing goes wrong.
#[derive(Clone, Debug)]
pub struct Options {
    /// The only accepted token (`PRIVATE-TOKEN` header or `Authorization: Bearer`).
    pub token: String,
    /// Export requests allowed per rate-limit window (GitLab: 6).
    pub exports_per_window: u32,
    /// Length of the fixed rate-limit window opened by its first export request (GitLab: 60 s). The
    /// 429's `Retry-After` is this length in whole seconds, rounded up.
    pub window: Duration,
    /// Pause before each step of an export job: `queued` → `started` → build and upload.
    pub step_delay: Duration,
    /// The largest `per_page` a listing serves; larger requests are capped to it silently (GitLab:
    /// 100). A lower cap gives a small world several pages per group.
    pub max_per_page: u32,
    /// How long `POST /projects/:id/export` takes to answer. The request is recorded, counted
    /// against the rate limit and (on `202`) starts its export on arrival; only the answer waits.
    pub export_answer_delay: Duration,
    /// Base of the URLs written into answers (`Link`, `web_url`); defaults to [`Standin::base_url`].
    /// Another origin plays a GitLab behind a proxy, whose links name the address it was reached at.
    pub public_base: Option<String>,
    /// Port to bind on 127.0.0.1; 0 picks a free one.
    pub port: u16,
    /// `POST /projects/remote-import` requests allowed per rate-limit window of [`Options::window`]
    /// (GitLab's `project_import` limit: 6 a minute per user), counted apart from exports.
    pub imports_per_window: u32,
    /// Pause before each step of an import job: `scheduled` → `started` → download and check the
    /// archive → `finished` (or `failed`).
    pub import_step_delay: Duration,
    /// Test only: accept `http` import URLs as well as `https` (GitLab accepts `https` only, and
    /// refuses others with "File url is blocked: Only allowed schemes are https"). For local tests
    /// whose bucket or worker speaks plain http.
    pub allow_http_imports: bool,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            token: "glpat-standin".to_owned(),
            exports_per_window: 6,
            window: Duration::from_secs(60),
            step_delay: Duration::from_millis(100),
            max_per_page: 100,
            export_answer_delay: Duration::ZERO,
            public_base: None,
            port: 0,
            imports_per_window: 6,
            import_step_delay: Duration::from_millis(100),
            allow_http_imports: false,
        }
    }
}

/// GitLab misbehaviour to simulate; the default is none. Replaceable at any time with
/// [`Standin::set_faults`]; export jobs read it when they reach the step concerned.
#[derive(Clone, Debug, Default)]
pub struct Faults {
    /// Every Nth listing request (`GET /groups/:id/projects`, counting all) answers 500.
    pub listing_5xx_every: Option<u32>,
    /// Listing pages (`GET /groups/:id/projects`, 200) send their status, headers and this many
    /// bytes of the body, then nothing more: the body never ends, until the client gives up (or
    /// [`Standin::stop`] cuts the connection).
    pub stall_listing_body_after_bytes: Option<usize>,
    /// 429 answers carry no `Retry-After` header.
    pub omit_retry_after: bool,
    /// Exports of these project ids fail to build and end `failed`; nothing is uploaded.
    pub fail_build: HashSet<u64>,
    /// Exports of these project ids are never uploaded (the attempt is recorded with no status), yet
    /// end `finished`, as in GitLab when the upload target refuses the archive.
    pub fail_upload: HashSet<u64>,
    /// Exports of these project ids upload a body that is no gzip stream (still as
    /// `application/gzip`), as a broken proxy between GitLab and the bucket might.
    pub upload_not_gzip: HashSet<u64>,
    /// Export requests for these project ids answer 400 "The project size exceeds the export limit."
    pub too_large: HashSet<u64>,
    /// Every Nth export request (`POST /projects/:id/export`, counting all) answers 500.
    pub export_5xx_every: Option<u32>,
    /// The export status (`GET /projects/:id/export`) of these project ids always answers 500;
    /// their exports still run (and upload) as usual.
    pub export_status_5xx: HashSet<u64>,
    /// A burst of 429s on the export endpoint, as when another client of the same user spends its
    /// limit: see [`Burst429`].
    pub export_429_burst: Option<Burst429>,
    /// How long the Nth export request to arrive (counting all arrivals since the start, from 1)
    /// takes to answer, instead of [`Options::export_answer_delay`]. As there, the request is
    /// recorded, counted and its export started on arrival; only the answer waits.
    pub export_answer_delays: HashMap<usize, Duration>,
    /// Holds one export request at a chosen point until [`Standin::release_held`]: see
    /// [`HoldExport`].
    pub hold_export: Option<HoldExport>,
    /// Changes of the world applied once, when the first export request arrives and before it is
    /// answered: the backup has listed every group by then, so these happen "between listing and
    /// export".
    pub on_first_export: Vec<ProjectChange>,
    /// Changes of the world applied once the `n`th listing request (`GET /groups/:id/projects`,
    /// counting all, from 1) has read its page, before it is answered: the pages after it see
    /// them, as when a project goes between two pages of a listing.
    pub after_listing: Vec<(usize, ProjectChange)>,
    /// `DELETE /projects/:id` answers 403 `{"message":"403 Forbidden"}` (as for a user who is not
    /// the project's owner) and deletes nothing.
    pub refuse_deletion: bool,
}

/// From the `from_request`-th export request to arrive (counting all, from 1), every export
/// request answers 429 for `lasting`, whatever the rate window says, and takes no slot of it. The
/// 429s carry `Retry-After: retry_after` (whole seconds, rounded up) unless `omit_retry_after` is
/// set.
#[derive(Clone, Debug)]
pub struct Burst429 {
    pub from_request: usize,
    pub lasting: Duration,
    pub retry_after: Duration,
}

/// Holds the `request`-th export request to arrive (counting all, from 1) until
/// [`Standin::release_held`] (or for at most [`HOLD_LIMIT`]); [`Standin::wait_held`] reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HoldExport {
    pub request: usize,
    pub stage: HoldStage,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum HoldStage {
    /// Before GitLab looks at it: not recorded in [`Standin::exports`], not counted, no export
    /// started; once released it is dropped (answered 503) as if it had never been sent. A worker
    /// killed meanwhile looks, from GitLab's side, like one that died before sending it.
    BeforeArrival,
    /// After GitLab accepted it (recorded, counted, its export started), before its answer: a
    /// worker killed meanwhile never learns that GitLab accepted the export.
    BeforeAnswer,
}

/// A change of the world under a running backup.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ProjectChange {
    /// The project is gone: 404 for its export and export status, absent from listings.
    Delete(u64),
    /// The project keeps its id and group and gets this path (its last segment): found by id or
    /// by the new path only, and listed and described with it.
    Rename { id: u64, path: String },
    /// An event happens in the project now (a push, a comment): as in GitLab, its
    /// `last_activity_at` becomes now only when the value it holds is an hour old or older, and
    /// stays as it is otherwise. No effect on a deleted or unknown project.
    Activity(u64),
}

/// How long a held export request waits for [`Standin::release_held`] at most.
pub const HOLD_LIMIT: Duration = Duration::from_secs(120);

/// A running stand-in. Dropping it without [`Standin::stop`] aborts the server and export jobs.
pub struct Standin {
    shared: Arc<Shared>,
    base_url: String,
    address: SocketAddr,
    shutdown: Option<oneshot::Sender<()>>,
    server: Option<JoinHandle<()>>,
}

/// Serves the API on `listener` until `shutdown` fires (or its sender is dropped).
fn serve(listener: TcpListener, shared: &Arc<Shared>) -> (oneshot::Sender<()>, JoinHandle<()>) {
    let (shutdown, shutdown_requested) = oneshot::channel::<()>();
    let app = api::router(Arc::clone(shared));
    let server = tokio::spawn(async move {
        let serving = axum::serve(listener, app).with_graceful_shutdown(async {
            // A dropped sender means the same as a sent signal: stop.
            let _ = shutdown_requested.await;
        });
        if let Err(error) = serving.await {
            eprintln!("GitLab stand-in stopped with an error: {error}");
        }
    });
    (shutdown, server)
}

impl Standin {
    /// Binds 127.0.0.1:`options.port` and starts serving `seed`.
    pub async fn start(seed: Seed, options: Options) -> anyhow::Result<Standin> {
        let listener = TcpListener::bind(("127.0.0.1", options.port))
            .await
            .with_context(|| format!("binding 127.0.0.1:{}", options.port))?;
        let address = listener.local_addr()?;
        let base_url = format!("http://{address}");
        let public_base = match &options.public_base {
            Some(public_base) => {
                url::Url::parse(public_base)
                    .with_context(|| format!("public_base {public_base:?} is not a URL"))?;
                public_base.trim_end_matches('/').to_owned()
            }
            None => base_url.clone(),
        };
        let client = reqwest::Client::builder()
            .timeout(UPLOAD_TIMEOUT)
            .build()
            .context("building the upload HTTP client")?;
        let head_client = reqwest::Client::builder()
            .timeout(import::HEAD_TIMEOUT)
            .build()
            .context("building the import HEAD client")?;
        let shared = Arc::new(Shared::new(seed, options, public_base, client, head_client));
        let (shutdown, server) = serve(listener, &shared);
        Ok(Standin {
            shared,
            base_url,
            address,
            shutdown: Some(shutdown),
            server: Some(server),
        })
    }

    /// `http://127.0.0.1:<port>`, where the stand-in listens.
    pub fn base_url(&self) -> String {
        self.base_url.clone()
    }

    /// Every `POST /projects/:id/export` so far, with its time and answer, oldest first.
    pub fn exports(&self) -> Vec<ExportRecord> {
        self.shared.exports()
    }

    /// Every archive upload attempt so far, oldest first.
    pub fn uploads(&self) -> Vec<UploadRecord> {
        self.shared.uploads()
    }

    /// Every `POST /projects/remote-import` so far, with its `HEAD`, answer and import, oldest first.
    pub fn imports(&self) -> Vec<ImportRecord> {
        self.shared.imports()
    }

    /// Every `DELETE /projects/:id` so far, with its answer, oldest first.
    pub fn deletions(&self) -> Vec<DeletionRecord> {
        self.shared.deletions()
    }

    /// Import status of a project, as `GET /projects/:id/import` would report it (`None` for a
    /// project never imported, or unknown).
    pub fn import_status(&self, project_id: u64) -> ImportStatus {
        self.shared
            .import_of(project_id)
            .map_or(ImportStatus::None, |(status, _, _)| status)
    }

    /// Waits until no import is `scheduled` or `started`; an error after `timeout`.
    pub async fn wait_imports_idle(&self, timeout: Duration) -> anyhow::Result<()> {
        self.shared.wait_imports_idle(timeout).await
    }

    /// The export archive the stand-in would build for this project now (a gzip'd tar with
    /// `VERSION` and `project.json`), e.g. to put in a bucket for an import.
    pub fn export_archive(&self, project_id: u64) -> anyhow::Result<Vec<u8>> {
        export::build_archive(&self.shared, project_id)
            .with_context(|| format!("building the export archive of project {project_id}"))
    }

    /// How many `GET /groups/:id/projects` requests arrived, whatever their answer.
    pub fn listing_requests(&self) -> usize {
        self.shared.listing_requests()
    }

    pub fn set_faults(&self, faults: Faults) {
        self.shared.set_faults(faults);
    }

    pub fn seed(&self) -> &Seed {
        &self.shared.seed
    }

    /// Export status of a project, as `GET /projects/:id/export` would report it.
    pub fn export_status(&self, project_id: u64) -> ExportStatus {
        self.shared.export_status(project_id)
    }

    /// Waits until no export is `queued` or `started`; an error after `timeout`.
    pub async fn wait_idle(&self, timeout: Duration) -> anyhow::Result<()> {
        self.shared.wait_idle(timeout).await
    }

    /// Applies a change of the world now.
    pub fn apply(&self, change: ProjectChange) {
        self.shared.apply(change);
    }

    /// Revokes the token (every authenticated endpoint answers 401 from now on), or restores it.
    pub fn set_token_revoked(&self, revoked: bool) {
        self.shared.set_token_revoked(revoked);
    }

    /// Waits until the export request chosen by [`Faults::hold_export`] is held; an error after
    /// `timeout`.
    pub async fn wait_held(&self, timeout: Duration) -> anyhow::Result<HeldRecord> {
        self.shared.wait_held(timeout).await
    }

    /// Lets a held export request go on (dropped or answered, by its [`HoldStage`]).
    pub fn release_held(&self) {
        self.shared.release_held();
    }

    /// GitLab becomes unreachable: stops accepting connections (they are refused), lets open ones
    /// finish (cutting them after a grace period), and keeps everything else: the records, the
    /// rate window, the export jobs (which go on building and uploading). No-op when paused.
    pub async fn pause(&mut self) {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
        if let Some(mut server) = self.server.take() {
            if tokio::time::timeout(SHUTDOWN_GRACE, &mut server)
                .await
                .is_err()
            {
                server.abort();
                let _ = server.await;
            }
        }
    }

    /// GitLab is reachable again, at the same address. No-op unless paused.
    pub async fn resume(&mut self) -> anyhow::Result<()> {
        if self.server.is_some() {
            return Ok(());
        }
        let listener = TcpListener::bind(self.address)
            .await
            .with_context(|| format!("binding {} again", self.address))?;
        let (shutdown, server) = serve(listener, &self.shared);
        self.shutdown = Some(shutdown);
        self.server = Some(server);
        Ok(())
    }

    /// Stops accepting connections, lets open ones finish (cutting them after a grace period), aborts
    /// running export jobs, and frees the port.
    pub async fn stop(mut self) {
        self.shared.release_held();
        self.pause().await;
        self.shared.abort_exports();
    }
}

impl Drop for Standin {
    fn drop(&mut self) {
        if let Some(server) = self.server.take() {
            server.abort();
        }
        self.shared.release_held();
        self.shared.abort_exports();
    }
}
