//! Export requests: the rate window, 429s and the learned limit, backoff after 5xx and network
//! failures, refusals, and exports left unanswered.

use super::sim::{
    assert_gitlab_window_respected, assert_landed_and_proven,
    assert_no_export_after_a_heard_outcome, config, one_group, Fault, FaultPlan, Harness, Sent,
    World, HOUR, MINUTE, REFUSAL_400, SECOND, T0,
};
use crate::engine::{
    Event, BACKOFF_MAX, BACKOFF_STEP, FIRST_CHECK_AFTER, LEARNED_LIMIT_HOLDS, RETRY_AFTER_SLACK,
};
use crate::store::MetaKey;
use crate::time::ms;

#[test]
fn a_lower_limit_learned_from_a_429_holds_for_a_while_then_the_setting_is_tried_again() {
    // GitLab allows 3 a minute, the setting 6; 90 projects take half an hour at 3.
    let (gitlab, ids) = one_group(90, 3);
    let mut h = Harness::new(config(&[]), World::new(gitlab));
    let run = h.run_until_finished(T0 + 2 * HOUR);
    assert_eq!((run.verified, run.failed), (90, 0));
    let learned: Vec<(u64, u32)> = h
        .ticks
        .iter()
        .filter_map(|t| Some((t.started_ms, t.report.as_ref()?)))
        .flat_map(|(at, r)| {
            r.events.iter().filter_map(move |e| match e {
                Event::LimitLearned {
                    exports_per_minute, ..
                } => Some((at, *exports_per_minute)),
                _ => None,
            })
        })
        .collect();
    // Learned at the first 429, and again each time the setting is tried after the hold.
    assert!(learned.len() >= 2, "{learned:?}");
    assert!(learned.iter().all(|(_, limit)| *limit == 3), "{learned:?}");
    for pair in learned.windows(2) {
        assert!(
            pair[1].0 >= pair[0].0 + ms(LEARNED_LIMIT_HOLDS),
            "learned again before the hold ended: {learned:?}"
        );
    }
    // One 429 per hold at most (plus the first), and every project exported once.
    let refused = h.world.gitlab.limited_by_itself();
    let run_ms = run.finished_ms.unwrap() - T0;
    assert!(
        refused as u64 <= 1 + run_ms / ms(LEARNED_LIMIT_HOLDS),
        "{refused} 429s in {} min",
        run_ms / MINUTE
    );
    let accepted = h.world.gitlab.accepted();
    assert_eq!(accepted.keys().copied().collect::<Vec<_>>(), ids);
    assert!(accepted.values().all(|n| *n == 1));
}

#[test]
fn a_429_stops_the_ticks_exports_and_nothing_is_sent_before_retry_after_and_slack() {
    for retry_after in [Some(90), None] {
        let (mut gitlab, ids) = one_group(10, 6);
        gitlab.export_faults =
            FaultPlan::scripted(&[None, None, Some(Fault::TooMany(retry_after))]);
        let mut h = Harness::new(config(&[]), World::new(gitlab));
        h.fire_next();
        // Preflight and the listing, then (the alarm, at once) the exports.
        h.fire_next();
        let tick = h.ticks.last().unwrap();
        assert_eq!(tick.exports, 3, "exports stop at the 429");
        let limited = h.world.sent.len() - 1;
        let last = &h.world.sent[limited];
        assert!(
            last.export && last.answer == Ok(429),
            "the 429 is the tick's last request"
        );
        let wait = retry_after.unwrap_or(60) * SECOND + ms(RETRY_AFTER_SLACK);
        let until = last.done_ms + wait;
        let report = tick.report.as_ref().unwrap();
        // The tick wakes for the first check of the two accepted exports (they are not held
        // back: only the export endpoint answered 429), and the exports stay blocked till then.
        let first_accepted = h.world.sent.iter().find(|s| s.export).unwrap().done_ms;
        assert_eq!(
            report.wake_at_ms,
            Some(until.min(first_accepted + ms(FIRST_CHECK_AFTER)))
        );
        assert_eq!(
            h.store()
                .meta(&[MetaKey::ExportsBlockedUntil])
                .unwrap()
                .u64(MetaKey::ExportsBlockedUntil)
                .unwrap(),
            Some(until)
        );
        assert!(report.events.contains(&Event::RateLimited {
            retry_after_s: retry_after.unwrap_or(60)
        }));

        let run = h.run_until_finished(T0 + HOUR);
        assert_eq!((run.exported, run.verified), (10, 10));
        // Status checks may go meanwhile (another endpoint); the next export may not.
        let next = h.gitlab_sends_after(limited).find(|s| s.export).unwrap();
        assert!(
            next.sent_ms >= until,
            "sent at +{} ms, {} ms before Retry-After and slack passed",
            next.sent_ms - T0,
            until - next.sent_ms
        );
        let accepted = h.world.gitlab.accepted();
        assert_eq!(accepted.keys().copied().collect::<Vec<_>>(), ids);
        assert!(accepted.values().all(|n| *n == 1));
        assert_gitlab_window_respected(&h.world.gitlab.exports, 6);
    }
}

