//! Runs and their listings: start, phase, counters, pruning, and each group's cursor.

use super::{
    column, ListedPage, ListingPass, ListingRow, Phase, RecordedPage, RunRow, Sql, Store,
    StoreError, Value,
};

impl<S: Sql> Store<S> {
    fn run_where(&self, condition: &str, params: &[Value]) -> Result<Option<RunRow>, StoreError> {
        let query = format!(
            "SELECT {} FROM runs WHERE {condition} ORDER BY id DESC LIMIT 1",
            RunRow::COLUMNS
        );
        self.rows(&query, params)?
            .first()
            .map(RunRow::read)
            .transpose()
    }

    /// The latest run that finished and listed projects.
    pub fn latest_finished_run(&self) -> Result<Option<RunRow>, StoreError> {
        self.run_where("phase = 'finished' AND listed > 0", &[])
    }

    /// The run that has not finished, if any.
    pub fn active_run(&self) -> Result<Option<RunRow>, StoreError> {
        // Runs never overlap: only the newest can be going.
        self.run_where(
            "id = (SELECT MAX(id) FROM runs) AND phase != 'finished'",
            &[],
        )
    }

    /// The most recent run, finished or not.
    pub fn latest_run(&self) -> Result<Option<RunRow>, StoreError> {
        self.run_where("id = (SELECT MAX(id) FROM runs)", &[])
    }

    /// Starts a run as runs were started before they kept their settings (tests).
    #[cfg(test)]
    pub fn start_run(
        &self,
        now_ms: u64,
        groups: &[(String, String)],
    ) -> Result<RunRow, StoreError> {
        self.start_run_with(now_ms, groups, None)
    }

    /// Starts a run that will list `groups`, each from its first page URL, with the settings
    /// it keeps to its end.
    pub fn start_run_with(
        &self,
        now_ms: u64,
        groups: &[(String, String)],
        settings: Option<&str>,
    ) -> Result<RunRow, StoreError> {
        let rows = self.rows(
            &format!(
                "INSERT INTO runs (started_ms, phase, settings) VALUES (?, 'preflight', ?) RETURNING {}",
                RunRow::COLUMNS
            ),
            &[now_ms.into(), settings.into()],
        )?;
        let run = rows
            .first()
            .map(RunRow::read)
            .transpose()?
            .ok_or_else(|| StoreError("INSERT … RETURNING gave no row".into()))?;
        for (position, (group, first_page)) in groups.iter().enumerate() {
            self.rows(
                "INSERT INTO listings (run_id, position, group_ref, next_url) VALUES (?, ?, ?, ?)",
                &[
                    run.id.into(),
                    (position as u64).into(),
                    group.as_str().into(),
                    first_page.as_str().into(),
                ],
            )?;
        }
        Ok(run)
    }

    /// Moves the run to `phase`; the run as it now stands.
    pub fn set_phase(&self, run_id: u64, phase: Phase, now_ms: u64) -> Result<RunRow, StoreError> {
        let finished: Option<u64> = (phase == Phase::Finished).then_some(now_ms);
        self.run_returned(
            "UPDATE runs SET phase = ?, finished_ms = ? WHERE id = ?",
            &[phase.as_str().into(), finished.into(), run_id.into()],
        )
    }

    /// Runs an `UPDATE runs … WHERE id = ?` and reads the run back from its `RETURNING`.
    pub(super) fn run_returned(
        &self,
        update: &str,
        params: &[Value],
    ) -> Result<RunRow, StoreError> {
        self.rows(&format!("{update} RETURNING {}", RunRow::COLUMNS), params)?
            .first()
            .map(RunRow::read)
            .transpose()?
            .ok_or_else(|| StoreError("the run to update is not in the store".into()))
    }

    /// The run's settings changed (the region its bucket named, learned or forgotten).
    pub fn set_run_settings(&self, run_id: u64, settings: &str) -> Result<RunRow, StoreError> {
        self.run_returned(
            "UPDATE runs SET settings = ? WHERE id = ?",
            &[settings.into(), run_id.into()],
        )
    }

    /// The run's summary was written: the run is finished.
    pub fn record_summary(
        &self,
        run_id: u64,
        key: &str,
        now_ms: u64,
    ) -> Result<RunRow, StoreError> {
        self.run_returned(
            "UPDATE runs SET summary_key = ?, phase = 'finished', finished_ms = ? WHERE id = ?",
            &[key.into(), now_ms.into(), run_id.into()],
        )
    }

    /// Ends a run early with the reason (a failed preflight).
    pub fn stop_run(&self, run_id: u64, reason: &str, now_ms: u64) -> Result<RunRow, StoreError> {
        self.run_returned(
            "UPDATE runs SET phase = 'finished', finished_ms = ?, error = ? WHERE id = ?",
            &[now_ms.into(), reason.into(), run_id.into()],
        )
    }

