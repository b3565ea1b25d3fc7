//! The engine's cost per tick, on the host, over the Durable Object's own SQL (rusqlite).
//!
//! Runs whole backups of 100, 10,000 and 100,000 projects against an instant, well-behaved
//! GitLab and S3 on a simulated clock, firing ticks as production does (cron every minute, and
//! the object's alarm when the tick asks for one), and measures each tick: host CPU time of the
//! engine (thread CPU clock, around the engine's calls only), SQL statements, rows returned,
//! rows written and database pages touched, and subrequests against the budget. The store
//! starts with two earlier runs of the same size, so old runs are pruned while the run goes, as
//! they are from the third day on.
//!
//! Every run is repeated and each tick's figures are the minimum over the repeats (the
//! simulation is deterministic, so tick `i` does the same work each time): the noise of a busy
//! machine goes, the work stays.
//!
//! `cargo bench --bench ticks --features host-sql` (part of `cargo xtask bench`). Set
//! `BENCH_SIZES=100,10000` to pick sizes, `BENCH_MODE=kept` or `evicted` to pick the object's
//! mode (or `realistic` for the realistic runs alone), `BENCH_PROFILE=1` (or `all`) for the
//! costliest statements and ticks, `BENCH_PROFILE=rows` for the statements by rows written.
//!
//! Last, the same runs against a GitLab whose exports take realistic times (seeded, median
//! 2 min, 1 in 20 over 20 min) report what each exported project costs: rows written, index
//! entries and alarms counted (Cloudflare bills each `setAlarm` as a row written), Durable
//! Object requests and GitLab requests, and GitLab's busiest minute.
//!
//! Then a simulated week of daily changed-only runs (`BENCH_MODE=week` for it alone; sizes
//! `BENCH_WEEK_SIZES`, default 100, 10,000, 30,000 and 100,000; days `BENCH_WEEK_DAYS`, default
//! 7), from the steady state: per day exports, rows written and requests against the free
//! plan's allowances, the oldest newest backup, the delay from each change to a backup after it,
//! rows per unchanged project, and the largest instance the allowances carry, computed from the
//! measured costs.

use std::cell::RefCell;
use std::collections::{HashMap, HashSet};

use gitlab_backup::config::Config;
use gitlab_backup::engine::{Begin, Event, Start, Tick};
use gitlab_backup::http::{HttpRequest, HttpResponse, HttpResult, Method};
use gitlab_backup::store::host::HostSql;
use gitlab_backup::store::{Phase, Row, Sql, Store, StoreError, Value};
use serde_json::json;

const SECOND: u64 = 1_000;
const MINUTE: u64 = 60 * SECOND;
const HOUR: u64 = 60 * MINUTE;
/// 2024-01-01T00:00:00Z.
const T0: u64 = 1_704_067_200_000;
/// Simulated time each subrequest takes (there and back).
const LATENCY_MS: u64 = 150;
/// Projects per subgroup of the simulated group.
const PER_SUBGROUP: u64 = 250;
/// GitLab's page size.
const PER_PAGE: u64 = 100;
/// GitLab stops counting (no `X-Total`, `X-Total-Pages`) above this many results.
const TOTALS_UP_TO: u64 = 10_000;

/// Free plan: 50 subrequests and 10 ms of CPU per invocation.
const FREE: Plan = Plan {
    subrequests: 50,
    cpu_ms: 10,
};
/// Paid plan: 10,000 subrequests and 30 s of CPU per invocation.
const PAID: Plan = Plan {
    subrequests: 10_000,
    cpu_ms: 30_000,
};

#[derive(Clone, Copy)]
struct Plan {
    subrequests: u32,
    cpu_ms: u32,
}

// ---------------------------------------------------------------------------------------------
// Metering: the Durable Object's SQL through rusqlite, counted.

#[derive(Clone, Copy, Default, Debug)]
struct Usage {
    cpu_ns: u64,
    /// CPU the metering itself spent (counting a partial index's entries), taken out of
    /// `cpu_ns`.
    metering_ns: u64,
    statements: u64,
    rows_returned: u64,
    /// Rows inserted, updated or deleted in tables, by the statement and by its triggers.
    rows_written: u64,
    /// The same with the index entries inserted, as Cloudflare bills them (workerd's SQLite
    /// counts a row inserted, updated or deleted, and each index entry inserted; removing an
    /// entry is free): see [`Index`].
    rows_written_with_indexes: u64,
    pages_touched: u64,
    /// Steps of full table or index scans (0: every statement searched an index).
    scan_steps: u64,
    subrequests: u64,
}

impl Usage {
    fn min(self, other: Usage) -> Usage {
        Usage {
            cpu_ns: self.cpu_ns.min(other.cpu_ns),
            metering_ns: self.metering_ns.min(other.metering_ns),
            statements: self.statements.min(other.statements),
            rows_returned: self.rows_returned.min(other.rows_returned),
            rows_written: self.rows_written.min(other.rows_written),
            rows_written_with_indexes: self
                .rows_written_with_indexes
                .min(other.rows_written_with_indexes),
            pages_touched: self.pages_touched.min(other.pages_touched),
            scan_steps: self.scan_steps.min(other.scan_steps),
            subrequests: self.subrequests.min(other.subrequests),
        }
    }
}

/// Executions, pages touched, CPU ns, full-scan steps and rows written (an entry per index
/// counted) of one statement, summed.
type StatementCost = (u64, u64, u64, u64, u64);

struct Metered {
    db: HostSql,
    usage: RefCell<Usage>,
    /// With `BENCH_PROFILE=1`: per statement text, (executions, pages touched, CPU ns).
    profile: Option<RefCell<HashMap<String, StatementCost>>>,
    /// With `BENCH_PROFILE`: the CPU ns of each statement of the current tick.
    tick_statements: RefCell<Vec<(u64, String)>>,
    /// The schema's indexes, by table.
    indexes: HashMap<String, Vec<Index>>,
    /// Rows written (index entries counted) by kind of statement: its verb and table, such as
    /// `DELETE projects`.
    written_by_kind: RefCell<HashMap<String, u64>>,
}

/// A tick's costliest statements, with `BENCH_PROFILE` (CPU ns, statement).
type TopStatements = Vec<(u64, String)>;

impl Metered {
    fn new() -> Metered {
        Metered {
            db: HostSql::in_memory(),
            usage: RefCell::new(Usage::default()),
            profile: std::env::var_os("BENCH_PROFILE").map(|_| RefCell::default()),
            tick_statements: RefCell::default(),
            indexes: HashMap::new(),
            written_by_kind: RefCell::default(),
        }
    }

    /// Reads the schema's indexes once the store created them (not the primary keys of
    /// WITHOUT ROWID tables, which are the tables themselves).
    fn learn_indexes(&mut self) {
        let mut statement = self
            .db
            .0
            .prepare("SELECT name, tbl_name, sql FROM sqlite_master WHERE type = 'index' AND sql IS NOT NULL")
            .expect("sqlite_master");
        let found: Vec<(String, String, String)> = statement
            .query_map([], |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?)))
            .expect("indexes")
            .map(|r| r.expect("index row"))
            .collect();
        drop(statement);
        self.indexes.clear();
        for (name, table, sql) in found {
            let mut info = self
                .db
                .0
                .prepare(&format!("PRAGMA index_info({name})"))
                .expect("index_info");
            let columns: Vec<String> = info
                .query_map([], |row| row.get::<_, String>(2))
                .expect("index columns")
                .map(|r| r.expect("index column"))
                .collect();
            let partial = sql
                .split_once(" WHERE ")
                .map(|(_, condition)| condition.split_whitespace().collect::<Vec<_>>().join(" "));
            self.indexes
                .entry(table)
                .or_default()
                .push(Index { columns, partial });
        }
    }

    /// The entries of a partial index (each its columns, as text).
    fn partial_entries(&self, table: &str, index: &Index) -> HashSet<Vec<String>> {
        let Some(condition) = &index.partial else {
            return HashSet::new();
        };
        let query = format!(
            "SELECT {} FROM {table} WHERE {condition}",
            index.columns.join(", ")
        );
        let mut statement = self.db.0.prepare(&query).expect("partial index");
        let width = index.columns.len();
        statement
            .query_map([], |row| {
                (0..width)
                    .map(|i| Ok(format!("{:?}", row.get_ref(i)?)))
                    .collect::<rusqlite::Result<Vec<String>>>()
            })
            .expect("partial index rows")
            .map(|r| r.expect("partial index row"))
            .collect()
    }

    /// Database pages fetched since the last call (cache hits and misses).
    fn take_pages(&self) -> u64 {
        let mut total = 0;
        for op in [
            rusqlite::ffi::SQLITE_DBSTATUS_CACHE_HIT,
            rusqlite::ffi::SQLITE_DBSTATUS_CACHE_MISS,
        ] {
            let (mut current, mut highwater) = (0, 0);
            // SAFETY: the handle is the open connection's; the call only reads counters.
            unsafe {
                rusqlite::ffi::sqlite3_db_status(
                    self.db.0.handle(),
                    op,
                    &mut current,
                    &mut highwater,
                    1,
                );
            }
            total += current.max(0) as u64;
        }
        total
    }

    fn take(&self) -> Usage {
        let mut usage = std::mem::take(&mut *self.usage.borrow_mut());
        usage.pages_touched += self.take_pages();
        usage.scan_steps = self.db.1.replace(0);
        usage
    }

    /// The costliest three statements since the last call (with `BENCH_PROFILE`).
    fn take_top_statements(&self) -> TopStatements {
        let mut statements = std::mem::take(&mut *self.tick_statements.borrow_mut());
        statements.sort_by_key(|(cpu, _)| std::cmp::Reverse(*cpu));
        statements.truncate(3);
        statements
    }

    fn print_profile(&self) {
        let Some(profile) = &self.profile else {
            return;
        };
        let mut rows: Vec<(String, StatementCost)> = profile.borrow().clone().into_iter().collect();
        // `BENCH_PROFILE=all` lists every statement, otherwise the costliest dozen;
        // `BENCH_PROFILE=rows` the writers, by rows written.
        let by_rows = std::env::var("BENCH_PROFILE").as_deref() == Ok("rows");
        if by_rows {
            rows.retain(|(_, cost)| cost.4 > 0);
            rows.sort_by_key(|(_, cost)| std::cmp::Reverse(cost.4));
        } else {
            rows.sort_by_key(|(_, (_, _, cpu, scans, _))| std::cmp::Reverse((*scans > 0, *cpu)));
        }
        println!(
            "\nstatements by {} (executions, pages touched, CPU ms, full-scan steps, rows written with index entries):",
            if by_rows { "rows written" } else { "CPU" }
        );
        let shown = match std::env::var("BENCH_PROFILE").as_deref() {
            Ok("all" | "rows") => rows.len(),
            _ => 12,
        };
        for (query, (n, pages, cpu, scans, written)) in rows.iter().take(shown) {
            let query: String = query.split_whitespace().collect::<Vec<_>>().join(" ");
            println!(
                "{n:>8} {pages:>10} {:>10.1} {scans:>6} {written:>8}  {}",
                *cpu as f64 / 1e6,
                &query[..query.len().min(140)]
            );
        }
    }
}

