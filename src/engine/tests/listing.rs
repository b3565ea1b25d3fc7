//! Listing the groups' projects: pages, read-ahead, failing pages and groups.

use std::collections::BTreeSet;
use std::time::{Duration, UNIX_EPOCH};

use super::sim::{
    assert_gitlab_window_respected, assert_landed_and_proven, assert_ticks_within_budget, config,
    one_group, Fault, FaultPlan, Harness, SimGitLab, TickLog, World, HOUR, SECOND, T0,
};
use crate::engine::{Event, RETRY_AFTER_SLACK};
use crate::s3::object_key;
use crate::store::Phase;
use crate::time::ms;

#[test]
fn a_run_lists_every_page_of_every_group_then_exports_each_own_project_exactly_once() {
    let mut gitlab = SimGitLab::new(6);
    gitlab.page_cap = 2; // the server caps pages far below the 100 asked for
    let acme = gitlab.add_group("acme", None);
    let sub = gitlab.add_group("sub", Some(acme));
    let deep = gitlab.add_group("deep", Some(sub)); // not configured: reached as a subgroup
    let beta = gitlab.add_group("beta", None);
    let outside = gitlab.add_group("outside", None); // not configured
    let acme_own = gitlab.add_projects(acme, 4);
    let sub_own = gitlab.add_projects(sub, 3);
    let deep_own = gitlab.add_projects(deep, 2);
    let beta_own = gitlab.add_projects(beta, 5);
    let foreign = gitlab.add_projects(outside, 2);
    for p in &foreign {
        gitlab.share(*p, acme);
        gitlab.share(*p, beta);
    }
    gitlab.share(acme_own[0], beta);
    gitlab.project_mut(beta_own[4]).archived = true; // archived projects are backed up too
    let beta_id = gitlab.groups[beta].id.to_string();
    let groups = format!("acme,acme/sub,{beta_id}");
    let mut h = Harness::new(config(&[("GROUPS_TO_BACKUP", &groups)]), World::new(gitlab));

    let run = h.run_until_finished(T0 + HOUR);

    let expected: BTreeSet<u64> = [&acme_own, &sub_own, &deep_own, &beta_own]
        .into_iter()
        .flatten()
        .copied()
        .collect();
    assert_eq!(expected.len(), 14);
    let gitlab = &h.world.gitlab;
    assert_eq!(gitlab.own_projects(&h.config.groups, true, true), expected);
    let pages = |group: &str| -> Vec<u64> {
        gitlab
            .listings
            .iter()
            .filter(|l| l.group == group && l.status == 200)
            .map(|l| l.page)
            .collect()
    };
    assert_eq!(
        pages("acme"),
        vec![1, 2, 3, 4, 5],
        "9 own projects, 2 a page"
    );
    assert_eq!(pages("acme/sub"), vec![1, 2, 3], "5 own projects, 2 a page");
    assert_eq!(pages(&beta_id), vec![1, 2, 3], "5 own projects, 2 a page");
    assert_eq!(gitlab.listings.len(), 11, "no page listed twice");
    for listing in &gitlab.listings {
        assert_eq!(
            listing.query.get("with_shared").map(String::as_str),
            Some("false")
        );
        assert_eq!(
            listing.query.get("include_subgroups").map(String::as_str),
            Some("true")
        );
    }
    // All listing happens before any export.
    let last_listing = gitlab.listings.iter().map(|l| l.at_ms).max().unwrap();
    assert!(gitlab.exports.iter().all(|e| e.at_ms > last_listing));

    let accepted = gitlab.accepted();
    assert_eq!(accepted.keys().copied().collect::<BTreeSet<_>>(), expected);
    assert!(accepted.values().all(|n| *n == 1), "{accepted:?}");
    assert_eq!(gitlab.exports.len(), 14);
    for p in &foreign {
        assert!(!accepted.contains_key(p), "shared project {p} was exported");
    }
    assert_eq!(
        (run.listed, run.exported, run.verified, run.failed),
        (14, 14, 14, 0)
    );
    assert!(h.states(run.id).values().all(|s| s == "verified"));
    assert_landed_and_proven(&h, &run);

    // Each upload goes to `<path_with_namespace>/<run start>.tar.gz`, presigned for PUT.
    let started = UNIX_EPOCH + Duration::from_millis(run.started_ms);
    for e in &gitlab.exports {
        let url = e.upload_url.as_ref().unwrap();
        assert_eq!(url.host_str(), Some("backups.s3.eu-west-1.amazonaws.com"));
        let key = object_key("", gitlab.path_of(e.project_id), started);
        assert_eq!(url.path(), format!("/{key}"));
        assert!(url.query_pairs().any(|(n, _)| n == "X-Amz-Signature"));
    }
    assert_gitlab_window_respected(&gitlab.exports, 6);
    assert_eq!(gitlab.limited_by_itself(), 0);
}

