//! End to end: changed-only runs. A first run backs up every project of a group (none has a
//! backup yet); then GitLab sees activity in two of them (the stand-in moves their
//! `last_activity_at` to now, as GitLab does) and a second run exports exactly those two. The
//! others end `unchanged`: counted so in `/status` and `summary.json`, and in the manifest each
//! names the backup from the first run that still holds it (its key, in the bucket, and its date).

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use common::{accepted, count, own_projects, project_id, run_object_name, run_to_the_end};
use serde_json::Value;
use testkit::stack::LocalStack;
use testkit::standin::{Options, ProjectChange, Seed};
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

const GROUP: &str = "team-0";

fn seed() -> Seed {
    // Seven projects, between the group and its subgroup, none archived.
    Seed::generated(1, 7)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_activity_in_two_projects_the_next_run_exports_only_those_and_records_the_rest_unchanged(
) -> Result<()> {
    let stack = LocalStack::start(
        "changed",
        seed(),
        Options {
            exports_per_window: 200,
            ..Options::default()
        },
        GROUP,
        &[("EXPORTS_PER_MINUTE", "200".to_owned())],
    )
    .await?;
    common::checked(stack, |stack| async move {
        let result = check(&stack).await;
        (Some(stack), result)
    })
    .await
}

/// The lines of the manifest whose `summary.json` is `summary`, by project id.
fn manifest_lines(stack: &LocalStack, summary: &Value) -> Result<BTreeMap<u64, Value>> {
    let mut lines = BTreeMap::new();
    for part in summary["parts"]
        .as_array()
        .with_context(|| format!("summary without parts: {summary}"))?
    {
        let key = part.as_str().context("a part's key is no string")?;
        let text = std::fs::read_to_string(stack.s3.object_path(key))
            .with_context(|| format!("the manifest part {key} is not in S3"))?;
        for line in text.lines() {
            let line: Value = serde_json::from_str(line)
                .with_context(|| format!("a line of {key} is no JSON: {line}"))?;
            let id = line["id"]
                .as_u64()
                .with_context(|| format!("a line without id: {line}"))?;
            ensure!(
                lines.insert(id, line).is_none(),
                "project {id} has two lines"
            );
        }
    }
    Ok(lines)
}

/// The run's `summary.json`, from `/status`'s `run.summary_key`.
fn summary(stack: &LocalStack, status: &Value) -> Result<Value> {
    let key = status["run"]["summary_key"]
        .as_str()
        .with_context(|| format!("no run.summary_key: {status}"))?;
    let bytes =
        std::fs::read(stack.s3.object_path(key)).with_context(|| format!("{key} is not in S3"))?;
    serde_json::from_slice(&bytes).with_context(|| format!("{key} is no JSON"))
}

fn rfc3339(text: &str) -> Result<OffsetDateTime> {
    OffsetDateTime::parse(text, &Rfc3339).with_context(|| format!("{text:?} is no RFC 3339 time"))
}

async fn check(stack: &LocalStack) -> Result<()> {
    let seed = seed();
    let own = own_projects(&seed, &[GROUP]);
    let ids: Vec<u64> = own.iter().map(|p| p.id).collect();
    let path_of: BTreeMap<u64, &str> = own
        .iter()
        .map(|p| (p.id, p.path_with_namespace.as_str()))
        .collect();

    // Run 1: nothing has a backup yet, so every project is exported and verified.
    let first = run_to_the_end(stack, Duration::from_secs(4 * 60)).await?;
    ensure!(count(&first, "listed")? == ids.len() as u64, "{first:#}");
    ensure!(count(&first, "verified")? == ids.len() as u64, "{first:#}");
    ensure!(count(&first, "unchanged")? == 0, "{first:#}");
    let first_object = run_object_name(&first)?;
    let first_lines = manifest_lines(stack, &summary(stack, &first)?)?;
    ensure!(
        first_lines.keys().copied().collect::<Vec<_>>() == ids,
        "run 1's manifest: {first_lines:?}"
    );
    let mut first_keys = BTreeMap::new();
    for (id, line) in &first_lines {
        let key = format!("{}/{first_object}", path_of[id]);
        ensure!(
            line["outcome"] == "verified" && line["key"] == key.as_str(),
            "run 1, project {id}: {line}"
        );
        first_keys.insert(*id, key);
    }
    let exports_before = stack.standin.exports().len();

    // Activity in two projects, one in the group and one in its subgroup.
    let changed = BTreeSet::from([ids[2], ids[5]]);
    for id in &changed {
        stack.standin.apply(ProjectChange::Activity(*id));
    }
    let unchanged: Vec<u64> = ids
        .iter()
        .copied()
        .filter(|id| !changed.contains(id))
        .collect();

    // Run 2 exports exactly those two, each once.
    let second = run_to_the_end(stack, Duration::from_secs(4 * 60)).await?;
    ensure!(
        second["run"]["id"] != first["run"]["id"],
        "no second run: {second:#}"
    );
    let exports = stack.standin.exports();
    let requests = &exports[exports_before..];
    let requested: Vec<u64> = requests.iter().map(project_id).collect();
    ensure!(
        accepted(requests).len() == requests.len()
            && requested.iter().copied().collect::<BTreeSet<_>>() == changed
            && requested.len() == changed.len(),
        "run 2's export requests: {requests:?}, expected one for each of {changed:?}"
    );

    // Its counts.
    ensure!(count(&second, "listed")? == ids.len() as u64, "{second:#}");
    ensure!(count(&second, "verified")? == 2, "{second:#}");
    ensure!(
        count(&second, "unchanged")? == unchanged.len() as u64,
        "{second:#}"
    );
    ensure!(count(&second, "failed")? == 0, "{second:#}");
    ensure!(
        second["stale"]["count"] == 0 && second["stale"]["projects"] == serde_json::json!([]),
        "backups minutes old are not stale: {second:#}"
    );

    // Its manifest: a line per project; the two changed with their new backups, the others
    // naming the backup of run 1, which is still in the bucket.
    let second_summary = summary(stack, &second)?;
    ensure!(
        second_summary["unchanged"] == unchanged.len() as u64
            && second_summary["verified"] == 2
            && second_summary["failed"] == 0,
        "run 2's summary: {second_summary:#}"
    );
    let second_object = run_object_name(&second)?;
    ensure!(
        second_object != first_object,
        "both runs started in the same second"
    );
    let (first_started, second_started) = (
        rfc3339(first["run"]["started"].as_str().unwrap_or_default())?,
        rfc3339(second["run"]["started"].as_str().unwrap_or_default())?,
    );
    let lines = manifest_lines(stack, &second_summary)?;
    ensure!(
        lines.keys().copied().collect::<Vec<_>>() == ids,
        "run 2's manifest: {lines:?}"
    );
    for (id, line) in &lines {
        if changed.contains(id) {
            let key = format!("{}/{second_object}", path_of[id]);
            ensure!(
                line["outcome"] == "verified"
                    && line["key"] == key.as_str()
                    && line["size"].as_u64() > Some(0),
                "run 2, changed project {id}: {line}"
            );
            ensure!(stack.s3.object_path(&key).is_file(), "{key} is not in S3");
        } else {
            let key = &first_keys[id];
            ensure!(
                line["outcome"] == "unchanged" && line["key"] == key.as_str(),
                "run 2, unchanged project {id}: {line}, expected run 1's key {key}"
            );
            ensure!(
                stack.s3.object_path(key).is_file(),
                "{key}, the backup of unchanged project {id}, is not in S3"
            );
            let backed_up = rfc3339(line["backed_up"].as_str().unwrap_or_default())
                .with_context(|| format!("run 2, unchanged project {id}: {line}"))?;
            ensure!(
                first_started - time::Duration::SECOND <= backed_up && backed_up <= second_started,
                "run 2, unchanged project {id} backed up at {backed_up}, not during run 1 \
                 ({first_started} to {second_started}): {line}"
            );
        }
    }
    stack.ensure_logs_hold_nothing_secret()
}
