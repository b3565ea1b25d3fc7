//! Restores, without I/O: admitting `POST /restore` ([`Admission`]), moving the restores still
//! going a step each tick ([`Restores`]: GitLab's `remote-import`, then its import status until
//! it ends), and opening an archive URL for GitLab ([`archive_request`]).
//!
//! GitLab fetches the archive from the worker, not from the bucket: a presigned GET URL passes
//! GitLab's `HEAD` check only on AWS (R2, MinIO and the others refuse a HEAD on a URL signed
//! for GET). The worker's route answers `HEAD` and streams `GET` from the bucket, signed for
//! each request, behind a random capability made anew each time the import is sent and kept
//! only as its SHA-256; it opens only while the restore is going and before it expires.

use std::time::Duration;

use url::Url;

use super::allowance::Usage;
use super::Event;
use crate::config::{Config, RunSettings};
use crate::gitlab::{GitLab, GitLabError, ImportAnswer, ImportStatus};
use crate::http::{HttpRequest, HttpResult, Method};
use crate::restore::{
    capability_matches, default_path, drill_path, namespace_allowed, namespace_of, Capability, Ref,
    RestoreRequest,
};
use crate::s3::{read_archive_start, LearnedRegion, Signer};
use crate::store::{
    Backup, Meta, MetaKey, NewRestore, RestoreRow, RestoreUpdate, Sql, Store, StoreError,
};
use crate::time::{ms, system_time};

/// GitLab's `project_import` rate limit: imports a minute per user.
pub const IMPORTS_PER_MINUTE: u64 = 6;
/// The minute [`IMPORTS_PER_MINUTE`] counts in.
const MINUTE_MS: u64 = 60_000;
/// How long a restore may take, from the request to the end of its import: GitLab gives an
/// import 24 hours, and the archive URL opens for an hour more.
pub const RESTORE_EXPIRY: Duration = Duration::from_secs(25 * 3600);
/// Import requests sent for one restore before it fails with the last reason.
pub const IMPORT_TRIES: u64 = 5;
/// Restores moved a step in one tick (each is one request).
pub const RESTORES_PER_TICK: u64 = 4;
/// A drill's scratch project is deleted until this long after the drill expired (its
/// `DELETE` goes out at least once, however late the import ended).
pub const CLEANUP_GRACE: Duration = Duration::from_secs(3600);
/// Until an answer to an import request is stored, the restore is looked at again this late.
const UNANSWERED_RETRY: Duration = Duration::from_secs(60);
/// After a failure without a `Retry-After` (5xx, no answer), the restore waits this long.
const FAILURE_RETRY: Duration = Duration::from_secs(30);

/// How long after a check the next one comes, by how long the import has gone on: GitLab
/// imports a small project in seconds and a large one in hours.
pub fn next_import_check(import_age: Duration) -> Duration {
    match import_age.as_secs() {
        0..60 => Duration::from_secs(5),
        60..600 => Duration::from_secs(30),
        _ => Duration::from_secs(60),
    }
}

/// The facts of `meta` a tick's restores read, in one statement.
const RESTORE_FACTS: [MetaKey; 4] = [
    MetaKey::DailyUsage,
    MetaKey::LastDrillStarted,
    MetaKey::BucketRegion,
    MetaKey::GitLabBackoffUntil,
];

/// The settings a restore asked for now keeps (`meta` holding the bucket's learned region).
fn settings_now(config: &Config, meta: &Meta) -> Result<RunSettings, StoreError> {
    let learned =
        LearnedRegion::read_for(meta.text(MetaKey::BucketRegion)?.as_deref(), &config.bucket);
    Ok(RunSettings::of(config, learned))
}

/// Why `POST /restore` is refused: the HTTP status, the field at fault, and what to do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Refusal {
    pub status: u16,
    pub field: Option<&'static str>,
    pub message: String,
}

fn refuse(status: u16, field: Option<&'static str>, message: impl Into<String>) -> Refusal {
    Refusal {
        status,
        field,
        message: message.into(),
    }
}

/// What an admission still has to ask before the restore can be recorded.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Ask {
    /// The full path of the namespace asked for by id.
    Namespace(u64),
    /// That the key asked for is an archive in the bucket.
    Key,
}

