//! Versioned migrations: how a deployed store reaches this worker's schema (the rule is in
//! `schema.rs`).
//!
//! A store keeps its schema's version number in `meta` ([`MetaKey::SchemaNumber`]). Each
//! version is a schema that has been on `main`, named by the commit that brought it:
//!
//! | version | commit | schema |
//! |---|---|---|
//! | 1 | 9d1a234 | the foundation: `export_log`, `meta.value` an INTEGER |
//! | 2 | 98946c1 | `meta` holds text too; `last_backups` |
//! | 3 | 7af68e0 | proof of landing: the runs' and projects' verification columns |
//! | 4 | 1bcd68b | `listings.page`, `listings.pages_total` |
//! | 5 | b64f772 | no index `runs_active` |
//! | 6 | 4fbd802 | `projects.unanswered` |
//! | 7 | ec006b5 | the counters' triggers; the digest `schema_version` in `meta` |
//! | 8 | 6a83cee | the rate window in `meta` instead of the table `export_log` |
//! | 9 | 614b4da | exports under way in `meta`; `projects_queued`; the manifest's walk; cancel; `listings.total`, `listings.relists`; `runs.settings` |
//! | 10 | 7a0a5cd | `restores`; the drills' columns of `last_backups` |
//! | 11 | (this) | changed-only runs: `runs.unchanged`, `projects.kept_key`, `projects.kept_ms`, `last_backups.requested_ms` |
//!
//! Stores from before the numbers have none: their version is read from `sqlite_master`
//! ([`detect`]), by the columns their tables declare. Their `CREATE … IF NOT EXISTS` added new
//! tables, indexes and triggers but never a column, so a table's columns show the version the
//! store was created at, whatever came later (a store created at version 3 and opened by
//! version 8's worker has the triggers and the digest of 8, and the columns of 3). Steps are
//! written to allow that: what such a store may already have they create `IF NOT EXISTS`,
//! drop `IF EXISTS`, or move only when it is there.

use super::schema::SCHEMA;
use super::{column, MetaKey, Sql, Store, StoreError, Value};

/// One migration step: the statements that turn the schema of version `version - 1` into that
/// of `version`, applied in one transaction together with the new version number.
pub(super) struct Step {
    pub version: u64,
    /// What changes, for errors.
    pub change: &'static str,
    pub statements: &'static [&'static str],
}

