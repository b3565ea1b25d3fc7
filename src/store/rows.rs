//! The values the store reads and writes: phases, states and rows.

use super::{column, Row, StoreError};

/// Declares an enum kept in a TEXT column: each variant's stored name, the list of all of them,
/// and the reading back.
macro_rules! stored_enum {
    (
        $(#[$doc:meta])*
        $name:ident ($what:literal) {
            $($(#[$vdoc:meta])* $variant:ident = $text:literal,)*
        }
    ) => {
        $(#[$doc])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
        pub enum $name {
            $($(#[$vdoc])* #[serde(rename = $text)] $variant,)*
        }

        impl $name {
            /// Every value, in order.
            pub const ALL: &'static [$name] = &[$($name::$variant),*];

            /// The name as stored.
            pub fn as_str(self) -> &'static str {
                match self {
                    $($name::$variant => $text,)*
                }
            }

            pub(super) fn parse(s: &str) -> Result<$name, StoreError> {
                $name::ALL
                    .iter()
                    .copied()
                    .find(|value| value.as_str() == s)
                    .ok_or_else(|| StoreError(format!(concat!("unknown ", $what, " {:?}"), s)))
            }
        }
    };
}

stored_enum! {
    /// Where a run stands, in the order a run goes through the phases.
    Phase ("run phase") {
        /// Checking the token and the bucket before anything else.
        Preflight = "preflight",
        Listing = "listing",
        Exporting = "exporting",
        /// Every export is requested; proofs are awaited.
        Verifying = "verifying",
        /// Every project has its outcome (or the run was cancelled): the manifest and the
        /// summary are written.
        Recording = "recording",
        Finished = "finished",
    }
}

stored_enum! {
    /// Where one project of a run stands (`projects.state`); the store's SQL names no other
    /// (`store::tests`).
    ProjectState ("project state") {
        /// Listed, waiting for its export (or for a retry's backoff to pass), or with its
        /// export under way (kept in `meta`: `engine/flights.rs`). Stores before version 9
        /// also had `exporting` and `exported`, which step 9 moved there.
        Pending = "pending",
        /// The object is in the bucket.
        Verified = "verified",
        /// Final: no attempt left, or GitLab refuses this project.
        Failed = "failed",
        /// Final, as listed (changed-only runs): not exported, its newest backup still holds it
        /// (`projects.kept_key`).
        Unchanged = "unchanged",
    }
}

stored_enum! {
    /// Where a restore stands (`restores.state`).
    RestoreState ("restore state") {
        /// Asked for: its import is not yet accepted by GitLab (waiting for the import rate
        /// limit, or for GitLab to answer).
        Requested = "requested",
        /// GitLab created the project and imports the archive in the background.
        Importing = "importing",
        /// A drill's import ended: its scratch project is being deleted (the outcome is kept).
        Cleaning = "cleaning",
        /// GitLab says the import finished.
        Finished = "finished",
        /// GitLab refused the import or it failed (the reason is kept), or it did not end in time.
        Failed = "failed",
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
    /// Projects not exported because their newest backup still holds them.
    pub unchanged: u64,
    /// Why the run stopped early (preflight), if it did.
    pub error: Option<String>,
    pub manifest_parts: u64,
    /// The run's `summary.json`, once written.
    pub summary_key: Option<String>,
    /// The last project (by id) the manifest parts written so far list.
    pub manifest_after: u64,
    /// When the operator cancelled the run, if they did.
    pub cancelled_ms: Option<u64>,
    /// The settings the run started with (`config::RunSettings`, as JSON), which it finishes
    /// with; `None` for a run begun before runs kept them (it goes on with the current ones).
    /// Not shown: it names URLs.
    #[serde(skip)]
    pub settings: Option<String>,
}

impl RunRow {
    pub(super) const COLUMNS: &'static str =
        "id, started_ms, finished_ms, phase, listed, exported, verified, \
         failed, error, manifest_parts, summary_key, manifest_after, cancelled_ms, settings, \
         unchanged";

    pub(super) fn read(row: &Row) -> Result<RunRow, StoreError> {
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
            manifest_parts: column(row, 9)?.as_u64()?,
            summary_key: column(row, 10)?.as_opt_text()?,
            manifest_after: column(row, 11)?.as_u64()?,
            cancelled_ms: column(row, 12)?.as_opt_u64()?,
            settings: column(row, 13)?.as_opt_text()?,
            unchanged: column(row, 14)?.as_u64()?,
        })
    }

    /// Listed projects without an outcome yet (in a cancelled run: those cancelled).
    pub fn without_outcome(&self) -> u64 {
        self.listed
            .saturating_sub(self.verified + self.failed + self.unchanged)
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
    pub projects: &'a [ListedProject<'a>],
    /// Only backups made by this run or later count as holding a project (the runs before it
    /// put their backups elsewhere: another GitLab, bucket or prefix).
    pub backups_from_run: u64,
    /// The next page and its number; `None`: the listing is complete.
    pub next: Option<(&'a str, u64)>,
    pub pages_total: Option<u64>,
    /// The projects GitLab counted as it served the page (`X-Total`), if it did.
    pub total: Option<u64>,
}

/// A project as a listing page brings it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ListedProject<'a> {
    pub id: u64,
    pub path: &'a str,
    /// Changed-only runs: the project's newest backup still holds it if that backup's export
    /// was asked for after this moment (`None`: it is exported).
    pub held_if_requested_after_ms: Option<u64>,
}

impl<'a> ListedProject<'a> {
    /// Projects listed as changed, each exported (tests).
    #[cfg(test)]
    pub fn all_changed(projects: &[(u64, &'a str)]) -> Vec<ListedProject<'a>> {
        projects
            .iter()
            .map(|&(id, path)| ListedProject {
                id,
                path,
                held_if_requested_after_ms: None,
            })
            .collect()
    }
}

/// What recording a page did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RecordedPage {
    /// Projects new to the run.
    pub added: u64,
    /// Of those, the ones unchanged since their newest backup.
    pub unchanged: u64,
    /// The run as it now stands, if its count changed.
    pub run: Option<RunRow>,
    /// Where this pass over the group stands, if the page moved its cursor (a page read ahead,
    /// or read twice, does not).
    pub cursor: Option<ListingPass>,
}

/// One pass over a group's pages, from its first: what its first page announced, and how many
/// passes came before it in the run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ListingPass {
    /// The count of projects the pass's first page announced (`X-Total`), if it did.
    pub announced: Option<u64>,
    /// The group was listed again from its first page this many times in the run.
    pub relists: u64,
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
    pub(super) const COLUMNS: &'static str = "project_id, path, attempts, exported_ms";

    pub(super) fn read(row: &Row) -> Result<ClaimedProject, StoreError> {
        Ok(ClaimedProject {
            project_id: column(row, 0)?.as_u64()?,
            path: column(row, 1)?.as_text()?,
            attempts: column(row, 2)?.as_u64()?,
            exported_ms: column(row, 3)?.as_opt_u64()?,
        })
    }
}

/// A project's outcome in the run's record.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    Verified,
    Failed,
    /// Not exported: its newest backup (`ManifestEntry::kept`) still holds it.
    Unchanged,
    /// The run was cancelled before the project had its outcome.
    Cancelled,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Verified => "verified",
            Outcome::Failed => "failed",
            Outcome::Unchanged => "unchanged",
            Outcome::Cancelled => "cancelled",
        }
    }
}

/// One line of a manifest part.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ManifestEntry {
    pub project_id: u64,
    pub path: String,
    pub outcome: Outcome,
    pub attempts: u64,
    pub size: Option<u64>,
    pub error: Option<String>,
    /// An unchanged project's newest backup: its key and when it was verified.
    pub kept: Option<(String, u64)>,
}

/// A project's verified backup.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Backup {
    pub project_id: u64,
    pub path: String,
    pub key: String,
    pub run_id: u64,
    /// When it was verified.
    pub at_ms: u64,
    pub size: u64,
    /// A moment before its export was asked for: the start of the run that made it (`None`: not
    /// known, for backups kept before version 11 whose run is gone).
    pub requested_ms: Option<u64>,
}

/// A backup's last restore drill: the key drilled, when, and why it failed (`None`: passed).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Drill {
    pub key: String,
    pub at_ms: u64,
    pub error: Option<String>,
}

/// Where the claims of a run's pending projects stand: the exports under way are not
/// claimed again, and every project up to `new_after` was claimed as new already.
#[derive(Clone, Copy, Debug)]
pub struct Claims<'a> {
    /// The ids of the projects whose export is under way, as a JSON array.
    pub under_way: &'a str,
    pub new_after: u64,
}

/// A pending project that may be claimed, and whether it was never tried (taken by id).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Claimable {
    pub project: ClaimedProject,
    pub new: bool,
}