/// The table a write statement changes.
/// An index, and what writing its entries costs: Cloudflare bills each entry inserted as a row
/// written, not one removed (measured on workerd: a DELETE is 1 row whatever the indexes, an
/// UPDATE is 1 plus 1 per index whose columns it sets, even to the same value).
struct Index {
    columns: Vec<String>,
    /// The `WHERE` of a partial index: its entries are counted by looking at them.
    partial: Option<String>,
}

impl Index {
    /// Whether each row the statement inserts or updates writes an entry of this (full) index.
    fn written_by(&self, query: &str) -> bool {
        let query = query.split_whitespace().collect::<Vec<_>>().join(" ");
        let verb = query
            .split(' ')
            .next()
            .unwrap_or_default()
            .to_ascii_uppercase();
        match verb.as_str() {
            "INSERT" => true,
            "UPDATE" => {
                let set = query
                    .split_once(" SET ")
                    .map_or("", |(_, rest)| rest.split(" WHERE ").next().unwrap_or(rest));
                self.columns.iter().any(|c| {
                    set.split(',')
                        .any(|a| a.trim().starts_with(&format!("{c} =")))
                })
            }
            _ => false,
        }
    }
}

fn written_table(query: &str) -> Option<&str> {
    let mut words = query.split_whitespace();
    let verb = words.next()?.to_ascii_uppercase();
    let table = match verb.as_str() {
        "INSERT" | "DELETE" => words.nth(1)?,
        "UPDATE" => words.next()?,
        _ => return None,
    };
    Some(table.trim_end_matches('('))
}

impl Sql for &Metered {
    fn exec(&self, query: &str, params: &[Value]) -> Result<Vec<Row>, StoreError> {
        let profiled = self.profile.as_ref().map(|_| {
            self.usage.borrow_mut().pages_touched += self.take_pages();
            thread_cpu_ns()
        });
        let scans_before = self.db.1.get();
        let changes_before = self.db.0.total_changes();
        let table = written_table(query);
        let indexes = table
            .and_then(|t| self.indexes.get(t))
            .map_or(&[][..], Vec::as_slice);
        let metering = thread_cpu_ns();
        let partial_before: Vec<HashSet<Vec<String>>> = indexes
            .iter()
            .map(|index| self.partial_entries(table.unwrap_or_default(), index))
            .collect();
        let mut metering_ns = thread_cpu_ns() - metering;
        let rows = (&self.db).exec(query, params)?;
        // `changes()` counts the statement's own rows; the rest of the total are the rows its
        // triggers wrote (the run's counters: `runs` has no index of its own).
        let written = table.map(|table| {
            let changed = self.db.0.changes();
            let by_triggers = (self.db.0.total_changes() - changes_before).saturating_sub(changed);
            let entries: u64 = indexes
                .iter()
                .zip(&partial_before)
                .map(|(index, before)| {
                    if index.partial.is_some() {
                        // Entries that are new: a row that entered, or whose indexed columns
                        // changed.
                        let metering = thread_cpu_ns();
                        let after = self.partial_entries(table, index);
                        metering_ns += thread_cpu_ns() - metering;
                        after.difference(before).count() as u64
                    } else if index.written_by(query) {
                        changed
                    } else {
                        0
                    }
                })
                .sum();
            (changed + by_triggers, changed + entries + by_triggers)
        });
        if let (Some(profile), Some(started)) = (&self.profile, profiled) {
            let cpu = thread_cpu_ns() - started;
            let pages = self.take_pages();
            self.usage.borrow_mut().pages_touched += pages;
            self.tick_statements
                .borrow_mut()
                .push((cpu, query.split_whitespace().collect::<Vec<_>>().join(" ")));
            let mut profile = profile.borrow_mut();
            let entry = profile.entry(query.to_owned()).or_default();
            entry.0 += 1;
            entry.1 += pages;
            entry.2 += cpu;
            entry.3 += self.db.1.get() - scans_before;
            entry.4 += written.map_or(0, |(_, with_indexes)| with_indexes);
        }
        let mut usage = self.usage.borrow_mut();
        usage.metering_ns += metering_ns;
        usage.statements += 1;
        usage.rows_returned += rows.len() as u64;
        if let (Some((rows_written, with_indexes)), Some(table)) = (written, table) {
            usage.rows_written += rows_written;
            usage.rows_written_with_indexes += with_indexes;
            if with_indexes > 0 {
                let verb = query
                    .split_whitespace()
                    .next()
                    .unwrap_or_default()
                    .to_ascii_uppercase();
                *self
                    .written_by_kind
                    .borrow_mut()
                    .entry(format!("{verb} {table}"))
                    .or_default() += with_indexes;
            }
        }
        Ok(rows)
    }

    fn rows_written(&self) -> u64 {
        (&self.db).rows_written()
    }

    fn transaction(
        &self,
        body: &mut dyn FnMut() -> Result<(), StoreError>,
    ) -> Result<(), StoreError> {
        (&self.db).transaction(body)
    }
}

fn thread_cpu_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes the timespec it is given.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

// ---------------------------------------------------------------------------------------------
// A GitLab and S3 that accept everything: instant, or at realistic export durations.

/// How long GitLab takes to build and upload an export.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Durations {
    /// `finished` at the first look, and the object is in the bucket at once.
    Instant,
    /// Log-normal per project, seeded: median 2 min, 1 in 20 over 20 min (`export_duration_ms`);
    /// `started` until then, and `none` once the upload is in the bucket (GitLab deletes its
    /// export file after the upload).
    Realistic,
}

/// The median of realistic export durations.
const MEDIAN_EXPORT_MS: u64 = 2 * MINUTE;
/// σ of their logarithm: e^(1.645 σ) = 10, so 1 in 20 takes over 20 min.
const EXPORT_SIGMA: f64 = 1.4;
/// The longest realistic export: under VERIFY_TIMEOUT_MINUTES' default (180), so every export
/// in the benchmark lands once.
const LONGEST_EXPORT_MS: u64 = 150 * MINUTE;
const SHORTEST_EXPORT_MS: u64 = 5 * SECOND;
const DURATIONS_SEED: u64 = 0x5EED_0013;

/// GitLab.com's limit of authenticated API requests per user and minute.
const GITLAB_REQUESTS_PER_MINUTE: u64 = 2_000;
/// The target: rows written per exported project, index entries and alarms counted.
const ROWS_PER_PROJECT_TARGET: f64 = 11.0;
/// GitLab's export limit for a day: 6 a minute.
const DAY_OF_EXPORTS: u64 = 8_640;