/// `POST /restore`, being admitted: checked against the store and the settings, then (when the
/// request names a namespace by id or a backup's key) against GitLab and the bucket.
///
/// ```text
/// Admission::new(store, config, body, origin, now)  → Admission | Refusal
/// while let Some(request) = admission.next_request(now)? { send; admission.handle(answer)? }
/// admission.admit(store, now)                        → the restore, recorded, and its event
/// ```
#[derive(Debug)]
pub struct Admission {
    backup: Backup,
    key: String,
    namespace: Option<String>,
    path: String,
    name: Option<String>,
    origin: Url,
    settings: RunSettings,
    gitlab: GitLab,
    credentials: crate::s3::Credentials,
    /// The namespaces a restore may go into.
    allowed: Vec<String>,
    asks: Vec<Ask>,
    asking: Option<Ask>,
}

impl Admission {
    pub fn new<S: Sql>(
        store: &Store<S>,
        config: &Config,
        body: &[u8],
        origin: &Url,
        now_ms: u64,
    ) -> Result<Result<Admission, Refusal>, StoreError> {
        let request = match RestoreRequest::parse(body) {
            Ok(request) => request,
            Err(bad) => return Ok(Err(refuse(400, Some(bad.field), bad.to_string()))),
        };
        let backup = match &request.project {
            Ref::Id(id) => store.last_backup_of(*id)?,
            Ref::Path(path) => store.last_backup_at(path)?,
        };
        let Some(backup) = backup else {
            return Ok(Err(refuse(
                404,
                Some("project"),
                format!(
                    "project {} has no verified backup this worker knows of",
                    request.project
                ),
            )));
        };
        let mut asks = Vec::new();
        let key = match request.backup {
            None => backup.key.clone(),
            Some(key) if key == backup.key => key,
            Some(key) => {
                // Only this project's backups: the key's folder is `<S3_PREFIX><path>` (or its
                // path, from before S3_PREFIX was set). A folder that only ends in its path
                // may be another project's: `other/<path>`.
                let folder = key.rsplit_once('/').map_or("", |(folder, _)| folder);
                let own_folder = format!("{}{}", config.s3_prefix, backup.path);
                let ours = folder.eq_ignore_ascii_case(&own_folder)
                    || folder.eq_ignore_ascii_case(&backup.path);
                if !ours {
                    return Ok(Err(refuse(
                        400,
                        Some("backup"),
                        format!(
                            "backup: {key:?} is not a backup of {} (its backups are under \"{own_folder}/\")",
                            backup.path
                        ),
                    )));
                }
                asks.push(Ask::Key);
                key
            }
        };
        let namespace = match request.namespace {
            None => match namespace_of(&backup.path) {
                Some(namespace) => Some(namespace.to_owned()),
                None => {
                    return Ok(Err(refuse(
                        400,
                        Some("namespace"),
                        format!("namespace: {} has none; name one", backup.path),
                    )))
                }
            },
            Some(Ref::Path(path)) => Some(path),
            Some(Ref::Id(id)) => {
                asks.insert(0, Ask::Namespace(id));
                None
            }
        };
        let path = request
            .path
            .unwrap_or_else(|| default_path(&backup.path, now_ms));
        let allowed = match &config.restore_namespaces {
            Some(namespaces) => namespaces.clone(),
            None => config
                .groups
                .iter()
                .filter_map(|group| match group {
                    crate::gitlab::GroupRef::Path(path) => Some(path.clone()),
                    crate::gitlab::GroupRef::Id(_) => None,
                })
                .chain(namespace_of(&backup.path).map(str::to_owned))
                .collect(),
        };
        let allowed = allowed
            .into_iter()
            .chain(config.drills.as_ref().map(|d| d.namespace.clone()))
            .collect();
        let settings = settings_now(config, &store.meta(&[MetaKey::BucketRegion])?)?;
        let admission = Admission {
            gitlab: GitLab::new(&settings.gitlab_url, config.gitlab_token.clone()),
            credentials: config.credentials.clone(),
            backup,
            key,
            namespace,
            path,
            name: request.name,
            // WORKER_URL, when set, is the address GitLab is given.
            origin: config.worker_url.clone().unwrap_or_else(|| origin.clone()),
            settings,
            allowed,
            asks,
            asking: None,
        };
        Ok(admission.check_namespace().map(|()| admission))
    }