/// The steps, in order: never edit one that has been on `main` (deployed stores went through
/// it); add the next.
pub(super) const STEPS: &[Step] = &[
    Step {
        version: 2,
        change: "meta holds text too; last_backups",
        statements: &[
            // `meta.value` was an INTEGER, which turns text that looks like a number into one:
            // the table is built again without a type, its rows kept.
            "CREATE TABLE meta_before_v2 (key TEXT, value)",
            "INSERT INTO meta_before_v2 (key, value) SELECT key, value FROM meta",
            "DROP TABLE meta",
            "CREATE TABLE meta (key TEXT PRIMARY KEY, value NOT NULL) WITHOUT ROWID",
            "INSERT INTO meta (key, value) SELECT key, value FROM meta_before_v2",
            "DROP TABLE meta_before_v2",
            // Version 2's worker created it in a store of version 1 as well.
            "CREATE TABLE IF NOT EXISTS last_backups (
                project_id INTEGER PRIMARY KEY,
                path TEXT NOT NULL,
                key TEXT NOT NULL,
                run_id INTEGER NOT NULL,
                at_ms INTEGER NOT NULL
            )",
        ],
    },
    Step {
        version: 3,
        change: "proof of landing: verification columns of runs and projects",
        statements: &[
            "ALTER TABLE runs ADD COLUMN verified INTEGER NOT NULL DEFAULT 0",
            "ALTER TABLE runs ADD COLUMN error TEXT",
            "ALTER TABLE runs ADD COLUMN manifest_waiting INTEGER NOT NULL DEFAULT 0",
            "ALTER TABLE runs ADD COLUMN manifest_parts INTEGER NOT NULL DEFAULT 0",
            "ALTER TABLE runs ADD COLUMN summary_key TEXT",
            "ALTER TABLE projects ADD COLUMN attempts INTEGER NOT NULL DEFAULT 0",
            "ALTER TABLE projects ADD COLUMN due_ms INTEGER NOT NULL DEFAULT 0",
            "ALTER TABLE projects ADD COLUMN exported_ms INTEGER",
            "ALTER TABLE projects ADD COLUMN size INTEGER",
            "ALTER TABLE projects ADD COLUMN manifest_part INTEGER",
            // `exported` was final: in a run still going it now awaits its proof, as accepted
            // (at the latest) when the run started, with the attempt it used.
            "UPDATE projects SET attempts = 1,
                 exported_ms = (SELECT started_ms FROM runs WHERE runs.id = projects.run_id)
             WHERE state = 'exported' AND run_id IN (SELECT id FROM runs WHERE phase != 'finished')",
            // Final outcomes of a run still going wait for its manifest.
            "UPDATE runs SET manifest_waiting = (SELECT COUNT(*) FROM projects
                 WHERE projects.run_id = runs.id AND projects.state IN ('verified', 'failed'))
             WHERE phase != 'finished'",
            "DROP INDEX IF EXISTS projects_by_state",
            "CREATE INDEX IF NOT EXISTS projects_due ON projects (run_id, state, due_ms, project_id)",
            "CREATE INDEX IF NOT EXISTS projects_for_manifest ON projects (run_id, project_id)
        WHERE manifest_part IS NULL AND state IN ('verified', 'failed')",
            // `last_backups.size` is NOT NULL without a default: the table is built again, the
            // size of backups recorded before sizes were known 0.
            "CREATE TABLE last_backups_before_v3 (
                project_id INTEGER, path TEXT, key TEXT, run_id INTEGER, at_ms INTEGER)",
            "INSERT INTO last_backups_before_v3 SELECT project_id, path, key, run_id, at_ms
             FROM last_backups",
            "DROP TABLE last_backups",
            "CREATE TABLE last_backups (
        project_id INTEGER PRIMARY KEY,
        path TEXT NOT NULL,
        key TEXT NOT NULL,
        run_id INTEGER NOT NULL,
        at_ms INTEGER NOT NULL,
        size INTEGER NOT NULL
    )",
            "INSERT INTO last_backups (project_id, path, key, run_id, at_ms, size)
             SELECT project_id, path, key, run_id, at_ms, 0 FROM last_backups_before_v3",
            "DROP TABLE last_backups_before_v3",
            "CREATE INDEX IF NOT EXISTS last_backups_by_time ON last_backups (at_ms)",
        ],
    },
    Step {
        version: 4,
        change: "listings.page and listings.pages_total",
        statements: &[
            "ALTER TABLE listings ADD COLUMN page INTEGER NOT NULL DEFAULT 1",
            "ALTER TABLE listings ADD COLUMN pages_total INTEGER",
            // The page an unfinished listing stands on, from its URL (`…?page=N` or `…&page=N`).
            "UPDATE listings SET page = MAX(1, CAST(substr(next_url,
                 MAX(instr(next_url, '?page='), instr(next_url, '&page=')) + 6) AS INTEGER))
             WHERE MAX(instr(next_url, '?page='), instr(next_url, '&page=')) > 0",
        ],
    },
    Step {
        version: 5,
        change: "no index runs_active",
        statements: &["DROP INDEX IF EXISTS runs_active"],
    },
    Step {
        version: 6,
        change: "projects.unanswered",
        statements: &["ALTER TABLE projects ADD COLUMN unanswered INTEGER NOT NULL DEFAULT 0"],
    },
    Step {
        version: 7,
        change: "the triggers count_exported and count_outcome",
        statements: &[
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
        ],
    },
    Step {
        version: 8,
        change: "the rate window moves from export_log into meta",
        statements: &[
            // Version 8's worker moved it already in a store whose columns are older.
            "CREATE TABLE IF NOT EXISTS export_log (id INTEGER PRIMARY KEY, at_ms INTEGER NOT NULL)",
            // Its requests join the window, so none of the last minute is forgotten.
            "INSERT INTO meta (key, value)
             SELECT 'export_window', json_object('next', COALESCE(MAX(id), 0) + 1,
                                   'requests', json_group_array(json_array(id, at_ms)))
             FROM export_log WHERE id IS NOT NULL
             ON CONFLICT (key) DO NOTHING",
            "DROP TABLE export_log",
        ],
    },
    Step {
        version: 9,
        change: "exports under way kept with the rate window; the manifest walked at the end; cancel; a group listed again when it changed; runs.settings",
        statements: &[
            // A project's export under way (claimed, accepted, its checks) lives in `meta`
            // with the rate window, no longer in its row and two indexes.
            "DROP INDEX IF EXISTS projects_due",
            "DROP INDEX IF EXISTS projects_for_manifest",
            "CREATE INDEX IF NOT EXISTS projects_queued ON projects (run_id, due_ms, project_id)
        WHERE state = 'pending' AND due_ms > 0",
            "ALTER TABLE runs ADD COLUMN manifest_after INTEGER NOT NULL DEFAULT 0",
            "ALTER TABLE runs ADD COLUMN cancelled_ms INTEGER",
            "DROP TRIGGER IF EXISTS count_exported",
            "DROP TRIGGER IF EXISTS count_outcome",
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
            // A claim whose answer was never recorded goes back in line, as a tick would have.
            "UPDATE projects SET state = 'pending' WHERE state = 'exporting'
             AND run_id IN (SELECT id FROM runs WHERE phase != 'finished')",
            // The unfinished run's accepted exports join the exports under way, each with its
            // next check; their rows wait as pending (a claim skips what is under way).
            "INSERT INTO meta (key, value)
             SELECT 'export_window', json_object('next', 0, 'requests', json_array())
             WHERE EXISTS (SELECT 1 FROM runs WHERE phase != 'finished')
             ON CONFLICT (key) DO NOTHING",
            "UPDATE meta SET value = json_set(value, '$.flights', json_object(
                 'run', r.id,
                 'new_after', COALESCE(
                     (SELECT MIN(project_id) - 1 FROM projects
                      WHERE run_id = r.id AND state = 'pending' AND due_ms = 0),
                     (SELECT MAX(project_id) FROM projects WHERE run_id = r.id), 0),
                 'list', (SELECT json_group_array(json_object(
                         'project', json_object('project_id', project_id, 'path', path,
                             'attempts', attempts, 'exported_ms', exported_ms),
                         'due_ms', due_ms, 'counted', json('true')))
                     FROM projects WHERE run_id = r.id AND state = 'exported')))
             FROM (SELECT id FROM runs WHERE phase != 'finished' ORDER BY id DESC LIMIT 1) AS r
             WHERE key = 'export_window'",
            // (In runs finished before version 3, `exported` was final; those rows stay.)
            "UPDATE projects SET state = 'pending' WHERE state = 'exported'
             AND run_id IN (SELECT id FROM runs WHERE phase != 'finished')",
            // The unfinished run's manifest is written again, whole, by the walk at its end.
            "UPDATE runs SET manifest_parts = 0, manifest_waiting = 0 WHERE phase != 'finished'",
            // A group listed again when its project count changed during its listing.
            "ALTER TABLE listings ADD COLUMN total INTEGER",
            "ALTER TABLE listings ADD COLUMN relists INTEGER NOT NULL DEFAULT 0",
            // The settings a run started with (`config::RunSettings`, as JSON). Runs begun
            // before it keep NULL, and go on with the current settings, as they did.
            "ALTER TABLE runs ADD COLUMN settings TEXT",
        ],
    },
    Step {
        version: 10,
        change: "restores and restore drills",
        statements: &[
            "ALTER TABLE last_backups ADD COLUMN drill_key TEXT",
            "ALTER TABLE last_backups ADD COLUMN drilled_ms INTEGER",
            "ALTER TABLE last_backups ADD COLUMN drill_error TEXT",
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
            "CREATE INDEX IF NOT EXISTS restores_open ON restores (due_ms, id)
        WHERE state IN ('requested', 'importing', 'cleaning')",
        ],
    },
    Step {
        version: 11,
        change: "changed-only runs",
        statements: &[
            "ALTER TABLE runs ADD COLUMN unchanged INTEGER NOT NULL DEFAULT 0",
            "ALTER TABLE projects ADD COLUMN kept_key TEXT",
            "ALTER TABLE projects ADD COLUMN kept_ms INTEGER",
            "ALTER TABLE last_backups ADD COLUMN requested_ms INTEGER",
            // A moment before each kept backup's export was asked for: the start of the run that
            // made it, where the store still has that run; without it a project is exported again
            // once (never taken as unchanged on a guess).
            "UPDATE last_backups SET requested_ms = (
                 SELECT started_ms FROM runs WHERE runs.id = last_backups.run_id)",
        ],
    },
];

