//! Property tests: random worlds, with and without faults and restarts.

use std::collections::{BTreeMap, BTreeSet};

use proptest::prelude::*;

use super::sim::{
    assert_gitlab_window_respected, assert_landed_and_proven,
    assert_no_export_after_a_heard_outcome_but_retries, assert_ticks_within_budget, config, Crash,
    Fault, Harness, Rng, Sent, SimGitLab, World, HOUR, MINUTE, REFUSAL_400, SECOND, T0,
};
use crate::engine::{Event, BACKOFF_STEP, FIRST_CHECK_AFTER, RETRY_AFTER_SLACK, RETRY_BACKOFF};
use crate::store::Phase;
use crate::time::ms;

#[derive(Clone, Debug)]
struct Scenario {
    projects: usize,
    groups: usize,
    page_cap: u64,
    budget: u32,
    per_minute: u32,
    /// Chance (percent) of a fault on each GitLab request.
    fault_percent: u32,
    /// Chance (percent) that the worker dies at a step.
    crash_percent: u32,
    /// Chance (percent) that GitLab always refuses a project.
    refusal_percent: u32,
    /// Chance (percent) that GitLab accepts a project's exports but can never build them.
    build_failure_percent: u32,
    /// Chance (percent) that a project's uploads never reach the bucket (GitLab says
    /// `finished` all the same).
    lost_upload_percent: u32,
    cron_jitter_s: u64,
    /// Whether events sometimes come minutes late.
    late: bool,
    retry_after_header: bool,
    seed: u64,
}

struct Simulated {
    h: Harness,
    expected: BTreeSet<u64>,
    refused: BTreeSet<u64>,
    build_failures: BTreeSet<u64>,
    lost_uploads: BTreeSet<u64>,
}

/// `VERIFY_TIMEOUT_MINUTES` in the property tests: shorter than the default, so runs with lost
/// uploads end in simulated hours rather than a day, yet long enough that under the heaviest
/// faults (backoffs, late events) a landed upload is proven before it (with 30 min, checks
/// sometimes came later and an S3 timeout on the ranged GET then failed the attempt).
const VERIFY_TIMEOUT_MINUTES: u64 = 120;
/// `MAX_ATTEMPTS` in the property tests (the default).
const MAX_ATTEMPTS: u64 = 3;

fn random_fault(rng: &mut Rng) -> Fault {
    match rng.upto(5) {
        0 => Fault::TooMany(Some(rng.upto(90))),
        1 => Fault::TooMany(None),
        2 => Fault::Status(rng.pick(&[500, 502, 503, 504])),
        3 => Fault::LostRequest,
        _ => Fault::LostAnswer,
    }
}

