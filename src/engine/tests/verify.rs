//! Proof of landing: status checks, HEADs in the bucket, retries and timeouts of failed attempts.

use std::collections::BTreeMap;

use super::sim::{
    assert_landed_and_proven, assert_no_export_after_a_heard_outcome_but_retries, config,
    one_group, Fault, FaultPlan, Harness, World, DAY, HOUR, MINUTE, SECOND, T0,
};
use crate::engine::{CHECK_EVERY, FIRST_CHECK_AFTER, RETRY_BACKOFF};
use crate::s3::object_key;
use crate::time::ms;

/// The HEADs of backups (not of the preflight probe).
fn backup_heads(h: &Harness) -> Vec<(u64, String, u16)> {
    h.world
        .s3
        .heads
        .iter()
        .filter(|(_, path, _)| path.ends_with(".tar.gz"))
        .cloned()
        .collect()
}

#[test]
fn an_accepted_export_is_checked_after_first_check_after_then_every_check_every_until_proven() {
    // GitLab takes 100 s to build the export: the checks find it queued or started, then
    // finished; only then does a HEAD look in the bucket.
    let (mut gitlab, ids) = one_group(1, 6);
    gitlab.build_ms = (100 * SECOND, 100 * SECOND);
    let mut h = Harness::new(config(&[]), World::new(gitlab));
    let run = h.run_until_finished(T0 + HOUR);
    assert_eq!((run.exported, run.verified, run.failed), (1, 1, 0));
    let gitlab = &h.world.gitlab;
    let accepted = gitlab.exports[0].at_ms;
    let checks: Vec<u64> = gitlab
        .status_checks
        .iter()
        .map(|(at, id, _)| {
            assert_eq!(*id, ids[0]);
            at - accepted
        })
        .collect();
    assert_eq!(
        checks.len(),
        4,
        "at +10 s, +40 s, +70 s, +100 s: {checks:?}"
    );
    assert!(checks[0] >= ms(FIRST_CHECK_AFTER));
    for pair in checks.windows(2) {
        assert!(pair[1] - pair[0] >= ms(CHECK_EVERY), "{checks:?}");
    }
    let heads = backup_heads(&h);
    assert_eq!(heads.len(), 1, "one HEAD, after GitLab said finished");
    assert_eq!(heads[0].2, 200);
    assert_landed_and_proven(&h, &run);
}

#[test]
fn an_export_gitlab_cannot_build_fails_after_max_attempts_with_the_reason() {
    let (mut gitlab, ids) = one_group(3, 6);
    gitlab.build_failures.insert(ids[1]);
    let mut h = Harness::new(config(&[]), World::new(gitlab));
    let run = h.run_until_finished(T0 + 2 * HOUR);
    assert_eq!(
        (run.exported, run.verified, run.failed),
        (3, 2, 1),
        "{}",
        h.describe()
    );
    let path = h.world.gitlab.path_of(ids[1]).to_owned();
    assert_eq!(
        h.store().failures(run.id, 10).unwrap(),
        vec![(
            ids[1],
            path,
            "GitLab could not build the export (after 3 attempts)".to_owned()
        )]
    );
    assert_eq!(h.world.gitlab.accepted()[&ids[1]], 3);
    let retried = BTreeMap::from([(ids[1], (ms(FIRST_CHECK_AFTER), 3))]);
    assert_no_export_after_a_heard_outcome_but_retries(&h.world.gitlab.exports, &retried);
    assert_landed_and_proven(&h, &run);
}

#[test]
fn an_export_stuck_in_gitlabs_queue_fails_after_verify_timeout_and_the_run_ends() {
    let (mut gitlab, ids) = one_group(2, 6);
    // Every build takes three hours: longer than VERIFY_TIMEOUT_MINUTES.
    gitlab.build_ms = (3 * HOUR, 3 * HOUR);
    let mut h = Harness::new(
        config(&[("VERIFY_TIMEOUT_MINUTES", "10"), ("MAX_ATTEMPTS", "2")]),
        World::new(gitlab),
    );
    let run = h.run_until_finished(T0 + 2 * HOUR);
    assert_eq!((run.exported, run.verified, run.failed), (2, 0, 2));
    for (id, path, reason) in h.store().failures(run.id, 10).unwrap() {
        assert!(ids.contains(&id), "{path}");
        assert_eq!(
            reason,
            "GitLab's export stayed queued or started for more than 10 minutes (after 2 attempts)"
        );
    }
    assert!(ids.iter().all(|id| h.world.gitlab.accepted()[id] == 2));
}