#[test]
fn a_429_on_a_listing_page_delays_the_listing_until_retry_after_and_slack() {
    let (mut gitlab, _) = one_group(250, 6);
    gitlab.listing_faults = FaultPlan::scripted(&[None, Some(Fault::TooMany(Some(120)))]);
    let mut h = Harness::new(config(&[]), World::new(gitlab));
    // One page per tick on the free plan: the second page comes with the alarm.
    h.fire_next();
    h.fire_next();
    let limited = h.world.sent.len() - 1;
    assert_eq!(h.world.sent[limited].answer, Ok(429));
    let until = h.world.sent[limited].done_ms + 120 * SECOND + ms(RETRY_AFTER_SLACK);
    assert_eq!(
        h.ticks.last().unwrap().report.as_ref().unwrap().wake_at_ms,
        Some(until)
    );
    h.run_until_finished(T0 + HOUR);
    let next = h.gitlab_sends_after(limited).next().unwrap();
    assert!(
        next.sent_ms >= until,
        "GitLab was asked again at +{} s, {} s before its Retry-After (and slack) passed",
        (next.sent_ms - T0) / SECOND,
        (until - next.sent_ms) / SECOND
    );
}

/// The `group_relisted` events of the run: (reason, relists).
fn relisted(h: &Harness) -> Vec<(String, u64)> {
    h.ticks
        .iter()
        .flat_map(|t| t.events())
        .filter_map(|e| match e {
            Event::GroupRelisted {
                reason, relists, ..
            } => Some((reason.clone(), *relists)),
            _ => None,
        })
        .collect()
}

#[test]
fn a_project_deleted_between_two_listing_pages_makes_no_other_project_go_unlisted() {
    let (mut gitlab, ids) = one_group(6, 6);
    gitlab.page_cap = 2;
    // Page 1 is [p0, p1]; then p0 is deleted, and page 2 would be [p3, p4]: p2 is skipped.
    gitlab.delete_after_listings = vec![(1, ids[0])];
    let mut h = Harness::new(config(&[]), World::new(gitlab));
    let run = h.run_until_finished(T0 + HOUR);
    let states = h.states(run.id);
    for id in &ids[1..] {
        assert_eq!(
            states.get(id).map(String::as_str),
            Some("verified"),
            "project {id} of {ids:?}: listed {:?}",
            states.keys().collect::<Vec<_>>()
        );
    }
    assert_eq!(states.get(&ids[0]).map(String::as_str), Some("failed"));
    assert_eq!(
        relisted(&h),
        vec![(
            "GitLab counted 6 projects on the first page and 5 on page 2".to_owned(),
            1
        )]
    );
    // Pages 1 and 2, then the group again: pages 1, 2 and 3 of the 5 left.
    let pages: Vec<u64> = h.world.gitlab.listings.iter().map(|l| l.page).collect();
    assert_eq!(pages, vec![1, 2, 1, 2, 3]);
    assert_eq!((run.listed, run.verified, run.failed), (6, 5, 1));
    assert!(h.store().listing_errors(run.id).unwrap().is_empty());
    assert_landed_and_proven(&h, &run);
}

