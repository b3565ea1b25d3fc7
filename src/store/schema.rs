//! The schema: its statements, its version, and the moves of data from older shapes.

use super::{MetaKey, Sql, Store, StoreError};

pub(super) const SCHEMA: &[&str] = &[
    "CREATE TABLE IF NOT EXISTS runs (
        id INTEGER PRIMARY KEY,
        started_ms INTEGER NOT NULL,
        finished_ms INTEGER,
        phase TEXT NOT NULL,
        listed INTEGER NOT NULL DEFAULT 0,
        exported INTEGER NOT NULL DEFAULT 0,
        verified INTEGER NOT NULL DEFAULT 0,
        failed INTEGER NOT NULL DEFAULT 0,
        error TEXT,
        manifest_waiting INTEGER NOT NULL DEFAULT 0,
        manifest_parts INTEGER NOT NULL DEFAULT 0,
        summary_key TEXT
    )",
    // One row per configured group of a run: where its listing stands. `next_url` is the next
    // page to read (NULL: done), `page` its number, `pages_total` the page count GitLab gave
    // (NULL above 10,000 projects, where it stops counting).
    "CREATE TABLE IF NOT EXISTS listings (
        run_id INTEGER NOT NULL,
        position INTEGER NOT NULL,
        group_ref TEXT NOT NULL,
        next_url TEXT,
        page INTEGER NOT NULL DEFAULT 1,
        pages_total INTEGER,
        error TEXT,
        PRIMARY KEY (run_id, position)
    ) WITHOUT ROWID",
    // One row per project of a run; the primary key makes a project reached through two
    // groups one row. `state`: pending → exporting → exported → verified, or failed; a failed
    // attempt goes back to pending until MAX_ATTEMPTS. `due_ms`: a pending project's earliest
    // export (retry backoff), an exported one's next check.
    "CREATE TABLE IF NOT EXISTS projects (
        run_id INTEGER NOT NULL,
        project_id INTEGER NOT NULL,
        path TEXT NOT NULL,
        state TEXT NOT NULL,
        attempts INTEGER NOT NULL DEFAULT 0,
        due_ms INTEGER NOT NULL DEFAULT 0,
        exported_ms INTEGER,
        size INTEGER,
        error TEXT,
        manifest_part INTEGER,
        unanswered INTEGER NOT NULL DEFAULT 0,
        PRIMARY KEY (run_id, project_id)
    ) WITHOUT ROWID",
    "CREATE INDEX IF NOT EXISTS projects_due ON projects (run_id, state, due_ms, project_id)",
    // Projects with their final outcome that no manifest part lists yet.
    "CREATE INDEX IF NOT EXISTS projects_for_manifest ON projects (run_id, project_id)
        WHERE manifest_part IS NULL AND state IN ('verified', 'failed')",
    // Small facts that outlive a run: the rate window's requests, the rate limit's block, the
    // backoff, the bucket's region, the last error. Values are integers or text.
    "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value NOT NULL) WITHOUT ROWID",
    // Each project's last good backup, kept when old runs are pruned.
    "CREATE TABLE IF NOT EXISTS last_backups (
        project_id INTEGER PRIMARY KEY,
        path TEXT NOT NULL,
        key TEXT NOT NULL,
        run_id INTEGER NOT NULL,
        at_ms INTEGER NOT NULL,
        size INTEGER NOT NULL
    )",
    "CREATE INDEX IF NOT EXISTS last_backups_by_time ON last_backups (at_ms)",
    // The run's counters follow its projects' states by construction, in the statement that
    // changes the project: a project counts as exported at its first accepted export, and once
    // when it reaches its final outcome (which also waits for its manifest part).
    "CREATE TRIGGER IF NOT EXISTS count_exported AFTER UPDATE OF exported_ms ON projects
        WHEN OLD.exported_ms IS NULL AND NEW.exported_ms IS NOT NULL
        BEGIN
            UPDATE runs SET exported = exported + 1 WHERE id = NEW.run_id;
        END",
    "CREATE TRIGGER IF NOT EXISTS count_outcome AFTER UPDATE OF state ON projects
        WHEN NEW.state IN ('verified', 'failed') AND OLD.state NOT IN ('verified', 'failed')
        BEGIN
            UPDATE runs SET verified = verified + (NEW.state = 'verified'),
                failed = failed + (NEW.state = 'failed'),
                manifest_waiting = manifest_waiting + 1
            WHERE id = NEW.run_id;
        END",
];

pub(super) fn schema_version() -> String {
    use sha2::{Digest, Sha256};
    let digest = Sha256::digest(SCHEMA.concat().as_bytes());
    digest.iter().take(8).map(|b| format!("{b:02x}")).collect()
}

impl<S: Sql> Store<S> {
    /// Stores from before the rate window moved into `meta` kept it in a table
    /// `export_log (id, at_ms)`: its requests join the window, so none of the last minute is
    /// forgotten, and the table goes.
    pub(super) fn migrate_export_log(&self) -> Result<(), StoreError> {
        let old = self.rows(
            "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'export_log'",
            &[],
        )?;
        if old.is_empty() {
            return Ok(());
        }
        self.rows(
            "INSERT INTO meta (key, value)
             SELECT ?, json_object('next', COALESCE(MAX(id), 0) + 1,
                                   'requests', json_group_array(json_array(id, at_ms)))
             FROM export_log WHERE id IS NOT NULL
             ON CONFLICT (key) DO NOTHING",
            &[MetaKey::ExportWindow.as_str().into()],
        )?;
        self.rows("DROP TABLE export_log", &[])?;
        Ok(())
    }
}
