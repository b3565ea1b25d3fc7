//! Helpers shared by the end-to-end tests: reading the GitLab stand-in's export records, the object
//! keys the worker chose, what landed in s3s-fs, the worker's log events, and running a check
//! against a stack that is always stopped afterwards.

// Each test binary uses its own subset.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::future::Future;
use std::io::Read;
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use gitlab_backup::engine::Event;
use testkit::stack::LocalStack;
use testkit::standin::{ExportRecord, Project, ProjectRef, Seed};

/// The export requests GitLab accepted (202).
pub fn accepted(exports: &[ExportRecord]) -> Vec<&ExportRecord> {
    exports.iter().filter(|e| e.status == 202).collect()
}

pub fn project_id(record: &ExportRecord) -> u64 {
    match &record.project_id {
        ProjectRef::Known(id) => *id,
        ProjectRef::Unknown(raw) => panic!("the worker exported an unknown project {raw:?}"),
    }
}

/// How many accepted exports each project got, by project id.
pub fn accepted_per_project(exports: &[ExportRecord]) -> BTreeMap<u64, usize> {
    let mut counts = BTreeMap::new();
    for record in accepted(exports) {
        *counts.entry(project_id(record)).or_default() += 1;
    }
    counts
}

/// How many answers had this status.
pub fn answered(exports: &[ExportRecord], status: u16) -> usize {
    exports.iter().filter(|e| e.status == status).count()
}

/// The most export requests (any answer) that arrived within one span `[t, t + span)`, and the
/// arrival that opens the fullest span.
pub fn most_in_any_span(
    exports: &[ExportRecord],
    span: Duration,
) -> (usize, Option<&ExportRecord>) {
    let mut arrivals: Vec<&ExportRecord> = exports.iter().collect();
    arrivals.sort_by_key(|e| e.at);
    let mut most = (0, None);
    for (i, opening) in arrivals.iter().enumerate() {
        let within = arrivals[i..]
            .iter()
            .take_while(|e| e.at.duration_since(opening.at).unwrap_or_default() < span)
            .count();
        if within > most.0 {
            most = (within, Some(*opening));
        }
    }
    most
}

/// Every request of the fullest span, readably: for failure messages.
pub fn describe_span(exports: &[ExportRecord], opening: &ExportRecord, span: Duration) -> String {
    exports
        .iter()
        .filter(|e| {
            e.at.duration_since(opening.at)
                .is_ok_and(|since| since < span)
        })
        .map(|e| {
            format!(
                "+{:>6} ms  {:?} → {}",
                e.at.duration_since(opening.at)
                    .unwrap_or_default()
                    .as_millis(),
                e.project_id,
                e.status
            )
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// Fails when some span of `span` held more than `limit` export requests.
pub fn ensure_at_most_per_span(
    exports: &[ExportRecord],
    limit: usize,
    span: Duration,
) -> Result<()> {
    let (most, opening) = most_in_any_span(exports, span);
    ensure!(
        most <= limit,
        "{most} export requests arrived within {span:?} (limit {limit}):\n{}",
        opening.map_or_else(String::new, |o| describe_span(exports, o, span))
    );
    Ok(())
}

/// The object key inside a presigned path-style URL `http://host:port/<bucket>/<key>?…`.
pub fn key_of(upload_url: &str) -> String {
    let url = url::Url::parse(upload_url).expect("the worker sends absolute upload URLs");
    let path = url.path().trim_start_matches('/');
    let (_bucket, key) = path.split_once('/').expect("path-style URL");
    key.to_owned()
}

/// `%Y-%m-%d-%H-%M-%S.tar.gz`
pub fn is_run_timestamp_file(name: &str) -> bool {
    let Some(stamp) = name.strip_suffix(".tar.gz") else {
        return false;
    };
    let parts: Vec<&str> = stamp.split('-').collect();
    parts.len() == 6
        && parts
            .iter()
            .zip([4, 2, 2, 2, 2, 2])
            .all(|(p, len)| p.len() == len && p.bytes().all(|b| b.is_ascii_digit()))
}

/// The object name of a run (`%Y-%m-%d-%H-%M-%S.tar.gz`) from `/status`'s `run.started`
/// (RFC 3339, UTC).
pub fn run_object_name(status: &serde_json::Value) -> Result<String> {
    let started = status["run"]["started"]
        .as_str()
        .with_context(|| format!("/status has no run.started: {status}"))?;
    let seconds = started
        .get(..19)
        .with_context(|| format!("run.started {started:?} is no RFC 3339 time"))?;
    let name = format!("{}.tar.gz", seconds.replace(['T', ':'], "-"));
    ensure!(
        is_run_timestamp_file(&name) && started.ends_with('Z'),
        "run.started {started:?} is no UTC RFC 3339 time"
    );
    Ok(name)
}

/// The names of a gzip tarball's entries.
pub fn tarball_entries(bytes: &[u8]) -> Result<Vec<String>> {
    let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(bytes));
    let mut names = Vec::new();
    for entry in archive.entries()? {
        let mut entry = entry?;
        let name = entry.path()?.to_string_lossy().into_owned();
        let mut content = Vec::new();
        entry.read_to_end(&mut content)?;
        names.push(name);
    }
    Ok(names)
}

/// Fails unless every project's export is in s3s-fs at `<path_with_namespace>/<object_name>`, as
/// a gzip tarball holding `VERSION`.
pub fn ensure_objects_landed(
    stack: &LocalStack,
    projects: &[&Project],
    object_name: &str,
) -> Result<()> {
    let mut missing = Vec::new();
    for project in projects {
        let key = format!("{}/{object_name}", project.path_with_namespace);
        match std::fs::read(stack.s3.object_path(&key)) {
            Ok(bytes) => {
                let entries =
                    tarball_entries(&bytes).with_context(|| format!("{key} is no gzip tarball"))?;
                ensure!(
                    entries.iter().any(|e| e == "VERSION"),
                    "{key} lacks VERSION: {entries:?}"
                );
            }
            Err(_) => missing.push(key),
        }
    }
    ensure!(
        missing.is_empty(),
        "{} of {} objects are not in s3s-fs: {missing:?}; what is there: {:?}",
        missing.len(),
        projects.len(),
        stack.s3.objects()?
    );
    Ok(())
}

/// The projects owned by these groups or their subgroups (not those shared with them), in id order.
pub fn own_projects<'s>(seed: &'s Seed, groups: &[&str]) -> Vec<&'s Project> {
    let mut projects: Vec<&Project> = groups
        .iter()
        .flat_map(|group| seed.own_projects(group))
        .collect();
    projects.sort_by_key(|p| p.id);
    projects.dedup_by_key(|p| p.id);
    projects
}