#[test]
fn a_project_deleted_while_pages_are_read_ahead_makes_no_other_project_go_unlisted() {
    let (mut gitlab, ids) = one_group(1_000, 6);
    // Page 1 alone (the count is not known yet), then pages 2 to 7 together: the project on
    // page 1 goes once page 3 was served, so pages 4 to 7 each skip one.
    gitlab.delete_after_listings = vec![(3, ids[0])];
    let mut h = Harness::new(
        config(&[("CPU_MS_PER_INVOCATION", "30000")]),
        World::new(gitlab),
    );
    let run = h.run_until_finished(T0 + 4 * HOUR);
    let states = h.states(run.id);
    let unlisted: Vec<&u64> = ids.iter().filter(|id| !states.contains_key(id)).collect();
    assert!(unlisted.is_empty(), "never listed: {unlisted:?}");
    assert!(ids[1..].iter().all(|id| states[id] == "verified"));
    assert_eq!(states[&ids[0]], "failed");
    assert_eq!(
        relisted(&h),
        vec![(
            "GitLab counted 1000 projects on the first page and 999 on page 4".to_owned(),
            1
        )]
    );
    let accepted = h.world.gitlab.accepted();
    assert!(accepted.values().all(|n| *n == 1), "exported once each");
}

#[test]
fn a_group_that_changes_during_every_listing_is_listed_four_times_then_reported() {
    let (mut gitlab, ids) = one_group(8, 6);
    gitlab.page_cap = 2;
    // After the first page of each pass, a project of that page is deleted.
    gitlab.delete_after_listings = (0..4).map(|i| (1 + 2 * i, ids[i])).collect();
    let mut h = Harness::new(config(&[]), World::new(gitlab));
    let run = h.run_until_finished(T0 + HOUR);
    assert_eq!(
        relisted(&h).iter().map(|(_, n)| *n).collect::<Vec<_>>(),
        vec![1, 2, 3],
        "listed again three times at most"
    );
    let doubt = "the group changed during each of its 4 listings (GitLab counted 5 projects on \
                 the first page and 4 on page 2): this run may miss a project of it";
    assert_eq!(
        h.store().listing_errors(run.id).unwrap(),
        vec![("acme".to_owned(), doubt.to_owned())]
    );
    // The fourth pass went on to its end, and every project it or the others found ended.
    let pages: Vec<u64> = h.world.gitlab.listings.iter().map(|l| l.page).collect();
    assert_eq!(pages, vec![1, 2, 1, 2, 1, 2, 1, 2]);
    let states = h.states(run.id);
    assert_eq!(states.len(), 8, "{states:?}");
    for (i, id) in ids.iter().enumerate() {
        let expected = if i < 4 { "failed" } else { "verified" };
        assert_eq!(states[id], expected, "project {i}");
    }
    assert_eq!(run.phase, Phase::Finished);
}

#[test]
fn a_group_answering_404_is_reported_and_other_groups_still_back_up() {
    let mut gitlab = SimGitLab::new(6);
    let acme = gitlab.add_group("acme", None);
    let beta = gitlab.add_group("beta", None);
    let mut expected = gitlab.add_projects(acme, 3);
    expected.extend(gitlab.add_projects(beta, 3));
    let mut h = Harness::new(
        config(&[("GROUPS_TO_BACKUP", "acme,ghost,424242,beta")]),
        World::new(gitlab),
    );
    let run = h.run_until_finished(T0 + HOUR);
    let not_visible = "the group does not exist or GITLAB_TOKEN cannot see it (404)".to_owned();
    assert_eq!(
        h.store().listing_errors(run.id).unwrap(),
        vec![
            ("ghost".to_owned(), not_visible.clone()),
            ("424242".to_owned(), not_visible)
        ]
    );
    assert_eq!(
        (run.listed, run.exported, run.verified, run.failed),
        (6, 6, 6, 0)
    );
    assert_landed_and_proven(&h, &run);
    assert_eq!(
        h.world.gitlab.accepted().into_keys().collect::<Vec<_>>(),
        expected
    );
    let group_failed = h
        .ticks
        .iter()
        .flat_map(|t| t.events())
        .filter(|e| matches!(e, Event::GroupFailed { .. }))
        .count();
    assert_eq!(group_failed, 2);
}

/// Four groups of 2,500 projects (100 pages), listed under `overrides`, until exports began.
fn list_ten_thousand(overrides: &[(&str, &str)]) -> Harness {
    let mut gitlab = SimGitLab::new(6);
    let mut groups = Vec::new();
    for name in ["acme", "beta", "gamma", "delta"] {
        let group = gitlab.add_group(name, None);
        gitlab.add_projects(group, 2_500);
        groups.push(name);
    }
    let groups = groups.join(",");
    let mut vars = vec![("GROUPS_TO_BACKUP", groups.as_str())];
    vars.extend_from_slice(overrides);
    let mut h = Harness::new(config(&vars), World::new(gitlab));
    h.run_until(T0 + HOUR, |h| h.world.gitlab.exports.len() >= 12);
    let run = h.latest_run().unwrap();
    assert_eq!(run.listed, 10_000);
    assert_eq!(run.phase, Phase::Exporting);
    assert_eq!(
        h.world.gitlab.listings.len(),
        100,
        "25 pages of 100 per group, each read once"
    );
    assert_gitlab_window_respected(&h.world.gitlab.exports, 6);
    h
}