fn splitmix64(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

/// A uniform number in (0, 1] from 53 bits of `x`.
fn unit(x: u64) -> f64 {
    ((x >> 11) + 1) as f64 / (1u64 << 53) as f64
}

/// The project's realistic export duration: a function of its id alone (Box–Muller on two
/// seeded draws), so every run of the benchmark, whatever the engine's order, sees the same.
fn export_duration_ms(project_id: u64) -> u64 {
    let a = splitmix64(DURATIONS_SEED ^ project_id.wrapping_mul(0x2545_F491_4F6C_DD1D));
    let b = splitmix64(a);
    let z = (-2.0 * unit(a).ln()).sqrt() * (std::f64::consts::TAU * unit(b)).cos();
    let ms = MEDIAN_EXPORT_MS as f64 * (EXPORT_SIGMA * z).exp();
    (ms as u64).clamp(SHORTEST_EXPORT_MS, LONGEST_EXPORT_MS)
}

struct World {
    projects: u64,
    durations: Durations,
    /// Project id → when its export was accepted.
    exports: HashMap<u64, u64>,
    /// When each GitLab request arrived, in order.
    gitlab_requests: Vec<u64>,
    /// The projects' activity (the week's simulation); `None`: every project's
    /// `last_activity_at` is 2024-01-01T00:00:00Z.
    activity: Option<Activity>,
}

fn json_answer(
    status: u16,
    body: serde_json::Value,
    headers: Vec<(String, String)>,
) -> HttpResponse {
    HttpResponse {
        status,
        headers,
        body: body.to_string().into_bytes(),
    }
}

/// A project as GitLab's `simple=true` representation shows it, its `last_activity_at` as
/// given (RFC 3339).
fn simple_project(id: u64, last_activity_at: &str) -> serde_json::Value {
    let subgroup = (id - 1) / PER_SUBGROUP + 1;
    let path = format!("project-{id}");
    let full = format!("bench/team-{subgroup}/{path}");
    json!({
        "id": id,
        "description": "A project of the benchmark's group, as GitLab lists it.",
        "name": path,
        "name_with_namespace": format!("bench / team-{subgroup} / {path}"),
        "path": path,
        "path_with_namespace": full,
        "created_at": "2023-05-24T10:11:12.345Z",
        "default_branch": "main",
        "tag_list": [],
        "topics": ["backup", "bench"],
        "ssh_url_to_repo": format!("git@gitlab.example.com:{full}.git"),
        "http_url_to_repo": format!("https://gitlab.example.com/{full}.git"),
        "web_url": format!("https://gitlab.example.com/{full}"),
        "readme_url": format!("https://gitlab.example.com/{full}/-/blob/main/README.md"),
        "forks_count": 0,
        "avatar_url": null,
        "star_count": 3,
        "last_activity_at": last_activity_at,
        "namespace": {
            "id": 1000 + subgroup,
            "name": format!("team-{subgroup}"),
            "path": format!("team-{subgroup}"),
            "kind": "group",
            "full_path": format!("bench/team-{subgroup}"),
            "parent_id": 1,
            "avatar_url": null,
            "web_url": format!("https://gitlab.example.com/groups/bench/team-{subgroup}")
        }
    })
}

impl World {
    fn new(projects: u64, durations: Durations) -> World {
        World {
            projects,
            durations,
            exports: HashMap::new(),
            gitlab_requests: Vec::new(),
            activity: None,
        }
    }

    /// When the export of `id`, accepted at `accepted_ms`, is in the bucket.
    fn landed_ms(&self, id: u64, accepted_ms: u64) -> u64 {
        match self.durations {
            Durations::Instant => accepted_ms,
            Durations::Realistic => accepted_ms + export_duration_ms(id),
        }
    }

    /// Whether the backup object a GET asks for is in the bucket (every accepted export lands,
    /// once its duration has passed).
    fn landed(&self, url: &url::Url, now_ms: u64) -> bool {
        let id = url
            .path_segments()
            .into_iter()
            .flatten()
            .find_map(|s| s.strip_prefix("project-").and_then(|id| id.parse().ok()));
        match id.and_then(|id| self.exports.get(&id).map(|at| (id, *at))) {
            Some((id, accepted)) => self.landed_ms(id, accepted) <= now_ms,
            None => true,
        }
    }

    /// The most GitLab requests that arrived within any 60 s.
    fn peak_gitlab_per_minute(&self) -> u64 {
        let times = &self.gitlab_requests;
        let mut first = 0;
        let mut peak = 0;
        for (last, &at) in times.iter().enumerate() {
            while times[first] + MINUTE <= at {
                first += 1;
            }
            peak = peak.max(last - first + 1);
        }
        peak as u64
    }

    fn answer(&mut self, request: &HttpRequest, now_ms: u64) -> HttpResult {
        let url = &request.url;
        let host = url.host_str().unwrap_or_default();
        if host != "gitlab.example.com" {
            // S3: the worker's own PUTs, the HEAD of the preflight's probe, the ranged GETs of
            // backups' first bytes (each a gzip stream as GitLab uploads it), and the GET of the
            // prefix's marker (none yet: the worker writes it).
            let range = request
                .headers
                .iter()
                .find(|(name, _)| *name == "range")
                .map(|(_, value)| value.as_str());
            return Ok(match (request.method, range) {
                (Method::Get, Some(_)) if self.landed(url, now_ms) => HttpResponse {
                    status: 206,
                    headers: vec![
                        ("content-range".into(), "bytes 0-7/524288".into()),
                        ("content-type".into(), "application/gzip".into()),
                        ("content-length".into(), "8".into()),
                    ],
                    body: vec![0x1f, 0x8b, 0x08, 0, 0, 0, 0, 0],
                },
                (Method::Get, _) => HttpResponse {
                    status: 404,
                    ..HttpResponse::default()
                },
                (Method::Head, _) => HttpResponse {
                    status: 200,
                    headers: vec![("content-length".into(), "524288".into())],
                    body: Vec::new(),
                },
                _ => HttpResponse {
                    status: 200,
                    ..HttpResponse::default()
                },
            });
        }
        self.gitlab_requests.push(now_ms);
        if let Some(activity) = &mut self.activity {
            activity.advance(now_ms);
        }
        let segments: Vec<&str> = url.path_segments().map(|s| s.collect()).unwrap_or_default();
        match (request.method, segments.as_slice()) {
            (Method::Get, ["api", "v4", "user"]) => Ok(json_answer(
                200,
                json!({"id": 1, "username": "backup-bot"}),
                Vec::new(),
            )),
            (Method::Get, ["api", "v4", "groups", _, "projects"]) => Ok(self.page(url)),
            (Method::Post, ["api", "v4", "projects", id, "export"]) => {
                let id: u64 = id.parse().expect("project id");
                self.exports.insert(id, now_ms);
                Ok(json_answer(
                    202,
                    json!({"message": "202 Accepted"}),
                    Vec::new(),
                ))
            }
            (Method::Get, ["api", "v4", "projects", id, "export"]) => {
                let id: u64 = id.parse().expect("project id");
                let status = match (self.durations, self.exports.get(&id)) {
                    (_, None) => "none",
                    (Durations::Instant, Some(_)) => "finished",
                    (Durations::Realistic, Some(&accepted)) => {
                        if now_ms < accepted + SECOND {
                            "queued"
                        } else if now_ms < self.landed_ms(id, accepted) {
                            "started"
                        } else {
                            // Uploaded: GitLab deleted its export file.
                            "none"
                        }
                    }
                };
                Ok(json_answer(
                    200,
                    json!({"id": id, "export_status": status}),
                    Vec::new(),
                ))
            }
            _ => panic!("the benchmark's GitLab was not asked for {request:?}"),
        }
    }

    fn page(&self, url: &url::Url) -> HttpResponse {
        let page: u64 = url
            .query_pairs()
            .find(|(k, _)| k == "page")
            .map(|(_, v)| v.parse().expect("page number"))
            .unwrap_or(1);
        let pages = self.projects.div_ceil(PER_PAGE).max(1);
        let first = (page - 1) * PER_PAGE + 1;
        let last = (page * PER_PAGE).min(self.projects);
        let body: Vec<serde_json::Value> = (first..=last)
            .map(|id| {
                let at = match &self.activity {
                    Some(activity) => gitlab_backup::time::rfc3339(activity.shown(id)),
                    None => "2024-01-01T00:00:00.000Z".to_owned(),
                };
                simple_project(id, &at)
            })
            .collect();
        let link_to = |n: u64| {
            let mut link = url.clone();
            let pairs: Vec<(String, String)> = url
                .query_pairs()
                .filter(|(k, _)| k != "page")
                .map(|(k, v)| (k.into_owned(), v.into_owned()))
                .collect();
            link.query_pairs_mut()
                .clear()
                .extend_pairs(pairs)
                .append_pair("page", &n.to_string());
            link
        };
        let mut links = vec![format!("<{}>; rel=\"first\"", link_to(1))];
        let mut headers = vec![
            ("x-page".to_owned(), page.to_string()),
            ("x-per-page".to_owned(), PER_PAGE.to_string()),
        ];
        if page < pages {
            links.push(format!("<{}>; rel=\"next\"", link_to(page + 1)));
            headers.push(("x-next-page".to_owned(), (page + 1).to_string()));
        }
        if self.projects <= TOTALS_UP_TO {
            links.push(format!("<{}>; rel=\"last\"", link_to(pages)));
            headers.push(("x-total".to_owned(), self.projects.to_string()));
            headers.push(("x-total-pages".to_owned(), pages.to_string()));
        }
        headers.push(("link".to_owned(), links.join(", ")));
        json_answer(200, serde_json::Value::Array(body), headers)
    }
}

// ---------------------------------------------------------------------------------------------
// Whole runs.

fn config(plan: Plan) -> Config {
    let vars: HashMap<&str, String> = [
        ("GITLAB_URL", "https://gitlab.example.com".to_owned()),
        ("GITLAB_TOKEN", "glpat-benchmark".to_owned()),
        ("GROUPS_TO_BACKUP", "bench".to_owned()),
        ("AWS_S3_BUCKET", "backups".to_owned()),
        ("AWS_ACCESS_KEY_ID", "AKIDBENCHMARK".to_owned()),
        ("AWS_SECRET_ACCESS_KEY", "benchmark-secret".to_owned()),
        ("AWS_REGION", "eu-west-1".to_owned()),
        ("SUBREQUESTS_PER_INVOCATION", plan.subrequests.to_string()),
        ("CPU_MS_PER_INVOCATION", plan.cpu_ms.to_string()),
        // The per-tick figures are of whole runs: the daily allowances are counted (as on the free
        // plan, whose cost includes that record) but set too high to pause a run.
        ("DO_ROWS_WRITTEN_PER_DAY", "1000000000".to_owned()),
        ("DO_REQUESTS_PER_DAY", "1000000000".to_owned()),
    ]
    .into_iter()
    .collect();
    Config::from_lookup(|name| vars.get(name).cloned()).expect("the benchmark's configuration")
}

/// Two finished runs of `projects` projects each, as the store holds them from the third day.
fn prefill(db: &HostSql, projects: u64) {
    let conn = &db.0;
    conn.execute_batch("BEGIN").expect("begin");
    for (run, days_ago) in [(1u64, 2u64), (2, 1)] {
        let started = T0 - days_ago * 24 * HOUR;
        conn.execute(
            "INSERT INTO runs (id, started_ms, finished_ms, phase, listed, exported, verified,
                 manifest_parts, summary_key)
             VALUES (?1, ?2, ?3, 'finished', ?4, ?4, ?4, ?5, 'summary.json')",
            rusqlite::params![
                run as i64,
                started as i64,
                (started + HOUR) as i64,
                projects as i64,
                projects.div_ceil(100) as i64
            ],
        )
        .expect("old run");
        let mut insert = conn
            .prepare(
                "INSERT INTO projects (run_id, project_id, path, state, attempts, exported_ms,
                     size, manifest_part)
                 VALUES (?1, ?2, ?3, 'verified', 1, ?4, 524288, 1)",
            )
            .expect("prepare");
        for id in 1..=projects {
            let path = format!("bench/team-{}/project-{id}", (id - 1) / PER_SUBGROUP + 1);
            insert
                .execute(rusqlite::params![
                    run as i64,
                    id as i64,
                    path,
                    started as i64
                ])
                .expect("old project");
        }
    }
    conn.execute_batch("COMMIT").expect("commit");
}