/// The version this worker's schema ([`SCHEMA`]) is at.
pub(crate) const LATEST: u64 = STEPS[STEPS.len() - 1].version;

/// The objects whose shape tells the versions apart, as `sqlite_master` has them (only ours:
/// the Durable Object keeps tables of its own there, which it does not let us read).
const OBJECTS: &str = "SELECT type, name, sql FROM sqlite_master WHERE name IN
    ('runs', 'listings', 'projects', 'meta', 'last_backups', 'export_log',
     'count_exported', 'count_outcome', 'restores')";

/// Where a store's schema stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Version {
    /// The number the store keeps.
    Numbered(u64),
    /// A store from before numbers, at the version its tables show; 0: a new, empty store.
    Unnumbered(u64),
}

/// An object of the schema, as `sqlite_master` describes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct Object {
    pub kind: String,
    pub name: String,
    pub sql: String,
}

/// The version of a store without a number, from its objects: 0 when it has no tables.
pub(super) fn detect(objects: &[Object]) -> Result<u64, StoreError> {
    let table = |name: &str| objects.iter().find(|o| o.kind == "table" && o.name == name);
    if table("runs").is_none() {
        return Ok(0);
    }
    let columns = |name: &str| match table(name) {
        Some(t) => Ok(declared_columns(&t.sql)),
        None => Err(StoreError(format!(
            "the store has a table runs but none {name}: a schema this worker does not know"
        ))),
    };
    let has = |columns: &[(String, String)], name: &str| columns.iter().any(|(c, _)| c == name);
    let runs = columns("runs")?;
    let listings = columns("listings")?;
    let projects = columns("projects")?;
    let meta = columns("meta")?;
    let trigger = |name: &str| {
        objects
            .iter()
            .any(|o| o.kind == "trigger" && o.name == name)
    };
    let version = if !has(&runs, "verified") {
        let integer_value = meta.iter().any(|(c, declared)| {
            c == "value" && declared.to_ascii_uppercase().starts_with("INTEGER")
        });
        if integer_value || table("last_backups").is_none() {
            1
        } else {
            2
        }
    } else if !has(&listings, "page") {
        3
    } else if !has(&projects, "unanswered") {
        // 4 or 5: they differ only by an index that version 5 stopped creating but never
        // dropped; step 5 drops it if it is there.
        4
    } else if table("restores").is_some() {
        10
    } else if has(&runs, "settings") {
        // Stores keep a number from version 8 on; one that lost it shows its version so (it
        // has no trigger `count_exported` any more).
        9
    } else if !(trigger("count_exported") && trigger("count_outcome")) {
        6
    } else if table("export_log").is_some() {
        7
    } else {
        8
    };
    Ok(version)
}

