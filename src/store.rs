//! The cursor's storage: the SQLite schema and every query the engine runs, over a small
//! synchronous [`Sql`] trait that the Durable Object's `SqlStorage` implements in the glue and
//! rusqlite implements on the host — so tests and benchmarks run the very SQL production runs.
//!
//! Every query a tick runs touches only the rows it needs (indexes on state and time), so a
//! tick's cost does not grow with the number of projects.

use std::fmt;

/// A value bound to, or read from, a query.
#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    Null,
    Int(i64),
    Real(f64),
    Text(String),
}

impl From<i64> for Value {
    fn from(v: i64) -> Self {
        Value::Int(v)
    }
}
impl From<u64> for Value {
    /// Project ids and millisecond times stay far below 2^53, the exact range of the Durable
    /// Object's JavaScript numbers.
    fn from(v: u64) -> Self {
        Value::Int(i64::try_from(v).unwrap_or(i64::MAX))
    }
}
impl From<&str> for Value {
    fn from(v: &str) -> Self {
        Value::Text(v.to_owned())
    }
}
impl From<String> for Value {
    fn from(v: String) -> Self {
        Value::Text(v)
    }
}
impl<T: Into<Value>> From<Option<T>> for Value {
    fn from(v: Option<T>) -> Self {
        v.map_or(Value::Null, Into::into)
    }
}

impl Value {
    fn as_u64(&self) -> Result<u64, StoreError> {
        match self {
            Value::Int(i) if *i >= 0 => Ok(*i as u64),
            // JavaScript hands integers back as doubles.
            Value::Real(f) if *f >= 0.0 && f.fract() == 0.0 => Ok(*f as u64),
            other => Err(StoreError(format!(
                "expected a whole number, found {other:?}"
            ))),
        }
    }
    fn as_opt_u64(&self) -> Result<Option<u64>, StoreError> {
        match self {
            Value::Null => Ok(None),
            other => other.as_u64().map(Some),
        }
    }
    fn as_text(&self) -> Result<String, StoreError> {
        match self {
            Value::Text(s) => Ok(s.clone()),
            other => Err(StoreError(format!("expected text, found {other:?}"))),
        }
    }
    fn as_opt_text(&self) -> Result<Option<String>, StoreError> {
        match self {
            Value::Null => Ok(None),
            other => other.as_text().map(Some),
        }
    }
}

/// A row as positional values, in the order of the query's columns.
pub type Row = Vec<Value>;

/// Runs one SQL statement with positional `?` parameters and returns its rows.
pub trait Sql {
    fn exec(&self, query: &str, params: &[Value]) -> Result<Vec<Row>, StoreError>;
}

/// A storage failure (the statement was refused, or a row did not have the expected shape).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoreError(pub String);

impl fmt::Display for StoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "storage error: {}", self.0)
    }
}

impl std::error::Error for StoreError {}

fn column(row: &Row, index: usize) -> Result<&Value, StoreError> {
    row.get(index)
        .ok_or_else(|| StoreError(format!("row has no column {index}")))
}

const SCHEMA: &[&str] = &[
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

/// The facts the `meta` table holds, one row each. The names are the stored keys: never
/// rename one (a deployed store keeps its rows).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum MetaKey {
    /// A digest of [`SCHEMA`]: any change to it makes an existing store run the statements again
    /// (each adds only what is missing).
    SchemaVersion,
    /// The rate window's requests (`engine::window::Window`, as JSON).
    ExportWindow,
    /// No export request before this (GitLab answered 429).
    ExportsBlockedUntil,
    /// No GitLab request at all before this (backoff, or a 429 outside exports).
    GitLabBackoffUntil,
    /// GitLab's failures in a row, over ticks: the backoff grows with them.
    GitLabFailures,
    /// The region the bucket named when asked.
    BucketRegion,
    /// The export limit learned from GitLab's 429s during the current run…
    LearnedLimit,
    /// … and until when it holds.
    LearnedUntil,
    /// The newest run when pruning found nothing left below it.
    PrunedBelow,
    /// The last error, for `/status`, and when it happened.
    LastError,
    LastErrorAt,
    /// Follow-up requests a tick recorded but had no budget left to send (`engine::Intent`, as
    /// JSON): the next tick sends them first.
    Intents,
}