    /// Refuses a namespace that is not allowed, once its path is known.
    fn check_namespace(&self) -> Result<(), Refusal> {
        match &self.namespace {
            Some(namespace) if !namespace_allowed(namespace, &self.allowed) => Err(refuse(
                403,
                Some("namespace"),
                format!(
                    "namespace: a restore may not go into {namespace}: it may go into {} and \
                     below (RESTORE_NAMESPACES)",
                    self.allowed.join(", ")
                ),
            )),
            _ => Ok(()),
        }
    }

    /// The next question to send, if any is left.
    pub fn next_request(&mut self, now_ms: u64) -> Result<Option<HttpRequest>, Refusal> {
        let Some(ask) = self.asks.first().cloned() else {
            return Ok(None);
        };
        self.asks.remove(0);
        let request = match &ask {
            Ask::Namespace(id) => self.gitlab.group_request(*id),
            Ask::Key => {
                let Some(region) = self.settings.region() else {
                    return Err(refuse(
                        503,
                        None,
                        "the bucket's region is not known yet: it is learned by the first run",
                    ));
                };
                let url = self.settings.bucket.object_url(region, &self.key);
                let signer = Signer {
                    credentials: &self.credentials,
                    region,
                    now: system_time(now_ms),
                };
                signer
                    .signed_first_bytes(&url)
                    .map_err(|e| refuse(500, None, e.to_string()))?
            }
        };
        self.asking = Some(ask);
        Ok(Some(request))
    }

    /// Reads the answer to the last question.
    pub fn handle(&mut self, answer: HttpResult) -> Result<(), Refusal> {
        let ask = self.asking.take();
        let answer = answer.map_err(|e| refuse(502, None, format!("no answer: {e}")))?;
        match ask {
            None => Ok(()),
            Some(Ask::Namespace(id)) => match self.gitlab.read_group_path(&answer) {
                Ok(path) => {
                    self.namespace = Some(path);
                    self.check_namespace()
                }
                Err(GitLabError::GroupNotVisible { status }) => Err(refuse(
                    404,
                    Some("namespace"),
                    format!(
                        "namespace: GitLab has no group {id} that GITLAB_TOKEN can see ({status})"
                    ),
                )),
                Err(e) => Err(refuse(
                    502,
                    Some("namespace"),
                    format!("namespace {id}: {e}"),
                )),
            },
            Some(Ask::Key) => match answer.status {
                404 => Err(refuse(
                    404,
                    Some("backup"),
                    format!("backup: the bucket has no object {:?}", self.key),
                )),
                200 | 206 | 416 => read_archive_start(&answer).map(drop).map_err(|why| {
                    refuse(
                        400,
                        Some("backup"),
                        format!("backup: {:?} is not a project archive: {why}", self.key),
                    )
                }),
                status => Err(refuse(
                    502,
                    Some("backup"),
                    format!(
                        "backup: S3 answered {status} for {:?}: {}",
                        self.key,
                        answer.body_excerpt()
                    ),
                )),
            },
        }
    }

    /// Records the restore, due at once.
    pub fn admit<S: Sql>(
        self,
        store: &Store<S>,
        now_ms: u64,
    ) -> Result<(RestoreRow, Event), StoreError> {
        let namespace = self
            .namespace
            .ok_or_else(|| StoreError("a restore was admitted without its namespace".into()))?;
        let restore = store.insert_restore(
            &NewRestore {
                project_id: self.backup.project_id,
                project_path: self.backup.path,
                key: self.key,
                namespace,
                path: self.path,
                name: self.name,
                origin: self.origin.origin().ascii_serialization(),
                expires_ms: now_ms + ms(RESTORE_EXPIRY),
                settings: self.settings.to_json(),
                drill: false,
            },
            now_ms,
        )?;
        let event = Event::RestoreRequested {
            restore: restore.id,
            project: restore.project_path.clone(),
            key: restore.key.clone(),
            target: restore.target(),
        };
        Ok((restore, event))
    }
}