#[test]
fn a_short_429_on_a_status_check_does_not_shorten_the_wait_of_an_export_429() {
    let (mut gitlab, _) = one_group(10, 6);
    gitlab.export_faults = FaultPlan::scripted(&[None, None, Some(Fault::TooMany(Some(90)))]);
    // `GET /user` passes; the first status check (10 s later) is answered 429, Retry-After 5.
    gitlab.status_faults = FaultPlan::scripted(&[None, Some(Fault::TooMany(Some(5)))]);
    let mut h = Harness::new(config(&[]), World::new(gitlab));
    h.fire_next();
    // Preflight and the listing, then (the alarm, at once) the exports.
    h.fire_next();
    let limited = h.world.sent.len() - 1;
    assert!(h.world.sent[limited].export && h.world.sent[limited].answer == Ok(429));
    let until = h.world.sent[limited].done_ms + 90 * SECOND + ms(RETRY_AFTER_SLACK);
    h.run_until_finished(T0 + HOUR);
    assert!(h
        .world
        .sent
        .iter()
        .any(|s| !s.export && s.to_gitlab && s.answer == Ok(429)));
    let next = h.gitlab_sends_after(limited).find(|s| s.export).unwrap();
    assert!(
        next.sent_ms >= until,
        "an export went out {} s before the export's Retry-After and slack passed",
        (until - next.sent_ms) / SECOND
    );
}

#[test]
fn a_gitlab_stricter_than_exports_per_minute_is_obeyed_through_its_429s() {
    for retry_after_header in [true, false] {
        let (mut gitlab, ids) = one_group(20, 3);
        gitlab.retry_after_header = retry_after_header;
        let mut h = Harness::new(config(&[]), World::new(gitlab));
        let run = h.run_until_finished(T0 + 2 * HOUR);
        assert_eq!((run.exported, run.verified, run.failed), (20, 20, 0));
        assert_eq!(
            h.world.gitlab.accepted().into_keys().collect::<Vec<_>>(),
            ids
        );
        // The first 429 teaches the worker GitLab's limit: at most one more in the whole run.
        let refused = h.world.gitlab.limited_by_itself();
        assert!((1..=2).contains(&refused), "{refused} answers 429");
        // … and keeps to it fully: 20 exports at 3 a minute, then the last proofs.
        let took = run.finished_ms.unwrap() - run.started_ms;
        assert!(took <= (20u64.div_ceil(3) + 3) * MINUTE, "took {took} ms");
        for (i, s) in h.world.sent.iter().enumerate() {
            if s.answer == Ok(429) {
                // Only exports are limited (and only they answered 429): the next export waits.
                assert!(s.export);
                let next = h.gitlab_sends_after(i).find(|s| s.export).unwrap();
                assert!(next.sent_ms >= s.done_ms + ms(RETRY_AFTER_SLACK));
            }
        }
    }
}

#[test]
fn at_production_cadence_six_per_minute_exports_n_projects_in_about_n_over_6_minutes() {
    for n in [1usize, 6, 7, 60] {
        let (gitlab, _) = one_group(n, 6);
        let mut world = World::new(gitlab);
        world.leg_ms = (50, 400);
        let mut h = Harness::new(config(&[]), world);
        h.cron_jitter_ms = 2 * SECOND;
        // One minute more than the exports alone: the run finishes only once the last
        // exports are proven (first checked FIRST_CHECK_AFTER after GitLab accepted them,
        // then on the backoff of CHECK_STEPS), and their manifest and summary are written.
        let bound = (n.div_ceil(6) as u64 + 3) * MINUTE;
        let run = h.run_until_finished(T0 + bound);
        let took = run.finished_ms.unwrap() - run.started_ms;
        assert!(took <= bound, "{n} projects took {took} ms");
        assert_eq!((run.exported, run.verified), (n as u64, n as u64));
        assert_landed_and_proven(&h, &run);
        assert_gitlab_window_respected(&h.world.gitlab.exports, 6);
        assert_eq!(h.world.gitlab.limited_by_itself(), 0);
    }
}

