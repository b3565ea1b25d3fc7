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
        Finished = "finished",
    }
}

stored_enum! {
    /// Where one project of a run stands (`projects.state`); the store's SQL names no other
    /// (`store::tests`).
    ProjectState ("project state") {
        /// Listed, waiting for its export (or for a retry's backoff to pass).
        Pending = "pending",
        /// Claimed for an export request whose answer is not recorded yet.
        Exporting = "exporting",
        /// GitLab accepted the export; waiting for proof that it landed.
        Exported = "exported",
        /// The object is in the bucket.
        Verified = "verified",
        /// Final: no attempt left, or GitLab refuses this project.
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
    /// Why the run stopped early (preflight), if it did.
    pub error: Option<String>,
    /// Projects with a final outcome not yet written to a manifest part.
    pub manifest_waiting: u64,
    pub manifest_parts: u64,
    /// The run's `summary.json`, once written.
    pub summary_key: Option<String>,
    /// The settings the run started with (`config::RunSettings`, as JSON), which it finishes
    /// with; `None` for a run begun before runs kept them (it goes on with the current ones).
    /// Not shown: it names URLs.
    #[serde(skip)]
    pub settings: Option<String>,
}

impl RunRow {
    pub(super) const COLUMNS: &'static str =
        "id, started_ms, finished_ms, phase, listed, exported, verified, \
         failed, error, manifest_waiting, manifest_parts, summary_key, settings";

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
            manifest_waiting: column(row, 9)?.as_u64()?,
            manifest_parts: column(row, 10)?.as_u64()?,
            summary_key: column(row, 11)?.as_opt_text()?,
            settings: column(row, 12)?.as_opt_text()?,
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
    /// When the last check due within the slack asked for after the first comes due.
    pub exported_due_last: Option<u64>,
}