/// A request a tick sends for a restore, and what it is for.
#[derive(Debug)]
pub struct RestoreStep {
    pub request: HttpRequest,
    restore: RestoreRow,
    gitlab: GitLab,
    purpose: Purpose,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Purpose {
    Import,
    /// Whether an import whose answer was lost made its project.
    Lookup,
    Check,
    /// A drill's scratch project.
    Delete,
}

/// What a tick's restores did: events to log, and when a restore is due next.
#[derive(Debug, Default)]
pub struct RestoresReport {
    pub events: Vec<Event>,
    pub subrequests: u32,
    pub wake_at_ms: Option<u64>,
    /// Past the day's allowance, the restores wait until it renews.
    pub paused_until: Option<u64>,
}

/// When the restores want the object woken: when the next is due (read now, so a restore
/// admitted while a tick ran is not missed), or when the day's allowance renews if they wait
/// for it; never in the past for restores that cannot move.
pub fn restores_wake<S: Sql>(
    store: &Store<S>,
    report: &RestoresReport,
) -> Result<Option<u64>, StoreError> {
    match report.paused_until {
        Some(until) => Ok(Some(until)),
        None => store.next_restore_due(),
    }
}

/// One tick's work on the restores still going: each due one moves a step (one request).
///
/// ```text
/// Restores::begin(store, config, subrequests)
/// steps = restores.next_steps(now, random)   // claims written first; one batch a tick
/// send them together; restores.handle(step, answer, now) for each
/// restores.finish()                           → events, when the next one is due
/// ```
pub struct Restores<'a, S: Sql> {
    store: &'a Store<S>,
    config: &'a Config,
    budget: u32,
    /// Whether this tick's batch was made (one a tick).
    batched: bool,
    /// The store's rows written when the restores began: what they write counts against the
    /// day's allowance.
    rows_at_begin: u64,
    /// The day's usage, as read with the tick's facts.
    usage: Option<Usage>,
    report: RestoresReport,
}

impl<'a, S: Sql> Restores<'a, S> {
    pub fn begin(store: &'a Store<S>, config: &'a Config, subrequests: u32) -> Self {
        Restores {
            store,
            config,
            budget: subrequests,
            batched: false,
            rows_at_begin: store.rows_written(),
            usage: None,
            report: RestoresReport::default(),
        }
    }

    fn gitlab(&self, restore: &RestoreRow) -> Result<GitLab, String> {
        let settings = RunSettings::from_json(&restore.settings)?;
        Ok(GitLab::new(
            &settings.gitlab_url,
            self.config.gitlab_token.clone(),
        ))
    }

    fn fail(
        &mut self,
        restore: &RestoreRow,
        reason: String,
        now_ms: u64,
    ) -> Result<(), StoreError> {
        if restore.drill {
            return self.drill_ended(restore, Some(reason), now_ms);
        }
        self.store.update_restore(
            restore.id,
            &RestoreUpdate::Failed {
                reason: reason.clone(),
                at_ms: now_ms,
            },
        )?;
        self.report.events.push(Event::RestoreFailed {
            restore: restore.id,
            project: restore.project_path.clone(),
            target: restore.target(),
            reason,
        });
        Ok(())
    }

    /// A drill's import ended (`error`: why it failed): the result goes on the backup, and the
    /// scratch project, if GitLab made one, is deleted next.
    fn drill_ended(
        &mut self,
        restore: &RestoreRow,
        error: Option<String>,
        now_ms: u64,
    ) -> Result<(), StoreError> {
        self.store
            .record_drill(restore.project_id, &restore.key, now_ms, error.as_deref())?;
        self.report.events.push(match &error {
            None => Event::DrillPassed {
                restore: restore.id,
                project: restore.project_path.clone(),
                key: restore.key.clone(),
            },
            Some(reason) => Event::DrillFailed {
                restore: restore.id,
                project: restore.project_path.clone(),
                key: restore.key.clone(),
                reason: reason.clone(),
            },
        });
        if restore.new_project_id.is_some() {
            self.store.update_restore(
                restore.id,
                &RestoreUpdate::Cleaning {
                    error,
                    due_ms: now_ms,
                },
            )
        } else {
            self.store.update_restore(
                restore.id,
                &RestoreUpdate::Failed {
                    reason: error.unwrap_or_default(),
                    at_ms: now_ms,
                },
            )
        }
    }

    /// A drill's scratch project is deleted, or `kept` (why not): the restore ends.
    fn cleaned(
        &mut self,
        restore: &RestoreRow,
        kept: Option<String>,
        now_ms: u64,
    ) -> Result<(), StoreError> {
        if let Some(reason) = &kept {
            self.report.events.push(Event::DrillProjectKept {
                restore: restore.id,
                target: restore.target(),
                reason: reason.clone(),
            });
        }
        self.store.update_restore(
            restore.id,
            &RestoreUpdate::Cleaned {
                at_ms: now_ms,
                kept,
            },
        )
    }

