//! Restores: asked for, sent to GitLab, followed until they end (`engine/restores.rs` decides).
//! Old ended restores are forgotten as new ones come ([`RESTORES_KEPT`]), so every query reads
//! a few rows.

use super::{column, Backup, MetaKey, RestoreState, Row, Sql, Store, StoreError, Value};

/// How many restores are kept: a new one forgets the oldest ended ones beyond this.
pub const RESTORES_KEPT: u64 = 100;

/// A restore as it is asked for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NewRestore {
    pub project_id: u64,
    pub project_path: String,
    pub key: String,
    /// The target namespace's full path, and the new project's path and name in it.
    pub namespace: String,
    pub path: String,
    pub name: Option<String>,
    /// The worker's origin the archive URL is on.
    pub origin: String,
    /// After this, the archive URL no longer opens and the restore fails if not ended.
    pub expires_ms: u64,
    /// The settings it is asked with (`config::RunSettings`, as JSON).
    pub settings: String,
    /// A restore drill: its scratch project is deleted once the import ended.
    pub drill: bool,
}

/// A restore as stored.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct RestoreRow {
    pub id: u64,
    pub requested_ms: u64,
    pub project_id: u64,
    pub project_path: String,
    pub key: String,
    pub namespace: String,
    pub path: String,
    pub name: Option<String>,
    pub state: RestoreState,
    /// The SHA-256 of the archive URL's capability, once the import was sent.
    #[serde(skip)]
    pub capability: Option<String>,
    #[serde(skip)]
    pub origin: String,
    pub expires_ms: u64,
    pub due_ms: u64,
    /// Import requests sent so far.
    pub tries: u64,
    pub sent_ms: Option<u64>,
    pub new_project_id: Option<u64>,
    pub web_url: Option<String>,
    pub error: Option<String>,
    pub finished_ms: Option<u64>,
    #[serde(skip)]
    pub settings: String,
    pub drill: bool,
    /// Its last import request got no answer: GitLab may have created the project.
    pub unanswered: bool,
}

impl RestoreRow {
    const COLUMNS: &'static str = "id, requested_ms, project_id, project_path, key, namespace, \
        path, name, state, capability, origin, expires_ms, due_ms, tries, sent_ms, \
        new_project_id, web_url, error, finished_ms, settings, drill, unanswered";

    /// `<namespace>/<path>`: the new project's full path.
    pub fn target(&self) -> String {
        format!("{}/{}", self.namespace, self.path)
    }

    /// Whether it is still going (not finished, not failed).
    pub fn is_open(&self) -> bool {
        matches!(
            self.state,
            RestoreState::Requested | RestoreState::Importing | RestoreState::Cleaning
        )
    }

    fn read(row: &Row) -> Result<RestoreRow, StoreError> {
        Ok(RestoreRow {
            id: column(row, 0)?.as_u64()?,
            requested_ms: column(row, 1)?.as_u64()?,
            project_id: column(row, 2)?.as_u64()?,
            project_path: column(row, 3)?.as_text()?,
            key: column(row, 4)?.as_text()?,
            namespace: column(row, 5)?.as_text()?,
            path: column(row, 6)?.as_text()?,
            name: column(row, 7)?.as_opt_text()?,
            state: RestoreState::parse(&column(row, 8)?.as_text()?)?,
            capability: column(row, 9)?.as_opt_text()?,
            origin: column(row, 10)?.as_text()?,
            expires_ms: column(row, 11)?.as_u64()?,
            due_ms: column(row, 12)?.as_u64()?,
            tries: column(row, 13)?.as_u64()?,
            sent_ms: column(row, 14)?.as_opt_u64()?,
            new_project_id: column(row, 15)?.as_opt_u64()?,
            web_url: column(row, 16)?.as_opt_text()?,
            error: column(row, 17)?.as_opt_text()?,
            finished_ms: column(row, 18)?.as_opt_u64()?,
            settings: column(row, 19)?.as_text()?,
            drill: column(row, 20)?.as_u64()? != 0,
            unanswered: column(row, 21)?.as_u64()? != 0,
        })
    }
}

