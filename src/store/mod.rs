//! The cursor's storage: the SQLite schema and every query the engine runs, over a small
//! synchronous [`Sql`] trait that the Durable Object's `SqlStorage` implements in the glue and
//! rusqlite implements on the host — so tests and benchmarks run the very SQL production runs.
//!
//! Every query a tick runs touches only the rows it needs (indexes on state and time), so a
//! tick's cost does not grow with the number of projects.

use std::fmt;

mod migrations;
mod projects;
mod restores;
mod rows;
mod runs;
mod schema;

#[cfg(any(test, feature = "host-sql"))]
pub mod host;
#[cfg(test)]
pub(crate) mod migration_tests;
#[cfg(test)]
mod tests;

pub use projects::StaleProject;
pub use restores::{DrillFailure, Drills, NewRestore, RestoreRow, RestoreUpdate, RESTORES_KEPT};
pub use rows::{
    Backup, Claimable, ClaimedProject, Claims, Drill, ListedPage, ListedProject, ListingPass,
    ListingRow, ManifestEntry, Outcome, Phase, ProjectState, RecordedPage, RestoreState, RunRow,
};

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
    /// What the value is, for errors (a fractional number by its kind only: formatting a float
    /// would put core's float printing in the worker's bundle).
    fn describe(&self) -> String {
        match self {
            Value::Null => "NULL".to_owned(),
            Value::Int(i) => format!("the integer {i}"),
            Value::Real(_) => "a fractional or negative number".to_owned(),
            Value::Text(t) => format!("the text {t:?}"),
        }
    }

    fn as_u64(&self) -> Result<u64, StoreError> {
        match self {
            Value::Int(i) if *i >= 0 => Ok(*i as u64),
            // JavaScript hands integers back as doubles.
            Value::Real(f) if *f >= 0.0 && f.fract() == 0.0 => Ok(*f as u64),
            other => Err(StoreError(format!(
                "expected a whole number, found {}",
                other.describe()
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
            other => Err(StoreError(format!(
                "expected text, found {}",
                other.describe()
            ))),
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

/// Runs one SQL statement with positional `?` parameters and returns its rows; runs a batch
/// of them atomically.
pub trait Sql {
    fn exec(&self, query: &str, params: &[Value]) -> Result<Vec<Row>, StoreError>;
    /// Rows written through this connection so far, as the platform bills them: the Durable
    /// Object's cursors report theirs; on the host, SQLite's count of changed rows.
    fn rows_written(&self) -> u64;

    /// Runs `body` (which runs its statements through [`Sql::exec`]) as one transaction: when
    /// it fails, none of its statements took effect. The Durable Object refuses `BEGIN` and
    /// `COMMIT`, so this is the glue's `transactionSync`, and a savepoint on the host.
    fn transaction(
        &self,
        body: &mut dyn FnMut() -> Result<(), StoreError>,
    ) -> Result<(), StoreError>;
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

/// The facts the `meta` table holds, one row each. The names are the stored keys: never
/// rename one (a deployed store keeps its rows).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum MetaKey {
    /// A digest of the schema, which stores kept before their schema had a version number
    /// ([`MetaKey::SchemaNumber`]); the first migration step a store goes through deletes it.
    SchemaVersion,
    /// The rate window's requests (`engine::window::Window`, as JSON).
    ExportWindow,
    /// No export request before this (GitLab answered 429).
    ExportsBlockedUntil,
    /// No GitLab request at all before this (backoff, or a 429 outside exports).
    GitLabBackoffUntil,
    /// GitLab's failures in a row, over ticks: the backoff grows with them.
    GitLabFailures,
    /// The region the bucket named when asked, with the endpoint and bucket it is for
    /// (`s3::LearnedRegion`, as JSON).
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
    /// When the last run the schedule started began (0: none yet). Manual runs leave it.
    LastScheduledStart,
    /// Today's use of the Durable Object's daily allowances (`engine::allowance`, as JSON).
    DailyUsage,
    /// This deployment's random id, which marks its `S3_PREFIX` in the bucket.
    DeploymentId,
    /// The run whose preflight found the prefix's marker this deployment's (or wrote it).
    PrefixCheckedRun,
    /// The schema's version number: the last migration step (`store/migrations.rs`) the store
    /// went through.
    SchemaNumber,
    /// Since when S3 has refused the active run's record (its manifest parts or summary), in a
    /// row; gone once S3 takes it.
    RecordFailingSince,
    /// When the last restore drill was started.
    LastDrillStarted,
    /// The drills' turn and counts (`store::restores`, as JSON).
    DrillTally,
}

impl MetaKey {
    pub const ALL: [MetaKey; 20] = [
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
        MetaKey::LastScheduledStart,
        MetaKey::DailyUsage,
        MetaKey::DeploymentId,
        MetaKey::PrefixCheckedRun,
        MetaKey::SchemaNumber,
        MetaKey::RecordFailingSince,
        MetaKey::LastDrillStarted,
        MetaKey::DrillTally,
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
            MetaKey::LastScheduledStart => "last_scheduled_start_ms",
            MetaKey::DailyUsage => "daily_usage",
            MetaKey::DeploymentId => "deployment_id",
            MetaKey::PrefixCheckedRun => "prefix_checked_run",
            MetaKey::SchemaNumber => "schema_number",
            MetaKey::RecordFailingSince => "record_failing_since_ms",
            MetaKey::LastDrillStarted => "last_drill_started_ms",
            MetaKey::DrillTally => "drill_tally",
        }
    }
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
    /// Opens the store: one statement when its schema is at this version (an evicted Durable
    /// Object opens its store on every request). A new store gets the schema; an older one the
    /// migration steps it lacks, each in one transaction; a newer one is refused, untouched.
    pub fn open(sql: S) -> Result<Store<S>, StoreError> {
        let store = Store { sql };
        let version = store.schema_version()?;
        store.migrate(version)?;
        Ok(store)
    }

    /// A store whose schema this process already created (a live Durable Object opens its
    /// store once, then reuses the schema on each request).
    /// Rows this store's connection has written so far.
    pub fn rows_written(&self) -> u64 {
        self.sql.rows_written()
    }

    pub fn opened(sql: S) -> Store<S> {
        Store { sql }
    }

    fn rows(&self, query: &str, params: &[Value]) -> Result<Vec<Row>, StoreError> {
        self.sql.exec(query, params)
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
                    (key, _) => Err(StoreError(format!(
                        "unexpected meta row: its key is {}",
                        key.map_or("missing".to_owned(), |k| k.describe())
                    ))),
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

    /// This deployment's id: made once, at random, by SQLite.
    pub fn deployment_id(&self) -> Result<String, StoreError> {
        self.rows(
            "INSERT INTO meta (key, value) VALUES (?, lower(hex(randomblob(16))))
             ON CONFLICT (key) DO NOTHING",
            &[MetaKey::DeploymentId.as_str().into()],
        )?;
        self.meta(&[MetaKey::DeploymentId])?
            .text(MetaKey::DeploymentId)?
            .ok_or_else(|| StoreError("the deployment id was not kept".into()))
    }

    pub fn delete_meta(&self, key: MetaKey) -> Result<(), StoreError> {
        self.rows("DELETE FROM meta WHERE key = ?", &[key.as_str().into()])?;
        Ok(())
    }
}
