//! The free plan's daily allowances: a run pauses before one would run out, and resumes after
//! 00:00 UTC.

use std::collections::BTreeMap;

use super::sim::{assert_landed_and_proven, config, one_group, Began, Harness, World, DAY, T0};
use crate::engine::allowance::ROWS_RESERVE;
use crate::store::MetaKey;

#[test]
fn with_a_small_daily_allowance_of_rows_the_run_pauses_each_day_within_it_and_completes() {
    let limit = 2_000;
    let (gitlab, ids) = one_group(300, 6);
    let mut h = Harness::new(
        config(&[("DO_ROWS_WRITTEN_PER_DAY", &limit.to_string())]),
        World::new(gitlab),
    );
    let run = h.run_until_finished(T0 + 10 * DAY);
    assert_eq!(
        (run.listed, run.verified, run.failed),
        (ids.len() as u64, ids.len() as u64, 0)
    );
    assert_landed_and_proven(&h, &run);
    // Rows written per UTC day, as SQLite counted them, with an alarm per tick that set one.
    let mut per_day: BTreeMap<u64, u64> = BTreeMap::new();
    for t in &h.ticks {
        let alarm = t.report.as_ref().is_some_and(|r| r.wake_at_ms.is_some());
        *per_day.entry(t.started_ms / DAY).or_default() += t.rows_written + u64::from(alarm);
    }
    assert!(
        per_day.len() >= 2,
        "the run took more than a day: {per_day:?}"
    );
    for (day, rows) in &per_day {
        assert!(
            *rows <= limit,
            "day {day}: {rows} rows written, over {limit}"
        );
    }
    // Each day but the last used the allowance down to its reserve, then paused.
    let full_days: Vec<u64> = per_day.values().rev().skip(1).copied().collect();
    assert!(
        full_days
            .iter()
            .all(|&rows| rows + 2 * ROWS_RESERVE >= limit),
        "{per_day:?}"
    );
    let paused = h.ticks.iter().filter(|t| t.began == Began::Paused).count();
    assert!(paused > 0, "some ticks were paused");
    // A paused tick writes nothing and sets no alarm.
    assert!(h
        .ticks
        .iter()
        .filter(|t| t.began == Began::Paused)
        .all(|t| t.rows_written == 0 && t.report.is_none()));
    // It resumes with the new day: the first tick after each midnight runs.
    for day in per_day.keys().skip(1) {
        let first = h.ticks.iter().find(|t| t.started_ms / DAY == *day).unwrap();
        assert_eq!(first.began, Began::Ran, "day {day}");
    }
}

#[test]
fn without_a_daily_limit_nothing_is_counted_or_written_for_it() {
    let (gitlab, ids) = one_group(3, 6);
    let mut h = Harness::new(
        config(&[
            ("DO_ROWS_WRITTEN_PER_DAY", "0"),
            ("DO_REQUESTS_PER_DAY", "0"),
        ]),
        World::new(gitlab),
    );
    let run = h.run_until_finished(T0 + DAY);
    assert_eq!(run.verified, ids.len() as u64);
    let usage = h
        .store()
        .meta(&[MetaKey::DailyUsage])
        .unwrap()
        .text(MetaKey::DailyUsage)
        .unwrap();
    assert_eq!(usage, None, "no usage row on the paid plan");
}