    fn later(
        &self,
        restore: &RestoreRow,
        due_ms: u64,
        error: Option<String>,
    ) -> Result<(), StoreError> {
        self.store
            .update_restore(restore.id, &RestoreUpdate::Later { due_ms, error })
    }

    /// Starts a restore drill when one is due: drills are set, the last began
    /// `RESTORE_DRILL_EVERY_DAYS` ago, none is going and no run is (a drill follows a run), and
    /// a backup is there to drill (in turn by project id).
    fn start_drill_if_due(&mut self, meta: &Meta, now_ms: u64) -> Result<(), StoreError> {
        let (Some(drills), Some(origin)) = (&self.config.drills, &self.config.worker_url) else {
            return Ok(());
        };
        let last = meta.u64(MetaKey::LastDrillStarted)?;
        if last.is_some_and(|last| now_ms < last + ms(drills.every))
            || self.store.drill_going()?
            || self.store.active_run()?.is_some()
        {
            return Ok(());
        }
        let Some(backup) = self.store.next_to_drill()? else {
            return Ok(());
        };
        let restore = self.store.insert_restore(
            &NewRestore {
                project_id: backup.project_id,
                path: drill_path(&backup.path, now_ms),
                project_path: backup.path,
                key: backup.key,
                namespace: drills.namespace.clone(),
                name: None,
                origin: origin.origin().ascii_serialization(),
                expires_ms: now_ms + ms(RESTORE_EXPIRY),
                settings: settings_now(self.config, meta)?.to_json(),
                drill: true,
            },
            now_ms,
        )?;
        self.store.set_meta(MetaKey::LastDrillStarted, now_ms)?;
        self.report.events.push(Event::DrillStarted {
            restore: restore.id,
            project: restore.project_path.clone(),
            key: restore.key.clone(),
            target: restore.target(),
        });
        Ok(())
    }

