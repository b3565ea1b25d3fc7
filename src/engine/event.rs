//! What a tick logs: one [`Event`] per thing worth a log line, serialized as a JSON object whose
//! `event` field names it. [`Event::NAMES`] lists every name, made by the same macro as the enum,
//! so the docs checks and the tests read the list instead of the source.

use serde::{Deserialize, Serialize};

use super::allowance::Allowance;
use crate::store::Phase;

/// Declares [`Event`] and its list of names from one list of variants.
macro_rules! events {
    ($(
        $(#[$doc:meta])*
        $variant:ident = $name:literal { $($field:ident: $ty:ty),* $(,)? }
    )*) => {
        /// Something worth a log line.
        #[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
        #[serde(tag = "event")]
        pub enum Event {
            $(
                $(#[$doc])*
                #[serde(rename = $name)]
                $variant { $($field: $ty),* },
            )*
        }

        impl Event {
            /// Every event's name, as the log's `event` field spells it.
            pub const NAMES: &'static [&'static str] = &[$($name),*];

            /// This event's name, as the log's `event` field spells it.
            pub fn name(&self) -> &'static str {
                match self {
                    $(Event::$variant { .. } => $name,)*
                }
            }
        }
    };
}

events! {
    RunStarted = "run_started" { run: u64, groups: Vec<String>, manual: bool }
    /// `POST /restore` recorded a restore: GitLab is asked to import `key` as `target`.
    RestoreRequested = "restore_requested" { restore: u64, project: String, key: String, target: String }
    /// GitLab's import of a restore finished.
    RestoreFinished = "restore_finished" {
        restore: u64,
        project: String,
        target: String,
        new_project_id: u64,
        web_url: String,
    }
    /// A restore failed: GitLab refused its import or the import failed (its reason), or it
    /// did not end in time.
    RestoreFailed = "restore_failed" { restore: u64, project: String, target: String, reason: String }
    /// A restore drill began: a backup is imported into the scratch group (`target`).
    DrillStarted = "drill_started" { restore: u64, project: String, key: String, target: String }
    /// A drill's import finished: that backup restores.
    DrillPassed = "drill_passed" { restore: u64, project: String, key: String }
    /// A drill's import failed (or was refused): GitLab's reason.
    DrillFailed = "drill_failed" { restore: u64, project: String, key: String, reason: String }
    /// A drill's scratch project could not be deleted (delete it by hand).
    DrillProjectKept = "drill_project_kept" { restore: u64, target: String, reason: String }
    /// The operator cancelled the run (`POST /run/cancel`): projects without an outcome are
    /// `cancelled` in its record.
    RunCancelled = "run_cancelled" { run: u64, listed: u64, verified: u64, failed: u64 }
    /// A listing page: `new` projects new to the run, `unchanged` of them held by their newest
    /// backup (changed-only runs), not exported.
    PageListed = "page_listed" {
        run: u64,
        group: String,
        projects: usize,
        new: u64,
        unchanged: u64,
        more: bool,
    }
    GroupFailed = "group_failed" { run: u64, group: String, reason: String }
    /// The group changed while it was listed (a project deleted, moved or archived shifts
    /// GitLab's offsets, so a later page skips one): it is listed again from its first page,
    /// for the `relists`th time in the run; what was listed stays.
    GroupRelisted = "group_relisted" { run: u64, group: String, reason: String, relists: u64 }
    ExportRequested = "export_requested" {
        run: u64,
        project_id: u64,
        path: String,
        key: String,
        upload_url: String,
    }
    Exported = "exported" { run: u64, project_id: u64, path: String }
    Verified = "verified" { run: u64, project_id: u64, path: String, key: String, size: u64 }
    RetryScheduled = "retry_scheduled" {
        run: u64,
        project_id: u64,
        path: String,
        attempts: u64,
        reason: String,
        at_ms: u64,
    }
    PreflightPassed = "preflight_passed" { run: u64, user: String }
    RunStopped = "run_stopped" { run: u64, reason: String }
    ManifestWritten = "manifest_written" { run: u64, key: String, projects: usize }
    /// S3 refused the run's record for `RECORD_GIVE_UP`: the run ended without it.
    RecordAbandoned = "record_abandoned" { run: u64, reason: String }
    ExportFailed = "export_failed" { run: u64, project_id: u64, path: String, reason: String }
    RateLimited = "rate_limited" { retry_after_s: u64 }
    /// GitLab refused an export with 429 while fewer than EXPORTS_PER_MINUTE were in the last
    /// minute: its real limit is lower, and the run keeps to it for LEARNED_LIMIT_HOLDS.
    LimitLearned = "limit_learned" { run: u64, exports_per_minute: u32 }
    RetryLater = "retry_later" { run: u64, reason: String, not_before_ms: u64 }
    RegionFound = "region_found" { bucket: String, region: String }
    /// S3 said the bucket is not in the region learned for it (`named`: the one it named, if
    /// it did): the region is asked again.
    RegionForgotten = "region_forgotten" { bucket: String, region: String, named: Option<String> }
    RunFinished = "run_finished" {
        run: u64,
        listed: u64,
        exported: u64,
        verified: u64,
        failed: u64,
        unchanged: u64,
        summary: String,
    }
    TickEnded = "tick_ended" { run: u64, phase: Phase, subrequests: u32, exports: u32 }
    /// A daily allowance of the Durable Object is nearly spent: nothing until 00:00 UTC.
    DailyAllowancePaused = "daily_allowance_paused" {
        allowance: Allowance,
        used: u64,
        limit: u64,
        until_ms: u64,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_event_serializes_under_its_listed_name_and_reads_back() {
        let samples = [
            Event::RateLimited { retry_after_s: 60 },
            Event::TickEnded {
                run: 1,
                phase: Phase::Exporting,
                subrequests: 3,
                exports: 1,
            },
            Event::RegionFound {
                bucket: "b".into(),
                region: "eu-west-1".into(),
            },
        ];
        for event in samples {
            let json = serde_json::to_value(&event).unwrap();
            assert_eq!(json["event"], event.name());
            assert!(Event::NAMES.contains(&event.name()));
            assert_eq!(serde_json::from_value::<Event>(json).unwrap(), event);
        }
        let mut names = Event::NAMES.to_vec();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), Event::NAMES.len(), "names are unique");
    }
}