    /// The operator ends the run: it goes straight to writing its record, in which every
    /// project without an outcome is `cancelled`, and groups not fully listed say so. `None`
    /// when the run is finished (or cancelled) already.
    pub fn cancel_run(&self, run_id: u64, now_ms: u64) -> Result<Option<RunRow>, StoreError> {
        let run = self
            .rows(
                &format!(
                    "UPDATE runs SET cancelled_ms = ?, phase = 'recording'
                     WHERE id = ? AND phase != 'finished' AND cancelled_ms IS NULL
                     RETURNING {}",
                    RunRow::COLUMNS
                ),
                &[now_ms.into(), run_id.into()],
            )?
            .first()
            .map(RunRow::read)
            .transpose()?;
        if run.is_some() {
            self.rows(
                "UPDATE listings SET next_url = NULL,
                     error = 'the run was cancelled before this group was fully listed'
                 WHERE run_id = ? AND next_url IS NOT NULL",
                &[run_id.into()],
            )?;
        }
        Ok(run)
    }

    /// The newest runs, newest first.
    pub fn recent_runs(&self, limit: u64) -> Result<Vec<RunRow>, StoreError> {
        self.rows(
            &format!(
                "SELECT {} FROM runs ORDER BY id DESC LIMIT ?",
                RunRow::COLUMNS
            ),
            &[limit.into()],
        )?
        .iter()
        .map(RunRow::read)
        .collect()
    }