fn listing_ticks(h: &Harness) -> Vec<&TickLog> {
    h.ticks
        .iter()
        .filter(|t| {
            t.events()
                .iter()
                .any(|e| matches!(e, Event::PageListed { .. }))
        })
        .collect()
}

fn pages_listed(t: &TickLog) -> usize {
    t.events()
        .iter()
        .filter(|e| matches!(e, Event::PageListed { .. }))
        .count()
}

#[test]
fn on_the_free_plan_each_tick_lists_one_page_and_the_alarm_goes_on_at_once() {
    // Defaults: 50 subrequests and 10 ms of CPU per invocation.
    let h = list_ten_thousand(&[]);
    assert_ticks_within_budget(&h.ticks, 50, 6);
    let ticks = listing_ticks(&h);
    assert_eq!(ticks.len(), 100);
    assert!(ticks.iter().all(|t| pages_listed(t) == 1));
    // A tick cut short by its page budget asks to be woken at once.
    for t in &ticks[..ticks.len() - 1] {
        let report = t.report.as_ref().unwrap();
        assert!(report.wake_at_ms.is_some_and(|w| w <= h.world.now));
    }
}

#[test]
fn with_cpu_to_spare_pages_are_read_ahead_up_to_the_subrequest_budget() {
    let h = list_ten_thousand(&[
        ("CPU_MS_PER_INVOCATION", "30000"),
        ("SUBREQUESTS_PER_INVOCATION", "50"),
    ]);
    assert_ticks_within_budget(&h.ticks, 50, 6);
    let ticks = listing_ticks(&h);
    // 5 preflight requests (token, the prefix's marker read and written, the probe's PUT and
    // read-back) and 100 pages: 45 + 50 + 5 (then exports in the same tick).
    assert_eq!(
        ticks.iter().map(|t| pages_listed(t)).collect::<Vec<_>>(),
        vec![45, 50, 5]
    );
    // Pages of one group are read ahead of the cursor once GitLab gave the page count.
    let acme: Vec<u64> = h
        .world
        .gitlab
        .listings
        .iter()
        .filter(|l| l.group == "acme")
        .map(|l| l.page)
        .collect();
    assert_eq!(acme, (1..=25).collect::<Vec<_>>());
}

#[test]
fn a_page_that_fails_among_pages_read_ahead_is_read_again_and_nothing_is_lost() {
    let (mut gitlab, ids) = one_group(1_000, 6);
    // Page 1 alone (the count is not known yet), then pages 2..=7 together: page 3 fails.
    gitlab.listing_faults =
        FaultPlan::scripted(&[None, None, Some(Fault::Status(502)), None, None]);
    let mut h = Harness::new(
        config(&[("CPU_MS_PER_INVOCATION", "30000")]),
        World::new(gitlab),
    );
    let run = h.run_until_finished(T0 + 4 * HOUR);
    assert_eq!((run.listed, run.verified), (1_000, 1_000));
    let pages: Vec<(u64, u16)> = h
        .world
        .gitlab
        .listings
        .iter()
        .map(|l| (l.page, l.status))
        .collect();
    assert_eq!(
        &pages[..7],
        &[
            (1, 200),
            (2, 200),
            (3, 502),
            (4, 200),
            (5, 200),
            (6, 200),
            (7, 200)
        ]
    );
    // After the backoff the cursor is still on page 3: pages 3 to 10 are read, 4 to 7 again.
    let again: Vec<u64> = pages[7..].iter().map(|(page, _)| *page).collect();
    assert_eq!(again, (3..=10).collect::<Vec<_>>());
    let accepted = h.world.gitlab.accepted();
    assert_eq!(accepted.keys().copied().collect::<Vec<_>>(), ids);
    assert!(accepted.values().all(|n| *n == 1));
}