impl MetaKey {
    pub const ALL: [MetaKey; 12] = [
        MetaKey::SchemaVersion,
        MetaKey::ExportWindow,
        MetaKey::ExportsBlockedUntil,
        MetaKey::GitLabBackoffUntil,
        MetaKey::GitLabFailures,
        MetaKey::BucketRegion,
        MetaKey::LearnedLimit,
        MetaKey::LearnedUntil,
        MetaKey::PrunedBelow,
        MetaKey::LastError,
        MetaKey::LastErrorAt,
        MetaKey::Intents,
    ];

    /// The key as stored.
    pub fn as_str(self) -> &'static str {
        match self {
            MetaKey::SchemaVersion => "schema_version",
            MetaKey::ExportWindow => "export_window",
            MetaKey::ExportsBlockedUntil => "exports_blocked_until_ms",
            MetaKey::GitLabBackoffUntil => "gitlab_backoff_until_ms",
            MetaKey::GitLabFailures => "gitlab_consecutive_failures",
            MetaKey::BucketRegion => "bucket_region",
            MetaKey::LearnedLimit => "learned_exports_per_minute",
            MetaKey::LearnedUntil => "learned_limit_until_ms",
            MetaKey::PrunedBelow => "pruned_below_run",
            MetaKey::LastError => "last_error",
            MetaKey::LastErrorAt => "last_error_at_ms",
            MetaKey::Intents => "intents",
        }
    }
}

fn schema_version() -> String {
    use sha2::{Digest, Sha256};
    let digest = Sha256::digest(SCHEMA.concat().as_bytes());
    digest.iter().take(8).map(|b| format!("{b:02x}")).collect()
}

/// Where a run stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    /// Checking the token and the bucket before anything else.
    Preflight,
    Listing,
    Exporting,
    /// Every export is requested; proofs are awaited.
    Verifying,
    Finished,
}

impl Phase {
    /// Every phase, in the order a run goes through them.
    pub const ALL: [Phase; 5] = [
        Phase::Preflight,
        Phase::Listing,
        Phase::Exporting,
        Phase::Verifying,
        Phase::Finished,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Preflight => "preflight",
            Phase::Listing => "listing",
            Phase::Exporting => "exporting",
            Phase::Verifying => "verifying",
            Phase::Finished => "finished",
        }
    }
    fn parse(s: &str) -> Result<Phase, StoreError> {
        match s {
            "preflight" => Ok(Phase::Preflight),
            "listing" => Ok(Phase::Listing),
            "exporting" => Ok(Phase::Exporting),
            "verifying" => Ok(Phase::Verifying),
            "finished" => Ok(Phase::Finished),
            other => Err(StoreError(format!("unknown run phase {other:?}"))),
        }
    }
}

/// Where one project of a run stands (`projects.state`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ProjectState {
    /// Listed, waiting for its export (or for a retry's backoff to pass).
    Pending,
    /// Claimed for an export request whose answer is not recorded yet.
    Exporting,
    /// GitLab accepted the export; waiting for proof that it landed.
    Exported,
    /// The object is in the bucket.
    Verified,
    /// Final: no attempt left, or GitLab refuses this project.
    Failed,
}

impl ProjectState {
    /// Every state; the store's SQL names no other (`store::tests`).
    pub const ALL: [ProjectState; 5] = [
        ProjectState::Pending,
        ProjectState::Exporting,
        ProjectState::Exported,
        ProjectState::Verified,
        ProjectState::Failed,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ProjectState::Pending => "pending",
            ProjectState::Exporting => "exporting",
            ProjectState::Exported => "exported",
            ProjectState::Verified => "verified",
            ProjectState::Failed => "failed",
        }
    }

    fn parse(s: &str) -> Result<ProjectState, StoreError> {
        ProjectState::ALL
            .into_iter()
            .find(|state| state.as_str() == s)
            .ok_or_else(|| StoreError(format!("unknown project state {s:?}")))
    }
}

/// A run as stored.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct RunRow {
    pub id: u64,
    pub started_ms: u64,
    pub finished_ms: Option<u64>,
    pub phase: Phase,
    pub listed: u64,
    /// Projects GitLab accepted an export of (at least once).
    pub exported: u64,
    pub verified: u64,
    pub failed: u64,
    /// Why the run stopped early (preflight), if it did.
    pub error: Option<String>,
    /// Projects with a final outcome not yet written to a manifest part.
    pub manifest_waiting: u64,
    pub manifest_parts: u64,
    /// The run's `summary.json`, once written.
    pub summary_key: Option<String>,
}

