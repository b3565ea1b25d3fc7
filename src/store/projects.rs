//! A run's projects: claims, answers, checks, outcomes, the manifest's entries, and each
//! project's last backup.

use super::{
    column, Backup, Claimable, ClaimedProject, Claims, Drill, ManifestEntry, Outcome, ProjectState,
    Row, RunRow, Sql, Store, StoreError, Value,
};

impl<S: Sql> Store<S> {
    /// The next pending project to export that is due and not under way: new ones by id, then
    /// retries as they come due. Nothing is written: the claim is the export's entry in the
    /// exports under way, stored with the rate window (`engine/flights.rs`).
    pub fn claim_next(
        &self,
        run_id: u64,
        now_ms: u64,
        claims: Claims<'_>,
    ) -> Result<Option<Claimable>, StoreError> {
        // A new project is the next by id (a walk of the primary key from the last one taken),
        // a retry the first due in `projects_queued`.
        let rows = self.rows(
            &format!(
                "SELECT * FROM (SELECT {columns}, 1 FROM projects
                     WHERE run_id = ? AND project_id > ? AND state = 'pending' AND due_ms = 0
                         AND project_id NOT IN (SELECT value FROM json_each(?))
                     ORDER BY project_id LIMIT 1)
                 UNION ALL
                 SELECT * FROM (SELECT {columns}, 0 FROM projects INDEXED BY projects_queued
                     WHERE run_id = ? AND state = 'pending' AND due_ms > 0 AND due_ms <= ?
                         AND project_id NOT IN (SELECT value FROM json_each(?))
                     ORDER BY due_ms, project_id LIMIT 1)
                 LIMIT 1",
                columns = ClaimedProject::COLUMNS
            ),
            &[
                run_id.into(),
                claims.new_after.into(),
                claims.under_way.into(),
                run_id.into(),
                now_ms.into(),
                claims.under_way.into(),
            ],
        )?;
        rows.first()
            .map(|row| {
                Ok(Claimable {
                    project: ClaimedProject::read(row)?,
                    new: column(row, 4)?.as_u64()? == 1,
                })
            })
            .transpose()
    }

    /// When the first pending project that is not under way comes due for its export (0: a
    /// new one is waiting), and the run with the counters its projects' outcomes keep, in one
    /// statement (the run by key, a new project by a short walk of the primary key, a retry
    /// from `projects_queued`).
    pub fn remaining(
        &self,
        run_id: u64,
        claims: Claims<'_>,
    ) -> Result<(Option<u64>, RunRow), StoreError> {
        let rows = self.rows(
            &format!(
                "SELECT
                     COALESCE(
                         (SELECT 0 FROM projects
                          WHERE run_id = ? AND project_id > ? AND state = 'pending' AND due_ms = 0
                              AND project_id NOT IN (SELECT value FROM json_each(?))
                          ORDER BY project_id LIMIT 1),
                         (SELECT due_ms FROM projects INDEXED BY projects_queued
                          WHERE run_id = ? AND state = 'pending' AND due_ms > 0
                              AND project_id NOT IN (SELECT value FROM json_each(?))
                          ORDER BY due_ms LIMIT 1)),
                     {}
                 FROM runs WHERE id = ?",
                RunRow::COLUMNS
            ),
            &[
                run_id.into(),
                claims.new_after.into(),
                claims.under_way.into(),
                run_id.into(),
                claims.under_way.into(),
                run_id.into(),
            ],
        )?;
        let row = rows
            .first()
            .ok_or_else(|| StoreError("the run is not in the store".into()))?;
        let pending_due = column(row, 0)?.as_opt_u64()?;
        let run: Row = row[1..].to_vec();
        Ok((pending_due, RunRow::read(&run)?))
    }

    /// The backup is proven: the object is in the bucket with `size` bytes, from the attempt
    /// `project` describes (the run counts it: trigger `count_outcome`).
    /// Returns false when the project already had its outcome (a tick that died before it
    /// stored the end of the export under way) and nothing changed.
    pub fn record_verified(
        &self,
        run_id: u64,
        project: &ClaimedProject,
        size: u64,
    ) -> Result<bool, StoreError> {
        let rows = self.rows(
            "UPDATE projects SET state = 'verified', size = ?, error = NULL, attempts = ?,
                 exported_ms = ?, unanswered = 0
             WHERE run_id = ? AND project_id = ? AND state = 'pending' RETURNING 1",
            &[
                size.into(),
                project.attempts.into(),
                project.exported_ms.into(),
                run_id.into(),
                project.project_id.into(),
            ],
        )?;
        Ok(!rows.is_empty())
    }

    /// An attempt failed: back in line at `retry_at_ms`, or, without one, failed for good.
    /// The row keeps the attempts `project` used and when the last was accepted. Returns false
    /// when the project already had its outcome and nothing changed.
    pub fn record_failure(
        &self,
        run_id: u64,
        project: &ClaimedProject,
        reason: &str,
        retry_at_ms: Option<u64>,
    ) -> Result<bool, StoreError> {
        // The run counts a final failure: trigger `count_outcome`.
        let (state, due) = match retry_at_ms {
            Some(due) => ("pending", due.max(1)),
            None => ("failed", 0),
        };
        let rows = self.rows(
            // An accepted attempt ends a series of export requests without an answer.
            "UPDATE projects SET state = ?, due_ms = ?, error = ?, attempts = ?,
                 exported_ms = COALESCE(?, exported_ms),
                 unanswered = IIF(? IS NULL, unanswered, 0)
             WHERE run_id = ? AND project_id = ? AND state = 'pending' RETURNING 1",
            &[
                state.into(),
                due.into(),
                reason.into(),
                project.attempts.into(),
                project.exported_ms.into(),
                project.exported_ms.into(),
                run_id.into(),
                project.project_id.into(),
            ],
        )?;
        Ok(!rows.is_empty())
    }

    /// An export request got no usable answer (5xx, timeout, network): the project goes back in
    /// line behind the others until `due_ms`, and every `per_attempt`-th time in a row this
    /// also uses one of its attempts. Returns (no-answers in a row, attempts used).
    pub fn export_unanswered(
        &self,
        run_id: u64,
        project_id: u64,
        due_ms: u64,
        per_attempt: u64,
    ) -> Result<(u64, u64), StoreError> {
        let rows = self.rows(
            "UPDATE projects SET due_ms = ?, unanswered = unanswered + 1,
                 attempts = attempts + ((unanswered + 1) % ? = 0)
             WHERE run_id = ? AND project_id = ? RETURNING unanswered, attempts",
            &[
                due_ms.max(1).into(),
                per_attempt.into(),
                run_id.into(),
                project_id.into(),
            ],
        )?;
        let row = rows
            .first()
            .ok_or_else(|| StoreError(format!("project {project_id} is not in run {run_id}")))?;
        Ok((column(row, 0)?.as_u64()?, column(row, 1)?.as_u64()?))
    }

    /// Up to `limit` projects of the run after `after`, by id, with their outcome: the manifest's
    /// walk, once every project has one (in a cancelled run, those without are `cancelled`).
    pub fn manifest_entries(
        &self,
        run_id: u64,
        after: u64,
        limit: u64,
    ) -> Result<Vec<ManifestEntry>, StoreError> {
        self.rows(
            "SELECT project_id, path, state, attempts, size, error, kept_key, kept_ms FROM projects
             WHERE run_id = ? AND project_id > ? ORDER BY project_id LIMIT ?",
            &[run_id.into(), after.into(), limit.into()],
        )?
        .iter()
        .map(|row| {
            let outcome = match ProjectState::parse(&column(row, 2)?.as_text()?)? {
                ProjectState::Verified => Outcome::Verified,
                ProjectState::Failed => Outcome::Failed,
                ProjectState::Unchanged => Outcome::Unchanged,
                ProjectState::Pending => Outcome::Cancelled,
            };
            let kept = match (
                column(row, 6)?.as_opt_text()?,
                column(row, 7)?.as_opt_u64()?,
            ) {
                (Some(key), Some(at_ms)) => Some((key, at_ms)),
                _ => None,
            };
            Ok(ManifestEntry {
                project_id: column(row, 0)?.as_u64()?,
                path: column(row, 1)?.as_text()?,
                outcome,
                attempts: column(row, 3)?.as_u64()?,
                size: column(row, 4)?.as_opt_u64()?,
                error: column(row, 5)?.as_opt_text()?,
                kept,
            })
        })
        .collect()
    }

    /// A manifest part listing the run's projects up to `last_project_id` was written.
    pub fn record_manifest_part(
        &self,
        run_id: u64,
        last_project_id: u64,
    ) -> Result<RunRow, StoreError> {
        self.run_returned(
            "UPDATE runs SET manifest_parts = manifest_parts + 1, manifest_after = ? WHERE id = ?",
            &[last_project_id.into(), run_id.into()],
        )
    }

    /// Outcomes of a run's projects that failed, for reports.
    pub fn failures(
        &self,
        run_id: u64,
        limit: u64,
    ) -> Result<Vec<(u64, String, String)>, StoreError> {
        self.rows(
            "SELECT project_id, path, error FROM projects WHERE run_id = ? AND state = 'failed'
             ORDER BY project_id LIMIT ?",
            &[run_id.into(), limit.into()],
        )?
        .iter()
        .map(|row| {
            Ok((
                column(row, 0)?.as_u64()?,
                column(row, 1)?.as_text()?,
                column(row, 2)?.as_opt_text()?.unwrap_or_default(),
            ))
        })
        .collect()
    }

    /// Remembers a project's newest verified backup.
    pub fn record_backup(&self, backup: &Backup) -> Result<(), StoreError> {
        self.rows(
            "INSERT INTO last_backups (project_id, path, key, run_id, at_ms, size, requested_ms)
             VALUES (?, ?, ?, ?, ?, ?, ?)
             ON CONFLICT (project_id) DO UPDATE SET path = excluded.path, key = excluded.key,
                 run_id = excluded.run_id, at_ms = excluded.at_ms, size = excluded.size,
                 requested_ms = excluded.requested_ms",
            &[
                backup.project_id.into(),
                backup.path.as_str().into(),
                backup.key.as_str().into(),
                backup.run_id.into(),
                backup.at_ms.into(),
                backup.size.into(),
                backup.requested_ms.into(),
            ],
        )?;
        Ok(())
    }

    /// The newest verified backups, newest first.
    pub fn recent_backups(&self, limit: u64) -> Result<Vec<Backup>, StoreError> {
        self.rows(
            "SELECT project_id, path, key, run_id, at_ms, size, requested_ms FROM last_backups ORDER BY at_ms DESC LIMIT ?",
            &[limit.into()],
        )?
        .iter()
        .map(read_backup)
        .collect()
    }

    /// The newest verified backups, newest first, each with its last restore drill.
    pub fn recent_backups_with_drills(
        &self,
        limit: u64,
    ) -> Result<Vec<(Backup, Option<Drill>)>, StoreError> {
        self.rows(
            "SELECT project_id, path, key, run_id, at_ms, size, requested_ms, drill_key, drilled_ms,
                 drill_error
             FROM last_backups ORDER BY at_ms DESC LIMIT ?",
            &[limit.into()],
        )?
        .iter()
        .map(|row| {
            let drill = match column(row, 8)?.as_opt_u64()? {
                Some(at_ms) => Some(Drill {
                    key: column(row, 7)?.as_opt_text()?.unwrap_or_default(),
                    at_ms,
                    error: column(row, 9)?.as_opt_text()?,
                }),
                None => None,
            };
            Ok((read_backup(row)?, drill))
        })
        .collect()
    }

    /// A project's newest verified backup, by its id.
    pub fn last_backup_of(&self, project_id: u64) -> Result<Option<Backup>, StoreError> {
        self.backups_where("project_id = ?", project_id.into())
    }

    /// A project's newest verified backup, by its full path without regard to case. (No index
    /// serves this: restores are asked for rarely, and an index entry is a row written with
    /// every backup.)
    pub fn last_backup_at(&self, path: &str) -> Result<Option<Backup>, StoreError> {
        self.backups_where("path = ? COLLATE NOCASE", path.into())
    }

    fn backups_where(&self, condition: &str, param: Value) -> Result<Option<Backup>, StoreError> {
        self.rows(
            &format!(
                "SELECT project_id, path, key, run_id, at_ms, size, requested_ms FROM last_backups
                 WHERE {condition} ORDER BY at_ms DESC LIMIT 1"
            ),
            &[param],
        )?
        .first()
        .map(read_backup)
        .transpose()
    }
}

