//! The schema a new store is created with, and the rule that keeps deployed stores working.
//!
//! **Every schema change is a new migration step plus a fixture of the schema before it.**
//! A deployed store changes only through the steps of `store/migrations.rs` (`STEPS`: each
//! applied once, in order, in one transaction), never through these statements: `CREATE …
//! IF NOT EXISTS` adds no column to a table that exists. So a change here (a column, a table,
//! an index, a trigger) comes with a step that turns the previous schema into this one
//! (`ALTER TABLE … ADD COLUMN`, new objects, data moves), a dump of the previous schema with a
//! run in the middle in `store/fixtures/` named after its version, and `SCHEMA_DIGEST` set to
//! the new version and digest. `store::migration_tests` fails until all three are there: the
//! digest pins these statements to the last step, and every fixture, migrated, must have
//! exactly the shape of a new store.

/// The schema of a new store, at version `migrations::LATEST`.
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
        summary_key TEXT,
        manifest_after INTEGER NOT NULL DEFAULT 0,
        cancelled_ms INTEGER,
        settings TEXT,
        unchanged INTEGER NOT NULL DEFAULT 0
    )",
    // One row per configured group of a run: where its listing stands. `next_url` is the next
    // page to read (NULL: done), `page` its number, `pages_total` the page count GitLab gave
    // (NULL above 10,000 projects, where it stops counting); `total` the projects the first
    // page of this pass over the pages announced, `relists` the passes before it (the group
    // changed under the listing).
    "CREATE TABLE IF NOT EXISTS listings (
        run_id INTEGER NOT NULL,
        position INTEGER NOT NULL,
        group_ref TEXT NOT NULL,
        next_url TEXT,
        page INTEGER NOT NULL DEFAULT 1,
        pages_total INTEGER,
        error TEXT,
        total INTEGER,
        relists INTEGER NOT NULL DEFAULT 0,
        PRIMARY KEY (run_id, position)
    ) WITHOUT ROWID",
    // One row per project of a run; the primary key makes a project reached through two
    // groups one row. `state`: pending → verified, or failed; a failed attempt goes back to
    // pending until MAX_ATTEMPTS. A row is written when it is listed and when it reaches an
    // outcome, rarely in between: a project's export under way (claimed, accepted, its checks)
    // is kept with the rate window in `meta` (`engine/flights.rs`). `due_ms`: 0 for a project
    // never tried (taken by id), else its next try (retry backoff, or behind the others).
    // `manifest_part` and `runs.manifest_waiting` are unused since version 9 (the manifest is
    // written by a walk of the run's projects at its end; dropping a column rewrites a table).
    // An `unchanged` project (changed-only runs) is written once, as listed, with the key and
    // date of the backup that still holds it (`kept_key`, `kept_ms`, and its `size`).
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
        kept_key TEXT,
        kept_ms INTEGER,
        PRIMARY KEY (run_id, project_id)
    ) WITHOUT ROWID",
    // Pending projects to try again, by when: only projects whose attempt failed have an
    // entry (an index entry is a row written).
    "CREATE INDEX IF NOT EXISTS projects_queued ON projects (run_id, due_ms, project_id)
        WHERE state = 'pending' AND due_ms > 0",
    // Small facts that outlive a run: the rate window's requests, the rate limit's block, the
    // backoff, the bucket's region, the last error. Values are integers or text.
    "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value NOT NULL) WITHOUT ROWID",
    // Each project's last good backup, kept when old runs are pruned, and its last restore
    // drill: the key drilled, when, and why it failed (NULL: passed). `at_ms`: when it was
    // verified; `requested_ms`: a moment before its export was asked for, the start of its run (what
    // changed-only runs compare a project's activity with; NULL: unknown, exported again).
    "CREATE TABLE IF NOT EXISTS last_backups (
        project_id INTEGER PRIMARY KEY,
        path TEXT NOT NULL,
        key TEXT NOT NULL,
        run_id INTEGER NOT NULL,
        at_ms INTEGER NOT NULL,
        size INTEGER NOT NULL,
        drill_key TEXT,
        drilled_ms INTEGER,
        drill_error TEXT,
        requested_ms INTEGER
    )",
    "CREATE INDEX IF NOT EXISTS last_backups_by_time ON last_backups (at_ms)",
    // One row per restore asked for (`POST /restore`, or a restore drill: `drill` 1): what is imported from which backup
    // into which namespace and path, and how far it got. `capability` is the SHA-256 of the
    // archive URL's capability (made anew each time the import is sent; the URL itself is
    // never kept), `origin` the worker's origin that URL is on, `settings` the settings it was
    // asked with (GitLab's origin, the bucket). `due_ms`: when it is looked at next;
    // `unanswered`: its last import request got no answer (GitLab may have taken it).
    "CREATE TABLE IF NOT EXISTS restores (
        id INTEGER PRIMARY KEY,
        requested_ms INTEGER NOT NULL,
        project_id INTEGER NOT NULL,
        project_path TEXT NOT NULL,
        key TEXT NOT NULL,
        namespace TEXT NOT NULL,
        path TEXT NOT NULL,
        name TEXT,
        state TEXT NOT NULL,
        capability TEXT,
        origin TEXT NOT NULL,
        expires_ms INTEGER NOT NULL,
        due_ms INTEGER NOT NULL,
        tries INTEGER NOT NULL DEFAULT 0,
        sent_ms INTEGER,
        new_project_id INTEGER,
        web_url TEXT,
        error TEXT,
        finished_ms INTEGER,
        settings TEXT NOT NULL,
        drill INTEGER NOT NULL DEFAULT 0,
        unanswered INTEGER NOT NULL DEFAULT 0
    )",
    // The restores still going, by when they are due: a tick reads a few of them.
    "CREATE INDEX IF NOT EXISTS restores_open ON restores (due_ms, id)
        WHERE state IN ('requested', 'importing', 'cleaning')",
    // The run's counters follow its projects' states by construction, in the statement that
    // changes the project: a project counts as exported once its row records an accepted export
    // of it, and once when it reaches its final outcome.
    // One trigger, so an outcome is one row written for the run, not two.
    "CREATE TRIGGER IF NOT EXISTS count_outcome AFTER UPDATE OF state, exported_ms ON projects
        WHEN (NEW.state IN ('verified', 'failed') AND OLD.state NOT IN ('verified', 'failed'))
            OR (OLD.exported_ms IS NULL AND NEW.exported_ms IS NOT NULL)
        BEGIN
            UPDATE runs SET
                exported = exported + (OLD.exported_ms IS NULL AND NEW.exported_ms IS NOT NULL),
                verified = verified
                    + (NEW.state = 'verified' AND OLD.state NOT IN ('verified', 'failed')),
                failed = failed
                    + (NEW.state = 'failed' AND OLD.state NOT IN ('verified', 'failed'))
            WHERE id = NEW.run_id;
        END",
];

/// The version [`SCHEMA`] is at, and the digest of its statements
/// ([`schema_digest`]): changing the statements without a new step fails
/// `store::migration_tests`.
#[cfg(test)]
pub(super) const SCHEMA_DIGEST: (u64, &str) = (11, "acc68385ab8903be");

/// The first 8 bytes of the SHA-256 of the statements, in hex (what stores before numbered
/// versions kept as `schema_version`).
#[cfg(test)]
pub(super) fn schema_digest() -> String {
    use sha2::{Digest, Sha256};
    let digest = Sha256::digest(SCHEMA.concat().as_bytes());
    digest.iter().take(8).map(|b| format!("{b:02x}")).collect()
}