impl RunRow {
    const COLUMNS: &'static str =
        "id, started_ms, finished_ms, phase, listed, exported, verified, \
         failed, error, manifest_waiting, manifest_parts, summary_key";

    fn read(row: &Row) -> Result<RunRow, StoreError> {
        Ok(RunRow {
            id: column(row, 0)?.as_u64()?,
            started_ms: column(row, 1)?.as_u64()?,
            finished_ms: column(row, 2)?.as_opt_u64()?,
            phase: Phase::parse(&column(row, 3)?.as_text()?)?,
            listed: column(row, 4)?.as_u64()?,
            exported: column(row, 5)?.as_u64()?,
            verified: column(row, 6)?.as_u64()?,
            failed: column(row, 7)?.as_u64()?,
            error: column(row, 8)?.as_opt_text()?,
            manifest_waiting: column(row, 9)?.as_u64()?,
            manifest_parts: column(row, 10)?.as_u64()?,
            summary_key: column(row, 11)?.as_opt_text()?,
        })
    }
}

/// Where the listing of one group stands: its next page, and how many it has if known.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ListingRow {
    pub position: u64,
    pub group: String,
    pub next_url: String,
    pub page: u64,
    pub pages_total: Option<u64>,
}

/// One listed page, as the engine records it.
pub struct ListedPage<'a> {
    pub position: u64,
    /// The page's number: the group's cursor moves only if it stands on this page.
    pub page: u64,
    pub projects: &'a [(u64, &'a str)],
    /// The next page and its number; `None`: the listing is complete.
    pub next: Option<(&'a str, u64)>,
    pub pages_total: Option<u64>,
}

/// A project claimed for export or for a check.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ClaimedProject {
    pub project_id: u64,
    pub path: String,
    /// Export attempts GitLab accepted so far.
    pub attempts: u64,
    /// When GitLab accepted the latest attempt.
    pub exported_ms: Option<u64>,
}

impl ClaimedProject {
    const COLUMNS: &'static str = "project_id, path, attempts, exported_ms";

    fn read(row: &Row) -> Result<ClaimedProject, StoreError> {
        Ok(ClaimedProject {
            project_id: column(row, 0)?.as_u64()?,
            path: column(row, 1)?.as_text()?,
            attempts: column(row, 2)?.as_u64()?,
            exported_ms: column(row, 3)?.as_opt_u64()?,
        })
    }
}

/// One line of a manifest part.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ManifestEntry {
    pub project_id: u64,
    pub path: String,
    pub verified: bool,
    pub attempts: u64,
    pub size: Option<u64>,
    pub error: Option<String>,
}

/// A project's verified backup.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Backup {
    pub project_id: u64,
    pub path: String,
    pub key: String,
    pub run_id: u64,
    pub at_ms: u64,
    pub size: u64,
}

/// What a run's projects still wait for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Remaining {
    /// When the first pending project comes due for its export, if any is pending.
    pub pending_due: Option<u64>,
    /// Whether a project is claimed for an export whose answer is not recorded.
    pub exporting: bool,
    /// When the first exported project comes due for a check, if any awaits its proof.
    pub exported_due: Option<u64>,
}

/// Facts of the `meta` table, read together in one statement: those asked for that are set.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Meta(std::collections::BTreeMap<String, Value>);

impl Meta {
    pub fn u64(&self, key: MetaKey) -> Result<Option<u64>, StoreError> {
        self.0.get(key.as_str()).map(Value::as_u64).transpose()
    }

    pub fn text(&self, key: MetaKey) -> Result<Option<String>, StoreError> {
        self.0.get(key.as_str()).map(Value::as_text).transpose()
    }
}

/// Typed access to the cursor's tables.
pub struct Store<S> {
    sql: S,
}

