//! The run's record in the bucket, next to the backups: `<S3_PREFIX>_runs/<run start>/` holds
//! the preflight probe, `part-NNNNN.jsonl` (at most [`PART_SIZE`] projects each, by id, written
//! once every project has its outcome) and, at the end, `summary.json` with the totals and the
//! list of parts. This module builds the keys and the bodies; the engine writes them.

use std::time::SystemTime;

use serde::Serialize;

use crate::s3::object_key;
use crate::store::{Drills, ManifestEntry, RunRow};
use crate::time::{key_timestamp, rfc3339};

/// Projects per manifest part: as many as a listing page, so no tick handles more project rows
/// than a page brings, however large the run.
pub const PART_SIZE: u64 = 100;

fn run_folder(prefix: &str, run_started: SystemTime) -> String {
    format!("{prefix}_runs/{}/", key_timestamp(run_started))
}

/// The object that marks `prefix` as this deployment's: another deployment finding it stops,
/// so two never overwrite or "verify" each other's runs.
pub fn deployment_key(prefix: &str) -> String {
    format!("{prefix}_deployment.json")
}

/// The small object the preflight writes to prove the bucket accepts the worker's PUTs.
pub fn probe_key(prefix: &str, run_started: SystemTime) -> String {
    format!("{}preflight.json", run_folder(prefix, run_started))
}

pub fn part_key(prefix: &str, run_started: SystemTime, part: u64) -> String {
    format!("{}part-{part:05}.jsonl", run_folder(prefix, run_started))
}

pub fn summary_key(prefix: &str, run_started: SystemTime) -> String {
    format!("{}summary.json", run_folder(prefix, run_started))
}

#[derive(Serialize)]
struct Line<'a> {
    id: u64,
    path: &'a str,
    key: String,
    size: Option<u64>,
    outcome: &'static str,
    attempts: u64,
    error: Option<&'a str>,
    /// An unchanged project's: when the backup that holds it (`key`) was verified.
    #[serde(skip_serializing_if = "Option::is_none")]
    backed_up: Option<String>,
}

/// One JSON line per project.
pub fn part_body(prefix: &str, run_started: SystemTime, entries: &[ManifestEntry]) -> String {
    let mut body = String::new();
    for entry in entries {
        let (key, backed_up) = match &entry.kept {
            Some((key, at_ms)) => (key.clone(), Some(rfc3339(*at_ms))),
            None => (object_key(prefix, &entry.path, run_started), None),
        };
        let line = Line {
            id: entry.project_id,
            path: &entry.path,
            key,
            backed_up,
            size: entry.size,
            outcome: entry.outcome.as_str(),
            attempts: entry.attempts,
            error: entry.error.as_deref(),
        };
        body.push_str(&serde_json::to_string(&line).unwrap_or_default());
        body.push('\n');
    }
    body
}

#[derive(Serialize)]
struct Summary<'a> {
    run: u64,
    started: String,
    finished: String,
    listed: u64,
    exported: u64,
    verified: u64,
    failed: u64,
    /// Projects not exported: their newest backup, which their manifest line names, holds them.
    unchanged: u64,
    /// Projects without an outcome when the operator cancelled the run.
    cancelled: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    cancelled_at: Option<String>,
    group_errors: Vec<GroupError<'a>>,
    parts: Vec<String>,
    /// The restore drills so far (with `RESTORE_DRILL_NAMESPACE`): backups whose last drill
    /// passed, failed, and the latest failure.
    #[serde(skip_serializing_if = "Option::is_none")]
    drills: Option<&'a Drills>,
}

#[derive(Serialize)]
struct GroupError<'a> {
    group: &'a str,
    reason: &'a str,
}

/// The run's totals and the keys of its parts.
pub fn summary_body(
    prefix: &str,
    run: &RunRow,
    group_errors: &[(String, String)],
    drills: Option<&Drills>,
    finished_ms: u64,
) -> String {
    let started = SystemTime::UNIX_EPOCH + std::time::Duration::from_millis(run.started_ms);
    let summary = Summary {
        run: run.id,
        started: rfc3339(run.started_ms),
        finished: rfc3339(finished_ms),
        listed: run.listed,
        exported: run.exported,
        verified: run.verified,
        failed: run.failed,
        unchanged: run.unchanged,
        cancelled: run.cancelled_ms.map_or(0, |_| run.without_outcome()),
        cancelled_at: run.cancelled_ms.map(rfc3339),
        group_errors: group_errors
            .iter()
            .map(|(group, reason)| GroupError { group, reason })
            .collect(),
        parts: (1..=run.manifest_parts)
            .map(|part| part_key(prefix, started, part))
            .collect(),
        drills,
    };
    serde_json::to_string_pretty(&summary).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn at(seconds: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(seconds)
    }

    #[test]
    fn the_run_folder_sits_under_the_prefix() {
        let started = at(1_369_353_600);
        assert_eq!(
            probe_key("backups/", started),
            "backups/_runs/2013-05-24-00-00-00/preflight.json"
        );
        assert_eq!(
            part_key("", started, 3),
            "_runs/2013-05-24-00-00-00/part-00003.jsonl"
        );
        assert_eq!(
            summary_key("", started),
            "_runs/2013-05-24-00-00-00/summary.json"
        );
    }

    #[test]
    fn a_part_has_one_json_line_per_project() {
        let entries = vec![
            ManifestEntry {
                project_id: 1,
                path: "a/b".into(),
                outcome: crate::store::Outcome::Verified,
                attempts: 1,
                size: Some(42),
                error: None,
                kept: None,
            },
            ManifestEntry {
                project_id: 2,
                path: "a/c".into(),
                outcome: crate::store::Outcome::Failed,
                attempts: 3,
                size: None,
                error: Some("GitLab could not build the export".into()),
                kept: None,
            },
            ManifestEntry {
                project_id: 3,
                path: "a/d".into(),
                outcome: crate::store::Outcome::Unchanged,
                attempts: 0,
                size: Some(7),
                error: None,
                kept: Some(("a/d/1969-12-31-00-00-00.tar.gz".into(), 1_000)),
            },
        ];
        let body = part_body("", at(0), &entries);
        let lines: Vec<serde_json::Value> = body
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines.len(), 3);
        assert_eq!(lines[0]["key"], "a/b/1970-01-01-00-00-00.tar.gz");
        assert_eq!(lines[0]["outcome"], "verified");
        assert_eq!(lines[0]["size"], 42);
        assert_eq!(lines[1]["outcome"], "failed");
        assert_eq!(lines[1]["attempts"], 3);
        assert_eq!(lines[1]["error"], "GitLab could not build the export");
        assert!(lines[0].get("backed_up").is_none());
        // An unchanged project names the backup that holds it, and when it was made.
        assert_eq!(lines[2]["outcome"], "unchanged");
        assert_eq!(lines[2]["key"], "a/d/1969-12-31-00-00-00.tar.gz");
        assert_eq!(lines[2]["backed_up"], "1970-01-01T00:00:01Z");
    }
}