#[test]
fn an_upload_that_never_lands_fails_after_max_attempts_of_verify_timeout() {
    let (mut gitlab, ids) = one_group(2, 6);
    gitlab.lost_uploads.insert(ids[0]);
    let mut h = Harness::new(
        config(&[("VERIFY_TIMEOUT_MINUTES", "10"), ("MAX_ATTEMPTS", "2")]),
        World::new(gitlab),
    );
    let run = h.run_until_finished(T0 + 2 * HOUR);
    assert_eq!((run.exported, run.verified, run.failed), (2, 1, 1));
    let failures = h.store().failures(run.id, 10).unwrap();
    assert_eq!(failures.len(), 1);
    assert_eq!(failures[0].0, ids[0]);
    assert!(
        failures[0]
            .2
            .starts_with("the upload never arrived within 10 minutes (GitLab reported the export finished; S3 answers 404)")
            && failures[0].2.ends_with("(after 2 attempts)"),
        "{}",
        failures[0].2
    );
    let exports: Vec<u64> = h
        .world
        .gitlab
        .exports
        .iter()
        .filter(|e| e.project_id == ids[0])
        .map(|e| e.at_ms)
        .collect();
    assert_eq!(exports.len(), 2);
    assert!(exports[1] - exports[0] >= 10 * MINUTE + ms(RETRY_BACKOFF[0]));
    // The run ends once the second attempt timed out too.
    assert!(run.finished_ms.unwrap() >= exports[1] + 10 * MINUTE);
    assert_landed_and_proven(&h, &run);
}

#[test]
fn a_head_cut_by_the_subrequest_budget_goes_first_in_the_next_tick_and_gitlab_is_not_asked_again() {
    // Three subrequests a tick: the tick at +10 s checks A, HEADs A and checks B, whose HEAD the
    // budget cuts. It waits in the store, and the next tick sends it first.
    let (mut gitlab, ids) = one_group(3, 6);
    gitlab.build_ms = (SECOND, SECOND);
    let mut h = Harness::new(
        config(&[("SUBREQUESTS_PER_INVOCATION", "3")]),
        World::new(gitlab),
    );
    let run = h.run_until_finished(T0 + HOUR);
    assert_eq!((run.exported, run.verified, run.failed), (3, 3, 0));
    let mut checks: BTreeMap<u64, usize> = BTreeMap::new();
    for (_, id, _) in &h.world.gitlab.status_checks {
        *checks.entry(*id).or_default() += 1;
    }
    assert_eq!(
        checks,
        ids.iter().map(|&id| (id, 1)).collect(),
        "each export's status asked once: {}",
        h.describe()
    );
    let heads = backup_heads(&h);
    assert_eq!(heads.len(), 3, "one HEAD per project: {heads:?}");
    assert!(heads.iter().all(|(_, _, status)| *status == 200));
    let cut = h
        .ticks
        .iter()
        .position(|t| {
            t.subrequests == 3
                && t.events()
                    .iter()
                    .any(|e| matches!(e, crate::engine::Event::Verified { .. }))
        })
        .expect("a tick whose budget cut the HEAD");
    let next = &h.ticks[cut + 1];
    let b_head = heads[1].0;
    assert!(
        b_head >= next.started_ms,
        "the cut HEAD goes out in the next tick"
    );
    let c_check = h.world.gitlab.status_checks[2].0;
    assert!(b_head < c_check, "and first in it");
    assert_eq!(
        h.store()
            .meta(&[crate::store::MetaKey::Intents])
            .unwrap()
            .text(crate::store::MetaKey::Intents)
            .unwrap(),
        None,
        "no follow-up left in the store"
    );
    assert_landed_and_proven(&h, &run);
}

