//! The simulated world the tests run the engine in: GitLab, S3, the network, the Durable Object
//! that fires the ticks, and the checks the tests share.

mod checks;
mod faults;
mod gitlab;
mod harness;
mod s3;
mod world;

pub(crate) use checks::{
    assert_gitlab_window_respected, assert_landed_and_proven,
    assert_no_export_after_a_heard_outcome, assert_no_export_after_a_heard_outcome_but_retries,
    assert_ticks_within_budget,
};
pub(crate) use faults::{Fault, FaultPlan, Rng};
pub(crate) use gitlab::{is_export, ExportSeen, OddUpload, SimGitLab};
pub(crate) use harness::{config, one_group, Began, Crash, Harness, TickLog};
pub(crate) use s3::{bucket_and_region, SimS3, GZIP_START};
pub(crate) use world::{Sent, World};

pub(crate) const SECOND: u64 = 1_000;
pub(crate) const MINUTE: u64 = 60 * SECOND;
pub(crate) const HOUR: u64 = 60 * MINUTE;
pub(crate) const DAY: u64 = 24 * HOUR;
/// 2024-01-01T00:00:00Z: simulated time starts on a real date, at midnight UTC.
pub(crate) const T0: u64 = 1_704_067_200_000;
const GITLAB_URL: &str = "https://gitlab.example.com/";
const TOKEN: &str = "glpat-simulated";
pub(crate) const BUCKET: &str = "backups";
/// What the simulated GitLab says when it refuses an export with 400.
pub(crate) const REFUSAL_400: &str = "Project export is not allowed for this project";
