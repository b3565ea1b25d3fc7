//! Proof of landing: status checks, ranged GETs of first bytes in the bucket, retries and timeouts of failed attempts.

use std::collections::BTreeMap;

use super::sim::{
    assert_landed_and_proven, assert_no_export_after_a_heard_outcome_but_retries, config,
    one_group, Fault, FaultPlan, Harness, OddUpload, World, DAY, GZIP_START, HOUR, MINUTE, SECOND,
    T0,
};
use crate::engine::{
    next_check_ms, CHECK_SLACK, CHECK_STEPS, FIRST_CHECK_AFTER, NONE_GRACE, RETRY_BACKOFF,
};
use crate::s3::object_key;
use crate::store::RunRow;
use crate::time::ms;

/// The ranged GETs of backups' first bytes.
fn backup_reads(h: &Harness) -> Vec<(u64, String, u16)> {
    h.world
        .s3
        .ranged_gets
        .iter()
        .filter(|(_, path, _)| path.ends_with(".tar.gz"))
        .cloned()
        .collect()
}

/// GitLab's export status checks of `id`, as ages since the export request they follow reached
/// GitLab, one list per accepted export.
fn check_ages_per_attempt(h: &Harness, id: u64) -> Vec<Vec<u64>> {
    let gitlab = &h.world.gitlab;
    let accepted: Vec<u64> = gitlab
        .exports
        .iter()
        .filter(|e| e.project_id == id && e.status == 202)
        .map(|e| e.at_ms)
        .collect();
    let mut ages = vec![Vec::new(); accepted.len()];
    for &(at, checked, _) in &gitlab.status_checks {
        if checked != id {
            continue;
        }
        let attempt = accepted
            .iter()
            .rposition(|&a| a <= at)
            .expect("no check before GitLab accepted the export");
        ages[attempt].push(at - accepted[attempt]);
    }
    ages
}

/// Each age is its point of the schedule, plus the time the answer took back and the check
/// took there (100 ms each in the simulation): no later, no sooner.
fn assert_on_schedule(ages: &[u64], schedule_s: &[u64]) {
    let expected: Vec<u64> = schedule_s.iter().map(|s| s * SECOND).collect();
    assert_eq!(ages.len(), expected.len(), "{ages:?} ≠ {expected:?}");
    for (age, point) in ages.iter().zip(&expected) {
        assert!(
            (*point..*point + SECOND).contains(age),
            "{ages:?} ≠ {expected:?} (ms)"
        );
    }
}

#[test]
fn the_check_schedule_backs_off_from_the_export_request_and_keeps_to_the_deadline() {
    let exported = T0;
    let deadline = exported + 180 * MINUTE;
    // The next look's age after a look at `age`.
    let next = |age: u64| next_check_ms(exported, exported + age, deadline) - exported;
    // 10 s, then 30 s, 1 min, 2 min, then every 5 min.
    let mut age = 0;
    let mut points = Vec::new();
    for _ in 0..8 {
        age = next(age);
        points.push(age / SECOND);
    }
    assert_eq!(points, [10, 40, 100, 220, 520, 820, 1_120, 1_420]);
    assert_eq!(
        CHECK_STEPS.iter().map(|d| d.as_secs()).collect::<Vec<_>>(),
        [10, 30, 60, 120, 300]
    );
    assert_eq!(FIRST_CHECK_AFTER, CHECK_STEPS[0]);
    // From the age alone: a late look does not shift the ones after it.
    assert_eq!(next(57 * SECOND), 100 * SECOND);
    assert_eq!(next(100 * SECOND), 220 * SECOND, "a look on time");
    assert_eq!(next(521 * SECOND), 820 * SECOND);
    assert_eq!(next(3_000 * SECOND), 3_220 * SECOND);
    // The last look before the deadline is at the deadline, not up to a step after it.
    assert_eq!(next(10_720 * SECOND), 10_800 * SECOND);
    assert_eq!(next(10_799 * SECOND), 10_800 * SECOND);
    // Past it, whoever asks gets the next point (the engine decides there instead).
    assert_eq!(next(10_800 * SECOND), 11_020 * SECOND);
    // A deadline shorter than the steps.
    assert_eq!(
        next_check_ms(exported, exported + 40 * SECOND, exported + MINUTE) - exported,
        MINUTE
    );
}

#[test]
fn an_accepted_export_is_checked_on_the_backoff_schedule_until_proven() {
    // GitLab takes 6 min to build the export: the checks at +10 s, +40 s, +1 min 40 s and
    // +3 min 40 s find it queued or started, the one at +8 min 40 s finished; only then does a
    // GET look in the bucket.
    let (mut gitlab, ids) = one_group(1, 6);
    gitlab.build_ms = (6 * MINUTE, 6 * MINUTE);
    let mut h = Harness::new(config(&[]), World::new(gitlab));
    let run = h.run_until_finished(T0 + HOUR);
    assert_eq!((run.exported, run.verified, run.failed), (1, 1, 0));
    let ages = check_ages_per_attempt(&h, ids[0]);
    assert_eq!(ages.len(), 1);
    assert_on_schedule(&ages[0], &[10, 40, 100, 220, 520]);
    assert_eq!(h.world.gitlab.status_checks.len(), 5, "no other checks");
    let reads = backup_reads(&h);
    assert_eq!(reads.len(), 1, "one GET, after GitLab said finished");
    assert_eq!(reads[0].2, 206);
    assert_landed_and_proven(&h, &run);
}

