//! When runs start: `run_due`, the start hour, manual starts and idle ticks.

use super::sim::{config, one_group, Began, Harness, Rng, World, DAY, HOUR, MINUTE, SECOND, T0};
use crate::engine::{run_due, Event, Start};
use crate::store::Phase;

#[test]
fn start_now_while_a_run_is_active_is_already_running_and_sends_nothing() {
    let (gitlab, _) = one_group(20, 6);
    let mut h = Harness::new(
        config(&[("SUBREQUESTS_PER_INVOCATION", "2")]),
        World::new(gitlab),
    );
    let first = h.tick(Start::Now);
    assert_eq!(first.began, Began::Ran);
    assert!(matches!(
        first.events().first(),
        Some(Event::RunStarted { manual: true, .. })
    ));
    let run = h.latest_run().unwrap();
    assert_ne!(run.phase, Phase::Finished);
    let sent = h.world.sent.len();
    h.world.now += 5 * SECOND;
    assert_eq!(h.tick(Start::Now).began, Began::AlreadyRunning(run.id));
    assert_eq!(
        h.world.sent.len(),
        sent,
        "no request for a refused manual start"
    );
    assert_eq!(h.store().recent_runs(10).unwrap().len(), 1);
}

#[test]
fn a_tick_with_no_run_that_is_not_due_is_idle_and_sends_nothing() {
    let (gitlab, _) = one_group(3, 6);
    let mut h = Harness::new(
        config(&[("BACKUP_INTERVAL_HOURS", "24")]),
        World::new(gitlab),
    );
    // No run ever: due at once.
    let run = h.run_until_finished(T0 + HOUR);
    assert_eq!(run.started_ms, T0);
    let sent = h.world.sent.len();
    for after in [HOUR, 12 * HOUR, DAY - 1] {
        h.world.now = run.started_ms + after;
        assert_eq!(h.tick(Start::IfDue).began, Began::Idle, "+{after} ms");
    }
    assert_eq!(h.world.sent.len(), sent);
    h.world.now = run.started_ms + DAY;
    let tick = h.tick(Start::IfDue);
    assert_eq!(tick.began, Began::Ran);
    assert!(matches!(
        tick.events().first(),
        Some(Event::RunStarted {
            run: 2,
            manual: false,
            ..
        })
    ));

    // With a start hour and no run yet: idle outside the hour, a run inside it.
    let (gitlab, _) = one_group(3, 6);
    let mut h = Harness::new(
        config(&[("BACKUP_START_HOUR_UTC", "3")]),
        World::new(gitlab),
    );
    h.world.now = T0 + 2 * HOUR + 59 * MINUTE;
    assert_eq!(h.tick(Start::IfDue).began, Began::Idle);
    assert!(h.world.sent.is_empty());
    h.world.now = T0 + 3 * HOUR;
    assert_eq!(h.tick(Start::IfDue).began, Began::Ran);
}

#[test]
fn run_due_counts_the_interval_from_the_last_start() {
    let config = config(&[("BACKUP_INTERVAL_HOURS", "6")]);
    let last = T0 + 5 * HOUR + 17 * SECOND;
    assert!(run_due(&config, None, T0));
    assert!(!run_due(&config, Some(last), last));
    assert!(!run_due(&config, Some(last), last + 6 * HOUR - 1));
    assert!(run_due(&config, Some(last), last + 6 * HOUR));
    assert!(run_due(&config, Some(last), last + 30 * HOUR));
}

#[test]
fn with_a_start_hour_runs_start_only_during_that_hour_and_do_not_drift_out_of_it() {
    // (interval in hours, days between runs)
    for (interval, every) in [(1u64, 1u64), (12, 1), (24, 1), (48, 2)] {
        let config = config(&[
            ("BACKUP_INTERVAL_HOURS", &interval.to_string()),
            ("BACKUP_START_HOUR_UTC", "3"),
        ]);
        let mut rng = Rng::new(interval);
        let mut last: Option<u64> = None;
        let mut busy_until = 0;
        let mut starts = Vec::new();
        let mut minute = T0;
        while minute < T0 + 60 * DAY {
            // The cron tick fires a few seconds into its minute; now and then the worker is
            // away for a while (so a day's first tick in the hour may come late).
            let now = minute + rng.upto(20 * SECOND);
            minute += MINUTE;
            if rng.percent(1) {
                minute += rng.upto(50) * MINUTE;
            }
            if now < busy_until || !run_due(&config, last, now) {
                continue;
            }
            starts.push(now);
            last = Some(now);
            busy_until = now + rng.upto(3 * HOUR); // the run takes a while
        }
        assert!(
            starts.len() as u64 >= 60 / every - 1,
            "{interval} h: {starts:?}"
        );
        for pair in starts.windows(2) {
            let (a, b) = (pair[0], pair[1]);
            assert_eq!(
                (a - T0) / HOUR % 24,
                3,
                "{interval} h: started outside the hour"
            );
            assert_eq!(
                (b - T0) / DAY - (a - T0) / DAY,
                every,
                "{interval} h: runs at +{} h and +{} h",
                (a - T0) / HOUR,
                (b - T0) / HOUR
            );
        }
    }
}