#[derive(Default)]
struct RunFigures {
    /// One entry per tick, in order: (phase when the tick began, usage).
    ticks: Vec<(Phase, Usage)>,
    /// Listing pages read by each tick.
    pages_listed: Vec<usize>,
    /// Each tick's costliest statements (with `BENCH_PROFILE`).
    top_statements: Vec<TopStatements>,
    minutes: u64,
    /// Ticks that set the object's alarm (Cloudflare bills each `setAlarm` as a row written).
    alarms: u64,
    /// Alarms set for the time of the alarm already pending.
    alarms_pending_again: u64,
    /// Alarms by the timer they were set for (`Debug` of `engine::Timer`).
    alarms_for: std::collections::BTreeMap<String, u64>,
    /// Requests GitLab got, and the most of them within any 60 s.
    gitlab_requests: u64,
    peak_gitlab_per_minute: u64,
    /// Projects of the run GitLab accepted an export of.
    exported: u64,
}

/// One whole run: ticks fired by cron each minute and by the alarm, until the run is finished.
fn whole_run(
    projects: u64,
    plan: Plan,
    listing_only: bool,
    cold: bool,
    durations: Durations,
) -> RunFigures {
    let config = config(plan);
    let mut metered = Metered::new();
    Store::open(&metered).expect("schema");
    metered.learn_indexes();
    prefill(&metered.db, projects);
    let mut world = World::new(projects, durations);
    let mut figures = RunFigures::default();
    let mut now = T0;
    let mut next_cron = T0;
    let mut alarm: Option<u64> = None;
    metered.take();
    loop {
        let from_alarm = alarm.is_some_and(|a| a < next_cron);
        if from_alarm {
            now = now.max(alarm.take().expect("alarm"));
        } else {
            now = now.max(next_cron);
            next_cron += MINUTE;
        }
        let mut cpu = 0;
        let mut subrequests = 0;
        // A Durable Object evicted between two ticks creates its schema again (CREATE … IF NOT
        // EXISTS) and compiles its statements again: each tick starts cold.
        if cold {
            metered.db.0.flush_prepared_statement_cache();
        }
        let started = thread_cpu_ns();
        let store = if cold {
            Store::open(&metered).expect("store")
        } else {
            Store::opened(&metered)
        };
        let begin = Tick::begin(&store, &config, now, Start::IfDue).expect("begin");
        cpu += thread_cpu_ns() - started;
        let mut tick = match begin {
            Begin::Tick(tick) => tick,
            Begin::Idle => break,
            Begin::Paused(_) => unreachable!("the benchmark's daily limits are never reached"),
            Begin::AlreadyRunning(_) => unreachable!("IfDue resumes"),
        };
        let phase = tick.run().phase;
        if phase == Phase::Finished {
            break;
        }
        loop {
            let started = thread_cpu_ns();
            let steps = tick.next_steps(now).expect("next_steps");
            cpu += thread_cpu_ns() - started;
            if steps.is_empty() {
                break;
            }
            subrequests += steps.len() as u64;
            let answers: Vec<HttpResult> = steps
                .iter()
                .map(|step| world.answer(&step.request, now))
                .collect();
            now += LATENCY_MS;
            let started = thread_cpu_ns();
            for (step, answer) in steps.into_iter().zip(answers) {
                tick.handle(step, answer, now).expect("handle");
            }
            cpu += thread_cpu_ns() - started;
        }
        let started = thread_cpu_ns();
        let report = tick.finish(now).expect("finish");
        cpu += thread_cpu_ns() - started;
        if let Some(at) = report.wake_at_ms {
            if alarm == Some(at) && at > now {
                figures.alarms_pending_again += 1;
            }
            alarm = Some(at);
            figures.alarms += 1;
            *figures
                .alarms_for
                .entry(format!("{:?}", report.wake_for))
                .or_default() += 1;
        }
        let mut usage = metered.take();
        usage.cpu_ns = cpu.saturating_sub(usage.metering_ns);
        usage.subrequests = subrequests;
        let pages = report
            .events
            .iter()
            .filter(|e| matches!(e, Event::PageListed { .. }))
            .count();
        figures.ticks.push((phase, usage));
        figures.pages_listed.push(pages);
        figures.top_statements.push(metered.take_top_statements());
        let run = store.latest_run().expect("run").expect("a run");
        // The benchmark's own read is not the next tick's.
        metered.take();
        metered.take_top_statements();
        if listing_only && run.phase != Phase::Listing && run.phase != Phase::Preflight {
            break;
        }
        if run.phase == Phase::Finished && run.started_ms >= T0 {
            figures.minutes = (now - T0).div_ceil(MINUTE);
            figures.exported = run.exported;
            break;
        }
    }
    figures.gitlab_requests = world.gitlab_requests.len() as u64;
    figures.peak_gitlab_per_minute = world.peak_gitlab_per_minute();
    metered.print_profile();
    figures
}

struct Summary {
    projects: u64,
    ticks: usize,
    heaviest_cpu: (u64, Phase),
    mean_cpu_ns: u64,
    p99_cpu_ns: u64,
    max: Usage,
    total: Usage,
    minutes: u64,
}

fn summarise(projects: u64, plan: Plan, repeats: usize, cold: bool) -> Summary {
    let mut best: Option<RunFigures> = None;
    // Each tick's CPU in every repeat, for the profile.
    let mut cpu_by_repeat: Vec<Vec<u64>> = Vec::new();
    for _ in 0..repeats {
        let run = whole_run(projects, plan, false, cold, Durations::Instant);
        cpu_by_repeat.push(run.ticks.iter().map(|(_, u)| u.cpu_ns).collect());
        best = Some(match best {
            None => run,
            Some(mut best) => {
                assert_eq!(
                    best.ticks.len(),
                    run.ticks.len(),
                    "the simulation is deterministic"
                );
                for (kept, (_, usage)) in best.ticks.iter_mut().zip(run.ticks) {
                    kept.1 = kept.1.min(usage);
                }
                best
            }
        });
    }
    let run = best.expect("at least one repeat");
    if std::env::var_os("BENCH_PROFILE").is_some() {
        let mut ticks: Vec<(usize, &(Phase, Usage))> = run.ticks.iter().enumerate().collect();
        ticks.sort_by_key(|(_, (_, u))| std::cmp::Reverse(u.cpu_ns));
        for (i, (phase, u)) in ticks.iter().take(8) {
            let repeats: Vec<String> = cpu_by_repeat.iter().map(|cpu| ms(cpu[*i])).collect();
            println!(
                "tick {i} {phase:?}: {u:?}; CPU ms in each repeat: {}",
                repeats.join(" ")
            );
            for (cpu, query) in &run.top_statements[*i] {
                println!("    {} ms  {}", ms(*cpu), &query[..query.len().min(120)]);
            }
        }
    }
    let mut max = Usage::default();
    let mut total = Usage::default();
    let mut heaviest_cpu = (0, Phase::Preflight);
    for (phase, u) in &run.ticks {
        if u.cpu_ns > heaviest_cpu.0 {
            heaviest_cpu = (u.cpu_ns, *phase);
        }
        max.cpu_ns = max.cpu_ns.max(u.cpu_ns);
        max.statements = max.statements.max(u.statements);
        max.rows_returned = max.rows_returned.max(u.rows_returned);
        max.rows_written = max.rows_written.max(u.rows_written);
        max.rows_written_with_indexes = max
            .rows_written_with_indexes
            .max(u.rows_written_with_indexes);
        max.pages_touched = max.pages_touched.max(u.pages_touched);
        max.scan_steps = max.scan_steps.max(u.scan_steps);
        max.subrequests = max.subrequests.max(u.subrequests);
        total.cpu_ns += u.cpu_ns;
        total.rows_written += u.rows_written;
        total.rows_written_with_indexes += u.rows_written_with_indexes;
        total.rows_returned += u.rows_returned;
    }
    Summary {
        projects,
        ticks: run.ticks.len(),
        heaviest_cpu,
        mean_cpu_ns: total.cpu_ns / run.ticks.len().max(1) as u64,
        p99_cpu_ns: {
            let mut cpu: Vec<u64> = run.ticks.iter().map(|(_, u)| u.cpu_ns).collect();
            cpu.sort_unstable();
            cpu[(cpu.len() * 99 / 100).min(cpu.len() - 1)]
        },
        max,
        total,
        minutes: run.minutes,
    }
}

