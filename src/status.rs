//! What `GET /status` reports: the current or last run, the rate window, what the next tick
//! will do, the last error and the configuration's problems. Read-only, from the store; it
//! never holds a token, a secret or a presigned URL.

use serde::Serialize;

use crate::config::{Config, ConfigError, Problem, RunSettings};
use crate::engine::allowance::{Allowance, Usage};
use crate::engine::window::Window;
use crate::engine::{run_due, schedule_anchor, Timer};
use crate::s3::LearnedRegion;
use crate::store::{MetaKey, Phase, RestoreState, RunRow, Sql, Store, StoreError};
use crate::time::rfc3339;

/// Failures listed by `/status` at most (the manifest lists them all).
pub const FAILURES_SHOWN: u64 = 100;
/// Verified backups listed by `/status` at most, newest first.
pub const BACKUPS_SHOWN: u64 = 100;
/// Stale projects listed by `/status` at most.
pub const STALE_SHOWN: u64 = 50;
/// How many restores `/status` lists.
pub const RESTORES_SHOWN: u64 = 20;

#[derive(Debug, Serialize)]
pub struct Status {
    pub run: Option<RunStatus>,
    pub rate_window: WindowStatus,
    pub next_tick: Plan,
    pub last_error: Option<LastError>,
    /// The newest verified backups, newest first.
    pub last_backups: Vec<BackupStatus>,
    /// The newest restores, newest first.
    pub restores: Vec<RestoreStatus>,
    /// How the restore drills went; `None` without `RESTORE_DRILL_NAMESPACE`.
    pub drills: Option<DrillsStatus>,
    /// `AWS_REGION`, or the region the bucket named when asked.
    pub bucket_region: Option<String>,
    pub config_problems: Vec<Problem>,
    /// Settings changed while the current run is going: it finishes with those it started
    /// with, and the new ones apply from the next run.
    pub settings_changed: Option<SettingsChanged>,
    /// The projects of the latest finished run whose newest verified backup is older than
    /// `STALE_AFTER_DAYS`, or that have none.
    pub stale: Option<StaleStatus>,
}

/// Projects no backup keeps current (`STALE_AFTER_DAYS`).
#[derive(Debug, Serialize)]
pub struct StaleStatus {
    pub after_days: u64,
    /// The run whose projects these are.
    pub run: u64,
    pub count: u64,
    /// The oldest first, at most [`STALE_SHOWN`].
    pub projects: Vec<StaleProjectStatus>,
}

#[derive(Debug, Serialize)]
pub struct StaleProjectStatus {
    pub project_id: u64,
    pub path: String,
    /// When its newest backup was verified; `None`: never backed up.
    pub last_backup: Option<String>,
    /// Whole days since then (`None`: never backed up).
    pub age_days: Option<u64>,
    pub reason: String,
}

#[derive(Debug, Serialize, PartialEq, Eq)]
pub struct SettingsChanged {
    pub run: u64,
    /// The settings whose value is not the run's, by name (their values are not shown).
    pub settings: Vec<&'static str>,
    pub message: String,
}

impl SettingsChanged {
    /// What changed in `config` since `run` started, if it is going and kept its settings.
    fn of(run: &RunRow, config: &Config) -> Result<Option<SettingsChanged>, StoreError> {
        let Some(json) = run
            .settings
            .as_deref()
            .filter(|_| run.phase != Phase::Finished)
        else {
            return Ok(None);
        };
        let settings = RunSettings::from_json(json)
            .map_err(StoreError)?
            .changed_in(config);
        if settings.is_empty() {
            return Ok(None);
        }
        let message = format!(
            "{} changed since run {} started: it finishes with the settings it started with, and the new ones apply from the next run",
            settings.join(", "),
            run.id
        );
        Ok(Some(SettingsChanged {
            run: run.id,
            settings,
            message,
        }))
    }
}

#[derive(Debug, Serialize)]
pub struct RunStatus {
    pub id: u64,
    pub started: String,
    pub finished: Option<String>,
    pub phase: Phase,
    /// Why the run stopped before any export, if it did.
    pub error: Option<String>,
    /// The key of the run's `summary.json` in the bucket, once written.
    pub summary_key: Option<String>,
    pub projects: Counts,
    /// When the operator cancelled the run, if they did.
    pub cancelled: Option<String>,
    pub group_errors: Vec<GroupError>,
    pub failures: Vec<Failure>,
}

