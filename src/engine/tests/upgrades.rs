//! Upgrades: the store every earlier schema left, with a run in the middle
//! (`store/fixtures/`), is migrated by the first tick's open, and the run completes on it: no
//! project lost, none exported twice.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, UNIX_EPOCH};

use super::sim::{
    assert_gitlab_window_respected, config, Harness, SimGitLab, World, DAY, HOUR, MINUTE, SECOND,
    T0,
};
use crate::config::Config;
use crate::s3::object_key;
use crate::store::host::HostSql;
use crate::store::migration_tests::{Fixture, FIXTURES};
use crate::store::Phase;

/// When the fixtures' run 2 started: 20 minutes before the simulation.
const RUN_STARTED: u64 = T0 - 20 * MINUTE;

/// The world the fixture's run was going in: its groups and projects, and what GitLab had
/// already done for it (the exports it accepted, built and uploaded).
fn world_of(fixture: &Fixture, config: &Config) -> (World, Vec<u64>, BTreeSet<u64>) {
    let mut gitlab = SimGitLab::new(6);
    let acme = gitlab.add_group("acme", None);
    let listing = fixture.name.ends_with("_listing");
    let (ids, accepted): (Vec<u64>, BTreeSet<u64>) = if listing {
        // acme listed; beta on its page 2 of 3 (2 a page).
        let mut ids = gitlab.add_projects(acme, 4);
        let beta = gitlab.add_group("beta", None);
        ids.extend(gitlab.add_projects(beta, 5));
        (ids, BTreeSet::new())
    } else {
        // Verified 1 and 3, exported 4 and 6, exporting 7, failed 16, the rest pending.
        (gitlab.add_projects(acme, 11), [1, 3, 4, 6].into())
    };
    gitlab.refusals.insert(16, 403);
    let started = UNIX_EPOCH + Duration::from_millis(RUN_STARTED);
    for id in &accepted {
        let key = object_key(&config.s3_prefix, gitlab.path_of(*id), started);
        let mut url = config.bucket.object_url("eu-west-1", &key);
        url.set_query(Some("X-Amz-Signature=from-before"));
        // Just before the fixtures' `exported_ms` (T0 - 120 s and - 90 s): GitLab uploads after
        // it accepted, and the proof wants an object no older than the export request.
        gitlab.accepted_before(*id, T0 - 2 * MINUTE - 5 * SECOND, url);
    }
    (World::new(gitlab), ids, accepted)
}

