//! Checks shared by the tests.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, UNIX_EPOCH};

use super::{ExportSeen, Harness, TickLog, T0};
use crate::engine::{EXPORT_WINDOW, RETRY_BACKOFF};
use crate::s3::object_key;
use crate::store::{Phase, RunRow};
use crate::time::ms;

/// No 60 s window at GitLab, by arrival time, holds more than `limit` export requests.
pub(crate) fn assert_gitlab_window_respected(exports: &[ExportSeen], limit: u32) {
    let mut times: Vec<u64> = exports.iter().map(|e| e.at_ms).collect();
    times.sort_unstable();
    let mut end = 0;
    for (start, at) in times.iter().enumerate() {
        while end < times.len() && times[end] < at + ms(EXPORT_WINDOW) {
            end += 1;
        }
        assert!(
            end - start <= limit as usize,
            "{} export requests reached GitLab within 60 s from +{} ms (limit {limit}): {:?}",
            end - start,
            at - T0,
            &times[start..end].iter().map(|t| t - T0).collect::<Vec<_>>()
        );
    }
}

/// A project is asked for again only when the worker never heard GitLab's answer to the
/// previous request for it: never after an acceptance or refusal it heard.
pub(crate) fn assert_no_export_after_a_heard_outcome(exports: &[ExportSeen]) {
    assert_no_export_after_a_heard_outcome_but_retries(exports, &BTreeMap::new());
}

/// As [`assert_no_export_after_a_heard_outcome`], except for the projects in `retried`, whose
/// attempts fail after GitLab accepted them (the build fails, or the upload is lost): those are
/// asked for again, but only after the failure could be known (at least the given time after
/// the acceptance) and `RETRY_BACKOFF` more, and GitLab accepts them at most `MAX_ATTEMPTS`
/// times as heard.
pub(crate) fn assert_no_export_after_a_heard_outcome_but_retries(
    exports: &[ExportSeen],
    retried: &BTreeMap<u64, (u64, u64)>,
) {
    let mut by_sending: Vec<&ExportSeen> = exports.iter().collect();
    by_sending.sort_by_key(|e| e.sent_ms);
    for (project, (known_after, max_attempts)) in retried {
        let mut attempts: usize = 0;
        let mut not_before = 0;
        for e in by_sending.iter().filter(|e| e.project_id == *project) {
            assert!(
                e.sent_ms >= not_before,
                "project {project} asked again {} ms too early",
                not_before - e.sent_ms
            );
            if e.status == 202 && !e.answer_lost {
                attempts += 1;
                let backoff = RETRY_BACKOFF[(attempts - 1).min(RETRY_BACKOFF.len() - 1)];
                not_before = e.at_ms + known_after + ms(backoff);
            }
        }
        assert!(
            attempts as u64 <= *max_attempts,
            "project {project} accepted {attempts} times"
        );
    }
    let by_sending: Vec<&ExportSeen> = by_sending
        .into_iter()
        .filter(|e| !retried.contains_key(&e.project_id))
        .collect();
    let exports: Vec<&ExportSeen> = exports
        .iter()
        .filter(|e| !retried.contains_key(&e.project_id))
        .collect();
    let mut settled = BTreeSet::new();
    for e in by_sending {
        assert!(
            !settled.contains(&e.project_id),
            "project {} was asked for again at +{} ms after its outcome was heard: {:?}",
            e.project_id,
            e.sent_ms - T0,
            exports
                .iter()
                .filter(|x| x.project_id == e.project_id)
                .map(|x| (x.sent_ms - T0, x.at_ms - T0, x.status, x.answer_lost))
                .collect::<Vec<_>>()
        );
        if !e.answer_lost && matches!(e.status, 202 | 400 | 403 | 404) {
            settled.insert(e.project_id);
        }
    }
    for (project, accepted) in exports.iter().filter(|e| e.status == 202).fold(
        BTreeMap::<u64, usize>::new(),
        |mut m, e| {
            *m.entry(e.project_id).or_default() += 1;
            m
        },
    ) {
        let unheard = exports
            .iter()
            .filter(|e| e.project_id == project && e.status == 202 && e.answer_lost)
            .count();
        assert!(
            accepted <= 1 + unheard,
            "project {project} exported {accepted} times, only {unheard} unheard acceptances"
        );
    }
}