#[derive(Debug, Serialize)]
pub struct Counts {
    pub listed: u64,
    pub exported: u64,
    pub verified: u64,
    pub failed: u64,
    /// Not exported: their newest backup still holds them (changed-only runs).
    pub unchanged: u64,
    /// Not final yet: waiting for export or for proof (in a cancelled run: `cancelled`).
    pub pending: u64,
    /// Without an outcome when the run was cancelled.
    pub cancelled: u64,
}

#[derive(Debug, Serialize)]
pub struct GroupError {
    pub group: String,
    pub reason: String,
}

#[derive(Debug, Serialize)]
pub struct Failure {
    pub project_id: u64,
    pub path: String,
    pub reason: String,
}

#[derive(Debug, Serialize)]
pub struct WindowStatus {
    pub limit: Option<u32>,
    pub used: u32,
    /// When the oldest request leaves the window.
    pub frees_at: Option<String>,
}

/// What the next tick will do.
#[derive(Debug, Serialize, PartialEq, Eq)]
#[serde(tag = "action", rename_all = "snake_case")]
pub enum Plan {
    /// Nothing until the configuration is fixed.
    FixConfig,
    /// No run is going; the next one starts when due.
    StartRun {
        due: bool,
    },
    /// Checking the token and the bucket.
    Preflight,
    ListProjects,
    Export {
        now: u32,
    },
    /// Every export is requested; checking that each landed.
    Verify,
    /// Every project has its outcome (or the run was cancelled): the manifest and summary.
    Record,
    /// A daily allowance of the Durable Object is nearly spent: nothing until `until`.
    Paused {
        allowance: Allowance,
        used: u64,
        limit: u64,
        until: String,
        reason: String,
    },
    Wait {
        until: String,
        /// The timer the wait is for.
        timer: Timer,
        reason: String,
    },
}

#[derive(Debug, Serialize)]
pub struct BackupStatus {
    pub project_id: u64,
    pub path: String,
    pub key: String,
    pub size: u64,
    pub at: String,
    /// Its project's last restore drill, if one ran.
    pub drill: Option<DrillStatus>,
}

/// A backup's last restore drill.
#[derive(Debug, Serialize)]
pub struct DrillStatus {
    pub key: String,
    pub at: String,
    /// `passed` or `failed`.
    pub result: &'static str,
    pub error: Option<String>,
}

/// A restore, as `/status` lists it (newest first).
#[derive(Debug, Serialize)]
pub struct RestoreStatus {
    pub id: u64,
    pub project: String,
    pub key: String,
    /// `<namespace>/<path>` of the new project.
    pub target: String,
    pub state: RestoreState,
    pub error: Option<String>,
    pub new_project_id: Option<u64>,
    pub web_url: Option<String>,
    pub requested: String,
    pub finished: Option<String>,
    /// A restore drill (its scratch project is deleted once the import ended).
    pub drill: bool,
}

/// The restore drills, when `RESTORE_DRILL_NAMESPACE` is set.
#[derive(Debug, Serialize)]
pub struct DrillsStatus {
    pub namespace: String,
    pub every_days: u64,
    /// Backups whose last drill passed, and failed.
    pub passed: u64,
    pub failed: u64,
    pub last_failure: Option<DrillFailureStatus>,
}

#[derive(Debug, Serialize)]
pub struct DrillFailureStatus {
    pub project: String,
    pub key: String,
    pub at: String,
    pub reason: String,
}

#[derive(Debug, Serialize)]
pub struct LastError {
    pub at: Option<String>,
    pub message: String,
}