fn mark(ok: bool) -> &'static str {
    if ok {
        "✓"
    } else {
        "✗"
    }
}

fn ms(ns: u64) -> String {
    format!("{:.3}", ns as f64 / 1e6)
}

/// With `BENCH_PLAN="<query>"`: SQLite's plan for it on a store of 3 × 10,000 projects.
fn print_plan(query: &str) {
    let metered = Metered::new();
    Store::open(&metered).expect("schema");
    prefill(&metered.db, 10_000);
    let n = query.matches('?').count();
    let mut statement = metered
        .db
        .0
        .prepare(&format!("EXPLAIN QUERY PLAN {query}"))
        .expect("plan");
    let rows = statement
        .query_map(
            rusqlite::params_from_iter(std::iter::repeat_n(1, n)),
            |row| row.get::<_, String>(3),
        )
        .expect("plan rows");
    println!("SQLite {}", rusqlite::version());
    for row in rows {
        println!("  {}", row.expect("plan row"));
    }
}

fn main() {
    if let Ok(query) = std::env::var("BENCH_PLAN") {
        print_plan(&query);
        return;
    }
    let sizes: Vec<u64> = std::env::var("BENCH_SIZES")
        .ok()
        .map(|s| {
            s.split(',')
                .map(|n| n.trim().parse().expect("BENCH_SIZES: numbers"))
                .collect()
        })
        .unwrap_or_else(|| vec![100, 10_000, 100_000]);
    // Warm-up, not measured: the first runs of a process pay for growing its heap and for cold
    // caches, which would land on the smallest size alone.
    // `BENCH_MODE=kept` or `evicted` measures one of the two.
    // `BENCH_MODE=realistic` runs only the runs at realistic export durations.
    let modes: Vec<bool> = match std::env::var("BENCH_MODE").as_deref() {
        Ok("kept") => vec![false],
        Ok("evicted") => vec![true],
        Ok("realistic") => {
            realistic_durations(&sizes);
            return;
        }
        Ok("week") => {
            week_section(&week_sizes(), week_days());
            return;
        }
        _ => vec![false, true],
    };
    for &cold in &modes {
        for _ in 0..3 {
            whole_run(1_000, FREE, false, cold, Durations::Instant);
        }
    }
    for &cold in &modes {
        free_plan_table(&sizes, cold);
    }
    realistic_durations(&sizes);
    println!("\nListing on the paid plan (10,000 subrequests, 30 s CPU per invocation):");
    for &projects in sizes.iter().filter(|&&n| n >= 10_000) {
        let run = whole_run(projects, PAID, true, false, Durations::Instant);
        let listing: Vec<(usize, &Usage)> = run
            .pages_listed
            .iter()
            .zip(&run.ticks)
            .filter(|(pages, _)| **pages > 0)
            .map(|(pages, (_, usage))| (*pages, usage))
            .collect();
        let pages: usize = listing.iter().map(|(pages, _)| pages).sum();
        let heaviest = listing.iter().map(|(_, u)| u.cpu_ns).max().unwrap_or(0);
        println!(
            "- {projects} projects: {pages} pages listed in {} ticks (free plan: {pages}); heaviest listing tick {} ms host CPU",
            listing.len(),
            ms(heaviest)
        );
    }
    week_section(&week_sizes(), week_days());
}

/// `BENCH_WEEK_SIZES` (default 100, 10,000, 30,000 and 100,000 projects).
fn week_sizes() -> Vec<u64> {
    std::env::var("BENCH_WEEK_SIZES")
        .ok()
        .map(|s| {
            s.split(',')
                .map(|n| n.trim().parse().expect("BENCH_WEEK_SIZES: numbers"))
                .collect()
        })
        .unwrap_or_else(|| vec![100, 10_000, 30_000, 100_000])
}

/// `BENCH_WEEK_DAYS` (default 7).
fn week_days() -> u64 {
    std::env::var("BENCH_WEEK_DAYS")
        .ok()
        .map(|d| d.parse().expect("BENCH_WEEK_DAYS: a number of days"))
        .unwrap_or(WEEK_DAYS)
}