/// The run ended as a run with proof of landing does: the preflight probe written before any
/// export; each verified project's archive uploaded by GitLab to its key and seen there by a
/// signed ranged GET; every project with a final outcome in exactly one manifest part; the summary
/// written last.
pub(crate) fn assert_landed_and_proven(h: &Harness, run: &RunRow) {
    let s3 = &h.world.s3;
    assert_eq!(run.phase, Phase::Finished);
    assert_eq!(run.error, None);
    let started = UNIX_EPOCH + Duration::from_millis(run.started_ms);
    let prefix = &h.config.s3_prefix;
    let probe = format!("/{}", crate::manifest::probe_key(prefix, started));
    let probe_put = s3
        .puts
        .iter()
        .find(|put| put.1 == probe)
        .expect("the preflight PUT");
    // The run's exports (a harness may have run others before it) come after its probe.
    assert!(h
        .world
        .gitlab
        .exports
        .iter()
        .filter(|e| e.sent_ms >= run.started_ms)
        .all(|e| e.at_ms > probe_put.0));
    let summary = run.summary_key.as_deref().expect("the summary is written");
    let summary = format!("/{summary}");
    // What the bucket holds in the end: the last PUT of each key.
    let objects: BTreeMap<&str, &str> = s3
        .puts
        .iter()
        .map(|(_, path, body)| (path.as_str(), body.as_str()))
        .collect();
    let summary_body: serde_json::Value = serde_json::from_str(objects[summary.as_str()]).unwrap();
    assert!(summary_body.is_object(), "{summary_body}");
    let states = h.states(run.id);
    let mut listed = BTreeMap::new();
    for (path, body) in &objects {
        if !path.contains("/part-") {
            continue;
        }
        for line in body.lines() {
            let entry: serde_json::Value = serde_json::from_str(line).unwrap();
            let id = entry["id"].as_u64().unwrap();
            assert!(
                listed.insert(id, entry).is_none(),
                "project {id} in two manifest lines"
            );
        }
    }
    let outcomes: BTreeSet<u64> = states
        .iter()
        .filter(|(_, s)| *s == "verified" || *s == "failed")
        .map(|(id, _)| *id)
        .collect();
    assert_eq!(listed.keys().copied().collect::<BTreeSet<_>>(), outcomes);
    assert_eq!(outcomes.len() as u64, run.verified + run.failed);
    for (id, state) in &states {
        assert!(
            state == "verified" || state == "failed",
            "project {id} ended {state}"
        );
        if state != "verified" {
            continue;
        }
        let key = format!(
            "/{}",
            object_key(prefix, h.world.gitlab.path_of(*id), started)
        );
        let uploaded = s3
            .uploads
            .iter()
            .filter(|u| u.1 == key)
            .map(|u| u.0)
            .min()
            .unwrap_or_else(|| panic!("{id} verified but never uploaded"));
        assert!(
            s3.ranged_gets
                .iter()
                .any(|(at, path, status)| *path == key && *status == 206 && *at >= uploaded),
            "{id} verified without a ranged GET that found it"
        );
        assert_eq!(listed[id]["size"].as_u64(), Some(10_000 + id));
    }
}

pub(crate) fn assert_ticks_within_budget(ticks: &[TickLog], budget: u32, per_minute: u32) {
    for t in ticks {
        assert!(
            t.subrequests <= budget,
            "a tick at +{} ms used {} subrequests (budget {budget})",
            t.started_ms - T0,
            t.subrequests
        );
        assert!(
            t.exports <= per_minute,
            "a tick at +{} ms requested {} exports (EXPORTS_PER_MINUTE {per_minute})",
            t.started_ms - T0,
            t.exports
        );
        if let Some(report) = &t.report {
            assert_eq!(report.subrequests, t.subrequests);
            assert_eq!(report.exports, t.exports);
        }
    }
}