impl RunStatus {
    /// `window`: the rate window with the exports under way, whose accepted exports the run's
    /// counter has not counted yet (their rows are written at their outcome).
    fn new<S: Sql>(
        store: &Store<S>,
        run: RunRow,
        window: &Window,
    ) -> Result<RunStatus, StoreError> {
        let group_errors = store
            .listing_errors(run.id)?
            .into_iter()
            .map(|(group, reason)| GroupError { group, reason })
            .collect();
        let failures = store
            .failures(run.id, FAILURES_SHOWN)?
            .into_iter()
            .map(|(project_id, path, reason)| Failure {
                project_id,
                path,
                reason,
            })
            .collect();
        let mut flights = window.flights.clone();
        flights.for_run(run.id);
        let open = run.without_outcome();
        let cancelled = run.cancelled_ms.is_some();
        Ok(RunStatus {
            id: run.id,
            started: rfc3339(run.started_ms),
            finished: run.finished_ms.map(rfc3339),
            phase: run.phase,
            error: run.error.clone(),
            summary_key: run.summary_key.clone(),
            projects: Counts {
                listed: run.listed,
                exported: run.exported
                    + if cancelled {
                        0
                    } else {
                        flights.exported_uncounted()
                    },
                verified: run.verified,
                failed: run.failed,
                unchanged: run.unchanged,
                pending: if cancelled { 0 } else { open },
                cancelled: if cancelled { open } else { 0 },
            },
            cancelled: run.cancelled_ms.map(rfc3339),
            group_errors,
            failures,
        })
    }
}

/// Builds the status from the store. `config` is the configuration as read now.
pub fn status<S: Sql>(
    store: &Store<S>,
    config: Result<&Config, &ConfigError>,
    now_ms: u64,
) -> Result<Status, StoreError> {
    let latest = store.latest_run()?;
    let meta = store.meta(&[
        MetaKey::ExportWindow,
        MetaKey::ExportsBlockedUntil,
        MetaKey::GitLabBackoffUntil,
        MetaKey::LastError,
        MetaKey::LastErrorAt,
        MetaKey::BucketRegion,
        MetaKey::LastScheduledStart,
        MetaKey::DailyUsage,
    ])?;
    let window = Window::read(meta.text(MetaKey::ExportWindow)?.as_deref())?;
    let used = window.used(now_ms);
    let frees_at = window.frees_at(now_ms);
    let limit = config.ok().map(|c| c.exports_per_minute);
    let waits = [
        (
            MetaKey::ExportsBlockedUntil,
            Timer::RetryAfter,
            "GitLab answered 429",
        ),
        (
            MetaKey::GitLabBackoffUntil,
            Timer::GitLabBackoff,
            "GitLab was unavailable or asked to wait",
        ),
    ];
    let mut wait = None;
    for (key, timer, reason) in waits {
        if let Some(until) = meta.u64(key)?.filter(|&until| until > now_ms) {
            wait = Some(Plan::Wait {
                until: rfc3339(until),
                timer,
                reason: reason.to_owned(),
            });
        }
    }
    let usage = Usage::read(meta.text(MetaKey::DailyUsage)?.as_deref(), now_ms)?;
    let paused = config.ok().and_then(|config| usage.pause(config));
    let next_tick = if let Some(pause) = paused {
        let what = match pause.allowance {
            Allowance::RowsWritten => "rows written",
            Allowance::Requests => "requests",
        };
        Plan::Paused {
                allowance: pause.allowance,
                used: pause.used,
                limit: pause.limit,
                until: rfc3339(pause.until_ms),
                reason: format!(
                    "the Durable Object's daily allowance of {what} is nearly spent ({} of {}); the run resumes after 00:00 UTC",
                    pause.used, pause.limit
                ),
            }
    } else {
        match (config, &latest) {
            (Err(_), _) => Plan::FixConfig,
            (Ok(config), None) => Plan::StartRun {
                due: run_due(config, None, now_ms),
            },
            (Ok(config), Some(run)) if run.phase == Phase::Finished => Plan::StartRun {
                due: run_due(
                    config,
                    schedule_anchor(
                        config,
                        Some(run.started_ms),
                        meta.u64(MetaKey::LastScheduledStart)?,
                    ),
                    now_ms,
                ),
            },
            (Ok(_), Some(_)) if wait.is_some() => wait.unwrap_or(Plan::ListProjects),
            (Ok(_), Some(run)) if run.phase == Phase::Preflight => Plan::Preflight,
            (Ok(_), Some(run)) if run.phase == Phase::Listing => Plan::ListProjects,
            (Ok(_), Some(run)) if run.phase == Phase::Verifying => Plan::Verify,
            (Ok(_), Some(run)) if run.phase == Phase::Recording => Plan::Record,
            (Ok(config), Some(_)) => {
                let free = config.exports_per_minute.saturating_sub(used);
                match (free, frees_at) {
                    (0, Some(at)) => Plan::Wait {
                        until: rfc3339(at),
                        timer: Timer::WindowFrees,
                        reason: "the export window is full".to_owned(),
                    },
                    _ => Plan::Export { now: free },
                }
            }
        }
    };
    let last_error = meta.text(MetaKey::LastError)?.map(|message| LastError {
        at: meta.u64(MetaKey::LastErrorAt).ok().flatten().map(rfc3339),
        message,
    });
    let bucket_region = config.ok().and_then(|c| {
        c.bucket.region.clone().or_else(|| {
            let learned = meta.text(MetaKey::BucketRegion).ok().flatten();
            LearnedRegion::read_for(learned.as_deref(), &c.bucket)
        })
    });
    let settings_changed = match (&latest, config) {
        (Some(run), Ok(config)) => SettingsChanged::of(run, config)?,
        _ => None,
    };
    let stale = match config {
        Ok(config) => stale(store, config, now_ms)?,
        Err(_) => None,
    };
    Ok(Status {
        run: latest
            .map(|run| RunStatus::new(store, run, &window))
            .transpose()?,
        last_backups: store
            .recent_backups_with_drills(BACKUPS_SHOWN)?
            .into_iter()
            .map(|(b, drill)| BackupStatus {
                project_id: b.project_id,
                path: b.path,
                key: b.key,
                size: b.size,
                at: rfc3339(b.at_ms),
                drill: drill.map(|d| DrillStatus {
                    key: d.key,
                    at: rfc3339(d.at_ms),
                    result: if d.error.is_none() {
                        "passed"
                    } else {
                        "failed"
                    },
                    error: d.error,
                }),
            })
            .collect(),
        restores: store
            .recent_restores(RESTORES_SHOWN)?
            .into_iter()
            .map(|r| RestoreStatus {
                target: r.target(),
                id: r.id,
                project: r.project_path,
                key: r.key,
                state: r.state,
                error: r.error,
                new_project_id: r.new_project_id,
                web_url: r.web_url,
                requested: rfc3339(r.requested_ms),
                finished: r.finished_ms.map(rfc3339),
                drill: r.drill,
            })
            .collect(),
        drills: match config.ok().and_then(|c| c.drills.as_ref()) {
            Some(drills) => {
                let counts = store.drills()?;
                Some(DrillsStatus {
                    namespace: drills.namespace.clone(),
                    every_days: drills.every.as_secs() / 86_400,
                    passed: counts.passed,
                    failed: counts.failed,
                    last_failure: counts.last_failure.map(|f| DrillFailureStatus {
                        project: f.path,
                        key: f.key,
                        at: rfc3339(f.at_ms),
                        reason: f.error,
                    }),
                })
            }
            None => None,
        },
        rate_window: WindowStatus {
            limit,
            used,
            frees_at: frees_at.map(rfc3339),
        },
        next_tick,
        last_error,
        bucket_region,
        config_problems: config.err().map(|e| e.problems.clone()).unwrap_or_default(),
        settings_changed,
        stale,
    })
}