/// `/status`'s `run.projects` counter `name`.
pub fn count(status: &serde_json::Value, name: &str) -> Result<u64> {
    status["run"]["projects"][name]
        .as_u64()
        .with_context(|| format!("/status has no run.projects.{name}: {status}"))
}

/// The lines the worker's glue logs itself, beside the engine's [`Event`]s.
pub const GLUE_LINES: [&str; 3] = ["config_error", "storage_error", "tick_failed"];

/// One `event` line of the worker's log.
#[derive(Clone, Debug)]
pub enum Logged {
    /// One of the engine's events.
    Event(Event),
    /// One of [`GLUE_LINES`], kept as it was logged.
    Glue(serde_json::Value),
}

/// The worker's `event` lines so far, in order; fails on a line that is neither an engine event
/// nor one of [`GLUE_LINES`].
pub fn logged(stack: &LocalStack) -> Result<Vec<Logged>> {
    stack
        .wrangler
        .events()?
        .into_iter()
        .map(|line| {
            let name = line["event"].as_str().unwrap_or_default();
            if GLUE_LINES.contains(&name) {
                return Ok(Logged::Glue(line));
            }
            serde_json::from_value(line.clone())
                .map(Logged::Event)
                .with_context(|| format!("a log line that is no engine event: {line}"))
        })
        .collect()
}

/// The engine's events in the worker's log so far, in order (the glue's own lines left out).
pub fn engine_events(stack: &LocalStack) -> Result<Vec<Event>> {
    Ok(logged(stack)?
        .into_iter()
        .filter_map(|logged| match logged {
            Logged::Event(event) => Some(event),
            Logged::Glue(_) => None,
        })
        .collect())
}

/// Runs `check` on a started stack, then stops the stack whatever happened; on failure points at
/// the stack's files (worker log, S3 objects, Durable Object state).
pub async fn checked<F, Fut>(stack: LocalStack, check: F) -> Result<()>
where
    F: FnOnce(LocalStack) -> Fut,
    Fut: Future<Output = (Option<LocalStack>, Result<()>)>,
{
    let dir = stack.dir.clone();
    let (stack, mut result) = check(stack).await;
    if let Some(stack) = &stack {
        // Whatever the test, the worker never logs a secret or a usable signature.
        result = result.and_then(|()| stack.ensure_logs_hold_nothing_secret());
    }
    if let Err(e) = &result {
        eprintln!(
            "FAILED: {e:#}\nthe stack's files (worker logs, S3, state): {}",
            dir.display()
        );
    }
    if let Some(stack) = stack {
        stack.stop().await;
    }
    result
}

/// `POST /run`, then `/status` once the run is `finished` (the cron fired every 5 s), within
/// `timeout`.
pub async fn run_to_the_end(stack: &LocalStack, timeout: Duration) -> Result<serde_json::Value> {
    let (code, answer) = stack.start_run().await?;
    ensure!(code == 202, "POST /run answered {code}: {answer}");
    stack
        .wait_for_phase("finished", Some(Duration::from_secs(5)), timeout)
        .await
}

/// Headless Chromium (the tools' build) with a window of `size`, for the status page's tests.
pub fn browser(size: (u32, u32)) -> Result<headless_chrome::Browser> {
    use headless_chrome::{Browser, LaunchOptions};
    let chromium = testkit::tools::ensure_chromium()?;
    let args = [
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
    ];
    Browser::new(
        LaunchOptions::default_builder()
            .path(Some(chromium))
            .sandbox(false)
            .window_size(Some(size))
            .args(args.iter().map(std::ffi::OsStr::new).collect())
            .build()?,
    )
}