    /// The due restores' requests: an import (its claim, with a new capability, written before
    /// it goes out), or a check of an import under way. `random` hands 32 random bytes (or
    /// none, when the platform's source failed: the import waits).
    pub fn next_steps(
        &mut self,
        now_ms: u64,
        random: &mut dyn FnMut() -> Option<[u8; 32]>,
    ) -> Result<Vec<RestoreStep>, StoreError> {
        // At least one a tick: a budget that leaves none would hold restores back forever.
        if self.batched {
            return Ok(Vec::new());
        }
        self.batched = true;
        let limit = RESTORES_PER_TICK.min(u64::from(self.budget.max(1)));
        let meta = self.store.meta(&RESTORE_FACTS)?;
        // Past the day's allowance of the Durable Object, restores wait with the run.
        let usage = Usage::read(meta.text(MetaKey::DailyUsage)?.as_deref(), now_ms)?;
        let paused = usage.pause(self.config);
        self.usage = Some(usage);
        if let Some(pause) = paused {
            self.report.paused_until = Some(pause.until_ms);
            return Ok(Vec::new());
        }
        self.start_drill_if_due(&meta, now_ms)?;
        let due = self.store.due_restores(now_ms, limit)?;
        if due.is_empty() {
            return Ok(Vec::new());
        }
        let held_until = meta
            .u64(MetaKey::GitLabBackoffUntil)?
            .filter(|&until| until > now_ms);
        let mut sent_in_minute = self
            .store
            .imports_sent_since(now_ms.saturating_sub(MINUTE_MS))?;
        let mut steps = Vec::new();
        for restore in due {
            if restore.state == crate::store::RestoreState::Cleaning
                && now_ms >= restore.expires_ms + ms(CLEANUP_GRACE)
            {
                let kept = format!(
                    "the scratch project was not deleted: {}",
                    restore.error.as_deref().unwrap_or("GitLab did not answer")
                );
                self.cleaned(&restore, Some(kept), now_ms)?;
                continue;
            }
            if now_ms >= restore.expires_ms && restore.state != crate::store::RestoreState::Cleaning
            {
                let reason = format!(
                    "it did not end within {} h of the request",
                    RESTORE_EXPIRY.as_secs() / 3600
                );
                self.fail(&restore, reason, now_ms)?;
                continue;
            }
            if let Some(until) = held_until {
                self.later(&restore, until, restore.error.clone())?;
                continue;
            }
            let gitlab = match self.gitlab(&restore) {
                Ok(gitlab) => gitlab,
                Err(e) => {
                    self.fail(
                        &restore,
                        format!("its settings cannot be read: {e}"),
                        now_ms,
                    )?;
                    continue;
                }
            };
            let step = match restore.state {
                // Its last import got no answer: GitLab may have made the project. Asked first
                // (sent again, the import would find its own project's path taken).
                crate::store::RestoreState::Requested if restore.unanswered => RestoreStep {
                    request: gitlab.import_status_at_request(&restore.target()),
                    restore,
                    gitlab,
                    purpose: Purpose::Lookup,
                },
                crate::store::RestoreState::Requested => {
                    if restore.tries >= IMPORT_TRIES {
                        let reason = format!(
                            "GitLab did not take the import in {IMPORT_TRIES} tries: {}",
                            restore.error.as_deref().unwrap_or("no answer")
                        );
                        self.fail(&restore, reason, now_ms)?;
                        continue;
                    }
                    // The store keeps a restore's last send only: sent again within the
                    // minute, its first send would no longer count toward the limit.
                    if let Some(sent) = restore.sent_ms.filter(|&sent| now_ms < sent + MINUTE_MS) {
                        self.later(&restore, sent + MINUTE_MS, restore.error.clone())?;
                        continue;
                    }
                    if sent_in_minute >= IMPORTS_PER_MINUTE {
                        self.later(&restore, now_ms + 10_000, restore.error.clone())?;
                        continue;
                    }
                    let Ok(origin) = Url::parse(&restore.origin) else {
                        self.fail(
                            &restore,
                            format!("its origin {:?} is no URL", restore.origin),
                            now_ms,
                        )?;
                        continue;
                    };
                    let Some(bytes) = random() else {
                        let error = Some("no random bytes for the archive URL's capability".into());
                        self.later(&restore, now_ms + ms(FAILURE_RETRY), error)?;
                        continue;
                    };
                    sent_in_minute += 1;
                    let capability = Capability::from_random(bytes);
                    let archive = capability.archive_url(&origin, restore.id);
                    self.store.update_restore(
                        restore.id,
                        &RestoreUpdate::Sent {
                            at_ms: now_ms,
                            capability: capability.digest(),
                            due_ms: now_ms + ms(UNANSWERED_RETRY),
                        },
                    )?;
                    RestoreStep {
                        request: gitlab.remote_import_request(
                            &archive,
                            &restore.namespace,
                            &restore.path,
                            restore.name.as_deref(),
                        ),
                        restore,
                        gitlab,
                        purpose: Purpose::Import,
                    }
                }
                crate::store::RestoreState::Importing => {
                    let Some(project_id) = restore.new_project_id else {
                        self.fail(&restore, "importing without a project id".into(), now_ms)?;
                        continue;
                    };
                    RestoreStep {
                        request: gitlab.import_status_request(project_id),
                        restore,
                        gitlab,
                        purpose: Purpose::Check,
                    }
                }
                crate::store::RestoreState::Cleaning => {
                    let Some(project_id) = restore.new_project_id else {
                        self.cleaned(
                            &restore,
                            Some("no scratch project to delete".into()),
                            now_ms,
                        )?;
                        continue;
                    };
                    RestoreStep {
                        request: gitlab.delete_project_request(project_id),
                        restore,
                        gitlab,
                        purpose: Purpose::Delete,
                    }
                }
                crate::store::RestoreState::Finished | crate::store::RestoreState::Failed => {
                    continue
                }
            };
            steps.push(step);
        }
        self.report.subrequests += steps.len() as u32;
        Ok(steps)
    }