/// The stale projects of the latest finished run, with their age and why.
fn stale<S: Sql>(
    store: &Store<S>,
    config: &Config,
    now_ms: u64,
) -> Result<Option<StaleStatus>, StoreError> {
    let Some(run) = store.latest_finished_run()? else {
        return Ok(None);
    };
    let after_days = config.stale_after.as_secs() / 86_400;
    let before_ms = now_ms.saturating_sub(crate::time::ms(config.stale_after));
    let (projects, count) = if run.failed == 0 && run.without_outcome() == 0 {
        (Vec::new(), 0)
    } else {
        store.stale_projects(run.id, before_ms, STALE_SHOWN)?
    };
    let projects = projects
        .into_iter()
        .map(|p| {
            let error = p
                .error
                .unwrap_or_else(|| "the run was cancelled before it was backed up".to_owned());
            let runs = match p.runs_failed {
                1 => "1 run".to_owned(),
                n => format!("{n} runs"),
            };
            let reason = match p.backed_up_ms {
                None => format!("never backed up: failed in the last {runs} (last error: {error})"),
                Some(_) => format!(
                    "not backed up by the {runs} since its last backup (last error: {error})"
                ),
            };
            StaleProjectStatus {
                project_id: p.project_id,
                path: p.path,
                last_backup: p.backed_up_ms.map(rfc3339),
                age_days: p
                    .backed_up_ms
                    .map(|at| now_ms.saturating_sub(at) / 86_400_000),
                reason,
            }
        })
        .collect();
    Ok(Some(StaleStatus {
        after_days,
        run: run.id,
        count,
        projects,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::host::HostSql;
    use crate::store::ClaimedProject;

    fn config_var(name: &str) -> Option<String> {
        match name {
            "GITLAB_TOKEN" => Some("glpat-secret-token"),
            "GROUPS_TO_BACKUP" => Some("7"),
            "AWS_S3_BUCKET" => Some("backups"),
            "AWS_ACCESS_KEY_ID" => Some("AKID"),
            "AWS_SECRET_ACCESS_KEY" => Some("s3-secret-key"),
            "AWS_REGION" => Some("eu-west-1"),
            _ => None,
        }
        .map(str::to_owned)
    }

    fn config() -> Config {
        Config::from_lookup(config_var).unwrap()
    }

    #[test]
    fn before_any_run_the_next_tick_starts_one() {
        let db = HostSql::in_memory();
        let store = Store::open(&db).unwrap();
        let config = config();
        let status = status(&store, Ok(&config), 1_000).unwrap();
        assert!(status.run.is_none());
        assert_eq!(status.next_tick, Plan::StartRun { due: true });
        assert_eq!(status.rate_window.limit, Some(6));
    }

    #[test]
    fn a_run_shows_its_counts_failures_and_group_errors() {
        let db = HostSql::in_memory();
        let store = Store::open(&db).unwrap();
        let run = store
            .start_run(0, &[("7".into(), "u".into()), ("gone".into(), "v".into())])
            .unwrap();
        store
            .record_only_page(run.id, 0, &[(1, "a/1"), (2, "a/2"), (3, "a/3")])
            .unwrap();
        store
            .record_listing_error(run.id, 1, "the group does not exist")
            .unwrap();
        let one = ClaimedProject {
            project_id: 1,
            path: "a/1".into(),
            attempts: 0,
            exported_ms: None,
        };
        store
            .record_failure(run.id, &one, "project gone", None)
            .unwrap();
        let status = status(&store, Ok(&config()), 20).unwrap();
        let shown = status.run.unwrap();
        assert_eq!(shown.phase, Phase::Preflight);
        assert_eq!(
            (
                shown.projects.listed,
                shown.projects.failed,
                shown.projects.pending
            ),
            (3, 1, 2)
        );
        assert_eq!(shown.failures[0].reason, "project gone");
        assert_eq!(shown.group_errors[0].group, "gone");
        assert_eq!(shown.started, "1970-01-01T00:00:00Z");
    }

    #[test]
    fn config_problems_are_shown_by_name_and_nothing_secret_is() {
        let db = HostSql::in_memory();
        let store = Store::open(&db).unwrap();
        let err = Config::from_lookup(|_| None).unwrap_err();
        let shown = serde_json::to_string(&status(&store, Err(&err), 0).unwrap()).unwrap();
        assert!(shown.contains("GITLAB_TOKEN"));
        assert!(shown.contains("fix_config"));
        let config = config();
        let shown = serde_json::to_string(&status(&store, Ok(&config), 0).unwrap()).unwrap();
        assert!(!shown.contains("glpat-secret-token") && !shown.contains("s3-secret-key"));
    }

    #[test]
    fn settings_changed_during_a_run_are_named_and_said_to_apply_from_the_next_run() {
        let db = HostSql::in_memory();
        let store = Store::open(&db).unwrap();
        let started = RunSettings::of(&config(), None).to_json();
        let run = store
            .start_run_with(0, &[("7".into(), "u".into())], Some(&started))
            .unwrap();
        assert_eq!(
            status(&store, Ok(&config()), 10).unwrap().settings_changed,
            None,
            "nothing changed"
        );
        let changed = Config::from_lookup(|name| match name {
            "GITLAB_URL" => Some("https://gitlab.elsewhere.example".to_owned()),
            "S3_PREFIX" => Some("new".to_owned()),
            other => config_var(other),
        })
        .unwrap();
        let shown = status(&store, Ok(&changed), 10).unwrap();
        let notice = shown
            .settings_changed
            .as_ref()
            .expect("the change is shown");
        assert_eq!(
            (notice.run, notice.settings.as_slice()),
            (run.id, &["GITLAB_URL", "S3_PREFIX"][..])
        );
        assert!(
            notice
                .message
                .starts_with("GITLAB_URL, S3_PREFIX changed since run 1 started")
                && notice.message.contains("apply from the next run"),
            "{}",
            notice.message
        );
        let json = serde_json::to_string(&shown).unwrap();
        assert!(
            !json.contains("elsewhere") && !json.contains("gitlab.com"),
            "no URL: {json}"
        );
        // Once the run is over, the settings are simply the next run's.
        store.stop_run(run.id, "done", 20).unwrap();
        assert_eq!(
            status(&store, Ok(&changed), 30).unwrap().settings_changed,
            None
        );
        // A run begun before runs kept their settings goes on with the current ones.
        let old = store.start_run(40, &[("7".into(), "u".into())]).unwrap();
        assert_eq!(old.settings, None);
        assert_eq!(
            status(&store, Ok(&changed), 50).unwrap().settings_changed,
            None
        );
    }

    #[test]
    fn a_full_window_makes_the_next_tick_wait_until_it_frees() {
        let db = HostSql::in_memory();
        let store = Store::open(&db).unwrap();
        let run = store.start_run(0, &[("7".into(), "u".into())]).unwrap();
        let projects: Vec<(u64, String)> = (1..=8).map(|i| (i, format!("a/{i}"))).collect();
        let refs: Vec<(u64, &str)> = projects.iter().map(|(i, p)| (*i, p.as_str())).collect();
        store.record_only_page(run.id, 0, &refs).unwrap();
        store.set_phase(run.id, Phase::Exporting, 0).unwrap();
        let mut window = Window::default();
        for _ in 0..6 {
            let id = window.request(30_000, 0);
            window.answered(id, 1_000, 1_000);
        }
        store
            .set_meta(MetaKey::ExportWindow, window.to_json().unwrap())
            .unwrap();
        let status = status(&store, Ok(&config()), 2_000).unwrap();
        assert_eq!(status.rate_window.used, 6);
        assert_eq!(
            status.next_tick,
            Plan::Wait {
                until: rfc3339(61_000),
                timer: Timer::WindowFrees,
                reason: "the export window is full".into()
            }
        );
    }

    #[test]
    fn after_a_manual_run_the_night_is_still_due_at_its_hour() {
        let nightly = Config::from_lookup(|name| match name {
            "BACKUP_START_HOUR_UTC" => Some("2".to_owned()),
            other => config_var(other),
        })
        .unwrap();
        let db = HostSql::in_memory();
        let store = Store::open(&db).unwrap();
        let hour = 3_600_000;
        let run = store.start_run(14 * hour, &[]).unwrap();
        store.set_meta(MetaKey::LastScheduledStart, 0u64).unwrap();
        store.stop_run(run.id, "done", 15 * hour).unwrap();
        let at_two = status(&store, Ok(&nightly), 26 * hour).unwrap();
        assert_eq!(at_two.next_tick, Plan::StartRun { due: true });
        let at_four = status(&store, Ok(&nightly), 28 * hour).unwrap();
        assert_eq!(at_four.next_tick, Plan::StartRun { due: false });
    }

    #[test]
    fn a_nearly_spent_daily_allowance_shows_as_a_pause_until_midnight() {
        let db = HostSql::in_memory();
        let store = Store::open(&db).unwrap();
        let day = 86_400_000;
        let usage = serde_json::json!({"day": 3, "rows_written": 99_800, "requests": 10});
        store
            .set_meta(MetaKey::DailyUsage, usage.to_string())
            .unwrap();
        let now = 3 * day + 1_000;
        match status(&store, Ok(&config()), now).unwrap().next_tick {
            Plan::Paused {
                allowance, until, ..
            } => {
                assert_eq!(allowance, Allowance::RowsWritten);
                assert_eq!(until, rfc3339(4 * day));
            }
            other => panic!("{other:?}"),
        }
        let tomorrow = status(&store, Ok(&config()), 4 * day + 1_000).unwrap();
        assert_eq!(tomorrow.next_tick, Plan::StartRun { due: true });
    }
}