#[test]
fn a_run_left_by_any_earlier_schema_completes_with_no_project_lost_or_exported_twice() {
    for fixture in FIXTURES {
        let why = fixture.name;
        let groups = if why.ends_with("_listing") {
            "acme,beta"
        } else {
            "acme"
        };
        let config = config(&[("GROUPS_TO_BACKUP", groups)]);
        let (world, ids, accepted_before) = world_of(fixture, &config);
        let db = HostSql::from_dump(fixture.dump).unwrap();
        let in_state = |state: &str| -> BTreeSet<u64> {
            let query =
                format!("SELECT project_id FROM projects WHERE run_id = 2 AND state = '{state}'");
            let mut statement = db.0.prepare(&query).unwrap();
            let ids = statement.query_map([], |row| row.get::<_, i64>(0)).unwrap();
            ids.map(|id| id.unwrap() as u64).collect()
        };
        let (exported, verified) = (in_state("exported"), in_state("verified"));
        let mut h = Harness::on_store(config, world, db);
        let run = h.run_until_finished(T0 + 6 * HOUR);
        assert_eq!(
            (run.id, run.phase, run.error.as_deref()),
            (2, Phase::Finished, None),
            "{why}: {}",
            h.describe()
        );

        // Every project of the groups is in the run, with its outcome.
        let states = h.states(run.id);
        assert_eq!(
            states.keys().copied().collect::<Vec<_>>(),
            ids,
            "{why}: no project lost"
        );
        for (id, state) in &states {
            let expected = if *id == 16 { "failed" } else { "verified" };
            assert_eq!(state, expected, "{why}: project {id}");
        }
        assert_eq!(
            run.verified + run.failed,
            ids.len() as u64,
            "{why}: {run:?}"
        );

        // GitLab was asked once for each export not accepted before the upgrade, and never
        // again for those it had accepted or refused.
        let accepted = h.world.gitlab.accepted();
        let expected: BTreeMap<u64, usize> = ids
            .iter()
            .filter(|id| !accepted_before.contains(id) && **id != 16)
            .map(|id| (*id, 1))
            .collect();
        assert_eq!(accepted, expected, "{why}: each exported once");
        assert!(
            h.world.gitlab.exports.iter().all(|e| e.project_id != 16),
            "{why}"
        );
        assert_gitlab_window_respected(&h.world.gitlab.exports, 6);

        // Accepted exports were proven once, by GitLab's word and a ranged GET; proven ones left alone.
        let checked: BTreeSet<u64> = h.world.gitlab.status_checks.iter().map(|c| c.1).collect();
        let reads: Vec<&str> = h
            .world
            .s3
            .ranged_gets
            .iter()
            .filter(|(_, _, s)| *s == 206)
            .map(|(_, p, _)| p.as_str())
            .collect();
        for id in &exported {
            assert!(checked.contains(id), "{why}: {id} checked");
            let path = format!(
                "/{}/2023-12-31-23-40-00.tar.gz",
                h.world.gitlab.path_of(*id)
            );
            assert!(
                reads.contains(&path.as_str()),
                "{why}: {id} found in the bucket"
            );
        }
        assert!(
            verified.iter().all(|id| !checked.contains(id)),
            "{why}: proven ones not checked again"
        );

        // Each project in exactly one manifest part, and the summary written.
        let mut listed = BTreeMap::new();
        for (_, path, body) in &h.world.s3.puts {
            if path.contains("/part-") {
                for line in body.lines() {
                    let entry: serde_json::Value = serde_json::from_str(line).unwrap();
                    *listed.entry(entry["id"].as_u64().unwrap()).or_insert(0) += 1;
                }
            }
        }
        assert_eq!(
            listed,
            ids.iter().map(|id| (*id, 1)).collect(),
            "{why}: the manifest"
        );
        let summary = format!("/{}", run.summary_key.as_deref().expect("the summary"));
        assert!(
            h.world.s3.puts.iter().any(|(_, path, _)| *path == summary),
            "{why}"
        );

        // The finished run before it is still there.
        let first = h
            .store()
            .recent_runs(10)
            .unwrap()
            .into_iter()
            .find(|r| r.id == 1);
        assert_eq!(
            first.map(|r| (r.phase, r.listed)),
            Some((Phase::Finished, 4)),
            "{why}"
        );
    }
}

#[test]
fn a_run_begun_before_runs_kept_their_settings_goes_on_with_the_current_ones() {
    // Version 8 kept no settings with a run: its run goes on with the settings as they are now
    // (here another prefix than it began with), as it did before; the next run keeps its own.
    let fixture = FIXTURES.iter().find(|f| f.name == "v8_exporting").unwrap();
    let config = config(&[("S3_PREFIX", "now"), ("AWS_REGION", "")]);
    let (mut world, _, _) = world_of(fixture, &config);
    world.s3.region = Some("eu-west-1".into());
    let db = HostSql::from_dump(fixture.dump).unwrap();
    let mut h = Harness::on_store(config, world, db);
    let run = h.run_until_finished(T0 + 6 * HOUR);
    assert_eq!(
        (run.id, run.error.as_deref()),
        (2, None),
        "{}",
        h.describe()
    );
    assert_eq!(
        run.settings, None,
        "run 2 began before runs kept their settings"
    );
    assert!(run
        .summary_key
        .as_deref()
        .unwrap()
        .starts_with("now/_runs/"));
    for export in &h.world.gitlab.exports {
        let path = export.upload_url.as_ref().unwrap().path().to_owned();
        assert!(path.starts_with("/now/acme/"), "{path}");
    }
    // The region it kept then named no bucket: it is asked again, for this one.
    assert_eq!(h.world.s3.probes.len(), 1);

    h.run_until(T0 + 2 * DAY, |h| {
        h.latest_run()
            .is_some_and(|r| r.id == 3 && r.phase == Phase::Finished)
    });
    let next = h.latest_run().unwrap();
    let kept = crate::config::RunSettings::from_json(next.settings.as_deref().unwrap()).unwrap();
    assert_eq!(
        (kept.s3_prefix.as_str(), kept.learned_region.as_deref()),
        ("now/", Some("eu-west-1"))
    );
    assert_eq!(h.world.s3.probes.len(), 1, "the next run knows the region");
}