    /// Records the answer to a step.
    pub fn handle(
        &mut self,
        step: RestoreStep,
        answer: HttpResult,
        now_ms: u64,
    ) -> Result<(), StoreError> {
        let restore = &step.restore;
        let answer = match answer {
            Ok(answer) => answer,
            Err(e) => {
                // A drill being cleaned up keeps its outcome as its error.
                let error = if restore.state == crate::store::RestoreState::Cleaning {
                    restore.error.clone()
                } else {
                    Some(format!("GitLab did not answer: {e}"))
                };
                return self.later(restore, now_ms + ms(FAILURE_RETRY), error);
            }
        };
        let retry = |e: GitLabError| -> (u64, Option<String>) {
            let wait = match &e {
                GitLabError::RateLimited { retry_after } => *retry_after,
                _ => FAILURE_RETRY,
            };
            (now_ms + ms(wait), Some(e.to_string()))
        };
        match step.purpose {
            Purpose::Lookup => match step.gitlab.read_import_status(&answer) {
                // A project with an import at the target's path since: the lost answer's.
                Ok(state) if state.status != ImportStatus::None => {
                    self.store.update_restore(restore.id, &RestoreUpdate::Answered)?;
                    self.store.update_restore(
                        restore.id,
                        &RestoreUpdate::Importing {
                            new_project_id: state.project_id,
                            web_url: self.web_url(restore),
                            due_ms: now_ms,
                        },
                    )
                }
                Ok(_) => self.fail(
                    restore,
                    format!(
                        "{} is another project's path (one not imported): GitLab refuses a taken path",
                        restore.target()
                    ),
                    now_ms,
                ),
                // No project there: GitLab did not take the import; it is sent again.
                Err(GitLabError::ProjectGone) => {
                    self.store.update_restore(restore.id, &RestoreUpdate::Answered)?;
                    self.later(restore, now_ms, restore.error.clone())
                }
                Err(e) => {
                    let (due, error) = retry(e);
                    self.later(restore, due, error)
                }
            },
            Purpose::Import => {
                let read = step.gitlab.read_remote_import(&answer);
                // After a 5xx or a page that is no API answer, GitLab may still have made the
                // project (a proxy timed out before it answered): it is looked up first.
                let definite = !matches!(
                    read,
                    ImportAnswer::Retry(GitLabError::Unavailable(_) | GitLabError::BadAnswer(_))
                );
                if definite {
                    self.store.update_restore(restore.id, &RestoreUpdate::Answered)?;
                }
                match read {
                ImportAnswer::Accepted {
                    project_id,
                    web_url,
                } => {
                    let web_url = if web_url.is_empty() {
                        self.web_url(restore)
                    } else {
                        web_url
                    };
                    self.store.update_restore(
                        restore.id,
                        &RestoreUpdate::Importing {
                            new_project_id: project_id,
                            web_url,
                            due_ms: now_ms + ms(next_import_check(Duration::ZERO)),
                        },
                    )
                }
                ImportAnswer::Refused(reason) => self.fail(restore, reason, now_ms),
                ImportAnswer::Retry(e) => {
                    // Turned away by the limit (other imports of the user count too), the
                    // import waits without using one of its tries.
                    if matches!(e, GitLabError::RateLimited { .. }) {
                        self.store
                            .update_restore(restore.id, &RestoreUpdate::RateLimited)?;
                    }
                    let (due, error) = retry(e);
                    self.later(restore, due, error)
                }
            }
            },
            Purpose::Check => match step.gitlab.read_import_status(&answer) {
                Ok(state) => match state.status {
                    ImportStatus::Finished if restore.drill => {
                        self.drill_ended(restore, None, now_ms)
                    }
                    ImportStatus::Finished => {
                        self.store.update_restore(
                            restore.id,
                            &RestoreUpdate::Finished { at_ms: now_ms },
                        )?;
                        self.report.events.push(Event::RestoreFinished {
                            restore: restore.id,
                            project: restore.project_path.clone(),
                            target: restore.target(),
                            new_project_id: restore.new_project_id.unwrap_or_default(),
                            web_url: restore.web_url.clone().unwrap_or_default(),
                        });
                        Ok(())
                    }
                    ImportStatus::Failed => {
                        let reason = state
                            .error
                            .unwrap_or_else(|| "GitLab's import failed and gave no reason".into());
                        self.fail(restore, format!("GitLab's import failed: {reason}"), now_ms)
                    }
                    ImportStatus::None | ImportStatus::Scheduled | ImportStatus::Started => {
                        let age = now_ms.saturating_sub(restore.sent_ms.unwrap_or(now_ms));
                        let wait = next_import_check(Duration::from_millis(age));
                        self.later(restore, now_ms + ms(wait), None)
                    }
                },
                Err(GitLabError::ProjectGone) => self.fail(
                    restore,
                    format!(
                        "the new project {} is gone (404) before its import ended",
                        restore.target()
                    ),
                    now_ms,
                ),
                Err(e) => {
                    let (due, error) = retry(e);
                    self.later(restore, due, error)
                }
            },
            Purpose::Delete => match step.gitlab.read_delete(&answer) {
                Ok(()) => self.cleaned(restore, None, now_ms),
                Err(ImportAnswer::Refused(reason)) => self.cleaned(
                    restore,
                    Some(format!("the scratch project was not deleted: {reason}")),
                    now_ms,
                ),
                Err(ImportAnswer::Retry(e)) => {
                    let (due, _) = retry(e);
                    // The drill's own error stays: only its due time moves.
                    self.later(restore, due, restore.error.clone())
                }
                Err(ImportAnswer::Accepted { .. }) => self.cleaned(restore, None, now_ms),
            },
        }
    }