/// What changes in a restore.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RestoreUpdate {
    /// Its import request goes out now (written before it does), with a new capability's
    /// digest; it is looked at again at `due_ms` if no answer is stored by then.
    Sent {
        at_ms: u64,
        capability: String,
        due_ms: u64,
    },
    /// GitLab answered its import request (whatever it said).
    Answered,
    /// GitLab's rate limit turned the import away (429): that try does not count.
    RateLimited,
    /// Nothing ended: looked at again at `due_ms`; `error` is what held it back, if anything.
    Later { due_ms: u64, error: Option<String> },
    /// GitLab created the project and imports it.
    Importing {
        new_project_id: u64,
        web_url: String,
        due_ms: u64,
    },
    /// A drill's import ended (`error`: why it failed): its scratch project is deleted next.
    Cleaning { error: Option<String>, due_ms: u64 },
    /// A drill's scratch project is deleted (or `kept`, why not): the drill ends as its import
    /// did.
    Cleaned { at_ms: u64, kept: Option<String> },
    /// GitLab says the import finished.
    Finished { at_ms: u64 },
    /// It failed, for this reason.
    Failed { reason: String, at_ms: u64 },
}

impl<S: Sql> Store<S> {
    /// Records a restore asked for at `now_ms`, due at once, and forgets the oldest ended
    /// restores beyond [`RESTORES_KEPT`].
    pub fn insert_restore(
        &self,
        restore: &NewRestore,
        now_ms: u64,
    ) -> Result<RestoreRow, StoreError> {
        let rows = self.rows(
            &format!(
                "INSERT INTO restores (requested_ms, project_id, project_path, key, namespace,
                     path, name, state, origin, expires_ms, due_ms, settings, drill)
                 VALUES (?, ?, ?, ?, ?, ?, ?, 'requested', ?, ?, ?, ?, ?)
                 RETURNING {}",
                RestoreRow::COLUMNS
            ),
            &[
                now_ms.into(),
                restore.project_id.into(),
                restore.project_path.as_str().into(),
                restore.key.as_str().into(),
                restore.namespace.as_str().into(),
                restore.path.as_str().into(),
                restore.name.as_deref().into(),
                restore.origin.as_str().into(),
                restore.expires_ms.into(),
                now_ms.into(),
                restore.settings.as_str().into(),
                u64::from(restore.drill).into(),
            ],
        )?;
        let row = rows
            .first()
            .ok_or_else(|| StoreError("the restore was not recorded".into()))?;
        let restore = RestoreRow::read(row)?;
        self.rows(
            "DELETE FROM restores WHERE state IN ('finished', 'failed') AND id <= ? - ?",
            &[restore.id.into(), RESTORES_KEPT.into()],
        )?;
        Ok(restore)
    }

    pub fn restore(&self, id: u64) -> Result<Option<RestoreRow>, StoreError> {
        self.rows(
            &format!("SELECT {} FROM restores WHERE id = ?", RestoreRow::COLUMNS),
            &[id.into()],
        )?
        .first()
        .map(RestoreRow::read)
        .transpose()
    }

    /// The restores still going that are due by `now_ms`, the most overdue first.
    pub fn due_restores(&self, now_ms: u64, limit: u64) -> Result<Vec<RestoreRow>, StoreError> {
        self.rows(
            &format!(
                "SELECT {} FROM restores INDEXED BY restores_open
                 WHERE state IN ('requested', 'importing', 'cleaning') AND due_ms <= ?
                 ORDER BY due_ms, id LIMIT ?",
                RestoreRow::COLUMNS
            ),
            &[now_ms.into(), limit.into()],
        )?
        .iter()
        .map(RestoreRow::read)
        .collect()
    }

    /// When the next restore still going is due, if one is.
    pub fn next_restore_due(&self) -> Result<Option<u64>, StoreError> {
        self.rows(
            "SELECT due_ms FROM restores INDEXED BY restores_open
             WHERE state IN ('requested', 'importing', 'cleaning') ORDER BY due_ms LIMIT 1",
            &[],
        )?
        .first()
        .map(|row| column(row, 0)?.as_u64())
        .transpose()
    }

    /// The newest restores, newest first.
    pub fn recent_restores(&self, limit: u64) -> Result<Vec<RestoreRow>, StoreError> {
        self.rows(
            &format!(
                "SELECT {} FROM restores ORDER BY id DESC LIMIT ?",
                RestoreRow::COLUMNS
            ),
            &[limit.into()],
        )?
        .iter()
        .map(RestoreRow::read)
        .collect()
    }

    /// The import requests sent since `since_ms` (GitLab's import rate limit counts them).
    pub fn imports_sent_since(&self, since_ms: u64) -> Result<u64, StoreError> {
        self.rows(
            "SELECT COUNT(*) FROM restores WHERE sent_ms >= ?",
            &[since_ms.into()],
        )?
        .first()
        .map_or(Ok(0), |row| column(row, 0)?.as_u64())
    }

    pub fn update_restore(&self, id: u64, update: &RestoreUpdate) -> Result<(), StoreError> {
        let (query, params): (&str, Vec<Value>) = match update {
            RestoreUpdate::Sent {
                at_ms,
                capability,
                due_ms,
            } => (
                "UPDATE restores SET sent_ms = ?, capability = ?, due_ms = ?, tries = tries + 1,
                     unanswered = 1
                 WHERE id = ?",
                vec![
                    (*at_ms).into(),
                    capability.as_str().into(),
                    (*due_ms).into(),
                ],
            ),
            RestoreUpdate::Answered => (
                "UPDATE restores SET unanswered = 0 WHERE id = ?",
                Vec::new(),
            ),
            RestoreUpdate::RateLimited => (
                "UPDATE restores SET tries = MAX(tries - 1, 0) WHERE id = ?",
                Vec::new(),
            ),
            RestoreUpdate::Later { due_ms, error } => (
                "UPDATE restores SET due_ms = ?, error = ? WHERE id = ?",
                vec![(*due_ms).into(), error.as_deref().into()],
            ),
            RestoreUpdate::Importing {
                new_project_id,
                web_url,
                due_ms,
            } => (
                "UPDATE restores SET state = 'importing', new_project_id = ?, web_url = ?,
                     due_ms = ?, error = NULL
                 WHERE id = ?",
                vec![
                    (*new_project_id).into(),
                    web_url.as_str().into(),
                    (*due_ms).into(),
                ],
            ),
            RestoreUpdate::Cleaning { error, due_ms } => (
                "UPDATE restores SET state = 'cleaning', error = ?, due_ms = ? WHERE id = ?",
                vec![error.as_deref().into(), (*due_ms).into()],
            ),
            RestoreUpdate::Cleaned { at_ms, kept } => (
                "UPDATE restores SET
                     state = IIF(error IS NULL, 'finished', 'failed'),
                     error = IIF(? IS NULL, error, COALESCE(error || '; ', '') || ?),
                     finished_ms = ?, due_ms = 0
                 WHERE id = ?",
                vec![
                    kept.as_deref().into(),
                    kept.as_deref().into(),
                    (*at_ms).into(),
                ],
            ),
            RestoreUpdate::Finished { at_ms } => (
                "UPDATE restores SET state = 'finished', error = NULL, finished_ms = ?, due_ms = 0
                 WHERE id = ?",
                vec![(*at_ms).into()],
            ),
            RestoreUpdate::Failed { reason, at_ms } => (
                "UPDATE restores SET state = 'failed', error = ?, finished_ms = ?, due_ms = 0
                 WHERE id = ?",
                vec![reason.as_str().into(), (*at_ms).into()],
            ),
        };
        let mut params = params;
        params.push(id.into());
        self.rows(query, &params)?;
        Ok(())
    }

    /// Whether a restore drill is still going.
    pub fn drill_going(&self) -> Result<bool, StoreError> {
        Ok(!self
            .rows(
                "SELECT id FROM restores INDEXED BY restores_open
                 WHERE state IN ('requested', 'importing', 'cleaning') AND drill = 1 LIMIT 1",
                &[],
            )?
            .is_empty())
    }

    /// The backup to drill next: the drills take the backups in turn by project id (each
    /// once before any again), after the last one drilled; a walk of the primary key.
    pub fn next_to_drill(&self) -> Result<Option<Backup>, StoreError> {
        let after = self.drill_tally()?.after;
        let next = |after: u64| -> Result<Option<Backup>, StoreError> {
            self.rows(
                "SELECT project_id, path, key, run_id, at_ms, size, requested_ms FROM last_backups
                 WHERE project_id > ? ORDER BY project_id LIMIT 1",
                &[after.into()],
            )?
            .first()
            .map(super::projects::read_backup)
            .transpose()
        };
        match next(after)? {
            Some(backup) => Ok(Some(backup)),
            None if after > 0 => next(0),
            None => Ok(None),
        }
    }

    /// Records a drill of `key` on its project's backup, passed (`error` `None`) or why not,
    /// and in the tally (`meta`): the turn moves past it, and the counts of backups whose
    /// last drill passed or failed follow it.
    pub fn record_drill(
        &self,
        project_id: u64,
        key: &str,
        at_ms: u64,
        error: Option<&str>,
    ) -> Result<(), StoreError> {
        let before = self.rows(
            "SELECT drilled_ms, drill_error, path FROM last_backups WHERE project_id = ?",
            &[project_id.into()],
        )?;
        let mut tally = self.drill_tally()?;
        if let Some(row) = before.first() {
            if column(row, 0)?.as_opt_u64()?.is_some() {
                match column(row, 1)?.as_opt_text()? {
                    None => tally.drills.passed = tally.drills.passed.saturating_sub(1),
                    Some(_) => tally.drills.failed = tally.drills.failed.saturating_sub(1),
                }
            }
            self.rows(
                "UPDATE last_backups SET drill_key = ?, drilled_ms = ?, drill_error = ?
                 WHERE project_id = ?",
                &[key.into(), at_ms.into(), error.into(), project_id.into()],
            )?;
            match error {
                None => tally.drills.passed += 1,
                Some(error) => {
                    tally.drills.failed += 1;
                    tally.drills.last_failure = Some(DrillFailure {
                        path: column(row, 2)?.as_text()?,
                        key: key.to_owned(),
                        at_ms,
                        error: error.to_owned(),
                    });
                }
            }
        }
        tally.after = project_id;
        let json = serde_json::to_string(&tally)
            .map_err(|e| StoreError(format!("encoding the drills' tally: {e}")))?;
        self.set_meta(MetaKey::DrillTally, json)
    }

    /// How the drills went: backups whose last drill passed, failed, and the latest failure.
    pub fn drills(&self) -> Result<Drills, StoreError> {
        Ok(self.drill_tally()?.drills)
    }

    fn drill_tally(&self) -> Result<DrillTally, StoreError> {
        match self
            .meta(&[MetaKey::DrillTally])?
            .text(MetaKey::DrillTally)?
        {
            None => Ok(DrillTally::default()),
            Some(json) => serde_json::from_str(&json)
                .map_err(|e| StoreError(format!("the drills' tally is not readable: {e}"))),
        }
    }
}

/// The drills as `meta` keeps them: whose turn is next, and the counts.
#[derive(Default, serde::Serialize, serde::Deserialize)]
struct DrillTally {
    /// The project drilled last: the next drill takes the one after it.
    after: u64,
    #[serde(flatten)]
    drills: Drills,
}

/// How the restore drills went, over the backups' last drills.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Drills {
    pub passed: u64,
    pub failed: u64,
    pub last_failure: Option<DrillFailure>,
}

#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct DrillFailure {
    pub path: String,
    pub key: String,
    pub at_ms: u64,
    pub error: String,
}