#[test]
fn a_manual_run_does_not_move_the_nightly_schedule() {
    // Nightly at 02:00 UTC. A first run started by hand at 14:00 must not make 02:00 not due.
    let (gitlab, _) = one_group(3, 6);
    let mut h = Harness::new(
        config(&[
            ("BACKUP_INTERVAL_HOURS", "24"),
            ("BACKUP_START_HOUR_UTC", "2"),
        ]),
        World::new(gitlab),
    );
    h.world.now = T0 + 14 * HOUR;
    assert_eq!(h.tick(Start::Now).began, Began::Ran);
    let manual = h.run_until_finished(T0 + 16 * HOUR);
    h.run_until(T0 + DAY + 3 * HOUR, |h| {
        h.latest_run().is_some_and(|latest| latest.id > manual.id)
    });
    let nightly = h.latest_run().unwrap();
    assert_eq!(
        (nightly.started_ms - T0) / HOUR,
        24 + 2,
        "the next night's run starts at 02:00: {nightly:?}"
    );
    // And the run after it, one interval later, also at 02:00.
    h.run_until(T0 + 2 * DAY + 3 * HOUR, |h| {
        h.latest_run().is_some_and(|latest| latest.id > nightly.id)
    });
    let next = h.latest_run().unwrap();
    assert_eq!((next.started_ms - T0) / HOUR, 48 + 2, "{next:?}");
}

#[test]
fn a_manual_run_during_a_schedule_of_intervals_counts_as_the_last_start() {
    // Without a start hour the interval runs from the last run of any kind: a run by hand
    // is a backup, and one right after it would repeat it.
    let (gitlab, _) = one_group(3, 6);
    let mut h = Harness::new(
        config(&[("BACKUP_INTERVAL_HOURS", "24")]),
        World::new(gitlab),
    );
    h.world.now = T0 + 14 * HOUR;
    assert_eq!(h.tick(Start::Now).began, Began::Ran);
    let manual = h.run_until_finished(T0 + 16 * HOUR);
    h.run_until(T0 + 2 * DAY, |h| {
        h.latest_run().is_some_and(|latest| latest.id > manual.id)
    });
    let next = h.latest_run().unwrap();
    assert!(next.started_ms >= manual.started_ms + DAY, "{next:?}");
    assert!(
        next.started_ms < manual.started_ms + DAY + 2 * MINUTE,
        "{next:?}"
    );
}

#[test]
fn a_cancelled_run_records_each_project_without_an_outcome_as_cancelled_and_the_next_starts_on_schedule(
) {
    let (gitlab, ids) = one_group(20, 6);
    let mut h = Harness::new(config(&[]), World::new(gitlab));
    // Preflight and the listing, then the first exports.
    h.fire_next();
    h.fire_next();
    let store = h.store();
    assert!(store.active_run().unwrap().unwrap().listed == 20);
    let cancelled = match crate::engine::cancel(&store, h.world.now).unwrap() {
        crate::engine::Cancel::Cancelled(run, Event::RunCancelled { run: id, .. }) => {
            assert_eq!(id, run.id);
            run
        }
        other => panic!("{other:?}"),
    };
    assert_eq!(cancelled.phase, Phase::Recording);
    assert!(matches!(
        crate::engine::cancel(&store, h.world.now).unwrap(),
        crate::engine::Cancel::AlreadyCancelled(_)
    ));
    let exports_before = h.world.gitlab.exports.len();
    let run = h.run_until_finished(T0 + HOUR);
    assert_eq!(
        h.world.gitlab.exports.len(),
        exports_before,
        "no export after the cancel"
    );
    assert!(run.cancelled_ms.is_some() && run.summary_key.is_some());
    let lines: Vec<serde_json::Value> = h
        .world
        .s3
        .puts
        .iter()
        .filter(|(_, path, _)| path.ends_with(".jsonl"))
        .flat_map(|(_, _, body)| {
            body.lines()
                .map(|l| serde_json::from_str(l).unwrap())
                .collect::<Vec<_>>()
        })
        .collect();
    let listed: Vec<u64> = lines.iter().map(|l| l["id"].as_u64().unwrap()).collect();
    assert_eq!(listed, ids, "every project once, by id");
    let cancelled_lines = lines.iter().filter(|l| l["outcome"] == "cancelled").count() as u64;
    assert_eq!(cancelled_lines, 20 - run.verified - run.failed);
    assert!(cancelled_lines > 0);
    let summary = &h
        .world
        .s3
        .puts
        .iter()
        .rev()
        .find(|(_, p, _)| p.ends_with("summary.json"))
        .unwrap()
        .2;
    let summary: serde_json::Value = serde_json::from_str(summary).unwrap();
    assert_eq!(summary["cancelled"], cancelled_lines);
    // The schedule is the cancelled run's: the next starts a day after it did.
    assert!(!run_due(
        &h.config,
        Some(run.started_ms),
        run.started_ms + DAY - MINUTE
    ));
    assert!(run_due(
        &h.config,
        Some(run.started_ms),
        run.started_ms + DAY
    ));
}