fn simulate(s: &Scenario) -> Simulated {
    let mut rng = Rng::new(s.seed);
    let mut gitlab = SimGitLab::new(s.per_minute);
    gitlab.page_cap = s.page_cap;
    gitlab.retry_after_header = s.retry_after_header;
    let mut configured: Vec<usize> = Vec::new();
    for i in 0..s.groups {
        let parent = (i > 0 && rng.percent(40)).then(|| rng.pick(&configured));
        configured.push(gitlab.add_group(&format!("team-{i}"), parent));
    }
    let nested = gitlab.add_group("nested", Some(configured[0]));
    let outside = gitlab.add_group("outside", None);
    let mut all = configured.clone();
    all.extend([nested, outside]);
    for _ in 0..s.projects {
        let group = rng.pick(&all);
        let id = gitlab.add_projects(group, 1)[0];
        if group == outside || rng.percent(10) {
            let with = rng.pick(&configured);
            gitlab.share(id, with);
        }
        if rng.percent(5) {
            gitlab.project_mut(id).archived = true;
        }
    }
    let refs: Vec<String> = configured
        .iter()
        .map(|g| {
            let group = &gitlab.groups[*g];
            if rng.percent(50) {
                group.id.to_string()
            } else {
                group.full_path.clone()
            }
        })
        .collect();
    let config = config(&[
        ("GROUPS_TO_BACKUP", &refs.join(",")),
        ("EXPORTS_PER_MINUTE", &s.per_minute.to_string()),
        ("SUBREQUESTS_PER_INVOCATION", &s.budget.to_string()),
        (
            "VERIFY_TIMEOUT_MINUTES",
            &VERIFY_TIMEOUT_MINUTES.to_string(),
        ),
        ("MAX_ATTEMPTS", &MAX_ATTEMPTS.to_string()),
    ]);
    let expected = gitlab.own_projects(&config.groups, true, true);
    let mut refused = BTreeSet::new();
    for id in &expected {
        if rng.percent(s.refusal_percent) {
            gitlab.refusals.insert(*id, rng.pick(&[403, 404, 400]));
            refused.insert(*id);
        }
    }
    let mut broken = Rng::new(s.seed ^ 0xB0);
    for id in expected.difference(&refused) {
        if broken.percent(s.build_failure_percent) {
            gitlab.build_failures.insert(*id);
        } else if broken.percent(s.lost_upload_percent) {
            gitlab.lost_uploads.insert(*id);
        }
    }
    let build_failures = gitlab.build_failures.clone();
    let lost_uploads = gitlab.lost_uploads.clone();
    gitlab.build_rng = Rng::new(s.seed ^ 0xB1);
    if s.fault_percent > 0 {
        let (chance, mut faults) = (s.fault_percent, Rng::new(s.seed ^ 0xFA));
        gitlab.export_faults.random = Some(Box::new(move || {
            faults.percent(chance).then(|| random_fault(&mut faults))
        }));
        let (chance, mut faults) = (s.fault_percent / 2, Rng::new(s.seed ^ 0xFB));
        gitlab.listing_faults.random = Some(Box::new(move || {
            faults.percent(chance).then(|| random_fault(&mut faults))
        }));
        // 429s on status checks with any Retry-After: a short one must not shorten a
        // pending export block.
        let (chance, mut faults) = (s.fault_percent / 2, Rng::new(s.seed ^ 0xFC));
        gitlab.status_faults.random = Some(Box::new(move || {
            faults.percent(chance).then(|| random_fault(&mut faults))
        }));
    }
    let mut world = World::new(gitlab);
    world.rng = Rng::new(s.seed ^ 0x1A7);
    world.leg_ms = (10, 1_500);
    world.slow_percent = s.fault_percent / 5;
    let mut h = Harness::new(config, world);
    h.rng = Rng::new(s.seed ^ 0xC0);
    h.cron_jitter_ms = s.cron_jitter_s * SECOND;
    if s.late {
        h.late = (3, 10 * MINUTE);
    }
    if s.crash_percent > 0 {
        let (chance, mut crashes) = (s.crash_percent, Rng::new(s.seed ^ 0xDE));
        h.crash = Box::new(move |_| {
            crashes
                .percent(chance)
                .then(|| crashes.pick(&[Crash::BeforeSend, Crash::InFlight, Crash::AfterHandle]))
        });
    }
    // Runs under the worst faults take under three times the ideal pace; a run still going
    // after twice that (and two hours) is stuck.
    // Lost uploads take MAX_ATTEMPTS verify timeouts and the retry backoffs on top.
    let rounds = (s.projects as u64).div_ceil(u64::from(s.per_minute)) + 5;
    let lost = if lost_uploads.is_empty() {
        0
    } else {
        MAX_ATTEMPTS * VERIFY_TIMEOUT_MINUTES * MINUTE + ms(RETRY_BACKOFF[0] + RETRY_BACKOFF[1])
    };
    h.run_until_finished(T0 + 2 * HOUR + rounds * 6 * MINUTE + 2 * lost);
    Simulated {
        h,
        expected,
        refused,
        build_failures,
        lost_uploads,
    }
}

