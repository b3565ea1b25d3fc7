//! Changed-only runs: which listed projects their newest backup still holds, so that they are
//! not exported again (outcome `unchanged`), and which are due for their periodic full export
//! whatever their activity says.
//!
//! GitLab moves a project's `last_activity_at` when an event is created (a push, an issue or
//! merge request opened, closed or merged, a comment, a wiki edit, …) but at most once an hour
//! (`Event::RESET_PROJECT_ACTIVITY_INTERVAL`), and some changes create no event at all (issue or
//! label edits, settings). So a backup holds a project only when the project's activity lies
//! `CHANGED_OVERLAP_MINUTES` (at least an hour) before the backup's export request, and every
//! project is exported at least once every `FULL_BACKUP_EVERY_DAYS` whatever its activity
//! says, which bounds what a change without an event can miss.

use crate::config::ChangedOnly;
use crate::time::rfc3339_ms;

/// A UTC day in milliseconds.
pub const DAY_MS: u64 = 24 * 3_600_000;

/// When the project's current full-export cycle began: the start of the latest UTC day, up to
/// today, whose number modulo `every_days` is the project's id modulo `every_days`. Projects
/// take their full export on the days of the cycle their ids pick, so those of one instance are
/// spread over the days instead of all falling on one run.
pub fn cycle_start_ms(project_id: u64, now_ms: u64, every_days: u64) -> u64 {
    let every = every_days.max(1);
    let today = now_ms / DAY_MS;
    let slot = project_id % every;
    // Days since the latest day of the project's slot (0: today is one).
    let since = (today % every + every - slot) % every;
    today.saturating_sub(since) * DAY_MS
}

/// The moment after which a backup's export request must have been sent for that backup to
/// still hold the project, listed now with `last_activity_at`: later than its activity plus the
/// overlap, and within its current full-export cycle. `None` (exported) when the activity is
/// missing or does not read as a time.
pub fn held_if_requested_after(
    rule: ChangedOnly,
    project_id: u64,
    last_activity_at: Option<&str>,
    now_ms: u64,
) -> Option<u64> {
    let activity_ms = rfc3339_ms(last_activity_at?)?;
    let overlap_ms = rule.overlap_minutes.saturating_mul(60_000);
    let cycle = cycle_start_ms(project_id, now_ms, rule.full_every_days);
    Some(
        activity_ms
            .saturating_add(overlap_ms)
            .max(cycle.saturating_sub(1)),
    )
}

/// Whether a backup whose export was requested at `requested_ms` still holds the project (the
/// comparison the listing's statement makes in SQL, for the tests).
pub fn holds(requested_ms: u64, held_if_requested_after: Option<u64>) -> bool {
    held_if_requested_after.is_some_and(|after| requested_ms > after)
}

#[cfg(test)]
mod tests {
    use super::*;

    const RULE: ChangedOnly = ChangedOnly {
        full_every_days: 7,
        overlap_minutes: 120,
    };
    /// 2024-01-01T00:00:00Z, day 19,723 (19,723 % 7 = 4).
    const T0: u64 = 1_704_067_200_000;
    const HOUR: u64 = 3_600_000;

    #[test]
    fn a_projects_cycle_starts_on_the_latest_day_its_id_picks() {
        // Project 4's slot is today's: its cycle starts today at midnight.
        assert_eq!(cycle_start_ms(4, T0 + 5 * HOUR, 7), T0);
        // Project 3's slot was yesterday; project 5's is tomorrow, so its cycle began 6 days ago.
        assert_eq!(cycle_start_ms(3, T0 + 5 * HOUR, 7), T0 - DAY_MS);
        assert_eq!(cycle_start_ms(5, T0 + 5 * HOUR, 7), T0 - 6 * DAY_MS);
        // Every project's cycle began within the last `every` days, and ids spread evenly.
        let mut per_day = [0; 7];
        for id in 0..700 {
            let start = cycle_start_ms(id, T0 + 5 * HOUR, 7);
            assert!(start <= T0 + 5 * HOUR && T0 + 5 * HOUR - start < 7 * DAY_MS);
            per_day[((T0 - start) / DAY_MS) as usize] += 1;
        }
        assert_eq!(per_day, [100; 7]);
        // One day a cycle: everything is due every day.
        assert_eq!(cycle_start_ms(9, T0 + 5 * HOUR, 1), T0);
    }

    #[test]
    fn a_backup_holds_a_project_whose_activity_is_an_overlap_before_its_request() {
        let now = T0 + 10 * HOUR;
        // Project 4: its cycle began today at midnight; a backup asked for at 09:00 today.
        let requested = T0 + 9 * HOUR;
        let at = |activity: &str| held_if_requested_after(RULE, 4, Some(activity), now);
        assert!(holds(requested, at("2024-01-01T06:59:59.999Z")));
        // Within the overlap: GitLab may not have moved last_activity_at for a later push.
        assert!(!holds(requested, at("2024-01-01T07:00:00.000Z")));
        assert!(!holds(requested, at("2024-01-01T09:30:00Z")));
        // An offset reads as the same instant.
        assert!(holds(requested, at("2024-01-01T07:59:59+01:00")));
        // A backup from before the cycle began does not hold it, however quiet.
        assert!(!holds(T0 - HOUR, at("2020-01-01T00:00:00Z")));
        // Missing or unreadable activity: exported.
        assert_eq!(held_if_requested_after(RULE, 4, None, now), None);
        assert_eq!(
            held_if_requested_after(RULE, 4, Some("yesterday"), now),
            None
        );
        assert!(!holds(requested, None));
    }
}
