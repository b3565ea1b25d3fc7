//! Changed-only runs: a project whose `last_activity_at` lies an overlap before its newest
//! backup's export request is not exported again (outcome `unchanged`, with that backup's key),
//! every project is exported once in each full-export cycle whatever its activity says, on the
//! day its id picks, and every run's record still names a backup for each project.

use std::collections::{BTreeMap, BTreeSet};

use proptest::prelude::*;

use super::sim::{config, one_group, Harness, Rng, World, DAY, HOUR, MINUTE, T0};
use crate::config::Config;
use crate::engine::changed::DAY_MS;
use crate::store::RunRow;

/// The manifest lines of `run`, by project id.
fn manifest(h: &Harness, run: &RunRow) -> BTreeMap<u64, serde_json::Value> {
    let summary = run.summary_key.as_deref().expect("the run's summary");
    let folder = format!("/{}", summary.trim_end_matches("summary.json"));
    let mut lines = BTreeMap::new();
    for (_, path, body) in &h.world.s3.puts {
        if path.starts_with(&folder) && path.contains("/part-") {
            for line in body.lines() {
                let entry: serde_json::Value = serde_json::from_str(line).unwrap();
                lines.insert(entry["id"].as_u64().unwrap(), entry);
            }
        }
    }
    lines
}

/// The project ids GitLab accepted an export of since `from` (its arrival time).
fn exported_since(h: &Harness, from: u64) -> BTreeSet<u64> {
    h.world
        .gitlab
        .exports
        .iter()
        .filter(|e| e.status == 202 && e.at_ms >= from)
        .map(|e| e.project_id)
        .collect()
}

/// Runs the clock to `at` (cron and alarms as they come).
fn run_to(h: &mut Harness, at: u64) {
    h.run_until(at + HOUR, |h| h.world.now >= at);
}

/// Runs until the run after `previous` has finished.
fn next_run(h: &mut Harness, previous: u64, deadline: u64) -> RunRow {
    h.run_until(deadline, |h| {
        h.latest_run()
            .is_some_and(|r| r.id > previous && r.finished_ms.is_some())
    });
    h.world.arrive_until(u64::MAX);
    h.latest_run().unwrap()
}

/// A group of `count` projects, quiet since 30 days before T0.
fn quiet_world(count: usize) -> (World, Vec<u64>) {
    let (mut gitlab, ids) = one_group(count, 6);
    for id in &ids {
        gitlab.project_mut(*id).last_activity_ms = Some(T0 - 30 * DAY);
    }
    (World::new(gitlab), ids)
}

/// The projects whose full export falls on the day of `at` with a cycle of `every` days.
fn due_on(ids: &[u64], at: u64, every: u64) -> BTreeSet<u64> {
    ids.iter()
        .copied()
        .filter(|id| id % every == (at / DAY_MS) % every)
        .collect()
}