#[test]
fn a_run_cancelled_in_its_preflight_ends_at_once_and_writes_no_record() {
    let (gitlab, _) = one_group(5, 6);
    let mut h = Harness::new(
        config(&[("SUBREQUESTS_PER_INVOCATION", "2")]),
        World::new(gitlab),
    );
    h.tick(Start::Now);
    let store = h.store();
    assert_eq!(store.active_run().unwrap().unwrap().phase, Phase::Preflight);
    let run = match crate::engine::cancel(&store, h.world.now).unwrap() {
        crate::engine::Cancel::Cancelled(run, _) => run,
        other => panic!("{other:?}"),
    };
    assert_eq!(run.phase, Phase::Finished);
    assert!(run.cancelled_ms.is_some());
    assert!(run.error.unwrap().contains("cancelled by the operator"));
    assert!(store.active_run().unwrap().is_none());
    assert!(
        !h.world
            .s3
            .puts
            .iter()
            .any(|(_, path, _)| path.ends_with("summary.json")),
        "no record in a bucket the run never proved"
    );
}

#[test]
fn a_run_whose_record_s3_refuses_for_hours_ends_without_it_and_the_next_run_starts_when_due() {
    let (gitlab, _) = one_group(3, 6);
    let mut h = Harness::new(
        config(&[("BACKUP_INTERVAL_HOURS", "6")]),
        World::new(gitlab),
    );
    h.run_until(T0 + HOUR, |h| {
        h.latest_run().is_some_and(|r| r.phase == Phase::Recording)
    });
    let run = h.latest_run().unwrap();
    assert_eq!(run.verified, 3);
    // S3 now refuses every PUT of the worker's: the record cannot be written.
    h.world.s3.put_status = Some(403);
    let refused_at = h.world.now;
    let give_up = crate::time::ms(crate::engine::RECORD_GIVE_UP);
    while h.world.now < refused_at + give_up - 2 * MINUTE {
        h.fire_next();
    }
    let waiting = h.latest_run().unwrap();
    assert_eq!(
        (waiting.id, waiting.phase),
        (run.id, Phase::Recording),
        "a refused record is tried again, tick after tick, until RECORD_GIVE_UP"
    );
    h.run_until(refused_at + give_up + 2 * MINUTE, |h| {
        h.store()
            .recent_runs(5)
            .unwrap()
            .iter()
            .any(|r| r.id == run.id && r.phase == Phase::Finished)
    });
    let ended = h
        .store()
        .recent_runs(5)
        .unwrap()
        .into_iter()
        .find(|r| r.id == run.id)
        .unwrap();
    let error = ended.error.clone().unwrap();
    assert!(
        error.contains("S3 refused the run's record for 6 h") && error.contains("AccessDenied"),
        "{error}"
    );
    assert!(ended.summary_key.is_none(), "no summary was written");
    assert_eq!(ended.verified, 3, "its outcomes stay");
    let abandoned: Vec<&Event> = h
        .ticks
        .iter()
        .flat_map(|t| t.events())
        .filter(|e| matches!(e, Event::RecordAbandoned { run: id, .. } if *id == run.id))
        .collect();
    assert_eq!(abandoned.len(), 1, "logged once");
    // The next run is no longer held back: S3 takes PUTs again, and it runs to its end.
    h.world.s3.put_status = None;
    h.run_until(refused_at + give_up + 2 * DAY, |h| {
        h.latest_run()
            .is_some_and(|r| r.id > run.id && r.phase == Phase::Finished)
    });
    let next = h.latest_run().unwrap();
    assert!(
        next.summary_key.is_some() && next.error.is_none(),
        "{next:?}"
    );
    assert!(
        h.store()
            .meta(&[crate::store::MetaKey::RecordFailingSince])
            .unwrap()
            .u64(crate::store::MetaKey::RecordFailingSince)
            .unwrap()
            .is_none(),
        "the refusals are forgotten with the run"
    );
}