#[test]
fn a_status_endpoint_that_always_answers_500_ends_the_run_by_what_the_bucket_holds() {
    // GitLab's export status never answers: past VERIFY_TIMEOUT_MINUTES the bucket decides.
    // The archive that landed is verified; the one that never did fails after MAX_ATTEMPTS, with
    // the reason; the run finishes, and the next one starts on schedule.
    let (mut gitlab, ids) = one_group(2, 6);
    gitlab.lost_uploads.insert(ids[0]);
    // The token check (the first of these requests) passes; every export status answers 500.
    gitlab.status_faults = FaultPlan::scripted(&[None]);
    gitlab.status_faults.random = Some(Box::new(|| Some(Fault::Status(500))));
    let mut h = Harness::new(
        config(&[("VERIFY_TIMEOUT_MINUTES", "10"), ("MAX_ATTEMPTS", "2")]),
        World::new(gitlab),
    );
    let run = h.run_until_finished(T0 + 3 * HOUR);
    assert_eq!(
        (run.exported, run.verified, run.failed),
        (2, 1, 1),
        "{}",
        h.describe()
    );
    let failures = h.store().failures(run.id, 10).unwrap();
    assert_eq!(failures.len(), 1);
    assert_eq!(failures[0].0, ids[0]);
    assert!(
        failures[0].2.starts_with(
            "the upload never arrived within 10 minutes (GitLab's export status did not answer:"
        ) && failures[0].2.ends_with("(after 2 attempts)"),
        "{}",
        failures[0].2
    );
    assert_landed_and_proven(&h, &run);
    h.run_until(T0 + DAY + HOUR, |h| {
        h.latest_run().is_some_and(|latest| latest.id > run.id)
    });
    let next = h.latest_run().unwrap();
    assert!(
        next.started_ms >= run.started_ms + DAY,
        "on schedule: {next:?}"
    );
}

#[test]
fn an_object_older_than_the_attempts_export_request_is_no_proof() {
    // Someone else (another deployment with the same prefix) left an object at the key a day
    // before; GitLab's own upload never lands. The old object must not verify the backup.
    let (mut gitlab, ids) = one_group(2, 6);
    gitlab.lost_uploads.insert(ids[0]);
    let mut h = Harness::new(
        config(&[("VERIFY_TIMEOUT_MINUTES", "10"), ("MAX_ATTEMPTS", "1")]),
        World::new(gitlab),
    );
    h.fire_next();
    let run = h.latest_run().unwrap();
    let key = object_key(
        "",
        h.world.gitlab.path_of(ids[0]),
        crate::time::system_time(run.started_ms),
    );
    let url = h.config.bucket.object_url("eu-west-1", &key);
    h.world.s3.put_foreign(&url, 5_000, T0 - DAY);
    let run = h.run_until_finished(T0 + 2 * HOUR);
    assert_eq!(
        (run.exported, run.verified, run.failed),
        (2, 1, 1),
        "{}",
        h.describe()
    );
    let failures = h.store().failures(run.id, 10).unwrap();
    assert_eq!(failures[0].0, ids[0]);
    assert!(
        failures[0]
            .2
            .contains("older than this attempt's export request"),
        "{}",
        failures[0].2
    );
}

#[test]
fn an_upload_that_never_lands_after_every_attempt_names_a_size_over_s3s_single_put_limit() {
    let (mut gitlab, ids) = one_group(2, 6);
    gitlab.lost_uploads.insert(ids[0]);
    gitlab.lost_uploads.insert(ids[1]);
    gitlab.sizes.insert(ids[0], 6 << 30);
    let mut h = Harness::new(
        config(&[("VERIFY_TIMEOUT_MINUTES", "10"), ("MAX_ATTEMPTS", "2")]),
        World::new(gitlab),
    );
    let run = h.run_until_finished(T0 + 2 * HOUR);
    assert_eq!((run.verified, run.failed), (0, 2));
    let reasons: BTreeMap<u64, String> = h
        .store()
        .failures(run.id, 10)
        .unwrap()
        .into_iter()
        .map(|(id, _, reason)| (id, reason))
        .collect();
    assert!(
        reasons[&ids[0]].contains("the project holds 6.0 GiB")
            && reasons[&ids[0]].contains("likely over S3's 5 GB single-PUT limit")
            && reasons[&ids[0]].ends_with("(after 2 attempts)"),
        "{}",
        reasons[&ids[0]]
    );
    assert!(
        !reasons[&ids[1]].contains("GiB") && reasons[&ids[1]].ends_with("(after 2 attempts)"),
        "a small project's reason stands: {}",
        reasons[&ids[1]]
    );
    // Asked once per project, after its last attempt, not before.
    let asked: Vec<u64> = h.world.gitlab.size_checks.iter().map(|c| c.1).collect();
    assert_eq!(asked.len(), 2, "{asked:?}");
    assert!(ids.iter().all(|id| asked.contains(id)));
}