#[test]
fn a_second_run_exports_only_what_changed_or_is_due_and_records_the_rest_with_their_backup() {
    let (world, ids) = quiet_world(12);
    let mut h = Harness::new(config(&[]), world);
    let first = h.run_until_finished(T0 + 2 * HOUR);
    assert_eq!((first.listed, first.verified, first.unchanged), (12, 12, 0));
    let first_lines = manifest(&h, &first);

    // Three projects see a push in the afternoon; the next day's run exports them, and the
    // projects whose day of the weekly cycle it is; the rest are held by yesterday's backups.
    run_to(&mut h, T0 + 15 * HOUR);
    let changed: BTreeSet<u64> = ids.iter().copied().step_by(4).collect();
    for id in &changed {
        h.world.gitlab.activity(*id, h.world.now);
    }
    let second = next_run(&mut h, first.id, T0 + DAY + 3 * HOUR);
    let mut expected: BTreeSet<u64> = changed.clone();
    expected.extend(due_on(&ids, second.started_ms, 7));
    assert!(expected.len() < ids.len(), "{expected:?}");
    assert_eq!(exported_since(&h, second.started_ms), expected);
    let held = ids.len() as u64 - expected.len() as u64;
    assert_eq!(
        (
            second.listed,
            second.verified,
            second.unchanged,
            second.failed
        ),
        (12, expected.len() as u64, held, 0)
    );
    // The record accounts for every project: the unchanged ones with the key of the backup
    // that holds them, which is in the bucket, and its date.
    let lines = manifest(&h, &second);
    assert_eq!(lines.keys().copied().collect::<Vec<_>>(), ids);
    let uploaded: BTreeSet<&str> = h.world.s3.uploads.iter().map(|u| u.1.as_str()).collect();
    for (id, line) in &lines {
        let key = line["key"].as_str().unwrap();
        assert!(uploaded.contains(format!("/{key}").as_str()), "{line}");
        if expected.contains(id) {
            assert_eq!(line["outcome"], "verified", "{line}");
            assert_ne!(line["key"], first_lines[id]["key"], "{line}");
        } else {
            assert_eq!(line["outcome"], "unchanged", "{line}");
            assert_eq!(line["key"], first_lines[id]["key"], "{line}");
            assert_eq!(line["size"], first_lines[id]["size"], "{line}");
            let backed_up = crate::time::rfc3339_ms(line["backed_up"].as_str().unwrap());
            assert!(backed_up.is_some_and(|at| at > first.started_ms && at < second.started_ms));
        }
    }
    let summary = h
        .world
        .s3
        .puts
        .iter()
        .find(|p| p.1 == format!("/{}", second.summary_key.as_deref().unwrap()))
        .unwrap();
    let summary: serde_json::Value = serde_json::from_str(&summary.2).unwrap();
    assert_eq!(summary["unchanged"], held);
    // `/status` counts them.
    let status = crate::status::status(&h.store(), Ok(&h.config), h.world.now).unwrap();
    let counts = &status.run.as_ref().unwrap().projects;
    assert_eq!((counts.unchanged, counts.pending), (held, 0));
    assert_eq!(status.stale.as_ref().map(|s| s.count), Some(0));
}

#[test]
fn every_project_is_exported_once_a_cycle_on_the_day_its_id_picks_however_quiet() {
    let (world, ids) = quiet_world(40);
    let mut h = Harness::new(config(&[("FULL_BACKUP_EVERY_DAYS", "4")]), world);
    let first = h.run_until_finished(T0 + 3 * HOUR);
    assert_eq!(first.verified, 40);
    let mut last_export: BTreeMap<u64, u64> = ids.iter().map(|id| (*id, T0)).collect();
    let mut run = first;
    for day in 1..=8 {
        run = next_run(&mut h, run.id, T0 + day * DAY + 3 * HOUR);
        let exported = exported_since(&h, run.started_ms);
        assert_eq!(exported, due_on(&ids, run.started_ms, 4), "day {day}");
        assert_eq!(run.unchanged + run.verified, 40, "day {day}");
        for id in &exported {
            last_export.insert(*id, run.started_ms);
        }
        // No project's newest backup is older than the cycle.
        for (id, at) in &last_export {
            assert!(run.started_ms - at <= 4 * DAY, "project {id} on day {day}");
        }
    }
}

#[test]
fn activity_within_the_overlap_before_a_backup_is_exported_again_then_held() {
    let (mut world, ids) = quiet_world(3);
    // Active 90 minutes before the first run: within the default overlap of 120 minutes of the
    // first backup's request, so GitLab may not have moved last_activity_at for a later push.
    world.gitlab.project_mut(ids[0]).last_activity_ms = Some(T0 - 90 * MINUTE);
    let mut h = Harness::new(config(&[("FULL_BACKUP_EVERY_DAYS", "30")]), world);
    let first = h.run_until_finished(T0 + 2 * HOUR);
    let second = next_run(&mut h, first.id, T0 + DAY + 3 * HOUR);
    let due = due_on(&ids, second.started_ms, 30);
    let mut expected = due.clone();
    expected.insert(ids[0]);
    assert_eq!(exported_since(&h, second.started_ms), expected);
    let third = next_run(&mut h, second.id, T0 + 2 * DAY + 3 * HOUR);
    assert_eq!(
        exported_since(&h, third.started_ms),
        due_on(&ids, third.started_ms, 30)
    );
    assert!(third.unchanged >= 2, "{third:?}");
}