#[test]
fn looks_due_within_check_slack_of_each_other_share_a_tick() {
    // Three exports accepted in one tick, a second or two apart (slow answers): every later
    // look of the three at the same point of the schedule shares one tick, at most CHECK_SLACK
    // late, never early.
    let (mut gitlab, ids) = one_group(3, 6);
    gitlab.build_ms = (6 * MINUTE, 6 * MINUTE);
    let mut world = World::new(gitlab);
    world.leg_ms = (300, 1_000);
    let mut h = Harness::new(config(&[]), world);
    let run = h.run_until_finished(T0 + HOUR);
    assert_eq!((run.exported, run.verified, run.failed), (3, 3, 0));
    let mut by_point: BTreeMap<u64, Vec<u64>> = BTreeMap::new();
    for &id in &ids {
        let ages = check_ages_per_attempt(&h, id);
        assert_eq!(ages.len(), 1);
        assert_eq!(ages[0].len(), 5, "{ages:?}");
        for (age, point) in ages[0].iter().zip([10, 40, 100, 220, 520]) {
            // Never early; late by the answer's way back, the look's way there and the slack.
            assert!(*age >= point * SECOND, "{ages:?}");
            assert!(
                age - point * SECOND < ms(CHECK_SLACK) + 2 * SECOND,
                "{ages:?}"
            );
            by_point.entry(point).or_default().push(*age);
        }
    }
    let tick_of = |at: u64| h.ticks.iter().rposition(|t| t.started_ms <= at).unwrap();
    let ticks_at = |point: u64| -> std::collections::BTreeSet<usize> {
        h.world
            .gitlab
            .status_checks
            .iter()
            .filter(|(at, id, _)| {
                let accepted = h.world.gitlab.exports.iter().find(|e| e.project_id == *id);
                let age = at - accepted.unwrap().at_ms;
                (point * SECOND..point * SECOND + ms(CHECK_SLACK) + 2 * SECOND).contains(&age)
            })
            .map(|(at, _, _)| tick_of(*at))
            .collect()
    };
    for point in [40, 100, 220, 520] {
        assert_eq!(
            ticks_at(point).len(),
            1,
            "looks at +{point} s: {by_point:?}"
        );
    }
    assert_landed_and_proven(&h, &run);
}