/// Properties (1) to (4) of every scenario.
fn check(s: &Scenario, sim: &Simulated) {
    let Simulated {
        h,
        expected,
        refused,
        build_failures,
        lost_uploads,
    } = sim;
    let gitlab = &h.world.gitlab;
    // (1) GitLab's limit, by arrival time, in any 60 s window (export requests only: status
    // checks and ranged GETs do not count); never a 429 of its own.
    assert_gitlab_window_respected(&gitlab.exports, s.per_minute);
    assert_eq!(gitlab.limited_by_itself(), 0, "GitLab limited the worker");
    // (2) Each tick within its subrequest budget (checks and ranged GETs included) and
    // EXPORTS_PER_MINUTE.
    assert_ticks_within_budget(&h.ticks, s.budget, s.per_minute);
    // (3) The run finished; every listed project has exactly one final outcome; none lost:
    // verified, or failed with its reason (refused; or after MAX_ATTEMPTS accepted attempts
    // whose build failed or whose upload never landed).
    let run = h.latest_run().unwrap();
    assert_eq!((run.id, run.phase), (1, Phase::Finished));
    let states = h.states(run.id);
    assert_eq!(
        states.keys().copied().collect::<BTreeSet<_>>(),
        *expected,
        "the run holds exactly the own projects of the groups"
    );
    let accepted = gitlab.accepted();
    let heard = gitlab.accepted_heard();
    let reasons: BTreeMap<u64, String> = h
        .store()
        .failures(run.id, u64::MAX >> 1)
        .unwrap()
        .into_iter()
        .map(|(id, _, reason)| (id, reason))
        .collect();
    let after = format!("(after {MAX_ATTEMPTS} attempts)");
    for (id, state) in &states {
        let broken = build_failures.contains(id) || lost_uploads.contains(id);
        let outcome = if refused.contains(id) || broken {
            "failed"
        } else {
            "verified"
        };
        assert_eq!(state, outcome, "project {id}");
        if state == "verified" {
            assert!(
                accepted.contains_key(id),
                "{id} recorded but never accepted"
            );
        }
        let reason = reasons.get(id).map(String::as_str).unwrap_or_default();
        // Injected faults can also leave three export requests of a broken project without an
        // answer in a row: that uses one of its attempts too, and may be the last one.
        let unanswered = reason
            .starts_with("GitLab gave no usable answer to 3 export requests in a row")
            && reason.ends_with(&after);
        if unanswered {
            assert!(broken, "project {id}: {reason}");
        } else if refused.contains(id) {
            let expected = match gitlab.refusals[id] {
                403 => "the token needs the Maintainer role on this project".to_owned(),
                404 => "project gone".to_owned(),
                _ => format!("GitLab refused the export: {REFUSAL_400}"),
            };
            assert_eq!(reason, expected, "project {id}");
        } else if build_failures.contains(id) {
            assert_eq!(
                reason,
                format!("GitLab could not build the export {after}"),
                "project {id}"
            );
        } else if lost_uploads.contains(id) {
            let never_arrived =
                format!("the upload never arrived within {VERIFY_TIMEOUT_MINUTES} minutes");
            assert!(
                (reason.starts_with(&never_arrived)
                    || reason.starts_with("S3 did not answer the check"))
                    && reason.ends_with(&after),
                "project {id}: {reason}"
            );
        }
        if broken {
            // It used all its attempts: each an accepted export the worker heard, or three
            // export requests in a row that got no usable answer.
            assert_eq!(
                h.attempts(run.id, *id),
                MAX_ATTEMPTS,
                "project {id}: attempts used"
            );
            let heard = heard.get(id).copied().unwrap_or(0);
            assert!(
                heard <= MAX_ATTEMPTS as usize,
                "project {id}: {heard} accepted exports heard"
            );
            if !unanswered {
                assert!(heard > 0, "project {id}: {reason}, with no export accepted");
            }
        }
    }
    let failed = refused.len() + build_failures.len() + lost_uploads.len();
    assert_eq!(
        (run.listed, run.exported, run.verified, run.failed),
        (
            expected.len() as u64,
            (expected.len() - refused.len()) as u64,
            (expected.len() - failed) as u64,
            failed as u64
        )
    );
    assert_landed_and_proven(h, &run);
    assert!(gitlab
        .exports
        .iter()
        .all(|e| expected.contains(&e.project_id)));
    // (4) No project twice, but after an answer the worker never heard, or after an attempt
    // that failed (then only once the failure could be known, and after RETRY_BACKOFF).
    let mut retried = BTreeMap::new();
    for id in build_failures {
        retried.insert(*id, (ms(FIRST_CHECK_AFTER), MAX_ATTEMPTS));
    }
    for id in lost_uploads {
        retried.insert(*id, (VERIFY_TIMEOUT_MINUTES * MINUTE, MAX_ATTEMPTS));
    }
    for t in &h.ticks {
        for e in t.events() {
            if let Event::RetryScheduled {
                project_id, reason, ..
            } = e
            {
                // Three export requests of one project left without an answer in a row (the
                // injected faults) also use an attempt; the project still ends verified.
                assert!(
                    retried.contains_key(project_id)
                        || reason.starts_with("GitLab gave no usable answer to 3 export requests"),
                    "project {project_id}: an attempt failed at +{} s: {reason}",
                    (t.started_ms - T0) / SECOND
                );
            }
        }
    }
    assert_no_export_after_a_heard_outcome_but_retries(&gitlab.exports, &retried);
    // No project is checked before GitLab accepted it, nor sooner than FIRST_CHECK_AFTER.
    for (at, id, _) in &gitlab.status_checks {
        assert!(
            gitlab.exports.iter().any(|e| e.project_id == *id
                && e.status == 202
                && e.at_ms + ms(FIRST_CHECK_AFTER) <= *at),
            "project {id} checked at +{} ms before its export was due a check",
            at - T0
        );
    }
    // And the waits GitLab asks for are kept.
    assert_waits_kept(&h.world.sent);
}