impl<S: Sql> Store<S> {
    /// Opens the store, creating the schema unless it is there in this version: one statement
    /// when it is (an evicted Durable Object opens its store on every request).
    pub fn open(sql: S) -> Result<Store<S>, StoreError> {
        let version = schema_version();
        // Before the first open there is no `meta` table, and the read fails.
        let current = sql.exec(
            "SELECT value FROM meta WHERE key = ?",
            &[MetaKey::SchemaVersion.as_str().into()],
        );
        let up_to_date = matches!(
            current.as_deref(),
            Ok([row]) if row.first() == Some(&Value::Text(version.clone()))
        );
        let store = Store { sql };
        if !up_to_date {
            for statement in SCHEMA {
                store.sql.exec(statement, &[])?;
            }
            store.migrate_export_log()?;
            store.set_meta(MetaKey::SchemaVersion, version)?;
        }
        Ok(store)
    }

    /// Stores from before the rate window moved into `meta` kept it in a table
    /// `export_log (id, at_ms)`: its requests join the window, so none of the last minute is
    /// forgotten, and the table goes.
    fn migrate_export_log(&self) -> Result<(), StoreError> {
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

    /// A store whose schema this process already created (a live Durable Object opens its
    /// store once, then reuses the schema on each request).
    pub fn opened(sql: S) -> Store<S> {
        Store { sql }
    }

    fn rows(&self, query: &str, params: &[Value]) -> Result<Vec<Row>, StoreError> {
        self.sql.exec(query, params)
    }

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

    /// Starts a run that will list `groups`, each from its first page URL.
    pub fn start_run(
        &self,
        now_ms: u64,
        groups: &[(String, String)],
    ) -> Result<RunRow, StoreError> {
        let rows = self.rows(
            &format!(
                "INSERT INTO runs (started_ms, phase) VALUES (?, 'preflight') RETURNING {}",
                RunRow::COLUMNS
            ),
            &[now_ms.into()],
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
    fn run_returned(&self, update: &str, params: &[Value]) -> Result<RunRow, StoreError> {
        self.rows(&format!("{update} RETURNING {}", RunRow::COLUMNS), params)?
            .first()
            .map(RunRow::read)
            .transpose()?
            .ok_or_else(|| StoreError("the run to update is not in the store".into()))
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
    /// ahead, in parallel, move it only once the pages before them are in). Returns how many
    /// projects were new, and the run as it now stands if that changed its count.
    pub fn record_page(
        &self,
        run_id: u64,
        listed: &ListedPage<'_>,
    ) -> Result<(u64, Option<RunRow>), StoreError> {
        // One statement for the page: its projects go in as one JSON array of [id, path].
        let page = serde_json::to_string(listed.projects)
            .map_err(|e| StoreError(format!("encoding a page of projects: {e}")))?;
        let added = self
            .rows(
                "INSERT INTO projects (run_id, project_id, path, state)
                 SELECT ?, value ->> 0, value ->> 1, 'pending' FROM json_each(?) WHERE true
                 ON CONFLICT DO NOTHING RETURNING project_id",
                &[run_id.into(), page.into()],
            )?
            .len() as u64;
        let run = if added > 0 {
            Some(self.run_returned(
                "UPDATE runs SET listed = listed + ? WHERE id = ?",
                &[added.into(), run_id.into()],
            )?)
        } else {
            None
        };
        let (next_url, next_page) = match listed.next {
            Some((url, page)) => (Some(url), page),
            None => (None, listed.page + 1),
        };
        self.rows(
            "UPDATE listings SET next_url = ?, page = ?, pages_total = COALESCE(?, pages_total)
             WHERE run_id = ? AND position = ? AND page = ? AND next_url IS NOT NULL",
            &[
                next_url.into(),
                next_page.into(),
                listed.pages_total.into(),
                run_id.into(),
                listed.position.into(),
                listed.page.into(),
            ],
        )?;
        Ok((added, run))
    }

    /// Records a group's one and only page (tests).
    #[cfg(test)]
    pub fn record_only_page(
        &self,
        run_id: u64,
        position: u64,
        projects: &[(u64, &str)],
    ) -> Result<u64, StoreError> {
        self.record_page(
            run_id,
            &ListedPage {
                position,
                page: 1,
                projects,
                next: None,
                pages_total: Some(1),
            },
        )
        .map(|(added, _)| added)
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
    /// `projects_due` index).
    pub fn remaining(&self, run_id: u64) -> Result<(Remaining, RunRow), StoreError> {
        let rows = self.rows(
            &format!(
                "SELECT
                     (SELECT due_ms FROM projects WHERE run_id = ? AND state = 'pending'
                      ORDER BY due_ms LIMIT 1),
                     EXISTS (SELECT 1 FROM projects WHERE run_id = ? AND state = 'exporting'),
                     (SELECT due_ms FROM projects WHERE run_id = ? AND state = 'exported'
                      ORDER BY due_ms LIMIT 1),
                     {}
                 FROM runs WHERE id = ?",
                RunRow::COLUMNS
            ),
            &[run_id.into(), run_id.into(), run_id.into(), run_id.into()],
        )?;
        let row = rows
            .first()
            .ok_or_else(|| StoreError("the run is not in the store".into()))?;
        let left = Remaining {
            pending_due: column(row, 0)?.as_opt_u64()?,
            exporting: column(row, 1)?.as_u64()? != 0,
            exported_due: column(row, 2)?.as_opt_u64()?,
        };
        let run: Row = row[3..].to_vec();
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

    /// The `meta` facts under `keys`, in one statement of key lookups.
    pub fn meta(&self, keys: &[MetaKey]) -> Result<Meta, StoreError> {
        let query = format!(
            "SELECT key, value FROM meta WHERE key IN ({})",
            vec!["?"; keys.len()].join(", ")
        );
        let params: Vec<Value> = keys.iter().map(|key| key.as_str().into()).collect();
        self.rows(&query, &params)?
            .into_iter()
            .map(|row| {
                let mut values = row.into_iter();
                match (values.next(), values.next()) {
                    (Some(Value::Text(key)), Some(value)) => Ok((key, value)),
                    other => Err(StoreError(format!("unexpected meta row {other:?}"))),
                }
            })
            .collect::<Result<_, _>>()
            .map(Meta)
    }

    pub fn set_meta(&self, key: MetaKey, value: impl Into<Value>) -> Result<(), StoreError> {
        self.rows(
            "INSERT INTO meta (key, value) VALUES (?, ?)
             ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            &[key.as_str().into(), value.into()],
        )?;
        Ok(())
    }

    pub fn delete_meta(&self, key: MetaKey) -> Result<(), StoreError> {
        self.rows("DELETE FROM meta WHERE key = ?", &[key.as_str().into()])?;
        Ok(())
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

    /// Deletes, below the run `newest`, the projects and listings of all but the newest
    /// `keep_detailed` runs (at most `batch` projects at a time) and all but the newest
    /// `keep_runs` runs. Returns whether nothing is left to delete for this `newest`.
    pub fn prune(
        &self,
        newest: u64,
        keep_detailed: u64,
        keep_runs: u64,
        batch: u64,
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
        Ok(projects < batch)
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
}

/// rusqlite behind the same trait, for host tests and benchmarks.
#[cfg(any(test, feature = "host-sql"))]
pub mod host {
    use super::{Row, Sql, StoreError, Value};
    use rusqlite::types::{ToSqlOutput, ValueRef};

    /// A rusqlite connection; `.1` counts the steps statements spent walking a whole table or
    /// index without a search (SQLite's `FULLSCAN_STEP`), for benchmarks.
    pub struct HostSql(pub rusqlite::Connection, pub std::cell::Cell<u64>);

    impl HostSql {
        pub fn in_memory() -> HostSql {
            let connection =
                rusqlite::Connection::open_in_memory().expect("an in-memory SQLite opens");
            // Room for every statement of the store, so none is compiled twice.
            connection.set_prepared_statement_cache_capacity(64);
            HostSql(connection, std::cell::Cell::new(0))
        }
    }

    impl rusqlite::ToSql for Value {
        fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
            Ok(match self {
                Value::Null => ToSqlOutput::Borrowed(ValueRef::Null),
                Value::Int(i) => ToSqlOutput::Borrowed(ValueRef::Integer(*i)),
                Value::Real(f) => ToSqlOutput::Borrowed(ValueRef::Real(*f)),
                Value::Text(s) => ToSqlOutput::Borrowed(ValueRef::Text(s.as_bytes())),
            })
        }
    }

    impl Sql for &HostSql {
        fn exec(&self, query: &str, params: &[Value]) -> Result<Vec<Row>, StoreError> {
            let err = |e: rusqlite::Error| StoreError(e.to_string());
            let mut statement = self.0.prepare_cached(query).map_err(err)?;
            let width = statement.column_count();
            let mut rows = statement
                .query(rusqlite::params_from_iter(params.iter()))
                .map_err(err)?;
            let mut out = Vec::new();
            while let Some(row) = rows.next().map_err(err)? {
                let mut values = Vec::with_capacity(width);
                for i in 0..width {
                    values.push(match row.get_ref(i).map_err(err)? {
                        ValueRef::Null => Value::Null,
                        ValueRef::Integer(i) => Value::Int(i),
                        ValueRef::Real(f) => Value::Real(f),
                        ValueRef::Text(t) => Value::Text(String::from_utf8_lossy(t).into_owned()),
                        ValueRef::Blob(_) => {
                            return Err(StoreError("blobs are not used by this schema".into()))
                        }
                    });
                }
                out.push(values);
            }
            drop(rows);
            let scanned = statement.get_status(rusqlite::StatementStatus::FullscanStep);
            statement.reset_status(rusqlite::StatementStatus::FullscanStep);
            self.1.set(self.1.get() + scanned as u64);
            Ok(out)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::host::HostSql;
    use super::*;

    #[test]
    fn a_project_reached_through_two_groups_is_one_row() {
        let db = HostSql::in_memory();
        let store = Store::open(&db).unwrap();
        let run = store
            .start_run(
                1_000,
                &[("a".into(), "u1".into()), ("b".into(), "u2".into())],
            )
            .unwrap();
        assert_eq!(
            store
                .record_only_page(run.id, 0, &[(1, "a/x"), (2, "a/y")])
                .unwrap(),
            2
        );
        assert_eq!(
            store
                .record_only_page(run.id, 1, &[(2, "a/y"), (3, "b/z")])
                .unwrap(),
            1
        );
        assert_eq!(store.active_run().unwrap().unwrap().listed, 3);
        assert_eq!(store.open_listings(run.id, 10).unwrap(), vec![]);
    }

    #[test]
    fn claims_go_in_id_order_and_never_repeat() {
        let db = HostSql::in_memory();
        let store = Store::open(&db).unwrap();
        let run = store.start_run(0, &[("a".into(), "u".into())]).unwrap();
        store
            .record_only_page(run.id, 0, &[(9, "a/9"), (3, "a/3"), (5, "a/5")])
            .unwrap();
        let claimed: Vec<u64> = std::iter::from_fn(|| store.claim_next(run.id, 0).unwrap())
            .map(|p| p.project_id)
            .collect();
        assert_eq!(claimed, vec![3, 5, 9]);
    }

    #[test]
    fn interrupted_claims_are_requeued() {
        let db = HostSql::in_memory();
        let store = Store::open(&db).unwrap();
        let run = store.start_run(0, &[("a".into(), "u".into())]).unwrap();
        store.record_only_page(run.id, 0, &[(1, "a/1")]).unwrap();
        store.claim_next(run.id, 0).unwrap().unwrap();
        assert!(store.claim_next(run.id, 0).unwrap().is_none());
        assert_eq!(store.requeue_interrupted(run.id).unwrap(), 1);
        assert_eq!(store.claim_next(run.id, 0).unwrap().unwrap().project_id, 1);
    }

    /// Counts the statements run through it.
    struct Counting<'a>(&'a HostSql, std::cell::Cell<u64>);

    impl Sql for &Counting<'_> {
        fn exec(&self, query: &str, params: &[Value]) -> Result<Vec<Row>, StoreError> {
            self.1.set(self.1.get() + 1);
            self.0.exec(query, params)
        }
    }

    #[test]
    fn an_opened_store_checks_its_schema_in_one_statement_and_restores_what_is_missing() {
        let db = HostSql::in_memory();
        let counting = Counting(&db, std::cell::Cell::new(0));
        let opened = |expected: u64, why: &str| {
            counting.1.set(0);
            let store = Store::open(&counting).unwrap();
            assert_eq!(counting.1.get(), expected, "{why}");
            store
        };
        // Checked, created, migrated from an older layout if there is one, version noted.
        let created = 3 + SCHEMA.len() as u64;
        opened(created, "a new store");
        opened(1, "a store in this version: checked only");
        // A store of an older version (here: without a trigger) gets what it lacks.
        db.0.execute_batch("DROP TRIGGER count_outcome").unwrap();
        opened(1, "the version is what is checked");
        db.0.execute_batch("UPDATE meta SET value = 'older' WHERE key = 'schema_version'")
            .unwrap();
        let store = opened(created, "another version: created again");
        let run = store.start_run(0, &[("a".into(), "u".into())]).unwrap();
        store.record_only_page(run.id, 0, &[(1, "a/1")]).unwrap();
        store.record_failure(run.id, 1, "gone", None).unwrap();
        assert_eq!(store.active_run().unwrap().unwrap().failed, 1);
    }

    #[test]
    fn a_store_that_kept_its_window_in_a_table_keeps_its_requests_in_meta() {
        let db = HostSql::in_memory();
        Store::open(&db).unwrap();
        // As the earlier schema left it: the window in `export_log`.
        db.0.execute_batch(
            "CREATE TABLE export_log (id INTEGER PRIMARY KEY, at_ms INTEGER NOT NULL);
             INSERT INTO export_log (id, at_ms) VALUES (41, 1000), (42, 2000);
             DELETE FROM meta;",
        )
        .unwrap();
        let store = Store::open(&db).unwrap();
        let window = store
            .meta(&[MetaKey::ExportWindow])
            .unwrap()
            .text(MetaKey::ExportWindow)
            .unwrap()
            .unwrap();
        let window: serde_json::Value = serde_json::from_str(&window).unwrap();
        assert_eq!(
            window,
            serde_json::json!({"next": 43, "requests": [[41, 1000], [42, 2000]]})
        );
        let tables = (&db)
            .exec(
                "SELECT name FROM sqlite_master WHERE name = 'export_log'",
                &[],
            )
            .unwrap();
        assert!(tables.is_empty(), "the old table is gone");
    }

    #[test]
    fn checks_go_most_overdue_first_each_once_a_tick_and_write_nothing() {
        let db = HostSql::in_memory();
        let store = Store::open(&db).unwrap();
        let run = store.start_run(0, &[("a".into(), "u".into())]).unwrap();
        store
            .record_only_page(run.id, 0, &[(1, "a/1"), (2, "a/2"), (3, "a/3"), (4, "a/4")])
            .unwrap();
        for (id, due) in [(1, 50), (2, 20), (3, 20), (4, 500)] {
            store.record_exported(run.id, id, 0, due).unwrap();
        }
        let changes = db.0.total_changes();
        let mut after = (0, 0);
        let mut checked = Vec::new();
        while let Some((project, due)) = store.next_check(run.id, 100, after).unwrap() {
            after = (due, project.project_id);
            checked.push(project.project_id);
        }
        assert_eq!(
            checked,
            vec![2, 3, 1],
            "by due time, then id; not yet due: none"
        );
        assert_eq!(db.0.total_changes(), changes, "nothing written");
        // The next tick starts over: unchanged projects are due again.
        let (first, _) = store.next_check(run.id, 100, (0, 0)).unwrap().unwrap();
        assert_eq!(first.project_id, 2);
    }

    #[test]
    fn pruning_keeps_the_newest_runs_in_detail_and_says_when_it_is_done() {
        let db = HostSql::in_memory();
        let store = Store::open(&db).unwrap();
        let ids: Vec<(u64, String)> = (1..=25).map(|i| (i, format!("a/{i}"))).collect();
        let page: Vec<(u64, &str)> = ids.iter().map(|(i, p)| (*i, p.as_str())).collect();
        for day in 0..4 {
            let run = store.start_run(day, &[("a".into(), "u".into())]).unwrap();
            store.record_only_page(run.id, 0, &page).unwrap();
            store.stop_run(run.id, "done", day + 1).unwrap();
        }
        let count = |query: &str| -> u64 {
            let rows = (&db).exec(query, &[]).unwrap();
            rows[0][0].as_u64().unwrap()
        };
        // Keep 2 runs in detail and 3 runs at all, 20 projects at a time: runs 1 and 2 hold
        // 50 projects, so three calls, the last one done.
        assert!(!store.prune(4, 2, 3, 20).unwrap());
        assert_eq!(count("SELECT COUNT(*) FROM projects"), 80);
        assert_eq!(
            count("SELECT MIN(id) FROM runs"),
            2,
            "run 1 goes, runs 2 to 4 stay"
        );
        assert!(!store.prune(4, 2, 3, 20).unwrap());
        assert!(store.prune(4, 2, 3, 20).unwrap());
        assert_eq!(count("SELECT COUNT(*) FROM projects"), 50);
        assert_eq!(count("SELECT MIN(run_id) FROM projects"), 3);
        assert_eq!(count("SELECT COUNT(*) FROM listings WHERE run_id < 3"), 0);
        assert!(store.prune(4, 2, 3, 20).unwrap(), "nothing more to do");
    }

    #[test]
    fn run_counters_follow_project_states_once_each() {
        let db = HostSql::in_memory();
        let store = Store::open(&db).unwrap();
        let run = store.start_run(0, &[("a".into(), "u".into())]).unwrap();
        store
            .record_only_page(run.id, 0, &[(1, "a/1"), (2, "a/2"), (3, "a/3")])
            .unwrap();
        let counts = || {
            let run = store.active_run().unwrap().unwrap();
            (run.exported, run.verified, run.failed, run.manifest_waiting)
        };
        // Project 1: exported, checked, a second export (a retry), verified twice over.
        store.record_exported(run.id, 1, 10, 20).unwrap();
        assert_eq!(counts(), (1, 0, 0, 0));
        store
            .record_failure(run.id, 1, "not there", Some(30))
            .unwrap();
        store.record_exported(run.id, 1, 40, 50).unwrap();
        assert_eq!(counts(), (1, 0, 0, 0), "exported once, at the first export");
        store.record_verified(run.id, 1, 100).unwrap();
        store.record_verified(run.id, 1, 100).unwrap();
        assert_eq!(counts(), (1, 1, 0, 1), "verified once");
        // Project 2: failed for good without an export; project 3 untouched.
        store.record_failure(run.id, 2, "refused", None).unwrap();
        store.record_failure(run.id, 2, "refused", None).unwrap();
        assert_eq!(counts(), (1, 1, 1, 2));
        // Moving a project between waiting states counts nothing.
        store.claim_next(run.id, 100).unwrap().unwrap();
        store.requeue_interrupted(run.id).unwrap();
        assert_eq!(counts(), (1, 1, 1, 2));
    }

    #[test]
    fn remaining_says_what_the_run_still_waits_for() {
        let db = HostSql::in_memory();
        let store = Store::open(&db).unwrap();
        let run = store.start_run(0, &[("a".into(), "u".into())]).unwrap();
        let nothing = Remaining {
            pending_due: None,
            exporting: false,
            exported_due: None,
        };
        assert_eq!(store.remaining(run.id).unwrap().0, nothing);
        store
            .record_only_page(run.id, 0, &[(1, "a/1"), (2, "a/2")])
            .unwrap();
        store.claim_next(run.id, 0).unwrap().unwrap();
        assert_eq!(
            store.remaining(run.id).unwrap().0,
            Remaining {
                pending_due: Some(0),
                exporting: true,
                exported_due: None,
            }
        );
        store.record_exported(run.id, 1, 5, 65).unwrap();
        store.reschedule(run.id, 2, 900).unwrap();
        assert_eq!(
            store.remaining(run.id).unwrap().0,
            Remaining {
                pending_due: Some(900),
                exporting: false,
                exported_due: Some(65),
            }
        );
        store.record_verified(run.id, 1, 1).unwrap();
        store.record_failure(run.id, 2, "refused", None).unwrap();
        assert_eq!(store.remaining(run.id).unwrap().0, nothing);
    }

    #[test]
    fn meta_is_read_by_keys_and_typed() {
        let db = HostSql::in_memory();
        let store = Store::open(&db).unwrap();
        let (n, s, missing) = (MetaKey::PrunedBelow, MetaKey::LastError, MetaKey::Intents);
        assert_eq!(store.meta(&[n]).unwrap().u64(n).unwrap(), None);
        store.set_meta(n, 42u64).unwrap();
        store.set_meta(s, "text").unwrap();
        let meta = store.meta(&[n, s, missing]).unwrap();
        assert_eq!(meta.u64(n).unwrap(), Some(42));
        assert_eq!(meta.text(s).unwrap().as_deref(), Some("text"));
        assert_eq!(meta.u64(missing).unwrap(), None);
        assert!(meta.u64(s).is_err(), "text is not read as a number");
        assert!(meta.text(n).is_err(), "a number is not read as text");
        let one = store.meta(&[s]).unwrap();
        assert_eq!(one.u64(n).unwrap(), None, "only the keys asked for");
    }
}