#[test]
fn a_quick_export_that_reads_none_after_its_upload_is_looked_at_again_when_the_grace_ends() {
    // Built and uploaded in 30 s, after which GitLab reads `none`: the look at +40 s finds
    // `none` within NONE_GRACE, the next comes when the grace ends (not at +1 min 40 s and
    // +3 min 40 s) and sends the GET.
    let (mut gitlab, ids) = one_group(1, 6);
    gitlab.build_ms = (30 * SECOND, 30 * SECOND);
    gitlab.none_when_built = true;
    let mut h = Harness::new(config(&[]), World::new(gitlab));
    let run = h.run_until_finished(T0 + HOUR);
    assert_eq!((run.exported, run.verified, run.failed), (1, 1, 0));
    let ages = check_ages_per_attempt(&h, ids[0]);
    assert_on_schedule(&ages[0], &[10, 40, NONE_GRACE.as_secs()]);
    let reads = backup_reads(&h);
    assert_eq!(reads.len(), 1, "one GET, when the grace ended: {reads:?}");
    assert_eq!(reads[0].2, 206);
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
    // Each attempt is looked at on the schedule, and last at its deadline (10 min), not at
    // the next point (13 min 40 s).
    for &id in &ids {
        for ages in check_ages_per_attempt(&h, id) {
            assert_on_schedule(&ages, &[10, 40, 100, 220, 520, 600]);
        }
    }
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
fn a_proof_get_cut_by_the_subrequest_budget_goes_first_in_the_next_tick_and_gitlab_is_not_asked_again(
) {
    // Three subrequests a tick: the tick at +10 s checks A, GETs A's first bytes and checks B, whose GET the
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
    let reads = backup_reads(&h);
    assert_eq!(reads.len(), 3, "one GET per project: {reads:?}");
    assert!(reads.iter().all(|(_, _, status)| *status == 206));
    let cut = h
        .ticks
        .iter()
        .position(|t| {
            t.subrequests == 3
                && t.events()
                    .iter()
                    .any(|e| matches!(e, crate::engine::Event::Verified { .. }))
        })
        .expect("a tick whose budget cut the GET");
    let next = &h.ticks[cut + 1];
    let b_read = reads[1].0;
    assert!(
        b_read >= next.started_ms,
        "the cut GET goes out in the next tick"
    );
    let c_check = h.world.gitlab.status_checks[2].0;
    assert!(b_read < c_check, "and first in it");
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

/// A run of one group of two projects, the first's upload landing as `odd` (if any), with
/// S3's `Content-Range` replaced by `content_range` (if any), and one attempt each: the run,
/// and the first project's failure reason (empty if it did not fail).
fn one_attempt_with(
    odd: Option<OddUpload>,
    content_range: Option<Option<String>>,
) -> (Harness, RunRow, u64, String) {
    let (mut gitlab, ids) = one_group(2, 6);
    if let Some(odd) = odd {
        gitlab.odd_uploads.insert(ids[0], odd);
    }
    let mut world = World::new(gitlab);
    world.s3.content_range = content_range;
    let mut h = Harness::new(config(&[("MAX_ATTEMPTS", "1")]), world);
    let run = h.run_until_finished(T0 + 2 * HOUR);
    let reason = h
        .store()
        .failures(run.id, 10)
        .unwrap()
        .into_iter()
        .find(|(id, _, _)| *id == ids[0])
        .map(|(_, _, reason)| reason)
        .unwrap_or_default();
    (h, run, ids[0], reason)
}

#[test]
fn a_gzip_object_with_gitlabs_content_type_is_verified_with_its_size_from_content_range() {
    let (h, run, first, reason) = one_attempt_with(None, None);
    assert_eq!((run.verified, run.failed), (2, 0), "{reason}");
    // One ranged GET per project, each answered 206 with 8 bytes: the size is the whole
    // object's, from `Content-Range`, not the 8 of `Content-Length`.
    let reads = backup_reads(&h);
    assert_eq!(reads.len(), 2, "{reads:?}");
    assert!(
        reads.iter().all(|(_, _, status)| *status == 206),
        "{reads:?}"
    );
    assert!(
        h.world
            .s3
            .heads
            .iter()
            .all(|(_, path, _)| !path.ends_with(".tar.gz")),
        "no HEAD of a backup"
    );
    let backup = h
        .store()
        .recent_backups(10)
        .unwrap()
        .into_iter()
        .find(|b| b.project_id == first)
        .unwrap();
    assert_eq!(backup.size, 10_000 + first);
}

#[test]
fn an_object_that_is_no_gzip_stream_fails_the_attempt_naming_its_first_bytes() {
    let odd = OddUpload {
        size: 5_000,
        start: b"<?xml version=\"1.0\"?>".to_vec(),
        content_type: Some("application/gzip"),
    };
    let (_, run, _, reason) = one_attempt_with(Some(odd), None);
    assert_eq!((run.verified, run.failed), (1, 1), "{reason}");
    assert_eq!(
        reason,
        "the object does not start like a gzip stream (first bytes 3c 3f 78 6d 6c 20 76 65) (after 1 attempts)"
    );
}

#[test]
fn an_object_of_another_content_type_fails_the_attempt_naming_it() {
    let odd = OddUpload {
        size: 5_000,
        start: GZIP_START.to_vec(),
        content_type: Some("text/plain"),
    };
    let (_, run, _, reason) = one_attempt_with(Some(odd), None);
    assert_eq!((run.verified, run.failed), (1, 1), "{reason}");
    assert_eq!(
        reason,
        "the object's Content-Type is text/plain, not application/gzip (after 1 attempts)"
    );
    // None at all is named too.
    let odd = OddUpload {
        size: 5_000,
        start: GZIP_START.to_vec(),
        content_type: None,
    };
    let (_, _, _, reason) = one_attempt_with(Some(odd), None);
    assert!(
        reason.starts_with("the object has no Content-Type"),
        "{reason}"
    );
}

#[test]
fn an_answer_without_a_well_formed_content_range_fails_the_attempt_clearly() {
    for (content_range, expected) in [
        (None, "S3's answer to the ranged GET has no Content-Range"),
        (
            Some("bytes 0-7/*"),
            "S3's answer to the ranged GET has a malformed Content-Range: \"bytes 0-7/*\"",
        ),
        (
            Some("bytes 0-7"),
            "S3's answer to the ranged GET has a malformed Content-Range: \"bytes 0-7\"",
        ),
        (
            Some("bytes 0-99/100"),
            "S3's answer to the ranged GET has a malformed Content-Range: \"bytes 0-99/100\"",
        ),
        (
            Some("bytes 0-18446744073709551615/18446744073709551615"),
            "S3's answer to the ranged GET has a malformed Content-Range",
        ),
    ] {
        let (_, run, _, reason) = one_attempt_with(None, Some(content_range.map(str::to_owned)));
        assert_eq!((run.verified, run.failed), (0, 2), "{content_range:?}");
        assert!(reason.starts_with(expected), "{content_range:?}: {reason}");
    }
}

#[test]
fn an_empty_object_answered_416_for_its_range_fails_the_attempt_as_empty() {
    let odd = OddUpload {
        size: 0,
        start: Vec::new(),
        content_type: Some("application/gzip"),
    };
    let (h, run, _, reason) = one_attempt_with(Some(odd), None);
    assert_eq!((run.verified, run.failed), (1, 1), "{reason}");
    assert_eq!(reason, "the object in S3 is empty (after 1 attempts)");
    assert!(
        backup_reads(&h).iter().any(|(_, _, status)| *status == 416),
        "S3 answered the range of the empty object with 416"
    );
}