/// After a 429 the worker heard, no export request goes out before `Retry-After` (60 s when
/// absent) and the slack, and after a 429 on anything but an export no GitLab request at all;
/// after a 5xx or a network failure it heard, no GitLab request at all goes out before the
/// first backoff step.
fn assert_waits_kept(sent: &[Sent]) {
    for (i, s) in sent
        .iter()
        .enumerate()
        .filter(|(_, s)| s.heard && s.to_gitlab)
    {
        // Requests sent together with it went out before its answer came.
        let mut later = sent[i + 1..]
            .iter()
            .filter(|n| n.to_gitlab && n.batch != s.batch);
        if s.answer == Ok(429) {
            let until = s.done_ms + s.retry_after_s.unwrap_or(60) * SECOND + ms(RETRY_AFTER_SLACK);
            let held_back = s.export;
            if let Some(next) = later.find(|n| n.export || !held_back) {
                assert!(
                    next.sent_ms >= until,
                    "a GitLab request (export: {}) went out {} ms before Retry-After and slack \
                     passed after a 429 (on an export: {}); requests since: {:?}",
                    next.export,
                    until - next.sent_ms,
                    s.export,
                    sent[i..]
                        .iter()
                        .take_while(|n| n.sent_ms <= next.sent_ms)
                        .map(|n| (
                            n.sent_ms - s.sent_ms,
                            n.to_gitlab,
                            n.export,
                            n.answer.clone(),
                            n.retry_after_s
                        ))
                        .collect::<Vec<_>>()
                );
            }
        } else if s.answer.as_ref().map_or(true, |status| *status >= 500) {
            let until = s.done_ms + ms(BACKOFF_STEP);
            if let Some(next) = later.next() {
                assert!(
                    next.sent_ms >= until,
                    "GitLab was asked {} ms into the backoff after {:?}: {:?}",
                    until - next.sent_ms,
                    s.answer,
                    sent[i..]
                        .iter()
                        .take_while(|n| n.sent_ms <= next.sent_ms)
                        .map(|n| (
                            n.sent_ms - s.sent_ms,
                            n.batch,
                            n.to_gitlab,
                            n.export,
                            n.heard,
                            n.answer.clone()
                        ))
                        .collect::<Vec<_>>()
                );
            }
        }
    }
}

fn scenario(faulty: bool) -> impl Strategy<Value = Scenario> {
    let faults = if faulty { 0u32..=15 } else { 0u32..=0 };
    let crashes = if faulty { 0u32..=8 } else { 0u32..=0 };
    let refusals = if faulty { 0u32..=10 } else { 0u32..=0 };
    let broken = if faulty { 0u32..=5 } else { 0u32..=0 };
    (
        (0usize..=300, 1usize..=4, 1u64..=100, 2u32..=60, 1u32..=10),
        (
            faults,
            crashes,
            refusals,
            broken.clone(),
            broken,
            0u64..=25,
            any::<bool>(),
            any::<bool>(),
            any::<u64>(),
        ),
    )
        .prop_map(
            move |(
                (projects, groups, page_cap, budget, per_minute),
                (
                    fault_percent,
                    crash_percent,
                    refusal_percent,
                    build_failure_percent,
                    lost_upload_percent,
                    cron_jitter_s,
                    late,
                    retry_after_header,
                    seed,
                ),
            )| Scenario {
                projects,
                groups,
                page_cap,
                budget,
                per_minute,
                fault_percent,
                crash_percent,
                refusal_percent,
                build_failure_percent,
                lost_upload_percent,
                cron_jitter_s,
                late: late && faulty,
                retry_after_header,
                seed,
            },
        )
}

/// Few cases by default, so the whole file runs in a few seconds; `PROPTEST_CASES=2000` soaks.
fn cases() -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(16)
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: cases(),
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    /// With 429s, 5xx, lost requests and answers, timeouts, refusals, restarts at any step,
    /// cron jitter and late events: (1) to (4) hold.
    #[test]
    fn prop_under_faults_and_restarts_the_limit_holds_and_every_project_ends_once(
        s in scenario(true)
    ) {
        let sim = simulate(&s);
        check(&s, &sim);
    }

    /// Without faults: also every own project exported exactly once, never a 429, and the run
    /// goes at EXPORTS_PER_MINUTE (each slot busy one minute plus the round trip).
    #[test]
    fn prop_without_faults_every_own_project_is_exported_exactly_once_at_full_pace(
        s in scenario(false)
    ) {
        let sim = simulate(&s);
        check(&s, &sim);
        let gitlab = &sim.h.world.gitlab;
        prop_assert!(gitlab.exports.iter().all(|e| e.status == 202));
        prop_assert_eq!(gitlab.exports.len(), sim.expected.len());
        let run = sim.h.latest_run().unwrap();
        let listed_at = gitlab.listings.iter().map(|l| l.at_ms).max().unwrap_or(T0);
        let rounds = (sim.expected.len() as u64).div_ceil(u64::from(s.per_minute));
        let bound = listed_at + rounds * (MINUTE + 3 * SECOND) + 2 * MINUTE + 2 * s.cron_jitter_s * SECOND;
        prop_assert!(
            run.finished_ms.unwrap() <= bound,
            "finished {} s after listing, bound {} s",
            (run.finished_ms.unwrap() - listed_at) / SECOND,
            (bound - listed_at) / SECOND
        );
    }
}