#[test]
fn a_5xx_or_network_failure_keeps_the_project_pending_and_backs_off() {
    let failures = [
        Fault::Status(503),
        Fault::Status(500),
        Fault::LostRequest,
        Fault::LostAnswer,
    ];
    for fault in failures {
        let (mut gitlab, ids) = one_group(5, 6);
        let f = Some(fault);
        // p1 ok; p2 fails twice then goes; p3 ok; p4 fails once (after successes) then goes; p5.
        gitlab.export_faults = FaultPlan::scripted(&[None, f, f, None, None, f]);
        let mut h = Harness::new(config(&[]), World::new(gitlab));
        h.cron_jitter_ms = 3 * SECOND;
        h.fire_next();
        // Preflight and the listing, then (the alarm, at once) the exports.
        h.fire_next();
        let first = h.ticks.last().unwrap();
        assert_eq!(first.exports, 2, "{fault:?}: the tick stops at the failure");
        assert!(first
            .events()
            .iter()
            .any(|e| matches!(e, Event::RetryLater { .. })));
        let failed = h.world.sent.last().unwrap();
        assert!(failed.export && failed.answer != Ok(202));
        let states = h.states(1);
        assert_eq!(states[&ids[0]], "exported");
        assert_eq!(states[&ids[1]], "pending", "{fault:?}: no attempt lost");

        let run = h.run_until_finished(T0 + HOUR);
        assert_eq!(
            (run.exported, run.verified, run.failed),
            (5, 5, 0),
            "{fault:?}"
        );
        // Each failure is followed by silence towards GitLab for the backoff: 1 min, then
        // 2 min after a second failure in a row, and 1 min again once GitLab answered.
        let failures: Vec<usize> = h
            .world
            .sent
            .iter()
            .enumerate()
            .filter(|(_, s)| s.export && s.answer.as_ref().map_or(true, |status| *status >= 500))
            .map(|(i, _)| i)
            .collect();
        assert_eq!(failures.len(), 3, "{fault:?}");
        for (failure, minutes) in failures.into_iter().zip([1, 2, 1]) {
            let until = h.world.sent[failure].done_ms + minutes * ms(BACKOFF_STEP);
            let next = h.gitlab_sends_after(failure).next().unwrap();
            assert!(
                next.sent_ms >= until,
                "{fault:?}: GitLab asked {} ms before the {minutes} min backoff ended",
                until - next.sent_ms
            );
        }
        assert_no_export_after_a_heard_outcome(&h.world.gitlab.exports);
        assert_gitlab_window_respected(&h.world.gitlab.exports, 6);
    }
}

#[test]
fn the_backoff_doubles_up_to_eight_minutes() {
    let (mut gitlab, _) = one_group(2, 6);
    let down = Some(Fault::Status(502));
    gitlab.export_faults = FaultPlan::scripted(&[down; 7]);
    let mut h = Harness::new(config(&[]), World::new(gitlab));
    let run = h.run_until_finished(T0 + 2 * HOUR);
    assert_eq!(run.exported, 2);
    assert_eq!((run.verified, run.failed), (2, 0));
    let failures: Vec<&Sent> = h
        .world
        .sent
        .iter()
        .filter(|s| s.answer == Ok(502))
        .collect();
    assert_eq!(failures.len(), 7);
    for (pair, minutes) in failures.windows(2).zip([1u64, 2, 4, 8, 8, 8]) {
        let backoff = (minutes * ms(BACKOFF_STEP)).min(ms(BACKOFF_MAX));
        let gap = pair[1].sent_ms - pair[0].done_ms;
        assert!(
            gap >= backoff && gap < backoff + MINUTE + SECOND,
            "after a failure: {gap} ms, expected {backoff} ms (+ at most a cron period)"
        );
    }
}

#[test]
fn refusals_403_404_400_fail_the_project_with_the_documented_reasons() {
    let (mut gitlab, ids) = one_group(5, 6);
    gitlab.refusals.insert(ids[1], 403);
    gitlab.refusals.insert(ids[2], 404);
    gitlab.refusals.insert(ids[3], 400);
    let mut h = Harness::new(config(&[]), World::new(gitlab));
    let run = h.run_until_finished(T0 + HOUR);
    assert_eq!(
        (run.listed, run.exported, run.verified, run.failed),
        (5, 2, 2, 3)
    );
    let path = |i: usize| h.world.gitlab.path_of(ids[i]).to_owned();
    assert_eq!(
        h.store().failures(run.id, 10).unwrap(),
        vec![
            (
                ids[1],
                path(1),
                "the token needs the Maintainer role on this project".to_owned()
            ),
            (ids[2], path(2), "project gone".to_owned()),
            (
                ids[3],
                path(3),
                format!("GitLab refused the export: {REFUSAL_400}")
            ),
        ]
    );
    // Each refused project was asked for once: a refusal is not retried.
    assert_eq!(h.world.gitlab.exports.len(), 5);
    let states = h.states(run.id);
    assert_eq!(states[&ids[0]], "verified");
    assert_eq!(states[&ids[1]], "failed");
    assert_eq!(states[&ids[4]], "verified");
    assert_landed_and_proven(&h, &run);
}