    /// The new project's page: GitLab's base and the target's path (the import's answer
    /// does not carry it).
    fn web_url(&self, restore: &RestoreRow) -> String {
        RunSettings::from_json(&restore.settings)
            .ok()
            .and_then(|settings| settings.gitlab_url.join(&restore.target()).ok())
            .map(String::from)
            .unwrap_or_default()
    }

    /// Ends the restores' part of the invocation: when the next is due, and what they wrote
    /// counted against the day's allowance (as a request of its own: the safe side).
    pub fn finish(mut self, now_ms: u64) -> Result<RestoresReport, StoreError> {
        self.report.wake_at_ms = self.store.next_restore_due()?;
        let rows = self.store.rows_written() - self.rows_at_begin;
        if rows > 0 {
            // The usage read with the tick's facts (nothing else writes it meanwhile).
            let mut usage = match self.usage.take() {
                Some(usage) => usage,
                None => {
                    let meta = self.store.meta(&[MetaKey::DailyUsage])?;
                    Usage::read(meta.text(MetaKey::DailyUsage)?.as_deref(), now_ms)?
                }
            };
            usage.record(self.store, self.config, rows + 1)?;
        }
        Ok(self.report)
    }
}

/// What the archive route does with a request for restore `id`'s archive.
#[derive(Debug, PartialEq, Eq)]
pub enum ArchiveAccess {
    /// Send this (a `HEAD` or `GET` of the object, signed) and stream its answer back.
    Open(HttpRequest),
    /// Answer this status, with a reason that names no secret.
    Refused(u16, &'static str),
}

/// Opens restore `id`'s archive for `method` (`HEAD` or `GET`) when `presented` is its
/// capability, the restore is going and has not expired.
pub fn archive_request<S: Sql>(
    store: &Store<S>,
    config: &Config,
    id: u64,
    presented: &str,
    method: Method,
    now_ms: u64,
) -> Result<ArchiveAccess, StoreError> {
    let not_found = ArchiveAccess::Refused(404, "no such archive");
    let Some(restore) = store.restore(id)? else {
        return Ok(not_found);
    };
    let Some(digest) = restore.capability.as_deref() else {
        return Ok(not_found);
    };
    if !capability_matches(presented, digest) {
        return Ok(not_found);
    }
    let importing = matches!(
        restore.state,
        crate::store::RestoreState::Requested | crate::store::RestoreState::Importing
    );
    if !importing || now_ms >= restore.expires_ms {
        return Ok(ArchiveAccess::Refused(
            410,
            "this restore has ended: its archive URL no longer opens",
        ));
    }
    let Ok(settings) = RunSettings::from_json(&restore.settings) else {
        return Ok(ArchiveAccess::Refused(
            500,
            "the restore's settings cannot be read",
        ));
    };
    let Some(region) = settings.region() else {
        return Ok(ArchiveAccess::Refused(
            503,
            "the bucket's region is not known",
        ));
    };
    let signer = Signer {
        credentials: &config.credentials,
        region,
        now: system_time(now_ms),
    };
    let url = settings.bucket.object_url(region, &restore.key);
    Ok(match signer.signed_request(method, &url, None) {
        Ok(request) => ArchiveAccess::Open(request),
        Err(_) => ArchiveAccess::Refused(500, "the archive request could not be signed"),
    })
}
