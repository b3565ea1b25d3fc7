//! A run's projects: claims, answers, checks, outcomes, the manifest's entries, and each
//! project's last backup.

use super::{
    column, Backup, ClaimedProject, ManifestEntry, ProjectState, Remaining, Row, RunRow, Sql,
    Store, StoreError,
};

impl<S: Sql> Store<S> {
    /// Puts projects left `exporting` by a tick that died back in line.
    pub fn requeue_interrupted(&self, run_id: u64) -> Result<u64, StoreError> {
        let rows = self.rows(
            // Through the index: an UPDATE of `state` filtered on `state` itself makes SQLite
            // walk the run's primary key instead (a scan of the run, seen with `cargo xtask bench`).
            "UPDATE projects SET state = 'pending' WHERE run_id = ? AND project_id IN (
                 SELECT project_id FROM projects WHERE run_id = ? AND state = 'exporting')
             RETURNING project_id",
            &[run_id.into(), run_id.into()],
        )?;
        Ok(rows.len() as u64)
    }

    /// Claims the next pending project that is due: new ones by id, then retries as they come
    /// due. (The engine logs the request in the rate window in the same synchronous step.)
    pub fn claim_next(
        &self,
        run_id: u64,
        now_ms: u64,
    ) -> Result<Option<ClaimedProject>, StoreError> {
        self.rows(
            &format!(
                "UPDATE projects SET state = 'exporting'
                 WHERE run_id = ? AND project_id = (
                     SELECT project_id FROM projects WHERE run_id = ? AND state = 'pending' AND due_ms <= ?
                     ORDER BY due_ms, project_id LIMIT 1)
                 RETURNING {}",
                ClaimedProject::COLUMNS
            ),
            &[run_id.into(), run_id.into(), now_ms.into()],
        )?
        .first()
        .map(ClaimedProject::read)
        .transpose()
    }

    /// GitLab accepted an export: the project awaits its proof, first checked at `check_at_ms`.
    pub fn record_exported(
        &self,
        run_id: u64,
        project_id: u64,
        now_ms: u64,
        check_at_ms: u64,
    ) -> Result<(), StoreError> {
        // The run counts it (trigger `count_exported`) at its first accepted export.
        self.rows(
            "UPDATE projects SET state = 'exported', attempts = attempts + 1, exported_ms = ?, due_ms = ?,
                 unanswered = 0
             WHERE run_id = ? AND project_id = ?",
            &[now_ms.into(), check_at_ms.into(), run_id.into(), project_id.into()],
        )?;
        Ok(())
    }

    /// The exported project whose check is most overdue, after `after` (`(due_ms, project_id)`
    /// of the one this tick checked last; `(0, 0)` at first), and its due time. Nothing is
    /// written: every outcome of the check moves the project (verified, failed, pending or
    /// due later), and a tick that dies before it leaves the check due for the next one.
    pub fn next_check(
        &self,
        run_id: u64,
        now_ms: u64,
        after: (u64, u64),
    ) -> Result<Option<(ClaimedProject, u64)>, StoreError> {
        self.rows(
            &format!(
                "SELECT {}, due_ms FROM projects
                 WHERE run_id = ? AND state = 'exported' AND due_ms <= ?
                     AND (due_ms, project_id) > (?, ?)
                 ORDER BY due_ms, project_id LIMIT 1",
                ClaimedProject::COLUMNS
            ),
            &[run_id.into(), now_ms.into(), after.0.into(), after.1.into()],
        )?
        .first()
        .map(|row| Ok((ClaimedProject::read(row)?, column(row, 4)?.as_u64()?)))
        .transpose()
    }

    /// Sets when a project is next looked at (pending: exported; exported: checked).
    pub fn reschedule(&self, run_id: u64, project_id: u64, due_ms: u64) -> Result<(), StoreError> {
        self.rows(
            "UPDATE projects SET due_ms = ? WHERE run_id = ? AND project_id = ?",
            &[due_ms.into(), run_id.into(), project_id.into()],
        )?;
        Ok(())
    }

    /// The backup is proven: the object is in the bucket with `size` bytes (the run counts it:
    /// trigger `count_outcome`).
    pub fn record_verified(
        &self,
        run_id: u64,
        project_id: u64,
        size: u64,
    ) -> Result<(), StoreError> {
        self.rows(
            "UPDATE projects SET state = 'verified', size = ?, error = NULL WHERE run_id = ? AND project_id = ?",
            &[size.into(), run_id.into(), project_id.into()],
        )?;
        Ok(())
    }

    /// An attempt failed: back in line at `retry_at_ms`, or, without one, failed for good.
    pub fn record_failure(
        &self,
        run_id: u64,
        project_id: u64,
        reason: &str,
        retry_at_ms: Option<u64>,
    ) -> Result<(), StoreError> {
        match retry_at_ms {
            Some(due) => {
                self.rows(
                    "UPDATE projects SET state = 'pending', due_ms = ?, error = ? WHERE run_id = ? AND project_id = ?",
                    &[due.into(), reason.into(), run_id.into(), project_id.into()],
                )?;
                Ok(())
            }
            None => {
                // The run counts it: trigger `count_outcome`.
                self.rows(
                    "UPDATE projects SET state = 'failed', error = ? WHERE run_id = ? AND project_id = ?",
                    &[reason.into(), run_id.into(), project_id.into()],
                )?;
                Ok(())
            }
        }
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
            "UPDATE projects SET state = 'pending', due_ms = ?, unanswered = unanswered + 1,
                 attempts = attempts + ((unanswered + 1) % ? = 0)
             WHERE run_id = ? AND project_id = ? RETURNING unanswered, attempts",
            &[
                due_ms.into(),
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

    /// Puts a claimed project back in line, keeping its place (the export is to be tried again
    /// later without counting an attempt).
    pub fn release_project(&self, run_id: u64, project_id: u64) -> Result<(), StoreError> {
        self.rows(
            "UPDATE projects SET state = 'pending' WHERE run_id = ? AND project_id = ?",
            &[run_id.into(), project_id.into()],
        )?;
        Ok(())
    }

    /// What the run's projects still wait for, and the run with the counters its projects'
    /// outcomes keep, in one statement (the run by key, each other part a search of the
    /// `projects_due` index). `slack_ms`: how far after the first check due the last one
    /// [`Remaining::exported_due_last`] looks.
    pub fn remaining(&self, run_id: u64, slack_ms: u64) -> Result<(Remaining, RunRow), StoreError> {
        let rows = self.rows(
            &format!(
                "SELECT
                     (SELECT due_ms FROM projects WHERE run_id = ? AND state = 'pending'
                      ORDER BY due_ms LIMIT 1),
                     EXISTS (SELECT 1 FROM projects WHERE run_id = ? AND state = 'exporting'),
                     (SELECT due_ms FROM projects WHERE run_id = ? AND state = 'exported'
                      ORDER BY due_ms LIMIT 1),
                     (SELECT due_ms FROM projects WHERE run_id = ? AND state = 'exported'
                          AND due_ms <= (SELECT due_ms FROM projects
                              WHERE run_id = ? AND state = 'exported' ORDER BY due_ms LIMIT 1) + ?
                      ORDER BY due_ms DESC LIMIT 1),
                     {}
                 FROM runs WHERE id = ?",
                RunRow::COLUMNS
            ),
            &[
                run_id.into(),
                run_id.into(),
                run_id.into(),
                run_id.into(),
                run_id.into(),
                slack_ms.into(),
                run_id.into(),
            ],
        )?;
        let row = rows
            .first()
            .ok_or_else(|| StoreError("the run is not in the store".into()))?;
        let left = Remaining {
            pending_due: column(row, 0)?.as_opt_u64()?,
            exporting: column(row, 1)?.as_u64()? != 0,
            exported_due: column(row, 2)?.as_opt_u64()?,
            exported_due_last: column(row, 3)?.as_opt_u64()?,
        };
        let run: Row = row[4..].to_vec();
        Ok((left, RunRow::read(&run)?))
    }

    /// Up to `limit` projects with a final outcome that no manifest part lists yet.
    pub fn manifest_entries(
        &self,
        run_id: u64,
        limit: u64,
    ) -> Result<Vec<ManifestEntry>, StoreError> {
        self.rows(
            // SQLite would rather walk the run's primary key (same order) than the partial index.
            "SELECT project_id, path, state, attempts, size, error
             FROM projects INDEXED BY projects_for_manifest
             WHERE run_id = ? AND manifest_part IS NULL AND state IN ('verified', 'failed')
             ORDER BY project_id LIMIT ?",
            &[run_id.into(), limit.into()],
        )?
        .iter()
        .map(|row| {
            Ok(ManifestEntry {
                project_id: column(row, 0)?.as_u64()?,
                path: column(row, 1)?.as_text()?,
                verified: ProjectState::parse(&column(row, 2)?.as_text()?)?
                    == ProjectState::Verified,
                attempts: column(row, 3)?.as_u64()?,
                size: column(row, 4)?.as_opt_u64()?,
                error: column(row, 5)?.as_opt_text()?,
            })
        })
        .collect()
    }

    /// A manifest part listing `project_ids` was written as part number `part`.
    pub fn record_manifest_part(
        &self,
        run_id: u64,
        part: u64,
        project_ids: &[u64],
    ) -> Result<RunRow, StoreError> {
        let ids = serde_json::to_string(project_ids)
            .map_err(|e| StoreError(format!("encoding project ids: {e}")))?;
        self.rows(
            "UPDATE projects SET manifest_part = ?
             WHERE run_id = ? AND project_id IN (SELECT value FROM json_each(?))",
            &[part.into(), run_id.into(), ids.into()],
        )?;
        self.run_returned(
            "UPDATE runs SET manifest_parts = manifest_parts + 1, manifest_waiting = manifest_waiting - ?
             WHERE id = ?",
            &[(project_ids.len() as u64).into(), run_id.into()],
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
            "INSERT INTO last_backups (project_id, path, key, run_id, at_ms, size) VALUES (?, ?, ?, ?, ?, ?)
             ON CONFLICT (project_id) DO UPDATE SET path = excluded.path, key = excluded.key,
                 run_id = excluded.run_id, at_ms = excluded.at_ms, size = excluded.size",
            &[
                backup.project_id.into(),
                backup.path.as_str().into(),
                backup.key.as_str().into(),
                backup.run_id.into(),
                backup.at_ms.into(),
                backup.size.into(),
            ],
        )?;
        Ok(())
    }

    /// The newest verified backups, newest first.
    pub fn recent_backups(&self, limit: u64) -> Result<Vec<Backup>, StoreError> {
        self.rows(
            "SELECT project_id, path, key, run_id, at_ms, size FROM last_backups ORDER BY at_ms DESC LIMIT ?",
            &[limit.into()],
        )?
        .iter()
        .map(|row| {
            Ok(Backup {
                project_id: column(row, 0)?.as_u64()?,
                path: column(row, 1)?.as_text()?,
                key: column(row, 2)?.as_text()?,
                run_id: column(row, 3)?.as_u64()?,
                at_ms: column(row, 4)?.as_u64()?,
                size: column(row, 5)?.as_u64()?,
            })
        })
        .collect()
    }
}