#[test]
fn without_changed_only_runs_or_with_a_new_prefix_every_project_is_exported() {
    for settings in [
        &[("INCREMENTAL", "false")][..],
        &[("FULL_BACKUP_EVERY_DAYS", "0")][..],
    ] {
        let (world, _) = quiet_world(6);
        let mut h = Harness::new(config(settings), world);
        let first = h.run_until_finished(T0 + 2 * HOUR);
        let second = next_run(&mut h, first.id, T0 + DAY + 3 * HOUR);
        assert_eq!((second.verified, second.unchanged), (6, 0), "{settings:?}");
    }
    // Backups under another prefix (or bucket, or GitLab) are not where this run's go: all are
    // exported again, and the run after holds its projects by those new backups.
    let (world, ids) = quiet_world(6);
    let mut h = Harness::new(config(&[("FULL_BACKUP_EVERY_DAYS", "30")]), world);
    let first = h.run_until_finished(T0 + 2 * HOUR);
    h.config = config(&[("FULL_BACKUP_EVERY_DAYS", "30"), ("S3_PREFIX", "moved")]);
    let second = next_run(&mut h, first.id, T0 + DAY + 3 * HOUR);
    assert_eq!((second.verified, second.unchanged), (6, 0));
    let third = next_run(&mut h, second.id, T0 + 2 * DAY + 3 * HOUR);
    let due = due_on(&ids, third.started_ms, 30);
    assert_eq!(exported_since(&h, third.started_ms), due);
    for line in manifest(&h, &third).values() {
        assert!(
            line["key"].as_str().unwrap().starts_with("moved/"),
            "{line}"
        );
    }
}

#[test]
fn a_project_no_run_backs_up_is_reported_stale_with_its_age_and_reason() {
    let (mut world, ids) = quiet_world(4);
    // Never backed up: GitLab refuses its exports.
    world.gitlab.refusals.insert(ids[0], 403);
    let config = config(&[("FULL_BACKUP_EVERY_DAYS", "1"), ("STALE_AFTER_DAYS", "2")]);
    let mut h = Harness::new(config, world);
    let first = h.run_until_finished(T0 + 2 * HOUR);
    // Backed up once, then refused from the next run on.
    h.world.gitlab.refusals.insert(ids[1], 403);
    let mut run = first;
    for day in 1..=3 {
        run = next_run(&mut h, run.id, T0 + day * DAY + 3 * HOUR);
    }
    let status = crate::status::status(&h.store(), Ok(&h.config), h.world.now).unwrap();
    let stale = status.stale.expect("a finished run");
    assert_eq!((stale.after_days, stale.run, stale.count), (2, run.id, 2));
    let never = &stale.projects[0];
    assert_eq!((never.project_id, never.age_days), (ids[0], None));
    assert!(
        // The store details the latest runs only (RUNS_KEPT_IN_DETAIL).
        never
            .reason
            .starts_with("never backed up: failed in the last 2 runs (last error: "),
        "{}",
        never.reason
    );
    let old = &stale.projects[1];
    assert_eq!((old.project_id, old.age_days), (ids[1], Some(3)));
    assert!(
        old.reason
            .starts_with("not backed up by the 3 runs since its last backup (last error: "),
        "{}",
        old.reason
    );
    assert!(old.last_backup.is_some());
}

#[derive(Clone, Debug)]
struct Scenario {
    projects: usize,
    full_every_days: u64,
    overlap_minutes: u64,
    /// Chance (percent) that a project sees an event in a given hour.
    change_percent: u32,
    /// Chance (percent) that a project's export fails to build (a transient failure).
    build_failure_percent: u32,
    /// Hours between runs.
    interval_hours: u64,
    seed: u64,
}

fn scenario() -> impl Strategy<Value = Scenario> {
    (
        5usize..24,
        1u64..5,
        60u64..240,
        0u32..6,
        0u32..15,
        prop::sample::select(vec![6u64, 12, 24]),
        any::<u64>(),
    )
        .prop_map(
            |(
                projects,
                full_every_days,
                overlap_minutes,
                change_percent,
                build_failure_percent,
                interval_hours,
                seed,
            )| Scenario {
                projects,
                full_every_days,
                overlap_minutes,
                change_percent,
                build_failure_percent,
                interval_hours,
                seed,
            },
        )
}