/// The columns a `CREATE TABLE` statement declares (as `sqlite_master` keeps it, columns added
/// later included), lowercase, each with the rest of its definition.
pub(super) fn declared_columns(create: &str) -> Vec<(String, String)> {
    let (Some(open), Some(close)) = (create.find('('), create.rfind(')')) else {
        return Vec::new();
    };
    let body = create.get(open + 1..close).unwrap_or_default();
    let mut parts = Vec::new();
    let (mut depth, mut start) = (0_i32, 0);
    for (at, c) in body.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth -= 1,
            ',' if depth == 0 => {
                parts.push(&body[start..at]);
                start = at + 1;
            }
            _ => {}
        }
    }
    parts.push(&body[start..]);
    parts
        .into_iter()
        .filter_map(|part| {
            let part = part.trim();
            let name = part.split_whitespace().next()?;
            let rest = part[name.len()..].trim().to_owned();
            let name = name
                .trim_matches(|c| matches!(c, '"' | '`' | '[' | ']'))
                .to_ascii_lowercase();
            let constraint = ["primary", "unique", "check", "foreign", "constraint"];
            (!constraint.contains(&name.as_str())).then_some((name, rest))
        })
        .collect()
}

impl<S: Sql> Store<S> {
    /// The store's schema version: one statement when it has a number.
    pub(super) fn schema_version(&self) -> Result<Version, StoreError> {
        let read = self.sql.exec(
            "SELECT value FROM meta WHERE key = ?",
            &[MetaKey::SchemaNumber.as_str().into()],
        );
        match read {
            Ok(rows) => match rows.first() {
                Some(row) => column(row, 0)?
                    .as_u64()
                    .map(Version::Numbered)
                    .map_err(|e| {
                        StoreError(format!("the store's schema version is unreadable: {}", e.0))
                    }),
                None => self.detect(None),
            },
            // A new store has no `meta` table: the read fails.
            Err(e) => self.detect(Some(e)),
        }
    }