/// The free plan's table, for an object that stays in memory between ticks (`cold == false`:
/// schema and compiled statements kept) or one evicted before each tick.
fn free_plan_table(sizes: &[u64], cold: bool) {
    println!(
        "\nPer-tick cost of whole runs on the free plan (50 subrequests, 10 ms CPU per invocation), {}:",
        if cold {
            "object evicted before every tick (schema created and statements compiled each time)"
        } else {
            "object kept in memory between ticks"
        }
    );
    println!(
        "| projects | ticks | heaviest tick CPU ms (phase) | p99 tick CPU ms | mean tick CPU ms | max statements | max rows returned | max rows written | max full-scan steps | max B-tree pages touched | max subrequests / budget | rows written / project (with indexes) | DO requests / project |"
    );
    println!("|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    let mut summaries = Vec::new();
    for &projects in sizes {
        let repeats = 5;
        let s = summarise(projects, FREE, repeats, cold);
        println!(
            "| {} | {} | {} ({:?}) | {} | {} | {} | {} | {} | {} | {} | {} / {} {} | {:.1} ({:.1}) | {:.2} |",
            s.projects,
            s.ticks,
            ms(s.heaviest_cpu.0),
            s.heaviest_cpu.1,
            ms(s.p99_cpu_ns),
            ms(s.mean_cpu_ns),
            s.max.statements,
            s.max.rows_returned,
            s.max.rows_written,
            s.max.scan_steps,
            s.max.pages_touched,
            s.max.subrequests,
            FREE.subrequests,
            mark(s.max.subrequests <= u64::from(FREE.subrequests)),
            s.total.rows_written as f64 / s.projects as f64,
            s.total.rows_written_with_indexes as f64 / s.projects as f64,
            s.ticks as f64 / s.projects as f64,
        );
        summaries.push(s);
    }
    let (Some(small), Some(large)) = (summaries.first(), summaries.last()) else {
        return;
    };
    let ratio = |a: u64, b: u64| a as f64 / b.max(1) as f64;
    let cpu = ratio(large.max.cpu_ns, small.max.cpu_ns);
    let p99 = ratio(large.p99_cpu_ns, small.p99_cpu_ns);
    let mean = ratio(large.mean_cpu_ns, small.mean_cpu_ns);
    let pages = ratio(large.max.pages_touched, small.max.pages_touched);
    let read = ratio(large.max.rows_returned, small.max.rows_returned);
    let written = ratio(large.max.rows_written, small.max.rows_written);
    let scans = summaries
        .iter()
        .map(|s| s.max.scan_steps)
        .max()
        .unwrap_or(0);
    println!(
        "heaviest tick at {} ÷ at {} projects: CPU {cpu:.2} {} (p99 {p99:.2}, mean {mean:.2}), rows returned {read:.2} {}, rows written {written:.2} {} (target ≤ 1.5); full-scan steps {scans} {} (target 0); B-tree pages touched {pages:.2} (grows with the tree's depth, log N)",
        large.projects,
        small.projects,
        mark(cpu <= 1.5),
        mark(read <= 1.5),
        mark(written <= 1.5),
        mark(scans == 0),
    );
    let heaviest = summaries.iter().map(|s| s.max.cpu_ns).max().unwrap_or(0);
    println!(
        "heaviest tick of all: {} ms host CPU {} (target ≤ 2 ms; production free plan: 10 ms)",
        ms(heaviest),
        mark(heaviest <= 2_000_000)
    );
    println!(
        "simulated minutes to finish (instant GitLab, 6 exports/min): {}",
        summaries
            .iter()
            .map(|s| format!(
                "{} projects {} min (ideal {})",
                s.projects,
                s.minutes,
                s.projects.div_ceil(6)
            ))
            .collect::<Vec<_>>()
            .join(", ")
    );
}

/// Whole runs on the free plan against a GitLab whose exports take realistic times: what each
/// exported project costs in rows written (index entries and alarms counted), Durable Object
/// requests and GitLab requests, and GitLab's busiest minute.
fn realistic_durations(sizes: &[u64]) {
    let mut durations: Vec<u64> = (1..=sizes.iter().copied().max().unwrap_or(0))
        .map(export_duration_ms)
        .collect();
    durations.sort_unstable();
    let Some(&longest) = durations.last() else {
        return;
    };
    let median = durations[durations.len() / 2];
    let over_20 = durations.iter().filter(|&&d| d > 20 * MINUTE).count();
    println!(
        "\nAt realistic export durations (free plan, object kept in memory; seeded log-normal per project: median {:.1} min, {:.1} % over 20 min, longest {:.0} min; GitLab reads `none` once the upload is in):",
        median as f64 / MINUTE as f64,
        100.0 * over_20 as f64 / durations.len() as f64,
        longest as f64 / MINUTE as f64,
    );
    for &projects in sizes {
        let run = whole_run(projects, FREE, false, false, Durations::Realistic);
        let exported = run.exported.max(1) as f64;
        let rows: u64 = run.ticks.iter().map(|(_, u)| u.rows_written).sum();
        let with_indexes: u64 = run
            .ticks
            .iter()
            .map(|(_, u)| u.rows_written_with_indexes)
            .sum();
        let all = (with_indexes + run.alarms) as f64 / exported;
        // The target is about a day of GitLab's exports (8,640): a smaller run's own fixed
        // cost (its preflight, its record, the ticks of its last checks) weighs on each project.
        let verdict = if run.exported >= DAY_OF_EXPORTS {
            mark(all <= ROWS_PER_PROJECT_TARGET)
        } else {
            "(a run smaller than a day of exports: its own fixed cost is shared by few projects)"
        };
        println!(
            "- {projects} projects ({} exported, {} simulated min): per exported project {:.1} rows written by statements + {:.1} index entries inserted + {:.1} alarms = {all:.1} rows written, all counted as Cloudflare bills them {verdict} (target ≤ {ROWS_PER_PROJECT_TARGET} from a day of exports on; without index entries {:.1})",
            run.exported,
            run.minutes,
            rows as f64 / exported,
            (with_indexes - rows) as f64 / exported,
            run.alarms as f64 / exported,
            (rows + run.alarms) as f64 / exported,
        );
        println!(
            "- {projects} projects: per exported project {:.2} Durable Object requests (ticks), {:.2} GitLab requests; peak GitLab requests in any minute {} {} (GitLab.com allows {GITLAB_REQUESTS_PER_MINUTE} a minute per user)",
            run.ticks.len() as f64 / exported,
            run.gitlab_requests as f64 / exported,
            run.peak_gitlab_per_minute,
            mark(run.peak_gitlab_per_minute <= GITLAB_REQUESTS_PER_MINUTE),
        );
        if std::env::var_os("BENCH_PROFILE").is_some() {
            let idle = run.ticks.iter().filter(|(_, u)| u.subrequests == 0).count();
            println!(
                "  ticks without a subrequest {idle}; alarms by timer {:?}; alarms set again for the time already pending {}",
                run.alarms_for, run.alarms_pending_again
            );
        }
    }
}

// ---------------------------------------------------------------------------------------------
// A week of daily changed-only runs.

const DAY: u64 = 24 * HOUR;
/// Simulated days of the week's section.
const WEEK_DAYS: u64 = 7;
/// `FULL_BACKUP_EVERY_DAYS` and `CHANGED_OVERLAP_MINUTES` of the week's runs (the defaults).
const FULL_EVERY_DAYS: u64 = 7;
const OVERLAP_MINUTES: u64 = 120;
/// The share of projects with activity each simulated day.
const CHANGED_PER_DAY: f64 = 0.05;
const CHANGES_SEED: u64 = 0xAC71_0E55;
/// GitLab moves a project's `last_activity_at` at most once an hour
/// (`Event::RESET_PROJECT_ACTIVITY_INTERVAL`): an event within the hour after the shown time
/// leaves it.
const ACTIVITY_RESOLUTION_MS: u64 = HOUR;
/// The Durable Object's daily allowances on the free plan.
const DO_ROWS_PER_DAY: u64 = 100_000;
const DO_REQUESTS_PER_DAY: u64 = 100_000;

/// The projects' activity over the simulated days, as it happens and as GitLab shows it.
///
/// Each day a seeded 5 % of the projects have activity: a burst of one to three events (a
/// push, then perhaps a comment or a merge within the next 45 min each), starting at a seeded
/// moment of the day. GitLab's `last_activity_at` moves to an event's time only if it shows a
/// time more than an hour older, as GitLab does; a later event of the burst is then not shown.
struct Activity {
    /// What `last_activity_at` shows, by project id − 1.
    shown: Vec<u64>,
    /// Every event of the simulation by time: (at, project id).
    events: Vec<(u64, u64)>,
    /// Events up to here have happened.
    next: usize,
}

impl Activity {
    fn new(projects: u64, days: u64) -> Activity {
        // Before the simulation, every project was last active more than a month ago (older
        // than any backup, so none is changed at the start).
        let shown = (1..=projects)
            .map(|id| T0 - 30 * DAY - (id % 1440) * MINUTE)
            .collect();
        let mut events = Vec::new();
        for day in 0..days {
            for id in 1..=projects {
                let draw = splitmix64(CHANGES_SEED ^ (day << 40) ^ id.wrapping_mul(0x9E37_79B9));
                if unit(draw) > CHANGED_PER_DAY {
                    continue;
                }
                let mut at = T0 + day * DAY + (unit(splitmix64(draw)) * DAY as f64) as u64;
                let burst = 1 + splitmix64(draw ^ 1) % 3;
                for k in 0..burst {
                    if k > 0 {
                        at += (unit(splitmix64(draw ^ (k + 1))) * (45 * MINUTE) as f64) as u64;
                    }
                    events.push((at, id));
                }
            }
        }
        events.sort_unstable();
        Activity {
            shown,
            events,
            next: 0,
        }
    }

    /// Lets the events up to `now_ms` happen.
    fn advance(&mut self, now_ms: u64) {
        while let Some(&(at, id)) = self.events.get(self.next) {
            if at > now_ms {
                break;
            }
            let shown = &mut self.shown[(id - 1) as usize];
            if at >= *shown + ACTIVITY_RESOLUTION_MS {
                *shown = at;
            }
            self.next += 1;
        }
    }

    fn shown(&self, id: u64) -> u64 {
        self.shown[(id - 1) as usize]
    }

    /// Each project's events in order, by project id − 1.
    fn by_project(&self, projects: u64) -> Vec<Vec<u64>> {
        let mut by_project = vec![Vec::new(); projects as usize];
        for &(at, id) in &self.events {
            by_project[(id - 1) as usize].push(at);
        }
        by_project
    }
}

fn week_config() -> Config {
    let vars: HashMap<&str, String> = [
        ("GITLAB_URL", "https://gitlab.example.com".to_owned()),
        ("GITLAB_TOKEN", "glpat-benchmark".to_owned()),
        ("GROUPS_TO_BACKUP", "bench".to_owned()),
        ("AWS_S3_BUCKET", "backups".to_owned()),
        ("AWS_ACCESS_KEY_ID", "AKIDBENCHMARK".to_owned()),
        ("AWS_SECRET_ACCESS_KEY", "benchmark-secret".to_owned()),
        ("AWS_REGION", "eu-west-1".to_owned()),
        ("SUBREQUESTS_PER_INVOCATION", FREE.subrequests.to_string()),
        ("CPU_MS_PER_INVOCATION", FREE.cpu_ms.to_string()),
        // The free plan's daily allowances, as the worker keeps within them.
        ("DO_ROWS_WRITTEN_PER_DAY", DO_ROWS_PER_DAY.to_string()),
        ("DO_REQUESTS_PER_DAY", DO_REQUESTS_PER_DAY.to_string()),
        ("BACKUP_INTERVAL_HOURS", "24".to_owned()),
        ("INCREMENTAL", "true".to_owned()),
        ("FULL_BACKUP_EVERY_DAYS", FULL_EVERY_DAYS.to_string()),
        ("CHANGED_OVERLAP_MINUTES", OVERLAP_MINUTES.to_string()),
    ]
    .into_iter()
    .collect();
    Config::from_lookup(|name| vars.get(name).cloned()).expect("the week's configuration")
}

/// When the steady state backed up project `id` last, before the simulation: on the latest day
/// before it whose number modulo `FULL_EVERY_DAYS` is the id's (the day of its full export), at
/// a moment of that day spread by id (exports go on all day).
fn steady_backup_requested_ms(id: u64) -> u64 {
    let yesterday = T0 / DAY - 1;
    let since =
        (yesterday % FULL_EVERY_DAYS + FULL_EVERY_DAYS - id % FULL_EVERY_DAYS) % FULL_EVERY_DAYS;
    (yesterday - since) * DAY + splitmix64(id ^ CHANGES_SEED) % (20 * HOUR)
}

/// The steady state of a store that has run daily changed-only runs for a while: the two
/// previous runs' rows (as [`prefill`] writes them, so they are pruned as the week goes), the
/// previous run's settings (so its backups count as the new runs'), and every project's newest
/// verified backup, written through the store's own statement, requested on the latest day of
/// its full export (so one project in `FULL_EVERY_DAYS` is due each day).
fn prefill_steady(metered: &Metered, config: &Config, projects: u64) {
    prefill(&metered.db, projects);
    // The settings a run after none starts with: every backup in the store counts.
    let settings = gitlab_backup::config::RunSettings::of(config, None)
        .after(None)
        .to_json();
    metered
        .db
        .0
        .execute(
            "UPDATE runs SET settings = ?1 WHERE id = 2",
            rusqlite::params![settings],
        )
        .expect("the previous run's settings");
    let store = Store::opened(metered);
    metered.db.0.execute_batch("BEGIN").expect("begin");
    for id in 1..=projects {
        let path = format!("bench/team-{}/project-{id}", (id - 1) / PER_SUBGROUP + 1);
        let requested = steady_backup_requested_ms(id);
        let run_started = requested - requested % DAY;
        store
            .record_backup(&gitlab_backup::store::Backup {
                project_id: id,
                key: gitlab_backup::s3::object_key(
                    &config.s3_prefix,
                    &path,
                    gitlab_backup::time::system_time(run_started),
                ),
                path,
                run_id: 1,
                at_ms: requested + export_duration_ms(id),
                size: 524_288,
                requested_ms: Some(requested),
            })
            .expect("a backup");
    }
    metered.db.0.execute_batch("COMMIT").expect("commit");
}

/// What one simulated day cost and did.
#[derive(Clone, Default)]
struct WeekDay {
    /// Exports GitLab accepted.
    exports: u64,
    /// Rows written, index entries and alarms counted (as Cloudflare bills them).
    rows: u64,
    /// Durable Object requests: every cron tick and alarm.
    requests: u64,
    /// Ticks the worker paused for a daily allowance, and when the first one was.
    paused: u64,
    paused_from: Option<u64>,
    runs_started: u64,
    runs_finished: u64,
    listed: u64,
    unchanged: u64,
    verified: u64,
}

#[derive(Default)]
struct WeekFigures {
    projects: u64,
    days: Vec<WeekDay>,
    /// Host CPU of each tick (engine calls only) and the rows it wrote (with index entries and
    /// its alarm).
    tick_cpu_ns: Vec<u64>,
    tick_rows: Vec<u64>,
    /// The oldest any project's newest backup got (from that backup's export request).
    oldest_backup_ms: u64,
    /// Events of the projects, and how long until a backup asked for after each was verified.
    changes: u64,
    delays_ms: Vec<u64>,
    /// Events with no backup after them at the end, and the longest wait of those.
    waiting: u64,
    longest_waiting_ms: u64,
    /// Rows written by kind of statement over the week (`DELETE projects`: pruned runs).
    written_by_kind: HashMap<String, u64>,
    /// Rows written by the ticks that listed pages, and the projects they listed.
    listing_rows: u64,
    listing_projects: u64,
    /// Host seconds the simulation took.
    wall_s: f64,
}

/// `days` simulated days of a `projects`-project instance on the free plan, through the real
/// engine: ticks by cron each minute and by the alarm, realistic export durations, the daily
/// allowances kept, the store starting in the steady state of daily changed-only runs.
fn week(projects: u64, days: u64) -> WeekFigures {
    let wall = std::time::Instant::now();
    let config = week_config();
    let mut metered = Metered::new();
    Store::open(&metered).expect("schema");
    metered.learn_indexes();
    prefill_steady(&metered, &config, projects);
    let mut world = World::new(projects, Durations::Realistic);
    let activity = Activity::new(projects, days);
    let events = activity.by_project(projects);
    world.activity = Some(activity);
    // Per project: the export request of its newest verified backup, and how many of its events
    // a verified backup came after.
    let mut newest: Vec<u64> = (1..=projects).map(steady_backup_requested_ms).collect();
    let mut covered = vec![0usize; projects as usize];
    let mut figures = WeekFigures {
        projects,
        days: vec![WeekDay::default(); days as usize],
        ..WeekFigures::default()
    };
    let end = T0 + days * DAY;
    let mut now = T0;
    let mut next_cron = T0;
    let mut alarm: Option<u64> = None;
    metered.take();
    metered.written_by_kind.borrow_mut().clear();
    loop {
        if alarm.is_some_and(|a| a < next_cron) {
            now = now.max(alarm.take().expect("alarm"));
        } else {
            now = now.max(next_cron);
            next_cron += MINUTE;
        }
        if now >= end {
            break;
        }
        let day = ((now - T0) / DAY) as usize;
        figures.days[day].requests += 1;
        let mut cpu = 0;
        let started = thread_cpu_ns();
        let store = Store::opened(&metered);
        let begin = Tick::begin(&store, &config, now, Start::IfDue).expect("begin");
        cpu += thread_cpu_ns() - started;
        let mut tick = match begin {
            Begin::Tick(tick) => tick,
            Begin::Idle => {
                let usage = metered.take();
                figures.days[day].rows += usage.rows_written_with_indexes;
                continue;
            }
            Begin::Paused(_) => {
                let usage = metered.take();
                figures.days[day].rows += usage.rows_written_with_indexes;
                figures.days[day].paused += 1;
                figures.days[day].paused_from.get_or_insert(now);
                continue;
            }
            Begin::AlreadyRunning(_) => unreachable!("IfDue resumes"),
        };
        loop {
            let started = thread_cpu_ns();
            let steps = tick.next_steps(now).expect("next_steps");
            cpu += thread_cpu_ns() - started;
            if steps.is_empty() {
                break;
            }
            let answers: Vec<HttpResult> = steps
                .iter()
                .map(|step| world.answer(&step.request, now))
                .collect();
            now += LATENCY_MS;
            let started = thread_cpu_ns();
            for (step, answer) in steps.into_iter().zip(answers) {
                tick.handle(step, answer, now).expect("handle");
            }
            cpu += thread_cpu_ns() - started;
        }
        let started = thread_cpu_ns();
        let report = tick.finish(now).expect("finish");
        cpu += thread_cpu_ns() - started;
        let usage = metered.take();
        let mut rows = usage.rows_written_with_indexes;
        if let Some(at) = report.wake_at_ms {
            alarm = Some(at);
            rows += 1;
        }
        figures
            .tick_cpu_ns
            .push(cpu.saturating_sub(usage.metering_ns));
        figures.tick_rows.push(rows);
        let today = &mut figures.days[day];
        today.rows += rows;
        let mut listed = 0;
        for event in &report.events {
            match event {
                Event::ExportRequested { .. } => today.exports += 1,
                Event::RunStarted { .. } => today.runs_started += 1,
                Event::RunFinished { .. } => today.runs_finished += 1,
                Event::PageListed {
                    projects,
                    unchanged,
                    ..
                } => {
                    listed += *projects as u64;
                    today.unchanged += unchanged;
                }
                Event::Verified { project_id, .. } => {
                    today.verified += 1;
                    let i = (*project_id - 1) as usize;
                    let requested = world.exports.get(project_id).copied().unwrap_or(now);
                    figures.oldest_backup_ms = figures.oldest_backup_ms.max(now - newest[i]);
                    newest[i] = newest[i].max(requested);
                    while let Some(&at) = events[i].get(covered[i]) {
                        if at > requested {
                            break;
                        }
                        figures.delays_ms.push(now - at);
                        covered[i] += 1;
                    }
                }
                _ => {}
            }
        }
        today.listed += listed;
        if listed > 0 {
            figures.listing_rows += rows;
            figures.listing_projects += listed;
        }
    }
    for (i, project_events) in events.iter().enumerate() {
        figures.oldest_backup_ms = figures.oldest_backup_ms.max(end - newest[i]);
        figures.changes += project_events.iter().filter(|&&at| at < end).count() as u64;
        for &at in project_events[covered[i]..].iter().filter(|&&at| at < end) {
            figures.waiting += 1;
            figures.longest_waiting_ms = figures.longest_waiting_ms.max(end - at);
        }
    }
    figures.written_by_kind = metered.written_by_kind.take();
    figures.wall_s = wall.elapsed().as_secs_f64();
    figures
}

fn days_text(ms: u64) -> String {
    format!("{:.2} d", ms as f64 / DAY as f64)
}

fn hours_text(ms: u64) -> String {
    format!("{:.1} h", ms as f64 / HOUR as f64)
}

/// The `q` quantile of `values` (sorted here).
fn quantile(values: &mut [u64], q: f64) -> u64 {
    values.sort_unstable();
    match values.len() {
        0 => 0,
        n => values[((n as f64 * q) as usize).min(n - 1)],
    }
}

/// Whether a week's daily runs kept up: no tick paused for an allowance, and every run but the
/// last finished within the week.
fn kept_up(w: &WeekFigures) -> bool {
    let paused: u64 = w.days.iter().map(|d| d.paused).sum();
    let started: u64 = w.days.iter().map(|d| d.runs_started).sum();
    let finished: u64 = w.days.iter().map(|d| d.runs_finished).sum();
    paused == 0 && finished + 1 >= started && started >= w.days.len() as u64
}

/// The week's section: daily changed-only runs of each size over `WEEK_DAYS` simulated days,
/// printed day by day with ✓ or ✗ against the targets, and the largest instance the free plan's
/// allowances carry, computed from the measured per-project costs.
fn week_section(sizes: &[u64], days: u64) {
    println!(
        "\nA week of daily changed-only runs ({days} simulated days; free plan: {} subrequests and {} ms CPU per invocation, {DO_ROWS_PER_DAY} rows written and {DO_REQUESTS_PER_DAY} requests a day; BACKUP_INTERVAL_HOURS 24, FULL_BACKUP_EVERY_DAYS {FULL_EVERY_DAYS}, CHANGED_OVERLAP_MINUTES {OVERLAP_MINUTES}; realistic export durations; each day {:.0} % of the projects active, a burst of 1 to 3 events, GitLab's last_activity_at moving at most once an hour).",
        FREE.subrequests,
        FREE.cpu_ms,
        CHANGED_PER_DAY * 100.0
    );
    println!(
        "Start: the steady state, not an empty store: every project has a verified backup requested on the latest day of its full export (day mod {FULL_EVERY_DAYS} = id mod {FULL_EVERY_DAYS}) before the week, so 1 in {FULL_EVERY_DAYS} is due each day; the two previous daily runs' rows are in the store (pruned as the week goes). From an empty store, the first run exports every project: at 6 a minute, 100,000 projects take {:.1} days.",
        100_000.0 / DAY_OF_EXPORTS as f64
    );
    let mut weeks = Vec::new();
    for &projects in sizes {
        let w = week(projects, days);
        println!("\n{projects} projects ({:.0} s on this host):", w.wall_s);
        println!("| day | runs started / finished | projects listed | of them unchanged | exports (≤ {DAY_OF_EXPORTS}) | verified | DO rows written (≤ {DO_ROWS_PER_DAY}) | DO requests (≤ {DO_REQUESTS_PER_DAY}) | ticks paused (from) |");
        println!("|---:|---:|---:|---:|---:|---:|---:|---:|---|");
        for (i, d) in w.days.iter().enumerate() {
            println!(
                "| {i} | {} / {} | {} | {} | {} {} | {} | {} {} | {} {} | {} |",
                d.runs_started,
                d.runs_finished,
                d.listed,
                d.unchanged,
                d.exports,
                mark(d.exports <= DAY_OF_EXPORTS),
                d.verified,
                d.rows,
                mark(d.rows <= DO_ROWS_PER_DAY),
                d.requests,
                mark(d.requests <= DO_REQUESTS_PER_DAY),
                match d.paused_from {
                    Some(at) => format!("{} (from {})", d.paused, gitlab_backup::time::rfc3339(at)),
                    None => "0".to_owned(),
                },
            );
        }
        let limit = (FULL_EVERY_DAYS + 1) * DAY;
        println!(
            "- oldest newest backup any project reached (from its export request): {} {} (target ≤ FULL_BACKUP_EVERY_DAYS + 1 = {} d)",
            days_text(w.oldest_backup_ms),
            mark(w.oldest_backup_ms <= limit),
            FULL_EVERY_DAYS + 1
        );
        let mut delays = w.delays_ms.clone();
        let worst = delays.iter().copied().max().unwrap_or(0);
        let late = delays.iter().filter(|&&d| d > DAY).count();
        let overdue = w.waiting > 0 && w.longest_waiting_ms > DAY;
        println!(
            "- {} events of changes; from each to the verification of a backup requested after it: median {}, p99 {}, max {}, {late} over a day; {} still waiting at the end (longest {}) {} (target: every change in a verified backup within a day)",
            w.changes,
            hours_text(quantile(&mut delays, 0.5)),
            hours_text(quantile(&mut delays, 0.99)),
            hours_text(worst),
            w.waiting,
            hours_text(w.longest_waiting_ms),
            mark(late == 0 && !overdue),
        );
        if late > 0 {
            println!(
                "  (a change made after its day's run listed the project waits for the next day's run, then for its turn among that run's exports, which go by project id: up to a day plus the run's exporting time)"
            );
        }
        let per_listed = w.listing_rows as f64 / w.listing_projects.max(1) as f64;
        let inserted = w
            .written_by_kind
            .get("INSERT projects")
            .copied()
            .unwrap_or(0);
        let pruned = w
            .written_by_kind
            .get("DELETE projects")
            .copied()
            .unwrap_or(0);
        let listed = w.listing_projects.max(1) as f64;
        let own = inserted as f64 / listed;
        println!(
            "- rows written per unchanged project and run: {own:.2} as listed (its own row) {} (target ≤ 1); billed in all {:.2}: + {:.2} its page's share (the listing's row, the run's counters, the usage record, the alarm) + {:.2} its row's DELETE when the run is pruned two runs later ({pruned} rows this week)",
            mark(own <= 1.0),
            per_listed + pruned as f64 / listed,
            per_listed - own,
            pruned as f64 / listed,
        );
        let mut kinds: Vec<(&String, &u64)> = w.written_by_kind.iter().collect();
        kinds.sort_by_key(|(_, rows)| std::cmp::Reverse(**rows));
        println!(
            "- rows written over the week by kind of statement: {}",
            kinds
                .iter()
                .map(|(kind, rows)| format!("{kind} {rows}"))
                .collect::<Vec<_>>()
                .join(", ")
        );
        weeks.push(w);
    }
    let (Some(small), Some(large)) = (weeks.first(), weeks.last()) else {
        return;
    };
    let p99 = |w: &WeekFigures| quantile(&mut w.tick_cpu_ns.clone(), 0.99);
    let max_cpu = |w: &WeekFigures| w.tick_cpu_ns.iter().copied().max().unwrap_or(0);
    let max_rows = |w: &WeekFigures| w.tick_rows.iter().copied().max().unwrap_or(0);
    let ratio = |a: u64, b: u64| a as f64 / b.max(1) as f64;
    let cpu = ratio(p99(large), p99(small));
    let rows = ratio(max_rows(large), max_rows(small));
    println!(
        "\nPer tick over the week, {} ÷ {} projects: p99 tick CPU {} ÷ {} ms = {cpu:.2} {} (heaviest {} ÷ {} ms, one run, not the minimum of repeats); most rows written by a tick {} ÷ {} = {rows:.2} {} (target ≤ 1.5)",
        large.projects,
        small.projects,
        ms(p99(large)),
        ms(p99(small)),
        mark(cpu <= 1.5),
        ms(max_cpu(large)),
        ms(max_cpu(small)),
        max_rows(large),
        max_rows(small),
        mark(rows <= 1.5),
    );
    // Per day, cost = fixed + per project × projects, fitted to the sizes whose runs kept up.
    let fitted: Vec<&WeekFigures> = weeks.iter().filter(|w| kept_up(w)).collect();
    if fitted.len() < 2 {
        println!(
            "the largest instance a free account carries daily: not computed (fewer than two sizes kept up)"
        );
        return;
    }
    let per_day = |w: &WeekFigures, f: &dyn Fn(&WeekDay) -> u64| {
        w.days.iter().map(f).sum::<u64>() as f64 / w.days.len() as f64
    };
    let fit = |f: &dyn Fn(&WeekDay) -> u64| {
        let n = fitted.len() as f64;
        let xs: Vec<f64> = fitted.iter().map(|w| w.projects as f64).collect();
        let ys: Vec<f64> = fitted.iter().map(|w| per_day(w, f)).collect();
        let (mx, my) = (xs.iter().sum::<f64>() / n, ys.iter().sum::<f64>() / n);
        let sxy: f64 = xs.iter().zip(&ys).map(|(x, y)| (x - mx) * (y - my)).sum();
        let sxx: f64 = xs.iter().map(|x| (x - mx) * (x - mx)).sum();
        let slope = sxy / sxx;
        (my - slope * mx, slope)
    };
    let allowances: [(&str, u64, (f64, f64)); 3] = [
        ("exports", DAY_OF_EXPORTS, fit(&|d| d.exports)),
        ("DO rows written", DO_ROWS_PER_DAY, fit(&|d| d.rows)),
        ("DO requests", DO_REQUESTS_PER_DAY, fit(&|d| d.requests)),
    ];
    let carried: Vec<(&str, u64, f64, f64, u64)> = allowances
        .iter()
        .map(|&(name, limit, (fixed, per))| {
            let most = if per > 0.0 {
                ((limit as f64 - fixed) / per).max(0.0) as u64
            } else {
                u64::MAX
            };
            (name, limit, fixed, per, most)
        })
        .collect();
    let binding = carried
        .iter()
        .min_by_key(|c| c.4)
        .expect("three allowances");
    println!(
        "the largest instance a free account carries daily at {:.0} % change: {} projects, computed (not simulated) from the per-project costs a day measured at {} projects (a fixed part plus one per project, fitted): {}; {} runs out first",
        CHANGED_PER_DAY * 100.0,
        binding.4,
        fitted
            .iter()
            .map(|w| w.projects.to_string())
            .collect::<Vec<_>>()
            .join(" and "),
        carried
            .iter()
            .map(|(name, limit, fixed, per, most)| format!(
                "{name} {fixed:.0} + {per:.3} per project a day (≤ {limit}: up to {most} projects)"
            ))
            .collect::<Vec<_>>()
            .join("; "),
        binding.0,
    );
    for w in &weeks {
        if !kept_up(w) {
            let paused: u64 = w.days.iter().map(|d| d.paused).sum();
            let exports: u64 = w.days.iter().map(|d| d.exports).sum();
            println!(
                "- {} projects did not keep up ✗: {paused} ticks paused for a daily allowance; {} exports a day on average (GitLab allows {DAY_OF_EXPORTS}), while {:.0} a day are due ({:.0} full exports, 1 in {FULL_EVERY_DAYS}, plus about {:.0} changed)",
                w.projects,
                exports / w.days.len() as u64,
                w.projects as f64 * (1.0 / FULL_EVERY_DAYS as f64 + CHANGED_PER_DAY * (1.0 - 1.0 / FULL_EVERY_DAYS as f64)),
                w.projects as f64 / FULL_EVERY_DAYS as f64,
                w.projects as f64 * CHANGED_PER_DAY * (1.0 - 1.0 / FULL_EVERY_DAYS as f64),
            );
        }
    }
}