#[test]
fn a_project_whose_export_always_answers_500_goes_behind_the_others_then_fails_with_the_reason() {
    let (mut gitlab, ids) = one_group(12, 6);
    gitlab.refusals.insert(ids[0], 500);
    let mut h = Harness::new(config(&[("MAX_ATTEMPTS", "2")]), World::new(gitlab));
    let run = h.run_until_finished(T0 + 6 * HOUR);
    assert_eq!((run.verified, run.failed), (11, 1), "{}", h.describe());
    let failures = h.store().failures(run.id, 10).unwrap();
    assert_eq!(failures[0].0, ids[0]);
    assert!(
        failures[0]
            .2
            .starts_with("GitLab gave no usable answer to 6 export requests in a row")
            && failures[0].2.ends_with("(after 2 attempts)"),
        "{}",
        failures[0].2
    );
    // It was asked UNANSWERED_PER_ATTEMPT times per attempt, and never held the others back:
    // the second project went out right after the first failure's backoff.
    let asked = h
        .world
        .gitlab
        .exports
        .iter()
        .filter(|e| e.project_id == ids[0])
        .count();
    assert_eq!(asked, 6);
    let second = h
        .world
        .gitlab
        .exports
        .iter()
        .position(|e| e.project_id == ids[1])
        .unwrap();
    assert_eq!(
        second, 1,
        "the next export after the 500 is another project"
    );
    assert_gitlab_window_respected(&h.world.gitlab.exports, 6);
}

#[test]
fn the_answers_times_reach_the_stored_window_by_the_end_of_the_tick() {
    // Six exports in one tick: the window is written with each claim, and the answers' times
    // (sooner than the in-flight bound) with the next claim or when the tick ends, so the next
    // tick frees the window on time.
    let (gitlab, _) = one_group(6, 6);
    let mut h = Harness::new(config(&[]), World::new(gitlab));
    h.fire_next();
    h.fire_next();
    let tick = h.ticks.last().unwrap();
    assert_eq!(tick.exports, 6);
    let answered: Vec<u64> = h
        .world
        .sent
        .iter()
        .filter(|s| s.export)
        .map(|s| s.done_ms)
        .collect();
    let stored = h.store().meta(&[MetaKey::ExportWindow]).unwrap();
    let window =
        crate::engine::window::Window::read(stored.text(MetaKey::ExportWindow).unwrap().as_deref())
            .unwrap();
    let now = *answered.last().unwrap();
    assert_eq!(window.used(now), 6);
    assert_eq!(
        window.frees_at(now),
        Some(answered[0] + MINUTE),
        "the first answer's time, not its in-flight bound"
    );
    let last = answered[5];
    assert_eq!(window.used(last + MINUTE - 1), 1);
    assert_eq!(
        window.used(last + MINUTE),
        0,
        "the last answer's time too, stored when the tick ended"
    );
}

#[test]
fn no_export_is_claimed_while_the_most_exports_under_way_await_their_proof() {
    use crate::engine::window::Window;
    use crate::store::{Claimable, ClaimedProject};
    let (gitlab, _) = one_group(3, 6);
    let mut h = Harness::new(config(&[]), World::new(gitlab));
    // The preflight and the listing.
    h.fire_next();
    let run = h.store().active_run().unwrap().unwrap();
    // As many accepted exports under way as the worker keeps (of projects of another run, so
    // the run's own are untouched), none due for a check yet.
    let mut window = Window::default();
    window.flights.for_run(run.id);
    for id in 0..crate::engine::MAX_EXPORTS_UNDER_WAY as u64 {
        window.flights.claim(Claimable {
            project: ClaimedProject {
                project_id: 1_000_000 + id,
                path: format!("elsewhere/{id}"),
                attempts: 0,
                exported_ms: None,
            },
            new: false,
        });
        window
            .flights
            .accepted(1_000_000 + id, h.world.now, h.world.now + HOUR);
    }
    h.store()
        .set_meta(MetaKey::ExportWindow, window.to_json().unwrap())
        .unwrap();
    let exports_before = h.world.gitlab.exports.len();
    h.tick(crate::engine::Start::IfDue);
    assert_eq!(h.world.gitlab.exports.len(), exports_before, "no room");
    // One of them ends: there is room for one export.
    window.flights.end(1_000_000);
    h.store()
        .set_meta(MetaKey::ExportWindow, window.to_json().unwrap())
        .unwrap();
    h.tick(crate::engine::Start::IfDue);
    assert_eq!(h.world.gitlab.exports.len(), exports_before + 1);
}