/// Over days of random activity, runs and export failures: no project is ever reported
/// `unchanged` when an event happened in it after the export that backed it up (and before
/// the run began), and no project held `unchanged` by a backup older than its cycle; every
/// project is verified or unchanged in a run unless its export failed in it.
fn check_changed_only(s: &Scenario) {
    let (mut gitlab, ids) = one_group(s.projects, 6);
    let mut rng = Rng::new(s.seed);
    for id in &ids {
        gitlab.project_mut(*id).last_activity_ms = Some(T0 - rng.upto(40) * DAY);
    }
    gitlab.build_rng = Rng::new(s.seed ^ 0xB1);
    let config: Config = config(&[
        ("FULL_BACKUP_EVERY_DAYS", &s.full_every_days.to_string()),
        ("CHANGED_OVERLAP_MINUTES", &s.overlap_minutes.to_string()),
        ("BACKUP_INTERVAL_HOURS", &s.interval_hours.to_string()),
        ("VERIFY_TIMEOUT_MINUTES", "60"),
        ("MAX_ATTEMPTS", "2"),
    ]);
    let mut h = Harness::new(config, World::new(gitlab));
    // Every event that happened in a project, by time.
    let mut events: BTreeMap<u64, Vec<u64>> = ids.iter().map(|id| (*id, Vec::new())).collect();
    let end = T0 + (2 * s.full_every_days + 2) * DAY;
    let mut checked = BTreeSet::new();
    while h.world.now < end {
        let at = h.world.now + HOUR;
        run_to(&mut h, at);
        for id in &ids {
            if rng.percent(s.change_percent) {
                h.world.gitlab.activity(*id, h.world.now);
                events.get_mut(id).unwrap().push(h.world.now);
            }
            // Some builds fail for a while, then work again.
            if rng.percent(s.build_failure_percent) {
                h.world.gitlab.build_failures.insert(*id);
            } else {
                h.world.gitlab.build_failures.remove(id);
            }
        }
        let finished: Vec<RunRow> = h
            .store()
            .recent_runs(1_000)
            .unwrap()
            .into_iter()
            .filter(|r| r.summary_key.is_some() && !checked.contains(&r.id))
            .collect();
        for run in finished {
            checked.insert(run.id);
            check_run(s, &h, &run, &events);
        }
    }
    assert!(checked.len() as u64 >= s.full_every_days, "{checked:?}");
}

fn check_run(s: &Scenario, h: &Harness, run: &RunRow, events: &BTreeMap<u64, Vec<u64>>) {
    let lines = manifest(h, run);
    assert_eq!(lines.len() as u64, run.listed, "run {}", run.id);
    for (id, line) in &lines {
        match line["outcome"].as_str().unwrap() {
            "unchanged" => {
                let key = line["key"].as_str().unwrap();
                // The export that made the backup, as GitLab saw it: its snapshot.
                let snapshot = h
                    .world
                    .gitlab
                    .exports
                    .iter()
                    .filter(|e| e.status == 202 && e.project_id == *id)
                    .filter(|e| {
                        e.upload_url
                            .as_ref()
                            .is_some_and(|u| u.path() == format!("/{key}"))
                    })
                    .map(|e| e.at_ms)
                    .max()
                    .unwrap_or_else(|| panic!("no export made {key}"));
                let missed: Vec<&u64> = events[id]
                    .iter()
                    .filter(|at| **at >= snapshot && **at < run.started_ms)
                    .collect();
                assert!(
                    missed.is_empty(),
                    "run {}: project {id} reported unchanged, held by {key} (exported at {snapshot}), \
                     though it changed at {missed:?}",
                    run.id
                );
                let backed_up =
                    crate::time::rfc3339_ms(line["backed_up"].as_str().unwrap()).unwrap();
                assert!(
                    backed_up + s.full_every_days * DAY >= run.started_ms,
                    "run {}: project {id} held by a backup older than its cycle",
                    run.id
                );
            }
            "verified" => {}
            "failed" => assert!(line["error"].is_string(), "{line}"),
            other => panic!("run {}: outcome {other}", run.id),
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 6, ..ProptestConfig::default() })]

    #[test]
    fn prop_no_changed_project_is_held_unchanged_and_no_backup_outlives_its_cycle(s in scenario()) {
        check_changed_only(&s);
    }
}