pub(super) fn read_backup(row: &Row) -> Result<Backup, StoreError> {
    Ok(Backup {
        project_id: column(row, 0)?.as_u64()?,
        path: column(row, 1)?.as_text()?,
        key: column(row, 2)?.as_text()?,
        run_id: column(row, 3)?.as_u64()?,
        at_ms: column(row, 4)?.as_u64()?,
        size: column(row, 5)?.as_u64()?,
        requested_ms: column(row, 6)?.as_opt_u64()?,
    })
}

/// A project of a finished run whose newest verified backup is older than the freshness
/// bound, or that has none.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StaleProject {
    pub project_id: u64,
    pub path: String,
    /// When its newest backup was verified (`None`: never).
    pub backed_up_ms: Option<u64>,
    /// The finished runs since that backup's run (or, never backed up, those it failed in
    /// that the store still details) that did not back it up.
    pub runs_failed: u64,
    /// Why the run did not back it up.
    pub error: Option<String>,
}

impl<S: Sql> Store<S> {
    /// The projects of `run_id` (a finished run) that failed or were cancelled, and whose newest
    /// backup was verified before `before_ms` or never, oldest backup first, at most `limit`, and how
    /// many there are. (A project the run backed up or found unchanged has a backup within its
    /// full-export cycle, which the freshness bound is longer than.)
    pub fn stale_projects(
        &self,
        run_id: u64,
        before_ms: u64,
        limit: u64,
    ) -> Result<(Vec<StaleProject>, u64), StoreError> {
        // The page first, then its counts: the runs looked up for the shown projects only.
        let stale = "FROM projects AS p LEFT JOIN last_backups AS b ON b.project_id = p.project_id
             WHERE p.run_id = ? AND p.state IN ('failed', 'pending')
                 AND (b.at_ms IS NULL OR b.at_ms < ?)";
        let rows = self.rows(
            &format!(
                "SELECT s.project_id, s.path, s.at_ms, s.error,
                     IIF(s.run_id IS NULL,
                         (SELECT COUNT(*) FROM runs AS r JOIN projects AS q
                              ON q.run_id = r.id AND q.project_id = s.project_id
                          WHERE r.id <= ? AND q.state IN ('failed', 'pending')),
                         (SELECT COUNT(*) FROM runs AS r
                          WHERE r.id > s.run_id AND r.id <= ? AND r.phase = 'finished'))
                 FROM (SELECT p.project_id, p.path, b.at_ms, b.run_id, p.error {stale}
                       ORDER BY COALESCE(b.at_ms, 0), p.project_id LIMIT ?) AS s"
            ),
            &[
                run_id.into(),
                run_id.into(),
                run_id.into(),
                before_ms.into(),
                limit.into(),
            ],
        )?;
        let total = self.rows(
            &format!("SELECT COUNT(*) {stale}"),
            &[run_id.into(), before_ms.into()],
        )?;
        let total = match total.first() {
            Some(row) => column(row, 0)?.as_u64()?,
            None => 0,
        };
        let stale = rows
            .iter()
            .map(|row| {
                Ok(StaleProject {
                    project_id: column(row, 0)?.as_u64()?,
                    path: column(row, 1)?.as_text()?,
                    backed_up_ms: column(row, 2)?.as_opt_u64()?,
                    error: column(row, 3)?.as_opt_text()?,
                    runs_failed: column(row, 4)?.as_u64()?,
                })
            })
            .collect::<Result<Vec<_>, StoreError>>()?;
        Ok((stale, total))
    }
}