    /// Deletes, below the run `newest`, the projects and listings of all but the newest
    /// `keep_detailed` runs (at most `batch` projects at a time) and all but the newest
    /// `keep_runs` runs. Returns whether nothing is left to delete for this `newest`.
    pub fn prune(
        &self,
        newest: u64,
        keep_detailed: u64,
        keep_runs: u64,
        batch: u64,
        forget_backups_before_ms: u64,
    ) -> Result<bool, StoreError> {
        // Run ids are consecutive (rows are only ever deleted from the oldest end), so the
        // oldest run kept is found from the newest without walking the table.
        let oldest_kept = |keep: u64| newest.checked_sub(keep.saturating_sub(1));
        let mut projects = 0;
        if let Some(detailed_from) = oldest_kept(keep_detailed) {
            projects = self
                .rows(
                    "DELETE FROM projects WHERE (run_id, project_id) IN (
                         SELECT run_id, project_id FROM projects WHERE run_id < ? LIMIT ?)
                     RETURNING 1",
                    &[detailed_from.into(), batch.into()],
                )?
                .len() as u64;
            self.rows(
                "DELETE FROM listings WHERE run_id < ?",
                &[detailed_from.into()],
            )?;
        }
        if let Some(runs_from) = oldest_kept(keep_runs) {
            self.rows("DELETE FROM runs WHERE id < ?", &[runs_from.into()])?;
        }
        // A project's last backup is refreshed by every run that backs it up: one this old
        // belongs to a project deleted (or failing) for that long, and is forgotten.
        let backups = self
            .rows(
                "DELETE FROM last_backups WHERE project_id IN (
                     SELECT project_id FROM last_backups WHERE at_ms < ? ORDER BY at_ms LIMIT ?)
                 RETURNING 1",
                &[forget_backups_before_ms.into(), batch.into()],
            )?
            .len() as u64;
        Ok(projects < batch && backups < batch)
    }

    /// Up to `limit` groups of the run whose listing is not complete, in configured order.
    pub fn open_listings(&self, run_id: u64, limit: u64) -> Result<Vec<ListingRow>, StoreError> {
        self.rows(
            "SELECT position, group_ref, next_url, page, pages_total FROM listings
             WHERE run_id = ? AND next_url IS NOT NULL ORDER BY position LIMIT ?",
            &[run_id.into(), limit.into()],
        )?
        .iter()
        .map(|row| {
            Ok(ListingRow {
                position: column(row, 0)?.as_u64()?,
                group: column(row, 1)?.as_text()?,
                next_url: column(row, 2)?.as_text()?,
                page: column(row, 3)?.as_u64()?,
                pages_total: column(row, 4)?.as_opt_u64()?,
            })
        })
        .collect()
    }

    /// Records one listed page: its projects join the run (once each, so a page read twice
    /// changes nothing), and the group's cursor moves past it if it stood on it (pages read
    /// ahead, in parallel, move it only once the pages before them are in). The first page's
    /// `X-Total` is what the pass over the group announced.
    pub fn record_page(
        &self,
        run_id: u64,
        listed: &ListedPage<'_>,
    ) -> Result<RecordedPage, StoreError> {
        // One statement for the page: its projects go in as one JSON array of [id, path, the
        // moment their backup must have been asked for after to hold them], compared with each
        // project's last backup. An unchanged project is written once, with its outcome. A
        // project renamed or moved since (no event in GitLab) is exported again under its path.
        let page: Vec<(u64, &str, Option<u64>)> = listed
            .projects
            .iter()
            .map(|p| (p.id, p.path, p.held_if_requested_after_ms))
            .collect();
        let page = serde_json::to_string(&page)
            .map_err(|e| StoreError(format!("encoding a page of projects: {e}")))?;
        let added = self.rows(
            "INSERT INTO projects (run_id, project_id, path, state, kept_key, kept_ms, size)
             SELECT ?, value ->> 0, value ->> 1, IIF(held, 'unchanged', 'pending'),
                 IIF(held, key, NULL), IIF(held, at_ms, NULL), IIF(held, size, NULL)
             FROM (SELECT p.value, b.key, b.at_ms, b.size,
                       COALESCE(b.requested_ms > p.value ->> 2 AND b.run_id >= ?
                           AND b.path = p.value ->> 1, 0) AS held
                   FROM json_each(?) AS p
                   LEFT JOIN last_backups AS b ON b.project_id = p.value ->> 0)
             WHERE true
             ON CONFLICT DO NOTHING RETURNING state",
            &[run_id.into(), listed.backups_from_run.into(), page.into()],
        )?;
        let unchanged = added
            .iter()
            .filter(|row| matches!(row.first(), Some(Value::Text(s)) if s == "unchanged"))
            .count() as u64;
        let added = added.len() as u64;
        let run = if added > 0 {
            Some(self.run_returned(
                "UPDATE runs SET listed = listed + ?, unchanged = unchanged + ? WHERE id = ?",
                &[added.into(), unchanged.into(), run_id.into()],
            )?)
        } else {
            None
        };
        let (next_url, next_page) = match listed.next {
            Some((url, page)) => (Some(url), page),
            None => (None, listed.page + 1),
        };
        let first = listed.page == 1;
        let cursor = self
            .rows(
                "UPDATE listings SET next_url = ?, page = ?, pages_total = COALESCE(?, pages_total),
                     total = CASE WHEN ? THEN ? ELSE total END
                 WHERE run_id = ? AND position = ? AND page = ? AND next_url IS NOT NULL
                 RETURNING total, relists",
                &[
                    next_url.into(),
                    next_page.into(),
                    listed.pages_total.into(),
                    u64::from(first).into(),
                    listed.total.into(),
                    run_id.into(),
                    listed.position.into(),
                    listed.page.into(),
                ],
            )?
            .first()
            .map(|row| {
                Ok::<_, StoreError>(ListingPass {
                    announced: column(row, 0)?.as_opt_u64()?,
                    relists: column(row, 1)?.as_u64()?,
                })
            })
            .transpose()?;
        Ok(RecordedPage {
            added,
            unchanged,
            run,
            cursor,
        })
    }

    /// Lists a group again from its first page (`first_url`), in a new pass: what its pages
    /// recorded stays (each project once).
    pub fn relist(&self, run_id: u64, position: u64, first_url: &str) -> Result<(), StoreError> {
        self.rows(
            "UPDATE listings SET next_url = ?, page = 1, total = NULL, relists = relists + 1
             WHERE run_id = ? AND position = ?",
            &[first_url.into(), run_id.into(), position.into()],
        )?;
        Ok(())
    }

    /// Records why a group's listing may miss projects, without ending it: the rest of its
    /// pass is read unchecked, and the run reports the group with `error`.
    pub fn record_listing_doubt(
        &self,
        run_id: u64,
        position: u64,
        error: &str,
    ) -> Result<(), StoreError> {
        self.rows(
            "UPDATE listings SET total = NULL, error = ? WHERE run_id = ? AND position = ?",
            &[error.into(), run_id.into(), position.into()],
        )?;
        Ok(())
    }

    /// Records a group's one and only page (tests).
    #[cfg(test)]
    pub fn record_only_page(
        &self,
        run_id: u64,
        position: u64,
        projects: &[(u64, &str)],
    ) -> Result<u64, StoreError> {
        let projects = super::ListedProject::all_changed(projects);
        self.record_page(
            run_id,
            &ListedPage {
                position,
                page: 1,
                projects: &projects,
                backups_from_run: 0,
                next: None,
                pages_total: Some(1),
                total: Some(projects.len() as u64),
            },
        )
        .map(|recorded| recorded.added)
    }

    /// Ends a group's listing with an error that the run reports.
    pub fn record_listing_error(
        &self,
        run_id: u64,
        position: u64,
        error: &str,
    ) -> Result<(), StoreError> {
        self.rows(
            "UPDATE listings SET next_url = NULL, error = ? WHERE run_id = ? AND position = ?",
            &[error.into(), run_id.into(), position.into()],
        )?;
        Ok(())
    }

    /// Groups of the run whose listing failed, with the reason.
    pub fn listing_errors(&self, run_id: u64) -> Result<Vec<(String, String)>, StoreError> {
        self.rows(
            "SELECT group_ref, error FROM listings WHERE run_id = ? AND error IS NOT NULL ORDER BY position",
            &[run_id.into()],
        )?
        .iter()
        .map(|row| Ok((column(row, 0)?.as_text()?, column(row, 1)?.as_text()?)))
        .collect()
    }
}