    fn detect(&self, read_failed: Option<StoreError>) -> Result<Version, StoreError> {
        let objects = self
            .sql
            .exec(OBJECTS, &[])?
            .iter()
            .map(|row| {
                Ok(Object {
                    kind: column(row, 0)?.as_text()?,
                    name: column(row, 1)?.as_text()?,
                    sql: column(row, 2)?.as_opt_text()?.unwrap_or_default(),
                })
            })
            .collect::<Result<Vec<_>, StoreError>>()?;
        match read_failed {
            // The table is there and could not be read: that is no sign of an old store.
            Some(e)
                if objects
                    .iter()
                    .any(|o| o.kind == "table" && o.name == "meta") =>
            {
                Err(e)
            }
            _ => detect(&objects).map(Version::Unnumbered),
        }
    }

    /// Brings the store from `version` to [`LATEST`]: a new store gets [`SCHEMA`], an older
    /// one each step it lacks, in order, each in one transaction with its version number; a
    /// newer one is refused before anything is written.
    pub(super) fn migrate(&self, version: Version) -> Result<(), StoreError> {
        let from = match version {
            Version::Numbered(n) | Version::Unnumbered(n) if n > LATEST => {
                return Err(StoreError(format!(
                    "the store is at schema version {n}, this worker knows up to {LATEST}: \
                     deploy the newer worker"
                )))
            }
            Version::Numbered(LATEST) => return Ok(()),
            Version::Unnumbered(0) => {
                return self
                    .in_transaction(SCHEMA, LATEST)
                    .map_err(|e| StoreError(format!("creating the store's schema: {}", e.0)))
            }
            Version::Numbered(n) | Version::Unnumbered(n) => n,
        };
        if from == LATEST {
            // A store from before numbers, at this worker's schema: it gets its number.
            return self.in_transaction(&[], LATEST);
        }
        for step in STEPS.iter().filter(|step| step.version > from) {
            self.in_transaction(step.statements, step.version)
                .map_err(|e| {
                    StoreError(format!(
                        "migrating the store to schema version {} ({}): {}",
                        step.version, step.change, e.0
                    ))
                })?;
        }
        Ok(())
    }

    /// Runs `statements` and records `version`, in one transaction.
    fn in_transaction(&self, statements: &[&str], version: u64) -> Result<(), StoreError> {
        self.sql.transaction(&mut || {
            for statement in statements {
                self.sql.exec(statement, &[])?;
            }
            self.sql.exec(
                "INSERT INTO meta (key, value) VALUES (?, ?)
                 ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                &[MetaKey::SchemaNumber.as_str().into(), Value::from(version)],
            )?;
            // The digest older workers kept: numbers say it now.
            self.sql.exec(
                "DELETE FROM meta WHERE key = ?",
                &[MetaKey::SchemaVersion.as_str().into()],
            )?;
            Ok(())
        })
    }
}
