//! A worker killed mid-tick: before a request goes out, while it is in flight, after its answer.

use super::sim::{
    assert_gitlab_window_respected, assert_no_export_after_a_heard_outcome, config, is_export,
    one_group, Crash, Harness, World, HOUR, SECOND, T0,
};

#[test]
fn a_worker_that_dies_before_sending_an_export_loses_no_project_and_sends_each_once() {
    let (gitlab, ids) = one_group(9, 6);
    let mut h = Harness::new(config(&[]), World::new(gitlab));
    let mut exports = 0;
    h.crash = Box::new(move |request| {
        exports += u32::from(is_export(request));
        (is_export(request) && exports == 2).then_some(Crash::BeforeSend)
    });
    let run = h.run_until_finished(T0 + HOUR);
    // Tick 0 lists; tick 1 (the alarm) exports and dies.
    assert_eq!(h.ticks[1].crashed, Some(Crash::BeforeSend));
    assert_eq!((run.exported, run.verified, run.failed), (9, 9, 0));
    let accepted = h.world.gitlab.accepted();
    assert_eq!(accepted.keys().copied().collect::<Vec<_>>(), ids);
    assert!(accepted.values().all(|n| *n == 1));
    assert_gitlab_window_respected(&h.world.gitlab.exports, 6);
}

#[test]
fn a_worker_that_dies_while_an_export_is_in_flight_asks_for_it_again_within_the_limit() {
    let (gitlab, ids) = one_group(9, 6);
    let mut h = Harness::new(config(&[]), World::new(gitlab));
    let mut exports = 0;
    h.crash = Box::new(move |request| {
        exports += u32::from(is_export(request));
        (is_export(request) && exports == 2).then_some(Crash::InFlight)
    });
    let run = h.run_until_finished(T0 + HOUR);
    assert_eq!((run.exported, run.verified, run.failed), (9, 9, 0));
    let accepted = h.world.gitlab.accepted();
    assert_eq!(accepted.keys().copied().collect::<Vec<_>>(), ids);
    // The worker cannot know GitLab got it: that one project goes twice, no other.
    assert_eq!(accepted[&ids[1]], 2);
    assert_eq!(accepted.values().sum::<usize>(), 10);
    assert_no_export_after_a_heard_outcome(&h.world.gitlab.exports);
    assert_gitlab_window_respected(&h.world.gitlab.exports, 6);
    assert_eq!(h.world.gitlab.limited_by_itself(), 0);
}

#[test]
fn an_export_in_flight_when_the_worker_died_counts_until_it_must_have_reached_gitlab() {
    // One export a minute. The worker dies right after sending the first export, which takes
    // 25 s to reach GitLab and opens GitLab's window there; the retry must wait for that
    // window, not for one counted from the send.
    let (gitlab, ids) = one_group(2, 1);
    let mut world = World::new(gitlab);
    // The user check, the marker's GET and PUT, the preflight PUT, its read-back and the
    // listing page (two legs each), then the export.
    world.scripted_legs = [
        100,
        100,
        100,
        100,
        100,
        100,
        100,
        100,
        100,
        100,
        100,
        100,
        25 * SECOND,
    ]
    .into();
    let mut h = Harness::new(config(&[("EXPORTS_PER_MINUTE", "1")]), world);
    let mut exports = 0;
    h.crash = Box::new(move |request| {
        exports += u32::from(is_export(request));
        (is_export(request) && exports == 1).then_some(Crash::InFlight)
    });
    let run = h.run_until_finished(T0 + HOUR);
    assert_eq!((run.exported, run.verified), (2, 2));
    let gitlab = &h.world.gitlab;
    assert_eq!(
        gitlab.exports[0].at_ms - gitlab.exports[0].sent_ms,
        25 * SECOND
    );
    let arrivals: Vec<(u64, u64, u16)> = gitlab
        .exports
        .iter()
        .map(|e| (e.sent_ms - T0, e.at_ms - T0, e.status))
        .collect();
    assert_eq!(
        gitlab.limited_by_itself(),
        0,
        "(sent, arrived, status): {arrivals:?}"
    );
    assert_gitlab_window_respected(&gitlab.exports, 1);
    assert_eq!(
        gitlab.accepted()[&ids[0]],
        2,
        "asked again: the worker never heard"
    );
}

#[test]
fn a_worker_that_dies_after_recording_an_answer_repeats_nothing() {
    let (gitlab, ids) = one_group(9, 6);
    let mut h = Harness::new(config(&[]), World::new(gitlab));
    // Every other export's answer is the last thing its tick does. (An answer about a check
    // is stored with the next requests, so a tick that dies right after one asks GitLab about
    // that export again; an export is never asked again.)
    let mut exports = 0;
    h.crash = Box::new(move |request| {
        if !is_export(request) {
            return None;
        }
        exports += 1;
        (exports % 2 == 0).then_some(Crash::AfterHandle)
    });
    let run = h.run_until_finished(T0 + HOUR);
    assert_eq!((run.exported, run.verified, run.failed), (9, 9, 0));
    let accepted = h.world.gitlab.accepted();
    assert_eq!(accepted.keys().copied().collect::<Vec<_>>(), ids);
    assert!(accepted.values().all(|n| *n == 1));
    assert_gitlab_window_respected(&h.world.gitlab.exports, 6);
}
